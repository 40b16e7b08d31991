//! Verified deletion end to end: a tenant of every tier deleted everywhere (rows, schema,
//! database, role, objects, key) with a certificate that verifies offline with the real
//! tenantctl, neighbours untouched; a leftover in a table nobody declared found and removed;
//! a survivor failing the deletion with no certificate; a crash at every step boundary; on
//! AWS KMS and S3 too.

use std::path::Path;

use tenantd::api::pb;
use tenantd::archive::manifest::Manifest;
use tenantd::blobs::ObjectKey;
use tenantd::certificate::{self, Certificate};
use tenantd::keys::{KeyError, KeyState};
use tenantd::workflows::Delete;
use uuid::Uuid;

use crate::crash::{boundaries, crash_through};
use crate::export::{download, export};
use crate::harness::{AppConnector, Place, TestEnv, admin, bad_field, fill, footprint, snapshot};

pub(crate) fn request(tenant: &str) -> pb::DeleteTenantRequest {
    pb::DeleteTenantRequest {
        tenant: tenant.into(),
        reason: "customer exit".into(),
        requested_by: "dpo@example.com".into(),
        ticket: "PRIV-42".into(),
        ..Default::default()
    }
}

async fn start_delete(env: &mut TestEnv, r: pb::DeleteTenantRequest) -> pb::Operation {
    env.deletions.delete_tenant(r).await.unwrap().into_inner()
}

/// Deletes and waits; the operation.
pub(crate) async fn delete(env: &mut TestEnv, r: pb::DeleteTenantRequest) -> pb::Operation {
    let op = start_delete(env, r).await;
    env.wait(&op.name).await
}

/// Expects the deletion to have succeeded; its certificate, verified offline.
pub(crate) async fn certified(
    env: &mut TestEnv,
    op: &pb::Operation,
) -> (pb::DeletionCertificate, Certificate) {
    let Some(pb::operation::Result::Certificate(c)) = op.result.clone() else {
        panic!("deletion did not succeed: {op:?}");
    };
    let (_, spki) = env.signing_key().await;
    let cert = certificate::verify(&c.document, &spki).expect("the certificate verifies");
    assert_eq!(cert.tenant.id, c.tenant_id);
    assert_eq!(cert.request.reason, "customer exit");
    assert_eq!(cert.request.requested_by, "dpo@example.com");
    assert_eq!(cert.request.operation, op.name);
    // The independent verification found nothing of the tenant anywhere.
    let v = &cert.verification;
    assert!(!v.tables.is_empty());
    assert!(v.tables.iter().all(|t| t.rows == 0), "{:?}", v.tables);
    assert!(v.catalog.iter().all(|c| c.found == 0), "{:?}", v.catalog);
    assert_eq!(v.objects.objects_listed, 0);
    assert_eq!(v.objects.incomplete_uploads_listed, 0);
    assert_eq!(v.key.state, "pending_deletion");
    assert!(!cert.scope.is_empty());
    (c, cert)
}

/// Rows of the tenant per table, as `snapshot` sees them.
fn counts(rows: &[(String, Vec<String>)]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = rows
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(t, r)| (t.clone(), r.len() as u64))
        .collect();
    out.sort();
    out
}

/// `tenantctl certificate verify FILE --public-key PEM`, offline: no --addr at all.
async fn tenantctl_verify(file: &Path, key: &Path) -> Result<String, String> {
    let args = ["certificate".as_ref(), "verify".as_ref(), file.as_os_str()];
    let key = ["--public-key".as_ref(), key.as_os_str()];
    crate::harness::tenantctl(&[&args[..], &key[..]].concat(), None).await
}

