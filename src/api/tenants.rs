//! `tenantd.v1.TenantService`.

use tonic::{Request, Response, Status};

use super::audit::audited;
use super::convert::{self, TenantUpdate, TierChangeRequest};
use super::pb;
use crate::service::{Control, RequestId};
use crate::tenant::{NewTenant, TenantRef};

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
        audited(&self.control, request, |r| async move {
            let request_id = RequestId::parse(&r.request_id)?;
            let new = NewTenant::try_from(r)?;
            Ok(self.control.create_tenant(new, request_id).await?.into())
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
        let state = convert::tenant_state_from(r.state)?;
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
        audited(&self.control, request, |r| async move {
            let u = TenantUpdate::try_from(r)?;
            Ok(self
                .control
                .update_tenant(&u.tenant, u.changes)
                .await?
                .into())
        })
        .await
    }

    async fn change_tier(
        &self,
        request: Request<pb::ChangeTierRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, |r| async move {
            let request_id = RequestId::parse(&r.request_id)?;
            let c = TierChangeRequest::try_from(&r)?;
            let op = self
                .control
                .change_tier(&c.tenant, c.tier, c.cluster, request_id)
                .await?;
            Ok(op.into())
        })
        .await
    }

    async fn resolve_tenant(
        &self,
        request: Request<pb::ResolveTenantRequest>,
    ) -> Result<Response<pb::TenantRoute>, Status> {
        let r = TenantRef::parse("tenant", &request.into_inner().tenant)?;
        Ok(Response::new(self.control.resolve_tenant(&r).await?.into()))
    }
}
