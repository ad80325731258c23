//! The official `@actions/cache` client (npm 6.3.0, tests/clients) saves a ~200 MiB
//! directory tree on one "runner" and restores it on another, through v2 and v1,
//! against the proxy on the fs backend and on the s3 backend. Under CI=true a
//! missing Node.js, client or S3 server fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nimbus_cache::backend::fs::FsBackend;
use nimbus_cache::backend::s3::S3Backend;
use nimbus_cache::server::{self, S3Config};
use nimbus_cache::{CacheBackend, CacheIndex, Proxy, ProxyConfig};
use nimbus_core::cache_token::{CachePermission, CacheTokenKeys, DEFAULT_BRANCH};
use nimbus_core::{Env, Secret};
use sha2::{Digest, Sha256};

const SECRET: &str = "official-client-secret-0123456789";
/// 200 files of 1 MiB in nested directories: above the client's 128 MiB single-shot
/// limit, so v2 goes through Put Block + Put Block List.
const FILES: usize = 200;
const FILE_BYTES: usize = 1 << 20;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients")
}

/// Whether node and the installed client are there (`npm ci` in tests/clients).
fn client_available() -> bool {
    let installed = clients_dir()
        .join("node_modules/@actions/cache/package.json")
        .exists();
    let node = Command::new("node").arg("--version").output().is_ok();
    nimbus_core::testsuite::require(
        (installed && node).then_some(()),
        "node or @actions/cache (npm ci in tests/clients)",
    )
    .is_some()
}

/// Fills `dir` with incompressible files (a fixed xorshift stream, so runs agree).
fn make_tree(dir: &Path) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..FILES {
        let sub = dir.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let mut bytes = vec![0u8; FILE_BYTES];
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(sub.join(format!("f{i}.bin")), bytes).expect("write");
    }
}

/// A digest of every file's relative path and contents.
fn tree_digest(dir: &Path) -> String {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .expect("prefix")
                    .display()
                    .to_string();
                let digest = Sha256::digest(std::fs::read(&path).expect("read")).to_vec();
                out.push((relative, digest));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for (path, digest) in &files {
        hasher.update(path.as_bytes());
        hasher.update(digest);
    }
    format!("{}:{}", files.len(), hex::encode(hasher.finalize()))
}

struct Proxied {
    base: String,
    token: String,
    _dir: tempfile::TempDir,
}

async fn start_proxy(backend: Arc<dyn CacheBackend>, dir: tempfile::TempDir) -> Proxied {
    let data_dir = dir.path().display().to_string();
    let config = ProxyConfig::from_env(&Env::from_map([
        ("NIMBUS_DATA_DIR", data_dir.as_str()),
        ("NIMBUS_CACHE_SHARED_SECRET", SECRET),
        ("NIMBUS_JWT_SECRET", SECRET),
    ]))
    .expect("config");
    let index = CacheIndex::open(&dir.path().join("index.db").display().to_string())
        .await
        .expect("index");
    let proxy = Proxy::new(&config, backend, index).expect("proxy");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = server::serve(&config, proxy, listener, std::future::pending()).await;
    });
    let token = CacheTokenKeys::new(&Secret::new(SECRET))
        .mint(
            1,
            "acme/app",
            "refs/heads/main",
            DEFAULT_BRANCH,
            CachePermission::Write,
            Duration::from_secs(3600),
        )
        .expect("token");
    Proxied {
        base: format!("http://{address}/"),
        token,
        _dir: dir,
    }
}

/// Runs the client as a separate "runner" process.
async fn client(proxy: &Proxied, v2: bool, args: &[&str], cwd: &Path) -> (bool, String) {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(clients_dir().join("cache-client.mjs"))
        .args(args)
        .current_dir(cwd)
        .env("ACTIONS_RUNTIME_TOKEN", &proxy.token)
        .env_remove("GITHUB_SERVER_URL")
        .env_remove("ACTIONS_CACHE_SERVICE_V2")
        .env_remove("ACTIONS_CACHE_URL")
        .env_remove("ACTIONS_RESULTS_URL")
        .env("RUNNER_TEMP", cwd.join("runner-temp"));
    if v2 {
        command
            .env("ACTIONS_CACHE_SERVICE_V2", "true")
            .env("ACTIONS_RESULTS_URL", &proxy.base);
    } else {
        command.env("ACTIONS_CACHE_URL", &proxy.base);
    }
    let output = command.output().await.expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Saves a tree on runner A, restores it on runner B (an empty workspace).
async fn round_trip(proxy: &Proxied, v2: bool) {
    let label = if v2 { "v2" } else { "v1" };
    let runner_a = tempfile::tempdir().expect("runner a");
    let runner_b = tempfile::tempdir().expect("runner b");
    for runner in [&runner_a, &runner_b] {
        std::fs::create_dir_all(runner.path().join("runner-temp")).expect("temp");
    }
    make_tree(&runner_a.path().join("deps"));
    let expected = tree_digest(&runner_a.path().join("deps"));
    let key = format!("deps-{label}-{}", uuid::Uuid::new_v4().simple());

    let (ok, output) = client(proxy, v2, &["save", "deps", &key], runner_a.path()).await;
    assert!(ok, "{label} save failed:\n{output}");
    eprintln!(
        "{label} save: {}",
        output.lines().last().unwrap_or_default()
    );

    let (ok, output) = client(
        proxy,
        v2,
        &["restore", "deps", "deps-missing", &format!("deps-{label}-")],
        runner_b.path(),
    )
    .await;
    assert!(ok, "{label} restore failed:\n{output}");
    assert!(
        output.contains(&key),
        "restored through the restore key: {output}"
    );
    eprintln!(
        "{label} restore: {}",
        output.lines().last().unwrap_or_default()
    );
    assert_eq!(
        tree_digest(&runner_b.path().join("deps")),
        expected,
        "{label}: the tree differs"
    );

    // An exact miss with no restore keys is a miss, not an error.
    let (ok, output) = client(
        proxy,
        v2,
        &["restore", "deps", "absent-key"],
        runner_b.path(),
    )
    .await;
    assert!(!ok && output.contains("\"matchedKey\":null"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_round_trips_through_v2_and_v1_on_the_fs_backend() {
    if !client_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(FsBackend::open(dir.path().join("blobs")).expect("fs"));
    let proxy = start_proxy(backend, dir).await;
    round_trip(&proxy, true).await;
    round_trip(&proxy, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_round_trips_through_v2_and_v1_on_the_s3_backend() {
    if !client_available() {
        return;
    }
    let Some(endpoint) = nimbus_core::testsuite::setting("NIMBUS_TEST_S3_ENDPOINT") else {
        return;
    };
    let s3 = S3Config {
        bucket: "nimbus-test".into(),
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        prefix: format!("client-{}/", uuid::Uuid::new_v4().simple()),
        path_style: true,
        access_key_id: Some("testkey".into()),
        secret_access_key: Some(Secret::new("testsecret")),
    };
    let backend = Arc::new(S3Backend::connect(&s3).await.expect("s3"));
    let proxy = start_proxy(backend, tempfile::tempdir().expect("tempdir")).await;
    round_trip(&proxy, true).await;
    round_trip(&proxy, false).await;
}
