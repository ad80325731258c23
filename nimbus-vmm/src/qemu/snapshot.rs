//! QEMU snapshots: made once per asset set, QEMU version and VM size, restored for
//! every job.
//!
//! Making one: a template VM boots with its memory in a shared file (`ram`), says
//! hello, is primed (its shells loaded into the page cache), stopped and migrated
//! with `x-ignore-shared` to `state` — the device state only, as the memory already
//! is the file. Its disk overlays are kept beside them. Restoring: a new QEMU maps
//! `ram` copy-on-write (`share=off`), takes overlays of the template's disks, starts
//! with `-incoming defer`, connects the guest channel (so the guest's port stays
//! connected across the restore), loads `state` over QMP and continues; the guest
//! is then given an identity of its own before its job.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UnixStream;

use super::qmp::Qmp;
use super::{QemuDriver, QemuTransport, QemuVm, Start, QMP_SOCKET, ROOT_OVERLAY, SCRATCH_OVERLAY};
use crate::protocol::FEATURE_SNAPSHOT;
use crate::session::GuestChannel;
use crate::snapshot::{self, Snapshot, SNAPSHOTS_DIR};
use crate::{Error, GuestInfo, Result, Vm, VmSpec};

/// The guest's memory, as the template left it.
pub const RAM: &str = "ram";
/// The device state (QEMU's migration stream).
pub const STATE: &str = "state";
/// Every file a complete snapshot has (the scratch overlay only with a scratch disk).
pub const FILES: &[&str] = &[RAM, STATE, ROOT_OVERLAY];

/// `qemu-system-x86_64 --version`'s first line.
async fn qemu_version(binary: &Path) -> Result<String> {
    let binary = binary.to_string_lossy().into_owned();
    let output = crate::runtime::run_tool(&binary, &["--version"]).await?;
    Ok(output.lines().next().unwrap_or("").trim().to_string())
}

/// Finds the snapshot of `spec`'s machine, or makes it.
pub(super) async fn make(
    driver: &QemuDriver,
    spec: &VmSpec,
    assets_sha256: &str,
) -> Result<Snapshot> {
    if driver.config.transport != QemuTransport::VirtioSerial {
        return Err(Error::Unavailable {
            driver: "qemu",
            reason: "snapshots need the virtio-serial guest channel (NIMBUS_QEMU_TRANSPORT)".into(),
        });
    }
    let binary = driver.binary().map_err(|reason| Error::Unavailable {
        driver: "qemu",
        reason,
    })?;
    let accel = driver.accel().map_err(|reason| Error::Unavailable {
        driver: "qemu",
        reason,
    })?;
    let version = qemu_version(&binary).await?;
    let key = snapshot::key(
        spec,
        assets_sha256,
        &version,
        &format!(
            "accel {accel:?}\nguest protocol {}",
            crate::protocol::PROTOCOL_VERSION
        ),
    );
    let root = driver.config.runtime_dir.join(SNAPSHOTS_DIR);
    snapshot::find_or_make(&root, &key, FILES, &version, |into| async move {
        build(driver, spec, &into).await
    })
    .await
}

/// Boots the template VM, primes it and saves it into `into`.
async fn build(driver: &QemuDriver, spec: &VmSpec, into: &Path) -> Result<()> {
    let mut template_spec = spec.clone();
    template_spec.id = crate::launch::unique_id("snapshot");
    template_spec.snapshot = None;
    let ram =
        std::path::absolute(into.join(RAM)).map_err(Error::io("resolving the memory file"))?;
    let mut vm = driver
        .prepare_vm(&template_spec, Start::Template { ram: ram.clone() })
        .await?;
    let saved = save(&mut vm, into).await;
    let destroyed = vm.destroy().await;
    saved?;
    destroyed
}

async fn save(vm: &mut QemuVm, into: &Path) -> Result<()> {
    let info = vm.boot().await?;
    if !vm.machine.features().iter().any(|f| f == FEATURE_SNAPSHOT) {
        return Err(Error::Unavailable {
            driver: "qemu",
            reason: format!(
                "the assets' nimbus-guest {} cannot be snapshotted (rebuild the assets with this Nimbus)",
                info.agent
            ),
        });
    }
    let channel = vm
        .machine
        .channel
        .as_mut()
        .ok_or(Error::State("no guest channel after boot"))?;
    channel
        .prime(crate::session::PrimeFor::Snapshot { reconnect: false })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut qmp = Qmp::connect(&vm.machine.dir.join(QMP_SOCKET), deadline).await?;
    qmp.execute("stop", json!({})).await?;
    qmp.ignore_shared_memory().await?;
    let state =
        std::path::absolute(into.join(STATE)).map_err(Error::io("resolving the state file"))?;
    qmp.execute(
        "migrate",
        json!({ "uri": format!("exec:cat > {}", shell_quote(&state)?) }),
    )
    .await?;
    qmp.wait_for_migration(deadline).await?;
    // A clean exit writes out the disks' metadata.
    let _ = qmp.execute("quit", json!({})).await;
    if let Some(child) = vm.machine.child.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    for name in [ROOT_OVERLAY, SCRATCH_OVERLAY] {
        let from = vm.machine.dir.join(name);
        if from.exists() {
            std::fs::rename(&from, into.join(name))
                .map_err(Error::io(format!("keeping the template's {name}")))?;
        }
    }
    Ok(())
}

/// `path` in single quotes for `exec:` (which QEMU runs with `/bin/sh -c`).
fn shell_quote(path: &Path) -> Result<String> {
    let text = path.to_string_lossy();
    if text.contains('\'') {
        return Err(Error::Config(format!(
            "the snapshot path {text} may not contain a single quote"
        )));
    }
    Ok(format!("'{text}'"))
}

impl QemuVm {
    /// The restore half of [`Vm::boot`]: QEMU runs with `-incoming defer` and the
    /// guest channel is connected (`stream`).
    pub(super) async fn restore(
        &mut self,
        stream: UnixStream,
        snapshot: &Snapshot,
        started: Instant,
        deadline: Instant,
    ) -> Result<GuestInfo> {
        let qmp_socket: PathBuf = self.machine.dir.join(QMP_SOCKET);
        let restored = async {
            let mut qmp = Qmp::connect(&qmp_socket, deadline).await?;
            qmp.ignore_shared_memory().await?;
            let state = shell_quote(&snapshot.dir.join(STATE))?;
            qmp.execute(
                "migrate-incoming",
                json!({ "uri": format!("exec:cat {state}") }),
            )
            .await?;
            qmp.run_after_incoming(deadline).await
        }
        .await;
        if let Err(error) = restored {
            return Err(self.boot_error(format!("restoring snapshot {}: {error}", snapshot.key)));
        }
        let (reader, writer) = stream.into_split();
        let mut channel = GuestChannel::new(reader, writer);
        let identity = snapshot::fresh_identity(self.network.as_ref().map(|network| network.mac()));
        let hello = match tokio::time::timeout_at(deadline.into(), channel.refresh(identity)).await
        {
            Ok(Ok(hello)) => hello,
            Ok(Err(error)) => return Err(self.boot_error(format!("restored guest: {error}"))),
            Err(_) => {
                return Err(self.boot_error(format!(
                    "the restored guest did not answer within {:?}",
                    self.spec.boot_timeout
                )))
            }
        };
        Ok(self.machine.booted(channel, hello, started))
    }
}
