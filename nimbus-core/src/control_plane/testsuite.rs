//! The shared test suite of the control plane's seams: every case runs against a
//! [`Connect`], which hands out callers ([`ControlPlaneApi`]) and agents
//! ([`JobSource`]) of one control plane. [`InProcess`] connects through
//! [`ControlPlane::session`] and [`ControlPlane::agent`]; [`OverHttp`] serves the
//! router on a loopback port and connects with [`ControlPlaneClient`] and minted
//! tokens. Both must pass the same cases: the in-process API and the wire behave
//! alike, errors included (same [`ErrorKind`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{router, AppState, ControlPlaneApi, JobRequest};
use crate::auth::{JwtKeys, Principal, Role};
use crate::client::ControlPlaneClient;
use crate::config::Secret;
use crate::domain::{Completion, CompletionStatus, JobStatus, OrgId, Step};
use crate::error::ErrorKind;
use crate::job_source::JobSource;
use crate::store::JobFilter;

/// Hands out callers and agents of one control plane.
pub trait Connect: Send + Sync {
    /// A caller acting as `who`.
    fn caller(&self, who: Principal) -> Arc<dyn ControlPlaneApi>;
    /// An agent named `agent_id` (its token's `sub`).
    fn agent(&self, agent_id: &str) -> Arc<dyn JobSource>;
}

/// Callers in the control plane's process.
pub struct InProcess(pub AppState);

impl Connect for InProcess {
    fn caller(&self, who: Principal) -> Arc<dyn ControlPlaneApi> {
        Arc::new(self.0.session(who))
    }

    fn agent(&self, agent_id: &str) -> Arc<dyn JobSource> {
        Arc::new(self.0.agent(agent_id))
    }
}

/// Callers over HTTP: the control plane's router on a loopback port (served until
/// the runtime ends), tokens minted with `jwt_secret`.
pub struct OverHttp {
    url: String,
    keys: JwtKeys,
}

impl OverHttp {
    /// Serves `state`'s router on a free loopback port, in the background.
    pub async fn serve(state: AppState, jwt_secret: &Secret) -> OverHttp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let app = router(state);
        tokio::spawn(crate::serve::serve(
            listener,
            app,
            crate::serve::HttpLimits::default(),
            std::future::pending(),
        ));
        OverHttp {
            url: format!("http://{address}"),
            keys: JwtKeys::new(jwt_secret),
        }
    }

    fn client(&self, sub: &str, role: Role, org_id: Option<OrgId>) -> ControlPlaneClient {
        let token = self
            .keys
            .mint(sub, role, org_id, Duration::from_secs(600))
            .expect("mint a token");
        ControlPlaneClient::new(&self.url, Some(Secret::new(token))).expect("client")
    }
}

impl Connect for OverHttp {
    fn caller(&self, who: Principal) -> Arc<dyn ControlPlaneApi> {
        Arc::new(match &who {
            Principal::Admin { sub } => self.client(sub, Role::Admin, None),
            Principal::Agent { agent_id } => self.client(agent_id, Role::Agent, None),
            Principal::Org { org_id, sub } => self.client(sub, Role::Org, Some(*org_id)),
        })
    }

    fn agent(&self, agent_id: &str) -> Arc<dyn JobSource> {
        Arc::new(self.client(agent_id, Role::Agent, None))
    }
}

fn admin() -> Principal {
    Principal::Admin { sub: "ops".into() }
}

fn org(org_id: OrgId) -> Principal {
    Principal::Org {
        org_id,
        sub: format!("org-{org_id}"),
    }
}

fn request(repo: &str, labels: &[&str]) -> JobRequest {
    JobRequest {
        repo: repo.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        steps: vec![Step {
            name: None,
            run: "echo hi".into(),
            env: BTreeMap::new(),
            working_directory: None,
        }],
        ..JobRequest::default()
    }
}

