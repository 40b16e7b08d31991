//! Sealed data-plane credentials. The registry never holds a password in clear: the key
//! provider seals it with an encryption context naming the tenant and role.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::Error;
use crate::keys::Sealed;
use crate::registry::Registry;

impl Registry {
    pub async fn put_credential(
        &self,
        tenant_id: Uuid,
        role: &str,
        sealed: &Sealed,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO tenant_credentials (tenant_id, role_name, key_id, sealed)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, role_name) DO UPDATE
             SET key_id = excluded.key_id, sealed = excluded.sealed, updated_at = now()",
        )
        .bind(tenant_id)
        .bind(role)
        .bind(&sealed.key_id)
        .bind(&sealed.ciphertext)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn get_credential(
        &self,
        tenant_id: Uuid,
        role: &str,
    ) -> Result<Option<Sealed>, Error> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, sealed FROM tenant_credentials WHERE tenant_id = $1 AND role_name = $2",
        )
        .bind(tenant_id)
        .bind(role)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(key_id, ciphertext)| Sealed { key_id, ciphertext }))
    }

    pub async fn delete_credentials<'e>(
        exec: impl PgExecutor<'e>,
        tenant_id: Uuid,
    ) -> Result<(), Error> {
        sqlx::query("DELETE FROM tenant_credentials WHERE tenant_id = $1")
            .bind(tenant_id)
            .execute(exec)
            .await?;
        Ok(())
    }
}
