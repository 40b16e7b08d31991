//! Export: prepare → dump → sign → record.
//!
//! - `prepare` makes sure the tenant has its key and records the export as `running`.
//! - `dump` streams the tenant's snapshot (dataplane::dump) through the archive writer
//!   (zstd, then AES-256-GCM STREAM under a fresh data key from the tenant key) into a
//!   multipart upload; three stages run concurrently with bounded queues between them, so
//!   memory stays flat. A retry first aborts whatever upload an earlier attempt left, then
//!   starts over with a new data key: the object is complete only when the upload completes.
//! - `sign` writes the manifest and its signature beside the archive.
//! - `record` marks the export complete; only now does it count as an export.
//!
//! Compensation aborts uploads, deletes the export's objects and marks it `failed`.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::archive::manifest::{self, Encryption, Manifest, TableRows, WrappedBy};
use crate::archive::{ArchiveWriter, Digest256, aead_stream};
use crate::blobs::{ObjectKey, Upload};
use crate::context::Context;
use crate::dataplane::{Container, dump};
use crate::error::Error;
use crate::keys::{DataKey, Sealed, context_bytes};
use crate::operation::ProgressItem;
use crate::registry::Registry;
use crate::registry::exports::{CompletedExport, Export as ExportRow, ExportState, NewExport};
use crate::tenant::TenantRef;
use crate::workflow::{StepContext, StepError, Workflow, failpoint};
use crate::workflows::tenant_key;

pub struct Export;

/// Object names of an export, all under `tenants/<tenant>/exports/<export>/`.
pub struct ExportKeys {
    pub prefix: ObjectKey,
    pub archive: ObjectKey,
    pub manifest: ObjectKey,
    pub signature: ObjectKey,
}

/// Everything of a tenant in the object store is below this prefix (a deletion empties it);
/// only a deleted tenant's final export lives elsewhere ([`ExportKeys::handover`]).
pub fn tenant_prefix(tenant_id: Uuid) -> ObjectKey {
    ObjectKey::new(format!("tenants/{tenant_id}")).expect("a uuid makes a valid key")
}

impl ExportKeys {
    pub fn new(tenant_id: Uuid, export_id: Uuid) -> ExportKeys {
        Self::at(format!(
            "{}/exports/{export_id}",
            tenant_prefix(tenant_id).as_str()
        ))
    }

    /// A deleted tenant's final export, outside the tenant's prefix so that the deletion
    /// leaves it for handing over: `handover/<tenant>/<export>/`.
    pub fn handover(tenant_id: Uuid, export_id: Uuid) -> ExportKeys {
        Self::at(format!("handover/{tenant_id}/{export_id}"))
    }

    pub fn for_row(row: &ExportRow) -> ExportKeys {
        if row.handover {
            Self::handover(row.tenant_id, row.id)
        } else {
            Self::new(row.tenant_id, row.id)
        }
    }

    fn at(prefix: String) -> ExportKeys {
        let prefix = ObjectKey::new(prefix).expect("uuids make valid keys");
        let at = |name: &str| prefix.join(name).expect("valid key");
        ExportKeys {
            archive: at("dump.sql.zst.tdxs"),
            manifest: at("manifest.json"),
            signature: at("manifest.json.sig"),
            prefix,
        }
    }
}

/// A complete export whose manifest verified: signed by the service signing key, and
/// describing the very export the registry records (id, tenant, archive key and digest).
pub struct VerifiedExport {
    pub row: ExportRow,
    pub keys: ExportKeys,
    /// `manifest.json` exactly as stored and signed, and its signature.
    pub manifest_bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub manifest: Manifest,
}

