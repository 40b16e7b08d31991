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

use std::sync::atomic::{AtomicU64, Ordering};

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
pub(super) async fn columns(
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

/// As [`columns`], on a connection of its own.
pub async fn column_names(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
) -> Result<Vec<Ident>, DataPlaneError> {
    let mut conn = cluster
        .database(&c.database)
        .acquire()
        .await
        .map_err(|e| cluster.err(e))?;
    columns(cluster, &mut conn, &c.schema, table).await
}

/// Appends `"a", "b", …` to `stmt`.
pub(super) fn column_list(mut stmt: Statement, columns: &[Ident]) -> Statement {
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            stmt = stmt.push(", ");
        }
        stmt = stmt.ident(c);
    }
    stmt
}

/// Whether the tenant may write while its tables are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes<'a> {
    /// Fenced: each table is copied as it stands, parents before children.
    Stopped,
    /// Going on (an online move, [`super::changes`]): every table is read at `snapshot`
    /// (exported by a [`Snapshot`]), so the copy can be verified against it while the tenant
    /// writes. The target session runs with `session_replication_role = replica`, as the
    /// catch-up does: the target keeps its foreign keys, but triggers do not fire for the
    /// copied rows (rows a trigger wrote on the source are copied as rows of their own).
    Continue { snapshot: &'a str },
}

/// A read-only, repeatable-read transaction on the source whose snapshot other sessions
/// share (`pg_export_snapshot`): an online copy reads every table, and its verification
/// digests them, as of one moment while the tenant writes. The snapshot lives as long as
/// this value (like pg_dump's, it holds back vacuum on the source meanwhile).
pub struct Snapshot {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub id: String,
}

impl Snapshot {
    pub async fn take(cluster: &Cluster, database: &Ident) -> Result<Snapshot, DataPlaneError> {
        let err = |e| cluster.err(e);
        let mut tx = cluster.database(database).begin().await.map_err(err)?;
        sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let (id,): (String,) = sqlx::query_as("SELECT pg_export_snapshot()")
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        Ok(Snapshot { tx, id })
    }

    pub async fn release(self) {
        let _ = self.tx.rollback().await;
    }
}

/// Makes the transaction of `conn` read at the exported `snapshot`.
async fn at_snapshot(
    cluster: &Cluster,
    conn: &mut PgConnection,
    snapshot: &str,
) -> Result<(), DataPlaneError> {
    let stmt = Statement::new(
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT ",
    )
    .literal(snapshot)?;
    sqlx::raw_sql(stmt.into_sql())
        .execute(conn)
        .await
        .map_err(|e| cluster.err(e))?;
    Ok(())
}

