//! Tier changes (promotion and demotion, and moves between clusters):
//! preflight → create_target → capture → copy → catch_up → fence → tail → verify → switch →
//! unfence → cleanup. The tenant keeps writing through the copy and the catch-up; its writes
//! pause only from `fence` to `unfence` (docs/tier-changes.md, "Online moves").
//!
//! - `preflight` records where the tenant is (the registry is authoritative: this operation
//!   holds the tenant's one active-operation slot, so its placement cannot change under us),
//!   and refuses unless the tenant is active, the target container is free and both ends are
//!   at the same tenant-schema version, the source has the write fence on every tenant table
//!   (`fence::prepare` adds what tenantd's machinery lacks there, then reads the catalog),
//!   and the source cluster's admin role can see the transactions the fence must wait for.
//!   It also decides whether the move is online: the source can decode its WAL for us
//!   ([`changes::unavailable`]). If not, the move is fenced for the whole copy, as before,
//!   and the operation says why.
//! - `create_target` creates and migrates the target container, fences the tenant there at
//!   once (nothing may write it before routing points at it), then grants the application
//!   role (a tenant's own role on the target cluster, as a group role that never logs in).
//!   A schema or database target is created afresh (a retry drops what an interrupted try
//!   left) and its keys, indexes and foreign keys are set aside ([`deferred`]) until its
//!   rows are in.
//! - `capture` (online) creates the move's publication and logical slot on the source: from
//!   here on every change the tenant commits is kept for the move.
//! - `copy` (online) streams every table by binary COPY while the tenant writes, two tables
//!   at a time, builds the target's keys and indexes again, and verifies every table at the
//!   copy's snapshot.
//! - `catch_up` (online) applies the captured changes in rounds, each up to where the source
//!   was when it began, until a round is small; a tenant that writes faster than that for
//!   `[workflow] catch_up_ms` gets its move rolled back. Cancellation is honoured between
//!   rounds.
//! - `fence` fences the tenant's writes in the source and waits out the transactions that
//!   began before the fence ([`crate::dataplane::fence`]). From here reads go on, writes get
//!   SQLSTATE TF001.
//! - `tail` (online) applies what the tenant wrote since the last round; fenced moves copy
//!   (and rebuild) every table here instead. Then the target's sequences are moved past the copied values.
//! - `verify` compares row count and content checksum of every table on both ends.
//! - `switch` points the registry at the target and bumps the routing epoch in one statement.
//!   This is the point of no return (`ROLL_FORWARD_FROM`): later steps are retried until they
//!   succeed, and cancellation is no longer honoured.
//! - `unfence` lifts the fence on the target: the write pause ends.
//! - `cleanup` drops the move's slot and publication, ends the logins issued for the source
//!   (before the switch's routing epoch; `crate::credentials`), then removes the source
//!   (pool: batched deletes; schema, database: drop). The source stays fenced until it is
//!   gone, so a client on a stale route cannot write there. Then a schema or database target
//!   behind the fleet's tenant-schema version (a rollout started during the move) is migrated
//!   to it (docs/rollouts.md).
//!
//! Compensation (any failure before the switch) drops the slot and publication, drops the
//! target and unfences the source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::context::Context;
use crate::credentials::{self, Revoke};
use crate::dataplane::changes::{self, Capture};
use crate::dataplane::copy::{self, TableDigest, Writes};
use crate::dataplane::{
    Cluster, Container, DataPlaneError, backend, catalog, deferred, erasure, fence, load, tables,
    two_lanes,
};
use crate::error::ErrorCode;
use crate::operation::ProgressItem;
use crate::registry::Registry;
use crate::sql::{Ident, Statement};
use crate::tenant::{TenantRef, Tier};
use crate::workflow::{StepContext, StepError, Workflow, failpoint, steps};
use crate::workflows::container::migrate_to_fleet;

pub struct ChangeTier;

// Names and order are stored (docs/workflows.md): migration 0009 renumbered operations
// stored with the eight steps before capture, catch_up and tail.
steps!(pub enum Step {
    Preflight => "preflight",
    CreateTarget => "create_target",
    Capture => "capture",
    Copy => "copy",
    CatchUp => "catch_up",
    Fence => "fence",
    Tail => "tail",
    Verify => "verify",
    Switch => "switch",
    Unfence => "unfence",
    Cleanup => "cleanup",
});

/// One end of the move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    pub tier: Tier,
    pub cluster: String,
}

