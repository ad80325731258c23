//! Background upkeep: eviction by budgets and idle age, abandoned uploads, and the
//! integrity scrub (sha256 of every committed entry re-checked; a corrupt or
//! missing blob is dropped from the index, never served).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nimbus_core::OrgId;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::index::{now_millis, Entry};

/// What eviction enforces.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// All orgs together (`NIMBUS_CACHE_MAX_BYTES`).
    pub global_bytes: Option<u64>,
    /// Each org (`NIMBUS_CACHE_ORG_MAX_BYTES`).
    pub org_bytes: Option<u64>,
    /// Entries not restored for this long go (`NIMBUS_CACHE_MAX_IDLE_DAYS`).
    pub max_idle: Duration,
    /// Uploads idle this long (no part arrived) and never committed are dropped.
    pub upload_ttl: Duration,
    /// Uploads reserved this long ago are dropped however busy they are, so a
    /// trickle of parts cannot keep staged bytes forever.
    pub upload_max_age: Duration,
}

/// Entries removed per index query while evicting.
const BATCH: u32 = 200;

async fn evict(cache: &Cache, entry: &Entry, why: &str) -> Result<()> {
    cache.remove_entry(entry).await?;
    cache
        .metrics
        .evictions
        .with_label_values(&["actions"])
        .inc();
    cache.index.record_eviction(entry.org_id).await?;
    tracing::info!(
        entry = entry.id,
        org_id = entry.org_id,
        key = entry.key,
        bytes = entry.size,
        why,
        "evicted cache entry"
    );
    Ok(())
}

/// One eviction pass; returns how many entries went.
pub async fn evict_once(cache: &Cache, budgets: &Budgets) -> Result<u64> {
    let mut evicted = 0u64;
    let idle_before = now_millis() - budgets.max_idle.as_millis() as i64;
    loop {
        let idle = cache.index.idle_since(idle_before, BATCH).await?;
        if idle.is_empty() {
            break;
        }
        for entry in &idle {
            evict(cache, entry, "idle").await?;
            evicted += 1;
        }
    }
    if let Some(limit) = budgets.org_bytes {
        for (org, mut bytes) in cache.index.org_bytes().await? {
            evicted += shrink(cache, Some(org), &mut bytes, limit, "org budget").await?;
        }
    }
    if let Some(limit) = budgets.global_bytes {
        let mut bytes: u64 = cache.index.org_bytes().await?.iter().map(|(_, b)| *b).sum();
        evicted += shrink(cache, None, &mut bytes, limit, "global budget").await?;
    }
    Ok(evicted)
}

/// Evicts least recently used entries (of `org`, or of all) until `bytes ≤ limit`.
async fn shrink(
    cache: &Cache,
    org: Option<OrgId>,
    bytes: &mut u64,
    limit: u64,
    why: &str,
) -> Result<u64> {
    let mut evicted = 0;
    while *bytes > limit {
        let candidates = cache.index.least_recently_used(org, BATCH).await?;
        if candidates.is_empty() {
            break;
        }
        for entry in &candidates {
            if *bytes <= limit {
                break;
            }
            evict(cache, entry, why).await?;
            *bytes = bytes.saturating_sub(entry.size);
            evicted += 1;
        }
    }
    Ok(evicted)
}

