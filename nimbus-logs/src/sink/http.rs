//! A [`LogSink`] that is the logging pipeline, over its HTTP API: what a host agent
//! on another machine writes a job's lines to (with the lease's ingest token), and
//! what tools read through. The pipeline's answers become this crate's errors, so a
//! caller tells a refusal that retrying cannot change ([`Error::is_permanent`])
//! from a pipeline that is busy or away.

use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::Secret;
use serde_json::Value;

use super::{LogQuery, LogSink, Order, Stats};
use crate::error::{Error, Result};
use crate::record::{LogRecord, MetadataRecord};

/// The pipeline at `base_url`, called with `token`.
#[derive(Clone)]
pub struct HttpSink {
    http: reqwest::Client,
    base_url: String,
    token: Option<Secret>,
    /// Sent as the W3C `traceparent` header, so the pipeline's spans join the
    /// trace of the job whose lines these are.
    traceparent: Option<String>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// A sink over `http` (share one client among sinks: it pools connections).
    pub fn new(http: reqwest::Client, base_url: &str, token: Option<Secret>) -> Self {
        HttpSink {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
            traceparent: None,
        }
    }

    /// Requests carry `traceparent` (a job run's trace context).
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .timeout(Duration::from_secs(30));
        let request = match &self.traceparent {
            Some(traceparent) => request.header("traceparent", traceparent),
            None => request,
        };
        match &self.token {
            Some(token) => request.bearer_auth(token.expose()),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = request
            .send()
            .await
            .map_err(|e| Error::Sink(format!("logging pipeline at {}: {e}", self.base_url)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]
            .as_str()
            .unwrap_or("no error message")
            .to_string();
        Err(match status.as_u16() {
            400 | 413 | 422 => match body["index"].as_u64() {
                Some(index) => Error::InvalidRecord {
                    index: index as usize,
                    reason: message,
                },
                None => Error::InvalidInput(message),
            },
            401 => Error::Unauthenticated(message),
            403 | 404 => Error::Forbidden(message),
            408 | 429 | 503 => Error::Busy {
                retry_after_secs: retry_after.unwrap_or(1),
            },
            _ => Error::Sink(format!("logging pipeline answered {status}: {message}")),
        })
    }

    async fn lines(&self, query: &[(&str, String)]) -> Result<Vec<LogRecord>> {
        let body = self
            .send(self.request(reqwest::Method::GET, "/api/logs").query(query))
            .await?;
        serde_json::from_value(body["lines"].clone())
            .map_err(|e| Error::Sink(format!("the pipeline's lines: {e}")))
    }
}

#[async_trait]
impl LogSink for HttpSink {
    fn name(&self) -> &'static str {
        "http"
    }

    /// `POST /api/logs` as NDJSON; acknowledged once the pipeline stored it.
    async fn write(&self, batch: &[LogRecord]) -> Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut body = String::with_capacity(batch.len() * 160);
        for record in batch {
            let line = serde_json::to_string(record)
                .map_err(|e| Error::InvalidInput(format!("encoding a line: {e}")))?;
            body.push_str(&line);
            body.push('\n');
        }
        let answer = self
            .send(
                self.request(reqwest::Method::POST, "/api/logs")
                    .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                    .body(body),
            )
            .await?;
        Ok(answer["accepted"].as_u64().unwrap_or(batch.len() as u64))
    }

    async fn stored_seqs(&self, job_id: u64) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .lines(&[
                    ("job_id", job_id.to_string()),
                    ("after_seq", after.to_string()),
                    ("order", "oldest".into()),
                    ("limit", "10000".into()),
                ])
                .await?;
            let Some(last) = page.last().map(|r| r.seq) else {
                return Ok(seqs);
            };
            seqs.extend(page.iter().map(|r| r.seq));
            after = last;
        }
    }

    async fn query(&self, query: &LogQuery) -> Result<Vec<LogRecord>> {
        let mut params = vec![
            ("limit", query.limit.to_string()),
            (
                "order",
                match query.order {
                    Order::Newest => "newest",
                    Order::Oldest => "oldest",
                }
                .to_string(),
            ),
        ];
        if let Some(job) = query.job_id {
            params.push(("job_id", job.to_string()));
        }
        if let Some(level) = &query.level {
            params.push(("level", level.clone()));
        }
        if let Some(since) = query.since {
            params.push(("since", since.to_string()));
        }
        if let Some(after) = query.after_seq {
            params.push(("after_seq", after.to_string()));
        }
        // The token's org scopes the answer; an org filter is the token's business.
        self.lines(&params).await
    }

    async fn prune(&self, _older_than: i64) -> Result<u64> {
        Err(Error::InvalidInput(
            "the logging pipeline prunes by its own retention (NIMBUS_LOG_RETENTION_DAYS)".into(),
        ))
    }

    async fn write_metadata(&self, rows: &[MetadataRecord]) -> Result<u64> {
        let answer = self
            .send(
                self.request(reqwest::Method::POST, "/api/metadata")
                    .json(rows),
            )
            .await?;
        Ok(answer["written"].as_u64().unwrap_or(0))
    }

    async fn query_metadata(
        &self,
        job_id: u64,
        _org_id: Option<u64>,
    ) -> Result<Vec<MetadataRecord>> {
        let body = self
            .send(self.request(reqwest::Method::GET, &format!("/api/metadata/{job_id}")))
            .await?;
        serde_json::from_value(body["metadata"].clone())
            .map_err(|e| Error::Sink(format!("the pipeline's metadata: {e}")))
    }

    async fn prune_metadata(&self, _older_than: i64) -> Result<u64> {
        Err(Error::InvalidInput(
            "the logging pipeline prunes by its own retention (NIMBUS_METADATA_RETENTION_DAYS)"
                .into(),
        ))
    }

    async fn stats(&self, _org_id: Option<u64>) -> Result<Stats> {
        let body = self
            .send(self.request(reqwest::Method::GET, "/api/stats"))
            .await?;
        let numbers = |key: &str| -> std::collections::BTreeMap<String, u64> {
            body[key]
                .as_object()
                .map(|map| {
                    map.iter()
                        .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Stats {
            lines: body["lines"].as_u64().unwrap_or(0),
            bytes: body["bytes"].as_u64().unwrap_or(0),
            per_level: numbers("per_level"),
            per_org: numbers("per_org"),
            last_ingest: body["last_ingest"]
                .as_str()
                .and_then(crate::record::parse_rfc3339),
        })
    }
}
