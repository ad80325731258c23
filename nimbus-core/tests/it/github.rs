//! The GitHub integration against a local server implementing the GitHub endpoints
//! Nimbus uses, with their documented shapes and status codes: app JWT checks
//! (RS256, claims), installation tokens, generate-jitconfig (201), runner listing
//! and deletion (404 for a gone runner), rate limits (403 + X-RateLimit-*), a
//! GitHub Enterprise Server base path, and GitHub's pagination of every list
//! (`page`/`per_page`, `Link: <…>; rel="next"`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use nimbus_core::github::{
    AppCredentials, AppJwtClaims, GithubAuth, GithubClient, GithubConfig, RepoRef, RunnerScope,
};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};
use serde_json::{json, Value};

use crate::api::{workflow_job, Api};

const APP_ID: i64 = 31337;

/// One RSA key pair for the whole test binary (generation takes a moment).
fn key_pair() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
        let private_pem = private
            .to_pkcs1_pem(LineEnding::LF)
            .expect("pem")
            .to_string();
        let public_pem = private
            .to_public_key()
            .to_pkcs1_pem(LineEnding::LF)
            .expect("public pem");
        (private_pem, public_pem)
    })
}

/// What the fake GitHub saw and how it should behave.
#[derive(Default)]
struct FakeState {
    /// Installation tokens issued: token → installation id.
    tokens: HashMap<String, i64>,
    tokens_minted: u32,
    /// Lifetime of issued installation tokens, seconds.
    token_lifetime: i64,
    /// Registered runners: id → (name, labels).
    runners: HashMap<i64, (String, Vec<String>)>,
    next_runner: i64,
    deleted: Vec<i64>,
    /// Answer the next N API calls with a primary rate limit.
    rate_limit_next: u32,
    /// Answer every Nth API call 502 (0: never): GitHub having a bad moment.
    server_error_every: u32,
    /// Answer every Nth API call with a secondary rate limit: 403 with
    /// `Retry-After: 1` (0: never).
    secondary_limit_every: u32,
    /// API calls so far (the two above count them).
    calls: u32,
    requests: Vec<String>,
    /// Workflow jobs of acme/app (run 4242) as the REST API shows them.
    workflow_jobs: Vec<Value>,
    /// Workflow runs by id, as `GET /repos/{o}/{r}/actions/runs/{id}` shows them.
    runs: HashMap<i64, Value>,
    /// Open pull requests, as `GET /repos/{o}/{r}/pulls?head=OWNER:BRANCH` finds them.
    pulls: Vec<Value>,
    /// `http://HOST:PORT/BASE` of the fake, for absolute `Link` URLs (axum hands a
    /// nested router the path below the base).
    origin: String,
    /// Serve [`Wide`] lists instead of the one installation, repository and run.
    wide: bool,
}

/// The wide data set: every list 250 long, with the interesting item always past
/// the first two pages of 100. Installations 1..=250; installation 250 has
/// repositories `acme/app-1`..`acme/app-250`; `acme/app-250` has queued runs
/// 1..=250; run 250 has jobs 250_001..=250_250, every other run `r` the one job
/// `r * 1000`.
struct Wide;

impl Wide {
    const LEN: i64 = 250;

    fn installations() -> Vec<Value> {
        (1..=Self::LEN)
            .map(|id| json!({"id": id, "account": {"id": 42, "login": "acme", "type": "Organization"}}))
            .collect()
    }

    fn repositories(installation: i64) -> Vec<Value> {
        if installation != Self::LEN {
            return Vec::new();
        }
        (1..=Self::LEN)
            .map(|n| json!({"id": 1000 + n, "full_name": format!("acme/app-{n}"), "owner": {"id": 42, "login": "acme", "type": "Organization"}}))
            .collect()
    }

    fn runs(repo: &str, status: &str) -> Vec<Value> {
        if repo != format!("app-{}", Self::LEN) || status != "queued" {
            return Vec::new();
        }
        (1..=Self::LEN)
            .map(|id| json!({"id": id, "status": "queued"}))
            .collect()
    }

    fn jobs(run: i64) -> Vec<Value> {
        let ids: Vec<i64> = if run == Self::LEN {
            (1..=Self::LEN).map(|n| 250_000 + n).collect()
        } else {
            vec![run * 1000]
        };
        ids.into_iter()
            .map(|id| {
                let mut job = rest_job(id, "queued", &["nimbus"]);
                job["run_id"] = json!(run);
                job
            })
            .collect()
    }

    /// Every GitHub job id the reconciler must queue.
    fn job_ids() -> Vec<i64> {
        let mut ids: Vec<i64> = (1..Self::LEN).map(|run| run * 1000).collect();
        ids.extend((1..=Self::LEN).map(|n| 250_000 + n));
        ids
    }
}

/// One page of `items` the way GitHub pages a list: `per_page` (default 30, at
/// most 100) and `page` (from 1) from the query, and while more remain a `Link`
/// header with `next` and `last` (absolute URLs, other query parameters kept).
/// `wrap` builds the body from the total and the page's items.
fn paged(
    origin: &str,
    uri: &Uri,
    items: Vec<Value>,
    wrap: impl FnOnce(usize, Vec<Value>) -> Value,
) -> Response {
    let query: Vec<(String, String)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_string(), value.to_string())
        })
        .collect();
    let number = |key: &str, default: usize| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let per_page = number("per_page", 30).clamp(1, 100);
    let page = number("page", 1).max(1);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let link_to = |page: usize| {
        let mut pairs: Vec<String> = query
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.push(format!("page={page}"));
        format!("{origin}{}?{}", uri.path(), pairs.join("&"))
    };
    let mut response = Json(wrap(total, page_items)).into_response();
    if page < last {
        let link = format!(
            "<{}>; rel=\"next\", <{}>; rel=\"last\"",
            link_to(page + 1),
            link_to(last)
        );
        response
            .headers_mut()
            .insert("link", link.parse().expect("header"));
    }
    response
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<FakeState>>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

