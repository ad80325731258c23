//! The analytics routes over the store test suite's analytics data set (two orgs,
//! two days, every job state; `store::testsuite::seed_analytics`) plus an org
//! with one job and one refused submission: exact figures from every endpoint,
//! each caller seeing only its org. On SQLite and on PostgreSQL.

use std::sync::Arc;

use axum::http::StatusCode;
use nimbus_core::store::testsuite::seed_analytics;
use nimbus_core::Store;
use serde_json::{json, Value};

use crate::api::Api;

/// The data set behind a control plane with orgs 1 (acme) and 2 (globex) from
/// the seed, and org 3 (initech) with one queued job and one submission refused
/// by the rate limit (1 per interval).
async fn seeded(store: Arc<dyn Store>) -> Api {
    seed_analytics(&store).await;
    let api = Api::new(
        store,
        &[
            ("NIMBUS_METADATA_DEFAULT_KEYS", "lr,batch"),
            ("NIMBUS_ORG_JOB_RATE_LIMIT", "1"),
            ("NIMBUS_ORG_RATE_INTERVAL", "3600"),
        ],
    )
    .await;
    api.add_org(1, "acme").await;
    api.add_org(2, "globex").await;
    api.add_org(3, "initech").await;
    let job = json!({"repo": "initech/app", "steps": [{"run": "true"}]});
    let first = api
        .call("POST", "/api/jobs", Some(&api.org(3)), Some(job.clone()))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let refused = api
        .call("POST", "/api/jobs", Some(&api.org(3)), Some(job))
        .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    api
}

fn counts(pairs: &[(&str, i64)]) -> Value {
    let mut counts = json!({
        "queued": 0, "leased": 0, "succeeded": 0, "failed": 0,
        "timed_out": 0, "cancelled": 0, "rejected": 0
    });
    for (status, jobs) in pairs {
        counts[*status] = json!(jobs);
    }
    counts
}

fn durations(jobs: u64, p50: Option<u64>, p95: Option<u64>) -> Value {
    json!({"jobs": jobs, "p50": p50, "p95": p95})
}

fn bucket(value: &str, pairs: &[(&str, i64)], success_rate: Option<f64>) -> Value {
    let total: i64 = pairs.iter().map(|(_, jobs)| jobs).sum();
    json!({"value": value, "total": total, "jobs": counts(pairs), "success_rate": success_rate})
}

fn acme() -> Value {
    json!({
        "org_id": 1, "name": "acme", "total": 5,
        "jobs": counts(&[("queued", 1), ("succeeded", 2), ("failed", 1), ("timed_out", 1)]),
        "success_rate": 0.5,
        "queue_wait_ms": durations(4, Some(4000), Some(8000)),
        "run_time_ms": durations(4, Some(45_000), Some(120_000)),
        "active_leases": 0, "rate_limit_hits": 0
    })
}

fn globex() -> Value {
    json!({
        "org_id": 2, "name": "globex", "total": 3,
        "jobs": counts(&[("leased", 1), ("succeeded", 1), ("rejected", 1)]),
        "success_rate": 1.0,
        "queue_wait_ms": durations(2, Some(1000), Some(3000)),
        "run_time_ms": durations(1, Some(10_000), Some(10_000)),
        "active_leases": 1, "rate_limit_hits": 0
    })
}

fn initech() -> Value {
    json!({
        "org_id": 3, "name": "initech", "total": 1,
        "jobs": counts(&[("queued", 1)]),
        "success_rate": null,
        "queue_wait_ms": durations(0, None, None),
        "run_time_ms": durations(0, None, None),
        "active_leases": 0, "rate_limit_hits": 1
    })
}

fn lr_buckets() -> Value {
    json!([
        bucket("0.01", &[("succeeded", 1), ("timed_out", 1)], Some(0.5)),
        bucket(
            "0.1",
            &[("queued", 1), ("succeeded", 1), ("failed", 1)],
            Some(0.5)
        ),
    ])
}

