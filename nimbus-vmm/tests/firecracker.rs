//! The Firecracker driver's conversation with Firecracker's API, captured by a
//! test server that speaks the documented API (tests/fixtures/fake-firecracker.py,
//! standing in for the binary: none can be had on these machines). The stand-in
//! also plays the guest side of vsock by running the real nimbus-guest over the
//! `<uds_path>_1024` socket, so boot → handshake → run → destroy is exercised too.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nimbus_vmm::firecracker::api::FirecrackerApi;
use nimbus_vmm::firecracker::{FirecrackerConfig, FirecrackerDriver};
use nimbus_vmm::protocol::GuestJob;
use nimbus_vmm::spec::NetworkSpec;
use nimbus_vmm::{Error, JobEvent, Outcome, VmSpec, VmmDriver};
use serde_json::Value;

struct Fixture {
    dir: PathBuf,
    binary: PathBuf,
    log: PathBuf,
}

/// The nimbus-guest to run: the one in the test assets, else the workspace build.
fn guest_binary() -> Option<PathBuf> {
    let from_assets = std::env::var_os("NIMBUS_TEST_ASSETS")
        .map(|dir| PathBuf::from(dir).join("rootfs/usr/local/bin/nimbus-guest"));
    let from_build = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("nimbus-guest")));
    from_assets
        .into_iter()
        .chain(from_build)
        .find(|p| p.is_file())
}

