//! HTTP handlers, the bearer-token extractor and the one place errors become
//! HTTP answers.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use nimbus_core::auth::{bearer_token, Audience, IngestScope, Principal};
use nimbus_core::domain::LOG_SEQS_PER_LEASE;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::Pipeline;
use crate::decode::{decode_logs, decode_metadata};
use crate::error::Error;
use crate::record::{parse_rfc3339, LogRecord};
use crate::sink::{follow, LogQuery, Order};

/// Most lines one query returns.
const MAX_LIMIT: u32 = 10_000;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Error::InvalidRecord { index, .. } => (
                StatusCode::BAD_REQUEST,
                json!({"code": "invalid_record", "error": self.to_string(), "index": index}),
            ),
            Error::InvalidInput(_) => (
                StatusCode::BAD_REQUEST,
                json!({"code": "invalid_input", "error": self.to_string()}),
            ),
            Error::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                json!({"code": "unauthenticated", "error": self.to_string()}),
            ),
            Error::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                json!({"code": "forbidden", "error": self.to_string()}),
            ),
            Error::TooMany(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"code": "too_many", "error": self.to_string()}),
            ),
            Error::Busy { .. } | Error::Sink(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"code": "unavailable", "error": self.to_string()}),
            ),
            Error::Config { .. } | Error::Io { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"code": "internal", "error": self.to_string()}),
            ),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let retry = match &self {
                Error::Busy { retry_after_secs } => *retry_after_secs,
                _ => 1,
            };
            if let Ok(value) = HeaderValue::from_str(&retry.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// The verified caller (`Authorization: Bearer <JWT>` for this service).
pub struct Auth(pub Principal);

fn bearer(parts: &Parts) -> Result<&str, Error> {
    bearer_token(&parts.headers)
        .ok_or_else(|| Error::Unauthenticated("missing Authorization: Bearer <token>".into()))
}

impl FromRequestParts<Pipeline> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Pipeline) -> Result<Self, Error> {
        let token = bearer(parts)?;
        Ok(Auth(state.keys.verify(token, Audience::LoggingPipeline)?))
    }
}

/// A caller that reads logs: an org (its own) or an admin (all). Agents write
/// lines with their lease's ingest token and read none.
pub struct Reader(pub Option<u64>);

impl FromRequestParts<Pipeline> for Reader {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Pipeline) -> Result<Self, Error> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        match principal {
            Principal::Agent { .. } => Err(Error::Forbidden(
                "agent tokens cannot read logs; use an org or admin token".into(),
            )),
            Principal::Org { org_id, .. } => Ok(Reader(Some(org_id as u64))),
            Principal::Admin { .. } => Ok(Reader(None)),
        }
    }
}

/// Who writes log lines: one lease (its ingest token) or an admin.
pub enum Writer {
    Lease(IngestScope),
    Admin,
}

impl FromRequestParts<Pipeline> for Writer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Pipeline) -> Result<Self, Error> {
        let token = bearer(parts)?;
        let ingest_error = match state.keys.verify_ingest(token) {
            Ok(scope) => return Ok(Writer::Lease(scope)),
            Err(error) => error,
        };
        match state.keys.verify(token, Audience::LoggingPipeline) {
            Ok(Principal::Admin { .. }) => Ok(Writer::Admin),
            Ok(_) => Err(Error::Forbidden(
                "log lines need the ingest token of the job's lease (or an admin token)".into(),
            )),
            // An ingest token that expired says so rather than "malformed".
            Err(_) if ingest_error.to_string().contains("expired") => Err(ingest_error.into()),
            Err(error) => Err(error.into()),
        }
    }
}

