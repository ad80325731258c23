//! `nimbus-cache-proxy`: the GitHub Actions cache (v1, v2) and artifact API on local disk or S3
//! (default 0.0.0.0:8001). See nimbus_cache::server for the routes.

use std::process::ExitCode;

use nimbus_cache::server::{self, ProxyConfig};
use nimbus_core::{telemetry, Env};

const USAGE: &str = "usage: nimbus-cache-proxy [--listen ADDR]\n\
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
                Some(addr) => env.set("NIMBUS_CACHE_PROXY_ADDR", addr),
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
    let config = match ProxyConfig::from_env(&env) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("nimbus-cache-proxy: {message}\n{USAGE}");
    ExitCode::from(2)
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("nimbus-cache-proxy: {error}");
    ExitCode::FAILURE
}
