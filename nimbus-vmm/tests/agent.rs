//! The host agent runtime against an in-process control plane: a lease lost while
//! its job runs (the control plane gave the job back to the queue) stops that VM
//! at once, is counted, and the job runs again under its new lease; a job past its
//! timeout is killed and marked timed out; on shutdown running jobs may finish
//! within the drain, and are stopped and marked cancelled past it. With a warm
//! pool: each job is handed a VM booted ahead, never a used one, and the pool is
//! refilled, emptied on drain and shrunk under memory pressure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::client::ControlPlaneClient;
use nimbus_core::control_plane::{self, ControlPlane};
use nimbus_core::domain::Job;
use nimbus_core::store::Store;
use nimbus_core::{store, ControlPlaneConfig, Env, JobSource, Secret};
use nimbus_vmm::agent::{self, AgentConfig, AgentMetrics};
use serde_json::{json, Value};

const SECRET: &str = "agent-test-secret-0123456789";

/// A control plane on a free port, an org, one submitted job and an agent
/// (sandbox driver) working on it.
struct Setup {
    dir: PathBuf,
    store: Arc<dyn Store>,
    admin: ControlPlaneClient,
    /// The org's client (submits more jobs).
    org: ControlPlaneClient,
    job: Job,
    /// What the agent's warm pool reads as the host's available memory, MiB.
    memory: Arc<std::sync::atomic::AtomicU64>,
    metrics: AgentMetrics,
    agent: tokio::task::JoinHandle<nimbus_vmm::Result<()>>,
    /// Sends the agent its shutdown (as SIGTERM would).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.agent.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn setup(name: &str, extra: &[(&str, &str)], job: Value) -> Option<Setup> {
    setup_with(name, extra, job, |jobs| jobs).await
}

