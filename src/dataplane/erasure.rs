//! Erasing one tenant from a cluster, and proving it: finds every row of the tenant in every
//! table that has a `tenant_id` column, in every database tenantd keeps tenant data in,
//! deletes those rows in short batches (children before parents), and scans again.
//!
//! The scan does not trust the catalog of tables tenantd created: it asks PostgreSQL which
//! tables have a `tenant_id` column, so a table someone added by hand (an audit table with no
//! foreign key, a table left by an older release) is found, emptied and checked too.
//!
//! Which databases: the cluster's shared database (pool tables and tenant schemas) and every
//! `t_<32 hex>` database (database-tier tenants). Not the registry nor any other database on
//! the server: their rows describe tenants, they are not tenant data.
//!
//! The write-fence tables hold control rows (tenant id and operation id), not tenant data:
//! they are left out of the row scan. A deleted pool tenant keeps its fence row for good, so
//! that no application session can write rows under its id again.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Cluster, DataPlaneError, is_gone};
use crate::sql::{Ident, Statement};

/// How hard a batched delete may push: rows per statement (each its own transaction, so
/// other tenants sharing a table are never blocked for long), and the share of time it
/// works (it sleeps the rest).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub batch: i64,
    /// 1 in `duty`: after each batch it sleeps `duty - 1` times as long as the batch took.
    pub duty: u32,
}

/// Removing a moved tenant from the pool after a tier change: background work that may take
/// minutes and must not make the tenants still there wait.
pub const BACKGROUND: Pace = Pace {
    batch: 500,
    duty: 4,
};

/// A deletion request: someone waits for the certificate, so it runs flat out, in batches
/// short enough that the neighbours' latency holds (`cargo bench --bench delete`).
pub const DELETION: Pace = Pace {
    batch: 5_000,
    duty: 1,
};

/// One table that can hold tenant rows, and how many rows of the tenant it held when counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub cluster: String,
    pub database: String,
    pub schema: String,
    pub table: String,
    pub rows: u64,
}

impl TableCount {
    pub fn qualified(&self) -> String {
        format!("{}.{}.{}", self.database, self.schema, self.table)
    }

    /// Database, schema and table, validated again (they come from the catalog or from a
    /// stored state).
    pub fn idents(&self) -> Result<(Ident, Ident, Ident), DataPlaneError> {
        let ident = |s: &str| Ident::new(s.to_owned());
        Ok((
            ident(&self.database)?,
            ident(&self.schema)?,
            ident(&self.table)?,
        ))
    }
}

/// The count every table is scanned with (`$1`: the tenant id), as recorded in evidence.
pub const COUNT_QUERY: &str = "SELECT count(*) FROM <schema>.<table> WHERE tenant_id = $1";

/// The databases on `cluster` that hold tenant data: the shared database and every
/// database-tier database, in name order.
pub async fn databases(cluster: &Cluster) -> Result<Vec<Ident>, DataPlaneError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database
         WHERE NOT datistemplate AND datallowconn
           AND (datname = $1 OR datname ~ '^t_[0-9a-f]{32}$')
         ORDER BY datname",
    )
    .bind(cluster.shared_database.as_str())
    .fetch_all(cluster.admin())
    .await
    .map_err(|e| cluster.err(e))?;
    names.into_iter().map(|n| Ok(Ident::new(n)?)).collect()
}

/// The tables of the connected database with a `tenant_id` column (partitioned tables once,
/// not their partitions; fence tables left out), children before parents: deleting in this
/// order never trips a foreign key.
pub async fn tables(
    cluster: &Cluster,
    conn: &mut PgConnection,
) -> Result<Vec<(Ident, Ident)>, DataPlaneError> {
    let found: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT c.oid::bigint, n.nspname::text, c.relname::text
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE a.attname = 'tenant_id' AND NOT a.attisdropped
           AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND c.relname <> ALL($1)
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_%'
         ORDER BY n.nspname, c.relname",
    )
    .bind(super::tables::NOT_TENANT_DATA)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| cluster.err(e))?;
    // (child, parent) for every foreign key between two different tables.
    let edges: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT conrelid::bigint, confrelid::bigint FROM pg_constraint
         WHERE contype = 'f' AND conrelid <> confrelid",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| cluster.err(e))?;
    let order = children_first(
        &found.iter().map(|(oid, ..)| *oid).collect::<Vec<_>>(),
        &edges,
    );
    order
        .into_iter()
        .map(|i| {
            let (_, schema, table) = &found[i];
            Ok((Ident::new(schema.clone())?, Ident::new(table.clone())?))
        })
        .collect()
}