async fn get(api: &Api, uri: &str, token: &str) -> Value {
    let reply = api.call("GET", uri, Some(token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{uri}: {:?}", reply.body);
    reply.body
}

pub async fn observability_reports_every_org_exactly(store: Arc<dyn Store>) {
    let api = seeded(store).await;
    let admin = api.admin();
    let report = get(&api, "/api/observability/orgs", &admin).await;
    assert_eq!(
        report,
        json!({"since": null, "until": null, "metadata_key": null,
               "orgs": [acme(), globex(), initech()]})
    );
    // Folding the finished jobs into the rollups changes no figure.
    assert_eq!(api.state.refresh_analytics().await.expect("fold"), 6);
    assert_eq!(get(&api, "/api/observability/orgs", &admin).await, report);

    let mut acme_lr = acme();
    acme_lr["metadata"] = lr_buckets();
    let mut globex_lr = globex();
    globex_lr["metadata"] = json!([]);
    let report = get(
        &api,
        "/api/observability/orgs?metadata_key=lr&org_id=1",
        &admin,
    )
    .await;
    assert_eq!(report["orgs"], json!([acme_lr]));
    let report = get(
        &api,
        "/api/observability/orgs?metadata_key=lr&org_id=2",
        &admin,
    )
    .await;
    assert_eq!(report["orgs"], json!([globex_lr]));

    // A window that starts and ends inside a day (2026-11-27 13:30 to -28 09:30).
    let report = get(
        &api,
        "/api/observability/orgs?org_id=1&since=2026-11-27T13:30:00Z&until=2026-11-28T09:30:00Z",
        &admin,
    )
    .await;
    assert_eq!(report["since"], json!("2026-11-27T13:30:00Z"));
    assert_eq!(
        report["orgs"][0]["jobs"],
        counts(&[("succeeded", 1), ("timed_out", 1)])
    );
    assert_eq!(
        report["orgs"][0]["queue_wait_ms"],
        durations(2, Some(6000), Some(8000))
    );
    assert_eq!(
        report["orgs"][0]["run_time_ms"],
        durations(2, Some(30_000), Some(45_000))
    );
    let unknown = api
        .call(
            "GET",
            "/api/observability/orgs?org_id=99",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

pub async fn metadata_endpoints_report_exactly(store: Arc<dyn Store>) {
    let api = seeded(store).await;
    let admin = api.admin();
    let histogram = get(&api, "/api/jobs/metadata/histogram?key=lr", &admin).await;
    assert_eq!(histogram, json!({"key": "lr", "buckets": lr_buckets()}));

    let trend = get(
        &api,
        "/api/jobs/metadata/trend?key=lr&bucket_hours=24&since=2026-11-27&until=2026-11-29",
        &admin,
    )
    .await;
    assert_eq!(
        trend,
        json!({
            "key": "lr", "bucket_hours": 24,
            "since": "2026-11-27T00:00:00Z", "until": "2026-11-29T00:00:00Z",
            "buckets": [
                {"start": "2026-11-27T00:00:00Z", "values": [
                    bucket("0.01", &[("succeeded", 1)], Some(1.0)),
                    bucket("0.1", &[("succeeded", 1), ("failed", 1)], Some(0.5)),
                ]},
                {"start": "2026-11-28T00:00:00Z", "values": [
                    bucket("0.01", &[("timed_out", 1)], Some(0.0)),
                    bucket("0.1", &[("queued", 1)], None),
                ]},
            ]
        })
    );
    let half_days = get(
        &api,
        "/api/jobs/metadata/trend?key=lr&bucket_hours=12&since=2026-11-27&until=2026-11-29",
        &admin,
    )
    .await;
    let starts: Vec<&Value> = half_days["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| &b["start"])
        .collect();
    assert_eq!(
        starts,
        [
            &json!("2026-11-27T12:00:00Z"),
            &json!("2026-11-28T00:00:00Z")
        ]
    );

    let summary = get(&api, "/api/jobs/summary", &admin).await;
    assert_eq!(
        summary,
        json!({
            "metadata_key": null, "metadata_value": null, "total": 9,
            "jobs": counts(&[("queued", 2), ("leased", 1), ("succeeded", 3), ("failed", 1),
                             ("timed_out", 1), ("rejected", 1)]),
            "success_rate": 0.6,
            "top_metadata": [
                {"key": "lr", "value": "0.1", "jobs": 3},
                {"key": "batch", "value": "64", "jobs": 2},
                {"key": "lr", "value": "0.01", "jobs": 2},
                {"key": "batch", "value": "32", "jobs": 1},
            ]
        })
    );
    let summary = get(
        &api,
        "/api/jobs/summary?metadata_key=lr&metadata_value=0.01",
        &admin,
    )
    .await;
    assert_eq!(summary["total"], json!(2));
    assert_eq!(
        summary["jobs"],
        counts(&[("succeeded", 1), ("timed_out", 1)])
    );
    assert_eq!(
        summary["top_metadata"],
        json!([{"key": "batch", "value": "32", "jobs": 1}])
    );
    let summary = get(&api, "/api/jobs/summary?metadata_key=lr", &admin).await;
    assert_eq!(summary["total"], json!(5));
    assert_eq!(
        summary["top_metadata"],
        json!([{"key": "lr", "value": "0.1", "jobs": 3}, {"key": "lr", "value": "0.01", "jobs": 2}])
    );

    let presets = get(&api, "/api/jobs/metadata/presets", &admin).await;
    assert!(presets["computed_at"].is_string());
    assert_eq!(
        presets["presets"],
        json!([
            {"key": "lr", "orgs": [{"org_id": 1, "buckets": lr_buckets()}]},
            {"key": "batch", "orgs": [
                {"org_id": 1, "buckets": [bucket("32", &[("timed_out", 1)], Some(0.0))]},
                {"org_id": 2, "buckets": [
                    bucket("64", &[("succeeded", 1), ("rejected", 1)], Some(1.0))
                ]},
            ]},
        ])
    );
}

pub async fn analytics_show_each_org_only_its_own(store: Arc<dyn Store>) {
    let api = seeded(store).await;
    let globex_token = api.org(2);
    let report = get(&api, "/api/observability/orgs", &globex_token).await;
    assert_eq!(report["orgs"], json!([globex()]));
    let histogram = get(&api, "/api/jobs/metadata/histogram?key=lr", &globex_token).await;
    assert_eq!(histogram["buckets"], json!([]));
    let summary = get(&api, "/api/jobs/summary", &globex_token).await;
    assert_eq!(summary["total"], json!(3));
    assert_eq!(
        summary["top_metadata"],
        json!([{"key": "batch", "value": "64", "jobs": 2}])
    );
    let summary = get(
        &api,
        "/api/jobs/summary?metadata_key=lr&metadata_value=0.01",
        &globex_token,
    )
    .await;
    assert_eq!(
        (&summary["total"], &summary["top_metadata"]),
        (&json!(0), &json!([]))
    );
    let trend = get(
        &api,
        "/api/jobs/metadata/trend?key=lr&since=2026-11-27&until=2026-11-29",
        &globex_token,
    )
    .await;
    assert_eq!(trend["buckets"], json!([]));
    let presets = get(&api, "/api/jobs/metadata/presets", &globex_token).await;
    assert_eq!(
        presets["presets"],
        json!([
            {"key": "lr", "orgs": []},
            {"key": "batch", "orgs": [{"org_id": 2, "buckets": [
                bucket("64", &[("succeeded", 1), ("rejected", 1)], Some(1.0))
            ]}]},
        ])
    );
    // Naming another org is "not found", for every route that takes an org.
    for uri in [
        "/api/observability/orgs?org_id=1",
        "/api/jobs/metadata/histogram?key=lr&org_id=1",
        "/api/jobs/metadata/trend?key=lr&org_id=1",
        "/api/jobs/summary?org_id=1",
    ] {
        let reply = api.call("GET", uri, Some(&globex_token), None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(!reply.body.to_string().contains("acme"), "{uri} leaks");
    }
    // Agents read no analytics; a token is required.
    for uri in [
        "/api/observability/orgs",
        "/api/jobs/metadata/presets",
        "/api/jobs/metadata/histogram?key=lr",
        "/api/jobs/metadata/trend?key=lr",
        "/api/jobs/summary",
    ] {
        let reply = api.call("GET", uri, Some(&api.agent()), None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{uri}");
        let reply = api.call("GET", uri, None, None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

pub async fn bad_analytics_queries_get_clear_errors(store: Arc<dyn Store>) {
    let api = Api::new(store, &[]).await;
    let admin = api.admin();
    for (uri, words) in [
        ("/api/observability/orgs?since=yesterday", "since must be"),
        (
            "/api/observability/orgs?since=2026-11-28&until=2026-11-27",
            "must be before",
        ),
        ("/api/observability/orgs?metadata_key=a%3Db", "metadata key"),
        ("/api/observability/orgs?org_id=x", "org_id"),
        ("/api/observability/orgs?color=red", "unknown field"),
        ("/api/jobs/metadata/histogram", "key"),
        (
            "/api/jobs/metadata/trend?key=lr&bucket_hours=0",
            "bucket_hours",
        ),
        (
            "/api/jobs/metadata/trend?key=lr&bucket_hours=721",
            "bucket_hours",
        ),
        (
            "/api/jobs/metadata/trend?key=lr&bucket_hours=1&since=2020-01-01",
            "buckets",
        ),
        (
            "/api/jobs/summary?metadata_value=1",
            "metadata_value needs metadata_key",
        ),
    ] {
        let reply = api.call("GET", uri, Some(&admin), None).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {:?}",
            reply.body
        );
        let error = reply.body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(words),
            "{uri}: {error:?} should say {words:?}"
        );
    }
}

macro_rules! analytics_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            analytics_suite!(@cases $make;
                observability_reports_every_org_exactly,
                metadata_endpoints_report_exactly,
                analytics_show_each_org_only_its_own,
                bad_analytics_queries_get_clear_errors
            );
        }
    };
    (@cases $make:expr; $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: Option<std::sync::Arc<dyn nimbus_core::Store>> = $make.await;
                if let Some(store) = store {
                    super::$case(store).await;
                }
            }
        )+
    };
}

analytics_suite!(sqlite, async {
    Some(nimbus_core::store::testsuite::sqlite_store().await)
});
analytics_suite!(postgres, nimbus_core::store::testsuite::postgres_store());
