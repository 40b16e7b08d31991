//! One tenant's data as a plain SQL dump (format: docs/export.md), read in one REPEATABLE
//! READ, READ ONLY snapshot while the tenant keeps working: no fence, no lock beyond the
//! ACCESS SHARE every reader takes.
//!
//! The DDL is rebuilt from the catalog the way pg_dump does it ([`super::ddl`]: types,
//! sequences, tables and partitions first); then each table's rows as a `COPY … FROM stdin`
//! block holding this tenant's rows only (`WHERE tenant_id = …` in every tier, so a pool
//! table never leaks a neighbour); then sequences moved past the tenant's values, primary
//! keys, unique constraints, indexes and foreign keys. Row-level security, policies,
//! triggers and tenantd's own tables are not tenant data and are left out. Objects land in
//! schema `public` of the database the dump is restored into.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::archive::manifest::TableRows;
use crate::dataplane::copy::PINNED_SETTINGS;
use crate::dataplane::ddl::Table;
use crate::dataplane::load::{COMPLETE_LINE, FORMAT_LINE};
use crate::dataplane::{Cluster, Container, DataPlaneError};
use crate::sql::{Ident, Statement};

/// Plaintext is handed on in pieces of about this size (COPY yields one message per row).
const BATCH: usize = 256 * 1024;

/// What the dump header records besides the data.
pub struct DumpInfo<'a> {
    pub tenant_slug: &'a str,
    pub export_id: &'a str,
    pub schema_version: i32,
    /// The moment the data is of, when not the snapshot's start: a copy restored to that
    /// moment (a point-in-time restore).
    pub as_of: Option<DateTime<Utc>>,
}

/// How far a running dump is, for progress reports: the tables done and the rows of the
/// table being read so far.
#[derive(Default)]
pub struct DumpProgress {
    done: std::sync::Mutex<Vec<TableRows>>,
    current: std::sync::Mutex<Option<String>>,
    current_rows: std::sync::atomic::AtomicU64,
}

impl DumpProgress {
    /// Per table: (name, rows so far, finished).
    pub fn tables(&self) -> Vec<(String, u64, bool)> {
        let mut out: Vec<(String, u64, bool)> = self
            .done
            .lock()
            .expect("progress lock")
            .iter()
            .map(|t| (t.table.clone(), t.rows, true))
            .collect();
        if let Some(name) = self.current.lock().expect("progress lock").clone() {
            let rows = self.current_rows.load(std::sync::atomic::Ordering::Relaxed);
            out.push((name, rows, false));
        }
        out
    }
}

pub struct DumpSummary {
    pub tables: Vec<TableRows>,
    pub snapshot_at: DateTime<Utc>,
}

/// Sends plaintext on in batches.
struct Out<'a> {
    tx: &'a mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Out<'_> {
    async fn push(&mut self, data: &[u8]) -> Result<(), DataPlaneError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DataPlaneError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH + 64 * 1024));
        self.tx
            .send(batch)
            .await
            .map_err(|_| DataPlaneError::Invariant("export pipeline stopped".into()))
    }
}

/// Dumps the tenant in `c` into `out`.
pub async fn dump(
    cluster: &Cluster,
    c: &Container,
    info: &DumpInfo<'_>,
    out: &mpsc::Sender<Vec<u8>>,
    progress: &DumpProgress,
) -> Result<DumpSummary, DataPlaneError> {
    let err = |e| cluster.err(e);
    let mut tx = cluster.database(&c.database).begin().await.map_err(err)?;
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    sqlx::raw_sql(PINNED_SETTINGS)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    // Unqualified names in catalog output (foreign key targets) then mean the tenant's
    // tables; the RLS setting makes policies (if the role is subject to them) show this
    // tenant's rows, which the WHERE clause selects anyway.
    let setup = Statement::new("SET LOCAL search_path TO ")
        .ident(&c.schema)
        .push("; SELECT set_config('app.tenant_id', ")
        .literal(&c.tenant_id.to_string())?
        .push(", true)");
    sqlx::raw_sql(setup.into_sql())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    // The first statement fixes the snapshot; now() is its start.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
    let snapshot_at = info.as_of.unwrap_or(now);
    let ddl = super::ddl::read(cluster, &mut tx, &c.schema).await?;
    let tables = &ddl.tables;

    let mut out = Out {
        tx: out,
        buf: Vec::with_capacity(BATCH + 64 * 1024),
    };
    out.push(preamble(c, info, snapshot_at).as_bytes()).await?;
    out.push(ddl.pre_data().as_bytes()).await?;
    for t in tables {
        *progress.current.lock().expect("progress lock") = Some(t.name.as_str().to_owned());
        progress
            .current_rows
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let rows = copy_rows(cluster, &mut tx, c, t, &mut out, &progress.current_rows).await?;
        *progress.current.lock().expect("progress lock") = None;
        progress
            .done
            .lock()
            .expect("progress lock")
            .push(TableRows {
                table: t.name.as_str().to_owned(),
                rows,
            });
    }
    let counts = progress.done.lock().expect("progress lock").clone();
    let max_values = sequenced_max(cluster, &mut tx, c, tables).await?;
    out.push(ddl.post_data(&max_values).as_bytes()).await?;
    out.push(format!("--\n{COMPLETE_LINE}\n--\n").as_bytes())
        .await?;
    out.flush().await?;
    tx.commit().await.map_err(err)?;
    Ok(DumpSummary {
        tables: counts,
        snapshot_at,
    })
}

