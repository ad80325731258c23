//! `nimbus run WORKFLOW.yml`: a GitHub Actions workflow on this machine, one
//! fresh VM (the driver `NIMBUS_VMM` picks) per job and matrix combination,
//! jobs ordered by `needs:` and run in parallel, the repository's working tree
//! copied into each, output streamed live with the job's name in front, then a
//! summary, the step summaries and the annotations. Exits with the first failed
//! job's code (0 when every job succeeded or was skipped).
//!
//! The semantics live in `nimbus_vmm::workflow` (expressions, the graph, the
//! guest's step runner); this file is the command line around them. Each job
//! goes through a control plane like any job: submitted, leased with a fencing
//! token, run, completed. With `nimbus dev up` running (or `--control-plane`),
//! that is its control plane and its host agent runs the jobs ([`remote`]);
//! otherwise (or with `--local`) one in this process (a SQLite database in
//! memory) and the VMs are booted here.

mod remote;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nimbus_core::auth::Principal;
use nimbus_core::control_plane::{ControlPlane, JobRequest, LeaseOptions};
use nimbus_core::domain::{Completion, CompletionStatus};
use nimbus_core::{ControlPlaneConfig, Env};
use nimbus_vmm::assets::VerifiedAssets;
use nimbus_vmm::launch;
use nimbus_vmm::protocol::Stream;
use nimbus_vmm::select::{self, VmmConfig};
use nimbus_vmm::workflow::plan::{self, Workflow};
use nimbus_vmm::workflow::schedule::{
    self, Conclusion, JobRun, JobRunner, RunOptions, RunReport, RunnerOutcome,
};
use nimbus_vmm::workflow::WorkflowResult;
use nimbus_vmm::{JobEvent, Outcome, VmmDriver};
use serde_json::{json, Map, Value as Json};
use tokio::sync::watch;

/// `nimbus run`'s arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The workflow file, e.g. .github/workflows/ci.yml.
    pub workflow: PathBuf,
    /// Only this job (id or name) and the jobs it needs; repeatable.
    #[arg(long = "job")]
    pub jobs: Vec<String>,
    /// Prints the plan (stages, jobs, matrix combinations, steps) and exits.
    #[arg(long)]
    pub list: bool,
    /// Walks the graph without booting VMs: every job that would run is shown and counted as a success.
    #[arg(long)]
    pub dry_run: bool,
    /// Jobs at once (default: what this host's cores and memory allow).
    #[arg(long = "jobs", value_name = "N")]
    pub parallel: Option<usize>,
    /// The event that triggers the run: push, pull_request, workflow_dispatch, …
    #[arg(long, default_value = "push")]
    pub event: String,
    /// The event's payload (JSON, as GitHub sends it): `github.event`.
    #[arg(long, value_name = "FILE")]
    pub event_payload: Option<PathBuf>,
    /// `inputs.K` (workflow_dispatch inputs); repeatable.
    #[arg(long = "input", value_name = "K=V")]
    pub inputs: Vec<String>,
    /// `secrets.K`, masked in all output; repeatable.
    #[arg(long = "secret", value_name = "K=V")]
    pub secrets: Vec<String>,
    /// Secrets from a file of K=V lines.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// `vars.K`; repeatable.
    #[arg(long = "var", value_name = "K=V")]
    pub vars: Vec<String>,
    /// Only matrix combinations with this value (`key:value`); repeatable.
    #[arg(long = "matrix", value_name = "K:V")]
    pub matrix: Vec<String>,
    /// Skips `uses:` steps that cannot run here instead of failing their job.
    #[arg(long)]
    pub skip_unsupported: bool,
    /// Also writes the run's result as JSON (jobs, conclusions, exit codes, outputs).
    #[arg(long, value_name = "FILE")]
    pub report_json: Option<PathBuf>,
    /// Runs the jobs here, in process, even when `nimbus dev up` is running.
    #[arg(long, conflicts_with = "control_plane")]
    pub local: bool,
    /// Submits the jobs to this control plane (token: NIMBUS_TOKEN) instead of the
    /// `nimbus dev up` found in .nimbus/dev.env.
    #[arg(long, value_name = "URL")]
    pub control_plane: Option<String>,
    /// The org the jobs run for on a control plane (default: the token's own; with
    /// an admin token 1, registered as `local` when new).
    #[arg(long, value_name = "ID")]
    pub org: Option<i64>,
}