/// Indexes into `nodes` ordered so that every child comes before its parents (Kahn's
/// algorithm over `(child, parent)` edges; ties keep the input order). A cycle cannot be
/// ordered: its tables come last, in input order.
fn children_first(nodes: &[i64], edges: &[(i64, i64)]) -> Vec<usize> {
    let index = |oid: i64| nodes.iter().position(|n| *n == oid);
    let edges: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|(c, p)| Some((index(*c)?, index(*p)?)))
        .collect();
    // A parent waits for every child that references it.
    let mut waiting: Vec<usize> = vec![0; nodes.len()];
    for (_, p) in &edges {
        waiting[*p] += 1;
    }
    let mut done = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(next) = (0..nodes.len()).find(|i| !done[*i] && waiting[*i] == 0) {
        done[next] = true;
        order.push(next);
        for (c, p) in &edges {
            if *c == next {
                waiting[*p] -= 1;
            }
        }
    }
    order.extend((0..nodes.len()).filter(|i| !done[*i]));
    order
}

/// Counts the tenant's rows in every table of every tenant-data database on `cluster`, one
/// connection per database. A database or table dropped meanwhile (another tenant's
/// operation) holds no rows and is skipped.
pub async fn scan(cluster: &Cluster, tenant_id: Uuid) -> Result<Vec<TableCount>, DataPlaneError> {
    let mut out = Vec::new();
    for database in databases(cluster).await? {
        let Some(mut conn) = cluster.connect_once(&database).await? else {
            continue;
        };
        for (schema, table) in tables(cluster, &mut conn).await? {
            let stmt = Statement::new("SELECT count(*) FROM ")
                .qualified(&schema, &table)
                .push(" WHERE tenant_id = $1");
            let counted: Result<(i64,), _> = sqlx::query_as(stmt.into_sql())
                .bind(tenant_id)
                .fetch_one(&mut conn)
                .await;
            let rows = match counted {
                Ok((rows,)) => rows,
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(cluster.err(e)),
            };
            out.push(TableCount {
                cluster: cluster.name.clone(),
                database: database.as_str().to_owned(),
                schema: schema.as_str().to_owned(),
                table: table.as_str().to_owned(),
                rows: rows as u64,
            });
        }
    }
    Ok(out)
}

/// The column after `tenant_id` in the table's primary key, and its type as the schema and
/// name the catalog holds it under (`pg_catalog.int8`, a container's own enum): quoted, that
/// names the type exactly, whatever the search path. `None`: the key is not
/// `(tenant_id, key)`, e.g. a hand-made table.
async fn key_column(
    cluster: &Cluster,
    pool: &sqlx::PgPool,
    schema: &Ident,
    table: &Ident,
) -> Result<Option<(Ident, (Ident, Ident))>, DataPlaneError> {
    let cols: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.attname::text, tn.nspname::text, ty.typname::text
         FROM pg_index i
         JOIN pg_class t ON t.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (i.indkey)
         JOIN pg_type ty ON ty.oid = a.atttypid
         JOIN pg_namespace tn ON tn.oid = ty.typnamespace
         WHERE n.nspname = $1 AND t.relname = $2 AND i.indisprimary
         ORDER BY array_position(i.indkey, a.attnum)",
    )
    .bind(schema.as_str())
    .bind(table.as_str())
    .fetch_all(pool)
    .await
    .map_err(|e| cluster.err(e))?;
    match cols.as_slice() {
        [(first, _, _), (key, ty_schema, ty)] if first == "tenant_id" => Ok(Some((
            Ident::new(key.clone())?,
            (Ident::new(ty_schema.clone())?, Ident::new(ty.clone())?),
        ))),
        _ => Ok(None),
    }
}

