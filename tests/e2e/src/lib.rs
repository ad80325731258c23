//! Helpers for the end-to-end suite: find the built binaries, start them on free
//! loopback ports, wait until they answer, and stop them (by PID) afterwards.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which
//! `scripts/test.sh` does); a missing one fails the test with that advice.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The directory holding the workspace's binaries (`target/<profile>`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("NIMBUS_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // Test binaries live in target/<profile>/deps; a harness binary (the chaos
    // suite) in target/<profile> beside the services.
    let exe = std::env::current_exe().context("locating the test binary")?;
    let dir = exe.parent().context("the binary has no parent directory")?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        return Ok(dir
            .parent()
            .context("deps has no parent directory")?
            .to_path_buf());
    }
    Ok(dir.to_path_buf())
}

pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` first (scripts/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running `nimbus-control-plane`, killed when dropped. It can be killed hard
/// and restarted on the same port and data directory (the chaos suite).
pub struct ControlPlaneProcess {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    port: u16,
    extra: Vec<(String, String)>,
}

pub const JWT_SECRET: &str = "e2e-jwt-secret-0123456789";
pub const WEBHOOK_SECRET: &str = "e2e-webhook-secret";
/// Shared by the control plane (mints per-job cache tokens) and the cache proxy.
pub const CACHE_SECRET: &str = "e2e-cache-secret-0123456789";

impl ControlPlaneProcess {
    /// Starts the control plane with `extra` env on top of test defaults, and
    /// waits until `/readyz` answers.
    pub async fn start(extra: &[(&str, String)]) -> Result<Self> {
        Self::start_on("127.0.0.1", extra).await
    }

    /// [`ControlPlaneProcess::start`] listening on `host` (an address of this
    /// machine other than loopback: the partition test's veth).
    pub async fn start_on(host: &str, extra: &[(&str, String)]) -> Result<Self> {
        let port = free_port()?;
        let data_dir = std::env::temp_dir().join(format!("nimbus-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&data_dir)?;
        let mut extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        extra.push((
            "NIMBUS_CONTROL_PLANE_ADDR".to_string(),
            format!("{host}:{port}"),
        ));
        let mut process = ControlPlaneProcess {
            child: Self::spawn(port, &data_dir, &extra)?,
            url: format!("http://{host}:{port}"),
            data_dir,
            port,
            extra,
        };
        process.wait_ready(Duration::from_secs(30)).await?;
        Ok(process)
    }

    fn spawn(port: u16, data_dir: &std::path::Path, extra: &[(String, String)]) -> Result<Child> {
        let mut command = Command::new(bin("nimbus-control-plane")?);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NIMBUS_CONTROL_PLANE_ADDR", format!("127.0.0.1:{port}"))
            .env("NIMBUS_DATA_DIR", data_dir)
            .env("NIMBUS_JWT_SECRET", JWT_SECRET)
            .env("NIMBUS_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("NIMBUS_CACHE_SHARED_SECRET", CACHE_SECRET)
            .env("NIMBUS_LOG_LEVEL", "warn")
            .current_dir(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in extra {
            command.env(key, value);
        }
        command.spawn().context("starting nimbus-control-plane")
    }

    /// `kill -9`: no chance to finish anything.
    pub fn kill_hard(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts it again on the same port and data directory, and waits until ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.child = Self::spawn(self.port, &self.data_dir, &self.extra)?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("nimbus-control-plane exited early with {status}");
            }
            if let Ok(response) = client.get(format!("{}/readyz", self.url)).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if started.elapsed() > limit {
                bail!(
                    "nimbus-control-plane at {} not ready after {limit:?}",
                    self.url
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text, fetched from loopback (no token needed).
    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.url))
            .await?
            .text()
            .await?)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                bail!("nimbus-control-plane did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Runs the `nimbus` CLI with `env` and returns its stdout.
pub fn nimbus_cli(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let output = Command::new(bin("nimbus")?)
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    if !output.status.success() {
        bail!(
            "nimbus {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

/// Mints a token with the real CLI: `nimbus token mint ARGS…` under the test secret.
pub fn mint_token(args: &[&str]) -> Result<nimbus_core::Secret> {
    let mut all = vec!["token", "mint"];
    all.extend_from_slice(args);
    Ok(nimbus_core::Secret::new(nimbus_cli(
        &all,
        &[("NIMBUS_JWT_SECRET", JWT_SECRET)],
    )?))
}

/// Mints a cache token with the real CLI: `nimbus token cache ARGS…`.
pub fn mint_cache_token(args: &[&str]) -> Result<String> {
    let mut all = vec!["token", "cache"];
    all.extend_from_slice(args);
    nimbus_cli(&all, &[("NIMBUS_CACHE_SHARED_SECRET", CACHE_SECRET)])
}

/// A running `nimbus-cache-proxy`, killed when dropped. It can be killed hard and
/// restarted on the same port and data directory (the crash tests).
pub struct CacheProxyProcess {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    port: u16,
    extra: Vec<(String, String)>,
}

impl CacheProxyProcess {
    /// Starts the proxy (fs backend and SQLite index under a fresh data dir unless
    /// `extra` says otherwise) and waits until `/healthz` answers.
    pub async fn start(extra: &[(&str, String)]) -> Result<Self> {
        let port = free_port()?;
        let data_dir =
            std::env::temp_dir().join(format!("nimbus-e2e-cache-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&data_dir)?;
        let mut process = CacheProxyProcess {
            child: Self::spawn(
                port,
                &data_dir,
                extra.iter().map(|(k, v)| (k.to_string(), v.clone())),
            )?,
            url: format!("http://127.0.0.1:{port}"),
            data_dir,
            port,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        process.wait_ready().await?;
        Ok(process)
    }

    fn spawn(
        port: u16,
        data_dir: &PathBuf,
        extra: impl Iterator<Item = (String, String)>,
    ) -> Result<Child> {
        let mut command = Command::new(bin("nimbus-cache-proxy")?);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NIMBUS_CACHE_PROXY_ADDR", format!("127.0.0.1:{port}"))
            .env("NIMBUS_DATA_DIR", data_dir)
            .env("NIMBUS_JWT_SECRET", JWT_SECRET)
            .env("NIMBUS_CACHE_SHARED_SECRET", CACHE_SECRET)
            .env("NIMBUS_LOG_LEVEL", "warn")
            .current_dir(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in extra {
            command.env(key, value);
        }
        command.spawn().context("starting nimbus-cache-proxy")
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("nimbus-cache-proxy exited early with {status}");
            }
            if let Ok(response) = client.get(format!("{}/healthz", self.url)).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("nimbus-cache-proxy at {} not ready after 30 s", self.url);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no chance to finish anything.
    pub fn kill_hard(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.child = Self::spawn(self.port, &self.data_dir, self.extra.clone().into_iter())?;
        self.wait_ready().await
    }
}

impl Drop for CacheProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A running `nimbus-logging-pipeline`, killed when dropped.
pub struct LoggingPipelineProcess {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl LoggingPipelineProcess {
    /// Starts the pipeline (SQLite under a fresh data dir unless `extra` says
    /// otherwise) and waits until `/healthz` answers.
    pub async fn start(extra: &[(&str, String)]) -> Result<Self> {
        let port = free_port()?;
        let data_dir =
            std::env::temp_dir().join(format!("nimbus-e2e-logs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&data_dir)?;
        let mut command = Command::new(bin("nimbus-logging-pipeline")?);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NIMBUS_LOGGING_PIPELINE_ADDR", format!("127.0.0.1:{port}"))
            .env("NIMBUS_DATA_DIR", &data_dir)
            .env("NIMBUS_JWT_SECRET", JWT_SECRET)
            .env("NIMBUS_LOG_LEVEL", "warn")
            .current_dir(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .context("starting nimbus-logging-pipeline")?;
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("nimbus-logging-pipeline exited early with {status}");
            }
            if let Ok(response) = client.get(format!("{url}/healthz")).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                bail!("nimbus-logging-pipeline at {url} not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(LoggingPipelineProcess {
            child,
            url,
            data_dir,
        })
    }
}

impl Drop for LoggingPipelineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A running `nimbus-host-agent`, killed when dropped.
pub struct HostAgentProcess {
    child: Child,
    pub runtime_dir: PathBuf,
    env: Vec<(String, String)>,
    /// The network namespace it runs in (`ip netns exec`), if not the host's.
    netns: Option<String>,
}

impl HostAgentProcess {
    /// Starts the agent with `env` (control plane URL, token, VMM settings …).
    pub fn start(env: &[(&str, String)]) -> Result<Self> {
        let runtime_dir =
            std::env::temp_dir().join(format!("nimbus-e2e-agent-{}", uuid::Uuid::new_v4()));
        Self::start_in(runtime_dir, env)
    }

    /// Starts an agent on an existing VM runtime directory (a restart after a crash).
    pub fn start_in(runtime_dir: PathBuf, env: &[(&str, String)]) -> Result<Self> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Ok(HostAgentProcess {
            child: Self::spawn(&runtime_dir, &env, None)?,
            runtime_dir,
            env,
            netns: None,
        })
    }

    /// Starts the agent inside the network namespace `netns` (`ip netns exec`,
    /// which becomes the agent: its pid is the agent's).
    pub fn start_in_netns(netns: &str, env: &[(&str, String)]) -> Result<Self> {
        let runtime_dir =
            std::env::temp_dir().join(format!("nimbus-e2e-agent-{}", uuid::Uuid::new_v4()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Ok(HostAgentProcess {
            child: Self::spawn(&runtime_dir, &env, Some(netns))?,
            runtime_dir,
            env,
            netns: Some(netns.to_string()),
        })
    }

    fn spawn(
        runtime_dir: &std::path::Path,
        env: &[(String, String)],
        netns: Option<&str>,
    ) -> Result<Child> {
        let agent = bin("nimbus-host-agent")?;
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(agent);
                command
            }
            None => Command::new(agent),
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NIMBUS_VM_RUNTIME_DIR", runtime_dir)
            .env(
                "NIMBUS_HOST_AGENT_METRICS_ADDR",
                format!("127.0.0.1:{}", free_port()?),
            )
            .env("NIMBUS_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        command.spawn().context("starting nimbus-host-agent")
    }

    /// Starts it again with the same settings on the same VM runtime directory, as
    /// a supervisor would after a crash (it reaps what the last one left).
    pub fn restart(&mut self) -> Result<()> {
        self.child = Self::spawn(&self.runtime_dir, &self.env, self.netns.as_deref())?;
        Ok(())
    }

    /// `kill -9`: the agent gets no chance to stop its VMs or complete its jobs.
    pub fn kill_hard(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for HostAgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// The settings of a sandbox host agent named `name` leasing from `control_plane_url`
/// with one slot and no VM network (the agent failure tests).
pub fn sandbox_agent_env(
    control_plane_url: &str,
    assets: &str,
    name: &str,
) -> Result<Vec<(&'static str, String)>> {
    let token = mint_token(&["--role", "agent", "--sub", name])?;
    Ok(vec![
        ("NIMBUS_CONTROL_PLANE_URL", control_plane_url.to_string()),
        ("NIMBUS_CONTROL_PLANE_TOKEN", token.expose().to_string()),
        ("NIMBUS_AGENT_ID", name.to_string()),
        ("NIMBUS_VMM", "sandbox".to_string()),
        ("NIMBUS_ASSETS_DIR", assets.to_string()),
        ("NIMBUS_VM_NETWORK", "none".to_string()),
        ("NIMBUS_AGENT_MAX_VMS", "1".to_string()),
    ])
}

/// Polls `GET /api/jobs/{id}` until the job reaches a final status (succeeded,
/// failed, timed_out, cancelled) or `limit` passes; returns the job as last seen.
pub async fn final_job(
    control_plane_url: &str,
    token: &str,
    id: i64,
    limit: Duration,
) -> Result<serde_json::Value> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let job: serde_json::Value = client
            .get(format!("{control_plane_url}/api/jobs/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let done = matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "timed_out" | "cancelled")
        );
        if done || started.elapsed() > limit {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The messages of a job's log lines in the logging pipeline, oldest first.
pub async fn log_messages(logs_url: &str, token: &str, id: i64) -> Result<Vec<String>> {
    let lines: serde_json::Value = reqwest::Client::new()
        .get(format!("{logs_url}/api/logs?job_id={id}&order=oldest"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    Ok(lines["lines"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|r| r["message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// A running `nimbus dev up` in a directory of its own (its `.nimbus/dev.env`
/// there), on free ports, with the sandbox; interrupted (Ctrl-C) and its
/// directory removed when dropped.
pub struct DevUpProcess {
    child: Child,
    /// Where it runs: `.nimbus/` holds its state and `dev.env`.
    pub dir: PathBuf,
    /// `.nimbus/dev.env`, read once it was written.
    pub vars: std::collections::HashMap<String, String>,
}

impl DevUpProcess {
    /// Starts it with the guest assets in `assets`, job VMs on `network`, and waits
    /// until its control plane is ready and `dev.env` written.
    pub async fn start(assets: &str, network: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("nimbus-e2e-devup-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let (cp, cache, logs, metrics) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let child = Command::new(bin("nimbus")?)
            .args(["dev", "up"])
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NIMBUS_ASSETS_DIR", assets)
            .env("NIMBUS_VMM", "sandbox")
            .env("NIMBUS_VM_NETWORK", network)
            .env("NIMBUS_LOG_LEVEL", "warn")
            .env("NIMBUS_CONTROL_PLANE_ADDR", format!("127.0.0.1:{cp}"))
            .env("NIMBUS_CACHE_PROXY_ADDR", format!("127.0.0.1:{cache}"))
            .env("NIMBUS_LOGGING_PIPELINE_ADDR", format!("127.0.0.1:{logs}"))
            .env(
                "NIMBUS_HOST_AGENT_METRICS_ADDR",
                format!("127.0.0.1:{metrics}"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nimbus dev up")?;
        let mut process = DevUpProcess {
            child,
            dir,
            vars: Default::default(),
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        let dev_env = process.dir.join(".nimbus/dev.env");
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{cp}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready && dev_env.is_file() {
                break;
            }
            if let Some(status) = process.child.try_wait()? {
                bail!("dev up exited early: {status}");
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("dev up not ready after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        process.vars = std::fs::read_to_string(&dev_env)?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(process)
    }

    /// A variable of `dev.env` ("" when missing).
    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).map_or("", String::as_str)
    }

    /// Interrupts it (Ctrl-C) and waits up to `limit` for it to exit.
    pub async fn interrupt(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let stopping = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if stopping.elapsed() > limit {
                bail!("dev up did not stop within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for DevUpProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
