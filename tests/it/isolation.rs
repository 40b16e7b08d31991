//! Isolation between tenants, per tier, from the application role's point of view: with
//! tenant A set, B's rows cannot be read, updated or deleted, and a row with B's id cannot be
//! inserted; with no tenant set, nothing is visible.

use sqlx::{Executor, PgConnection};
use uuid::Uuid;

use tenantd::api::pb;

use crate::harness::{TestEnv, admin, admin_conn, sqlstate};

struct Placed {
    id: Uuid,
    cluster: String,
    database: String,
    schema: String,
    role: String,
}

fn placed(t: &pb::Tenant) -> Placed {
    let p = t.placement.clone().unwrap();
    Placed {
        id: t.id.parse().unwrap(),
        cluster: p.cluster,
        database: p.database,
        schema: p.schema,
        role: p.role,
    }
}

/// Inserts one patient for the tenant as the superuser; returns its id.
async fn add_patient(t: &Placed) -> Uuid {
    let pool = admin(&t.cluster, &t.database).await;
    let q = format!(
        "INSERT INTO \"{}\".patients (tenant_id, mrn, given_name, family_name, birth_date)
         VALUES ($1, 'mrn-1', 'Ada', 'Lovelace', '1815-12-10') RETURNING id",
        t.schema
    );
    sqlx::query_as::<_, (Uuid,)>(sqlx::AssertSqlSafe(q))
        .bind(t.id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .0
}

/// A session in `t`'s database acting as `t`'s application role, with `tenant` set (or not).
async fn app_session(t: &Placed, tenant: Option<Uuid>) -> PgConnection {
    let mut conn = admin_conn(&t.cluster, &t.database).await;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "SET ROLE \"{}\"; SET search_path TO \"{}\"",
        t.role, t.schema
    )))
    .await
    .unwrap();
    if let Some(id) = tenant {
        sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
            .bind(id.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn
}

async fn count(conn: &mut PgConnection, sql: &'static str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sql)
        .fetch_one(conn)
        .await
        .unwrap()
        .0
}

/// The checks every tier must pass inside A's own container.
async fn assert_rls_holds(a: &Placed, b_id: Uuid, own_patient: Uuid) {
    let mut s = app_session(a, Some(a.id)).await;
    assert_eq!(count(&mut s, "SELECT count(*) FROM patients").await, 1);
    assert_eq!(
        count(&mut s, "SELECT count(*) FROM appointment_types").await,
        4,
        "own reference data visible"
    );
    // A row carrying B's tenant id cannot be written, not even in A's container.
    let e = sqlx::query(
        "INSERT INTO patients (tenant_id, mrn, given_name, family_name, birth_date)
         VALUES ($1, 'x', 'Eve', 'Mallory', '1990-01-01')",
    )
    .bind(b_id)
    .execute(&mut s)
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    // Nor can an own row be moved to B.
    let e = sqlx::query("UPDATE patients SET tenant_id = $1 WHERE id = $2")
        .bind(b_id)
        .bind(own_patient)
        .execute(&mut s)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    // With B's id set, A's rows vanish.
    let mut as_b = app_session(a, Some(b_id)).await;
    let (visible,): (i64,) = sqlx::query_as("SELECT count(*) FROM patients WHERE tenant_id = $1")
        .bind(a.id)
        .fetch_one(&mut as_b)
        .await
        .unwrap();
    assert_eq!(visible, 0);
    // With no tenant set, nothing is visible.
    let mut none = app_session(a, None).await;
    assert_eq!(count(&mut none, "SELECT count(*) FROM patients").await, 0);
    assert_eq!(
        count(&mut none, "SELECT count(*) FROM appointment_types").await,
        0
    );
}

async fn patient_name(t: &Placed, id: Uuid) -> String {
    let pool = admin(&t.cluster, &t.database).await;
    let q = format!(
        "SELECT given_name FROM \"{}\".patients WHERE id = $1",
        t.schema
    );
    sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(q))
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn pool_tenants_cannot_see_or_touch_each_other() {
    let mut env = TestEnv::start().await;
    let a = placed(&env.provision("iso-pool-a", pb::Tier::Pool, "").await);
    let b = placed(&env.provision("iso-pool-b", pb::Tier::Pool, "").await);
    let pa = add_patient(&a).await;
    let pb_ = add_patient(&b).await;

    assert_rls_holds(&a, b.id, pa).await;

    // Same tables, but B's row is invisible and untouchable for A.
    let mut s = app_session(&a, Some(a.id)).await;
    let seen = sqlx::query("SELECT 1 FROM patients WHERE id = $1")
        .bind(pb_)
        .fetch_optional(&mut s)
        .await
        .unwrap();
    assert!(seen.is_none());
    let updated = sqlx::query("UPDATE patients SET given_name = 'Mallory' WHERE id = $1")
        .bind(pb_)
        .execute(&mut s)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM patients WHERE tenant_id = $1")
        .bind(b.id)
        .execute(&mut s)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    assert_eq!(patient_name(&b, pb_).await, "Ada", "B's row unchanged");

    // B sees exactly its own row.
    let mut sb = app_session(&b, Some(b.id)).await;
    assert_eq!(count(&mut sb, "SELECT count(*) FROM patients").await, 1);
}

#[tokio::test]
async fn schema_tenants_are_confined_to_their_schema() {
    let mut env = TestEnv::start().await;
    let a = placed(&env.provision("iso-schema-a", pb::Tier::Schema, "").await);
    let b = placed(&env.provision("iso-schema-b", pb::Tier::Schema, "").await);
    let pa = add_patient(&a).await;
    let pb_ = add_patient(&b).await;

    assert_rls_holds(&a, b.id, pa).await;

    let mut s = app_session(&a, Some(a.id)).await;
    for sql in [
        format!("SELECT count(*) FROM \"{}\".patients", b.schema),
        format!(
            "UPDATE \"{}\".patients SET given_name = 'Mallory'",
            b.schema
        ),
        format!("DELETE FROM \"{}\".patients", b.schema),
        format!(
            "INSERT INTO \"{}\".patients (tenant_id, mrn, given_name, family_name, birth_date) \
             VALUES ('{}', 'x', 'E', 'M', '1990-01-01')",
            b.schema, b.id
        ),
        "SELECT count(*) FROM pool.patients".to_owned(),
    ] {
        let e = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut s)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
    }
    assert_eq!(patient_name(&b, pb_).await, "Ada");
}

#[tokio::test]
async fn database_tenants_cannot_reach_each_other() {
    let mut env = TestEnv::start().await;
    let a = placed(&env.provision("iso-db-a", pb::Tier::Database, "").await);
    let b = placed(&env.provision("iso-db-b", pb::Tier::Database, "").await);
    let pa = add_patient(&a).await;
    add_patient(&b).await;

    assert_rls_holds(&a, b.id, pa).await;

    let pool = admin("main", "postgres").await;
    let (a_to_b, a_to_a, public_to_b): (bool, bool, bool) = sqlx::query_as(
        "SELECT has_database_privilege($1, $2, 'CONNECT'),
                has_database_privilege($1, $3, 'CONNECT'),
                has_database_privilege('public', $2, 'CONNECT')",
    )
    .bind(&a.role)
    .bind(&b.database)
    .bind(&a.database)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!a_to_b && a_to_a && !public_to_b);
}
