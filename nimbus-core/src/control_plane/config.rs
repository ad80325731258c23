//! The control plane's settings: [`ControlPlaneConfig`], parsed once from the
//! environment, and the variables it reads ([`SETTINGS`], a section of
//! docs/configuration.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{cache_shared_secret, jwt_secret, Env, Secret, Settings, VarDoc};
use crate::error::{Error, Result};

/// The variables the control plane reads, besides [`crate::config::SHARED`].
pub const SETTINGS: Settings = Settings {
    service: "Control plane (nimbus-control-plane)",
    variables: &[
    VarDoc { name: "NIMBUS_DATABASE_URL", default: "sqlite://$NIMBUS_DATA_DIR/control-plane.db", meaning: "Control-plane store: `sqlite://PATH` (single node) or `postgres://…` (several replicas on one database)." },
    VarDoc { name: "NIMBUS_DATABASE_MAX_CONNECTIONS", default: "16", meaning: "Connection pool size of the control-plane store." },
    VarDoc { name: "NIMBUS_CONTROL_PLANE_ADDR", default: "0.0.0.0:8000", meaning: "Listen address of `nimbus-control-plane` (also `--listen`)." },
    VarDoc { name: "NIMBUS_CONTROL_PLANE_METRICS_TOKEN", default: "(none)", meaning: "Bearer token for `/metrics` from non-loopback peers; unset means loopback only." },
    VarDoc { name: "NIMBUS_GITHUB_WEBHOOK_SECRET", default: "(none)", meaning: "Secret of the GitHub webhook (`X-Hub-Signature-256`). Unset: `POST /webhooks/github` answers 503." },
    VarDoc { name: "NIMBUS_GITHUB_APP_ID", default: "(none)", meaning: "GitHub App id: the control plane mints installation tokens from the app's key to register just-in-time runners." },
    VarDoc { name: "NIMBUS_GITHUB_APP_PRIVATE_KEY", default: "(none)", meaning: "The GitHub App's private key (PEM; `\\n` escapes allowed)." },
    VarDoc { name: "NIMBUS_GITHUB_APP_PRIVATE_KEY_PATH", default: "(none)", meaning: "File holding the GitHub App's private key (instead of NIMBUS_GITHUB_APP_PRIVATE_KEY)." },
    VarDoc { name: "NIMBUS_GITHUB_TOKEN", default: "(none)", meaning: "A personal access token instead of an App (small setups; needs admin rights on the repositories)." },
    VarDoc { name: "NIMBUS_GITHUB_API_URL", default: "https://api.github.com", meaning: "GitHub's REST API; `https://HOST/api/v3` for GitHub Enterprise Server." },
    VarDoc { name: "NIMBUS_GITHUB_RUNNER_SCOPE", default: "repo", meaning: "Where just-in-time runners are registered: `repo` (works for every repository) or `org`." },
    VarDoc { name: "NIMBUS_GITHUB_RUNNER_GROUP_ID", default: "1", meaning: "Runner group of the just-in-time runners (1 is the default group)." },
    VarDoc { name: "NIMBUS_GITHUB_RECONCILE_SECONDS", default: "60", meaning: "How often queued GitHub jobs that no webhook brought are looked for." },
    VarDoc { name: "NIMBUS_WEBHOOK_TOLERANCE_SECONDS", default: "300", meaning: "Webhook events whose action timestamp is older than this are refused; delivery ids are remembered for twice as long." },
    VarDoc { name: "NIMBUS_RUNNER_LABELS", default: "nimbus", meaning: "Comma-separated labels; a `workflow_job` is taken when its `labels` include one of them." },
    VarDoc { name: "NIMBUS_JOB_LEASE_TTL", default: "300", meaning: "Seconds a lease lives without a heartbeat." },
    VarDoc { name: "NIMBUS_JOB_MAX_ATTEMPTS", default: "3", meaning: "Leases a job may lose (expire) before it is marked `failed`." },
    VarDoc { name: "NIMBUS_SCHEDULER", default: "fair", meaning: "Which queued job an agent gets: `fair` (weighted fair share across the orgs with queued work; oldest first within an org) or `fifo` (the oldest job of any org)." },
    VarDoc { name: "NIMBUS_SCHEDULER_WEIGHTS", default: "(all 1)", meaning: "Fair-share weights, `ORG=WEIGHT` comma-separated (e.g. `1=3,2=1`: org 1 gets three leases for each of org 2's while both have work); 1 to 1000." },
    VarDoc { name: "NIMBUS_REAPER_INTERVAL", default: "5", meaning: "Seconds between sweeps that return expired leases to the queue (fractions allowed)." },
    VarDoc { name: "NIMBUS_JOB_POLICY_PATH", default: "(none)", meaning: "YAML admission policy every job passes before it is queued (docs/policy-as-code.md); reloaded on change and on SIGHUP. Unset: every job is admitted." },
    VarDoc { name: "NIMBUS_ORG_JOB_RATE_LIMIT", default: "100", meaning: "Jobs one org may submit per interval (webhooks and direct submissions together)." },
    VarDoc { name: "NIMBUS_ORG_RATE_INTERVAL", default: "60", meaning: "Length in seconds of the org rate-limit window." },
    VarDoc { name: "NIMBUS_METADATA_SINK_URL", default: "(none)", meaning: "Logging pipeline the control plane copies every admitted job's metadata to (`POST /api/metadata`, with an admin token signed by NIMBUS_JWT_SECRET, retried in the background)." },
    VarDoc { name: "NIMBUS_METADATA_DEFAULT_KEYS", default: "(none)", meaning: "Comma-separated metadata keys (e.g. `lr,batch`) whose analytics `GET /api/jobs/metadata/presets` serves, kept warm in the background (at most 20)." },
    VarDoc { name: "NIMBUS_ANALYTICS_INTERVAL", default: "30", meaning: "Seconds between folds of finished jobs into the analytics rollups and refreshes of the metadata presets (docs/analytics.md)." },
    ],
};

