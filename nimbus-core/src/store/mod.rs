//! Durable state of the control plane: the job queue, leases, org rate limits,
//! job metadata, webhook deliveries and orgs.
//!
//! Each concern is its own object-safe trait, so an embedder can replace one; the
//! [`Store`] super-trait bundles them for the control plane, which holds an
//! `Arc<dyn Store>`. [`SqlStore`] implements them once for both databases (`db.rs`
//! says how): [`sqlite`] (embedded default, one node, one writer connection) and
//! [`postgres`] (several replicas; leases claimed with `FOR UPDATE SKIP LOCKED`)
//! open its pools and hold the statements that differ. [`open`] picks one from a
//! URL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::analytics::{GroupStats, MetadataTag, StatsQuery, TrendRow};
use crate::domain::{Completion, Job, JobId, JobStatus, Lease, Metadata, NewJob, Org, OrgId};
use crate::error::{Error, Result};

#[cfg(feature = "postgres")]
mod batch;
#[cfg(feature = "postgres")]
pub mod postgres;
mod row;
mod sql;
pub mod sqlite;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use sql::SqlStore;

/// Most jobs one page of `list_jobs` returns.
pub const MAX_PAGE_SIZE: u32 = 500;

/// A webhook delivery to record together with the job it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// GitHub's `X-GitHub-Delivery` id.
    pub id: String,
    /// When the delivery arrived; old records are pruned by this.
    pub received_at: OffsetDateTime,
}

/// A rate limit to enforce inside the admission transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// What is counted, e.g. `org-jobs:42`.
    pub key: String,
    /// Most requests allowed per window.
    pub limit: u32,
    /// Length of a window; windows are aligned to the Unix epoch.
    pub interval: Duration,
}

/// Checks that go with queueing a job, all in the job's own transaction: a
/// replayed delivery or an exhausted rate limit writes nothing at all (the delivery
/// id stays unrecorded, so GitHub's redelivery is accepted later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// The webhook delivery to record; an id seen before refuses the job.
    pub delivery: Option<Delivery>,
    /// The rate limit to count the job against.
    pub rate_limit: Option<RateLimit>,
}

/// Aligned fixed window containing `now`: (window start in ms, time until it ends).
/// Windows are multiples of the interval since the epoch, so every replica agrees.
pub(crate) fn rate_window(now: OffsetDateTime, interval: Duration) -> (i64, i64) {
    let interval_ms = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let now_ms = crate::domain::to_millis(now);
    let start = now_ms - now_ms.rem_euclid(interval_ms);
    (start, start + interval_ms - now_ms)
}

/// What `enqueue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job queued, or the one already there for the same GitHub job.
    pub job: Job,
    /// False when a job for the same GitHub job already existed and was returned.
    pub created: bool,
}

/// Filters of `GET /api/jobs`. Pages run newest first; `cursor` is the id of the
/// last job of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this org's jobs.
    pub org_id: Option<OrgId>,
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this repository (`owner/name`).
    pub repo: Option<String>,
    /// Only jobs carrying this label.
    pub label: Option<String>,
    /// Only jobs with this metadata key.
    pub metadata_key: Option<String>,
    /// Only jobs whose `metadata_key` has this value (needs `metadata_key`).
    pub metadata_value: Option<String>,
    /// Most jobs per page (1 to [`MAX_PAGE_SIZE`], default 50).
    pub limit: u32,
    /// Only jobs older than this id: the previous page's `next_cursor`.
    pub cursor: Option<JobId>,
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter {
            org_id: None,
            status: None,
            repo: None,
            label: None,
            metadata_key: None,
            metadata_value: None,
            limit: 50,
            cursor: None,
        }
    }
}

/// One page of `GET /api/jobs`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobPage {
    /// The jobs of this page.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// GitHub's later word on a job it told us about (`in_progress`, `completed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubJobUpdate {
    /// GitHub's id of the workflow job.
    pub github_job_id: i64,
    /// GitHub's status of the job (`in_progress`, `completed`).
    pub status: String,
    /// GitHub's conclusion once completed, e.g. `success`.
    pub conclusion: Option<String>,
    /// The runner GitHub says took the job.
    pub runner_name: Option<String>,
}

