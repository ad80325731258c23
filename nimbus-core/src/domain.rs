//! Domain types shared by every part of Nimbus: orgs, jobs, leases, metadata.
//!
//! Timestamps are `OffsetDateTime` in UTC and travel as RFC 3339 strings.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

pub use nimbus_policy::Reason as PolicyReason;

/// Job ids are positive 64-bit integers (ClickHouse `job_id UInt64`).
pub type JobId = i64;
/// Org ids are GitHub's numeric organisation (or user) ids.
pub type OrgId = i64;

/// Most labels a job may carry (GitHub allows 1–100 on a runner).
pub const MAX_LABELS: usize = 100;
/// Longest label, metadata key or value we store.
pub const MAX_LABEL_LEN: usize = 256;
/// Most steps a directly submitted job may have.
pub const MAX_STEPS: usize = 256;
/// Longest timeout a job may ask for (GitHub's own maximum is 6 h for hosted runners;
/// self-hosted jobs may run up to 5 days, we cap at one day).
pub const MAX_TIMEOUT_MINUTES: u32 = 24 * 60;
/// Default job timeout when the spec names none (GitHub's default is 360).
pub const DEFAULT_TIMEOUT_MINUTES: u32 = 360;
/// Largest workflow job (`JobSpec::workflow`, as JSON) a submission may carry.
pub const MAX_WORKFLOW_JOB_BYTES: usize = 512 * 1024;
/// Largest workflow result (`Completion::result`, as JSON) an agent may report.
pub const MAX_WORKFLOW_RESULT_BYTES: usize = 768 * 1024;

/// An organisation (or user account) that owns repositories and jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    /// GitHub's numeric id of the organisation or user.
    pub id: OrgId,
    /// The org's login or display name.
    pub name: String,
    /// When the org was first registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A repository as GitHub names it: `owner/name`, with GitHub's numeric id when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    /// GitHub's numeric repository id; `None` for direct jobs.
    pub id: Option<i64>,
    /// `owner/name`.
    pub full_name: String,
}

/// Where a job came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSource {
    /// A GitHub `workflow_job` webhook.
    Github,
    /// `POST /api/jobs` with `run:` steps.
    Direct,
}

impl JobSource {
    /// The wire and database name: `github` or `direct`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::Github => "github",
            JobSource::Direct => "direct",
        }
    }
}

impl FromStr for JobSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "github" => Ok(JobSource::Github),
            "direct" => Ok(JobSource::Direct),
            other => Err(Error::invalid(format!("unknown job source {other:?}"))),
        }
    }
}

/// The lifecycle of a job (docs/architecture.md, "Job lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for an agent to lease it.
    Queued,
    /// Leased to an agent and running (or about to).
    Leased,
    /// Finished with success.
    Succeeded,
    /// Finished with a failure, or its lease expired on the last allowed attempt.
    Failed,
    /// Ran past its timeout.
    TimedOut,
    /// Stopped before it finished: by its org, an admin, GitHub or its agent.
    Cancelled,
    /// Denied by the admission policy; never leased.
    Rejected,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Leased,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::TimedOut,
        JobStatus::Cancelled,
        JobStatus::Rejected,
    ];

    /// The wire and database name, e.g. `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Leased => "leased",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Rejected => "rejected",
        }
    }

    /// A terminal job never changes status again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded
                | JobStatus::Failed
                | JobStatus::TimedOut
                | JobStatus::Cancelled
                | JobStatus::Rejected
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown job status {s:?}; expected one of queued, leased, succeeded, failed, timed_out, cancelled, rejected"
                ))
            })
    }
}

/// How an agent finished a job: the statuses `complete` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionStatus {
    /// The job succeeded.
    Succeeded,
    /// The job failed.
    Failed,
    /// The job ran past its timeout.
    TimedOut,
    /// The job was stopped before it finished.
    Cancelled,
}