impl VerifiedExport {
    /// Reads and checks export `id`'s manifest. An unknown export is NOT_FOUND, an incomplete
    /// one or a manifest that does not verify FAILED_PRECONDITION.
    pub async fn open(deps: &Context, id: Uuid) -> Result<Self, Error> {
        let row = deps
            .registry
            .find_export(id)
            .await?
            .ok_or_else(|| Error::not_found("export", format!("exports/{id}")))?;
        let refuse = |reason: String| Error::FailedPrecondition {
            reason: format!("export exports/{id}: {reason}"),
            operation: None,
        };
        if row.state != ExportState::Complete {
            return Err(Error::FailedPrecondition {
                reason: format!("export exports/{id} is not complete"),
                operation: Some(row.operation_id),
            });
        }
        let keys = ExportKeys::for_row(&row);
        let manifest_bytes = deps.objects.get(&keys.manifest).await?;
        let signature = deps.objects.get(&keys.signature).await?;
        let public = deps.keys.public_key().await?;
        let manifest = Manifest::verified(&manifest_bytes, &signature, &public.spki_der)
            .map_err(|e| refuse(e.to_string()))?;
        if manifest.export_id != id.to_string()
            || manifest.tenant_id != row.tenant_id.to_string()
            || manifest.object_key != keys.archive.as_str()
            || row.sha256.as_deref() != Some(manifest.ciphertext.sha256.as_str())
        {
            return Err(refuse(
                "its signed manifest describes another export than the registry records".into(),
            ));
        }
        Ok(VerifiedExport {
            row,
            keys,
            manifest_bytes,
            signature,
            manifest,
        })
    }

    /// The export's data key, unwrapped by the tenant key under the export's context. A tenant
    /// key pending deletion or destroyed refuses: FAILED_PRECONDITION.
    pub async fn data_key(&self, deps: &Context) -> Result<Zeroizing<[u8; 32]>, Error> {
        let m = &self.manifest;
        let wrapped = m
            .wrapped_data_key()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let key_id = &m.encryption.key_id;
        let key = match m.encryption.wrapped_by {
            WrappedBy::TenantKey => {
                deps.keys
                    .decrypt_data_key(key_id, &wrapped, &m.context())
                    .await
            }
            WrappedBy::ServiceKey => {
                let sealed = Sealed {
                    key_id: key_id.clone(),
                    ciphertext: wrapped,
                };
                deps.keys
                    .open(&sealed, &m.context())
                    .await
                    .and_then(|plain| {
                        let plain = Zeroizing::new(plain);
                        let bytes: [u8; 32] = plain
                            .as_slice()
                            .try_into()
                            .map_err(|_| crate::keys::KeyError::Undecryptable)?;
                        Ok(Zeroizing::new(bytes))
                    })
            }
        };
        match key {
            Err(crate::keys::KeyError::Unusable { key_id, state }) => {
                Err(Error::FailedPrecondition {
                    reason: format!(
                        "export exports/{} cannot be opened: the key of tenant {} that \
                         encrypts it ({key_id}) is {state}",
                        m.export_id, m.tenant_id
                    ),
                    operation: None,
                })
            }
            other => Ok(other?),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub export_id: Uuid,
    /// Set by `prepare`.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub tenant_slug: Option<String>,
    /// Set by `dump`.
    #[serde(default)]
    pub dumped: Option<Dumped>,
}

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
enum Wrap<'a> {
    /// The tenant key (`key_id`): the export dies with the tenant key.
    Tenant(&'a str),
    /// The service key: a final export that outlives the tenant.
    Service,
}

impl State {
    pub fn new(export_id: Uuid) -> Self {
        State {
            export_id,
            key_id: None,
            tenant_slug: None,
            dumped: None,
        }
    }
}

fn missing(what: &str) -> StepError {
    StepError::fatal(tonic::Code::Internal, format!("export state has no {what}"))
}

impl Workflow for Export {
    const KIND: &'static str = "export";
    const STEPS: &'static [&'static str] = &["prepare", "dump", "sign", "record"];
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: usize,
        state: &mut State,
    ) -> Result<(), StepError> {
        let deps = cx.deps;
        let keys = ExportKeys::new(cx.tenant_id, state.export_id);
        match Self::STEPS[step] {
            "prepare" => {
                let tenant = deps
                    .registry
                    .get_tenant(&TenantRef::Id(cx.tenant_id))
                    .await?;
                tenant.ensure_active()?;
                let key_id = match tenant.key_id {
                    Some(k) => k,
                    None => tenant_key::ensure(deps, cx.tenant_id).await?,
                };
                Registry::insert_export(
                    deps.registry.pool(),
                    &NewExport {
                        id: state.export_id,
                        tenant_id: cx.tenant_id,
                        operation_id: cx.operation_id,
                        tier: tenant.tier.as_str(),
                        object_key: keys.archive.as_str(),
                        manifest_key: keys.manifest.as_str(),
                        handover: false,
                    },
                )
                .await?;
                state.key_id = Some(key_id);
                state.tenant_slug = Some(tenant.slug.as_str().to_owned());
            }
            "dump" => {
                let key_id = state.key_id.clone().ok_or_else(|| missing("key"))?;
                let slug = state.tenant_slug.clone().unwrap_or_default();
                let wrap = Wrap::Tenant(&key_id);
                state.dumped = Some(dump_step(cx, state.export_id, wrap, &slug, &keys).await?);
            }
            "sign" => {
                let dumped = state.dumped.as_ref().ok_or_else(|| missing("dump"))?;
                let key_id = state.key_id.as_ref().ok_or_else(|| missing("key"))?;
                let slug = state.tenant_slug.clone().unwrap_or_default();
                let signed = Signed {
                    tenant_id: cx.tenant_id,
                    export_id: state.export_id,
                    slug: &slug,
                    key_id,
                };
                write_manifest(deps, &keys, &signed, dumped).await?;
            }
            "record" => {
                let dumped = state.dumped.as_ref().ok_or_else(|| missing("dump"))?;
                let key_id = state.key_id.as_deref().ok_or_else(|| missing("key"))?;
                record(deps, state.export_id, dumped, key_id).await?;
                let kind = <Export as Workflow>::KIND;
                crate::metrics::bytes_moved(kind, dumped.ciphertext.bytes);
                crate::metrics::rows_moved(kind, dumped.tables.iter().map(|t| t.rows).sum());
                tracing::info!(tenant_id = %cx.tenant_id, export_id = %state.export_id,
                    bytes = dumped.ciphertext.bytes, "export complete");
            }
            other => unreachable!("export has no step {other}"),
        }
        Ok(())
    }

