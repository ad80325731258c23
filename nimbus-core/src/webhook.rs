//! GitHub webhooks: signature verification and typed `workflow_job` payloads.
//!
//! GitHub signs the raw body with HMAC-SHA256 (`X-Hub-Signature-256: sha256=<hex>`) but
//! no timestamp, so freshness is judged on the timestamp that goes with the action
//! ([`WorkflowJobEvent::action_timestamp`]) and replays on `X-GitHub-Delivery`.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use time::OffsetDateTime;

use crate::domain::{
    metadata_from_labels, GithubJobRef, JobSource, JobSpec, NewJob, OrgId, Repo,
    DEFAULT_TIMEOUT_MINUTES,
};
use crate::error::{Error, Result};

/// Largest webhook body accepted (GitHub caps payloads at 25 MB; `workflow_job`
/// payloads are a few KiB).
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// Checks `X-Hub-Signature-256` against the raw body, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], signature_header: Option<&str>) -> Result<()> {
    let header = signature_header
        .ok_or_else(|| Error::Unauthenticated("missing X-Hub-Signature-256 header".into()))?;
    let hex_digest = header.strip_prefix("sha256=").ok_or_else(|| {
        Error::Unauthenticated("X-Hub-Signature-256 must look like sha256=<hex>".into())
    })?;
    let expected = hex::decode(hex_digest.trim())
        .map_err(|_| Error::Unauthenticated("X-Hub-Signature-256 is not hexadecimal".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|e| Error::Internal(format!("hmac key: {e}")))?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| Error::Unauthenticated("webhook signature does not match".into()))
}

/// Computes the `X-Hub-Signature-256` header value for a body (tests, `nimbus dev webhook`).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A parsed webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// GitHub's `ping`, sent when a webhook is created.
    Ping {
        /// The webhook's id.
        hook_id: Option<i64>,
        /// A random line of GitHub's zen.
        zen: Option<String>,
    },
    /// A `workflow_job` event with an action Nimbus handles.
    WorkflowJob(Box<WorkflowJobEvent>),
    /// An event or action Nimbus does not act on.
    Ignored {
        /// The `X-GitHub-Event` name.
        event: String,
        /// The payload's `action`, if it has one.
        action: Option<String>,
    },
}

/// The `action` of a `workflow_job` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowJobAction {
    /// GitHub queued the job and looks for a runner with its labels.
    Queued,
    /// The job waits for a deployment protection rule or approval.
    Waiting,
    /// A runner picked the job up.
    InProgress,
    /// The job finished (or was cancelled before it ran).
    Completed,
}

impl WorkflowJobAction {
    /// The wire name, e.g. `in_progress`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowJobAction::Queued => "queued",
            WorkflowJobAction::Waiting => "waiting",
            WorkflowJobAction::InProgress => "in_progress",
            WorkflowJobAction::Completed => "completed",
        }
    }
}

/// The `workflow_job` webhook payload: the fields Nimbus reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkflowJobEvent {
    /// What happened to the job.
    pub action: WorkflowJobAction,
    /// The job itself.
    pub workflow_job: WorkflowJob,
    /// The repository the job runs for.
    pub repository: Repository,
    /// The organization that owns the repository; absent for user-owned ones.
    #[serde(default)]
    pub organization: Option<Account>,
    /// The GitHub App installation that sent the event (App deliveries only).
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// A workflow job, as the `workflow_job` webhook and the REST API describe it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkflowJob {
    /// GitHub's id of the job.
    pub id: i64,
    /// GitHub's id of the workflow run.
    pub run_id: i64,
    /// Which attempt of the run (1 when absent).
    #[serde(default)]
    pub run_attempt: Option<i64>,
    /// The commit the job runs on.
    #[serde(default)]
    pub head_sha: Option<String>,
    /// The branch the job runs on.
    #[serde(default)]
    pub head_branch: Option<String>,
    /// The workflow's name.
    #[serde(default)]
    pub workflow_name: Option<String>,
    /// The job's name within the workflow.
    #[serde(default)]
    pub name: Option<String>,
    /// The `runs-on` labels a runner must have.
    #[serde(default)]
    pub labels: Vec<String>,
    /// GitHub's status of the job (`queued`, `in_progress`, `completed`, …).
    #[serde(default)]
    pub status: Option<String>,
    /// GitHub's conclusion once completed, e.g. `success` or `cancelled`.
    #[serde(default)]
    pub conclusion: Option<String>,
    /// When GitHub queued the job.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    /// When a runner started the job.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When the job finished.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    /// The runner that took the job, once one did.
    #[serde(default)]
    pub runner_name: Option<String>,
}

/// A repository as a webhook names it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Repository {
    /// GitHub's numeric repository id.
    pub id: i64,
    /// `owner/name`.
    pub full_name: String,
    /// The account that owns the repository.
    pub owner: Account,
}

