//! The host agent runtime (`bins/nimbus-host-agent`): lease jobs from the control
//! plane, run each in a fresh VM, stream its output to the logging pipeline,
//! heartbeat the lease, enforce the timeout, complete with the fencing token.
//!
//! It is composed of the SDK's seams only: a [`JobSource`] (the control plane's
//! HTTP client, or an in-process control plane), a [`VmmDriver`], and where its
//! jobs' lines go ([`LogDestination`]: the pipeline's HTTP API with each lease's
//! ingest token, or any [`nimbus_logs::LogSink`] in this process).
//!
//! A lease lost while its job runs (409 on heartbeat: the job belongs to someone
//! else now) stops the VM at once and is counted in
//! `nimbus_host_agent_lease_errors_total`. On shutdown the agent stops leasing and
//! lets running jobs finish (drain).

mod lease;
mod logs;
pub mod pool;
pub mod service;
pub mod workflow;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::domain::{Completion, CompletionStatus, JobStatus, Lease};
use nimbus_core::JobSource;
use nimbus_core::{ClientConfig, Env};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, Registry};
use tokio::sync::{watch, Semaphore};

use crate::assets::VerifiedAssets;
use crate::protocol::{GuestJob, GuestStep, RunnerJob};
use crate::select::{self, StartMode, VmmConfig};
use crate::snapshot::Snapshot;
use crate::spec::NetworkSpec;
use crate::{launch, JobEvent, Outcome, VmmDriver};
use tracing::Instrument;

/// The variables the host agent reads besides the VMs' ([`crate::select::SETTINGS`]); a section of docs/configuration.md.
pub const SETTINGS: nimbus_core::config::Settings = nimbus_core::config::Settings {
    service: "Host agent (nimbus-host-agent)",
    variables: &[
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_URL", default: "http://127.0.0.1:8001", meaning: "Where clients (host agent, job VMs, `nimbus report cache`, the dashboard's cache usage) reach the cache proxy." },
        nimbus_core::config::VarDoc { name: "NIMBUS_AGENT_ID", default: "(hostname)", meaning: "Name of this host agent (in logs and log lines)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_AGENT_LABELS", default: "(any job)", meaning: "Comma-separated labels of this host agent; it leases only jobs whose runner labels are all among them (case-insensitive; `self-hosted`, `param:`, `meta:` and `timeout:` labels need no match)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_AGENT_MAX_VMS", default: "(cores/2, memory/2 GiB, at least 1)", meaning: "Jobs one host agent runs at once." },
        nimbus_core::config::VarDoc { name: "NIMBUS_AGENT_WARM_POOL", default: "0", meaning: "VMs the host agent keeps booted ahead, their guest agent waiting, each handed one job the moment its lease arrives and replaced in the background (NIMBUS_VMM_START). They count in NIMBUS_AGENT_MAX_VMS." },
        nimbus_core::config::VarDoc { name: "NIMBUS_AGENT_WARM_POOL_MAX_AGE", default: "3600", meaning: "Seconds a warm VM may wait for a job before it is replaced." },
        nimbus_core::config::VarDoc { name: "NIMBUS_AGENT_WARM_POOL_MIN_FREE_MIB", default: "1024", meaning: "Memory (MemAvailable, MiB) the warm pool leaves the host: below it the pool gives back a warm VM per second and boots none; it boots one only while this much would stay free with the VM's memory in use." },
        nimbus_core::config::VarDoc { name: "NIMBUS_AGENT_MAX_JOB_TIMEOUT", default: "(none)", meaning: "Seconds no job may outlive on this host, whatever its `timeout_minutes` or `timeout:MINUTES` label." },
        nimbus_core::config::VarDoc { name: "NIMBUS_AGENT_DRAIN_SECONDS", default: "600", meaning: "After SIGTERM the host agent stops leasing and lets running jobs finish this long; then their VMs are stopped and they complete `cancelled`. A second SIGTERM exits at once." },
        nimbus_core::config::VarDoc { name: "NIMBUS_HOST_AGENT_METRICS_TOKEN", default: "(none)", meaning: "Bearer token for the host agent's `/metrics` from non-loopback peers; unset means loopback only." },
        nimbus_core::config::VarDoc { name: "NIMBUS_HOST_AGENT_METRICS_ADDR", default: "0.0.0.0:9460", meaning: "Where `nimbus-host-agent` serves `/metrics`; non-loopback peers need NIMBUS_HOST_AGENT_METRICS_TOKEN." },
    ],
};