fn pairs(values: &[String], separator: char, what: &str) -> Result<Vec<(String, String)>, String> {
    values
        .iter()
        .map(|v| {
            v.split_once(separator)
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("{what} {v:?}: expected KEY{separator}VALUE"))
        })
        .collect()
}

/// Runs `nimbus run`; returns the exit code.
pub fn run(args: &RunArgs) -> Result<i32, String> {
    let file = args.workflow.display().to_string();
    let text = std::fs::read_to_string(&args.workflow).map_err(|e| format!("{file}: {e}"))?;
    let workflow = Workflow::parse(&file, &text).map_err(|e| e.to_string())?;
    if args.list {
        print_plan(&workflow, &args.jobs)?;
        return Ok(0);
    }
    let repo_root = repository_root(&args.workflow);
    let contexts = contexts(args, &workflow, &repo_root)?;
    let mut options = RunOptions {
        parallel: args.parallel.unwrap_or(0),
        contexts,
        only: args.jobs.clone(),
        matrix_filter: pairs(&args.matrix, ':', "--matrix")?,
        skip_unsupported: args.skip_unsupported,
        workspace_archive: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let remote = if args.dry_run {
            None
        } else {
            remote::choose(args.local, args.control_plane.as_deref(), &repo_root).await?
        };
        // The remote runner, to cancel what it submitted on Ctrl-C.
        let mut submitted_remotely: Option<Arc<remote::RemoteRunner>> = None;
        let runner: Arc<dyn JobRunner> = if args.dry_run {
            options.parallel = options.parallel.max(1);
            Arc::new(DryRun)
        } else {
            let archive = std::env::temp_dir()
                .join(format!("nimbus-run-{}-workspace.tar", std::process::id()));
            let packed = nimbus_vmm::workflow::workspace::pack(&repo_root, &archive)
                .map_err(|e| format!("packing {}: {e}", repo_root.display()))?;
            eprintln!(
                "nimbus: copying {} ({} files, {} KiB; .gitignore honoured) into each job's VM",
                repo_root.display(),
                packed.files,
                packed.bytes.div_ceil(1024)
            );
            options.workspace_archive = Some(packed.archive);
            match &remote {
                Some(remote) => {
                    if options.parallel == 0 {
                        options.parallel =
                            std::thread::available_parallelism().map_or(1, |n| n.get());
                    }
                    let runner = remote::RemoteRunner::start(
                        remote,
                        args.org,
                        JobOrigin::of(&options.contexts, &file),
                        options.workspace_archive.as_deref(),
                        secret_values(&options.contexts),
                    )
                    .await;
                    match runner {
                        Ok(runner) => {
                            let runner = Arc::new(runner);
                            submitted_remotely = Some(runner.clone());
                            runner
                        }
                        Err(message) => {
                            remove_archive(&options);
                            return Err(message);
                        }
                    }
                }
                None => match local_runner(&mut options, &file).await {
                    Ok(runner) => runner,
                    Err(message) => {
                        remove_archive(&options);
                        return Err(message);
                    }
                },
            }
        };
        eprintln!(
            "nimbus: {} — {} of {} job(s), up to {} at once",
            workflow.name.as_deref().unwrap_or(&file),
            workflow.selection(&options.only)?.len(),
            workflow.jobs.len(),
            options.parallel
        );
        let report = tokio::select! {
            report = schedule::run(&workflow, &options, runner) => report,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("nimbus: interrupted");
                if let Some(remote) = &submitted_remotely {
                    remote.cancel_unfinished().await;
                }
                remove_archive(&options);
                return Ok(130);
            }
        };
        remove_archive(&options);
        let report = report?;
        print_report(&report);
        if let Some(path) = &args.report_json {
            write_report_json(path, &report)?;
        }
        Ok(report.exit_code())
    })
}

fn remove_archive(options: &RunOptions) {
    if let Some(archive) = &options.workspace_archive {
        let _ = std::fs::remove_file(archive);
    }
}

