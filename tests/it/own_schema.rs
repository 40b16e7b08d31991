//! A tenant schema nobody at tenantd wrote, `examples/lab`, different from the example in
//! every way the data plane has to get right: an enum and a domain, identity and serial
//! keys, a self-referencing foreign key, a generated column, arrays, jsonb, bytea, inet and
//! numeric, a partitioned table, a table and a column rename added by version 2, and no RLS,
//! policy or fence SQL of its own. It goes through every workflow in every tier.
//!
//! The test has a shared database of its own on both clusters, so its pool is its schema's
//! and nobody else's.

use uuid::Uuid;

use tenantd::api::pb;

use crate::change_tier::move_to;
use crate::export::{download, export, restore as psql_restore};
use crate::harness::{AppConnector, Place, TestEnv, admin, footprint, snapshot};

pub const LAB_SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lab");

pub(crate) async fn lab_env() -> TestEnv {
    let (mut config, dir) = TestEnv::config().await;
    config.tenant_schema.dir = Some(LAB_SCHEMA_DIR.into());
    let shared = format!("lab_{}", &Uuid::new_v4().simple().to_string()[..12]);
    for c in &mut config.clusters {
        c.shared_database = shared.clone();
    }
    TestEnv::start_with(config, dir).await
}

/// Runs `sql` (each `;`-separated statement, `S.` naming the container) as the superuser,
/// binding the tenant as $1 and `n` as $2 where used.
pub(crate) async fn run(place: &Place, tenant: Uuid, n: i32, sql: &str) {
    let pool = admin(&place.cluster, &place.database).await;
    let sql = sql.replace("S.", &format!("\"{}\".", place.schema));
    for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        let q = sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned())).bind(tenant);
        let q = if stmt.contains("$2") { q.bind(n) } else { q };
        q.execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
}

/// Rows in every table at version 1: a lab network, specimens with every kind of value
/// (NULLs, quotes, tabs, newlines, non-ASCII), results in every partition.
pub(crate) async fn fill(place: &Place, tenant: Uuid, n: i32) {
    run(
        place,
        tenant,
        n,
        "INSERT INTO S.labs (tenant_id, name, address)
             VALUES ($1, 'North', '10.0.0.1'), ($1, E'South \"quoted\"\\tlab', '2001:db8::1');
         UPDATE S.labs SET parent_id = (SELECT min(id) FROM S.labs WHERE tenant_id = $1)
             WHERE tenant_id = $1 AND name <> 'Main lab';
         INSERT INTO S.specimens (tenant_id, lab_id, kind, code, tags, attributes, label_png,
                                  volume_ml, collected_at)
         SELECT $1, (SELECT max(id) FROM S.labs WHERE tenant_id = $1),
                (ARRAY['blood', 'urine', 'tissue', 'swab'])[1 + g % 4]::S.specimen_kind,
                CASE WHEN g % 2 = 0 THEN '2345-7' END,
                ARRAY['t' || g, E'tab\\there', 'ünïcödé ✓'],
                jsonb_build_object('g', g, 'note', E'line\\nbreak'),
                CASE WHEN g % 3 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
                g * 1.125, timestamptz '2026-03-01 10:00+00' + g * interval '1 hour'
         FROM generate_series(1, $2) g;
         INSERT INTO S.results (tenant_id, specimen_id, reported_on, value)
         SELECT tenant_id, id,
                (ARRAY[date '2025-06-01', date '2026-02-01', date '2031-01-01'])[1 + id % 3],
                id * 0.5
         FROM S.specimens WHERE tenant_id = $1",
    )
    .await;
}

/// Every tenant table and partition of the container has RLS forced, tenantd's policy and its
/// enabled fence trigger, though the schema wrote none of it.
async fn assert_secured(place: &Place) {
    let pool = admin(&place.cluster, &place.database).await;
    let rows: Vec<(String, bool, bool, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relispartition,
                c.relrowsecurity AND c.relforcerowsecurity,
                EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid
                          AND p.polname = 'tenant_isolation' AND p.polcmd = '*'),
                EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid
                          AND g.tgname = 'tenantd_write_fence' AND g.tgenabled = 'O')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
           AND c.relname NOT IN ('tenant_schema_migrations', 'tenantd_write_fences')
         ORDER BY 1",
    )
    .bind(&place.schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert!(
        names.contains(&"results_2025") && names.contains(&"results_other"),
        "{names:?}"
    );
    for (table, _, rls, policy, trigger) in &rows {
        assert!(*rls && *policy && *trigger, "{place:?} {table}: {rows:?}");
    }
}

