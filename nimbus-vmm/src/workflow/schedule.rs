//! Running a workflow's jobs as GitHub does: a job starts once every job it
//! `needs:` has finished, its `if:` decides (dependents of a failed or skipped
//! job are skipped unless they call a status function), its matrix expands
//! against the `needs` outputs, combinations run in parallel (up to the run's
//! `--jobs` and the job's `max-parallel`), and `fail-fast` cancels the rest of
//! a matrix when one combination fails. What runs a job is a [`JobRunner`]:
//! `nimbus run` boots a VM per job; tests use a fake.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as Json};
use tokio::sync::{watch, Semaphore};

use super::expr::{to_number, to_text, truthy, Condition, Contexts, Status, Template};
use super::job::{RunDefaults, WorkflowJob, WorkflowResult};
use super::plan::{self, Combination, Job, Workflow};
use crate::protocol::GuestJob;

/// A job's default `timeout-minutes`.
pub const DEFAULT_TIMEOUT_MINUTES: u64 = 360;

/// One job (matrix combination) ready to run.
#[derive(Debug, Clone)]
pub struct JobRun {
    /// The job's id under `jobs:`.
    pub job_id: String,
    /// Its display name, e.g. `test (debian, 3.12)`.
    pub display: String,
    /// What the guest runs.
    pub guest: GuestJob,
    /// `timeout-minutes`.
    pub timeout: Duration,
    /// `runs-on`, evaluated (every job runs in a Nimbus VM whatever it says).
    pub runs_on: Option<String>,
}

/// How a job (or one combination) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Conclusion {
    /// It ran and succeeded.
    Success,
    /// It failed.
    Failure,
    /// It was cancelled (fail-fast, or the run was stopped).
    Cancelled,
    /// Its `if:` was false, or a job it needs did not succeed.
    Skipped,
}

impl Conclusion {
    /// `success`, `failure`, `cancelled`, `skipped` (`needs.<job>.result`).
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Cancelled => "cancelled",
            Conclusion::Skipped => "skipped",
        }
    }
}

/// What a [`JobRunner`] reports for one job.
#[derive(Debug, Clone)]
pub struct RunnerOutcome {
    /// The guest's exit code (0: success).
    pub exit_code: i32,
    /// Whether it was cancelled before or while it ran.
    pub cancelled: bool,
    /// Outputs, summary and annotations the guest reported.
    pub result: WorkflowResult,
}

/// Runs one job, e.g. in a fresh VM.
#[async_trait::async_trait]
pub trait JobRunner: Send + Sync {
    /// Runs `job`; stops it when `cancel` turns true.
    async fn run(&self, job: JobRun, cancel: watch::Receiver<bool>) -> RunnerOutcome;
}

/// Settings of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Jobs that run at once (at least 1).
    pub parallel: usize,
    /// The `github`, `vars`, `secrets` and `inputs` contexts.
    pub contexts: Map<String, Json>,
    /// Only these jobs (ids or names) and what they need; empty: all.
    pub only: Vec<String>,
    /// `--matrix key:value`: only combinations with these values.
    pub matrix_filter: Vec<(String, String)>,
    /// Unsupported `uses:` steps are skipped instead of failing their job.
    pub skip_unsupported: bool,
    /// A tar of the working tree ([`super::workspace::pack`]) unpacked into every
    /// job's workspace.
    pub workspace_archive: Option<std::path::PathBuf>,
}

/// One finished job (combination) in the run's report.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// The job's id.
    pub job_id: String,
    /// Its display name.
    pub display: String,
    /// How it ended.
    pub conclusion: Conclusion,
    /// The guest's exit code (`None` when it did not run).
    pub exit_code: Option<i32>,
    /// Why it did not run, or what went wrong before it could.
    pub note: Option<String>,
    /// Wall time.
    pub duration: Duration,
    /// What the guest reported.
    pub result: WorkflowResult,
}

