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
pub mod backups;
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

/// The registry and the connections it is reached through. Three pools, so that one kind of
/// load cannot starve another (docs/security.md, "Exhaustion"): `pool` for workflow steps
/// and background tasks, `api` for gRPC calls ([`Registry::for_api`]), and `leases` for
/// nothing but claims, heartbeats and step transitions, sized so that every worker can
/// renew its lease however busy the others are.
#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
    api: PgPool,
    leases: PgPool,
    options: PgConnectOptions,
}

/// How many registry connections each pool may open (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct PoolSizes {
    pub api: u32,
    pub workflow: u32,
    pub leases: u32,
}

impl Default for PoolSizes {
    fn default() -> Self {
        PoolSizes {
            api: 16,
            workflow: 8,
            leases: 5,
        }
    }
}

impl Registry {
    /// Connects with the default pool sizes (tools and tests).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PoolSizes::default()).await
    }

    pub async fn connect_with(url: &str, sizes: PoolSizes) -> Result<Self, Error> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|e| Error::Unavailable(format!("registry url: {e}")))?
            .application_name("tenantd")
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = |max: u32, acquire: Duration| {
            PgPoolOptions::new()
                .max_connections(max.max(1))
                .acquire_timeout(acquire)
                .idle_timeout(Duration::from_secs(300))
        };
        let workflow = pool(sizes.workflow, Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to the registry: {e}")))?;
        Ok(Registry {
            pool: workflow,
            api: pool(sizes.api, Duration::from_secs(10)).connect_lazy_with(options.clone()),
            // A heartbeat that waits for a connection is a lease at risk: fail fast and let
            // the heartbeat loop try again.
            leases: pool(sizes.leases, Duration::from_secs(2)).connect_lazy_with(options.clone()),
            options,
        })
    }

    /// The same registry, its queries on the API pool: what gRPC handlers use.
    pub fn for_api(&self) -> Registry {
        Registry {
            pool: self.api.clone(),
            api: self.api.clone(),
            leases: self.leases.clone(),
            options: self.options.clone(),
        }
    }

    /// A connection outside every pool, for a task that must reach the registry whatever
    /// the pools are doing (the health check).
    pub async fn dedicated_connection(&self) -> Result<sqlx::PgConnection, Error> {
        use sqlx::ConnectOptions as _;
        Ok(self.options.connect().await?)
    }

    /// The pool that claims, heartbeats and step transitions use.
    pub(crate) fn leases(&self) -> &PgPool {
        &self.leases
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
