//! Exports: starting one, finding them, and handing a complete one to an operator for
//! client-side verification and decryption.

use tokio::io::AsyncRead;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::enqueue::{Enqueue, RequestId, Subject, request_hash};
use super::{Control, OperationView};
use crate::archive::layout::ExportKeys;
use crate::archive::verified::VerifiedExport;
use crate::error::{Error, Result};
use crate::keys::PublicKey;
use crate::paging;
use crate::registry::exports::Export as ExportRow;
use crate::tenant::TenantRef;
use crate::workflows::{Export, export};

/// An export and where its objects are.
#[derive(Debug, Clone)]
pub struct ExportView {
    pub export: ExportRow,
    pub object_uri: String,
    pub manifest_uri: String,
}

/// A complete export, ready to verify and open.
pub struct ExportRead {
    pub view: ExportView,
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub data_key: Zeroizing<[u8; 32]>,
    pub archive: Box<dyn AsyncRead + Send + Unpin>,
}

impl Control {
    /// Starts an export of the tenant; idempotent on `request_id`.
    pub async fn export_tenant(
        &self,
        r: &TenantRef,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let tenant = self.registry().get_tenant(r).await?;
        let id = self
            .enqueue::<Export>(Enqueue {
                subject: Subject::Tenant {
                    tenant: &tenant,
                    check: &|| tenant.ensure_active(),
                },
                request_id: request_id.as_ref(),
                hash: &request_hash(&("export", tenant.id)),
                state: &export::State::new,
            })
            .await?;
        self.get_operation(id).await
    }

    fn export_view(&self, e: ExportRow) -> ExportView {
        let keys = ExportKeys::for_row(&e);
        ExportView {
            object_uri: self.deps.objects.uri(&keys.archive),
            manifest_uri: self.deps.objects.uri(&keys.manifest),
            export: e,
        }
    }

    pub(crate) async fn find_export(&self, id: Uuid) -> Result<Option<ExportView>> {
        Ok(self
            .registry()
            .find_export(id)
            .await?
            .map(|e| self.export_view(e)))
    }

    pub async fn get_export(&self, id: Uuid) -> Result<ExportView> {
        self.find_export(id)
            .await?
            .ok_or_else(|| Error::not_found("export", format!("exports/{id}")))
    }

    pub async fn list_exports(
        &self,
        tenant: &TenantRef,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<ExportView>, String)> {
        let tenant = self.registry().get_tenant(tenant).await?;
        let limit = paging::page_size(page_size)?;
        let filter_key = format!("exports;tenant={}", tenant.id);
        let after = paging::decode(page_token, &filter_key)?;
        let rows = self
            .registry()
            .list_exports(tenant.id, after, limit + 1)
            .await?;
        let (rows, next) = paging::finish(rows, limit, &filter_key, |e| (e.created_at, e.id));
        Ok((
            rows.into_iter().map(|e| self.export_view(e)).collect(),
            next,
        ))
    }

    /// The manifest, its signature, the unwrapped data key and the archive stream of a
    /// complete export. The manifest is checked against the signing key first: a manifest
    /// altered in the store is refused here rather than trusted with a data key.
    pub async fn read_export(&self, id: Uuid) -> Result<ExportRead> {
        let opened = VerifiedExport::open(&self.deps, id).await?;
        let data_key = opened.data_key(&self.deps).await?;
        let archive = self.deps.objects.read(&opened.keys.archive).await?;
        tracing::info!(export_id = %id, tenant_id = %opened.row.tenant_id, "export read");
        Ok(ExportRead {
            view: self.export_view(opened.row),
            manifest: opened.manifest_bytes,
            signature: opened.signature,
            data_key,
            archive,
        })
    }

    pub async fn signing_key(&self) -> Result<PublicKey> {
        Ok(self.deps.keys.public_key().await?)
    }
}
