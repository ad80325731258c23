//! Typed configuration from `NIMBUS_*` environment variables (and an optional `.env`).
//!
//! Parsing takes the environment as a value ([`Env`]), so tests never touch the
//! process environment. Every variable read here is listed in [`VARIABLES`], from
//! which `docs/configuration.md` is generated (a test keeps the two equal).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// One documented variable: name, default (as text) and meaning.
#[derive(Debug, Clone, Copy)]
pub struct VarDoc {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every variable Nimbus reads. `docs/configuration.md` is rendered from this table.
pub const VARIABLES: &[VarDoc] = &[
    VarDoc { name: "NIMBUS_MODE", default: "dev", meaning: "`dev` or `production`. Production refuses to start with generated secrets or a cache index under the data directory chosen by default." },
    VarDoc { name: "NIMBUS_DATA_DIR", default: "./.nimbus", meaning: "Directory for embedded state (SQLite files, generated dev secrets)." },
    VarDoc { name: "NIMBUS_DATABASE_URL", default: "sqlite://$NIMBUS_DATA_DIR/control-plane.db", meaning: "Control-plane store: `sqlite://PATH` (single node) or `postgres://…` (several replicas on one database)." },
    VarDoc { name: "NIMBUS_DATABASE_MAX_CONNECTIONS", default: "16", meaning: "Connection pool size of the control-plane store." },
    VarDoc { name: "NIMBUS_CONTROL_PLANE_ADDR", default: "0.0.0.0:8000", meaning: "Listen address of `nimbus-control-plane` (also `--listen`)." },
    VarDoc { name: "NIMBUS_CONTROL_PLANE_URL", default: "http://127.0.0.1:8000", meaning: "Where clients (CLI, host agent, benchmarks) reach the control plane." },
    VarDoc { name: "NIMBUS_CONTROL_PLANE_TOKEN", default: "(none)", meaning: "Bearer JWT clients send to the control plane (`nimbus token mint`)." },
    VarDoc { name: "NIMBUS_TOKEN", default: "(none)", meaning: "An admin token `nimbus dev up` writes into `.nimbus/dev.env`, for curl and scripts against the local services." },
    VarDoc { name: "NIMBUS_CONTROL_PLANE_METRICS_TOKEN", default: "(none)", meaning: "Bearer token for `/metrics` from non-loopback peers; unset means loopback only." },
    VarDoc { name: "NIMBUS_JWT_SECRET", default: "(generated)", meaning: "HS256 secret for API tokens. Unset: a random secret is generated once into `$NIMBUS_DATA_DIR/jwt-secret` (development only)." },
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
    VarDoc { name: "NIMBUS_LOGGING_PIPELINE_ADDR", default: "0.0.0.0:8002", meaning: "Listen address of `nimbus-logging-pipeline` (also `--listen`)." },
    VarDoc { name: "NIMBUS_LOGGING_PIPELINE_METRICS_TOKEN", default: "(none)", meaning: "Bearer token for the pipeline's `/metrics` from non-loopback peers; unset means loopback only." },
    VarDoc { name: "NIMBUS_LOGS_URL", default: "http://127.0.0.1:8002", meaning: "Where clients (host agent, `nimbus report logs`) reach the logging pipeline." },
    VarDoc { name: "NIMBUS_LOGS_BACKEND", default: "sqlite", meaning: "Where job logs go: `sqlite` (`$NIMBUS_DATA_DIR/logs.db`) or `clickhouse`." },
    VarDoc { name: "NIMBUS_CLICKHOUSE_URL", default: "http://127.0.0.1:8123", meaning: "ClickHouse HTTP interface of the `clickhouse` log backend." },
    VarDoc { name: "NIMBUS_CLICKHOUSE_USER", default: "(server default)", meaning: "ClickHouse user." },
    VarDoc { name: "NIMBUS_CLICKHOUSE_PASSWORD", default: "(none)", meaning: "ClickHouse password." },
    VarDoc { name: "NIMBUS_CLICKHOUSE_DATABASE", default: "nimbus", meaning: "ClickHouse database of `ci_logs` and `job_metadata` (created if missing; docs/CLICKHOUSE_SCHEMA.md)." },
    VarDoc { name: "NIMBUS_LOG_RETENTION_DAYS", default: "30", meaning: "Job log lines older than this are pruned (ClickHouse table TTL; hourly delete on SQLite)." },
    VarDoc { name: "NIMBUS_METADATA_SINK_URL", default: "(none)", meaning: "Logging pipeline the control plane copies every admitted job's metadata to (`POST /api/metadata`, with an admin token signed by NIMBUS_JWT_SECRET, retried in the background)." },
    VarDoc { name: "NIMBUS_METADATA_RETENTION_DAYS", default: "90", meaning: "Job metadata rows older than this are pruned by the logging pipeline." },
    VarDoc { name: "NIMBUS_LOGS_MAX_BUFFERED_LINES", default: "500000", meaning: "Lines the pipeline holds before they are durable; beyond it `POST /api/logs` answers 503 with Retry-After." },
    VarDoc { name: "NIMBUS_LOGS_MAX_FOLLOWS", default: "1024", meaning: "Live follows (`GET /api/logs/{job}/follow`) open at once, all callers together; more answer 429." },
    VarDoc { name: "NIMBUS_LOGS_MAX_FOLLOWS_PER_ORG", default: "32", meaning: "Live follows one org (or the admins together) may have open at once; more answer 429." },
    VarDoc { name: "NIMBUS_LOGS_FOLLOW_IDLE_SECONDS", default: "600", meaning: "A follow that saw no new line for this long ends with an `end` event (resume with `Last-Event-ID`)." },
    VarDoc { name: "NIMBUS_LOGS_FOLLOW_MAX_SECONDS", default: "21600", meaning: "No follow lasts longer; it ends with an `end` event." },
    VarDoc { name: "NIMBUS_LOGS_FLUSH_INTERVAL", default: "0.001", meaning: "Seconds the pipeline waits for more lines before writing a batch (batches also flush at 50,000 lines); lines arriving during a write are batched anyway." },
    VarDoc { name: "NIMBUS_CACHE_PROXY_ADDR", default: "0.0.0.0:8001", meaning: "Listen address of `nimbus-cache-proxy` (also `--listen`)." },
    VarDoc { name: "NIMBUS_CACHE_URL", default: "http://127.0.0.1:8001", meaning: "Where clients (host agent, job VMs, `nimbus report cache`) reach the cache proxy." },
    VarDoc { name: "NIMBUS_CACHE_PUBLIC_URL", default: "(the request's Host)", meaning: "Base of the upload/download links the cache proxy hands out; set it when clients reach the proxy through another name." },
    VarDoc { name: "NIMBUS_CACHE_SHARED_SECRET", default: "(derived)", meaning: "HMAC-SHA256 secret of cache tokens, shared by the control plane (mints) and the cache proxy (verifies). Unset: derived from the JWT secret (development only; required when NIMBUS_MODE=production)." },
    VarDoc { name: "NIMBUS_CACHE_PROXY_METRICS_TOKEN", default: "(none)", meaning: "Bearer token for the cache proxy's `/metrics` from non-loopback peers; unset means loopback only." },
    VarDoc { name: "NIMBUS_CACHE_BACKEND", default: "fs", meaning: "Where cache blobs live: `fs` (a local directory) or `s3` (any S3-compatible store)." },
    VarDoc { name: "NIMBUS_CACHE_DIR", default: "$NIMBUS_DATA_DIR/cache", meaning: "Directory of the `fs` cache backend." },
    VarDoc { name: "NIMBUS_CACHE_S3_BUCKET", default: "(none)", meaning: "Bucket of the `s3` cache backend (required with it)." },
    VarDoc { name: "NIMBUS_CACHE_S3_ENDPOINT", default: "(AWS)", meaning: "Endpoint of an S3-compatible store, e.g. `http://127.0.0.1:8333`." },
    VarDoc { name: "NIMBUS_CACHE_S3_REGION", default: "us-east-1", meaning: "Region of the bucket." },
    VarDoc { name: "NIMBUS_CACHE_S3_PREFIX", default: "(none)", meaning: "Prefix of every object key the cache writes, e.g. `nimbus-cache/`." },
    VarDoc { name: "NIMBUS_CACHE_S3_PATH_STYLE", default: "false", meaning: "`true` for path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need." },
    VarDoc { name: "NIMBUS_CACHE_S3_ACCESS_KEY_ID", default: "$AWS_ACCESS_KEY_ID", meaning: "Access key of the bucket." },
    VarDoc { name: "NIMBUS_CACHE_S3_SECRET_ACCESS_KEY", default: "$AWS_SECRET_ACCESS_KEY", meaning: "Secret key of the bucket." },
    VarDoc { name: "NIMBUS_CACHE_METRICS_DB", default: "$NIMBUS_DATA_DIR/cache-index.db (dev only)", meaning: "The cache index (entries, sizes, last access, hit/miss/eviction counters): a SQLite path or a `postgres://` URL. Required when NIMBUS_MODE=production." },
    VarDoc { name: "NIMBUS_CACHE_MAX_BYTES", default: "(none)", meaning: "Byte budget of all orgs together (`10GiB`, `500GB` or bytes); least recently used entries are evicted beyond it." },
    VarDoc { name: "NIMBUS_CACHE_ORG_MAX_BYTES", default: "10GiB", meaning: "Byte budget of each org; least recently used entries are evicted beyond it, and no entry may be larger." },
    VarDoc { name: "NIMBUS_CACHE_MAX_IDLE_DAYS", default: "7", meaning: "Entries not restored for this many days are evicted." },
    VarDoc { name: "NIMBUS_CACHE_UPLOAD_TTL", default: "900", meaning: "Seconds an upload may go without activity (reservation, chunk, block) before it is dropped and its key freed." },
    VarDoc { name: "NIMBUS_CACHE_UPLOAD_MAX_AGE", default: "21600", meaning: "Seconds an upload may stay unfinished however busy it is (a trickle of parts cannot keep staged bytes forever)." },
    VarDoc { name: "NIMBUS_CACHE_ORG_MAX_PENDING_UPLOADS", default: "64", meaning: "Unfinished uploads one org may have at once; more are refused with 429. Their staged bytes together count against the org's budget." },
    VarDoc { name: "NIMBUS_CACHE_EVICTION_INTERVAL", default: "60", meaning: "Seconds between eviction passes (they also run after each commit)." },
    VarDoc { name: "NIMBUS_CACHE_SCRUB_INTERVAL", default: "21600", meaning: "Seconds between integrity scrubs (every committed entry's sha256 re-checked; corrupt or missing entries are dropped)." },
    VarDoc { name: "NIMBUS_AGENT_ID", default: "(hostname)", meaning: "Name of this host agent (in logs and log lines)." },
    VarDoc { name: "NIMBUS_AGENT_LABELS", default: "(any job)", meaning: "Comma-separated labels of this host agent; it leases only jobs whose runner labels are all among them (case-insensitive; `self-hosted`, `param:`, `meta:` and `timeout:` labels need no match)." },
    VarDoc { name: "NIMBUS_AGENT_MAX_VMS", default: "(cores/2, memory/2 GiB, at least 1)", meaning: "Jobs one host agent runs at once." },
    VarDoc { name: "NIMBUS_AGENT_MAX_JOB_TIMEOUT", default: "(none)", meaning: "Seconds no job may outlive on this host, whatever its `timeout_minutes` or `timeout:MINUTES` label." },
    VarDoc { name: "NIMBUS_AGENT_DRAIN_SECONDS", default: "600", meaning: "After SIGTERM the host agent stops leasing and lets running jobs finish this long; then their VMs are stopped and they complete `cancelled`. A second SIGTERM exits at once." },
    VarDoc { name: "NIMBUS_HOST_AGENT_METRICS_TOKEN", default: "(none)", meaning: "Bearer token for the host agent's `/metrics` from non-loopback peers; unset means loopback only." },
    VarDoc { name: "NIMBUS_HOST_AGENT_METRICS_ADDR", default: "0.0.0.0:9460", meaning: "Where `nimbus-host-agent` serves `/metrics`; non-loopback peers need NIMBUS_HOST_AGENT_METRICS_TOKEN." },
    VarDoc { name: "NIMBUS_VMM", default: "auto", meaning: "VM driver: `auto` (firecracker with hardware KVM, else qemu with hardware KVM, else sandbox), `firecracker`, `qemu` or `sandbox`." },
    VarDoc { name: "NIMBUS_QEMU_ACCEL", default: "auto", meaning: "QEMU acceleration: `kvm` (hardware KVM only), `tcg` (software emulation) or `auto`." },
    VarDoc { name: "NIMBUS_QEMU_TRANSPORT", default: "virtio-serial", meaning: "Host ⇄ guest channel under QEMU: `virtio-serial`, or `serial` (the serial console shared with kernel messages: the last resort for guests without virtio-console)." },
    VarDoc { name: "NIMBUS_QEMU_BIN", default: "qemu-system-x86_64 on PATH", meaning: "QEMU binary." },
    VarDoc { name: "NIMBUS_FIRECRACKER_BIN", default: "firecracker on PATH", meaning: "Firecracker binary." },
    VarDoc { name: "NIMBUS_JAILER_BIN", default: "(none)", meaning: "Firecracker's jailer; set to run every Firecracker VM jailed (docs/FIRECRACKER_SECURITY.md)." },
    VarDoc { name: "NIMBUS_JAILER_UID", default: "65534", meaning: "uid the jailed Firecracker runs as." },
    VarDoc { name: "NIMBUS_JAILER_GID", default: "65534", meaning: "gid the jailed Firecracker runs as." },
    VarDoc { name: "NIMBUS_JAILER_CHROOT_BASE", default: "/srv/jailer", meaning: "Base directory of the jailer's per-VM chroots." },
    VarDoc { name: "NIMBUS_SECCOMP_FILTER", default: "(built-in)", meaning: "Compiled seccomp BPF filter for Firecracker; unset keeps Firecracker's built-in filter." },
    VarDoc { name: "NIMBUS_ASSETS_DIR", default: "$NIMBUS_DATA_DIR/assets", meaning: "Guest assets built by `nimbus assets build` (kernel, initramfs, rootfs, manifest.json)." },
    VarDoc { name: "NIMBUS_ROOTFS_SHA256", default: "(none)", meaning: "Pins the rootfs: assets whose manifest names another rootfs sha256 are refused." },
    VarDoc { name: "NIMBUS_VM_RUNTIME_DIR", default: "$NIMBUS_DATA_DIR/vms", meaning: "Per-VM directories (disk overlays, sockets, console logs); removed with each VM." },
    VarDoc { name: "NIMBUS_VM_VCPUS", default: "2", meaning: "vCPUs per job VM." },
    VarDoc { name: "NIMBUS_VM_MEMORY_MIB", default: "1024", meaning: "Memory per job VM, MiB." },
    VarDoc { name: "NIMBUS_VM_SCRATCH_MIB", default: "4096", meaning: "Per-job scratch disk mounted at `/scratch` (the workspace), MiB; 0 gives a tmpfs." },
    VarDoc { name: "NIMBUS_VM_NETWORK", default: "egress", meaning: "Network of each job VM or sandbox: `none` (no device), `isolated` (a namespace of its own with no route out; host services such as the cache through a relay at 172.30.0.1) or `egress` (that, routed out through NAT under the egress policy). Needs root, iproute2 and iptables." },
    VarDoc { name: "NIMBUS_VM_EGRESS_ALLOW", default: "(none)", meaning: "CIDRs jobs may reach even inside a denied range (comma-separated), e.g. an internal artifact server. Checked before every denial." },
    VarDoc { name: "NIMBUS_VM_EGRESS_DENY", default: "(none)", meaning: "CIDRs jobs may not reach, besides the defaults: the host's own addresses, loopback, private, shared, link-local (cloud metadata), multicast and reserved ranges." },
    VarDoc { name: "NIMBUS_ALLOW_SANDBOX", default: "0", meaning: "`1` lets `NIMBUS_VMM=auto` pick the namespace sandbox when NIMBUS_MODE=production (it shares the host kernel; docs/security.md)." },
    VarDoc { name: "NIMBUS_VM_BOOT_TIMEOUT", default: "60", meaning: "Seconds a VM may take from boot to the guest agent's hello." },
    VarDoc { name: "NIMBUS_LOG_LEVEL", default: "info", meaning: "Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive such as `nimbus_core=debug`)." },
    VarDoc { name: "NIMBUS_LOG_FORMAT", default: "text", meaning: "`text` or `json` log lines on stderr." },
];

/// A string that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The environment a configuration is read from.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// A fixed environment (tests, embedders).
    pub fn from_map<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The process environment, over the values of `./.env` if that file exists.
    pub fn from_process() -> Result<Self> {
        let mut vars = HashMap::new();
        let dotenv = Path::new(".env");
        if dotenv.exists() {
            let entries = dotenvy::from_path_iter(dotenv).map_err(|e| Error::Config {
                variable: ".env".into(),
                message: e.to_string(),
            })?;
            for entry in entries {
                let (key, value) = entry.map_err(|e| Error::Config {
                    variable: ".env".into(),
                    message: e.to_string(),
                })?;
                vars.insert(key, value);
            }
        }
        vars.extend(std::env::vars());
        Ok(Env { vars })
    }

