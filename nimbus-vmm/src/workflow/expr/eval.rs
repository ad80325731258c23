//! Evaluating a parsed expression against the contexts of the place it appears in.

use serde_json::{Map, Value};

use super::functions;
use super::parser::{Comparison, Expr};
use super::value::{compare, loose_eq, truthy};
use super::ExprError;

/// How the job (or, for a job's `if:`, the jobs it needs) has gone so far: what
/// `success()`, `failure()` and `cancelled()` answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// An earlier step (or an ancestor job) failed.
    pub failed: bool,
    /// The run was cancelled.
    pub cancelled: bool,
}

/// Answers `hashFiles(patterns…)` where files exist (the job's workspace).
pub type HashFiles = std::sync::Arc<dyn Fn(&[String]) -> Result<String, String> + Send + Sync>;

/// The contexts (`github`, `env`, `matrix`, …) visible at one place of a workflow.
#[derive(Clone, Default)]
pub struct Contexts {
    values: Map<String, Value>,
    /// What the status functions answer.
    pub status: Status,
    /// `hashFiles()`; `None` where GitHub has no files to hash.
    pub hash_files: Option<HashFiles>,
}

impl std::fmt::Debug for Contexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.values.keys().collect();
        f.debug_struct("Contexts")
            .field("contexts", &names)
            .field("status", &self.status)
            .finish()
    }
}

impl Contexts {
    /// No contexts at all (literals and functions still evaluate).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets context `name` (e.g. `"matrix"`).
    pub fn set(&mut self, name: &str, value: Value) -> &mut Self {
        self.values.insert(name.to_ascii_lowercase(), value);
        self
    }

    /// The same contexts with `name` set.
    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.set(name, value);
        self
    }

    /// Context `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(&name.to_ascii_lowercase())
    }

    /// Context `name` for changing in place (created as an empty object).
    pub fn object_mut(&mut self, name: &str) -> &mut Map<String, Value> {
        let slot = self
            .values
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        match slot {
            Value::Object(map) => map,
            _ => unreachable!("replaced by an object above"),
        }
    }

    /// The value of `expr`.
    pub fn evaluate(&self, expr: &Expr) -> Result<Value, ExprError> {
        self.eval(expr).map(|(value, _)| value)
    }

    /// Evaluates to the value and whether it is the result of an object filter
    /// (property access on such an array maps over its items).
    fn eval(&self, expr: &Expr) -> Result<(Value, bool), ExprError> {
        Ok(match expr {
            Expr::Literal(value) => (value.clone(), false),
            Expr::Context(name) => match self.values.get(name) {
                Some(value) => (value.clone(), false),
                None => {
                    return Err(ExprError::new(
                        0,
                        format!("the {name} context is not available here"),
                    ))
                }
            },
            Expr::Property(inner, name) => {
                let (value, filtered) = self.eval(inner)?;
                if filtered {
                    (map_filtered(&value, |item| property(item, name)), true)
                } else {
                    (property(&value, name).unwrap_or(Value::Null), false)
                }
            }
            Expr::Index(inner, index) => {
                let (value, filtered) = self.eval(inner)?;
                let index = self.evaluate(index)?;
                if filtered {
                    (map_filtered(&value, |item| indexed(item, &index)), true)
                } else {
                    (indexed(&value, &index).unwrap_or(Value::Null), false)
                }
            }
            Expr::Filter(inner) => {
                let (value, filtered) = self.eval(inner)?;
                let items = match value {
                    Value::Array(items) if filtered => items
                        .into_iter()
                        .flat_map(|item| match item {
                            Value::Array(nested) => nested,
                            Value::Object(map) => map.into_iter().map(|(_, v)| v).collect(),
                            _ => Vec::new(),
                        })
                        .collect(),
                    Value::Array(items) => items,
                    Value::Object(map) => map.into_iter().map(|(_, v)| v).collect(),
                    _ => Vec::new(),
                };
                (Value::Array(items), true)
            }
            Expr::Not(inner) => (Value::Bool(!truthy(&self.evaluate(inner)?)), false),
            Expr::Compare(left, op, right) => {
                let (a, b) = (self.evaluate(left)?, self.evaluate(right)?);
                let result = match op {
                    Comparison::Eq => loose_eq(&a, &b),
                    Comparison::Ne => !loose_eq(&a, &b),
                    Comparison::Lt => compare(&a, &b).is_some_and(|o| o.is_lt()),
                    Comparison::Le => compare(&a, &b).is_some_and(|o| o.is_le()),
                    Comparison::Gt => compare(&a, &b).is_some_and(|o| o.is_gt()),
                    Comparison::Ge => compare(&a, &b).is_some_and(|o| o.is_ge()),
                };
                (Value::Bool(result), false)
            }
            Expr::And(left, right) => {
                let a = self.evaluate(left)?;
                if truthy(&a) {
                    (self.evaluate(right)?, false)
                } else {
                    (a, false)
                }
            }
            Expr::Or(left, right) => {
                let a = self.evaluate(left)?;
                if truthy(&a) {
                    (a, false)
                } else {
                    (self.evaluate(right)?, false)
                }
            }
            Expr::Call(name, args) => {
                let args = args
                    .iter()
                    .map(|a| self.evaluate(a))
                    .collect::<Result<Vec<_>, _>>()?;
                (functions::call(self, name, &args)?, false)
            }
        })
    }
}

/// An object filter's result, `pick`ed from each of its items: the items
/// without the property (or index) are left out, as are nulls.
fn map_filtered(filtered: &Value, pick: impl Fn(&Value) -> Option<Value>) -> Value {
    let items = match filtered {
        Value::Array(items) => items.as_slice(),
        _ => &[],
    };
    Value::Array(
        items
            .iter()
            .filter_map(pick)
            .filter(|v| !v.is_null())
            .collect(),
    )
}

/// `value.name`: objects' keys match ignoring case (an exact match first).
fn property(value: &Value, name: &str) -> Option<Value> {
    let map = value.as_object()?;
    map.get(name)
        .or_else(|| {
            map.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .cloned()
}

/// `value[index]`: arrays by number, objects by (coerced) string key.
fn indexed(value: &Value, index: &Value) -> Option<Value> {
    match value {
        Value::Array(items) => {
            let n = super::value::to_number(index);
            if n.fract() != 0.0 || n < 0.0 || n.is_nan() {
                return None;
            }
            items.get(n as usize).cloned()
        }
        Value::Object(_) => property(value, &super::value::to_text(index)),
        _ => None,
    }
}
