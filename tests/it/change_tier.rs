//! Tier changes end to end: every direction row for row, a concurrent writer that never loses
//! an acknowledged write, neighbours unaffected, crashes at every step boundary, a failed
//! verification rolled back, and a second operation refused.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use tonic_types::StatusExt;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::dataplane::fence;
use tenantd::workflow::Steps;

use crate::harness::{
    AppConnector, Place, TestEnv, admin, fill, footprint, keys_and_indexes, snapshot, sqlstate,
};

/// Asks for a move and returns the operation (not waiting).
pub(crate) async fn request(
    env: &mut TestEnv,
    tenant: &str,
    tier: pb::Tier,
    cluster: &str,
) -> pb::Operation {
    env.tenants
        .change_tier(pb::ChangeTierRequest {
            tenant: tenant.into(),
            tier: tier as i32,
            cluster: cluster.into(),
            request_id: String::new(),
            copy_mb_per_s: 0,
        })
        .await
        .expect("change tier accepted")
        .into_inner()
}

pub(crate) fn details(op: &pb::Operation) -> pb::TierChange {
    match op.metadata.as_ref().and_then(|m| m.details.clone()) {
        Some(pb::operation_metadata::Details::TierChange(t)) => t,
        _ => panic!("no tier change details in {op:?}"),
    }
}

/// Moves the tenant and checks the result: the operation's tenant is in the new place, the
/// routing epoch advanced, the rows are the same, and the source is gone.
pub(crate) async fn move_to(
    env: &mut TestEnv,
    t: &pb::Tenant,
    tier: pb::Tier,
    cluster: &str,
) -> pb::Tenant {
    let id: Uuid = t.id.parse().unwrap();
    let before = snapshot(&Place::of(t), id).await;
    let op = request(env, &t.id, tier, cluster).await;
    let op = env.wait(&op.name).await;
    let moved = match &op.result {
        Some(pb::operation::Result::Tenant(moved)) => moved.clone(),
        other => panic!("move to {tier:?} on {cluster} failed: {other:?}"),
    };
    assert_eq!(moved.tier, tier as i32);
    assert_eq!(moved.placement.as_ref().unwrap().cluster, cluster);
    assert!(moved.routing_epoch > t.routing_epoch, "epoch advanced");
    let d = details(&op);
    assert_eq!(d.source_tier, t.tier);
    assert_eq!(d.target_tier, tier as i32);
    // Online, unless a transaction elsewhere on the shared test cluster (another test's)
    // outlasted the slot's wait: then it says so.
    assert!(
        d.online || d.fenced_copy_because.contains("ran longer"),
        "the copy ran while the tenant could write: {d:?}"
    );
    assert_no_capture_left(env).await;
    assert!(!d.fence_time.is_empty() && !d.unfence_time.is_empty());
    let rows: usize = before.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(d.rows_copied as usize, rows);
    let copy = op
        .metadata
        .as_ref()
        .unwrap()
        .steps
        .iter()
        // A fenced move copies in its tail.
        .find(|s| s.name == if d.online { "copy" } else { "tail" })
        .unwrap()
        .clone();
    assert_eq!(copy.items.len(), before.len(), "one item per tenant table");
    assert!(copy.items.iter().all(|i| i.done == i.total));
    assert_eq!(copy.progress_done as usize, rows);

    assert_eq!(snapshot(&Place::of(&moved), id).await, before, "same rows");
    assert_gone(t, &moved).await;
    moved
}

/// No finished move of `env`'s registry left its replication slot or publication on either
/// cluster (a slot left behind would retain WAL forever). The clusters are shared with other
/// tests, whose moves may be running: only this registry's operations count.
pub(crate) async fn assert_no_capture_left(env: &TestEnv) {
    let plane =
        tenantd::dataplane::DataPlane::new(&env.config.clusters, crate::harness::example_schema())
            .unwrap();
    for cluster in plane.clusters() {
        for left in tenantd::dataplane::changes::leftovers(cluster)
            .await
            .unwrap()
        {
            let id = left.rsplit('_').next().unwrap();
            let Ok(op) = Uuid::parse_str(id) else {
                continue;
            };
            let state: Option<(String,)> =
                sqlx::query_as("SELECT state FROM operations WHERE id = $1")
                    .bind(op)
                    .fetch_optional(&env.registry)
                    .await
                    .unwrap();
            if let Some((state,)) = state {
                assert!(
                    !matches!(state.as_str(), "succeeded" | "failed" | "cancelled"),
                    "{left} left behind on {} by a {state} move",
                    cluster.name
                );
            }
        }
    }
}

