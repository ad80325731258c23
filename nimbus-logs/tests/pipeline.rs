//! The logging pipeline over real HTTP, on SQLite and on a real ClickHouse:
//! auth and org scoping, whole-batch rejection, truncation, backpressure, SSE
//! follow, metadata, stats — and a million lines from four senders with failures
//! and duplicate sends injected, which must leave exactly a million rows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::Secret;
use nimbus_logs::pipeline::{self, Backend, Pipeline, PipelineConfig};
use nimbus_logs::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use nimbus_logs::sink::sqlite::SqliteSink;
use nimbus_logs::testsuite::{fresh_job_id, T0};
use nimbus_logs::{LogQuery, LogRecord, LogSink, MetadataRecord, Stats};
use serde_json::Value;

const SECRET: &str = "logging-pipeline-test-secret";

struct Server {
    base: String,
    agent: String,
    client: reqwest::Client,
}

impl Server {
    fn token(role: Role, org: Option<i64>) -> String {
        JwtKeys::new(&Secret::new(SECRET))
            .mint("test", role, org, Duration::from_secs(3600))
            .expect("token")
    }

    async fn post_logs(&self, token: &str, body: String) -> reqwest::Response {
        self.client
            .post(format!("{}/api/logs", self.base))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn config(max_buffered_lines: usize) -> PipelineConfig {
    PipelineConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        backend: Backend::Sqlite {
            path: "unused".into(),
        },
        jwt_secret: Secret::new(SECRET),
        metrics_token: None,
        log_retention_days: 30,
        metadata_retention_days: 90,
        max_buffered_lines,
        flush_lines: 50_000.min(max_buffered_lines),
        flush_interval: Duration::from_millis(10),
    }
}

async fn start(sink: Arc<dyn LogSink>, max_buffered_lines: usize) -> Server {
    let config = config(max_buffered_lines);
    let state = Pipeline::new(&config, sink).expect("pipeline");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = pipeline::serve(&config, state, listener, std::future::pending()).await;
    });
    Server {
        base,
        agent: Server::token(Role::Agent, None),
        client: reqwest::Client::new(),
    }
}

