//! The shared test suite every [`VmmDriver`] must pass, for this crate's drivers
//! and for embedders' own. A test file provides a [`Harness`] and expands
//! [`vmm_driver_test_suite!`]:
//!
//! ```ignore
//! async fn harness() -> Option<Harness> { … }
//! nimbus_vmm::vmm_driver_test_suite!(harness);
//! ```
//!
//! A harness of `None` means the driver cannot run here; the suite then skips,
//! unless `CI=true`, where that is a failure (a missing service never passes CI).

pub mod standins;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{GuestJob, GuestStep, StepCondition, StepOutcome, Stream};
use crate::{JobEvent, Outcome, VmSpec, VmmDriver};

/// Makes the spec of a VM with this id and job timeout.
pub type SpecFactory = Box<dyn Fn(&str, Duration) -> VmSpec + Send + Sync>;

/// What the suite needs: a driver and specs for it.
pub struct Harness {
    /// The driver under test.
    pub driver: Arc<dyn VmmDriver>,
    /// Where the driver creates VM directories.
    pub runtime_dir: PathBuf,
    /// A spec for a VM with this id and job timeout.
    pub spec: SpecFactory,
    /// Held for the case's whole run and dropped after it (e.g. a semaphore
    /// permit that keeps emulated VMs from booting concurrently).
    pub hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// `None` → skip, or panic under CI=true.
pub fn require(harness: Option<Harness>, what: &str) -> Option<Harness> {
    nimbus_core::testsuite::require(harness, what)
}

fn unique(prefix: &str) -> String {
    crate::launch::unique_id(prefix)
}

fn recorded_pid(runtime_dir: &Path, id: &str) -> Option<i32> {
    std::fs::read_to_string(runtime_dir.join(id).join("vm.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn assert_gone(runtime_dir: &Path, id: &str, pid: Option<i32>) {
    assert!(
        !runtime_dir.join(id).exists(),
        "the VM's directory {} must be removed",
        runtime_dir.join(id).display()
    );
    if let Some(pid) = pid {
        // The process must be gone (not even a zombie: it was reaped).
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || !status.contains(&format!("PPid:\t{}", std::process::id())),
            "the VM process {pid} must be gone"
        );
    }
}

#[derive(Default)]
struct Collected {
    lines: Vec<(u64, usize, Stream, String)>,
    finished: Vec<StepOutcome>,
}

type Shared = Arc<std::sync::Mutex<Collected>>;

/// An event callback and what it collected.
fn collector() -> (Shared, impl FnMut(JobEvent) + Send) {
    let shared = Shared::default();
    let sink = shared.clone();
    let on_event = move |event: JobEvent| {
        if let Ok(mut c) = sink.lock() {
            match event {
                JobEvent::Output(l) => c.lines.push((l.seq, l.step, l.stream, l.line)),
                JobEvent::StepFinished { outcome, .. } => c.finished.push(outcome),
                JobEvent::StepStarted { .. } | JobEvent::WorkflowResult(_) => {}
            }
        }
    };
    (shared, on_event)
}

fn take(shared: &Shared) -> Collected {
    std::mem::take(&mut *shared.lock().expect("collector lock"))
}

/// echo, `uname -r`, a failing step, a skipped one and an `always()` one; output
/// lines in order with sequence numbers; the VM and its files gone afterwards.
pub async fn runs_steps_and_cleans_up(h: Harness) {
    let id = unique("suite-steps");
    let spec = (h.spec)(&id, Duration::from_secs(120));
    let mut job = GuestJob::from_commands(&[
        "echo hello from nimbus",
        "uname -r",
        // Output that looks like a protocol frame is still just output.
        "printf 'NMB\\001\\000\\000\\000\\005{\"type\":\"finished\",\"exit_code\":0}\\n'; echo to-stderr >&2; seq 1 500",
        "echo failing; exit 3",
        "echo must-not-run",
    ]);
    job.steps.push(GuestStep {
        condition: StepCondition::Always,
        ..GuestStep::shell("echo cleanup runs")
    });
    let mut vm = h.driver.prepare(&spec).await.expect("prepare");
    let info = vm.boot().await.expect("boot");
    let pid = recorded_pid(&h.runtime_dir, &id);
    assert!(pid.is_some(), "the VM process is recorded while it runs");
    let (shared, mut on_event) = collector();
    let report = vm.run(&job, &mut on_event).await.expect("run");
    vm.destroy().await.expect("destroy");
    vm.destroy().await.expect("destroy is idempotent");
    assert_gone(&h.runtime_dir, &id, pid);

    let collected = take(&shared);
    assert_eq!(report.outcome, Outcome::Exited { code: 3 }, "{report:?}");
    assert_eq!(
        collected.finished,
        vec![
            StepOutcome::Exited(0),
            StepOutcome::Exited(0),
            StepOutcome::Exited(0),
            StepOutcome::Exited(3),
            StepOutcome::Skipped,
            StepOutcome::Exited(0),
        ]
    );
    let text: Vec<&str> = collected
        .lines
        .iter()
        .map(|(_, _, _, l)| l.as_str())
        .collect();
    assert_eq!(text[0], "hello from nimbus");
    assert_eq!(
        text[1], info.kernel,
        "uname -r in the guest is the guest's kernel"
    );
    assert!(text.contains(&"to-stderr"));
    assert!(collected
        .lines
        .iter()
        .any(|(_, step, stream, line)| *step == 2
            && *stream == Stream::Stderr
            && line == "to-stderr"));
    assert!(
        text.iter().any(|l| l.starts_with("NMB")),
        "frame-like output arrives as a line"
    );
    assert!(text.contains(&"failing") && text.contains(&"cleanup runs"));
    assert!(!text.contains(&"must-not-run"));
    let numbers: Vec<&str> = collected
        .lines
        .iter()
        .filter(|(_, step, stream, _)| *step == 2 && *stream == Stream::Stdout)
        .map(|(_, _, _, l)| l.as_str())
        .skip(1)
        .collect();
    assert_eq!(numbers.len(), 500);
    assert_eq!(numbers.last(), Some(&"500"));
    let seqs: Vec<u64> = collected.lines.iter().map(|(seq, ..)| *seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq numbers are 1..n without gaps"
    );
    assert_eq!(report.output_lines, seqs.len() as u64);
}

/// A job that outlives its timeout is killed, its VM destroyed, outcome TimedOut.
pub async fn times_out_and_destroys_the_vm(h: Harness) {
    let id = unique("suite-timeout");
    let spec = (h.spec)(&id, Duration::from_secs(3));
    let job = GuestJob::from_commands(&["echo started", "sleep 600"]);
    let mut vm = h.driver.prepare(&spec).await.expect("prepare");
    vm.boot().await.expect("boot");
    let pid = recorded_pid(&h.runtime_dir, &id);
    let (shared, mut on_event) = collector();
    let started = Instant::now();
    let report = vm.run(&job, &mut on_event).await.expect("run");
    let took = started.elapsed();
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "took {took:?}"
    );
    // run() already destroyed the VM; destroy stays safe.
    assert_gone(&h.runtime_dir, &id, pid);
    vm.destroy().await.expect("destroy after a timeout");
    let collected = take(&shared);
    assert_eq!(
        collected.lines.first().map(|l| l.3.as_str()),
        Some("started")
    );
}

/// Nothing a job writes survives into the next VM (rootfs and scratch are private).
pub async fn vms_share_nothing(h: Harness) {
    let write = GuestJob::from_commands(&[
        "touch /etc/nimbus-marker 2>/dev/null || true; echo data > /scratch/marker; test -f /scratch/marker",
    ]);
    let check = GuestJob::from_commands(&[
        "test ! -e /etc/nimbus-marker && test ! -e /scratch/marker && echo clean",
    ]);
    for (job, expect_line) in [(write, None), (check, Some("clean"))] {
        let id = unique("suite-private");
        let spec = (h.spec)(&id, Duration::from_secs(120));
        let (shared, mut on_event) = collector();
        let (_, report) =
            crate::launch::run_once(&h.driver, &spec, &job, &mut |_| {}, &mut on_event)
                .await
                .expect("runs");
        let collected = take(&shared);
        assert_eq!(
            report.outcome,
            Outcome::Exited { code: 0 },
            "{:?}",
            collected.lines
        );
        if let Some(line) = expect_line {
            assert_eq!(collected.lines.last().map(|l| l.3.as_str()), Some(line));
        }
        assert!(!h.runtime_dir.join(&id).exists());
    }
}

/// Destroy before boot (or twice) is fine and leaves nothing behind.
pub async fn destroy_is_safe_at_any_point(h: Harness) {
    let id = unique("suite-destroy");
    let spec = (h.spec)(&id, Duration::from_secs(60));
    let mut vm = h.driver.prepare(&spec).await.expect("prepare");
    assert!(h.runtime_dir.join(&id).exists());
    vm.destroy().await.expect("destroy before boot");
    vm.destroy().await.expect("destroy again");
    assert!(!h.runtime_dir.join(&id).exists());
    assert!(vm.boot().await.is_err(), "a destroyed VM does not boot");
    // Dropping a prepared VM without destroy still removes its files.
    let id = unique("suite-drop");
    let vm = h
        .driver
        .prepare(&(h.spec)(&id, Duration::from_secs(60)))
        .await
        .expect("prepare");
    drop(vm);
    assert!(!h.runtime_dir.join(&id).exists());
}

/// Expands the suite into `#[tokio::test]`s for the harness returned by `$harness`
/// (an `async fn() -> Option<Harness>`).
#[macro_export]
macro_rules! vmm_driver_test_suite {
    ($harness:path) => {
        $crate::vmm_driver_test_suite!(@case $harness, runs_steps_and_cleans_up);
        $crate::vmm_driver_test_suite!(@case $harness, times_out_and_destroys_the_vm);
        $crate::vmm_driver_test_suite!(@case $harness, vms_share_nothing);
        $crate::vmm_driver_test_suite!(@case $harness, destroy_is_safe_at_any_point);
    };
    (@case $harness:path, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            if let Some(harness) = $harness().await {
                $crate::testsuite::$case(harness).await;
            }
        }
    };
}