/// Jobs in VMs booted here, through a control plane in this process.
async fn local_runner(options: &mut RunOptions, file: &str) -> Result<Arc<dyn JobRunner>, String> {
    let env = Env::from_process().map_err(|e| e.to_string())?;
    let config = VmmConfig::from_env(&env).map_err(|e| e.to_string())?;
    let selection = select::select(&config).await.map_err(|e| e.to_string())?;
    let kind = selection.driver.kind();
    eprintln!("nimbus: {}", selection.reason);
    if kind == nimbus_vmm::DriverKind::Sandbox {
        eprintln!("nimbus: the sandbox shares the host kernel: weaker isolation than a VM");
    }
    let assets = launch::verified_assets(&config, kind)
        .await
        .map_err(|e| e.to_string())?;
    if options.parallel == 0 {
        options.parallel = default_parallelism(&config);
    }
    Ok(Arc::new(VmRunner {
        driver: selection.driver.clone(),
        config,
        assets,
        control_plane: LocalControlPlane::start().await?,
        masks: secret_values(&options.contexts),
        origin: JobOrigin::of(&options.contexts, file),
    }))
}

/// Where the jobs of a run come from, as their records say: the repository, the
/// ref (which scopes their cache entries, as GitHub's are) and the workflow file.
struct JobOrigin {
    repo: String,
    git_ref: String,
    workflow_file: String,
}

impl JobOrigin {
    fn of(contexts: &Map<String, Json>, workflow_file: &str) -> Self {
        let github = contexts.get("github");
        let text = |key: &str| {
            github
                .and_then(|g| g.get(key))
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string()
        };
        // `local/<directory>` outside git may not be a name a control plane takes.
        let repo = Some(text("repository"))
            .filter(|repo| nimbus_core::domain::validate_repo_name(repo).is_ok())
            .unwrap_or_else(|| "local/workflow".into());
        JobOrigin {
            repo,
            git_ref: text("ref"),
            workflow_file: workflow_file.to_string(),
        }
    }

    /// A job of the run as the control plane records it: the workflow job itself
    /// (which the guest runs), and metadata naming the workflow, the job and the ref.
    fn request(&self, job: &JobRun) -> JobRequest {
        let minutes = job.timeout.as_secs().div_ceil(60).max(1);
        let mut metadata = BTreeMap::new();
        for (key, value) in [
            ("workflow", self.workflow_file.as_str()),
            ("job", job.job_id.as_str()),
            ("ref", self.git_ref.as_str()),
        ] {
            if !value.is_empty() && value.len() <= nimbus_core::domain::MAX_LABEL_LEN {
                metadata.insert(key.to_string(), value.to_string());
            }
        }
        JobRequest {
            org_id: None,
            repo: self.repo.clone(),
            labels: Vec::new(),
            steps: Vec::new(),
            env: BTreeMap::new(),
            timeout_minutes: Some(
                u32::try_from(minutes)
                    .unwrap_or(u32::MAX)
                    .min(nimbus_core::domain::MAX_TIMEOUT_MINUTES),
            ),
            metadata,
            workflow: job
                .guest
                .workflow
                .as_ref()
                .and_then(|workflow| serde_json::to_value(workflow).ok()),
            workspace: None,
        }
    }
}

/// The directory whose tree the jobs get: the git work tree holding the
/// workflow file (or the current directory outside git).
fn repository_root(workflow: &Path) -> PathBuf {
    let dir = workflow
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    git(dir, &["rev-parse", "--show-toplevel"])
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// How many VMs fit at once: one per core, bounded by memory for VM drivers.
fn default_parallelism(config: &VmmConfig) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let available_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib / 1024);
    let per_vm = u64::from(config.memory_mib) + 256;
    let by_memory = (available_mib / per_vm.max(1)).max(1);
    cores
        .min(usize::try_from(by_memory).unwrap_or(usize::MAX))
        .max(1)
}

