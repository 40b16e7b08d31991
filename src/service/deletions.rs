//! Deletions: starting one, and the certificates they leave.
//!
//! A deletion is refused at once, before any operation exists, for a tenant that is neither
//! active nor already deleting (a failed deletion is finished by requesting it again), for a
//! tenant held by another operation, for a tenant under legal hold (or with a held export),
//! and for a request without a reason or requester.

use uuid::Uuid;

use super::enqueue::{Enqueue, RequestId, Subject, request_hash};
use super::{Control, OperationView};
use crate::error::{Error, Result};
use crate::paging;
use crate::registry::certificates::StoredCertificate;
use crate::tenant::TenantRef;
use crate::workflows::{Delete, delete};

/// A validated DeleteTenant request.
#[derive(Debug, Clone)]
pub struct DeletionRequest {
    pub reason: String,
    pub requested_by: String,
    pub ticket: String,
    pub final_export: bool,
    /// `None`: `deletion.key_pending_days` from configuration.
    pub key_pending_days: Option<u32>,
}

/// How a caller names a certificate: by its id, or by the deleted tenant's id or slug.
#[derive(Debug, Clone)]
pub enum CertificateRef {
    Id(Uuid),
    Tenant(TenantRef),
}

impl Control {
    /// Starts deleting the tenant; idempotent on `request_id`.
    pub async fn delete_tenant(
        &self,
        r: &TenantRef,
        d: DeletionRequest,
        request_id: Option<RequestId>,
    ) -> Result<OperationView> {
        let tenant = self.registry().get_tenant(r).await?;
        // A deletion destroys every export with the tenant's key: none may be under hold.
        // The deletion's first step checks again, for a hold placed in between.
        self.ensure_not_held(tenant.id).await?;
        let request = delete::Request {
            reason: d.reason,
            requested_by: d.requested_by,
            ticket: d.ticket,
            request_id: request_id.as_ref().map(|r| r.0.clone()),
            final_export: d.final_export,
            key_pending_days: d
                .key_pending_days
                .unwrap_or(self.deps.config.deletion.key_pending_days),
        };
        let id = self
            .enqueue::<Delete>(Enqueue {
                subject: Subject::Tenant {
                    tenant: &tenant,
                    check: &|| delete::deletable(&tenant, request.final_export),
                },
                request_id: request_id.as_ref(),
                hash: &request_hash(&(tenant.id, &request)),
                state: &|_| delete::State::new(&tenant, request.clone()),
            })
            .await?;
        self.get_operation(id).await
    }

    pub async fn get_certificate(&self, r: &CertificateRef) -> Result<StoredCertificate> {
        let found = match r {
            CertificateRef::Id(id) => self.registry().find_certificate(*id).await?,
            CertificateRef::Tenant(TenantRef::Id(id)) => {
                self.registry()
                    .certificate_for_tenant(Some(*id), None)
                    .await?
            }
            CertificateRef::Tenant(TenantRef::Slug(slug)) => {
                self.registry()
                    .certificate_for_tenant(None, Some(slug.as_str()))
                    .await?
            }
        };
        found.ok_or_else(|| {
            let name = match r {
                CertificateRef::Id(id) => format!("deletion-certificates/{id}"),
                CertificateRef::Tenant(t) => format!("of tenant {t}"),
            };
            Error::not_found("deletion certificate", name)
        })
    }

    pub async fn list_certificates(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<StoredCertificate>, String)> {
        let limit = paging::page_size(page_size)?;
        let after = paging::decode(page_token, "certificates")?;
        let rows = self.registry().list_certificates(after, limit + 1).await?;
        Ok(paging::finish(rows, limit, "certificates", |c| {
            (c.issued_at, c.id)
        }))
    }
}
