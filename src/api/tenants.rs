//! `tenantd.v1.TenantService`.

use tonic::{Request, Response, Status};

use super::audit::{audited, caller};
use super::convert;
use super::convert::{tier_from, tier_to, time};
use super::pb;
use crate::error::Error;
use crate::registry::tenants::TenantChanges;
use crate::service::{Control, RequestId};
use crate::service::{Route, connection_uri};
use crate::tenant::{self, Slug, Tenant, TenantState, Tier};
use crate::tenant::{NewTenant, TenantRef};
use std::collections::BTreeMap;

pub struct TenantApi {
    control: Control,
}

impl TenantApi {
    pub fn new(control: Control) -> Self {
        TenantApi { control }
    }
}

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, move |control, r| async move {
            let request_id = RequestId::parse(&r.request_id)?;
            let new = NewTenant::try_from(r)?;
            Ok(control.create_tenant(new, request_id).await?.into())
        })
        .await
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let r = TenantRef::parse("tenant", &request.into_inner().tenant)?;
        Ok(Response::new(self.control.get_tenant(&r).await?.into()))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let r = request.into_inner();
        let tier = convert::tier_from("tier", r.tier, false)?;
        let state = tenant_state_from(r.state)?;
        let (tenants, next_page_token) = self
            .control
            .list_tenants(tier, state, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        audited(&self.control, request, move |control, r| async move {
            let u = TenantUpdate::try_from(r)?;
            Ok(control.update_tenant(&u.tenant, u.changes).await?.into())
        })
        .await
    }

    async fn change_tier(
        &self,
        request: Request<pb::ChangeTierRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, move |control, r| async move {
            let request_id = RequestId::parse(&r.request_id)?;
            let c = TierChangeRequest::try_from(&r)?;
            let op = control
                .change_tier(&c.tenant, c.side(), c.copy_mb_per_s, request_id)
                .await?;
            Ok(op.into())
        })
        .await
    }

    async fn resolve_tenant(
        &self,
        request: Request<pb::ResolveTenantRequest>,
    ) -> Result<Response<pb::TenantRoute>, Status> {
        let caller = caller(&request)?;
        let r = TenantRef::parse("tenant", &request.into_inner().tenant)?;
        let route = self.control.resolve_tenant(&caller.principal, &r).await?;
        Ok(Response::new(route.into()))
    }

    async fn issue_credentials(
        &self,
        request: Request<pb::IssueCredentialsRequest>,
    ) -> Result<Response<pb::Credentials>, Status> {
        let caller = caller(&request)?;
        audited(&self.control, request, move |control, r| async move {
            let tenant = TenantRef::parse("tenant", &r.tenant)?;
            let ttl = match r.ttl_seconds {
                0 => None,
                s => Some(u64::try_from(s).map_err(|_| {
                    Error::invalid("ttl_seconds", format!("must not be negative, got {s}"))
                })?),
            };
            let ttl = crate::credentials::ttl(ttl)?;
            let (issued, route) = control
                .issue_credentials(&caller.principal, &tenant, ttl)
                .await?;
            Ok(pb::Credentials {
                connection_uri: connection_uri(&issued.username, &issued.password, &route),
                expire_time: time(issued.expires_at),
                username: issued.username,
                password: issued.password,
                route: Some(route.into()),
            })
        })
        .await
    }

    async fn revoke_credentials(
        &self,
        request: Request<pb::RevokeCredentialsRequest>,
    ) -> Result<Response<pb::RevokeCredentialsResponse>, Status> {
        let caller = caller(&request)?;
        audited(&self.control, request, move |control, r| async move {
            let tenant = TenantRef::parse("tenant", &r.tenant)?;
            let revoked = control
                .revoke_credentials(&caller.principal, &tenant)
                .await?;
            Ok(pb::RevokeCredentialsResponse {
                revoked: i32::try_from(revoked).unwrap_or(i32::MAX),
            })
        })
        .await
    }
}

// ---- conversions -----------------------------------------------------------------------

pub fn tenant_state_from(v: i32) -> Result<Option<TenantState>, Error> {
    match pb::TenantState::try_from(v) {
        Ok(pb::TenantState::Unspecified) => Ok(None),
        Ok(pb::TenantState::Provisioning) => Ok(Some(TenantState::Provisioning)),
        Ok(pb::TenantState::Active) => Ok(Some(TenantState::Active)),
        Ok(pb::TenantState::Failed) => Ok(Some(TenantState::Failed)),
        Ok(pb::TenantState::Deleting) => Ok(Some(TenantState::Deleting)),
        Ok(pb::TenantState::Deleted) => Ok(Some(TenantState::Deleted)),
        Err(_) => Err(Error::invalid("state", format!("unknown tenant state {v}"))),
    }
}

