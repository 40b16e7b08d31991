//! Online moves (docs/tier-changes.md): the tenant writes — inserts, updates and deletes of
//! rows the copy already took — from before the copy until the fence and again after the
//! switch, and nothing it was told succeeded is lost or undone; cancelling mid-catch-up
//! rolls the move back with nothing left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::dataplane::fence;
use tenantd::workflow::Steps;

use crate::change_tier::{assert_no_capture_left, column_at, details, request};
use crate::harness::{AppConnector, Place, TestEnv, fill, snapshot, sqlstate};

/// What the writer was told succeeded.
#[derive(Default)]
struct Acked {
    /// The last acknowledged given_name of each patient it renamed, by mrn.
    names: BTreeMap<String, String>,
    /// Observations it deleted.
    deleted: BTreeSet<Uuid>,
    /// Audit events it inserted.
    inserted: Vec<Uuid>,
    fenced: u64,
}

/// Renames patients, deletes observations and inserts audit events, round-robin, through
/// issued logins that follow the routing, until `stop`.
async fn writer(mut apps: AppConnector, tenant: Uuid, stop: CancellationToken) -> Acked {
    let mut acked = Acked::default();
    let mut conn: Option<PgConnection> = None;
    let mut i = 0u64;
    while !stop.is_cancelled() {
        let Some(c) = conn.as_mut() else {
            match apps.connect(tenant).await {
                Ok((c, _)) => conn = Some(c),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        };
        i += 1;
        let r = match i % 3 {
            0 => {
                let (mrn, name) = (format!("mrn-{}", i % 40 + 1), format!("renamed {i}"));
                sqlx::query("UPDATE patients SET given_name = $1 WHERE mrn = $2")
                    .bind(&name)
                    .bind(&mrn)
                    .execute(&mut *c)
                    .await
                    .map(|_| {
                        acked.names.insert(mrn, name);
                    })
            }
            1 => sqlx::query_scalar::<_, Uuid>(
                "DELETE FROM observations WHERE id = (SELECT id FROM observations ORDER BY id LIMIT 1)
                 RETURNING id",
            )
            .fetch_optional(&mut *c)
            .await
            .map(|deleted| acked.deleted.extend(deleted)),
            _ => {
                let id = Uuid::new_v4();
                sqlx::query(
                    "INSERT INTO audit_events (tenant_id, id, actor, action, entity) \
                     VALUES ($1, $2, 'writer', 'write', 'test')",
                )
                .bind(tenant)
                .bind(id)
                .execute(&mut *c)
                .await
                .map(|_| acked.inserted.push(id))
            }
        };
        match r {
            Ok(()) => {}
            Err(e) if sqlstate(&e) == fence::SQLSTATE => {
                acked.fenced += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                conn = None;
            }
            Err(_) => conn = None,
        }
    }
    acked
}

/// Everything `acked` says happened is so at `place`.
async fn assert_acked_hold(place: &Place, tenant: Uuid, acked: &Acked) {
    let names: Vec<(String, String)> = {
        let pool = crate::harness::admin(&place.cluster, &place.database).await;
        let q = format!(
            "SELECT mrn, given_name FROM \"{}\".patients WHERE tenant_id = $1",
            place.schema
        );
        sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(tenant)
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let names: BTreeMap<String, String> = names.into_iter().collect();
    for (mrn, name) in &acked.names {
        assert_eq!(names.get(mrn), Some(name), "the last rename of {mrn}");
    }
    let observations: BTreeSet<Uuid> = column_at(
        place,
        "SELECT id FROM S.observations WHERE tenant_id = $1",
        tenant,
    )
    .await
    .into_iter()
    .collect();
    assert!(
        acked.deleted.is_disjoint(&observations),
        "a deleted observation came back"
    );
    let mut events: Vec<Uuid> = column_at(
        place,
        "SELECT id FROM S.audit_events WHERE tenant_id = $1 AND actor = 'writer'",
        tenant,
    )
    .await;
    let mut inserted = acked.inserted.clone();
    events.sort();
    inserted.sort();
    assert_eq!(events, inserted, "every acknowledged insert, once");
}

#[tokio::test]
async fn a_writer_changing_copied_rows_throughout_the_move_loses_nothing() {
    let _one = crate::harness::one_at_a_time().await;
    // Writes land between the slot and the copy, and between the copy and the catch-up.
    let mut env =
        TestEnv::spawn("change_tier.before_copy=sleep(400);change_tier.after_copy=sleep(800)")
            .await;
    let t = env.provision("busy-online", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 200).await;

    let stop = CancellationToken::new();
    let writing = tokio::spawn(writer(AppConnector::new(&env), id, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut t = t;
    for (tier, cluster) in [(pb::Tier::Schema, "main"), (pb::Tier::Database, "second")] {
        let op = request(&mut env, &t.id, tier, cluster).await;
        let op = env.wait(&op.name).await;
        let d = details(&op);
        assert!(d.online, "{d:?}");
        assert!(d.catch_up_rounds >= 1, "{d:?}");
        assert!(
            d.catch_up_changes > 0,
            "changes made during the copy were applied: {d:?}"
        );
        // Each round is reported, numbered up to the last, and adds up to the total.
        let rounds = &d.recent_rounds;
        assert_eq!(rounds.len() as i32, d.catch_up_rounds.min(32), "{d:?}");
        assert_eq!(rounds.last().map(|r| r.round), Some(d.catch_up_rounds));
        if d.catch_up_rounds <= 32 {
            let sum: i64 = rounds.iter().map(|r| r.changes).sum();
            assert_eq!(sum, d.catch_up_changes, "{d:?}");
        }
        assert!(d.peak_retained_wal_bytes > 0, "the slot held WAL: {d:?}");
        assert!(
            d.verified_ahead_rows > 0,
            "rows the catch-up wrote were compared before the fence: {d:?}"
        );
        t = match op.result {
            Some(pb::operation::Result::Tenant(moved)) => moved,
            other => panic!("move to {tier:?} failed: {other:?}"),
        };
        assert_no_capture_left(&env).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let acked = writing.await.unwrap();
    assert!(
        acked.names.len() > 5 && acked.deleted.len() > 5 && acked.inserted.len() > 5,
        "the writer wrote throughout: {} renames, {} deletes, {} inserts",
        acked.names.len(),
        acked.deleted.len(),
        acked.inserted.len()
    );
    assert_acked_hold(&Place::of(&t), id, &acked).await;
}

#[tokio::test]
async fn cancelling_mid_catch_up_rolls_the_move_back_and_leaves_no_slot() {
    let _one = crate::harness::one_at_a_time().await;
    // The first catch-up round is held, so the cancellation meets it.
    let mut env = TestEnv::spawn(&format!(
        "{}=sleep(1500)*1",
        tenantd::workflows::change_tier::CATCH_UP_ROUND
    ))
    .await;
    let t = env.provision("cancel-online", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 50).await;
    let before = snapshot(&Place::of(&t), id).await;

    let op = request(&mut env, &t.id, pb::Tier::Schema, "main").await;
    env.until_step_done(&op.name, "copy").await;
    let op = env.cancel_and_wait(&op.name).await;
    let m = op.metadata.as_ref().unwrap();
    assert_eq!(m.state, pb::OperationState::Cancelled as i32, "{op:?}");
    match &op.result {
        Some(pb::operation::Result::Error(e)) => assert_eq!(e.step, "catch_up", "{e:?}"),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    let now = env.tenant(&t.id).await;
    assert_eq!((now.tier, &now.placement), (t.tier, &t.placement));
    assert_eq!(snapshot(&Place::of(&t), id).await, before, "source intact");
    let f = crate::harness::footprint(&t.id, "main").await;
    assert_eq!(f.schemas, 0, "target dropped");
    assert_no_capture_left(&env).await;
}

/// An operation stored by the previous release, with its eight steps (the source already
/// fenced, its copy next), resumes under this build once migration 0009 renumbered it: as a
/// fenced move, copied in `tail`.
#[tokio::test]
async fn a_move_stored_with_the_previous_steps_resumes_after_the_upgrade() {
    let _one = crate::harness::one_at_a_time().await;
    let mut env = TestEnv::spawn("change_tier.after_fence=exit").await;
    let t = env.provision("upgraded-move", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 30).await;
    let before = snapshot(&Place::of(&t), id).await;
    let op = request(&mut env, &t.id, pb::Tier::Schema, "main").await;
    assert_eq!(
        env.wait_exit(),
        Some(tenantd::workflow::failpoint::EXIT_CODE)
    );
    // Back to what the previous release stored: no capture, no `online`, eight steps.
    let op_id = crate::harness::operation_id(&op);
    let plane =
        tenantd::dataplane::DataPlane::new(&env.config.clusters, crate::harness::example_schema())
            .unwrap();
    let main = plane.cluster("main").unwrap();
    let src = tenantd::dataplane::Container::plan(id, tenantd::tenant::Tier::Pool, main);
    let dst = tenantd::dataplane::Container::plan(id, tenantd::tenant::Tier::Schema, main);
    tenantd::dataplane::changes::Capture::for_operation(op_id)
        .stop((main, &src), (main, &dst))
        .await
        .unwrap();
    let previous = [
        "UPDATE operations SET data = data #- '{state,online}', next_step = next_step - 3
         WHERE id = $1",
        "DELETE FROM operation_steps WHERE operation_id = $1
           AND name IN ('capture', 'copy', 'catch_up')",
        "UPDATE operation_steps SET name = 'copy' WHERE operation_id = $1 AND name = 'tail'",
        "UPDATE operation_steps SET idx = idx + 1000 WHERE operation_id = $1",
        "UPDATE operation_steps SET idx = CASE WHEN idx - 1000 >= 5 THEN idx - 1003
                                              ELSE idx - 1000 END
         WHERE operation_id = $1",
        "DELETE FROM _sqlx_migrations WHERE version = 9",
    ];
    crate::harness::for_id(&env.registry, op_id, &previous).await;

    env.restart("").await;
    let op = env.wait(&op.name).await;
    let moved = match &op.result {
        Some(pb::operation::Result::Tenant(moved)) => moved.clone(),
        other => panic!("the stored move did not finish: {other:?}"),
    };
    let d = details(&op);
    assert!(!d.online, "it went on as the fenced move it was");
    let names: Vec<&str> = op
        .metadata
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        names,
        tenantd::workflows::change_tier::Step::names(),
        "renumbered to this build's steps"
    );
    assert_eq!(snapshot(&Place::of(&moved), id).await, before);
    assert_no_capture_left(&env).await;
}

/// A crash in the middle of the catch-up: the next process resumes from the slot's position
/// and the move ends as it would have, with nothing left behind.
#[tokio::test]
async fn a_crash_mid_catch_up_resumes_from_the_slot() {
    let _one = crate::harness::one_at_a_time().await;
    let mut env = TestEnv::spawn(&format!(
        "change_tier.after_copy=sleep(500);{}=exit*1",
        tenantd::workflows::change_tier::CATCH_UP_ROUND
    ))
    .await;
    let t = env
        .provision("crash-catch-up", pb::Tier::Schema, "main")
        .await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 40).await;
    let stop = CancellationToken::new();
    let writing = tokio::spawn(writer(AppConnector::new(&env), id, stop.clone()));
    let op = request(&mut env, &t.id, pb::Tier::Database, "second").await;
    assert_eq!(
        env.wait_exit(),
        Some(tenantd::workflow::failpoint::EXIT_CODE)
    );
    env.restart("").await;
    let op = env.wait(&op.name).await;
    stop.cancel();
    let acked = writing.await.unwrap();
    let moved = match &op.result {
        Some(pb::operation::Result::Tenant(moved)) => moved.clone(),
        other => panic!("the move did not finish after the crash: {other:?}"),
    };
    assert!(details(&op).online);
    assert_acked_hold(&Place::of(&moved), id, &acked).await;
    assert_no_capture_left(&env).await;
}

/// A schema change to the tenant's tables during the move (a column added to its schema
/// while it writes): the captured row does not fit the target, so the move is rolled back,
/// the tenant stays where it was, writable, and nothing is left behind.
#[tokio::test]
async fn a_schema_change_during_the_move_rolls_it_back() {
    let _one = crate::harness::one_at_a_time().await;
    let mut env = TestEnv::spawn("change_tier.after_copy=sleep(1500)").await;
    let t = env
        .provision("ddl-during-move", pb::Tier::Schema, "main")
        .await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 20).await;
    let op = request(&mut env, &t.id, pb::Tier::Database, "second").await;
    env.until_step_done(&op.name, "capture").await;
    let place = Place::of(&t);
    let admin = crate::harness::admin(&place.cluster, &place.database).await;
    let alter = format!(
        "ALTER TABLE \"{}\".patients ADD COLUMN nickname text; \
         UPDATE \"{}\".patients SET nickname = 'Doc' WHERE mrn = 'mrn-1'",
        place.schema, place.schema
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(alter))
        .execute(&admin)
        .await
        .unwrap();
    let op = env.wait(&op.name).await;
    match &op.result {
        Some(pb::operation::Result::Error(e)) => {
            assert!(e.message.contains("nickname"), "{e:?}")
        }
        other => panic!("expected the move to be refused, got {other:?}"),
    }
    let now = env.tenant(&t.id).await;
    assert_eq!((now.tier, &now.placement), (t.tier, &t.placement));
    assert_no_capture_left(&env).await;
    let f = crate::harness::footprint(&t.id, "second").await;
    assert_eq!(f.databases, 0, "target dropped");
}

/// A schema with a table that has no primary key (a log nobody keyed): publishing it would
/// make every UPDATE and DELETE on it fail while the move ran, so the move runs fenced, says
/// why, and still moves every row.
#[tokio::test]
async fn a_table_without_a_primary_key_keeps_the_move_fenced_and_it_says_why() {
    let _one = crate::harness::one_at_a_time().await;
    let (mut config, dir) = TestEnv::config().await;
    let schema = dir.join("schema");
    std::fs::create_dir_all(&schema).unwrap();
    for entry in std::fs::read_dir(crate::harness::EXAMPLE_SCHEMA_DIR).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, schema.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        schema.join("0005_visit_log.sql"),
        "CREATE TABLE visit_log (tenant_id uuid NOT NULL, noted_at timestamptz NOT NULL \
         DEFAULT now(), note text);\n",
    )
    .unwrap();
    config.tenant_schema.dir = Some(schema);
    let mut env = TestEnv::start_with(config, dir).await;
    let t = env.provision("unkeyed-log", pb::Tier::Schema, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 10).await;
    let place = Place::of(&t);
    let admin = crate::harness::admin(&place.cluster, &place.database).await;
    let insert = format!(
        "INSERT INTO \"{}\".visit_log (tenant_id, note) VALUES ($1, 'seen'), ($1, 'seen')",
        place.schema
    );
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(id)
        .execute(&admin)
        .await
        .unwrap();
    let before = snapshot(&place, id).await;
    let op = request(&mut env, &t.id, pb::Tier::Database, "second").await;
    let op = env.wait(&op.name).await;
    let d = details(&op);
    assert!(!d.online, "{d:?}");
    assert!(d.fenced_copy_because.contains("visit_log"), "{d:?}");
    let moved = match &op.result {
        Some(pb::operation::Result::Tenant(moved)) => moved.clone(),
        other => panic!("the fenced move failed: {other:?}"),
    };
    assert_eq!(snapshot(&Place::of(&moved), id).await, before, "same rows");
    // The unkeyed table's rows moved too.
    let logged: Vec<String> = column_at(
        &Place::of(&moved),
        "SELECT note FROM S.visit_log WHERE tenant_id = $1",
        id,
    )
    .await;
    assert_eq!(logged, ["seen", "seen"]);
    assert_no_capture_left(&env).await;
}

/// How long `step` of `op` took.
fn step_took(op: &pb::Operation, step: &str) -> Duration {
    let m = op.metadata.as_ref().expect("metadata");
    let s = m.steps.iter().find(|s| s.name == step).expect("the step");
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("a time");
    (at(&s.end_time) - at(&s.start_time))
        .to_std()
        .expect("ends after it starts")
}

#[tokio::test]
async fn a_paced_copy_keeps_to_its_pace_and_the_move_reports_it() {
    let _one = crate::harness::one_at_a_time().await;
    let (mut config, dir) = TestEnv::config().await;
    // The service's default pace, for requests that name none.
    config.workflow.copy_mb_per_s = 1;
    let mut env = TestEnv::start_with(config, dir).await;
    let t = env.provision("gently", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 1500).await;
    // What the copy reads, at least: the tenant's rows as stored.
    let place = Place::of(&t);
    let admin = crate::harness::admin(&place.cluster, &place.database).await;
    let mut bytes = 0i64;
    for table in [
        "patients",
        "encounters",
        "observations",
        "clinical_notes",
        "appointments",
        "audit_events",
    ] {
        let sql = format!(
            "SELECT coalesce(sum(pg_column_size(t.*)), 0)::bigint FROM pool.{table} t \
             WHERE tenant_id = $1"
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(&admin)
            .await
            .unwrap();
        bytes += n;
    }
    assert!(bytes > 300_000, "{bytes} bytes to copy");
    let before = snapshot(&place, id).await;

    let op = request(&mut env, &t.id, pb::Tier::Schema, "main").await;
    let op = env.wait(&op.name).await;
    let d = details(&op);
    assert!(d.online, "{d:?}");
    assert_eq!(d.copy_mb_per_s, 1, "the service's default applied: {d:?}");
    let floor = Duration::from_secs_f64(bytes as f64 / 1e6);
    let took = step_took(&op, "copy");
    assert!(
        took >= floor,
        "at 1 MB/s, {bytes} bytes take at least {floor:?}; the copy took {took:?}"
    );
    let moved = match &op.result {
        Some(pb::operation::Result::Tenant(moved)) => moved.clone(),
        other => panic!("the paced move failed: {other:?}"),
    };
    assert_eq!(snapshot(&Place::of(&moved), id).await, before, "same rows");

    // A request's own pace wins; the same request id with another pace is another request.
    let ask = |pace: u32| pb::ChangeTierRequest {
        tenant: t.id.clone(),
        tier: pb::Tier::Database as i32,
        cluster: "second".into(),
        request_id: "upgrade-7".into(),
        copy_mb_per_s: pace,
    };
    let op = env
        .tenants
        .change_tier(ask(200))
        .await
        .unwrap()
        .into_inner();
    let err = env.tenants.change_tier(ask(100)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let op = env.wait(&op.name).await;
    assert_eq!(details(&op).copy_mb_per_s, 200);
    assert!(matches!(op.result, Some(pb::operation::Result::Tenant(_))));
    assert_no_capture_left(&env).await;
}
