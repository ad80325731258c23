//! SQL shared by the SQLite and PostgreSQL stores.
//!
//! Both dialects accept `$N` placeholders, `ON CONFLICT … DO …` and `RETURNING`, so
//! most statements are written once here. [`impl_shared_store!`] implements the
//! store traits for a backend type from these statements; the backend supplies the
//! two places where the dialects differ through [`Dialect`]: claiming a queued job
//! (PostgreSQL adds `FOR UPDATE SKIP LOCKED`) and matching a label inside the JSON
//! `labels` column.

use std::sync::LazyLock;

use super::row::JOB_COLUMNS;

/// What differs between the SQL dialects.
pub(crate) trait Dialect {
    /// `UPDATE jobs … RETURNING <JOB_COLUMNS>` that claims the oldest queued job,
    /// of any org or (`one_org`) of the org bound as $5.
    /// Binds: $1 lease_id, $2 agent_id, $3 expires_at, $4 now[, $5 org_id].
    fn lease_sql(one_org: bool) -> &'static str;
    /// Where admissions of GitHub jobs are batched, for dialects that batch.
    #[cfg(feature = "postgres")]
    fn admission_batcher(&self) -> Option<&super::batch::AdmissionBatcher> {
        None
    }
    /// Text before and after the bound label in a `list_jobs` filter.
    const LABEL_FILTER: (&'static str, &'static str);
    /// The lease condition "every runner label of the job is one of the agent's",
    /// with `$L` standing for the parameter that holds the agent's labels (JSON).
    const AGENT_LABELS_FILTER: &'static str;
    /// The lease statement for agents with labels.
    fn lease_with_labels_sql(one_org: bool) -> &'static str;
    /// [`queued_orgs_sql`] in this dialect.
    fn queued_orgs_sql() -> &'static str;
}

/// How a dialect makes a statement walk a given index. SQLite needs `INDEXED BY`:
/// left to itself it read `MIN(org_id)` of the queued jobs through `jobs_by_status`
/// (every queued job), counted an org's running jobs through `jobs_by_org` (every
/// job the org ever ran), and, with statistics of a queue of one org, claimed the
/// org's oldest job by walking the table in id order (every finished job, on each
/// lease) — the fair-share lease benchmark ran at 60 % of today's. PostgreSQL picks
/// the partial indexes from their predicates by itself.
pub(crate) type IndexHint = fn(&str) -> String;

/// SQLite's [`IndexHint`].
pub(crate) fn indexed_by(index: &str) -> String {
    format!(" INDEXED BY {index}")
}

/// PostgreSQL's [`IndexHint`]: none.
#[cfg(feature = "postgres")]
pub(crate) fn planner_picks(_index: &str) -> String {
    String::new()
}

/// [`lease_sql`] that also requires the job's runner labels to be the agent's.
pub(crate) fn lease_with_labels_sql(
    claim_suffix: &str,
    one_org: bool,
    filter: &str,
    hint: IndexHint,
) -> String {
    let parameter = if one_org { "$6" } else { "$5" };
    let org_filter = if one_org { " AND org_id = $5" } else { "" };
    let index = if one_org {
        hint("jobs_queued_by_org")
    } else {
        String::new()
    };
    let label_filter = filter.replace("$L", parameter);
    format!(
        "UPDATE jobs SET status = 'leased', fencing_token = fencing_token + 1, lease_id = $1, \
         agent_id = $2, lease_expires_at = $3, started_at = COALESCE(started_at, $4), updated_at = $4 \
         WHERE id = (SELECT id FROM jobs{index} WHERE status = 'queued'{org_filter}{label_filter} \
         ORDER BY id LIMIT 1{claim_suffix}) RETURNING {JOB_COLUMNS}"
    )
}

/// The lease statement, with the dialect's claim clause. Two variants, not one with
/// `($5 IS NULL OR org_id = $5)`: PostgreSQL's generic plan for that form scans and
/// sorts every queued job (11 ms per lease with 15,000 queued, measured), while each
/// variant walks an index in id order and stops at the first claimable row.
pub(crate) fn lease_sql(claim_suffix: &str, one_org: bool, hint: IndexHint) -> String {
    let org_filter = if one_org { " AND org_id = $5" } else { "" };
    let index = if one_org {
        hint("jobs_queued_by_org")
    } else {
        String::new()
    };
    format!(
        "UPDATE jobs SET status = 'leased', fencing_token = fencing_token + 1, lease_id = $1, \
         agent_id = $2, lease_expires_at = $3, started_at = COALESCE(started_at, $4), updated_at = $4 \
         WHERE id = (SELECT id FROM jobs{index} WHERE status = 'queued'{org_filter} \
         ORDER BY id LIMIT 1{claim_suffix}) RETURNING {JOB_COLUMNS}"
    )
}

