//! The cache proxy service (`bins/nimbus-cache-proxy`, port 8001).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /twirp/github.actions.results.api.v1.CacheService/*` | cache token | Actions cache v2 |
//! | `PUT /_blob/upload/{id}` (`comp=block`, `comp=blocklist`) | signed link | Azure Blob subset the v2 client uploads with |
//! | `GET /_blob/download/{id}` | signed link | entry bytes (Range supported) |
//! | `/_apis/artifactcache/*` | cache token | Actions cache v1 |
//! | `PUT/GET/HEAD/DELETE /api/cache/{key}` | cache token (write for PUT, DELETE) | plain artifact API |
//! | `GET /api/usage` | cache token (its org) or JWT | bytes, entries, hits, misses, evictions per org |
//! | `GET /v2/`, `GET /v2/token`, `GET /v2/_catalog` | registry credentials | OCI registry: version check, token exchange, catalog |
//! | `GET/HEAD/PUT/POST/PATCH/DELETE /v2/{name}/…` | registry credentials | manifests, blobs, uploads, tags (docs/registry.md) |
//! | `GET /healthz`, `GET /metrics` | anyone / loopback or metrics token | |

pub mod artifact;
pub mod config;
mod error;

pub use config::{BackendConfig, ProxyConfig, S3Config};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use nimbus_core::auth::JwtKeys;
use nimbus_core::cache_token::{CacheScope, CacheTokenKeys};
use nimbus_core::route::{Access, Route};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::actions::{blob, v1, v2};
use crate::backend::{fs::FsBackend, ByteRange, ByteStream, CacheBackend};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::index::{CacheIndex, Entry};
use crate::metrics::Metrics;
use crate::registry::{self, Authority, Registry, RegistryIndex};

/// Largest body of the JSON routes (reserve, commit, Twirp calls, manifests);
/// larger ones are answered 413. Entry and blob bodies stream and are bounded by
/// the cache budget instead ([`STREAMED_ROUTES`]).
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// The routes whose bodies stream to storage, bounded by the entry's declared
/// size and the cache budget rather than [`MAX_JSON_BODY`] (method, path).
pub const STREAMED_ROUTES: &[(&str, &str)] = &[
    ("PUT", "/_blob/upload/{id}"),
    ("PATCH", "/_apis/artifactcache/caches/{id}"),
    ("PUT", "/api/cache/{*key}"),
    ("PATCH", "/v2/{*path}"),
    ("POST", "/v2/{*path}"),
];

/// Shared state of the proxy.
#[derive(Clone)]
pub struct Proxy {
    /// The Actions cache and artifact entries: backend, index, metrics, limits.
    pub cache: Cache,
    /// Verifies cache tokens and signs/verifies upload and download links.
    pub tokens: CacheTokenKeys,
    /// Verifies the control plane's JWTs (API tokens).
    pub jwt: JwtKeys,
    /// Fired after commits so eviction runs while the budget is exceeded.
    pub wake_maintenance: Arc<Notify>,
    public_url: Option<String>,
    link_ttl_secs: i64,
    metrics_token: Option<nimbus_core::Secret>,
    trusted_proxies: nimbus_core::forwarded::TrustedProxies,
    registry: Option<Registry>,
}

impl Proxy {
    /// The proxy of `config` over an opened `backend` and cache `index`, with
    /// fresh metrics and no registry (see [`Proxy::with_registry`]).
    pub fn new(
        config: &ProxyConfig,
        backend: Arc<dyn CacheBackend>,
        index: CacheIndex,
    ) -> Result<Self> {
        Ok(Proxy {
            cache: Cache {
                backend,
                index,
                metrics: Metrics::new()?,
                limits: config.limits(),
            },
            tokens: CacheTokenKeys::new(&config.shared_secret),
            jwt: JwtKeys::new(&config.jwt_secret),
            wake_maintenance: Arc::new(Notify::new()),
            public_url: config.public_url.clone(),
            link_ttl_secs: i64::try_from(config.link_ttl.as_secs()).unwrap_or(86_400),
            metrics_token: config.metrics_token.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            registry: None,
        })
    }

    /// Serves the OCI registry too, over `index` and this proxy's backend.
    pub fn with_registry(mut self, config: &ProxyConfig, index: RegistryIndex) -> Result<Self> {
        let authority = Authority::new(self.jwt.clone(), self.tokens.clone());
        self.registry = Some(Registry::new(
            self.cache.backend.clone(),
            index,
            authority,
            config.registry.clone(),
            self.cache.metrics.clone(),
        )?);
        Ok(self)
    }

