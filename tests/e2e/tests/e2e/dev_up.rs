//! `nimbus dev up`: the four services in one process on the embedded defaults; a
//! job submitted with the admin token from `.nimbus/dev.env` runs in a VM and its
//! line reaches the logs; Ctrl-C stops everything and the process exits 0.

use std::time::Duration;

use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_up_runs_a_job_end_to_end_and_stops_on_ctrl_c() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let mut dev = nimbus_e2e::DevUpProcess::start(&assets, "none")
        .await
        .expect("dev up");
    let client = reqwest::Client::new();
    let vars = dev.vars.clone();
    for key in [
        "NIMBUS_JWT_SECRET",
        "NIMBUS_TOKEN",
        "NIMBUS_CONTROL_PLANE_URL",
        "NIMBUS_CACHE_URL",
        "NIMBUS_LOGS_URL",
    ] {
        assert!(vars.contains_key(key), "dev.env has {key}");
    }
    assert!(
        vars["NIMBUS_CONTROL_PLANE_URL"].starts_with("http://127.0.0.1:"),
        "{vars:?}"
    );
    let token = &vars["NIMBUS_TOKEN"];
    let control_plane = &vars["NIMBUS_CONTROL_PLANE_URL"];
    client
        .post(format!("{control_plane}/api/orgs"))
        .bearer_auth(token)
        .json(&json!({"id": 1, "name": "acme"}))
        .send()
        .await
        .expect("org");
    let job: Value = client
        .post(format!("{control_plane}/api/jobs"))
        .bearer_auth(token)
        .json(&json!({"org_id": 1, "repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": "echo hello from dev up"}]}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job");
    let id = job["id"].as_i64().expect("id");
    let job = nimbus_e2e::final_job(control_plane, token, id, Duration::from_secs(30))
        .await
        .expect("job");
    assert_eq!(job["status"], "succeeded");
    let messages = nimbus_e2e::log_messages(&vars["NIMBUS_LOGS_URL"], token, id)
        .await
        .expect("logs");
    assert_eq!(
        messages.first().map(String::as_str),
        Some("hello from dev up"),
        "{messages:?}"
    );

    // The agent in the process went through the API and the sink in the process,
    // not through its own HTTP servers.
    let metrics = |url: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{url}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text")
        }
    };
    let control_metrics = metrics(control_plane.clone()).await;
    assert!(
        !control_metrics.contains("route=\"/api/jobs/lease\""),
        "the in-process agent leased over HTTP:\n{control_metrics}"
    );
    let pipeline_metrics = metrics(vars["NIMBUS_LOGS_URL"].clone()).await;
    assert!(
        pipeline_metrics.contains("nimbus_logging_pipeline_lines_received_total 0"),
        "the in-process agent posted lines over HTTP:\n{pipeline_metrics}"
    );

    // Ctrl-C: everything stops, exit 0.
    let exit = dev
        .interrupt(Duration::from_secs(20))
        .await
        .expect("dev up stops");
    assert!(exit.success(), "{exit}");
}
