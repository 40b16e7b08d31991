//! Export throughput and memory: a tenant holding N rows (default 1,000,000, or
//! `TENANTD_BENCH_ROWS`) across the healthcare tables is exported from the schema tier and,
//! after a move, from the database tier, on an embedded, durable PostgreSQL, to the local
//! object store. For each it prints
//!
//! - the export's MB/s (tenant rows in their text form) and the ratio to `pg_dump` in plain
//!   format piped to `zstd -3` of the same schema (schema tier) or the same database
//!   (database tier), timed in the same run: ≥ 1.0 means tenantd, which also encrypts,
//!   hashes twice and uploads, is at least as fast. Best of two runs each, same warm cache;
//! - the peak RSS of the whole bench process (tenantd runs in it) during the export, at two
//!   tenant sizes (N and N/10): flat memory means both stay well under 100 MB.
//!
//! Run: `cargo bench --bench export`

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use tenantd::api::pb;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = common::rows();
    let pg_dump = pg_dump_binary();
    let running = common::start("export").await?;
    let mut c = running.clients.clone();
    let url = |db: &str| running.stack.postgres.url(db);

    let big = c.provision("big", pb::Tier::Schema).await?;
    let small = c.provision("small", pb::Tier::Schema).await?;
    let shared = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url("tenants"))
        .await?;
    println!(
        "filling: {rows} rows for tenant big, {} for tenant small",
        rows / 10
    );
    let started = Instant::now();
    let big_schema = c.placement(big).await?.schema;
    let small_schema = c.placement(small).await?.schema;
    common::fill(&shared, &big_schema, big, rows).await?;
    common::fill(&shared, &small_schema, small, rows / 10).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&shared).await?;
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());
    let mb_big = common::tenant_megabytes(&shared, &big_schema, big).await?;
    let mb_small = common::tenant_megabytes(&shared, &small_schema, small).await?;

    let schema_export = best_export(&mut c, big).await?;
    let schema_dump = best_pg_dump(&pg_dump, &url("tenants"), Some(&big_schema))?;
    let small_export = best_export(&mut c, small).await?;

    c.change_tier(big, pb::Tier::Database).await?;
    let db = c.placement(big).await?.database;
    let db_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url(&db))
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&db_pool).await?;
    db_pool.close().await;
    let database_export = best_export(&mut c, big).await?;
    let database_dump = best_pg_dump(&pg_dump, &url(&db), None)?;

    println!();
    for (what, export, (dump, dump_mb)) in [
        ("schema tier", &schema_export, schema_dump),
        ("database tier", &database_export, database_dump),
    ] {
        println!("export from the {what}: {rows} rows, {mb_big:.1} MB of tenant rows");
        println!(
            "  tenantd export {:.2} s ({:.1} MB/s, encrypted archive {:.1} MB) vs \
             pg_dump | zstd -3 {:.2} s ({:.1} MB): ratio {:.2} (target >= 1.0)",
            export.secs,
            mb_big / export.secs,
            export.archive_mb,
            dump.as_secs_f64(),
            dump_mb,
            dump.as_secs_f64() / export.secs
        );
    }
    println!(
        "peak RSS during export: {:.1} MB at {} rows ({mb_small:.1} MB), {:.1} MB at {rows} rows \
         ({mb_big:.1} MB); target < 100 MB at both (whole bench process, tenantd included; \
         {:.1} MB before the exports)",
        small_export.peak_rss_mb,
        rows / 10,
        schema_export.peak_rss_mb.max(database_export.peak_rss_mb),
        schema_export.rss_before_mb
    );
    running.stop().await
}

struct Measured {
    secs: f64,
    archive_mb: f64,
    peak_rss_mb: f64,
    rss_before_mb: f64,
}

/// Two exports of `tenant`; the faster, with the higher peak RSS of the two.
async fn best_export(c: &mut common::Clients, tenant: Uuid) -> anyhow::Result<Measured> {
    let mut best: Option<Measured> = None;
    for _ in 0..2 {
        let rss_before_mb = status_mb("VmRSS")?;
        // Resets the process's peak RSS (VmHWM) so it measures this export only.
        std::fs::write("/proc/self/clear_refs", "5")?;
        let started = Instant::now();
        let e = c.export(tenant).await?;
        let secs = started.elapsed().as_secs_f64();
        let m = Measured {
            secs,
            archive_mb: e.size_bytes as f64 / 1e6,
            peak_rss_mb: status_mb("VmHWM")?,
            rss_before_mb,
        };
        best = Some(match best {
            Some(b) if b.secs <= m.secs => Measured {
                peak_rss_mb: b.peak_rss_mb.max(m.peak_rss_mb),
                ..b
            },
            Some(b) => Measured {
                peak_rss_mb: b.peak_rss_mb.max(m.peak_rss_mb),
                ..m
            },
            None => m,
        });
    }
    Ok(best.expect("two runs"))
}

/// `pg_dump --format=plain [-n schema] | zstd -3`: the faster of two runs, and the size of
/// the compressed dump in MB.
fn best_pg_dump(pg_dump: &str, url: &str, schema: Option<&str>) -> anyhow::Result<(Duration, f64)> {
    let mut best = Duration::MAX;
    let out =
        std::env::temp_dir().join(format!("tenantd-bench-pg_dump-{}.zst", std::process::id()));
    for _ in 0..2 {
        let started = Instant::now();
        let mut dump = Command::new(pg_dump);
        dump.args(["--format=plain", "--no-sync", "-d", url]);
        if let Some(s) = schema {
            dump.args(["-n", s]);
        }
        let mut dump = dump.stdout(Stdio::piped()).spawn()?;
        let zstd = Command::new("zstd")
            .args(["-3", "-q", "-c"])
            .stdin(dump.stdout.take().expect("piped"))
            .stdout(std::fs::File::create(&out)?)
            .status()?;
        let status = dump.wait()?;
        anyhow::ensure!(status.success() && zstd.success(), "pg_dump | zstd failed");
        best = best.min(started.elapsed());
    }
    let mb = std::fs::metadata(&out)?.len() as f64 / 1e6;
    std::fs::remove_file(&out)?;
    Ok((best, mb))
}

/// pg_dump of the same major version as the embedded server.
fn pg_dump_binary() -> String {
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/pg_dump"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "pg_dump".into())
}

fn status_mb(field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/self/status"))?;
    Ok(kb / 1024.0)
}
