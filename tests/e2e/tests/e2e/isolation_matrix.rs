//! The isolation matrix: every route of the control plane, the cache proxy and
//! the logging pipeline — walked from the services' own route tables, so a new
//! route is covered the day it is added (and fails here until it has a request) —
//! times every kind of credential an attacker may hold: none, expired, `alg:
//! none`, another secret, a token for another service, another org's, another
//! agent's, a read-only cache token. Each answer must be the status the route's
//! declared [`Access`] documents (docs/security.md), and no answer to a foreign
//! caller may carry any of org A's data.
//!
//! Org A owns a job (leased by agent A, with log lines and metadata), a committed
//! cache entry and an unfinished upload; every request below names them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use nimbus_core::auth::{Audience, IngestScope, JwtKeys, Role};
use nimbus_core::cache_token::{CachePermission, CacheTokenKeys, DEFAULT_BRANCH};
use nimbus_core::route::{Access, Foreign};
use nimbus_core::{Env, Secret};
use serde_json::{json, Value};
use tower::ServiceExt;

const JWT_SECRET: &str = "matrix-jwt-secret-0123456789";
const CACHE_SECRET: &str = "matrix-cache-secret-0123456789";
const OTHER_SECRET: &str = "someone-elses-secret-9876543210";

/// Strings only org A's data contains: none may appear in an answer to another.
/// (Cache keys are not secrets: org B may use the same name for its own entry.)
const MARKERS: &[&str] = &[
    "alpha-secret",
    "ALPHA-METADATA",
    "ALPHA-LOG-LINE",
    "ALPHA-CACHE-BYTES",
    "ALPHA-IMAGE",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    NoToken,
    Expired,
    AlgNone,
    OtherSecret,
    OtherAudience,
    OtherOrg,
    OtherAgent,
    ReadOnlyCacheToken,
}

const CASES: [Case; 8] = [
    Case::NoToken,
    Case::Expired,
    Case::AlgNone,
    Case::OtherSecret,
    Case::OtherAudience,
    Case::OtherOrg,
    Case::OtherAgent,
    Case::ReadOnlyCacheToken,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    ControlPlane,
    CacheProxy,
    LoggingPipeline,
}

impl Service {
    fn audience(self) -> Audience {
        match self {
            Service::ControlPlane => Audience::ControlPlane,
            Service::CacheProxy => Audience::CacheProxy,
            Service::LoggingPipeline => Audience::LoggingPipeline,
        }
    }
    fn other_audience(self) -> Audience {
        match self {
            Service::ControlPlane => Audience::LoggingPipeline,
            _ => Audience::ControlPlane,
        }
    }
}

struct World {
    control_plane: Router,
    cache: Router,
    pipeline: Router,
    keys: JwtKeys,
    cache_keys: CacheTokenKeys,
    job_a: i64,
    job_b: i64,
    fencing_a: i64,
    committed_a: i64,
    pending_a: i64,
    _dir: std::path::PathBuf,
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = response.into_body();
    // Live follows never end: take what comes within a moment.
    let mut collected = Vec::new();
    let mut body = body;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        if let Ok(data) = frame.into_data() {
            collected.extend_from_slice(&data);
        }
    }
    (status, String::from_utf8_lossy(&collected).into_owned())
}

fn request(method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(value) => {
            builder = builder.header("content-type", "application/json");
            Body::from(value.to_string())
        }
        None => Body::empty(),
    };
    builder.body(body).expect("request")
}

