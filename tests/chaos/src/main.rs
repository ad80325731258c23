//! `nimbus-chaos`: the chaos suite (docs/reliability.md). It starts the real
//! services on their production backends — two control-plane replicas on one
//! PostgreSQL, host agents (sandbox driver), the logging pipeline on ClickHouse and
//! the cache proxy on S3 — submits direct jobs, and while they run injects the
//! faults operators meet: a replica killed with `kill -9`, PostgreSQL restarted,
//! agents killed and restarted, ClickHouse and the S3 server stopped for a while.
//! Afterwards it checks, job by job, from two channels that do not depend on each
//! other (a marker each run saves through the cache, and the job's log lines):
//!
//! - every job succeeded, and the run that completed it left its marker;
//! - no two runs of a job overlapped in time (a re-run after a lost agent is a new
//!   attempt, never a concurrent second run);
//! - every log line of every run is present once, with no gap in its numbering;
//! - every marker read back from the cache has the sha256 its run logged;
//! - the queue drained within the stated bound after the last fault.
//!
//! `scripts/chaos.sh` runs it (short in CI, `--long` for docs/reliability.md).

mod check;
mod cluster;
mod faults;
mod report;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// The size of a run and of its faults.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "nimbus-chaos",
    about = "Runs jobs through the real Nimbus services while killing and stopping them; checks that no job, run or log line was lost or doubled"
)]
pub struct Args {
    /// Direct jobs to submit (enough to keep the agents busy through every fault).
    #[arg(long, default_value_t = 600)]
    pub jobs: usize,
    /// Host agents (sandbox driver), spread over the two control-plane replicas.
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
    /// Jobs each agent runs at once (`NIMBUS_AGENT_MAX_VMS`).
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
    /// Numbered log lines each job prints.
    #[arg(long, default_value_t = 20)]
    pub lines: usize,
    /// Seconds each job works (sleeps) after its lines.
    #[arg(long, default_value_t = 1.0)]
    pub job_seconds: f64,
    /// Seconds ClickHouse and the S3 server each stay stopped.
    #[arg(long, default_value_t = 10)]
    pub outage_seconds: u64,
    /// The control plane's lease time to live (`NIMBUS_JOB_LEASE_TTL`), seconds.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Every job must be finished this many seconds after the last fault ends.
    #[arg(long, default_value_t = 240)]
    pub drain_bound_seconds: u64,
    /// A name for the run in the report (`short`, `long`).
    #[arg(long, default_value = "short")]
    pub name: String,
    /// Write the report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Replace the figures between the chaos markers of this Markdown file
    /// (docs/reliability.md).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("nimbus-chaos: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("nimbus-chaos: FAILED (see the findings above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("nimbus-chaos: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(started: Instant, message: impl std::fmt::Display) {
    eprintln!(
        "chaos [{:>6.1}s] {message}",
        started.elapsed().as_secs_f64()
    );
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let settings = cluster::Settings::from_env()?;
    let started = Instant::now();
    say(started, format!("starting the services: 2 control-plane replicas on PostgreSQL, {} agents x {} slots, the pipeline on ClickHouse, the cache on S3", args.agents, args.slots));
    let mut cluster = cluster::Cluster::start(&args, &settings).await?;
    let clock = Instant::now();
    let ids = workload::submit(&cluster, &args).await?;
    let submit_seconds = clock.elapsed().as_secs_f64();
    say(
        started,
        format!("{} jobs submitted in {submit_seconds:.1}s", ids.len()),
    );

    let progress = workload::Progress::watch(&cluster, clock);
    let faults = faults::run_all(&mut cluster, &args, &progress, started).await;
    // Whatever happened, the shared services are left running.
    for service in ["clickhouse", "s3"] {
        let _ = tokio::task::spawn_blocking(move || cluster::services("start", service)).await;
    }
    let faults = faults?;
    let faults_over = clock.elapsed();
    say(started, "faults over; waiting for the queue to drain");
    let drained = progress
        .wait_finished(
            ids.len() as u64,
            Duration::from_secs(args.drain_bound_seconds),
        )
        .await;
    let run_seconds = clock.elapsed().as_secs_f64();
    let drain_seconds = drained.map(|at| (at - clock).saturating_sub(faults_over).as_secs_f64());
    match drain_seconds {
        Some(seconds) => say(
            started,
            format!("queue drained {seconds:.1}s after the last fault"),
        ),
        None => say(
            started,
            format!(
                "the queue did NOT drain within {}s of the last fault",
                args.drain_bound_seconds
            ),
        ),
    }
    say(started, "checking every job's runs, markers and log lines");
    let findings = check::verify(&cluster, &ids, &args).await?;
    let report = report::Report::new(
        &args,
        ids.len(),
        submit_seconds,
        run_seconds,
        drain_seconds,
        faults,
        findings,
    );
    report.print();
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.markdown {
        report.update_markdown(path)?;
        say(started, format!("figures written to {}", path.display()));
    }
    drop(cluster);
    Ok(report.passed())
}
