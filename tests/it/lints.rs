//! The database linters users already run pass over tenantd's containers: Supabase's generic
//! splinter lints (vendored in `tests/it/splinter/`, with their licence and commit) over a
//! pool, a schema and a database container report no WARN and no ERROR, and only the INFO
//! findings listed here, each with why. And a tenant query under tenantd's policy plans the
//! policy's settings as InitPlans, evaluated once per statement, not once per row.

use sqlx::Connection;
use tenantd::api::pb;

use crate::harness::{Place, TestEnv, admin_conn, fill};

/// The generic lints (splinter's `lints/` file names, each a view in schema `lint`).
const LINTS: [(&str, &str); 10] = [
    (
        "0001_unindexed_foreign_keys",
        include_str!("splinter/0001_unindexed_foreign_keys.sql"),
    ),
    (
        "0003_auth_rls_initplan",
        include_str!("splinter/0003_auth_rls_initplan.sql"),
    ),
    (
        "0004_no_primary_key",
        include_str!("splinter/0004_no_primary_key.sql"),
    ),
    (
        "0006_multiple_permissive_policies",
        include_str!("splinter/0006_multiple_permissive_policies.sql"),
    ),
    (
        "0007_policy_exists_rls_disabled",
        include_str!("splinter/0007_policy_exists_rls_disabled.sql"),
    ),
    (
        "0008_rls_enabled_no_policy",
        include_str!("splinter/0008_rls_enabled_no_policy.sql"),
    ),
    (
        "0009_duplicate_index",
        include_str!("splinter/0009_duplicate_index.sql"),
    ),
    (
        "0011_function_search_path_mutable",
        include_str!("splinter/0011_function_search_path_mutable.sql"),
    ),
    (
        "0013_rls_disabled_in_public",
        include_str!("splinter/0013_rls_disabled_in_public.sql"),
    ),
    (
        "0024_rls_policy_always_true",
        include_str!("splinter/0024_rls_policy_always_true.sql"),
    ),
];

/// INFO findings accepted, by lint name and the table (or function) they name, and why.
const ACCEPTED: [(&str, &str, &str); 1] = [(
    "unindexed_foreign_keys",
    "appointments",
    "INFO, about the example schema's own table (nothing tenantd adds): its version 1 left \
     appointments (tenant_id, patient_id) without an index. tenantd reports it to the schema's \
     owner as advice (GetFleetSchema, `tenantctl schema list`) and does not add indexes to a \
     user's tables; the fix is a new version of the schema",
)];

/// One finding: lint name, level, the object it names, and its text.
type Finding = (String, String, String, String);

/// Runs every lint over `place`'s schema, in a transaction that is rolled back (the `lint`
/// schema, and the `anon` and `authenticated` roles lint 0013 asks about, made members of
/// the container's application role so that they can read what an application can).
async fn lint(place: &Place, app_role: &str) -> Vec<Finding> {
    let mut conn = admin_conn(&place.cluster, &place.database).await;
    let mut tx = conn.begin().await.unwrap();
    let setup = format!(
        "CREATE SCHEMA lint;
         DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
                 CREATE ROLE anon NOLOGIN;
             END IF;
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
                 CREATE ROLE authenticated NOLOGIN;
             END IF;
         END $$;
         GRANT \"{app_role}\" TO anon, authenticated;
         SELECT set_config('pgrst.db_schemas', '{schema}', true);",
        schema = place.schema
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut found = Vec::new();
    for (view, sql) in LINTS {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("lint {view}: {e}"));
        let q = format!(
            "SELECT name, level, coalesce(metadata->>'name', ''), detail FROM lint.\"{view}\"
             WHERE metadata->>'schema' = $1"
        );
        let rows: Vec<Finding> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(&place.schema)
            .fetch_all(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("lint {view}: {e}"));
        found.extend(rows);
    }
    tx.rollback().await.unwrap();
    found
}

/// The lints catch what they are for, here: a table an application can read without RLS
/// (0013, ERROR) and without a primary key (0004, INFO).
#[tokio::test]
async fn the_lints_catch_a_table_without_rls() {
    let mut env = TestEnv::start().await;
    let t = env.provision("lint-probe", pb::Tier::Schema, "main").await;
    let mut place = Place::of(&t);
    let role = t.placement.as_ref().unwrap().role.clone();
    let mut conn = admin_conn(&place.cluster, &place.database).await;
    let probe = format!(
        "CREATE SCHEMA lint_probe; CREATE TABLE lint_probe.open (v int);
         GRANT USAGE ON SCHEMA lint_probe TO \"{role}\";
         GRANT SELECT ON lint_probe.open TO \"{role}\""
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(probe))
        .execute(&mut conn)
        .await
        .unwrap();
    place.schema = "lint_probe".into();
    let found = lint(&place, &role).await;
    sqlx::raw_sql("DROP SCHEMA lint_probe CASCADE")
        .execute(&mut conn)
        .await
        .unwrap();
    let names: Vec<(&str, &str)> = found
        .iter()
        .map(|(n, l, _, _)| (n.as_str(), l.as_str()))
        .collect();
    assert!(
        names.contains(&("rls_disabled_in_public", "ERROR")),
        "{found:?}"
    );
    assert!(names.contains(&("no_primary_key", "INFO")), "{found:?}");
}

