//! Logging set-up shared by the binaries: `NIMBUS_LOG_LEVEL` and `NIMBUS_LOG_FORMAT`.

use tracing_subscriber::EnvFilter;

use crate::config::Env;
use crate::error::{Error, Result};

/// Installs the global tracing subscriber (once; later calls are no-ops).
pub fn init(env: &Env) -> Result<()> {
    let level = env.get("NIMBUS_LOG_LEVEL").unwrap_or("info");
    let filter = EnvFilter::try_new(level).map_err(|e| Error::Config {
        variable: "NIMBUS_LOG_LEVEL".into(),
        message: format!("invalid filter {level:?}: {e}"),
    })?;
    // Colour only on a terminal: log files and CI output stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match env.get("NIMBUS_LOG_FORMAT").unwrap_or("text") {
        "text" => builder.try_init(),
        "json" => builder.json().try_init(),
        other => {
            return Err(Error::Config {
                variable: "NIMBUS_LOG_FORMAT".into(),
                message: format!("expected text or json, got {other:?}"),
            })
        }
    };
    // Already initialised (tests, embedders): keep the existing subscriber.
    let _ = result;
    Ok(())
}

/// The metrics label of an HTTP method: the methods Nimbus serves by name, any
/// other (clients can send arbitrary extension methods) as `other`, so label
/// values come from a fixed set.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
