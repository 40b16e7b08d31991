//! `tenantd.v1.ExportService`.

use std::pin::Pin;

use tokio::io::AsyncReadExt;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::audit::{Outcome, audited};
use super::convert;
use super::pb;
use crate::service::{Control, RequestId};
use crate::tenant::TenantRef;

/// Archive bytes per ReadExport message.
const CHUNK: usize = 256 * 1024;

pub struct ExportApi {
    control: Control,
}

impl ExportApi {
    pub fn new(control: Control) -> Self {
        ExportApi { control }
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadExportResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::export_service_server::ExportService for ExportApi {
    async fn export_tenant(
        &self,
        request: Request<pb::ExportTenantRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, |r| async move {
            let tenant = TenantRef::parse("tenant", &r.tenant)?;
            let request_id = RequestId::parse(&r.request_id)?;
            Ok(self
                .control
                .export_tenant(&tenant, request_id)
                .await?
                .into())
        })
        .await
    }

    async fn get_export(
        &self,
        request: Request<pb::GetExportRequest>,
    ) -> Result<Response<pb::Export>, Status> {
        let id = convert::resource_id("name", &request.into_inner().name, "exports")?;
        Ok(Response::new(self.control.get_export(id).await?.into()))
    }

    async fn list_exports(
        &self,
        request: Request<pb::ListExportsRequest>,
    ) -> Result<Response<pb::ListExportsResponse>, Status> {
        let r = request.into_inner();
        let tenant = TenantRef::parse("tenant", &r.tenant)?;
        let (exports, next_page_token) = self
            .control
            .list_exports(&tenant, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListExportsResponse {
            exports: exports.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn restore_tenant(
        &self,
        request: Request<pb::RestoreTenantRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, |r| async move {
            let restore = convert::RestoreRequest::try_from(&r)?;
            let request_id = RequestId::parse(&r.request_id)?;
            let op = self
                .control
                .restore_tenant(restore.export_id, restore.target, request_id)
                .await?;
            Ok(op.into())
        })
        .await
    }

    type ReadExportStream = ReadStream;

    async fn read_export(
        &self,
        request: Request<pb::ReadExportRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        audited(&self.control, request, |r| self.read_export_stream(r)).await
    }

    async fn get_signing_key(
        &self,
        _request: Request<pb::GetSigningKeyRequest>,
    ) -> Result<Response<pb::SigningKey>, Status> {
        let key = self.control.signing_key().await?;
        Ok(Response::new(pb::SigningKey {
            public_key_pem: key.pem(),
            key_id: key.key_id,
            algorithm: "ECDSA_SHA_256".into(),
        }))
    }
}

impl Outcome for ReadStream {
    fn detail(&self) -> String {
        "archive and data key sent".into()
    }
}

impl ExportApi {
    /// The export's header (manifest, signature, data key), then its archive in chunks.
    async fn read_export_stream(&self, r: pb::ReadExportRequest) -> Result<ReadStream, Status> {
        let id = convert::resource_id("name", &r.name, "exports")?;
        let mut read = self.control.read_export(id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let header = pb::ReadExportResponse {
            part: Some(pb::read_export_response::Part::Header(pb::ExportHeader {
                export: Some(read.view.clone().into()),
                manifest: std::mem::take(&mut read.manifest),
                signature: std::mem::take(&mut read.signature),
                data_key: read.data_key.to_vec(),
            })),
        };
        tokio::spawn(async move {
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match read.archive.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "reading the archive: {e}"
                            ))))
                            .await;
                        return;
                    }
                };
                buf.truncate(n);
                let part = pb::ReadExportResponse {
                    part: Some(pb::read_export_response::Part::Chunk(buf)),
                };
                if tx.send(Ok(part)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
