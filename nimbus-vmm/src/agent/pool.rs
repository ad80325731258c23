//! The warm pool: VMs booted ahead of their jobs, so that a lease is handed a
//! machine whose guest agent already said hello and no boot lies on the job's path.
//!
//! - A warm VM is booted from the spec a cold job VM gets (the agent's sizes,
//!   attested assets, network and cache relay), under an id of its own (`warm-…`).
//! - It runs one job and is destroyed with it, like every job VM; the pool boots a
//!   replacement in the background. Nothing a job does reaches a later job.
//! - Warm VMs count in the agent's slots (`NIMBUS_AGENT_MAX_VMS`): warm and running
//!   VMs together never exceed it, and slots the pool is short of go to the pool
//!   before the agent boots cold VMs in them.
//! - Under memory pressure (less than `min_free_mib` available) the pool gives
//!   back one VM per check (a second) and boots none; it boots another only while the host
//!   would keep `min_free_mib` with that VM's memory in use.
//! - A VM older than `max_age` is replaced; on drain the pool closes and destroys
//!   its VMs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::{GuestInfo, Vm, VmSpec, VmmDriver};

/// How big the pool is and when it shrinks.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Warm VMs to keep (`NIMBUS_AGENT_WARM_POOL`); 0 turns the pool off.
    pub target: usize,
    /// A warm VM older than this is replaced (`NIMBUS_AGENT_WARM_POOL_MAX_AGE`).
    pub max_age: Duration,
    /// Memory the host keeps available, MiB (`NIMBUS_AGENT_WARM_POOL_MIN_FREE_MIB`).
    pub min_free_mib: u64,
    /// Memory of one VM, MiB (what booting another may take).
    pub vm_memory_mib: u64,
    /// How often memory and ages are checked when nothing else wakes the pool.
    pub check_every: Duration,
}

/// Reads the host's available memory in MiB (`None`: unknown, never pressure).
#[derive(Clone)]
pub struct MemoryProbe(Arc<dyn Fn() -> Option<u64> + Send + Sync>);

impl MemoryProbe {
    /// A probe reading `read` (tests give a fake host).
    pub fn new(read: impl Fn() -> Option<u64> + Send + Sync + 'static) -> Self {
        MemoryProbe(Arc::new(read))
    }

    /// The host's `MemAvailable`.
    pub fn host() -> Self {
        MemoryProbe::new(host_memory_available_mib)
    }

    /// Available memory now, MiB.
    pub fn available_mib(&self) -> Option<u64> {
        (self.0)()
    }
}

impl std::fmt::Debug for MemoryProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryProbe")
    }
}

/// `MemAvailable` of `/proc/meminfo`, in MiB.
pub fn host_memory_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Makes the spec of a warm VM with this id.
pub type SpecFactory = Box<dyn Fn(String) -> VmSpec + Send + Sync>;

/// The pool's metrics (part of the host agent's).
#[derive(Clone)]
pub struct PoolMetrics {
    /// Warm VMs waiting for a job (`nimbus_host_agent_warm_pool_size`).
    pub size: IntGauge,
    /// Jobs handed a warm VM (`nimbus_host_agent_warm_pool_hits_total`).
    pub hits: IntCounter,
    /// Jobs that booted a cold VM while the pool was on (`…_misses_total`).
    pub misses: IntCounter,
    /// Age of a warm VM when it is handed its job (`…_age_seconds`).
    pub age: Histogram,
    /// Warm VMs destroyed without a job, by reason (`…_discarded_total{reason}`).
    pub discarded: IntCounterVec,
    /// Seconds from a boot call to the guest's hello (shared with cold boots).
    pub boot_seconds: Histogram,
}

