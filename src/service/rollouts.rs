//! Fleet migrations: starting a rollout, approving it past its canaries, listing its
//! targets, retrying one target (see docs/rollouts.md).

use uuid::Uuid;

use super::enqueue::{Enqueue, RequestId, Subject, request_hash};
use super::{Control, OperationView};
use crate::error::{Error, Result};
use crate::paging;
use crate::rollout::{Canaries, Counts, Plan, Target, TargetState};
use crate::tenant::{TenantRef, TenantState};
use crate::workflow::Workflow;
use crate::workflows::{MigrateFleet, migrate_fleet};

/// The fleet's tenant-schema version, the newest known, and live tenants per version.
#[derive(Debug, Clone)]
pub struct FleetSchema {
    pub version: i32,
    pub latest: i32,
    pub tenants_by_version: Vec<(i32, i64)>,
    /// Every version of the tenant schema, as the registry holds them.
    pub schema: std::sync::Arc<crate::tenant_schema::TenantSchema>,
    /// What the linters users run would report about it (at `latest`).
    pub advice: Vec<crate::dataplane::advice::Advice>,
}

/// How canaries are asked for, before tenant names are resolved.
#[derive(Debug, Clone)]
pub enum CanaryRequest {
    Count(u32),
    Tenants(Vec<TenantRef>),
}

/// One page of a rollout's targets, with the totals.
#[derive(Debug, Clone)]
pub struct TargetPage {
    pub targets: Vec<Target>,
    pub next_page_token: String,
    pub target_version: i32,
    pub counts: Counts,
}

impl Control {
    pub async fn fleet_schema(&self) -> Result<FleetSchema> {
        let schema = self.deps.tenant_schema().await?;
        Ok(FleetSchema {
            version: self.registry().schema_version().await?,
            latest: schema.latest(),
            tenants_by_version: self.registry().tenants_by_version().await?,
            advice: self.schema_advice(&schema).await,
            schema,
        })
    }

