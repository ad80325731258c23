//! Logs from Python: a `LogSink` written in Python (subclass `nimbus.LogSink`)
//! handed to the real logging pipeline, which `nimbus.LoggingPipeline(...).start()`
//! runs inside the Python process.
//!
//! The pipeline calls the sink from its tokio tasks; each call moves to a blocking
//! thread and takes the GIL there, and only there, so the pipeline's own work
//! (decoding, authorising, batching) never waits for Python.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use nimbus_core::Env;
use nimbus_logs::pipeline::{self, Pipeline, PipelineConfig};
use nimbus_logs::{LogQuery, LogRecord, LogSink, MetadataRecord, Order, Stats};
use pyo3::prelude::*;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::convert::{from_python, to_python};
use crate::errors::{core_error, InvalidInput};
use crate::logs_client::logs_error;
use crate::runtime::block_on;
use crate::serving::Serving;

/// A Python object with the methods of `nimbus.LogSink`, as a Rust `LogSink`.
pub struct PythonLogSink {
    sink: Arc<Py<PyAny>>,
}

/// What `stats()` may return (missing keys are zero or empty).
#[derive(Deserialize, Default)]
#[serde(default)]
struct PythonStats {
    lines: u64,
    bytes: u64,
    per_level: BTreeMap<String, u64>,
    per_org: BTreeMap<String, u64>,
    last_ingest: Option<i64>,
}

impl PythonLogSink {
    /// Runs `body` with the Python sink on a blocking thread, under the GIL; a
    /// Python exception becomes a sink error with its message, which the pipeline
    /// reports (and its senders retry) as it would a database's.
    async fn with_sink<T: Send + 'static>(
        &self,
        method: &'static str,
        body: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T> + Send + 'static,
    ) -> nimbus_logs::Result<T> {
        let sink = self.sink.clone();
        let answer = tokio::task::spawn_blocking(move || Python::attach(|py| body(sink.bind(py))))
            .await
            .map_err(|e| nimbus_logs::Error::Sink(format!("python sink {method}: {e}")))?;
        answer.map_err(|e| nimbus_logs::Error::Sink(format!("python sink {method}: {e}")))
    }

    /// Calls `method(*args)` and reads the answer as `T`.
    async fn call<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &'static str,
        args: impl FnOnce(Python<'_>) -> PyResult<Vec<Py<PyAny>>> + Send + 'static,
    ) -> nimbus_logs::Result<T> {
        self.with_sink(method, move |sink| {
            let args = pyo3::types::PyTuple::new(sink.py(), args(sink.py())?)?;
            from_python::<T>(&sink.call_method1(method, args)?)
        })
        .await
    }
}

fn python<T: serde::Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    to_python(py, value)
}

#[async_trait]
impl LogSink for PythonLogSink {
    fn name(&self) -> &'static str {
        "python"
    }

    /// Hands `write` only lines the sink does not have: a retried batch, or a line
    /// twice in one batch, is dropped here by (job_id, seq) against the sink's
    /// `stored_seqs`, as the `LogSink` contract asks, so a Python sink need not.
    async fn write(&self, batch: &[LogRecord]) -> nimbus_logs::Result<u64> {
        let batch = batch.to_vec();
        self.with_sink("write", move |sink| {
            let mut stored: HashMap<u64, HashSet<u64>> = HashMap::new();
            let mut fresh = Vec::with_capacity(batch.len());
            for record in batch {
                let seqs = match stored.entry(record.job_id) {
                    Entry::Occupied(seqs) => seqs.into_mut(),
                    Entry::Vacant(slot) => {
                        let seqs: Vec<u64> =
                            from_python(&sink.call_method1("stored_seqs", (record.job_id,))?)?;
                        slot.insert(seqs.into_iter().collect())
                    }
                };
                if seqs.insert(record.seq) {
                    fresh.push(record);
                }
            }
            if fresh.is_empty() {
                return Ok(0);
            }
            let records = python(sink.py(), &fresh)?;
            from_python::<u64>(&sink.call_method1("write", (records,))?)
        })
        .await
    }

    async fn stored_seqs(&self, job_id: u64) -> nimbus_logs::Result<Vec<u64>> {
        self.call("stored_seqs", move |py| Ok(vec![python(py, &job_id)?]))
            .await
    }

    async fn query(&self, query: &LogQuery) -> nimbus_logs::Result<Vec<LogRecord>> {
        let query = serde_json::json!({
            "job_id": query.job_id,
            "org_id": query.org_id,
            "level": query.level,
            "since": query.since,
            "after_seq": query.after_seq,
            "limit": query.limit,
            "order": match query.order { Order::Newest => "newest", Order::Oldest => "oldest" },
        });
        self.call("query", move |py| Ok(vec![python(py, &query)?]))
            .await
    }

    async fn prune(&self, older_than: i64) -> nimbus_logs::Result<u64> {
        self.call("prune", move |py| Ok(vec![python(py, &older_than)?]))
            .await
    }

    async fn write_metadata(&self, rows: &[MetadataRecord]) -> nimbus_logs::Result<u64> {
        let rows = rows.to_vec();
        self.call("write_metadata", move |py| Ok(vec![python(py, &rows)?]))
            .await
    }

    async fn query_metadata(
        &self,
        job_id: u64,
        org_id: Option<u64>,
    ) -> nimbus_logs::Result<Vec<MetadataRecord>> {
        self.call("query_metadata", move |py| {
            Ok(vec![python(py, &job_id)?, python(py, &org_id)?])
        })
        .await
    }

    async fn prune_metadata(&self, older_than: i64) -> nimbus_logs::Result<u64> {
        self.call("prune_metadata", move |py| {
            Ok(vec![python(py, &older_than)?])
        })
        .await
    }

    async fn stats(&self, org_id: Option<u64>) -> nimbus_logs::Result<Stats> {
        let stats: PythonStats = self
            .call("stats", move |py| Ok(vec![python(py, &org_id)?]))
            .await?;
        Ok(Stats {
            lines: stats.lines,
            bytes: stats.bytes,
            per_level: stats.per_level,
            per_org: stats.per_org,
            last_ingest: stats.last_ingest,
        })
    }
}