/// Orgs, jobs and analytics are scoped to the caller's org; another org's job is
/// "not found", an agent reads none of it, only an admin registers orgs.
pub async fn callers_see_only_their_org(connect: &dyn Connect) {
    let admin = connect.caller(admin());
    admin.upsert_org(1, "acme").await.expect("org 1");
    admin.upsert_org(2, "globex").await.expect("org 2");
    let acme = connect.caller(org(1));
    let globex = connect.caller(org(2));
    let agent = connect.caller(Principal::Agent {
        agent_id: "a1".into(),
    });

    let orgs: Vec<OrgId> = acme
        .orgs()
        .await
        .expect("orgs")
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(orgs, vec![1]);
    assert_eq!(admin.orgs().await.expect("orgs").len(), 2);
    assert_eq!(
        acme.upsert_org(3, "mine").await.expect_err("org").kind(),
        ErrorKind::Forbidden
    );

    let job = acme
        .submit(request("acme/app", &["nimbus", "param:python=3.12"]))
        .await
        .expect("submit");
    assert_eq!((job.org_id, job.status), (1, JobStatus::Queued));
    assert_eq!(job.metadata.get("python").map(String::as_str), Some("3.12"));
    assert_eq!(acme.job(job.id).await.expect("own job").id, job.id);
    assert_eq!(
        globex.job(job.id).await.expect_err("foreign").kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        globex.cancel(job.id).await.expect_err("foreign").kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        globex
            .submit(JobRequest {
                org_id: Some(1),
                ..request("acme/app", &[])
            })
            .await
            .expect_err("into another org")
            .kind(),
        ErrorKind::NotFound
    );
    assert!(globex
        .jobs(JobFilter::default())
        .await
        .expect("list")
        .jobs
        .is_empty());
    assert_eq!(
        globex
            .jobs(JobFilter {
                org_id: Some(1),
                ..JobFilter::default()
            })
            .await
            .expect_err("another org's list")
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        agent
            .jobs(JobFilter::default())
            .await
            .expect_err("agent")
            .kind(),
        ErrorKind::Forbidden
    );
    assert_eq!(
        agent
            .submit(request("acme/app", &[]))
            .await
            .expect_err("agent")
            .kind(),
        ErrorKind::Forbidden
    );

    let counts = acme
        .metadata_values("python", None, 10)
        .await
        .expect("analytics");
    assert_eq!(counts.len(), 1);
    assert_eq!((counts[0].value.as_str(), counts[0].jobs), ("3.12", 1));
    assert!(globex
        .metadata_values("python", None, 10)
        .await
        .expect("analytics")
        .is_empty());
    assert_eq!(
        acme.metadata_values("python", None, 0)
            .await
            .expect_err("limit")
            .kind(),
        ErrorKind::InvalidInput
    );
}

/// The analytics answer alike in process and on the wire, each org seeing its own.
pub async fn analytics_answer_alike(connect: &dyn Connect) {
    use crate::control_plane::{HistogramQuery, OrgsQuery, SummaryQuery, TrendQuery};
    let admin = connect.caller(admin());
    admin.upsert_org(1, "acme").await.expect("org 1");
    admin.upsert_org(2, "globex").await.expect("org 2");
    let acme = connect.caller(org(1));
    let globex = connect.caller(org(2));
    acme.submit(request("acme/app", &["param:lr=0.1"]))
        .await
        .expect("submit");
    acme.submit(request("acme/app", &["param:lr=0.2"]))
        .await
        .expect("submit");
    globex
        .submit(request("globex/app", &["param:lr=0.1"]))
        .await
        .expect("submit");

    let report = admin
        .observability_orgs(&OrgsQuery {
            metadata_key: Some("lr".into()),
            ..OrgsQuery::default()
        })
        .await
        .expect("report");
    let totals: Vec<(OrgId, i64, usize)> = report
        .orgs
        .iter()
        .map(|o| {
            (
                o.org_id,
                o.jobs.queued,
                o.metadata.as_ref().map_or(0, Vec::len),
            )
        })
        .collect();
    assert_eq!(totals, vec![(1, 2, 2), (2, 1, 1)]);
    let own = acme
        .observability_orgs(&OrgsQuery::default())
        .await
        .expect("own report");
    assert_eq!(
        own.orgs.iter().map(|o| o.org_id).collect::<Vec<_>>(),
        vec![1]
    );
    let foreign = OrgsQuery {
        org_id: Some(2),
        ..OrgsQuery::default()
    };
    assert_eq!(
        acme.observability_orgs(&foreign)
            .await
            .expect_err("foreign")
            .kind(),
        ErrorKind::NotFound
    );
    let histogram = globex
        .metadata_histogram(&HistogramQuery {
            key: "lr".into(),
            ..HistogramQuery::default()
        })
        .await
        .expect("histogram");
    let values: Vec<(&str, i64)> = histogram
        .buckets
        .iter()
        .map(|b| (b.value.as_str(), b.total))
        .collect();
    assert_eq!(values, vec![("0.1", 1)]);
    let trend = acme
        .metadata_trend(&TrendQuery {
            key: "lr".into(),
            bucket_hours: Some(1),
            ..TrendQuery::default()
        })
        .await
        .expect("trend");
    assert_eq!(
        trend.buckets.iter().map(|b| b.values.len()).sum::<usize>(),
        2
    );
    let summary = admin
        .job_summary(&SummaryQuery {
            metadata_key: Some("lr".into()),
            metadata_value: Some("0.1".into()),
            ..SummaryQuery::default()
        })
        .await
        .expect("summary");
    assert_eq!(summary.total, 2);
    assert_eq!(
        admin
            .metadata_trend(&TrendQuery {
                key: "lr".into(),
                bucket_hours: Some(0),
                ..TrendQuery::default()
            })
            .await
            .expect_err("bucket_hours")
            .kind(),
        ErrorKind::InvalidInput
    );
    let agent = connect.caller(Principal::Agent {
        agent_id: "a1".into(),
    });
    assert_eq!(
        agent.metadata_presets().await.expect_err("agent").kind(),
        ErrorKind::Forbidden
    );
}

