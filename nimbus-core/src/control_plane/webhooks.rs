//! `POST /webhooks/github`: signed `workflow_job` intake with replay protection.
//!
//! Order matters: the signature is checked before anything is parsed; the delivery
//! id is recorded only once its event was processed (in the same statement or
//! transaction as the job it creates), so GitHub's manual redelivery of a failed
//! delivery is accepted and of a successful one refused. Recording is what detects a
//! replay: a `queued` replay is refused by the admission itself (which saves a
//! look-up per webhook on the hot path), others when they are recorded or, for job
//! updates, by a look-up before the update.

use axum::http::StatusCode;
use serde_json::json;

use crate::control_plane::ControlPlane;
use crate::domain::JobStatus;
use crate::error::{Error, Result};
use crate::store::{Delivery, GithubJobUpdate};
use crate::webhook::{self, WebhookEvent, WorkflowJobAction, WorkflowJobEvent};

/// Longest `X-GitHub-Delivery` accepted (GitHub sends a 36-character GUID).
const MAX_DELIVERY_ID: usize = 128;

/// One delivery as it came: the headers that matter and the raw body (the
/// signature is over the exact bytes).
#[derive(Debug, Clone, Copy)]
pub struct WebhookDelivery<'a> {
    /// `X-GitHub-Event`.
    pub event: Option<&'a str>,
    /// `X-GitHub-Delivery`.
    pub delivery_id: Option<&'a str>,
    /// `X-Hub-Signature-256`.
    pub signature: Option<&'a str>,
    /// `Content-Type`; only `application/json` is accepted.
    pub content_type: Option<&'a str>,
    /// The raw body, as signed.
    pub body: &'a [u8],
}

/// What a delivery did: the HTTP status to answer, the outcome counted in
/// `nimbus_control_plane_webhooks_received_total`, and the answer's body.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookAnswer {
    /// The status to answer with (200, 201 or 202).
    pub status: StatusCode,
    /// A short word for what happened (`ping`, `ignored`, …), a metrics label.
    pub outcome: &'static str,
    /// The JSON body to answer with.
    pub body: serde_json::Value,
}

impl ControlPlane {
    /// Takes one GitHub delivery: signature, replay and age checks, then the
    /// `workflow_job` it carries (queued → admission; in progress and completed →
    /// the job's GitHub state). Counted by event and outcome either way.
    pub async fn receive_webhook(&self, delivery: &WebhookDelivery<'_>) -> Result<WebhookAnswer> {
        // A label value from a fixed set: the header is the sender's to choose (and
        // is read before the signature is checked), so it never becomes a series name.
        let event = webhook::event_label(delivery.event);
        match handle(self, delivery).await {
            Ok(answer) => {
                self.metrics
                    .webhooks_received
                    .with_label_values(&[event, answer.outcome])
                    .inc();
                Ok(answer)
            }
            Err(error) => {
                let outcome = match &error {
                    Error::ReplayedDelivery { .. } => {
                        self.metrics.webhook_replays_blocked.inc();
                        "replayed"
                    }
                    Error::RateLimited { .. } => "rate_limited",
                    Error::Unauthenticated(_) => "bad_signature",
                    _ => "error",
                };
                self.metrics
                    .webhooks_received
                    .with_label_values(&[event, outcome])
                    .inc();
                tracing::info!(%event, %error, "webhook refused");
                Err(error)
            }
        }
    }
}

fn answer(status: StatusCode, outcome: &'static str, body: serde_json::Value) -> WebhookAnswer {
    WebhookAnswer {
        status,
        outcome,
        body,
    }
}

