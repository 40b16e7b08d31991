//! Physical backups and WAL archiving through pgBackRest (docs/pitr.md), on a cluster of the
//! test's own with archiving on: a base backup, rows written, a moment T, more rows, and a
//! copy of the cluster restored at T into a side cluster on a private socket shows the rows
//! exactly as at T; the side cluster's directory is gone once it is dropped; a moment before
//! the oldest backup or in the future is refused. And `tenantd serve` with `[pitr]` creates
//! the stanza, checks archiving and takes a first base backup at start, recorded for the
//! slot due then so no replica takes it again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection;

use tenantd::api::pb;
use tenantd::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tenantd::pitr::pgbackrest::{PgBackRest, Repository, Stanza};
use tenantd::pitr::side::SideCluster;
use uuid::Uuid;

use crate::harness::{Place, TestEnv, fill, for_tenant, snapshot};
use crate::restore::renamed;

/// A cluster archiving through pgBackRest into a repository under `dir`.
fn archiving_cluster(dir: &std::path::Path) -> (EmbeddedPostgres, PgBackRest) {
    let repo = Repository {
        path: dir.join("repo"),
        retention_full: 2,
        s3: None,
    };
    // The configuration names the cluster's data directory and socket, known only once it
    // exists: start it once to lay it out, configure, then start it archiving.
    let first = EmbeddedPostgres::start(&EmbeddedOptions {
        state_dir: dir.join("cluster"),
        ..Default::default()
    })
    .unwrap();
    let stanza = |pg: &EmbeddedPostgres| Stanza {
        name: "main".into(),
        pg_path: pg.data_dir().to_owned(),
        pg_port: pg.port,
        pg_socket: pg.socket_dir().to_owned(),
        password: password(&pg.url("postgres")),
    };
    let port = first.port;
    let s = stanza(&first);
    drop(first);
    let pgbackrest = PgBackRest::configure(&dir.join("work"), &repo, vec![s]).unwrap();
    let pg = EmbeddedPostgres::start(&EmbeddedOptions {
        state_dir: dir.join("cluster"),
        port,
        settings: vec![
            ("archive_mode".into(), "on".into()),
            ("archive_command".into(), pgbackrest.archive_command("main")),
        ],
        ..Default::default()
    })
    .unwrap();
    (pg, pgbackrest)
}

/// Removes the test's directory whatever the outcome (after the clusters in it stopped).
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn password(url: &str) -> String {
    url.strip_prefix("postgres://postgres:")
        .and_then(|rest| rest.split_once('@'))
        .map(|(pw, _)| pw.to_owned())
        .unwrap()
}

