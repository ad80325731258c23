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
    /// Seconds the stand-in runner holds its job (put in the runner file).
    hold_seconds: Option<u64>,
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
    let mut runner_file = json!({"AgentId": id, "AgentName": name});
    if let Some(hold) = runners.hold_seconds {
        runner_file["HoldSeconds"] = json!(hold);
    }
    let runner_file = runner_file.to_string();
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

/// The services and a fake GitHub, and one GitHub job queued by its webhook.
struct Setup {
    runners: Shared,
    pipeline: LoggingPipelineProcess,
    control_plane: ControlPlaneProcess,
    agent: HostAgentProcess,
    id: i64,
}

/// Sends the recorded `workflow_job` delivery, changed by `change`, signed.
fn send_webhook(control_plane: &ControlPlaneProcess, change: impl FnOnce(&mut Value)) -> Value {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/webhooks/workflow_job_queued.json"
    );
    let mut delivery: Value =
        serde_json::from_str(&std::fs::read_to_string(example).expect("example")).expect("json");
    change(&mut delivery);
    let file =
        std::env::temp_dir().join(format!("nimbus-e2e-webhook-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, delivery.to_string()).expect("write");
    let answer = nimbus_e2e::nimbus_cli(
        &["dev", "webhook", &file.display().to_string()],
        &[
            ("NIMBUS_CONTROL_PLANE_URL", control_plane.url.as_str()),
            ("NIMBUS_GITHUB_WEBHOOK_SECRET", nimbus_e2e::WEBHOOK_SECRET),
        ],
    )
    .expect("webhook");
    let _ = std::fs::remove_file(&file);
    serde_json::from_str(answer.split_once(' ').map(|(_, body)| body).unwrap_or("{}"))
        .expect("answer")
}

async fn setup(hold_seconds: Option<u64>) -> Option<Setup> {
    let assets = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS")?;
    let runners: Shared = Arc::default();
    runners.lock().expect("lock").hold_seconds = hold_seconds;
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
        // Heartbeats every second: a lease taken back is noticed at once.
        ("NIMBUS_JOB_LEASE_TTL", "3".to_string()),
    ])
    .await
    .expect("control plane");
    let agent_token = mint_token(&["--role", "agent", "--sub", "github-e2e"]).expect("agent");
    let agent = HostAgentProcess::start(&[
        ("NIMBUS_CONTROL_PLANE_URL", control_plane.url.clone()),
        (
            "NIMBUS_CONTROL_PLANE_TOKEN",
            agent_token.expose().to_string(),
        ),
        ("NIMBUS_LOGS_URL", pipeline.url.clone()),
        ("NIMBUS_AGENT_ID", "github-e2e".to_string()),
        ("NIMBUS_VMM", "sandbox".to_string()),
        ("NIMBUS_ASSETS_DIR", assets),
        ("NIMBUS_VM_NETWORK", "none".to_string()),
    ])
    .expect("agent");
    let answer = send_webhook(&control_plane, |_| {});
    let id = answer["job_id"].as_i64().expect("job id");
    Some(Setup {
        runners,
        pipeline,
        control_plane,
        agent,
        id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_job_runs_the_stand_in_actions_runner_with_its_jit_config() {
    let Some(Setup {
        runners,
        pipeline,
        control_plane,
        agent: _agent,
        id,
    }) = setup(None).await
    else {
        return;
    };
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

/// The job is cancelled on GitHub while its runner works: the control plane ends
/// it `cancelled` and takes the lease back, and the agent stops the VM at its next
/// heartbeat (a second, with a 3 s lease) instead of letting it run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_on_github_while_it_runs_has_its_vm_stopped() {
    let Some(s) = setup(Some(600)).await else {
        return;
    };
    let vm = s.agent.runtime_dir.join(format!("job-{}-1", s.id));
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let mut running = false;
    for _ in 0..300 {
        let messages = nimbus_e2e::log_messages(&s.pipeline.url, admin.expose(), s.id)
            .await
            .unwrap_or_default();
        if messages.iter().any(|m| m.contains("Running job: build")) {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running && vm.exists(), "the runner is working on the job");

    let answer = send_webhook(&s.control_plane, |delivery| {
        delivery["action"] = json!("completed");
        delivery["workflow_job"]["status"] = json!("completed");
        delivery["workflow_job"]["conclusion"] = json!("cancelled");
        delivery["workflow_job"]["completed_at"] = json!("2026-11-27T05:01:00Z");
    });
    assert_eq!(answer["status"], "cancelled", "{answer}");
    let cancelled = std::time::Instant::now();
    while vm.exists() && cancelled.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !vm.exists(),
        "the VM is stopped within a heartbeat interval or two"
    );
    eprintln!(
        "VM stopped {:?} after the cancellation",
        cancelled.elapsed()
    );
    // The agent's late completion is refused: the job stays cancelled, with why.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job: Value = reqwest::Client::new()
        .get(format!("{}/api/jobs/{}", s.control_plane.url, s.id))
        .bearer_auth(admin.expose())
        .send()
        .await
        .expect("job")
        .json()
        .await
        .expect("json");
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(
        job["failure_reason"], "cancelled on GitHub while it ran",
        "{job}"
    );
    drop(s.runners);
}
