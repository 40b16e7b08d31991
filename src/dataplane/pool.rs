//! Pool tier: every pool tenant's rows live in shared tables in the `pool` schema of the
//! cluster's shared database, told apart by `tenant_id` and isolated by forced row-level
//! security. The application role `tenantd_pool_app` is neither owner nor BYPASSRLS, so a
//! session sees only the rows of the tenant in `app.tenant_id`, and none when it is unset.

use async_trait::async_trait;

use super::{Cluster, Container, DataPlaneError, TierBackend, erasure, tables};
use crate::sql::Ident;

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

    fn shares_tables(&self) -> bool {
        true
    }

    /// Deletes the tenant's rows, children first, in short batches so that the other tenants
    /// sharing these tables are never blocked for long. Its fence row stays, as a tombstone:
    /// a session still on the old route (a backend that sets `app.tenant_id` for many
    /// tenants) gets TF001 on every write here, forever, instead of leaving a row the tenant
    /// no longer sees. A later move back into this pool fences it again and lifts the fence
    /// when routing points here.
    async fn drop_container(&self, cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError> {
        // None when the pool schema does not exist yet (provisioning failed that early).
        let pool = cluster.database(&c.database);
        for table in tables::tenant_tables(cluster, &pool, &c.schema)
            .await?
            .iter()
            .rev()
        {
            erasure::delete_rows(
                cluster,
                &c.database,
                &c.schema,
                table,
                c.tenant_id,
                erasure::BACKGROUND,
            )
            .await?;
        }
        Ok(())
    }
}