/// An org with queued work: its oldest queued job and how many of its jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedOrg {
    /// The org with queued work.
    pub org_id: OrgId,
    /// The id of its oldest queued job.
    pub oldest_job: JobId,
    /// Jobs of the org leased right now (on any replica).
    pub running: i64,
}

/// Who asks for a lease, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The agent asking (its token's `sub`); the lease is its own.
    pub agent_id: String,
    /// Only lease jobs of this org (dedicated agents); `None` for any org.
    pub org_id: Option<OrgId>,
    /// The agent's labels: only jobs whose runner labels are all among them (case
    /// insensitive; `self-hosted` and the `param:`/`meta:`/`timeout:` labels, which
    /// are not runner labels, excepted). `None` takes any job.
    pub labels: Option<Vec<String>>,
    /// How long the lease lives unless renewed.
    pub ttl: Duration,
}

/// A heartbeat's answer: the lease lives until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRenewal {
    /// The leased job.
    pub job_id: JobId,
    /// The lease's id (unchanged by heartbeats).
    pub lease_id: String,
    /// The lease's fencing token (unchanged by heartbeats).
    pub fencing_token: i64,
    /// When the lease now ends unless renewed again.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// What one reaper sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Jobs sent back to the queue with attempt + 1.
    pub requeued: Vec<JobId>,
    /// Jobs that used up their attempts and are now `failed`.
    pub failed: Vec<JobId>,
}

/// A rate-limit check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request is within the limit.
    pub allowed: bool,
    /// Requests counted in the current window, this one included.
    pub count: u32,
    /// Time until the current window ends.
    pub retry_after: Duration,
}

/// The job queue: admission writes and reads.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Queues a job and writes its metadata rows, in one transaction with the
    /// admission checks: the delivery id is recorded (one seen before fails with
    /// [`Error::ReplayedDelivery`]) and the rate limit counted (over the limit fails
    /// with [`Error::RateLimited`]); a failure writes nothing. A GitHub job already
    /// queued (same GitHub job id) is returned with `created: false`.
    async fn enqueue(
        &self,
        job: NewJob,
        admission: &Admission,
        now: OffsetDateTime,
    ) -> Result<Enqueued>;

    /// The job with `id`, if any.
    async fn get_job(&self, id: JobId) -> Result<Option<Job>>;

    /// The job made for GitHub job `github_job_id`, if any.
    async fn get_github_job(&self, github_job_id: i64) -> Result<Option<Job>>;

    /// A page of the jobs that `filter` selects, newest first.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage>;

    /// Applies GitHub's `in_progress` / `completed` news to the job made for that
    /// GitHub job. A job still queued when GitHub says `completed` (cancelled
    /// before any runner took it) becomes `cancelled`. `None` if we have no such job.
    async fn apply_github_update(
        &self,
        update: &GithubJobUpdate,
        now: OffsetDateTime,
    ) -> Result<Option<Job>>;

    /// GitHub ran a different job on `job_id`'s runner than the one it was made for:
    /// `job_id` now stands for the GitHub job `github` (of repository `repo`), and
    /// the job that stood for `github` until now, if any, takes over `job_id`'s old
    /// GitHub job — one transaction, so no GitHub job is left without a Nimbus job
    /// and none has two. Returns that other job's id.
    async fn rebind_github_job(
        &self,
        job_id: JobId,
        github: &crate::domain::GithubJobRef,
        repo: &crate::domain::Repo,
        now: OffsetDateTime,
    ) -> Result<Option<JobId>>;

    /// Number of jobs per status (for gauges and reports).
    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>>;

    /// The orgs that have queued jobs, with the id of each one's oldest (what a
    /// scheduler chooses among), in org order.
    async fn queued_orgs(&self) -> Result<Vec<QueuedOrg>>;

    /// Cancels job `job_id` if it is queued or leased (a lease ends with it: its
    /// holder's next heartbeat is refused). `None` if it had already ended.
    async fn cancel(&self, job_id: JobId, reason: &str, now: OffsetDateTime)
        -> Result<Option<Job>>;
}

