//! The crate's error type, shared by the sinks and the pipeline service.

/// Everything the logging pipeline can fail with; mapped to HTTP once, in
/// `pipeline::api`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A batch with a bad record is refused whole; `index` is the record's position.
    #[error("record {index}: {reason}")]
    InvalidRecord {
        /// 0-based position of the bad record in the request.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A request that is wrong as a whole (not JSON, too many records, a bad query
    /// parameter); HTTP 400.
    #[error("{0}")]
    InvalidInput(String),
    /// No token, or one that is not valid (bad signature, expired); HTTP 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token that may not do this (another job's lines, an admin-only
    /// route); HTTP 403.
    #[error("{0}")]
    Forbidden(String),
    /// The caller holds as many of something (live follows) as it may.
    #[error("{0}")]
    TooMany(String),
    /// Too much is buffered already: the caller retries after `retry_after_secs`.
    #[error("the pipeline is saturated; retry in {retry_after_secs} s")]
    Busy {
        /// Seconds to wait before retrying (sent as `Retry-After`).
        retry_after_secs: u64,
    },
    /// The store (SQLite, ClickHouse, or the pipeline behind an HTTP sink) failed or
    /// could not be reached; worth a retry. HTTP 503.
    #[error("log sink: {0}")]
    Sink(String),
    /// A setting is missing or invalid (found at start-up).
    #[error("configuration: {variable}: {message}")]
    Config {
        /// The environment variable at fault, such as `NIMBUS_LOGS_BACKEND`.
        variable: String,
        /// What is wrong with its value.
        message: String,
    },
    /// An I/O operation failed (binding the listen address, serving, reading a file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, such as `binding 0.0.0.0:8002`.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether sending the same thing again can never succeed: a bad batch, a
    /// credential that is not accepted. Busy and unavailable sinks are worth a retry.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidRecord { .. }
                | Error::InvalidInput(_)
                | Error::Unauthenticated(_)
                | Error::Forbidden(_)
        )
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Sink(format!("sqlite: {error}"))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Error::Sink(format!("sqlite schema: {error}"))
    }
}

impl From<clickhouse::error::Error> for Error {
    fn from(error: clickhouse::error::Error) -> Self {
        Error::Sink(format!("clickhouse: {error}"))
    }
}

impl From<nimbus_core::Error> for Error {
    fn from(error: nimbus_core::Error) -> Self {
        match error {
            nimbus_core::Error::Config { variable, message } => Error::Config { variable, message },
            nimbus_core::Error::Io { context, source } => Error::Io { context, source },
            nimbus_core::Error::Database(error) => error.into(),
            nimbus_core::Error::Migration(error) => error.into(),
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

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
