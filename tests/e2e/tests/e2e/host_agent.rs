//! The three services together: a job submitted to the control plane is leased
//! by a host agent, run in a fresh VM (sandbox, and QEMU) from the built assets,
//! its output streamed to the logging pipeline, and completed with its exit code;
//! and an agent killed mid-job, whose job another agent finishes.

use std::time::Duration;

use nimbus_e2e::{mint_token, ControlPlaneProcess, HostAgentProcess, LoggingPipelineProcess};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_through_agent_vm_and_pipeline_in_the_sandbox() {
    jobs_run_end_to_end("sandbox").await;
}

/// The same under QEMU (TCG here: no hardware KVM), with real guest kernels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_through_agent_vm_and_pipeline_under_qemu() {
    jobs_run_end_to_end("qemu").await;
}

async fn jobs_run_end_to_end(driver: &str) {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let pipeline = LoggingPipelineProcess::start(&[]).await.expect("pipeline");
    let control_plane = ControlPlaneProcess::start(&[])
        .await
        .expect("control plane");
    let agent_token = mint_token(&["--role", "agent", "--sub", "host-e2e"]).expect("agent token");
    let _agent = HostAgentProcess::start(&[
        ("NIMBUS_CONTROL_PLANE_URL", control_plane.url.clone()),
        (
            "NIMBUS_CONTROL_PLANE_TOKEN",
            agent_token.expose().to_string(),
        ),
        ("NIMBUS_LOGS_URL", pipeline.url.clone()),
        ("NIMBUS_AGENT_ID", "host-e2e".to_string()),
        ("NIMBUS_VMM", driver.to_string()),
        ("NIMBUS_QEMU_ACCEL", "auto".to_string()),
        ("NIMBUS_ASSETS_DIR", assets.clone()),
        ("NIMBUS_VM_NETWORK", "none".to_string()),
        ("NIMBUS_VM_MEMORY_MIB", "512".to_string()),
        ("NIMBUS_VM_SCRATCH_MIB", "64".to_string()),
        ("NIMBUS_AGENT_MAX_VMS", "2".to_string()),
    ])
    .expect("agent");

    let client = reqwest::Client::new();
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let org = mint_token(&["--role", "org", "--org-id", "5"]).expect("org");
    client
        .post(format!("{}/api/orgs", control_plane.url))
        .bearer_auth(admin.expose())
        .json(&json!({"id": 5, "name": "acme"}))
        .send()
        .await
        .expect("org");
    let submit = |steps: Value| {
        let client = client.clone();
        let url = control_plane.url.clone();
        let org = org.expose().to_string();
        async move {
            let job: Value = client
                .post(format!("{url}/api/jobs"))
                .bearer_auth(org)
                .json(&json!({"repo": "acme/app", "labels": ["nimbus"], "steps": steps, "timeout_minutes": 5}))
                .send()
                .await
                .expect("submit")
                .json()
                .await
                .expect("job");
            job["id"].as_i64().expect("id")
        }
    };
    let good = submit(json!([
        {"name": "hello", "run": "echo hello from $(hostname)"},
        {"name": "warn", "run": "echo careful >&2"},
        {"name": "third", "run": "echo step three in $PWD as run $NIMBUS_JOB_ATTEMPT of job $NIMBUS_JOB_ID"}
    ]))
    .await;
    let bad = submit(json!([{"run": "echo failing; exit 3"}, {"run": "echo never"}])).await;
    // A GitHub job (from a recorded webhook) has no steps: until the GitHub
    // integration gives the agent a runner config, it must fail, not "succeed".
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/webhooks/workflow_job_queued.json"
    );
    let answer = nimbus_e2e::nimbus_cli(
        &["dev", "webhook", example],
        &[
            ("NIMBUS_CONTROL_PLANE_URL", control_plane.url.as_str()),
            ("NIMBUS_GITHUB_WEBHOOK_SECRET", nimbus_e2e::WEBHOOK_SECRET),
        ],
    )
    .expect("webhook");
    let answer: Value =
        serde_json::from_str(answer.split_once(' ').map(|(_, body)| body).unwrap_or("{}"))
            .expect("answer");
    let github = answer["job_id"].as_i64().expect("github job id");

    let mut finished = std::collections::HashMap::new();
    for _ in 0..1200 {
        for id in [good, bad, github] {
            let job: Value = client
                .get(format!("{}/api/jobs/{id}", control_plane.url))
                .bearer_auth(admin.expose())
                .send()
                .await
                .expect("job")
                .json()
                .await
                .expect("json");
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "timed_out")
            ) {
                finished.insert(id, job);
            }
        }
        if finished.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(finished.len(), 3, "every job finishes: {finished:?}");
    assert_eq!(finished[&github]["status"], "failed");
    assert!(
        finished[&github]["failure_reason"]
            .as_str()
            .unwrap_or("")
            .contains("runner config"),
        "{}",
        finished[&github]
    );
    assert_eq!(
        finished[&good]["status"], "succeeded",
        "{}",
        finished[&good]
    );
    assert_eq!(finished[&good]["exit_code"], 0);
    assert_eq!(finished[&bad]["status"], "failed");
    assert_eq!(finished[&bad]["exit_code"], 3, "{}", finished[&bad]);

    // Their output reached the pipeline, with levels by stream.
    let lines: Value = client
        .get(format!(
            "{}/api/logs?job_id={good}&order=oldest",
            pipeline.url
        ))
        .bearer_auth(org.expose())
        .send()
        .await
        .expect("logs")
        .json()
        .await
        .expect("json");
    let lines = lines["lines"].as_array().cloned().unwrap_or_default();
    let texts: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["level"].as_str().unwrap_or(""),
                l["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert_eq!(texts[0].0, "info");
    assert!(texts[0].1.starts_with("hello from "), "{texts:?}");
    if driver == "sandbox" {
        assert_eq!(texts[0].1, "hello from nimbus-sandbox");
    }
    assert_eq!(texts[1], ("error", "careful"));
    assert_eq!(texts[2].0, "info");
    assert!(texts[2].1.starts_with("step three in /"), "{texts:?}");
    assert!(
        texts[2].1.ends_with(&format!(" as run 1 of job {good}")),
        "{texts:?}"
    );
    assert!(lines.iter().all(|l| l["agent_id"] == "host-e2e"));
    let bad_lines: Value = client
        .get(format!("{}/api/logs?job_id={bad}", pipeline.url))
        .bearer_auth(org.expose())
        .send()
        .await
        .expect("logs")
        .json()
        .await
        .expect("json");
    let messages: Vec<&str> = bad_lines["lines"]
        .as_array()
        .map(|l| l.iter().filter_map(|r| r["message"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(messages, ["failing"]);
}

/// `kill -9` of the agent mid-job: the lease expires, a second agent leases the job
/// again and completes it once; when the first agent restarts, nothing of its VM is
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_job_is_re_leased_by_another_and_its_vm_cleaned_on_restart() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let control_plane = ControlPlaneProcess::start(&[
        ("NIMBUS_JOB_LEASE_TTL", "3".to_string()),
        ("NIMBUS_REAPER_INTERVAL", "0.5".to_string()),
    ])
    .await
    .expect("control plane");
    let agent_env = |name: &str| {
        nimbus_e2e::sandbox_agent_env(&control_plane.url, &assets, name).expect("agent settings")
    };
    let mut first = HostAgentProcess::start(&agent_env("agent-one")).expect("agent one");
    let client = reqwest::Client::new();
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let org = mint_token(&["--role", "org", "--org-id", "5"]).expect("org");
    client
        .post(format!("{}/api/orgs", control_plane.url))
        .bearer_auth(admin.expose())
        .json(&json!({"id": 5, "name": "acme"}))
        .send()
        .await
        .expect("org");
    let job: Value = client
        .post(format!("{}/api/jobs", control_plane.url))
        .bearer_auth(org.expose())
        .json(&json!({"repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": "echo started; sleep 6; echo finished"}]}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job");
    let id = job["id"].as_i64().expect("id");
    let first_vm = first.runtime_dir.join(format!("job-{id}-1"));
    for _ in 0..200 {
        if first_vm.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first_vm.exists(), "agent one runs the job");
    first.kill_hard().expect("kill -9");
    let first_dir = first.runtime_dir.clone();

    let _second = HostAgentProcess::start(&agent_env("agent-two")).expect("agent two");
    let done = nimbus_e2e::final_job(
        &control_plane.url,
        admin.expose(),
        id,
        Duration::from_secs(40),
    )
    .await
    .expect("job");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["attempt"], 2,
        "re-leased once after the lease expired: {done}"
    );
    assert_eq!(
        done["fencing_token"], 2,
        "completed under the second lease: {done}"
    );
    assert_eq!(done["agent_id"], "agent-two");

    // Agent one comes back on its old directory and removes what its VM left.
    first.restart().expect("restart");
    for _ in 0..200 {
        if !first_vm.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !first_vm.exists(),
        "the first VM's directory is removed on restart"
    );
    let left: Vec<_> = std::fs::read_dir(&first_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing of the first VM remains: {left:?}");
    // No process still works inside the old VM directory.
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            assert!(
                !cwd.starts_with(&first_vm),
                "process {:?} still runs in the first VM",
                entry.file_name()
            );
        }
    }
}