/// What the host agent runs with, from `NIMBUS_*` variables ([`AgentConfig::from_env`]).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// How to reach the control plane it leases jobs from.
    pub client: ClientConfig,
    /// Name of this agent in logs and log lines (`NIMBUS_AGENT_ID`, default: the hostname).
    pub agent_id: String,
    /// Jobs run at once, at least 1 (`NIMBUS_AGENT_MAX_VMS`).
    pub max_vms: usize,
    /// The logging pipeline's base URL (`NIMBUS_LOGS_URL`), if jobs' lines go there.
    pub logs_url: Option<String>,
    /// Where the Actions runner is installed in the guest rootfs.
    pub runner_dir: String,
    /// `NIMBUS_AGENT_LABELS`: only jobs whose runner labels are all among these are
    /// leased; `None` (unset) takes any job.
    pub labels: Option<Vec<String>>,
    /// The cache proxy as the job VMs reach it (`NIMBUS_CACHE_URL`); jobs get it as
    /// `ACTIONS_CACHE_URL`/`ACTIONS_RESULTS_URL` with their lease's cache token.
    pub cache_url: Option<String>,
    /// The job VMs and their driver.
    pub vmm: VmmConfig,
    /// How long one lease request waits for a job (long poll).
    pub lease_wait: Duration,
    /// Upper bound of any job's timeout on this host (`NIMBUS_AGENT_MAX_JOB_TIMEOUT`).
    pub max_job_timeout: Option<Duration>,
    /// How long running jobs may go on after SIGTERM before their VMs are stopped and
    /// they complete `cancelled` (`NIMBUS_AGENT_DRAIN_SECONDS`).
    pub drain: Duration,
    /// VMs booted ahead (`NIMBUS_AGENT_WARM_POOL`); used as `NIMBUS_VMM_START` says.
    pub warm_pool: usize,
    /// Oldest a warm VM gets before it is replaced (`NIMBUS_AGENT_WARM_POOL_MAX_AGE`).
    pub warm_pool_max_age: Duration,
    /// Memory the warm pool leaves the host, MiB (`NIMBUS_AGENT_WARM_POOL_MIN_FREE_MIB`).
    pub warm_pool_min_free_mib: u64,
    /// Where the warm pool reads the host's available memory (MiB).
    pub memory_available: pool::MemoryProbe,
}

fn config_error(variable: &str, message: impl Into<String>) -> nimbus_core::Error {
    nimbus_core::Error::Config {
        variable: variable.into(),
        message: message.into(),
    }
}

impl AgentConfig {
    /// Reads the agent's and the VMs' variables; refuses `NIMBUS_AGENT_MAX_VMS=0`.
    pub fn from_env(env: &Env) -> nimbus_core::Result<Self> {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host-agent".into());
        let default_vms = default_max_vms();
        let max_vms: usize = env.parse_or("NIMBUS_AGENT_MAX_VMS", default_vms)?;
        if max_vms == 0 {
            return Err(config_error("NIMBUS_AGENT_MAX_VMS", "must be at least 1"));
        }
        Ok(AgentConfig {
            client: ClientConfig::from_env(env)?,
            agent_id: env
                .get("NIMBUS_AGENT_ID")
                .map(str::to_string)
                .unwrap_or(hostname),
            max_vms,
            logs_url: env
                .get("NIMBUS_LOGS_URL")
                .map(|u| u.trim_end_matches('/').to_string()),
            runner_dir: "/opt/actions-runner".to_string(),
            labels: env.get("NIMBUS_AGENT_LABELS").map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            cache_url: env
                .get("NIMBUS_CACHE_URL")
                .map(|u| u.trim_end_matches('/').to_string()),
            vmm: VmmConfig::from_env(env)?,
            lease_wait: Duration::from_secs(20),
            drain: env.seconds_or("NIMBUS_AGENT_DRAIN_SECONDS", Duration::from_secs(600))?,
            warm_pool: env.parse_or("NIMBUS_AGENT_WARM_POOL", 0usize)?,
            warm_pool_max_age: env
                .seconds_or("NIMBUS_AGENT_WARM_POOL_MAX_AGE", Duration::from_secs(3600))?,
            warm_pool_min_free_mib: env.parse_or("NIMBUS_AGENT_WARM_POOL_MIN_FREE_MIB", 1024u64)?,
            memory_available: pool::MemoryProbe::host(),
            max_job_timeout: match env.get("NIMBUS_AGENT_MAX_JOB_TIMEOUT") {
                None => None,
                Some(_) => {
                    Some(env.seconds_or("NIMBUS_AGENT_MAX_JOB_TIMEOUT", Duration::from_secs(1))?)
                }
            },
        })
    }
}

/// One VM per 2 cores and per 2 GiB of memory, at least one.
pub(crate) fn default_max_vms() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| (kib / (1 << 20)) as usize)
        .unwrap_or(2);
    (cores / 2).min(memory_gib / 2).max(1)
}

