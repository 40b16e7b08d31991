//! Tier-change throughput and impact: tenants of 1M and 5M rows (or the comma-separated
//! sizes in `TENANTD_BENCH_ROWS`) across the healthcare tables are each promoted pool →
//! schema, then schema → database, on an embedded, durable (fsync on) PostgreSQL, while they
//! write through an issued login. For each move it prints
//!
//! - the copy step's MB/s, and the ratio to a `psql \copy (SELECT … WHERE tenant_id = …) TO
//!   STDOUT | psql \copy … FROM STDIN` pipeline run in the same process on the same data into
//!   identical tables (goal ≥ 1.5);
//! - the write pause (fence → unfence) and what it is made of, and the pause as the tenant's
//!   own writer saw it; the catch-up rounds with their lag; the WAL the move's slot retained
//!   at peak;
//! - the p99 latency of other pool tenants' queries (a read and a write per transaction)
//!   while copying and during the move's cleanup, against their p99 before the move (goal
//!   ≤ 2.0);
//! - the largest size's pause against the smallest's (goal ≤ 1.5).
//!
//! Each size then moves back database → schema with the online copy paced
//! (`copy_mb_per_s`, `TENANTD_BENCH_PACE_MB`, default 8): the neighbours' p99 against the
//! longer copy.
//!
//! Run: `cargo bench --bench change_tier`

mod common;

use common::load::{Load, P99, ms, span, step_window};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::dataplane::{catalog, tables};
use tenantd::sql::Ident;

const NEIGHBOURS: usize = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let running = common::start("change-tier").await?;
    let stack = &running.stack;
    let mut bench = Bench {
        clients: running.clients.clone(),
        shared_url: stack.postgres.url("tenants"),
        url: Box::new({
            let pg = stack.postgres.url("postgres");
            let base = pg
                .strip_suffix("/postgres")
                .expect("url ends in the database")
                .to_owned();
            move |db: &str| format!("{base}/{db}")
        }),
    };

    let sizes = sizes();
    // The paced move's bound, MB/s (`TENANTD_BENCH_PACE_MB`).
    let pace: u32 = std::env::var("TENANTD_BENCH_PACE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut neighbours = Vec::new();
    for i in 0..NEIGHBOURS {
        neighbours.push(
            bench
                .clients
                .provision(&format!("neighbour-{i}"), pb::Tier::Pool)
                .await?,
        );
    }
    let shared = PgPoolOptions::new()
        .max_connections(8)
        .connect(&bench.shared_url)
        .await?;
    let neighbour_rows = sizes[0] / 50;
    for n in &neighbours {
        common::fill(&shared, "pool", *n, neighbour_rows).await?;
    }
    let load = Load::start(shared.clone(), neighbours.clone());
    let mut report = Vec::new();
    for (k, &rows) in sizes.iter().enumerate() {
        println!(
            "filling: {rows} rows for the moving tenant ({neighbour_rows} for each of \
             {NEIGHBOURS} neighbours)"
        );
        let big = bench
            .clients
            .provision(&format!("big-{k}"), pb::Tier::Pool)
            .await?;
        let started = Instant::now();
        common::fill(&shared, "pool", big, rows).await?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(&shared).await?;
        println!("filled in {:.1} s", started.elapsed().as_secs_f64());
        // The moving tenant itself writes throughout, through an issued login that follows
        // the routing, as its application would.
        let writer = TenantWriter::start(bench.clients.clone(), big, (rows / 10).max(1));
        // Then back, the copy paced: what sparing the neighbours costs the move.
        for (tier, scratch_db, pace) in [
            (pb::Tier::Schema, "tenants", 0),
            (pb::Tier::Database, "bench_psql", 0),
            // (Its pipeline loads a scratch database: the source is the tenant's own.)
            (pb::Tier::Schema, "bench_psql", pace),
        ] {
            let placed = bench.clients.placement(big).await?;
            let in_db = PgPoolOptions::new()
                .max_connections(1)
                .connect(&(bench.url)(&placed.database))
                .await?;
            let mb = common::tenant_megabytes(&in_db, &placed.schema, big).await?;
            in_db.close().await;
            let psql = bench
                .psql_pipeline(&placed.database, &placed.schema, scratch_db, big)
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = (Utc::now() - chrono::Duration::seconds(2), Utc::now());
            let from = placed.schema.clone();
            writer.reset();
            let op = bench.clients.change_tier_paced(big, tier, pace).await?;
            let written = writer.report();
            // The neighbours' load keeps running through the second after the cleanup started.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut r = Report::new(&from, tier, (rows, mb), psql, &op, &load, before)?;
            r.writer = Some(written);
            if pace > 0 {
                r.name = format!("database -> schema, paced at {pace} MB/s");
            }
            report.push(r);
        }
        writer.stop.cancel();
    }
    load.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;

    println!();
    for r in &report {
        r.print();
    }
    if let (Some(&small), Some(&large)) = (sizes.first(), sizes.last())
        && large > small
    {
        for name in ["pool -> schema", "schema -> database"] {
            let pause = |rows: i64| {
                report
                    .iter()
                    .find(|r| r.rows == rows && r.name == name)
                    .map(|r| r.pause_ms as f64)
            };
            if let (Some(a), Some(b)) = (pause(small), pause(large)) {
                println!(
                    "{name}: write pause at {large} rows / at {small} rows = {:.0} / {:.0} ms = \
                     {:.2} (target <= 1.5)",
                    b,
                    a,
                    b / a.max(1.0)
                );
            }
        }
    }
    println!(
        "Neighbours: {NEIGHBOURS} other pool tenants, one transaction after another, each a read \
         query (patients by name) and a write (an audit event) as the pool application role."
    );
    println!(
        "The copy (verified at its snapshot, inside the copy step's time) and the catch-up run \
         while the tenant writes; the write pause spans fence -> tail -> verify of the rows written \
         meanwhile -> switch -> unfence, see docs/tier-changes.md."
    );

    running.stop().await
}

