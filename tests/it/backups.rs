//! Scheduled backups: policies per tenant and per plan, the leaderless scheduler (two
//! replicas ticking at the same moment, catch-up after downtime, a busy tenant), retention,
//! legal holds, DeleteExport, and a deleted tenant's schedule stopping. The scheduler is
//! ticked by the tests with a clock they control (`tenantd::scheduler::tick`); the exports it
//! starts run on the test server's workers like any other.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tonic::Code;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::blobs::ObjectKey;
use tenantd::scheduler::tick;
use tenantd::service::Control;

use crate::harness::{TestEnv, all_pages};

fn tenant_target(t: &str) -> Option<pb::PolicyTarget> {
    Some(pb::PolicyTarget {
        target: Some(pb::policy_target::Target::Tenant(t.into())),
    })
}

fn plan_target(p: &str) -> Option<pb::PolicyTarget> {
    Some(pb::PolicyTarget {
        target: Some(pb::policy_target::Target::Plan(p.into())),
    })
}

fn every_minute(target: Option<pb::PolicyTarget>, keep_last: i32) -> pb::SetBackupPolicyRequest {
    pb::SetBackupPolicyRequest {
        target,
        schedule: "* * * * *".into(),
        keep_last,
        ..Default::default()
    }
}

/// A whole minute, `minutes` from now (slots after the policy took effect).
fn minute(minutes: i64) -> DateTime<Utc> {
    (Utc::now() + TimeDelta::minutes(minutes))
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap()
        + TimeDelta::seconds(5)
}

/// Ticks and waits for every export the tick started; (tenant, operation) pairs, sorted.
async fn tick_and_wait(
    env: &mut TestEnv,
    replica: &Control,
    at: DateTime<Utc>,
) -> Vec<(Uuid, Uuid)> {
    let done = tick(replica, at).await.unwrap();
    assert_eq!(done.failed, 0);
    let mut started: Vec<(Uuid, Uuid)> = done
        .started
        .iter()
        .map(|(_, d, op)| (d.tenant_id, *op))
        .collect();
    started.sort();
    for (_, op) in &started {
        let finished = env.wait(&format!("operations/{op}")).await;
        assert!(
            matches!(finished.result, Some(pb::operation::Result::Export(_))),
            "{finished:?}"
        );
    }
    started
}

/// A test environment with one tenant under `policy` (its target set to the tenant), and a
/// replica to tick the scheduler on.
async fn with_policy(
    slug: &str,
    tier: pb::Tier,
    policy: pb::SetBackupPolicyRequest,
) -> (TestEnv, Control, pb::Tenant, pb::BackupPolicy) {
    let mut env = TestEnv::start().await;
    let tenant = env.provision(slug, tier, "main").await;
    let policy = env
        .backups
        .set_backup_policy(pb::SetBackupPolicyRequest {
            target: tenant_target(slug),
            ..policy
        })
        .await
        .unwrap()
        .into_inner();
    let replica = env.replica().await;
    (env, replica, tenant, policy)
}

async fn assert_no_policies(env: &mut TestEnv) {
    let listed = env
        .backups
        .list_backup_policies(pb::ListBackupPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.policies.is_empty(), "{listed:?}");
}

const CASE: &str = "litigation CASE-7";

fn hold(target: pb::hold_target::Target, reason: &str) -> pb::SetLegalHoldRequest {
    pb::SetLegalHoldRequest {
        target: Some(pb::HoldTarget {
            target: Some(target),
        }),
        reason: reason.into(),
    }
}

