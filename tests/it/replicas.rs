//! Running tenantd as a service: health follows the registry, and replicas share the work.

use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use uuid::Uuid;

use tenantd::api::pb;
use tenantd::sql::{Ident, Statement};

use crate::harness::{Place, Process, TestEnv, admin, connect, fill, http_get, sample, snapshot};

/// Starts moving `t` to the schema tier.
async fn to_schema(env: &mut TestEnv, t: &pb::Tenant) -> pb::Operation {
    env.tenants
        .change_tier(pb::ChangeTierRequest {
            tenant: t.id.clone(),
            tier: pb::Tier::Schema as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn health(client: &mut HealthClient<tonic::transport::Channel>) -> Option<ServingStatus> {
    let r = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tenantd.v1.TenantService".into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

async fn until(client: &mut HealthClient<tonic::transport::Channel>, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(client).await != Some(want) {
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_follows_the_registry() {
    let env = TestEnv::start().await;
    let mut client = HealthClient::new(connect(&env.addr).await);
    assert_eq!(health(&mut client).await, Some(ServingStatus::Serving));

    // The registry database stops taking connections, and the ones open are cut.
    let db = env
        .config
        .registry_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let cluster = admin("main", "postgres").await;
    let cut = |allow: bool| {
        let (cluster, db) = (cluster.clone(), db.clone());
        async move {
            let alter = Statement::new("ALTER DATABASE ")
                .ident(&Ident::new(db.clone()).unwrap())
                .push(if allow {
                    " WITH ALLOW_CONNECTIONS true"
                } else {
                    " WITH ALLOW_CONNECTIONS false"
                });
            sqlx::raw_sql(alter.into_sql())
                .execute(&cluster)
                .await
                .unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&db)
            .execute(&cluster)
            .await
            .unwrap();
        }
    };
    cut(false).await;
    until(&mut client, ServingStatus::NotServing).await;
    // Back: serving again, and calls work.
    cut(true).await;
    until(&mut client, ServingStatus::Serving).await;
}

#[tokio::test]
async fn a_second_replica_finishes_a_move_the_first_died_in() {
    // Replica A stalls at the start of the tail, with the tenant fenced.
    let mut env = TestEnv::spawn("change_tier.before_tail=sleep(60000)").await;
    let t = env.provision("two-replicas", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 40).await;
    let before = snapshot(&Place::of(&t), id).await;
    let op = to_schema(&mut env, &t).await;
    env.until_step_done(&op.name, "fence").await;

    // Replica B joins on the same registry; then A is killed (SIGKILL) in the middle.
    let b = Process::spawn(&env.config, &env.dir, "");
    drop(env.process.take());
    env.switch_to(b).await;

    // B takes the operation over once A's lease lapses, and finishes it.
    let (done, moved) = env.wait_tenant(&op.name).await;
    assert_eq!(moved.tier, pb::Tier::Schema as i32);
    assert_eq!(snapshot(&Place::of(&moved), id).await, before, "same rows");
    let left = snapshot(&Place::pool("main"), id).await;
    assert!(
        left.iter().all(|(_, rows)| rows.is_empty()),
        "source emptied: {left:?}"
    );
    // No step ran twice to a different effect: what A finished, B did not redo; the
    // routing epoch moved once.
    let steps = done.metadata.unwrap().steps;
    assert!(
        steps.iter().all(|s| s.state == pb::StepState::Done as i32),
        "{steps:?}"
    );
    for s in steps.iter().take_while(|s| s.name != "tail") {
        assert_eq!(s.attempts, 1, "{} ran again on the second replica", s.name);
    }
    assert_eq!(moved.routing_epoch, t.routing_epoch + 1);
}

#[tokio::test]
async fn a_replica_shutting_down_hands_its_operation_over_at_once() {
    // Leases long enough that a takeover by expiry would show: 5 minutes.
    let (mut config, dir) = TestEnv::config().await;
    config.workflow.lease_ms = 300_000;
    let mut env = TestEnv::spawn_with(config, dir, "change_tier.before_copy=sleep(1500)").await;
    let t = env.provision("handover", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 20).await;
    let before = snapshot(&Place::of(&t), id).await;
    let op = to_schema(&mut env, &t).await;
    env.until_step_done(&op.name, "fence").await;
    let op_id: Uuid = op.name.trim_start_matches("operations/").parse().unwrap();
    let lease_owner = |registry: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, Option<String>>("SELECT lease_owner FROM operations WHERE id = $1")
            .bind(op_id)
            .fetch_one(&registry)
            .await
            .unwrap()
    };
    let a_owner = lease_owner(env.registry.clone())
        .await
        .expect("A holds the lease");
    let b = Process::spawn(&env.config, &env.dir, "");

    // SIGTERM: A finishes the step it is in, releases the operation and exits cleanly.
    let mut a = env.process.take().unwrap();
    unsafe { libc::kill(a.child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "A exited with {status:?}");
    // A's lease is gone well before it would have expired: released, and B may already
    // hold the operation.
    assert_ne!(lease_owner(env.registry.clone()).await, Some(a_owner));

    // B picks it up without waiting out the 5-minute lease, and finishes the move.
    env.switch_to(b).await;
    let (done, moved) = env.wait_tenant(&op.name).await;
    assert_eq!(snapshot(&Place::of(&moved), id).await, before, "same rows");
    let steps = done.metadata.unwrap().steps;
    assert!(
        steps.iter().all(|s| s.attempts == 1),
        "no step ran twice: {steps:?}"
    );
}

#[tokio::test]
async fn logs_can_be_json_lines_with_the_operation_in_them_and_no_secrets() {
    let (config, dir) = TestEnv::config().await;
    let p = Process::spawn_env(&config, &dir, "", &[("TENANTD_LOG_FORMAT", "json")]);
    let mut env = TestEnv::spawn_with(config, dir, "").await;
    // Talk to the JSON-logging process.
    env.switch_to(p).await;
    let t = env.provision("json-logs", pb::Tier::Schema, "main").await;
    let log = env.process.as_ref().unwrap().log.clone();
    drop(env.process.take());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["fields"]["message"].is_string())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["tenant_id"] == t.id.as_str()
                && l["fields"]["message"] == "step done"),
        "step lines carry the operation's span fields: {text}"
    );
    // Neither the bearer token nor a connection password reaches the log.
    assert!(!text.contains(&crate::harness::token(tenantd::auth::Role::Admin)));
    assert!(!text.contains("tdt_"));
}

#[tokio::test]
async fn metrics_count_calls_operations_steps_rows_and_cloud_calls() {
    let (mut config, dir) = TestEnv::config_aws().await;
    let port = crate::harness::free_port();
    config.metrics.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let mut env = TestEnv::spawn_with(config, dir, "").await;
    let t = env.provision("metered", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 30).await;
    let rows: usize = snapshot(&Place::of(&t), id)
        .await
        .iter()
        .map(|(_, r)| r.len())
        .sum();
    let op = to_schema(&mut env, &t).await;
    env.wait(&op.name).await;
    let mut viewer = tenantd::api::pb::deletion_service_client::DeletionServiceClient::new(
        crate::harness::as_role(connect(&env.addr).await, tenantd::auth::Role::Viewer),
    );
    viewer
        .delete_tenant(pb::DeleteTenantRequest::default())
        .await
        .unwrap_err();

    let (status, body) = http_get(port, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let at =
        |series: &str| sample(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    let create = r#"method="/tenantd.v1.TenantService/CreateTenant""#;
    assert_eq!(
        at(&format!(
            r#"tenantd_grpc_requests_total{{{create},code="OK"}}"#
        )),
        1.0
    );
    let delete = r#"method="/tenantd.v1.DeletionService/DeleteTenant""#;
    assert_eq!(
        at(&format!(
            r#"tenantd_grpc_requests_total{{{delete},code="PERMISSION_DENIED"}}"#
        )),
        1.0
    );
    assert_eq!(
        at(&format!(
            r#"tenantd_grpc_request_duration_seconds_count{{{create}}}"#
        )),
        1.0
    );
    for kind in ["provision", "change_tier"] {
        assert_eq!(
            at(&format!(
                r#"tenantd_operations_finished_total{{kind="{kind}",state="succeeded"}}"#
            )),
            1.0
        );
    }
    assert_eq!(
        at(r#"tenantd_step_duration_seconds_count{kind="change_tier",step="copy",outcome="done"}"#),
        1.0
    );
    assert_eq!(
        at(r#"tenantd_rows_moved_total{kind="change_tier"}"#),
        rows as f64
    );
    // The tenant's key was created in KMS, on the emulator.
    assert!(
        at(r#"tenantd_cloud_call_duration_seconds_count{service="KMS",call="CreateKey"}"#) >= 1.0
    );
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text");
    // Nothing runs now: the fleet-wide gauge is empty.
    assert!(!body.contains("tenantd_operations{"), "{body}");

    let (status, _) = http_get(port, "/other").await;
    assert!(status.contains("404"), "{status}");
}

/// An OTLP collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(
    std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut spans = self.0.lock().unwrap();
        for r in request.into_inner().resource_spans {
            for s in r.scope_spans {
                spans.extend(s.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

#[tokio::test]
async fn traces_reach_an_otlp_collector_and_continue_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
                    collector.clone(),
                ),
            )
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let (config, dir) = TestEnv::config().await;
    let p = Process::spawn_env(
        &config,
        &dir,
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut env = TestEnv::spawn_with(config, dir, "").await;
    env.switch_to(p).await;

    // The caller's trace: CreateTenant sent with a W3C traceparent.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(pb::CreateTenantRequest {
        slug: "traced".into(),
        tier: pb::Tier::Pool as i32,
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let op = env
        .tenants
        .create_tenant(request)
        .await
        .unwrap()
        .into_inner();
    env.wait(&op.name).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = collector.0.lock().unwrap().clone();
        let create = spans.iter().find(|s| {
            attribute(s, "rpc.method").as_deref() == Some("/tenantd.v1.TenantService/CreateTenant")
        });
        let steps: Vec<String> = spans
            .iter()
            .filter(|s| s.name == "step")
            .filter_map(|s| attribute(s, "step"))
            .collect();
        let operation = spans.iter().find(|s| {
            s.name == "operation" && attribute(s, "kind").as_deref() == Some("provision")
        });
        if let (Some(create), Some(operation)) = (create, operation)
            && steps.iter().any(|s| s == "activate")
        {
            assert_eq!(
                hex::encode(&create.trace_id),
                trace_id,
                "continues the caller's trace"
            );
            assert_eq!(
                attribute(create, "rpc.grpc.status_code").as_deref(),
                Some("OK")
            );
            assert_eq!(
                create.kind,
                opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
            );
            // Steps are children of their operation's span.
            let step = spans
                .iter()
                .find(|s| s.name == "step" && s.parent_span_id == operation.span_id)
                .expect("step spans under the operation span");
            assert_eq!(step.trace_id, operation.trace_id);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans never arrived: {} so far",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP proxy that can be cut like a network partition: after [`Partition::cut`], bytes stop
/// flowing both ways on every connection through it (they stay open and hang), and new
/// connections are accepted and never answered.
struct Partition {
    port: u16,
    cut: tokio_util::sync::CancellationToken,
}

impl Partition {
    async fn to(target_port: u16) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = tokio_util::sync::CancellationToken::new();
        let c = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let c = c.clone();
                tokio::spawn(async move {
                    // Once cut, both ends stay open and silent.
                    let mut outbound = None;
                    if !c.is_cancelled() {
                        let mut out = tokio::net::TcpStream::connect(("127.0.0.1", target_port))
                            .await
                            .unwrap();
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => return,
                            _ = c.cancelled() => {}
                        }
                        outbound = Some(out);
                    }
                    let _held = (inbound, outbound);
                    std::future::pending::<()>().await;
                });
            }
        });
        Partition { port, cut }
    }

    fn cut(&self) {
        self.cut.cancel();
    }
}

#[tokio::test]
async fn a_replica_cut_off_from_the_registry_stops_before_another_takes_over() {
    // Replica A reaches the registry through a proxy, and its step waits at the fenced tail.
    let (config, dir) = TestEnv::config().await;
    let direct = config.registry_url.clone();
    let main_port: u16 = direct
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .get_port();
    let partition = Partition::to(main_port).await;
    let mut through = config.clone();
    through.registry_url =
        direct.replace(&format!(":{main_port}/"), &format!(":{}/", partition.port));
    let mut env = TestEnv::spawn_with(through, dir, "change_tier.before_tail=sleep(6000)").await;
    env.config = config;
    env.registry = sqlx::PgPool::connect(&direct).await.unwrap();
    let t = env.provision("cut-off", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 40).await;
    let before = snapshot(&Place::of(&t), id).await;
    let op = to_schema(&mut env, &t).await;
    env.until_step_done(&op.name, "fence").await;

    // A loses the registry mid-step (it can still reach the data plane); B joins.
    partition.cut();
    let a = env.process.take().unwrap();
    let b = Process::spawn(&env.config, &env.dir, "");
    env.switch_to(b).await;
    let (_, moved) = env.wait_tenant(&op.name).await;
    assert_eq!(snapshot(&Place::of(&moved), id).await, before, "same rows");

    // By the time A's step would have gone on, it had stopped itself: it applied nothing
    // while B held the operation.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        log.contains("registry unreachable: stopping the step before the lease can expire"),
        "{log}"
    );
    assert!(
        !log.contains("tail applied"),
        "A applied the tail after it was cut off:\n{log}"
    );
    drop(a);
}
