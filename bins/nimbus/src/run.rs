//! `nimbus run WORKFLOW.yml [--job NAME]`: a GitHub Actions workflow's `run:` steps
//! in a microVM on this machine (the driver `NIMBUS_VMM` picks), one VM per job and
//! matrix combination, output streamed live with step headers, then a summary.
//! Exits with the first failing job's code (0 when all succeed).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nimbus_core::Env;
use nimbus_vmm::launch;
use nimbus_vmm::protocol::{StepOutcome, Stream};
use nimbus_vmm::select::{self, VmmConfig};
use nimbus_vmm::workflow::{self, PlannedStep};
use nimbus_vmm::{DriverKind, JobEvent, Outcome};

struct Row {
    job: String,
    step: String,
    result: String,
    millis: Option<u64>,
}

fn result_text(outcome: StepOutcome) -> String {
    match outcome {
        StepOutcome::Exited(0) => "✓ success".into(),
        StepOutcome::Exited(code) => format!("✗ exit {code}"),
        StepOutcome::TimedOut => "✗ timed out".into(),
        StepOutcome::Skipped => "– skipped".into(),
    }
}

pub fn run(file: &Path, only: Option<&str>) -> Result<i32, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let jobs = workflow::plan(&text, only).map_err(|e| format!("{}: {e}", file.display()))?;
    let env = Env::from_process().map_err(|e| e.to_string())?;
    let config = VmmConfig::from_env(&env).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let selection = select::select(&config).await.map_err(|e| e.to_string())?;
        let kind = selection.driver.kind();
        eprintln!("nimbus: {}", selection.reason);
        if kind == DriverKind::Sandbox {
            eprintln!("nimbus: the sandbox shares the host kernel: weaker isolation than a VM");
        }
        let assets = launch::verified_assets(&config, kind)
            .await
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        let mut exit = 0;
        for planned in &jobs {
            eprintln!("\n═══ {} ═══", planned.name);
            let spec = launch::spec(&config, &assets, launch::unique_id("run"), planned.timeout);
            let mut cursor = 0;
            let mut job_rows: Vec<Row> = Vec::new();
            let show_skipped_until =
                |index: Option<usize>, rows: &mut Vec<Row>, cursor: &mut usize| {
                    while let Some(step) = planned.steps.get(*cursor) {
                        match step {
                            PlannedStep::Run { index: at, .. } if Some(*at) == index => {
                                *cursor += 1;
                                return;
                            }
                            PlannedStep::Run { .. } => {
                                if index.is_some() {
                                    return;
                                }
                                *cursor += 1;
                            }
                            PlannedStep::Skipped { name, uses } => {
                                eprintln!("– {name}: skipped (uses: {uses} cannot run offline)");
                                rows.push(Row {
                                    job: planned.name.clone(),
                                    step: name.clone(),
                                    result: "– skipped (uses:)".into(),
                                    millis: None,
                                });
                                *cursor += 1;
                            }
                        }
                    }
                };
            let mut on_event = |event: JobEvent| match event {
                JobEvent::StepStarted { index, name } => {
                    show_skipped_until(Some(index), &mut job_rows, &mut cursor);
                    eprintln!("▶ {name}");
                }
                JobEvent::Output(line) => {
                    let text = format!("  {}\n", line.line);
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
                    let result = result_text(outcome);
                    eprintln!("  {result} ({duration_millis} ms)");
                    job_rows.push(Row {
                        job: planned.name.clone(),
                        step: planned
                            .job
                            .steps
                            .get(index)
                            .map(|s| s.name.clone())
                            .unwrap_or_default(),
                        result,
                        millis: Some(duration_millis),
                    });
                }
            };
            let outcome = launch::run_once(
                &selection.driver,
                &spec,
                &planned.job,
                &mut |_| {},
                &mut on_event,
            )
            .await;
            show_skipped_until(None, &mut job_rows, &mut cursor);
            rows.extend(job_rows);
            let code = match outcome {
                Ok((_, report)) => {
                    match &report.outcome {
                        Outcome::TimedOut => eprintln!(
                            "nimbus: {} timed out after {:?}",
                            planned.name, planned.timeout
                        ),
                        Outcome::Crashed { reason } => {
                            eprintln!("nimbus: the guest crashed: {reason}")
                        }
                        Outcome::Exited { .. } => {}
                    }
                    report.outcome.exit_code()
                }
                Err(error) => {
                    eprintln!(
                        "nimbus: {}: the VM could not run the job: {error}",
                        planned.name
                    );
                    125
                }
            };
            rows.push(Row {
                job: planned.name.clone(),
                step: "(job)".into(),
                result: if code == 0 {
                    "✓ success".into()
                } else {
                    format!("✗ exit {code}")
                },
                millis: None,
            });
            if exit == 0 && code != 0 {
                exit = code;
            }
        }
        let width = rows
            .iter()
            .map(|r| r.job.chars().count())
            .max()
            .unwrap_or(3)
            .max(3);
        let step_width = rows
            .iter()
            .map(|r| r.step.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        eprintln!(
            "\n{:<width$}  {:<step_width$}  {:<18} {:>9}",
            "job", "step", "result", "time"
        );
        for row in &rows {
            let time = row
                .millis
                .map(|ms| format!("{:.1} s", Duration::from_millis(ms).as_secs_f64()))
                .unwrap_or_default();
            eprintln!(
                "{:<width$}  {:<step_width$}  {:<18} {:>9}",
                row.job, row.step, row.result, time
            );
        }
        Ok(exit)
    })
}
