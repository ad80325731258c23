//! A GitHub workflow job in the guest, as GitHub's runner runs one: each step's
//! expressions evaluated just before it runs (with `steps`, `env`, `job`,
//! `runner` and the host's contexts), `run:` scripts through GitHub's shells,
//! environment files read after each step, workflow commands read off the
//! output, secrets and `::add-mask::` values masked in every line, local
//! composite actions (`uses: ./path`) expanded, local JavaScript actions run on
//! the guest's Node.js (their `post:` scripts after the job's steps, with the
//! state their main step saved), and the job's outputs and step summary
//! reported at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::run::{
    default_env, default_workspace, script_dir, shell_command, spawn_step, JobSink, LineFilter,
    CANCELLED_EXIT_CODE, TIMED_OUT_EXIT_CODE,
};
use super::GuestError;
use crate::protocol::{GuestJob, GuestMessage, StepOutcome, Stream};
use crate::workflow::action::{NodeAction, Runs};
use crate::workflow::commands::{self, Command, Masker, MAX_ENV_FILE_BYTES};
use crate::workflow::expr::{to_text, truthy, Condition, Contexts, Status, Template};
use crate::workflow::{Annotation, WorkflowJob, WorkflowResult, WorkflowStep};

/// Most bytes of step summary a job reports (GitHub: 1 MiB per step); the whole
/// result must fit one protocol frame.
const MAX_SUMMARY_BYTES: usize = 256 * 1024;
/// Most bytes of job outputs a job reports (GitHub: 1 MiB per job).
const MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// Longest annotation message kept.
const MAX_ANNOTATION_BYTES: usize = 4096;

/// The result cut to the bounds above, saying so where it was cut.
fn bounded(mut result: WorkflowResult) -> WorkflowResult {
    fn cut(text: &mut String, limit: usize) -> bool {
        if text.len() <= limit {
            return false;
        }
        let mut at = limit;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        true
    }
    if cut(&mut result.summary, MAX_SUMMARY_BYTES) {
        result
            .summary
            .push_str("\n… (the step summaries were cut at 256 KiB)\n");
    }
    let mut total = 0;
    result.outputs.retain(|name, value| {
        total += name.len() + value.len();
        total <= MAX_OUTPUT_BYTES
    });
    for annotation in &mut result.annotations {
        cut(&mut annotation.message, MAX_ANNOTATION_BYTES);
    }
    result
}

/// Most bytes of working tree the guest accepts (the scratch disk bounds it too).
const MAX_ARCHIVE_BYTES: u64 = 8 << 30;

/// The working tree's tar stream as it arrives from the host.
pub struct Archive {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
}

impl Archive {
    /// A new, empty archive file in the guest's temporary directory.
    pub fn create() -> Result<Self, GuestError> {
        let path = std::env::temp_dir().join(format!(
            "nimbus-workspace-{}-{}.tar",
            std::process::id(),
            uuid_like()
        ));
        let file = std::fs::File::create(&path)
            .map_err(GuestError::io(format!("creating {}", path.display())))?;
        Ok(Archive {
            path,
            file,
            bytes: 0,
        })
    }

    /// Appends one base64 chunk.
    pub fn append(&mut self, data: &str) -> Result<(), GuestError> {
        use base64::Engine as _;
        use std::io::Write as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| GuestError::Transport(format!("a workspace chunk is not base64: {e}")))?;
        self.bytes += bytes.len() as u64;
        if self.bytes > MAX_ARCHIVE_BYTES {
            return Err(GuestError::Transport(format!(
                "the workspace is larger than {MAX_ARCHIVE_BYTES} bytes"
            )));
        }
        self.file
            .write_all(&bytes)
            .map_err(GuestError::io("writing the workspace archive"))
    }

    /// The complete archive's path.
    pub fn finish(self) -> Result<PathBuf, GuestError> {
        self.file
            .sync_all()
            .map_err(GuestError::io("writing the workspace archive"))?;
        Ok(self.path)
    }
}

/// Unpacks the working tree into the workspace (tar refuses entries that
/// would land outside it).
fn unpack(archive: &Path, workspace: &Path) -> Result<(), GuestError> {
    let file = std::fs::File::open(archive)
        .map_err(GuestError::io(format!("opening {}", archive.display())))?;
    let mut tar = tar::Archive::new(file);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    tar.unpack(workspace).map_err(GuestError::io(format!(
        "unpacking the working tree into {}",
        workspace.display()
    )))?;
    let _ = std::fs::remove_file(archive);
    Ok(())
}

/// `hashFiles(patterns…)`: the sha256 of the sha256s of every matching file under
/// `workspace`, in path order; empty when none match. `!pattern` excludes.
fn hash_files(workspace: &Path, patterns: &[String]) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let mut include = globset::GlobSetBuilder::new();
    let mut exclude = globset::GlobSetBuilder::new();
    for pattern in patterns {
        let (set, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (&mut exclude, rest),
            None => (&mut include, pattern.as_str()),
        };
        let pattern = pattern.trim_start_matches("./");
        let pattern = pattern
            .strip_prefix(&format!("{}/", workspace.display()))
            .unwrap_or(pattern);
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("bad pattern {pattern:?}: {e}"))?;
        set.add(glob);
    }
    let include = include.build().map_err(|e| e.to_string())?;
    let exclude = exclude.build().map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    let mut stack = vec![workspace.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                if let Ok(relative) = path.strip_prefix(workspace) {
                    if include.is_match(relative) && !exclude.is_match(relative) {
                        files.push(path.clone());
                    }
                }
            }
        }
    }
    if files.is_empty() {
        return Ok(String::new());
    }
    files.sort();
    let mut outer = Sha256::new();
    for file in files {
        let mut inner = Sha256::new();
        let mut reader =
            std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        std::io::copy(&mut reader, &mut inner).map_err(|e| format!("{}: {e}", file.display()))?;
        outer.update(inner.finalize());
    }
    Ok(hex::encode(outer.finalize()))
}

/// How deep composite actions may call composite actions (GitHub's limit).
const MAX_ACTION_DEPTH: usize = 10;

