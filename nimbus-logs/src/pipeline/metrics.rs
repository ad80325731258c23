//! Prometheus metrics of the logging pipeline (`GET /metrics`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::error::{Error, Result};

/// The pipeline's Prometheus metrics, in a registry of their own. Clones share the
/// same metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Holds every metric below; [`Metrics::render`] encodes it.
    pub registry: Registry,
    /// `nimbus_logging_pipeline_lines_received_total`: lines accepted by `POST /api/logs`.
    pub lines_received: IntCounter,
    /// `nimbus_logging_pipeline_lines_written_total`: lines written to the sink.
    pub lines_written: IntCounter,
    /// `nimbus_logging_pipeline_duplicates_dropped_total`: lines dropped because their
    /// (job_id, seq) was already stored.
    pub duplicates_dropped: IntCounter,
    /// `nimbus_logging_pipeline_batches_rejected_total`: requests refused whole for a bad
    /// record.
    pub batches_rejected: IntCounter,
    /// `nimbus_logging_pipeline_backpressure_total`: requests answered 503 because the
    /// buffer was full.
    pub backpressure: IntCounter,
    /// `nimbus_logging_pipeline_write_failures_total`: sink writes that failed.
    pub write_failures: IntCounter,
    /// `nimbus_logging_pipeline_buffered_lines`: lines received, not yet durable.
    pub buffered_lines: IntGauge,
    /// `nimbus_logging_pipeline_flush_seconds`: time to write one batch to the sink.
    pub flush_seconds: Histogram,
    /// `nimbus_logging_pipeline_requests_total`: HTTP requests by `route` and `status`.
    pub requests: IntCounterVec,
    /// Latency to the response head by route template (a live follow counts
    /// until its stream starts).
    pub request_seconds: HistogramVec,
}

fn metric_error(error: prometheus::Error) -> Error {
    Error::Sink(format!("metrics: {error}"))
}

impl Metrics {
    /// Creates and registers every metric. Fails only if a name or label set is invalid
    /// or registered twice, which is a bug.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter> {
            let counter = IntCounter::new(name, help).map_err(metric_error)?;
            registry
                .register(Box::new(counter.clone()))
                .map_err(metric_error)?;
            Ok(counter)
        };
        let buffered_lines = IntGauge::new(
            "nimbus_logging_pipeline_buffered_lines",
            "Lines received, not yet durable.",
        )
        .map_err(metric_error)?;
        let flush_seconds = Histogram::with_opts(HistogramOpts::new(
            "nimbus_logging_pipeline_flush_seconds",
            "Time to write one batch to the sink.",
        ))
        .map_err(metric_error)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "nimbus_logging_pipeline_requests_total",
                "HTTP requests by route and status.",
            ),
            &["route", "status"],
        )
        .map_err(metric_error)?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nimbus_logging_pipeline_request_seconds",
                "HTTP request latency (to the response head) by route.",
            ),
            &["route"],
        )
        .map_err(metric_error)?;
        registry
            .register(Box::new(request_seconds.clone()))
            .map_err(metric_error)?;
        registry
            .register(Box::new(buffered_lines.clone()))
            .map_err(metric_error)?;
        registry
            .register(Box::new(flush_seconds.clone()))
            .map_err(metric_error)?;
        registry
            .register(Box::new(requests.clone()))
            .map_err(metric_error)?;
        Ok(Metrics {
            lines_received: counter(
                "nimbus_logging_pipeline_lines_received_total",
                "Log lines accepted by POST /api/logs.",
            )?,
            lines_written: counter(
                "nimbus_logging_pipeline_lines_written_total",
                "Log lines written to the sink.",
            )?,
            duplicates_dropped: counter(
                "nimbus_logging_pipeline_duplicates_dropped_total",
                "Lines dropped because their (job_id, seq) was already stored.",
            )?,
            batches_rejected: counter(
                "nimbus_logging_pipeline_batches_rejected_total",
                "Requests refused for a malformed record (nothing of them is written).",
            )?,
            backpressure: counter(
                "nimbus_logging_pipeline_backpressure_total",
                "Requests answered 503 because the buffer was full.",
            )?,
            write_failures: counter(
                "nimbus_logging_pipeline_write_failures_total",
                "Sink writes that failed.",
            )?,
            buffered_lines,
            flush_seconds,
            requests,
            request_seconds,
            registry,
        })
    }

    /// The metrics in the Prometheus text format, for `GET /metrics`.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buffer = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}
