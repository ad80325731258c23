//! QEMU `microvm`: the same kernel and rootfs as Firecracker, virtio-mmio block
//! devices and a virtio-serial port to the guest. Hardware KVM where the host has
//! it; elsewhere TCG (software emulation) — slow, but a real kernel in a real VM, so
//! the VM path is proven on every machine, CI included.
//!
//! Per-VM files (under the VM's runtime directory): a qcow2 overlay over the
//! attested rootfs image (the image itself is never written), a qcow2 overlay over
//! the shared scratch template, the guest channel socket and the console log.
//!
//! Snapshots ([`snapshot`]): a template VM boots with its memory in a shared file,
//! is primed and migrated (device state only) into a file; a VM restored from it
//! maps that memory copy-on-write, takes qcow2 overlays of the template's disks and
//! loads the device state with `-incoming`, then gets an identity of its own.

pub mod qmp;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UnixStream;
use tokio::process::Command;

use crate::host;
use crate::network::VmNetwork;
use crate::protocol::{GuestJob, VIRTIO_PORT_NAME};
use crate::runtime::{self, Machine, VmDir};
use crate::session::GuestChannel;
use crate::{
    DriverKind, Error, GuestInfo, JobEvent, JobReport, Outcome, Probe, Result, Vm, VmSpec,
    VmmDriver,
};

