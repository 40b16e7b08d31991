//! Sealed data-plane passwords that builds before issued logins kept for tenant roles (see
//! [`crate::credentials`]): nothing writes them any more; a tier change away from an own
//! role and a deletion remove a tenant's rows.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::Error;
use crate::registry::Registry;

impl Registry {
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