/// [`setup`] with the agent's job source wrapped by `wrap`.
async fn setup_with(
    name: &str,
    extra: &[(&str, &str)],
    job: Value,
    wrap: impl FnOnce(Arc<dyn JobSource>) -> Arc<dyn JobSource>,
) -> Option<Setup> {
    let Some(assets) = std::env::var_os("NIMBUS_TEST_ASSETS").map(PathBuf::from) else {
        nimbus_vmm::testsuite::require(None, "built assets (NIMBUS_TEST_ASSETS)");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("nimbus-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut vars = vec![
        ("NIMBUS_DATA_DIR", dir.display().to_string()),
        ("NIMBUS_JWT_SECRET", SECRET.to_string()),
        ("NIMBUS_VMM", "sandbox".to_string()),
        ("NIMBUS_ASSETS_DIR", assets.display().to_string()),
        (
            "NIMBUS_VM_RUNTIME_DIR",
            dir.join("vms").display().to_string(),
        ),
        ("NIMBUS_VM_NETWORK", "none".to_string()),
        ("NIMBUS_VM_SCRATCH_MIB", "0".to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env = Env::from_map(vars);
    let config = ControlPlaneConfig::from_env(&env).expect("config");
    let store = store::open(&config.database_url, 4).await.expect("store");
    let state = ControlPlane::new(config, store.clone()).expect("control plane");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(control_plane::serve(
        state,
        listener,
        std::future::pending(),
    ));

    let keys = JwtKeys::new(&Secret::new(SECRET));
    let token = |role, org| {
        Secret::new(
            keys.mint("test", role, org, Duration::from_secs(3600))
                .expect("token"),
        )
    };
    let admin =
        ControlPlaneClient::new(url.clone(), Some(token(Role::Admin, None))).expect("client");
    admin.upsert_org(1, "acme").await.expect("org");
    let org =
        ControlPlaneClient::new(url.clone(), Some(token(Role::Org, Some(1)))).expect("client");
    let job = org.submit_job(&job).await.expect("submit");

    let mut agent_config = AgentConfig::from_env(&env).expect("agent config");
    let jobs: Arc<dyn JobSource> = wrap(Arc::new(
        ControlPlaneClient::new(url, Some(token(Role::Agent, None))).expect("client"),
    ));
    agent_config.agent_id = "agent-it".into();
    if !extra.iter().any(|(k, _)| *k == "NIMBUS_AGENT_MAX_VMS") {
        agent_config.max_vms = 1;
    }
    let memory = Arc::new(std::sync::atomic::AtomicU64::new(64 * 1024));
    let probe = memory.clone();
    agent_config.memory_available = agent::pool::MemoryProbe::new(move || {
        Some(probe.load(std::sync::atomic::Ordering::SeqCst))
    });
    agent_config.logs_url = None;
    agent_config.lease_wait = Duration::from_secs(1);
    let metrics = AgentMetrics::new().expect("metrics");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(
        agent_config,
        jobs,
        agent::LogDestination::Nowhere,
        metrics.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    Some(Setup {
        dir,
        store,
        admin,
        org,
        job,
        memory,
        metrics,
        agent,
        stop: Some(stop),
    })
}

async fn wait_for(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_vm_and_the_job_runs_again() {
    // Heartbeats every second, so the lost lease is noticed quickly.
    let job = json!({"repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": "echo started; sleep 60"}]});
    let Some(s) = setup("lease", &[("NIMBUS_JOB_LEASE_TTL", "3")], job).await else {
        return;
    };
    let vms = s.dir.join("vms");
    let first = vms.join(format!("job-{}-1", s.job.id));
    let second = vms.join(format!("job-{}-2", s.job.id));
    wait_for("the first VM", || first.exists()).await;

    // The control plane takes the job back (as if the lease had expired).
    let report = s
        .store
        .reap_expired(time::OffsetDateTime::now_utc() + time::Duration::days(1), 5)
        .await
        .expect("reap");
    assert!(format!("{report:?}").contains('1'), "{report:?}");

    wait_for("the first VM to be stopped", || !first.exists()).await;
    assert!(
        s.metrics.lease_errors.get() >= 1,
        "the lost lease is counted"
    );
    wait_for("the job to run again under its new lease", || {
        second.exists()
    })
    .await;
    let now = s.admin.get_job(s.job.id).await.expect("job");
    assert_eq!(now.attempt, 2);
}

/// The control plane as seen through a link that can be cut: while `cut`, every
/// call fails as a network error would.
struct Partitionable {
    inner: Arc<dyn JobSource>,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Partitionable {
    fn check(&self) -> nimbus_core::Result<()> {
        if self.cut.load(std::sync::atomic::Ordering::SeqCst) {
            Err(nimbus_core::Error::Unavailable(
                "network unreachable (the test cut the link)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl JobSource for Partitionable {
    async fn lease(
        &self,
        wait: Duration,
        labels: Option<&[String]>,
    ) -> nimbus_core::Result<Option<nimbus_core::Lease>> {
        if self.check().is_err() {
            tokio::time::sleep(wait).await;
            return self.check().map(|()| None);
        }
        self.inner.lease(wait, labels).await
    }
    async fn heartbeat(
        &self,
        job_id: i64,
        fencing_token: i64,
    ) -> nimbus_core::Result<nimbus_core::store::LeaseRenewal> {
        self.check()?;
        self.inner.heartbeat(job_id, fencing_token).await
    }
    async fn complete(
        &self,
        job_id: i64,
        completion: &nimbus_core::domain::Completion,
    ) -> nimbus_core::Result<Job> {
        self.check()?;
        self.inner.complete(job_id, completion).await
    }
    async fn runner_config(
        &self,
        job_id: i64,
        fencing_token: i64,
    ) -> nimbus_core::Result<nimbus_core::domain::RunnerConfig> {
        self.check()?;
        self.inner.runner_config(job_id, fencing_token).await
    }
    async fn workspace(&self, job_id: i64, fencing_token: i64) -> nimbus_core::Result<Vec<u8>> {
        self.check()?;
        self.inner.workspace(job_id, fencing_token).await
    }
}

/// An agent cut off from the control plane cannot be told its lease is gone: it
/// stops the job's VM on its own before the lease runs out, so the job is never
/// running on it while another agent could lease it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_agent_stops_its_vm_before_the_lease_runs_out() {
    let job = json!({"repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": "echo started; sleep 60"}]});
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let link = cut.clone();
    let Some(s) = setup_with(
        "partition",
        &[("NIMBUS_JOB_LEASE_TTL", "3")],
        job,
        |inner| Arc::new(Partitionable { inner, cut: link }),
    )
    .await
    else {
        return;
    };
    let vm = s.dir.join("vms").join(format!("job-{}-1", s.job.id));
    wait_for("the VM", || vm.exists()).await;
    // Let a heartbeat or two through, then cut the link.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let cut_at = std::time::Instant::now();
    wait_for("the cut-off agent to stop its VM", || !vm.exists()).await;
    let stopped_after = cut_at.elapsed();
    let job = s.admin.get_job(s.job.id).await.expect("job");
    let now = time::OffsetDateTime::now_utc();
    // Still this agent's lease on the control plane: nobody else could have it yet.
    assert_eq!(job.status, nimbus_core::JobStatus::Leased, "{job:?}");
    let expires_at = job.lease_expires_at.expect("lease expiry");
    assert!(
        now < expires_at,
        "the VM outlived the lease: stopped {stopped_after:?} after the cut, lease ended {expires_at}, now {now}"
    );
    assert!(stopped_after <= Duration::from_secs(3), "{stopped_after:?}");
    assert!(s.metrics.lease_errors.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_is_killed_and_marked_timed_out() {
    // Jobs ask for whole minutes; the host's cap makes this one time out in 2 s.
    let job = json!({"repo": "acme/app", "labels": ["nimbus", "timeout:5"], "steps": [{"run": "sleep 120"}]});
    let Some(s) = setup("timeout", &[("NIMBUS_AGENT_MAX_JOB_TIMEOUT", "2")], job).await else {
        return;
    };
    let started = std::time::Instant::now();
    let mut status = String::new();
    for _ in 0..300 {
        let now = s.admin.get_job(s.job.id).await.expect("job");
        status = now.status.to_string();
        if status == "timed_out" {
            assert_eq!(now.exit_code, Some(124));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "timed_out");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "killed at the cap, not after the sleep"
    );
    assert_eq!(s.metrics.job_timeouts.get(), 1);
    assert_eq!(
        s.metrics
            .job_duration
            .with_label_values(&["timed_out"])
            .get_sample_count(),
        1,
        "the job's duration is recorded under its status"
    );
    assert_eq!(
        s.metrics.boot_seconds.get_sample_count(),
        1,
        "one boot measured"
    );
    wait_for("the slot to be free again", || {
        s.metrics.slots_free.get() == 1
    })
    .await;
    let left: Vec<_> = std::fs::read_dir(s.dir.join("vms"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "the VM is destroyed: {left:?}");
}

/// Waits for the job to reach one of the final states; returns it.
async fn final_job(s: &Setup) -> Job {
    for _ in 0..400 {
        let job = s.admin.get_job(s.job.id).await.expect("job");
        if matches!(
            job.status.to_string().as_str(),
            "succeeded" | "failed" | "timed_out" | "cancelled"
        ) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {} did not finish", s.job.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_finishing_within_the_drain_completes_normally() {
    let job =
        json!({"repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": "sleep 1; echo done"}]});
    let Some(mut s) = setup("drain-ok", &[("NIMBUS_AGENT_DRAIN_SECONDS", "30")], job).await else {
        return;
    };
    let vm = s.dir.join("vms").join(format!("job-{}-1", s.job.id));
    wait_for("the VM", || vm.exists()).await;
    let _ = s.stop.take().expect("stop").send(());
    let job = final_job(&s).await;
    assert_eq!(job.status.to_string(), "succeeded");
    let agent = std::mem::replace(&mut s.agent, tokio::spawn(async { Ok(()) }));
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("the agent returns once drained")
        .expect("task")
        .expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_outliving_the_drain_is_stopped_and_marked_cancelled() {
    let job = json!({"repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": "echo started; sleep 120"}]});
    let Some(mut s) = setup("drain-cancel", &[("NIMBUS_AGENT_DRAIN_SECONDS", "1")], job).await
    else {
        return;
    };
    let vm = s.dir.join("vms").join(format!("job-{}-1", s.job.id));
    wait_for("the VM", || vm.exists()).await;
    let started = std::time::Instant::now();
    let _ = s.stop.take().expect("stop").send(());
    let job = final_job(&s).await;
    assert_eq!(job.status.to_string(), "cancelled");
    assert!(
        job.failure_reason
            .as_deref()
            .unwrap_or("")
            .contains("drain"),
        "{:?}",
        job.failure_reason
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped at the deadline"
    );
    let agent = std::mem::replace(&mut s.agent, tokio::spawn(async { Ok(()) }));
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("the agent returns")
        .expect("task")
        .expect("run");
    assert!(!vm.exists(), "the VM is destroyed");
}

/// The VM directories under the agent's runtime directory (not the shared dot-dirs).
fn vm_dirs(s: &Setup) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(s.dir.join("vms"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits for job `id` to end; returns its status.
async fn final_status(s: &Setup, id: i64) -> String {
    for _ in 0..600 {
        let job = s.admin.get_job(id).await.expect("job");
        let status = job.status.to_string();
        if matches!(
            status.as_str(),
            "succeeded" | "failed" | "timed_out" | "cancelled"
        ) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

/// Fails unless it runs in a machine no job used before: it leaves a mark behind.
fn fresh_machine_job() -> Value {
    json!({"repo": "acme/app", "labels": ["nimbus"], "steps": [
        {"run": "test ! -e /tmp/used-by-a-job && touch /tmp/used-by-a-job && echo fresh"}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_pool_hands_each_job_a_fresh_vm_and_boots_its_replacement() {
    // One slot, one warm VM: the job must wait for the pool, never boot cold.
    let Some(s) = setup(
        "warm-handoff",
        &[
            ("NIMBUS_AGENT_WARM_POOL", "1"),
            ("NIMBUS_VMM_START", "warm"),
        ],
        fresh_machine_job(),
    )
    .await
    else {
        return;
    };
    let pool = &s.metrics.warm_pool;
    assert_eq!(final_status(&s, s.job.id).await, "succeeded");
    assert_eq!((pool.hits.get(), pool.misses.get()), (1, 0));
    assert_eq!(pool.age.get_sample_count(), 1, "the VM's age at hand-off");
    assert!(
        s.metrics.boot_seconds.get_sample_count() >= 1,
        "the warm VM's boot is measured"
    );
    assert!(
        vm_dirs(&s).iter().all(|name| name.starts_with("warm-")),
        "no cold job VM: {:?}",
        vm_dirs(&s)
    );

    // The used VM is gone and a new one waits in its place.
    wait_for("the replacement", || {
        pool.size.get() == 1 && vm_dirs(&s).len() == 1
    })
    .await;
    let replacement = vm_dirs(&s);
    let second = s
        .org
        .submit_job(&fresh_machine_job())
        .await
        .expect("submit");
    assert_eq!(
        final_status(&s, second.id).await,
        "succeeded",
        "the second job found no trace of the first"
    );
    assert_eq!((pool.hits.get(), pool.misses.get()), (2, 0));
    wait_for("the next replacement", || {
        pool.size.get() == 1 && vm_dirs(&s).len() == 1
    })
    .await;
    assert_ne!(vm_dirs(&s), replacement, "a used VM never waits again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_vm_gets_its_jobs_timeout() {
    let job = json!({"repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": "sleep 120"}]});
    let Some(s) = setup(
        "warm-timeout",
        &[
            ("NIMBUS_AGENT_WARM_POOL", "1"),
            ("NIMBUS_AGENT_MAX_JOB_TIMEOUT", "2"),
        ],
        job,
    )
    .await
    else {
        return;
    };
    let started = std::time::Instant::now();
    assert_eq!(final_status(&s, s.job.id).await, "timed_out");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(s.metrics.warm_pool.hits.get(), 1);
    assert_eq!(s.metrics.job_timeouts.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_destroys_its_warm_vms_at_once() {
    let Some(mut s) = setup(
        "warm-drain",
        &[
            ("NIMBUS_AGENT_WARM_POOL", "2"),
            ("NIMBUS_AGENT_MAX_VMS", "2"),
            ("NIMBUS_AGENT_DRAIN_SECONDS", "600"),
        ],
        fresh_machine_job(),
    )
    .await
    else {
        return;
    };
    assert_eq!(final_status(&s, s.job.id).await, "succeeded");
    wait_for("a full pool", || {
        s.metrics.warm_pool.size.get() == 2 && vm_dirs(&s).len() == 2
    })
    .await;
    let _ = s.stop.take().expect("stop").send(());
    let agent = std::mem::replace(&mut s.agent, tokio::spawn(async { Ok(()) }));
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("idle warm VMs do not hold up the drain")
        .expect("task")
        .expect("run");
    assert_eq!(vm_dirs(&s), Vec::<String>::new(), "every warm VM destroyed");
    assert_eq!(s.metrics.warm_pool.size.get(), 0);
    assert_eq!(
        s.metrics
            .warm_pool
            .discarded
            .with_label_values(&["drain"])
            .get(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_empties_the_warm_pool_and_jobs_still_run() {
    use std::sync::atomic::Ordering;
    let Some(s) = setup(
        "warm-memory",
        &[
            ("NIMBUS_AGENT_WARM_POOL", "2"),
            ("NIMBUS_AGENT_MAX_VMS", "2"),
            ("NIMBUS_AGENT_WARM_POOL_MIN_FREE_MIB", "1024"),
        ],
        fresh_machine_job(),
    )
    .await
    else {
        return;
    };
    let pool = &s.metrics.warm_pool;
    assert_eq!(final_status(&s, s.job.id).await, "succeeded");
    wait_for("a full pool", || {
        pool.size.get() == 2 && vm_dirs(&s).len() == 2
    })
    .await;

    // The host runs short: the pool gives back its VMs, one per check.
    s.memory.store(512, Ordering::SeqCst);
    wait_for("an empty pool", || {
        pool.size.get() == 0 && vm_dirs(&s).is_empty()
    })
    .await;
    assert_eq!(
        pool.discarded.with_label_values(&["memory_pressure"]).get(),
        2
    );
    // A job still runs, in a VM booted for it.
    let cold = s
        .org
        .submit_job(&fresh_machine_job())
        .await
        .expect("submit");
    assert_eq!(final_status(&s, cold.id).await, "succeeded");
    assert_eq!(pool.misses.get(), 1);
    assert_eq!(pool.size.get(), 0, "no VM booted while memory is short");

    // Between the thresholds (free, but not enough for one more VM): no growth.
    s.memory.store(1024 + 512, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(pool.size.get(), 0);
    // Memory back: the pool refills.
    s.memory.store(64 * 1024, Ordering::SeqCst);
    wait_for("the pool refilled", || pool.size.get() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_start_is_refused_where_the_driver_makes_no_snapshots() {
    // (Under the default `auto` the sandbox boots instead: every other test here.)
    let Some(mut s) = setup(
        "snapshot-refused",
        &[("NIMBUS_VMM_START", "snapshot")],
        fresh_machine_job(),
    )
    .await
    else {
        return;
    };
    let agent = std::mem::replace(&mut s.agent, tokio::spawn(async { Ok(()) }));
    let error = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the agent stops at once")
        .expect("task")
        .expect_err("no snapshots under the sandbox");
    assert!(error.to_string().contains("snapshot"), "{error}");
}
