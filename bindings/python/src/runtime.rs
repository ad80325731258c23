//! One tokio runtime for the whole Python process: the async variants run their
//! futures on it (through pyo3-async-runtimes) and the sync ones block on it with
//! the GIL released, so other Python threads keep running meanwhile.

use std::future::Future;

use pyo3::prelude::*;

/// The shared runtime (created on first use).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `future` to completion on the shared runtime, without the GIL.
pub fn block_on<F>(py: Python<'_>, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    py.detach(|| runtime().block_on(future))
}

/// `future` as an asyncio awaitable; its result is converted to Python under the GIL
/// when it completes.
pub fn awaitable<'py, F>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<Py<PyAny>>> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, future)
}

/// One call of a client, as a future resolving to a Python value: the blocking
/// classes wait for it ([`run_blocking`]), the asyncio ones await it ([`run_async`]).
pub type Call = std::pin::Pin<Box<dyn Future<Output = PyResult<Py<PyAny>>> + Send>>;

pub fn run_blocking(py: Python<'_>, call: Call) -> PyResult<Py<PyAny>> {
    block_on(py, call)
}

pub fn run_async(py: Python<'_>, call: Call) -> PyResult<Bound<'_, PyAny>> {
    awaitable(py, call)
}
