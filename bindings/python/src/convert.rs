//! Rust values to Python and back: the serde types of the Rust crates (jobs,
//! leases, orgs) become plain dicts and lists, with the field names of the HTTP API
//! (docs/api.md), so what a script reads from `nimbus.ControlPlaneClient` is what
//! it would read from `GET /api/jobs/{id}`; what it passes in is read as that JSON
//! would be.

use pyo3::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::errors::{conversion_error, InvalidInput};

/// `value` as Python objects (dicts, lists, str, int, float, bool, None).
pub fn to_python<T: Serialize + ?Sized>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    pythonize::pythonize(py, value)
        .map(Bound::unbind)
        .map_err(conversion_error)
}

/// [`to_python`] for a result computed without the GIL.
pub fn result_to_python<T: Serialize>(value: nimbus_core::Result<T>) -> PyResult<Py<PyAny>> {
    let value = value.map_err(crate::errors::core_error)?;
    Python::attach(|py| to_python(py, &value))
}

/// A Python value (usually a dict) as `T`, read as JSON would read it: a string
/// where a list belongs is an error, not a list of characters, and a missing or
/// unknown field is an `InvalidInput` naming it.
pub fn from_python<T: DeserializeOwned>(value: &Bound<'_, PyAny>) -> PyResult<T> {
    let json = PyModule::import(value.py(), "json")?;
    let text: String = json
        .call_method1("dumps", (value,))
        .map_err(|error| InvalidInput::new_err(format!("not JSON-like data: {error}")))?
        .extract()?;
    serde_json::from_str(&text).map_err(|error| InvalidInput::new_err(error.to_string()))
}
