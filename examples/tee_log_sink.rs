//! A custom `LogSink`: every line goes to an inner sink (SQLite here), and lines at
//! `error` level are also handed to a hook (an alerting system, say; here a
//! counter and stderr). It passes the shared sink suite (`nimbus-logs` feature
//! `testsuite`), then serves the real logging pipeline API.
//!
//! `cargo run -p nimbus-examples --example tee_log_sink`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::auth::{IngestScope, JwtKeys};
use nimbus_core::Secret;
use nimbus_logs::pipeline::{self, Backend, Pipeline, PipelineConfig};
use nimbus_logs::sink::sqlite::SqliteSink;
use nimbus_logs::{LogQuery, LogRecord, LogSink, MetadataRecord, Result, Stats};

struct TeeErrors {
    inner: Arc<dyn LogSink>,
    errors_seen: AtomicU64,
}

#[async_trait]
impl LogSink for TeeErrors {
    fn name(&self) -> &'static str {
        "tee-errors"
    }
    async fn write(&self, batch: &[LogRecord]) -> Result<u64> {
        // Durable first; the hook sees only what was stored.
        let written = self.inner.write(batch).await?;
        for record in batch.iter().filter(|r| r.level == "error") {
            self.errors_seen.fetch_add(1, Ordering::Relaxed);
            eprintln!("alert: job {} said: {}", record.job_id, record.message);
        }
        Ok(written)
    }
    async fn stored_seqs(&self, job_id: u64) -> Result<Vec<u64>> {
        self.inner.stored_seqs(job_id).await
    }
    async fn query(&self, query: &LogQuery) -> Result<Vec<LogRecord>> {
        self.inner.query(query).await
    }
    async fn prune(&self, older_than: i64) -> Result<u64> {
        self.inner.prune(older_than).await
    }
    async fn write_metadata(&self, rows: &[MetadataRecord]) -> Result<u64> {
        self.inner.write_metadata(rows).await
    }
    async fn query_metadata(
        &self,
        job_id: u64,
        org_id: Option<u64>,
    ) -> Result<Vec<MetadataRecord>> {
        self.inner.query_metadata(job_id, org_id).await
    }
    async fn prune_metadata(&self, older_than: i64) -> Result<u64> {
        self.inner.prune_metadata(older_than).await
    }
    async fn stats(&self, org_id: Option<u64>) -> Result<Stats> {
        self.inner.stats(org_id).await
    }
}

async fn tee(dir: &std::path::Path, name: &str) -> Arc<TeeErrors> {
    let inner = SqliteSink::open(&dir.join(format!("{name}.db")))
        .await
        .expect("sqlite");
    Arc::new(TeeErrors {
        inner: Arc::new(inner),
        errors_seen: AtomicU64::new(0),
    })
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("nimbus-example-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // 1. The shared suite every sink passes.
    use nimbus_logs::testsuite as suite;
    suite::writes_and_tails_in_seq_order(tee(&dir, "suite1").await).await;
    suite::duplicates_are_dropped(tee(&dir, "suite2").await).await;
    suite::queries_filter_by_org_level_time_and_seq(tee(&dir, "suite3").await).await;
    suite::metadata_rows_are_kept_per_key(tee(&dir, "suite4").await).await;
    println!("tee sink: shared LogSink suite passed");

    // 2. Behind the real pipeline API.
    let sink = tee(&dir, "pipeline").await;
    let secret = "example-logs-secret-0123456789";
    let config = PipelineConfig {
        listen: "127.0.0.1:0".parse()?,
        backend: Backend::Sqlite {
            path: dir.join("unused.db"),
        },
        jwt_secret: Secret::new(secret),
        metrics_token: None,
        trusted_proxies: Default::default(),
        log_retention_days: 30,
        metadata_retention_days: 90,
        max_buffered_lines: 10_000,
        flush_lines: 1_000,
        flush_interval: Duration::from_millis(1),
        follow: Default::default(),
    };
    let state = Pipeline::new(&config, sink.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        pipeline::serve(&config, state, listener, std::future::pending()).await
    });
    // What a host agent gets with its lease: the right to write job 7's lines.
    let token = JwtKeys::new(&Secret::new(secret)).mint_ingest(
        &IngestScope {
            job_id: 7,
            org_id: 1,
            repo_id: None,
            agent_id: "host-1".into(),
            seq_base: 0,
        },
        Duration::from_secs(60),
    )?;
    let lines = serde_json::json!([
        {"job_id": 7, "agent_id": "host-1", "org_id": 1, "level": "info", "message": "compiling", "ts": "2026-11-27T10:00:00Z", "seq": 1},
        {"job_id": 7, "agent_id": "host-1", "org_id": 1, "level": "error", "message": "test failed: disk full", "ts": "2026-11-27T10:00:01Z", "seq": 2}
    ]);
    let answer = reqwest::Client::new()
        .post(format!("{url}/api/logs"))
        .bearer_auth(&token)
        .json(&lines)
        .send()
        .await?;
    println!("POST /api/logs -> {}", answer.status());
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    let seen = sink.errors_seen.load(Ordering::Relaxed);
    println!("error lines handed to the hook: {seen}");
    if seen != 1 {
        return Err("the error line did not reach the hook".into());
    }
    Ok(())
}
