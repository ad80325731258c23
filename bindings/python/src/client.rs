//! `nimbus.ControlPlaneClient` and `nimbus.AsyncControlPlaneClient`: the control
//! plane's API for one caller, over HTTP (`ControlPlaneClient(base_url, token)`)
//! or in process (`EmbeddedControlPlane.client(...)`). Both sit on the Rust seams —
//! `ControlPlaneApi` for the org and job calls, `JobSource` for an agent's lease,
//! heartbeat and complete — so a script is the same against either.

use std::sync::Arc;
use std::time::Duration;

use nimbus_core::analytics::parse_time_bound;
use nimbus_core::client::ControlPlaneClient as HttpClient;
use nimbus_core::control_plane::{ControlPlaneApi, JobRequest, OrgsQuery, SummaryQuery};
use nimbus_core::domain::{Completion, CompletionStatus};
use nimbus_core::store::JobFilter;
use nimbus_core::{JobSource, JobStatus, Secret};
use pyo3::prelude::*;

use crate::convert::{from_python, result_to_python};
use crate::errors::{core_error, AuthError, InvalidInput};
use crate::runtime::{run_async, run_blocking, Call};

/// What one client may call: the API of its caller, and the job source of an
/// agent (absent for an in-process org or admin session).
#[derive(Clone)]
pub struct Calls {
    api: Option<Arc<dyn ControlPlaneApi>>,
    source: Option<Arc<dyn JobSource>>,
}

/// The filters of `list()`.
pub struct ListFilter {
    status: Option<String>,
    repo: Option<String>,
    label: Option<String>,
    metadata_key: Option<String>,
    metadata_value: Option<String>,
    org_id: Option<i64>,
    limit: u32,
    cursor: Option<i64>,
}

impl ListFilter {
    fn into_filter(self) -> PyResult<JobFilter> {
        let status = self
            .status
            .map(|status| status.parse::<JobStatus>())
            .transpose()
            .map_err(core_error)?;
        Ok(JobFilter {
            org_id: self.org_id,
            status,
            repo: self.repo,
            label: self.label,
            metadata_key: self.metadata_key,
            metadata_value: self.metadata_value,
            limit: self.limit,
            cursor: self.cursor,
        })
    }
}

fn time_bound(name: &str, raw: Option<String>) -> PyResult<Option<time::OffsetDateTime>> {
    raw.map(|raw| parse_time_bound(name, &raw, time::OffsetDateTime::now_utc()))
        .transpose()
        .map_err(core_error)
}

fn completion(
    fencing_token: i64,
    status: &str,
    exit_code: Option<i32>,
    reason: Option<String>,
) -> PyResult<Completion> {
    let status = match status {
        "succeeded" => CompletionStatus::Succeeded,
        "failed" => CompletionStatus::Failed,
        "timed_out" => CompletionStatus::TimedOut,
        "cancelled" => CompletionStatus::Cancelled,
        other => {
            return Err(InvalidInput::new_err(format!(
                "status {other:?}: expected succeeded, failed, timed_out or cancelled"
            )))
        }
    };
    Ok(Completion {
        fencing_token,
        status,
        exit_code,
        reason,
        result: None,
    })
}

fn wait(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| InvalidInput::new_err(format!("wait={seconds}: expected seconds ≥ 0")))
}

impl Calls {
    pub fn api(api: Arc<dyn ControlPlaneApi>) -> Self {
        Calls {
            api: Some(api),
            source: None,
        }
    }

    pub fn agent(source: Arc<dyn JobSource>) -> Self {
        Calls {
            api: None,
            source: Some(source),
        }
    }

    fn http(base_url: &str, token: Option<String>) -> PyResult<Self> {
        let client =
            Arc::new(HttpClient::new(base_url, token.map(Secret::new)).map_err(core_error)?);
        Ok(Calls {
            api: Some(client.clone()),
            source: Some(client),
        })
    }

    fn api_or_err(&self) -> PyResult<Arc<dyn ControlPlaneApi>> {
        self.api.clone().ok_or_else(|| {
            AuthError::new_err("this client is an agent's: it may lease, heartbeat and complete")
        })
    }

    fn source_or_err(&self) -> PyResult<Arc<dyn JobSource>> {
        self.source.clone().ok_or_else(|| {
            AuthError::new_err(
                "this client is an org's or admin's session: leasing needs an agent (agent())",
            )
        })
    }
}

impl Calls {
    fn submit(&self, job: &Bound<'_, PyAny>) -> PyResult<Call> {
        let api = self.api_or_err()?;
        let request: JobRequest = from_python(job)?;
        Ok(Box::pin(async move {
            result_to_python(api.submit(request).await)
        }))
    }

