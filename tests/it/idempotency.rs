//! AIP-155 idempotency and creation races: billing systems retry, and a retry must never
//! create a second tenant.

use tenantd::api::pb;
use tonic::Code;

use crate::harness::{TestEnv, bad_field};

fn request(slug: &str, request_id: &str) -> pb::CreateTenantRequest {
    pb::CreateTenantRequest {
        slug: slug.into(),
        display_name: "Retry Clinic".into(),
        plan: "pro".into(),
        tier: pb::Tier::Pool as i32,
        request_id: request_id.into(),
        ..Default::default()
    }
}

async fn tenants_named(env: &TestEnv, slug: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM tenants WHERE slug = $1")
        .bind(slug)
        .fetch_one(&env.registry)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn the_same_request_id_returns_the_same_operation() {
    let mut env = TestEnv::start().await;
    let rid = uuid::Uuid::new_v4().to_string();
    let first = env
        .tenants
        .create_tenant(request("retry-clinic", &rid))
        .await
        .unwrap()
        .into_inner();
    let second = env
        .tenants
        .create_tenant(request("retry-clinic", &rid))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.name, second.name);
    env.wait(&first.name).await;
    // Even after it finished.
    let third = env
        .tenants
        .create_tenant(request("retry-clinic", &rid))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.name, third.name);
    assert!(third.done);
    assert_eq!(tenants_named(&env, "retry-clinic").await, 1);
}

#[tokio::test]
async fn concurrent_retries_create_one_tenant() {
    let env = TestEnv::start().await;
    let rid = uuid::Uuid::new_v4().to_string();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut client = env.tenants.clone();
        let req = request("race-clinic", &rid);
        calls.push(tokio::spawn(async move { client.create_tenant(req).await }));
    }
    let mut names = std::collections::HashSet::new();
    for c in calls {
        names.insert(
            c.await
                .unwrap()
                .expect("every retry succeeds")
                .into_inner()
                .name,
        );
    }
    assert_eq!(names.len(), 1, "one operation: {names:?}");
    assert_eq!(tenants_named(&env, "race-clinic").await, 1);
}

#[tokio::test]
async fn a_request_id_reused_with_other_parameters_is_refused() {
    let mut env = TestEnv::start().await;
    let rid = uuid::Uuid::new_v4().to_string();
    env.tenants
        .create_tenant(request("reuse-clinic", &rid))
        .await
        .unwrap();
    let mut other = request("reuse-clinic", &rid);
    other.plan = "enterprise".into();
    let e = env.tenants.create_tenant(other).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&e), "request_id");
    assert_eq!(tenants_named(&env, "reuse-clinic").await, 1);
}

#[tokio::test]
async fn two_requests_for_one_slug_at_once_one_wins() {
    let env = TestEnv::start().await;
    let mut calls = Vec::new();
    for i in 0..6 {
        let mut client = env.tenants.clone();
        // Different request ids (or none): these are different requests.
        let req = request(
            "contested",
            &if i % 2 == 0 {
                format!("req-{i}")
            } else {
                String::new()
            },
        );
        calls.push(tokio::spawn(async move { client.create_tenant(req).await }));
    }
    let (mut ok, mut exists) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::AlreadyExists => {
                use tonic_types::StatusExt;
                let info = e.get_details_resource_info().expect("resource info");
                assert_eq!(
                    (info.resource_type.as_str(), info.resource_name.as_str()),
                    ("tenant", "contested")
                );
                exists += 1
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, exists), (1, 5));
    assert_eq!(tenants_named(&env, "contested").await, 1);
}

/// Sends `n` copies of one request at once; every copy must succeed, and all with the same
/// operation (the race's loser finds the winner's operation by the request id).
async fn race<F, Fut>(n: usize, call: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::Operation>, tonic::Status>>
        + Send
        + 'static,
{
    let calls: Vec<_> = (0..n).map(|_| tokio::spawn(call())).collect();
    let mut names = std::collections::HashSet::new();
    for c in calls {
        let op = c.await.unwrap().expect("every copy succeeds");
        names.insert(op.into_inner().name);
    }
    assert_eq!(names.len(), 1, "one operation: {names:?}");
    names.into_iter().next().unwrap()
}

#[tokio::test]
async fn identical_requests_racing_on_one_request_id_all_get_the_winners_operation() {
    let mut env = TestEnv::start().await;
    // A fleet rollout: the loser would otherwise meet the one-active-rollout index.
    let fleet = env.fleet.clone();
    let rollout = race(6, || {
        let mut fleet = fleet.clone();
        async move {
            fleet
                .migrate_fleet(pb::MigrateFleetRequest {
                    target_version: tenantd::tenant_schema::TenantSchema::example().latest(),
                    auto_continue: true,
                    request_id: "race-rollout".into(),
                    ..Default::default()
                })
                .await
        }
    })
    .await;
    let done = env.wait(&rollout).await;
    assert!(
        !matches!(done.result, Some(pb::operation::Result::Error(_))),
        "{done:?}"
    );
    // A tier change of one tenant: the loser would otherwise meet the tenant's
    // one-active-operation index.
    let created = env
        .tenants
        .create_tenant(request("race-mover", ""))
        .await
        .unwrap()
        .into_inner();
    env.wait(&created.name).await;
    let tenants = env.tenants.clone();
    let moved = race(6, || {
        let mut tenants = tenants.clone();
        async move {
            tenants
                .change_tier(pb::ChangeTierRequest {
                    tenant: "race-mover".into(),
                    tier: pb::Tier::Schema as i32,
                    request_id: "race-move".into(),
                    ..Default::default()
                })
                .await
        }
    })
    .await;
    match env.wait(&moved).await.result {
        Some(pb::operation::Result::Tenant(t)) => assert_eq!(t.tier, pb::Tier::Schema as i32),
        other => panic!("the move did not succeed: {other:?}"),
    }
    let (operations,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM operations WHERE request_id IN ('race-rollout', 'race-move')",
    )
    .fetch_one(&env.registry)
    .await
    .unwrap();
    assert_eq!(operations, 2);
}
