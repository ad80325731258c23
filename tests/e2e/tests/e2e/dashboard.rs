//! The dashboard end to end in headless Chromium (Debian's, driven by
//! tests/clients/dashboard-check.mjs through puppeteer-core): the control plane,
//! logging pipeline and cache proxy binaries, a seeded fleet, and a person's
//! path — sign in, read the table, pick metadata keys, watch a live log line
//! arrive. The screenshot is kept in `$CARGO_TARGET_DIR/nimbus-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nimbus_core::client::ControlPlaneClient;
use nimbus_core::domain::{Completion, CompletionStatus};
use nimbus_e2e::{mint_token, CacheProxyProcess, ControlPlaneProcess, LoggingPipelineProcess};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients")
}

/// Node, puppeteer-core (npm ci in tests/clients) and Chromium; missing ones
/// skip the test, or fail it under CI=true.
fn browser_available() -> bool {
    let driver = clients_dir()
        .join("node_modules/puppeteer-core/package.json")
        .exists();
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    let chromium = Path::new("/usr/bin/chromium").exists();
    nimbus_core::testsuite::require(
        (driver && node && chromium).then_some(()),
        "node, puppeteer-core (npm ci in tests/clients) and chromium (scripts/services.sh start chromium)",
    )
    .is_some()
}

async fn submit(client: &ControlPlaneClient, repo: &str, labels: &[&str]) -> i64 {
    client
        .submit_job(&json!({"repo": repo, "labels": labels, "steps": [{"run": "true"}]}))
        .await
        .expect("submit")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_picks_keys_and_watches_a_live_log() {
    if !browser_available() {
        return;
    }
    let pipeline = LoggingPipelineProcess::start(&[]).await.expect("pipeline");
    let cache = CacheProxyProcess::start(&[]).await.expect("cache proxy");
    let control_plane = ControlPlaneProcess::start(&[
        ("NIMBUS_LOGS_URL", pipeline.url.clone()),
        ("NIMBUS_CACHE_URL", cache.url.clone()),
    ])
    .await
    .expect("control plane");
    let admin_token = mint_token(&["--role", "admin"]).expect("admin");
    let admin =
        ControlPlaneClient::new(&control_plane.url, Some(admin_token.clone())).expect("client");
    admin.upsert_org(1, "acme").await.expect("org 1");
    admin.upsert_org(2, "globex").await.expect("org 2");
    let acme = ControlPlaneClient::new(
        &control_plane.url,
        Some(mint_token(&["--role", "org", "--org-id", "1"]).expect("org token")),
    )
    .expect("client");
    let globex = ControlPlaneClient::new(
        &control_plane.url,
        Some(mint_token(&["--role", "org", "--org-id", "2"]).expect("org token")),
    )
    .expect("client");
    let agent = ControlPlaneClient::new(
        &control_plane.url,
        Some(mint_token(&["--role", "agent", "--sub", "host-1"]).expect("agent token")),
    )
    .expect("client");

    // acme: three lr=0.1 (two succeed, one fails), two lr=0.01 queued; globex: one batch=64.
    for labels in [["param:lr=0.1"], ["param:lr=0.1"], ["param:lr=0.1"]] {
        submit(&acme, "acme/app", &labels).await;
    }
    for status in [
        CompletionStatus::Succeeded,
        CompletionStatus::Succeeded,
        CompletionStatus::Failed,
    ] {
        let lease = agent
            .lease(Duration::from_secs(5))
            .await
            .expect("lease")
            .expect("a job");
        let completion = Completion {
            fencing_token: lease.fencing_token,
            status,
            exit_code: Some(i32::from(status != CompletionStatus::Succeeded)),
            reason: None,
            result: None,
        };
        agent
            .complete(lease.job.id, &completion)
            .await
            .expect("complete");
    }
    submit(&acme, "acme/app", &["param:lr=0.01"]).await;
    let followed = submit(&acme, "acme/app", &["param:lr=0.01"]).await;
    submit(&globex, "globex/app", &["meta:batch=64"]).await;

    let artifacts = nimbus_e2e::bin_dir()
        .expect("target dir")
        .join("../nimbus-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let marker = format!("live line {}", uuid::Uuid::new_v4());
    let mut browser = tokio::process::Command::new("node")
        .arg(clients_dir().join("dashboard-check.mjs"))
        .arg(&control_plane.url)
        .arg(admin_token.expose())
        .arg(followed.to_string())
        .arg(&marker)
        .arg(&screenshot)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(browser.stdout.take().expect("stdout")).lines();
    let mut steps: Vec<Value> = Vec::new();
    let http = reqwest::Client::new();
    let walk = async {
        while let Some(line) = lines.next_line().await.expect("read") {
            let step: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the browser script printed {line:?}: {e}"));
            if step["step"] == "following" {
                // The page follows the job: now the line is written.
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .expect("time");
                let record = json!([{"job_id": followed, "agent_id": "host-1", "org_id": 1,
                                     "level": "info", "message": marker, "ts": now, "seq": 1}]);
                let written = http
                    .post(format!("{}/api/logs", pipeline.url))
                    .bearer_auth(admin_token.expose())
                    .json(&record)
                    .send()
                    .await
                    .expect("write the line");
                assert!(written.status().is_success(), "{:?}", written.text().await);
            }
            steps.push(step);
        }
    };
    tokio::time::timeout(Duration::from_secs(120), walk)
        .await
        .expect("the browser finished within two minutes");
    let status = browser.wait().await.expect("node exit");
    assert!(
        status.success(),
        "the browser script failed; steps so far: {steps:#?}"
    );
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {steps:#?}"))
            .clone()
    };

    let login = step("login-page");
    assert_eq!(
        (login["status"].as_u64(), login["form"].as_bool()),
        (Some(401), Some(true))
    );
    let signed_in = step("signed-in");
    let orgs = signed_in["orgs"].as_array().expect("rows");
    // Columns: org, name, jobs, queued, running, succeeded, failed, …
    let row = |org: &str| {
        orgs.iter()
            .find(|r| r[0] == org)
            .unwrap_or_else(|| panic!("no org {org} in {orgs:?}"))
    };
    assert_eq!(row("1")[1], "acme");
    assert_eq!(
        (&row("1")[2], &row("1")[3], &row("1")[5], &row("1")[6]),
        (&json!("5"), &json!("2"), &json!("2"), &json!("1"))
    );
    assert_eq!(
        (&row("2")[1], &row("2")[2]),
        (&json!("globex"), &json!("1"))
    );
    assert_eq!(signed_in["charts"], json!(3));
    assert_eq!(
        signed_in["cookieVisibleToScript"],
        json!(""),
        "the cookie is HttpOnly"
    );

    let lr = step("picked-lr");
    assert!(lr["url"]
        .as_str()
        .unwrap_or_default()
        .contains("metadata_key=lr"));
    let buckets: Vec<(String, String)> = lr["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or_default().into(),
                r[1].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        buckets,
        vec![("0.01".into(), "2".into()), ("0.1".into(), "3".into())]
    );
    let batch = step("picked-batch");
    assert_eq!(batch["buckets"][0][0], "64");
    assert_eq!(batch["buckets"][0][1], "1");

    let live = step("live-line");
    assert!(
        live["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .any(|l| l == &json!(marker)),
        "{live:#}"
    );
    assert_eq!(live["problems"], json!([]), "no script errors on the page");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
