//! The cross-process end-to-end suite: real binaries, loopback ports, real services.

mod cache;
mod control_plane;
mod dashboard;
mod deploy;
mod dev_up;
mod github;
mod host_agent;
mod isolation;
mod isolation_matrix;
mod logging;
mod observability;
mod partition;
mod policy;
mod run_workflow;
mod tracing;
mod vm;
