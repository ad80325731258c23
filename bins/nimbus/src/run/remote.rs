//! `nimbus run` against a running control plane (`nimbus dev up`, or any
//! `--control-plane URL`): each job is submitted like any direct job — it shows in
//! the jobs API, the dashboard and the logging pipeline — and a host agent of that
//! control plane runs it, with the cache proxy's `ACTIONS_*` variables its jobs
//! get, so caches persist between runs. The working tree goes up once per run as
//! a workspace archive; this side follows each job's lines and reads its result
//! (outputs for `needs.<job>.outputs`, step summary, annotations) when it ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::client::ControlPlaneClient;
use nimbus_core::control_plane::ControlPlaneApi;
use nimbus_core::domain::{JobId, JobStatus, OrgId};
use nimbus_core::Secret;
use nimbus_logs::sink::{LogQuery, LogSink, Order};
use nimbus_vmm::workflow::commands::Masker;
use nimbus_vmm::workflow::schedule::{JobRun, JobRunner, RunnerOutcome};
use nimbus_vmm::workflow::WorkflowResult;
use tokio::sync::watch;

/// Where the jobs of a run go: the control plane, its token, the logging
/// pipeline to follow their lines on.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The control plane's base URL.
    pub url: String,
    /// The token jobs are submitted with (org or admin).
    pub token: Option<String>,
    /// The logging pipeline's base URL, when known.
    pub logs_url: Option<String>,
    /// What found it, for the first line of output.
    pub found_by: String,
}

/// Where the run goes. `--local`: in process. `--control-plane URL`: there, with
/// `NIMBUS_TOKEN` (or the dev environment's). Otherwise a `nimbus dev up` whose
/// `dev.env` is in the data directory (`NIMBUS_DATA_DIR`, `./.nimbus`) or the
/// repository's `.nimbus`, if its control plane answers; else in process.
pub async fn choose(
    local: bool,
    control_plane: Option<&str>,
    repo_root: &Path,
) -> Result<Option<Remote>, String> {
    if local {
        return Ok(None);
    }
    let env = nimbus_core::Env::from_process().map_err(|e| e.to_string())?;
    let candidates: Vec<PathBuf> = vec![
        env.data_dir().join("dev.env"),
        repo_root.join(".nimbus").join("dev.env"),
    ];
    let dev = candidates.iter().find_map(|path| {
        crate::dev_up::read_env_file(path)
            .ok()
            .map(|vars| (path.clone(), vars))
    });
    let token_from_env = env.get("NIMBUS_TOKEN").map(str::to_string);
    let logs_from_env = env.get("NIMBUS_LOGS_URL").map(str::to_string);
    if let Some(url) = control_plane {
        let dev_vars = dev.as_ref().map(|(_, vars)| vars);
        return Ok(Some(Remote {
            url: url.trim_end_matches('/').to_string(),
            token: token_from_env.or_else(|| dev_vars.and_then(|v| v.get("NIMBUS_TOKEN").cloned())),
            logs_url: logs_from_env
                .or_else(|| dev_vars.and_then(|v| v.get("NIMBUS_LOGS_URL").cloned())),
            found_by: "--control-plane".into(),
        }));
    }
    let Some((path, vars)) = dev else {
        return Ok(None);
    };
    let Some(url) = vars.get("NIMBUS_CONTROL_PLANE_URL").cloned() else {
        return Ok(None);
    };
    if !answers(&url).await {
        eprintln!(
            "nimbus: {} names {url}, where no control plane answers (is `nimbus dev up` running?): \
             the jobs run here, in process",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some(Remote {
        url,
        token: token_from_env.or_else(|| vars.get("NIMBUS_TOKEN").cloned()),
        logs_url: logs_from_env.or_else(|| vars.get("NIMBUS_LOGS_URL").cloned()),
        found_by: path.display().to_string(),
    }))
}

async fn answers(url: &str) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return false;
    };
    client
        .get(format!("{}/healthz", url.trim_end_matches('/')))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Each job submitted to a remote control plane and followed there.
pub struct RemoteRunner {
    api: ControlPlaneClient,
    logs: Option<Arc<dyn LogSink>>,
    org_id: OrgId,
    origin: super::JobOrigin,
    workspace: Option<String>,
    masks: Masker,
    /// Jobs submitted and not yet seen to end (cancelled on Ctrl-C).
    unfinished: std::sync::Mutex<std::collections::BTreeSet<JobId>>,
}

