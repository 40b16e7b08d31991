//! Fleet migrations: `plan` → `canary` → `approve` → `rollout` (docs/rollouts.md).
//!
//! - `plan` lists the targets once, in `rollout_targets`: each pool with a tenant below the
//!   target version, and each schema/database tenant below it; canaries first.
//! - `canary` migrates the canaries; any failure stops the rollout.
//! - `approve` waits (the operation parked, no worker held) for ResumeRollout, unless the
//!   request said to continue on its own or there were no canaries.
//! - `rollout` migrates the rest, `concurrency` at a time, and stops launching once more than
//!   `max_failures` failed. Tenants skipped because an operation held them get one more look
//!   at the end. Failures left fail the operation, naming them.
//!
//! Each target is migrated in its own data-plane transaction with the rollout's lock
//! timeout, inside a registry transaction holding the target's migration lock (so no tenant
//! operation starts under it), which then records the version. The target rows are the
//! durable progress: after a crash, `running` rows are migrated again (the migrator converges)
//! and `pending` ones continue. Nothing is compensated: migrations only move forward, and the
//! tenants already migrated stay so.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::context::Context;
use crate::dataplane::catalog::{self, MigrateOptions};
use crate::dataplane::{Container, pool};
use crate::error::Error;
use crate::error::ErrorCode;
use crate::operation::ProgressItem;
use crate::registry::{Registry, rollouts};
use crate::rollout::{Counts, Plan, Target, TargetState};
use crate::tenant::{Placement, Tier};
use crate::workflow::{StepContext, StepError, Workflow, failpoint, steps};

/// How often a target whose container was busy (a lock timeout) is tried, at most.
const ATTEMPTS: i32 = 3;
/// How often a running rollout reports progress and looks at its cancel flag, at most.
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// How often a rollout parked for approval looks again without being woken.
const APPROVAL_RECHECK: Duration = Duration::from_secs(60);

pub struct MigrateFleet;

steps!(pub enum Step {
    Plan => "plan",
    Canary => "canary",
    Approve => "approve",
    Rollout => "rollout",
});

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub plan: Plan,
    /// Only this target (a retry of one target of rollout `retry_of`).
    pub only: Option<String>,
    pub retry_of: Option<Uuid>,
    /// Set by `plan`.
    pub canaries: Option<i64>,
    /// The targets' states when the last step ended.
    pub counts: Option<Counts>,
}

impl State {
    pub fn new(plan: Plan) -> Self {
        State {
            plan,
            only: None,
            retry_of: None,
            canaries: None,
            counts: None,
        }
    }
}

impl Workflow for MigrateFleet {
    const KIND: &'static str = "migrate_fleet";
    type Step = Step;
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: Step,
        state: &mut State,
    ) -> Result<(), StepError> {
        let registry = &cx.deps.registry;
        // Every target migrates to the plan's version, which another replica may have
        // recorded: learn it once per step run (a resumed step runs this again), not per
        // target.
        cx.deps.tenant_schema().await?;
        match step {
            Step::Plan => {
                let (counts, canaries) = registry
                    .plan_rollout(
                        cx.operation_id,
                        state.plan.target_version,
                        &state.plan.canaries,
                        state.only.as_deref(),
                    )
                    .await?;
                state.canaries = Some(canaries);
                state.counts = Some(counts);
                tracing::info!(targets = counts.total(), canaries, "rollout planned");
            }
            Step::Canary => {
                state.counts = Some(run_targets(cx, state, true, 0).await?);
            }
            Step::Approve => {
                let (_, approved_by) = registry.rollout(cx.operation_id).await?;
                let waiting = !state.plan.auto_continue
                    && state.canaries.unwrap_or(0) > 0
                    && approved_by.is_none();
                if waiting {
                    return Err(StepError::Wait {
                        reason: "canaries migrated; waiting for ResumeRollout".into(),
                        recheck: APPROVAL_RECHECK,
                    });
                }
            }
            Step::Rollout => {
                let threshold = i64::from(state.plan.max_failures);
                run_targets(cx, state, false, threshold).await?;
                // Tenants an operation held get one more look now that time has passed.
                for t in registry.skipped_targets(cx.operation_id).await? {
                    run_target(cx.deps, t, &state.plan, state.retry_of).await?;
                }
                let counts = registry.rollout_counts(cx.operation_id).await?;
                state.counts = Some(counts);
                report(cx, counts).await?;
                if counts.failed > 0 {
                    return Err(StepError::precondition(format!(
                        "{} of {} targets failed to reach version {}: {}",
                        counts.failed,
                        counts.total(),
                        state.plan.target_version,
                        failed_names(registry, cx.operation_id).await?
                    )));
                }
            }
        }
        Ok(())
    }

    /// Nothing to undo: migrated containers stay migrated (there are no down migrations),
    /// and the target rows say which ones were.
    async fn compensate(&self, _cx: &StepContext<'_>, _state: &mut State) -> Result<(), StepError> {
        Ok(())
    }
}

