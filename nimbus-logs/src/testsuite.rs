//! The test suite every [`LogSink`] passes (sqlite and clickhouse here; embedders'
//! own sinks too): `log_sink_test_suite!(make)` where `make` is an
//! `async fn() -> Option<Arc<dyn LogSink>>` giving an empty sink (None skips,
//! except under CI=true).

use std::sync::Arc;

use crate::record::{LogRecord, MetadataRecord};
use crate::sink::{LogQuery, LogSink, Order};

/// A unique job id per call, so cases sharing a database never see each other.
pub fn fresh_job_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    base * 16 + NEXT.fetch_add(1, Ordering::SeqCst) % 16
}

/// The time of the suite's lines: 2026-11-27T08:00:00Z in epoch ms; [`line()`] adds the
/// seq to it.
pub const T0: i64 = 1_795_766_400_000; // 2026-11-27T08:00:00Z

/// A line of job `job_id` numbered `seq`, of org `org` (repository `org * 100`) and
/// agent `host-1`, stamped [`T0`] + `seq` ms.
pub fn line(job_id: u64, seq: u64, org: u64, level: &str, message: &str) -> LogRecord {
    LogRecord {
        job_id,
        agent_id: "host-1".into(),
        org_id: Some(org),
        repo_id: Some(org * 100),
        level: level.into(),
        message: message.into(),
        ts: T0 + seq as i64,
        seq,
    }
}

/// `sink`, or, when it is `None`, a skipped test (a failed one under `CI=true`); `what`
/// names the missing service and how to provide it.
pub fn require(sink: Option<Arc<dyn LogSink>>, what: &str) -> Option<Arc<dyn LogSink>> {
    nimbus_core::testsuite::require(sink, what)
}

fn query(job_id: u64, limit: u32, order: Order) -> LogQuery {
    LogQuery {
        job_id: Some(job_id),
        limit,
        order,
        ..LogQuery::default()
    }
}

/// Lines written out of order come back in seq order, as a tail or a head.
pub async fn writes_and_tails_in_seq_order(sink: Arc<dyn LogSink>) {
    let job = fresh_job_id();
    let batch: Vec<LogRecord> = (1..=50)
        .rev()
        .map(|seq| line(job, seq, 1, "info", &format!("line {seq}")))
        .collect();
    assert_eq!(sink.write(&batch).await.expect("write"), 50);
    let tail = sink
        .query(&query(job, 10, Order::Newest))
        .await
        .expect("tail");
    let seqs: Vec<u64> = tail.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (41..=50).collect::<Vec<_>>(),
        "the last 10, oldest first"
    );
    assert_eq!(tail[9].message, "line 50");
    assert_eq!(tail[9].ts, T0 + 50);
    let head = sink
        .query(&query(job, 5, Order::Oldest))
        .await
        .expect("head");
    assert_eq!(
        head.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

/// A retried batch stores only its new lines; a line repeated within a batch is stored
/// once.
pub async fn duplicates_are_dropped(sink: Arc<dyn LogSink>) {
    let job = fresh_job_id();
    let first: Vec<LogRecord> = (1..=10).map(|seq| line(job, seq, 1, "info", "x")).collect();
    assert_eq!(sink.write(&first).await.expect("write"), 10);
    // A retry of the same batch plus new lines, and a duplicate inside the batch.
    let mut retry: Vec<LogRecord> = (5..=15).map(|seq| line(job, seq, 1, "info", "x")).collect();
    retry.push(line(job, 15, 1, "info", "x"));
    assert_eq!(sink.write(&retry).await.expect("retry"), 5);
    let all = sink
        .query(&query(job, 1000, Order::Oldest))
        .await
        .expect("all");
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=15).collect::<Vec<_>>()
    );
    assert_eq!(sink.stored_seqs(job).await.expect("seqs").len(), 15);
}

/// Queries filter by level, time, seq and org; stats are scoped to the org asked for.
pub async fn queries_filter_by_org_level_time_and_seq(sink: Arc<dyn LogSink>) {
    let job = fresh_job_id();
    let other = fresh_job_id();
    let mut batch: Vec<LogRecord> = (1..=20)
        .map(|seq| {
            line(
                job,
                seq,
                7,
                if seq % 2 == 0 { "error" } else { "info" },
                "m",
            )
        })
        .collect();
    batch.extend((1..=5).map(|seq| line(other, seq, 8, "info", "other org")));
    sink.write(&batch).await.expect("write");
    let errors = sink
        .query(&LogQuery {
            job_id: Some(job),
            level: Some("error".into()),
            limit: 100,
            order: Order::Oldest,
            ..LogQuery::default()
        })
        .await
        .expect("errors");
    assert_eq!(errors.len(), 10);
    assert!(errors.iter().all(|r| r.level == "error"));
    let since = sink
        .query(&LogQuery {
            job_id: Some(job),
            since: Some(T0 + 15),
            limit: 100,
            order: Order::Oldest,
            ..LogQuery::default()
        })
        .await
        .expect("since");
    assert_eq!(
        since.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (15..=20).collect::<Vec<_>>()
    );
    let after = sink
        .query(&LogQuery {
            job_id: Some(job),
            after_seq: Some(18),
            limit: 100,
            order: Order::Oldest,
            ..LogQuery::default()
        })
        .await
        .expect("after");
    assert_eq!(
        after.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![19, 20]
    );
    // Another org's scope sees none of this job's lines.
    let scoped = sink
        .query(&LogQuery {
            job_id: Some(job),
            org_id: Some(8),
            limit: 100,
            ..LogQuery::default()
        })
        .await
        .expect("scoped");
    assert!(scoped.is_empty());
    let stats = sink.stats(Some(8)).await.expect("stats");
    assert!(stats.lines >= 5);
    assert_eq!(stats.per_org.keys().collect::<Vec<_>>(), vec!["8"]);
    assert!(stats.bytes >= 5 * "other org".len() as u64);
    assert!(stats.last_ingest.is_some());
}

