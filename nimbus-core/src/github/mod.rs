//! GitHub's REST API as the control plane uses it: GitHub App auth (an RS256 app
//! JWT exchanged for installation tokens, cached until shortly before expiry) or a
//! personal token, just-in-time runner configs and runner removal, with rate-limit
//! back-off. Answers are read into the typed views of [`model`]; every list follows
//! GitHub's `Link` pagination. The base URL is configurable, so GitHub Enterprise
//! Server works by changing `NIMBUS_GITHUB_API_URL`.

mod app;
pub mod model;

pub use app::{AppCredentials, AppJwtClaims};
pub use model::{
    AppInstallation, Owner, PullRequest, ReachableRepository, Repository, Runner, WorkflowJob,
    WorkflowRun,
};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntCounter;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::config::{Env, Secret};
use crate::error::{Error, Result};
use crate::retry::{self, Retryable};
use model::{Items, JitConfigAnswer};

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

/// GitHub settings of the control plane (`NIMBUS_GITHUB_*`).
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    pub api_url: String,
    /// How calls authenticate.
    pub auth: GithubAuth,
    /// Where just-in-time runners are registered (`NIMBUS_GITHUB_RUNNER_SCOPE`, default repo).
    pub runner_scope: RunnerScope,
    /// Runner group of the just-in-time runners (`NIMBUS_GITHUB_RUNNER_GROUP_ID`, default 1).
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
    /// GitHub's id of the registered runner.
    pub runner_id: i64,
    /// The runner's name, as registered (one per lease of a job).
    pub runner_name: String,
    /// The base64 blob `run.sh --jitconfig` takes. A credential: never log it.
    pub encoded_jit_config: String,
}

/// A repository, as REST paths name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// The owner's login.
    pub owner: String,
    /// The repository's name, without the owner.
    pub name: String,
    /// The App installation that covers it (App auth only).
    pub installation_id: Option<i64>,
}

impl RepoRef {
    /// Splits `owner/name`; anything else is invalid input.
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
const MAX_ATTEMPTS: usize = 4;
/// Pages of 100 items followed in one list: 10,000 runs, jobs or repositories.
const MAX_PAGES: usize = 100;

impl GithubClient {
    /// A client for `config`; `rate_limited` counts the calls GitHub rate-limited.
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

    /// The settings the client was built with.
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
                let Answer {
                    status,
                    body: answer,
                    ..
                } = self
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

    /// One REST call to `path` (under the API URL) with back-off: see [`Self::send_url`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.config.api_url);
        self.send_url(method, &url, bearer, body).await
    }

    /// One REST call with back-off ([`crate::retry`]): a 403/429 with `Retry-After`
    /// or an exhausted `X-RateLimit-Remaining` waits until the reset (up to
    /// `max_rate_limit_wait`) and retries; a connection error or a 5xx retries with
    /// exponential back-off. Answers (status, JSON body, `Link`) for any other
    /// status, and for the last 5xx.
    async fn send_url(
        &self,
        method: Method,
        url: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let path = url.strip_prefix(&self.config.api_url).unwrap_or(url);
        let attempt = || async {
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(bearer)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28");
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(Failed::Transport)?;
            let status = response.status();
            if let Some(wait) = rate_limit_wait(status, response.headers()) {
                self.rate_limited.inc();
                return Err(Failed::RateLimited(wait));
            }
            let answer = Answer::read(response).await;
            if status.is_server_error() {
                return Err(Failed::Server(answer));
            }
            Ok(answer)
        };
        let max_wait = self.config.max_rate_limit_wait;
        let outcome = attempt
            .retry(retry::exponential(
                Duration::from_millis(400),
                Duration::from_secs(5),
                MAX_ATTEMPTS,
            ))
            .sleep(tokio::time::sleep)
            // A rate limit waits as long as GitHub asks, if that is not too long.
            .adjust(|failed: &Failed, next| match failed {
                Failed::RateLimited(wait) => next.and((*wait <= max_wait).then_some(*wait)),
                _ => next,
            })
            .notify(|failed, wait| match failed {
                Failed::RateLimited(_) => {
                    tracing::warn!(%url, wait_ms = wait.as_millis() as u64, "GitHub rate limit: backing off")
                }
                Failed::Transport(error) => {
                    tracing::warn!(%error, %url, "GitHub call failed; retrying")
                }
                Failed::Server(answer) => {
                    tracing::warn!(status = %answer.status, %url, "GitHub answered a server error; retrying")
                }
            })
            .await;
        match outcome {
            Ok(answer) | Err(Failed::Server(answer)) => Ok(answer),
            Err(Failed::Transport(error)) => Err(Error::Unavailable(format!(
                "GitHub {method} {path}: {error}"
            ))),
            Err(Failed::RateLimited(wait)) => Err(Error::Unavailable(format!(
                "GitHub {method} {path}: rate limited for another {} s",
                wait.as_secs()
            ))),
        }
    }