/// Bad input is refused with the same kind of error in process and on the wire.
pub async fn bad_input_is_refused_alike(connect: &dyn Connect) {
    let admin = connect.caller(admin());
    admin.upsert_org(1, "acme").await.expect("org");
    let acme = connect.caller(org(1));
    let no_steps = JobRequest {
        steps: Vec::new(),
        ..request("acme/app", &[])
    };
    for bad in [
        no_steps,
        request("not a repo", &[]),
        request("acme/app", &[""]),
    ] {
        assert_eq!(
            acme.submit(bad).await.expect_err("refused").kind(),
            ErrorKind::InvalidInput
        );
    }
    assert_eq!(
        admin
            .submit(request("acme/app", &[]))
            .await
            .expect_err("admin without org_id")
            .kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        acme.jobs(JobFilter {
            limit: 0,
            ..JobFilter::default()
        })
        .await
        .expect_err("limit")
        .kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        acme.job(987_654).await.expect_err("unknown").kind(),
        ErrorKind::NotFound
    );
}

/// A job from submission to completion: an agent leases it (with its labels),
/// heartbeats, completes; another agent cannot touch the lease; the org pages
/// through its jobs and cancels one that is still queued.
pub async fn a_job_from_submit_to_complete(connect: &dyn Connect) {
    let admin = connect.caller(admin());
    admin.upsert_org(1, "acme").await.expect("org");
    let acme = connect.caller(org(1));
    let job = acme
        .submit(request("acme/app", &["nimbus", "gpu"]))
        .await
        .expect("submit");
    let other = acme
        .submit(request("acme/app", &["nimbus"]))
        .await
        .expect("submit");

    let agent = connect.agent("a1");
    let thief = connect.agent("a2");
    let labels = vec!["nimbus".to_string(), "gpu".to_string()];
    let narrow = vec!["nimbus".to_string(), "arm".to_string()];
    let lease = agent
        .lease(Duration::ZERO, Some(&narrow))
        .await
        .expect("lease")
        .expect("the job without gpu");
    assert_eq!(lease.job.id, other.id);
    assert!(agent
        .lease(Duration::ZERO, Some(&narrow))
        .await
        .expect("lease")
        .is_none());
    let cancelled = acme.cancel(other.id).await.expect("cancel a leased job");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert_eq!(
        agent
            .heartbeat(other.id, lease.fencing_token)
            .await
            .expect_err("the lease ended")
            .kind(),
        ErrorKind::Conflict
    );

    let lease = agent
        .lease(Duration::ZERO, Some(&labels))
        .await
        .expect("lease")
        .expect("the gpu job");
    assert_eq!(lease.job.id, job.id);
    assert!(lease.ingest_token.is_some());
    agent
        .heartbeat(job.id, lease.fencing_token)
        .await
        .expect("heartbeat");
    assert_eq!(
        thief
            .heartbeat(job.id, lease.fencing_token)
            .await
            .expect_err("not its lease")
            .kind(),
        ErrorKind::Conflict
    );
    let completion = Completion {
        fencing_token: lease.fencing_token,
        status: CompletionStatus::Succeeded,
        exit_code: Some(0),
        reason: None,
        result: None,
    };
    assert_eq!(
        thief
            .complete(job.id, &completion)
            .await
            .expect_err("not its lease")
            .kind(),
        ErrorKind::Conflict
    );
    let done = agent.complete(job.id, &completion).await.expect("complete");
    assert_eq!(
        (done.status, done.exit_code),
        (JobStatus::Succeeded, Some(0))
    );
    assert_eq!(
        agent
            .complete(job.id, &completion)
            .await
            .expect("idempotent")
            .status,
        JobStatus::Succeeded
    );
    assert_eq!(
        agent
            .runner_config(job.id, lease.fencing_token)
            .await
            .expect_err("not leased any more")
            .kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        acme.cancel(job.id).await.expect_err("already ended").kind(),
        ErrorKind::Conflict
    );

    // Paging: one job a page, newest first, the cursor carries on.
    let first = acme
        .jobs(JobFilter {
            limit: 1,
            ..JobFilter::default()
        })
        .await
        .expect("page 1");
    assert_eq!(first.jobs.len(), 1);
    let cursor = first.next_cursor.expect("a second page");
    let second = acme
        .jobs(JobFilter {
            limit: 1,
            cursor: Some(cursor.parse().expect("numeric cursor")),
            ..JobFilter::default()
        })
        .await
        .expect("page 2");
    assert_eq!(second.jobs.len(), 1);
    assert_ne!(first.jobs[0].id, second.jobs[0].id);
    let succeeded = acme
        .jobs(JobFilter {
            status: Some(JobStatus::Succeeded),
            ..JobFilter::default()
        })
        .await
        .expect("by status");
    assert_eq!(
        succeeded.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![job.id]
    );
}