    fn list(&self, filter: ListFilter) -> PyResult<Call> {
        let api = self.api_or_err()?;
        let filter = filter.into_filter()?;
        Ok(Box::pin(
            async move { result_to_python(api.jobs(filter).await) },
        ))
    }

    fn get(&self, job_id: i64) -> PyResult<Call> {
        let api = self.api_or_err()?;
        Ok(Box::pin(
            async move { result_to_python(api.job(job_id).await) },
        ))
    }

    fn cancel(&self, job_id: i64) -> PyResult<Call> {
        let api = self.api_or_err()?;
        Ok(Box::pin(async move {
            result_to_python(api.cancel(job_id).await)
        }))
    }

    fn orgs(&self) -> PyResult<Call> {
        let api = self.api_or_err()?;
        Ok(Box::pin(async move { result_to_python(api.orgs().await) }))
    }

    fn upsert_org(&self, org_id: i64, name: String) -> PyResult<Call> {
        let api = self.api_or_err()?;
        Ok(Box::pin(async move {
            result_to_python(api.upsert_org(org_id, &name).await)
        }))
    }

    fn metadata_values(&self, key: String, org_id: Option<i64>, limit: u32) -> PyResult<Call> {
        let api = self.api_or_err()?;
        Ok(Box::pin(async move {
            result_to_python(api.metadata_values(&key, org_id, limit).await)
        }))
    }

    fn observability(&self, query: OrgsQuery) -> PyResult<Call> {
        let api = self.api_or_err()?;
        Ok(Box::pin(async move {
            result_to_python(api.observability_orgs(&query).await)
        }))
    }

    fn job_summary(&self, query: SummaryQuery) -> PyResult<Call> {
        let api = self.api_or_err()?;
        Ok(Box::pin(async move {
            result_to_python(api.job_summary(&query).await)
        }))
    }

    fn lease(&self, wait_seconds: f64, labels: Option<Vec<String>>) -> PyResult<Call> {
        let source = self.source_or_err()?;
        let wait = wait(wait_seconds)?;
        Ok(Box::pin(async move {
            result_to_python(source.lease(wait, labels.as_deref()).await)
        }))
    }

    fn heartbeat(&self, job_id: i64, fencing_token: i64) -> PyResult<Call> {
        let source = self.source_or_err()?;
        Ok(Box::pin(async move {
            result_to_python(source.heartbeat(job_id, fencing_token).await)
        }))
    }

    fn complete(&self, job_id: i64, completion: Completion) -> PyResult<Call> {
        let source = self.source_or_err()?;
        Ok(Box::pin(async move {
            result_to_python(source.complete(job_id, &completion).await)
        }))
    }
}

/// The control plane for one caller, blocking: each call releases the GIL while it
/// waits. `ControlPlaneClient(base_url, token)` talks HTTP; an embedded control
/// plane hands out in-process ones (`EmbeddedControlPlane.client()`).
#[pyclass(module = "nimbus._native", frozen)]
pub struct ControlPlaneClient {
    calls: Calls,
}

/// [`ControlPlaneClient`] for asyncio: every call returns an awaitable, run on the
/// process's one tokio runtime.
#[pyclass(module = "nimbus._native", frozen)]
pub struct AsyncControlPlaneClient {
    calls: Calls,
}

impl ControlPlaneClient {
    pub fn from_calls(calls: Calls) -> Self {
        ControlPlaneClient { calls }
    }
}

impl AsyncControlPlaneClient {
    pub fn from_calls(calls: Calls) -> Self {
        AsyncControlPlaneClient { calls }
    }
}

