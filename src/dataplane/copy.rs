//! Moving one tenant's rows between containers (tier changes, restores): streaming COPY in
//! binary format, never row by row, and a digest to verify the result.
//!
//! A copy reads `COPY (SELECT … WHERE tenant_id = '<id>') TO STDOUT` on the source and feeds
//! the bytes, as they arrive, to `COPY … FROM STDIN` on the target: memory stays flat whatever
//! the tenant's size, and the two ends may be different clusters. Both ends must be at the same
//! tenant-schema version (binary COPY needs identical column types); the column list is read
//! from the source so column order cannot differ.
//!
//! The digest of a table is its row count and two order-independent sums of 64-bit hashes of
//! each row's text form (seeds 0 and 1): equal digests mean equal multisets of rows with
//! overwhelming probability. It is for detecting copy faults, not adversaries.

use sqlx::PgConnection;
use tokio_stream::StreamExt;

use super::{Cluster, Container, DataPlaneError};
use crate::sql::{Ident, Statement};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: i64,
    pub checksum: String,
}

/// The table's columns in definition order (dropped and generated columns excluded).
async fn columns(
    cluster: &Cluster,
    conn: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> Result<Vec<Ident>, DataPlaneError> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT a.attname::text FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0
           AND NOT a.attisdropped AND a.attgenerated = ''
         ORDER BY a.attnum",
    )
    .bind(schema.as_str())
    .bind(table.as_str())
    .fetch_all(conn)
    .await
    .map_err(|e| cluster.err(e))?;
    if names.is_empty() {
        return Err(DataPlaneError::Invariant(format!(
            "table {}.{} not found",
            schema.as_str(),
            table.as_str()
        )));
    }
    names
        .into_iter()
        .map(|(n,)| Ident::new(n).map_err(DataPlaneError::from))
        .collect()
}

fn column_list(mut stmt: Statement, columns: &[Ident]) -> Statement {
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            stmt = stmt.push(", ");
        }
        stmt = stmt.ident(c);
    }
    stmt
}

/// Copies the rows of `src.tenant_id` in `table` from `src` into `dst`; returns the number of
/// rows written. The target table should hold none of the tenant's rows yet (a retry after a
/// failure starts by emptying it, see [`delete_tenant_rows`]).
pub async fn copy_table(
    src_cluster: &Cluster,
    src: &Container,
    dst_cluster: &Cluster,
    dst: &Container,
    table: &Ident,
) -> Result<u64, DataPlaneError> {
    let mut src_conn = src_cluster
        .database(&src.database)
        .acquire()
        .await
        .map_err(|e| src_cluster.err(e))?;
    let mut dst_conn = dst_cluster
        .database(&dst.database)
        .acquire()
        .await
        .map_err(|e| dst_cluster.err(e))?;
    let cols = columns(src_cluster, &mut src_conn, &src.schema, table).await?;
    let out = column_list(Statement::new("COPY (SELECT "), &cols)
        .push(" FROM ")
        .qualified(&src.schema, table)
        .push(" WHERE tenant_id = ")
        .literal(&src.tenant_id.to_string())?
        .push(") TO STDOUT (FORMAT binary)");
    let into = column_list(
        Statement::new("COPY ")
            .qualified(&dst.schema, table)
            .push(" ("),
        &cols,
    )
    .push(") FROM STDIN (FORMAT binary)");

    let mut sink = dst_conn
        .copy_in_raw(into.as_str())
        .await
        .map_err(|e| dst_cluster.err(e))?;
    let mut source = src_conn
        .copy_out_raw(out.as_str())
        .await
        .map_err(|e| src_cluster.err(e))?;
    while let Some(chunk) = source.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = sink.abort("source failed").await;
                return Err(src_cluster.err(e));
            }
        };
        if let Err(e) = sink.send(chunk).await {
            return Err(dst_cluster.err(e));
        }
    }
    drop(source);
    sink.finish().await.map_err(|e| dst_cluster.err(e))
}

/// Deletes the tenant's rows from `table` in `c` (to restart an interrupted copy).
pub async fn delete_tenant_rows(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
) -> Result<u64, DataPlaneError> {
    let stmt = Statement::new("DELETE FROM ")
        .qualified(&c.schema, table)
        .push(" WHERE tenant_id = $1");
    sqlx::query(stmt.into_sql())
        .bind(c.tenant_id)
        .execute(&cluster.database(&c.database))
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| cluster.err(e))
}

/// Row count and content checksum of the tenant's rows in `table`.
pub async fn digest(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
) -> Result<TableDigest, DataPlaneError> {
    let stmt = Statement::new(
        "SELECT count(*), \
         coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text || ':' || \
         coalesce(sum(hashtextextended(t::text, 1)::numeric), 0)::text FROM ",
    )
    .qualified(&c.schema, table)
    .push(" t WHERE tenant_id = $1");
    let (rows, checksum): (i64, String) = sqlx::query_as(stmt.into_sql())
        .bind(c.tenant_id)
        .fetch_one(&cluster.database(&c.database))
        .await
        .map_err(|e| cluster.err(e))?;
    Ok(TableDigest { rows, checksum })
}