/// A bound on the rate an online copy reads from its source, shared by the tables copied at
/// once. The tenant writes throughout an online move, so a longer copy costs it nothing, and
/// the tenants sharing either cluster keep more of its disk and CPU (docs/tier-changes.md,
/// "Pacing"). A fenced copy is never paced.
#[derive(Debug, Default)]
pub struct Pace {
    bytes_per_second: Option<u64>,
    /// When the bytes admitted so far are due: no credit builds up while the copy is slower.
    next: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Pace {
    /// As fast as both ends go.
    pub fn unbounded() -> Pace {
        Pace::default()
    }

    /// At most `mb` × 10⁶ bytes a second; 0: unbounded.
    pub fn megabytes_per_second(mb: u32) -> Pace {
        Pace {
            bytes_per_second: (mb > 0).then_some(u64::from(mb) * 1_000_000),
            next: Default::default(),
        }
    }

    /// When `bytes` more, admitted at `now`, are due; `None` if unbounded.
    fn due(&self, now: std::time::Instant, bytes: usize) -> Option<std::time::Instant> {
        let rate = self.bytes_per_second?;
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let from = next.map_or(now, |n| n.max(now));
        let due = from + std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
        *next = Some(due);
        Some(due)
    }

    /// Counts `bytes` as read and waits until reading them keeps to the rate. Rows arrive
    /// one at a time (a COPY message each, a few hundred bytes): a sleep per row would be
    /// rounded up to the timer's millisecond and bound the copy to about a thousand rows a
    /// second, whatever the rate. So only a debt worth [`Pace::MIN_SLEEP`] is slept off, at
    /// once.
    pub async fn admit(&self, bytes: usize) {
        let now = std::time::Instant::now();
        if let Some(due) = self.due(now, bytes)
            && due > now + Self::MIN_SLEEP
        {
            tokio::time::sleep_until(due.into()).await;
        }
    }

    const MIN_SLEEP: std::time::Duration = std::time::Duration::from_millis(20);
}

/// Copies the rows of `src.tenant_id` in `table` from `src` into `dst`; returns the number of
/// rows written. The target table should hold none of the tenant's rows yet (a retry after a
/// failure starts by emptying it, see [`super::erasure::delete_rows`]). `streamed` counts the rows
/// passed on so far, for progress reports while a large table is copied.
pub async fn copy_table(
    (src_cluster, src): (&Cluster, &Container),
    (dst_cluster, dst): (&Cluster, &Container),
    table: &Ident,
    writes: Writes<'_>,
    pace: &Pace,
    streamed: &AtomicU64,
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

    // In a transaction, so that the setting ends with it whatever happens to the copy.
    let mut dst_tx = sqlx::Connection::begin(&mut *dst_conn)
        .await
        .map_err(|e| dst_cluster.err(e))?;
    let mut src_tx = sqlx::Connection::begin(&mut *src_conn)
        .await
        .map_err(|e| src_cluster.err(e))?;
    if let Writes::Continue { snapshot } = writes {
        at_snapshot(src_cluster, &mut src_tx, snapshot).await?;
        sqlx::raw_sql("SET LOCAL session_replication_role = replica")
            .execute(&mut *dst_tx)
            .await
            .map_err(|e| dst_cluster.err(e))?;
    }
    let mut sink = dst_tx
        .copy_in_raw(into.as_str())
        .await
        .map_err(|e| dst_cluster.err(e))?;
    let mut source = src_tx
        .copy_out_raw(out.as_str())
        .await
        .map_err(|e| src_cluster.err(e))?;
    let mut counter = TupleCounter::default();
    let base = streamed.load(Ordering::Relaxed);
    while let Some(chunk) = source.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = sink.abort("source failed").await;
                return Err(src_cluster.err(e));
            }
        };
        counter.feed(&chunk);
        streamed.store(base + counter.tuples, Ordering::Relaxed);
        let len = chunk.len();
        if let Err(e) = sink.send(chunk).await {
            return Err(dst_cluster.err(e));
        }
        pace.admit(len).await;
    }
    drop(source);
    let rows = sink.finish().await.map_err(|e| dst_cluster.err(e))?;
    dst_tx.commit().await.map_err(|e| dst_cluster.err(e))?;
    src_tx.commit().await.map_err(|e| src_cluster.err(e))?;
    Ok(rows)
}

/// Session settings that fix the text form of values (for digests and text dumps), for the
/// current transaction.
pub const PINNED_SETTINGS: &str = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; \
     SET LOCAL bytea_output = 'hex'";

