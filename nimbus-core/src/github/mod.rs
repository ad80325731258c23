//! GitHub's REST API as the control plane uses it: GitHub App auth (an RS256 app
//! JWT exchanged for installation tokens, cached until shortly before expiry) or a
//! personal token, just-in-time runner configs and runner removal, with rate-limit
//! back-off. The base URL is configurable, so GitHub Enterprise Server works by
//! changing `NIMBUS_GITHUB_API_URL`.

mod app;

pub use app::{AppCredentials, AppJwtClaims};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntCounter;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::config::{Env, Secret};
use crate::error::{Error, Result};

/// How Nimbus authenticates to GitHub.
#[derive(Debug, Clone)]
pub enum GithubAuth {
    /// A GitHub App: installation tokens per org, minted from the app's JWT.
    App(AppCredentials),
    /// A personal access token (small setups; one identity for every repository).
    Token(Secret),
}

/// Where just-in-time runners are registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerScope {
    /// `/repos/{owner}/{repo}/actions/runners/…`: works for user and org repositories.
    Repository,
    /// `/orgs/{org}/actions/runners/…`: needs the org's self-hosted runner permission.
    Organization,
}

#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    pub api_url: String,
    pub auth: GithubAuth,
    pub runner_scope: RunnerScope,
    pub runner_group_id: i64,
    /// How often the reconciler compares GitHub's queued jobs with ours.
    pub reconcile_interval: Duration,
    /// Longest wait honoured for a rate-limit reset before giving up on a call.
    pub max_rate_limit_wait: Duration,
}

impl GithubConfig {
    /// `None` when neither an app nor a token is configured (GitHub calls disabled).
    pub fn from_env(env: &Env) -> Result<Option<Self>> {
        let config_error = |variable: &str, message: String| Error::Config {
            variable: variable.into(),
            message,
        };
        let app_id = env.get("NIMBUS_GITHUB_APP_ID");
        let auth = match (app_id, env.secret("NIMBUS_GITHUB_TOKEN")) {
            (Some(app_id), _) => {
                let app_id: i64 = app_id.trim().parse().map_err(|_| {
                    config_error(
                        "NIMBUS_GITHUB_APP_ID",
                        format!("invalid value {app_id:?}: expected the app's numeric id"),
                    )
                })?;
                let pem = match (
                    env.secret("NIMBUS_GITHUB_APP_PRIVATE_KEY"),
                    env.get("NIMBUS_GITHUB_APP_PRIVATE_KEY_PATH"),
                ) {
                    (Some(pem), _) => pem.expose().replace("\\n", "\n"),
                    (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                        config_error("NIMBUS_GITHUB_APP_PRIVATE_KEY_PATH", format!("reading {path}: {e}"))
                    })?,
                    (None, None) => {
                        return Err(config_error(
                            "NIMBUS_GITHUB_APP_PRIVATE_KEY",
                            "NIMBUS_GITHUB_APP_ID is set: the app's private key is needed too (or NIMBUS_GITHUB_APP_PRIVATE_KEY_PATH)".into(),
                        ))
                    }
                };
                GithubAuth::App(
                    AppCredentials::new(app_id, &pem).map_err(|e| {
                        config_error("NIMBUS_GITHUB_APP_PRIVATE_KEY", e.to_string())
                    })?,
                )
            }
            (None, Some(token)) => GithubAuth::Token(token),
            (None, None) => return Ok(None),
        };
        let api_url = env
            .get("NIMBUS_GITHUB_API_URL")
            .unwrap_or("https://api.github.com")
            .trim_end_matches('/')
            .to_string();
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(config_error(
                "NIMBUS_GITHUB_API_URL",
                format!("invalid value {api_url:?}: expected an http(s) URL"),
            ));
        }
        let runner_scope = match env.get("NIMBUS_GITHUB_RUNNER_SCOPE").unwrap_or("repo") {
            "repo" | "repository" => RunnerScope::Repository,
            "org" | "organization" => RunnerScope::Organization,
            other => {
                return Err(config_error(
                    "NIMBUS_GITHUB_RUNNER_SCOPE",
                    format!("invalid value {other:?}: expected repo or org"),
                ))
            }
        };
        Ok(Some(GithubConfig {
            api_url,
            auth,
            runner_scope,
            runner_group_id: env.parse_or("NIMBUS_GITHUB_RUNNER_GROUP_ID", 1)?,
            reconcile_interval: env
                .seconds_or("NIMBUS_GITHUB_RECONCILE_SECONDS", Duration::from_secs(60))?,
            max_rate_limit_wait: Duration::from_secs(120),
        }))
    }
}

/// What GitHub answered to generate-jitconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitConfig {
    pub runner_id: i64,
    pub runner_name: String,
    /// The base64 blob `run.sh --jitconfig` takes. A credential: never log it.
    pub encoded_jit_config: String,
}

