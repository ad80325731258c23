//! [`Cache`]: entries over a [`CacheBackend`] and a [`CacheIndex`], the one place
//! the rules live (scopes, reservation, parts, commit checks, budgets, hits).
//! The Actions cache v1 and v2 protocols and the artifact API are thin adapters
//! over it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use nimbus_core::cache_token::CacheScope;
use nimbus_core::OrgId;

use crate::backend::{ByteRange, ByteStream, CacheBackend, ObjectReader, Placement, StagedPart};
use crate::error::{Error, Result};
use crate::index::{CacheIndex, Entry, EntryState, NewEntry, Part};
use crate::metrics::Metrics;

/// Longest cache key, as GitHub's.
pub const MAX_KEY_BYTES: usize = 512;
/// Longest version string (a sha256 hex is 64).
const MAX_VERSION_BYTES: usize = 512;

/// Most keys one restore may try (the key and its restore keys), as GitHub's.
pub const MAX_RESTORE_KEYS: usize = 10;
/// Most parts (blocks, chunks) one upload may stage (Azure's block limit).
pub const MAX_PARTS: usize = 50_000;
/// A v1 chunk at least this long has a rank ([`Part::rank`]): its offset in
/// units of this many bytes, distinct and increasing for such chunks as long as
/// they do not overlap (which the commit checks).
pub const OFFSET_RANK_BYTES: u64 = 8 * 1024 * 1024;

/// Limits applied to uploads (eviction enforces the budgets over time).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No single entry may be larger (the smaller of the org and global budgets);
    /// nor may the parts one upload stages add up to more.
    pub max_entry_bytes: u64,
    /// Bytes one org may hold staged in unfinished uploads at once (its budget):
    /// staging is storage too, and is not evicted.
    pub org_staging_bytes: u64,
    /// Unfinished uploads one org may have at once.
    pub max_pending_uploads: u32,
}

/// How the parts of an upload are put in order at commit.
#[derive(Debug, Clone)]
pub enum PartOrder {
    /// By their byte offsets, which must tile `0..size` exactly (v1 Content-Range).
    ByOffset {
        /// The entry's total size, as the commit announces it.
        size: u64,
    },
    /// In the order given (a blob block list).
    Listed(Vec<String>),
}

/// The cache service shared by every protocol.
#[derive(Clone)]
pub struct Cache {
    /// Where the bytes live.
    pub backend: Arc<dyn CacheBackend>,
    /// What entries exist, whose they are and where their bytes are.
    pub index: CacheIndex,
    /// The proxy's Prometheus metrics.
    pub metrics: Metrics,
    /// Size limits every upload is held to.
    pub limits: Limits,
}

/// Checks a key as GitHub does: 1 to 512 bytes, no commas (v1 lists keys with them).
pub fn check_cache_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidInput("the cache key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidInput(format!(
            "the cache key is {} bytes long; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        )));
    }
    if key.contains(',') {
        return Err(Error::InvalidInput(
            "a cache key cannot contain commas".into(),
        ));
    }
    Ok(())
}

fn check_version(version: &str) -> Result<()> {
    if version.len() > MAX_VERSION_BYTES {
        return Err(Error::InvalidInput(format!(
            "the cache version is longer than {MAX_VERSION_BYTES} bytes"
        )));
    }
    Ok(())
}

fn require_write(scope: &CacheScope) -> Result<()> {
    if scope.can_write() {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "this cache token is read-only: it cannot save entries".into(),
        ))
    }
}

/// Two parts staged in place at the same rank overwrote each other's bytes in the
/// store (they were sent in parallel, so neither saw the other): the upload
/// cannot be joined.
fn check_ranks(parts: &[Part]) -> Result<()> {
    let mut ranks: Vec<u32> = parts.iter().filter_map(|part| part.rank).collect();
    ranks.sort_unstable();
    if ranks.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(Error::InvalidInput(
            "two parts were uploaded for the same position at once (block ids that end in the same index); the upload is discarded".into(),
        ));
    }
    Ok(())
}

/// A body that fails once more than `limit` bytes went through; `exceeded` tells why.
fn limited(
    body: ByteStream,
    limit: u64,
    counted: Arc<AtomicU64>,
    exceeded: Arc<AtomicBool>,
) -> ByteStream {
    Box::pin(body.map(move |chunk| {
        let chunk = chunk?;
        let total = counted.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if total > limit {
            exceeded.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("body over the cache budget"));
        }
        Ok(chunk)
    }))
}