async fn handle(state: &ControlPlane, delivery: &WebhookDelivery<'_>) -> Result<WebhookAnswer> {
    let secret = state.config.webhook_secret.as_ref().ok_or_else(|| {
        Error::Unavailable("webhooks are not configured: set NIMBUS_GITHUB_WEBHOOK_SECRET".into())
    })?;
    webhook::verify_signature(
        secret.expose().as_bytes(),
        delivery.body,
        delivery.signature,
    )?;

    let content_type = delivery.content_type.unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(Error::UnsupportedMediaType(format!(
            "webhook content type must be application/json (set it in the webhook settings), got {content_type:?}"
        )));
    }
    let event = delivery
        .event
        .ok_or_else(|| Error::invalid("missing X-GitHub-Event header"))?;
    let delivery_id = delivery
        .delivery_id
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Error::invalid("missing X-GitHub-Delivery header"))?;
    if delivery_id.len() > MAX_DELIVERY_ID {
        return Err(Error::invalid(format!(
            "X-GitHub-Delivery is longer than {MAX_DELIVERY_ID} bytes"
        )));
    }
    let receipt = Delivery {
        id: delivery_id.to_owned(),
        received_at: state.now(),
    };

    let (status, outcome, body) = match webhook::parse_event(event, delivery.body)? {
        WebhookEvent::Ping { zen, hook_id } => {
            record(state, &receipt).await?;
            (
                StatusCode::OK,
                "ping",
                json!({"ok": true, "zen": zen, "hook_id": hook_id}),
            )
        }
        WebhookEvent::Ignored { event, action } => {
            record(state, &receipt).await?;
            (
                StatusCode::ACCEPTED,
                "ignored",
                json!({"ignored": format!("event {event} action {}", action.as_deref().unwrap_or("-"))}),
            )
        }
        WebhookEvent::WorkflowJob(job_event) => workflow_job(state, &job_event, &receipt).await?,
    };
    Ok(answer(status, outcome, body))
}

