//! The OCI registry against real peers: Debian's `docker-registry` (the
//! reference distribution registry) as the upstream and `skopeo` as the client,
//! on the fs backend with a SQLite index and on S3 with a PostgreSQL index. No
//! test reaches any outside host.

use std::sync::Arc;
use std::time::Duration;

use nimbus_cache::backend::fs::FsBackend;
use nimbus_cache::backend::s3::S3Backend;
use nimbus_cache::registry::testing::{
    blob_digests, skopeo_available, skopeo_copy, write_image, ImageLayout, UpstreamRegistry,
};
use nimbus_cache::registry::{gc, RegistryIndex};
use nimbus_cache::server::{self, BackendConfig, S3Config};
use nimbus_cache::{CacheBackend, CacheIndex, Proxy, ProxyConfig};
use nimbus_core::auth::{Audience, JwtKeys, Role};
use nimbus_core::{Env, Secret};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

const SECRET: &str = "registry-test-secret-0123456789";

#[derive(Debug, Clone, Copy)]
enum Stack {
    FsSqlite,
    S3Postgres,
}

struct Harness {
    base: String,
    host: String,
    proxy: Proxy,
    backend: Arc<dyn CacheBackend>,
    jwt: JwtKeys,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn start(
        stack: Stack,
        upstream: Option<String>,
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> Option<Harness> {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().display().to_string();
        let mut config = ProxyConfig::from_env(&Env::from_map([
            ("NIMBUS_DATA_DIR", data_dir.as_str()),
            ("NIMBUS_CACHE_SHARED_SECRET", SECRET),
            ("NIMBUS_JWT_SECRET", SECRET),
        ]))
        .expect("config");
        config.registry.upstream = upstream;
        let (backend, index, registry_index): (Arc<dyn CacheBackend>, CacheIndex, RegistryIndex) =
            match stack {
                Stack::FsSqlite => (
                    Arc::new(FsBackend::open(dir.path().join("blobs")).expect("fs")),
                    CacheIndex::open(&dir.path().join("index.db").display().to_string())
                        .await
                        .expect("index"),
                    RegistryIndex::open(&dir.path().join("registry.db").display().to_string())
                        .await
                        .expect("registry index"),
                ),
                Stack::S3Postgres => {
                    let endpoint = nimbus_core::testsuite::setting("NIMBUS_TEST_S3_ENDPOINT")?;
                    let url = nimbus_core::store::testsuite::postgres_schema_url().await?;
                    let s3 = S3Config {
                        bucket: "nimbus-test".into(),
                        endpoint: Some(endpoint),
                        region: "us-east-1".into(),
                        prefix: format!("registry-{}/", uuid::Uuid::new_v4().simple()),
                        path_style: true,
                        access_key_id: Some("testkey".into()),
                        secret_access_key: Some(Secret::new("testsecret")),
                    };
                    config.backend = BackendConfig::S3(s3.clone());
                    (
                        Arc::new(S3Backend::connect(&s3).await.expect("s3")),
                        CacheIndex::open(&url).await.expect("index"),
                        RegistryIndex::open(&url).await.expect("registry index"),
                    )
                }
            };
        tweak(&mut config);
        let proxy = Proxy::new(&config, backend.clone(), index)
            .expect("proxy")
            .with_registry(&config, registry_index)
            .expect("registry");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let serving = proxy.clone();
        tokio::spawn(async move {
            let _ = server::serve(&config, serving, listener, std::future::pending()).await;
        });
        Some(Harness {
            base: format!("http://{address}"),
            host: address.to_string(),
            proxy,
            backend,
            jwt: JwtKeys::new(&Secret::new(SECRET)),
            http: reqwest::Client::new(),
            dir,
        })
    }

    /// An org API token for the cache proxy.
    fn org_token(&self, org: i64) -> String {
        self.jwt
            .mint_for(
                "ci",
                Role::Org,
                Some(org),
                &[Audience::CacheProxy],
                Duration::from_secs(600),
            )
            .expect("token")
    }

    /// skopeo's `--creds` for org `org`.
    fn creds(&self, org: i64) -> String {
        format!("ci:{}", self.org_token(org))
    }

    fn image(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.host)
    }

    async fn stored_blobs(&self) -> usize {
        self.backend
            .list("registry/blobs/")
            .await
            .expect("list")
            .len()
    }

