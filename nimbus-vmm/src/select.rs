//! Which driver runs jobs here: `NIMBUS_VMM=auto|firecracker|qemu|sandbox`.
//!
//! `auto` takes Firecracker (hardware KVM and a firecracker binary), else QEMU
//! with hardware KVM, else the namespace sandbox — and says which and why. QEMU
//! under TCG is never chosen by `auto`: it emulates every instruction, fine for
//! proving the VM path (`NIMBUS_VMM=qemu`), far too slow for real work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::Env;

use crate::firecracker::jailer::JailerConfig;
use crate::firecracker::{FirecrackerConfig, FirecrackerDriver};
use crate::qemu::{Accel, QemuConfig, QemuDriver, QemuTransport};
use crate::sandbox::{SandboxConfig, SandboxDriver};
use crate::spec::NetworkSpec;
use crate::{DriverKind, Error, Probe, Result, VmmDriver};

/// The variables of the job VMs and their drivers (a section of docs/configuration.md).
pub const SETTINGS: nimbus_core::config::Settings = nimbus_core::config::Settings {
    service: "Job VMs (host agent, nimbus vm run, nimbus run)",
    variables: &[
        nimbus_core::config::VarDoc { name: "NIMBUS_VMM", default: "auto", meaning: "VM driver: `auto` (firecracker with hardware KVM, else qemu with hardware KVM, else sandbox), `firecracker`, `qemu` or `sandbox`." },
        nimbus_core::config::VarDoc { name: "NIMBUS_QEMU_ACCEL", default: "auto", meaning: "QEMU acceleration: `kvm` (hardware KVM only), `tcg` (software emulation) or `auto`." },
        nimbus_core::config::VarDoc { name: "NIMBUS_QEMU_TRANSPORT", default: "virtio-serial", meaning: "Host ⇄ guest channel under QEMU: `virtio-serial`, or `serial` (the serial console shared with kernel messages: the last resort for guests without virtio-console)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_QEMU_BIN", default: "qemu-system-x86_64 on PATH", meaning: "QEMU binary." },
        nimbus_core::config::VarDoc { name: "NIMBUS_FIRECRACKER_BIN", default: "firecracker on PATH", meaning: "Firecracker binary." },
        nimbus_core::config::VarDoc { name: "NIMBUS_JAILER_BIN", default: "(none)", meaning: "Firecracker's jailer; set to run every Firecracker VM jailed (docs/FIRECRACKER_SECURITY.md)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_JAILER_UID", default: "65534", meaning: "uid the jailed Firecracker runs as." },
        nimbus_core::config::VarDoc { name: "NIMBUS_JAILER_GID", default: "65534", meaning: "gid the jailed Firecracker runs as." },
        nimbus_core::config::VarDoc { name: "NIMBUS_JAILER_CHROOT_BASE", default: "/srv/jailer", meaning: "Base directory of the jailer's per-VM chroots." },
        nimbus_core::config::VarDoc { name: "NIMBUS_SECCOMP_FILTER", default: "(built-in)", meaning: "Compiled seccomp BPF filter for Firecracker; unset keeps Firecracker's built-in filter." },
        nimbus_core::config::VarDoc { name: "NIMBUS_ASSETS_DIR", default: "$NIMBUS_DATA_DIR/assets", meaning: "Guest assets built by `nimbus assets build` (kernel, initramfs, rootfs, manifest.json)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_ROOTFS_SHA256", default: "(none)", meaning: "Pins the rootfs: assets whose manifest names another rootfs sha256 are refused." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VM_RUNTIME_DIR", default: "$NIMBUS_DATA_DIR/vms", meaning: "Per-VM directories (disk overlays, sockets, console logs); removed with each VM." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VM_VCPUS", default: "2", meaning: "vCPUs per job VM." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VM_MEMORY_MIB", default: "1024", meaning: "Memory per job VM, MiB." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VM_SCRATCH_MIB", default: "4096", meaning: "Per-job scratch disk mounted at `/scratch` (the workspace), MiB; 0 gives a tmpfs." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VM_NETWORK", default: "egress", meaning: "Network of each job VM or sandbox: `none` (no device), `isolated` (a namespace of its own with no route out; host services such as the cache through a relay at 172.30.0.1) or `egress` (that, routed out through NAT under the egress policy). Needs root, iproute2 and iptables." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VM_EGRESS_ALLOW", default: "(none)", meaning: "CIDRs jobs may reach even inside a denied range (comma-separated), e.g. an internal artifact server. Checked before every denial." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VM_EGRESS_DENY", default: "(none)", meaning: "CIDRs jobs may not reach, besides the defaults: the host's own addresses, loopback, private, shared, link-local (cloud metadata), multicast and reserved ranges." },
        nimbus_core::config::VarDoc { name: "NIMBUS_ALLOW_SANDBOX", default: "0", meaning: "`1` lets `NIMBUS_VMM=auto` pick the namespace sandbox when NIMBUS_MODE=production (it shares the host kernel; docs/security.md)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VMM_START", default: "auto", meaning: "How the host agent starts job VMs: `cold` (boot each job's VM when its lease arrives), `warm` (hand each job a VM of the warm pool, booted ahead; NIMBUS_AGENT_WARM_POOL VMs, at least 1), `snapshot` (restore each job's VM from a snapshot made at start; QEMU and Firecracker) or `auto` (the fastest that works here: snapshot restore where the driver can, plus the warm pool when NIMBUS_AGENT_WARM_POOL is above 0; the choice is logged)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_VM_BOOT_TIMEOUT", default: "60", meaning: "Seconds a VM may take from boot to the guest agent's hello." },
    ],
};

/// What `NIMBUS_VMM` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmChoice {
    /// The best available driver (`auto`): see the module docs.
    Auto,
    /// Exactly this driver; an error if it is not available.
    Fixed(DriverKind),
}

