//! Workflow files read into typed jobs and steps, every expression parsed up
//! front (as GitHub validates a file before it runs), errors pointing at the
//! file, line and column.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Value};

use super::expr::{Condition, ExprError, Template};
use super::job::{RunDefaults, WorkflowStep};

/// A problem with a workflow (or action) file, where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct FileError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line (1 when the place is unknown).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, with the path of the key (`jobs.build.steps[2].run`).
    pub message: String,
}

/// A file's text, for turning positions in values back into lines and columns.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file as the user named it.
    pub file: String,
    text: String,
}

impl Source {
    /// The text of `file`.
    pub fn new(file: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            file: file.into(),
            text: text.into(),
        }
    }

    /// The file's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// An error at the first line that holds `key:` (1:1 if none does).
    pub fn error_at_key(&self, key: &str, message: impl Into<String>) -> FileError {
        let needle = format!("{key}:");
        let (line, column) = self
            .text
            .lines()
            .enumerate()
            .find_map(|(i, l)| {
                let trimmed = l.trim_start().trim_start_matches("- ");
                trimmed
                    .starts_with(&needle)
                    .then(|| (i + 1, l.len() - trimmed.len() + 1))
            })
            .unwrap_or((1, 1));
        FileError {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error in an expression of `value` (a string of the file), at the
    /// expression error's offset.
    pub fn expression_error(&self, path: &str, value: &str, error: &ExprError) -> FileError {
        let offset = error.offset.min(value.len());
        let offset = (0..=offset)
            .rev()
            .find(|&o| value.is_char_boundary(o))
            .unwrap_or(0);
        let before = &value[..offset];
        let line_in_value = before.matches('\n').count();
        let column_in_line = before.rsplit('\n').next().map_or(0, |l| l.chars().count());
        let wanted = value.split('\n').nth(line_in_value).unwrap_or("");
        let position = if wanted.trim().is_empty() {
            None
        } else {
            self.text.lines().enumerate().find_map(|(i, line)| {
                line.find(wanted)
                    .map(|at| (i + 1, line[..at].chars().count() + column_in_line + 1))
            })
        };
        let (line, column) = position.unwrap_or((1, 1));
        FileError {
            file: self.file.clone(),
            line,
            column,
            message: format!("{path}: {}", error.message),
        }
    }
}

/// A scalar as text; `None` for mappings and sequences.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Tagged(tagged) => scalar(&tagged.value),
        _ => None,
    }
}

/// A YAML value as JSON (mapping keys become strings).
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(Json::from)
            .or_else(|| n.as_u64().map(Json::from))
            .or_else(|| n.as_f64().map(super::expr::to_number_value))
            .unwrap_or(Json::Null),
        Value::String(s) => Json::String(s.clone()),
        Value::Sequence(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Mapping(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (scalar(k).unwrap_or_default(), to_json(v)))
                .collect(),
        ),
        Value::Tagged(tagged) => to_json(&tagged.value),
    }
}

/// Checks the expressions of one file as it is read.
pub(crate) struct Checker<'a> {
    pub source: &'a Source,
}

