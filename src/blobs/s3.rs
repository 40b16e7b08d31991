//! Objects in an S3 bucket (`aws-sdk-s3`), or any S3-compatible service.
//!
//! Every key is stored under the configured `prefix`. Uploads are S3 multipart uploads: the
//! writer fills an 8 MiB part while the previous part is in flight, so memory stays at two
//! parts whatever the object's size. Listing incomplete uploads and aborting them uses
//! ListMultipartUploads/AbortMultipartUpload under the key prefix; a bucket lifecycle rule
//! (AbortIncompleteMultipartUpload) is still advisable as a backstop (see docs/export.md).

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncRead;
use tokio::task::JoinHandle;

use super::{BlobError, ObjectInfo, ObjectKey, ObjectStore, Upload};

/// Size of every part but the last (S3 needs at least 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

fn error<E>(e: aws_sdk_s3::error::SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    BlobError::Io(format!("s3: {}", crate::aws::error_message(&e)))
}

impl S3Store {
    /// Connects and checks that the bucket is reachable.
    pub async fn connect(
        sdk: &aws_config::SdkConfig,
        bucket: &str,
        prefix: &str,
        endpoint_url: Option<&str>,
        force_path_style: bool,
    ) -> Result<Self, BlobError> {
        if !prefix.is_empty()
            && (!prefix.ends_with('/') || ObjectKey::new(prefix.trim_end_matches('/')).is_err())
        {
            return Err(BlobError::InvalidKey(format!(
                "s3 prefix {prefix:?} must be empty or key segments followed by '/'"
            )));
        }
        let mut config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(force_path_style)
            .interceptor(crate::aws::CloudMetrics);
        if let Some(url) = endpoint_url {
            config = config.endpoint_url(url);
        }
        let client = Client::from_conf(config.build());
        client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| {
                BlobError::Io(format!(
                    "bucket {bucket}: {}",
                    crate::aws::error_message(&e)
                ))
            })?;
        Ok(S3Store {
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    fn full(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// Turns a stored key back into an object key (None for keys outside the prefix).
    fn strip(&self, full: &str) -> Option<ObjectKey> {
        full.strip_prefix(&self.prefix)
            .and_then(|k| ObjectKey::new(k).ok())
    }

    /// Incomplete multipart uploads under `prefix`: (key, upload id).
    async fn uploads(&self, prefix: &ObjectKey) -> Result<Vec<(ObjectKey, String)>, BlobError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(format!("{}/", self.full(prefix)))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(error)?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key().and_then(|k| self.strip(k)), u.upload_id())
                {
                    out.push((key, id.to_owned()));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
        out.sort();
        Ok(out)
    }
}

struct S3Upload {
    client: Client,
    bucket: String,
    key: ObjectKey,
    full_key: String,
    upload_id: String,
    buf: Vec<u8>,
    parts: Vec<CompletedPart>,
    in_flight: Option<JoinHandle<Result<CompletedPart, BlobError>>>,
    size: u64,
}

impl S3Upload {
    /// Sends the buffered bytes as the next part, after the previous part has landed.
    async fn flush_part(&mut self) -> Result<(), BlobError> {
        self.wait_in_flight().await?;
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        let number = self.parts.len() as i32 + 1;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(body));
        self.in_flight = Some(tokio::spawn(async move {
            let out = request.send().await.map_err(error)?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                .build())
        }));
        Ok(())
    }