/// Fenced leases on queued jobs.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Claims the oldest queued job, if any. Each lease of a job carries a fencing
    /// token greater than every earlier one of that job. No job is handed out twice,
    /// even to concurrent callers on several replicas.
    async fn lease(&self, request: &LeaseRequest, now: OffsetDateTime) -> Result<Option<Lease>>;

    /// Extends `agent_id`'s lease. A stale token, a job no longer leased or a lease
    /// held by another agent is a `Conflict` that tells nothing of the current lease.
    async fn heartbeat(
        &self,
        job_id: JobId,
        agent_id: &str,
        fencing_token: i64,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<LeaseRenewal>;

    /// Finishes `agent_id`'s leased job. The same agent repeating the same completion
    /// gets the job unchanged; a stale token or another agent's lease is a `Conflict`
    /// and changes nothing.
    async fn complete(
        &self,
        job_id: JobId,
        agent_id: &str,
        completion: &Completion,
        now: OffsetDateTime,
    ) -> Result<Job>;

    /// Returns leases that expired before `now` to the queue (attempt + 1), or fails
    /// jobs that had `max_attempts` attempts. Safe to run concurrently and repeatedly.
    async fn reap_expired(&self, now: OffsetDateTime, max_attempts: u32) -> Result<ReapReport>;
}

/// Fixed-window counters kept in the shared store, so replicas enforce one limit.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one request for `key` in the window containing `now`.
    async fn acquire(
        &self,
        key: &str,
        limit: u32,
        interval: Duration,
        now: OffsetDateTime,
    ) -> Result<RateDecision>;
}

/// Job metadata rows (`param:`/`meta:` labels and submitted metadata).
#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// The metadata of job `job_id` (empty for an unknown job).
    async fn job_metadata(&self, job_id: JobId) -> Result<Metadata>;

    /// How many jobs carry each value of `key`, most frequent first.
    async fn metadata_values(
        &self,
        org_id: Option<OrgId>,
        key: &str,
        limit: u32,
    ) -> Result<Vec<(String, i64)>>;
}

/// Fleet analytics over the jobs (`crate::analytics`, docs/analytics.md).
#[async_trait]
pub trait AnalyticsStore: Send + Sync {
    /// The jobs created in the query's window, grouped as it asks. A report reads
    /// one consistent snapshot: every job counts exactly once, whether it was
    /// rolled up already or not.
    async fn job_stats(&self, query: &StatsQuery) -> Result<Vec<GroupStats>>;

    /// Folds the jobs that finished before `now` less a grace period into the
    /// rollups; returns how many. Safe to run concurrently on several replicas.
    async fn roll_up(&self, now: OffsetDateTime) -> Result<u64>;

    /// Counts one submission of `org_id` refused by the org rate limit.
    async fn record_rate_limit_hit(&self, org_id: OrgId, now: OffsetDateTime) -> Result<()>;

    /// Refused submissions per org in the hours that overlap `[since, until)`.
    async fn rate_limit_hits(
        &self,
        org_id: Option<OrgId>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<(OrgId, i64)>>;

    /// Jobs leased right now, per org.
    async fn active_leases(&self, org_id: Option<OrgId>) -> Result<Vec<(OrgId, i64)>>;

    /// Jobs carrying metadata `key`, created in `[since, until)`, per time bucket
    /// of `bucket` (aligned to the epoch), value and status.
    async fn metadata_trend(
        &self,
        org_id: Option<OrgId>,
        key: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
        bucket: Duration,
    ) -> Result<Vec<TrendRow>>;

    /// The most frequent metadata tags among the jobs that carry `key` = `value`.
    async fn tags_with(
        &self,
        org_id: Option<OrgId>,
        key: &str,
        value: &str,
        limit: u32,
    ) -> Result<Vec<MetadataTag>>;
}

/// Webhook delivery ids already processed (replay protection shared by replicas).
#[async_trait]
pub trait DeliveryLog: Send + Sync {
    /// Whether delivery `delivery_id` was already recorded.
    async fn delivery_seen(&self, delivery_id: &str) -> Result<bool>;