/// The application's view after any workflow: it connects through ResolveTenant, sees only
/// its own rows, and can insert through every default (identity, serial, generated) without
/// colliding with copied keys.
async fn app_writes(env: &TestEnv, tenant: Uuid, version: i32) {
    let (mut conn, _) = AppConnector::new(env).connect(tenant).await.unwrap();
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM labs WHERE tenant_id <> $1")
        .bind(tenant)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(others, 0);
    let me = "current_setting('app.tenant_id')::uuid";
    let result = if version >= 2 {
        "measured_value"
    } else {
        "value"
    };
    for sql in [
        format!("INSERT INTO labs (tenant_id, name) VALUES ({me}, 'app lab')"),
        format!(
            "INSERT INTO specimens (tenant_id, lab_id, kind, volume_ml)
             SELECT {me}, max(id), 'swab', 2 FROM labs"
        ),
        format!(
            "INSERT INTO results (tenant_id, specimen_id, reported_on, {result})
             SELECT {me}, max(id), date '2026-05-05', 1 FROM specimens"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let litres: String = sqlx::query_scalar(
        "SELECT volume_l::text FROM specimens WHERE id = (SELECT max(id) FROM specimens)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        litres, "0.00200000000000000000",
        "generated column computed"
    );
    // A tenant's own login cannot take the machinery off its tables.
    let e = sqlx::query("ALTER TABLE specimens DISABLE TRIGGER tenantd_write_fence")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "42501", "{e}");
}

fn placed(t: &pb::Tenant) -> (Place, Uuid) {
    (Place::of(t), t.id.parse().unwrap())
}

