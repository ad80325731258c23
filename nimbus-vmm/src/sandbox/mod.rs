//! The namespace sandbox, for hosts without KVM: the job runs in fresh user, pid,
//! mount, net, uts and ipc namespaces (`unshare(1)`), with the attested rootfs tree
//! mounted read-only, a per-job scratch directory at `/scratch` and tmpfs `/tmp`.
//! The kernel is the host's, so the isolation is much weaker than a VM's: the
//! driver says so when it is picked and in docs/FIRECRACKER_SECURITY.md.
//!
//! `nimbus-guest` itself sets up the mounts (it runs as root of the new user
//! namespace) and then speaks the same protocol as in a VM, over its stdin/stdout.

mod cgroup;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use async_trait::async_trait;
use tokio::process::Command;

use crate::assets::GUEST_IN_ROOTFS;
use crate::host;
use crate::protocol::GuestJob;
use crate::runtime::{self, Machine, VmDir};
use crate::session::GuestChannel;
use crate::spec::NetworkSpec;
use crate::{
    DriverKind, Error, GuestInfo, JobEvent, JobReport, Outcome, Probe, Result, Vm, VmSpec,
    VmmDriver,
};

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub runtime_dir: PathBuf,
}

pub struct SandboxDriver {
    config: SandboxConfig,
}

impl SandboxDriver {
    pub fn new(config: SandboxConfig) -> Self {
        SandboxDriver { config }
    }
}

/// Whether this host lets us create the namespaces (binary present, user
/// namespaces allowed).
async fn check_host() -> Result<(), String> {
    let unshare = host::find_binary("unshare", None)?;
    let output = Command::new(&unshare)
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--mount",
            "--net",
            "--uts",
            "--ipc",
            "--fork",
            "true",
        ])
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
                Ok(()) => "Linux namespaces (user, pid, mount, net, uts, ipc); shares the host kernel: weaker isolation than a VM".into(),
                Err(reason) => reason,
            },
        }
    }

    async fn prepare(&self, spec: &VmSpec) -> Result<Box<dyn Vm>> {
        let tree = spec.rootfs_tree.clone().ok_or_else(|| {
            Error::Config(
                "the sandbox driver needs the rootfs tree (assets verified for the sandbox)".into(),
            )
        })?;
        let tree = std::path::absolute(&tree).map_err(Error::io("resolving the rootfs tree"))?;
        let dir = VmDir::create(&self.config.runtime_dir, &spec.id)?;
        let scratch = dir.join("scratch");
        std::fs::create_dir(&scratch).map_err(Error::io("creating the scratch directory"))?;
        Ok(Box::new(SandboxVm {
            spec: spec.clone(),
            tree,
            machine: Machine::new(dir, LOG),
            cgroup: None,
        }))
    }
}

pub struct SandboxVm {
    spec: VmSpec,
    tree: PathBuf,
    machine: Machine,
    cgroup: Option<cgroup::Cgroup>,
}

const LOG: &str = "sandbox.log";

impl SandboxVm {
    fn command(&self) -> Result<Command> {
        let mut command = Command::new("unshare");
        command.args([
            "--user",
            "--map-root-user",
            "--pid",
            "--mount",
            "--uts",
            "--ipc",
        ]);
        // Egress shares the host's network stack; without it the job sees only a
        // loopback device of its own.
        if !matches!(self.spec.network, NetworkSpec::Tap { egress: true }) {
            command.arg("--net");
        }
        command
            .args(["--fork", "--kill-child"])
            .arg("--")
            .arg(self.tree.join(GUEST_IN_ROOTFS))
            .arg("--sandbox-root")
            .arg(&self.tree)
            .arg("--scratch")
            .arg(self.machine.dir.join("scratch"))
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

/// The rootfs tree a sandbox would use inside an asset directory.
pub fn tree_in(assets: &Path) -> PathBuf {
    assets.join(crate::assets::ROOTFS_TREE)
}