async fn exports_of(env: &mut TestEnv, tenant: &str) -> Vec<pb::Export> {
    let client = env.exports.clone();
    all_pages(|token| {
        let mut client = client.clone();
        let tenant = tenant.to_owned();
        async move {
            let page = client
                .list_exports(pb::ListExportsRequest {
                    tenant,
                    page_size: 2,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            (page.exports, page.next_page_token)
        }
    })
    .await
}

async fn status(env: &mut TestEnv, tenant: &str) -> pb::BackupStatus {
    env.backups
        .get_backup_status(pb::GetBackupStatusRequest {
            tenant: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn object_exists(env: &TestEnv, key: &str) -> bool {
    let objects = env.objects().await;
    let key = ObjectKey::new(key.to_owned()).unwrap();
    let listed = objects.list(&key).await.unwrap();
    !listed.is_empty()
}

fn archive_key(e: &pb::Export) -> String {
    format!(
        "tenants/{}/exports/{}",
        e.tenant_id,
        e.name.trim_start_matches("exports/")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_backup_per_slot_across_replicas_one_catch_up_after_downtime_and_retention() {
    let mut env = TestEnv::start().await;
    let own = env.provision("sched-own", pb::Tier::Schema, "main").await;
    let planned = env.provision("sched-plan", pb::Tier::Pool, "main").await;
    // The tenant's own policy wins over its plan's; the other tenant follows the plan.
    env.backups
        .set_backup_policy(every_minute(plan_target("standard"), 1))
        .await
        .unwrap();
    let own_policy = env
        .backups
        .set_backup_policy(every_minute(tenant_target("sched-own"), 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own_policy.tenant_id, own.id);

    // Two replicas tick at the same moment: one export per tenant.
    let (a, b) = (env.replica().await, env.replica().await);
    let at = minute(2);
    let (ta, tb) = tokio::join!(tick(&a, at), tick(&b, at));
    let mut ops: Vec<(Uuid, Uuid)> = ta
        .unwrap()
        .started
        .into_iter()
        .chain(tb.unwrap().started)
        .map(|(_, d, op)| (d.tenant_id, op))
        .collect();
    ops.sort();
    ops.dedup();
    let tenants: Vec<Uuid> = ops.iter().map(|(t, _)| *t).collect();
    let mut expected = vec![own.id.parse::<Uuid>().unwrap(), planned.id.parse().unwrap()];
    expected.sort();
    assert_eq!(
        tenants, expected,
        "one operation per tenant, whichever replica: {ops:?}"
    );
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM operations WHERE kind = 'export'")
        .fetch_one(&env.registry)
        .await
        .unwrap();
    assert_eq!(count, 2);
    for (_, op) in &ops {
        env.wait(&format!("operations/{op}")).await;
    }
    // The same slot again, on either replica: nothing new.
    assert!(tick(&a, at).await.unwrap().started.is_empty());
    assert!(
        tick(&b, at + TimeDelta::seconds(30))
            .await
            .unwrap()
            .started
            .is_empty()
    );

    // The next minute: one more each.
    assert_eq!(tick_and_wait(&mut env, &a, minute(3)).await.len(), 2);
    // Down for ten minutes: one catch-up backup each, for the latest slot.
    let late = minute(13);
    assert_eq!(tick_and_wait(&mut env, &b, late).await.len(), 2);
    let exports = exports_of(&mut env, "sched-own").await;
    assert_eq!(exports.len(), 3, "{exports:?}");
    let newest = exports.last().unwrap();
    assert_eq!(
        newest.slot_time.parse::<DateTime<Utc>>().unwrap(),
        late.duration_trunc(TimeDelta::minutes(1)).unwrap()
    );
    assert_eq!(newest.backup_policy, own_policy.name);

    // Retention after each backup: keep_last 2 for the tenant's own policy, 1 for the plan.
    let live = |es: &[pb::Export]| {
        es.iter()
            .filter(|e| e.state == pb::ExportState::Complete as i32)
            .count()
    };
    assert_eq!(live(&exports), 2);
    let oldest = &exports[0];
    assert_eq!(oldest.state, pb::ExportState::Removed as i32, "{oldest:?}");
    assert!(oldest.removed_by.contains("retention"), "{oldest:?}");
    assert!(!object_exists(&env, &archive_key(oldest)).await);
    assert!(object_exists(&env, &archive_key(newest)).await);
    let plan_exports = exports_of(&mut env, "sched-plan").await;
    assert_eq!(live(&plan_exports), 1, "{plan_exports:?}");

    // The status tells the recovery point and the next slot.
    let s = status(&mut env, "sched-own").await;
    assert_eq!(s.newest_export, newest.name);
    assert_eq!(s.policy.unwrap().name, own_policy.name);
    assert!(!s.next_due_time.is_empty());
    assert_eq!(
        s.last_slot_time.parse::<DateTime<Utc>>().unwrap(),
        late.duration_trunc(TimeDelta::minutes(1)).unwrap()
    );
    assert!(s.last_operation.starts_with("operations/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_tenant_is_counted_and_backed_up_once_free() {
    let (mut env, replica, t, _) =
        with_policy("sched-busy", pb::Tier::Pool, every_minute(None, 3)).await;
    // An operation of a kind no replica knows holds the tenant (each worker leaves it for a
    // minute).
    let blocker = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO operations (id, kind, tenant_id, state, data) VALUES ($1, 'from_the_future', $2, 'pending', '{}')",
    )
    .bind(blocker)
    .bind(t.id.parse::<Uuid>().unwrap())
    .execute(&env.registry)
    .await
    .unwrap();
    let at = minute(2);
    for n in 1..=2 {
        let done = tick(&replica, at).await.unwrap();
        assert!(done.started.is_empty());
        assert_eq!(done.waiting.len(), 1);
        let s = status(&mut env, "sched-busy").await;
        assert_eq!(s.busy_ticks, n);
        assert!(s.busy_reason.contains(&blocker.to_string()), "{s:?}");
        assert!(s.last_operation.is_empty());
    }
    sqlx::query("UPDATE operations SET state = 'failed', finished_at = now() WHERE id = $1")
        .bind(blocker)
        .execute(&env.registry)
        .await
        .unwrap();
    assert_eq!(tick_and_wait(&mut env, &replica, at).await.len(), 1);
    let s = status(&mut env, "sched-busy").await;
    assert_eq!(s.busy_ticks, 0);
    assert!(s.last_operation.starts_with("operations/"));
    assert!(s.newest_export.starts_with("exports/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legal_holds_survive_pruning_and_block_deletion_until_cleared() {
    let (mut env, replica, _, _) =
        with_policy("held", pb::Tier::Schema, every_minute(None, 1)).await;
    tick_and_wait(&mut env, &replica, minute(2)).await;
    let first = exports_of(&mut env, "held").await.remove(0);
    let h = env
        .backups
        .set_legal_hold(hold(
            pb::hold_target::Target::Export(first.name.clone()),
            CASE,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.export, first.name);
    assert_eq!(h.set_by, "it-admin");

    // keep_last 1 would prune the first backup: the hold keeps it.
    tick_and_wait(&mut env, &replica, minute(3)).await;
    let exports = exports_of(&mut env, "held").await;
    assert_eq!(exports.len(), 2);
    assert!(
        exports
            .iter()
            .all(|e| e.state == pb::ExportState::Complete as i32),
        "{exports:?}"
    );

    // Neither the export nor the tenant can be deleted; the refusal names the hold.
    let refused = env
        .exports
        .delete_export(pb::DeleteExportRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("CASE-7"), "{refused:?}");
    let refused = env
        .deletions
        .delete_tenant(crate::delete::request("held"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("legal hold"), "{refused:?}");
    assert!(object_exists(&env, &archive_key(&first)).await);

    // Cleared: the export can go; it stays listed as removed.
    let cleared = env
        .backups
        .clear_legal_hold(pb::ClearLegalHoldRequest {
            target: Some(pb::HoldTarget {
                target: Some(pb::hold_target::Target::Export(first.name.clone())),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!cleared.clear_time.is_empty());
    let removed = env
        .exports
        .delete_export(pb::DeleteExportRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.state, pb::ExportState::Removed as i32);
    assert!(removed.removed_by.contains("it-admin"), "{removed:?}");
    assert!(!object_exists(&env, &archive_key(&first)).await);
    // Again: the tombstone, unchanged.
    let again = env
        .exports
        .delete_export(pb::DeleteExportRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.remove_time, removed.remove_time);

    // A hold on the whole tenant keeps everything past retention.
    env.backups
        .set_legal_hold(hold(pb::hold_target::Target::Tenant("held".into()), CASE))
        .await
        .unwrap();
    tick_and_wait(&mut env, &replica, minute(4)).await;
    let complete = exports_of(&mut env, "held")
        .await
        .into_iter()
        .filter(|e| e.state == pb::ExportState::Complete as i32)
        .count();
    assert_eq!(complete, 2);
    assert_eq!(status(&mut env, "held").await.legal_holds.len(), 1);

    // Both actions are in the tenant's audit chain.
    let methods: Vec<String> = env
        .audit_events("held")
        .await
        .into_iter()
        .map(|e| e.method)
        .collect();
    for m in ["SetLegalHold", "ClearLegalHold", "DeleteExport"] {
        assert!(
            methods.iter().any(|x| x.ends_with(m)),
            "{m} not audited: {methods:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_tenants_schedule_stops() {
    let (mut env, replica, _, _) = with_policy("gone", pb::Tier::Pool, every_minute(None, 5)).await;
    assert_eq!(tick_and_wait(&mut env, &replica, minute(2)).await.len(), 1);
    let done = crate::delete::delete(&mut env, crate::delete::request("gone")).await;
    crate::delete::certified(&mut env, &done).await;
    for m in [3, 4, 10] {
        let t = tick(&replica, minute(m)).await.unwrap();
        assert!(t.started.is_empty() && t.waiting.is_empty(), "{t:?}");
    }
    // Its own policy went with it, and can no longer be set.
    assert_no_policies(&mut env).await;
    let refused = env
        .backups
        .set_backup_policy(every_minute(tenant_target("gone"), 5))
        .await
        .unwrap_err();
    assert!(
        matches!(refused.code(), Code::FailedPrecondition | Code::NotFound),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_and_holds_are_refused_and_change_nothing() {
    let mut env = TestEnv::start().await;
    env.provision("strict", pb::Tier::Pool, "main").await;
    let base = every_minute(tenant_target("strict"), 1);
    let cases: Vec<(pb::SetBackupPolicyRequest, Code, &str)> = vec![
        (
            pb::SetBackupPolicyRequest {
                schedule: "0 * * *".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "schedule",
        ),
        (
            pb::SetBackupPolicyRequest {
                schedule: "0 0 * * * *".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "schedule",
        ),
        (
            pb::SetBackupPolicyRequest {
                schedule: "0 25 * * *".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "schedule",
        ),
        (
            pb::SetBackupPolicyRequest {
                schedule: "0 0 31 2 *".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "schedule",
        ),
        (
            pb::SetBackupPolicyRequest {
                keep_last: -1,
                ..base.clone()
            },
            Code::InvalidArgument,
            "keep_last",
        ),
        (
            pb::SetBackupPolicyRequest {
                keep_last: 0,
                ..base.clone()
            },
            Code::InvalidArgument,
            "keep_last",
        ),
        (
            pb::SetBackupPolicyRequest {
                keep_yearly: 1000,
                ..base.clone()
            },
            Code::InvalidArgument,
            "keep_yearly",
        ),
        (
            pb::SetBackupPolicyRequest {
                target: None,
                ..base.clone()
            },
            Code::InvalidArgument,
            "target",
        ),
        (
            pb::SetBackupPolicyRequest {
                target: plan_target(" "),
                ..base.clone()
            },
            Code::InvalidArgument,
            "target.plan",
        ),
        (
            pb::SetBackupPolicyRequest {
                target: tenant_target("no such!"),
                ..base.clone()
            },
            Code::InvalidArgument,
            "target.tenant",
        ),
        (
            pb::SetBackupPolicyRequest {
                target: tenant_target("nobody"),
                ..base.clone()
            },
            Code::NotFound,
            "",
        ),
        (
            pb::SetBackupPolicyRequest {
                drill: "0 3 * *".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "drill",
        ),
    ];
    for (request, code, field) in cases {
        let e = env
            .backups
            .set_backup_policy(request.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{request:?}: {e:?}");
        if !field.is_empty() {
            assert_eq!(crate::harness::bad_field(&e), field, "{request:?}");
        }
    }
    assert_no_policies(&mut env).await;
    let e = env
        .backups
        .get_backup_policy(pb::GetBackupPolicyRequest {
            target: tenant_target("strict"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A hold needs a reason and something to hold.
    let e = env
        .backups
        .set_legal_hold(hold(pb::hold_target::Target::Tenant("strict".into()), "  "))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = env
        .backups
        .set_legal_hold(hold(
            pb::hold_target::Target::Export(Uuid::new_v4().to_string()),
            "case",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env
        .exports
        .delete_export(pb::DeleteExportRequest {
            name: "exports/not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let (holds,): (i64,) = sqlx::query_as("SELECT count(*) FROM legal_holds")
        .fetch_one(&env.registry)
        .await
        .unwrap();
    assert_eq!(holds, 0);
}

/// Whether the tenant's drill scratch schema is left beside its container.
async fn scratch_schemas(place: &crate::harness::Place, tenant: &str) -> i64 {
    let pool = crate::harness::admin(&place.cluster, &place.database).await;
    let tenant: Uuid = tenant.parse().unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(format!("drill_{}", tenant.simple()))
        .fetch_one(&pool)
        .await
        .unwrap();
    n
}

async fn drill(env: &mut TestEnv, replica: &Control, at: DateTime<Utc>) -> pb::Operation {
    let done = tick(replica, at).await.unwrap();
    let drills: Vec<Uuid> = done
        .started
        .iter()
        .filter(|(k, _, _)| *k == tenantd::backup::RunKind::Drill)
        .map(|(_, _, op)| *op)
        .collect();
    assert_eq!(drills.len(), 1, "{done:?}");
    env.wait(&format!("operations/{}", drills[0])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drills_pass_on_a_good_backup_and_fail_naming_a_damaged_one() {
    // Backups once a year (never due here), a drill every minute.
    let yearly_with_drills = pb::SetBackupPolicyRequest {
        schedule: "0 0 1 1 *".into(),
        keep_last: 3,
        drill: "* * * * *".into(),
        ..Default::default()
    };
    let (mut env, replica, t, policy) =
        with_policy("drilled", pb::Tier::Schema, yearly_with_drills).await;
    let place = crate::harness::Place::of(&t);
    crate::harness::fill(&place, t.id.parse().unwrap(), 300).await;
    let before = crate::harness::snapshot(&place, t.id.parse().unwrap()).await;

    // Nothing to drill yet: the drill fails and says so.
    let op = drill(&mut env, &replica, minute(2)).await;
    assert!(
        matches!(op.result, Some(pb::operation::Result::Error(_))),
        "{op:?}"
    );
    let s = status(&mut env, "drilled").await;
    let last = s.last_drill.unwrap();
    assert!(!last.passed);
    assert!(last.error.contains("no complete backup"), "{last:?}");

    // A good backup passes, and leaves no scratch container.
    let good = crate::export::export(&mut env, "drilled").await;
    let op = drill(&mut env, &replica, minute(3)).await;
    assert_eq!(
        op.metadata.as_ref().unwrap().state,
        pb::OperationState::Succeeded as i32,
        "{op:?}"
    );
    let load = op
        .metadata
        .unwrap()
        .steps
        .into_iter()
        .find(|s| s.name == "load")
        .unwrap();
    let loaded: i64 = load.items.iter().map(|i| i.done).sum();
    assert_eq!(
        loaded as u64,
        good.tables.iter().map(|t| t.rows).sum::<u64>()
    );
    assert!(loaded >= 300);
    let last = status(&mut env, "drilled").await.last_drill.unwrap();
    assert!(last.passed, "{last:?}");
    assert_eq!(last.export, good.name);
    assert_eq!(scratch_schemas(&place, &t.id).await, 0);

    // The same backup, damaged in the store: the drill fails, naming it.
    let objects = env.objects().await;
    let key = ObjectKey::new(format!("{}/dump.sql.zst.tdxs", archive_key(&good))).unwrap();
    let mut archive = objects.get(&key).await.unwrap();
    let at = archive.len() / 2;
    archive[at] ^= 0x01;
    objects.put(&key, &archive).await.unwrap();
    let op = drill(&mut env, &replica, minute(4)).await;
    let Some(pb::operation::Result::Error(error)) = op.result else {
        panic!("the drill of a damaged backup must fail: {op:?}");
    };
    assert_eq!(error.code, Code::DataLoss as i32, "{error:?}");
    let last = status(&mut env, "drilled").await.last_drill.unwrap();
    assert!(!last.passed);
    assert!(
        last.error
            .contains(good.name.trim_start_matches("exports/")),
        "{last:?}"
    );
    assert_eq!(scratch_schemas(&place, &t.id).await, 0);

    // The failure is where an alert can see it.
    let metrics = tenantd::metrics::render(replica.registry_handle()).await;
    let id = policy.name.trim_start_matches("backup-policies/");
    assert!(
        metrics.contains(&format!(
            "tenantd_backup_drills_failing{{policy=\"{id}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "tenantd_backup_recovery_point_age_seconds{{policy=\"{id}\"}}"
    )));
    // The tenant itself was never touched.
    assert_eq!(
        crate::harness::snapshot(&place, t.id.parse().unwrap()).await,
        before
    );
}

/// While a drill holds a tenant's restored rows in its scratch schema, the tenant's own
/// database login (issued as an application gets it) cannot read them: the scratch is
/// granted to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_own_login_cannot_reach_a_drills_scratch_copy() {
    let (config, dir) = TestEnv::config().await;
    // The drill waits before its check, so its scratch copy is there to try.
    let mut env = TestEnv::spawn_with(config, dir, "drill.before_check=sleep(4000)").await;
    let t = env.provision("peeked", pb::Tier::Schema, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    crate::harness::fill(&crate::harness::Place::of(&t), id, 50).await;
    env.backups
        .set_backup_policy(pb::SetBackupPolicyRequest {
            target: tenant_target("peeked"),
            schedule: "0 0 1 1 *".into(),
            keep_last: 1,
            drill: "* * * * *".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    crate::export::export(&mut env, "peeked").await;
    let replica = env.replica().await;
    let done = tick(&replica, minute(2)).await.unwrap();
    let (_, _, op) = done.started.first().copied().expect("a drill started");
    let name = format!("operations/{op}");
    env.until_step_done(&name, "index").await;

    let scratch = format!("drill_{}", id.simple());
    let (mut login, _) = crate::harness::AppConnector::new(&env)
        .connect(id)
        .await
        .unwrap();
    let refused = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{scratch}\".patients"
    )))
    .execute(&mut login)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    let (usage,): (bool,) = sqlx::query_as("SELECT has_schema_privilege($1, 'USAGE')")
        .bind(&scratch)
        .fetch_one(&mut login)
        .await
        .unwrap();
    assert!(!usage);
    // The drill then passes and the scratch is gone.
    let finished = env.wait(&name).await;
    assert_eq!(
        finished.metadata.unwrap().state,
        pb::OperationState::Succeeded as i32
    );
}
