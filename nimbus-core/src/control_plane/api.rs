//! The control plane's API as plain async methods on [`ControlPlane`]: each takes
//! the verified caller (a [`Principal`]) and typed arguments, applies every rule
//! — who may do it, validation, admission, tokens, metrics — and answers domain
//! types or the crate's [`Error`]. The HTTP layer ([`super::http`]) only parses,
//! calls and maps; in-process callers (`nimbus run`, `nimbus dev up`, the bench,
//! the examples, the Python bindings) call these directly, and a host agent in the
//! same process leases through [`LocalAgent`], the in-process [`JobSource`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::analytics::{HistogramQuery, OrgsQuery, SummaryQuery, TrendQuery};
use super::{AppState, ControlPlane};
use crate::analytics::{JobSummary, MetadataHistogram, MetadataPresets, MetadataTrend, OrgsReport};
use crate::auth::Principal;
use crate::domain::{
    metadata_from_labels, validate_labels, validate_repo_name, Completion, Job, JobId,
    JobSource as Source, JobSpec, JobStatus, Lease, NewJob, Org, OrgId, Repo, RunnerConfig, Step,
    DEFAULT_TIMEOUT_MINUTES, MAX_LABEL_LEN, MAX_WORKFLOW_RESULT_BYTES,
};
use crate::error::{Error, Result};
use crate::job_source::JobSource;
use crate::store::{
    Admission, Delivery, Enqueued, JobFilter, JobPage, LeaseRenewal, LeaseRequest, RateLimit,
    MAX_PAGE_SIZE,
};

/// Longest a lease request may wait for a job.
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(60);
/// Most labels an agent may name when it leases.
const MAX_AGENT_LABELS: usize = 100;
use crate::domain::MAX_COMPLETION_REASON_BYTES as MAX_REASON_BYTES;

/// A job submission (`POST /api/jobs`, docs/api.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Required with an admin token; with an org token it defaults to (and must
    /// be) the token's org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<OrgId>,
    /// The repository, `owner/name`.
    pub repo: String,
    /// Runner labels the leasing agent must offer (at most 100); `param:`/`meta:`
    /// labels also become metadata.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The commands to run, in order (at least one, unless `workflow` is given).
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Environment variables for every step.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// 1 to 1440 minutes; default 360.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<u32>,
    /// Extra metadata rows, besides those from `param:`/`meta:` labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// A GitHub Actions workflow job to run instead of `steps` (what `nimbus run`
    /// submits; see [`JobSpec::workflow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<serde_json::Value>,
    /// The sha256 of a workspace archive of the org, unpacked into the job's
    /// workspace before it runs ([`ControlPlane::put_workspace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// How many jobs carry one value of a metadata key (`GET /api/analytics/metadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataCount {
    /// The metadata value.
    pub value: String,
    /// How many of the jobs carry it.
    pub jobs: i64,
}

/// The control plane as one caller sees it: the org, job and analytics calls of
/// [`ControlPlane`] with the caller's credential already bound. Implemented in
/// process by [`Session`] (a [`ControlPlane`] and a verified [`Principal`]) and
/// remotely by [`crate::client::ControlPlaneClient`] (a URL and a token), so a tool
/// written against `Arc<dyn ControlPlaneApi>` — the CLI, the Python bindings, an
/// embedder's — works on either. Agents use the narrower [`JobSource`].
#[async_trait]
pub trait ControlPlaneApi: Send + Sync {
    /// Creates or renames an org (admin).
    async fn upsert_org(&self, id: OrgId, name: &str) -> Result<Org>;
    /// The orgs the caller may see.
    async fn orgs(&self) -> Result<Vec<Org>>;
    /// Queues a job through admission.
    async fn submit(&self, request: JobRequest) -> Result<Job>;
    /// Keeps a workspace archive (a tar named by its sha256) for jobs of the
    /// caller's org (an admin names the org) to start from.
    async fn put_workspace(
        &self,
        org_id: Option<OrgId>,
        digest: &str,
        archive: Vec<u8>,
    ) -> Result<super::WorkspaceReceipt>;
    /// A page of the jobs the caller may see.
    async fn jobs(&self, filter: JobFilter) -> Result<JobPage>;
    /// One job the caller may see ("not found" otherwise).
    async fn job(&self, id: JobId) -> Result<Job>;
    /// Cancels a queued or running job the caller may see.
    async fn cancel(&self, id: JobId) -> Result<Job>;
    /// How many jobs carry each value of metadata `key`, most frequent first.
    async fn metadata_values(
        &self,
        key: &str,
        org_id: Option<OrgId>,
        limit: u32,
    ) -> Result<Vec<MetadataCount>>;
    /// Per org: jobs by status, success rate, queue wait and run time, active
    /// leases, rate-limit hits (and a metadata key's values).
    async fn observability_orgs(&self, query: &OrgsQuery) -> Result<OrgsReport>;
    /// The analytics of NIMBUS_METADATA_DEFAULT_KEYS, kept warm.
    async fn metadata_presets(&self) -> Result<MetadataPresets>;
    /// Jobs per value of a metadata key.
    async fn metadata_histogram(&self, query: &HistogramQuery) -> Result<MetadataHistogram>;
    /// Jobs per value of a metadata key, per time bucket.
    async fn metadata_trend(&self, query: &TrendQuery) -> Result<MetadataTrend>;
    /// Jobs by status and their most frequent metadata tags.
    async fn job_summary(&self, query: &SummaryQuery) -> Result<JobSummary>;
}