    /// The value of a variable; empty counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        debug_assert!(
            VARIABLES.iter().any(|v| v.name == name),
            "{name} is read but not documented in config::VARIABLES"
        );
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// Parses a variable, or returns `default` when unset; a bad value names the variable.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse::<T>().map_err(|e| Error::Config {
                variable: name.into(),
                message: format!("invalid value {raw:?}: {e}"),
            }),
        }
    }

    /// A number of seconds (integer or fractional), strictly positive.
    pub fn seconds_or(&self, name: &str, default: Duration) -> Result<Duration> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        let seconds: f64 = raw.trim().parse().map_err(|_| Error::Config {
            variable: name.into(),
            message: format!("invalid value {raw:?}: expected a number of seconds"),
        })?;
        if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
            return Err(Error::Config {
                variable: name.into(),
                message: format!("invalid value {raw:?}: must be a positive number of seconds"),
            });
        }
        Ok(Duration::from_secs_f64(seconds))
    }

    fn positive_u32(&self, name: &str, default: u32) -> Result<u32> {
        let value: u32 = self.parse_or(name, default)?;
        if value == 0 {
            return Err(Error::Config {
                variable: name.into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(value)
    }

    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name).map(Secret::new)
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.get("NIMBUS_DATA_DIR").unwrap_or("./.nimbus"))
    }
}

