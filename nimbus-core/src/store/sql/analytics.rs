//! Fleet analytics on SQL ([`AnalyticsStore`]).
//!
//! Reports over millions of jobs must stay cheap, so finished jobs are folded
//! into per-day rollups (`job_rollups`, `job_metadata_rollups`) by
//! [`AnalyticsStore::roll_up`], which every replica runs in the background; the
//! watermark row says up to which finish time the rollups are complete. A report
//! reads, in one snapshot, the rollups of the whole days inside its window and
//! the jobs the rollups cannot answer for: those not finished, those finished
//! after the watermark, and — for a window that starts or ends inside a day —
//! the folded jobs created in those partial days. The three are disjoint, so
//! every job counts once, folded or not (the store test suite checks that the
//! figures before and after a fold are the same).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::SqlStore;
use crate::analytics::{
    GroupStats, Grouping, Histogram, MetadataTag, StatsQuery, TrendRow, DAY_MS, HOUR_MS,
};
use crate::db::query_builder;
use crate::domain::{to_millis, JobStatus, OrgId};
use crate::error::{Error, Result};
use crate::store::AnalyticsStore;
use crate::with_pool;

/// How long after a job's finish time it is folded. A completion commits
/// within a statement's time of taking its finish time; a job whose commit came
/// after the fold passed its finish time would be left out of reports.
const FOLD_GRACE_MS: i64 = 60_000;
/// Finish times one fold transaction covers at most (bounds its size when a
/// backlog is folded, e.g. the first fold of an existing database).
const FOLD_STEP_MS: i64 = DAY_MS;
/// Rows per multi-row upsert (6 binds each: well under either database's limit).
const UPSERT_CHUNK: usize = 500;

/// The whole days inside a window, in ms: `(first day's start, end)`, either
/// side open. `None` when the window holds no whole day.
type FullDays = Option<(Option<i64>, Option<i64>)>;

fn full_days(since: Option<i64>, until: Option<i64>) -> FullDays {
    let lo = since.map(|s| {
        s.div_euclid(DAY_MS) * DAY_MS + if s.rem_euclid(DAY_MS) == 0 { 0 } else { DAY_MS }
    });
    let hi = until.map(|u| u.div_euclid(DAY_MS) * DAY_MS);
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo >= hi => None,
        days => Some(days),
    }
}

fn status_of(raw: &str) -> Result<JobStatus> {
    raw.parse()
        .map_err(|_| Error::Internal(format!("a stored job has an unknown status {raw:?}")))
}

/// Appends ` AND col >= $since AND col < $until` for the sides that are set.
macro_rules! push_range {
    ($query:expr, $column:expr, $since:expr, $until:expr) => {
        if let Some(since) = $since {
            $query
                .push(concat!(" AND ", $column, " >= "))
                .push_bind(since);
        }
        if let Some(until) = $until {
            $query
                .push(concat!(" AND ", $column, " < "))
                .push_bind(until);
        }
    };
}

/// Appends the three disjoint parts of the jobs the rollups do not answer for
/// (see the module's comment), each `SELECT $select FROM $from WHERE … $suffix`,
/// joined by UNION ALL. `j` is the jobs table.
macro_rules! push_unfolded {
    ($query:expr, $select:expr, $from:expr, $suffix:expr, $window:expr, $watermark:expr, $org:expr, $key:expr) => {{
        let (since, until, days): (Option<i64>, Option<i64>, FullDays) = $window;
        let mut parts: Vec<u8> = vec![0, 1];
        let edges = match days {
            None => Some((None, None)),
            Some((None, None)) => None,
            Some(sides) => Some(sides),
        };
        if edges.is_some() {
            parts.push(2);
        }
        for (n, part) in parts.into_iter().enumerate() {
            if n > 0 {
                $query.push(" UNION ALL ");
            }
            $query.push(concat!("SELECT ", $select, " FROM ", $from, " WHERE "));
            match part {
                0 => {
                    $query.push("j.status IN ('queued', 'leased')");
                }
                1 => {
                    $query.push("j.finished_at > ").push_bind($watermark);
                }
                _ => {
                    $query.push("j.finished_at <= ").push_bind($watermark);
                    match edges {
                        Some((Some(lo), Some(hi))) => {
                            $query
                                .push(" AND (j.created_at < ")
                                .push_bind(lo)
                                .push(" OR j.created_at >= ")
                                .push_bind(hi)
                                .push(")");
                        }
                        Some((Some(lo), None)) => {
                            $query.push(" AND j.created_at < ").push_bind(lo);
                        }
                        Some((None, Some(hi))) => {
                            $query.push(" AND j.created_at >= ").push_bind(hi);
                        }
                        _ => {}
                    }
                }
            }
            push_range!($query, "j.created_at", since, until);
            if let Some(org_id) = $org {
                $query.push(" AND j.org_id = ").push_bind(org_id);
            }
            if let Some(key) = $key {
                $query.push(" AND m.key = ").push_bind(key);
            }
            $query.push($suffix);
        }
    }};
}

