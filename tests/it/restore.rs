//! Restores end to end: an export from any tier restored in place or as a new tenant in any
//! tier, row for row, while neighbours' data stays exactly as it was; damaged archives, dead
//! keys and busy tenants refused with nothing changed; a crash at every step boundary resumed.

use tenantd::api::pb;
use tenantd::workflows::Restore;
use uuid::Uuid;

use crate::crash::{boundaries, crash_through};
use crate::export::{export, start_export};
use crate::harness::{AppConnector, Place, TestEnv, admin, fill, snapshot};

pub(crate) fn request(e: &pb::Export) -> pb::RestoreTenantRequest {
    pb::RestoreTenantRequest {
        export: e.name.clone(),
        mode: pb::RestoreMode::InPlace as i32,
        ..Default::default()
    }
}

pub(crate) fn as_new(
    e: &pb::Export,
    slug: &str,
    tier: pb::Tier,
    cluster: &str,
) -> pb::RestoreTenantRequest {
    pb::RestoreTenantRequest {
        export: e.name.clone(),
        mode: pb::RestoreMode::AsNewTenant as i32,
        new_slug: slug.into(),
        tier: tier as i32,
        cluster: cluster.into(),
        ..Default::default()
    }
}

/// Starts a restore and waits for it to end.
async fn restore(env: &mut TestEnv, r: pb::RestoreTenantRequest) -> pb::Operation {
    let op = env.exports.restore_tenant(r).await.unwrap().into_inner();
    env.wait(&op.name).await
}

/// Restores and expects success; the restored tenant.
pub(crate) async fn restored(env: &mut TestEnv, r: pb::RestoreTenantRequest) -> pb::Tenant {
    let op = restore(env, r).await;
    let Some(pb::operation::Result::Tenant(t)) = op.result.clone() else {
        panic!("restore failed: {op:?}");
    };
    assert_eq!(t.state, pb::TenantState::Active as i32);
    let Some(pb::operation_metadata::Details::Restore(details)) = op.metadata.unwrap().details
    else {
        panic!("no restore details");
    };
    assert!(details.rows > 0);
    assert_eq!(details.schema_version, t.schema_version);
    t
}

/// A snapshot with `from`'s id written as `to`'s (a restore as a new tenant moves the rows).
pub(crate) fn renamed(
    rows: &[(String, Vec<String>)],
    from: Uuid,
    to: Uuid,
) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = rows
        .iter()
        .map(|(t, r)| {
            let mut r: Vec<String> = r
                .iter()
                .map(|row| row.replace(&from.to_string(), &to.to_string()))
                .collect();
            r.sort();
            (t.clone(), r)
        })
        .collect();
    out.sort();
    out
}

fn sorted(mut rows: Vec<(String, Vec<String>)>) -> Vec<(String, Vec<String>)> {
    rows.sort();
    rows
}

/// Changes the tenant's data after its export, so a restore has something to undo.
async fn diverge(place: &Place, tenant: Uuid) {
    let statements = [
        "DELETE FROM S.appointments WHERE tenant_id = $1",
        "UPDATE S.patients SET given_name = 'changed' WHERE tenant_id = $1",
        "INSERT INTO S.audit_events (tenant_id, actor, action, entity) VALUES ($1, 'x', 'y', 'z')",
    ];
    crate::harness::for_tenant(place, tenant, &statements).await;
}

/// The application's view: it connects through ResolveTenant with its own credentials,
/// reads the restored rows and can write again (the fence is lifted, the grants are there).
async fn app_reads_and_writes(env: &TestEnv, tenant: Uuid, patients: i64) {
    let mut app = AppConnector::new(env);
    let (mut conn, _) = app.connect(tenant).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM patients")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, patients, "the application sees the restored rows");
    sqlx::query(
        "INSERT INTO audit_events (tenant_id, actor, action, entity)
         VALUES (current_setting('app.tenant_id')::uuid, 'app', 'write', 'after-restore')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
}

async fn neighbours(env: &mut TestEnv) -> Vec<(Place, Uuid)> {
    let mut out = Vec::new();
    for (slug, tier, cluster) in [
        ("rst-nb-pool", pb::Tier::Pool, "main"),
        ("rst-nb-schema", pb::Tier::Schema, "main"),
        ("rst-nb-db", pb::Tier::Database, "second"),
    ] {
        let t = env.provision(slug, tier, cluster).await;
        let id: Uuid = t.id.parse().unwrap();
        fill(&Place::of(&t), id, 15).await;
        out.push((Place::of(&t), id));
    }
    out
}

async fn snapshots(of: &[(Place, Uuid)]) -> Vec<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    for (place, id) in of {
        out.push(snapshot(place, *id).await);
    }
    out
}