/// A repository, as REST paths name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub owner: String,
    pub name: String,
    /// The App installation that covers it (App auth only).
    pub installation_id: Option<i64>,
}

impl RepoRef {
    pub fn parse(full_name: &str, installation_id: Option<i64>) -> Result<Self> {
        let (owner, name) = full_name
            .split_once('/')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| Error::invalid(format!("{full_name:?} is not OWNER/NAME")))?;
        Ok(RepoRef {
            owner: owner.into(),
            name: name.into(),
            installation_id,
        })
    }
}

#[derive(Debug, Deserialize)]
struct InstallationToken {
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

/// A client of one GitHub (github.com or an Enterprise Server).
pub struct GithubClient {
    http: reqwest::Client,
    config: GithubConfig,
    /// Installation tokens by installation id, with their expiry.
    tokens: Mutex<HashMap<i64, (Secret, OffsetDateTime)>>,
    rate_limited: IntCounter,
}

/// Installation tokens are renewed this long before GitHub says they expire.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(300);
/// Attempts of one call through rate limits and server errors.
const MAX_ATTEMPTS: u32 = 4;

impl GithubClient {
    pub fn new(config: GithubConfig, rate_limited: IntCounter) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("nimbus/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Internal(format!("building the GitHub HTTP client: {e}")))?;
        Ok(GithubClient {
            http,
            config,
            tokens: Mutex::new(HashMap::new()),
            rate_limited,
        })
    }

    pub fn config(&self) -> &GithubConfig {
        &self.config
    }

    /// The bearer token for calls about `repo`: an installation token (App auth,
    /// renewed when close to expiry) or the personal token.
    async fn token_for(&self, installation_id: Option<i64>) -> Result<Secret> {
        match &self.config.auth {
            GithubAuth::Token(token) => Ok(token.clone()),
            GithubAuth::App(app) => {
                let installation = installation_id.ok_or_else(|| {
                    Error::invalid("this job has no GitHub App installation id; App auth needs one")
                })?;
                let now = OffsetDateTime::now_utc();
                if let Ok(tokens) = self.tokens.lock() {
                    if let Some((token, expires_at)) = tokens.get(&installation) {
                        if *expires_at - now > TOKEN_RENEW_MARGIN {
                            return Ok(token.clone());
                        }
                    }
                }
                let jwt = app.jwt(now)?;
                let (status, answer) = self
                    .send(
                        Method::POST,
                        &format!("/app/installations/{installation}/access_tokens"),
                        &jwt,
                        None,
                    )
                    .await?;
                if !status.is_success() {
                    return Err(github_error(
                        &format!(
                            "installation token (app {}, installation {installation})",
                            app.app_id
                        ),
                        status,
                        &answer,
                    ));
                }
                let minted: InstallationToken = serde_json::from_value(answer).map_err(|e| {
                    Error::Unavailable(format!("GitHub's installation token answer: {e}"))
                })?;
                let token = Secret::new(minted.token);
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(installation, (token.clone(), minted.expires_at));
                }
                Ok(token)
            }
        }
    }

