//! The store on SQL: one implementation of every store trait for SQLite and
//! PostgreSQL, on typed sqlx pools (see `db.rs` for why and how). The statements
//! live in [`statements`]; the backends (`store/sqlite.rs`, `store/postgres.rs`)
//! open the pools and pick the [`Dialect`] for the few that differ.

mod analytics;
pub(crate) mod statements;

use async_trait::async_trait;
use sqlx::query::Query;

use crate::db::{self, query_builder, Pool};
use crate::domain::{
    from_millis, to_millis, Completion, Job, JobId, JobStatus, Lease, Metadata, NewJob, Org, OrgId,
};
use crate::error::{Error, Result};
use crate::store::row::JobRow;
use crate::store::{
    Admission, Delivery, Enqueued, GithubJobUpdate, JobFilter, JobPage, LeaseRenewal, LeaseRequest,
    RateDecision, ReapReport,
};
use crate::with_pool;
pub(crate) use statements::Dialect;

/// The control plane's store on SQLite ([`SqlStore::sqlite`]) or PostgreSQL
/// ([`SqlStore::postgres`]).
#[derive(Debug, Clone)]
pub struct SqlStore {
    writer: Pool,
    reader: Pool,
    /// Rate-limit counters: losing the last few increments in a crash is harmless,
    /// so a backend may commit them asynchronously (PostgreSQL does).
    counters: Pool,
    dialect: &'static Dialect,
    /// Batches concurrent admissions of GitHub jobs (PostgreSQL).
    #[cfg(feature = "postgres")]
    batcher: Option<super::batch::AdmissionBatcher>,
}

impl SqlStore {
    pub(crate) fn new(
        writer: Pool,
        reader: Pool,
        counters: Pool,
        dialect: &'static Dialect,
    ) -> Self {
        SqlStore {
            writer,
            reader,
            counters,
            dialect,
            #[cfg(feature = "postgres")]
            batcher: None,
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn with_batcher(mut self, batcher: super::batch::AdmissionBatcher) -> Self {
        self.batcher = Some(batcher);
        self
    }

    /// The pool writes go to (for embedders that share the database, and tests).
    pub fn pool(&self) -> &Pool {
        &self.writer
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("encoding: {e}")))
}

/// A new job's columns that need encoding, encoded once.
struct Encoded {
    labels: String,
    metadata: String,
    spec: String,
    policy_reasons: Option<String>,
    now_ms: i64,
}

/// Binds $1..$23 of `INSERT_JOB`.
fn bind_new_job<'q, DB: sqlx::Database>(
    query: Query<'q, DB, DB::Arguments<'q>>,
    job: &'q NewJob,
    encoded: &'q Encoded,
) -> Query<'q, DB, DB::Arguments<'q>>
where
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let github = job.github.as_ref();
    query
        .bind(job.org_id)
        .bind(job.repo.full_name.as_str())
        .bind(job.repo.id)
        .bind(job.source.as_str())
        .bind(encoded.labels.as_str())
        .bind(encoded.metadata.as_str())
        .bind(encoded.spec.as_str())
        .bind(encoded.now_ms)
        .bind(github.map(|g| g.job_id))
        .bind(github.map(|g| g.run_id))
        .bind(github.map(|g| g.run_attempt))
        .bind(github.and_then(|g| g.workflow_name.as_deref()))
        .bind(github.and_then(|g| g.job_name.as_deref()))
        .bind(github.and_then(|g| g.head_sha.as_deref()))
        .bind(github.and_then(|g| g.head_branch.as_deref()))
        .bind(github.and_then(|g| g.installation_id))
        .bind(github.map(|g| g.status.as_str()))
        .bind(github.and_then(|g| g.conclusion.as_deref()))
        .bind(github.and_then(|g| g.runner_name.as_deref()))
        .bind(if job.rejected { "rejected" } else { "queued" })
        .bind(encoded.policy_reasons.as_deref())
        .bind(job.rejected.then_some(encoded.now_ms))
        .bind(job.traceparent.as_deref())
}

