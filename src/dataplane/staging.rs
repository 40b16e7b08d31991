//! A restore's staging container, and the swap that puts it in place of the tenant's data;
//! and a restore drill's scratch container, which nothing ever swaps in.
//!
//! The staging container is schema `restore_<tenant hex>` in the database of the tenant's
//! container: the cluster's shared database for the pool and schema tiers, the tenant's own
//! database for the database tier. It is created by tenantd's migrations like any container,
//! holds only the restored rows, and is reachable by nobody until the restore grants it.
//!
//! The swap is one transaction on that database:
//! - schema and database tiers: the live schema is renamed `replaced_<tenant hex>` and the
//!   staging schema takes its name, then the tenant is unfenced there. Functions whose
//!   `search_path` names a renamed schema (the write-fence trigger resolves its table that way)
//!   follow the rename, so each copy keeps checking its own fence. The role's grants and
//!   settings are by name or by object and carry over; applications keep their connections.
//! - pool tier: the tenant's rows are deleted from the shared tables (children first) and the
//!   staged rows inserted (parents first), the fence is lifted and the staging schema dropped.
//!   Other tenants' rows are neither touched nor locked; the shared tables take only the ROW
//!   EXCLUSIVE lock every write takes.

use super::copy::{column_list, columns};
use super::deferred::{self, Deferred};
use super::{Cluster, Container, DataPlaneError, catalog, fence};
use crate::sql::{Ident, Statement};
use crate::tenant::Tier;

fn named(prefix: &str, c: &Container) -> Ident {
    Ident::new(format!("{prefix}_{}", c.tenant_id.simple())).expect("uuid-derived name is valid")
}

/// The staging container for a restore into `live`.
pub fn staging(live: &Container) -> Container {
    Container {
        schema: named("restore", live),
        ..live.clone()
    }
}

/// A restore drill's scratch container: schema `drill_<tenant hex>` beside `live`, never
/// granted to anyone, dropped when the drill ends.
pub fn scratch(live: &Container) -> Container {
    Container {
        schema: named("drill", live),
        ..live.clone()
    }
}

/// Where the replaced copy of a schema or database tier tenant waits for cleanup.
pub fn replaced(live: &Container) -> Container {
    Container {
        schema: named("replaced", live),
        ..live.clone()
    }
}

/// (Re)creates the staging container, empty, at tenant-schema `version`, with the keys,
/// indexes and foreign keys of its tenant tables set aside for [`deferred::rebuild`];
/// returns them.
pub async fn create(
    cluster: &Cluster,
    staging: &Container,
    version: i32,
) -> Result<Vec<Deferred>, DataPlaneError> {
    cluster
        .drop_schema(&staging.database, &staging.schema)
        .await?;
    cluster
        .ensure_schema(&staging.database, &staging.schema)
        .await?;
    let db = cluster.database(&staging.database);
    let at = catalog::migrate(cluster, &db, &staging.schema, version).await?;
    if at != version {
        return Err(DataPlaneError::Invariant(format!(
            "staging schema reached version {at}, not {version}"
        )));
    }
    deferred::set_aside(cluster, staging).await
}

/// Renames schema `tenantd.rename_from` to `tenantd.rename_to` (set in the transaction) and
/// points the `search_path` of the functions in it at the new name. Static SQL: the names
/// arrive as bound settings and are quoted by `format('%I')`.
const RENAME_SCHEMA: &str = r#"
DO $$
DECLARE
    old_name text := current_setting('tenantd.rename_from');
    new_name text := current_setting('tenantd.rename_to');
    f record;
    path text;
BEGIN
    EXECUTE format('ALTER SCHEMA %I RENAME TO %I', old_name, new_name);
    FOR f IN
        SELECT p.oid::regprocedure AS proc, substr(cfg, length('search_path=') + 1) AS value
        FROM pg_proc p, unnest(p.proconfig) AS cfg
        WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = new_name)
          AND cfg LIKE 'search_path=%'
    LOOP
        SELECT string_agg(CASE WHEN btrim(btrim(e), '"') = old_name THEN quote_ident(new_name)
                               ELSE btrim(e) END, ', ')
          INTO path
          FROM unnest(string_to_array(f.value, ',')) AS e;
        EXECUTE format('ALTER FUNCTION %s SET search_path TO %s', f.proc, path);
    END LOOP;
END
$$"#;

async fn rename_schema(
    cluster: &Cluster,
    conn: &mut sqlx::PgConnection,
    from: &Ident,
    to: &Ident,
) -> Result<(), DataPlaneError> {
    let err = |e| cluster.err(e);
    sqlx::query(
        "SELECT set_config('tenantd.rename_from', $1, true), set_config('tenantd.rename_to', $2, true)",
    )
    .bind(from.as_str())
    .bind(to.as_str())
    .execute(&mut *conn)
    .await
    .map_err(err)?;
    sqlx::raw_sql(RENAME_SCHEMA)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    Ok(())
}

