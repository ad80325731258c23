//! The expression functions: `contains`, `startsWith`, `endsWith`, `format`,
//! `join`, `toJSON`, `fromJSON`, `hashFiles` and the status functions.

use serde_json::Value;

use super::eval::Contexts;
use super::value::{fold, loose_eq, to_text};
use super::ExprError;

/// Calls function `name` (lower-case; its arity was checked by the parser).
pub(super) fn call(contexts: &Contexts, name: &str, args: &[Value]) -> Result<Value, ExprError> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
    let status = contexts.status;
    Ok(match name {
        "contains" => Value::Bool(match arg(0) {
            Value::Array(items) => items.iter().any(|item| loose_eq(item, &arg(1))),
            search => fold(&to_text(&search)).contains(&fold(&to_text(&arg(1)))),
        }),
        "startswith" => Value::Bool(fold(&to_text(&arg(0))).starts_with(&fold(&to_text(&arg(1))))),
        "endswith" => Value::Bool(fold(&to_text(&arg(0))).ends_with(&fold(&to_text(&arg(1))))),
        "format" => Value::String(format(&to_text(&arg(0)), &args[1..])?),
        "join" => {
            let separator = args.get(1).map_or_else(|| ",".to_string(), to_text);
            Value::String(match arg(0) {
                Value::Array(items) => items
                    .iter()
                    .map(to_text)
                    .collect::<Vec<_>>()
                    .join(&separator),
                other => to_text(&other),
            })
        }
        "tojson" => Value::String(
            serde_json::to_string_pretty(&arg(0))
                .map_err(|e| ExprError::new(0, format!("toJSON: {e}")))?,
        ),
        "fromjson" => {
            let text = to_text(&arg(0));
            serde_json::from_str(&text).map_err(|e| {
                ExprError::new(0, format!("fromJSON: {text:?} is not valid JSON: {e}"))
            })?
        }
        "hashfiles" => {
            let Some(hash_files) = &contexts.hash_files else {
                return Err(ExprError::new(
                    0,
                    "hashFiles() is only available in a job's steps",
                ));
            };
            let patterns: Vec<String> = args.iter().map(to_text).collect();
            Value::String(
                hash_files(&patterns).map_err(|e| ExprError::new(0, format!("hashFiles: {e}")))?,
            )
        }
        "success" => Value::Bool(!status.failed && !status.cancelled),
        "failure" => Value::Bool(status.failed && !status.cancelled),
        "cancelled" => Value::Bool(status.cancelled),
        "always" => Value::Bool(true),
        other => {
            return Err(ExprError::new(
                0,
                format!("unrecognized function: '{other}'"),
            ))
        }
    })
}

/// `format('{0} {1}', a, b)`: `{N}` replaced by argument N, `{{` and `}}` are braces.
fn format(template: &str, args: &[Value]) -> Result<String, ExprError> {
    let invalid = || ExprError::new(0, format!("format: invalid format string {template:?}"));
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut digits = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(d) if d.is_ascii_digit() && digits.len() < 4 => digits.push(d),
                        _ => return Err(invalid()),
                    }
                }
                let index: usize = digits.parse().map_err(|_| invalid())?;
                let value = args.get(index).ok_or_else(|| {
                    ExprError::new(
                        0,
                        format!("format: {{{index}}} has no argument in {template:?}"),
                    )
                })?;
                out.push_str(&to_text(value));
            }
            '}' => return Err(invalid()),
            c => out.push(c),
        }
    }
    Ok(out)
}