/// The source container no longer holds anything of the tenant (unless the target reuses it).
async fn assert_gone(from: &pb::Tenant, to: &pb::Tenant) {
    let id: Uuid = from.id.parse().unwrap();
    let src = Place::of(from);
    let f = footprint(&from.id, &src.cluster).await;
    let same_cluster = src.cluster == Place::of(to).cluster;
    if from.tier == pb::Tier::Pool as i32 {
        assert_eq!(f.pool_rows, 0, "pool rows removed");
        let fenced = fences(&src, id).await;
        assert_eq!(
            fenced, 1,
            "the pool fence stays, a tombstone for stale routes"
        );
    }
    if from.tier == pb::Tier::Schema as i32 {
        assert_eq!(f.schemas, 0, "schema dropped");
    }
    if from.tier == pb::Tier::Database as i32 {
        assert_eq!(f.databases, 0, "database dropped");
    }
    let own_role_after = to.tier != pb::Tier::Pool as i32 && same_cluster;
    assert_eq!(
        f.roles, own_role_after as i64,
        "role kept only if the target uses it"
    );
}

/// The first column of `sql` (where `S.` stands for the place's schema) for `tenant` ($1).
pub(crate) async fn column_at<T>(place: &Place, sql: &str, tenant: Uuid) -> Vec<T>
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let pool = admin(&place.cluster, &place.database).await;
    let q = sql.replace("S.", &format!("\"{}\".", place.schema));
    sqlx::query_as::<_, (T,)>(sqlx::AssertSqlSafe(q))
        .bind(tenant)
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect()
}

/// The tenant's fence rows at `place`, in every fence table there (tenantd's, the example's).
async fn fences(place: &Place, tenant: Uuid) -> i64 {
    let pool = admin(&place.cluster, &place.database).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1
           AND tablename IN ('tenant_write_fences', 'tenantd_write_fences')",
    )
    .bind(&place.schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut n = 0;
    for table in tables {
        let sql = format!("SELECT count(*) FROM S.{table} WHERE tenant_id = $1");
        n += column_at::<i64>(place, &sql, tenant).await[0];
    }
    n
}

async fn credentials(env: &TestEnv, tenant: Uuid) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM tenant_credentials WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&env.registry)
        .await
        .unwrap()
        .0
}

/// Two pool tenants on `main`, with their ids.
async fn pool_pair(env: &mut TestEnv, a: &str, b: &str) -> (pb::Tenant, Uuid, pb::Tenant, Uuid) {
    let a = env.provision(a, pb::Tier::Pool, "main").await;
    let b = env.provision(b, pb::Tier::Pool, "main").await;
    let (aid, bid) = (a.id.parse().unwrap(), b.id.parse().unwrap());
    (a, aid, b, bid)
}

