//! Key service: every key tenantd uses, behind one trait with a local and an AWS KMS
//! implementation.
//!
//! - **Service secrets**: [`KeyService::seal`]/[`KeyService::open`] protect what the registry
//!   must keep (data-plane credentials) under an encryption context that binds each
//!   ciphertext to what it belongs to, so a sealed value copied to another row does not open.
//! - **Tenant keys**: one key per tenant (alias `<prefix><tenant id>`), created at
//!   provisioning. It never leaves the key service: exports are encrypted with a fresh data
//!   key from [`KeyService::generate_data_key`], and only the data key wrapped by the tenant
//!   key is stored. Scheduling the tenant key's deletion makes every export of the tenant
//!   unreadable (crypto-shredding): a key that is not enabled refuses to decrypt.
//! - **The signing key**: an ECDSA P-256 key that signs export manifests and deletion proofs;
//!   anyone can check a signature offline with [`verify_signature`] and the public key.
//!
//! Implementations: [`local::LocalKms`] (master key file + registry table, the embedded
//! default) and [`aws::AwsKms`]. Both pass the shared [`suite`]; the AWS one runs it against
//! `moto_server` in the integration tests.

pub mod aws;
pub mod local;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Wrong key, wrong context, or a modified ciphertext: all look the same by design.
    #[error("ciphertext cannot be opened with this key and encryption context")]
    Undecryptable,
    #[error("key {0} not found")]
    NotFound(String),
    /// The key exists but may not be used (disabled, pending deletion, destroyed).
    #[error("key {key_id} cannot be used: it is {state}")]
    Unusable { key_id: String, state: KeyState },
    #[error("signature does not verify")]
    BadSignature,
    #[error("key provider misconfigured: {0}")]
    Config(String),
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
}

/// Key/value pairs bound into a ciphertext as additional authenticated data.
pub type EncryptionContext = BTreeMap<String, String>;

/// A sealed secret and the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    /// Key material is gone; nothing it protected can be decrypted again.
    Destroyed,
}

impl KeyState {
    /// The state's stored and serialised name (`pending_deletion`), as in deletion
    /// certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion => "pending_deletion",
            KeyState::Destroyed => "destroyed",
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion => "pending deletion",
            KeyState::Destroyed => "destroyed",
        })
    }
}

/// What the key service says about a tenant key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub state: KeyState,
    /// When a key pending deletion is destroyed.
    pub deletion_date: Option<DateTime<Utc>>,
}

/// A fresh data key: use `plaintext` once, store only `wrapped`.
pub struct DataKey {
    pub key_id: String,
    pub plaintext: Zeroizing<[u8; 32]>,
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .field("plaintext", &"<redacted>")
            .finish()
    }
}

/// An ECDSA P-256 / SHA-256 signature (ASN.1 DER) and the key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_id: String,
    pub der: Vec<u8>,
}

/// The signing key's public half: SubjectPublicKeyInfo DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: String,
    pub spki_der: Vec<u8>,
}

impl PublicKey {
    /// PEM text (`-----BEGIN PUBLIC KEY-----`), what `openssl dgst -verify` takes.
    pub fn pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.spki_der);
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }
}

#[async_trait]
pub trait KeyService: Send + Sync + 'static {
    /// Seals a service secret under the service key.
    async fn seal(&self, plaintext: &[u8], context: &EncryptionContext)
    -> Result<Sealed, KeyError>;
    async fn open(&self, sealed: &Sealed, context: &EncryptionContext)
    -> Result<Vec<u8>, KeyError>;

    /// Creates the tenant's key, or returns the one it already has (idempotent: the alias
    /// names at most one key).
    async fn create_tenant_key(&self, tenant_id: Uuid) -> Result<KeyInfo, KeyError>;
    /// The tenant's key, if it has one.
    async fn tenant_key(&self, tenant_id: Uuid) -> Result<Option<KeyInfo>, KeyError>;
    async fn describe_key(&self, key_id: &str) -> Result<KeyInfo, KeyError>;
    /// A fresh 256-bit data key, wrapped by `key_id` under `context`.
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, KeyError>;
    /// Unwraps a data key; fails unless `key_id` is enabled and `context` is the one it was
    /// generated under.
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError>;
    /// Disables the key at once and destroys it after `pending_days` (the provider may
    /// enforce a minimum: AWS KMS takes 7 to 30).
    async fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_days: u32,
    ) -> Result<KeyInfo, KeyError>;

    /// Signs `message` with the service signing key (ECDSA P-256, SHA-256).
    async fn sign(&self, message: &[u8]) -> Result<Signature, KeyError>;
    async fn public_key(&self) -> Result<PublicKey, KeyError>;

    /// Destroys every key whose deletion is due; returns how many. A provider that destroys
    /// keys itself on their date (AWS KMS) has nothing to do.
    async fn destroy_due_keys(&self) -> Result<u64, KeyError> {
        Ok(0)
    }
}

