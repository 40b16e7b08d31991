//! Property tests against real PostgreSQL: whatever a caller sends, no input reaches SQL
//! unquoted or executes. Identifiers go through `sql::Ident` (validated, always quoted),
//! literals through `sql::literal`; statements run with the simple query protocol, which
//! would execute a second statement if quoting ever let one through. A canary table must
//! survive every case.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sqlx::{PgPool, Row};

use tenantd::api::pb;
use tenantd::sql::{Ident, Statement, literal};

use crate::harness::{TestEnv, admin};

/// Strings built from the pieces that break naive quoting, mixed with plausible names and
/// arbitrary characters.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-z_][a-z0-9_]{0,10}",
        "[A-Z]{1,3}",
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just(";".to_owned()),
        Just("--".to_owned()),
        Just("/*".to_owned()),
        Just("\\".to_owned()),
        Just("$$".to_owned()),
        Just(" ".to_owned()),
        Just("\0".to_owned()),
        Just("\"; DROP TABLE canary; --".to_owned()),
        Just("'); DROP TABLE canary; --".to_owned()),
        any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        3 => prop::collection::vec(piece, 0..6).prop_map(|v| v.concat()),
        // Plain names, and names around PostgreSQL's 63-byte limit.
        1 => "[a-z_][a-z0-9_]{0,20}",
        1 => "[a-z_][a-z0-9_]{60,65}",
    ]
}

fn plain_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 63
}

/// A scratch schema with a canary table in it.
async fn scratch(pool: &PgPool) -> Ident {
    let schema = Ident::new(format!("prop_{}", uuid::Uuid::new_v4().simple())).unwrap();
    let ddl = Statement::new("CREATE SCHEMA ")
        .ident(&schema)
        .push("; CREATE TABLE ")
        .qualified(&schema, &Ident::from_static("canary"))
        .push(" (x int)");
    sqlx::raw_sql(ddl.into_sql()).execute(pool).await.unwrap();
    schema
}

async fn canary_alive(pool: &PgPool, schema: &Ident) -> bool {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = 'canary'",
    )
    .bind(schema.as_str())
    .fetch_one(pool)
    .await
    .unwrap();
    n == 1
}

/// Runs `check` on generated strings inside the test's runtime (proptest is synchronous).
fn run(cases: u32, check: impl Fn(String) + Sync) {
    tokio::task::block_in_place(|| {
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        TestRunner::new(config)
            .run(&hostile(), |s| {
                check(s);
                Ok(())
            })
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_are_valid_exactly_when_plain_and_always_quoted() {
    let pool = admin("main", "postgres").await;
    let schema = scratch(&pool).await;
    let handle = tokio::runtime::Handle::current();
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    run(400, |s| {
        let ident = Ident::new(s.clone());
        assert_eq!(ident.is_ok(), plain_name(&s), "{s:?}");
        let Ok(ident) = ident else { return };
        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ident.to_string(), format!("\"{s}\""));
        handle.block_on(async {
            // Creates exactly a table of that name, in the scratch schema, and nothing else.
            let create = Statement::new("CREATE TABLE IF NOT EXISTS ")
                .qualified(&schema, &ident)
                .push(" (x int)");
            sqlx::raw_sql(create.into_sql())
                .execute(&pool)
                .await
                .unwrap();
            let found: Option<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n
                     ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2",
            )
            .bind(schema.as_str())
            .bind(&s)
            .fetch_optional(&pool)
            .await
            .unwrap();
            assert_eq!(found.as_deref(), Some(s.as_str()));
            assert!(canary_alive(&pool, &schema).await, "{s:?}");
        });
    });
    // Both sides of the property were exercised.
    let accepted = accepted.into_inner();
    assert!(
        (40..360).contains(&accepted),
        "{accepted} of 400 were plain names"
    );
    drop_scratch(&pool, &schema).await;
}

async fn drop_scratch(pool: &PgPool, schema: &Ident) {
    let drop = Statement::new("DROP SCHEMA ")
        .ident(schema)
        .push(" CASCADE");
    sqlx::raw_sql(drop.into_sql()).execute(pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_come_back_exactly_and_never_execute() {
    let pool = admin("main", "postgres").await;
    let schema = scratch(&pool).await;
    let handle = tokio::runtime::Handle::current();
    // A server where a DBA turned standard_conforming_strings off: backslashes in plain
    // literals become escapes there.
    let mut legacy = pool.acquire().await.unwrap().detach();
    sqlx::query("SET standard_conforming_strings = off")
        .execute(&mut legacy)
        .await
        .unwrap();
    let legacy = tokio::sync::Mutex::new(legacy);
    run(400, |s| {
        let Ok(lit) = literal(&s) else {
            assert!(s.contains('\0'), "{s:?}");
            return;
        };
        handle.block_on(async {
            let select = Statement::new("SELECT ").literal(&s).unwrap().push(" AS v");
            assert_eq!(select.as_str(), format!("SELECT {lit} AS v"));
            // The simple protocol runs every statement in the text: one row back means one
            // statement ran.
            let rows = sqlx::raw_sql(select.to_sql())
                .fetch_all(&pool)
                .await
                .unwrap();
            assert_eq!(rows.len(), 1, "{s:?}");
            assert_eq!(rows[0].get::<String, _>(0), s);
            let rows = sqlx::raw_sql(select.into_sql())
                .fetch_all(&mut *legacy.lock().await)
                .await
                .unwrap();
            assert_eq!(rows.len(), 1, "{s:?}");
            assert_eq!(
                rows[0].get::<String, _>(0),
                s,
                "standard_conforming_strings off"
            );
            assert!(canary_alive(&pool, &schema).await, "{s:?}");
        });
    });
    drop_scratch(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_in_requests_are_refused_or_not_found_never_run() {
    let mut env = TestEnv::start().await;
    let existing = env
        .provision("prop-neighbour", pb::Tier::Schema, "main")
        .await;
    let handle = tokio::runtime::Handle::current();
    let env = std::sync::Mutex::new(&mut env);
    run(150, |s| {
        let mut env = env.lock().unwrap();
        handle.block_on(async {
            let get = env
                .tenants
                .get_tenant(pb::GetTenantRequest { tenant: s.clone() })
                .await;
            let resolve = env
                .tenants
                .resolve_tenant(pb::ResolveTenantRequest { tenant: s.clone() })
                .await;
            let audit = env
                .audit
                .list_audit_events(pb::ListAuditEventsRequest {
                    tenant: s.clone(),
                    ..Default::default()
                })
                .await;
            let export = env
                .exports
                .get_export(pb::GetExportRequest { name: s.clone() })
                .await;
            for (what, answer) in [
                ("get", get.map(|_| ())),
                ("resolve", resolve.map(|_| ())),
                ("audit", audit.map(|_| ())),
                ("export", export.map(|_| ())),
            ] {
                // A hostile string names nothing: refused, or looked up (bound) and not found.
                // The empty string is the audit log's "no tenant" chain.
                let code = answer.err().map(|e| e.code());
                let ok = matches!(
                    code,
                    Some(tonic::Code::InvalidArgument | tonic::Code::NotFound)
                ) || (what == "audit" && s.is_empty());
                assert!(ok, "{what} {s:?}: {code:?}");
            }
        });
    });
    // The neighbour is untouched.
    let env = env.into_inner().unwrap();
    let t = env.tenant(&existing.id).await;
    assert_eq!(t.state, pb::TenantState::Active as i32);
    assert_eq!(crate::harness::footprint(&t.id, "main").await.schemas, 1);
}
