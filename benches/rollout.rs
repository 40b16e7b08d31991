//! Fleet migration: N schema-tier tenants (default 1,000, or `TENANTD_BENCH_TENANTS`) at
//! tenant-schema version 3, brought to version 4 (ADD COLUMN) on the embedded, durable
//! (fsync on) PostgreSQL, two ways in the same run:
//!
//! 1. sequentially, schema by schema, with the migrator alone (no registry, no tracking): the
//!    baseline, then undone;
//! 2. by a MigrateFleet rollout (one canary, auto-continue, `TENANTD_BENCH_CONCURRENCY`
//!    containers at a time, default 8), timed from the request to the operation's end,
//!    including its per-target status rows, locks and registry updates.
//!
//! Prints both totals, the rollout's ratio to the 60 s target (< 1.0 meets it) and its
//! speed-up over the baseline.
//!
//! Run: `cargo bench --bench rollout`

mod common;

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tenantd::api::pb;
use tenantd::dataplane::{DataPlane, catalog};
use tenantd::sql::{Ident, Statement};
use tenantd::tenant::ContainerNames;
use uuid::Uuid;

const FROM: i32 = 3;
const TO: i32 = 4;
const TARGET: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_or("TENANTD_BENCH_TENANTS", 1000);
    let concurrency = env_or("TENANTD_BENCH_CONCURRENCY", 8) as u32;
    let running = common::start("rollout").await?;
    let mut clients = running.clients.clone();
    let config = running.stack.config.clone();

    // The fleet as the previous release left it: at version 3.
    clients
        .fleet
        .get_fleet_schema(pb::GetFleetSchemaRequest {})
        .await?;
    let registry = PgPoolOptions::new()
        .max_connections(2)
        .connect(&config.registry_url)
        .await?;
    sqlx::query("UPDATE tenant_schema SET version = $1")
        .bind(FROM)
        .execute(&registry)
        .await?;

    println!("provisioning {n} schema-tier tenants at version {FROM} (8 at a time)");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(8);
    for task in 0..8 {
        let mut c = clients.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in (task * per_task)..((task + 1) * per_task).min(n) {
                ids.push(c.provision(&format!("fleet-{i}"), pb::Tier::Schema).await?);
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids: Vec<Uuid> = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        ids.extend(r??);
    }
    println!("  provisioned in {:.1} s", started.elapsed().as_secs_f64());

    // 1. The baseline: the migrator, one schema after another.
    let dataplane = DataPlane::new(
        &config.clusters,
        std::sync::Arc::new(tenantd::tenant_schema::TenantSchema::example()),
    )
    .map_err(anyhow::Error::msg)?;
    let cluster = dataplane.cluster(config.default_cluster())?;
    let db = cluster.database(&cluster.shared_database);
    let schemas: Vec<Ident> = ids
        .iter()
        .map(|id| ContainerNames::for_tenant(*id).own)
        .collect();
    let started = Instant::now();
    for schema in &schemas {
        anyhow::ensure!(catalog::migrate(cluster, &db, schema, TO).await? == TO);
    }
    let sequential = started.elapsed();
    // Undone, so that the rollout starts from the same place.
    for schema in &schemas {
        for stmt in [
            Statement::new("ALTER TABLE ")
                .qualified(schema, &Ident::from_static("patients"))
                .push(" DROP COLUMN preferred_language"),
            Statement::new("DELETE FROM ")
                .qualified(schema, &Ident::from_static("tenant_schema_migrations"))
                .push(" WHERE version = 4"),
        ] {
            sqlx::query(stmt.into_sql()).execute(&db).await?;
        }
    }

    // 2. The rollout.
    let started = Instant::now();
    let op = clients
        .fleet
        .migrate_fleet(pb::MigrateFleetRequest {
            target_version: TO,
            canary_count: 1,
            auto_continue: true,
            concurrency,
            ..Default::default()
        })
        .await?
        .into_inner();
    let op = clients.wait(op.name).await?;
    let rollout = started.elapsed();
    anyhow::ensure!(
        !matches!(op.result, Some(pb::operation::Result::Error(_))),
        "the rollout failed: {op:?}"
    );
    let schema = clients
        .fleet
        .get_fleet_schema(pb::GetFleetSchemaRequest {})
        .await?
        .into_inner();
    let at_target: i64 = schema
        .tenants_by_version
        .iter()
        .filter(|v| v.version == TO)
        .map(|v| v.tenants)
        .sum();
    anyhow::ensure!(at_target == n as i64, "only {at_target} of {n} at {TO}");
    for schema in &schemas {
        anyhow::ensure!(catalog::current_version(cluster, &db, schema).await? == TO);
    }

    println!("ADD COLUMN (version {FROM} -> {TO}) on {n} schemas:");
    println!(
        "  sequential, schema by schema:      {:>7.2} s  ({:.1} ms per schema)",
        sequential.as_secs_f64(),
        sequential.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "  MigrateFleet rollout ({concurrency} at a time): {:>7.2} s  ({:.1} ms per schema)",
        rollout.as_secs_f64(),
        rollout.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "  rollout / 60 s target:             {:>7.2}",
        rollout.as_secs_f64() / TARGET.as_secs_f64()
    );
    println!(
        "  sequential / rollout (speed-up):   {:>7.2}",
        sequential.as_secs_f64() / rollout.as_secs_f64()
    );
    running.stop().await
}
