//! Firecracker: the production driver on hosts with hardware KVM. The VM is
//! configured through Firecracker's API socket ([`api`]) and the guest reaches the
//! host over vsock: Firecracker turns the guest's connection to CID 2, port 1024
//! into a connection to the Unix socket `<uds_path>_1024`, on which we listen.
//! Optionally jailed ([`jailer`]).
//!
//! Firecracker runs in the VM's own directory and is handed the VM's own files
//! (disks, vsock socket) by paths relative to it (in-chroot paths when jailed):
//! a snapshot records those paths, and its restored VMs find their own files
//! under the same names ([`snapshot`]).
//!
//! Needs Firecracker ≥ 1.8 with Debian's cloud kernel: that kernel finds virtio-mmio
//! devices through ACPI (it lacks `VIRTIO_MMIO_CMDLINE_DEVICES`).

pub mod api;
pub mod jailer;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UnixListener;
use tokio::process::Command;

use self::api::{BootSource, Drive, FirecrackerApi, MachineConfig, NetworkInterface, Vsock};
use self::jailer::{JailLayout, JailerConfig};
use crate::host;
use crate::network::VmNetwork;
use crate::protocol::{GuestJob, VSOCK_PORT};
use crate::runtime::{self, Machine, VmDir};
use crate::session::GuestChannel;
use crate::{
    DriverKind, Error, GuestInfo, JobEvent, JobReport, Outcome, Probe, Result, Vm, VmSpec,
    VmmDriver,
};

/// How Firecracker VMs are started on this host.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    /// `firecracker`, from PATH unless given (`NIMBUS_FIRECRACKER_BIN`).
    pub binary: Option<PathBuf>,
    /// Run every VM under Firecracker's jailer (`NIMBUS_JAILER_BIN` set); `None` runs it directly.
    pub jailer: Option<JailerConfig>,
    /// Without the jailer: a seccomp filter for `--seccomp-filter`.
    pub seccomp_filter: Option<PathBuf>,
    /// Where each VM's private directory is created (`NIMBUS_VM_RUNTIME_DIR`).
    pub runtime_dir: PathBuf,
}

/// The Firecracker [`VmmDriver`]: needs hardware KVM and the `firecracker` binary.
pub struct FirecrackerDriver {
    config: FirecrackerConfig,
}

impl FirecrackerDriver {
    /// A driver with this configuration; nothing is checked until [`VmmDriver::probe`].
    pub fn new(config: FirecrackerConfig) -> Self {
        FirecrackerDriver { config }
    }

    fn binary(&self) -> Result<PathBuf, String> {
        host::find_binary("firecracker", self.config.binary.as_deref())
    }

    /// [`VmmDriver::prepare`], keeping the concrete type (a snapshot's template
    /// is saved through it).
    async fn prepare_vm(&self, spec: &VmSpec) -> Result<FirecrackerVm> {
        let binary = self.binary().map_err(|reason| Error::Unavailable {
            driver: "firecracker",
            reason,
        })?;
        let dir = VmDir::create(&self.config.runtime_dir, &spec.id)?;
        let mut vm = FirecrackerVm {
            spec: spec.clone(),
            config: self.config.clone(),
            binary,
            machine: Machine::new(dir, CONSOLE_LOG),
            network: None,
            api: None,
            jail: None,
        };
        if let Err(error) = vm.lay_out(&self.config.runtime_dir).await {
            let _ = vm.destroy().await;
            return Err(error);
        }
        Ok(vm)
    }
}

