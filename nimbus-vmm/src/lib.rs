//! `nimbus-vmm`: one microVM per job behind the [`VmmDriver`] trait.
//!
//! This crate holds the contract the host agent programs against; the drivers
//! (`firecracker/`, `qemu/`, `sandbox/`), guest assets and the agent runtime land
//! with their issue (see the README's roadmap).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("driver {driver} is not available here: {reason}")]
    Unavailable {
        driver: &'static str,
        reason: String,
    },
    #[error("asset {path} failed attestation: {reason}")]
    Attestation { path: PathBuf, reason: String },
    #[error("boot failed: {0}")]
    Boot(String),
    #[error("guest protocol: {0}")]
    Protocol(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which isolation a driver gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    Firecracker,
    Qemu,
    Sandbox,
}

/// What a VM is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub scratch_disk_mib: u32,
    pub boot_args: String,
    pub egress: bool,
    pub timeout: Duration,
}

/// One line a job printed, as the guest reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub stream: Stream,
    pub message: String,
    pub ts_millis: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a job inside a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "code")]
pub enum Outcome {
    Exited(i32),
    TimedOut,
    Crashed,
}

/// Whether a driver can run on this host, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub driver: DriverKind,
    pub available: bool,
    pub reason: String,
}

/// A hypervisor (or sandbox) that boots one isolated machine per job.
#[async_trait]
pub trait VmmDriver: Send + Sync {
    fn kind(&self) -> DriverKind;
    /// Checks the host (KVM, binaries, permissions) without booting anything.
    async fn probe(&self) -> Probe;
    /// Boots a VM; the returned handle must be destroyed whatever happens.
    async fn boot(&self, spec: &VmSpec) -> Result<Box<dyn Vm>>;
}

/// A running VM.
#[async_trait]
pub trait Vm: Send {
    fn id(&self) -> &str;
    /// Runs shell commands in the guest, handing every output line to `on_line`.
    async fn run(
        &mut self,
        commands: &[String],
        on_line: &(dyn Fn(LogLine) + Send + Sync),
    ) -> Result<Outcome>;
    /// Stops the VM and removes its files; safe to call more than once.
    async fn destroy(&mut self) -> Result<()>;
}
