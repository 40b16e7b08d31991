//! `tenantd.v1.ExportService`.

use std::pin::Pin;

use tokio::io::AsyncReadExt;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::audit::{Outcome, audited};
use super::convert;
use super::convert::{resource_id, tier_from, tier_to, time};
use super::pb;
use crate::error::Error;
use crate::registry::exports::ExportState;
use crate::service::{Control, RequestId};
use crate::service::{ExportView, NewTenantFromExport, RestoreTarget};
use crate::tenant::TenantRef;
use crate::tenant::{self, Slug, Tier};
use uuid::Uuid;

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
        audited(&self.control, request, move |control, r| async move {
            let tenant = TenantRef::parse("tenant", &r.tenant)?;
            let request_id = RequestId::parse(&r.request_id)?;
            Ok(control.export_tenant(&tenant, request_id).await?.into())
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
        audited(&self.control, request, move |control, r| async move {
            let restore = RestoreRequest::try_from(&r)?;
            let request_id = RequestId::parse(&r.request_id)?;
            let op = match restore.source {
                RestoreSource::Export(id) => {
                    control
                        .restore_tenant(id, restore.target, request_id)
                        .await?
                }
                RestoreSource::PointInTime { tenant, at } => {
                    control
                        .restore_tenant_at(&tenant, at, restore.target, request_id)
                        .await?
                }
            };
            Ok(op.into())
        })
        .await
    }

    type ReadExportStream = ReadStream;

    async fn read_export(
        &self,
        request: Request<pb::ReadExportRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        audited(&self.control, request, |control, r| {
            ExportApi::read_export_stream(control, r)
        })
        .await
    }

    async fn delete_export(
        &self,
        request: Request<pb::DeleteExportRequest>,
    ) -> Result<Response<pb::Export>, Status> {
        let by = super::audit::caller(&request)?.principal.name;
        audited(&self.control, request, move |control, r| async move {
            let id = resource_id("name", &r.name, "exports")?;
            Ok(control.delete_export(id, &by).await?.into())
        })
        .await
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

impl Outcome for pb::Export {
    fn detail(&self) -> String {
        format!("{} removed", self.name)
    }
    fn tenant_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.tenant_id).ok()
    }
}

impl Outcome for ReadStream {
    fn detail(&self) -> String {
        "archive and data key sent".into()
    }
}