/// Configuration of the control plane service.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub database_max_connections: u32,
    pub jwt_secret: Secret,
    /// Signs the per-job cache tokens (NIMBUS_CACHE_SHARED_SECRET).
    pub cache_secret: Secret,
    pub webhook_secret: Option<Secret>,
    pub webhook_tolerance: Duration,
    pub runner_labels: Vec<String>,
    pub lease_ttl: Duration,
    pub max_attempts: u32,
    pub reaper_interval: Duration,
    pub org_job_rate_limit: u32,
    pub org_rate_interval: Duration,
    pub metrics_token: Option<Secret>,
    pub policy_path: Option<PathBuf>,
    /// The logging pipeline that receives a copy of every job's metadata.
    pub metadata_sink_url: Option<String>,
    /// GitHub API access (App or token); `None` leaves GitHub jobs without runners.
    pub github: Option<crate::github::GithubConfig>,
    /// Which queued job an asking agent gets (`NIMBUS_SCHEDULER`, `…_WEIGHTS`).
    pub scheduler: crate::scheduler::SchedulerConfig,
}

impl ControlPlaneConfig {
    /// Reads and checks every variable; the first bad one is reported by name.
    pub fn from_env(env: &Env) -> Result<Self> {
        let data_dir = env.data_dir();
        let listen = env.parse_or(
            "NIMBUS_CONTROL_PLANE_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 8000)),
        )?;
        let database_url = match env.get("NIMBUS_DATABASE_URL") {
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
            database_url,
            data_dir,
        })
    }
}

