//! Fleet migrations of the tenant schema (issue 9): a mixed fleet (pools on two clusters,
//! schema and database tenants) brought from version 3 to 4 with canaries, an approval, a
//! tenant whose schema drifted, a tenant too busy to lock, retries of each alone, and a
//! crash in the middle of a rollout.
//!
//! Each environment has its own registry, whose fleet version the tests set back to 3, as a
//! registry written by the previous release would be. The data-plane clusters are shared with
//! other tests, so a pool may already be at 4: then it is not a target, and the tests only
//! check that it is at 4.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tenantd::api::pb;
use tenantd::auth::Role;
use tenantd::workflow::failpoint::EXIT_CODE;
use tonic::Code;

use crate::harness::{Place, TestEnv, admin, admin_conn, tenantctl};

const FROM: i32 = 3;
const TO: i32 = 4;

/// Sets the fleet's tenant-schema version back, as a registry the previous release wrote.
pub(crate) async fn pin_fleet(env: &mut TestEnv, version: i32) {
    // Once tenantd answers, it has migrated the registry and set the fleet's version.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = env
        .fleet
        .get_fleet_schema(pb::GetFleetSchemaRequest {})
        .await
    {
        assert!(Instant::now() < deadline, "tenantd not answering: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("UPDATE tenant_schema SET version = $1")
        .bind(version)
        .execute(&env.registry)
        .await
        .unwrap();
}

/// The tenant-schema version the container at `place` is at, from its own bookkeeping.
pub(crate) async fn container_version(place: &Place) -> i32 {
    let pool = admin(&place.cluster, &place.database).await;
    let q = format!(
        "SELECT max(version) FROM \"{}\".tenant_schema_migrations",
        place.schema
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(q))
        .fetch_one(&pool)
        .await
        .unwrap()
}

fn target<'a>(all: &'a [pb::RolloutTarget], tenant: &pb::Tenant) -> &'a pb::RolloutTarget {
    all.iter()
        .find(|t| t.tenant_id == tenant.id)
        .unwrap_or_else(|| panic!("{} is not a target: {all:?}", tenant.slug))
}