/// Accumulates [`GroupStats`] by group.
#[derive(Default)]
struct Groups(HashMap<(OrgId, Option<(String, String)>), GroupStats>);

impl Groups {
    fn group(&mut self, org_id: OrgId, metadata: Option<(String, String)>) -> &mut GroupStats {
        self.0
            .entry((org_id, metadata.clone()))
            .or_insert_with(|| GroupStats {
                org_id,
                metadata,
                ..GroupStats::default()
            })
    }

    fn into_sorted(self) -> Vec<GroupStats> {
        let mut groups: Vec<GroupStats> = self.0.into_values().collect();
        groups.sort_by(|a, b| (a.org_id, &a.metadata).cmp(&(b.org_id, &b.metadata)));
        groups
    }
}

/// A job's durations into a group's histograms.
fn record_durations(
    group: &mut GroupStats,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
) {
    if let Some(started) = started_at {
        group.queue_wait.record(started - created_at);
        if let Some(finished) = finished_at {
            group.run_time.record(finished - started);
        }
    }
}

/// A job row as the folder and the reports read it.
type JobTimes = (i64, String, i64, Option<i64>, Option<i64>);
/// A metadata count: org, key, value, status, jobs.
type MetadataCountRow = (i64, String, String, String, i64);

/// One rollup row being written: jobs and the two histograms.
#[derive(Default)]
struct RollupRow {
    jobs: i64,
    queue_wait: Histogram,
    run_time: Histogram,
}

impl SqlStore {
    fn on_postgres(&self) -> bool {
        self.writer.backend() == "postgres"
    }