impl World {
    async fn new() -> World {
        let dir = std::env::temp_dir().join(format!("nimbus-matrix-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let data_dir = dir.display().to_string();
        let env = |extra: &[(&str, &str)]| {
            let mut env = Env::from_map([
                ("NIMBUS_DATA_DIR", data_dir.as_str()),
                ("NIMBUS_JWT_SECRET", JWT_SECRET),
                ("NIMBUS_CACHE_SHARED_SECRET", CACHE_SECRET),
                ("NIMBUS_GITHUB_WEBHOOK_SECRET", "matrix-webhook-secret"),
            ]);
            for (k, v) in extra {
                env.set(*k, *v);
            }
            env
        };

        // Control plane on SQLite.
        let url = format!("sqlite://{}", dir.join("cp.db").display());
        let store = nimbus_core::store::open(&url, 4).await.expect("store");
        let config = nimbus_core::ControlPlaneConfig::from_env(&env(&[])).expect("config");
        let state = nimbus_core::control_plane::ControlPlane::new(config, store).expect("state");
        let control_plane = nimbus_core::control_plane::router(state);

        // Cache proxy on a directory and a SQLite index.
        let proxy_config = nimbus_cache::ProxyConfig::from_env(&env(&[])).expect("proxy config");
        let backend =
            Arc::new(nimbus_cache::backend::fs::FsBackend::open(dir.join("blobs")).expect("fs"));
        let index = nimbus_cache::CacheIndex::open(&dir.join("index.db").display().to_string())
            .await
            .expect("index");
        let registry_index = nimbus_cache::registry::RegistryIndex::open(
            &dir.join("registry.db").display().to_string(),
        )
        .await
        .expect("registry index");
        let proxy = nimbus_cache::Proxy::new(&proxy_config, backend, index)
            .expect("proxy")
            .with_registry(&proxy_config, registry_index)
            .expect("registry");
        plant_image(
            proxy.registry().expect("registry"),
            &JwtKeys::new(&Secret::new(JWT_SECRET)),
        )
        .await;
        let cache = nimbus_cache::server::router(proxy);

        // Logging pipeline on SQLite.
        let pipeline_config =
            nimbus_logs::pipeline::PipelineConfig::from_env(&env(&[])).expect("pipeline config");
        let sink = Arc::new(
            nimbus_logs::sink::sqlite::SqliteSink::open(&dir.join("logs.db"))
                .await
                .expect("sink"),
        );
        let pipeline_state =
            nimbus_logs::pipeline::Pipeline::new(&pipeline_config, sink).expect("pipeline");
        let pipeline = nimbus_logs::pipeline::router(pipeline_state);

        let keys = JwtKeys::new(&Secret::new(JWT_SECRET));
        let cache_keys = CacheTokenKeys::new(&Secret::new(CACHE_SECRET));
        let mut world = World {
            control_plane,
            cache,
            pipeline,
            keys,
            cache_keys,
            job_a: 0,
            job_b: 0,
            fencing_a: 0,
            committed_a: 0,
            pending_a: 0,
            _dir: dir,
        };
        world.populate().await;
        world
    }

    fn token(&self, role: Role, org: Option<i64>, sub: &str) -> String {
        self.keys
            .mint(sub, role, org, Duration::from_secs(600))
            .expect("mint")
    }

    async fn call(
        &self,
        app: &Router,
        method: Method,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        send(app, request(method, uri, Some(token), body)).await
    }

    /// Org A's job (leased by agent A, its lines and metadata), cache entry and
    /// unfinished upload; org B's job, queued.
    async fn populate(&mut self) {
        let admin = self.token(Role::Admin, None, "ops");
        for (id, name) in [(1, "alpha"), (2, "beta")] {
            let (status, _) = self
                .call(
                    &self.control_plane,
                    Method::POST,
                    "/api/orgs",
                    &admin,
                    Some(json!({"id": id, "name": name})),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
        let org_a = self.token(Role::Org, Some(1), "alpha-ci");
        let (status, job) = self
            .call(
                &self.control_plane,
                Method::POST,
                "/api/jobs",
                &org_a,
                Some(json!({"repo": "alpha-secret/app", "labels": ["nimbus", "meta:note=ALPHA-METADATA"],
                            "steps": [{"run": "echo ALPHA"}]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let job: Value = serde_json::from_str(&job).expect("job");
        self.job_a = job["id"].as_i64().expect("id");
        let agent_a = self.token(Role::Agent, None, "agent-a");
        let (status, lease) = self
            .call(
                &self.control_plane,
                Method::POST,
                "/api/jobs/lease",
                &agent_a,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{lease}");
        let lease: Value = serde_json::from_str(&lease).expect("lease");
        assert_eq!(lease["job"]["id"], self.job_a);
        self.fencing_a = lease["fencing_token"].as_i64().expect("token");
        let ingest = lease["ingest_token"]
            .as_str()
            .expect("ingest token")
            .to_string();
        let cache_token = lease["cache_token"]
            .as_str()
            .expect("cache token")
            .to_string();
        // Org B's job, queued (nobody leases it).
        let org_b = self.token(Role::Org, Some(2), "beta-ci");
        let (status, job) = self
            .call(
                &self.control_plane,
                Method::POST,
                "/api/jobs",
                &org_b,
                Some(
                    json!({"repo": "beta/app", "labels": ["gpu-only"], "steps": [{"run": "true"}]}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        self.job_b = serde_json::from_str::<Value>(&job).expect("job")["id"]
            .as_i64()
            .expect("id");

        // A's lines, with the lease's ingest token; A's metadata, as the control plane sends it.
        let line = json!({"job_id": self.job_a, "agent_id": "agent-a", "org_id": 1, "level": "info",
                          "message": "ALPHA-LOG-LINE", "ts": "2026-11-30T10:00:00Z", "seq": 1});
        let (status, body) = self
            .call(
                &self.pipeline,
                Method::POST,
                "/api/logs",
                &ingest,
                Some(json!([line])),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let metadata = json!([{"job_id": self.job_a, "org_id": 1, "key": "note", "value": "ALPHA-METADATA",
                               "ts": "2026-11-30T10:00:00Z"}]);
        let (status, _) = self
            .call(
                &self.pipeline,
                Method::POST,
                "/api/metadata",
                &admin,
                Some(metadata),
            )
            .await;
        assert_eq!(status, StatusCode::OK);

        // A's cache entry (artifact API) and an unfinished upload (v1).
        let response = self
            .cache
            .clone()
            .oneshot(
                Request::builder()
                    .method(Method::PUT)
                    .uri("/api/cache/alpha-cache-key")
                    .header("authorization", format!("Bearer {cache_token}"))
                    .body(Body::from("ALPHA-CACHE-BYTES"))
                    .expect("request"),
            )
            .await
            .expect("put");
        assert!(response.status().is_success(), "{}", response.status());
        let (status, reserved) = self
            .call(
                &self.cache,
                Method::POST,
                "/_apis/artifactcache/caches",
                &cache_token,
                Some(json!({"key": "alpha-cache-key-pending", "version": "v", "cacheSize": 4})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{reserved}");
        self.pending_a = serde_json::from_str::<Value>(&reserved).expect("json")["cacheId"]
            .as_i64()
            .expect("id");
        // The committed entry's id, from a v1 lookup (archiveLocation names it).
        let (status, found) = self
            .call(
                &self.cache,
                Method::GET,
                "/_apis/artifactcache/cache?keys=alpha-cache-key&version=",
                &cache_token,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        let location = serde_json::from_str::<Value>(&found).expect("json")["archiveLocation"]
            .as_str()
            .expect("location")
            .to_string();
        self.committed_a = location
            .split("/_blob/download/")
            .nth(1)
            .and_then(|rest| rest.split('?').next())
            .and_then(|id| id.parse().ok())
            .expect("entry id");
    }

    /// The credential `case` for a route of `service` with `access`.
    fn credential(&self, service: Service, access: Access, case: Case) -> Option<String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let encode = |secret: &str, claims: Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("encode")
        };
        let b64 = |value: &Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        // The role the route takes (what an attacker would present).
        let role = match access {
            Access::Token { org: true, .. } | Access::CacheUsage => Role::Org,
            Access::Token { agent: true, .. } => Role::Agent,
            _ => Role::Admin,
        };
        let org = (role == Role::Org).then_some(1);
        let api_claims = |exp: i64, aud: &str| json!({"sub": "attacker", "role": role, "org_id": org, "aud": [aud], "iat": now - 10, "exp": exp});
        let cache_token = |secret: &str, org: i64, permission, ttl: u64| {
            CacheTokenKeys::new(&Secret::new(secret))
                .mint(
                    org,
                    "alpha-secret/app",
                    DEFAULT_BRANCH,
                    DEFAULT_BRANCH,
                    permission,
                    Duration::from_secs(ttl),
                )
                .expect("cache token")
        };
        let ingest = |secret: &str, job: i64, exp: i64| {
            encode(
                secret,
                json!({"job_id": job, "org_id": 1, "agent_id": "agent-a", "seq_base": 0,
                       "aud": nimbus_core::auth::INGEST_AUDIENCE, "iat": now - 10, "exp": exp}),
            )
        };
        let cache_route = matches!(access, Access::CacheToken { .. });
        let aud = service.audience().as_str();
        Some(match case {
            Case::NoToken => return None,
            Case::Expired => match access {
                _ if cache_route => cache_token(CACHE_SECRET, 1, CachePermission::Write, 0),
                Access::LogIngest => ingest(JWT_SECRET, self.job_a, now - 3600),
                _ => encode(JWT_SECRET, api_claims(now - 3600, aud)),
            },
            Case::AlgNone => {
                let header = b64(&json!({"alg": "none", "typ": "JWT"}));
                format!("{header}.{}.", b64(&api_claims(now + 600, aud)))
            }
            Case::OtherSecret => match access {
                _ if cache_route => cache_token(OTHER_SECRET, 1, CachePermission::Write, 600),
                Access::LogIngest => ingest(OTHER_SECRET, self.job_a, now + 600),
                _ => encode(OTHER_SECRET, api_claims(now + 600, aud)),
            },
            Case::OtherAudience => encode(
                JWT_SECRET,
                api_claims(now + 600, service.other_audience().as_str()),
            ),
            Case::OtherOrg => match access {
                _ if cache_route => cache_token(CACHE_SECRET, 2, CachePermission::Write, 600),
                _ => self
                    .keys
                    .mint_for(
                        "beta-ci",
                        Role::Org,
                        Some(2),
                        &[service.audience()],
                        Duration::from_secs(600),
                    )
                    .expect("mint"),
            },
            Case::OtherAgent => match access {
                // Another lease's ingest token: org B's job.
                Access::LogIngest => self
                    .keys
                    .mint_ingest(
                        &IngestScope {
                            job_id: self.job_b,
                            org_id: 2,
                            repo_id: None,
                            agent_id: "agent-b".into(),
                            seq_base: 0,
                        },
                        Duration::from_secs(600),
                    )
                    .expect("ingest"),
                _ => self
                    .keys
                    .mint_for(
                        "agent-b",
                        Role::Agent,
                        None,
                        &[service.audience()],
                        Duration::from_secs(600),
                    )
                    .expect("mint"),
            },
            Case::ReadOnlyCacheToken => cache_token(CACHE_SECRET, 1, CachePermission::Read, 600),
        })
    }

    /// The request a route gets: its path with org A's ids, and a body it accepts.
    fn sample(&self, method: &Method, path: &str) -> (String, Option<Value>) {
        let (a, pending, committed) = (self.job_a, self.pending_a, self.committed_a);
        let fencing = self.fencing_a;
        let line = json!([{"job_id": a, "agent_id": "x", "org_id": 1, "level": "info", "message": "planted",
                           "ts": "2026-11-30T10:00:00Z", "seq": 2}]);
        match (method.as_str(), path) {
            ("POST", "/webhooks/github") => (path.into(), Some(json!({"zen": "x", "hook_id": 1}))),
            ("POST", "/api/orgs") => (path.into(), Some(json!({"id": 1, "name": "hijacked"}))),
            ("GET", "/api/orgs") => (path.into(), None),
            ("POST", "/api/jobs") => (
                path.into(),
                Some(json!({"org_id": 1, "repo": "alpha-secret/app", "steps": [{"run": "true"}]})),
            ),
            ("GET", "/api/jobs") => ("/api/jobs?limit=100".into(), None),
            ("POST", "/api/jobs/lease") => (path.into(), Some(json!({}))),
            ("GET", "/api/jobs/{id}") => (format!("/api/jobs/{a}"), None),
            ("POST", "/api/jobs/{id}/heartbeat") => (
                format!("/api/jobs/{a}/heartbeat"),
                Some(json!({"fencing_token": fencing})),
            ),
            ("POST", "/api/jobs/{id}/complete") => (
                format!("/api/jobs/{a}/complete"),
                Some(json!({"fencing_token": fencing, "status": "failed", "exit_code": 1})),
            ),
            ("POST", "/api/jobs/{id}/cancel") => (format!("/api/jobs/{a}/cancel"), None),
            ("GET", "/api/jobs/{id}/runner-config") => (
                format!("/api/jobs/{a}/runner-config?fencing_token={fencing}"),
                None,
            ),
            ("GET", "/api/jobs/{id}/workspace") => (
                format!("/api/jobs/{a}/workspace?fencing_token={fencing}"),
                None,
            ),
            // Another tenant uploading into org A (the bytes are checked after the org).
            ("PUT", "/api/workspaces/{sha256}") => (
                format!("/api/workspaces/{}?org_id=1", "ab".repeat(32)),
                Some(json!("planted")),
            ),
            ("GET", "/api/analytics/metadata") => {
                ("/api/analytics/metadata?key=note&org_id=1".into(), None)
            }
            ("GET", "/api/observability/orgs") => ("/api/observability/orgs?org_id=1".into(), None),
            ("GET", "/api/jobs/metadata/presets") => (path.into(), None),
            ("GET", "/api/jobs/metadata/histogram") => (
                "/api/jobs/metadata/histogram?key=note&org_id=1".into(),
                None,
            ),
            ("GET", "/api/jobs/metadata/trend") => {
                ("/api/jobs/metadata/trend?key=note&org_id=1".into(), None)
            }
            ("GET", "/api/jobs/summary") => ("/api/jobs/summary?org_id=1".into(), None),
            ("GET", "/dashboard") => ("/dashboard?days=7&metadata_key=note".into(), None),
            ("GET", "/dashboard/jobs/{id}/log") => (format!("/dashboard/jobs/{a}/log"), None),
            ("POST", "/dashboard/login") | ("POST", "/dashboard/logout") => (path.into(), None),
            ("GET", "/dashboard/assets/{file}") => ("/dashboard/assets/dashboard.js".into(), None),
            ("GET", "/healthz")
            | ("GET", "/readyz")
            | ("GET", "/metrics")
            | ("GET", "/api/stats") => (path.into(), None),
            ("POST", "/twirp/github.actions.results.api.v1.CacheService/{method}") => (
                "/twirp/github.actions.results.api.v1.CacheService/GetCacheEntryDownloadURL".into(),
                Some(json!({"key": "alpha-cache-key", "restore_keys": ["alpha"], "version": ""})),
            ),
            ("PUT", "/_blob/upload/{id}") => (format!("/_blob/upload/{pending}"), None),
            ("GET", "/_blob/download/{id}") => (format!("/_blob/download/{committed}"), None),
            ("GET", "/_apis/artifactcache/cache") => (
                "/_apis/artifactcache/cache?keys=alpha-cache-key&version=".into(),
                None,
            ),
            ("GET", "/_apis/artifactcache/caches") => {
                ("/_apis/artifactcache/caches?key=alpha".into(), None)
            }
            ("POST", "/_apis/artifactcache/caches") => (
                path.into(),
                Some(
                    json!({"key": format!("matrix-{}", uuid::Uuid::new_v4()), "version": "v", "cacheSize": 4}),
                ),
            ),
            ("PATCH", "/_apis/artifactcache/caches/{id}") => {
                (format!("/_apis/artifactcache/caches/{pending}"), None)
            }
            ("POST", "/_apis/artifactcache/caches/{id}") => (
                format!("/_apis/artifactcache/caches/{pending}"),
                Some(json!({"size": 4})),
            ),
            ("PUT", "/api/cache/{*key}")
            | ("DELETE", "/api/cache/{*key}")
            | ("GET", "/api/cache/{*key}") => ("/api/cache/alpha-cache-key".into(), None),
            ("GET", "/api/usage") => (path.into(), None),
            ("GET", "/v2/") | ("GET", "/v2/_catalog") => (path.into(), None),
            ("GET", "/v2/token") => (
                "/v2/token?service=nimbus-registry&scope=repository:org-1/app:pull,push".into(),
                None,
            ),
            ("GET", "/v2/{*path}") | ("HEAD", "/v2/{*path}") => {
                ("/v2/org-1/app/manifests/v1".into(), None)
            }
            ("PUT", "/v2/{*path}") => (
                "/v2/org-1/app/manifests/v1".into(),
                Some(
                    json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "config": {"digest": format!("sha256:{}", "0".repeat(64)), "size": 1}, "layers": []}),
                ),
            ),
            ("POST", "/v2/{*path}") => ("/v2/org-1/app/blobs/uploads/".into(), None),
            ("PATCH", "/v2/{*path}") | ("DELETE", "/v2/{*path}") => {
                ("/v2/org-1/app/blobs/uploads/reg-0123".into(), None)
            }
            ("POST", "/api/logs") => (path.into(), Some(line)),
            ("GET", "/api/logs") => (format!("/api/logs?job_id={a}"), None),
            ("GET", "/api/logs/{job_id}/follow") => (format!("/api/logs/{a}/follow"), None),
            ("POST", "/api/metadata") => (
                path.into(),
                Some(
                    json!([{"job_id": a, "org_id": 1, "key": "note", "value": "planted", "ts": "2026-11-30T10:00:00Z"}]),
                ),
            ),
            ("GET", "/api/metadata/{job_id}") => (format!("/api/metadata/{a}"), None),
            (method, path) => panic!(
                "route {method} {path} has no request in the isolation matrix: add one (and its \
                 documented answers in docs/security.md)"
            ),
        }
    }
}

/// Org A's image `org-1/app:v1`, its config and manifest marked ALPHA-IMAGE.
async fn plant_image(registry: &nimbus_cache::registry::Registry, keys: &JwtKeys) {
    use nimbus_cache::registry::{Digest, Reference, Repository, UploadStarted};
    let token = keys
        .mint_for(
            "alpha-ci",
            Role::Org,
            Some(1),
            &[Audience::CacheProxy],
            Duration::from_secs(60),
        )
        .expect("mint");
    let caller = registry
        .authority()
        .caller(Some(&format!("Bearer {token}")))
        .expect("caller");
    let repository = Repository::parse("org-1/app").expect("name");
    let config = br#"{"architecture":"amd64","os":"linux","ALPHA-IMAGE":"config"}"#.to_vec();
    let digest = Digest::of(&config);
    let UploadStarted::Started { id } = registry
        .start_upload(&caller, &repository, None)
        .await
        .expect("upload")
    else {
        panic!("nothing to mount");
    };
    registry
        .finish(
            &caller,
            &repository,
            &id,
            &digest,
            Some(nimbus_cache::backend::bytes_stream(config.clone())),
        )
        .await
        .expect("config blob");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest.as_str(), "size": config.len()},
        "layers": [],
        "annotations": {"ALPHA-IMAGE": "manifest"},
    });
    registry
        .put_manifest(
            &caller,
            &repository,
            &Reference::Tag("v1".into()),
            None,
            manifest.to_string().into_bytes(),
        )
        .await
        .expect("manifest");
}

/// The statuses docs/security.md documents for `access` under `case`.
fn expected(access: Access, case: Case, method: &Method, path: &str) -> Vec<u16> {
    use Case::*;
    let refused = [NoToken, Expired, AlgNone, OtherSecret, OtherAudience].contains(&case);
    match access {
        Access::Public => vec![200],
        // No loopback peer and no metrics token in any case.
        Access::Metrics => vec![401],
        // No signature in any case.
        Access::GithubSignature => vec![401],
        Access::Token {
            org,
            agent,
            foreign,
            ..
        } => match case {
            _ if refused => vec![401],
            ReadOnlyCacheToken => vec![401],
            OtherOrg if !org => vec![403],
            OtherAgent if !agent => vec![403],
            OtherOrg | OtherAgent => match foreign {
                Foreign::NotFound => vec![404],
                Foreign::Conflict => vec![409],
                // A listing without the other tenant's rows; a lease with nothing for it.
                Foreign::Filtered => vec![200, 204],
            },
            _ => unreachable!(),
        },
        Access::CacheToken { write } => match case {
            NoToken | Expired | AlgNone | OtherSecret | OtherAudience | OtherAgent => vec![401],
            ReadOnlyCacheToken if write => vec![403],
            // The token's own org: A's data is its own.
            ReadOnlyCacheToken => vec![200, 204],
            // Org B: A's entries are misses, A's upload ids do not exist, and
            // writes by key make (or read, or delete) B's own entry of that name —
            // never A's, which the test restores intact at the end.
            OtherOrg => {
                if path.contains("{id}") {
                    vec![404]
                } else if method == Method::GET && path.starts_with("/api/cache") {
                    vec![200, 404]
                } else if method == Method::DELETE {
                    vec![204, 404]
                } else if method == Method::PUT
                    || (method == Method::POST && path == "/_apis/artifactcache/caches")
                {
                    vec![201]
                } else {
                    vec![200, 204]
                }
            }
        },
        // Bearer tokens are nothing to a signed link: without its signature, 401.
        Access::CacheLink => vec![401],
        Access::CacheUsage => match case {
            _ if refused => vec![401],
            OtherAgent => vec![403],
            // B's usage only; a read-only token of A sees A's own.
            OtherOrg | ReadOnlyCacheToken => vec![200],
            _ => unreachable!(),
        },
        // Rights follow the repository's name (org-1/…): another org's pulls find
        // nothing, pushes are denied; agents have no registry access. The version
        // check, the token endpoint (a token granting nothing) and the catalog
        // (the mirrors only) answer any valid credential. The read-only cache
        // token of org 1 reads its own image and may not push.
        Access::Registry => match case {
            _ if refused => vec![401],
            OtherAgent => vec![403],
            _ if ["/v2/", "/v2/token", "/v2/_catalog"].contains(&path) => vec![200],
            ReadOnlyCacheToken if *method == Method::GET || *method == Method::HEAD => vec![200],
            OtherOrg if *method == Method::GET || *method == Method::HEAD => vec![404],
            OtherOrg | ReadOnlyCacheToken => vec![403],
            _ => unreachable!(),
        },
        // The sign-in form's credential is in its body, which no case sends.
        Access::DashboardLogin => vec![401],
        Access::LogIngest => match case {
            _ if refused => vec![401],
            ReadOnlyCacheToken => vec![401],
            OtherOrg | OtherAgent => vec![403],
            _ => unreachable!(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_foreign_credential_as_documented() {
    let world = World::new().await;
    type Table = Vec<(Method, &'static str, Access)>;
    let services: [(Service, &Router, Table); 3] = [
        (
            Service::ControlPlane,
            &world.control_plane,
            nimbus_core::route::describe(&nimbus_core::control_plane::routes()),
        ),
        (
            Service::CacheProxy,
            &world.cache,
            nimbus_core::route::describe(&nimbus_cache::server::routes()),
        ),
        (
            Service::LoggingPipeline,
            &world.pipeline,
            nimbus_core::route::describe(&nimbus_logs::pipeline::routes()),
        ),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (service, app, routes) in &services {
        for (method, path, access) in routes {
            for case in CASES {
                let (uri, body) = world.sample(method, path);
                let token = world.credential(*service, *access, case);
                let (status, text) =
                    send(app, request(method.clone(), &uri, token.as_deref(), body)).await;
                checked += 1;
                let allowed = expected(*access, case, method, path);
                let row = table
                    .entry(format!("{service:?} {method} {path}"))
                    .or_default();
                row.push(format!("{case:?}={}", status.as_u16()));
                if !allowed.contains(&status.as_u16()) {
                    failures.push(format!(
                        "{service:?} {method} {path} with {case:?}: {} (documented: {allowed:?}) {text}",
                        status.as_u16()
                    ));
                }
                // Only the token of A's own org (the read-only cache token) may see A's data.
                if case != Case::ReadOnlyCacheToken {
                    for marker in MARKERS {
                        if text.contains(marker) {
                            failures.push(format!(
                                "{service:?} {method} {path} with {case:?} leaked {marker:?}: {text}"
                            ));
                        }
                    }
                }
            }
        }
    }
    for (route, answers) in &table {
        eprintln!("{route}: {}", answers.join(" "));
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} answers off:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= 8 * 30,
        "every route of the three services was walked ({checked})"
    );

    // Nothing of A's changed: its lease holds, its entry restores, its lines stand.
    let agent_a = world.token(Role::Agent, None, "agent-a");
    let (status, _) = world
        .call(
            &world.control_plane,
            Method::POST,
            &format!("/api/jobs/{}/heartbeat", world.job_a),
            &agent_a,
            Some(json!({"fencing_token": world.fencing_a})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "A's lease survived the matrix");
    let reader = world
        .cache_keys
        .mint(
            1,
            "alpha-secret/app",
            DEFAULT_BRANCH,
            DEFAULT_BRANCH,
            CachePermission::Read,
            Duration::from_secs(60),
        )
        .expect("token");
    let (status, bytes) = world
        .call(
            &world.cache,
            Method::GET,
            "/api/cache/alpha-cache-key",
            &reader,
            None,
        )
        .await;
    assert_eq!(
        (status, bytes.as_str()),
        (StatusCode::OK, "ALPHA-CACHE-BYTES")
    );
    let org_a = world.token(Role::Org, Some(1), "alpha-ci");
    let (_, lines) = world
        .call(
            &world.pipeline,
            Method::GET,
            &format!("/api/logs?job_id={}", world.job_a),
            &org_a,
            None,
        )
        .await;
    assert!(
        lines.contains("ALPHA-LOG-LINE") && !lines.contains("planted"),
        "{lines}"
    );
}

/// The most a route's rightful caller may present, for the body-limit sweep: an
/// admin token where admins may call, else org A's or agent A's; org A's write
/// cache token for cache routes; nothing where no bearer is taken.
fn owner_credential(world: &World, access: Access) -> Option<String> {
    match access {
        Access::Token { admin: true, .. }
        | Access::CacheUsage
        | Access::LogIngest
        | Access::Registry => Some(world.token(Role::Admin, None, "ops")),
        Access::Token { org: true, .. } => Some(world.token(Role::Org, Some(1), "alpha-ci")),
        Access::Token { .. } => Some(world.token(Role::Agent, None, "agent-a")),
        Access::CacheToken { .. } => Some(
            world
                .cache_keys
                .mint(
                    1,
                    "alpha-secret/app",
                    DEFAULT_BRANCH,
                    DEFAULT_BRANCH,
                    CachePermission::Write,
                    Duration::from_secs(600),
                )
                .expect("token"),
        ),
        Access::Public
        | Access::Metrics
        | Access::GithubSignature
        | Access::CacheLink
        | Access::DashboardLogin => None,
    }
}

/// Every route that takes a body, walked from the three route tables, is sent one
/// byte more than its limit by its rightful caller: each answers 413 (a manifest,
/// the OCI spec's SIZE_INVALID) without reading further, and the services still
/// answer afterwards. Routes whose bodies stream to storage are bounded by the
/// cache budget instead (`nimbus-cache/tests/proxy.rs`,
/// `uploads_over_the_budget_are_refused_with_413_and_discarded`) and are listed in
/// `nimbus_cache::server::STREAMED_ROUTES`; a new route is covered the day it is
/// added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_body_over_its_limit() {
    let world = World::new().await;
    type Table = Vec<(Method, &'static str, Access)>;
    let services: [(Service, &Router, Table, usize); 3] = [
        (
            Service::ControlPlane,
            &world.control_plane,
            nimbus_core::route::describe(&nimbus_core::control_plane::routes()),
            nimbus_core::control_plane::MAX_BODY,
        ),
        (
            Service::CacheProxy,
            &world.cache,
            nimbus_core::route::describe(&nimbus_cache::server::routes()),
            nimbus_cache::server::MAX_JSON_BODY,
        ),
        (
            Service::LoggingPipeline,
            &world.pipeline,
            nimbus_core::route::describe(&nimbus_logs::pipeline::routes()),
            nimbus_logs::pipeline::MAX_BODY_BYTES,
        ),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (service, app, routes, limit) in &services {
        for (method, path, access) in routes {
            if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
                continue;
            }
            let streamed = *service == Service::CacheProxy
                && nimbus_cache::server::STREAMED_ROUTES
                    .iter()
                    .any(|(m, p)| *m == method.as_str() && p == path);
            if streamed {
                continue;
            }
            // Routes that take no body never read what is sent: they must simply work.
            let bodiless = *service == Service::ControlPlane
                && matches!(*path, "/api/jobs/{id}/cancel" | "/dashboard/logout");
            let manifest = *service == Service::CacheProxy && *path == "/v2/{*path}";
            let workspace =
                *service == Service::ControlPlane && *path == "/api/workspaces/{sha256}";
            let limit = if manifest {
                nimbus_cache::registry::manifest::MAX_MANIFEST_BYTES
            } else if workspace {
                nimbus_core::control_plane::MAX_WORKSPACE_BYTES
            } else {
                *limit
            };
            let (uri, _) = world.sample(method, path);
            // A JSON document one byte over the limit.
            let padding = "a".repeat(limit + 1 - r#"{"pad":""}"#.len());
            let body = format!(r#"{{"pad":"{padding}"}}"#);
            assert_eq!(body.len(), limit + 1);
            let content_type = match access {
                Access::DashboardLogin => "application/x-www-form-urlencoded",
                _ => "application/json",
            };
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .header("content-type", content_type);
            if let Some(token) = owner_credential(&world, *access) {
                builder = builder.header("authorization", format!("Bearer {token}"));
            }
            let request = builder.body(Body::from(body)).expect("request");
            let (status, text) = send(app, request).await;
            checked += 1;
            let refused = if bodiless {
                status.is_success() || status.is_redirection()
            } else {
                status == StatusCode::PAYLOAD_TOO_LARGE
                    || (manifest
                        && status == StatusCode::BAD_REQUEST
                        && text.contains("SIZE_INVALID"))
            };
            eprintln!(
                "{service:?} {method} {path}: {} bytes -> {}",
                limit + 1,
                status.as_u16()
            );
            if !refused {
                failures.push(format!(
                    "{service:?} {method} {path}: {} bytes answered {} {text:.200}",
                    limit + 1,
                    status.as_u16()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} routes took an oversized body:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 12, "every body route was sent ({checked})");
    for app in [&world.control_plane, &world.cache, &world.pipeline] {
        let (status, _) = send(app, request(Method::GET, "/healthz", None, None)).await;
        assert_eq!(status, StatusCode::OK, "the service still answers");
    }
}