impl From<CompletionStatus> for JobStatus {
    fn from(status: CompletionStatus) -> Self {
        match status {
            CompletionStatus::Succeeded => JobStatus::Succeeded,
            CompletionStatus::Failed => JobStatus::Failed,
            CompletionStatus::TimedOut => JobStatus::TimedOut,
            CompletionStatus::Cancelled => JobStatus::Cancelled,
        }
    }
}

/// One `run:` step of a directly submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A name shown in logs and reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The shell script to run.
    pub run: String,
    /// Environment variables of this step; they win over the job's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Directory to run in, relative to the job's workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
}

/// What a job runs. GitHub jobs carry no steps: the Actions runner fetches them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The commands to run, in order; empty for GitHub jobs.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Environment variables for every step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How long the job may run, in minutes (1 to [`MAX_TIMEOUT_MINUTES`]).
    pub timeout_minutes: u32,
    /// A GitHub Actions workflow job (`nimbus run` against a control plane), run
    /// instead of `steps`: its steps keep their expressions, which the guest
    /// evaluates as GitHub's runner would. The control plane keeps it as it came
    /// (bounded by [`MAX_WORKFLOW_JOB_BYTES`]); the host agent reads it (nimbus-vmm's
    /// `workflow::WorkflowJob`) and fails the job with the reason when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<serde_json::Value>,
    /// The working tree the job's VM starts with: the sha256 (64 hex digits) of a
    /// workspace archive uploaded to the job's org (`PUT /api/workspaces/{sha256}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            steps: Vec::new(),
            env: BTreeMap::new(),
            timeout_minutes: DEFAULT_TIMEOUT_MINUTES,
            workflow: None,
            workspace: None,
        }
    }
}

/// The GitHub side of a job that came from a `workflow_job` webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GithubJobRef {
    /// GitHub's id of the workflow job.
    pub job_id: i64,
    /// GitHub's id of the workflow run.
    pub run_id: i64,
    /// Which attempt of the run this is (1 for the first).
    pub run_attempt: i64,
    /// The workflow's name.
    pub workflow_name: Option<String>,
    /// The job's name within the workflow.
    pub job_name: Option<String>,
    /// The commit the job runs on.
    pub head_sha: Option<String>,
    /// The branch the job runs on.
    pub head_branch: Option<String>,
    /// The GitHub App installation the webhook came through.
    pub installation_id: Option<i64>,
    /// GitHub's own view: `queued`, `waiting`, `in_progress`, `completed`.
    pub status: String,
    /// GitHub's conclusion once completed, e.g. `success` or `failure`.
    pub conclusion: Option<String>,
    /// The runner GitHub assigned the job to.
    pub runner_name: Option<String>,
}

/// Job metadata: `param:KEY=VALUE` and `meta:KEY=VALUE` labels, keyed by KEY.
pub type Metadata = BTreeMap<String, String>;

