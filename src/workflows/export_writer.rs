//! Writing one export into the object store: the tenant's snapshot dumped, compressed and
//! sealed under a fresh data key, uploaded, then its signed manifest, then its registry record.
//! The export workflow runs these as its steps; a deletion's final export ([`handover`]) runs
//! them in one step. Not a workflow. Every piece is idempotent: a retry aborts the uploads an
//! earlier attempt left and starts over, objects are named after the export id.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::archive::layout::ExportKeys;
use crate::archive::manifest::{self, Encryption, Manifest, SchemaVersion, TableRows, WrappedBy};
use crate::archive::{ArchiveWriter, Digest256, aead_stream};
use crate::blobs::Upload;
use crate::context::Context;
use crate::dataplane::{Cluster, Container, dump};
use crate::keys::{DataKey, context_bytes};
use crate::operation::ProgressItem;
use crate::registry::Registry;
use crate::registry::exports::{CompletedExport, NewExport};
use crate::tenant::{TenantRef, Tier};
use crate::workflow::{StepContext, StepError, failpoint};

/// What the `dump` produced: stored in the export's state until the export is recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dumped {
    pub tier: String,
    pub schema_version: i32,
    pub snapshot_at: DateTime<Utc>,
    pub tables: Vec<TableRows>,
    pub plaintext: Digest256,
    pub ciphertext: Digest256,
    /// The data key wrapped by the tenant key (base64); its plaintext is never stored.
    pub wrapped_data_key: String,
    /// The key that wrapped it (older states: the tenant key in the export's state).
    #[serde(default)]
    pub key_id: String,
    #[serde(default)]
    pub wrapped_by: WrappedBy,
}

/// The key an export's data key is wrapped by.
#[derive(Debug, Clone, Copy)]
pub enum Wrap<'a> {
    /// The tenant key (`key_id`): the export dies with the tenant key.
    Tenant(&'a str),
    /// The service key: a final export that outlives the tenant.
    Service,
}

/// Removes an unfinished export: aborts its uploads, deletes its objects, marks it failed.
pub async fn discard(deps: &Context, keys: &ExportKeys, export_id: Uuid) -> Result<(), StepError> {
    deps.objects.abort_uploads(&keys.prefix).await?;
    for key in keys.objects() {
        deps.objects.delete(key).await?;
    }
    Registry::fail_export(deps.registry.pool(), export_id).await?;
    Ok(())
}

/// Who and what a manifest names.
pub struct Signed<'a> {
    pub tenant_id: Uuid,
    pub export_id: Uuid,
    pub slug: &'a str,
    /// The key wrapping the data key.
    pub key_id: &'a str,
}

/// Writes the export's manifest and its signature beside the archive.
pub async fn write_manifest(
    deps: &Context,
    keys: &ExportKeys,
    s: &Signed<'_>,
    dumped: &Dumped,
) -> Result<(), StepError> {
    let public = deps.keys.public_key().await?;
    let tenant_schema = deps.tenant_schema().await?;
    let schema = (1..=dumped.schema_version)
        .map(|v| {
            let m = tenant_schema.get(v).ok_or_else(|| {
                StepError::internal(format!("tenant-schema version {v} is not recorded"))
            })?;
            Ok(SchemaVersion {
                version: v,
                file: m.file_name(),
                sha256: m.sha256(),
            })
        })
        .collect::<Result<Vec<_>, StepError>>()?;
    let m = Manifest {
        format: manifest::FORMAT.to_owned(),
        export_id: s.export_id.to_string(),
        tenant_id: s.tenant_id.to_string(),
        tenant_slug: s.slug.to_owned(),
        source_tier: dumped.tier.clone(),
        schema_version: dumped.schema_version,
        schema,
        snapshot_at: dumped.snapshot_at.to_rfc3339(),
        object_key: keys.archive.as_str().to_owned(),
        tables: dumped.tables.clone(),
        plaintext: dumped.plaintext.clone(),
        ciphertext: dumped.ciphertext.clone(),
        encryption: Encryption {
            cipher: manifest::CIPHER.to_owned(),
            chunk_bytes: aead_stream::DEFAULT_CHUNK as u32,
            compression: "zstd".to_owned(),
            key_id: s.key_id.to_owned(),
            wrapped_data_key: dumped.wrapped_data_key.clone(),
            context: manifest::export_context(&s.tenant_id.to_string(), &s.export_id.to_string()),
            wrapped_by: dumped.wrapped_by,
        },
        signing_key_id: public.key_id,
    };
    let bytes = m.to_bytes();
    let signature = deps.keys.sign(&bytes).await?;
    deps.objects.put(&keys.manifest, &bytes).await?;
    deps.objects.put(&keys.signature, &signature.der).await?;
    Ok(())
}

