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

use crate::credentials;
use crate::dataplane::{backend, catalog};
use crate::registry::Registry;
use crate::tenant::Tier;
use crate::workflow::{StepContext, StepError, Workflow, steps};
use crate::workflows::container::{migrate_to_fleet, undo};
use crate::workflows::tenant_key;

pub struct Provision;

steps!(pub enum Step {
    Reserve => "reserve",
    CreateKey => "create_key",
    CreateContainer => "create_container",
    Migrate => "migrate",
    Grant => "grant",
    Seed => "seed",
    Activate => "activate",
});

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
    type Step = Step;
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: Step,
        state: &mut State,
    ) -> Result<(), StepError> {
        let deps = cx.deps;
        let tenant_id = cx.tenant_id()?;
        let (cluster, c) = deps.dataplane.plan(tenant_id, state.tier, &state.cluster)?;
        let tier = backend(state.tier);
        match step {
            Step::Reserve => {
                Registry::set_placement(deps.registry.pool(), tenant_id, &c.placement()).await?;
            }
            Step::CreateKey => {
                tenant_key::ensure(deps, tenant_id).await?;
            }
            Step::CreateContainer => tier.create(cluster, &c).await?,
            Step::Migrate => {
                state.schema_version = Some(migrate_to_fleet(deps, cluster, &c).await?);
            }
            Step::Grant => credentials::grant(cluster, &c).await?,
            Step::Seed => {
                let db = cluster.database(&c.database);
                state.seeded_rows = Some(catalog::seed(cluster, &db, &c.schema, tenant_id).await?);
            }
            Step::Activate => {
                if state.schema_version.is_none() {
                    return Err(StepError::internal("activate before migrate"));
                }
                // Again: a rollout that started since `migrate` skipped this tenant and left
                // it to this workflow.
                let version = migrate_to_fleet(deps, cluster, &c).await?;
                state.schema_version = Some(version);
                Registry::activate_tenant(deps.registry.pool(), tenant_id, version).await?;
            }
        }
        Ok(())
    }

    async fn compensate(&self, cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
        let (cluster, c) = cx
            .deps
            .dataplane
            .plan(cx.tenant_id()?, state.tier, &state.cluster)?;
        undo(cx.deps, cluster, &c).await
    }
}
