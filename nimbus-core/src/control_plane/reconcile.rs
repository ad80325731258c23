//! The reconciler: GitHub drops webhooks now and then (a job then waits for a
//! runner forever), so every `NIMBUS_GITHUB_RECONCILE_SECONDS` the control plane
//! asks GitHub which jobs are queued and enqueues any that no webhook brought, and
//! closes jobs GitHub finished while they were still waiting here. Calls go
//! through the GitHub client's rate-limit back-off.

use super::{AppState, ControlPlane};
use crate::domain::JobStatus;
use crate::error::{Error, Result};
use crate::github::{ReachableRepository, RepoRef, WorkflowJob};
use crate::store::{GithubJobUpdate, JobFilter};
use crate::webhook::{self, Account, WorkflowJobAction, WorkflowJobEvent};

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Repositories looked at.
    pub repositories: u64,
    /// Jobs queued here because GitHub had them queued and no webhook came.
    pub enqueued: u64,
    /// Jobs that waited here after GitHub had finished (or cancelled) them.
    pub closed: u64,
}

/// One pass. Does nothing without GitHub configured.
pub async fn reconcile_once(state: &ControlPlane) -> Result<ReconcileReport> {
    let mut report = ReconcileReport::default();
    let Some(github) = state.github.clone() else {
        return Ok(report);
    };
    for reachable in github.repositories().await? {
        report.repositories += 1;
        let repository = &reachable.repository;
        let repo = RepoRef::parse(&repository.full_name, reachable.installation_id)?;
        for job in github.queued_jobs(&repo).await? {
            let github_job_id = job.id;
            if state.store.get_github_job(github_job_id).await?.is_some() {
                continue;
            }
            let event = as_queued_event(&reachable, job);
            if !event.wants_runner_with(&state.config.runner_labels) {
                continue;
            }
            let (org_id, org_name) = event.org();
            if !state.org_exists(org_id).await? {
                state
                    .store
                    .upsert_org(org_id, org_name, state.now())
                    .await?;
                state.remember_org(org_id);
            }
            match state.admit(event.to_new_job(), None).await {
                Ok(enqueued) if enqueued.created => {
                    report.enqueued += 1;
                    state.metrics.jobs_reconciled.inc();
                    tracing::warn!(
                        job_id = enqueued.job.id,
                        github_job_id,
                        repo = %repository.full_name,
                        "queued a GitHub job no webhook brought (missed delivery)"
                    );
                }
                Ok(_) => {}
                // One org over its rate limit waits for the next pass; the others
                // are still reconciled.
                Err(Error::RateLimited { .. }) => {
                    tracing::warn!(
                        github_job_id,
                        org_id,
                        "the org is over its job rate limit; the reconciler retries next pass"
                    );
                }
                Err(error) => return Err(error),
            }
        }
    }
    report.closed = close_finished(state).await?;
    Ok(report)
}

/// A `workflow_job.queued` event built from GitHub's REST answers.
fn as_queued_event(reachable: &ReachableRepository, job: WorkflowJob) -> WorkflowJobEvent {
    let repository = &reachable.repository;
    let owner = Account {
        id: repository.owner.id,
        login: repository.owner.login.clone(),
    };
    WorkflowJobEvent {
        action: WorkflowJobAction::Queued,
        workflow_job: job,
        repository: webhook::Repository {
            id: repository.id,
            full_name: repository.full_name.clone(),
            owner: owner.clone(),
        },
        organization: repository.owner.is_organization().then_some(owner),
        installation: reachable
            .installation_id
            .map(|id| webhook::Installation { id }),
    }
}

/// Queued GitHub jobs here that GitHub has completed: cancelled, as a webhook would.
async fn close_finished(state: &ControlPlane) -> Result<u64> {
    let Some(github) = state.github.clone() else {
        return Ok(0);
    };
    let page = state
        .store
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Queued),
            limit: 500,
            ..JobFilter::default()
        })
        .await?;
    let mut closed = 0;
    for job in page.jobs {
        let Some(reference) = &job.github else {
            continue;
        };
        let repo = RepoRef::parse(&job.repo, reference.installation_id)?;
        let remote = match github.workflow_job(&repo, reference.job_id).await {
            Ok(remote) => remote,
            Err(error) => {
                tracing::warn!(job_id = job.id, %error, "could not check a queued job on GitHub");
                continue;
            }
        };
        if remote.status.as_deref() != Some("completed") {
            continue;
        }
        let update = GithubJobUpdate {
            github_job_id: reference.job_id,
            status: "completed".into(),
            conclusion: remote.conclusion,
            runner_name: remote.runner_name,
        };
        if state
            .store
            .apply_github_update(&update, state.now())
            .await?
            .is_some()
        {
            closed += 1;
            state.metrics.jobs_reconciled.inc();
            tracing::warn!(
                job_id = job.id,
                github_job_id = reference.job_id,
                "closed a job GitHub finished (missed delivery)"
            );
        }
    }
    Ok(closed)
}

/// Runs a pass every `NIMBUS_GITHUB_RECONCILE_SECONDS` until shutdown.
pub(super) async fn reconcile_loop(state: AppState) {
    let Some(interval) = state.config.github.as_ref().map(|g| g.reconcile_interval) else {
        return;
    };
    let mut shutdown = state.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match reconcile_once(&state).await {
            Ok(report) if report.enqueued + report.closed > 0 => {
                tracing::info!(?report, "GitHub reconciliation changed jobs")
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "GitHub reconciliation failed; retrying next interval")
            }
        }
    }
}
