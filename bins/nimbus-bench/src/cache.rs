//! Cache proxy throughput with the official `@actions/cache` client (v2): one big
//! entry (default 1 GiB) and many small ones (default 1,000 × 64 KiB), upload and
//! download, per backend, beside the machine's limits measured in the same run:
//! the disk's fsync'd sequential write (`dd … conv=fsync`), nginx serving the
//! same big file over loopback to the same client code (and to curl, to show the
//! client, not nginx, sets that pace), and for S3 the same bytes uploaded straight
//! to the same store as a raw multipart upload (8 MiB parts, 10 at a time:
//! boto3's and the AWS CLI's defaults). The fs upload is also set beside its
//! ceiling on this machine: the same client through the same proxy into a store
//! that hashes the bytes, as the fs store does, and keeps none of them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use nimbus_cache::backend::fs::FsBackend;
use nimbus_cache::backend::s3::S3Backend;
use nimbus_cache::backend::{ByteRange, ByteStream, ObjectMeta, ObjectReader, StoredObject};
use nimbus_cache::server::{self, S3Config};
use nimbus_cache::{CacheBackend, CacheIndex, Proxy, ProxyConfig};
use nimbus_core::cache_token::{CachePermission, CacheTokenKeys, DEFAULT_BRANCH};
use nimbus_core::{Env, Secret};
use serde::Serialize;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Size of the big entry, MiB.
    #[arg(long, default_value_t = 1024)]
    big_mib: u64,
    /// Number of small entries.
    #[arg(long, default_value_t = 1000)]
    small_count: u64,
    /// Size of each small entry, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    small_bytes: u64,
    /// Where the client lives (npm ci there first).
    #[arg(long, default_value = "tests/clients")]
    clients_dir: PathBuf,
    /// Scratch directory (the fs backend's store and the test files go here).
    #[arg(long, default_value = "/var/tmp/nimbus-bench-cache")]
    work_dir: PathBuf,
    /// An S3-compatible endpoint (path-style, testkey/testsecret); without it only
    /// the fs backend is measured.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// nginx binary for the download reference; skipped when missing.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct BackendReport {
    backend: String,
    big_bytes: u64,
    big_upload_mb_s: f64,
    /// The big upload's wall time, and the CPU time the client (node) and the
    /// proxy (this process) spent during it: where the upload's limit is.
    big_upload_seconds: f64,
    big_upload_client_cpu_seconds: f64,
    big_upload_proxy_cpu_seconds: f64,
    big_download_mb_s: f64,
    small_count: u64,
    small_bytes: u64,
    small_upload_entries_s: f64,
    small_download_entries_s: f64,
    small_upload_mb_s: f64,
    small_download_mb_s: f64,
}

#[derive(Serialize)]
struct Report {
    backends: Vec<BackendReport>,
    discard_upload_mb_s: f64,
    dd_fsync_write_mb_s: f64,
    /// dd's wall time and CPU time (user + system) for the same bytes.
    dd_fsync_seconds: f64,
    dd_cpu_seconds: f64,
    nginx_download_mb_s: Option<f64>,
    nginx_curl_download_mb_s: Option<f64>,
    s3_raw_multipart_upload_mb_s: Option<f64>,
    client: String,
}

/// A store that hashes every byte it is sent (as the fs store does) and keeps
/// only sizes, reading back zeros: the proxy's upload path with no disk, so what
/// the client and the proxy reach on this machine before any store is involved.
#[derive(Default)]
struct DiscardBackend {
    sizes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl DiscardBackend {
    async fn drain(body: ByteStream) -> nimbus_cache::Result<StoredObject> {
        use sha2::Digest;
        let mut body = body;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| nimbus_cache::Error::Truncated(e.to_string()))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        Ok(StoredObject {
            size,
            sha256: format!("{:x}", hasher.finalize()),
        })
    }

