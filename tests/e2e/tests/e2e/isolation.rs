//! Tenant isolation on the wire, against the real binaries: what hostile agents,
//! orgs and jobs tried before (docs/security.md lists each hole and its test).
//!
//! - an agent cannot extend, finish or even see another agent's lease;
//! - a runner named after another org's job swaps nothing;
//! - junk requests do not grow the metrics;
//! - in the sandbox and under QEMU, a job that rewrites its root and the guest
//!   agent leaves the next job (another org's) a pristine, still attested tree,
//!   and no job reaches the host's services, the metadata address or a private
//!   network — while its cache saves and restores through the proxy work.

use std::time::Duration;

use nimbus_core::client::ControlPlaneClient;
use nimbus_e2e::{
    final_job, log_messages, mint_token, CacheProxyProcess, ControlPlaneProcess, HostAgentProcess,
    LoggingPipelineProcess, WEBHOOK_SECRET,
};
use serde_json::{json, Value};

async fn create_orgs(control_plane: &ControlPlaneProcess, orgs: &[(i64, &str)]) {
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    for (id, name) in orgs {
        let response = reqwest::Client::new()
            .post(format!("{}/api/orgs", control_plane.url))
            .bearer_auth(admin.expose())
            .json(&json!({"id": id, "name": name}))
            .send()
            .await
            .expect("org");
        assert!(response.status().is_success());
    }
}

async fn submit(control_plane: &ControlPlaneProcess, org: i64, repo: &str, steps: Value) -> i64 {
    let token = mint_token(&["--role", "org", "--org-id", &org.to_string()]).expect("org");
    let job: Value = reqwest::Client::new()
        .post(format!("{}/api/jobs", control_plane.url))
        .bearer_auth(token.expose())
        .json(&json!({"repo": repo, "labels": ["nimbus"], "steps": steps, "timeout_minutes": 5}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job");
    job["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id: {job}"))
}

/// Hole 1: agent B knows A's job id and can guess its fencing token (tokens start
/// at 1). Before, heartbeat and complete matched only (job, token), and the 409
/// said the current token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_touch_another_agents_lease() {
    let control_plane = ControlPlaneProcess::start(&[])
        .await
        .expect("control plane");
    create_orgs(&control_plane, &[(1, "acme")]).await;
    let job = submit(&control_plane, 1, "acme/app", json!([{"run": "true"}])).await;
    let client = reqwest::Client::new();
    let agent_a = mint_token(&["--role", "agent", "--sub", "agent-a"]).expect("a");
    let agent_b = mint_token(&["--role", "agent", "--sub", "agent-b"]).expect("b");
    let lease: Value = client
        .post(format!("{}/api/jobs/lease", control_plane.url))
        .bearer_auth(agent_a.expose())
        .send()
        .await
        .expect("lease")
        .json()
        .await
        .expect("json");
    assert_eq!(lease["job"]["id"], job);
    let token = lease["fencing_token"].as_i64().expect("token");
    for guess in [token, token + 1, 1] {
        for (path, body) in [
            ("heartbeat", json!({"fencing_token": guess})),
            (
                "complete",
                json!({"fencing_token": guess, "status": "succeeded", "exit_code": 0}),
            ),
        ] {
            let response = client
                .post(format!("{}/api/jobs/{job}/{path}", control_plane.url))
                .bearer_auth(agent_b.expose())
                .json(&body)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 409, "{path} by agent B");
            let text = response.text().await.expect("body");
            assert!(
                !text.contains("fencing token") && !text.contains("agent-a"),
                "the refusal tells of A's lease: {text}"
            );
        }
    }
    let seen = client
        .get(format!("{}/api/jobs/{job}", control_plane.url))
        .bearer_auth(agent_b.expose())
        .send()
        .await
        .expect("get");
    assert_eq!(seen.status(), 404, "B does not see A's job");
    let listed = client
        .get(format!("{}/api/jobs", control_plane.url))
        .bearer_auth(agent_b.expose())
        .send()
        .await
        .expect("list");
    assert_eq!(listed.status(), 403, "agents list no jobs");
    let done = client
        .post(format!("{}/api/jobs/{job}/complete", control_plane.url))
        .bearer_auth(agent_a.expose())
        .json(&json!({"fencing_token": token, "status": "succeeded", "exit_code": 0}))
        .send()
        .await
        .expect("complete");
    assert_eq!(done.status(), 200, "A still holds its lease and finishes");
}