impl Cache {
    /// Reserves `key`/`version` in the token's scope for an upload.
    /// `replace` lets a new upload supersede a committed entry on commit (the
    /// artifact API); the Actions protocols refuse to overwrite, as GitHub does.
    pub async fn reserve(
        &self,
        scope: &CacheScope,
        key: &str,
        version: &str,
        expected_size: Option<u64>,
        replace: bool,
    ) -> Result<Entry> {
        require_write(scope)?;
        check_cache_key(key)?;
        check_version(version)?;
        if let Some(size) = expected_size {
            self.check_budget(size)?;
        }
        let pending = self.index.pending_count(scope.org_id).await?;
        if pending >= u64::from(self.limits.max_pending_uploads) {
            return Err(Error::TooMany(format!(
                "org {} has {pending} unfinished cache uploads, the most allowed; finish or abandon some first",
                scope.org_id
            )));
        }
        if replace {
            // Last writer wins: an upload still pending for this key (a client that
            // died, or a proxy that crashed under it) is superseded, not waited for.
            if let Some(stale) = self
                .index
                .find(
                    scope.org_id,
                    &scope.repo,
                    &scope.git_ref,
                    key,
                    version,
                    EntryState::Pending,
                )
                .await?
            {
                self.discard(&stale).await;
            }
        }
        self.index
            .reserve(
                &NewEntry {
                    org_id: scope.org_id,
                    repo: &scope.repo,
                    git_ref: &scope.git_ref,
                    key,
                    version,
                    expected_size,
                },
                replace,
            )
            .await
    }

    fn check_budget(&self, size: u64) -> Result<()> {
        if size > self.limits.max_entry_bytes {
            return Err(Error::TooLarge(format!(
                "{size} bytes is over the cache budget of {} bytes",
                self.limits.max_entry_bytes
            )));
        }
        Ok(())
    }

    /// The pending upload `id` if it belongs to the token's scope; anything else is
    /// "not found", so one org cannot probe another's ids.
    pub async fn pending(&self, scope: &CacheScope, id: i64) -> Result<Entry> {
        require_write(scope)?;
        match self.index.get(id).await? {
            Some(entry)
                if entry.state == EntryState::Pending
                    && entry.org_id == scope.org_id
                    && entry.repo == scope.repo
                    && entry.git_ref == scope.git_ref =>
            {
                Ok(entry)
            }
            _ => Err(Error::NotFound(format!("cache upload {id}"))),
        }
    }