/// Configuration of the control plane service.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Listen address (`NIMBUS_CONTROL_PLANE_ADDR`, default `0.0.0.0:8000`).
    pub listen: SocketAddr,
    /// Directory for embedded state (`NIMBUS_DATA_DIR`).
    pub data_dir: PathBuf,
    /// The store (`NIMBUS_DATABASE_URL`), default SQLite in the data directory.
    pub database_url: String,
    /// Connection pool size of the store (`NIMBUS_DATABASE_MAX_CONNECTIONS`, default 16).
    pub database_max_connections: u32,
    /// Signs and verifies API tokens (`NIMBUS_JWT_SECRET`).
    pub jwt_secret: Secret,
    /// Signs the per-job cache tokens (NIMBUS_CACHE_SHARED_SECRET).
    pub cache_secret: Secret,
    /// Secret of GitHub's webhook signatures; `None` makes the webhook route answer 503.
    pub webhook_secret: Option<Secret>,
    /// Oldest action timestamp a webhook may carry (default 300 s); delivery ids
    /// are kept for twice as long.
    pub webhook_tolerance: Duration,
    /// A `workflow_job` is taken when it has one of these labels (default `nimbus`).
    pub runner_labels: Vec<String>,
    /// How long a lease lives without a heartbeat (default 300 s).
    pub lease_ttl: Duration,
    /// Leases a job may lose before it is marked `failed` (default 3).
    pub max_attempts: u32,
    /// Time between reaper sweeps (default 5 s).
    pub reaper_interval: Duration,
    /// Jobs one org may submit per interval (default 100).
    pub org_job_rate_limit: u32,
    /// Length of the org rate-limit window (default 60 s).
    pub org_rate_interval: Duration,
    /// Bearer token for `/metrics` from non-loopback peers; `None` means loopback only.
    pub metrics_token: Option<Secret>,
    /// The YAML admission policy (`NIMBUS_JOB_POLICY_PATH`); `None` admits every job.
    pub policy_path: Option<PathBuf>,
    /// The logging pipeline that receives a copy of every job's metadata.
    pub metadata_sink_url: Option<String>,
    /// GitHub API access (App or token); `None` leaves GitHub jobs without runners.
    pub github: Option<crate::github::GithubConfig>,
    /// Which queued job an asking agent gets (`NIMBUS_SCHEDULER`, `…_WEIGHTS`).
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// The metadata keys of `GET /api/jobs/metadata/presets`.
    pub metadata_default_keys: Vec<String>,
    /// How often rollups are folded and presets refreshed.
    pub analytics_interval: Duration,
    /// The logging pipeline the dashboard follows live logs from.
    pub logs_url: String,
    /// The cache proxy the dashboard reads cache usage from.
    pub cache_url: String,
    /// NIMBUS_MODE=production (the dashboard's cookie is then always Secure).
    pub production: bool,
    /// The TLS-terminating proxies in front (NIMBUS_TRUSTED_PROXIES).
    pub trusted_proxies: crate::forwarded::TrustedProxies,
}