/// A verified table: its row count and checksum, equal on both ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifiedTable {
    pub table: String,
    pub rows: i64,
    pub checksum: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub target: Side,
    /// Set by `preflight`, from the registry.
    #[serde(default)]
    pub source: Option<Side>,
    #[serde(default)]
    pub schema_version: Option<i32>,
    /// Set by `fence` and `unfence`.
    #[serde(flatten)]
    pub pause: fence::Pause,
    /// Set by `verify`.
    #[serde(default)]
    pub verified: Vec<VerifiedTable>,
    /// Set by `preflight` when the move copies while the tenant writes; the progress of
    /// its catch-up. `None`: the copy runs fenced (also every move stored before online
    /// moves existed).
    #[serde(default)]
    pub online: Option<Online>,
    /// Why the move is fenced for its whole copy, when preflight found it cannot be online.
    #[serde(default)]
    pub fenced_copy_because: Option<String>,
    /// Set by `create_target`: the target's keys, indexes and foreign keys, set aside until
    /// the copy is in (none for a pool target, or a move stored before this existed).
    #[serde(default)]
    pub deferred: Vec<deferred::Deferred>,
    /// The online copy's bound on what it reads from the source, MB/s (0: unbounded;
    /// [`copy::Pace`]): the request's, else `[workflow] copy_mb_per_s`.
    #[serde(default)]
    pub copy_mb_per_s: u32,
}

/// An online move's catch-up, as far as it got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Online {
    /// Catch-up rounds and the changes they applied.
    pub rounds: u32,
    pub changes: u64,
    /// WAL the slot held back after the last round.
    pub lag_bytes: i64,
    /// Changes applied inside the fence.
    pub tail_changes: u64,
    /// Rows the catch-up and the tail wrote, verified inside the fence.
    #[serde(default)]
    pub verified_changed: u64,
    /// The last [`RECENT_ROUNDS`] rounds, oldest first.
    #[serde(default)]
    pub recent_rounds: Vec<RoundRecord>,
    /// The most WAL the slot held back on the source at any read.
    #[serde(default)]
    pub peak_retained_bytes: i64,
    /// Rows the catch-up wrote that were found equal on both ends before the fence (the
    /// fence verifies the others, and those written again since).
    #[serde(default)]
    pub verified_ahead: u64,
}

/// One catch-up round, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    pub changes: u64,
    pub lag_bytes: i64,
    pub elapsed_ms: u64,
}

/// How many rounds [`Online::recent_rounds`] keeps.
pub const RECENT_ROUNDS: usize = 32;

impl Online {
    /// Notes a read of the slot: the lag it left and the WAL the slot held back.
    fn observe(&mut self, r: &changes::Round) {
        self.lag_bytes = r.lag_bytes;
        self.peak_retained_bytes = self.peak_retained_bytes.max(r.retained_bytes());
    }

    fn record_round(&mut self, changes: u64, elapsed: Duration) {
        self.rounds += 1;
        self.changes += changes;
        if self.recent_rounds.len() == RECENT_ROUNDS {
            self.recent_rounds.remove(0);
        }
        self.recent_rounds.push(RoundRecord {
            round: self.rounds,
            changes,
            lag_bytes: self.lag_bytes,
            elapsed_ms: elapsed.as_millis() as u64,
        });
    }
}

impl State {
    pub fn new(target: Side, copy_mb_per_s: u32) -> Self {
        State {
            target,
            copy_mb_per_s,
            source: None,
            schema_version: None,
            pause: fence::Pause::default(),
            verified: Vec::new(),
            online: None,
            fenced_copy_because: None,
            deferred: Vec::new(),
        }
    }

    pub fn rows_copied(&self) -> i64 {
        self.verified.iter().map(|t| t.rows).sum()
    }
}

/// The failpoint switch that damages the target after the copy, so tests can prove that
/// verification catches a bad copy and rolls the move back.
pub const CORRUPT_TARGET: &str = "change_tier.corrupt_target";

/// The failpoint evaluated at the start of every catch-up round (tests hold a round there).
pub const CATCH_UP_ROUND: &str = "change_tier.catch_up_round";

/// Both ends of the move, resolved to clusters and containers.
struct Ends<'a> {
    src_cluster: &'a Cluster,
    src: Container,
    dst_cluster: &'a Cluster,
    dst: Container,
    /// The tenant's own role is the same role on both ends (same cluster, both tiers have
    /// one): removing either end must leave it in place.
    shared_role: bool,
}

fn ends<'a>(deps: &'a Context, tenant_id: Uuid, state: &State) -> Result<Ends<'a>, StepError> {
    let source = state
        .source
        .as_ref()
        .ok_or_else(|| StepError::internal("step ran before preflight"))?;
    let (src_cluster, src) = deps
        .dataplane
        .plan(tenant_id, source.tier, &source.cluster)?;
    let (dst_cluster, dst) =
        deps.dataplane
            .plan(tenant_id, state.target.tier, &state.target.cluster)?;
    Ok(Ends {
        src_cluster,
        src,
        dst_cluster,
        dst,
        shared_role: source.cluster == state.target.cluster
            && backend(source.tier).own_login_role()
            && backend(state.target.tier).own_login_role(),
    })
}