#[async_trait]
impl VmmDriver for FirecrackerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Firecracker
    }

    async fn probe(&self) -> Probe {
        let result = host::hardware_kvm().and_then(|()| {
            let binary = self.binary()?;
            if let Some(jailer) = &self.config.jailer {
                host::find_binary("jailer", Some(&jailer.binary))?;
            }
            Ok(binary)
        });
        Probe {
            driver: DriverKind::Firecracker,
            available: result.is_ok(),
            reason: match result {
                Ok(binary) => format!(
                    "{} with hardware KVM{}",
                    binary.display(),
                    if self.config.jailer.is_some() {
                        ", jailed"
                    } else {
                        ""
                    }
                ),
                Err(reason) => reason,
            },
        }
    }

    async fn prepare(&self, spec: &VmSpec) -> Result<Box<dyn Vm>> {
        Ok(Box::new(self.prepare_vm(spec).await?))
    }

    async fn snapshot(
        &self,
        spec: &VmSpec,
        assets_sha256: &str,
    ) -> Result<crate::snapshot::Snapshot> {
        snapshot::make(self, spec, assets_sha256).await
    }
}

/// Everything the API is told before InstanceStart, in the order it is told.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// `PUT /machine-config`.
    pub machine: MachineConfig,
    /// `PUT /boot-source`.
    pub boot_source: BootSource,
    /// One `PUT /drives/…` each, in order: the rootfs, then the scratch disk if any.
    pub drives: Vec<Drive>,
    /// `PUT /network-interfaces/eth0`, when the VM has a network.
    pub network: Option<NetworkInterface>,
    /// `PUT /vsock`: the host ⇄ guest channel.
    pub vsock: Vsock,
}

/// Sends the plan and starts the instance: the exact conversation Firecracker's
/// documentation prescribes (configuration PUTs, then `InstanceStart`).
pub async fn configure_and_start(api: &FirecrackerApi, plan: &BootPlan) -> Result<()> {
    api.machine_config(&plan.machine).await?;
    api.boot_source(&plan.boot_source).await?;
    for drive in &plan.drives {
        api.drive(drive).await?;
    }
    if let Some(iface) = &plan.network {
        api.network_interface(iface).await?;
    }
    api.vsock(&plan.vsock).await?;
    api.instance_start().await
}

/// One Firecracker VM, from prepared to destroyed.
pub struct FirecrackerVm {
    spec: VmSpec,
    config: FirecrackerConfig,
    binary: PathBuf,
    machine: Machine,
    network: Option<VmNetwork>,
    /// Firecracker's API, once it runs.
    api: Option<FirecrackerApi>,
    /// The jail, when jailed and started.
    jail: Option<JailLayout>,
}

const ROOTFS: &str = "rootfs.ext4";
const SCRATCH: &str = "scratch.ext4";
const CONSOLE_LOG: &str = "console.log";
/// The vsock device's Unix socket, in the VM's directory (or its jail).
const VSOCK: &str = "v.sock";

impl FirecrackerVm {
    async fn lay_out(&mut self, runtime_root: &Path) -> Result<()> {
        // Firecracker needs raw images: a private copy (reflinked where the
        // filesystem can) so the attested image is never written. A restored VM
        // copies the disks its snapshot's memory goes with.
        let (rootfs, scratch) = match &self.spec.snapshot {
            Some(saved) => {
                crate::snapshot::check(saved, snapshot::FILES)?;
                (saved.dir.join(ROOTFS), saved.dir.join(SCRATCH))
            }
            None => (
                self.spec.rootfs.clone(),
                if self.spec.scratch_disk_mib > 0 {
                    runtime::scratch_template(runtime_root, self.spec.scratch_disk_mib).await?
                } else {
                    PathBuf::new()
                },
            ),
        };
        sparse_copy(&rootfs, &self.machine.dir.join(ROOTFS)).await?;
        if self.spec.scratch_disk_mib > 0 {
            sparse_copy(&scratch, &self.machine.dir.join(SCRATCH)).await?;
        }
        self.network = VmNetwork::for_spec(&self.spec, true).await?;
        Ok(())
    }

