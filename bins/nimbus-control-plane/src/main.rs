//! `nimbus-control-plane`: webhooks, queue, leases (default 0.0.0.0:8000).

use std::process::ExitCode;

use nimbus_core::{control_plane, service, ControlPlaneConfig};

fn main() -> ExitCode {
    service::main(
        "nimbus-control-plane",
        "NIMBUS_CONTROL_PLANE_ADDR",
        ControlPlaneConfig::from_env,
        control_plane::run,
    )
}
