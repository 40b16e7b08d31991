//! Crash safety: tenantd runs as a real process and is made to exit (like a crash: no
//! cleanup, its lease left to expire) at step boundaries; a new process resumes the operation.

use tenantd::api::pb;
use tenantd::workflow::failpoint::EXIT_CODE;
use tenantd::workflow::{Steps, Workflow};
use tenantd::workflows::Provision;

use crate::harness::{Footprint, TestEnv, footprint};

/// Every crash window of workflow `W`: before each step, and after each step's side effects
/// but before its done mark commits.
pub fn boundaries<W: Workflow>() -> Vec<String> {
    W::Step::names()
        .into_iter()
        .flat_map(|s| {
            [
                format!("{}.before_{s}", W::KIND),
                format!("{}.after_{s}", W::KIND),
            ]
        })
        .collect()
}

/// Crashes `env`'s operation at every one of `points` in turn. The running process must have
/// answered the request and be parked at the first point (`sleep`); it is killed there (SIGKILL,
/// like a crash), and each next process resumes the operation and exits at the next point,
/// until the last process runs it to the end.
pub async fn crash_through(env: &mut TestEnv, points: &[String]) {
    env.process.as_mut().unwrap().child.kill().unwrap();
    for (i, point) in points.iter().enumerate() {
        let expected = if i == 0 { None } else { Some(EXIT_CODE) };
        assert_eq!(env.wait_exit(), expected, "process should die at {point}");
        let next = points
            .get(i + 1)
            .map(|n| format!("{n}=exit"))
            .unwrap_or_default();
        env.restart(&next).await;
    }
}

const NOTHING: Footprint = Footprint {
    schemas: 0,
    databases: 0,
    roles: 0,
    pool_rows: 0,
};

async fn crash_at_every_boundary(slug: &str, tier: pb::Tier, cluster: &str) {
    let points = boundaries::<Provision>();
    let mut env = TestEnv::spawn(&format!("{}=sleep(60000)", points[0])).await;
    let op = env.create(slug, tier, cluster).await;
    let tenant_id = op.metadata.as_ref().unwrap().tenant_id.clone();
    crash_through(&mut env, &points).await;
    let op = env.wait(&op.name).await;
    let Some(pb::operation::Result::Tenant(t)) = op.result else {
        panic!("provisioning did not succeed after crashes: {op:?}");
    };
    assert_eq!(t.state, pb::TenantState::Active as i32);
    let steps = op.metadata.unwrap().steps;
    assert!(steps.iter().all(|s| s.state == pb::StepState::Done as i32));
    // Each step ran again after its crash: at least twice (before_ and after_ crashes).
    assert!(steps.iter().all(|s| s.attempts >= 2), "{steps:?}");

    let on = if cluster.is_empty() { "main" } else { cluster };
    let expected = match tier {
        pb::Tier::Pool => Footprint {
            pool_rows: 4,
            ..NOTHING
        },
        pb::Tier::Schema => Footprint {
            schemas: 1,
            roles: 1,
            ..NOTHING
        },
        _ => Footprint {
            databases: 1,
            roles: 1,
            ..NOTHING
        },
    };
    assert_eq!(
        footprint(&tenant_id, on).await,
        expected,
        "exactly one container, no leftovers"
    );
    // One tenant, one operation, and no password in the registry (tenant roles never log in).
    let (tenants_n, ops_n, creds_n): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenants), (SELECT count(*) FROM operations),
                (SELECT count(*) FROM tenant_credentials)",
    )
    .fetch_one(&env.registry)
    .await
    .unwrap();
    assert_eq!((tenants_n, ops_n), (1, 1));
    assert_eq!(creds_n, 0);
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
    let mut env =
        TestEnv::spawn("provision.after_seed=error;provision.before_compensate=exit").await;
    let op = env.create(slug, tier, "").await;
    let tenant_id = op.metadata.as_ref().unwrap().tenant_id.clone();
    assert_eq!(
        env.wait_exit(),
        Some(EXIT_CODE),
        "crashed while compensating"
    );
    env.restart("").await;
    let done = env.wait(&op.name).await;
    let Some(pb::operation::Result::Error(err)) = &done.result else {
        panic!("expected a failed operation: {done:?}");
    };
    assert_eq!(err.code, tonic::Code::Internal as i32);
    assert_eq!(err.step, "seed");
    assert!(err.message.contains("failpoint"), "{}", err.message);
    let m = done.metadata.as_ref().unwrap();
    assert_eq!(m.state, pb::OperationState::Failed as i32);
    let seed = m.steps.iter().find(|s| s.name == "seed").unwrap();
    assert_eq!(
        (seed.name.as_str(), seed.state),
        ("seed", pb::StepState::Failed as i32)
    );

    assert_eq!(
        footprint(&tenant_id, "main").await,
        NOTHING,
        "nothing left in the data plane"
    );
    let failed = env.tenant(&tenant_id).await;
    assert_eq!(failed.state, pb::TenantState::Failed as i32);
    // The slug is free: a new tenant takes it and provisions.
    env.provision(slug, tier, "").await;
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
