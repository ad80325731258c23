//! `nimbus vm run` and `nimbus doctor` as an operator runs them: the real CLI
//! booting the built assets (QEMU under TCG here), streaming output, exiting with
//! the command's code, refusing tampered assets, cleaning up after itself.

use std::path::PathBuf;
use std::process::Command;

use nimbus_e2e::bin;

fn assets() -> Option<PathBuf> {
    nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS").map(PathBuf::from)
}

fn vm_run(
    assets: &std::path::Path,
    runtime: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    Command::new(bin("nimbus").expect("nimbus is built"))
        .args(["vm", "run"])
        .args(args)
        .env("NIMBUS_ASSETS_DIR", assets)
        .env("NIMBUS_VM_RUNTIME_DIR", runtime)
        .env("NIMBUS_VM_NETWORK", "none")
        .env("NIMBUS_VM_SCRATCH_MIB", "128")
        .output()
        .expect("runs")
}

#[test]
fn vm_run_boots_qemu_streams_output_and_exits_with_the_commands_code() {
    let Some(assets) = assets() else { return };
    let runtime = std::env::temp_dir().join(format!("nimbus-e2e-vm-{}", std::process::id()));
    let output = vm_run(
        &assets,
        &runtime,
        &[
            "--driver",
            "qemu",
            "--cpus",
            "1",
            "--memory",
            "512",
            "--step",
            "uname -r",
            "--step",
            "echo oops >&2; exit 7",
            "--",
            "echo",
            "hello",
            "from",
            "the",
            "vm",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "hello from the vm");
    assert!(
        lines[1].contains("cloud-amd64"),
        "uname -r is the guest's Debian kernel: {stdout}"
    );
    assert!(stderr.contains("oops"));
    assert!(stderr.contains("qemu guest up in"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&runtime)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "no VM directory outlives the command: {left:?}"
    );
    let _ = std::fs::remove_dir_all(&runtime);
}

#[test]
fn vm_run_refuses_a_rootfs_that_does_not_match_the_pin() {
    let Some(assets) = assets() else { return };
    let runtime = std::env::temp_dir().join(format!("nimbus-e2e-pin-{}", std::process::id()));
    let output = Command::new(bin("nimbus").expect("nimbus is built"))
        .args(["vm", "run", "--driver", "qemu", "--", "true"])
        .env("NIMBUS_ASSETS_DIR", &assets)
        .env("NIMBUS_VM_RUNTIME_DIR", &runtime)
        .env("NIMBUS_ROOTFS_SHA256", "0".repeat(64))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("NIMBUS_ROOTFS_SHA256") && stderr.contains("failed attestation"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&runtime);
}

#[test]
fn vm_run_on_the_sandbox_and_drivers_listing() {
    let Some(assets) = assets() else { return };
    let runtime = std::env::temp_dir().join(format!("nimbus-e2e-sandbox-{}", std::process::id()));
    let output = vm_run(
        &assets,
        &runtime,
        &[
            "--driver",
            "sandbox",
            "--",
            "hostname; id -u; echo changed > /etc/motd && echo writable root; cat /etc/motd",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["nimbus-sandbox", "0", "writable root", "changed"]
    );
    // The root was the job's own: the next sandbox starts from the attested tree.
    let output = vm_run(
        &assets,
        &runtime,
        &[
            "--driver",
            "sandbox",
            "--",
            "grep -c changed /etc/motd || true",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "0");
    assert!(String::from_utf8_lossy(&output.stderr).contains("weaker isolation"));

    let drivers = Command::new(bin("nimbus").expect("nimbus is built"))
        .args(["vm", "drivers"])
        .env("NIMBUS_VM_RUNTIME_DIR", &runtime)
        .output()
        .expect("runs");
    let listing = String::from_utf8_lossy(&drivers.stdout);
    for driver in ["firecracker", "qemu", "sandbox"] {
        assert!(listing.contains(driver), "{listing}");
    }
    assert!(listing.contains("NIMBUS_VMM picks"), "{listing}");
    let _ = std::fs::remove_dir_all(&runtime);
}

/// `nimbus doctor` on this machine, as an operator runs it: the table, its JSON
/// form, and an exit code that says whether any check failed.
#[test]
fn doctor_checks_this_host_and_exits_with_the_verdict() {
    let Some(assets) = assets() else { return };
    let doctor = |args: &[&str], vmm: &str| {
        Command::new(bin("nimbus").expect("nimbus is built"))
            .arg("doctor")
            .args(args)
            .env("NIMBUS_ASSETS_DIR", &assets)
            .env("NIMBUS_VMM", vmm)
            .env("NIMBUS_VM_NETWORK", "none")
            .env("NIMBUS_VM_SCRATCH_MIB", "128")
            .env("NIMBUS_AGENT_MAX_VMS", "1")
            .env_remove("NIMBUS_CONTROL_PLANE_URL")
            .env_remove("NIMBUS_DATABASE_URL")
            .output()
            .expect("nimbus doctor")
    };
    let json = doctor(&["--json"], "qemu");
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    let checks = report["checks"].as_array().expect("checks");
    let status = |name: &str| {
        checks
            .iter()
            .find(|check| check["name"] == name)
            .and_then(|check| check["status"].as_str())
            .unwrap_or_else(|| panic!("no {name} check in {report}"))
            .to_string()
    };
    // This machine has QEMU and the built assets; nothing to compare clocks with.
    assert_eq!(status("qemu"), "pass", "{report}");
    assert_eq!(status("assets"), "pass", "{report}");
    assert_eq!(status("clock"), "skip", "{report}");
    let failed = checks.iter().any(|check| check["status"] == "fail");
    assert_eq!(json.status.success(), !failed, "{report}");

    // Firecracker is not installed here: the table says so, with the fix, and exits 1.
    let table = doctor(&[], "firecracker");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(!table.status.success(), "{text}");
    assert!(text.starts_with("CHECK"), "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with("firecracker") && line.contains("FAIL")),
        "{text}"
    );
    assert!(text.contains("fix: install firecracker"), "{text}");
}