/// Where clients find the control plane, and the token they present.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub control_plane_url: String,
    pub token: Option<Secret>,
}

impl ClientConfig {
    pub fn from_env(env: &Env) -> Result<Self> {
        let url = env
            .get("NIMBUS_CONTROL_PLANE_URL")
            .unwrap_or("http://127.0.0.1:8000")
            .trim_end_matches('/')
            .to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Config {
                variable: "NIMBUS_CONTROL_PLANE_URL".into(),
                message: format!("{url:?} is not an http(s) URL"),
            });
        }
        Ok(ClientConfig {
            control_plane_url: url,
            token: env.secret("NIMBUS_CONTROL_PLANE_TOKEN"),
        })
    }
}

/// The JWT secret: `NIMBUS_JWT_SECRET`, or for development a random secret kept in
/// `$NIMBUS_DATA_DIR/jwt-secret` (created on first use, mode 0600), so the control
/// plane and the CLI started in the same directory agree without any set-up.
pub fn jwt_secret(env: &Env, data_dir: &Path) -> Result<Secret> {
    secret_or_generated(env, data_dir, "NIMBUS_JWT_SECRET", "jwt-secret")
}

/// The cache token secret: `NIMBUS_CACHE_SHARED_SECRET`, or for development one
/// derived from the JWT secret, so services that share a JWT secret (or a data
/// directory) agree on cache tokens with no set-up. Production needs it set.
pub fn cache_shared_secret(env: &Env, data_dir: &Path) -> Result<Secret> {
    use hmac::{Hmac, Mac};
    if let Some(secret) = env.secret("NIMBUS_CACHE_SHARED_SECRET") {
        if secret.expose().len() < 16 {
            return Err(Error::Config {
                variable: "NIMBUS_CACHE_SHARED_SECRET".into(),
                message: "must be at least 16 bytes long".into(),
            });
        }
        return Ok(secret);
    }
    if production_mode(env)? {
        return Err(Error::Config {
            variable: "NIMBUS_CACHE_SHARED_SECRET".into(),
            message: "must be set when NIMBUS_MODE=production".into(),
        });
    }
    let jwt = jwt_secret(env, data_dir)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(jwt.expose().as_bytes())
        .map_err(|e| Error::Internal(format!("deriving the cache secret: {e}")))?;
    mac.update(b"nimbus cache token secret v1");
    Ok(Secret::new(hex::encode(mac.finalize().into_bytes())))
}