fn fixture(name: &str, fault_path: Option<&str>) -> Option<Fixture> {
    let guest = nimbus_core::testsuite::require(
        guest_binary(),
        "a nimbus-guest binary (cargo build -p nimbus-guest)",
    )?;
    let dir = std::env::temp_dir().join(format!("nimbus-fc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-firecracker.py");
    let log = dir.join("api.log");
    let binary = dir.join("firecracker");
    // A wrapper per test, so parallel tests never share environment variables.
    std::fs::write(
        &binary,
        format!(
            "#!/bin/sh\nexport FAKE_FC_LOG='{}' FAKE_FC_GUEST='{}' FAKE_FC_FAULT_PATH='{}' FAKE_FC_PROTOCOL={}\nexec python3 '{}' \"$@\"\n",
            log.display(),
            guest.display(),
            fault_path.unwrap_or(""),
            nimbus_vmm::protocol::PROTOCOL_VERSION,
            script.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (name, size) in [
        ("vmlinux", 4096u64),
        ("initrd.img", 4096),
        ("rootfs.ext4", 1 << 20),
    ] {
        let file = std::fs::File::create(dir.join(name)).expect("asset");
        file.set_len(size).expect("size");
    }
    Some(Fixture { dir, binary, log })
}

fn spec(f: &Fixture, id: &str) -> VmSpec {
    VmSpec {
        id: id.into(),
        vcpus: 2,
        memory_mib: 256,
        kernel: f.dir.join("vmlinux"),
        vmlinux: Some(f.dir.join("vmlinux")),
        initrd: Some(f.dir.join("initrd.img")),
        rootfs: f.dir.join("rootfs.ext4"),
        rootfs_tree: None,
        scratch_disk_mib: 16,
        network: NetworkSpec::None,
        egress_policy: Default::default(),
        forwards: Vec::new(),
        guest: None,
        vsock_cid: 7,
        boot_args: vec!["nimbus.debug=1".into()],
        timeout: Duration::from_secs(30),
        boot_timeout: Duration::from_secs(30),
        snapshot: None,
    }
}

fn driver(f: &Fixture) -> FirecrackerDriver {
    FirecrackerDriver::new(FirecrackerConfig {
        binary: Some(f.binary.clone()),
        jailer: None,
        seccomp_filter: None,
        runtime_dir: f.dir.join("vms"),
    })
}

fn requests(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("log line"))
        .collect()
}

/// The log's requests as `METHOD /path`.
fn sent_paths(log: &Path) -> Vec<String> {
    requests(log)
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test]
async fn boots_with_the_documented_request_sequence_and_talks_over_vsock() {
    let Some(f) = fixture("boot", None) else {
        return;
    };
    let driver = driver(&f);
    let vm_dir = f.dir.join("vms/fc-1");
    let mut vm = driver.prepare(&spec(&f, "fc-1")).await.expect("prepare");
    let info = vm.boot().await.expect("boot");
    assert!(!info.agent.is_empty());
    let mut lines = Vec::new();
    let mut on_event = |event: JobEvent| {
        if let JobEvent::Output(line) = event {
            lines.push(line.line);
        }
    };
    let report = vm
        .run(
            &GuestJob::from_commands(&["echo over vsock"]),
            &mut on_event,
        )
        .await
        .expect("run");
    assert_eq!(report.outcome, Outcome::Exited { code: 0 });
    assert_eq!(lines, vec!["over vsock".to_string()]);

    let sent = requests(&f.log);
    assert_eq!(
        sent_paths(&f.log),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /drives/scratch",
            "PUT /vsock",
            "PUT /actions",
        ]
    );
    assert_eq!(
        sent[0]["body"],
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false})
    );
    let boot = &sent[1]["body"];
    assert_eq!(
        boot["kernel_image_path"],
        f.dir.join("vmlinux").display().to_string()
    );
    assert_eq!(
        boot["initrd_path"],
        f.dir.join("initrd.img").display().to_string()
    );
    let args = boot["boot_args"].as_str().expect("boot args");
    assert!(args.contains("console=ttyS0") && args.contains("nimbus.transport=vsock:1024"));
    assert!(
        args.ends_with("nimbus.debug=1"),
        "the spec's boot args come last: {args}"
    );
    // Disks are the VM's private copies, never the attested image, named relative
    // to Firecracker's working directory, the VM's own (as snapshots need).
    assert_eq!(
        sent[2]["body"],
        serde_json::json!({"drive_id": "rootfs", "path_on_host": "rootfs.ext4",
                           "is_root_device": false, "is_read_only": false})
    );
    assert!(vm_dir.join("rootfs.ext4").is_file());
    assert_eq!(sent[3]["body"]["path_on_host"], "scratch.ext4");
    assert_eq!(
        sent[4]["body"],
        serde_json::json!({"guest_cid": 7, "uds_path": "v.sock"})
    );
    assert_eq!(
        sent[5]["body"],
        serde_json::json!({"action_type": "InstanceStart"})
    );

    vm.destroy().await.expect("destroy");
    vm.destroy().await.expect("destroy twice");
    assert!(!vm_dir.exists());
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[tokio::test]
async fn an_api_fault_fails_the_boot_with_firecrackers_message_and_cleans_up() {
    let Some(f) = fixture("fault", Some("/drives/rootfs")) else {
        return;
    };
    let driver = driver(&f);
    let mut vm = driver.prepare(&spec(&f, "fc-2")).await.expect("prepare");
    let error = vm.boot().await.expect_err("boot fails");
    match &error {
        Error::FirecrackerApi {
            method,
            path,
            status,
            message,
        } => {
            assert_eq!(
                (method.as_str(), path.as_str(), *status),
                ("PUT", "/drives/rootfs", 400)
            );
            assert_eq!(message, "fake fault on /drives/rootfs");
        }
        other => panic!("expected an API error, got {other}"),
    }
    let sequence: Vec<String> = requests(&f.log)
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        sequence,
        ["/machine-config", "/boot-source", "/drives/rootfs"],
        "nothing after the fault"
    );
    vm.destroy().await.expect("destroy");
    assert!(!f.dir.join("vms/fc-2").exists());
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[tokio::test]
async fn snapshot_calls_follow_the_api() {
    let Some(f) = fixture("snapshot", None) else {
        return;
    };
    let socket = f.dir.join("api.sock");
    let mut server = tokio::process::Command::new(&f.binary)
        .arg("--api-sock")
        .arg(&socket)
        .kill_on_drop(true)
        .spawn()
        .expect("fake firecracker");
    for _ in 0..500 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let api = FirecrackerApi::new(&socket);
    let state = f.dir.join("vm.state").display().to_string();
    let memory = f.dir.join("vm.mem").display().to_string();
    api.snapshot_create(&state, &memory).await.expect("create");
    api.snapshot_load(&state, &memory).await.expect("load");
    let sent = requests(&f.log);
    let bodies: Vec<(String, String, Value)> = sent
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or("").into(),
                r["path"].as_str().unwrap_or("").into(),
                r["body"].clone(),
            )
        })
        .collect();
    assert_eq!(
        bodies,
        vec![
            (
                "PATCH".into(),
                "/vm".into(),
                serde_json::json!({"state": "Paused"})
            ),
            (
                "PUT".into(),
                "/snapshot/create".into(),
                serde_json::json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": memory})
            ),
            (
                "PUT".into(),
                "/snapshot/load".into(),
                serde_json::json!({"snapshot_path": state,
                                   "mem_backend": {"backend_type": "File", "backend_path": memory},
                                   "resume_vm": true})
            ),
        ]
    );
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[tokio::test]
async fn vms_restored_from_a_snapshot_run_jobs_each_with_an_identity_of_its_own() {
    use std::os::unix::fs::MetadataExt;
    let Some(f) = fixture("restore", None) else {
        return;
    };
    let driver = driver(&f);
    let base = spec(&f, "fc-template");
    let saved = driver.snapshot(&base, "assets-a").await.expect("snapshot");
    for file in ["vm.state", "vm.mem", "rootfs.ext4", "scratch.ext4"] {
        let meta = std::fs::metadata(saved.dir.join(file)).expect("a snapshot file");
        assert_eq!(meta.mode() & 0o777, 0o444, "{file} is shared: read-only");
    }
    // The template booted as any VM, then was paused and saved, by relative paths.
    let made = sent_paths(&f.log);
    assert_eq!(
        made[made.len() - 3..],
        ["PUT /actions", "PATCH /vm", "PUT /snapshot/create"]
    );
    let create = requests(&f.log).pop().expect("create");
    assert_eq!(
        create["body"],
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": "vm.state", "mem_file_path": "vm.mem"})
    );
    let left: Vec<_> = std::fs::read_dir(f.dir.join("vms"))
        .expect("runtime dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(
        left.is_empty(),
        "the template's directory is gone: {left:?}"
    );
    // Made once: asking again finds it.
    assert_eq!(
        driver.snapshot(&base, "assets-a").await.expect("again"),
        saved
    );
    assert_eq!(sent_paths(&f.log).len(), made.len());

    std::fs::remove_file(&f.log).expect("clear the log");
    for id in ["fc-r1", "fc-r2"] {
        let mut restored = spec(&f, id);
        restored.snapshot = Some(saved.clone());
        let mut vm = driver.prepare(&restored).await.expect("prepare");
        vm.boot().await.expect("restore");
        let mut lines = Vec::new();
        let mut on_event = |event: JobEvent| {
            if let JobEvent::Output(line) = event {
                lines.push(line.line);
            }
        };
        let report = vm
            .run(&GuestJob::from_commands(&["echo restored"]), &mut on_event)
            .await
            .expect("run");
        assert_eq!(report.outcome, Outcome::Exited { code: 0 });
        assert_eq!(lines, ["restored"]);
        vm.destroy().await.expect("destroy");
    }
    // Each restoring Firecracker was only asked to load: nothing configured.
    assert_eq!(
        sent_paths(&f.log),
        [
            "PUT /snapshot/load",
            "GUEST refresh",
            "PUT /snapshot/load",
            "GUEST refresh"
        ]
    );
    let sent = requests(&f.log);
    assert_eq!(
        sent[0]["body"],
        serde_json::json!({"snapshot_path": saved.dir.join("vm.state").display().to_string(),
                           "mem_backend": {"backend_type": "File",
                                           "backend_path": saved.dir.join("vm.mem").display().to_string()},
                           "resume_vm": true})
    );
    let (one, two) = (&sent[1]["body"]["identity"], &sent[3]["body"]["identity"]);
    for field in ["entropy", "machine_id", "hostname"] {
        assert!(one[field].is_string(), "{field} given");
        assert_ne!(
            one[field], two[field],
            "{field} differs between restored VMs"
        );
    }

    // Other assets: a new snapshot, and the stale one is removed.
    let other = driver.snapshot(&base, "assets-b").await.expect("rebuilt");
    assert_ne!(other.key, saved.key);
    assert!(!saved.dir.exists());
    let _ = std::fs::remove_dir_all(&f.dir);
}

