//! Restore one tenant from an export: verify → prepare → stage → load → index → check →
//! migrate → grant → fence → swap → activate → cleanup.
//!
//! A restore to a point in time runs four steps first, which make that export
//! ([`point_in_time`]): `preflight` (the refusals, and the disk the copy needs),
//! `fetch_backup` (the cluster's base backup restored into a private side directory),
//! `replay` (the copy's WAL replayed to the moment, paused there) and `extract` (the tenant
//! read from the copy into an export as of that moment; the copy removed). For a restore from
//! an export they do nothing.
//!
//! - `verify` touches nothing: the export is complete, its manifest is signed by the service
//!   key and describes what the registry records, the tenant key unwraps its data key, and the
//!   whole archive is read once — every chunk authenticated, both sha256 digests compared with
//!   the manifest, every COPY block parsed, every row's tenant id checked, row counts compared
//!   with the manifest. The export's tenant-schema version must be one this build knows (a newer one is refused)
//!   and, for the pool, not newer than the pool.
//! - `prepare` (a new tenant only): records its placement, creates its key and its database
//!   (or brings the pool up to date, as provisioning does).
//! - `stage` creates the staging schema ([`staging`]) empty, at the export's version, and sets
//!   its keys, indexes and foreign keys aside (recorded in the state).
//! - `load` streams the archive again — object → decrypt and decompress → dump reader, on a
//!   blocking thread → `COPY … FROM STDIN` on two connections — reporting rows per table, and
//!   records each table's row digest ([`load::RowDigest`]) of the rows it handed on; the
//!   archive's digests are checked again at its end.
//! - `index` builds the keys, indexes and foreign keys again (a violation: DATA_LOSS).
//! - `check` reads every table back and compares row count and digest with `load`'s.
//! - `migrate` brings the staging schema forward: to the latest version (schema, database
//!   tiers) or the pool's.
//! - `grant` fences the tenant in the staging schema and grants its role there (with the live
//!   schema's name as its search_path).
//! - `fence` (restoring in place) fences the tenant's writes in its live container and waits
//!   out older writers, as a tier change does.
//! - `swap` puts the staged copy in place in one transaction ([`staging::swap`]). This is the
//!   point of no return.
//! - `activate` records the tenant's schema version (a new tenant becomes active).
//! - `cleanup` drops the replaced copy.
//!
//! Compensation (any failure before the swap) drops the staging schema and lifts the live
//! fence; a new tenant is undone like a failed provisioning. The tenant's data is never
//! changed before the swap.
//!
//! A **new pool tenant** whose export is at the pool's version needs no staging copy: no one
//! can see its rows before `activate`, and there are none to replace. `stage` then records
//! `direct`, and `load` writes the rows straight into the pool's tables (as a replica: no
//! triggers, foreign keys checked by `index` for the tenant's rows,
//! [`crate::dataplane::references`]); `check` reads them back there, `migrate` and the
//! staging fence have nothing to do, and `swap` only moves the pool's sequences past them.
//! The shared tables' indexes are maintained as the rows arrive, on both loading
//! connections, instead of once by a single `INSERT … SELECT` in the swap. Compensation
//! deletes what was loaded (the tenant's rows, as when a failed provisioning is undone).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::archive::layout::ExportKeys;
use crate::archive::manifest::Manifest;
use crate::archive::verified::VerifiedExport;
use crate::credentials;
use crate::dataplane::load::TableLoad;
use crate::dataplane::{
    Cluster, Container, backend, catalog, deferred, fence, references, staging, tables,
};
use crate::registry::Registry;
use crate::registry::exports::ExportState;
use crate::tenant::{TenantRef, Tier};
use crate::workflow::{StepContext, StepError, Workflow, steps};
use crate::workflows::container::undo;
use crate::workflows::point_in_time::{self, PointInTime};
use crate::workflows::tenant_key;
use crate::workflows::{export_reader, export_writer};

pub struct Restore;

