//! Keeping a lease, and knowing when it is gone without being told.
//!
//! A lease is good until the control plane's `lease_expires_at`; after that the
//! reaper may hand the job to another agent. An agent that can no longer reach the
//! control plane must therefore stop the job's VM *before* that moment on its own,
//! or the job runs twice. [`LeaseClock`] measures the lease on this host's
//! monotonic clock — from the moment the last renewal was asked for, plus the
//! lease's time to live — so it never outlasts the control plane's term, whatever
//! the two wall clocks say: the control plane started its term after the request
//! was sent.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_core::domain::{fit_reason, Completion, Lease};

use super::Agent;

/// Stop this long before the lease's end by our own reckoning: the VM's teardown
/// and the reaper's first look must not overlap.
const SAFETY_MARGIN: Duration = Duration::from_millis(500);

/// Until when this agent may count on a lease.
pub(super) struct LeaseClock {
    ttl: Duration,
    valid_until: Mutex<Instant>,
}

impl LeaseClock {
    /// Starts the clock for a lease that was asked for at `requested`.
    pub(super) fn start(lease: &Lease, requested: Instant) -> Self {
        // The store sets `updated_at` and `lease_expires_at` in one statement, on the
        // control plane's clock: their difference is the exact time to live. A job
        // source that does not (a third-party one) falls back to this host's clock.
        let ttl = lease.expires_at - lease.job.updated_at;
        let ttl = if ttl.is_positive() {
            ttl
        } else {
            lease.expires_at - time::OffsetDateTime::now_utc()
        };
        let ttl = Duration::try_from(ttl).unwrap_or(Duration::from_secs(3));
        Self {
            ttl,
            valid_until: Mutex::new(requested + ttl),
        }
    }

    /// The lease was renewed by a request sent at `requested`.
    fn renewed(&self, requested: Instant) {
        if let Ok(mut until) = self.valid_until.lock() {
            *until = (*until).max(requested + self.ttl);
        }
    }

    /// When to give up: the end of the lease by our reckoning, less the margin.
    fn deadline(&self) -> Instant {
        let until = self
            .valid_until
            .lock()
            .map(|until| *until)
            .unwrap_or_else(|_| Instant::now());
        until.checked_sub(SAFETY_MARGIN).unwrap_or(until)
    }

    /// The lease's time to live.
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Heartbeats at a third of the lease's time to live; resolves once the lease is
/// lost — the control plane answered 409, or no heartbeat got through before the
/// lease ran out by [`LeaseClock`]. The caller then stops the job's VM.
pub(super) async fn heartbeat_until_lost(agent: &Agent, lease: &Lease, clock: &LeaseClock) {
    let interval = (clock.ttl() / 3).max(Duration::from_millis(100));
    let mut next = Instant::now() + interval;
    loop {
        let deadline = clock.deadline();
        tokio::time::sleep_until(next.min(deadline).into()).await;
        if Instant::now() >= clock.deadline() {
            agent.metrics.lease_errors.inc();
            tracing::warn!(
                job_id = lease.job.id,
                ttl_ms = clock.ttl().as_millis() as u64,
                "no heartbeat got through for the lease's whole term; stopping the job's VM before it can be leased again"
            );
            return;
        }
        next = Instant::now() + interval;
        let sent = Instant::now();
        let budget = clock.deadline().saturating_duration_since(sent);
        let heartbeat = agent.jobs.heartbeat(lease.job.id, lease.fencing_token);
        match tokio::time::timeout(budget, heartbeat).await {
            Ok(Ok(_)) => clock.renewed(sent),
            Ok(Err(nimbus_core::Error::Conflict(message))) => {
                tracing::warn!(job_id = lease.job.id, %message, "heartbeat refused");
                return;
            }
            Ok(Err(error)) => {
                // Network trouble: keep trying while the lease lasts.
                agent.metrics.lease_errors.inc();
                tracing::warn!(job_id = lease.job.id, %error, "heartbeat failed; retrying");
                next = next.min(Instant::now() + Duration::from_secs(1));
            }
            Err(_) => {} // the deadline check above ends it
        }
    }
}

/// Reports the job done, retrying (with back-off) while the lease lasts: a
/// completion lost to a network error would otherwise leave the job to expire and
/// run again. The reason is cut to what the control plane keeps.
pub(super) async fn complete(
    agent: &Agent,
    lease: &Lease,
    clock: &LeaseClock,
    mut completion: Completion,
) {
    completion.reason = completion.reason.map(fit_reason);
    let mut pause = Duration::from_millis(250);
    loop {
        match agent.jobs.complete(lease.job.id, &completion).await {
            Ok(_) => return,
            Err(nimbus_core::Error::Conflict(message)) => {
                agent.metrics.lease_errors.inc();
                tracing::warn!(job_id = lease.job.id, %message, "completion refused: the lease is gone");
                return;
            }
            Err(error) if is_retryable(&error) && Instant::now() + pause < clock.deadline() => {
                agent.metrics.lease_errors.inc();
                tracing::warn!(job_id = lease.job.id, %error, "completing the job failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                agent.metrics.lease_errors.inc();
                tracing::warn!(job_id = lease.job.id, %error, "completing the job failed; the lease will expire and the job run again");
                return;
            }
        }
    }
}

/// Errors a retry may cure: the control plane or the way to it, not the request.
fn is_retryable(error: &nimbus_core::Error) -> bool {
    matches!(
        error.kind(),
        nimbus_core::ErrorKind::Unavailable | nimbus_core::ErrorKind::Internal
    )
}
