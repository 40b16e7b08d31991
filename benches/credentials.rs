//! What an application pays to reach its tenant: IssueCredentials (a login role created on
//! the data plane, recorded in the registry, audited) per tier, and ResolveTenant, which an
//! application calls on every connection, under 16 concurrent clients.
//!
//! Prints, against an embedded durable (fsync on) PostgreSQL:
//! - IssueCredentials p50/p95 per tier, one call at a time, and its ratio to a ResolveTenant
//!   measured the same way in the same run;
//! - ResolveTenant and GetTenant calls per second from 16 concurrent clients (16 connections),
//!   side by side, and their ratio (what routing adds to a registry read);
//! - RevokeCredentials of everything issued: logins ended per second.
//!
//! Run: `cargo bench --bench credentials` (`TENANTD_BENCH_LOGINS`, default 200 per tier).

mod common;

use std::time::{Duration, Instant};

use tonic::transport::Channel;

use tenantd::api::pb;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;

use common::percentile;

const CLIENTS: usize = 16;
const CALLS_PER_CLIENT: usize = 250;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50_p95(mut latencies: Vec<Duration>) -> (f64, f64) {
    latencies.sort();
    (
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95)),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let logins: usize = std::env::var("TENANTD_BENCH_LOGINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let running = common::start("credentials").await?;
    let mut c = running.clients.clone();
    let mut tenants = Vec::new();
    for (slug, tier) in [
        ("cred-pool", pb::Tier::Pool),
        ("cred-schema", pb::Tier::Schema),
        ("cred-database", pb::Tier::Database),
    ] {
        tenants.push((tier, c.provision(slug, tier).await?.to_string()));
    }

    println!("{logins} calls per tier, one at a time (embedded PostgreSQL, fsync on)");
    println!(
        "{:<34} {:>8} {:>8} {:>14}",
        "", "p50 ms", "p95 ms", "/ Resolve p50"
    );
    for (tier, tenant) in &tenants {
        let mut resolves = Vec::new();
        let mut issues = Vec::new();
        for _ in 0..logins {
            let t = Instant::now();
            c.tenants
                .resolve_tenant(pb::ResolveTenantRequest {
                    tenant: tenant.clone(),
                })
                .await?;
            resolves.push(t.elapsed());
            let t = Instant::now();
            c.tenants
                .issue_credentials(pb::IssueCredentialsRequest {
                    tenant: tenant.clone(),
                    ttl_seconds: 3600,
                })
                .await?;
            issues.push(t.elapsed());
        }
        let (resolve_p50, _) = p50_p95(resolves);
        let (p50, p95) = p50_p95(issues);
        println!(
            "{:<34} {p50:>8.2} {p95:>8.2} {:>14.1}",
            format!("IssueCredentials, {} tier", tier.as_str_name()),
            p50 / resolve_p50
        );
    }

    // 16 clients on 16 connections, each calling back to back.
    let mut rates = Vec::new();
    for method in ["ResolveTenant", "GetTenant"] {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let channel = Channel::from_shared(running.addr.clone())?
                .connect()
                .await?;
            clients.push(TenantServiceClient::new(running.with_token(channel)?));
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (k, mut client) in clients.into_iter().enumerate() {
            let tenant = tenants[k % tenants.len()].1.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..CALLS_PER_CLIENT {
                    if method == "ResolveTenant" {
                        client
                            .resolve_tenant(pb::ResolveTenantRequest {
                                tenant: tenant.clone(),
                            })
                            .await?;
                    } else {
                        client
                            .get_tenant(pb::GetTenantRequest {
                                tenant: tenant.clone(),
                            })
                            .await?;
                    }
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = (CLIENTS * CALLS_PER_CLIENT) as f64 / started.elapsed().as_secs_f64();
        println!("{method:<14} from {CLIENTS} concurrent clients: {rate:>8.0} calls/s");
        rates.push(rate);
    }
    println!(
        "ResolveTenant / GetTenant throughput: {:.2}",
        rates[0] / rates[1]
    );

    let started = Instant::now();
    let mut revoked = 0;
    for (_, tenant) in &tenants {
        revoked += c
            .tenants
            .revoke_credentials(pb::RevokeCredentialsRequest {
                tenant: tenant.clone(),
            })
            .await?
            .into_inner()
            .revoked;
    }
    let took = started.elapsed();
    println!(
        "RevokeCredentials: {revoked} logins ended in {:.2} s: {:.0} logins/s",
        took.as_secs_f64(),
        f64::from(revoked) / took.as_secs_f64()
    );
    running.stop().await
}
