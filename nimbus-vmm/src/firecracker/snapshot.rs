//! Firecracker snapshots: made once per asset set, Firecracker version and VM
//! size, restored for every job (Firecracker's snapshot API, `PUT /snapshot/create`
//! and `PUT /snapshot/load`).
//!
//! Making one: a template VM boots, says hello and is primed with `reconnect`:
//! the guest loads what jobs start with, answers, closes its vsock connection and
//! keeps connecting again (Firecracker drops every vsock connection across a
//! snapshot, so this is how a restored guest reaches its new host). The template
//! is paused and saved (`vm.state`, `vm.mem`), killed, and its disks are kept with
//! them: they hold what the saved memory expects on disk.
//!
//! Restoring: the VM's directory gets private copies of those disks under the
//! names the snapshot recorded (relative to Firecracker's working directory, the
//! VM's own; in-chroot names when jailed), a fresh Firecracker loads the snapshot
//! before any configuration, with the memory file mapped privately (copy-on-write),
//! and the guest's next connection attempt reaches it. It is then given an
//! identity of its own before its job.
//!
//! The saved files are shared by every restored VM, so they are read-only and,
//! when jailed, owned by the agent's user, never by the jail's.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{FirecrackerDriver, FirecrackerVm, ROOTFS, SCRATCH};
use crate::protocol::{FEATURE_RECONNECT, FEATURE_SNAPSHOT};
use crate::snapshot::{self, Snapshot, SNAPSHOTS_DIR};
use crate::{Error, Result, Vm, VmSpec};

/// The machine state (`snapshot_path`).
pub const STATE: &str = "vm.state";
/// The guest's memory (`mem_file_path`).
pub const MEMORY: &str = "vm.mem";
/// Every file a complete snapshot has (the scratch disk only with a scratch disk).
pub const FILES: &[&str] = &[STATE, MEMORY, ROOTFS];

/// `firecracker --version`'s first line.
async fn firecracker_version(binary: &Path) -> Result<String> {
    let binary = binary.to_string_lossy().into_owned();
    let output = crate::runtime::run_tool(&binary, &["--version"]).await?;
    Ok(output.lines().next().unwrap_or("").trim().to_string())
}

/// Finds the snapshot of `spec`'s machine, or makes it.
pub(super) async fn make(
    driver: &FirecrackerDriver,
    spec: &VmSpec,
    assets_sha256: &str,
) -> Result<Snapshot> {
    let binary = driver.binary().map_err(|reason| Error::Unavailable {
        driver: "firecracker",
        reason,
    })?;
    let version = firecracker_version(&binary).await?;
    let key = snapshot::key(
        spec,
        assets_sha256,
        &version,
        &format!(
            "jailed {}\nguest protocol {}",
            driver.config.jailer.is_some(),
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
async fn build(driver: &FirecrackerDriver, spec: &VmSpec, into: &Path) -> Result<()> {
    let mut template_spec = spec.clone();
    template_spec.id = crate::launch::unique_id("snapshot");
    template_spec.snapshot = None;
    let mut vm = driver.prepare_vm(&template_spec).await?;
    let saved = save(&mut vm, into).await;
    let destroyed = vm.destroy().await;
    saved?;
    destroyed
}

async fn save(vm: &mut FirecrackerVm, into: &Path) -> Result<()> {
    let info = vm.boot().await?;
    let features = vm.machine.features();
    if ![FEATURE_SNAPSHOT, FEATURE_RECONNECT]
        .iter()
        .all(|needed| features.iter().any(|f| f == needed))
    {
        return Err(Error::Unavailable {
            driver: "firecracker",
            reason: format!(
                "the assets' nimbus-guest {} cannot be snapshotted over vsock (rebuild the assets with this Nimbus)",
                info.agent
            ),
        });
    }
    vm.machine
        .channel
        .as_mut()
        .ok_or(Error::State("no guest channel after boot"))?
        .prime(crate::session::PrimeFor::Snapshot { reconnect: true })
        .await?;
    let api = vm
        .api
        .clone()
        .ok_or(Error::State("no Firecracker API after boot"))?;
    // Where Firecracker writes them: its working directory, or the jail's root.
    let (written_in, state, memory) = match &vm.jail {
        Some(jail) => (jail.root.clone(), format!("/{STATE}"), format!("/{MEMORY}")),
        None => (
            vm.machine.dir.path().to_path_buf(),
            STATE.to_string(),
            MEMORY.to_string(),
        ),
    };
    api.snapshot_create(&state, &memory).await?;
    // Paused and saved: the template never runs again.
    crate::runtime::kill(&mut vm.machine.child).await;
    let mut kept = vec![
        (written_in.join(STATE), STATE),
        (written_in.join(MEMORY), MEMORY),
        (vm.machine.dir.join(ROOTFS), ROOTFS),
    ];
    if vm.spec.scratch_disk_mib > 0 {
        kept.push((vm.machine.dir.join(SCRATCH), SCRATCH));
    }
    let owner = vm
        .config
        .jailer
        .as_ref()
        .map(|_| (nix::unistd::geteuid(), nix::unistd::getegid()));
    for (from, name) in kept {
        let to = into.join(name);
        std::fs::rename(&from, &to).map_err(Error::io(format!(
            "keeping the template's {name} ({})",
            from.display()
        )))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&to, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(Error::io(format!("chown {}", to.display())))?;
        }
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o444))
            .map_err(Error::io(format!("chmod {}", to.display())))?;
    }
    Ok(())
}

impl FirecrackerVm {
    /// The snapshot's state and memory files as the restoring Firecracker opens
    /// them: by absolute path, or linked into its jail (shared, read-only).
    pub(super) fn restore_paths(&self, saved: &Snapshot) -> Result<(String, String)> {
        let path = |name: &str| -> Result<String> {
            let file = saved.dir.join(name);
            match (&self.config.jailer, &self.jail) {
                (Some(jailer), Some(layout)) => jailer.stage(layout, &file, name, false),
                _ => Ok(file.display().to_string()),
            }
        };
        Ok((path(STATE)?, path(MEMORY)?))
    }
}
