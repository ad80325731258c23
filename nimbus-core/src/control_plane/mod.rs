//! The control plane service: GitHub webhook intake, job submission, the lease API,
//! and the background reaper, over an `Arc<dyn Store>`.
//!
//! [`router`] builds the axum app (tests drive it with `oneshot`, no socket);
//! [`serve`] runs it on a listener with the reaper until shutdown; [`run`] is what
//! the `nimbus-control-plane` binary calls.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::auth::JwtKeys;
use crate::cache_token::CacheTokenKeys;
use crate::domain::{Job, OrgId};
use crate::error::{Error, Result};
use crate::github::{GithubClient, JitConfig, RepoRef};
use crate::route::{Access, Route};
use crate::store::{self, Store};
pub use config::ControlPlaneConfig;
use nimbus_policy::Policy;

mod analytics;
mod api;
pub mod cache_grant;
pub mod config;
mod dashboard;
pub mod http;
mod metadata_sink;
pub mod metrics;
pub mod reconcile;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;
mod webhooks;
mod workspace;

pub use analytics::{HistogramQuery, OrgsQuery, SummaryQuery, TrendQuery};
pub use api::{
    ControlPlaneApi, JobRequest, LeaseOptions, LocalAgent, MetadataCount, Session, MAX_LEASE_WAIT,
};
pub use metrics::Metrics;
pub use webhooks::{WebhookAnswer, WebhookDelivery};
pub use workspace::{
    WorkspaceReceipt, MAX_WORKSPACE_BYTES, MAX_WORKSPACE_UPLOADS, WORKSPACE_ORG_QUOTA_BYTES,
    WORKSPACE_TTL,
};

/// Largest request body accepted on any route (webhooks included).
pub const MAX_BODY: usize = 1024 * 1024;

/// Shared state of every handler.
pub struct ControlPlane {
    /// The settings it was started with.
    pub config: ControlPlaneConfig,
    /// The durable queue, leases, orgs and analytics.
    pub store: Arc<dyn Store>,
    /// Mints and verifies API tokens and log ingest tokens.
    pub keys: JwtKeys,
    /// Mints the per-job cache tokens handed out with leases.
    pub cache_keys: CacheTokenKeys,
    /// GitHub's API, when an App or token is configured.
    pub github: Option<Arc<GithubClient>>,
    /// Just-in-time runner configs handed out, by (job, fencing token): a repeated
    /// request within one lease gets the same runner.
    runner_configs:
        std::sync::Mutex<std::collections::HashMap<(crate::domain::JobId, i64), JitConfig>>,
    /// Workflow run contexts looked up for cache scoping, by run id.
    run_contexts: std::sync::Mutex<std::collections::HashMap<i64, cache_grant::RunContext>>,
    /// The Prometheus metrics of `/metrics`.
    pub metrics: Metrics,
    /// Wakes long-polling lease requests when this replica queues a job.
    job_available: Notify,
    /// Orgs known to exist. Orgs are never deleted, so a hit never goes stale;
    /// this saves a database round trip on every org-token request and webhook.
    known_orgs: RwLock<HashSet<OrgId>>,
    /// The admission policy in force (swapped whole on reload).
    policy: RwLock<Arc<Policy>>,
    shutdown: watch::Sender<bool>,
    /// Copies job metadata to NIMBUS_METADATA_SINK_URL, when set.
    metadata_sink: Option<metadata_sink::MetadataForwarder>,
    /// Which queued job an asking agent gets.
    pub scheduler: Arc<dyn crate::scheduler::Scheduler>,
    /// The metadata presets, kept warm.
    analytics: analytics::AnalyticsState,
    /// Workspace archives being received ([`MAX_WORKSPACE_UPLOADS`] at once): each
    /// is held in memory whole.
    workspace_uploads: tokio::sync::Semaphore,
}

/// How handlers and background tasks share the control plane.
pub type AppState = Arc<ControlPlane>;

