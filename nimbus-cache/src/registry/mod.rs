//! The OCI registry of the cache proxy: a pull-through mirror of an upstream
//! registry (`library/…`, `mirror/…`) and a registry for org-owned images
//! (`org-{id}/…`), on the same [`CacheBackend`] as the Actions cache.
//!
//! - [`name`]: repository names (and their owner), tags, digests;
//! - [`manifest`]: accepted media types and what a manifest references;
//! - [`auth`]: who may pull and push, registry tokens;
//! - [`index`]: repositories, blobs and links, manifests, tags (SQLite/PostgreSQL);
//! - [`upstream`]: the upstream registry and its token flow;
//! - [`http`]: the `/v2/` API (the wire form of [`Registry`]'s operations);
//! - [`gc`]: garbage collection and eviction under the byte budget.
//!
//! Blobs are stored once, by digest (`registry/blobs/sha256/HEX`), written only
//! after their sha256 was checked, and served only through a repository they are
//! linked to (see [`index`]). Uploads are staged in the backend under `reg-…`
//! names; their running hash lives in this process, so a chunked upload that
//! outlives a restart is answered `BLOB_UPLOAD_UNKNOWN` and the client starts it
//! again. docs/registry.md has the whole picture.

pub mod auth;
pub mod gc;
pub mod http;
pub mod index;
pub mod manifest;
pub mod name;
#[cfg(feature = "testsuite")]
pub mod testing;
pub mod upstream;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use nimbus_core::OrgId;
use reqwest::Method;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use crate::backend::{bytes_stream, ByteRange, ByteStream, CacheBackend};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

pub use auth::{Action, Authority, Caller, Identity};
pub use index::RegistryIndex;
pub use name::{Digest, Owner, Reference, Repository};
pub use upstream::Upstream;

/// Backend upload names of the registry start with this (the Actions cache's
/// sweep leaves them alone; [`gc`] sweeps them).
pub const UPLOAD_PREFIX: &str = "reg-";

/// The error codes of the distribution spec that Nimbus answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciCode {
    /// The blob is not in the repository (404).
    BlobUnknown,
    /// A chunk or an upload is malformed or conflicts with another (400).
    BlobUploadInvalid,
    /// No upload has that id, e.g. one lost to a restart (404).
    BlobUploadUnknown,
    /// A digest is malformed, or the bytes do not hash to it (400).
    DigestInvalid,
    /// A pushed manifest references a blob not linked to the repository (400).
    ManifestBlobUnknown,
    /// A manifest does not parse or has an unaccepted media type (400).
    ManifestInvalid,
    /// No manifest has that tag or digest in the repository (404).
    ManifestUnknown,
    /// The repository name is not a valid name of this registry (400).
    NameInvalid,
    /// The repository does not exist, or belongs to another org (404).
    NameUnknown,
    /// A blob or manifest is over the size limit or the byte budget (400).
    SizeInvalid,
    /// A tag is not valid (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`) (400).
    TagInvalid,
    /// No credential, or one that does not verify or lacks a scope (401).
    Unauthorized,
    /// The credential may not do this, e.g. push to a mirror (403).
    Denied,
    /// An operation or method this registry does not offer, or no registry
    /// at all on this proxy (415).
    Unsupported,
    /// The org has too many unfinished uploads (429).
    TooManyRequests,
    /// A chunk that does not start where the upload stands (416).
    RangeInvalid,
    /// The upstream or the store failed (503; not a spec code, clients show the message).
    Unavailable,
}

impl OciCode {
    /// The code as the spec spells it, e.g. `BLOB_UNKNOWN`. [`OciCode::RangeInvalid`]
    /// is sent as `BLOB_UPLOAD_INVALID`, and [`OciCode::Unavailable`] as
    /// `UNAVAILABLE`, which is not in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            OciCode::BlobUnknown => "BLOB_UNKNOWN",
            OciCode::BlobUploadInvalid | OciCode::RangeInvalid => "BLOB_UPLOAD_INVALID",
            OciCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            OciCode::DigestInvalid => "DIGEST_INVALID",
            OciCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            OciCode::ManifestInvalid => "MANIFEST_INVALID",
            OciCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            OciCode::NameInvalid => "NAME_INVALID",
            OciCode::NameUnknown => "NAME_UNKNOWN",
            OciCode::SizeInvalid => "SIZE_INVALID",
            OciCode::TagInvalid => "TAG_INVALID",
            OciCode::Unauthorized => "UNAUTHORIZED",
            OciCode::Denied => "DENIED",
            OciCode::Unsupported => "UNSUPPORTED",
            OciCode::TooManyRequests => "TOOMANYREQUESTS",
            OciCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status the spec pairs with the code.
    pub fn status(self) -> u16 {
        match self {
            OciCode::BlobUnknown
            | OciCode::BlobUploadUnknown
            | OciCode::ManifestUnknown
            | OciCode::NameUnknown => 404,
            OciCode::Unauthorized => 401,
            OciCode::Denied => 403,
            OciCode::Unsupported => 415,
            OciCode::TooManyRequests => 429,
            OciCode::RangeInvalid => 416,
            OciCode::Unavailable => 503,
            OciCode::SizeInvalid => 400,
            _ => 400,
        }
    }
}

