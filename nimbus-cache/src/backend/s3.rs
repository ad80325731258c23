//! S3 and S3-compatible stores (`aws-sdk-s3`): AWS, SeaweedFS, MinIO, Ceph, R2…
//!
//! Objects live at `PREFIX + key`; staged parts at `PREFIX + .staging/UPLOAD/PART`.
//! A put streams the body into a multipart upload of [`PART_BYTES`] parts sent
//! [`UPLOAD_CONCURRENCY`] at a time (a small body is one PutObject), so memory
//! stays at a few parts per upload whatever the size; S3 makes the object
//! visible only on CompleteMultipartUpload, which is the atomic commit.
//!
//! Staging in place: when the caller knows where a part goes before its bytes
//! arrive ([`Placement`]), `begin_upload` opens a multipart upload of the final
//! object and `put_part_at` sends the part straight into it as up to
//! [`PIECES_PER_RANK`] parts numbered from its rank; `compose_at` then only
//! completes that upload (after copying in any part that could not be placed),
//! so no byte is stored twice. Parts placed out of order are completed as they
//! lie and then rearranged by copies.
//!
//! Bodies go with `UNSIGNED-PAYLOAD`: signing them would hash every byte once
//! more, beside the sha256 the proxy takes itself; each still carries the SDK's
//! CRC32 checksum, which the store verifies.
//!
//! Joining parts staged as objects: `compose` has the store copy each into one
//! multipart upload (UploadPartCopy, several at once), so no byte crosses the
//! network again; `complete`, for callers that need the whole object's sha256,
//! streams the parts back through the proxy into a new upload.

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use std::collections::BTreeMap;

use super::{
    check_key, check_name, ByteRange, ByteStream, CacheBackend, Hashing, ObjectMeta, ObjectReader,
    PlacedPart, Placement, StagedPart, StoredObject,
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
/// Multipart part numbers each rank of a placed part owns: rank `r` is sent as
/// parts `r * PIECES_PER_RANK + 1 ..`, so ranks up to 1,249 fit S3's 10,000.
pub const PIECES_PER_RANK: u32 = 8;
/// The largest part staged in place: it is cut into at most [`PIECES_PER_RANK`]
/// pieces of 8 to 16 MiB, each held in memory while it is sent, as a streamed
/// put's parts are (larger parts are staged as objects and copied at commit).
pub const MAX_PLACED_BYTES: u64 = 128 * 1024 * 1024;

/// The sizes of the pieces a part of `size` bytes at `rank` is sent as, or
/// `None` when it cannot be placed: every piece must meet S3's 5 MiB minimum
/// (only the object's last part may be smaller, and a part does not know
/// whether it is last), and the rank's part numbers must exist.
fn placed_pieces(rank: u32, size: u64) -> Option<Vec<u64>> {
    if !(MIN_PART_BYTES..=MAX_PLACED_BYTES).contains(&size)
        || (u64::from(rank) + 1) * u64::from(PIECES_PER_RANK) > MAX_PARTS as u64
    {
        return None;
    }
    let count = (size / PART_BYTES as u64).clamp(1, u64::from(PIECES_PER_RANK));
    let (base, extra) = (size / count, size % count);
    Some((0..count).map(|i| base + u64::from(i < extra)).collect())
}

/// The pieces of `part`, placed at `rank`, as the store holds them; a piece
/// missing or of another size means the part never arrived whole.
fn stored_pieces(
    part: &StagedPart,
    rank: u32,
    stored: &BTreeMap<i32, (u64, Option<String>)>,
) -> Result<Vec<CompletedPart>> {
    let pieces = placed_pieces(rank, part.size)
        .ok_or_else(|| Error::Backend(format!("part {:?} cannot have been placed", part.name)))?;
    pieces
        .iter()
        .enumerate()
        .map(|(k, &size)| {
            let number = first_number(rank) + k as i32;
            match stored.get(&number) {
                Some((stored_size, e_tag)) if *stored_size == size => Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(e_tag.clone())
                    .build()),
                _ => Err(Error::InvalidInput(format!(
                    "part {:?} is not all there; it was never uploaded whole",
                    part.name
                ))),
            }
        })
        .collect()
}

