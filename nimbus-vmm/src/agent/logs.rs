//! Shipping a job's output lines to the logging pipeline: batched, retried with
//! backoff, bounded in memory. A slow or down pipeline never blocks the job; lines
//! beyond the bound are dropped and counted (the metric should stay 0).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::domain::Job;
use nimbus_core::Secret;
use prometheus::IntCounter;
use serde_json::json;
use tokio::sync::Notify;

use crate::protocol::{OutputLine, Stream};

/// Lines held for the pipeline before the oldest are dropped.
const MAX_BUFFERED: usize = 200_000;
const BATCH: usize = 2_000;

pub struct LogShipper {
    buffer: Arc<Mutex<VecDeque<String>>>,
    wake: Arc<Notify>,
    done: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
    job_id: i64,
    org_id: i64,
    repo_id: Option<i64>,
    agent_id: String,
    dropped: IntCounter,
}

impl LogShipper {
    pub fn start(
        http: reqwest::Client,
        url: Option<String>,
        token: Option<Secret>,
        job: &Job,
        agent_id: &str,
        dropped: IntCounter,
    ) -> Self {
        let buffer = Arc::new(Mutex::new(VecDeque::new()));
        let wake = Arc::new(Notify::new());
        let done = Arc::new(Notify::new());
        let task = url.map(|url| {
            tokio::spawn(ship_loop(
                http,
                format!("{url}/api/logs"),
                token,
                buffer.clone(),
                wake.clone(),
                done.clone(),
            ))
        });
        LogShipper {
            buffer,
            wake,
            done,
            task,
            job_id: job.id,
            org_id: job.org_id,
            repo_id: job.repo_id,
            agent_id: agent_id.to_string(),
            dropped,
        }
    }

    pub fn push(&self, line: OutputLine) {
        if self.task.is_none() {
            return;
        }
        let record = json!({
            "job_id": self.job_id,
            "agent_id": self.agent_id,
            "org_id": self.org_id,
            "repo_id": self.repo_id,
            "level": match line.stream { Stream::Stdout => "info", Stream::Stderr => "error" },
            "message": line.line,
            "ts": line.ts_millis.max(946_684_800_001),
            "seq": line.seq,
        })
        .to_string();
        if let Ok(mut buffer) = self.buffer.lock() {
            if buffer.len() >= MAX_BUFFERED {
                buffer.pop_front();
                self.dropped.inc();
            }
            buffer.push_back(record);
            if buffer.len() >= BATCH {
                self.wake.notify_one();
            }
        }
    }

    /// Sends what is left (retrying for a while), then stops.
    pub async fn finish(mut self) {
        if let Some(task) = self.task.take() {
            self.done.notify_one();
            if tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .is_err()
            {
                let left = self.buffer.lock().map(|b| b.len()).unwrap_or(0);
                self.dropped.inc_by(left as u64);
            }
        }
    }
}

async fn ship_loop(
    http: reqwest::Client,
    endpoint: String,
    token: Option<Secret>,
    buffer: Arc<Mutex<VecDeque<String>>>,
    wake: Arc<Notify>,
    done: Arc<Notify>,
) {
    let mut finishing = false;
    let mut delay = Duration::from_millis(100);
    loop {
        if !finishing {
            tokio::select! {
                _ = wake.notified() => {}
                _ = done.notified() => finishing = true,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let batch: Vec<String> = match buffer.lock() {
            Ok(buffer) => buffer.iter().take(BATCH).cloned().collect(),
            Err(_) => return,
        };
        if batch.is_empty() {
            if finishing {
                return;
            }
            continue;
        }
        let mut request = http
            .post(&endpoint)
            .body(batch.join("\n"))
            .timeout(Duration::from_secs(30));
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        let sent = matches!(request.send().await, Ok(response) if response.status().is_success());
        if sent {
            if let Ok(mut buffer) = buffer.lock() {
                let n = batch.len().min(buffer.len());
                buffer.drain(..n);
            }
            delay = Duration::from_millis(100);
        } else {
            // Retried as is: the pipeline drops lines it already stored.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