/// A registry failure as the client hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    /// The spec's error code; it also decides the HTTP status.
    pub code: OciCode,
    /// A human-readable explanation, shown by clients.
    pub message: String,
    /// What a `401` asks the client to get a token for (`repository:NAME:ACTION`).
    pub scope: Option<String>,
    /// Where an upload stands, for `416` answers (`Range: 0-N`).
    pub offset: Option<u64>,
}

impl OciError {
    /// An error with `code` and `message`, and no scope or offset.
    pub fn new(code: OciCode, message: impl Into<String>) -> Self {
        OciError {
            code,
            message: message.into(),
            scope: None,
            offset: None,
        }
    }

    /// An [`OciCode::Unauthorized`] error (401) without a scope.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        OciError::new(OciCode::Unauthorized, message)
    }

    /// Sets the scope a `401` asks the client to get a token for: `pull` on
    /// `repository`, or `pull,push` for a push.
    pub fn with_scope(mut self, repository: &Repository, action: Action) -> Self {
        let actions = match action {
            Action::Pull => "pull",
            Action::Push => "pull,push",
        };
        self.scope = Some(format!("repository:{repository}:{actions}"));
        self
    }
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for OciError {}

/// The registry's settings (`NIMBUS_DOCKER_*`).
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The upstream of the mirrors; `None` turns pull-through off.
    pub upstream: Option<String>,
    /// User for the upstream (`NIMBUS_DOCKER_UPSTREAM_USERNAME`); `None` pulls
    /// anonymously.
    pub upstream_username: Option<String>,
    /// Password or access token of `upstream_username`
    /// (`NIMBUS_DOCKER_UPSTREAM_PASSWORD`).
    pub upstream_password: Option<nimbus_core::Secret>,
    /// Mirror tags older than this are checked against the upstream again.
    pub tag_ttl: Duration,
    /// The byte budget of all stored blobs; also the largest single blob.
    pub max_bytes: u64,
    /// Unreferenced blobs and untagged manifests younger than this are kept (a
    /// push uploads blobs before the manifest that references them).
    pub gc_grace: Duration,
    /// Uploads idle this long are dropped.
    pub upload_ttl: Duration,
    /// Unfinished uploads one org may have at once.
    pub max_uploads_per_org: u32,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            upstream: Some(DEFAULT_UPSTREAM.to_string()),
            upstream_username: None,
            upstream_password: None,
            tag_ttl: Duration::from_secs(300),
            max_bytes: 50 * 1024 * 1024 * 1024,
            gc_grace: Duration::from_secs(3600),
            upload_ttl: Duration::from_secs(900),
            max_uploads_per_org: 64,
        }
    }
}

/// Docker Hub's registry.
pub const DEFAULT_UPSTREAM: &str = "https://registry-1.docker.io";

/// A manifest answer.
pub use index::StoredManifest;

/// A blob answer: its size, the range served, and the bytes (empty for HEAD).
pub struct BlobRead {
    /// The blob's digest (`sha256:HEX`).
    pub digest: Digest,
    /// The whole blob's size, when known (an upstream may stream without one).
    pub size: Option<u64>,
    /// The part served when the request had a satisfiable `Range`; `None`:
    /// the whole blob.
    pub range: Option<ByteRange>,
    /// The bytes served: the range or the whole blob; empty for `HEAD`.
    pub body: ByteStream,
}

/// What `POST …/blobs/uploads/` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStarted {
    /// The blob was mounted from another repository: nothing to upload.
    Mounted(Digest),
    /// An upload was started: the client sends the blob to it.
    Started {
        /// The upload's id, used in the client's `…/blobs/uploads/{id}` URLs.
        id: String,
    },
}

/// The first miss of a blob fetches it; the others wait for that fetch.
enum FetchPlan {
    Fetch(watch::Sender<bool>),
    Wait(watch::Receiver<bool>),
}

struct Upload {
    repository: String,
    org_id: Option<OrgId>,
    hasher: Sha256,
    size: u64,
    parts: Vec<String>,
    busy: bool,
    touched: Instant,
}

struct Inner {
    backend: Arc<dyn CacheBackend>,
    index: RegistryIndex,
    upstream: Option<Upstream>,
    authority: Authority,
    settings: RegistrySettings,
    metrics: Metrics,
    uploads: SyncMutex<HashMap<String, Upload>>,
    /// Blob fetches from the upstream in progress, by digest: the one fetch and
    /// its completion signal, so concurrent misses wait for it instead of
    /// fetching again.
    fetches: SyncMutex<HashMap<String, watch::Receiver<bool>>>,
}