impl ExportApi {
    /// The export's header (manifest, signature, data key), then its archive in chunks.
    async fn read_export_stream(
        control: Control,
        r: pb::ReadExportRequest,
    ) -> Result<ReadStream, Status> {
        let id = convert::resource_id("name", &r.name, "exports")?;
        let mut read = control.read_export(id).await?;
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

// ---- conversions -----------------------------------------------------------------------

/// A validated RestoreTenant request.
pub struct RestoreRequest {
    pub source: RestoreSource,
    pub target: RestoreTarget,
}

/// What a restore brings back.
pub enum RestoreSource {
    Export(Uuid),
    /// The tenant's data as it was at a moment.
    PointInTime {
        tenant: TenantRef,
        at: chrono::DateTime<chrono::Utc>,
    },
}

impl TryFrom<&pb::RestoreTenantRequest> for RestoreRequest {
    type Error = Error;
    fn try_from(r: &pb::RestoreTenantRequest) -> Result<Self, Error> {
        let source = match (
            r.export.is_empty(),
            r.tenant.is_empty(),
            r.point_in_time.is_empty(),
        ) {
            (false, true, true) => {
                RestoreSource::Export(resource_id("export", &r.export, "exports")?)
            }
            (true, false, false) => RestoreSource::PointInTime {
                tenant: TenantRef::parse("tenant", &r.tenant)?,
                at: chrono::DateTime::parse_from_rfc3339(&r.point_in_time)
                    .map_err(|e| {
                        Error::invalid(
                            "point_in_time",
                            format!("{e}: an RFC 3339 time such as 2026-12-01T14:00:00Z"),
                        )
                    })?
                    .to_utc(),
            },
            (false, _, _) => {
                let field = if r.tenant.is_empty() {
                    "point_in_time"
                } else {
                    "tenant"
                };
                return Err(Error::invalid(
                    field,
                    "restores to a point in time, not from an export: give `export`, or \
                     `tenant` and `point_in_time`",
                ));
            }
            (true, true, true) => {
                return Err(Error::invalid(
                    "export",
                    "is required (or `tenant` and `point_in_time` for a restore to a point \
                     in time)",
                ));
            }
            (true, true, false) => {
                return Err(Error::invalid("tenant", "is required with point_in_time"));
            }
            (true, false, true) => {
                return Err(Error::invalid("point_in_time", "is required with tenant"));
            }
        };
        let optional = |field: &str, v: &str| -> Result<Option<String>, Error> {
            Ok(if v.is_empty() {
                None
            } else {
                Some(tenant::text_field(field, v, true)?)
            })
        };
        let target = match pb::RestoreMode::try_from(r.mode) {
            Ok(pb::RestoreMode::InPlace) => {
                for (field, set) in [
                    ("new_slug", !r.new_slug.is_empty()),
                    ("tier", r.tier != 0),
                    ("cluster", !r.cluster.is_empty()),
                    ("display_name", !r.display_name.is_empty()),
                ] {
                    if set {
                        return Err(Error::invalid(
                            field,
                            "applies only to RESTORE_MODE_AS_NEW_TENANT; an in-place restore \
                             keeps the tenant where it is",
                        ));
                    }
                }
                RestoreTarget::InPlace
            }
            Ok(pb::RestoreMode::AsNewTenant) => {
                if r.new_slug.is_empty() {
                    return Err(Error::invalid(
                        "new_slug",
                        "is required for RESTORE_MODE_AS_NEW_TENANT",
                    ));
                }
                RestoreTarget::AsNewTenant(NewTenantFromExport {
                    slug: Slug::parse(&r.new_slug).map_err(|e| match e {
                        Error::InvalidArgument { reason, .. } => Error::invalid("new_slug", reason),
                        other => other,
                    })?,
                    tier: tier_from("tier", r.tier, false)?,
                    cluster: optional("cluster", &r.cluster)?,
                    display_name: {
                        let d = tenant::text_field("display_name", &r.display_name, false)?;
                        (!d.is_empty()).then_some(d)
                    },
                })
            }
            Ok(pb::RestoreMode::Unspecified) => {
                return Err(Error::invalid(
                    "mode",
                    "is required: RESTORE_MODE_IN_PLACE or RESTORE_MODE_AS_NEW_TENANT",
                ));
            }
            Err(_) => {
                return Err(Error::invalid(
                    "mode",
                    format!("unknown restore mode {}", r.mode),
                ));
            }
        };
        Ok(RestoreRequest { source, target })
    }
}

impl From<ExportView> for pb::Export {
    fn from(v: ExportView) -> Self {
        let e = v.export;
        pb::Export {
            name: format!("exports/{}", e.id),
            tenant_id: e.tenant_id.to_string(),
            state: match e.state {
                ExportState::Running => pb::ExportState::Running,
                ExportState::Complete => pb::ExportState::Complete,
                ExportState::Failed => pb::ExportState::Failed,
                ExportState::Deleted => pb::ExportState::Deleted,
                ExportState::Removing => pb::ExportState::Removing,
                ExportState::Removed => pb::ExportState::Removed,
            } as i32,
            object_uri: v.object_uri,
            manifest_uri: v.manifest_uri,
            size_bytes: e.size_bytes.unwrap_or(0).max(0) as u64,
            sha256: e.sha256.unwrap_or_default(),
            plaintext_sha256: e.plaintext_sha256.unwrap_or_default(),
            tables: e
                .tables
                .into_iter()
                .map(|t| pb::TableRowCount {
                    table: t.table,
                    rows: t.rows,
                })
                .collect(),
            snapshot_time: e.snapshot_at.map(time).unwrap_or_default(),
            key_id: e.key_id.unwrap_or_default(),
            schema_version: e.schema_version.unwrap_or(0),
            source_tier: e
                .tier
                .parse::<Tier>()
                .map(tier_to)
                .unwrap_or(pb::Tier::Unspecified) as i32,
            operation: format!("operations/{}", e.operation_id),
            create_time: time(e.created_at),
            complete_time: e.completed_at.map(time).unwrap_or_default(),
            backup_policy: e
                .scheduled
                .map(|(p, _)| format!("backup-policies/{p}"))
                .unwrap_or_default(),
            slot_time: e.scheduled.map(|(_, s)| time(s)).unwrap_or_default(),
            remove_time: e.removed.as_ref().map(|r| time(r.0)).unwrap_or_default(),
            removed_by: e.removed.map(|r| r.1).unwrap_or_default(),
        }
    }
}