/// A job as stored and as served by `GET /api/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique, assigned by the store.
    pub id: JobId,
    /// The org that owns the job.
    pub org_id: OrgId,
    /// The repository, `owner/name`.
    pub repo: String,
    /// GitHub's numeric repository id, when known.
    pub repo_id: Option<i64>,
    /// Where the job came from.
    pub source: JobSource,
    /// Where the job is in its lifecycle.
    pub status: JobStatus,
    /// Runner labels an agent must offer to lease the job.
    pub labels: Vec<String>,
    /// Taken from the `param:`/`meta:` labels and the submission's `metadata`.
    pub metadata: Metadata,
    /// 1 for the first lease; +1 each time an expired lease sends the job back.
    pub attempt: i32,
    /// The fencing token of the newest lease (0 before the first lease).
    pub fencing_token: i64,
    /// What the job runs.
    pub spec: JobSpec,
    /// Set for jobs that came from a GitHub webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubJobRef>,
    /// The newest lease's id (kept after completion, for the record).
    pub lease_id: Option<String>,
    /// The agent holding (or that last held) the lease.
    pub agent_id: Option<String>,
    /// When the current lease expires unless renewed; `None` when not leased.
    #[serde(with = "time::serde::rfc3339::option")]
    pub lease_expires_at: Option<OffsetDateTime>,
    /// The exit code the agent reported, if any.
    pub exit_code: Option<i32>,
    /// Why the job ended as it did (a failure, a cancellation), when known.
    pub failure_reason: Option<String>,
    /// Rules of the admission policy that matched: why the job is `rejected`, or
    /// what a dry-run policy would have denied.
    #[serde(default)]
    pub policy_reasons: Vec<PolicyReason>,
    /// When the job was queued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the job last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When the job was first leased.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When the job reached a terminal status.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The W3C trace context of the job's admission, when spans are exported
    /// (docs/observability.md): what its lease, run and log lines continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// What a workflow job reported when it ended (its `outputs`, step summary and
    /// annotations), as its agent completed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// Everything needed to put a job in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The org that will own the job.
    pub org_id: OrgId,
    /// The repository the job is for.
    pub repo: Repo,
    /// Where the job comes from.
    pub source: JobSource,
    /// Runner labels an agent must offer to lease the job.
    pub labels: Vec<String>,
    /// Metadata rows stored with the job.
    pub metadata: Metadata,
    /// What the job runs.
    pub spec: JobSpec,
    /// Set for jobs that come from a GitHub webhook.
    pub github: Option<GithubJobRef>,
    /// Recorded as `rejected` instead of queued (the policy denied it).
    pub rejected: bool,
    /// The matching rules of the admission policy.
    pub policy_reasons: Vec<PolicyReason>,
    /// The admission's trace context (`Job::traceparent`).
    pub traceparent: Option<String>,
}

impl NewJob {
    /// What the admission policy judges.
    pub fn policy_facts(&self) -> nimbus_policy::JobFacts {
        nimbus_policy::JobFacts {
            org_id: self.org_id,
            repository: self.repo.full_name.clone(),
            workflow_name: self.github.as_ref().and_then(|g| g.workflow_name.clone()),
            job_name: self.github.as_ref().and_then(|g| g.job_name.clone()),
            labels: self.labels.clone(),
            timeout_minutes: self.spec.timeout_minutes,
        }
    }
}

/// Line numbers one lease of a job may use for its log lines.
pub const LOG_SEQS_PER_LEASE: u64 = 1 << 32;

/// Where the log line numbers of the lease with `fencing_token` start: the first
/// lease's lines are 1, 2, …; each later lease (a job run again after its agent
/// was lost) writes above every earlier one, so its lines are kept apart from, and
/// sort after, those of the attempts before it.
pub fn log_seq_base(fencing_token: i64) -> u64 {
    u64::try_from(fencing_token.saturating_sub(1))
        .unwrap_or(0)
        .saturating_mul(LOG_SEQS_PER_LEASE)
}