impl PoolMetrics {
    /// Creates the pool's metrics in `registry`; boots are observed in `boot_seconds`.
    pub fn register(registry: &Registry, boot_seconds: Histogram) -> prometheus::Result<Self> {
        let size = IntGauge::new(
            "nimbus_host_agent_warm_pool_size",
            "Warm VMs booted ahead and waiting for a job.",
        )?;
        let hits = IntCounter::new(
            "nimbus_host_agent_warm_pool_hits_total",
            "Jobs handed a warm VM.",
        )?;
        let misses = IntCounter::new(
            "nimbus_host_agent_warm_pool_misses_total",
            "Jobs that booted a cold VM while the warm pool was on.",
        )?;
        let age = Histogram::with_opts(
            HistogramOpts::new(
                "nimbus_host_agent_warm_pool_age_seconds",
                "Age of a warm VM when it was handed its job.",
            )
            .buckets(vec![
                0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
            ]),
        )?;
        let discarded = IntCounterVec::new(
            Opts::new(
                "nimbus_host_agent_warm_pool_discarded_total",
                "Warm VMs destroyed without running a job, by reason (memory_pressure, max_age, drain).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(size.clone()))?;
        registry.register(Box::new(hits.clone()))?;
        registry.register(Box::new(misses.clone()))?;
        registry.register(Box::new(age.clone()))?;
        registry.register(Box::new(discarded.clone()))?;
        Ok(PoolMetrics {
            size,
            hits,
            misses,
            age,
            discarded,
            boot_seconds,
        })
    }
}

/// A VM of the pool: booted, its guest waiting for a job, holding one slot.
pub struct WarmVm {
    vm: Box<dyn Vm>,
    info: GuestInfo,
    booted_at: Instant,
    slot: OwnedSemaphorePermit,
}

impl WarmVm {
    /// The VM's id (`warm-…`).
    pub fn id(&self) -> &str {
        self.vm.id()
    }

    /// Time since its guest said hello.
    pub fn age(&self) -> Duration {
        self.booted_at.elapsed()
    }
}

/// What the agent may run a job with: a warm VM, or a free slot to boot one in.
pub enum Capacity {
    /// A warm VM, reserved for the next lease.
    Warm(WarmVm),
    /// A slot for a VM booted when the lease arrives.
    Cold(OwnedSemaphorePermit),
}

/// A VM handed to a job by [`WarmPool::hand_off`]: the caller runs and destroys it,
/// and frees `slot` after.
pub struct HandedOff {
    /// The VM, booted.
    pub vm: Box<dyn Vm>,
    /// What its guest said at boot.
    pub info: GuestInfo,
    /// Its slot in the agent.
    pub slot: OwnedSemaphorePermit,
}

#[derive(Default)]
struct State {
    ready: VecDeque<WarmVm>,
    /// Taken by the lease loop for the lease it waits for.
    reserved: usize,
    booting: usize,
    closed: bool,
    /// Whether the pool may boot VMs now (memory allows it, no boot failure backoff).
    growing: bool,
    /// Whether memory is short: a reserved VM given back is destroyed, not kept.
    shrinking: bool,
}

/// VMs booted ahead for the host agent's next jobs.
pub struct WarmPool {
    driver: Arc<dyn VmmDriver>,
    spec: SpecFactory,
    settings: PoolSettings,
    slots: Arc<Semaphore>,
    memory: MemoryProbe,
    metrics: PoolMetrics,
    state: Mutex<State>,
    changed: Notify,
}

impl WarmPool {
    /// A pool of `settings.target` VMs of `driver` made from `spec`, in the agent's
    /// `slots`. Nothing boots until [`WarmPool::start`].
    pub fn new(
        driver: Arc<dyn VmmDriver>,
        spec: SpecFactory,
        settings: PoolSettings,
        slots: Arc<Semaphore>,
        memory: MemoryProbe,
        metrics: PoolMetrics,
    ) -> Arc<Self> {
        Arc::new(WarmPool {
            driver,
            spec,
            settings,
            slots,
            memory,
            metrics,
            state: Mutex::new(State {
                growing: true,
                ..State::default()
            }),
            changed: Notify::new(),
        })
    }

    /// Whether the pool is on (a target above 0).
    pub fn enabled(&self) -> bool {
        self.settings.target > 0
    }

    /// Starts keeping the pool full, in the background, until [`WarmPool::close`]
    /// or until the returned handle is dropped (an aborted agent boots no more VMs).
    pub fn start(self: &Arc<Self>) -> Replenisher {
        let pool = self.clone();
        Replenisher(tokio::spawn(async move {
            if pool.enabled() {
                pool.replenish().await;
            }
        }))
    }

    /// Warm VMs waiting for a job, including one reserved for a lease.
    pub fn idle(&self) -> usize {
        let state = self.lock();
        state.ready.len() + state.reserved
    }

    /// Waits until a job could run: a warm VM, or else a slot the pool does not need
    /// to fill itself. `None` once the pool is closed.
    pub async fn capacity(&self) -> Option<Capacity> {
        if !self.enabled() {
            return self
                .slots
                .clone()
                .acquire_owned()
                .await
                .ok()
                .map(Capacity::Cold);
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deficit = {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                if let Some(vm) = state.ready.pop_front() {
                    state.reserved += 1;
                    return Some(Capacity::Warm(vm));
                }
                deficit(&state, self.settings.target)
            };
            if self.slots.available_permits() > deficit {
                if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                    return Some(Capacity::Cold(slot));
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(self.settings.check_every) => {}
            }
        }
    }

    /// A cold slot becomes a warm VM if one got ready while the lease was awaited
    /// (the slot is freed for the pool's replacement).
    pub fn upgrade(&self, capacity: Capacity) -> Capacity {
        match capacity {
            Capacity::Cold(slot) => {
                let mut state = self.lock();
                match state.ready.pop_front() {
                    Some(vm) => {
                        state.reserved += 1;
                        drop(state);
                        drop(slot);
                        self.changed.notify_waiters();
                        Capacity::Warm(vm)
                    }
                    None => Capacity::Cold(slot),
                }
            }
            warm => warm,
        }
    }

    /// Gives a reserved VM to its job: counted as a hit; the pool boots a replacement.
    pub fn hand_off(&self, vm: WarmVm) -> HandedOff {
        {
            let mut state = self.lock();
            state.reserved = state.reserved.saturating_sub(1);
            self.publish_size(&state);
        }
        self.metrics.hits.inc();
        self.metrics.age.observe(vm.age().as_secs_f64());
        self.changed.notify_waiters();
        HandedOff {
            vm: vm.vm,
            info: vm.info,
            slot: vm.slot,
        }
    }

    /// Counts a job that boots a cold VM while the pool is on.
    pub fn miss(&self) {
        if self.enabled() {
            self.metrics.misses.inc();
        }
    }

    /// Returns what [`WarmPool::capacity`] gave when no job came of it.
    pub async fn give_back(&self, capacity: Capacity) {
        match capacity {
            Capacity::Cold(slot) => drop(slot),
            Capacity::Warm(vm) => {
                let discard = {
                    let mut state = self.lock();
                    state.reserved = state.reserved.saturating_sub(1);
                    if state.closed {
                        Some((vm, "drain"))
                    } else if state.shrinking {
                        Some((vm, "memory_pressure"))
                    } else if vm.age() >= self.settings.max_age {
                        Some((vm, "max_age"))
                    } else {
                        // The oldest again: it was taken from the front.
                        state.ready.push_front(vm);
                        None
                    }
                };
                if let Some((vm, reason)) = discard {
                    self.discard(vm, reason).await;
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Says a job's slot was freed (the pool may boot in it).
    pub fn slot_freed(&self) {
        self.changed.notify_waiters();
    }

    /// Stops booting and destroys the waiting VMs (drain); a VM still booting is
    /// destroyed when its boot ends, one reserved when it is given back.
    pub async fn close(&self) {
        let ready: Vec<WarmVm> = {
            let mut state = self.lock();
            state.closed = true;
            state.growing = false;
            state.ready.drain(..).collect()
        };
        self.changed.notify_waiters();
        for vm in ready {
            self.discard(vm, "drain").await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (plain counters).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_size(&self, state: &State) {
        self.metrics
            .size
            .set((state.ready.len() + state.reserved) as i64);
    }

    async fn discard(&self, mut vm: WarmVm, reason: &'static str) {
        tracing::info!(vm = %vm.id(), reason, "warm pool: destroying an unused VM");
        self.metrics.discarded.with_label_values(&[reason]).inc();
        if let Err(error) = vm.vm.destroy().await {
            tracing::warn!(vm = %vm.id(), %error, "warm pool: destroying a VM failed");
        }
        {
            let state = self.lock();
            self.publish_size(&state);
        }
        drop(vm.slot);
        self.changed.notify_waiters();
    }

    /// Keeps the pool at its target until it is closed.
    async fn replenish(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().closed {
                return;
            }
            let available = self.memory.available_mib();
            let pressure = available.is_some_and(|mib| mib < self.settings.min_free_mib);
            let room = available
                .is_none_or(|mib| mib >= self.settings.min_free_mib + self.settings.vm_memory_mib);
            let oldest = {
                let mut state = self.lock();
                state.growing = room && !state.closed;
                state.shrinking = pressure;
                let expired = state
                    .ready
                    .front()
                    .is_some_and(|vm| vm.age() >= self.settings.max_age);
                if pressure {
                    state.ready.pop_front().map(|vm| (vm, "memory_pressure"))
                } else if expired {
                    state.ready.pop_front().map(|vm| (vm, "max_age"))
                } else {
                    None
                }
            };
            if let Some((vm, reason)) = oldest {
                if reason == "memory_pressure" {
                    tracing::warn!(
                        available_mib = available.unwrap_or(0),
                        min_free_mib = self.settings.min_free_mib,
                        "warm pool: memory is short, giving back a warm VM"
                    );
                }
                self.discard(vm, reason).await;
                if reason == "max_age" {
                    continue;
                }
                // One per check: the host gets a moment to reclaim the memory.
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.check_every) => {}
                    _ = self.wait_closed() => return,
                }
                continue;
            }
            let deficit = deficit(&self.lock(), self.settings.target);
            if deficit > 0 && room {
                if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                    match self.boot_one(slot).await {
                        Ok(()) => failures = 0,
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            let backoff = Duration::from_secs(1 << failures.min(5));
                            tracing::warn!(%error, retry_in_secs = backoff.as_secs(), "warm pool: booting a VM failed");
                            // Meanwhile jobs may take every slot (cold).
                            self.lock().growing = false;
                            self.changed.notify_waiters();
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = self.wait_closed() => return,
                            }
                        }
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(self.settings.check_every) => {}
            }
        }
    }

    async fn wait_closed(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().closed {
                return;
            }
            notified.await;
        }
    }

    async fn boot_one(&self, slot: OwnedSemaphorePermit) -> crate::Result<()> {
        self.lock().booting += 1;
        let spec = (self.spec)(crate::launch::unique_id("warm"));
        let started = Instant::now();
        let booted = async {
            let mut vm = self.driver.prepare(&spec).await?;
            let booted = async {
                let info = vm.boot().await?;
                // Off the job's path: its first command then starts sooner.
                vm.prime().await?;
                Ok::<_, crate::Error>(info)
            };
            match booted.await {
                Ok(info) => Ok((vm, info)),
                Err(error) => {
                    let _ = vm.destroy().await;
                    Err(error)
                }
            }
        }
        .await;
        self.lock().booting -= 1;
        let (vm, info) = booted?;
        self.metrics
            .boot_seconds
            .observe(started.elapsed().as_secs_f64());
        let warm = WarmVm {
            vm,
            info,
            booted_at: Instant::now(),
            slot,
        };
        tracing::debug!(vm = %warm.id(), boot_ms = started.elapsed().as_millis() as u64, "warm pool: VM ready");
        let closed = {
            let mut state = self.lock();
            if !state.closed {
                state.ready.push_back(warm);
                self.publish_size(&state);
                None
            } else {
                Some(warm)
            }
        };
        match closed {
            Some(warm) => self.discard(warm, "drain").await,
            None => self.changed.notify_waiters(),
        }
        Ok(())
    }
}

/// The pool's background task; dropping it stops the task.
pub struct Replenisher(tokio::task::JoinHandle<()>);

impl Replenisher {
    /// Waits for the task to end (after [`WarmPool::close`]).
    pub async fn finished(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for Replenisher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// VMs the pool still has to boot to reach `target` (0 while it may not grow).
fn deficit(state: &State, target: usize) -> usize {
    if !state.growing || state.closed {
        return 0;
    }
    target.saturating_sub(state.ready.len() + state.reserved + state.booting)
}
