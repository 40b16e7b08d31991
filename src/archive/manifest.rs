//! The export manifest: what an export holds and how to open it, signed by the service
//! signing key. Stored beside the archive as `manifest.json` (the exact bytes signed) and
//! `manifest.json.sig` (ECDSA P-256/SHA-256, ASN.1 DER), so that anyone with the public key
//! can check it offline, e.g.
//! `openssl dgst -sha256 -verify signing.pem -signature manifest.json.sig manifest.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Digest256;
use crate::keys::{EncryptionContext, KeyError, context_bytes, verify_signature};

pub const FORMAT: &str = "tenantd-export/1";
pub const CIPHER: &str = "AES-256-GCM-STREAM-BE32";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub table: String,
    pub rows: u64,
}

/// One tenant-schema version an export was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaVersion {
    pub version: i32,
    /// The migration's file, `NNNN_name.sql`.
    pub file: String,
    /// Hex sha256 of its exact text, as the registry recorded it.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub cipher: String,
    pub chunk_bytes: u32,
    pub compression: String,
    /// The tenant key that wraps the data key.
    pub key_id: String,
    /// The data key wrapped by `key_id` (base64).
    pub wrapped_data_key: String,
    /// Bound to the data key by the key service and to every chunk as associated data.
    pub context: BTreeMap<String, String>,
    /// Which key wraps the data key: the tenant key (every export but one), or the service
    /// key (a deleted tenant's final export, kept for handing over). Absent: the tenant key.
    #[serde(default, skip_serializing_if = "WrappedBy::is_tenant_key")]
    pub wrapped_by: WrappedBy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WrappedBy {
    /// `key_id` is the tenant key; the key service unwraps the data key.
    #[default]
    TenantKey,
    /// `key_id` is the service key; the data key was sealed as a service secret.
    ServiceKey,
}

impl WrappedBy {
    pub fn is_tenant_key(&self) -> bool {
        *self == WrappedBy::TenantKey
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub export_id: String,
    pub tenant_id: String,
    pub tenant_slug: String,
    pub source_tier: String,
    pub schema_version: i32,
    /// Every tenant-schema migration up to `schema_version`, with its sha256: a restore
    /// refuses a fleet whose text for one of them differs. Absent in exports made before
    /// tenant schemas were supplied (those versions are the example's, byte for byte).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema: Vec<SchemaVersion>,
    /// Start of the REPEATABLE READ snapshot every table was read in (RFC 3339).
    pub snapshot_at: String,
    pub object_key: String,
    pub tables: Vec<TableRows>,
    pub plaintext: Digest256,
    pub ciphertext: Digest256,
    pub encryption: Encryption,
    pub signing_key_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "manifest signature does not verify: the manifest was altered or signed by another key"
    )]
    BadSignature,
    #[error("manifest unreadable: {0}")]
    Unreadable(String),
    #[error("export format {0:?} is not supported")]
    Format(String),
}

impl Manifest {
    /// The bytes to store and sign (pretty JSON, fields in declaration order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serialises");
        out.push(b'\n');
        out
    }

    /// Parses manifest bytes after checking their signature with the signing public key.
    pub fn verified(
        bytes: &[u8],
        signature: &[u8],
        spki_der: &[u8],
    ) -> Result<Self, ManifestError> {
        match verify_signature(spki_der, bytes, signature) {
            Ok(()) => {}
            Err(KeyError::BadSignature) => return Err(ManifestError::BadSignature),
            Err(e) => return Err(ManifestError::Unreadable(e.to_string())),
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
        if m.format != FORMAT || m.encryption.cipher != CIPHER {
            return Err(ManifestError::Format(format!(
                "{} / {}",
                m.format, m.encryption.cipher
            )));
        }
        Ok(m)
    }

    pub fn context(&self) -> EncryptionContext {
        self.encryption.context.clone()
    }

    /// The associated data every chunk of the archive is bound to.
    pub fn context_bytes(&self) -> Vec<u8> {
        context_bytes(&self.encryption.context)
    }

    pub fn wrapped_data_key(&self) -> Result<Vec<u8>, ManifestError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.encryption.wrapped_data_key)
            .map_err(|e| ManifestError::Unreadable(format!("wrapped data key: {e}")))
    }
}

/// The encryption context of an export: binds its data key and every chunk to the tenant and
/// to this export.
pub fn export_context(tenant_id: &str, export_id: &str) -> EncryptionContext {
    [
        ("purpose".to_owned(), "tenant-export".to_owned()),
        ("tenant_id".to_owned(), tenant_id.to_owned()),
        ("export_id".to_owned(), export_id.to_owned()),
    ]
    .into()
}
