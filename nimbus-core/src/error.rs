//! The one error type of `nimbus-core`, with a [`ErrorKind`] that the HTTP edge
//! (and later the CLI and the Python bindings) translate exactly once.

use std::time::Duration;

/// What went wrong, independent of where: the edge maps each kind to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or input is malformed or out of range (400).
    InvalidInput,
    /// No credentials, or credentials that do not verify (401).
    Unauthenticated,
    /// Valid credentials that may not do this (403).
    Forbidden,
    /// The thing does not exist, or the caller may not know it exists (404).
    NotFound,
    /// A stale fencing token, a replayed delivery, or another state conflict (409).
    Conflict,
    /// The request body is larger than allowed (413).
    PayloadTooLarge,
    /// The request body has a media type we do not accept (415).
    UnsupportedMediaType,
    /// Too many requests for this org in the current window (429).
    RateLimited,
    /// A dependency (database) is not available or not configured (503).
    Unavailable,
    /// A bug or an unexpected failure (500).
    Internal,
}

impl ErrorKind {
    /// Stable machine-readable code used in JSON error bodies.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {variable}: {message}")]
    Config { variable: String, message: String },

    #[error("{0}")]
    InvalidInput(String),

    #[error("{0}")]
    Unauthenticated(String),

    #[error("{0}")]
    Forbidden(String),

    #[error("{what} not found")]
    NotFound { what: String },

    #[error("{0}")]
    Conflict(String),

    #[error("replayed webhook delivery {delivery_id}")]
    ReplayedDelivery { delivery_id: String },

    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },

    #[error("{0}")]
    UnsupportedMediaType(String),

    #[error("org {org_id} is over its job rate limit; retry after {} s", retry_after.as_secs())]
    RateLimited { org_id: i64, retry_after: Duration },

    #[error("{0}")]
    Unavailable(String),

    #[error("database: {0}")]
    Database(#[from] sqlx::Error),

    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),

    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } | Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::Forbidden(_) => ErrorKind::Forbidden,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict(_) | Error::ReplayedDelivery { .. } => ErrorKind::Conflict,
            Error::PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            Error::UnsupportedMediaType(_) => ErrorKind::UnsupportedMediaType,
            Error::RateLimited { .. } => ErrorKind::RateLimited,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Database(e) => match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                    ErrorKind::Unavailable
                }
                _ => ErrorKind::Internal,
            },
            Error::Http(_) => ErrorKind::Unavailable,
            Error::Migration(_) | Error::Io { .. } | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
