//! `tenantd.v1.DeletionService`.

use tonic::{Request, Response, Status};

use super::audit::audited;
use super::convert::{resource_id, time};
use super::pb;
use crate::config::KEY_PENDING_DAYS;
use crate::error::Error;
use crate::registry::certificates::StoredCertificate;
use crate::service::CertificateRef;
use crate::service::{Control, DeletionRequest, RequestId};
use crate::tenant;
use crate::tenant::TenantRef;

pub struct DeletionApi {
    control: Control,
}

impl DeletionApi {
    pub fn new(control: Control) -> Self {
        DeletionApi { control }
    }
}

#[tonic::async_trait]
impl pb::deletion_service_server::DeletionService for DeletionApi {
    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, move |control, r| async move {
            let tenant = TenantRef::parse("tenant", &r.tenant)?;
            let deletion = DeletionRequest::try_from(&r)?;
            let request_id = RequestId::parse(&r.request_id)?;
            let op = control.delete_tenant(&tenant, deletion, request_id).await?;
            Ok(op.into())
        })
        .await
    }

    async fn get_deletion_certificate(
        &self,
        request: Request<pb::GetDeletionCertificateRequest>,
    ) -> Result<Response<pb::DeletionCertificate>, Status> {
        let r = certificate_ref(&request.into_inner().name)?;
        Ok(Response::new(
            self.control.get_certificate(&r).await?.into(),
        ))
    }

    async fn list_deletion_certificates(
        &self,
        request: Request<pb::ListDeletionCertificatesRequest>,
    ) -> Result<Response<pb::ListDeletionCertificatesResponse>, Status> {
        let r = request.into_inner();
        let (certificates, next_page_token) = self
            .control
            .list_certificates(r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListDeletionCertificatesResponse {
            certificates: certificates.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}

// ---- conversions -----------------------------------------------------------------------

impl From<StoredCertificate> for pb::DeletionCertificate {
    fn from(c: StoredCertificate) -> Self {
        pb::DeletionCertificate {
            name: format!("deletion-certificates/{}", c.id),
            tenant_id: c.tenant_id.to_string(),
            tenant_slug: c.tenant_slug,
            operation: format!("operations/{}", c.operation_id),
            issue_time: time(c.issued_at),
            signing_key_id: c.signing_key_id,
            sha256: c.sha256,
            document: c.document,
        }
    }
}

/// A validated DeleteTenant request.
impl TryFrom<&pb::DeleteTenantRequest> for DeletionRequest {
    type Error = Error;
    fn try_from(r: &pb::DeleteTenantRequest) -> Result<Self, Error> {
        let key_pending_days = match r.key_pending_days {
            0 => None,
            d if d >= 0 && KEY_PENDING_DAYS.contains(&(d as u32)) => Some(d as u32),
            d => {
                return Err(Error::invalid(
                    "key_pending_days",
                    format!("must be 7 to 30 (or 0 for the configured default), got {d}"),
                ));
            }
        };
        Ok(DeletionRequest {
            reason: tenant::text_field("reason", &r.reason, true)?,
            requested_by: tenant::text_field("requested_by", &r.requested_by, true)?,
            ticket: tenant::text_field("ticket", &r.ticket, false)?,
            final_export: r.final_export,
            key_pending_days,
        })
    }
}

/// "deletion-certificates/{uuid}", or a tenant id or slug.
pub fn certificate_ref(name: &str) -> Result<CertificateRef, Error> {
    if name.starts_with("deletion-certificates") {
        return resource_id("name", name, "deletion-certificates").map(CertificateRef::Id);
    }
    TenantRef::parse("name", name).map(CertificateRef::Tenant)
}