steps!(pub enum Step {
    Preflight => "preflight",
    FetchBackup => "fetch_backup",
    Replay => "replay",
    Extract => "extract",
    Verify => "verify",
    Prepare => "prepare",
    Stage => "stage",
    Load => "load",
    Index => "index",
    Check => "check",
    Migrate => "migrate",
    Grant => "grant",
    Fence => "fence",
    Swap => "swap",
    Activate => "activate",
    Cleanup => "cleanup",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Replace the data of the export's own tenant.
    InPlace,
    /// Create a new tenant (new id, slug and key) holding the export's data.
    AsNewTenant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub export_id: Uuid,
    pub mode: Mode,
    /// Where the restored tenant lives (in place: where it is).
    pub tier: Tier,
    pub cluster: String,
    /// Set by `verify`.
    #[serde(default)]
    pub manifest: Option<Manifest>,
    #[serde(default)]
    pub target_version: Option<i32>,
    /// What the archive holds (set by `verify`), with each table's row digest as loaded
    /// (tenant id rewritten; set by `load`).
    #[serde(default)]
    pub expected: Vec<TableLoad>,
    /// Set by `stage`: the staging tables' keys, indexes and foreign keys, built after the
    /// load.
    #[serde(default)]
    pub deferred: Vec<deferred::Deferred>,
    /// Set by `fence` (in place) and `swap`.
    #[serde(flatten)]
    pub pause: fence::Pause,
    /// Set by `activate`.
    #[serde(default)]
    pub schema_version: Option<i32>,
    /// A restore to a point in time: `export_id` is the export its first steps make.
    #[serde(default)]
    pub point_in_time: Option<PointInTime>,
    /// Set by `stage`: a new pool tenant whose export is at the pool's version is loaded
    /// straight into the pool's tables, with no staging copy (see the module doc).
    #[serde(default)]
    pub direct: bool,
}

impl State {
    pub fn new(export_id: Uuid, mode: Mode, tier: Tier, cluster: &str) -> Self {
        State {
            export_id,
            mode,
            tier,
            cluster: cluster.to_owned(),
            manifest: None,
            target_version: None,
            expected: Vec::new(),
            deferred: Vec::new(),
            pause: fence::Pause::default(),
            schema_version: None,
            point_in_time: None,
            direct: false,
        }
    }

    /// A restore of the data `source_tenant` had at `at`, through export `export_id` (made
    /// by the restore's first steps).
    pub fn at(mut self, at: DateTime<Utc>, source_tenant: Uuid) -> Self {
        self.point_in_time = Some(PointInTime::new(at, source_tenant));
        self
    }

    pub fn rows(&self) -> u64 {
        self.expected.iter().map(|t| t.rows).sum()
    }
}

impl Workflow for Restore {
    const KIND: &'static str = "restore";
    type Step = Step;
    const ROLL_FORWARD_FROM: Option<Step> = Some(Step::Swap);
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: Step,
        state: &mut State,
    ) -> Result<(), StepError> {
        let deps = cx.deps;
        let tenant_id = cx.tenant_id()?;
        let (cluster, live) = deps.dataplane.plan(tenant_id, state.tier, &state.cluster)?;
        let staged = staging::staging(&live);
        // Where the rows are loaded and checked: the staging copy, or the pool itself.
        let into = if state.direct { &live } else { &staged };
        match step {
            Step::Preflight | Step::FetchBackup | Step::Replay | Step::Extract => {
                let Some(p) = state.point_in_time.as_mut() else {
                    return Ok(()); // a restore from an export
                };
                match step {
                    Step::Preflight => point_in_time::preflight(cx, p).await?,
                    Step::FetchBackup => point_in_time::fetch(cx, p).await?,
                    Step::Replay => point_in_time::replay(cx, p).await?,
                    _ => point_in_time::extract(cx, p, state.export_id).await?,
                }
            }
            Step::Verify => verify(cx, state, cluster, &live).await?,
            Step::Prepare => {
                if state.mode == Mode::AsNewTenant {
                    Registry::set_placement(deps.registry.pool(), tenant_id, &live.placement())
                        .await?;
                    tenant_key::ensure(deps, tenant_id).await?;
                    if live.tier == Tier::Pool {
                        backend(Tier::Pool).create(cluster, &live).await?;
                        let db = cluster.database(&live.database);
                        let version = state
                            .target_version
                            .ok_or_else(|| StepError::missing("target version"))?;
                        let options = catalog::MigrateOptions {
                            newer_ok: true,
                            ..Default::default()
                        };
                        catalog::migrate_with(cluster, &db, &live.schema, version, options).await?;
                    } else {
                        cluster.ensure_database(&live.database).await?;
                    }
                }
            }
            Step::Stage => {
                let m = state
                    .manifest
                    .as_ref()
                    .ok_or_else(|| StepError::missing("manifest"))?;
                state.direct = state.mode == Mode::AsNewTenant
                    && live.shares_tables()
                    && Some(m.schema_version) == state.target_version
                    && direct_load_possible(cluster, &live).await?;
                if !state.direct {
                    state.deferred = staging::create(cluster, &staged, m.schema_version).await?;
                }
            }
            Step::Load => {
                state.expected =
                    export_reader::load(cx, state.export_id, cluster, into, &state.expected)
                        .await?;
            }
            Step::Index if state.direct => {
                let refs = references::of(cluster, &live).await?;
                let broken = references::dangling(cluster, &live, &refs).await?;
                if !broken.is_empty() {
                    return Err(export_reader::data_loss(format!(
                        "the restored data breaks a constraint: rows of foreign key {} name \
                         rows that do not exist; nothing was changed",
                        broken.join(", ")
                    )));
                }
            }
            Step::Index => {
                // Staged pool rows are inserted into the pool's own indexes by the swap: their
                // staging copies need only what checks them, the keys and foreign keys (unless
                // a migration of the staging schema follows, which may name an index).
                let needed: Vec<deferred::Deferred> = state
                    .deferred
                    .iter()
                    .filter(|d| {
                        live.tier != Tier::Pool
                            || d.kind != deferred::DeferredKind::Index
                            || state.manifest.as_ref().map(|m| m.schema_version)
                                != state.target_version
                    })
                    .cloned()
                    .collect();
                export_reader::rebuild(cluster, &staged, &needed, &state.expected).await?;
            }
            Step::Check => export_reader::check(cluster, into, &state.expected).await?,
            // Loaded at the pool's version, which no rollout moves while a restore runs.
            Step::Migrate if state.direct => {}
            Step::Migrate => {
                let version = state
                    .target_version
                    .ok_or_else(|| StepError::missing("target version"))?;
                let db = cluster.database(&staged.database);
                catalog::migrate(cluster, &db, &staged.schema, version).await?;
            }
            Step::Grant if state.direct => credentials::grant(cluster, &live).await?,
            Step::Grant => {
                fence::fence(cluster, &staged, cx.operation_id).await?;
                if live.tier == Tier::Pool {
                    credentials::grant(cluster, &live).await?;
                } else {
                    credentials::grant_staged(cluster, &staged, &live.schema).await?;
                }
            }
            Step::Fence => {
                if state.mode == Mode::InPlace {
                    fence::fence(cluster, &live, cx.operation_id).await?;
                    state.pause.fenced_at.get_or_insert_with(Utc::now);
                    fence::wait_for_writers(cluster, &live, deps.config.workflow.fence_wait())
                        .await?;
                }
            }
            Step::Swap if state.direct => {
                // The rows are in place: the pool's sequences move past their values.
                let db = cluster.database(&live.database);
                let mut conn = db.acquire().await.map_err(|e| cluster.err(e))?;
                let tables = tables::tenant_tables(cluster, &mut *conn, &live.schema).await?;
                tables::advance_sequences(cluster, &mut conn, &live.schema, &tables).await?;
                crate::metrics::rows_moved(<Restore as Workflow>::KIND, state.rows());
                tracing::info!(tenant_id = %tenant_id, export_id = %state.export_id,
                    rows = state.rows(), "restored rows loaded into the pool");
            }
            Step::Swap => {
                let rows = |table: &str| {
                    let t = state.expected.iter().find(|t| t.table == table);
                    t.map_or(0, |t| t.rows)
                };
                if live.tier == Tier::Pool
                    && cluster
                        .schema_exists(&staged.database, &staged.schema)
                        .await?
                {
                    // The swap migrates the staging schema after a pool migrated meanwhile:
                    // give it back the indexes its migrations may name.
                    let db = cluster.database(&live.database);
                    let (pool, staging) = tokio::try_join!(
                        catalog::current_version(cluster, &db, &live.schema),
                        catalog::current_version(cluster, &db, &staged.schema),
                    )?;
                    if pool != staging {
                        deferred::rebuild(cluster, &staged, &state.deferred, rows).await?;
                    }
                }
                staging::swap(cluster, &live).await?;
                state.pause.unfenced_at.get_or_insert_with(Utc::now);
                crate::metrics::rows_moved(<Restore as Workflow>::KIND, state.rows());
                tracing::info!(tenant_id = %tenant_id, export_id = %state.export_id,
                    rows = state.rows(), "restored copy swapped in");
            }
            Step::Activate => {
                let db = cluster.database(&live.database);
                let version = catalog::current_version(cluster, &db, &live.schema).await?;
                Registry::activate_tenant(deps.registry.pool(), tenant_id, version).await?;
                state.schema_version = Some(version);
            }
            Step::Cleanup => {
                let replaced = staging::replaced(&live);
                cluster
                    .drop_schema(&replaced.database, &replaced.schema)
                    .await?;
                cluster
                    .drop_schema(&staged.database, &staged.schema)
                    .await?;
                if state.point_in_time.is_some() {
                    point_in_time::remove_side(deps, cx.operation_id).await?;
                }
            }
        }
        Ok(())
    }

    async fn compensate(&self, cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
        let (cluster, live) =
            cx.deps
                .dataplane
                .plan(cx.tenant_id()?, state.tier, &state.cluster)?;
        let staged = staging::staging(&live);
        if let Some(p) = &state.point_in_time {
            point_in_time::remove_side(cx.deps, cx.operation_id).await?;
            // An export the extraction did not finish goes; a finished one stays, listed
            // with the tenant's exports (restoring from it skips the replay).
            let unfinished = cx.deps.registry.find_export(state.export_id).await?;
            if unfinished.is_some_and(|e| e.state == ExportState::Running) {
                let keys = ExportKeys::new(p.source_tenant, state.export_id);
                export_writer::discard(cx.deps, &keys, state.export_id).await?;
            }
        }
        cluster
            .drop_schema(&staged.database, &staged.schema)
            .await?;
        match state.mode {
            Mode::InPlace => fence::unfence(cluster, &live).await?,
            Mode::AsNewTenant => undo(cx.deps, cluster, &live).await?,
        }
        Ok(())
    }
}