/// The `github`, `vars`, `secrets` and `inputs` contexts of this run.
fn contexts(args: &RunArgs, workflow: &Workflow, root: &Path) -> Result<Map<String, Json>, String> {
    let mut secrets = Map::new();
    if let Some(file) = &args.secret_file {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        for (k, v) in pairs(&lines, '=', "--secret-file line")? {
            secrets.insert(k, json!(v));
        }
    }
    for (k, v) in pairs(&args.secrets, '=', "--secret")? {
        secrets.insert(k, json!(v));
    }
    let vars: Map<String, Json> = pairs(&args.vars, '=', "--var")?
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    let mut inputs: Map<String, Json> = workflow
        .dispatch_inputs
        .iter()
        .map(|(k, d)| (k.clone(), json!(d.clone().unwrap_or_default())))
        .collect();
    for (k, v) in pairs(&args.inputs, '=', "--input")? {
        inputs.insert(k, json!(v));
    }

    let sha = git(root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "0".repeat(40));
    let branch = git(root, &["symbolic-ref", "--short", "HEAD"]).unwrap_or_else(|| "main".into());
    let repository = git(root, &["remote", "get-url", "origin"])
        .and_then(|url| {
            let trimmed = url.trim_end_matches('/').trim_end_matches(".git");
            let mut parts = trimmed.rsplit(['/', ':']);
            let name = parts.next()?;
            let owner = parts.next()?;
            Some(format!("{owner}/{name}"))
        })
        .unwrap_or_else(|| {
            let name = root
                .file_name()
                .map_or_else(|| "repository".into(), |n| n.to_string_lossy().into_owned());
            format!("local/{name}")
        });
    let owner = repository.split('/').next().unwrap_or("local").to_string();
    let event = match &args.event_payload {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            serde_json::from_str::<Json>(&text)
                .map_err(|e| format!("{}: not JSON: {e}", file.display()))?
        }
        None => default_payload(&args.event, &repository, &owner, &branch, &sha, &inputs),
    };
    let (git_ref, head_ref, base_ref) = match args.event.as_str() {
        "pull_request" | "pull_request_target" => {
            let number = event.get("number").and_then(Json::as_u64).unwrap_or(1);
            let head = event
                .pointer("/pull_request/head/ref")
                .and_then(Json::as_str)
                .unwrap_or(&branch)
                .to_string();
            let base = event
                .pointer("/pull_request/base/ref")
                .and_then(Json::as_str)
                .unwrap_or("main")
                .to_string();
            (format!("refs/pull/{number}/merge"), head, base)
        }
        _ => (
            event
                .get("ref")
                .and_then(Json::as_str)
                .map_or_else(|| format!("refs/heads/{branch}"), str::to_string),
            String::new(),
            String::new(),
        ),
    };
    let ref_name = git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(&git_ref)
        .to_string();
    let ref_type = if git_ref.starts_with("refs/tags/") {
        "tag"
    } else {
        "branch"
    };
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let workflow_name = workflow
        .name
        .clone()
        .unwrap_or_else(|| workflow.source.file.clone());
    let github = json!({
        "action": "",
        "actor": "nimbus",
        "actor_id": "0",
        "api_url": "https://api.github.com",
        "base_ref": base_ref,
        "event": event,
        "event_name": args.event,
        "graphql_url": "https://api.github.com/graphql",
        "head_ref": head_ref,
        "ref": git_ref,
        "ref_name": ref_name,
        "ref_protected": "false",
        "ref_type": ref_type,
        "repository": repository,
        "repository_owner": owner,
        "retention_days": "90",
        "run_attempt": "1",
        "run_id": run_id.to_string(),
        "run_number": "1",
        "server_url": "https://github.com",
        "sha": sha,
        "token": secrets.get("GITHUB_TOKEN").cloned().unwrap_or(json!("")),
        "triggering_actor": "nimbus",
        "workflow": workflow_name,
        "workflow_ref": format!("{repository}/{}@{git_ref}", workflow.source.file),
        "workflow_sha": sha,
    });
    let mut contexts = Map::new();
    contexts.insert("github".into(), github);
    contexts.insert("vars".into(), Json::Object(vars));
    contexts.insert("secrets".into(), Json::Object(secrets));
    contexts.insert("inputs".into(), Json::Object(inputs));
    Ok(contexts)
}

