//! Job API: submit, list, get, lease (long-poll), heartbeat, complete; orgs; analytics.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::auth::Principal;
use crate::control_plane::http::{parse_job_id, Auth, JsonBody, QueryParams};
use crate::control_plane::{AppState, ControlPlane};
use crate::domain::{
    metadata_from_labels, validate_labels, validate_repo_name, Completion, Job, JobSource, JobSpec,
    JobStatus, NewJob, OrgId, Repo, Step, DEFAULT_TIMEOUT_MINUTES, MAX_LABEL_LEN,
};
use crate::error::{Error, Result};
use crate::store::{
    Admission, Delivery, Enqueued, JobFilter, LeaseRequest, RateLimit, MAX_PAGE_SIZE,
};

/// Longest a lease request may wait for a job.
pub const MAX_LEASE_WAIT_SECONDS: u64 = 60;

fn require_admin(principal: &Principal) -> Result<()> {
    match principal {
        Principal::Admin { .. } => Ok(()),
        other => Err(Error::Forbidden(format!(
            "this needs an admin token, not {}",
            other.role()
        ))),
    }
}

fn require_agent(principal: &Principal) -> Result<String> {
    match principal {
        Principal::Agent { agent_id } => Ok(agent_id.clone()),
        Principal::Admin { sub } => Ok(sub.clone()),
        Principal::Org { .. } => Err(Error::Forbidden(
            "org tokens cannot lease or report on jobs; use an agent token".into(),
        )),
    }
}

/// The job, if the principal may see it: an org its own jobs, an agent the jobs it
/// holds (or held) the lease of, an admin every job. Anything else is "not found",
/// so nobody learns which ids exist.
async fn visible_job(state: &ControlPlane, principal: &Principal, id: i64) -> Result<Job> {
    let job = state.store.get_job(id).await?;
    let visible = |job: &Job| match principal {
        Principal::Admin { .. } => true,
        Principal::Org { org_id, .. } => job.org_id == *org_id,
        Principal::Agent { agent_id } => job.agent_id.as_deref() == Some(agent_id.as_str()),
    };
    match job {
        Some(job) if visible(&job) => Ok(job),
        _ => Err(Error::not_found(format!("job {id}"))),
    }
}

/// Listing jobs, orgs and analytics is for orgs (their own) and admins; an agent
/// gets what it needs with each lease.
fn refuse_agents(principal: &Principal, what: &str) -> Result<()> {
    match principal {
        Principal::Agent { .. } => Err(Error::Forbidden(format!(
            "agent tokens cannot read {what}; an agent gets its job with the lease"
        ))),
        Principal::Admin { .. } | Principal::Org { .. } => Ok(()),
    }
}

/// The admission checks for a job of `org_id`: the org rate limit, and the webhook
/// delivery when there is one. The store applies them in the job's transaction.
pub(super) fn admission(
    state: &ControlPlane,
    org_id: OrgId,
    delivery: Option<Delivery>,
) -> Admission {
    Admission {
        delivery,
        rate_limit: Some(RateLimit {
            key: format!("org-jobs:{org_id}"),
            limit: state.config.org_job_rate_limit,
            interval: state.config.org_rate_interval,
        }),
    }
}

