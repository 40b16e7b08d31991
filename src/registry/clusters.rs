//! Data-plane clusters as the registry knows them. Configuration is the source of truth for
//! how to connect; the registry keeps a row per cluster so tenants can reference it and so
//! that removing a cluster that still holds tenants is refused by a foreign key.

use crate::error::Error;
use crate::registry::Registry;

pub struct ClusterRow {
    pub name: String,
    pub host: String,
    pub port: i32,
    pub shared_database: String,
}

impl Registry {
    /// Upserts a cluster from configuration.
    pub async fn sync_cluster(&self, c: &ClusterRow) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO clusters (name, host, port, shared_database) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE
             SET host = excluded.host, port = excluded.port,
                 shared_database = excluded.shared_database, updated_at = now()",
        )
        .bind(&c.name)
        .bind(&c.host)
        .bind(c.port)
        .bind(&c.shared_database)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