/// A transaction on `database` with [`PINNED_SETTINGS`] in force.
pub async fn pinned_transaction(
    cluster: &Cluster,
    database: &Ident,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, DataPlaneError> {
    let err = |e| cluster.err(e);
    let mut tx = cluster.database(database).begin().await.map_err(err)?;
    sqlx::raw_sql(PINNED_SETTINGS)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    Ok(tx)
}

/// Row count and content checksum of the tenant's rows in `table`. The text form of a row
/// depends on session settings, so they are pinned: two clusters with different defaults
/// (time zone, date style) must digest equal rows alike.
pub async fn digest(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
) -> Result<TableDigest, DataPlaneError> {
    digest_at(cluster, c, table, None).await
}

/// As [`digest`], read at an exported snapshot when one is given.
pub async fn digest_at(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
    snapshot: Option<&str>,
) -> Result<TableDigest, DataPlaneError> {
    let err = |e| cluster.err(e);
    let mut tx = cluster.database(&c.database).begin().await.map_err(err)?;
    if let Some(snapshot) = snapshot {
        at_snapshot(cluster, &mut tx, snapshot).await?;
    }
    sqlx::raw_sql(PINNED_SETTINGS)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    // OFFSET 0 keeps the subquery, so each row is rendered once, not once per hash.
    let stmt = Statement::new(
        "SELECT count(*), \
         coalesce(sum(hashtextextended(r, 0)::numeric), 0)::text || ':' || \
         coalesce(sum(hashtextextended(r, 1)::numeric), 0)::text \
         FROM (SELECT t::text AS r FROM ",
    )
    .qualified(&c.schema, table)
    .push(" t WHERE tenant_id = $1 OFFSET 0) rows");
    let (rows, checksum): (i64, String) = sqlx::query_as(stmt.into_sql())
        .bind(c.tenant_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(TableDigest { rows, checksum })
}

/// `FROM` the rows of `table` with the given keys (`$1`: a JSON array of arrays, each the
/// text form of one row's `key_columns`; `$2`: the key columns' names; `$3`: the tenant),
/// each as `e.n` (its key's 1-based position in `$1`) and `t` (its row). Looked up by key, so it costs what the keys
/// cost, not what the table holds.
fn keyed_rows(stmt: Statement, c: &Container, table: &Ident, key_columns: &[Ident]) -> Statement {
    let mut stmt = stmt
        .push(" FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(k, n) CROSS JOIN LATERAL jsonb_populate_record(NULL::")
        .qualified(&c.schema, table)
        .push(", jsonb_object($2::text[], ARRAY(SELECT jsonb_array_elements_text(e.k)))) AS p JOIN ")
        .qualified(&c.schema, table)
        .push(" AS t ON t.tenant_id = $3");
    for k in key_columns {
        stmt = stmt.push(" AND t.").ident(k).push(" = p.").ident(k);
    }
    stmt
}

/// Runs a [`keyed_rows`] query with its three parameters bound, with [`PINNED_SETTINGS`].
async fn query_keyed<T>(
    cluster: &Cluster,
    c: &Container,
    key_columns: &[Ident],
    keys: &serde_json::Value,
    stmt: Statement,
) -> Result<Vec<T>, DataPlaneError>
where
    T: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let err = |e| cluster.err(e);
    let mut tx = pinned_transaction(cluster, &c.database).await?;
    let names: Vec<&str> = key_columns.iter().map(Ident::as_str).collect();
    let rows = sqlx::query_as(stmt.into_sql())
        .bind(keys)
        .bind(&names)
        .bind(c.tenant_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(rows)
}

/// The part of a table's digest made of the rows with the given primary keys (`keys`: a JSON
/// array of arrays, each the text form of one row's `key_columns`): count and the two hash
/// sums, which add up over parts.
pub async fn digest_keys(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
    key_columns: &[Ident],
    keys: &serde_json::Value,
) -> Result<(i64, i128, i128), DataPlaneError> {
    let stmt = Statement::new(
        "SELECT count(*), coalesce(sum(hashtextextended(r, 0)::numeric), 0)::text, \
         coalesce(sum(hashtextextended(r, 1)::numeric), 0)::text \
         FROM (SELECT t::text AS r",
    );
    let stmt = keyed_rows(stmt, c, table, key_columns).push(" OFFSET 0) rows");
    let rows: Vec<(i64, String, String)> = query_keyed(cluster, c, key_columns, keys, stmt).await?;
    let (rows, a, b) = rows
        .into_iter()
        .next()
        .ok_or_else(|| DataPlaneError::Invariant("digest returned no row".into()))?;
    let sum = |v: &str| {
        v.parse::<i128>()
            .map_err(|_| DataPlaneError::Invariant(format!("digest sum {v}")))
    };
    Ok((rows, sum(&a)?, sum(&b)?))
}

/// Each row's two hashes, by its key's 1-based position in `keys`, for the rows with the
/// given keys that exist: comparing two ends key by key tells which rows differ.
pub async fn row_hashes(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
    key_columns: &[Ident],
    keys: &serde_json::Value,
) -> Result<std::collections::HashMap<i64, (i64, i64)>, DataPlaneError> {
    let stmt = Statement::new(
        "SELECT k, hashtextextended(r, 0), hashtextextended(r, 1) \
         FROM (SELECT e.n AS k, t::text AS r",
    );
    let stmt = keyed_rows(stmt, c, table, key_columns).push(" OFFSET 0) rows");
    let rows: Vec<(i64, i64, i64)> = query_keyed(cluster, c, key_columns, keys, stmt).await?;
    Ok(rows.into_iter().map(|(k, a, b)| (k, (a, b))).collect())
}

/// Counts the tuples in a binary COPY stream as it passes, whatever the chunk boundaries
/// (the format: a 19-byte header and its extension, then per tuple an int16 field count and
/// per field an int32 length and that many bytes; a count of -1 ends the stream).
#[derive(Debug, Default)]
struct TupleCounter {
    part: Part,
    /// The bytes of the fixed-size part being read.
    small: Vec<u8>,
    /// Bytes still to skip (header extension or field data).
    skip: usize,
    fields_left: i16,
    tuples: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Part {
    #[default]
    Header,
    TupleHead,
    FieldLen,
    Done,
}

impl TupleCounter {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let want = match self.part {
                Part::Header => 19,
                Part::TupleHead => 2,
                Part::FieldLen => 4,
                Part::Done => return,
            };
            let take = (want - self.small.len()).min(data.len());
            self.small.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.small.len() == want {
                self.complete();
                self.small.clear();
            }
        }
    }

    fn complete(&mut self) {
        let b = &self.small;
        match self.part {
            Part::Header => {
                self.skip = u32::from_be_bytes([b[15], b[16], b[17], b[18]]) as usize;
                self.part = Part::TupleHead;
            }
            Part::TupleHead => match i16::from_be_bytes([b[0], b[1]]) {
                -1 => self.part = Part::Done,
                n => {
                    self.tuples += 1;
                    self.fields_left = n;
                    self.part = if n > 0 {
                        Part::FieldLen
                    } else {
                        Part::TupleHead
                    };
                }
            },
            Part::FieldLen => {
                let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                self.skip = len.max(0) as usize;
                self.fields_left -= 1;
                if self.fields_left <= 0 {
                    self.part = Part::TupleHead;
                }
            }
            Part::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_spaces_the_bytes_and_builds_no_credit_while_idle() {
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let pace = Pace::megabytes_per_second(5);
        assert_eq!(pace.due(t0, 10_000_000), Some(t0 + s(2)));
        // Two tables copied at once share the rate.
        assert_eq!(pace.due(t0, 5_000_000), Some(t0 + s(3)));
        // After a pause (a slow table) the rate starts again from now, not with a burst.
        assert_eq!(pace.due(t0 + s(10), 5_000_000), Some(t0 + s(11)));
        assert_eq!(Pace::unbounded().due(t0, 1 << 30), None);
        assert_eq!(Pace::megabytes_per_second(0).due(t0, 1 << 30), None);
    }

    #[tokio::test]
    async fn a_pace_does_not_sleep_per_row() {
        // 4,000 rows of 250 bytes at 100 MB/s are due in 10 ms; a sleep per row would take
        // at least 4 s.
        let pace = Pace::megabytes_per_second(100);
        let started = std::time::Instant::now();
        for _ in 0..4_000 {
            pace.admit(250).await;
        }
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }

    fn stream(tuples: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
        out.extend(0u32.to_be_bytes());
        out.extend(3u32.to_be_bytes());
        out.extend(b"ext");
        for t in tuples {
            out.extend((t.len() as i16).to_be_bytes());
            for f in *t {
                match f {
                    None => out.extend((-1i32).to_be_bytes()),
                    Some(v) => {
                        out.extend((v.len() as i32).to_be_bytes());
                        out.extend(*v);
                    }
                }
            }
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    #[test]
    fn counts_tuples_across_any_chunking() {
        let data = stream(&[
            &[Some(b"abc"), None, Some(b"")],
            &[],
            &[Some(&[0u8; 300])],
            &[None],
        ]);
        for chunk in [1, 2, 3, 7, 19, 64, data.len()] {
            let mut c = TupleCounter::default();
            for piece in data.chunks(chunk) {
                c.feed(piece);
            }
            assert_eq!(c.tuples, 4, "chunks of {chunk}");
            assert_eq!(c.part, Part::Done);
        }
    }
}