#[async_trait]
impl crate::store::JobQueue for SqlStore {
    async fn enqueue(
        &self,
        job: NewJob,
        admission: &Admission,
        now: time::OffsetDateTime,
    ) -> Result<Enqueued> {
        let labels = json(&job.labels)?;
        let metadata = json(&job.metadata)?;
        let spec = json(&job.spec)?;
        let policy_reasons = if job.policy_reasons.is_empty() {
            None
        } else {
            Some(json(&job.policy_reasons)?)
        };
        let github = job.github.as_ref();
        let now_ms = to_millis(now);
        #[cfg(feature = "postgres")]
        if let Some(batcher) = &self.batcher {
            if job.github.is_some() {
                return batcher
                    .admit(crate::store::batch::BatchJob {
                        job,
                        labels,
                        metadata,
                        spec,
                        policy_reasons,
                        now_ms,
                        delivery: admission.delivery.clone(),
                        rate_limit: admission.rate_limit.clone(),
                        now,
                    })
                    .await;
            }
        }
        // A replay is refused before it is counted against the rate limit.
        if let Some(delivery) = &admission.delivery {
            if crate::store::DeliveryLog::delivery_seen(self, &delivery.id).await? {
                return Err(Error::ReplayedDelivery {
                    delivery_id: delivery.id.clone(),
                });
            }
        }
        // The rate limit is counted first, on the `counters` pool: its hot
        // row must not stay locked while the admission transaction commits.
        if let Some(rate) = &admission.rate_limit {
            let (window_start, left_ms) = crate::store::rate_window(now, rate.interval);
            let (count, _): (i64, i64) = with_pool!(&self.counters, pool => sqlx::query_as(statements::RATE_LIMIT_HIT)
                .bind(&rate.key)
                .bind(window_start)
                .fetch_one(pool).await)?;
            if count > i64::from(rate.limit) {
                return Err(Error::RateLimited {
                    org_id: job.org_id,
                    retry_after: std::time::Duration::from_millis(left_ms.max(0) as u64),
                });
            }
        }
        let encoded = Encoded {
            labels,
            metadata,
            spec,
            policy_reasons,
            now_ms,
        };
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            // Returning early drops `tx`, which rolls everything back.
            if let Some(delivery) = &admission.delivery {
                let inserted = sqlx::query(statements::INSERT_DELIVERY)
                    .bind(&delivery.id)
                    .bind(to_millis(delivery.received_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    return Err(Error::ReplayedDelivery {
                        delivery_id: delivery.id.clone(),
                    });
                }
            }
            let inserted = bind_new_job(db::query(pool, &statements::INSERT_JOB), &job, &encoded)
                .fetch_optional(&mut *tx)
                .await?;
            let (row, created) = match inserted {
                Some(row) => (<JobRow as sqlx::FromRow<_>>::from_row(&row)?, true),
                None => {
                    let existing: JobRow =
                        sqlx::query_as(statements::SELECT_JOB_BY_GITHUB_ID.as_str())
                            .bind(github.map(|g| g.job_id))
                            .fetch_one(&mut *tx)
                            .await?;
                    (existing, false)
                }
            };
            let job_out = Job::try_from(row)?;
            if created && !job.metadata.is_empty() {
                let mut insert =
                    query_builder(pool, "INSERT INTO job_metadata (job_id, org_id, key, value) ");
                insert.push_values(job.metadata.iter(), |mut values, (key, value)| {
                    values
                        .push_bind(job_out.id)
                        .push_bind(job_out.org_id)
                        .push_bind(key.clone())
                        .push_bind(value.clone());
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Enqueued {
                job: job_out,
                created,
            })
        })
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let row: Option<JobRow> = with_pool!(&self.reader, pool => sqlx::query_as(statements::SELECT_JOB_BY_ID.as_str())
            .bind(id)
            .fetch_optional(pool).await)?;
        row.map(Job::try_from).transpose()
    }

    async fn get_github_job(&self, github_job_id: i64) -> Result<Option<Job>> {
        let row: Option<JobRow> = with_pool!(&self.reader, pool => sqlx::query_as(statements::SELECT_JOB_BY_GITHUB_ID.as_str())
                .bind(github_job_id)
                .fetch_optional(pool).await)?;
        row.map(Job::try_from).transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage> {
        let limit = filter.limit.clamp(1, crate::store::MAX_PAGE_SIZE);
        let rows: Vec<JobRow> = with_pool!(&self.reader, pool => {
            let mut query = query_builder(pool, statements::SELECT_JOBS.as_str());
            if let Some(org_id) = filter.org_id {
                query.push(" AND org_id = ").push_bind(org_id);
            }
            if let Some(status) = filter.status {
                query.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(repo) = &filter.repo {
                query.push(" AND repo = ").push_bind(repo.clone());
            }
            if let Some(label) = &filter.label {
                let (before, after) = self.dialect.label_filter;
                query.push(before).push_bind(label.clone()).push(after);
            }
            if let Some(key) = &filter.metadata_key {
                query
                    .push(" AND EXISTS (SELECT 1 FROM job_metadata m WHERE m.job_id = jobs.id AND m.key = ")
                    .push_bind(key.clone());
                if let Some(value) = &filter.metadata_value {
                    query.push(" AND m.value = ").push_bind(value.clone());
                }
                query.push(")");
            }
            if let Some(cursor) = filter.cursor {
                query.push(" AND id < ").push_bind(cursor);
            }
            query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit) + 1);
            query.build_query_as().fetch_all(pool).await
        })?;
        let mut jobs = rows
            .into_iter()
            .map(Job::try_from)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|job| job.id.to_string())
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }

    async fn apply_github_update(
        &self,
        update: &GithubJobUpdate,
        now: time::OffsetDateTime,
    ) -> Result<Option<Job>> {
        let row: Option<JobRow> = with_pool!(&self.writer, pool => sqlx::query_as(statements::APPLY_GITHUB_UPDATE.as_str())
            .bind(&update.status)
            .bind(&update.conclusion)
            .bind(&update.runner_name)
            .bind(to_millis(now))
            .bind(update.github_job_id)
            .fetch_optional(pool).await)?;
        row.map(Job::try_from).transpose()
    }

    async fn rebind_github_job(
        &self,
        job_id: JobId,
        github: &crate::domain::GithubJobRef,
        repo: &crate::domain::Repo,
        now: time::OffsetDateTime,
    ) -> Result<Option<JobId>> {
        let now_ms = to_millis(now);
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<JobRow> = sqlx::query_as(statements::SELECT_JOB_BY_ID.as_str())
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
            let current = match row {
                Some(row) => Job::try_from(row)?,
                None => return Err(Error::not_found(format!("job {job_id}"))),
            };
            let Some(old) = current.github.clone() else {
                return Err(Error::invalid(format!("job {job_id} is not a GitHub job")));
            };
            if old.job_id == github.job_id {
                return Ok(None);
            }
            let other: Option<JobRow> =
                sqlx::query_as(statements::SELECT_JOB_BY_GITHUB_ID.as_str())
                    .bind(github.job_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let other = other.map(Job::try_from).transpose()?;
            // Free the unique GitHub job id before handing it over.
            sqlx::query("UPDATE jobs SET github_job_id = NULL WHERE id = $1")
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            let set = |reference: &crate::domain::GithubJobRef, repo_name: &str, repo_id: Option<i64>, id: JobId| {
                db::query(pool, statements::SET_GITHUB_REF)
                    .bind(reference.job_id)
                    .bind(reference.run_id)
                    .bind(reference.run_attempt)
                    .bind(reference.workflow_name.clone())
                    .bind(reference.job_name.clone())
                    .bind(reference.head_sha.clone())
                    .bind(reference.head_branch.clone())
                    .bind(reference.installation_id)
                    .bind(reference.status.clone())
                    .bind(reference.conclusion.clone())
                    .bind(reference.runner_name.clone())
                    .bind(repo_name.to_string())
                    .bind(repo_id)
                    .bind(now_ms)
                    .bind(id)
            };
            if let Some(other) = &other {
                set(&old, &current.repo, current.repo_id, other.id)
                    .execute(&mut *tx)
                    .await?;
            }
            set(github, &repo.full_name, repo.id, job_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(other.map(|job| job.id))
        })
    }

    async fn cancel(
        &self,
        job_id: JobId,
        reason: &str,
        now: time::OffsetDateTime,
    ) -> Result<Option<Job>> {
        let row: Option<JobRow> = with_pool!(&self.writer, pool => sqlx::query_as(statements::CANCEL.as_str())
            .bind(reason)
            .bind(to_millis(now))
            .bind(job_id)
            .fetch_optional(pool).await)?;
        row.map(Job::try_from).transpose()
    }

