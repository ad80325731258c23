//! `nimbus run WORKFLOW.yml`: a workflow's `run:` steps in fresh VMs (the sandbox
//! here), per matrix combination, `uses:` steps reported as skipped, conditions
//! honoured, and the exit code of the first failing job.

use std::process::Command;

/// The TCP sockets process `pid` listens on (its fds' socket inodes that
/// /proc/net/tcp{,6} list in state LISTEN).
fn listening_sockets(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                listening.push(fields[1].to_string());
            }
        }
    }
    listening
}

/// `nimbus run` reaches its in-process control plane through its API: it listens
/// on no port of its own, at any point of the run.
#[test]
fn nimbus_run_opens_no_server_to_reach_its_own_control_plane() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let workflow =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workflows/ci.yml");
    let runtime = std::env::temp_dir().join(format!("nimbus-e2e-run-{}", uuid::Uuid::new_v4()));
    let mut child = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
        .arg("run")
        .arg(&workflow)
        .env("NIMBUS_ASSETS_DIR", assets)
        .env("NIMBUS_VMM", "sandbox")
        .env("NIMBUS_VM_NETWORK", "none")
        .env("NIMBUS_VM_RUNTIME_DIR", &runtime)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nimbus run");
    let mut looked = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        let listening = listening_sockets(child.id());
        assert!(listening.is_empty(), "nimbus run listens on {listening:?}");
        looked += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(looked > 5, "the run was watched ({looked} looks)");
    let _ = std::fs::remove_dir_all(&runtime);
}

/// The embedders' examples and the agent benchmark use the API in-process too
/// (a guard against a loopback server creeping back in).
#[test]
fn examples_and_the_agent_bench_use_the_api_in_process() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // dev up serves the APIs for its user; its own agent must not use them.
    let client = ["ControlPlaneClient", "ClientConfig"];
    let server = [
        "ControlPlaneClient",
        "ClientConfig",
        "control_plane::serve(",
    ];
    for (file, forbidden) in [
        ("examples/embedded_control_plane.rs", &server[..]),
        ("bins/nimbus-bench/src/agent.rs", &server[..]),
        ("bins/nimbus/src/run.rs", &server[..]),
        ("bins/nimbus/src/dev_up.rs", &client[..]),
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("source");
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{file} reaches its own control plane through {word}"
            );
        }
    }
}

fn nimbus_run(
    workflow: &std::path::Path,
    extra: &[&str],
    driver: &str,
) -> Option<(i32, String, String)> {
    let assets = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS")?;
    let runtime = std::env::temp_dir().join(format!("nimbus-e2e-run-{}", uuid::Uuid::new_v4()));
    let output = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
        .arg("run")
        .arg(workflow)
        .args(extra)
        .env("NIMBUS_ASSETS_DIR", assets)
        .env("NIMBUS_VMM", driver)
        .env("NIMBUS_VM_NETWORK", "none")
        .env("NIMBUS_VM_RUNTIME_DIR", &runtime)
        .output()
        .expect("nimbus run");
    let _ = std::fs::remove_dir_all(&runtime);
    Some((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn repository() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What a file of tests/workflows says GitHub would do with it.
#[derive(Debug, Default)]
struct Expectations {
    args: Vec<String>,
    exit: i32,
    jobs: Vec<(String, String)>,
    lines: Vec<(String, String)>,
    absent: Vec<String>,
    qemu: bool,
    dev_up: bool,
}

fn expectations(text: &str) -> Expectations {
    let mut expected = Expectations::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let line = line.trim_start_matches('#').trim();
        if let Some(args) = line.strip_prefix("args:") {
            expected.args = shlex::split(args).expect("args: shell words");
        } else if let Some(code) = line.strip_prefix("exit:") {
            expected.exit = code.trim().parse().expect("exit: N");
        } else if let Some(job) = line.strip_prefix("job:") {
            let (name, result) = job.trim().rsplit_once(' ').expect("job: NAME RESULT");
            expected.jobs.push((name.to_string(), result.to_string()));
        } else if let Some(output) = line.strip_prefix("line:") {
            let (job, text) = output.trim().split_once(" | ").expect("line: JOB | TEXT");
            expected.lines.push((job.to_string(), text.to_string()));
        } else if let Some(text) = line.strip_prefix("absent:") {
            expected.absent.push(text.trim().to_string());
        } else if line == "qemu" {
            expected.qemu = true;
        } else if line == "dev-up" {
            expected.dev_up = true;
        }
    }
    expected
}

/// Runs one suite file under `driver`; returns what failed.
fn check_workflow(file: &std::path::Path, driver: &str) -> Vec<String> {
    let expected = expectations(&std::fs::read_to_string(file).expect("workflow"));
    let report = report_path();
    let mut args: Vec<&str> = expected.args.iter().map(String::as_str).collect();
    let report_arg = report.display().to_string();
    args.extend(["--report-json", &report_arg]);
    let Some((code, stdout, stderr)) = nimbus_run(file, &args, driver) else {
        return Vec::new();
    };
    judge(file, &expected, &report, (code, &stdout, &stderr), driver)
}

fn report_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("nimbus-e2e-report-{}.json", uuid::Uuid::new_v4()))
}