    fn sizes(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl CacheBackend for DiscardBackend {
    fn name(&self) -> &'static str {
        "discard"
    }
    async fn put(&self, key: &str, body: ByteStream) -> nimbus_cache::Result<StoredObject> {
        let stored = Self::drain(body).await?;
        self.sizes().insert(key.to_string(), stored.size);
        Ok(stored)
    }
    async fn get(&self, key: &str, range: Option<ByteRange>) -> nimbus_cache::Result<ObjectReader> {
        let size = self
            .sizes()
            .get(key)
            .copied()
            .ok_or_else(|| nimbus_cache::Error::NotFound(key.to_string()))?;
        let (start, end) = range.map_or((0, size), |r| (r.start.min(size), r.end.min(size)));
        let zeros = bytes::Bytes::from(vec![0u8; 1 << 20]);
        let chunks = (start..end)
            .step_by(1 << 20)
            .map(move |at| Ok(zeros.slice(..((end - at).min(1 << 20)) as usize)));
        Ok(ObjectReader {
            size,
            body: Box::pin(futures::stream::iter(chunks.collect::<Vec<_>>())),
        })
    }
    async fn head(&self, key: &str) -> nimbus_cache::Result<Option<ObjectMeta>> {
        Ok(self.sizes().get(key).map(|&size| ObjectMeta {
            key: key.to_string(),
            size,
            last_modified_millis: 0,
        }))
    }
    async fn delete(&self, key: &str) -> nimbus_cache::Result<()> {
        self.sizes().remove(key);
        Ok(())
    }
    async fn list(&self, _prefix: &str) -> nimbus_cache::Result<Vec<ObjectMeta>> {
        Ok(Vec::new())
    }
    async fn put_part(
        &self,
        upload: &str,
        part: &str,
        body: ByteStream,
    ) -> nimbus_cache::Result<StoredObject> {
        let stored = Self::drain(body).await?;
        self.sizes().insert(format!("{upload}/{part}"), stored.size);
        Ok(stored)
    }
    async fn complete(
        &self,
        upload: &str,
        parts: &[String],
        key: &str,
    ) -> nimbus_cache::Result<StoredObject> {
        let size = self.compose(upload, parts, key).await?;
        Ok(StoredObject {
            size,
            sha256: String::new(),
        })
    }
    async fn compose(
        &self,
        upload: &str,
        parts: &[String],
        key: &str,
    ) -> nimbus_cache::Result<u64> {
        let mut sizes = self.sizes();
        let mut total = 0;
        for part in parts {
            total += sizes.remove(&format!("{upload}/{part}")).ok_or_else(|| {
                nimbus_cache::Error::InvalidInput(format!("part {part:?} was never uploaded"))
            })?;
        }
        sizes.insert(key.to_string(), total);
        Ok(total)
    }
    async fn abort(&self, upload: &str) -> nimbus_cache::Result<()> {
        self.sizes()
            .retain(|key, _| !key.starts_with(&format!("{upload}/")));
        Ok(())
    }
    async fn list_uploads(&self) -> nimbus_cache::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Parts of the raw S3 reference upload, and how many go at once.
const RAW_PART_BYTES: u64 = 8 << 20;
const RAW_CONCURRENCY: usize = 10;

/// The S3 reference: `big` uploaded to `endpoint` as one multipart upload by the
/// AWS SDK directly, no proxy; MB/s.
async fn raw_multipart_upload(endpoint: &str, bucket: &str, big: &Path) -> Result<f64> {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    use futures::StreamExt;
    use std::os::unix::fs::FileExt;

    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testkey",
            "testsecret",
            None,
            None,
            "nimbus-bench",
        ))
        .force_path_style(true)
        .endpoint_url(endpoint)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let key = format!("raw-{}", uuid::Uuid::new_v4().simple());
    let file = Arc::new(std::fs::File::open(big)?);
    let size = file.metadata()?.len();
    let started = Instant::now();
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .context("create multipart upload")?;
    let id = created.upload_id().context("no upload id")?.to_string();
    let parts = size.div_ceil(RAW_PART_BYTES);
    let uploaded: Vec<Result<CompletedPart>> = futures::stream::iter(0..parts)
        .map(|i| {
            let (client, file, key, id) = (client.clone(), file.clone(), key.clone(), id.clone());
            async move {
                let start = i * RAW_PART_BYTES;
                let len = RAW_PART_BYTES.min(size - start) as usize;
                let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    let mut buffer = vec![0u8; len];
                    file.read_exact_at(&mut buffer, start)?;
                    Ok(buffer)
                })
                .await??;
                let number = i as i32 + 1;
                let part = client
                    .upload_part()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(&id)
                    .part_number(number)
                    .body(bytes.into())
                    .send()
                    .await
                    .context("upload part")?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build())
            }
        })
        .buffer_unordered(RAW_CONCURRENCY)
        .collect()
        .await;
    let mut completed = uploaded.into_iter().collect::<Result<Vec<_>>>()?;
    completed.sort_by_key(|part| part.part_number());
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(&key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .context("complete multipart upload")?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = client.delete_object().bucket(bucket).key(&key).send().await;
    Ok(mb_per_s(size, seconds))
}

