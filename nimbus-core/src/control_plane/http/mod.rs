//! The HTTP edge (the axum adapter of the API in [`super::api`]): how errors become
//! responses (the one place), extractors that turn bad requests into those errors
//! instead of axum's plain-text rejections, and the route handlers, which only
//! parse, call the API and answer.

pub(super) mod analytics;
pub(super) mod jobs;
pub(super) mod webhooks;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::RETRY_AFTER;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::control_plane::AppState;
use crate::error::{Error, ErrorKind};

/// The HTTP status of an error kind (400 for invalid input, 429 for rate limits, …).
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = status_of(kind);
        let code = match &self {
            Error::ReplayedDelivery { .. } => "replayed_delivery",
            _ => kind.code(),
        };
        // Internal details (SQL, I/O) go to the log, not to the caller.
        let message = if kind == ErrorKind::Internal {
            tracing::error!(error = %self, "internal error");
            "internal error".to_string()
        } else {
            if matches!(kind, ErrorKind::Unavailable) {
                tracing::warn!(error = %self, "dependency unavailable");
            }
            self.to_string()
        };
        let mut response = (
            status,
            Json(serde_json::json!({ "error": message, "code": code })),
        )
            .into_response();
        if let Error::RateLimited { retry_after, .. } = &self {
            let seconds = retry_after.as_secs().max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A JSON body whose rejections are Nimbus errors (400 / 413 / 415 with a JSON body).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Error {
    match rejection.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Error::UnsupportedMediaType("expected Content-Type: application/json".into())
        }
        StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge {
            limit: super::MAX_BODY,
        },
        _ => Error::invalid(format!("invalid JSON body: {}", rejection.body_text())),
    }
}

/// A raw body (a workspace archive) whose rejections are Nimbus errors: over
/// the route's limit is a 413 naming it.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::PayloadTooLarge {
                    limit: super::MAX_WORKSPACE_BYTES,
                })
            }
            Err(rejection) => Err(Error::invalid(format!(
                "unreadable body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Query parameters whose rejections are 400 JSON errors.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> Error {
    Error::invalid(format!("invalid query: {}", rejection.body_text()))
}

/// The verified caller. Org tokens must name an org the control plane knows.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = crate::auth::bearer_token(&parts.headers).ok_or_else(|| {
            Error::Unauthenticated("missing Authorization: Bearer <token>".into())
        })?;
        let principal = state
            .keys
            .verify(token, crate::auth::Audience::ControlPlane)?;
        if let Principal::Org { org_id, .. } = &principal {
            if !state.org_exists(*org_id).await? {
                return Err(Error::Forbidden(format!(
                    "unknown org {org_id} in token; an admin registers orgs with POST /api/orgs"
                )));
            }
        }
        Ok(Auth(principal))
    }
}

/// Parses a job id from a path segment (a bad one is a 400, not a 404).
pub fn parse_job_id(raw: &str) -> Result<i64, Error> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Error::invalid(format!("job id {raw:?} is not a positive integer")))
}
