//! S3 and S3-compatible stores (`aws-sdk-s3`): AWS, SeaweedFS, MinIO, Ceph, R2…
//!
//! Objects live at `PREFIX + key`; staged parts at `PREFIX + .staging/UPLOAD/PART`.
//! A put streams the body into a multipart upload of [`PART_BYTES`] parts sent
//! [`UPLOAD_CONCURRENCY`] at a time (a small body is one PutObject), so memory
//! stays at a few parts per upload whatever the size; S3 makes the object
//! visible only on CompleteMultipartUpload, which is the atomic commit.
//!
//! Joining a staged upload: `compose` has the store copy each staged part into
//! one multipart upload (UploadPartCopy, several at once), so no byte crosses
//! the network again; `complete`, for callers that need the whole object's
//! sha256, streams the parts back through the proxy into a new upload.

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::{
    check_key, check_name, ByteRange, ByteStream, CacheBackend, Hashing, ObjectMeta, ObjectReader,
    StoredObject,
};
use crate::error::{Error, Result};
use crate::server::S3Config;

/// Size of each multipart part of a streamed upload (S3's minimum is 5 MiB
/// except for the last; boto3 and the AWS CLI use 8 MiB too).
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one streamed upload in flight at once: memory per upload stays
/// under `(UPLOAD_CONCURRENCY + 1) * PART_BYTES`.
pub const UPLOAD_CONCURRENCY: usize = 4;
/// Server-side part copies (and part HEADs) in flight at once per compose.
const COPY_CONCURRENCY: usize = 8;
/// S3's smallest part but the last, its largest copy source range and its most
/// parts per upload.
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
const MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: usize = 10_000;
const STAGING: &str = ".staging/";

/// `x-amz-copy-source`: the bucket and key, percent-encoded.
fn copy_source(bucket: &str, key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    format!(
        "{}/{}",
        percent_encoding::utf8_percent_encode(bucket, KEEP),
        percent_encoding::utf8_percent_encode(key, KEEP)
    )
}

/// A multipart upload being written: its parts in flight and those done.
struct Multipart<'a> {
    backend: &'a S3Backend,
    key: String,
    id: String,
    in_flight: FuturesUnordered<BoxFuture<'a, Result<CompletedPart>>>,
    done: Vec<CompletedPart>,
    next_number: i32,
}

impl<'a> Multipart<'a> {
    async fn create(backend: &'a S3Backend, key: &str) -> Result<Multipart<'a>> {
        let created = backend
            .client
            .create_multipart_upload()
            .bucket(&backend.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error("create multipart upload", describe(&e)))?;
        let id = created
            .upload_id()
            .ok_or_else(|| s3_error("create multipart upload", "no upload id"))?
            .to_string();
        Ok(Multipart {
            backend,
            key: key.to_string(),
            id,
            in_flight: FuturesUnordered::new(),
            done: Vec::new(),
            next_number: 1,
        })
    }

    /// Starts uploading `part` once fewer than [`UPLOAD_CONCURRENCY`] are in flight.
    async fn send(&mut self, part: Bytes) -> Result<()> {
        while self.in_flight.len() >= UPLOAD_CONCURRENCY {
            if let Some(finished) = self.in_flight.next().await {
                self.done.push(finished?);
            }
        }
        let number = self.next_number;
        self.next_number += 1;
        let request = self
            .backend
            .client
            .upload_part()
            .bucket(&self.backend.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .part_number(number)
            .body(S3Body::from(part));
        self.in_flight.push(Box::pin(async move {
            let uploaded = request
                .send()
                .await
                .map_err(|e| s3_error("upload part", describe(&e)))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .build())
        }));
        Ok(())
    }

    /// Waits for the parts in flight and commits the object (aborting on error).
    async fn finish(mut self) -> Result<()> {
        while let Some(finished) = self.in_flight.next().await {
            match finished {
                Ok(part) => self.done.push(part),
                Err(error) => {
                    self.abort().await;
                    return Err(error);
                }
            }
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|part| part.part_number());
        let completed = self
            .backend
            .client
            .complete_multipart_upload()
            .bucket(&self.backend.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        if let Err(error) = completed {
            self.abort().await;
            return Err(s3_error("complete multipart upload", describe(&error)));
        }
        Ok(())
    }

    /// Drops the upload and whatever parts it stored (best effort: S3's own
    /// lifecycle rules are the backstop for an abort that fails).
    async fn abort(&mut self) {
        let _ = self
            .backend
            .client
            .abort_multipart_upload()
            .bucket(&self.backend.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .send()
            .await;
    }
}

/// Blobs in one bucket of an S3-compatible store, under a key prefix.
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

    fn part_keys(&self, upload: &str, parts: &[String]) -> Result<Vec<String>> {
        parts
            .iter()
            .map(|part| self.part_key(upload, part))
            .collect()
    }

    /// Streams `body` to `full_key`: one PutObject when it fits in a part, else a
    /// multipart upload of up to [`UPLOAD_CONCURRENCY`] parts in flight while the
    /// next is read (aborted on any error, so nothing half-written appears).
    async fn upload(&self, full_key: &str, mut body: ByteStream) -> Result<StoredObject> {
        let mut hashing = Hashing::default();
        let mut buffer = BytesMut::with_capacity(PART_BYTES);
        let mut multipart: Option<Multipart> = None;
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
                while buffer.len() >= PART_BYTES
                    || (done && multipart.is_some() && !buffer.is_empty())
                {
                    if multipart.is_none() {
                        multipart = Some(Multipart::create(self, full_key).await?);
                    }
                    let take = buffer.len().min(PART_BYTES);
                    let part = buffer.split_to(take).freeze();
                    if let Some(upload) = multipart.as_mut() {
                        upload.send(part).await?;
                    }
                }
                if done {
                    return Ok(());
                }
            }
        }
        .await;
        match multipart {
            None => {
                result?;
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(full_key)
                    .body(S3Body::from(buffer.freeze()))
                    .send()
                    .await
                    .map_err(|e| s3_error("put object", describe(&e)))?;
            }
            Some(mut upload) => match result {
                Ok(()) => upload.finish().await?,
                Err(error) => {
                    upload.abort().await;
                    return Err(error);
                }
            },
        }
        Ok(hashing.finish())
    }