/// What an agent asks a lease for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long to wait for a job (at most [`MAX_LEASE_WAIT`]).
    pub wait: Duration,
    /// Only this org's jobs (a dedicated agent).
    pub org_id: Option<OrgId>,
    /// The agent's labels: only jobs whose runner labels are all among them.
    pub labels: Option<Vec<String>>,
}

fn require_admin(principal: &Principal) -> Result<()> {
    match principal {
        Principal::Admin { .. } => Ok(()),
        other => Err(Error::Forbidden(format!(
            "this needs an admin token, not {}",
            other.role()
        ))),
    }
}

/// The lease holder a principal acts as: an agent by its id, an admin by its sub.
fn lease_holder(principal: &Principal) -> Result<&str> {
    match principal {
        Principal::Agent { agent_id } => Ok(agent_id),
        Principal::Admin { sub } => Ok(sub),
        Principal::Org { .. } => Err(Error::Forbidden(
            "org tokens cannot lease or report on jobs; use an agent token".into(),
        )),
    }
}

/// Listing jobs, orgs and analytics is for orgs (their own) and admins; an agent
/// gets what it needs with each lease.
pub(super) fn refuse_agents(principal: &Principal, what: &str) -> Result<()> {
    match principal {
        Principal::Agent { .. } => Err(Error::Forbidden(format!(
            "agent tokens cannot read {what}; an agent gets its job with the lease"
        ))),
        Principal::Admin { .. } | Principal::Org { .. } => Ok(()),
    }
}

/// The org a principal may read: its own for an org (asking for another is "not
/// found"), any (or the one asked) for an admin.
pub(super) fn readable_org(principal: &Principal, asked: Option<OrgId>) -> Result<Option<OrgId>> {
    match (principal.org_scope(), asked) {
        (Some(own), Some(asked)) if own != asked => Err(Error::not_found(format!("org {asked}"))),
        (Some(own), _) => Ok(Some(own)),
        (None, asked) => Ok(asked),
    }
}

impl ControlPlane {
    /// Creates or renames an org (admin).
    pub async fn upsert_org(&self, who: &Principal, id: OrgId, name: &str) -> Result<Org> {
        require_admin(who)?;
        if id <= 0 {
            return Err(Error::invalid("org id must be a positive integer"));
        }
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_LABEL_LEN {
            return Err(Error::invalid(format!(
                "org name must be 1 to {MAX_LABEL_LEN} bytes"
            )));
        }
        let org = self.store.upsert_org(id, name, self.now()).await?;
        self.remember_org(org.id);
        Ok(org)
    }

    /// The orgs the caller may see: all (admin) or its own.
    pub async fn orgs(&self, who: &Principal) -> Result<Vec<Org>> {
        refuse_agents(who, "orgs")?;
        let orgs = self.store.list_orgs().await?;
        Ok(match who.org_scope() {
            Some(own) => orgs.into_iter().filter(|org| org.id == own).collect(),
            None => orgs,
        })
    }

