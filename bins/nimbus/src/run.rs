//! `nimbus run WORKFLOW.yml [--job NAME]`: a GitHub Actions workflow's `run:` steps
//! in a microVM on this machine (the driver `NIMBUS_VMM` picks), one VM per job and
//! matrix combination, output streamed live with step headers, then a summary.
//! Exits with the first failing job's code (0 when all succeed).
//!
//! The jobs go through an in-process control plane like any job: submitted, leased
//! with a fencing token, run, completed with their status and exit code (a SQLite
//! database in memory, gone with the process).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nimbus_core::auth::Principal;
use nimbus_core::control_plane::{ControlPlane, JobRequest, LeaseOptions};
use nimbus_core::domain::{Completion, CompletionStatus};
use nimbus_core::{ControlPlaneConfig, Env};
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
        let local = LocalControlPlane::start().await?;
        let mut rows = Vec::new();
        let mut exit = 0;
        for planned in &jobs {
            eprintln!("\n═══ {} ═══", planned.name);
            let lease = local.submit_and_lease(planned).await?;
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
            local.complete(&lease, code).await?;
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
        local.stop();
        Ok(exit)
    })
}

/// The in-process control plane the local jobs go through: its API, called
/// directly (no server, no tokens), as org 1 submitting and an agent leasing.
struct LocalControlPlane {
    state: nimbus_core::control_plane::AppState,
    org: Principal,
    agent: Principal,
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
        })
    }

    /// Queues the job (its steps as the job record shows them) and leases it.
    async fn submit_and_lease(
        &self,
        planned: &workflow::PlannedJob,
    ) -> Result<nimbus_core::Lease, String> {
        let steps = planned
            .job
            .steps
            .iter()
            .map(|step| nimbus_core::domain::Step {
                name: Some(step.name.clone()),
                run: step.run.clone(),
                env: step.env.clone(),
                working_directory: step.working_directory.clone(),
            })
            .collect();
        let minutes = planned.timeout.as_secs().div_ceil(60).max(1);
        let request = JobRequest {
            org_id: None,
            repo: "local/workflow".into(),
            labels: vec!["nimbus".into(), format!("meta:job={}", planned.id)],
            steps,
            env: planned.job.env.clone(),
            timeout_minutes: Some(u32::try_from(minutes).unwrap_or(u32::MAX)),
            metadata: Default::default(),
        };
        let job = self
            .state
            .submit(&self.org, request)
            .await
            .map_err(|e| format!("submitting {}: {e}", planned.name))?;
        let lease = self
            .state
            .lease(&self.agent, &LeaseOptions::default())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("job {} was not leasable", job.id))?;
        eprintln!(
            "queued as job {} and leased (fencing token {})",
            lease.job.id, lease.fencing_token
        );
        Ok(lease)
    }

    async fn complete(&self, lease: &nimbus_core::Lease, code: i32) -> Result<(), String> {
        let completion = Completion {
            fencing_token: lease.fencing_token,
            status: if code == 0 {
                CompletionStatus::Succeeded
            } else {
                CompletionStatus::Failed
            },
            exit_code: Some(code),
            reason: None,
        };
        self.state
            .complete(&self.agent, lease.job.id, &completion)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn stop(self) {
        self.state.begin_shutdown();
    }
}
