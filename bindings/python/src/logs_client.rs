//! `nimbus.LogsClient` and `nimbus.AsyncLogsClient`: the logging pipeline's API
//! (docs/logging.md) from Python, through `nimbus_logs::sink::HttpSink` — the same
//! client a host agent on another machine writes with.

use std::sync::Arc;

use nimbus_core::Secret;
use nimbus_logs::sink::http::HttpSink;
use nimbus_logs::{LogQuery, LogRecord, LogSink, MetadataRecord, Order};
use pyo3::prelude::*;

use crate::convert::{from_python, to_python};
use crate::errors::{AuthError, InvalidInput, NimbusError, RateLimited, Unavailable};
use crate::runtime::{run_async, run_blocking, Call};

/// A `nimbus_logs::Error` as the exception of its kind.
pub fn logs_error(error: nimbus_logs::Error) -> PyErr {
    use nimbus_logs::Error;
    let message = error.to_string();
    match error {
        Error::InvalidRecord { .. } | Error::InvalidInput(_) | Error::Config { .. } => {
            InvalidInput::new_err(message)
        }
        Error::Unauthenticated(_) | Error::Forbidden(_) => AuthError::new_err(message),
        Error::TooMany(_) => RateLimited::new_err(message),
        Error::Busy { retry_after_secs } => {
            let err = Unavailable::new_err(message);
            Python::attach(|py| {
                let _ = err
                    .value(py)
                    .setattr("retry_after", retry_after_secs as f64);
            });
            err
        }
        Error::Sink(_) => Unavailable::new_err(message),
        Error::Io { .. } => NimbusError::new_err(message),
    }
}

fn answer<T: serde::Serialize>(value: nimbus_logs::Result<T>) -> PyResult<Py<PyAny>> {
    let value = value.map_err(logs_error)?;
    Python::attach(|py| to_python(py, &value))
}

/// The calls, once, for both classes.
#[derive(Clone)]
struct Calls {
    pipeline: Arc<HttpSink>,
}

impl Calls {
    fn new(base_url: &str, token: Option<String>) -> PyResult<Self> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| NimbusError::new_err(format!("HTTP client: {e}")))?;
        Ok(Calls {
            pipeline: Arc::new(HttpSink::new(http, base_url, token.map(Secret::new))),
        })
    }

    fn write(&self, records: &Bound<'_, PyAny>) -> PyResult<Call> {
        let records: Vec<LogRecord> = from_python(records)?;
        let pipeline = self.pipeline.clone();
        Ok(Box::pin(
            async move { answer(pipeline.write(&records).await) },
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn query(
        &self,
        job_id: Option<u64>,
        level: Option<String>,
        since: Option<i64>,
        after_seq: Option<u64>,
        limit: u32,
        order: &str,
    ) -> PyResult<Call> {
        let order = match order {
            "newest" => Order::Newest,
            "oldest" => Order::Oldest,
            other => {
                return Err(InvalidInput::new_err(format!(
                    "order {other:?}: expected newest or oldest"
                )))
            }
        };
        let query = LogQuery {
            job_id,
            org_id: None,
            level,
            since,
            after_seq,
            limit,
            order,
        };
        let pipeline = self.pipeline.clone();
        Ok(Box::pin(
            async move { answer(pipeline.query(&query).await) },
        ))
    }

    fn write_metadata(&self, rows: &Bound<'_, PyAny>) -> PyResult<Call> {
        let rows: Vec<MetadataRecord> = from_python(rows)?;
        let pipeline = self.pipeline.clone();
        Ok(Box::pin(async move {
            answer(pipeline.write_metadata(&rows).await)
        }))
    }

    fn metadata(&self, job_id: u64) -> Call {
        let pipeline = self.pipeline.clone();
        Box::pin(async move { answer(pipeline.query_metadata(job_id, None).await) })
    }

    fn stats(&self) -> Call {
        let pipeline = self.pipeline.clone();
        Box::pin(async move { answer(pipeline.stats(None).await) })
    }
}

/// The logging pipeline at `base_url`, blocking (each call releases the GIL).
#[pyclass(module = "nimbus._native", frozen)]
pub struct LogsClient {
    calls: Calls,
}

/// [`LogsClient`] for asyncio: every call returns an awaitable.
#[pyclass(module = "nimbus._native", frozen)]
pub struct AsyncLogsClient {
    calls: Calls,
}

/// The methods of both classes; `$run` blocks on a call or makes it awaitable.
macro_rules! logs_methods {
    ($class:ident, $ret:ty, $run:path) => {
        #[pymethods]
        impl $class {
            /// A client of the pipeline at `base_url` (e.g. `http://127.0.0.1:8002`)
            /// with a bearer `token`: a lease's ingest token to write that job's
            /// lines, an org or admin token to read.
            #[new]
            #[pyo3(signature = (base_url, token=None))]
            fn new(base_url: &str, token: Option<String>) -> PyResult<Self> {
                Ok($class {
                    calls: Calls::new(base_url, token)?,
                })
            }

            /// Sends lines (dicts: `job_id`, `seq`, `agent_id`, `level`, `message`,
            /// `ts` as epoch ms or RFC 3339, optional `org_id`, `repo_id`); answers
            /// once they are stored, with how many were accepted (a line the
            /// pipeline has already is accepted and not stored twice).
            fn write<'py>(&self, py: Python<'py>, records: &Bound<'py, PyAny>) -> $ret {
                $run(py, self.calls.write(records)?)
            }

            /// Lines, oldest first: the last `limit` (`order="newest"`) or the first.
            #[pyo3(signature = (*, job_id=None, level=None, since=None, after_seq=None, limit=100, order="newest"))]
            #[allow(clippy::too_many_arguments)]
            fn query<'py>(
                &self,
                py: Python<'py>,
                job_id: Option<u64>,
                level: Option<String>,
                since: Option<i64>,
                after_seq: Option<u64>,
                limit: u32,
                order: &str,
            ) -> $ret {
                $run(
                    py,
                    self.calls
                        .query(job_id, level, since, after_seq, limit, order)?,
                )
            }

            /// Stores metadata rows (`job_id`, `key`, `value`, ...).
            fn write_metadata<'py>(&self, py: Python<'py>, rows: &Bound<'py, PyAny>) -> $ret {
                $run(py, self.calls.write_metadata(rows)?)
            }

            /// A job's metadata rows.
            fn metadata<'py>(&self, py: Python<'py>, job_id: u64) -> $ret {
                $run(py, self.calls.metadata(job_id))
            }

            /// Lines, bytes, per level and per org, and the last ingest time.
            fn stats<'py>(&self, py: Python<'py>) -> $ret {
                $run(py, self.calls.stats())
            }
        }
    };
}

logs_methods!(LogsClient, PyResult<Py<PyAny>>, run_blocking);
logs_methods!(AsyncLogsClient, PyResult<Bound<'py, PyAny>>, run_async);
