//! Change capture (dataplane::changes): a per-move publication and logical slot on the
//! source, a copy taken while the tenant writes, and captured changes applied to the target
//! until both ends are equal; the neighbour's changes never travel; nothing is left behind.

use tenantd::api::pb;
use tenantd::dataplane::changes::{self, Capture};
use tenantd::dataplane::copy::digest;
use tenantd::dataplane::{DataPlane, backend};
use tenantd::tenant::Tier;
use uuid::Uuid;

use crate::harness::{Place, TestEnv, admin, fill};

/// Inserts, updates and deletes of `tenant`'s pool rows, as an application would write
/// them (triggers fire; the audit trigger's rows are changes of their own).
async fn write(pool: &sqlx::PgPool, tenant: Uuid, round: &str) {
    let sql = format!(
        "UPDATE pool.patients SET given_name = given_name || ' {round}', email = NULL
           WHERE tenant_id = $1 AND mrn LIKE 'mrn-1%';
         DELETE FROM pool.observations WHERE tenant_id = $1 AND patient_id IN
           (SELECT id FROM pool.patients WHERE tenant_id = $1 AND mrn LIKE 'mrn-2%');
         UPDATE pool.clinical_notes SET body = body || E' \"{round}\" \\\\ é'
           WHERE tenant_id = $1;
         INSERT INTO pool.patients (tenant_id, mrn, given_name, family_name, birth_date, sex)
           SELECT $1, '{round}-' || g, 'Late', 'Comer''s', date '2000-01-01' + g, 'other'
           FROM generate_series(1, 20) g;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        sql.replace("$1", &format!("'{tenant}'")),
    ))
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn captured_changes_bring_a_copy_taken_while_writing_level_with_the_source() {
    let mut env = TestEnv::start().await;
    let id = |t: pb::Tenant| t.id.parse::<Uuid>().unwrap();
    let a = id(env.provision("capture-src", pb::Tier::Pool, "").await);
    let b = id(env.provision("capture-neighbour", pb::Tier::Pool, "").await);
    fill(&Place::pool("main"), a, 100).await;
    fill(&Place::pool("main"), b, 50).await;
    let shared = admin("main", "tenants").await;

    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let (main, second) = (
        dataplane.cluster("main").unwrap(),
        dataplane.cluster("second").unwrap(),
    );
    // A schema-tier container for the same tenant on the other cluster.
    let (src, dst, tables) = crate::harness::pool_to_schema_containers(main, second, a).await;

    let capture = Capture::for_operation(Uuid::new_v4());
    capture.prepare_target(second, &dst).await.unwrap();
    // Starting again keeps what exists.
    for _ in 0..2 {
        let wait = std::time::Duration::from_secs(30);
        let started = capture.start(main, &src, &tables, wait).await.unwrap();
        assert_eq!(started, changes::Started::Capturing);
    }
    // Written after the slot, before the copy: in the copy and in the capture both.
    write(&shared, a, "before").await;
    for table in &tables {
        crate::harness::copy_stopped((main, &src), (second, &dst), table).await;
    }
    // Written after the copy, also to rows it copied; and the neighbour writes too.
    write(&shared, a, "after").await;
    write(&shared, b, "neighbour").await;
    // Two patients swap record numbers through a third: applied as the net effect per key,
    // the first new number would meet the other row still holding it (the unique
    // (tenant_id, mrn)); the catch-up then applies those writes one by one.
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "UPDATE pool.patients SET mrn = 'swap' WHERE tenant_id = '$1' AND mrn = 'mrn-3';
         UPDATE pool.patients SET mrn = 'mrn-3' WHERE tenant_id = '$1' AND mrn = 'mrn-4';
         UPDATE pool.patients SET mrn = 'mrn-4' WHERE tenant_id = '$1' AND mrn = 'swap';"
            .replace("$1", &a.to_string()),
    ))
    .execute(&shared)
    .await
    .unwrap();

    // Catch up to where the source is now, in rounds of at most 100 changes.
    let upto = capture.position(main, &src).await.unwrap();
    let mut applied = 0;
    let mut rounds = 0;
    loop {
        let round = capture
            .drain(main, &src, second, &dst, Some(upto), 100)
            .await
            .unwrap();
        applied += round.changes;
        rounds += 1;
        if round.caught_up {
            break;
        }
        assert!(rounds < 100, "no end to the rounds: {round:?}");
    }
    assert!(rounds > 1, "the limit split the catch-up into rounds");
    assert!(applied > 100, "{applied} changes applied");
    for table in &tables {
        assert_eq!(
            digest(main, &src, table).await.unwrap(),
            digest(second, &dst, table).await.unwrap(),
            "{table:?} level with the source"
        );
    }
    // The keys the catch-up wrote are kept on the target, and their rows digest alike.
    let patients = tenantd::sql::Ident::from_static("patients");
    let written = capture
        .written_keys(second, &dst, &patients, None, 1000)
        .await
        .unwrap();
    assert!(written.len() >= 40, "{} keys", written.len());
    let key = tenantd::dataplane::changes::key_columns(second, &dst, &patients)
        .await
        .unwrap();
    let json = serde_json::Value::from(written.clone());
    let (s, d) = (
        tenantd::dataplane::copy::digest_keys(main, &src, &patients, &key, &json)
            .await
            .unwrap(),
        tenantd::dataplane::copy::digest_keys(second, &dst, &patients, &key, &json)
            .await
            .unwrap(),
    );
    assert_eq!(s, d);
    assert_eq!(
        s.0 as usize,
        written.len(),
        "every written key is a row on both ends"
    );
    let others = crate::harness::others_patients("second", "tenants", dst.schema.as_str(), a).await;
    assert_eq!(others, 0, "the neighbour's changes did not travel");

    // Draining again applies nothing; stopping leaves nothing; stopping twice is fine.
    let upto = capture.position(main, &src).await.unwrap();
    let again = capture
        .drain(main, &src, second, &dst, Some(upto), 100)
        .await
        .unwrap();
    assert_eq!((again.changes, again.caught_up), (0, true));
    capture.stop((main, &src), (second, &dst)).await.unwrap();
    capture.stop((main, &src), (second, &dst)).await.unwrap();
    let left = changes::leftovers(main).await.unwrap();
    assert!(
        !left.iter().any(|l| l.ends_with(capture.name.as_str())),
        "{left:?}"
    );
    backend(Tier::Schema)
        .destroy(second, &dst, false)
        .await
        .unwrap();
}
