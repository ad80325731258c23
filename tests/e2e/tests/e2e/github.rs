//! A GitHub job end to end: a signed `workflow_job.queued` webhook → queued → the
//! host agent leases it, fetches the job's just-in-time runner config (the control
//! plane registers the runner with GitHub — here a small local stand-in of the
//! three GitHub endpoints involved, in personal-token mode) → the guest starts the
//! Actions runner with it → succeeded, and the runner is removed from GitHub.
//! The runner in the test assets is a STAND-IN (tests/fixtures/actions-runner-standin)
//! that checks its JIT config and prints what a runner prints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use nimbus_e2e::{mint_token, ControlPlaneProcess, HostAgentProcess, LoggingPipelineProcess};
use serde_json::{json, Value};

/// Runners registered: id → name; and the ids deleted.
#[derive(Default)]
struct Runners {
    registered: HashMap<i64, String>,
    deleted: Vec<i64>,
}

type Shared = Arc<Mutex<Runners>>;

async fn generate(
    State(runners): State<Shared>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let mut runners = runners.lock().expect("lock");
    let id = runners.registered.len() as i64 + 100;
    runners.registered.insert(id, name.clone());
    let runner_file = json!({"AgentId": id, "AgentName": name}).to_string();
    let config =
        json!({".runner": STANDARD.encode(runner_file), ".credentials": STANDARD.encode("{}")});
    (
        StatusCode::CREATED,
        Json(
            json!({"runner": {"id": id, "name": name}, "encoded_jit_config": STANDARD.encode(config.to_string())}),
        ),
    )
}

async fn list(
    State(runners): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let runners = runners.lock().expect("lock");
    let found: Vec<Value> = runners
        .registered
        .iter()
        .filter(|(id, name)| Some(*name) == query.get("name") && !runners.deleted.contains(id))
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    Json(json!({"total_count": found.len(), "runners": found}))
}

async fn remove(
    State(runners): State<Shared>,
    Path((_, _, id)): Path<(String, String, i64)>,
) -> StatusCode {
    let mut runners = runners.lock().expect("lock");
    if runners.registered.contains_key(&id) && !runners.deleted.contains(&id) {
        runners.deleted.push(id);
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_job_runs_the_stand_in_actions_runner_with_its_jit_config() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let runners: Shared = Arc::default();
    let github = Router::new()
        .route(
            "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            post(generate),
        )
        .route("/repos/{owner}/{repo}/actions/runners", get(list))
        .route("/repos/{owner}/{repo}/actions/runners/{id}", delete(remove))
        .with_state(runners.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let github_url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, github).await;
    });

    let pipeline = LoggingPipelineProcess::start(&[]).await.expect("pipeline");
    let control_plane = ControlPlaneProcess::start(&[
        ("NIMBUS_GITHUB_TOKEN", "ghp_e2e".to_string()),
        ("NIMBUS_GITHUB_API_URL", github_url),
        // The reconciler would list this fake's (missing) runs: keep it out of the way.
        ("NIMBUS_GITHUB_RECONCILE_SECONDS", "3600".to_string()),
    ])
    .await
    .expect("control plane");
    let agent_token = mint_token(&["--role", "agent", "--sub", "github-e2e"]).expect("agent");
    let _agent = HostAgentProcess::start(&[
        ("NIMBUS_CONTROL_PLANE_URL", control_plane.url.clone()),
        (
            "NIMBUS_CONTROL_PLANE_TOKEN",
            agent_token.expose().to_string(),
        ),
        ("NIMBUS_LOGS_URL", pipeline.url.clone()),
        ("NIMBUS_AGENT_ID", "github-e2e".to_string()),
        ("NIMBUS_VMM", "sandbox".to_string()),
        ("NIMBUS_ASSETS_DIR", assets.clone()),
        ("NIMBUS_VM_NETWORK", "none".to_string()),
    ])
    .expect("agent");

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
    let id = answer["job_id"].as_i64().expect("job id");

    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let job = nimbus_e2e::final_job(
        &control_plane.url,
        admin.expose(),
        id,
        Duration::from_secs(30),
    )
    .await
    .expect("job");
    assert_eq!(job["status"], "succeeded", "{job}");
    let token = job["fencing_token"].as_i64().expect("token");
    let runner_name = format!("nimbus-{id}-{token}");

    let messages = nimbus_e2e::log_messages(&pipeline.url, admin.expose(), id)
        .await
        .expect("logs");
    assert!(
        messages.iter().any(|m| m == "√ Connected to GitHub"),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.ends_with(&format!("Running job: build (runner {runner_name})"))),
        "the runner got this lease's JIT config: {messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("jitconfig")),
        "the JIT config is not logged: {messages:?}"
    );
    // The runner is removed from GitHub once the job completes.
    for _ in 0..100 {
        if !runners.lock().expect("lock").deleted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runners = runners.lock().expect("lock");
    assert_eq!(
        runners.registered.values().collect::<Vec<_>>(),
        vec![&runner_name]
    );
    assert_eq!(runners.deleted.len(), 1, "runner removed after completion");
}
