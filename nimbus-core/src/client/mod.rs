//! HTTP client of the control plane, shared by the host agent, the CLI, the
//! benchmark harness and the Python bindings. It implements the same seams as the
//! in-process control plane — [`ControlPlaneApi`] for one caller and
//! [`JobSource`](crate::job_source::JobSource) for an agent — over the routes of
//! docs/api.md.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::analytics::{JobSummary, MetadataHistogram, MetadataPresets, MetadataTrend, OrgsReport};
use crate::config::{ClientConfig, Secret};
use crate::control_plane::{
    ControlPlaneApi, HistogramQuery, JobRequest, MetadataCount, OrgsQuery, SummaryQuery,
    TrendQuery, WorkspaceReceipt,
};
use crate::domain::{Completion, Job, JobId, Lease, Org, OrgId};
use crate::error::{Error, Result};
use crate::store::{JobFilter, JobPage, LeaseRenewal};

/// A client of one control plane's HTTP API, authenticated with a bearer token.
/// Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
}

impl ControlPlaneClient {
    /// A client of the control plane at `base_url` (a trailing `/` is ignored),
    /// sending `token` as `Authorization: Bearer` when given.
    pub fn new(base_url: impl Into<String>, token: Option<Secret>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(ControlPlaneClient {
            http,
            base: base_url.into().trim_end_matches('/').to_string(),
            token,
        })
    }

    /// A client from `NIMBUS_CONTROL_PLANE_URL` and the token of `config`.
    pub fn from_config(config: &ClientConfig) -> Result<Self> {
        Self::new(config.control_plane_url.clone(), config.token.clone())
    }

    /// The control plane's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token.expose()),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<Option<T>> {
        let response = builder.send().await?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return Ok(Some(response.json::<T>().await?));
        }
        Err(error_of(response).await)
    }

    /// A raw (non-JSON) answer's body; errors as [`Self::send`] maps them.
    async fn bytes(&self, builder: reqwest::RequestBuilder) -> Result<bytes::Bytes> {
        let response = builder.send().await?;
        if response.status().is_success() {
            return Ok(response.bytes().await?);
        }
        Err(error_of(response).await)
    }

    async fn expect<T: DeserializeOwned>(&self, builder: reqwest::RequestBuilder) -> Result<T> {
        self.send(builder).await?.ok_or_else(|| {
            Error::Internal("the control plane answered 204 where a body was expected".into())
        })
    }

    /// `POST /api/jobs` with a JSON body as documented in docs/api.md.
    pub async fn submit_job(&self, body: &impl Serialize) -> Result<Job> {
        self.expect(self.request(Method::POST, "/api/jobs").json(body))
            .await
    }

    /// `POST /api/jobs/lease`, waiting up to `wait` for a job.
    pub async fn lease(&self, wait: Duration) -> Result<Option<Lease>> {
        self.lease_matching(wait, None).await
    }

    /// Leases a job whose runner labels are all among `labels` (`None`: any job).
    pub async fn lease_matching(
        &self,
        wait: Duration,
        labels: Option<&[String]>,
    ) -> Result<Option<Lease>> {
        let mut body = json!({"wait_seconds": wait.as_secs()});
        if let Some(labels) = labels {
            body["labels"] = json!(labels);
        }
        let builder = self
            .request(Method::POST, "/api/jobs/lease")
            .timeout(wait + Duration::from_secs(30))
            .json(&body);
        self.send(builder).await
    }

    /// `POST /api/jobs/{id}/heartbeat`: renews the lease held with `fencing_token`.
    pub async fn heartbeat(&self, job_id: JobId, fencing_token: i64) -> Result<LeaseRenewal> {
        let path = format!("/api/jobs/{job_id}/heartbeat");
        self.expect(
            self.request(Method::POST, &path)
                .json(&json!({"fencing_token": fencing_token})),
        )
        .await
    }

    /// `POST /api/jobs/{id}/complete`: reports the outcome of a leased job.
    pub async fn complete(&self, job_id: JobId, completion: &Completion) -> Result<Job> {
        let path = format!("/api/jobs/{job_id}/complete");
        self.expect(self.request(Method::POST, &path).json(completion))
            .await
    }

    /// The just-in-time runner config of a GitHub job the caller holds the lease of.
    pub async fn runner_config(&self, job_id: JobId, fencing_token: i64) -> Result<RunnerConfig> {
        let path = format!("/api/jobs/{job_id}/runner-config");
        self.expect(
            self.request(Method::GET, &path)
                .query(&[("fencing_token", fencing_token.to_string())]),
        )
        .await
    }

    /// `GET /api/jobs/{id}`.
    pub async fn get_job(&self, job_id: JobId) -> Result<Job> {
        self.expect(self.request(Method::GET, &format!("/api/jobs/{job_id}")))
            .await
    }

    /// `GET /api/jobs` with query pairs such as `("status", "queued")`.
    pub async fn list_jobs(&self, query: &[(&str, String)]) -> Result<JobPage> {
        self.expect(self.request(Method::GET, "/api/jobs").query(query))
            .await
    }

    /// `POST /api/orgs`: creates org `id` named `name`, or renames it (admin).
    pub async fn upsert_org(&self, id: i64, name: &str) -> Result<crate::domain::Org> {
        self.expect(
            self.request(Method::POST, "/api/orgs")
                .json(&json!({"id": id, "name": name})),
        )
        .await
    }

    /// Sends a GitHub webhook delivery signed with `secret`; returns status and body.
    pub async fn send_webhook(
        &self,
        secret: &[u8],
        event: &str,
        delivery_id: &str,
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value)> {
        let signature = crate::webhook::sign(secret, &body);
        let response = self
            .http
            .post(format!("{}/webhooks/github", self.base))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery_id)
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or_else(|_| json!({}));
        Ok((status, body))
    }
}

