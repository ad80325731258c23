//! Control-plane throughput: signed webhooks/s (with latency percentiles) and
//! lease+complete cycles/s with concurrent agents, on SQLite or PostgreSQL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::client::ControlPlaneClient;
use nimbus_core::control_plane::{self, ControlPlane};
use nimbus_core::domain::{Completion, CompletionStatus};
use nimbus_core::{ControlPlaneConfig, Env, Secret};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::stats::{ms, percentile, sorted};

const WEBHOOK_SECRET: &str = "bench-webhook-secret";
const JWT_SECRET: &str = "bench-jwt-secret-0123456789";

#[derive(clap::Args)]
pub struct Args {
    /// Store URL; default: a fresh SQLite file in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Signed `workflow_job.queued` webhooks to send.
    #[arg(long, default_value_t = 20_000)]
    webhooks: usize,
    /// Concurrent webhook senders.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Lease+complete cycles to run (at most the number of webhooks).
    #[arg(long, default_value_t = 10_000)]
    cycles: usize,
    /// Concurrent agents in the lease phase.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Which scheduler hands out the leases (`fair`, the default, or `fifo`).
    #[arg(long, default_value = "fair")]
    scheduler: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    store: String,
    webhooks: usize,
    webhook_concurrency: usize,
    webhooks_per_second: f64,
    webhook_p50_ms: f64,
    webhook_p99_ms: f64,
    lease_cycles: usize,
    agents: usize,
    lease_cycles_per_second: f64,
    lease_cycle_p99_ms: f64,
}

fn webhook_payload(github_job_id: usize, created_at: &str) -> Vec<u8> {
    let payload = serde_json::json!({
        "action": "queued",
        "workflow_job": {
            "id": github_job_id, "run_id": 1, "run_attempt": 1, "head_sha": "abc", "head_branch": "main",
            "workflow_name": "CI", "name": "build", "status": "queued", "conclusion": null,
            "labels": ["self-hosted", "nimbus", "param:python=3.12", "meta:team=bench"],
            "created_at": created_at, "started_at": null, "completed_at": null,
            "runner_id": null, "runner_name": null, "steps": []
        },
        "repository": {"id": 77, "full_name": "acme/app", "owner": {"id": 42, "login": "acme"}},
        "organization": {"id": 42, "login": "acme"},
        "installation": {"id": 5},
        "sender": {"id": 1, "login": "octocat"}
    });
    serde_json::to_vec(&payload).unwrap_or_default()
}

pub async fn run(args: Args) -> Result<()> {
    if args.concurrency == 0 || args.agents == 0 {
        bail!("--concurrency and --agents must be at least 1");
    }
    let temp = std::env::temp_dir().join(format!("nimbus-bench-{}", uuid::Uuid::new_v4()));
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", temp.join("bench.db").display()));
    let env = Env::from_map([
        ("NIMBUS_JWT_SECRET", JWT_SECRET),
        ("NIMBUS_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("NIMBUS_ORG_JOB_RATE_LIMIT", "1000000000"),
        ("NIMBUS_LOG_LEVEL", "warn"),
        ("NIMBUS_SCHEDULER", args.scheduler.as_str()),
    ]);
    let config = ControlPlaneConfig::from_env(&env)?;
    let store = nimbus_core::store::open(&url, config.database_max_connections).await?;
    let backend = store.backend().to_string();
    let state = ControlPlane::new(config, store)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(control_plane::serve(state, listener, async {
        let _ = stopped.await;
    }));

    // Phase 1: signed webhooks, payloads and signatures prepared up front.
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting a timestamp")?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let base_job_id = (uuid::Uuid::new_v4().as_u128() % 1_000_000_000) as usize * 1000;
    let payloads: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..args.webhooks)
            .map(|n| {
                (
                    format!("{run_id}-{n}"),
                    webhook_payload(base_job_id + n, &created_at),
                )
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..args.concurrency {
        let client = ControlPlaneClient::new(&base, None)?;
        let payloads = payloads.clone();
        let next = next.clone();
        senders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some((delivery, body)) = payloads.get(n) else {
                    break;
                };
                let sent = Instant::now();
                let (status, answer) = client
                    .send_webhook(
                        WEBHOOK_SECRET.as_bytes(),
                        "workflow_job",
                        delivery,
                        body.clone(),
                    )
                    .await?;
                if status != 201 {
                    bail!("webhook {n} answered {status}: {answer}");
                }
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.webhooks);
    for sender in senders {
        latencies.extend(sender.await??.into_iter().map(ms));
    }
    let webhook_elapsed = started.elapsed();
    let latencies = sorted(latencies);

    // Phase 2: lease + complete cycles by concurrent agents over the queued jobs.
    let keys = JwtKeys::new(&Secret::new(JWT_SECRET));
    let cycles = args.cycles.min(args.webhooks);
    let remaining = Arc::new(AtomicUsize::new(cycles));
    let started = Instant::now();
    let mut agents = Vec::new();
    for agent in 0..args.agents {
        let token = keys.mint(
            &format!("bench-agent-{agent}"),
            Role::Agent,
            None,
            Duration::from_secs(3600),
        )?;
        let client = ControlPlaneClient::new(&base, Some(Secret::new(token)))?;
        let remaining = remaining.clone();
        agents.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
            {
                let began = Instant::now();
                let Some(lease) = client.lease(Duration::ZERO).await? else {
                    bail!("queue ran dry before the cycles were done");
                };
                let done = Completion {
                    fencing_token: lease.fencing_token,
                    status: CompletionStatus::Succeeded,
                    exit_code: Some(0),
                    reason: None,
                    result: None,
                };
                client.complete(lease.job.id, &done).await?;
                latencies.push(began.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut cycle_latencies = Vec::with_capacity(cycles);
    for agent in agents {
        cycle_latencies.extend(agent.await??.into_iter().map(ms));
    }
    let cycle_elapsed = started.elapsed();
    let cycle_latencies = sorted(cycle_latencies);

    let _ = stop.send(());
    server.await??;
    let _ = std::fs::remove_dir_all(&temp);

    let report = Report {
        store: backend,
        webhooks: args.webhooks,
        webhook_concurrency: args.concurrency,
        webhooks_per_second: args.webhooks as f64 / webhook_elapsed.as_secs_f64(),
        webhook_p50_ms: percentile(&latencies, 0.50),
        webhook_p99_ms: percentile(&latencies, 0.99),
        lease_cycles: cycles,
        agents: args.agents,
        lease_cycles_per_second: cycles as f64 / cycle_elapsed.as_secs_f64(),
        lease_cycle_p99_ms: percentile(&cycle_latencies, 0.99),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "store      webhooks/s  p50 ms  p99 ms  lease cycles/s ({} agents)  cycle p99 ms",
            report.agents
        );
        println!(
            "{:<10} {:>10.0}  {:>6.2}  {:>6.2}  {:>14.0}  {:>26.2}",
            report.store,
            report.webhooks_per_second,
            report.webhook_p50_ms,
            report.webhook_p99_ms,
            report.lease_cycles_per_second,
            report.lease_cycle_p99_ms
        );
    }
    Ok(())
}
