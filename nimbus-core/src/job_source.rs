//! Where a host agent gets its jobs: the [`JobSource`] seam.
//!
//! Implemented by the HTTP client of a remote control plane
//! ([`crate::client::ControlPlaneClient`]) and by an in-process one
//! ([`crate::control_plane::LocalAgent`]); the host agent and `nimbus run` hold an
//! `Arc<dyn JobSource>` and never know which.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{Completion, Job, JobId, Lease, RunnerConfig};
use crate::error::Result;
use crate::store::LeaseRenewal;

/// Lease, keep and finish jobs, as one agent.
#[async_trait]
pub trait JobSource: Send + Sync {
    /// Leases a job whose runner labels are all among `labels` (`None`: any job),
    /// waiting up to `wait` for one.
    async fn lease(&self, wait: Duration, labels: Option<&[String]>) -> Result<Option<Lease>>;

    /// Extends the lease of `job_id`; a `Conflict` means the lease is lost.
    async fn heartbeat(&self, job_id: JobId, fencing_token: i64) -> Result<LeaseRenewal>;

    /// Finishes the leased job.
    async fn complete(&self, job_id: JobId, completion: &Completion) -> Result<Job>;

    /// The just-in-time runner config of a GitHub job this agent holds.
    async fn runner_config(&self, job_id: JobId, fencing_token: i64) -> Result<RunnerConfig>;

    /// The workspace archive (a tar) a job this agent holds names in `workspace`.
    async fn workspace(&self, job_id: JobId, fencing_token: i64) -> Result<Vec<u8>>;
}