/// What `NIMBUS_VMM_START` asks for: how the host agent starts its jobs' VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Boot each job's VM when its lease arrives.
    Cold,
    /// Hand each job a VM booted ahead (the agent's warm pool).
    Warm,
    /// Restore each job's VM from a snapshot made once (drivers that can).
    Snapshot,
    /// The fastest that is configured and works here (see [`StartMode::parse`]).
    Auto,
}

impl StartMode {
    /// `cold`, `warm`, `snapshot` or `auto`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cold" => Some(StartMode::Cold),
            "warm" => Some(StartMode::Warm),
            "snapshot" => Some(StartMode::Snapshot),
            "auto" => Some(StartMode::Auto),
            _ => None,
        }
    }

    /// The `NIMBUS_VMM_START` value that asks for this.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMode::Cold => "cold",
            StartMode::Warm => "warm",
            StartMode::Snapshot => "snapshot",
            StartMode::Auto => "auto",
        }
    }
}

/// Host-side VM configuration, from `NIMBUS_*` variables.
#[derive(Debug, Clone)]
pub struct VmmConfig {
    /// Which driver (`NIMBUS_VMM`, default `auto`).
    pub choice: VmmChoice,
    /// How the host agent starts VMs (`NIMBUS_VMM_START`, default `auto`).
    pub start: StartMode,
    /// QEMU's acceleration (`NIMBUS_QEMU_ACCEL`); `None` is `auto`.
    pub qemu_accel: Option<Accel>,
    /// The QEMU binary (`NIMBUS_QEMU_BIN`); `None` looks on PATH.
    pub qemu_binary: Option<PathBuf>,
    /// The host ⇄ guest channel under QEMU (`NIMBUS_QEMU_TRANSPORT`).
    pub qemu_transport: QemuTransport,
    /// The Firecracker binary (`NIMBUS_FIRECRACKER_BIN`); `None` looks on PATH.
    pub firecracker_binary: Option<PathBuf>,
    /// Jail Firecracker (`NIMBUS_JAILER_*`); `None` when `NIMBUS_JAILER_BIN` is unset.
    pub jailer: Option<JailerConfig>,
    /// Seccomp BPF for Firecracker (`NIMBUS_SECCOMP_FILTER`); `None` keeps its built-in one.
    pub seccomp_filter: Option<PathBuf>,
    /// Built by `nimbus assets build`.
    pub assets_dir: PathBuf,
    /// Per-VM directories (overlays, sockets, logs).
    pub runtime_dir: PathBuf,
    /// Pins the rootfs: assets whose manifest names another rootfs are refused.
    pub rootfs_sha256: Option<String>,
    /// vCPUs per VM (`NIMBUS_VM_VCPUS`, default 2).
    pub vcpus: u32,
    /// Memory per VM in MiB (`NIMBUS_VM_MEMORY_MIB`, default 1024).
    pub memory_mib: u32,
    /// Scratch disk per VM in MiB (`NIMBUS_VM_SCRATCH_MIB`, default 4096); 0 gives a tmpfs.
    pub scratch_disk_mib: u32,
    /// Longest from boot to the guest's hello (`NIMBUS_VM_BOOT_TIMEOUT`, default 60 s).
    pub boot_timeout: Duration,
    /// `NIMBUS_VM_NETWORK`: none, isolated (a tap of its own, no route out) or
    /// egress (routed out through NAT).
    pub network: NetworkSpec,
    /// `NIMBUS_VM_EGRESS_ALLOW` / `NIMBUS_VM_EGRESS_DENY`.
    pub egress_policy: crate::network::EgressPolicy,
    /// Whether `auto` may pick the namespace sandbox: not in production
    /// (`NIMBUS_MODE=production`) unless `NIMBUS_ALLOW_SANDBOX=1`.
    pub sandbox_allowed_by_auto: bool,
}