    async fn get(&self, path: &str, org: i64) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.org_token(org))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
            headers,
        )
    }
}

fn code(body: &Value) -> &str {
    body["errors"][0]["code"].as_str().unwrap_or("")
}

/// An image of three blobs (config, 1 MiB and 300 KiB layers) in the upstream as
/// `library/testimg:1`.
fn seed_upstream(upstream: &UpstreamRegistry, dir: &std::path::Path) -> ImageLayout {
    let image = write_image(&dir.join("seed"), "v1", &[1 << 20, 300 << 10], 7).expect("image");
    skopeo_copy(
        &image.reference(),
        &format!("docker://{}/library/testimg:1", upstream.host()),
        None,
        None,
    )
    .expect("seed the upstream");
    image
}

fn expected_digests(image: &ImageLayout) -> Vec<String> {
    let mut digests: Vec<String> = image.blobs.iter().map(|(d, _)| d.clone()).collect();
    digests.push(image.manifest_digest.clone());
    digests.sort();
    digests
}

async fn pull_through_push_and_org_isolation(stack: Stack) {
    if !skopeo_available() {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(mut upstream) = UpstreamRegistry::start(&scratch.path().join("upstream")) else {
        return;
    };
    let image = seed_upstream(&upstream, scratch.path());
    let Some(h) = Harness::start(stack, Some(upstream.url()), |_| {}).await else {
        return;
    };
    let before = upstream.blob_gets();

    // Cold pull through the mirror, as org 2: every blob fetched once, intact.
    let out = scratch.path().join("pull-1");
    skopeo_copy(
        &h.image("library/testimg:1"),
        &format!("dir:{}", out.display()),
        Some(&h.creds(2)),
        None,
    )
    .expect("cold pull");
    assert_eq!(blob_digests(&out), expected_digests(&image));
    assert_eq!(
        upstream.blob_gets() - before,
        3,
        "config and two layers fetched once"
    );

    // Warm pull: served locally, the upstream sees no blob GET.
    let out = scratch.path().join("pull-2");
    skopeo_copy(
        &h.image("library/testimg:1"),
        &format!("dir:{}", out.display()),
        Some(&h.creds(1)),
        None,
    )
    .expect("warm pull");
    assert_eq!(blob_digests(&out), expected_digests(&image));
    assert_eq!(
        upstream.blob_gets() - before,
        3,
        "the warm pull reached the upstream"
    );

    // And with the upstream gone.
    upstream.stop();
    let out = scratch.path().join("pull-3");
    skopeo_copy(
        &h.image("library/testimg:1"),
        &format!("dir:{}", out.display()),
        Some(&h.creds(2)),
        None,
    )
    .expect("pull with the upstream stopped");
    assert_eq!(blob_digests(&out), expected_digests(&image));

    // Org 1 pushes the same image to its own repository: stored once.
    skopeo_copy(
        &image.reference(),
        &h.image("org-1/app:v1"),
        None,
        Some(&h.creds(1)),
    )
    .expect("push as org 1");
    assert_eq!(
        h.stored_blobs().await,
        3,
        "blobs are deduplicated across repositories"
    );
    let out = scratch.path().join("pull-own");
    skopeo_copy(
        &h.image("org-1/app:v1"),
        &format!("dir:{}", out.display()),
        Some(&h.creds(1)),
        None,
    )
    .expect("org 1 pulls its image");
    assert_eq!(blob_digests(&out), expected_digests(&image));

    // Org 2 can neither pull nor push org-1/app, nor push a mirror.
    let out = scratch.path().join("pull-foreign");
    let refused = skopeo_copy(
        &h.image("org-1/app:v1"),
        &format!("dir:{}", out.display()),
        Some(&h.creds(2)),
        None,
    )
    .expect_err("org 2 pulled org-1/app");
    assert!(
        refused.contains("unknown") || refused.contains("not known"),
        "{refused}"
    );
    skopeo_copy(
        &image.reference(),
        &h.image("org-1/app:v2"),
        None,
        Some(&h.creds(2)),
    )
    .expect_err("org 2 pushed to org-1/app");
    skopeo_copy(
        &image.reference(),
        &h.image("library/testimg:evil"),
        None,
        Some(&h.creds(2)),
    )
    .expect_err("org 2 pushed to a mirror");
    let (status, body, _) = h.get("/v2/org-1/app/tags/list", 2).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    // A digest is no key: org 2's own repository does not serve org 1's layer.
    let layer = &image.blobs[1].0;
    let (status, body, _) = h.get(&format!("/v2/org-2/app/blobs/{layer}"), 2).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );
    // Nor can a mount from org 1's repository copy it over.
    let mount = h
        .http
        .post(format!(
            "{}/v2/org-2/app/blobs/uploads/?mount={layer}&from=org-1/app",
            h.base
        ))
        .bearer_auth(h.org_token(2))
        .send()
        .await
        .expect("mount");
    assert_eq!(
        mount.status(),
        StatusCode::ACCEPTED,
        "a refused mount starts a plain upload"
    );
    let (status, _, _) = h.get(&format!("/v2/org-2/app/blobs/{layer}"), 2).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Org 1 sees its repository and the mirror in the catalog; org 2 only the mirror.
    let (_, catalog, _) = h.get("/v2/_catalog", 2).await;
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["library/testimg"])
    );
    let (_, catalog, _) = h.get("/v2/_catalog", 1).await;
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["library/testimg", "org-1/app"])
    );
    drop(h.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_sqlite_pull_through_push_and_org_isolation() {
    pull_through_push_and_org_isolation(Stack::FsSqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_postgres_pull_through_push_and_org_isolation() {
    pull_through_push_and_org_isolation(Stack::S3Postgres).await;
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A front for the upstream that speaks Docker Hub's token flow: requests
/// without its token get a Bearer challenge naming its realm.
mod token_front {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::http::{HeaderValue, StatusCode};
    use axum::response::{IntoResponse, Response};

    #[derive(Clone)]
    pub struct Front {
        pub upstream: String,
        pub base: String,
        pub token_requests: Arc<AtomicUsize>,
        pub authorized: Arc<AtomicUsize>,
        client: reqwest::Client,
    }

    const TOKEN: &str = "front-token-for-pulls";

    async fn token(State(front): State<Front>, request: Request) -> Response {
        front.token_requests.fetch_add(1, Ordering::SeqCst);
        let query = request.uri().query().unwrap_or("");
        if !query.contains("scope=repository%3Alibrary%2Ftestimg%3Apull")
            || !query.contains("service=fake-hub")
        {
            return (
                StatusCode::BAD_REQUEST,
                format!("unexpected token request {query}"),
            )
                .into_response();
        }
        axum::Json(serde_json::json!({"token": TOKEN, "expires_in": 300})).into_response()
    }

    async fn forward(State(front): State<Front>, request: Request) -> Response {
        let authorized = request
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
        if !authorized {
            let mut response = StatusCode::UNAUTHORIZED.into_response();
            let challenge = format!(
                "Bearer realm=\"{}/token\",service=\"fake-hub\",scope=\"repository:library/testimg:pull\"",
                front.base
            );
            response.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_str(&challenge).expect("header"),
            );
            return response;
        }
        front.authorized.fetch_add(1, Ordering::SeqCst);
        let url = format!("{}{}", front.upstream, request.uri());
        let mut upstream = front.client.request(request.method().clone(), url);
        for accept in request.headers().get_all("accept") {
            upstream = upstream.header("accept", accept);
        }
        let answer = upstream.send().await.expect("upstream");
        let mut response = Response::builder().status(answer.status().as_u16());
        for name in ["content-type", "content-length", "docker-content-digest"] {
            if let Some(value) = answer.headers().get(name) {
                response = response.header(name, value.as_bytes());
            }
        }
        response
            .body(Body::from_stream(answer.bytes_stream()))
            .expect("response")
    }

    pub async fn start(upstream: String) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let front = Front {
            upstream,
            base: format!("http://{}", listener.local_addr().expect("address")),
            token_requests: Arc::default(),
            authorized: Arc::default(),
            client: reqwest::Client::new(),
        };
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .fallback(forward)
            .with_state(front.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        front
    }
}

/// The upstream's token flow (Docker Hub's): challenged, the mirror fetches a
/// token from the realm for `repository:NAME:pull` and pulls with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_an_upstream_that_wants_tokens() {
    if !skopeo_available() {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(upstream) = UpstreamRegistry::start(&scratch.path().join("upstream")) else {
        return;
    };
    let image = seed_upstream(&upstream, scratch.path());
    let front = token_front::start(upstream.url()).await;
    let Some(h) = Harness::start(Stack::FsSqlite, Some(front.base.clone()), |_| {}).await else {
        return;
    };
    let out = scratch.path().join("pull");
    skopeo_copy(
        &h.image("library/testimg:1"),
        &format!("dir:{}", out.display()),
        Some(&h.creds(3)),
        None,
    )
    .expect("pull through the token-protected upstream");
    assert_eq!(blob_digests(&out), expected_digests(&image));
    use std::sync::atomic::Ordering;
    assert_eq!(
        front.token_requests.load(Ordering::SeqCst),
        1,
        "one token, cached for the repository"
    );
    assert!(
        front.authorized.load(Ordering::SeqCst) >= 4,
        "manifest and three blobs with the token"
    );
}

/// Four clients missing the same blob at once: one upstream fetch, four intact copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_fetch_a_blob_once() {
    if !skopeo_available() {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(upstream) = UpstreamRegistry::start(&scratch.path().join("upstream")) else {
        return;
    };
    let image = seed_upstream(&upstream, scratch.path());
    let Some(h) = Harness::start(Stack::FsSqlite, Some(upstream.url()), |_| {}).await else {
        return;
    };
    let before = upstream.blob_gets();
    let (layer, size) = image.blobs[1].clone();
    let pulls = (0..4).map(|_| {
        let request = h
            .http
            .get(format!("{}/v2/library/testimg/blobs/{layer}", h.base))
            .bearer_auth(h.org_token(1));
        async move {
            let response = request.send().await.expect("get");
            assert_eq!(response.status(), StatusCode::OK);
            response.bytes().await.expect("body")
        }
    });
    for body in futures::future::join_all(pulls).await {
        assert_eq!(body.len() as u64, size);
        assert_eq!(sha256(&body), layer);
    }
    assert_eq!(
        upstream.blob_gets() - before,
        1,
        "the blob was fetched more than once"
    );
    // A ranged read of the stored blob.
    let response = h
        .http
        .get(format!("{}/v2/library/testimg/blobs/{layer}", h.base))
        .bearer_auth(h.org_token(1))
        .header("range", "bytes=10-19")
        .send()
        .await
        .expect("range");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"]
            .to_str()
            .expect("header"),
        format!("bytes 10-19/{size}")
    );
    assert_eq!(response.bytes().await.expect("body").len(), 10);
}

/// A raw request line, so the path reaches the server unnormalised.
async fn raw_get(base: &str, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_oci_codes_and_nothing_is_stored() {
    let Some(h) = Harness::start(Stack::FsSqlite, None, |_| {}).await else {
        return;
    };
    let token = h.org_token(1);
    let url = |path: &str| format!("{}{path}", h.base);

    // No credentials: the challenge that sends Docker to the token endpoint.
    let response = h.http.get(url("/v2/")).send().await.expect("base");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .expect("header")
        .to_string();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/v2/token\",service=\"nimbus-registry\"",
            h.base
        )
    );
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    // The token endpoint: Basic with the org token; a token scoped to what org 1 may do.
    let response = h
        .http
        .get(url("/v2/token?service=nimbus-registry&scope=repository:org-1/app:pull,push&scope=repository:org-2/app:pull"))
        .basic_auth("ci", Some(&token))
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), StatusCode::OK);
    let registry_token = response.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let response = h
        .http
        .get(url("/v2/org-1/app/tags/list"))
        .bearer_auth(&registry_token)
        .send()
        .await
        .expect("tags");
    assert_eq!(response.status(), StatusCode::OK);
    let response = h
        .http
        .get(url("/v2/org-1/other/tags/list"))
        .bearer_auth(&registry_token)
        .send()
        .await
        .expect("tags");
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "outside the token's scopes: ask for another"
    );
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .expect("header")
        .contains("scope=\"repository:org-1/other:pull\""));
    let response = h
        .http
        .get(url("/v2/token?scope=repository:org-1/app:pull"))
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A monolithic upload whose bytes do not match its digest.
    let wrong = sha256(b"something else");
    let response = h
        .http
        .post(url(&format!("/v2/org-1/app/blobs/uploads/?digest={wrong}")))
        .bearer_auth(&token)
        .body("hello")
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        code(&response.json().await.expect("json")),
        "DIGEST_INVALID"
    );

    // A chunked upload: a chunk out of order is 416 with where it stands.
    let response = h
        .http
        .post(url("/v2/org-1/app/blobs/uploads/"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("start");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert_eq!(response.headers()["range"], "0-0");
    let patch = |range: &'static str, body: &'static str| {
        h.http
            .patch(&location)
            .bearer_auth(&token)
            .header("content-range", range)
            .body(body)
            .send()
    };
    let response = patch("5-9", "world").await.expect("patch");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.headers()["range"], "0-0");
    assert_eq!(
        patch("0-4", "hello").await.expect("patch").headers()["range"],
        "0-4"
    );
    assert_eq!(
        patch("5-9", "world").await.expect("patch").headers()["range"],
        "0-9"
    );
    let blob = sha256(b"helloworld");
    let response = h
        .http
        .put(format!("{location}?digest={blob}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("finish");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["docker-content-digest"]
            .to_str()
            .expect("digest"),
        blob
    );
    let response = h
        .http
        .get(url(&format!("/v2/org-1/app/blobs/{blob}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        b"helloworld"
    );

    // Manifests: missing blobs, unknown media types, oversized, wrong digest.
    let missing = sha256(b"never uploaded");
    let manifest = |layer: &str| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob, "size": 10},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 14}],
        })
        .to_string()
    };
    let put_manifest = |reference: String, content_type: &'static str, body: String| {
        h.http
            .put(url(&format!("/v2/org-1/app/manifests/{reference}")))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";
    for (reference, content_type, body, status, expected) in [
        (
            "v1".to_string(),
            oci,
            manifest(&missing),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "v1".to_string(),
            "application/vnd.evil.manifest+json",
            manifest(&blob),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "v1".to_string(),
            oci,
            " ".repeat(5 << 20),
            400,
            "SIZE_INVALID",
        ),
        (
            "v1".to_string(),
            oci,
            "{\"schemaVersion\": 2, \"config\": 7}".to_string(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            sha256(b"another manifest"),
            oci,
            manifest(&blob),
            400,
            "DIGEST_INVALID",
        ),
        (
            "-bad.tag".to_string(),
            oci,
            manifest(&blob),
            400,
            "TAG_INVALID",
        ),
    ] {
        // The oversized manifest is refused after its first 4 MiB, and the
        // connection closed while the client may still be sending the rest: the
        // refusal can be lost to that race (a transport error, not an answer).
        // Another try sees it; a wrong answer fails at once.
        let mut tries = 0;
        let response = loop {
            tries += 1;
            match put_manifest(reference.clone(), content_type, body.clone()).await {
                Ok(response) => break response,
                Err(error) if error.is_request() && tries < 3 => continue,
                Err(error) => panic!("put {reference}: {error}"),
            }
        };
        assert_eq!(
            response.status().as_u16(),
            status,
            "{reference} {content_type}"
        );
        assert_eq!(
            code(&response.json().await.expect("json")),
            expected,
            "{reference} {content_type}"
        );
    }
    // Names that could escape their namespace, with and without encoding.
    for path in [
        "/v2/org-1/../org-2/app/manifests/v1",
        "/v2/org-1/%2e%2e/org-2/app/manifests/v1",
        "/v2/org-1/App/manifests/v1",
        "/v2/org-1/a%2Fb/manifests/v1",
    ] {
        let answer = raw_get(&h.base, path, &token).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("NAME_INVALID"), "{path}: {answer}");
    }
    // Nothing of the above was stored: one blob, no tags, no staged uploads.
    assert_eq!(h.stored_blobs().await, 1);
    let (_, tags, _) = h.get("/v2/org-1/app/tags/list", 1).await;
    assert_eq!(tags["tags"], serde_json::json!([]));
    let staged = h.backend.list_uploads().await.expect("uploads");
    assert!(staged.is_empty(), "staged uploads left: {staged:?}");
    // A manifest with everything in place is accepted, by tag.
    let response = put_manifest("v1".into(), oci, manifest(&blob).replace(&missing, &blob))
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// Garbage collection: an orphan blob goes after the grace period; over the
/// byte budget the least recently pulled mirror tag goes with its blobs (counted
/// as registry evictions); org images stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_and_eviction_keep_org_images() {
    if !skopeo_available() {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(upstream) = UpstreamRegistry::start(&scratch.path().join("upstream")) else {
        return;
    };
    let mirrored = seed_upstream(&upstream, scratch.path());
    let Some(h) = Harness::start(Stack::FsSqlite, Some(upstream.url()), |config| {
        config.registry.gc_grace = Duration::ZERO;
        // The mirror image (~1.3 MiB) and the org image (~200 KiB) do not fit.
        config.registry.max_bytes = 1_400_000;
    })
    .await
    else {
        return;
    };
    let registry = h.proxy.registry().expect("registry").clone();
    let out = scratch.path().join("pull");
    skopeo_copy(
        &h.image("library/testimg:1"),
        &format!("dir:{}", out.display()),
        Some(&h.creds(1)),
        None,
    )
    .expect("pull");
    let own = write_image(&scratch.path().join("own"), "v1", &[200 << 10], 11).expect("image");
    skopeo_copy(
        &own.reference(),
        &h.image("org-1/app:v1"),
        None,
        Some(&h.creds(1)),
    )
    .expect("push");
    // An orphan: uploaded, never referenced.
    let orphan = b"orphan blob".to_vec();
    let response = h
        .http
        .post(format!(
            "{}/v2/org-1/app/blobs/uploads/?digest={}",
            h.base,
            sha256(&orphan)
        ))
        .bearer_auth(h.org_token(1))
        .body(orphan)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(h.stored_blobs().await, 6);

    let report = gc::collect_once(&registry).await.expect("collect");
    assert_eq!(report.evicted_tags, 1, "{report:?}");
    assert_eq!(
        report.blobs, 4,
        "the orphan and the mirror's three blobs: {report:?}"
    );
    assert_eq!(
        h.stored_blobs().await,
        2,
        "the org image's config and layer stay"
    );
    let metrics = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("nimbus_cache_evictions_total{kind=\"registry\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nimbus_cache_evictions_total{kind=\"actions\"} 0"),
        "{metrics}"
    );
    let (status, _, _) = h
        .get(
            &format!("/v2/library/testimg/blobs/{}", mirrored.blobs[1].0),
            1,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an evicted mirror blob is fetched again"
    );
    let out = scratch.path().join("own-again");
    skopeo_copy(
        &h.image("org-1/app:v1"),
        &format!("dir:{}", out.display()),
        Some(&h.creds(1)),
        None,
    )
    .expect("the org image survived");
    let mut expected: Vec<String> = own.blobs.iter().map(|(d, _)| d.clone()).collect();
    expected.push(own.manifest_digest.clone());
    expected.sort();
    assert_eq!(blob_digests(&out), expected);
}