/// Whether `NIMBUS_MODE=production`: generated secrets and embedded defaults that
/// only suit one developer's machine are refused at start-up.
pub fn production_mode(env: &Env) -> Result<bool> {
    match env.get("NIMBUS_MODE").unwrap_or("dev") {
        "dev" | "development" => Ok(false),
        "production" | "prod" => Ok(true),
        other => Err(Error::Config {
            variable: "NIMBUS_MODE".into(),
            message: format!("invalid value {other:?}: expected dev or production"),
        }),
    }
}

fn secret_or_generated(env: &Env, data_dir: &Path, variable: &str, file: &str) -> Result<Secret> {
    if let Some(secret) = env.secret(variable) {
        if secret.expose().len() < 16 {
            return Err(Error::Config {
                variable: variable.into(),
                message: "must be at least 16 bytes long".into(),
            });
        }
        return Ok(secret);
    }
    if production_mode(env)? {
        return Err(Error::Config {
            variable: variable.into(),
            message: "must be set when NIMBUS_MODE=production".into(),
        });
    }
    let path = data_dir.join(file);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(Secret::new(existing));
        }
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::io(format!("creating {}", data_dir.display()), e))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private_file(&path, &secret)?;
    tracing::warn!(
        path = %path.display(),
        "{variable} is not set: using a generated development secret"
    );
    // Another process may have won the race to create it: read back what is there.
    let stored = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(Secret::new(stored.trim()))
}

