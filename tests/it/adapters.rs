//! The key-service and object-store suites against every implementation: the local ones on
//! a real registry database, the AWS ones against moto_server.

use tenantd::blobs::suite as blobs;
use tenantd::keys::suite as keys;

use crate::harness::TestEnv;

#[tokio::test]
async fn local_key_service_passes_the_suite() {
    let env = TestEnv::start().await;
    let k = env.keys().await;
    keys::seals_service_secrets(k.as_ref()).await;
    keys::manages_tenant_keys(k.as_ref()).await;
    keys::deleted_keys_refuse_to_decrypt(k.as_ref()).await;
    keys::signs_verifiably(k.as_ref()).await;
}

#[tokio::test]
async fn local_keys_are_stored_sealed_and_erased_when_due() {
    let env = TestEnv::start().await;
    let k = env.keys().await;
    let tenant = uuid::Uuid::new_v4();
    let key = k.create_tenant_key(tenant).await.unwrap();
    let (material,): (Option<Vec<u8>>,) =
        sqlx::query_as("SELECT material FROM local_keys WHERE key_id = $1")
            .bind(&key.key_id)
            .fetch_one(&env.registry)
            .await
            .unwrap();
    // Sealed: version byte, nonce, 32 bytes of key, tag.
    assert_eq!(material.unwrap().len(), 1 + 12 + 32 + 16);
    k.schedule_key_deletion(&key.key_id, 7).await.unwrap();
    // Once the waiting period is over the material is erased, not just flagged.
    make_due(&env, &key.key_id).await;
    let info = k.describe_key(&key.key_id).await.unwrap();
    assert_eq!(info.state, tenantd::keys::KeyState::Destroyed);
    let (material,): (Option<Vec<u8>>,) =
        sqlx::query_as("SELECT material FROM local_keys WHERE key_id = $1")
            .bind(&key.key_id)
            .fetch_one(&env.registry)
            .await
            .unwrap();
    assert_eq!(material, None);
}

#[tokio::test]
async fn aws_kms_passes_the_suite() {
    let env = TestEnv::start_aws().await;
    let k = env.keys().await;
    keys::seals_service_secrets(k.as_ref()).await;
    // moto does not refuse a key pending deletion (the local provider's test covers that);
    // the suite still checks that deletion is scheduled and reported.
    keys::manages_tenant_keys(k.as_ref()).await;
    keys::signs_verifiably(k.as_ref()).await;
}

#[tokio::test]
async fn s3_passes_the_object_store_suite() {
    let env = TestEnv::start_aws().await;
    let o = env.objects().await;
    blobs::behaves_like_an_object_store(o.as_ref()).await;
    blobs::streams_uploads(o.as_ref()).await;
}

/// A key whose deletion is due is destroyed by the service on its own (at start, then every
/// sweep), not only when something reads it again: the date a deletion certificate states is
/// the date the material is gone.
#[tokio::test]
async fn the_service_destroys_local_keys_on_their_due_date_unread() {
    let mut env = TestEnv::spawn("").await;
    let k = env.keys().await;
    let key = k.create_tenant_key(uuid::Uuid::new_v4()).await.unwrap();
    k.schedule_key_deletion(&key.key_id, 7).await.unwrap();
    make_due(&env, &key.key_id).await;
    env.restart("").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (state, material): (String, Option<Vec<u8>>) =
            sqlx::query_as("SELECT state, material FROM local_keys WHERE key_id = $1")
                .bind(&key.key_id)
                .fetch_one(&env.registry)
                .await
                .unwrap();
        if state == "destroyed" {
            assert_eq!(material, None);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {state}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Moves a key pending deletion past its waiting period.
async fn make_due(env: &TestEnv, key_id: &str) {
    sqlx::query(
        "UPDATE local_keys SET deletion_after = now() - interval '1 second' WHERE key_id = $1",
    )
    .bind(key_id)
    .execute(&env.registry)
    .await
    .unwrap();
}

/// In a bucket with versioning, deleting an object removes every version and delete marker
/// of it: nothing older stays readable behind the deletion.
#[tokio::test]
async fn s3_deletion_removes_every_version_in_a_versioned_bucket() {
    use tenantd::blobs::ObjectKey;
    let env = TestEnv::start_aws().await;
    let tenantd::config::ObjectsConfig::S3 { bucket, .. } = &env.config.objects else {
        panic!("an S3 environment");
    };
    let sdk = tenantd::aws::sdk_config(&env.config.aws).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let o = env.objects().await;
    let key = ObjectKey::new("tenants/x/exports/y/dump").unwrap();
    let neighbour = ObjectKey::new("tenants/x/exports/y/dump.manifest").unwrap();
    for body in [&b"first"[..], b"second"] {
        o.put(&key, body).await.unwrap();
    }
    o.put(&neighbour, b"kept").await.unwrap();
    let versions = || async {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        page.versions()
            .iter()
            .filter_map(|v| v.key().map(str::to_owned))
            .chain(
                page.delete_markers()
                    .iter()
                    .filter_map(|m| m.key().map(str::to_owned)),
            )
            .collect::<Vec<_>>()
    };
    assert_eq!(versions().await.len(), 3);
    o.delete(&key).await.unwrap();
    let left = versions().await;
    assert!(
        left.iter().all(|k| k.ends_with("dump.manifest")),
        "versions of the deleted object remain: {left:?}"
    );
    assert_eq!(left.len(), 1, "the neighbour is untouched");
    assert_eq!(o.get(&neighbour).await.unwrap(), b"kept");
}