async fn count(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM visits")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_at_a_moment_holds_the_rows_of_that_moment() {
    let _one = crate::harness::one_at_a_time().await;
    let dir = std::env::temp_dir().join(format!("tenantd-pitr-{}", uuid::Uuid::new_v4().simple()));
    let _removed = Removed(dir.clone());
    let (pg, pgbackrest) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || archiving_cluster(&dir))
            .await
            .unwrap()
    };
    pgbackrest.ensure_stanza("main").await.unwrap();
    pgbackrest.backup("main", true).await.unwrap();
    let held = pgbackrest.holdings("main").await.unwrap();
    assert_eq!(held.backups.len(), 1, "{held:?}");
    assert_eq!(held.backups[0].kind, "full");

    // pgBackRest records a backup's end to the second: a moment to restore to comes after.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let url = pg.url("postgres");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE visits (id int PRIMARY KEY); INSERT INTO visits SELECT generate_series(1, 100);
         CREATE ROLE tenant_login LOGIN PASSWORD 'tenant-pw'; GRANT SELECT ON visits TO tenant_login",
    )
        .execute(&mut conn)
        .await
        .unwrap();
    let t = moment_on(&mut conn).await;
    sqlx::raw_sql("INSERT INTO visits SELECT generate_series(101, 150)")
        .execute(&mut conn)
        .await
        .unwrap();
    // A commit after T and the WAL holding it archived: what recovery to T needs.
    tenantd::pitr::seal(&mut conn, Duration::from_secs(60))
        .await
        .unwrap();

    let side_dir = dir.join("side");
    let side = SideCluster::restore(&pgbackrest, "main", t, &side_dir, &[], &password(&url))
        .await
        .unwrap();
    assert_eq!(count(&side.url("postgres")).await, 100);
    assert!(
        !side.url("postgres").contains("127.0.0.1"),
        "a side cluster is reached by socket only"
    );
    // The copy keeps its source's roles, but only the superuser may log in to it.
    let as_tenant = side.url("postgres").replacen(
        &format!("postgres:{}@", password(&url)),
        "tenant_login:tenant-pw@",
        1,
    );
    let refused = sqlx::PgConnection::connect(&as_tenant).await.unwrap_err();
    assert!(
        refused.to_string().contains("pg_hba.conf"),
        "a tenant login reached the copy: {refused}"
    );
    drop(side);
    assert!(
        !side_dir.exists(),
        "the side cluster's directory is removed"
    );
    assert_eq!(count(&url).await, 150, "the source is untouched");

    // Refused: before the oldest backup, and the future.
    let held = pgbackrest.holdings("main").await.unwrap();
    let now = Utc::now();
    assert!(held.reaches(t, now).is_ok(), "{held:?} {t}");
    assert!(
        held.reaches(held.backups[0].started - chrono::TimeDelta::hours(1), now)
            .is_err()
    );
    assert!(
        held.reaches(now + chrono::TimeDelta::minutes(5), now)
            .is_err()
    );
    drop(pg);
}

