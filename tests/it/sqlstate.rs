//! The one SQLSTATE classifier, against real PostgreSQL errors: every class callers decide on,
//! and the registry's mapping (transient failures are UNAVAILABLE, which is retried, never
//! INTERNAL).

use tenantd::error::Error;
use tenantd::sqlstate::{self, Class};

use crate::harness::admin;

/// The error PostgreSQL reports for `code`, raised as the server would.
async fn raised(pool: &sqlx::PgPool, code: &str) -> sqlx::Error {
    let sql = format!("DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{code}'; END $$");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .expect_err("the statement raises")
}

#[tokio::test]
async fn every_sqlstate_class_is_read_from_real_server_errors() {
    let pool = admin("main", "postgres").await;
    for (code, class) in [
        ("40001", Class::Transient), // serialization_failure
        ("40P01", Class::Transient), // deadlock_detected
        ("55P03", Class::Transient), // lock_not_available (lock_timeout)
        ("57P01", Class::Transient), // admin_shutdown
        ("08006", Class::Transient), // connection_failure
        ("53300", Class::Transient), // too_many_connections
        ("23505", Class::UniqueViolation),
        ("23503", Class::ForeignKeyViolation),
        ("23502", Class::IntegrityViolation), // not_null_violation
        ("23514", Class::IntegrityViolation), // check_violation
        ("42710", Class::DuplicateObject),
        ("42P04", Class::DuplicateObject),
        ("TF001", Class::Fenced),
        ("3D000", Class::Gone),
        ("42P01", Class::Gone),
        ("42601", Class::Other), // syntax_error
        ("XX000", Class::Other),
    ] {
        let e = raised(&pool, code).await;
        assert_eq!(sqlstate::code(&e).as_deref(), Some(code));
        assert_eq!(sqlstate::classify(&e), class, "{code}");
        let mapped = Error::from(e);
        match class {
            Class::Transient => assert!(matches!(mapped, Error::Unavailable(_)), "{code}"),
            _ => assert!(matches!(mapped, Error::Internal(_)), "{code}"),
        }
    }
}

#[tokio::test]
async fn a_real_serialization_failure_and_a_unique_violation_are_classified() {
    let pool = admin("main", "postgres").await;
    let table = format!("it_sqlstate_{}", uuid::Uuid::new_v4().simple());
    let ddl = format!("CREATE TABLE {table} (id int CONSTRAINT {table}_pk PRIMARY KEY, n int)");
    sqlx::query(sqlx::AssertSqlSafe(ddl))
        .execute(&pool)
        .await
        .unwrap();
    let insert = format!("INSERT INTO {table} VALUES (1, 0)");
    sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
        .execute(&pool)
        .await
        .unwrap();
    let dup = sqlx::query(sqlx::AssertSqlSafe(insert))
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(sqlstate::is_unique(&dup, &format!("{table}_pk")));
    assert!(sqlstate::is_already_created(&dup));
    assert!(!sqlstate::is_unique(&dup, "another_index"));

    // Two serializable transactions that each read what the other writes.
    let mut a = pool.begin().await.unwrap();
    let mut b = pool.begin().await.unwrap();
    for tx in [&mut a, &mut b] {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .execute(&mut **tx)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT sum(n) FROM {table}")))
            .execute(&mut **tx)
            .await
            .unwrap();
    }
    let update = format!("UPDATE {table} SET n = n + 1");
    sqlx::query(sqlx::AssertSqlSafe(update.clone()))
        .execute(&mut *a)
        .await
        .unwrap();
    a.commit().await.unwrap();
    let failed = match sqlx::query(sqlx::AssertSqlSafe(update))
        .execute(&mut *b)
        .await
    {
        Err(e) => e,
        Ok(_) => b.commit().await.unwrap_err(),
    };
    assert_eq!(sqlstate::code(&failed).as_deref(), Some("40001"));
    assert!(sqlstate::is_transient(&failed));
    assert!(matches!(Error::from(failed), Error::Unavailable(_)));
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}
