//! Prometheus metrics of the control plane. The names are user-facing (dashboards
//! and alerts use them; docs/api.md lists them): keep them.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::domain::JobStatus;
use crate::error::{Error, Result};

/// The control plane's metrics, in a registry of their own; clones share them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `nimbus_control_plane_webhook_replays_blocked`: deliveries refused as replays.
    pub webhook_replays_blocked: IntCounter,
    /// `nimbus_control_plane_org_rate_limits_hit`: admissions refused by the org rate limit.
    pub org_rate_limits_hit: IntCounter,
    /// `nimbus_control_plane_webhooks_received_total`, by `event` and `outcome`.
    pub webhooks_received: IntCounterVec,
    /// `nimbus_control_plane_jobs_enqueued_total`, by `source`.
    pub jobs_enqueued: IntCounterVec,
    /// `nimbus_control_plane_jobs_completed_total`, by `status`.
    pub jobs_completed: IntCounterVec,
    /// `nimbus_control_plane_leases_granted_total`.
    pub leases_granted: IntCounter,
    /// `nimbus_control_plane_leases_expired_total`, by `outcome` (requeued or failed).
    pub leases_expired: IntCounterVec,
    /// `nimbus_control_plane_jobs`: jobs in the store by `status`, set at scrape time.
    pub jobs_by_status: IntGaugeVec,
    /// `nimbus_control_plane_policy_denials_total`: jobs the policy rejected, by `rule`.
    pub policy_denials: IntCounterVec,
    /// `nimbus_control_plane_policy_dry_run_denials_total`: what a dry-run policy would have rejected, by `rule`.
    pub policy_dry_run_denials: IntCounterVec,
    /// `nimbus_control_plane_policy_reload_errors_total`.
    pub policy_reload_errors: IntCounter,
    /// `nimbus_control_plane_metadata_forward_failures_total`: metadata not delivered to the sink.
    pub metadata_forward_failures: IntCounter,
    /// `nimbus_control_plane_github_api_rate_limited_total`: GitHub answers that said to back off.
    pub github_api_rate_limited: IntCounter,
    /// `nimbus_control_plane_jobs_reconciled_total`: jobs queued or closed by the reconciler.
    pub jobs_reconciled: IntCounter,
    /// `nimbus_control_plane_runner_swaps_total`: GitHub ran another job on one of our runners.
    pub runner_swaps: IntCounter,
    /// `nimbus_control_plane_runner_swaps_refused_total`: swap claims ignored as not proven.
    pub runner_swaps_refused: IntCounter,
    /// `nimbus_control_plane_http_requests_total`, by `method`, `route` and `status`.
    pub http_requests: IntCounterVec,
    /// `nimbus_control_plane_http_request_duration_seconds`, by `method` and `route`.
    pub http_request_duration: HistogramVec,
    /// Created to first lease (the analytics' queue wait, as a histogram).
    pub queue_wait: Histogram,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> Result<T> {
    registry
        .register(Box::new(metric.clone()))
        .map_err(|e| Error::Internal(format!("registering metric: {e}")))?;
    Ok(metric)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let metric = IntCounter::new(name, help).map_err(|e| Error::Internal(e.to_string()))?;
    register(registry, metric)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .map_err(|e| Error::Internal(e.to_string()))?;
    register(registry, metric)
}

