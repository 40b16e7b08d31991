//! Keys, indexes and foreign keys set aside while a container's tables are bulk-loaded, and
//! built again afterwards, as pg_restore does: one sorted index build beats a million index
//! insertions, and one join validates a foreign key faster than a trigger per row. Restores
//! load their staging container this way ([`super::staging`]), and tier changes the new
//! container of a schema or database target.

use serde::{Deserialize, Serialize};

use super::{Cluster, Container, DataPlaneError, two_lanes};
use crate::sql::{Ident, Statement};

/// A key, index or foreign key of a tenant table, set aside while the table is loaded.
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

/// Drops the keys, indexes and foreign keys of `c`'s tenant tables (foreign keys first, as
/// they depend on the keys) and returns them, for [`rebuild`]. The container must hold no
/// rows anyone relies on: nothing checks them until the rebuild.
pub async fn set_aside(cluster: &Cluster, c: &Container) -> Result<Vec<Deferred>, DataPlaneError> {
    let db = cluster.database(&c.database);
    let err = |e| cluster.err(e);
    let tables = super::tables::tenant_tables(cluster, &db, &c.schema).await?;
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
    .bind(c.schema.as_str())
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
                DeferredKind::Index => Statement::new("DROP INDEX ").qualified(&c.schema, &name),
                _ => Statement::new("ALTER TABLE ")
                    .qualified(&c.schema, &table)
                    .push(" DROP CONSTRAINT ")
                    .ident(&name),
            };
            cluster.exec(&db, stmt).await?;
        }
    }
    Ok(deferred)
}

/// Builds again what [`set_aside`] set aside, two tables at a time on two connections (tables
/// spread by `rows`, largest first): the keys and indexes; then the foreign keys, added
/// `NOT VALID` one by one (a catalog change, but each locks the table it references) and
/// validated two tables at a time (validation does not lock the referenced table against
/// another validation). The result is the same as adding them validated. What exists already
/// (a retried step) is skipped. A duplicate key or a dangling reference fails with its
/// SQLSTATE (class 23).
pub async fn rebuild(
    cluster: &Cluster,
    c: &Container,
    deferred: &[Deferred],
    rows: impl Fn(&str) -> u64,
) -> Result<(), DataPlaneError> {
    let [a, b] = spread(deferred, &[DeferredKind::Key, DeferredKind::Index], &rows);
    tokio::try_join!(
        build(cluster, c, &a, Phase::Create),
        build(cluster, c, &b, Phase::Create)
    )?;
    let foreign: Vec<&Deferred> = deferred
        .iter()
        .filter(|d| d.kind == DeferredKind::ForeignKey)
        .collect();
    build(cluster, c, &foreign, Phase::Create).await?;
    let [a, b] = spread(deferred, &[DeferredKind::ForeignKey], &rows);
    tokio::try_join!(
        build(cluster, c, &a, Phase::Validate),
        build(cluster, c, &b, Phase::Validate)
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
    c: &Container,
    objects: &[&Deferred],
    phase: Phase,
) -> Result<(), DataPlaneError> {
    let err = |e| cluster.err(e);
    // One transaction: its settings end with it (also on an error, which would otherwise
    // leave them on a pooled connection), and a failed lane leaves nothing half-built.
    let mut conn = cluster.database(&c.database).begin().await.map_err(err)?;
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
        let alter = || Statement::new("ALTER TABLE ").qualified(&c.schema, &table);
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
            .bind(c.schema.as_str())
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
