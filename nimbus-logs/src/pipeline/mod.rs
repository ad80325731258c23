//! The logging pipeline service (`bins/nimbus-logging-pipeline`, port 8002).
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /api/logs` | a lease's ingest token, admin | lines (JSON array or NDJSON); 200 when durable, 503 + Retry-After when saturated |
//! | `GET /api/logs` | org (its own), admin | `job_id`, `limit`, `level`, `since`, `after_seq`, `order` |
//! | `GET /api/logs/{job_id}/follow` | org (its own), admin | Server-Sent Events, backlog then live; bounded in number and time |
//! | `POST /api/metadata` | admin (the control plane) | job metadata rows |
//! | `GET /api/metadata/{job_id}` | org (its own), admin | a job's metadata |
//! | `GET /api/stats` | org (its own), admin | lines, bytes, per level, per org, last ingest |
//! | `GET /healthz`, `GET /metrics` | anyone / loopback or metrics token | |

mod api;
pub mod config;
mod ingest;
pub mod metrics;

pub use config::{Backend, FollowLimits, PipelineConfig};
pub use ingest::Ingestor;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use nimbus_core::auth::JwtKeys;
use nimbus_core::route::{Access, Route};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use self::metrics::Metrics;
use crate::error::{Error, Result};
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::sqlite::SqliteSink;
use crate::sink::LogSink;

/// Largest request body of every route (a batch of 100,000 short lines fits);
/// larger ones are answered 413 before more is read.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Shared state of the service.
#[derive(Clone)]
pub struct Pipeline {
    /// Where lines and metadata are stored.
    pub sink: Arc<dyn LogSink>,
    /// Buffers ingested lines and answers each request once its lines are durable.
    pub ingestor: Ingestor,
    /// Verifies bearer tokens: org and admin tokens, and leases' ingest tokens.
    pub keys: JwtKeys,
    /// The service's Prometheus metrics.
    pub metrics: Metrics,
    /// Notified after each batch is written, so live follows look at once instead of
    /// waiting for their next poll.
    pub wake: Arc<Notify>,
    /// Admits live follows within their bounds.
    pub follows: FollowGate,
    metrics_token: Option<nimbus_core::Secret>,
    trusted_proxies: nimbus_core::forwarded::TrustedProxies,
}

/// Counts live follows, all together and per org (admins share one count).
#[derive(Clone)]
pub struct FollowGate {
    /// The bounds it enforces.
    pub limits: FollowLimits,
    open: Arc<std::sync::Mutex<std::collections::HashMap<Option<u64>, usize>>>,
}

/// One admitted follow; dropping it (the client went away, the stream ended)
/// gives its place back.
pub struct FollowPermit {
    org: Option<u64>,
    open: Arc<std::sync::Mutex<std::collections::HashMap<Option<u64>, usize>>>,
}

impl FollowGate {
    /// A gate with no follows open.
    pub fn new(limits: FollowLimits) -> Self {
        FollowGate {
            limits,
            open: Arc::default(),
        }
    }

    /// A place for one more follow by `org` (`None`: an admin), or `TooMany`.
    pub fn admit(&self, org: Option<u64>) -> Result<FollowPermit> {
        let mut open = match self.open.lock() {
            Ok(open) => open,
            Err(poisoned) => poisoned.into_inner(),
        };
        let total: usize = open.values().sum();
        if total >= self.limits.max_total {
            return Err(Error::TooMany(format!(
                "{total} live follows are open, the most this pipeline serves; try again later"
            )));
        }
        let mine = open.entry(org).or_insert(0);
        if *mine >= self.limits.max_per_org {
            return Err(Error::TooMany(format!(
                "you have {mine} live follows open, the most allowed; close one first"
            )));
        }
        *mine += 1;
        Ok(FollowPermit {
            org,
            open: self.open.clone(),
        })
    }

    /// Follows open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .map(|open| open.values().sum())
            .unwrap_or(0)
    }
}

impl Drop for FollowPermit {
    fn drop(&mut self) {
        let mut open = match self.open.lock() {
            Ok(open) => open,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(count) = open.get_mut(&self.org) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.org);
            }
        }
    }
}

impl Pipeline {
    /// The service around `sink` (spawns the flusher on the current runtime).
    pub fn new(config: &PipelineConfig, sink: Arc<dyn LogSink>) -> Result<Self> {
        let metrics = Metrics::new()?;
        let wake = Arc::new(Notify::new());
        let ingestor = Ingestor::spawn(
            sink.clone(),
            config.max_buffered_lines,
            config.flush_lines,
            config.flush_interval,
            wake.clone(),
            metrics.clone(),
        );
        Ok(Pipeline {
            sink,
            ingestor,
            keys: JwtKeys::new(&config.jwt_secret),
            metrics,
            wake,
            follows: FollowGate::new(config.follow),
            metrics_token: config.metrics_token.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
        })
    }
}

/// Opens the configured sink (creating tables if missing).
pub async fn open_sink(config: &PipelineConfig) -> Result<Arc<dyn LogSink>> {
    Ok(match &config.backend {
        Backend::Sqlite { path } => Arc::new(SqliteSink::open(path).await?),
        Backend::ClickHouse(clickhouse) => Arc::new(ClickHouseSink::connect(clickhouse).await?),
    })
}

/// The pipeline's API, route by route, with who may call each (docs/logging.md,
/// docs/security.md). [`router`] is built from this table alone.
pub fn routes() -> Vec<Route<Pipeline>> {
    use nimbus_core::route::Foreign;
    let reader = |foreign| Access::Token {
        admin: true,
        org: true,
        agent: false,
        foreign,
    };
    vec![
        Route::post("/api/logs", Access::LogIngest, api::ingest),
        Route::get("/api/logs", reader(Foreign::Filtered), api::query),
        Route::get(
            "/api/logs/{job_id}/follow",
            reader(Foreign::Filtered),
            api::follow_job,
        ),
        Route::post(
            "/api/metadata",
            Access::Token {
                admin: true,
                org: false,
                agent: false,
                foreign: Foreign::Filtered,
            },
            api::ingest_metadata,
        ),
        Route::get(
            "/api/metadata/{job_id}",
            reader(Foreign::Filtered),
            api::job_metadata,
        ),
        Route::get("/api/stats", reader(Foreign::Filtered), api::stats),
        Route::get("/healthz", Access::Public, || async { "ok" }),
        Route::get("/metrics", Access::Metrics, metrics_endpoint),
    ]
}

/// The HTTP service: [`routes`], plus a JSON 404 for unknown paths, the request body
/// limit and per-route request metrics. Serve it with connect info (as [`serve`] does)
/// so `/metrics` can tell loopback peers.
pub fn router(state: Pipeline) -> Router {
    nimbus_core::route::router(routes())
        .fallback(|| async {
            Error::InvalidInput("no such route".into()).into_response_with(StatusCode::NOT_FOUND)
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

impl Error {
    fn into_response_with(self, status: StatusCode) -> Response {
        let mut response = self.into_response();
        *response.status_mut() = status;
        response
    }
}

async fn count_requests(State(state): State<Pipeline>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `/metrics`: open to loopback peers; others need the metrics token.
async fn metrics_endpoint(State(state): State<Pipeline>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let origin = state.trusted_proxies.origin(peer, request.headers());
    let token = state.metrics_token.as_ref();
    if !nimbus_core::auth::metrics_access_allowed(origin, request.headers(), token) {
        return Error::Unauthenticated(
            "metrics need Authorization: Bearer $NIMBUS_LOGGING_PIPELINE_METRICS_TOKEN from non-loopback peers".into(),
        )
        .into_response();
    }
    state
        .metrics
        .buffered_lines
        .set(state.ingestor.buffered() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Prunes old lines and metadata now and then (SQLite; ClickHouse has table TTLs).
async fn retention_loop(sink: Arc<dyn LogSink>, log_days: u32, metadata_days: u32) {
    if sink.name() != "sqlite" {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let day = 86_400_000i64;
        match sink.prune(now - i64::from(log_days) * day).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(lines = n, "retention: pruned old log lines"),
            Err(error) => tracing::warn!(%error, "retention: pruning log lines failed"),
        }
        match sink
            .prune_metadata(now - i64::from(metadata_days) * day)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "retention: pruned old metadata"),
            Err(error) => tracing::warn!(%error, "retention: pruning metadata failed"),
        }
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    config: &PipelineConfig,
    state: Pipeline,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let retention = tokio::spawn(retention_loop(
        state.sink.clone(),
        config.log_retention_days,
        config.metadata_retention_days,
    ));
    let result = nimbus_core::serve::serve(
        listener,
        router(state),
        nimbus_core::serve::HttpLimits::default(),
        shutdown,
    )
    .await
    .map_err(|source| Error::Io {
        context: "serving HTTP".into(),
        source,
    });
    retention.abort();
    result
}

/// Opens the sink, binds the address and serves until SIGTERM or Ctrl-C.
pub async fn run(config: PipelineConfig) -> Result<()> {
    let sink = open_sink(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            context: format!("binding {}", config.listen),
            source,
        })?;
    tracing::info!(address = %config.listen, backend = sink.name(), "nimbus-logging-pipeline listening");
    let state = Pipeline::new(&config, sink)?;
    serve(
        &config,
        state,
        listener,
        nimbus_core::service::shutdown_signal(),
    )
    .await
}