/// A `base_backups` row: slot, finished_at, error.
type BaseBackupRow = (DateTime<Utc>, Option<DateTime<Utc>>, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenantd_with_pitr_takes_a_first_base_backup_at_start() {
    let _one = crate::harness::one_at_a_time().await;
    let dir = std::env::temp_dir().join(format!("tenantd-pitr-{}", uuid::Uuid::new_v4().simple()));
    let _removed = Removed(dir.clone());
    // The cluster archives through the configuration tenantd will write at start.
    let (pg, _) = archiving_in(&dir).await;
    let (mut config, env_dir) = crate::harness::TestEnv::config().await;
    config.clusters.push(tenantd::config::ClusterConfig {
        name: "archived".into(),
        admin_url: pg.url("postgres"),
        public_host: None,
        public_port: None,
        shared_database: "tenants".into(),
    });
    let pitr = crate::harness::pitr_for(&pg, &dir);
    config.pitr = Some(pitr.clone());
    let env = crate::harness::TestEnv::start_with(config.clone(), env_dir).await;

    // The first backup is recorded against the slot due at start (today's 01:00).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (slot, error) = loop {
        let row: Option<BaseBackupRow> = sqlx::query_as(
            "SELECT slot, finished_at, error FROM base_backups WHERE cluster = 'archived'",
        )
        .fetch_optional(&env.registry)
        .await
        // The in-process server may still be migrating the registry.
        .unwrap_or(None);
        if let Some((slot, Some(_), error)) = row {
            break (slot, error);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no first base backup within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(error, None);
    let schedule = tenantd::backup::Schedule::parse("schedule", "0 1 * * *").unwrap();
    assert_eq!(Some(slot), schedule.latest_at_or_before(Utc::now()));
    let pgbackrest = tenantd::pitr::configure(&pitr, &config.clusters).unwrap();
    let held = pgbackrest.holdings("archived").await.unwrap();
    assert_eq!(held.backups.len(), 1, "{held:?}");
    assert!(
        held.archive.is_some(),
        "WAL reaches the repository: {held:?}"
    );
    drop(env);
    drop(pg);
}

// ---- RestoreTenant to a point in time, through tenantd ----

/// tenantd (a real process) with the `archived` cluster under `[pitr]`, once its base backup
/// for this environment is taken.
async fn pitr_env(failpoints: &str) -> TestEnv {
    let (config, dir) = TestEnv::config_pitr().await;
    let env = TestEnv::spawn_with(config, dir, failpoints).await;
    base_backup_taken(&env).await;
    env
}

/// Waits until `env`'s tenantd took its base backup of the `archived` cluster at start.
async fn base_backup_taken(env: &TestEnv) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let done: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT error FROM base_backups WHERE cluster = 'archived' AND finished_at IS NOT NULL",
        )
        .fetch_optional(&env.registry)
        .await
        .unwrap_or(None);
        if let Some((error,)) = done {
            assert_eq!(error, None, "the base backup at start failed");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no base backup within 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // pgBackRest records a backup's end to the second: moments to restore to come after.
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// The archived cluster's clock now (the moment a test restores to).
async fn moment() -> DateTime<Utc> {
    let mut conn = crate::harness::admin_conn("archived", "postgres").await;
    moment_on(&mut conn).await
}

fn at(tenant: &str, t: DateTime<Utc>) -> pb::RestoreTenantRequest {
    pb::RestoreTenantRequest {
        tenant: tenant.into(),
        point_in_time: t.to_rfc3339(),
        mode: pb::RestoreMode::InPlace as i32,
        ..Default::default()
    }
}

/// Damages the tenant's data (the bad import after T).
async fn damage(place: &Place, tenant: Uuid) {
    let statements = [
        "DELETE FROM S.appointments WHERE tenant_id = $1",
        "UPDATE S.patients SET given_name = 'overwritten' WHERE tenant_id = $1",
    ];
    for_tenant(place, tenant, &statements).await;
}

/// A neighbour's writes after T: new rows and changed ones.
async fn later_writes(place: &Place, tenant: Uuid) {
    let statements = [
        "INSERT INTO S.audit_events (tenant_id, actor, action, entity)
         SELECT $1, 'neighbour', 'write', 'after T ' || g FROM generate_series(1, 25) g",
        "UPDATE S.patients SET given_name = 'changed after T' WHERE tenant_id = $1",
    ];
    for_tenant(place, tenant, &statements).await;
}

/// A time to the millisecond (what the API prints).
fn same_ms(t: &str) -> i64 {
    DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis()
}

fn sorted(mut rows: Vec<(String, Vec<String>)>) -> Vec<(String, Vec<String>)> {
    rows.sort();
    rows
}

fn details(op: &pb::Operation) -> pb::Restore {
    match op.metadata.as_ref().and_then(|m| m.details.clone()) {
        Some(pb::operation_metadata::Details::Restore(r)) => r,
        other => panic!("no restore details: {other:?}"),
    }
}

/// Nothing left of any side cluster: no directory, no server.
fn no_side_cluster_left(env: &TestEnv) {
    let side = env.config.pitr.as_ref().unwrap().work_dir.join("side");
    let left: Vec<_> = std::fs::read_dir(&side)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "side clusters left: {left:?}");
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines().any(|l| l.contains(&*side.to_string_lossy())),
        "a side cluster still runs"
    );
}

async fn restored(env: &mut TestEnv, r: pb::RestoreTenantRequest) -> (pb::Operation, pb::Tenant) {
    let op = env.exports.restore_tenant(r).await.unwrap().into_inner();
    let op = env.wait_long(&op.name, Duration::from_secs(300)).await;
    let Some(pb::operation::Result::Tenant(t)) = op.result.clone() else {
        panic!("the restore to a point in time failed: {op:?}");
    };
    (op, t)
}

