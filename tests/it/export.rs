//! Exports end to end: from every tier, downloaded and checked by the real tenantctl,
//! restored with the real psql into an empty database, compared row for row; tampering,
//! wrong keys and a crash in the middle of the upload.

use std::path::{Path, PathBuf};

use tenantd::api::pb;
use tenantd::archive::ArchiveReader;
use tenantd::archive::manifest::Manifest;
use tenantd::blobs::ObjectKey;
use tenantd::workflow::failpoint::EXIT_CODE;
use uuid::Uuid;

use crate::harness::{Place, TestEnv, admin, fill, psql, snapshot};

/// Starts an export of `tenant` (with `request_id`, if not empty); the operation.
pub async fn start_export(env: &mut TestEnv, tenant: &str, request_id: &str) -> pb::Operation {
    env.exports
        .export_tenant(pb::ExportTenantRequest {
            tenant: tenant.into(),
            request_id: request_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Exports `tenant` and waits; returns the export.
pub async fn export(env: &mut TestEnv, tenant: &str) -> pb::Export {
    let op = start_export(env, tenant, "").await;
    let done = env.wait(&op.name).await;
    let Some(pb::operation::Result::Export(e)) = done.result else {
        panic!("export of {tenant} did not succeed: {:?}", done.result);
    };
    // The dump step reported rows per table, and its last report is the manifest's count.
    let steps = done.metadata.unwrap().steps;
    let dump = steps.iter().find(|s| s.name == "dump").unwrap();
    let reported: Vec<(String, u64)> = dump
        .items
        .iter()
        .map(|i| {
            assert_eq!(i.done, i.total, "{i:?}");
            (i.name.clone(), i.done as u64)
        })
        .collect();
    let counted: Vec<(String, u64)> = e.tables.iter().map(|t| (t.table.clone(), t.rows)).collect();
    assert_eq!(reported, counted);
    e
}

/// `tenantctl export get` with the signing key pinned; the SQL file on success.
pub async fn download(env: &mut TestEnv, name: &str) -> Result<PathBuf, String> {
    let id = name.trim_start_matches("exports/");
    let (key, _) = env.signing_key().await;
    let out = env.dir.join(format!("{id}.sql"));
    // Async: an in-process tenantd shares this test's runtime and must keep serving.
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantctl"))
        .env(
            "TENANTD_TOKEN",
            crate::harness::token(tenantd::auth::Role::Admin),
        )
        .args(["--addr", &env.addr, "export", "get", name, "--out"])
        .arg(&out)
        .arg("--public-key")
        .arg(&key)
        .output()
        .await
        .unwrap();
    if run.status.success() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "decrypted tenant data is its owner's only"
        );
        Ok(out)
    } else {
        assert!(!out.exists(), "a failed download must write nothing");
        Err(String::from_utf8_lossy(&run.stderr).into_owned())
    }
}

/// Restores `sql` with psql into a new empty database on `main`; where the rows landed.
pub fn restore(sql: &Path) -> Place {
    let db = format!("restore_{}", Uuid::new_v4().simple());
    psql(
        "main",
        "postgres",
        &["-c", &format!("CREATE DATABASE {db}")],
    );
    psql("main", &db, &["-f", sql.to_str().unwrap()]);
    Place {
        cluster: "main".into(),
        database: db,
        schema: "public".into(),
    }
}

async fn rows_of_others(place: &Place, tenant: Uuid) -> i64 {
    let pool = admin(&place.cluster, &place.database).await;
    let mut n = 0;
    for table in tenantd::dataplane::tables::names_in(&pool, "public")
        .await
        .unwrap()
    {
        let q = format!("SELECT count(*) FROM public.{table} WHERE tenant_id <> $1");
        let (c,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .unwrap();
        n += c;
    }
    n
}

async fn round_trip(env: &mut TestEnv, slug: &str, tier: pb::Tier, cluster: &str) {
    let t = env.provision(slug, tier, cluster).await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 40).await;
    let e = export(env, slug).await;
    assert_eq!(e.state, pb::ExportState::Complete as i32);
    assert_eq!(e.source_tier, tier as i32);
    assert_eq!(e.key_id, t.key_id, "sealed under the tenant's own key");
    let counted: u64 = e.tables.iter().map(|t| t.rows).sum();
    let source = snapshot(&place, id).await;
    let expected: usize = source.iter().map(|(_, rows)| rows.len()).sum();
    assert_eq!(counted, expected as u64, "manifest row counts");

    let sql = download(env, &e.name).await.unwrap();
    let restored = restore(&sql);
    assert_eq!(snapshot(&restored, id).await, source, "{slug}: row for row");
    assert_eq!(
        rows_of_others(&restored, id).await,
        0,
        "{slug}: no other tenant's rows"
    );
}

#[tokio::test]
async fn exports_from_every_tier_restore_row_for_row_with_psql() {
    let mut env = TestEnv::start().await;
    // A pool neighbour with rows of its own: none of them may appear in the pool export.
    let neighbour = env.provision("exp-neighbour", pb::Tier::Pool, "main").await;
    fill(&Place::pool("main"), neighbour.id.parse().unwrap(), 25).await;
    round_trip(&mut env, "exp-pool", pb::Tier::Pool, "main").await;
    round_trip(&mut env, "exp-schema", pb::Tier::Schema, "main").await;
    round_trip(&mut env, "exp-database", pb::Tier::Database, "second").await;

    assert_eq!(list(&mut env, "exp-pool").await.len(), 1);
}

async fn list(env: &mut TestEnv, tenant: &str) -> Vec<pb::Export> {
    env.exports
        .list_exports(pb::ListExportsRequest {
            tenant: tenant.into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .exports
}

#[tokio::test]
async fn exports_on_aws_kms_and_s3() {
    let mut env = TestEnv::start_aws().await;
    round_trip(&mut env, "exp-aws", pb::Tier::Schema, "main").await;
    let e = list(&mut env, "exp-aws").await.remove(0);
    assert!(e.object_uri.starts_with("s3://"), "{}", e.object_uri);
    let objects = env.objects().await;
    let prefix = ObjectKey::new(format!("tenants/{}", e.tenant_id)).unwrap();
    assert!(
        objects
            .incomplete_uploads(&prefix)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The stored objects of an export, by file name.
fn export_keys(e: &pb::Export) -> tenantd::archive::layout::ExportKeys {
    tenantd::archive::layout::ExportKeys::new(
        e.tenant_id.parse().unwrap(),
        e.name.trim_start_matches("exports/").parse().unwrap(),
    )
}

#[tokio::test]
async fn tampering_and_wrong_keys_are_refused() {
    let mut env = TestEnv::start().await;
    let a = env
        .provision("exp-tamper-a", pb::Tier::Schema, "main")
        .await;
    let b = env
        .provision("exp-tamper-b", pb::Tier::Schema, "main")
        .await;
    fill(&Place::of(&a), a.id.parse().unwrap(), 10).await;
    let e = export(&mut env, "exp-tamper-a").await;
    let keys = export_keys(&e);
    let objects = env.objects().await;
    let ks = env.keys().await;
    let manifest_bytes = objects.get(&keys.manifest).await.unwrap();
    let signature = objects.get(&keys.signature).await.unwrap();
    let public = ks.public_key().await.unwrap();
    let manifest = Manifest::verified(&manifest_bytes, &signature, &public.spki_der).unwrap();
    // The manifest records the tenant schema the export was made with, version by version.
    let example = tenantd::tenant_schema::TenantSchema::example();
    let recorded: Vec<(i32, String, String)> = manifest
        .schema
        .iter()
        .map(|v| (v.version, v.file.clone(), v.sha256.clone()))
        .collect();
    let expected: Vec<(i32, String, String)> = example.migrations()
        [..manifest.schema_version as usize]
        .iter()
        .map(|m| (m.version, m.file_name(), m.sha256()))
        .collect();
    assert_eq!(recorded, expected);
    use tenantd::workflows::restore::known_schema;
    known_schema(&manifest, &example).unwrap();
    // A fleet holding another text for one of those versions refuses it, naming the version.
    let mut other = manifest.clone();
    other.schema[1].sha256 = "0".repeat(64);
    let refused = known_schema(&other, &example).unwrap_err();
    assert!(
        refused.contains("tenant-schema version 2 (0002_write_fence.sql"),
        "{refused}"
    );
    let wrapped = manifest.wrapped_data_key().unwrap();

    // The data key opens only with tenant A's key and the export's own context.
    let data_key = ks
        .decrypt_data_key(&a.key_id, &wrapped, &manifest.context())
        .await
        .unwrap();
    assert!(
        ks.decrypt_data_key(&b.key_id, &wrapped, &manifest.context())
            .await
            .is_err()
    );
    let other_context = tenantd::archive::manifest::export_context(&b.id, &manifest.export_id);
    assert!(
        ks.decrypt_data_key(&a.key_id, &wrapped, &other_context)
            .await
            .is_err()
    );
    // The archive opens only under the export's context.
    let archive = objects.get(&keys.archive).await.unwrap();
    let mut wrong = ArchiveReader::new(&data_key, b"another export").unwrap();
    assert!(wrong.write(&archive).and_then(|_| wrong.finish()).is_err());

    // One flipped byte in the stored archive: refused, nothing written.
    let mut flipped = archive.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    objects.put(&keys.archive, &flipped).await.unwrap();
    let err = download(&mut env, &e.name).await.unwrap_err();
    assert!(
        err.contains("failed authentication") || err.contains("sha256"),
        "{err}"
    );
    objects.put(&keys.archive, &archive).await.unwrap();
    download(&mut env, &e.name).await.unwrap();

    // An edited manifest no longer verifies; the service refuses to hand out its key.
    let edited = String::from_utf8(manifest_bytes.clone()).unwrap().replacen(
        "\"rows\": 10",
        "\"rows\": 11",
        1,
    );
    objects
        .put(&keys.manifest, edited.as_bytes())
        .await
        .unwrap();
    let status = env
        .exports
        .read_export(pb::ReadExportRequest {
            name: e.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("signature"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_crash_mid_upload_restarts_cleanly() {
    crash_mid_upload(TestEnv::spawn("").await).await;
}

#[tokio::test]
async fn a_crash_mid_s3_multipart_upload_restarts_cleanly() {
    crash_mid_upload(TestEnv::spawn_aws("").await).await;
}

async fn crash_mid_upload(mut env: TestEnv) {
    let t = env.provision("exp-crash", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::pool("main"), id, 300).await;
    env.restart("export.mid_upload=exit").await;
    env.ready().await;
    let op = start_export(&mut env, "exp-crash", "crash-export-1").await;
    assert_eq!(env.wait_exit(), Some(EXIT_CODE));

    // Dead in the middle: an incomplete upload, and no export counted as complete.
    let objects = env.objects().await;
    let export_id: Uuid = op.name.trim_start_matches("operations/").parse().unwrap();
    let prefix = tenantd::archive::layout::ExportKeys::new(id, export_id).prefix;
    assert_eq!(objects.incomplete_uploads(&prefix).await.unwrap().len(), 1);
    let (state,): (String,) = sqlx::query_as("SELECT state FROM exports WHERE tenant_id = $1")
        .bind(id)
        .fetch_one(&env.registry)
        .await
        .unwrap();
    assert_eq!(state, "running");

    env.restart("").await;
    env.ready().await;
    let done = env.wait(&op.name).await;
    let Some(pb::operation::Result::Export(e)) = done.result else {
        panic!("export did not finish after the restart: {done:?}");
    };
    assert_eq!(e.state, pb::ExportState::Complete as i32);
    assert!(
        objects
            .incomplete_uploads(&prefix)
            .await
            .unwrap()
            .is_empty()
    );
    let listed = objects.list(&prefix).await.unwrap();
    assert_eq!(listed.len(), 3, "archive, manifest, signature: {listed:?}");
    let sql = download(&mut env, &e.name).await.unwrap();
    let restored = restore(&sql);
    assert_eq!(
        snapshot(&restored, id).await,
        snapshot(&Place::pool("main"), id).await
    );
}

#[tokio::test]
async fn tenants_without_a_key_get_one_from_the_backfill() {
    let mut env = TestEnv::spawn("").await;
    let t = env.provision("exp-backfill", pb::Tier::Pool, "main").await;
    assert!(!t.key_id.is_empty(), "provisioning creates the key");
    // As if provisioned before keys existed.
    sqlx::query("UPDATE tenants SET key_id = NULL WHERE id = $1::uuid")
        .bind(&t.id)
        .execute(&env.registry)
        .await
        .unwrap();
    sqlx::query("DELETE FROM local_keys WHERE tenant_id = $1::uuid")
        .bind(&t.id)
        .execute(&env.registry)
        .await
        .unwrap();
    env.restart("").await;
    env.ready().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (key, kind): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT t.key_id, (SELECT kind FROM operations o WHERE o.tenant_id = t.id
                               AND o.kind = 'create_key' AND o.state = 'succeeded')
             FROM tenants t WHERE t.id = $1::uuid",
        )
        .bind(&t.id)
        .fetch_one(&env.registry)
        .await
        .unwrap();
        if let (Some(key), Some(_)) = (key, kind) {
            assert_ne!(key, t.key_id, "a new key, made by the backfill workflow");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backfill did not run");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_cancelled_export_removes_its_objects() {
    let mut env = TestEnv::spawn("export.before_sign=sleep(3000)").await;
    let t = env.provision("exp-cancel", pb::Tier::Schema, "main").await;
    fill(&Place::of(&t), t.id.parse().unwrap(), 20).await;
    let op = start_export(&mut env, "exp-cancel", "").await;
    let objects = env.objects().await;
    let export_id: Uuid = op.name.trim_start_matches("operations/").parse().unwrap();
    let keys = tenantd::archive::layout::ExportKeys::new(t.id.parse().unwrap(), export_id);
    // Cancel once the archive is stored (the sign step is held back).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while objects.get(&keys.archive).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "archive never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let done = env.cancel_and_wait(&op.name).await;
    assert_eq!(
        done.metadata.as_ref().unwrap().state,
        pb::OperationState::Cancelled as i32
    );
    assert!(objects.list(&keys.prefix).await.unwrap().is_empty());
    assert!(
        objects
            .incomplete_uploads(&keys.prefix)
            .await
            .unwrap()
            .is_empty()
    );
    let e = env
        .exports
        .get_export(pb::GetExportRequest {
            name: format!("exports/{export_id}"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.state, pb::ExportState::Failed as i32);
}