    /// The OCI registry, when this proxy serves one.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    /// Base URL for links handed to clients: the configured one, else what the
    /// client used to reach us.
    pub(crate) fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')
                    })
            })
            .unwrap_or("127.0.0.1:8001");
        format!("http://{host}")
    }

    /// A link to upload or download entry `id` that needs no bearer token.
    pub(crate) fn signed_link(&self, headers: &HeaderMap, operation: &str, id: i64) -> String {
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() + self.link_ttl_secs;
        let signature = self.tokens.sign_url(&format!("{operation}:{id}:{expires}"));
        format!(
            "{}/_blob/{operation}/{id}?exp={expires}&sig={signature}",
            self.base_url(headers)
        )
    }

    /// Checks a signed link's expiry and signature.
    pub(crate) fn check_link(
        &self,
        operation: &str,
        id: i64,
        expires: i64,
        signature: &str,
    ) -> Result<()> {
        if expires < time::OffsetDateTime::now_utc().unix_timestamp() {
            return Err(Error::Unauthenticated("this cache link has expired".into()));
        }
        if !self
            .tokens
            .verify_url(&format!("{operation}:{id}:{expires}"), signature)
        {
            return Err(Error::Unauthenticated(
                "this cache link's signature does not verify".into(),
            ));
        }
        Ok(())
    }
}

/// The verified cache token of a request (`Authorization: Bearer nct1.…`).
pub struct CacheAuth(pub CacheScope);

impl FromRequestParts<Proxy> for CacheAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Proxy) -> Result<Self, Error> {
        let token = nimbus_core::auth::bearer_token(&parts.headers).ok_or_else(|| {
            Error::Unauthenticated("missing Authorization: Bearer <cache token>".into())
        })?;
        Ok(CacheAuth(state.tokens.verify(token)?))
    }
}

/// A request body as a [`ByteStream`].
pub(crate) fn body_stream(body: Body) -> ByteStream {
    Box::pin(
        body.into_data_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other)),
    )
}

/// A `Range` no byte of the object satisfies (416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parses `Range: bytes=S-E | S- | -N` against an object of `size` bytes.
/// `Ok(None)`: no (or an ignorable) Range header; `Err`: unsatisfiable. Any
/// header gets an answer, never a panic (fuzzed).
pub fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<ByteRange>, Unsatisfiable> {
    let Some(raw) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = raw.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // multipart ranges: answer the whole object, as allowed
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| Unsatisfiable)?;
            if n == 0 {
                return Err(Unsatisfiable);
            }
            (size.saturating_sub(n), size)
        }
        (start, "") => (start.parse().map_err(|_| Unsatisfiable)?, size),
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| Unsatisfiable)?;
            let end: u64 = end.parse().map_err(|_| Unsatisfiable)?;
            if end < start {
                return Err(Unsatisfiable);
            }
            (start, end.saturating_add(1).min(size))
        }
    };
    if start >= size {
        return Err(Unsatisfiable);
    }
    Ok(Some(ByteRange { start, end }))
}

/// Streams a committed entry, honouring `Range`; `head_only` sends headers alone.
pub(crate) async fn serve_entry(
    state: &Proxy,
    entry: &Entry,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Response> {
    let range = match parse_range(headers, entry.size) {
        Ok(range) => range,
        Err(Unsatisfiable) => {
            let mut response = Error::InvalidInput(format!(
                "the requested range is outside the entry's {} bytes",
                entry.size
            ))
            .into_response();
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", entry.size)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let (status, length) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, entry.size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::ETAG,
            format!("\"{}\"", entry.sha256.as_deref().unwrap_or("")),
        )
        .header("x-ms-blob-type", "BlockBlob");
    if let Some(r) = range {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!(
                "bytes {}-{}/{}",
                r.start,
                r.end.saturating_sub(1),
                entry.size
            ),
        );
    }
    let body = if head_only {
        Body::empty()
    } else {
        let reader = state.cache.open(entry, range).await?;
        let downloaded = state.cache.metrics.bytes_downloaded.clone();
        Body::from_stream(reader.body.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                downloaded.inc_by(chunk.len() as u64);
            }
        }))
    };
    builder
        .body(body)
        .map_err(|e| Error::Backend(format!("building a response: {e}")))
}

/// The proxy's API, route by route, with who may call each (docs/cache.md,
/// docs/security.md). [`router`] is built from this table alone.
pub fn routes() -> Vec<Route<Proxy>> {
    let read = Access::CacheToken { write: false };
    let write = Access::CacheToken { write: true };
    vec![
        Route::post(
            "/twirp/github.actions.results.api.v1.CacheService/{method}",
            read,
            v2::twirp,
        ),
        Route::put("/_blob/upload/{id}", Access::CacheLink, blob::upload),
        Route::get("/_blob/download/{id}", Access::CacheLink, blob::download),
        Route::get("/_apis/artifactcache/cache", read, v1::lookup),
        Route::get("/_apis/artifactcache/caches", read, v1::list),
        Route::post("/_apis/artifactcache/caches", write, v1::reserve),
        Route::patch("/_apis/artifactcache/caches/{id}", write, v1::upload_chunk),
        Route::post("/_apis/artifactcache/caches/{id}", write, v1::commit),
        Route::put("/api/cache/{*key}", write, artifact::put),
        Route::get("/api/cache/{*key}", read, artifact::get),
        Route::delete("/api/cache/{*key}", write, artifact::delete),
        Route::get("/api/usage", Access::CacheUsage, artifact::usage),
        Route::get("/v2/", Access::Registry, registry::http::base),
        Route::get("/v2/token", Access::Registry, registry::http::token),
        Route::get("/v2/_catalog", Access::Registry, registry::http::catalog),
        Route::get("/v2/{*path}", Access::Registry, registry::http::dispatch),
        Route::head("/v2/{*path}", Access::Registry, registry::http::dispatch),
        Route::put("/v2/{*path}", Access::Registry, registry::http::dispatch),
        Route::post("/v2/{*path}", Access::Registry, registry::http::dispatch),
        Route::patch("/v2/{*path}", Access::Registry, registry::http::dispatch),
        Route::delete("/v2/{*path}", Access::Registry, registry::http::dispatch),
        Route::get("/healthz", Access::Public, || async { "ok" }),
        Route::get("/metrics", Access::Metrics, metrics_endpoint),
    ]
}

