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

fn nimbus_run(workflow: &std::path::Path, extra: &[&str]) -> Option<(i32, String, String)> {
    let assets = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS")?;
    let runtime = std::env::temp_dir().join(format!("nimbus-e2e-run-{}", uuid::Uuid::new_v4()));
    let output = Command::new(nimbus_e2e::bin("nimbus").expect("nimbus"))
        .arg("run")
        .arg(workflow)
        .args(extra)
        .env("NIMBUS_ASSETS_DIR", assets)
        .env("NIMBUS_VMM", "sandbox")
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

#[test]
fn the_example_workflow_runs_every_matrix_combination() {
    let workflow =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workflows/ci.yml");
    let Some((code, stdout, stderr)) = nimbus_run(&workflow, &[]) else {
        return;
    };
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for variant in ["debug", "release"] {
        assert!(
            stdout.contains(&format!("hello from a {variant} build on Linux")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("built with {variant}")),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("═══ build ({variant}) ═══")),
            "{stderr}"
        );
    }
    assert!(
        !stdout.contains("the build failed"),
        "failure() steps stay skipped"
    );
    assert_eq!(stdout.matches("cleaned").count(), 2, "always() steps run");
    assert!(stderr.contains("actions/checkout@v4: skipped"), "{stderr}");
    // Each combination went through the (in-process) control plane as a job.
    assert!(
        stderr.contains("queued as job 1 and leased (fencing token 1)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("queued as job 2 and leased (fencing token 1)"),
        "{stderr}"
    );
}

#[test]
fn a_failing_step_fails_the_run_with_its_code_and_runs_failure_steps() {
    let dir = std::env::temp_dir().join(format!("nimbus-e2e-wf-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let workflow = dir.join("fail.yml");
    std::fs::write(
        &workflow,
        "jobs:\n  broken:\n    steps:\n      - run: echo before; exit 7\n      - run: echo never\n      - if: failure()\n        run: echo reporting\n  other:\n    steps:\n      - run: echo other job\n",
    )
    .expect("write");
    let Some((code, stdout, stderr)) = nimbus_run(&workflow, &["--job", "broken"]) else {
        return;
    };
    assert_eq!(code, 7, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("before") && stdout.contains("reporting"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("never") && !stdout.contains("other job"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
