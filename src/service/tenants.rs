//! Tenants: creating one (a `provision` operation), moving it between tiers, reading,
//! listing and updating it, and resolving where an application reaches it.

use super::enqueue::{Enqueue, RequestId, Subject, request_hash};
use super::{Control, OperationView};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::paging;
use crate::registry::tenants::{TenantChanges, TenantFilter};
use crate::tenant::{NewTenant, Tenant, TenantRef, TenantState, Tier};
use crate::workflows::{ChangeTier, Provision, change_tier, provision};

/// How an application reaches a tenant.
#[derive(Debug, Clone)]
pub struct Route {
    pub tenant: Tenant,
    pub host: String,
    pub port: u16,
    pub session_settings: Vec<(String, String)>,
}

impl Control {
    /// Starts provisioning. The tenant row and its operation commit together; the same
    /// request id with the same request returns the first operation, whatever races.
    pub async fn create_tenant(
        &self,
        new: NewTenant,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let cluster = match &new.cluster {
            Some(c) => self.known_cluster(c)?,
            None => self.deps.config.default_cluster().to_owned(),
        };
        let state = provision::State::new(new.tier, &cluster);
        let id = self
            .enqueue::<Provision>(Enqueue {
                subject: Subject::NewTenant {
                    new: &new,
                    cluster: &cluster,
                },
                request_id: request_id.as_ref(),
                hash: &request_hash(&new),
                state: &|_| state.clone(),
            })
            .await?;
        self.get_operation(id).await
    }

    /// Starts moving the tenant to `tier` on `cluster` (default: where it is). Idempotent on
    /// the request id like [`Self::create_tenant`]; a retry finds its operation even after the
    /// move is done.
    /// `copy_mb_per_s` bounds the online copy's reads (0: `[workflow] copy_mb_per_s`).
    pub async fn change_tier(
        &self,
        r: &TenantRef,
        (tier, cluster): (Tier, Option<String>),
        copy_mb_per_s: u32,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let tenant = self.registry().get_tenant(r).await?;
        let cluster = match cluster {
            Some(c) => self.known_cluster(&c)?,
            None => tenant.placement.cluster.clone(),
        };
        let target = change_tier::Side { tier, cluster };
        let pace = match copy_mb_per_s {
            0 => self.deps.config.workflow.copy_mb_per_s,
            mb => mb,
        };
        let check = || {
            tenant.ensure_active()?;
            if tenant.tier == target.tier && tenant.placement.cluster == target.cluster {
                return Err(Error::FailedPrecondition {
                    reason: format!(
                        "tenant {} is already in the {} tier on cluster {}",
                        tenant.slug, target.tier, target.cluster
                    ),
                    operation: None,
                });
            }
            Ok(())
        };
        let id = self
            .enqueue::<ChangeTier>(Enqueue {
                subject: Subject::Tenant {
                    tenant: &tenant,
                    check: &check,
                },
                request_id: request_id.as_ref(),
                // Without a pace, as requests were hashed before it existed: a retry across
                // an upgrade still finds its operation.
                hash: &match copy_mb_per_s {
                    0 => request_hash(&(tenant.id, &target)),
                    mb => request_hash(&(tenant.id, &target, mb)),
                },
                state: &|_| change_tier::State::new(target.clone(), pace),
            })
            .await?;
        self.get_operation(id).await
    }

    /// A tenant by id, or by slug: the live tenant with it, else the latest deleted one that
    /// had it (its tombstone, as ListTenants shows it).
    pub async fn get_tenant(&self, r: &TenantRef) -> Result<Tenant> {
        self.registry().get_tenant_or_tombstone(r).await
    }

    pub async fn list_tenants(
        &self,
        tier: Option<Tier>,
        state: Option<TenantState>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Tenant>, String)> {
        let limit = paging::page_size(page_size)?;
        let filter_key = format!(
            "tier={};state={}",
            tier.map_or("", Tier::as_str),
            state.map_or("", TenantState::as_str)
        );
        let after = paging::decode(page_token, &filter_key)?;
        let tenants = self
            .registry()
            .list_tenants(&TenantFilter { tier, state }, after, limit + 1)
            .await?;
        Ok(paging::finish(tenants, limit, &filter_key, |t| {
            (t.created_at, t.id)
        }))
    }

    pub async fn update_tenant(&self, r: &TenantRef, changes: TenantChanges) -> Result<Tenant> {
        let tenant = self.registry().get_tenant(r).await?;
        // A tombstone keeps no tenant data, and one on its way there gets none.
        if matches!(tenant.state, TenantState::Deleting | TenantState::Deleted) {
            return Err(Error::FailedPrecondition {
                reason: format!("tenant {} is {}", tenant.slug, tenant.state.as_str()),
                operation: None,
            });
        }
        self.registry().update_tenant(tenant.id, &changes).await
    }

    /// Where `principal` (allowed to reach the tenant) connects to it.
    pub async fn resolve_tenant(&self, principal: &Principal, r: &TenantRef) -> Result<Route> {
        let tenant = self.registry().get_tenant(r).await?;
        principal.may_reach(&tenant)?;
        tenant.ensure_active()?;
        self.route(tenant)
    }

    /// The route to an active tenant.
    pub(super) fn route(&self, tenant: Tenant) -> Result<Route> {
        let cluster = self.deps.dataplane.cluster(&tenant.placement.cluster)?;
        let mut session_settings = vec![("app.tenant_id".to_owned(), tenant.id.to_string())];
        if let Some(schema) = &tenant.placement.schema {
            session_settings.push(("search_path".to_owned(), schema.clone()));
        }
        Ok(Route {
            host: cluster.public_host.clone(),
            port: cluster.public_port,
            tenant,
            session_settings,
        })
    }
}