/// A granted lease: the job, plus what the agent must present to keep or finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased job, as stored after the lease.
    pub job: Job,
    /// A fresh id (a UUID) for this lease.
    pub lease_id: String,
    /// Increases with every lease of the job; heartbeats and completions must
    /// present it, so a lost agent's late reports are refused.
    pub fencing_token: i64,
    /// When the lease ends unless renewed by a heartbeat.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// A cache token for the job's VM (`ACTIONS_RUNTIME_TOKEN`): the job's org,
    /// repository and ref, write permission, valid for the job's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_token: Option<String>,
    /// A log ingest token for this lease's lines (`POST /api/logs` of the logging
    /// pipeline): this job, org, repository and agent, line numbers from
    /// `log_seq_base` on, valid for the job's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_token: Option<String>,
    /// The lease's first log line is `log_seq_base + 1`.
    #[serde(default)]
    pub log_seq_base: u64,
    /// The trace context of this lease's span in the job's trace: the agent's
    /// run of the job continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Job {
    /// The job as an API answer shows it: the secrets a workflow job carries for
    /// its guest (its `secrets` context and `github.token`) replaced by `***`. Only
    /// the lease, which its agent needs to run the job, carries them.
    pub fn without_secrets(mut self) -> Job {
        let contexts = self
            .spec
            .workflow
            .as_mut()
            .and_then(|workflow| workflow.get_mut("contexts"))
            .and_then(serde_json::Value::as_object_mut);
        if let Some(contexts) = contexts {
            if let Some(serde_json::Value::Object(secrets)) = contexts.get_mut("secrets") {
                for value in secrets.values_mut() {
                    *value = serde_json::Value::String("***".into());
                }
            }
            if let Some(token) = contexts
                .get_mut("github")
                .and_then(|github| github.get_mut("token"))
                .filter(|token| token.as_str().is_some_and(|t| !t.is_empty()))
            {
                *token = serde_json::Value::String("***".into());
            }
        }
        self
    }

    /// The git ref the job runs on, where its cache saves go: the GitHub job's
    /// branch, else a `ref` metadata key or `GITHUB_REF` in the job's env, else
    /// the default branch.
    pub fn git_ref(&self) -> String {
        let named = self
            .github
            .as_ref()
            .and_then(|g| g.head_branch.clone())
            .or_else(|| self.metadata.get("ref").cloned())
            .or_else(|| self.spec.env.get("GITHUB_REF").cloned());
        match named {
            Some(name) if name.starts_with("refs/") => name,
            Some(name) if !name.is_empty() => format!("refs/heads/{name}"),
            _ => crate::cache_token::DEFAULT_BRANCH.to_string(),
        }
    }
}

/// What the guest starts a GitHub job's Actions runner with
/// (`GET /api/jobs/{id}/runner-config`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerConfig {
    /// The runner's name, as registered with GitHub.
    pub runner_name: String,
    /// GitHub's id of the runner.
    pub runner_id: i64,
    /// A credential: never log it.
    pub encoded_jit_config: String,
}

impl fmt::Debug for RunnerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("runner_name", &self.runner_name)
            .field("runner_id", &self.runner_id)
            .field("encoded_jit_config", &"***")
            .finish()
    }
}

/// A host agent, as named by the `sub` of its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// The agent's id.
    pub id: String,
}

/// An agent's report that a job is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The fencing token of the lease being completed.
    pub fencing_token: i64,
    /// How the job ended.
    pub status: CompletionStatus,
    /// The job's exit code, when it ran to one.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why, at most [`MAX_COMPLETION_REASON_BYTES`] (longer ones are refused: use
    /// [`fit_reason`]).
    #[serde(default)]
    pub reason: Option<String>,
    /// A workflow job's result (at most [`MAX_WORKFLOW_RESULT_BYTES`] as JSON),
    /// kept as the job's `result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// Longest completion reason the control plane keeps.
pub const MAX_COMPLETION_REASON_BYTES: usize = 4096;

/// `reason` cut to [`MAX_COMPLETION_REASON_BYTES`]: its first line (what failed) and
/// as much of its end (the last console lines) as fits, joined by `…`. A reason
/// that fits is returned unchanged.
pub fn fit_reason(reason: String) -> String {
    if reason.len() <= MAX_COMPLETION_REASON_BYTES {
        return reason;
    }
    const JOIN: &str = "\n…\n";
    let floor = |text: &str, at: usize| {
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    let first_line = reason.lines().next().unwrap_or("");
    let head = &first_line[..floor(first_line, MAX_COMPLETION_REASON_BYTES / 4)];
    let budget = MAX_COMPLETION_REASON_BYTES - head.len() - JOIN.len();
    let mut start = reason.len() - budget;
    while !reason.is_char_boundary(start) {
        start += 1;
    }
    format!("{head}{JOIN}{}", &reason[start..])
}

/// Splits runner labels into metadata: `param:KEY=VALUE` and `meta:KEY=VALUE` become
/// `KEY → VALUE`. A later label with the same key wins. Labels that do not have the
/// form are not metadata and are ignored here (they still match runners).
pub fn metadata_from_labels<'a>(labels: impl IntoIterator<Item = &'a String>) -> Metadata {
    let mut metadata = Metadata::new();
    for label in labels {
        let Some(rest) = label
            .strip_prefix("param:")
            .or_else(|| label.strip_prefix("meta:"))
        else {
            continue;
        };
        if let Some((key, value)) = rest.split_once('=') {
            let key = key.trim();
            if !key.is_empty() {
                metadata.insert(key.to_string(), value.to_string());
            }
        }
    }
    metadata
}

