//! The three services together: a job submitted to the control plane is leased
//! by a host agent, run in a fresh sandbox from the built assets, its output
//! streamed to the logging pipeline, and completed with its exit code.

use std::time::Duration;

use nimbus_e2e::{mint_token, ControlPlaneProcess, HostAgentProcess, LoggingPipelineProcess};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_through_agent_vm_and_pipeline() {
    let Some(assets) = std::env::var_os("NIMBUS_TEST_ASSETS") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "NIMBUS_TEST_ASSETS is required under CI=true (scripts/test.sh builds the assets)"
            );
        }
        eprintln!("skipping: NIMBUS_TEST_ASSETS is not set");
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
        ("NIMBUS_VMM", "sandbox".to_string()),
        ("NIMBUS_ASSETS_DIR", assets.to_string_lossy().into_owned()),
        ("NIMBUS_VM_NETWORK", "none".to_string()),
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
        {"name": "warn", "run": "echo careful >&2"}
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
    for _ in 0..300 {
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
    assert_eq!(finished[&bad]["exit_code"], 3);

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
    assert_eq!(
        texts,
        vec![("info", "hello from nimbus-sandbox"), ("error", "careful")]
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
