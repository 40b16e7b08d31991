//! The tenant schema is supplied as a directory: the registry records every version's exact
//! text, a replica whose file differs for a version refuses to start naming the file, and a
//! new version is a new file that reaches tenants through a rollout.

use std::path::Path;
use std::time::{Duration, Instant};

use tenantd::api::pb;
use tenantd::tenant_schema::{TenantSchema, sha256};
use tokio_util::sync::CancellationToken;

use tenantd::auth::Role;

use crate::harness::{EXAMPLE_SCHEMA_DIR, Place, TestEnv, admin, tenantctl};

/// A new version: a column, and a bare table: no RLS, policy or fence of its own (tenantd
/// adds them).
const VERSION_5: &str = "ALTER TABLE patients ADD COLUMN nickname text;
CREATE TABLE care_teams (
    tenant_id uuid NOT NULL,
    id uuid NOT NULL,
    name text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
";

/// A copy of the example schema's directory to change.
fn copy_example(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(EXAMPLE_SCHEMA_DIR).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

async fn recorded(env: &TestEnv) -> Vec<(i32, String, String)> {
    sqlx::query_as("SELECT version, name, sha256 FROM tenant_schema_versions ORDER BY version")
        .fetch_all(&env.registry)
        .await
        .unwrap()
}

/// Starts another replica on `env`'s registry with the schema in `dir`: Err when it refuses.
async fn replica(
    env: &TestEnv,
    dir: &Path,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), tenantd::server::ServerError>>,
) {
    let mut config = env.config.clone();
    config.tenant_schema.dir = Some(dir.to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(tenantd::server::run(config, listener, shutdown.clone()));
    (shutdown, run)
}

#[tokio::test]
async fn a_changed_version_is_refused_by_name_and_a_new_version_reaches_a_tenant() {
    let mut env = TestEnv::start().await;
    let t = env.provision("schema-owner", pb::Tier::Schema, "").await;
    // The first replica recorded the example's versions, byte for byte.
    let example = TenantSchema::example();
    let before = recorded(&env).await;
    let expected: Vec<(i32, String, String)> = example
        .migrations()
        .iter()
        .map(|m| (m.version, m.name.clone(), m.sha256()))
        .collect();
    assert_eq!(before, expected);
    // Recorded versions are never changed or removed, whoever asks.
    for statement in [
        "UPDATE tenant_schema_versions SET sql = sql || ' ' WHERE version = 1",
        "DELETE FROM tenant_schema_versions WHERE version = 4",
        "TRUNCATE tenant_schema_versions",
    ] {
        let e = sqlx::query(statement)
            .execute(&env.registry)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("never changed or removed"), "{e}");
    }

    // A replica whose file for version 2 differs refuses to start, naming the file.
    let dir = env.dir.join("schema");
    copy_example(&dir);
    let edited = dir.join("0002_write_fence.sql");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, format!("{text}\n-- edited in place\n")).unwrap();
    let (_, run) = replica(&env, &dir).await;
    let refused = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the replica stops at once")
        .unwrap()
        .expect_err("a changed version is refused");
    let message = refused.to_string();
    assert!(
        message.contains("0002_write_fence.sql differs from version 2"),
        "{message}"
    );
    assert!(message.contains(&sha256(&format!("{text}\n-- edited in place\n"))));
    assert_eq!(recorded(&env).await, before, "nothing was recorded");

    // A new version is a new file: the replica that brings it records it.
    std::fs::write(&edited, text).unwrap();
    std::fs::write(dir.join("0005_patient_nickname.sql"), VERSION_5).unwrap();
    let (stop, run) = replica(&env, &dir).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorded(&env).await.len() < 5 {
        assert!(Instant::now() < deadline, "version 5 not recorded");
        assert!(!run.is_finished(), "the replica stopped: {:?}", run.await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first replica learns it from the registry.
    let fleet = env
        .fleet
        .get_fleet_schema(pb::GetFleetSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((fleet.version, fleet.latest_version), (4, 5));
    // `tenantctl schema list` shows every version with its checksums and tenants.
    let args = ["--addr", &env.addr, "schema", "list"].map(std::ffi::OsStr::new);
    let out = tenantctl(&args, Some(Role::Viewer)).await.unwrap();
    assert!(out.contains("fleet at version 4 of 5"), "{out}");
    let five = sha256(VERSION_5);
    assert!(out.contains("0005_patient_nickname.sql"), "{out}");
    assert!(out.contains(&five), "{out}");
    let seed = example.get(1).unwrap().seed_sha256().unwrap();
    assert!(
        out.contains("0001_healthcare_core.seed.sql") && out.contains(&seed),
        "{out}"
    );
    let v4 = out.lines().find(|l| l.contains("0004_")).unwrap();
    assert!(
        v4.starts_with('*') && v4.contains(" 1  "),
        "one tenant at v4: {v4}"
    );
    // The canary's policies are in the form an earlier build wrote (as a container of that
    // build has them): the rollout is what brings them to the current form.
    let old = tenantd::dataplane::isolation::PREVIOUS_POLICY_USING;
    let earlier = format!(
        "DO $$ DECLARE t text; BEGIN
             FOR t IN SELECT tablename FROM pg_policies
                      WHERE schemaname = '{schema}' AND policyname = 'tenant_isolation'
                        AND cmd = 'ALL' LOOP
                 EXECUTE format('ALTER POLICY tenant_isolation ON %I.%I USING ({old}) \
                                 WITH CHECK ({old})', '{schema}', t);
             END LOOP;
         END $$",
        schema = Place::of(&t).schema,
        old = old.replace('\'', "''"),
    );
    let canary_db = admin(&Place::of(&t).cluster, &Place::of(&t).database).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(earlier))
        .execute(&canary_db)
        .await
        .unwrap();
    let (earlier_form,): (String,) = sqlx::query_as(
        "SELECT qual FROM pg_policies WHERE schemaname = $1 AND tablename = 'patients'",
    )
    .bind(Place::of(&t).schema)
    .fetch_one(&canary_db)
    .await
    .unwrap();
    assert_ne!(earlier_form, crate::harness::POLICY_DEPARSED);
    // A rollout brings its canary there. (Only the canary: the test clusters' shared pool
    // belongs to every test, which know version 4 only.)
    let op = env
        .fleet
        .migrate_fleet(pb::MigrateFleetRequest {
            target_version: 5,
            canary_tenants: vec![t.slug.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let place = Place::of(&t);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = admin(&place.cluster, &place.database).await;
        let columns: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = 'patients' AND column_name = 'nickname'",
        )
        .bind(&place.schema)
        .fetch_one(&pool)
        .await
        .unwrap();
        // The container is migrated first, the registry records its version just after.
        let recorded = env
            .tenants
            .get_tenant(pb::GetTenantRequest {
                tenant: t.slug.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .schema_version;
        if columns == 1 && recorded == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canary never reached version 5"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tenant = env
        .tenants
        .get_tenant(pb::GetTenantRequest {
            tenant: t.slug.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tenant.schema_version, 5);
    // The tenant's own role reaches the table the new version added.
    let role = tenant.placement.as_ref().unwrap().role.clone();
    let granted: bool = sqlx::query_scalar(
        "SELECT has_table_privilege($1, format('%I.care_teams', $2::text), 'SELECT')
                AND has_table_privilege($1, format('%I.care_teams', $2::text), 'INSERT')",
    )
    .bind(&role)
    .bind(&place.schema)
    .fetch_one(&admin(&place.cluster, &place.database).await)
    .await
    .unwrap();
    assert!(granted, "{role} cannot use care_teams");
    // tenantd secured the table the version added: RLS forced, its policy, its fence.
    let secured: (bool, bool, String, bool) = sqlx::query_as(
        "SELECT c.relrowsecurity, c.relforcerowsecurity,
                (SELECT pg_get_expr(p.polqual, p.polrelid) FROM pg_policy p
                 WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation'),
                EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid
                          AND g.tgname = 'tenant_write_fence' AND g.tgenabled = 'O')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = 'care_teams'",
    )
    .bind(&place.schema)
    .fetch_one(&admin(&place.cluster, &place.database).await)
    .await
    .unwrap();
    assert_eq!(
        secured,
        (true, true, crate::harness::POLICY_DEPARSED.to_owned(), true)
    );
    // Every table's policy, the earlier form included, is in the current form now.
    let forms: Vec<(String, String)> = sqlx::query_as(
        "SELECT tablename::text, qual FROM pg_policies
         WHERE schemaname = $1 AND policyname = 'tenant_isolation' ORDER BY 1",
    )
    .bind(&place.schema)
    .fetch_all(&canary_db)
    .await
    .unwrap();
    assert!(forms.len() > 5, "{forms:?}");
    assert!(
        forms
            .iter()
            .all(|(_, q)| q == crate::harness::POLICY_DEPARSED),
        "{forms:#?}"
    );
    env.ops
        .cancel_operation(pb::CancelOperationRequest { name: op.name })
        .await
        .unwrap();
    stop.cancel();
    run.await.unwrap().unwrap();
}

/// A container made from the example keeps the example's own fence (`tenant_write_fences`,
/// as every build before tenantd owned the fence made it): tenantd adds no second fence
/// there. A fence an older build set (a move in flight across the upgrade) is lifted, and a
/// move fences and goes through as before.
#[tokio::test]
async fn an_example_container_keeps_its_own_fence_and_an_older_builds_fence_is_lifted() {
    use tenantd::dataplane::{Container, DataPlane, fence};
    let mut env = TestEnv::start().await;
    let t = env.provision("older-build", pb::Tier::Schema, "").await;
    let id: uuid::Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    let pool = admin(&place.cluster, &place.database).await;
    let s = &place.schema;
    let tables = crate::harness::EXAMPLE_TABLES;
    let (own, legacy_triggers): (bool, i64) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1
                          AND tablename = 'tenantd_write_fences'),
                (SELECT count(*) FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND g.tgname = 'tenant_write_fence')",
    )
    .bind(s)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((own, legacy_triggers as usize), (false, tables.len()));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{s}\".tenant_write_fences (tenant_id, operation_id) VALUES ('{id}', '{id}')"
    )))
    .execute(&pool)
    .await
    .unwrap();
    // The older build's fence holds the application's writes.
    let apps = crate::harness::AppConnector::new(&env);
    let write = "UPDATE patients SET family_name = family_name";
    let (mut conn, _) = apps.clone().connect(id).await.unwrap();
    let e = sqlx::query(write).execute(&mut conn).await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), fence::SQLSTATE, "{e}");
    // This build lifts it.
    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let main = dataplane.cluster("main").unwrap();
    let c = Container::plan(id, tenantd::tenant::Tier::Schema, main);
    assert!(fence::is_fenced(main, &c).await.unwrap());
    fence::unfence(main, &c).await.unwrap();
    assert!(!fence::is_fenced(main, &c).await.unwrap());
    sqlx::query(write).execute(&mut conn).await.unwrap();
    drop(conn);
    // A move fences it with the same fence and goes through; the new container has the
    // fence's trigger on every table.
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
    let (done, moved) = env.wait_tenant(&op.name).await;
    assert!(done.metadata.is_some());
    let to = Place::of(&moved);
    let fenced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND g.tgname = 'tenant_write_fence'",
    )
    .bind(&to.schema)
    .fetch_one(&admin(&to.cluster, &to.database).await)
    .await
    .unwrap();
    assert_eq!(fenced as usize, tables.len());
    let (mut conn, _) = apps.clone().connect(id).await.unwrap();
    sqlx::query(write).execute(&mut conn).await.unwrap();
}