/// Most keys NIMBUS_METADATA_DEFAULT_KEYS may name (each is one query per refresh).
const MAX_DEFAULT_KEYS: usize = 20;

fn metadata_default_keys(env: &Env) -> Result<Vec<String>> {
    let keys: Vec<String> = env
        .get("NIMBUS_METADATA_DEFAULT_KEYS")
        .unwrap_or("")
        .split(',')
        .map(|key| key.trim().to_string())
        .filter(|key| !key.is_empty())
        .collect();
    let bad = |message: String| Error::Config {
        variable: "NIMBUS_METADATA_DEFAULT_KEYS".into(),
        message,
    };
    if keys.len() > MAX_DEFAULT_KEYS {
        return Err(bad(format!(
            "names {} keys; at most {MAX_DEFAULT_KEYS}",
            keys.len()
        )));
    }
    for key in &keys {
        crate::domain::validate_metadata_key(key).map_err(|e| bad(e.to_string()))?;
    }
    Ok(keys)
}

impl ControlPlaneConfig {
    /// Reads and checks every variable; the first bad one is reported by name.
    pub fn from_env(env: &Env) -> Result<Self> {
        let data_dir = env.data_dir();
        let listen = env.parse_or(
            "NIMBUS_CONTROL_PLANE_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 8000)),
        )?;
        let database_url = match crate::config::explicit(
            env,
            "NIMBUS_DATABASE_URL",
            "the control plane's PostgreSQL; no SQLite default in production",
        )? {
            Some(url) => url.to_string(),
            None => format!("sqlite://{}", data_dir.join("control-plane.db").display()),
        };
        let runner_labels: Vec<String> = env
            .get("NIMBUS_RUNNER_LABELS")
            .unwrap_or("nimbus")
            .split(',')
            .map(|label| label.trim().to_string())
            .filter(|label| !label.is_empty())
            .collect();
        if runner_labels.is_empty() {
            return Err(Error::Config {
                variable: "NIMBUS_RUNNER_LABELS".into(),
                message: "needs at least one label".into(),
            });
        }
        Ok(ControlPlaneConfig {
            listen,
            database_max_connections: env.positive_u32("NIMBUS_DATABASE_MAX_CONNECTIONS", 16)?,
            jwt_secret: jwt_secret(env, &data_dir)?,
            cache_secret: cache_shared_secret(env, &data_dir)?,
            github: crate::github::GithubConfig::from_env(env)?,
            webhook_secret: env.secret("NIMBUS_GITHUB_WEBHOOK_SECRET"),
            webhook_tolerance: env
                .seconds_or("NIMBUS_WEBHOOK_TOLERANCE_SECONDS", Duration::from_secs(300))?,
            runner_labels,
            lease_ttl: env.seconds_or("NIMBUS_JOB_LEASE_TTL", Duration::from_secs(300))?,
            max_attempts: env.positive_u32("NIMBUS_JOB_MAX_ATTEMPTS", 3)?,
            scheduler: crate::scheduler::SchedulerConfig::from_env(env)?,
            reaper_interval: env.seconds_or("NIMBUS_REAPER_INTERVAL", Duration::from_secs(5))?,
            org_job_rate_limit: env.positive_u32("NIMBUS_ORG_JOB_RATE_LIMIT", 100)?,
            org_rate_interval: env
                .seconds_or("NIMBUS_ORG_RATE_INTERVAL", Duration::from_secs(60))?,
            metrics_token: env.secret("NIMBUS_CONTROL_PLANE_METRICS_TOKEN"),
            policy_path: env.get("NIMBUS_JOB_POLICY_PATH").map(PathBuf::from),
            metadata_sink_url: env.get("NIMBUS_METADATA_SINK_URL").map(str::to_string),
            metadata_default_keys: metadata_default_keys(env)?,
            analytics_interval: env
                .seconds_or("NIMBUS_ANALYTICS_INTERVAL", Duration::from_secs(30))?,
            logs_url: env
                .get("NIMBUS_LOGS_URL")
                .unwrap_or("http://127.0.0.1:8002")
                .trim_end_matches('/')
                .to_string(),
            cache_url: env
                .get("NIMBUS_CACHE_URL")
                .unwrap_or("http://127.0.0.1:8001")
                .trim_end_matches('/')
                .to_string(),
            production: crate::config::production_mode(env)?,
            trusted_proxies: crate::config::trusted_proxies(env)?,
            database_url,
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut env = Env::from_map(pairs.iter().copied());
        env.set("NIMBUS_JWT_SECRET", "0123456789abcdef0123");
        env
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = ControlPlaneConfig::from_env(&env(&[])).expect("defaults parse");
        assert_eq!(config.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(config.lease_ttl, Duration::from_secs(300));
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.org_job_rate_limit, 100);
        assert_eq!(config.org_rate_interval, Duration::from_secs(60));
        assert_eq!(config.webhook_tolerance, Duration::from_secs(300));
        assert_eq!(config.runner_labels, vec!["nimbus".to_string()]);
        assert!(config.database_url.starts_with("sqlite://"));
        for var in SETTINGS.variables {
            assert!(!var.meaning.is_empty(), "{} has no meaning", var.name);
        }
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        for (name, value) in [
            ("NIMBUS_JOB_LEASE_TTL", "soon"),
            ("NIMBUS_JOB_LEASE_TTL", "-1"),
            ("NIMBUS_ORG_JOB_RATE_LIMIT", "0"),
            ("NIMBUS_CONTROL_PLANE_ADDR", "localhost"),
            ("NIMBUS_JOB_MAX_ATTEMPTS", "many"),
            ("NIMBUS_RUNNER_LABELS", " , "),
            ("NIMBUS_METADATA_DEFAULT_KEYS", "lr,a=b"),
            ("NIMBUS_ANALYTICS_INTERVAL", "often"),
        ] {
            let err = ControlPlaneConfig::from_env(&env(&[(name, value)]))
                .expect_err("bad value must fail");
            assert!(err.to_string().contains(name), "{err} should name {name}");
        }
    }

    #[test]
    fn production_refuses_the_development_defaults() {
        let complete = [
            ("NIMBUS_MODE", "production"),
            (
                "NIMBUS_JWT_SECRET",
                "production-jwt-secret-0123456789abcdef",
            ),
            (
                "NIMBUS_CACHE_SHARED_SECRET",
                "production-cache-secret-0123456789abcd",
            ),
            (
                "NIMBUS_DATABASE_URL",
                "postgres://nimbus@db.internal/nimbus",
            ),
            ("NIMBUS_TRUSTED_PROXIES", "10.0.0.0/24"),
        ];
        let config = ControlPlaneConfig::from_env(&Env::from_map(complete)).expect("complete");
        assert!(config.production);
        assert_eq!(config.trusted_proxies.entries(), ["10.0.0.0/24"]);
        for missing in [
            "NIMBUS_DATABASE_URL",
            "NIMBUS_TRUSTED_PROXIES",
            "NIMBUS_JWT_SECRET",
            "NIMBUS_CACHE_SHARED_SECRET",
        ] {
            let env = Env::from_map(complete.into_iter().filter(|(name, _)| *name != missing));
            let error = ControlPlaneConfig::from_env(&env).expect_err("refused");
            assert!(error.to_string().contains(missing), "{missing}: {error}");
        }
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let env = Env::from_map([("NIMBUS_JWT_SECRET", "short")]);
        let err = ControlPlaneConfig::from_env(&env).expect_err("short secret");
        assert!(err.to_string().contains("NIMBUS_JWT_SECRET"));
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let config = ControlPlaneConfig::from_env(&env(&[(
            "NIMBUS_GITHUB_WEBHOOK_SECRET",
            "hunter2hunter2",
        )]))
        .expect("parses");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("0123456789abcdef"));
    }
}
