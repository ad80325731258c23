//! The control plane as real processes: two replicas on one PostgreSQL, the
//! embedded SQLite default, tokens from the real CLI, webhooks over real HTTP.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::client::ControlPlaneClient;
use nimbus_core::domain::{Completion, CompletionStatus};
use nimbus_core::Secret;
use nimbus_e2e::{mint_token, ControlPlaneProcess, WEBHOOK_SECRET};
use serde_json::json;
use tokio::sync::Mutex;

fn token(args: &[&str]) -> Secret {
    mint_token(args).expect("nimbus token mint")
}

fn job_body(n: usize) -> serde_json::Value {
    json!({"repo": "acme/app", "labels": ["nimbus", format!("param:n={n}")], "steps": [{"run": "true"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_lease_every_job_exactly_once() {
    let Some(url) = nimbus_core::store::testsuite::postgres_schema_url().await else {
        return;
    };
    const JOBS: usize = 2000;
    const AGENTS: usize = 4;
    let env = vec![
        ("NIMBUS_DATABASE_URL", url.clone()),
        ("NIMBUS_ORG_JOB_RATE_LIMIT", "1000000".to_string()),
    ];
    let replicas = [
        ControlPlaneProcess::start(&env).await.expect("replica A"),
        ControlPlaneProcess::start(&env).await.expect("replica B"),
    ];
    let admin = token(&["--role", "admin"]);
    let org = token(&["--role", "org", "--org-id", "1"]);
    let setup = ControlPlaneClient::new(&replicas[0].url, Some(admin.clone())).expect("client");
    setup.upsert_org(1, "acme").await.expect("register org");

    // Producers submit through both replicas while the agents lease from both.
    let submitted = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for (index, replica) in replicas.iter().enumerate() {
        let client = ControlPlaneClient::new(&replica.url, Some(org.clone())).expect("client");
        let submitted = submitted.clone();
        producers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in (index..JOBS).step_by(2) {
                let job = client.submit_job(&job_body(n)).await.expect("submit");
                submitted.fetch_add(1, Ordering::SeqCst);
                ids.push(job.id);
            }
            ids
        }));
    }

    let leased = Arc::new(Mutex::new(Vec::new()));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut agents = Vec::new();
    for agent in 0..AGENTS {
        let agent_token = token(&["--role", "agent", "--sub", &format!("e2e-agent-{agent}")]);
        let clients = [
            ControlPlaneClient::new(&replicas[0].url, Some(agent_token.clone())).expect("client"),
            ControlPlaneClient::new(&replicas[1].url, Some(agent_token)).expect("client"),
        ];
        let leased = leased.clone();
        let completed = completed.clone();
        agents.push(tokio::spawn(async move {
            let mut turn = agent;
            while completed.load(Ordering::SeqCst) < JOBS {
                let client = &clients[turn % 2];
                turn += 1;
                let Some(lease) = client.lease(Duration::from_secs(1)).await.expect("lease") else {
                    continue;
                };
                leased.lock().await.push(lease.job.id);
                let done = Completion {
                    fencing_token: lease.fencing_token,
                    status: CompletionStatus::Succeeded,
                    exit_code: Some(0),
                    reason: None,
                    result: None,
                };
                // Complete on the other replica: they share one database.
                clients[turn % 2]
                    .complete(lease.job.id, &done)
                    .await
                    .expect("complete");
                completed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut submitted_ids = HashSet::new();
    for producer in producers {
        submitted_ids.extend(producer.await.expect("producer"));
    }
    let agents_done = tokio::time::timeout(Duration::from_secs(300), async {
        for agent in agents {
            agent.await.expect("agent");
        }
    })
    .await;
    assert!(
        agents_done.is_ok(),
        "agents did not drain the queue in time"
    );

    let leased = leased.lock().await.clone();
    let unique: HashSet<i64> = leased.iter().copied().collect();
    assert_eq!(submitted_ids.len(), JOBS);
    assert_eq!(
        leased.len(),
        JOBS,
        "every job leased exactly once (no double lease)"
    );
    assert_eq!(unique, submitted_ids, "no job lost");

    // The store agrees: every job succeeded, none queued or leased.
    let admin_client = ControlPlaneClient::new(&replicas[1].url, Some(admin)).expect("client");
    let mut succeeded = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![
            ("status", "succeeded".to_string()),
            ("limit", "500".to_string()),
        ];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let page = admin_client.list_jobs(&query).await.expect("list");
        succeeded += page.jobs.len();
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(succeeded, JOBS);
    for status in ["queued", "leased"] {
        let page = admin_client
            .list_jobs(&[("status", status.to_string())])
            .await
            .expect("list");
        assert!(page.jobs.is_empty(), "{status} jobs remain");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_runs_the_job_lifecycle_and_blocks_replays() {
    let mut process = ControlPlaneProcess::start(&[
        ("NIMBUS_JOB_LEASE_TTL", "1".into()),
        ("NIMBUS_REAPER_INTERVAL", "0.2".into()),
    ])
    .await
    .expect("control plane");
    assert!(
        process.data_dir.join("control-plane.db").exists(),
        "SQLite file under NIMBUS_DATA_DIR"
    );
    let admin =
        ControlPlaneClient::new(&process.url, Some(token(&["--role", "admin"]))).expect("client");
    admin.upsert_org(7, "seven").await.expect("org");
    let org = ControlPlaneClient::new(
        &process.url,
        Some(token(&["--role", "org", "--org-id", "7"])),
    )
    .expect("client");
    let dead_agent = ControlPlaneClient::new(
        &process.url,
        Some(token(&["--role", "agent", "--sub", "dead"])),
    )
    .expect("client");
    let agent = ControlPlaneClient::new(
        &process.url,
        Some(token(&["--role", "agent", "--sub", "alive"])),
    )
    .expect("client");

    // Kill an agent mid-lease: it never heartbeats; the reaper re-queues after the TTL.
    let job = org.submit_job(&job_body(1)).await.expect("submit");
    let first = dead_agent
        .lease(Duration::ZERO)
        .await
        .expect("lease")
        .expect("a job");
    assert_eq!(first.job.id, job.id);
    let second = agent
        .lease(Duration::from_secs(10))
        .await
        .expect("lease")
        .expect("re-leased after TTL");
    assert_eq!(second.job.id, job.id);
    assert!(second.fencing_token > first.fencing_token);
    assert_eq!(second.job.attempt, 2);
    let stale = Completion {
        fencing_token: first.fencing_token,
        status: CompletionStatus::Succeeded,
        exit_code: Some(0),
        reason: None,
        result: None,
    };
    let err = dead_agent
        .complete(job.id, &stale)
        .await
        .expect_err("stale token");
    assert_eq!(err.kind(), nimbus_core::ErrorKind::Conflict);
    let done = agent
        .complete(
            job.id,
            &Completion {
                fencing_token: second.fencing_token,
                ..stale
            },
        )
        .await
        .expect("complete");
    assert_eq!(done.status, nimbus_core::JobStatus::Succeeded);

    // A signed webhook, then its replay: 409 and the replay metric, read from
    // loopback without a metrics token.
    let created_at = time_now();
    let payload = json!({
        "action": "queued",
        "workflow_job": {"id": 77001, "run_id": 5, "labels": ["nimbus"], "created_at": created_at, "name": "build"},
        "repository": {"id": 3, "full_name": "seven/app", "owner": {"id": 7, "login": "seven"}}
    });
    let body = serde_json::to_vec(&payload).expect("json");
    let (status, answer) = admin
        .send_webhook(
            WEBHOOK_SECRET.as_bytes(),
            "workflow_job",
            "e2e-delivery",
            body.clone(),
        )
        .await
        .expect("send");
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = admin
        .send_webhook(
            WEBHOOK_SECRET.as_bytes(),
            "workflow_job",
            "e2e-delivery",
            body,
        )
        .await
        .expect("send");
    assert_eq!(status, 409, "{answer}");
    let metrics = process.metrics().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "nimbus_control_plane_webhook_replays_blocked 1"),
        "{metrics}"
    );
    let jobs = org.list_jobs(&[]).await.expect("list");
    assert_eq!(jobs.jobs.len(), 2);

    // Drain the webhook's job, then SIGTERM ends a long-poll and exits cleanly.
    let webhook_job = agent
        .lease(Duration::ZERO)
        .await
        .expect("lease")
        .expect("the webhook's job");
    assert_eq!(webhook_job.job.github.map(|g| g.job_id), Some(77001));
    let waiting = tokio::spawn(async move { agent.lease(Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exit = process
        .terminate(Duration::from_secs(10))
        .expect("terminate");
    assert!(exit.success(), "exit status {exit}");
    let answered = waiting.await.expect("join");
    assert!(matches!(answered, Ok(None)) || answered.is_err());
}

fn time_now() -> String {
    // RFC 3339 without pulling `time` into this crate's dependencies.
    let output = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nimbus_dev_webhook_sends_a_recorded_delivery() {
    let process = ControlPlaneProcess::start(&[])
        .await
        .expect("control plane");
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/webhooks/workflow_job_queued.json"
    );
    let env = [
        ("NIMBUS_CONTROL_PLANE_URL", process.url.as_str()),
        ("NIMBUS_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ];
    let delivery = "dev-webhook-e2e";
    let answer = nimbus_e2e::nimbus_cli(&["dev", "webhook", example, "--delivery", delivery], &env)
        .expect("first delivery");
    assert!(answer.starts_with("201 "), "{answer}");
    // The same delivery again is a replay: refused, and the command fails.
    let replay = std::process::Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
        .args(["dev", "webhook", example, "--delivery", delivery])
        .envs(env)
        .output()
        .expect("run nimbus");
    assert!(!replay.status.success());
    assert!(String::from_utf8_lossy(&replay.stdout).starts_with("409 "));
    let admin =
        ControlPlaneClient::new(&process.url, Some(token(&["--role", "admin"]))).expect("client");
    let jobs = admin.list_jobs(&[]).await.expect("list");
    assert_eq!(jobs.jobs.len(), 1);
    assert_eq!(jobs.jobs[0].repo, "acme/app");
    assert_eq!(
        jobs.jobs[0].metadata.get("python").map(String::as_str),
        Some("3.12")
    );
}

/// With `NIMBUS_TRUSTED_PROXIES` naming a proxy on this host, a loopback peer is
/// that proxy forwarding someone: `/metrics` then needs its token, and only the
/// declared proxy's `X-Forwarded-Proto: https` marks the dashboard cookie Secure.
/// Without the declaration, forwarding headers are anyone's words and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_count_only_from_a_declared_proxy() {
    const METRICS_TOKEN: &str = "e2e-metrics-token-0123456789abcdef";
    let direct = ControlPlaneProcess::start(&[])
        .await
        .expect("control plane");
    let proxied = ControlPlaneProcess::start(&[
        ("NIMBUS_TRUSTED_PROXIES", "127.0.0.1, ::1".into()),
        ("NIMBUS_CONTROL_PLANE_METRICS_TOKEN", METRICS_TOKEN.into()),
    ])
    .await
    .expect("control plane behind a proxy");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let metrics = |url: &str, forwarded_for: Option<&str>, token: Option<&str>| {
        let mut request = client.get(format!("{url}/metrics"));
        if let Some(address) = forwarded_for {
            request = request.header("x-forwarded-for", address);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("metrics").status().as_u16() }
    };
    // No proxy declared: the peer is loopback, whatever the headers claim.
    assert_eq!(metrics(&direct.url, Some("203.0.113.9"), None).await, 200);
    // Declared: a forwarded client (or an unnamed one) is not local.
    assert_eq!(metrics(&proxied.url, Some("203.0.113.9"), None).await, 401);
    assert_eq!(metrics(&proxied.url, None, None).await, 401);
    // A client claiming to be loopback itself, through the proxy, is not either.
    assert_eq!(metrics(&proxied.url, Some("127.0.0.1"), None).await, 401);
    assert_eq!(
        metrics(&proxied.url, Some("203.0.113.9"), Some(METRICS_TOKEN)).await,
        200
    );

    let admin = mint_token(&["--role", "admin"]).expect("admin token");
    let cookie = |url: &str| {
        let request = client
            .post(format!("{url}/dashboard/login"))
            .header("x-forwarded-proto", "https")
            .form(&[("token", admin.expose())]);
        async move {
            let response = request.send().await.expect("login");
            assert_eq!(response.status().as_u16(), 303);
            response
                .headers()
                .get("set-cookie")
                .and_then(|value| value.to_str().ok())
                .expect("cookie")
                .to_string()
        }
    };
    let forged = cookie(&direct.url).await;
    assert!(!forged.contains("Secure"), "{forged}");
    let behind_tls = cookie(&proxied.url).await;
    assert!(behind_tls.contains("; Secure"), "{behind_tls}");
}
