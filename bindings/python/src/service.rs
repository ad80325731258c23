//! The services as the Python entry points run them (`python -m
//! nimbus.control_plane`, `nimbus.cache_proxy`, `nimbus.logging_pipeline`,
//! `nimbus.host_agent.main`): the binaries' own `main`, in this process, with the
//! arguments Python was given.

use std::process::ExitCode;

use pyo3::prelude::*;

use crate::errors::InvalidInput;

/// Runs service `name` (`control-plane`, `cache-proxy`, `logging-pipeline` or
/// `host-agent`) with `args` until SIGTERM or Ctrl-C; returns its exit status
/// (0 stopped cleanly, 1 failed, 2 bad usage).
#[pyfunction]
pub fn serve(py: Python<'_>, name: &str, args: Vec<String>) -> PyResult<u8> {
    let code = match name {
        "control-plane" => py.detach(|| {
            nimbus_core::service::main_with_args(
                "nimbus-control-plane",
                args,
                "NIMBUS_CONTROL_PLANE_ADDR",
                nimbus_core::ControlPlaneConfig::from_env,
                nimbus_core::control_plane::run,
            )
        }),
        "cache-proxy" => py.detach(|| {
            nimbus_core::service::main_with_args(
                "nimbus-cache-proxy",
                args,
                "NIMBUS_CACHE_PROXY_ADDR",
                nimbus_cache::server::ProxyConfig::from_env,
                nimbus_cache::server::run,
            )
        }),
        "logging-pipeline" => py.detach(|| {
            nimbus_core::service::main_with_args(
                "nimbus-logging-pipeline",
                args,
                "NIMBUS_LOGGING_PIPELINE_ADDR",
                nimbus_logs::pipeline::PipelineConfig::from_env,
                nimbus_logs::pipeline::run,
            )
        }),
        "host-agent" => py.detach(|| nimbus_vmm::agent::service::main(args)),
        other => {
            return Err(InvalidInput::new_err(format!(
            "unknown service {other:?}: control-plane, cache-proxy, logging-pipeline or host-agent"
        )))
        }
    };
    Ok(if code == ExitCode::SUCCESS {
        0
    } else if code == ExitCode::from(2) {
        2
    } else {
        1
    })
}

/// Runs `nimbus report …` or `nimbus jobs …` (`args` without the program name)
/// as the `nimbus` binary does: prints the tables or JSON, returns the exit code
/// (0, 1 with one line on standard error, 2 for a command line it refuses).
#[pyfunction]
pub fn cli(py: Python<'_>, args: Vec<String>) -> i32 {
    let argv = std::iter::once("nimbus".to_string()).chain(args);
    py.detach(|| nimbus_core::report::main(argv))
}
