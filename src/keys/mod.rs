//! Key service: seals and opens secrets the registry must keep (data-plane credentials) under
//! an encryption context that binds each ciphertext to what it belongs to, so a sealed value
//! copied to another tenant's row does not open.
//!
//! Implementations: [`local::LocalKeys`] (master key file, the embedded default). A KMS-backed
//! provider implements the same trait and runs the same test suite (`tests` below).

pub mod local;

use std::collections::BTreeMap;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Wrong key, wrong context, or a modified ciphertext: all look the same by design.
    #[error("ciphertext cannot be opened with this key and encryption context")]
    Undecryptable,
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

#[async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    async fn seal(&self, plaintext: &[u8], context: &EncryptionContext)
    -> Result<Sealed, KeyError>;
    async fn open(&self, sealed: &Sealed, context: &EncryptionContext)
    -> Result<Vec<u8>, KeyError>;
}

/// Canonical bytes of a context: `k=v` lines sorted by key (BTreeMap order), length-prefixed
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

/// The shared suite every [`KeyProvider`] implementation must pass.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    fn ctx(tenant: &str) -> EncryptionContext {
        [("tenant_id".to_owned(), tenant.to_owned())].into()
    }

    pub async fn round_trip_and_binding(keys: &dyn KeyProvider) {
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
        assert!(matches!(
            keys.open(&tampered, &ctx("a")).await,
            Err(KeyError::Undecryptable)
        ));
        // Sealing twice gives different ciphertexts (fresh nonce).
        let again = keys.seal(b"s3cret", &ctx("a")).await.unwrap();
        assert_ne!(again.ciphertext, sealed.ciphertext);
    }
}