impl JobReport {
    /// A job that never ran: skipped, cancelled before it started, or whose task failed.
    fn did_not_run(job_id: &str, display: &str, conclusion: Conclusion, note: String) -> Self {
        JobReport {
            job_id: job_id.to_string(),
            display: display.to_string(),
            conclusion,
            exit_code: None,
            note: Some(note),
            duration: Duration::ZERO,
            result: WorkflowResult::default(),
        }
    }
}

/// The whole run, jobs in the order they finished.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Every job and combination.
    pub jobs: Vec<JobReport>,
}

impl RunReport {
    /// Whether every job that ran (and was not skipped) succeeded.
    pub fn succeeded(&self) -> bool {
        self.jobs
            .iter()
            .all(|j| matches!(j.conclusion, Conclusion::Success | Conclusion::Skipped))
    }

    /// The run's exit code: the first failed job's, else 0.
    pub fn exit_code(&self) -> i32 {
        self.jobs
            .iter()
            .find(|j| matches!(j.conclusion, Conclusion::Failure | Conclusion::Cancelled))
            .map_or(0, |j| j.exit_code.filter(|c| *c != 0).unwrap_or(1))
    }
}

/// A job that has finished, as its dependents see it.
#[derive(Debug, Clone)]
struct Finished {
    conclusion: Conclusion,
    outputs: BTreeMap<String, String>,
}

/// Where a started job stands.
struct Started {
    remaining: usize,
    conclusions: Vec<Conclusion>,
    outputs: BTreeMap<String, String>,
    cancel: Arc<watch::Sender<bool>>,
    continue_on_error: bool,
}

struct Done {
    job_id: String,
    report: JobReport,
}

