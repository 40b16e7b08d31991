//! Database tier: the tenant gets its own database `t_<id>` (on any configured cluster), with
//! its tables in schema `app`, and its own role (issued logins are its members), the only
//! non-superuser allowed to connect. Row-level security stays on as defence in depth.

use async_trait::async_trait;

use super::{Cluster, Container, DataPlaneError, TierBackend};
use crate::sql::{Ident, Statement};

pub fn schema() -> Ident {
    Ident::from_static("app")
}

pub struct DatabaseTier;

#[async_trait]
impl TierBackend for DatabaseTier {
    fn own_login_role(&self) -> bool {
        true
    }

    /// Drops the database, forcing any session off.
    async fn drop_container(&self, cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError> {
        cluster.forget_database(&c.database).await;
        cluster
            .exec(
                cluster.admin(),
                Statement::new("DROP DATABASE IF EXISTS ")
                    .ident(&c.database)
                    .push(" WITH (FORCE)"),
            )
            .await
    }
}