#[tokio::test]
async fn a_schema_nobody_here_wrote_goes_through_every_workflow_in_every_tier() {
    let mut env = lab_env().await;
    // The fleet starts at version 1; version 2 reaches it through a rollout.
    crate::rollout::pin_fleet(&mut env, 1).await;
    let pool_t = env.provision("lab-pool", pb::Tier::Pool, "main").await;
    let schema_t = env.provision("lab-schema", pb::Tier::Schema, "main").await;
    let db_t = env.provision("lab-db", pb::Tier::Database, "second").await;
    let neighbour = env.provision("lab-neighbour", pb::Tier::Pool, "main").await;
    for t in [&pool_t, &schema_t, &db_t, &neighbour] {
        assert_eq!(t.schema_version, 1);
        let (place, id) = placed(t);
        assert_secured(&place).await;
        fill(&place, id, 12).await;
        let rows = snapshot(&place, id).await;
        let labs = &rows.iter().find(|(t, _)| t == "labs").unwrap().1;
        assert_eq!(labs.len(), 3, "the seed's main lab and two more: {labs:?}");
        app_writes(&env, id, 1).await;
    }

    // An export at version 1, to restore once the fleet is at version 2.
    let old_export = export(&mut env, &db_t.slug).await;
    let (db_place, db_id) = placed(&db_t);
    let at_v1 = snapshot(&db_place, db_id).await;

    // Version 2 (a new table, a renamed column, a new foreign key) through a canaried rollout.
    let op = env
        .fleet
        .migrate_fleet(pb::MigrateFleetRequest {
            target_version: 2,
            canary_count: 1,
            auto_continue: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = env.wait(&op.name).await;
    assert_eq!(crate::rollout::error_of(&done), None, "{done:?}");
    let targets = env.rollout_targets(&op.name).await;
    assert!(targets.iter().any(|t| t.canary), "{targets:?}");
    let mut tenants = Vec::new();
    for t in [&pool_t, &schema_t, &db_t, &neighbour] {
        let t = env.tenant(&t.slug).await;
        assert_eq!(t.schema_version, 2, "{}", t.slug);
        let (place, id) = placed(&t);
        assert_eq!(crate::rollout::container_version(&place).await, 2);
        assert_secured(&place).await;
        run(
            &place,
            id,
            0,
            "INSERT INTO S.panels (tenant_id, code, title) VALUES ($1, 'cbc', 'Blood count');
             UPDATE S.results SET panel_code = 'cbc' WHERE tenant_id = $1 AND id % 2 = 0",
        )
        .await;
        app_writes(&env, id, 2).await;
        tenants.push(t);
    }
    let neighbour_rows = snapshot(&Place::of(&tenants[3]), neighbour.id.parse().unwrap()).await;

    // Tier changes in every direction, row for row, each followed by the application's
    // inserts (the sequences moved past the copied keys).
    let mut p = tenants[0].clone();
    for (tier, cluster) in [
        (pb::Tier::Schema, "main"),
        (pb::Tier::Database, "second"),
        (pb::Tier::Pool, "main"),
    ] {
        p = move_to(&mut env, &p, tier, cluster).await;
        assert_secured(&Place::of(&p)).await;
        app_writes(&env, p.id.parse().unwrap(), 2).await;
    }
    let mut s = tenants[1].clone();
    for (tier, cluster) in [
        (pb::Tier::Pool, "main"),
        (pb::Tier::Database, "main"),
        (pb::Tier::Schema, "main"),
    ] {
        s = move_to(&mut env, &s, tier, cluster).await;
        assert_secured(&Place::of(&s)).await;
        app_writes(&env, s.id.parse().unwrap(), 2).await;
    }
    let d = tenants[2].clone();

    // Exports from every tier restore with psql into an empty database, row for row, with
    // the types, sequences, generated column and partitions rebuilt.
    for t in [&p, &s, &d] {
        let (place, id) = placed(t);
        let e = export(&mut env, &t.slug).await;
        let sql = download(&mut env, &e.name).await.unwrap();
        let restored = psql_restore(&sql);
        assert_eq!(
            snapshot(&restored, id).await,
            snapshot(&place, id).await,
            "{}",
            t.slug
        );
        let pool = admin(&restored.cluster, &restored.database).await;
        let partitions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.results'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(partitions, 3);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO labs (tenant_id, name) VALUES ('{id}', 'after psql');
             INSERT INTO specimens (tenant_id, lab_id, kind, code, volume_ml)
                 SELECT '{id}', max(id), 'blood', '1-1', 8 FROM labs;
             INSERT INTO results (tenant_id, specimen_id, reported_on, measured_value)
                 SELECT '{id}', max(id), date '2025-02-02', 3 FROM specimens;"
        )))
        .execute(&pool)
        .await
        .expect("the restored sequences are past the copied keys");
    }

    // Restore in place (the schema tenant, changed since its export) and as a new tenant.
    let (place, id) = placed(&s);
    let e = export(&mut env, &s.slug).await;
    let exported = snapshot(&place, id).await;
    run(
        &place,
        id,
        0,
        "DELETE FROM S.results WHERE tenant_id = $1 AND reported_on < date '2026-01-01';
         UPDATE S.labs SET name = 'changed' WHERE tenant_id = $1",
    )
    .await;
    let back = crate::restore::restored(&mut env, crate::restore::request(&e)).await;
    assert_eq!(snapshot(&Place::of(&back), id).await, exported);
    assert_secured(&Place::of(&back)).await;
    app_writes(&env, id, 2).await;
    let copy = crate::restore::restored(
        &mut env,
        crate::restore::as_new(&e, "lab-copy", pb::Tier::Database, "second"),
    )
    .await;
    let (copy_place, copy_id) = placed(&copy);
    assert_eq!(
        crate::restore::renamed(&snapshot(&copy_place, copy_id).await, copy_id, copy_id),
        crate::restore::renamed(&exported, id, copy_id)
    );
    assert_secured(&copy_place).await;
    app_writes(&env, copy_id, 2).await;

    // The version-1 export is staged at version 1 and migrated forward: its `value` column
    // arrives renamed, and the new table is there, empty.
    let forward = crate::restore::restored(
        &mut env,
        crate::restore::as_new(&old_export, "lab-forward", pb::Tier::Schema, "main"),
    )
    .await;
    assert_eq!(forward.schema_version, 2);
    let (fwd_place, fwd_id) = placed(&forward);
    let mut expected = crate::restore::renamed(&at_v1, db_id, fwd_id);
    // At version 2 each result row has a panel_code (NULL) after its value.
    for (table, rows) in &mut expected {
        if table == "results" {
            for row in rows.iter_mut() {
                row.insert(row.len() - 1, ',');
            }
            rows.sort();
        }
    }
    expected.push(("panels".into(), Vec::new()));
    expected.sort();
    assert_eq!(
        crate::restore::renamed(&snapshot(&fwd_place, fwd_id).await, fwd_id, fwd_id),
        expected
    );
    app_writes(&env, fwd_id, 2).await;

    // Deletion, in every tier, with a certificate that verifies.
    for t in [&p, &s, &d, &copy, &forward] {
        let op = crate::delete::delete(&mut env, crate::delete::request(&t.slug)).await;
        crate::delete::certified(&mut env, &op).await;
        let left = footprint(&t.id, &Place::of(t).cluster).await;
        assert_eq!(
            (left.schemas, left.databases, left.roles),
            (0, 0, 0),
            "{}",
            t.slug
        );
    }

    // The pool neighbour saw none of it: not the moves into and out of its pool, not the
    // restores, not the deletions (a partitioned table's partitions share row ids: a
    // deletion that went by row id alone once took neighbours' results with it).
    let (place, id) = placed(&tenants[3]);
    let now = snapshot(&place, id).await;
    for ((table, rows), (_, before)) in now.iter().zip(&neighbour_rows) {
        let gone: Vec<&String> = before.iter().filter(|r| !rows.contains(r)).collect();
        let new: Vec<&String> = rows.iter().filter(|r| !before.contains(r)).collect();
        assert!(
            gone.is_empty() && new.is_empty(),
            "{table}: gone {gone:?}, new {new:?}"
        );
    }
    assert_eq!(now, neighbour_rows);
}
