//! Fleet analytics: what the jobs of each org did — counts by status, success
//! rate, queue wait and run time percentiles — overall and per value of a metadata
//! key. The store answers [`StatsQuery`] with [`GroupStats`] (from its rollups and
//! the jobs not yet rolled up, `store/sql/analytics.rs`); the control plane turns
//! them into the reports of `GET /api/observability/orgs` and the `/api/jobs/…`
//! analytics routes (`control_plane/analytics.rs`). docs/analytics.md has the
//! definitions every number follows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{JobStatus, OrgId};
use crate::error::{Error, Result};

/// One hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// One day in milliseconds; rollups are kept per UTC day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Rounds a duration down to two significant digits (exact below 100 ms): the
/// resolution durations are kept at, so a day of an org's jobs rolls up into a
/// few hundred buckets whatever their number. The error is under 10 %, and 0 for
/// round figures (1.2 s, 45 s, 3 min).
pub fn quantize(ms: u64) -> u64 {
    let mut scale = 1;
    while ms / scale >= 100 {
        scale *= 10;
    }
    ms / scale * scale
}

/// How many jobs took each (quantized) duration, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram(BTreeMap<u64, u64>);

impl Histogram {
    /// Counts one duration; negative ones (clocks of two replicas apart) count as 0.
    pub fn record(&mut self, ms: i64) {
        self.record_n(ms, 1);
    }

    /// Counts `jobs` jobs of the same duration at once (a rollup's bucket); 0 adds nothing.
    pub fn record_n(&mut self, ms: i64, jobs: u64) {
        if jobs > 0 {
            *self
                .0
                .entry(quantize(u64::try_from(ms).unwrap_or(0)))
                .or_default() += jobs;
        }
    }

    /// Adds the counts of `other` to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (bucket, jobs) in &other.0 {
            *self.0.entry(*bucket).or_default() += jobs;
        }
    }

    /// How many jobs the histogram counts.
    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The nearest-rank percentile: the smallest duration that at least `p` of
    /// the jobs took no longer than (`p` in (0, 1]). `None` without jobs.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((p * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (bucket, jobs) in &self.0 {
            seen += jobs;
            if seen >= rank {
                return Some(*bucket);
            }
        }
        self.0.keys().next_back().copied()
    }

    /// The job count, p50 and p95 of this histogram.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            jobs: self.count(),
            p50: self.percentile(0.50),
            p95: self.percentile(0.95),
        }
    }

    /// The stored form (a JSON object of bucket → jobs).
    pub fn encode(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }

    /// Reads the stored form written by [`Histogram::encode`].
    pub fn decode(text: &str) -> Result<Histogram> {
        serde_json::from_str(text)
            .map(Histogram)
            .map_err(|e| Error::Internal(format!("a stored duration histogram is unreadable: {e}")))
    }
}

/// p50 and p95 of some jobs' durations, in milliseconds (`null` without jobs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// How many jobs the percentiles are of.
    pub jobs: u64,
    /// Median, in milliseconds.
    pub p50: Option<u64>,
    /// 95th percentile, in milliseconds.
    pub p95: Option<u64>,
}

/// Jobs per status: every status is present, 0 when no job has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// Jobs waiting for an agent.
    pub queued: i64,
    /// Jobs leased to an agent (running).
    pub leased: i64,
    /// Jobs that finished successfully.
    pub succeeded: i64,
    /// Jobs that finished with a failure.
    pub failed: i64,
    /// Jobs that ran past their timeout.
    pub timed_out: i64,
    /// Jobs cancelled before they finished.
    pub cancelled: i64,
    /// Jobs the admission policy denied.
    pub rejected: i64,
}

impl StatusCounts {
    /// Adds `jobs` to the count of `status`.
    pub fn add(&mut self, status: JobStatus, jobs: i64) {
        *match status {
            JobStatus::Queued => &mut self.queued,
            JobStatus::Leased => &mut self.leased,
            JobStatus::Succeeded => &mut self.succeeded,
            JobStatus::Failed => &mut self.failed,
            JobStatus::TimedOut => &mut self.timed_out,
            JobStatus::Cancelled => &mut self.cancelled,
            JobStatus::Rejected => &mut self.rejected,
        } += jobs;
    }

