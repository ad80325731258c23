//! The cache proxy over HTTP, in-process: the Actions cache v1 and v2 protocols,
//! the blob subset, the artifact API, scopes and tokens, bad input, eviction and
//! the scrub. Each protocol case runs on fs + SQLite and on S3 + PostgreSQL (the
//! real services from scripts/services.sh; required under CI=true).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use nimbus_cache::backend::fs::FsBackend;
use nimbus_cache::backend::s3::S3Backend;
use nimbus_cache::maintenance::{self, Budgets};
use nimbus_cache::server::{self, BackendConfig, S3Config};
use nimbus_cache::{CacheBackend, CacheIndex, Proxy, ProxyConfig};
use nimbus_core::cache_token::{CachePermission, CacheTokenKeys, DEFAULT_BRANCH};
use nimbus_core::{Env, Secret};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET: &str = "cache-test-secret-0123456789";
const TWIRP: &str = "twirp/github.actions.results.api.v1.CacheService";

#[derive(Debug, Clone, Copy)]
enum Stack {
    FsSqlite,
    S3Postgres,
}

struct Harness {
    base: String,
    proxy: Proxy,
    keys: CacheTokenKeys,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn s3_config(prefix: &str) -> Option<S3Config> {
    let endpoint = nimbus_core::testsuite::setting("NIMBUS_TEST_S3_ENDPOINT")?;
    Some(S3Config {
        bucket: "nimbus-test".into(),
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        prefix: prefix.into(),
        path_style: true,
        access_key_id: Some("testkey".into()),
        secret_access_key: Some(Secret::new("testsecret")),
    })
}

/// A fresh PostgreSQL schema for one test's index, as a URL that selects it.
async fn postgres_index_url() -> Option<String> {
    let url = nimbus_core::testsuite::setting("NIMBUS_TEST_DATABASE_URL")?;
    let schema = format!("nimbus_t_cache_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&url).await.expect("postgres");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("create schema");
    pool.close().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// The cache index may live in the control plane's PostgreSQL database: both keep
/// their migrations in sqlx's one table, and each opens beside the other.
#[tokio::test]
async fn index_shares_a_postgres_database_with_the_control_plane() {
    let Some(url) = postgres_index_url().await else {
        return;
    };
    let store = nimbus_core::store::open(&url, 2)
        .await
        .expect("control plane store");
    let index = CacheIndex::open(&url).await.expect("cache index beside it");
    // Reopening both (another replica starting) applies nothing twice.
    nimbus_core::store::open(&url, 2)
        .await
        .expect("store again");
    CacheIndex::open(&url).await.expect("index again");
    assert_eq!(store.backend(), "postgres");
    assert!(index.usage(None).await.expect("usage").is_empty());
}

impl Harness {
    async fn start(stack: Stack) -> Option<Harness> {
        Self::start_with(stack, |_| {}).await
    }

    async fn start_with(stack: Stack, tweak: impl FnOnce(&mut ProxyConfig)) -> Option<Harness> {
        Self::start_inner(stack, None, tweak).await
    }

    /// fs + SQLite with the blobs under `blobs` (a small filesystem of its own).
    async fn start_fs_at(blobs: std::path::PathBuf) -> Harness {
        Self::start_inner(Stack::FsSqlite, Some(blobs), |_| {})
            .await
            .expect("harness")
    }

    async fn start_inner(
        stack: Stack,
        blobs: Option<std::path::PathBuf>,
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
        let (backend, index): (Arc<dyn CacheBackend>, CacheIndex) = match stack {
            Stack::FsSqlite => (
                Arc::new(
                    FsBackend::open(blobs.unwrap_or_else(|| dir.path().join("blobs"))).expect("fs"),
                ),
                CacheIndex::open(&dir.path().join("index.db").display().to_string())
                    .await
                    .expect("sqlite index"),
            ),
            Stack::S3Postgres => {
                let prefix = format!("proxy-{}/", uuid::Uuid::new_v4().simple());
                let (Some(s3), Some(url)) = (s3_config(&prefix), postgres_index_url().await) else {
                    eprintln!("skipping: S3 or PostgreSQL is not available");
                    return None;
                };
                config.backend = BackendConfig::S3(s3.clone());
                (
                    Arc::new(S3Backend::connect(&s3).await.expect("s3")),
                    CacheIndex::open(&url).await.expect("postgres index"),
                )
            }
        };
        tweak(&mut config);
        let proxy = Proxy::new(&config, backend, index).expect("proxy");
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
            proxy,
            keys: CacheTokenKeys::new(&Secret::new(SECRET)),
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    fn token(&self, org: i64, repo: &str, git_ref: &str, permission: CachePermission) -> String {
        self.keys
            .mint(
                org,
                repo,
                git_ref,
                DEFAULT_BRANCH,
                permission,
                Duration::from_secs(600),
            )
            .expect("token")
    }

    fn writer(&self) -> String {
        self.token(1, "acme/app", "refs/heads/feature", CachePermission::Write)
    }

    async fn twirp(&self, token: &str, method: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/{TWIRP}/{method}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("twirp call");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn v1(&self, path: &str) -> String {
        format!("{}/_apis/artifactcache/{path}", self.base)
    }

    /// Saves through v2 with one Put Blob; returns the upload link's status.
    async fn save_v2(&self, token: &str, key: &str, version: &str, data: &[u8]) -> StatusCode {
        let (_, created) = self
            .twirp(
                token,
                "CreateCacheEntry",
                json!({"key": key, "version": version}),
            )
            .await;
        assert_eq!(created["ok"], true, "{created}");
        let url = created["signed_upload_url"]
            .as_str()
            .expect("url")
            .to_string();
        let put = self
            .http
            .put(&url)
            .header("x-ms-blob-type", "BlockBlob")
            .body(data.to_vec())
            .send()
            .await
            .expect("put blob");
        let status = put.status();
        let (_, finalized) = self
            .twirp(
                token,
                "FinalizeCacheEntryUpload",
                json!({"key": key, "version": version, "size_bytes": data.len().to_string()}),
            )
            .await;
        if status == StatusCode::CREATED {
            assert_eq!(finalized["ok"], true, "{finalized}");
        }
        status
    }

    /// Restores through v2: the matched key and the bytes, or `None` on a miss.
    async fn restore_v2(
        &self,
        token: &str,
        key: &str,
        restore_keys: &[&str],
        version: &str,
    ) -> Option<(String, Vec<u8>)> {
        let (status, found) = self
            .twirp(
                token,
                "GetCacheEntryDownloadURL",
                json!({"key": key, "restore_keys": restore_keys, "version": version}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        if found["ok"] != true {
            return None;
        }
        let url = found["signed_download_url"].as_str().expect("url");
        let response = self.http.get(url).send().await.expect("download");
        assert_eq!(response.status(), StatusCode::OK);
        Some((
            found["matched_key"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            response.bytes().await.expect("body").to_vec(),
        ))
    }

    /// Reserves through v1; returns the cache id.
    async fn reserve_v1(&self, token: &str, key: &str, size: usize) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.v1("caches"))
            .bearer_auth(token)
            .json(&json!({"key": key, "version": "v1", "cacheSize": size}))
            .send()
            .await
            .expect("reserve");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn patch_v1(&self, token: &str, id: i64, start: usize, data: &[u8]) -> StatusCode {
        self.http
            .patch(self.v1(&format!("caches/{id}")))
            .bearer_auth(token)
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Range",
                format!("bytes {start}-{}/*", start + data.len() - 1),
            )
            .body(data.to_vec())
            .send()
            .await
            .expect("patch")
            .status()
    }

    async fn commit_v1(&self, token: &str, id: i64, size: usize) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.v1(&format!("caches/{id}")))
            .bearer_auth(token)
            .json(&json!({"size": size}))
            .send()
            .await
            .expect("commit");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn lookup_v1(&self, token: &str, keys: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.v1("cache"))
            .query(&[("keys", keys), ("version", "v1")])
            .bearer_auth(token)
            .send()
            .await
            .expect("lookup");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn staged_uploads(&self) -> usize {
        self.proxy
            .cache
            .backend
            .list_uploads()
            .await
            .expect("uploads")
            .len()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + seed as usize) % 253) as u8)
        .collect()
}

// --- the cases -------------------------------------------------------------------

async fn v2_single_shot_round_trip_and_restore_key_prefixes(h: &Harness) {
    let token = h.writer();
    let bytes = data(300_000, 1);
    assert_eq!(
        h.save_v2(&token, "deps-linux-abc", "ver1", &bytes).await,
        StatusCode::CREATED
    );
    let (matched, back) = h
        .restore_v2(&token, "deps-linux-abc", &[], "ver1")
        .await
        .expect("exact hit");
    assert_eq!(matched, "deps-linux-abc");
    assert!(back == bytes);
    // A restore key matches by prefix; the newest of several wins.
    assert_eq!(
        h.save_v2(&token, "deps-linux-def", "ver1", &data(10, 2))
            .await,
        StatusCode::CREATED
    );
    let (matched, _) = h
        .restore_v2(&token, "deps-linux-zzz", &["deps-linux-"], "ver1")
        .await
        .expect("prefix hit");
    assert_eq!(matched, "deps-linux-def");
    // Another version (paths or compression differ) is a miss.
    assert!(h
        .restore_v2(&token, "deps-linux-abc", &[], "ver2")
        .await
        .is_none());
    // Saving an existing key is refused, as GitHub does.
    let (_, again) = h
        .twirp(
            &token,
            "CreateCacheEntry",
            json!({"key": "deps-linux-abc", "version": "ver1"}),
        )
        .await;
    assert_eq!(again["ok"], false, "{again}");
}

async fn v2_block_upload_joins_blocks_in_list_order(h: &Harness) {
    let token = h.writer();
    let (_, created) = h
        .twirp(
            &token,
            "CreateCacheEntry",
            json!({"key": "blocks", "version": "v"}),
        )
        .await;
    let url = created["signed_upload_url"]
        .as_str()
        .expect("url")
        .to_string();
    let blocks: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                base64::engine::general_purpose::STANDARD.encode(format!("block-{i:06}")),
                data(100_000 + i * 1000, i as u8),
            )
        })
        .collect();
    // Uploaded in reverse and in parallel; the list gives the order.
    let uploads = blocks.iter().rev().map(|(id, bytes)| {
        h.http
            .put(format!("{url}&comp=block&blockid={}", urlencode(id)))
            .body(bytes.clone())
            .send()
    });
    for response in futures::future::join_all(uploads).await {
        assert_eq!(response.expect("put block").status(), StatusCode::CREATED);
    }
    let ids: Vec<&str> = blocks.iter().map(|(id, _)| id.as_str()).collect();
    let committed = put_block_list(h, &url, &ids).await;
    assert_eq!(committed.status(), StatusCode::CREATED);
    assert!(committed.headers().contains_key("etag"));
    let expected: Vec<u8> = blocks.iter().flat_map(|(_, b)| b.clone()).collect();
    let (_, finalized) = h
        .twirp(
            &token,
            "FinalizeCacheEntryUpload",
            json!({"key": "blocks", "version": "v", "size_bytes": expected.len()}),
        )
        .await;
    assert_eq!(finalized["ok"], true, "{finalized}");
    let (_, back) = h.restore_v2(&token, "blocks", &[], "v").await.expect("hit");
    assert!(back == expected, "joined in list order");
    assert_eq!(h.staged_uploads().await, 0, "staging cleaned");
}

