//! The migrator that brings one container (the pool schema, a tenant schema, or the schema in
//! a tenant database) to a version of the tenant schema ([`crate::tenant_schema`], as the
//! registry holds it), the seed a new container gets, and the grants on its tables. Which
//! tables a container holds is read from its catalog ([`super::tables`]).
//!
//! Each container records what it has applied in `tenant_schema_migrations`, with a checksum
//! of each file, so a container migrated by a different build is detected, not silently
//! diverged. A migration runs in one transaction under an advisory lock for that container,
//! with a lock timeout so a busy container fails (and is retried) instead of stalling.

use sqlx::PgPool;
use uuid::Uuid;

use super::{Cluster, DataPlaneError};
use crate::sql::{Ident, Statement};

/// The table in each container that records the migrations applied to it.
pub const BOOKKEEPING: &str = "tenant_schema_migrations";

/// The tenant-schema version `schema` in the database behind `pool` is at (0 if none).
pub async fn current_version(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
) -> Result<i32, DataPlaneError> {
    let (exists,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)",
    )
    .bind(schema.as_str())
    .bind(BOOKKEEPING)
    .fetch_one(pool)
    .await
    .map_err(|e| cluster.err(e))?;
    if !exists {
        return Ok(0);
    }
    let stmt = Statement::new("SELECT coalesce(max(version), 0) FROM ")
        .qualified(schema, &Ident::from_static(BOOKKEEPING));
    let (version,): (i32,) = sqlx::query_as(stmt.into_sql())
        .fetch_one(pool)
        .await
        .map_err(|e| cluster.err(e))?;
    Ok(version)
}

/// How [`migrate_with`] treats a container.
#[derive(Debug, Clone, Copy)]
pub struct MigrateOptions {
    /// How long any lock (the container's migration lock, a table lock) may be waited for
    /// before the migration fails with a retryable error, rolled back whole.
    pub lock_timeout: std::time::Duration,
    /// Whether a container already past the target is fine (the shared pool, which another
    /// tenant's workflow may have moved on) rather than an error.
    pub newer_ok: bool,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            lock_timeout: std::time::Duration::from_secs(10),
            newer_ok: false,
        }
    }
}

/// Brings `schema` in the database behind `pool` to `target` and returns the version it is at.
pub async fn migrate(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
    target: i32,
) -> Result<i32, DataPlaneError> {
    migrate_with(cluster, pool, schema, target, MigrateOptions::default()).await
}