    /// Adds the counts of `other` to these.
    pub fn merge(&mut self, other: &StatusCounts) {
        for status in JobStatus::ALL {
            self.add(status, other.get(status));
        }
    }

    /// The count of `status`.
    pub fn get(&self, status: JobStatus) -> i64 {
        match status {
            JobStatus::Queued => self.queued,
            JobStatus::Leased => self.leased,
            JobStatus::Succeeded => self.succeeded,
            JobStatus::Failed => self.failed,
            JobStatus::TimedOut => self.timed_out,
            JobStatus::Cancelled => self.cancelled,
            JobStatus::Rejected => self.rejected,
        }
    }

    /// The sum over every status.
    pub fn total(&self) -> i64 {
        JobStatus::ALL.iter().map(|s| self.get(*s)).sum()
    }

    /// Succeeded out of the jobs that ran to an outcome (succeeded, failed, timed
    /// out); cancelled, rejected and unfinished jobs do not count. `None` without
    /// such jobs.
    pub fn success_rate(&self) -> Option<f64> {
        let decided = self.succeeded + self.failed + self.timed_out;
        (decided > 0).then(|| self.succeeded as f64 / decided as f64)
    }
}

/// How the store groups the jobs of a [`StatsQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    /// One group per org, with durations.
    Org,
    /// One group per org and value of this metadata key (jobs without the key are
    /// left out); counts only.
    MetadataKey(String),
    /// One group per org, key and value; counts only.
    AllMetadata,
}

/// Which jobs to count: those created in `[since, until)` (either open), of one
/// org or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsQuery {
    /// Only this org; `None` for all orgs.
    pub org_id: Option<OrgId>,
    /// Inclusive lower bound on creation time; `None` for open.
    pub since: Option<OffsetDateTime>,
    /// Exclusive upper bound on creation time; `None` for open.
    pub until: Option<OffsetDateTime>,
    /// How to group the jobs.
    pub grouping: Grouping,
}

/// The jobs of one group: an org, or an org and a metadata key's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// The org the jobs belong to.
    pub org_id: OrgId,
    /// The metadata key and value of the group (metadata groupings).
    pub metadata: Option<(String, String)>,
    /// The group's jobs by status.
    pub jobs: StatusCounts,
    /// Created to first lease, of the jobs that were leased.
    pub queue_wait: Histogram,
    /// First lease to the end, of the jobs that finished after a lease.
    pub run_time: Histogram,
}

/// One time bucket of a metadata trend, as the store counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrendRow {
    /// Start of the bucket, Unix milliseconds.
    pub bucket_start: i64,
    /// The metadata value the row counts.
    pub value: String,
    /// The status the row counts.
    pub status: JobStatus,
    /// How many jobs of that value and status were created in the bucket.
    pub jobs: i64,
}

/// Jobs carrying one value of a metadata key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataBucket {
    /// The metadata value.
    pub value: String,
    /// All jobs with this value, whatever their status.
    pub total: i64,
    /// The jobs with this value by status.
    pub jobs: StatusCounts,
    /// See [`StatusCounts::success_rate`]; `None` without decided jobs.
    pub success_rate: Option<f64>,
}

impl MetadataBucket {
    /// A bucket of `jobs`, with its total and success rate computed from them.
    pub fn new(value: String, jobs: StatusCounts) -> Self {
        MetadataBucket {
            value,
            total: jobs.total(),
            success_rate: jobs.success_rate(),
            jobs,
        }
    }
}

/// Sorts buckets the way people read a key's values: numerically when every
/// value is a number (`lr`, `batch`), else most jobs first.
pub fn sort_buckets(buckets: &mut [MetadataBucket]) {
    let numbers: Option<Vec<f64>> = buckets.iter().map(|b| b.value.parse().ok()).collect();
    if numbers.is_some() {
        buckets.sort_by(|a, b| {
            let (x, y): (f64, f64) = (
                a.value.parse().unwrap_or(0.0),
                b.value.parse().unwrap_or(0.0),
            );
            x.total_cmp(&y).then_with(|| a.value.cmp(&b.value))
        });
    } else {
        buckets.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.value.cmp(&b.value)));
    }
}

