//! `nimbus-logs`: job logs and metadata into ClickHouse or SQLite.
//!
//! This crate holds the [`LogSink`] contract and the row types of the canonical
//! `nimbus.ci_logs` table; the sinks, the HTTP pipeline and retention land with
//! their issue.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid record {index}: {reason}")]
    InvalidRecord { index: usize, reason: String },
    #[error("sink: {0}")]
    Sink(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One row of `nimbus.ci_logs` (see docs/CLICKHOUSE_SCHEMA.md when it lands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub job_id: u64,
    pub agent_id: String,
    pub org_id: Option<u64>,
    pub repo_id: Option<u64>,
    pub level: String,
    pub message: String,
    pub ts_millis: i64,
    pub seq: u64,
}

/// Where job log lines go.
#[async_trait]
pub trait LogSink: Send + Sync {
    /// Writes a batch durably; duplicates (same job_id + seq) are dropped.
    async fn write(&self, batch: &[LogRecord]) -> Result<u64>;
    /// The newest `limit` lines of a job, oldest first.
    async fn tail(&self, job_id: u64, limit: u32) -> Result<Vec<LogRecord>>;
    /// Deletes lines older than the cut-off; returns how many.
    async fn prune(&self, older_than_millis: i64) -> Result<u64>;
}