/// Writes the same methods for the sync and the async class: `$run` turns the
/// call's future into the method's result (blocking, or an awaitable).
macro_rules! client_methods {
    ($class:ident, $ret:ty, $run:path) => {
        #[pymethods]
        impl $class {
            /// A client of the control plane at `base_url` (e.g.
            /// `http://127.0.0.1:8000`) with a bearer `token` (`nimbus token mint`,
            /// `nimbus.mint_token`).
            #[new]
            #[pyo3(signature = (base_url, token=None))]
            fn new(base_url: &str, token: Option<String>) -> PyResult<Self> {
                Ok($class {
                    calls: Calls::http(base_url, token)?,
                })
            }

            /// Queues a job: `{"repo": "acme/app", "steps": [{"run": "make"}],
            /// "labels": [...], "env": {...}, "timeout_minutes": N, "metadata": {...},
            /// "org_id": N}` (docs/api.md). Returns the job.
            fn submit<'py>(&self, py: Python<'py>, job: &Bound<'py, PyAny>) -> $ret {
                $run(py, self.calls.submit(job)?)
            }

            /// A page of jobs, newest first: `{"jobs": [...], "next_cursor": ...}`.
            #[pyo3(signature = (*, status=None, repo=None, label=None, metadata_key=None, metadata_value=None, org_id=None, limit=50, cursor=None))]
            #[allow(clippy::too_many_arguments)]
            fn list<'py>(
                &self,
                py: Python<'py>,
                status: Option<String>,
                repo: Option<String>,
                label: Option<String>,
                metadata_key: Option<String>,
                metadata_value: Option<String>,
                org_id: Option<i64>,
                limit: u32,
                cursor: Option<i64>,
            ) -> $ret {
                let filter = ListFilter {
                    status,
                    repo,
                    label,
                    metadata_key,
                    metadata_value,
                    org_id,
                    limit,
                    cursor,
                };
                $run(py, self.calls.list(filter)?)
            }

            /// One job (`NotFound` if it does not exist or is another org's).
            fn get<'py>(&self, py: Python<'py>, job_id: i64) -> $ret {
                $run(py, self.calls.get(job_id)?)
            }

            /// Cancels a queued or running job; returns it.
            fn cancel<'py>(&self, py: Python<'py>, job_id: i64) -> $ret {
                $run(py, self.calls.cancel(job_id)?)
            }

            /// The orgs the caller may see.
            fn orgs<'py>(&self, py: Python<'py>) -> $ret {
                $run(py, self.calls.orgs()?)
            }

            /// Creates or renames an org (admin).
            fn upsert_org<'py>(&self, py: Python<'py>, org_id: i64, name: String) -> $ret {
                $run(py, self.calls.upsert_org(org_id, name)?)
            }

            /// How many jobs carry each value of metadata `key`, most frequent first:
            /// `[{"value": ..., "jobs": N}, ...]`.
            #[pyo3(signature = (key, *, org_id=None, limit=100))]
            fn metadata_values<'py>(
                &self,
                py: Python<'py>,
                key: String,
                org_id: Option<i64>,
                limit: u32,
            ) -> $ret {
                $run(py, self.calls.metadata_values(key, org_id, limit)?)
            }

            /// Per org: jobs by status, success rate, queue wait and run time
            /// percentiles (ms), active leases, rate-limit hits; with `metadata_key`,
            /// that key's values per org. `since`/`until`: RFC 3339, a date or an
            /// age (`"7d"`). What `GET /api/observability/orgs` answers.
            #[pyo3(signature = (*, metadata_key=None, since=None, until=None, org_id=None))]
            fn observability<'py>(&self, py: Python<'py>, metadata_key: Option<String>, since: Option<String>, until: Option<String>, org_id: Option<i64>) -> $ret {
                let query = OrgsQuery {
                    org_id,
                    metadata_key,
                    since: time_bound("since", since)?,
                    until: time_bound("until", until)?,
                };
                $run(py, self.calls.observability(query)?)
            }

            /// Jobs by status and their most frequent metadata tags (all jobs, or
            /// those with `metadata_key`, or with `metadata_key` = `metadata_value`).
            #[pyo3(signature = (*, metadata_key=None, metadata_value=None, org_id=None))]
            fn job_summary<'py>(&self, py: Python<'py>, metadata_key: Option<String>, metadata_value: Option<String>, org_id: Option<i64>) -> $ret {
                let query = SummaryQuery { org_id, metadata_key, metadata_value };
                $run(py, self.calls.job_summary(query)?)
            }

            /// Leases a job (agent), waiting up to `wait` seconds; `None` if none came.
            /// With `labels`, only jobs whose runner labels are all among them.
            #[pyo3(signature = (*, wait=0.0, labels=None))]
            fn lease<'py>(&self, py: Python<'py>, wait: f64, labels: Option<Vec<String>>) -> $ret {
                $run(py, self.calls.lease(wait, labels)?)
            }

            /// Extends a lease (agent); `Conflict` if the fencing token is stale.
            fn heartbeat<'py>(&self, py: Python<'py>, job_id: i64, fencing_token: i64) -> $ret {
                $run(py, self.calls.heartbeat(job_id, fencing_token)?)
            }

            /// Finishes a leased job (agent): `status` is `succeeded`, `failed`,
            /// `timed_out` or `cancelled`. Returns the job.
            #[pyo3(signature = (job_id, fencing_token, status, *, exit_code=None, reason=None))]
            fn complete<'py>(
                &self,
                py: Python<'py>,
                job_id: i64,
                fencing_token: i64,
                status: &str,
                exit_code: Option<i32>,
                reason: Option<String>,
            ) -> $ret {
                let completion = completion(fencing_token, status, exit_code, reason)?;
                $run(py, self.calls.complete(job_id, completion)?)
            }
        }
    };
}

client_methods!(ControlPlaneClient, PyResult<Py<PyAny>>, run_blocking);
client_methods!(
    AsyncControlPlaneClient,
    PyResult<Bound<'py, PyAny>>,
    run_async
);