/// Queues a job through admission — the policy, then the rate limit and replay
/// checks — counting what is refused. A job the policy denies is recorded as
/// `rejected` (with its reasons) and does not count against the rate limit.
pub(super) async fn admit(
    state: &ControlPlane,
    mut job: NewJob,
    delivery: Option<Delivery>,
) -> Result<Enqueued> {
    let decision = state.policy().evaluate(&job.policy_facts());
    let denials = if decision.dry_run {
        &state.metrics.policy_dry_run_denials
    } else {
        &state.metrics.policy_denials
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
    let mut admission = admission(state, job.org_id, delivery);
    if job.rejected {
        admission.rate_limit = None;
    }
    match state.store.enqueue(job, &admission, state.now()).await {
        Ok(enqueued) => {
            if enqueued.created {
                if let Some(sink) = &state.metadata_sink {
                    sink.forward(&enqueued.job);
                }
            }
            if enqueued.created && enqueued.job.status == JobStatus::Queued {
                state
                    .metrics
                    .jobs_enqueued
                    .with_label_values(&[enqueued.job.source.as_str()])
                    .inc();
                state.job_available.notify_waiters();
            }
            Ok(enqueued)
        }
        Err(error) => {
            if matches!(error, Error::RateLimited { .. }) {
                state.metrics.org_rate_limits_hit.inc();
            }
            Err(error)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OrgBody {
    id: OrgId,
    name: String,
}

pub(super) async fn upsert_org(
    State(state): State<AppState>,
    Auth(principal): Auth,
    JsonBody(body): JsonBody<OrgBody>,
) -> Result<Response> {
    require_admin(&principal)?;
    if body.id <= 0 {
        return Err(Error::invalid("org id must be a positive integer"));
    }
    let name = body.name.trim();
    if name.is_empty() || name.len() > MAX_LABEL_LEN {
        return Err(Error::invalid(format!(
            "org name must be 1 to {MAX_LABEL_LEN} bytes"
        )));
    }
    let org = state.store.upsert_org(body.id, name, state.now()).await?;
    state.remember_org(org.id);
    Ok((StatusCode::OK, Json(org)).into_response())
}

pub(super) async fn list_orgs(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Response> {
    refuse_agents(&principal, "orgs")?;
    let orgs = state.store.list_orgs().await?;
    let orgs: Vec<_> = match principal.org_scope() {
        Some(own) => orgs.into_iter().filter(|org| org.id == own).collect(),
        None => orgs,
    };
    Ok(Json(serde_json::json!({ "orgs": orgs })).into_response())
}

/// `POST /api/jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitJob {
    /// Required with an admin token; with an org token it defaults to (and must be) the token's org.
    #[serde(default)]
    org_id: Option<OrgId>,
    repo: String,
    #[serde(default)]
    labels: Vec<String>,
    steps: Vec<Step>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    timeout_minutes: Option<u32>,
    /// Extra metadata rows, besides those from `param:`/`meta:` labels.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

pub(super) async fn submit(
    State(state): State<AppState>,
    Auth(principal): Auth,
    JsonBody(body): JsonBody<SubmitJob>,
) -> Result<Response> {
    let org_id = match (&principal, body.org_id) {
        (Principal::Org { org_id, .. }, None) => *org_id,
        (Principal::Org { org_id, .. }, Some(asked)) if asked == *org_id => asked,
        (Principal::Org { .. }, Some(asked)) => {
            return Err(Error::not_found(format!("org {asked}")));
        }
        (Principal::Admin { .. }, Some(asked)) => {
            if !state.org_exists(asked).await? {
                return Err(Error::not_found(format!("org {asked}")));
            }
            asked
        }
        (Principal::Admin { .. }, None) => {
            return Err(Error::invalid("org_id is required with an admin token"));
        }
        (Principal::Agent { .. }, _) => {
            return Err(Error::Forbidden("agent tokens cannot submit jobs".into()));
        }
    };
    validate_repo_name(&body.repo)?;
    validate_labels(&body.labels)?;
    let spec = JobSpec {
        steps: body.steps,
        env: body.env,
        timeout_minutes: body.timeout_minutes.unwrap_or(DEFAULT_TIMEOUT_MINUTES),
    };
    spec.validate_direct()?;
    let mut metadata = metadata_from_labels(&body.labels);
    for (key, value) in body.metadata {
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
            full_name: body.repo,
        },
        source: JobSource::Direct,
        labels: body.labels,
        metadata,
        spec,
        github: None,
        rejected: false,
        policy_reasons: Vec::new(),
    };
    let enqueued = admit(&state, job, None).await?;
    tracing::info!(job_id = enqueued.job.id, org_id, "queued direct job");
    Ok((StatusCode::CREATED, Json(enqueued.job)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    org_id: Option<String>,
    repo: Option<String>,
    label: Option<String>,
    metadata_key: Option<String>,
    metadata_value: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn parse_number<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T> {
    raw.trim().parse().map_err(|_| {
        Error::invalid(format!(
            "query parameter {name}={raw:?} is not a valid number"
        ))
    })
}

pub(super) async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response> {
    refuse_agents(&principal, "the job list")?;
    let limit = match &query.limit {
        None => 50,
        Some(raw) => {
            let limit: u32 = parse_number("limit", raw)?;
            if !(1..=MAX_PAGE_SIZE).contains(&limit) {
                return Err(Error::invalid(format!(
                    "limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}"
                )));
            }
            limit
        }
    };
    let cursor = match &query.cursor {
        None => None,
        Some(raw) => Some(parse_number::<i64>("cursor", raw)?),
    };
    let asked_org = match &query.org_id {
        None => None,
        Some(raw) => Some(parse_number::<OrgId>("org_id", raw)?),
    };
    let org_id = match (principal.org_scope(), asked_org) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(Error::not_found(format!("org {asked}")));
        }
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    if query.metadata_value.is_some() && query.metadata_key.is_none() {
        return Err(Error::invalid("metadata_value needs metadata_key"));
    }
    let filter = JobFilter {
        org_id,
        status: query
            .status
            .as_deref()
            .map(str::parse::<JobStatus>)
            .transpose()?,
        repo: query.repo,
        label: query.label,
        metadata_key: query.metadata_key,
        metadata_value: query.metadata_value,
        limit,
        cursor,
    };
    Ok(Json(state.store.list_jobs(&filter).await?).into_response())
}

pub(super) async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    Ok(Json(visible_job(&state, &principal, id).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LeaseBody {
    #[serde(default)]
    wait_seconds: Option<u64>,
    #[serde(default)]
    org_id: Option<OrgId>,
    /// The agent's labels; jobs needing others are left to other agents.
    #[serde(default)]
    labels: Option<Vec<String>>,
}

pub(super) async fn lease(
    State(state): State<AppState>,
    Auth(principal): Auth,
    body: axum::body::Bytes,
) -> Result<Response> {
    let agent_id = require_agent(&principal)?;
    // The body is optional: an empty one means "no wait, any org".
    let body: LeaseBody = if body.iter().all(u8::is_ascii_whitespace) {
        LeaseBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))?
    };
    let wait = body.wait_seconds.unwrap_or(0);
    if wait > MAX_LEASE_WAIT_SECONDS {
        return Err(Error::invalid(format!(
            "wait_seconds must be at most {MAX_LEASE_WAIT_SECONDS}, got {wait}"
        )));
    }
    if let Some(labels) = &body.labels {
        if labels.len() > 100
            || labels
                .iter()
                .any(|l| l.is_empty() || l.len() > MAX_LABEL_LEN)
        {
            return Err(Error::invalid(format!(
                "labels: at most 100, each 1 to {MAX_LABEL_LEN} bytes"
            )));
        }
    }
    let request = LeaseRequest {
        agent_id,
        org_id: body.org_id,
        labels: body.labels,
        ttl: state.config.lease_ttl,
    };
    match super::lease_with_wait(&state, &request, Duration::from_secs(wait)).await? {
        Some(mut lease) => {
            lease.cache_token = state.mint_cache_token(&lease.job).await;
            lease.ingest_token = state.mint_ingest_token(&lease);
            state.metrics.leases_granted.inc();
            tracing::info!(job_id = lease.job.id, agent = %request.agent_id, fencing_token = lease.fencing_token, "lease granted");
            Ok(Json(lease).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeartbeatBody {
    fencing_token: i64,
}

pub(super) async fn heartbeat(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<HeartbeatBody>,
) -> Result<Response> {
    let agent = require_agent(&principal)?;
    let id = parse_job_id(&id)?;
    let renewal = state
        .store
        .heartbeat(
            id,
            &agent,
            body.fencing_token,
            state.config.lease_ttl,
            state.now(),
        )
        .await?;
    Ok(Json(renewal).into_response())
}

pub(super) async fn complete(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    JsonBody(completion): JsonBody<Completion>,
) -> Result<Response> {
    let agent = require_agent(&principal)?;
    let id = parse_job_id(&id)?;
    if completion.reason.as_ref().is_some_and(|r| r.len() > 4096) {
        return Err(Error::invalid("reason must be at most 4096 bytes"));
    }
    let job = state
        .store
        .complete(id, &agent, &completion, state.now())
        .await?;
    state
        .metrics
        .jobs_completed
        .with_label_values(&[job.status.as_str()])
        .inc();
    if job.github.is_some() {
        state.remove_runner(&job, completion.fencing_token);
    }
    Ok(Json(job).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct RunnerConfigQuery {
    fencing_token: Option<String>,
}

/// `GET /api/jobs/{id}/runner-config?fencing_token=N`: the just-in-time runner
/// config of a GitHub job, for the agent holding its current lease only.
pub(super) async fn runner_config(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<RunnerConfigQuery>,
) -> Result<Response> {
    let agent = require_agent(&principal)?;
    let id = parse_job_id(&id)?;
    let token: i64 = parse_number(
        "fencing_token",
        query
            .fencing_token
            .as_deref()
            .ok_or_else(|| Error::invalid("fencing_token is required"))?,
    )?;
    let job = state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| Error::not_found(format!("job {id}")))?;
    // Only the lease's holder learns anything about the lease.
    if job.agent_id.as_deref() != Some(agent.as_str()) {
        return Err(Error::Conflict(format!(
            "job {id} is not leased to agent {agent:?}"
        )));
    }
    if job.status != JobStatus::Leased || job.fencing_token != token {
        return Err(Error::Conflict(format!(
            "job {id} is not leased with fencing token {token} (status {})",
            job.status.as_str()
        )));
    }
    if job.github.is_none() {
        return Err(Error::invalid(format!(
            "job {id} did not come from GitHub: it runs its steps, not a runner"
        )));
    }
    let config = state.runner_config(&job).await?;
    tracing::info!(job_id = id, runner = %config.runner_name, runner_id = config.runner_id, "runner config handed out");
    Ok(Json(serde_json::json!({
        "runner_name": config.runner_name,
        "runner_id": config.runner_id,
        "encoded_jit_config": config.encoded_jit_config,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetadataQuery {
    key: String,
    org_id: Option<String>,
    limit: Option<String>,
}

/// `GET /api/analytics/metadata?key=K`: how many jobs carry each value of K.
pub(super) async fn metadata_values(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(query): QueryParams<MetadataQuery>,
) -> Result<Response> {
    refuse_agents(&principal, "analytics")?;
    let asked = query
        .org_id
        .as_deref()
        .map(|raw| parse_number::<OrgId>("org_id", raw))
        .transpose()?;
    let org_id = match (principal.org_scope(), asked) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(Error::not_found(format!("org {asked}")))
        }
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    let limit = match &query.limit {
        None => 100,
        Some(raw) => {
            let limit: u32 = parse_number("limit", raw)?;
            if !(1..=10_000).contains(&limit) {
                return Err(Error::invalid(format!(
                    "limit must be between 1 and 10000, got {limit}"
                )));
            }
            limit
        }
    };
    let values = state
        .store
        .metadata_values(org_id, &query.key, limit)
        .await?;
    let values: Vec<_> = values
        .into_iter()
        .map(|(value, jobs)| serde_json::json!({"value": value, "jobs": jobs}))
        .collect();
    Ok(Json(serde_json::json!({"key": query.key, "values": values})).into_response())
}
