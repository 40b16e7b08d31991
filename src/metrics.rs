//! Prometheus metrics (docs/operations.md): gRPC calls, operations and their steps, rows and
//! bytes moved, and KMS/S3 calls. Recorded in one place per kind of event — admission for
//! gRPC, the workflow engine for steps and operations, the cloud adapters through [`cloud`] —
//! and served in the Prometheus text format on `[metrics] listen` (`GET /metrics`).
//!
//! Counters and histograms count what this replica did; the operations gauge is read from the
//! registry at scrape time, so it is the same fleet-wide figure on every replica. Labels are
//! bounded: method, kind, step, state, code names — never tenant ids.

use std::sync::LazyLock;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method_ {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindState {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Step {
    kind: String,
    step: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Policy {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cloud {
    service: String,
    call: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms to about 65 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// 10 ms to about 3 hours.
fn step_time() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

struct All {
    registry: Metrics,
    grpc_calls: Family<Call, Counter>,
    grpc_seconds: Histograms<Method_>,
    operations: Family<KindState, Gauge>,
    operations_finished: Family<KindState, Counter>,
    step_seconds: Histograms<Step>,
    rows: Family<Kind, Counter>,
    rollout_targets: Family<KindState, Counter>,
    streams: Family<Method_, Gauge>,
    refusals_unrecorded: Counter,
    bytes: Family<Kind, Counter>,
    cloud_seconds: Histograms<Cloud>,
    cloud_errors: Family<Cloud, Counter>,
    backups_started: Counter,
    backups_waited: Counter,
    recovery_point_age: Family<Policy, Gauge<f64, std::sync::atomic::AtomicU64>>,
    drills_failing: Family<Policy, Gauge>,
}

static ALL: LazyLock<All> = LazyLock::new(|| {
    let mut all = All {
        registry: Metrics::with_prefix("tenantd"),
        grpc_calls: Family::default(),
        grpc_seconds: Family::new_with_constructor(latency),
        operations: Family::default(),
        operations_finished: Family::default(),
        step_seconds: Family::new_with_constructor(step_time),
        rows: Family::default(),
        rollout_targets: Family::default(),
        streams: Family::default(),
        refusals_unrecorded: Counter::default(),
        bytes: Family::default(),
        cloud_seconds: Family::new_with_constructor(latency),
        cloud_errors: Family::default(),
        backups_started: Counter::default(),
        backups_waited: Counter::default(),
        recovery_point_age: Family::default(),
        drills_failing: Family::default(),
    };
    let r = &mut all.registry;
    r.register(
        "grpc_requests",
        "gRPC calls answered, by method and status code",
        all.grpc_calls.clone(),
    );
    r.register(
        "grpc_request_duration_seconds",
        "Time to answer a gRPC call (for streams: to the first response)",
        all.grpc_seconds.clone(),
    );
    r.register(
        "operations",
        "Operations not finished, fleet-wide, by kind and state (read from the registry)",
        all.operations.clone(),
    );
    r.register(
        "operations_finished",
        "Operations this replica finished, by kind and final state",
        all.operations_finished.clone(),
    );
    r.register(
        "step_duration_seconds",
        "Time one run of a workflow step took, by kind, step and outcome",
        all.step_seconds.clone(),
    );
    r.register(
        "rows_moved",
        "Tenant rows copied, restored or deleted, by workflow kind",
        all.rows.clone(),
    );
    r.register(
        "rollout_targets",
        "Containers fleet migrations finished, by kind and state (done or failed)",
        all.rollout_targets.clone(),
    );
    r.register(
        "open_streams",
        "Server streams this replica is sending, by method",
        all.streams.clone(),
    );
    r.register(
        "audit_refusals_unitemised",
        "Refused calls recorded only in a count, not one entry each (the audit queue was full)",
        all.refusals_unrecorded.clone(),
    );
    r.register(
        "bytes_moved",
        "Archive bytes written by exports, by workflow kind",
        all.bytes.clone(),
    );
    r.register(
        "cloud_call_duration_seconds",
        "Time of one KMS or S3 call, by service and call",
        all.cloud_seconds.clone(),
    );
    r.register(
        "cloud_call_errors",
        "KMS or S3 calls that failed, by service and call",
        all.cloud_errors.clone(),
    );
    r.register(
        "scheduled_backups_started",
        "Scheduled backups this replica's scheduler started",
        all.backups_started.clone(),
    );
    r.register(
        "scheduled_backups_waited",
        "Ticks of this replica's scheduler that found a due tenant busy with another operation",
        all.backups_waited.clone(),
    );
    r.register(
        "backup_recovery_point_age_seconds",
        "Per backup policy, the age of the newest backup of its worst-off tenant (read from \
         the registry)",
        all.recovery_point_age.clone(),
    );
    r.register(
        "backup_drills_failing",
        "Per backup policy, the tenants whose latest restore drill failed (read from the \
         registry)",
        all.drills_failing.clone(),
    );
    all
});

/// One scheduler tick started `started` backups and found `waited` tenants busy.
pub fn backups_scheduled(started: u64, waited: u64) {
    ALL.backups_started.inc_by(started);
    ALL.backups_waited.inc_by(waited);
}

/// A gRPC call answered with `code` (a status code name) after `took`.
pub fn grpc_call(method: &str, code: &str, took: Duration) {
    ALL.grpc_calls
        .get_or_create(&Call {
            method: method.to_owned(),
            code: code.to_owned(),
        })
        .inc();
    ALL.grpc_seconds
        .get_or_create(&Method_ {
            method: method.to_owned(),
        })
        .observe(took.as_secs_f64());
}

/// An open server stream of `method`, counted until the guard is dropped.
pub fn stream_opened(method: &'static str) -> StreamGuard {
    let labels = Method_ {
        method: method.to_owned(),
    };
    ALL.streams.get_or_create(&labels).inc();
    StreamGuard(labels)
}

pub struct StreamGuard(Method_);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        ALL.streams.get_or_create(&self.0).dec();
    }
}

/// `n` refused calls that the audit log records as one count.
pub fn refusals_unitemised(n: u64) {
    ALL.refusals_unrecorded.inc_by(n);
}

/// One run of a step: `outcome` is `done`, `retry`, `waiting` or `failed`.
pub fn step(kind: &str, step: &str, outcome: &str, took: Duration) {
    ALL.step_seconds
        .get_or_create(&Step {
            kind: kind.to_owned(),
            step: step.to_owned(),
            outcome: outcome.to_owned(),
        })
        .observe(took.as_secs_f64());
}

pub fn operation_finished(kind: &str, state: &str) {
    ALL.operations_finished
        .get_or_create(&KindState {
            kind: kind.to_owned(),
            state: state.to_owned(),
        })
        .inc();
}

/// A fleet migration finished one container (`done` or `failed`).
pub fn rollout_target(state: crate::rollout::TargetState) {
    ALL.rollout_targets
        .get_or_create(&KindState {
            kind: "migrate_fleet".to_owned(),
            state: state.as_str().to_owned(),
        })
        .inc();
}

pub fn rows_moved(kind: &str, rows: u64) {
    ALL.rows
        .get_or_create(&Kind {
            kind: kind.to_owned(),
        })
        .inc_by(rows);
}

pub fn bytes_moved(kind: &str, bytes: u64) {
    ALL.bytes
        .get_or_create(&Kind {
            kind: kind.to_owned(),
        })
        .inc_by(bytes);
}

/// One KMS or S3 call (`service` as the SDK names it: "KMS", "S3") that took `took`.
pub fn cloud_call(service: &str, call: &str, took: Duration, failed: bool) {
    let labels = Cloud {
        service: service.to_owned(),
        call: call.to_owned(),
    };
    ALL.cloud_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    if failed {
        ALL.cloud_errors.get_or_create(&labels).inc();
    }
}

/// How fresh the operations gauge is: scrapes within this time of the last registry read
/// are answered from it.
const OPERATIONS_FRESH: Duration = Duration::from_secs(1);

/// When the operations gauge was last read; locked only by the scrape refreshing it.
static OPERATIONS_READ: LazyLock<tokio::sync::Mutex<Option<std::time::Instant>>> =
    LazyLock::new(|| tokio::sync::Mutex::new(None));

/// The metrics in the Prometheus text format, with the operations gauge as the registry
/// last told it.
pub async fn render(registry: &Registry) -> String {
    refresh_operations(registry).await;
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &ALL.registry)
        .expect("writing to a String");
    out
}

/// Reads the operations gauge from the registry, unless it is fresh or another scrape is
/// reading it: however many scrapes arrive, at most one holds a registry connection, at
/// most once per [`OPERATIONS_FRESH`]. A registry that does not answer leaves the last
/// value.
async fn refresh_operations(registry: &Registry) {
    let Ok(mut read) = OPERATIONS_READ.try_lock() else {
        return;
    };
    if read.is_some_and(|at| at.elapsed() < OPERATIONS_FRESH) {
        return;
    }
    let counts = tokio::time::timeout(Duration::from_secs(5), registry.active_operation_counts());
    match counts.await {
        Ok(Ok(counts)) => {
            ALL.operations.clear();
            for (kind, state, n) in counts {
                ALL.operations
                    .get_or_create(&KindState { kind, state })
                    .set(n);
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: operation counts unavailable"),
        Err(_) => tracing::warn!("metrics: operation counts took too long"),
    }
    let ages = tokio::time::timeout(Duration::from_secs(5), registry.recovery_point_ages());
    match ages.await {
        Ok(Ok(ages)) => {
            ALL.recovery_point_age.clear();
            for (policy, age) in ages {
                ALL.recovery_point_age
                    .get_or_create(&Policy {
                        policy: policy.to_string(),
                    })
                    .set(age);
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: recovery point ages unavailable"),
        Err(_) => tracing::warn!("metrics: recovery point ages took too long"),
    }
    let failing = tokio::time::timeout(Duration::from_secs(5), registry.failing_drills());
    match failing.await {
        Ok(Ok(failing)) => {
            ALL.drills_failing.clear();
            for (policy, n) in failing {
                ALL.drills_failing
                    .get_or_create(&Policy {
                        policy: policy.to_string(),
                    })
                    .set(n);
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: drill results unavailable"),
        Err(_) => tracing::warn!("metrics: drill results took too long"),
    }
    *read = Some(std::time::Instant::now());
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: CancellationToken) {
    tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics");
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |request: Request<Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&request, &registry).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), answer);
            // A scraper that stalls is cut off.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

async fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, render(registry).await),
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()),
        _ => (StatusCode::NOT_FOUND, "metrics are at /metrics\n".into()),
    };
    Response::builder()
        .status(status)
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
