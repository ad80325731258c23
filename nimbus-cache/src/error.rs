/// Everything the cache can fail with; mapped to HTTP once, in `server::error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Missing, or outside the caller's scope (never "forbidden": that would confirm
    /// that another org's entry exists).
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    /// Another upload holds the key, or the entry already exists.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthenticated(String),
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
    #[error("cache backend: {0}")]
    Backend(String),
    #[error("cache index: {0}")]
    Index(String),
    #[error("configuration: {variable}: {message}")]
    Config { variable: String, message: String },
    /// A registry failure with its OCI error code (rendered by `registry::http`).
    #[error("{0}")]
    Registry(#[from] crate::registry::OciError),
    #[error("{context}: {source}")]
    Io {
        context: String,
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