    /// Queues a job through admission (policy, rate limit).
    pub async fn submit(&self, who: &Principal, request: JobRequest) -> Result<Job> {
        let org_id = self.submitting_org(who, request.org_id).await?;
        validate_repo_name(&request.repo)?;
        validate_labels(&request.labels)?;
        let spec = JobSpec {
            steps: request.steps,
            env: request.env,
            timeout_minutes: request.timeout_minutes.unwrap_or(DEFAULT_TIMEOUT_MINUTES),
            workflow: request.workflow,
            workspace: request.workspace,
        };
        spec.validate_direct()?;
        let mut metadata = metadata_from_labels(&request.labels);
        for (key, value) in request.metadata {
            if key.is_empty() || key.len() > MAX_LABEL_LEN || value.len() > MAX_LABEL_LEN {
                return Err(Error::invalid(format!(
                    "metadata key {key:?}: keys must be 1 to {MAX_LABEL_LEN} bytes, values at most {MAX_LABEL_LEN}"
                )));
            }
            metadata.insert(key, value);
        }
        let job = NewJob {
            org_id,
            repo: Repo {
                id: None,
                full_name: request.repo,
            },
            source: Source::Direct,
            labels: request.labels,
            metadata,
            spec,
            github: None,
            rejected: false,
            policy_reasons: Vec::new(),
            traceparent: None,
        };
        let enqueued = self.admit(job, None).await?;
        tracing::info!(job_id = enqueued.job.id, org_id, "queued direct job");
        Ok(enqueued.job.without_secrets())
    }

    /// A page of the jobs the caller may see (an org's own; an admin's any org).
    pub async fn jobs(&self, who: &Principal, mut filter: JobFilter) -> Result<JobPage> {
        refuse_agents(who, "the job list")?;
        if !(1..=MAX_PAGE_SIZE).contains(&filter.limit) {
            return Err(Error::invalid(format!(
                "limit must be between 1 and {MAX_PAGE_SIZE}, got {}",
                filter.limit
            )));
        }
        if filter.metadata_value.is_some() && filter.metadata_key.is_none() {
            return Err(Error::invalid("metadata_value needs metadata_key"));
        }
        filter.org_id = readable_org(who, filter.org_id)?;
        let mut page = self.store.list_jobs(&filter).await?;
        page.jobs = page.jobs.into_iter().map(Job::without_secrets).collect();
        Ok(page)
    }

    /// One job, if the caller may see it: an org its own jobs, an agent the jobs it
    /// holds (or held) the lease of, an admin every job. Anything else is "not
    /// found", so nobody learns which ids exist.
    pub async fn job(&self, who: &Principal, id: JobId) -> Result<Job> {
        let visible = |job: &Job| match who {
            Principal::Admin { .. } => true,
            Principal::Org { org_id, .. } => job.org_id == *org_id,
            Principal::Agent { agent_id } => job.agent_id.as_deref() == Some(agent_id.as_str()),
        };
        match self.store.get_job(id).await? {
            Some(job) if visible(&job) => Ok(job.without_secrets()),
            _ => Err(Error::not_found(format!("job {id}"))),
        }
    }

    /// Leases the job the scheduler picks for this agent, waiting up to
    /// `options.wait` for one; the lease carries the job's cache and log tokens.
    pub async fn lease(&self, who: &Principal, options: &LeaseOptions) -> Result<Option<Lease>> {
        let agent_id = lease_holder(who)?.to_string();
        if options.wait > MAX_LEASE_WAIT {
            return Err(Error::invalid(format!(
                "wait_seconds must be at most {}, got {}",
                MAX_LEASE_WAIT.as_secs(),
                options.wait.as_secs()
            )));
        }
        if let Some(labels) = &options.labels {
            if labels.len() > MAX_AGENT_LABELS
                || labels
                    .iter()
                    .any(|l| l.is_empty() || l.len() > MAX_LABEL_LEN)
            {
                return Err(Error::invalid(format!(
                    "labels: at most {MAX_AGENT_LABELS}, each 1 to {MAX_LABEL_LEN} bytes"
                )));
            }
        }
        let request = LeaseRequest {
            agent_id,
            org_id: options.org_id,
            labels: options.labels.clone(),
            ttl: self.config.lease_ttl,
        };
        let Some(mut lease) = super::lease_with_wait(self, &request, options.wait).await? else {
            return Ok(None);
        };
        lease.cache_token = self.mint_cache_token(&lease.job).await;
        lease.ingest_token = self.mint_ingest_token(&lease);
        self.metrics.leases_granted.inc();
        if lease.job.attempt == 1 {
            let waited = self.now() - lease.job.created_at;
            self.metrics
                .queue_wait
                .observe(waited.as_seconds_f64().max(0.0));
        }
        // The lease in the job's trace; the agent's run of the job continues it.
        let span = tracing::info_span!(
            "job.lease",
            job_id = lease.job.id,
            agent = %request.agent_id,
            fencing_token = lease.fencing_token,
            attempt = lease.job.attempt,
        );
        crate::telemetry::set_parent(&span, lease.job.traceparent.as_deref());
        lease.traceparent = crate::telemetry::traceparent_of(&span);
        span.in_scope(|| {
            tracing::info!(job_id = lease.job.id, agent = %request.agent_id, fencing_token = lease.fencing_token, "lease granted");
        });
        Ok(Some(lease))
    }

