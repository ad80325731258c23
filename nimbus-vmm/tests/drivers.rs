//! The shared driver suite against real machines: QEMU microvm booting the built
//! assets (TCG here, KVM where the host has it) and the namespace sandbox.
//!
//! Assets come from `NIMBUS_TEST_ASSETS` (scripts/test.sh builds them into
//! /var/tmp/nimbus-assets). Without them the suites skip, except under CI=true.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nimbus_vmm::assets::AssetSet;
use nimbus_vmm::qemu::{QemuConfig, QemuDriver, QemuTransport};
use nimbus_vmm::sandbox::{SandboxConfig, SandboxDriver};
use nimbus_vmm::spec::NetworkSpec;
use nimbus_vmm::testsuite::{require, Harness};
use nimbus_vmm::{DriverKind, VmSpec, VmmDriver};

fn assets_dir() -> Option<PathBuf> {
    std::env::var_os("NIMBUS_TEST_ASSETS").map(PathBuf::from)
}

fn runtime_dir(driver: &str) -> PathBuf {
    std::env::temp_dir().join(format!("nimbus-it-{driver}-{}", std::process::id()))
}

async fn harness_for(kind: DriverKind) -> Option<Harness> {
    harness_with(kind, QemuTransport::VirtioSerial).await
}

async fn harness_with(kind: DriverKind, transport: QemuTransport) -> Option<Harness> {
    let dir = assets_dir()?;
    let assets = AssetSet::open(&dir).ok()?.verify(kind, None).ok()?;
    let runtime_dir = runtime_dir(kind.as_str());
    let driver: Arc<dyn VmmDriver> = match kind {
        DriverKind::Qemu => Arc::new(QemuDriver::new(QemuConfig {
            binary: None,
            accel: None,
            runtime_dir: runtime_dir.clone(),
            transport,
        })),
        DriverKind::Sandbox => Arc::new(SandboxDriver::new(SandboxConfig {
            runtime_dir: runtime_dir.clone(),
        })),
        DriverKind::Firecracker => Arc::new(nimbus_vmm::firecracker::FirecrackerDriver::new(
            nimbus_vmm::firecracker::FirecrackerConfig {
                binary: None,
                jailer: None,
                seccomp_filter: None,
                runtime_dir: runtime_dir.clone(),
            },
        )),
    };
    if !driver.probe().await.available {
        return None;
    }
    Some(Harness {
        driver,
        runtime_dir,
        spec: Box::new(move |id: &str, timeout: Duration| VmSpec {
            id: id.to_string(),
            vcpus: 1,
            memory_mib: 512,
            kernel: assets.kernel.clone(),
            vmlinux: assets.vmlinux.clone(),
            initrd: assets.initrd.clone(),
            rootfs: assets.rootfs.clone(),
            rootfs_tree: assets.rootfs_tree.clone(),
            scratch_disk_mib: 256,
            network: NetworkSpec::None,
            egress_policy: Default::default(),
            forwards: Vec::new(),
            guest: assets.guest.clone(),
            vsock_cid: 3,
            boot_args: Vec::new(),
            timeout,
            boot_timeout: Duration::from_secs(90),
            snapshot: None,
        }),
        hold: None,
    })
}

/// QEMU boots are emulated under TCG: one at a time keeps each well inside its
/// boot timeout on a 2-core machine.
static QEMU_ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

mod qemu {
    use super::*;

    pub async fn harness() -> Option<Harness> {
        let permit = QEMU_ONE_AT_A_TIME.acquire().await.ok()?;
        let mut harness = require(
            harness_for(DriverKind::Qemu).await,
            "the qemu driver with built assets (NIMBUS_TEST_ASSETS)",
        )?;
        harness.hold = Some(Box::new(permit));
        Some(harness)
    }

    nimbus_vmm::vmm_driver_test_suite!(harness);
}

/// The last-resort transport: the serial console, shared with kernel messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_over_the_serial_console_runs_steps() {
    let Ok(permit) = QEMU_ONE_AT_A_TIME.acquire().await else {
        return;
    };
    let Some(harness) = require(
        harness_with(DriverKind::Qemu, QemuTransport::Serial).await,
        "the qemu driver with built assets (NIMBUS_TEST_ASSETS)",
    ) else {
        return;
    };
    nimbus_vmm::testsuite::runs_steps_and_cleans_up(harness).await;
    drop(permit);
}