/// How often [`sweep`] destroys keys whose deletion is due.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Destroys due keys at start and then every [`SWEEP_INTERVAL`] until `shutdown`, so a deleted
/// tenant's key is gone on the date its deletion certificate states, whether or not anything
/// reads it again.
pub async fn sweep(
    keys: std::sync::Arc<dyn KeyService>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        match keys.destroy_due_keys().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "keys whose deletion was due destroyed"),
            Err(e) => tracing::warn!(error = %e, "due keys not destroyed yet; will try again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Largest message [`KeyService::sign`] takes (the AWS KMS limit for raw messages).
pub const MAX_SIGNED_MESSAGE: usize = 4096;

/// Refuses messages longer than [`MAX_SIGNED_MESSAGE`], the same in every implementation.
pub fn check_signable(message: &[u8]) -> Result<(), KeyError> {
    if message.len() > MAX_SIGNED_MESSAGE {
        return Err(KeyError::Config(format!(
            "cannot sign {} bytes: at most {MAX_SIGNED_MESSAGE}",
            message.len()
        )));
    }
    Ok(())
}

/// Checks an ECDSA P-256 / SHA-256 signature offline, with nothing but the public key.
pub fn verify_signature(spki_der: &[u8], message: &[u8], der: &[u8]) -> Result<(), KeyError> {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der)
        .map_err(|e| KeyError::Config(format!("not a P-256 public key: {e}")))?;
    let sig = p256::ecdsa::Signature::from_der(der).map_err(|_| KeyError::BadSignature)?;
    key.verify(message, &sig)
        .map_err(|_| KeyError::BadSignature)
}

/// Parses a PEM public key (as written by [`PublicKey::pem`] or openssl).
pub fn public_key_from_pem(pem: &str) -> Result<Vec<u8>, KeyError> {
    use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
    let key = p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
        .map_err(|e| KeyError::Config(format!("not a P-256 public key: {e}")))?;
    Ok(key
        .to_public_key_der()
        .map_err(|e| KeyError::Config(e.to_string()))?
        .into_vec())
}

