//! Garbage collection and eviction of the registry, run beside the Actions
//! cache's maintenance:
//!
//! 1. uploads idle past their TTL, and staged uploads no process knows, go;
//! 2. manifests no tag and no stored index points at go once older than the
//!    grace period (a push stores blobs and child manifests before the manifest
//!    or tag that references them);
//! 3. blobs no manifest references go once unused for the grace period;
//! 4. while the blobs are over `NIMBUS_DOCKER_CACHE_MAX_BYTES`, the least
//!    recently pulled mirror tag goes, and with it what only it kept (mirrors
//!    can be fetched again; org images are never evicted, only collected).
//!
//! Every blob removed counts in `nimbus_cache_evictions_total{kind="registry"}`.

use std::time::Duration;

use super::Registry;
use crate::error::Result;
use crate::index::now_millis;

/// Rows handled per index query.
const BATCH: u32 = 200;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    /// Uploads dropped: idle past their TTL, or staged and unknown to this process.
    pub uploads: u64,
    /// Untagged, unreferenced manifests deleted.
    pub manifests: u64,
    /// Unreferenced blobs deleted from the backend.
    pub blobs: u64,
    /// Bytes those blobs held.
    pub bytes: u64,
    /// Mirror tags evicted because the blobs were over the byte budget.
    pub evicted_tags: u64,
}

/// One pass of collection and eviction.
pub async fn collect_once(registry: &Registry) -> Result<GcReport> {
    let mut report = GcReport {
        uploads: registry.sweep_uploads().await?,
        ..GcReport::default()
    };
    let grace = i64::try_from(registry.settings().gc_grace.as_millis()).unwrap_or(i64::MAX);
    // Inclusive: with a zero grace, what was last used in this very
    // millisecond is already past it.
    let before = now_millis().saturating_sub(grace);
    collect(registry, before, false, &mut report).await?;
    let budget = registry.settings().max_bytes;
    while registry.index().stored_bytes().await? > budget {
        let Some((repository, tag)) = registry.index().coldest_mirror_tag().await? else {
            // Mirror blobs fetched by digest alone (no tag) can still go.
            let freed = report.blobs;
            collect(registry, now_millis(), true, &mut report).await?;
            if report.blobs == freed {
                tracing::warn!(
                    budget,
                    "the registry is over its byte budget with org images alone"
                );
            }
            break;
        };
        registry.index().delete_tag(&repository, &tag).await?;
        report.evicted_tags += 1;
        tracing::info!(
            repository,
            tag,
            "evicted mirror tag (registry over its byte budget)"
        );
        collect(registry, now_millis(), true, &mut report).await?;
    }
    Ok(report)
}

/// Removes orphan manifests created and orphan blobs last used at or before `before`
/// (`mirrors_only`: only what the upstream can give back).
async fn collect(
    registry: &Registry,
    before: i64,
    mirrors_only: bool,
    report: &mut GcReport,
) -> Result<()> {
    let index = registry.index();
    loop {
        let orphans = index.orphan_manifests(before, mirrors_only, BATCH).await?;
        if orphans.is_empty() {
            break;
        }
        for (repository, digest) in &orphans {
            index.delete_manifest(repository, digest).await?;
            report.manifests += 1;
        }
    }
    loop {
        let blobs = index.orphan_blobs(before, mirrors_only, BATCH).await?;
        if blobs.is_empty() {
            break;
        }
        let mut progressed = false;
        for blob in &blobs {
            // Forgotten first: from then on no request can be handed the blob;
            // one that comes back referenced meanwhile is kept.
            if index.forget_blob(&blob.digest).await? {
                registry
                    .backend()
                    .delete(&super::blob_key(&blob.digest))
                    .await?;
                registry
                    .metrics()
                    .evictions
                    .with_label_values(&["registry"])
                    .inc();
                report.blobs += 1;
                report.bytes += blob.size;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(())
}

/// Collects every `interval` until the task is dropped.
pub async fn run(registry: Registry, interval: Duration) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_secs(1)));
    loop {
        ticker.tick().await;
        match collect_once(&registry).await {
            Ok(report) if report != GcReport::default() => {
                tracing::info!(?report, "registry garbage collection")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "registry garbage collection failed"),
        }
    }
}
