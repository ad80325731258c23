//! The control-plane API through `router(state).oneshot(request)`, on SQLite and
//! on PostgreSQL (each case runs once per backend).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::control_plane::{self, AppState, ControlPlane};
use nimbus_core::{ControlPlaneConfig, Env, Secret, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

pub(crate) const JWT_SECRET: &str = "api-test-secret-0123456789";
pub(crate) const CACHE_SECRET: &str = "api-test-cache-secret-0123456789";
const WEBHOOK_SECRET: &str = "It's a Secret to Everybody";
const METRICS_TOKEN: &str = "metrics-token";

pub(crate) struct Api {
    app: Router,
    pub(crate) state: AppState,
    keys: JwtKeys,
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Api {
    pub(crate) async fn new(store: Arc<dyn Store>, overrides: &[(&str, &str)]) -> Api {
        let mut env = Env::from_map([
            ("NIMBUS_JWT_SECRET", JWT_SECRET),
            ("NIMBUS_CACHE_SHARED_SECRET", CACHE_SECRET),
            ("NIMBUS_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("NIMBUS_CONTROL_PLANE_METRICS_TOKEN", METRICS_TOKEN),
        ]);
        for (k, v) in overrides {
            env.set(*k, *v);
        }
        let config = ControlPlaneConfig::from_env(&env).expect("config");
        let state = ControlPlane::new(config, store).expect("state");
        Api {
            app: control_plane::router(state.clone()),
            state,
            keys: JwtKeys::new(&Secret::new(JWT_SECRET)),
        }
    }

    pub(crate) fn token(&self, role: Role, org_id: Option<i64>) -> String {
        self.keys
            .mint("test", role, org_id, Duration::from_secs(600))
            .expect("mint")
    }
    pub(crate) fn admin(&self) -> String {
        self.token(Role::Admin, None)
    }
    pub(crate) fn agent(&self) -> String {
        self.token(Role::Agent, None)
    }
    pub(crate) fn org(&self, id: i64) -> String {
        self.token(Role::Org, Some(id))
    }

    pub(crate) async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                builder = builder.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&body).expect("json"))
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).expect("request")).await
    }

    pub(crate) async fn webhook_raw(
        &self,
        event: &str,
        delivery: &str,
        body: Vec<u8>,
        signature: Option<String>,
        content_type: &str,
    ) -> Reply {
        let mut builder = Request::builder()
            .method("POST")
            .uri("/webhooks/github")
            .header("content-type", content_type)
            .header("x-github-event", event)
            .header("x-github-delivery", delivery);
        if let Some(signature) = signature {
            builder = builder.header("x-hub-signature-256", signature);
        }
        self.send(builder.body(Body::from(body)).expect("request"))
            .await
    }

    pub(crate) async fn webhook(&self, event: &str, delivery: &str, payload: &Value) -> Reply {
        let body = serde_json::to_vec(payload).expect("json");
        let signature = nimbus_core::webhook::sign(WEBHOOK_SECRET.as_bytes(), &body);
        self.webhook_raw(event, delivery, body, Some(signature), "application/json")
            .await
    }

    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let reply = self
            .call("GET", "/metrics", Some(METRICS_TOKEN), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let text = reply.body.as_str().expect("metrics text").to_string();
        text.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    pub(crate) async fn job_count(&self) -> usize {
        let reply = self
            .call("GET", "/api/jobs?limit=500", Some(&self.admin()), None)
            .await;
        reply.body["jobs"].as_array().map(Vec::len).unwrap_or(0)
    }

    pub(crate) async fn add_org(&self, id: i64, name: &str) {
        let reply = self
            .call(
                "POST",
                "/api/orgs",
                Some(&self.admin()),
                Some(json!({"id": id, "name": name})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

pub(crate) fn workflow_job(action: &str, github_job_id: i64, labels: &[&str]) -> Value {
    let now = rfc3339_now();
    json!({
        "action": action,
        "workflow_job": {
            "id": github_job_id, "run_id": 4242, "run_attempt": 1,
            "head_sha": "abc123", "head_branch": "main", "workflow_name": "CI", "name": "build",
            "labels": labels, "status": action,
            "conclusion": if action == "completed" { json!("success") } else { Value::Null },
            "created_at": now,
            "started_at": if action == "queued" { Value::Null } else { json!(now) },
            "completed_at": if action == "completed" { json!(now) } else { Value::Null },
            "runner_name": if action == "queued" { Value::Null } else { json!("nimbus-runner-7") },
            "steps": []
        },
        "repository": {"id": 77, "full_name": "acme/app", "owner": {"id": 42, "login": "acme"}},
        "organization": {"id": 42, "login": "acme"},
        "installation": {"id": 5},
        "sender": {"id": 1, "login": "octocat"}
    })
}

pub(crate) fn direct_job() -> Value {
    json!({
        "repo": "acme/app",
        "labels": ["nimbus", "param:python=3.12"],
        "steps": [{"name": "hello", "run": "echo hello"}, {"run": "uname -r"}],
        "timeout_minutes": 5
    })
}

pub async fn signed_webhook_creates_a_job_and_a_replay_is_refused(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    let payload = workflow_job(
        "queued",
        9001,
        &[
            "self-hosted",
            "nimbus",
            "param:python=3.12",
            "meta:team=infra",
        ],
    );
    let first = api.webhook("workflow_job", "delivery-1", &payload).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let job_id = first.body["job_id"].as_i64().expect("job id");
    let job = api
        .call(
            "GET",
            &format!("/api/jobs/{job_id}"),
            Some(&api.admin()),
            None,
        )
        .await;
    assert_eq!(job.body["status"], "queued");
    assert_eq!(job.body["org_id"], 42);
    assert_eq!(job.body["repo"], "acme/app");
    assert_eq!(
        job.body["metadata"],
        json!({"python": "3.12", "team": "infra"})
    );
    assert_eq!(job.body["github"]["job_id"], 9001);

    let before = api
        .metric("nimbus_control_plane_webhook_replays_blocked")
        .await;
    let replay = api.webhook("workflow_job", "delivery-1", &payload).await;
    assert_eq!(replay.status, StatusCode::CONFLICT, "{:?}", replay.body);
    assert_eq!(replay.body["code"], "replayed_delivery");
    assert_eq!(
        api.metric("nimbus_control_plane_webhook_replays_blocked")
            .await,
        before + 1.0
    );
    assert_eq!(api.job_count().await, 1, "no second job");

    // The same GitHub job under a new delivery id (a second hook) is not queued twice.
    let again = api.webhook("workflow_job", "delivery-2", &payload).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["created"], false);
    assert_eq!(api.job_count().await, 1);
}

pub async fn bad_webhooks_are_refused_and_write_nothing(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    let payload = workflow_job("queued", 1, &["nimbus"]);
    let body = serde_json::to_vec(&payload).expect("json");
    let good_signature = nimbus_core::webhook::sign(WEBHOOK_SECRET.as_bytes(), &body);

    let missing = api
        .webhook_raw(
            "workflow_job",
            "d-a",
            body.clone(),
            None,
            "application/json",
        )
        .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.body["code"], "unauthenticated");
    let wrong = nimbus_core::webhook::sign(b"wrong secret", &body);
    let bad = api
        .webhook_raw(
            "workflow_job",
            "d-b",
            body.clone(),
            Some(wrong),
            "application/json",
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let form = api
        .webhook_raw(
            "workflow_job",
            "d-c",
            body.clone(),
            Some(good_signature.clone()),
            "application/x-www-form-urlencoded",
        )
        .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let no_delivery = {
        let request = Request::builder()
            .method("POST")
            .uri("/webhooks/github")
            .header("content-type", "application/json")
            .header("x-github-event", "workflow_job")
            .header("x-hub-signature-256", good_signature.clone())
            .body(Body::from(body.clone()))
            .expect("request");
        api.send(request).await
    };
    assert_eq!(no_delivery.status, StatusCode::BAD_REQUEST);
    assert!(no_delivery.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("X-GitHub-Delivery"));

    let garbage = b"{\"action\": \"queued\", \"workflow_job\": ".to_vec();
    let signature = nimbus_core::webhook::sign(WEBHOOK_SECRET.as_bytes(), &garbage);
    let malformed = api
        .webhook_raw(
            "workflow_job",
            "d-d",
            garbage,
            Some(signature),
            "application/json",
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(malformed.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("invalid workflow_job payload"));

    let huge = vec![b' '; 1024 * 1024 + 1];
    let signature = nimbus_core::webhook::sign(WEBHOOK_SECRET.as_bytes(), &huge);
    let oversized = api
        .webhook_raw(
            "workflow_job",
            "d-e",
            huge,
            Some(signature),
            "application/json",
        )
        .await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);

    let mut stale = payload.clone();
    stale["workflow_job"]["created_at"] = json!("2020-01-01T00:00:00Z");
    let stale_reply = api.webhook("workflow_job", "d-f", &stale).await;
    assert_eq!(stale_reply.status, StatusCode::BAD_REQUEST);
    assert!(stale_reply.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("stale event"));

    let not_ours = api
        .webhook(
            "workflow_job",
            "d-g",
            &workflow_job("queued", 2, &["ubuntu-latest"]),
        )
        .await;
    assert_eq!(not_ours.status, StatusCode::ACCEPTED);
    let ping = api
        .webhook(
            "ping",
            "d-h",
            &json!({"zen": "Keep it logically awesome.", "hook_id": 1}),
        )
        .await;
    assert_eq!(ping.status, StatusCode::OK);
    let push = api
        .webhook("push", "d-i", &json!({"ref": "refs/heads/main"}))
        .await;
    assert_eq!(push.status, StatusCode::ACCEPTED);
    assert_eq!(api.job_count().await, 0, "nothing was queued");

    // A refused stale delivery was not recorded, a processed ping was.
    assert!(!api.state.store.delivery_seen("d-f").await.expect("seen"));
    assert!(api.state.store.delivery_seen("d-h").await.expect("seen"));
}

pub async fn webhooks_answer_503_without_a_secret(store: Arc<dyn Store>) {
    let mut env = Env::from_map([("NIMBUS_JWT_SECRET", JWT_SECRET)]);
    env.set("NIMBUS_RUNNER_LABELS", "nimbus");
    let state = ControlPlane::new(ControlPlaneConfig::from_env(&env).expect("config"), store)
        .expect("state");
    let app = control_plane::router(state);
    let response = app
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/webhooks/github")
                .body(Body::from("{}"))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

pub async fn redelivery_of_a_failed_delivery_is_accepted(store: Arc<dyn Store>) {
    let api = Api::new(
        store,
        &[
            ("NIMBUS_ORG_JOB_RATE_LIMIT", "1"),
            ("NIMBUS_ORG_RATE_INTERVAL", "1"),
        ],
    )
    .await;
    // Start at the beginning of a one-second window so both requests share it.
    let millis = time::OffsetDateTime::now_utc().millisecond();
    if millis > 600 {
        tokio::time::sleep(Duration::from_millis(u64::from(1000 - millis) + 20)).await;
    }
    let first = api
        .webhook(
            "workflow_job",
            "r-1",
            &workflow_job("queued", 11, &["nimbus"]),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second_payload = workflow_job("queued", 12, &["nimbus"]);
    let limited = api.webhook("workflow_job", "r-2", &second_payload).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        limited.body
    );
    assert!(limited.headers.get("retry-after").is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // GitHub's manual redelivery keeps the delivery id: it must be accepted now…
    let redelivered = api.webhook("workflow_job", "r-2", &second_payload).await;
    assert_eq!(
        redelivered.status,
        StatusCode::CREATED,
        "{:?}",
        redelivered.body
    );
    // …and refused once it succeeded.
    let again = api.webhook("workflow_job", "r-2", &second_payload).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(api.job_count().await, 2);
}

pub async fn github_progress_updates_the_job(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    let queued = api
        .webhook(
            "workflow_job",
            "p-1",
            &workflow_job("queued", 31, &["nimbus"]),
        )
        .await;
    let job_id = queued.body["job_id"].as_i64().expect("job id");
    let progress = api
        .webhook(
            "workflow_job",
            "p-2",
            &workflow_job("in_progress", 31, &["nimbus"]),
        )
        .await;
    assert_eq!(progress.status, StatusCode::OK, "{:?}", progress.body);
    let job = api
        .call(
            "GET",
            &format!("/api/jobs/{job_id}"),
            Some(&api.admin()),
            None,
        )
        .await;
    assert_eq!(job.body["github"]["status"], "in_progress");
    assert_eq!(job.body["github"]["runner_name"], "nimbus-runner-7");
    let unknown = api
        .webhook(
            "workflow_job",
            "p-3",
            &workflow_job("completed", 999, &["nimbus"]),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::ACCEPTED);
    let waiting = api
        .webhook(
            "workflow_job",
            "p-4",
            &workflow_job("waiting", 32, &["nimbus"]),
        )
        .await;
    assert_eq!(waiting.status, StatusCode::ACCEPTED);
    assert_eq!(
        api.job_count().await,
        1,
        "waiting jobs stay out of the queue"
    );
}

pub async fn direct_jobs_lease_heartbeat_and_complete(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    api.add_org(1, "acme").await;
    let submitted = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(direct_job()))
        .await;
    assert_eq!(
        submitted.status,
        StatusCode::CREATED,
        "{:?}",
        submitted.body
    );
    let job_id = submitted.body["id"].as_i64().expect("id");
    assert_eq!(submitted.body["source"], "direct");
    assert_eq!(submitted.body["spec"]["steps"][0]["run"], "echo hello");

    let lease = api
        .call(
            "POST",
            "/api/jobs/lease",
            Some(&api.agent()),
            Some(json!({"wait_seconds": 0})),
        )
        .await;
    assert_eq!(lease.status, StatusCode::OK, "{:?}", lease.body);
    assert_eq!(lease.body["job"]["id"], job_id);
    let token = lease.body["fencing_token"].as_i64().expect("token");
    assert!(lease.body["lease_id"].is_string());
    assert!(lease.body["expires_at"].is_string());
    // The lease carries a write cache token for the job's org, repository and ref.
    let cache_token = lease.body["cache_token"].as_str().expect("cache token");
    let scope = nimbus_core::cache_token::CacheTokenKeys::new(&Secret::new(CACHE_SECRET))
        .verify(cache_token)
        .expect("verifies with the shared secret");
    assert_eq!(scope.org_id, 1);
    assert_eq!(
        scope.repo,
        lease.body["job"]["repo"].as_str().expect("repo")
    );
    assert_eq!(scope.git_ref, "refs/heads/main");
    assert!(scope.can_write());
    let empty = api
        .call("POST", "/api/jobs/lease", Some(&api.agent()), None)
        .await;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);

    let heartbeat = api
        .call(
            "POST",
            &format!("/api/jobs/{job_id}/heartbeat"),
            Some(&api.agent()),
            Some(json!({"fencing_token": token})),
        )
        .await;
    assert_eq!(heartbeat.status, StatusCode::OK, "{:?}", heartbeat.body);
    let stale = api
        .call(
            "POST",
            &format!("/api/jobs/{job_id}/heartbeat"),
            Some(&api.agent()),
            Some(json!({"fencing_token": token - 1})),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let completion = json!({"fencing_token": token, "status": "failed", "exit_code": 3});
    let stale_complete = api
        .call(
            "POST",
            &format!("/api/jobs/{job_id}/complete"),
            Some(&api.agent()),
            Some(json!({"fencing_token": token + 1, "status": "succeeded"})),
        )
        .await;
    assert_eq!(stale_complete.status, StatusCode::CONFLICT);
    let done = api
        .call(
            "POST",
            &format!("/api/jobs/{job_id}/complete"),
            Some(&api.agent()),
            Some(completion.clone()),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    assert_eq!(done.body["status"], "failed");
    assert_eq!(done.body["exit_code"], 3);
    let repeat = api
        .call(
            "POST",
            &format!("/api/jobs/{job_id}/complete"),
            Some(&api.agent()),
            Some(completion),
        )
        .await;
    assert_eq!(repeat.status, StatusCode::OK);
    assert_eq!(repeat.body, done.body);

    let listed = api
        .call(
            "GET",
            "/api/jobs?status=failed&metadata_key=python&metadata_value=3.12",
            Some(&api.org(1)),
            None,
        )
        .await;
    assert_eq!(listed.body["jobs"].as_array().map(Vec::len), Some(1));
    let analytics = api
        .call(
            "GET",
            "/api/analytics/metadata?key=python",
            Some(&api.org(1)),
            None,
        )
        .await;
    assert_eq!(
        analytics.body["values"],
        json!([{"value": "3.12", "jobs": 1}])
    );
}

pub async fn long_poll_lease_wakes_when_a_job_arrives(store: Arc<dyn Store>) {
    let api = Arc::new(Api::new(store, &[]).await);
    api.add_org(1, "acme").await;
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let reply = api
                .call(
                    "POST",
                    "/api/jobs/lease",
                    Some(&api.agent()),
                    Some(json!({"wait_seconds": 20})),
                )
                .await;
            (reply, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let submitted = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(direct_job()))
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED);
    let (reply, waited) = waiter.await.expect("waiter");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["job"]["id"], submitted.body["id"]);
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    let too_long = api
        .call(
            "POST",
            "/api/jobs/lease",
            Some(&api.agent()),
            Some(json!({"wait_seconds": 61})),
        )
        .await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
}

pub async fn orgs_cannot_see_or_lease_each_others_jobs(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    api.add_org(1, "acme").await;
    api.add_org(2, "globex").await;
    let theirs = api
        .call("POST", "/api/jobs", Some(&api.org(2)), Some(direct_job()))
        .await;
    let their_id = theirs.body["id"].as_i64().expect("id");
    let ours = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(direct_job()))
        .await;
    let our_id = ours.body["id"].as_i64().expect("id");

    let peek = api
        .call(
            "GET",
            &format!("/api/jobs/{their_id}"),
            Some(&api.org(1)),
            None,
        )
        .await;
    assert_eq!(peek.status, StatusCode::NOT_FOUND);
    assert!(
        !peek.body.to_string().contains("acme/app\",\"repo_id"),
        "no data leaks"
    );
    let mine = api
        .call(
            "GET",
            &format!("/api/jobs/{our_id}"),
            Some(&api.org(1)),
            None,
        )
        .await;
    assert_eq!(mine.status, StatusCode::OK);
    let list = api.call("GET", "/api/jobs", Some(&api.org(1)), None).await;
    let ids: Vec<i64> = list.body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![our_id]);
    let other_list = api
        .call("GET", "/api/jobs?org_id=2", Some(&api.org(1)), None)
        .await;
    assert_eq!(other_list.status, StatusCode::NOT_FOUND);
    let submit_for_other = api
        .call(
            "POST",
            "/api/jobs",
            Some(&api.org(1)),
            Some(json!({"org_id": 2, "repo": "a/b", "steps": [{"run": "true"}]})),
        )
        .await;
    assert_eq!(submit_for_other.status, StatusCode::NOT_FOUND);
    let analytics = api
        .call(
            "GET",
            "/api/analytics/metadata?key=python&org_id=2",
            Some(&api.org(1)),
            None,
        )
        .await;
    assert_eq!(analytics.status, StatusCode::NOT_FOUND);

    let lease = api
        .call("POST", "/api/jobs/lease", Some(&api.org(1)), None)
        .await;
    assert_eq!(lease.status, StatusCode::FORBIDDEN);
    let heartbeat = api
        .call(
            "POST",
            &format!("/api/jobs/{our_id}/heartbeat"),
            Some(&api.org(1)),
            Some(json!({"fencing_token": 1})),
        )
        .await;
    assert_eq!(heartbeat.status, StatusCode::FORBIDDEN);
    let complete = api
        .call(
            "POST",
            &format!("/api/jobs/{their_id}/complete"),
            Some(&api.org(1)),
            Some(json!({"fencing_token": 1, "status": "succeeded"})),
        )
        .await;
    assert_eq!(complete.status, StatusCode::FORBIDDEN);

    let unknown = api.call("GET", "/api/jobs", Some(&api.org(3)), None).await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    assert!(unknown.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("unknown org 3"));
    let register = api
        .call(
            "POST",
            "/api/orgs",
            Some(&api.org(1)),
            Some(json!({"id": 9, "name": "x"})),
        )
        .await;
    assert_eq!(register.status, StatusCode::FORBIDDEN);
    let submit_as_agent = api
        .call("POST", "/api/jobs", Some(&api.agent()), Some(direct_job()))
        .await;
    assert_eq!(submit_as_agent.status, StatusCode::FORBIDDEN);
}

pub async fn tokens_are_checked(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    let none = api.call("GET", "/api/jobs", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.body["code"], "unauthenticated");
    let garbage = api.call("GET", "/api/jobs", Some("garbage"), None).await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    // alg: none, claiming admin.
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4Iiwicm9sZSI6ImFkbWluIiwiaWF0IjowLCJleHAiOjk5OTk5OTk5OTl9.";
    let alg_none = api.call("GET", "/api/jobs", Some(unsigned), None).await;
    assert_eq!(alg_none.status, StatusCode::UNAUTHORIZED);
    // Expired tokens are covered by the unit tests of `auth` (they need a forged `exp`).
    let other = JwtKeys::new(&Secret::new("some-other-secret-123"))
        .mint("x", Role::Admin, None, Duration::from_secs(60))
        .expect("mint");
    let foreign = api.call("GET", "/api/jobs", Some(&other), None).await;
    assert_eq!(foreign.status, StatusCode::UNAUTHORIZED);
}

pub async fn bad_requests_get_json_errors_and_write_nothing(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    api.add_org(1, "acme").await;
    let org = api.org(1);
    let cases: Vec<(&str, &str, Option<Value>, StatusCode)> = vec![
        (
            "POST",
            "/api/jobs",
            Some(json!({"repo": "acme/app"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/jobs",
            Some(json!({"repo": "acme/app", "steps": []})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/jobs",
            Some(json!({"repo": "not a repo", "steps": [{"run": "true"}]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/jobs",
            Some(json!({"repo": "acme/app", "steps": [{"run": "true"}], "timeout_minutes": 0})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/jobs",
            Some(json!({"repo": "acme/app", "steps": [{"run": "true"}], "surprise": 1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/jobs",
            Some(json!({"repo": "acme/app", "steps": [{"run": "  "}]})),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/api/jobs?limit=0", None, StatusCode::BAD_REQUEST),
        ("GET", "/api/jobs?limit=501", None, StatusCode::BAD_REQUEST),
        ("GET", "/api/jobs?limit=ten", None, StatusCode::BAD_REQUEST),
        (
            "GET",
            "/api/jobs?status=running",
            None,
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/api/jobs?cursor=abc", None, StatusCode::BAD_REQUEST),
        (
            "GET",
            "/api/jobs?metadata_value=x",
            None,
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/api/jobs?bogus=1", None, StatusCode::BAD_REQUEST),
        ("GET", "/api/jobs/abc", None, StatusCode::BAD_REQUEST),
        ("GET", "/api/jobs/-4", None, StatusCode::BAD_REQUEST),
        ("GET", "/api/jobs/123456", None, StatusCode::NOT_FOUND),
        ("GET", "/api/nothing-here", None, StatusCode::NOT_FOUND),
    ];
    for (method, uri, body, expected) in cases {
        let reply = api.call(method, uri, Some(&org), body.clone()).await;
        assert_eq!(
            reply.status, expected,
            "{method} {uri} {body:?}: {:?}",
            reply.body
        );
        assert!(
            reply.body["error"].is_string(),
            "{method} {uri}: JSON error body, got {:?}",
            reply.body
        );
        assert!(reply.body["code"].is_string());
    }
    let malformed = Request::builder()
        .method("POST")
        .uri("/api/jobs")
        .header("authorization", format!("Bearer {org}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"repo\": "))
        .expect("request");
    let reply = api.send(malformed).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("invalid JSON"));
    // Deeply nested JSON (an attacker's stack exhaustion) is refused, not recursed into.
    for nested in [
        format!(
            "{{\"repo\": {}1{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
        format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000)),
    ] {
        let deep = Request::builder()
            .method("POST")
            .uri("/api/jobs")
            .header("authorization", format!("Bearer {org}"))
            .header("content-type", "application/json")
            .body(Body::from(nested))
            .expect("request");
        let reply = api.send(deep).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    }
    let text = Request::builder()
        .method("POST")
        .uri("/api/jobs")
        .header("authorization", format!("Bearer {org}"))
        .header("content-type", "text/plain")
        .body(Body::from("hello"))
        .expect("request");
    assert_eq!(
        api.send(text).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let huge = Request::builder()
        .method("POST")
        .uri("/api/jobs")
        .header("authorization", format!("Bearer {org}"))
        .header("content-type", "application/json")
        .body(Body::from(format!(
            "{{\"repo\": \"{}\"}}",
            "a".repeat(2 * 1024 * 1024)
        )))
        .expect("request");
    assert_eq!(api.send(huge).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let bad_lease = api
        .call(
            "POST",
            "/api/jobs/lease",
            Some(&api.agent()),
            Some(json!({"wait_seconds": "soon"})),
        )
        .await;
    assert_eq!(bad_lease.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.job_count().await, 0, "nothing was written");
}

pub async fn org_rate_limit_answers_429_with_retry_after(store: Arc<dyn Store>) {
    let api = Api::new(
        store,
        &[
            ("NIMBUS_ORG_JOB_RATE_LIMIT", "2"),
            ("NIMBUS_ORG_RATE_INTERVAL", "3600"),
        ],
    )
    .await;
    api.add_org(1, "acme").await;
    api.add_org(2, "globex").await;
    for _ in 0..2 {
        let reply = api
            .call("POST", "/api/jobs", Some(&api.org(1)), Some(direct_job()))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let before = api.metric("nimbus_control_plane_org_rate_limits_hit").await;
    let limited = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(direct_job()))
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body["code"], "rate_limited");
    let retry_after: u64 = limited
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=3600).contains(&retry_after));
    assert_eq!(
        api.metric("nimbus_control_plane_org_rate_limits_hit").await,
        before + 1.0
    );
    let other_org = api
        .call("POST", "/api/jobs", Some(&api.org(2)), Some(direct_job()))
        .await;
    assert_eq!(other_org.status, StatusCode::CREATED, "limits are per org");
    assert_eq!(api.job_count().await, 3);
}

pub async fn a_dead_agents_job_is_released_after_the_ttl(store: Arc<dyn Store>) {
    let api = Api::new(store, &[("NIMBUS_JOB_LEASE_TTL", "1")]).await;
    api.add_org(1, "acme").await;
    let job_id = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(direct_job()))
        .await
        .body["id"]
        .as_i64()
        .expect("id");
    let dead = api
        .keys
        .mint("dead-agent", Role::Agent, None, Duration::from_secs(600))
        .expect("mint");
    let first = api.call("POST", "/api/jobs/lease", Some(&dead), None).await;
    let first_token = first.body["fencing_token"].as_i64().expect("token");
    // The agent dies here: no heartbeat, no completion.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    control_plane::reap_once(&api.state).await.expect("reap");
    let requeued = api
        .call(
            "GET",
            &format!("/api/jobs/{job_id}"),
            Some(&api.admin()),
            None,
        )
        .await;
    assert_eq!(requeued.body["status"], "queued");
    assert_eq!(requeued.body["attempt"], 2);
    let second = api
        .call("POST", "/api/jobs/lease", Some(&api.agent()), None)
        .await;
    assert_eq!(second.body["job"]["id"], job_id);
    let second_token = second.body["fencing_token"].as_i64().expect("token");
    assert!(second_token > first_token);
    let late = api
        .call(
            "POST",
            &format!("/api/jobs/{job_id}/complete"),
            Some(&dead),
            Some(json!({"fencing_token": first_token, "status": "succeeded", "exit_code": 0})),
        )
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{:?}", late.body);
    let ok = api
        .call(
            "POST",
            &format!("/api/jobs/{job_id}/complete"),
            Some(&api.agent()),
            Some(json!({"fencing_token": second_token, "status": "succeeded", "exit_code": 0})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        api.metric("nimbus_control_plane_leases_expired_total{outcome=\"requeued\"}")
            .await,
        1.0
    );
}

/// Workspace archives are read whole into memory, so only so many are received at
/// once: past them an upload answers 503 before its body is read; a slot comes
/// back when an upload ends (here: its client goes away).
pub async fn workspace_uploads_are_received_a_few_at_a_time(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    let admin = api.admin();
    let org = api
        .call(
            "POST",
            "/api/orgs",
            Some(&admin),
            Some(json!({"id": 1, "name": "acme"})),
        )
        .await;
    assert_eq!(org.status, StatusCode::OK);
    let token = api.org(1);
    let upload = |body: Body, digest: &str| {
        Request::builder()
            .method("PUT")
            .uri(format!("/api/workspaces/{digest}"))
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .expect("request")
    };
    let digest = "ab".repeat(32);
    // Bodies that never finish hold their slots.
    let mut stalled = Vec::new();
    for _ in 0..control_plane::MAX_WORKSPACE_UPLOADS {
        let app = control_plane::router(api.state.clone());
        let request = upload(
            Body::from_stream(futures::stream::pending::<
                Result<bytes::Bytes, std::io::Error>,
            >()),
            &digest,
        );
        stalled.push(tokio::spawn(async move { app.oneshot(request).await }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = api.send(upload(Body::from("tree"), &digest)).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        refused.body
    );
    for upload in &stalled {
        upload.abort();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let archive = b"a tar of the tree".to_vec();
    let digest = nimbus_core::domain::workspace_digest(&archive);
    let accepted = api.send(upload(Body::from(archive), &digest)).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{:?}", accepted.body);
    assert_eq!(accepted.body["workspace"], digest.as_str());
}

pub async fn health_and_metrics(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    assert_eq!(
        api.call("GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
    let ready = api.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    // oneshot requests carry no peer address: they count as non-loopback.
    let anonymous = api.call("GET", "/metrics", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let wrong = api.call("GET", "/metrics", Some("nope"), None).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let metrics = api.call("GET", "/metrics", Some(METRICS_TOKEN), None).await;
    let text = metrics.body.as_str().unwrap_or_default().to_string();
    for name in [
        "nimbus_control_plane_webhook_replays_blocked",
        "nimbus_control_plane_org_rate_limits_hit",
        "nimbus_control_plane_jobs{status=\"queued\"}",
        "nimbus_control_plane_http_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

fn policy_file(yaml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nimbus-policy-{}", uuid_like()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, yaml).expect("write policy");
    path
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    )
}

pub async fn the_policy_rejects_jobs_with_reasons(store: Arc<dyn Store>) {
    let path = policy_file("version: 1\nforbidden_labels: [privileged, \"gpu-*\"]\nlimits:\n  max_timeout_minutes: 60\n");
    let api = Api::new(
        store,
        &[("NIMBUS_JOB_POLICY_PATH", path.to_str().expect("utf-8"))],
    )
    .await;
    api.add_org(1, "acme").await;
    let mut body = direct_job();
    body["labels"] = json!(["nimbus", "gpu-a100"]);
    body["timeout_minutes"] = json!(90);
    let denied = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(body))
        .await;
    assert_eq!(denied.status, StatusCode::CREATED, "{:?}", denied.body);
    assert_eq!(denied.body["status"], "rejected");
    let rules: Vec<&str> = denied.body["policy_reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert_eq!(
        rules,
        vec!["forbidden_labels[1]", "limits.max_timeout_minutes"]
    );
    let id = denied.body["id"].as_i64().expect("id");
    let fetched = api
        .call("GET", &format!("/api/jobs/{id}"), Some(&api.org(1)), None)
        .await;
    assert_eq!(fetched.body["status"], "rejected");
    assert!(fetched.body["policy_reasons"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("gpu-a100"));
    assert!(fetched.body["finished_at"].is_string());
    // Never leased.
    let lease = api
        .call("POST", "/api/jobs/lease", Some(&api.agent()), None)
        .await;
    assert_eq!(lease.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.metric("nimbus_control_plane_policy_denials_total{rule=\"forbidden_labels[1]\"}")
            .await,
        1.0
    );
    // Webhook jobs pass the same policy.
    let hook = api
        .webhook(
            "workflow_job",
            "pol-1",
            &workflow_job("queued", 501, &["nimbus", "privileged"]),
        )
        .await;
    assert_eq!(hook.status, StatusCode::CREATED, "{:?}", hook.body);
    assert_eq!(hook.body["status"], "rejected");
    assert_eq!(
        hook.body["policy_reasons"][0]["rule"],
        "forbidden_labels[0]"
    );
    // An allowed job still runs.
    let allowed = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(direct_job()))
        .await;
    assert_eq!(allowed.body["status"], "queued");
    assert!(allowed.body["policy_reasons"]
        .as_array()
        .expect("reasons")
        .is_empty());
    let listed = api
        .call("GET", "/api/jobs?status=rejected", Some(&api.admin()), None)
        .await;
    assert_eq!(listed.body["jobs"].as_array().map(Vec::len), Some(2));
}

pub async fn a_dry_run_policy_records_but_admits(store: Arc<dyn Store>) {
    let path = policy_file("version: 1\ndry_run: true\nforbidden_labels: [\"gpu-*\"]\n");
    let api = Api::new(
        store,
        &[("NIMBUS_JOB_POLICY_PATH", path.to_str().expect("utf-8"))],
    )
    .await;
    api.add_org(1, "acme").await;
    let mut body = direct_job();
    body["labels"] = json!(["gpu-a100"]);
    let reply = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(body))
        .await;
    assert_eq!(reply.body["status"], "queued");
    assert_eq!(
        reply.body["policy_reasons"][0]["rule"],
        "forbidden_labels[0]"
    );
    assert_eq!(
        api.metric(
            "nimbus_control_plane_policy_dry_run_denials_total{rule=\"forbidden_labels[0]\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        api.metric("nimbus_control_plane_policy_denials_total{rule=\"forbidden_labels[0]\"}")
            .await,
        0.0
    );
    let lease = api
        .call("POST", "/api/jobs/lease", Some(&api.agent()), None)
        .await;
    assert_eq!(lease.status, StatusCode::OK);
}

pub async fn a_bad_policy_reload_keeps_the_previous_policy(store: Arc<dyn Store>) {
    let path = policy_file("version: 1\nforbidden_labels: [privileged]\n");
    let api = Api::new(
        store,
        &[("NIMBUS_JOB_POLICY_PATH", path.to_str().expect("utf-8"))],
    )
    .await;
    api.add_org(1, "acme").await;
    let privileged = || {
        let mut body = direct_job();
        body["labels"] = json!(["privileged"]);
        body
    };
    std::fs::write(&path, "version: 1\nforbidden_labels: [privileged\n").expect("write");
    let err = api.state.reload_policy().expect_err("bad policy");
    assert!(err.to_string().contains("policy.yaml:3:1"), "{err}");
    assert_eq!(
        api.metric("nimbus_control_plane_policy_reload_errors_total")
            .await,
        1.0
    );
    let still = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(privileged()))
        .await;
    assert_eq!(
        still.body["status"], "rejected",
        "the previous policy stays in force"
    );
    std::fs::write(&path, "version: 1\n").expect("write");
    api.state.reload_policy().expect("good policy");
    let now = api
        .call("POST", "/api/jobs", Some(&api.org(1)), Some(privileged()))
        .await;
    assert_eq!(now.body["status"], "queued");
    // A policy that does not load stops start-up, naming the position.
    std::fs::write(&path, "version: 1\nsurprise: true\n").expect("write");
    let mut env = Env::from_map([("NIMBUS_JWT_SECRET", JWT_SECRET)]);
    env.set("NIMBUS_JOB_POLICY_PATH", path.to_str().expect("utf-8"));
    let config = ControlPlaneConfig::from_env(&env).expect("config");
    let err = ControlPlane::new(config, api.state.store.clone())
        .err()
        .expect("start-up fails");
    assert!(
        err.to_string().contains("NIMBUS_JOB_POLICY_PATH") && err.to_string().contains(":2:1"),
        "{err}"
    );
}

macro_rules! api_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            api_suite!(@cases $make;
                signed_webhook_creates_a_job_and_a_replay_is_refused,
                bad_webhooks_are_refused_and_write_nothing,
                webhooks_answer_503_without_a_secret,
                redelivery_of_a_failed_delivery_is_accepted,
                github_progress_updates_the_job,
                direct_jobs_lease_heartbeat_and_complete,
                long_poll_lease_wakes_when_a_job_arrives,
                orgs_cannot_see_or_lease_each_others_jobs,
                tokens_are_checked,
                bad_requests_get_json_errors_and_write_nothing,
                org_rate_limit_answers_429_with_retry_after,
                a_dead_agents_job_is_released_after_the_ttl,
                health_and_metrics,
                workspace_uploads_are_received_a_few_at_a_time,
                the_policy_rejects_jobs_with_reasons,
                a_dry_run_policy_records_but_admits,
                a_bad_policy_reload_keeps_the_previous_policy,
                runner_configs_go_to_the_lease_holder_and_runners_are_removed,
                runner_configs_need_github_configured,
                a_missed_webhook_is_found_by_the_reconciler_exactly_once,
                the_reconciler_reads_every_page_of_every_list,
                the_reconciler_loses_no_job_to_github_5xx_and_secondary_rate_limits,
                a_runner_swap_rebinds_both_jobs,
                github_cache_tokens_follow_githubs_scoping
            );
        }
    };
    (@cases $make:expr; $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                #[allow(unused_imports)]
                use super::*;
                #[allow(unused_imports)]
                use crate::github::*;
                let store: Option<std::sync::Arc<dyn nimbus_core::Store>> = $make.await;
                if let Some(store) = store {
                    $case(store).await;
                }
            }
        )+
    };
}

api_suite!(sqlite, async {
    Some(nimbus_core::store::testsuite::sqlite_store().await)
});
api_suite!(postgres, nimbus_core::store::testsuite::postgres_store());
