//! What a VM is made of and what running a job in it reports.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{OutputLine, StepOutcome};

/// Which isolation a driver gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    Firecracker,
    Qemu,
    Sandbox,
}

impl DriverKind {
    pub const ALL: [DriverKind; 3] = [
        DriverKind::Firecracker,
        DriverKind::Qemu,
        DriverKind::Sandbox,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Firecracker => "firecracker",
            DriverKind::Qemu => "qemu",
            DriverKind::Sandbox => "sandbox",
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM to boot. Paths point at attested assets ([`crate::assets::VerifiedAssets`]);
/// the driver never writes to them (each VM gets a copy-on-write rootfs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Unique among running VMs on this host; names the runtime directory.
    pub id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Compressed kernel (bzImage) for QEMU.
    pub kernel: PathBuf,
    /// Uncompressed ELF kernel for Firecracker.
    pub vmlinux: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// ext4 image of the rootfs (VM drivers).
    pub rootfs: PathBuf,
    /// The same rootfs as a directory tree (sandbox driver).
    pub rootfs_tree: Option<PathBuf>,
    /// Size of the per-job scratch disk mounted at `/scratch`; 0 = a tmpfs instead.
    pub scratch_disk_mib: u32,
    /// Network of the VM: none, or a tap in a namespace of its own.
    pub network: NetworkSpec,
    /// Where the job's traffic may go with egress on (on top of the defaults).
    #[serde(default)]
    pub egress_policy: crate::network::EgressPolicy,
    /// Host services (`host:port`) the job reaches at `172.30.0.1:port` through a
    /// relay in its namespace (the cache proxy), with any network but `none`.
    #[serde(default)]
    pub forwards: Vec<String>,
    /// The `nimbus-guest` the host starts a sandbox with (sandbox driver).
    #[serde(default)]
    pub guest: Option<PathBuf>,
    /// vsock CID of the guest (Firecracker).
    pub vsock_cid: u32,
    /// Appended to the driver's kernel command line.
    pub boot_args: Vec<String>,
    /// Longest a job may run in this VM before it is killed.
    pub timeout: Duration,
    /// Longest the guest may take to say hello after boot.
    pub boot_timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkSpec {
    /// No network device at all (the default: jobs that need none get none).
    #[default]
    None,
    /// A tap device in a network namespace of the VM's own; `egress` decides whether
    /// it is routed (NAT) to the host's uplink.
    Tap { egress: bool },
}

impl NetworkSpec {
    /// `none`, `isolated` or `egress` (the `NIMBUS_VM_NETWORK` values).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(NetworkSpec::None),
            "isolated" => Some(NetworkSpec::Tap { egress: false }),
            "egress" => Some(NetworkSpec::Tap { egress: true }),
            _ => None,
        }
    }

    /// The `NIMBUS_VM_NETWORK` value that asks for this.
    pub fn name(self) -> &'static str {
        match self {
            NetworkSpec::None => "none",
            NetworkSpec::Tap { egress: false } => "isolated",
            NetworkSpec::Tap { egress: true } => "egress",
        }
    }
}

/// What the guest said about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub agent: String,
    pub kernel: String,
    /// From the boot call to the guest's hello.
    pub boot_millis: u64,
}

/// Streamed while a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    StepStarted {
        index: usize,
        name: String,
    },
    Output(OutputLine),
    StepFinished {
        index: usize,
        outcome: StepOutcome,
        duration_millis: u64,
    },
}

/// How a job inside a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The job ran to its end; 0 is success.
    Exited { code: i32 },
    /// The job outlived its timeout; the VM was destroyed.
    TimedOut,
    /// The guest went away without finishing (kernel panic, OOM, killed VM process).
    Crashed { reason: String },
}

impl Outcome {
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Exited { code: 0 })
    }

    /// A process exit code for the outcome (124 for a timeout, like `timeout(1)`).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited { code } => *code,
            Outcome::TimedOut => 124,
            Outcome::Crashed { .. } => 125,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub name: String,
    pub outcome: StepOutcome,
    pub duration_millis: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    pub outcome: Outcome,
    pub steps: Vec<StepReport>,
    pub output_lines: u64,
    pub duration_millis: u64,
}

/// Whether a driver can run on this host, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub driver: DriverKind,
    pub available: bool,
    pub reason: String,
}
