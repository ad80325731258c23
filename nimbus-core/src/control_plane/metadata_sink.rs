//! Forwarding job metadata to the logging pipeline (`NIMBUS_METADATA_SINK_URL`):
//! each admitted job's metadata rows are queued and POSTed to
//! `{url}/api/metadata` by a background task, with retries, so admission never
//! waits for the pipeline. The control plane's own store stays the source of
//! truth for analytics; the sink gets a copy for queries next to the job's logs.

use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::auth::{Audience, JwtKeys, Role};
use crate::domain::Job;
use crate::retry::{self, Retryable};

/// Jobs waiting to be forwarded; beyond this new ones are dropped and counted.
const QUEUE: usize = 10_000;
const ATTEMPTS: usize = 6;

/// Why the pipeline did not take a batch.
enum Refused {
    /// Worth another try (connection, 5xx, 408, 429).
    Transient(String),
    /// It will be refused again.
    Permanent(String),
}

impl Refused {
    fn message(&self) -> &str {
        match self {
            Refused::Transient(message) | Refused::Permanent(message) => message,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    job_id: i64,
    org_id: i64,
    repo_id: Option<i64>,
    key: String,
    value: String,
    ts: String,
}

/// Queues admitted jobs' metadata for the background task that POSTs it to the sink.
pub struct MetadataForwarder {
    sender: mpsc::Sender<Vec<Row>>,
    failures: IntCounter,
}

impl MetadataForwarder {
    /// Starts the forwarding task on the current runtime (None outside one).
    pub fn start(url: &str, keys: JwtKeys, failures: IntCounter) -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (sender, receiver) = mpsc::channel(QUEUE);
        let endpoint = format!("{}/api/metadata", url.trim_end_matches('/'));
        handle.spawn(forward_loop(receiver, endpoint, keys, failures.clone()));
        Some(MetadataForwarder { sender, failures })
    }

    /// Queues a job's metadata (nothing for a job without any).
    pub fn forward(&self, job: &Job) {
        if job.metadata.is_empty() {
            return;
        }
        let ts = job
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let rows = job
            .metadata
            .iter()
            .map(|(key, value)| Row {
                job_id: job.id,
                org_id: job.org_id,
                repo_id: job.repo_id,
                key: key.clone(),
                value: value.clone(),
                ts: ts.clone(),
            })
            .collect();
        if self.sender.try_send(rows).is_err() {
            self.failures.inc();
            tracing::warn!(
                job_id = job.id,
                "metadata sink queue full; this job's metadata is not forwarded"
            );
        }
    }
}

async fn forward_loop(
    mut receiver: mpsc::Receiver<Vec<Row>>,
    endpoint: String,
    keys: JwtKeys,
    failures: IntCounter,
) {
    let client = reqwest::Client::new();
    while let Some(first) = receiver.recv().await {
        let mut rows = first;
        let mut jobs = 1u64;
        while let Ok(more) = receiver.try_recv() {
            rows.extend(more);
            jobs += 1;
            if rows.len() >= 5_000 {
                break;
            }
        }
        let send = || async {
            let token = keys
                .mint_for(
                    "control-plane",
                    Role::Admin,
                    None,
                    &[Audience::LoggingPipeline],
                    Duration::from_secs(300),
                )
                .map_err(|error| Refused::Permanent(error.to_string()))?;
            let response = client
                .post(&endpoint)
                .bearer_auth(token)
                .json(&rows)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|error| Refused::Transient(error.to_string()))?;
            let status = response.status();
            match status.as_u16() {
                200..=299 => Ok(()),
                // The pipeline will refuse these rows again: retrying only delays the rest.
                400..=499 if !matches!(status.as_u16(), 408 | 429) => {
                    Err(Refused::Permanent(format!("answered {status}")))
                }
                _ => Err(Refused::Transient(format!("answered {status}"))),
            }
        };
        let outcome = send
            .retry(retry::exponential(
                Duration::from_millis(200),
                Duration::from_secs(10),
                ATTEMPTS,
            ))
            .sleep(tokio::time::sleep)
            .when(|refused| matches!(refused, Refused::Transient(_)))
            .notify(|refused, _| {
                tracing::debug!(error = %refused.message(), "forwarding metadata failed; retrying")
            })
            .await;
        let sent = match outcome {
            Ok(()) => true,
            Err(refused) => {
                tracing::warn!(error = %refused.message(), endpoint = %endpoint, "forwarding metadata failed; giving up");
                false
            }
        };
        if !sent {
            failures.inc_by(jobs);
        }
    }
}
