//! The namespace sandbox, for hosts without KVM. The kernel is the host's, so the
//! isolation is weaker than a VM's (the driver says so when it is picked, and
//! docs/security.md says what is shared); within that, a job gets:
//!
//! - its own mount, pid, uts and ipc namespaces, made by root (`unshare(1)`), and
//!   the VM network namespace every driver gets ([`crate::network`]): mounts,
//!   routes and firewall rules a job cannot change, because it holds no
//!   capability in namespaces it does not own;
//! - a root that is a per-job overlay: the attested tree (`sandbox/rootfs`, owners
//!   shifted into the sandbox id range) read-only beneath, the job's writes in
//!   `upper/` of its VM directory, gone with the VM;
//! - uid 0 in a user namespace of its own that maps to the unprivileged host uid
//!   [`SANDBOX_ID_BASE`](crate::assets::SANDBOX_ID_BASE): root to the job, nobody
//!   to the host; a capability set cut to what package installs need,
//!   `no_new_privs`, and a seccomp filter against mounts, namespaces, kernel
//!   modules, keyrings, BPF and friends ([`crate::guest`]).
//!
//! The host starts `nimbus-guest` from the top of the asset directory (root-owned
//! and attested), never from a tree a job's uid owns. Root is needed for all of it.

mod cgroup;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Command;

use crate::assets::SANDBOX_ID_BASE;
use crate::host;
use crate::network::VmNetwork;
use crate::protocol::GuestJob;
use crate::runtime::{self, Machine, VmDir};
use crate::session::GuestChannel;
use crate::{
    DriverKind, Error, GuestInfo, JobEvent, JobReport, Outcome, Probe, Result, Vm, VmSpec,
    VmmDriver,
};

/// How sandboxes are started on this host.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where each sandbox's private directory is created (`NIMBUS_VM_RUNTIME_DIR`).
    pub runtime_dir: PathBuf,
}

/// The namespace sandbox [`VmmDriver`]: needs root, `unshare(1)` and overlayfs, no KVM.
pub struct SandboxDriver {
    config: SandboxConfig,
}

impl SandboxDriver {
    /// A driver with this configuration; nothing is checked until [`VmmDriver::probe`].
    pub fn new(config: SandboxConfig) -> Self {
        SandboxDriver { config }
    }
}

