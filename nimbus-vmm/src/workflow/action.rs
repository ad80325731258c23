//! `action.yml` of a local action (`uses: ./path`): its inputs, outputs and how
//! it runs. Composite actions run in the guest, JavaScript actions on the
//! guest's Node.js where the assets have it; Docker actions are recognised and
//! refused with a clear message.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::file::{scalar, Checker, Source};
use super::job::WorkflowStep;

/// A parsed action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// `inputs`: name → `default` (a template), if any.
    pub inputs: BTreeMap<String, Option<String>>,
    /// `outputs`: name → `value` (a template).
    pub outputs: BTreeMap<String, String>,
    /// `runs`.
    pub runs: Runs,
}

/// How an action runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Runs {
    /// `using: composite`: its steps.
    Composite(Vec<WorkflowStep>),
    /// `using: node12|node16|node20|node24`: a JavaScript action.
    Node(NodeAction),
    /// Anything else (`docker`, …).
    Other(String),
}

/// The scripts of a JavaScript action, relative to its directory.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAction {
    /// `using` as written (`node20`); the guest's Node.js runs it whatever the version.
    pub using: String,
    /// `main`: the step itself.
    pub main: String,
    /// `pre`: GitHub does not run it for local actions (the action's files are not
    /// there before the job's steps), so neither does the guest.
    pub pre: Option<String>,
    /// `post`: run after the job's steps, last registered first.
    pub post: Option<String>,
    /// `post-if`, default `always()`.
    pub post_if: Option<String>,
}

impl Action {
    /// `runs.using`.
    pub fn using(&self) -> &str {
        match &self.runs {
            Runs::Composite(_) => "composite",
            Runs::Node(node) => &node.using,
            Runs::Other(using) => using,
        }
    }
}

/// Parses an `action.yml`.
pub fn parse(text: &str) -> Result<Action, String> {
    let source = Source::new("action.yml", text);
    let root: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not an action file: {e}"))?;
    let root = root.as_mapping().ok_or("an action file is a mapping")?;
    let checker = Checker { source: &source };
    let mut inputs = BTreeMap::new();
    if let Some(map) = root.get("inputs").and_then(Value::as_mapping) {
        for (name, spec) in map {
            let name = scalar(name).ok_or("inputs: keys must be strings")?;
            let default = spec.get("default").and_then(scalar);
            inputs.insert(name, default);
        }
    }
    let empty = Mapping::new();
    let outputs = checker
        .templates(root, "outputs", "outputs")
        .map_err(|e| e.to_string())?;
    let runs = root
        .get("runs")
        .and_then(Value::as_mapping)
        .unwrap_or(&empty);
    let using = runs.get("using").and_then(scalar).unwrap_or_default();
    let text = |key: &str| runs.get(key).and_then(scalar).filter(|s| !s.is_empty());
    let runs = if using == "composite" {
        let steps = checker.steps(runs, "runs").map_err(|e| e.to_string())?;
        Runs::Composite(steps)
    } else if using.starts_with("node") {
        let main = text("main").ok_or_else(|| format!("runs.main: a {using} action needs one"))?;
        if let Some(post_if) = text("post-if") {
            crate::workflow::expr::Condition::parse(&post_if).map_err(|e| {
                source
                    .expression_error("runs.post-if", &post_if, &e)
                    .to_string()
            })?;
        }
        Runs::Node(NodeAction {
            using,
            main,
            pre: text("pre"),
            post: text("post"),
            post_if: text("post-if"),
        })
    } else {
        Runs::Other(if using.is_empty() {
            "nothing".into()
        } else {
            using
        })
    };
    Ok(Action {
        inputs,
        outputs,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_actions_parse_with_inputs_and_outputs() {
        let action = parse(
            r#"
name: greet
inputs:
  who:
    default: world
  loud: {}
outputs:
  said:
    value: ${{ steps.say.outputs.text }}
runs:
  using: composite
  steps:
    - id: say
      shell: bash
      run: echo "text=hi ${{ inputs.who }}" >> "$GITHUB_OUTPUT"
"#,
        )
        .expect("parses");
        assert_eq!(action.inputs["who"].as_deref(), Some("world"));
        assert_eq!(action.inputs["loud"], None);
        assert_eq!(action.outputs["said"], "${{ steps.say.outputs.text }}");
        let Runs::Composite(steps) = &action.runs else {
            panic!("composite")
        };
        assert_eq!(steps[0].id.as_deref(), Some("say"));
        let node = parse(
            "runs:\n  using: node20\n  main: index.js\n  post: post.js\n  post-if: failure()\n",
        )
        .expect("parses");
        assert_eq!(node.using(), "node20");
        let Runs::Node(scripts) = &node.runs else {
            panic!("a JavaScript action")
        };
        assert_eq!(
            (
                scripts.main.as_str(),
                scripts.post.as_deref(),
                scripts.post_if.as_deref()
            ),
            ("index.js", Some("post.js"), Some("failure()"))
        );
        assert!(
            parse("runs:\n  using: node20\n").is_err(),
            "main is required"
        );
        assert_eq!(
            parse("runs:\n  using: docker\n  image: Dockerfile\n")
                .expect("parses")
                .using(),
            "docker"
        );
        assert!(parse("runs:\n  using: composite\n  steps:\n    - run: ${{ nope }}\n").is_err());
    }
}
