//! The `main` every service binary shares: `--listen ADDR` / `-h`, the
//! environment (process + `.env`), telemetry, a tokio runtime, then the service's
//! own config and run function. Exit codes: 0 clean stop, 1 failure, 2 bad usage.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use crate::{telemetry, Env};

/// Makes every file and directory the process creates from here on private to its
/// user (umask 077): the data directory holds databases, secrets, cache blobs,
/// logs and VM disks of many tenants, none of which another local user may read.
/// Every binary calls it first.
pub fn private_files() {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(0o077));
}

/// Runs service `name` with the process's arguments: `--listen ADDR` sets
/// `listen_variable`; `load` reads the configuration; `run` serves until shutdown.
pub fn main<C, E1, E2, F>(
    name: &str,
    listen_variable: &str,
    load: impl FnOnce(&Env) -> Result<C, E1>,
    run: impl FnOnce(C) -> F,
) -> ExitCode
where
    C: std::fmt::Debug,
    E1: Display,
    E2: Display,
    F: Future<Output = Result<(), E2>>,
{
    main_with_args(name, std::env::args().skip(1), listen_variable, load, run)
}

/// [`main`] with the arguments given (the Python entry points pass `sys.argv`'s,
/// which the process's own are not: they start with `python -m …`).
pub fn main_with_args<C, E1, E2, F>(
    name: &str,
    args: impl IntoIterator<Item = String>,
    listen_variable: &str,
    load: impl FnOnce(&Env) -> Result<C, E1>,
    run: impl FnOnce(C) -> F,
) -> ExitCode
where
    C: std::fmt::Debug,
    E1: Display,
    E2: Display,
    F: Future<Output = Result<(), E2>>,
{
    private_files();
    let usage = format!(
        "usage: {name} [--listen ADDR]\n\
         Configuration comes from NIMBUS_* environment variables (see docs/configuration.md)."
    );
    let fail = |error: &dyn Display| {
        eprintln!("{name}: {error}");
        ExitCode::FAILURE
    };
    let mut env = match Env::from_process() {
        Ok(env) => env,
        Err(e) => return fail(&e),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => match args.next() {
                Some(address) => env.set(listen_variable, address),
                None => {
                    eprintln!("{name}: --listen needs an address\n{usage}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{usage}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("{name}: unknown argument {other:?}\n{usage}");
                return ExitCode::from(2);
            }
        }
    }
    if let Err(e) = telemetry::init(&env, name) {
        return fail(&e);
    }
    let config = match load(&env) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    // What the service runs with, secrets and URL passwords redacted.
    tracing::info!(
        "{name}: effective configuration: {}",
        crate::config::redact_credentials(&format!("{config:?}"))
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    let outcome = runtime.block_on(run(config));
    drop(runtime);
    telemetry::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
