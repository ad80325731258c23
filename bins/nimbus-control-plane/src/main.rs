//! `nimbus-control-plane`: webhooks, queue, leases (default 0.0.0.0:8000).

use std::process::ExitCode;

use nimbus_core::{control_plane, telemetry, ControlPlaneConfig, Env};

const USAGE: &str = "usage: nimbus-control-plane [--listen ADDR]\n\
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
                Some(addr) => env.set("NIMBUS_CONTROL_PLANE_ADDR", addr),
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
    let config = match ControlPlaneConfig::from_env(&env) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(control_plane::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("nimbus-control-plane: {message}\n{USAGE}");
    ExitCode::from(2)
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("nimbus-control-plane: {error}");
    ExitCode::FAILURE
}
