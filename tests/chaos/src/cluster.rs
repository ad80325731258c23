//! The services under test, started as real processes on loopback ports, and the
//! shared services (PostgreSQL, ClickHouse, S3) they use, controlled through
//! `scripts/services.sh`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nimbus_e2e::{
    mint_cache_token, mint_token, CacheProxyProcess, ControlPlaneProcess, HostAgentProcess,
    LoggingPipelineProcess,
};
use serde_json::json;

use crate::Args;

/// The org and repository every chaos job belongs to.
pub const ORG_ID: i64 = 1;
pub const REPO: &str = "chaos/app";

/// Where the shared services are (the `NIMBUS_TEST_*` variables of the test suite).
#[derive(Debug, Clone)]
pub struct Settings {
    pub clickhouse_url: String,
    pub s3_endpoint: String,
    pub assets: String,
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        let get = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        if std::env::var("NIMBUS_TEST_DATABASE_URL").is_err() {
            bail!("NIMBUS_TEST_DATABASE_URL is not set (scripts/chaos.sh sets it)");
        }
        let assets = get("NIMBUS_TEST_ASSETS", "/var/tmp/nimbus-assets");
        if !PathBuf::from(&assets).join("manifest.json").exists() {
            bail!("no guest assets at {assets} (scripts/guest-assets.sh builds them)");
        }
        Ok(Settings {
            clickhouse_url: get("NIMBUS_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123"),
            s3_endpoint: get("NIMBUS_TEST_S3_ENDPOINT", "http://127.0.0.1:8333"),
            assets,
        })
    }
}

/// Everything the run talks to.
pub struct Cluster {
    pub replicas: Vec<ControlPlaneProcess>,
    pub agents: Vec<HostAgentProcess>,
    pub pipeline: LoggingPipelineProcess,
    pub cache: CacheProxyProcess,
    /// An admin token of the control planes and the pipeline.
    pub admin: String,
    /// An org token of [`ORG_ID`]: submits the jobs.
    pub org: String,
    /// A cache token of [`ORG_ID`] and [`REPO`] on the default branch: reads the markers.
    pub cache_token: String,
    pub http: reqwest::Client,
    pub settings: Settings,
}

