//! The registry mirror with a real client: skopeo pulls an image of `--mib` MiB
//! (ten incompressible layers) from the reference registry (Debian's
//! `docker-registry`, on loopback) directly, then through the cache proxy's mirror
//! cold (every blob fetched from the upstream while it streams to skopeo) and
//! warm (served from the proxy's fs backend), in one run on one machine.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nimbus_cache::registry::testing::{skopeo_copy, write_image, UpstreamRegistry};
use nimbus_cache::{server, ProxyConfig};
use nimbus_core::auth::{Audience, JwtKeys, Role};
use nimbus_core::{Env, Secret};
use serde::Serialize;

use crate::stats::{percentile, sorted};

const SECRET: &str = "bench-registry-secret-0123456789";

#[derive(clap::Args)]
pub struct Args {
    /// Image size in MiB (ten layers).
    #[arg(long, default_value_t = 500)]
    mib: usize,
    /// Timed pulls per warm and direct variant (the cold pull happens once).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Variant {
    variant: &'static str,
    pulls: usize,
    median_seconds: f64,
    mb_s: f64,
}

#[derive(Serialize)]
struct Report {
    image_bytes: u64,
    layers: usize,
    variants: Vec<Variant>,
    upstream_blob_gets_warm: usize,
}

/// One timed `skopeo copy` into a fresh `dir:`.
fn pull(source: &str, creds: Option<&str>, work: &Path) -> Result<f64> {
    let out = work.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    skopeo_copy(source, &format!("dir:{}", out.display()), creds, None)
        .map_err(|stderr| anyhow::anyhow!("skopeo copy {source}: {stderr}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&out);
    Ok(seconds)
}

fn variant(name: &'static str, seconds: Vec<f64>, bytes: u64) -> Variant {
    let seconds = sorted(seconds);
    let median = percentile(&seconds, 50.0);
    Variant {
        variant: name,
        pulls: seconds.len(),
        median_seconds: median,
        mb_s: bytes as f64 / 1e6 / median.max(1e-9),
    }
}

pub async fn run(args: Args) -> Result<()> {
    if args.mib == 0 || args.runs == 0 {
        bail!("--mib and --runs must be at least 1");
    }
    let work = tempfile_dir()?;
    let result = measure(&args, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "image: {} MiB in {} layers",
            report.image_bytes >> 20,
            report.layers
        );
        println!("| pull | pulls | median | MB/s |\n|---|---:|---:|---:|");
        for v in &report.variants {
            println!(
                "| {} | {} | {:.2} s | {:.0} |",
                v.variant, v.pulls, v.median_seconds, v.mb_s
            );
        }
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "nimbus-bench-registry-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn measure(args: &Args, work: &Path) -> Result<Report> {
    let Some(upstream) = UpstreamRegistry::start(&work.join("upstream")) else {
        bail!("docker-registry is not installed (scripts/services.sh start registry)");
    };
    let layer = (args.mib << 20) / 10;
    let image = write_image(&work.join("image"), "v1", &[layer; 10], 42)?;
    let bytes = image.total_bytes();
    skopeo_copy(
        &image.reference(),
        &format!("docker://{}/library/bench:1", upstream.host()),
        None,
        None,
    )
    .map_err(|stderr| anyhow::anyhow!("seeding the upstream: {stderr}"))?;
    std::fs::remove_dir_all(&image.dir)?;

    // The proxy in this process, on the fs backend and a SQLite index.
    let data = work.join("proxy").display().to_string();
    let upstream_url = upstream.url();
    let config = ProxyConfig::from_env(&Env::from_map([
        ("NIMBUS_DATA_DIR", data.as_str()),
        ("NIMBUS_CACHE_SHARED_SECRET", SECRET),
        ("NIMBUS_JWT_SECRET", SECRET),
        ("NIMBUS_DOCKER_UPSTREAM", upstream_url.as_str()),
    ]))?;
    let proxy = server::open(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = server::serve(&config, proxy, listener, std::future::pending()).await;
    });
    let token = JwtKeys::new(&Secret::new(SECRET))
        .mint_for(
            "bench",
            Role::Org,
            Some(1),
            &[Audience::CacheProxy],
            Duration::from_secs(6 * 3600),
        )
        .context("minting a token")?;
    let creds = format!("bench:{token}");
    let direct = format!("docker://{}/library/bench:1", upstream.host());
    let mirror = format!("docker://{address}/library/bench:1");

    // skopeo runs blocking: off the runtime's threads, which serve the proxy.
    let blocking = |source: String, creds: Option<String>, work: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || pull(&source, creds.as_deref(), &work))
    };
    let mut direct_runs = Vec::new();
    direct_runs.push(blocking(direct.clone(), None, work.to_path_buf()).await??);
    let cold = blocking(mirror.clone(), Some(creds.clone()), work.to_path_buf()).await??;
    let gets_before_warm = upstream.blob_gets();
    let mut warm_runs = Vec::new();
    for _ in 0..args.runs {
        warm_runs.push(blocking(mirror.clone(), Some(creds.clone()), work.to_path_buf()).await??);
        if direct_runs.len() < args.runs {
            direct_runs.push(blocking(direct.clone(), None, work.to_path_buf()).await??);
        }
    }
    let upstream_blob_gets_warm =
        upstream.blob_gets() - gets_before_warm - (direct_runs.len() - 1) * 11;
    Ok(Report {
        image_bytes: bytes,
        layers: 10,
        variants: vec![
            variant("direct from the upstream", direct_runs, bytes),
            variant("through the mirror, cold", vec![cold], bytes),
            variant("through the mirror, warm", warm_runs, bytes),
        ],
        upstream_blob_gets_warm,
    })
}
