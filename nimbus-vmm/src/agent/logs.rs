//! Shipping a job's output lines to a [`LogSink`]: the logging pipeline over HTTP
//! (with the lease's ingest token), or a sink in this process. Batched, retried
//! with backoff, never blocking the job: [`LogShipper::push`] only hands the line
//! to the shipper's task. Lines wait in memory up to a bound, then in a spool file
//! (written and read with tokio's file I/O, off the async threads), so a pipeline
//! that is down for a while loses nothing; only past the disk bound are lines
//! dropped, and counted (the metric should stay 0). Order is kept: once lines
//! spill, new ones follow them to disk until the spool has been sent.
//!
//! Lines are numbered here, from the lease's `log_seq_base`, in the order they
//! arrive: the guest's own numbering is not trusted (a job could skip, repeat or
//! scatter numbers). A batch the sink refuses for good (a 4xx other than 408/429)
//! goes to a dead-letter file beside the spool and is counted, so one bad batch
//! never holds up the lines after it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::domain::Job;
use nimbus_core::retry;
use nimbus_logs::{LogRecord, LogSink};
use prometheus::IntCounter;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::protocol::{OutputLine, Stream};

/// Lines per write.
const BATCH: usize = 2_000;
/// Most bytes of dead letters kept per job; more are only counted.
const MAX_DEAD_LETTER_BYTES: u64 = 16 << 20;

/// How much a shipper holds before spilling, and before dropping.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub memory_lines: usize,
    pub disk_lines: usize,
    /// Directory of spool files (one per job, removed when sent) and, under
    /// `dead-letter/`, of the batches the sink refused for good.
    pub spool_dir: PathBuf,
}

/// What a shipper counts.
#[derive(Clone)]
pub struct ShipperMetrics {
    /// Lines lost: past the disk bound, or unsent when the job's patience ran out.
    pub dropped: IntCounter,
    /// Lines the sink refused for good, kept in the dead-letter file.
    pub dead_lettered: IntCounter,
}

/// The identity every line of one lease carries.
#[derive(Debug, Clone)]
struct Origin {
    job_id: u64,
    org_id: Option<u64>,
    repo_id: Option<u64>,
    agent_id: String,
}

pub struct LogShipper {
    lines: Option<mpsc::UnboundedSender<LogRecord>>,
    spool_path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
    origin: Origin,
    next_seq: u64,
    metrics: ShipperMetrics,
    left: Arc<std::sync::atomic::AtomicUsize>,
}

impl LogShipper {
    /// Ships `job`'s lines to `sink` (`None`: nowhere), numbering them from
    /// `seq_base + 1`.
    pub fn start(
        sink: Option<Arc<dyn LogSink>>,
        job: &Job,
        seq_base: u64,
        agent_id: &str,
        metrics: ShipperMetrics,
        bounds: Bounds,
    ) -> Self {
        let origin = Origin {
            job_id: u64::try_from(job.id).unwrap_or_default(),
            org_id: u64::try_from(job.org_id).ok(),
            repo_id: job.repo_id.and_then(|id| u64::try_from(id).ok()),
            agent_id: agent_id.to_string(),
        };
        let left = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (lines, task) = match sink {
            Some(sink) => {
                let (sender, receiver) = mpsc::unbounded_channel();
                let queue = Queue::new(&bounds, origin.job_id);
                let task = tokio::spawn(ship(
                    sink,
                    receiver,
                    queue,
                    metrics.clone(),
                    bounds.spool_dir.join("dead-letter"),
                    origin.job_id,
                    left.clone(),
                ));
                (Some(sender), Some(task))
            }
            None => (None, None),
        };
        LogShipper {
            spool_path: Queue::new(&bounds, origin.job_id).spool_path,
            lines,
            task,
            origin,
            next_seq: seq_base + 1,
            metrics,
            left,
        }
    }

