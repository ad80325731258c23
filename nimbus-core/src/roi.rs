//! The return on running CI on your own hosts: a month of job minutes by runner
//! size priced at the hosted per-minute rates (a data file with its source and
//! date, `data/github-hosted-prices.json`, or the operator's own) beside what the
//! hosts cost, how many the minutes need at a target utilisation, and where the
//! two break even. `nimbus roi` is the command; docs/roi-calculator.md the guide.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::Job;
use crate::error::{Error, Result};

/// GitHub's published rates, as shipped.
pub const GITHUB_PRICES: &str = include_str!("../data/github-hosted-prices.json");

/// Minutes in the month the calculator prices (30 days).
pub const MONTH_MINUTES: f64 = 30.0 * 24.0 * 60.0;

/// Hosted per-minute prices by runner size (`linux-4-core`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceList {
    /// Who charges these prices, e.g. `GitHub-hosted runners`.
    pub provider: String,
    /// The currency of the prices, e.g. `USD`.
    pub currency: String,
    /// What one price is for and how minutes are counted; empty when not given.
    #[serde(default)]
    pub unit: String,
    /// Where the prices come from, and when they were read.
    pub source: String,
    /// When the prices were read, e.g. `2026-11-30`.
    pub retrieved: String,
    /// Price per minute by runner size, e.g. `linux-4-core`.
    pub prices: BTreeMap<String, f64>,
}

impl PriceList {
    /// The shipped GitHub price list.
    pub fn github() -> Result<Self> {
        Self::parse(GITHUB_PRICES)
    }

    /// A price list in the shipped file's JSON form; every price finite and >= 0,
    /// every size named with its core count (`…-N-core`).
    pub fn parse(text: &str) -> Result<Self> {
        let list: PriceList =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("price list: {e}")))?;
        if list.prices.is_empty() {
            return Err(Error::invalid("price list: no prices"));
        }
        for (size, price) in &list.prices {
            if !price.is_finite() || *price < 0.0 {
                return Err(Error::invalid(format!("price list: {size} costs {price}")));
            }
            if cores_of(size).is_none() {
                return Err(Error::invalid(format!(
                    "price list: size {size:?} does not end in -N-core"
                )));
            }
        }
        Ok(list)
    }
}

/// The core count a size names (`linux-8-core` → 8).
pub fn cores_of(size: &str) -> Option<u32> {
    let number = size.strip_suffix("-core")?.rsplit('-').next()?;
    number.parse().ok().filter(|cores| *cores > 0)
}

/// The runner size of a job: the first label naming a core count
/// (`nimbus-8-core`, `linux-arm64-4-core`, `16-cores`, `ubuntu-8core`), with
/// `arm64` where a label says so; `default` otherwise.
pub fn size_of(job: &Job, default: &str) -> String {
    let arm = job
        .labels
        .iter()
        .any(|label| label.contains("arm64") || label.contains("aarch64"));
    for label in &job.labels {
        let lower = label.to_ascii_lowercase();
        let trimmed = lower
            .strip_suffix("cores")
            .or_else(|| lower.strip_suffix("core"))
            .map(|rest| rest.trim_end_matches(['-', '_']));
        let Some(rest) = trimmed else { continue };
        let digits: String = rest
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if let Ok(cores) = digits.parse::<u32>() {
            if cores > 0 {
                return if arm {
                    format!("linux-arm64-{cores}-core")
                } else {
                    format!("linux-{cores}-core")
                };
            }
        }
    }
    default.to_string()
}

/// A month of job minutes by runner size.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Workload {
    /// Job minutes per month by runner size (`linux-4-core`, …).
    pub minutes: BTreeMap<String, f64>,
    /// Jobs counted, when the workload came from job history.
    pub jobs: u64,
}

impl Workload {
    /// Minutes of finished jobs, each rounded up to a whole minute as hosted
    /// runners bill them, scaled from `days` of history to a 30-day month.
    pub fn from_jobs<'a>(
        jobs: impl IntoIterator<Item = &'a Job>,
        days: f64,
        default_size: &str,
    ) -> Self {
        let mut workload = Workload::default();
        for job in jobs {
            let (Some(started), Some(finished)) = (job.started_at, job.finished_at) else {
                continue;
            };
            let seconds = (finished - started).as_seconds_f64().max(0.0);
            let minutes = (seconds / 60.0).ceil().max(1.0);
            *workload
                .minutes
                .entry(size_of(job, default_size))
                .or_default() += minutes;
            workload.jobs += 1;
        }
        let scale = 30.0 / days.max(1.0 / 24.0);
        for minutes in workload.minutes.values_mut() {
            *minutes *= scale;
        }
        workload
    }
}

/// What the hosts cost and how busy they may run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hosts {
    /// Cost of one host per month (hardware amortised, power, rack, or the cloud bill).
    pub monthly_cost: f64,
    /// Cores of one host.
    pub cores: u32,
    /// The share of a host's core-minutes jobs may use (0–1): the headroom that
    /// keeps queues short at peaks.
    pub utilisation: f64,
    /// Fixed monthly cost beside the hosts (the control plane's and cache's machines, people's time).
    pub overhead: f64,
}

/// One size's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeLine {
    /// The runner size, e.g. `linux-8-core`.
    pub size: String,
    /// Job minutes per month on this size.
    pub minutes: f64,
    /// The hosted price of one minute on this size.
    pub price_per_minute: f64,
    /// `minutes` × `price_per_minute`.
    pub hosted_cost: f64,
    /// `minutes` × the size's cores: what the minutes need of the hosts.
    pub core_minutes: f64,
}