#[tokio::test]
async fn restores_round_trip_across_tiers_and_leave_neighbours_alone() {
    let mut env = TestEnv::start().await;
    let others = neighbours(&mut env).await;
    let before = snapshots(&others).await;
    let mut restored_tenants = Vec::new();

    for (slug, tier, cluster, new_tier, new_cluster) in [
        (
            "rst-pool",
            pb::Tier::Pool,
            "main",
            pb::Tier::Database,
            "second",
        ),
        (
            "rst-schema",
            pb::Tier::Schema,
            "main",
            pb::Tier::Pool,
            "main",
        ),
        (
            "rst-db",
            pb::Tier::Database,
            "second",
            pb::Tier::Schema,
            "main",
        ),
    ] {
        let t = env.provision(slug, tier, cluster).await;
        let id: Uuid = t.id.parse().unwrap();
        let place = Place::of(&t);
        fill(&place, id, 20).await;
        let exported = snapshot(&place, id).await;
        let e = export(&mut env, slug).await;

        // In place: the tenant's changes since the export are undone, row for row.
        diverge(&place, id).await;
        assert_ne!(snapshot(&place, id).await, exported);
        let mut r = request(&e);
        r.request_id = format!("{slug}-in-place");
        let back = restored(&mut env, r.clone()).await;
        restored_tenants.push((id, place.cluster.clone(), place.database.clone()));
        assert_eq!(back.id, t.id);
        assert_eq!(
            back.routing_epoch, t.routing_epoch,
            "routing did not change"
        );
        assert_eq!(snapshot(&place, id).await, exported, "{slug}: row for row");
        app_reads_and_writes(&env, id, 20).await;
        // The same request id answers with the same operation.
        let again = env.exports.restore_tenant(r).await.unwrap().into_inner();
        assert_eq!(again.metadata.unwrap().tenant_id, t.id);

        // As a new tenant in another tier: the same rows under the new tenant's id.
        let new_slug = format!("{slug}-copy");
        let copy = restored(&mut env, as_new(&e, &new_slug, new_tier, new_cluster)).await;
        let copy_id: Uuid = copy.id.parse().unwrap();
        let copy_place = Place::of(&copy);
        restored_tenants.push((copy_id, copy_place.cluster, copy_place.database));
        assert_ne!(copy.id, t.id);
        assert_eq!(copy.tier, new_tier as i32);
        assert_ne!(copy.key_id, t.key_id, "a new tenant gets its own key");
        assert_eq!(
            sorted(snapshot(&Place::of(&copy), copy_id).await),
            renamed(&exported, id, copy_id),
            "{new_slug}: row for row"
        );
        app_reads_and_writes(&env, copy_id, 20).await;
        // The source tenant is untouched by its copy.
        let mut with_write = snapshot(&place, id).await;
        with_write.retain(|(table, _)| table != "audit_events");
        let mut expected = exported.clone();
        expected.retain(|(table, _)| table != "audit_events");
        assert_eq!(with_write, expected);
    }

    assert_eq!(snapshots(&others).await, before, "neighbours unchanged");
    // No staging or replaced copy of these tenants is left anywhere.
    for (id, cluster, db) in restored_tenants {
        let pool = admin(&cluster, &db).await;
        let (left,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)")
                .bind([
                    format!("restore_{}", id.simple()),
                    format!("replaced_{}", id.simple()),
                ])
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(left, 0, "leftover schema of {id} in {cluster}/{db}");
    }
}