type Answer = (StatusCode, &'static str, serde_json::Value);

async fn record(state: &ControlPlane, delivery: &Delivery) -> Result<()> {
    if state.store.record_delivery(delivery).await? {
        Ok(())
    } else {
        // Another request with the same delivery id finished first.
        Err(Error::ReplayedDelivery {
            delivery_id: delivery.id.clone(),
        })
    }
}

async fn workflow_job(
    state: &ControlPlane,
    event: &WorkflowJobEvent,
    delivery: &Delivery,
) -> Result<Answer> {
    let now = delivery.received_at;
    let stamped = event.action_timestamp().ok_or_else(|| {
        Error::invalid(format!(
            "workflow_job {} has no timestamp for action {}",
            event.workflow_job.id,
            event.action.as_str()
        ))
    })?;
    let age = now - stamped;
    if age > state.config.webhook_tolerance {
        return Err(Error::invalid(format!(
            "stale event: workflow_job {} {} at {stamped} is {} s old; the tolerance is {} s",
            event.workflow_job.id,
            event.action.as_str(),
            age.whole_seconds(),
            state.config.webhook_tolerance.as_secs()
        )));
    }
    let github_job_id = event.workflow_job.id;
    match event.action {
        WorkflowJobAction::Queued => {
            if !event.wants_runner_with(&state.config.runner_labels) {
                record(state, delivery).await?;
                return Ok((
                    StatusCode::ACCEPTED,
                    "not_ours",
                    json!({"ignored": "no label of this job is one of NIMBUS_RUNNER_LABELS"}),
                ));
            }
            let (org_id, org_name) = event.org();
            if !state.org_exists(org_id).await? {
                state.store.upsert_org(org_id, org_name, now).await?;
                state.remember_org(org_id);
            }
            let enqueued = state
                .admit(event.to_new_job(), Some(delivery.clone()))
                .await?;
            if enqueued.created {
                tracing::info!(job_id = enqueued.job.id, github_job_id, repo = %enqueued.job.repo, "queued GitHub job");
            }
            let status = if enqueued.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let outcome = if enqueued.job.status == JobStatus::Rejected {
                "rejected"
            } else {
                "queued"
            };
            Ok((
                status,
                outcome,
                json!({
                    "job_id": enqueued.job.id,
                    "created": enqueued.created,
                    "status": enqueued.job.status,
                    "policy_reasons": enqueued.job.policy_reasons,
                }),
            ))
        }
        WorkflowJobAction::Waiting => {
            // Environment protection: the job is not runnable until GitHub queues it.
            record(state, delivery).await?;
            Ok((
                StatusCode::ACCEPTED,
                "waiting",
                json!({"ignored": "waiting for environment approval"}),
            ))
        }
        WorkflowJobAction::InProgress | WorkflowJobAction::Completed => {
            // Refuse a replay before touching the job (the update is idempotent, but
            // a replay should change nothing at all).
            if state.store.delivery_seen(&delivery.id).await? {
                return Err(Error::ReplayedDelivery {
                    delivery_id: delivery.id.clone(),
                });
            }
            if event.action == WorkflowJobAction::InProgress {
                bind_runner(state, event, now).await?;
            }
            let update = GithubJobUpdate {
                github_job_id,
                status: event.action.as_str().to_owned(),
                conclusion: event.workflow_job.conclusion.clone(),
                runner_name: event.workflow_job.runner_name.clone(),
            };
            let job = state.store.apply_github_update(&update, now).await?;
            record(state, delivery).await?;
            Ok(match job {
                Some(job) => (
                    StatusCode::OK,
                    "updated",
                    json!({"job_id": job.id, "status": job.status}),
                ),
                None => (
                    StatusCode::ACCEPTED,
                    "unknown_job",
                    json!({"ignored": "no Nimbus job for this workflow_job"}),
                ),
            })
        }
    }
}

/// The Nimbus job a runner was made for, from its name `nimbus-{job}-{fencing token}`.
fn runner_job(runner_name: &str) -> Option<crate::domain::JobId> {
    let rest = runner_name.strip_prefix("nimbus-")?;
    let (job, token) = rest.split_once('-')?;
    token.parse::<i64>().ok()?;
    job.parse().ok()
}

/// GitHub hands a runner any queued job whose labels it has, not necessarily the
/// one it was made for (actions/runner #3697). When `in_progress` names one of our
/// runners on another job, the runner's Nimbus job now stands for the job it runs,
/// and the job that stood for that one takes over the runner's original GitHub job
/// (which is still queued and will get the next runner): nothing waits forever,
/// nothing is counted twice. If the job it runs was never ours, the original one
/// is left without a Nimbus job, and the reconciler queues it on its next pass.
async fn bind_runner(
    state: &ControlPlane,
    event: &WorkflowJobEvent,
    now: time::OffsetDateTime,
) -> Result<()> {
    let Some(runner_job_id) = event
        .workflow_job
        .runner_name
        .as_deref()
        .and_then(runner_job)
    else {
        return Ok(());
    };
    let Some(runner_job) = state.store.get_job(runner_job_id).await? else {
        return Ok(());
    };
    let Some(made_for) = runner_job.github.as_ref().map(|g| g.job_id) else {
        return Ok(());
    };
    let running = event.workflow_job.id;
    if made_for == running {
        return Ok(());
    }
    // Runner names are chosen by whoever registers the runner: another org can name
    // its own runner after one of ours. Only a swap GitHub could really have made —
    // a runner of the same installation, org and repository — is honoured.
    let installation = event.installation.as_ref().map(|i| i.id);
    let same_tenant = runner_job.github.as_ref().and_then(|g| g.installation_id) == installation
        && runner_job.org_id == event.org().0
        && runner_job.repo == event.repository.full_name
        && runner_job
            .repo_id
            .is_none_or(|id| id == event.repository.id);
    if !same_tenant {
        state.metrics.runner_swaps_refused.inc();
        tracing::warn!(
            job_id = runner_job_id,
            running,
            repo = %event.repository.full_name,
            "a runner named after one of our jobs ran a job of another installation, org or repository; ignored"
        );
        return Ok(());
    }
    let repo = crate::domain::Repo {
        id: Some(event.repository.id),
        full_name: event.repository.full_name.clone(),
    };
    let other = state
        .store
        .rebind_github_job(runner_job_id, &event.github_ref(), &repo, now)
        .await?;
    state.metrics.runner_swaps.inc();
    tracing::warn!(
        job_id = runner_job_id,
        made_for,
        running,
        other_job = ?other,
        "GitHub gave our runner another job; the two job records were swapped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::runner_job;

    #[test]
    fn runner_names_name_their_job() {
        assert_eq!(runner_job("nimbus-42-7"), Some(42));
        assert_eq!(runner_job("nimbus-42"), None);
        assert_eq!(runner_job("nimbus-runner-7"), None);
        assert_eq!(runner_job("other-42-7"), None);
    }
}
