//! The shared store suite, run against every backend from the same test code.

nimbus_core::store_test_suite!(sqlite, async {
    Some(nimbus_core::store::testsuite::sqlite_store().await)
});

nimbus_core::store_test_suite!(postgres, nimbus_core::store::testsuite::postgres_store());

/// Fair share with two control-plane replicas on one PostgreSQL database: each
/// replica schedules on its own (its bookkeeping is in memory), the database keeps
/// claims exclusive, and the sum is still fair.
mod fair_share_on_two_replicas {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use nimbus_core::scheduler::{FairShare, Scheduler};
    use nimbus_core::store::testsuite::{queue_many, t0};
    use nimbus_core::store::{LeaseRequest, Store};

    async fn replicas() -> Option<(Arc<dyn Store>, Arc<dyn Store>)> {
        let url = nimbus_core::store::testsuite::postgres_schema_url().await?;
        let one = nimbus_core::store::open(&url, 8).await.expect("replica 1");
        let two = nimbus_core::store::open(&url, 8).await.expect("replica 2");
        Some((one, two))
    }

    fn request(agent: &str) -> LeaseRequest {
        LeaseRequest {
            agent_id: agent.into(),
            org_id: None,
            labels: None,
            ttl: Duration::from_secs(600),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newcomer_is_served_at_once_through_either_replica() {
        let Some((one, two)) = replicas().await else {
            return;
        };
        queue_many(&one, 1, 1000).await;
        queue_many(&two, 2, 1).await;
        let (fair_one, fair_two) = (
            FairShare::new(HashMap::new()),
            FairShare::new(HashMap::new()),
        );
        let first = fair_one
            .lease(one.as_ref(), &request("agent-1"), t0())
            .await
            .expect("lease")
            .expect("job");
        let second = fair_two
            .lease(two.as_ref(), &request("agent-2"), t0())
            .await
            .expect("lease")
            .expect("job");
        assert!(
            [first.job.org_id, second.job.org_id].contains(&2),
            "B's job is among the next two leases: {} {}",
            first.job.org_id,
            second.job.org_id
        );
        assert_ne!(first.job.id, second.job.id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn weights_hold_across_two_replicas_leasing_at_once() {
        let Some((one, two)) = replicas().await else {
            return;
        };
        queue_many(&one, 1, 400).await;
        queue_many(&one, 2, 400).await;
        let weights: HashMap<i64, u32> = [(1, 3), (2, 1)].into_iter().collect();
        let mut tasks = Vec::new();
        for (index, store) in [one, two].into_iter().enumerate() {
            let fair = FairShare::new(weights.clone());
            tasks.push(tokio::spawn(async move {
                let mut served: HashMap<i64, u32> = HashMap::new();
                let mut leases = Vec::new();
                for _ in 0..200 {
                    let lease = fair
                        .lease(store.as_ref(), &request(&format!("agent-{index}")), t0())
                        .await
                        .expect("lease")
                        .expect("a job");
                    *served.entry(lease.job.org_id).or_default() += 1;
                    leases.push(lease.job.id);
                }
                (served, leases)
            }));
        }
        let mut served: HashMap<i64, u32> = HashMap::new();
        let mut all = Vec::new();
        for task in tasks {
            let (mine, leases) = task.await.expect("replica");
            for (org, count) in mine {
                *served.entry(org).or_default() += count;
            }
            all.extend(leases);
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 400, "no job was handed out twice");
        let (a, b) = (served[&1], served[&2]);
        assert!((285..=315).contains(&a) && a + b == 400, "A {a}, B {b}");
    }
}

/// The SQLite store's disk fills up: enqueues fail with an error (nothing is
/// acknowledged that is not stored); once there is room, the next enqueue is
/// stored, and every acknowledged job is there for a store opened afresh on the
/// same file (a connection left inside the failed transaction would have kept
/// later "commits" from ever reaching the disk).
#[tokio::test]
async fn a_full_disk_fails_enqueues_and_loses_no_acknowledged_job() {
    use nimbus_core::store::testsuite::{direct_job, t0};
    use nimbus_core::store::Admission;

    let Some(disk) = nimbus_core::testsuite::SmallDisk::mount("8m") else {
        return;
    };
    let url = format!("sqlite://{}", disk.path().join("nimbus.db").display());
    let store = nimbus_core::store::open(&url, 2).await.expect("store");
    let enqueue = |store: std::sync::Arc<dyn nimbus_core::store::Store>| async move {
        store
            .enqueue(
                direct_job(1, "acme/app", &["nimbus"]),
                &Admission::default(),
                t0(),
            )
            .await
    };
    let mut acknowledged = Vec::new();
    for _ in 0..20 {
        acknowledged.push(enqueue(store.clone()).await.expect("enqueue").job.id);
    }
    let filler = disk.fill();
    let mut failed = 0;
    for _ in 0..200 {
        match enqueue(store.clone()).await {
            Ok(queued) => acknowledged.push(queued.job.id),
            Err(_) => failed += 1,
        }
    }
    assert!(failed > 0, "the full disk failed some enqueue");
    std::fs::remove_file(&filler).expect("make room");
    for _ in 0..5 {
        acknowledged.push(
            enqueue(store.clone())
                .await
                .expect("enqueue with room")
                .job
                .id,
        );
    }
    let reopened = nimbus_core::store::open(&url, 2).await.expect("reopen");
    for id in acknowledged {
        assert!(
            reopened.get_job(id).await.expect("get").is_some(),
            "acknowledged job {id} is stored"
        );
    }
}