/// The moving tenant's own application: every 5 ms a transaction inserting an audit event
/// and renaming a patient, through an issued login, re-issued when a write is fenced or the
/// session ends (so it follows the routing). It records how many writes succeeded, how many
/// met the fence, and the longest time between two successful writes: the pause as the
/// application saw it, reconnection included.
struct TenantWriter {
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    fenced: std::sync::Arc<std::sync::atomic::AtomicU64>,
    longest_gap: std::sync::Arc<std::sync::Mutex<Duration>>,
    stop: tokio_util::sync::CancellationToken,
}

/// What the tenant's own writer saw during one move.
#[derive(Debug, Clone, Copy)]
struct Written {
    acked: u64,
    fenced: u64,
    longest_gap: Duration,
}

impl TenantWriter {
    fn start(mut clients: common::Clients, tenant: Uuid, patients: i64) -> TenantWriter {
        use std::sync::atomic::Ordering;
        let w = TenantWriter {
            acked: Default::default(),
            fenced: Default::default(),
            longest_gap: Default::default(),
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let (acked, fenced, gap, stop) = (
            w.acked.clone(),
            w.fenced.clone(),
            w.longest_gap.clone(),
            w.stop.clone(),
        );
        tokio::spawn(async move {
            use sqlx::{ConnectOptions, Connection};
            let mut conn: Option<sqlx::PgConnection> = None;
            let mut last = Instant::now();
            let mut i = 0i64;
            while !stop.is_cancelled() {
                let Some(c) = conn.as_mut() else {
                    let issued = clients
                        .tenants
                        .issue_credentials(pb::IssueCredentialsRequest {
                            tenant: tenant.to_string(),
                            ttl_seconds: 0,
                        })
                        .await;
                    if let Ok(issued) = issued {
                        let uri = issued.into_inner().connection_uri;
                        if let Ok(opts) = uri.parse::<sqlx::postgres::PgConnectOptions>() {
                            conn = opts.connect().await.ok();
                        }
                    }
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                };
                i += 1;
                let r: Result<(), sqlx::Error> = async {
                    let mut tx = c.begin().await?;
                    sqlx::query(
                        "INSERT INTO audit_events (tenant_id, actor, action, entity)
                         VALUES ($1, 'bench-writer', 'write', 'patient')",
                    )
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("UPDATE patients SET given_name = $1 WHERE mrn = $2")
                        .bind(format!("Renamed {i}"))
                        .bind(format!("mrn-{}", i % patients + 1))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await
                }
                .await;
                match r {
                    Ok(()) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        {
                            let mut g = gap.lock().unwrap();
                            *g = (*g).max(now - last);
                        }
                        last = now;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        let code = e.as_database_error().and_then(|d| d.code());
                        if code.as_deref() == Some(tenantd::dataplane::fence::SQLSTATE) {
                            fenced.fetch_add(1, Ordering::Relaxed);
                        }
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        });
        w
    }

    /// Starts counting afresh (for the next move).
    fn reset(&self) {
        use std::sync::atomic::Ordering;
        self.acked.store(0, Ordering::Relaxed);
        self.fenced.store(0, Ordering::Relaxed);
        *self.longest_gap.lock().unwrap() = Duration::ZERO;
    }

    fn report(&self) -> Written {
        use std::sync::atomic::Ordering;
        Written {
            acked: self.acked.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            longest_gap: *self.longest_gap.lock().unwrap(),
        }
    }
}

struct Bench {
    clients: common::Clients,
    shared_url: String,
    url: Box<dyn Fn(&str) -> String>,
}

impl Bench {
    /// Times `psql \copy … TO STDOUT | psql \copy … FROM STDIN`, table by table in foreign-key
    /// order, into a scratch container migrated exactly like tenantd's targets; then drops it.
    async fn psql_pipeline(
        &self,
        from_db: &str,
        from_schema: &str,
        scratch_db: &str,
        tenant: Uuid,
    ) -> anyhow::Result<Duration> {
        let scratch_schema = "bench_psql";
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&(self.url)("postgres"))
            .await?;
        if scratch_db != from_db {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {scratch_db}")))
                .execute(&admin)
                .await?;
        }
        let scratch = PgPoolOptions::new()
            .max_connections(1)
            .connect(&(self.url)(scratch_db))
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {scratch_schema}"
        )))
        .execute(&scratch)
        .await?;
        let cluster = tenantd::dataplane::DataPlane::new(
            &[tenantd::config::ClusterConfig {
                name: "bench".into(),
                admin_url: (self.url)(scratch_db),
                public_host: None,
                public_port: None,
                shared_database: scratch_db.into(),
            }],
            std::sync::Arc::new(tenantd::tenant_schema::TenantSchema::example()),
        )
        .map_err(anyhow::Error::msg)?;
        let cluster = cluster.cluster("bench")?;
        catalog::migrate(
            cluster,
            &scratch,
            &Ident::from_static(scratch_schema),
            tenantd::tenant_schema::TenantSchema::example().latest(),
        )
        .await?;
        let (src_url, dst_url) = ((self.url)(from_db), (self.url)(scratch_db));
        let started = Instant::now();
        for table in tables::names_in(&scratch, scratch_schema).await? {
            let out = format!(
                "\\copy (SELECT * FROM \"{from_schema}\".{table} WHERE tenant_id = '{tenant}') TO STDOUT"
            );
            let into = format!("\\copy {scratch_schema}.{table} FROM STDIN");
            let (src_url, dst_url) = (src_url.clone(), dst_url.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut reader = Command::new("psql")
                    .args([
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-d",
                        &src_url,
                        "-c",
                        &out,
                    ])
                    .stdout(Stdio::piped())
                    .spawn()?;
                let writer = Command::new("psql")
                    .args([
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-d",
                        &dst_url,
                        "-c",
                        &into,
                    ])
                    .stdin(reader.stdout.take().expect("piped"))
                    .stdout(Stdio::null())
                    .status()?;
                anyhow::ensure!(reader.wait()?.success() && writer.success(), "psql failed");
                Ok(())
            })
            .await??;
        }
        let elapsed = started.elapsed();
        scratch.close().await;
        if scratch_db != from_db {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {scratch_db} WITH (FORCE)"
            )))
            .execute(&admin)
            .await?;
        } else {
            let shared = PgPoolOptions::new().connect(&self.shared_url).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA {scratch_schema} CASCADE"
            )))
            .execute(&shared)
            .await?;
        }
        Ok(elapsed)
    }
}

