//! Point-in-time restore of one tenant: a schema-tier tenant of N rows (default 1,000,000, or
//! `TENANTD_BENCH_ROWS`) on the embedded cluster archiving through pgBackRest (as
//! `tenantd dev` runs it), a full base backup, a moment T, a bad import that changes a tenth
//! of the tenant's patients, then
//!
//! - **tenantd**: `RestoreTenant { tenant, point_in_time: T }` in place, request to
//!   SUCCEEDED, with each phase's time (preflight, fetch backup, replay WAL, extract, verify
//!   and swap);
//! - **by hand**, in the same run, on the same backup: `pgbackrest restore --type=time` of the
//!   cluster into a side directory (with the same `--db-include` tenantd uses), the copy
//!   started and waited for until recovery paused at T, `pg_dump -n <schema>` of the tenant
//!   from it, and `psql -f` of that dump into an empty database: the runbook a DBA follows,
//!   without tenantd's verification, encryption or atomic swap.
//!
//! It prints both totals, each phase, and the ratio (by hand / tenantd: ≥ 1.0 means tenantd
//! is at least as fast). Both restored copies are checked against the tenant as at T.
//!
//! Run: `cargo bench --bench pitr`

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use tenantd::api::pb;
use tenantd::pitr::side::SideCluster;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = common::rows();
    let running = common::start_with("pitr", true, |_| {}).await?;
    let mut c = running.clients.clone();
    let url = |db: &str| running.stack.postgres.url(db);
    let config = running.stack.config.clone();
    let pitr = config.pitr.clone().ok_or_else(|| {
        anyhow::anyhow!("pgbackrest is not installed (scripts/setup installs it)")
    })?;
    let pgbackrest = tenantd::pitr::configure(&pitr, &config.clusters)?;
    let stanza = tenantd::dev::DEV_CLUSTER;

    let (tenant, shared, schema, mb) = common::big_schema_tenant(&running, "big", rows).await?;

    // tenantd's own first backup at start, then a full one holding the tenant.
    let deadline = Instant::now() + Duration::from_secs(300);
    while pgbackrest.holdings(stanza).await?.backups.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no first base backup");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let started = Instant::now();
    pgbackrest.backup(stanza, true).await?;
    println!("full base backup: {:.1} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let at_t = digest(&shared, &schema).await?;
    let (t,): (DateTime<Utc>,) = sqlx::query_as("SELECT now()").fetch_one(&shared).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The bad import.
    let bad =
        format!("UPDATE \"{schema}\".patients SET given_name = 'imported' WHERE mrn LIKE '%0'");
    sqlx::query(sqlx::AssertSqlSafe(bad))
        .execute(&shared)
        .await?;
    anyhow::ensure!(
        digest(&shared, &schema).await? != at_t,
        "the import changed nothing"
    );

    // tenantd.
    let started = Instant::now();
    let op = c
        .exports
        .restore_tenant(pb::RestoreTenantRequest {
            tenant: tenant.to_string(),
            point_in_time: t.to_rfc3339(),
            mode: pb::RestoreMode::InPlace as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let op = c.wait(op.name).await?;
    let tenantd_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        matches!(op.result, Some(pb::operation::Result::Tenant(_))),
        "the restore failed: {:?}",
        op.result
    );
    anyhow::ensure!(
        digest(&shared, &schema).await? == at_t,
        "tenantd's restore is not the tenant as at T"
    );
    let steps = op.metadata.unwrap_or_default().steps;
    let phase = |names: &[&str]| -> f64 {
        steps
            .iter()
            .filter(|s| names.contains(&s.name.as_str()))
            .map(step_secs)
            .sum()
    };
    let tenantd_phases = [
        ("preflight", phase(&["preflight"])),
        ("fetch backup", phase(&["fetch_backup"])),
        ("replay WAL", phase(&["replay"])),
        ("extract", phase(&["extract"])),
        (
            "verify & swap",
            phase(&[
                "verify", "prepare", "stage", "load", "index", "check", "migrate", "grant",
                "fence", "swap", "activate", "cleanup",
            ]),
        ),
    ];

    // By hand.
    let side_dir = running.stack.state_dir.join("bench-side");
    let password = pgbackrest.password(stanza)?.to_owned();
    let started = Instant::now();
    SideCluster::fetch(&pgbackrest, stanza, t, &side_dir, &["tenants".into()]).await?;
    let fetch = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let side = SideCluster::start(&side_dir, &password, Vec::new()).await?;
    let replay = started.elapsed().as_secs_f64();
    let dump_file = running.stack.state_dir.join("bench-tenant.sql");
    let started = Instant::now();
    run(Command::new("pg_dump")
        .arg(side.url("tenants"))
        .args(["-n", &schema, "--no-owner", "--no-privileges", "-f"])
        .arg(&dump_file))?;
    let dump = started.elapsed().as_secs_f64();
    drop(side);
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url("postgres"))
        .await?;
    sqlx::raw_sql("CREATE DATABASE bench_by_hand")
        .execute(&admin)
        .await?;
    let started = Instant::now();
    run(Command::new("psql")
        .arg(url("bench_by_hand"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&dump_file))?;
    let load = started.elapsed().as_secs_f64();
    let by_hand_db = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url("bench_by_hand"))
        .await?;
    anyhow::ensure!(
        digest(&by_hand_db, &schema).await? == at_t,
        "the restore by hand is not the tenant as at T"
    );
    by_hand_db.close().await;
    let by_hand = fetch + replay + dump + load;
    std::fs::remove_file(&dump_file)?;

    println!();
    println!("point-in-time restore of a {rows}-row schema-tier tenant ({mb:.1} MB of rows):");
    let phases: Vec<String> = tenantd_phases
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.2}"))
        .collect();
    println!(
        "  tenantd, in place, verified, atomic: {tenantd_secs:.2} s; phases (s): {}",
        phases.join(", ")
    );
    println!(
        "  by hand (pgbackrest restore, start, pg_dump, psql -f into an empty database): \
         {by_hand:.2} s; phases (s): fetch backup {fetch:.2}, replay WAL {replay:.2}, \
         pg_dump {dump:.2}, psql -f {load:.2}"
    );
    println!(
        "  ratio by hand / tenantd: {:.2} (>= 1.0: tenantd at least as fast)",
        by_hand / tenantd_secs
    );
    running.stop().await
}

/// A digest of every row of the tenant's tables in `schema`, in a fixed order.
async fn digest(pool: &PgPool, schema: &str) -> anyhow::Result<String> {
    let mut all = String::new();
    for table in tenantd::dataplane::tables::names_in(pool, schema).await? {
        let q = format!(
            "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') \
             FROM \"{schema}\".{table} t"
        );
        let (d,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_one(pool)
            .await?;
        all.push_str(&format!("{table}:{d};"));
    }
    Ok(all)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn step_secs(s: &pb::Step) -> f64 {
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    match (at(&s.start_time), at(&s.end_time)) {
        (Some(a), Some(b)) => (b - a).as_seconds_f64(),
        _ => 0.0,
    }
}
