//! A workflow job as the host hands it to the guest, and what the guest hands
//! back: the steps keep their expressions, which the guest evaluates as it goes
//! (like GitHub's runner), because `steps.*`, `env` set through `GITHUB_ENV` and
//! `hashFiles()` only exist there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One job (one matrix combination) of a workflow, for the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowJob {
    /// The job's id under `jobs:`.
    pub id: String,
    /// The contexts the host knows: `github`, `vars`, `secrets`, `inputs`,
    /// `matrix`, `strategy`, `needs` (the guest adds `env`, `steps`, `job`, `runner`).
    pub contexts: Map<String, Value>,
    /// The steps, expressions unevaluated.
    pub steps: Vec<WorkflowStep>,
    /// `outputs:`, evaluated after the last step.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// `defaults.run` of the workflow and the job (the job's wins).
    #[serde(default)]
    pub defaults: RunDefaults,
    /// Where the repository's files are (`$GITHUB_WORKSPACE`); default: the guest's workspace.
    #[serde(default)]
    pub workspace: Option<String>,
    /// `uses:` steps that cannot run are skipped (reported) instead of failing the job.
    #[serde(default)]
    pub skip_unsupported: bool,
    /// A tar of the working tree for the workspace: on the host the file the
    /// session streams to the guest before `Run`; in the guest, the file it was
    /// received into. Never serialized.
    #[serde(skip)]
    pub archive: Option<std::path::PathBuf>,
}

/// `defaults.run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunDefaults {
    /// `shell`.
    #[serde(default)]
    pub shell: Option<String>,
    /// `working-directory`.
    #[serde(default)]
    pub working_directory: Option<String>,
}

/// One step as written in the workflow file (values are templates).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStep {
    /// `id`.
    #[serde(default)]
    pub id: Option<String>,
    /// `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `if`.
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    /// `run`.
    #[serde(default)]
    pub run: Option<String>,
    /// `uses`.
    #[serde(default)]
    pub uses: Option<String>,
    /// `with`.
    #[serde(default)]
    pub with: BTreeMap<String, String>,
    /// `env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `shell`.
    #[serde(default)]
    pub shell: Option<String>,
    /// `working-directory`.
    #[serde(default)]
    pub working_directory: Option<String>,
    /// `continue-on-error` (a boolean or an expression).
    #[serde(default)]
    pub continue_on_error: Option<String>,
    /// `timeout-minutes` (a number or an expression).
    #[serde(default)]
    pub timeout_minutes: Option<String>,
}

impl WorkflowStep {
    /// The name shown before the step's expressions are evaluated.
    pub fn default_name(&self) -> String {
        match (&self.name, &self.run, &self.uses) {
            (Some(name), _, _) => name.clone(),
            (None, Some(run), _) => format!("Run {}", run.lines().next().unwrap_or("").trim()),
            (None, None, Some(uses)) => format!("Run {uses}"),
            (None, None, None) => "(empty step)".into(),
        }
    }
}

/// What the guest reports at the end of a workflow job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowResult {
    /// The job's `outputs:`, evaluated.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// What the steps wrote to `$GITHUB_STEP_SUMMARY`, in order.
    #[serde(default)]
    pub summary: String,
    /// `::error` / `::warning` / `::notice` annotations.
    #[serde(default)]
    pub annotations: Vec<Annotation>,
}

/// A `::error` / `::warning` / `::notice` workflow command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    /// `error`, `warning` or `notice`.
    pub level: String,
    /// The message.
    pub message: String,
    /// `file=`.
    #[serde(default)]
    pub file: Option<String>,
    /// `line=`.
    #[serde(default)]
    pub line: Option<u32>,
    /// `col=`.
    #[serde(default)]
    pub column: Option<u32>,
    /// `title=`.
    #[serde(default)]
    pub title: Option<String>,
}

impl std::fmt::Display for Annotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.level)?;
        if let Some(file) = &self.file {
            write!(f, " {file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(column) = self.column {
                    write!(f, ":{column}")?;
                }
            }
        }
        if let Some(title) = &self.title {
            write!(f, " ({title})")?;
        }
        write!(f, ": {}", self.message)
    }
}
