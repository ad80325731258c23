//! The cache proxy as a process: crash safety under kill -9, and jobs saving and
//! restoring entries through it with the cache token their lease carries.

use std::collections::HashMap;
use std::time::Duration;

use nimbus_e2e::{
    mint_cache_token, mint_token, CacheProxyProcess, ControlPlaneProcess, HostAgentProcess,
    LoggingPipelineProcess,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn payload(index: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + index * 7) % 251) as u8)
        .collect()
}

/// How an upload behaves around the crash.
enum Pace {
    /// The whole body at once: done before the kill.
    Whole,
    /// Half the body, then `sent` fires and the rest waits for `killed`.
    CutOff {
        sent: tokio::sync::oneshot::Sender<()>,
        killed: tokio::sync::watch::Receiver<bool>,
    },
}

/// PUTs `data` to the artifact API over a raw connection and returns the status
/// line's code, or `None` if the proxy died first.
async fn put_raw(
    address: String,
    key: String,
    token: String,
    data: Vec<u8>,
    pace: Pace,
) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
    let head = format!(
        "PUT /api/cache/{key} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    match pace {
        Pace::Whole => stream.write_all(&data).await.ok()?,
        Pace::CutOff { sent, mut killed } => {
            let half = data.len() / 2;
            stream.write_all(&data[..half]).await.ok()?;
            stream.flush().await.ok()?;
            let _ = sent.send(());
            let _ = killed.wait_for(|k| *k).await;
            stream.write_all(&data[half..]).await.ok()?;
        }
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_20_concurrent_uploads_loses_no_committed_entry_and_lists_no_partial_one() {
    let mut proxy = CacheProxyProcess::start(&[]).await.expect("proxy");
    let token = mint_cache_token(&["--org-id", "3", "--repo", "acme/app", "--ref", "main"])
        .expect("cache token");
    let address = proxy.url.trim_start_matches("http://").to_string();
    let client = reqwest::Client::new();

    // Entries committed well before the crash.
    for index in 0..5 {
        let response = client
            .put(format!("{}/api/cache/before-{index}", proxy.url))
            .bearer_auth(&token)
            .body(payload(index, 512 * 1024))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 201);
    }

    // 20 concurrent uploads of 1 MiB: 8 complete, then the proxy is killed while
    // the other 12 are half-way through their bodies.
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let mut uploads = Vec::new();
    let mut half_sent = Vec::new();
    let mut whole = Vec::new();
    for index in 0..20 {
        let key = format!("during-{index}");
        let pace = if index % 5 < 2 {
            Pace::Whole
        } else {
            let (sent, received) = tokio::sync::oneshot::channel();
            half_sent.push(received);
            Pace::CutOff {
                sent,
                killed: killed_rx.clone(),
            }
        };
        let is_whole = matches!(pace, Pace::Whole);
        let task = tokio::spawn(put_raw(
            address.clone(),
            key.clone(),
            token.clone(),
            payload(100 + index, 1 << 20),
            pace,
        ));
        if is_whole {
            whole.push((key, index, task));
        } else {
            uploads.push((key, index, task));
        }
    }
    let mut answered = HashMap::new();
    for (key, index, task) in whole {
        let status = task.await.expect("task");
        assert_eq!(status, Some(201), "{key} completes before the kill");
        answered.insert(key, (index, status));
    }
    for sent in half_sent {
        let _ = sent.await;
    }
    proxy.kill_hard().expect("kill -9");
    let _ = killed_tx.send(true);
    for (key, index, task) in uploads {
        answered.insert(key, (index, task.await.expect("task")));
    }
    proxy.restart().await.expect("restart");

    let committed: Vec<_> = answered
        .iter()
        .filter(|(_, (_, s))| *s == Some(201))
        .collect();
    assert!(
        !committed.is_empty(),
        "some uploads finished before the kill: {answered:?}"
    );
    assert!(
        answered.values().any(|(_, status)| *status != Some(201)),
        "some uploads were cut off by the kill: {answered:?}"
    );
    for index in 0..5 {
        let back = client
            .get(format!("{}/api/cache/before-{index}", proxy.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(back.status(), 200);
        assert!(back.bytes().await.expect("body") == payload(index, 512 * 1024));
    }
    for (key, (index, status)) in &answered {
        let back = client
            .get(format!("{}/api/cache/{key}", proxy.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        match back.status().as_u16() {
            200 => assert!(
                back.bytes().await.expect("body") == payload(100 + index, 1 << 20),
                "{key} restores byte-identical"
            ),
            404 => assert_ne!(*status, Some(201), "{key} was committed but is gone"),
            other => panic!("{key}: unexpected {other}"),
        }
    }
    // The v1 listing shows only whole entries.
    let listed: Value = client
        .get(format!(
            "{}/_apis/artifactcache/caches?key=during-",
            proxy.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    for entry in listed["artifactCaches"].as_array().expect("list") {
        let key = entry["cacheKey"].as_str().expect("key");
        let back = client
            .get(format!("{}/api/cache/{key}", proxy.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(
            back.bytes().await.expect("body").len(),
            1 << 20,
            "{key} is whole"
        );
    }
    // A cut-off key can be written again at once (the dead upload is superseded).
    let (key, (index, _)) = answered
        .iter()
        .find(|(_, (_, status))| *status != Some(201))
        .expect("a cut-off upload");
    let again = client
        .put(format!("{}/api/cache/{key}", proxy.url))
        .bearer_auth(&token)
        .body(payload(100 + index, 1 << 20))
        .send()
        .await
        .expect("put");
    assert_eq!(again.status(), 201);
    // Nothing half-written is left in the temporary directory.
    let tmp = proxy.data_dir.join("cache/tmp");
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_saves_a_cache_entry_and_the_next_job_of_the_repository_restores_it() {
    cache_between_jobs(Vec::new(), Vec::new(), Vec::new()).await;
}

/// The same on the production backends: control plane on PostgreSQL, logs in
/// ClickHouse, cache blobs in S3 (SeaweedFS) with its index on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_postgresql_clickhouse_and_s3() {
    let (Some(clickhouse), Some(s3)) = (
        nimbus_core::testsuite::setting("NIMBUS_TEST_CLICKHOUSE_URL"),
        nimbus_core::testsuite::setting("NIMBUS_TEST_S3_ENDPOINT"),
    ) else {
        return;
    };
    let (Some(control_plane_db), Some(cache_db)) = (
        nimbus_core::store::testsuite::postgres_schema_url().await,
        nimbus_core::store::testsuite::postgres_schema_url().await,
    ) else {
        return;
    };
    cache_between_jobs(
        vec![("NIMBUS_DATABASE_URL", control_plane_db)],
        vec![
            ("NIMBUS_LOGS_BACKEND", "clickhouse".to_string()),
            ("NIMBUS_CLICKHOUSE_URL", clickhouse),
            (
                "NIMBUS_CLICKHOUSE_DATABASE",
                format!("nimbus_e2e_cache_{}", std::process::id()),
            ),
        ],
        vec![
            ("NIMBUS_CACHE_BACKEND", "s3".to_string()),
            ("NIMBUS_CACHE_S3_BUCKET", "nimbus-e2e".to_string()),
            ("NIMBUS_CACHE_S3_ENDPOINT", s3),
            ("NIMBUS_CACHE_S3_PATH_STYLE", "true".to_string()),
            (
                "NIMBUS_CACHE_S3_PREFIX",
                format!("e2e-{}/", uuid::Uuid::new_v4().simple()),
            ),
            ("NIMBUS_CACHE_S3_ACCESS_KEY_ID", "testkey".to_string()),
            (
                "NIMBUS_CACHE_S3_SECRET_ACCESS_KEY",
                "testsecret".to_string(),
            ),
            ("NIMBUS_CACHE_METRICS_DB", cache_db),
        ],
    )
    .await;
}

async fn cache_between_jobs(
    control_plane_env: Vec<(&str, String)>,
    logs_env: Vec<(&str, String)>,
    cache_env: Vec<(&str, String)>,
) {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let pipeline = LoggingPipelineProcess::start(&logs_env)
        .await
        .expect("pipeline");
    let cache = CacheProxyProcess::start(&cache_env)
        .await
        .expect("cache proxy");
    let control_plane = ControlPlaneProcess::start(&control_plane_env)
        .await
        .expect("control plane");
    let agent_token = mint_token(&["--role", "agent", "--sub", "cache-e2e"]).expect("agent");
    let _agent = HostAgentProcess::start(&[
        ("NIMBUS_CONTROL_PLANE_URL", control_plane.url.clone()),
        (
            "NIMBUS_CONTROL_PLANE_TOKEN",
            agent_token.expose().to_string(),
        ),
        ("NIMBUS_LOGS_URL", pipeline.url.clone()),
        ("NIMBUS_CACHE_URL", cache.url.clone()),
        ("NIMBUS_AGENT_ID", "cache-e2e".to_string()),
        ("NIMBUS_VMM", "sandbox".to_string()),
        ("NIMBUS_ASSETS_DIR", assets.clone()),
        // The sandbox shares the host's network, where the proxy listens.
        ("NIMBUS_VM_NETWORK", "egress".to_string()),
    ])
    .expect("agent");

    let client = reqwest::Client::new();
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    for (id, name) in [(6, "acme"), (7, "rival")] {
        client
            .post(format!("{}/api/orgs", control_plane.url))
            .bearer_auth(admin.expose())
            .json(&json!({"id": id, "name": name}))
            .send()
            .await
            .expect("org");
    }
    let run = |org: i64, steps: Value| {
        let client = client.clone();
        let url = control_plane.url.clone();
        let admin = admin.expose().to_string();
        async move {
            let org_token =
                mint_token(&["--role", "org", "--org-id", &org.to_string()]).expect("org");
            let job: Value = client
                .post(format!("{url}/api/jobs"))
                .bearer_auth(org_token.expose())
                .json(&json!({"repo": "acme/app", "labels": ["nimbus"], "steps": steps, "timeout_minutes": 5}))
                .send()
                .await
                .expect("submit")
                .json()
                .await
                .expect("job");
            let id = job["id"].as_i64().expect("id");
            nimbus_e2e::final_job(&url, &admin, id, Duration::from_secs(60))
                .await
                .expect("job")
        }
    };
    let curl = r#"curl -sS -f -H "Authorization: Bearer $ACTIONS_RUNTIME_TOKEN""#;
    let saved = run(
        6,
        json!([
            {"name": "env", "run": "test -n \"$ACTIONS_RUNTIME_TOKEN\" && test \"$ACTIONS_CACHE_SERVICE_V2\" = true && echo \"$ACTIONS_RESULTS_URL\""},
            {"name": "build", "run": "mkdir -p out && echo built-artifact-42 > out/result.txt"},
            {"name": "save", "run": format!("{curl} -X PUT --data-binary @out/result.txt \"$NIMBUS_CACHE_URL/api/cache/build-output\"")},
        ]),
    )
    .await;
    assert_eq!(saved["status"], "succeeded", "{saved}");
    let restored = run(
        6,
        json!([{"name": "restore", "run": format!("{curl} \"$NIMBUS_CACHE_URL/api/cache/build-output\"")}]),
    )
    .await;
    assert_eq!(restored["status"], "succeeded", "{restored}");
    // Another org's job with the same repository name sees nothing (curl -f: 22).
    let rival = run(
        7,
        json!([{"name": "restore", "run": format!("{curl} \"$NIMBUS_CACHE_URL/api/cache/build-output\"")}]),
    )
    .await;
    assert_eq!(rival["status"], "failed", "{rival}");
    assert_eq!(rival["exit_code"], 22);

    let id = restored["id"].as_i64().expect("id");
    let messages = nimbus_e2e::log_messages(&pipeline.url, admin.expose(), id)
        .await
        .expect("logs");
    assert!(
        messages.iter().any(|m| m == "built-artifact-42"),
        "{messages:?}"
    );

    let usage: Value = client
        .get(format!("{}/api/usage", cache.url))
        .bearer_auth(admin.expose())
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    let acme = usage["orgs"]
        .as_array()
        .and_then(|orgs| orgs.iter().find(|o| o["org_id"] == 6))
        .cloned()
        .expect("org 6 usage");
    assert_eq!(acme["entries"], 1, "{usage}");
    assert_eq!(acme["hits"], 1, "{usage}");
}