    /// The plan with paths as Firecracker will see them (in-chroot when jailed).
    pub fn plan(
        &self,
        path_of: &dyn Fn(&Path, &str) -> Result<String>,
        vsock_uds: String,
    ) -> Result<BootPlan> {
        let spec = &self.spec;
        let vmlinux = spec.vmlinux.as_ref().ok_or_else(|| {
            Error::Config(
                "Firecracker boots an ELF vmlinux: the assets have none (nimbus assets build)"
                    .into(),
            )
        })?;
        let mut boot_args = vec![
            "console=ttyS0".to_string(),
            "reboot=k".into(),
            "panic=1".into(),
            "pci=off".into(),
            "quiet".into(),
            format!("nimbus.transport=vsock:{VSOCK_PORT}"),
        ];
        if let Some(network) = &self.network {
            boot_args.extend(network.guest_boot_args());
        }
        boot_args.extend(spec.boot_args.iter().cloned());
        let mut drives = vec![Drive {
            drive_id: "rootfs".into(),
            path_on_host: path_of(&self.machine.dir.join(ROOTFS), ROOTFS)?,
            // Our init mounts by label from the initramfs; the drive is still the root.
            is_root_device: false,
            is_read_only: false,
        }];
        if spec.scratch_disk_mib > 0 {
            drives.push(Drive {
                drive_id: "scratch".into(),
                path_on_host: path_of(&self.machine.dir.join(SCRATCH), SCRATCH)?,
                is_root_device: false,
                is_read_only: false,
            });
        }
        Ok(BootPlan {
            machine: MachineConfig {
                vcpu_count: spec.vcpus.max(1),
                mem_size_mib: spec.memory_mib.max(64),
                smt: false,
                track_dirty_pages: false,
            },
            boot_source: BootSource {
                kernel_image_path: path_of(vmlinux, "vmlinux")?,
                boot_args: boot_args.join(" "),
                initrd_path: match &spec.initrd {
                    Some(initrd) => Some(path_of(initrd, "initrd.img")?),
                    None => None,
                },
            },
            drives,
            network: self.network.as_ref().map(|network| NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: network.tap().to_string(),
                guest_mac: Some(network.mac().to_string()),
            }),
            vsock: Vsock {
                guest_cid: spec.vsock_cid.max(3),
                uds_path: vsock_uds,
            },
        })
    }

    fn boot_error(&self, message: impl Into<String>) -> Error {
        Error::Boot {
            message: message.into(),
            console: self.machine.dir.tail(CONSOLE_LOG, 20),
        }
    }

    /// Starts Firecracker (jailed or not) with the VM's files staged, waits for
    /// its API and returns it with the boot plan and the vsock socket's host path.
    async fn start_firecracker(
        &mut self,
        deadline: Instant,
    ) -> Result<(FirecrackerApi, BootPlan, PathBuf)> {
        let console = std::fs::File::create(self.machine.dir.join(CONSOLE_LOG))
            .map_err(Error::io("creating console.log"))?;
        let (mut command, api, plan, vsock_host) = match self.config.jailer.clone() {
            Some(jailer) => {
                let layout = jailer.layout(&self.spec.id);
                let argv = jailer.argv(&self.binary, &self.spec.id);
                let mut command = Command::new(&argv[0]);
                command.args(&argv[1..]);
                if let Some(network) = &self.network {
                    command.args([
                        "--netns",
                        &format!("/var/run/netns/{}", network.namespace()),
                    ]);
                }
                if let Some(filter) = &jailer.seccomp_filter {
                    jailer.stage(&layout, filter, "seccomp.bpf", false)?;
                }
                // Files in the VM's own directory are its own; the rest is shared.
                let own = self.machine.dir.path().to_path_buf();
                let stage = |file: &Path, name: &str| {
                    jailer.stage(&layout, file, name, file.starts_with(&own))
                };
                let plan = self.plan(&stage, format!("/{VSOCK}"))?;
                let api = FirecrackerApi::new(&layout.api_socket);
                let vsock_host = layout.root.join(VSOCK);
                self.jail = Some(layout);
                (command, api, plan, vsock_host)
            }
            None => {
                let api_socket = self.machine.dir.join("api.sock");
                let mut command = match &self.network {
                    Some(network) => network.wrap(&self.binary),
                    None => Command::new(&self.binary),
                };
                command.arg("--api-sock").arg(&api_socket);
                if let Some(filter) = &self.config.seccomp_filter {
                    command.arg("--seccomp-filter").arg(filter);
                }
                // The VM's own files by their names in its directory, Firecracker's
                // working directory; shared assets by absolute path.
                let own = self.machine.dir.path().to_path_buf();
                let by_path = |file: &Path, name: &str| -> Result<String> {
                    if file.starts_with(&own) {
                        return Ok(name.to_string());
                    }
                    Ok(std::path::absolute(file)
                        .map_err(Error::io("resolving an asset path"))?
                        .display()
                        .to_string())
                };
                let plan = self.plan(&by_path, VSOCK.into())?;
                (
                    command,
                    FirecrackerApi::new(api_socket),
                    plan,
                    self.machine.dir.join(VSOCK),
                )
            }
        };
        command
            .current_dir(self.machine.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(console.try_clone().map_err(Error::io("console.log"))?)
            .stderr(console);
        self.machine.child = Some(runtime::spawn(command, &self.machine.dir, "firecracker")?);
        // The API answers once its socket accepts connections.
        if let Err(reason) = self
            .machine
            .connect_when_open(
                api.socket(),
                "firecracker",
                Duration::from_millis(5),
                deadline,
            )
            .await
        {
            return Err(self.boot_error(reason));
        }
        Ok((api, plan, vsock_host))
    }
}