/// Runs `workflow` with `runner`.
pub async fn run(
    workflow: &Workflow,
    options: &RunOptions,
    runner: Arc<dyn JobRunner>,
) -> Result<RunReport, String> {
    let selected = workflow.selection(&options.only)?;
    let global = Arc::new(Semaphore::new(options.parallel.max(1)));
    let mut finished: HashMap<String, Finished> = HashMap::new();
    let mut started: HashMap<String, Started> = HashMap::new();
    let mut report = RunReport::default();
    let (done_sender, mut done_receiver) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let mut outstanding = 0usize;
    let workflow_env = evaluate_workflow_env(workflow, options)?;

    loop {
        // Start every job whose needs have all finished; a job skipped here can make
        // its dependents ready, so look again until nothing changes.
        loop {
            let ready: Vec<&Job> = workflow
                .jobs
                .iter()
                .filter(|j| selected.contains(&j.id))
                .filter(|j| !finished.contains_key(&j.id) && !started.contains_key(&j.id))
                .filter(|j| j.needs.iter().all(|n| finished.contains_key(n)))
                .collect();
            if ready.is_empty() {
                break;
            }
            for job in ready {
                let needs = needs_context(job, &finished);
                let status = Status {
                    failed: ancestors(workflow, &job.id).iter().any(|a| {
                        finished
                            .get(a)
                            .is_some_and(|f| f.conclusion == Conclusion::Failure)
                    }),
                    cancelled: false,
                };
                let all_succeeded = job.needs.iter().all(|n| {
                    finished
                        .get(n)
                        .is_some_and(|f| f.conclusion == Conclusion::Success)
                });
                let mut contexts = base_contexts(options);
                contexts.set("needs", needs.clone());
                contexts.status = Status {
                    // A job whose needs did not all succeed is skipped under success().
                    failed: status.failed || !all_succeeded,
                    ..status
                };
                let decision = job
                    .condition
                    .as_deref()
                    .map_or(Ok(all_succeeded && !status.failed), |c| {
                        Condition::parse(c).and_then(|c| c.holds(&contexts))
                    });
                let skip = |finished: &mut HashMap<String, Finished>,
                            report: &mut RunReport,
                            conclusion: Conclusion,
                            note: String| {
                    finished.insert(
                        job.id.clone(),
                        Finished {
                            conclusion,
                            outputs: BTreeMap::new(),
                        },
                    );
                    report.jobs.push(JobReport::did_not_run(
                        &job.id,
                        job.name.as_deref().unwrap_or(&job.id),
                        conclusion,
                        note,
                    ));
                };
                match decision {
                    Ok(true) => {}
                    Ok(false) => {
                        let why = match &job.condition {
                            Some(c) => format!("if: {c} was false"),
                            None => "a job it needs did not succeed".to_string(),
                        };
                        skip(&mut finished, &mut report, Conclusion::Skipped, why);
                        continue;
                    }
                    Err(error) => {
                        skip(
                            &mut finished,
                            &mut report,
                            Conclusion::Failure,
                            format!("jobs.{}.if: {error}", job.id),
                        );
                        continue;
                    }
                }
                let runs = match expand(workflow, job, options, &contexts, &workflow_env) {
                    Ok(runs) => runs,
                    Err(error) => {
                        skip(&mut finished, &mut report, Conclusion::Failure, error);
                        continue;
                    }
                };
                if runs.is_empty() {
                    skip(
                        &mut finished,
                        &mut report,
                        Conclusion::Skipped,
                        "no matrix combination matches --matrix".into(),
                    );
                    continue;
                }
                let flag = |text: &Option<String>, default: bool| -> bool {
                    match text {
                        None => default,
                        Some(t) => Template::parse(t)
                            .and_then(|t| t.value(&contexts))
                            .map(|v| truthy(&v) && v != json!("false"))
                            .unwrap_or(default),
                    }
                };
                let fail_fast = flag(&job.fail_fast, true);
                let continue_on_error = flag(&job.continue_on_error, false);
                let max_parallel = job
                    .max_parallel
                    .as_ref()
                    .and_then(|t| Template::parse(t).and_then(|t| t.value(&contexts)).ok())
                    .map(|v| to_number(&v))
                    .filter(|n| n.is_finite() && *n >= 1.0)
                    .map_or(runs.len(), |n| n as usize);
                let per_job = Arc::new(Semaphore::new(max_parallel.max(1)));
                let (cancel, cancelled) = watch::channel(false);
                let cancel = Arc::new(cancel);
                started.insert(
                    job.id.clone(),
                    Started {
                        remaining: runs.len(),
                        conclusions: Vec::new(),
                        outputs: BTreeMap::new(),
                        cancel,
                        continue_on_error,
                    },
                );
                // One driver per job hands its combinations their slots in matrix
                // order (max-parallel), each combination then waits for a run-wide slot.
                let cancel_on_failure = fail_fast && !continue_on_error;
                let cancel = started
                    .get(&job.id)
                    .map(|s| s.cancel.clone())
                    .expect("inserted above");
                let runner = runner.clone();
                let global = global.clone();
                let done_sender = done_sender.clone();
                let job_id = job.id.clone();
                outstanding += runs.len();
                tokio::spawn(async move {
                    for run in runs {
                        let Ok(job_slot) = per_job.clone().acquire_owned().await else {
                            break;
                        };
                        let runner = runner.clone();
                        let global = global.clone();
                        let cancelled = cancelled.clone();
                        let cancel = cancel.clone();
                        let job_id = job_id.clone();
                        let done_sender = done_sender.clone();
                        tokio::spawn(async move {
                            let display = run.display.clone();
                            let inner = tokio::spawn(run_one(
                                run,
                                job_id.clone(),
                                runner,
                                global,
                                cancelled,
                                cancel,
                                cancel_on_failure,
                            ));
                            // A runner that panics fails its job; the run goes on.
                            let done = inner.await.unwrap_or_else(|error| Done {
                                report: JobReport::did_not_run(
                                    &job_id,
                                    &display,
                                    Conclusion::Failure,
                                    format!("the job's task failed: {error}"),
                                ),
                                job_id,
                            });
                            drop(job_slot);
                            let _ = done_sender.send(done);
                        });
                    }
                });
            }
        }

        if outstanding == 0 {
            break;
        }
        let Some(done) = done_receiver.recv().await else {
            break;
        };
        outstanding -= 1;
        let Some(state) = started.get_mut(&done.job_id) else {
            continue;
        };
        state.remaining -= 1;
        let mut conclusion = done.report.conclusion;
        if conclusion == Conclusion::Failure && state.continue_on_error {
            conclusion = Conclusion::Success;
        }
        state.conclusions.push(conclusion);
        if done.report.conclusion == Conclusion::Success || conclusion == Conclusion::Success {
            // The last combination to finish wins for each output (as on GitHub).
            for (k, v) in &done.report.result.outputs {
                if !v.is_empty() {
                    state.outputs.insert(k.clone(), v.clone());
                }
            }
        }
        report.jobs.push(done.report);
        if state.remaining == 0 {
            let conclusion = if state.conclusions.contains(&Conclusion::Failure) {
                Conclusion::Failure
            } else if state.conclusions.contains(&Conclusion::Cancelled) {
                Conclusion::Cancelled
            } else {
                Conclusion::Success
            };
            let outputs = std::mem::take(&mut state.outputs);
            started.remove(&done.job_id);
            finished.insert(
                done.job_id,
                Finished {
                    conclusion,
                    outputs,
                },
            );
        }
    }
    Ok(report)
}