/// The seeds' hardest case, in every tier: rows written, a moment T, the tenant's data
/// damaged and neighbours (in the same pool, the same database, the same cluster) writing
/// after T; each tenant restored to T has its rows exactly as at T, and the neighbours keep
/// their later writes. The same again as a new tenant. The copy of the cluster is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_restored_to_a_moment_has_that_moment_back_and_neighbours_keep_later_writes() {
    let _one = crate::harness::one_at_a_time().await;
    let mut env = pitr_env("").await;
    let mut tenants = Vec::new();
    for (slug, tier) in [
        ("pitr-pool", pb::Tier::Pool),
        ("pitr-schema", pb::Tier::Schema),
        ("pitr-db", pb::Tier::Database),
    ] {
        let t = env.provision(slug, tier, "archived").await;
        let id: Uuid = t.id.parse().unwrap();
        fill(&Place::of(&t), id, 20).await;
        tenants.push((t, id));
    }
    let nb = env
        .provision("pitr-neighbour", pb::Tier::Pool, "archived")
        .await;
    let nb_id: Uuid = nb.id.parse().unwrap();
    fill(&Place::of(&nb), nb_id, 10).await;

    let mut as_at_t = Vec::new();
    for (t, id) in &tenants {
        as_at_t.push(sorted(snapshot(&Place::of(t), *id).await));
    }
    let t_moment = moment().await;
    for (t, id) in &tenants {
        damage(&Place::of(t), *id).await;
    }
    // The neighbour's writes after T, which no restore may undo.
    later_writes(&Place::of(&nb), nb_id).await;
    let neighbour_after = sorted(snapshot(&Place::of(&nb), nb_id).await);

    for ((t, id), expected) in tenants.iter().zip(&as_at_t) {
        let (op, back) = restored(&mut env, at(&t.slug, t_moment)).await;
        assert_eq!(back.id, t.id);
        assert_eq!(
            &sorted(snapshot(&Place::of(&back), *id).await),
            expected,
            "{} as at T",
            t.slug
        );
        let d = details(&op);
        assert_eq!(same_ms(&d.point_in_time), same_ms(&t_moment.to_rfc3339()));
        assert!(!d.base_backup.is_empty(), "{d:?}");
        assert!(d.needed_bytes > 0);
        let replayed: DateTime<Utc> = d.replayed_to.parse().unwrap();
        assert!(replayed <= t_moment, "{replayed} after {t_moment}");
        let names: Vec<String> = op
            .metadata
            .unwrap()
            .steps
            .iter()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(
            &names[..4],
            ["preflight", "fetch_backup", "replay", "extract"],
            "the phases are steps"
        );
        // The export the restore made is the tenant as of T.
        let e = env
            .exports
            .get_export(pb::GetExportRequest {
                name: d.export.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(same_ms(&e.snapshot_time), same_ms(&t_moment.to_rfc3339()));
        assert_eq!(
            sorted(snapshot(&Place::of(&nb), nb_id).await),
            neighbour_after,
            "the neighbour keeps its writes after T"
        );
        no_side_cluster_left(&env);
    }

    // As a new tenant, in another tier, beside the (restored) original.
    let (pool_t, pool_id) = &tenants[0];
    let mut r = at(&pool_t.slug, t_moment);
    r.mode = pb::RestoreMode::AsNewTenant as i32;
    r.new_slug = "pitr-pool-copy".into();
    r.tier = pb::Tier::Schema as i32;
    r.cluster = "main".into();
    let (_, copy) = restored(&mut env, r).await;
    let copy_id: Uuid = copy.id.parse().unwrap();
    assert_eq!(copy.tier, pb::Tier::Schema as i32);
    assert_eq!(
        sorted(snapshot(&Place::of(&copy), copy_id).await),
        renamed(&as_at_t[0], *pool_id, copy_id)
    );
    no_side_cluster_left(&env);
}

/// What cannot be done is refused at once, FAILED_PRECONDITION naming the reason, and
/// nothing is started: a moment in the future, before the oldest backup, before the tenant
/// existed, a deleted tenant, a tenant on a cluster without [pitr]; a time that is not
/// RFC 3339 is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_to_moments_that_cannot_be_reached_are_refused_with_nothing_changed() {
    let _one = crate::harness::one_at_a_time().await;
    let mut env = pitr_env("").await;
    let before_tenant = moment().await;
    let t = env
        .provision("pitr-refused", pb::Tier::Schema, "archived")
        .await;
    let elsewhere = env
        .provision("pitr-elsewhere", pb::Tier::Schema, "main")
        .await;
    let gone = env.provision("pitr-gone", pb::Tier::Pool, "archived").await;
    let before_gone_deleted = moment().await;
    let op = env
        .deletions
        .delete_tenant(pb::DeleteTenantRequest {
            tenant: gone.slug.clone(),
            reason: "test".into(),
            requested_by: "it".into(),
            ticket: "IT-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    env.wait(&op.name).await;
    let ops_before: (i64,) = sqlx::query_as("SELECT count(*) FROM operations")
        .fetch_one(&env.registry)
        .await
        .unwrap();

    let now = Utc::now();
    for (r, says) in [
        (
            at(&t.slug, now + chrono::TimeDelta::hours(1)),
            "in the future",
        ),
        (
            at(&t.slug, now - chrono::TimeDelta::days(30)),
            "did not exist",
        ),
        (at(&t.slug, before_tenant), "did not exist"),
        (at(&gone.slug, before_gone_deleted), "deletion certificate"),
        (at(&elsewhere.slug, moment().await), "not backed up"),
    ] {
        let e = env.exports.restore_tenant(r.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{r:?}: {e:?}");
        assert!(e.message().contains(says), "{r:?}: {}", e.message());
    }
    // Before the oldest backup: the tenant existed, the backups do not reach back.
    let e = env
        .exports
        .restore_tenant(at(
            &t.slug,
            DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
                .unwrap()
                .to_utc(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let mut bad = at(&t.slug, now);
    bad.point_in_time = "yesterday at two".into();
    let e = env.exports.restore_tenant(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(crate::harness::bad_field(&e), "point_in_time");
    let mut both = at(&t.slug, now);
    both.export = format!("exports/{}", Uuid::new_v4());
    let e = env.exports.restore_tenant(both).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let ops_after: (i64,) = sqlx::query_as("SELECT count(*) FROM operations")
        .fetch_one(&env.registry)
        .await
        .unwrap();
    assert_eq!(ops_before, ops_after, "nothing was started");
    no_side_cluster_left(&env);
}

/// tenantd killed at every step boundary of a restore to a point in time (before each step,
/// and after its work but before it is marked done) resumes it to the same result, and no
/// side cluster is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_a_moment_survives_a_crash_at_every_step_boundary() {
    use crate::crash::{boundaries, crash_through};
    let _one = crate::harness::one_at_a_time().await;
    let points = boundaries::<tenantd::workflows::Restore>();
    let mut env = pitr_env("").await;
    let t = env
        .provision("pitr-crash", pb::Tier::Pool, "archived")
        .await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 15).await;
    let expected = sorted(snapshot(&Place::of(&t), id).await);
    let t_moment = moment().await;
    damage(&Place::of(&t), id).await;

    env.restart(&format!("{}=sleep(60000)", points[0])).await;
    env.ready().await;
    let op = env
        .exports
        .restore_tenant(at(&t.slug, t_moment))
        .await
        .unwrap()
        .into_inner();
    crash_through(&mut env, &points).await;
    let op = env.wait_long(&op.name, Duration::from_secs(300)).await;
    let Some(pb::operation::Result::Tenant(back)) = op.result.clone() else {
        panic!("the restore did not succeed after crashes: {op:?}");
    };
    let steps = op.metadata.unwrap().steps;
    assert!(steps.iter().all(|s| s.attempts >= 2), "{steps:?}");
    assert_eq!(sorted(snapshot(&Place::of(&back), id).await), expected);
    no_side_cluster_left(&env);
}

/// A restore to a point in time that fails after its copy was replayed, and one cancelled
/// while its copy sits fetched, leave no side cluster, no unfinished export, and the tenant's
/// data as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_cancelled_restore_to_a_moment_leaves_no_side_cluster() {
    let _one = crate::harness::one_at_a_time().await;
    let mut env = pitr_env("restore.after_replay=error").await;
    let t = env
        .provision("pitr-undone", pb::Tier::Schema, "archived")
        .await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 10).await;
    let t_moment = moment().await;
    damage(&Place::of(&t), id).await;
    let damaged = sorted(snapshot(&Place::of(&t), id).await);

    let op = env
        .exports
        .restore_tenant(at(&t.slug, t_moment))
        .await
        .unwrap()
        .into_inner();
    let op = env.wait_long(&op.name, Duration::from_secs(300)).await;
    assert!(
        matches!(op.result, Some(pb::operation::Result::Error(_))),
        "{op:?}"
    );
    no_side_cluster_left(&env);
    assert_eq!(sorted(snapshot(&Place::of(&t), id).await), damaged);

    env.restart("restore.after_fetch_backup=sleep(6000)").await;
    env.ready().await;
    let mut r = at(&t.slug, t_moment);
    r.request_id = "cancelled-pitr".into();
    let op = env.exports.restore_tenant(r).await.unwrap().into_inner();
    // The copy is fetched (and the step asleep before it is marked done): cancel now.
    let side = env.config.pitr.as_ref().unwrap().work_dir.join("side");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&side).map_or(0, |d| d.count()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no side directory");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let op = env.cancel_and_wait(&op.name).await;
    assert_eq!(
        op.metadata.unwrap().state,
        pb::OperationState::Cancelled as i32
    );
    no_side_cluster_left(&env);
    assert_eq!(sorted(snapshot(&Place::of(&t), id).await), damaged);
    let (unfinished,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM exports WHERE tenant_id = $1 AND state = 'running'")
            .bind(id)
            .fetch_one(&env.registry)
            .await
            .unwrap();
    assert_eq!(unfinished, 0);
}

/// The same with the repository in an S3 bucket (moto over HTTPS): pgBackRest archives the
/// WAL and takes the base backup there, and a copy restored at T from it holds T's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_backed_up_to_s3_is_restored_at_a_moment() {
    let _one = crate::harness::one_at_a_time().await;
    let dir = std::env::temp_dir().join(format!("tenantd-pitr-{}", uuid::Uuid::new_v4().simple()));
    let _removed = Removed(dir.clone());
    let endpoint = crate::harness::moto_tls();
    let bucket = format!("pitr-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let made = std::process::Command::new("curl")
        .args(["-skf", "-X", "PUT", &format!("{endpoint}/{bucket}")])
        .output()
        .unwrap();
    assert!(made.status.success(), "bucket not created: {made:?}");
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let credentials = dir.join("s3-credentials");
    std::fs::create_dir_all(&dir).unwrap();
    tenantd::secret_file::create(
        &credentials,
        b"[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    let (pg, config_file) = archiving_in(&dir).await;
    let mut pitr = crate::harness::pitr_for(&pg, &dir);
    pitr.repo_path = None;
    pitr.s3 = Some(tenantd::config::PitrS3 {
        bucket,
        region: "us-east-1".into(),
        endpoint: Some("127.0.0.1".into()),
        port: Some(port),
        path_style: true,
        verify_tls: false,
        ca_file: None,
        key_type: "shared".into(),
        credentials_file: Some(credentials),
    });
    let clusters = vec![tenantd::config::ClusterConfig {
        name: "archived".into(),
        admin_url: pg.url("postgres"),
        public_host: None,
        public_port: None,
        shared_database: "tenants".into(),
    }];
    let pgbackrest = tenantd::pitr::configure(&pitr, &clusters).unwrap();
    let text = std::fs::read_to_string(&config_file).unwrap();
    assert!(text.contains("repo1-type=s3"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0,
        "a configuration holding the S3 key is its owner's only"
    );
    pgbackrest.ensure_stanza("archived").await.unwrap();
    pgbackrest.backup("archived", true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let url = pg.url("postgres");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE visits (id int PRIMARY KEY); INSERT INTO visits SELECT generate_series(1, 70)")
        .execute(&mut conn)
        .await
        .unwrap();
    let t = moment_on(&mut conn).await;
    sqlx::raw_sql("INSERT INTO visits SELECT generate_series(71, 90)")
        .execute(&mut conn)
        .await
        .unwrap();
    tenantd::pitr::seal(&mut conn, Duration::from_secs(60))
        .await
        .unwrap();
    let side = SideCluster::restore(
        &pgbackrest,
        "archived",
        t,
        &dir.join("side"),
        &[],
        &password(&url),
    )
    .await
    .unwrap();
    assert_eq!(count(&side.url("postgres")).await, 70);
    drop(side);
    drop(pg);
}

/// A cluster under `dir` archiving as stanza `archived` through the pgBackRest configuration
/// tenantd writes (the path returned) under `dir/work`.
async fn archiving_in(dir: &std::path::Path) -> (EmbeddedPostgres, std::path::PathBuf) {
    let config_file = dir
        .join("work")
        .join(tenantd::pitr::pgbackrest::CONFIG_FILE);
    let (cluster, file) = (dir.join("cluster"), config_file.clone());
    let pg = tokio::task::spawn_blocking(move || {
        EmbeddedPostgres::start(&crate::harness::archiving(&cluster, &file, "archived")).unwrap()
    })
    .await
    .unwrap();
    (pg, config_file)
}

/// A moment between two writes on `conn`'s server.
async fn moment_on(conn: &mut sqlx::PgConnection) -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (t,): (DateTime<Utc>,) = sqlx::query_as("SELECT now()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    t
}

/// A tenant schema nobody here wrote (`examples/lab`: an enum, a domain, identity keys, a
/// partitioned table…), in the pool and in a database of its own, restored to a moment after
/// its results were deleted: every table as at the moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_nobody_here_wrote_is_restored_to_a_moment() {
    let _one = crate::harness::one_at_a_time().await;
    let (mut config, dir) = TestEnv::config_pitr().await;
    config.tenant_schema.dir = Some(crate::own_schema::LAB_SCHEMA_DIR.into());
    let shared = format!("lab_{}", &Uuid::new_v4().simple().to_string()[..12]);
    for c in &mut config.clusters {
        c.shared_database = shared.clone();
    }
    let mut env = TestEnv::spawn_with(config, dir, "").await;
    base_backup_taken(&env).await;
    // At the lab's version 1, which its fill writes.
    crate::rollout::pin_fleet(&mut env, 1).await;
    let mut tenants = Vec::new();
    for (slug, tier) in [
        ("pitr-lab-pool", pb::Tier::Pool),
        ("pitr-lab-db", pb::Tier::Database),
    ] {
        let t = env.provision(slug, tier, "archived").await;
        let id: Uuid = t.id.parse().unwrap();
        crate::own_schema::fill(&Place::of(&t), id, 12).await;
        tenants.push((t, id));
    }
    let mut as_at_t = Vec::new();
    for (t, id) in &tenants {
        as_at_t.push(sorted(snapshot(&Place::of(t), *id).await));
    }
    let t_moment = moment().await;
    for (t, id) in &tenants {
        let damage = "DELETE FROM S.results WHERE tenant_id = $1;
                      UPDATE S.specimens SET volume_ml = 0 WHERE tenant_id = $1";
        crate::own_schema::run(&Place::of(t), *id, 0, damage).await;
    }
    for ((t, id), expected) in tenants.iter().zip(&as_at_t) {
        let (_, back) = restored(&mut env, at(&t.slug, t_moment)).await;
        assert_eq!(
            &sorted(snapshot(&Place::of(&back), *id).await),
            expected,
            "{} as at T",
            t.slug
        );
    }
    no_side_cluster_left(&env);
}