impl Checker<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> FileError {
        self.source.error_at_key(key, message)
    }

    /// A string of `map[key]` (a scalar), checked as a template.
    pub fn template(
        &self,
        map: &Mapping,
        key: &str,
        path: &str,
    ) -> Result<Option<String>, FileError> {
        let Some(value) = map.get(key) else {
            return Ok(None);
        };
        let text = scalar(value)
            .ok_or_else(|| self.error(key, format!("{path}.{key} must be a string")))?;
        self.check_template(&format!("{path}.{key}"), &text)?;
        Ok(Some(text))
    }

    pub fn check_template(&self, path: &str, text: &str) -> Result<(), FileError> {
        Template::parse(text)
            .map(drop)
            .map_err(|e| self.source.expression_error(path, text, &e))
    }

    /// An `if:` of `map`, checked.
    pub fn condition(&self, map: &Mapping, path: &str) -> Result<Option<String>, FileError> {
        let Some(value) = map.get("if") else {
            return Ok(None);
        };
        let text =
            scalar(value).ok_or_else(|| self.error("if", format!("{path}.if must be a string")))?;
        Condition::parse(&text).map_err(|e| {
            self.source
                .expression_error(&format!("{path}.if"), &text, &e)
        })?;
        Ok(Some(text))
    }

    /// A mapping of strings (`env`, `with`, `outputs`), each checked as a template.
    pub fn templates(
        &self,
        map: &Mapping,
        key: &str,
        path: &str,
    ) -> Result<BTreeMap<String, String>, FileError> {
        let Some(value) = map.get(key) else {
            return Ok(BTreeMap::new());
        };
        if let Some(text) = value.as_str() {
            // `env: ${{ fromJSON(…) }}` is valid on GitHub but rare; refused with a clear error.
            return Err(self.error(
                key,
                format!("{path}.{key}: a whole-mapping expression ({text}) is not supported; list the keys"),
            ));
        }
        let mapping = value
            .as_mapping()
            .ok_or_else(|| self.error(key, format!("{path}.{key} must be a mapping")))?;
        let mut out = BTreeMap::new();
        for (k, v) in mapping {
            let name = scalar(k)
                .ok_or_else(|| self.error(key, format!("{path}.{key}: keys must be strings")))?;
            let text = match v {
                // `outputs: {x: {value: …}}` in action files.
                Value::Mapping(inner) if inner.contains_key("value") => {
                    inner.get("value").and_then(scalar).unwrap_or_default()
                }
                // A JavaScript action's outputs name only a description: their
                // values come from what the action writes to GITHUB_OUTPUT.
                Value::Mapping(inner)
                    if inner.keys().all(|k| k.as_str() == Some("description")) =>
                {
                    continue
                }
                other => scalar(other).ok_or_else(|| {
                    self.error(&name, format!("{path}.{key}.{name} must be a string"))
                })?,
            };
            self.check_template(&format!("{path}.{key}.{name}"), &text)?;
            out.insert(name, text);
        }
        Ok(out)
    }

    /// `defaults.run`.
    pub fn defaults(&self, map: &Mapping, path: &str) -> Result<RunDefaults, FileError> {
        let Some(run) = map
            .get("defaults")
            .and_then(|d| d.get("run"))
            .and_then(Value::as_mapping)
        else {
            return Ok(RunDefaults::default());
        };
        let path = format!("{path}.defaults.run");
        Ok(RunDefaults {
            shell: self.template(run, "shell", &path)?,
            working_directory: self.template(run, "working-directory", &path)?,
        })
    }

    /// The steps under `map["steps"]`.
    pub fn steps(&self, map: &Mapping, path: &str) -> Result<Vec<WorkflowStep>, FileError> {
        let steps = map
            .get("steps")
            .and_then(Value::as_sequence)
            .ok_or_else(|| self.error("steps", format!("{path} has no steps: list")))?;
        let mut ids: Vec<String> = Vec::new();
        steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let path = format!("{path}.steps[{i}]");
                let step = step
                    .as_mapping()
                    .ok_or_else(|| self.error("steps", format!("{path} must be a mapping")))?;
                let run = self.template(step, "run", &path)?;
                let uses = step.get("uses").and_then(scalar);
                if run.is_some() == uses.is_some() {
                    return Err(self.error(
                        "steps",
                        format!("{path} must have exactly one of run: and uses:"),
                    ));
                }
                let id = step.get("id").and_then(scalar);
                if let Some(id) = &id {
                    let valid = id.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if !valid {
                        return Err(self.error("id", format!("{path}.id {id:?}: ids start with a letter or _ and hold only letters, digits, - and _")));
                    }
                    if ids.contains(id) {
                        return Err(self.error("id", format!("{path}.id {id:?} is used by an earlier step")));
                    }
                    ids.push(id.clone());
                }
                Ok(WorkflowStep {
                    id,
                    name: self.template(step, "name", &path)?,
                    condition: self.condition(step, &path)?,
                    run,
                    uses,
                    with: self.templates(step, "with", &path)?,
                    env: self.templates(step, "env", &path)?,
                    shell: self.template(step, "shell", &path)?,
                    working_directory: self.template(step, "working-directory", &path)?,
                    continue_on_error: self.template(step, "continue-on-error", &path)?,
                    timeout_minutes: self.template(step, "timeout-minutes", &path)?,
                })
            })
            .collect()
    }
}