    /// One fold transaction: the jobs finished after the watermark, up to one
    /// step, into the rollups. Returns how many jobs, and whether it reached `target`.
    async fn fold_step(&self, target: i64) -> Result<(u64, bool)> {
        let lock = if self.on_postgres() {
            "SELECT folded_until FROM analytics_watermark WHERE id = 1 FOR UPDATE"
        } else {
            "SELECT folded_until FROM analytics_watermark WHERE id = 1"
        };
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            let (watermark,): (i64,) = sqlx::query_as(lock).fetch_one(&mut *tx).await?;
            if watermark >= target {
                return Ok((0, true));
            }
            let (first,): (Option<i64>,) = sqlx::query_as(
                "SELECT MIN(finished_at) FROM jobs WHERE finished_at > $1 AND finished_at <= $2",
            )
            .bind(watermark)
            .bind(target)
            .fetch_one(&mut *tx)
            .await?;
            let upper = match first {
                Some(first) => target.min(first.saturating_add(FOLD_STEP_MS)),
                None => target,
            };
            let jobs: Vec<JobTimes> = sqlx::query_as(
                "SELECT org_id, status, created_at, started_at, finished_at FROM jobs \
                 WHERE finished_at > $1 AND finished_at <= $2",
            )
            .bind(watermark)
            .bind(upper)
            .fetch_all(&mut *tx)
            .await?;
            let tags: Vec<(i64, String, i64, String, String)> = sqlx::query_as(
                "SELECT j.org_id, j.status, j.created_at, m.key, m.value \
                 FROM jobs j JOIN job_metadata m ON m.job_id = j.id \
                 WHERE j.finished_at > $1 AND j.finished_at <= $2",
            )
            .bind(watermark)
            .bind(upper)
            .fetch_all(&mut *tx)
            .await?;

            let mut rollups: BTreeMap<(i64, i64, String), RollupRow> = BTreeMap::new();
            for (org_id, status, created_at, started_at, finished_at) in &jobs {
                let row = rollups
                    .entry((*org_id, created_at.div_euclid(DAY_MS), status.clone()))
                    .or_default();
                row.jobs += 1;
                if let Some(started) = started_at {
                    row.queue_wait.record(started - created_at);
                    if let Some(finished) = finished_at {
                        row.run_time.record(finished - started);
                    }
                }
            }
            if let (Some(first), Some(last)) = (
                rollups.keys().map(|k| k.1).min(),
                rollups.keys().map(|k| k.1).max(),
            ) {
                let existing: Vec<(i64, i64, String, i64, String, String)> = sqlx::query_as(
                    "SELECT org_id, day, status, jobs, queue_wait, run_time FROM job_rollups \
                     WHERE day >= $1 AND day <= $2",
                )
                .bind(first)
                .bind(last)
                .fetch_all(&mut *tx)
                .await?;
                for (org_id, day, status, jobs, queue_wait, run_time) in existing {
                    if let Some(row) = rollups.get_mut(&(org_id, day, status)) {
                        row.jobs += jobs;
                        row.queue_wait.merge(&Histogram::decode(&queue_wait)?);
                        row.run_time.merge(&Histogram::decode(&run_time)?);
                    }
                }
            }
            let rows: Vec<_> = rollups.into_iter().collect();
            for chunk in rows.chunks(UPSERT_CHUNK) {
                let mut upsert = query_builder(
                    pool,
                    "INSERT INTO job_rollups (org_id, day, status, jobs, queue_wait, run_time) ",
                );
                upsert.push_values(chunk, |mut values, ((org_id, day, status), row)| {
                    values
                        .push_bind(*org_id)
                        .push_bind(*day)
                        .push_bind(status.clone())
                        .push_bind(row.jobs)
                        .push_bind(row.queue_wait.encode())
                        .push_bind(row.run_time.encode());
                });
                upsert.push(
                    " ON CONFLICT (org_id, day, status) DO UPDATE SET jobs = excluded.jobs, \
                     queue_wait = excluded.queue_wait, run_time = excluded.run_time",
                );
                upsert.build().execute(&mut *tx).await?;
            }

            let mut counts: BTreeMap<(String, i64, i64, String, String), i64> = BTreeMap::new();
            for (org_id, status, created_at, key, value) in tags {
                *counts
                    .entry((key, org_id, created_at.div_euclid(DAY_MS), value, status))
                    .or_default() += 1;
            }
            let counts: Vec<_> = counts.into_iter().collect();
            for chunk in counts.chunks(UPSERT_CHUNK) {
                let mut upsert = query_builder(
                    pool,
                    "INSERT INTO job_metadata_rollups (key, org_id, day, value, status, jobs) ",
                );
                upsert.push_values(chunk, |mut values, ((key, org_id, day, value, status), jobs)| {
                    values
                        .push_bind(key.clone())
                        .push_bind(*org_id)
                        .push_bind(*day)
                        .push_bind(value.clone())
                        .push_bind(status.clone())
                        .push_bind(*jobs);
                });
                upsert.push(
                    " ON CONFLICT (key, org_id, day, value, status) DO UPDATE \
                     SET jobs = job_metadata_rollups.jobs + excluded.jobs",
                );
                upsert.build().execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE analytics_watermark SET folded_until = $1 WHERE id = 1")
                .bind(upper)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok((jobs.len() as u64, upper >= target))
        })
    }
}