const SECRET: &str = "nimbus-bench-cache-secret";

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// Incompressible bytes, fast (xorshift), written in 8 MiB pieces.
fn write_random(path: &Path, bytes: u64) -> Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut buffer = vec![0u8; 8 << 20];
    let mut left = bytes;
    while left > 0 {
        for chunk in buffer.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buffer.len() as u64) as usize;
        file.write_all(&buffer[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

/// CPU seconds (user + system) of this process, or of its waited-for children.
fn cpu_seconds(who: nix::sys::resource::UsageWho) -> f64 {
    nix::sys::resource::getrusage(who).map_or(0.0, |usage| {
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        seconds(usage.user_time()) + seconds(usage.system_time())
    })
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// This process's CPU time, sampled every 20 ms while it lives: (epoch ms, CPU s).
struct CpuSampler {
    samples: Arc<std::sync::Mutex<Vec<(f64, f64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CpuSampler {
    fn start() -> CpuSampler {
        let samples: Arc<std::sync::Mutex<Vec<(f64, f64)>>> = Arc::default();
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                loop {
                    let sample = (
                        epoch_ms(),
                        cpu_seconds(nix::sys::resource::UsageWho::RUSAGE_SELF),
                    );
                    if let Ok(mut samples) = samples.lock() {
                        samples.push(sample);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        CpuSampler { samples, task }
    }

    /// CPU seconds spent between two epoch times (interpolated between samples).
    fn between(&self, from_ms: f64, to_ms: f64) -> f64 {
        let Ok(samples) = self.samples.lock() else {
            return f64::NAN;
        };
        let at = |ms: f64| {
            let after = samples.iter().position(|(t, _)| *t >= ms);
            match after {
                Some(0) => samples[0].1,
                Some(i) => {
                    let (t0, c0) = samples[i - 1];
                    let (t1, c1) = samples[i];
                    c0 + (c1 - c0) * (ms - t0) / (t1 - t0).max(1e-9)
                }
                None => samples.last().map_or(0.0, |s| s.1),
            }
        };
        at(to_ms) - at(from_ms)
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `dd if=/dev/zero of=FILE bs=1M count=N conv=fsync`: the disk's durable write
/// speed (MB/s), with dd's wall and CPU seconds.
fn dd_fsync(work: &Path, mib: u64) -> Result<(f64, f64, f64)> {
    let target = work.join("dd.bin");
    let cpu_before = cpu_seconds(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    let started = Instant::now();
    let status = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fsync")
        .stderr(Stdio::null())
        .status()
        .context("running dd")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) - cpu_before;
    let _ = std::fs::remove_file(&target);
    if !status.success() {
        bail!("dd failed: {status}");
    }
    Ok((mb_per_s(mib << 20, seconds), seconds, cpu))
}

async fn node(clients_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Value> {
    let script = clients_dir.join("cache-bench.mjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("GITHUB_SERVER_URL")
        .output()
        .await
        .with_context(|| format!("running node {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "node {} {args:?} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("client output {line:?}"))
}

async fn start_proxy(backend: Arc<dyn CacheBackend>, work: &Path) -> Result<(String, String)> {
    let data_dir = work.join(format!("proxy-{}", backend.name()));
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let data = data_dir.display().to_string();
    let config = ProxyConfig::from_env(&Env::from_map([
        ("NIMBUS_DATA_DIR", data.as_str()),
        ("NIMBUS_CACHE_SHARED_SECRET", SECRET),
        ("NIMBUS_JWT_SECRET", SECRET),
        ("NIMBUS_CACHE_ORG_MAX_BYTES", "100GiB"),
    ]))?;
    let index = CacheIndex::open(&data_dir.join("index.db").display().to_string()).await?;
    let proxy = Proxy::new(&config, backend, index)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = server::serve(&config, proxy, listener, std::future::pending()).await;
    });
    let token = CacheTokenKeys::new(&Secret::new(SECRET)).mint(
        1,
        "bench/cache",
        DEFAULT_BRANCH,
        DEFAULT_BRANCH,
        CachePermission::Write,
        Duration::from_secs(6 * 3600),
    )?;
    Ok((format!("http://{address}/"), token))
}

async fn measure(
    args: &Args,
    name: &str,
    backend: Arc<dyn CacheBackend>,
    big: &Path,
) -> Result<BackendReport> {
    let work = &args.work_dir;
    let (url, token) = start_proxy(backend, work).await?;
    let env = [
        ("ACTIONS_CACHE_SERVICE_V2", "true"),
        ("ACTIONS_RESULTS_URL", url.as_str()),
        ("ACTIONS_RUNTIME_TOKEN", token.as_str()),
    ];
    eprintln!("bench: cache {name}: one {} MiB entry", args.big_mib);
    let out = work.join("big.back");
    let sampler = CpuSampler::start();
    let big_result = node(
        &args.clients_dir,
        &[
            "big",
            &big.display().to_string(),
            &out.display().to_string(),
        ],
        &env,
    )
    .await?;
    let _ = std::fs::remove_file(&out);
    eprintln!(
        "bench: cache {name}: {} entries of {} bytes",
        args.small_count, args.small_bytes
    );
    let small_dir = work.join(format!("small-{name}"));
    let small = node(
        &args.clients_dir,
        &[
            "small",
            &args.small_count.to_string(),
            &args.small_bytes.to_string(),
            &small_dir.display().to_string(),
        ],
        &env,
    )
    .await?;
    let _ = std::fs::remove_dir_all(&small_dir);
    let seconds = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let proxy_cpu = sampler.between(
        seconds(&big_result, "upload_started_ms"),
        seconds(&big_result, "upload_ended_ms"),
    );
    drop(sampler);
    let big_bytes = big_result["bytes"].as_u64().unwrap_or(0);
    let small_bytes = args.small_count * args.small_bytes;
    Ok(BackendReport {
        backend: name.into(),
        big_bytes,
        big_upload_mb_s: mb_per_s(big_bytes, seconds(&big_result, "upload_seconds")),
        big_upload_seconds: seconds(&big_result, "upload_seconds"),
        big_upload_client_cpu_seconds: seconds(&big_result, "upload_client_cpu_seconds"),
        big_upload_proxy_cpu_seconds: proxy_cpu,
        big_download_mb_s: mb_per_s(big_bytes, seconds(&big_result, "download_seconds")),
        small_count: args.small_count,
        small_bytes: args.small_bytes,
        small_upload_entries_s: args.small_count as f64 / seconds(&small, "upload_seconds"),
        small_download_entries_s: args.small_count as f64 / seconds(&small, "download_seconds"),
        small_upload_mb_s: mb_per_s(small_bytes, seconds(&small, "upload_seconds")),
        small_download_mb_s: mb_per_s(small_bytes, seconds(&small, "download_seconds")),
    })
}

/// nginx serving `work` on a free loopback port; the same client downloads `big`,
/// then curl does: (client MB/s, curl MB/s).
async fn nginx_download(args: &Args, big: &Path) -> Result<Option<(f64, Option<f64>)>> {
    if !args.nginx.exists() {
        eprintln!(
            "bench: {} not found; no nginx reference",
            args.nginx.display()
        );
        return Ok(None);
    }
    let work = &args.work_dir;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let prefix = work.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {pid};\nerror_log {err} warn;\nuser root;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on;\n\
               server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            pid = prefix.join("nginx.pid").display(),
            err = prefix.join("logs/error.log").display(),
            root = work.display(),
        ),
    )?;
    // One process (no master): killing it leaves no orphaned workers behind.
    let mut child = tokio::process::Command::new(&args.nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx")?;
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill().await;
            bail!("nginx did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let name = big
        .file_name()
        .and_then(|n| n.to_str())
        .context("big file name")?;
    let out = work.join("nginx.back");
    eprintln!("bench: nginx serving the same {} MiB file", args.big_mib);
    let result = node(
        &args.clients_dir,
        &[
            "get",
            &format!("http://127.0.0.1:{port}/{name}"),
            &out.display().to_string(),
        ],
        &[],
    )
    .await;
    // curl into /dev/null: what nginx can serve when the client is not the limit.
    let curl_started = Instant::now();
    let curl = tokio::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{port}/{name}"))
        .status()
        .await;
    let curl_seconds = curl_started.elapsed().as_secs_f64();
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&out);
    let result = result?;
    let bytes = result["bytes"].as_u64().unwrap_or(0);
    let curl = match curl {
        Ok(status) if status.success() => Some(mb_per_s(bytes, curl_seconds)),
        _ => {
            eprintln!("bench: curl could not download from nginx; no curl figure");
            None
        }
    };
    Ok(Some((
        mb_per_s(
            bytes,
            result["download_seconds"].as_f64().unwrap_or(f64::NAN),
        ),
        curl,
    )))
}

pub async fn run(args: Args) -> Result<()> {
    if !args
        .clients_dir
        .join("node_modules/@actions/cache")
        .exists()
    {
        bail!(
            "{}/node_modules/@actions/cache is missing: run npm ci there",
            args.clients_dir.display()
        );
    }
    let work = &args.work_dir;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let big = work.join("big.bin");
    eprintln!("bench: writing a {} MiB random file", args.big_mib);
    write_random(&big, args.big_mib << 20)?;
    eprintln!("bench: dd conv=fsync of {} MiB", args.big_mib);
    let (dd, dd_seconds, dd_cpu) = dd_fsync(work, args.big_mib)?;

    let mut backends = Vec::new();
    let mut s3_raw = None;
    let fs = Arc::new(FsBackend::open(work.join("fs-store"))?);
    backends.push(measure(&args, "fs", fs, &big).await?);
    eprintln!("bench: the ceiling: the same client and proxy into a store that keeps nothing");
    let discard = measure(&args, "discard", Arc::new(DiscardBackend::default()), &big).await?;
    if let Some(endpoint) = &args.s3_endpoint {
        let s3 = S3Backend::connect(&S3Config {
            bucket: "nimbus-bench".into(),
            endpoint: Some(endpoint.clone()),
            region: "us-east-1".into(),
            prefix: format!("bench-{}/", uuid::Uuid::new_v4().simple()),
            path_style: true,
            access_key_id: Some("testkey".into()),
            secret_access_key: Some(Secret::new("testsecret")),
        })
        .await?;
        backends.push(measure(&args, "s3", Arc::new(s3), &big).await?);
        eprintln!(
            "bench: the same {} MiB straight to S3 (raw multipart upload)",
            args.big_mib
        );
        s3_raw = Some(raw_multipart_upload(endpoint, "nimbus-bench", &big).await?);
    }
    let nginx = nginx_download(&args, &big).await?;
    let _ = std::fs::remove_dir_all(work);

    let report = Report {
        backends,
        discard_upload_mb_s: discard.big_upload_mb_s,
        dd_fsync_write_mb_s: dd,
        dd_fsync_seconds: dd_seconds,
        dd_cpu_seconds: dd_cpu,
        nginx_download_mb_s: nginx.map(|(client, _)| client),
        nginx_curl_download_mb_s: nginx.and_then(|(_, curl)| curl),
        s3_raw_multipart_upload_mb_s: s3_raw,
        client: "@actions/cache 6.3.0 (v2: Azure SDK upload, HTTP download)".into(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<8} {:>14} {:>16} {:>18} {:>20}",
        "backend", "big up MB/s", "big down MB/s", "small up entries/s", "small down entries/s"
    );
    for b in &report.backends {
        println!(
            "{:<8} {:>14.0} {:>16.0} {:>18.0} {:>20.0}",
            b.backend,
            b.big_upload_mb_s,
            b.big_download_mb_s,
            b.small_upload_entries_s,
            b.small_download_entries_s
        );
    }
    println!(
        "dd conv=fsync write: {:.0} MB/s ({:.2} s, {:.2} CPU-s)",
        report.dd_fsync_write_mb_s, report.dd_fsync_seconds, report.dd_cpu_seconds
    );
    for b in &report.backends {
        println!(
            "{} big upload: {:.2} s; CPU-s during it: client {:.2}, proxy {:.2} ({:.0} % of {} cores)",
            b.backend,
            b.big_upload_seconds,
            b.big_upload_client_cpu_seconds,
            b.big_upload_proxy_cpu_seconds,
            100.0 * (b.big_upload_client_cpu_seconds + b.big_upload_proxy_cpu_seconds)
                / (b.big_upload_seconds * cores()),
            cores()
        );
    }
    println!(
        "upload into a store that keeps nothing (the ceiling): {:.0} MB/s",
        report.discard_upload_mb_s
    );
    if let Some(nginx) = report.nginx_download_mb_s {
        println!("nginx download (same client): {nginx:.0} MB/s");
    }
    if let Some(curl) = report.nginx_curl_download_mb_s {
        println!("nginx download (curl): {curl:.0} MB/s");
    }
    if let Some(raw) = report.s3_raw_multipart_upload_mb_s {
        println!("raw S3 multipart upload (no proxy): {raw:.0} MB/s");
    }
    Ok(())
}