    /// Records a processed delivery; `false` if it was already recorded.
    async fn record_delivery(&self, delivery: &Delivery) -> Result<bool>;

    /// Forgets deliveries received before `before`; returns how many.
    async fn prune_deliveries(&self, before: OffsetDateTime) -> Result<u64>;
}

/// Organisations known to the control plane.
#[async_trait]
pub trait OrgStore: Send + Sync {
    /// Creates the org or renames it.
    async fn upsert_org(&self, id: OrgId, name: &str, now: OffsetDateTime) -> Result<Org>;
    /// The org with `id`, if registered.
    async fn get_org(&self, id: OrgId) -> Result<Option<Org>>;
    /// Every registered org, by id.
    async fn list_orgs(&self) -> Result<Vec<Org>>;
}

/// Workspace archives: tars of working trees that jobs of the same org name by
/// their sha256 (`JobSpec::workspace`). In the database so that every replica of
/// the control plane serves them; bounded per org.
#[async_trait]
pub trait WorkspaceStore: Send + Sync {
    /// Keeps `archive` as `digest` of `org_id` (refreshing its time when it is
    /// already there), then forgets the org's oldest other archives until the
    /// org's archives take at most `org_quota_bytes`. Returns how many went.
    async fn put_workspace(
        &self,
        org_id: OrgId,
        digest: &str,
        archive: &[u8],
        now: OffsetDateTime,
        org_quota_bytes: u64,
    ) -> Result<u64>;

    /// The archive `digest` of `org_id`, if kept.
    async fn get_workspace(&self, org_id: OrgId, digest: &str) -> Result<Option<Vec<u8>>>;

    /// Forgets archives last put before `before`; returns how many.
    async fn prune_workspaces(&self, before: OffsetDateTime) -> Result<u64>;
}

/// Everything the control plane needs from its database.
#[async_trait]
pub trait Store:
    JobQueue
    + LeaseStore
    + RateLimiter
    + MetadataStore
    + AnalyticsStore
    + DeliveryLog
    + OrgStore
    + WorkspaceStore
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Checks the database answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;
}

/// Opens the store a URL names: `sqlite://PATH`, `sqlite::memory:`, or
/// `postgres://…` / `postgresql://…`. Migrations are applied before it returns.
pub async fn open(url: &str, max_connections: u32) -> Result<Arc<dyn Store>> {
    match crate::db::Backend::of(url, "NIMBUS_DATABASE_URL", false)? {
        crate::db::Backend::Sqlite => Ok(Arc::new(SqlStore::sqlite(url, max_connections).await?)),
        #[cfg(feature = "postgres")]
        crate::db::Backend::Postgres => {
            Ok(Arc::new(SqlStore::postgres(url, max_connections).await?))
        }
        #[cfg(not(feature = "postgres"))]
        crate::db::Backend::Postgres => Err(Error::Unavailable(
            "this build of nimbus-core has no PostgreSQL support (feature `postgres`)".into(),
        )),
    }
}

/// Why a heartbeat or completion by `agent_id` changed nothing. The lease's holder
/// learns why; anyone else only that the job is not leased to them, never the
/// current fencing token, holder or status (a token is all it takes to act on a lease).
fn stale_or_missing(job: Option<Job>, job_id: JobId, agent_id: &str, fencing_token: i64) -> Error {
    match job {
        None => Error::not_found(format!("job {job_id}")),
        Some(job) if job.agent_id.as_deref() != Some(agent_id) => {
            Error::Conflict(format!("job {job_id} is not leased to agent {agent_id:?}"))
        }
        Some(job) if job.status != JobStatus::Leased => Error::Conflict(format!(
            "job {job_id} is not leased (status {}); fencing token {fencing_token} is stale",
            job.status
        )),
        Some(_) => Error::Conflict(format!(
            "fencing token {fencing_token} of job {job_id} is stale: a newer lease exists"
        )),
    }
}
