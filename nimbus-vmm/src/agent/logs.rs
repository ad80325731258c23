//! Shipping a job's output lines to the logging pipeline: batched, retried with
//! backoff, never blocking the job. Lines wait in memory up to a bound, then in a
//! spool file on disk (so a pipeline that is down for a while loses nothing);
//! only past the disk bound are lines dropped, and counted (the metric should
//! stay 0). Order is kept: once lines spill, new ones follow them to disk until
//! the spool has been sent.
//!
//! Lines go out with the lease's ingest token, which lets them be stored for this
//! job only, and are numbered here, from the lease's `log_seq_base`, in the order
//! they arrive: the guest's own numbering is not trusted (a job could otherwise
//! skip, repeat or scatter numbers).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::domain::Job;
use nimbus_core::Secret;
use prometheus::IntCounter;
use serde_json::json;
use tokio::sync::Notify;

use crate::protocol::{OutputLine, Stream};

const BATCH: usize = 2_000;

/// How much a shipper holds before spilling, and before dropping.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub memory_lines: usize,
    pub disk_lines: usize,
    /// Directory of spool files (one per job, removed when sent).
    pub spool_dir: PathBuf,
}

/// Lines not yet acknowledged by the pipeline.
struct Queue {
    memory: VecDeque<String>,
    spool: Option<Spool>,
    bounds: Bounds,
    spool_path: PathBuf,
}

/// Lines on disk: appended at the end, read from `offset`.
struct Spool {
    writer: std::io::BufWriter<std::fs::File>,
    offset: u64,
    pending: usize,
}

impl Queue {
    fn push(&mut self, line: String, dropped: &IntCounter) {
        if self.spool.is_none() && self.memory.len() < self.bounds.memory_lines {
            self.memory.push_back(line);
            return;
        }
        if self.spool.is_none() {
            match std::fs::create_dir_all(&self.bounds.spool_dir).and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&self.spool_path)
            }) {
                Ok(file) => {
                    self.spool = Some(Spool {
                        writer: std::io::BufWriter::new(file),
                        offset: 0,
                        pending: 0,
                    })
                }
                Err(error) => {
                    tracing::warn!(%error, path = %self.spool_path.display(), "cannot spool log lines to disk");
                    dropped.inc();
                    return;
                }
            }
        }
        if let Some(spool) = self.spool.as_mut() {
            if spool.pending >= self.bounds.disk_lines || writeln!(spool.writer, "{line}").is_err()
            {
                dropped.inc();
            } else {
                spool.pending += 1;
            }
        }
    }

    /// Moves up to a batch of spooled lines into memory once memory is empty.
    fn refill(&mut self) {
        if !self.memory.is_empty() {
            return;
        }
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        if spool.writer.flush().is_err() {
            return;
        }
        let Ok(mut file) = std::fs::File::open(&self.spool_path) else {
            return;
        };
        if file.seek(SeekFrom::Start(spool.offset)).is_err() {
            return;
        }
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        while self.memory.len() < BATCH {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    spool.offset += n as u64;
                    spool.pending = spool.pending.saturating_sub(1);
                    self.memory
                        .push_back(line.trim_end_matches('\n').to_string());
                }
            }
        }
        if spool.pending == 0 {
            // Everything spooled is in memory now: new lines may go to memory again.
            self.spool = None;
            let _ = std::fs::remove_file(&self.spool_path);
        }
    }

    fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spool.is_none()
    }

    fn len(&self) -> usize {
        self.memory.len() + self.spool.as_ref().map_or(0, |s| s.pending)
    }
}

pub struct LogShipper {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    done: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
    job_id: i64,
    org_id: i64,
    repo_id: Option<i64>,
    agent_id: String,
    /// The next line's number.
    next_seq: std::sync::atomic::AtomicU64,
    dropped: IntCounter,
}

