//! GitHub Actions workflow files as local jobs (`nimbus run`): each job of the file
//! (each matrix combination) becomes a [`GuestJob`] of its `run:` steps, with
//! `env` (workflow, job, step), `defaults.run` (`shell`, `working-directory`),
//! `if: always() / failure() / success()`, `continue-on-error`, `timeout-minutes`
//! and `${{ matrix.* }}` / `${{ env.* }}` substituted. `uses:` steps cannot run
//! offline: they are listed, by name, as skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use crate::protocol::{GuestJob, GuestStep, StepCondition};

/// Most matrix combinations one job may expand to (GitHub's limit).
const MAX_COMBINATIONS: usize = 256;

/// One entry of a job's plan, in the workflow's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedStep {
    /// Runs as step `index` of the guest job.
    Run {
        /// Position in [`PlannedJob::job`]'s steps, from 0.
        index: usize,
        /// The step's `name:`, or `Run <first line of the script>`.
        name: String,
    },
    /// A `uses:` step: reported, not run.
    Skipped {
        /// The step's `name:`, or its `uses:` when it has none.
        name: String,
        /// The action it uses, e.g. `actions/checkout@v4`.
        uses: String,
    },
}

/// A job (one matrix combination) ready to run.
#[derive(Debug, Clone)]
pub struct PlannedJob {
    /// The job's key under `jobs:` in the workflow file.
    pub id: String,
    /// `name` (or the id), with the matrix values, e.g. `test (3.12, ubuntu)`.
    pub name: String,
    /// What the guest runs: the `run:` steps, with env and matrix values substituted.
    pub job: GuestJob,
    /// The file's steps in order, run or skipped (an `if:` that never holds locally drops one).
    pub steps: Vec<PlannedStep>,
    /// The job's `timeout-minutes` (default 360).
    pub timeout: Duration,
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn map_of(value: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, String> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let mapping = value
        .as_mapping()
        .ok_or_else(|| format!("{what} must be a mapping"))?;
    mapping
        .iter()
        .map(|(k, v)| {
            let key = scalar(k).ok_or_else(|| format!("{what}: keys must be strings"))?;
            let value = scalar(v).ok_or_else(|| format!("{what}.{key} must be a scalar"))?;
            Ok((key, value))
        })
        .collect()
}

/// Replaces `${{ matrix.K }}` and `${{ env.K }}`; other expressions are left as
/// they are (the shell sees them literally).
fn substitute(
    text: &str,
    matrix: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expression = after[..end].trim();
        let replaced = expression
            .strip_prefix("matrix.")
            .and_then(|k| matrix.get(k))
            .or_else(|| expression.strip_prefix("env.").and_then(|k| env.get(k)));
        match replaced {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[start..start + 3 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `if:` as the guest understands it; `None` for steps that never run locally.
fn condition(raw: Option<&Value>) -> Result<Option<StepCondition>, String> {
    let Some(raw) = raw else {
        return Ok(Some(StepCondition::Success));
    };
    let text = scalar(raw).ok_or("if: must be a string")?;
    let text = text.trim();
    let text = text
        .strip_prefix("${{")
        .and_then(|t| t.strip_suffix("}}"))
        .unwrap_or(text)
        .trim();
    Ok(match text {
        "always()" => Some(StepCondition::Always),
        "failure()" => Some(StepCondition::Failure),
        "success()" | "" | "true" => Some(StepCondition::Success),
        "cancelled()" | "false" => None,
        other => {
            return Err(format!(
            "if: {other:?} is not supported locally (always(), failure(), success(), cancelled())"
        ))
        }
    })
}

/// The matrix combinations of a job (one empty combination without a matrix).
fn combinations(strategy: Option<&Value>) -> Result<Vec<BTreeMap<String, String>>, String> {
    let Some(matrix) = strategy.and_then(|s| s.get("matrix")) else {
        return Ok(vec![BTreeMap::new()]);
    };
    let matrix = matrix
        .as_mapping()
        .ok_or("strategy.matrix must be a mapping")?;
    let mut combos: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    for (key, values) in matrix {
        let key = scalar(key).ok_or("matrix keys must be strings")?;
        match key.as_str() {
            "include" | "exclude" => {
                let entries = values
                    .as_sequence()
                    .ok_or_else(|| format!("matrix.{key} must be a list"))?;
                for entry in entries {
                    let entry = map_of(Some(entry), &format!("matrix.{key}[]"))?;
                    if key == "include" {
                        include.push(entry);
                    } else {
                        exclude.push(entry);
                    }
                }
            }
            _ => {
                let values = values
                    .as_sequence()
                    .ok_or_else(|| format!("matrix.{key} must be a list"))?;
                let values: Vec<String> = values
                    .iter()
                    .map(|v| {
                        scalar(v).ok_or_else(|| format!("matrix.{key} values must be scalars"))
                    })
                    .collect::<Result<_, _>>()?;
                combos = combos
                    .into_iter()
                    .flat_map(|combo| {
                        let key = &key;
                        values.iter().map(move |value| {
                            let mut next = combo.clone();
                            next.insert(key.clone(), value.clone());
                            next
                        })
                    })
                    .collect();
                if combos.len() > MAX_COMBINATIONS {
                    return Err(format!(
                        "the matrix has more than {MAX_COMBINATIONS} combinations"
                    ));
                }
            }
        }
    }
    combos.retain(|combo| {
        !exclude
            .iter()
            .any(|ex| ex.iter().all(|(k, v)| combo.get(k) == Some(v)))
    });
    for extra in include {
        // An include that agrees with existing combinations on their keys extends
        // them; one that matches none is a combination of its own.
        let mut extended = false;
        for combo in combos.iter_mut().filter(|c| !c.is_empty()) {
            if extra
                .iter()
                .all(|(k, v)| combo.get(k).is_none_or(|have| have == v))
            {
                for (k, v) in &extra {
                    combo.entry(k.clone()).or_insert_with(|| v.clone());
                }
                extended = true;
            }
        }
        if !extended {
            if combos.len() == 1 && combos[0].is_empty() {
                combos.clear();
            }
            combos.push(extra);
        }
    }
    if combos.is_empty() {
        return Err("the matrix excludes every combination".into());
    }
    Ok(combos)
}

/// Plans every job of `text` (or only `only`, by id or name).
pub fn plan(text: &str, only: Option<&str>) -> Result<Vec<PlannedJob>, String> {
    let root: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not a workflow file: {e}"))?;
    let workflow_env = map_of(root.get("env"), "env")?;
    let jobs: &Mapping = root
        .get("jobs")
        .and_then(Value::as_mapping)
        .ok_or("the workflow has no jobs: mapping")?;
    let mut planned = Vec::new();
    for (id, job) in jobs {
        let id = scalar(id).ok_or("job ids must be strings")?;
        let display = job
            .get("name")
            .and_then(scalar)
            .unwrap_or_else(|| id.clone());
        if only.is_some_and(|wanted| wanted != id && wanted != display) {
            continue;
        }
        let job_env = map_of(job.get("env"), &format!("jobs.{id}.env"))?;
        let defaults = job.get("defaults").and_then(|d| d.get("run"));
        let default_shell = defaults.and_then(|d| d.get("shell")).and_then(scalar);
        let default_dir = defaults
            .and_then(|d| d.get("working-directory"))
            .and_then(scalar);
        let timeout_minutes = job
            .get("timeout-minutes")
            .and_then(Value::as_u64)
            .unwrap_or(360);
        let steps = job
            .get("steps")
            .and_then(Value::as_sequence)
            .ok_or_else(|| format!("jobs.{id} has no steps"))?;
        for matrix in combinations(job.get("strategy"))? {
            let mut env = workflow_env.clone();
            env.extend(
                job_env
                    .iter()
                    .map(|(k, v)| (k.clone(), substitute(v, &matrix, &workflow_env))),
            );
            let name = if matrix.is_empty() {
                substitute(&display, &matrix, &env)
            } else {
                format!(
                    "{} ({})",
                    substitute(&display, &matrix, &env),
                    matrix.values().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            let mut guest = GuestJob {
                env: env.clone(),
                working_directory: default_dir.clone(),
                ..GuestJob::default()
            };
            let mut plan = Vec::new();
            for (position, step) in steps.iter().enumerate() {
                let step_name = step
                    .get("name")
                    .and_then(scalar)
                    .map(|n| substitute(&n, &matrix, &env));
                if let Some(uses) = step.get("uses").and_then(scalar) {
                    plan.push(PlannedStep::Skipped {
                        name: step_name.unwrap_or_else(|| uses.clone()),
                        uses,
                    });
                    continue;
                }
                let Some(run) = step.get("run").and_then(scalar) else {
                    return Err(format!(
                        "jobs.{id}.steps[{position}] has neither run: nor uses:"
                    ));
                };
                let Some(condition) = condition(step.get("if"))? else {
                    continue;
                };
                let step_env =
                    map_of(step.get("env"), &format!("jobs.{id}.steps[{position}].env"))?;
                let mut lookup = env.clone();
                lookup.extend(step_env.clone());
                let name = step_name.unwrap_or_else(|| {
                    format!("Run {}", run.lines().next().unwrap_or_default().trim())
                });
                plan.push(PlannedStep::Run {
                    index: guest.steps.len(),
                    name: name.clone(),
                });
                guest.steps.push(GuestStep {
                    name,
                    run: substitute(&run, &matrix, &lookup),
                    shell: step
                        .get("shell")
                        .and_then(scalar)
                        .or_else(|| default_shell.clone()),
                    env: step_env
                        .iter()
                        .map(|(k, v)| (k.clone(), substitute(v, &matrix, &lookup)))
                        .collect(),
                    working_directory: step.get("working-directory").and_then(scalar),
                    condition,
                    continue_on_error: step
                        .get("continue-on-error")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    timeout_seconds: step
                        .get("timeout-minutes")
                        .and_then(Value::as_u64)
                        .map(|m| m * 60),
                });
            }
            planned.push(PlannedJob {
                id: id.clone(),
                name,
                job: guest,
                steps: plan,
                timeout: Duration::from_secs(timeout_minutes.max(1) * 60),
            });
        }
    }
    if planned.is_empty() {
        return Err(match only {
            Some(wanted) => format!("no job {wanted:?} in the workflow"),
            None => "the workflow has no jobs".into(),
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKFLOW: &str = r#"
name: CI
env:
  GREETING: hello
jobs:
  test:
    name: test
    timeout-minutes: 10
    strategy:
      matrix:
        python: ["3.11", "3.12"]
        os: [debian]
        exclude:
          - python: "3.11"
            os: debian
        include:
          - python: "3.13"
            os: debian
    defaults:
      run:
        shell: bash
    env:
      PY: ${{ matrix.python }}
    steps:
      - uses: actions/checkout@v4
      - name: Say
        run: echo "$GREETING ${{ matrix.python }} ${{ env.PY }}"
      - run: exit 3
        continue-on-error: true
      - name: On failure
        if: failure()
        run: echo failed
      - name: Always
        if: ${{ always() }}
        run: echo always
      - name: Never
        if: cancelled()
        run: echo never
  lint:
    steps:
      - run: echo lint
"#;

    #[test]
    fn jobs_matrices_steps_and_conditions_are_planned() {
        let jobs = plan(WORKFLOW, None).expect("plan");
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            ["test (debian, 3.12)", "test (debian, 3.13)", "lint"]
        );
        let test = &jobs[0];
        assert_eq!(test.timeout, Duration::from_secs(600));
        assert_eq!(test.job.env["PY"], "3.12");
        assert_eq!(
            test.steps[0],
            PlannedStep::Skipped {
                name: "actions/checkout@v4".into(),
                uses: "actions/checkout@v4".into()
            }
        );
        let steps = &test.job.steps;
        assert_eq!(steps.len(), 4, "the cancelled() step never runs locally");
        assert_eq!(steps[0].run, "echo \"$GREETING 3.12 3.12\"");
        assert_eq!(steps[0].shell.as_deref(), Some("bash"));
        assert_eq!(steps[1].name, "Run exit 3");
        assert!(steps[1].continue_on_error);
        assert_eq!(steps[2].condition, StepCondition::Failure);
        assert_eq!(steps[3].condition, StepCondition::Always);
        assert_eq!(jobs[2].timeout, Duration::from_secs(360 * 60));
        let only = plan(WORKFLOW, Some("lint")).expect("plan");
        assert_eq!(only.len(), 1);
        assert!(plan(WORKFLOW, Some("nope")).is_err());
    }

    #[test]
    fn bad_workflows_get_clear_errors() {
        assert!(plan("::: not yaml", None).is_err());
        assert!(plan("name: x", None)
            .expect_err("refused")
            .contains("no jobs"));
        assert!(plan("jobs:\n  a:\n    steps:\n      - name: x\n", None)
            .expect_err("refused")
            .contains("neither run"));
        assert!(plan(
            "jobs:\n  a:\n    steps:\n      - run: x\n        if: github.ref == 'main'\n",
            None
        )
        .expect_err("refused")
        .contains("not supported"));
    }
}