fn write_private_file(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => file
            .write_all(contents.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// Renders [`VARIABLES`] as the Markdown table in `docs/configuration.md`.
pub fn render_variables_table() -> String {
    let mut out = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for var in VARIABLES {
        out.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            var.name, var.default, var.meaning
        ));
    }
    out
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
        for var in VARIABLES {
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
        ] {
            let err = ControlPlaneConfig::from_env(&env(&[(name, value)]))
                .expect_err("bad value must fail");
            assert!(err.to_string().contains(name), "{err} should name {name}");
        }
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let env = Env::from_map([("NIMBUS_JWT_SECRET", "short")]);
        let err = ControlPlaneConfig::from_env(&env).expect_err("short secret");
        assert!(err.to_string().contains("NIMBUS_JWT_SECRET"));
    }

    #[test]
    fn a_dev_secret_is_generated_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("nimbus-cfg-{}", uuid::Uuid::new_v4()));
        let env = Env::from_map([("NIMBUS_DATA_DIR", dir.to_string_lossy().to_string())]);
        let first = jwt_secret(&env, &dir).expect("generated");
        let second = jwt_secret(&env, &dir).expect("reused");
        assert_eq!(first, second);
        assert_eq!(first.expose().len(), 64);
        let _ = std::fs::remove_dir_all(dir);
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

    #[test]
    fn docs_configuration_table_matches_the_code() {
        let doc = include_str!("../../docs/configuration.md");
        let table = render_variables_table();
        assert!(
            doc.contains(&table),
            "docs/configuration.md is out of date; regenerate it with `nimbus config docs`:\n{table}"
        );
    }
}
