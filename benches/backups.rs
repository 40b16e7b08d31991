//! Scheduled backups, on an embedded, durable PostgreSQL with the local key service and
//! object store. It prints
//!
//! - **the scheduler's registry cost**: 1,000 tenants on one hourly plan policy, ticked the way
//!   every replica ticks (`[backups] tick_seconds`, default 15 s: 4 ticks a minute), on a
//!   replica of its own: the SQL statements the ticks send to the registry in a minute when
//!   nothing is due, and in the minute the hourly slot falls (1,000 scheduled exports
//!   started), counted from sqlx's own statement events inside the ticks; and the hourly
//!   average per minute;
//! - **100 tenants whose slot falls at once** (`TENANTD_BENCH_ROWS` / 1,000 rows each, default
//!   1,000): the time until all 100 scheduled exports are complete, run with the concurrency
//!   the scheduler allows (every due tenant is started in one tick; `[workflow] workers` run
//!   them), against 100 exports of the same tenants one after another, in the same run.
//!
//! Run: `cargo bench --bench backups`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio::task::JoinSet;
use tracing::Instrument;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::scheduler::tick;
use tenantd::service::Control;

const TENANTS: usize = 1_000;
const AT_ONCE: usize = 100;
const TICKS_PER_MINUTE: u32 = 4;
const SPAN: &str = "bench_scheduler_tick";

/// Counts sqlx's statement events (target `sqlx::query`) emitted inside a [`SPAN`] span.
#[derive(Clone, Default)]
struct Statements(Arc<AtomicU64>);