/// Runs one combination once it has a run-wide slot; a failure cancels the
/// rest of its matrix (fail-fast) before its slot is given back.
async fn run_one(
    run: JobRun,
    job_id: String,
    runner: Arc<dyn JobRunner>,
    global: Arc<Semaphore>,
    cancelled: watch::Receiver<bool>,
    cancel: Arc<watch::Sender<bool>>,
    cancel_on_failure: bool,
) -> Done {
    let display = run.display.clone();
    let Ok(_slot) = global.acquire_owned().await else {
        return not_started(&job_id, &display, "the run stopped");
    };
    // A job's time is its own: from the moment it has a slot.
    let started_at = Instant::now();
    let report = |conclusion, exit_code, note: Option<&str>, result| Done {
        job_id: job_id.clone(),
        report: JobReport {
            job_id: job_id.clone(),
            display: display.clone(),
            conclusion,
            exit_code,
            note: note.map(str::to_string),
            duration: started_at.elapsed(),
            result,
        },
    };
    if *cancelled.borrow() {
        return report(
            Conclusion::Cancelled,
            None,
            Some("cancelled by fail-fast before it started"),
            WorkflowResult::default(),
        );
    }
    let outcome = runner.run(run, cancelled).await;
    let conclusion = if outcome.cancelled {
        Conclusion::Cancelled
    } else if outcome.exit_code == 0 {
        Conclusion::Success
    } else {
        Conclusion::Failure
    };
    if conclusion == Conclusion::Failure && cancel_on_failure {
        cancel.send_replace(true);
    }
    report(conclusion, Some(outcome.exit_code), None, outcome.result)
}

fn not_started(job_id: &str, display: &str, note: &str) -> Done {
    Done {
        job_id: job_id.to_string(),
        report: JobReport::did_not_run(job_id, display, Conclusion::Cancelled, note.to_string()),
    }
}

fn base_contexts(options: &RunOptions) -> Contexts {
    let mut contexts = Contexts::new();
    for name in ["github", "vars", "secrets", "inputs"] {
        contexts.set(
            name,
            options
                .contexts
                .get(name)
                .cloned()
                .unwrap_or_else(|| json!({})),
        );
    }
    contexts
}

fn evaluate_workflow_env(
    workflow: &Workflow,
    options: &RunOptions,
) -> Result<BTreeMap<String, String>, String> {
    let contexts = base_contexts(options);
    workflow
        .env
        .iter()
        .map(|(k, t)| {
            Template::parse(t)
                .and_then(|t| t.render(&contexts))
                .map(|v| (k.clone(), v))
                .map_err(|e| {
                    workflow
                        .source
                        .expression_error(&format!("env.{k}"), t, &e)
                        .to_string()
                })
        })
        .collect()
}