#[async_trait]
impl AnalyticsStore for SqlStore {
    async fn job_stats(&self, query: &StatsQuery) -> Result<Vec<GroupStats>> {
        let since = query.since.map(to_millis);
        let until = query.until.map(to_millis);
        let days = full_days(since, until);
        let (day_lo, day_hi) = match days {
            Some((lo, hi)) => (lo.map(|ms| ms / DAY_MS), hi.map(|ms| ms / DAY_MS)),
            None => (None, None),
        };
        let org = query.org_id;
        let on_postgres = self.on_postgres();
        let mut groups = Groups::default();
        with_pool!(&self.reader, pool => {
            let mut tx = pool.begin().await?;
            if on_postgres {
                // One snapshot for the watermark, the rollups and the jobs, so a
                // fold committing meanwhile neither doubles nor drops a job.
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await?;
            }
            let (watermark,): (i64,) =
                sqlx::query_as("SELECT folded_until FROM analytics_watermark WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
            match &query.grouping {
                Grouping::Org => {
                    if days.is_some() {
                        let mut rollups = query_builder(
                            pool,
                            "SELECT org_id, status, jobs, queue_wait, run_time FROM job_rollups WHERE 1 = 1",
                        );
                        push_range!(rollups, "day", day_lo, day_hi);
                        if let Some(org_id) = org {
                            rollups.push(" AND org_id = ").push_bind(org_id);
                        }
                        let rows: Vec<(i64, String, i64, String, String)> =
                            rollups.build_query_as().fetch_all(&mut *tx).await?;
                        for (org_id, status, jobs, queue_wait, run_time) in rows {
                            let group = groups.group(org_id, None);
                            group.jobs.add(status_of(&status)?, jobs);
                            group.queue_wait.merge(&Histogram::decode(&queue_wait)?);
                            group.run_time.merge(&Histogram::decode(&run_time)?);
                        }
                    }
                    let mut unfolded = query_builder(pool, "");
                    push_unfolded!(
                        unfolded,
                        "j.org_id, j.status, j.created_at, j.started_at, j.finished_at",
                        "jobs j",
                        "",
                        (since, until, days),
                        watermark,
                        org,
                        None::<String>
                    );
                    let rows: Vec<JobTimes> = unfolded.build_query_as().fetch_all(&mut *tx).await?;
                    for (org_id, status, created_at, started_at, finished_at) in rows {
                        let group = groups.group(org_id, None);
                        group.jobs.add(status_of(&status)?, 1);
                        record_durations(group, created_at, started_at, finished_at);
                    }
                }
                Grouping::MetadataKey(_) | Grouping::AllMetadata => {
                    let key = match &query.grouping {
                        Grouping::MetadataKey(key) => Some(key.clone()),
                        _ => None,
                    };
                    if days.is_some() {
                        let mut rollups = query_builder(
                            pool,
                            "SELECT org_id, key, value, status, CAST(SUM(jobs) AS BIGINT) \
                             FROM job_metadata_rollups WHERE 1 = 1",
                        );
                        if let Some(key) = &key {
                            rollups.push(" AND key = ").push_bind(key.clone());
                        }
                        push_range!(rollups, "day", day_lo, day_hi);
                        if let Some(org_id) = org {
                            rollups.push(" AND org_id = ").push_bind(org_id);
                        }
                        rollups.push(" GROUP BY org_id, key, value, status");
                        let rows: Vec<MetadataCountRow> =
                            rollups.build_query_as().fetch_all(&mut *tx).await?;
                        for (org_id, key, value, status, jobs) in rows {
                            groups.group(org_id, Some((key, value))).jobs.add(status_of(&status)?, jobs);
                        }
                    }
                    let mut unfolded = query_builder(pool, "");
                    push_unfolded!(
                        unfolded,
                        "j.org_id, m.key, m.value, j.status, COUNT(*)",
                        "jobs j JOIN job_metadata m ON m.job_id = j.id",
                        " GROUP BY j.org_id, m.key, m.value, j.status",
                        (since, until, days),
                        watermark,
                        org,
                        key.clone()
                    );
                    let rows: Vec<MetadataCountRow> =
                        unfolded.build_query_as().fetch_all(&mut *tx).await?;
                    for (org_id, key, value, status, jobs) in rows {
                        groups.group(org_id, Some((key, value))).jobs.add(status_of(&status)?, jobs);
                    }
                }
            }
            tx.commit().await?;
            Ok::<_, Error>(())
        })?;
        Ok(groups.into_sorted())
    }

    async fn roll_up(&self, now: OffsetDateTime) -> Result<u64> {
        let target = to_millis(now) - FOLD_GRACE_MS;
        let mut folded = 0;
        loop {
            let (jobs, done) = self.fold_step(target).await?;
            folded += jobs;
            if done {
                return Ok(folded);
            }
        }
    }

    async fn record_rate_limit_hit(&self, org_id: OrgId, now: OffsetDateTime) -> Result<()> {
        let hour = to_millis(now).div_euclid(HOUR_MS) * HOUR_MS;
        with_pool!(&self.counters, pool => sqlx::query(
            "INSERT INTO rate_limit_hits (org_id, hour, hits) VALUES ($1, $2, 1) \
             ON CONFLICT (org_id, hour) DO UPDATE SET hits = rate_limit_hits.hits + 1",
        )
        .bind(org_id)
        .bind(hour)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    async fn rate_limit_hits(
        &self,
        org_id: Option<OrgId>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<(OrgId, i64)>> {
        let since = since.map(|at| to_millis(at).div_euclid(HOUR_MS) * HOUR_MS);
        let until = until.map(to_millis);
        Ok(with_pool!(&self.reader, pool => {
            let mut query = query_builder(
                pool,
                "SELECT org_id, CAST(SUM(hits) AS BIGINT) FROM rate_limit_hits WHERE 1 = 1",
            );
            push_range!(query, "hour", since, until);
            if let Some(org_id) = org_id {
                query.push(" AND org_id = ").push_bind(org_id);
            }
            query.push(" GROUP BY org_id ORDER BY org_id");
            query.build_query_as().fetch_all(pool).await
        })?)
    }

    async fn active_leases(&self, org_id: Option<OrgId>) -> Result<Vec<(OrgId, i64)>> {
        Ok(with_pool!(&self.reader, pool => {
            let mut query = query_builder(
                pool,
                "SELECT org_id, COUNT(*) FROM jobs WHERE status = 'leased'",
            );
            if let Some(org_id) = org_id {
                query.push(" AND org_id = ").push_bind(org_id);
            }
            query.push(" GROUP BY org_id ORDER BY org_id");
            query.build_query_as().fetch_all(pool).await
        })?)
    }

    async fn metadata_trend(
        &self,
        org_id: Option<OrgId>,
        key: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
        bucket: std::time::Duration,
    ) -> Result<Vec<TrendRow>> {
        let bucket_ms = i64::try_from(bucket.as_millis()).unwrap_or(i64::MAX).max(1);
        let rows: Vec<(i64, String, String, i64)> = with_pool!(&self.reader, pool => {
            let mut query = query_builder(pool, "SELECT (j.created_at / ");
            query
                .push_bind(bucket_ms)
                .push(") * ")
                .push_bind(bucket_ms)
                .push(
                    ", m.value, j.status, COUNT(*) FROM job_metadata m \
                     JOIN jobs j ON j.id = m.job_id WHERE m.key = ",
                )
                .push_bind(key.to_string());
            if let Some(org_id) = org_id {
                query.push(" AND m.org_id = ").push_bind(org_id);
            }
            push_range!(query, "j.created_at", Some(to_millis(since)), Some(to_millis(until)));
            query.push(" GROUP BY 1, 2, 3 ORDER BY 1, 2, 3");
            query.build_query_as().fetch_all(pool).await
        })?;
        rows.into_iter()
            .map(|(bucket_start, value, status, jobs)| {
                Ok(TrendRow {
                    bucket_start,
                    value,
                    status: status_of(&status)?,
                    jobs,
                })
            })
            .collect()
    }

    async fn tags_with(
        &self,
        org_id: Option<OrgId>,
        key: &str,
        value: &str,
        limit: u32,
    ) -> Result<Vec<MetadataTag>> {
        let rows: Vec<(String, String, i64)> = with_pool!(&self.reader, pool => {
            let mut query = query_builder(
                pool,
                "SELECT m.key, m.value, COUNT(*) AS jobs FROM job_metadata f \
                 JOIN job_metadata m ON m.job_id = f.job_id AND m.key <> f.key WHERE f.key = ",
            );
            query
                .push_bind(key.to_string())
                .push(" AND f.value = ")
                .push_bind(value.to_string());
            if let Some(org_id) = org_id {
                query.push(" AND f.org_id = ").push_bind(org_id);
            }
            query
                .push(" GROUP BY m.key, m.value ORDER BY jobs DESC, m.key, m.value LIMIT ")
                .push_bind(i64::from(limit.clamp(1, 1000)));
            query.build_query_as().fetch_all(pool).await
        })?;
        Ok(rows
            .into_iter()
            .map(|(key, value, jobs)| MetadataTag { key, value, jobs })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_days_of_a_window() {
        assert_eq!(full_days(None, None), Some((None, None)));
        assert_eq!(
            full_days(Some(0), Some(DAY_MS)),
            Some((Some(0), Some(DAY_MS)))
        );
        assert_eq!(
            full_days(Some(1), Some(3 * DAY_MS - 1)),
            Some((Some(DAY_MS), Some(2 * DAY_MS)))
        );
        assert_eq!(full_days(Some(1), Some(DAY_MS + 5)), None);
        assert_eq!(
            full_days(Some(DAY_MS + 1), None),
            Some((Some(2 * DAY_MS), None))
        );
    }
}