fn ndjson(records: &[LogRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("json"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn line(job: u64, seq: u64, org: u64, message: &str) -> LogRecord {
    nimbus_logs::testsuite::line(job, seq, org, "info", message)
}

async fn sqlite() -> Option<Arc<dyn LogSink>> {
    let path = std::env::temp_dir().join(format!(
        "nimbus-pipeline-{}-{}.db",
        std::process::id(),
        fresh_job_id()
    ));
    Some(Arc::new(SqliteSink::open(&path).await.expect("sqlite")))
}

async fn clickhouse() -> Option<Arc<dyn LogSink>> {
    let sink = match std::env::var("NIMBUS_TEST_CLICKHOUSE_URL") {
        Ok(url) => Some(Arc::new(
            ClickHouseSink::connect(&ClickHouseConfig {
                url,
                user: None,
                password: None,
                database: format!("nimbus_pipeline_{}", fresh_job_id()),
                log_retention_days: 3650,
                metadata_retention_days: 3650,
            })
            .await
            .expect("clickhouse"),
        ) as Arc<dyn LogSink>),
        Err(_) => None,
    };
    nimbus_logs::testsuite::require(sink, "ClickHouse (NIMBUS_TEST_CLICKHOUSE_URL)")
}

async fn api_behaves(sink: Arc<dyn LogSink>) {
    let server = start(sink, 100_000).await;
    let job = fresh_job_id();
    let org7 = Server::token(Role::Org, Some(7));
    let org8 = Server::token(Role::Org, Some(8));

    // Writers only, with a token.
    let body = ndjson(&[line(job, 1, 7, "hello")]);
    let unauthenticated = server
        .client
        .post(format!("{}/api/logs", server.base))
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(server.post_logs(&org7, body.clone()).await.status(), 403);

    // One bad record refuses the whole batch, naming it; nothing is written.
    let bad = format!(
        "{}\n{{\"job_id\": {job}, \"seq\": 3}}\n",
        ndjson(&[line(job, 1, 7, "a"), line(job, 2, 7, "b")])
    );
    let response = server.post_logs(&server.agent, bad).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["index"], 2, "{error}");
    let (_, lines) = server
        .get(&server.agent, &format!("/api/logs?job_id={job}"))
        .await;
    assert_eq!(lines["lines"].as_array().map(Vec::len), Some(0));

    // A long line is truncated, invalid UTF-8 replaced, both stored.
    let long = "x".repeat(100_000);
    let mut body = ndjson(&[
        line(job, 1, 7, "ok"),
        line(job, 2, 7, &long),
        line(job, 3, 7, "bad-@-byte"),
    ])
    .into_bytes();
    let at = body.iter().position(|&b| b == b'@').expect("marker");
    body[at] = 0xfe;
    let response = server
        .client
        .post(format!("{}/api/logs", server.base))
        .bearer_auth(&server.agent)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let (status, lines) = server
        .get(&org7, &format!("/api/logs?job_id={job}&order=oldest"))
        .await;
    assert_eq!(status, 200);
    let lines = lines["lines"].as_array().cloned().unwrap_or_default();
    assert_eq!(lines.len(), 3);
    let second = lines[1]["message"].as_str().unwrap_or("");
    assert!(second.len() <= 64 * 1024 && second.ends_with("[truncated by nimbus]"));
    assert_eq!(lines[2]["message"], "bad-\u{fffd}-byte");

    // Org tokens see only their org.
    let (_, other) = server.get(&org8, &format!("/api/logs?job_id={job}")).await;
    assert_eq!(other["lines"].as_array().map(Vec::len), Some(0));
    let (status, _) = server.get(&org7, "/api/logs?level=loud").await;
    assert_eq!(status, 400);

    // Metadata and stats.
    let metadata = MetadataRecord {
        job_id: job,
        org_id: Some(7),
        repo_id: Some(1),
        key: "python".into(),
        value: "3.12".into(),
        ts: T0,
    };
    let response = server
        .client
        .post(format!("{}/api/metadata", server.base))
        .bearer_auth(&server.agent)
        .json(&vec![metadata])
        .send()
        .await
        .expect("metadata");
    assert_eq!(response.status(), 200);
    let (_, rows) = server.get(&org7, &format!("/api/metadata/{job}")).await;
    assert_eq!(rows["metadata"][0]["value"], "3.12");
    let (_, rows) = server.get(&org8, &format!("/api/metadata/{job}")).await;
    assert_eq!(rows["metadata"].as_array().map(Vec::len), Some(0));
    let (status, stats) = server.get(&org7, "/api/stats").await;
    assert_eq!(status, 200);
    assert!(stats["lines"].as_u64().unwrap_or(0) >= 3, "{stats}");
    assert!(stats["per_level"]["info"].as_u64().unwrap_or(0) >= 3);
    assert!(stats["last_ingest"].is_string());
}

async fn follow_receives_new_lines_in_seq_order(sink: Arc<dyn LogSink>) {
    let server = start(sink, 100_000).await;
    let job = fresh_job_id();
    assert_eq!(
        server
            .post_logs(&server.agent, ndjson(&[line(job, 1, 1, "before")]))
            .await
            .status(),
        200
    );
    let mut response = server
        .client
        .get(format!("{}/api/logs/{job}/follow", server.base))
        .bearer_auth(&server.agent)
        .header("last-event-id", "1")
        .send()
        .await
        .expect("follow");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/event-stream"));
    // Lines written after the follower connected, out of order across requests.
    let poster = reqwest::Client::new();
    let (base, agent) = (server.base.clone(), server.agent.clone());
    tokio::spawn(async move {
        for seqs in [vec![2u64, 3], vec![5, 4], vec![6]] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let records: Vec<LogRecord> = seqs
                .iter()
                .map(|&s| line(job, s, 1, &format!("live {s}")))
                .collect();
            let _ = poster
                .post(format!("{base}/api/logs"))
                .bearer_auth(&agent)
                .body(ndjson(&records))
                .send()
                .await;
        }
    });
    let mut text = String::new();
    let mut seqs: Vec<u64> = Vec::new();
    while seqs.len() < 5 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("a line within 10 s")
            .expect("chunk")
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                let record: LogRecord = serde_json::from_str(data.trim()).expect("line json");
                seqs.push(record.seq);
            }
        }
    }
    assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
}