impl LogShipper {
    /// Ships `job`'s lines to `url` with `token` (the lease's ingest token),
    /// numbering them from `seq_base + 1`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        http: reqwest::Client,
        url: Option<String>,
        token: Option<Secret>,
        job: &Job,
        seq_base: u64,
        agent_id: &str,
        dropped: IntCounter,
        bounds: Bounds,
    ) -> Self {
        let spool_path =
            bounds
                .spool_dir
                .join(format!("job-{}-{}.ndjson", job.id, std::process::id()));
        let queue = Arc::new(Mutex::new(Queue {
            memory: VecDeque::new(),
            spool: None,
            bounds,
            spool_path,
        }));
        let wake = Arc::new(Notify::new());
        let done = Arc::new(Notify::new());
        let task = url.map(|url| {
            tokio::spawn(ship_loop(
                http,
                format!("{url}/api/logs"),
                token,
                queue.clone(),
                wake.clone(),
                done.clone(),
                dropped.clone(),
            ))
        });
        LogShipper {
            queue,
            wake,
            done,
            task,
            job_id: job.id,
            org_id: job.org_id,
            repo_id: job.repo_id,
            agent_id: agent_id.to_string(),
            next_seq: std::sync::atomic::AtomicU64::new(seq_base + 1),
            dropped,
        }
    }

    pub fn push(&self, line: OutputLine) {
        if self.task.is_none() {
            return;
        }
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let record = json!({
            "job_id": self.job_id,
            "agent_id": self.agent_id,
            "org_id": self.org_id,
            "repo_id": self.repo_id,
            "level": match line.stream { Stream::Stdout => "info", Stream::Stderr => "error" },
            "message": line.line,
            "ts": line.ts_millis.max(946_684_800_001),
            "seq": seq,
        })
        .to_string();
        if let Ok(mut queue) = self.queue.lock() {
            queue.push(record, &self.dropped);
            if queue.memory.len() >= BATCH {
                self.wake.notify_one();
            }
        }
    }

    /// Sends what is left (retrying for up to `patience`), then stops; whatever
    /// could not be sent by then is counted as dropped.
    pub async fn finish(mut self, patience: Duration) {
        if let Some(task) = self.task.take() {
            self.done.notify_one();
            if tokio::time::timeout(patience, task).await.is_err() {
                if let Ok(mut queue) = self.queue.lock() {
                    self.dropped.inc_by(queue.len() as u64);
                    if queue.spool.take().is_some() {
                        let _ = std::fs::remove_file(&queue.spool_path);
                    }
                }
            }
        }
    }
}