/// A workflow job (what `nimbus run` submits to a control plane): the org
/// uploads its working tree once, the job names it; only the agent holding the
/// lease fetches it; the job keeps the result it completes with. Another org can
/// neither upload into the org nor name its archive's bytes wrongly.
pub async fn a_workflow_job_with_its_workspace_and_result(connect: &dyn Connect) {
    let admin = connect.caller(admin());
    admin.upsert_org(1, "acme").await.expect("org");
    admin.upsert_org(2, "rival").await.expect("org");
    let acme = connect.caller(org(1));
    let rival = connect.caller(org(2));
    let archive = b"a tar of the working tree".to_vec();
    let digest = crate::domain::workspace_digest(&archive);
    assert_eq!(
        rival
            .put_workspace(Some(1), &digest, archive.clone())
            .await
            .expect_err("not its org")
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        acme.put_workspace(None, &"0".repeat(64), archive.clone())
            .await
            .expect_err("the bytes do not hash to the name")
            .kind(),
        ErrorKind::InvalidInput
    );
    let receipt = acme
        .put_workspace(None, &digest, archive.clone())
        .await
        .expect("upload");
    assert_eq!((receipt.org_id, receipt.bytes), (1, archive.len() as u64));

    let workflow = serde_json::json!({"id": "build", "steps": [{"run": "make"}], "contexts": {
        "secrets": {"DEPLOY_KEY": "hunter2"}, "github": {"token": "ghs_secret", "ref": "refs/heads/main"}}});
    let both = JobRequest {
        workflow: Some(workflow.clone()),
        ..request("acme/app", &[])
    };
    assert_eq!(
        acme.submit(both)
            .await
            .expect_err("steps and a workflow")
            .kind(),
        ErrorKind::InvalidInput
    );
    let job = acme
        .submit(JobRequest {
            steps: Vec::new(),
            workflow: Some(workflow.clone()),
            workspace: Some(digest.clone()),
            ..request("acme/app", &[])
        })
        .await
        .expect("submit a workflow job");
    // Its secrets are in no answer of the API, only in the lease its agent needs.
    let shown = serde_json::to_string(&acme.job(job.id).await.expect("the job")).expect("json");
    assert!(
        !shown.contains("hunter2") && !shown.contains("ghs_secret"),
        "{shown}"
    );
    assert!(shown.contains("refs/heads/main"), "{shown}");
    let listed =
        serde_json::to_string(&acme.jobs(JobFilter::default()).await.expect("jobs")).expect("json");
    assert!(!listed.contains("hunter2"), "{listed}");

    let agent = connect.agent("a1");
    let thief = connect.agent("a2");
    let lease = agent
        .lease(Duration::ZERO, None)
        .await
        .expect("lease")
        .expect("the job");
    assert_eq!(lease.job.id, job.id);
    assert_eq!(lease.job.spec.workflow.as_ref(), Some(&workflow));
    assert_eq!(
        thief
            .workspace(job.id, lease.fencing_token)
            .await
            .expect_err("not its lease")
            .kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        agent
            .workspace(job.id, lease.fencing_token)
            .await
            .expect("the archive"),
        archive
    );
    let result =
        serde_json::json!({"outputs": {"version": "1.2.3"}, "summary": "", "annotations": []});
    let done = agent
        .complete(
            job.id,
            &Completion {
                fencing_token: lease.fencing_token,
                status: CompletionStatus::Succeeded,
                exit_code: Some(0),
                reason: None,
                result: Some(result.clone()),
            },
        )
        .await
        .expect("complete");
    assert_eq!(done.result.as_ref(), Some(&result));
    assert_eq!(
        acme.job(job.id).await.expect("the job").result,
        Some(result)
    );
    assert_eq!(
        agent
            .workspace(job.id, lease.fencing_token)
            .await
            .expect_err("not leased any more")
            .kind(),
        ErrorKind::Conflict
    );
}
