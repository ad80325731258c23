//! Buffered, acknowledged-when-durable ingest.
//!
//! Requests hand their (validated) lines to one flusher task and wait. The flusher
//! takes what is waiting, up to `flush_lines`, waits at most `flush_interval` for
//! more, writes it all to the sink in one batch and only then answers every
//! request in it — so a 200 means the lines are durable. Lines in the buffer hold
//! permits of a semaphore sized `max_buffered_lines`; a request that cannot get
//! its permits at once is answered 503 with Retry-After instead of queueing
//! without bound. A failed write fails every request of the batch (the agent
//! retries; duplicates are dropped by (job_id, seq)).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::record::LogRecord;
use crate::sink::LogSink;

struct Pending {
    records: Vec<LogRecord>,
    _permit: OwnedSemaphorePermit,
    reply: oneshot::Sender<Result<u64>>,
}

/// The ingest buffer: requests hand their lines to one flusher task, which writes them
/// to the sink in batches and answers each request once its lines are durable. Clones
/// share the buffer.
#[derive(Clone)]
pub struct Ingestor {
    sender: mpsc::UnboundedSender<Pending>,
    buffer: Arc<Semaphore>,
    capacity: usize,
}

impl Ingestor {
    /// Starts the flusher on the current Tokio runtime. At most `capacity` lines wait at
    /// once (beyond that [`Ingestor::ingest`] answers [`Error::Busy`]); a flush writes up to
    /// `flush_lines`, waiting up to `flush_interval` for more; `wake` is notified after
    /// each batch written.
    pub fn spawn(
        sink: Arc<dyn LogSink>,
        capacity: usize,
        flush_lines: usize,
        flush_interval: Duration,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(flush_loop(
            sink,
            receiver,
            flush_lines,
            flush_interval,
            wake,
            metrics,
        ));
        Ingestor {
            sender,
            buffer: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Lines currently buffered (received, not yet durable).
    pub fn buffered(&self) -> usize {
        self.capacity - self.buffer.available_permits()
    }

    /// Returns once the records are durable in the sink.
    pub async fn ingest(&self, records: Vec<LogRecord>) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        if records.len() > self.capacity {
            return Err(Error::InvalidInput(format!(
                "{} lines in one request exceed the pipeline's buffer of {}; split the batch",
                records.len(),
                self.capacity
            )));
        }
        let permit = self
            .buffer
            .clone()
            .try_acquire_many_owned(records.len() as u32)
            .map_err(|_| Error::Busy {
                retry_after_secs: 1,
            })?;
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Pending {
                records,
                _permit: permit,
                reply,
            })
            .map_err(|_| Error::Sink("the flusher has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Sink("the flusher dropped the batch".into()))?
    }
}

async fn flush_loop(
    sink: Arc<dyn LogSink>,
    mut receiver: mpsc::UnboundedReceiver<Pending>,
    flush_lines: usize,
    flush_interval: Duration,
    wake: Arc<Notify>,
    metrics: Metrics,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let mut lines = batch[0].records.len();
        let deadline = tokio::time::Instant::now() + flush_interval;
        while lines < flush_lines {
            let next = match receiver.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(next)) => next,
                        _ => break,
                    }
                }
            };
            lines += next.records.len();
            batch.push(next);
        }
        // Moved, not cloned: each request only needs its count back.
        let counts: Vec<u64> = batch.iter().map(|p| p.records.len() as u64).collect();
        let mut records: Vec<LogRecord> = Vec::with_capacity(lines);
        for pending in &mut batch {
            records.append(&mut pending.records);
        }
        let started = std::time::Instant::now();
        match sink.write(&records).await {
            Ok(written) => {
                metrics.lines_written.inc_by(written);
                metrics
                    .duplicates_dropped
                    .inc_by(records.len() as u64 - written.min(records.len() as u64));
                metrics
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                wake.notify_waiters();
                for (pending, count) in batch.into_iter().zip(counts) {
                    let _ = pending.reply.send(Ok(count));
                }
            }
            Err(error) => {
                metrics.write_failures.inc();
                tracing::warn!(%error, lines = records.len(), "writing a batch failed; its requests answer 503");
                let message = error.to_string();
                for pending in batch {
                    let _ = pending.reply.send(Err(Error::Sink(message.clone())));
                }
            }
        }
    }
}