    /// Extends the caller's lease of `id`.
    pub async fn heartbeat(
        &self,
        who: &Principal,
        id: JobId,
        fencing_token: i64,
    ) -> Result<LeaseRenewal> {
        let agent = lease_holder(who)?;
        self.store
            .heartbeat(id, agent, fencing_token, self.config.lease_ttl, self.now())
            .await
    }

    /// Finishes the caller's leased job `id` (idempotent for its holder).
    pub async fn complete(
        &self,
        who: &Principal,
        id: JobId,
        completion: &Completion,
    ) -> Result<Job> {
        let agent = lease_holder(who)?;
        if completion
            .reason
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REASON_BYTES)
        {
            return Err(Error::invalid(format!(
                "reason must be at most {MAX_REASON_BYTES} bytes"
            )));
        }
        if let Some(result) = &completion.result {
            let size = serde_json::to_vec(result).map_or(usize::MAX, |json| json.len());
            if size > MAX_WORKFLOW_RESULT_BYTES {
                return Err(Error::invalid(format!(
                    "result: {size} bytes of JSON; at most {MAX_WORKFLOW_RESULT_BYTES} are allowed"
                )));
            }
        }
        let job = self
            .store
            .complete(id, agent, completion, self.now())
            .await?;
        self.metrics
            .jobs_completed
            .with_label_values(&[job.status.as_str()])
            .inc();
        if job.github.is_some() {
            self.remove_runner(&job, completion.fencing_token);
        }
        Ok(job.without_secrets())
    }

    /// Cancels a queued or running job of the caller's org (an admin's: any). A
    /// running job's lease ends at once: its agent's next heartbeat is refused and
    /// it stops the VM. Cancelling a cancelled job again is fine; a job that already
    /// ended otherwise is a conflict.
    pub async fn cancel(&self, who: &Principal, id: JobId) -> Result<Job> {
        refuse_agents(who, "jobs to cancel")?;
        let job = self.job(who, id).await?;
        let reason = match who {
            Principal::Admin { sub } => format!("cancelled by {sub}"),
            _ => "cancelled by its org".to_string(),
        };
        match self.store.cancel(id, &reason, self.now()).await? {
            Some(cancelled) => {
                self.metrics
                    .jobs_completed
                    .with_label_values(&[JobStatus::Cancelled.as_str()])
                    .inc();
                if job.status == JobStatus::Leased && cancelled.github.is_some() {
                    self.remove_runner(&cancelled, job.fencing_token);
                }
                tracing::info!(job_id = id, %reason, "job cancelled");
                Ok(cancelled.without_secrets())
            }
            None => {
                let current = self.job(who, id).await?;
                if current.status == JobStatus::Cancelled {
                    Ok(current)
                } else {
                    Err(Error::Conflict(format!(
                        "job {id} has already ended ({})",
                        current.status
                    )))
                }
            }
        }
    }

    /// Job `id`, if `who` holds its current lease `fencing_token` (a conflict
    /// otherwise; only the lease's holder learns anything about the lease).
    pub(super) async fn held_job(
        &self,
        who: &Principal,
        id: JobId,
        fencing_token: i64,
    ) -> Result<Job> {
        let agent = lease_holder(who)?;
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("job {id}")))?;
        if job.agent_id.as_deref() != Some(agent) {
            return Err(Error::Conflict(format!(
                "job {id} is not leased to agent {agent:?}"
            )));
        }
        if job.status != JobStatus::Leased || job.fencing_token != fencing_token {
            return Err(Error::Conflict(format!(
                "job {id} is not leased with fencing token {fencing_token} (status {})",
                job.status.as_str()
            )));
        }
        Ok(job)
    }

    /// The just-in-time runner config of a GitHub job, for the agent holding its
    /// current lease `fencing_token` only.
    pub async fn runner_config(
        &self,
        who: &Principal,
        id: JobId,
        fencing_token: i64,
    ) -> Result<RunnerConfig> {
        let job = self.held_job(who, id, fencing_token).await?;
        if job.github.is_none() {
            return Err(Error::invalid(format!(
                "job {id} did not come from GitHub: it runs its steps, not a runner"
            )));
        }
        let config = self.jit_config(&job).await?;
        tracing::info!(job_id = id, runner = %config.runner_name, runner_id = config.runner_id, "runner config handed out");
        Ok(RunnerConfig {
            runner_name: config.runner_name,
            runner_id: config.runner_id,
            encoded_jit_config: config.encoded_jit_config,
        })
    }

    /// How many jobs carry each value of metadata `key`, most frequent first (of
    /// the caller's org; an admin's: all, or `org_id`).
    pub async fn metadata_values(
        &self,
        who: &Principal,
        key: &str,
        org_id: Option<OrgId>,
        limit: u32,
    ) -> Result<Vec<MetadataCount>> {
        refuse_agents(who, "analytics")?;
        let org_id = readable_org(who, org_id)?;
        if !(1..=10_000).contains(&limit) {
            return Err(Error::invalid(format!(
                "limit must be between 1 and 10000, got {limit}"
            )));
        }
        let values = self.store.metadata_values(org_id, key, limit).await?;
        Ok(values
            .into_iter()
            .map(|(value, jobs)| MetadataCount { value, jobs })
            .collect())
    }

    /// The admission checks for a job of `org_id`: the org rate limit, and the
    /// webhook delivery when there is one. The store applies them in the job's
    /// transaction.
    fn admission(&self, org_id: OrgId, delivery: Option<Delivery>) -> Admission {
        Admission {
            delivery,
            rate_limit: Some(RateLimit {
                key: format!("org-jobs:{org_id}"),
                limit: self.config.org_job_rate_limit,
                interval: self.config.org_rate_interval,
            }),
        }
    }

    /// Queues a job through admission — the policy, then the rate limit and replay
    /// checks — counting what is refused. A job the policy denies is recorded as
    /// `rejected` (with its reasons) and does not count against the rate limit.
    pub(crate) async fn admit(
        &self,
        mut job: NewJob,
        delivery: Option<Delivery>,
    ) -> Result<Enqueued> {
        // The root of the job's trace (under the request that brought it): the
        // job keeps its context for the lease, the agent and the log lines.
        let span = tracing::info_span!(
            "job.admit",
            org_id = job.org_id,
            repo = %job.repo.full_name,
            source = job.source.as_str(),
            job_id = tracing::field::Empty,
        );
        job.traceparent = crate::telemetry::traceparent_of(&span);
        let result = self
            .admit_in_span(job, delivery)
            .instrument(span.clone())
            .await;
        if let Ok(enqueued) = &result {
            span.record("job_id", enqueued.job.id);
        }
        result
    }

    async fn admit_in_span(&self, mut job: NewJob, delivery: Option<Delivery>) -> Result<Enqueued> {
        let decision = self.policy().evaluate(&job.policy_facts());
        let denials = if decision.dry_run {
            &self.metrics.policy_dry_run_denials
        } else {
            &self.metrics.policy_denials
        };
        for reason in &decision.reasons {
            denials.with_label_values(&[&reason.rule]).inc();
        }
        if decision.would_deny() {
            tracing::info!(
                org_id = job.org_id,
                repo = %job.repo.full_name,
                dry_run = decision.dry_run,
                rules = ?decision.reasons.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>(),
                "admission policy matched"
            );
        }
        job.rejected = !decision.allowed;
        job.policy_reasons = decision.reasons;
        let mut admission = self.admission(job.org_id, delivery);
        if job.rejected {
            admission.rate_limit = None;
        }
        match self.store.enqueue(job, &admission, self.now()).await {
            Ok(enqueued) => {
                if enqueued.created {
                    if let Some(sink) = &self.metadata_sink {
                        sink.forward(&enqueued.job);
                    }
                }
                if enqueued.created && enqueued.job.status == JobStatus::Queued {
                    self.scheduler.queued(enqueued.job.org_id);
                    self.metrics
                        .jobs_enqueued
                        .with_label_values(&[enqueued.job.source.as_str()])
                        .inc();
                    self.job_available.notify_waiters();
                }
                Ok(enqueued)
            }
            Err(error) => {
                if let Error::RateLimited { org_id, .. } = &error {
                    self.metrics.org_rate_limits_hit.inc();
                    // For the per-org figure of the analytics; the refusal stands
                    // whether or not it could be counted.
                    if let Err(e) = self.store.record_rate_limit_hit(*org_id, self.now()).await {
                        tracing::warn!(org_id, error = %e, "could not count a rate-limit hit");
                    }
                }
                Err(error)
            }
        }
    }

    /// The API as `who` sees it, in process: [`ControlPlaneApi`] without HTTP.
    pub fn session(self: &Arc<Self>, who: Principal) -> Session {
        Session {
            control_plane: self.clone(),
            principal: who,
        }
    }

    /// The in-process [`JobSource`] of agent `agent_id`: a host agent in this
    /// process leases, heartbeats and completes through the API directly.
    pub fn agent(self: &Arc<Self>, agent_id: impl Into<String>) -> LocalAgent {
        LocalAgent {
            control_plane: self.clone(),
            principal: Principal::Agent {
                agent_id: agent_id.into(),
            },
        }
    }
}

