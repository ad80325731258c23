//! The logging pipeline over real HTTP, on SQLite and on a real ClickHouse:
//! auth and org scoping, whole-batch rejection, truncation, backpressure, SSE
//! follow, metadata, stats — and a million lines from four senders with failures
//! and duplicate sends injected, which must leave exactly a million rows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::auth::{IngestScope, JwtKeys, Role};
use nimbus_core::domain::log_seq_base;
use nimbus_core::Secret;
use nimbus_logs::pipeline::{self, Backend, Pipeline, PipelineConfig};
use nimbus_logs::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use nimbus_logs::sink::layer::{Layered, WriteLayer};
use nimbus_logs::sink::sqlite::SqliteSink;
use nimbus_logs::testsuite::{fresh_job_id, T0};
use nimbus_logs::{LogRecord, LogSink, MetadataRecord};
use serde_json::Value;

const SECRET: &str = "logging-pipeline-test-secret";

struct Server {
    base: String,
    /// Writes anything (operators); jobs' lines go with their leases' tokens.
    admin: String,
    client: reqwest::Client,
}

impl Server {
    fn token(role: Role, org: Option<i64>) -> String {
        JwtKeys::new(&Secret::new(SECRET))
            .mint("test", role, org, Duration::from_secs(3600))
            .expect("token")
    }

    /// The ingest token the control plane hands out with the lease (first lease)
    /// of `job` of `org`.
    fn ingest(job: u64, org: u64) -> String {
        Server::ingest_lease(job, org, 1)
    }

    fn ingest_lease(job: u64, org: u64, fencing_token: i64) -> String {
        JwtKeys::new(&Secret::new(SECRET))
            .mint_ingest(
                &IngestScope {
                    job_id: job as i64,
                    org_id: org as i64,
                    repo_id: Some(1),
                    agent_id: "host-1".into(),
                    seq_base: log_seq_base(fencing_token),
                },
                Duration::from_secs(3600),
            )
            .expect("ingest token")
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
        trusted_proxies: Default::default(),
        log_retention_days: 30,
        metadata_retention_days: 90,
        max_buffered_lines,
        flush_lines: 50_000.min(max_buffered_lines),
        flush_interval: Duration::from_millis(10),
        follow: Default::default(),
    }
}

async fn start(sink: Arc<dyn LogSink>, max_buffered_lines: usize) -> Server {
    start_with(sink, config(max_buffered_lines)).await
}

async fn start_with(sink: Arc<dyn LogSink>, config: PipelineConfig) -> Server {
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
        admin: Server::token(Role::Admin, None),
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
    let writer = Server::ingest(job, 7);
    let response = server.post_logs(&writer, bad).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["index"], 2, "{error}");
    let (_, lines) = server
        .get(&server.admin, &format!("/api/logs?job_id={job}"))
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
        .bearer_auth(&writer)
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
        .bearer_auth(&server.admin)
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
    let writer = Server::ingest(job, 1);
    assert_eq!(
        server
            .post_logs(&writer, ndjson(&[line(job, 1, 1, "before")]))
            .await
            .status(),
        200
    );
    let mut response = server
        .client
        .get(format!("{}/api/logs/{job}/follow", server.base))
        .bearer_auth(Server::token(Role::Org, Some(1)))
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
    let (base, agent) = (server.base.clone(), writer.clone());
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