    /// [`crate::dataplane::advice`] for the latest version, tried once per version in this
    /// process (a throwaway container on the default cluster). Best effort: a try that fails
    /// is logged and gives none.
    async fn schema_advice(
        &self,
        schema: &crate::tenant_schema::TenantSchema,
    ) -> Vec<crate::dataplane::advice::Advice> {
        let mut cached = self.advice.lock().await;
        if let Some((version, advice)) = cached.as_ref()
            && *version == schema.latest()
        {
            return advice.clone();
        }
        let config = &self.deps.config;
        let tried = match self.deps.dataplane.cluster(config.default_cluster()) {
            Ok(cluster) => crate::dataplane::conventions::check(
                cluster,
                schema,
                &config.tenant_schema.extensions,
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match tried {
            Ok(advice) => {
                *cached = Some((schema.latest(), advice.clone()));
                advice
            }
            Err(e) => {
                tracing::warn!(error = %e, "tenant schema advice not read");
                Vec::new()
            }
        }
    }

    /// Starts a rollout to `plan.target_version` (validated here) with the canaries named.
    pub async fn migrate_fleet(
        &self,
        mut plan: Plan,
        canaries: CanaryRequest,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        plan.canaries = match canaries {
            CanaryRequest::Count(n) => Canaries::Count(n),
            CanaryRequest::Tenants(refs) => {
                let mut ids = Vec::with_capacity(refs.len());
                for r in &refs {
                    let tenant = self.registry().get_tenant(r).await?;
                    if tenant.state != TenantState::Active {
                        return Err(Error::invalid(
                            "canary_tenants",
                            format!(
                                "tenant {} is {}, not active",
                                tenant.slug,
                                tenant.state.as_str()
                            ),
                        ));
                    }
                    ids.push(tenant.id);
                }
                Canaries::Tenants(ids)
            }
        };
        plan.validate(self.deps.tenant_schema().await?.latest())?;
        let hash = request_hash(&plan);
        let state = migrate_fleet::State::new(plan);
        self.start_rollout(state, request_id.as_ref(), &hash).await
    }

    /// Inserts the rollout's operation and its row, moving the fleet's version forward, in
    /// one transaction; or returns the operation `request_id` already names.
    async fn start_rollout(
        &self,
        state: migrate_fleet::State,
        request_id: Option<&RequestId>,
        hash: &[u8],
    ) -> Result<OperationView> {
        let version = state.plan.target_version;
        let id = self
            .enqueue::<MigrateFleet>(Enqueue {
                subject: Subject::Rollout { version },
                request_id,
                hash,
                state: &|_| state.clone(),
            })
            .await?;
        tracing::info!(operation_id = %id, to = version, only = ?state.only,
            "fleet migration requested");
        self.get_operation(id).await
    }

    /// The rollout `id`, or NOT_FOUND (an operation of another kind too).
    async fn rollout_state(&self, id: Uuid) -> Result<(OperationView, migrate_fleet::State)> {
        let view = self.get_operation(id).await?;
        if view.operation.kind != MigrateFleet::KIND {
            return Err(Error::not_found("rollout", format!("operations/{id}")));
        }
        let state = crate::workflow::unwrap(view.operation.data.clone())
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok((view, state))
    }

    /// Approves the rollout past its canaries. Idempotent; refused once it has finished.
    pub async fn resume_rollout(&self, id: Uuid, principal: &str) -> Result<OperationView> {
        let (view, _) = self.rollout_state(id).await?;
        if view.operation.state.is_done() {
            return Err(Error::FailedPrecondition {
                reason: format!(
                    "rollout operations/{id} has finished ({})",
                    view.operation.state.as_str()
                ),
                operation: Some(id),
            });
        }
        self.registry().approve_rollout(id, principal).await?;
        self.get_operation(id).await
    }

    pub async fn list_rollout_targets(
        &self,
        id: Uuid,
        state: Option<TargetState>,
        page_size: i32,
        page_token: &str,
    ) -> Result<TargetPage> {
        let (target_version, _) = self.registry().rollout(id).await?;
        let limit = paging::page_size(page_size)?;
        let filter_key = format!(
            "rollout={id};state={}",
            state.map_or("", TargetState::as_str)
        );
        let after: Option<i32> = paging::decode(page_token, &filter_key)?;
        let targets = self
            .registry()
            .list_targets(id, state, after, limit + 1)
            .await?;
        let (targets, next_page_token) = paging::finish(targets, limit, &filter_key, |t| t.seq);
        Ok(TargetPage {
            targets,
            next_page_token,
            target_version,
            counts: self.registry().rollout_counts(id).await?,
        })
    }

    /// Migrates one failed or skipped target again: the running rollout takes it back into
    /// its queue; a finished one gets a rollout of that target alone, whose outcome its row
    /// follows.
    pub async fn retry_rollout_target(
        &self,
        id: Uuid,
        target: &str,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let (view, original) = self.rollout_state(id).await?;
        let key = if target.starts_with("pool:") {
            target.to_owned()
        } else {
            let r = TenantRef::parse("target", target)?;
            self.registry().get_tenant(&r).await?.id.to_string()
        };
        let t = self.registry().get_target(id, &key).await?;
        if !matches!(t.state, TargetState::Failed | TargetState::Skipped) {
            return Err(Error::FailedPrecondition {
                reason: format!(
                    "target {} of rollout operations/{id} is {}, not failed or skipped",
                    t.name(),
                    t.state.as_str()
                ),
                operation: Some(id),
            });
        }
        if !view.operation.state.is_done() {
            self.registry().requeue_target(id, &key).await?;
            return self.get_operation(id).await;
        }
        let mut state = migrate_fleet::State::new(Plan {
            canaries: Canaries::Count(0),
            auto_continue: true,
            concurrency: 1,
            max_failures: 0,
            ..original.plan
        });
        state.only = Some(key.clone());
        state.retry_of = Some(id);
        let hash = request_hash(&("retry", id, &key));
        self.start_rollout(state, request_id.as_ref(), &hash).await
    }
}