fn preamble(c: &Container, info: &DumpInfo<'_>, snapshot_at: DateTime<Utc>) -> String {
    format!(
        "--\n\
         -- tenantd export {export}\n\
         -- tenant {tenant} ({slug}), {tier} tier, schema version {version}\n\
         -- snapshot {snapshot}\n\
         {FORMAT_LINE}\n\
         --\n\n\
         SET statement_timeout = 0;\n\
         SET lock_timeout = 0;\n\
         SET idle_in_transaction_session_timeout = 0;\n\
         SET client_encoding = 'UTF8';\n\
         SET standard_conforming_strings = on;\n\
         SELECT pg_catalog.set_config('search_path', 'public', false);\n\
         SET check_function_bodies = false;\n\
         SET xmloption = content;\n\
         SET client_min_messages = warning;\n\
         SET row_security = off;\n\
         SET TimeZone = 'UTC';\n\
         SET DateStyle = 'ISO, YMD';\n\
         SET IntervalStyle = 'postgres';\n\n",
        export = info.export_id,
        tenant = c.tenant_id,
        slug = info.tenant_slug,
        tier = c.tier,
        version = info.schema_version,
        snapshot = snapshot_at.to_rfc3339(),
    )
}

/// The highest value the tenant's rows hold in each column a sequence fills: the restored
/// sequence starts past it. The tenant's own rows only: a pool sequence's position would tell
/// how many rows the other tenants wrote.
async fn sequenced_max(
    cluster: &Cluster,
    conn: &mut PgConnection,
    c: &Container,
    tables: &[Table],
) -> Result<Vec<(Ident, Ident, i64)>, DataPlaneError> {
    let mut out = Vec::new();
    for t in tables {
        for col in t.sequenced_columns() {
            let stmt = Statement::new("SELECT max(")
                .ident(&col.name)
                .push(")::bigint FROM ")
                .qualified(&c.schema, &t.name)
                .push(" WHERE tenant_id = $1");
            let max: Option<i64> = sqlx::query_scalar(stmt.into_sql())
                .bind(c.tenant_id)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| cluster.err(e))?;
            if let Some(max) = max {
                out.push((t.name.clone(), col.name.clone(), max));
            }
        }
    }
    Ok(out)
}

async fn copy_rows(
    cluster: &Cluster,
    conn: &mut PgConnection,
    c: &Container,
    t: &Table,
    out: &mut Out<'_>,
    streamed: &std::sync::atomic::AtomicU64,
) -> Result<u64, DataPlaneError> {
    let names: Vec<String> = t.copied_columns().map(|col| col.name.to_string()).collect();
    let names = names.join(", ");
    out.push(
        format!(
            "--\n-- Data for Name: {table}; Type: TABLE DATA\n--\n\nCOPY public.{table} ({names}) FROM stdin;\n",
            table = t.name
        )
        .as_bytes(),
    )
    .await?;
    let mut stmt = Statement::new("COPY (SELECT ");
    for (i, col) in t.copied_columns().enumerate() {
        if i > 0 {
            stmt = stmt.push(", ");
        }
        stmt = stmt.ident(&col.name);
    }
    let stmt = stmt
        .push(" FROM ")
        .qualified(&c.schema, &t.name)
        .push(" WHERE tenant_id = ")
        .literal(&c.tenant_id.to_string())?
        .push(") TO STDOUT");
    let mut rows = 0u64;
    let mut stream = conn
        .copy_out_raw(stmt.as_str())
        .await
        .map_err(|e| cluster.err(e))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| cluster.err(e))?;
        // Text COPY escapes newlines inside values: one '\n' per row.
        rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        streamed.store(rows, std::sync::atomic::Ordering::Relaxed);
        out.push(&chunk).await?;
    }
    drop(stream);
    out.push(b"\\.\n\n").await?;
    Ok(rows)
}
