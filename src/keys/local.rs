//! Local key provider for the embedded default: AES-256-GCM under a 32-byte master key kept
//! in a file readable only by the service user. Ciphertext layout: version byte (1),
//! 12-byte random nonce, ciphertext with the 16-byte tag. The encryption context is the AAD.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use rand::RngCore;

use super::{EncryptionContext, KeyError, KeyProvider, Sealed, context_bytes};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

pub struct LocalKeys {
    cipher: Aes256Gcm,
    key_id: String,
}

impl LocalKeys {
    /// Opens the master key file, creating it with a fresh random key (mode 0600) if absent.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let key = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        KeyError::Config(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| {
                        KeyError::Config(format!("cannot create {}: {e}", path.display()))
                    })?;
                f.write_all(&key).and_then(|_| f.sync_all()).map_err(|e| {
                    KeyError::Config(format!("cannot write {}: {e}", path.display()))
                })?;
                key
            }
            Err(e) => {
                return Err(KeyError::Config(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Self::from_key(&key)
    }

    pub fn from_key(key: &[u8]) -> Result<Self, KeyError> {
        if key.len() != 32 {
            return Err(KeyError::Config(format!(
                "master key must be 32 bytes, found {}",
                key.len()
            )));
        }
        // The key id names the key without revealing it: a truncated hash.
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key);
        Ok(LocalKeys {
            cipher: Aes256Gcm::new_from_slice(key).expect("32-byte key"),
            key_id: format!("local:{}", hex::encode(&digest[..8])),
        })
    }
}

#[async_trait]
impl KeyProvider for LocalKeys {
    async fn seal(
        &self,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = context_bytes(context);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Config("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(Sealed {
            key_id: self.key_id.clone(),
            ciphertext: out,
        })
    }

    async fn open(
        &self,
        sealed: &Sealed,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, KeyError> {
        let data = &sealed.ciphertext;
        if sealed.key_id != self.key_id || data.len() < 1 + NONCE_LEN || data[0] != VERSION {
            return Err(KeyError::Undecryptable);
        }
        let aad = context_bytes(context);
        self.cipher
            .decrypt(
                Nonce::from_slice(&data[1..1 + NONCE_LEN]),
                Payload {
                    msg: &data[1 + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let keys = LocalKeys::from_key(&[7u8; 32]).unwrap();
        crate::keys::suite::round_trip_and_binding(&keys).await;
    }

    #[tokio::test]
    async fn another_master_key_cannot_open() {
        let a = LocalKeys::from_key(&[1u8; 32]).unwrap();
        let b = LocalKeys::from_key(&[2u8; 32]).unwrap();
        let ctx = EncryptionContext::new();
        let sealed = a.seal(b"x", &ctx).await.unwrap();
        let forged = Sealed {
            key_id: "local:whatever".into(),
            ..sealed.clone()
        };
        assert!(b.open(&sealed, &ctx).await.is_err());
        assert!(a.open(&forged, &ctx).await.is_err());
    }

    #[test]
    fn creates_the_master_key_file_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tenantd-keys-{}", uuid::Uuid::new_v4()));
        let path = dir.join("master.key");
        let a = LocalKeys::open_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = LocalKeys::open_or_create(&path).unwrap();
        assert_eq!(a.key_id, b.key_id);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
