//! The workflow engine's guarantees, tested directly against the registry and through a
//! tenantd process: lease fencing, one active operation per tenant, cancellation, retries.

use std::time::Duration;

use tenantd::api::pb;
use tenantd::error::Error;
use tenantd::registry::Registry;
use tenantd::registry::clusters::ClusterRow;
use tenantd::registry::leases::LeaseError;
use tenantd::registry::operations::NewOperation;
use tenantd::tenant::{NewTenant, Slug, Tier};
use uuid::Uuid;

use crate::harness::{Footprint, TestEnv, footprint};

async fn registry_with_tenant() -> (Registry, Uuid) {
    let (config, _) = TestEnv::config().await;
    let registry = Registry::connect(&config.registry_url).await.unwrap();
    registry.migrate().await.unwrap();
    registry
        .sync_cluster(&ClusterRow {
            name: "main".into(),
            host: "h".into(),
            port: 5432,
            shared_database: "tenants".into(),
        })
        .await
        .unwrap();
    let tenant = Uuid::new_v4();
    let mut tx = registry.pool().begin().await.unwrap();
    let new = NewTenant {
        slug: Slug::parse("engine-test").unwrap(),
        display_name: "e".into(),
        plan: String::new(),
        tier: Tier::Pool,
        labels: Default::default(),
        cluster: None,
    };
    Registry::insert_tenant(&mut tx, tenant, &new, "main")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (registry, tenant)
}

fn new_op(tenant: Uuid) -> (Uuid, NewOperation<'static>) {
    let id = Uuid::new_v4();
    (
        id,
        NewOperation {
            id,
            kind: "test",
            tenant_id: Some(tenant),
            request_id: None,
            request_hash: None,
            data: serde_json::json!({"version": 1, "state": {}}),
            steps: &["one", "two"],
        },
    )
}

#[tokio::test]
async fn a_worker_whose_lease_expired_cannot_write() {
    let (registry, tenant) = registry_with_tenant().await;
    let (id, op) = new_op(tenant);
    let mut tx = registry.pool().begin().await.unwrap();
    Registry::insert_operation(&mut tx, op).await.unwrap();
    tx.commit().await.unwrap();

    let a = registry
        .claim_operation("a", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.id, id);
    // Nobody else can claim it while the lease holds.
    assert!(
        registry
            .claim_operation("b", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = registry
        .claim_operation("b", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.id, id);
    assert_ne!(a.lease.token, b.lease.token);

    let data = serde_json::json!({"version": 1, "state": {"stale": true}});
    assert!(matches!(
        registry.step_done(&a.lease, 0, &data, None).await,
        Err(LeaseError::Lost)
    ));
    assert!(matches!(
        registry.heartbeat(&a.lease, Duration::from_secs(5)).await,
        Err(LeaseError::Lost)
    ));
    assert!(matches!(
        registry.step_started(&a.lease, 1).await,
        Err(LeaseError::Lost)
    ));
    registry
        .step_done(
            &b.lease,
            0,
            &serde_json::json!({"version": 1, "state": {}}),
            None,
        )
        .await
        .unwrap();
    let op = registry.get_operation(id).await.unwrap();
    assert_eq!(op.steps[0].state.as_str(), "done");
    let (stored,): (serde_json::Value,) =
        sqlx::query_as("SELECT data FROM operations WHERE id = $1")
            .bind(id)
            .fetch_one(registry.pool())
            .await
            .unwrap();
    assert!(
        stored["state"].get("stale").is_none(),
        "the stale write never landed"
    );
}

#[tokio::test]
async fn the_database_allows_one_active_operation_per_tenant() {
    let (registry, tenant) = registry_with_tenant().await;
    let (first, op) = new_op(tenant);
    let mut tx = registry.pool().begin().await.unwrap();
    Registry::insert_operation(&mut tx, op).await.unwrap();
    tx.commit().await.unwrap();
    let (_, second) = new_op(tenant);
    let mut tx = registry.pool().begin().await.unwrap();
    match Registry::insert_operation(&mut tx, second).await {
        Err(Error::FailedPrecondition { operation, reason }) => {
            assert_eq!(operation, Some(first));
            assert!(reason.contains(&first.to_string()), "{reason}");
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
}

#[tokio::test]
async fn cancellation_between_steps_rolls_back() {
    let mut env = TestEnv::spawn("provision.before_migrate=sleep(2000)").await;
    let op = env.create("cancel-me", pb::Tier::Schema, "").await;
    let tenant_id = op.metadata.as_ref().unwrap().tenant_id.clone();
    // Once the container exists, cancel.
    env.until_step_done(&op.name, "create_container").await;
    let cancelled = env
        .ops
        .cancel_operation(pb::CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.metadata.unwrap().cancel_requested);
    let done = env.wait(&op.name).await;
    assert_eq!(
        done.metadata.as_ref().unwrap().state,
        pb::OperationState::Cancelled as i32
    );
    let Some(pb::operation::Result::Error(e)) = done.result else {
        panic!("{done:?}")
    };
    assert_eq!(e.code, tonic::Code::Cancelled as i32);
    // The migrate step ran (it was in flight), the rest did not; the container is gone.
    assert_eq!(
        footprint(&tenant_id, "main").await,
        Footprint {
            schemas: 0,
            databases: 0,
            roles: 0,
            pool_rows: 0
        }
    );
}

#[tokio::test]
async fn transient_failures_are_retried_with_back_off() {
    let mut env = TestEnv::spawn("provision.before_grant=retry*2").await;
    let op = env.create("flaky", pb::Tier::Database, "").await;
    let done = env.wait(&op.name).await;
    assert!(
        matches!(done.result, Some(pb::operation::Result::Tenant(_))),
        "{done:?}"
    );
    let steps = done.metadata.unwrap().steps;
    let grant = steps.iter().find(|s| s.name == "grant").unwrap();
    assert_eq!(grant.name, "grant");
    assert_eq!(grant.attempts, 3, "two injected failures, then success");
}

#[tokio::test]
async fn replicas_sharing_a_registry_run_each_operation_once() {
    let mut env = TestEnv::start().await;
    // A second replica on the same registry and clusters.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(tenantd::server::run(
        env.config.clone(),
        listener,
        shutdown.clone(),
    ));
    let mut second = tenantd::api::pb::tenant_service_client::TenantServiceClient::new(
        crate::harness::as_admin(crate::harness::connect(&addr).await),
    );
    let mut names = Vec::new();
    for i in 0..8 {
        let req = pb::CreateTenantRequest {
            slug: format!("replica-{i}"),
            tier: if i % 2 == 0 {
                pb::Tier::Pool
            } else {
                pb::Tier::Schema
            } as i32,
            ..Default::default()
        };
        let client = if i % 2 == 0 {
            &mut env.tenants
        } else {
            &mut second
        };
        names.push(client.create_tenant(req).await.unwrap().into_inner().name);
    }
    for name in names {
        let op = env.wait(&name).await;
        assert!(
            matches!(op.result, Some(pb::operation::Result::Tenant(_))),
            "{op:?}"
        );
        let steps = op.metadata.unwrap().steps;
        assert!(
            steps.iter().all(|s| s.attempts == 1),
            "no step ran twice: {steps:?}"
        );
    }
    shutdown.cancel();
}
