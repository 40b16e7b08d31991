//! Deletion certificates, stored once and never rewritten: the signed document exactly as
//! handed to compliance staff. Issuing one also leaves the tenant's tombstone and marks its
//! exports deleted, in the same transaction, so a certificate exists exactly when the
//! registry says the tenant is deleted.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::Error;
use crate::registry::Registry;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredCertificate {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub operation_id: Uuid,
    pub tenant_slug: String,
    pub signing_key_id: String,
    pub sha256: String,
    pub document: Vec<u8>,
    pub issued_at: DateTime<Utc>,
}

/// `SELECT` of a [`StoredCertificate`], as a literal so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "SELECT id, tenant_id, operation_id, tenant_slug, signing_key_id, sha256, document, \
         issued_at FROM deletion_certificates"
    };
}

/// Keyset position for listing: (issued_at, id) of the last certificate returned.
pub type CertificateCursor = (DateTime<Utc>, Uuid);

/// What [`Registry::issue_certificate`] stores.
pub struct NewCertificate<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub operation_id: Uuid,
    pub tenant_slug: &'a str,
    pub signing_key_id: &'a str,
    pub document: &'a [u8],
    pub issued_at: DateTime<Utc>,
}

impl Registry {
    /// Stores the certificate, leaves the tenant's tombstone, marks its exports deleted and
    /// drops its own backup policy, in one transaction. A retried step keeps the certificate
    /// issued first.
    pub async fn issue_certificate(&self, c: &NewCertificate<'_>) -> Result<(), Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO deletion_certificates
                 (id, tenant_id, operation_id, tenant_slug, signing_key_id, sha256, document,
                  issued_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (operation_id) DO NOTHING",
        )
        .bind(c.id)
        .bind(c.tenant_id)
        .bind(c.operation_id)
        .bind(c.tenant_slug)
        .bind(c.signing_key_id)
        .bind(hex::encode(Sha256::digest(c.document)))
        .bind(c.document)
        .bind(c.issued_at)
        .execute(&mut *tx)
        .await?;
        Registry::tombstone_tenant(&mut *tx, c.tenant_id).await?;
        Registry::delete_exports(&mut *tx, c.tenant_id).await?;
        Registry::drop_tenant_backup_policy(&mut *tx, c.tenant_id).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn find_certificate(&self, id: Uuid) -> Result<Option<StoredCertificate>, Error> {
        Ok(sqlx::query_as(concat!(columns!(), " WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The certificate of a deleted tenant, by tenant id, or the latest for a slug (a slug
    /// may be reused after a deletion).
    pub async fn certificate_for_tenant(
        &self,
        tenant_id: Option<Uuid>,
        slug: Option<&str>,
    ) -> Result<Option<StoredCertificate>, Error> {
        Ok(sqlx::query_as(concat!(
            columns!(),
            " WHERE tenant_id = $1 OR tenant_slug = $2 ORDER BY issued_at DESC, id DESC LIMIT 1"
        ))
        .bind(tenant_id)
        .bind(slug)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn certificate_of_operation(
        &self,
        operation_id: Uuid,
    ) -> Result<Option<StoredCertificate>, Error> {
        Ok(
            sqlx::query_as(concat!(columns!(), " WHERE operation_id = $1"))
                .bind(operation_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Certificates in issue order, after `after`, at most `limit`.
    pub async fn list_certificates(
        &self,
        after: Option<CertificateCursor>,
        limit: i64,
    ) -> Result<Vec<StoredCertificate>, Error> {
        let (t, id) = after.unzip();
        Ok(sqlx::query_as(concat!(
            columns!(),
            " WHERE $1::timestamptz IS NULL OR (issued_at, id) > ($1, $2) \
              ORDER BY issued_at, id LIMIT $3"
        ))
        .bind(t)
        .bind(id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
