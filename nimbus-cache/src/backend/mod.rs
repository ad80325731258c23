//! Blob storage for cache entries: the [`CacheBackend`] trait and its backends.
//!
//! Everything streams: an upload is a stream of byte chunks, a download a stream
//! back, so a 10 GiB entry never sits in memory. Writes are atomic: an object
//! appears whole on [`put`](CacheBackend::put) / [`complete`](CacheBackend::complete)
//! or not at all, whatever crashes in between.

pub mod fs;
#[cfg(feature = "s3")]
pub mod s3;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;

/// A stream of body chunks. Errors are I/O errors (a client that went away).
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A stored object's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The object's key, without the backend's own prefix.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written (Unix milliseconds).
    pub last_modified_millis: i64,
}

/// What a completed write stored: its size and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Bytes written.
    pub size: u64,
    /// sha256 of those bytes, lowercase hex.
    pub sha256: String,
}

/// Where a part goes in the object its upload becomes, known before its bytes
/// arrive (a v1 chunk's offset, the index in a block id): a store that keeps its
/// own upload of the object ([`CacheBackend::begin_upload`]) stages such a part
/// in place, so joining needs no copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The object the upload becomes.
    pub key: &'a str,
    /// The store's handle for its upload of `key`, from `begin_upload`.
    pub handle: &'a str,
    /// The part's rank: placed parts are joined in increasing rank, and no two
    /// parts of an upload share one.
    pub rank: u32,
    /// The part's length as the client announced it; a body of another length
    /// is an error.
    pub size: u64,
}

/// A staged part as a store's own upload knows it, for
/// [`CacheBackend::compose_at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPart {
    /// The part's name in its upload.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its rank when it was staged in place (see [`Placement`]); `None` when it
    /// was staged as an object of its own.
    pub rank: Option<u32>,
}

/// What [`CacheBackend::put_part_at`] did with a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPart {
    /// Its size and sha256.
    pub stored: StoredObject,
    /// Whether it sits in place in the store's upload (else it was staged as an
    /// object of its own, as by `put_part`).
    pub placed: bool,
}

/// A byte range of an object, `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// An object being read: its total size and the (possibly ranged) body.
pub struct ObjectReader {
    /// The whole object's size, whatever the range.
    pub size: u64,
    /// The bytes asked for.
    pub body: ByteStream,
}