/// The agent's metrics (names from the operations guide).
#[derive(Clone)]
pub struct AgentMetrics {
    /// Holds all of these (and the VMs' egress counter); what `/metrics` serves.
    pub registry: Registry,
    /// Jobs killed at their timeout (`nimbus_host_agent_job_timeouts_total`).
    pub job_timeouts: IntCounter,
    /// Lease requests, heartbeats or completions that failed (409 or network).
    pub lease_errors: IntCounter,
    /// Jobs run to an outcome (`nimbus_host_agent_jobs_total`).
    pub jobs_run: IntCounter,
    /// Output lines dropped because the logging pipeline stayed unreachable.
    pub log_lines_dropped: IntCounter,
    /// Output lines the log sink refused for good (kept in the spool's dead-letter dir).
    pub log_lines_dead_lettered: IntCounter,
    /// VMs running jobs now (`nimbus_host_agent_running_vms`).
    pub running_vms: IntGauge,
    /// Free job slots (`NIMBUS_AGENT_MAX_VMS` minus running jobs).
    pub slots_free: IntGauge,
    /// Seconds from a job's lease to its completion report, by status.
    pub job_duration: HistogramVec,
    /// Seconds from the boot call to the guest agent's hello.
    pub boot_seconds: Histogram,
    /// The warm pool's size, hits, misses, ages and discards.
    pub warm_pool: pool::PoolMetrics,
}

impl AgentMetrics {
    /// Creates every metric and registers it in a fresh registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let running_vms = IntGauge::new("nimbus_host_agent_running_vms", "VMs running jobs now.")?;
        registry.register(Box::new(running_vms.clone()))?;
        let slots_free = IntGauge::new(
            "nimbus_host_agent_slots_free",
            "Job slots free on this host (NIMBUS_AGENT_MAX_VMS minus running jobs).",
        )?;
        registry.register(Box::new(slots_free.clone()))?;
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                "nimbus_host_agent_job_duration_seconds",
                "Seconds from a job's lease to its completion, by final status.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
            ]),
            &["status"],
        )?;
        registry.register(Box::new(job_duration.clone()))?;
        let boot_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "nimbus_host_agent_vm_boot_seconds",
                "Seconds from the boot call to the guest agent's hello.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0,
            ]),
        )?;
        registry.register(Box::new(boot_seconds.clone()))?;
        let warm_pool = pool::PoolMetrics::register(&registry, boot_seconds.clone())?;
        // Counted by the networks of this process's VMs as they go.
        registry.register(Box::new(crate::network::egress_refused().clone()))?;
        Ok(AgentMetrics {
            job_timeouts: counter("nimbus_host_agent_job_timeouts_total", "Jobs killed at their timeout.")?,
            lease_errors: counter(
                "nimbus_host_agent_lease_errors_total",
                "Lease requests, heartbeats or completions that failed (409 or network).",
            )?,
            jobs_run: counter("nimbus_host_agent_jobs_total", "Jobs this agent ran to an outcome.")?,
            log_lines_dead_lettered: counter(
                "nimbus_host_agent_log_lines_dead_lettered_total",
                "Job output lines the log sink refused for good (kept in the spool's dead-letter directory).",
            )?,
            log_lines_dropped: counter(
                "nimbus_host_agent_log_lines_dropped_total",
                "Job output lines dropped because the logging pipeline stayed unreachable (should be 0).",
            )?,
            running_vms,
            slots_free,
            job_duration,
            boot_seconds,
            warm_pool,
            registry,
        })
    }
}

/// Where the agent's jobs' output lines go.
#[derive(Clone, Default)]
pub enum LogDestination {
    /// The logging pipeline at this URL, each job's lines with its lease's ingest
    /// token (`NIMBUS_LOGS_URL`).
    Pipeline {
        /// The pipeline's base URL, without a trailing `/`.
        url: String,
    },
    /// A sink in this process (an embedder's ClickHouse or SQLite sink, or the
    /// pipeline's own sink when it runs in the same process).
    Sink(Arc<dyn nimbus_logs::LogSink>),
    /// Nowhere (the lines are only the VM's).
    #[default]
    Nowhere,
}

impl LogDestination {
    /// `NIMBUS_LOGS_URL` if set.
    pub fn from_config(config: &AgentConfig) -> Self {
        match &config.logs_url {
            Some(url) => LogDestination::Pipeline { url: url.clone() },
            None => LogDestination::Nowhere,
        }
    }
}