/// scripts/nimbus-jailer-wrapper accepts exactly the argv the driver builds and
/// refuses any other binary, user or chroot.
#[test]
fn the_privileged_jailer_wrapper_accepts_the_drivers_argv_and_nothing_else() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: the wrapper test runs as root (as the wrapper does)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("nimbus-wrapper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let fake_jailer = dir.join("jailer");
    std::fs::write(&fake_jailer, "#!/bin/sh\necho \"$@\"\n").expect("fake jailer");
    std::fs::set_permissions(&fake_jailer, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let conf = dir.join("jailer.env");
    std::fs::write(
        &conf,
        format!(
            "JAILER={}\nFIRECRACKER=/usr/bin/firecracker\nJAIL_UID=990\nJAIL_GID=991\nCHROOT_BASE=/srv/jailer\n",
            fake_jailer.display()
        ),
    )
    .expect("conf");
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nimbus-jailer-wrapper");
    let config = nimbus_vmm::firecracker::jailer::JailerConfig {
        binary: wrapper.clone(),
        uid: 990,
        gid: 991,
        chroot_base: "/srv/jailer".into(),
        seccomp_filter: Some("/etc/nimbus/seccomp.bpf".into()),
    };
    let run = |argv: &[String]| {
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("NIMBUS_JAILER_WRAPPER_CONF", &conf)
            .output()
            .expect("wrapper runs")
    };
    let argv = config.argv(Path::new("/usr/bin/firecracker"), "job-42");
    let output = run(&argv);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        argv[1..].join(" ")
    );

    for (index, bad) in [(4, "/tmp/evil"), (6, "0"), (10, "/"), (2, "../x")] {
        let mut tampered = argv.clone();
        tampered[index] = bad.to_string();
        let output = run(&tampered);
        assert_eq!(
            output.status.code(),
            Some(2),
            "argv {tampered:?} must be refused"
        );
        assert!(String::from_utf8_lossy(&output.stderr).contains("refused"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
