//! The logging pipeline binary with the control plane binary: an agent's lines,
//! sent with its lease's ingest token, are stored and followed; a job's metadata reaches the pipeline through
//! NIMBUS_METADATA_SINK_URL; on ClickHouse too when the suite has one.

use std::time::Duration;

use nimbus_e2e::{mint_token, ControlPlaneProcess, LoggingPipelineProcess};
use serde_json::{json, Value};

async fn lines_and_metadata_flow(pipeline: LoggingPipelineProcess) {
    let control_plane =
        ControlPlaneProcess::start(&[("NIMBUS_METADATA_SINK_URL", pipeline.url.clone())])
            .await
            .expect("control plane");
    let client = reqwest::Client::new();
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let agent = mint_token(&["--role", "agent", "--sub", "host-1"]).expect("agent");
    let org = mint_token(&["--role", "org", "--org-id", "3"]).expect("org");
    let response = client
        .post(format!("{}/api/orgs", control_plane.url))
        .bearer_auth(admin.expose())
        .json(&json!({"id": 3, "name": "acme"}))
        .send()
        .await
        .expect("org");
    assert!(response.status().is_success());
    let job: Value = client
        .post(format!("{}/api/jobs", control_plane.url))
        .bearer_auth(org.expose())
        .json(&json!({"repo": "acme/app", "labels": ["nimbus", "param:python=3.12", "meta:team=infra"],
                      "steps": [{"name": "hello", "run": "echo hello"}]}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job");
    let job_id = job["id"].as_i64().expect("job id");

    // The metadata arrives at the pipeline in the background.
    let mut metadata = Value::Null;
    for _ in 0..100 {
        metadata = client
            .get(format!("{}/api/metadata/{job_id}", pipeline.url))
            .bearer_auth(org.expose())
            .send()
            .await
            .expect("metadata")
            .json()
            .await
            .expect("json");
        if metadata["metadata"]
            .as_array()
            .is_some_and(|rows| rows.len() == 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metadata["metadata"][0]["key"], "python", "{metadata}");
    assert_eq!(metadata["metadata"][0]["value"], "3.12");
    assert_eq!(metadata["metadata"][1]["key"], "team");

    // An agent leases the job; its lines go out with the lease's ingest token (its
    // own API token is not for the pipeline), as NDJSON; the org sees them, in order.
    let lease: Value = client
        .post(format!("{}/api/jobs/lease", control_plane.url))
        .bearer_auth(agent.expose())
        .send()
        .await
        .expect("lease")
        .json()
        .await
        .expect("lease json");
    assert_eq!(lease["job"]["id"], job_id, "{lease}");
    let ingest = lease["ingest_token"].as_str().expect("an ingest token");
    let body: String = (1..=3)
        .map(|seq| {
            json!({"job_id": job_id, "agent_id": "host-1", "org_id": 3, "level": "info",
                   "message": format!("line {seq}"), "ts": "2026-11-27T08:00:00Z", "seq": seq})
            .to_string()
                + "\n"
        })
        .collect();
    let refused = client
        .post(format!("{}/api/logs", pipeline.url))
        .bearer_auth(agent.expose())
        .body(body.clone())
        .send()
        .await
        .expect("ingest");
    assert_eq!(
        refused.status(),
        401,
        "an agent's API token writes no lines"
    );
    let response = client
        .post(format!("{}/api/logs", pipeline.url))
        .bearer_auth(ingest)
        .body(body)
        .send()
        .await
        .expect("ingest");
    assert_eq!(response.status(), 200);
    let lines: Value = client
        .get(format!("{}/api/logs?job_id={job_id}", pipeline.url))
        .bearer_auth(org.expose())
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    let messages: Vec<&str> = lines["lines"]
        .as_array()
        .map(|l| l.iter().filter_map(|r| r["message"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(messages, ["line 1", "line 2", "line 3"]);
    let stats: Value = client
        .get(format!("{}/api/stats", pipeline.url))
        .bearer_auth(org.expose())
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["lines"], 3, "{stats}");

    // The same figures from the CLI.
    let report = nimbus_e2e::nimbus_cli(
        &["report", "logs"],
        &[
            ("NIMBUS_LOGS_URL", pipeline.url.as_str()),
            ("NIMBUS_CONTROL_PLANE_TOKEN", org.expose()),
        ],
    )
    .expect("nimbus report logs");
    assert!(report.starts_with("3 lines"), "{report}");
    assert!(report.contains("info") && report.contains('3'), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_sqlite_takes_lines_and_the_control_planes_metadata() {
    let pipeline = LoggingPipelineProcess::start(&[]).await.expect("pipeline");
    lines_and_metadata_flow(pipeline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_clickhouse_takes_lines_and_the_control_planes_metadata() {
    let Some(url) = nimbus_core::testsuite::setting("NIMBUS_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let database = format!("nimbus_e2e_{}", std::process::id());
    let pipeline = LoggingPipelineProcess::start(&[
        ("NIMBUS_LOGS_BACKEND", "clickhouse".to_string()),
        ("NIMBUS_CLICKHOUSE_URL", url),
        ("NIMBUS_CLICKHOUSE_DATABASE", database),
    ])
    .await
    .expect("pipeline");
    lines_and_metadata_flow(pipeline).await;
}