/// The proxy's HTTP service: every route of [`routes`], a JSON 404 for the
/// rest, a 1 MiB limit on buffered (JSON) bodies, and request metrics.
pub fn router(state: Proxy) -> Router {
    nimbus_core::route::router(routes())
        .fallback(|| async { Error::NotFound("route".into()) })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(state): State<Proxy>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.cache.metrics;
    metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    metrics
        .request_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `/metrics`: open to loopback peers; others need the metrics token.
async fn metrics_endpoint(State(state): State<Proxy>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let origin = state.trusted_proxies.origin(peer, request.headers());
    let token = state.metrics_token.as_ref();
    if !nimbus_core::auth::metrics_access_allowed(origin, request.headers(), token) {
        return Error::Unauthenticated(
            "metrics need Authorization: Bearer $NIMBUS_CACHE_PROXY_METRICS_TOKEN from non-loopback peers".into(),
        )
        .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.cache.metrics.render(),
    )
        .into_response()
}

/// Opens the configured backend.
pub async fn open_backend(config: &ProxyConfig) -> Result<Arc<dyn CacheBackend>> {
    match &config.backend {
        BackendConfig::Fs { root } => Ok(Arc::new(FsBackend::open(root.clone())?)),
        #[cfg(feature = "s3")]
        BackendConfig::S3(s3) => Ok(Arc::new(crate::backend::s3::S3Backend::connect(s3).await?)),
        #[cfg(not(feature = "s3"))]
        BackendConfig::S3(_) => Err(Error::Config {
            variable: "NIMBUS_CACHE_BACKEND".into(),
            message: "this build has no S3 support (feature `s3`)".into(),
        }),
    }
}

/// Serves on `listener` until `shutdown` resolves, with maintenance in the background.
pub async fn serve(
    config: &ProxyConfig,
    state: Proxy,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let maintenance = tokio::spawn(crate::maintenance::run(
        state.cache.clone(),
        config.budgets,
        config.eviction_interval,
        config.scrub_interval,
        state.wake_maintenance.clone(),
    ));
    let collector = state
        .registry()
        .cloned()
        .map(|registry| tokio::spawn(registry::gc::run(registry, config.eviction_interval)));
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
    maintenance.abort();
    if let Some(collector) = collector {
        collector.abort();
    }
    result
}

/// The proxy of `config`: its backend, cache index and registry (index) opened.
pub async fn open(config: &ProxyConfig) -> Result<Proxy> {
    let backend = open_backend(config).await?;
    let index = CacheIndex::open(&config.index_url).await?;
    let registry_index = RegistryIndex::open(&config.registry_index_url).await?;
    Proxy::new(config, backend, index)?.with_registry(config, registry_index)
}

/// Opens backend and indexes, binds the address and serves until SIGTERM or Ctrl-C.
pub async fn run(config: ProxyConfig) -> Result<()> {
    let state = open(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            context: format!("binding {}", config.listen),
            source,
        })?;
    tracing::info!(address = %config.listen, backend = state.cache.backend.name(), "nimbus-cache-proxy listening");
    serve(
        &config,
        state,
        listener,
        nimbus_core::service::shutdown_signal(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Result<Option<ByteRange>, Unsatisfiable> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).expect("header"));
        parse_range(&headers, size)
    }

    #[test]
    fn ranges_are_parsed_and_clamped() {
        assert_eq!(
            range("bytes=0-9", 100),
            Ok(Some(ByteRange { start: 0, end: 10 }))
        );
        assert_eq!(
            range("bytes=90-", 100),
            Ok(Some(ByteRange {
                start: 90,
                end: 100
            }))
        );
        assert_eq!(
            range("bytes=-5", 100),
            Ok(Some(ByteRange {
                start: 95,
                end: 100
            }))
        );
        assert_eq!(
            range("bytes=50-500", 100),
            Ok(Some(ByteRange {
                start: 50,
                end: 100
            }))
        );
        assert_eq!(range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(range("bytes=9-3", 100), Err(Unsatisfiable));
        assert_eq!(range("bytes=x-3", 100), Err(Unsatisfiable));
        assert_eq!(range("items=0-3", 100), Ok(None));
    }
}
