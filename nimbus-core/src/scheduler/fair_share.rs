//! Weighted fair share across orgs (start-time fair queueing).
//!
//! Every org has a tag, its virtual finish time; a lease goes to the org with
//! work whose next job would start first — `max(its tag, the clock)` — and moves
//! its tag on by `STRIDE / weight`, so an org of weight 3 is served three times for
//! every time an org of weight 1 is, whatever either has queued. The clock is the
//! start time of the last job handed out: an org that was idle, or is new, starts
//! level with the busy ones instead of being owed the time it was away. Ties go
//! to the org with fewer jobs running (which every replica sees in the store, so a
//! replica that has not served anyone yet still does not pile onto the busiest
//! org), then to the org whose oldest queued job is older.
//!
//! Which orgs have queued work is read from the store (one index walk per org,
//! `JobQueue::queued_orgs`) at most every [`REFRESH`], and at once when this
//! replica queued a job of an org it did not know to be busy; a stale read costs
//! one empty claim, after which it is read again. One lease reads it at a time;
//! the others meanwhile go on with the list they have.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::Scheduler;
use crate::domain::{Lease, OrgId};
use crate::error::Result;
use crate::store::{LeaseRequest, QueuedOrg, Store};

/// What one job costs an org of weight 1, in virtual time.
const STRIDE: u64 = 1_000_000;
/// How old the list of busy orgs may be before it is read again.
pub const REFRESH: Duration = Duration::from_millis(100);
/// Orgs tried in turn for one lease before falling back to the oldest job of any
/// org (an agent whose labels match none of the first few orgs' jobs).
const TRIES: usize = 8;
/// Tags kept before those at or behind the clock (worth nothing) are dropped.
const MAX_TAGS: usize = 100_000;

/// The fair-share scheduler; `weights` by org, 1 for any org not listed.
pub struct FairShare {
    weights: HashMap<OrgId, u32>,
    state: Mutex<State>,
    /// A read of the busy orgs is under way: other leases go on with the list they
    /// have instead of all reading it at once.
    refreshing: AtomicBool,
}

/// Clears [`FairShare::refreshing`] when the read ends, however it ends.
struct Refreshing<'a>(&'a AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[derive(Default)]
struct State {
    clock: u64,
    tags: HashMap<OrgId, u64>,
    busy: Vec<QueuedOrg>,
    read_at: Option<Instant>,
    /// Orgs queued through this replica and not in `busy` yet.
    noted: HashSet<OrgId>,
}

impl State {
    fn start(&self, org: OrgId) -> u64 {
        self.tags.get(&org).copied().unwrap_or(0).max(self.clock)
    }
}

impl FairShare {
    /// A fair-share scheduler with `weights` by org (1 to 1000; 1 for orgs not listed).
    pub fn new(weights: HashMap<OrgId, u32>) -> Self {
        FairShare {
            weights,
            state: Mutex::new(State::default()),
            refreshing: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stride(&self, org: OrgId) -> u64 {
        STRIDE / u64::from(self.weights.get(&org).copied().unwrap_or(1).max(1))
    }

    /// Charges `org` one job.
    fn charge(&self, org: OrgId) {
        let stride = self.stride(org);
        let mut state = self.state();
        let start = state.start(org);
        state.tags.insert(org, start + stride);
        state.clock = state.clock.max(start);
        if state.tags.len() > MAX_TAGS {
            let clock = state.clock;
            state.tags.retain(|_, tag| *tag > clock);
        }
    }

    /// The busy orgs in the order they are owed a lease.
    async fn order(&self, store: &dyn Store) -> Result<Vec<OrgId>> {
        let stale = {
            let state = self.state();
            !state.noted.is_empty() || state.read_at.is_none_or(|at| at.elapsed() > REFRESH)
        };
        if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
            let _reading = Refreshing(&self.refreshing);
            let busy = store.queued_orgs().await?;
            let mut state = self.state();
            state.busy = busy;
            state.read_at = Some(Instant::now());
            state.noted.clear();
        }
        let state = self.state();
        let mut busy: Vec<(u64, i64, i64, OrgId)> = state
            .busy
            .iter()
            .map(|org| {
                (
                    state.start(org.org_id),
                    org.running,
                    org.oldest_job,
                    org.org_id,
                )
            })
            .collect();
        busy.sort_unstable();
        Ok(busy.into_iter().map(|(_, _, _, org)| org).collect())
    }
}

#[async_trait]
impl Scheduler for FairShare {
    fn name(&self) -> &'static str {
        "fair"
    }

    async fn lease(
        &self,
        store: &dyn Store,
        request: &LeaseRequest,
        now: OffsetDateTime,
    ) -> Result<Option<Lease>> {
        // An agent dedicated to one org has nothing to share.
        if request.org_id.is_none() {
            for org in self.order(store).await?.into_iter().take(TRIES) {
                let mut one_org = request.clone();
                one_org.org_id = Some(org);
                if let Some(lease) = store.lease(&one_org, now).await? {
                    self.charge(org);
                    return Ok(Some(lease));
                }
                // Its work is gone (another agent, another replica) or not this
                // agent's to run: read the busy orgs afresh next time.
                self.state().read_at = None;
            }
        }
        let lease = store.lease(request, now).await?;
        if let Some(lease) = &lease {
            self.charge(lease.job.org_id);
        }
        Ok(lease)
    }

    fn queued(&self, org_id: OrgId) {
        let mut state = self.state();
        if !state.busy.iter().any(|org| org.org_id == org_id) {
            state.noted.insert(org_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fair(weights: &[(OrgId, u32)]) -> FairShare {
        FairShare::new(weights.iter().copied().collect())
    }

    /// The order the tags alone give (what `order` sorts by), for two busy orgs.
    fn next(share: &FairShare, a: (OrgId, i64), b: (OrgId, i64)) -> OrgId {
        let state = share.state();
        let key = |(org, oldest): (OrgId, i64)| (state.start(org), oldest, org);
        key(a).min(key(b)).2
    }

    #[test]
    fn weights_share_the_leases() {
        let share = fair(&[(1, 3), (2, 1)]);
        let mut served = HashMap::new();
        for _ in 0..400 {
            let org = next(&share, (1, 1), (2, 2));
            share.charge(org);
            *served.entry(org).or_insert(0) += 1;
        }
        assert_eq!((served[&1], served[&2]), (300, 100));
    }

    #[test]
    fn a_newcomer_starts_level_and_is_not_owed_the_past() {
        let share = fair(&[]);
        for _ in 0..1000 {
            share.charge(1);
        }
        // Org 2 arrives: it is served within two leases...
        let first = next(&share, (1, 1), (2, 5000));
        share.charge(first);
        let second = next(&share, (1, 1), (2, 5000));
        assert!(first == 2 || second == 2);
        // ...and then takes turns with org 1, not a thousand leases in a row.
        share.charge(second);
        let mut served = HashMap::new();
        for _ in 0..10 {
            let org = next(&share, (1, 1), (2, 5000));
            share.charge(org);
            *served.entry(org).or_insert(0) += 1;
        }
        assert_eq!((served[&1], served[&2]), (5, 5));
    }
}
