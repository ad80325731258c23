//! Prometheus metrics of the cache proxy (`GET /metrics`).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Entries removed by the byte budgets or the idle age (`nimbus_cache_evictions_total`).
    pub evictions: IntCounter,
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub bytes_uploaded: IntCounter,
    pub bytes_downloaded: IntCounter,
    /// Committed entries the scrub found corrupt or missing and dropped.
    pub corrupt_entries: IntCounter,
    /// Uploads discarded (bad input, client gone, over budget).
    pub uploads_discarded: IntCounter,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
}

fn metric_error(error: prometheus::Error) -> Error {
    Error::Backend(format!("metrics: {error}"))
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter> {
            let counter = IntCounter::new(name, help).map_err(metric_error)?;
            registry
                .register(Box::new(counter.clone()))
                .map_err(metric_error)?;
            Ok(counter)
        };
        let evictions = counter(
            "nimbus_cache_evictions_total",
            "Cache entries evicted (byte budgets, idle age).",
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