/// The restored container is what migrations make (keys, indexes, foreign keys), and the
/// write-fence trigger of a renamed container checks its own fence table: after an in-place
/// restore of a schema tenant, fencing it blocks the application's writes again.
#[tokio::test]
async fn the_restored_copy_is_complete_and_fenced_by_its_own_fence_table() {
    let mut env = TestEnv::start().await;
    let t = env.provision("rst-fence", pb::Tier::Schema, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 5).await;
    let e = export(&mut env, "rst-fence").await;
    restored(&mut env, request(&e)).await;
    let pool = admin("main", &place.database).await;
    let (config,): (Vec<String>,) = sqlx::query_as(
        "SELECT p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = $1 AND p.proname = 'tenant_write_fence'",
    )
    .bind(&place.schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(config, [format!("search_path={}, pg_temp", place.schema)]);
    let fence = format!(
        "INSERT INTO \"{}\".tenant_write_fences (tenant_id, operation_id) VALUES ($1, $1)",
        place.schema
    );
    sqlx::query(sqlx::AssertSqlSafe(fence))
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    // Keys, indexes and foreign keys were set aside for the load and built again: the
    // restored schema has exactly what a freshly provisioned one has.
    let fresh = env
        .provision("rst-fence-fresh", pb::Tier::Schema, "main")
        .await;
    let fresh = Place::of(&fresh).schema;
    let definitions = |schema: String| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT replace(pg_get_indexdef(i.indexrelid), $1, 'S') FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1
                 UNION ALL
                 SELECT k.conname || ' ' || replace(pg_get_constraintdef(k.oid), $1, 'S')
                 FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
                 WHERE n.nspname = $1
                 ORDER BY 1",
            )
            .bind(schema)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows.into_iter().map(|r| r.0).collect::<Vec<_>>()
        }
    };
    let restored_definitions = definitions(place.schema.clone()).await;
    assert!(restored_definitions.len() > 20, "{restored_definitions:?}");
    assert_eq!(restored_definitions, definitions(fresh).await);

    let mut app = AppConnector::new(&env);
    let (mut conn, _) = app.connect(id).await.unwrap();
    let err = sqlx::query("DELETE FROM audit_events")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(crate::harness::sqlstate(&err), "TF001");
}

#[tokio::test]
async fn damaged_archives_dead_keys_and_busy_tenants_are_refused_with_nothing_changed() {
    let mut env = TestEnv::spawn("export.before_dump=sleep(4000)*1").await;
    let t = env.provision("rst-refuse", pb::Tier::Schema, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 10).await;
    let e = export(&mut env, "rst-refuse").await;
    let keys = tenantd::archive::layout::ExportKeys::new(
        id,
        e.name.trim_start_matches("exports/").parse().unwrap(),
    );
    diverge(&place, id).await;
    let current = snapshot(&place, id).await;
    let objects = env.objects().await;
    let archive = objects.get(&keys.archive).await.unwrap();

    // One flipped byte, then the archive cut short: the operation fails in `verify` with
    // DATA_LOSS, and the tenant's data is as it was.
    let mut flipped = archive.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    let truncated = archive[..archive.len() - 100].to_vec();
    for damaged in [flipped, truncated] {
        objects.put(&keys.archive, &damaged).await.unwrap();
        let op = restore(&mut env, request(&e)).await;
        let Some(pb::operation::Result::Error(err)) = op.result else {
            panic!("a damaged archive was restored: {op:?}");
        };
        assert_eq!(err.code, tonic::Code::DataLoss as i32, "{err:?}");
        assert_eq!(err.step, "verify");
        assert!(
            err.message.contains("nothing was changed"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&place, id).await, current);
    }
    objects.put(&keys.archive, &archive).await.unwrap();

    // An edited manifest: refused at once.
    let manifest = objects.get(&keys.manifest).await.unwrap();
    let edited =
        String::from_utf8(manifest.clone())
            .unwrap()
            .replacen("\"rows\": 10", "\"rows\": 9", 1);
    objects
        .put(&keys.manifest, edited.as_bytes())
        .await
        .unwrap();
    let status = env.exports.restore_tenant(request(&e)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("signature"),
        "{}",
        status.message()
    );
    objects.put(&keys.manifest, &manifest).await.unwrap();

    // Another operation holds the tenant: FAILED_PRECONDITION naming it.
    let busy = start_export(&mut env, "rst-refuse", "").await;
    let status = env.exports.restore_tenant(request(&e)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(&busy.name[11..]),
        "{}",
        status.message()
    );
    env.wait(&busy.name).await;
    assert_eq!(snapshot(&place, id).await, current);

    // The tenant key scheduled for deletion: a clear error, before anything starts.
    env.keys()
        .await
        .schedule_key_deletion(&t.key_id, 7)
        .await
        .unwrap();
    for r in [
        request(&e),
        as_new(&e, "rst-refuse-copy", pb::Tier::Pool, ""),
    ] {
        let status = env.exports.restore_tenant(r).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("pending deletion"),
            "{}",
            status.message()
        );
    }
    assert_eq!(snapshot(&place, id).await, current);
    let (tenants,): (i64,) = sqlx::query_as("SELECT count(*) FROM tenants")
        .fetch_one(&env.registry)
        .await
        .unwrap();
    assert_eq!(tenants, 1, "no tenant was created");
}