/// Canonical bytes of a context: `k=v` pairs sorted by key (BTreeMap order), length-prefixed
/// so that no two different contexts encode alike.
pub fn context_bytes(context: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in context {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

/// The shared suite every [`KeyService`] implementation must pass (run by the unit tests for
/// the local provider and by the integration tests against moto for AWS KMS).
#[doc(hidden)]
pub mod suite {
    use super::*;

    fn ctx(tenant: &str) -> EncryptionContext {
        [("tenant_id".to_owned(), tenant.to_owned())].into()
    }

    pub async fn seals_service_secrets(keys: &dyn KeyService) {
        let sealed = keys.seal(b"s3cret", &ctx("a")).await.unwrap();
        assert_ne!(sealed.ciphertext, b"s3cret");
        assert_eq!(keys.open(&sealed, &ctx("a")).await.unwrap(), b"s3cret");
        // Another tenant's context does not open it.
        assert!(matches!(
            keys.open(&sealed, &ctx("b")).await,
            Err(KeyError::Undecryptable)
        ));
        // One flipped byte does not open.
        let mut tampered = sealed.clone();
        let last = tampered.ciphertext.len() - 1;
        tampered.ciphertext[last] ^= 1;
        assert!(keys.open(&tampered, &ctx("a")).await.is_err());
        // Sealing twice gives different ciphertexts (fresh nonce).
        let again = keys.seal(b"s3cret", &ctx("a")).await.unwrap();
        assert_ne!(again.ciphertext, sealed.ciphertext);
    }

    /// Tenant keys: idempotent creation, data keys bound to key and context.
    pub async fn manages_tenant_keys(keys: &dyn KeyService) {
        let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(keys.tenant_key(t1).await.unwrap(), None);
        let k1 = keys.create_tenant_key(t1).await.unwrap();
        assert_eq!(k1.state, KeyState::Enabled);
        assert_eq!(keys.create_tenant_key(t1).await.unwrap().key_id, k1.key_id);
        assert_eq!(keys.tenant_key(t1).await.unwrap(), Some(k1.clone()));
        assert_eq!(keys.describe_key(&k1.key_id).await.unwrap(), k1);
        let k2 = keys.create_tenant_key(t2).await.unwrap();
        assert_ne!(k1.key_id, k2.key_id);

        let c1 = ctx(&t1.to_string());
        let dk = keys.generate_data_key(&k1.key_id, &c1).await.unwrap();
        assert_ne!(dk.wrapped.as_slice(), dk.plaintext.as_slice());
        let again = keys.generate_data_key(&k1.key_id, &c1).await.unwrap();
        assert_ne!(*again.plaintext, *dk.plaintext, "data keys are fresh");
        let opened = keys
            .decrypt_data_key(&k1.key_id, &dk.wrapped, &c1)
            .await
            .unwrap();
        assert_eq!(*opened, *dk.plaintext);
        // Another context, or the other tenant's key, does not unwrap it.
        let c2 = ctx(&t2.to_string());
        assert!(
            keys.decrypt_data_key(&k1.key_id, &dk.wrapped, &c2)
                .await
                .is_err()
        );
        assert!(
            keys.decrypt_data_key(&k2.key_id, &dk.wrapped, &c1)
                .await
                .is_err()
        );
        assert!(matches!(
            keys.describe_key("no-such-key").await,
            Err(KeyError::NotFound(_))
        ));

        let pending = keys.schedule_key_deletion(&k2.key_id, 7).await.unwrap();
        assert_eq!(pending.state, KeyState::PendingDeletion);
        assert!(pending.deletion_date.is_some());
        assert_eq!(
            keys.describe_key(&k2.key_id).await.unwrap().state,
            KeyState::PendingDeletion
        );
    }

    /// A key pending deletion refuses to decrypt. (Not run against moto, which ignores key
    /// state: see docs/keys.md.)
    pub async fn deleted_keys_refuse_to_decrypt(keys: &dyn KeyService) {
        let t = Uuid::new_v4();
        let k = keys.create_tenant_key(t).await.unwrap();
        let c = ctx(&t.to_string());
        let dk = keys.generate_data_key(&k.key_id, &c).await.unwrap();
        keys.schedule_key_deletion(&k.key_id, 7).await.unwrap();
        assert!(matches!(
            keys.decrypt_data_key(&k.key_id, &dk.wrapped, &c).await,
            Err(KeyError::Unusable { .. })
        ));
        assert!(matches!(
            keys.generate_data_key(&k.key_id, &c).await,
            Err(KeyError::Unusable { .. })
        ));
    }

    pub async fn signs_verifiably(keys: &dyn KeyService) {
        let public = keys.public_key().await.unwrap();
        let message = br#"{"tenant":"t1","rows":3}"#;
        let sig = keys.sign(message).await.unwrap();
        assert_eq!(sig.key_id, public.key_id);
        verify_signature(&public.spki_der, message, &sig.der).unwrap();
        assert!(matches!(
            verify_signature(&public.spki_der, b"something else", &sig.der),
            Err(KeyError::BadSignature)
        ));
        let from_pem = public_key_from_pem(&public.pem()).unwrap();
        assert_eq!(from_pem, public.spki_der);
        // The key is stable: a second call returns the same public key.
        assert_eq!(keys.public_key().await.unwrap(), public);
    }
}
