//! S3 and S3-compatible stores (`aws-sdk-s3`): AWS, SeaweedFS, MinIO, Ceph, R2…
//!
//! Objects live at `PREFIX + key`; staged parts at `PREFIX + .staging/UPLOAD/PART`.
//! A put streams the body into a multipart upload of [`PART_BYTES`] parts (a small
//! body is one PutObject), so memory stays at one part per upload whatever the
//! size; S3 makes the object visible only on CompleteMultipartUpload, which is
//! the atomic commit. Completing a staged upload streams the parts, in order,
//! through the same path (the proxy hashes every byte it commits).

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{
    check_key, check_name, ByteRange, ByteStream, CacheBackend, Hashing, ObjectMeta, ObjectReader,
    StoredObject,
};
use crate::error::{Error, Result};
use crate::server::S3Config;

/// Size of each multipart part (S3's minimum is 5 MiB except for the last).
pub const PART_BYTES: usize = 16 * 1024 * 1024;
const STAGING: &str = ".staging/";

#[derive(Debug, Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    prefix: String,
}

fn s3_error(context: &str, error: impl std::fmt::Display) -> Error {
    Error::Backend(format!("s3 {context}: {error}"))
}

/// The full error chain of an SDK error (its Display says only "service error").
fn describe<E: std::error::Error>(error: &E) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

impl S3Backend {
    /// A client for `config`; checks the bucket is reachable (creating it if missing).
    pub async fn connect(config: &S3Config) -> Result<Self> {
        let access_key = config
            .access_key_id
            .clone()
            .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok())
            .ok_or_else(|| Error::Config {
                variable: "NIMBUS_CACHE_S3_ACCESS_KEY_ID".into(),
                message: "must be set (or AWS_ACCESS_KEY_ID) for the s3 backend".into(),
            })?;
        let secret_key = config
            .secret_access_key
            .as_ref()
            .map(|s| s.expose().to_string())
            .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok())
            .ok_or_else(|| Error::Config {
                variable: "NIMBUS_CACHE_S3_SECRET_ACCESS_KEY".into(),
                message: "must be set (or AWS_SECRET_ACCESS_KEY) for the s3 backend".into(),
            })?;
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(
                access_key, secret_key, None, None, "nimbus",
            ))
            .force_path_style(config.path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let backend = S3Backend {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
        };
        backend.ensure_bucket().await?;
        Ok(backend)
    }

    async fn ensure_bucket(&self) -> Result<()> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                let text = describe(&error);
                if text.contains("BucketAlreadyOwnedByYou") || text.contains("BucketAlreadyExists")
                {
                    Ok(())
                } else {
                    Err(s3_error(&format!("bucket {}", self.bucket), text))
                }
            }
        }
    }

    fn object_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn part_key(&self, upload: &str, part: &str) -> Result<String> {
        check_name("upload", upload)?;
        check_name("part", part)?;
        Ok(format!("{}{STAGING}{upload}/{part}", self.prefix))
    }

    /// Streams `body` to `full_key`: one PutObject when it fits in a part, else a
    /// multipart upload (aborted on any error, so nothing half-written appears).
    async fn upload(&self, full_key: &str, mut body: ByteStream) -> Result<StoredObject> {
        let mut hashing = Hashing::default();
        let mut buffer = BytesMut::with_capacity(PART_BYTES);
        let mut upload_id: Option<String> = None;
        let mut parts = Vec::new();
        let result: Result<()> = async {
            loop {
                let chunk = match body.next().await {
                    Some(Ok(chunk)) => Some(chunk),
                    Some(Err(error)) => return Err(Error::Truncated(error.to_string())),
                    None => None,
                };
                let done = chunk.is_none();
                if let Some(chunk) = chunk {
                    hashing.update(&chunk);
                    buffer.extend_from_slice(&chunk);
                }
                if buffer.len() >= PART_BYTES || (done && upload_id.is_some() && !buffer.is_empty())
                {
                    let id = match &upload_id {
                        Some(id) => id.clone(),
                        None => {
                            let created = self
                                .client
                                .create_multipart_upload()
                                .bucket(&self.bucket)
                                .key(full_key)
                                .send()
                                .await
                                .map_err(|e| s3_error("create multipart upload", describe(&e)))?;
                            let id = created
                                .upload_id()
                                .ok_or_else(|| s3_error("create multipart upload", "no upload id"))?
                                .to_string();
                            upload_id = Some(id.clone());
                            id
                        }
                    };
                    let number = parts.len() as i32 + 1;
                    let take = buffer.len().min(PART_BYTES);
                    let part: Bytes = buffer.split_to(take).freeze();
                    let uploaded = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(full_key)
                        .upload_id(&id)
                        .part_number(number)
                        .body(S3Body::from(part))
                        .send()
                        .await
                        .map_err(|e| s3_error("upload part", describe(&e)))?;
                    parts.push(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(uploaded.e_tag().map(str::to_string))
                            .build(),
                    );
                }
                if done {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(error) = result {
            if let Some(id) = &upload_id {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full_key)
                    .upload_id(id)
                    .send()
                    .await;
            }
            return Err(error);
        }
        match upload_id {
            None => {
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(full_key)
                    .body(S3Body::from(buffer.freeze()))
                    .send()
                    .await
                    .map_err(|e| s3_error("put object", describe(&e)))?;
            }
            Some(id) => {
                let completed = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full_key)
                    .upload_id(&id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                if let Err(error) = completed {
                    let _ = self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(full_key)
                        .upload_id(&id)
                        .send()
                        .await;
                    return Err(s3_error("complete multipart upload", describe(&error)));
                }
            }
        }
        Ok(hashing.finish())
    }

    async fn list_full(&self, full_prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(full_prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| s3_error("list objects", describe(&e)))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    last_modified_millis: object
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                });
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() || page.is_truncated() != Some(true) {
                break;
            }
        }
        Ok(out)
    }

    fn body_stream(body: S3Body) -> ByteStream {
        Box::pin(futures::stream::unfold(Some(body), |state| async move {
            let mut body = state?;
            match body.next().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(body))),
                Some(Err(error)) => Some((Err(std::io::Error::other(error.to_string())), None)),
                None => None,
            }
        }))
    }
}

