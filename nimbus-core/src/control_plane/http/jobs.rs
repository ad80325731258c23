//! The job, org and analytics routes: parse the request, call the API
//! ([`crate::control_plane::api`]), answer its result. No rules live here.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{parse_job_id, Auth, JsonBody, QueryParams, RawBody};
use crate::control_plane::{AppState, JobRequest, LeaseOptions};
use crate::domain::{Completion, JobStatus, OrgId};
use crate::error::{Error, Result};
use crate::store::JobFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct OrgBody {
    id: OrgId,
    name: String,
}

pub(in crate::control_plane) async fn upsert_org(
    State(state): State<AppState>,
    Auth(principal): Auth,
    JsonBody(body): JsonBody<OrgBody>,
) -> Result<Response> {
    let org = state.upsert_org(&principal, body.id, &body.name).await?;
    Ok((StatusCode::OK, Json(org)).into_response())
}

pub(in crate::control_plane) async fn list_orgs(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Response> {
    let orgs = state.orgs(&principal).await?;
    Ok(Json(serde_json::json!({ "orgs": orgs })).into_response())
}

pub(in crate::control_plane) async fn submit(
    State(state): State<AppState>,
    Auth(principal): Auth,
    JsonBody(body): JsonBody<JobRequest>,
) -> Result<Response> {
    let job = state.submit(&principal, body).await?;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct ListQuery {
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

pub(super) fn optional_number<T: std::str::FromStr>(
    name: &str,
    raw: Option<&str>,
) -> Result<Option<T>> {
    raw.map(|raw| parse_number(name, raw)).transpose()
}

pub(in crate::control_plane) async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response> {
    let filter = JobFilter {
        org_id: optional_number("org_id", query.org_id.as_deref())?,
        status: query
            .status
            .as_deref()
            .map(str::parse::<JobStatus>)
            .transpose()?,
        repo: query.repo,
        label: query.label,
        metadata_key: query.metadata_key,
        metadata_value: query.metadata_value,
        limit: optional_number("limit", query.limit.as_deref())?.unwrap_or(50),
        cursor: optional_number("cursor", query.cursor.as_deref())?,
    };
    Ok(Json(state.jobs(&principal, filter).await?).into_response())
}

pub(in crate::control_plane) async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    Ok(Json(state.job(&principal, id).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct LeaseBody {
    #[serde(default)]
    wait_seconds: Option<u64>,
    #[serde(default)]
    org_id: Option<OrgId>,
    /// The agent's labels; jobs needing others are left to other agents.
    #[serde(default)]
    labels: Option<Vec<String>>,
}

pub(in crate::control_plane) async fn lease(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawBody(body): RawBody,
) -> Result<Response> {
    // The body is optional: an empty one means "no wait, any org".
    let body: LeaseBody = if body.iter().all(u8::is_ascii_whitespace) {
        LeaseBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))?
    };
    let options = LeaseOptions {
        wait: Duration::from_secs(body.wait_seconds.unwrap_or(0)),
        org_id: body.org_id,
        labels: body.labels,
    };
    match state.lease(&principal, &options).await? {
        Some(lease) => Ok(Json(lease).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct HeartbeatBody {
    fencing_token: i64,
}

pub(in crate::control_plane) async fn heartbeat(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<HeartbeatBody>,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    let renewal = state.heartbeat(&principal, id, body.fencing_token).await?;
    Ok(Json(renewal).into_response())
}

pub(in crate::control_plane) async fn complete(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    JsonBody(completion): JsonBody<Completion>,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    Ok(Json(state.complete(&principal, id, &completion).await?).into_response())
}

pub(in crate::control_plane) async fn cancel(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    Ok(Json(state.cancel(&principal, id).await?).into_response())
}

/// The query of the routes only a lease's holder may call.
#[derive(Debug, Deserialize)]
pub(in crate::control_plane) struct LeaseQuery {
    fencing_token: Option<String>,
}

impl LeaseQuery {
    /// `fencing_token`, which the lease-holder routes require.
    fn fencing_token(&self) -> Result<i64> {
        parse_number(
            "fencing_token",
            self.fencing_token
                .as_deref()
                .ok_or_else(|| Error::invalid("fencing_token is required"))?,
        )
    }
}

/// `GET /api/jobs/{id}/runner-config?fencing_token=N`
pub(in crate::control_plane) async fn runner_config(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<LeaseQuery>,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    let token = query.fencing_token()?;
    Ok(Json(state.runner_config(&principal, id, token).await?).into_response())
}

/// `GET /api/jobs/{id}/workspace?fencing_token=N`: the job's workspace archive
/// (a tar), for the agent holding its lease.
pub(in crate::control_plane) async fn job_workspace(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<LeaseQuery>,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    let token = query.fencing_token()?;
    let archive = state.job_workspace(&principal, id, token).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        archive,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct WorkspaceQuery {
    org_id: Option<String>,
}

/// `PUT /api/workspaces/{sha256}[?org_id=N]` with the archive (a tar) as the body.
pub(in crate::control_plane) async fn put_workspace(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(digest): Path<String>,
    QueryParams(query): QueryParams<WorkspaceQuery>,
    request: axum::extract::Request,
) -> Result<Response> {
    let org_id = optional_number("org_id", query.org_id.as_deref())?;
    // Bodies are read only by the authenticated, and only so many at once.
    let _slot = state.workspace_upload_slot()?;
    let RawBody(body) =
        <RawBody as axum::extract::FromRequest<AppState>>::from_request(request, &state).await?;
    let receipt = state
        .put_workspace(&principal, org_id, &digest, &body)
        .await?;
    Ok((StatusCode::CREATED, Json(receipt)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct MetadataQuery {
    key: String,
    org_id: Option<String>,
    limit: Option<String>,
}

/// `GET /api/analytics/metadata?key=K`: how many jobs carry each value of K.
pub(in crate::control_plane) async fn metadata_values(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(query): QueryParams<MetadataQuery>,
) -> Result<Response> {
    let org_id = optional_number("org_id", query.org_id.as_deref())?;
    let limit = optional_number("limit", query.limit.as_deref())?.unwrap_or(100);
    let values = state
        .metadata_values(&principal, &query.key, org_id, limit)
        .await?;
    let mut answer = BTreeMap::new();
    answer.insert("key", serde_json::json!(query.key));
    answer.insert("values", serde_json::json!(values));
    Ok(Json(answer).into_response())
}
