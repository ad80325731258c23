//! `nimbus doctor`'s checks on a faked machine: a root directory laid out as a
//! broken host and as a healthy one, fake VMM binaries on `PATH`, a control plane
//! whose clock is off, and real (and unreachable) databases.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nimbus_core::config::Env;
use nimbus_vmm::doctor::{examine, Host, Inputs, Status};
use nimbus_vmm::select::{VmmChoice, VmmConfig};
use nimbus_vmm::spec::{DriverKind, NetworkSpec};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nimbus-doctor-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn touch(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::write(path, text).expect("write");
}

fn script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    touch(&path, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A control plane stand-in whose `Date` header is `offset` from this clock.
async fn control_plane(offset: Duration, behind: bool) -> String {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/healthz",
        get(move || async move {
            let now = SystemTime::now();
            let date = if behind { now - offset } else { now + offset };
            ([(axum::http::header::DATE, httpdate_string(date))], "ok")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn httpdate_string(time: SystemTime) -> String {
    httpdate::fmt_http_date(time)
}

fn vmm(choice: VmmChoice, assets: &Path, runtime: &Path) -> VmmConfig {
    let mut config = VmmConfig::from_env(&Env::from_map([("NIMBUS_VMM", "auto")])).expect("vmm");
    config.choice = choice;
    config.assets_dir = assets.to_path_buf();
    config.runtime_dir = runtime.to_path_buf();
    config
}

#[tokio::test]
async fn a_broken_host_fails_every_check_with_its_fix() {
    let root = scratch("broken");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let empty_assets = root.join("assets");
    std::fs::create_dir_all(&empty_assets).expect("assets");
    let host = Host {
        root: root.clone(),
        path: bin.into_os_string(),
        is_root: false,
    };
    let mut config = vmm(
        VmmChoice::Fixed(DriverKind::Firecracker),
        &empty_assets,
        &root.join("vms"),
    );
    config.network = NetworkSpec::Tap { egress: false };
    config.jailer = None;
    // More scratch disk than any disk has.
    config.scratch_disk_mib = u32::MAX;
    let inputs = Inputs {
        vmm: config,
        max_vms: 64,
        control_plane_url: Some(control_plane(Duration::from_secs(600), true).await),
        databases: vec![
            (
                "NIMBUS_DATABASE_URL".into(),
                "postgres://postgres@127.0.0.1:1/test".into(),
            ),
            (
                "NIMBUS_CACHE_METRICS_DB".into(),
                "/nonexistent/nimbus/cache-metrics.db".into(),
            ),
        ],
        clickhouse_url: Some("http://127.0.0.1:1".into()),
    };
    let report = examine(&host, &inputs).await;
    let table = report.render();
    println!("{table}");
    assert!(!report.healthy());
    for name in [
        "kvm",
        "firecracker",
        "jailer",
        "cgroup v2",
        "netns/tap",
        "assets",
        "disk space",
        "clock",
        "database NIMBUS_DATABASE_URL",
        "database NIMBUS_CACHE_METRICS_DB",
        "database NIMBUS_CLICKHOUSE_URL",
    ] {
        let check = report
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing:\n{table}"));
        assert_eq!(check.status, Status::Fail, "{name}:\n{table}");
        assert!(
            check.fix.as_deref().is_some_and(|fix| !fix.is_empty()),
            "{name} has no fix:\n{table}"
        );
    }
    // QEMU is not this configuration's driver: its absence is no failure.
    assert_eq!(report.get("qemu").map(|c| c.status), Some(Status::Skip));
    assert!(report
        .get("clock")
        .is_some_and(|c| c.detail.contains("ahead")));
    assert!(table.ends_with("check(s) failed\n"), "{table}");

    // PVM's /dev/kvm is named as such, and is what fails Firecracker here.
    touch(&root.join("dev/kvm"), "");
    std::fs::create_dir_all(root.join("sys/module/kvm_pvm")).expect("module");
    let report = examine(&host, &inputs).await;
    let kvm = report.get("kvm").expect("kvm");
    assert_eq!(kvm.status, Status::Fail);
    assert!(kvm.detail.contains("PVM"), "{}", kvm.detail);
    // A broken binary is reported as not running, not as missing.
    script(Path::new(&host.path), "firecracker", "exit 3");
    let report = examine(&host, &inputs).await;
    let firecracker = report.get("firecracker").expect("firecracker");
    assert_eq!(firecracker.status, Status::Fail);
    assert!(
        firecracker.detail.contains("does not run"),
        "{}",
        firecracker.detail
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn a_healthy_host_passes_with_versions_and_reached_services() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let Some(postgres) = nimbus_core::store::testsuite::postgres_test_url() else {
        return;
    };
    let Some(clickhouse) = nimbus_core::testsuite::setting("NIMBUS_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let root = scratch("healthy");
    touch(&root.join("dev/kvm"), "");
    std::fs::create_dir_all(root.join("sys/module/kvm_intel")).expect("module");
    touch(
        &root.join("sys/fs/cgroup/cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    touch(&root.join("dev/net/tun"), "");
    let bin = root.join("bin");
    script(
        &bin,
        "qemu-system-x86_64",
        "echo 'QEMU emulator version 8.2.2 (Debian)'",
    );
    script(&bin, "ip", "exit 0");
    let host = Host {
        root: root.clone(),
        path: bin.into_os_string(),
        is_root: true,
    };
    let mut config = vmm(
        VmmChoice::Fixed(DriverKind::Qemu),
        Path::new(&assets),
        &root.join("vms"),
    );
    config.network = NetworkSpec::Tap { egress: true };
    config.scratch_disk_mib = 16;
    let inputs = Inputs {
        vmm: config,
        max_vms: 2,
        control_plane_url: Some(control_plane(Duration::ZERO, false).await),
        databases: vec![
            ("NIMBUS_DATABASE_URL".into(), postgres),
            (
                "NIMBUS_DOCKER_CACHE_DB_PATH".into(),
                root.join("registry-index.db").display().to_string(),
            ),
        ],
        clickhouse_url: Some(clickhouse),
    };
    let report = examine(&host, &inputs).await;
    let table = report.render();
    println!("{table}");
    assert!(report.healthy(), "{table}");
    for check in &report.checks {
        assert!(
            matches!(check.status, Status::Pass | Status::Skip),
            "{}: {:?}\n{table}",
            check.name,
            check.status
        );
    }
    let qemu = report.get("qemu").expect("qemu");
    assert!(
        qemu.detail.contains("QEMU emulator version 8.2.2"),
        "{}",
        qemu.detail
    );
    assert!(report
        .get("database NIMBUS_DATABASE_URL")
        .is_some_and(|c| c.detail.starts_with("PostgreSQL ")));
    assert!(report
        .get("database NIMBUS_DOCKER_CACHE_DB_PATH")
        .is_some_and(|c| c.detail.contains("will be created")));
    assert_eq!(report.get("jailer").map(|c| c.status), Some(Status::Skip));
    assert!(table.ends_with("ready to run jobs\n"), "{table}");
    // Nothing was created by looking.
    assert!(!root.join("registry-index.db").exists());
    let _ = std::fs::remove_dir_all(&root);
}