async fn ship_loop(
    http: reqwest::Client,
    endpoint: String,
    token: Option<Secret>,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    done: Arc<Notify>,
    dropped: IntCounter,
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
        let batch: Vec<String> = match queue.lock() {
            Ok(mut queue) => {
                queue.refill();
                if queue.is_empty() && finishing {
                    return;
                }
                queue.memory.iter().take(BATCH).cloned().collect()
            }
            Err(_) => return,
        };
        if batch.is_empty() {
            continue;
        }
        let mut request = http
            .post(&endpoint)
            .body(batch.join("\n"))
            .timeout(Duration::from_secs(30));
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        let answer = request.send().await.map(|response| response.status());
        match answer {
            Ok(status) if status.is_success() => {
                if let Ok(mut queue) = queue.lock() {
                    let n = batch.len().min(queue.memory.len());
                    queue.memory.drain(..n);
                }
                delay = Duration::from_millis(100);
            }
            // A refusal that sending again cannot change (a bad batch, a token the
            // pipeline does not accept): drop the batch, count it and go on, so one
            // bad batch never blocks the rest of the job's lines.
            Ok(status)
                if status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                tracing::warn!(%status, lines = batch.len(), "the logging pipeline refused a batch of log lines; dropped");
                dropped.inc_by(batch.len() as u64);
                if let Ok(mut queue) = queue.lock() {
                    let n = batch.len().min(queue.memory.len());
                    queue.memory.drain(..n);
                }
            }
            _ => {
                // Retried as is: the pipeline drops lines it already stored.
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(memory_lines: usize, disk_lines: usize) -> Queue {
        let dir = std::env::temp_dir().join(format!(
            "nimbus-spool-{}-{memory_lines}-{disk_lines}",
            std::process::id()
        ));
        Queue {
            memory: VecDeque::new(),
            spool: None,
            spool_path: dir.join("job.ndjson"),
            bounds: Bounds {
                memory_lines,
                disk_lines,
                spool_dir: dir,
            },
        }
    }

    fn drain(q: &mut Queue) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            q.refill();
            if q.memory.is_empty() {
                return out;
            }
            out.extend(q.memory.drain(..));
        }
    }

    #[test]
    fn lines_spill_to_disk_and_come_back_in_order() {
        let dropped = IntCounter::new("t1", "t").expect("counter");
        let mut q = queue(10, 100_000);
        for n in 0..5_000 {
            q.push(format!("line {n}"), &dropped);
        }
        assert!(q.spool.is_some(), "past 10 lines the queue spools");
        let out = drain(&mut q);
        assert_eq!(out.len(), 5_000);
        assert!(
            out.iter()
                .enumerate()
                .all(|(n, l)| *l == format!("line {n}")),
            "order is kept"
        );
        assert!(
            q.spool.is_none() && !q.spool_path.exists(),
            "the spool file is removed once sent"
        );
        assert_eq!(dropped.get(), 0);
    }

    /// A pipeline that is down for the first requests: every line still arrives,
    /// once, in order, through the spool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipeline_that_is_down_for_a_while_loses_nothing() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let received: Arc<Mutex<Vec<u64>>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = {
            let received = received.clone();
            let calls = calls.clone();
            axum::Router::new().route(
                "/api/logs",
                axum::routing::post(move |body: String| {
                    let received = received.clone();
                    let calls = calls.clone();
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) < 5 {
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let mut seen = received.lock().expect("lock");
                        for line in body.lines() {
                            let value: serde_json::Value =
                                serde_json::from_str(line).expect("json line");
                            seen.push(value["seq"].as_u64().expect("seq"));
                        }
                        axum::http::StatusCode::OK
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let job: Job = serde_json::from_value(json!({
            "id": 7, "org_id": 1, "repo": "acme/app", "source": "direct", "status": "leased",
            "labels": [], "metadata": {}, "spec": {"steps": [], "timeout_minutes": 5},
            "attempt": 1, "fencing_token": 1, "policy_reasons": [], "repo_id": null,
            "agent_id": "agent", "lease_id": null, "lease_expires_at": null, "exit_code": null,
            "failure_reason": null, "started_at": null, "finished_at": null,
            "created_at": "2026-11-27T08:00:00Z", "updated_at": "2026-11-27T08:00:00Z"
        }))
        .expect("job");
        let dropped = IntCounter::new("t3", "t").expect("counter");
        let spool_dir =
            std::env::temp_dir().join(format!("nimbus-spool-ship-{}", std::process::id()));
        let shipper = LogShipper::start(
            reqwest::Client::new(),
            Some(url),
            None,
            &job,
            0,
            "agent",
            dropped.clone(),
            Bounds {
                memory_lines: 100,
                disk_lines: 1_000_000,
                spool_dir: spool_dir.clone(),
            },
        );
        for seq in 1..=10_000u64 {
            shipper.push(OutputLine {
                seq,
                step: 0,
                stream: Stream::Stdout,
                ts_millis: 1_795_766_400_000,
                line: format!("line {seq}"),
            });
        }
        shipper.finish(Duration::from_secs(60)).await;
        let received = received.lock().expect("lock").clone();
        assert_eq!(
            received,
            (1..=10_000).collect::<Vec<_>>(),
            "every line once, in order"
        );
        assert_eq!(dropped.get(), 0);
        assert!(
            std::fs::read_dir(&spool_dir)
                .map(|d| d.count())
                .unwrap_or(0)
                == 0,
            "the spool is gone"
        );
        let _ = std::fs::remove_dir_all(spool_dir);
    }

    #[test]
    fn only_past_the_disk_bound_are_lines_dropped() {
        let dropped = IntCounter::new("t2", "t").expect("counter");
        let mut q = queue(5, 20);
        for n in 0..40 {
            q.push(format!("line {n}"), &dropped);
        }
        assert_eq!(dropped.get(), 15);
        assert_eq!(drain(&mut q).len(), 25);
    }
}
