//! What a leased job may do in the cache: GitHub's cache scoping rules.
//!
//! GitHub keys cache entries by ref and lets a run restore from its own ref, then
//! (for a pull request) its base branch, then the default branch; a pull request
//! saves only under `refs/pull/N/merge`, so no pull request, least of all one from
//! a fork, can plant an entry that a push to the default branch later restores.
//! The webhook does not say which event started a run, or whether its head lives
//! in a fork, so both come from the workflow run through the GitHub API. When that
//! answer is missing, the job still gets a token, read-only: it can restore but
//! never poison.

use crate::cache_token::{CacheGrant, CachePermission, DEFAULT_BRANCH};
use crate::domain::Job;
use crate::github::model::{PullRequest, RunRepository, WorkflowRun};

/// The facts about a workflow run the cache scope depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunContext {
    /// The event that started the run (`push`, `pull_request`, …).
    pub event: String,
    /// The branch the run is for.
    pub head_branch: Option<String>,
    /// Whether the run's code comes from another repository than the one it runs
    /// for (a fork).
    pub from_fork: bool,
    /// The repository's default branch (`main` when GitHub did not say).
    pub default_branch: String,
    /// For a pull request's run: its number and base branch, when known.
    pub pull_request: Option<PullRequestRef>,
}

/// The pull request a run builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestRef {
    /// The pull request's number; its saves go under `refs/pull/N/merge`.
    pub number: i64,
    /// The branch it merges into, restored from after the pull request's own ref.
    pub base_branch: String,
}

/// Events whose runs build a pull request's code: `pull_request_target` runs the
/// base repository's workflow, but typically checks out the pull request, so it is
/// scoped like a pull request (stricter than GitHub, which lets it save on the
/// base branch; docs/security.md).
fn is_pull_request_event(event: &str) -> bool {
    event.starts_with("pull_request")
}

impl RunContext {
    /// Reads a workflow run. `None` when it lacks the event.
    pub fn from_run(run: &WorkflowRun) -> Option<RunContext> {
        let event = run.event.clone()?;
        let name = |repo: &Option<RunRepository>| repo.as_ref().and_then(|r| r.full_name.clone());
        let from_fork = match (name(&run.repository), name(&run.head_repository)) {
            (Some(repo), Some(head)) => !repo.eq_ignore_ascii_case(&head),
            // Without both names the run cannot be proven to be the repository's own.
            _ => true,
        };
        Some(RunContext {
            event,
            head_branch: run.head_branch.clone(),
            from_fork,
            default_branch: run
                .repository
                .as_ref()
                .and_then(|r| r.default_branch.clone())
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "main".to_string()),
            pull_request: run.pull_requests.first().and_then(pull_request_ref),
        })
    }

    /// Whether the run is a pull request's whose number is still unknown (a fork's:
    /// GitHub leaves those out of the run's `pull_requests`).
    pub fn needs_pull_request_lookup(&self) -> bool {
        is_pull_request_event(&self.event) && self.pull_request.is_none()
    }

    /// `OWNER:BRANCH` of the run's head, for the pull request search.
    pub fn head_label(run: &WorkflowRun) -> Option<String> {
        let owner = &run.head_repository.as_ref()?.owner.as_ref()?.login;
        let branch = run.head_branch.as_ref()?;
        Some(format!("{owner}:{branch}"))
    }
}

/// A pull request (of a run's `pull_requests`, or of the pulls API).
pub fn pull_request_ref(pull: &PullRequest) -> Option<PullRequestRef> {
    (pull.number > 0).then(|| PullRequestRef {
        number: pull.number,
        base_branch: pull.base.git_ref.clone(),
    })
}

fn branch_ref(branch: &str) -> String {
    if branch.starts_with("refs/") {
        branch.to_string()
    } else {
        format!("refs/heads/{branch}")
    }
}

/// A directly submitted job's grant: its org submitted it, so it writes the ref it
/// names (`Job::git_ref`) and restores from there and the default branch.
pub fn direct_grant(job: &Job) -> CacheGrant {
    CacheGrant {
        org_id: job.org_id,
        repo: job.repo.clone(),
        git_ref: job.git_ref(),
        base_ref: None,
        default_ref: DEFAULT_BRANCH.to_string(),
        permission: CachePermission::Write,
    }
}