    /// One REST call with back-off: a 403/429 with `Retry-After` or an exhausted
    /// `X-RateLimit-Remaining` waits (bounded) and retries; 5xx retries with
    /// exponential back-off. Answers (status, JSON body) for any other status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{path}", self.config.api_url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(bearer)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28");
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(%error, %url, attempt, "GitHub call failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    continue;
                }
                Err(error) => {
                    return Err(Error::Unavailable(format!(
                        "GitHub {method} {path}: {error}"
                    )))
                }
            };
            let status = response.status();
            if let Some(wait) = rate_limit_wait(status, response.headers()) {
                self.rate_limited.inc();
                if attempt < MAX_ATTEMPTS && wait <= self.config.max_rate_limit_wait {
                    tracing::warn!(%url, wait_ms = wait.as_millis() as u64, "GitHub rate limit: backing off");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(Error::Unavailable(format!(
                    "GitHub {method} {path}: rate limited for another {} s",
                    wait.as_secs()
                )));
            }
            if status.is_server_error() && attempt < MAX_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                continue;
            }
            let text = response.text().await.unwrap_or_default();
            let value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            return Ok((status, value));
        }
    }

    fn runners_path(&self, repo: &RepoRef) -> String {
        match self.config.runner_scope {
            RunnerScope::Repository => {
                format!("/repos/{}/{}/actions/runners", repo.owner, repo.name)
            }
            RunnerScope::Organization => format!("/orgs/{}/actions/runners", repo.owner),
        }
    }

    /// Registers a just-in-time runner named `name` with `labels` (GitHub takes
    /// 1 to 100) for `repo`. A runner left by an earlier attempt under the same
    /// name is removed first and the call repeated.
    pub async fn generate_jit_config(
        &self,
        repo: &RepoRef,
        name: &str,
        labels: &[String],
    ) -> Result<JitConfig> {
        if labels.is_empty() || labels.len() > 100 {
            return Err(Error::invalid(format!(
                "a runner needs 1 to 100 labels, not {}",
                labels.len()
            )));
        }
        let token = self.token_for(repo.installation_id).await?;
        let body = json!({
            "name": name,
            "runner_group_id": self.config.runner_group_id,
            "labels": labels,
            "work_folder": "_work",
        });
        let path = format!("{}/generate-jitconfig", self.runners_path(repo));
        for retry in 0..2 {
            let (status, answer) = self
                .send(Method::POST, &path, token.expose(), Some(&body))
                .await?;
            match status {
                StatusCode::CREATED | StatusCode::OK => {
                    let runner_id = answer["runner"]["id"].as_i64().ok_or_else(|| {
                        Error::Unavailable("GitHub's jitconfig answer has no runner.id".into())
                    })?;
                    let encoded = answer["encoded_jit_config"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| {
                            Error::Unavailable(
                                "GitHub's jitconfig answer has no encoded_jit_config".into(),
                            )
                        })?;
                    return Ok(JitConfig {
                        runner_id,
                        runner_name: name.to_string(),
                        encoded_jit_config: encoded.to_string(),
                    });
                }
                StatusCode::CONFLICT if retry == 0 => {
                    // "Already exists": a previous attempt registered this name.
                    self.delete_runner_named(repo, name).await?;
                }
                _ => return Err(github_error("generate-jitconfig", status, &answer)),
            }
        }
        Err(Error::Unavailable(format!(
            "GitHub keeps a runner named {name:?}"
        )))
    }

    /// Removes the runner `name` if it is still registered (idempotent: a runner
    /// that is gone — GitHub removes a used JIT runner itself — is fine).
    pub async fn delete_runner_named(&self, repo: &RepoRef, name: &str) -> Result<bool> {
        let token = self.token_for(repo.installation_id).await?;
        let base = self.runners_path(repo);
        let (status, answer) = self
            .send(
                Method::GET,
                &format!("{base}?name={}", urlencode(name)),
                token.expose(),
                None,
            )
            .await?;
        if !status.is_success() {
            return Err(github_error("list runners", status, &answer));
        }
        let ids: Vec<i64> = answer["runners"]
            .as_array()
            .map(|runners| {
                runners
                    .iter()
                    .filter(|r| r["name"].as_str() == Some(name))
                    .filter_map(|r| r["id"].as_i64())
                    .collect()
            })
            .unwrap_or_default();
        let mut removed = false;
        for id in ids {
            removed |= self.delete_runner(repo, id).await?;
        }
        Ok(removed)
    }

    /// `DELETE …/runners/{id}`; a 404 (already gone) counts as done.
    pub async fn delete_runner(&self, repo: &RepoRef, runner_id: i64) -> Result<bool> {
        let token = self.token_for(repo.installation_id).await?;
        let path = format!("{}/{runner_id}", self.runners_path(repo));
        let (status, answer) = self
            .send(Method::DELETE, &path, token.expose(), None)
            .await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(github_error("delete runner", status, &answer)),
        }
    }

    /// The repositories Nimbus can see, with what a `workflow_job` payload says of
    /// them (`repository`, `organization`, `installation`): every installation's
    /// repositories (App auth), or the token's own (personal token).
    pub async fn repositories(&self) -> Result<Vec<Value>> {
        let mut repositories = Vec::new();
        match &self.config.auth {
            GithubAuth::App(app) => {
                let jwt = app.jwt(OffsetDateTime::now_utc())?;
                let (status, installations) = self
                    .send(Method::GET, "/app/installations?per_page=100", &jwt, None)
                    .await?;
                if !status.is_success() {
                    return Err(github_error("list installations", status, &installations));
                }
                for installation in installations.as_array().into_iter().flatten() {
                    let Some(id) = installation["id"].as_i64() else {
                        continue;
                    };
                    let token = self.token_for(Some(id)).await?;
                    let (status, answer) = self
                        .send(
                            Method::GET,
                            "/installation/repositories?per_page=100",
                            token.expose(),
                            None,
                        )
                        .await?;
                    if !status.is_success() {
                        return Err(github_error(
                            "list installation repositories",
                            status,
                            &answer,
                        ));
                    }
                    for repo in answer["repositories"].as_array().into_iter().flatten() {
                        let mut repo = repo.clone();
                        repo["installation"] = json!({"id": id});
                        repositories.push(repo);
                    }
                }
            }
            GithubAuth::Token(token) => {
                let (status, answer) = self
                    .send(
                        Method::GET,
                        "/user/repos?affiliation=owner,organization_member&per_page=100",
                        token.expose(),
                        None,
                    )
                    .await?;
                if !status.is_success() {
                    return Err(github_error("list repositories", status, &answer));
                }
                repositories.extend(answer.as_array().into_iter().flatten().cloned());
            }
        }
        Ok(repositories)
    }

    /// One workflow job as GitHub sees it now.
    pub async fn workflow_job(&self, repo: &RepoRef, job_id: i64) -> Result<Value> {
        let token = self.token_for(repo.installation_id).await?;
        let (status, answer) = self
            .send(
                Method::GET,
                &format!("/repos/{}/{}/actions/jobs/{job_id}", repo.owner, repo.name),
                token.expose(),
                None,
            )
            .await?;
        if !status.is_success() {
            return Err(github_error("get workflow job", status, &answer));
        }
        Ok(answer)
    }

    /// One workflow run: its `event`, `head_branch`, `head_repository`,
    /// `repository` (with `default_branch`) and `pull_requests`.
    pub async fn workflow_run(&self, repo: &RepoRef, run_id: i64) -> Result<Value> {
        let token = self.token_for(repo.installation_id).await?;
        let (status, answer) = self
            .send(
                Method::GET,
                &format!("/repos/{}/{}/actions/runs/{run_id}", repo.owner, repo.name),
                token.expose(),
                None,
            )
            .await?;
        if !status.is_success() {
            return Err(github_error("get workflow run", status, &answer));
        }
        Ok(answer)
    }

    /// Open pull requests of `repo` whose head is `head` (`OWNER:BRANCH`): how a run
    /// of a fork's pull request finds its pull request, which GitHub leaves out of
    /// the run's `pull_requests`.
    pub async fn pulls_with_head(&self, repo: &RepoRef, head: &str) -> Result<Vec<Value>> {
        let token = self.token_for(repo.installation_id).await?;
        let (status, answer) = self
            .send(
                Method::GET,
                &format!(
                    "/repos/{}/{}/pulls?state=open&per_page=10&head={}",
                    repo.owner,
                    repo.name,
                    urlencode(head)
                ),
                token.expose(),
                None,
            )
            .await?;
        if !status.is_success() {
            return Err(github_error("list pull requests", status, &answer));
        }
        Ok(answer.as_array().cloned().unwrap_or_default())
    }

    /// Queued workflow jobs of `repo` (for the reconciler): the jobs of its queued
    /// and in-progress runs whose status is `queued`.
    pub async fn queued_jobs(&self, repo: &RepoRef) -> Result<Vec<Value>> {
        let token = self.token_for(repo.installation_id).await?;
        let mut jobs = Vec::new();
        for run_status in ["queued", "in_progress"] {
            let (status, runs) = self
                .send(
                    Method::GET,
                    &format!(
                        "/repos/{}/{}/actions/runs?status={run_status}&per_page=100",
                        repo.owner, repo.name
                    ),
                    token.expose(),
                    None,
                )
                .await?;
            if !status.is_success() {
                return Err(github_error("list workflow runs", status, &runs));
            }
            for run in runs["workflow_runs"].as_array().into_iter().flatten() {
                let Some(run_id) = run["id"].as_i64() else {
                    continue;
                };
                let (status, run_jobs) = self
                    .send(
                        Method::GET,
                        &format!(
                            "/repos/{}/{}/actions/runs/{run_id}/jobs?per_page=100",
                            repo.owner, repo.name
                        ),
                        token.expose(),
                        None,
                    )
                    .await?;
                if !status.is_success() {
                    return Err(github_error("list run jobs", status, &run_jobs));
                }
                for job in run_jobs["jobs"].as_array().into_iter().flatten() {
                    if job["status"].as_str() == Some("queued") {
                        jobs.push(job.clone());
                    }
                }
            }
        }
        Ok(jobs)
    }
}

fn github_error(call: &str, status: StatusCode, answer: &Value) -> Error {
    let message = answer["message"].as_str().unwrap_or("no message");
    match status {
        StatusCode::UNAUTHORIZED => {
            Error::Unavailable(format!("GitHub {call}: 401 {message} (check the app id, key or token)"))
        }
        StatusCode::NOT_FOUND => Error::Unavailable(format!(
            "GitHub {call}: 404 {message} (is the App installed on the repository, with the runner permissions?)"
        )),
        _ => Error::Unavailable(format!("GitHub {call}: {status} {message}")),
    }
}

/// How long a rate-limited answer asks us to wait, if it is one: `Retry-After`
/// (secondary limits), or `X-RateLimit-Remaining: 0` until `X-RateLimit-Reset`.
fn rate_limit_wait(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(seconds) = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(seconds));
    }
    if header("x-ratelimit-remaining").map(str::trim) == Some("0") {
        let reset = header("x-ratelimit-reset")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1) as u64));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Some(Duration::from_secs(60));
    }
    None
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
