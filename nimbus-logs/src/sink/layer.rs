//! Acting around a sink's writes — counting, notifying, holding back, injecting
//! faults — without implementing the rest of [`LogSink`] again: a [`WriteLayer`]
//! is handed each batch and the sink under it, and [`Layered`] passes every other
//! call straight through.

use std::sync::Arc;

use async_trait::async_trait;

use super::{LogQuery, LogSink, Stats};
use crate::error::Result;
use crate::record::{LogRecord, MetadataRecord};

/// What happens around one write.
#[async_trait]
pub trait WriteLayer: Send + Sync {
    /// Writes `batch` to `inner` (or not), doing what the layer is for around it.
    async fn write(&self, inner: &dyn LogSink, batch: &[LogRecord]) -> Result<u64>;
}

/// `inner` with `layer` around its writes.
pub struct Layered<L> {
    inner: Arc<dyn LogSink>,
    layer: L,
}

impl<L: WriteLayer> Layered<L> {
    /// Wraps `inner` so that its writes go through `layer`.
    pub fn new(inner: Arc<dyn LogSink>, layer: L) -> Self {
        Layered { inner, layer }
    }

    /// The layer, to read what it recorded (counts, notifications) or to adjust it.
    pub fn layer(&self) -> &L {
        &self.layer
    }
}

#[async_trait]
impl<L: WriteLayer> LogSink for Layered<L> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn write(&self, batch: &[LogRecord]) -> Result<u64> {
        self.layer.write(self.inner.as_ref(), batch).await
    }
    async fn stored_seqs(&self, job_id: u64) -> Result<Vec<u64>> {
        self.inner.stored_seqs(job_id).await
    }
    async fn query(&self, query: &LogQuery) -> Result<Vec<LogRecord>> {
        self.inner.query(query).await
    }
    async fn prune(&self, older_than: i64) -> Result<u64> {
        self.inner.prune(older_than).await
    }
    async fn write_metadata(&self, rows: &[MetadataRecord]) -> Result<u64> {
        self.inner.write_metadata(rows).await
    }
    async fn query_metadata(
        &self,
        job_id: u64,
        org_id: Option<u64>,
    ) -> Result<Vec<MetadataRecord>> {
        self.inner.query_metadata(job_id, org_id).await
    }
    async fn prune_metadata(&self, older_than: i64) -> Result<u64> {
        self.inner.prune_metadata(older_than).await
    }
    async fn stats(&self, org_id: Option<u64>) -> Result<Stats> {
        self.inner.stats(org_id).await
    }
}
