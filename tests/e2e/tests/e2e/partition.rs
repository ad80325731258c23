//! A network partition: a host agent in a network namespace of its own, reaching
//! the control plane over a veth pair, loses its link mid-job. It must stop the
//! job's VM before its lease can expire (by its own clock: it cannot hear the
//! control plane), the job must run again on another agent — never both at once —
//! and once the link is back the cut-off agent must work again.

use std::process::Command;
use std::time::{Duration, Instant};

use nimbus_e2e::{mint_token, ControlPlaneProcess, HostAgentProcess};
use serde_json::{json, Value};

/// A network namespace joined to the host by a veth pair (`10.251.N.1` on the
/// host, `.2` inside); removed when dropped.
struct Partition {
    netns: String,
    host_link: String,
    host_address: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Partition {
    /// Needs root and iproute2.
    fn create() -> Result<Partition, String> {
        let n = std::process::id() % 250 + 1;
        let partition = Partition {
            netns: format!("nimbus-part-{n}"),
            host_link: format!("npart{n}h"),
            host_address: format!("10.251.{n}.1"),
        };
        let inner = format!("npart{n}n");
        // What a killed earlier run left.
        let _ = ip(&["netns", "del", &partition.netns]);
        let _ = ip(&["link", "del", &partition.host_link]);
        ip(&["netns", "add", &partition.netns])?;
        ip(&[
            "link",
            "add",
            &partition.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &partition.netns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", partition.host_address),
            "dev",
            &partition.host_link,
        ])?;
        ip(&["link", "set", &partition.host_link, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", partition.netns.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("10.251.{n}.2/30"), "dev", &inner])?;
        inside(&["link", "set", &inner, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(partition)
    }

    fn link(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.host_link,
            if up { "up" } else { "down" },
        ])
        .expect("set the link");
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = ip(&["link", "del", &self.host_link]);
    }
}

async fn wait_until(limit: Duration, check: impl Fn() -> bool) -> Option<Instant> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_stops_its_vm_before_the_job_runs_elsewhere_and_recovers() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let partition = match Partition::create() {
        Ok(partition) => Some(partition),
        Err(error) => {
            eprintln!("{error}");
            None
        }
    };
    let Some(partition) = nimbus_core::testsuite::require(
        partition,
        "a network namespace and veth pair (root and iproute2)",
    ) else {
        return;
    };
    const TTL: Duration = Duration::from_secs(3);
    let control_plane = ControlPlaneProcess::start_on(
        &partition.host_address,
        &[
            ("NIMBUS_JOB_LEASE_TTL", TTL.as_secs().to_string()),
            ("NIMBUS_REAPER_INTERVAL", "0.2".to_string()),
        ],
    )
    .await
    .expect("control plane");
    let agent_env = |name: &str| {
        nimbus_e2e::sandbox_agent_env(&control_plane.url, &assets, name).expect("agent settings")
    };
    let cut_off = HostAgentProcess::start_in_netns(&partition.netns, &agent_env("cut-off"))
        .expect("agent in its namespace");

    let client = reqwest::Client::new();
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let org = mint_token(&["--role", "org", "--org-id", "5"]).expect("org");
    client
        .post(format!("{}/api/orgs", control_plane.url))
        .bearer_auth(admin.expose())
        .json(&json!({"id": 5, "name": "acme"}))
        .send()
        .await
        .expect("org");
    let submit = |run: &'static str| {
        let client = client.clone();
        let url = control_plane.url.clone();
        let org = org.expose().to_string();
        async move {
            let job: Value = client
                .post(format!("{url}/api/jobs"))
                .bearer_auth(org)
                .json(&json!({"repo": "acme/app", "labels": ["nimbus"], "steps": [{"run": run}]}))
                .send()
                .await
                .expect("submit")
                .json()
                .await
                .expect("job");
            job["id"].as_i64().expect("id")
        }
    };
    // The first run would go on for ten minutes; the second finishes at once.
    let id = submit(
        r#"if [ "$NIMBUS_JOB_ATTEMPT" = 1 ]; then echo first run; sleep 600; fi; echo "attempt $NIMBUS_JOB_ATTEMPT done""#,
    )
    .await;
    let first_vm = cut_off.runtime_dir.join(format!("job-{id}-1"));
    wait_until(Duration::from_secs(30), || first_vm.exists())
        .await
        .expect("the agent in the namespace runs the job");

    // The link goes down.
    partition.link(false);
    let cut = Instant::now();
    let stopped = wait_until(TTL * 3, || !first_vm.exists())
        .await
        .expect("the cut-off agent stops its VM");
    assert!(
        stopped - cut <= TTL + Duration::from_millis(500),
        "the VM is stopped within the lease's time to live of the cut ({:?} after it)",
        stopped - cut
    );

    // Another agent, on the host, gets the job once the lease has expired.
    let other = HostAgentProcess::start(&agent_env("other")).expect("second agent");
    let second_vm = other.runtime_dir.join(format!("job-{id}-2"));
    let (rerun, done) = tokio::join!(
        wait_until(Duration::from_secs(20), || second_vm.exists()),
        nimbus_e2e::final_job(
            &control_plane.url,
            admin.expose(),
            id,
            Duration::from_secs(30)
        )
    );
    let done = done.expect("job");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["agent_id"], "other", "{done}");
    if let Some(rerun) = rerun {
        assert!(
            rerun > stopped,
            "the second run started after the first was stopped"
        );
    }

    // The link returns; with the other agent gone, the cut-off one runs the next job.
    drop(other);
    partition.link(true);
    let next = submit("echo next job").await;
    let done = nimbus_e2e::final_job(
        &control_plane.url,
        admin.expose(),
        next,
        Duration::from_secs(60),
    )
    .await
    .expect("job");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["agent_id"], "cut-off", "{done}");
    drop(cut_off);
}
