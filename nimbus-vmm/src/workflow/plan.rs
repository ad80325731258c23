//! A workflow file as a graph of jobs: parsed and checked, ordered by `needs:`
//! into stages, matrices expanded (`include`/`exclude` as GitHub documents
//! them), and the plan `nimbus run --list` prints.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value as Json};
use serde_yaml_ng::Value;

use super::expr::{Contexts, ExprError, Template};
use super::file::{scalar, to_json, Checker, FileError, Source};
use super::job::{RunDefaults, WorkflowStep};

/// Most matrix combinations one job may expand to (GitHub's limit).
pub const MAX_COMBINATIONS: usize = 256;

/// A workflow file, read and checked.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The file's text, for error positions.
    pub source: Source,
    /// `name:`.
    pub name: Option<String>,
    /// The events under `on:`.
    pub events: Vec<String>,
    /// `on.workflow_dispatch.inputs`: name → default.
    pub dispatch_inputs: BTreeMap<String, Option<String>>,
    /// Workflow-level `env:`.
    pub env: BTreeMap<String, String>,
    /// Workflow-level `defaults.run`.
    pub defaults: RunDefaults,
    /// The jobs, in file order.
    pub jobs: Vec<Job>,
}

/// One job of the file (before its matrix is expanded).
#[derive(Debug, Clone)]
pub struct Job {
    /// Its key under `jobs:`.
    pub id: String,
    /// `name:` (a template).
    pub name: Option<String>,
    /// `needs:`.
    pub needs: Vec<String>,
    /// `if:`.
    pub condition: Option<String>,
    /// `runs-on:` as text (informational: every job runs in a Nimbus VM).
    pub runs_on: Option<String>,
    /// `env:`.
    pub env: BTreeMap<String, String>,
    /// `defaults.run`.
    pub defaults: RunDefaults,
    /// `strategy.matrix` (values may hold expressions).
    pub matrix: Option<Json>,
    /// `strategy.fail-fast` (default true).
    pub fail_fast: Option<String>,
    /// `strategy.max-parallel`.
    pub max_parallel: Option<String>,
    /// `outputs:`.
    pub outputs: BTreeMap<String, String>,
    /// `timeout-minutes:` (default 360).
    pub timeout_minutes: Option<String>,
    /// `continue-on-error:`.
    pub continue_on_error: Option<String>,
    /// The steps.
    pub steps: Vec<WorkflowStep>,
}

/// One matrix combination: keys in the order the file gives them.
pub type Combination = Vec<(String, Json)>;