impl Writer {
    /// Holds `records` to what the writer may write: a lease's lines are its job's
    /// only, numbered in its range, and stored under the org, repository and agent
    /// its token names (what a line claims about those is replaced).
    fn admit(&self, records: &mut [LogRecord]) -> Result<(), Error> {
        let Writer::Lease(scope) = self else {
            return Ok(());
        };
        for (index, record) in records.iter_mut().enumerate() {
            if record.job_id != scope.job_id as u64 {
                return Err(Error::Forbidden(format!(
                    "record {index}: this ingest token writes job {} only, not job {}",
                    scope.job_id, record.job_id
                )));
            }
            if !scope.owns_seq(record.seq) {
                return Err(Error::InvalidRecord {
                    index,
                    reason: format!(
                        "seq {} is outside this lease's range ({} to {})",
                        record.seq,
                        scope.seq_base + 1,
                        scope.seq_base + (LOG_SEQS_PER_LEASE - 1)
                    ),
                });
            }
            record.org_id = Some(scope.org_id as u64);
            record.repo_id = scope.repo_id.and_then(|id| u64::try_from(id).ok());
            record.agent_id.clone_from(&scope.agent_id);
        }
        Ok(())
    }
}

fn require_admin(principal: &Principal, what: &str) -> Result<(), Error> {
    match principal {
        Principal::Admin { .. } => Ok(()),
        _ => Err(Error::Forbidden(format!("{what} needs an admin token"))),
    }
}

/// `POST /api/logs`: a JSON array or NDJSON of lines; 200 once they are durable.
pub async fn ingest(
    State(state): State<Pipeline>,
    writer: Writer,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Error> {
    // A job's lines continue its trace when the agent sends its context.
    let span = tracing::info_span!("logs.ingest", lines = tracing::field::Empty);
    nimbus_core::telemetry::set_parent(
        &span,
        headers.get("traceparent").and_then(|v| v.to_str().ok()),
    );
    ingest_in_span(state, writer, body, span.clone())
        .instrument(span)
        .await
}

async fn ingest_in_span(
    state: Pipeline,
    writer: Writer,
    body: Bytes,
    span: tracing::Span,
) -> Result<Json<serde_json::Value>, Error> {
    let mut records = match decode_logs(&body) {
        Ok(records) => records,
        Err(error) => {
            state.metrics.batches_rejected.inc();
            return Err(error);
        }
    };
    if let Err(error) = writer.admit(&mut records) {
        state.metrics.batches_rejected.inc();
        return Err(error);
    }
    let count = records.len() as u64;
    span.record("lines", count);
    state.metrics.lines_received.inc_by(count);
    let result = state.ingestor.ingest(records).await;
    state
        .metrics
        .buffered_lines
        .set(state.ingestor.buffered() as i64);
    if matches!(result, Err(Error::Busy { .. })) {
        state.metrics.backpressure.inc();
    }
    let accepted = result?;
    Ok(Json(json!({"accepted": accepted})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsParams {
    job_id: Option<u64>,
    limit: Option<u32>,
    level: Option<String>,
    since: Option<String>,
    after_seq: Option<u64>,
    order: Option<String>,
}

fn parse_since(text: &str) -> Result<i64, Error> {
    text.parse::<i64>()
        .ok()
        .or_else(|| parse_rfc3339(text))
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "since={text:?} is neither RFC 3339 nor epoch milliseconds"
            ))
        })
}

