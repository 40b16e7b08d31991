//! Provisioning latency per tier: provisions N tenants per tier (default 50, or
//! `TENANTD_BENCH_TENANTS`) one after another through gRPC against an embedded, durable
//! (fsync on) PostgreSQL, and prints p50/p95 from CreateTenant to the operation's end,
//! with the ratio to each tier's target (< 1.0 meets it).
//!
//! Run: `cargo bench --bench provision`

mod common;

use std::time::{Duration, Instant};

use tenantd::api::pb;

use common::percentile;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("TENANTD_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let running = common::start("provision").await?;
    let (mut tenants, mut ops) = (running.clients.tenants.clone(), running.clients.ops.clone());

    println!("provisioning {n} tenants per tier, one at a time (embedded PostgreSQL, fsync on)");
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>10} {:>12}",
        "tier", "p50 ms", "p95 ms", "max ms", "target ms", "p95/target"
    );
    for (tier, name, target_ms) in [
        (pb::Tier::Pool, "pool", 50.0),
        (pb::Tier::Schema, "schema", 300.0),
        (pb::Tier::Database, "database", 1500.0),
    ] {
        let mut latencies = Vec::with_capacity(n);
        for i in 0..n {
            let started = Instant::now();
            let op = tenants
                .create_tenant(pb::CreateTenantRequest {
                    slug: format!("bench-{name}-{i}"),
                    tier: tier as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let done = ops
                .wait_operation(pb::WaitOperationRequest {
                    name: op.name,
                    timeout_seconds: 60,
                })
                .await?
                .into_inner();
            anyhow::ensure!(
                matches!(done.result, Some(pb::operation::Result::Tenant(_))),
                "provisioning failed: {done:?}"
            );
            latencies.push(started.elapsed());
        }
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (p50, p95) = (percentile(&latencies, 0.5), percentile(&latencies, 0.95));
        println!(
            "{:<9} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>12.2}",
            name,
            ms(p50),
            ms(p95),
            ms(*latencies.last().expect("n > 0")),
            target_ms,
            ms(p95) / target_ms
        );
    }
    running.stop().await
}
