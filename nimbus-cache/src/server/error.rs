//! The one place cache errors become HTTP answers: `{"error", "code", "msg"}`.
//! `msg` repeats `error` because Twirp clients (the v2 protocol) read that field.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::Error;

/// The disk (or the user's quota) is full: the client may retry later, once
/// eviction or an operator has made room; nothing of the request was kept.
fn out_of_space(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded
    )
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Error::Registry(oci) => (
                StatusCode::from_u16(oci.code.status()).unwrap_or(StatusCode::BAD_REQUEST),
                "registry",
            ),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::InvalidInput(_) | Error::Truncated(_) => {
                (StatusCode::BAD_REQUEST, "invalid_input")
            }
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many"),
            Error::Backend(_) | Error::Index(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Io { source, .. } if out_of_space(source) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            Error::Config { .. } | Error::Io { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "cache request failed");
        }
        let message = self.to_string();
        (
            status,
            Json(json!({"error": message, "code": code, "msg": message})),
        )
            .into_response()
    }
}