fn workflow_job(
    action: &str,
    job_id: i64,
    org: i64,
    installation: i64,
    repo_id: i64,
    repo: &str,
    runner: Option<&str>,
) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let owner = repo.split('/').next().unwrap_or("owner");
    json!({
        "action": action,
        "workflow_job": {
            "id": job_id, "run_id": job_id * 10, "run_attempt": 1, "workflow_name": "CI",
            "head_branch": "main", "head_sha": "0123456789abcdef0123456789abcdef01234567",
            "name": "build", "labels": ["nimbus"], "status": action, "conclusion": null,
            "created_at": now, "started_at": now, "completed_at": null,
            "runner_id": runner.map(|_| 7), "runner_name": runner,
            "runner_group_id": null, "runner_group_name": null, "steps": []
        },
        "repository": {"id": repo_id, "name": "app", "full_name": repo,
                       "owner": {"login": owner, "id": org}},
        "organization": {"login": owner, "id": org},
        "installation": {"id": installation},
    })
    .to_string()
    .into_bytes()
}

/// Hole 2: runner names are chosen by whoever registers the runner. Org B names
/// its own runner after org A's Nimbus job; GitHub reports B's job in progress on
/// it, signed — and before, Nimbus swapped the two jobs' GitHub records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_named_after_another_orgs_job_swaps_nothing() {
    let control_plane = ControlPlaneProcess::start(&[])
        .await
        .expect("control plane");
    let client = ControlPlaneClient::new(&control_plane.url, None).expect("client");
    let secret = WEBHOOK_SECRET.as_bytes();
    let (status, a) = client
        .send_webhook(
            secret,
            "workflow_job",
            "d-a",
            workflow_job("queued", 5001, 4200, 11, 770001, "acme/app", None),
        )
        .await
        .expect("webhook");
    assert_eq!(status, 201, "{a}");
    let (status, b) = client
        .send_webhook(
            secret,
            "workflow_job",
            "d-b",
            workflow_job("queued", 6001, 4300, 22, 880001, "mallory/app", None),
        )
        .await
        .expect("webhook");
    assert_eq!(status, 201, "{b}");
    let job_a = a["job_id"].as_i64().expect("a");
    let job_b = b["job_id"].as_i64().expect("b");
    let runner = format!("nimbus-{job_a}-1");
    let (status, answer) = client
        .send_webhook(
            secret,
            "workflow_job",
            "d-b-progress",
            workflow_job(
                "in_progress",
                6001,
                4300,
                22,
                880001,
                "mallory/app",
                Some(&runner),
            ),
        )
        .await
        .expect("webhook");
    assert!(status < 300, "{answer}");
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let get = |id: i64| {
        let url = format!("{}/api/jobs/{id}", control_plane.url);
        let token = admin.expose().to_string();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let (a, b) = (get(job_a).await, get(job_b).await);
    assert_eq!(
        a["github"]["job_id"], 5001,
        "A's job still stands for A's GitHub job: {a}"
    );
    assert_eq!(a["repo"], "acme/app");
    assert_eq!(b["github"]["job_id"], 6001, "{b}");
    let metrics = control_plane.metrics().await.expect("metrics");
    assert!(
        metrics.contains("nimbus_control_plane_runner_swaps_refused_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("nimbus_control_plane_runner_swaps_total 0"));
}

/// Hole 3: the HTTP method and the X-GitHub-Event header (read before the
/// signature) were label values: 400 junk requests made thousands of series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_requests_do_not_grow_the_metrics() {
    let control_plane = ControlPlaneProcess::start(&[])
        .await
        .expect("control plane");
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let client = reqwest::Client::new();
    let junk = |from: usize, to: usize| {
        let client = client.clone();
        let url = control_plane.url.clone();
        async move {
            for n in from..to {
                let method =
                    reqwest::Method::from_bytes(format!("JUNK{n}").as_bytes()).expect("method");
                let _ = client
                    .request(method, format!("{url}/api/jobs/{n}"))
                    .send()
                    .await;
                let _ = client
                    .post(format!("{url}/webhooks/github"))
                    .header("x-github-event", format!("event-{n}"))
                    .header("x-hub-signature-256", "sha256=00")
                    .body("{}")
                    .send()
                    .await;
            }
        }
    };
    // The first junk makes the series of its fixed labels (method "other", event
    // "other", their statuses); 790 more requests of new methods and events must
    // add none.
    junk(0, 5).await;
    // (A scrape is a request too: the first one makes its own series.)
    control_plane.metrics().await.expect("metrics");
    let before = series(&control_plane.metrics().await.expect("metrics"));
    junk(5, 400).await;
    let after = series(&control_plane.metrics().await.expect("metrics"));
    assert_eq!(after, before, "junk requests added series");
    let text = control_plane.metrics().await.expect("metrics");
    assert!(
        !text.contains("JUNK") && !text.contains("event-"),
        "raw input in labels"
    );
}

/// Hole 10: data files were created world-readable (the SQLite store, generated
/// secrets, the logs database): every binary now creates its files private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let control_plane = ControlPlaneProcess::start(&[])
        .await
        .expect("control plane");
    create_orgs(&control_plane, &[(1, "acme")]).await;
    let pipeline = LoggingPipelineProcess::start(&[]).await.expect("pipeline");
    let mut checked = 0;
    for dir in [&control_plane.data_dir, &pipeline.data_dir] {
        for entry in walk(dir) {
            let mode = std::fs::metadata(&entry)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", entry.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "the services wrote files ({checked})");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

/// Holes 4 and 5, under `driver`: job 1 (org A) tries to make its root writable and
/// rewrites the guest agent and /etc; job 2 (org B) must find the tree pristine;
/// neither reaches the host's services, the metadata address or a private network,
/// and their caches work through the proxy.
async fn jobs_cannot_poison_or_reach_what_they_must_not(driver: &str) {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let assets = std::path::PathBuf::from(assets);
    let stand_ins = nimbus_vmm::testsuite::standins::StandIns::start().expect("stand-ins");
    // A service on every address of the host, like a control plane on 0.0.0.0:8000.
    let exposed = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let exposed_port = exposed.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::Write;
        for stream in exposed.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nEXPOSED");
        }
    });
    let pipeline = LoggingPipelineProcess::start(&[]).await.expect("pipeline");
    let cache = CacheProxyProcess::start(&[]).await.expect("cache");
    let control_plane = ControlPlaneProcess::start(&[])
        .await
        .expect("control plane");
    let agent_token = mint_token(&["--role", "agent", "--sub", "isolation-e2e"]).expect("agent");
    let _agent = HostAgentProcess::start(&[
        ("NIMBUS_CONTROL_PLANE_URL", control_plane.url.clone()),
        (
            "NIMBUS_CONTROL_PLANE_TOKEN",
            agent_token.expose().to_string(),
        ),
        ("NIMBUS_LOGS_URL", pipeline.url.clone()),
        ("NIMBUS_CACHE_URL", cache.url.clone()),
        ("NIMBUS_AGENT_ID", "isolation-e2e".to_string()),
        ("NIMBUS_VMM", driver.to_string()),
        ("NIMBUS_QEMU_ACCEL", "auto".to_string()),
        ("NIMBUS_ASSETS_DIR", assets.to_string_lossy().into_owned()),
        ("NIMBUS_VM_NETWORK", "egress".to_string()),
        ("NIMBUS_VM_MEMORY_MIB", "512".to_string()),
        ("NIMBUS_VM_SCRATCH_MIB", "64".to_string()),
        ("NIMBUS_AGENT_MAX_VMS", "1".to_string()),
    ])
    .expect("agent");
    create_orgs(&control_plane, &[(1, "acme"), (2, "rival")]).await;
    let host = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.200:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip().to_string())
        .expect("host address");
    let control_port = control_plane
        .url
        .rsplit(':')
        .next()
        .unwrap_or("8000")
        .to_string();

    let attack = json!([
        {"name": "remount", "run": "mount -o remount,rw / && echo remounted || echo remount refused"},
        {"name": "poison", "run": "echo '#!/bin/sh' > /usr/local/bin/nimbus-guest && echo poisoned guest; echo 'evil:x:0:0::/:/bin/sh' >> /etc/passwd && echo poisoned passwd; echo 'nameserver 6.6.6.6' > /etc/resolv.conf; true"},
        {"name": "save", "run": "echo ACME-BUILD > out.txt && curl -sf -X PUT -H \"Authorization: Bearer $ACTIONS_RUNTIME_TOKEN\" --data-binary @out.txt \"$NIMBUS_CACHE_URL/api/cache/build\" >/dev/null && echo saved"}
    ]);
    let job_a = submit(&control_plane, 1, "acme/app", attack).await;
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let done = final_job(
        &control_plane.url,
        admin.expose(),
        job_a,
        Duration::from_secs(240),
    )
    .await
    .expect("job a");
    assert_eq!(done["status"], "succeeded", "{done}");
    let lines = log_messages(&pipeline.url, admin.expose(), job_a)
        .await
        .expect("lines");
    assert!(lines.contains(&"saved".to_string()), "{lines:?}");

    let guest_sha = nimbus_vmm::assets::AssetSet::open(&assets)
        .expect("manifest")
        .manifest
        .files[nimbus_vmm::assets::GUEST_IN_TREE]
        .sha256
        .clone();
    let probe = format!(
        r#"try() {{ if out=$(curl -s -m 4 "$2"); then echo "$1: $out"; else echo "$1: refused"; fi; }}
gateway=$(ip route | awk '/^default/ {{print $3}}')
try public http://{public}/
try metadata http://{metadata}/
try private http://{private}/
try host-exposed http://{host}:{exposed_port}/
try gateway-exposed "http://$gateway:{exposed_port}/"
try control-plane http://{host}:{control_port}/healthz
try loopback-control-plane http://127.0.0.1:{control_port}/healthz"#,
        public = nimbus_vmm::testsuite::standins::PUBLIC,
        metadata = nimbus_vmm::testsuite::standins::METADATA,
        private = nimbus_vmm::testsuite::standins::PRIVATE,
    );
    let check = json!([
        {"name": "pristine", "run": format!("sha256sum /usr/local/bin/nimbus-guest | grep -q {guest_sha} && echo guest pristine; grep -q evil /etc/passwd && echo passwd poisoned || echo passwd pristine; grep -q 6.6.6.6 /etc/resolv.conf && echo resolv poisoned || echo resolv pristine")},
        {"name": "probe", "run": probe},
        {"name": "own cache", "run": "curl -sf -X PUT -H \"Authorization: Bearer $ACTIONS_RUNTIME_TOKEN\" --data-binary RIVAL \"$NIMBUS_CACHE_URL/api/cache/build\" >/dev/null && curl -sf -H \"Authorization: Bearer $ACTIONS_RUNTIME_TOKEN\" \"$NIMBUS_CACHE_URL/api/cache/build\" && echo"}
    ]);
    let job_b = submit(&control_plane, 2, "rival/app", check).await;
    let done = final_job(
        &control_plane.url,
        admin.expose(),
        job_b,
        Duration::from_secs(240),
    )
    .await
    .expect("job b");
    assert_eq!(done["status"], "succeeded", "{done}");
    let lines = log_messages(&pipeline.url, admin.expose(), job_b)
        .await
        .expect("lines");
    for expected in [
        "guest pristine",
        "passwd pristine",
        "resolv pristine",
        "public: public",
        "metadata: refused",
        "private: refused",
        "host-exposed: refused",
        "gateway-exposed: refused",
        "control-plane: refused",
        "loopback-control-plane: refused",
        "RIVAL",
    ] {
        assert!(
            lines.contains(&expected.to_string()),
            "{expected:?} missing from {lines:#?}"
        );
    }
    // Org A's save is A's: B's key of the same name held B's bytes.
    assert!(!lines.iter().any(|l| l.contains("ACME-BUILD")), "{lines:?}");
    // What job 1 did to its root never touched the assets: they still attest.
    let kind = if driver == "qemu" {
        nimbus_vmm::DriverKind::Qemu
    } else {
        nimbus_vmm::DriverKind::Sandbox
    };
    nimbus_vmm::assets::AssetSet::open(&assets)
        .expect("manifest")
        .verify(kind, None)
        .expect("the assets still match their attested digests");
    // The stand-ins were there all along for the host.
    for address in [
        nimbus_vmm::testsuite::standins::METADATA,
        nimbus_vmm::testsuite::standins::PRIVATE,
    ] {
        assert!(nimbus_vmm::testsuite::standins::StandIns::fetch(address).is_some());
    }
    drop(stand_ins);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_jobs_cannot_poison_later_jobs_or_reach_the_host() {
    jobs_cannot_poison_or_reach_what_they_must_not("sandbox").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_jobs_cannot_poison_later_jobs_or_reach_the_host() {
    jobs_cannot_poison_or_reach_what_they_must_not("qemu").await;
}