/// `prune` deletes lines older than the cut-off and keeps the rest.
pub async fn prune_removes_old_lines_only(sink: Arc<dyn LogSink>) {
    let job = fresh_job_id();
    let mut old = line(job, 1, 3, "info", "old");
    old.ts = T0 - 400 * 86_400_000;
    let new = line(job, 2, 3, "info", "new");
    sink.write(&[old, new]).await.expect("write");
    let pruned = sink.prune(T0 - 300 * 86_400_000).await.expect("prune");
    assert!(pruned >= 1);
    let left = sink
        .query(&query(job, 10, Order::Oldest))
        .await
        .expect("left");
    assert_eq!(
        left.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
        vec!["new"]
    );
}

/// Metadata keeps one value per (job, key), the last written; reads are org-scoped and
/// `prune_metadata` removes old rows.
pub async fn metadata_rows_are_kept_per_key(sink: Arc<dyn LogSink>) {
    let job = fresh_job_id();
    let row = |key: &str, value: &str, ts: i64| MetadataRecord {
        job_id: job,
        org_id: Some(4),
        repo_id: Some(40),
        key: key.into(),
        value: value.into(),
        ts,
    };
    sink.write_metadata(&[row("python", "3.11", T0), row("os", "linux", T0)])
        .await
        .expect("write");
    sink.write_metadata(&[row("python", "3.12", T0 + 1)])
        .await
        .expect("update");
    let rows = sink.query_metadata(job, None).await.expect("rows");
    let pairs: Vec<(String, String)> = rows.into_iter().map(|r| (r.key, r.value)).collect();
    assert_eq!(
        pairs,
        vec![
            ("os".into(), "linux".into()),
            ("python".into(), "3.12".into())
        ]
    );
    assert!(sink
        .query_metadata(job, Some(5))
        .await
        .expect("other org")
        .is_empty());
    let mut old = row("old", "x", T0 - 400 * 86_400_000);
    old.job_id = job;
    sink.write_metadata(&[old]).await.expect("old");
    assert!(
        sink.prune_metadata(T0 - 300 * 86_400_000)
            .await
            .expect("prune")
            >= 1
    );
    assert_eq!(sink.query_metadata(job, None).await.expect("rows").len(), 2);
}

/// [`follow`](crate::sink::follow) yields the backlog after `after_seq`, then lines
/// written later, in seq order.
pub async fn follow_streams_backlog_then_new_lines(sink: Arc<dyn LogSink>) {
    use futures::StreamExt;
    let job = fresh_job_id();
    sink.write(&[
        line(job, 1, 1, "info", "one"),
        line(job, 2, 1, "info", "two"),
    ])
    .await
    .expect("write");
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut stream = crate::sink::follow(
        sink.clone(),
        job,
        None,
        1,
        std::time::Duration::from_millis(100),
        wake.clone(),
    );
    let first = stream.next().await.expect("item").expect("ok");
    assert_eq!(first.seq, 2, "the backlog after seq 1");
    let writer = sink.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let later: Vec<LogRecord> = (3..=6)
            .map(|seq| line(job, seq, 1, "info", "later"))
            .collect();
        writer.write(&later).await.expect("later");
        wake.notify_waiters();
    });
    let mut seqs = Vec::new();
    while seqs.len() < 4 {
        let record = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("in time")
            .expect("item")
            .expect("ok");
        seqs.push(record.seq);
    }
    assert_eq!(seqs, vec![3, 4, 5, 6]);
}

/// Expands to one `#[tokio::test]` per case of the suite, each running the case on a
/// sink from `$make`, an `async fn() -> Option<Arc<dyn LogSink>>`; `None` skips the
/// case (have `make` go through [`require`](crate::testsuite::require) so CI fails
/// instead). Use it in a test file of your own sink, which needs `tokio` with the
/// `macros` and `rt-multi-thread` features: `nimbus_logs::log_sink_test_suite!(make);`.
#[macro_export]
macro_rules! log_sink_test_suite {
    ($make:path) => {
        $crate::log_sink_test_suite!(@cases $make;
            writes_and_tails_in_seq_order,
            duplicates_are_dropped,
            queries_filter_by_org_level_time_and_seq,
            prune_removes_old_lines_only,
            metadata_rows_are_kept_per_key,
            follow_streams_backlog_then_new_lines
        );
    };
    (@cases $make:path; $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(sink) = $make().await {
                    $crate::testsuite::$case(sink).await;
                }
            }
        )+
    };
}