/// Deletes the tenant's rows from one table at `pace`; returns how many went.
///
/// With a `(tenant_id, key)` primary key (every table tenantd creates) it goes in key order,
/// each batch resuming where the last ended, so no batch rescans the index entries of rows
/// already deleted (that made a first version quadratic). Any other table (a hand-made one,
/// usually small) goes by physical row id, each batch finding the tenant's next rows anew.
/// Each batch compresses the WAL it writes when the session may ([`may_compress_wal`]).
pub async fn delete_rows(
    cluster: &Cluster,
    database: &Ident,
    schema: &Ident,
    table: &Ident,
    tenant_id: Uuid,
    pace: Pace,
) -> Result<u64, DataPlaneError> {
    let pool = cluster.database(database);
    let Some((key, (ty_schema, ty))) = key_column(cluster, &pool, schema, table).await? else {
        return delete_by_row_id(cluster, &pool, schema, table, tenant_id, pace).await;
    };
    let err = |e| cluster.err(e);
    // The smallest key (there is no min() for uuid).
    let first = Statement::new("SELECT ")
        .ident(&key)
        .push("::text FROM ")
        .qualified(schema, table)
        .push(" WHERE tenant_id = $1 ORDER BY ")
        .ident(&key)
        .push(" LIMIT 1");
    let mut from: Option<String> = sqlx::query_scalar(first.into_sql())
        .bind(tenant_id)
        .fetch_optional(&pool)
        .await
        .map_err(err)?;
    // Rows from `$2` on (deleted rows are invisible to the next statement, so `>=` is safe).
    let batch = Statement::new("DELETE FROM ")
        .qualified(schema, table)
        .push(" WHERE (tenant_id, ")
        .ident(&key)
        .push(") IN (SELECT tenant_id, ")
        .ident(&key)
        .push(" FROM ")
        .qualified(schema, table)
        .push(" WHERE tenant_id = $1 AND ")
        .ident(&key)
        .push(" >= CAST($2 AS ")
        .qualified(&ty_schema, &ty)
        .push(") ORDER BY ")
        .ident(&key)
        .push(" LIMIT $3) RETURNING ")
        .ident(&key)
        .push("::text");
    let compress = may_compress_wal(&pool).await;
    let mut total = 0u64;
    while let Some(bound) = from.take() {
        let started = std::time::Instant::now();
        let mut tx = batch_transaction(&pool, compress).await.map_err(err)?;
        let keys: Vec<(String,)> = sqlx::query_as(batch.to_sql())
            .bind(tenant_id)
            .bind(&bound)
            .bind(pace.batch)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        total += keys.len() as u64;
        if keys.len() as i64 == pace.batch {
            // Any key of this batch is a safe next bound (none is past the batch's last in
            // the index order); the byte-wise maximum is the last one for uuid keys.
            from = keys.into_iter().map(|k| k.0).max();
            pause(started, pace).await;
        }
    }
    Ok(total)
}

/// Whether this session may compress the WAL it writes (superuser, or `GRANT SET ON PARAMETER
/// wal_compression`). Deleting rows writes a full-page image of every page it touches first
/// after a checkpoint: compressed, the deletion puts far less I/O in the way of other
/// tenants' commits.
async fn may_compress_wal(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("SELECT has_parameter_privilege('wal_compression', 'SET')")
        .fetch_one(pool)
        .await
        .unwrap_or(false)
}