async fn crash_at_every_boundary(mode: pb::RestoreMode, tier: pb::Tier) {
    let slug = format!(
        "rst-crash-{}",
        tier.as_str_name().to_lowercase().replace('_', "-")
    );
    let points = boundaries::<Restore>();
    let mut env = TestEnv::spawn("").await;
    let t = env.provision(&slug, tier, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 30).await;
    let exported = snapshot(&place, id).await;
    let e = export(&mut env, &slug).await;
    diverge(&place, id).await;

    env.restart(&format!("{}=sleep(60000)", points[0])).await;
    env.ready().await;
    let mut r = request(&e);
    if mode == pb::RestoreMode::AsNewTenant {
        r = as_new(&e, &format!("{slug}-copy"), tier, "main");
    }
    let op = env.exports.restore_tenant(r).await.unwrap().into_inner();
    let restored_id: Uuid = op.metadata.as_ref().unwrap().tenant_id.parse().unwrap();
    crash_through(&mut env, &points).await;
    let op = env.wait(&op.name).await;
    let Some(pb::operation::Result::Tenant(back)) = op.result else {
        panic!("the restore did not succeed after crashes: {op:?}");
    };
    let steps = op.metadata.unwrap().steps;
    assert!(steps.iter().all(|s| s.attempts >= 2), "{steps:?}");
    assert_eq!(
        sorted(snapshot(&Place::of(&back), restored_id).await),
        renamed(&exported, id, restored_id)
    );
}

#[tokio::test]
async fn an_in_place_schema_restore_survives_a_crash_at_every_step_boundary() {
    crash_at_every_boundary(pb::RestoreMode::InPlace, pb::Tier::Schema).await;
}

#[tokio::test]
async fn a_pool_restore_as_a_new_tenant_survives_a_crash_at_every_step_boundary() {
    crash_at_every_boundary(pb::RestoreMode::AsNewTenant, pb::Tier::Pool).await;
}

#[tokio::test]
async fn restores_from_aws_kms_and_s3() {
    let mut env = TestEnv::start_aws().await;
    let t = env.provision("rst-aws", pb::Tier::Database, "second").await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 10).await;
    let exported = snapshot(&place, id).await;
    let e = export(&mut env, "rst-aws").await;
    diverge(&place, id).await;
    restored(&mut env, request(&e)).await;
    assert_eq!(snapshot(&place, id).await, exported);
}

