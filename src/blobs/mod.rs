//! Object storage for tenant artefacts (exports, manifests): a small trait with a
//! local-directory implementation for the embedded default ([`local::LocalDir`]) and S3
//! ([`s3::S3Store`]). Both pass the shared [`suite`]; the S3 one runs it against moto.
//!
//! Large objects are written through an [`Upload`] (S3 multipart): bytes go out in parts while
//! they are produced, and the object appears only when the upload completes. An upload that
//! is neither completed nor aborted (the writer crashed) stays incomplete and invisible until
//! [`ObjectStore::abort_uploads`] clears it.
//!
//! Keys are validated here, once: `/`-separated segments of `[A-Za-z0-9._-]`, no empty, `.`
//! or `..` segment, at most 1024 bytes. A key can therefore never escape a store's root or a
//! tenant's prefix.

pub mod local;
pub mod s3;

use async_trait::async_trait;
use tokio::io::AsyncRead;

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
    /// Where `key` is, for people: `s3://bucket/prefix/key` or `file:///dir/key`.
    fn uri(&self, key: &ObjectKey) -> String;
    /// Reads an object as a stream.
    async fn read(&self, key: &ObjectKey) -> Result<Box<dyn AsyncRead + Send + Unpin>, BlobError>;
    /// Starts a streaming upload to `key`.
    async fn begin_upload(&self, key: &ObjectKey) -> Result<Box<dyn Upload>, BlobError>;
    /// The keys of incomplete uploads under `prefix`.
    async fn incomplete_uploads(&self, prefix: &ObjectKey) -> Result<Vec<ObjectKey>, BlobError>;
    /// Aborts every incomplete upload under `prefix`, returning how many there were.
    async fn abort_uploads(&self, prefix: &ObjectKey) -> Result<usize, BlobError>;
}

/// A streaming upload: [`Upload::write`] as often as needed, then complete or abort.
#[async_trait]
pub trait Upload: Send {
    /// Appends bytes; the store buffers them into parts.
    async fn write(&mut self, data: &[u8]) -> Result<(), BlobError>;
    /// Makes the object visible with everything written.
    async fn complete(self: Box<Self>) -> Result<ObjectInfo, BlobError>;
    async fn abort(self: Box<Self>) -> Result<(), BlobError>;
}

impl ObjectKey {
    /// `self/<rest>`: a key below this one.
    pub fn join(&self, rest: &str) -> Result<ObjectKey, BlobError> {
        ObjectKey::new(format!("{}/{rest}", self.0))
    }
}

/// The shared suite every [`ObjectStore`] implementation must pass.
#[doc(hidden)]
pub mod suite {
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
        assert!(matches!(
            store.read(&a).await.map(|_| ()),
            Err(BlobError::NotFound(_))
        ));
        for k in ["tenants/t1/manifest.json", "tenants/t2/manifest.json"] {
            store.delete(&key(k)).await.unwrap();
        }
    }

    /// Streaming uploads: several parts in, one object out; aborted and abandoned uploads
    /// leave no object, and `abort_uploads` clears the abandoned ones.
    pub async fn streams_uploads(store: &dyn ObjectStore) {
        use tokio::io::AsyncReadExt;
        let big = key("tenants/t9/exports/e1/dump");
        // 12 MiB of a pattern in 1 MiB writes: more than one S3 part.
        let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let mut up = store.begin_upload(&big).await.unwrap();
        for _ in 0..12 {
            up.write(&chunk).await.unwrap();
        }
        assert!(matches!(store.get(&big).await, Err(BlobError::NotFound(_))));
        let info = up.complete().await.unwrap();
        assert_eq!(info.size, 12 * chunk.len() as u64);
        let mut read = Vec::new();
        store
            .read(&big)
            .await
            .unwrap()
            .read_to_end(&mut read)
            .await
            .unwrap();
        assert_eq!(read.len(), 12 * chunk.len());
        assert!(read.chunks(chunk.len()).all(|c| c == chunk.as_slice()));

        let aborted = key("tenants/t9/exports/e2/dump");
        let mut up = store.begin_upload(&aborted).await.unwrap();
        up.write(b"partial").await.unwrap();
        up.abort().await.unwrap();
        assert!(matches!(
            store.get(&aborted).await,
            Err(BlobError::NotFound(_))
        ));

        // A writer that vanishes leaves an incomplete upload, visible only as such.
        let abandoned = key("tenants/t9/exports/e3/dump");
        let mut up = store.begin_upload(&abandoned).await.unwrap();
        up.write(&chunk).await.unwrap();
        drop(up);
        let prefix = key("tenants/t9/exports/e3");
        assert_eq!(
            store.incomplete_uploads(&prefix).await.unwrap(),
            vec![abandoned.clone()]
        );
        assert!(
            store
                .incomplete_uploads(&key("tenants/t9/exports/e1"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.abort_uploads(&prefix).await.unwrap(), 1);
        assert!(store.incomplete_uploads(&prefix).await.unwrap().is_empty());
        assert!(matches!(
            store.get(&abandoned).await,
            Err(BlobError::NotFound(_))
        ));
        let listed: Vec<ObjectKey> = store
            .list(&key("tenants/t9"))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(listed, vec![big.clone()]);
        store.delete(&big).await.unwrap();
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
