//! Which queued job an asking agent gets: the [`Scheduler`] seam of the control
//! plane's lease.
//!
//! - [`Fifo`]: the oldest job the agent's labels cover, whatever its org — one org
//!   with 10,000 queued jobs makes every other org wait behind them;
//! - [`FairShare`] (the default): weighted fair queueing over the orgs that have
//!   queued work — each org gets leases in proportion to its weight
//!   (`NIMBUS_SCHEDULER_WEIGHTS`, 1 unless set), an org that was idle starts level
//!   with the others instead of catching up, and within an org the oldest job goes
//!   first.
//!
//! The store keeps claiming safe (no job handed out twice, on several replicas:
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL); the fair share's bookkeeping lives in
//! each replica's memory. Every replica is fair on its own, so their sum is fair
//! too, and a restart only forgets which org was served last.

mod fair_share;
mod fifo;

pub use fair_share::FairShare;
pub use fifo::Fifo;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::config::Env;
use crate::domain::{Lease, OrgId};
use crate::error::{Error, Result};
use crate::store::{LeaseRequest, Store};

/// Picks and claims the job an agent leases next.
#[async_trait]
pub trait Scheduler: Send + Sync {
    /// `fifo`, `fair`, or an embedder's own name.
    fn name(&self) -> &'static str;

    /// Claims the job `request`'s agent should run next (through the store's
    /// `lease`, which keeps claims exclusive), or `None` when nothing it may run is
    /// queued.
    async fn lease(
        &self,
        store: &dyn Store,
        request: &LeaseRequest,
        now: OffsetDateTime,
    ) -> Result<Option<Lease>>;

    /// A job of `org_id` was queued (through this replica): a scheduler that
    /// caches which orgs have work may take note at once.
    fn queued(&self, _org_id: OrgId) {}
}

/// `NIMBUS_SCHEDULER` and `NIMBUS_SCHEDULER_WEIGHTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerConfig {
    /// `NIMBUS_SCHEDULER=fifo`: the oldest job of any org.
    Fifo,
    /// `NIMBUS_SCHEDULER=fair` (the default): weighted fair share across orgs.
    FairShare {
        /// Weight by org (`NIMBUS_SCHEDULER_WEIGHTS`); 1 for orgs not listed.
        weights: HashMap<OrgId, u32>,
    },
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig::FairShare {
            weights: HashMap::new(),
        }
    }
}

impl SchedulerConfig {
    /// Reads `NIMBUS_SCHEDULER` (`fair` or `fifo`, default `fair`) and
    /// `NIMBUS_SCHEDULER_WEIGHTS`.
    pub fn from_env(env: &Env) -> Result<Self> {
        let config_error = |variable: &str, message: String| Error::Config {
            variable: variable.into(),
            message,
        };
        let weights = match env.get("NIMBUS_SCHEDULER_WEIGHTS") {
            None => HashMap::new(),
            Some(text) => parse_weights(text)
                .map_err(|message| config_error("NIMBUS_SCHEDULER_WEIGHTS", message))?,
        };
        match env.get("NIMBUS_SCHEDULER").unwrap_or("fair") {
            "fair" => Ok(SchedulerConfig::FairShare { weights }),
            "fifo" => Ok(SchedulerConfig::Fifo),
            other => Err(config_error(
                "NIMBUS_SCHEDULER",
                format!("invalid value {other:?}: expected fair or fifo"),
            )),
        }
    }

    /// The scheduler this configuration names.
    pub fn build(&self) -> Arc<dyn Scheduler> {
        match self {
            SchedulerConfig::Fifo => Arc::new(Fifo),
            SchedulerConfig::FairShare { weights } => Arc::new(FairShare::new(weights.clone())),
        }
    }
}

/// `ORG=WEIGHT` pairs, comma-separated (`1=3,2=1`); weights 1 to 1000.
pub fn parse_weights(text: &str) -> std::result::Result<HashMap<OrgId, u32>, String> {
    let mut weights = HashMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (org, weight) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not ORG=WEIGHT"))?;
        let org: OrgId = org
            .trim()
            .parse()
            .map_err(|_| format!("{pair:?}: {org:?} is not an org id"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .ok()
            .filter(|w| (1..=1000).contains(w))
            .ok_or_else(|| format!("{pair:?}: the weight must be 1 to 1000"))?;
        weights.insert(org, weight);
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse() {
        let weights = parse_weights("1=3, 2=1,").expect("weights");
        assert_eq!(weights.get(&1), Some(&3));
        assert_eq!(weights.get(&2), Some(&1));
        for bad in ["1", "x=1", "1=0", "1=1001", "1=y"] {
            assert!(parse_weights(bad).is_err(), "{bad}");
        }
        let env = Env::from_map([("NIMBUS_SCHEDULER", "fifo")]);
        assert_eq!(
            SchedulerConfig::from_env(&env).expect("config"),
            SchedulerConfig::Fifo
        );
        let env = Env::from_map([("NIMBUS_SCHEDULER", "lottery")]);
        assert!(SchedulerConfig::from_env(&env).is_err());
    }
}