/// A user or an organization as a webhook names it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Account {
    /// GitHub's numeric id of the account.
    pub id: i64,
    /// The account's login name.
    pub login: String,
}

/// A GitHub App installation a webhook came through.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Installation {
    /// The installation's id, for installation tokens.
    pub id: i64,
}

#[derive(Deserialize)]
struct ActionOnly {
    #[serde(default)]
    action: Option<String>,
}

#[derive(Deserialize)]
struct PingPayload {
    #[serde(default)]
    hook_id: Option<i64>,
    #[serde(default)]
    zen: Option<String>,
}

/// The metrics label of an `X-GitHub-Event` header: the events Nimbus handles by
/// name, every other value (or none) as `other`, so senders cannot mint series.
pub fn event_label(event: Option<&str>) -> &'static str {
    match event {
        Some("workflow_job") => "workflow_job",
        Some("ping") => "ping",
        _ => "other",
    }
}

/// Parses a delivery by its `X-GitHub-Event` name. Malformed JSON, or a
/// `workflow_job` payload missing a field Nimbus needs, is an `InvalidInput` error
/// naming the problem; this never panics on any input.
pub fn parse_event(event: &str, body: &[u8]) -> Result<WebhookEvent> {
    let json_error = |e: serde_json::Error| Error::invalid(format!("invalid {event} payload: {e}"));
    match event {
        "ping" => {
            let ping: PingPayload = serde_json::from_slice(body).map_err(json_error)?;
            Ok(WebhookEvent::Ping {
                hook_id: ping.hook_id,
                zen: ping.zen,
            })
        }
        "workflow_job" => {
            let action: ActionOnly = serde_json::from_slice(body).map_err(json_error)?;
            match action.action.as_deref() {
                Some("queued" | "waiting" | "in_progress" | "completed") => {
                    let parsed: WorkflowJobEvent =
                        serde_json::from_slice(body).map_err(json_error)?;
                    Ok(WebhookEvent::WorkflowJob(Box::new(parsed)))
                }
                other => Ok(WebhookEvent::Ignored {
                    event: event.to_string(),
                    action: other.map(str::to_string),
                }),
            }
        }
        other => {
            // Still insist on JSON, so garbage is reported rather than silently accepted.
            let action: ActionOnly = serde_json::from_slice(body).map_err(json_error)?;
            Ok(WebhookEvent::Ignored {
                event: other.to_string(),
                action: action.action,
            })
        }
    }
}

impl WorkflowJobEvent {
    /// The timestamp that goes with the action: `created_at` for queued (and
    /// waiting), `started_at` for in_progress, `completed_at` for completed.
    pub fn action_timestamp(&self) -> Option<OffsetDateTime> {
        let job = &self.workflow_job;
        match self.action {
            WorkflowJobAction::Queued | WorkflowJobAction::Waiting => job.created_at,
            WorkflowJobAction::InProgress => job.started_at.or(job.created_at),
            WorkflowJobAction::Completed => job.completed_at.or(job.started_at),
        }
    }

    /// The org that owns the job: the organisation, or the user for user-owned repos.
    pub fn org(&self) -> (OrgId, &str) {
        match &self.organization {
            Some(org) => (org.id, org.login.as_str()),
            None => (
                self.repository.owner.id,
                self.repository.owner.login.as_str(),
            ),
        }
    }

    /// True when one of the job's labels is one of ours.
    pub fn wants_runner_with(&self, runner_labels: &[String]) -> bool {
        self.workflow_job.labels.iter().any(|label| {
            runner_labels
                .iter()
                .any(|ours| ours.eq_ignore_ascii_case(label))
        })
    }

    /// The job's GitHub side, as stored with it (`status` is the action).
    pub fn github_ref(&self) -> GithubJobRef {
        let job = &self.workflow_job;
        GithubJobRef {
            job_id: job.id,
            run_id: job.run_id,
            run_attempt: job.run_attempt.unwrap_or(1),
            workflow_name: job.workflow_name.clone(),
            job_name: job.name.clone(),
            head_sha: job.head_sha.clone(),
            head_branch: job.head_branch.clone(),
            installation_id: self.installation.as_ref().map(|i| i.id),
            status: self.action.as_str().to_string(),
            conclusion: job.conclusion.clone(),
            runner_name: job.runner_name.clone(),
        }
    }

    /// The job to queue for a `queued` event.
    pub fn to_new_job(&self) -> NewJob {
        let job = &self.workflow_job;
        NewJob {
            org_id: self.org().0,
            repo: Repo {
                id: Some(self.repository.id),
                full_name: self.repository.full_name.clone(),
            },
            source: JobSource::Github,
            labels: job.labels.clone(),
            metadata: metadata_from_labels(&job.labels),
            spec: JobSpec {
                timeout_minutes: DEFAULT_TIMEOUT_MINUTES,
                ..JobSpec::default()
            },
            github: Some(self.github_ref()),
            rejected: false,
            policy_reasons: Vec::new(),
            traceparent: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_test_vector() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature(secret, body, Some(header)).is_ok());
        assert_eq!(sign(secret, body), header);
    }