#[tokio::test]
async fn containers_in_every_tier_pass_the_generic_splinter_lints() {
    let mut env = TestEnv::start().await;
    for (slug, tier) in [
        ("lint-pool", pb::Tier::Pool),
        ("lint-schema", pb::Tier::Schema),
        ("lint-db", pb::Tier::Database),
    ] {
        let t = env.provision(slug, tier, "main").await;
        let place = Place::of(&t);
        let role = t.placement.as_ref().unwrap().role.clone();
        let found = lint(&place, &role).await;
        let refused: Vec<&Finding> = found
            .iter()
            .filter(|(name, level, object, _)| {
                level != "INFO" || !ACCEPTED.iter().any(|(n, o, _)| n == name && o == object)
            })
            .collect();
        assert!(refused.is_empty(), "{slug}: splinter reports {refused:#?}");
    }
}

/// The policy's two settings (the login's tenant, `app.tenant_id`) are sub-selects: the plan
/// of a tenant query evaluates them once, as InitPlans, and filters rows by their result;
/// `current_setting` is not called per row.
#[tokio::test]
async fn a_tenant_query_plans_the_policy_as_init_plans_not_per_row_calls() {
    let mut env = TestEnv::start().await;
    for (slug, tier) in [
        ("plan-pool", pb::Tier::Pool),
        ("plan-schema", pb::Tier::Schema),
    ] {
        let t = env.provision(slug, tier, "main").await;
        let id: uuid::Uuid = t.id.parse().unwrap();
        let place = Place::of(&t);
        fill(&place, id, 50).await;
        let role = t.placement.as_ref().unwrap().role.clone();
        let mut conn = admin_conn(&place.cluster, &place.database).await;
        let mut tx = conn.begin().await.unwrap();
        let setup = format!(
            "SET LOCAL ROLE \"{role}\"; SET LOCAL search_path TO \"{}\";
             SELECT set_config('app.tenant_id', '{id}', true)",
            place.schema
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
            .execute(&mut *tx)
            .await
            .unwrap();
        let (plan,): (serde_json::Value,) = sqlx::query_as(
            "EXPLAIN (FORMAT JSON, VERBOSE) SELECT * FROM patients WHERE given_name LIKE 'G%'",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        let text = plan.to_string();
        let init_plans = text.matches("\"Subplan Name\":\"InitPlan").count();
        assert!(
            init_plans >= 1,
            "{slug}: no InitPlan for the policy's settings: {plan:#}"
        );
        // The scan's filter compares with the InitPlans' results ($0, $1), and never calls
        // current_setting itself.
        let filters = collect(&plan, "Filter");
        assert!(
            filters.iter().all(|f| !f.contains("current_setting")),
            "{slug}: current_setting in a per-row filter: {filters:?}"
        );
        assert!(
            filters.iter().any(|f| f.contains("tenant_id")) || text.contains("Index Cond"),
            "{slug}: the policy does not filter the scan: {plan:#}"
        );
    }
}

/// Every string under key `key` in a JSON plan.
fn collect(v: &serde_json::Value, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == key
                    && let Some(s) = v.as_str()
                {
                    out.push(s.to_owned());
                }
                out.extend(collect(v, key));
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                out.extend(collect(v, key));
            }
        }
        _ => {}
    }
    out
}

/// The advice reaches users: GetFleetSchema carries it, and `tenantctl schema list` prints
/// it under the versions.
#[tokio::test]
async fn the_schema_advice_is_served_and_printed() {
    let mut env = TestEnv::start().await;
    let fleet = env
        .fleet
        .get_fleet_schema(pb::GetFleetSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    let advice: Vec<(&str, &str)> = fleet
        .advice
        .iter()
        .map(|a| (a.lint.as_str(), a.object.as_str()))
        .collect();
    assert_eq!(advice, [("unindexed_foreign_keys", "appointments")]);
    let args = ["--addr", &env.addr, "schema", "list"].map(std::ffi::OsStr::new);
    let out = crate::harness::tenantctl(&args, Some(tenantd::auth::Role::Viewer))
        .await
        .unwrap();
    assert!(
        out.contains("advice (what database linters would report; nothing is refused):")
            && out.contains("unindexed_foreign_keys appointments: foreign key"),
        "{out}"
    );
}

/// The same over a schema nobody here wrote (`examples/lab`): what tenantd adds to its tables
/// (forced RLS, the policy, the fence) draws no WARN or ERROR either; INFO findings about
/// the lab's own tables are the schema owner's, and GetFleetSchema reports them as advice.
#[tokio::test]
async fn a_schema_nobody_here_wrote_passes_the_lints_too() {
    let mut env = crate::own_schema::lab_env().await;
    for (slug, tier) in [
        ("lint-lab-pool", pb::Tier::Pool),
        ("lint-lab-schema", pb::Tier::Schema),
        ("lint-lab-db", pb::Tier::Database),
    ] {
        let t = env.provision(slug, tier, "main").await;
        let role = t.placement.as_ref().unwrap().role.clone();
        let found = lint(&Place::of(&t), &role).await;
        let serious: Vec<&Finding> = found.iter().filter(|f| f.1 != "INFO").collect();
        assert!(serious.is_empty(), "{slug}: splinter reports {serious:#?}");
        let advice = env
            .fleet
            .get_fleet_schema(pb::GetFleetSchemaRequest {})
            .await
            .unwrap()
            .into_inner()
            .advice;
        for (lint, _, object, _) in found.iter().filter(|f| f.1 == "INFO") {
            assert!(
                advice
                    .iter()
                    .any(|a| &a.lint == lint && &a.object == object),
                "{slug}: INFO {lint} on {object} is not in the schema's advice: {advice:?}"
            );
        }
    }
}
