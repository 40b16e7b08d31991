//! The control-plane registry: tenants, data-plane clusters, sealed credentials, operations
//! and their steps, in one PostgreSQL database migrated by `migrations/`.
//!
//! What is stored, and why (see docs/registry.md): only facts that must survive a restart and
//! cannot be recomputed. Container names are derivable from the tenant id but are stored so
//! that a later change of naming never orphans a container. Cluster connection secrets are not
//! stored here: they come from configuration. Credentials for data-plane roles are stored only
//! sealed by the key provider.
//!
//! SQLSTATE handling lives in [`crate::sqlstate`]: it tells which constraint a statement
//! violated, so callers map it to a domain error.

pub mod audit;
pub mod certificates;
pub mod clusters;
pub mod credentials;
pub mod events;
pub mod exports;
pub mod leases;
pub mod logins;
pub mod operations;
pub mod rollouts;
pub mod tenant_schema;
pub mod tenants;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::error::Error;

#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
}

impl Registry {
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|e| Error::Unavailable(format!("registry url: {e}")))?
            .application_name("tenantd")
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to the registry: {e}")))?;
        Ok(Registry { pool })
    }

    /// Applies the registry migrations. Safe to run from several replicas at once: sqlx takes
    /// an advisory lock.
    pub async fn migrate(&self) -> Result<(), Error> {
        sqlx::migrate!("./migrations")
            .run(&self.pool)
            .await
            .map_err(|e| Error::Internal(format!("registry migration failed: {e}")))
    }

    /// Creates `name` on the server behind `admin_url` if it does not exist (for the embedded
    /// default, where tenantd owns the whole server).
    pub async fn create_database_if_missing(
        admin_url: &str,
        name: &crate::sql::Ident,
    ) -> Result<(), Error> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(|e| {
            Error::Unavailable(format!("cannot connect to create the registry: {e}"))
        })?;
        let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(name.as_str())
            .fetch_optional(&mut conn)
            .await?;
        if exists.is_none() {
            sqlx::query(
                crate::sql::Statement::new("CREATE DATABASE ")
                    .ident(name)
                    .into_sql(),
            )
            .execute(&mut conn)
            .await?;
        }
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