#[tokio::test]
async fn deletes_every_tier_everywhere_with_a_certificate_that_verifies_offline() {
    let mut env = TestEnv::start().await;
    let keys = env.keys().await;
    let objects = env.objects().await;
    let mut neighbours = Vec::new();
    for (slug, tier, cluster) in [
        ("del-nb-pool", pb::Tier::Pool, "main"),
        ("del-nb-schema", pb::Tier::Schema, "main"),
        ("del-nb-db", pb::Tier::Database, "second"),
    ] {
        let t = env.provision(slug, tier, cluster).await;
        let id: Uuid = t.id.parse().unwrap();
        fill(&Place::of(&t), id, 10).await;
        neighbours.push((Place::of(&t), id));
    }
    let mut before = Vec::new();
    for (place, id) in &neighbours {
        before.push(snapshot(place, *id).await);
    }
    let (key_file, _) = env.signing_key().await;
    for (slug, tier, cluster) in [
        ("del-pool", pb::Tier::Pool, "main"),
        ("del-schema", pb::Tier::Schema, "main"),
        ("del-db", pb::Tier::Database, "second"),
    ] {
        let t = env.provision(slug, tier, cluster).await;
        let id: Uuid = t.id.parse().unwrap();
        let place = Place::of(&t);
        fill(&place, id, 25).await;
        let rows = counts(&snapshot(&place, id).await);
        let old = export(&mut env, slug).await;
        let old_keys =
            tenantd::archive::layout::ExportKeys::new(id, old.name[8..].parse().unwrap());
        let manifest: Manifest =
            serde_json::from_slice(&objects.get(&old_keys.manifest).await.unwrap()).unwrap();

        let op = delete(&mut env, request(slug)).await;
        let (c, cert) = certified(&mut env, &op).await;
        assert_eq!(cert.tenant.slug, slug);
        assert_eq!(
            cert.tenant.tier,
            tier.as_str_name()
                .trim_start_matches("TIER_")
                .to_lowercase()
        );
        // Rows deleted: what the tenant had, table by table, and nothing else.
        let mut deleted: Vec<(String, u64)> = cert
            .evidence
            .rows_deleted
            .iter()
            .map(|t| (t.table.clone(), t.rows))
            .collect();
        deleted.sort();
        assert_eq!(deleted, rows, "{slug}");
        assert_eq!(cert.evidence.exports, vec![old.name.clone()]);
        assert_eq!(
            cert.evidence.objects.deleted, 3,
            "archive, manifest, signature"
        );
        let f = footprint(&t.id, cluster).await;
        assert_eq!(
            (f.schemas, f.databases, f.roles, f.pool_rows),
            (0, 0, 0, 0),
            "{slug}"
        );
        let prefix = ObjectKey::new(format!("tenants/{id}")).unwrap();
        assert!(objects.list(&prefix).await.unwrap().is_empty());
        // The key is pending deletion: the old export can no longer be decrypted.
        let key = keys.tenant_key(id).await.unwrap().unwrap();
        assert_eq!(key.state, KeyState::PendingDeletion);
        assert_eq!(cert.evidence.key.key_id, key.key_id);
        let wrapped = manifest.wrapped_data_key().unwrap();
        assert!(matches!(
            keys.decrypt_data_key(&manifest.encryption.key_id, &wrapped, &manifest.context())
                .await,
            Err(KeyError::Unusable { .. })
        ));
        let gone = env
            .exports
            .get_export(pb::GetExportRequest {
                name: old.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(gone.state, pb::ExportState::Deleted as i32);
        assert!(download(&mut env, &old.name).await.is_err());

        // The tombstone: no tenant data, never routed; the slug is free again.
        let tomb = env.tenant(&t.id).await;
        assert_eq!(tomb.state, pb::TenantState::Deleted as i32);
        // By its slug too (as ListTenants shows it), until the slug is taken again.
        assert_eq!(env.tenant(slug).await.id, t.id);
        assert_eq!((tomb.display_name.as_str(), tomb.plan.as_str()), ("", ""));
        assert!(tomb.labels.is_empty());
        let refused = env
            .tenants
            .update_tenant(pb::UpdateTenantRequest {
                tenant: t.id.clone(),
                display_name: "PHI again".into(),
                update_mask: vec!["display_name".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        let err = AppConnector::new(&env).connect(id).await.unwrap_err();
        assert!(
            err.contains("not active") || err.contains("deleted"),
            "{err}"
        );
        let again = env.provision(slug, pb::Tier::Pool, "main").await;
        assert_ne!(again.id, t.id);
        assert_eq!(env.tenant(slug).await.id, again.id, "the live tenant wins");

        // The certificate, fetched by id and by the old id, is the same document; tenantctl
        // verifies it offline, and one changed byte fails it.
        for name in [c.name.clone(), t.id.clone()] {
            let got = env
                .deletions
                .get_deletion_certificate(pb::GetDeletionCertificateRequest { name })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.document, c.document);
        }
        let file = env.dir.join(format!("{slug}.certificate.json"));
        std::fs::write(&file, &c.document).unwrap();
        let out = tenantctl_verify(&file, &key_file).await.unwrap();
        assert!(out.contains("verified") && out.contains(slug), "{out}");
        let mut bad = c.document.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        std::fs::write(&file, &bad).unwrap();
        let err = tenantctl_verify(&file, &key_file).await.unwrap_err();
        assert!(err.contains("does NOT verify"), "{err}");
    }
    let listed = env
        .deletions
        .list_deletion_certificates(pb::ListDeletionCertificatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.certificates.len(), 3);
    for ((place, id), before) in neighbours.iter().zip(before) {
        assert_eq!(snapshot(place, *id).await, before, "a neighbour changed");
    }
}

#[tokio::test]
async fn a_leftover_in_a_table_without_foreign_keys_is_found_and_removed() {
    let mut env = TestEnv::start().await;
    let t = env
        .provision("del-leftover", pb::Tier::Schema, "main")
        .await;
    let id: Uuid = t.id.parse().unwrap();
    let other = Uuid::new_v4();
    // A hand-made audit table in the shared database: no foreign key, no index, not in any
    // catalog tenantd keeps.
    let table = format!("leftover_{}", Uuid::new_v4().simple());
    let shared = admin("main", "tenants").await;
    for sql in [
        format!("CREATE TABLE public.{table} (tenant_id uuid, note text)"),
        format!("INSERT INTO public.{table} VALUES ($1, 'phi'), ($1, 'phi'), ($2, 'keep')"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(other)
            .execute(&shared)
            .await
            .unwrap();
    }
    let op = delete(&mut env, request("del-leftover")).await;
    let (_, cert) = certified(&mut env, &op).await;
    let found = cert
        .evidence
        .rows_deleted
        .iter()
        .find(|r| r.table == table)
        .expect("the leftover is in the evidence");
    assert_eq!((found.schema.as_str(), found.rows), ("public", 2));
    let left: Vec<(Uuid,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tenant_id FROM public.{table}"
    )))
    .fetch_all(&shared)
    .await
    .unwrap();
    assert_eq!(left, vec![(other,)], "only the other tenant's row is left");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE public.{table}")))
        .execute(&shared)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_survivor_fails_the_deletion_with_the_evidence_and_no_certificate() {
    // The failpoint holds the deletion before `verify` while a row is slipped in.
    let mut env = TestEnv::spawn("delete.before_verify=sleep(4000)*1").await;
    let t = env.provision("del-survivor", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 5).await;
    let op = start_delete(&mut env, request("del-survivor")).await;
    env.until_step_done(&op.name, "delete_key").await;
    let pool = admin("main", "tenants").await;
    sqlx::query(
        "INSERT INTO pool.audit_events (tenant_id, actor, action, entity)
         VALUES ($1, 'late', 'write', 'survivor')",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let failed = env.wait(&op.name).await;
    assert_eq!(
        failed.metadata.as_ref().unwrap().state,
        pb::OperationState::Failed as i32
    );
    let Some(pb::operation::Result::Error(e)) = &failed.result else {
        panic!("expected a failure: {failed:?}");
    };
    assert_eq!(e.step, "verify");
    assert_eq!(e.code, tonic::Code::FailedPrecondition as i32);
    assert!(
        e.message.contains("1 row(s) in tenants.pool.audit_events"),
        "{}",
        e.message
    );
    assert!(e.message.contains("no certificate"), "{}", e.message);
    let missing = env
        .deletions
        .get_deletion_certificate(pb::GetDeletionCertificateRequest { name: t.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let tenant = env.tenant(&t.id).await;
    assert_eq!(tenant.state, pb::TenantState::Deleting as i32);
    // Part of its data is gone: no final export can be taken any more.
    let refused = env
        .deletions
        .delete_tenant(pb::DeleteTenantRequest {
            final_export: true,
            ..request(&t.id)
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    // A deletion requested again and cancelled before its inventory leaves the tenant
    // deleting: part of its data is gone, it must never be routed again.
    env.restart("delete.after_final_export=sleep(3000)*1").await;
    env.ready().await;
    let op = start_delete(&mut env, request(&t.id)).await;
    env.until_step_done(&op.name, "fence").await;
    let done = env.cancel_and_wait(&op.name).await;
    let state = done.metadata.unwrap().state;
    assert_eq!(state, pb::OperationState::Cancelled as i32);
    let tenant = env.tenant(&t.id).await;
    assert_eq!(tenant.state, pb::TenantState::Deleting as i32);
    // Requested again, the deletion finds the survivor, removes it and certifies.
    let op = delete(&mut env, request(&t.id)).await;
    let (_, cert) = certified(&mut env, &op).await;
    let audit = cert
        .evidence
        .rows_deleted
        .iter()
        .find(|r| r.table == "audit_events")
        .unwrap();
    assert_eq!(audit.rows, 1);
    assert_eq!(footprint(&t.id, "main").await.pool_rows, 0);
}

#[tokio::test]
async fn a_deletion_resumes_after_a_crash_at_every_step_boundary() {
    let points = boundaries::<Delete>();
    let mut env = TestEnv::spawn(&format!("{}=sleep(60000)", points[0])).await;
    let t = env.provision("del-crash", pb::Tier::Schema, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 10).await;
    export(&mut env, "del-crash").await;
    let op = start_delete(
        &mut env,
        pb::DeleteTenantRequest {
            final_export: true,
            ..request("del-crash")
        },
    )
    .await;
    crash_through(&mut env, &points).await;
    let op = env.wait(&op.name).await;
    let (_, cert) = certified(&mut env, &op).await;
    let steps = op.metadata.unwrap().steps;
    assert!(steps.iter().all(|s| s.attempts >= 2), "{steps:?}");
    let f = footprint(&t.id, "main").await;
    assert_eq!((f.schemas, f.databases, f.roles), (0, 0, 0));
    assert_eq!(cert.evidence.exports.len(), 1);
    let handover = cert.evidence.final_export.expect("a final export");
    // The final export outlives the tenant and its key: downloaded and decrypted after.
    let sql = download(&mut env, &handover.export).await.unwrap();
    let text = std::fs::read_to_string(sql).unwrap();
    assert!(
        text.contains(&t.id),
        "the handover export holds the tenant's rows"
    );
}

#[tokio::test]
async fn a_cancelled_deletion_before_any_data_goes_changes_nothing() {
    // Held after the final export, so the cancellation lands before `inventory`.
    let mut env = TestEnv::spawn("delete.after_final_export=sleep(3000)*1").await;
    let t = env.provision("del-cancel", pb::Tier::Pool, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 5).await;
    let before = snapshot(&place, id).await;
    let op = start_delete(
        &mut env,
        pb::DeleteTenantRequest {
            final_export: true,
            ..request("del-cancel")
        },
    )
    .await;
    env.until_step_done(&op.name, "fence").await;
    let done = env.cancel_and_wait(&op.name).await;
    assert_eq!(
        done.metadata.unwrap().state,
        pb::OperationState::Cancelled as i32
    );
    assert_eq!(snapshot(&place, id).await, before);
    let tenant = env.tenant(&t.id).await;
    assert_eq!(tenant.state, pb::TenantState::Active as i32);
    // Routed and writable again; the handover export is gone.
    let (mut conn, _) = AppConnector::new(&env).connect(id).await.unwrap();
    sqlx::query(
        "INSERT INTO audit_events (tenant_id, actor, action, entity)
         VALUES (current_setting('app.tenant_id')::uuid, 'app', 'write', 'after-cancel')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let objects = env.objects().await;
    let handover = ObjectKey::new(format!("handover/{id}")).unwrap();
    assert!(objects.list(&handover).await.unwrap().is_empty());
}

#[tokio::test]
async fn deletes_on_aws_kms_and_s3() {
    let mut env = TestEnv::start_aws().await;
    let t = env.provision("del-aws", pb::Tier::Database, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 5).await;
    export(&mut env, "del-aws").await;
    let r = pb::DeleteTenantRequest {
        final_export: true,
        ..request("del-aws")
    };
    let op = delete(&mut env, r).await;
    let (_, cert) = certified(&mut env, &op).await;
    // The handover export's data key is sealed by the KMS service key: still readable.
    let handover = cert.evidence.final_export.clone().expect("a final export");
    assert!(handover.object_uri.starts_with("s3://"), "{handover:?}");
    download(&mut env, &handover.export).await.unwrap();
    let keys = env.keys().await;
    let key = keys.describe_key(&cert.evidence.key.key_id).await.unwrap();
    assert_eq!(key.state, KeyState::PendingDeletion);
    assert!(key.deletion_date.is_some());
    let objects = env.objects().await;
    let prefix = ObjectKey::new(format!("tenants/{id}")).unwrap();
    assert!(objects.list(&prefix).await.unwrap().is_empty());
    assert!(
        objects
            .incomplete_uploads(&prefix)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(footprint(&t.id, "main").await.databases, 0);
}

#[tokio::test]
async fn invalid_deletion_requests_name_the_field_and_change_nothing() {
    let mut env = TestEnv::start().await;
    let t = env.provision("del-bad", pb::Tier::Pool, "main").await;
    let cases = [
        (
            pb::DeleteTenantRequest {
                reason: String::new(),
                ..request("del-bad")
            },
            "reason",
        ),
        (
            pb::DeleteTenantRequest {
                requested_by: " ".into(),
                ..request("del-bad")
            },
            "requested_by",
        ),
        (
            pb::DeleteTenantRequest {
                ticket: "a\u{7}b".into(),
                ..request("del-bad")
            },
            "ticket",
        ),
        (
            pb::DeleteTenantRequest {
                key_pending_days: 6,
                ..request("del-bad")
            },
            "key_pending_days",
        ),
        (
            pb::DeleteTenantRequest {
                key_pending_days: 31,
                ..request("del-bad")
            },
            "key_pending_days",
        ),
        (
            pb::DeleteTenantRequest {
                tenant: "Bad Slug".into(),
                ..request("del-bad")
            },
            "tenant",
        ),
        (
            pb::DeleteTenantRequest {
                request_id: "no spaces".into(),
                ..request("del-bad")
            },
            "request_id",
        ),
    ];
    for (r, field) in cases {
        let status = env.deletions.delete_tenant(r).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert_eq!(bad_field(&status), field);
    }
    let unknown = env
        .deletions
        .delete_tenant(request("del-nobody"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    for name in ["deletion-certificates/nope", "", "Bad Slug"] {
        let status = env
            .deletions
            .get_deletion_certificate(pb::GetDeletionCertificateRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name:?}");
    }
    let tenant = env.tenant(&t.id).await;
    assert_eq!(tenant.state, pb::TenantState::Active as i32);
    // The same request id returns the same operation; deleting a deleted tenant is refused.
    let r = pb::DeleteTenantRequest {
        request_id: "del-1".into(),
        ..request("del-bad")
    };
    let first = start_delete(&mut env, r.clone()).await;
    let again = start_delete(&mut env, r).await;
    assert_eq!(first.name, again.name);
    env.wait(&first.name).await;
    let status = env
        .deletions
        .delete_tenant(request(&t.id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
}

/// An admin role without BYPASSRLS (a misconfiguration) gets an error from the deletion scan
/// and from the copy's digest, never a count of 0 that would certify a deletion of nothing or
/// verify an empty copy.
#[tokio::test]
async fn an_admin_that_does_not_bypass_rls_fails_closed() {
    let mut env = TestEnv::start().await;
    let t = env.provision("fail-closed", pb::Tier::Pool, "").await;
    let id: Uuid = t.id.parse().unwrap();
    fill(&Place::of(&t), id, 5).await;
    let admin_pool = admin("main", "tenants").await;
    sqlx::raw_sql(
        "DO $$ BEGIN
           CREATE ROLE it_no_bypass LOGIN PASSWORD 'it_no_bypass' NOBYPASSRLS;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;
         GRANT CONNECT ON DATABASE tenants TO it_no_bypass;
         GRANT USAGE ON SCHEMA pool TO it_no_bypass;
         GRANT SELECT ON ALL TABLES IN SCHEMA pool TO it_no_bypass;",
    )
    .execute(&admin_pool)
    .await
    .unwrap();
    let url: sqlx::postgres::PgConnectOptions = crate::harness::cluster_url("main", "tenants")
        .parse()
        .unwrap();
    let url = format!(
        "postgres://it_no_bypass:it_no_bypass@{}:{}/tenants",
        url.get_host(),
        url.get_port()
    );
    let plane = tenantd::dataplane::DataPlane::new(
        &[tenantd::config::ClusterConfig {
            name: "main".into(),
            admin_url: url,
            public_host: None,
            public_port: None,
            shared_database: "tenants".into(),
        }],
        std::sync::Arc::new(tenantd::tenant_schema::TenantSchema::example()),
    )
    .unwrap();
    let cluster = plane.cluster("main").unwrap();
    // An error either way: RLS refuses the pool's tables, and a database-tier tenant another
    // test made (if one is there) refuses the role its CONNECT.
    let e = tenantd::dataplane::erasure::scan(cluster, id)
        .await
        .expect_err("the scan must not count 0 behind RLS");
    assert!(
        ["row-level security", "permission denied for database"]
            .iter()
            .any(|m| e.to_string().contains(m)),
        "{e}"
    );
    let (_, c) = plane.plan(id, tenantd::tenant::Tier::Pool, "main").unwrap();
    let e = tenantd::dataplane::copy::digest(
        cluster,
        &c,
        &tenantd::sql::Ident::from_static("patients"),
    )
    .await
    .expect_err("the digest must not verify an empty copy");
    assert!(e.to_string().contains("row-level security"), "{e}");
}

/// A final export that does not read back whole stops the deletion before any data goes:
/// the tenant keeps its rows and is active again.
#[tokio::test]
async fn a_final_export_that_does_not_read_back_stops_the_deletion() {
    let mut env = TestEnv::spawn("delete.damage_final_export=on").await;
    let t = env.provision("del-damaged", pb::Tier::Schema, "main").await;
    let id: Uuid = t.id.parse().unwrap();
    let place = Place::of(&t);
    fill(&place, id, 5).await;
    let before = snapshot(&place, id).await;
    let op = delete(
        &mut env,
        pb::DeleteTenantRequest {
            final_export: true,
            ..request("del-damaged")
        },
    )
    .await;
    let Some(pb::operation::Result::Error(e)) = op.result else {
        panic!("the deletion went on: {op:?}");
    };
    assert!(e.message.contains("does not read back"), "{e:?}");
    assert_eq!(snapshot(&place, id).await, before, "nothing was deleted");
    assert_eq!(
        env.tenant(&t.id).await.state,
        pb::TenantState::Active as i32
    );
}