/// A sink that holds writes until released: for backpressure.
struct GatedSink {
    inner: Arc<dyn LogSink>,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl LogSink for GatedSink {
    fn name(&self) -> &'static str {
        "gated"
    }
    async fn write(&self, batch: &[LogRecord]) -> nimbus_logs::Result<u64> {
        let _permit = self.gate.acquire().await;
        self.inner.write(batch).await
    }
    async fn stored_seqs(&self, job_id: u64) -> nimbus_logs::Result<Vec<u64>> {
        self.inner.stored_seqs(job_id).await
    }
    async fn query(&self, query: &LogQuery) -> nimbus_logs::Result<Vec<LogRecord>> {
        self.inner.query(query).await
    }
    async fn prune(&self, older_than: i64) -> nimbus_logs::Result<u64> {
        self.inner.prune(older_than).await
    }
    async fn write_metadata(&self, rows: &[MetadataRecord]) -> nimbus_logs::Result<u64> {
        self.inner.write_metadata(rows).await
    }
    async fn query_metadata(
        &self,
        job_id: u64,
        org_id: Option<u64>,
    ) -> nimbus_logs::Result<Vec<MetadataRecord>> {
        self.inner.query_metadata(job_id, org_id).await
    }
    async fn prune_metadata(&self, older_than: i64) -> nimbus_logs::Result<u64> {
        self.inner.prune_metadata(older_than).await
    }
    async fn stats(&self, org_id: Option<u64>) -> nimbus_logs::Result<Stats> {
        self.inner.stats(org_id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_answers_503_with_retry_after_and_loses_nothing() {
    let inner = sqlite().await.expect("sqlite");
    let gated = Arc::new(GatedSink {
        inner: inner.clone(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let server = start(gated.clone(), 1000).await;
    let job = fresh_job_id();
    let first: Vec<LogRecord> = (1..=800).map(|s| line(job, s, 1, "m")).collect();
    let second: Vec<LogRecord> = (801..=1000).map(|s| line(job, s, 1, "m")).collect();
    let third: Vec<LogRecord> = (1001..=1300).map(|s| line(job, s, 1, "m")).collect();
    let (c, b, a) = (
        server.client.clone(),
        server.base.clone(),
        server.agent.clone(),
    );
    let body = ndjson(&first);
    let pending = tokio::spawn(async move {
        c.post(format!("{b}/api/logs"))
            .bearer_auth(&a)
            .body(body)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (c, b, a) = (
        server.client.clone(),
        server.base.clone(),
        server.agent.clone(),
    );
    let body = ndjson(&second);
    let fits = tokio::spawn(async move {
        c.post(format!("{b}/api/logs"))
            .bearer_auth(&a)
            .body(body)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = server.post_logs(&server.agent, ndjson(&third)).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    gated.gate.add_permits(1000);
    assert_eq!(pending.await.expect("task").expect("first").status(), 200);
    assert_eq!(fits.await.expect("task").expect("second").status(), 200);
    // The refused batch, retried, is accepted now.
    assert_eq!(
        server
            .post_logs(&server.agent, ndjson(&third))
            .await
            .status(),
        200
    );
    assert_eq!(inner.stored_seqs(job).await.expect("seqs").len(), 1300);
}

/// Fails some writes before writing and some after (the ack is lost), like a
/// flaky database or network: every failure answers 503 and the sender retries.
struct FlakySink {
    inner: Arc<dyn LogSink>,
    writes: AtomicU64,
}

#[async_trait]
impl LogSink for FlakySink {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn write(&self, batch: &[LogRecord]) -> nimbus_logs::Result<u64> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n % 11 == 5 {
            return Err(nimbus_logs::Error::Sink(
                "injected: failed before writing".into(),
            ));
        }
        let written = self.inner.write(batch).await?;
        if n % 7 == 3 {
            return Err(nimbus_logs::Error::Sink(
                "injected: written, acknowledgement lost".into(),
            ));
        }
        Ok(written)
    }
    async fn stored_seqs(&self, job_id: u64) -> nimbus_logs::Result<Vec<u64>> {
        self.inner.stored_seqs(job_id).await
    }
    async fn query(&self, query: &LogQuery) -> nimbus_logs::Result<Vec<LogRecord>> {
        self.inner.query(query).await
    }
    async fn prune(&self, older_than: i64) -> nimbus_logs::Result<u64> {
        self.inner.prune(older_than).await
    }
    async fn write_metadata(&self, rows: &[MetadataRecord]) -> nimbus_logs::Result<u64> {
        self.inner.write_metadata(rows).await
    }
    async fn query_metadata(
        &self,
        job_id: u64,
        org_id: Option<u64>,
    ) -> nimbus_logs::Result<Vec<MetadataRecord>> {
        self.inner.query_metadata(job_id, org_id).await
    }
    async fn prune_metadata(&self, older_than: i64) -> nimbus_logs::Result<u64> {
        self.inner.prune_metadata(older_than).await
    }
    async fn stats(&self, org_id: Option<u64>) -> nimbus_logs::Result<Stats> {
        self.inner.stats(org_id).await
    }
}

const SENDERS: u64 = 4;
const LINES_PER_SENDER: u64 = 250_000;
const BATCH: u64 = 2_000;

async fn a_million_lines_with_retries_leave_a_million_rows(inner: Arc<dyn LogSink>) {
    let sink = Arc::new(FlakySink {
        inner: inner.clone(),
        writes: AtomicU64::new(0),
    });
    let server = Arc::new(start(sink, 200_000).await);
    let org = fresh_job_id() % 1_000_000 + 1_000;
    let jobs: Vec<u64> = (0..SENDERS).map(|_| fresh_job_id()).collect();
    let mut senders = Vec::new();
    for (index, &job) in jobs.iter().enumerate() {
        let server = server.clone();
        senders.push(tokio::spawn(async move {
            let mut retries = 0u64;
            let mut seq = 1;
            while seq <= LINES_PER_SENDER {
                let end = (seq + BATCH - 1).min(LINES_PER_SENDER);
                let records: Vec<LogRecord> = (seq..=end)
                    .map(|s| line(job, s, org, "a log line of a job"))
                    .collect();
                let body = ndjson(&records);
                // Every fifth batch the sender also "loses" the answer and sends it again.
                let sends = if (seq / BATCH + index as u64) % 5 == 0 {
                    2
                } else {
                    1
                };
                for _ in 0..sends {
                    loop {
                        let response = server.post_logs(&server.agent, body.clone()).await;
                        if response.status() == 200 {
                            break;
                        }
                        assert_eq!(response.status(), 503, "only 503s are retried");
                        retries += 1;
                    }
                }
                retries += sends - 1;
                seq = end + 1;
            }
            retries
        }));
    }
    let mut retries = 0;
    for sender in senders {
        retries += sender.await.expect("sender");
    }
    assert!(retries > 0, "failures and duplicate sends were injected");
    let stats = inner.stats(Some(org)).await.expect("stats");
    assert_eq!(
        stats.lines,
        SENDERS * LINES_PER_SENDER,
        "exactly a million rows"
    );
    for &job in &jobs {
        let mut seqs = inner.stored_seqs(job).await.expect("seqs");
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(
            seqs.len() as u64,
            LINES_PER_SENDER,
            "every line of job {job}, once"
        );
    }
}

mod on_sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_behaves() {
        super::api_behaves(sqlite().await.expect("sqlite")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_receives_new_lines_in_seq_order() {
        super::follow_receives_new_lines_in_seq_order(sqlite().await.expect("sqlite")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_million_lines_with_retries_leave_a_million_rows() {
        super::a_million_lines_with_retries_leave_a_million_rows(sqlite().await.expect("sqlite"))
            .await;
    }
}

mod on_clickhouse {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_behaves() {
        if let Some(sink) = clickhouse().await {
            super::api_behaves(sink).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_receives_new_lines_in_seq_order() {
        if let Some(sink) = clickhouse().await {
            super::follow_receives_new_lines_in_seq_order(sink).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_million_lines_with_retries_leave_a_million_rows() {
        if let Some(sink) = clickhouse().await {
            super::a_million_lines_with_retries_leave_a_million_rows(sink).await;
        }
    }
}