/// What of `expected` a run of `file` (its exit code, output and JSON report)
/// did not do, with the output when anything failed.
fn judge(
    file: &std::path::Path,
    expected: &Expectations,
    report: &std::path::Path,
    (code, stdout, stderr): (i32, &str, &str),
    driver: &str,
) -> Vec<String> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut failures = Vec::new();
    if code != expected.exit {
        failures.push(format!("{name}: exit {code}, expected {}", expected.exit));
    }
    let document: serde_json::Value = std::fs::read_to_string(report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let _ = std::fs::remove_file(report);
    let jobs = document["jobs"].as_array().cloned().unwrap_or_default();
    for (job, result) in &expected.jobs {
        let found = jobs.iter().find(|j| j["name"] == job.as_str());
        match found {
            Some(j) if j["conclusion"] == result.as_str() => {}
            Some(j) => failures.push(format!(
                "{name}: job {job} ended {}, expected {result}",
                j["conclusion"]
            )),
            None => failures.push(format!("{name}: no job {job} in the report")),
        }
    }
    let output: Vec<(String, String)> = stdout
        .lines()
        .chain(stderr.lines())
        .filter_map(|l| l.split_once(" | "))
        .map(|(job, text)| (job.to_string(), text.trim().to_string()))
        .collect();
    for (job, line) in &expected.lines {
        if !output.iter().any(|(j, t)| j == job && t == line) {
            failures.push(format!("{name}: job {job} did not print {line:?}"));
        }
    }
    // Step titles (`▶ name`, `✓ name`, …) name skipped steps too: absent text is
    // looked for in everything else.
    let is_title = |line: &str| {
        line.split_once(" | ")
            .is_some_and(|(_, rest)| rest.starts_with(['▶', '✓', '✗', '–']))
    };
    for text in &expected.absent {
        let appeared = stdout
            .lines()
            .chain(stderr.lines())
            .any(|line| !is_title(line) && line.contains(text.as_str()));
        if appeared {
            failures.push(format!("{name}: {text:?} appeared"));
        }
    }
    if !failures.is_empty() {
        failures.push(format!("--- {name} under {driver}:\n{stdout}\n{stderr}"));
    }
    failures
}

fn suite() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repository().join("tests/workflows"))
        .expect("tests/workflows")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    files
}

/// Every workflow of tests/workflows does what GitHub would do with it, under the sandbox.
#[test]
fn the_workflow_suite_passes_under_the_sandbox() {
    let files: Vec<_> = suite()
        .into_iter()
        .filter(|f| !expectations(&std::fs::read_to_string(f).expect("read")).dev_up)
        .collect();
    assert!(files.len() >= 6, "one workflow per feature: {files:?}");
    let failures: Vec<String> = files
        .iter()
        .flat_map(|f| check_workflow(f, "sandbox"))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The representative subset (`# qemu`) passes in real VMs too.
#[test]
fn the_qemu_subset_of_the_workflow_suite_passes_under_qemu() {
    let files: Vec<_> = suite()
        .into_iter()
        .filter(|f| expectations(&std::fs::read_to_string(f).expect("read")).qemu)
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    let failures: Vec<String> = files
        .iter()
        .flat_map(|f| check_workflow(f, "qemu"))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The project's own workflows are listed and planned by `nimbus run --list`.
#[test]
fn the_projects_own_workflows_are_planned_by_list() {
    let dir = repository().join(".github/workflows");
    let mut planned = 0;
    for entry in std::fs::read_dir(&dir)
        .expect(".github/workflows")
        .flatten()
    {
        let output = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
            .arg("run")
            .arg(entry.path())
            .arg("--list")
            .output()
            .expect("nimbus run --list");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}: {stdout}{}",
            entry.path().display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("stage 1"), "{stdout}");
        planned += 1;
    }
    assert!(planned >= 1);
}