#[async_trait]
impl CacheBackend for S3Backend {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<StoredObject> {
        let full_key = self.object_key(key)?;
        self.upload(&full_key, body).await
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<ObjectReader> {
        let full_key = self.object_key(key)?;
        let size = match self.head(key).await? {
            Some(meta) => meta.size,
            None => return Err(Error::NotFound(key.to_string())),
        };
        let (start, end) = match range {
            None => (0, size),
            Some(r) => (r.start.min(size), r.end.min(size)),
        };
        if end <= start {
            return Ok(ObjectReader {
                size,
                body: Box::pin(futures::stream::empty()),
            });
        }
        let mut request = self.client.get_object().bucket(&self.bucket).key(&full_key);
        if range.is_some() {
            request = request.range(format!("bytes={start}-{}", end - 1));
        }
        let object = request.send().await.map_err(|e| {
            let text = describe(&e);
            if text.contains("NoSuchKey") {
                Error::NotFound(key.to_string())
            } else {
                s3_error("get object", text)
            }
        })?;
        Ok(ObjectReader {
            size,
            body: Self::body_stream(object.body),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let full_key = self.object_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: head.content_length().unwrap_or(0).max(0) as u64,
                last_modified_millis: head
                    .last_modified()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
            })),
            Err(error) => {
                let not_found = error.as_service_error().is_some_and(|e| e.is_not_found());
                if not_found
                    || error
                        .raw_response()
                        .is_some_and(|r| r.status().as_u16() == 404)
                {
                    Ok(None)
                } else {
                    Err(s3_error("head object", describe(&error)))
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full_key = self.object_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(|e| s3_error("delete object", describe(&e)))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let staging = format!("{}{STAGING}", self.prefix);
        let mut objects: Vec<ObjectMeta> = self
            .list_full(&full_prefix)
            .await?
            .into_iter()
            .filter(|meta| !meta.key.starts_with(&staging))
            .map(|mut meta| {
                meta.key = meta.key[self.prefix.len()..].to_string();
                meta
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn put_part(&self, upload: &str, part: &str, body: ByteStream) -> Result<u64> {
        let key = self.part_key(upload, part)?;
        Ok(self.upload(&key, body).await?.size)
    }

    async fn complete(&self, upload: &str, parts: &[String], key: &str) -> Result<StoredObject> {
        let full_key = self.object_key(key)?;
        let mut part_keys = Vec::with_capacity(parts.len());
        for part in parts {
            part_keys.push(self.part_key(upload, part)?);
        }
        // Check every part is there before starting, so a missing one is a clear error.
        for (part, part_key) in parts.iter().zip(&part_keys) {
            let exists = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(part_key)
                .send()
                .await
                .is_ok();
            if !exists {
                return Err(Error::InvalidInput(format!(
                    "part {part:?} was never uploaded"
                )));
            }
        }
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let joined: ByteStream = Box::pin(
            futures::stream::iter(part_keys)
                .then(move |part_key| {
                    let client = client.clone();
                    let bucket = bucket.clone();
                    async move {
                        match client
                            .get_object()
                            .bucket(&bucket)
                            .key(&part_key)
                            .send()
                            .await
                        {
                            Ok(object) => Self::body_stream(object.body),
                            Err(error) => Box::pin(futures::stream::once(async move {
                                Err(std::io::Error::other(describe(&error)))
                            })) as ByteStream,
                        }
                    }
                })
                .flatten(),
        );
        let stored = self.upload(&full_key, joined).await?;
        self.abort(upload).await?;
        Ok(stored)
    }

    async fn abort(&self, upload: &str) -> Result<()> {
        check_name("upload", upload)?;
        let prefix = format!("{}{STAGING}{upload}/", self.prefix);
        for object in self.list_full(&prefix).await? {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&object.key)
                .send()
                .await
                .map_err(|e| s3_error("delete staged part", describe(&e)))?;
        }
        Ok(())
    }

    async fn list_uploads(&self) -> Result<Vec<String>> {
        let staging = format!("{}{STAGING}", self.prefix);
        let mut uploads: Vec<String> = self
            .list_full(&staging)
            .await?
            .into_iter()
            .filter_map(|meta| {
                meta.key[staging.len()..]
                    .split('/')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        uploads.sort();
        uploads.dedup();
        Ok(uploads)
    }
}