/// A block id as the Azure SDK makes them (the official client's): base64 of a
/// 36-character prefix and the block's index padded to 12 digits.
fn azure_block_id(prefix: &str, index: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{prefix:.36}{index:012}"))
}

/// Uploads `blocks` (id, bytes) to a new entry `key` in parallel, in reverse;
/// returns the upload URL and how many uploads had parts staged as objects just
/// before the list is sent.
async fn upload_blocks(
    h: &Harness,
    token: &str,
    key: &str,
    blocks: &[(String, Vec<u8>)],
) -> (String, usize) {
    let url = create_v2(h, token, key).await;
    let uploads = blocks.iter().rev().map(|(id, bytes)| {
        h.http
            .put(format!("{url}&comp=block&blockid={}", urlencode(id)))
            .body(bytes.clone())
            .send()
    });
    for response in futures::future::join_all(uploads).await {
        assert_eq!(response.expect("put block").status(), StatusCode::CREATED);
    }
    (url.clone(), h.staged_uploads().await)
}

/// Blocks of at least 5 MiB with the official client's ids are joined in list
/// order whether the list follows their indexes (on S3: placed in the final
/// object's multipart upload, so nothing is staged as an object) or not; two
/// blocks claiming one index either both arrive whole or the upload is refused,
/// never joined wrong; large v1 chunks the same.
async fn large_parts_are_joined_in_order_wherever_they_were_staged(h: &Harness) {
    let token = h.writer();
    let mib = 1usize << 20;
    let prefix = uuid::Uuid::new_v4().to_string();
    let blocks: Vec<(String, Vec<u8>)> = [6 * mib, 9 * mib, 5 * mib + 7]
        .iter()
        .enumerate()
        .map(|(i, &len)| (azure_block_id(&prefix, i), data(len, i as u8 + 40)))
        .collect();
    let s3 = h.proxy.cache.backend.name() == "s3";
    for (key, order) in [("placed", [0usize, 1, 2]), ("reordered", [2, 0, 1])] {
        let (url, staged) = upload_blocks(h, &token, key, &blocks).await;
        if s3 {
            assert_eq!(
                staged, 0,
                "{key}: every block placed, none staged as an object"
            );
        }
        let ids: Vec<&str> = order.iter().map(|&i| blocks[i].0.as_str()).collect();
        let committed = put_block_list(h, &url, &ids).await;
        assert_eq!(committed.status(), StatusCode::CREATED, "{key}");
        let expected: Vec<u8> = order.iter().flat_map(|&i| blocks[i].1.clone()).collect();
        let (_, back) = h.restore_v2(&token, key, &[], "v").await.expect("hit");
        assert!(back == expected, "{key}: joined in list order");
    }

    // Two ids, one index: whatever the race, the entry is the list's bytes or nothing.
    let other = uuid::Uuid::new_v4().to_string();
    let clash = vec![
        (azure_block_id(&prefix, 0), data(6 * mib, 50)),
        (azure_block_id(&other, 0), data(6 * mib, 51)),
    ];
    let (url, _) = upload_blocks(h, &token, "clash", &clash).await;
    let ids: Vec<&str> = clash.iter().map(|(id, _)| id.as_str()).collect();
    let committed = put_block_list(h, &url, &ids).await;
    match committed.status() {
        StatusCode::CREATED => {
            let expected: Vec<u8> = clash.iter().flat_map(|(_, b)| b.clone()).collect();
            let (_, back) = h.restore_v2(&token, "clash", &[], "v").await.expect("hit");
            assert!(back == expected, "clashing ids: the list's bytes");
        }
        StatusCode::BAD_REQUEST => {
            let text = committed.text().await.unwrap_or_default();
            assert!(text.contains("same position"), "{text}");
            assert!(h.restore_v2(&token, "clash", &[], "v").await.is_none());
        }
        other => panic!("clashing ids: {other}"),
    }

    // v1: 8 MiB chunks (ranked by offset) and a short last one, in parallel.
    let entry = data(8 * mib * 2 + 12_345, 60);
    let (status, reserved) = h.reserve_v1(&token, "v1-large", entry.len()).await;
    assert_eq!(status, StatusCode::CREATED, "{reserved}");
    let id = reserved["cacheId"].as_i64().expect("cache id");
    let chunks = entry
        .chunks(8 * mib)
        .enumerate()
        .map(|(i, chunk)| h.patch_v1(&token, id, i * 8 * mib, chunk));
    for status in futures::future::join_all(chunks).await {
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, body) = h.commit_v1(&token, id, entry.len()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, found) = h.lookup_v1(&token, "v1-large").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let back = h
        .http
        .get(found["archiveLocation"].as_str().expect("location"))
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    assert!(back[..] == entry[..], "v1 chunks joined by offset");
    assert_eq!(h.staged_uploads().await, 0, "staging cleaned");
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn v2_download_supports_ranges(h: &Harness) {
    let token = h.writer();
    let bytes = data(50_000, 3);
    h.save_v2(&token, "ranged", "v", &bytes).await;
    let (_, found) = h
        .twirp(
            &token,
            "GetCacheEntryDownloadURL",
            json!({"key": "ranged", "version": "v"}),
        )
        .await;
    let url = found["signed_download_url"].as_str().expect("url");
    let response = h
        .http
        .get(url)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .expect("ranged");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"]
            .to_str()
            .expect("header"),
        "bytes 100-199/50000"
    );
    assert!(response.bytes().await.expect("body") == bytes[100..200]);
    let response = h
        .http
        .get(url)
        .header("Range", "bytes=60000-")
        .send()
        .await
        .expect("unsatisfiable");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // A tampered link is refused.
    let tampered = url.replace("sig=", "sig=x");
    assert_eq!(
        h.http.get(&tampered).send().await.expect("get").status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn v1_parallel_out_of_order_chunks_round_trip(h: &Harness) {
    let token = h.writer();
    let bytes = data(250_000, 4);
    let (status, reserved) = h.reserve_v1(&token, "v1-key", bytes.len()).await;
    assert_eq!(status, StatusCode::CREATED, "{reserved}");
    let id = reserved["cacheId"].as_i64().expect("cacheId");
    let chunk = 64 * 1024;
    let patches = bytes.chunks(chunk).enumerate().rev().map(|(i, piece)| {
        let token = token.clone();
        async move { h.patch_v1(&token, id, i * chunk, piece).await }
    });
    for status in futures::future::join_all(patches).await {
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, body) = h.commit_v1(&token, id, bytes.len()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, found) = h.lookup_v1(&token, "v1-nope,v1-").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["cacheKey"], "v1-key");
    assert_eq!(found["scope"], "refs/heads/feature");
    let archive = found["archiveLocation"].as_str().expect("archiveLocation");
    let back = h
        .http
        .get(archive)
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    assert!(back == bytes);
    let listed: Value = h
        .http
        .get(h.v1("caches"))
        .query(&[("key", "v1-")])
        .bearer_auth(&token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["totalCount"], 1, "{listed}");
    let (status, _) = h.lookup_v1(&token, "absent").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

async fn v1_bad_ranges_and_sizes_discard_the_upload_and_nothing_else(h: &Harness) {
    let token = h.writer();
    // A committed neighbour that must survive everything below.
    let keep = data(1000, 5);
    h.save_v2(&token, "neighbour", "v1", &keep).await;

    // A gap.
    let (_, reserved) = h.reserve_v1(&token, "gap", 300).await;
    let id = reserved["cacheId"].as_i64().expect("id");
    assert_eq!(
        h.patch_v1(&token, id, 0, &data(100, 1)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.patch_v1(&token, id, 200, &data(100, 1)).await,
        StatusCode::NO_CONTENT
    );
    let (status, body) = h.commit_v1(&token, id, 300).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("never uploaded"),
        "{body}"
    );
    assert_eq!(h.lookup_v1(&token, "gap").await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        h.reserve_v1(&token, "gap", 300).await.0,
        StatusCode::CREATED,
        "key free again"
    );

    // An overlap.
    let (_, reserved) = h.reserve_v1(&token, "overlap", 300).await;
    let id = reserved["cacheId"].as_i64().expect("id");
    assert_eq!(
        h.patch_v1(&token, id, 0, &data(200, 1)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.patch_v1(&token, id, 100, &data(200, 1)).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.commit_v1(&token, id, 300).await.0,
        StatusCode::NOT_FOUND,
        "discarded"
    );

    // A commit whose size does not match.
    let (_, reserved) = h.reserve_v1(&token, "size", 100).await;
    let id = reserved["cacheId"].as_i64().expect("id");
    assert_eq!(
        h.patch_v1(&token, id, 0, &data(100, 1)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.commit_v1(&token, id, 150).await.0,
        StatusCode::BAD_REQUEST
    );

    // A chunk past the reserved size, a bad Content-Range.
    let (_, reserved) = h.reserve_v1(&token, "past", 100).await;
    let id = reserved["cacheId"].as_i64().expect("id");
    assert_eq!(
        h.patch_v1(&token, id, 50, &data(100, 1)).await,
        StatusCode::BAD_REQUEST
    );
    let (_, reserved) = h.reserve_v1(&token, "badrange", 100).await;
    let id = reserved["cacheId"].as_i64().expect("id");
    let response = h
        .http
        .patch(h.v1(&format!("caches/{id}")))
        .bearer_auth(&token)
        .header("Content-Range", "bytes nine-ten/*")
        .body("x")
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Keys over 512 bytes, with commas.
    assert_eq!(
        h.reserve_v1(&token, &"k".repeat(513), 1).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.reserve_v1(&token, "a,b", 1).await.0,
        StatusCode::BAD_REQUEST
    );

    // Nothing staged is left, and the neighbour is intact.
    assert_eq!(h.staged_uploads().await, 0);
    let (_, back) = h
        .restore_v2(&token, "neighbour", &[], "v1")
        .await
        .expect("neighbour");
    assert!(back == keep);
}

async fn scopes_orgs_refs_and_permissions(h: &Harness) {
    let feature = h.writer();
    let main = h.token(1, "acme/app", "refs/heads/main", CachePermission::Write);
    let other_org = h.token(2, "acme/app", "refs/heads/feature", CachePermission::Write);
    let other_repo = h.token(
        1,
        "acme/other",
        "refs/heads/feature",
        CachePermission::Write,
    );
    let reader = h.token(1, "acme/app", "refs/heads/feature", CachePermission::Read);

    h.save_v2(&main, "on-main", "v", b"main bytes").await;
    h.save_v2(&feature, "on-feature", "v", b"feature bytes")
        .await;
    // The feature branch restores from main (the default branch)...
    assert!(h.restore_v2(&feature, "on-main", &[], "v").await.is_some());
    // ...but main never sees a feature branch's entries.
    assert!(h.restore_v2(&main, "on-feature", &[], "v").await.is_none());
    // Other orgs and repositories see nothing.
    assert!(h
        .restore_v2(&other_org, "on-feature", &[], "v")
        .await
        .is_none());
    assert!(h
        .restore_v2(&other_repo, "on-feature", &[], "v")
        .await
        .is_none());
    // A read token restores but cannot save.
    assert!(h
        .restore_v2(&reader, "on-feature", &[], "v")
        .await
        .is_some());
    let (status, _) = h
        .twirp(
            &reader,
            "CreateCacheEntry",
            json!({"key": "nope", "version": "v"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another org cannot touch a pending upload by guessing its id: 404, not 403.
    let (_, reserved) = h.reserve_v1(&feature, "pending", 10).await;
    let id = reserved["cacheId"].as_i64().expect("id");
    assert_eq!(
        h.patch_v1(&other_org, id, 0, b"0123456789").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.commit_v1(&other_org, id, 10).await.0,
        StatusCode::NOT_FOUND
    );
    // No token, a bad token, an expired token.
    let response = h
        .http
        .get(h.v1("cache?keys=a&version=v"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = h.lookup_v1("nct1.forged.signature", "a").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let expired = h
        .keys
        .mint(
            1,
            "acme/app",
            "refs/heads/main",
            DEFAULT_BRANCH,
            CachePermission::Write,
            Duration::ZERO,
        )
        .expect("token");
    let (status, body) = h.lookup_v1(&expired, "a").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{body}"
    );
}

async fn artifact_api_put_get_head_delete_and_usage(h: &Harness) {
    let token = h.writer();
    let url = format!("{}/api/cache/tools/linter.tar", h.base);
    let first = data(5000, 6);
    let response = h
        .http
        .put(&url)
        .bearer_auth(&token)
        .body(first.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    let back = h
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(back.status(), StatusCode::OK);
    assert!(back.bytes().await.expect("body") == first);
    // A second PUT replaces the entry.
    let second = data(7000, 7);
    h.http
        .put(&url)
        .bearer_auth(&token)
        .body(second.clone())
        .send()
        .await
        .expect("put");
    let head = h
        .http
        .head(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"].to_str().expect("length"),
        "7000"
    );
    let back = h
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert!(back.bytes().await.expect("body") == second);
    // Another org: 404.
    let other = h.token(2, "acme/app", "refs/heads/feature", CachePermission::Write);
    assert_eq!(
        h.http
            .get(&url)
            .bearer_auth(&other)
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::NOT_FOUND
    );
    let miss = format!("{}/api/cache/absent", h.base);
    assert_eq!(
        h.http
            .get(&miss)
            .bearer_auth(&token)
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::NOT_FOUND
    );
    let usage: Value = h
        .http
        .get(format!("{}/api/usage", h.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    let orgs = usage["orgs"].as_array().expect("orgs");
    assert_eq!(
        orgs.len(),
        1,
        "a cache token sees its own org only: {usage}"
    );
    assert_eq!(orgs[0]["org_id"], 1);
    assert_eq!(orgs[0]["bytes"], 7000);
    assert_eq!(orgs[0]["entries"], 1);
    assert_eq!(orgs[0]["hits"], 2);
    assert_eq!(orgs[0]["misses"], 1);
    assert_eq!(
        h.http
            .delete(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("delete")
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::NOT_FOUND
    );
}

async fn a_client_killed_mid_upload_leaves_nothing(h: &Harness) {
    use tokio::io::AsyncWriteExt;
    let token = h.writer();
    let (_, created) = h
        .twirp(
            &token,
            "CreateCacheEntry",
            json!({"key": "killed", "version": "v"}),
        )
        .await;
    let url = created["signed_upload_url"].as_str().expect("url");
    let path = url.trim_start_matches(&h.base);
    let address = h.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {address}\r\nx-ms-blob-type: BlockBlob\r\nContent-Length: 1000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&data(100_000, 8))
        .await
        .expect("some body");
    drop(stream); // killed
                  // The reservation is dropped once the server sees the body end early.
    for _ in 0..100 {
        let (_, again) = h
            .twirp(
                &token,
                "CreateCacheEntry",
                json!({"key": "killed", "version": "v"}),
            )
            .await;
        if again["ok"] == true {
            assert!(h.restore_v2(&token, "killed", &[], "v").await.is_none());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the killed upload still holds its key");
}

// --- wiring: every case on both stacks ------------------------------------------

macro_rules! on_both_stacks {
    ($($case:ident),* $(,)?) => {
        mod fs_sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let h = super::Harness::start(super::Stack::FsSqlite).await.expect("harness");
                    super::$case(&h).await;
                }
            )*
        }
        mod s3_postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(h) = super::Harness::start(super::Stack::S3Postgres).await else { return };
                    super::$case(&h).await;
                }
            )*
        }
    };
}

on_both_stacks!(
    v2_single_shot_round_trip_and_restore_key_prefixes,
    v2_block_upload_joins_blocks_in_list_order,
    large_parts_are_joined_in_order_wherever_they_were_staged,
    v2_download_supports_ranges,
    v1_parallel_out_of_order_chunks_round_trip,
    v1_bad_ranges_and_sizes_discard_the_upload_and_nothing_else,
    scopes_orgs_refs_and_permissions,
    artifact_api_put_get_head_delete_and_usage,
    a_client_killed_mid_upload_leaves_nothing,
);

// --- budgets, eviction, scrub (fs + SQLite) ---------------------------------------

/// The blob store's disk fills up: uploads answer 507 and leave nothing behind
/// (no entry, no staged or temporary file), entries already stored stay whole,
/// and uploads succeed again once space is freed.
#[tokio::test]
async fn a_full_disk_answers_507_keeps_what_was_stored_and_recovers() {
    let Some(disk) = nimbus_core::testsuite::SmallDisk::mount("24m") else {
        return;
    };
    let h = Harness::start_fs_at(disk.path().join("blobs")).await;
    let token = h.writer();
    let kept = data(4 << 20, 70);
    assert_eq!(
        h.save_v2(&token, "kept", "v", &kept).await,
        StatusCode::CREATED
    );
    let mut refused = None;
    for i in 0..10 {
        let status = h
            .save_v2(&token, &format!("filler-{i}"), "v", &data(6 << 20, i))
            .await;
        if status != StatusCode::CREATED {
            refused = Some((i, status));
            break;
        }
    }
    let (full_at, status) = refused.expect("the disk filled up");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(
        h.restore_v2(&token, &format!("filler-{full_at}"), &[], "v")
            .await
            .is_none(),
        "the refused upload is not listed"
    );
    assert_eq!(h.staged_uploads().await, 0);
    let leftovers = std::fs::read_dir(disk.path().join("blobs/tmp"))
        .expect("tmp dir")
        .count();
    assert_eq!(leftovers, 0, "no half-written file is left");
    let (_, back) = h.restore_v2(&token, "kept", &[], "v").await.expect("hit");
    assert!(back == kept, "what was stored before stays whole");
    // Chunked (v1) uploads are refused the same way.
    let (status, reserved) = h.reserve_v1(&token, "v1-full", 8 << 20).await;
    assert_eq!(status, StatusCode::CREATED, "{reserved}");
    let id = reserved["cacheId"].as_i64().expect("cache id");
    assert_eq!(
        h.patch_v1(&token, id, 0, &data(8 << 20, 80)).await,
        StatusCode::INSUFFICIENT_STORAGE
    );
    // Room again: the next upload goes through.
    for i in 0..full_at {
        let scope = h.keys.verify(&token).expect("scope");
        h.proxy
            .cache
            .delete(&scope, &format!("filler-{i}"), "v")
            .await
            .expect("delete a filler");
    }
    let again = data(6 << 20, 90);
    assert_eq!(
        h.save_v2(&token, "again", "v", &again).await,
        StatusCode::CREATED
    );
    let (_, back) = h.restore_v2(&token, "again", &[], "v").await.expect("hit");
    assert!(back == again);
}

#[tokio::test]
async fn uploads_over_the_budget_are_refused_with_413_and_discarded() {
    let h = Harness::start_with(Stack::FsSqlite, |config| {
        config.budgets.org_bytes = Some(10_000);
    })
    .await
    .expect("harness");
    let token = h.writer();
    let (status, body) = h.reserve_v1(&token, "big", 20_000).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "v1 says too large with a 400: {body}"
    );
    // v2 announces no size: the body is cut off at the budget.
    assert_eq!(
        h.save_v2(&token, "big", "v", &data(20_000, 1)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(h.restore_v2(&token, "big", &[], "v").await.is_none());
    assert_eq!(h.staged_uploads().await, 0);
    let url = format!("{}/api/cache/big", h.base);
    let response = h
        .http
        .put(&url)
        .bearer_auth(&token)
        .body(data(20_000, 1))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn eviction_keeps_each_org_under_its_budget_least_recently_used_first() {
    let budgets = Budgets {
        global_bytes: Some(5_000),
        org_bytes: Some(3_000),
        max_idle: Duration::from_secs(7 * 86_400),
        upload_ttl: Duration::from_secs(3600),
        upload_max_age: Duration::from_secs(3600),
    };
    // The proxy's own background pass keeps its default budgets; this test applies
    // the small ones itself, so it knows what each pass removes.
    let h = Harness::start(Stack::FsSqlite).await.expect("harness");
    let org1 = h.writer();
    let org2 = h.token(2, "acme/app", "refs/heads/feature", CachePermission::Write);
    for key in ["a", "b", "c"] {
        h.save_v2(&org1, key, "v", &data(1000, 1)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Reading "a" makes "b" the least recently used.
    assert!(h.restore_v2(&org1, "a", &[], "v").await.is_some());
    h.save_v2(&org1, "d", "v", &data(1000, 1)).await;
    let evicted = maintenance::evict_once(&h.proxy.cache, &budgets)
        .await
        .expect("evict");
    assert_eq!(evicted, 1);
    assert!(
        h.restore_v2(&org1, "b", &[], "v").await.is_none(),
        "b was evicted"
    );
    for key in ["a", "c", "d"] {
        assert!(
            h.restore_v2(&org1, key, &[], "v").await.is_some(),
            "{key} kept"
        );
    }
    // Org 2 is within its own budget but pushes the total over the global one.
    for key in ["x", "y", "z"] {
        h.save_v2(&org2, key, "v", &data(1000, 2)).await;
    }
    let evicted = maintenance::evict_once(&h.proxy.cache, &budgets)
        .await
        .expect("evict");
    assert_eq!(evicted, 1, "6000 bytes over a 5000 budget: one entry goes");
    let metrics = h.proxy.cache.metrics.render();
    assert!(
        metrics.contains("nimbus_cache_evictions_total{kind=\"actions\"} 2"),
        "{metrics}"
    );
    let usage = h.proxy.cache.usage(Some(1)).await.expect("usage");
    assert!(usage[0].evictions >= 1);

    // Idle entries go whatever the budget.
    let idle = Budgets {
        max_idle: Duration::ZERO,
        ..budgets
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let evicted = maintenance::evict_once(&h.proxy.cache, &idle)
        .await
        .expect("evict");
    assert_eq!(evicted, 5, "every remaining entry is idle");
}

#[tokio::test]
async fn the_scrub_drops_corrupt_and_missing_entries_and_serves_no_bad_bytes() {
    let h = Harness::start(Stack::FsSqlite).await.expect("harness");
    let token = h.writer();
    for key in ["good", "corrupt", "missing"] {
        h.save_v2(&token, key, "v", &data(4000, 9)).await;
    }
    let blob = |key: &str| {
        let h = &h;
        let key = key.to_string();
        async move {
            let entry = h
                .proxy
                .cache
                .index
                .find(
                    1,
                    "acme/app",
                    "refs/heads/feature",
                    &key,
                    "v",
                    nimbus_cache::index::EntryState::Committed,
                )
                .await
                .expect("find")
                .expect("entry");
            h._dir.path().join("blobs/objects").join(entry.blob_key)
        }
    };
    let corrupt = blob("corrupt").await;
    let mut bytes = std::fs::read(&corrupt).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(&corrupt, bytes).expect("corrupt it");
    std::fs::remove_file(blob("missing").await).expect("remove");
    let report = maintenance::scrub_once(&h.proxy.cache)
        .await
        .expect("scrub");
    assert_eq!((report.verified, report.corrupt), (1, 2), "{report:?}");
    assert!(h.restore_v2(&token, "good", &[], "v").await.is_some());
    assert!(h.restore_v2(&token, "corrupt", &[], "v").await.is_none());
    assert!(h.restore_v2(&token, "missing", &[], "v").await.is_none());
    assert!(h
        .proxy
        .cache
        .metrics
        .render()
        .contains("nimbus_cache_corrupt_entries_total 2"));
}

/// An entry joined from several parts (v1 chunks) is identified by the composite
/// of its parts' sha256s, served with it as ETag, and scrubbed part by part: a
/// flipped byte in its middle part is caught.
#[tokio::test]
async fn a_composed_entry_is_scrubbed_part_by_part() {
    let h = Harness::start(Stack::FsSqlite).await.expect("harness");
    let token = h.writer();
    let bytes = data(3 * 5000, 11);
    let mut ids = Vec::new();
    for key in ["whole", "flipped"] {
        let (status, reserved) = h.reserve_v1(&token, key, bytes.len()).await;
        assert_eq!(status, StatusCode::CREATED, "{reserved}");
        let id = reserved["cacheId"].as_i64().expect("cacheId");
        for (i, piece) in bytes.chunks(5000).enumerate() {
            assert_eq!(
                h.patch_v1(&token, id, i * 5000, piece).await,
                StatusCode::NO_CONTENT
            );
        }
        let (status, body) = h.commit_v1(&token, id, bytes.len()).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        ids.push(id);
    }
    let entry = h.proxy.cache.entry(ids[0]).await.expect("entry");
    let digest = entry.sha256.clone().expect("digest");
    let parts: Vec<Vec<u8>> = bytes
        .chunks(5000)
        .map(|piece| Sha256::digest(piece).to_vec())
        .collect();
    assert_eq!(
        digest,
        format!("{}-3", hex::encode(Sha256::digest(parts.concat()))),
        "the sha256 of the parts' sha256s, and how many"
    );
    let (status, found) = h.lookup_v1(&token, "whole").await;
    assert_eq!(status, StatusCode::OK);
    let download = h
        .http
        .get(found["archiveLocation"].as_str().expect("archiveLocation"))
        .send()
        .await
        .expect("download");
    assert_eq!(
        download.headers()["etag"].to_str().expect("etag"),
        format!("\"{digest}\"")
    );
    assert!(download.bytes().await.expect("body") == bytes);

    let flipped = h.proxy.cache.entry(ids[1]).await.expect("entry");
    // The fs store keeps a composed entry as its parts, listed by a manifest.
    let blobs = h._dir.path().join("blobs");
    let manifest =
        std::fs::read_to_string(blobs.join("manifests").join(&flipped.blob_key)).expect("manifest");
    let dir = manifest.lines().nth(1).expect("the parts' directory");
    let path = blobs
        .join("composed")
        .join(dir)
        .join(format!("o{:020}", 5000));
    let mut stored = std::fs::read(&path).expect("read");
    stored[2000] ^= 0x01; // byte 7000 of the entry
    std::fs::write(&path, stored).expect("flip a byte of the middle part");
    let report = maintenance::scrub_once(&h.proxy.cache)
        .await
        .expect("scrub");
    assert_eq!((report.verified, report.corrupt), (1, 1), "{report:?}");
    assert!(h.proxy.cache.entry(ids[0]).await.is_ok());
    assert!(h.proxy.cache.entry(ids[1]).await.is_err(), "dropped");
}

#[tokio::test]
async fn abandoned_uploads_are_swept() {
    let h = Harness::start(Stack::FsSqlite).await.expect("harness");
    let token = h.writer();
    let (_, reserved) = h.reserve_v1(&token, "abandoned", 200).await;
    let id = reserved["cacheId"].as_i64().expect("id");
    assert_eq!(
        h.patch_v1(&token, id, 0, &data(100, 1)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.staged_uploads().await, 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let dropped =
        maintenance::sweep_abandoned(&h.proxy.cache, Duration::ZERO, Duration::from_secs(3600))
            .await
            .expect("sweep");
    assert_eq!(dropped, 1);
    assert_eq!(h.staged_uploads().await, 0);
    assert_eq!(
        h.reserve_v1(&token, "abandoned", 200).await.0,
        StatusCode::CREATED
    );
}

/// Many uploads committing at once on the SQLite index all succeed (a commit that
/// read before writing used to fail with SQLITE_BUSY_SNAPSHOT under contention).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_on_sqlite_all_succeed() {
    let h = Harness::start(Stack::FsSqlite).await.expect("harness");
    let token = h.writer();
    let saves = (0..24).map(|i| {
        let token = token.clone();
        let h = &h;
        async move {
            h.save_v2(
                &token,
                &format!("concurrent-{i}"),
                "v",
                &data(64 * 1024, i as u8),
            )
            .await
        }
    });
    for status in futures::future::join_all(saves).await {
        assert_eq!(status, StatusCode::CREATED);
    }
}

// --- what a job's token may do, and how much it may hold (docs/security.md) -------

/// Reserves `key` through v2 and answers its signed upload link.
async fn create_v2(h: &Harness, token: &str, key: &str) -> String {
    let (_, created) = h
        .twirp(
            token,
            "CreateCacheEntry",
            json!({"key": key, "version": "v"}),
        )
        .await;
    assert_eq!(created["ok"], true, "{created}");
    created["signed_upload_url"]
        .as_str()
        .expect("url")
        .to_string()
}

/// Azure's Put Block List: commits the blocks `ids` (base64, as listed) in order.
async fn put_block_list(h: &Harness, url: &str, ids: &[&str]) -> reqwest::Response {
    let list: String = ids
        .iter()
        .map(|id| format!("<Latest>{id}</Latest>"))
        .collect();
    h.http
        .put(format!("{url}&comp=blocklist"))
        .body(format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>{list}</BlockList>"
        ))
        .send()
        .await
        .expect("block list")
}

async fn put_block(h: &Harness, url: &str, id: &str, bytes: Vec<u8>) -> StatusCode {
    use base64::Engine;
    let id = base64::engine::general_purpose::STANDARD.encode(id);
    h.http
        .put(format!("{url}&comp=block&blockid={id}"))
        .body(bytes)
        .send()
        .await
        .expect("put block")
        .status()
}

/// A read-only token (a fork's pull request gets one) can restore but not
/// finalize: finalizing discards a pending upload, and removes a committed entry
/// whose size it contradicts.
#[tokio::test]
async fn a_read_only_token_cannot_finalize() {
    let h = Harness::start(Stack::FsSqlite).await.expect("harness");
    let writer = h.writer();
    let reader = h.token(1, "acme/app", "refs/heads/feature", CachePermission::Read);
    assert_eq!(
        h.save_v2(&writer, "committed", "v", &data(1000, 1)).await,
        StatusCode::CREATED
    );
    let (status, answer) = h
        .twirp(
            &reader,
            "FinalizeCacheEntryUpload",
            json!({"key": "committed", "version": "v", "size_bytes": "1"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let url = create_v2(&h, &writer, "pending").await;
    assert_eq!(
        put_block(&h, &url, "block-0", data(100, 2)).await,
        StatusCode::CREATED
    );
    let (status, _) = h
        .twirp(
            &reader,
            "FinalizeCacheEntryUpload",
            json!({"key": "pending", "version": "v"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        h.staged_uploads().await,
        1,
        "the pending upload is untouched"
    );
    let restored = h.restore_v2(&reader, "committed", &[], "v").await;
    assert_eq!(
        restored.map(|(_, bytes)| bytes.len()),
        Some(1000),
        "the committed entry is untouched"
    );
}

/// A restore tries at most ten keys, as GitHub's; more is a clear 400.
#[tokio::test]
async fn restores_try_at_most_ten_keys() {
    let h = Harness::start(Stack::FsSqlite).await.expect("harness");
    let token = h.writer();
    let nine: Vec<String> = (0..9).map(|i| format!("prefix-{i}-")).collect();
    let (status, _) = h
        .twirp(
            &token,
            "GetCacheEntryDownloadURL",
            json!({"key": "k", "restore_keys": nine, "version": "v"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let many: Vec<String> = (0..10_000).map(|i| format!("prefix-{i}-")).collect();
    let (status, answer) = h
        .twirp(
            &token,
            "GetCacheEntryDownloadURL",
            json!({"key": "k", "restore_keys": many, "version": "v"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let keys: Vec<String> = (0..11).map(|i| format!("k{i}")).collect();
    assert_eq!(
        h.lookup_v1(&token, &keys.join(",")).await.0,
        StatusCode::BAD_REQUEST
    );
}

/// Staged blocks are storage: the blocks of one upload may not add up to more than
/// an entry may have, nor an org's unfinished uploads to more than its budget,
/// however many block ids they use.
#[tokio::test]
async fn staged_blocks_count_against_the_budget() {
    let h = Harness::start_with(Stack::FsSqlite, |config| {
        config.budgets.org_bytes = Some(10_000);
    })
    .await
    .expect("harness");
    let token = h.writer();
    let url = create_v2(&h, &token, "one-upload").await;
    assert_eq!(
        put_block(&h, &url, "block-0", data(6_000, 1)).await,
        StatusCode::CREATED
    );
    // The same block again replaces it: still within the budget.
    assert_eq!(
        put_block(&h, &url, "block-0", data(6_000, 1)).await,
        StatusCode::CREATED
    );
    assert_eq!(
        put_block(&h, &url, "block-1", data(6_000, 2)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(h.staged_uploads().await, 0, "the upload is discarded");

    // Two uploads of one org, each within an entry's size, together over the budget.
    let first = create_v2(&h, &token, "first").await;
    let second = create_v2(&h, &token, "second").await;
    assert_eq!(
        put_block(&h, &first, "a", data(6_000, 3)).await,
        StatusCode::CREATED
    );
    assert_eq!(
        put_block(&h, &second, "a", data(6_000, 4)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Another org's staging is its own.
    let other = h.token(2, "rival/app", "refs/heads/main", CachePermission::Write);
    let theirs = create_v2(&h, &other, "theirs").await;
    assert_eq!(
        put_block(&h, &theirs, "a", data(6_000, 5)).await,
        StatusCode::CREATED
    );

    // A block list naming one small block over and over would have the store
    // write far more than was staged: refused before a byte is joined.
    let rival = h.token(3, "rival/other", "refs/heads/main", CachePermission::Write);
    let amplified = create_v2(&h, &rival, "amplified").await;
    assert_eq!(
        put_block(&h, &amplified, "block-000000", data(1_000, 6)).await,
        StatusCode::CREATED
    );
    let staged_before = h.staged_uploads().await;
    let id = base64::engine::general_purpose::STANDARD.encode("block-000000");
    let committed = put_block_list(&h, &amplified, &[id.as_str(); 11]).await;
    assert_eq!(committed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer = committed.text().await.expect("body");
    assert!(
        answer.contains("the parts to join add up to 11000 bytes"),
        "refused before joining: {answer}"
    );
    assert_eq!(
        h.staged_uploads().await,
        staged_before - 1,
        "the upload is discarded"
    );
    assert!(h.restore_v2(&rival, "amplified", &[], "v").await.is_none());
}

/// An org has a bounded number of unfinished uploads, and an upload kept alive by
/// a trickle of parts still goes once it is older than the longest allowed.
#[tokio::test]
async fn unfinished_uploads_are_bounded_in_number_and_age() {
    let h = Harness::start_with(Stack::FsSqlite, |config| {
        config.max_pending_uploads = 3;
    })
    .await
    .expect("harness");
    let token = h.writer();
    for key in ["p1", "p2", "p3"] {
        create_v2(&h, &token, key).await;
    }
    let (status, answer) = h
        .twirp(
            &token,
            "CreateCacheEntry",
            json!({"key": "p4", "version": "v"}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    let other = h.token(2, "rival/app", "refs/heads/main", CachePermission::Write);
    create_v2(&h, &other, "theirs").await;

    // Parts keep the uploads busy (no idle sweep), but age catches them.
    let swept = maintenance::sweep_abandoned(
        &h.proxy.cache,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .await
    .expect("sweep");
    assert_eq!(swept, 0, "young, busy uploads stay");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let swept =
        maintenance::sweep_abandoned(&h.proxy.cache, Duration::from_secs(3600), Duration::ZERO)
            .await
            .expect("sweep");
    assert_eq!(swept, 4, "every upload past the longest age goes");
    create_v2(&h, &token, "p4").await;
}