fn tenant_state_to(s: TenantState) -> pb::TenantState {
    match s {
        TenantState::Provisioning => pb::TenantState::Provisioning,
        TenantState::Active => pb::TenantState::Active,
        TenantState::Failed => pb::TenantState::Failed,
        TenantState::Deleting => pb::TenantState::Deleting,
        TenantState::Deleted => pb::TenantState::Deleted,
    }
}

pub fn labels_from(
    labels: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Error> {
    tenant::labels(&labels.into_iter().collect())
}

impl TryFrom<pb::CreateTenantRequest> for NewTenant {
    type Error = Error;
    fn try_from(r: pb::CreateTenantRequest) -> Result<Self, Error> {
        let slug = Slug::parse(&r.slug)?;
        let display_name = tenant::text_field("display_name", &r.display_name, false)?;
        Ok(NewTenant {
            display_name: if display_name.is_empty() {
                slug.as_str().to_owned()
            } else {
                display_name
            },
            slug,
            plan: tenant::text_field("plan", &r.plan, false)?,
            tier: tier_from("tier", r.tier, true)?.expect("required"),
            labels: labels_from(r.labels)?,
            cluster: if r.cluster.is_empty() {
                None
            } else {
                Some(tenant::text_field("cluster", &r.cluster, true)?)
            },
        })
    }
}

/// An UpdateTenant request, validated: which tenant, and what changes.
pub struct TenantUpdate {
    pub tenant: TenantRef,
    pub changes: TenantChanges,
}

impl TryFrom<pb::UpdateTenantRequest> for TenantUpdate {
    type Error = Error;
    fn try_from(r: pb::UpdateTenantRequest) -> Result<Self, Error> {
        let tenant = TenantRef::parse("tenant", &r.tenant)?;
        if r.update_mask.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "name the fields to change: display_name, plan, labels",
            ));
        }
        let mut changes = TenantChanges::default();
        for path in &r.update_mask {
            match path.as_str() {
                "display_name" => {
                    changes.display_name =
                        Some(tenant::text_field("display_name", &r.display_name, true)?)
                }
                "plan" => changes.plan = Some(tenant::text_field("plan", &r.plan, false)?),
                "labels" => changes.labels = Some(labels_from(r.labels.clone())?),
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!(
                            "unknown or immutable field {:?}",
                            other.chars().take(64).collect::<String>()
                        ),
                    ));
                }
            }
        }
        Ok(TenantUpdate { tenant, changes })
    }
}

impl From<Tenant> for pb::Tenant {
    fn from(t: Tenant) -> Self {
        pb::Tenant {
            id: t.id.to_string(),
            slug: t.slug,
            display_name: t.display_name,
            plan: t.plan,
            labels: t.labels.into_iter().collect(),
            tier: tier_to(t.tier) as i32,
            state: tenant_state_to(t.state) as i32,
            placement: Some(pb::Placement {
                cluster: t.placement.cluster,
                database: t.placement.database.unwrap_or_default(),
                schema: t.placement.schema.unwrap_or_default(),
                role: t.placement.role.unwrap_or_default(),
            }),
            schema_version: t.schema_version,
            routing_epoch: t.routing_epoch,
            key_id: t.key_id.unwrap_or_default(),
            create_time: time(t.created_at),
            update_time: time(t.updated_at),
        }
    }
}

impl From<Route> for pb::TenantRoute {
    fn from(r: Route) -> Self {
        pb::TenantRoute {
            tenant_id: r.tenant.id.to_string(),
            tier: tier_to(r.tenant.tier) as i32,
            cluster: r.tenant.placement.cluster,
            host: r.host,
            port: r.port as i32,
            database: r.tenant.placement.database.unwrap_or_default(),
            schema: r.tenant.placement.schema.unwrap_or_default(),
            role: r.tenant.placement.role.unwrap_or_default(),
            session_settings: r.session_settings.into_iter().collect(),
            routing_epoch: r.tenant.routing_epoch,
            credential_ref: String::new(),
        }
    }
}

/// A validated ChangeTier request.
pub struct TierChangeRequest {
    pub tenant: TenantRef,
    pub tier: Tier,
    pub cluster: Option<String>,
    /// 0: the service's default.
    pub copy_mb_per_s: u32,
}

impl TierChangeRequest {
    /// The tier and, if named, the cluster to move to.
    pub fn side(&self) -> (Tier, Option<String>) {
        (self.tier, self.cluster.clone())
    }
}

impl TryFrom<&pb::ChangeTierRequest> for TierChangeRequest {
    type Error = Error;
    fn try_from(r: &pb::ChangeTierRequest) -> Result<Self, Error> {
        Ok(TierChangeRequest {
            tenant: TenantRef::parse("tenant", &r.tenant)?,
            tier: tier_from("tier", r.tier, true)?.expect("required"),
            cluster: if r.cluster.is_empty() {
                None
            } else {
                Some(tenant::text_field("cluster", &r.cluster, true)?)
            },
            copy_mb_per_s: r.copy_mb_per_s,
        })
    }
}