    async fn queued_orgs(&self) -> Result<Vec<crate::store::QueuedOrg>> {
        let rows: Vec<(i64, Option<i64>, i64)> = with_pool!(&self.reader, pool => sqlx::query_as(self.dialect.queued_orgs.as_str())
            .fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(org_id, oldest, running)| {
                oldest.map(|oldest_job| crate::store::QueuedOrg {
                    org_id,
                    oldest_job,
                    running,
                })
            })
            .collect())
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>> {
        let rows: Vec<(String, i64)> = with_pool!(&self.reader, pool => sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .fetch_all(pool).await)?;
        rows.into_iter()
            .map(|(status, count)| Ok((status.parse::<JobStatus>()?, count)))
            .collect()
    }
}

#[async_trait]
impl crate::store::LeaseStore for SqlStore {
    async fn lease(
        &self,
        request: &LeaseRequest,
        now: time::OffsetDateTime,
    ) -> Result<Option<Lease>> {
        let lease_id = uuid::Uuid::new_v4().to_string();
        let expires_at = now + request.ttl;
        let sql = self
            .dialect
            .lease(request.labels.is_some(), request.org_id.is_some());
        let labels = match &request.labels {
            Some(labels) => Some(
                serde_json::to_string(labels)
                    .map_err(|e| Error::Internal(format!("encoding labels: {e}")))?,
            ),
            None => None,
        };
        let row: Option<JobRow> = with_pool!(&self.writer, pool => {
            let query = sqlx::query_as(sql)
                .bind(&lease_id)
                .bind(&request.agent_id)
                .bind(to_millis(expires_at))
                .bind(to_millis(now));
            let query = match request.org_id {
                Some(org_id) => query.bind(org_id),
                None => query,
            };
            let query = match &labels {
                Some(labels) => query.bind(labels),
                None => query,
            };
            query.fetch_optional(pool).await
        })?;
        let Some(row) = row else { return Ok(None) };
        let job = Job::try_from(row)?;
        Ok(Some(Lease {
            lease_id,
            fencing_token: job.fencing_token,
            expires_at: job.lease_expires_at.unwrap_or(expires_at),
            log_seq_base: crate::domain::log_seq_base(job.fencing_token),
            traceparent: None,
            job,
            cache_token: None,
            ingest_token: None,
        }))
    }

    async fn heartbeat(
        &self,
        job_id: JobId,
        agent_id: &str,
        fencing_token: i64,
        ttl: std::time::Duration,
        now: time::OffsetDateTime,
    ) -> Result<LeaseRenewal> {
        let expires_at = now + ttl;
        let row: Option<(Option<String>, i64, Option<i64>)> = with_pool!(&self.writer, pool => sqlx::query_as(statements::HEARTBEAT)
                .bind(to_millis(expires_at))
                .bind(to_millis(now))
                .bind(job_id)
                .bind(fencing_token)
                .bind(agent_id)
                .fetch_optional(pool).await)?;
        match row {
            Some((lease_id, fencing_token, expires)) => Ok(LeaseRenewal {
                job_id,
                lease_id: lease_id.unwrap_or_default(),
                fencing_token,
                expires_at: expires.map(from_millis).unwrap_or(expires_at),
            }),
            None => {
                let job = crate::store::JobQueue::get_job(self, job_id).await?;
                Err(crate::store::stale_or_missing(
                    job,
                    job_id,
                    agent_id,
                    fencing_token,
                ))
            }
        }
    }