fn default_payload(
    event: &str,
    repository: &str,
    owner: &str,
    branch: &str,
    sha: &str,
    inputs: &Map<String, Json>,
) -> Json {
    let repo = json!({
        "full_name": repository,
        "name": repository.split('/').nth(1).unwrap_or(repository),
        "owner": {"login": owner},
        "default_branch": "main",
    });
    match event {
        "pull_request" | "pull_request_target" => json!({
            "action": "opened",
            "number": 1,
            "pull_request": {
                "number": 1,
                "head": {"ref": branch, "sha": sha},
                "base": {"ref": "main"},
                "labels": [],
            },
            "repository": repo,
        }),
        "workflow_dispatch" => {
            json!({"inputs": inputs, "ref": format!("refs/heads/{branch}"), "repository": repo})
        }
        _ => json!({"ref": format!("refs/heads/{branch}"), "after": sha, "repository": repo}),
    }
}

fn secret_values(contexts: &Map<String, Json>) -> nimbus_vmm::workflow::commands::Masker {
    let mut masker = nimbus_vmm::workflow::commands::Masker::default();
    if let Some(Json::Object(secrets)) = contexts.get("secrets") {
        for value in secrets.values() {
            masker.add(&nimbus_vmm::workflow::expr::to_text(value));
        }
    }
    masker
}

/// `--list`: the stages, jobs, matrices and steps.
fn print_plan(workflow: &Workflow, only: &[String]) -> Result<(), String> {
    let selected = workflow.selection(only)?;
    let stages = workflow.stages().map_err(|e| e.to_string())?;
    println!(
        "{} ({}) on {}",
        workflow.name.as_deref().unwrap_or("(unnamed workflow)"),
        workflow.source.file,
        if workflow.events.is_empty() {
            "(no events)".to_string()
        } else {
            workflow.events.join(", ")
        }
    );
    for (number, stage) in stages.iter().enumerate() {
        let jobs: Vec<_> = stage.iter().filter(|j| selected.contains(&j.id)).collect();
        if jobs.is_empty() {
            continue;
        }
        println!("stage {}", number + 1);
        for job in jobs {
            let matrix = match &job.matrix {
                None => String::new(),
                Some(spec) => {
                    let order = plan::matrix_key_order(workflow.source_text(), spec);
                    let has_expressions = spec.to_string().contains("${{");
                    match plan::combinations(Some(spec), &order) {
                        Ok(combos) if !has_expressions => {
                            let names: Vec<String> = combos
                                .iter()
                                .map(|c| plan::display_name(&job.id, c))
                                .collect();
                            format!("; matrix: {}", names.join(", "))
                        }
                        _ => "; matrix: from expressions, expanded when its needs finish".into(),
                    }
                }
            };
            let needs = if job.needs.is_empty() {
                String::new()
            } else {
                format!("; needs: {}", job.needs.join(", "))
            };
            let condition = job
                .condition
                .as_ref()
                .map(|c| format!("; if: {c}"))
                .unwrap_or_default();
            let name = job
                .name
                .as_ref()
                .filter(|n| *n != &job.id)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            println!(
                "  {}{name}: {} step(s){needs}{condition}{matrix}",
                job.id,
                job.steps.len()
            );
            for step in &job.steps {
                let support = match step.uses.as_deref() {
                    None => "",
                    Some(uses) if uses.starts_with("./") => "  [local action]",
                    Some(uses)
                        if uses
                            .split('@')
                            .next()
                            .is_some_and(|n| n.eq_ignore_ascii_case("actions/checkout")) =>
                    {
                        "  [the working tree copy]"
                    }
                    Some(_) => "  [not supported: fails the job unless --skip-unsupported]",
                };
                println!("    - {}{support}", step.default_name());
            }
        }
    }
    Ok(())
}