impl Workflow {
    /// Reads and checks a workflow file.
    pub fn parse(file: &str, text: &str) -> Result<Workflow, FileError> {
        let source = Source::new(file, text);
        let checker = Checker { source: &source };
        let root: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            FileError {
                file: file.to_string(),
                line,
                column,
                message: format!("not a workflow file: {e}"),
            }
        })?;
        let root = root
            .as_mapping()
            .ok_or_else(|| source.error_at_key("jobs", "a workflow file is a mapping"))?;
        let (events, dispatch_inputs) = events(root.get("on"));
        let jobs_map = root
            .get("jobs")
            .and_then(Value::as_mapping)
            .ok_or_else(|| source.error_at_key("jobs", "the workflow has no jobs: mapping"))?;
        let mut jobs = Vec::new();
        for (id, job) in jobs_map {
            let id =
                scalar(id).ok_or_else(|| source.error_at_key("jobs", "job ids must be strings"))?;
            let path = format!("jobs.{id}");
            let job = job
                .as_mapping()
                .ok_or_else(|| source.error_at_key(&id, format!("{path} must be a mapping")))?;
            if let Some(uses) = job.get("uses").and_then(scalar) {
                return Err(source.error_at_key(
                    "uses",
                    format!(
                        "{path}: reusable workflows (uses: {uses}) are not supported by nimbus run"
                    ),
                ));
            }
            let needs = match job.get("needs") {
                None => Vec::new(),
                Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
                Some(other) => scalar(other).into_iter().collect(),
            };
            let strategy = job.get("strategy").and_then(Value::as_mapping);
            let matrix = strategy.and_then(|s| s.get("matrix")).map(to_json);
            if let Some(matrix) = &matrix {
                check_json_templates(&checker, &format!("{path}.strategy.matrix"), matrix)?;
            }
            let strategy_field = |key: &str| -> Result<Option<String>, FileError> {
                match strategy {
                    Some(s) => checker.template(s, key, &format!("{path}.strategy")),
                    None => Ok(None),
                }
            };
            let runs_on = match job.get("runs-on") {
                Some(value) => {
                    let text = scalar(value).unwrap_or_else(|| to_json(value).to_string());
                    checker.check_template(&format!("{path}.runs-on"), &text)?;
                    Some(text)
                }
                None => None,
            };
            jobs.push(Job {
                name: checker.template(job, "name", &path)?,
                needs,
                condition: checker.condition(job, &path)?,
                runs_on,
                env: checker.templates(job, "env", &path)?,
                defaults: checker.defaults(job, &path)?,
                matrix,
                fail_fast: strategy_field("fail-fast")?,
                max_parallel: strategy_field("max-parallel")?,
                outputs: checker.templates(job, "outputs", &path)?,
                timeout_minutes: checker.template(job, "timeout-minutes", &path)?,
                continue_on_error: checker.template(job, "continue-on-error", &path)?,
                steps: checker.steps(job, &path)?,
                id,
            });
        }
        if jobs.is_empty() {
            return Err(source.error_at_key("jobs", "the workflow has no jobs"));
        }
        let workflow = Workflow {
            name: root.get("name").and_then(scalar),
            events,
            dispatch_inputs,
            env: checker.templates(root, "env", "")?,
            defaults: checker.defaults(root, "")?,
            jobs,
            source: source.clone(),
        };
        workflow.stages()?;
        Ok(workflow)
    }

    /// The file's text.
    pub fn source_text(&self) -> &str {
        self.source.text()
    }

    /// The job with this id.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// The jobs in stages: each stage needs only jobs of earlier ones. Unknown
    /// `needs:` and cycles are errors.
    pub fn stages(&self) -> Result<Vec<Vec<&Job>>, FileError> {
        for job in &self.jobs {
            for need in &job.needs {
                if self.job(need).is_none() {
                    return Err(self.source.error_at_key(
                        "needs",
                        format!("jobs.{}.needs: there is no job {need:?}", job.id),
                    ));
                }
            }
        }
        let mut placed: BTreeSet<&str> = BTreeSet::new();
        let mut stages = Vec::new();
        while placed.len() < self.jobs.len() {
            let stage: Vec<&Job> = self
                .jobs
                .iter()
                .filter(|j| !placed.contains(j.id.as_str()))
                .filter(|j| j.needs.iter().all(|n| placed.contains(n.as_str())))
                .collect();
            if stage.is_empty() {
                let stuck: Vec<&str> = self
                    .jobs
                    .iter()
                    .filter(|j| !placed.contains(j.id.as_str()))
                    .map(|j| j.id.as_str())
                    .collect();
                return Err(self.source.error_at_key(
                    "needs",
                    format!("the needs: of jobs {} form a cycle", stuck.join(", ")),
                ));
            }
            placed.extend(stage.iter().map(|j| j.id.as_str()));
            stages.push(stage);
        }
        Ok(stages)
    }

    /// `only` and every job it needs, transitively (all jobs when `only` is empty).
    pub fn selection(&self, only: &[String]) -> Result<BTreeSet<String>, String> {
        if only.is_empty() {
            return Ok(self.jobs.iter().map(|j| j.id.clone()).collect());
        }
        let mut wanted: Vec<String> = Vec::new();
        for name in only {
            let job = self
                .jobs
                .iter()
                .find(|j| &j.id == name || j.name.as_deref() == Some(name.as_str()))
                .ok_or_else(|| format!("no job {name:?} in the workflow"))?;
            wanted.push(job.id.clone());
        }
        let mut selected = BTreeSet::new();
        while let Some(id) = wanted.pop() {
            if selected.insert(id.clone()) {
                if let Some(job) = self.job(&id) {
                    wanted.extend(job.needs.iter().cloned());
                }
            }
        }
        Ok(selected)
    }
}