    /// Every item of a list, following GitHub's `Link: <…>; rel="next"` from page
    /// to page (100 items a page, at most [`MAX_PAGES`] pages). A next link that
    /// leaves the API URL is refused: the bearer token goes only to GitHub. An item
    /// that does not read as `T` is skipped with a warning, not the whole list.
    async fn list<T: DeserializeOwned>(
        &self,
        call: &str,
        path: &str,
        bearer: &str,
        items: Items,
    ) -> Result<Vec<T>> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{}{path}{separator}per_page=100", self.config.api_url);
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let answer = self.send_url(Method::GET, &url, bearer, None).await?;
            if !answer.status.is_success() {
                return Err(github_error(call, answer.status, &answer.body));
            }
            let page = match items {
                Items::Bare => &answer.body,
                Items::Field(field) => &answer.body[field],
            };
            let Some(page) = page.as_array() else {
                return Err(Error::Unavailable(format!(
                    "GitHub {call}: the answer is not a list"
                )));
            };
            for item in page {
                match T::deserialize(item) {
                    Ok(item) => all.push(item),
                    Err(error) => {
                        tracing::warn!(call, %error, "GitHub listed an item Nimbus cannot read; skipped")
                    }
                }
            }
            match self.next_page(call, answer.link.as_deref())? {
                Some(next) => url = next,
                None => return Ok(all),
            }
        }
        tracing::warn!(
            call,
            items = all.len(),
            "GitHub list longer than {MAX_PAGES} pages; read the first {MAX_PAGES}"
        );
        Ok(all)
    }

    /// The `rel="next"` URL of a `Link` header, if it stays under the API URL.
    fn next_page(&self, call: &str, link: Option<&str>) -> Result<Option<String>> {
        let Some(link) = link else {
            return Ok(None);
        };
        let links = parse_link_header::parse_with_rel(link).map_err(|error| {
            Error::Unavailable(format!("GitHub {call}: unreadable Link header: {error}"))
        })?;
        let Some(next) = links.get("next") else {
            return Ok(None);
        };
        let next = &next.uri;
        let base = reqwest::Url::parse(&self.config.api_url).map_err(|error| {
            Error::Internal(format!("the GitHub API URL does not parse: {error}"))
        })?;
        let base_path = base.path().trim_end_matches('/');
        let within = next.scheme() == base.scheme()
            && next.host_str() == base.host_str()
            && next.port_or_known_default() == base.port_or_known_default()
            && next
                .path()
                .strip_prefix(base_path)
                .is_some_and(|rest| rest.starts_with('/'));
        if !within {
            return Err(Error::Unavailable(format!(
                "GitHub {call}: the next page ({next}) is not under {base}; not followed"
            )));
        }
        Ok(Some(next.to_string()))
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
            let answer = self
                .send(Method::POST, &path, token.expose(), Some(&body))
                .await?;
            match answer.status {
                StatusCode::CREATED | StatusCode::OK => {
                    let config: JitConfigAnswer =
                        serde_json::from_value(answer.body).map_err(|error| {
                            Error::Unavailable(format!("GitHub's jitconfig answer: {error}"))
                        })?;
                    if config.encoded_jit_config.is_empty() {
                        return Err(Error::Unavailable(
                            "GitHub's jitconfig answer has an empty encoded_jit_config".into(),
                        ));
                    }
                    return Ok(JitConfig {
                        runner_id: config.runner.id,
                        runner_name: name.to_string(),
                        encoded_jit_config: config.encoded_jit_config,
                    });
                }
                StatusCode::CONFLICT if retry == 0 => {
                    // "Already exists": a previous attempt registered this name.
                    self.delete_runner_named(repo, name).await?;
                }
                status => return Err(github_error("generate-jitconfig", status, &answer.body)),
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
        let path = format!("{}?name={}", self.runners_path(repo), urlencode(name));
        let runners: Vec<Runner> = self
            .list(
                "list runners",
                &path,
                token.expose(),
                Items::Field("runners"),
            )
            .await?;
        let mut removed = false;
        for runner in runners.iter().filter(|r| r.name == name) {
            removed |= self.delete_runner(repo, runner.id).await?;
        }
        Ok(removed)
    }

    /// `DELETE …/runners/{id}`; a 404 (already gone) counts as done.
    pub async fn delete_runner(&self, repo: &RepoRef, runner_id: i64) -> Result<bool> {
        let token = self.token_for(repo.installation_id).await?;
        let path = format!("{}/{runner_id}", self.runners_path(repo));
        let answer = self
            .send(Method::DELETE, &path, token.expose(), None)
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(github_error("delete runner", status, &answer.body)),
        }
    }

    /// The repositories Nimbus can reach: every installation's (App auth), or the
    /// token's own (personal token).
    pub async fn repositories(&self) -> Result<Vec<ReachableRepository>> {
        let mut reachable = Vec::new();
        match &self.config.auth {
            GithubAuth::App(app) => {
                let jwt = app.jwt(OffsetDateTime::now_utc())?;
                let installations: Vec<AppInstallation> = self
                    .list(
                        "list installations",
                        "/app/installations",
                        &jwt,
                        Items::Bare,
                    )
                    .await?;
                for installation in installations {
                    let token = self.token_for(Some(installation.id)).await?;
                    let repositories: Vec<Repository> = self
                        .list(
                            "list installation repositories",
                            "/installation/repositories",
                            token.expose(),
                            Items::Field("repositories"),
                        )
                        .await?;
                    reachable.extend(repositories.into_iter().map(|repository| {
                        ReachableRepository {
                            repository,
                            installation_id: Some(installation.id),
                        }
                    }));
                }
            }
            GithubAuth::Token(token) => {
                let repositories: Vec<Repository> = self
                    .list(
                        "list repositories",
                        "/user/repos?affiliation=owner,organization_member",
                        token.expose(),
                        Items::Bare,
                    )
                    .await?;
                reachable.extend(
                    repositories
                        .into_iter()
                        .map(|repository| ReachableRepository {
                            repository,
                            installation_id: None,
                        }),
                );
            }
        }
        Ok(reachable)
    }

    /// One GET of a single object, read as `T`.
    async fn get<T: DeserializeOwned>(&self, call: &str, repo: &RepoRef, path: &str) -> Result<T> {
        let token = self.token_for(repo.installation_id).await?;
        let answer = self.send(Method::GET, path, token.expose(), None).await?;
        if !answer.status.is_success() {
            return Err(github_error(call, answer.status, &answer.body));
        }
        serde_json::from_value(answer.body)
            .map_err(|error| Error::Unavailable(format!("GitHub {call}: {error}")))
    }

    /// One workflow job as GitHub sees it now.
    pub async fn workflow_job(&self, repo: &RepoRef, job_id: i64) -> Result<WorkflowJob> {
        let path = format!("/repos/{}/{}/actions/jobs/{job_id}", repo.owner, repo.name);
        self.get("get workflow job", repo, &path).await
    }

    /// One workflow run: its event, head branch and repository, repository (with
    /// its default branch) and pull requests.
    pub async fn workflow_run(&self, repo: &RepoRef, run_id: i64) -> Result<WorkflowRun> {
        let path = format!("/repos/{}/{}/actions/runs/{run_id}", repo.owner, repo.name);
        self.get("get workflow run", repo, &path).await
    }

    /// Open pull requests of `repo` whose head is `head` (`OWNER:BRANCH`): how a run
    /// of a fork's pull request finds its pull request, which GitHub leaves out of
    /// the run's `pull_requests`.
    pub async fn pulls_with_head(&self, repo: &RepoRef, head: &str) -> Result<Vec<PullRequest>> {
        let token = self.token_for(repo.installation_id).await?;
        let path = format!(
            "/repos/{}/{}/pulls?state=open&head={}",
            repo.owner,
            repo.name,
            urlencode(head)
        );
        self.list("list pull requests", &path, token.expose(), Items::Bare)
            .await
    }

    /// Queued workflow jobs of `repo` (for the reconciler): the jobs of its queued
    /// and in-progress runs whose status is `queued`.
    pub async fn queued_jobs(&self, repo: &RepoRef) -> Result<Vec<WorkflowJob>> {
        let token = self.token_for(repo.installation_id).await?;
        let mut queued = Vec::new();
        for run_status in ["queued", "in_progress"] {
            let runs: Vec<WorkflowRun> = self
                .list(
                    "list workflow runs",
                    &format!(
                        "/repos/{}/{}/actions/runs?status={run_status}",
                        repo.owner, repo.name
                    ),
                    token.expose(),
                    Items::Field("workflow_runs"),
                )
                .await?;
            for run in runs {
                let jobs: Vec<WorkflowJob> = self
                    .list(
                        "list run jobs",
                        &format!(
                            "/repos/{}/{}/actions/runs/{}/jobs",
                            repo.owner, repo.name, run.id
                        ),
                        token.expose(),
                        Items::Field("jobs"),
                    )
                    .await?;
                queued.extend(
                    jobs.into_iter()
                        .filter(|job| job.status.as_deref() == Some("queued")),
                );
            }
        }
        Ok(queued)
    }
}