    /// The entry `id` whatever its scope: for links the proxy signed itself.
    pub async fn entry(&self, id: i64) -> Result<Entry> {
        self.index
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("cache entry {id}")))
    }

    /// Stages one part of `entry`. Any failure (client gone, over budget, backend)
    /// discards the whole upload: a half-uploaded entry is never committed.
    pub async fn upload_part(&self, entry: &Entry, part: Part, body: ByteStream) -> Result<u64> {
        if let Some(start) = part.start {
            let end = start.saturating_add(part.size);
            self.check_budget(end)?;
            if let Some(expected) = entry.expected_size {
                if end > expected {
                    self.discard(entry).await;
                    return Err(Error::InvalidInput(format!(
                        "bytes {start}-{} lie beyond the announced size of {expected} bytes",
                        end.saturating_sub(1)
                    )));
                }
            }
            // Early answer for overlaps; commit checks again (uploads run in parallel).
            for existing in self.index.parts(entry.id).await? {
                if let Some(other) = existing.start {
                    if existing.name != part.name && start < other + existing.size && other < end {
                        self.discard(entry).await;
                        return Err(Error::InvalidInput(format!(
                            "bytes {start}-{} overlap bytes {other}-{} uploaded before; the upload is discarded",
                            end.saturating_sub(1),
                            (other + existing.size).saturating_sub(1)
                        )));
                    }
                }
            }
        }
        let allowance = match self.staging_allowance(entry, &part.name).await {
            Ok(allowance) => allowance,
            Err(error) => {
                self.discard(entry).await;
                return Err(error);
            }
        };
        let counted = Arc::new(AtomicU64::new(0));
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = limited(body, allowance, counted.clone(), exceeded.clone());
        let placement = match self.placement(entry, &part).await {
            Ok(placement) => placement,
            Err(error) => {
                self.discard(entry).await;
                return Err(error);
            }
        };
        let written = match &placement {
            Some((handle, rank)) => {
                let at = Placement {
                    key: &entry.blob_key,
                    handle,
                    rank: *rank,
                    size: part.size,
                };
                self.backend
                    .put_part_at(&entry.upload_id, &part.name, &at, body)
                    .await
                    .map(|placed| (placed.stored, placed.placed.then_some(*rank)))
            }
            None => self
                .backend
                .put_part(&entry.upload_id, &part.name, body)
                .await
                .map(|stored| (stored, None)),
        };
        let (staged, placed_rank) = match written {
            Ok(staged) => staged,
            Err(error) => {
                self.discard(entry).await;
                return Err(if exceeded.load(Ordering::Relaxed) {
                    Error::TooLarge(format!(
                        "the upload's staged parts are over the cache budget (an entry may have {} bytes; an org's unfinished uploads {} together); it is discarded",
                        self.limits.max_entry_bytes, self.limits.org_staging_bytes
                    ))
                } else {
                    error
                });
            }
        };
        let size = staged.size;
        if part.start.is_some() && size != part.size {
            self.discard(entry).await;
            return Err(Error::InvalidInput(format!(
                "Content-Range announced {} bytes but the body had {size}; the upload is discarded",
                part.size
            )));
        }
        self.metrics.bytes_uploaded.inc_by(size);
        self.index
            .add_part(
                entry.id,
                &Part {
                    name: part.name,
                    start: part.start,
                    size,
                    sha256: Some(staged.sha256),
                    rank: placed_rank,
                },
            )
            .await?;
        Ok(size)
    }

    /// The store's upload and the rank to stage `part` at in place, when the
    /// protocol gave a rank, the size is known, no other part of the upload holds
    /// that rank, and the store keeps uploads of its own (it opens one at the
    /// first such part; parallel first parts agree on one through the index).
    async fn placement(&self, entry: &Entry, part: &Part) -> Result<Option<(String, u32)>> {
        let Some(rank) = part.rank else {
            return Ok(None);
        };
        if part.size == 0 {
            return Ok(None);
        }
        let parts = self.index.parts(entry.id).await?;
        if parts
            .iter()
            .any(|other| other.rank == Some(rank) && other.name != part.name)
        {
            return Ok(None);
        }
        if let Some(handle) = &entry.staging_handle {
            return Ok(Some((handle.clone(), rank)));
        }
        let Some(opened) = self
            .backend
            .begin_upload(&entry.upload_id, &entry.blob_key)
            .await?
        else {
            return Ok(None);
        };
        let recorded = self.index.set_staging_handle(entry.id, &opened).await;
        if !matches!(&recorded, Ok(Some(winner)) if *winner == opened) {
            if let Err(error) = self.backend.abandon(&entry.blob_key, &opened).await {
                tracing::warn!(%error, upload = entry.upload_id, "dropping a spare store upload failed");
            }
        }
        match recorded? {
            Some(winner) => Ok(Some((winner, rank))),
            None => Err(Error::NotFound(format!("cache upload {}", entry.id))),
        }
    }

    /// How many bytes the next part (`name`) of `entry` may have: what is left of
    /// the entry's size limit after its other staged parts, and of the org's
    /// staging allowance after all its unfinished uploads. Staged parts are
    /// storage nobody evicts, so they count before a byte is written.
    async fn staging_allowance(&self, entry: &Entry, name: &str) -> Result<u64> {
        let parts = self.index.parts(entry.id).await?;
        let replaced = parts.iter().find(|p| p.name == name).map_or(0, |p| p.size);
        if replaced == 0 && parts.len() >= MAX_PARTS {
            return Err(Error::TooLarge(format!(
                "an upload may stage at most {MAX_PARTS} parts; it is discarded"
            )));
        }
        let staged: u64 = parts.iter().map(|p| p.size).sum::<u64>() - replaced;
        let org_staged = self
            .index
            .org_staged_bytes(entry.org_id)
            .await?
            .saturating_sub(replaced);
        let allowance = self
            .limits
            .max_entry_bytes
            .saturating_sub(staged)
            .min(self.limits.org_staging_bytes.saturating_sub(org_staged));
        Ok(allowance)
    }

    /// Stores a whole body as `entry` and commits it (single-shot uploads).
    pub async fn upload_whole(
        &self,
        entry: &Entry,
        body: ByteStream,
        expected_size: Option<u64>,
        replace: bool,
    ) -> Result<Entry> {
        let counted = Arc::new(AtomicU64::new(0));
        let exceeded = Arc::new(AtomicBool::new(false));
        if let Some(size) = expected_size {
            if let Err(error) = self.check_budget(size) {
                self.discard(entry).await;
                return Err(error);
            }
        }
        let body = limited(
            body,
            self.limits.max_entry_bytes,
            counted.clone(),
            exceeded.clone(),
        );
        let stored = match self.backend.put(&entry.blob_key, body).await {
            Ok(stored) => stored,
            Err(error) => {
                self.discard(entry).await;
                return Err(if exceeded.load(Ordering::Relaxed) {
                    Error::TooLarge(format!(
                        "the upload is over the cache budget of {} bytes; it is discarded",
                        self.limits.max_entry_bytes
                    ))
                } else {
                    error
                });
            }
        };
        self.metrics.bytes_uploaded.inc_by(stored.size);
        if let Some(expected) = expected_size {
            if stored.size != expected {
                let _ = self.backend.delete(&entry.blob_key).await;
                self.discard(entry).await;
                return Err(Error::InvalidInput(format!(
                    "Content-Length said {expected} bytes but {} arrived; the upload is discarded",
                    stored.size
                )));
            }
        }
        self.finish_commit(entry, stored.size, &stored.sha256, &[], replace)
            .await
    }

    /// Joins the staged parts of `entry` and commits it. Gaps, overlaps, a size
    /// other than announced or missing parts discard the upload with a clear error.
    ///
    /// Every part's sha256 was taken as it was staged, so the store joins them by
    /// itself (no byte read back) and the entry is identified by the composite of
    /// those digests, its layout kept for the scrub ([`crate::digest`]).
    pub async fn commit(&self, entry: &Entry, order: PartOrder, replace: bool) -> Result<Entry> {
        let parts = self.index.parts(entry.id).await?;
        let ordered = match self.order_parts(entry, &parts, &order) {
            Ok(ordered) => ordered,
            Err(error) => {
                self.discard(entry).await;
                return Err(error);
            }
        };
        let names: Vec<String> = ordered.iter().map(|part| part.name.clone()).collect();
        let staged: u64 = ordered.iter().map(|part| part.size).sum();
        // Before the store writes a byte: a block list may name one block many
        // times, and the join would then write far more than was ever staged.
        if staged > self.limits.max_entry_bytes {
            self.discard(entry).await;
            return Err(Error::TooLarge(format!(
                "the parts to join add up to {staged} bytes, over the cache budget of {} bytes; the upload is discarded",
                self.limits.max_entry_bytes
            )));
        }
        let joined = match crate::digest::composite(&ordered) {
            Some(digest) => match &entry.staging_handle {
                Some(handle) => {
                    if let Err(error) = check_ranks(&parts) {
                        self.discard(entry).await;
                        return Err(error);
                    }
                    let staged: Vec<StagedPart> = ordered
                        .iter()
                        .map(|part| StagedPart {
                            name: part.name.clone(),
                            size: part.size,
                            rank: part.rank,
                        })
                        .collect();
                    self.backend
                        .compose_at(&entry.upload_id, handle, &staged, &entry.blob_key)
                        .await
                        .map(|size| (size, digest))
                }
                None => self
                    .backend
                    .compose(&entry.upload_id, &names, &entry.blob_key)
                    .await
                    .map(|size| (size, digest)),
            },
            // A part staged before digests were recorded: hash the whole.
            None => self
                .backend
                .complete(&entry.upload_id, &names, &entry.blob_key)
                .await
                .map(|stored| (stored.size, stored.sha256)),
        };
        let (size, digest) = match joined {
            Ok(joined) => joined,
            Err(error) => {
                self.discard(entry).await;
                return Err(error);
            }
        };
        if size != staged {
            let _ = self.backend.delete(&entry.blob_key).await;
            self.discard(entry).await;
            return Err(Error::Backend(format!(
                "the store joined {staged} staged bytes into {size}; the upload is discarded"
            )));
        }
        if let PartOrder::ByOffset { size: announced } = order {
            if size != announced {
                let _ = self.backend.delete(&entry.blob_key).await;
                self.discard(entry).await;
                return Err(Error::InvalidInput(format!(
                    "commit says {announced} bytes but {size} were stored"
                )));
            }
        }
        let layout = if crate::digest::is_composite(&digest) {
            let mut offset = 0;
            ordered
                .iter()
                .enumerate()
                .map(|(position, part)| {
                    let start = offset;
                    offset += part.size;
                    Part {
                        name: format!("{position:06}"),
                        start: Some(start),
                        size: part.size,
                        sha256: part.sha256.clone(),
                        rank: None,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        self.finish_commit(entry, size, &digest, &layout, replace)
            .await
    }

    /// The parts to join, in order (a block list may name a part twice).
    fn order_parts(&self, entry: &Entry, parts: &[Part], order: &PartOrder) -> Result<Vec<Part>> {
        match order {
            PartOrder::ByOffset { size } => {
                if let Some(expected) = entry.expected_size {
                    if expected != *size {
                        return Err(Error::InvalidInput(format!(
                            "commit says {size} bytes but {expected} were reserved; the upload is discarded"
                        )));
                    }
                }
                let mut offset = 0u64;
                let mut names = Vec::with_capacity(parts.len());
                for part in parts {
                    let Some(start) = part.start else {
                        return Err(Error::InvalidInput(format!(
                            "part {:?} has no byte offset",
                            part.name
                        )));
                    };
                    if start > offset {
                        return Err(Error::InvalidInput(format!(
                            "bytes {offset}-{} were never uploaded; the upload is discarded",
                            start - 1
                        )));
                    }
                    if start < offset {
                        return Err(Error::InvalidInput(format!(
                            "uploaded ranges overlap at byte {start}; the upload is discarded"
                        )));
                    }
                    offset = start + part.size;
                    names.push(part.clone());
                }
                if offset != *size {
                    return Err(Error::InvalidInput(format!(
                        "commit says {size} bytes but {offset} were uploaded; the upload is discarded"
                    )));
                }
                Ok(names)
            }
            PartOrder::Listed(names) => names
                .iter()
                .map(|name| {
                    parts
                        .iter()
                        .find(|part| &part.name == name)
                        .cloned()
                        .ok_or_else(|| {
                            Error::InvalidInput(format!(
                                "block {name:?} in the block list was never uploaded; the upload is discarded"
                            ))
                        })
                })
                .collect(),
        }
    }

    async fn finish_commit(
        &self,
        entry: &Entry,
        size: u64,
        sha256: &str,
        layout: &[Part],
        replace: bool,
    ) -> Result<Entry> {
        if let Err(error) = self.check_budget(size) {
            let _ = self.backend.delete(&entry.blob_key).await;
            self.discard(entry).await;
            return Err(error);
        }
        match self
            .index
            .commit(entry.id, size, sha256, layout, replace)
            .await
        {
            Ok(replaced) => {
                if let Some(old) = replaced {
                    if let Err(error) = self.backend.delete(&old.blob_key).await {
                        tracing::warn!(%error, blob = old.blob_key, "removing a replaced cache blob failed");
                    }
                }
            }
            Err(error) => {
                let _ = self.backend.delete(&entry.blob_key).await;
                self.discard(entry).await;
                return Err(error);
            }
        }
        self.entry(entry.id).await
    }

    /// The Actions v2 `FinalizeCacheEntryUpload`: the upload of `key` in the
    /// token's scope is done. `Ok(Err(message))` when nothing complete arrived
    /// (the reservation is dropped); a committed entry whose size differs from
    /// `size` is removed. Needs a write token: finalizing discards and removes.
    pub async fn finalize(
        &self,
        scope: &CacheScope,
        key: &str,
        version: &str,
        size: Option<u64>,
    ) -> Result<std::result::Result<Entry, String>> {
        require_write(scope)?;
        check_cache_key(key)?;
        check_version(version)?;
        let find = |wanted| {
            self.index.find(
                scope.org_id,
                &scope.repo,
                &scope.git_ref,
                key,
                version,
                wanted,
            )
        };
        if let Some(pending) = find(EntryState::Pending).await? {
            self.discard(&pending).await;
            return Ok(Err(format!(
                "no complete upload arrived for {key:?}; the reservation is dropped"
            )));
        }
        let entry = find(EntryState::Committed)
            .await?
            .ok_or_else(|| Error::NotFound(format!("cache upload for {key:?}")))?;
        if let Some(size) = size {
            if size != entry.size {
                self.remove_entry(&entry).await?;
                return Err(Error::InvalidInput(format!(
                    "finalize says {size} bytes but {} arrived; the entry is discarded",
                    entry.size
                )));
            }
        }
        Ok(Ok(entry))
    }

    /// Drops a pending upload: its staged parts and its index row.
    pub async fn discard(&self, entry: &Entry) {
        self.metrics.uploads_discarded.inc();
        if let Err(error) = self.backend.abort(&entry.upload_id).await {
            tracing::warn!(%error, upload = entry.upload_id, "dropping staged parts failed");
        }
        // The caller's copy may predate the store's upload: ask the index.
        let handle = match self.index.get(entry.id).await {
            Ok(Some(current)) => current.staging_handle,
            _ => entry.staging_handle.clone(),
        };
        if let Some(handle) = handle {
            if let Err(error) = self.backend.abandon(&entry.blob_key, &handle).await {
                tracing::warn!(%error, upload = entry.upload_id, "dropping the store's upload failed");
            }
        }
        if let Err(error) = self.index.remove(entry.id).await {
            tracing::warn!(%error, entry = entry.id, "dropping a pending entry failed");
        }
    }

    /// Finds the entry a restore gets (the ref, then the default branch; exact key
    /// first, then `restore_keys` by prefix), counting the hit or miss.
    pub async fn lookup(
        &self,
        scope: &CacheScope,
        key: &str,
        restore_keys: &[&str],
        version: &str,
    ) -> Result<Option<Entry>> {
        check_cache_key(key)?;
        if restore_keys.len() >= MAX_RESTORE_KEYS {
            return Err(Error::InvalidInput(format!(
                "a restore may try at most {MAX_RESTORE_KEYS} keys (the key and {} restore keys)",
                MAX_RESTORE_KEYS - 1
            )));
        }
        for restore_key in restore_keys {
            check_cache_key(restore_key)?;
        }
        check_version(version)?;
        let mut keys = vec![key];
        keys.extend_from_slice(restore_keys);
        let found = self
            .index
            .lookup(
                scope.org_id,
                &scope.repo,
                &scope.restore_refs(),
                &keys,
                version,
            )
            .await?;
        match &found {
            Some(entry) => {
                self.metrics.hits.inc();
                self.index.record_hit(entry).await?;
            }
            None => {
                self.metrics.misses.inc();
                self.index.record_miss(scope.org_id).await?;
            }
        }
        Ok(found)
    }

    /// Opens a committed entry's bytes (ranged when asked).
    pub async fn open(&self, entry: &Entry, range: Option<ByteRange>) -> Result<ObjectReader> {
        if entry.state != EntryState::Committed {
            return Err(Error::NotFound(format!("cache entry {}", entry.id)));
        }
        self.backend.get(&entry.blob_key, range).await
    }

    /// Removes a committed entry of the token's scope.
    pub async fn delete(&self, scope: &CacheScope, key: &str, version: &str) -> Result<()> {
        require_write(scope)?;
        check_cache_key(key)?;
        let entry = self
            .index
            .lookup(
                scope.org_id,
                &scope.repo,
                &[scope.git_ref.as_str()],
                &[key],
                version,
            )
            .await?
            .ok_or_else(|| Error::NotFound(format!("cache entry {key:?}")))?;
        self.remove_entry(&entry).await
    }

    /// Drops an entry from the index, then its blob (a crash in between leaves an
    /// orphan blob, which the scrub removes, never an entry without bytes).
    pub async fn remove_entry(&self, entry: &Entry) -> Result<()> {
        self.index.remove(entry.id).await?;
        self.backend.delete(&entry.blob_key).await
    }

    /// Per-org figures for `GET /api/usage`: one org's, or every org's with `None`.
    pub async fn usage(&self, org: Option<OrgId>) -> Result<Vec<crate::index::OrgUsage>> {
        self.index.usage(org).await
    }
}