/// Whether this host can run sandboxes: root (namespaces the job does not own,
/// the overlay, the id mapping), `unshare(1)` and overlayfs.
async fn check_host() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the sandbox needs root: it sets up the job's mounts, ids and network in namespaces the job does not own".into());
    }
    let unshare = host::find_binary("unshare", None)?;
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|line| line.trim_end().ends_with("overlay"))
    {
        return Err("the kernel has no overlayfs (modprobe overlay)".into());
    }
    let output = Command::new(&unshare)
        .args(["--mount", "--pid", "--uts", "--ipc", "--fork", "true"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running unshare: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "unshare cannot create namespaces here: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A directory for the job (its scratch, its overlay's upper layer), owned by the
/// job's root.
fn job_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(path).map_err(Error::io(format!("creating {}", path.display())))?;
    let id = Some(SANDBOX_ID_BASE);
    std::os::unix::fs::chown(path, id, id)
        .map_err(Error::io(format!("chown {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io(format!("chmod {}", path.display())))
}

#[async_trait]
impl VmmDriver for SandboxDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Sandbox
    }

    async fn probe(&self) -> Probe {
        let result = check_host().await;
        Probe {
            driver: DriverKind::Sandbox,
            available: result.is_ok(),
            reason: match result {
                Ok(()) => "Linux namespaces, per-job overlay root, unprivileged uid, seccomp; shares the host kernel: weaker isolation than a VM".into(),
                Err(reason) => reason,
            },
        }
    }

    async fn prepare(&self, spec: &VmSpec) -> Result<Box<dyn Vm>> {
        let needs_assets = || {
            Error::Config(
                "the sandbox driver needs the sandbox tree and nimbus-guest (assets verified for the sandbox)".into(),
            )
        };
        let tree = spec.rootfs_tree.clone().ok_or_else(needs_assets)?;
        let guest = spec.guest.clone().ok_or_else(needs_assets)?;
        let tree = std::path::absolute(&tree).map_err(Error::io("resolving the rootfs tree"))?;
        let guest = std::path::absolute(&guest).map_err(Error::io("resolving nimbus-guest"))?;
        let dir = VmDir::create(&self.config.runtime_dir, &spec.id)?;
        let dir_path =
            std::path::absolute(dir.path()).map_err(Error::io("resolving the VM directory"))?;
        for (name, path) in [("sandbox tree", &tree), ("VM directory", &dir_path)] {
            // Paths go into overlayfs's option string, where these are separators.
            if path.to_string_lossy().contains([',', ':', '\\']) {
                return Err(Error::Config(format!(
                    "the {name} path {} may not contain ',', ':' or '\\'",
                    path.display()
                )));
            }
        }
        job_dir(&dir.join("scratch"))?;
        job_dir(&dir.join("upper"))?;
        for name in ["work", "root"] {
            std::fs::create_dir(dir.join(name))
                .map_err(Error::io(format!("creating {name} in the VM directory")))?;
        }
        let mut vm = SandboxVm {
            spec: spec.clone(),
            tree,
            guest,
            dir: dir_path,
            machine: Machine::new(dir, LOG),
            cgroup: None,
            network: None,
        };
        match VmNetwork::for_spec(spec, false).await {
            Ok(network) => vm.network = network,
            Err(error) => {
                let _ = vm.machine.destroy().await;
                return Err(error);
            }
        }
        Ok(Box::new(vm))
    }
}

/// One sandbox, from prepared to destroyed.
pub struct SandboxVm {
    spec: VmSpec,
    tree: PathBuf,
    guest: PathBuf,
    /// The VM directory, absolute (the guest's mounts are made from it).
    dir: PathBuf,
    machine: Machine,
    cgroup: Option<cgroup::Cgroup>,
    network: Option<VmNetwork>,
}

const LOG: &str = "sandbox.log";

impl SandboxVm {
    fn command(&self) -> Result<Command> {
        let mut command = Command::new("unshare");
        // Made by root: the job holds no capability over these namespaces.
        command.args(["--mount", "--pid", "--uts", "--ipc"]);
        if self.network.is_none() {
            // No network: an empty namespace of its own (loopback only).
            command.arg("--net");
        }
        command
            .args(["--fork", "--kill-child"])
            .arg("--")
            .arg(&self.guest)
            .arg("--sandbox-root")
            .arg(&self.tree)
            .arg("--sandbox-dir")
            .arg(&self.dir)
            .arg("--id-base")
            .arg(SANDBOX_ID_BASE.to_string());
        if let Some(network) = &self.network {
            command.arg("--netns").arg(network.namespace_path());
        }
        command
            .args(["--transport", "stdio"])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(self.machine.dir.join(LOG))
                    .map_err(Error::io("creating sandbox.log"))?,
            );
        Ok(command)
    }
}

#[async_trait]
impl Vm for SandboxVm {
    fn id(&self) -> &str {
        &self.spec.id
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.spec.timeout = timeout;
    }

    async fn prime(&mut self) -> Result<()> {
        self.machine.prime().await
    }

    async fn boot(&mut self) -> Result<GuestInfo> {
        self.machine.check_bootable()?;
        let started = Instant::now();
        let mut child = runtime::spawn(self.command()?, &self.machine.dir, "unshare")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::State("sandbox pipes missing"));
        };
        self.machine.child = Some(child);
        let mut channel = GuestChannel::new(stdout, stdin);
        let hello = match tokio::time::timeout(self.spec.boot_timeout, channel.handshake()).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(error)) => {
                return Err(Error::Boot {
                    message: format!("sandbox: {error}"),
                    console: self.machine.dir.tail(LOG, 20),
                })
            }
            Err(_) => {
                return Err(Error::Boot {
                    message: "sandbox: no hello from nimbus-guest in time".into(),
                    console: self.machine.dir.tail(LOG, 20),
                })
            }
        };
        let info = self.machine.booted(channel, hello, started);
        self.limit_resources();
        Ok(info)
    }

    async fn run(
        &mut self,
        job: &GuestJob,
        on_event: &mut (dyn FnMut(JobEvent) + Send),
    ) -> Result<JobReport> {
        let report = self.machine.run(job, self.spec.timeout, on_event).await?;
        if !matches!(report.outcome, Outcome::Exited { .. }) {
            self.destroy().await?;
        }
        Ok(report)
    }

    async fn destroy(&mut self) -> Result<()> {
        // The process first: what else the VM holds is released once it is gone.
        let removed = self.machine.destroy().await;
        if let Some(network) = self.network.take() {
            network.remove().await;
        }
        if let Some(mut cgroup) = self.cgroup.take() {
            // The namespace's processes die with its init, a moment after it.
            for _ in 0..50 {
                if cgroup.try_remove() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        removed
    }
}

impl SandboxVm {
    /// Puts the sandbox (the guest agent, before it runs anything) into a cgroup
    /// with the spec's memory and vCPUs, where the host allows it.
    fn limit_resources(&mut self) {
        let Some(pid) = self.machine.child.as_ref().and_then(|child| child.id()) else {
            return;
        };
        match cgroup::Cgroup::create(&self.spec.id, self.spec.memory_mib, self.spec.vcpus) {
            Ok(cgroup) => match cgroup.adopt_tree(pid) {
                Ok(()) => self.cgroup = Some(cgroup),
                Err(reason) => {
                    tracing::warn!(vm = %self.spec.id, %reason, "sandbox runs without resource limits")
                }
            },
            Err(reason) => {
                tracing::warn!(vm = %self.spec.id, %reason, "sandbox runs without resource limits")
            }
        }
    }
}

/// The rootfs tree a sandbox boots inside an asset directory.
pub fn tree_in(assets: &Path) -> PathBuf {
    assets.join(crate::assets::SANDBOX_ROOT)
}
