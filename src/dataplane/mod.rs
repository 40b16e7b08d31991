//! The data plane: the PostgreSQL clusters that hold tenant data, and what each isolation
//! tier does to create, grant and destroy a tenant's container.
//!
//! Connections: one lazily-connected admin pool per cluster (cluster-wide DDL: databases,
//! roles) and one small lazy pool per database we touch. Nothing here connects at start-up, so
//! the service starts while a cluster is down and its operations retry.
//!
//! Every statement that names an object is built by [`crate::sql`]; tenant values are bound.

pub mod advice;
pub mod catalog;
pub mod changes;
pub mod conventions;
pub mod copy;
pub mod database;
pub mod ddl;
pub mod deferred;
pub mod dump;
pub mod erasure;
pub mod fence;
pub mod isolation;
pub mod load;
pub mod logins;
pub mod pool;
pub mod references;
pub mod roles;
pub mod schema;
pub mod staging;
pub mod tables;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

use crate::config::{ClusterConfig, redact_url};
use crate::sql::{Ident, InvalidIdent, InvalidLiteral, Statement};
use crate::tenant::{ContainerNames, Placement, Tier};
use crate::tenant_schema::{SchemaHandle, TenantSchema};

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    #[error("cluster {cluster}: {source}")]
    Sql {
        cluster: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Ident(#[from] InvalidIdent),
    #[error(transparent)]
    Literal(#[from] InvalidLiteral),
    #[error("{0}")]
    Invariant(String),
    /// The data plane is not in a state the operation can proceed from.
    #[error("{0}")]
    Precondition(String),
}

impl DataPlaneError {
    /// Worth retrying: the statement failed for a reason that passes (see
    /// [`crate::sqlstate::Class::Transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, DataPlaneError::Sql { source, .. } if crate::sqlstate::is_transient(source))
    }
}

/// A CREATE that found its object already there, or lost a race with another creator on the
/// catalog's unique index, converged: treat it as success.
pub(crate) fn converged(created: Result<(), DataPlaneError>) -> Result<(), DataPlaneError> {
    match created {
        Err(DataPlaneError::Sql { source, .. }) if crate::sqlstate::is_already_created(&source) => {
            Ok(())
        }
        other => other,
    }
}

/// Names read from a catalog, as validated identifiers.
pub(crate) fn idents(names: Vec<(String,)>) -> Result<Vec<Ident>, DataPlaneError> {
    names
        .into_iter()
        .map(|(n,)| Ident::new(n).map_err(DataPlaneError::from))
        .collect()
}

/// The object a statement named no longer exists (database, schema or table), e.g. dropped
/// by another tenant's operation while a scan ran.
pub fn is_gone(e: &sqlx::Error) -> bool {
    crate::sqlstate::classify(e) == crate::sqlstate::Class::Gone
}

/// One data-plane PostgreSQL server.
pub struct Cluster {
    pub name: String,
    pub public_host: String,
    pub public_port: u16,
    pub shared_database: Ident,
    /// The tenant schema every container here is migrated with (the registry's versions).
    tenant_schema: SchemaHandle,
    base: PgConnectOptions,
    admin: PgPool,
    databases: Mutex<HashMap<String, PgPool>>,
    /// Connections each pool here may open (`[limits] cluster_connections`).
    connections: u32,
    /// How this server prints tenantd's policies ([`isolation::canonical`]).
    canonical_policy: tokio::sync::OnceCell<isolation::Canonical>,
}

impl Cluster {
    fn new(
        c: &ClusterConfig,
        tenant_schema: SchemaHandle,
        connections: u32,
    ) -> Result<Self, String> {
        let connections = connections.max(1);
        let base: PgConnectOptions = c
            .admin_url
            .parse::<PgConnectOptions>()
            .map_err(|e| {
                format!(
                    "cluster {}: bad admin_url {}: {e}",
                    c.name,
                    redact_url(&c.admin_url)
                )
            })?
            .application_name("tenantd")
            // Fail closed: tenantd reads and deletes a tenant's rows as the admin, who must
            // bypass row-level security. Were it an admin without BYPASSRLS, RLS would filter
            // silently: a copy that verifies empty, a scan that certifies a deletion of nothing.
            // With row_security off, such a statement is an error instead.
            .options([("row_security", "off")])
            .log_statements(tracing::log::LevelFilter::Trace);
        let admin = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(base.clone());
        Ok(Cluster {
            name: c.name.clone(),
            public_host: c
                .public_host
                .clone()
                .unwrap_or_else(|| base.get_host().to_owned()),
            public_port: c.public_port.unwrap_or_else(|| base.get_port()),
            shared_database: Ident::new(c.shared_database.clone()).map_err(|e| e.to_string())?,
            tenant_schema,
            base,
            admin,
            databases: Mutex::new(HashMap::new()),
            connections,
            canonical_policy: tokio::sync::OnceCell::new(),
        })
    }

    /// A cluster outside the configuration, reached at `c.admin_url` with a few
    /// connections: a side cluster restored from a backup that one tenant is read from.
    pub fn detached(c: &ClusterConfig, tenant_schema: Arc<TenantSchema>) -> Result<Self, String> {
        Cluster::new(c, SchemaHandle::new((*tenant_schema).clone()), 4)
    }

    /// The tenant schema containers on this cluster are migrated with.
    pub fn tenant_schema(&self) -> Arc<TenantSchema> {
        self.tenant_schema.current()
    }

    /// Whether the admin role may set `session_replication_role` (a superuser, or `GRANT SET
    /// ON PARAMETER`), which loads rows as a replica would: without firing triggers, foreign
    /// keys included. False also when asking fails.
    pub async fn may_skip_triggers(&self) -> bool {
        let may: Result<(bool,), _> = sqlx::query_as(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                 OR has_parameter_privilege('session_replication_role', 'SET')",
        )
        .fetch_one(&self.admin)
        .await;
        matches!(may, Ok((true,)))
    }

    /// Whether the admin role is exempt from row-level security (a superuser, or BYPASSRLS):
    /// `COPY … FROM` into a table with forced row security (the pool's) needs it. False also
    /// when asking fails.
    pub async fn bypasses_row_security(&self) -> bool {
        let may: Result<(bool,), _> = sqlx::query_as(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&self.admin)
        .await;
        matches!(may, Ok((true,)))
    }

    /// Pool on the admin URL's database, for cluster-wide statements.
    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    /// Pool on `database`, created on first use.
    pub fn database(&self, database: &Ident) -> PgPool {
        let mut dbs = self.databases.lock().expect("database pool map");
        dbs.entry(database.as_str().to_owned())
            .or_insert_with(|| {
                PgPoolOptions::new()
                    .max_connections(self.connections)
                    .min_connections(0)
                    .idle_timeout(Duration::from_secs(60))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(self.base.clone().database(database.as_str()))
            })
            .clone()
    }

    /// A connection of its own to `database` (`None`: the database does not exist), for
    /// one-off work across many databases, such as a scan, that should not keep a pool for
    /// each.
    pub async fn connect_once(
        &self,
        database: &Ident,
    ) -> Result<Option<sqlx::PgConnection>, DataPlaneError> {
        match self
            .base
            .clone()
            .database(database.as_str())
            .connect()
            .await
        {
            Ok(conn) => Ok(Some(conn)),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Closes our connections to `database` (before it is dropped).
    pub async fn forget_database(&self, database: &Ident) {
        let pool = self
            .databases
            .lock()
            .expect("database pool map")
            .remove(database.as_str());
        if let Some(pool) = pool {
            pool.close().await;
        }
    }

    pub fn err(&self, source: sqlx::Error) -> DataPlaneError {
        DataPlaneError::Sql {
            cluster: self.name.clone(),
            source,
        }
    }

    /// Runs one statement built by [`crate::sql`].
    pub async fn exec(&self, pool: &PgPool, stmt: Statement) -> Result<(), DataPlaneError> {
        sqlx::query(stmt.into_sql())
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub async fn database_exists(&self, database: &Ident) -> Result<bool, DataPlaneError> {
        let (exists,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database.as_str())
                .fetch_one(&self.admin)
                .await
                .map_err(|e| self.err(e))?;
        Ok(exists)
    }

    /// Runs `stmt` in `c`'s database with `$1` bound to the tenant id; returns the rows
    /// affected.
    pub async fn exec_for_tenant(
        &self,
        c: &Container,
        stmt: Statement,
    ) -> Result<u64, DataPlaneError> {
        sqlx::query(stmt.into_sql())
            .bind(c.tenant_id)
            .execute(&self.database(&c.database))
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| self.err(e))
    }

    /// Creates `database` if it does not exist and closes it to PUBLIC. Concurrent callers
    /// converge: a duplicate from a racing CREATE DATABASE counts as success.
    pub async fn ensure_database(&self, database: &Ident) -> Result<(), DataPlaneError> {
        if !self.database_exists(database).await? {
            let created = self
                .exec(
                    &self.admin,
                    Statement::new("CREATE DATABASE ").ident(database),
                )
                .await;
            converged(created)?;
        }
        self.close_to_public(database).await?;
        // PostgreSQL 15 no longer lets PUBLIC create in `public`; older servers did.
        let db = self.database(database);
        let (public_schema,): (bool,) = sqlx::query_as(
            "SELECT coalesce((SELECT has_schema_privilege('public', oid, 'CREATE')
                                  OR has_schema_privilege('public', oid, 'USAGE')
                              FROM pg_namespace WHERE nspname = 'public'), false)",
        )
        .fetch_one(&db)
        .await
        .map_err(|e| self.err(e))?;
        if public_schema {
            self.exec(
                &db,
                Statement::new("REVOKE ALL ON SCHEMA public FROM PUBLIC"),
            )
            .await?;
        }
        Ok(())
    }

    /// Takes CONNECT and TEMPORARY on `database` away from PUBLIC, keeping them for our own
    /// admin role (which may have had them only through PUBLIC). Only what PUBLIC still holds
    /// is revoked, so a repeated call writes nothing (the shared database is "ensured" by every
    /// provisioning).
    pub async fn close_to_public(&self, database: &Ident) -> Result<(), DataPlaneError> {
        let (public_db,): (bool,) = sqlx::query_as(
            "SELECT has_database_privilege('public', $1, 'CONNECT')
                 OR has_database_privilege('public', $1, 'TEMPORARY')",
        )
        .bind(database.as_str())
        .fetch_one(&self.admin)
        .await
        .map_err(|e| self.err(e))?;
        if public_db {
            let on = || Statement::new(" ON DATABASE ").ident(database);
            self.exec_all_serialised(
                &self.admin,
                &Self::database_acl_lock(database),
                vec![
                    Statement::new("GRANT CONNECT, TEMPORARY")
                        .append(on())
                        .push(" TO CURRENT_USER"),
                    Statement::new("REVOKE CONNECT, TEMPORARY")
                        .append(on())
                        .push(" FROM PUBLIC"),
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// Closes the databases that hold no tenant data to PUBLIC — `postgres`, `template1`, the
    /// admin URL's and `also` (the registry's, when it lives on this cluster) — so that a
    /// tenant's login can neither connect to them nor create anything there (a large object
    /// it would own, blocking its deletion). Run at start-up; idempotent.
    pub async fn close_maintenance_databases(
        &self,
        also: Option<&str>,
    ) -> Result<(), DataPlaneError> {
        let mut names = vec!["postgres".to_owned(), "template1".to_owned()];
        names.push(self.base.get_database().unwrap_or("postgres").to_owned());
        names.extend(also.map(str::to_owned));
        names.sort();
        names.dedup();
        for name in names {
            let db = Ident::new(name)?;
            if self.database_exists(&db).await? {
                self.close_to_public(&db).await?;
            }
        }
        Ok(())
    }

    /// Whether a PostgreSQL URL names this cluster's server (same host and port).
    pub fn serves(&self, url: &PgConnectOptions) -> bool {
        url.get_host() == self.base.get_host() && url.get_port() == self.base.get_port()
    }

    /// Creates `schema` in `database` if missing. Serialised by an advisory lock, because two
    /// concurrent `CREATE SCHEMA IF NOT EXISTS` can still collide on the catalog.
    pub async fn ensure_schema(
        &self,
        database: &Ident,
        schema: &Ident,
    ) -> Result<(), DataPlaneError> {
        if self.schema_exists(database, schema).await? {
            return Ok(());
        }
        let pool = self.database(database);
        self.exec_serialised(
            &pool,
            &format!("tenantd:schema:{}", schema.as_str()),
            Statement::new("CREATE SCHEMA IF NOT EXISTS ").ident(schema),
        )
        .await
    }

    /// Whether `schema` exists in `database` (false if the database does not).
    pub async fn schema_exists(
        &self,
        database: &Ident,
        schema: &Ident,
    ) -> Result<bool, DataPlaneError> {
        if !self.database_exists(database).await? {
            return Ok(false);
        }
        let (exists,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema.as_str())
                .fetch_one(&self.database(database))
                .await
                .map_err(|e| self.err(e))?;
        Ok(exists)
    }

    /// Drops `schema` in `database` with everything in it, if both exist. Idempotent.
    pub async fn drop_schema(
        &self,
        database: &Ident,
        schema: &Ident,
    ) -> Result<(), DataPlaneError> {
        if !self.database_exists(database).await? {
            return Ok(());
        }
        self.exec(
            &self.database(database),
            Statement::new("DROP SCHEMA IF EXISTS ")
                .ident(schema)
                .push(" CASCADE"),
        )
        .await
    }

    /// Runs one statement under a transaction-scoped advisory lock named `lock`, so that
    /// concurrent operations changing the same catalog row (a shared database's or schema's
    /// ACL, a schema's existence) take turns instead of failing with "tuple concurrently
    /// updated" and costing a step retry.
    pub async fn exec_serialised(
        &self,
        pool: &PgPool,
        lock: &str,
        stmt: Statement,
    ) -> Result<(), DataPlaneError> {
        self.exec_all_serialised(pool, lock, vec![stmt]).await
    }

    /// [`Self::exec_serialised`] for several statements, in one transaction (one commit).
    pub async fn exec_all_serialised(
        &self,
        pool: &PgPool,
        lock: &str,
        stmts: Vec<Statement>,
    ) -> Result<(), DataPlaneError> {
        let mut tx = pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(lock)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        for stmt in stmts {
            sqlx::query(stmt.into_sql())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// The lock name serialising changes to `database`'s ACL (see [`Self::exec_serialised`]).
    pub fn database_acl_lock(database: &Ident) -> String {
        format!("tenantd:database-acl:{}", database.as_str())
    }
}

/// All configured clusters.
pub struct DataPlane {
    clusters: HashMap<String, Cluster>,
    tenant_schema: SchemaHandle,
}

impl DataPlane {
    /// The clusters of `configs`, whose containers are migrated with `tenant_schema`, with
    /// the default pool size.
    pub fn new(
        configs: &[ClusterConfig],
        tenant_schema: Arc<TenantSchema>,
    ) -> Result<Self, String> {
        let default = crate::config::LimitsConfig::default().cluster_connections;
        Self::with_connections(configs, tenant_schema, default)
    }

    /// As [`DataPlane::new`], each pool opening up to `connections`.
    pub fn with_connections(
        configs: &[ClusterConfig],
        tenant_schema: Arc<TenantSchema>,
        connections: u32,
    ) -> Result<Self, String> {
        let tenant_schema = SchemaHandle::new((*tenant_schema).clone());
        let clusters = configs
            .iter()
            .map(|c| {
                let cluster = Cluster::new(c, tenant_schema.clone(), connections)?;
                Ok((c.name.clone(), cluster))
            })
            .collect::<Result<_, String>>()?;
        Ok(DataPlane {
            clusters,
            tenant_schema,
        })
    }

    /// The tenant schema, every version this process knows (as the registry holds them).
    pub fn tenant_schema(&self) -> Arc<TenantSchema> {
        self.tenant_schema.current()
    }

    /// Learns versions another replica recorded since this one started.
    pub fn grow_tenant_schema(&self, schema: TenantSchema) {
        self.tenant_schema.grow(schema)
    }

    pub fn cluster(&self, name: &str) -> Result<&Cluster, DataPlaneError> {
        self.clusters
            .get(name)
            .ok_or_else(|| DataPlaneError::UnknownCluster(name.to_owned()))
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.values()
    }

    /// The container a tenant of `tier` gets on cluster `name`, with that cluster.
    pub fn plan(
        &self,
        tenant_id: Uuid,
        tier: Tier,
        name: &str,
    ) -> Result<(&Cluster, Container), DataPlaneError> {
        let cluster = self.cluster(name)?;
        Ok((cluster, Container::plan(tenant_id, tier, cluster)))
    }
}

/// Where one tenant's container is, in validated identifiers.
#[derive(Debug, Clone)]
pub struct Container {
    pub tenant_id: Uuid,
    pub tier: Tier,
    pub cluster: String,
    pub database: Ident,
    pub schema: Ident,
    /// The application role that reaches the data (shared in the pool tier).
    pub role: Ident,
}

impl Container {
    /// Whether other tenants' rows share this container's tables: the pool itself, not a
    /// container beside it (a restore's staging schema, a drill's scratch) of a pool tenant.
    pub fn shares_tables(&self) -> bool {
        backend(self.tier).shares_tables() && self.schema == pool::schema()
    }

    /// The container a tenant of `tier` gets on `cluster`. Names derive from the tenant id.
    pub fn plan(tenant_id: Uuid, tier: Tier, cluster: &Cluster) -> Container {
        let own = ContainerNames::for_tenant(tenant_id).own;
        let (database, schema, role) = match tier {
            Tier::Pool => (
                cluster.shared_database.clone(),
                pool::schema(),
                pool::app_role(),
            ),
            Tier::Schema => (cluster.shared_database.clone(), own.clone(), own),
            Tier::Database => (own.clone(), database::schema(), own),
        };
        Container {
            tenant_id,
            tier,
            cluster: cluster.name.clone(),
            database,
            schema,
            role,
        }
    }

    /// Rebuilds the container from a registry placement, re-validating every name.
    pub fn from_placement(
        tenant_id: Uuid,
        tier: Tier,
        p: &Placement,
    ) -> Result<Container, DataPlaneError> {
        let name = |v: &Option<String>, what: &str| {
            v.clone()
                .ok_or_else(|| {
                    DataPlaneError::Invariant(format!("tenant {tenant_id} has no {what}"))
                })
                .and_then(|s| Ok(Ident::new(s)?))
        };
        Ok(Container {
            tenant_id,
            tier,
            cluster: p.cluster.clone(),
            database: name(&p.database, "database")?,
            schema: name(&p.schema, "schema")?,
            role: name(&p.role, "role")?,
        })
    }

    pub fn placement(&self) -> Placement {
        Placement {
            cluster: self.cluster.clone(),
            database: Some(self.database.as_str().to_owned()),
            schema: Some(self.schema.as_str().to_owned()),
            role: Some(self.role.as_str().to_owned()),
        }
    }
}

/// What differs between isolation tiers: whether the tenant has its own role, and how
/// its container is dropped. Creating, migrating, granting and seeding are the same shape in
/// every tier once the [`Container`] says where things go.
#[async_trait]
pub trait TierBackend: Send + Sync {
    /// Whether the tier gives the tenant its own role (the pool's is shared).
    fn own_login_role(&self) -> bool;

    /// Whether the tier's tables hold other tenants' rows too (the pool's): then the
    /// tenant's rows are deleted, never truncated, and its keys and indexes are never set
    /// aside for a bulk load ([`deferred`]).
    fn shares_tables(&self) -> bool {
        false
    }

    /// Removes the tenant's rows and container in this tier, and its fence there; not its
    /// role. Idempotent, from any partial state.
    async fn drop_container(&self, cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError>;

    /// Removes everything the tenant has in this tier. With `keep_role` the role survives
    /// (another container of the tenant on this cluster uses it) and only loses its access to
    /// this container's database.
    async fn destroy(
        &self,
        cluster: &Cluster,
        c: &Container,
        keep_role: bool,
    ) -> Result<(), DataPlaneError> {
        self.drop_container(cluster, c).await?;
        if !self.own_login_role() {
            return Ok(());
        }
        if keep_role {
            roles::revoke_database(cluster, &c.role, &c.database).await
        } else {
            roles::drop_role(cluster, &c.role, &[&c.database]).await
        }
    }

    /// Creates the container (database and schema) if it does not exist.
    async fn create(&self, cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError> {
        cluster.ensure_database(&c.database).await?;
        cluster.ensure_schema(&c.database, &c.schema).await
    }

    /// Creates the application role if needed (a group role: it never logs in) and grants it
    /// exactly what it needs in `c`. A tenant's own role ([`Self::own_login_role`]) also gets
    /// its search_path (`search_path`: `c`'s schema, or the name a staged copy will take) and
    /// tenant id preset in the container's database.
    async fn grant(
        &self,
        cluster: &Cluster,
        c: &Container,
        search_path: &Ident,
    ) -> Result<(), DataPlaneError> {
        roles::grant_access(cluster, c).await?;
        if self.own_login_role() {
            roles::set_role_defaults(cluster, &c.role, &c.database, search_path, c.tenant_id)
                .await?;
        }
        Ok(())
    }
}

/// Splits `items` in two lanes of about equal total `weight` (largest first, each to the
/// lighter lane), for work done on two connections at once.
pub fn two_lanes<T>(mut items: Vec<T>, weight: impl Fn(&T) -> u64) -> [Vec<T>; 2] {
    items.sort_by_key(|i| std::cmp::Reverse(weight(i)));
    let (mut lanes, mut load) = ([Vec::new(), Vec::new()], [0u64, 0u64]);
    for item in items {
        let lane = usize::from(load[1] < load[0]);
        load[lane] += weight(&item).max(1);
        lanes[lane].push(item);
    }
    lanes
}

pub fn backend(tier: Tier) -> &'static dyn TierBackend {
    match tier {
        Tier::Pool => &pool::PoolTier,
        Tier::Schema => &schema::SchemaTier,
        Tier::Database => &database::DatabaseTier,
    }
}

#[cfg(test)]
mod tests {
    use super::two_lanes;

    #[test]
    fn two_lanes_balance_weight_largest_first() {
        let [a, b] = two_lanes(vec![("s", 1), ("xl", 300), ("m", 100), ("l", 250)], |i| i.1);
        assert_eq!(a, [("xl", 300), ("s", 1)]);
        assert_eq!(b, [("l", 250), ("m", 100)]);
        let [a, b] = two_lanes(Vec::<u64>::new(), |w| *w);
        assert!(a.is_empty() && b.is_empty());
    }
}
