//! What a VM is made of and what running a job in it reports.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{OutputLine, StepOutcome};

/// Which isolation a driver gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// Firecracker microVM (KVM only), driven over its API socket.
    Firecracker,
    /// QEMU `microvm` machine, with KVM or TCG (software emulation).
    Qemu,
    /// Linux namespaces on the host kernel; no KVM needed, weaker isolation.
    Sandbox,
}

impl DriverKind {
    /// Every driver, in order of preference.
    pub const ALL: [DriverKind; 3] = [
        DriverKind::Firecracker,
        DriverKind::Qemu,
        DriverKind::Sandbox,
    ];

    /// The lower-case name used in configuration and logs, e.g. `"qemu"`.
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
    /// Virtual CPUs of the VM.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Compressed kernel (bzImage) for QEMU.
    pub kernel: PathBuf,
    /// Uncompressed ELF kernel for Firecracker.
    pub vmlinux: Option<PathBuf>,
    /// The initramfs that loads the virtio modules and switches into the rootfs.
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
    /// Restore the VM from this snapshot instead of booting it (drivers that make
    /// snapshots only; [`crate::VmmDriver::snapshot`]).
    #[serde(default)]
    pub snapshot: Option<crate::snapshot::Snapshot>,
}

/// The VM's network: none, or a tap device in a namespace of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkSpec {
    /// No network device at all (the default: jobs that need none get none).
    #[default]
    None,
    /// A tap device in a network namespace of the VM's own; `egress` decides whether
    /// it is routed (NAT) to the host's uplink.
    Tap {
        /// Route the VM's traffic to the uplink (`egress`); `false` is `isolated`.
        egress: bool,
    },
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
    /// `nimbus-guest`'s version.
    pub agent: String,
    /// `uname -r` of the guest kernel (the host's under the sandbox driver).
    pub kernel: String,
    /// From the boot call to the guest's hello.
    pub boot_millis: u64,
}

/// Streamed while a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// A step is about to run (or be skipped).
    StepStarted {
        /// Position of the step in the job, from 0.
        index: usize,
        /// The step's display name.
        name: String,
    },
    /// A line the job printed.
    Output(OutputLine),
    /// A step ended.
    StepFinished {
        /// Position of the step in the job, from 0.
        index: usize,
        /// How it ended.
        outcome: StepOutcome,
        /// How long the step took, in milliseconds.
        duration_millis: u64,
    },
    /// A workflow job's outputs, summary and annotations (`nimbus run`).
    WorkflowResult(crate::workflow::WorkflowResult),
}

/// How a job inside a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The job ran to its end; 0 is success.
    Exited {
        /// Exit code of the job.
        code: i32,
    },
    /// The job outlived its timeout; the VM was destroyed.
    TimedOut,
    /// The guest went away without finishing (kernel panic, OOM, killed VM process).
    Crashed {
        /// What the host saw, e.g. the guest's failure message or the lost channel.
        reason: String,
    },
}

impl Outcome {
    /// Whether the job exited with code 0.
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

/// How one step of a finished job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's display name.
    pub name: String,
    /// How it ended; [`StepOutcome::Skipped`] also for a step the guest started but
    /// never reported finished.
    pub outcome: StepOutcome,
    /// How long the step took, in milliseconds.
    pub duration_millis: u64,
}

/// What a job run in a VM produced, once it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    /// How the job ended.
    pub outcome: Outcome,
    /// Every step the guest started, in order.
    pub steps: Vec<StepReport>,
    /// Number of output lines the job printed.
    pub output_lines: u64,
    /// Wall time of the run in milliseconds, from sending the job to its end.
    pub duration_millis: u64,
}

/// Whether a driver can run on this host, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The driver probed.
    pub driver: DriverKind,
    /// Whether it can run VMs on this host now.
    pub available: bool,
    /// Why not, when unavailable; otherwise a short description of what it will use.
    pub reason: String,
}