/// `GET /api/logs?job_id=&limit=&level=&since=`: org tokens see their org only.
pub async fn query(
    State(state): State<Pipeline>,
    Reader(org): Reader,
    params: Result<Query<LogsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, Error> {
    let Query(params) =
        params.map_err(|e| Error::InvalidInput(format!("invalid query: {}", e.body_text())))?;
    let level = match params.level {
        Some(level) => Some(
            crate::record::normalise_level(&level)
                .ok_or_else(|| Error::InvalidInput(format!("level={level:?} is not a log level")))?
                .to_string(),
        ),
        None => None,
    };
    let order = match params.order.as_deref() {
        None | Some("newest") => Order::Newest,
        Some("oldest") => Order::Oldest,
        Some(other) => {
            return Err(Error::InvalidInput(format!(
                "order={other:?}: expected newest or oldest"
            )))
        }
    };
    let query = LogQuery {
        job_id: params.job_id,
        org_id: org,
        level,
        since: params.since.as_deref().map(parse_since).transpose()?,
        after_seq: params.after_seq,
        limit: params.limit.unwrap_or(100).clamp(1, MAX_LIMIT),
        order,
    };
    let lines = state.sink.query(&query).await?;
    Ok(Json(json!({"lines": lines})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowParams {
    after_seq: Option<u64>,
}

/// `GET /api/logs/{job_id}/follow`: Server-Sent Events, one `line` event per log
/// line (its `id` is the seq, so a reconnecting client resumes with
/// `Last-Event-ID`), backlog first, then live. Bounded (`FollowLimits`): a caller
/// over its share gets 429; a follow that sees no new line for the idle time, or
/// reaches the longest duration, ends with an `end` event saying why.
pub async fn follow_job(
    State(state): State<Pipeline>,
    Reader(org): Reader,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<FollowParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Error> {
    let job_id: u64 = job_id
        .parse()
        .map_err(|_| Error::InvalidInput(format!("job id {job_id:?} is not a number")))?;
    let Query(params) =
        params.map_err(|e| Error::InvalidInput(format!("invalid query: {}", e.body_text())))?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = resume.or(params.after_seq).unwrap_or(0);
    let permit = state.follows.admit(org)?;
    let limits = state.follows.limits;
    let lines = follow(
        state.sink.clone(),
        job_id,
        org,
        after,
        Duration::from_millis(250),
        state.wake.clone(),
    )
    .map(|item| match item {
        Ok(record) => Event::default()
            .event("line")
            .id(record.seq.to_string())
            .json_data(&record)
            .unwrap_or_else(|_| Event::default().event("error").data("unserialisable line")),
        Err(error) => Event::default().event("error").data(error.to_string()),
    });
    let deadline = tokio::time::Instant::now() + limits.max_duration;
    // The permit lives in the stream's state: dropped when the client goes away.
    let stream = futures::stream::unfold(Some((lines.boxed(), permit)), move |state| async move {
        let (mut lines, permit) = state?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(limits.idle.min(left), lines.next()).await {
            Ok(Some(event)) => Some((Ok(event), Some((lines, permit)))),
            Ok(None) => None,
            Err(_) => {
                let reason = if left <= limits.idle {
                    "max_duration"
                } else {
                    "idle"
                };
                let end = Event::default()
                    .event("end")
                    .data(json!({"reason": reason}).to_string());
                Some((Ok(end), None))
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `POST /api/metadata`: job metadata rows (the control plane forwards them).
pub async fn ingest_metadata(
    State(state): State<Pipeline>,
    Auth(principal): Auth,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Error> {
    require_admin(&principal, "writing job metadata")?;
    let rows = decode_metadata(&body)?;
    let written = state.sink.write_metadata(&rows).await?;
    Ok(Json(json!({"accepted": rows.len(), "written": written})))
}

/// `GET /api/metadata/{job_id}`.
pub async fn job_metadata(
    State(state): State<Pipeline>,
    Reader(org): Reader,
    Path(job_id): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let job_id: u64 = job_id
        .parse()
        .map_err(|_| Error::InvalidInput(format!("job id {job_id:?} is not a number")))?;
    let rows = state.sink.query_metadata(job_id, org).await?;
    Ok(Json(json!({"metadata": rows})))
}

/// `GET /api/stats`: lines and bytes ingested, per level and org, last ingest.
pub async fn stats(
    State(state): State<Pipeline>,
    Reader(org): Reader,
) -> Result<Json<serde_json::Value>, Error> {
    let stats = state.sink.stats(org).await?;
    Ok(Json(json!({
        "backend": state.sink.name(),
        "lines": stats.lines,
        "bytes": stats.bytes,
        "per_level": stats.per_level,
        "per_org": stats.per_org,
        "last_ingest": stats.last_ingest.map(crate::record::format_millis),
        "buffered_lines": state.ingestor.buffered(),
    })))
}
