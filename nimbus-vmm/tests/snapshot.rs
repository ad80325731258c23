//! QEMU snapshots for real (TCG here): VMs restored from one snapshot are different
//! machines (random bytes, machine-id, hostname, MAC, a current clock) and run
//! jobs; a snapshot is reused while nothing it depends on changed, and replaced
//! (the stale one removed) when the assets or the VM's size change. Needs the built
//! assets, root, iproute2 and iptables (the MAC needs a network of the VM's own).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nimbus_vmm::assets::{AssetSet, VerifiedAssets};
use nimbus_vmm::protocol::GuestJob;
use nimbus_vmm::qemu::{QemuConfig, QemuDriver, QemuTransport};
use nimbus_vmm::select::VmmConfig;
use nimbus_vmm::snapshot::SNAPSHOTS_DIR;
use nimbus_vmm::spec::NetworkSpec;
use nimbus_vmm::{launch, DriverKind, JobEvent, Outcome, VmSpec, VmmDriver};

struct Fixture {
    driver: Arc<dyn VmmDriver>,
    assets: VerifiedAssets,
    runtime_dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// One emulated VM at a time keeps every boot well inside its timeout on 2 cores.
static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

async fn fixture(name: &str) -> Option<Fixture> {
    let assets = std::env::var_os("NIMBUS_TEST_ASSETS").map(PathBuf::from);
    let root = nix::unistd::Uid::effective().is_root();
    let iptables = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .is_ok();
    let qemu = nimbus_vmm::host::find_binary("qemu-system-x86_64", None).is_ok();
    let dir = nimbus_core::testsuite::require(
        assets.filter(|_| root && iptables && qemu),
        "NIMBUS_TEST_ASSETS, qemu-system-x86_64, root and iptables",
    )?;
    let assets = AssetSet::open(&dir)
        .and_then(|set| set.verify(DriverKind::Qemu, None))
        .expect("the test assets verify for QEMU");
    let runtime_dir =
        std::env::temp_dir().join(format!("nimbus-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runtime_dir);
    let driver: Arc<dyn VmmDriver> = Arc::new(QemuDriver::new(QemuConfig {
        binary: None,
        accel: None,
        runtime_dir: runtime_dir.clone(),
        transport: QemuTransport::VirtioSerial,
    }));
    Some(Fixture {
        driver,
        assets,
        runtime_dir,
    })
}

fn spec(f: &Fixture, id: &str, network: NetworkSpec, memory_mib: u32) -> VmSpec {
    let env = nimbus_core::Env::from_map([(
        "NIMBUS_VM_RUNTIME_DIR",
        f.runtime_dir.display().to_string(),
    )]);
    let mut config = VmmConfig::from_env(&env).expect("config");
    config.vcpus = 1;
    config.memory_mib = memory_mib;
    config.scratch_disk_mib = 64;
    config.network = network;
    config.boot_timeout = Duration::from_secs(120);
    launch::spec(&config, &f.assets, id, Duration::from_secs(120))
}

/// What a restored VM says about itself, one value per line.
const WHO_AM_I: &str = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
     cat /etc/machine-id; cat /sys/class/net/eth0/address; hostname; date +%s; \
     echo scratch > /scratch/written && cat /scratch/written";

async fn run_restored(f: &Fixture, base: &VmSpec, id: &str) -> Vec<String> {
    let mut restored = base.clone();
    restored.id = id.to_string();
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    let mut on_event = move |event: JobEvent| {
        if let JobEvent::Output(line) = event {
            sink.lock().expect("lines").push(line.line);
        }
    };
    let (info, report) = launch::run_once(
        &f.driver,
        &restored,
        &GuestJob::from_commands(&[WHO_AM_I]),
        &mut |_| {},
        &mut on_event,
    )
    .await
    .expect("a restored VM runs its job");
    assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{lines:?}");
    assert!(info.boot_millis > 0);
    assert!(
        !f.runtime_dir.join(id).exists(),
        "the restored VM's directory is removed with it"
    );
    let lines = lines.lock().expect("lines").clone();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_restored_from_one_snapshot_are_different_machines() {
    let Some(f) = fixture("unique").await else {
        return;
    };
    let _one = ONE_AT_A_TIME.acquire().await.expect("permit");
    let base = spec(&f, "unused", NetworkSpec::Tap { egress: false }, 512);
    let snapshot = f
        .driver
        .snapshot(&base, &f.assets.manifest_sha256)
        .await
        .expect("snapshot made");
    assert!(snapshot.dir.join("state").is_file());
    let mut restored = base.clone();
    restored.snapshot = Some(snapshot);

    let first = run_restored(&f, &restored, "restored-a").await;
    let second = run_restored(&f, &restored, "restored-b").await;
    assert_eq!(first.len(), 6, "{first:?}");
    assert_eq!(second.len(), 6, "{second:?}");
    let names = ["random bytes", "machine-id", "MAC", "hostname"];
    for (index, what) in names.iter().enumerate() {
        assert!(!first[index].is_empty(), "{what}: {first:?}");
        assert_ne!(
            first[index], second[index],
            "two restored VMs share their {what}"
        );
    }
    assert_eq!(first[1].len(), 32, "a machine-id is 32 hex digits");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    for vm in [&first, &second] {
        let clock: i64 = vm[4].parse().expect("date +%s");
        assert!(
            (clock - now).abs() < 60,
            "the restored clock is the host's, not the snapshot's: {clock} vs {now}"
        );
        assert_eq!(vm[5], "scratch", "the scratch disk is writable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_reused_until_the_assets_or_the_size_change() {
    let Some(f) = fixture("invalidate").await else {
        return;
    };
    let _one = ONE_AT_A_TIME.acquire().await.expect("permit");
    let base = spec(&f, "unused", NetworkSpec::None, 512);
    let first = f
        .driver
        .snapshot(&base, &f.assets.manifest_sha256)
        .await
        .expect("snapshot made");
    let made = std::fs::metadata(first.dir.join("state"))
        .and_then(|m| m.modified())
        .expect("state");
    let again = f
        .driver
        .snapshot(&base, &f.assets.manifest_sha256)
        .await
        .expect("snapshot found");
    assert_eq!(again, first, "nothing changed: the same snapshot");
    assert_eq!(
        std::fs::metadata(again.dir.join("state"))
            .and_then(|m| m.modified())
            .expect("state"),
        made,
        "not made again"
    );

    // Other assets (another manifest): a new snapshot, and the stale one goes.
    let other_assets = "0".repeat(64);
    let rebuilt = f
        .driver
        .snapshot(&base, &other_assets)
        .await
        .expect("snapshot of the new assets");
    assert_ne!(rebuilt.key, first.key);
    assert!(!first.dir.exists(), "the stale snapshot is removed");
    let snapshots: Vec<_> = std::fs::read_dir(f.runtime_dir.join(SNAPSHOTS_DIR))
        .expect("snapshots")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(snapshots, vec![rebuilt.key.clone()]);

    // A VM of another size cannot be restored from it: another key.
    let bigger = spec(&f, "unused", NetworkSpec::None, 768);
    assert_ne!(
        nimbus_vmm::snapshot::key(&bigger, &other_assets, "v", ""),
        nimbus_vmm::snapshot::key(&base, &other_assets, "v", "")
    );

    // A VM restored from a snapshot whose files are gone is refused at prepare.
    std::fs::remove_file(rebuilt.dir.join("state")).expect("remove");
    let mut orphan = base.clone();
    orphan.id = "orphan".into();
    orphan.snapshot = Some(rebuilt);
    let error = match f.driver.prepare(&orphan).await {
        Ok(_) => panic!("a snapshot without its state cannot be restored"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("state"), "{error}");
}

#[tokio::test]
async fn drivers_without_snapshots_say_so() {
    let runtime_dir = std::env::temp_dir().join(format!("nimbus-snap-none-{}", std::process::id()));
    let driver = nimbus_vmm::sandbox::SandboxDriver::new(nimbus_vmm::sandbox::SandboxConfig {
        runtime_dir: runtime_dir.clone(),
    });
    let env =
        nimbus_core::Env::from_map([("NIMBUS_VM_RUNTIME_DIR", runtime_dir.display().to_string())]);
    let config = VmmConfig::from_env(&env).expect("config");
    let assets = VerifiedAssets {
        kernel: "k".into(),
        vmlinux: None,
        initrd: None,
        rootfs: "r".into(),
        rootfs_tree: None,
        guest: None,
        kernel_release: "6".into(),
        manifest_sha256: "0".repeat(64),
    };
    let spec = launch::spec(&config, &assets, "x", Duration::from_secs(1));
    let error = driver
        .snapshot(&spec, &assets.manifest_sha256)
        .await
        .expect_err("the sandbox has no snapshots");
    assert!(error.to_string().contains("snapshot"), "{error}");
}