impl Cluster {
    pub async fn start(args: &Args, settings: &Settings) -> Result<Cluster> {
        // Errors only: the faults make every service warn, by design, thousands of times.
        let quiet = ("NIMBUS_LOG_LEVEL", "error".to_string());
        let (Some(control_plane_db), Some(cache_db)) = (
            nimbus_core::store::testsuite::postgres_schema_url().await,
            nimbus_core::store::testsuite::postgres_schema_url().await,
        ) else {
            bail!("PostgreSQL at NIMBUS_TEST_DATABASE_URL is needed");
        };
        let pipeline = LoggingPipelineProcess::start(&[
            ("NIMBUS_LOGS_BACKEND", "clickhouse".to_string()),
            ("NIMBUS_CLICKHOUSE_URL", settings.clickhouse_url.clone()),
            (
                "NIMBUS_CLICKHOUSE_DATABASE",
                format!("nimbus_chaos_{}", std::process::id()),
            ),
            quiet.clone(),
        ])
        .await
        .context("starting the logging pipeline on ClickHouse")?;
        let cache = CacheProxyProcess::start(&[
            ("NIMBUS_CACHE_BACKEND", "s3".to_string()),
            ("NIMBUS_CACHE_S3_BUCKET", "nimbus-e2e".to_string()),
            ("NIMBUS_CACHE_S3_ENDPOINT", settings.s3_endpoint.clone()),
            ("NIMBUS_CACHE_S3_PATH_STYLE", "true".to_string()),
            (
                "NIMBUS_CACHE_S3_PREFIX",
                format!("chaos-{}/", uuid::Uuid::new_v4().simple()),
            ),
            ("NIMBUS_CACHE_S3_ACCESS_KEY_ID", "testkey".to_string()),
            (
                "NIMBUS_CACHE_S3_SECRET_ACCESS_KEY",
                "testsecret".to_string(),
            ),
            ("NIMBUS_CACHE_METRICS_DB", cache_db),
            quiet.clone(),
        ])
        .await
        .context("starting the cache proxy on S3")?;
        let replica_env = [
            ("NIMBUS_DATABASE_URL", control_plane_db),
            ("NIMBUS_JOB_LEASE_TTL", args.lease_ttl.to_string()),
            // A job may lose many leases to the faults; it must never fail for it.
            ("NIMBUS_JOB_MAX_ATTEMPTS", "50".to_string()),
            ("NIMBUS_ORG_JOB_RATE_LIMIT", "100000000".to_string()),
            quiet.clone(),
        ];
        let mut replicas = Vec::new();
        for name in ["A", "B"] {
            replicas.push(
                ControlPlaneProcess::start(&replica_env)
                    .await
                    .with_context(|| format!("starting control-plane replica {name}"))?,
            );
        }
        let admin = mint_token(&["--role", "admin"])?.expose().to_string();
        let org = mint_token(&["--role", "org", "--org-id", &ORG_ID.to_string()])?
            .expose()
            .to_string();
        let cache_token = mint_cache_token(&[
            "--org-id",
            &ORG_ID.to_string(),
            "--repo",
            REPO,
            "--ref",
            "main",
        ])?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let answer = http
            .post(format!("{}/api/orgs", replicas[0].url))
            .bearer_auth(&admin)
            .json(&json!({"id": ORG_ID, "name": "chaos"}))
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("registering the org: {}", answer.status());
        }
        let mut agents = Vec::new();
        for index in 0..args.agents {
            let id = format!("chaos-agent-{index}");
            let token = mint_token(&["--role", "agent", "--sub", &id])?;
            agents.push(HostAgentProcess::start(&[
                (
                    "NIMBUS_CONTROL_PLANE_URL",
                    replicas[index % replicas.len()].url.clone(),
                ),
                ("NIMBUS_CONTROL_PLANE_TOKEN", token.expose().to_string()),
                ("NIMBUS_LOGS_URL", pipeline.url.clone()),
                ("NIMBUS_CACHE_URL", cache.url.clone()),
                ("NIMBUS_AGENT_ID", id),
                ("NIMBUS_VMM", "sandbox".to_string()),
                ("NIMBUS_ASSETS_DIR", settings.assets.clone()),
                // A namespace of its own per job, the cache through the relay.
                ("NIMBUS_VM_NETWORK", "isolated".to_string()),
                ("NIMBUS_AGENT_MAX_VMS", args.slots.to_string()),
                quiet.clone(),
            ])?);
        }
        Ok(Cluster {
            replicas,
            agents,
            pipeline,
            cache,
            admin,
            org,
            cache_token,
            http,
            settings: settings.clone(),
        })
    }

    /// The first replica that answers `GET path` with a success, as JSON.
    pub async fn get_json(&self, path: &str, token: &str) -> Result<serde_json::Value> {
        let mut last = None;
        for replica in &self.replicas {
            match self
                .http
                .get(format!("{}{path}", replica.url))
                .bearer_auth(token)
                .send()
                .await
            {
                Ok(answer) if answer.status().is_success() => return Ok(answer.json().await?),
                Ok(answer) => last = Some(anyhow::anyhow!("GET {path}: {}", answer.status())),
                Err(error) => last = Some(error.into()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no replica")))
    }
}

/// `scripts/services.sh ACTION SERVICE`, which owns the shared services.
pub fn services(action: &str, service: &str) -> Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services.sh");
    let status = Command::new("bash")
        .args([script, action, service])
        .status()
        .with_context(|| format!("running scripts/services.sh {action} {service}"))?;
    if !status.success() {
        bail!("scripts/services.sh {action} {service} failed with {status}");
    }
    Ok(())
}

/// Whether anything answers HTTP at `url` (any status).
pub async fn answers(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok()
}

/// Waits until `url` answers 2xx; returns how long that took.
pub async fn wait_healthy(http: &reqwest::Client, url: &str, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(answer) = http.get(url).timeout(Duration::from_secs(2)).send().await {
            if answer.status().is_success() {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > limit {
            bail!("{url} not healthy within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