struct Agent {
    config: AgentConfig,
    jobs: Arc<dyn JobSource>,
    logs: LogDestination,
    driver: Arc<dyn VmmDriver>,
    assets: VerifiedAssets,
    metrics: AgentMetrics,
    http: reqwest::Client,
    /// Set when the drain deadline passes: running jobs stop and complete `cancelled`.
    cancel: watch::Receiver<bool>,
    /// VMs booted ahead (off unless NIMBUS_VMM_START and NIMBUS_AGENT_WARM_POOL say so).
    pool: Arc<pool::WarmPool>,
    /// What job VMs are restored from (NIMBUS_VMM_START=snapshot or auto), if anything.
    snapshot: Option<Snapshot>,
}

/// How many warm VMs `NIMBUS_VMM_START` and `NIMBUS_AGENT_WARM_POOL` ask for, and why.
fn warm_pool_target(config: &AgentConfig) -> (usize, String) {
    let (target, why) = match config.vmm.start {
        StartMode::Snapshot if config.warm_pool > 0 => (
            0,
            "no warm pool (NIMBUS_VMM_START=snapshot; NIMBUS_AGENT_WARM_POOL is ignored)"
                .to_string(),
        ),
        StartMode::Snapshot => (0, "no warm pool (NIMBUS_VMM_START=snapshot)".to_string()),
        StartMode::Cold if config.warm_pool > 0 => (
            0,
            "cold (NIMBUS_VMM_START=cold; NIMBUS_AGENT_WARM_POOL is ignored)".to_string(),
        ),
        StartMode::Cold => (0, "cold (NIMBUS_VMM_START=cold)".to_string()),
        StartMode::Warm => {
            let target = config.warm_pool.max(1);
            (
                target,
                format!("warm pool of {target} (NIMBUS_VMM_START=warm)"),
            )
        }
        StartMode::Auto if config.warm_pool > 0 => (
            config.warm_pool,
            format!(
                "warm pool of {} (auto: NIMBUS_AGENT_WARM_POOL={})",
                config.warm_pool, config.warm_pool
            ),
        ),
        StartMode::Auto => (0, "cold (auto: NIMBUS_AGENT_WARM_POOL=0)".to_string()),
    };
    if target > config.max_vms {
        let why = format!(
            "{why}, cut to NIMBUS_AGENT_MAX_VMS={}: warm VMs count in the agent's slots",
            config.max_vms
        );
        return (config.max_vms, why);
    }
    (target, why)
}

/// The spec of every job VM of this agent; a job's own id and timeout go in later.
fn vm_spec(
    config: &AgentConfig,
    assets: &VerifiedAssets,
    snapshot: Option<&Snapshot>,
    id: String,
    timeout: Duration,
) -> crate::VmSpec {
    let mut spec = launch::spec(&config.vmm, assets, id, timeout);
    let (_, forwards) = cache_route(config.cache_url.as_deref(), spec.network);
    spec.forwards = forwards;
    spec.snapshot = snapshot.cloned();
    spec
}