fn error_from_status(status: StatusCode, message: String, retry_after: Option<u64>) -> Error {
    match status {
        StatusCode::BAD_REQUEST => Error::InvalidInput(message),
        StatusCode::UNAUTHORIZED => Error::Unauthenticated(message),
        StatusCode::FORBIDDEN => Error::Forbidden(message),
        StatusCode::NOT_FOUND => Error::NotFound { what: message },
        StatusCode::CONFLICT => Error::Conflict(message),
        StatusCode::PAYLOAD_TOO_LARGE => Error::InvalidInput(message),
        StatusCode::TOO_MANY_REQUESTS => Error::RateLimited {
            org_id: 0,
            retry_after: Duration::from_secs(retry_after.unwrap_or(1)),
        },
        s if s.is_server_error() => {
            Error::Unavailable(format!("control plane answered {s}: {message}"))
        }
        s => Error::Internal(format!("unexpected status {s}: {message}")),
    }
}

pub use crate::domain::RunnerConfig;

#[async_trait::async_trait]
impl crate::job_source::JobSource for ControlPlaneClient {
    async fn lease(&self, wait: Duration, labels: Option<&[String]>) -> Result<Option<Lease>> {
        self.lease_matching(wait, labels).await
    }

    async fn heartbeat(&self, job_id: JobId, fencing_token: i64) -> Result<LeaseRenewal> {
        ControlPlaneClient::heartbeat(self, job_id, fencing_token).await
    }

    async fn complete(&self, job_id: JobId, completion: &Completion) -> Result<Job> {
        ControlPlaneClient::complete(self, job_id, completion).await
    }

    async fn runner_config(&self, job_id: JobId, fencing_token: i64) -> Result<RunnerConfig> {
        ControlPlaneClient::runner_config(self, job_id, fencing_token).await
    }

    async fn workspace(&self, job_id: JobId, fencing_token: i64) -> Result<Vec<u8>> {
        let path = format!("/api/jobs/{job_id}/workspace");
        let builder = self
            .request(Method::GET, &path)
            .query(&[("fencing_token", fencing_token.to_string())]);
        Ok(self.bytes(builder).await?.to_vec())
    }
}

/// The error an unsuccessful answer stands for: its status, its JSON `error`
/// message and its `Retry-After`.
async fn error_of(response: reqwest::Response) -> Error {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body: serde_json::Value = response.json().await.unwrap_or_else(|_| json!({}));
    let message = body
        .get("error")
        .and_then(|v| v.as_str())
        .unwrap_or("no error message")
        .to_string();
    error_from_status(status, message, retry_after)
}