impl Workflow for ChangeTier {
    const KIND: &'static str = "change_tier";
    type Step = Step;
    const ROLL_FORWARD_FROM: Option<Step> = Some(Step::Switch);
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: Step,
        state: &mut State,
    ) -> Result<(), StepError> {
        let deps = cx.deps;
        let tenant_id = cx.tenant_id()?;
        // Every step after preflight works on both ends of the move, which preflight records.
        let both_ends = |state: &State| ends(deps, tenant_id, state);
        match step {
            Step::Preflight => preflight(cx, state).await?,
            Step::CreateTarget => {
                let e = both_ends(state)?;
                let version = state
                    .schema_version
                    .ok_or_else(|| StepError::missing("schema version"))?;
                let target = backend(e.dst.tier);
                if !target.shares_tables() {
                    // Preflight found it free: whatever is there, an interrupted try left.
                    target.drop_container(e.dst_cluster, &e.dst).await?;
                }
                target.create(e.dst_cluster, &e.dst).await?;
                let db = e.dst_cluster.database(&e.dst.database);
                catalog::migrate(e.dst_cluster, &db, &e.dst.schema, version).await?;
                if !target.shares_tables() {
                    state.deferred = deferred::set_aside(e.dst_cluster, &e.dst).await?;
                }
                // Fenced before the role can reach it: nothing writes the target early.
                fence::fence(e.dst_cluster, &e.dst, cx.operation_id).await?;
                credentials::grant(e.dst_cluster, &e.dst).await?;
            }
            Step::Capture => {
                if state.online.is_some() {
                    let e = both_ends(state)?;
                    let tables = tables_of(&e).await?;
                    let capture = capture(cx);
                    capture.prepare_target(e.dst_cluster, &e.dst).await?;
                    let wait = deps.config.workflow.fence_wait();
                    let started = capture.start(e.src_cluster, &e.src, &tables, wait).await?;
                    if let changes::Started::Waited(waited) = started {
                        let why = format!(
                            "a transaction elsewhere on cluster {} ran longer than the {} ms \
                             ([workflow] fence_wait_ms) its replication slot waits for",
                            e.src_cluster.name,
                            waited.as_millis()
                        );
                        tracing::warn!(reason = %why, "the tenant's writes stay fenced for the whole copy");
                        state.online = None;
                        state.fenced_copy_because = Some(why);
                    }
                }
            }
            Step::Copy => {
                if state.online.is_some() {
                    // Every table read at one snapshot, and verified against it before any
                    // captured change is applied: the bulk is checked outside the fence.
                    let e = both_ends(state)?;
                    let snapshot = copy::Snapshot::take(e.src_cluster, &e.src.database).await?;
                    let writes = Writes::Continue {
                        snapshot: &snapshot.id,
                    };
                    copy_tables(cx, &e, writes, &state.deferred, state.copy_mb_per_s).await?;
                    if failpoint::armed(CORRUPT_TARGET) {
                        corrupt(e.dst_cluster, &e.dst).await?;
                    }
                    state.verified = verify(&e, Some(&snapshot.id)).await?;
                    snapshot.release().await;
                }
            }
            Step::CatchUp => {
                if let Some(online) = state.online.clone() {
                    let e = both_ends(state)?;
                    // A move begun by an earlier build has an older table of written keys.
                    capture(cx).prepare_target(e.dst_cluster, &e.dst).await?;
                    state.online = Some(catch_up(cx, &e, online).await?);
                }
            }
            Step::Fence => {
                let e = both_ends(state)?;
                fence::fence(e.src_cluster, &e.src, cx.operation_id).await?;
                state.pause.fenced_at = Some(Utc::now());
                fence::wait_for_writers(e.src_cluster, &e.src, deps.config.workflow.fence_wait())
                    .await?;
            }
            Step::Tail => {
                let e = both_ends(state)?;
                match state.online.as_mut() {
                    Some(online) => tail(cx, &e, online).await?,
                    None => copy_tables(cx, &e, Writes::Stopped, &state.deferred, 0).await?,
                }
                let mut dst = e
                    .dst_cluster
                    .database(&e.dst.database)
                    .acquire()
                    .await
                    .map_err(|err| e.dst_cluster.err(err))?;
                tables::advance_sequences(
                    e.dst_cluster,
                    &mut dst,
                    &e.dst.schema,
                    &tables_of(&e).await?,
                )
                .await?;
                if state.online.is_none() && failpoint::armed(CORRUPT_TARGET) {
                    corrupt(e.dst_cluster, &e.dst).await?;
                }
            }
            Step::Verify => {
                let e = both_ends(state)?;
                match state.online.as_mut() {
                    // The bulk was verified at the copy's snapshot; what the catch-up and the
                    // tail wrote since is verified here, row by row of it.
                    Some(online) => online.verified_changed = verify_written(cx, &e).await?,
                    None => state.verified = verify(&e, None).await?,
                }
            }
            Step::Switch => {
                let e = both_ends(state)?;
                Registry::switch_placement(
                    deps.registry.pool(),
                    tenant_id,
                    e.dst.tier,
                    &e.dst.placement(),
                )
                .await?;
                tracing::info!(tier = %e.dst.tier, cluster = %e.dst.cluster, "routing switched");
            }
            Step::Unfence => {
                let e = both_ends(state)?;
                fence::unfence(e.dst_cluster, &e.dst).await?;
                state.pause.unfenced_at = Some(Utc::now());
                if let Some(pause) = state.pause.duration() {
                    tracing::info!(
                        write_pause_ms = pause.as_millis() as u64,
                        "writes allowed again"
                    );
                }
            }
            Step::Cleanup => {
                let e = both_ends(state)?;
                capture(cx)
                    .stop((e.src_cluster, &e.src), (e.dst_cluster, &e.dst))
                    .await?;
                // Logins issued for the source stop before it goes: they never write where
                // the tenant no longer lives (the source is fenced until then).
                let tenant = deps.registry.get_tenant(&TenantRef::Id(tenant_id)).await?;
                credentials::revoke(deps, tenant_id, Revoke::IssuedBefore(tenant.routing_epoch))
                    .await?;
                backend(e.src.tier)
                    .destroy(e.src_cluster, &e.src, e.shared_role)
                    .await?;
                if !backend(e.dst.tier).own_login_role() {
                    Registry::delete_credentials(deps.registry.pool(), tenant_id).await?;
                }
                catch_up_with_fleet(cx, &e).await?;
            }
        }
        Ok(())
    }

    async fn compensate(&self, cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
        let deps = cx.deps;
        if state.source.is_none() {
            return Ok(()); // preflight changes nothing
        }
        let tenant_id = cx.tenant_id()?;
        let e = ends(deps, tenant_id, state)?;
        // Never drop the copy routing points at (the engine rolls forward past the switch;
        // this guards against a bug there).
        let tenant = deps.registry.get_tenant(&TenantRef::Id(tenant_id)).await?;
        if tenant.tier == e.dst.tier && tenant.placement == e.dst.placement() {
            return Err(StepError::Retryable(
                "routing already points at the target; refusing to drop it".into(),
            ));
        }
        capture(cx)
            .stop((e.src_cluster, &e.src), (e.dst_cluster, &e.dst))
            .await?;
        backend(e.dst.tier)
            .destroy(e.dst_cluster, &e.dst, e.shared_role)
            .await?;
        fence::unfence(e.src_cluster, &e.src).await?;
        if !backend(e.src.tier).own_login_role() {
            // The only credential is the one create_target made for the target's role.
            Registry::delete_credentials(deps.registry.pool(), tenant_id).await?;
        }
        Ok(())
    }
}