impl<S> Layer<S> for Statements
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("sqlx::query") {
            return;
        }
        let inside = ctx
            .event_scope(event)
            .is_some_and(|mut scope| scope.any(|span| span.name() == SPAN));
        if inside {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Statements {
    fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

/// One tick at `at`, its statements counted; (started, statements, time).
async fn counted_tick(
    replica: &Control,
    statements: &Statements,
    at: DateTime<Utc>,
) -> anyhow::Result<(usize, u64, Duration)> {
    statements.take();
    let started = Instant::now();
    let done = tick(replica, at)
        .instrument(tracing::info_span!(SPAN))
        .await?;
    anyhow::ensure!(done.failed == 0, "{} starts failed", done.failed);
    Ok((done.started.len(), statements.take(), started.elapsed()))
}

/// A whole hour `hours` from now: the slot of an hourly policy set now.
fn hour(hours: i64) -> DateTime<Utc> {
    (Utc::now() + TimeDelta::hours(hours))
        .duration_trunc(TimeDelta::hours(1))
        .expect("whole hours")
}

const PLAN: &str = "hourly";

async fn backup_client(
    running: &common::Running,
) -> anyhow::Result<
    pb::backup_service_client::BackupServiceClient<tenantd::auth::client::AuthChannel>,
> {
    let channel = tonic::transport::Channel::from_shared(running.addr.clone())?
        .connect()
        .await?;
    Ok(pb::backup_service_client::BackupServiceClient::new(
        running.with_token(channel)?,
    ))
}

fn plan_target(plan: &str) -> Option<pb::PolicyTarget> {
    Some(pb::PolicyTarget {
        target: Some(pb::policy_target::Target::Plan(plan.into())),
    })
}

fn tenant_target(id: Uuid) -> Option<pb::PolicyTarget> {
    Some(pb::PolicyTarget {
        target: Some(pb::policy_target::Target::Tenant(id.to_string())),
    })
}

fn hourly(target: Option<pb::PolicyTarget>, schedule: &str) -> pb::SetBackupPolicyRequest {
    pb::SetBackupPolicyRequest {
        target,
        schedule: schedule.into(),
        keep_last: 24,
        ..Default::default()
    }
}

/// Waits until no operation is pending or running, fleet-wide.
async fn wait_for_operations(c: &common::Clients) -> anyhow::Result<()> {
    let mut ops = c.ops.clone();
    loop {
        let pending = ops
            .list_operations(pb::ListOperationsRequest {
                state: pb::OperationState::Pending as i32,
                page_size: 1,
                ..Default::default()
            })
            .await?
            .into_inner();
        let active = ops
            .list_operations(pb::ListOperationsRequest {
                state: pb::OperationState::Running as i32,
                page_size: 1,
                ..Default::default()
            })
            .await?
            .into_inner();
        if pending.operations.is_empty() && active.operations.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Provisions `n` pool tenants of `plan`, eight requests in flight.
async fn provision_many(
    c: &common::Clients,
    prefix: &str,
    plan: &str,
    n: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(n);
    let mut inflight = JoinSet::new();
    for i in 0..n {
        if inflight.len() == 8 {
            ids.push(inflight.join_next().await.expect("in flight")??);
        }
        let mut c = c.clone();
        let (slug, plan) = (format!("{prefix}-{i:04}"), plan.to_owned());
        inflight.spawn(async move {
            let op = c
                .tenants
                .create_tenant(pb::CreateTenantRequest {
                    slug,
                    plan,
                    tier: pb::Tier::Pool as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let (_, t) = c.succeeded(op, "provisioning").await?;
            anyhow::Ok(t.id.parse::<Uuid>()?)
        });
    }
    while let Some(id) = inflight.join_next().await {
        ids.push(id??);
    }
    Ok(ids)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let statements = Statements::default();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("sqlx::query", tracing::Level::TRACE)
        .with_target("backups", tracing::Level::INFO);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(statements.clone().with_filter(filter)),
    )?;
    let rows_each = (common::rows() / 1_000).max(100);
    let running = common::start_tuned("backups", |config| {
        // The bench creates 1,000 tenants as one principal.
        config.limits.operation_starts_per_minute = 100_000;
    })
    .await?;
    let workers = running.stack.config.workflow.workers;
    let mut c = running.clients.clone();
    let deps = tenantd::server::context(running.stack.config.clone()).await?;
    let events = tenantd::registry::events::OperationEvents::start(
        deps.registry.pool().clone(),
        tokio_util::sync::CancellationToken::new(),
    );
    let replica = Control::new(deps, events);

    // 1,000 pool tenants of one plan, 100 of them with rows.
    println!(
        "provisioning {TENANTS} pool tenants, {AT_ONCE} of them with about {rows_each} rows each"
    );
    let started = Instant::now();
    let busy = provision_many(&c, "due", PLAN, AT_ONCE).await?;
    provision_many(&c, "empty", PLAN, TENANTS - AT_ONCE).await?;
    let shared = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&running.stack.postgres.url("tenants"))
        .await?;
    let pool_schema = c.placement(busy[0]).await?.schema;
    for id in &busy {
        common::fill(&shared, &pool_schema, *id, rows_each).await?;
    }
    sqlx::raw_sql("VACUUM ANALYZE").execute(&shared).await?;
    println!("  ready in {:.1} s", started.elapsed().as_secs_f64());

    // The baseline: the 100 exported one after another.
    let started = Instant::now();
    for id in &busy {
        c.export(*id).await?;
    }
    let sequential = started.elapsed();

    // One hourly policy for the plan: the scheduler's statements per minute.
    let mut backups = backup_client(&running).await?;
    backups
        .set_backup_policy(hourly(plan_target(PLAN), "0 * * * *"))
        .await?;
    let slot = hour(1);
    // The minute the slot falls: every tenant is started (at most
    // `scheduler::MAX_STARTS_PER_TICK` a tick), once.
    let (mut started_in_slot, mut slot_minute, mut start_ticks, mut slot_time) =
        (0, 0, 0, Duration::ZERO);
    for i in 0..TICKS_PER_MINUTE {
        let at = slot + TimeDelta::seconds(5 + 15 * i as i64);
        let (n, q, took) = counted_tick(&replica, &statements, at).await?;
        if n > 0 {
            start_ticks += 1;
            slot_time += took;
        }
        started_in_slot += n;
        slot_minute += q;
    }
    anyhow::ensure!(
        started_in_slot == TENANTS,
        "{started_in_slot} of {TENANTS} started in the minute of the slot"
    );
    // Every other minute of the hour: the slot is due, every tenant has its run, nothing
    // starts.
    let mut idle = 0;
    for i in 0..TICKS_PER_MINUTE {
        let at = slot + TimeDelta::seconds(65 + 15 * i as i64);
        let (n, q, _) = counted_tick(&replica, &statements, at).await?;
        anyhow::ensure!(n == 0, "{n} started twice");
        idle += q;
    }
    let hourly_average = (slot_minute + 59 * idle) as f64 / 60.0;
    println!("  waiting for the {TENANTS} scheduled exports");
    wait_for_operations(&c).await?;

    // The 100 with rows get a policy of their own at half past: their slot falls at once.
    for id in &busy {
        backups
            .set_backup_policy(hourly(tenant_target(*id), "30 * * * *"))
            .await?;
    }
    let started = Instant::now();
    let done = tick(
        &replica,
        slot + TimeDelta::minutes(30) + TimeDelta::seconds(5),
    )
    .await?;
    anyhow::ensure!(
        done.started.len() == AT_ONCE,
        "{} of {AT_ONCE} started",
        done.started.len()
    );
    let start_tick = started.elapsed();
    // One after another: the last to finish ends the wait, whatever the order.
    for (_, _, op) in &done.started {
        let op = c.wait(format!("operations/{op}")).await?;
        anyhow::ensure!(
            matches!(op.result, Some(pb::operation::Result::Export(_))),
            "a scheduled export failed: {:?}",
            op.result
        );
    }
    let scheduled = started.elapsed();

    println!();
    println!(
        "scheduling {TENANTS} tenants on one hourly policy ({TICKS_PER_MINUTE} ticks a minute):"
    );
    println!(
        "  registry statements per minute, nothing due:   {idle} ({} per tick)",
        idle / TICKS_PER_MINUTE as u64
    );
    println!(
        "  registry statements in the minute of the slot: {slot_minute} ({:.1} per backup started; \
         {start_ticks} ticks started them in {:.2} s)",
        (slot_minute - idle) as f64 / TENANTS as f64,
        slot_time.as_secs_f64()
    );
    println!("  hourly average: {hourly_average:.0} statements per minute");
    println!();
    println!(
        "{AT_ONCE} tenants ({rows_each} rows each) whose slot falls at once, {workers} workers:"
    );
    println!(
        "  scheduled: {:.2} s (the tick starting them: {:.3} s)",
        scheduled.as_secs_f64(),
        start_tick.as_secs_f64()
    );
    println!("  sequential exports: {:.2} s", sequential.as_secs_f64());
    println!(
        "  ratio sequential / scheduled: {:.2}",
        sequential.as_secs_f64() / scheduled.as_secs_f64()
    );
    running.stop().await
}
