//! The store's statements, written once in the dialect SQLite and PostgreSQL
//! share (`$N` placeholders, `ON CONFLICT … DO …`, `RETURNING`), and a
//! [`Dialect`] per database for the few that differ: claiming a queued job
//! (PostgreSQL adds `FOR UPDATE SKIP LOCKED`, SQLite names its indexes) and
//! matching a label inside the JSON `labels` column.

use std::sync::LazyLock;

use crate::store::row::JOB_COLUMNS;

/// The statements that differ between the databases, built once per database
/// (`store/sqlite.rs`, `store/postgres.rs`).
#[derive(Debug)]
pub(crate) struct Dialect {
    /// The lease statements: `[labels][one_org]`. Binds: $1 lease_id, $2 agent_id,
    /// $3 expires_at, $4 now[, $5 org_id][, next: the agent's labels as JSON].
    lease: [[String; 2]; 2],
    /// [`queued_orgs_sql`] in this dialect.
    pub queued_orgs: String,
    /// Text before and after the bound label in a `list_jobs` filter.
    pub label_filter: (&'static str, &'static str),
}

impl Dialect {
    /// `claim_suffix` ends the claiming sub-select; `agent_labels_filter` is the
    /// condition "every runner label of the job is one of the agent's", with `$L`
    /// standing for the parameter that holds the agent's labels (JSON).
    pub fn new(
        claim_suffix: &str,
        hint: IndexHint,
        label_filter: (&'static str, &'static str),
        agent_labels_filter: &str,
    ) -> Self {
        let lease = |labels: bool, one_org: bool| {
            if labels {
                lease_with_labels_sql(claim_suffix, one_org, agent_labels_filter, hint)
            } else {
                lease_sql(claim_suffix, one_org, hint)
            }
        };
        Dialect {
            lease: [
                [lease(false, false), lease(false, true)],
                [lease(true, false), lease(true, true)],
            ],
            queued_orgs: queued_orgs_sql(hint),
            label_filter,
        }
    }

    /// The lease statement for an agent with or without labels, of any org or
    /// (`one_org`) of the org bound as $5.
    pub fn lease(&self, labels: bool, one_org: bool) -> &str {
        &self.lease[usize::from(labels)][usize::from(one_org)]
    }
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
fn lease_with_labels_sql(
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
fn lease_sql(claim_suffix: &str, one_org: bool, hint: IndexHint) -> String {
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
fn queued_orgs_sql(hint: IndexHint) -> String {
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
     github_runner_name, policy_reasons, finished_at, traceparent";
const JOB_INSERT_VALUES: &str =
    "$1, $2, $3, $4, $20, $5, $6, $7, 1, 0, $8, $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18, $19, $21, $22, $23";

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
           status = CASE WHEN $1 = 'completed' AND status = 'queued' THEN 'cancelled' \
             WHEN $1 = 'completed' AND status = 'leased' AND $2 = 'cancelled' THEN 'cancelled' \
             ELSE status END, \
           finished_at = CASE WHEN $1 = 'completed' AND status = 'queued' THEN $4 \
             WHEN $1 = 'completed' AND status = 'leased' AND $2 = 'cancelled' THEN $4 \
             ELSE finished_at END, \
           failure_reason = CASE WHEN $1 = 'completed' AND status = 'queued' \
             THEN 'completed on GitHub before a Nimbus runner took it' \
             WHEN $1 = 'completed' AND status = 'leased' AND $2 = 'cancelled' \
             THEN 'cancelled on GitHub while it ran' ELSE failure_reason END, \
           lease_expires_at = CASE WHEN $1 = 'completed' AND status = 'leased' AND $2 = 'cancelled' \
             THEN NULL ELSE lease_expires_at END, \
           updated_at = $4 \
         WHERE github_job_id = $5 RETURNING {JOB_COLUMNS}"
    )
});

/// Keeps a workspace archive, or refreshes the time of one already kept (same
/// digest, same bytes).
pub(crate) const PUT_WORKSPACE: &str = "INSERT INTO workspaces \
     (org_id, digest, archive, size_bytes, created_at) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (org_id, digest) DO UPDATE SET created_at = excluded.created_at";

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
        "UPDATE jobs SET status = $1, exit_code = $2, failure_reason = $3, result = $4, \
         finished_at = $5, updated_at = $5, lease_expires_at = NULL \
         WHERE id = $6 AND status = 'leased' AND fencing_token = $7 AND agent_id = $8 \
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