/// A tenant moved while a rollout ran was skipped by it: the move copied at the tenant's own
/// version. Its new container (not a pool, which is every pool tenant's and the rollout's to
/// migrate) is brought to the fleet's version now. Best effort: this runs past the point of
/// no return, where an error would be retried forever, so a migration that fails is logged
/// and left to a rollout (RetryRolloutTarget, or the next MigrateFleet).
async fn catch_up_with_fleet(cx: &StepContext<'_>, e: &Ends<'_>) -> Result<(), StepError> {
    if e.dst.tier == Tier::Pool {
        return Ok(());
    }
    match migrate_to_fleet(cx.deps, e.dst_cluster, &e.dst).await {
        Ok(version) => {
            Registry::raise_schema_version(cx.deps.registry.pool(), e.dst.tenant_id, version)
                .await?
        }
        Err(StepError::Fatal { message, .. }) => {
            tracing::warn!(error = %message, "the moved tenant stays at its version; a rollout can retry it");
        }
        Err(retry) => return Err(retry),
    }
    Ok(())
}

async fn preflight(cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
    let deps = cx.deps;
    let tenant = deps
        .registry
        .get_tenant(&TenantRef::Id(cx.tenant_id()?))
        .await?;
    tenant.ensure_active()?;
    let source = Side {
        tier: tenant.tier,
        cluster: tenant.placement.cluster.clone(),
    };
    if source == state.target {
        return Err(StepError::precondition(format!(
            "tenant {} is already in the {} tier on cluster {}",
            tenant.slug, source.tier, source.cluster
        )));
    }
    let src_cluster = deps.dataplane.cluster(&source.cluster)?;
    let dst_cluster = deps.dataplane.cluster(&state.target.cluster)?;
    let src = Container::plan(cx.tenant_id()?, source.tier, src_cluster);
    let placed = Container::from_placement(cx.tenant_id()?, tenant.tier, &tenant.placement)?;
    if src.placement() != placed.placement() {
        return Err(StepError::precondition(format!(
            "tenant {} is placed at {:?}, not where its tier puts it ({:?}); the cluster \
             configuration changed",
            tenant.slug,
            placed.placement(),
            src.placement()
        )));
    }
    let dst = Container::plan(cx.tenant_id()?, state.target.tier, dst_cluster);
    // The target is migrated to the source's version, which another replica may have added.
    deps.tenant_schema().await?;
    let version = catalog::current_version(
        src_cluster,
        &src_cluster.database(&src.database),
        &src.schema,
    )
    .await?;
    if let Some(what) = fence::prepare(src_cluster, &src).await? {
        return Err(StepError::precondition(format!(
            "tenant {}'s writes cannot be fenced at tenant-schema version {version} ({what})",
            tenant.slug
        )));
    }
    target_is_free(dst_cluster, &dst, version).await?;
    fence::can_see_writers(src_cluster).await?;
    match changes::unavailable(src_cluster, &src, dst_cluster).await? {
        None => state.online = Some(Online::default()),
        Some(why) => {
            tracing::warn!(reason = %why, "the tenant's writes stay fenced for the whole copy");
            state.fenced_copy_because = Some(why);
        }
    }
    state.source = Some(source);
    state.schema_version = Some(version);
    Ok(())
}

