//! A tenant schema is tried in a throwaway container before any tenant gets it: each
//! convention has a migration that breaks it, refused with the file, the object and the rule,
//! and nothing is left behind.

use tenantd::dataplane::DataPlane;
use tenantd::dataplane::conventions::{self, ConventionError};
use tenantd::tenant_schema::{Migration, TenantSchema};

use crate::harness::{EXAMPLE_SCHEMA_DIR, TestEnv, admin};

/// Row-level security as tenantd requires it, for `table`.
fn rls(table: &str) -> String {
    let own = "tenant_id = (SELECT current_setting('app.tenant_id', true)::uuid)";
    format!(
        "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
         ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_isolation ON {table} FOR ALL USING ({own}) WITH CHECK ({own});"
    )
}

/// Version 1, which keeps every convention: one table, keyed by tenant.
fn base() -> String {
    format!(
        "CREATE TABLE wards (tenant_id uuid NOT NULL, id bigint NOT NULL, name text,
                             PRIMARY KEY (tenant_id, id));
         {}",
        rls("wards")
    )
}

fn schema(versions: &[String]) -> TenantSchema {
    let migrations = versions
        .iter()
        .enumerate()
        .map(|(i, sql)| Migration {
            version: i as i32 + 1,
            name: format!("v{}", i + 1),
            sql: sql.clone(),
            seed: None,
        })
        .collect();
    TenantSchema::new(migrations).unwrap()
}

#[tokio::test]
async fn each_convention_is_enforced_by_name_and_nothing_is_left_behind() {
    let env = TestEnv::start().await;
    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let main = dataplane.cluster("main").unwrap();
    let check = |versions: Vec<String>, extensions: Vec<String>| async move {
        conventions::check(main, &schema(&versions), &extensions).await
    };
    // The example and a small conforming schema pass.
    conventions::check(main, &TenantSchema::example(), &[])
        .await
        .expect("the example keeps every convention");
    check(vec![base()], vec![]).await.unwrap();

    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let role = format!("it_conv_{}", &suffix[..12]);
    let trigger = format!("it_conv_{}", &suffix[12..24]);
    let cases: Vec<(String, &str)> = vec![
        (
            "CREATE TABLE beds (id int PRIMARY KEY);".into(),
            "table beds has no tenant_id uuid NOT NULL column",
        ),
        (
            format!(
                "CREATE TABLE beds (tenant_id uuid, id int); {}",
                rls("beds")
            ),
            "table beds has no tenant_id uuid NOT NULL column",
        ),
        (
            format!(
                "CREATE TABLE beds (tenant_id uuid NOT NULL, id int, PRIMARY KEY (id, tenant_id));
                 {}",
                rls("beds")
            ),
            "the primary key beds_pkey of table beds does not lead with tenant_id",
        ),
        (
            "CREATE UNIQUE INDEX wards_name ON wards (name, tenant_id);".into(),
            "unique index wards_name of table wards does not lead with tenant_id",
        ),
        (
            format!(
                "CREATE TABLE beds (tenant_id uuid NOT NULL, id int, ward_tenant uuid,
                                    ward bigint, PRIMARY KEY (tenant_id, id),
                                    FOREIGN KEY (ward_tenant, ward) REFERENCES wards);
                 {}",
                rls("beds")
            ),
            "foreign key beds_ward_tenant_ward_fkey of table beds does not include tenant_id",
        ),
        (
            "CREATE TABLE public.it_conv_leak (tenant_id uuid NOT NULL);".into(),
            "it creates relation public.it_conv_leak outside the tenant's container",
        ),
        (format!("CREATE ROLE {role};"), "it creates role it_conv_"),
        (
            "GRANT SELECT ON wards TO PUBLIC;".into(),
            "table wards carries grants",
        ),
        (
            "ALTER TABLE wards NO FORCE ROW LEVEL SECURITY;".into(),
            "table wards: the version turns row-level security off",
        ),
        (
            "ALTER TABLE wards DISABLE ROW LEVEL SECURITY;".into(),
            "table wards: the version turns row-level security off",
        ),
        (
            "CREATE POLICY everyone ON wards USING (true);".into(),
            "policy everyone on table wards is permissive",
        ),
        (
            "DROP POLICY tenant_isolation ON wards;
             CREATE POLICY tenant_isolation ON wards USING (true);"
                .into(),
            "policy tenant_isolation on table wards is not tenantd's",
        ),
        (
            "CREATE TABLE tenantd_beds (tenant_id uuid NOT NULL);".into(),
            "tenantd_beds is named like tenantd's own objects",
        ),
        (
            "CREATE OR REPLACE FUNCTION tenantd_write_fence() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RETURN NULL; END $$;"
                .into(),
            "function tenantd_write_fence() is named like tenantd's own objects",
        ),
        (
            format!(
                "CREATE FUNCTION it_conv_et() RETURNS event_trigger LANGUAGE plpgsql
                     AS $$ BEGIN END $$;
                 CREATE EVENT TRIGGER {trigger} ON ddl_command_start
                     EXECUTE FUNCTION it_conv_et();"
            ),
            "it creates event trigger it_conv_",
        ),
        (
            "CREATE FUNCTION ward_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER
                 AS 'SELECT count(*) FROM wards';"
                .into(),
            "function ward_count() is SECURITY DEFINER without SET search_path",
        ),
        (
            "CREATE EXTENSION citext;".into(),
            "it creates extension citext, which [tenant_schema] extensions does not allow",
        ),
        ("CREATE TABLE (;".into(), "it does not apply: "),
    ];
    for (sql, rule) in cases {
        match check(vec![base(), sql.clone()], vec![]).await {
            Err(ConventionError::Refused { file, reason }) => {
                assert_eq!(file, "0002_v2.sql", "{sql}");
                assert!(
                    reason.contains(rule),
                    "{sql}\nexpected: {rule}\ngot: {reason}"
                );
            }
            other => panic!("{sql}: not refused: {other:?}"),
        }
    }
    // A bare table needs nothing of its own: tenantd adds RLS, the policy and the fence, after
    // each version, in the try as in every container. On the example too, which made a fence
    // of its own in version 2.
    let mut bare: Vec<String> = TenantSchema::example()
        .migrations()
        .iter()
        .map(|m| m.sql.clone())
        .collect();
    bare.push(
        "CREATE TABLE beds (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));".into(),
    );
    bare.push("ALTER TABLE beds ADD COLUMN ward text;".into());
    check(bare, vec![]).await.unwrap();
    // What the configuration allows, and a definer that pins its path, pass.
    check(
        vec![
            base(),
            "CREATE EXTENSION citext;
             CREATE FUNCTION ward_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER
                 SET search_path = pg_catalog, pg_temp AS 'SELECT 1::bigint';"
                .into(),
        ],
        vec!["citext".into()],
    )
    .await
    .unwrap();
    // Nothing was left behind: the tries were rolled back.
    let pool = admin("main", "postgres").await;
    let left: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1),
                (SELECT count(*) FROM pg_event_trigger WHERE evtname = $2),
                (SELECT count(*) FROM pg_class WHERE relname = 'it_conv_leak'),
                (SELECT count(*) FROM pg_extension WHERE extname = 'citext')",
    )
    .bind(&role)
    .bind(&trigger)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 0, 0));
}