fn events(on: Option<&Value>) -> (Vec<String>, BTreeMap<String, Option<String>>) {
    let mut inputs = BTreeMap::new();
    let events = match on {
        Some(Value::String(event)) => vec![event.clone()],
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        Some(Value::Mapping(map)) => {
            if let Some(defined) = map
                .get("workflow_dispatch")
                .and_then(|d| d.get("inputs"))
                .and_then(Value::as_mapping)
            {
                for (name, spec) in defined {
                    if let Some(name) = scalar(name) {
                        inputs.insert(name, spec.get("default").and_then(scalar));
                    }
                }
            }
            map.keys().filter_map(scalar).collect()
        }
        _ => Vec::new(),
    };
    (events, inputs)
}

fn check_json_templates(checker: &Checker, path: &str, value: &Json) -> Result<(), FileError> {
    match value {
        Json::String(text) => checker.check_template(path, text),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_json_templates(checker, &format!("{path}[{i}]"), v)),
        Json::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_json_templates(checker, &format!("{path}.{k}"), v)),
        _ => Ok(()),
    }
}

/// Evaluates every expression in a matrix definition; a string that is one
/// expression keeps its value's type (`${{ fromJSON(…) }}` gives a list).
pub fn evaluate_json(value: &Json, contexts: &Contexts) -> Result<Json, ExprError> {
    Ok(match value {
        Json::String(text) if text.contains("${{") => Template::parse(text)?.value(contexts)?,
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|v| evaluate_json(v, contexts))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), evaluate_json(v, contexts)?)))
                .collect::<Result<Map<_, _>, ExprError>>()?,
        ),
        other => other.clone(),
    })
}

/// The combinations of an evaluated `strategy.matrix` (one empty combination without one).
///
/// `key_order` gives the keys' order in the file (serde_json sorts object keys).
pub fn combinations(
    matrix: Option<&Json>,
    key_order: &[String],
) -> Result<Vec<Combination>, String> {
    let Some(matrix) = matrix else {
        return Ok(vec![Vec::new()]);
    };
    let matrix = matrix
        .as_object()
        .ok_or("strategy.matrix must be a mapping (or an expression that gives one)")?;
    let mut keys: Vec<&String> = matrix
        .keys()
        .filter(|k| *k != "include" && *k != "exclude")
        .collect();
    keys.sort_by_key(|k| key_order.iter().position(|o| o == *k).unwrap_or(usize::MAX));
    let mut combos: Vec<Combination> = vec![Vec::new()];
    for key in &keys {
        let values = matrix[*key]
            .as_array()
            .ok_or_else(|| format!("matrix.{key} must be a list"))?;
        if values.is_empty() {
            return Err(format!("matrix.{key} is an empty list"));
        }
        let mut next = Vec::new();
        for combo in &combos {
            for value in values {
                let mut extended = combo.clone();
                extended.push(((*key).clone(), value.clone()));
                next.push(extended);
                if next.len() > MAX_COMBINATIONS {
                    return Err(format!(
                        "the matrix has more than {MAX_COMBINATIONS} combinations"
                    ));
                }
            }
        }
        combos = next;
    }
    let entries = |name: &str| -> Result<Vec<Map<String, Json>>, String> {
        match matrix.get(name) {
            None => Ok(Vec::new()),
            Some(Json::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_object()
                        .cloned()
                        .ok_or_else(|| format!("matrix.{name} entries must be mappings"))
                })
                .collect(),
            Some(_) => Err(format!("matrix.{name} must be a list")),
        }
    };
    let matches = |combo: &Combination, entry: &Map<String, Json>| {
        entry.iter().all(|(k, v)| {
            combo
                .iter()
                .find(|(ck, _)| ck == k)
                .is_some_and(|(_, cv)| cv == v)
        })
    };
    let exclude = entries("exclude")?;
    if !keys.is_empty() {
        combos.retain(|combo| !exclude.iter().any(|ex| matches(combo, ex)));
    }
    let original: Vec<String> = keys.iter().map(|k| (*k).clone()).collect();
    let base = combos.len();
    for entry in entries("include")? {
        // Added to every original combination whose original values it does not
        // overwrite; a new combination when it fits none.
        let mut added = false;
        // Without matrix keys of its own, a matrix is its include entries.
        let originals = if original.is_empty() { 0 } else { base };
        for combo in combos.iter_mut().take(originals) {
            let fits = entry.iter().all(|(k, v)| {
                !original.contains(k) || combo.iter().any(|(ck, cv)| ck == k && cv == v)
            });
            if fits {
                for (k, v) in &entry {
                    match combo.iter_mut().find(|(ck, _)| ck == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => combo.push((k.clone(), v.clone())),
                    }
                }
                added = true;
            }
        }
        if !added {
            let mut combo: Combination = entry.into_iter().collect();
            combo.sort_by_key(|(k, _)| key_order.iter().position(|o| o == k).unwrap_or(usize::MAX));
            if combos.len() == 1 && combos[0].is_empty() {
                combos.clear();
            }
            combos.push(combo);
        }
        if combos.len() > MAX_COMBINATIONS {
            return Err(format!(
                "the matrix has more than {MAX_COMBINATIONS} combinations"
            ));
        }
    }
    if combos.is_empty() {
        return Err("the matrix excludes every combination".into());
    }
    Ok(combos)
}

