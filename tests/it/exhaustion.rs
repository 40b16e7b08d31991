//! Exhaustion (docs/security.md): a flood of refused and streaming calls, from callers who
//! go away mid-stream, cannot starve the workers' heartbeats, the audit log or other
//! callers; one principal past its limits gets RESOURCE_EXHAUSTED and changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::Role;

use crate::harness::{Place, TestEnv, as_role, connect, fill, free_port, http_get, sample};

/// Refused, exhausted and other answers the flood got, and the streams it opened.
#[derive(Default)]
struct Tally {
    denied: AtomicU64,
    exhausted: AtomicU64,
    streams: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn count(&self, r: Result<(), tonic::Status>) {
        let n = match r.map_err(|s| s.code()) {
            Ok(()) => &self.streams,
            Err(Code::PermissionDenied) => &self.denied,
            Err(Code::ResourceExhausted) => &self.exhausted,
            // A connection the server sent GOAWAY on, a stream cut at shutdown.
            Err(_) => &self.other,
        };
        n.fetch_add(1, Ordering::Relaxed);
    }
}

async fn open_streams(metrics: u16) -> f64 {
    let (_, body) = http_get(metrics, "/metrics").await;
    sample(&body, r#"tenantd_open_streams{method="WatchOperation"}"#).unwrap_or(0.0)
}

/// 200 callers: viewers calling a method they may not (each refusal an audit entry),
/// watchers opening WatchOperation on the running move and leaving after the first message,
/// health watchers and metrics scrapers. The move finishes, no step ran twice (every
/// heartbeat held its lease), the administrator is answered throughout, every admitted
/// refusal is on record in an intact audit log, and the streams end with their clients.
#[tokio::test]
async fn two_hundred_callers_flooding_refused_and_streaming_calls_do_not_stall_a_move() {
    // It loads the machine itself (200 callers), and measures whether the administrator is
    // answered: not beside the tests that load it in bursts (pgBackRest restores).
    let _one = crate::harness::one_at_a_time().await;
    let (mut config, dir) = TestEnv::config().await;
    let metrics = free_port();
    config.metrics.listen = Some(format!("127.0.0.1:{metrics}").parse().unwrap());
    // The fence is held for 3 s, so the flood meets every phase of the move.
    let mut env = TestEnv::spawn_with(config, dir, "change_tier.before_switch=sleep(3000)").await;
    let t = env.provision("flooded", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 200).await;
    let op = env
        .tenants
        .change_tier(pb::ChangeTierRequest {
            tenant: t.id.clone(),
            tier: pb::Tier::Schema as i32,
            cluster: "main".into(),
            request_id: String::new(),
            copy_mb_per_s: 0,
        })
        .await
        .unwrap()
        .into_inner();

    let stop = CancellationToken::new();
    let tally = Arc::new(Tally::default());
    let mut flood = Vec::new();
    for i in 0..200 {
        let (addr, stop, tally, op) = (
            env.addr.clone(),
            stop.clone(),
            tally.clone(),
            op.name.clone(),
        );
        flood.push(tokio::spawn(async move {
            let channel = connect(&addr).await;
            while !stop.is_cancelled() {
                match i % 10 {
                    // Refused: a viewer may not delete.
                    0..=4 => {
                        let mut c =
                            DeletionServiceClient::new(as_role(channel.clone(), Role::Viewer));
                        let r = c.delete_tenant(pb::DeleteTenantRequest::default()).await;
                        tally.count(r.map(|_| ()));
                    }
                    // Streaming, then gone: a billing console watching the move.
                    5..=7 => {
                        let mut c =
                            OperationServiceClient::new(as_role(channel.clone(), Role::Billing));
                        let r = c
                            .watch_operation(pb::WatchOperationRequest { name: op.clone() })
                            .await;
                        let r = match r {
                            Ok(s) => s.into_inner().message().await.map(|_| ()),
                            Err(e) => Err(e),
                        };
                        tally.count(r);
                    }
                    // Health watchers (no credentials needed).
                    8 => {
                        let mut c = HealthClient::new(channel.clone());
                        let r = c
                            .watch(tonic_health::pb::HealthCheckRequest {
                                service: String::new(),
                            })
                            .await;
                        if let Ok(s) = r {
                            let _ = s.into_inner().message().await;
                        }
                    }
                    _ => {
                        let _ = http_get(metrics, "/metrics").await;
                    }
                }
            }
        }));
    }

    // The administrator is a principal of its own: answered throughout.
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(2) {
        env.tenants
            .get_tenant(pb::GetTenantRequest {
                tenant: t.id.clone(),
            })
            .await
            .expect("the administrator is answered during the flood");
        answered += 1;
    }
    let done = env.wait(&op.name).await;
    stop.cancel();
    for f in flood {
        f.await.unwrap();
    }

    assert!(
        matches!(done.result, Some(pb::operation::Result::Tenant(_))),
        "the move finished: {done:?}"
    );
    let steps = &done.metadata.as_ref().unwrap().steps;
    assert!(
        steps.iter().all(|s| s.attempts == 1),
        "no step ran twice, so no heartbeat lost its lease: {steps:?}"
    );
    assert!(answered > 0);
    let (denied, exhausted, streams) = (
        tally.denied.load(Ordering::Relaxed),
        tally.exhausted.load(Ordering::Relaxed),
        tally.streams.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood: {denied} refused, {exhausted} exhausted, {streams} streams, {} other",
        tally.other.load(Ordering::Relaxed)
    );
    assert!(
        denied > 100 && streams > 100,
        "the flood ran: {denied} refusals, {streams} streams"
    );

    // Every stream's task ended with its client.
    let until = Instant::now() + Duration::from_secs(10);
    while open_streams(metrics).await > 0.0 {
        assert!(
            Instant::now() < until,
            "WatchOperation streams outlived their clients"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each refusal that was answered was recorded first, in an intact chain.
    let verified = env
        .audit
        .verify_audit_log(pb::VerifyAuditLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    // Itemised up to the viewer's limit of calls at once, counted past it (the count is
    // written within a second of the last refusal).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (itemised, counted) = refusals_on_record(&env).await;
        if itemised + counted >= denied as i64 {
            eprintln!("audit: {itemised} refusals itemised, {counted} counted");
            assert!(itemised > 0);
            break;
        }
        assert!(
            Instant::now() < until,
            "{itemised} itemised and {counted} counted for {denied} refusals"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Refusals of DeleteTenant in the audit log: (itemised, counted in summary entries).
async fn refusals_on_record(env: &TestEnv) -> (i64, i64) {
    let (itemised,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit_events
         WHERE code = 'PERMISSION_DENIED' AND method = '/tenantd.v1.DeletionService/DeleteTenant'",
    )
    .fetch_one(&env.registry)
    .await
    .unwrap();
    let counted: Vec<(String,)> = sqlx::query_as(
        "SELECT detail FROM audit_events WHERE method = '(refused calls)' AND principal = 'tenantd'",
    )
    .fetch_all(&env.registry)
    .await
    .unwrap();
    let counted = counted
        .iter()
        .map(|(d,)| d.split(' ').next().unwrap().parse::<i64>().unwrap())
        .sum();
    (itemised, counted)
}

/// Past `calls_per_principal` calls in progress (open streams count until they end) and past
/// `operation_starts_per_minute`, a principal gets RESOURCE_EXHAUSTED naming the limit; the
/// refused start creates nothing; other principals are unaffected; a finished stream frees
/// its place.
#[tokio::test]
async fn a_principal_past_its_limits_gets_resource_exhausted_and_changes_nothing() {
    let (mut config, dir) = TestEnv::config().await;
    config.limits.calls_per_principal = 3;
    config.limits.operation_starts_per_minute = 2;
    // Provisions stay running long enough to be watched.
    let mut env = TestEnv::spawn_with(config, dir, "provision.before_activate=sleep(20000)").await;
    let billing = as_role(connect(&env.addr).await, Role::Billing);
    let mut tenants = TenantServiceClient::new(billing.clone());
    let create = |slug: &str| pb::CreateTenantRequest {
        slug: slug.into(),
        display_name: slug.into(),
        tier: pb::Tier::Pool as i32,
        ..Default::default()
    };
    let first = tenants
        .create_tenant(create("limited-a"))
        .await
        .unwrap()
        .into_inner();
    tenants.create_tenant(create("limited-b")).await.unwrap();
    let refused = tenants
        .create_tenant(create("limited-c"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("operation_starts_per_minute"),
        "{refused:?}"
    );
    let (created,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tenants WHERE slug LIKE 'limited-%'")
            .fetch_one(&env.registry)
            .await
            .unwrap();
    assert_eq!(created, 2, "the refused start created nothing");
    // Another principal may still start operations.
    env.create("admins-own", pb::Tier::Pool, "main").await;

    // Three open streams are the principal's three calls.
    let mut ops = OperationServiceClient::new(billing);
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = ops
            .watch_operation(pb::WatchOperationRequest {
                name: first.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().unwrap();
        open.push(s);
    }
    let busy = ops
        .get_operation(pb::GetOperationRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
    assert!(busy.message().contains("calls_per_principal"), "{busy:?}");
    // The administrator is not held back by billing's streams.
    env.ops
        .get_operation(pb::GetOperationRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap();
    // A stream that ends frees its place.
    drop(open.pop());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match ops
            .get_operation(pb::GetOperationRequest {
                name: first.name.clone(),
            })
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the closed stream's place was not freed: {e:?}"),
        }
    }
}
