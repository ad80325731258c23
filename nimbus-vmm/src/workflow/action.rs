//! `action.yml` of a local action (`uses: ./path`): its inputs, outputs and how
//! it runs. Composite actions run in the guest; JavaScript and Docker actions
//! are recognised and refused with a clear message.

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
    /// Anything else (`node20`, `docker`, …).
    Other(String),
}

impl Action {
    /// `runs.using`.
    pub fn using(&self) -> &str {
        match &self.runs {
            Runs::Composite(_) => "composite",
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
    let runs = if using == "composite" {
        let steps = checker.steps(runs, "runs").map_err(|e| e.to_string())?;
        Runs::Composite(steps)
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
        let node = parse("runs:\n  using: node20\n  main: index.js\n").expect("parses");
        assert_eq!(node.using(), "node20");
        assert!(parse("runs:\n  using: composite\n  steps:\n    - run: ${{ nope }}\n").is_err());
    }
}