/// One answer of the REST API: its status, JSON body (`Null` when empty, a string
/// when not JSON) and `Link` header.
struct Answer {
    status: StatusCode,
    body: Value,
    link: Option<String>,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Answer {
        let status = response.status();
        let link = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer { status, body, link }
    }
}

/// Why one attempt of a call did not give an answer to keep.
enum Failed {
    Transport(reqwest::Error),
    RateLimited(Duration),
    Server(Answer),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(api_url: &str) -> GithubClient {
        let config = GithubConfig {
            api_url: api_url.into(),
            auth: GithubAuth::Token(Secret::new("t")),
            runner_scope: RunnerScope::Repository,
            runner_group_id: 1,
            reconcile_interval: Duration::from_secs(60),
            max_rate_limit_wait: Duration::from_secs(1),
        };
        GithubClient::new(config, IntCounter::new("t", "t").expect("counter")).expect("client")
    }

    #[test]
    fn the_next_page_is_followed_under_the_api_url_only() {
        let github = client("https://ghe.example.com/api/v3");
        let next = |link: &str| github.next_page("list", Some(link));
        assert_eq!(
            next(r#"<https://GHE.example.com:443/api/v3/user/repos?page=2>; rel="next", <https://ghe.example.com/api/v3/user/repos?page=9>; rel="last""#)
                .expect("next"),
            Some("https://ghe.example.com/api/v3/user/repos?page=2".to_string())
        );
        assert_eq!(
            next(r#"<https://ghe.example.com/api/v3/user/repos?page=1>; rel="prev""#)
                .expect("no next"),
            None
        );
        assert_eq!(github.next_page("list", None).expect("no link"), None);
        // The bearer token never follows a link elsewhere.
        for elsewhere in [
            r#"<https://attacker.example/api/v3/user/repos?page=2>; rel="next""#,
            r#"<http://ghe.example.com/api/v3/user/repos?page=2>; rel="next""#,
            r#"<https://ghe.example.com:8443/api/v3/user/repos?page=2>; rel="next""#,
            r#"<https://ghe.example.com/api/v3x/user/repos?page=2>; rel="next""#,
            r#"<https://ghe.example.com/other/user/repos?page=2>; rel="next""#,
            "not a link header",
        ] {
            assert!(next(elsewhere).is_err(), "{elsewhere} was followed");
        }
    }
}
