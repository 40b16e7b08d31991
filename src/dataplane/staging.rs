//! A restore's staging container, and the swap that puts it in place of the tenant's data.
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

use serde::{Deserialize, Serialize};

use super::copy::{column_list, columns};
use super::{Cluster, Container, DataPlaneError, catalog, fence, two_lanes};
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

/// Where the replaced copy of a schema or database tier tenant waits for cleanup.
pub fn replaced(live: &Container) -> Container {
    Container {
        schema: named("replaced", live),
        ..live.clone()
    }
}

/// A key, index or foreign key of a staging table, set aside while the table is loaded and
/// built again afterwards (as pg_restore does: one sorted index build beats a million index
/// insertions, one join validates a foreign key faster than a trigger per row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferred {
    pub table: String,
    pub name: String,
    pub kind: DeferredKind,
    /// What PostgreSQL printed for it (`pg_get_constraintdef`, `pg_get_indexdef`).
    pub definition: String,
    /// Whether its table is partitioned: its index is built on every partition (not `ON
    /// ONLY` the parent, as `pg_get_indexdef` prints it) and its foreign key is added
    /// validated (PostgreSQL has no `NOT VALID` foreign key on a partitioned table).
    #[serde(default)]
    pub partitioned: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferredKind {
    /// A primary key or unique constraint.
    Key,
    Index,
    ForeignKey,
}

/// (Re)creates the staging container, empty, at tenant-schema `version`, with the keys,
/// indexes and foreign keys of its tenant tables set aside for [`rebuild`]; returns them.
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
    let err = |e| cluster.err(e);
    let tables = super::tables::tenant_tables(cluster, &db, &staging.schema).await?;
    let rows: Vec<(String, String, String, String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, k.conname::text,
                CASE k.contype WHEN 'f' THEN 'foreign_key' ELSE 'key' END,
                pg_get_constraintdef(k.oid), c.relkind = 'p'
         FROM pg_constraint k
         JOIN pg_class c ON c.oid = k.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY($2) AND k.contype IN ('p', 'u', 'f')
         UNION ALL
         SELECT c.relname::text, i.relname::text, 'index', pg_get_indexdef(x.indexrelid),
                c.relkind = 'p'
         FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_class c ON c.oid = x.indrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY($2)
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid
                           AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x'))
         ORDER BY 1, 2",
    )
    .bind(staging.schema.as_str())
    .bind(tables.iter().map(Ident::as_str).collect::<Vec<_>>())
    .fetch_all(&db)
    .await
    .map_err(err)?;
    let deferred = rows
        .into_iter()
        .map(|(table, name, kind, definition, partitioned)| {
            Ident::new(table.clone())?;
            Ident::new(name.clone())?;
            let kind = match kind.as_str() {
                "key" => DeferredKind::Key,
                "index" => DeferredKind::Index,
                _ => DeferredKind::ForeignKey,
            };
            Ok(Deferred {
                table,
                name,
                kind,
                definition,
                partitioned,
            })
        })
        .collect::<Result<Vec<_>, DataPlaneError>>()?;
    // Foreign keys first (they depend on the keys), indexes last.
    for kind in [
        DeferredKind::ForeignKey,
        DeferredKind::Key,
        DeferredKind::Index,
    ] {
        for d in deferred.iter().filter(|d| d.kind == kind) {
            let (table, name) = (Ident::new(d.table.clone())?, Ident::new(d.name.clone())?);
            let stmt = match kind {
                DeferredKind::Index => {
                    Statement::new("DROP INDEX ").qualified(&staging.schema, &name)
                }
                _ => Statement::new("ALTER TABLE ")
                    .qualified(&staging.schema, &table)
                    .push(" DROP CONSTRAINT ")
                    .ident(&name),
            };
            cluster.exec(&db, stmt).await?;
        }
    }
    Ok(deferred)
}

/// Builds again what [`create`] set aside, two tables at a time on two connections (tables
/// spread by `rows`, largest first): the keys and indexes; then the foreign keys, added
/// `NOT VALID` one by one (a catalog change, but each locks the table it references) and
/// validated two tables at a time (validation does not lock the referenced table against
/// another validation). The result is the same as adding them validated. What exists already
/// (a retried step) is skipped. A duplicate key or a dangling reference fails with its
/// SQLSTATE (class 23).
pub async fn rebuild(
    cluster: &Cluster,
    staging: &Container,
    deferred: &[Deferred],
    rows: impl Fn(&str) -> u64,
) -> Result<(), DataPlaneError> {
    let [a, b] = spread(deferred, &[DeferredKind::Key, DeferredKind::Index], &rows);
    tokio::try_join!(
        build(cluster, staging, &a, Phase::Create),
        build(cluster, staging, &b, Phase::Create)
    )?;
    let foreign: Vec<&Deferred> = deferred
        .iter()
        .filter(|d| d.kind == DeferredKind::ForeignKey)
        .collect();
    build(cluster, staging, &foreign, Phase::Create).await?;
    let [a, b] = spread(deferred, &[DeferredKind::ForeignKey], &rows);
    tokio::try_join!(
        build(cluster, staging, &a, Phase::Validate),
        build(cluster, staging, &b, Phase::Validate)
    )?;
    Ok(())
}