impl ControlPlane {
    /// Builds the state; loads the policy file if one is configured (a policy that
    /// does not load is a start-up error naming the file, line and column).
    pub fn new(config: ControlPlaneConfig, store: Arc<dyn Store>) -> Result<AppState> {
        let (shutdown, _) = watch::channel(false);
        let policy = match &config.policy_path {
            Some(path) => Policy::from_path(path).map_err(|e| Error::Config {
                variable: "NIMBUS_JOB_POLICY_PATH".into(),
                message: nimbus_policy::describe_error(&path.display().to_string(), &e),
            })?,
            None => Policy::allow_all(),
        };
        let keys = JwtKeys::new(&config.jwt_secret);
        let metrics = Metrics::new()?;
        let github = match &config.github {
            Some(github) => Some(Arc::new(GithubClient::new(
                github.clone(),
                metrics.github_api_rate_limited.clone(),
            )?)),
            None => None,
        };
        let metadata_sink = config.metadata_sink_url.as_deref().and_then(|url| {
            metadata_sink::MetadataForwarder::start(
                url,
                keys.clone(),
                metrics.metadata_forward_failures.clone(),
            )
        });
        Ok(Arc::new(ControlPlane {
            scheduler: config.scheduler.build(),
            keys,
            cache_keys: CacheTokenKeys::new(&config.cache_secret),
            github,
            runner_configs: std::sync::Mutex::new(std::collections::HashMap::new()),
            run_contexts: std::sync::Mutex::new(std::collections::HashMap::new()),
            metrics,
            metadata_sink,
            config,
            store,
            job_available: Notify::new(),
            known_orgs: RwLock::new(HashSet::new()),
            policy: RwLock::new(Arc::new(policy)),
            shutdown,
            analytics: analytics::AnalyticsState::default(),
            workspace_uploads: tokio::sync::Semaphore::new(MAX_WORKSPACE_UPLOADS),
        }))
    }