    /// Joins staged parts by streaming them through [`upload`](Self::upload):
    /// what `complete` does (the proxy hashes every byte), and `compose`'s way when
    /// the parts cannot be copied server-side.
    async fn join_streaming(&self, part_keys: Vec<String>, full_key: &str) -> Result<StoredObject> {
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
        self.upload(full_key, joined).await
    }

    /// The size of each staged part, in order; a missing one is a clear error.
    async fn staged_sizes(&self, parts: &[String], part_keys: &[String]) -> Result<Vec<u64>> {
        let heads = futures::stream::iter(part_keys.iter().cloned())
            .map(|part_key| async move {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(part_key)
                    .send()
                    .await
                    .ok()
                    .map(|head| head.content_length().unwrap_or(0).max(0) as u64)
            })
            .buffered(COPY_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        parts
            .iter()
            .zip(heads)
            .map(|(part, size)| {
                size.ok_or_else(|| Error::InvalidInput(format!("part {part:?} was never uploaded")))
            })
            .collect()
    }

    /// Copies the staged parts into `full_key` inside the store: one
    /// UploadPartCopy per part (or per ≤ 5 GiB range of a bigger one), several at
    /// once, committed by CompleteMultipartUpload. `None` when S3's rules forbid it
    /// (a part other than the last under 5 MiB, more than 10,000 parts).
    async fn copy_parts(
        &self,
        part_keys: &[String],
        sizes: &[u64],
        full_key: &str,
    ) -> Result<Option<u64>> {
        let mut ranges = Vec::new();
        for (i, (part_key, &size)) in part_keys.iter().zip(sizes).enumerate() {
            if size == 0 {
                continue; // adds nothing, and S3 may refuse an empty part
            }
            if size < MIN_PART_BYTES && i + 1 < part_keys.len() {
                return Ok(None);
            }
            // Over 5 GiB: equal ranges, each well over the 5 MiB minimum.
            let pieces = size.div_ceil(MAX_COPY_BYTES);
            let piece = size.div_ceil(pieces);
            let mut start = 0;
            while start < size {
                let end = (start + piece).min(size);
                ranges.push((part_key.clone(), start, end, size));
                start = end;
            }
        }
        if ranges.is_empty() || ranges.len() > MAX_PARTS {
            return Ok(None);
        }
        let total: u64 = sizes.iter().sum();
        let mut upload = Multipart::create(self, full_key).await?;
        let (key, id) = (upload.key.clone(), upload.id.clone());
        let copied = futures::stream::iter(ranges.into_iter().enumerate())
            .map(|(i, (part_key, start, end, size))| {
                let (key, id) = (&key, &id);
                async move {
                    let number = i as i32 + 1;
                    let mut request = self
                        .client
                        .upload_part_copy()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(id)
                        .part_number(number)
                        .copy_source(copy_source(&self.bucket, &part_key));
                    if end - start < size {
                        request = request.copy_source_range(format!("bytes={start}-{}", end - 1));
                    }
                    let copied = request
                        .send()
                        .await
                        .map_err(|e| s3_error("upload part copy", describe(&e)))?;
                    let e_tag = copied
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_string);
                    Ok::<_, Error>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(e_tag)
                            .build(),
                    )
                }
            })
            .buffered(COPY_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for part in copied {
            match part {
                Ok(part) => upload.done.push(part),
                Err(error) => {
                    upload.abort().await;
                    return Err(error);
                }
            }
        }
        upload.finish().await?;
        Ok(Some(total))
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

    async fn put_part(&self, upload: &str, part: &str, body: ByteStream) -> Result<StoredObject> {
        let key = self.part_key(upload, part)?;
        self.upload(&key, body).await
    }

    async fn complete(&self, upload: &str, parts: &[String], key: &str) -> Result<StoredObject> {
        let full_key = self.object_key(key)?;
        let part_keys = self.part_keys(upload, parts)?;
        // Every part is there before starting, so a missing one is a clear error.
        self.staged_sizes(parts, &part_keys).await?;
        let stored = self.join_streaming(part_keys, &full_key).await?;
        self.abort(upload).await?;
        Ok(stored)
    }

    async fn compose(&self, upload: &str, parts: &[String], key: &str) -> Result<u64> {
        let full_key = self.object_key(key)?;
        let part_keys = self.part_keys(upload, parts)?;
        let sizes = self.staged_sizes(parts, &part_keys).await?;
        let size = match self.copy_parts(&part_keys, &sizes, &full_key).await? {
            Some(size) => size,
            None => self.join_streaming(part_keys, &full_key).await?.size,
        };
        self.abort(upload).await?;
        Ok(size)
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