/// Checks a metadata key named in a query or setting: 1 to [`MAX_LABEL_LEN`]
/// bytes without `=` and without spaces at either end (no label makes such a key).
pub fn validate_metadata_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_LABEL_LEN || key.contains('=') || key.trim() != key {
        return Err(Error::invalid(format!(
            "metadata key {key:?} must be 1 to {MAX_LABEL_LEN} bytes, without `=` or spaces at either end"
        )));
    }
    Ok(())
}

/// Checks a repository name has the `owner/name` form GitHub uses.
pub fn validate_repo_name(repo: &str) -> Result<()> {
    let valid_part = |part: &str| {
        !part.is_empty()
            && part.len() <= 100
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match repo.split_once('/') {
        Some((owner, name)) if valid_part(owner) && valid_part(name) => Ok(()),
        _ => Err(Error::invalid(format!(
            "repo {repo:?} is not of the form OWNER/NAME"
        ))),
    }
}

/// Checks label count and length.
pub fn validate_labels(labels: &[String]) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(format!(
            "{} labels given; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    for label in labels {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(Error::invalid(format!(
                "label {label:?} must be 1 to {MAX_LABEL_LEN} bytes long"
            )));
        }
    }
    Ok(())
}

impl JobSpec {
    /// Checks a directly submitted spec: at least one step (or a workflow job
    /// instead), bounded sizes, a well-formed workspace digest, a sane timeout.
    pub fn validate_direct(&self) -> Result<()> {
        if let Some(workflow) = &self.workflow {
            if !self.steps.is_empty() {
                return Err(Error::invalid(
                    "steps and workflow: a job runs one or the other",
                ));
            }
            if !workflow.is_object() {
                return Err(Error::invalid("workflow must be a JSON object"));
            }
            let size = serde_json::to_vec(workflow).map_or(usize::MAX, |json| json.len());
            if size > MAX_WORKFLOW_JOB_BYTES {
                return Err(Error::invalid(format!(
                    "workflow: {size} bytes of JSON; at most {MAX_WORKFLOW_JOB_BYTES} are allowed"
                )));
            }
        } else if self.steps.is_empty() {
            return Err(Error::invalid("steps: a job needs at least one step"));
        }
        if let Some(digest) = &self.workspace {
            validate_workspace_digest(digest)?;
        }
        if self.steps.len() > MAX_STEPS {
            return Err(Error::invalid(format!(
                "steps: {} given; at most {MAX_STEPS} are allowed",
                self.steps.len()
            )));
        }
        for (index, step) in self.steps.iter().enumerate() {
            if step.run.trim().is_empty() {
                return Err(Error::invalid(format!("steps[{index}].run is empty")));
            }
        }
        self.validate_timeout()
    }

    /// Checks `timeout_minutes` is between 1 and [`MAX_TIMEOUT_MINUTES`].
    pub fn validate_timeout(&self) -> Result<()> {
        if self.timeout_minutes == 0 || self.timeout_minutes > MAX_TIMEOUT_MINUTES {
            return Err(Error::invalid(format!(
                "timeout_minutes must be between 1 and {MAX_TIMEOUT_MINUTES}, got {}",
                self.timeout_minutes
            )));
        }
        Ok(())
    }
}

/// A workspace archive's name: the sha256 of its bytes, 64 lowercase hex digits.
pub fn workspace_digest(archive: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(archive))
}

