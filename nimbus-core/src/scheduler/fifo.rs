//! First in, first out: the oldest job the agent may run.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::Scheduler;
use crate::domain::Lease;
use crate::error::Result;
use crate::store::{LeaseRequest, Store};

/// The oldest queued job the agent's labels cover, of any org.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fifo;

#[async_trait]
impl Scheduler for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    async fn lease(
        &self,
        store: &dyn Store,
        request: &LeaseRequest,
        now: OffsetDateTime,
    ) -> Result<Option<Lease>> {
        store.lease(request, now).await
    }
}