/// Puts the staged copy in place of `live`, atomically (see the module doc). Idempotent: once
/// the staging schema is gone the swap has happened. `live` must be fenced (writers waited
/// out) unless it holds nothing yet.
pub async fn swap(cluster: &Cluster, live: &Container) -> Result<(), DataPlaneError> {
    let staged = staging(live);
    if !cluster
        .schema_exists(&staged.database, &staged.schema)
        .await?
    {
        return Ok(());
    }
    if live.tier == Tier::Pool {
        // The pool may have been migrated since the staging was: follow it.
        let db = cluster.database(&live.database);
        let version = catalog::current_version(cluster, &db, &live.schema).await?;
        catalog::migrate(cluster, &db, &staged.schema, version).await?;
    }
    let err = |e| cluster.err(e);
    let mut tx = swap_transaction(cluster, live).await?;
    if live.tier == Tier::Pool {
        // The staged rows passed these very foreign keys in staging (`deferred::rebuild`),
        // and their parents are inserted from the same copy: a superuser skips re-checking
        // them row by row (replica mode disables the foreign-key triggers).
        replica_mode(cluster, &mut tx).await?;
        let tables = super::tables::tenant_tables(cluster, &mut *tx, &staged.schema).await?;
        for table in tables.iter().rev() {
            delete_live(cluster, &mut tx, live, table).await?;
        }
        for table in &tables {
            insert_staged(cluster, &mut tx, live, &staged, table).await?;
        }
        super::tables::advance_sequences(cluster, &mut tx, &live.schema, &tables).await?;
        let drop = Statement::new("DROP SCHEMA ")
            .ident(&staged.schema)
            .push(" CASCADE");
        sqlx::query(drop.into_sql())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    } else {
        let (live_exists,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(live.schema.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
        if live_exists {
            rename_schema(cluster, &mut tx, &live.schema, &replaced(live).schema).await?;
        }
        rename_schema(cluster, &mut tx, &staged.schema, &live.schema).await?;
        // Loaded by COPY with the export's values: the sequences never moved.
        let tables = super::tables::tenant_tables(cluster, &mut *tx, &live.schema).await?;
        super::tables::advance_sequences(cluster, &mut tx, &live.schema, &tables).await?;
    }
    fence::unfence_in(cluster, &mut tx, live).await?;
    tx.commit().await.map_err(err)
}

/// A transaction on `live`'s database for the swap, acting for its tenant, that waits at
/// most 10 s for a lock.
async fn swap_transaction(
    cluster: &Cluster,
    live: &Container,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, DataPlaneError> {
    let err = |e| cluster.err(e);
    let mut tx = cluster
        .database(&live.database)
        .begin()
        .await
        .map_err(err)?;
    sqlx::raw_sql("SET LOCAL lock_timeout = '10s'")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(live.tenant_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    Ok(tx)
}

/// Turns the transaction's triggers off (replica mode) when its role is a superuser.
async fn replica_mode(
    cluster: &Cluster,
    tx: &mut sqlx::PgConnection,
) -> Result<(), DataPlaneError> {
    let err = |e| cluster.err(e);
    let (superuser,): (bool,) =
        sqlx::query_as("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
    if superuser {
        sqlx::raw_sql("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    Ok(())
}

async fn delete_live(
    cluster: &Cluster,
    tx: &mut sqlx::PgConnection,
    live: &Container,
    table: &Ident,
) -> Result<(), DataPlaneError> {
    let stmt = Statement::new("DELETE FROM ")
        .qualified(&live.schema, table)
        .push(" WHERE tenant_id = $1");
    sqlx::query(stmt.into_sql())
        .bind(live.tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| cluster.err(e))?;
    Ok(())
}

/// Inserts the staged rows of `table` into the live pool table; they keep their identity
/// values, as the export had them.
async fn insert_staged(
    cluster: &Cluster,
    tx: &mut sqlx::PgConnection,
    live: &Container,
    staged: &Container,
    table: &Ident,
) -> Result<(), DataPlaneError> {
    let cols = columns(cluster, &mut *tx, &live.schema, table).await?;
    let stmt = column_list(
        Statement::new("INSERT INTO ")
            .qualified(&live.schema, table)
            .push(" ("),
        &cols,
    )
    .push(") OVERRIDING SYSTEM VALUE SELECT ");
    let stmt = column_list(stmt, &cols).push(" FROM ");
    // A type the schema defines (an enum, a domain, a composite) exists twice: in the pool
    // and in the staging schema, and the two do not cast into each other. Such rows go
    // through each value's text form, by column name, into the pool's types.
    let own_types: bool = sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM pg_attribute l JOIN pg_attribute s ON s.attname = l.attname
             WHERE l.attrelid = (quote_ident($1) || '.' || quote_ident($3))::regclass
               AND s.attrelid = (quote_ident($2) || '.' || quote_ident($3))::regclass
               AND l.attnum > 0 AND NOT l.attisdropped AND NOT s.attisdropped
               AND l.atttypid <> s.atttypid)",
    )
    .bind(live.schema.as_str())
    .bind(staged.schema.as_str())
    .bind(table.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| cluster.err(e))?;
    let stmt = if own_types {
        stmt.push("(SELECT (json_populate_record(NULL::")
            .qualified(&live.schema, table)
            .push(", to_json(s))).* FROM ")
            .qualified(&staged.schema, table)
            .push(" s) r")
    } else {
        stmt.qualified(&staged.schema, table)
    };
    sqlx::query(stmt.into_sql())
        .execute(&mut *tx)
        .await
        .map_err(|e| cluster.err(e))?;
    Ok(())
}