fn config_error(variable: &str, message: impl Into<String>) -> nimbus_core::Error {
    nimbus_core::Error::Config {
        variable: variable.into(),
        message: message.into(),
    }
}

impl VmmConfig {
    /// Reads and validates the `NIMBUS_*` variables of [`SETTINGS`].
    pub fn from_env(env: &Env) -> nimbus_core::Result<Self> {
        let data_dir = env.data_dir();
        let choice = match env.get("NIMBUS_VMM").unwrap_or("auto") {
            "auto" => VmmChoice::Auto,
            "firecracker" => VmmChoice::Fixed(DriverKind::Firecracker),
            "qemu" => VmmChoice::Fixed(DriverKind::Qemu),
            "sandbox" => VmmChoice::Fixed(DriverKind::Sandbox),
            other => {
                return Err(config_error(
                    "NIMBUS_VMM",
                    format!("invalid value {other:?}: expected auto, firecracker, qemu or sandbox"),
                ))
            }
        };
        let qemu_accel = match env.get("NIMBUS_QEMU_ACCEL") {
            None | Some("auto") => None,
            Some(text) => Some(Accel::parse(text).ok_or_else(|| {
                config_error(
                    "NIMBUS_QEMU_ACCEL",
                    format!("invalid value {text:?}: expected kvm, tcg or auto"),
                )
            })?),
        };
        let path = |name: &str| env.get(name).map(PathBuf::from);
        let jailer = match path("NIMBUS_JAILER_BIN") {
            None => None,
            Some(binary) => Some(JailerConfig {
                binary,
                uid: env.parse_or("NIMBUS_JAILER_UID", 65534u32)?,
                gid: env.parse_or("NIMBUS_JAILER_GID", 65534u32)?,
                chroot_base: path("NIMBUS_JAILER_CHROOT_BASE")
                    .unwrap_or_else(|| PathBuf::from("/srv/jailer")),
                seccomp_filter: path("NIMBUS_SECCOMP_FILTER"),
            }),
        };
        let rootfs_sha256 = env.get("NIMBUS_ROOTFS_SHA256").map(str::to_string);
        if let Some(pin) = &rootfs_sha256 {
            if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(config_error(
                    "NIMBUS_ROOTFS_SHA256",
                    "must be 64 hex digits (a sha256)",
                ));
            }
        }
        let cidrs = |name: &str| -> nimbus_core::Result<Vec<crate::network::Cidr>> {
            env.get(name)
                .map(crate::network::EgressPolicy::parse_list)
                .transpose()
                .map(Option::unwrap_or_default)
                .map_err(|message| config_error(name, message))
        };
        let production = nimbus_core::config::production_mode(env)?;
        let allow_sandbox = match env.get("NIMBUS_ALLOW_SANDBOX").unwrap_or("0") {
            "1" | "true" => true,
            "0" | "false" => false,
            other => {
                return Err(config_error(
                    "NIMBUS_ALLOW_SANDBOX",
                    format!("invalid value {other:?}: expected 1 or 0"),
                ))
            }
        };
        Ok(VmmConfig {
            egress_policy: crate::network::EgressPolicy {
                allow: cidrs("NIMBUS_VM_EGRESS_ALLOW")?,
                deny: cidrs("NIMBUS_VM_EGRESS_DENY")?,
            },
            sandbox_allowed_by_auto: !production || allow_sandbox,
            choice,
            start: match env.get("NIMBUS_VMM_START") {
                None => StartMode::Auto,
                Some(text) => StartMode::parse(text).ok_or_else(|| {
                    config_error(
                        "NIMBUS_VMM_START",
                        format!("invalid value {text:?}: expected cold, warm, snapshot or auto"),
                    )
                })?,
            },
            qemu_accel,
            qemu_binary: path("NIMBUS_QEMU_BIN"),
            qemu_transport: match env.get("NIMBUS_QEMU_TRANSPORT") {
                None => QemuTransport::VirtioSerial,
                Some(text) => QemuTransport::parse(text).ok_or_else(|| {
                    config_error(
                        "NIMBUS_QEMU_TRANSPORT",
                        format!("invalid value {text:?}: expected virtio-serial or serial"),
                    )
                })?,
            },
            firecracker_binary: path("NIMBUS_FIRECRACKER_BIN"),
            jailer,
            seccomp_filter: path("NIMBUS_SECCOMP_FILTER"),
            assets_dir: path("NIMBUS_ASSETS_DIR").unwrap_or_else(|| data_dir.join("assets")),
            runtime_dir: path("NIMBUS_VM_RUNTIME_DIR").unwrap_or_else(|| data_dir.join("vms")),
            rootfs_sha256,
            vcpus: env.parse_or("NIMBUS_VM_VCPUS", 2u32)?,
            memory_mib: env.parse_or("NIMBUS_VM_MEMORY_MIB", 1024u32)?,
            scratch_disk_mib: env.parse_or("NIMBUS_VM_SCRATCH_MIB", 4096u32)?,
            boot_timeout: env.seconds_or("NIMBUS_VM_BOOT_TIMEOUT", Duration::from_secs(60))?,
            network: match env.get("NIMBUS_VM_NETWORK") {
                None => NetworkSpec::Tap { egress: true },
                Some(text) => NetworkSpec::parse(text).ok_or_else(|| {
                    config_error(
                        "NIMBUS_VM_NETWORK",
                        format!("invalid value {text:?}: expected none, isolated or egress"),
                    )
                })?,
            },
        })
    }

    /// A driver of the given kind, configured (nothing is checked yet).
    pub fn driver(&self, kind: DriverKind) -> Arc<dyn VmmDriver> {
        match kind {
            DriverKind::Firecracker => Arc::new(FirecrackerDriver::new(FirecrackerConfig {
                binary: self.firecracker_binary.clone(),
                jailer: self.jailer.clone(),
                seccomp_filter: self.seccomp_filter.clone(),
                runtime_dir: self.runtime_dir.clone(),
            })),
            DriverKind::Qemu => Arc::new(QemuDriver::new(QemuConfig {
                binary: self.qemu_binary.clone(),
                accel: self.qemu_accel,
                runtime_dir: self.runtime_dir.clone(),
                transport: self.qemu_transport,
            })),
            DriverKind::Sandbox => Arc::new(SandboxDriver::new(SandboxConfig {
                runtime_dir: self.runtime_dir.clone(),
            })),
        }
    }

    /// Every driver's probe, best first.
    pub async fn probe_all(&self) -> Vec<Probe> {
        let mut probes = Vec::new();
        for kind in DriverKind::ALL {
            probes.push(self.driver(kind).probe().await);
        }
        probes
    }
}

