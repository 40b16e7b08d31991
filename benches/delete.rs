//! Deletion of a large pool tenant while other pool tenants work: one tenant holding N rows
//! (default 1,000,000, or `TENANTD_BENCH_ROWS`) across the healthcare tables, four neighbours
//! in the same shared tables running one transaction after another (a read query and a
//! write, as the pool application role), on an embedded, durable (fsync on) PostgreSQL.
//! Prints
//!
//! - the deletion's time, request to certificate, and per step;
//! - the neighbours' p99 latency (read query, whole transaction) while the rows are deleted,
//!   against their p99 just before (≤ 2.0 is the target).
//!
//! Run: `cargo bench --bench delete`

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::postgres::PgPoolOptions;

use common::load::{Load, ms, span, step_window};
use tenantd::api::pb;
use tenantd::workflow::Steps;
use tenantd::workflows::delete::Step;

const NEIGHBOURS: usize = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = common::rows();
    let running = common::start("delete").await?;
    let mut clients = running.clients.clone();
    let big = clients.provision("big", pb::Tier::Pool).await?;
    let mut neighbours = Vec::new();
    for i in 0..NEIGHBOURS {
        neighbours.push(
            clients
                .provision(&format!("neighbour-{i}"), pb::Tier::Pool)
                .await?,
        );
    }
    let shared = PgPoolOptions::new()
        .max_connections(8)
        .connect(&running.stack.postgres.url("tenants"))
        .await?;
    println!(
        "filling: {rows} rows for the deleted tenant, {} for each of {NEIGHBOURS} neighbours",
        rows / 50
    );
    let started = Instant::now();
    common::fill(&shared, "pool", big, rows).await?;
    for n in &neighbours {
        common::fill(&shared, "pool", *n, rows / 50).await?;
    }
    // A checkpoint now, so that the baseline is not measured during the fill's.
    for sql in ["VACUUM ANALYZE", "CHECKPOINT"] {
        sqlx::raw_sql(sql).execute(&shared).await?;
    }
    let mb = common::tenant_megabytes(&shared, "pool", big).await?;
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());

    // Warm-up (hint bits, caches), then the baseline: the neighbours' latency before the
    // deletion, over long enough a window that a stray autovacuum does not decide it.
    let load = Load::start(shared.clone(), neighbours.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let from = Utc::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = (from, Utc::now());
    let lsn = "SELECT pg_current_wal_lsn()::text";
    let wal_before: String = sqlx::query_scalar(lsn).fetch_one(&shared).await?;
    let requested = Instant::now();
    let op = clients
        .deletions
        .delete_tenant(pb::DeleteTenantRequest {
            tenant: big.to_string(),
            reason: "benchmark".into(),
            requested_by: "bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let op = clients.wait(op.name).await?;
    let total = requested.elapsed();
    let wal_after: String = sqlx::query_scalar(lsn).fetch_one(&shared).await?;
    let (wal,): (f64,) = sqlx::query_as("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8")
        .bind(&wal_after)
        .bind(&wal_before)
        .fetch_one(&shared)
        .await?;
    let Some(pb::operation::Result::Certificate(c)) = &op.result else {
        anyhow::bail!("deletion failed: {:?}", op.result);
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let deleting = step_window(&op, "delete_data")?;
    let (b_read, b_txn) = load.p99s(before);
    let (d_read, d_txn) = load.p99s(deleting);
    println!();
    println!(
        "deleted {rows} rows ({mb:.1} MB) of one pool tenant in {:.2} s, request to signed \
         certificate ({}, {} bytes)",
        total.as_secs_f64(),
        c.name,
        c.document.len()
    );
    for step in Step::names() {
        let s = span(step_window(&op, step)?);
        println!("  {step:<15} {:>9.0} ms", ms(s));
    }
    let secs = span(deleting).as_secs_f64();
    println!(
        "  WAL written while deleting (neighbours' included): {:.1} MB",
        wal / 1e6
    );
    println!(
        "  delete_data: {:.0} rows/s, {:.1} MB/s",
        rows as f64 / secs,
        mb / secs
    );
    for (what, b, d) in [("read query", b_read, d_read), ("write txn ", b_txn, d_txn)] {
        println!(
            "  neighbours' {what} p99: before {:.2} ms (n={}), while deleting {:.2} ms (n={}): \
             ratio {:.2} (target <= 2.0)",
            ms(b.0),
            b.1,
            ms(d.0),
            d.1,
            ms(d.0) / ms(b.0).max(1e-3)
        );
    }
    println!(
        "Neighbours: {NEIGHBOURS} other pool tenants, one transaction after another, each a read \
         query (patients by name) and a write (an audit event) as the pool application role."
    );
    running.stop().await
}
