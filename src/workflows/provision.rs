//! Provisioning: reserve → create key → create container → migrate → grant → seed →
//! activate.
//!
//! The tenant row (state `provisioning`) and this operation are created in one transaction by
//! CreateTenant. Every step is idempotent: container names derive from the tenant id, DDL is
//! create-if-missing, the migrator records what it applied, grants are repeatable, the seed
//! skips existing rows, the tenant key is found by its alias. Compensation destroys whatever
//! exists of the container, schedules the deletion of the tenant key and marks the tenant
//! `failed`, which frees its slug.

use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::dataplane::{Cluster, Container, backend, catalog};
use crate::error::Error;
use crate::registry::Registry;
use crate::tenant::Tier;
use crate::workflow::{StepContext, StepError, Workflow};
use crate::workflows::{login, tenant_key};

pub struct Provision;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub tier: Tier,
    pub cluster: String,
    /// Set by `migrate`.
    #[serde(default)]
    pub schema_version: Option<i32>,
    /// Set by `seed`.
    #[serde(default)]
    pub seeded_rows: Option<u64>,
}

impl State {
    pub fn new(tier: Tier, cluster: &str) -> Self {
        State {
            tier,
            cluster: cluster.to_owned(),
            schema_version: None,
            seeded_rows: None,
        }
    }
}

impl Workflow for Provision {
    const KIND: &'static str = "provision";
    const STEPS: &'static [&'static str] = &[
        "reserve",
        "create_key",
        "create_container",
        "migrate",
        "grant",
        "seed",
        "activate",
    ];
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: usize,
        state: &mut State,
    ) -> Result<(), StepError> {
        let deps = cx.deps;
        let (cluster, c) = deps
            .dataplane
            .plan(cx.tenant_id, state.tier, &state.cluster)?;
        let tier = backend(state.tier);
        match Self::STEPS[step] {
            "reserve" => {
                Registry::set_placement(deps.registry.pool(), cx.tenant_id, &c.placement()).await?;
            }
            "create_key" => {
                tenant_key::ensure(deps, cx.tenant_id).await?;
            }
            "create_container" => tier.create(cluster, &c).await?,
            "migrate" => {
                state.schema_version = Some(migrate_to_fleet(deps, cluster, &c).await?);
            }
            "grant" => login::grant(deps, cluster, &c).await?,
            "seed" => {
                let db = cluster.database(&c.database);
                state.seeded_rows =
                    Some(catalog::seed(cluster, &db, &c.schema, cx.tenant_id).await?);
            }
            "activate" => {
                if state.schema_version.is_none() {
                    return Err(StepError::fatal(
                        tonic::Code::Internal,
                        "activate before migrate",
                    ));
                }
                // Again: a rollout that started since `migrate` skipped this tenant and left
                // it to this workflow.
                let version = migrate_to_fleet(deps, cluster, &c).await?;
                state.schema_version = Some(version);
                Registry::activate_tenant(deps.registry.pool(), cx.tenant_id, version).await?;
            }
            other => unreachable!("provision has no step {other}"),
        }
        Ok(())
    }

    async fn compensate(&self, cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
        let (cluster, c) = cx
            .deps
            .dataplane
            .plan(cx.tenant_id, state.tier, &state.cluster)?;
        undo(cx.deps, cluster, &c).await
    }
}

/// Migrates the container to the fleet's tenant-schema version (see docs/rollouts.md), or
/// leaves it where it is if it is already past it (the shared pool); returns its version.
pub(crate) async fn migrate_to_fleet(
    deps: &Context,
    cluster: &Cluster,
    c: &Container,
) -> Result<i32, StepError> {
    let fleet = deps.registry.schema_version().await?;
    let db = cluster.database(&c.database);
    let options = catalog::MigrateOptions {
        newer_ok: true,
        ..Default::default()
    };
    Ok(catalog::migrate_with(cluster, &db, &c.schema, fleet, options).await?)
}

/// Rolls back the creation of a tenant whose container is `c` (provisioning, or a restore as
/// a new tenant), from any point: destroys what exists of the container and its role,
/// schedules the deletion of the tenant key, drops the credential and marks the tenant
/// `failed`, which frees its slug. Idempotent.
pub async fn undo(deps: &Context, cluster: &Cluster, c: &Container) -> Result<(), StepError> {
    backend(c.tier).destroy(cluster, c, false).await?;
    // No data was ever encrypted under it; the key service keeps its waiting period.
    if let Some(key) = deps
        .keys
        .tenant_key(c.tenant_id)
        .await
        .map_err(Error::from)?
    {
        deps.keys
            .schedule_key_deletion(&key.key_id, 7)
            .await
            .map_err(Error::from)?;
    }
    let mut tx = deps.registry.pool().begin().await.map_err(Error::from)?;
    Registry::delete_credentials(&mut *tx, c.tenant_id).await?;
    Registry::fail_tenant(&mut *tx, c.tenant_id).await?;
    tx.commit().await.map_err(Error::from)?;
    Ok(())
}
