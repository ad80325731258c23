//! `nimbus-bench`: the benchmark harness. One subcommand per figure in
//! docs/benchmarks.md; each prints a table, or JSON with `--json`.
//! `scripts/bench.sh` runs them all and regenerates docs/benchmarks.md.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agent;
mod analytics;
mod cache;
mod connections;
mod control_plane;
mod logs;
mod policy;
mod registry;
mod stats;
mod vm;

#[derive(Parser)]
#[command(name = "nimbus-bench", about = "Nimbus benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Idle connections beside a polite client: its latency before and beside
    /// them, and when the server cut them off.
    Connections(connections::Args),
    /// Signed webhooks accepted per second and lease+complete cycles per second,
    /// against an in-process control plane over real loopback HTTP.
    ControlPlane(control_plane::Args),
    /// Admission-policy evaluations per second on one core (200-rule policy).
    Policy(policy::Args),
    /// Logging pipeline: lines/s over HTTP into each sink, tail-query latency.
    Logs(logs::Args),
    /// VM start-up per driver: boot call to first log line, and a `true` round trip.
    Vm(vm::Args),
    /// Job pickup + boot per driver: POST /api/jobs to the first log line stored by
    /// the logging pipeline, through control plane, host agent and pipeline.
    Agent(agent::Args),
    /// `GET /api/observability/orgs` over many jobs (default a million in 100 orgs),
    /// before and after the rollup fold, with the seeding time.
    Analytics(analytics::Args),
    /// Cache proxy throughput with the official @actions/cache client (v2), per
    /// backend, beside dd (fsync'd write) and nginx (download) on the same machine.
    Cache(cache::Args),
    /// The registry mirror with skopeo: a `--mib` MiB image pulled directly from the
    /// reference registry, then through the mirror cold and warm.
    Registry(registry::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("nimbus-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::ControlPlane(args) => control_plane::run(args).await,
            Command::Connections(args) => connections::run(args).await,
            Command::Policy(args) => policy::run(args),
            Command::Vm(args) => vm::run(args).await,
            Command::Logs(args) => logs::run(args).await,
            Command::Cache(args) => cache::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Analytics(args) => analytics::run(args).await,
            Command::Registry(args) => registry::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
