//! The analytics routes: parse the query, call the API
//! ([`crate::control_plane::analytics`]), answer its report.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use time::OffsetDateTime;

use super::jobs::optional_number;
use super::{Auth, QueryParams};
use crate::analytics::parse_time_bound;
use crate::control_plane::{AppState, HistogramQuery, OrgsQuery, SummaryQuery, TrendQuery};
use crate::error::Result;

fn time_bound(
    name: &str,
    raw: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>> {
    raw.map(|raw| parse_time_bound(name, raw, now)).transpose()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct OrgsParams {
    org_id: Option<String>,
    metadata_key: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /api/observability/orgs`.
pub(in crate::control_plane) async fn orgs(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(params): QueryParams<OrgsParams>,
) -> Result<Response> {
    let now = OffsetDateTime::now_utc();
    let query = OrgsQuery {
        org_id: optional_number("org_id", params.org_id.as_deref())?,
        metadata_key: params.metadata_key,
        since: time_bound("since", params.since.as_deref(), now)?,
        until: time_bound("until", params.until.as_deref(), now)?,
    };
    Ok(Json(state.observability_orgs(&principal, &query).await?).into_response())
}

/// `GET /api/jobs/metadata/presets`.
pub(in crate::control_plane) async fn presets(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Response> {
    Ok(Json(state.metadata_presets(&principal).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct HistogramParams {
    key: String,
    org_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /api/jobs/metadata/histogram?key=K`.
pub(in crate::control_plane) async fn histogram(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(params): QueryParams<HistogramParams>,
) -> Result<Response> {
    let now = OffsetDateTime::now_utc();
    let query = HistogramQuery {
        key: params.key,
        org_id: optional_number("org_id", params.org_id.as_deref())?,
        since: time_bound("since", params.since.as_deref(), now)?,
        until: time_bound("until", params.until.as_deref(), now)?,
    };
    Ok(Json(state.metadata_histogram(&principal, &query).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct TrendParams {
    key: String,
    org_id: Option<String>,
    bucket_hours: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /api/jobs/metadata/trend?key=K&bucket_hours=H`.
pub(in crate::control_plane) async fn trend(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(params): QueryParams<TrendParams>,
) -> Result<Response> {
    let now = OffsetDateTime::now_utc();
    let query = TrendQuery {
        key: params.key,
        org_id: optional_number("org_id", params.org_id.as_deref())?,
        bucket_hours: optional_number("bucket_hours", params.bucket_hours.as_deref())?,
        since: time_bound("since", params.since.as_deref(), now)?,
        until: time_bound("until", params.until.as_deref(), now)?,
    };
    Ok(Json(state.metadata_trend(&principal, &query).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::control_plane) struct SummaryParams {
    org_id: Option<String>,
    metadata_key: Option<String>,
    metadata_value: Option<String>,
}

/// `GET /api/jobs/summary`.
pub(in crate::control_plane) async fn summary(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(params): QueryParams<SummaryParams>,
) -> Result<Response> {
    let query = SummaryQuery {
        org_id: optional_number("org_id", params.org_id.as_deref())?,
        metadata_key: params.metadata_key,
        metadata_value: params.metadata_value,
    };
    Ok(Json(state.job_summary(&principal, &query).await?).into_response())
}