/// Where cache blobs live. Implementations: [`fs::FsBackend`] (embedded default),
/// `s3::S3Backend` (feature `s3`); tests and embedders can bring their own (see the
/// `testsuite` feature for the shared test suite every backend passes).
#[async_trait]
pub trait CacheBackend: Send + Sync + 'static {
    /// A short name for logs and metrics (`fs`, `s3`, …).
    fn name(&self) -> &'static str;

    /// Stores `body` under `key`, replacing what was there, atomically.
    async fn put(&self, key: &str, body: ByteStream) -> Result<StoredObject>;

    /// Reads `key`, whole or `range` of it (clamped to the object's end).
    /// A missing object is [`Error::NotFound`](crate::Error::NotFound).
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<ObjectReader>;

    /// Describes `key`, or `None` when there is no such object.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Removes `key`; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Stages one part of upload `upload` (parts arrive in any order, in parallel)
    /// and says what was staged: its size and the sha256 of its bytes.
    /// Staged parts are invisible to `get`/`list`; the same `part` again replaces it.
    async fn put_part(&self, upload: &str, part: &str, body: ByteStream) -> Result<StoredObject>;

    /// Joins the staged `parts` of `upload`, in the order given, into object `key`
    /// (atomically) and drops the staging area. Reads every byte back to hash the
    /// whole: for callers that need the object's own sha256 (content addressing).
    async fn complete(&self, upload: &str, parts: &[String], key: &str) -> Result<StoredObject>;

    /// Like [`complete`](Self::complete), but without reading the parts back where
    /// the store can join them by itself (S3: each staged part copied server-side
    /// into one multipart upload); returns the object's size. For callers that
    /// already hold each part's sha256 from [`put_part`](Self::put_part).
    async fn compose(&self, upload: &str, parts: &[String], key: &str) -> Result<u64> {
        Ok(self.complete(upload, parts, key).await?.size)
    }

    /// Opens the store's own upload of object `key` for `upload`, into which parts
    /// can be staged in place ([`put_part_at`](Self::put_part_at)); S3: a multipart
    /// upload of `key`. `None` (the default) when the store has no such thing.
    async fn begin_upload(&self, upload: &str, key: &str) -> Result<Option<String>> {
        let _ = (upload, key);
        Ok(None)
    }

    /// Stages one part at `at` in the upload `begin_upload` opened, or, when the
    /// store cannot place this one (too small, too large, a rank past its limits),
    /// as `put_part` would; says which. The default stages it as `put_part` does.
    async fn put_part_at(
        &self,
        upload: &str,
        part: &str,
        at: &Placement<'_>,
        body: ByteStream,
    ) -> Result<PlacedPart> {
        let _ = at;
        Ok(PlacedPart {
            stored: self.put_part(upload, part, body).await?,
            placed: false,
        })
    }

    /// Like [`compose`](Self::compose), for an upload `begin_upload` opened
    /// (`handle`), whose parts may be placed or not. Parts placed in increasing
    /// rank are joined by completing the store's upload; anything else is joined
    /// as `compose` does. The default ignores the handle.
    async fn compose_at(
        &self,
        upload: &str,
        handle: &str,
        parts: &[StagedPart],
        key: &str,
    ) -> Result<u64> {
        let _ = handle;
        let names: Vec<String> = parts.iter().map(|part| part.name.clone()).collect();
        self.compose(upload, &names, key).await
    }

    /// Drops what `begin_upload` opened for `key` (and every part placed in it);
    /// dropping an unknown one is not an error.
    async fn abandon(&self, key: &str, handle: &str) -> Result<()> {
        let _ = (key, handle);
        Ok(())
    }

    /// Drops an upload's staged parts; dropping an unknown upload is not an error.
    async fn abort(&self, upload: &str) -> Result<()>;

    /// Uploads with staged parts (to clean up after a crash).
    async fn list_uploads(&self) -> Result<Vec<String>>;
}

/// Reads a whole object into memory: for tests and small objects only.
pub async fn read_to_vec(
    backend: &dyn CacheBackend,
    key: &str,
    range: Option<ByteRange>,
) -> Result<Vec<u8>> {
    let mut reader = backend.get(key, range).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = reader.body.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    Ok(bytes)
}

/// A body from bytes in memory.
pub fn bytes_stream(bytes: impl Into<Bytes>) -> ByteStream {
    let bytes: Bytes = bytes.into();
    Box::pin(futures::stream::once(async move { Ok(bytes) }))
}

/// sha256 and length of a stream as it passes through.
#[derive(Default)]
pub(crate) struct Hashing {
    hasher: Sha256,
    size: u64,
}

impl Hashing {
    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
    }

    pub(crate) fn finish(self) -> StoredObject {
        StoredObject {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// Refuses keys that could escape a backend's namespace or mean different things
/// to different stores.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let valid = !key.is_empty()
        && key.len() <= 1024
        && !key.starts_with('/')
        && !key.ends_with('/')
        && key
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
        && key.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '=' | '+' | '%')
        });
    if valid {
        Ok(())
    } else {
        Err(crate::Error::InvalidInput(format!(
            "invalid object key {key:?}"
        )))
    }
}

/// Upload and part names are single path segments of a restricted alphabet.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != ".."
    {
        Ok(())
    } else {
        Err(crate::Error::InvalidInput(format!(
            "invalid {what} name {name:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_are_refused() {
        for bad in ["", "/abs", "a/../b", "a//b", "a/", "..", "a b", "a\nb"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "org-1/entries/42", "x.y_z-1/=+%"] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
    }
}