/// The multipart part number of piece 0 of `rank`.
fn first_number(rank: u32) -> i32 {
    (rank * PIECES_PER_RANK + 1) as i32
}

/// A range of a stored object: a source when joining.
#[derive(Debug, Clone)]
struct Segment {
    /// The full key (with the prefix).
    key: String,
    start: u64,
    end: u64,
    /// Whether the range is the whole object (no Range header needed).
    whole: bool,
}

impl Segment {
    fn whole(key: String, size: u64) -> Segment {
        Segment {
            key,
            start: 0,
            end: size,
            whole: true,
        }
    }

    fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// How `compose_at` completes an upload in place: every step a part number.
enum Step {
    /// A piece already in the upload.
    Placed { number: i32, e_tag: Option<String> },
    /// A part staged as an object, copied in under this number.
    Copy { number: i32, source: String },
}

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

    /// The multipart upload `id` of `key`, opened before (by `begin_upload`).
    fn resume(backend: &'a S3Backend, key: &str, id: &str) -> Multipart<'a> {
        Multipart {
            backend,
            key: key.to_string(),
            id: id.to_string(),
            in_flight: FuturesUnordered::new(),
            done: Vec::new(),
            next_number: 1,
        }
    }

    /// Starts uploading `part` once fewer than [`UPLOAD_CONCURRENCY`] are in flight.
    async fn send(&mut self, part: Bytes) -> Result<()> {
        let number = self.next_number;
        self.next_number += 1;
        self.send_numbered(number, part).await
    }

    /// Like [`send`](Self::send), as part `number`.
    async fn send_numbered(&mut self, number: i32, part: Bytes) -> Result<()> {
        while self.in_flight.len() >= UPLOAD_CONCURRENCY {
            if let Some(finished) = self.in_flight.next().await {
                self.done.push(finished?);
            }
        }
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
                .customize()
                .disable_payload_signing()
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

    /// Waits for the parts in flight, leaving the upload open.
    async fn settle(&mut self) -> Result<()> {
        while let Some(finished) = self.in_flight.next().await {
            self.done.push(finished?);
        }
        Ok(())
    }

    /// Waits for the parts in flight and commits the object (aborting on error).
    async fn finish(mut self) -> Result<()> {
        if let Err(error) = self.settle().await {
            self.abort().await;
            return Err(error);
        }
        let parts = std::mem::take(&mut self.done);
        self.complete(parts).await
    }

    /// Commits the object as `parts` (in part-number order; aborting on error).
    async fn complete(&mut self, mut parts: Vec<CompletedPart>) -> Result<()> {
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
                    .customize()
                    .disable_payload_signing()
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

    /// Joins `segments` by streaming them through [`upload`](Self::upload): what
    /// `complete` does (the proxy hashes every byte), and `compose`'s way when
    /// the parts cannot be copied server-side.
    async fn join_streaming(&self, segments: Vec<Segment>, full_key: &str) -> Result<StoredObject> {
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let joined: ByteStream = Box::pin(
            futures::stream::iter(segments)
                .filter(|segment| futures::future::ready(segment.len() > 0))
                .then(move |segment| {
                    let client = client.clone();
                    let bucket = bucket.clone();
                    async move {
                        let mut request = client.get_object().bucket(&bucket).key(&segment.key);
                        if !segment.whole {
                            request = request.range(format!(
                                "bytes={}-{}",
                                segment.start,
                                segment.end - 1
                            ));
                        }
                        match request.send().await {
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

    /// Copies `segments` into `full_key` inside the store: one UploadPartCopy per
    /// segment (or per ≤ 5 GiB range of a bigger one), several at once, committed
    /// by CompleteMultipartUpload. `None` when S3's rules forbid it (a part other
    /// than the last under 5 MiB, more than 10,000 parts).
    async fn copy_segments(&self, segments: &[Segment], full_key: &str) -> Result<Option<u64>> {
        let segments: Vec<&Segment> = segments.iter().filter(|s| s.len() > 0).collect();
        let mut ranges = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            let size = segment.len();
            if size < MIN_PART_BYTES && i + 1 < segments.len() {
                return Ok(None);
            }
            // Over 5 GiB: equal ranges, each well over the 5 MiB minimum.
            let pieces = size.div_ceil(MAX_COPY_BYTES);
            let piece = size.div_ceil(pieces);
            let mut start = 0;
            while start < size {
                let end = (start + piece).min(size);
                let whole = segment.whole && start == 0 && end == size;
                ranges.push((
                    segment.key.clone(),
                    segment.start + start,
                    segment.start + end,
                    whole,
                ));
                start = end;
            }
        }
        if ranges.is_empty() || ranges.len() > MAX_PARTS {
            return Ok(None);
        }
        let total: u64 = segments.iter().map(|s| s.len()).sum();
        let mut upload = Multipart::create(self, full_key).await?;
        let (key, id) = (upload.key.clone(), upload.id.clone());
        let copied = futures::stream::iter(ranges.into_iter().enumerate())
            .map(|(i, (source, start, end, whole))| {
                let range = (!whole).then(|| format!("bytes={start}-{}", end - 1));
                self.copy_part(&key, &id, i as i32 + 1, source, range)
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

    /// UploadPartCopy of `source` (or `range` of it) as part `number` of the
    /// multipart upload `id` of `key`.
    async fn copy_part(
        &self,
        key: &str,
        id: &str,
        number: i32,
        source: String,
        range: Option<String>,
    ) -> Result<CompletedPart> {
        let copied = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(id)
            .part_number(number)
            .copy_source(copy_source(&self.bucket, &source))
            .set_copy_source_range(range)
            .send()
            .await
            .map_err(|e| s3_error("upload part copy", describe(&e)))?;
        let e_tag = copied
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .map(str::to_string);
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(e_tag)
            .build())
    }

    /// The parts stored so far in the multipart upload `id` of `full_key`: size
    /// and ETag by part number.
    async fn list_parts(
        &self,
        full_key: &str,
        id: &str,
    ) -> Result<BTreeMap<i32, (u64, Option<String>)>> {
        let mut parts = BTreeMap::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|e| s3_error("list parts", describe(&e)))?;
            for part in page.parts() {
                if let Some(number) = part.part_number() {
                    let size = part.size().unwrap_or(0).max(0) as u64;
                    parts.insert(number, (size, part.e_tag().map(str::to_string)));
                }
            }
            marker = page.next_part_number_marker().map(str::to_string);
            if page.is_truncated() != Some(true) || marker.is_none() {
                break;
            }
        }
        Ok(parts)
    }

    /// The steps that complete the upload in place, or `None` when the parts'
    /// order or sizes do not allow it (placed ranks not increasing, an unplaced
    /// part under 5 MiB before the end or with no free part number). A placed
    /// piece missing from the upload is an error.
    fn plan_in_place(
        &self,
        upload: &str,
        parts: &[StagedPart],
        stored: &BTreeMap<i32, (u64, Option<String>)>,
    ) -> Result<Option<Vec<Step>>> {
        let parts: Vec<&StagedPart> = parts.iter().filter(|p| p.size > 0).collect();
        let mut steps = Vec::new();
        let mut previous = 0i32;
        for (i, part) in parts.iter().enumerate() {
            match part.rank {
                Some(rank) => {
                    if first_number(rank) <= previous {
                        return Ok(None);
                    }
                    for piece in stored_pieces(part, rank, stored)? {
                        previous = piece.part_number().unwrap_or(previous);
                        steps.push(Step::Placed {
                            number: previous,
                            e_tag: piece.e_tag().map(str::to_string),
                        });
                    }
                }
                None => {
                    let last = i + 1 == parts.len();
                    let next_placed = parts[i + 1..]
                        .iter()
                        .find_map(|p| p.rank.map(first_number))
                        .unwrap_or(MAX_PARTS as i32 + 1);
                    let number = previous + 1;
                    if number >= next_placed
                        || (part.size < MIN_PART_BYTES && !last)
                        || part.size > MAX_COPY_BYTES
                    {
                        return Ok(None);
                    }
                    steps.push(Step::Copy {
                        number,
                        source: self.part_key(upload, &part.name)?,
                    });
                    previous = number;
                }
            }
        }
        Ok((!steps.is_empty()).then_some(steps))
    }

    /// Completes the upload `handle` of `full_key` in place: copies in the
    /// unplaced parts, then CompleteMultipartUpload over every step.
    async fn complete_in_place(
        &self,
        full_key: &str,
        handle: &str,
        steps: Vec<Step>,
    ) -> Result<()> {
        let mut upload = Multipart::resume(self, full_key, handle);
        let done = futures::stream::iter(steps)
            .map(|step| async move {
                match step {
                    Step::Placed { number, e_tag } => Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(e_tag)
                        .build()),
                    Step::Copy { number, source } => {
                        self.copy_part(full_key, handle, number, source, None).await
                    }
                }
            })
            .buffered(COPY_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        upload.complete(done).await
    }

    /// Joins parts placed out of order: completes the upload with the placed
    /// parts as they lie (by rank, each once), then builds the object again from
    /// ranges of that and the unplaced parts, by copies where S3 allows.
    async fn rearrange(
        &self,
        upload: &str,
        handle: &str,
        parts: &[StagedPart],
        stored: &BTreeMap<i32, (u64, Option<String>)>,
        full_key: &str,
    ) -> Result<()> {
        let mut placed: BTreeMap<u32, &StagedPart> = BTreeMap::new();
        for part in parts {
            if let Some(rank) = part.rank {
                placed.insert(rank, part);
            }
        }
        let mut completed = Vec::new();
        let mut offsets = BTreeMap::new();
        let mut offset = 0u64;
        for (&rank, part) in &placed {
            completed.extend(stored_pieces(part, rank, stored)?);
            offsets.insert(rank, offset);
            offset += part.size;
        }
        Multipart::resume(self, full_key, handle)
            .complete(completed)
            .await?;
        let mut segments = Vec::with_capacity(parts.len());
        for part in parts {
            segments.push(match part.rank {
                Some(rank) => {
                    let start = offsets.get(&rank).copied().unwrap_or_default();
                    Segment {
                        key: full_key.to_string(),
                        start,
                        end: start + part.size,
                        whole: false,
                    }
                }
                None => Segment::whole(self.part_key(upload, &part.name)?, part.size),
            });
        }
        if self.copy_segments(&segments, full_key).await?.is_none() {
            self.join_streaming(segments, full_key).await?;
        }
        Ok(())
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
        let sizes = self.staged_sizes(parts, &part_keys).await?;
        let segments = part_keys
            .into_iter()
            .zip(sizes)
            .map(|(key, size)| Segment::whole(key, size))
            .collect();
        let stored = self.join_streaming(segments, &full_key).await?;
        self.abort(upload).await?;
        Ok(stored)
    }

    async fn compose(&self, upload: &str, parts: &[String], key: &str) -> Result<u64> {
        let full_key = self.object_key(key)?;
        let part_keys = self.part_keys(upload, parts)?;
        let sizes = self.staged_sizes(parts, &part_keys).await?;
        let segments: Vec<Segment> = part_keys
            .into_iter()
            .zip(sizes)
            .map(|(key, size)| Segment::whole(key, size))
            .collect();
        let size = match self.copy_segments(&segments, &full_key).await? {
            Some(size) => size,
            None => self.join_streaming(segments, &full_key).await?.size,
        };
        self.abort(upload).await?;
        Ok(size)
    }

    async fn begin_upload(&self, upload: &str, key: &str) -> Result<Option<String>> {
        check_name("upload", upload)?;
        let full_key = self.object_key(key)?;
        let upload = Multipart::create(self, &full_key).await?;
        Ok(Some(upload.id))
    }

    async fn put_part_at(
        &self,
        upload: &str,
        part: &str,
        at: &Placement<'_>,
        mut body: ByteStream,
    ) -> Result<PlacedPart> {
        let Some(pieces) = placed_pieces(at.rank, at.size) else {
            return Ok(PlacedPart {
                stored: self.put_part(upload, part, body).await?,
                placed: false,
            });
        };
        check_name("upload", upload)?;
        check_name("part", part)?;
        let full_key = self.object_key(at.key)?;
        let first = first_number(at.rank);
        let mut multipart = Multipart::resume(self, &full_key, at.handle);
        let mut hashing = Hashing::default();
        let mut buffer = BytesMut::new();
        let mut sent = 0usize;
        loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(error)) => return Err(Error::Truncated(error.to_string())),
                None => break,
            };
            hashing.update(&chunk);
            buffer.extend_from_slice(&chunk);
            while sent < pieces.len() && buffer.len() as u64 >= pieces[sent] {
                let piece = buffer.split_to(pieces[sent] as usize).freeze();
                multipart.send_numbered(first + sent as i32, piece).await?;
                sent += 1;
            }
            if sent == pieces.len() && !buffer.is_empty() {
                break; // longer than announced: refused below
            }
        }
        let stored = hashing.finish();
        if sent < pieces.len() || !buffer.is_empty() {
            multipart.settle().await?;
            return Err(Error::InvalidInput(format!(
                "the part was announced as {} bytes but its body had {}{}",
                at.size,
                if buffer.is_empty() { "" } else { "more than " },
                stored.size
            )));
        }
        multipart.settle().await?;
        Ok(PlacedPart {
            stored,
            placed: true,
        })
    }

    async fn compose_at(
        &self,
        upload: &str,
        handle: &str,
        parts: &[StagedPart],
        key: &str,
    ) -> Result<u64> {
        let full_key = self.object_key(key)?;
        if parts.iter().all(|part| part.rank.is_none()) {
            let names: Vec<String> = parts.iter().map(|part| part.name.clone()).collect();
            let size = self.compose(upload, &names, key).await?;
            self.abandon(key, handle).await?;
            return Ok(size);
        }
        // The unplaced parts are there, at the size recorded.
        let unplaced: Vec<&StagedPart> = parts.iter().filter(|p| p.rank.is_none()).collect();
        let names: Vec<String> = unplaced.iter().map(|p| p.name.clone()).collect();
        let keys = self.part_keys(upload, &names)?;
        for (part, size) in unplaced.iter().zip(self.staged_sizes(&names, &keys).await?) {
            if size != part.size {
                return Err(Error::Backend(format!(
                    "staged part {:?} has {size} bytes, not the {} recorded",
                    part.name, part.size
                )));
            }
        }
        let stored = self.list_parts(&full_key, handle).await?;
        let total: u64 = parts.iter().map(|part| part.size).sum();
        match self.plan_in_place(upload, parts, &stored)? {
            Some(steps) => self.complete_in_place(&full_key, handle, steps).await?,
            None => {
                self.rearrange(upload, handle, parts, &stored, &full_key)
                    .await?
            }
        }
        self.abort(upload).await?;
        Ok(total)
    }

    async fn abandon(&self, key: &str, handle: &str) -> Result<()> {
        let full_key = self.object_key(key)?;
        Multipart::resume(self, &full_key, handle).abort().await;
        Ok(())
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