/// `GET /api/orgs`.
#[derive(serde::Deserialize)]
struct OrgList {
    orgs: Vec<Org>,
}

/// `GET /api/analytics/metadata`.
#[derive(serde::Deserialize)]
struct MetadataAnswer {
    values: Vec<MetadataCount>,
}

/// A job filter as `GET /api/jobs` query parameters.
fn filter_query(filter: &JobFilter) -> Vec<(&'static str, String)> {
    let mut query = vec![("limit", filter.limit.to_string())];
    let mut add = |name: &'static str, value: Option<String>| {
        if let Some(value) = value {
            query.push((name, value));
        }
    };
    add("org_id", filter.org_id.map(|id| id.to_string()));
    add("status", filter.status.map(|s| s.as_str().to_string()));
    add("repo", filter.repo.clone());
    add("label", filter.label.clone());
    add("metadata_key", filter.metadata_key.clone());
    add("metadata_value", filter.metadata_value.clone());
    add("cursor", filter.cursor.map(|c| c.to_string()));
    query
}

#[async_trait::async_trait]
impl ControlPlaneApi for ControlPlaneClient {
    async fn upsert_org(&self, id: OrgId, name: &str) -> Result<Org> {
        ControlPlaneClient::upsert_org(self, id, name).await
    }

    async fn orgs(&self) -> Result<Vec<Org>> {
        let list: OrgList = self.expect(self.request(Method::GET, "/api/orgs")).await?;
        Ok(list.orgs)
    }

    async fn submit(&self, request: JobRequest) -> Result<Job> {
        self.submit_job(&request).await
    }

    async fn put_workspace(
        &self,
        org_id: Option<OrgId>,
        digest: &str,
        archive: Vec<u8>,
    ) -> Result<WorkspaceReceipt> {
        let mut builder = self
            .request(Method::PUT, &format!("/api/workspaces/{digest}"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(archive);
        if let Some(org_id) = org_id {
            builder = builder.query(&[("org_id", org_id.to_string())]);
        }
        self.expect(builder).await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<JobPage> {
        self.expect(
            self.request(Method::GET, "/api/jobs")
                .query(&filter_query(&filter)),
        )
        .await
    }

    async fn job(&self, id: JobId) -> Result<Job> {
        self.get_job(id).await
    }

    async fn cancel(&self, id: JobId) -> Result<Job> {
        self.expect(self.request(Method::POST, &format!("/api/jobs/{id}/cancel")))
            .await
    }

    async fn metadata_values(
        &self,
        key: &str,
        org_id: Option<OrgId>,
        limit: u32,
    ) -> Result<Vec<MetadataCount>> {
        let mut query = vec![("key", key.to_string()), ("limit", limit.to_string())];
        if let Some(org_id) = org_id {
            query.push(("org_id", org_id.to_string()));
        }
        let answer: MetadataAnswer = self
            .expect(
                self.request(Method::GET, "/api/analytics/metadata")
                    .query(&query),
            )
            .await?;
        Ok(answer.values)
    }

    async fn observability_orgs(&self, query: &OrgsQuery) -> Result<OrgsReport> {
        self.expect(
            self.request(Method::GET, "/api/observability/orgs")
                .query(&query.params()),
        )
        .await
    }

    async fn metadata_presets(&self) -> Result<MetadataPresets> {
        self.expect(self.request(Method::GET, "/api/jobs/metadata/presets"))
            .await
    }

    async fn metadata_histogram(&self, query: &HistogramQuery) -> Result<MetadataHistogram> {
        self.expect(
            self.request(Method::GET, "/api/jobs/metadata/histogram")
                .query(&query.params()),
        )
        .await
    }

    async fn metadata_trend(&self, query: &TrendQuery) -> Result<MetadataTrend> {
        self.expect(
            self.request(Method::GET, "/api/jobs/metadata/trend")
                .query(&query.params()),
        )
        .await
    }

    async fn job_summary(&self, query: &SummaryQuery) -> Result<JobSummary> {
        self.expect(
            self.request(Method::GET, "/api/jobs/summary")
                .query(&query.params()),
        )
        .await
    }
}