/// The snapshot job VMs are restored from, if `NIMBUS_VMM_START` asks for one and
/// (under `auto`) the driver can make it; `snapshot` fails where it cannot.
async fn start_snapshot(
    config: &AgentConfig,
    driver: &Arc<dyn VmmDriver>,
    assets: &VerifiedAssets,
) -> crate::Result<Option<Snapshot>> {
    if !matches!(config.vmm.start, StartMode::Snapshot | StartMode::Auto) {
        return Ok(None);
    }
    let template = vm_spec(
        config,
        assets,
        None,
        "template".into(),
        Duration::from_secs(3600),
    );
    match driver.snapshot(&template, &assets.manifest_sha256).await {
        Ok(snapshot) => {
            tracing::info!(snapshot = %snapshot.key, "host agent: job VMs are restored from a snapshot");
            Ok(Some(snapshot))
        }
        Err(error) if config.vmm.start == StartMode::Auto => {
            tracing::info!(%error, "host agent: auto: no snapshot restore with this driver, VMs boot");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Runs the agent until `shutdown` resolves, then drains running jobs: jobs from
/// `jobs`, their lines to `logs`.
pub async fn run(
    config: AgentConfig,
    jobs: Arc<dyn JobSource>,
    logs: LogDestination,
    metrics: AgentMetrics,
    shutdown: impl Future<Output = ()> + Send,
) -> crate::Result<()> {
    let selection = select::select(&config.vmm).await?;
    tracing::info!(driver = %selection.driver.kind(), reason = %selection.reason, "host agent: VM driver chosen");
    if selection.driver.kind() == crate::DriverKind::Sandbox {
        tracing::warn!("the sandbox driver shares the host kernel: weaker isolation than a VM");
    }
    let reaped = crate::runtime::reap_orphans(&config.vmm.runtime_dir)?;
    if !reaped.is_empty() {
        tracing::warn!(vms = ?reaped, "removed VMs left behind by an earlier agent");
    }
    // Their network namespaces, taps, veths and NAT rules (named after the VM id).
    for vm_id in &reaped {
        let network = crate::network::VmNetwork::leftover(vm_id);
        if network.exists() {
            tracing::warn!(vm = %vm_id, "removing the network an earlier agent's VM left behind");
            network.remove().await;
        }
    }
    let assets = launch::verified_assets(&config.vmm, selection.driver.kind()).await?;
    let (cancel_all, cancel) = watch::channel(false);
    let snapshot = start_snapshot(&config, &selection.driver, &assets).await?;
    let slots = Arc::new(Semaphore::new(config.max_vms));
    let (target, why) = warm_pool_target(&config);
    tracing::info!(start = %why, "host agent: how job VMs start");
    let pool = {
        let spec_config = config.clone();
        let spec_assets = assets.clone();
        let spec_snapshot = snapshot.clone();
        // Booted before its job is known: the timeout is set at hand-off.
        let make_spec: pool::SpecFactory = Box::new(move |id| {
            vm_spec(
                &spec_config,
                &spec_assets,
                spec_snapshot.as_ref(),
                id,
                Duration::from_secs(3600),
            )
        });
        pool::WarmPool::new(
            selection.driver.clone(),
            make_spec,
            pool::PoolSettings {
                target,
                max_age: config.warm_pool_max_age,
                min_free_mib: config.warm_pool_min_free_mib,
                vm_memory_mib: u64::from(config.vmm.memory_mib),
                check_every: Duration::from_secs(1),
            },
            slots.clone(),
            config.memory_available.clone(),
            metrics.warm_pool.clone(),
        )
    };
    let replenishing = pool.start();
    let agent = Arc::new(Agent {
        jobs,
        logs,
        driver: selection.driver,
        assets,
        metrics,
        http: reqwest::Client::new(),
        config,
        cancel,
        pool,
        snapshot,
    });
    agent.metrics.slots_free.set(agent.config.max_vms as i64);
    let (stop, stopped) = watch::channel(false);
    let leasing = {
        let agent = agent.clone();
        let mut stopped = stopped.clone();
        async move {
            loop {
                // A warm VM, or a slot to boot one in: the loop holds it while it
                // waits for work, so free slots are counted by jobs, not by permits.
                let capacity = tokio::select! {
                    capacity = agent.pool.capacity() => match capacity {
                        Some(capacity) => capacity,
                        None => return,
                    },
                    _ = stopped.changed() => return,
                };
                let lease = tokio::select! {
                    lease = agent.jobs.lease(agent.config.lease_wait, agent.config.labels.as_deref()) => lease,
                    _ = stopped.changed() => {
                        agent.pool.give_back(capacity).await;
                        return;
                    }
                };
                match lease {
                    Ok(Some(lease)) => {
                        let agent = agent.clone();
                        let capacity = agent.pool.upgrade(capacity);
                        agent.metrics.slots_free.dec();
                        tokio::spawn(async move {
                            run_job(&agent, lease, capacity).await;
                            agent.metrics.slots_free.inc();
                            agent.pool.slot_freed();
                        });
                    }
                    Ok(None) => agent.pool.give_back(capacity).await,
                    Err(error) => {
                        agent.pool.give_back(capacity).await;
                        agent.metrics.lease_errors.inc();
                        tracing::warn!(%error, "lease request failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            _ = stopped.changed() => return,
                        }
                    }
                }
            }
        }
    };
    tokio::pin!(leasing);
    tokio::select! {
        _ = &mut leasing => {}
        _ = shutdown => {
            tracing::info!("host agent: draining running jobs");
            let _ = stop.send(true);
            // The loop gives back the warm VM it held for the next lease.
            leasing.await;
        }
    }
    // Warm VMs have no job to finish: they go at once.
    agent.pool.close().await;
    replenishing.finished().await;
    // Drain: every slot free again means every job finished; past the deadline the
    // remaining jobs are stopped and complete `cancelled`.
    let all = agent.config.max_vms as u32;
    let drained = tokio::time::timeout(agent.config.drain, slots.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!(
            drain_seconds = agent.config.drain.as_secs(),
            "drain deadline passed: stopping the running jobs' VMs"
        );
        let _ = cancel_all.send(true);
        let _ = slots.acquire_many(all).await;
    }
    Ok(())
}

/// The job's timeout: its spec's `timeout_minutes`, lowered by a `timeout:MINUTES`
/// label, capped by this host's maximum.
fn job_timeout(job: &nimbus_core::Job, cap: Option<Duration>) -> Duration {
    let mut minutes = u64::from(job.spec.timeout_minutes.max(1));
    for label in &job.labels {
        if let Some(value) = label.strip_prefix("timeout:") {
            if let Ok(label_minutes) = value.trim().parse::<u64>() {
                if label_minutes > 0 {
                    minutes = minutes.min(label_minutes);
                }
            }
        }
    }
    let timeout = Duration::from_secs(minutes * 60);
    cap.map_or(timeout, |cap| timeout.min(cap))
}

/// What a job's steps see of the cache proxy: the variables the official
/// `@actions/cache` client reads (v2 preferred; v1 through the same URL).
fn cache_env(cache_url: Option<&str>, lease: &Lease) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let (Some(url), Some(token)) = (cache_url, &lease.cache_token) {
        // The client resolves paths against these: the trailing slash matters.
        let base = format!("{url}/");
        env.insert("ACTIONS_CACHE_URL".into(), base.clone());
        env.insert("ACTIONS_RESULTS_URL".into(), base);
        env.insert("ACTIONS_CACHE_SERVICE_V2".into(), "true".into());
        env.insert("ACTIONS_RUNTIME_TOKEN".into(), token.clone());
        env.insert("NIMBUS_CACHE_URL".into(), url.to_string());
    }
    env
}

/// Where a VM reaches the cache proxy, and what the VM's network relays for it.
/// With a network of its own the job talks to a relay at its gateway
/// (`172.30.0.1`), forwarded to `NIMBUS_CACHE_URL` from the host: it needs no
/// route to the host (which the egress policy refuses). Without a network there
/// is no cache; an `https` proxy is passed as it is (the relay would break its name).
fn cache_route(cache_url: Option<&str>, network: NetworkSpec) -> (Option<String>, Vec<String>) {
    let Some(url) = cache_url else {
        return (None, Vec::new());
    };
    if network == NetworkSpec::None {
        return (None, Vec::new());
    }
    match crate::network::relay::http_upstream(url) {
        Some((upstream, port)) => (
            crate::network::relay::rewrite_authority(url, crate::network::SERVICES_ADDRESS, port),
            vec![upstream],
        ),
        None => (Some(url.to_string()), Vec::new()),
    }
}

fn guest_job(lease: &Lease, cache_url: Option<&str>) -> GuestJob {
    let spec = &lease.job.spec;
    // The job's own env wins over what Nimbus provides.
    let mut env = cache_env(cache_url, lease);
    // Which job and which attempt this run is: an attempt after a lost lease is a
    // new run of the same job (a step can tell, e.g. to name what it writes).
    env.insert("NIMBUS_JOB_ID".into(), lease.job.id.to_string());
    env.insert("NIMBUS_JOB_ATTEMPT".into(), lease.job.attempt.to_string());
    env.extend(spec.env.clone());
    GuestJob {
        steps: spec
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| GuestStep {
                name: step
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("step {}", index + 1)),
                run: step.run.clone(),
                env: step.env.clone(),
                working_directory: step.working_directory.clone(),
                ..GuestStep::default()
            })
            .collect(),
        env,
        ..GuestJob::default()
    }
}