/// Every job `id` needs, transitively.
fn ancestors(workflow: &Workflow, id: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = workflow
        .job(id)
        .map(|j| j.needs.clone())
        .unwrap_or_default();
    while let Some(next) = stack.pop() {
        if seen.insert(next.clone()) {
            if let Some(job) = workflow.job(&next) {
                stack.extend(job.needs.iter().cloned());
            }
        }
    }
    seen
}

fn needs_context(job: &Job, finished: &HashMap<String, Finished>) -> Json {
    let mut needs = Map::new();
    for need in &job.needs {
        if let Some(f) = finished.get(need) {
            needs.insert(
                need.clone(),
                json!({ "result": f.conclusion.as_str(), "outputs": f.outputs }),
            );
        }
    }
    Json::Object(needs)
}

/// The runs of one job: its matrix evaluated and expanded, each combination's
/// name, env and guest job.
fn expand(
    workflow: &Workflow,
    job: &Job,
    options: &RunOptions,
    contexts: &Contexts,
    workflow_env: &BTreeMap<String, String>,
) -> Result<Vec<JobRun>, String> {
    let at = |path: &str, text: &str, e: &super::expr::ExprError| {
        workflow.source.expression_error(path, text, e).to_string()
    };
    let matrix = match &job.matrix {
        Some(spec) => Some(
            plan::evaluate_json(spec, contexts)
                .map_err(|e| format!("jobs.{}.strategy.matrix: {e}", job.id))?,
        ),
        None => None,
    };
    let order = matrix
        .as_ref()
        .map(|m| plan::matrix_key_order(workflow.source_text(), m))
        .unwrap_or_default();
    let combos = plan::combinations(matrix.as_ref(), &order)
        .map_err(|e| format!("jobs.{}.strategy.matrix: {e}", job.id))?;
    let combos: Vec<Combination> = combos
        .into_iter()
        .filter(|combo| {
            options.matrix_filter.iter().all(|(k, v)| {
                combo
                    .iter()
                    .find(|(ck, _)| ck == k)
                    .is_none_or(|(_, cv)| to_text(cv) == *v)
            })
        })
        .collect();
    let total = combos.len();
    let mut runs = Vec::new();
    for (index, combo) in combos.iter().enumerate() {
        let strategy = json!({
            "fail-fast": job.fail_fast.as_deref().is_none_or(|f| f != "false"),
            "job-index": index,
            "job-total": total,
            "max-parallel": total,
        });
        let mut contexts = contexts.clone();
        contexts.set("matrix", plan::matrix_context(combo));
        contexts.set("strategy", strategy.clone());
        contexts.set("env", json!(workflow_env));
        let base_name = match &job.name {
            Some(name) => Template::parse(name)
                .and_then(|t| t.render(&contexts))
                .map_err(|e| at(&format!("jobs.{}.name", job.id), name, &e))?,
            None => job.id.clone(),
        };
        // A name that uses the matrix already says which combination it is.
        let display = if job.name.as_deref().is_some_and(|n| n.contains("matrix.")) {
            base_name
        } else {
            plan::display_name(&base_name, combo)
        };
        let mut env = workflow_env.clone();
        for (key, template) in &job.env {
            let value = Template::parse(template)
                .and_then(|t| t.render(&contexts))
                .map_err(|e| at(&format!("jobs.{}.env.{key}", job.id), template, &e))?;
            env.insert(key.clone(), value);
        }
        let runs_on = match &job.runs_on {
            Some(text) => Some(
                Template::parse(text)
                    .and_then(|t| t.render(&contexts))
                    .map_err(|e| at(&format!("jobs.{}.runs-on", job.id), text, &e))?,
            ),
            None => None,
        };
        let timeout_minutes = job
            .timeout_minutes
            .as_ref()
            .and_then(|t| Template::parse(t).and_then(|t| t.value(&contexts)).ok())
            .map(|v| to_number(&v))
            .filter(|n| n.is_finite() && *n > 0.0)
            .unwrap_or(DEFAULT_TIMEOUT_MINUTES as f64);
        let mut job_contexts = Map::new();
        for name in ["github", "vars", "secrets", "inputs", "needs"] {
            if let Some(value) = contexts.get(name) {
                job_contexts.insert(name.to_string(), value.clone());
            }
        }
        job_contexts.insert("matrix".into(), plan::matrix_context(combo));
        job_contexts.insert("strategy".into(), strategy);
        let defaults = RunDefaults {
            shell: job
                .defaults
                .shell
                .clone()
                .or_else(|| workflow.defaults.shell.clone()),
            working_directory: job
                .defaults
                .working_directory
                .clone()
                .or_else(|| workflow.defaults.working_directory.clone()),
        };
        runs.push(JobRun {
            job_id: job.id.clone(),
            display,
            guest: GuestJob {
                env,
                workflow: Some(Box::new(WorkflowJob {
                    id: job.id.clone(),
                    contexts: job_contexts,
                    steps: job.steps.clone(),
                    outputs: job.outputs.clone(),
                    defaults,
                    workspace: None,
                    skip_unsupported: options.skip_unsupported,
                    archive: options.workspace_archive.clone(),
                })),
                ..GuestJob::default()
            },
            timeout: Duration::from_secs_f64((timeout_minutes * 60.0).min(1e9)),
            runs_on,
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// Fails jobs whose first step is `exit 1`, sleeps `sleep N` ms, outputs `out=V`.
    #[derive(Default)]
    struct Fake {
        running: AtomicUsize,
        most: AtomicUsize,
        seen: Mutex<Vec<(String, Json)>>,
    }

    #[async_trait::async_trait]
    impl JobRunner for Fake {
        async fn run(&self, job: JobRun, mut cancel: watch::Receiver<bool>) -> RunnerOutcome {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let workflow = job.guest.workflow.clone().unwrap_or_default();
            // The job's env is evaluated on the host: `RUN` stands in for the script.
            let script = job
                .guest
                .env
                .get("RUN")
                .cloned()
                .unwrap_or_else(|| workflow.steps[0].run.clone().unwrap_or_default());
            self.seen
                .lock()
                .expect("lock")
                .push((job.display.clone(), Json::Object(workflow.contexts.clone())));
            let millis = script
                .split_whitespace()
                .skip_while(|w| *w != "sleep")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(10);
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(millis)) => false,
                _ = cancel.wait_for(|c| *c) => true,
            };
            self.running.fetch_sub(1, Ordering::SeqCst);
            let mut result = WorkflowResult::default();
            if let Some(value) = script
                .split_whitespace()
                .find_map(|w| w.strip_prefix("out="))
            {
                result.outputs.insert("out".into(), value.into());
            }
            RunnerOutcome {
                exit_code: if cancelled {
                    130
                } else if script.starts_with("exit 1") {
                    1
                } else {
                    0
                },
                cancelled,
                result,
            }
        }
    }

    async fn run_text(text: &str, parallel: usize) -> (RunReport, Arc<Fake>) {
        let workflow = Workflow::parse("w.yml", text).expect("parses");
        let fake = Arc::new(Fake::default());
        let options = RunOptions {
            parallel,
            ..RunOptions::default()
        };
        let report = run(&workflow, &options, fake.clone()).await.expect("runs");
        (report, fake)
    }

    fn conclusion(report: &RunReport, display: &str) -> Conclusion {
        report
            .jobs
            .iter()
            .find(|j| j.display == display)
            .unwrap_or_else(|| panic!("no {display} in {report:?}"))
            .conclusion
    }

    #[tokio::test]
    async fn needs_pass_outputs_and_results_and_skip_dependents_of_failures() {
        let (report, fake) = run_text(
            r#"
jobs:
  setup:
    outputs:
      targets: ${{ steps.s.outputs.out }}
    steps:
      - {id: s, run: "echo out=[1,2]"}
  build:
    needs: setup
    strategy:
      matrix:
        target: ${{ fromJSON(needs.setup.outputs.out) }}
    steps:
      - run: echo
  broken:
    needs: setup
    steps:
      - run: exit 1
  after-broken:
    needs: broken
    steps:
      - run: echo
  report:
    needs: [broken, after-broken]
    if: always()
    steps:
      - run: echo
  on-failure:
    needs: broken
    if: failure()
    steps:
      - run: echo
"#,
            4,
        )
        .await;
        assert_eq!(conclusion(&report, "setup"), Conclusion::Success);
        assert_eq!(conclusion(&report, "build (1)"), Conclusion::Success);
        assert_eq!(conclusion(&report, "build (2)"), Conclusion::Success);
        assert_eq!(conclusion(&report, "broken"), Conclusion::Failure);
        assert_eq!(conclusion(&report, "after-broken"), Conclusion::Skipped);
        assert_eq!(conclusion(&report, "report"), Conclusion::Success);
        assert_eq!(conclusion(&report, "on-failure"), Conclusion::Success);
        assert_eq!(report.exit_code(), 1);
        let seen = fake.seen.lock().expect("lock");
        let (_, contexts) = seen
            .iter()
            .find(|(d, _)| d == "report")
            .expect("report ran");
        assert_eq!(contexts["needs"]["broken"]["result"], "failure");
        assert_eq!(contexts["needs"]["after-broken"]["result"], "skipped");
        let (_, build) = seen.iter().find(|(d, _)| d == "build (2)").expect("ran");
        assert_eq!(build["strategy"]["job-index"], 1);
        assert_eq!(build["strategy"]["job-total"], 2);
    }

    #[tokio::test]
    async fn fail_fast_cancels_the_rest_of_a_matrix_and_max_parallel_bounds_it() {
        let (report, fake) = run_text(
            r#"
jobs:
  test:
    strategy:
      max-parallel: 1
      matrix:
        n: [1, 2, 3]
    env:
      RUN: ${{ matrix.n == 1 && 'exit 1' || 'sleep 10' }}
    steps:
      - run: $RUN
"#,
            4,
        )
        .await;
        assert_eq!(fake.most.load(Ordering::SeqCst), 1, "max-parallel: 1");
        assert_eq!(conclusion(&report, "test (1)"), Conclusion::Failure);
        assert_eq!(conclusion(&report, "test (2)"), Conclusion::Cancelled);
        assert_eq!(conclusion(&report, "test (3)"), Conclusion::Cancelled);

        let (report, _) = run_text(
            r#"
jobs:
  test:
    strategy:
      fail-fast: false
      matrix:
        n: [1, 2]
    env:
      RUN: ${{ matrix.n == 1 && 'exit 1' || 'sleep 10' }}
    steps:
      - run: $RUN
"#,
            4,
        )
        .await;
        assert_eq!(conclusion(&report, "test (2)"), Conclusion::Success);
    }

    #[tokio::test]
    async fn a_skipped_job_readies_its_always_dependents_even_when_nothing_else_runs() {
        // `after` is skipped the moment `broken` fails; `report` must still start
        // although no other job is left to finish and wake the scheduler.
        let (report, _) = run_text(
            r#"
jobs:
  broken: {steps: [{run: exit 1}]}
  after: {needs: broken, steps: [{run: echo}]}
  report: {needs: [broken, after], if: always(), steps: [{run: echo}]}
"#,
            2,
        )
        .await;
        assert_eq!(conclusion(&report, "after"), Conclusion::Skipped);
        assert_eq!(conclusion(&report, "report"), Conclusion::Success);
    }

    #[tokio::test]
    async fn independent_jobs_run_in_parallel_up_to_the_limit() {
        let text = r#"
jobs:
  a: {steps: [{run: sleep 200}]}
  b: {steps: [{run: sleep 200}]}
  c: {steps: [{run: sleep 200}]}
  d: {needs: [a, b, c], steps: [{run: sleep 1}]}
"#;
        let (report, fake) = run_text(text, 2).await;
        assert!(report.succeeded());
        assert_eq!(fake.most.load(Ordering::SeqCst), 2);
        let (_, fake) = run_text(text, 8).await;
        assert_eq!(fake.most.load(Ordering::SeqCst), 3);
    }
}
