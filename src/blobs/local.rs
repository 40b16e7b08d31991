//! Objects as files under a root directory (the embedded default). A put writes a temporary
//! file, syncs it and renames it into place, so a crash never leaves a torn object.
//!
//! An upload writes `<root>/.uploads/<key with '/' as '~'>~<upload id>` and is renamed into
//! place on completion; abandoned uploads stay there until aborted. Names starting with `.`
//! are never objects (no key segment may start a file name the same way and be listed).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWriteExt, BufWriter};

use super::{BlobError, ObjectInfo, ObjectKey, ObjectStore, Upload};

const UPLOADS: &str = ".uploads";

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

    /// Uploads in progress: (file, the key it is for).
    async fn uploads(&self, prefix: &ObjectKey) -> Result<Vec<(PathBuf, ObjectKey)>, BlobError> {
        let dir = self.root.join(UPLOADS);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let want = format!("{}~", upload_name(prefix));
        let mut out = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((key, _id)) = name.rsplit_once('~')
                && name.starts_with(&want)
            {
                out.push((entry.path(), ObjectKey::new(key.replace('~', "/"))?));
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }
}

/// Keys have no '~', so '/' → '~' is reversible and the name stays one path segment.
fn upload_name(key: &ObjectKey) -> String {
    key.as_str().replace('/', "~")
}

fn not_found(key: &ObjectKey, e: std::io::Error) -> BlobError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BlobError::NotFound(key.as_str().to_owned())
    } else {
        io(e)
    }
}

struct LocalUpload {
    file: BufWriter<tokio::fs::File>,
    tmp: PathBuf,
    target: PathBuf,
    key: ObjectKey,
    size: u64,
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        self.file.write_all(data).await.map_err(io)?;
        self.size += data.len() as u64;
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
        self.file.flush().await.map_err(io)?;
        self.file.get_ref().sync_all().await.map_err(io)?;
        let dir = self.target.parent().expect("keys have a file name");
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        tokio::fs::rename(&self.tmp, &self.target)
            .await
            .map_err(io)?;
        Ok(ObjectInfo {
            key: self.key.clone(),
            size: self.size,
        })
    }

    async fn abort(self: Box<Self>) -> Result<(), BlobError> {
        drop(self.file);
        match tokio::fs::remove_file(&self.tmp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
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
        tokio::fs::read(self.path(key))
            .await
            .map_err(|e| not_found(key, e))
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
        remove_if_exists(&self.path(key)).await
    }

    fn uri(&self, key: &ObjectKey) -> String {
        format!("file://{}", self.path(key).display())
    }

    async fn read(&self, key: &ObjectKey) -> Result<Box<dyn AsyncRead + Send + Unpin>, BlobError> {
        let f = tokio::fs::File::open(self.path(key))
            .await
            .map_err(|e| not_found(key, e))?;
        Ok(Box::new(f))
    }

    async fn begin_upload(&self, key: &ObjectKey) -> Result<Box<dyn Upload>, BlobError> {
        let dir = self.root.join(UPLOADS);
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        let tmp = dir.join(format!(
            "{}~{}",
            upload_name(key),
            uuid::Uuid::new_v4().simple()
        ));
        let file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        Ok(Box::new(LocalUpload {
            file: BufWriter::with_capacity(1 << 20, file),
            tmp,
            target: self.path(key),
            key: key.clone(),
            size: 0,
        }))
    }

    async fn incomplete_uploads(&self, prefix: &ObjectKey) -> Result<Vec<ObjectKey>, BlobError> {
        Ok(self
            .uploads(prefix)
            .await?
            .into_iter()
            .map(|(_, k)| k)
            .collect())
    }

    async fn abort_uploads(&self, prefix: &ObjectKey) -> Result<usize, BlobError> {
        let uploads = self.uploads(prefix).await?;
        for (path, _) in &uploads {
            remove_if_exists(path).await?;
        }
        Ok(uploads.len())
    }
}

async fn remove_if_exists(path: &Path) -> Result<(), BlobError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
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
        crate::blobs::suite::streams_uploads(&store).await;
        std::fs::remove_dir_all(root).unwrap();
    }
}
