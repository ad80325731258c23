//! Where log lines and metadata rows are stored: the [`LogSink`] trait and its
//! backends, [`sqlite`] (embedded default), [`clickhouse`], and [`http`] (the
//! logging pipeline itself, for writers on other machines); [`layer`] wraps any
//! of them to act around its writes.

pub mod clickhouse;
pub mod http;
pub mod layer;
pub mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;
use tokio::sync::Notify;

use crate::error::Result;
use crate::record::{LogRecord, MetadataRecord};

/// Which lines a query wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only this job's lines; results are then ordered by seq rather than by time.
    pub job_id: Option<u64>,
    /// Only this org's lines (org tokens are scoped to their org).
    pub org_id: Option<u64>,
    /// Only lines of this level, as stored (one of [`LEVELS`](crate::record::LEVELS)).
    pub level: Option<String>,
    /// Lines at or after this time (epoch ms).
    pub since: Option<i64>,
    /// Lines after this seq (with `job_id`; how `follow` pages).
    pub after_seq: Option<u64>,
    /// Most lines returned. Set it when starting from `default()`: SQLite and ClickHouse
    /// return nothing for 0 (the HTTP API clamps it to 1-10,000).
    pub limit: u32,
    /// Which end of the matching lines `limit` keeps.
    pub order: Order,
}

/// `Newest` returns the last `limit` matching lines (a tail), `Oldest` the first;
/// either way oldest first (by job, then seq).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// The last `limit` matching lines (a tail). The default.
    #[default]
    Newest,
    /// The first `limit` matching lines.
    Oldest,
}

/// What `GET /api/stats` reports (and `nimbus report logs` prints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Lines stored.
    pub lines: u64,
    /// Bytes of message text stored.
    pub bytes: u64,
    /// Lines per level.
    pub per_level: BTreeMap<String, u64>,
    /// Lines per org id (as text); lines without an org count under `none`.
    pub per_org: BTreeMap<String, u64>,
    /// Epoch ms of the newest insert, if any.
    pub last_ingest: Option<i64>,
}

/// A store for job log lines and metadata.
#[async_trait]
pub trait LogSink: Send + Sync {
    /// Short name of the backend (`sqlite`, `clickhouse`, `http`), for logs and
    /// `GET /api/stats`. The pipeline runs its hourly retention only for `sqlite`.
    fn name(&self) -> &'static str;
    /// Writes a batch durably (it is on disk / acknowledged by the server when this
    /// returns). Records whose (job_id, seq) is already stored are not stored again
    /// by callers that dedupe with [`LogSink::stored_seqs`]; sinks with a unique key
    /// (SQLite) also drop them themselves. Returns the rows written.
    async fn write(&self, batch: &[LogRecord]) -> Result<u64>;
    /// The seqs stored for a job (to rebuild the dedupe index after a restart).
    async fn stored_seqs(&self, job_id: u64) -> Result<Vec<u64>>;
    /// The lines that match `query`, oldest first, at most `query.limit`.
    async fn query(&self, query: &LogQuery) -> Result<Vec<LogRecord>>;
    /// Deletes lines older than the cut-off (epoch ms).
    async fn prune(&self, older_than: i64) -> Result<u64>;
    /// Stores metadata rows; a (job_id, key) already stored takes the new value.
    /// Returns the rows written.
    async fn write_metadata(&self, rows: &[MetadataRecord]) -> Result<u64>;
    /// A job's metadata rows, ordered by key; with `org_id`, only rows of that org.
    async fn query_metadata(&self, job_id: u64, org_id: Option<u64>)
        -> Result<Vec<MetadataRecord>>;
    /// Deletes metadata rows older than the cut-off (epoch ms); returns how many.
    async fn prune_metadata(&self, older_than: i64) -> Result<u64>;
    /// Line and byte counts for all orgs, or with `org_id` for that org only.
    async fn stats(&self, org_id: Option<u64>) -> Result<Stats>;
}

/// Lines of a job written after `after_seq`, as they arrive: the backlog first,
/// then new lines in seq order. Polls the sink every `poll` (so lines ingested by
/// another pipeline replica arrive too) and at once when `wake` fires (lines
/// ingested here).
pub fn follow(
    sink: Arc<dyn LogSink>,
    job_id: u64,
    org_id: Option<u64>,
    after_seq: u64,
    poll: Duration,
    wake: Arc<Notify>,
) -> BoxStream<'static, Result<LogRecord>> {
    let state = (
        sink,
        after_seq,
        std::collections::VecDeque::<LogRecord>::new(),
        false,
    );
    Box::pin(futures::stream::unfold(
        state,
        move |(sink, mut after, mut pending, mut waited)| {
            let wake = wake.clone();
            async move {
                loop {
                    if let Some(record) = pending.pop_front() {
                        return Some((Ok(record), (sink, after, pending, waited)));
                    }
                    if waited {
                        // Wait for news before asking the sink again.
                        let _ = tokio::time::timeout(poll, wake.notified()).await;
                    }
                    let query = LogQuery {
                        job_id: Some(job_id),
                        org_id,
                        after_seq: Some(after),
                        limit: 1000,
                        order: Order::Oldest,
                        ..LogQuery::default()
                    };
                    match sink.query(&query).await {
                        Ok(records) => {
                            waited = records.len() < 1000;
                            if let Some(last) = records.last() {
                                after = last.seq;
                            }
                            pending.extend(records);
                        }
                        Err(error) => return Some((Err(error), (sink, after, pending, true))),
                    }
                }
            }
        },
    ))
}