impl Metrics {
    /// Creates and registers every metric, all at zero.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Metrics {
            webhook_replays_blocked: counter(
                r,
                "nimbus_control_plane_webhook_replays_blocked",
                "Webhook deliveries refused because their X-GitHub-Delivery was already processed.",
            )?,
            org_rate_limits_hit: counter(
                r,
                "nimbus_control_plane_org_rate_limits_hit",
                "Job admissions refused by the per-org rate limit.",
            )?,
            metadata_forward_failures: counter(
                r,
                "nimbus_control_plane_metadata_forward_failures_total",
                "Jobs whose metadata could not be forwarded to NIMBUS_METADATA_SINK_URL (after retries, or queue full).",
            )?,
            github_api_rate_limited: counter(
                r,
                "nimbus_control_plane_github_api_rate_limited_total",
                "GitHub API answers that said to back off (rate limits).",
            )?,
            jobs_reconciled: counter(
                r,
                "nimbus_control_plane_jobs_reconciled_total",
                "Jobs the reconciler queued because no webhook brought them, or closed because GitHub finished them.",
            )?,
            runner_swaps: counter(
                r,
                "nimbus_control_plane_runner_swaps_total",
                "Times GitHub gave a Nimbus runner another queued job than the one it was made for (the two jobs' records were swapped).",
            )?,
            runner_swaps_refused: counter(
                r,
                "nimbus_control_plane_runner_swaps_refused_total",
                "in_progress events naming one of our runners on a job of another installation, org or repository (ignored: runner names are not proof).",
            )?,
            webhooks_received: counter_vec(
                r,
                "nimbus_control_plane_webhooks_received_total",
                "Webhook deliveries by event and outcome.",
                &["event", "outcome"],
            )?,
            jobs_enqueued: counter_vec(
                r,
                "nimbus_control_plane_jobs_enqueued_total",
                "Jobs put in the queue, by source.",
                &["source"],
            )?,
            jobs_completed: counter_vec(
                r,
                "nimbus_control_plane_jobs_completed_total",
                "Jobs completed by agents, by status.",
                &["status"],
            )?,
            leases_granted: counter(
                r,
                "nimbus_control_plane_leases_granted_total",
                "Leases handed to agents.",
            )?,
            leases_expired: counter_vec(
                r,
                "nimbus_control_plane_leases_expired_total",
                "Leases that expired, by what happened to the job (requeued or failed).",
                &["outcome"],
            )?,
            policy_denials: counter_vec(
                r,
                "nimbus_control_plane_policy_denials_total",
                "Jobs rejected by the admission policy, by matching rule.",
                &["rule"],
            )?,
            policy_dry_run_denials: counter_vec(
                r,
                "nimbus_control_plane_policy_dry_run_denials_total",
                "Jobs a dry-run policy would have rejected, by matching rule.",
                &["rule"],
            )?,
            policy_reload_errors: counter(
                r,
                "nimbus_control_plane_policy_reload_errors_total",
                "Policy reloads that failed (the previous policy stayed in force).",
            )?,
            jobs_by_status: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "nimbus_control_plane_jobs",
                        "Jobs in the store by status (read at scrape time).",
                    ),
                    &["status"],
                )
                .map_err(|e| Error::Internal(e.to_string()))?,
            )?,
            http_requests: counter_vec(
                r,
                "nimbus_control_plane_http_requests_total",
                "HTTP requests by method, route and status.",
                &["method", "route", "status"],
            )?,
            http_request_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "nimbus_control_plane_http_request_duration_seconds",
                        "HTTP request latency by method and route.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ]),
                    &["method", "route"],
                )
                .map_err(|e| Error::Internal(e.to_string()))?,
            )?,
            queue_wait: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "nimbus_control_plane_queue_wait_seconds",
                        "Time from a job's creation to its first lease.",
                    )
                    .buckets(vec![
                        0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                        3600.0,
                    ]),
                )
                .map_err(|e| Error::Internal(e.to_string()))?,
            )?,
            registry,
        };
        Ok(metrics)
    }

    /// Sets the per-status gauge from fresh counts (statuses absent count zero).
    pub fn set_job_counts(&self, counts: &[(JobStatus, i64)]) {
        for status in JobStatus::ALL {
            let count = counts
                .iter()
                .find(|(s, _)| *s == status)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            self.jobs_by_status
                .with_label_values(&[status.as_str()])
                .set(count);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String> {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
        String::from_utf8(buffer).map_err(|e| Error::Internal(format!("metrics text: {e}")))
    }
}