    /// A cache token for a leased `job`, valid for the job's timeout plus an hour (a
    /// job cannot outlive its timeout): a direct job writes the ref it names; a
    /// GitHub job is scoped as GitHub scopes it ([`cache_grant`]). `None` (and a
    /// log line) if the job's repository is not one a token can name.
    pub async fn mint_cache_token(&self, job: &Job) -> Option<String> {
        let ttl = Duration::from_secs(u64::from(job.spec.timeout_minutes) * 60 + 3600);
        let grant = match &job.github {
            None => cache_grant::direct_grant(job),
            Some(_) => {
                let run = self.run_context(job).await;
                cache_grant::github_grant(job, run.as_ref())
            }
        };
        match self.cache_keys.mint_grant(&grant, ttl) {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::warn!(job_id = job.id, %error, "no cache token for this job");
                None
            }
        }
    }

    /// The context of a GitHub job's workflow run (event, fork, pull request), from
    /// the GitHub API, remembered per run. `None` when GitHub is not configured or
    /// did not answer: the job's cache token is then read-only.
    async fn run_context(&self, job: &Job) -> Option<cache_grant::RunContext> {
        let reference = job.github.as_ref()?;
        let run_id = reference.run_id;
        if let Ok(known) = self.run_contexts.lock() {
            if let Some(context) = known.get(&run_id) {
                return Some(context.clone());
            }
        }
        let github = self.github.as_ref()?;
        let repo = RepoRef::parse(&job.repo, reference.installation_id).ok()?;
        let lookup = async {
            let run = github.workflow_run(&repo, run_id).await?;
            let mut context = cache_grant::RunContext::from_run(&run)
                .ok_or_else(|| Error::invalid("the workflow run has no event"))?;
            if context.needs_pull_request_lookup() {
                if let Some(head) = cache_grant::RunContext::head_label(&run) {
                    let pulls = github.pulls_with_head(&repo, &head).await?;
                    context.pull_request = pulls.iter().find_map(cache_grant::pull_request_ref);
                }
            }
            Ok::<_, Error>(context)
        };
        match tokio::time::timeout(Duration::from_secs(10), lookup).await {
            Ok(Ok(context)) => {
                if let Ok(mut known) = self.run_contexts.lock() {
                    // Runs are short-lived; a bound keeps the map from growing forever.
                    if known.len() >= 10_000 {
                        known.clear();
                    }
                    known.insert(run_id, context.clone());
                }
                Some(context)
            }
            Ok(Err(error)) => {
                tracing::warn!(job_id = job.id, run_id, %error, "no workflow run context: the job's cache token is read-only");
                None
            }
            Err(_) => {
                tracing::warn!(
                    job_id = job.id,
                    run_id,
                    "GitHub took too long for the workflow run: the job's cache token is read-only"
                );
                None
            }
        }
    }

    /// A log ingest token for `lease`: its job's lines only, under its org,
    /// repository and agent, numbered from the lease's `log_seq_base`; valid for the
    /// job's timeout plus an hour (lines are shipped after the job ends).
    pub fn mint_ingest_token(&self, lease: &crate::domain::Lease) -> Option<String> {
        let job = &lease.job;
        let scope = crate::auth::IngestScope {
            job_id: job.id,
            org_id: job.org_id,
            repo_id: job.repo_id,
            agent_id: job.agent_id.clone().unwrap_or_default(),
            seq_base: lease.log_seq_base,
        };
        let ttl = Duration::from_secs(u64::from(job.spec.timeout_minutes) * 60 + 3600);
        match self.keys.mint_ingest(&scope, ttl) {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::warn!(job_id = job.id, %error, "no log ingest token for this job");
                None
            }
        }
    }

    /// The name of the just-in-time runner of `job`'s lease `fencing_token`.
    pub fn runner_name(job_id: crate::domain::JobId, fencing_token: i64) -> String {
        format!("nimbus-{job_id}-{fencing_token}")
    }

    /// The just-in-time runner config for `job`'s current lease, registered with
    /// GitHub on first request (labels: the job's own plus `nimbus-job-<id>`, so the
    /// runner can only match this job's label set).
    async fn jit_config(&self, job: &Job) -> Result<JitConfig> {
        let github = self.github.as_ref().ok_or_else(|| {
            Error::Unavailable(
                "GitHub is not configured: set NIMBUS_GITHUB_APP_ID and its key, or NIMBUS_GITHUB_TOKEN".into(),
            )
        })?;
        let key = (job.id, job.fencing_token);
        if let Ok(configs) = self.runner_configs.lock() {
            if let Some(config) = configs.get(&key) {
                return Ok(config.clone());
            }
        }
        let installation = job.github.as_ref().and_then(|g| g.installation_id);
        let repo = RepoRef::parse(&job.repo, installation)?;
        let mut labels: Vec<String> = job
            .labels
            .iter()
            .filter(|label| !label.is_empty())
            .take(99)
            .cloned()
            .collect();
        labels.push(format!("nimbus-job-{}", job.id));
        let config = github
            .generate_jit_config(
                &repo,
                &Self::runner_name(job.id, job.fencing_token),
                &labels,
            )
            .await?;
        if let Ok(mut configs) = self.runner_configs.lock() {
            // Configs of finished leases are dropped as they finish; bound it anyway.
            if configs.len() > 10_000 {
                configs.clear();
            }
            configs.insert(key, config.clone());
        }
        Ok(config)
    }

    /// Removes the runner of `job`'s lease `fencing_token` from GitHub in the
    /// background (idempotent; a runner GitHub already removed is fine).
    pub fn remove_runner(&self, job: &Job, fencing_token: i64) {
        if let Ok(mut configs) = self.runner_configs.lock() {
            configs.remove(&(job.id, fencing_token));
        }
        let (Some(github), Some(reference)) = (self.github.clone(), job.github.as_ref()) else {
            return;
        };
        let Ok(repo) = RepoRef::parse(&job.repo, reference.installation_id) else {
            return;
        };
        let name = Self::runner_name(job.id, fencing_token);
        let job_id = job.id;
        tokio::spawn(async move {
            match github.delete_runner_named(&repo, &name).await {
                Ok(true) => {
                    tracing::info!(job_id, runner = %name, "removed the job's runner from GitHub")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(job_id, runner = %name, %error, "removing the job's runner from GitHub failed")
                }
            }
        });
    }

    /// Asks long-polls and the reaper to finish (graceful shutdown).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// The admission policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(policy) => policy.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the policy file. On failure the previous policy stays in force,
    /// and the error (with line and column) is logged and counted.
    pub fn reload_policy(&self) -> Result<()> {
        let Some(path) = &self.config.policy_path else {
            return Ok(());
        };
        match Policy::from_path(path) {
            Ok(policy) => {
                tracing::info!(
                    path = %path.display(),
                    rules = policy.rule_count(),
                    dry_run = policy.dry_run(),
                    "admission policy loaded"
                );
                let policy = Arc::new(policy);
                match self.policy.write() {
                    Ok(mut slot) => *slot = policy,
                    Err(poisoned) => *poisoned.into_inner() = policy,
                }
                Ok(())
            }
            Err(e) => {
                let message = nimbus_policy::describe_error(&path.display().to_string(), &e);
                self.metrics.policy_reload_errors.inc();
                tracing::error!(error = %message, "policy reload failed; the previous policy stays in force");
                Err(Error::invalid(message))
            }
        }
    }

    /// Whether the org is registered (cached after the first yes).
    pub async fn org_exists(&self, org_id: OrgId) -> Result<bool> {
        if self
            .known_orgs
            .read()
            .map(|known| known.contains(&org_id))
            .unwrap_or(false)
        {
            return Ok(true);
        }
        let exists = self.store.get_org(org_id).await?.is_some();
        if exists {
            self.remember_org(org_id);
        }
        Ok(exists)
    }

    pub(crate) fn remember_org(&self, org_id: OrgId) {
        if let Ok(mut known) = self.known_orgs.write() {
            known.insert(org_id);
        }
    }

    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The HTTP API, route by route, with who may call each (docs/api.md,
/// docs/security.md). [`router`] is built from this table alone.
pub fn routes() -> Vec<Route<AppState>> {
    use crate::route::Foreign;
    let token = |admin, org, agent, foreign| Access::Token {
        admin,
        org,
        agent,
        foreign,
    };
    vec![
        Route::post(
            "/webhooks/github",
            Access::GithubSignature,
            http::webhooks::github,
        ),
        Route::post(
            "/api/orgs",
            token(true, false, false, Foreign::NotFound),
            http::jobs::upsert_org,
        ),
        Route::get(
            "/api/orgs",
            token(true, true, false, Foreign::Filtered),
            http::jobs::list_orgs,
        ),
        Route::post(
            "/api/jobs",
            token(true, true, false, Foreign::NotFound),
            http::jobs::submit,
        ),
        Route::get(
            "/api/jobs",
            token(true, true, false, Foreign::Filtered),
            http::jobs::list,
        ),
        Route::post(
            "/api/jobs/lease",
            token(true, false, true, Foreign::Filtered),
            http::jobs::lease,
        ),
        Route::get(
            "/api/jobs/{id}",
            token(true, true, true, Foreign::NotFound),
            http::jobs::get,
        ),
        Route::post(
            "/api/jobs/{id}/heartbeat",
            token(true, false, true, Foreign::Conflict),
            http::jobs::heartbeat,
        ),
        Route::post(
            "/api/jobs/{id}/complete",
            token(true, false, true, Foreign::Conflict),
            http::jobs::complete,
        ),
        Route::post(
            "/api/jobs/{id}/cancel",
            token(true, true, false, Foreign::NotFound),
            http::jobs::cancel,
        ),
        Route::get(
            "/api/jobs/{id}/runner-config",
            token(true, false, true, Foreign::Conflict),
            http::jobs::runner_config,
        ),
        Route::get(
            "/api/jobs/{id}/workspace",
            token(true, false, true, Foreign::Conflict),
            http::jobs::job_workspace,
        ),
        Route::put(
            "/api/workspaces/{sha256}",
            token(true, true, false, Foreign::NotFound),
            http::jobs::put_workspace,
        )
        .body_limit(MAX_WORKSPACE_BYTES),
        Route::get(
            "/api/analytics/metadata",
            token(true, true, false, Foreign::NotFound),
            http::jobs::metadata_values,
        ),
        Route::get(
            "/api/observability/orgs",
            token(true, true, false, Foreign::NotFound),
            http::analytics::orgs,
        ),
        Route::get(
            "/api/jobs/metadata/presets",
            token(true, true, false, Foreign::Filtered),
            http::analytics::presets,
        ),
        Route::get(
            "/api/jobs/metadata/histogram",
            token(true, true, false, Foreign::NotFound),
            http::analytics::histogram,
        ),
        Route::get(
            "/api/jobs/metadata/trend",
            token(true, true, false, Foreign::NotFound),
            http::analytics::trend,
        ),
        Route::get(
            "/api/jobs/summary",
            token(true, true, false, Foreign::NotFound),
            http::analytics::summary,
        ),
        // The dashboard (docs/dashboard.md): a signed-in org or admin (cookie or
        // bearer); the page, the log relay, sign-in and sign-out, the assets.
        Route::get(
            "/dashboard",
            token(true, true, false, Foreign::Filtered),
            dashboard::dashboard,
        ),
        Route::get(
            "/dashboard/jobs/{id}/log",
            token(true, true, false, Foreign::NotFound),
            dashboard::follow_log,
        ),
        Route::post("/dashboard/login", Access::DashboardLogin, dashboard::login),
        Route::post("/dashboard/logout", Access::Public, dashboard::logout),
        Route::get("/dashboard/assets/{file}", Access::Public, dashboard::asset),
        Route::get("/healthz", Access::Public, healthz),
        Route::get("/readyz", Access::Public, readyz),
        Route::get("/metrics", Access::Metrics, metrics_text),
    ]
}

/// The HTTP API. See docs/api.md.
pub fn router(state: AppState) -> Router {
    crate::route::router(routes())
        .fallback(|| async { Error::not_found("route") })
        .method_not_allowed_fallback(|| async {
            (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                Json(serde_json::json!({"error": "method not allowed", "code": "method_not_allowed"})),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), record_request))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = crate::telemetry::method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // Each request is a span (the root of a webhook's or submission's job trace).
    let span = tracing::info_span!("http.request", http.method = method, http.route = %route);
    let response = next.run(request).instrument(span).await;
    let metrics = &state.metrics;
    metrics
        .http_requests
        .with_label_values(&[method, &route, response.status().as_str()])
        .inc();
    metrics
        .http_request_duration
        .with_label_values(&[method, &route])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>> {
    state
        .store
        .ping()
        .await
        .map_err(|e| Error::Unavailable(format!("store not ready: {e}")))?;
    Ok(Json(
        serde_json::json!({"status": "ready", "store": state.store.backend()}),
    ))
}

/// `/metrics`: open to loopback peers; others need the metrics token.
async fn metrics_text(State(state): State<AppState>, request: Request) -> Result<Response> {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let origin = state.config.trusted_proxies.origin(peer, request.headers());
    let token = state.config.metrics_token.as_ref();
    if !crate::auth::metrics_access_allowed(origin, request.headers(), token) {
        return Err(Error::Unauthenticated(
            "metrics need Authorization: Bearer $NIMBUS_CONTROL_PLANE_METRICS_TOKEN from non-loopback peers".into(),
        ));
    }
    match state.store.count_by_status().await {
        Ok(counts) => state.metrics.set_job_counts(&counts),
        Err(e) => tracing::warn!(error = %e, "could not count jobs for metrics"),
    }
    let body = state.metrics.render()?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response())
}

/// One reaper sweep: expired leases back to the queue (or failed), old delivery ids
/// forgotten. Every replica runs it; the store makes each sweep idempotent.
pub async fn reap_once(state: &ControlPlane) -> Result<()> {
    let now = state.now();
    let report = state
        .store
        .reap_expired(now, state.config.max_attempts)
        .await?;
    if !report.requeued.is_empty() {
        state
            .metrics
            .leases_expired
            .with_label_values(&["requeued"])
            .inc_by(report.requeued.len() as u64);
        tracing::info!(jobs = ?report.requeued, "expired leases returned to the queue");
        state.job_available.notify_waiters();
    }
    if !report.failed.is_empty() {
        state
            .metrics
            .leases_expired
            .with_label_values(&["failed"])
            .inc_by(report.failed.len() as u64);
        tracing::warn!(jobs = ?report.failed, "jobs failed: leases expired on their last attempt");
    }
    // The runners of expired GitHub leases will never be used by their agents:
    // remove them (the next lease registers a new one).
    if state.github.is_some() {
        for id in report.requeued.iter().chain(&report.failed) {
            if let Some(job) = state.store.get_job(*id).await? {
                if job.github.is_some() {
                    state.remove_runner(&job, job.fencing_token);
                }
            }
        }
    }
    // Deliveries older than twice the tolerance can never be accepted again anyway
    // (their events are too old), so forgetting them is safe.
    let forget_before = now - state.config.webhook_tolerance * 2;
    state.store.prune_deliveries(forget_before).await?;
    let pruned = state.prune_workspaces().await?;
    if pruned > 0 {
        tracing::info!(pruned, "workspace archives past their day forgotten");
    }
    Ok(())
}

async fn reaper_loop(state: AppState) {
    let mut shutdown = state.shutdown.subscribe();
    loop {
        if let Err(e) = reap_once(&state).await {
            tracing::warn!(error = %e, "reaper sweep failed; retrying next interval");
        }
        tokio::select! {
            _ = tokio::time::sleep(state.config.reaper_interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Reloads the policy when its file changes (size or modification time, checked
/// every 2 s) and on SIGHUP.
async fn policy_watch_loop(state: AppState) {
    let Some(path) = state.config.policy_path.clone() else {
        return;
    };
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut last = stamp(&path);
    let mut shutdown = state.shutdown.subscribe();
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
            }
            _ = sighup => tracing::info!("SIGHUP: reloading the admission policy"),
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let _ = state.reload_policy();
    }
}

/// Serves the API on `listener` and runs the reaper, until `shutdown` resolves;
/// then stops accepting, ends long-polls, and waits for in-flight requests.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let reaper = tokio::spawn(reaper_loop(state.clone()));
    let policy_watch = tokio::spawn(policy_watch_loop(state.clone()));
    let reconciler = tokio::spawn(reconcile::reconcile_loop(state.clone()));
    let analytics = tokio::spawn(analytics::analytics_loop(state.clone()));
    let stopping = state.clone();
    let result = crate::serve::serve(
        listener,
        router(state.clone()),
        crate::serve::HttpLimits::default(),
        async move {
            shutdown.await;
            stopping.begin_shutdown();
        },
    )
    .await
    .map_err(|e| Error::io("serving HTTP", e));
    state.begin_shutdown();
    let _ = reaper.await;
    let _ = policy_watch.await;
    let _ = reconciler.await;
    let _ = analytics.await;
    result
}

/// Opens the store from config, binds the listen address and serves until SIGTERM
/// or Ctrl-C.
pub async fn run(config: ControlPlaneConfig) -> Result<()> {
    let store = store::open(&config.database_url, config.database_max_connections).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("binding {}", config.listen), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    tracing::info!(
        address = %local,
        store = store.backend(),
        database = %crate::db::redact_url(&config.database_url),
        "nimbus-control-plane listening"
    );
    if config.webhook_secret.is_none() {
        tracing::warn!(
            "NIMBUS_GITHUB_WEBHOOK_SECRET is not set: POST /webhooks/github answers 503"
        );
    }
    let state = ControlPlane::new(config, store)?;
    serve(state, listener, crate::service::shutdown_signal()).await
}

/// Polls for a lease until one is granted, `wait` passes, or shutdown begins.
async fn lease_with_wait(
    state: &ControlPlane,
    request: &store::LeaseRequest,
    wait: Duration,
) -> Result<Option<crate::domain::Lease>> {
    // Other replicas' enqueues cannot wake us, so poll at least this often.
    const POLL: Duration = Duration::from_millis(250);
    let deadline = tokio::time::Instant::now() + wait;
    let mut shutdown = state.shutdown.subscribe();
    loop {
        let notified = state.job_available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(lease) = state
            .scheduler
            .lease(state.store.as_ref(), request, state.now())
            .await?
        {
            return Ok(Some(lease));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || *shutdown.borrow() {
            return Ok(None);
        }
        let nap = (deadline - now).min(POLL);
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(nap) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
        }
    }
}
