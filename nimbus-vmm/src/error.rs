//! The crate's error type and its `Result` alias.

use std::path::PathBuf;

/// Everything that can go wrong booting, running or tearing down a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver cannot run on this host (no KVM, missing binary, unsupported setup).
    #[error("driver {driver} is not available here: {reason}")]
    Unavailable {
        /// Name of the refused driver, e.g. `"qemu"`.
        driver: &'static str,
        /// Why it is unavailable, in words for the operator.
        reason: String,
    },
    /// A guest asset's digest does not match its manifest or the pinned rootfs sha256.
    #[error("asset {path} failed attestation: {reason}")]
    Attestation {
        /// The asset file that failed.
        path: PathBuf,
        /// What did not match, or that the file is not in the manifest.
        reason: String,
    },
    /// The guest assets are missing, malformed or could not be built.
    #[error("guest assets: {0}")]
    Assets(String),
    /// Invalid or inconsistent configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The VM did not start, or the guest never said hello in time.
    #[error("boot failed: {message}{}", console_hint(.console))]
    Boot {
        /// What went wrong.
        message: String,
        /// Last lines of the VM's console, for the operator.
        console: Vec<String>,
    },
    /// The guest broke the host ⇄ guest protocol (bad frame, version or order).
    #[error("guest protocol: {0}")]
    Protocol(String),
    /// Firecracker's HTTP API answered a request with an error status.
    #[error("firecracker API {method} {path} answered {status}: {message}")]
    FirecrackerApi {
        /// HTTP method of the refused request.
        method: String,
        /// API path of the refused request, e.g. `/boot-source`.
        path: String,
        /// HTTP status code of the answer.
        status: u16,
        /// Firecracker's `fault_message`, or the whole answer body if it has none.
        message: String,
    },
    /// An external command (e.g. `qemu-img`, `apt-get`) could not be run or failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command that failed, as run.
        command: String,
        /// Its stderr (or its tail), or why it could not be started.
        message: String,
    },
    /// A VM method was called out of order, e.g. `run` before `boot`.
    #[error("the VM was used out of order: {0}")]
    State(&'static str),
    /// An I/O error, with what was being done when it happened.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `"chmod /path"`.
        context: String,
        /// The underlying I/O error.
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

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