/// Up to five failed targets and their errors, for the operation's error message.
async fn failed_names(registry: &Registry, operation_id: Uuid) -> Result<String, Error> {
    let failed = registry
        .list_targets(operation_id, Some(TargetState::Failed), None, 5)
        .await?;
    Ok(failed
        .iter()
        .map(|t| format!("{} ({})", t.name(), t.error.as_deref().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join("; "))
}

async fn report(cx: &StepContext<'_>, c: Counts) -> Result<(), StepError> {
    let total = c.total();
    let item = |name: &str, done| ProgressItem {
        name: name.to_owned(),
        done,
        total,
    };
    cx.progress(&[
        item("done", c.done),
        item("failed", c.failed),
        item("skipped", c.skipped),
        item("pending", c.pending + c.running),
    ])
    .await
}

/// Runs the runnable targets (canaries only, or all), `concurrency` at a time, until none is
/// left or more than `threshold` failed.
async fn run_targets(
    cx: &StepContext<'_>,
    state: &State,
    canaries_only: bool,
    threshold: i64,
) -> Result<Counts, StepError> {
    let registry = &cx.deps.registry;
    let concurrency = state.plan.concurrency as usize;
    let mut queue = std::collections::VecDeque::new();
    let mut running = JoinSet::new();
    let mut stop: Option<StepError> = None;
    let mut last_report = std::time::Instant::now();
    loop {
        if queue.is_empty() && running.is_empty() && stop.is_none() {
            // Targets sent back to the queue (busy containers, RetryRolloutTarget).
            queue.extend(
                registry
                    .runnable_targets(cx.operation_id, canaries_only)
                    .await?,
            );
            if queue.is_empty() {
                break;
            }
        }
        while stop.is_none() && running.len() < concurrency {
            let Some(t) = queue.pop_front() else { break };
            let deps = cx.deps.clone();
            let plan = state.plan.clone();
            let retry_of = state.retry_of;
            running.spawn(async move { run_target(&deps, t, &plan, retry_of).await });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let outcome =
            joined.map_err(|e| StepError::Retryable(format!("migration task: {e}")))??;
        // Counting, reporting and the cancel flag are registry round trips (the report a
        // write): at most every REPORT_EVERY, and at once after a failure (the threshold).
        if outcome != TargetState::Failed && last_report.elapsed() < REPORT_EVERY {
            continue;
        }
        last_report = std::time::Instant::now();
        let counts = registry.rollout_counts(cx.operation_id).await?;
        report(cx, counts).await?;
        if stop.is_some() {
            continue;
        }
        if registry.cancel_requested(cx.operation_id).await? {
            stop = Some(StepError::fatal(
                ErrorCode::Cancelled,
                "operation cancelled by request",
            ));
        } else if counts.failed > threshold {
            let what = if canaries_only { "canary" } else { "target" };
            stop = Some(StepError::fatal(
                ErrorCode::Aborted,
                format!(
                    "rollout stopped: {} {what}s failed (threshold {threshold}): {}",
                    counts.failed,
                    failed_names(registry, cx.operation_id).await?
                ),
            ));
        }
    }
    let counts = registry.rollout_counts(cx.operation_id).await?;
    report(cx, counts).await?;
    match stop {
        Some(e) => Err(e),
        None => Ok(counts),
    }
}

/// Migrates one target, records how it went and returns that. Errors are the registry's
/// own (the step retries); the target's failures are recorded in its row.
async fn run_target(
    deps: &Context,
    t: Target,
    plan: &Plan,
    retry_of: Option<Uuid>,
) -> Result<TargetState, StepError> {
    let registry = &deps.registry;
    if t.attempts > 0 && t.state == TargetState::Pending {
        // A busy container: give its holder a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    registry.target_started(&t).await?;
    let mut tx = registry.pool().begin().await?;
    rollouts::lock_for_migration(&mut tx, &t).await?;
    if let Some(reason) = rollouts::busy_reason(&mut tx, &t).await? {
        Registry::target_finished(
            &mut *tx,
            &t,
            TargetState::Skipped,
            None,
            Some(&reason),
            retry_of,
        )
        .await?;
        tx.commit().await?;
        return Ok(TargetState::Skipped);
    }
    let placement = match t.tenant_id {
        Some(id) => Some(rollouts::placement(&mut tx, id).await?),
        None => None,
    };
    let migrated = async {
        let version = migrate_container(deps, &t, placement, plan).await?;
        failpoint::hit("migrate_fleet.after_target").await?;
        Ok::<_, StepError>(version)
    }
    .await;
    match migrated {
        Ok(version) => {
            rollouts::record_version(&mut tx, &t, version).await?;
            Registry::target_finished(
                &mut *tx,
                &t,
                TargetState::Done,
                Some(version),
                None,
                retry_of,
            )
            .await?;
            tx.commit().await?;
            crate::metrics::rollout_target(TargetState::Done);
            Ok(TargetState::Done)
        }
        Err(e) => {
            drop(tx);
            let again = matches!(e, StepError::Retryable(_)) && t.attempts + 1 < ATTEMPTS;
            let state = if again {
                TargetState::Pending
            } else {
                TargetState::Failed
            };
            tracing::warn!(target = t.name(), error = %e, retry = again, "target migration failed");
            let also = retry_of.filter(|_| !again);
            Registry::target_finished(registry.pool(), &t, state, None, Some(&e.to_string()), also)
                .await?;
            if !again {
                crate::metrics::rollout_target(TargetState::Failed);
            }
            Ok(state)
        }
    }
}

/// Brings the target's container to the plan's version; returns the version it is at.
/// `placement`: the tenant's tier and placement now (`None` for a pool).
async fn migrate_container(
    deps: &Context,
    t: &Target,
    placement: Option<(Tier, Placement)>,
    plan: &Plan,
) -> Result<i32, StepError> {
    let cluster = deps.dataplane.cluster(&t.cluster)?;
    let (database, schema) = match (t.tenant_id, placement) {
        (Some(id), Some((tier, placement))) => {
            if tier == Tier::Pool || placement.cluster != t.cluster {
                return Err(StepError::precondition(format!(
                    "tenant moved to the {tier} tier on {} since the rollout was planned",
                    placement.cluster
                )));
            }
            let c = Container::from_placement(id, tier, &placement)?;
            (c.database, c.schema)
        }
        _ => (cluster.shared_database.clone(), pool::schema()),
    };
    let db = cluster.database(&database);
    let options = MigrateOptions {
        lock_timeout: Duration::from_millis(u64::from(plan.lock_timeout_ms)),
        newer_ok: true,
    };
    Ok(catalog::migrate_with(cluster, &db, &schema, plan.target_version, options).await?)
}