    /// Hands one line to the shipper (never waits).
    pub fn push(&mut self, line: OutputLine) {
        let Some(lines) = &self.lines else {
            return;
        };
        let record = LogRecord {
            job_id: self.origin.job_id,
            agent_id: self.origin.agent_id.clone(),
            org_id: self.origin.org_id,
            repo_id: self.origin.repo_id,
            level: match line.stream {
                Stream::Stdout => "info",
                Stream::Stderr => "error",
            }
            .to_string(),
            message: line.line,
            ts: line.ts_millis.max(946_684_800_001),
            seq: self.next_seq,
        };
        self.next_seq += 1;
        if lines.send(record).is_err() {
            self.metrics.dropped.inc();
        }
    }

    /// Sends what is left (retrying for up to `patience`), then stops; whatever
    /// could not be sent by then is counted as dropped.
    pub async fn finish(mut self, patience: Duration) {
        // Closing the channel tells the task no more lines come.
        self.lines.take();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(patience, &mut task).await.is_err() {
                task.abort();
                let left = self.left.load(std::sync::atomic::Ordering::Relaxed);
                self.metrics.dropped.inc_by(left as u64);
                let _ = tokio::fs::remove_file(&self.spool_path).await;
            }
        }
    }
}

/// Lines not yet acknowledged: memory first, then the spool file.
struct Queue {
    memory: VecDeque<LogRecord>,
    memory_lines: usize,
    disk_lines: usize,
    spool_path: PathBuf,
    spool: Option<Spool>,
}

struct Spool {
    file: tokio::fs::File,
    /// Bytes of whole lines in the file: a write that fails (a full disk) is cut
    /// back to this, so the file never holds half a line.
    written: u64,
    /// Lines serialised but not yet written (one write per [`SPOOL_WRITE_BYTES`]).
    buffer: Vec<u8>,
    buffered: usize,
    /// Where the next unread line starts.
    offset: u64,
    /// Lines spooled and not yet read back: in the file or in `buffer`.
    pending: usize,
}

/// Spooled lines are written in pieces of about this size.
const SPOOL_WRITE_BYTES: usize = 64 << 10;

impl Spool {
    /// Writes the buffered lines. On failure the file is cut back to its last
    /// whole line and the buffered lines are counted as dropped: nothing half
    /// written is ever read back, and every lost line is counted.
    async fn write_out(&mut self, dropped: &IntCounter) {
        if self.buffer.is_empty() {
            return;
        }
        // tokio's file reports a failed write at the next flush, not at write_all.
        let result = match self.file.write_all(&self.buffer).await {
            Ok(()) => self.file.flush().await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => self.written += self.buffer.len() as u64,
            Err(error) => {
                tracing::warn!(%error, lines = self.buffered, "spooling log lines failed; they are dropped");
                dropped.inc_by(self.buffered as u64);
                self.pending = self.pending.saturating_sub(self.buffered);
                // Appending: the next write goes to the end, which this makes the
                // end of the last whole line again.
                let _ = self.file.set_len(self.written).await;
            }
        }
        self.buffer.clear();
        self.buffered = 0;
    }
}

impl Queue {
    fn new(bounds: &Bounds, job_id: u64) -> Self {
        Queue {
            memory: VecDeque::new(),
            memory_lines: bounds.memory_lines,
            disk_lines: bounds.disk_lines,
            spool_path: bounds
                .spool_dir
                .join(format!("job-{job_id}-{}.ndjson", std::process::id())),
            spool: None,
        }
    }

    fn len(&self) -> usize {
        self.memory.len() + self.spool.as_ref().map_or(0, |s| s.pending)
    }

    fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spool.is_none()
    }

    async fn push(&mut self, record: LogRecord, dropped: &IntCounter) {
        if self.spool.is_none() && self.memory.len() < self.memory_lines {
            self.memory.push_back(record);
            return;
        }
        if self.spool.is_none() {
            let opened = async {
                if let Some(dir) = self.spool_path.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                // A file of this name is a dead agent's (same pid): start afresh.
                match tokio::fs::remove_file(&self.spool_path).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                tokio::fs::OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&self.spool_path)
                    .await
            }
            .await;
            match opened {
                Ok(file) => {
                    self.spool = Some(Spool {
                        file,
                        written: 0,
                        buffer: Vec::new(),
                        buffered: 0,
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
            if spool.pending >= self.disk_lines {
                dropped.inc();
                return;
            }
            let Ok(line) = serde_json::to_vec(&record) else {
                dropped.inc();
                return;
            };
            spool.buffer.extend_from_slice(&line);
            spool.buffer.push(b'\n');
            spool.buffered += 1;
            spool.pending += 1;
            if spool.buffer.len() >= SPOOL_WRITE_BYTES {
                spool.write_out(dropped).await;
            }
        }
    }

    /// Moves up to a batch of spooled lines into memory once memory is empty.
    async fn refill(&mut self, dropped: &IntCounter) {
        if !self.memory.is_empty() {
            return;
        }
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        spool.write_out(dropped).await;
        if spool.offset < spool.written {
            let Ok(mut file) = tokio::fs::File::open(&self.spool_path).await else {
                return;
            };
            if file
                .seek(std::io::SeekFrom::Start(spool.offset))
                .await
                .is_err()
            {
                return;
            }
            // Only whole lines: the file ends at `written`.
            let mut reader = tokio::io::BufReader::new(file.take(spool.written - spool.offset));
            let mut line = String::new();
            while self.memory.len() < BATCH {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        spool.offset += n as u64;
                        spool.pending = spool.pending.saturating_sub(1);
                        match serde_json::from_str(line.trim_end()) {
                            Ok(record) => self.memory.push_back(record),
                            // Cannot happen (whole lines only); counted if it does.
                            Err(_) => dropped.inc(),
                        }
                    }
                }
            }
        }
        if spool.pending == 0 {
            // Everything spooled is in memory now: new lines may go to memory again.
            self.spool = None;
            let _ = tokio::fs::remove_file(&self.spool_path).await;
        }
    }
}