/// One batch's transaction, its WAL compressed when the session may.
async fn batch_transaction(
    pool: &sqlx::PgPool,
    compress: bool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if compress {
        sqlx::query("SET LOCAL wal_compression = on")
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// Sleeps so that the batch started at `started` took `1 / pace.duty` of the time.
async fn pause(started: std::time::Instant, pace: Pace) {
    if pace.duty > 1 {
        tokio::time::sleep(started.elapsed() * (pace.duty - 1)).await;
    }
}

async fn delete_by_row_id(
    cluster: &Cluster,
    pool: &sqlx::PgPool,
    schema: &Ident,
    table: &Ident,
    tenant_id: Uuid,
    pace: Pace,
) -> Result<u64, DataPlaneError> {
    // A row id is unique only within one physical table: a partitioned table's partitions
    // share row ids, so the outer statement names the tenant too, or a batch would delete
    // neighbours' rows that share a row id in another partition.
    let stmt = Statement::new("DELETE FROM ")
        .qualified(schema, table)
        .push(" WHERE tenant_id = $1 AND ctid = ANY (ARRAY (SELECT ctid FROM ")
        .qualified(schema, table)
        .push(" WHERE tenant_id = $1 LIMIT $2))");
    let compress = may_compress_wal(pool).await;
    let err = |e| cluster.err(e);
    let mut total = 0u64;
    loop {
        let started = std::time::Instant::now();
        let mut tx = batch_transaction(pool, compress).await.map_err(err)?;
        let deleted = sqlx::query(stmt.to_sql())
            .bind(tenant_id)
            .bind(pace.batch)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        tx.commit().await.map_err(err)?;
        total += deleted;
        if deleted == 0 {
            return Ok(total);
        }
        pause(started, pace).await;
    }
}

/// Names that are the tenant's alone on any cluster: its schema, database and role
/// (`t_<hex>`), the staging and replaced schemas of a restore, and a restore drill's scratch.
pub fn own_names(tenant_id: Uuid) -> Vec<Ident> {
    let hex = tenant_id.simple();
    ["t", "restore", "replaced", "drill"]
        .into_iter()
        .map(|prefix| Ident::new(format!("{prefix}_{hex}")).expect("uuid-derived name is valid"))
        .collect()
}

/// One catalog check of the verification: the query run, with what it was bound to, and the
/// number it returned (0 unless something of the tenant is left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogCheck {
    pub cluster: String,
    pub database: String,
    pub query: String,
    pub bound: Vec<String>,
    pub found: u64,
}

/// The tenant's own schemas ([`own_names`]) that exist in the tenant-data databases of
/// `cluster`, as (database, schema), found with one-off connections (no pool kept per
/// database).
pub async fn own_schemas(
    cluster: &Cluster,
    tenant_id: Uuid,
) -> Result<Vec<(Ident, Ident)>, DataPlaneError> {
    let names: Vec<String> = own_names(tenant_id)
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    let mut out = Vec::new();
    for database in databases(cluster).await? {
        let Some(mut conn) = cluster.connect_once(&database).await? else {
            continue;
        };
        let found: Vec<String> =
            sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = ANY ($1)")
                .bind(&names)
                .fetch_all(&mut conn)
                .await
                .map_err(|e| cluster.err(e))?;
        for schema in found {
            out.push((database.clone(), Ident::new(schema)?));
        }
    }
    Ok(out)
}

/// Looks for the tenant's own schemas in every tenant-data database, and for its database,
/// role and issued logins, on `cluster`.
pub async fn catalog_checks(
    cluster: &Cluster,
    tenant_id: Uuid,
) -> Result<Vec<CatalogCheck>, DataPlaneError> {
    let names: Vec<String> = own_names(tenant_id)
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    let admin_db = "(admin)".to_owned();
    let mut out = Vec::new();
    let mut count = async |conn: &mut PgConnection, database: String, query: &'static str| {
        let (found,): (i64,) = sqlx::query_as(query)
            .bind(&names)
            .fetch_one(conn)
            .await
            .map_err(|e| cluster.err(e))?;
        out.push(CatalogCheck {
            cluster: cluster.name.clone(),
            database,
            query: query.to_owned(),
            bound: names.clone(),
            found: found as u64,
        });
        Ok::<(), DataPlaneError>(())
    };
    let mut admin = cluster
        .admin()
        .acquire()
        .await
        .map_err(|e| cluster.err(e))?;
    for query in [
        "SELECT count(*) FROM pg_database WHERE datname = ANY ($1)",
        "SELECT count(*) FROM pg_roles WHERE rolname = ANY ($1)",
    ] {
        count(&mut admin, admin_db.clone(), query).await?;
    }
    for database in databases(cluster).await? {
        if let Some(mut conn) = cluster.connect_once(&database).await? {
            count(
                &mut conn,
                database.as_str().to_owned(),
                "SELECT count(*) FROM pg_namespace WHERE nspname = ANY ($1)",
            )
            .await?;
        }
    }
    // The logins issued to it ([`super::logins`]), by their names' prefix.
    let prefix = format!("{}{}_", super::logins::PREFIX, tenant_id.simple());
    let query = "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)";
    let (found,): (i64,) = sqlx::query_as(query)
        .bind(&prefix)
        .fetch_one(&mut *admin)
        .await
        .map_err(|e| cluster.err(e))?;
    out.push(CatalogCheck {
        cluster: cluster.name.clone(),
        database: admin_db,
        query: query.to_owned(),
        bound: vec![prefix],
        found: found as u64,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::children_first;

    #[test]
    fn children_come_before_parents() {
        // patients(1) <- encounters(2) <- observations(3); observations -> patients too;
        // audit(4) stands alone.
        let nodes = [1, 2, 3, 4];
        let edges = [(2, 1), (3, 2), (3, 1), (99, 1)];
        let order: Vec<i64> = children_first(&nodes, &edges)
            .into_iter()
            .map(|i| nodes[i])
            .collect();
        assert_eq!(order, [3, 2, 1, 4]);
        // A cycle is kept, last.
        let order = children_first(&[1, 2, 3], &[(1, 2), (2, 1)]);
        assert_eq!(order, [2, 0, 1]);
    }
}