#[tokio::test]
async fn neighbours_creating_and_dropping_objects_during_a_try_are_not_taken_for_its_own() {
    let env = TestEnv::start().await;
    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let main = dataplane.cluster("main").unwrap();
    let pool = admin("main", "postgres").await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (gone, late) = (
        format!("it_conv_gone_{suffix}"),
        format!("it_conv_late_{suffix}"),
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE public.{gone} (id int)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    // The try takes its snapshot, then sleeps inside its second version while a neighbour
    // (another tenant's deletion or provisioning) drops one table and creates another.
    let slow = vec![base(), "SELECT pg_sleep(2);".to_owned()];
    let neighbour = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE public.{gone}; CREATE TABLE public.{late} (id int);"
        )))
        .execute(&pool)
        .await
        .unwrap();
    };
    let slow = schema(&slow);
    let (tried, ()) = tokio::join!(conventions::check(main, &slow, &[]), neighbour);
    tried.expect("a neighbour's objects are not the migration's");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE public.{late}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replica_with_a_version_that_breaks_a_convention_refuses_to_start() {
    let mut env = TestEnv::start().await;
    // Once the first replica answers, it has recorded the example's versions.
    env.fleet
        .get_fleet_schema(tenantd::api::pb::GetFleetSchemaRequest {})
        .await
        .unwrap();
    let dir = env.dir.join("bad-schema");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(EXAMPLE_SCHEMA_DIR).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        dir.join("0005_beds.sql"),
        "CREATE TABLE beds (id int PRIMARY KEY);\n",
    )
    .unwrap();
    let mut config = env.config.clone();
    config.tenant_schema.dir = Some(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tenantd::server::run(config, listener, Default::default())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        refused.contains("0005_beds.sql is refused: table beds has no tenant_id uuid NOT NULL"),
        "{refused}"
    );
    let recorded: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM tenant_schema_versions ORDER BY version")
            .fetch_all(&env.registry)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        [1, 2, 3, 4],
        "the refused version was not recorded"
    );
}