impl Fake {
    /// Checks an installation token and the rate limit; `Err` is the answer to send.
    fn admit(&self, headers: &HeaderMap, what: String) -> Result<(), Box<Response>> {
        let mut state = self.state.lock().expect("lock");
        state.requests.push(what);
        state.calls += 1;
        let every = |n: u32| n > 0 && state.calls % n == 0;
        if every(state.server_error_every) {
            return Err(Box::new(error(StatusCode::BAD_GATEWAY, "Server Error")));
        }
        if every(state.secondary_limit_every) {
            let mut response = error(
                StatusCode::FORBIDDEN,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            );
            response
                .headers_mut()
                .insert("retry-after", "1".parse().expect("header"));
            return Err(Box::new(response));
        }
        if state.rate_limit_next > 0 {
            state.rate_limit_next -= 1;
            let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 1;
            let mut response = error(
                StatusCode::FORBIDDEN,
                "API rate limit exceeded for installation ID 5.",
            );
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit", "5000".parse().expect("header"));
            headers.insert("x-ratelimit-remaining", "0".parse().expect("header"));
            headers.insert(
                "x-ratelimit-reset",
                reset.to_string().parse().expect("header"),
            );
            return Err(Box::new(response));
        }
        match bearer(headers) {
            Some(token) if state.tokens.contains_key(&token) || token == "ghp_personal" => Ok(()),
            _ => Err(Box::new(error(StatusCode::UNAUTHORIZED, "Bad credentials"))),
        }
    }
}

async fn access_token(
    State(fake): State<Fake>,
    Path(installation): Path<i64>,
    headers: HeaderMap,
) -> Response {
    let Some(jwt) = bearer(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    let key = DecodingKey::from_rsa_pem(key_pair().1.as_bytes()).expect("public key");
    let claims = match jsonwebtoken::decode::<AppJwtClaims>(&jwt, &key, &validation) {
        Ok(data) => data.claims,
        Err(_) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "A JSON web token could not be decoded",
            )
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // GitHub: iat may be in the past for clock drift; exp at most 10 minutes ahead.
    if claims.iss != APP_ID.to_string() || claims.exp - now > 600 || claims.iat > now {
        return error(
            StatusCode::UNAUTHORIZED,
            "'Expiration time' claim ('exp') is too far in the future",
        );
    }
    let mut state = fake.state.lock().expect("lock");
    state.tokens_minted += 1;
    let token = format!("ghs_token{}", state.tokens_minted);
    state.tokens.insert(token.clone(), installation);
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(state.token_lifetime);
    (
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_at": expires.format(&time::format_description::well_known::Rfc3339).expect("format"),
            "permissions": {"administration": "write"},
            "repository_selection": "all"
        })),
    )
        .into_response()
}

