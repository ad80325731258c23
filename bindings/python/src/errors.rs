//! The exception hierarchy, and the one place Rust errors become Python ones.
//!
//! Every exception derives from `NimbusError`, so one `except nimbus.NimbusError`
//! catches everything Nimbus raises; each subclass is one `ErrorKind` of the Rust
//! crates (the same table the HTTP edge maps to status codes).

use nimbus_core::ErrorKind;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _native,
    NimbusError,
    PyException,
    "Base class of every error Nimbus raises."
);
create_exception!(
    _native,
    PolicyError,
    NimbusError,
    "A policy that does not load (YAML, schema, a bad glob or pattern)."
);
create_exception!(
    _native,
    InvalidInput,
    NimbusError,
    "A request or argument Nimbus refuses as malformed or out of range."
);
create_exception!(
    _native,
    AuthError,
    NimbusError,
    "Missing or wrong credentials, or credentials that may not do this."
);
create_exception!(
    _native,
    NotFound,
    NimbusError,
    "The thing does not exist, or the caller may not know it exists."
);
create_exception!(
    _native,
    Conflict,
    NimbusError,
    "A state conflict: a stale fencing token, a replayed delivery, a finished job."
);
create_exception!(
    _native,
    RateLimited,
    NimbusError,
    "The org is over its job rate limit; `retry_after` says when to try again."
);
create_exception!(
    _native,
    Unavailable,
    NimbusError,
    "A dependency (database, control plane) is not reachable or not configured."
);

/// A `nimbus_core::Error` as the exception of its kind, with the Rust message.
pub fn core_error(error: nimbus_core::Error) -> PyErr {
    let message = error.to_string();
    match &error {
        nimbus_core::Error::RateLimited { retry_after, .. } => {
            let err = RateLimited::new_err(message);
            let seconds = retry_after.as_secs_f64();
            Python::attach(|py| {
                // Best effort: the message says it too.
                let _ = err.value(py).setattr("retry_after", seconds);
            });
            err
        }
        _ => match error.kind() {
            ErrorKind::InvalidInput
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => InvalidInput::new_err(message),
            ErrorKind::Unauthenticated | ErrorKind::Forbidden => AuthError::new_err(message),
            ErrorKind::NotFound => NotFound::new_err(message),
            ErrorKind::Conflict => Conflict::new_err(message),
            ErrorKind::RateLimited => RateLimited::new_err(message),
            ErrorKind::Unavailable => Unavailable::new_err(message),
            ErrorKind::Internal => NimbusError::new_err(message),
        },
    }
}

/// A policy that does not load.
pub fn policy_error(error: nimbus_policy::Error) -> PyErr {
    PolicyError::new_err(error.to_string())
}

/// A value that does not convert to or from Python.
pub fn conversion_error(error: pythonize::PythonizeError) -> PyErr {
    InvalidInput::new_err(error.to_string())
}

/// Registers the exception classes on the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add("NimbusError", py.get_type::<NimbusError>())?;
    module.add("PolicyError", py.get_type::<PolicyError>())?;
    module.add("InvalidInput", py.get_type::<InvalidInput>())?;
    module.add("AuthError", py.get_type::<AuthError>())?;
    module.add("NotFound", py.get_type::<NotFound>())?;
    module.add("Conflict", py.get_type::<Conflict>())?;
    module.add("RateLimited", py.get_type::<RateLimited>())?;
    module.add("Unavailable", py.get_type::<Unavailable>())?;
    Ok(())
}
