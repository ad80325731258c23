//! The crate's error type: every failure of the cache, the registry and the
//! proxy, each variant mapped to one HTTP status in `server::error`.

/// Everything the cache can fail with; mapped to HTTP once, in `server::error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Missing, or outside the caller's scope (never "forbidden": that would confirm
    /// that another org's entry exists).
    #[error("{0} not found")]
    NotFound(String),
    /// A malformed request: bad key, header, body or query (400). Also what
    /// an unclassified `nimbus_core` error becomes.
    #[error("{0}")]
    InvalidInput(String),
    /// Another upload holds the key, or the entry already exists.
    #[error("{0}")]
    Conflict(String),
    /// No credential, or one that does not verify or has expired (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential that does not allow this operation (403).
    #[error("{0}")]
    Forbidden(String),
    /// A body over a budget or limit.
    #[error("{0}")]
    TooLarge(String),
    /// A count limit reached (unfinished uploads of an org).
    #[error("{0}")]
    TooMany(String),
    /// The client went away mid-body; the partial data was discarded.
    #[error("upload interrupted: {0}")]
    Truncated(String),
    /// The blob store (disk or S3) failed, or something else this side depends
    /// on: the registry's upstream, or the proxy as [`crate::client`] sees it (503).
    #[error("cache backend: {0}")]
    Backend(String),
    /// The index database (SQLite or PostgreSQL) failed (503).
    #[error("cache index: {0}")]
    Index(String),
    /// An environment variable is missing or invalid (500 if it ever reaches a
    /// request; normally the service refuses to start).
    #[error("configuration: {variable}: {message}")]
    Config {
        /// The variable's name, e.g. `NIMBUS_CACHE_BACKEND`.
        variable: String,
        /// What is wrong with it.
        message: String,
    },
    /// A registry failure with its OCI error code (rendered by `registry::http`).
    #[error("{0}")]
    Registry(#[from] crate::registry::OciError),
    /// A local I/O failure (500), with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `binding 0.0.0.0:8001`.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Index(error.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io {
            context: "reading a body".into(),
            source,
        }
    }
}

impl From<nimbus_core::Error> for Error {
    fn from(error: nimbus_core::Error) -> Self {
        match error {
            nimbus_core::Error::Config { variable, message } => Error::Config { variable, message },
            nimbus_core::Error::Io { context, source } => Error::Io { context, source },
            error @ (nimbus_core::Error::Database(_) | nimbus_core::Error::Migration(_)) => {
                Error::Index(error.to_string())
            }
            other => match other.kind() {
                nimbus_core::ErrorKind::Unauthenticated => {
                    Error::Unauthenticated(other.to_string())
                }
                nimbus_core::ErrorKind::Forbidden => Error::Forbidden(other.to_string()),
                _ => Error::InvalidInput(other.to_string()),
            },
        }
    }
}

/// `std::result::Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