    async fn complete(
        &self,
        job_id: JobId,
        agent_id: &str,
        completion: &Completion,
        now: time::OffsetDateTime,
    ) -> Result<Job> {
        let status: JobStatus = completion.status.into();
        let row: Option<JobRow> = with_pool!(&self.writer, pool => sqlx::query_as(statements::COMPLETE.as_str())
            .bind(status.as_str())
            .bind(completion.exit_code)
            .bind(&completion.reason)
            .bind(completion.result.as_ref().map(json).transpose()?)
            .bind(to_millis(now))
            .bind(job_id)
            .bind(completion.fencing_token)
            .bind(agent_id)
            .fetch_optional(pool).await)?;
        if let Some(row) = row {
            return Job::try_from(row);
        }
        // Nothing changed: either a repeat of a completion that already
        // landed (idempotent), or a stale token / unknown job.
        match crate::store::JobQueue::get_job(self, job_id).await? {
            Some(job)
                if job.status.is_terminal()
                    && job.fencing_token == completion.fencing_token
                    && job.agent_id.as_deref() == Some(agent_id)
                    && job.started_at.is_some() =>
            {
                Ok(job)
            }
            other => Err(crate::store::stale_or_missing(
                other,
                job_id,
                agent_id,
                completion.fencing_token,
            )),
        }
    }

    async fn reap_expired(
        &self,
        now: time::OffsetDateTime,
        max_attempts: u32,
    ) -> Result<ReapReport> {
        let rows: Vec<(i64, String)> = with_pool!(&self.writer, pool => sqlx::query_as(statements::REAP_EXPIRED)
            .bind(to_millis(now))
            .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
            .fetch_all(pool).await)?;
        let mut report = ReapReport::default();
        for (id, status) in rows {
            if status == "failed" {
                report.failed.push(id);
            } else {
                report.requeued.push(id);
            }
        }
        report.failed.sort_unstable();
        report.requeued.sort_unstable();
        Ok(report)
    }
}

#[async_trait]
impl crate::store::RateLimiter for SqlStore {
    async fn acquire(
        &self,
        key: &str,
        limit: u32,
        interval: std::time::Duration,
        now: time::OffsetDateTime,
    ) -> Result<RateDecision> {
        let (window_start, left_ms) = crate::store::rate_window(now, interval);
        let (count, _): (i64, i64) = with_pool!(&self.counters, pool => sqlx::query_as(statements::RATE_LIMIT_HIT)
            .bind(key)
            .bind(window_start)
            .fetch_one(pool).await)?;
        Ok(RateDecision {
            allowed: count <= i64::from(limit),
            count: u32::try_from(count).unwrap_or(u32::MAX),
            retry_after: std::time::Duration::from_millis(left_ms.max(0) as u64),
        })
    }
}

#[async_trait]
impl crate::store::MetadataStore for SqlStore {
    async fn job_metadata(&self, job_id: JobId) -> Result<Metadata> {
        let rows: Vec<(String, String)> = with_pool!(&self.reader, pool => sqlx::query_as("SELECT key, value FROM job_metadata WHERE job_id = $1")
                .bind(job_id)
                .fetch_all(pool).await)?;
        Ok(rows.into_iter().collect())
    }

    async fn metadata_values(
        &self,
        org_id: Option<OrgId>,
        key: &str,
        limit: u32,
    ) -> Result<Vec<(String, i64)>> {
        Ok(with_pool!(&self.reader, pool => {
            let mut query = query_builder(
                pool,
                "SELECT value, COUNT(*) AS jobs FROM job_metadata WHERE key = ",
            );
            query.push_bind(key.to_string());
            if let Some(org_id) = org_id {
                query.push(" AND org_id = ").push_bind(org_id);
            }
            query
                .push(" GROUP BY value ORDER BY jobs DESC, value LIMIT ")
                .push_bind(i64::from(limit.clamp(1, 10_000)));
            query.build_query_as().fetch_all(pool).await
        })?)
    }
}

#[async_trait]
impl crate::store::DeliveryLog for SqlStore {
    async fn delivery_seen(&self, delivery_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = with_pool!(&self.reader, pool => sqlx::query_as("SELECT received_at FROM webhook_deliveries WHERE delivery_id = $1")
                .bind(delivery_id)
                .fetch_optional(pool).await)?;
        Ok(row.is_some())
    }

    async fn record_delivery(&self, delivery: &Delivery) -> Result<bool> {
        let inserted = with_pool!(&self.writer, pool => sqlx::query(statements::INSERT_DELIVERY)
            .bind(&delivery.id)
            .bind(to_millis(delivery.received_at))
            .execute(pool).await.map(|done| done.rows_affected()))?;
        Ok(inserted > 0)
    }

