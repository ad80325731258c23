use std::path::PathBuf;

/// Everything that can go wrong booting, running or tearing down a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("driver {driver} is not available here: {reason}")]
    Unavailable {
        driver: &'static str,
        reason: String,
    },
    #[error("asset {path} failed attestation: {reason}")]
    Attestation { path: PathBuf, reason: String },
    #[error("guest assets: {0}")]
    Assets(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("boot failed: {message}{}", console_hint(.console))]
    Boot {
        message: String,
        /// Last lines of the VM's console, for the operator.
        console: Vec<String>,
    },
    #[error("guest protocol: {0}")]
    Protocol(String),
    #[error("firecracker API {method} {path} answered {status}: {message}")]
    FirecrackerApi {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("the VM was used out of order: {0}")]
    State(&'static str),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn console_hint(console: &[String]) -> String {
    if console.is_empty() {
        String::new()
    } else {
        format!("\n--- last console lines ---\n{}", console.join("\n"))
    }
}

impl Error {
    /// Wraps an io::Error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

impl From<crate::protocol::ProtocolError> for Error {
    fn from(error: crate::protocol::ProtocolError) -> Self {
        Error::Protocol(error.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