/// The logging pipeline to run in this process, configured by `NIMBUS_*` settings
/// given as a dict (the process environment is not read), storing into `sink` (a
/// `nimbus.LogSink`) or, without one, into the configured backend. Unless given:
/// `127.0.0.1` on a free port.
#[pyclass(module = "nimbus._native", frozen)]
pub struct LoggingPipeline {
    settings: BTreeMap<String, String>,
    sink: Option<Arc<Py<PyAny>>>,
}

#[pymethods]
impl LoggingPipeline {
    #[new]
    #[pyo3(signature = (config=None, *, sink=None))]
    fn new(config: Option<BTreeMap<String, String>>, sink: Option<Py<PyAny>>) -> PyResult<Self> {
        let mut settings = config.unwrap_or_default();
        if let Some(key) = settings.keys().find(|key| !key.starts_with("NIMBUS_")) {
            return Err(InvalidInput::new_err(format!(
                "setting {key:?}: settings are NIMBUS_* variables (docs/configuration.md)"
            )));
        }
        settings
            .entry("NIMBUS_LOGGING_PIPELINE_ADDR".into())
            .or_insert_with(|| "127.0.0.1:0".into());
        if let Some(sink) = &sink {
            Python::attach(|py| {
                let sink = sink.bind(py);
                if !sink.hasattr("write")? {
                    return Err(InvalidInput::new_err(
                        "sink: a LogSink needs a write(records) method (subclass nimbus.LogSink)",
                    ));
                }
                Ok(())
            })?;
        }
        Ok(LoggingPipeline {
            settings,
            sink: sink.map(Arc::new),
        })
    }

    /// Starts serving the pipeline's API; returns the running pipeline (a context
    /// manager that stops it on exit).
    fn start(&self, py: Python<'_>) -> PyResult<EmbeddedLoggingPipeline> {
        let config =
            PipelineConfig::from_env(&Env::from_map(self.settings.clone())).map_err(core_error)?;
        let sink = self.sink.clone();
        let started = block_on(py, async move {
            let sink: Arc<dyn LogSink> = match sink {
                Some(sink) => Arc::new(PythonLogSink { sink }),
                None => pipeline::open_sink(&config).await?,
            };
            let listener =
                tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|source| nimbus_logs::Error::Io {
                        context: format!("binding {}", config.listen),
                        source,
                    })?;
            let address = listener
                .local_addr()
                .map_err(|source| nimbus_logs::Error::Io {
                    context: "reading the bound address".into(),
                    source,
                })?;
            let state = Pipeline::new(&config, sink)?;
            let serving = Serving::spawn(|stopped| async move {
                pipeline::serve(&config, state, listener, async {
                    let _ = stopped.await;
                })
                .await
            });
            Ok::<_, nimbus_logs::Error>((address, serving))
        })
        .map_err(logs_error)?;
        let (address, serving) = started;
        Ok(EmbeddedLoggingPipeline {
            base_url: format!("http://{address}"),
            serving,
        })
    }
}

/// A running embedded logging pipeline (from `LoggingPipeline.start()`).
#[pyclass(module = "nimbus._native", frozen)]
pub struct EmbeddedLoggingPipeline {
    base_url: String,
    serving: Serving<nimbus_logs::Error>,
}

#[pymethods]
impl EmbeddedLoggingPipeline {
    /// Where it serves, e.g. `http://127.0.0.1:41235` (`POST /api/logs`, docs/logging.md).
    #[getter]
    fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops serving. Every batch the pipeline acknowledged is in the sink already
    /// (it answers only once the sink's `write` returned).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.serving.stop(py, logs_error)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }
}