/// An agent of an in-process control plane: [`JobSource`] over the API, no HTTP.
#[derive(Clone)]
pub struct LocalAgent {
    control_plane: AppState,
    principal: Principal,
}

#[async_trait]
impl JobSource for LocalAgent {
    async fn lease(&self, wait: Duration, labels: Option<&[String]>) -> Result<Option<Lease>> {
        let options = LeaseOptions {
            wait,
            org_id: None,
            labels: labels.map(<[String]>::to_vec),
        };
        self.control_plane.lease(&self.principal, &options).await
    }

    async fn heartbeat(&self, job_id: JobId, fencing_token: i64) -> Result<LeaseRenewal> {
        self.control_plane
            .heartbeat(&self.principal, job_id, fencing_token)
            .await
    }

    async fn complete(&self, job_id: JobId, completion: &Completion) -> Result<Job> {
        self.control_plane
            .complete(&self.principal, job_id, completion)
            .await
    }

    async fn runner_config(&self, job_id: JobId, fencing_token: i64) -> Result<RunnerConfig> {
        self.control_plane
            .runner_config(&self.principal, job_id, fencing_token)
            .await
    }

    async fn workspace(&self, job_id: JobId, fencing_token: i64) -> Result<Vec<u8>> {
        self.control_plane
            .job_workspace(&self.principal, job_id, fencing_token)
            .await
    }
}