    async fn wait_in_flight(&mut self) -> Result<(), BlobError> {
        if let Some(task) = self.in_flight.take() {
            let part = task
                .await
                .map_err(|e| BlobError::Io(format!("s3 part upload: {e}")))??;
            self.parts.push(part);
        }
        Ok(())
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, mut data: &[u8]) -> Result<(), BlobError> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let take = (PART_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == PART_SIZE {
                self.flush_part().await?;
            }
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
        // The last part may be short (or the only part empty).
        if !self.buf.is_empty() || self.parts.is_empty() && self.in_flight.is_none() {
            self.flush_part().await?;
        }
        self.wait_in_flight().await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(error)?;
        Ok(ObjectInfo {
            key: self.key.clone(),
            size: self.size,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<(), BlobError> {
        let _ = self.wait_in_flight().await;
        abort_upload(&self.client, &self.bucket, &self.full_key, &self.upload_id).await
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &ObjectKey, data: &[u8]) -> Result<ObjectInfo, BlobError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .body(ByteStream::from(data.to_vec()))
            .send()
            .await
            .map_err(error)?;
        Ok(ObjectInfo {
            key: key.clone(),
            size: data.len() as u64,
        })
    }

    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, BlobError> {
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut self.read(key).await?, &mut out)
            .await
            .map_err(|e| BlobError::Io(format!("s3: {e}")))?;
        Ok(out)
    }

    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>, BlobError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}/", self.full(prefix)))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for o in page.map_err(error)?.contents() {
                if let Some(key) = o.key().and_then(|k| self.strip(k)) {
                    out.push(ObjectInfo {
                        key,
                        size: o.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes the object and, in a bucket with versioning, every version of it and every
    /// delete marker: a deletion certificate that says the object is gone must not leave an
    /// older version readable. A bucket whose versions tenantd may not delete is refused,
    /// naming the bucket and the permission.
    async fn delete(&self, key: &ObjectKey) -> Result<(), BlobError> {
        let full = self.full(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(error)?;
        let mut versions = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(error)?;
            let ids = page
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id()))
                .chain(
                    page.delete_markers()
                        .iter()
                        .map(|m| (m.key(), m.version_id())),
                );
            for (k, id) in ids {
                // The prefix also lists longer keys; and "null" is an unversioned object's.
                if k == Some(full.as_str())
                    && let Some(id) = id.filter(|id| *id != "null")
                {
                    versions.push(id.to_owned());
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
        }
        for id in versions {
            let deleted = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .version_id(&id)
                .send()
                .await;
            match deleted {
                Ok(_) => {}
                Err(e) if e.code() == Some("AccessDenied") => {
                    return Err(BlobError::Io(format!(
                        "s3: bucket {} keeps versions of {full} and tenantd may not delete \
                         them (s3:DeleteObjectVersion): a deletion would leave the tenant's \
                         data readable",
                        self.bucket
                    )));
                }
                Err(e) => return Err(error(e)),
            }
        }
        Ok(())
    }

    fn uri(&self, key: &ObjectKey) -> String {
        format!("s3://{}/{}", self.bucket, self.full(key))
    }

    async fn read(&self, key: &ObjectKey) -> Result<Box<dyn AsyncRead + Send + Unpin>, BlobError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(out) => Ok(Box::new(out.body.into_async_read())),
            Err(e) if e.code() == Some("NoSuchKey") => {
                Err(BlobError::NotFound(key.as_str().to_owned()))
            }
            Err(e) => Err(error(e)),
        }
    }

    async fn begin_upload(&self, key: &ObjectKey) -> Result<Box<dyn Upload>, BlobError> {
        let full_key = self.full(key);
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(error)?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| BlobError::Io("s3: CreateMultipartUpload returned no id".into()))?
            .to_owned();
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.clone(),
            full_key,
            upload_id,
            buf: Vec::with_capacity(PART_SIZE),
            parts: Vec::new(),
            in_flight: None,
            size: 0,
        }))
    }

    async fn incomplete_uploads(&self, prefix: &ObjectKey) -> Result<Vec<ObjectKey>, BlobError> {
        Ok(self
            .uploads(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    async fn abort_uploads(&self, prefix: &ObjectKey) -> Result<usize, BlobError> {
        let uploads = self.uploads(prefix).await?;
        for (key, id) in &uploads {
            abort_upload(&self.client, &self.bucket, &self.full(key), id).await?;
        }
        Ok(uploads.len())
    }
}

/// Aborts one multipart upload; one already gone counts as aborted.
async fn abort_upload(
    client: &Client,
    bucket: &str,
    full_key: &str,
    upload_id: &str,
) -> Result<(), BlobError> {
    match client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(full_key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
        Err(e) => Err(error(e)),
    }
}
