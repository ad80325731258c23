//! The `jobs` row as both backends return it, and its conversion to [`Job`].

use crate::domain::{from_millis, GithubJobRef, Job, JobSpec, Metadata};
use crate::error::{Error, Result};

/// Columns selected wherever a whole job is read (keep in step with [`JobRow`]).
pub(crate) const JOB_COLUMNS: &str =
    "id, org_id, repo, repo_id, source, status, labels, metadata, \
    spec, attempt, fencing_token, lease_id, agent_id, lease_expires_at, exit_code, failure_reason, \
    policy_reasons, created_at, updated_at, started_at, finished_at, github_job_id, github_run_id, \
    github_run_attempt, github_workflow_name, github_job_name, github_head_sha, \
    github_head_branch, github_installation_id, github_status, github_conclusion, \
    github_runner_name, traceparent, result";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JobRow {
    id: i64,
    org_id: i64,
    repo: String,
    repo_id: Option<i64>,
    source: String,
    status: String,
    labels: String,
    metadata: String,
    spec: String,
    attempt: i32,
    fencing_token: i64,
    lease_id: Option<String>,
    agent_id: Option<String>,
    lease_expires_at: Option<i64>,
    exit_code: Option<i32>,
    failure_reason: Option<String>,
    policy_reasons: Option<String>,
    created_at: i64,
    updated_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    github_job_id: Option<i64>,
    github_run_id: Option<i64>,
    github_run_attempt: Option<i64>,
    github_workflow_name: Option<String>,
    github_job_name: Option<String>,
    github_head_sha: Option<String>,
    github_head_branch: Option<String>,
    github_installation_id: Option<i64>,
    github_status: Option<String>,
    github_conclusion: Option<String>,
    github_runner_name: Option<String>,
    traceparent: Option<String>,
    result: Option<String>,
}

fn corrupt(column: &str, id: i64, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("job {id}: stored {column} does not decode: {e}"))
}

impl TryFrom<JobRow> for Job {
    type Error = Error;

    fn try_from(row: JobRow) -> Result<Job> {
        let id = row.id;
        let labels: Vec<String> =
            serde_json::from_str(&row.labels).map_err(|e| corrupt("labels", id, e))?;
        let metadata: Metadata =
            serde_json::from_str(&row.metadata).map_err(|e| corrupt("metadata", id, e))?;
        let spec: JobSpec = serde_json::from_str(&row.spec).map_err(|e| corrupt("spec", id, e))?;
        let github = row.github_job_id.map(|job_id| GithubJobRef {
            job_id,
            run_id: row.github_run_id.unwrap_or_default(),
            run_attempt: row.github_run_attempt.unwrap_or(1),
            workflow_name: row.github_workflow_name,
            job_name: row.github_job_name,
            head_sha: row.github_head_sha,
            head_branch: row.github_head_branch,
            installation_id: row.github_installation_id,
            status: row.github_status.unwrap_or_default(),
            conclusion: row.github_conclusion,
            runner_name: row.github_runner_name,
        });
        Ok(Job {
            id,
            org_id: row.org_id,
            repo: row.repo,
            repo_id: row.repo_id,
            source: row.source.parse().map_err(|e| corrupt("source", id, e))?,
            status: row.status.parse().map_err(|e| corrupt("status", id, e))?,
            labels,
            metadata,
            attempt: row.attempt,
            fencing_token: row.fencing_token,
            spec,
            github,
            lease_id: row.lease_id,
            agent_id: row.agent_id,
            lease_expires_at: row.lease_expires_at.map(from_millis),
            exit_code: row.exit_code,
            failure_reason: row.failure_reason,
            policy_reasons: match row.policy_reasons {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| corrupt("policy_reasons", id, e))?
                }
                None => Vec::new(),
            },
            created_at: from_millis(row.created_at),
            updated_at: from_millis(row.updated_at),
            started_at: row.started_at.map(from_millis),
            finished_at: row.finished_at.map(from_millis),
            traceparent: row.traceparent,
            result: match row.result {
                Some(text) => {
                    Some(serde_json::from_str(&text).map_err(|e| corrupt("result", id, e))?)
                }
                None => None,
            },
        })
    }
}