/// One org in `GET /api/observability/orgs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgReport {
    /// The org's id.
    pub org_id: OrgId,
    /// The org's name, when the org is registered.
    pub name: Option<String>,
    /// All the org's jobs in the window, whatever their status.
    pub total: i64,
    /// The org's jobs in the window by status.
    pub jobs: StatusCounts,
    /// See [`StatusCounts::success_rate`]; `None` without decided jobs.
    pub success_rate: Option<f64>,
    /// Creation to first lease.
    pub queue_wait_ms: Percentiles,
    /// First lease to the end.
    pub run_time_ms: Percentiles,
    /// Jobs leased right now (whenever they were created).
    pub active_leases: i64,
    /// Submissions refused by the org rate limit, counted per hour.
    pub rate_limit_hits: i64,
    /// With `metadata_key`: the key's values among the org's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Vec<MetadataBucket>>,
}

/// `GET /api/observability/orgs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgsReport {
    /// Start of the window (inclusive), if bounded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// End of the window (exclusive), if bounded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// The key each org's jobs are broken down by, if one was asked for.
    pub metadata_key: Option<String>,
    /// Every registered org, and any other org with jobs, leases or rate-limit
    /// hits in the window; by org id.
    pub orgs: Vec<OrgReport>,
}

/// One org's buckets of a preset key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgBuckets {
    /// The org's id.
    pub org_id: OrgId,
    /// The key's values among the org's jobs, sorted by [`sort_buckets`].
    pub buckets: Vec<MetadataBucket>,
}

/// One key of `NIMBUS_METADATA_DEFAULT_KEYS`, over all time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataPreset {
    /// The metadata key.
    pub key: String,
    /// The key's values per org.
    pub orgs: Vec<OrgBuckets>,
}

/// `GET /api/jobs/metadata/presets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataPresets {
    /// When the figures were computed (they are refreshed in the background).
    #[serde(with = "time::serde::rfc3339")]
    pub computed_at: OffsetDateTime,
    /// One entry per key of `NIMBUS_METADATA_DEFAULT_KEYS`.
    pub presets: Vec<MetadataPreset>,
}

/// `GET /api/jobs/metadata/histogram`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataHistogram {
    /// The metadata key.
    pub key: String,
    /// The key's values, sorted by [`sort_buckets`].
    pub buckets: Vec<MetadataBucket>,
}

/// One time bucket of `GET /api/jobs/metadata/trend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendBucket {
    /// Start of the bucket (UTC, aligned to the Unix epoch).
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// The key's values among the jobs created in the bucket.
    pub values: Vec<MetadataBucket>,
}

/// `GET /api/jobs/metadata/trend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataTrend {
    /// The metadata key.
    pub key: String,
    /// Length of each bucket in hours (1–720, default 24).
    pub bucket_hours: u32,
    /// Start of the window (inclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// End of the window (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Buckets with jobs, oldest first.
    pub buckets: Vec<TrendBucket>,
}

/// A metadata key and value, and how many jobs carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataTag {
    /// The metadata key.
    pub key: String,
    /// The value.
    pub value: String,
    /// How many jobs carry this key and value.
    pub jobs: i64,
}

/// `GET /api/jobs/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Only jobs with this key, if given.
    pub metadata_key: Option<String>,
    /// Only jobs whose `metadata_key` has this value (needs `metadata_key`).
    pub metadata_value: Option<String>,
    /// All matching jobs, whatever their status.
    pub total: i64,
    /// The matching jobs by status.
    pub jobs: StatusCounts,
    /// See [`StatusCounts::success_rate`]; `None` without decided jobs.
    pub success_rate: Option<f64>,
    /// The most frequent metadata tags among these jobs.
    pub top_metadata: Vec<MetadataTag>,
}

/// One UTC day of the dashboard's chart: the jobs created that day and their
/// durations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayFigures {
    /// Midnight UTC of the day.
    #[serde(with = "time::serde::rfc3339")]
    pub day: OffsetDateTime,
    /// The jobs created that day by status.
    pub jobs: StatusCounts,
    /// Creation to first lease, of that day's jobs.
    pub queue_wait_ms: Percentiles,
    /// First lease to the end, of that day's jobs.
    pub run_time_ms: Percentiles,
}