#[async_trait]
impl Vm for FirecrackerVm {
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
        let deadline = started + self.spec.boot_timeout;
        let (api, plan, vsock_host) = self.start_firecracker(deadline).await?;

        // Listen before the guest can connect: Firecracker forwards the guest's
        // connection to port N to `<uds_path>_N`.
        let listen_path = PathBuf::from(format!("{}_{VSOCK_PORT}", vsock_host.display()));
        let _ = std::fs::remove_file(&listen_path);
        let listener = UnixListener::bind(&listen_path)
            .map_err(Error::io(format!("listening on {}", listen_path.display())))?;
        let restoring = self.spec.snapshot.clone();
        match &restoring {
            // Before any configuration: the snapshot carries the whole machine.
            Some(saved) => {
                let (state, memory) = self.restore_paths(saved)?;
                if let Err(error) = api.snapshot_load(&state, &memory).await {
                    return Err(
                        self.boot_error(format!("restoring snapshot {}: {error}", saved.key))
                    );
                }
            }
            None => configure_and_start(&api, &plan).await?,
        }
        self.api = Some(api);

        // A restored guest connects again from where its template left off.
        let stream = match tokio::time::timeout_at(deadline.into(), listener.accept()).await {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(error)) => {
                return Err(
                    self.boot_error(format!("accepting the guest's vsock connection: {error}"))
                )
            }
            Err(_) => return Err(self.boot_error("the guest did not connect over vsock in time")),
        };
        let (reader, writer) = stream.into_split();
        let mut channel = GuestChannel::new(reader, writer);
        let greeted = match restoring {
            Some(_) => {
                let identity = crate::snapshot::fresh_identity(
                    self.network.as_ref().map(|network| network.mac()),
                );
                tokio::time::timeout_at(deadline.into(), channel.refresh(identity)).await
            }
            None => tokio::time::timeout_at(deadline.into(), channel.handshake()).await,
        };
        let hello = match greeted {
            Ok(Ok(hello)) => hello,
            Ok(Err(error)) => return Err(self.boot_error(format!("handshake: {error}"))),
            Err(_) => return Err(self.boot_error("the guest did not say hello in time")),
        };
        let info = self.machine.booted(channel, hello, started);
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
        if let Some(jailer) = &self.config.jailer {
            let jail = jailer.chroot_base.join("firecracker").join(&self.spec.id);
            let _ = std::fs::remove_dir_all(jail);
        }
        removed
    }
}

async fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    runtime::run_tool(
        "cp",
        &[
            "--reflink=auto",
            "--sparse=always",
            &from.to_string_lossy(),
            &to.to_string_lossy(),
        ],
    )
    .await
    .map(drop)
}
