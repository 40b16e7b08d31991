//! What the previous release left behind keeps working under this build: a registry and a
//! data plane made by release 694e55c (the tenant schema compiled in, no recorded versions),
//! restored from `tests/fixtures/upgrade` (made by its `make.sh`). This build migrates the
//! registry, adopts the example's versions 1–4 as the registry's (byte for byte the files
//! the old build compiled in), serves the old tenants to applications through issued logins, and
//! runs every workflow on them.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use tenantd::api::pb;
use tenantd::config::KeysConfig;
use tenantd::tenant_schema::TenantSchema;

use crate::harness::{AppConnector, Place, TestEnv, snapshot};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upgrade")
        .join(name)
}

/// Runs a fixture file with psql against `db` on the main test cluster.
fn psql(db: &str, file: &Path) {
    crate::harness::psql("main", db, &["-f", file.to_str().unwrap()]);
}

#[tokio::test]
async fn a_registry_and_tenants_the_previous_release_made_keep_working() {
    // The previous release's data plane: its roles, the shared database, a tenant database.
    for file in ["roles.sql", "upgrade_fixture.sql", "database_tenant.sql"] {
        psql("postgres", &fixture(file));
    }
    // Its registry, in this test's registry database, and the key that sealed its secrets.
    let (mut config, dir) = TestEnv::config().await;
    let registry_db = config.registry_url.rsplit('/').next().unwrap().to_owned();
    psql(
        registry_db.split('?').next().unwrap(),
        &fixture("registry.sql"),
    );
    config.clusters[0].shared_database = "upgrade_fixture".into();
    let KeysConfig::Local { master_key_file } = &config.keys else {
        panic!("local keys")
    };
    std::fs::copy(fixture("master.key"), master_key_file).unwrap();
    // As the old build left it (a checkout gives the fixture 0644; tenantd refuses a key
    // others may read).
    std::fs::set_permissions(
        master_key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut env = TestEnv::start_with(config, dir).await;

    // The registry was migrated and holds the example's versions, which the old build had
    // compiled in: the same bytes.
    let fleet = env
        .fleet
        .get_fleet_schema(pb::GetFleetSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((fleet.version, fleet.latest_version), (4, 4));
    let recorded: Vec<(i32, String)> =
        sqlx::query_as("SELECT version, sha256 FROM tenant_schema_versions ORDER BY version")
            .fetch_all(&env.registry)
            .await
            .unwrap();
    let example: Vec<(i32, String)> = TenantSchema::example()
        .migrations()
        .iter()
        .map(|m| (m.version, m.sha256()))
        .collect();
    assert_eq!(recorded, example);

    // The old tenants answer, and their applications connect with logins issued now (the old
    // containers' policies are brought to the bound form first) and read their rows.
    let mut tenants = Vec::new();
    for slug in ["upgrade-pool", "upgrade-schema", "upgrade-database"] {
        let t = env.tenant(slug).await;
        assert_eq!(t.state, pb::TenantState::Active as i32, "{slug}");
        assert_eq!(t.schema_version, 4);
        let id: Uuid = t.id.parse().unwrap();
        let (mut conn, _) = AppConnector::new(&env).connect(id).await.unwrap();
        let patients: i64 = sqlx::query_scalar("SELECT count(*) FROM patients")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(patients, 5, "{slug}");
        sqlx::query("UPDATE patients SET email = 'x@example.org' WHERE mrn = 'mrn-1'")
            .execute(&mut conn)
            .await
            .unwrap();
        tenants.push(t);
    }

    // Every workflow runs on them: a move row for row, an export, a deletion with a
    // certificate.
    let moved = crate::change_tier::move_to(&mut env, &tenants[0], pb::Tier::Schema, "main").await;
    let id: Uuid = moved.id.parse().unwrap();
    assert_eq!(snapshot(&Place::of(&moved), id).await.len(), 7);
    let e = crate::export::export(&mut env, "upgrade-database").await;
    assert_eq!(e.state, pb::ExportState::Complete as i32);
    let op = crate::delete::delete(&mut env, crate::delete::request("upgrade-schema")).await;
    crate::delete::certified(&mut env, &op).await;
}