/// Log ingest is tied to a lease: an agent token writes nothing; a lease's ingest
/// token writes its own job's lines only, in its own seq range, and what a line
/// says of its org, repository and agent is replaced by what the token says. So
/// no one can plant lines in another job's log, nor pre-send seqs that would make
/// the pipeline drop a later lease's real lines as duplicates.
async fn writers_are_held_to_their_lease(sink: Arc<dyn LogSink>) {
    let server = start(sink, 100_000).await;
    let (job, other_job) = (fresh_job_id(), fresh_job_id());
    let admin = &server.admin;

    // An agent token (any agent's) is refused: lines need the lease's token.
    let agent = Server::token(Role::Agent, None);
    let response = server
        .post_logs(&agent, ndjson(&[line(job, 1, 7, "planted")]))
        .await;
    assert_eq!(
        response.status(),
        401,
        "an agent token is not for this service"
    );
    let agent_for_logs = JwtKeys::new(&Secret::new(SECRET))
        .mint_for(
            "host-9",
            Role::Agent,
            None,
            &[nimbus_core::auth::Audience::LoggingPipeline],
            Duration::from_secs(60),
        )
        .expect("token");
    let response = server
        .post_logs(&agent_for_logs, ndjson(&[line(job, 1, 7, "planted")]))
        .await;
    assert_eq!(response.status(), 403);

    // The ingest token of another job's lease cannot write this job's lines.
    let others = Server::ingest(other_job, 8);
    let response = server
        .post_logs(&others, ndjson(&[line(job, 1, 7, "planted")]))
        .await;
    assert_eq!(response.status(), 403);
    let (_, lines) = server.get(admin, &format!("/api/logs?job_id={job}")).await;
    assert_eq!(
        lines["lines"].as_array().map(Vec::len),
        Some(0),
        "nothing planted"
    );

    // What a line claims of org, repository and agent is the token's.
    let mine = Server::ingest(job, 7);
    let mut claim = line(job, 1, 99, "hello");
    claim.agent_id = "someone-else".into();
    claim.repo_id = Some(4242);
    assert_eq!(
        server.post_logs(&mine, ndjson(&[claim])).await.status(),
        200
    );
    let (_, lines) = server.get(admin, &format!("/api/logs?job_id={job}")).await;
    assert_eq!(lines["lines"][0]["org_id"], 7, "{lines}");
    assert_eq!(lines["lines"][0]["agent_id"], "host-1");
    assert_eq!(lines["lines"][0]["repo_id"], 1);
    let (_, seen) = server
        .get(
            &Server::token(Role::Org, Some(99)),
            &format!("/api/logs?job_id={job}"),
        )
        .await;
    assert_eq!(
        seen["lines"].as_array().map(Vec::len),
        Some(0),
        "org 99 got nothing"
    );

    // The first lease cannot write into the second lease's range (pre-sending the
    // seqs the next attempt will use), and the second writes its own lines.
    let second_base = log_seq_base(2);
    let response = server
        .post_logs(&mine, ndjson(&[line(job, second_base + 1, 7, "pre-sent")]))
        .await;
    assert_eq!(response.status(), 400);
    let second = Server::ingest_lease(job, 7, 2);
    assert_eq!(
        server
            .post_logs(
                &second,
                ndjson(&[line(job, second_base + 1, 7, "attempt 2")])
            )
            .await
            .status(),
        200
    );
    let response = server
        .post_logs(&second, ndjson(&[line(job, 2, 7, "back in time")]))
        .await;
    assert_eq!(
        response.status(),
        400,
        "the second lease cannot rewrite the first's"
    );
    let (_, lines) = server
        .get(admin, &format!("/api/logs?job_id={job}&order=oldest"))
        .await;
    let messages: Vec<&str> = lines["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert_eq!(messages, vec!["hello", "attempt 2"]);

    // Agents read nothing: not lines, not stats, not metadata, not a follow.
    let agent_reader = agent_for_logs;
    for path in [
        format!("/api/logs?job_id={job}"),
        "/api/stats".to_string(),
        format!("/api/metadata/{job}"),
        format!("/api/logs/{job}/follow"),
    ] {
        let (status, _) = server.get(&agent_reader, &path).await;
        assert_eq!(status, 403, "{path}");
    }
    // Nor do they, or orgs, write metadata: that is the control plane's (admin).
    let row = serde_json::json!([{"job_id": job, "org_id": 7, "key": "k", "value": "v", "ts": T0}]);
    for token in [&agent_reader, &Server::token(Role::Org, Some(7)), &mine] {
        let response = server
            .client
            .post(format!("{}/api/metadata", server.base))
            .bearer_auth(token)
            .json(&row)
            .send()
            .await
            .expect("metadata");
        assert!(
            matches!(response.status().as_u16(), 401 | 403),
            "{}",
            response.status()
        );
    }
}

/// Live follows are bounded: per org and in all, and in time (idle and total).
async fn follows_are_bounded(sink: Arc<dyn LogSink>) {
    let mut config = config(100_000);
    config.follow = nimbus_logs::pipeline::FollowLimits {
        max_total: 3,
        max_per_org: 2,
        idle: Duration::from_millis(800),
        max_duration: Duration::from_secs(3600),
    };
    let server = start_with(sink, config).await;
    let org = Server::token(Role::Org, Some(5));
    let open = |token: String, job: u64| {
        let client = server.client.clone();
        let url = format!("{}/api/logs/{job}/follow", server.base);
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("follow")
        }
    };
    // A job that does not exist: the follow ends once idle, saying so.
    let missing = fresh_job_id();
    let mut first = open(org.clone(), missing).await;
    let second = open(org.clone(), missing).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open(org.clone(), missing).await;
    assert_eq!(third.status(), 429, "a third follow of one org");
    let other_org = open(Server::token(Role::Org, Some(6)), missing).await;
    assert_eq!(other_org.status(), 200, "another org has its own share");
    let over_total = open(Server::token(Role::Org, Some(7)), missing).await;
    assert_eq!(over_total.status(), 429, "past the total");
    drop(other_org);
    let mut text = String::new();
    while !text.contains("event: end") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), first.chunk())
            .await
            .expect("the idle follow ends within 10 s")
            .expect("chunk");
        match chunk {
            Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
            None => break,
        }
    }
    assert!(
        text.contains("event: end") && text.contains("idle"),
        "{text}"
    );
    drop(first);
    drop(second);
    // Ended and dropped follows give their places back.
    let mut freed = None;
    for _ in 0..50 {
        let response = open(org.clone(), missing).await;
        if response.status() == 200 {
            freed = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed.is_some(), "places came back");
}