/// Runs a leased job in the span of its run, which continues the job's trace
/// from the lease (docs/observability.md).
async fn run_job(agent: &Agent, lease: Lease, capacity: pool::Capacity) {
    let span = tracing::info_span!(
        "job.run",
        job_id = lease.job.id,
        attempt = lease.job.attempt,
        agent = %agent.config.agent_id,
    );
    nimbus_core::telemetry::set_parent(&span, lease.traceparent.as_deref());
    run_leased_job(agent, lease, capacity, span.clone())
        .instrument(span)
        .await
}

/// Boots a VM for the job in `vm` unless it holds a warm one, then runs the job.
/// The VM stays in `vm` whatever happens (also when this future is dropped), for
/// the caller to destroy.
async fn boot_and_run(
    driver: &Arc<dyn VmmDriver>,
    spec: &crate::VmSpec,
    vm: &mut Option<Box<dyn crate::Vm>>,
    job: &GuestJob,
    on_boot: &mut (dyn FnMut(&crate::GuestInfo) + Send),
    on_event: &mut (dyn FnMut(JobEvent) + Send),
) -> crate::Result<crate::JobReport> {
    let vm = match vm {
        Some(warm) => {
            warm.set_timeout(spec.timeout);
            warm
        }
        None => {
            let cold = vm.insert(driver.prepare(spec).await?);
            let info = cold.boot().await?;
            on_boot(&info);
            cold
        }
    };
    vm.run(job, on_event).await
}