/// The chosen driver and why.
pub struct Selection {
    /// The driver, configured and probed.
    pub driver: Arc<dyn VmmDriver>,
    /// Why it was chosen, and why better drivers were passed over (for logs).
    pub reason: String,
}

/// Picks the driver `NIMBUS_VMM` asks for (it must be available), or the best one.
pub async fn select(config: &VmmConfig) -> Result<Selection> {
    match config.choice {
        VmmChoice::Fixed(kind) => {
            let driver = config.driver(kind);
            let probe = driver.probe().await;
            if !probe.available {
                return Err(Error::Unavailable {
                    driver: kind.as_str(),
                    reason: probe.reason,
                });
            }
            Ok(Selection {
                driver,
                reason: format!("NIMBUS_VMM={kind}: {}", probe.reason),
            })
        }
        VmmChoice::Auto => {
            let probes = config.probe_all().await;
            let qemu_on_kvm =
                config.qemu_accel != Some(Accel::Tcg) && crate::host::hardware_kvm().is_ok();
            let mut passed_over = Vec::new();
            for probe in &probes {
                let refused_sandbox =
                    probe.driver == DriverKind::Sandbox && !config.sandbox_allowed_by_auto;
                let usable = probe.available
                    && (probe.driver != DriverKind::Qemu || qemu_on_kvm)
                    && !refused_sandbox;
                if usable {
                    let reason = if passed_over.is_empty() {
                        format!("auto: {} ({})", probe.driver, probe.reason)
                    } else {
                        format!(
                            "auto: {} ({}); passed over: {}",
                            probe.driver,
                            probe.reason,
                            passed_over.join("; ")
                        )
                    };
                    return Ok(Selection {
                        driver: config.driver(probe.driver),
                        reason,
                    });
                }
                let why = if refused_sandbox && probe.available {
                    "shares the host kernel: refused in production (NIMBUS_MODE=production) unless NIMBUS_ALLOW_SANDBOX=1".to_string()
                } else if probe.available {
                    "only TCG emulation here".to_string()
                } else {
                    probe.reason.clone()
                };
                passed_over.push(format!("{}: {why}", probe.driver));
            }
            Err(Error::Unavailable {
                driver: "auto",
                reason: passed_over.join("; "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_variable() {
        let env = Env::from_map([("NIMBUS_VMM", "xen")]);
        assert!(VmmConfig::from_env(&env)
            .expect_err("an error")
            .to_string()
            .contains("NIMBUS_VMM"));
        let env = Env::from_map([("NIMBUS_QEMU_ACCEL", "hvf")]);
        assert!(VmmConfig::from_env(&env)
            .expect_err("an error")
            .to_string()
            .contains("NIMBUS_QEMU_ACCEL"));
        let env = Env::from_map([("NIMBUS_VMM_START", "hot")]);
        assert!(VmmConfig::from_env(&env)
            .expect_err("an error")
            .to_string()
            .contains("NIMBUS_VMM_START"));
        let env = Env::from_map([("NIMBUS_ROOTFS_SHA256", "abc")]);
        assert!(VmmConfig::from_env(&env)
            .expect_err("an error")
            .to_string()
            .contains("NIMBUS_ROOTFS_SHA256"));
    }

    #[test]
    fn defaults_live_under_the_data_dir() {
        let env = Env::from_map([("NIMBUS_DATA_DIR", "/var/lib/nimbus")]);
        let config = VmmConfig::from_env(&env).expect("parses");
        assert_eq!(config.choice, VmmChoice::Auto);
        assert_eq!(config.assets_dir, PathBuf::from("/var/lib/nimbus/assets"));
        assert_eq!(config.runtime_dir, PathBuf::from("/var/lib/nimbus/vms"));
        assert!(config.jailer.is_none());
    }

    #[tokio::test]
    async fn auto_never_picks_tcg_and_says_why() {
        // Here (no hardware KVM, no firecracker) auto must land on the sandbox.
        if crate::host::hardware_kvm().is_ok() {
            return;
        }
        let env = Env::from_map([("NIMBUS_VM_RUNTIME_DIR", "/tmp/nimbus-select-test")]);
        let config = VmmConfig::from_env(&env).expect("parses");
        match select(&config).await {
            Ok(selection) => {
                assert_eq!(selection.driver.kind(), DriverKind::Sandbox);
                assert!(
                    selection.reason.contains("firecracker:"),
                    "{}",
                    selection.reason
                );
            }
            Err(error) => assert!(error.to_string().contains("qemu"), "{error}"),
        }
    }
}
