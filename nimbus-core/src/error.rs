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

/// The error of every fallible call in `nimbus-core`; [`Error::kind`] says how to report it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed.
    #[error("configuration: {variable}: {message}")]
    Config {
        /// The variable (or file) at fault, e.g. `NIMBUS_MODE`.
        variable: String,
        /// What is wrong with it.
        message: String,
    },

    /// The request or input is malformed or out of range.
    #[error("{0}")]
    InvalidInput(String),

    /// No credentials, or credentials that do not verify.
    #[error("{0}")]
    Unauthenticated(String),

    /// Valid credentials that may not do this.
    #[error("{0}")]
    Forbidden(String),

    /// The thing does not exist, or the caller may not know it exists.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `job 42`.
        what: String,
    },

    /// A stale fencing token, a job in the wrong state, or another conflict.
    #[error("{0}")]
    Conflict(String),

    /// A webhook delivery id that was already processed.
    #[error("replayed webhook delivery {delivery_id}")]
    ReplayedDelivery {
        /// GitHub's `X-GitHub-Delivery` id.
        delivery_id: String,
    },

    /// A request body over the size limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The largest body accepted, in bytes.
        limit: usize,
    },

    /// A request body of a media type we do not accept.
    #[error("{0}")]
    UnsupportedMediaType(String),

    /// The org is over its job rate limit.
    #[error("org {org_id} is over its job rate limit; retry after {} s", retry_after.as_secs())]
    RateLimited {
        /// The org over its limit (0 when a client cannot tell).
        org_id: i64,
        /// How long until the current window ends (`Retry-After`).
        retry_after: Duration,
    },

    /// A dependency is down or not configured.
    #[error("{0}")]
    Unavailable(String),

    /// A database call failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying the schema migrations failed.
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),

    /// An outgoing HTTP call failed.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),

    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `creating ./.nimbus`.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A bug or an unexpected failure.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The kind the edges map to a status code; a database pool or I/O error counts
    /// as [`ErrorKind::Unavailable`].
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

    /// An [`Error::InvalidInput`] with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// An [`Error::NotFound`] for `what` (e.g. `job 42`).
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// An [`Error::Io`] saying what was being done (`context`).
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type, with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