/// Drops uploads idle past `upload_ttl` or reserved more than `max_age` ago and
/// never committed, and staging areas no pending entry owns (left by a crash).
/// Returns how many uploads went.
pub async fn sweep_abandoned(
    cache: &Cache,
    upload_ttl: Duration,
    max_age: Duration,
) -> Result<u64> {
    let mut dropped = 0;
    let now = now_millis();
    let idle_before = now - upload_ttl.as_millis() as i64;
    let reserved_before = now - max_age.as_millis() as i64;
    loop {
        let stale = cache
            .index
            .pending_since(idle_before, reserved_before, BATCH)
            .await?;
        if stale.is_empty() {
            break;
        }
        for entry in &stale {
            cache.discard(entry).await;
            dropped += 1;
        }
    }
    for upload in cache.backend.list_uploads().await? {
        // The registry's uploads are its own to sweep (registry::gc).
        if upload.starts_with(crate::registry::UPLOAD_PREFIX) {
            continue;
        }
        if !cache.index.upload_is_pending(&upload).await? {
            cache.backend.abort(&upload).await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// What one scrub pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubReport {
    /// Entries whose bytes matched their digest.
    pub verified: u64,
    /// Entries dropped: bytes missing, short or not matching their digest.
    pub corrupt: u64,
    /// Stored blobs no entry pointed at, removed.
    pub orphan_blobs: u64,
}

/// Re-hashes every committed entry not verified since the pass began; drops the
/// corrupt and the missing. Then removes blobs no entry points at.
pub async fn scrub_once(cache: &Cache) -> Result<ScrubReport> {
    let started = now_millis();
    let mut report = ScrubReport::default();
    loop {
        let entries = cache.index.verified_before(started, 64).await?;
        if entries.is_empty() {
            break;
        }
        for entry in &entries {
            match verify(cache, entry).await {
                Ok(true) => {
                    cache.index.mark_verified(entry.id).await?;
                    report.verified += 1;
                }
                Ok(false) => {
                    tracing::error!(
                        entry = entry.id,
                        key = entry.key,
                        blob = entry.blob_key,
                        "cache entry is corrupt or missing: dropped"
                    );
                    cache.remove_entry(entry).await?;
                    cache.metrics.corrupt_entries.inc();
                    report.corrupt += 1;
                }
                Err(error) => {
                    // A backend hiccup is not corruption: try again next pass.
                    tracing::warn!(%error, entry = entry.id, "scrub could not read an entry");
                    cache.index.mark_verified(entry.id).await?;
                }
            }
        }
    }
    let grace = 3_600_000; // an upload may be between "blob written" and "index updated"
    for object in cache.backend.list("org-").await? {
        if object.last_modified_millis < started - grace
            && !cache.index.blob_is_indexed(&object.key).await?
        {
            cache.backend.delete(&object.key).await?;
            report.orphan_blobs += 1;
        }
    }
    Ok(report)
}

/// Whether the entry's blob is there with the recorded size and sha256.
async fn verify(cache: &Cache, entry: &Entry) -> Result<bool> {
    let Some(expected) = &entry.sha256 else {
        return Ok(true);
    };
    let mut reader = match cache.backend.get(&entry.blob_key, None).await {
        Ok(reader) => reader,
        Err(Error::NotFound(_)) => return Ok(false),
        Err(error) => return Err(error),
    };
    if reader.size != entry.size {
        return Ok(false);
    }
    if crate::digest::is_composite(expected) {
        // Joined from parts by the store: each part checked against its own
        // digest, and the layout against the entry's composite.
        let layout = cache.index.parts(entry.id).await?;
        if crate::digest::composite(&layout).as_deref() != Some(expected.as_str()) {
            return Ok(false);
        }
        let mut hasher = crate::digest::LayoutHasher::new(&layout);
        while let Some(chunk) = reader.body.next().await {
            hasher.update(&chunk?);
        }
        return Ok(hasher.intact());
    }
    let mut hasher = Sha256::new();
    while let Some(chunk) = reader.body.next().await {
        hasher.update(&chunk?);
    }
    Ok(&hex::encode(hasher.finalize()) == expected)
}

/// Runs eviction every `interval` (and whenever `wake` fires, e.g. after a commit)
/// and the scrub every `scrub_interval`, until the task is dropped.
pub async fn run(
    cache: Cache,
    budgets: Budgets,
    interval: Duration,
    scrub_interval: Duration,
    wake: Arc<Notify>,
) {
    let mut last_scrub = tokio::time::Instant::now();
    if let Err(error) = sweep_abandoned(&cache, budgets.upload_ttl, budgets.upload_max_age).await {
        tracing::warn!(%error, "sweeping abandoned uploads failed");
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
        if let Err(error) = evict_once(&cache, &budgets).await {
            tracing::warn!(%error, "cache eviction failed");
        }
        if let Err(error) =
            sweep_abandoned(&cache, budgets.upload_ttl, budgets.upload_max_age).await
        {
            tracing::warn!(%error, "sweeping abandoned uploads failed");
        }
        if last_scrub.elapsed() >= scrub_interval {
            last_scrub = tokio::time::Instant::now();
            match scrub_once(&cache).await {
                Ok(report) if report.corrupt > 0 || report.orphan_blobs > 0 => {
                    tracing::warn!(?report, "cache scrub dropped entries")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cache scrub failed"),
            }
        }
    }
}
