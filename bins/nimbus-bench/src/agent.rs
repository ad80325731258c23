//! Job pickup + boot: from a job's submission to its first log line stored, per
//! driver, through the real control plane, host agent and log sink, all in this
//! process and composed as an embedder would: the agent leases through the
//! in-process API (`ControlPlane::agent`) and writes lines to the sink directly.
//! Median of N jobs run one at a time.

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
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DriverReport {
    driver: String,
    runs: usize,
    first_line_median_ms: f64,
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

async fn measure(driver: &str, runs: usize) -> Result<DriverReport> {
    let dir = std::env::temp_dir().join(format!(
        "nimbus-bench-agent-{driver}-{}",
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
    let agent = tokio::spawn(agent::run(
        agent_config,
        Arc::new(state.agent("bench-host")),
        agent::LogDestination::Sink(sink.clone()),
        AgentMetrics::new()?,
        std::future::pending(),
    ));

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
    let _ = std::fs::remove_dir_all(&dir);
    let samples = sorted(samples);
    Ok(DriverReport {
        driver: driver.into(),
        runs: samples.len(),
        first_line_median_ms: percentile(&samples, 0.5),
        first_line_min_ms: percentile(&samples, 0.0),
        first_line_max_ms: percentile(&samples, 1.0),
    })
}

pub async fn run(args: Args) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut drivers = Vec::new();
    for driver in &args.drivers {
        eprintln!("bench: agent pickup + boot on {driver}");
        drivers.push(measure(driver, args.runs).await?);
    }
    let report = Report { drivers };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<10} {:>8} {:>14} {:>10} {:>10}",
        "driver", "runs", "median ms", "min", "max"
    );
    for d in &report.drivers {
        println!(
            "{:<10} {:>8} {:>14.0} {:>10.0} {:>10.0}",
            d.driver, d.runs, d.first_line_median_ms, d.first_line_min_ms, d.first_line_max_ms
        );
    }
    Ok(())
}