/// The orgs with queued jobs, by a skip scan of the `jobs_queued_by_org` partial
/// index (one probe per org, not one row per job: an org with 100,000 queued jobs
/// costs what an org with one does), each with its oldest queued job and its
/// number of running (leased) jobs.
pub(crate) fn queued_orgs_sql(hint: IndexHint) -> String {
    let queued = hint("jobs_queued_by_org");
    let leased = hint("jobs_lease_expiry");
    format!(
        "WITH RECURSIVE busy(org_id) AS ( \
           SELECT MIN(org_id) FROM jobs{queued} WHERE status = 'queued' \
           UNION ALL \
           SELECT (SELECT MIN(j.org_id) FROM jobs j{queued} WHERE j.status = 'queued' AND j.org_id > busy.org_id) \
           FROM busy WHERE busy.org_id IS NOT NULL \
         ) \
         SELECT busy.org_id, \
           (SELECT MIN(j.id) FROM jobs j{queued} WHERE j.status = 'queued' AND j.org_id = busy.org_id) AS oldest, \
           (SELECT COUNT(*) FROM jobs j{leased} WHERE j.status = 'leased' AND j.org_id = busy.org_id) AS running \
         FROM busy WHERE busy.org_id IS NOT NULL"
    )
}

pub(crate) const INSERT_DELIVERY: &str =
    "INSERT INTO webhook_deliveries (delivery_id, received_at) \
     VALUES ($1, $2) ON CONFLICT (delivery_id) DO NOTHING";

pub(crate) static INSERT_JOB: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({JOB_INSERT_VALUES}) \
         ON CONFLICT (github_job_id) DO NOTHING RETURNING {JOB_COLUMNS}"
    )
});

/// `INSERT_JOB`'s columns (shared with the batched admission) and values.
pub(crate) const JOB_INSERT_COLUMNS: &str =
    "org_id, repo, repo_id, source, status, labels, metadata, spec, \
     attempt, fencing_token, created_at, updated_at, github_job_id, github_run_id, \
     github_run_attempt, github_workflow_name, github_job_name, github_head_sha, \
     github_head_branch, github_installation_id, github_status, github_conclusion, \
     github_runner_name, policy_reasons, finished_at";
const JOB_INSERT_VALUES: &str =
    "$1, $2, $3, $4, $20, $5, $6, $7, 1, 0, $8, $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18, $19, $21, $22";

/// A `WITH` item writing the metadata rows of the jobs in the `inserted` item.
#[cfg(feature = "postgres")]
pub(crate) const INSERT_METADATA_OF_INSERTED: &str = "metadata AS ( \
       INSERT INTO job_metadata (job_id, org_id, key, value) \
       SELECT inserted.id, inserted.org_id, kv.key, kv.value \
       FROM inserted CROSS JOIN LATERAL jsonb_each_text(inserted.metadata::jsonb) AS kv \
     )";

pub(crate) static SELECT_JOB_BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"));

pub(crate) static SELECT_JOB_BY_GITHUB_ID: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE github_job_id = $1"));

pub(crate) static SELECT_JOBS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1"));

pub(crate) static APPLY_GITHUB_UPDATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET \
           github_status = CASE WHEN github_status = 'completed' THEN github_status ELSE $1 END, \
           github_conclusion = COALESCE($2, github_conclusion), \
           github_runner_name = COALESCE($3, github_runner_name), \
           status = CASE WHEN $1 = 'completed' AND status = 'queued' THEN 'cancelled' ELSE status END, \
           finished_at = CASE WHEN $1 = 'completed' AND status = 'queued' THEN $4 ELSE finished_at END, \
           failure_reason = CASE WHEN $1 = 'completed' AND status = 'queued' \
             THEN 'completed on GitHub before a Nimbus runner took it' ELSE failure_reason END, \
           updated_at = $4 \
         WHERE github_job_id = $5 RETURNING {JOB_COLUMNS}"
    )
});