/// QEMU's acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm` (PVM does not count).
    Kvm,
    /// Software emulation: runs anywhere, but slowly; fine for proving the VM path.
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg` (the `NIMBUS_QEMU_ACCEL` values besides `auto`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// How the guest reaches the host under QEMU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QemuTransport {
    /// A virtio-serial port of its own (the default).
    #[default]
    VirtioSerial,
    /// The serial console, shared with the kernel's messages: the last resort for
    /// guests without virtio-console. The console then has no log file.
    Serial,
}

impl QemuTransport {
    /// `virtio-serial` or `serial` (the `NIMBUS_QEMU_TRANSPORT` values).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "virtio-serial" => Some(QemuTransport::VirtioSerial),
            "serial" => Some(QemuTransport::Serial),
            _ => None,
        }
    }
}

/// How QEMU VMs are started on this host.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// `qemu-system-x86_64`, from PATH unless given.
    pub binary: Option<PathBuf>,
    /// None: KVM when the host has hardware KVM, else TCG.
    pub accel: Option<Accel>,
    /// Where VM runtime directories are created.
    pub runtime_dir: PathBuf,
    /// The host ⇄ guest channel (`NIMBUS_QEMU_TRANSPORT`).
    pub transport: QemuTransport,
}

/// The QEMU [`VmmDriver`]: `qemu-system-x86_64` and `qemu-img`, with KVM or TCG.
pub struct QemuDriver {
    config: QemuConfig,
}

impl QemuDriver {
    /// A driver with this configuration; nothing is checked until [`VmmDriver::probe`].
    pub fn new(config: QemuConfig) -> Self {
        QemuDriver { config }
    }

    fn binary(&self) -> Result<PathBuf, String> {
        host::find_binary("qemu-system-x86_64", self.config.binary.as_deref())
    }

    /// The acceleration a VM would get, or why none works.
    pub fn accel(&self) -> Result<Accel, String> {
        match self.config.accel {
            Some(Accel::Kvm) => host::hardware_kvm().map(|()| Accel::Kvm),
            Some(Accel::Tcg) => Ok(Accel::Tcg),
            None => Ok(if host::hardware_kvm().is_ok() {
                Accel::Kvm
            } else {
                Accel::Tcg
            }),
        }
    }
}

#[async_trait]
impl VmmDriver for QemuDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Qemu
    }

    async fn probe(&self) -> Probe {
        let result = self.binary().and_then(|binary| {
            // Per-VM copy-on-write overlays are made with qemu-img.
            host::find_binary("qemu-img", None).map_err(|e| format!("{e} (apt-get install qemu-utils)"))?;
            let accel = self.accel()?;
            Ok(match accel {
                Accel::Kvm => format!("{} with hardware KVM", binary.display()),
                Accel::Tcg => format!(
                    "{} with TCG software emulation (no hardware KVM: {}); fine for tests, slow for real work",
                    binary.display(),
                    host::hardware_kvm().err().unwrap_or_else(|| "TCG forced".into())
                ),
            })
        });
        Probe {
            driver: DriverKind::Qemu,
            available: result.is_ok(),
            reason: result.unwrap_or_else(|e| e),
        }
    }

    async fn prepare(&self, spec: &VmSpec) -> Result<Box<dyn Vm>> {
        let start = match &spec.snapshot {
            Some(snapshot) => {
                crate::snapshot::check(snapshot, snapshot::FILES)?;
                if self.config.transport != QemuTransport::VirtioSerial {
                    return Err(Error::Config(
                        "VMs restored from a snapshot need NIMBUS_QEMU_TRANSPORT=virtio-serial"
                            .into(),
                    ));
                }
                Start::Restore(snapshot.clone())
            }
            None => Start::Boot,
        };
        Ok(Box::new(self.prepare_vm(spec, start).await?))
    }

    async fn snapshot(
        &self,
        spec: &VmSpec,
        assets_sha256: &str,
    ) -> Result<crate::snapshot::Snapshot> {
        snapshot::make(self, spec, assets_sha256).await
    }
}

impl QemuDriver {
    async fn prepare_vm(&self, spec: &VmSpec, start: Start) -> Result<QemuVm> {
        let binary = self.binary().map_err(|reason| Error::Unavailable {
            driver: "qemu",
            reason,
        })?;
        let accel = self.accel().map_err(|reason| Error::Unavailable {
            driver: "qemu",
            reason,
        })?;
        let dir = VmDir::create(&self.config.runtime_dir, &spec.id)?;
        let mut vm = QemuVm {
            spec: spec.clone(),
            binary,
            accel,
            transport: self.config.transport,
            machine: Machine::new(dir, CONSOLE_LOG),
            network: None,
            start,
        };
        if let Err(error) = vm.lay_out_disks(&self.config.runtime_dir).await {
            let _ = vm.destroy().await;
            return Err(error);
        }
        Ok(vm)
    }
}

/// How a QEMU VM gets going.
#[derive(Debug, Clone)]
enum Start {
    /// Boots its kernel (every VM without a snapshot).
    Boot,
    /// Boots its kernel with its memory in this shared file, to be snapshotted.
    Template {
        /// The memory file (becomes the snapshot's).
        ram: PathBuf,
    },
    /// Restored from a snapshot.
    Restore(crate::snapshot::Snapshot),
}

/// One QEMU VM, from prepared to destroyed.
pub struct QemuVm {
    spec: VmSpec,
    binary: PathBuf,
    accel: Accel,
    transport: QemuTransport,
    machine: Machine,
    network: Option<VmNetwork>,
    start: Start,
}

/// Kernel arguments that skip work a throwaway CI guest does not need, measured
/// with `initcall_debug` under TCG: crypto self-tests (~0.45 s), kprobe tracing
/// setup, the X.509 keyrings (module signatures are still checked against nothing:
/// Debian does not enforce them, the modules come from the attested initramfs).
const FAST_BOOT_ARGS: &[&str] = &[
    "cryptomgr.notests",
    "initcall_blacklist=init_kprobe_trace,load_system_certificate_list,crypto_kdf108_init,machine_keyring_init,init_encrypted,vga_arb_device_init",
];

const ROOT_OVERLAY: &str = "rootfs.qcow2";
const SCRATCH_OVERLAY: &str = "scratch.qcow2";
const GUEST_SOCKET: &str = "guest.sock";
const CONSOLE_LOG: &str = "console.log";
const QEMU_LOG: &str = "qemu.log";
const QMP_SOCKET: &str = "qmp.sock";

impl QemuVm {
    async fn lay_out_disks(&mut self, runtime_root: &Path) -> Result<()> {
        if let Start::Restore(snapshot) = &self.start {
            // The template's disks as it left them, under overlays of this VM's own.
            overlay(
                &snapshot.dir.join(ROOT_OVERLAY),
                &self.machine.dir.join(ROOT_OVERLAY),
                "qcow2",
            )
            .await?;
            if self.spec.scratch_disk_mib > 0 {
                overlay(
                    &snapshot.dir.join(SCRATCH_OVERLAY),
                    &self.machine.dir.join(SCRATCH_OVERLAY),
                    "qcow2",
                )
                .await?;
            }
            self.network = VmNetwork::for_spec(&self.spec, true).await?;
            return Ok(());
        }
        let rootfs = absolute(&self.spec.rootfs)?;
        overlay(&rootfs, &self.machine.dir.join(ROOT_OVERLAY), "raw").await?;
        if self.spec.scratch_disk_mib > 0 {
            let template =
                runtime::scratch_template(runtime_root, self.spec.scratch_disk_mib).await?;
            overlay(&template, &self.machine.dir.join(SCRATCH_OVERLAY), "raw").await?;
        }
        self.network = VmNetwork::for_spec(&self.spec, true).await?;
        Ok(())
    }

    fn command(&self) -> Result<Command> {
        let spec = &self.spec;
        let path = |name: &str| self.machine.dir.join(name).to_string_lossy().into_owned();
        let socket = path(GUEST_SOCKET);
        if socket.len() > 100 {
            return Err(Error::Config(format!(
                "the guest socket path {socket} is too long for a Unix socket: use a shorter NIMBUS_VM_RUNTIME_DIR"
            )));
        }
        let mut cmdline = vec![
            "console=ttyS0",
            "reboot=t",
            "panic=-1",
            "quiet",
            "loglevel=3",
            "8250.nr_uarts=1",
            "i8042.noaux",
            "i8042.nomux",
            "i8042.nopnp",
            "i8042.dumbkbd",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        cmdline.extend(FAST_BOOT_ARGS.iter().map(|arg| arg.to_string()));
        if self.accel == Accel::Tcg {
            // Under TCG the guest can hang calibrating the TSC on a loaded host.
            cmdline.push("tsc_early_khz=2000000".into());
            cmdline.push("lpj=8000000".into());
        }
        cmdline.push(match self.transport {
            QemuTransport::VirtioSerial => {
                format!("nimbus.transport=virtio-serial:{VIRTIO_PORT_NAME}")
            }
            QemuTransport::Serial => "nimbus.transport=serial:/dev/ttyS0".to_string(),
        });
        if let Some(network) = &self.network {
            cmdline.extend(network.guest_boot_args());
        }
        cmdline.extend(spec.boot_args.iter().cloned());

        let mut command = match &self.network {
            Some(network) => network.wrap(&self.binary),
            None => Command::new(&self.binary),
        };
        // Snapshots keep guest memory in a file: shared by the template (its writes
        // land in the file), mapped copy-on-write by every restored VM.
        let memory_file = match &self.start {
            Start::Boot => None,
            Start::Template { ram } => Some((absolute(ram)?, "on")),
            Start::Restore(snapshot) => Some((absolute(&snapshot.dir.join(snapshot::RAM))?, "off")),
        };
        if memory_file.is_some() {
            command.args(["-M", "microvm,pit=on,pic=on,rtc=on,memory-backend=mem"]);
        } else {
            command.args(["-M", "microvm,pit=on,pic=on,rtc=on"]);
        }
        match self.accel {
            Accel::Kvm => command.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => command.args(["-accel", "tcg", "-cpu", "max"]),
        };
        command
            .args(["-smp", &spec.vcpus.max(1).to_string()])
            .args(["-m", &spec.memory_mib.max(64).to_string()]);
        if let Some((ram, share)) = &memory_file {
            let ram = ram.to_string_lossy();
            if ram.contains(',') {
                return Err(Error::Config(format!(
                    "the snapshot memory file {ram} may not contain ','"
                )));
            }
            command.args([
                "-object",
                &format!(
                    "memory-backend-file,id=mem,size={}M,mem-path={ram},share={share}",
                    spec.memory_mib.max(64)
                ),
            ]);
        }
        if !matches!(self.start, Start::Boot) {
            command.args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", path(QMP_SOCKET)),
            ]);
        }
        if matches!(self.start, Start::Restore(_)) {
            // The device state is loaded over QMP once the guest channel is connected.
            command.args(["-incoming", "defer"]);
        }
        command
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args([
                "-serial",
                &match self.transport {
                    QemuTransport::VirtioSerial => format!("file:{}", path(CONSOLE_LOG)),
                    QemuTransport::Serial => "chardev:nimbus".to_string(),
                },
            ])
            .arg("-kernel")
            // An ELF vmlinux boots through PVH, skipping the bzImage's
            // self-decompression (half a second under TCG).
            .arg(absolute(spec.vmlinux.as_ref().unwrap_or(&spec.kernel))?)
            .args(["-append", &cmdline.join(" ")]);
        if let Some(initrd) = &spec.initrd {
            command.arg("-initrd").arg(absolute(initrd)?);
        }
        command
            .args([
                "-drive",
                &format!(
                    "id=root,file={},format=qcow2,if=none,cache=unsafe",
                    path(ROOT_OVERLAY)
                ),
            ])
            .args(["-device", "virtio-blk-device,drive=root"]);
        if spec.scratch_disk_mib > 0 {
            command
                .args([
                    "-drive",
                    &format!(
                        "id=scratch,file={},format=qcow2,if=none,cache=unsafe",
                        path(SCRATCH_OVERLAY)
                    ),
                ])
                .args(["-device", "virtio-blk-device,drive=scratch"]);
        }
        if let Some(network) = &self.network {
            command
                .args([
                    "-netdev",
                    &format!(
                        "tap,id=net0,ifname={},script=no,downscript=no",
                        network.tap()
                    ),
                ])
                .args([
                    "-device",
                    &format!("virtio-net-device,netdev=net0,mac={}", network.mac()),
                ]);
        }
        let chardev = format!("socket,id=nimbus,path={socket},server=on,wait=off");
        command.args(["-chardev", &chardev]);
        if self.transport == QemuTransport::VirtioSerial {
            command.args(["-device", "virtio-serial-device"]).args([
                "-device",
                &format!("virtserialport,chardev=nimbus,name={VIRTIO_PORT_NAME}"),
            ]);
        }
        let log = std::fs::File::create(self.machine.dir.join(QEMU_LOG))
            .map_err(Error::io("creating qemu.log"))?;
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        Ok(command)
    }

    fn boot_error(&self, message: impl Into<String>) -> Error {
        let mut console = self.machine.dir.tail(QEMU_LOG, 5);
        console.extend(self.machine.dir.tail(CONSOLE_LOG, 20));
        Error::Boot {
            message: message.into(),
            console,
        }
    }

    async fn connect(&mut self, deadline: Instant) -> Result<UnixStream> {
        let socket = self.machine.dir.join(GUEST_SOCKET);
        self.machine
            .connect_when_open(&socket, "qemu", Duration::from_millis(10), deadline)
            .await
            .map_err(|reason| self.boot_error(reason))
    }
}

#[async_trait]
impl Vm for QemuVm {
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
        let command = self.command()?;
        self.machine.child = Some(runtime::spawn(
            command,
            &self.machine.dir,
            "qemu-system-x86_64",
        )?);
        let stream = self.connect(deadline).await?;
        if let Start::Restore(snapshot) = &self.start {
            let snapshot = snapshot.clone();
            return self.restore(stream, &snapshot, started, deadline).await;
        }
        let (reader, writer) = stream.into_split();
        let mut channel = match self.transport {
            QemuTransport::VirtioSerial => GuestChannel::new(reader, writer),
            QemuTransport::Serial => GuestChannel::over_serial_console(reader, writer),
        };
        let hello = match tokio::time::timeout_at(deadline.into(), channel.handshake()).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(error)) => return Err(self.boot_error(format!("handshake: {error}"))),
            Err(_) => {
                return Err(self.boot_error(format!(
                    "the guest did not say hello within {:?}",
                    self.spec.boot_timeout
                )))
            }
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
        removed
    }
}

/// A copy-on-write qcow2 `overlay` of `base` (in `base_format`). qemu-img resolves a relative
/// backing path against the overlay's own folder, not the working directory, so
/// the base is named by its absolute path (a relative NIMBUS_VM_RUNTIME_DIR, such
/// as the default `./.nimbus/vms`, would otherwise point nowhere).
async fn overlay(base: &Path, overlay: &Path, base_format: &str) -> Result<()> {
    let base = absolute(base)?;
    runtime::run_tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            base_format,
            "-b",
            &base.to_string_lossy(),
            &overlay.to_string_lossy(),
        ],
    )
    .await
    .map(drop)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io(format!("resolving {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_overlay_of_a_relative_base_opens_from_anywhere() {
        let qemu_img = host::find_binary("qemu-img", None).ok();
        if nimbus_core::testsuite::require(qemu_img, "qemu-img (apt-get install qemu-utils)")
            .is_none()
        {
            return;
        }
        // Relative to the working directory, as `./.nimbus/vms` is.
        let scratch = PathBuf::from(format!("target-overlay-test-{}", std::process::id()));
        std::fs::create_dir_all(scratch.join("vm")).expect("dirs");
        let base = scratch.join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).expect("base");
        let image = scratch.join("vm").join("root.qcow2");
        overlay(&base, &image, "raw").await.expect("overlay");
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--backing-chain", "--output=json"])
            .arg(&image)
            .output()
            .expect("qemu-img info");
        let _ = std::fs::remove_dir_all(&scratch);
        assert!(
            info.status.success(),
            "{}",
            String::from_utf8_lossy(&info.stderr)
        );
        let chain: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
        let backing = chain[0]["backing-filename"].as_str().expect("backing file");
        assert!(Path::new(backing).is_absolute(), "{backing}");
    }
}