/// An export at an older tenant-schema version is migrated forward after the load, to the
/// fleet's version (not the newest this build knows); one newer than this tenantd knows is
/// refused (even when properly signed).
#[tokio::test]
async fn older_exports_are_migrated_forward_and_newer_ones_refused() {
    let mut env = TestEnv::start().await;
    // A fleet at version 2 (as a registry the release before migration 3 left it).
    env.tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap();
    let registry = env.registry.clone();
    let pin = |v: i32| {
        sqlx::query("UPDATE tenant_schema SET version = $1")
            .bind(v)
            .execute(&registry)
    };
    pin(2).await.unwrap();
    let t = env.provision("rst-old", pb::Tier::Schema, "main").await;
    assert_eq!(t.schema_version, 2);
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 10).await;
    let pool = admin("main", &place.database).await;
    let exported = snapshot(&place, id).await;
    let e = export(&mut env, "rst-old").await;
    assert_eq!(e.schema_version, 2);
    // The fleet moved on to 3 (migration 3 only adds three indexes).
    pin(3).await.unwrap();

    let op = restore(&mut env, request(&e)).await;
    let Some(pb::operation_metadata::Details::Restore(details)) =
        op.metadata.clone().unwrap().details
    else {
        panic!("no restore details: {op:?}");
    };
    let Some(pb::operation::Result::Tenant(back)) = op.result else {
        panic!("restore failed: {op:?}");
    };
    assert_eq!(
        (
            details.export_schema_version,
            details.schema_version,
            back.schema_version
        ),
        (2, 3, 3)
    );
    assert_eq!(snapshot(&place, id).await, exported);
    let (indexes,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = $1
           AND indexname IN ('observations_encounter', 'clinical_notes_encounter', 'appointments_type')",
    )
    .bind(&place.schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(indexes, 3, "migration 3 ran on the restored copy");
    // As a new pool tenant, the older export goes through a staging copy migrated to the
    // pool's version (only an export at the pool's version loads straight into it).
    let copy = restored(&mut env, as_new(&e, "rst-old-pool", pb::Tier::Pool, "main")).await;
    let copy_id: Uuid = copy.id.parse().unwrap();
    assert!(copy.schema_version > e.schema_version, "{copy:?}");
    // Row for row; the pool (shared with other tests) may be at a version whose migrations
    // added columns, which the migrated rows hold after the exported ones.
    let got = sorted(snapshot(&Place::of(&copy), copy_id).await);
    let want = renamed(&exported, id, copy_id);
    assert_eq!(got.len(), want.len());
    for ((table, got), (_, want)) in got.iter().zip(&want) {
        assert_eq!(got.len(), want.len(), "{table}");
        for row in want {
            let fields = row.strip_suffix(')').expect("a row literal");
            assert!(
                got.iter()
                    .any(|g| g == row || g.starts_with(&format!("{fields},"))),
                "{table}: {row} not restored"
            );
        }
    }

    // A manifest claiming a future version, signed by the service key: refused at once.
    let keys = tenantd::archive::layout::ExportKeys::new(
        id,
        e.name.trim_start_matches("exports/").parse().unwrap(),
    );
    let objects = env.objects().await;
    let manifest = String::from_utf8(objects.get(&keys.manifest).await.unwrap()).unwrap();
    let future = manifest.replacen("\"schema_version\": 2", "\"schema_version\": 99", 1);
    assert_ne!(future, manifest);
    let signature = env.keys().await.sign(future.as_bytes()).await.unwrap();
    objects
        .put(&keys.manifest, future.as_bytes())
        .await
        .unwrap();
    objects.put(&keys.signature, &signature.der).await.unwrap();
    let status = env.exports.restore_tenant(request(&e)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("newer"), "{}", status.message());
}

/// Rewrites export `e`'s SQL with `edit`, then seals, signs and records it again exactly as
/// tenantd would (same data key, the service signing key): an export that verifies end to
/// end but holds other data than was exported.
async fn reseal(env: &TestEnv, e: &pb::Export, edit: impl Fn(&str) -> String) {
    use tenantd::archive::manifest::Manifest;
    use tenantd::archive::{ArchiveReader, ArchiveWriter};
    let id: Uuid = e.name.trim_start_matches("exports/").parse().unwrap();
    let keys = tenantd::archive::layout::ExportKeys::new(e.tenant_id.parse().unwrap(), id);
    let objects = env.objects().await;
    let ks = env.keys().await;
    let mut m: Manifest =
        serde_json::from_slice(&objects.get(&keys.manifest).await.unwrap()).unwrap();
    let data_key = ks
        .decrypt_data_key(
            &m.encryption.key_id,
            &m.wrapped_data_key().unwrap(),
            &m.context(),
        )
        .await
        .unwrap();
    let mut reader = ArchiveReader::for_manifest(&m, &data_key).unwrap();
    let mut plain = reader
        .write(&objects.get(&keys.archive).await.unwrap())
        .unwrap();
    plain.extend(reader.finish_checked(&m).unwrap());
    let edited = edit(std::str::from_utf8(&plain).unwrap());
    let mut writer = ArchiveWriter::new(&data_key, &m.context_bytes()).unwrap();
    writer.write(edited.as_bytes()).unwrap();
    let mut sealed = writer.take_output();
    let (tail, plaintext, ciphertext) = writer.finish().unwrap();
    sealed.extend(tail);
    m.plaintext = plaintext;
    m.ciphertext = ciphertext;
    let bytes = m.to_bytes();
    let signature = ks.sign(&bytes).await.unwrap();
    objects.put(&keys.archive, &sealed).await.unwrap();
    objects.put(&keys.manifest, &bytes).await.unwrap();
    objects.put(&keys.signature, &signature.der).await.unwrap();
    sqlx::query("UPDATE exports SET sha256 = $2, plaintext_sha256 = $3 WHERE id = $1")
        .bind(id)
        .bind(&m.ciphertext.sha256)
        .bind(&m.plaintext.sha256)
        .execute(&env.registry)
        .await
        .unwrap();
}

