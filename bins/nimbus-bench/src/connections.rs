//! Idle connections against a polite client: the control plane (in process, on
//! SQLite, behind the same `nimbus_core::serve` every service uses) holds
//! `--idle` connections that never send a byte, while another client makes
//! authenticated API requests, each on a new connection. Reports that client's
//! latency before and beside the idle connections, and when the server cut the
//! idle ones off (the header read timeout).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::control_plane::{self, ControlPlane};
use nimbus_core::{ControlPlaneConfig, Env, Secret};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

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

/// Raises the open-file limit to what `idle` connections on both ends need (root
/// may raise the hard limit too); the server sizes its connection limit from it.
fn raise_file_limit(idle: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = (idle as u64) * 2 + 4096;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(());
    }
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted)).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        if hard < wanted {
            bail!("{idle} idle connections need {wanted} open files; the limit is {hard} (run as root, or lower --idle)");
        }
    }
    Ok(())
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
    raise_file_limit(args.idle)?;
    let temp = std::env::temp_dir().join(format!("nimbus-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&temp)?;
    let url = format!("sqlite://{}", temp.join("bench.db").display());
    let env = Env::from_map([
        ("NIMBUS_JWT_SECRET", JWT_SECRET),
        ("NIMBUS_LOG_LEVEL", "warn"),
    ]);
    let config = ControlPlaneConfig::from_env(&env)?;
    let store = nimbus_core::store::open(&url, config.database_max_connections).await?;
    let state = ControlPlane::new(config, store)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(control_plane::serve(state, listener, async {
        let _ = stopped.await;
    }));
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
    let _ = stop.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&temp);

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