/// Runs a workflow job; returns its exit code (the first failed step's).
pub fn run_workflow_job(
    job: &GuestJob,
    workflow: &WorkflowJob,
    sink: &JobSink,
) -> Result<i32, GuestError> {
    let workspace = workflow
        .workspace
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| default_workspace(job));
    std::fs::create_dir_all(&workspace)
        .map_err(GuestError::io(format!("creating {}", workspace.display())))?;
    if let Some(archive) = &workflow.archive {
        unpack(archive, &workspace)?;
    }
    let scripts = script_dir()?;
    let temp = scripts.join("runner-temp");
    let files = temp.join("_runner_file_commands");
    for dir in [&temp, &files, &temp.join("_github_workflow")] {
        std::fs::create_dir_all(dir)
            .map_err(GuestError::io(format!("creating {}", dir.display())))?;
    }
    let commands = Arc::new(Mutex::new(CommandReader::default()));
    let mut masks = Masker::default();
    if let Some(Value::Object(secrets)) = workflow.contexts.get("secrets") {
        for value in secrets.values() {
            masks.add(&to_text(value));
        }
    }
    if let Ok(mut reader) = commands.lock() {
        reader.masks = masks;
    }
    let sink = sink.filtered(commands.clone());

    let mut github = workflow
        .contexts
        .get("github")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Value::Object(map) = &mut github {
        map.insert("workspace".into(), json!(workspace.display().to_string()));
        map.insert("job".into(), json!(workflow.id));
        map.entry("event").or_insert_with(|| json!({}));
    }
    let event_path = temp.join("_github_workflow").join("event.json");
    let event = github.get("event").cloned().unwrap_or_else(|| json!({}));
    std::fs::write(
        &event_path,
        serde_json::to_vec_pretty(&event).unwrap_or_default(),
    )
    .map_err(GuestError::io("writing the event payload"))?;
    if let Value::Object(map) = &mut github {
        map.insert("event_path".into(), json!(event_path.display().to_string()));
    }

    let mut job_state = JobState {
        workflow,
        sink: &sink,
        commands,
        workspace: workspace.clone(),
        scripts: scripts.clone(),
        temp: temp.clone(),
        files,
        github,
        env: job.env.clone(),
        path: Vec::new(),
        summary: String::new(),
        failed_exit: 0,
        next_index: 0,
        post_steps: Vec::new(),
    };
    let scope = Scope::job();
    let mut steps_context = Map::new();
    job_state.run_steps(&workflow.steps, &scope, &mut steps_context, 0);
    job_state.run_post_steps();

    // The job's outputs, from its steps' (values holding a secret are dropped, as on GitHub).
    let mut outputs = BTreeMap::new();
    let status = job_state.status();
    let contexts = job_state.contexts(&scope, &steps_context, &job_state.env.clone(), status);
    for (name, template) in &workflow.outputs {
        match Template::parse(template).and_then(|t| t.render(&contexts)) {
            Ok(value) => {
                let masked = job_state.mask(&value);
                if masked != value {
                    job_state.note(
                        job_state.next_index.saturating_sub(1),
                        &format!("##[warning]Skip output '{name}' since it may contain secret."),
                    );
                } else {
                    outputs.insert(name.clone(), value);
                }
            }
            Err(error) => job_state.note(
                job_state.next_index.saturating_sub(1),
                &format!("##[error]outputs.{name}: {error}"),
            ),
        }
    }
    let annotations = job_state
        .commands
        .lock()
        .map(|c| c.annotations.clone())
        .unwrap_or_default();
    let summary = job_state.mask(&job_state.summary);
    let result = bounded(WorkflowResult {
        outputs,
        summary,
        annotations,
    });
    sink.send(GuestMessage::WorkflowResult(result));
    let _ = std::fs::remove_dir_all(&scripts);
    let mut exit = job_state.failed_exit;
    if sink.is_cancelled() && exit == 0 {
        exit = CANCELLED_EXIT_CODE;
    }
    Ok(exit)
}

/// Where a list of steps runs: the job itself, or inside a composite action.
struct Scope {
    /// `inputs` of a composite action (the job's `inputs` context otherwise).
    inputs: Option<Value>,
    /// The action's directory (`github.action_path`).
    action_path: Option<PathBuf>,
    /// Env the action step set (`env:` of the `uses:` step), on top of the job's.
    env: BTreeMap<String, String>,
    depth: usize,
}

impl Scope {
    fn job() -> Self {
        Scope {
            inputs: None,
            action_path: None,
            env: BTreeMap::new(),
            depth: 0,
        }
    }
}

struct JobState<'a> {
    workflow: &'a WorkflowJob,
    sink: &'a JobSink,
    commands: Arc<Mutex<CommandReader>>,
    workspace: PathBuf,
    scripts: PathBuf,
    temp: PathBuf,
    files: PathBuf,
    github: Value,
    /// The job's env: workflow and job `env:`, then what `GITHUB_ENV` set.
    env: BTreeMap<String, String>,
    /// Directories `GITHUB_PATH` added, most recent first.
    path: Vec<String>,
    summary: String,
    /// The exit code of the first step that failed the job (0: none).
    failed_exit: i32,
    /// The index the next top-level step reports under.
    next_index: usize,
    /// `post:` scripts of the JavaScript actions that ran, in the order they ran.
    post_steps: Vec<PostStep>,
}

/// A JavaScript action's `post:` script, run after the job's steps.
struct PostStep {
    /// `Post <the step's name>`.
    name: String,
    /// `node` and the script.
    argv: Vec<String>,
    /// `post-if` (default `always()`).
    condition: String,
    /// Its `INPUT_*`, the step's env and the `STATE_*` its main script saved.
    env: BTreeMap<String, String>,
    /// `GITHUB_ACTION`.
    action: String,
    /// The action's directory (`GITHUB_ACTION_PATH`).
    action_path: PathBuf,
}

/// What a finished step leaves in the `steps` context.
struct StepRecord {
    outcome: &'static str,
    conclusion: &'static str,
    outputs: BTreeMap<String, String>,
}