/// The tenant sizes to move, smallest first: `TENANTD_BENCH_ROWS` (a comma-separated list),
/// by default 1M and 5M rows.
fn sizes() -> Vec<i64> {
    let mut sizes: Vec<i64> = std::env::var("TENANTD_BENCH_ROWS")
        .unwrap_or_else(|_| "1000000,5000000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    if sizes.is_empty() {
        sizes.push(1_000_000);
    }
    sizes.sort();
    sizes
}

/// What one move measured.
struct Report {
    name: String,
    rows: i64,
    mb: f64,
    copy: Duration,
    psql: Duration,
    pause_ms: i64,
    /// The fenced steps: waiting out older writers, the tail, verifying what changed.
    fence: Duration,
    tail: Duration,
    verify: Duration,
    catch_up: Duration,
    details: pb::TierChange,
    writer: Option<Written>,
    cleanup_time: Duration,
    /// (read query, transaction) p99s before the move, while copying and verifying, and from
    /// the cleanup's start.
    before: (P99, P99),
    copying: (P99, P99),
    cleanup: (P99, P99),
}

impl Report {
    fn new(
        from: &str,
        tier: pb::Tier,
        (rows, mb): (i64, f64),
        psql: Duration,
        op: &pb::Operation,
        load: &Load,
        before: (DateTime<Utc>, DateTime<Utc>),
    ) -> anyhow::Result<Report> {
        let cleanup = step_window(op, "cleanup")?;
        // At least a second from the cleanup's start, so that a quick DROP is measured with
        // its aftermath and enough samples for a p99.
        let after = (
            cleanup.0,
            cleanup.1.max(cleanup.0 + chrono::Duration::seconds(1)),
        );
        let details = match op.metadata.as_ref().and_then(|m| m.details.clone()) {
            Some(pb::operation_metadata::Details::TierChange(t)) => t,
            _ => anyhow::bail!("no tier change details"),
        };
        let pause_ms = details.write_pause_ms;
        let from = if from == "pool" { "pool" } else { "schema" };
        let to = tier
            .as_str_name()
            .trim_start_matches("TIER_")
            .to_lowercase();
        Ok(Report {
            name: format!("{from} -> {to}"),
            rows,
            mb,
            copy: span(step_window(op, "copy")?),
            psql,
            pause_ms,
            fence: span(step_window(op, "fence")?),
            tail: span(step_window(op, "tail")?),
            verify: span(step_window(op, "verify")?),
            catch_up: span(step_window(op, "catch_up")?),
            details,
            writer: None,
            cleanup_time: span(cleanup),
            before: load.p99s(before),
            copying: load.p99s((step_window(op, "copy")?.0, step_window(op, "verify")?.1)),
            cleanup: load.p99s(after),
        })
    }

