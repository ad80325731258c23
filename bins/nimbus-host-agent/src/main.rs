//! `nimbus-host-agent`: the daemon on every runner machine. Leases jobs from the
//! control plane and runs each in a fresh VM (nimbus_vmm::agent::service); `/metrics`
//! on NIMBUS_HOST_AGENT_METRICS_ADDR. SIGTERM / Ctrl-C stops leasing and drains.

use std::process::ExitCode;

fn main() -> ExitCode {
    nimbus_vmm::agent::service::main(std::env::args().skip(1))
}