/// A mirror tag older than NIMBUS_DOCKER_TAG_TTL is checked against the upstream
/// again: a moved tag is followed; with the upstream down, the copy is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_tags_are_revalidated_after_their_ttl() {
    if !skopeo_available() {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(mut upstream) = UpstreamRegistry::start(&scratch.path().join("upstream")) else {
        return;
    };
    let first = seed_upstream(&upstream, scratch.path());
    let Some(h) = Harness::start(Stack::FsSqlite, Some(upstream.url()), |config| {
        config.registry.tag_ttl = Duration::ZERO;
    })
    .await
    else {
        return;
    };
    let digest = |headers: &reqwest::header::HeaderMap| {
        headers["docker-content-digest"]
            .to_str()
            .expect("digest")
            .to_string()
    };
    let (status, _, headers) = h.get("/v2/library/testimg/manifests/1", 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(digest(&headers), first.manifest_digest);
    // The tag moves upstream.
    let second = write_image(&scratch.path().join("second"), "v1", &[4096], 99).expect("image");
    skopeo_copy(
        &second.reference(),
        &format!("docker://{}/library/testimg:1", upstream.host()),
        None,
        None,
    )
    .expect("move the tag");
    let (status, _, headers) = h.get("/v2/library/testimg/manifests/1", 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        digest(&headers),
        second.manifest_digest,
        "the moved tag was not followed"
    );
    // The upstream goes away: the mirror's copy is served.
    upstream.stop();
    let (status, _, headers) = h.get("/v2/library/testimg/manifests/1", 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(digest(&headers), second.manifest_digest);
}
