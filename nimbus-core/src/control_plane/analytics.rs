//! The analytics calls of the API: fleet reports per org and per metadata value
//! (`GET /api/observability/orgs`, `/api/jobs/metadata/…`, `/api/jobs/summary`).
//! An org token sees its own org only; an admin sees all, or the org it names.
//! The figures come from the store's [`AnalyticsStore`](crate::store::AnalyticsStore)
//! (docs/analytics.md defines each); the presets of NIMBUS_METADATA_DEFAULT_KEYS
//! are computed in the background and served from memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::RwLock;

use super::ControlPlane;
use crate::analytics::{
    sort_buckets, DayFigures, GroupStats, Grouping, JobSummary, MetadataBucket, MetadataHistogram,
    MetadataPreset, MetadataPresets, MetadataTag, MetadataTrend, OrgBuckets, OrgReport, OrgsReport,
    StatsQuery, StatusCounts, TrendBucket, HOUR_MS,
};
use crate::auth::Principal;
use crate::domain::{from_millis, validate_metadata_key, OrgId};
use crate::error::{Error, Result};

/// Longest trend bucket: 30 days.
pub const MAX_BUCKET_HOURS: u32 = 720;
/// Most buckets one trend answers.
pub const MAX_TREND_BUCKETS: i64 = 2000;
/// Trend buckets of the default window (ending now).
const DEFAULT_TREND_BUCKETS: u32 = 30;
/// Longest chart of the dashboard.
pub const MAX_CHART_DAYS: u32 = 90;
/// Tags a summary lists.
const TOP_TAGS: usize = 10;

/// `GET /api/observability/orgs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgsQuery {
    /// Admins: only this org.
    pub org_id: Option<OrgId>,
    /// Also break each org's jobs down by this key's values.
    pub metadata_key: Option<String>,
    /// Inclusive lower bound on creation time; `None` for open.
    pub since: Option<OffsetDateTime>,
    /// Exclusive upper bound on creation time; `None` for open.
    pub until: Option<OffsetDateTime>,
}

/// `GET /api/jobs/metadata/histogram`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramQuery {
    /// The metadata key whose values to count.
    pub key: String,
    /// Admins: only this org.
    pub org_id: Option<OrgId>,
    /// Inclusive lower bound on creation time; `None` for open.
    pub since: Option<OffsetDateTime>,
    /// Exclusive upper bound on creation time; `None` for open.
    pub until: Option<OffsetDateTime>,
}

/// `GET /api/jobs/metadata/trend`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrendQuery {
    /// The metadata key whose values to count.
    pub key: String,
    /// Admins: only this org.
    pub org_id: Option<OrgId>,
    /// Bucket length (default 24).
    pub bucket_hours: Option<u32>,
    /// Default: 30 buckets before `until`.
    pub since: Option<OffsetDateTime>,
    /// Default: now.
    pub until: Option<OffsetDateTime>,
}

/// `GET /api/jobs/summary`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummaryQuery {
    /// Admins: only this org.
    pub org_id: Option<OrgId>,
    /// Only jobs with this key.
    pub metadata_key: Option<String>,
    /// Only jobs whose `metadata_key` has this value (needs `metadata_key`).
    pub metadata_value: Option<String>,
}