/// Real Firecracker boots where the host has hardware KVM and a firecracker binary.
/// These machines have neither (PVM, no binary in any reachable registry), so the
/// suite cannot run here even under CI; the driver's API conversation is covered by
/// tests/firecracker.rs on every machine.
mod firecracker {
    use super::*;

    pub async fn harness() -> Option<Harness> {
        let harness = harness_for(DriverKind::Firecracker).await;
        if harness.is_none() {
            eprintln!("skipping: no hardware KVM or no firecracker binary on this host");
        }
        harness
    }

    nimbus_vmm::vmm_driver_test_suite!(harness);
}

mod sandbox {
    use super::*;

    pub async fn harness() -> Option<Harness> {
        require(
            harness_for(DriverKind::Sandbox).await,
            "the sandbox driver with built assets (NIMBUS_TEST_ASSETS)",
        )
    }

    nimbus_vmm::vmm_driver_test_suite!(harness);
}

/// A flipped byte in the rootfs stops the boot with an error naming the file.
#[tokio::test]
async fn a_flipped_rootfs_byte_stops_the_boot() {
    let Some(source) = assets_dir() else {
        require(None, "built assets (NIMBUS_TEST_ASSETS)");
        return;
    };
    let copy = std::env::temp_dir().join(format!("nimbus-it-tampered-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).expect("dir");
    for name in ["manifest.json", "vmlinuz", "vmlinux", "initrd.img"] {
        std::fs::copy(source.join(name), copy.join(name)).expect("copy");
    }
    let status = std::process::Command::new("cp")
        .args(["--sparse=always"])
        .arg(source.join("rootfs.ext4"))
        .arg(copy.join("rootfs.ext4"))
        .status()
        .expect("cp");
    assert!(status.success());

    let env = nimbus_core::Env::from_map([
        ("NIMBUS_ASSETS_DIR", copy.display().to_string()),
        (
            "NIMBUS_VM_RUNTIME_DIR",
            runtime_dir("tampered").display().to_string(),
        ),
    ]);
    let config = nimbus_vmm::select::VmmConfig::from_env(&env).expect("config");
    nimbus_vmm::launch::verified_assets(&config, DriverKind::Qemu)
        .await
        .expect("the intact copy verifies");

    use std::io::{Seek, SeekFrom, Write};
    let mut image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(copy.join("rootfs.ext4"))
        .expect("open");
    image.seek(SeekFrom::Start(1 << 20)).expect("seek");
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut image, &mut byte).expect("read");
    image.seek(SeekFrom::Start(1 << 20)).expect("seek");
    image.write_all(&[byte[0] ^ 0xff]).expect("flip");
    drop(image);

    let error = nimbus_vmm::launch::verified_assets(&config, DriverKind::Qemu)
        .await
        .expect_err("a tampered rootfs is refused");
    let text = error.to_string();
    assert!(
        text.contains("rootfs.ext4")
            && text.contains("failed attestation")
            && text.contains("does not match"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&copy);
}

/// Where the host allows cgroups (root here), a sandbox's memory is limited to its
/// spec: a job that allocates past it is killed, and the next one is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_memory_is_limited_by_a_cgroup() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: cgroups need root here");
        return;
    }
    let Some(harness) = require(
        harness_for(DriverKind::Sandbox).await,
        "the sandbox driver with built assets (NIMBUS_TEST_ASSETS)",
    ) else {
        return;
    };
    let mut spec = (harness.spec)(
        &nimbus_vmm::launch::unique_id("cgroup"),
        Duration::from_secs(60),
    );
    spec.memory_mib = 64;
    let job = nimbus_vmm::protocol::GuestJob::from_commands(&[
        "grep -E 'memory' /proc/self/cgroup",
        // ~200 MB in a shell variable: far past 64 MiB.
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
    ]);
    let mut lines = Vec::new();
    let mut on_event = |event: nimbus_vmm::JobEvent| {
        if let nimbus_vmm::JobEvent::Output(line) = event {
            lines.push(line.line);
        }
    };
    let (_, report) =
        nimbus_vmm::launch::run_once(&harness.driver, &spec, &job, &mut |_| {}, &mut on_event)
            .await
            .expect("runs");
    assert!(
        lines
            .first()
            .is_some_and(|l| l.contains(&format!("nimbus/{}", spec.id))),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("survived")),
        "{lines:?}"
    );
    assert_ne!(report.outcome, nimbus_vmm::Outcome::Exited { code: 0 });
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory/nimbus")
            .join(&spec.id)
            .exists(),
        "the cgroup is removed"
    );
}