/// The isolation machinery is tenantd's: a fence trigger someone dropped or disabled by hand
/// is back before tenantd fences the tenant, so the fence holds on every table.
#[tokio::test]
async fn a_fence_trigger_dropped_or_disabled_by_hand_is_back_before_a_fence() {
    use tenantd::dataplane::{Container, fence};
    let mut env = TestEnv::start().await;
    let t = env
        .provision("unfenced-table", tenantd::api::pb::Tier::Schema, "")
        .await;
    let id: uuid::Uuid = t.id.parse().unwrap();
    let place = crate::harness::Place::of(&t);
    let pool = admin(&place.cluster, &place.database).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TRIGGER tenant_write_fence ON \"{s}\".clinical_notes;
         ALTER TABLE \"{s}\".patients DISABLE TRIGGER tenant_write_fence;",
        s = place.schema
    )))
    .execute(&pool)
    .await
    .unwrap();
    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let main = dataplane.cluster("main").unwrap();
    let c = Container::plan(id, tenantd::tenant::Tier::Schema, main);
    assert_eq!(c.schema.as_str(), place.schema);
    fence::fence(main, &c, uuid::Uuid::new_v4()).await.unwrap();
    let apps = crate::harness::AppConnector::new(&env);
    let (mut conn, _) = apps.clone().connect(id).await.unwrap();
    for write in [
        "DELETE FROM clinical_notes",
        "UPDATE patients SET family_name = family_name",
    ] {
        let e = sqlx::query(write).execute(&mut conn).await.unwrap_err();
        assert_eq!(
            crate::harness::sqlstate(&e),
            fence::SQLSTATE,
            "{write}: {e}"
        );
    }
    fence::unfence(main, &c).await.unwrap();
    sqlx::query("UPDATE patients SET family_name = family_name")
        .execute(&mut conn)
        .await
        .unwrap();
}

/// What the linters users run would say about a schema's own tables is advice, not a
/// refusal: an unindexed foreign key, a table without a primary key, two identical indexes and
/// a function without a fixed search_path are each reported, and the schema is accepted. The
/// example gets one piece of advice (its appointments' foreign key to patients).
#[tokio::test]
async fn what_the_linters_would_report_is_advice_and_nothing_is_refused() {
    let env = TestEnv::start().await;
    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let main = dataplane.cluster("main").unwrap();
    let v2 = "CREATE TABLE beds (tenant_id uuid NOT NULL, id bigint NOT NULL, ward_id bigint,
                                 PRIMARY KEY (tenant_id, id),
                                 FOREIGN KEY (tenant_id, ward_id) REFERENCES wards (tenant_id, id));
              CREATE TABLE readings (tenant_id uuid NOT NULL, value numeric);
              CREATE INDEX readings_a ON readings (tenant_id, value);
              CREATE INDEX readings_b ON readings (tenant_id, value);
              CREATE FUNCTION bed_count() RETURNS bigint LANGUAGE sql
                  AS 'SELECT count(*) FROM beds';
              CREATE FUNCTION ward_count() RETURNS bigint LANGUAGE sql
                  SET search_path = pg_catalog, pg_temp AS 'SELECT 1::bigint';";
    let advice = conventions::check(main, &schema(&[base(), v2.to_owned()]), &[])
        .await
        .expect("advice is not a refusal");
    let got: Vec<(&str, &str)> = advice.iter().map(|a| (a.lint, a.object.as_str())).collect();
    assert_eq!(
        got,
        [
            ("unindexed_foreign_keys", "beds"),
            ("no_primary_key", "readings"),
            ("duplicate_index", "readings"),
            ("function_search_path_mutable", "bed_count"),
        ],
        "{advice:#?}"
    );
    assert!(
        advice[0].detail.contains("tenant_id, ward_id"),
        "{advice:?}"
    );
    assert!(
        advice[2].detail.contains("readings_a, readings_b"),
        "{advice:?}"
    );

    let example = conventions::check(main, &TenantSchema::example(), &[])
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = example
        .iter()
        .map(|a| (a.lint, a.object.as_str()))
        .collect();
    assert_eq!(
        got,
        [("unindexed_foreign_keys", "appointments")],
        "{example:#?}"
    );
}