    async fn compensate(&self, cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
        let keys = ExportKeys::new(cx.tenant_id, state.export_id);
        discard(cx.deps, &keys, state.export_id).await
    }
}

/// Removes an unfinished export: aborts its uploads, deletes its objects, marks it failed.
pub async fn discard(deps: &Context, keys: &ExportKeys, export_id: Uuid) -> Result<(), StepError> {
    deps.objects
        .abort_uploads(&keys.prefix)
        .await
        .map_err(Error::from)?;
    for key in [&keys.archive, &keys.manifest, &keys.signature] {
        deps.objects.delete(key).await.map_err(Error::from)?;
    }
    Registry::fail_export(deps.registry.pool(), export_id).await?;
    Ok(())
}

/// Who and what a manifest names.
struct Signed<'a> {
    tenant_id: Uuid,
    export_id: Uuid,
    slug: &'a str,
    /// The key wrapping the data key.
    key_id: &'a str,
}

/// Writes the export's manifest and its signature beside the archive.
async fn write_manifest(
    deps: &Context,
    keys: &ExportKeys,
    s: &Signed<'_>,
    dumped: &Dumped,
) -> Result<(), StepError> {
    let public = deps.keys.public_key().await.map_err(Error::from)?;
    let m = Manifest {
        format: manifest::FORMAT.to_owned(),
        export_id: s.export_id.to_string(),
        tenant_id: s.tenant_id.to_string(),
        tenant_slug: s.slug.to_owned(),
        source_tier: dumped.tier.clone(),
        schema_version: dumped.schema_version,
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
    let signature = deps.keys.sign(&bytes).await.map_err(Error::from)?;
    deps.objects
        .put(&keys.manifest, &bytes)
        .await
        .map_err(Error::from)?;
    deps.objects
        .put(&keys.signature, &signature.der)
        .await
        .map_err(Error::from)?;
    Ok(())
}

/// Marks the export complete: only now does it count as an export.
async fn record(
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
/// sealed by the service key, signed and recorded as a complete export.
pub async fn handover(
    cx: &StepContext<'_>,
    export_id: Uuid,
) -> Result<crate::certificate::FinalExportFacts, StepError> {
    let deps = cx.deps;
    let keys = ExportKeys::handover(cx.tenant_id, export_id);
    let tenant = deps
        .registry
        .get_tenant(&TenantRef::Id(cx.tenant_id))
        .await?;
    Registry::insert_export(
        deps.registry.pool(),
        &NewExport {
            id: export_id,
            tenant_id: cx.tenant_id,
            operation_id: cx.operation_id,
            tier: tenant.tier.as_str(),
            object_key: keys.archive.as_str(),
            manifest_key: keys.manifest.as_str(),
            handover: true,
        },
    )
    .await?;
    let dumped = dump_step(cx, export_id, Wrap::Service, &tenant.slug, &keys).await?;
    let signed = Signed {
        tenant_id: cx.tenant_id,
        export_id,
        slug: &tenant.slug,
        key_id: &dumped.key_id,
    };
    write_manifest(deps, &keys, &signed, &dumped).await?;
    record(deps, export_id, &dumped, &dumped.key_id).await?;
    tracing::info!(tenant_id = %cx.tenant_id, export_id = %export_id,
        bytes = dumped.ciphertext.bytes, "final export for handover complete");
    Ok(crate::certificate::FinalExportFacts {
        export: format!("exports/{export_id}"),
        object_uri: deps.objects.uri(&keys.archive),
        size_bytes: dumped.ciphertext.bytes,
        sha256: dumped.ciphertext.sha256.clone(),
        encrypted_with: format!("the service key {}", dumped.key_id),
    })
}

async fn dump_step(
    cx: &StepContext<'_>,
    export_id: Uuid,
    wrap: Wrap<'_>,
    slug: &str,
    keys: &ExportKeys,
) -> Result<Dumped, StepError> {
    let deps = cx.deps;
    let tenant = deps
        .registry
        .get_tenant(&TenantRef::Id(cx.tenant_id))
        .await?;
    let cluster = deps.dataplane.cluster(&tenant.placement.cluster)?;
    let c = Container::from_placement(cx.tenant_id, tenant.tier, &tenant.placement)?;
    // Whatever an earlier attempt uploaded is incomplete and never will be: abort it.
    let stale = deps
        .objects
        .abort_uploads(&keys.prefix)
        .await
        .map_err(Error::from)?;
    if stale > 0 {
        tracing::info!(export_id = %export_id, uploads = stale, "aborted uploads of an earlier attempt");
    }
    let context = manifest::export_context(&cx.tenant_id.to_string(), &export_id.to_string());
    let (data_key, wrapped_by) = match wrap {
        Wrap::Tenant(key_id) => (
            deps.keys
                .generate_data_key(key_id, &context)
                .await
                .map_err(Error::from)?,
            WrappedBy::TenantKey,
        ),
        Wrap::Service => {
            let mut plaintext = Zeroizing::new([0u8; 32]);
            rand::Rng::fill(&mut rand::rng(), plaintext.as_mut_slice());
            let sealed = deps
                .keys
                .seal(plaintext.as_slice(), &context)
                .await
                .map_err(Error::from)?;
            let key = DataKey {
                key_id: sealed.key_id,
                plaintext,
                wrapped: sealed.ciphertext,
            };
            (key, WrappedBy::ServiceKey)
        }
    };
    let mut upload = deps
        .objects
        .begin_upload(&keys.archive)
        .await
        .map_err(Error::from)?;
    let info = dump::DumpInfo {
        tenant_slug: slug,
        export_id: &export_id.to_string(),
        schema_version: tenant.schema_version,
    };
    let piped = pipeline(
        cx,
        cluster,
        &c,
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
    upload.complete().await.map_err(Error::from)?;
    Ok(Dumped {
        tier: tenant.tier.as_str().to_owned(),
        schema_version: tenant.schema_version,
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
            upload.write(&sealed).await.map_err(Error::from)?;
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