    #[test]
    fn bad_signatures_are_refused() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = sign(secret, body);
        assert!(verify_signature(secret, body, None).is_err());
        assert!(verify_signature(secret, body, Some("sha1=abc")).is_err());
        assert!(verify_signature(secret, body, Some("sha256=zz")).is_err());
        assert!(verify_signature(secret, b"Hello, World?", Some(&good)).is_err());
        assert!(verify_signature(b"other", body, Some(&good)).is_err());
        assert!(verify_signature(secret, body, Some("sha256=")).is_err());
    }

    pub(crate) fn queued_payload() -> serde_json::Value {
        serde_json::json!({
            "action": "queued",
            "workflow_job": {
                "id": 29679449, "run_id": 987, "run_attempt": 1,
                "head_sha": "f00", "head_branch": "main",
                "workflow_name": "CI", "name": "build",
                "labels": ["self-hosted", "nimbus", "param:python=3.12"],
                "status": "queued", "conclusion": null,
                "created_at": "2026-11-27T05:00:00Z", "started_at": null, "completed_at": null,
                "runner_id": null, "runner_name": null, "steps": []
            },
            "repository": {"id": 77, "full_name": "acme/app", "owner": {"id": 9, "login": "acme"}},
            "organization": {"id": 42, "login": "acme"},
            "installation": {"id": 5},
            "sender": {"id": 1, "login": "octocat"}
        })
    }

    #[test]
    fn queued_workflow_job_parses() {
        let body = serde_json::to_vec(&queued_payload()).expect("json");
        let WebhookEvent::WorkflowJob(event) = parse_event("workflow_job", &body).expect("parses")
        else {
            panic!("expected a workflow_job event");
        };
        assert_eq!(event.org(), (42, "acme"));
        assert!(event.wants_runner_with(&["nimbus".into()]));
        assert!(!event.wants_runner_with(&["gpu".into()]));
        let job = event.to_new_job();
        assert_eq!(job.repo.full_name, "acme/app");
        assert_eq!(job.metadata.get("python").map(String::as_str), Some("3.12"));
        assert_eq!(
            event.action_timestamp(),
            Some(time::macros::datetime!(2026-11-27 05:00:00 UTC))
        );
    }

    #[test]
    fn user_owned_repos_use_the_owner_as_org() {
        let mut payload = queued_payload();
        payload.as_object_mut().map(|o| o.remove("organization"));
        let body = serde_json::to_vec(&payload).expect("json");
        let WebhookEvent::WorkflowJob(event) = parse_event("workflow_job", &body).expect("parses")
        else {
            panic!("expected a workflow_job event");
        };
        assert_eq!(event.org(), (9, "acme"));
    }

    #[test]
    fn malformed_payloads_are_errors_naming_the_problem() {
        let err = parse_event("workflow_job", b"{not json").expect_err("malformed");
        assert!(
            err.to_string().contains("invalid workflow_job payload"),
            "{err}"
        );
        let err = parse_event("workflow_job", br#"{"action":"queued","workflow_job":{}}"#)
            .expect_err("missing fields");
        assert!(err.to_string().contains("missing field"), "{err}");
        let mut payload = queued_payload();
        payload["workflow_job"]["created_at"] = serde_json::json!("yesterday");
        let body = serde_json::to_vec(&payload).expect("json");
        assert!(parse_event("workflow_job", &body).is_err());
    }

    #[test]
    fn other_events_and_actions_are_ignored() {
        assert!(matches!(
            parse_event("push", br#"{"ref":"main"}"#),
            Ok(WebhookEvent::Ignored { .. })
        ));
        assert!(matches!(
            parse_event("workflow_job", br#"{"action":"deleted"}"#),
            Ok(WebhookEvent::Ignored { .. })
        ));
        assert!(matches!(
            parse_event("ping", br#"{"zen":"Keep it simple."}"#),
            Ok(WebhookEvent::Ping { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(event in "[a-z_]{0,16}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_event(&event, &body);
            let _ = parse_event("workflow_job", &body);
        }

        #[test]
        fn parsing_mutated_payloads_never_panics(index in 0usize..2048, byte in proptest::num::u8::ANY) {
            let mut body = serde_json::to_vec(&queued_payload()).unwrap_or_default();
            if !body.is_empty() {
                let at = index % body.len();
                body[at] = byte;
            }
            let _ = parse_event("workflow_job", &body);
        }
    }
}
