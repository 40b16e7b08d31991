//! Streaming one tenant's rows between containers, and the digest that verifies a copy.

use tenantd::api::pb;
use tenantd::dataplane::copy::digest;
use tenantd::dataplane::erasure::{self, delete_rows};
use tenantd::dataplane::{DataPlane, backend};
use tenantd::tenant::Tier;
use uuid::Uuid;

use crate::harness::{Place, TestEnv, admin, fill};

#[tokio::test]
async fn copies_one_tenant_between_clusters_and_the_digest_verifies_it() {
    let mut env = TestEnv::start().await;
    let a: Uuid = env
        .provision("copy-src", pb::Tier::Pool, "")
        .await
        .id
        .parse()
        .unwrap();
    let b: Uuid = env
        .provision("copy-other", pb::Tier::Pool, "")
        .await
        .id
        .parse()
        .unwrap();
    fill(&Place::pool("main"), a, 300).await;
    fill(&Place::pool("main"), b, 50).await;

    let dataplane = DataPlane::new(&env.config.clusters, crate::harness::example_schema()).unwrap();
    let (main, second) = (
        dataplane.cluster("main").unwrap(),
        dataplane.cluster("second").unwrap(),
    );
    // A schema-tier container for the same tenant on the other cluster.
    let (src, dst, tables) = crate::harness::pool_to_schema_containers(main, second, a).await;
    assert_eq!(tables.len(), crate::harness::EXAMPLE_TABLES.len());
    for table in &tables {
        let copied = crate::harness::copy_stopped((main, &src), (second, &dst), table).await;
        let (s, d) = (
            digest(main, &src, table).await.unwrap(),
            digest(second, &dst, table).await.unwrap(),
        );
        assert_eq!(copied as i64, s.rows, "{table:?}");
        assert_eq!(s, d, "{table:?} digests equal");
        assert!(s.rows > 0, "{table:?} has rows");
    }
    // Only this tenant's rows travelled.
    let others = crate::harness::others_patients("second", "tenants", dst.schema.as_str(), a).await;
    assert_eq!(others, 0, "only this tenant's rows travelled");
    let target = admin("second", "tenants").await;

    // One changed value anywhere is caught.
    let notes = tenantd::sql::Ident::from_static("clinical_notes");
    let q = format!(
        "UPDATE \"{}\".clinical_notes SET body = body || '.' WHERE id = (SELECT id FROM \"{}\".clinical_notes LIMIT 1)",
        dst.schema.as_str(),
        dst.schema.as_str()
    );
    sqlx::query(sqlx::AssertSqlSafe(q))
        .execute(&target)
        .await
        .unwrap();
    let (s, d) = (
        digest(main, &src, &notes).await.unwrap(),
        digest(second, &dst, &notes).await.unwrap(),
    );
    assert_eq!(s.rows, d.rows);
    assert_ne!(s.checksum, d.checksum);

    // An interrupted copy restarts from an empty table, children first.
    for table in tables.iter().rev() {
        let (db, schema, tenant) = (&dst.database, &dst.schema, dst.tenant_id);
        delete_rows(second, db, schema, table, tenant, erasure::BACKGROUND)
            .await
            .unwrap();
    }
    for table in &tables {
        crate::harness::copy_stopped((main, &src), (second, &dst), table).await;
        assert_eq!(
            digest(main, &src, table).await.unwrap(),
            digest(second, &dst, table).await.unwrap()
        );
    }
    backend(Tier::Schema)
        .destroy(second, &dst, false)
        .await
        .unwrap();
}
