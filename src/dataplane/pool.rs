//! Pool tier: every pool tenant's rows live in shared tables in the `pool` schema of the
//! cluster's shared database, told apart by `tenant_id` and isolated by forced row-level
//! security. The application role `tenantd_pool_app` is neither owner nor BYPASSRLS, so a
//! session sees only the rows of the tenant in `app.tenant_id`, and none when it is unset.

use async_trait::async_trait;

use super::{Cluster, Container, DataPlaneError, TierBackend, catalog};
use crate::sql::{Ident, Statement};

pub fn schema() -> Ident {
    Ident::from_static("pool")
}

pub fn app_role() -> Ident {
    Ident::from_static("tenantd_pool_app")
}

pub struct PoolTier;

#[async_trait]
impl TierBackend for PoolTier {
    fn own_login_role(&self) -> bool {
        false
    }

    /// Deletes the tenant's rows, children first, in one transaction. Used to roll back a
    /// provisioning, when the tenant holds only its reference data.
    async fn destroy(&self, cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError> {
        let pool = cluster.database(&c.database);
        let mut tx = pool.begin().await.map_err(|e| cluster.err(e))?;
        for table in catalog::tables().rev() {
            // The pool schema may not exist yet if provisioning failed that early.
            let stmt = Statement::new("DELETE FROM ")
                .qualified(&c.schema, &table)
                .push(" WHERE tenant_id = $1");
            let exists: Option<(i32,)> =
                sqlx::query_as("SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2")
                    .bind(c.schema.as_str())
                    .bind(table.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| cluster.err(e))?;
            if exists.is_some() {
                sqlx::query(stmt.into_sql())
                    .bind(c.tenant_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| cluster.err(e))?;
            }
        }
        tx.commit().await.map_err(|e| cluster.err(e))
    }
}