/// The objects of `kinds`, in two lanes of whole tables with about equal work (rows times
/// objects), the largest first.
fn spread<'a>(
    deferred: &'a [Deferred],
    kinds: &[DeferredKind],
    rows: &impl Fn(&str) -> u64,
) -> [Vec<&'a Deferred>; 2] {
    let of_kinds = |d: &&Deferred| kinds.contains(&d.kind);
    let work = |table: &str| {
        let objects = deferred
            .iter()
            .filter(of_kinds)
            .filter(|d| d.table == table);
        rows(table).max(1) * objects.count() as u64
    };
    let mut tables: Vec<&str> = deferred
        .iter()
        .filter(of_kinds)
        .map(|d| d.table.as_str())
        .collect();
    tables.sort();
    tables.dedup();
    two_lanes(tables, |t| work(t)).map(|lane| {
        lane.into_iter()
            .flat_map(|table| {
                kinds.iter().flat_map(move |kind| {
                    deferred
                        .iter()
                        .filter(move |d| d.table == table && d.kind == *kind)
                })
            })
            .collect()
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Create what is missing (foreign keys `NOT VALID`).
    Create,
    /// Validate foreign keys (a no-op for a valid one).
    Validate,
}

/// Runs `phase` for `objects` in order, in one transaction.
async fn build(
    cluster: &Cluster,
    staging: &Container,
    objects: &[&Deferred],
    phase: Phase,
) -> Result<(), DataPlaneError> {
    let err = |e| cluster.err(e);
    // One transaction: its settings end with it (also on an error, which would otherwise
    // leave them on a pooled connection), and a failed lane leaves nothing half-built.
    let mut conn = cluster
        .database(&staging.database)
        .begin()
        .await
        .map_err(err)?;
    // A sorted build in memory (the default 64 MB spills a 1M-row index to disk); no parallel
    // workers, as two of these run at once.
    sqlx::raw_sql(
        "SET LOCAL maintenance_work_mem = '256MB'; SET LOCAL max_parallel_maintenance_workers = 0",
    )
    .execute(&mut *conn)
    .await
    .map_err(err)?;
    for d in objects {
        let (table, name) = (Ident::new(d.table.clone())?, Ident::new(d.name.clone())?);
        let alter = || Statement::new("ALTER TABLE ").qualified(&staging.schema, &table);
        let stmt = if phase == Phase::Validate {
            if d.partitioned {
                // Added validated in the create phase.
                continue;
            }
            alter().push(" VALIDATE CONSTRAINT ").ident(&name)
        } else {
            let (exists,): (bool,) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint k JOIN pg_namespace n
                                ON n.oid = k.connamespace WHERE n.nspname = $1 AND k.conname = $2)
                     OR EXISTS (SELECT 1 FROM pg_class i JOIN pg_namespace n
                                ON n.oid = i.relnamespace WHERE n.nspname = $1 AND i.relname = $2
                                AND i.relkind = 'i')",
            )
            .bind(staging.schema.as_str())
            .bind(name.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(err)?;
            if exists {
                continue;
            }
            let definition = if d.kind == DeferredKind::Index && d.partitioned {
                d.definition.replacen(" ON ONLY ", " ON ", 1)
            } else {
                d.definition.clone()
            };
            let definition = Statement::catalog_definition(definition);
            match d.kind {
                DeferredKind::Index => definition,
                DeferredKind::ForeignKey if d.partitioned => alter()
                    .push(" ADD CONSTRAINT ")
                    .ident(&name)
                    .push(" ")
                    .append(definition),
                DeferredKind::Key => alter()
                    .push(" ADD CONSTRAINT ")
                    .ident(&name)
                    .push(" ")
                    .append(definition),
                DeferredKind::ForeignKey => alter()
                    .push(" ADD CONSTRAINT ")
                    .ident(&name)
                    .push(" ")
                    .append(definition)
                    .push(" NOT VALID"),
            }
        };
        sqlx::query(stmt.into_sql())
            .execute(&mut *conn)
            .await
            .map_err(err)?;
    }
    conn.commit().await.map_err(err)
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
    if live.tier == Tier::Pool {
        // The staged rows passed these very foreign keys in staging (`rebuild`), and their
        // parents are inserted in this transaction from the same copy: a superuser skips
        // re-checking them row by row (replica mode disables the foreign-key triggers).
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
        let tables = super::tables::tenant_tables(cluster, &mut *tx, &staged.schema).await?;
        for table in tables.iter().rev() {
            let stmt = Statement::new("DELETE FROM ")
                .qualified(&live.schema, table)
                .push(" WHERE tenant_id = $1");
            sqlx::query(stmt.into_sql())
                .bind(live.tenant_id)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        for table in &tables {
            let cols = columns(cluster, &mut tx, &live.schema, table).await?;
            // The staged rows keep their identity values, as the export had them.
            let stmt = column_list(
                Statement::new("INSERT INTO ")
                    .qualified(&live.schema, table)
                    .push(" ("),
                &cols,
            )
            .push(") OVERRIDING SYSTEM VALUE SELECT ");
            let stmt = column_list(stmt, &cols)
                .push(" FROM ")
                .qualified(&staged.schema, table);
            sqlx::query(stmt.into_sql())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
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