/// The move's publication and slot.
fn capture(cx: &StepContext<'_>) -> Capture {
    Capture::for_operation(cx.operation_id)
}

/// Changes applied per read of the slot, at most (whole transactions).
const BATCH: i32 = 5_000;
/// A catch-up round that applied this few changes ends the catch-up: the rest is the tail.
const SMALL_ROUND: u64 = 1_000;
/// And once reading the tail would decode at most this much WAL again.
const DECODE_BACKLOG: i64 = 64 * 1024 * 1024;

/// Applies captured changes in rounds, each up to where the source was when it began,
/// until a round applied few changes or took under a second; gives up (the move is rolled
/// back) past `[workflow] catch_up_ms`, and stops between rounds when cancelled.
async fn catch_up(
    cx: &StepContext<'_>,
    e: &Ends<'_>,
    mut online: Online,
) -> Result<Online, StepError> {
    let capture = capture(cx);
    let limit = cx.deps.config.workflow.catch_up();
    let started = std::time::Instant::now();
    loop {
        failpoint::hit(CATCH_UP_ROUND).await?;
        if cx.cancel_requested().await? {
            return Err(StepError::fatal(
                ErrorCode::Cancelled,
                "operation cancelled by request during the catch-up",
            ));
        }
        let round_started = std::time::Instant::now();
        let (applied, last) = apply_captured(&capture, e, |r| {
            online.observe(r);
            if started.elapsed() > limit {
                return Err(too_slow(limit, &online));
            }
            Ok(())
        })
        .await?;
        online.record_round(applied, round_started.elapsed());
        crate::metrics::rows_moved(<ChangeTier as Workflow>::KIND, applied);
        tracing::info!(
            round = online.rounds,
            changes = applied,
            lag_bytes = online.lag_bytes,
            elapsed_ms = round_started.elapsed().as_millis() as u64,
            "catch-up round applied"
        );
        cx.progress(&[ProgressItem {
            name: format!("{} rounds, lag {} bytes", online.rounds, online.lag_bytes),
            done: online.changes as i64,
            total: online.changes as i64,
        }])
        .await?;
        if applied <= SMALL_ROUND || round_started.elapsed() < Duration::from_secs(1) {
            // Small enough for the tail, once reading the slot no longer means decoding the
            // copy's WAL again (that pass would be inside the fence).
            if last.decode_backlog <= DECODE_BACKLOG {
                // What the rounds wrote is compared now, while the tenant writes: the fence
                // then verifies only what differed or was written again.
                online.verified_ahead += verify_ahead(&capture, e).await?;
                return Ok(online);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if started.elapsed() > limit {
            return Err(too_slow(limit, &online));
        }
    }
}

fn too_slow(limit: Duration, online: &Online) -> StepError {
    StepError::fatal(
        ErrorCode::Aborted,
        format!(
            "the tenant wrote faster than the move could apply its changes: after {} s and {} \
             rounds ({} changes) {} bytes were still behind ([workflow] catch_up_ms); the move \
             was rolled back",
            limit.as_secs(),
            online.rounds,
            online.changes,
            online.lag_bytes
        ),
    )
}

/// Inside the fence: applies every change the tenant committed before it (all of them, as
/// the fence waited out older writers). Returns how many.
async fn tail(cx: &StepContext<'_>, e: &Ends<'_>, online: &mut Online) -> Result<(), StepError> {
    // The tenant is fenced: a target that stalls must not keep it so. Past the time the
    // fence may wait for writers, the move is rolled back and the source unfenced.
    let limit = cx.deps.config.workflow.fence_wait();
    let started = std::time::Instant::now();
    let (applied, _) = apply_captured(&capture(cx), e, |r| {
        online.observe(r);
        let lag = r.lag_bytes;
        if started.elapsed() > limit {
            return Err(StepError::fatal(
                ErrorCode::Aborted,
                format!(
                    "the tail was not applied within {} ms ([workflow] fence_wait_ms; {lag} \
                     bytes still behind): the target is too slow; the move was rolled back",
                    limit.as_millis()
                ),
            ));
        }
        Ok(())
    })
    .await?;
    tracing::info!(changes = applied, "tail applied inside the fence");
    crate::metrics::rows_moved(<ChangeTier as Workflow>::KIND, applied);
    online.tail_changes = applied;
    Ok(())
}

/// Applies every change captured before now, [`BATCH`] at a time; after each read,
/// `check(read)` may stop it. Returns how many changes it applied, and the last read.
async fn apply_captured(
    capture: &Capture,
    e: &Ends<'_>,
    mut check: impl FnMut(&changes::Round) -> Result<(), StepError>,
) -> Result<(u64, changes::Round), StepError> {
    let upto = capture.position(e.src_cluster, &e.src).await?;
    let mut applied = 0;
    loop {
        let r = capture
            .drain(
                e.src_cluster,
                &e.src,
                e.dst_cluster,
                &e.dst,
                Some(upto),
                BATCH,
            )
            .await?;
        applied += r.changes;
        check(&r)?;
        if r.caught_up {
            return Ok((applied, r));
        }
    }
}

/// The target container must not exist yet (the pool: must hold none of the tenant's rows
/// and be at the source's version).
async fn target_is_free(cluster: &Cluster, dst: &Container, version: i32) -> Result<(), StepError> {
    let taken = |what: String| {
        StepError::precondition(format!("target {what} on cluster {}", cluster.name))
    };
    match dst.tier {
        Tier::Database => {
            if cluster.database_exists(&dst.database).await? {
                return Err(taken(format!("database {} already exists", dst.database)));
            }
        }
        Tier::Schema | Tier::Pool => {
            if !cluster.schema_exists(&dst.database, &dst.schema).await? {
                return Ok(());
            }
            let db = cluster.database(&dst.database);
            if dst.tier == Tier::Schema {
                return Err(taken(format!("schema {} already exists", dst.schema)));
            }
            let at = catalog::current_version(cluster, &db, &dst.schema).await?;
            if at != 0 && at != version {
                return Err(taken(format!(
                    "pool is at tenant-schema version {at}, the tenant at {version}"
                )));
            }
            for table in tables::tenant_tables(cluster, &db, &dst.schema).await? {
                if at != 0 && count_rows(cluster, dst, &table).await? > 0 {
                    return Err(taken(format!(
                        "pool already holds rows of this tenant in {table}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The tenant tables of the move, from the source's catalog; the target, migrated to the
/// same version, must hold the same ones.
async fn tables_of(e: &Ends<'_>) -> Result<Vec<Ident>, StepError> {
    let src_db = e.src_cluster.database(&e.src.database);
    let dst_db = e.dst_cluster.database(&e.dst.database);
    let (src, dst) = tokio::try_join!(
        tables::tenant_tables(e.src_cluster, &src_db, &e.src.schema),
        tables::tenant_tables(e.dst_cluster, &dst_db, &e.dst.schema),
    )?;
    let mut sorted = (src.clone(), dst);
    sorted.0.sort();
    sorted.1.sort();
    if sorted.0 != sorted.1 {
        let names = |t: &[Ident]| t.iter().map(Ident::as_str).collect::<Vec<_>>().join(", ");
        return Err(StepError::precondition(format!(
            "the source holds tables [{}] and the target [{}]; a container has drifted from \
             its tenant-schema version",
            names(&sorted.0),
            names(&sorted.1)
        )));
    }
    Ok(src)
}

/// Copies every table, then builds the target's `deferred` keys and indexes. Two tables at
/// a time when no foreign key can fire meanwhile (they are set aside, or the target session
/// runs as a replica, [`Writes::Continue`]); else one at a time, parents first. A retry
/// starts from an empty target (truncated, with what was built of `deferred` set aside again,
/// or the tenant's rows deleted children first from a pool), so a copy interrupted half-way
/// never leaves duplicates.
async fn copy_tables(
    cx: &StepContext<'_>,
    e: &Ends<'_>,
    writes: Writes<'_>,
    deferred: &[deferred::Deferred],
    copy_mb_per_s: u32,
) -> Result<(), StepError> {
    let tables = tables_of(e).await?;
    if backend(e.dst.tier).shares_tables() {
        for table in tables.iter().rev() {
            erasure::delete_rows(
                e.dst_cluster,
                &e.dst.database,
                &e.dst.schema,
                table,
                e.dst.tenant_id,
                erasure::BACKGROUND,
            )
            .await?;
        }
    } else {
        load::truncate(e.dst_cluster, &e.dst).await?;
        if !deferred.is_empty() {
            // An interrupted try may have built some of them already.
            deferred::set_aside(e.dst_cluster, &e.dst).await?;
        }
    }
    let mut items = Vec::new();
    for table in &tables {
        let total = count_rows(e.src_cluster, &e.src, table).await?;
        items.push(ProgressItem {
            name: table.as_str().to_owned(),
            done: 0,
            total,
        });
    }
    cx.progress(&items).await?;
    let any_order = matches!(writes, Writes::Continue { .. })
        || deferred
            .iter()
            .any(|d| d.kind == deferred::DeferredKind::ForeignKey);
    let order: Vec<usize> = (0..tables.len()).collect();
    let lanes = if any_order {
        two_lanes(order, |&i| items[i].total.max(0) as u64)
    } else {
        [order, Vec::new()]
    };
    let streamed: Vec<AtomicU64> = tables.iter().map(|_| AtomicU64::new(0)).collect();
    let pace = match writes {
        Writes::Continue { .. } => copy::Pace::megabytes_per_second(copy_mb_per_s),
        Writes::Stopped => copy::Pace::unbounded(),
    };
    let lane = |lane: Vec<usize>| {
        let (tables, streamed, pace) = (&tables, &streamed, &pace);
        async move {
            for i in lane {
                let copied = copy::copy_table(
                    (e.src_cluster, &e.src),
                    (e.dst_cluster, &e.dst),
                    &tables[i],
                    writes,
                    pace,
                    &streamed[i],
                )
                .await?;
                streamed[i].store(copied, Ordering::Relaxed);
                crate::metrics::rows_moved(<ChangeTier as Workflow>::KIND, copied);
                tracing::info!(table = %tables[i], rows = copied, "table copied");
            }
            Ok::<(), DataPlaneError>(())
        }
    };
    let [a, b] = lanes;
    let copy = async { tokio::try_join!(lane(a), lane(b)) };
    tokio::pin!(copy);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut copy => { r?; break; }
            _ = tick.tick() => {
                for (item, n) in items.iter_mut().zip(&streamed) {
                    item.done = n.load(Ordering::Relaxed) as i64;
                }
                cx.progress(&items).await?;
            }
        }
    }
    for (item, n) in items.iter_mut().zip(&streamed) {
        item.done = n.load(Ordering::Relaxed) as i64;
    }
    cx.progress(&items).await?;
    if !deferred.is_empty() {
        let started = std::time::Instant::now();
        let rows = |table: &str| {
            items
                .iter()
                .find(|i| i.name == table)
                .map_or(0, |i| i.done.max(0) as u64)
        };
        deferred::rebuild(e.dst_cluster, &e.dst, deferred, rows).await?;
        tracing::info!(
            objects = deferred.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "target keys and indexes built"
        );
    }
    Ok(())
}

async fn count_rows(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
) -> Result<i64, DataPlaneError> {
    let stmt = Statement::new("SELECT count(*) FROM ")
        .qualified(&c.schema, table)
        .push(" WHERE tenant_id = $1");
    let (n,): (i64,) = sqlx::query_as(stmt.into_sql())
        .bind(c.tenant_id)
        .fetch_one(&cluster.database(&c.database))
        .await
        .map_err(|e| cluster.err(e))?;
    Ok(n)
}

/// Changes one copied row (test fault injection, behind [`CORRUPT_TARGET`]).
async fn corrupt(cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError> {
    tracing::warn!("failpoint: corrupting one row of the target");
    let table = Ident::from_static("appointment_types");
    let stmt = Statement::new("UPDATE ")
        .qualified(&c.schema, &table)
        .push(" SET name = name || ' (corrupted)' WHERE tenant_id = $1 AND code = (SELECT min(code) FROM ")
        .qualified(&c.schema, &table)
        .push(" WHERE tenant_id = $1)");
    cluster.exec_for_tenant(c, stmt).await.map(|_| ())
}

/// A row's text (which digests hash) has the columns the catalog has now: a column added or
/// dropped on one end during the move is named as such, not as rows that differ.
async fn same_columns(e: &Ends<'_>, table: &Ident) -> Result<(), StepError> {
    let (src, dst) = tokio::try_join!(
        copy::column_names(e.src_cluster, &e.src, table),
        copy::column_names(e.dst_cluster, &e.dst, table),
    )?;
    if src != dst {
        let names = |c: &[Ident]| c.iter().map(Ident::as_str).collect::<Vec<_>>().join(", ");
        return Err(StepError::fatal(
            ErrorCode::Aborted,
            format!(
                "table {table} changed during the move: the source has columns [{}], the \
                 target [{}]; the move was rolled back (schema changes wait for it, \
                 docs/tier-changes.md)",
                names(&src),
                names(&dst)
            ),
        ));
    }
    Ok(())
}

/// Digests every table on both ends (concurrently; the source at `snapshot` when given) and
/// fails on the first difference.
async fn verify(e: &Ends<'_>, snapshot: Option<&str>) -> Result<Vec<VerifiedTable>, StepError> {
    let mut verified = Vec::new();
    for table in tables_of(e).await? {
        same_columns(e, &table).await?;
        let (src, dst) = tokio::try_join!(
            copy::digest_at(e.src_cluster, &e.src, &table, snapshot),
            copy::digest(e.dst_cluster, &e.dst, &table),
        )?;
        if src != dst {
            return Err(StepError::fatal(
                ErrorCode::Aborted,
                format!(
                    "verification failed for table {table}: source has {} rows (checksum {}), \
                     target {} rows (checksum {}); the move was rolled back",
                    src.rows, src.checksum, dst.rows, dst.checksum
                ),
            ));
        }
        let TableDigest { rows, checksum } = src;
        verified.push(VerifiedTable {
            table: table.as_str().to_owned(),
            rows,
            checksum,
        });
    }
    Ok(verified)
}

/// Keys compared per pair of lookups.
const VERIFY_KEYS: i64 = 5_000;

/// The keys of `table` the catch-up wrote and nobody found equal since, [`VERIFY_KEYS`] at a
/// time, each batch a JSON array of keys (as [`copy::digest_keys`] takes them).
struct KeyBatches<'a> {
    capture: &'a Capture,
    e: &'a Ends<'a>,
    table: &'a Ident,
    after: Option<Vec<String>>,
    done: bool,
}

impl<'a> KeyBatches<'a> {
    fn new(capture: &'a Capture, e: &'a Ends<'a>, table: &'a Ident) -> Self {
        KeyBatches {
            capture,
            e,
            table,
            after: None,
            done: false,
        }
    }

    async fn next(&mut self) -> Result<Option<serde_json::Value>, DataPlaneError> {
        if self.done {
            return Ok(None);
        }
        let keys = self
            .capture
            .written_keys(
                self.e.dst_cluster,
                &self.e.dst,
                self.table,
                self.after.as_deref(),
                VERIFY_KEYS,
            )
            .await?;
        let Some(last) = keys.last().cloned() else {
            self.done = true;
            return Ok(None);
        };
        // A short batch is the last: no read to find nothing more.
        self.done = (keys.len() as i64) < VERIFY_KEYS;
        self.after = Some(last);
        Ok(Some(serde_json::Value::from(keys)))
    }
}

/// Outside the fence: compares, row by row, what the catch-up wrote with the source as it
/// is now, and marks the rows found equal. A row that differs (the tenant changed it since
/// the round that applied it) stays for the fence to verify; a row written again after the
/// mark loses it ([`Capture::mark_verified`]). Returns how many rows it marked.
async fn verify_ahead(capture: &Capture, e: &Ends<'_>) -> Result<u64, StepError> {
    let mut marked = 0;
    for table in tables_of(e).await? {
        let key = changes::key_columns(e.dst_cluster, &e.dst, &table).await?;
        let mut batches = KeyBatches::new(capture, e, &table);
        while let Some(json) = batches.next().await? {
            let (src, dst) = tokio::try_join!(
                copy::row_hashes(e.src_cluster, &e.src, &table, &key, &json),
                copy::row_hashes(e.dst_cluster, &e.dst, &table, &key, &json),
            )?;
            let equal: Vec<serde_json::Value> = json
                .as_array()
                .into_iter()
                .flatten()
                .zip(1i64..)
                .filter(|(_, n)| src.get(n) == dst.get(n))
                .map(|(k, _)| k.clone())
                .collect();
            marked += equal.len() as u64;
            capture
                .mark_verified(e.dst_cluster, &e.dst, &table, &equal.into())
                .await?;
        }
    }
    tracing::info!(
        rows = marked,
        "rows the catch-up wrote verified before the fence"
    );
    Ok(marked)
}

/// Inside the fence: digests, on both ends, the rows with the keys the catch-up and the tail
/// wrote (every other row was verified at the copy's snapshot and not written since), and
/// fails on the first difference. Returns how many rows it compared.
async fn verify_written(cx: &StepContext<'_>, e: &Ends<'_>) -> Result<u64, StepError> {
    let capture = capture(cx);
    let mut compared = 0;
    // Only tables with rows left to compare: the others need no lookup inside the fence.
    let (tables, unverified) = tokio::try_join!(tables_of(e), async {
        Ok(capture.tables_unverified(e.dst_cluster, &e.dst).await?)
    },)?;
    for table in tables
        .into_iter()
        .filter(|t| unverified.iter().any(|u| u == t.as_str()))
    {
        let key = changes::key_columns(e.dst_cluster, &e.dst, &table).await?;
        let (mut src, mut dst) = ((0i64, 0i128, 0i128), (0i64, 0i128, 0i128));
        let mut batches = KeyBatches::new(&capture, e, &table);
        while let Some(json) = batches.next().await? {
            let (s, d) = tokio::try_join!(
                copy::digest_keys(e.src_cluster, &e.src, &table, &key, &json),
                copy::digest_keys(e.dst_cluster, &e.dst, &table, &key, &json),
            )?;
            src = (src.0 + s.0, src.1 + s.1, src.2 + s.2);
            dst = (dst.0 + d.0, dst.1 + d.1, dst.2 + d.2);
        }
        if src != dst {
            return Err(StepError::fatal(
                ErrorCode::Aborted,
                format!(
                    "verification failed for table {table}: of the rows written while the tenant \
                     was copied, the source has {} (checksum {}:{}), the target {} (checksum \
                     {}:{}); the move was rolled back",
                    src.0, src.1, src.2, dst.0, dst.1, dst.2
                ),
            ));
        }
        compared += src.0 as u64;
    }
    Ok(compared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_keep_the_last_ones_and_the_peak_of_retained_wal() {
        let mut online = Online::default();
        for i in 1..=40u64 {
            online.observe(&changes::Round {
                lag_bytes: 1000 - i as i64,
                decode_backlog: if i == 7 { 50_000 } else { 10 },
                ..Default::default()
            });
            online.record_round(i, Duration::from_millis(i));
        }
        assert_eq!(online.rounds, 40);
        assert_eq!(online.changes, (1..=40).sum::<u64>());
        assert_eq!(online.recent_rounds.len(), RECENT_ROUNDS);
        let first = &online.recent_rounds[0];
        assert_eq!((first.round, first.changes, first.lag_bytes), (9, 9, 991));
        assert_eq!(online.recent_rounds.last().unwrap().round, 40);
        assert_eq!(online.peak_retained_bytes, 993 + 50_000);
        assert_eq!(online.lag_bytes, 960);
    }
}
