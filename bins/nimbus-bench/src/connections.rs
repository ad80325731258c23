//! Idle connections against a polite client: the control plane (its release
//! binary, on SQLite, behind the same `nimbus_core::serve` every service uses) holds
//! `--idle` connections that never send a byte, while another client makes
//! authenticated API requests, each on a new connection. Reports that client's
//! latency before and beside the idle connections, and when the server cut the
//! idle ones off (the header read timeout).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::Secret;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::stats::{ms, percentile, sorted};

const JWT_SECRET: &str = "bench-jwt-secret-0123456789";

#[derive(clap::Args)]
pub struct Args {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Requests of the polite client in each phase.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// The `nimbus-control-plane` binary to measure (default: the one beside
    /// nimbus-bench). A process of its own: each side needs a descriptor per
    /// connection.
    #[arg(long)]
    control_plane_bin: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    idle_connections: usize,
    open_seconds: f64,
    requests: usize,
    before_p50_ms: f64,
    before_p99_ms: f64,
    beside_p50_ms: f64,
    beside_p99_ms: f64,
    failed_requests: usize,
    cut_off: usize,
    cut_off_after_seconds: f64,
}

/// The `nimbus-control-plane` binary: beside this one unless given.
fn control_plane_binary(given: Option<&std::path::Path>) -> Result<std::path::PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("nimbus-bench has no directory")?
            .join("nimbus-control-plane"),
    };
    if !path.exists() {
        bail!(
            "{} is not built (cargo build --release -p nimbus-control-plane)",
            path.display()
        );
    }
    Ok(path)
}

/// A control plane process on a free loopback port, killed when dropped.
struct Server {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_server(binary: &std::path::Path) -> Result<(Server, std::net::SocketAddr)> {
    let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dir = std::env::temp_dir().join(format!("nimbus-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let child = std::process::Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NIMBUS_CONTROL_PLANE_ADDR", address.to_string())
        .env("NIMBUS_DATA_DIR", &dir)
        .env("NIMBUS_JWT_SECRET", JWT_SECRET)
        .env("NIMBUS_LOG_LEVEL", "warn")
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let server = Server { child, dir };
    let ready = format!("http://{address}/readyz");
    let started = Instant::now();
    while reqwest::get(&ready)
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the control plane at {address} was not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((server, address))
}

/// One request per new connection, as a new client would make it.
async fn polite(client: &reqwest::Client, url: &str, token: &str, n: usize) -> (Vec<f64>, usize) {
    let mut latencies = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let sent = Instant::now();
        match client.get(url).bearer_auth(token).send().await {
            Ok(answer) if answer.status().is_success() => {
                let _ = answer.bytes().await;
                latencies.push(ms(sent.elapsed()));
            }
            _ => failed += 1,
        }
    }
    (sorted(latencies), failed)
}

pub async fn run(args: Args) -> Result<()> {
    let binary = control_plane_binary(args.control_plane_bin.as_deref())?;
    let (server, address) = start_server(&binary).await?;
    let token = JwtKeys::new(&Secret::new(JWT_SECRET)).mint(
        "bench",
        Role::Admin,
        None,
        Duration::from_secs(3600),
    )?;
    let api = format!("http://{address}/api/jobs?limit=1");
    // No connection reuse: every request is a new client's.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (before, failed_before) = polite(&client, &api, &token, args.requests).await;

    let opening = Instant::now();
    let idle: Vec<TcpStream> = futures::stream::iter(0..args.idle)
        .map(|_| TcpStream::connect(address))
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<std::io::Result<_>>()
        .context("opening the idle connections")?;
    let open_seconds = opening.elapsed().as_secs_f64();
    let (beside, failed_beside) = polite(&client, &api, &token, args.requests).await;

    // The server cuts idle connections off at its header read timeout: each one
    // reads end-of-file (or a reset) then.
    let waiting = Instant::now();
    let limit =
        nimbus_core::serve::HttpLimits::default().header_read_timeout + Duration::from_secs(10);
    let closed: Vec<Option<Duration>> = futures::stream::iter(idle)
        .map(|mut stream| async move {
            let mut byte = [0u8; 1];
            match tokio::time::timeout(limit, stream.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => Some(waiting.elapsed()),
                _ => None,
            }
        })
        .buffer_unordered(args.idle.max(1))
        .collect()
        .await;
    let cut_off = closed.iter().filter(|c| c.is_some()).count();
    let cut_off_after = closed.iter().flatten().max().copied().unwrap_or_default();
    drop(server);

    let report = Report {
        idle_connections: args.idle,
        open_seconds,
        requests: args.requests,
        before_p50_ms: percentile(&before, 0.5),
        before_p99_ms: percentile(&before, 0.99),
        beside_p50_ms: percentile(&beside, 0.5),
        beside_p99_ms: percentile(&beside, 0.99),
        failed_requests: failed_before + failed_beside,
        cut_off,
        cut_off_after_seconds: cut_off_after.as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} idle connections (opened in {:.1} s): a new client's GET /api/jobs p50 {:.2} ms / p99 {:.2} ms before, {:.2} / {:.2} ms beside them ({} failed); {} cut off by the server within {:.1} s",
            report.idle_connections,
            report.open_seconds,
            report.before_p50_ms,
            report.before_p99_ms,
            report.beside_p50_ms,
            report.beside_p99_ms,
            report.failed_requests,
            report.cut_off,
            report.cut_off_after_seconds
        );
    }
    Ok(())
}
