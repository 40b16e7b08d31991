//! A restore drill: verify → stage → load → index → check → cleanup. It proves the tenant's
//! newest backup restorable without touching the tenant (docs/backups.md, "Restore drills").
//!
//! - `verify` picks the tenant's newest complete export (scheduled or not), opens it (the
//!   manifest's signature, the registry's record, the data key unwrapped by the tenant key)
//!   and reads the whole archive once: every chunk authenticated, both digests compared
//!   with the manifest, every row's tenant id checked, row counts compared with the manifest
//!   ([`export_reader::count`]). The export drilled is recorded on the drill's run.
//! - `stage` creates the scratch container ([`staging::scratch`]: schema `drill_<tenant>`
//!   beside the tenant's container, granted to nobody, never routed, never a tenant) at the
//!   export's tenant-schema version, its keys and indexes set aside.
//! - `load` streams the archive into it; `index` builds the keys, indexes and foreign keys
//!   (a violation: DATA_LOSS); `check` reads every table back and compares rows and digest
//!   with what was loaded ([`export_reader`]).
//! - `cleanup` drops the scratch container: the drill passed.
//!
//! Any failure fails the operation, with the reason naming the export (a damaged backup is
//! DATA_LOSS), and compensation drops the scratch container. The drill's result is its
//! operation's: succeeded is passed, failed is failed with the operation's error. A drill
//! holds the tenant like any operation (a backup due meanwhile waits), but never writes to
//! the tenant's data.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::archive::verified::VerifiedExport;
use crate::backup::Slot;
use crate::dataplane::load::TableLoad;
use crate::dataplane::{Cluster, Container, deferred, staging};
use crate::tenant::{TenantRef, Tier};
use crate::workflow::{StepContext, StepError, Workflow, steps};
use crate::workflows::export_reader;

pub struct Drill;

steps!(pub enum Step {
    Verify => "verify",
    Stage => "stage",
    Load => "load",
    Index => "index",
    Check => "check",
    Cleanup => "cleanup",
});

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The policy and drill slot it runs for.
    pub slot: Slot,
    /// Where the tenant lives (set by `verify`): the scratch container goes beside it.
    #[serde(default)]
    pub placed: Option<(Tier, String)>,
    /// Set by `verify`.
    #[serde(default)]
    pub export_id: Option<Uuid>,
    #[serde(default)]
    pub schema_version: Option<i32>,
    /// What the archive holds (`verify`), with row digests as loaded (`load`).
    #[serde(default)]
    pub expected: Vec<TableLoad>,
    /// Set by `stage`.
    #[serde(default)]
    pub deferred: Vec<deferred::Deferred>,
}

impl State {
    pub fn new(slot: Slot) -> Self {
        State {
            slot,
            placed: None,
            export_id: None,
            schema_version: None,
            expected: Vec::new(),
            deferred: Vec::new(),
        }
    }
}

/// The scratch container, beside the tenant's.
fn scratch<'a>(
    cx: &'a StepContext<'_>,
    state: &State,
) -> Result<(&'a Cluster, Container), StepError> {
    let (tier, cluster) = state
        .placed
        .as_ref()
        .ok_or_else(|| StepError::missing("placement"))?;
    let (cluster, live) = cx.deps.dataplane.plan(cx.tenant_id()?, *tier, cluster)?;
    Ok((cluster, staging::scratch(&live)))
}

impl Workflow for Drill {
    const KIND: &'static str = "drill";
    type Step = Step;
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: Step,
        state: &mut State,
    ) -> Result<(), StepError> {
        let tenant_id = cx.tenant_id()?;
        if step == Step::Verify {
            return verify(cx, state).await;
        }
        let (cluster, scratch) = scratch(cx, state)?;
        let export_id = state
            .export_id
            .ok_or_else(|| StepError::missing("export"))?;
        match step {
            Step::Verify => unreachable!("handled above"),
            Step::Stage => {
                let version = state
                    .schema_version
                    .ok_or_else(|| StepError::missing("schema version"))?;
                state.deferred = staging::create(cluster, &scratch, version).await?;
            }
            Step::Load => {
                state.expected =
                    export_reader::load(cx, export_id, cluster, &scratch, &state.expected).await?;
            }
            Step::Index => {
                export_reader::rebuild(cluster, &scratch, &state.deferred, &state.expected).await?;
            }
            Step::Check => export_reader::check(cluster, &scratch, &state.expected).await?,
            Step::Cleanup => {
                cluster
                    .drop_schema(&scratch.database, &scratch.schema)
                    .await?;
                let rows: u64 = state.expected.iter().map(|t| t.rows).sum();
                tracing::info!(tenant_id = %tenant_id, export_id = %export_id, rows,
                    "restore drill passed");
            }
        }
        Ok(())
    }

    async fn compensate(&self, cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
        if state.placed.is_some() {
            let (cluster, scratch) = scratch(cx, state)?;
            cluster
                .drop_schema(&scratch.database, &scratch.schema)
                .await?;
        }
        tracing::warn!(tenant_id = %cx.tenant_id()?,
            export_id = state.export_id.map(tracing::field::display), "restore drill failed");
        Ok(())
    }
}

/// The `verify` step (see the module doc).
async fn verify(cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
    let deps = cx.deps;
    let tenant_id = cx.tenant_id()?;
    let tenant = deps.registry.get_tenant(&TenantRef::Id(tenant_id)).await?;
    tenant.ensure_active()?;
    let Some((export_id, _)) = deps.registry.newest_export(tenant_id).await? else {
        return Err(StepError::precondition(format!(
            "tenant {} has no complete backup to drill",
            tenant.slug
        )));
    };
    deps.registry
        .record_drilled_export(cx.operation_id, export_id)
        .await?;
    let export = VerifiedExport::open(deps, export_id).await?;
    let schema = deps.tenant_schema().await?;
    export_reader::known_schema(&export.manifest, &schema).map_err(StepError::precondition)?;
    state.expected = export_reader::count(deps, &export, tenant_id).await?;
    let placed = Container::from_placement(tenant_id, tenant.tier, &tenant.placement)?;
    state.placed = Some((tenant.tier, placed.cluster));
    state.export_id = Some(export_id);
    state.schema_version = Some(export.manifest.schema_version);
    Ok(())
}
