//! Objects as files under a root directory (the embedded default). A put writes a temporary
//! file, syncs it and renames it into place, so a crash never leaves a torn object.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{BlobError, ObjectInfo, ObjectKey, ObjectStore};

pub struct LocalDir {
    root: PathBuf,
}

fn io(e: std::io::Error) -> BlobError {
    BlobError::Io(e.to_string())
}

impl LocalDir {
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root).map_err(io)?;
        Ok(LocalDir {
            root: root.to_owned(),
        })
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        // Validated keys have no empty, "." or ".." segment: the path stays under the root.
        self.root.join(key.as_str())
    }
}

#[async_trait]
impl ObjectStore for LocalDir {
    async fn put(&self, key: &ObjectKey, data: &[u8]) -> Result<ObjectInfo, BlobError> {
        let path = self.path(key);
        let dir = path.parent().expect("keys have a file name");
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        // Temporary names start with '.', which no key segment can: never listed as objects.
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        f.write_all(data).await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
        drop(f);
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        Ok(ObjectInfo {
            key: key.clone(),
            size: data.len() as u64,
        })
    }

    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, BlobError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(key.as_str().to_owned()))
            }
            Err(e) => Err(io(e)),
        }
    }

    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>, BlobError> {
        let mut out = Vec::new();
        let mut pending = vec![self.path(prefix)];
        while let Some(dir) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(io(e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(io)? {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let meta = entry.metadata().await.map_err(io)?;
                if meta.is_dir() {
                    pending.push(entry.path());
                } else {
                    let rel = entry
                        .path()
                        .strip_prefix(&self.root)
                        .map_err(|e| BlobError::Io(e.to_string()))?
                        .to_string_lossy()
                        .into_owned();
                    out.push(ObjectInfo {
                        key: ObjectKey::new(rel)?,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), BlobError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let root = std::env::temp_dir().join(format!("tenantd-blobs-{}", uuid::Uuid::new_v4()));
        let store = LocalDir::open(&root).unwrap();
        crate::blobs::suite::behaves_like_an_object_store(&store).await;
        std::fs::remove_dir_all(root).unwrap();
    }
}