/// A validly signed export whose rows are wrong is still refused: a row of another tenant
/// in `verify`; a duplicate key when the keys are built again in `index` (or, loaded
/// straight into the pool as a new tenant, by the pool's own key in `load`); a row naming a
/// parent that is not there in `index`. DATA_LOSS, the tenant's data is as it was, and a new
/// tenant leaves no row behind.
#[tokio::test]
async fn signed_exports_with_bad_rows_are_refused_with_nothing_changed() {
    let mut env = TestEnv::start().await;
    let t = env.provision("rst-badrows", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 5).await;
    let e = export(&mut env, "rst-badrows").await;
    diverge(&place, id).await;
    let current = snapshot(&place, id).await;
    let stranger = Uuid::new_v4().to_string();
    let patients = |sql: &str| -> (usize, Vec<String>) {
        let start = sql.find("COPY public.\"patients\"").unwrap();
        let first = start + sql[start..].find('\n').unwrap() + 1;
        let rows = sql[first..].lines().take(2).map(str::to_owned).collect();
        (first, rows)
    };
    let foreign = |sql: &str| {
        let (at, rows) = patients(sql);
        let row = rows[0].replacen(&id.to_string(), &stranger, 1);
        format!("{}{}{}", &sql[..at], row, &sql[at + rows[0].len()..])
    };
    let duplicate = |sql: &str| {
        let (at, rows) = patients(sql);
        let second = at + rows[0].len() + 1;
        format!(
            "{}{}{}",
            &sql[..second],
            rows[0],
            &sql[second + rows[1].len()..]
        )
    };
    let keys = tenantd::archive::layout::ExportKeys::new(
        id,
        e.name.trim_start_matches("exports/").parse().unwrap(),
    );
    let objects = env.objects().await;
    let mut originals = Vec::new();
    for key in [&keys.archive, &keys.manifest, &keys.signature] {
        originals.push((key.clone(), objects.get(key).await.unwrap()));
    }
    // The first patient gets another id: its encounters, notes and appointments name none.
    let orphans = |sql: &str| {
        let (at, rows) = patients(sql);
        let moved = rows[0]
            .split('\t')
            .find(|f| f.parse::<Uuid>().is_ok_and(|u| u != id))
            .expect("the patient's id")
            .to_owned();
        let row = rows[0].replacen(&moved, &Uuid::new_v4().to_string(), 1);
        format!("{}{}{}", &sql[..at], row, &sql[at + rows[0].len()..])
    };
    let mut attempt = 0;
    for (edit, in_place_step, as_new_step) in [
        (&foreign as &dyn Fn(&str) -> String, "verify", "verify"),
        (&duplicate, "index", "load"),
        (&orphans, "index", "index"),
    ] {
        for (key, bytes) in &originals {
            objects.put(key, bytes).await.unwrap();
        }
        reseal(&env, &e, edit).await;
        attempt += 1;
        let new_slug = format!("rst-badrows-{attempt}");
        for (r, step) in [
            (request(&e), in_place_step),
            (as_new(&e, &new_slug, pb::Tier::Pool, "main"), as_new_step),
        ] {
            let op = restore(&mut env, r).await;
            let Some(pb::operation::Result::Error(err)) = &op.result else {
                panic!("bad rows were restored: {op:?}");
            };
            assert_eq!(err.code, tonic::Code::DataLoss as i32, "{err:?}");
            assert_eq!(err.step, step, "{err:?}");
            assert!(
                err.message.contains("nothing was changed"),
                "{}",
                err.message
            );
            assert_eq!(snapshot(&place, id).await, current);
            let tenant: Uuid = op.metadata.as_ref().unwrap().tenant_id.parse().unwrap();
            if tenant != id {
                assert_eq!(
                    env.tenant(&tenant.to_string()).await.state,
                    pb::TenantState::Failed as i32
                );
                assert!(
                    snapshot(&place, tenant)
                        .await
                        .iter()
                        .all(|(_, rows)| rows.is_empty()),
                    "the failed new tenant left rows in the pool"
                );
            }
        }
    }
}