async fn run_leased_job(
    agent: &Agent,
    lease: Lease,
    capacity: pool::Capacity,
    span: tracing::Span,
) {
    let leased_at = std::time::Instant::now();
    // The lease's term started before its answer reached us; the clock's safety
    // margin covers that transit (renewals are timed from their request).
    let clock = lease::LeaseClock::start(&lease, leased_at);
    let job = &lease.job;
    let token = lease.fencing_token;
    // A GitHub job runs the Actions runner with a just-in-time config that only
    // the holder of this lease can get; a workflow job its workflow, in the
    // working tree it names.
    let prepared = match prepare_job(agent, &lease).await {
        Ok(prepared) => prepared,
        Err(reason) => {
            tracing::warn!(job_id = job.id, %reason, "the job cannot run");
            let completion = Completion {
                fencing_token: token,
                status: CompletionStatus::Failed,
                exit_code: None,
                reason: Some(reason),
                result: None,
            };
            // The VM never saw the job: a warm one goes back to the pool.
            agent.pool.give_back(capacity).await;
            lease::complete(agent, &lease, &clock, completion).await;
            return;
        }
    };
    // The VM (a warm one, or none yet) and the slot it holds until it is destroyed.
    let (mut vm, _slot) = match capacity {
        pool::Capacity::Warm(warm) => {
            let handed = agent.pool.hand_off(warm);
            tracing::info!(job_id = job.id, vm = %handed.vm.id(), "job handed a warm VM");
            (Some(handed.vm), handed.slot)
        }
        pool::Capacity::Cold(slot) => {
            agent.pool.miss();
            (None, slot)
        }
    };
    tracing::info!(job_id = job.id, attempt = job.attempt, "running job");
    agent.metrics.running_vms.inc();
    let sink: Option<Arc<dyn nimbus_logs::LogSink>> = match &agent.logs {
        LogDestination::Pipeline { url } => {
            if lease.ingest_token.is_none() {
                tracing::warn!(job_id = job.id, "the lease carries no log ingest token: the pipeline will refuse this job's lines");
            }
            Some(Arc::new(
                nimbus_logs::sink::http::HttpSink::new(
                    agent.http.clone(),
                    url,
                    lease.ingest_token.clone().map(nimbus_core::Secret::new),
                )
                .with_traceparent(nimbus_core::telemetry::traceparent_of(&span)),
            ))
        }
        LogDestination::Sink(sink) => Some(sink.clone()),
        LogDestination::Nowhere => None,
    };
    let mut shipper = logs::LogShipper::start(
        sink,
        job,
        lease.log_seq_base,
        &agent.config.agent_id,
        logs::ShipperMetrics {
            dropped: agent.metrics.log_lines_dropped.clone(),
            dead_lettered: agent.metrics.log_lines_dead_lettered.clone(),
        },
        logs::Bounds {
            memory_lines: 20_000,
            disk_lines: 2_000_000,
            spool_dir: agent.config.vmm.runtime_dir.join(".log-spool"),
        },
    );
    let timeout = job_timeout(job, agent.config.max_job_timeout);
    let spec = vm_spec(
        &agent.config,
        &agent.assets,
        agent.snapshot.as_ref(),
        format!("job-{}-{}", job.id, token),
        timeout,
    );
    let (cache_url, _) = cache_route(agent.config.cache_url.as_deref(), spec.network);
    let mut guest = guest_job(&lease, cache_url.as_deref());
    guest.runner = prepared.runner;
    guest.workflow = prepared.workflow;
    let mut workflow_result = None;
    let lost = lease::heartbeat_until_lost(agent, &lease, &clock);
    // A span per step, from its start to its end as the guest reports them.
    let mut step_spans: std::collections::HashMap<usize, tracing::Span> =
        std::collections::HashMap::new();
    // A workflow job's log has its steps' titles, as GitHub's does (`nimbus run`
    // shows them from there); other jobs' logs are their output alone.
    let is_workflow = guest.workflow.is_some();
    let mut step_names: std::collections::HashMap<usize, String> = std::collections::HashMap::new();
    let mut on_event = |event: JobEvent| match event {
        JobEvent::Output(line) => shipper.push(line),
        JobEvent::StepStarted { index, name } => {
            let step = tracing::info_span!(parent: &span, "job.step", index, name = %name, outcome = tracing::field::Empty);
            step_spans.insert(index, step);
            if is_workflow {
                shipper.push(title_line(index, format!("▶ {name}")));
                step_names.insert(index, name);
            }
        }
        JobEvent::StepFinished {
            index,
            outcome,
            duration_millis,
        } => {
            if let Some(step) = step_spans.remove(&index) {
                step.record("outcome", tracing::field::debug(&outcome));
            }
            if let Some(name) = step_names.remove(&index) {
                let title = format!("{} {name} ({duration_millis} ms)", outcome.mark());
                shipper.push(title_line(index, title));
            }
        }
        // A workflow job's outputs, summary and annotations, kept with the job.
        JobEvent::WorkflowResult(result) => {
            if is_workflow {
                workflow_result = workflow::completion_result(result);
            }
        }
    };
    let boot_started = std::time::Instant::now();
    let boot_seconds = agent.metrics.boot_seconds.clone();
    // From the boot call to the guest agent's hello.
    let mut boot_span = Some(tracing::info_span!(parent: &span, "vm.boot"));
    let mut on_boot = move |_: &crate::GuestInfo| {
        boot_seconds.observe(boot_started.elapsed().as_secs_f64());
        boot_span.take();
    };
    let mut cancel = agent.cancel.clone();
    let mut cancelled = false;
    let outcome = tokio::select! {
        result = boot_and_run(&agent.driver, &spec, &mut vm, &guest, &mut on_boot, &mut on_event) => Some(result),
        _ = lost => None,
        _ = cancel.wait_for(|stop| *stop) => {
            cancelled = true;
            None
        }
    };
    if outcome.is_none() && !cancelled {
        // Counted before the VM is torn down: its stop is what an observer sees.
        agent.metrics.lease_errors.inc();
        tracing::warn!(
            job_id = job.id,
            "lease lost while the job ran; its VM is stopped"
        );
    }
    // Whatever ended the run, the VM goes: one VM, one job.
    if let Some(mut vm) = vm.take() {
        if let Err(error) = vm.destroy().await {
            tracing::warn!(job_id = job.id, %error, "destroying the job's VM failed");
        }
    }
    agent.metrics.running_vms.dec();
    shipper.finish(Duration::from_secs(60)).await;
    if cancelled {
        let completion = Completion {
            fencing_token: token,
            status: CompletionStatus::Cancelled,
            exit_code: None,
            reason: Some(format!(
                "the host agent shut down; the job outlived the {} s drain",
                agent.config.drain.as_secs()
            )),
            result: None,
        };
        lease::complete(agent, &lease, &clock, completion).await;
        return;
    }
    let Some(result) = outcome else {
        return;
    };
    let completion = match result {
        Ok(report) => {
            agent.metrics.jobs_run.inc();
            match report.outcome {
                Outcome::Exited { code: 0 } => (CompletionStatus::Succeeded, Some(0), None),
                Outcome::Exited { code } => (CompletionStatus::Failed, Some(code), None),
                Outcome::TimedOut => {
                    agent.metrics.job_timeouts.inc();
                    (
                        CompletionStatus::TimedOut,
                        Some(124),
                        Some(format!("timed out after {} s", timeout.as_secs())),
                    )
                }
                Outcome::Crashed { reason } => (CompletionStatus::Failed, None, Some(reason)),
            }
        }
        Err(error) => (
            CompletionStatus::Failed,
            None,
            Some(format!("the VM could not run the job: {error}")),
        ),
    };
    let (status, exit_code, reason) = completion;
    agent
        .metrics
        .job_duration
        .with_label_values(&[JobStatus::from(status).as_str()])
        .observe(leased_at.elapsed().as_secs_f64());
    drop(prepared.workspace);
    let completion = Completion {
        fencing_token: token,
        status,
        exit_code,
        reason,
        result: workflow_result,
    };
    lease::complete(agent, &lease, &clock, completion).await;
}