/// Query parameters in their wire form (for [`crate::client::ControlPlaneClient`]).
pub type Params = Vec<(&'static str, String)>;

fn push_param(params: &mut Params, name: &'static str, value: Option<impl ToString>) {
    if let Some(value) = value {
        params.push((name, value.to_string()));
    }
}

fn push_time(params: &mut Params, name: &'static str, at: Option<OffsetDateTime>) {
    let formatted = at.and_then(|at| {
        at.format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    push_param(params, name, formatted);
}

impl OrgsQuery {
    /// The query string parameters of this query, unset ones left out.
    pub fn params(&self) -> Params {
        let mut params = Params::new();
        push_param(&mut params, "org_id", self.org_id);
        push_param(&mut params, "metadata_key", self.metadata_key.as_ref());
        push_time(&mut params, "since", self.since);
        push_time(&mut params, "until", self.until);
        params
    }
}

impl HistogramQuery {
    /// The query string parameters of this query, unset ones left out.
    pub fn params(&self) -> Params {
        let mut params = vec![("key", self.key.clone())];
        push_param(&mut params, "org_id", self.org_id);
        push_time(&mut params, "since", self.since);
        push_time(&mut params, "until", self.until);
        params
    }
}

impl TrendQuery {
    /// The query string parameters of this query, unset ones left out.
    pub fn params(&self) -> Params {
        let mut params = vec![("key", self.key.clone())];
        push_param(&mut params, "org_id", self.org_id);
        push_param(&mut params, "bucket_hours", self.bucket_hours);
        push_time(&mut params, "since", self.since);
        push_time(&mut params, "until", self.until);
        params
    }
}

impl SummaryQuery {
    /// The query string parameters of this query, unset ones left out.
    pub fn params(&self) -> Params {
        let mut params = Params::new();
        push_param(&mut params, "org_id", self.org_id);
        push_param(&mut params, "metadata_key", self.metadata_key.as_ref());
        push_param(&mut params, "metadata_value", self.metadata_value.as_ref());
        params
    }
}

/// The presets as last computed: every org's groups per key.
#[derive(Debug)]
struct PresetsSnapshot {
    computed_at: OffsetDateTime,
    keys: Vec<(String, Vec<GroupStats>)>,
}

/// What the analytics keep between calls.
#[derive(Debug, Default)]
pub(crate) struct AnalyticsState {
    presets: RwLock<Option<Arc<PresetsSnapshot>>>,
}

fn check_window(since: Option<OffsetDateTime>, until: Option<OffsetDateTime>) -> Result<()> {
    match (since, until) {
        (Some(since), Some(until)) if since >= until => Err(Error::invalid(format!(
            "since ({since}) must be before until ({until})"
        ))),
        _ => Ok(()),
    }
}

/// A principal's view of the orgs: its own for an org token, the one asked (or
/// all) for an admin; agents read no analytics.
fn scope(who: &Principal, asked: Option<OrgId>) -> Result<Option<OrgId>> {
    super::api::refuse_agents(who, "analytics")?;
    super::api::readable_org(who, asked)
}

/// Buckets of one org's (or several orgs') groups, by value.
fn buckets<'a>(groups: impl IntoIterator<Item = &'a GroupStats>) -> Vec<MetadataBucket> {
    let mut by_value: BTreeMap<String, StatusCounts> = BTreeMap::new();
    for group in groups {
        if let Some((_, value)) = &group.metadata {
            by_value
                .entry(value.clone())
                .or_default()
                .merge(&group.jobs);
        }
    }
    let mut buckets: Vec<MetadataBucket> = by_value
        .into_iter()
        .map(|(value, jobs)| MetadataBucket::new(value, jobs))
        .collect();
    sort_buckets(&mut buckets);
    buckets
}

impl ControlPlane {
    /// Per org: jobs by status, success rate, queue wait and run time
    /// percentiles, active leases, rate-limit hits; with a metadata key, the
    /// key's values among the org's jobs.
    pub async fn observability_orgs(
        &self,
        who: &Principal,
        query: &OrgsQuery,
    ) -> Result<OrgsReport> {
        let org_id = scope(who, query.org_id)?;
        check_window(query.since, query.until)?;
        if let Some(key) = &query.metadata_key {
            validate_metadata_key(key)?;
        }
        let stats = self
            .store
            .job_stats(&StatsQuery {
                org_id,
                since: query.since,
                until: query.until,
                grouping: Grouping::Org,
            })
            .await?;
        let metadata = match &query.metadata_key {
            Some(key) => Some(
                self.store
                    .job_stats(&StatsQuery {
                        org_id,
                        since: query.since,
                        until: query.until,
                        grouping: Grouping::MetadataKey(key.clone()),
                    })
                    .await?,
            ),
            None => None,
        };
        let leases: BTreeMap<OrgId, i64> = self
            .store
            .active_leases(org_id)
            .await?
            .into_iter()
            .collect();
        let hits: BTreeMap<OrgId, i64> = self
            .store
            .rate_limit_hits(org_id, query.since, query.until)
            .await?
            .into_iter()
            .collect();
        let names: BTreeMap<OrgId, String> = match org_id {
            Some(id) => self
                .store
                .get_org(id)
                .await?
                .map(|org| (org.id, org.name))
                .into_iter()
                .collect(),
            None => self
                .store
                .list_orgs()
                .await?
                .into_iter()
                .map(|org| (org.id, org.name))
                .collect(),
        };
        let stats: BTreeMap<OrgId, GroupStats> = stats
            .into_iter()
            .map(|group| (group.org_id, group))
            .collect();
        let mut org_ids: BTreeSet<OrgId> = names.keys().copied().collect();
        org_ids.extend(stats.keys().chain(leases.keys()).chain(hits.keys()));
        if let Some(id) = org_id {
            // An org token's own org is always reported; an admin naming an org
            // nobody ever heard of is told so.
            if org_ids.is_empty() && who.org_scope().is_none() {
                return Err(Error::not_found(format!("org {id}")));
            }
            org_ids.insert(id);
        }
        let orgs = org_ids
            .into_iter()
            .map(|id| {
                let group = stats.get(&id).cloned().unwrap_or_default();
                OrgReport {
                    org_id: id,
                    name: names.get(&id).cloned(),
                    total: group.jobs.total(),
                    success_rate: group.jobs.success_rate(),
                    jobs: group.jobs,
                    queue_wait_ms: group.queue_wait.percentiles(),
                    run_time_ms: group.run_time.percentiles(),
                    active_leases: leases.get(&id).copied().unwrap_or(0),
                    rate_limit_hits: hits.get(&id).copied().unwrap_or(0),
                    metadata: metadata
                        .as_ref()
                        .map(|groups| buckets(groups.iter().filter(|g| g.org_id == id))),
                }
            })
            .collect();
        Ok(OrgsReport {
            since: query.since,
            until: query.until,
            metadata_key: query.metadata_key.clone(),
            orgs,
        })
    }

    /// The analytics of the keys in NIMBUS_METADATA_DEFAULT_KEYS over all time,
    /// as last computed in the background (computed now if never yet).
    pub async fn metadata_presets(&self, who: &Principal) -> Result<MetadataPresets> {
        let org_id = scope(who, None)?;
        let cached = self.analytics.presets.read().await.clone();
        let snapshot = match cached {
            Some(snapshot) => snapshot,
            None => self.refresh_presets().await?,
        };
        let presets = snapshot
            .keys
            .iter()
            .map(|(key, groups)| {
                let mut by_org: BTreeMap<OrgId, Vec<&GroupStats>> = BTreeMap::new();
                for group in groups
                    .iter()
                    .filter(|g| org_id.is_none_or(|id| g.org_id == id))
                {
                    by_org.entry(group.org_id).or_default().push(group);
                }
                MetadataPreset {
                    key: key.clone(),
                    orgs: by_org
                        .into_iter()
                        .map(|(org_id, groups)| OrgBuckets {
                            org_id,
                            buckets: buckets(groups),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(MetadataPresets {
            computed_at: snapshot.computed_at,
            presets,
        })
    }

    /// Recomputes the presets of every org.
    async fn refresh_presets(&self) -> Result<Arc<PresetsSnapshot>> {
        let computed_at = self.now();
        let mut keys = Vec::with_capacity(self.config.metadata_default_keys.len());
        for key in &self.config.metadata_default_keys {
            let groups = self
                .store
                .job_stats(&StatsQuery {
                    org_id: None,
                    since: None,
                    until: None,
                    grouping: Grouping::MetadataKey(key.clone()),
                })
                .await?;
            keys.push((key.clone(), groups));
        }
        let snapshot = Arc::new(PresetsSnapshot { computed_at, keys });
        *self.analytics.presets.write().await = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// How many jobs carry each value of `key` (per status, with success rates).
    pub async fn metadata_histogram(
        &self,
        who: &Principal,
        query: &HistogramQuery,
    ) -> Result<MetadataHistogram> {
        let org_id = scope(who, query.org_id)?;
        validate_metadata_key(&query.key)?;
        check_window(query.since, query.until)?;
        let groups = self
            .store
            .job_stats(&StatsQuery {
                org_id,
                since: query.since,
                until: query.until,
                grouping: Grouping::MetadataKey(query.key.clone()),
            })
            .await?;
        Ok(MetadataHistogram {
            key: query.key.clone(),
            buckets: buckets(&groups),
        })
    }

    /// The values of `key` per time bucket of `bucket_hours`, oldest first.
    pub async fn metadata_trend(
        &self,
        who: &Principal,
        query: &TrendQuery,
    ) -> Result<MetadataTrend> {
        let org_id = scope(who, query.org_id)?;
        validate_metadata_key(&query.key)?;
        let bucket_hours = query.bucket_hours.unwrap_or(24);
        if !(1..=MAX_BUCKET_HOURS).contains(&bucket_hours) {
            return Err(Error::invalid(format!(
                "bucket_hours must be between 1 and {MAX_BUCKET_HOURS}, got {bucket_hours}"
            )));
        }
        let bucket = time::Duration::hours(i64::from(bucket_hours));
        let until = query.until.unwrap_or_else(|| self.now());
        let since = query
            .since
            .unwrap_or(until - bucket * DEFAULT_TREND_BUCKETS as i32);
        check_window(Some(since), Some(until))?;
        let buckets_asked = (until - since).whole_hours() / i64::from(bucket_hours);
        if buckets_asked > MAX_TREND_BUCKETS {
            return Err(Error::invalid(format!(
                "{buckets_asked} buckets of {bucket_hours} h between since and until; \
                 at most {MAX_TREND_BUCKETS}: widen bucket_hours or narrow the window"
            )));
        }
        let rows = self
            .store
            .metadata_trend(
                org_id,
                &query.key,
                since,
                until,
                Duration::from_millis(u64::from(bucket_hours) * HOUR_MS as u64),
            )
            .await?;
        let mut by_bucket: BTreeMap<i64, BTreeMap<String, StatusCounts>> = BTreeMap::new();
        for row in rows {
            by_bucket
                .entry(row.bucket_start)
                .or_default()
                .entry(row.value)
                .or_default()
                .add(row.status, row.jobs);
        }
        Ok(MetadataTrend {
            key: query.key.clone(),
            bucket_hours,
            since,
            until,
            buckets: by_bucket
                .into_iter()
                .map(|(start, values)| {
                    let mut values: Vec<MetadataBucket> = values
                        .into_iter()
                        .map(|(value, jobs)| MetadataBucket::new(value, jobs))
                        .collect();
                    sort_buckets(&mut values);
                    TrendBucket {
                        start: from_millis(start),
                        values,
                    }
                })
                .collect(),
        })
    }

    /// Jobs by status (all, those with a metadata key, or with a key's value)
    /// and the metadata tags most frequent among them.
    pub async fn job_summary(&self, who: &Principal, query: &SummaryQuery) -> Result<JobSummary> {
        let org_id = scope(who, query.org_id)?;
        let stats = |grouping| StatsQuery {
            org_id,
            since: None,
            until: None,
            grouping,
        };
        let (jobs, mut top_metadata) = match (&query.metadata_key, &query.metadata_value) {
            (None, Some(_)) => return Err(Error::invalid("metadata_value needs metadata_key")),
            (None, None) => {
                let mut jobs = StatusCounts::default();
                for group in self.store.job_stats(&stats(Grouping::Org)).await? {
                    jobs.merge(&group.jobs);
                }
                let mut tags: BTreeMap<(String, String), i64> = BTreeMap::new();
                for group in self.store.job_stats(&stats(Grouping::AllMetadata)).await? {
                    if let Some(tag) = group.metadata {
                        *tags.entry(tag).or_default() += group.jobs.total();
                    }
                }
                let tags = tags
                    .into_iter()
                    .map(|((key, value), jobs)| MetadataTag { key, value, jobs })
                    .collect();
                (jobs, tags)
            }
            (Some(key), value) => {
                validate_metadata_key(key)?;
                let groups = self
                    .store
                    .job_stats(&stats(Grouping::MetadataKey(key.clone())))
                    .await?;
                let mut jobs = StatusCounts::default();
                let mut values: BTreeMap<String, i64> = BTreeMap::new();
                for group in &groups {
                    let Some((_, group_value)) = &group.metadata else {
                        continue;
                    };
                    if value.as_ref().is_none_or(|v| v == group_value) {
                        jobs.merge(&group.jobs);
                        *values.entry(group_value.clone()).or_default() += group.jobs.total();
                    }
                }
                let tags = match value {
                    // Which other tags go with this one.
                    Some(value) => {
                        self.store
                            .tags_with(org_id, key, value, TOP_TAGS as u32)
                            .await?
                    }
                    // The key's values are the tags of the jobs that have it.
                    None => values
                        .into_iter()
                        .map(|(value, jobs)| MetadataTag {
                            key: key.clone(),
                            value,
                            jobs,
                        })
                        .collect(),
                };
                (jobs, tags)
            }
        };
        top_metadata.sort_by(|a, b| {
            b.jobs
                .cmp(&a.jobs)
                .then_with(|| (&a.key, &a.value).cmp(&(&b.key, &b.value)))
        });
        top_metadata.truncate(TOP_TAGS);
        Ok(JobSummary {
            metadata_key: query.metadata_key.clone(),
            metadata_value: query.metadata_value.clone(),
            total: jobs.total(),
            success_rate: jobs.success_rate(),
            jobs,
            top_metadata,
        })
    }

    /// The last `days` UTC days (today included), oldest first: per day the jobs
    /// created and their queue wait and run time percentiles (the dashboard's chart).
    pub async fn daily_figures(
        &self,
        who: &Principal,
        org_id: Option<OrgId>,
        days: u32,
    ) -> Result<Vec<DayFigures>> {
        let org_id = scope(who, org_id)?;
        if !(1..=MAX_CHART_DAYS).contains(&days) {
            return Err(Error::invalid(format!(
                "days must be between 1 and {MAX_CHART_DAYS}, got {days}"
            )));
        }
        let today = self.now().date().midnight().assume_utc();
        let mut figures = Vec::with_capacity(days as usize);
        for back in (0..days).rev() {
            let day = today - time::Duration::days(i64::from(back));
            let groups = self
                .store
                .job_stats(&StatsQuery {
                    org_id,
                    since: Some(day),
                    until: Some(day + time::Duration::days(1)),
                    grouping: Grouping::Org,
                })
                .await?;
            let mut merged = GroupStats::default();
            for group in &groups {
                merged.jobs.merge(&group.jobs);
                merged.queue_wait.merge(&group.queue_wait);
                merged.run_time.merge(&group.run_time);
            }
            figures.push(DayFigures {
                day,
                jobs: merged.jobs,
                queue_wait_ms: merged.queue_wait.percentiles(),
                run_time_ms: merged.run_time.percentiles(),
            });
        }
        Ok(figures)
    }

    /// The metadata keys of the jobs created since `since` (at most 100, sorted).
    pub async fn metadata_keys(
        &self,
        who: &Principal,
        org_id: Option<OrgId>,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<String>> {
        let org_id = scope(who, org_id)?;
        let groups = self
            .store
            .job_stats(&StatsQuery {
                org_id,
                since,
                until: None,
                grouping: Grouping::AllMetadata,
            })
            .await?;
        let keys: BTreeSet<String> = groups
            .into_iter()
            .filter_map(|group| group.metadata.map(|(key, _)| key))
            .collect();
        Ok(keys.into_iter().take(100).collect())
    }

    /// Folds finished jobs into the rollups and refreshes the presets: what the
    /// background task does every NIMBUS_ANALYTICS_INTERVAL. Returns the jobs folded.
    pub async fn refresh_analytics(&self) -> Result<u64> {
        let folded = self.store.roll_up(self.now()).await?;
        if !self.config.metadata_default_keys.is_empty() {
            self.refresh_presets().await?;
        }
        Ok(folded)
    }
}

/// Runs [`ControlPlane::refresh_analytics`] every NIMBUS_ANALYTICS_INTERVAL
/// until shutdown.
pub(super) async fn analytics_loop(state: super::AppState) {
    let mut shutdown = state.shutdown.subscribe();
    loop {
        match state.refresh_analytics().await {
            Ok(0) => {}
            Ok(folded) => tracing::debug!(folded, "analytics rollups updated"),
            Err(e) => {
                tracing::warn!(error = %e, "analytics refresh failed; retrying next interval")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(state.config.analytics_interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
