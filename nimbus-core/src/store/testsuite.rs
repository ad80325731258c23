//! The shared store test suite: every [`Store`] implementation must pass it.
//!
//! `store_test_suite!(module, async { constructor })` expands to one `#[tokio::test]`
//! per case; each case gets a fresh store from the constructor. Nimbus runs it for
//! SQLite and PostgreSQL (`tests/it/store.rs`); an embedder with its own store can
//! run it too, with the `testsuite` feature.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::domain::{
    Completion, CompletionStatus, GithubJobRef, JobSource, JobSpec, JobStatus, NewJob, OrgId, Repo,
    Step,
};
use crate::error::ErrorKind;
use crate::store::{
    Admission, Delivery, GithubJobUpdate, JobFilter, LeaseRequest, RateLimit, Store,
};

/// A fresh SQLite store in a temporary directory (removed when the process exits
/// only if the OS cleans temp; files are small).
pub async fn sqlite_store() -> Arc<dyn Store> {
    let dir = std::env::temp_dir().join(format!("nimbus-test-{}", uuid::Uuid::new_v4()));
    let url = format!("sqlite://{}", dir.join("store.db").display());
    match crate::store::open(&url, 4).await {
        Ok(store) => store,
        Err(e) => panic!("opening SQLite store at {url}: {e}"),
    }
}

/// The PostgreSQL URL tests use: `NIMBUS_TEST_DATABASE_URL`. Unset means skip,
/// except under `CI=true`, where a missing database fails the run.
pub fn postgres_test_url() -> Option<String> {
    crate::testsuite::setting("NIMBUS_TEST_DATABASE_URL")
}