/// The registry: every operation checks the caller's rights first.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("upstream", &self.inner.upstream)
            .finish_non_exhaustive()
    }
}

/// The backend key of a blob.
pub fn blob_key(digest: &Digest) -> String {
    format!("registry/blobs/sha256/{}", digest.hex())
}

fn now_millis() -> i64 {
    crate::index::now_millis()
}

impl Registry {
    /// A registry over `backend` and `index`, checking callers with
    /// `authority`. Fails only if the upstream's HTTP client cannot be built.
    pub fn new(
        backend: Arc<dyn CacheBackend>,
        index: RegistryIndex,
        authority: Authority,
        settings: RegistrySettings,
        metrics: Metrics,
    ) -> Result<Self> {
        let upstream = match &settings.upstream {
            Some(base) => Some(Upstream::new(
                base,
                settings.upstream_username.clone(),
                settings.upstream_password.clone(),
            )?),
            None => None,
        };
        Ok(Registry {
            inner: Arc::new(Inner {
                backend,
                index,
                upstream,
                authority,
                settings,
                metrics,
                uploads: SyncMutex::new(HashMap::new()),
                fetches: SyncMutex::new(HashMap::new()),
            }),
        })
    }

    /// The registry index: repositories, blobs, manifests, tags.
    pub fn index(&self) -> &RegistryIndex {
        &self.inner.index
    }

    /// Verifies credentials and mints registry tokens.
    pub fn authority(&self) -> &Authority {
        &self.inner.authority
    }

    /// The settings the registry was built with.
    pub fn settings(&self) -> &RegistrySettings {
        &self.inner.settings
    }

    fn upstream(&self) -> Result<&Upstream> {
        self.inner.upstream.as_ref().ok_or_else(|| {
            OciError::new(
                OciCode::NameUnknown,
                "this registry has no upstream (NIMBUS_DOCKER_UPSTREAM=none): mirrors hold only what they have",
            )
            .into()
        })
    }

    fn upstream_request(&self, kind: &str) {
        self.inner
            .metrics
            .registry_upstream_requests
            .with_label_values(&[kind])
            .inc();
    }

    // ---- manifests ----------------------------------------------------------

    /// A manifest by tag or digest; mirrors fetch it from the upstream when they
    /// do not have it, or when the tag is older than the tag TTL.
    pub async fn manifest(
        &self,
        caller: &Caller,
        repository: &Repository,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        caller.check(repository, Action::Pull)?;
        let index = &self.inner.index;
        let found = match (reference, repository.owner()) {
            (Reference::Digest(digest), owner) => match index.manifest(repository, digest).await? {
                Some(manifest) => Some(manifest),
                None => match owner {
                    Owner::Mirror { upstream } => {
                        self.fetch_manifest(repository, upstream, reference, None)
                            .await?
                    }
                    Owner::Org(_) => None,
                },
            },
            (Reference::Tag(tag), Owner::Org(_)) => match index.tag(repository, tag).await? {
                Some(found) => index.manifest(repository, &found.digest).await?,
                None => None,
            },
            (Reference::Tag(tag), Owner::Mirror { upstream }) => {
                self.mirror_tag(repository, upstream, tag).await?
            }
        };
        let manifest = found.ok_or_else(|| {
            Error::from(OciError::new(
                OciCode::ManifestUnknown,
                format!("manifest {reference} is not in {repository}"),
            ))
        })?;
        let tag = match reference {
            Reference::Tag(tag) => Some(tag.as_str()),
            Reference::Digest(_) => None,
        };
        index.record_pull(repository, tag).await?;
        Ok(manifest)
    }

    async fn mirror_tag(
        &self,
        repository: &Repository,
        upstream_name: &str,
        tag: &str,
    ) -> Result<Option<StoredManifest>> {
        let index = &self.inner.index;
        let local = match index.tag(repository, tag).await? {
            Some(local) => index
                .manifest(repository, &local.digest)
                .await?
                .map(|manifest| (local.validated_at, manifest)),
            None => None,
        };
        let ttl = i64::try_from(self.inner.settings.tag_ttl.as_millis()).unwrap_or(i64::MAX);
        if let Some((validated_at, manifest)) = &local {
            if now_millis().saturating_sub(*validated_at) < ttl {
                return Ok(Some(manifest.clone()));
            }
        }
        let reference = Reference::Tag(tag.to_string());
        match self
            .fetch_manifest(
                repository,
                upstream_name,
                &reference,
                local.as_ref().map(|(_, m)| m),
            )
            .await
        {
            Ok(found) => Ok(found),
            // The upstream is down or refuses: a mirror serves what it has.
            Err(error) => match local {
                Some((_, manifest)) => {
                    tracing::warn!(%error, repository = %repository, tag, "upstream unavailable: serving the mirror's copy of the tag");
                    Ok(Some(manifest))
                }
                None => Err(error),
            },
        }
    }

