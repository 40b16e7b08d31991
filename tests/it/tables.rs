//! A container's tenant tables come from its catalog: the example schema's, in foreign-key
//! order, and the shapes a user's schema brings (partitions, self-references, cycles, tables
//! without a tenant, identity and serial keys whose sequences must follow copied rows).

use sqlx::Executor;
use tenantd::api::pb;
use tenantd::dataplane::tables::{self, names_in};
use tenantd::dataplane::{Container, DataPlane};
use tenantd::sql::Ident;
use tenantd::tenant::Tier;

use crate::harness::{EXAMPLE_TABLES, TestEnv, admin, admin_conn};

#[tokio::test]
async fn the_example_schema_is_read_from_a_container_parents_first() {
    let mut env = TestEnv::start().await;
    let t = env.provision("tables-schema", pb::Tier::Schema, "").await;
    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let main = dataplane.cluster("main").unwrap();
    let c = Container::plan(t.id.parse().unwrap(), Tier::Schema, main);
    let db = main.database(&c.database);
    let found = tables::tenant_tables(main, &db, &c.schema).await.unwrap();
    let mut names: Vec<&str> = found.iter().map(Ident::as_str).collect();
    // tenantd's own tables in the container are not tenant data.
    for own in tables::NOT_TENANT_DATA {
        assert!(!names.contains(own), "{own}");
    }
    // Every foreign key points at a table listed before its own.
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, p.relname::text FROM pg_constraint k
         JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE k.contype = 'f' AND n.nspname = $1 AND c.oid <> p.oid",
    )
    .bind(c.schema.as_str())
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(!edges.is_empty());
    let at = |t: &str| names.iter().position(|n| *n == t).unwrap();
    for (child, parent) in &edges {
        assert!(at(parent) < at(child), "{parent} before {child}: {names:?}");
    }
    names.sort();
    assert_eq!(names, EXAMPLE_TABLES);
}

#[tokio::test]
async fn partitions_self_references_cycles_and_sequences() {
    let env = TestEnv::start().await;
    let schema = format!("it_tables_{}", uuid::Uuid::new_v4().simple());
    let pool = admin("main", "postgres").await;
    pool.execute(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema};
         SET search_path = {schema};
         CREATE TABLE wards (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
                             name text, PRIMARY KEY (tenant_id, id));
         CREATE TABLE staff (tenant_id uuid NOT NULL, id serial, mentor int,
                             ward bigint, PRIMARY KEY (tenant_id, id),
                             FOREIGN KEY (tenant_id, mentor) REFERENCES staff,
                             FOREIGN KEY (tenant_id, ward) REFERENCES wards);
         CREATE TABLE readings (tenant_id uuid NOT NULL, taken date NOT NULL, value numeric,
                                ward bigint, FOREIGN KEY (tenant_id, ward) REFERENCES wards)
             PARTITION BY RANGE (taken);
         CREATE TABLE readings_2026 PARTITION OF readings
             FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         CREATE TABLE eggs (tenant_id uuid NOT NULL, id int PRIMARY KEY, hen int);
         CREATE TABLE hens (tenant_id uuid NOT NULL, id int PRIMARY KEY,
                            egg int REFERENCES eggs DEFERRABLE INITIALLY DEFERRED);
         ALTER TABLE eggs ADD FOREIGN KEY (hen) REFERENCES hens DEFERRABLE INITIALLY DEFERRED;
         CREATE TABLE settings (key text PRIMARY KEY, value text);
         CREATE TABLE tenant_schema_migrations (tenant_id uuid, version int);"
    )))
    .await
    .unwrap();
    let names = names_in(&pool, &schema).await.unwrap();
    // Parents first; a self-reference imposes nothing; the cycle follows in name order; the
    // partition is its parent's; no tenant, no tenant table; tenantd's bookkeeping is not
    // tenant data.
    assert_eq!(names, ["wards", "readings", "staff", "eggs", "hens"]);

    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let main = dataplane.cluster("main").unwrap();
    let schema_ident = Ident::new(schema.clone()).unwrap();
    let found = tables::tenant_tables(main, &pool, &schema_ident)
        .await
        .unwrap();
    // Rows copied in with their own keys, as a move or a restore writes them.
    let tenant = uuid::Uuid::new_v4();
    let mut conn = admin_conn("main", "postgres").await;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "SET search_path = {schema};
         INSERT INTO wards (tenant_id, id, name) OVERRIDING SYSTEM VALUE
             VALUES ('{tenant}', 41, 'a'), ('{tenant}', 42, 'b');
         INSERT INTO staff (tenant_id, id, mentor, ward)
             VALUES ('{tenant}', 7, NULL, 41), ('{tenant}', 9, 7, 42);"
    )))
    .await
    .unwrap();
    tables::advance_sequences(main, &mut conn, &schema_ident, &found)
        .await
        .unwrap();
    let (ward,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.wards (tenant_id, name) VALUES ('{tenant}', 'c') RETURNING id"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let (member,): (i32,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.staff (tenant_id) VALUES ('{tenant}') RETURNING id"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let next = (ward, member);
    assert_eq!(next, (43, 10), "the next keys follow the copied ones");
    // Never backwards: a shared sequence already ahead (the pool's) stays where it is.
    conn.execute(sqlx::AssertSqlSafe(format!(
        "SELECT setval(pg_get_serial_sequence('{schema}.staff', 'id'), 500)"
    )))
    .await
    .unwrap();
    tables::advance_sequences(main, &mut conn, &schema_ident, &found)
        .await
        .unwrap();
    let (last,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT last_value FROM {schema}.staff_id_seq"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(last, 500);
    pool.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .unwrap();
}