/// Waits until the rollout is parked after its canaries, waiting for approval.
async fn until_waiting_for_approval(env: &mut TestEnv, op: &str) -> pb::Operation {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = env
            .ops
            .get_operation(pb::GetOperationRequest { name: op.into() })
            .await
            .unwrap()
            .into_inner();
        assert!(!got.done, "the rollout finished without approval: {got:?}");
        let steps = got.metadata.as_ref().unwrap().steps.clone();
        let approve = steps.iter().find(|s| s.name == "approve").unwrap();
        if approve.state == pb::StepState::Pending as i32 && !approve.last_error.is_empty() {
            return got;
        }
        assert!(Instant::now() < deadline, "rollout not parked: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn error_of(op: &pb::Operation) -> Option<&pb::OperationError> {
    match &op.result {
        Some(pb::operation::Result::Error(e)) => Some(e),
        _ => None,
    }
}

#[tokio::test]
async fn a_mixed_fleet_reaches_the_target_and_failures_are_reported_and_retried_alone() {
    let mut env = TestEnv::start().await;
    pin_fleet(&mut env, FROM).await;
    let pool_a = env.provision("ro-pool-a", pb::Tier::Pool, "main").await;
    let pool_b = env.provision("ro-pool-b", pb::Tier::Pool, "second").await;
    let canary = env.provision("ro-canary", pb::Tier::Schema, "main").await;
    let drifted = env
        .provision("ro-drifted", pb::Tier::Schema, "second")
        .await;
    let busy = env.provision("ro-busy", pb::Tier::Schema, "main").await;
    let db_a = env.provision("ro-db-a", pb::Tier::Database, "main").await;
    let db_b = env.provision("ro-db-b", pb::Tier::Database, "second").await;
    let own = [&canary, &drifted, &busy, &db_a, &db_b];
    for t in own {
        assert_eq!(
            t.schema_version, FROM,
            "{} provisioned at the fleet's version",
            t.slug
        );
        assert_eq!(container_version(&Place::of(t)).await, FROM);
    }

    // The drifted tenant already has a column named like the one version 4 adds (someone
    // changed its schema by hand): its migration fails for real.
    let p = Place::of(&drifted);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE \"{}\".patients ADD COLUMN preferred_language integer",
        p.schema
    )))
    .execute(&admin(&p.cluster, &p.database).await)
    .await
    .unwrap();
    // The busy tenant's patients table is locked by a long transaction (a report, a
    // vacuum): the migration cannot get its lock in time, three times.
    let p = Place::of(&busy);
    let mut holder = admin_conn(&p.cluster, &p.database).await;
    let mut lock = holder.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE \"{}\".patients IN ACCESS SHARE MODE",
        p.schema
    )))
    .execute(&mut *lock)
    .await
    .unwrap();

    let request = pb::MigrateFleetRequest {
        target_version: TO,
        canary_tenants: vec![canary.slug.clone()],
        concurrency: 3,
        max_failures: 2,
        lock_timeout_ms: 300,
        request_id: "rollout-to-4".into(),
        ..Default::default()
    };
    let op = env
        .fleet
        .migrate_fleet(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.metadata.as_ref().unwrap().kind, "migrate_fleet");
    assert_eq!(op.metadata.as_ref().unwrap().tenant_id, "");
    // A retry is the same rollout; another one is refused while this one runs.
    let again = env.fleet.migrate_fleet(request.clone()).await.unwrap();
    assert_eq!(again.into_inner().name, op.name);
    let other = env
        .fleet
        .migrate_fleet(pb::MigrateFleetRequest {
            request_id: "another".into(),
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert!(other.message().contains(&op.name), "{other:?}");
    // Bad plans change nothing.
    for bad in [
        pb::MigrateFleetRequest {
            target_version: TO + 1,
            ..Default::default()
        },
        pb::MigrateFleetRequest {
            target_version: TO,
            concurrency: 33,
            ..Default::default()
        },
        pb::MigrateFleetRequest {
            target_version: TO,
            canary_tenants: vec!["no-such-tenant".into()],
            ..Default::default()
        },
    ] {
        let e = env.fleet.migrate_fleet(bad).await.unwrap_err();
        assert!(
            matches!(e.code(), Code::InvalidArgument | Code::NotFound),
            "{e:?}"
        );
    }

    // The canary is migrated, then the rollout waits for approval.
    until_waiting_for_approval(&mut env, &op.name).await;
    let all = env.rollout_targets(&op.name).await;
    let c = target(&all, &canary);
    assert!(c.canary);
    assert_eq!(c.state, pb::rollout_target::State::Done as i32);
    assert_eq!((c.from_version, c.to_version), (FROM, TO));
    assert!(
        all.iter()
            .filter(|t| t.tenant_id != canary.id)
            .all(|t| t.state == pb::rollout_target::State::Pending as i32 && !t.canary),
        "{all:?}"
    );
    assert_eq!(env.tenant(&canary.slug).await.schema_version, TO);
    assert_eq!(container_version(&Place::of(&canary)).await, TO);
    assert_eq!(container_version(&Place::of(&db_a)).await, FROM);
    // The fleet's version moved with the request: a tenant provisioned now gets it from its
    // own workflow.
    let late = env.provision("ro-late", pb::Tier::Schema, "second").await;
    assert_eq!(late.schema_version, TO);
    assert_eq!(container_version(&Place::of(&late)).await, TO);
    let schema = env
        .fleet
        .get_fleet_schema(pb::GetFleetSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((schema.version, schema.latest_version), (TO, TO));

    // Approved: the rest runs, three at a time, and ends with both failures named.
    env.fleet
        .resume_rollout(pb::ResumeRolloutRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap();
    let done = env.wait(&op.name).await;
    let e = error_of(&done).expect("the rollout fails while tenants are left behind");
    assert_eq!(e.code, Code::FailedPrecondition as i32, "{e:?}");
    assert!(e.message.starts_with("2 of "), "{e:?}");
    assert!(
        e.message.contains("ro-drifted") && e.message.contains("ro-busy"),
        "{e:?}"
    );
    let all = env.rollout_targets(&op.name).await;
    let d = target(&all, &drifted);
    assert_eq!(d.state, pb::rollout_target::State::Failed as i32);
    assert!(d.error.contains("already exists"), "{d:?}");
    assert_eq!(d.attempts, 1, "a real error is not retried");
    let b = target(&all, &busy);
    assert_eq!(b.state, pb::rollout_target::State::Failed as i32);
    assert!(b.error.contains("lock timeout"), "{b:?}");
    assert_eq!(b.attempts, 3, "a busy container is tried three times");
    for t in &all {
        if t.tenant_id != drifted.id && t.tenant_id != busy.id {
            assert_eq!(t.state, pb::rollout_target::State::Done as i32, "{t:?}");
        }
    }
    // Every container but the two is at 4, pools included, and the registry says so.
    for t in [&canary, &db_a, &db_b, &pool_a, &pool_b] {
        assert_eq!(container_version(&Place::of(t)).await, TO, "{}", t.slug);
        assert_eq!(env.tenant(&t.slug).await.schema_version, TO, "{}", t.slug);
    }
    for t in [&drifted, &busy] {
        assert_eq!(container_version(&Place::of(t)).await, FROM, "{}", t.slug);
        assert_eq!(env.tenant(&t.slug).await.schema_version, FROM, "{}", t.slug);
    }
    // Only these two failed: a retry of a done target is refused.
    let e = env
        .fleet
        .retry_rollout_target(pb::RetryRolloutTargetRequest {
            name: op.name.clone(),
            target: canary.slug.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // The drift is repaired and the lock released; each is retried alone.
    let p = Place::of(&drifted);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE \"{}\".patients DROP COLUMN preferred_language",
        p.schema
    )))
    .execute(&admin(&p.cluster, &p.database).await)
    .await
    .unwrap();
    lock.rollback().await.unwrap();
    for (t, by) in [(&drifted, drifted.slug.clone()), (&busy, busy.id.clone())] {
        let retry = env
            .fleet
            .retry_rollout_target(pb::RetryRolloutTargetRequest {
                name: op.name.clone(),
                target: by,
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_ne!(
            retry.name, op.name,
            "a finished rollout retries in a new one"
        );
        let retry = env.wait(&retry.name).await;
        assert_eq!(error_of(&retry), None, "{retry:?}");
        let only = env.rollout_targets(&retry.name).await;
        assert_eq!(only.len(), 1, "{only:?}");
        assert_eq!(only[0].tenant_id, t.id);
        assert_eq!(container_version(&Place::of(t)).await, TO);
        assert_eq!(env.tenant(&t.slug).await.schema_version, TO);
    }
    // The original rollout's rows follow their retries.
    let all = env.rollout_targets(&op.name).await;
    assert!(
        all.iter()
            .all(|t| t.state == pb::rollout_target::State::Done as i32),
        "{all:?}"
    );

    // tenantctl shows the progress, target by target.
    let args = [
        "--addr",
        &env.addr,
        "fleet",
        "status",
        &op.name,
        "--page-size",
        "3",
    ]
    .map(std::ffi::OsStr::new);
    let out = tenantctl(&args, Some(Role::Viewer)).await.unwrap();
    let n = all.len();
    assert!(
        out.contains(&format!("to v{TO}: {n} of {n} done, 0 failed")),
        "{out}"
    );
    assert!(out.contains("ro-canary (canary)"), "{out}");
    assert!(out.contains("ro-drifted") && out.contains("3->4"), "{out}");
    // Viewers may look, not start.
    let args = ["--addr", &env.addr, "fleet", "migrate", "--to", "4"].map(std::ffi::OsStr::new);
    let out = tenantctl(&args, Some(Role::Viewer)).await.unwrap_err();
    assert!(out.contains("PERMISSION_DENIED"), "{out}");
}

#[tokio::test]
async fn a_rollout_resumes_after_a_crash_mid_way() {
    let mut env = TestEnv::spawn("").await;
    pin_fleet(&mut env, FROM).await;
    let mut fleet = Vec::new();
    for (slug, tier, cluster) in [
        ("rc-schema-a", pb::Tier::Schema, "main"),
        ("rc-schema-b", pb::Tier::Schema, "second"),
        ("rc-schema-c", pb::Tier::Schema, "main"),
        ("rc-db", pb::Tier::Database, "second"),
    ] {
        fleet.push(env.provision(slug, tier, cluster).await);
    }
    // The next process exits (like a crash) right after the first container is migrated,
    // before the rollout records it.
    env.restart("migrate_fleet.after_target=exit*1").await;
    env.ready().await;
    let op = env
        .fleet
        .migrate_fleet(pb::MigrateFleetRequest {
            target_version: TO,
            canary_count: 1,
            auto_continue: true,
            concurrency: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(env.wait_exit(), Some(EXIT_CODE));
    let crashed: Vec<_> = targets_in_registry(&env, &op.name).await;
    assert_eq!(
        crashed,
        vec![("running".to_owned(), 1)],
        "the canary was in flight"
    );

    env.restart("").await;
    let done = env.wait(&op.name).await;
    assert_eq!(error_of(&done), None, "{done:?}");
    let all = env.rollout_targets(&op.name).await;
    assert_eq!(all.len(), fleet.len());
    for t in &fleet {
        let row = target(&all, t);
        assert_eq!(row.state, pb::rollout_target::State::Done as i32, "{row:?}");
        // The canary ran twice (the second run found it migrated and recorded it); the
        // others once.
        assert_eq!(row.attempts, if row.canary { 2 } else { 1 }, "{row:?}");
        assert_eq!(container_version(&Place::of(t)).await, TO, "{}", t.slug);
        assert_eq!(env.tenant(&t.slug).await.schema_version, TO);
    }
    // Every step ran to its end once.
    let steps = done.metadata.unwrap().steps;
    assert!(
        steps.iter().all(|s| s.state == pb::StepState::Done as i32),
        "{steps:?}"
    );
}

/// A tenant moved while a rollout runs is skipped by it; the move itself brings the tenant's
/// new container to the fleet's version.
#[tokio::test]
async fn a_tenant_moved_during_a_rollout_catches_up_with_the_fleet() {
    let mut env = TestEnv::start().await;
    pin_fleet(&mut env, FROM).await;
    let t = env.provision("ro-mover", pb::Tier::Schema, "main").await;
    assert_eq!(t.schema_version, FROM);
    // The fleet moved on (a rollout began) while the tenant was being moved.
    pin_fleet(&mut env, TO).await;
    let op = env
        .tenants
        .change_tier(pb::ChangeTierRequest {
            tenant: t.slug.clone(),
            tier: pb::Tier::Database as i32,
            cluster: "second".into(),
            request_id: String::new(),
            copy_mb_per_s: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let (_, moved) = env.wait_tenant(&op.name).await;
    assert_eq!(moved.tier, pb::Tier::Database as i32);
    assert_eq!(container_version(&Place::of(&moved)).await, TO);
    assert_eq!(env.tenant(&t.slug).await.schema_version, TO);
}

/// (state, count) of a rollout's targets read from the registry (the process is down).
async fn targets_in_registry(env: &TestEnv, op: &str) -> Vec<(String, i64)> {
    let id = uuid::Uuid::parse_str(op.trim_start_matches("operations/")).unwrap();
    sqlx::query_as(
        "SELECT state, count(*) FROM rollout_targets
         WHERE operation_id = $1 AND state <> 'pending' GROUP BY state",
    )
    .bind(id)
    .fetch_all(&env.registry)
    .await
    .unwrap()
}