/// Checks a workspace archive's name: its sha256, 64 lowercase hex digits.
pub fn validate_workspace_digest(digest: &str) -> Result<()> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "workspace {digest:?}: expected a sha256, 64 lowercase hex digits"
        )))
    }
}

/// Milliseconds since the Unix epoch: how stores keep timestamps (portable and
/// ordered in both SQLite and PostgreSQL).
pub fn to_millis(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`to_millis`]; out-of-range values give the Unix epoch.
pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_keep_their_first_line_and_their_end() {
        assert_eq!(fit_reason("short".into()), "short");
        let console: String = (0..400).map(|n| format!("console line {n} é\n")).collect();
        let reason = format!("boot failed: the guest closed the channel\n{console}");
        let fitted = fit_reason(reason);
        assert!(
            fitted.len() <= MAX_COMPLETION_REASON_BYTES,
            "{}",
            fitted.len()
        );
        assert!(fitted.starts_with("boot failed: the guest closed the channel\n…\n"));
        assert!(fitted.ends_with("console line 399 é\n"));
        // A first line longer than the limit is cut too, on a character boundary.
        let fitted = fit_reason("é".repeat(5000));
        assert!(fitted.len() <= MAX_COMPLETION_REASON_BYTES);
    }

    fn direct_job() -> Job {
        let now = OffsetDateTime::now_utc();
        Job {
            id: 1,
            org_id: 1,
            repo: "acme/app".into(),
            repo_id: None,
            source: JobSource::Direct,
            status: JobStatus::Queued,
            labels: Vec::new(),
            metadata: Metadata::new(),
            attempt: 1,
            fencing_token: 0,
            spec: JobSpec::default(),
            github: None,
            lease_id: None,
            agent_id: None,
            lease_expires_at: None,
            exit_code: None,
            failure_reason: None,
            policy_reasons: Vec::new(),
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            traceparent: None,
            result: None,
        }
    }

    #[test]
    fn a_jobs_git_ref_comes_from_github_then_metadata_then_env_then_main() {
        let mut job = direct_job();
        assert_eq!(job.git_ref(), "refs/heads/main");
        job.spec
            .env
            .insert("GITHUB_REF".into(), "refs/tags/v1".into());
        assert_eq!(job.git_ref(), "refs/tags/v1");
        job.metadata.insert("ref".into(), "release".into());
        assert_eq!(job.git_ref(), "refs/heads/release");
        job.github = Some(GithubJobRef {
            head_branch: Some("feature/x".into()),
            ..GithubJobRef::default()
        });
        assert_eq!(job.git_ref(), "refs/heads/feature/x");
    }

    #[test]
    fn metadata_comes_from_param_and_meta_labels() {
        let labels: Vec<String> = [
            "nimbus",
            "param:python=3.12",
            "meta:team=infra",
            "param:empty=",
            "param:=nokey",
            "meta:novalue",
            "param:eq=a=b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let metadata = metadata_from_labels(&labels);
        assert_eq!(metadata.get("python").map(String::as_str), Some("3.12"));
        assert_eq!(metadata.get("team").map(String::as_str), Some("infra"));
        assert_eq!(metadata.get("empty").map(String::as_str), Some(""));
        assert_eq!(metadata.get("eq").map(String::as_str), Some("a=b"));
        assert_eq!(metadata.len(), 4);
    }

    #[test]
    fn repo_names_are_checked() {
        assert!(validate_repo_name("acme/app").is_ok());
        assert!(validate_repo_name("a-b.c/d_e").is_ok());
        for bad in ["", "acme", "acme/", "/app", "acme/app/x", "acme/a pp"] {
            assert!(validate_repo_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_round_trips() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>().ok(), Some(status));
        }
        assert!("running".parse::<JobStatus>().is_err());
    }

    #[test]
    fn millis_round_trip() {
        let at = time::macros::datetime!(2026-11-27 05:00:00.123 UTC);
        assert_eq!(from_millis(to_millis(at)), at);
    }
}
