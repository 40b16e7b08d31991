//! Crash safety: tenantd runs as a real process and is made to exit (like a crash: no
//! cleanup, its lease left to expire) at step boundaries; a new process resumes the operation.

use std::time::Duration;

use tenantd::api::pb;
use tenantd::api::pb::operation_service_client::OperationServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::workflow::Workflow;
use tenantd::workflow::failpoint::EXIT_CODE;
use tenantd::workflows::Provision;

use crate::harness::{Footprint, Process, TestEnv, connect, footprint};

/// Every crash window of provisioning: before each step, and after each step's side effects
/// but before its done mark commits.
fn boundaries() -> Vec<String> {
    Provision::STEPS
        .iter()
        .flat_map(|s| {
            [
                format!("provision.before_{s}"),
                format!("provision.after_{s}"),
            ]
        })
        .collect()
}

async fn wait_op(addr: &str, name: &str) -> pb::Operation {
    let mut ops = OperationServiceClient::new(connect(addr).await);
    loop {
        let op = ops
            .wait_operation(pb::WaitOperationRequest {
                name: name.into(),
                timeout_seconds: 30,
            })
            .await
            .unwrap()
            .into_inner();
        if op.done {
            return op;
        }
    }
}

async fn crash_at_every_boundary(slug: &str, tier: pb::Tier, cluster: &str) {
    let (config, dir) = TestEnv::config().await;
    let points = boundaries();
    // The first process takes the request, parks the operation at the first boundary and is
    // killed there (SIGKILL, after it answered); each next process resumes the same operation
    // and exits at the next boundary.
    let mut p = Process::spawn(&config, &dir, &format!("{}=sleep(60000)", points[0]));
    let mut tenants = TenantServiceClient::new(connect(&p.addr).await);
    let op = tenants
        .create_tenant(pb::CreateTenantRequest {
            slug: slug.into(),
            tier: tier as i32,
            cluster: cluster.into(),
            request_id: format!("crash-{slug}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let tenant_id = op.metadata.as_ref().unwrap().tenant_id.clone();
    p.child.kill().unwrap();
    for (i, point) in points.iter().enumerate() {
        let code = p.wait_exit(Duration::from_secs(60));
        if i == 0 {
            assert_eq!(code, None, "killed by SIGKILL at {point}");
        } else {
            assert_eq!(code, Some(EXIT_CODE), "process should crash at {point}");
        }
        let next = points
            .get(i + 1)
            .map(|n| format!("{n}=exit"))
            .unwrap_or_default();
        p = Process::spawn(&config, &dir, &next);
    }
    let op = wait_op(&p.addr, &op.name).await;
    let Some(pb::operation::Result::Tenant(t)) = op.result else {
        panic!("provisioning did not succeed after crashes: {op:?}");
    };
    assert_eq!(t.state, pb::TenantState::Active as i32);
    let steps = op.metadata.unwrap().steps;
    assert!(steps.iter().all(|s| s.state == pb::StepState::Done as i32));
    // Each step ran again after its crash: at least twice (before_ and after_ crashes).
    assert!(steps.iter().all(|s| s.attempts >= 2), "{steps:?}");

    let on = if cluster.is_empty() { "main" } else { cluster };
    let f = footprint(&tenant_id, on).await;
    let expected = match tier {
        pb::Tier::Pool => Footprint {
            schemas: 0,
            databases: 0,
            roles: 0,
            pool_rows: 4,
        },
        pb::Tier::Schema => Footprint {
            schemas: 1,
            databases: 0,
            roles: 1,
            pool_rows: 0,
        },
        _ => Footprint {
            schemas: 0,
            databases: 1,
            roles: 1,
            pool_rows: 0,
        },
    };
    assert_eq!(f, expected, "exactly one container, no leftovers");
    // One tenant, one operation, one credential at most in the registry.
    let registry = sqlx::PgPool::connect(&config.registry_url).await.unwrap();
    let (tenants_n, ops_n, creds_n): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenants), (SELECT count(*) FROM operations),
                (SELECT count(*) FROM tenant_credentials)",
    )
    .fetch_one(&registry)
    .await
    .unwrap();
    assert_eq!((tenants_n, ops_n), (1, 1));
    assert_eq!(creds_n, if tier == pb::Tier::Pool { 0 } else { 1 });
}

#[tokio::test]
async fn pool_provisioning_survives_a_crash_at_every_step_boundary() {
    crash_at_every_boundary("crash-pool", pb::Tier::Pool, "").await;
}

#[tokio::test]
async fn schema_provisioning_survives_a_crash_at_every_step_boundary() {
    crash_at_every_boundary("crash-schema", pb::Tier::Schema, "").await;
}

#[tokio::test]
async fn database_provisioning_survives_a_crash_at_every_step_boundary() {
    crash_at_every_boundary("crash-database", pb::Tier::Database, "second").await;
}

/// A fatal failure late in provisioning rolls everything back; a crash during that rollback
/// is resumed too; the slug is free again afterwards.
async fn failure_is_compensated(slug: &str, tier: pb::Tier) {
    let (config, dir) = TestEnv::config().await;
    let mut p = Process::spawn(
        &config,
        &dir,
        "provision.after_seed=error;provision.before_compensate=exit",
    );
    let mut tenants = TenantServiceClient::new(connect(&p.addr).await);
    let op = tenants
        .create_tenant(pb::CreateTenantRequest {
            slug: slug.into(),
            tier: tier as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let tenant_id = op.metadata.as_ref().unwrap().tenant_id.clone();
    assert_eq!(
        p.wait_exit(Duration::from_secs(60)),
        Some(EXIT_CODE),
        "crashed while compensating"
    );
    let mut p = Process::spawn(&config, &dir, "");
    let done = wait_op(&p.addr, &op.name).await;
    let Some(pb::operation::Result::Error(err)) = &done.result else {
        panic!("expected a failed operation: {done:?}");
    };
    assert_eq!(err.code, tonic::Code::Internal as i32);
    assert_eq!(err.step, "seed");
    assert!(err.message.contains("failpoint"), "{}", err.message);
    assert_eq!(
        done.metadata.as_ref().unwrap().state,
        pb::OperationState::Failed as i32
    );
    let seed = &done.metadata.as_ref().unwrap().steps[4];
    assert_eq!(
        (seed.name.as_str(), seed.state),
        ("seed", pb::StepState::Failed as i32)
    );

    assert_eq!(
        footprint(&tenant_id, "main").await,
        Footprint {
            schemas: 0,
            databases: 0,
            roles: 0,
            pool_rows: 0
        },
        "nothing left in the data plane"
    );
    let mut tenants = TenantServiceClient::new(connect(&p.addr).await);
    let failed = tenants
        .get_tenant(pb::GetTenantRequest {
            tenant: tenant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state, pb::TenantState::Failed as i32);
    // The slug is free: a new tenant takes it and provisions.
    let again = tenants
        .create_tenant(pb::CreateTenantRequest {
            slug: slug.into(),
            tier: tier as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let again = wait_op(&p.addr, &again.name).await;
    assert!(
        matches!(again.result, Some(pb::operation::Result::Tenant(_))),
        "{again:?}"
    );
    let _ = p.child.kill();
}

#[tokio::test]
async fn failed_schema_provisioning_is_rolled_back_even_across_a_crash() {
    failure_is_compensated("comp-schema", pb::Tier::Schema).await;
}

#[tokio::test]
async fn failed_database_provisioning_is_rolled_back_even_across_a_crash() {
    failure_is_compensated("comp-database", pb::Tier::Database).await;
}

#[tokio::test]
async fn failed_pool_provisioning_is_rolled_back_even_across_a_crash() {
    failure_is_compensated("comp-pool", pb::Tier::Pool).await;
}
