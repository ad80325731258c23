//! Job pickup + boot: from `POST /api/jobs` to the job's first log line stored by the
//! logging pipeline, per driver, through the real control plane, host agent and
//! pipeline (in-process, over loopback HTTP). Median of N jobs run one at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::client::ControlPlaneClient;
use nimbus_core::control_plane::{self, ControlPlane};
use nimbus_core::{ClientConfig, ControlPlaneConfig, Env, Secret};
use nimbus_logs::pipeline::{self, Backend, Pipeline, PipelineConfig};
use nimbus_logs::sink::sqlite::SqliteSink;
use nimbus_logs::{LogQuery, LogSink, Order};
use nimbus_vmm::agent::{self, AgentConfig, AgentMetrics};
use serde::Serialize;
use serde_json::json;

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

const SECRET: &str = "nimbus-bench-agent-secret";

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_plane_url = format!("http://{}", listener.local_addr()?);
    let serving = tokio::spawn(control_plane::serve(
        state,
        listener,
        std::future::pending(),
    ));

    // Logging pipeline; its wake-up tells us when lines are stored.
    let sink: Arc<dyn LogSink> = Arc::new(SqliteSink::open(&dir.join("logs.db")).await?);
    let pipeline_config = PipelineConfig {
        listen: "127.0.0.1:0".parse()?,
        backend: Backend::Sqlite {
            path: dir.join("logs.db"),
        },
        jwt_secret: Secret::new(SECRET),
        metrics_token: None,
        log_retention_days: 30,
        metadata_retention_days: 90,
        max_buffered_lines: 500_000,
        flush_lines: 50_000,
        flush_interval: Duration::from_millis(1),
        follow: Default::default(),
    };
    let pipeline_state = Pipeline::new(&pipeline_config, sink.clone())?;
    let wake = pipeline_state.wake.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let logs_url = format!("http://{}", listener.local_addr()?);
    let pipeline_serving = tokio::spawn(async move {
        let _ = pipeline::serve(
            &pipeline_config,
            pipeline_state,
            listener,
            std::future::pending(),
        )
        .await;
    });

    let keys = JwtKeys::new(&Secret::new(SECRET));
    let token = |role, org| -> Result<Secret> {
        Ok(Secret::new(keys.mint(
            "bench",
            role,
            org,
            Duration::from_secs(3600),
        )?))
    };
    let admin =
        ControlPlaneClient::new(control_plane_url.clone(), Some(token(Role::Admin, None)?))?;
    admin.upsert_org(1, "bench").await?;
    let org = ControlPlaneClient::new(control_plane_url.clone(), Some(token(Role::Org, Some(1))?))?;

    // Host agent.
    let mut agent_config = AgentConfig::from_env(&env)?;
    agent_config.client = ClientConfig {
        control_plane_url,
        token: Some(token(Role::Agent, None)?),
    };
    agent_config.agent_id = "bench-host".into();
    agent_config.max_vms = 1;
    agent_config.logs_url = Some(logs_url);
    let agent = tokio::spawn(agent::run(
        agent_config,
        AgentMetrics::new()?,
        std::future::pending(),
    ));

    let job = json!({"repo": "bench/app", "labels": ["nimbus"], "steps": [{"run": "echo first line"}], "timeout_minutes": 5});
    let mut samples = Vec::with_capacity(runs + 1);
    for run in 0..=runs {
        let started = Instant::now();
        let submitted = org.submit_job(&job).await?;
        let query = LogQuery {
            job_id: Some(submitted.id as u64),
            limit: 1,
            order: Order::Oldest,
            ..LogQuery::default()
        };
        loop {
            let notified = wake.notified();
            if !sink.query(&query).await?.is_empty() {
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
        // Let the job finish before the next (one VM at a time).
        for _ in 0..2400 {
            let status = admin.get_job(submitted.id).await?.status.to_string();
            if matches!(
                status.as_str(),
                "succeeded" | "failed" | "timed_out" | "cancelled"
            ) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if run > 0 {
            samples.push(ms(elapsed)); // the first run warms caches (templates, pages)
        }
    }
    agent.abort();
    serving.abort();
    pipeline_serving.abort();
    let _ = std::fs::remove_dir_all(&dir);
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    Ok(DriverReport {
        driver: driver.into(),
        runs: n,
        first_line_median_ms: if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        },
        first_line_min_ms: samples[0],
        first_line_max_ms: samples[n - 1],
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