/// Prints the job table, step summaries and annotations.
fn print_report(report: &RunReport) {
    let width = report
        .jobs
        .iter()
        .map(|j| j.display.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    eprintln!("\n{:<width$}  {:<24} {:>8}", "job", "result", "time");
    for job in &report.jobs {
        let result = match (job.conclusion, job.exit_code) {
            (Conclusion::Success, _) => "✓ success".to_string(),
            (Conclusion::Failure, Some(code)) if code != 0 => format!("✗ failure (exit {code})"),
            (Conclusion::Failure, _) => "✗ failure".to_string(),
            (Conclusion::Cancelled, _) => "⊘ cancelled".to_string(),
            (Conclusion::Skipped, _) => "– skipped".to_string(),
        };
        eprintln!(
            "{:<width$}  {:<24} {:>8}",
            job.display,
            result,
            format!("{:.1} s", job.duration.as_secs_f64())
        );
        if let Some(note) = &job.note {
            eprintln!("{:<width$}    {note}", "");
        }
    }
    for job in &report.jobs {
        if !job.result.summary.is_empty() {
            eprintln!("\n── summary: {} ──", job.display);
            eprint!("{}", job.result.summary);
        }
    }
    let annotations: Vec<_> = report
        .jobs
        .iter()
        .flat_map(|j| j.result.annotations.iter().map(move |a| (j, a)))
        .collect();
    if !annotations.is_empty() {
        eprintln!("\nannotations:");
        for (job, annotation) in annotations {
            eprintln!("  {}: {annotation}", job.display);
        }
    }
}

fn write_report_json(path: &Path, report: &RunReport) -> Result<(), String> {
    let jobs: Vec<Json> = report
        .jobs
        .iter()
        .map(|job| {
            json!({
                "job": job.job_id,
                "name": job.display,
                "conclusion": job.conclusion.as_str(),
                "exit_code": job.exit_code,
                "note": job.note,
                "duration_ms": job.duration.as_millis() as u64,
                "outputs": job.result.outputs,
                "annotations": job.result.annotations,
            })
        })
        .collect();
    let document = json!({"exit_code": report.exit_code(), "jobs": jobs});
    let text = serde_json::to_string_pretty(&document).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `--dry-run`: every job succeeds without running.
struct DryRun;

#[async_trait::async_trait]
impl JobRunner for DryRun {
    async fn run(&self, job: JobRun, _cancel: watch::Receiver<bool>) -> RunnerOutcome {
        let steps = job.guest.workflow.as_ref().map_or(0, |w| w.steps.len());
        eprintln!("{} | would run {steps} step(s) (dry run)", job.display);
        RunnerOutcome {
            exit_code: 0,
            cancelled: false,
            result: WorkflowResult::default(),
        }
    }
}

/// Each job in a fresh VM, through the in-process control plane.
struct VmRunner {
    driver: Arc<dyn VmmDriver>,
    config: VmmConfig,
    assets: VerifiedAssets,
    control_plane: LocalControlPlane,
    masks: nimbus_vmm::workflow::commands::Masker,
    origin: JobOrigin,
}

#[async_trait::async_trait]
impl JobRunner for VmRunner {
    async fn run(&self, job: JobRun, mut cancel: watch::Receiver<bool>) -> RunnerOutcome {
        let prefix = self.masks.mask(&job.display);
        let failed = |message: String, code: i32| {
            eprintln!("{prefix} | nimbus: {message}");
            RunnerOutcome {
                exit_code: code,
                cancelled: false,
                result: WorkflowResult::default(),
            }
        };
        if let Some(runs_on) = &job.runs_on {
            eprintln!("{prefix} | runs-on {runs_on}: this job runs in a fresh Nimbus VM");
        }
        let request = self.origin.request(&job);
        let lease = match self.control_plane.submit_and_lease(&job, request).await {
            Ok(lease) => lease,
            Err(message) => return failed(message, 125),
        };
        eprintln!(
            "{prefix} | queued as job {} and leased (fencing token {})",
            lease.job.id, lease.fencing_token
        );
        let spec = launch::spec(
            &self.config,
            &self.assets,
            launch::unique_id("run"),
            job.timeout,
        );
        let mut result = WorkflowResult::default();
        let mut names: BTreeMap<usize, String> = BTreeMap::new();
        let mut on_event = |event: JobEvent| match event {
            JobEvent::StepStarted { index, name } => {
                eprintln!("{prefix} | ▶ {name}");
                names.insert(index, name);
            }
            JobEvent::Output(line) => {
                let text = format!("{prefix} |   {}\n", line.line);
                let _ = match line.stream {
                    Stream::Stdout => std::io::stdout().write_all(text.as_bytes()),
                    Stream::Stderr => std::io::stderr().write_all(text.as_bytes()),
                };
            }
            JobEvent::StepFinished {
                index,
                outcome,
                duration_millis,
            } => {
                let name = names.get(&index).cloned().unwrap_or_default();
                eprintln!(
                    "{prefix} | {} {name} ({duration_millis} ms)",
                    outcome.mark()
                );
            }
            JobEvent::WorkflowResult(reported) => result = reported,
        };
        let mut vm = match self.driver.prepare(&spec).await {
            Ok(vm) => vm,
            Err(error) => return failed(format!("preparing the VM: {error}"), 125),
        };
        let mut cancelled = false;
        let ran = tokio::select! {
            ran = async {
                vm.boot().await?;
                vm.run(&job.guest, &mut on_event).await
            } => Some(ran),
            _ = cancel.wait_for(|c| *c) => {
                cancelled = true;
                None
            }
        };
        let _ = vm.destroy().await;
        let code = match ran {
            None => 130,
            Some(Ok(report)) => match report.outcome {
                Outcome::Exited { code } => code,
                Outcome::TimedOut => {
                    eprintln!("{prefix} | nimbus: timed out after {:?}", job.timeout);
                    124
                }
                Outcome::Crashed { reason } => {
                    eprintln!("{prefix} | nimbus: the guest crashed: {reason}");
                    125
                }
            },
            Some(Err(error)) => {
                eprintln!("{prefix} | nimbus: the VM could not run the job: {error}");
                125
            }
        };
        if let Err(message) = self.control_plane.complete(&lease, code, &result).await {
            eprintln!("{prefix} | nimbus: completing the job: {message}");
        }
        RunnerOutcome {
            exit_code: code,
            cancelled,
            result,
        }
    }
}

/// The in-process control plane the local jobs go through: its API, called
/// directly (no server, no tokens), as org 1 submitting and an agent leasing.
struct LocalControlPlane {
    state: nimbus_core::control_plane::AppState,
    org: Principal,
    agent: Principal,
    /// Submit and lease as one step, so each job leases the record it submitted.
    queue: tokio::sync::Mutex<()>,
}

impl LocalControlPlane {
    async fn start() -> Result<Self, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        // A secret of its own: the API is called in-process, but leases still mint
        // cache and log tokens with it.
        let secret = format!("nimbus-run-{}", uuid::Uuid::new_v4().simple());
        let data_dir = std::env::temp_dir().join(format!("nimbus-run-{}", std::process::id()));
        let config = ControlPlaneConfig::from_env(&Env::from_map([
            ("NIMBUS_JWT_SECRET", secret),
            ("NIMBUS_DATA_DIR", data_dir.display().to_string()),
        ]))
        .map_err(|e| text(&e))?;
        let store = nimbus_core::store::open("sqlite::memory:", 1)
            .await
            .map_err(|e| text(&e))?;
        let state = ControlPlane::new(config, store).map_err(|e| text(&e))?;
        let admin = Principal::Admin {
            sub: "nimbus-run".into(),
        };
        state
            .upsert_org(&admin, 1, "local")
            .await
            .map_err(|e| text(&e))?;
        Ok(LocalControlPlane {
            state,
            org: Principal::Org {
                org_id: 1,
                sub: "nimbus-run".into(),
            },
            agent: Principal::Agent {
                agent_id: "nimbus-run".into(),
            },
            queue: tokio::sync::Mutex::new(()),
        })
    }

    /// Queues the job and leases it.
    async fn submit_and_lease(
        &self,
        job: &JobRun,
        request: JobRequest,
    ) -> Result<nimbus_core::Lease, String> {
        let _queue = self.queue.lock().await;
        let submitted = self
            .state
            .submit(&self.org, request)
            .await
            .map_err(|e| format!("submitting {}: {e}", job.display))?;
        let lease = self
            .state
            .lease(&self.agent, &LeaseOptions::default())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("job {} was not leasable", submitted.id))?;
        Ok(lease)
    }

    async fn complete(
        &self,
        lease: &nimbus_core::Lease,
        code: i32,
        result: &WorkflowResult,
    ) -> Result<(), String> {
        let completion = Completion {
            fencing_token: lease.fencing_token,
            status: if code == 0 {
                CompletionStatus::Succeeded
            } else {
                CompletionStatus::Failed
            },
            exit_code: Some(code),
            reason: None,
            result: nimbus_vmm::agent::workflow::completion_result(result.clone()),
        };
        self.state
            .complete(&self.agent, lease.job.id, &completion)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl Drop for LocalControlPlane {
    fn drop(&mut self) {
        self.state.begin_shutdown();
    }
}