/// Holds writes until released: for backpressure.
struct Gate(tokio::sync::Semaphore);

#[async_trait]
impl WriteLayer for Gate {
    async fn write(&self, inner: &dyn LogSink, batch: &[LogRecord]) -> nimbus_logs::Result<u64> {
        let _permit = self.0.acquire().await;
        inner.write(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_answers_503_with_retry_after_and_loses_nothing() {
    let inner = sqlite().await.expect("sqlite");
    let gated = Arc::new(Layered::new(
        inner.clone(),
        Gate(tokio::sync::Semaphore::new(0)),
    ));
    let server = start(gated.clone(), 1000).await;
    let job = fresh_job_id();
    let writer = Server::ingest(job, 1);
    let first: Vec<LogRecord> = (1..=800).map(|s| line(job, s, 1, "m")).collect();
    let second: Vec<LogRecord> = (801..=1000).map(|s| line(job, s, 1, "m")).collect();
    let third: Vec<LogRecord> = (1001..=1300).map(|s| line(job, s, 1, "m")).collect();
    let (c, b, a) = (server.client.clone(), server.base.clone(), writer.clone());
    let body = ndjson(&first);
    let pending = tokio::spawn(async move {
        c.post(format!("{b}/api/logs"))
            .bearer_auth(&a)
            .body(body)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (c, b, a) = (server.client.clone(), server.base.clone(), writer.clone());
    let body = ndjson(&second);
    let fits = tokio::spawn(async move {
        c.post(format!("{b}/api/logs"))
            .bearer_auth(&a)
            .body(body)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = server.post_logs(&writer, ndjson(&third)).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    gated.layer().0.add_permits(1000);
    assert_eq!(pending.await.expect("task").expect("first").status(), 200);
    assert_eq!(fits.await.expect("task").expect("second").status(), 200);
    // The refused batch, retried, is accepted now.
    assert_eq!(
        server.post_logs(&writer, ndjson(&third)).await.status(),
        200
    );
    assert_eq!(inner.stored_seqs(job).await.expect("seqs").len(), 1300);
}

/// The SQLite sink's disk fills up: batches are answered 503 with Retry-After and
/// none of their lines is stored; lines acknowledged before stay; once there is
/// room, the same batches retried are stored, each line exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_stores_nothing_half_and_recovers() {
    let Some(disk) = nimbus_core::testsuite::SmallDisk::mount("16m") else {
        return;
    };
    let sink: Arc<dyn LogSink> = Arc::new(
        SqliteSink::open(&disk.path().join("logs.db"))
            .await
            .expect("sqlite on the small disk"),
    );
    let server = start(sink.clone(), 100_000).await;
    let job = fresh_job_id();
    let writer = Server::ingest(job, 1);
    let message = "x".repeat(200);
    let batch = |from: u64| -> Vec<LogRecord> {
        (from..from + 2_000)
            .map(|s| line(job, s, 1, &message))
            .collect()
    };
    let first = server.post_logs(&writer, ndjson(&batch(1))).await;
    assert_eq!(first.status(), 200);
    let filler = disk.fill();
    let mut refused = Vec::new();
    for from in [2_001, 4_001, 6_001] {
        let response = server.post_logs(&writer, ndjson(&batch(from))).await;
        if response.status() == 200 {
            continue; // free pages inside the database file took it
        }
        assert_eq!(response.status(), 503, "a full disk is a retry-later");
        assert!(response.headers().contains_key("retry-after"));
        refused.push(from);
    }
    assert!(!refused.is_empty(), "the full disk refused a batch");
    let stored = sink.stored_seqs(job).await.expect("seqs");
    for from in &refused {
        assert!(
            !stored.contains(from) && !stored.contains(&(from + 1_999)),
            "nothing of a refused batch is stored"
        );
    }
    assert!(
        stored.contains(&1) && stored.contains(&2_000),
        "acknowledged lines stay"
    );
    std::fs::remove_file(&filler).expect("make room");
    for from in &refused {
        let retried = server.post_logs(&writer, ndjson(&batch(*from))).await;
        assert_eq!(retried.status(), 200, "room again");
    }
    let stored = sink.stored_seqs(job).await.expect("seqs");
    assert_eq!(stored.len(), 8_000, "every line exactly once");
}

/// Fails some writes before writing and some after (the ack is lost), like a
/// flaky database or network: every failure answers 503 and the sender retries.
struct Flaky {
    writes: AtomicU64,
}

#[async_trait]
impl WriteLayer for Flaky {
    async fn write(&self, inner: &dyn LogSink, batch: &[LogRecord]) -> nimbus_logs::Result<u64> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n % 11 == 5 {
            return Err(nimbus_logs::Error::Sink(
                "injected: failed before writing".into(),
            ));
        }
        let written = inner.write(batch).await?;
        if n % 7 == 3 {
            return Err(nimbus_logs::Error::Sink(
                "injected: written, acknowledgement lost".into(),
            ));
        }
        Ok(written)
    }
}

const SENDERS: u64 = 4;
const LINES_PER_SENDER: u64 = 250_000;
const BATCH: u64 = 2_000;

async fn a_million_lines_with_retries_leave_a_million_rows(inner: Arc<dyn LogSink>) {
    let sink = Arc::new(Layered::new(
        inner.clone(),
        Flaky {
            writes: AtomicU64::new(0),
        },
    ));
    let server = Arc::new(start(sink, 200_000).await);
    let org = fresh_job_id() % 1_000_000 + 1_000;
    let jobs: Vec<u64> = (0..SENDERS).map(|_| fresh_job_id()).collect();
    let mut senders = Vec::new();
    for (index, &job) in jobs.iter().enumerate() {
        let server = server.clone();
        senders.push(tokio::spawn(async move {
            let writer = Server::ingest(job, org);
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
                        let response = server.post_logs(&writer, body.clone()).await;
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
    async fn writers_are_held_to_their_lease() {
        super::writers_are_held_to_their_lease(sqlite().await.expect("sqlite")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_are_bounded() {
        super::follows_are_bounded(sqlite().await.expect("sqlite")).await;
    }

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
    async fn writers_are_held_to_their_lease() {
        if let Some(sink) = clickhouse().await {
            super::writers_are_held_to_their_lease(sink).await;
        }
    }

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
