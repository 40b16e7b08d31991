//! What access control and the audit log cost: every call passes admission (token hash,
//! access table), and every change also appends to its tenant's hash chain in the registry
//! (one short transaction holding the chain head's row lock).
//!
//! Prints, against an embedded durable (fsync on) PostgreSQL:
//! - p50/p99 of GetTenant (admission only) and of UpdateTenant (admission, the registry
//!   update, the audit append), and the append alone;
//! - UpdateTenant throughput with 8 concurrent callers on 8 tenants (8 chains) and on one
//!   tenant (one chain, appends serialised — and so are the updates of its registry row),
//!   and the ratio;
//! - VerifyAuditLog over every chain: entries per second.
//!
//! Run: `cargo bench --bench audit` (`TENANTD_BENCH_AUDIT_ENTRIES`, default 20,000, sets how
//! many entries the log holds before it is verified).

mod common;

use std::time::{Duration, Instant};

use tenantd::api::pb;
use tenantd::audit::{NewAuditEvent, Subject};
use tenantd::registry::Registry;

use common::percentile;

const CALLS: usize = 400;
const CALLERS: usize = 8;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn update(tenant: &str, i: usize) -> pb::UpdateTenantRequest {
    pb::UpdateTenantRequest {
        tenant: tenant.to_owned(),
        display_name: format!("Clinic {i}"),
        update_mask: vec!["display_name".into()],
        ..Default::default()
    }
}

fn line(what: &str, mut latencies: Vec<Duration>) -> f64 {
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!("{what:<44} {:>8.2} {:>8.2}", ms(p50), ms(p99));
    ms(p50)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let entries: usize = std::env::var("TENANTD_BENCH_AUDIT_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let running = common::start("audit").await?;
    let mut c = running.clients.clone();
    let mut tenants = Vec::new();
    for i in 0..CALLERS {
        tenants.push(
            c.provision(&format!("audit-{i}"), pb::Tier::Pool)
                .await?
                .to_string(),
        );
    }
    let registry = Registry::connect(&running.stack.config.registry_url).await?;

    println!("{CALLS} calls each, one at a time (embedded PostgreSQL, fsync on)");
    println!("{:<44} {:>8} {:>8}", "", "p50 ms", "p99 ms");
    let mut reads = Vec::new();
    for _ in 0..CALLS {
        let t = Instant::now();
        c.tenants
            .get_tenant(pb::GetTenantRequest {
                tenant: tenants[0].clone(),
            })
            .await?;
        reads.push(t.elapsed());
    }
    let read_p50 = line("GetTenant (admission)", reads);
    let mut writes = Vec::new();
    for i in 0..CALLS {
        let t = Instant::now();
        c.tenants.update_tenant(update(&tenants[0], i)).await?;
        writes.push(t.elapsed());
    }
    let write_p50 = line("UpdateTenant (admission, update, audit)", writes);
    let mut appends = Vec::new();
    for i in 0..CALLS {
        let t = Instant::now();
        registry
            .append_audit(event(i), &Subject::Tenant(tenants[1].clone()))
            .await?;
        appends.push(t.elapsed());
    }
    let append_p50 = line("audit append alone (registry)", appends);
    println!(
        "UpdateTenant / GetTenant p50: {:.2}; the append is {:.0}% of an UpdateTenant",
        write_p50 / read_p50,
        100.0 * append_p50 / write_p50
    );

    // Concurrent callers: one chain each, then all on one chain.
    let mut rates = Vec::new();
    for (label, spread) in [
        ("8 tenants (8 chains)", true),
        ("1 tenant (1 chain)", false),
    ] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..CALLERS {
            let mut tc = c.tenants.clone();
            let tenant = tenants[if spread { k } else { 0 }].clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..CALLS / CALLERS * 4 {
                    tc.update_tenant(update(&tenant, i)).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = (CALLS * 4) as f64 / started.elapsed().as_secs_f64();
        println!("{CALLERS} concurrent UpdateTenant callers, {label:<22} {rate:>8.0} calls/s");
        rates.push(rate);
    }
    println!(
        "one chain / eight chains throughput: {:.2}",
        rates[1] / rates[0]
    );

    // Fill the log to `entries` across the chains, then verify all of it.
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(registry.pool())
        .await?;
    let missing = entries.saturating_sub(have as usize);
    let mut tasks = Vec::new();
    for tenant in &tenants {
        let (registry, tenant) = (registry.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..missing / CALLERS {
                registry
                    .append_audit(event(i), &Subject::Tenant(tenant.clone()))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let started = Instant::now();
    let report = c
        .audit
        .verify_audit_log(pb::VerifyAuditLogRequest::default())
        .await?
        .into_inner();
    let took = started.elapsed();
    anyhow::ensure!(report.problems.is_empty(), "{:?}", report.problems);
    println!(
        "VerifyAuditLog: {} entries in {} chains in {:.2} s: {:.0} entries/s",
        report.events,
        report.chains,
        took.as_secs_f64(),
        report.events as f64 / took.as_secs_f64()
    );
    running.stop().await
}

fn event(i: usize) -> NewAuditEvent {
    NewAuditEvent {
        tenant_id: None,
        principal: "bench".into(),
        role: "admin".into(),
        method: "/tenantd.v1.TenantService/UpdateTenant".into(),
        request_id: format!("bench-{i}"),
        code: "OK".into(),
        detail: "tenants/bench".into(),
    }
}
