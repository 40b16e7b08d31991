//! Schema tier: the tenant's tables live in its own schema `t_<id>` in the cluster's shared
//! database, reached through its own role (issued logins are its members), which has USAGE on
//! that schema only. Row-level security stays on as defence in depth; the role's
//! `app.tenant_id` is preset.

use async_trait::async_trait;

use super::{Cluster, Container, DataPlaneError, TierBackend};

pub struct SchemaTier;

#[async_trait]
impl TierBackend for SchemaTier {
    fn own_login_role(&self) -> bool {
        true
    }

    /// Drops the schema with everything in it (tables, rows, fence).
    async fn drop_container(&self, cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError> {
        cluster.drop_schema(&c.database, &c.schema).await
    }
}