/// Marks the export complete: only now does it count as an export.
pub async fn record(
    deps: &Context,
    export_id: Uuid,
    dumped: &Dumped,
    key_id: &str,
) -> Result<(), StepError> {
    Registry::complete_export(
        deps.registry.pool(),
        export_id,
        &CompletedExport {
            schema_version: dumped.schema_version,
            key_id,
            size_bytes: dumped.ciphertext.bytes,
            sha256: &dumped.ciphertext.sha256,
            plaintext_sha256: &dumped.plaintext.sha256,
            tables: &dumped.tables,
            snapshot_at: dumped.snapshot_at,
        },
    )
    .await?;
    Ok(())
}

/// A deleted tenant's final export, for handing over (one step of the deletion, idempotent
/// like the export's own steps): dumped under [`ExportKeys::handover`] with its data key
/// sealed by the service key, signed and recorded as a complete export, then read back from
/// the store and checked whole (chunks, digests) before the deletion may go on.
pub async fn handover(
    cx: &StepContext<'_>,
    export_id: Uuid,
) -> Result<crate::certificate::FinalExportFacts, StepError> {
    let deps = cx.deps;
    let tenant_id = cx.tenant_id()?;
    let keys = ExportKeys::handover(tenant_id, export_id);
    let tenant = deps.registry.get_tenant(&TenantRef::Id(tenant_id)).await?;
    Registry::insert_export(
        deps.registry.pool(),
        &NewExport {
            scheduled: None,
            id: export_id,
            tenant_id,
            operation_id: cx.operation_id,
            tier: tenant.tier.as_str(),
            object_key: keys.archive.as_str(),
            manifest_key: keys.manifest.as_str(),
            handover: true,
        },
    )
    .await?;
    let source = Source::registered(deps, tenant_id).await?;
    let dumped = dump(cx, &source, export_id, Wrap::Service, &tenant.slug, &keys).await?;
    let signed = Signed {
        tenant_id,
        export_id,
        slug: &tenant.slug,
        key_id: &dumped.key_id,
    };
    write_manifest(deps, &keys, &signed, &dumped).await?;
    record(deps, export_id, &dumped, &dumped.key_id).await?;
    if crate::workflow::failpoint::armed("delete.damage_final_export") {
        // Test hook: the stored archive is damaged between its upload and the read-back.
        let mut bytes = deps.objects.get(&keys.archive).await?;
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        deps.objects.put(&keys.archive, &bytes).await?;
    }
    // The tenant's data is about to go for good: the handover copy must read back whole,
    // from the store, under its signed manifest, before the deletion goes on.
    let plain = crate::archive::verified::VerifiedExport::open(deps, export_id)
        .await?
        .read_back(deps)
        .await?;
    tracing::info!(tenant_id = %tenant_id, export_id = %export_id,
        bytes = dumped.ciphertext.bytes, plain_bytes = plain,
        "final export for handover complete and read back");
    Ok(crate::certificate::FinalExportFacts {
        export: format!("exports/{export_id}"),
        object_uri: deps.objects.uri(&keys.archive),
        size_bytes: dumped.ciphertext.bytes,
        sha256: dumped.ciphertext.sha256.clone(),
        encrypted_with: format!("the service key {}", dumped.key_id),
    })
}

/// Where a dump reads the tenant from.
pub struct Source<'a> {
    pub tenant_id: Uuid,
    pub tier: Tier,
    pub cluster: &'a Cluster,
    pub container: Container,
    pub schema_version: i32,
    /// The moment the data is of, when not the snapshot's start (a copy restored to it).
    pub as_of: Option<DateTime<Utc>>,
}

impl<'a> Source<'a> {
    /// The tenant where the registry places it, as it is now.
    pub async fn registered(deps: &'a Context, tenant_id: Uuid) -> Result<Self, StepError> {
        let tenant = deps.registry.get_tenant(&TenantRef::Id(tenant_id)).await?;
        Ok(Source {
            tenant_id,
            tier: tenant.tier,
            cluster: deps.dataplane.cluster(&tenant.placement.cluster)?,
            container: Container::from_placement(tenant_id, tenant.tier, &tenant.placement)?,
            schema_version: tenant.schema_version,
            as_of: None,
        })
    }
}