/// The order keys appear in a job's `strategy.matrix` in the file's text.
pub fn matrix_key_order(source_text: &str, matrix: &Json) -> Vec<String> {
    let mut keys: Vec<(usize, String)> = Vec::new();
    let mut collect = |map: &Map<String, Json>| {
        for key in map.keys() {
            let needle = format!("{key}:");
            let at = source_text.find(&needle).unwrap_or(usize::MAX);
            if !keys.iter().any(|(_, k)| k == key) {
                keys.push((at, key.clone()));
            }
        }
    };
    if let Some(map) = matrix.as_object() {
        collect(map);
        for list in ["include", "exclude"] {
            if let Some(Json::Array(items)) = map.get(list) {
                for item in items.iter().filter_map(Json::as_object) {
                    collect(item);
                }
            }
        }
    }
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

/// A combination as the `matrix` context.
pub fn matrix_context(combo: &Combination) -> Json {
    Json::Object(combo.iter().cloned().collect())
}

/// `name (v1, v2)`: a matrix job's default display name.
pub fn display_name(base: &str, combo: &Combination) -> String {
    if combo.is_empty() {
        return base.to_string();
    }
    let values: Vec<String> = combo
        .iter()
        .map(|(_, v)| match v {
            Json::String(s) => s.clone(),
            other => super::expr::to_text(other),
        })
        .collect();
    format!("{base} ({})", values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn combos(matrix: Json) -> Vec<Json> {
        let order = [
            "os",
            "version",
            "env",
            "experimental",
            "npm",
            "fruit",
            "animal",
            "color",
            "shape",
        ]
        .map(String::from);
        combinations(Some(&matrix), &order)
            .expect("expands")
            .iter()
            .map(matrix_context)
            .collect()
    }

    #[test]
    fn include_and_exclude_follow_githubs_documented_examples() {
        // docs: "Expanding or adding matrix configurations"
        let out = combos(json!({
            "fruit": ["apple", "pear"],
            "animal": ["cat", "dog"],
            "include": [
                {"color": "green"},
                {"color": "pink", "animal": "cat"},
                {"fruit": "apple", "shape": "circle"},
                {"fruit": "banana"},
                {"fruit": "banana", "animal": "cat"}
            ]
        }));
        assert_eq!(
            out,
            vec![
                json!({"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"}),
                json!({"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"}),
                json!({"fruit": "pear", "animal": "cat", "color": "pink"}),
                json!({"fruit": "pear", "animal": "dog", "color": "green"}),
                json!({"fruit": "banana"}),
                json!({"fruit": "banana", "animal": "cat"}),
            ]
        );
        // docs: "Excluding matrix configurations"
        let out = combos(json!({
            "os": ["macos-latest", "windows-latest"],
            "version": [12, 14, 16],
            "environment": ["staging", "production"],
            "exclude": [
                {"os": "macos-latest", "version": 12, "environment": "production"},
                {"os": "windows-latest", "version": 16}
            ]
        }));
        assert_eq!(out.len(), 12 - 1 - 2);
        // Only include: each entry is a job.
        let out = combos(json!({"include": [{"site": "a"}, {"site": "b"}]}));
        assert_eq!(out, vec![json!({"site": "a"}), json!({"site": "b"})]);
        assert!(combinations(Some(&json!({"os": []})), &[]).is_err());
        let big: Vec<i32> = (0..20).collect();
        assert!(combinations(Some(&json!({"a": big, "b": big})), &[])
            .expect_err("too many")
            .contains("256"));
    }

    const WORKFLOW: &str = r#"
name: CI
on:
  push:
  workflow_dispatch:
    inputs:
      level:
        default: info
jobs:
  build:
    runs-on: ubuntu-latest
    outputs:
      version: ${{ steps.v.outputs.version }}
    steps:
      - id: v
        run: echo "version=1" >> "$GITHUB_OUTPUT"
  test:
    needs: build
    strategy:
      matrix:
        os: [debian, alpine]
    steps:
      - run: echo ${{ needs.build.outputs.version }}
  deploy:
    needs: [build, test]
    if: github.ref == 'refs/heads/main'
    steps:
      - uses: ./.github/actions/deploy
"#;

    #[test]
    fn jobs_form_stages_by_needs() {
        let workflow = Workflow::parse("ci.yml", WORKFLOW).expect("parses");
        assert_eq!(workflow.events, ["push", "workflow_dispatch"]);
        assert_eq!(workflow.dispatch_inputs["level"].as_deref(), Some("info"));
        let stages: Vec<Vec<&str>> = workflow
            .stages()
            .expect("stages")
            .iter()
            .map(|s| s.iter().map(|j| j.id.as_str()).collect())
            .collect();
        assert_eq!(stages, vec![vec!["build"], vec!["test"], vec!["deploy"]]);
        assert_eq!(
            workflow.selection(&["test".into()]).expect("selects"),
            BTreeSet::from(["build".to_string(), "test".to_string()])
        );
        assert!(workflow.selection(&["nope".into()]).is_err());
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let bad = WORKFLOW.replace("needs.build.outputs.version }}", "needs.build.outputs. }}");
        let error = Workflow::parse("ci.yml", &bad).expect_err("bad");
        assert_eq!((error.line, error.column), (23, 44), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("ci.yml:23:44: jobs.test.steps[0].run:"),
            "{error}"
        );

        let cycle = WORKFLOW.replace("needs: build", "needs: deploy");
        let error = Workflow::parse("ci.yml", &cycle).expect_err("cycle");
        assert!(error.message.contains("cycle"), "{error}");
        let unknown = WORKFLOW.replace("needs: build", "needs: nothing");
        assert!(Workflow::parse("ci.yml", &unknown)
            .expect_err("unknown")
            .message
            .contains("no job \"nothing\""));
        let yaml = Workflow::parse("ci.yml", "jobs: [").expect_err("yaml");
        assert!(yaml.message.contains("not a workflow file"));
        let both = "jobs:\n  a:\n    steps:\n      - run: x\n        uses: y\n";
        assert!(Workflow::parse("w.yml", both)
            .expect_err("both")
            .message
            .contains("exactly one"));
        let duplicate =
            "jobs:\n  a:\n    steps:\n      - {id: s, run: x}\n      - {id: s, run: y}\n";
        assert!(Workflow::parse("w.yml", duplicate).is_err());
    }

    #[test]
    fn matrices_with_expressions_evaluate_against_needs() {
        let contexts = Contexts::new().with(
            "needs",
            json!({"setup": {"outputs": {"targets": "[\"x86\", \"arm\"]"}}}),
        );
        let matrix = json!({"target": "${{ fromJSON(needs.setup.outputs.targets) }}"});
        let evaluated = evaluate_json(&matrix, &contexts).expect("evaluates");
        let out = combinations(Some(&evaluated), &["target".into()]).expect("expands");
        assert_eq!(out.len(), 2);
        assert_eq!(display_name("build", &out[1]), "build (arm)");
    }
}