    fn print(&self) {
        let copy = self.copy.as_secs_f64();
        println!(
            "{} at {} rows: {:.1} MB of tenant rows",
            self.name, self.rows, self.mb
        );
        println!(
            "  copy        {copy:.2} s = {:.1} MB/s; psql \\copy pipeline {:.2} s; \
             ratio {:.2} (target >= 1.5)",
            self.mb / copy,
            self.psql.as_secs_f64(),
            self.psql.as_secs_f64() / copy
        );
        let d = &self.details;
        println!(
            "  write pause {} ms (fence and wait-out {:.0} ms, tail {:.0} ms = {} changes, verify {:.0} ms = {} rows; target < 1000 ms), online {}",
            self.pause_ms,
            ms(self.fence),
            ms(self.tail),
            d.tail_changes,
            ms(self.verify),
            d.verified_changed_rows,
            d.online
        );
        println!(
            "  catch-up    {:.0} ms: {} rounds, {} changes, {} bytes behind after the last (outside the fence)",
            ms(self.catch_up),
            d.catch_up_rounds,
            d.catch_up_changes,
            d.lag_bytes
        );
        let rounds: Vec<String> = d
            .recent_rounds
            .iter()
            .map(|r| {
                format!(
                    "{}: {} in {} ms, {} B behind",
                    r.round, r.changes, r.elapsed_ms, r.lag_bytes
                )
            })
            .collect();
        println!("  rounds      {}", rounds.join("; "));
        println!(
            "  WAL retained by the move's slot at peak: {:.1} MB",
            d.peak_retained_wal_bytes as f64 / 1e6
        );
        if let Some(w) = &self.writer {
            println!(
                "  tenant's own writer: {} transactions acknowledged during the move, {} met the fence; longest gap between two acknowledged writes {:.0} ms (its pause, reconnecting included)",
                w.acked,
                w.fenced,
                ms(w.longest_gap)
            );
        }
        println!("  cleanup     {:.0} ms", ms(self.cleanup_time));
        for (what, pick) in [("read query", 0usize), ("write txn ", 1usize)] {
            let get = |p: &(P99, P99)| if pick == 0 { p.0 } else { p.1 };
            let (b, c, d) = (get(&self.before), get(&self.copying), get(&self.cleanup));
            println!(
                "  neighbours' {what} p99: before {:.2} ms (n={}), copying {:.2} ms, \
                 cleanup {:.2} ms (n={}): copying/before {:.2}, cleanup/before {:.2} \
                 (targets <= 2.0)",
                ms(b.0),
                b.1,
                ms(c.0),
                ms(d.0),
                d.1,
                ms(c.0) / ms(b.0).max(1e-3),
                ms(d.0) / ms(b.0).max(1e-3),
            );
        }
    }
}
