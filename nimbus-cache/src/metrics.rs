//! Prometheus metrics of the cache proxy (`GET /metrics`).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::error::{Error, Result};

/// The proxy's Prometheus metrics, all registered in one [`Registry`]. Cheap
/// to clone: clones share the same counters.
#[derive(Clone)]
pub struct Metrics {
    /// The registry every metric below is registered in; [`Metrics::render`]
    /// gathers it.
    pub registry: Registry,
    /// What eviction and garbage collection removed, by `kind`: `actions`
    /// (cache entries: byte budgets, idle age) or `registry` (blobs).
    pub evictions: IntCounterVec,
    /// Requests the registry sent its upstream, by `kind` (`manifest`, `blob`).
    pub registry_upstream_requests: IntCounterVec,
    /// Restores (lookups) that found an entry.
    pub hits: IntCounter,
    /// Restores (lookups) that found nothing.
    pub misses: IntCounter,
    /// Bytes received into cache entries and registry blob uploads.
    pub bytes_uploaded: IntCounter,
    /// Bytes of cache entries served to clients (ranges count what was sent).
    pub bytes_downloaded: IntCounter,
    /// Committed entries the scrub found corrupt or missing and dropped.
    pub corrupt_entries: IntCounter,
    /// Uploads discarded (bad input, client gone, over budget).
    pub uploads_discarded: IntCounter,
    /// HTTP requests by `route` (the matched route pattern, or `unmatched`)
    /// and `status`.
    pub requests: IntCounterVec,
    /// HTTP request latency in seconds, up to the response head (not the
    /// streamed body), by `route`.
    pub request_seconds: HistogramVec,
}

fn metric_error(error: prometheus::Error) -> Error {
    Error::Backend(format!("metrics: {error}"))
}

impl Metrics {
    /// A fresh set of metrics in its own registry, every counter at zero. Fails
    /// only if a metric's definition is invalid.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter> {
            let counter = IntCounter::new(name, help).map_err(metric_error)?;
            registry
                .register(Box::new(counter.clone()))
                .map_err(metric_error)?;
            Ok(counter)
        };
        let counter_vec = |name: &str, help: &str, label: &str| -> Result<IntCounterVec> {
            let counter =
                IntCounterVec::new(Opts::new(name, help), &[label]).map_err(metric_error)?;
            registry
                .register(Box::new(counter.clone()))
                .map_err(metric_error)?;
            Ok(counter)
        };
        let evictions = counter_vec(
            "nimbus_cache_evictions_total",
            "What eviction removed: cache entries (kind=actions; byte budgets, idle age) and registry blobs (kind=registry).",
            "kind",
        )?;
        // Both kinds are exported from the start, so rate() has a series at zero.
        evictions.with_label_values(&["actions"]);
        evictions.with_label_values(&["registry"]);
        let registry_upstream_requests = counter_vec(
            "nimbus_cache_registry_upstream_requests_total",
            "Requests the registry mirror sent its upstream, by kind (manifest, blob).",
            "kind",
        )?;
        let hits = counter("nimbus_cache_hits_total", "Restores that found an entry.")?;
        let misses = counter("nimbus_cache_misses_total", "Restores that found nothing.")?;
        let bytes_uploaded = counter(
            "nimbus_cache_uploaded_bytes_total",
            "Bytes received into cache entries.",
        )?;
        let bytes_downloaded = counter(
            "nimbus_cache_downloaded_bytes_total",
            "Bytes served from cache entries.",
        )?;
        let corrupt_entries = counter(
            "nimbus_cache_corrupt_entries_total",
            "Committed entries found corrupt or missing by the scrub, and dropped.",
        )?;
        let uploads_discarded = counter(
            "nimbus_cache_uploads_discarded_total",
            "Uploads discarded: bad ranges, size mismatch, over budget, client gone, abandoned.",
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "nimbus_cache_proxy_requests_total",
                "HTTP requests by route and status.",
            ),
            &["route", "status"],
        )
        .map_err(metric_error)?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nimbus_cache_proxy_request_seconds",
                "HTTP request latency (to the response head) by route.",
            ),
            &["route"],
        )
        .map_err(metric_error)?;
        registry
            .register(Box::new(requests.clone()))
            .map_err(metric_error)?;
        registry
            .register(Box::new(request_seconds.clone()))
            .map_err(metric_error)?;
        Ok(Metrics {
            registry,
            evictions,
            registry_upstream_requests,
            hits,
            misses,
            bytes_uploaded,
            bytes_downloaded,
            corrupt_entries,
            uploads_discarded,
            requests,
            request_seconds,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
