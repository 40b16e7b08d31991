//! Object storage for tenant artefacts (exports, manifests): a small trait with a
//! local-directory implementation for the embedded default. An S3 implementation plugs in
//! behind the same trait and must pass the same suite (`suite` below).
//!
//! Keys are validated here, once: `/`-separated segments of `[A-Za-z0-9._-]`, no empty, `.`
//! or `..` segment, at most 1024 bytes. A key can therefore never escape a store's root or a
//! tenant's prefix.

pub mod local;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    #[error("object {0:?} not found")]
    NotFound(String),
    #[error("object store: {0}")]
    Io(String),
}

/// A validated object key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

pub const MAX_KEY_LEN: usize = 1024;

impl ObjectKey {
    pub fn new(key: impl Into<String>) -> Result<Self, BlobError> {
        let key = key.into();
        let valid = !key.is_empty()
            && key.len() <= MAX_KEY_LEN
            && key.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        if valid {
            Ok(ObjectKey(key))
        } else {
            Err(BlobError::InvalidKey(key.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: ObjectKey,
    pub size: u64,
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `data` under `key`, replacing any previous object, atomically: readers see the
    /// old object or the new one, never a part.
    async fn put(&self, key: &ObjectKey, data: &[u8]) -> Result<ObjectInfo, BlobError>;
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, BlobError>;
    /// Every object whose key starts with `prefix` (a key prefix ending in `/`), sorted.
    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>, BlobError>;
    /// Removes the object; removing a missing object succeeds (deletion is idempotent).
    async fn delete(&self, key: &ObjectKey) -> Result<(), BlobError>;
}

/// The shared suite every [`ObjectStore`] implementation must pass.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    fn key(s: &str) -> ObjectKey {
        ObjectKey::new(s).unwrap()
    }

    pub async fn behaves_like_an_object_store(store: &dyn ObjectStore) {
        let a = key("tenants/t1/exports/e1.sql.enc");
        let info = store.put(&a, b"hello").await.unwrap();
        assert_eq!(info.size, 5);
        assert_eq!(store.get(&a).await.unwrap(), b"hello");
        store.put(&a, b"replaced").await.unwrap();
        assert_eq!(store.get(&a).await.unwrap(), b"replaced");
        store
            .put(&key("tenants/t1/manifest.json"), b"{}")
            .await
            .unwrap();
        store
            .put(&key("tenants/t2/manifest.json"), b"{}")
            .await
            .unwrap();

        let listed: Vec<String> = store
            .list(&key("tenants/t1"))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.as_str().to_owned())
            .collect();
        assert_eq!(
            listed,
            ["tenants/t1/exports/e1.sql.enc", "tenants/t1/manifest.json"]
        );
        assert!(store.list(&key("tenants/none")).await.unwrap().is_empty());

        store.delete(&a).await.unwrap();
        store.delete(&a).await.unwrap();
        assert!(matches!(store.get(&a).await, Err(BlobError::NotFound(_))));
        assert_eq!(store.list(&key("tenants/t1")).await.unwrap().len(), 1);
    }

    #[test]
    fn keys_cannot_escape() {
        for bad in [
            "", "/abs", "a//b", "a/../b", "..", "./a", "a/", "a b", "a\\b", "é",
        ] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectKey::new("x".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(ObjectKey::new("tenants/6f1c/exports/e-1.sql.zst.enc").is_ok());
    }
}