#[tokio::test]
async fn every_direction_moves_the_rows_unchanged() {
    let mut env = TestEnv::start().await;
    let (t, id, neighbour, nid) = pool_pair(&mut env, "mover", "stays-put").await;
    fill(&Place::of(&t), id, 40).await;
    fill(&Place::of(&neighbour), nid, 25).await;
    let neighbour_rows = snapshot(&Place::pool("main"), nid).await;
    // A moved container's keys, indexes and foreign keys are set aside for the copy and
    // built again: it ends as a provisioned one is.
    let mut shapes = std::collections::HashMap::new();
    for (tier, slug) in [
        (pb::Tier::Schema, "shape-schema"),
        (pb::Tier::Database, "shape-database"),
    ] {
        let reference = env.provision(slug, tier, "main").await;
        shapes.insert(tier, keys_and_indexes(&Place::of(&reference)).await);
    }

    let mut t = t;
    for (tier, cluster) in [
        (pb::Tier::Schema, "main"),     // pool → schema
        (pb::Tier::Database, "main"),   // schema → database (same role)
        (pb::Tier::Pool, "main"),       // database → pool
        (pb::Tier::Database, "second"), // pool → database on another cluster
        (pb::Tier::Schema, "main"),     // database → schema, back across clusters
        (pb::Tier::Database, "main"),   // schema → database
        (pb::Tier::Schema, "main"),     // database → schema (same role)
        (pb::Tier::Pool, "main"),       // schema → pool
    ] {
        t = move_to(&mut env, &t, tier, cluster).await;
        if let Some(shape) = shapes.get(&tier) {
            assert_eq!(
                &keys_and_indexes(&Place::of(&t)).await,
                shape,
                "{tier:?} on {cluster}: keys and indexes as provisioned"
            );
        }
        // The application role works in the new place.
        let (mut conn, epoch) = AppConnector::new(&env).connect(id).await.unwrap();
        assert_eq!(epoch, t.routing_epoch);
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM patients")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 40, "{tier:?}: the app sees its patients");
        sqlx::query("UPDATE patients SET phone = '555' WHERE mrn = 'mrn-1'")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(
        snapshot(&Place::pool("main"), nid).await,
        neighbour_rows,
        "the neighbour's rows never changed"
    );
    // Only a pool tenant is left: no credential remains for it.
    assert_eq!(credentials(&env, id).await, 0);
}

/// What an application writer saw.
#[derive(Debug, Default)]
struct Writes {
    acked: Vec<Uuid>,
    fenced: u32,
    reads_while_fenced: u32,
    epochs: HashSet<i64>,
}

/// Inserts audit events one transaction at a time through the tenant's resolved route until
/// `stop`; a fenced write re-resolves and is retried, never counted.
async fn writer(mut apps: AppConnector, tenant: Uuid, stop: CancellationToken) -> Writes {
    let mut w = Writes::default();
    let mut conn: Option<PgConnection> = None;
    while !stop.is_cancelled() {
        let Some(c) = conn.as_mut() else {
            match apps.connect(tenant).await {
                Ok((c, epoch)) => {
                    w.epochs.insert(epoch);
                    conn = Some(c);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        };
        let id = Uuid::new_v4();
        let r = sqlx::query(
            "INSERT INTO audit_events (tenant_id, id, actor, action, entity) \
             VALUES ($1, $2, 'writer', 'write', 'test')",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *c)
        .await;
        match r {
            Ok(_) => w.acked.push(id),
            Err(e) if sqlstate(&e) == fence::SQLSTATE => {
                w.fenced += 1;
                let msg = e.to_string();
                assert!(msg.contains("fenced for maintenance"), "{msg}");
                // Reads go on while writes are fenced.
                if sqlx::query("SELECT count(*) FROM patients")
                    .execute(&mut *c)
                    .await
                    .is_ok()
                {
                    w.reads_while_fenced += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                conn = None;
            }
            // The old container went away under the session: resolve again.
            Err(_) => conn = None,
        }
    }
    w
}

async fn writer_rows(place: &Place, tenant: Uuid) -> Vec<Uuid> {
    let sql = "SELECT id FROM S.audit_events WHERE tenant_id = $1 AND actor = 'writer'";
    column_at(place, sql, tenant).await
}

fn without_writer(mut s: Vec<(String, Vec<String>)>) -> Vec<(String, Vec<String>)> {
    for (_, rows) in &mut s {
        rows.retain(|r| !r.contains(",writer,"));
    }
    s
}

#[tokio::test]
async fn a_concurrent_writer_loses_nothing_and_neighbours_keep_working() {
    let _one = crate::harness::one_at_a_time().await;
    // Hold the fence a little longer, so the writer is sure to meet it.
    let mut env = TestEnv::spawn("change_tier.before_switch=sleep(300)").await;
    let (t, id, n, nid) = pool_pair(&mut env, "busy", "neighbour").await;
    fill(&Place::of(&t), id, 200).await;
    fill(&Place::of(&n), nid, 200).await;
    let neighbour_before = snapshot(&Place::pool("main"), nid).await;

    let stop = CancellationToken::new();
    let apps = AppConnector::new(&env);
    let busy = tokio::spawn(writer(apps.clone(), id, stop.clone()));
    let other = tokio::spawn(writer(apps, nid, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = move_to_while_writing(&mut env, &t, pb::Tier::Schema, "main").await;
    let t = move_to_while_writing(&mut env, &t, pb::Tier::Database, "second").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (busy, other) = (busy.await.unwrap(), other.await.unwrap());

    assert!(busy.fenced > 0, "the writer met the fence");
    assert!(busy.reads_while_fenced > 0, "reads went on while fenced");
    assert!(
        busy.epochs.len() >= 3,
        "the writer followed the routing: {:?}",
        busy.epochs
    );
    let mut stored = writer_rows(&Place::of(&t), id).await;
    let mut acked = busy.acked.clone();
    stored.sort();
    acked.sort();
    assert_eq!(
        stored, acked,
        "every acknowledged write exactly once, nothing else"
    );

    assert_eq!(other.fenced, 0, "the neighbour was never fenced");
    let mut stored = writer_rows(&Place::pool("main"), nid).await;
    let mut acked = other.acked.clone();
    stored.sort();
    acked.sort();
    assert!(acked.len() > 10);
    assert_eq!(stored, acked);
    assert_eq!(
        without_writer(snapshot(&Place::pool("main"), nid).await),
        neighbour_before,
        "the neighbour's data changed only by its own writes"
    );
}

async fn move_to_while_writing(
    env: &mut TestEnv,
    t: &pb::Tenant,
    tier: pb::Tier,
    cluster: &str,
) -> pb::Tenant {
    let op = request(env, &t.id, tier, cluster).await;
    let op = env.wait(&op.name).await;
    let d = details(&op);
    assert!(
        d.write_pause_ms >= 300,
        "pause covers the held fence: {d:?}"
    );
    match op.result {
        Some(pb::operation::Result::Tenant(moved)) => moved,
        other => panic!("move failed: {other:?}"),
    }
}

/// Crashes the process after each step's side effects (before its done mark), one step per
/// process, on one operation: every step runs twice and the move still ends as it should.
async fn crash_through_every_step(
    env: &mut TestEnv,
    t: &pb::Tenant,
    tier: pb::Tier,
    cluster: &str,
) -> pb::Tenant {
    let id: Uuid = t.id.parse().unwrap();
    let before = snapshot(&Place::of(t), id).await;
    let steps = tenantd::workflows::change_tier::Step::names();
    env.restart(&format!("change_tier.after_{}=exit", steps[0]))
        .await;
    env.ready().await;
    let op = request(env, &t.id, tier, cluster).await;
    for step in &steps[1..] {
        assert_eq!(
            env.wait_exit(),
            Some(tenantd::workflow::failpoint::EXIT_CODE)
        );
        env.restart(&format!("change_tier.after_{step}=exit")).await;
    }
    assert_eq!(
        env.wait_exit(),
        Some(tenantd::workflow::failpoint::EXIT_CODE)
    );
    env.restart("").await;
    let op = env.wait(&op.name).await;
    let moved = match op.result {
        Some(pb::operation::Result::Tenant(moved)) => moved,
        other => panic!("move did not succeed after crashes: {other:?}"),
    };
    assert_eq!(moved.tier, tier as i32);
    assert_eq!(snapshot(&Place::of(&moved), id).await, before);
    assert_gone(t, &moved).await;
    let steps = op.metadata.unwrap().steps;
    assert!(
        steps.iter().all(|s| s.attempts >= 2),
        "every step ran again: {steps:?}"
    );
    assert_no_capture_left(env).await;
    moved
}

#[tokio::test]
async fn a_crash_at_every_step_boundary_resumes_to_the_same_end() {
    let mut env = TestEnv::spawn("").await;
    let t = env.provision("crashy", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 30).await;
    let t = crash_through_every_step(&mut env, &t, pb::Tier::Schema, "main").await;
    crash_through_every_step(&mut env, &t, pb::Tier::Database, "second").await;
}

#[tokio::test]
async fn a_verification_mismatch_rolls_the_move_back() {
    let mut env = TestEnv::spawn(&format!(
        "{}=on*1",
        tenantd::workflows::change_tier::CORRUPT_TARGET
    ))
    .await;
    let t = env.provision("unlucky", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 20).await;
    let before = snapshot(&Place::of(&t), id).await;

    let op = request(&mut env, &t.id, pb::Tier::Schema, "main").await;
    let op = env.wait(&op.name).await;
    match &op.result {
        Some(pb::operation::Result::Error(e)) => {
            assert_eq!(e.code, tonic::Code::Aborted as i32, "{e:?}");
            // An online move verifies its copy at the snapshot, in the copy step.
            assert_eq!(e.step, "copy");
            assert!(e.message.contains("appointment_types"), "{}", e.message);
        }
        other => panic!("expected a failed verification, got {other:?}"),
    }
    assert_eq!(
        op.metadata.as_ref().unwrap().state,
        pb::OperationState::Failed as i32
    );
    // Routing unchanged, target gone, source intact and writable again.
    let now = env.tenant(&t.id).await;
    assert_eq!(now.tier, pb::Tier::Pool as i32);
    assert_eq!(now.routing_epoch, t.routing_epoch);
    assert_eq!(now.placement, t.placement);
    let f = footprint(&t.id, "main").await;
    assert_eq!((f.schemas, f.roles), (0, 0), "target dropped");
    assert_eq!(snapshot(&Place::of(&t), id).await, before, "source intact");
    assert_eq!(fences(&Place::of(&t), id).await, 0, "source unfenced");
    assert_no_capture_left(&env).await;
    let (mut conn, _) = AppConnector::new(&env).connect(id).await.unwrap();
    sqlx::query("UPDATE patients SET phone = '1' WHERE mrn = 'mrn-2'")
        .execute(&mut conn)
        .await
        .expect("the tenant writes again");
    assert_eq!(
        credentials(&env, id).await,
        0,
        "the target's credential went with it"
    );
}

#[tokio::test]
async fn a_second_operation_during_a_move_is_refused_naming_it() {
    let mut env = TestEnv::spawn("change_tier.before_copy=sleep(1500)").await;
    let t = env.provision("one-at-a-time", pb::Tier::Pool, "main").await;
    let ask = |request_id: &str| pb::ChangeTierRequest {
        copy_mb_per_s: 0,
        tenant: t.slug.clone(),
        tier: pb::Tier::Schema as i32,
        cluster: String::new(),
        request_id: request_id.into(),
    };
    let first = env
        .tenants
        .change_tier(ask("billing-42"))
        .await
        .unwrap()
        .into_inner();
    // The billing system retries: same operation.
    let retried = env
        .tenants
        .change_tier(ask("billing-42"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.name, first.name);
    // Anything else on the tenant meanwhile is refused, naming the running operation.
    let err = env
        .tenants
        .change_tier(pb::ChangeTierRequest {
            tier: pb::Tier::Database as i32,
            ..ask("")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let violation = err
        .get_details_precondition_failure()
        .expect("precondition details")
        .violations[0]
        .clone();
    assert_eq!(violation.subject, first.name, "{err:?}");
    let done = env.wait(&first.name).await;
    assert!(matches!(
        done.result,
        Some(pb::operation::Result::Tenant(_))
    ));
    // After the move, a retry still answers with the same operation, and a new request for
    // the tier it is in now is refused.
    let again = env.tenants.change_tier(ask("billing-42")).await.unwrap();
    assert_eq!(again.into_inner().name, first.name);
    let err = env.tenants.change_tier(ask("")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("already in the schema tier"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn the_fence_stops_only_the_fenced_tenants_writes_and_waits_out_older_ones() {
    use tenantd::dataplane::{Container, DataPlane};
    use tenantd::tenant::Tier;
    let mut env = TestEnv::start().await;
    let (_, aid, _, bid) = pool_pair(&mut env, "fenced", "free").await;
    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let main = dataplane.cluster("main").unwrap();
    let c = Container::plan(aid, Tier::Pool, main);
    let apps = AppConnector::new(&env);

    // A transaction of A's that wrote before the fence and has not committed yet.
    let (mut early, _) = apps.clone().connect(aid).await.unwrap();
    let mut tx = early.begin().await.unwrap();
    sqlx::query("UPDATE appointment_types SET duration_minutes = 31 WHERE code = 'new-patient'")
        .execute(&mut *tx)
        .await
        .unwrap();
    fence::fence(main, &c, Uuid::new_v4()).await.unwrap();
    assert!(fence::is_fenced(main, &c).await.unwrap());
    // The wait gives up (naming the session) while it runs...
    let err = fence::wait_for_writers(main, &c, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still run"), "{err}");
    // ...and returns once it has committed.
    let waiting = tokio::spawn({
        let dataplane =
            DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
        let c = c.clone();
        async move {
            let main = dataplane.cluster("main").unwrap();
            fence::wait_for_writers(main, &c, Duration::from_secs(10)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "still waiting for the older transaction"
    );
    tx.commit().await.unwrap();
    waiting.await.unwrap().unwrap();

    // New writes of A fail with the documented SQLSTATE; its reads go on.
    let (mut conn, _) = apps.clone().connect(aid).await.unwrap();
    for write in [
        "INSERT INTO audit_events (tenant_id, actor, action, entity) \
         SELECT current_setting('app.tenant_id')::uuid, 'x', 'y', 'z'",
        "UPDATE appointment_types SET duration_minutes = 32",
        "DELETE FROM appointment_types WHERE code = 'telehealth'",
    ] {
        let e = sqlx::query(sqlx::AssertSqlSafe(write))
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), fence::SQLSTATE, "{write}: {e}");
    }
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM appointment_types")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 4);
    // B is not fenced; the application role cannot touch the fence table.
    let (mut other, _) = apps.clone().connect(bid).await.unwrap();
    sqlx::query("UPDATE appointment_types SET duration_minutes = 33 WHERE code = 'follow-up'")
        .execute(&mut other)
        .await
        .unwrap();
    let e = sqlx::query("DELETE FROM tenant_write_fences")
        .execute(&mut other)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let (visible,): (i64,) = sqlx::query_as("SELECT count(*) FROM tenant_write_fences")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(visible, 1, "A sees its own fence");
    let (visible,): (i64,) = sqlx::query_as("SELECT count(*) FROM tenant_write_fences")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(visible, 0, "B does not see A's fence");

    fence::unfence(main, &c).await.unwrap();
    sqlx::query("UPDATE appointment_types SET duration_minutes = 34")
        .execute(&mut conn)
        .await
        .expect("unfenced");
}

/// A session of a backend that serves many pool tenants (a role the operator grants the pool
/// role, setting `app.tenant_id` itself), for `tenant` on `cluster`.
async fn backend_session(cluster: &str, tenant: Uuid) -> PgConnection {
    let admin_pool = admin(cluster, "postgres").await;
    sqlx::raw_sql(
        "DO $$ BEGIN
           CREATE ROLE it_pool_backend LOGIN PASSWORD 'it_pool_backend' IN ROLE tenantd_pool_app;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$",
    )
    .execute(&admin_pool)
    .await
    .unwrap();
    let options: sqlx::postgres::PgConnectOptions = crate::harness::cluster_url(cluster, "tenants")
        .parse()
        .unwrap();
    let mut conn = PgConnection::connect_with(
        &options
            .username("it_pool_backend")
            .password("it_pool_backend"),
    )
    .await
    .unwrap();
    sqlx::query(
        "SELECT set_config('app.tenant_id', $1, false), set_config('search_path', 'pool', false)",
    )
    .bind(tenant.to_string())
    .execute(&mut conn)
    .await
    .unwrap();
    conn
}

#[tokio::test]
async fn a_stale_route_in_the_pool_cannot_write_after_the_tenant_left() {
    let mut env = TestEnv::start().await;
    let t = env.provision("stale-route", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    let mut stale = backend_session("main", id).await;
    let write = async |conn: &mut PgConnection| {
        sqlx::query(
            "INSERT INTO audit_events (tenant_id, id, actor, action, entity) \
             VALUES ($1, $2, 'stale', 'write', 'test')",
        )
        .bind(id)
        .bind(Uuid::new_v4())
        .execute(conn)
        .await
    };
    write(&mut stale).await.unwrap();
    let moved = move_to(&mut env, &t, pb::Tier::Schema, "main").await;
    // Every write on the old route fails as fenced, also long after the move: nothing is left
    // behind that the tenant would not see or that would block its way back.
    for _ in 0..3 {
        let e = write(&mut stale).await.unwrap_err();
        assert_eq!(sqlstate(&e), fence::SQLSTATE, "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(footprint(&t.id, "main").await.pool_rows, 0);
    // Back in the pool, the same route writes again, where the tenant sees it.
    let back = move_to(&mut env, &moved, pb::Tier::Pool, "main").await;
    write(&mut stale).await.unwrap();
    let rows = column_at::<String>(
        &Place::of(&back),
        "SELECT actor FROM S.audit_events WHERE tenant_id = $1 AND actor = 'stale'",
        id,
    )
    .await;
    assert_eq!(
        rows.len(),
        2,
        "the first write moved with the tenant, the last one landed"
    );
}