/// The comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// The currency of every cost.
    pub currency: String,
    /// Where the prices come from.
    pub prices_source: String,
    /// When the prices were read.
    pub prices_retrieved: String,
    /// One line per runner size, by size name.
    pub lines: Vec<SizeLine>,
    /// Job minutes per month over every size.
    pub minutes: f64,
    /// What the minutes cost on hosted runners per month.
    pub hosted_cost: f64,
    /// Hosts the core-minutes need at the target utilisation (at least 1).
    pub hosts_needed: u32,
    /// `hosts_needed` × the host cost, plus the overhead, per month.
    pub self_hosted_cost: f64,
    /// `hosted_cost` − `self_hosted_cost`; negative when hosted is cheaper.
    pub monthly_saving: f64,
    /// Job minutes a month (at this workload's size mix) where both cost the same.
    pub break_even_minutes: Option<f64>,
    /// The target utilisation the hosts were sized for (0–1).
    pub utilisation: f64,
}

/// Prices `workload` both ways. Every size must be in `prices`.
pub fn estimate(workload: &Workload, prices: &PriceList, hosts: &Hosts) -> Result<Estimate> {
    if !(hosts.utilisation > 0.0 && hosts.utilisation <= 1.0) {
        return Err(Error::invalid(
            "utilisation must be above 0 and at most 1 (e.g. 0.6)",
        ));
    }
    if hosts.cores == 0 || !hosts.monthly_cost.is_finite() || hosts.monthly_cost < 0.0 {
        return Err(Error::invalid(
            "a host needs cores and a monthly cost of 0 or more",
        ));
    }
    let mut lines = Vec::new();
    for (size, minutes) in &workload.minutes {
        let Some(price) = prices.prices.get(size) else {
            return Err(Error::invalid(format!(
                "no hosted price for {size}; sizes priced: {}",
                prices.prices.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let cores = cores_of(size).unwrap_or(2);
        lines.push(SizeLine {
            size: size.clone(),
            minutes: *minutes,
            price_per_minute: *price,
            hosted_cost: minutes * price,
            core_minutes: minutes * f64::from(cores),
        });
    }
    let minutes: f64 = lines.iter().map(|l| l.minutes).sum();
    let hosted_cost: f64 = lines.iter().map(|l| l.hosted_cost).sum();
    let core_minutes: f64 = lines.iter().map(|l| l.core_minutes).sum();
    let per_host = f64::from(hosts.cores) * MONTH_MINUTES * hosts.utilisation;
    let hosts_needed = ((core_minutes / per_host).ceil() as u32).max(1);
    let self_hosted_cost = f64::from(hosts_needed) * hosts.monthly_cost + hosts.overhead;
    // Hosted cost grows with minutes; self-hosted in steps of one host. Break-even:
    // the least minutes at which hosted costs at least the hosts those minutes need.
    let break_even_minutes = (minutes > 0.0 && hosted_cost > 0.0).then(|| {
        let hosted_per_minute = hosted_cost / minutes;
        let core_per_minute = core_minutes / minutes;
        let minutes_per_host = per_host / core_per_minute;
        let mut hosts_count = 1u32;
        loop {
            let cost = f64::from(hosts_count) * hosts.monthly_cost + hosts.overhead;
            let at = cost / hosted_per_minute;
            if at <= f64::from(hosts_count) * minutes_per_host || hosts_count > 100_000 {
                break at.max(f64::from(hosts_count - 1) * minutes_per_host);
            }
            hosts_count += 1;
        }
    });
    Ok(Estimate {
        currency: prices.currency.clone(),
        prices_source: prices.source.clone(),
        prices_retrieved: prices.retrieved.clone(),
        lines,
        minutes,
        hosted_cost,
        hosts_needed,
        self_hosted_cost,
        monthly_saving: hosted_cost - self_hosted_cost,
        break_even_minutes,
        utilisation: hosts.utilisation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_prices_parse_and_name_their_cores() {
        let prices = PriceList::github().expect("prices");
        assert_eq!(prices.prices["linux-2-core"], 0.006);
        assert!(prices.source.contains("github/docs"));
        assert_eq!(cores_of("linux-arm64-16-core"), Some(16));
        assert_eq!(cores_of("linux-core"), None);
        assert!(PriceList::parse(
            r#"{"provider":"x","currency":"USD","source":"s","retrieved":"d","prices":{"big":1}}"#
        )
        .is_err());
        assert!(PriceList::parse(r#"{"provider":"x","currency":"USD","source":"s","retrieved":"d","prices":{"a-2-core":-1}}"#).is_err());
    }

    #[test]
    fn break_even_is_where_both_cost_the_same() {
        let prices = PriceList::github().expect("prices");
        let workload = Workload {
            minutes: BTreeMap::from([("linux-2-core".to_string(), 100_000.0)]),
            jobs: 0,
        };
        let hosts = Hosts {
            monthly_cost: 120.0,
            cores: 16,
            utilisation: 0.5,
            overhead: 0.0,
        };
        let estimate = estimate(&workload, &prices, &hosts).expect("estimate");
        assert!((estimate.hosted_cost - 600.0).abs() < 1e-9);
        // 200,000 core-minutes over 16 × 43,200 × 0.5 = 345,600 per host: one host.
        assert_eq!(estimate.hosts_needed, 1);
        assert!((estimate.self_hosted_cost - 120.0).abs() < 1e-9);
        // 120 / 0.006 = 20,000 minutes.
        assert!((estimate.break_even_minutes.expect("break even") - 20_000.0).abs() < 1e-6);
        let bad = Hosts {
            utilisation: 0.0,
            ..hosts
        };
        assert!(super::estimate(&workload, &prices, &bad).is_err());
    }
}