    async fn prune_deliveries(&self, before: time::OffsetDateTime) -> Result<u64> {
        Ok(
            with_pool!(&self.writer, pool => sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
            .bind(to_millis(before))
            .execute(pool).await.map(|done| done.rows_affected()))?,
        )
    }
}

#[async_trait]
impl crate::store::OrgStore for SqlStore {
    async fn upsert_org(&self, id: OrgId, name: &str, now: time::OffsetDateTime) -> Result<Org> {
        let (id, name, created_at): (i64, String, i64) = with_pool!(&self.writer, pool => sqlx::query_as(statements::UPSERT_ORG)
            .bind(id)
            .bind(name)
            .bind(to_millis(now))
            .fetch_one(pool).await)?;
        Ok(Org {
            id,
            name,
            created_at: from_millis(created_at),
        })
    }

    async fn get_org(&self, id: OrgId) -> Result<Option<Org>> {
        let row: Option<(i64, String, i64)> = with_pool!(&self.reader, pool => sqlx::query_as("SELECT id, name, created_at FROM orgs WHERE id = $1")
                .bind(id)
                .fetch_optional(pool).await)?;
        Ok(row.map(|(id, name, created_at)| Org {
            id,
            name,
            created_at: from_millis(created_at),
        }))
    }

    async fn list_orgs(&self) -> Result<Vec<Org>> {
        let rows: Vec<(i64, String, i64)> = with_pool!(&self.reader, pool => sqlx::query_as("SELECT id, name, created_at FROM orgs ORDER BY id")
                .fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|(id, name, created_at)| Org {
                id,
                name,
                created_at: from_millis(created_at),
            })
            .collect())
    }
}

#[async_trait]
impl crate::store::WorkspaceStore for SqlStore {
    async fn put_workspace(
        &self,
        org_id: OrgId,
        digest: &str,
        archive: &[u8],
        now: time::OffsetDateTime,
        org_quota_bytes: u64,
    ) -> Result<u64> {
        let size = i64::try_from(archive.len())
            .map_err(|_| Error::invalid("workspace archive too large"))?;
        with_pool!(&self.writer, pool => sqlx::query(statements::PUT_WORKSPACE)
            .bind(org_id)
            .bind(digest)
            .bind(archive)
            .bind(size)
            .bind(to_millis(now))
            .execute(pool).await.map(|_| ()))?;
        // Newest first: what still fits after the one just put stays.
        let kept: Vec<(String, i64)> = with_pool!(&self.writer, pool => sqlx::query_as(
            "SELECT digest, size_bytes FROM workspaces WHERE org_id = $1 AND digest <> $2 \
             ORDER BY created_at DESC, digest")
            .bind(org_id)
            .bind(digest)
            .fetch_all(pool).await)?;
        let mut used = u64::try_from(size).unwrap_or(u64::MAX);
        let mut evicted = 0;
        for (other, bytes) in kept {
            used = used.saturating_add(u64::try_from(bytes).unwrap_or(0));
            if used > org_quota_bytes {
                evicted += with_pool!(&self.writer, pool => sqlx::query(
                    "DELETE FROM workspaces WHERE org_id = $1 AND digest = $2")
                    .bind(org_id)
                    .bind(&other)
                    .execute(pool).await.map(|done| done.rows_affected()))?;
            }
        }
        Ok(evicted)
    }

    async fn get_workspace(&self, org_id: OrgId, digest: &str) -> Result<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> = with_pool!(&self.reader, pool => sqlx::query_as(
            "SELECT archive FROM workspaces WHERE org_id = $1 AND digest = $2")
            .bind(org_id)
            .bind(digest)
            .fetch_optional(pool).await)?;
        Ok(row.map(|(archive,)| archive))
    }

    async fn prune_workspaces(&self, before: time::OffsetDateTime) -> Result<u64> {
        Ok(
            with_pool!(&self.writer, pool => sqlx::query("DELETE FROM workspaces WHERE created_at < $1")
            .bind(to_millis(before))
            .execute(pool).await.map(|done| done.rows_affected()))?,
        )
    }
}

#[async_trait]
impl crate::store::Store for SqlStore {
    fn backend(&self) -> &'static str {
        self.writer.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.reader.ping().await
    }
}
