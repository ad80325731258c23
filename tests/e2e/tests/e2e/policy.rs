//! `nimbus policy` exit codes, and a running control plane picking up an edited
//! policy file without a restart.

use std::process::Command;
use std::time::{Duration, Instant};

use nimbus_core::client::ControlPlaneClient;
use nimbus_e2e::{bin, mint_token, ControlPlaneProcess};
use serde_json::json;

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nimbus-e2e-policy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(bin("nimbus").expect("nimbus built"))
        .args(args)
        .output()
        .expect("run nimbus");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn policy_cli_exit_codes() {
    let dir = scratch();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nforbidden_labels: [\"gpu-*\"]\nlimits:\n  max_vcpus: 8\n",
    )
    .expect("write");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nblocked_workflow_titles:\n  - pattern: \"deploy(\"\n",
    )
    .expect("write");
    let allowed = dir.join("allowed.json");
    std::fs::write(
        &allowed,
        json!({"org_id": 1, "repository": "acme/app", "labels": ["nimbus"]}).to_string(),
    )
    .expect("write");
    let denied = dir.join("denied.json");
    std::fs::write(
        &denied,
        json!({"org_id": 1, "repo": "acme/app", "labels": ["gpu-a100", "vcpus:16"]}).to_string(),
    )
    .expect("write");
    let p = policy.to_str().expect("utf-8");

    let (code, stdout, _) = run(&["policy", "check", p]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("valid"));
    let (code, _, stderr) = run(&["policy", "check", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bad.yaml:3:5:") && stderr.contains("invalid regular expression"),
        "{stderr}"
    );

    let (code, stdout, _) = run(&[
        "policy",
        "eval",
        p,
        "--job",
        allowed.to_str().expect("utf-8"),
    ]);
    assert_eq!((code, stdout.trim()), (0, "allow"));
    let (code, stdout, _) = run(&[
        "policy",
        "eval",
        p,
        "--job",
        denied.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("deny")
            && stdout.contains("forbidden_labels[0]")
            && stdout.contains("limits.max_vcpus"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[
        "policy",
        "eval",
        p,
        "--job",
        denied.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(code, 1);
    let decision: serde_json::Value = serde_json::from_str(&stdout).expect("json decision");
    assert_eq!(decision["decision"], "deny");
    assert_eq!(decision["reasons"].as_array().map(Vec::len), Some(2));
    let (code, _, stderr) = run(&["policy", "eval", p, "--job", "/nonexistent.json"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = run(&[
        "policy",
        "eval",
        bad.to_str().expect("utf-8"),
        "--job",
        allowed.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_control_plane_reloads_its_policy_file() {
    let dir = scratch();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, "version: 1\nforbidden_labels: [privileged]\n").expect("write");
    let process =
        ControlPlaneProcess::start(&[("NIMBUS_JOB_POLICY_PATH", policy.display().to_string())])
            .await
            .expect("control plane");
    let token = |args: &[&str]| mint_token(args).expect("nimbus token mint");
    let admin =
        ControlPlaneClient::new(&process.url, Some(token(&["--role", "admin"]))).expect("client");
    admin.upsert_org(1, "acme").await.expect("org");
    let org = ControlPlaneClient::new(
        &process.url,
        Some(token(&["--role", "org", "--org-id", "1"])),
    )
    .expect("client");
    let job = json!({"repo": "acme/app", "labels": ["privileged"], "steps": [{"run": "true"}]});
    assert_eq!(
        org.submit_job(&job).await.expect("submit").status,
        nimbus_core::JobStatus::Rejected
    );

    // A broken edit is refused and the old policy stays…
    std::fs::write(&policy, "version: 1\nforbidden_labels: [privileged\n").expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        org.submit_job(&job).await.expect("submit").status,
        nimbus_core::JobStatus::Rejected
    );
    let metrics = process.metrics().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "nimbus_control_plane_policy_reload_errors_total 1"),
        "{metrics}"
    );

    // …and a good edit takes effect without a restart.
    std::fs::write(&policy, "version: 1\nforbidden_labels: [otherlabel]\n").expect("write");
    let started = Instant::now();
    loop {
        let status = org.submit_job(&job).await.expect("submit").status;
        if status == nimbus_core::JobStatus::Queued {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "policy not reloaded within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // SIGHUP reloads even an edit the file watch cannot see (same size, same mtime).
    let reference = dir.join("reference");
    std::fs::write(&reference, "").expect("write");
    let touch = |args: &[&str]| {
        assert!(Command::new("touch")
            .args(args)
            .status()
            .expect("touch")
            .success())
    };
    touch(&[
        "-r",
        policy.to_str().expect("utf-8"),
        reference.to_str().expect("utf-8"),
    ]);
    std::fs::write(&policy, "version: 1\nforbidden_labels: [privileged]\n").expect("write");
    touch(&[
        "-r",
        reference.to_str().expect("utf-8"),
        policy.to_str().expect("utf-8"),
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        org.submit_job(&job).await.expect("submit").status,
        nimbus_core::JobStatus::Queued,
        "the watch saw no change"
    );
    let status = Command::new("kill")
        .args(["-HUP", &process.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    while org.submit_job(&job).await.expect("submit").status != nimbus_core::JobStatus::Rejected {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload the policy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