/// [`migrate`], with the lock timeout and the treatment of a newer container chosen.
pub async fn migrate_with(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
    target: i32,
    options: MigrateOptions,
) -> Result<i32, DataPlaneError> {
    let known = cluster.tenant_schema();
    if target > known.latest() {
        return Err(DataPlaneError::Invariant(format!(
            "tenant-schema version {target} is not known to this tenantd (latest {})",
            known.latest()
        )));
    }
    let err = |e| cluster.err(e);
    let mut tx = pool.begin().await.map_err(err)?;
    lock_container(cluster, &mut tx, schema, options.lock_timeout).await?;
    let set_path = Statement::new("SET LOCAL search_path TO ").ident(schema);
    sqlx::query(set_path.into_sql())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    let bookkeeping = Ident::from_static(BOOKKEEPING);
    let create = Statement::new("CREATE TABLE IF NOT EXISTS ")
        .qualified(schema, &bookkeeping)
        .push(
            " (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        );
    sqlx::query(create.into_sql())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    let select = Statement::new("SELECT version, checksum FROM ")
        .qualified(schema, &bookkeeping)
        .push(" ORDER BY version");
    let applied: Vec<(i32, String)> = sqlx::query_as(select.into_sql())
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
    for (version, sum) in &applied {
        match known.get(*version) {
            None => {
                return Err(DataPlaneError::Invariant(format!(
                    "{} is at tenant-schema version {version}, which this tenantd does not know",
                    schema.as_str()
                )));
            }
            Some(m) if m.sha256() != *sum => {
                return Err(DataPlaneError::Invariant(format!(
                    "{}: migration {version} was applied from a different file",
                    schema.as_str()
                )));
            }
            Some(_) => {}
        }
    }
    let current = applied.last().map_or(0, |a| a.0);
    if current > target && options.newer_ok {
        return Ok(current);
    }
    if current > target {
        return Err(DataPlaneError::Invariant(format!(
            "{} is at version {current}, newer than the target {target}",
            schema.as_str()
        )));
    }
    for m in known
        .migrations()
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        sqlx::raw_sql(Statement::new("").trusted_file(&m.sql).into_sql())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let record = Statement::new("INSERT INTO ")
            .qualified(schema, &bookkeeping)
            .push(" (version, name, checksum) VALUES ($1, $2, $3)");
        sqlx::query(record.into_sql())
            .bind(m.version)
            .bind(&m.name)
            .bind(m.sha256())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    // tenantd's own RLS, policy and write fence on every table, including what these
    // versions added, before anyone else sees them.
    let secured = super::isolation::ensure(cluster, &mut tx, schema).await?;
    tx.commit().await.map_err(err)?;
    if target > current || secured {
        regrant(cluster, pool, schema).await?;
    }
    Ok(target.max(current))
}

/// Takes the container's migration lock on `conn` (in a transaction, released at its end),
/// waiting at most `lock_timeout`, which also bounds every later lock in the transaction.
pub(super) async fn lock_container(
    cluster: &Cluster,
    conn: &mut sqlx::PgConnection,
    schema: &Ident,
    lock_timeout: std::time::Duration,
) -> Result<(), DataPlaneError> {
    let err = |e| cluster.err(e);
    // Before the first lock, so that waiting for another migration of this container is
    // bounded too.
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", lock_timeout.as_millis().max(1)))
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("tenantd:migrate:{}", schema.as_str()))
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    Ok(())
}

/// After new versions, the roles that already reach the container (USAGE on its schema:
/// the pool role, a tenant's own role) get the same access to the tables those versions
/// added. Idempotent, and nothing is written for a role that already holds it all.
pub(super) async fn regrant(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
) -> Result<(), DataPlaneError> {
    let roles: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT r.rolname::text
         FROM pg_namespace n, aclexplode(n.nspacl) a JOIN pg_roles r ON r.oid = a.grantee
         WHERE n.nspname = $1 AND a.privilege_type = 'USAGE' AND a.grantee <> n.nspowner
         ORDER BY 1",
    )
    .bind(schema.as_str())
    .fetch_all(pool)
    .await
    .map_err(|e| cluster.err(e))?;
    for (role,) in roles {
        grant_tables(cluster, pool, schema, &Ident::new(role)?).await?;
    }
    Ok(())
}

/// Runs the seeds (`NNNN_name.seed.sql`) of every version up to the container's, with
/// `search_path` on the container's schema and `app.tenant_id` set to the tenant, in one
/// transaction: the reference rows a new container starts with. A seed must be repeatable
/// (`ON CONFLICT DO NOTHING`): a retried step runs it again. Returns the rows it inserted.
pub async fn seed(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
    tenant_id: Uuid,
) -> Result<u64, DataPlaneError> {
    let version = current_version(cluster, pool, schema).await?;
    let err = |e| cluster.err(e);
    let mut tx = pool.begin().await.map_err(err)?;
    sqlx::query(
        Statement::new("SET LOCAL search_path TO ")
            .ident(schema)
            .into_sql(),
    )
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    let mut rows = 0;
    for m in cluster.tenant_schema().migrations() {
        let Some(seed) = m.seed.as_deref().filter(|_| m.version <= version) else {
            continue;
        };
        rows += sqlx::raw_sql(Statement::new("").trusted_file(seed).into_sql())
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
    }
    tx.commit().await.map_err(err)?;
    Ok(rows)
}