async fn generate_jitconfig(
    State(fake): State<Fake>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(response) = fake.admit(&headers, format!("jitconfig {owner}/{repo}")) {
        return *response;
    }
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let labels: Vec<String> = body["labels"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if name.is_empty()
        || labels.is_empty()
        || labels.len() > 100
        || body["runner_group_id"].as_i64().is_none()
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    let mut state = fake.state.lock().expect("lock");
    if state
        .runners
        .values()
        .any(|(existing, _)| *existing == name)
    {
        return error(
            StatusCode::CONFLICT,
            "Already exists - A runner with the name already exists.",
        );
    }
    state.next_runner += 1;
    let id = state.next_runner;
    state.runners.insert(id, (name.clone(), labels.clone()));
    // What the runner decodes: a JSON map of base64 files (.runner, .credentials, …).
    let runner_file = json!({"AgentId": id, "AgentName": name, "PoolId": 1, "ServerUrl": "https://pipelines.actions.githubusercontent.com/x"});
    let encoded = base64_encode(&json!({".runner": base64_encode(&runner_file.to_string()), ".credentials": base64_encode("{}")}).to_string());
    (
        StatusCode::CREATED,
        Json(json!({
            "runner": {"id": id, "name": name, "os": "unknown", "status": "offline", "busy": false,
                       "labels": labels.iter().map(|l| json!({"name": l, "type": "custom"})).collect::<Vec<_>>()},
            "encoded_jit_config": encoded
        })),
    )
        .into_response()
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn list_runners(
    State(fake): State<Fake>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = fake.admit(&headers, format!("list {owner}/{repo}")) {
        return *response;
    }
    let state = fake.state.lock().expect("lock");
    let runners: Vec<Value> = state
        .runners
        .iter()
        .filter(|(_, (name, _))| query.get("name").is_none_or(|wanted| wanted == name))
        .map(|(id, (name, _))| json!({"id": id, "name": name, "status": "offline", "busy": false}))
        .collect();
    paged(
        &state.origin,
        &uri,
        runners,
        |total, runners| json!({"total_count": total, "runners": runners}),
    )
}

async fn delete_runner(
    State(fake): State<Fake>,
    Path((owner, repo, id)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = fake.admit(&headers, format!("delete {owner}/{repo} {id}")) {
        return *response;
    }
    let mut state = fake.state.lock().expect("lock");
    if state.runners.remove(&id).is_some() {
        state.deleted.push(id);
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "Not Found")
    }
}

async fn installations(State(fake): State<Fake>, uri: Uri, headers: HeaderMap) -> Response {
    // App-level: needs the app JWT, not an installation token.
    if bearer(&headers).is_none_or(|t| t.starts_with("ghs_")) {
        return error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    }
    let mut state = fake.state.lock().expect("lock");
    state.requests.push(format!("installations {uri}"));
    let installations = if state.wide {
        Wide::installations()
    } else {
        vec![json!({"id": 5, "account": {"id": 42, "login": "acme", "type": "Organization"}})]
    };
    paged(&state.origin, &uri, installations, |_, page| {
        Value::Array(page)
    })
}

async fn installation_repositories(
    State(fake): State<Fake>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = fake.admit(&headers, format!("installation repositories {uri}")) {
        return *response;
    }
    let state = fake.state.lock().expect("lock");
    let repositories = if state.wide {
        let installation = bearer(&headers)
            .and_then(|token| state.tokens.get(&token).copied())
            .unwrap_or(0);
        Wide::repositories(installation)
    } else {
        vec![
            json!({"id": 77, "full_name": "acme/app", "owner": {"id": 42, "login": "acme", "type": "Organization"}}),
        ]
    };
    paged(
        &state.origin,
        &uri,
        repositories,
        |total, page| json!({"total_count": total, "repositories": page}),
    )
}

async fn workflow_runs(
    State(fake): State<Fake>,
    Path((_owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = fake.admit(&headers, format!("runs {uri}")) {
        return *response;
    }
    let state = fake.state.lock().expect("lock");
    let status = query.get("status").map(String::as_str).unwrap_or("");
    let runs = if state.wide {
        Wide::runs(&repo, status)
    } else if status == "queued" && state.workflow_jobs.iter().any(|j| j["status"] == "queued") {
        vec![json!({"id": 4242, "status": "queued"})]
    } else {
        Vec::new()
    };
    paged(
        &state.origin,
        &uri,
        runs,
        |total, page| json!({"total_count": total, "workflow_runs": page}),
    )
}

async fn run_jobs(
    State(fake): State<Fake>,
    Path((_owner, _repo, run)): Path<(String, String, i64)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = fake.admit(&headers, format!("run jobs {uri}")) {
        return *response;
    }
    let state = fake.state.lock().expect("lock");
    let jobs = if state.wide {
        Wide::jobs(run)
    } else {
        state.workflow_jobs.clone()
    };
    paged(
        &state.origin,
        &uri,
        jobs,
        |total, page| json!({"total_count": total, "jobs": page}),
    )
}

async fn one_job(
    State(fake): State<Fake>,
    Path((_owner, _repo, id)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = fake.admit(&headers, format!("job {id}")) {
        return *response;
    }
    let state = fake.state.lock().expect("lock");
    match state.workflow_jobs.iter().find(|j| j["id"] == id) {
        Some(job) => Json(job.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn one_run(
    State(fake): State<Fake>,
    Path((_owner, _repo, id)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = fake.admit(&headers, format!("run {id}")) {
        return *response;
    }
    let state = fake.state.lock().expect("lock");
    match state.runs.get(&id) {
        Some(run) => Json(run.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn pulls(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = fake.admit(&headers, "pulls".into()) {
        return *response;
    }
    let state = fake.state.lock().expect("lock");
    let head = query.get("head").cloned().unwrap_or_default();
    let found: Vec<Value> = state
        .pulls
        .iter()
        .filter(|pull| pull["head"]["label"].as_str() == Some(head.as_str()))
        .cloned()
        .collect();
    paged(&state.origin, &uri, found, |_, page| Value::Array(page))
}

/// A workflow job as `GET /repos/{o}/{r}/actions/runs/{id}/jobs` lists it.
fn rest_job(id: i64, status: &str, labels: &[&str]) -> Value {
    json!({
        "id": id, "run_id": 4242, "run_attempt": 1, "head_sha": "abc123", "head_branch": "main",
        "workflow_name": "CI", "name": format!("job {id}"), "labels": labels, "status": status,
        "conclusion": if status == "completed" { json!("cancelled") } else { Value::Null },
        "created_at": "2026-11-27T10:00:00Z", "started_at": "2026-11-27T10:00:00Z",
        "completed_at": Value::Null, "runner_name": Value::Null, "steps": []
    })
}

/// Starts the fake under `base_path` ("" for github.com, "/api/v3" for GHES).
async fn start_fake(base_path: &str, token_lifetime: i64) -> (String, Fake) {
    let fake = Fake {
        state: Arc::new(Mutex::new(FakeState {
            token_lifetime,
            ..FakeState::default()
        })),
    };
    let api = Router::new()
        .route("/app/installations/{id}/access_tokens", post(access_token))
        .route(
            "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            post(generate_jitconfig),
        )
        .route("/repos/{owner}/{repo}/actions/runners", get(list_runners))
        .route("/app/installations", get(installations))
        .route("/installation/repositories", get(installation_repositories))
        .route("/repos/{owner}/{repo}/actions/runs", get(workflow_runs))
        .route(
            "/repos/{owner}/{repo}/actions/runs/{run}/jobs",
            get(run_jobs),
        )
        .route("/repos/{owner}/{repo}/actions/jobs/{id}", get(one_job))
        .route("/repos/{owner}/{repo}/actions/runs/{id}", get(one_run))
        .route("/repos/{owner}/{repo}/pulls", get(pulls))
        .route(
            "/repos/{owner}/{repo}/actions/runners/{id}",
            delete(delete_runner),
        )
        .with_state(fake.clone());
    let app = if base_path.is_empty() {
        api
    } else {
        Router::new().nest(base_path, api)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    fake.state.lock().expect("lock").origin = format!("http://{address}{base_path}");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{address}{base_path}"), fake)
}

fn app_config(api_url: &str) -> GithubConfig {
    GithubConfig {
        api_url: api_url.to_string(),
        auth: GithubAuth::App(AppCredentials::new(APP_ID, &key_pair().0).expect("key")),
        runner_scope: RunnerScope::Repository,
        runner_group_id: 1,
        reconcile_interval: Duration::from_secs(60),
        max_rate_limit_wait: Duration::from_secs(10),
    }
}

fn counter() -> prometheus::IntCounter {
    prometheus::IntCounter::new("test_rate_limited", "test").expect("counter")
}

fn repo() -> RepoRef {
    RepoRef::parse("acme/app", Some(5)).expect("repo")
}

#[tokio::test]
async fn the_app_jwt_has_githubs_claims_and_verifies_with_the_public_key() {
    let credentials = AppCredentials::new(APP_ID, &key_pair().0).expect("key");
    let now = time::OffsetDateTime::now_utc();
    let jwt = credentials.jwt(now).expect("jwt");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let key = DecodingKey::from_rsa_pem(key_pair().1.as_bytes()).expect("public key");
    let claims = jsonwebtoken::decode::<AppJwtClaims>(&jwt, &key, &validation)
        .expect("RS256 signature verifies")
        .claims;
    assert_eq!(claims.iss, APP_ID.to_string());
    assert_eq!(
        claims.iat,
        now.unix_timestamp() - 60,
        "iat is back-dated 60 s"
    );
    assert!(
        claims.exp - now.unix_timestamp() <= 600,
        "exp is at most 10 minutes ahead"
    );
    assert!(claims.exp > now.unix_timestamp());
    // Any other key does not verify it.
    let other = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key");
    let other_public = other
        .to_public_key()
        .to_pkcs1_pem(LineEnding::LF)
        .expect("pem");
    assert!(jsonwebtoken::decode::<AppJwtClaims>(
        &jwt,
        &DecodingKey::from_rsa_pem(other_public.as_bytes()).expect("key"),
        &validation
    )
    .is_err());
    assert!(AppCredentials::new(APP_ID, "not a key").is_err());
}

#[tokio::test]
async fn jit_configs_are_registered_and_runners_removed_idempotently() {
    let (url, fake) = start_fake("", 3600).await;
    let client = GithubClient::new(app_config(&url), counter()).expect("client");
    let labels = vec!["nimbus".to_string(), "nimbus-job-1".to_string()];
    let config = client
        .generate_jit_config(&repo(), "nimbus-1-1", &labels)
        .await
        .expect("jitconfig");
    assert_eq!(config.runner_name, "nimbus-1-1");
    assert!(!config.encoded_jit_config.is_empty());
    // The same name again (an earlier attempt's runner): removed and registered anew.
    let again = client
        .generate_jit_config(&repo(), "nimbus-1-1", &labels)
        .await
        .expect("again");
    assert_ne!(again.runner_id, config.runner_id);
    assert!(client
        .delete_runner_named(&repo(), "nimbus-1-1")
        .await
        .expect("delete"));
    // Gone already: a 404, which is fine.
    assert!(!client
        .delete_runner(&repo(), again.runner_id)
        .await
        .expect("404 is fine"));
    assert!(!client
        .delete_runner_named(&repo(), "nimbus-1-1")
        .await
        .expect("nothing to delete"));
    let state = fake.state.lock().expect("lock");
    assert_eq!(
        state.tokens_minted, 1,
        "one installation token served every call"
    );
    assert!(state.runners.is_empty());
}

#[tokio::test]
async fn installation_tokens_are_renewed_before_they_expire() {
    // Tokens that live 4 minutes are inside the 5-minute renewal margin: every call mints.
    let (url, fake) = start_fake("", 240).await;
    let client = GithubClient::new(app_config(&url), counter()).expect("client");
    for _ in 0..3 {
        client.delete_runner(&repo(), 999).await.expect("call");
    }
    assert_eq!(fake.state.lock().expect("lock").tokens_minted, 3);
    // Tokens that live an hour are reused.
    let (url, fake) = start_fake("", 3600).await;
    let client = GithubClient::new(app_config(&url), counter()).expect("client");
    for _ in 0..3 {
        client.delete_runner(&repo(), 999).await.expect("call");
    }
    assert_eq!(fake.state.lock().expect("lock").tokens_minted, 1);
}

#[tokio::test]
async fn rate_limits_back_off_until_the_reset_and_are_counted() {
    let (url, fake) = start_fake("", 3600).await;
    let rate_limited = counter();
    let client = GithubClient::new(app_config(&url), rate_limited.clone()).expect("client");
    fake.state.lock().expect("lock").rate_limit_next = 1;
    let started = std::time::Instant::now();
    client
        .generate_jit_config(&repo(), "nimbus-2-1", &["nimbus".to_string()])
        .await
        .expect("succeeds after the reset");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited for the reset"
    );
    assert_eq!(rate_limited.get(), 1);
    // A limit that does not lift within the allowed wait is an error, not a hang.
    fake.state.lock().expect("lock").rate_limit_next = 100;
    let mut config = app_config(&url);
    config.max_rate_limit_wait = Duration::ZERO;
    let impatient = GithubClient::new(config, counter()).expect("client");
    let error = impatient
        .generate_jit_config(&repo(), "nimbus-3-1", &["nimbus".to_string()])
        .await
        .expect_err("rate limited");
    assert!(error.to_string().contains("rate limited"), "{error}");
}

#[tokio::test]
async fn a_bad_app_key_gets_401_and_a_clear_error() {
    let (url, _fake) = start_fake("", 3600).await;
    let other = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key");
    let other_pem = other.to_pkcs1_pem(LineEnding::LF).expect("pem").to_string();
    let mut config = app_config(&url);
    config.auth = GithubAuth::App(AppCredentials::new(APP_ID, &other_pem).expect("key"));
    let client = GithubClient::new(config, counter()).expect("client");
    let error = client
        .generate_jit_config(&repo(), "nimbus-4-1", &["nimbus".to_string()])
        .await
        .expect_err("401");
    assert!(error.to_string().contains("401"), "{error}");
}

#[tokio::test]
async fn an_enterprise_server_base_url_and_a_personal_token_work() {
    let (url, fake) = start_fake("/api/v3", 3600).await;
    assert!(url.ends_with("/api/v3"));
    let mut config = app_config(&url);
    config.auth = GithubAuth::Token(nimbus_core::Secret::new("ghp_personal"));
    let client = GithubClient::new(config, counter()).expect("client");
    let jit = client
        .generate_jit_config(
            &RepoRef::parse("acme/app", None).expect("repo"),
            "nimbus-5-1",
            &["nimbus".to_string()],
        )
        .await
        .expect("jitconfig through /api/v3");
    assert!(jit.runner_id > 0);
    assert_eq!(
        fake.state.lock().expect("lock").tokens_minted,
        0,
        "no app tokens in token mode"
    );
}

/// The control plane hands the runner config to the agent holding the lease only,
/// labels the runner for this one job, and removes it from GitHub on completion.
pub async fn runner_configs_go_to_the_lease_holder_and_runners_are_removed(
    store: Arc<dyn nimbus_core::Store>,
) {
    let (url, fake) = start_fake("", 3600).await;
    let api = Api::new(
        store,
        &[
            ("NIMBUS_GITHUB_APP_ID", &APP_ID.to_string()),
            ("NIMBUS_GITHUB_APP_PRIVATE_KEY", &key_pair().0),
            ("NIMBUS_GITHUB_API_URL", &url),
        ],
    )
    .await;
    let queued = api
        .webhook(
            "workflow_job",
            &uuid::Uuid::new_v4().to_string(),
            &workflow_job("queued", 7001, &["nimbus", "gpu"]),
        )
        .await;
    assert_eq!(queued.status, StatusCode::CREATED, "{:?}", queued.body);
    let job_id = queued.body["job_id"].as_i64().expect("job id");
    let lease = api
        .call(
            "POST",
            "/api/jobs/lease",
            Some(&api.agent()),
            Some(json!({"wait_seconds": 0})),
        )
        .await;
    let token = lease.body["fencing_token"].as_i64().expect("token");

    let uri = |t: i64| format!("/api/jobs/{job_id}/runner-config?fencing_token={t}");
    let config = api.call("GET", &uri(token), Some(&api.agent()), None).await;
    assert_eq!(config.status, StatusCode::OK, "{:?}", config.body);
    assert_eq!(
        config.body["runner_name"],
        format!("nimbus-{job_id}-{token}")
    );
    assert!(config.body["encoded_jit_config"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    // Asked again within the lease: the same runner, not a second registration.
    let again = api.call("GET", &uri(token), Some(&api.agent()), None).await;
    assert_eq!(again.body["runner_id"], config.body["runner_id"]);
    {
        let state = fake.state.lock().expect("lock");
        assert_eq!(state.runners.len(), 1);
        let (_, labels) = state.runners.values().next().expect("runner");
        assert!(
            labels.contains(&format!("nimbus-job-{job_id}")),
            "{labels:?}"
        );
        assert!(labels.contains(&"gpu".to_string()), "{labels:?}");
    }
    // A stale token, an org token, a direct job: no config.
    assert_eq!(
        api.call("GET", &uri(token - 1), Some(&api.agent()), None)
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.call("GET", &uri(token), Some(&api.org(42)), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call(
            "GET",
            &format!("/api/jobs/{job_id}/runner-config"),
            Some(&api.agent()),
            None
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );

    // Completion removes the runner from GitHub (in the background).
    let done = api
        .call(
            "POST",
            &format!("/api/jobs/{job_id}/complete"),
            Some(&api.agent()),
            Some(json!({"fencing_token": token, "status": "succeeded", "exit_code": 0})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK);
    for _ in 0..100 {
        if fake.state.lock().expect("lock").runners.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fake.state.lock().expect("lock").runners.is_empty(),
        "runner removed"
    );
    // After completion the config is no longer handed out.
    assert_eq!(
        api.call("GET", &uri(token), Some(&api.agent()), None)
            .await
            .status,
        StatusCode::CONFLICT
    );
}

/// Without GitHub configured, a GitHub job's runner config is a clear 503.
pub async fn runner_configs_need_github_configured(store: Arc<dyn nimbus_core::Store>) {
    let api = Api::new(store, &[]).await;
    let queued = api
        .webhook(
            "workflow_job",
            &uuid::Uuid::new_v4().to_string(),
            &workflow_job("queued", 7002, &["nimbus"]),
        )
        .await;
    let job_id = queued.body["job_id"].as_i64().expect("job id");
    let lease = api
        .call(
            "POST",
            "/api/jobs/lease",
            Some(&api.agent()),
            Some(json!({"wait_seconds": 0})),
        )
        .await;
    let token = lease.body["fencing_token"].as_i64().expect("token");
    let config = api
        .call(
            "GET",
            &format!("/api/jobs/{job_id}/runner-config?fencing_token={token}"),
            Some(&api.agent()),
            None,
        )
        .await;
    assert_eq!(
        config.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        config.body
    );
    assert!(config.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("NIMBUS_GITHUB_APP_ID"));
}

/// A queued job no webhook announced is queued by the reconciler exactly once;
/// jobs for other runners are left alone; a job GitHub finished while it waited
/// here is closed.
pub async fn a_missed_webhook_is_found_by_the_reconciler_exactly_once(
    store: Arc<dyn nimbus_core::Store>,
) {
    let (url, fake) = start_fake("", 3600).await;
    let api = Api::new(
        store,
        &[
            ("NIMBUS_GITHUB_APP_ID", &APP_ID.to_string()),
            ("NIMBUS_GITHUB_APP_PRIVATE_KEY", &key_pair().0),
            ("NIMBUS_GITHUB_API_URL", &url),
        ],
    )
    .await;
    // 8003 came by webhook; 8001 did not; 8002 is for GitHub's hosted runners.
    let delivered = api
        .webhook(
            "workflow_job",
            &uuid::Uuid::new_v4().to_string(),
            &workflow_job("queued", 8003, &["nimbus"]),
        )
        .await;
    assert_eq!(delivered.status, StatusCode::CREATED);
    fake.state.lock().expect("lock").workflow_jobs = vec![
        rest_job(8001, "queued", &["nimbus"]),
        rest_job(8002, "queued", &["ubuntu-latest"]),
        rest_job(8003, "queued", &["nimbus"]),
    ];
    let report = nimbus_core::control_plane::reconcile::reconcile_once(&api.state)
        .await
        .expect("reconcile");
    assert_eq!(
        (report.repositories, report.enqueued, report.closed),
        (1, 1, 0),
        "{report:?}"
    );
    let found = api
        .state
        .store
        .get_github_job(8001)
        .await
        .expect("get")
        .expect("queued now");
    assert_eq!(found.status, nimbus_core::JobStatus::Queued);
    assert_eq!(found.org_id, 42);
    assert_eq!(
        found.github.as_ref().and_then(|g| g.installation_id),
        Some(5)
    );
    assert!(api
        .state
        .store
        .get_github_job(8002)
        .await
        .expect("get")
        .is_none());
    // Again: nothing new.
    let again = nimbus_core::control_plane::reconcile::reconcile_once(&api.state)
        .await
        .expect("reconcile");
    assert_eq!(again.enqueued, 0);
    assert_eq!(
        api.metric("nimbus_control_plane_jobs_reconciled_total")
            .await,
        1.0
    );

    // GitHub cancels 8003 and the completed delivery is lost: closed here too.
    fake.state.lock().expect("lock").workflow_jobs = vec![rest_job(8003, "completed", &["nimbus"])];
    let report = nimbus_core::control_plane::reconcile::reconcile_once(&api.state)
        .await
        .expect("reconcile");
    assert!(report.closed >= 1, "{report:?}");
    let closed = api
        .state
        .store
        .get_github_job(8003)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(closed.status, nimbus_core::JobStatus::Cancelled);
}

/// Every list the reconciler reads is 250 long: installations, an installation's
/// repositories, a repository's runs and a run's jobs. The jobs it queues are the
/// ones past the first 100 of each list too: it followed GitHub's `Link` headers.
pub async fn the_reconciler_reads_every_page_of_every_list(store: Arc<dyn nimbus_core::Store>) {
    reconcile_the_wide_data_set(store, 0, 0).await;
}

/// Every webhook lost (the reconciler is the only way in) while GitHub answers
/// every 301st call 502 and every 499th with a secondary rate limit: the client backs
/// off and retries, and every job is still queued, once.
pub async fn the_reconciler_loses_no_job_to_github_5xx_and_secondary_rate_limits(
    store: Arc<dyn nimbus_core::Store>,
) {
    let fake = reconcile_the_wide_data_set(store, 301, 499).await;
    let state = fake.state.lock().expect("lock");
    assert!(
        state.calls > 2 * 499,
        "both faults were hit ({} calls)",
        state.calls
    );
}

async fn reconcile_the_wide_data_set(
    store: Arc<dyn nimbus_core::Store>,
    server_error_every: u32,
    secondary_limit_every: u32,
) -> Fake {
    let (url, fake) = start_fake("", 3600).await;
    {
        let mut state = fake.state.lock().expect("lock");
        state.wide = true;
        state.server_error_every = server_error_every;
        state.secondary_limit_every = secondary_limit_every;
    }
    let api = Api::new(
        store,
        &[
            ("NIMBUS_GITHUB_APP_ID", &APP_ID.to_string()),
            ("NIMBUS_GITHUB_APP_PRIVATE_KEY", &key_pair().0),
            ("NIMBUS_GITHUB_API_URL", &url),
            ("NIMBUS_ORG_JOB_RATE_LIMIT", "10000"),
        ],
    )
    .await;
    let report = nimbus_core::control_plane::reconcile::reconcile_once(&api.state)
        .await
        .expect("reconcile");
    let expected = Wide::job_ids();
    assert_eq!(
        (report.repositories, report.enqueued),
        (Wide::LEN as u64, expected.len() as u64),
        "{report:?}"
    );
    for github_job_id in expected {
        let job = api
            .state
            .store
            .get_github_job(github_job_id)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("GitHub job {github_job_id} was not queued"));
        assert_eq!(job.repo, "acme/app-250");
        assert_eq!(
            job.github.as_ref().and_then(|g| g.installation_id),
            Some(Wide::LEN)
        );
    }
    // Each list was read to its third page, through the link GitHub sent.
    let requests = fake.state.lock().expect("lock").requests.clone();
    for list in [
        "installations /app/installations?",
        "installation repositories /installation/repositories?",
        "runs /repos/acme/app-250/actions/runs?",
        "run jobs /repos/acme/app-250/actions/runs/250/jobs?",
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with(list) && r.contains("page=3")),
            "{list} page 3 not asked for"
        );
    }
    if secondary_limit_every > 0 {
        assert!(
            api.metric("nimbus_control_plane_github_api_rate_limited_total")
                .await
                >= 1.0,
            "secondary rate limits are counted"
        );
    }
    // Again: every job is known, nothing is queued twice.
    let again = nimbus_core::control_plane::reconcile::reconcile_once(&api.state)
        .await
        .expect("reconcile");
    assert_eq!(again.enqueued, 0, "{again:?}");
    fake
}

/// GitHub gives the runner made for job A the queued job B: A's record now stands
/// for B, B's for A's original GitHub job; each GitHub job has exactly one Nimbus
/// job and none waits forever. A swap onto a job that was never ours leaves the
/// original for the reconciler, which queues it.
pub async fn a_runner_swap_rebinds_both_jobs(store: Arc<dyn nimbus_core::Store>) {
    let (url, fake) = start_fake("", 3600).await;
    let api = Api::new(
        store,
        &[
            ("NIMBUS_GITHUB_APP_ID", &APP_ID.to_string()),
            ("NIMBUS_GITHUB_APP_PRIVATE_KEY", &key_pair().0),
            ("NIMBUS_GITHUB_API_URL", &url),
        ],
    )
    .await;
    let delivery = || uuid::Uuid::new_v4().to_string();
    let a = api
        .webhook(
            "workflow_job",
            &delivery(),
            &workflow_job("queued", 9101, &["nimbus"]),
        )
        .await;
    let b = api
        .webhook(
            "workflow_job",
            &delivery(),
            &workflow_job("queued", 9102, &["nimbus"]),
        )
        .await;
    let (a, b) = (
        a.body["job_id"].as_i64().expect("a"),
        b.body["job_id"].as_i64().expect("b"),
    );
    let lease = api
        .call(
            "POST",
            "/api/jobs/lease",
            Some(&api.agent()),
            Some(json!({"wait_seconds": 0})),
        )
        .await;
    assert_eq!(lease.body["job"]["id"], a, "the oldest job is leased first");
    let token = lease.body["fencing_token"].as_i64().expect("token");

    // GitHub starts 9102 on the runner made for 9101.
    let mut started = workflow_job("in_progress", 9102, &["nimbus"]);
    started["workflow_job"]["runner_name"] = json!(format!("nimbus-{a}-{token}"));
    let answer = api.webhook("workflow_job", &delivery(), &started).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let store = &api.state.store;
    let running = store
        .get_github_job(9102)
        .await
        .expect("get")
        .expect("bound");
    assert_eq!(
        running.id, a,
        "the leased job now stands for what its runner runs"
    );
    assert_eq!(
        running.github.as_ref().map(|g| g.status.as_str()),
        Some("in_progress")
    );
    let waiting = store
        .get_github_job(9101)
        .await
        .expect("get")
        .expect("bound");
    assert_eq!(waiting.id, b, "the other job takes over the original");
    assert_eq!(waiting.status, nimbus_core::JobStatus::Queued);
    assert_eq!(
        api.metric("nimbus_control_plane_runner_swaps_total").await,
        1.0
    );
    assert_eq!(api.job_count().await, 2, "nothing counted twice");

    // B is leased; its runner gets a job that was never ours (9103).
    let lease = api
        .call(
            "POST",
            "/api/jobs/lease",
            Some(&api.agent()),
            Some(json!({"wait_seconds": 0})),
        )
        .await;
    assert_eq!(lease.body["job"]["id"], b);
    let token = lease.body["fencing_token"].as_i64().expect("token");
    let mut stranger = workflow_job("in_progress", 9103, &["nimbus"]);
    stranger["workflow_job"]["runner_name"] = json!(format!("nimbus-{b}-{token}"));
    api.webhook("workflow_job", &delivery(), &stranger).await;
    assert_eq!(
        store.get_github_job(9103).await.expect("get").map(|j| j.id),
        Some(b)
    );
    assert!(store.get_github_job(9101).await.expect("get").is_none());
    // 9101 is still queued on GitHub: the reconciler gives it a job again.
    fake.state.lock().expect("lock").workflow_jobs = vec![rest_job(9101, "queued", &["nimbus"])];
    let report = nimbus_core::control_plane::reconcile::reconcile_once(&api.state)
        .await
        .expect("reconcile");
    assert_eq!(report.enqueued, 1);
    let requeued = store
        .get_github_job(9101)
        .await
        .expect("get")
        .expect("queued again");
    assert_eq!(requeued.status, nimbus_core::JobStatus::Queued);
}

/// A workflow run as GitHub's API shows it: `event`, head repository and branch,
/// the repository's default branch, its pull requests (empty for a fork's).
fn run(id: i64, event: &str, head_repo: &str, head_branch: &str, pulls: Value) -> Value {
    json!({
        "id": id, "event": event, "head_branch": head_branch,
        "repository": {"full_name": "acme/app", "default_branch": "main"},
        "head_repository": {"full_name": head_repo,
                            "owner": {"login": head_repo.split('/').next().unwrap_or("")}},
        "pull_requests": pulls,
    })
}

/// Hole 6: the cache ref came from the webhook's `head_branch` and every job got a
/// write token, so a fork's pull request from a branch named `main` wrote the
/// default branch's cache. Now the scope is GitHub's: from the run's event, head
/// repository and pull request.
pub async fn github_cache_tokens_follow_githubs_scoping(store: Arc<dyn nimbus_core::Store>) {
    use nimbus_core::cache_token::{CachePermission, CacheTokenKeys};
    let (url, fake) = start_fake("", 3600).await;
    {
        let mut state = fake.state.lock().expect("lock");
        state
            .runs
            .insert(5001, run(5001, "push", "acme/app", "feature", json!([])));
        state.runs.insert(
            5002,
            run(
                5002,
                "pull_request",
                "acme/app",
                "topic",
                json!([{"number": 8, "base": {"ref": "release"}, "head": {"ref": "topic"}}]),
            ),
        );
        state.runs.insert(
            5003,
            run(5003, "pull_request", "mallory/app", "main", json!([])),
        );
        state.runs.insert(
            5004,
            run(5004, "pull_request_target", "eve/app", "main", json!([])),
        );
        state
            .pulls
            .push(json!({"number": 9, "base": {"ref": "main"},
                                "head": {"label": "mallory:main", "ref": "main"}}));
    }
    let api = Api::new(
        store,
        &[
            ("NIMBUS_GITHUB_APP_ID", &APP_ID.to_string()),
            ("NIMBUS_GITHUB_APP_PRIVATE_KEY", &key_pair().0),
            ("NIMBUS_GITHUB_API_URL", &url),
        ],
    )
    .await;
    let keys = CacheTokenKeys::new(&nimbus_core::Secret::new(crate::api::CACHE_SECRET));
    // run id → (ref written, base ref, permission)
    let cases = [
        (5001, "refs/heads/feature", None, CachePermission::Write),
        (
            5002,
            "refs/pull/8/merge",
            Some("refs/heads/release"),
            CachePermission::Write,
        ),
        // The fork's pull request (its branch is called main): found through the
        // pulls API; writes its merge ref only.
        (
            5003,
            "refs/pull/9/merge",
            Some("refs/heads/main"),
            CachePermission::Write,
        ),
        // A run GitHub shows no pull request for: restore only.
        (5004, "refs/heads/main", None, CachePermission::Read),
        // A run GitHub does not know: restore only.
        (5999, "refs/heads/main", None, CachePermission::Read),
    ];
    for (index, (run_id, git_ref, base_ref, permission)) in cases.into_iter().enumerate() {
        let mut payload = workflow_job("queued", 9100 + index as i64, &["nimbus"]);
        payload["workflow_job"]["run_id"] = json!(run_id);
        payload["workflow_job"]["head_branch"] = json!("main");
        let queued = api
            .webhook("workflow_job", &uuid::Uuid::new_v4().to_string(), &payload)
            .await;
        assert_eq!(queued.status, StatusCode::CREATED, "{:?}", queued.body);
        let lease = api
            .call(
                "POST",
                "/api/jobs/lease",
                Some(&api.agent()),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            lease.body["job"]["github"]["run_id"], run_id,
            "{:?}",
            lease.body
        );
        let token = lease.body["cache_token"].as_str().expect("cache token");
        let scope = keys.verify(token).expect("verifies");
        assert_eq!(
            (
                scope.git_ref.as_str(),
                scope.base_ref.as_deref(),
                scope.permission
            ),
            (git_ref, base_ref, permission),
            "run {run_id}"
        );
        assert_eq!(scope.default_ref, "refs/heads/main");
        let done = api
            .call(
                "POST",
                &format!("/api/jobs/{}/complete", lease.body["job"]["id"]),
                Some(&api.agent()),
                Some(json!({"fencing_token": lease.body["fencing_token"], "status": "succeeded", "exit_code": 0})),
            )
            .await;
        assert_eq!(done.status, StatusCode::OK);
    }
}