/// Sets a job's GitHub reference and repository (the runner-swap rebinding).
pub(crate) const SET_GITHUB_REF: &str = "UPDATE jobs SET github_job_id = $1, github_run_id = $2, \
     github_run_attempt = $3, github_workflow_name = $4, github_job_name = $5, github_head_sha = $6, \
     github_head_branch = $7, github_installation_id = $8, github_status = $9, github_conclusion = $10, \
     github_runner_name = $11, repo = $12, repo_id = $13, updated_at = $14 WHERE id = $15";

pub(crate) static CANCEL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'cancelled', failure_reason = $1, finished_at = $2, \
         updated_at = $2, lease_expires_at = NULL \
         WHERE id = $3 AND status IN ('queued', 'leased') RETURNING {JOB_COLUMNS}"
    )
});

pub(crate) const HEARTBEAT: &str = "UPDATE jobs SET lease_expires_at = $1, updated_at = $2 \
     WHERE id = $3 AND status = 'leased' AND fencing_token = $4 AND agent_id = $5 \
     RETURNING lease_id, fencing_token, lease_expires_at";

pub(crate) static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = $1, exit_code = $2, failure_reason = $3, finished_at = $4, \
         updated_at = $4, lease_expires_at = NULL \
         WHERE id = $5 AND status = 'leased' AND fencing_token = $6 AND agent_id = $7 \
         RETURNING {JOB_COLUMNS}"
    )
});

/// Binds: $1 now, $2 max_attempts.
pub(crate) const REAP_EXPIRED: &str = "UPDATE jobs SET \
       status = CASE WHEN attempt >= $2 THEN 'failed' ELSE 'queued' END, \
       failure_reason = CASE WHEN attempt >= $2 \
         THEN 'lease expired on the last allowed attempt (' || attempt || ')' ELSE failure_reason END, \
       finished_at = CASE WHEN attempt >= $2 THEN $1 ELSE NULL END, \
       agent_id = CASE WHEN attempt >= $2 THEN agent_id ELSE NULL END, \
       attempt = CASE WHEN attempt >= $2 THEN attempt ELSE attempt + 1 END, \
       lease_expires_at = NULL, updated_at = $1 \
     WHERE status = 'leased' AND lease_expires_at < $1 \
     RETURNING id, status";

/// Binds: $1 key, $2 start of the aligned window the request falls in.
pub(crate) const RATE_LIMIT_HIT: &str = "INSERT INTO rate_limits (key, window_start, count) \
     VALUES ($1, $2, 1) ON CONFLICT (key) DO UPDATE SET \
       count = CASE WHEN rate_limits.window_start = excluded.window_start \
                    THEN rate_limits.count + 1 ELSE 1 END, \
       window_start = excluded.window_start \
     RETURNING count, window_start";

/// Adds $3 requests to a counter. Binds: $1 key, $2 window start, $3 how many.
#[cfg(feature = "postgres")]
pub(crate) const RATE_LIMIT_ADD: &str = "INSERT INTO rate_limits (key, window_start, count) \
     VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET \
       count = CASE WHEN rate_limits.window_start = excluded.window_start \
                    THEN rate_limits.count + excluded.count ELSE excluded.count END, \
       window_start = excluded.window_start \
     RETURNING count";

pub(crate) const UPSERT_ORG: &str = "INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING id, name, created_at";