pub use super::export_reader::known_schema;

/// Whether a new tenant's rows can be loaded straight into the pool's tables: the admin
/// may `COPY` into them past their forced row security and with the per-row triggers off,
/// and every foreign key among them is one [`references::dangling`] can check afterwards
/// (MATCH SIMPLE).
async fn direct_load_possible(cluster: &Cluster, pool: &Container) -> Result<bool, StepError> {
    if !cluster.bypasses_row_security().await || !cluster.may_skip_triggers().await {
        return Ok(false);
    }
    Ok(references::of(cluster, pool)
        .await?
        .iter()
        .all(|r| r.simple))
}

/// The `verify` step (see the module doc).
async fn verify(
    cx: &StepContext<'_>,
    state: &mut State,
    cluster: &Cluster,
    live: &Container,
) -> Result<(), StepError> {
    let deps = cx.deps;
    let export = VerifiedExport::open(deps, state.export_id).await?;
    let m = &export.manifest;
    let schema = deps.tenant_schema().await?;
    known_schema(m, &schema).map_err(StepError::precondition)?;
    let target_version = match (state.tier, state.mode) {
        (Tier::Pool, Mode::InPlace) => {
            let db = cluster.database(&live.database);
            let pool = catalog::current_version(cluster, &db, &live.schema).await?;
            if m.schema_version > pool {
                return Err(StepError::precondition(format!(
                    "export exports/{} is at tenant-schema version {}, the pool on cluster {} \
                     at {pool}; migrate the pool first",
                    state.export_id, m.schema_version, cluster.name
                )));
            }
            pool
        }
        // The fleet's version (what a rollout brings every tenant to), or the export's if
        // newer; a new pool tenant also meets the pool where it is.
        (tier, _) => {
            let mut version = deps.registry.schema_version().await?.max(m.schema_version);
            if tier == Tier::Pool {
                let db = cluster.database(&live.database);
                version = version.max(catalog::current_version(cluster, &db, &live.schema).await?);
            }
            version
        }
    };
    if state.mode == Mode::InPlace {
        let tenant = deps
            .registry
            .get_tenant(&TenantRef::Id(cx.tenant_id()?))
            .await?;
        tenant.ensure_active()?;
        if export.row.tenant_id != cx.tenant_id()? {
            return Err(StepError::precondition(format!(
                "export exports/{} belongs to another tenant",
                state.export_id
            )));
        }
        let placed = Container::from_placement(cx.tenant_id()?, tenant.tier, &tenant.placement)?;
        if tenant.tier != state.tier || placed.placement() != live.placement() {
            return Err(StepError::precondition(format!(
                "tenant {} moved since the restore was requested",
                tenant.slug
            )));
        }
        let db = cluster.database(&live.database);
        let version = catalog::current_version(cluster, &db, &live.schema).await?;
        if let Some(what) = fence::prepare(cluster, live).await? {
            return Err(StepError::precondition(format!(
                "tenant {}'s writes cannot be fenced at tenant-schema version {version} \
                 ({what})",
                tenant.slug
            )));
        }
        let replaced = staging::replaced(live);
        if cluster
            .schema_exists(&replaced.database, &replaced.schema)
            .await?
        {
            return Err(StepError::precondition(format!(
                "schema {} (the replaced copy of an earlier restore) still exists in database \
                 {} on cluster {}; drop it first",
                replaced.schema.as_str(),
                live.database.as_str(),
                cluster.name
            )));
        }
    }
    let tables = export_reader::count(deps, &export, cx.tenant_id()?).await?;
    tracing::info!(export_id = %state.export_id, rows = tables.iter().map(|t| t.rows).sum::<u64>(),
        "export verified");
    state.expected = tables;
    state.target_version = Some(target_version);
    state.manifest = Some(export.manifest);
    Ok(())
}