/// A GitHub job's grant, from its run's context (`None`: unknown, read-only).
pub fn github_grant(job: &Job, run: Option<&RunContext>) -> CacheGrant {
    let read_only = |git_ref: String, base_ref: Option<String>, default_ref: String| CacheGrant {
        org_id: job.org_id,
        repo: job.repo.clone(),
        git_ref,
        base_ref,
        default_ref,
        permission: CachePermission::Read,
    };
    let Some(run) = run else {
        return read_only(DEFAULT_BRANCH.to_string(), None, DEFAULT_BRANCH.to_string());
    };
    let default_ref = branch_ref(&run.default_branch);
    if is_pull_request_event(&run.event) {
        return match &run.pull_request {
            Some(pull) => CacheGrant {
                org_id: job.org_id,
                repo: job.repo.clone(),
                git_ref: format!("refs/pull/{}/merge", pull.number),
                base_ref: Some(branch_ref(&pull.base_branch)),
                default_ref,
                permission: CachePermission::Write,
            },
            None => read_only(default_ref.clone(), None, default_ref),
        };
    }
    match run.head_branch.as_deref().filter(|b| !b.is_empty()) {
        Some(branch) if !run.from_fork => CacheGrant {
            org_id: job.org_id,
            repo: job.repo.clone(),
            git_ref: branch_ref(branch),
            base_ref: None,
            default_ref,
            permission: CachePermission::Write,
        },
        _ => read_only(default_ref.clone(), None, default_ref),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn job() -> Job {
        serde_json::from_value(json!({
            "id": 1, "org_id": 9, "repo": "acme/app", "source": "github", "status": "leased",
            "labels": [], "metadata": {}, "spec": {"steps": [], "timeout_minutes": 5},
            "attempt": 1, "fencing_token": 1, "policy_reasons": [], "repo_id": 77,
            "github": {"job_id": 5, "run_id": 6, "run_attempt": 1, "head_branch": "main",
                       "status": "queued"},
            "agent_id": "a", "lease_id": null, "lease_expires_at": null, "exit_code": null,
            "failure_reason": null, "started_at": null, "finished_at": null,
            "created_at": "2026-11-27T08:00:00Z", "updated_at": "2026-11-27T08:00:00Z"
        }))
        .expect("job")
    }

    fn run(event: &str, head_repo: &str, head_branch: &str, pulls: Value) -> WorkflowRun {
        serde_json::from_value(json!({
            "id": 6, "event": event, "head_branch": head_branch,
            "repository": {"full_name": "acme/app", "default_branch": "trunk"},
            "head_repository": {"full_name": head_repo, "owner": {"login": head_repo.split('/').next()}},
            "pull_requests": pulls,
        }))
        .expect("run")
    }

    #[test]
    fn a_push_writes_its_branch() {
        let context = RunContext::from_run(&run("push", "acme/app", "feature", json!([])));
        let grant = github_grant(&job(), context.as_ref());
        assert_eq!(grant.git_ref, "refs/heads/feature");
        assert_eq!(grant.default_ref, "refs/heads/trunk");
        assert_eq!(grant.permission, CachePermission::Write);
    }

    #[test]
    fn a_pull_request_writes_only_its_merge_ref_and_reads_its_base() {
        let pulls = json!([{"number": 12, "base": {"ref": "release"}}]);
        let context = RunContext::from_run(&run("pull_request", "acme/app", "main", pulls));
        let grant = github_grant(&job(), context.as_ref());
        assert_eq!(grant.git_ref, "refs/pull/12/merge");
        assert_eq!(grant.base_ref.as_deref(), Some("refs/heads/release"));
        assert_eq!(grant.default_ref, "refs/heads/trunk");
        assert_eq!(grant.permission, CachePermission::Write);
    }

    #[test]
    fn a_fork_pull_request_named_main_never_writes_main() {
        // The fork's branch is called `main`: the old scoping wrote refs/heads/main.
        let context = RunContext::from_run(&run("pull_request", "mallory/app", "main", json!([])))
            .expect("context");
        assert!(context.needs_pull_request_lookup());
        let grant = github_grant(&job(), Some(&context));
        assert_eq!(grant.permission, CachePermission::Read);
        let found = RunContext {
            pull_request: Some(PullRequestRef {
                number: 13,
                base_branch: "trunk".into(),
            }),
            ..context
        };
        let grant = github_grant(&job(), Some(&found));
        assert_eq!(grant.git_ref, "refs/pull/13/merge");
        assert_eq!(grant.permission, CachePermission::Write);
    }

    #[test]
    fn pull_request_target_is_scoped_like_a_pull_request() {
        let context = RunContext::from_run(&run(
            "pull_request_target",
            "mallory/app",
            "main",
            json!([]),
        ));
        assert_eq!(
            github_grant(&job(), context.as_ref()).permission,
            CachePermission::Read
        );
    }

    #[test]
    fn a_push_from_another_repository_or_an_unknown_run_is_read_only() {
        let context = RunContext::from_run(&run("push", "mallory/app", "main", json!([])));
        assert_eq!(
            github_grant(&job(), context.as_ref()).permission,
            CachePermission::Read
        );
        let grant = github_grant(&job(), None);
        assert_eq!(grant.permission, CachePermission::Read);
        assert_eq!(grant.git_ref, DEFAULT_BRANCH);
        let no_event: WorkflowRun = serde_json::from_value(json!({"id": 1})).expect("run");
        assert!(RunContext::from_run(&no_event).is_none());
    }
}