/// Appends a refused batch to the job's dead-letter file (bounded).
async fn dead_letter(dir: &std::path::Path, job_id: u64, batch: &[LogRecord]) -> bool {
    let path = dir.join(format!("job-{job_id}.ndjson"));
    let result = async {
        tokio::fs::create_dir_all(dir).await?;
        let size = tokio::fs::metadata(&path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if size > MAX_DEAD_LETTER_BYTES {
            return Ok(false);
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        let mut text = String::new();
        for record in batch {
            text.push_str(&serde_json::to_string(record).unwrap_or_default());
            text.push('\n');
        }
        file.write_all(text.as_bytes()).await?;
        Ok::<_, std::io::Error>(true)
    }
    .await;
    matches!(result, Ok(true))
}

async fn ship(
    sink: Arc<dyn LogSink>,
    mut lines: mpsc::UnboundedReceiver<LogRecord>,
    mut queue: Queue,
    metrics: ShipperMetrics,
    dead_letters: PathBuf,
    job_id: u64,
    left: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut open = true;
    let backoff = || retry::forever(Duration::from_millis(100), Duration::from_secs(5));
    let mut waits = backoff();
    loop {
        // Take in what arrived (waiting a moment when there is nothing to send).
        if open && queue.is_empty() {
            match tokio::time::timeout(Duration::from_millis(200), lines.recv()).await {
                Ok(Some(record)) => queue.push(record, &metrics.dropped).await,
                Ok(None) => open = false,
                Err(_) => {}
            }
        }
        while open {
            match lines.try_recv() {
                Ok(record) => queue.push(record, &metrics.dropped).await,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        queue.refill(&metrics.dropped).await;
        left.store(queue.len(), std::sync::atomic::Ordering::Relaxed);
        if queue.is_empty() {
            if !open {
                return;
            }
            continue;
        }
        let batch: Vec<LogRecord> = queue.memory.iter().take(BATCH).cloned().collect();
        match sink.write(&batch).await {
            Ok(_) => {
                queue.memory.drain(..batch.len());
                waits = backoff();
            }
            Err(error) if error.is_permanent() => {
                tracing::warn!(job_id, %error, lines = batch.len(), "the log sink refused a batch for good; kept in the dead-letter file");
                if dead_letter(&dead_letters, job_id, &batch).await {
                    metrics.dead_lettered.inc_by(batch.len() as u64);
                } else {
                    metrics.dropped.inc_by(batch.len() as u64);
                }
                queue.memory.drain(..batch.len());
            }
            Err(error) => {
                // Sent again as is: the pipeline drops lines it already stored.
                tracing::debug!(job_id, %error, "log batch not taken; retrying");
                let wait = match error {
                    nimbus_logs::Error::Busy { retry_after_secs } => {
                        Duration::from_secs(retry_after_secs.clamp(1, 5))
                    }
                    _ => waits.next().unwrap_or(Duration::from_secs(5)),
                };
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl Drop for LogShipper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> Job {
        serde_json::from_value(json!({
            "id": 7, "org_id": 1, "repo": "acme/app", "source": "direct", "status": "leased",
            "labels": [], "metadata": {}, "spec": {"steps": [], "timeout_minutes": 5},
            "attempt": 1, "fencing_token": 1, "policy_reasons": [], "repo_id": null,
            "agent_id": "agent", "lease_id": null, "lease_expires_at": null, "exit_code": null,
            "failure_reason": null, "started_at": null, "finished_at": null,
            "created_at": "2026-11-27T08:00:00Z", "updated_at": "2026-11-27T08:00:00Z"
        }))
        .expect("job")
    }

    fn metrics(name: &str) -> ShipperMetrics {
        ShipperMetrics {
            dropped: IntCounter::new(format!("{name}_dropped"), "t").expect("counter"),
            dead_lettered: IntCounter::new(format!("{name}_dead"), "t").expect("counter"),
        }
    }

    fn line(n: u64) -> OutputLine {
        OutputLine {
            // The guest's numbering is ignored: the shipper numbers lines itself.
            seq: n % 3,
            step: 0,
            stream: Stream::Stdout,
            ts_millis: 1_795_766_400_000,
            line: format!("line {n}"),
        }
    }

    fn spool_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nimbus-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A pipeline over HTTP that answers the first `down` requests 503, and 400 to
    /// any batch holding a line whose message is `poison`.
    async fn fake_pipeline(down: usize) -> (String, Arc<std::sync::Mutex<Vec<u64>>>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let received: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = {
            let received = received.clone();
            axum::Router::new().route(
                "/api/logs",
                axum::routing::post(move |body: String| {
                    let received = received.clone();
                    let calls = calls.clone();
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) < down {
                            return (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                "{}".to_string(),
                            );
                        }
                        let records: Vec<LogRecord> = body
                            .lines()
                            .map(|l| serde_json::from_str(l).expect("a LogRecord per line"))
                            .collect();
                        if records.iter().any(|r| r.message == "poison") {
                            return (
                                axum::http::StatusCode::BAD_REQUEST,
                                json!({"code": "invalid_record", "error": "no", "index": 0})
                                    .to_string(),
                            );
                        }
                        received
                            .lock()
                            .expect("lock")
                            .extend(records.iter().map(|r| r.seq));
                        (
                            axum::http::StatusCode::OK,
                            json!({"accepted": records.len()}).to_string(),
                        )
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
        (url, received)
    }

    fn http_sink(url: &str) -> Option<Arc<dyn LogSink>> {
        Some(Arc::new(nimbus_logs::sink::http::HttpSink::new(
            reqwest::Client::new(),
            url,
            None,
        )))
    }

    /// A pipeline down for the first requests: every line still arrives, once, in
    /// order, numbered by the shipper, through the spool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipeline_that_is_down_for_a_while_loses_nothing() {
        let (url, received) = fake_pipeline(5).await;
        let metrics = metrics("down");
        let dir = spool_dir("down");
        let mut shipper = LogShipper::start(
            http_sink(&url),
            &job(),
            0,
            "agent",
            metrics.clone(),
            Bounds {
                memory_lines: 100,
                disk_lines: 1_000_000,
                spool_dir: dir.clone(),
            },
        );
        for n in 1..=10_000u64 {
            shipper.push(line(n));
        }
        shipper.finish(Duration::from_secs(60)).await;
        let received = received.lock().expect("lock").clone();
        assert_eq!(
            received,
            (1..=10_000).collect::<Vec<_>>(),
            "every line once, in order"
        );
        assert_eq!(metrics.dropped.get(), 0);
        let left = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(left, 0, "the spool is gone");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A batch the pipeline answers 400 goes to the dead-letter file and is counted;
    /// the lines after it still arrive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_batch_does_not_stop_the_lines_after_it() {
        let (url, received) = fake_pipeline(0).await;
        let metrics = metrics("poison");
        let dir = spool_dir("poison");
        let mut shipper = LogShipper::start(
            http_sink(&url),
            &job(),
            0,
            "agent",
            metrics.clone(),
            Bounds {
                memory_lines: 100_000,
                disk_lines: 1_000_000,
                spool_dir: dir.clone(),
            },
        );
        shipper.push(OutputLine {
            line: "poison".into(),
            ..line(0)
        });
        // The poisoned batch is on its way before the rest arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for n in 1..=50u64 {
            shipper.push(line(n));
        }
        shipper.finish(Duration::from_secs(30)).await;
        let received = received.lock().expect("lock").clone();
        assert_eq!(
            received,
            (2..=51).collect::<Vec<_>>(),
            "the later lines arrived"
        );
        assert_eq!(metrics.dead_lettered.get(), 1);
        let dead =
            std::fs::read_to_string(dir.join("dead-letter/job-7.ndjson")).expect("dead letters");
        assert!(dead.contains("poison"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Everything the queue holds, memory then spool, as line numbers.
    async fn read_back(queue: &mut Queue, dropped: &IntCounter) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            queue.refill(dropped).await;
            if queue.memory.is_empty() {
                return out;
            }
            out.extend(queue.memory.drain(..).map(|r| r.seq));
        }
    }

    #[tokio::test]
    async fn only_past_the_disk_bound_are_lines_dropped() {
        let dropped = IntCounter::new("t2", "t").expect("counter");
        let dir = spool_dir("bound");
        let mut queue = Queue::new(
            &Bounds {
                memory_lines: 5,
                disk_lines: 20,
                spool_dir: dir.clone(),
            },
            1,
        );
        for n in 0..40u64 {
            let record = LogRecord {
                job_id: 1,
                agent_id: "a".into(),
                org_id: None,
                repo_id: None,
                level: "info".into(),
                message: format!("line {n}"),
                ts: 1,
                seq: n + 1,
            };
            queue.push(record, &dropped).await;
        }
        assert_eq!(dropped.get(), 15);
        let out = read_back(&mut queue, &dropped).await;
        assert_eq!(
            out,
            (1..=25).collect::<Vec<_>>(),
            "order is kept across the spool"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The spool's disk fills up: the lines that could not be written are counted
    /// as dropped, every line read back is whole, in order, and lines spool again
    /// once there is room.
    #[cfg(feature = "testsuite")]
    #[tokio::test]
    async fn a_full_disk_under_the_spool_counts_what_it_drops_and_leaves_no_half_line() {
        let Some(disk) = nimbus_core::testsuite::SmallDisk::mount("1m") else {
            return;
        };
        let dropped = IntCounter::new("full_spool", "t").expect("counter");
        let mut queue = Queue::new(
            &Bounds {
                memory_lines: 5,
                disk_lines: 1_000_000,
                spool_dir: disk.path().to_path_buf(),
            },
            1,
        );
        let record = |n: u64| LogRecord {
            job_id: 1,
            agent_id: "a".into(),
            org_id: None,
            repo_id: None,
            level: "info".into(),
            message: format!("line {n} {}", "x".repeat(200)),
            ts: 1,
            seq: n,
        };
        for n in 1..=500 {
            queue.push(record(n), &dropped).await;
        }
        let filler = disk.fill();
        for n in 501..=2_000 {
            queue.push(record(n), &dropped).await;
        }
        assert!(dropped.get() > 0, "lines were lost to the full disk");
        std::fs::remove_file(&filler).expect("make room");
        for n in 2_001..=2_500 {
            queue.push(record(n), &dropped).await;
        }
        let out = read_back(&mut queue, &dropped).await;
        assert_eq!(
            out.len() as u64 + dropped.get(),
            2_500,
            "every line is either delivered or counted as dropped"
        );
        assert!(out.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
        assert!(
            out.contains(&1) && out.contains(&2_500),
            "{} lines",
            out.len()
        );
    }
}
