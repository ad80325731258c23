//! `nimbus roi`: the estimate of a fixture workload as a table and as JSON
//! (insta snapshots in tests/it/snapshots/), and the minutes read from the job
//! history of the analytics data set through the in-process API.

use clap::Parser;
use nimbus_core::auth::Principal;
use nimbus_core::report::roi::{self, RoiArgs};
use nimbus_core::store::testsuite::{seed_analytics, sqlite_store};

use crate::api::Api;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    roi: RoiArgs,
}

fn args(argv: &[&str]) -> RoiArgs {
    Cli::try_parse_from(std::iter::once("nimbus-roi").chain(argv.iter().copied()))
        .expect("arguments")
        .roi
}

#[test]
fn a_fixture_workload_priced_both_ways() {
    let args = args(&[
        "--minutes",
        "linux-2-core=120000",
        "--minutes",
        "linux-8-core=30000",
        "--minutes",
        "linux-arm64-4-core=10000",
        "--host-cost",
        "300",
        "--host-cores",
        "32",
        "--utilisation",
        "0.5",
        "--overhead",
        "100",
    ]);
    let (estimate, measured, _) = roi::compute(&args, None).expect("estimate");
    assert!(measured.is_none());
    // 120,000 × 0.006 + 30,000 × 0.022 + 10,000 × 0.008 = 720 + 660 + 80.
    assert!((estimate.hosted_cost - 1460.0).abs() < 1e-6, "{estimate:?}");
    // 240,000 + 240,000 + 40,000 core-minutes over 32 × 43,200 × 0.5 = 691,200 a host.
    assert_eq!(estimate.hosts_needed, 1);
    assert!((estimate.self_hosted_cost - 400.0).abs() < 1e-6);
    insta::assert_snapshot!("roi_table", roi::render(&estimate, None, &args, false));
    insta::assert_snapshot!("roi_json", roi::json(&estimate, None));
}

#[test]
fn bad_input_is_one_clear_error() {
    for (argv, expected) in [
        (vec!["--minutes", "linux-2-core"], "expected SIZE=MINUTES"),
        (vec!["--minutes", "linux-2-core=-5"], "0 or more"),
        (
            vec!["--minutes", "windows-7-core=10"],
            "no hosted price for windows-7-core",
        ),
        (
            vec!["--minutes", "linux-2-core=10", "--utilisation", "1.5"],
            "utilisation",
        ),
        (
            vec![
                "--minutes",
                "linux-2-core=10",
                "--prices",
                "/nonexistent/prices.json",
            ],
            "reading /nonexistent",
        ),
    ] {
        let error = roi::compute(&args(&argv), None).expect_err("refused");
        assert!(error.to_string().contains(expected), "{argv:?}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minutes_come_from_the_job_history() {
    let store = sqlite_store().await;
    seed_analytics(&store).await;
    let api = Api::new(store, &[]).await;
    let admin = api.state.session(Principal::Admin { sub: "ops".into() });
    let now = time::macros::datetime!(2026-11-30 00:00 UTC);
    let jobs = roi::history(&admin, 30, now).await.expect("history");
    assert!(!jobs.is_empty());
    let args = args(&["--days", "30", "--host-cores", "16"]);
    let (estimate, measured, _) = roi::compute(&args, Some(&jobs)).expect("estimate");
    let measured = measured.expect("measured");
    assert_eq!(measured.jobs as usize, jobs.len());
    // Every finished job counts whole minutes, at least one each.
    let expected: f64 = jobs
        .iter()
        .map(|j| {
            let seconds = (j.finished_at.expect("finished") - j.started_at.expect("started"))
                .as_seconds_f64();
            (seconds / 60.0).ceil().max(1.0)
        })
        .sum();
    assert!(
        (estimate.minutes - expected).abs() < 1e-6,
        "{} vs {expected}",
        estimate.minutes
    );
    assert_eq!(
        estimate.lines.len(),
        1,
        "unlabelled jobs are the default size"
    );
    assert_eq!(estimate.lines[0].size, "linux-2-core");
    // A window that ends before the data set holds nothing.
    let early = roi::history(&admin, 1, time::macros::datetime!(2026-11-01 00:00 UTC))
        .await
        .expect("history");
    assert!(early.is_empty());
}
