//! One job in one fresh VM, start to finish: what `nimbus vm run`, the benchmark
//! and the host agent's supervisor build on.

use std::sync::Arc;
use std::time::Duration;

use crate::assets::{AssetSet, VerifiedAssets};
use crate::protocol::GuestJob;
use crate::select::VmmConfig;
use crate::{DriverKind, GuestInfo, JobEvent, JobReport, Result, VmSpec, VmmDriver};

/// Reads and attests the assets `kind` boots from.
pub async fn verified_assets(config: &VmmConfig, kind: DriverKind) -> Result<VerifiedAssets> {
    let dir = config.assets_dir.clone();
    let pin = config.rootfs_sha256.clone();
    // Hashing hundreds of MiB is blocking work.
    tokio::task::spawn_blocking(move || AssetSet::open(&dir)?.verify(kind, pin.as_deref()))
        .await
        .map_err(|e| crate::Error::Assets(format!("attestation task failed: {e}")))?
}

/// A spec for one VM from the configuration's sizes and attested assets.
pub fn spec(
    config: &VmmConfig,
    assets: &VerifiedAssets,
    id: impl Into<String>,
    timeout: Duration,
) -> VmSpec {
    VmSpec {
        id: id.into(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        kernel: assets.kernel.clone(),
        vmlinux: assets.vmlinux.clone(),
        initrd: assets.initrd.clone(),
        rootfs: assets.rootfs.clone(),
        rootfs_tree: assets.rootfs_tree.clone(),
        scratch_disk_mib: config.scratch_disk_mib,
        network: config.network,
        egress_policy: config.egress_policy.clone(),
        forwards: Vec::new(),
        guest: assets.guest.clone(),
        vsock_cid: 3,
        boot_args: Vec::new(),
        timeout,
        boot_timeout: config.boot_timeout,
        snapshot: None,
    }
}

/// Prepares, boots, runs and destroys one VM. The VM is destroyed whatever
/// happens, including a failed boot.
pub async fn run_once(
    driver: &Arc<dyn VmmDriver>,
    spec: &VmSpec,
    job: &GuestJob,
    on_boot: &mut (dyn FnMut(&GuestInfo) + Send),
    on_event: &mut (dyn FnMut(JobEvent) + Send),
) -> Result<(GuestInfo, JobReport)> {
    let mut vm = driver.prepare(spec).await?;
    let result = async {
        let info = vm.boot().await?;
        on_boot(&info);
        let report = vm.run(job, on_event).await?;
        Ok::<_, crate::Error>((info, report))
    }
    .await;
    let destroyed = vm.destroy().await;
    let outcome = result?;
    destroyed?;
    Ok(outcome)
}

/// A VM id that is unique on this host: a prefix and random hex.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{:05x}{:x}",
        std::process::id(),
        nanos & 0xfffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