/// Creates a fresh schema in the test database and returns a URL whose
/// connections use it (so tests never see each other's rows).
#[cfg(feature = "postgres")]
pub async fn postgres_schema_url() -> Option<String> {
    use sqlx::Connection;
    let base = postgres_test_url()?;
    let schema = format!("nimbus_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(conn) => conn,
        Err(e) => panic!("PostgreSQL at NIMBUS_TEST_DATABASE_URL is unreachable: {e}"),
    };
    if let Err(e) = sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
    {
        panic!("creating schema {schema}: {e}");
    }
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// A fresh PostgreSQL store in its own schema, or `None` when skipping.
#[cfg(feature = "postgres")]
pub async fn postgres_store() -> Option<Arc<dyn Store>> {
    let url = postgres_schema_url().await?;
    match crate::store::open(&url, 8).await {
        Ok(store) => Some(store),
        Err(e) => panic!("opening PostgreSQL store: {e}"),
    }
}

/// The fixed "now" of the suite: 2026-11-27 12:00 UTC.
pub fn t0() -> OffsetDateTime {
    time::macros::datetime!(2026-11-27 12:00:00 UTC)
}

/// A direct job of `org_id` for `repo` with `labels` (their `param:`/`meta:` ones
/// as metadata), one `echo hello` step and a 10-minute timeout.
pub fn direct_job(org_id: OrgId, repo: &str, labels: &[&str]) -> NewJob {
    let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    NewJob {
        org_id,
        repo: Repo {
            id: None,
            full_name: repo.to_string(),
        },
        source: JobSource::Direct,
        metadata: crate::domain::metadata_from_labels(&labels),
        labels,
        spec: JobSpec {
            steps: vec![Step {
                name: Some("hello".into()),
                run: "echo hello".into(),
                env: BTreeMap::new(),
                working_directory: None,
            }],
            env: BTreeMap::new(),
            timeout_minutes: 10,
            ..JobSpec::default()
        },
        github: None,
        rejected: false,
        policy_reasons: Vec::new(),
        traceparent: None,
    }
}

/// A queued GitHub job of `org_id` for GitHub job `github_job_id` (repository `acme/app`).
pub fn github_job(org_id: OrgId, github_job_id: i64) -> NewJob {
    NewJob {
        source: JobSource::Github,
        spec: JobSpec::default(),
        github: Some(GithubJobRef {
            job_id: github_job_id,
            run_id: 1,
            run_attempt: 1,
            status: "queued".into(),
            ..GithubJobRef::default()
        }),
        ..direct_job(org_id, "acme/app", &["self-hosted", "nimbus"])
    }
}

fn lease_request(agent: &str, ttl_secs: u64) -> LeaseRequest {
    LeaseRequest {
        labels: None,
        agent_id: agent.into(),
        org_id: None,
        ttl: Duration::from_secs(ttl_secs),
    }
}

fn done(fencing_token: i64) -> Completion {
    Completion {
        fencing_token,
        status: CompletionStatus::Succeeded,
        exit_code: Some(0),
        reason: None,
        result: None,
    }
}

/// Queued jobs read back as written; `list_jobs` filters by org, repository,
/// label, metadata and status, newest first, and pages walk every job once.
pub async fn enqueue_get_and_list(store: Arc<dyn Store>) {
    let a = store
        .enqueue(
            direct_job(1, "acme/app", &["nimbus", "param:py=3.12"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue a");
    assert!(a.created);
    assert_eq!(a.job.status, JobStatus::Queued);
    assert_eq!(a.job.attempt, 1);
    assert_eq!(a.job.fencing_token, 0);
    let b = store
        .enqueue(
            direct_job(1, "acme/lib", &["nimbus", "meta:team=core"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue b");
    let c = store
        .enqueue(
            direct_job(2, "other/app", &["gpu", "param:py=3.11"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue c");
    let fetched = store.get_job(a.job.id).await.expect("get").expect("exists");
    assert_eq!(fetched, a.job);
    assert_eq!(fetched.metadata.get("py").map(String::as_str), Some("3.12"));
    assert!(store.get_job(c.job.id + 1000).await.expect("get").is_none());

    let ids = |page: crate::store::JobPage| page.jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    let all = store.list_jobs(&JobFilter::default()).await.expect("list");
    assert_eq!(ids(all), vec![c.job.id, b.job.id, a.job.id], "newest first");
    let org1 = store
        .list_jobs(&JobFilter {
            org_id: Some(1),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(org1), vec![b.job.id, a.job.id]);
    let repo = store
        .list_jobs(&JobFilter {
            repo: Some("acme/lib".into()),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(repo), vec![b.job.id]);
    let gpu = store
        .list_jobs(&JobFilter {
            label: Some("gpu".into()),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(gpu), vec![c.job.id]);
    let py = store
        .list_jobs(&JobFilter {
            metadata_key: Some("py".into()),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(py), vec![c.job.id, a.job.id]);
    let py312 = store
        .list_jobs(&JobFilter {
            metadata_key: Some("py".into()),
            metadata_value: Some("3.12".into()),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(py312), vec![a.job.id]);
    let queued = store
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Leased),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert!(queued.jobs.is_empty());

    // Pagination walks every job exactly once.
    let first = store
        .list_jobs(&JobFilter {
            limit: 2,
            ..JobFilter::default()
        })
        .await
        .expect("page 1");
    assert_eq!(first.jobs.len(), 2);
    let cursor = first
        .next_cursor
        .clone()
        .expect("more pages")
        .parse()
        .expect("numeric cursor");
    let second = store
        .list_jobs(&JobFilter {
            limit: 2,
            cursor: Some(cursor),
            ..JobFilter::default()
        })
        .await
        .expect("page 2");
    assert_eq!(ids(second.clone()), vec![a.job.id]);
    assert!(second.next_cursor.is_none());

    let values = store.metadata_values(None, "py", 10).await.expect("values");
    assert_eq!(values.len(), 2);
    assert_eq!(
        store
            .metadata_values(Some(1), "py", 10)
            .await
            .expect("values"),
        vec![("3.12".to_string(), 1)]
    );
    let metadata = store.job_metadata(b.job.id).await.expect("metadata");
    assert_eq!(metadata.get("team").map(String::as_str), Some("core"));
}

/// Queueing the same GitHub job twice returns the first job with `created: false`.
pub async fn github_jobs_are_deduplicated(store: Arc<dyn Store>) {
    let first = store
        .enqueue(github_job(1, 555), &Admission::default(), t0())
        .await
        .expect("first");
    let again = store
        .enqueue(github_job(1, 555), &Admission::default(), t0())
        .await
        .expect("again");
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.job.id, again.job.id);
    let github = first.job.github.expect("github ref");
    assert_eq!(github.job_id, 555);
    assert_eq!(
        store
            .list_jobs(&JobFilter::default())
            .await
            .expect("list")
            .jobs
            .len(),
        1
    );
}

/// A delivery id seen before is refused (`Conflict`) and queues nothing.
pub async fn replayed_delivery_writes_nothing(store: Arc<dyn Store>) {
    let delivery = Admission {
        delivery: Some(Delivery {
            id: "d-1".into(),
            received_at: t0(),
        }),
        rate_limit: None,
    };
    store
        .enqueue(github_job(1, 1), &delivery, t0())
        .await
        .expect("first");
    let err = store
        .enqueue(github_job(1, 2), &delivery, t0())
        .await
        .expect_err("replay");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(
        store
            .list_jobs(&JobFilter::default())
            .await
            .expect("list")
            .jobs
            .len(),
        1
    );
    assert!(store.delivery_seen("d-1").await.expect("seen"));
    assert!(!store.delivery_seen("d-2").await.expect("seen"));
}

/// An admission over the rate limit fails with the time left in the window and
/// records neither the job nor its delivery, which the next window accepts.
pub async fn rate_limited_admission_writes_nothing(store: Arc<dyn Store>) {
    let admission = |delivery: &str| Admission {
        delivery: Some(Delivery {
            id: delivery.into(),
            received_at: t0(),
        }),
        rate_limit: Some(RateLimit {
            key: "org:1".into(),
            limit: 1,
            interval: Duration::from_secs(60),
        }),
    };
    store
        .enqueue(github_job(1, 1), &admission("a"), t0())
        .await
        .expect("first");
    let err = store
        .enqueue(
            github_job(1, 2),
            &admission("b"),
            t0() + Duration::from_secs(15),
        )
        .await
        .expect_err("over the limit");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    match err {
        crate::Error::RateLimited {
            org_id,
            retry_after,
        } => {
            assert_eq!(org_id, 1);
            assert_eq!(retry_after, Duration::from_secs(45));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(
        !store.delivery_seen("b").await.expect("seen"),
        "a refused delivery is not recorded"
    );
    assert_eq!(
        store
            .list_jobs(&JobFilter::default())
            .await
            .expect("list")
            .jobs
            .len(),
        1
    );
    // Next window: the same delivery is accepted.
    store
        .enqueue(
            github_job(1, 2),
            &admission("b"),
            t0() + Duration::from_secs(60),
        )
        .await
        .expect("next window");
    assert!(store.delivery_seen("b").await.expect("seen"));
}

/// Leases, heartbeats and completions check the fencing token; a repeated
/// completion is idempotent and a finished job's lease cannot be renewed.
pub async fn lease_heartbeat_complete_are_fenced(store: Arc<dyn Store>) {
    assert!(store
        .lease(&lease_request("a1", 60), t0())
        .await
        .expect("lease")
        .is_none());
    let job = store
        .enqueue(
            direct_job(1, "acme/app", &["nimbus"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue")
        .job;
    let lease = store
        .lease(&lease_request("a1", 60), t0())
        .await
        .expect("lease")
        .expect("a job");
    assert_eq!(lease.job.id, job.id);
    assert_eq!(lease.job.status, JobStatus::Leased);
    assert_eq!(lease.fencing_token, 1);
    assert_eq!(lease.expires_at, t0() + Duration::from_secs(60));
    assert_eq!(lease.job.agent_id.as_deref(), Some("a1"));
    assert!(
        store
            .lease(&lease_request("a2", 60), t0())
            .await
            .expect("lease")
            .is_none(),
        "no second lease"
    );

    let later = t0() + Duration::from_secs(30);
    let renewal = store
        .heartbeat(job.id, "a1", 1, Duration::from_secs(60), later)
        .await
        .expect("heartbeat");
    assert_eq!(renewal.expires_at, later + Duration::from_secs(60));
    assert_eq!(renewal.lease_id, lease.lease_id);
    let stale = store
        .heartbeat(job.id, "a1", 0, Duration::from_secs(60), later)
        .await
        .expect_err("stale");
    assert_eq!(stale.kind(), ErrorKind::Conflict);
    let missing = store
        .heartbeat(job.id + 99, "a1", 1, Duration::from_secs(60), later)
        .await
        .expect_err("missing");
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    let stale = store
        .complete(job.id, "a1", &done(7), later)
        .await
        .expect_err("stale complete");
    assert_eq!(stale.kind(), ErrorKind::Conflict);
    let finished = store
        .complete(job.id, "a1", &done(1), later)
        .await
        .expect("complete");
    assert_eq!(finished.status, JobStatus::Succeeded);
    assert_eq!(finished.exit_code, Some(0));
    assert_eq!(finished.finished_at, Some(later));
    // Repeating the same completion is idempotent and changes nothing.
    let repeat = store
        .complete(job.id, "a1", &done(1), later + Duration::from_secs(5))
        .await
        .expect("repeat");
    assert_eq!(repeat, finished);
    let failed_repeat = Completion {
        status: CompletionStatus::Failed,
        ..done(1)
    };
    assert_eq!(
        store
            .complete(job.id, "a1", &failed_repeat, later)
            .await
            .expect("repeat")
            .status,
        JobStatus::Succeeded
    );
    let heartbeat_after = store
        .heartbeat(job.id, "a1", 1, Duration::from_secs(60), later)
        .await
        .expect_err("done");
    assert_eq!(heartbeat_after.kind(), ErrorKind::Conflict);
}

/// A lease is its agent's: another agent that knows the job id and the fencing
/// token (job ids are sequential, tokens start at 1) can neither extend nor
/// finish it, and the refusal does not tell it the current token.
pub async fn leases_belong_to_the_agent_that_took_them(store: Arc<dyn Store>) {
    let job = store
        .enqueue(
            direct_job(1, "acme/app", &["nimbus"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue")
        .job;
    let lease = store
        .lease(&lease_request("owner", 60), t0())
        .await
        .expect("lease")
        .expect("a job");
    let later = t0() + Duration::from_secs(5);
    let refused = store
        .heartbeat(
            job.id,
            "intruder",
            lease.fencing_token,
            Duration::from_secs(60),
            later,
        )
        .await
        .expect_err("another agent's heartbeat");
    assert_eq!(refused.kind(), ErrorKind::Conflict);
    let refused = store
        .complete(job.id, "intruder", &done(lease.fencing_token), later)
        .await
        .expect_err("another agent's completion");
    assert_eq!(refused.kind(), ErrorKind::Conflict);
    let guess = store
        .complete(job.id, "intruder", &done(99), later)
        .await
        .expect_err("a guessed token");
    assert!(
        !guess.to_string().contains("token") && !guess.to_string().contains("owner"),
        "the refusal tells of the current lease: {guess}"
    );
    let current = store.get_job(job.id).await.expect("get").expect("job");
    assert_eq!(current.status, JobStatus::Leased, "nothing changed");
    assert_eq!(current.lease_expires_at, Some(lease.expires_at));
    let finished = store
        .complete(job.id, "owner", &done(lease.fencing_token), later)
        .await
        .expect("the owner completes");
    assert_eq!(finished.status, JobStatus::Succeeded);
    // Once finished, another agent's repeat of the completion is still refused.
    let refused = store
        .complete(job.id, "intruder", &done(lease.fencing_token), later)
        .await
        .expect_err("repeat by another agent");
    assert_eq!(refused.kind(), ErrorKind::Conflict);
}

/// Queues `count` direct jobs of `org` (in one go where the store allows).
pub async fn queue_many(store: &Arc<dyn Store>, org: OrgId, count: usize) {
    for _ in 0..count {
        store
            .enqueue(
                direct_job(org, "acme/app", &["nimbus"]),
                &Admission::default(),
                t0(),
            )
            .await
            .expect("enqueue");
    }
}

/// The fair-share scheduler over this store: org A queues 1,000 jobs, then org B
/// queues one; B's job is among the next two leases, and the two orgs then take
/// turns instead of B waiting behind A's thousand.
pub async fn fair_share_serves_a_newcomer_at_once(store: Arc<dyn Store>) {
    use crate::scheduler::{FairShare, Scheduler};
    let fair = FairShare::new(Default::default());
    queue_many(&store, 1, 1000).await;
    queue_many(&store, 2, 1).await;
    let mut orgs = Vec::new();
    for _ in 0..2 {
        let lease = fair
            .lease(store.as_ref(), &lease_request("agent", 60), t0())
            .await
            .expect("lease")
            .expect("a job");
        orgs.push(lease.job.org_id);
    }
    assert!(
        orgs.contains(&2),
        "B's job is among the next two leases: {orgs:?}"
    );
    assert_eq!(
        store
            .queued_orgs()
            .await
            .expect("orgs")
            .iter()
            .map(|org| org.org_id)
            .collect::<Vec<_>>(),
        vec![1],
        "only A has work left"
    );
}

/// With weights 3:1 and both orgs busy, 400 leases go 3:1 (within 5 %).
pub async fn fair_share_follows_the_weights(store: Arc<dyn Store>) {
    use crate::scheduler::{FairShare, Scheduler};
    let fair = FairShare::new([(1, 3), (2, 1)].into_iter().collect());
    queue_many(&store, 2, 400).await;
    queue_many(&store, 1, 400).await;
    let mut served = std::collections::HashMap::new();
    for _ in 0..400 {
        let lease = fair
            .lease(store.as_ref(), &lease_request("agent", 60), t0())
            .await
            .expect("lease")
            .expect("a job");
        *served.entry(lease.job.org_id).or_insert(0u32) += 1;
    }
    let (a, b) = (served[&1], served[&2]);
    assert!((285..=315).contains(&a) && a + b == 400, "A {a}, B {b}");
}

/// The reaper requeues an expired lease (attempt + 1, idempotent); the next lease
/// has a higher token and the old holder can no longer report.
pub async fn expired_lease_is_requeued_with_a_higher_token(store: Arc<dyn Store>) {
    let job = store
        .enqueue(
            direct_job(1, "acme/app", &["nimbus"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue")
        .job;
    let first = store
        .lease(&lease_request("dead-agent", 10), t0())
        .await
        .expect("lease")
        .expect("job");
    // Before expiry the reaper leaves it alone.
    let report = store
        .reap_expired(t0() + Duration::from_secs(5), 3)
        .await
        .expect("reap");
    assert!(report.requeued.is_empty() && report.failed.is_empty());
    let after = t0() + Duration::from_secs(11);
    let report = store.reap_expired(after, 3).await.expect("reap");
    assert_eq!(report.requeued, vec![job.id]);
    // A second sweep finds nothing: the reaper is idempotent.
    assert_eq!(
        store.reap_expired(after, 3).await.expect("reap again"),
        Default::default()
    );
    let requeued = store.get_job(job.id).await.expect("get").expect("exists");
    assert_eq!(requeued.status, JobStatus::Queued);
    assert_eq!(requeued.attempt, 2);
    assert!(requeued.agent_id.is_none());

    let second = store
        .lease(&lease_request("new-agent", 10), after)
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(second.job.id, job.id);
    assert!(second.fencing_token > first.fencing_token);
    assert_eq!(second.job.attempt, 2);
    let stale = store
        .complete(job.id, "dead-agent", &done(first.fencing_token), after)
        .await
        .expect_err("old token");
    assert_eq!(stale.kind(), ErrorKind::Conflict);
    let stale = store
        .heartbeat(
            job.id,
            "dead-agent",
            first.fencing_token,
            Duration::from_secs(10),
            after,
        )
        .await
        .expect_err("old token");
    assert_eq!(stale.kind(), ErrorKind::Conflict);
    let done = store
        .complete(job.id, "new-agent", &done(second.fencing_token), after)
        .await
        .expect("new token completes");
    assert_eq!(done.status, JobStatus::Succeeded);
}

/// A job whose lease expires on its last allowed attempt ends `failed` and is not leased again.
pub async fn jobs_fail_after_max_attempts(store: Arc<dyn Store>) {
    let job = store
        .enqueue(
            direct_job(1, "acme/app", &["nimbus"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue")
        .job;
    let first = store
        .lease(&lease_request("a", 1), t0())
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(first.job.attempt, 1);
    let now = t0() + Duration::from_secs(2);
    let report = store.reap_expired(now, 2).await.expect("reap");
    assert_eq!((report.requeued, report.failed), (vec![job.id], vec![]));
    let second = store
        .lease(&lease_request("a", 1), now)
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(second.job.attempt, 2);
    let now = now + Duration::from_secs(2);
    let report = store.reap_expired(now, 2).await.expect("reap");
    assert_eq!((report.requeued, report.failed), (vec![], vec![job.id]));
    let failed = store.get_job(job.id).await.expect("get").expect("exists");
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.attempt, 2);
    assert!(failed.finished_at.is_some());
    assert!(failed
        .failure_reason
        .as_deref()
        .unwrap_or_default()
        .contains("lease expired"));
    assert!(store
        .lease(&lease_request("a", 1), now)
        .await
        .expect("lease")
        .is_none());
}

/// Eight agents leasing 200 jobs at once never get the same job twice, and lose none.
pub async fn concurrent_leases_never_hand_out_a_job_twice(store: Arc<dyn Store>) {
    const JOBS: usize = 200;
    for i in 0..JOBS {
        store
            .enqueue(
                direct_job(1 + (i % 3) as i64, "acme/app", &["nimbus"]),
                &Admission::default(),
                t0(),
            )
            .await
            .expect("enqueue");
    }
    let mut tasks = Vec::new();
    for agent in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let request = lease_request(&format!("agent-{agent}"), 60);
            while let Some(lease) = store.lease(&request, t0()).await.expect("lease") {
                store
                    .complete(
                        lease.job.id,
                        &request.agent_id,
                        &done(lease.fencing_token),
                        t0(),
                    )
                    .await
                    .expect("complete");
                mine.push(lease.job.id);
            }
            mine
        }));
    }
    let mut leased = Vec::new();
    for task in tasks {
        leased.extend(task.await.expect("agent task"));
    }
    leased.sort_unstable();
    let before = leased.len();
    leased.dedup();
    assert_eq!(before, leased.len(), "a job was leased twice");
    assert_eq!(leased.len(), JOBS, "a job was lost");
    let counts = store.count_by_status().await.expect("counts");
    assert_eq!(counts, vec![(JobStatus::Succeeded, JOBS as i64)]);
}

/// Concurrent webhook admissions, replays and redeliveries among them, each get an
/// answer: every GitHub job queued once, one of each replayed pair refused.
pub async fn concurrent_webhook_admissions_are_each_answered(store: Arc<dyn Store>) {
    // 60 distinct GitHub jobs, each delivered once, plus for every third a replay of
    // the same delivery and for every fifth a second delivery of the same GitHub job,
    // all at once (PostgreSQL batches these into shared statements).
    let mut requests = Vec::new();
    for n in 0..60i64 {
        requests.push((n, format!("delivery-{n}"), "first"));
        if n % 3 == 0 {
            requests.push((n, format!("delivery-{n}"), "replay"));
        }
        if n % 5 == 0 {
            requests.push((n, format!("redelivery-{n}"), "second"));
        }
    }
    let mut tasks = Vec::new();
    for (n, delivery, kind) in requests {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut job = github_job(1, 10_000 + n);
            job.labels.push(format!("param:n={n}"));
            job.metadata = crate::domain::metadata_from_labels(&job.labels);
            let admission = Admission {
                delivery: Some(Delivery {
                    id: delivery,
                    received_at: t0(),
                }),
                rate_limit: None,
            };
            (n, kind, store.enqueue(job, &admission, t0()).await)
        }));
    }
    let mut created = std::collections::BTreeMap::new();
    let mut replays = 0;
    for task in tasks {
        let (n, kind, result) = task.await.expect("task");
        match (kind, result) {
            ("replay", Err(e)) | ("first", Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::Conflict, "{n} {kind}: {e}");
                replays += 1;
            }
            (_, Ok(enqueued)) => {
                assert_eq!(
                    enqueued.job.github.as_ref().map(|g| g.job_id),
                    Some(10_000 + n)
                );
                if enqueued.created {
                    assert!(
                        created.insert(n, enqueued.job.id).is_none(),
                        "job {n} created twice"
                    );
                    assert_eq!(enqueued.job.metadata.get("n"), Some(&n.to_string()));
                }
            }
            (kind, Err(e)) => panic!("{n} {kind}: {e}"),
        }
    }
    assert_eq!(replays, 20, "one of each replayed pair is refused");
    assert_eq!(created.len(), 60, "every GitHub job queued exactly once");
    let page = store
        .list_jobs(&JobFilter {
            limit: 500,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.jobs.len(), 60);
    let values = store
        .metadata_values(Some(1), "n", 1000)
        .await
        .expect("metadata");
    assert_eq!(values.len(), 60, "metadata rows for every job");
}

/// Concurrent admissions of one org count against one limit: 7 of 20 pass a limit of 7.
pub async fn concurrent_admissions_respect_the_rate_limit(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for n in 0..20i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let admission = Admission {
                delivery: Some(Delivery {
                    id: format!("limited-{n}"),
                    received_at: t0(),
                }),
                rate_limit: Some(RateLimit {
                    key: "org-jobs:1".into(),
                    limit: 7,
                    interval: Duration::from_secs(60),
                }),
            };
            store
                .enqueue(github_job(1, 20_000 + n), &admission, t0())
                .await
        }));
    }
    let (mut created, mut limited) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            Ok(enqueued) => {
                assert!(enqueued.created);
                created += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
                limited += 1;
            }
        }
    }
    assert_eq!((created, limited), (7, 13));
    assert_eq!(
        store
            .list_jobs(&JobFilter::default())
            .await
            .expect("list")
            .jobs
            .len(),
        7
    );
}

/// A lease limited to one org takes only that org's jobs.
pub async fn leases_can_be_limited_to_one_org(store: Arc<dyn Store>) {
    let other = store
        .enqueue(
            direct_job(2, "other/app", &["nimbus"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue")
        .job;
    let ours = store
        .enqueue(
            direct_job(1, "acme/app", &["nimbus"]),
            &Admission::default(),
            t0(),
        )
        .await
        .expect("enqueue")
        .job;
    let request = LeaseRequest {
        org_id: Some(1),
        ..lease_request("dedicated", 60)
    };
    let lease = store
        .lease(&request, t0())
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(lease.job.id, ours.id);
    assert!(store.lease(&request, t0()).await.expect("lease").is_none());
    let lease = store
        .lease(&lease_request("shared", 60), t0())
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(lease.job.id, other.id);
}

/// An agent leases only jobs whose runner labels it has (case-insensitive;
/// `self-hosted` and `param:`/`meta:`/`timeout:` labels need no match).
pub async fn agents_lease_only_jobs_their_labels_cover(store: Arc<dyn Store>) {
    let enqueue = |labels: &'static [&'static str]| {
        let store = store.clone();
        async move {
            store
                .enqueue(
                    direct_job(1, "acme/app", labels),
                    &Admission::default(),
                    t0(),
                )
                .await
                .expect("enqueue")
                .job
        }
    };
    let gpu = enqueue(&["self-hosted", "nimbus", "gpu", "param:cuda=12"]).await;
    let plain = enqueue(&["nimbus", "timeout:5", "meta:team=ml"]).await;
    let arm = enqueue(&["nimbus", "ARM64"]).await;
    let with = |labels: &[&str]| LeaseRequest {
        labels: Some(labels.iter().map(|l| l.to_string()).collect()),
        ..lease_request("labelled", 60)
    };
    // An agent without "gpu" skips the older GPU job and takes the plain one.
    let lease = store
        .lease(&with(&["nimbus"]), t0())
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(
        lease.job.id, plain.id,
        "param:/meta:/timeout: labels need no match"
    );
    assert!(store
        .lease(&with(&["nimbus"]), t0())
        .await
        .expect("lease")
        .is_none());
    // Labels match case-insensitively; self-hosted is implied.
    let lease = store
        .lease(&with(&["NIMBUS", "arm64"]), t0())
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(lease.job.id, arm.id);
    let lease = store
        .lease(&with(&["nimbus", "gpu"]), t0())
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(lease.job.id, gpu.id);
    // With an org filter as well.
    let later = enqueue(&["nimbus"]).await;
    let request = LeaseRequest {
        org_id: Some(1),
        ..with(&["nimbus"])
    };
    let lease = store
        .lease(&request, t0())
        .await
        .expect("lease")
        .expect("job");
    assert_eq!(lease.job.id, later.id);
}

/// Rate-limit counters count per key and per aligned window.
pub async fn rate_limits_count_per_key_and_window(store: Arc<dyn Store>) {
    let interval = Duration::from_secs(60);
    let start = t0(); // aligned to a minute
    for n in 1..=3 {
        let decision = store
            .acquire("org:1", 3, interval, start + Duration::from_secs(n))
            .await
            .expect("acquire");
        assert!(decision.allowed, "request {n} allowed");
        assert_eq!(decision.count, n as u32);
    }
    let denied = store
        .acquire("org:1", 3, interval, start + Duration::from_secs(10))
        .await
        .expect("acquire");
    assert!(!denied.allowed);
    assert_eq!(denied.retry_after, Duration::from_secs(50));
    let other = store
        .acquire("org:2", 3, interval, start + Duration::from_secs(10))
        .await
        .expect("acquire");
    assert!(other.allowed, "keys are independent");
    let next_window = store
        .acquire("org:1", 3, interval, start + Duration::from_secs(61))
        .await
        .expect("acquire");
    assert!(next_window.allowed);
    assert_eq!(next_window.count, 1);
}

/// GitHub's `in_progress`/`completed` updates reach the job; a job still queued
/// when GitHub completes it is cancelled, and a late update does not undo `completed`.
pub async fn github_updates_follow_the_job(store: Arc<dyn Store>) {
    let running = store
        .enqueue(github_job(1, 100), &Admission::default(), t0())
        .await
        .expect("enqueue")
        .job;
    let abandoned = store
        .enqueue(github_job(1, 101), &Admission::default(), t0())
        .await
        .expect("enqueue")
        .job;
    let in_progress = GithubJobUpdate {
        github_job_id: 100,
        status: "in_progress".into(),
        conclusion: None,
        runner_name: Some("nimbus-runner-1".into()),
    };
    let updated = store
        .apply_github_update(&in_progress, t0())
        .await
        .expect("update")
        .expect("known job");
    assert_eq!(updated.id, running.id);
    let github = updated.github.expect("github ref");
    assert_eq!(github.status, "in_progress");
    assert_eq!(github.runner_name.as_deref(), Some("nimbus-runner-1"));
    assert_eq!(
        updated.status,
        JobStatus::Queued,
        "our own status is driven by leases"
    );

    let cancelled = GithubJobUpdate {
        github_job_id: 101,
        status: "completed".into(),
        conclusion: Some("cancelled".into()),
        runner_name: None,
    };
    let updated = store
        .apply_github_update(&cancelled, t0())
        .await
        .expect("update")
        .expect("known job");
    assert_eq!(updated.id, abandoned.id);
    assert_eq!(updated.status, JobStatus::Cancelled);
    assert_eq!(
        updated.github.and_then(|g| g.conclusion).as_deref(),
        Some("cancelled")
    );
    // A late in_progress does not undo completed.
    let late = GithubJobUpdate {
        github_job_id: 101,
        status: "in_progress".into(),
        conclusion: None,
        runner_name: None,
    };
    let updated = store
        .apply_github_update(&late, t0())
        .await
        .expect("update")
        .expect("known job");
    assert_eq!(
        updated.github.map(|g| g.status).as_deref(),
        Some("completed")
    );

    let unknown = GithubJobUpdate {
        github_job_id: 999,
        ..cancelled.clone()
    };
    assert!(store
        .apply_github_update(&unknown, t0())
        .await
        .expect("update")
        .is_none());

    // Cancelled on GitHub while its VM runs: the job ends `cancelled` and the lease
    // is gone, so the agent's next heartbeat is refused and it stops the VM.
    let lease = store
        .lease(&lease_request("a1", 60), t0())
        .await
        .expect("lease")
        .expect("the running job is leased");
    assert_eq!(lease.job.id, running.id);
    let finished = GithubJobUpdate {
        github_job_id: 100,
        status: "completed".into(),
        conclusion: Some("success".into()),
        runner_name: None,
    };
    let updated = store
        .apply_github_update(&finished, t0())
        .await
        .expect("update")
        .expect("known job");
    assert_eq!(
        updated.status,
        JobStatus::Leased,
        "a job GitHub saw succeed is still the agent's to complete"
    );
    let cancelled_while_running = GithubJobUpdate {
        github_job_id: 100,
        ..cancelled
    };
    let updated = store
        .apply_github_update(&cancelled_while_running, t0())
        .await
        .expect("update")
        .expect("known job");
    assert_eq!(updated.status, JobStatus::Cancelled);
    assert_eq!(
        updated.failure_reason.as_deref(),
        Some("cancelled on GitHub while it ran")
    );
    assert!(updated.lease_expires_at.is_none());
    let refused = store
        .heartbeat(
            running.id,
            "a1",
            lease.fencing_token,
            Duration::from_secs(60),
            t0() + Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(refused, Err(crate::Error::Conflict(_))),
        "{refused:?}"
    );
}

/// Deliveries are recorded once and pruned by age.
pub async fn deliveries_are_recorded_and_pruned(store: Arc<dyn Store>) {
    let old = Delivery {
        id: "old".into(),
        received_at: t0(),
    };
    let new = Delivery {
        id: "new".into(),
        received_at: t0() + Duration::from_secs(600),
    };
    assert!(store.record_delivery(&old).await.expect("record"));
    assert!(!store.record_delivery(&old).await.expect("record again"));
    assert!(store.record_delivery(&new).await.expect("record"));
    assert_eq!(
        store
            .prune_deliveries(t0() + Duration::from_secs(300))
            .await
            .expect("prune"),
        1
    );
    assert!(!store.delivery_seen("old").await.expect("seen"));
    assert!(store.delivery_seen("new").await.expect("seen"));
}

/// A workflow job's spec (its workflow and workspace) reads back as written, and
/// its completion's result is kept with the job.
pub async fn workflow_jobs_keep_their_spec_and_result(store: Arc<dyn Store>) {
    let mut new = direct_job(1, "acme/app", &[]);
    new.spec.steps.clear();
    new.spec.workflow = Some(serde_json::json!({"id": "build", "steps": [{"run": "make"}]}));
    new.spec.workspace = Some("ab".repeat(32));
    let job = store
        .enqueue(new.clone(), &Admission::default(), t0())
        .await
        .expect("enqueue")
        .job;
    assert_eq!(job.spec, new.spec);
    assert_eq!(job.result, None);
    let lease = store
        .lease(&lease_request("a1", 60), t0())
        .await
        .expect("lease")
        .expect("a job");
    let result = serde_json::json!({"outputs": {"version": "1.2.3"}, "summary": "# done\n"});
    let completed = store
        .complete(
            job.id,
            "a1",
            &Completion {
                result: Some(result.clone()),
                ..done(lease.fencing_token)
            },
            t0() + Duration::from_secs(5),
        )
        .await
        .expect("complete");
    assert_eq!(completed.result.as_ref(), Some(&result));
    let read = store.get_job(job.id).await.expect("get").expect("the job");
    assert_eq!(read.result, Some(result));
    assert_eq!(read.spec, new.spec);
}

/// Workspace archives are kept per org, refreshed by a second put, the org's
/// oldest others evicted past its quota (never another org's), pruned by age.
pub async fn workspaces_are_kept_per_org_within_a_quota(store: Arc<dyn Store>) {
    let at = |s: u64| t0() + Duration::from_secs(s);
    let digest = |c: char| c.to_string().repeat(64);
    let archive = |b: u8| vec![b; 100];
    assert_eq!(
        store
            .put_workspace(1, &digest('a'), &archive(1), at(0), 250)
            .await
            .expect("put a"),
        0
    );
    store
        .put_workspace(1, &digest('b'), &archive(2), at(1), 250)
        .await
        .expect("put b");
    store
        .put_workspace(2, &digest('a'), &archive(9), at(1), 250)
        .await
        .expect("org 2's a");
    // A third of org 1's: the oldest other (a) goes, org 2's stays.
    assert_eq!(
        store
            .put_workspace(1, &digest('c'), &archive(3), at(2), 250)
            .await
            .expect("put c"),
        1
    );
    assert_eq!(
        store.get_workspace(1, &digest('a')).await.expect("get"),
        None
    );
    assert_eq!(
        store.get_workspace(1, &digest('b')).await.expect("get"),
        Some(archive(2))
    );
    assert_eq!(
        store.get_workspace(2, &digest('a')).await.expect("get"),
        Some(archive(9))
    );
    // b again: refreshed, so c is now the oldest and goes for d.
    store
        .put_workspace(1, &digest('b'), &archive(2), at(3), 250)
        .await
        .expect("put b again");
    store
        .put_workspace(1, &digest('d'), &archive(4), at(4), 250)
        .await
        .expect("put d");
    assert_eq!(
        store.get_workspace(1, &digest('c')).await.expect("get"),
        None
    );
    assert!(store
        .get_workspace(1, &digest('b'))
        .await
        .expect("get")
        .is_some());
    // Org 2's a (put at 1) and nothing newer than 3 are pruned before 2.
    assert_eq!(store.prune_workspaces(at(2)).await.expect("prune"), 1);
    assert_eq!(
        store.get_workspace(2, &digest('a')).await.expect("get"),
        None
    );
    assert_eq!(
        store.get_workspace(1, &digest('d')).await.expect("get"),
        Some(archive(4))
    );
}

/// Orgs are created, renamed (keeping `created_at`) and listed by id.
pub async fn orgs_are_upserted(store: Arc<dyn Store>) {
    assert!(store.get_org(42).await.expect("get").is_none());
    let created = store.upsert_org(42, "acme", t0()).await.expect("create");
    let renamed = store
        .upsert_org(42, "acme-inc", t0() + Duration::from_secs(5))
        .await
        .expect("rename");
    assert_eq!(renamed.name, "acme-inc");
    assert_eq!(renamed.created_at, created.created_at);
    store.upsert_org(7, "seven", t0()).await.expect("create");
    let orgs = store.list_orgs().await.expect("list");
    assert_eq!(orgs.iter().map(|o| o.id).collect::<Vec<_>>(), vec![7, 42]);
    store.ping().await.expect("ping");
}

/// Runs one job through the store: queued at `created`, leased after `wait_s`,
/// finished after `run_s` more with `status`. Returns the job id.
pub async fn run_job(
    store: &Arc<dyn Store>,
    org_id: OrgId,
    labels: &[&str],
    created: OffsetDateTime,
    wait_s: u64,
    run_s: u64,
    status: CompletionStatus,
) -> crate::domain::JobId {
    let job = store
        .enqueue(
            direct_job(org_id, "acme/app", labels),
            &Admission::default(),
            created,
        )
        .await
        .expect("enqueue")
        .job;
    let leased_at = created + Duration::from_secs(wait_s);
    let lease = store
        .lease(&lease_request("analytics", 3600), leased_at)
        .await
        .expect("lease")
        .expect("the job just queued");
    assert_eq!(lease.job.id, job.id, "no other job may be queued meanwhile");
    let completion = Completion {
        status,
        ..done(lease.fencing_token)
    };
    store
        .complete(
            job.id,
            "analytics",
            &completion,
            leased_at + Duration::from_secs(run_s),
        )
        .await
        .expect("complete");
    job.id
}

/// The analytics data set: two orgs over two days (2026-11-27 and -28), in
/// every state; see `analytics_count_every_job_once` for what it must report.
pub async fn seed_analytics(store: &Arc<dyn Store>) {
    use CompletionStatus::*;
    let day1 = time::macros::datetime!(2026-11-27 00:00 UTC);
    let day2 = time::macros::datetime!(2026-11-28 00:00 UTC);
    let hours = |h: u64| Duration::from_secs(h * 3600);
    run_job(
        store,
        1,
        &["param:lr=0.1"],
        day1 + hours(12),
        2,
        60,
        Succeeded,
    )
    .await;
    run_job(
        store,
        1,
        &["param:lr=0.1"],
        day1 + hours(13),
        4,
        120,
        Failed,
    )
    .await;
    run_job(
        store,
        1,
        &["param:lr=0.01"],
        day1 + hours(14),
        6,
        30,
        Succeeded,
    )
    .await;
    run_job(
        store,
        2,
        &["meta:batch=64"],
        day1 + hours(15),
        1,
        10,
        Succeeded,
    )
    .await;
    let mut rejected = direct_job(2, "acme/app", &["meta:batch=64"]);
    rejected.rejected = true;
    store
        .enqueue(rejected, &Admission::default(), day1 + hours(16))
        .await
        .expect("enqueue a rejected job");
    run_job(
        store,
        1,
        &["param:lr=0.01", "param:batch=32"],
        day2 + hours(9),
        8,
        45,
        TimedOut,
    )
    .await;
    store
        .enqueue(
            direct_job(1, "acme/app", &["param:lr=0.1"]),
            &Admission::default(),
            day2 + hours(10),
        )
        .await
        .expect("enqueue the job left queued");
    store
        .enqueue(
            direct_job(2, "acme/app", &[]),
            &Admission::default(),
            day2 + hours(11),
        )
        .await
        .expect("enqueue the job left leased");
    let only_org_2 = LeaseRequest {
        org_id: Some(2),
        ..lease_request("analytics", 3600)
    };
    store
        .lease(&only_org_2, day2 + hours(11) + Duration::from_secs(3))
        .await
        .expect("lease")
        .expect("org 2's job");
}

/// Each group's figures in a comparable form: (org, tag, counts, p50/p95 of
/// queue wait and run time).
type Figures = Vec<(
    OrgId,
    Option<(String, String)>,
    crate::analytics::StatusCounts,
    crate::analytics::Percentiles,
    crate::analytics::Percentiles,
)>;

async fn figures(
    store: &Arc<dyn Store>,
    org_id: Option<OrgId>,
    window: (Option<OffsetDateTime>, Option<OffsetDateTime>),
    grouping: crate::analytics::Grouping,
) -> Figures {
    let query = crate::analytics::StatsQuery {
        org_id,
        since: window.0,
        until: window.1,
        grouping,
    };
    store
        .job_stats(&query)
        .await
        .expect("job stats")
        .into_iter()
        .map(|g| {
            (
                g.org_id,
                g.metadata,
                g.jobs,
                g.queue_wait.percentiles(),
                g.run_time.percentiles(),
            )
        })
        .collect()
}

/// Every analytics figure counts each job exactly once, for whole and partial days
/// alike, before and after the rollups fold the jobs.
pub async fn analytics_count_every_job_once(store: Arc<dyn Store>) {
    use crate::analytics::{Grouping, Percentiles, StatusCounts};
    seed_analytics(&store).await;
    let at = |s: &str| {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("time")
    };
    let all = (None, None);
    let partial_days = (
        Some(at("2026-11-27T13:30:00Z")),
        Some(at("2026-11-28T09:30:00Z")),
    );
    let day_one = (
        Some(at("2026-11-27T00:00:00Z")),
        Some(at("2026-11-28T00:00:00Z")),
    );
    let since_day_two = (Some(at("2026-11-27T23:00:00Z")), None);
    let percentiles = |jobs, p50, p95| Percentiles {
        jobs,
        p50: Some(p50),
        p95: Some(p95),
    };
    let counts = |pairs: &[(JobStatus, i64)]| {
        let mut counts = StatusCounts::default();
        for (status, jobs) in pairs {
            counts.add(*status, *jobs);
        }
        counts
    };
    use JobStatus::*;
    let expected_all: Figures = vec![
        (
            1,
            None,
            counts(&[(Queued, 1), (Succeeded, 2), (Failed, 1), (TimedOut, 1)]),
            // Waits 2, 4, 6, 8 s; runs 60, 120, 30, 45 s (nearest rank).
            percentiles(4, 4000, 8000),
            percentiles(4, 45_000, 120_000),
        ),
        (
            2,
            None,
            counts(&[(Leased, 1), (Succeeded, 1), (Rejected, 1)]),
            percentiles(2, 1000, 3000),
            percentiles(1, 10_000, 10_000),
        ),
    ];
    let expected_partial: Figures = vec![
        (
            1,
            None,
            counts(&[(Succeeded, 1), (TimedOut, 1)]),
            percentiles(2, 6000, 8000),
            percentiles(2, 30_000, 45_000),
        ),
        (
            2,
            None,
            counts(&[(Succeeded, 1), (Rejected, 1)]),
            percentiles(1, 1000, 1000),
            percentiles(1, 10_000, 10_000),
        ),
    ];
    let tag = |k: &str, v: &str| Some((k.to_string(), v.to_string()));
    let no_time = Percentiles::default();
    let expected_lr: Figures = vec![
        (
            1,
            tag("lr", "0.01"),
            counts(&[(Succeeded, 1), (TimedOut, 1)]),
            no_time,
            no_time,
        ),
        (
            1,
            tag("lr", "0.1"),
            counts(&[(Queued, 1), (Succeeded, 1), (Failed, 1)]),
            no_time,
            no_time,
        ),
    ];
    let expected_batch: Figures = vec![
        (
            1,
            tag("batch", "32"),
            counts(&[(TimedOut, 1)]),
            no_time,
            no_time,
        ),
        (
            2,
            tag("batch", "64"),
            counts(&[(Succeeded, 1), (Rejected, 1)]),
            no_time,
            no_time,
        ),
    ];

    // The same figures whether the jobs are rolled up or not, and while a fold
    // runs on another connection (twice at once: replicas).
    for round in ["unfolded", "folded", "folded again"] {
        assert_eq!(
            figures(&store, None, all, Grouping::Org).await,
            expected_all,
            "{round}"
        );
        assert_eq!(
            figures(&store, None, partial_days, Grouping::Org).await,
            expected_partial,
            "{round}: a window starting and ending inside days"
        );
        let day_one_figures = figures(&store, None, day_one, Grouping::Org).await;
        assert_eq!(
            day_one_figures
                .iter()
                .map(|g| (g.0, g.2.total()))
                .collect::<Vec<_>>(),
            vec![(1, 3), (2, 2)],
            "{round}: exactly day one"
        );
        let late = figures(&store, Some(1), since_day_two, Grouping::Org).await;
        assert_eq!(late.len(), 1);
        assert_eq!(
            late[0].2,
            counts(&[(Queued, 1), (TimedOut, 1)]),
            "{round}: open until"
        );
        assert_eq!(
            figures(&store, None, all, Grouping::MetadataKey("lr".into())).await,
            expected_lr,
            "{round}"
        );
        let every_tag = figures(&store, None, all, Grouping::AllMetadata).await;
        let batches: Figures = every_tag
            .into_iter()
            .filter(|g| g.1.as_ref().is_some_and(|(k, _)| k == "batch"))
            .collect();
        assert_eq!(batches, expected_batch, "{round}");
        assert_eq!(
            figures(&store, Some(2), all, Grouping::MetadataKey("lr".into())).await,
            Vec::new(),
            "{round}: org 2 has no lr"
        );
        let fold_at = time::macros::datetime!(2026-12-01 00:00 UTC);
        let (first, second) = tokio::join!(store.roll_up(fold_at), store.roll_up(fold_at));
        let folded = first.expect("fold") + second.expect("fold");
        let expected_folded = if round == "unfolded" { 6 } else { 0 };
        assert_eq!(folded, expected_folded, "{round}: finished jobs fold once");
    }

    let trend = store
        .metadata_trend(
            Some(1),
            "lr",
            at("2026-11-27T00:00:00Z"),
            at("2026-11-29T00:00:00Z"),
            Duration::from_secs(24 * 3600),
        )
        .await
        .expect("trend");
    let day = |d: &str| crate::domain::to_millis(at(d));
    let trend: Vec<_> = trend
        .into_iter()
        .map(|r| (r.bucket_start, r.value, r.status, r.jobs))
        .collect();
    assert_eq!(
        trend,
        vec![
            (
                day("2026-11-27T00:00:00Z"),
                "0.01".to_string(),
                Succeeded,
                1
            ),
            (day("2026-11-27T00:00:00Z"), "0.1".to_string(), Failed, 1),
            (day("2026-11-27T00:00:00Z"), "0.1".to_string(), Succeeded, 1),
            (day("2026-11-28T00:00:00Z"), "0.01".to_string(), TimedOut, 1),
            (day("2026-11-28T00:00:00Z"), "0.1".to_string(), Queued, 1),
        ]
    );
    let tags = store.tags_with(None, "lr", "0.01", 10).await.expect("tags");
    assert_eq!(
        tags,
        vec![crate::analytics::MetadataTag {
            key: "batch".into(),
            value: "32".into(),
            jobs: 1
        }]
    );
    assert!(store
        .tags_with(Some(2), "lr", "0.01", 10)
        .await
        .expect("tags")
        .is_empty());
    assert_eq!(
        store.active_leases(None).await.expect("leases"),
        vec![(2, 1)]
    );
    assert_eq!(store.active_leases(Some(1)).await.expect("leases"), vec![]);

    let hit_at = at("2026-11-28T10:15:00Z");
    store.record_rate_limit_hit(1, hit_at).await.expect("hit");
    store
        .record_rate_limit_hit(1, hit_at + Duration::from_secs(60))
        .await
        .expect("hit");
    store.record_rate_limit_hit(2, hit_at).await.expect("hit");
    assert_eq!(
        store.rate_limit_hits(None, None, None).await.expect("hits"),
        vec![(1, 2), (2, 1)]
    );
    // Counted per hour: a window that overlaps the hour counts its hits.
    assert_eq!(
        store
            .rate_limit_hits(Some(1), Some(at("2026-11-28T10:30:00Z")), None)
            .await
            .expect("hits"),
        vec![(1, 2)]
    );
    assert_eq!(
        store
            .rate_limit_hits(None, Some(at("2026-11-28T11:00:00Z")), None)
            .await
            .expect("hits"),
        vec![]
    );
}

/// Expands to one test per suite case for a store constructor (an `async` block
/// evaluating to `Option<Arc<dyn Store>>`; `None` skips).
#[macro_export]
macro_rules! store_test_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::store_test_suite!(@cases $make;
                enqueue_get_and_list,
                github_jobs_are_deduplicated,
                replayed_delivery_writes_nothing,
                rate_limited_admission_writes_nothing,
                lease_heartbeat_complete_are_fenced,
                leases_belong_to_the_agent_that_took_them,
                fair_share_serves_a_newcomer_at_once,
                fair_share_follows_the_weights,
                expired_lease_is_requeued_with_a_higher_token,
                jobs_fail_after_max_attempts,
                concurrent_leases_never_hand_out_a_job_twice,
                leases_can_be_limited_to_one_org,
                agents_lease_only_jobs_their_labels_cover,
                concurrent_webhook_admissions_are_each_answered,
                concurrent_admissions_respect_the_rate_limit,
                rate_limits_count_per_key_and_window,
                github_updates_follow_the_job,
                deliveries_are_recorded_and_pruned,
                orgs_are_upserted,
                workflow_jobs_keep_their_spec_and_result,
                workspaces_are_kept_per_org_within_a_quota,
                analytics_count_every_job_once
            );
        }
    };
    (@cases $make:expr; $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: Option<std::sync::Arc<dyn $crate::store::Store>> = $make.await;
                if let Some(store) = store {
                    $crate::store::testsuite::$case(store).await;
                }
            }
        )+
    };
}
