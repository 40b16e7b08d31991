//! Provisioning latency per tier: provisions N tenants per tier (default 50, or
//! `TENANTD_BENCH_TENANTS`) one after another through gRPC against an embedded, durable
//! (fsync on) PostgreSQL, and prints p50/p95 from CreateTenant to the operation's end,
//! with the ratio to each tier's target (< 1.0 meets it).
//!
//! Run: `cargo bench --bench provision`

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use tenantd::api::pb;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("TENANTD_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let state_dir = std::env::temp_dir().join(format!("tenantd-bench-{}", std::process::id()));
    let stack = tenantd::dev::start(&state_dir, 0, "127.0.0.1:0".parse()?, false).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(tenantd::server::run(
        stack.config.clone(),
        listener,
        shutdown.clone(),
    ));
    let channel = loop {
        match tonic::transport::Channel::from_shared(addr.clone())?
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut tenants = TenantServiceClient::new(channel.clone());
    let mut ops = OperationServiceClient::new(channel);

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
    shutdown.cancel();
    let _ = server.await;
    tokio::task::spawn_blocking(move || drop(stack)).await?;
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}
