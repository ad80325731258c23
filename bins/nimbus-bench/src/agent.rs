//! Job pickup + boot: from a job's submission to its first log line stored, per
//! driver and start mode (cold boot, warm pool, snapshot restore), through the real control plane,
//! host agent and log sink, all in this process and composed as an embedder
//! would: the agent leases through the in-process API (`ControlPlane::agent`) and
//! writes lines to the sink directly. N jobs run one at a time; with the warm pool
//! each job is submitted once the pool holds a VM again, so every one is a hit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use nimbus_core::auth::Principal;
use nimbus_core::control_plane::{ControlPlane, JobRequest};
use nimbus_core::domain::Step;
use nimbus_core::{ControlPlaneConfig, Env};
use nimbus_logs::sink::layer::{Layered, WriteLayer};
use nimbus_logs::sink::sqlite::SqliteSink;
use nimbus_logs::{LogQuery, LogRecord, LogSink, Order};
use nimbus_vmm::agent::{self, AgentConfig, AgentMetrics};
use serde::Serialize;

use crate::stats::{ms, percentile, sorted};

#[derive(clap::Args)]
pub struct Args {
    /// Jobs per driver.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Drivers to measure.
    #[arg(long, value_delimiter = ',', default_value = "sandbox,qemu")]
    drivers: Vec<String>,
    /// Start modes to measure (NIMBUS_VMM_START): cold, warm, snapshot (skipped for
    /// drivers without snapshots).
    #[arg(long, value_delimiter = ',', default_value = "cold,warm,snapshot")]
    starts: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DriverReport {
    driver: String,
    start: String,
    runs: usize,
    first_line_median_ms: f64,
    first_line_p95_ms: f64,
    first_line_min_ms: f64,
    first_line_max_ms: f64,
}

#[derive(Serialize)]
struct Report {
    drivers: Vec<DriverReport>,
}

const SECRET: &str = "nimbus-bench-agent-secret-0123456789";

/// Says when lines were written (a layer over any sink).
struct Notifying {
    wake: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl WriteLayer for Notifying {
    async fn write(&self, inner: &dyn LogSink, batch: &[LogRecord]) -> nimbus_logs::Result<u64> {
        let written = inner.write(batch).await?;
        self.wake.notify_waiters();
        Ok(written)
    }
}

async fn measure(driver: &str, start: &str, runs: usize) -> Result<DriverReport> {
    let dir = std::env::temp_dir().join(format!(
        "nimbus-bench-agent-{driver}-{start}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let process = Env::from_process()?;
    let assets = process
        .get("NIMBUS_ASSETS_DIR")
        .map(PathBuf::from)
        .context("NIMBUS_ASSETS_DIR must name built assets (scripts/guest-assets.sh)")?;
    let env = Env::from_map([
        ("NIMBUS_DATA_DIR", dir.display().to_string()),
        ("NIMBUS_JWT_SECRET", SECRET.to_string()),
        ("NIMBUS_VMM", driver.to_string()),
        ("NIMBUS_ASSETS_DIR", assets.display().to_string()),
        (
            "NIMBUS_VM_RUNTIME_DIR",
            dir.join("vms").display().to_string(),
        ),
        ("NIMBUS_VM_NETWORK", "none".to_string()),
        ("NIMBUS_VM_VCPUS", "1".to_string()),
        ("NIMBUS_VM_MEMORY_MIB", "512".to_string()),
        ("NIMBUS_VM_SCRATCH_MIB", "256".to_string()),
        ("NIMBUS_VMM_START", start.to_string()),
        ("NIMBUS_AGENT_WARM_POOL", "1".to_string()),
    ]);

    // Control plane.
    let config = ControlPlaneConfig::from_env(&env)?;
    let store = nimbus_core::store::open(&config.database_url, 4).await?;
    let state = ControlPlane::new(config, store)?;
    let admin = Principal::Admin {
        sub: "bench".into(),
    };
    let org = Principal::Org {
        org_id: 1,
        sub: "bench".into(),
    };
    state.upsert_org(&admin, 1, "bench").await?;

    // Where the agent's lines go; the wrapper says when they are stored.
    let wake = Arc::new(tokio::sync::Notify::new());
    let sink: Arc<dyn LogSink> = Arc::new(Layered::new(
        Arc::new(SqliteSink::open(&dir.join("logs.db")).await?),
        Notifying { wake: wake.clone() },
    ));

    // Host agent.
    let mut agent_config = AgentConfig::from_env(&env)?;
    agent_config.agent_id = "bench-host".into();
    agent_config.max_vms = 1;
    let metrics = AgentMetrics::new()?;
    let agent = tokio::spawn(agent::run(
        agent_config,
        Arc::new(state.agent("bench-host")),
        agent::LogDestination::Sink(sink.clone()),
        metrics.clone(),
        std::future::pending(),
    ));
    let warm = start == "warm";

    let job = JobRequest {
        repo: "bench/app".into(),
        labels: vec!["nimbus".into()],
        steps: vec![Step {
            name: None,
            run: "echo first line".into(),
            env: Default::default(),
            working_directory: None,
        }],
        timeout_minutes: Some(5),
        ..JobRequest::default()
    };
    let mut samples = Vec::with_capacity(runs + 1);
    for run in 0..=runs {
        if warm {
            // The replacement of the last job's VM boots between jobs.
            let waiting = Instant::now();
            while metrics.warm_pool.size.get() < 1 {
                if waiting.elapsed() > Duration::from_secs(120) {
                    bail!("{driver}: the warm pool did not refill within 120 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let started = Instant::now();
        let submitted = state.submit(&org, job.clone()).await?;
        let query = LogQuery {
            job_id: Some(submitted.id as u64),
            limit: 100,
            order: Order::Oldest,
            ..LogQuery::default()
        };
        loop {
            let notified = wake.notified();
            // The job's own output, not a line the agent wrote about it.
            if sink
                .query(&query)
                .await?
                .iter()
                .any(|line| line.message.trim_end() == "first line")
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!(
                    "{driver}: job {} printed nothing within 120 s",
                    submitted.id
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
        let elapsed = started.elapsed();
        // Let the job finish before the next (one VM at a time); only a job that
        // succeeded counts (a VM that printed and then failed is no start-up).
        let mut status = String::new();
        for _ in 0..2400 {
            status = state.job(&admin, submitted.id).await?.status.to_string();
            if matches!(
                status.as_str(),
                "succeeded" | "failed" | "timed_out" | "cancelled"
            ) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if status != "succeeded" {
            bail!(
                "{driver}: job {} ended {status:?}; the benchmark counts only jobs that succeeded",
                submitted.id
            );
        }
        if run > 0 {
            samples.push(ms(elapsed)); // the first run warms caches (templates, pages)
        }
    }
    agent.abort();
    state.begin_shutdown();
    let pool = &metrics.warm_pool;
    if warm && (pool.hits.get() != runs as u64 + 1 || pool.misses.get() != 0) {
        bail!(
            "{driver}: {} of {} jobs got a warm VM ({} misses)",
            pool.hits.get(),
            runs + 1,
            pool.misses.get()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let samples = sorted(samples);
    Ok(DriverReport {
        driver: driver.into(),
        start: start.into(),
        runs: samples.len(),
        first_line_median_ms: percentile(&samples, 0.5),
        first_line_p95_ms: percentile(&samples, 0.95),
        first_line_min_ms: percentile(&samples, 0.0),
        first_line_max_ms: percentile(&samples, 1.0),
    })
}

pub async fn run(args: Args) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    for start in &args.starts {
        if !matches!(start.as_str(), "cold" | "warm" | "snapshot") {
            bail!("--starts takes cold, warm and snapshot, not {start:?}");
        }
    }
    let mut drivers = Vec::new();
    for driver in &args.drivers {
        for start in &args.starts {
            if start == "snapshot" && driver == "sandbox" {
                eprintln!("bench: {driver} has no snapshots; skipping its snapshot start");
                continue;
            }
            eprintln!("bench: agent pickup + boot on {driver}, {start} start");
            drivers.push(measure(driver, start, args.runs).await?);
        }
    }
    let report = Report { drivers };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<10} {:<6} {:>6} {:>10} {:>8} {:>8} {:>8}",
        "driver", "start", "runs", "median ms", "p95", "min", "max"
    );
    for d in &report.drivers {
        println!(
            "{:<10} {:<6} {:>6} {:>10.1} {:>8.1} {:>8.1} {:>8.1}",
            d.driver,
            d.start,
            d.runs,
            d.first_line_median_ms,
            d.first_line_p95_ms,
            d.first_line_min_ms,
            d.first_line_max_ms
        );
    }
    Ok(())
}
