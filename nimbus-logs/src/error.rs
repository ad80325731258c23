/// Everything the logging pipeline can fail with; mapped to HTTP once, in
/// `pipeline::api`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A batch with a bad record is refused whole; `index` is the record's position.
    #[error("record {index}: {reason}")]
    InvalidRecord { index: usize, reason: String },
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    /// The caller holds as many of something (live follows) as it may.
    #[error("{0}")]
    TooMany(String),
    /// Too much is buffered already: the caller retries after `retry_after_secs`.
    #[error("the pipeline is saturated; retry in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    #[error("log sink: {0}")]
    Sink(String),
    #[error("configuration: {variable}: {message}")]
    Config { variable: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
