//! `nimbus-logging-pipeline`: job logs and metadata into SQLite or ClickHouse
//! (default 0.0.0.0:8002). See nimbus_logs::pipeline for the API.

use std::process::ExitCode;

use nimbus_core::{telemetry, Env};
use nimbus_logs::pipeline::{self, PipelineConfig};

const USAGE: &str = "usage: nimbus-logging-pipeline [--listen ADDR]\n\
Configuration comes from NIMBUS_* environment variables (see docs/configuration.md).";

fn main() -> ExitCode {
    let mut env = match Env::from_process() {
        Ok(env) => env,
        Err(e) => return fail(&e),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => match args.next() {
                Some(addr) => env.set("NIMBUS_LOGGING_PIPELINE_ADDR", addr),
                None => return usage_error("--listen needs an address"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    if let Err(e) = telemetry::init(&env) {
        return fail(&e);
    }
    let config = match PipelineConfig::from_env(&env) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(pipeline::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("nimbus-logging-pipeline: {message}\n{USAGE}");
    ExitCode::from(2)
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("nimbus-logging-pipeline: {error}");
    ExitCode::FAILURE
}