/// One caller of an in-process control plane: [`ControlPlaneApi`] over the API's
/// methods with a fixed [`Principal`].
#[derive(Clone)]
pub struct Session {
    control_plane: AppState,
    principal: Principal,
}

impl Session {
    /// The principal every call of this session acts as.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

#[async_trait]
impl ControlPlaneApi for Session {
    async fn upsert_org(&self, id: OrgId, name: &str) -> Result<Org> {
        self.control_plane
            .upsert_org(&self.principal, id, name)
            .await
    }

    async fn orgs(&self) -> Result<Vec<Org>> {
        self.control_plane.orgs(&self.principal).await
    }

    async fn submit(&self, request: JobRequest) -> Result<Job> {
        self.control_plane.submit(&self.principal, request).await
    }

    async fn put_workspace(
        &self,
        org_id: Option<OrgId>,
        digest: &str,
        archive: Vec<u8>,
    ) -> Result<super::WorkspaceReceipt> {
        self.control_plane
            .put_workspace(&self.principal, org_id, digest, &archive)
            .await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<JobPage> {
        self.control_plane.jobs(&self.principal, filter).await
    }

    async fn job(&self, id: JobId) -> Result<Job> {
        self.control_plane.job(&self.principal, id).await
    }

    async fn cancel(&self, id: JobId) -> Result<Job> {
        self.control_plane.cancel(&self.principal, id).await
    }

    async fn metadata_values(
        &self,
        key: &str,
        org_id: Option<OrgId>,
        limit: u32,
    ) -> Result<Vec<MetadataCount>> {
        self.control_plane
            .metadata_values(&self.principal, key, org_id, limit)
            .await
    }

    async fn observability_orgs(&self, query: &OrgsQuery) -> Result<OrgsReport> {
        self.control_plane
            .observability_orgs(&self.principal, query)
            .await
    }

    async fn metadata_presets(&self) -> Result<MetadataPresets> {
        self.control_plane.metadata_presets(&self.principal).await
    }

    async fn metadata_histogram(&self, query: &HistogramQuery) -> Result<MetadataHistogram> {
        self.control_plane
            .metadata_histogram(&self.principal, query)
            .await
    }

    async fn metadata_trend(&self, query: &TrendQuery) -> Result<MetadataTrend> {
        self.control_plane
            .metadata_trend(&self.principal, query)
            .await
    }

    async fn job_summary(&self, query: &SummaryQuery) -> Result<JobSummary> {
        self.control_plane.job_summary(&self.principal, query).await
    }
}