/// A duration in milliseconds as people read it: `850ms`, `4.5s`, `45s`,
/// `2m05s`, `3h20m`; `-` for none.
pub fn human_duration(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=9_999 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..=59_999 => format!("{}s", ms / 1000),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Parses a `since`/`until` bound: an RFC 3339 time, a date (`2026-11-30`,
/// midnight UTC), or an age (`7d`, `24h`, `90m`: that long before `now`).
pub fn parse_time_bound(name: &str, raw: &str, now: OffsetDateTime) -> Result<OffsetDateTime> {
    let raw = raw.trim();
    if let Ok(at) = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339) {
        return Ok(at);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(raw, &date_format) {
        return Ok(date.midnight().assume_utc());
    }
    if let Ok(age) = humantime::parse_duration(raw) {
        if let Ok(age) = time::Duration::try_from(age) {
            if let Some(at) = now.checked_sub(age) {
                return Ok(at);
            }
        }
    }
    Err(Error::invalid(format!(
        "{name} must be an RFC 3339 time (2026-11-30T12:00:00Z), a date (2026-11-30) \
         or an age (7d, 24h), got {raw:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_two_significant_digits() {
        assert_eq!(quantize(0), 0);
        assert_eq!(quantize(99), 99);
        assert_eq!(quantize(100), 100);
        assert_eq!(quantize(1234), 1200);
        assert_eq!(quantize(45_000), 45_000);
        assert_eq!(quantize(987_654), 980_000);
        assert_eq!(quantize(u64::MAX), 18_000_000_000_000_000_000);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.percentile(0.5), None);
        for ms in [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10_000] {
            histogram.record(ms);
        }
        // Rank ceil(0.5 * 10) = 5 and ceil(0.95 * 10) = 10.
        assert_eq!(histogram.percentile(0.5), Some(5000));
        assert_eq!(histogram.percentile(0.95), Some(10_000));
        histogram.record(-5);
        assert_eq!(histogram.percentile(0.01), Some(0));
        let encoded = histogram.encode();
        assert_eq!(Histogram::decode(&encoded).expect("decodes"), histogram);
        assert!(Histogram::decode("[1,2]").is_err());
    }

    #[test]
    fn success_rate_counts_outcomes_only() {
        let mut counts = StatusCounts::default();
        assert_eq!(counts.success_rate(), None);
        counts.add(JobStatus::Succeeded, 3);
        counts.add(JobStatus::Failed, 1);
        counts.add(JobStatus::Cancelled, 5);
        counts.add(JobStatus::Queued, 2);
        assert_eq!(counts.success_rate(), Some(0.75));
        assert_eq!(counts.total(), 11);
    }

    #[test]
    fn numeric_values_sort_as_numbers() {
        let bucket = |value: &str, total| MetadataBucket {
            value: value.into(),
            total,
            jobs: StatusCounts::default(),
            success_rate: None,
        };
        let mut buckets = vec![bucket("0.1", 1), bucket("0.01", 5), bucket("1e-3", 2)];
        sort_buckets(&mut buckets);
        let order: Vec<_> = buckets.iter().map(|b| b.value.as_str()).collect();
        assert_eq!(order, ["1e-3", "0.01", "0.1"]);
        let mut buckets = vec![bucket("b", 1), bucket("a", 5), bucket("c", 5)];
        sort_buckets(&mut buckets);
        let order: Vec<_> = buckets.iter().map(|b| b.value.as_str()).collect();
        assert_eq!(order, ["a", "c", "b"]);
    }

    #[test]
    fn time_bounds_take_three_forms() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let at = parse_time_bound("since", "2026-11-30T12:00:00Z", now).expect("parses");
        assert_eq!(at.unix_timestamp(), 1_796_040_000);
        let day = parse_time_bound("since", "2026-11-30", now).expect("parses");
        assert_eq!(day.unix_timestamp(), 1_795_996_800);
        let age = parse_time_bound("since", "7d", now).expect("parses");
        assert_eq!(age.unix_timestamp(), 1_800_000_000 - 7 * 86_400);
        let error = parse_time_bound("since", "yesterday", now).expect_err("refused");
        assert!(error.to_string().contains("since must be"), "{error}");
    }
}