impl JobState<'_> {
    fn status(&self) -> Status {
        Status {
            failed: self.failed_exit != 0,
            cancelled: self.sink.is_cancelled(),
        }
    }

    fn mask(&self, text: &str) -> String {
        self.commands
            .lock()
            .map(|c| c.masks.mask(text))
            .unwrap_or_default()
    }

    /// A line from the runner itself (masked, never read for commands).
    fn note(&self, index: usize, line: &str) {
        let masked = self.mask(line);
        self.sink
            .send_line_unfiltered(index, Stream::Stderr, &masked);
    }

    fn contexts(
        &self,
        scope: &Scope,
        steps: &Map<String, Value>,
        env: &BTreeMap<String, String>,
        status: Status,
    ) -> Contexts {
        let mut contexts = Contexts::new();
        for (name, value) in &self.workflow.contexts {
            contexts.set(name, value.clone());
        }
        let mut github = self.github.clone();
        if let (Value::Object(map), Some(path)) = (&mut github, &scope.action_path) {
            map.insert("action_path".into(), json!(path.display().to_string()));
        }
        contexts.set("github", github);
        if let Some(inputs) = &scope.inputs {
            contexts.set("inputs", inputs.clone());
        } else if contexts.get("inputs").is_none() {
            contexts.set("inputs", json!({}));
        }
        contexts.set("env", json!(env));
        contexts.set("steps", Value::Object(steps.clone()));
        let job_status = if status.cancelled {
            "cancelled"
        } else if status.failed {
            "failure"
        } else {
            "success"
        };
        contexts.set("job", json!({ "status": job_status }));
        contexts.set(
            "runner",
            json!({
                "os": "Linux",
                "arch": "X64",
                "name": "nimbus",
                "environment": "self-hosted",
                "temp": self.temp.display().to_string(),
                "tool_cache": self.temp.join("toolcache").display().to_string(),
                "debug": "",
            }),
        );
        for name in ["vars", "secrets", "matrix", "strategy", "needs"] {
            if contexts.get(name).is_none() {
                contexts.set(name, json!({}));
            }
        }
        contexts.status = status;
        let workspace = self.workspace.clone();
        contexts.hash_files = Some(Arc::new(move |patterns: &[String]| {
            hash_files(&workspace, patterns)
        }));
        contexts
    }

    /// Runs `steps` in order (the job's, or a composite action's); records each
    /// step with an id in `steps_context`.
    fn run_steps(
        &mut self,
        steps: &[WorkflowStep],
        scope: &Scope,
        steps_context: &mut Map<String, Value>,
        parent_index: usize,
    ) {
        for (position, step) in steps.iter().enumerate() {
            let index = if scope.depth == 0 {
                let index = self.next_index;
                self.next_index += 1;
                index
            } else {
                parent_index
            };
            let record = self.run_step(step, position, index, scope, steps_context);
            if let Some(id) = &step.id {
                steps_context.insert(
                    id.clone(),
                    json!({
                        "outcome": record.outcome,
                        "conclusion": record.conclusion,
                        "outputs": record.outputs,
                    }),
                );
            }
        }
    }

    fn run_step(
        &mut self,
        step: &WorkflowStep,
        position: usize,
        index: usize,
        scope: &Scope,
        steps_context: &mut Map<String, Value>,
    ) -> StepRecord {
        let started = Instant::now();
        let mut env = self.env.clone();
        env.extend(scope.env.clone());
        let status = self.status();
        let contexts = self.contexts(scope, steps_context, &env, status);
        let name = step
            .name
            .as_ref()
            .map(|n| Template::parse(n).and_then(|t| t.render(&contexts)))
            .transpose()
            .unwrap_or(None)
            .unwrap_or_else(|| {
                // GitHub titles a nameless run step with its script's first line, evaluated.
                let rendered = step
                    .run
                    .as_ref()
                    .and_then(|run| Template::parse(run).and_then(|t| t.render(&contexts)).ok());
                match rendered {
                    Some(script) => format!("Run {}", script.lines().next().unwrap_or("").trim()),
                    None => step.default_name(),
                }
            });
        let name = self.mask(&name);
        if scope.depth == 0 {
            self.sink.send(GuestMessage::StepStarted {
                index,
                name: name.clone(),
            });
        }
        let finish = |state: &mut Self, outcome: StepOutcome, record: StepRecord| {
            if scope.depth == 0 {
                state.sink.send(GuestMessage::StepFinished {
                    index,
                    outcome,
                    duration_millis: started.elapsed().as_millis() as u64,
                });
            }
            record
        };
        let skipped = || StepRecord {
            outcome: "skipped",
            conclusion: "skipped",
            outputs: BTreeMap::new(),
        };

        let condition = step.condition.as_deref().unwrap_or("success()");
        let runs = match Condition::parse(condition).and_then(|c| c.holds(&contexts)) {
            Ok(runs) => runs,
            Err(error) => {
                self.note(index, &format!("##[error]if: {error}"));
                self.fail(1);
                return finish(self, StepOutcome::Exited(1), self.failed_record());
            }
        };
        if !runs {
            return finish(self, StepOutcome::Skipped, skipped());
        }

        // The step's own env is evaluated with the job's env; the rest with both.
        let step_env = match render_map(&step.env, &contexts) {
            Ok(step_env) => step_env,
            Err((key, error)) => {
                self.note(index, &format!("##[error]env.{key}: {error}"));
                self.fail(1);
                return finish(self, StepOutcome::Exited(1), self.failed_record());
            }
        };
        let mut full_env = env.clone();
        full_env.extend(step_env.clone());
        let contexts = self.contexts(scope, steps_context, &full_env, status);
        let evaluated = |field: &Option<String>| -> Result<Option<Value>, String> {
            field
                .as_ref()
                .map(|text| {
                    Template::parse(text)
                        .and_then(|t| t.value(&contexts))
                        .map_err(|e| e.to_string())
                })
                .transpose()
        };
        let continue_on_error = match evaluated(&step.continue_on_error) {
            Ok(value) => value.is_some_and(|v| truthy(&v) && v != json!("false")),
            Err(error) => {
                self.note(index, &format!("##[error]continue-on-error: {error}"));
                false
            }
        };
        let timeout = match evaluated(&step.timeout_minutes) {
            Ok(Some(value)) => {
                let minutes = crate::workflow::expr::to_number(&value);
                (minutes.is_finite() && minutes > 0.0)
                    .then(|| Duration::from_secs_f64((minutes * 60.0).min(1e9)))
            }
            _ => None,
        };

        let (outcome, outputs) = if let Some(uses) = &step.uses {
            self.run_action(step, uses, index, scope, &contexts, &full_env)
        } else if let Some(run) = &step.run {
            match Template::parse(run).and_then(|t| t.render(&contexts)) {
                Ok(script) => {
                    let shell = step
                        .shell
                        .clone()
                        .or_else(|| self.workflow.defaults.shell.clone());
                    let dir = step
                        .working_directory
                        .clone()
                        .or_else(|| self.workflow.defaults.working_directory.clone());
                    let dir = match dir
                        .map(|d| Template::parse(&d).and_then(|t| t.render(&contexts)))
                        .transpose()
                    {
                        Ok(dir) => dir,
                        Err(error) => {
                            self.note(index, &format!("##[error]working-directory: {error}"));
                            None
                        }
                    };
                    let action = step
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("__run_{position}"));
                    self.run_script(
                        index,
                        &script,
                        shell.as_deref(),
                        dir.as_deref(),
                        &full_env,
                        &action,
                        scope,
                        timeout,
                    )
                }
                Err(error) => {
                    self.note(index, &format!("##[error]run: {error}"));
                    (StepOutcome::Exited(1), BTreeMap::new())
                }
            }
        } else {
            self.note(index, "##[error]the step has neither run: nor uses:");
            (StepOutcome::Exited(1), BTreeMap::new())
        };

        let failed = match outcome {
            StepOutcome::Exited(0) | StepOutcome::Skipped => None,
            StepOutcome::Exited(code) => Some(code),
            StepOutcome::TimedOut => Some(TIMED_OUT_EXIT_CODE),
        };
        let record = match (outcome, failed) {
            (StepOutcome::Skipped, _) => skipped(),
            (_, None) => StepRecord {
                outcome: "success",
                conclusion: "success",
                outputs,
            },
            (_, Some(code)) => {
                if !continue_on_error {
                    self.fail(code);
                }
                StepRecord {
                    outcome: if self.sink.is_cancelled() {
                        "cancelled"
                    } else {
                        "failure"
                    },
                    conclusion: if continue_on_error {
                        "success"
                    } else {
                        "failure"
                    },
                    outputs,
                }
            }
        };
        finish(self, outcome, record)
    }

    fn failed_record(&self) -> StepRecord {
        StepRecord {
            outcome: "failure",
            conclusion: "failure",
            outputs: BTreeMap::new(),
        }
    }

    fn fail(&mut self, code: i32) {
        if self.failed_exit == 0 {
            self.failed_exit = code;
        }
    }

    /// Runs one script step; returns its outcome and outputs.
    #[allow(clippy::too_many_arguments)]
    fn run_script(
        &mut self,
        index: usize,
        script: &str,
        shell: Option<&str>,
        working_directory: Option<&str>,
        env: &BTreeMap<String, String>,
        action: &str,
        scope: &Scope,
        timeout: Option<Duration>,
    ) -> (StepOutcome, BTreeMap<String, String>) {
        let extension = match shell.map(str::trim) {
            Some("python") => "py",
            _ => "sh",
        };
        let script_path = self
            .scripts
            .join(format!("step-{}.{extension}", uuid_like()));
        if let Err(e) = std::fs::write(&script_path, script) {
            self.note(index, &format!("##[error]writing the step script: {e}"));
            return (StepOutcome::Exited(127), BTreeMap::new());
        }
        let argv = workflow_shell(shell, &script_path);
        let cwd = match working_directory {
            Some(dir) => self.workspace.join(dir),
            None => self.workspace.clone(),
        };
        let (outcome, outputs, _state) =
            self.run_process(index, &argv, &cwd, env, action, scope, timeout);
        let _ = std::fs::remove_file(&script_path);
        (outcome, outputs)
    }

    /// Runs one step's process with GitHub's environment files around it; returns
    /// its outcome, its outputs and what it saved to `GITHUB_STATE`.
    #[allow(clippy::too_many_arguments)]
    fn run_process(
        &mut self,
        index: usize,
        argv: &[String],
        cwd: &Path,
        env: &BTreeMap<String, String>,
        action: &str,
        scope: &Scope,
        timeout: Option<Duration>,
    ) -> (
        StepOutcome,
        BTreeMap<String, String>,
        BTreeMap<String, String>,
    ) {
        let file = |kind: &str| self.files.join(format!("{kind}_{}", uuid_like()));
        let (env_file, output_file, path_file, summary_file, state_file) = (
            file("set_env"),
            file("set_output"),
            file("add_path"),
            file("step_summary"),
            file("save_state"),
        );
        for path in [
            &env_file,
            &output_file,
            &path_file,
            &summary_file,
            &state_file,
        ] {
            let _ = std::fs::write(path, b"");
        }
        let mut full_env: BTreeMap<String, String> = default_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        full_env.extend(self.default_variables(action, scope));
        full_env.extend(env.clone());
        for (key, path) in [
            ("GITHUB_ENV", &env_file),
            ("GITHUB_OUTPUT", &output_file),
            ("GITHUB_PATH", &path_file),
            ("GITHUB_STEP_SUMMARY", &summary_file),
            ("GITHUB_STATE", &state_file),
        ] {
            full_env.insert(key.into(), path.display().to_string());
        }
        if !self.path.is_empty() {
            let base = full_env.get("PATH").cloned().unwrap_or_default();
            full_env.insert(
                "PATH".to_string(),
                format!("{}:{base}", self.path.join(":")),
            );
        }
        if let Ok(mut reader) = self.commands.lock() {
            reader.begin_step();
        }
        let outcome = if cwd.is_dir() {
            spawn_step(index, argv, cwd, full_env, timeout, self.sink)
        } else {
            self.note(
                index,
                &format!(
                    "##[error]the working directory {} does not exist",
                    cwd.display()
                ),
            );
            StepOutcome::Exited(1)
        };
        let mut outputs = self
            .commands
            .lock()
            .map(|mut r| std::mem::take(&mut r.step_outputs))
            .unwrap_or_default();
        let read = |path: &Path| -> Result<String, String> {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if size > MAX_ENV_FILE_BYTES {
                return Err(format!(
                    "{} is larger than {MAX_ENV_FILE_BYTES} bytes",
                    path.display()
                ));
            }
            Ok(std::fs::read_to_string(path).unwrap_or_default())
        };
        let mut file_failed = false;
        match read(&env_file).and_then(|t| commands::parse_env_file(&t)) {
            Ok(pairs) => self.env.extend(pairs),
            Err(error) => {
                self.note(index, &format!("##[error]GITHUB_ENV: {error}"));
                file_failed = true;
            }
        }
        match read(&output_file).and_then(|t| commands::parse_env_file(&t)) {
            Ok(pairs) => outputs.extend(pairs),
            Err(error) => {
                self.note(index, &format!("##[error]GITHUB_OUTPUT: {error}"));
                file_failed = true;
            }
        }
        if let Ok(text) = read(&path_file) {
            for dir in commands::parse_path_file(&text) {
                self.path.insert(0, dir);
            }
        }
        if let Ok(text) = read(&summary_file) {
            if !text.is_empty() {
                self.summary.push_str(&text);
                if !text.ends_with('\n') {
                    self.summary.push('\n');
                }
            }
        }
        let state = match read(&state_file).and_then(|t| commands::parse_env_file(&t)) {
            Ok(pairs) => pairs.into_iter().collect(),
            Err(error) => {
                self.note(index, &format!("##[error]GITHUB_STATE: {error}"));
                file_failed = true;
                BTreeMap::new()
            }
        };
        for path in [
            &env_file,
            &output_file,
            &path_file,
            &summary_file,
            &state_file,
        ] {
            let _ = std::fs::remove_file(path);
        }
        let outcome = match outcome {
            StepOutcome::Exited(0) if file_failed => StepOutcome::Exited(1),
            other => other,
        };
        (outcome, outputs, state)
    }

    /// GitHub's default variables for a step.
    fn default_variables(&self, action: &str, scope: &Scope) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        let github = self.github.as_object().cloned().unwrap_or_default();
        for (key, value) in &github {
            if matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                vars.insert(
                    format!("GITHUB_{}", key.to_ascii_uppercase()),
                    to_text(value),
                );
            }
        }
        // Context keys that are not variables (or are named differently).
        for key in [
            "GITHUB_TOKEN",
            "GITHUB_ACTION_PATH",
            "GITHUB_ACTION_REPOSITORY",
        ] {
            vars.remove(key);
        }
        vars.insert("GITHUB_ACTIONS".into(), "true".into());
        vars.insert("GITHUB_ACTION".into(), action.to_string());
        if let Some(path) = &scope.action_path {
            vars.insert("GITHUB_ACTION_PATH".into(), path.display().to_string());
        }
        vars.insert("CI".into(), "true".into());
        vars.insert("RUNNER_OS".into(), "Linux".into());
        vars.insert("RUNNER_ARCH".into(), "X64".into());
        vars.insert("RUNNER_NAME".into(), "nimbus".into());
        vars.insert("RUNNER_ENVIRONMENT".into(), "self-hosted".into());
        vars.insert("RUNNER_TEMP".into(), self.temp.display().to_string());
        vars.insert(
            "RUNNER_TOOL_CACHE".into(),
            self.temp.join("toolcache").display().to_string(),
        );
        vars
    }

    /// A `uses:` step: a local composite action, `actions/checkout` (the workspace
    /// copy already is the checkout), or an unsupported action.
    fn run_action(
        &mut self,
        step: &WorkflowStep,
        uses: &str,
        index: usize,
        scope: &Scope,
        contexts: &Contexts,
        env: &BTreeMap<String, String>,
    ) -> (StepOutcome, BTreeMap<String, String>) {
        let with: Map<String, Value> = match render_map(&step.with, contexts) {
            Ok(with) => with
                .into_iter()
                .map(|(key, value)| (key.to_ascii_lowercase(), json!(value)))
                .collect(),
            Err((key, error)) => {
                self.note(index, &format!("##[error]with.{key}: {error}"));
                return (StepOutcome::Exited(1), BTreeMap::new());
            }
        };
        let name = uses.split('@').next().unwrap_or(uses);
        if name.eq_ignore_ascii_case("actions/checkout") {
            self.note(
                index,
                &format!(
                    "{uses}: the workspace already holds the repository's working tree ({})",
                    self.workspace.display()
                ),
            );
            return (StepOutcome::Exited(0), BTreeMap::new());
        }
        if let Some(relative) = uses.strip_prefix("./") {
            let display = step.name.clone().unwrap_or_else(|| format!("Run {uses}"));
            return self.run_local_action(relative, with, index, scope, env, &display);
        }
        let message = format!(
            "uses: {uses} is not supported by nimbus run (local composite and JavaScript actions and actions/checkout are)"
        );
        if self.workflow.skip_unsupported {
            self.note(
                index,
                &format!("##[warning]{message}; skipped (--skip-unsupported)"),
            );
            (StepOutcome::Skipped, BTreeMap::new())
        } else {
            self.note(
                index,
                &format!("##[error]{message}; pass --skip-unsupported to skip it"),
            );
            (StepOutcome::Exited(1), BTreeMap::new())
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_local_action(
        &mut self,
        relative: &str,
        with: Map<String, Value>,
        index: usize,
        scope: &Scope,
        env: &BTreeMap<String, String>,
        display: &str,
    ) -> (StepOutcome, BTreeMap<String, String>) {
        let fail = |state: &Self, message: String| {
            state.note(index, &format!("##[error]{message}"));
            (StepOutcome::Exited(1), BTreeMap::new())
        };
        if scope.depth >= MAX_ACTION_DEPTH {
            return fail(
                self,
                format!("composite actions nest deeper than {MAX_ACTION_DEPTH}"),
            );
        }
        if relative.split('/').any(|part| part == "..") {
            return fail(self, format!("uses: ./{relative} leaves the workspace"));
        }
        let dir = self.workspace.join(relative);
        let file = ["action.yml", "action.yaml"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file());
        let Some(file) = file else {
            return fail(
                self,
                format!("uses: ./{relative}: no action.yml in {}", dir.display()),
            );
        };
        let action = match std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| crate::workflow::action::parse(&text))
        {
            Ok(action) => action,
            Err(error) => return fail(self, format!("{}: {error}", file.display())),
        };
        let mut inputs = Map::new();
        for (name, default) in &action.inputs {
            let value = match with.get(&name.to_ascii_lowercase()) {
                Some(v) => v.clone(),
                None => {
                    let contexts = self.contexts(scope, &Map::new(), env, self.status());
                    match default
                        .as_ref()
                        .map(|d| Template::parse(d).and_then(|t| t.render(&contexts)))
                        .transpose()
                    {
                        Ok(value) => json!(value.unwrap_or_default()),
                        Err(error) => return fail(self, format!("inputs.{name}: {error}")),
                    }
                }
            };
            inputs.insert(name.clone(), value);
        }
        for (key, value) in &with {
            inputs.entry(key.clone()).or_insert_with(|| value.clone());
        }
        let steps = match &action.runs {
            Runs::Composite(steps) => steps,
            Runs::Node(node) => {
                return self.run_node_action(relative, dir, node, &inputs, index, scope, env, display)
            }
            Runs::Other(using) => {
                return fail(
                    self,
                    format!(
                        "uses: ./{relative}: {using} actions do not run locally (composite and JavaScript actions do)"
                    ),
                )
            }
        };
        let inner_scope = Scope {
            inputs: Some(Value::Object(inputs)),
            action_path: Some(dir),
            env: env
                .iter()
                .filter(|(k, _)| !self.env.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            depth: scope.depth + 1,
        };
        let failed_before = self.failed_exit;
        self.failed_exit = 0;
        let mut inner_steps = Map::new();
        self.run_steps(steps, &inner_scope, &mut inner_steps, index);
        let inner_failed = self.failed_exit;
        self.failed_exit = failed_before;
        let contexts = self.contexts(&inner_scope, &inner_steps, env, self.status());
        let outputs = match render_map(&action.outputs, &contexts) {
            Ok(outputs) => outputs,
            Err((name, error)) => return fail(self, format!("outputs.{name}: {error}")),
        };
        let outcome = if inner_failed != 0 {
            StepOutcome::Exited(inner_failed)
        } else {
            StepOutcome::Exited(0)
        };
        (outcome, outputs)
    }

    /// A local JavaScript action: its `main` on the guest's Node.js with its
    /// inputs as `INPUT_*`; its `post` registered to run after the job's steps
    /// with the `STATE_*` the main script saved.
    #[allow(clippy::too_many_arguments)]
    fn run_node_action(
        &mut self,
        relative: &str,
        dir: PathBuf,
        node: &NodeAction,
        inputs: &Map<String, Value>,
        index: usize,
        scope: &Scope,
        env: &BTreeMap<String, String>,
        display: &str,
    ) -> (StepOutcome, BTreeMap<String, String>) {
        let Some(program) = node_program() else {
            self.note(
                index,
                &format!(
                    "##[error]uses: ./{relative} is a JavaScript action ({}) and this guest has no Node.js: build the assets with `nimbus assets build --with-node`",
                    node.using
                ),
            );
            return (StepOutcome::Exited(1), BTreeMap::new());
        };
        if node.pre.is_some() {
            self.note(
                index,
                &format!("./{relative}: its pre script does not run (GitHub runs none for local actions)"),
            );
        }
        let mut action_env = env.clone();
        for (name, value) in inputs {
            action_env.insert(
                format!("INPUT_{}", name.replace(' ', "_").to_ascii_uppercase()),
                to_text(value),
            );
        }
        let action_scope = Scope {
            inputs: None,
            action_path: Some(dir.clone()),
            env: BTreeMap::new(),
            depth: scope.depth,
        };
        let action = format!("__{}", relative.replace('/', "_"));
        let argv = vec![program.clone(), dir.join(&node.main).display().to_string()];
        let workspace = self.workspace.clone();
        let (outcome, outputs, state) = self.run_process(
            index,
            &argv,
            &workspace,
            &action_env,
            &action,
            &action_scope,
            None,
        );
        if let Some(post) = &node.post {
            let mut post_env = action_env;
            for (name, value) in state {
                post_env.insert(format!("STATE_{name}"), value);
            }
            self.post_steps.push(PostStep {
                name: format!("Post {display}"),
                argv: vec![program, dir.join(post).display().to_string()],
                condition: node.post_if.clone().unwrap_or_else(|| "always()".into()),
                env: post_env,
                action,
                action_path: dir,
            });
        }
        (outcome, outputs)
    }

    /// The `post:` scripts, last registered first, each a step of its own whose
    /// failure fails the job (as on GitHub).
    fn run_post_steps(&mut self) {
        while let Some(post) = self.post_steps.pop() {
            let index = self.next_index;
            self.next_index += 1;
            let started = Instant::now();
            let name = self.mask(&post.name);
            self.sink.send(GuestMessage::StepStarted { index, name });
            let scope = Scope {
                inputs: None,
                action_path: Some(post.action_path.clone()),
                env: BTreeMap::new(),
                depth: 0,
            };
            let contexts = self.contexts(&scope, &Map::new(), &post.env, self.status());
            let outcome = match Condition::parse(&post.condition).and_then(|c| c.holds(&contexts)) {
                Ok(false) => StepOutcome::Skipped,
                Ok(true) => {
                    let workspace = self.workspace.clone();
                    let (outcome, _, _) = self.run_process(
                        index,
                        &post.argv,
                        &workspace,
                        &post.env,
                        &post.action,
                        &scope,
                        None,
                    );
                    outcome
                }
                Err(error) => {
                    self.note(index, &format!("##[error]post-if: {error}"));
                    StepOutcome::Exited(1)
                }
            };
            match outcome {
                StepOutcome::Exited(0) | StepOutcome::Skipped => {}
                StepOutcome::Exited(code) => self.fail(code),
                StepOutcome::TimedOut => self.fail(TIMED_OUT_EXIT_CODE),
            }
            self.sink.send(GuestMessage::StepFinished {
                index,
                outcome,
                duration_millis: started.elapsed().as_millis() as u64,
            });
        }
    }
}

/// GitHub's shell invocations for workflow steps (docs: "Default shell" and
/// "Custom shell"): with no `shell:` it is `bash -e {0}` (or `sh -e {0}`
/// where there is no bash); `bash` adds `--noprofile --norc -eo pipefail`.
fn workflow_shell(shell: Option<&str>, script: &Path) -> Vec<String> {
    match shell.map(str::trim) {
        None | Some("") => {
            if Path::new("/bin/bash").exists() || Path::new("/usr/bin/bash").exists() {
                shell_command(Some("bash -e {0}"), script)
            } else {
                shell_command(Some("sh"), script)
            }
        }
        Some("python") if !has_program("python") => shell_command(Some("python3 {0}"), script),
        Some("python") => shell_command(Some("python {0}"), script),
        other => shell_command(other, script),
    }
}

/// The guest's Node.js (`node`, or Debian's `nodejs`), if the assets have it.
fn node_program() -> Option<String> {
    ["node", "nodejs"].iter().find_map(|name| {
        ["/usr/local/bin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.exists())
            .map(|path| path.display().to_string())
    })
}

fn has_program(name: &str) -> bool {
    ["/usr/local/bin", "/usr/bin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(name).exists())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{:x}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Reads workflow commands off a step's output and masks every line.
#[derive(Default)]
struct CommandReader {
    masks: Masker,
    /// `::stop-commands::TOKEN`: commands are off until `::TOKEN::`.
    stopped: Option<String>,
    /// `::set-output` values of the running step.
    step_outputs: BTreeMap<String, String>,
    annotations: Vec<Annotation>,
}

/// Most annotations one job keeps (GitHub: 10 errors and 10 warnings per step, 50 per job).
const MAX_ANNOTATIONS: usize = 50;

impl CommandReader {
    fn begin_step(&mut self) {
        self.step_outputs.clear();
        self.stopped = None;
    }
}

impl LineFilter for CommandReader {
    fn filter(&mut self, _step: usize, line: &str) -> Vec<String> {
        if let Some(token) = &self.stopped {
            if line.trim() == format!("::{token}::") {
                self.stopped = None;
                return Vec::new();
            }
            return vec![self.masks.mask(line)];
        }
        let Some(command) = commands::command(line) else {
            return vec![self.masks.mask(line)];
        };
        let shown = match command {
            Command::AddMask(value) => {
                self.masks.add(&value);
                return Vec::new();
            }
            Command::SetOutput(name, value) => {
                self.step_outputs.insert(name, value);
                return Vec::new();
            }
            Command::SaveState(..) | Command::Echo(_) | Command::Debug(_) => return Vec::new(),
            Command::Group(title) => format!("##[group]{title}"),
            Command::EndGroup => "##[endgroup]".to_string(),
            Command::StopCommands(token) => {
                self.stopped = Some(token);
                return Vec::new();
            }
            Command::Annotate(annotation) => {
                let shown = format!("##[{}]{}", annotation.level, annotation.message);
                if self.annotations.len() < MAX_ANNOTATIONS {
                    let mut annotation = annotation;
                    annotation.message = self.masks.mask(&annotation.message);
                    self.annotations.push(annotation);
                }
                shown
            }
            Command::Disabled(name) => format!(
                "##[error]The `{name}` command is disabled (GitHub disabled it in 2020): use environment files"
            ),
        };
        shown.split('\n').map(|l| self.masks.mask(l)).collect()
    }
}

/// Every template of `templates` rendered with `contexts`; the first that fails
/// names itself (its key) with its error.
fn render_map(
    templates: &BTreeMap<String, String>,
    contexts: &Contexts,
) -> Result<BTreeMap<String, String>, (String, crate::workflow::expr::ExprError)> {
    templates
        .iter()
        .map(|(key, template)| {
            Template::parse(template)
                .and_then(|t| t.render(contexts))
                .map(|value| (key.clone(), value))
                .map_err(|error| (key.clone(), error))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    struct Ran {
        code: i32,
        lines: Vec<String>,
        outcomes: Vec<(String, StepOutcome)>,
        result: WorkflowResult,
    }

    fn workspace() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "nimbus-workflow-test-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&dir).expect("workspace");
        dir
    }

    fn step(yaml_like: &[(&str, &str)]) -> WorkflowStep {
        let mut step = WorkflowStep::default();
        for (key, value) in yaml_like {
            let value = Some(value.to_string());
            match *key {
                "id" => step.id = value,
                "name" => step.name = value,
                "if" => step.condition = value,
                "run" => step.run = value,
                "uses" => step.uses = value,
                "shell" => step.shell = value,
                "working-directory" => step.working_directory = value,
                "continue-on-error" => step.continue_on_error = value,
                "timeout-minutes" => step.timeout_minutes = value,
                other => panic!("no field {other}"),
            }
        }
        step
    }

    fn run(workspace: &Path, mut workflow: WorkflowJob, env: &[(&str, &str)]) -> Ran {
        workflow.workspace = Some(workspace.display().to_string());
        let job = GuestJob {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workflow: Some(Box::new(workflow)),
            ..GuestJob::default()
        };
        let (sender, receiver) = mpsc::channel();
        let sink = JobSink::new(sender);
        let code = super::super::run_job(&job, &sink, None).expect("runs");
        drop(sink);
        let mut ran = Ran {
            code,
            lines: Vec::new(),
            outcomes: Vec::new(),
            result: WorkflowResult::default(),
        };
        let mut names = BTreeMap::new();
        for message in receiver.iter() {
            match message {
                GuestMessage::StepStarted { index, name } => {
                    names.insert(index, name);
                }
                GuestMessage::StepFinished { index, outcome, .. } => ran
                    .outcomes
                    .push((names.get(&index).cloned().unwrap_or_default(), outcome)),
                GuestMessage::Output(line) => ran.lines.push(line.line),
                GuestMessage::WorkflowResult(result) => ran.result = result,
                _ => {}
            }
        }
        ran
    }

    #[test]
    fn environment_files_feed_later_steps_and_the_jobs_outputs() {
        let dir = workspace();
        let workflow = WorkflowJob {
            id: "build".into(),
            steps: vec![
                step(&[
                    ("id", "set"),
                    (
                        "run",
                        "echo 'GREETING=hello' >> \"$GITHUB_ENV\"\n\
                         printf 'NOTE<<EOF\\nline one\\nline two\\nEOF\\n' >> \"$GITHUB_ENV\"\n\
                         echo 'version=1.2.3' >> \"$GITHUB_OUTPUT\"\n\
                         mkdir -p tools && printf '#!/bin/sh\\necho tool ran\\n' > tools/mytool && chmod +x tools/mytool\n\
                         echo \"$PWD/tools\" >> \"$GITHUB_PATH\"\n\
                         echo '### Summary from step one' >> \"$GITHUB_STEP_SUMMARY\"",
                    ),
                ]),
                step(&[
                    ("name", "Use ${{ steps.set.outputs.version }}"),
                    (
                        "run",
                        "echo \"$GREETING ${{ env.GREETING }} ${{ steps.set.outputs.version }}\"\n\
                         echo \"$NOTE\"\nmytool\necho \"$GITHUB_ACTIONS $GITHUB_JOB $RUNNER_OS\"",
                    ),
                ]),
            ],
            outputs: [("version".to_string(), "${{ steps.set.outputs.version }}".to_string())]
                .into(),
            ..WorkflowJob::default()
        };
        let ran = run(&dir, workflow, &[]);
        assert_eq!(ran.code, 0, "{:?}", ran.lines);
        assert_eq!(
            ran.lines,
            [
                "hello hello 1.2.3",
                "line one",
                "line two",
                "tool ran",
                "true build Linux"
            ]
        );
        assert_eq!(ran.outcomes[1].0, "Use 1.2.3");
        assert_eq!(ran.result.outputs["version"], "1.2.3");
        assert_eq!(ran.result.summary, "### Summary from step one\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn secrets_and_added_masks_never_leave_the_guest() {
        let dir = workspace();
        let mut contexts = Map::new();
        contexts.insert("secrets".into(), json!({"TOKEN": "hunter2-secret"}));
        let workflow = WorkflowJob {
            id: "mask".into(),
            contexts,
            steps: vec![step(&[
                ("id", "s"),
                (
                    "run",
                    "echo \"token is ${{ secrets.TOKEN }}\"\n\
                         echo '::add-mask::generated-value'\n\
                         echo 'now generated-value is hidden'\n\
                         echo '::group::Details'\necho inside\necho '::endgroup::'\n\
                         echo '::warning file=a.rs,line=3::careful hunter2-secret'\n\
                         echo \"leak=hunter2-secret\" >> \"$GITHUB_OUTPUT\"",
                ),
            ])],
            outputs: [(
                "leak".to_string(),
                "${{ steps.s.outputs.leak }}".to_string(),
            )]
            .into(),
            ..WorkflowJob::default()
        };
        let ran = run(&dir, workflow, &[]);
        assert_eq!(ran.code, 0);
        let text = ran.lines.join("\n");
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(!text.contains("generated-value"), "{text}");
        assert!(text.contains("token is ***"), "{text}");
        assert!(
            text.contains("##[group]Details\ninside\n##[endgroup]"),
            "{text}"
        );
        assert!(text.contains("##[warning]careful ***"), "{text}");
        assert!(
            text.contains("Skip output 'leak' since it may contain secret"),
            "{text}"
        );
        assert!(ran.result.outputs.is_empty());
        assert_eq!(ran.result.annotations[0].file.as_deref(), Some("a.rs"));
        assert_eq!(ran.result.annotations[0].message, "careful ***");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn outcomes_conclusions_and_conditions() {
        let dir = workspace();
        let workflow = WorkflowJob {
            id: "conditions".into(),
            steps: vec![
                step(&[("id", "flaky"), ("run", "exit 3"), ("continue-on-error", "true")]),
                step(&[(
                    "run",
                    "echo \"${{ steps.flaky.outcome }} ${{ steps.flaky.conclusion }} ${{ job.status }}\"",
                )]),
                step(&[("id", "broken"), ("run", "exit 4")]),
                step(&[("name", "skipped"), ("run", "echo never")]),
                step(&[("if", "failure() && steps.broken.outcome == 'failure'"), ("run", "echo cleanup")]),
                step(&[("if", "always()"), ("shell", "python"), ("run", "print('py', 1 + 1)")]),
                step(&[("if", "${{ always() }}"), ("shell", "sh"), ("run", "echo \"sh $0\" | cut -c1-4")]),
            ],
            ..WorkflowJob::default()
        };
        let ran = run(&dir, workflow, &[]);
        assert_eq!(ran.code, 4);
        assert_eq!(
            ran.lines,
            ["failure success success", "cleanup", "py 2", "sh /"]
        );
        let outcomes: Vec<StepOutcome> = ran.outcomes.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            outcomes,
            [
                StepOutcome::Exited(3),
                StepOutcome::Exited(0),
                StepOutcome::Exited(4),
                StepOutcome::Skipped,
                StepOutcome::Exited(0),
                StepOutcome::Exited(0),
                StepOutcome::Exited(0),
            ]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_reported_result_always_fits_one_frame() {
        let result = bounded(WorkflowResult {
            outputs: (0..100)
                .map(|i| (format!("out{i}"), "x".repeat(10_000)))
                .collect(),
            summary: "é".repeat(1 << 20),
            annotations: vec![
                Annotation {
                    level: "error".into(),
                    message: "m".repeat(100_000),
                    file: None,
                    line: None,
                    column: None,
                    title: None,
                };
                MAX_ANNOTATIONS
            ],
        });
        let frame = crate::protocol::encode(&GuestMessage::WorkflowResult(result.clone()));
        assert!(
            frame.len() < crate::protocol::MAX_FRAME_BYTES,
            "{}",
            frame.len()
        );
        assert!(result.summary.ends_with("cut at 256 KiB)\n"));
        assert!(result.outputs.len() < 100);
    }

    #[test]
    fn local_composite_actions_run_with_inputs_and_outputs() {
        let dir = workspace();
        let action = dir.join(".github/actions/greet");
        std::fs::create_dir_all(&action).expect("action dir");
        std::fs::write(
            action.join("action.yml"),
            r#"
name: greet
inputs:
  who:
    default: world
  punctuation:
    default: "!"
outputs:
  said:
    value: ${{ steps.say.outputs.text }}
runs:
  using: composite
  steps:
    - id: say
      shell: bash
      run: |
        echo "hello ${{ inputs.who }}${{ inputs.punctuation }} from $(basename "$GITHUB_ACTION_PATH")"
        echo "text=hello ${{ inputs.who }}" >> "$GITHUB_OUTPUT"
"#,
        )
        .expect("action.yml");
        let mut uses = step(&[("id", "greet"), ("uses", "./.github/actions/greet")]);
        uses.with.insert("who".into(), "${{ env.WHO }}".into());
        let workflow = WorkflowJob {
            id: "composite".into(),
            steps: vec![
                uses,
                step(&[("run", "echo \"got: ${{ steps.greet.outputs.said }}\"")]),
                step(&[("uses", "actions/checkout@v4")]),
                step(&[("uses", "actions/setup-node@v4")]),
            ],
            ..WorkflowJob::default()
        };
        let ran = run(&dir, workflow, &[("WHO", "nimbus")]);
        assert_eq!(ran.lines[0], "hello nimbus! from greet");
        assert_eq!(ran.lines[1], "got: hello nimbus");
        assert!(
            ran.lines[2].contains("already holds the repository"),
            "{:?}",
            ran.lines
        );
        assert!(
            ran.lines[3].contains("actions/setup-node@v4 is not supported"),
            "{:?}",
            ran.lines
        );
        assert_eq!(ran.code, 1, "an unsupported action fails the job");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A local JavaScript action: inputs as INPUT_*, outputs through
    /// GITHUB_OUTPUT, its post script after the job's steps with the state its
    /// main script saved (skipped when its post-if does not hold).
    #[test]
    fn local_javascript_actions_run_main_then_post_with_their_state() {
        if node_program().is_none() {
            eprintln!("no Node.js here: skipped");
            return;
        }
        let dir = workspace();
        let action = dir.join("actions/hello-js");
        std::fs::create_dir_all(&action).expect("action dir");
        std::fs::write(
            action.join("action.yml"),
            "inputs:\n  who name:\n    default: world\noutputs:\n  greeting:\n    description: the greeting\nruns:\n  using: node20\n  main: main.js\n  post: post.js\n",
        )
        .expect("action.yml");
        std::fs::write(
            action.join("main.js"),
            r#"const fs = require("fs");
const who = process.env["INPUT_WHO_NAME"];
console.log(`hello ${who} from node`);
fs.appendFileSync(process.env.GITHUB_OUTPUT, `greeting=hello ${who}\n`);
fs.appendFileSync(process.env.GITHUB_STATE, `started=${who}\n`);
"#,
        )
        .expect("main.js");
        std::fs::write(
            action.join("post.js"),
            "console.log(`post: ${process.env.STATE_started}`);\n",
        )
        .expect("post.js");
        let mut uses = step(&[("id", "hello"), ("uses", "./actions/hello-js")]);
        uses.with.insert("who name".into(), "nimbus".into());
        let workflow = WorkflowJob {
            id: "javascript".into(),
            steps: vec![
                uses,
                step(&[("run", "echo \"got: ${{ steps.hello.outputs.greeting }}\"")]),
            ],
            ..WorkflowJob::default()
        };
        let ran = run(&dir, workflow, &[]);
        assert_eq!(
            ran.lines,
            vec![
                "hello nimbus from node",
                "got: hello nimbus",
                "post: nimbus"
            ],
            "{:?}",
            ran.outcomes
        );
        assert_eq!(ran.code, 0);
        assert_eq!(
            ran.outcomes.len(),
            3,
            "the post script is a step of its own"
        );
        assert_eq!(ran.outcomes[2].0, "Post Run ./actions/hello-js");
        let _ = std::fs::remove_dir_all(dir);
    }
}
