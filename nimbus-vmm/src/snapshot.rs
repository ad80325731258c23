//! Snapshots: a VM booted once, primed and saved, that later VMs start from instead
//! of booting (`NIMBUS_VMM_START=snapshot`). A driver makes them
//! ([`crate::VmmDriver::snapshot`]); a spec that names one
//! ([`crate::VmSpec::snapshot`]) is restored from it by `prepare` and `boot`.
//!
//! A snapshot lives in `RUNTIME_DIR/.snapshots/<key>/`, where the key is a digest of
//! everything the saved machine depends on ([`key`]): the asset manifest's sha256,
//! the VMM's version, the VM's size, network and boot arguments. Anything else is a
//! different snapshot; a new one replaces the stale ones. Every restored VM is made
//! unique before its job ([`fresh_identity`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::protocol::Identity;
use crate::{Error, Result, VmSpec};

/// Where a driver's snapshots live, under the runtime directory.
pub const SNAPSHOTS_DIR: &str = ".snapshots";

/// A saved VM, ready to be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot's directory (driver-specific files).
    pub dir: PathBuf,
    /// What it is tied to ([`key`]).
    pub key: String,
}

/// The digest naming a snapshot of `spec`'s machine: assets, VMM version, size,
/// network, boot arguments and anything driver-specific (`extra`).
pub fn key(spec: &VmSpec, assets_sha256: &str, vmm_version: &str, extra: &str) -> String {
    let text = format!(
        "format 1\nassets {assets_sha256}\nvmm {vmm_version}\nvcpus {}\nmemory {}\nscratch {}\nnetwork {}\nboot {:?}\nforwards {:?}\n{extra}\n",
        spec.vcpus,
        spec.memory_mib,
        spec.scratch_disk_mib,
        spec.network.name(),
        spec.boot_args,
        spec.forwards,
    );
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..12])
}

/// Removes every snapshot under `root` but `keep` (stale: other assets, VMM or size).
pub fn remove_stale(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != keep {
            tracing::info!(snapshot = %name, "removing a stale snapshot");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A new identity for a restored VM: fresh entropy and machine-id from the host's
/// RNG, a hostname of its own, its own MAC (when it has a network) and the clock.
pub fn fresh_identity(mac: Option<&str>) -> Identity {
    let entropy: [u8; 64] = rand::random();
    let machine_id: [u8; 16] = rand::random();
    let unix_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Identity {
        entropy: hex::encode(entropy),
        hostname: format!("nimbus-{}", hex::encode(&machine_id[..4])),
        machine_id: hex::encode(machine_id),
        mac: mac.map(str::to_string),
        unix_millis,
    }
}

/// Finds the snapshot named `key` under `root` (complete: it holds `files`), or
/// makes it: `build` fills a fresh directory, which is renamed to `key` only once
/// complete, so a half-made snapshot never has the name. Stale snapshots (other
/// keys) are removed first. `vmm` names the hypervisor and version, for the log.
pub async fn find_or_make<F, Fut>(
    root: &Path,
    key: &str,
    files: &[&str],
    vmm: &str,
    build: F,
) -> Result<Snapshot>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let dir = std::path::absolute(root.join(key))
        .map_err(Error::io("resolving the snapshot directory"))?;
    let found = Snapshot {
        dir: dir.clone(),
        key: key.to_string(),
    };
    if check(&found, files).is_ok() {
        return Ok(found);
    }
    std::fs::create_dir_all(root).map_err(Error::io(format!("creating {}", root.display())))?;
    remove_stale(root, key);
    let started = std::time::Instant::now();
    let building = std::path::absolute(root.join(format!(
        ".building-{}",
        crate::launch::unique_id("snapshot")
    )))
    .map_err(Error::io("resolving the snapshot directory"))?;
    std::fs::create_dir(&building)
        .map_err(Error::io(format!("creating {}", building.display())))?;
    if let Err(error) = build(building.clone()).await {
        let _ = std::fs::remove_dir_all(&building);
        return Err(error);
    }
    match std::fs::rename(&building, &dir) {
        Ok(()) => {}
        // Another agent of this runtime directory made the same snapshot first.
        Err(_) if check(&found, files).is_ok() => {
            let _ = std::fs::remove_dir_all(&building);
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(Error::io(format!(
                "installing the snapshot {}",
                dir.display()
            ))(error));
        }
    }
    tracing::info!(snapshot = %key, millis = started.elapsed().as_millis() as u64, %vmm, "made a VM snapshot");
    Ok(found)
}

/// Checks a snapshot directory holds `files` (a half-written one never gets its name).
pub fn check(snapshot: &Snapshot, files: &[&str]) -> Result<()> {
    for file in files {
        if !snapshot.dir.join(file).is_file() {
            return Err(Error::Config(format!(
                "snapshot {} has no {file}: it was removed or is incomplete",
                snapshot.dir.display()
            )));
        }
    }
    Ok(())
}