/// Streams the tenant's snapshot from `source` through the archive writer into a multipart
/// upload of `keys.archive` (see the export workflow's module doc). A retry first aborts
/// whatever upload an earlier attempt left, then starts over with a new data key.
pub async fn dump(
    cx: &StepContext<'_>,
    source: &Source<'_>,
    export_id: Uuid,
    wrap: Wrap<'_>,
    slug: &str,
    keys: &ExportKeys,
) -> Result<Dumped, StepError> {
    let deps = cx.deps;
    let tenant_id = source.tenant_id;
    let (cluster, c) = (source.cluster, &source.container);
    // Whatever an earlier attempt uploaded is incomplete and never will be: abort it.
    let stale = deps.objects.abort_uploads(&keys.prefix).await?;
    if stale > 0 {
        tracing::info!(export_id = %export_id, uploads = stale, "aborted uploads of an earlier attempt");
    }
    let context = manifest::export_context(&tenant_id.to_string(), &export_id.to_string());
    let (data_key, wrapped_by) = match wrap {
        Wrap::Tenant(key_id) => (
            deps.keys.generate_data_key(key_id, &context).await?,
            WrappedBy::TenantKey,
        ),
        Wrap::Service => {
            let mut plaintext = Zeroizing::new([0u8; 32]);
            rand::Rng::fill(&mut rand::rng(), plaintext.as_mut_slice());
            let sealed = deps.keys.seal(plaintext.as_slice(), &context).await?;
            let key = DataKey {
                key_id: sealed.key_id,
                plaintext,
                wrapped: sealed.ciphertext,
            };
            (key, WrappedBy::ServiceKey)
        }
    };
    let mut upload = deps.objects.begin_upload(&keys.archive).await?;
    let info = dump::DumpInfo {
        tenant_slug: slug,
        export_id: &export_id.to_string(),
        schema_version: source.schema_version,
        as_of: source.as_of,
    };
    let piped = pipeline(
        cx,
        cluster,
        c,
        &info,
        &data_key.plaintext,
        &context_bytes(&context),
        upload.as_mut(),
    )
    .await;
    let (summary, plaintext, ciphertext) = match piped {
        Ok(done) => done,
        Err(e) => {
            let _ = upload.abort().await;
            return Err(e);
        }
    };
    upload.complete().await?;
    Ok(Dumped {
        tier: source.tier.as_str().to_owned(),
        schema_version: source.schema_version,
        snapshot_at: summary.snapshot_at,
        tables: summary.tables,
        plaintext,
        ciphertext,
        wrapped_data_key: base64::engine::general_purpose::STANDARD.encode(&data_key.wrapped),
        key_id: data_key.key_id.clone(),
        wrapped_by,
    })
}

/// Snapshot reader → archive writer (a blocking thread: compression and encryption are CPU
/// work) → upload, with small bounded queues between them. Whichever stage fails first makes
/// the others stop.
async fn pipeline(
    cx: &StepContext<'_>,
    cluster: &crate::dataplane::Cluster,
    c: &Container,
    info: &dump::DumpInfo<'_>,
    key: &[u8; 32],
    context: &[u8],
    upload: &mut dyn Upload,
) -> Result<(dump::DumpSummary, Digest256, Digest256), StepError> {
    let (plain_tx, mut plain_rx) = mpsc::channel::<Vec<u8>>(8);
    let (sealed_tx, mut sealed_rx) = mpsc::channel::<Vec<u8>>(8);
    let key = zeroize::Zeroizing::new(*key);
    let context = context.to_vec();
    let encoder =
        tokio::task::spawn_blocking(move || -> std::io::Result<(Digest256, Digest256)> {
            let mut writer = ArchiveWriter::new(&key, &context)?;
            let stopped = || std::io::Error::other("upload stopped");
            while let Some(batch) = plain_rx.blocking_recv() {
                writer.write(&batch)?;
                let out = writer.take_output();
                if !out.is_empty() {
                    sealed_tx.blocking_send(out).map_err(|_| stopped())?;
                }
            }
            let (tail, plain, sealed) = writer.finish()?;
            sealed_tx.blocking_send(tail).map_err(|_| stopped())?;
            Ok((plain, sealed))
        });
    let progress = dump::DumpProgress::default();
    let read = async {
        let summary = dump::dump(cluster, c, info, &plain_tx, &progress).await;
        drop(plain_tx);
        summary
    };
    // Rows exported per table, every second, while the snapshot is read.
    let report = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let items: Vec<ProgressItem> = progress
                .tables()
                .into_iter()
                .map(|(name, rows, finished)| ProgressItem {
                    name,
                    done: rows as i64,
                    // A table's row count is known once it is read (0: still reading).
                    total: if finished { rows as i64 } else { 0 },
                })
                .collect();
            // Progress is informative: a failed report must not fail the export.
            let _ = cx.progress(&items).await;
        }
    };
    let read = async {
        tokio::select! {
            summary = read => summary,
            never = report => never,
        }
    };
    let write = async {
        let mut first = true;
        while let Some(sealed) = sealed_rx.recv().await {
            upload.write(&sealed).await?;
            if first {
                first = false;
                // Crash tests: die with an upload in progress.
                failpoint::hit("export.mid_upload").await?;
            }
        }
        Ok::<(), StepError>(())
    };
    let (read, write) = tokio::join!(read, write);
    let encoded = encoder
        .await
        .map_err(|e| StepError::Retryable(format!("archive writer: {e}")))?;
    let summary = read?;
    write?;
    let items: Vec<ProgressItem> = summary
        .tables
        .iter()
        .map(|t| ProgressItem {
            name: t.table.clone(),
            done: t.rows as i64,
            total: t.rows as i64,
        })
        .collect();
    let _ = cx.progress(&items).await;
    let (plain, sealed) =
        encoded.map_err(|e| StepError::Retryable(format!("archive writer: {e}")))?;
    Ok((summary, plain, sealed))
}