    /// Fetches a manifest from the upstream, checks its digest and stores it
    /// (and the tag). With `known`, a HEAD first: an unchanged tag only gets
    /// re-validated. `Ok(None)`: the upstream does not have it.
    async fn fetch_manifest(
        &self,
        repository: &Repository,
        upstream_name: &str,
        reference: &Reference,
        known: Option<&StoredManifest>,
    ) -> Result<Option<StoredManifest>> {
        let upstream = self.upstream()?;
        let path = format!("manifests/{reference}");
        if let (Some(known), Reference::Tag(tag)) = (known, reference) {
            self.upstream_request("manifest");
            let head = upstream
                .request(Method::HEAD, upstream_name, &path, &manifest::MEDIA_TYPES)
                .await?;
            let current = head
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok());
            if head.status().is_success() && current == Some(known.digest.as_str()) {
                self.inner.index.tag_validated(repository, tag).await?;
                return Ok(Some(known.clone()));
            }
        }
        self.upstream_request("manifest");
        let response = upstream
            .request(Method::GET, upstream_name, &path, &manifest::MEDIA_TYPES)
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(Error::Backend(format!(
                "upstream registry answered {} for {upstream_name}:{reference}",
                response.status()
            )));
        }
        if response
            .content_length()
            .is_some_and(|length| length > manifest::MAX_MANIFEST_BYTES as u64)
        {
            return Err(OciError::new(
                OciCode::SizeInvalid,
                "the upstream's manifest is over the size limit",
            )
            .into());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let announced = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(response, manifest::MAX_MANIFEST_BYTES).await?;
        let digest = Digest::of(&body);
        let expected = match reference {
            Reference::Digest(digest) => Some(digest.as_str().to_string()),
            Reference::Tag(_) => announced,
        };
        if expected.is_some_and(|expected| expected != digest.as_str()) {
            return Err(Error::Backend(format!(
                "the upstream's manifest {upstream_name}:{reference} does not match its digest"
            )));
        }
        let parsed = manifest::parse(content_type.as_deref(), &body)?;
        let stored = StoredManifest {
            digest,
            media_type: parsed.media_type.clone(),
            body,
        };
        let tag = match reference {
            Reference::Tag(tag) => Some(tag.as_str()),
            Reference::Digest(_) => None,
        };
        self.inner
            .index
            .put_manifest(repository, &stored, &parsed, tag)
            .await?;
        Ok(Some(stored))
    }

    /// Stores a pushed manifest: valid, of a known media type, every blob it
    /// names linked to the repository, and matching the digest it is put by.
    pub async fn put_manifest(
        &self,
        caller: &Caller,
        repository: &Repository,
        reference: &Reference,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Digest> {
        caller.check(repository, Action::Push)?;
        let parsed = manifest::parse(content_type, &body)?;
        let digest = Digest::of(&body);
        if let Reference::Digest(expected) = reference {
            if *expected != digest {
                return Err(OciError::new(
                    OciCode::DigestInvalid,
                    format!("the manifest's digest is {digest}, not {expected}"),
                )
                .into());
            }
        }
        let missing = self
            .inner
            .index
            .missing_references(repository, &parsed)
            .await?;
        if let Some(first) = missing.first() {
            let code = if parsed.is_index() {
                OciCode::ManifestUnknown
            } else {
                OciCode::ManifestBlobUnknown
            };
            return Err(OciError::new(
                code,
                format!(
                    "the manifest references {} not in {repository}: {first}{}",
                    if parsed.is_index() {
                        "manifests"
                    } else {
                        "blobs"
                    },
                    if missing.len() > 1 {
                        format!(" and {} more", missing.len() - 1)
                    } else {
                        String::new()
                    }
                ),
            )
            .into());
        }
        let tag = match reference {
            Reference::Tag(tag) => Some(tag.as_str()),
            Reference::Digest(_) => None,
        };
        let stored = StoredManifest {
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            body,
        };
        self.inner
            .index
            .put_manifest(repository, &stored, &parsed, tag)
            .await?;
        tracing::info!(repository = %repository, %digest, tag, "manifest pushed");
        Ok(digest)
    }

    /// Tags of a repository (mirrors: the tags pulled through so far).
    pub async fn tags(
        &self,
        caller: &Caller,
        repository: &Repository,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        caller.check(repository, Action::Pull)?;
        self.inner.index.tags(repository, last, limit).await
    }

    /// The repositories the caller may pull: its org's and the mirrors.
    pub async fn catalog(
        &self,
        caller: &Caller,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        self.inner
            .index
            .repositories(caller.identity().org_id, last, limit)
            .await
    }

    // ---- blobs --------------------------------------------------------------

    /// A blob of `repository`, whole or `range` of it (`head_only`: no body).
    /// Mirrors fetch a missing blob from the upstream once, streaming it to the
    /// first caller while storing it.
    pub async fn blob(
        &self,
        caller: &Caller,
        repository: &Repository,
        digest: &Digest,
        range: Option<ByteRange>,
        head_only: bool,
    ) -> Result<BlobRead> {
        caller.check(repository, Action::Pull)?;
        loop {
            if let Some(size) = self.inner.index.linked_blob(repository, digest).await? {
                return self.local_blob(digest, size, range, head_only).await;
            }
            let Owner::Mirror { upstream } = repository.owner() else {
                return Err(blob_unknown(repository, digest));
            };
            if self.inner.index.stored_blob(digest).await?.is_some() {
                // Stored for another repository: serve it here only if the
                // upstream has it here (a digest alone grants nothing).
                if self.upstream_has_blob(upstream, digest).await? {
                    self.inner.index.link(repository, digest).await?;
                    continue;
                }
                return Err(blob_unknown(repository, digest));
            }
            if head_only {
                return self.upstream_blob_head(repository, upstream, digest).await;
            }
            // One fetch per digest; later callers wait for it and read locally.
            let plan = {
                let mut fetches = self
                    .inner
                    .fetches
                    .lock()
                    .map_err(|_| Error::Backend("fetch table poisoned".into()))?;
                match fetches.get(digest.as_str()) {
                    Some(done) => FetchPlan::Wait(done.clone()),
                    None => {
                        let (done_tx, done_rx) = watch::channel(false);
                        fetches.insert(digest.as_str().to_string(), done_rx);
                        FetchPlan::Fetch(done_tx)
                    }
                }
            };
            match plan {
                FetchPlan::Fetch(done) => {
                    let read = self
                        .start_fetch(repository.clone(), upstream.clone(), digest.clone(), done)
                        .await?;
                    if range.is_none() {
                        return Ok(read);
                    }
                    // A ranged first read waits for the whole blob.
                    drop(read);
                    self.wait_for_fetch(digest).await;
                }
                FetchPlan::Wait(mut done) => {
                    let _ = done.wait_for(|finished| *finished).await;
                }
            }
            if self.inner.index.stored_blob(digest).await?.is_none() {
                return Err(Error::Backend(format!(
                    "fetching {digest} from the upstream failed; try again"
                )));
            }
        }
    }

    async fn wait_for_fetch(&self, digest: &Digest) {
        let done = self
            .inner
            .fetches
            .lock()
            .ok()
            .and_then(|fetches| fetches.get(digest.as_str()).cloned());
        if let Some(mut done) = done {
            let _ = done.wait_for(|finished| *finished).await;
        }
    }

    async fn local_blob(
        &self,
        digest: &Digest,
        size: u64,
        range: Option<ByteRange>,
        head_only: bool,
    ) -> Result<BlobRead> {
        let body = if head_only {
            bytes_stream(Bytes::new())
        } else {
            self.inner.index.touch_blob(digest).await?;
            match self.inner.backend.get(&blob_key(digest), range).await {
                Ok(reader) => reader.body,
                Err(Error::NotFound(_)) => {
                    tracing::error!(%digest, "registry blob is indexed but missing from the store: forgotten");
                    self.inner.index.forget_blob(digest).await?;
                    return Err(Error::Backend(format!(
                        "blob {digest} was lost from the store"
                    )));
                }
                Err(error) => return Err(error),
            }
        };
        Ok(BlobRead {
            digest: digest.clone(),
            size: Some(size),
            range,
            body,
        })
    }

    async fn upstream_has_blob(&self, upstream_name: &str, digest: &Digest) -> Result<bool> {
        self.upstream_request("blob");
        let response = self
            .upstream()?
            .request(Method::HEAD, upstream_name, &format!("blobs/{digest}"), &[])
            .await?;
        Ok(response.status().is_success())
    }

    async fn upstream_blob_head(
        &self,
        repository: &Repository,
        upstream_name: &str,
        digest: &Digest,
    ) -> Result<BlobRead> {
        self.upstream_request("blob");
        let response = self
            .upstream()?
            .request(Method::HEAD, upstream_name, &format!("blobs/{digest}"), &[])
            .await?;
        if !response.status().is_success() {
            return Err(blob_unknown(repository, digest));
        }
        Ok(BlobRead {
            digest: digest.clone(),
            size: response.content_length(),
            range: None,
            body: bytes_stream(Bytes::new()),
        })
    }

    /// Starts the one upstream fetch of `digest`: a task stores it (checked
    /// against its digest) and feeds the first caller's body as it goes. The
    /// task outlives that caller: a client that goes away does not stop the
    /// store, and `done` fires when it is over either way.
    async fn start_fetch(
        &self,
        repository: Repository,
        upstream_name: String,
        digest: Digest,
        done: watch::Sender<bool>,
    ) -> Result<BlobRead> {
        let finish = {
            let inner = self.inner.clone();
            let digest = digest.clone();
            move || {
                if let Ok(mut fetches) = inner.fetches.lock() {
                    fetches.remove(digest.as_str());
                }
                let _ = done.send(true);
            }
        };
        self.upstream_request("blob");
        let path = format!("blobs/{digest}");
        let response = match self.upstream() {
            Ok(upstream) => {
                upstream
                    .request(Method::GET, &upstream_name, &path, &[])
                    .await
            }
            Err(error) => Err(error),
        };
        let response = match response {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                finish();
                return Err(if response.status() == reqwest::StatusCode::NOT_FOUND {
                    blob_unknown(&repository, &digest)
                } else {
                    Error::Backend(format!(
                        "upstream registry answered {} for blob {digest}",
                        response.status()
                    ))
                });
            }
            Err(error) => {
                finish();
                return Err(error);
            }
        };
        let size = response.content_length();
        let max = self.inner.settings.max_bytes;
        if size.is_some_and(|size| size > max) {
            finish();
            return Err(OciError::new(
                OciCode::SizeInvalid,
                format!("blob {digest} is over the registry's {max}-byte budget"),
            )
            .into());
        }
        let (client_tx, mut client_rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
        let inner = self.inner.clone();
        let task_digest = digest.clone();
        tokio::spawn(async move {
            let stored = store_fetched(
                &inner,
                &repository,
                &task_digest,
                response,
                client_tx.clone(),
                max,
            )
            .await;
            match stored {
                Ok(size) => {
                    tracing::info!(repository = %repository, digest = %task_digest, bytes = size, "blob fetched from the upstream")
                }
                Err(error) => {
                    tracing::warn!(%error, repository = %repository, digest = %task_digest, "fetching a blob from the upstream failed");
                    // The client's body ends in an error, never as a whole blob.
                    let _ = client_tx
                        .send(Err(std::io::Error::other(error.to_string())))
                        .await;
                }
            }
            finish();
        });
        let body: ByteStream =
            Box::pin(futures::stream::poll_fn(move |cx| client_rx.poll_recv(cx)));
        Ok(BlobRead {
            digest,
            size,
            range: None,
            body,
        })
    }

    // ---- uploads ------------------------------------------------------------

    /// `POST …/blobs/uploads/`: mounts `mount` (a digest and the repository it
    /// is in) when the caller may read it there, else starts an upload.
    pub async fn start_upload(
        &self,
        caller: &Caller,
        repository: &Repository,
        mount: Option<(Digest, &str)>,
    ) -> Result<UploadStarted> {
        caller.check(repository, Action::Push)?;
        if let Some((digest, from)) = mount {
            if let Ok(from) = Repository::parse(from) {
                let readable = caller.check(&from, Action::Pull).is_ok()
                    && self
                        .inner
                        .index
                        .linked_blob(&from, &digest)
                        .await?
                        .is_some();
                if readable && self.inner.index.link(repository, &digest).await? {
                    return Ok(UploadStarted::Mounted(digest));
                }
            }
        }
        let org_id = repository.org();
        let mut uploads = self.uploads()?;
        let open = uploads.values().filter(|u| u.org_id == org_id).count();
        if open >= self.inner.settings.max_uploads_per_org as usize {
            return Err(OciError::new(
                OciCode::TooManyRequests,
                format!("{open} uploads are unfinished already; finish or cancel some"),
            )
            .into());
        }
        let id = format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4().simple());
        uploads.insert(
            id.clone(),
            Upload {
                repository: repository.as_str().to_string(),
                org_id,
                hasher: Sha256::new(),
                size: 0,
                parts: Vec::new(),
                busy: false,
                touched: Instant::now(),
            },
        );
        Ok(UploadStarted::Started { id })
    }

    fn uploads(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Upload>>> {
        self.inner
            .uploads
            .lock()
            .map_err(|_| Error::Backend("upload table poisoned".into()))
    }

    /// Where an upload stands (its byte count).
    pub async fn upload_offset(
        &self,
        caller: &Caller,
        repository: &Repository,
        id: &str,
    ) -> Result<u64> {
        caller.check(repository, Action::Push)?;
        let uploads = self.uploads()?;
        match uploads.get(id) {
            Some(upload) if upload.repository == repository.as_str() => Ok(upload.size),
            _ => Err(upload_unknown(id)),
        }
    }

    /// Appends a chunk (`PATCH`): it must start where the upload stands.
    pub async fn append(
        &self,
        caller: &Caller,
        repository: &Repository,
        id: &str,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> Result<u64> {
        caller.check(repository, Action::Push)?;
        let (mut hasher, size, part) = {
            let mut uploads = self.uploads()?;
            let upload = match uploads.get_mut(id) {
                Some(upload) if upload.repository == repository.as_str() => upload,
                _ => return Err(upload_unknown(id)),
            };
            if upload.busy {
                return Err(OciError::new(
                    OciCode::BlobUploadInvalid,
                    "a chunk of this upload is arriving already: chunks go one at a time, in order",
                )
                .into());
            }
            if let Some((start, _)) = range {
                if start != upload.size {
                    let mut error = OciError::new(
                        OciCode::RangeInvalid,
                        format!(
                            "the chunk starts at {start}, the upload stands at {}",
                            upload.size
                        ),
                    );
                    error.offset = Some(upload.size);
                    return Err(error.into());
                }
            }
            upload.busy = true;
            upload.touched = Instant::now();
            (
                upload.hasher.clone(),
                upload.size,
                format!("p{:06}", upload.parts.len() + 1),
            )
        };
        let result = self.stage(id, &part, body, &mut hasher, size).await;
        let mut uploads = self.uploads()?;
        let Some(upload) = uploads.get_mut(id) else {
            return Err(upload_unknown(id));
        };
        upload.busy = false;
        upload.touched = Instant::now();
        let received = result?;
        if let Some((start, end)) = range {
            if end.checked_sub(start).and_then(|n| n.checked_add(1)) != Some(received) {
                // The part stays staged under this name and is overwritten by the
                // next chunk; the upload stands where it was.
                return Err(OciError::new(
                    OciCode::BlobUploadInvalid,
                    format!(
                        "Content-Range {start}-{end} announced {} bytes, {received} arrived",
                        end.saturating_sub(start) + 1
                    ),
                )
                .into());
            }
        }
        if received > 0 {
            upload.hasher = hasher;
            upload.size = size + received;
            upload.parts.push(part);
        }
        Ok(upload.size)
    }

    /// Streams one chunk into the backend, hashing it and holding the upload
    /// under the byte budget.
    async fn stage(
        &self,
        id: &str,
        part: &str,
        body: ByteStream,
        hasher: &mut Sha256,
        before: u64,
    ) -> Result<u64> {
        let max = self.inner.settings.max_bytes;
        let state = Arc::new(SyncMutex::new((hasher.clone(), 0u64, false)));
        let feed = state.clone();
        let uploaded = self.inner.metrics.bytes_uploaded.clone();
        let body: ByteStream = Box::pin(body.map(move |chunk| {
            let chunk = chunk?;
            let mut state = feed
                .lock()
                .map_err(|_| std::io::Error::other("hash state poisoned"))?;
            state.1 += chunk.len() as u64;
            if before + state.1 > max {
                state.2 = true;
                return Err(std::io::Error::other("over the registry's byte budget"));
            }
            state.0.update(&chunk);
            uploaded.inc_by(chunk.len() as u64);
            Ok(chunk)
        }));
        let result = self.inner.backend.put_part(id, part, body).await;
        let (hashed, received, over) = state
            .lock()
            .map(|state| state.clone())
            .map_err(|_| Error::Backend("hash state poisoned".into()))?;
        if over {
            return Err(OciError::new(
                OciCode::SizeInvalid,
                format!("the blob is over the registry's {max}-byte budget"),
            )
            .into());
        }
        result?;
        *hasher = hashed;
        Ok(received)
    }

    /// Finishes an upload (`PUT ?digest=`), with an optional last chunk: the
    /// bytes must hash to `digest`, else nothing is stored.
    pub async fn finish(
        &self,
        caller: &Caller,
        repository: &Repository,
        id: &str,
        digest: &Digest,
        last_chunk: Option<ByteStream>,
    ) -> Result<Digest> {
        caller.check(repository, Action::Push)?;
        if let Some(body) = last_chunk {
            if let Err(error) = self.append(caller, repository, id, None, body).await {
                self.cancel(caller, repository, id).await?;
                return Err(error);
            }
        }
        let upload = {
            let mut uploads = self.uploads()?;
            match uploads.get(id) {
                Some(upload) if upload.repository == repository.as_str() && !upload.busy => {}
                Some(upload) if upload.repository == repository.as_str() => {
                    return Err(OciError::new(
                        OciCode::BlobUploadInvalid,
                        "a chunk of this upload is still arriving",
                    )
                    .into())
                }
                _ => return Err(upload_unknown(id)),
            }
            uploads.remove(id).ok_or_else(|| upload_unknown(id))?
        };
        let computed = Digest::from_sha256_hex(&hex::encode(upload.hasher.finalize()));
        let backend = &self.inner.backend;
        if computed != *digest {
            backend.abort(id).await?;
            self.inner.metrics.uploads_discarded.inc();
            return Err(OciError::new(
                OciCode::DigestInvalid,
                format!("the uploaded bytes hash to {computed}, not {digest}: nothing was stored"),
            )
            .into());
        }
        // Stored already (by any repository): keep one copy, link it here.
        if self.inner.index.link(repository, digest).await? {
            backend.abort(id).await?;
            return Ok(computed);
        }
        let key = blob_key(digest);
        let stored = if upload.parts.is_empty() {
            backend.abort(id).await?;
            backend.put(&key, bytes_stream(Bytes::new())).await?
        } else {
            backend.complete(id, &upload.parts, &key).await?
        };
        if stored.sha256 != digest.hex() || stored.size != upload.size {
            backend.delete(&key).await?;
            return Err(Error::Backend(format!(
                "the store wrote {} bytes hashing to sha256:{} for {digest}",
                stored.size, stored.sha256
            )));
        }
        self.inner
            .index
            .add_blob(repository, digest, stored.size)
            .await?;
        Ok(computed)
    }

    /// Drops an upload and its staged bytes (`DELETE`).
    pub async fn cancel(&self, caller: &Caller, repository: &Repository, id: &str) -> Result<()> {
        caller.check(repository, Action::Push)?;
        let removed = {
            let mut uploads = self.uploads()?;
            match uploads.get(id) {
                Some(upload) if upload.repository == repository.as_str() => uploads.remove(id),
                _ => None,
            }
        };
        if removed.is_none() {
            return Err(upload_unknown(id));
        }
        self.inner.backend.abort(id).await
    }

    /// Uploads idle longer than the TTL, and staged registry uploads this
    /// process does not know (left by a restart): dropped.
    pub async fn sweep_uploads(&self) -> Result<u64> {
        let ttl = self.inner.settings.upload_ttl;
        let (stale, known): (Vec<String>, Vec<String>) = {
            let mut uploads = self.uploads()?;
            let stale: Vec<String> = uploads
                .iter()
                .filter(|(_, u)| !u.busy && u.touched.elapsed() > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &stale {
                uploads.remove(id);
            }
            (stale, uploads.keys().cloned().collect())
        };
        let mut dropped = 0;
        for id in &stale {
            self.inner.backend.abort(id).await?;
            dropped += 1;
        }
        for id in self.inner.backend.list_uploads().await? {
            if id.starts_with(UPLOAD_PREFIX) && !known.contains(&id) {
                self.inner.backend.abort(&id).await?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    pub(crate) fn backend(&self) -> &Arc<dyn CacheBackend> {
        &self.inner.backend
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// Stores the upstream's blob while feeding `client`; the size on success.
async fn store_fetched(
    inner: &Inner,
    repository: &Repository,
    digest: &Digest,
    response: reqwest::Response,
    client: mpsc::Sender<std::io::Result<Bytes>>,
    max: u64,
) -> Result<u64> {
    let upload = format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let state = Arc::new(SyncMutex::new((Sha256::new(), 0u64)));
    let feed = state.clone();
    let body: ByteStream = Box::pin(
        response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .then(move |chunk| {
                let client = client.clone();
                let feed = feed.clone();
                async move {
                    let chunk = chunk?;
                    {
                        let mut state = feed
                            .lock()
                            .map_err(|_| std::io::Error::other("hash state poisoned"))?;
                        state.1 += chunk.len() as u64;
                        if state.1 > max {
                            return Err(std::io::Error::other("over the registry's byte budget"));
                        }
                        state.0.update(&chunk);
                    }
                    // A client that went away stops getting bytes, not the store.
                    let _ = client.send(Ok(chunk.clone())).await;
                    Ok(chunk)
                }
            }),
    );
    let part = "p000001".to_string();
    if let Err(error) = inner.backend.put_part(&upload, &part, body).await {
        let _ = inner.backend.abort(&upload).await;
        return Err(error);
    }
    let (hasher, size) = state
        .lock()
        .map(|state| state.clone())
        .map_err(|_| Error::Backend("hash state poisoned".into()))?;
    let computed = hex::encode(hasher.finalize());
    if computed != digest.hex() {
        inner.backend.abort(&upload).await?;
        return Err(Error::Backend(format!(
            "the upstream's bytes for {digest} hash to sha256:{computed}: discarded"
        )));
    }
    let stored = inner
        .backend
        .complete(&upload, &[part], &blob_key(digest))
        .await?;
    inner
        .index
        .add_blob(repository, digest, stored.size)
        .await?;
    Ok(size)
}

/// Reads a response body of at most `limit` bytes.
async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Backend(format!("reading from the upstream: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(OciError::new(
                OciCode::SizeInvalid,
                "the upstream's manifest is over the size limit",
            )
            .into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn blob_unknown(repository: &Repository, digest: &Digest) -> Error {
    OciError::new(
        OciCode::BlobUnknown,
        format!("blob {digest} is not in {repository}"),
    )
    .into()
}

fn upload_unknown(id: &str) -> Error {
    OciError::new(
        OciCode::BlobUploadUnknown,
        format!("upload {:?} is unknown (finished, cancelled, expired, or started before a restart): start again", id.chars().take(64).collect::<String>()),
    )
    .into()
}