/// Errors in a workflow name the file, line and column, and nothing runs.
#[test]
fn a_bad_expression_is_reported_at_its_line_and_column() {
    let dir = std::env::temp_dir().join(format!("nimbus-e2e-wf-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let workflow = dir.join("bad.yml");
    std::fs::write(
        &workflow,
        "on: push\njobs:\n  a:\n    steps:\n      - run: echo ${{ github.sha ==  }}\n",
    )
    .expect("write");
    let output = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
        .arg("run")
        .arg(&workflow)
        .arg("--list")
        .output()
        .expect("nimbus run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("bad.yml:5:38: jobs.a.steps[0].run: expected a value, found the end"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every suite file reads and plans (no VM needed), and declares what it expects.
#[test]
fn every_suite_workflow_is_planned_by_list() {
    for file in suite() {
        let text = std::fs::read_to_string(&file).expect("read");
        let expected = expectations(&text);
        assert!(
            !expected.jobs.is_empty() && !expected.lines.is_empty(),
            "{}: declares no jobs or lines",
            file.display()
        );
        let output = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
            .arg("run")
            .arg(&file)
            .arg("--list")
            .output()
            .expect("nimbus run --list");
        assert!(
            output.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The `# dev-up` files against a running `nimbus dev up`, twice each: the jobs
/// go through its control plane (listed by its jobs API with the workflow's
/// metadata and results, their lines in its logging pipeline), its agent runs
/// them with the uploaded working tree and its cache proxy, and the second run
/// sees what the first left in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_up_workflows_run_on_a_running_dev_up() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let files: Vec<_> = suite()
        .into_iter()
        .filter(|f| expectations(&std::fs::read_to_string(f).expect("read")).dev_up)
        .collect();
    assert!(!files.is_empty(), "a # dev-up workflow in tests/workflows");
    // The sandbox with a network of its own reaches the cache proxy through the
    // relay, as a VM would.
    let dev = nimbus_e2e::DevUpProcess::start(&assets, "isolated")
        .await
        .expect("dev up");
    let mut failures = Vec::new();
    for file in &files {
        let expected = expectations(&std::fs::read_to_string(file).expect("read"));
        let mut outputs = Vec::new();
        for _run in 0..2 {
            let report = report_path();
            let output = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
                .arg("run")
                .arg(file)
                .args(&expected.args)
                .arg("--report-json")
                .arg(&report)
                // Found as a user finds it: ./.nimbus/dev.env of dev up's directory.
                .current_dir(&dev.dir)
                .env_remove("NIMBUS_TOKEN")
                .output()
                .expect("nimbus run");
            outputs.push((
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
                report,
            ));
        }
        let (code, stdout, stderr, _) = &outputs[0];
        assert_eq!(*code, expected.exit, "the first run:\n{stdout}\n{stderr}");
        assert!(
            stderr.contains("submitting to the control plane at http://127.0.0.1:"),
            "{stderr}"
        );
        if file.ends_with("control-plane.yml") {
            assert!(
                stdout.contains("report |   restored: nothing"),
                "the first run found a cache entry:\n{stdout}\n{stderr}"
            );
        }
        let (code, stdout, stderr, report) = &outputs[1];
        failures.extend(judge(
            file,
            &expected,
            report,
            (*code, stdout, stderr),
            "dev up",
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every job is in dev up's jobs API, with the workflow's metadata and the
    // result it completed with, and its lines are in the logging pipeline.
    let control_plane = dev.var("NIMBUS_CONTROL_PLANE_URL");
    let token = dev.var("NIMBUS_TOKEN");
    let list_jobs = || async {
        reqwest::Client::new()
            .get(format!("{control_plane}/api/jobs?limit=100"))
            .bearer_auth(token)
            .send()
            .await
            .expect("jobs")
            .json::<serde_json::Value>()
            .await
            .expect("json")
    };
    let page = list_jobs().await;
    let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
    let report_jobs: Vec<_> = jobs
        .iter()
        .filter(|j| j["metadata"]["job"] == "report")
        .collect();
    assert_eq!(report_jobs.len(), 2, "{page:#}");
    let cache_jobs: Vec<_> = jobs
        .iter()
        .filter(|j| j["metadata"]["job"] == "cache")
        .collect();
    assert_eq!(cache_jobs.len(), 2, "{page:#}");
    for job in report_jobs.iter().chain(&cache_jobs) {
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_eq!(
            job["metadata"]["workflow"]
                .as_str()
                .map(|w| w.ends_with("control-plane.yml")),
            Some(true),
            "{job:#}"
        );
        assert!(job["spec"]["workflow"].is_object(), "{job:#}");
        assert!(job["spec"]["workspace"].is_string(), "{job:#}");
    }
    let founds: Vec<&str> = cache_jobs
        .iter()
        .filter_map(|j| j["result"]["outputs"]["found"].as_str())
        .collect();
    assert!(
        founds.contains(&"nothing") && founds.contains(&"saved on a miss"),
        "{founds:?}"
    );
    let id = report_jobs[0]["id"].as_i64().expect("id");
    let lines = nimbus_e2e::log_messages(dev.var("NIMBUS_LOGS_URL"), token, id)
        .await
        .expect("logs");
    assert!(
        lines.iter().any(|l| l.starts_with("restored: ")),
        "{lines:?}"
    );

    // --local keeps the run in process, dev up or not: nothing reaches its jobs.
    let output = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
        .arg("run")
        .arg(repository().join("examples/workflows/ci.yml"))
        .arg("--local")
        .current_dir(&dev.dir)
        .env("NIMBUS_ASSETS_DIR", &assets)
        .env("NIMBUS_VMM", "sandbox")
        .env("NIMBUS_VM_NETWORK", "none")
        .output()
        .expect("nimbus run --local");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stderr.contains("submitting to the control plane"),
        "{stderr}"
    );
    let after = list_jobs().await;
    assert_eq!(
        after["jobs"].as_array().map(Vec::len),
        Some(jobs.len()),
        "a --local run submitted to dev up"
    );
}