/// A line of the agent's own in a job's log (a workflow step's title).
fn title_line(step: usize, line: String) -> crate::protocol::OutputLine {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    crate::protocol::OutputLine {
        seq: 0,
        step,
        stream: crate::protocol::Stream::Stdout,
        ts_millis: now,
        line,
    }
}

/// What a job needs besides its spec before a VM is spent on it.
struct PreparedJob {
    /// A GitHub job's Actions runner and its just-in-time config.
    runner: Option<RunnerJob>,
    /// A workflow job (`nimbus run`).
    workflow: Option<Box<crate::workflow::WorkflowJob>>,
    /// The workflow job's working tree, on the host until the job ends.
    workspace: Option<workflow::WorkspaceFile>,
}

/// Gets what the leased job needs from the control plane; `Err` is why it
/// cannot run.
async fn prepare_job(agent: &Agent, lease: &Lease) -> Result<PreparedJob, String> {
    let job = &lease.job;
    let runner = if job.github.is_some() && job.spec.steps.is_empty() {
        match agent.jobs.runner_config(job.id, lease.fencing_token).await {
            Ok(config) => Some(RunnerJob {
                jit_config: config.encoded_jit_config,
                runner_dir: agent.config.runner_dir.clone(),
            }),
            Err(error) => {
                agent.metrics.lease_errors.inc();
                return Err(format!("no runner config from the control plane: {error}"));
            }
        }
    } else {
        None
    };
    let (workflow, workspace) = match workflow::prepare(agent, lease).await? {
        Some((workflow, workspace)) => (Some(workflow), workspace),
        None => (None, None),
    };
    Ok(PreparedJob {
        runner,
        workflow,
        workspace,
    })
}
