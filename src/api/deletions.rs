//! `tenantd.v1.DeletionService`.

use tonic::{Request, Response, Status};

use super::audit::audited;
use super::convert;
use super::pb;
use crate::service::{Control, DeletionRequest, RequestId};
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
        audited(&self.control, request, |r| async move {
            let tenant = TenantRef::parse("tenant", &r.tenant)?;
            let deletion = DeletionRequest::try_from(&r)?;
            let request_id = RequestId::parse(&r.request_id)?;
            let op = self
                .control
                .delete_tenant(&tenant, deletion, request_id)
                .await?;
            Ok(op.into())
        })
        .await
    }

    async fn get_deletion_certificate(
        &self,
        request: Request<pb::GetDeletionCertificateRequest>,
    ) -> Result<Response<pb::DeletionCertificate>, Status> {
        let r = convert::certificate_ref(&request.into_inner().name)?;
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
