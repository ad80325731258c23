//! `nimbus dev up`: the four services in one process on the embedded defaults; a
//! job submitted with the admin token from `.nimbus/dev.env` runs in a VM and its
//! line reaches the logs; Ctrl-C stops everything and the process exits 0.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_up_runs_a_job_end_to_end_and_stops_on_ctrl_c() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("nimbus-e2e-devup-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = || nimbus_e2e::free_port().expect("port");
    let (cp, cache, logs, metrics) = (port(), port(), port(), port());
    let mut child = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
        .args(["dev", "up"])
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NIMBUS_ASSETS_DIR", &assets)
        .env("NIMBUS_VMM", "sandbox")
        .env("NIMBUS_VM_NETWORK", "none")
        .env("NIMBUS_LOG_LEVEL", "warn")
        .env("NIMBUS_CONTROL_PLANE_ADDR", format!("127.0.0.1:{cp}"))
        .env("NIMBUS_CACHE_PROXY_ADDR", format!("127.0.0.1:{cache}"))
        .env("NIMBUS_LOGGING_PIPELINE_ADDR", format!("127.0.0.1:{logs}"))
        .env(
            "NIMBUS_HOST_AGENT_METRICS_ADDR",
            format!("127.0.0.1:{metrics}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nimbus dev up");

    let client = reqwest::Client::new();
    let started = Instant::now();
    let dev_env = dir.join(".nimbus/dev.env");
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{cp}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready && dev_env.is_file() {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "dev up exited early"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "dev up not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vars: HashMap<String, String> = std::fs::read_to_string(&dev_env)
        .expect("dev.env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for key in [
        "NIMBUS_JWT_SECRET",
        "NIMBUS_TOKEN",
        "NIMBUS_CONTROL_PLANE_URL",
        "NIMBUS_CACHE_URL",
        "NIMBUS_LOGS_URL",
    ] {
        assert!(vars.contains_key(key), "dev.env has {key}");
    }
    assert_eq!(
        vars["NIMBUS_CONTROL_PLANE_URL"],
        format!("http://127.0.0.1:{cp}")
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
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let stopping = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "dev up did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit}");
    let _ = std::fs::remove_dir_all(&dir);
}
