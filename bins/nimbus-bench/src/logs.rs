//! Logging pipeline figures: ingest throughput over HTTP into each sink (100-byte
//! messages, batches of 1,000, several concurrent senders) and the latency of
//! "the last 1,000 lines of one job" among many millions of rows. For ClickHouse,
//! the same lines are also inserted straight over its HTTP interface
//! (`INSERT … FORMAT JSONEachRow`, what clickhouse-client would send) as a baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nimbus_core::auth::{IngestScope, JwtKeys};
use nimbus_core::Secret;
use nimbus_logs::pipeline::{self, Backend, Pipeline, PipelineConfig};
use nimbus_logs::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use nimbus_logs::sink::sqlite::SqliteSink;
use nimbus_logs::{LogQuery, LogRecord, LogSink, Order};
use serde::Serialize;

use crate::stats::{percentile, sorted};

#[derive(clap::Args)]
pub struct Args {
    /// Lines sent over HTTP per sink.
    #[arg(long, default_value_t = 1_000_000)]
    lines: u64,
    /// Rows in the table when query latency is measured (topped up directly).
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    #[arg(long, default_value_t = 4)]
    senders: u64,
    /// The pipeline's NIMBUS_LOGS_FLUSH_INTERVAL, in milliseconds (its default).
    #[arg(long, default_value_t = 1)]
    flush_ms: u64,
    /// ClickHouse HTTP URL; without it only SQLite is measured.
    #[arg(long)]
    clickhouse_url: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct SinkReport {
    sink: String,
    lines: u64,
    lines_per_second: f64,
    rows_for_query: u64,
    query_p50_ms: f64,
    query_p99_ms: f64,
}

#[derive(Serialize)]
struct Report {
    sinks: Vec<SinkReport>,
    clickhouse_direct_lines_per_second: Option<f64>,
    senders: u64,
    batch: u64,
}

const BATCH: u64 = 1_000;
const SECRET: &str = "nimbus-bench-logs";
/// 100 bytes, like a typical CI log line.
const MESSAGE: &str = "compiling nimbus-logs v0.1.0 (/work/nimbus-logs) -- step 14 of 73, 2 warnings so far, ok, continue";

fn record(job: u64, seq: u64) -> LogRecord {
    LogRecord {
        job_id: job,
        agent_id: "bench-host".into(),
        org_id: Some(job % 16 + 1),
        repo_id: Some(job % 64 + 1),
        level: if seq % 10 == 0 { "warn" } else { "info" }.into(),
        message: MESSAGE.into(),
        ts: 1_795_766_400_000 + seq as i64,
        seq,
    }
}

fn ndjson(job: u64, from: u64, to: u64) -> String {
    let mut body = String::with_capacity(((to - from + 1) * 220) as usize);
    for seq in from..=to {
        body.push_str(&serde_json::to_string(&record(job, seq)).unwrap_or_default());
        body.push('\n');
    }
    body
}

pub async fn run(args: Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("nimbus-bench-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut sinks: Vec<(String, Arc<dyn LogSink>)> = vec![(
        "sqlite".into(),
        Arc::new(SqliteSink::open(&dir.join("logs.db")).await?),
    )];
    let mut direct = None;
    if let Some(url) = &args.clickhouse_url {
        let database = format!("nimbus_bench_{}", std::process::id());
        let sink = ClickHouseSink::connect(&ClickHouseConfig {
            url: url.clone(),
            user: None,
            password: None,
            database: database.clone(),
            log_retention_days: 3650,
            metadata_retention_days: 3650,
        })
        .await?;
        sinks.push(("clickhouse".into(), Arc::new(sink)));
        direct = Some(database);
    }
    let mut report = Report {
        sinks: Vec::new(),
        clickhouse_direct_lines_per_second: None,
        senders: args.senders,
        batch: BATCH,
    };
    for (name, sink) in sinks {
        eprintln!("bench: logs into {name}");
        report.sinks.push(measure(&name, sink, &args).await?);
    }
    if let (Some(url), Some(database)) = (&args.clickhouse_url, direct) {
        eprintln!("bench: the same lines straight into ClickHouse");
        report.clickhouse_direct_lines_per_second =
            Some(direct_insert(url, &database, args.lines).await?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for s in &report.sinks {
            println!(
                "{}: {:.0} lines/s over HTTP; last 1,000 lines of a job among {} rows: p50 {:.1} ms, p99 {:.1} ms",
                s.sink, s.lines_per_second, s.rows_for_query, s.query_p50_ms, s.query_p99_ms
            );
        }
        if let Some(direct) = report.clickhouse_direct_lines_per_second {
            println!("clickhouse direct INSERT FORMAT JSONEachRow: {direct:.0} lines/s");
        }
    }
    Ok(())
}

async fn measure(name: &str, sink: Arc<dyn LogSink>, args: &Args) -> Result<SinkReport> {
    let config = PipelineConfig {
        listen: "127.0.0.1:0".parse()?,
        backend: Backend::Sqlite {
            path: "unused".into(),
        },
        jwt_secret: Secret::new(SECRET),
        metrics_token: None,
        trusted_proxies: Default::default(),
        log_retention_days: 3650,
        metadata_retention_days: 3650,
        max_buffered_lines: 500_000,
        flush_lines: 50_000,
        flush_interval: Duration::from_millis(args.flush_ms),
        follow: Default::default(),
    };
    let state = Pipeline::new(&config, sink.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let serving = tokio::spawn(async move {
        let _ = pipeline::serve(&config, state, listener, std::future::pending()).await;
    });
    let keys = JwtKeys::new(&Secret::new(SECRET));
    let client = reqwest::Client::new();
    // Bodies are built before the clock starts: the figure is the pipeline's.
    let per_sender = args.lines / args.senders;
    let mut bodies = Vec::new();
    let mut tokens = Vec::new();
    for sender in 0..args.senders {
        let job = 1_000_000 + sender;
        // Each sender writes one job's lines, with that job's ingest token, as a
        // host agent does with its lease's.
        tokens.push(keys.mint_ingest(
            &IngestScope {
                job_id: job as i64,
                org_id: (job % 16 + 1) as i64,
                repo_id: Some((job % 64 + 1) as i64),
                agent_id: "bench".into(),
                seq_base: 0,
            },
            Duration::from_secs(3600),
        )?);
        let mut mine = Vec::new();
        let mut seq = 1;
        while seq <= per_sender {
            let end = (seq + BATCH - 1).min(per_sender);
            mine.push(ndjson(job, seq, end));
            seq = end + 1;
        }
        bodies.push(mine);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mine, token) in bodies.into_iter().zip(tokens) {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            for body in mine {
                loop {
                    let response = client
                        .post(format!("{base}/api/logs"))
                        .bearer_auth(&token)
                        .body(body.clone())
                        .send()
                        .await?;
                    match response.status().as_u16() {
                        200 => break,
                        503 => tokio::time::sleep(Duration::from_millis(20)).await,
                        other => bail!("ingest answered {other}"),
                    }
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let sent = per_sender * args.senders;
    serving.abort();

    // Top the table up to `rows` directly (many jobs), then time tail queries.
    let mut stored = sent;
    let mut job = 2_000_000;
    while stored < args.rows {
        let chunk = (args.rows - stored).min(100_000);
        let batch: Vec<LogRecord> = (1..=chunk).map(|seq| record(job, seq)).collect();
        sink.write(&batch).await?;
        stored += chunk;
        job += 1;
    }
    let mut latencies = Vec::new();
    for i in 0..50u64 {
        let query = LogQuery {
            job_id: Some(1_000_000 + i % args.senders),
            limit: 1_000,
            order: Order::Newest,
            ..LogQuery::default()
        };
        let started = Instant::now();
        let lines = sink.query(&query).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        if lines.len() != 1_000 {
            bail!("{name}: the tail query returned {} lines", lines.len());
        }
    }
    let latencies = sorted(latencies);
    Ok(SinkReport {
        sink: name.into(),
        lines: sent,
        lines_per_second: sent as f64 / elapsed.as_secs_f64(),
        rows_for_query: stored,
        query_p50_ms: percentile(&latencies, 0.5),
        query_p99_ms: percentile(&latencies, 0.99),
    })
}

/// The same lines straight into ClickHouse over its HTTP interface, no pipeline.
async fn direct_insert(url: &str, database: &str, lines: u64) -> Result<f64> {
    let client = reqwest::Client::new();
    let mut bodies = Vec::new();
    let mut seq = 1;
    while seq <= lines {
        let end = (seq + BATCH * 10 - 1).min(lines);
        let mut body = String::new();
        for s in seq..=end {
            let r = record(3_000_000, s);
            body.push_str(&serde_json::json!({
                "job_id": r.job_id, "agent_id": r.agent_id, "org_id": r.org_id, "repo_id": r.repo_id,
                "level": r.level, "message": r.message, "ts": r.ts as f64 / 1000.0, "seq": r.seq
            }).to_string());
            body.push('\n');
        }
        bodies.push(body);
        seq = end + 1;
    }
    let query = format!("INSERT INTO {database}.ci_logs (job_id, agent_id, org_id, repo_id, level, message, ts, seq) FORMAT JSONEachRow");
    let started = Instant::now();
    for body in bodies {
        let response = client
            .post(url)
            .query(&[("query", query.as_str())])
            .body(body)
            .send()
            .await?;
        if !response.status().is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("direct insert: {text}");
        }
    }
    let rate = lines as f64 / started.elapsed().as_secs_f64();
    client
        .post(url)
        .body(format!("DROP DATABASE IF EXISTS {database}"))
        .send()
        .await
        .context("dropping the bench database")?;
    Ok(rate)
}