/// A restore cancelled before its swap is rolled back: the staging copy is dropped, the
/// tenant's fence lifted, its data as it was; the operation ends CANCELLED.
#[tokio::test]
async fn a_cancelled_restore_changes_nothing() {
    // Parked after `grant`, before its done mark: the next step boundary honours the cancel
    // (from `swap` on a restore rolls forward).
    let mut env = TestEnv::spawn("restore.after_grant=sleep(3000)").await;
    let t = env
        .provision("rst-cancel", pb::Tier::Database, "second")
        .await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 10).await;
    let e = export(&mut env, "rst-cancel").await;
    diverge(&place, id).await;
    let current = snapshot(&place, id).await;
    let op = env
        .exports
        .restore_tenant(request(&e))
        .await
        .unwrap()
        .into_inner();
    // Once the staging copy is loaded, checked and migrated, cancel.
    env.until_step_done(&op.name, "migrate").await;
    let done = env.cancel_and_wait(&op.name).await;
    let Some(pb::operation::Result::Error(err)) = done.result else {
        panic!("the cancelled restore succeeded: {done:?}");
    };
    assert_eq!(err.code, tonic::Code::Cancelled as i32, "{err:?}");
    assert_eq!(snapshot(&place, id).await, current);
    let pool = admin(&place.cluster, &place.database).await;
    let (staging, fenced): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1),
                (SELECT count(*) FROM app.tenant_write_fences)",
    )
    .bind(format!("restore_{}", id.simple()))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((staging, fenced), (0, 0), "staging dropped, fence lifted");
    app_reads_and_writes(&env, id, 10).await;
}

/// A restore stored by the previous release, with its twelve steps (stopped after `stage`),
/// resumes under this build once migration 0012 renumbered it behind the four
/// point-in-time steps, which it skips.
#[tokio::test]
async fn a_restore_stored_with_the_previous_steps_resumes_after_the_upgrade() {
    let mut env = TestEnv::spawn("").await;
    let t = env
        .provision("rst-upgraded", pb::Tier::Schema, "main")
        .await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 10).await;
    let exported = sorted(snapshot(&place, id).await);
    let e = export(&mut env, "rst-upgraded").await;
    diverge(&place, id).await;
    env.restart("restore.after_stage=exit").await;
    env.ready().await;
    let op = env
        .exports
        .restore_tenant(request(&e))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        env.wait_exit(),
        Some(tenantd::workflow::failpoint::EXIT_CODE)
    );
    let op_id = crate::harness::operation_id(&op);
    // Back to what the previous release stored: twelve steps from verify, no point in time.
    let previous = [
        "UPDATE operations SET data = data #- '{state,point_in_time}', next_step = next_step - 4
         WHERE id = $1",
        "DELETE FROM operation_steps WHERE operation_id = $1
           AND name IN ('preflight', 'fetch_backup', 'replay', 'extract')",
        "UPDATE operation_steps SET idx = idx - 4 WHERE operation_id = $1",
        "DELETE FROM _sqlx_migrations WHERE version = 12",
    ];
    crate::harness::for_id(&env.registry, op_id, &previous).await;

    env.restart("").await;
    let op = env.wait(&op.name).await;
    let Some(pb::operation::Result::Tenant(back)) = op.result.clone() else {
        panic!("the stored restore did not finish: {op:?}");
    };
    let names: Vec<&str> = op
        .metadata
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        names,
        <tenantd::workflows::restore::Step as tenantd::workflow::Steps>::names(),
        "renumbered to this build's steps"
    );
    assert_eq!(sorted(snapshot(&Place::of(&back), id).await), exported);
}
