//! Local key service for the embedded default.
//!
//! [`LocalKeys`] is the master key: 32 bytes in a file readable only by the service user.
//! [`LocalKms`] keeps tenant keys and the signing key in the registry table `local_keys`, their
//! material sealed by the master key under a context naming the key, and gives them the
//! semantics of KMS keys: an alias per tenant, data keys wrapped by the tenant key under an
//! encryption context, and deletion that disables a key at once and erases its material once
//! the waiting period is over.
//!
//! Sealed layout (master key and tenant keys alike): version byte (1), 12-byte random nonce,
//! AES-256-GCM ciphertext with the 16-byte tag; the encryption context is the AAD.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePublicKey;
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{
    DataKey, EncryptionContext, KeyError, KeyInfo, KeyService, KeyState, PublicKey, Sealed,
    Signature, check_signable, context_bytes,
};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

pub struct LocalKeys {
    cipher: Aes256Gcm,
    key_id: String,
}

impl LocalKeys {
    /// Opens the master key file, creating it with a fresh random key (mode 0600) if absent.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        // A key group or others may read is refused, not used.
        let existing = crate::secret_file::read(path)
            .map_err(|e| KeyError::Config(format!("master key: {e}")))?;
        let key = match existing {
            Some(bytes) => bytes,
            None => {
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        KeyError::Config(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                crate::secret_file::create(path, &key).map_err(|e| {
                    KeyError::Config(format!("cannot create {}: {e}", path.display()))
                })?;
                key
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

/// AES-256-GCM with a random nonce, in the sealed layout above.
fn seal_with(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| KeyError::Config("encryption failed".into()))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_with(cipher: &Aes256Gcm, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
    if data.len() < 1 + NONCE_LEN || data[0] != VERSION {
        return Err(KeyError::Undecryptable);
    }
    cipher
        .decrypt(
            Nonce::from_slice(&data[1..1 + NONCE_LEN]),
            Payload {
                msg: &data[1 + NONCE_LEN..],
                aad,
            },
        )
        .map_err(|_| KeyError::Undecryptable)
}

impl LocalKeys {
    /// Seals under the master key; `context` is the AAD.
    pub fn seal(&self, plaintext: &[u8], context: &EncryptionContext) -> Result<Sealed, KeyError> {
        Ok(Sealed {
            key_id: self.key_id.clone(),
            ciphertext: seal_with(&self.cipher, plaintext, &context_bytes(context))?,
        })
    }

    pub fn open(&self, sealed: &Sealed, context: &EncryptionContext) -> Result<Vec<u8>, KeyError> {
        if sealed.key_id != self.key_id {
            return Err(KeyError::Undecryptable);
        }
        open_with(&self.cipher, &sealed.ciphertext, &context_bytes(context))
    }
}

/// Tenant keys and the signing key, kept in the registry (`local_keys`) sealed by the master
/// key.
pub struct LocalKms {
    master: LocalKeys,
    pool: PgPool,
    alias_prefix: String,
}

const SIGNING_ALIAS: &str = "alias/tenantd-signing";

#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    state: String,
    material: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    deletion_after: Option<DateTime<Utc>>,
}

impl KeyRow {
    fn info(&self) -> KeyInfo {
        KeyInfo {
            key_id: self.key_id.clone(),
            state: match self.state.as_str() {
                "enabled" => KeyState::Enabled,
                "pending_deletion" => KeyState::PendingDeletion,
                _ => KeyState::Destroyed,
            },
            deletion_date: self.deletion_after,
        }
    }
}

fn db(e: sqlx::Error) -> KeyError {
    KeyError::Unavailable(format!("registry: {e}"))
}

fn material_context(key_id: &str) -> EncryptionContext {
    [
        ("purpose".to_owned(), "local-key".to_owned()),
        ("key_id".to_owned(), key_id.to_owned()),
    ]
    .into()
}

impl LocalKms {
    pub fn new(master: LocalKeys, pool: PgPool) -> Self {
        LocalKms {
            master,
            pool,
            alias_prefix: "alias/tenantd/".to_owned(),
        }
    }

    fn alias(&self, tenant_id: Uuid) -> String {
        format!("{}{tenant_id}", self.alias_prefix)
    }

    /// Loads a key by id or alias, first erasing its material if its deletion is due (the
    /// sweep does it for every key; this covers a read between two sweeps).
    async fn load(&self, id_or_alias: &str) -> Result<Option<KeyRow>, KeyError> {
        sqlx::query(
            "UPDATE local_keys SET state = 'destroyed', material = NULL \
             WHERE (key_id = $1 OR alias = $1) AND state = 'pending_deletion' \
               AND deletion_after <= now()",
        )
        .bind(id_or_alias)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        sqlx::query_as(
            "SELECT key_id, state, material, public_key, deletion_after FROM local_keys \
             WHERE key_id = $1 OR alias = $1",
        )
        .bind(id_or_alias)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }

    /// Creates a key under `alias` unless one exists; returns the alias's key either way.
    async fn create(
        &self,
        alias: &str,
        spec: &str,
        material: &[u8],
        public_key: Option<&[u8]>,
        tenant_id: Option<Uuid>,
    ) -> Result<KeyRow, KeyError> {
        let key_id = format!("local:key/{}", Uuid::new_v4());
        let sealed = self.master.seal(material, &material_context(&key_id))?;
        sqlx::query(
            "INSERT INTO local_keys (key_id, alias, spec, state, material, public_key, tenant_id) \
             VALUES ($1, $2, $3, 'enabled', $4, $5, $6) ON CONFLICT (alias) DO NOTHING",
        )
        .bind(&key_id)
        .bind(alias)
        .bind(spec)
        .bind(&sealed.ciphertext)
        .bind(public_key)
        .bind(tenant_id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        self.load(alias)
            .await?
            .ok_or_else(|| KeyError::NotFound(alias.to_owned()))
    }

    /// The key's material, if the key may be used.
    fn usable(&self, row: &KeyRow) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let info = row.info();
        match (&row.material, info.state) {
            (Some(sealed), KeyState::Enabled) => Ok(Zeroizing::new(self.master.open(
                &Sealed {
                    key_id: self.master.key_id.clone(),
                    ciphertext: sealed.clone(),
                },
                &material_context(&row.key_id),
            )?)),
            (_, state) => Err(KeyError::Unusable {
                key_id: row.key_id.clone(),
                state,
            }),
        }
    }

    async fn tenant_cipher(&self, key_id: &str) -> Result<Aes256Gcm, KeyError> {
        let row = self
            .load(key_id)
            .await?
            .ok_or_else(|| KeyError::NotFound(key_id.to_owned()))?;
        let material = self.usable(&row)?;
        Aes256Gcm::new_from_slice(&material).map_err(|_| KeyError::Config("bad key".into()))
    }

    /// The signing key's row, created on first use.
    async fn signing_row(&self) -> Result<KeyRow, KeyError> {
        match self.load(SIGNING_ALIAS).await? {
            Some(row) => Ok(row),
            None => {
                let key = random_signing_key();
                let public = key
                    .verifying_key()
                    .to_public_key_der()
                    .map_err(|e| KeyError::Config(e.to_string()))?;
                self.create(
                    SIGNING_ALIAS,
                    "p256",
                    &key.to_bytes(),
                    Some(public.as_bytes()),
                    None,
                )
                .await
            }
        }
    }

    async fn signing_key(&self) -> Result<(String, SigningKey), KeyError> {
        let row = self.signing_row().await?;
        let material = self.usable(&row)?;
        let key = SigningKey::from_slice(&material)
            .map_err(|_| KeyError::Config("stored signing key is not a P-256 key".into()))?;
        Ok((row.key_id, key))
    }
}

fn random_signing_key() -> SigningKey {
    loop {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        // Fails only for zero or values >= the group order: vanishingly rare, draw again.
        if let Ok(key) = SigningKey::from_slice(bytes.as_ref()) {
            return key;
        }
    }
}

#[async_trait]
impl KeyService for LocalKms {
    async fn seal(
        &self,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        self.master.seal(plaintext, context)
    }

    async fn open(
        &self,
        sealed: &Sealed,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, KeyError> {
        self.master.open(sealed, context)
    }

    async fn create_tenant_key(&self, tenant_id: Uuid) -> Result<KeyInfo, KeyError> {
        let alias = self.alias(tenant_id);
        if let Some(row) = self.load(&alias).await? {
            return Ok(row.info());
        }
        let mut material = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(material.as_mut());
        Ok(self
            .create(&alias, "aes256", material.as_ref(), None, Some(tenant_id))
            .await?
            .info())
    }

    async fn tenant_key(&self, tenant_id: Uuid) -> Result<Option<KeyInfo>, KeyError> {
        Ok(self.load(&self.alias(tenant_id)).await?.map(|r| r.info()))
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyInfo, KeyError> {
        self.load(key_id)
            .await?
            .map(|r| r.info())
            .ok_or_else(|| KeyError::NotFound(key_id.to_owned()))
    }

    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, KeyError> {
        let cipher = self.tenant_cipher(key_id).await?;
        let mut plaintext = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(plaintext.as_mut());
        let wrapped = seal_with(&cipher, plaintext.as_ref(), &context_bytes(context))?;
        Ok(DataKey {
            key_id: key_id.to_owned(),
            plaintext,
            wrapped,
        })
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let cipher = self.tenant_cipher(key_id).await?;
        let plain = Zeroizing::new(open_with(&cipher, wrapped, &context_bytes(context))?);
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != out.len() {
            return Err(KeyError::Undecryptable);
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }

    async fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_days: u32,
    ) -> Result<KeyInfo, KeyError> {
        let row = self
            .load(key_id)
            .await?
            .ok_or_else(|| KeyError::NotFound(key_id.to_owned()))?;
        sqlx::query(
            "UPDATE local_keys SET state = 'pending_deletion', \
                 deletion_after = now() + make_interval(days => $2) \
             WHERE key_id = $1 AND state = 'enabled'",
        )
        .bind(&row.key_id)
        .bind(pending_days as i32)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        self.describe_key(&row.key_id).await
    }

    async fn sign(&self, message: &[u8]) -> Result<Signature, KeyError> {
        use p256::ecdsa::signature::Signer;
        check_signable(message)?;
        let (key_id, key) = self.signing_key().await?;
        let sig: p256::ecdsa::Signature = key.sign(message);
        Ok(Signature {
            key_id,
            der: sig.to_der().as_bytes().to_vec(),
        })
    }

    async fn destroy_due_keys(&self) -> Result<u64, KeyError> {
        let done = sqlx::query(
            "UPDATE local_keys SET state = 'destroyed', material = NULL \
             WHERE state = 'pending_deletion' AND deletion_after <= now()",
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn public_key(&self) -> Result<PublicKey, KeyError> {
        let row = self.signing_row().await?;
        Ok(PublicKey {
            key_id: row.key_id,
            spki_der: row
                .public_key
                .ok_or_else(|| KeyError::Config("signing key has no public key".into()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn another_master_key_cannot_open() {
        let a = LocalKeys::from_key(&[1u8; 32]).unwrap();
        let b = LocalKeys::from_key(&[2u8; 32]).unwrap();
        let ctx = EncryptionContext::new();
        let sealed = a.seal(b"x", &ctx).unwrap();
        let forged = Sealed {
            key_id: "local:whatever".into(),
            ..sealed.clone()
        };
        assert!(b.open(&sealed, &ctx).is_err());
        assert!(a.open(&forged, &ctx).is_err());
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