/// Implements every store trait but `Store` itself for `$store`, a struct with
/// `writer`, `reader` and `counters` pools of database `$db`, which also implements
/// [`Dialect`]. `counters` serves the rate-limit counters: losing the last few
/// increments in a crash is harmless, so a backend may commit them asynchronously.
macro_rules! impl_shared_store {
    ($store:ty, $db:ty) => {
        use $crate::domain::{
            from_millis as __from_millis, to_millis as __to_millis, Completion as __Completion,
            Job as __Job, JobId as __JobId, JobStatus as __JobStatus, Lease as __Lease,
            Metadata as __Metadata, NewJob as __NewJob, Org as __Org, OrgId as __OrgId,
        };
        use $crate::error::{Error as __Error, Result as __Result};
        use $crate::store::row::JobRow as __JobRow;
        use $crate::store::sql as __sql;
        use $crate::store::{
            Admission as __Admission, Delivery as __Delivery, Enqueued as __Enqueued, GithubJobUpdate as __GithubJobUpdate,
            JobFilter as __JobFilter, JobPage as __JobPage, LeaseRenewal as __LeaseRenewal,
            LeaseRequest as __LeaseRequest, RateDecision as __RateDecision,
            ReapReport as __ReapReport,
        };

        fn __json<T: serde::Serialize>(value: &T) -> __Result<String> {
            serde_json::to_string(value).map_err(|e| __Error::Internal(format!("encoding: {e}")))
        }

        /// A new job's columns that need encoding, encoded once.
        struct __Encoded {
            labels: String,
            metadata: String,
            spec: String,
            policy_reasons: Option<String>,
            now_ms: i64,
        }

        /// Binds $1..$22 of `INSERT_JOB`.
        fn __bind_new_job<'q>(
            query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
            job: &'q __NewJob,
            encoded: &'q __Encoded,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
            let github = job.github.as_ref();
            query
                .bind(job.org_id)
                .bind(&job.repo.full_name)
                .bind(job.repo.id)
                .bind(job.source.as_str())
                .bind(&encoded.labels)
                .bind(&encoded.metadata)
                .bind(&encoded.spec)
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
        }

        #[async_trait::async_trait]
        impl $crate::store::JobQueue for $store {
            async fn enqueue(
                &self,
                job: __NewJob,
                admission: &__Admission,
                now: time::OffsetDateTime,
            ) -> __Result<__Enqueued> {
                let labels = __json(&job.labels)?;
                let metadata = __json(&job.metadata)?;
                let spec = __json(&job.spec)?;
                let policy_reasons = if job.policy_reasons.is_empty() {
                    None
                } else {
                    Some(__json(&job.policy_reasons)?)
                };
                let github = job.github.as_ref();
                let now_ms = __to_millis(now);
                #[cfg(feature = "postgres")]
                if let Some(batcher) = <$store as __sql::Dialect>::admission_batcher(self) {
                    if job.github.is_some() {
                        return batcher
                            .admit($crate::store::batch::BatchJob {
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
                    if $crate::store::DeliveryLog::delivery_seen(self, &delivery.id).await? {
                        return Err(__Error::ReplayedDelivery {
                            delivery_id: delivery.id.clone(),
                        });
                    }
                }
                // The rate limit is counted first, on the `counters` pool: its hot
                // row must not stay locked while the admission transaction commits.
                if let Some(rate) = &admission.rate_limit {
                    let (window_start, left_ms) = $crate::store::rate_window(now, rate.interval);
                    let (count, _): (i64, i64) = sqlx::query_as(__sql::RATE_LIMIT_HIT)
                        .bind(&rate.key)
                        .bind(window_start)
                        .fetch_one(&self.counters)
                        .await?;
                    if count > i64::from(rate.limit) {
                        return Err(__Error::RateLimited {
                            org_id: job.org_id,
                            retry_after: std::time::Duration::from_millis(left_ms.max(0) as u64),
                        });
                    }
                }
                let encoded = __Encoded { labels, metadata, spec, policy_reasons, now_ms };
                let mut tx = self.writer.begin().await?;
                // Returning early drops `tx`, which rolls everything back.
                if let Some(delivery) = &admission.delivery {
                    let inserted = sqlx::query(__sql::INSERT_DELIVERY)
                        .bind(&delivery.id)
                        .bind(__to_millis(delivery.received_at))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if inserted == 0 {
                        return Err(__Error::ReplayedDelivery {
                            delivery_id: delivery.id.clone(),
                        });
                    }
                }
                let inserted = __bind_new_job(sqlx::query(__sql::INSERT_JOB.as_str()), &job, &encoded)
                    .fetch_optional(&mut *tx)
                    .await?;
                let (row, created) = match inserted {
                    Some(row) => (<__JobRow as sqlx::FromRow<_>>::from_row(&row)?, true),
                    None => {
                        let github_job_id = github.map(|g| g.job_id);
                        let existing: __JobRow =
                            sqlx::query_as(__sql::SELECT_JOB_BY_GITHUB_ID.as_str())
                                .bind(github_job_id)
                                .fetch_one(&mut *tx)
                                .await?;
                        (existing, false)
                    }
                };
                let job_out = __Job::try_from(row)?;
                if created && !job.metadata.is_empty() {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO job_metadata (job_id, org_id, key, value) ",
                    );
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
                Ok(__Enqueued { job: job_out, created })
            }

            async fn get_job(&self, id: __JobId) -> __Result<Option<__Job>> {
                let row: Option<__JobRow> = sqlx::query_as(__sql::SELECT_JOB_BY_ID.as_str())
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await?;
                row.map(__Job::try_from).transpose()
            }

            async fn get_github_job(&self, github_job_id: i64) -> __Result<Option<__Job>> {
                let row: Option<__JobRow> =
                    sqlx::query_as(__sql::SELECT_JOB_BY_GITHUB_ID.as_str())
                        .bind(github_job_id)
                        .fetch_optional(&self.reader)
                        .await?;
                row.map(__Job::try_from).transpose()
            }

            async fn list_jobs(&self, filter: &__JobFilter) -> __Result<__JobPage> {
                let limit = filter.limit.clamp(1, $crate::store::MAX_PAGE_SIZE);
                let mut query = sqlx::QueryBuilder::<$db>::new(__sql::SELECT_JOBS.as_str());
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
                    let (before, after) = <$store as __sql::Dialect>::LABEL_FILTER;
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
                let rows: Vec<__JobRow> =
                    query.build_query_as().fetch_all(&self.reader).await?;
                let mut jobs = rows
                    .into_iter()
                    .map(__Job::try_from)
                    .collect::<__Result<Vec<_>>>()?;
                let next_cursor = if jobs.len() > limit as usize {
                    jobs.truncate(limit as usize);
                    jobs.last().map(|job| job.id.to_string())
                } else {
                    None
                };
                Ok(__JobPage { jobs, next_cursor })
            }

            async fn apply_github_update(
                &self,
                update: &__GithubJobUpdate,
                now: time::OffsetDateTime,
            ) -> __Result<Option<__Job>> {
                let row: Option<__JobRow> = sqlx::query_as(__sql::APPLY_GITHUB_UPDATE.as_str())
                    .bind(&update.status)
                    .bind(&update.conclusion)
                    .bind(&update.runner_name)
                    .bind(__to_millis(now))
                    .bind(update.github_job_id)
                    .fetch_optional(&self.writer)
                    .await?;
                row.map(__Job::try_from).transpose()
            }

            async fn rebind_github_job(
                &self,
                job_id: __JobId,
                github: &$crate::domain::GithubJobRef,
                repo: &$crate::domain::Repo,
                now: time::OffsetDateTime,
            ) -> __Result<Option<__JobId>> {
                let now_ms = __to_millis(now);
                let mut tx = self.writer.begin().await?;
                let row: Option<__JobRow> = sqlx::query_as(__sql::SELECT_JOB_BY_ID.as_str())
                    .bind(job_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let current = match row {
                    Some(row) => __Job::try_from(row)?,
                    None => return Err(__Error::not_found(format!("job {job_id}"))),
                };
                let Some(old) = current.github.clone() else {
                    return Err(__Error::invalid(format!("job {job_id} is not a GitHub job")));
                };
                if old.job_id == github.job_id {
                    return Ok(None);
                }
                let other: Option<__JobRow> =
                    sqlx::query_as(__sql::SELECT_JOB_BY_GITHUB_ID.as_str())
                        .bind(github.job_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let other = other.map(__Job::try_from).transpose()?;
                // Free the unique GitHub job id before handing it over.
                sqlx::query("UPDATE jobs SET github_job_id = NULL WHERE id = $1")
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
                let set = |reference: &$crate::domain::GithubJobRef, repo_name: &str, repo_id: Option<i64>, id: __JobId| {
                    sqlx::query(__sql::SET_GITHUB_REF)
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
            }

            async fn cancel(
                &self,
                job_id: __JobId,
                reason: &str,
                now: time::OffsetDateTime,
            ) -> __Result<Option<__Job>> {
                let row: Option<__JobRow> = sqlx::query_as(__sql::CANCEL.as_str())
                    .bind(reason)
                    .bind(__to_millis(now))
                    .bind(job_id)
                    .fetch_optional(&self.writer)
                    .await?;
                row.map(__Job::try_from).transpose()
            }

            async fn queued_orgs(&self) -> __Result<Vec<$crate::store::QueuedOrg>> {
                let rows: Vec<(i64, Option<i64>, i64)> = sqlx::query_as(<$store as __sql::Dialect>::queued_orgs_sql())
                    .fetch_all(&self.reader)
                    .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(org_id, oldest, running)| {
                        oldest.map(|oldest_job| $crate::store::QueuedOrg {
                            org_id,
                            oldest_job,
                            running,
                        })
                    })
                    .collect())
            }

            async fn count_by_status(&self) -> __Result<Vec<(__JobStatus, i64)>> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                        .fetch_all(&self.reader)
                        .await?;
                rows.into_iter()
                    .map(|(status, count)| Ok((status.parse::<__JobStatus>()?, count)))
                    .collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::LeaseStore for $store {
            async fn lease(
                &self,
                request: &__LeaseRequest,
                now: time::OffsetDateTime,
            ) -> __Result<Option<__Lease>> {
                let lease_id = uuid::Uuid::new_v4().to_string();
                let expires_at = now + request.ttl;
                let sql = match &request.labels {
                    Some(_) => <$store as __sql::Dialect>::lease_with_labels_sql(request.org_id.is_some()),
                    None => <$store as __sql::Dialect>::lease_sql(request.org_id.is_some()),
                };
                let query = sqlx::query_as(sql)
                    .bind(&lease_id)
                    .bind(&request.agent_id)
                    .bind(__to_millis(expires_at))
                    .bind(__to_millis(now));
                let query = match request.org_id {
                    Some(org_id) => query.bind(org_id),
                    None => query,
                };
                let query = match &request.labels {
                    Some(labels) => query.bind(
                        serde_json::to_string(labels)
                            .map_err(|e| __Error::Internal(format!("encoding labels: {e}")))?,
                    ),
                    None => query,
                };
                let row: Option<__JobRow> = query.fetch_optional(&self.writer).await?;
                let Some(row) = row else { return Ok(None) };
                let job = __Job::try_from(row)?;
                Ok(Some(__Lease {
                    lease_id,
                    fencing_token: job.fencing_token,
                    expires_at: job.lease_expires_at.unwrap_or(expires_at),
                    log_seq_base: $crate::domain::log_seq_base(job.fencing_token),
                    job,
                    cache_token: None,
                    ingest_token: None,
                }))
            }

            async fn heartbeat(
                &self,
                job_id: __JobId,
                agent_id: &str,
                fencing_token: i64,
                ttl: std::time::Duration,
                now: time::OffsetDateTime,
            ) -> __Result<__LeaseRenewal> {
                let expires_at = now + ttl;
                let row: Option<(Option<String>, i64, Option<i64>)> =
                    sqlx::query_as(__sql::HEARTBEAT)
                        .bind(__to_millis(expires_at))
                        .bind(__to_millis(now))
                        .bind(job_id)
                        .bind(fencing_token)
                        .bind(agent_id)
                        .fetch_optional(&self.writer)
                        .await?;
                match row {
                    Some((lease_id, fencing_token, expires)) => Ok(__LeaseRenewal {
                        job_id,
                        lease_id: lease_id.unwrap_or_default(),
                        fencing_token,
                        expires_at: expires.map(__from_millis).unwrap_or(expires_at),
                    }),
                    None => {
                        let job = $crate::store::JobQueue::get_job(self, job_id).await?;
                        Err($crate::store::stale_or_missing(job, job_id, agent_id, fencing_token))
                    }
                }
            }

            async fn complete(
                &self,
                job_id: __JobId,
                agent_id: &str,
                completion: &__Completion,
                now: time::OffsetDateTime,
            ) -> __Result<__Job> {
                let status: __JobStatus = completion.status.into();
                let row: Option<__JobRow> = sqlx::query_as(__sql::COMPLETE.as_str())
                    .bind(status.as_str())
                    .bind(completion.exit_code)
                    .bind(&completion.reason)
                    .bind(__to_millis(now))
                    .bind(job_id)
                    .bind(completion.fencing_token)
                    .bind(agent_id)
                    .fetch_optional(&self.writer)
                    .await?;
                if let Some(row) = row {
                    return __Job::try_from(row);
                }
                // Nothing changed: either a repeat of a completion that already
                // landed (idempotent), or a stale token / unknown job.
                match $crate::store::JobQueue::get_job(self, job_id).await? {
                    Some(job)
                        if job.status.is_terminal()
                            && job.fencing_token == completion.fencing_token
                            && job.agent_id.as_deref() == Some(agent_id)
                            && job.started_at.is_some() =>
                    {
                        Ok(job)
                    }
                    other => Err($crate::store::stale_or_missing(
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
            ) -> __Result<__ReapReport> {
                let rows: Vec<(i64, String)> = sqlx::query_as(__sql::REAP_EXPIRED)
                    .bind(__to_millis(now))
                    .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
                    .fetch_all(&self.writer)
                    .await?;
                let mut report = __ReapReport::default();
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

        #[async_trait::async_trait]
        impl $crate::store::RateLimiter for $store {
            async fn acquire(
                &self,
                key: &str,
                limit: u32,
                interval: std::time::Duration,
                now: time::OffsetDateTime,
            ) -> __Result<__RateDecision> {
                let (window_start, left_ms) = $crate::store::rate_window(now, interval);
                let (count, _): (i64, i64) = sqlx::query_as(__sql::RATE_LIMIT_HIT)
                    .bind(key)
                    .bind(window_start)
                    .fetch_one(&self.counters)
                    .await?;
                Ok(__RateDecision {
                    allowed: count <= i64::from(limit),
                    count: u32::try_from(count).unwrap_or(u32::MAX),
                    retry_after: std::time::Duration::from_millis(left_ms.max(0) as u64),
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::MetadataStore for $store {
            async fn job_metadata(&self, job_id: __JobId) -> __Result<__Metadata> {
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT key, value FROM job_metadata WHERE job_id = $1")
                        .bind(job_id)
                        .fetch_all(&self.reader)
                        .await?;
                Ok(rows.into_iter().collect())
            }

            async fn metadata_values(
                &self,
                org_id: Option<__OrgId>,
                key: &str,
                limit: u32,
            ) -> __Result<Vec<(String, i64)>> {
                let mut query = sqlx::QueryBuilder::<$db>::new(
                    "SELECT value, COUNT(*) AS jobs FROM job_metadata WHERE key = ",
                );
                query.push_bind(key.to_string());
                if let Some(org_id) = org_id {
                    query.push(" AND org_id = ").push_bind(org_id);
                }
                query
                    .push(" GROUP BY value ORDER BY jobs DESC, value LIMIT ")
                    .push_bind(i64::from(limit.clamp(1, 10_000)));
                Ok(query.build_query_as().fetch_all(&self.reader).await?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::DeliveryLog for $store {
            async fn delivery_seen(&self, delivery_id: &str) -> __Result<bool> {
                let row: Option<(i64,)> =
                    sqlx::query_as("SELECT received_at FROM webhook_deliveries WHERE delivery_id = $1")
                        .bind(delivery_id)
                        .fetch_optional(&self.reader)
                        .await?;
                Ok(row.is_some())
            }

            async fn record_delivery(&self, delivery: &__Delivery) -> __Result<bool> {
                let inserted = sqlx::query(__sql::INSERT_DELIVERY)
                    .bind(&delivery.id)
                    .bind(__to_millis(delivery.received_at))
                    .execute(&self.writer)
                    .await?
                    .rows_affected();
                Ok(inserted > 0)
            }

            async fn prune_deliveries(&self, before: time::OffsetDateTime) -> __Result<u64> {
                Ok(sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
                    .bind(__to_millis(before))
                    .execute(&self.writer)
                    .await?
                    .rows_affected())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::OrgStore for $store {
            async fn upsert_org(
                &self,
                id: __OrgId,
                name: &str,
                now: time::OffsetDateTime,
            ) -> __Result<__Org> {
                let (id, name, created_at): (i64, String, i64) = sqlx::query_as(__sql::UPSERT_ORG)
                    .bind(id)
                    .bind(name)
                    .bind(__to_millis(now))
                    .fetch_one(&self.writer)
                    .await?;
                Ok(__Org { id, name, created_at: __from_millis(created_at) })
            }

            async fn get_org(&self, id: __OrgId) -> __Result<Option<__Org>> {
                let row: Option<(i64, String, i64)> =
                    sqlx::query_as("SELECT id, name, created_at FROM orgs WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.reader)
                        .await?;
                Ok(row.map(|(id, name, created_at)| __Org {
                    id,
                    name,
                    created_at: __from_millis(created_at),
                }))
            }

            async fn list_orgs(&self) -> __Result<Vec<__Org>> {
                let rows: Vec<(i64, String, i64)> =
                    sqlx::query_as("SELECT id, name, created_at FROM orgs ORDER BY id")
                        .fetch_all(&self.reader)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, name, created_at)| __Org {
                        id,
                        name,
                        created_at: __from_millis(created_at),
                    })
                    .collect())
            }
        }
    };
}
