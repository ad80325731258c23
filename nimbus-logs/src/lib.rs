//! `nimbus-logs`: job log lines and job metadata into ClickHouse or SQLite.
//!
//! - [`record`]: the line and metadata row types, validation, normalisation;
//! - [`decode`]: request bodies (JSON array or NDJSON), refused whole on one bad record;
//! - [`sink`]: the [`LogSink`] trait with [`sink::sqlite`] (embedded default) and
//!   [`sink::clickhouse`], plus [`sink::follow`] for live tailing;
//! - [`schema`]: the ClickHouse DDL (docs/CLICKHOUSE_SCHEMA.md is the same text);
//! - [`pipeline`]: the HTTP service (`bins/nimbus-logging-pipeline`, port 8002):
//!   buffered, deduplicated ingest acknowledged once committed, with backpressure,
//!   queries, SSE follow, metadata, stats and retention.

#![warn(missing_docs)]

pub mod decode;
pub mod error;
pub mod pipeline;
pub mod record;
pub mod schema;
pub mod sink;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use error::{Error, Result};
pub use record::{LogRecord, MetadataRecord};
pub use sink::{LogQuery, LogSink, Order, Stats};