impl RemoteRunner {
    /// Cancels the jobs of this run that have not ended (Ctrl-C): they must not
    /// go on in the control plane after the run is gone.
    pub async fn cancel_unfinished(&self) {
        let ids: Vec<JobId> = self
            .unfinished
            .lock()
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            match self.api.cancel(id).await {
                Ok(_) => eprintln!("nimbus: cancelled job {id}"),
                Err(error) => eprintln!("nimbus: cancelling job {id}: {error}"),
            }
        }
    }

    fn track(&self, id: JobId, running: bool) {
        if let Ok(mut ids) = self.unfinished.lock() {
            if running {
                ids.insert(id);
            } else {
                ids.remove(&id);
            }
        }
    }

    /// Connects, settles the org (the token's own; with an admin token `org`,
    /// registered as `local` when new) and uploads the working tree.
    pub async fn start(
        remote: &Remote,
        org: Option<OrgId>,
        origin: super::JobOrigin,
        archive: Option<&Path>,
        masks: Masker,
    ) -> Result<Self, String> {
        let api =
            ControlPlaneClient::new(remote.url.clone(), remote.token.clone().map(Secret::new))
                .map_err(|e| e.to_string())?;
        let at = &remote.url;
        let orgs = api
            .orgs()
            .await
            .map_err(|e| format!("the control plane at {at}: {e}"))?;
        let org_id = match (org, orgs.as_slice()) {
            (Some(id), _) if orgs.iter().any(|o| o.id == id) => id,
            // An org token sees its own org alone.
            (None, [only]) => only.id,
            (asked, _) => {
                let id = asked.unwrap_or(1);
                if orgs.iter().any(|o| o.id == id) {
                    id
                } else {
                    api.upsert_org(id, "local").await.map_err(|e| {
                        format!("org {id} is not on {at} and could not be registered: {e}")
                    })?;
                    eprintln!("nimbus: registered org {id} (local) on {at}");
                    id
                }
            }
        };
        let workspace = match archive {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let digest = nimbus_core::domain::workspace_digest(&bytes);
                let size = bytes.len();
                api.put_workspace(Some(org_id), &digest, bytes)
                    .await
                    .map_err(|e| format!("uploading the working tree to {at}: {e}"))?;
                eprintln!(
                    "nimbus: the working tree is workspace {} ({} KiB) of org {org_id}",
                    &digest[..12],
                    size.div_ceil(1024)
                );
                Some(digest)
            }
        };
        let logs = remote.logs_url.as_ref().map(|url| {
            Arc::new(nimbus_logs::sink::http::HttpSink::new(
                reqwest::Client::new(),
                url,
                remote.token.clone().map(Secret::new),
            )) as Arc<dyn LogSink>
        });
        if logs.is_none() {
            eprintln!("nimbus: no logging pipeline known (NIMBUS_LOGS_URL): jobs' lines are not shown here");
        }
        eprintln!(
            "nimbus: submitting to the control plane at {at} (found by {}); jobs show in {at}/dashboard",
            remote.found_by
        );
        Ok(RemoteRunner {
            api,
            logs,
            org_id,
            origin,
            workspace,
            masks,
            unfinished: Default::default(),
        })
    }

    /// Prints the job's lines after `after`; returns the last seq shown.
    async fn show_lines(&self, prefix: &str, job_id: JobId, mut after: u64) -> u64 {
        let Some(logs) = &self.logs else {
            return after;
        };
        loop {
            let query = LogQuery {
                job_id: u64::try_from(job_id).ok(),
                after_seq: Some(after),
                limit: 1000,
                order: Order::Oldest,
                ..LogQuery::default()
            };
            let Ok(lines) = logs.query(&query).await else {
                return after;
            };
            for line in &lines {
                let message = self.masks.mask(&line.message);
                // Step titles (the agent writes them for workflow jobs) stand out
                // as they do in a local run.
                let is_title = message.starts_with(['▶', '✓', '✗', '–']);
                let text = if is_title {
                    format!("{prefix} | {message}\n")
                } else {
                    format!("{prefix} |   {message}\n")
                };
                let _ = if line.level == "error" {
                    std::io::stderr().write_all(text.as_bytes())
                } else {
                    std::io::stdout().write_all(text.as_bytes())
                };
                after = line.seq;
            }
            if lines.len() < 1000 {
                return after;
            }
        }
    }
}

#[async_trait::async_trait]
impl JobRunner for RemoteRunner {
    async fn run(&self, job: JobRun, mut cancel: watch::Receiver<bool>) -> RunnerOutcome {
        let prefix = self.masks.mask(&job.display);
        let outcome = |exit_code: i32, cancelled: bool, result: WorkflowResult| RunnerOutcome {
            exit_code,
            cancelled,
            result,
        };
        let mut request = self.origin.request(&job);
        request.org_id = Some(self.org_id);
        request.workspace = self.workspace.clone();
        let submitted = match self.api.submit(request).await {
            Ok(job) => job,
            Err(error) => {
                eprintln!("{prefix} | nimbus: submitting the job: {error}");
                return outcome(125, false, WorkflowResult::default());
            }
        };
        let id = submitted.id;
        self.track(id, true);
        eprintln!("{prefix} | queued as job {id}");
        let mut shown = 0;
        let mut cancelled = false;
        // Until the run is cancelled (or can no longer be).
        let mut watching = true;
        let finished = loop {
            let cancel_now = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => false,
                changed = cancel.wait_for(|c| *c), if watching => {
                    watching = false;
                    changed.is_ok()
                }
            };
            if cancel_now {
                cancelled = true;
                if let Err(error) = self.api.cancel(id).await {
                    eprintln!("{prefix} | nimbus: cancelling job {id}: {error}");
                }
            }
            shown = self.show_lines(&prefix, id, shown).await;
            match self.api.job(id).await {
                Ok(current) if current.status.is_terminal() => {
                    self.track(id, false);
                    break current;
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("{prefix} | nimbus: job {id}: {error}");
                    return outcome(125, cancelled, WorkflowResult::default());
                }
            }
        };
        // Lines shipped after the completion (the agent ships, then completes;
        // another pipeline replica may lag).
        self.show_lines(&prefix, id, shown).await;
        if let Some(reason) = &finished.failure_reason {
            eprintln!("{prefix} | nimbus: {}", self.masks.mask(reason));
        }
        let result = finished
            .result
            .clone()
            .and_then(|value| serde_json::from_value(value).ok())
            .unwrap_or_default();
        let code = match finished.status {
            JobStatus::Succeeded => 0,
            JobStatus::TimedOut => 124,
            JobStatus::Cancelled => 130,
            JobStatus::Rejected => 125,
            _ => finished.exit_code.filter(|c| *c != 0).unwrap_or(1),
        };
        outcome(
            code,
            cancelled || finished.status == JobStatus::Cancelled,
            result,
        )
    }
}