/// `GRANT SELECT, INSERT, UPDATE, DELETE` on every tenant table of `schema`, USAGE on the
/// schema and its sequences, and SELECT on the write-fence tables (the fence trigger runs as
/// the application role): the role's whole access. The bookkeeping table is not granted. When the
/// role already holds all of it nothing is written: GRANT on the shared pool tables would
/// otherwise rewrite their catalog rows (and invalidate every session's cache) per tenant.
pub async fn grant_tables(
    cluster: &Cluster,
    pool: &PgPool,
    schema: &Ident,
    role: &Ident,
) -> Result<(), DataPlaneError> {
    let tables = super::tables::tenant_tables(cluster, pool, schema).await?;
    let names: Vec<&str> = tables.iter().map(Ident::as_str).collect();
    let (granted,): (bool,) = sqlx::query_as(
        "SELECT has_schema_privilege($1, n.oid, 'USAGE')
                AND count(c.oid) = cardinality($3::text[])
                AND coalesce(bool_and(has_table_privilege($1, c.oid, 'SELECT')
                                      AND has_table_privilege($1, c.oid, 'INSERT')
                                      AND has_table_privilege($1, c.oid, 'UPDATE')
                                      AND has_table_privilege($1, c.oid, 'DELETE')), false)
         FROM pg_namespace n
         LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = ANY($3::text[])
         WHERE n.nspname = $2
         GROUP BY n.oid",
    )
    .bind(role.as_str())
    .bind(schema.as_str())
    .bind(&names)
    .fetch_one(pool)
    .await
    .map_err(|e| cluster.err(e))?;
    // Grants on a shared schema (the pool) change catalog rows other provisionings change too.
    let lock = format!("tenantd:schema-acl:{}", schema.as_str());
    // The fence tables present (tenantd's, and the example's own from its version 2) that
    // the role cannot read yet.
    let ungranted: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $2 AND c.relname = ANY($3)
           AND NOT has_table_privilege($1, c.oid, 'SELECT')
         ORDER BY 1",
    )
    .bind(role.as_str())
    .bind(schema.as_str())
    .bind(super::fence::TABLES)
    .fetch_all(pool)
    .await
    .map_err(|e| cluster.err(e))?;
    // Everything missing, in one transaction: one commit, not one per statement.
    let mut stmts: Vec<Statement> = Vec::new();
    for (fences,) in ungranted {
        stmts.push(
            Statement::new("GRANT SELECT ON TABLE ")
                .qualified(schema, &Ident::new(fences)?)
                .push(" TO ")
                .ident(role),
        );
    }
    // USAGE on the container's sequences: a serial column's default calls nextval as the
    // application role (identity columns need no grant). Not SELECT: a pool sequence's
    // position would tell how many rows the other tenants wrote.
    let sequences: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
         -- The schema's relations through pg_depend's index (see tables::names_in).
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.classid = 'pg_class'::regclass
           AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $2)
           AND d.deptype = 'n'
           AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege($1, c.oid, 'USAGE')
                    ELSE false END
         ORDER BY 1",
    )
    .bind(role.as_str())
    .bind(schema.as_str())
    .fetch_all(pool)
    .await
    .map_err(|e| cluster.err(e))?;
    if !sequences.is_empty() {
        let mut stmt = Statement::new("GRANT USAGE ON SEQUENCE ");
        for (i, (seq,)) in sequences.into_iter().enumerate() {
            if i > 0 {
                stmt = stmt.push(", ");
            }
            stmt = stmt.qualified(schema, &Ident::new(seq)?);
        }
        stmts.push(stmt.push(" TO ").ident(role));
    }
    if !granted {
        stmts.push(
            Statement::new("GRANT USAGE ON SCHEMA ")
                .ident(schema)
                .push(" TO ")
                .ident(role),
        );
        if !tables.is_empty() {
            let mut stmt = Statement::new("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE ");
            for (i, table) in tables.iter().enumerate() {
                if i > 0 {
                    stmt = stmt.push(", ");
                }
                stmt = stmt.qualified(schema, table);
            }
            stmts.push(stmt.push(" TO ").ident(role));
        }
    }
    if stmts.is_empty() {
        return Ok(());
    }
    cluster.exec_all_serialised(pool, &lock, stmts).await
}
