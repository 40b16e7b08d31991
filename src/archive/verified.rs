//! An export read back for a restore or a download: its manifest verified against the
//! service signing key and against what the registry records, and its data key unwrapped.
//! Nothing is trusted from the object store that the signature does not cover.

use uuid::Uuid;
use zeroize::Zeroizing;

use super::layout::ExportKeys;
use super::manifest::{Manifest, WrappedBy};
use crate::context::Context;
use crate::error::Error;
use crate::keys::Sealed;
use crate::registry::exports::{Export as ExportRow, ExportState};

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

    /// Reads the whole archive back and checks it as a restore would before using it: every
    /// chunk authenticated, the stream complete, and both digests equal to the manifest's.
    /// Returns the plaintext bytes it decoded. A damaged archive is FAILED_PRECONDITION
    /// naming what is wrong.
    pub async fn read_back(&self, deps: &Context) -> Result<u64, Error> {
        use tokio::io::AsyncReadExt;
        const CHUNK: usize = 1 << 20;
        let key = self.data_key(deps).await?;
        let mut archive = super::ArchiveReader::for_manifest(&self.manifest, &key)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut object = deps.objects.read(&self.keys.archive).await?;
        let damaged = |e: super::ArchiveError| Error::FailedPrecondition {
            reason: format!(
                "export exports/{} does not read back: {e}",
                self.manifest.export_id
            ),
            operation: None,
        };
        let mut plain = 0u64;
        loop {
            let mut buf = Vec::with_capacity(CHUNK);
            let n = (&mut object)
                .take(CHUNK as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| Error::Unavailable(format!("reading the archive: {e}")))?;
            if n == 0 {
                break;
            }
            // Decrypting and decompressing a chunk is CPU work: off the async threads.
            let (back, out) = tokio::task::spawn_blocking(move || {
                let out = archive.write(&buf);
                (archive, out)
            })
            .await
            .map_err(|e| Error::Internal(format!("archive reader: {e}")))?;
            archive = back;
            plain += out.map_err(damaged)?.len() as u64;
        }
        let tail = archive.finish_checked(&self.manifest).map_err(damaged)?;
        Ok(plain + tail.len() as u64)
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
