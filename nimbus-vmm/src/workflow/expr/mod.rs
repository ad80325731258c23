//! GitHub Actions expressions (`${{ … }}`): a lexer and recursive-descent parser
//! into [`Expr`], and an evaluator over [`Contexts`] with GitHub's coercion rules
//! and functions. Pure: no I/O except through the `hashFiles` hook, so the host
//! (planning, job-level `if:`, matrices) and the guest (steps) share it.
//!
//! [`Template`] is a string with embedded expressions (`run:`, `env`, `with`, …);
//! [`Condition`] is an `if:` (`${{ }}` optional, an implicit `success() &&`
//! unless a status function is called).

mod eval;
mod functions;
mod lexer;
mod parser;
mod value;

pub use eval::{Contexts, HashFiles, Status};
pub use parser::{parse, Comparison, Expr, CONTEXTS, MAX_EXPRESSION_CHARS, STATUS_FUNCTIONS};
pub use value::{format_number, loose_eq, number as to_number_value, to_number, to_text, truthy};

use serde_json::Value;

/// A syntax or evaluation error, at a byte offset of the text it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// Byte offset in the expression (or template) text.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl ExprError {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> Self {
        ExprError {
            offset,
            message: message.into(),
        }
    }

    fn shifted(mut self, by: usize) -> Self {
        self.offset += by;
        self
    }
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Text copied as it is.
    Text(String),
    /// `${{ expr }}`, with the offset of the expression's text in the template.
    Expr(Expr, usize),
}

/// A string with `${{ }}` expressions in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; every expression in it is checked.
    pub fn parse(text: &str) -> Result<Template, ExprError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut consumed = 0;
        while let Some(start) = rest.find("${{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let inner_start = start + 3;
            let end = closing_braces(&rest[inner_start..]).ok_or_else(|| {
                ExprError::new(consumed + start, "the expression has no closing '}}'")
            })?;
            let inner = &rest[inner_start..inner_start + end];
            let expr = parse(inner).map_err(|e| e.shifted(consumed + inner_start))?;
            parts.push(Part::Expr(expr, consumed + inner_start));
            consumed += inner_start + end + 2;
            rest = &rest[inner_start + end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Whether the template has no expressions.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The template's parts.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Every expression in the template.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e, _) => Some(e),
            Part::Text(_) => None,
        })
    }

    /// The template as a string, expressions replaced by their values' text.
    pub fn render(&self, contexts: &Contexts) -> Result<String, ExprError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Expr(expr, offset) => out.push_str(&to_text(
                    &contexts.evaluate(expr).map_err(|e| e.shifted(*offset))?,
                )),
            }
        }
        Ok(out)
    }

    /// The value: a template that is one expression and nothing else keeps the
    /// expression's type (an object for `${{ fromJSON(…) }}`), anything else is a string.
    pub fn value(&self, contexts: &Contexts) -> Result<Value, ExprError> {
        match self.parts.as_slice() {
            [Part::Expr(expr, offset)] => contexts.evaluate(expr).map_err(|e| e.shifted(*offset)),
            _ => self.render(contexts).map(Value::String),
        }
    }
}

/// Where the `}}` closing an expression is, outside its string literals.
fn closing_braces(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => in_string = !in_string,
            b'}' if !in_string && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// An `if:` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A bare expression, or one `${{ }}` around all of it.
    Expr(Expr),
    /// Text with expressions in it: true when the rendered text is not empty
    /// (GitHub's documented trap: `${{ false }} && x` is a non-empty string).
    Template(Template),
}

impl Condition {
    /// Parses an `if:` value; a condition with no status function in it
    /// means `success() && (…)`.
    pub fn parse(text: &str) -> Result<Condition, ExprError> {
        let trimmed = text.trim();
        let lead = text.len() - text.trim_start().len();
        let whole = trimmed
            .strip_prefix("${{")
            .and_then(|inner| inner.strip_suffix("}}"))
            .filter(|inner| closing_braces(inner).is_none());
        let expr = match whole {
            Some(inner) => parse(inner).map_err(|e| e.shifted(lead + 3))?,
            None if trimmed.contains("${{") => {
                return Template::parse(text).map(Condition::Template)
            }
            None => parse(trimmed).map_err(|e| e.shifted(lead))?,
        };
        Ok(Condition::Expr(if expr.calls_status_function() {
            expr
        } else {
            Expr::And(
                Box::new(Expr::Call("success".into(), Vec::new())),
                Box::new(expr),
            )
        }))
    }

    /// Whether the condition holds.
    pub fn holds(&self, contexts: &Contexts) -> Result<bool, ExprError> {
        match self {
            Condition::Expr(expr) => contexts.evaluate(expr).map(|v| truthy(&v)),
            Condition::Template(template) => template.render(contexts).map(|s| !s.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contexts() -> Contexts {
        Contexts::new()
            .with(
                "github",
                json!({"event_name": "push", "ref": "refs/heads/main",
                       "event": {"labels": [{"name": "bug"}, {"name": "ci"}, {"other": 1}]}}),
            )
            .with("matrix", json!({"os": "debian", "version": 3}))
            .with(
                "steps",
                json!({"build-it": {"outputs": {"n": "5"}, "outcome": "success"}}),
            )
            .with(
                "needs",
                json!({"a": {"outputs": {"list": "[1,2]"}}, "b": {"outputs": {"list": "[3]"}}}),
            )
            .with("env", json!({"GREETING": "hi"}))
    }

    fn eval(text: &str) -> Value {
        let expr = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        contexts()
            .evaluate(&expr)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_documented_examples_evaluate_as_on_github() {
        let cases = [
            ("github.event_name == 'PUSH'", json!(true)),
            ("github['ref']", json!("refs/heads/main")),
            ("GitHub.Event.Labels.*.name", json!(["bug", "ci"])),
            ("contains(github.event.labels.*.name, 'BUG')", json!(true)),
            ("contains('Hello world', 'llo')", json!(true)),
            ("startsWith('Hello world', 'he')", json!(true)),
            ("endsWith('Hello world', 'LD')", json!(true)),
            ("format('{0} {{x}} {1}', 'a', 3)", json!("a {x} 3")),
            ("join(github.event.labels.*.name, ', ')", json!("bug, ci")),
            ("join('solo')", json!("solo")),
            ("fromJSON('{\"a\": [1, 2]}').a[1]", json!(2)),
            (
                "toJSON(matrix)",
                json!("{\n  \"os\": \"debian\",\n  \"version\": 3\n}"),
            ),
            ("steps.build-it.outputs.n > 4", json!(true)),
            ("matrix.missing", json!(null)),
            ("matrix.missing.deeper", json!(null)),
            ("1 && 'x'", json!("x")),
            ("'' || 'default'", json!("default")),
            ("!matrix.missing", json!(true)),
            ("needs.*.outputs.list", json!(["[1,2]", "[3]"])),
            ("0x10 == 16", json!(true)),
            ("'abc' < 'ABD'", json!(true)),
            ("null == 0", json!(true)),
            ("fromJSON('[\"a\",\"b\"]')[*]", json!(["a", "b"])),
        ];
        for (text, expected) in cases {
            assert_eq!(eval(text), expected, "{text}");
        }
    }

    #[test]
    fn templates_render_and_keep_types() {
        let c = contexts();
        let t = Template::parse("on ${{ matrix.os }} v${{ matrix.version }}${{ matrix.none }}!")
            .expect("parses");
        assert_eq!(t.render(&c).expect("renders"), "on debian v3!");
        let whole = Template::parse("${{ fromJSON(needs.a.outputs.list) }}").expect("parses");
        assert_eq!(whole.value(&c).expect("value"), json!([1, 2]));
        let braces = Template::parse("${{ '}}' }} and ${{ 'x' }}").expect("parses");
        assert_eq!(braces.render(&c).expect("renders"), "}} and x");
        assert!(Template::parse("plain").expect("parses").is_literal());
        let error = Template::parse("echo ${{ matrix. }}").expect_err("bad");
        assert_eq!(error.offset, 17, "{error}");
        let open = Template::parse("a ${{ b").expect_err("bad");
        assert_eq!(open.offset, 2);
    }

    #[test]
    fn conditions_imply_success_unless_they_call_a_status_function() {
        let mut c = contexts();
        let holds = |text: &str, c: &Contexts| {
            Condition::parse(text)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .holds(c)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
        };
        assert!(holds("matrix.os == 'debian'", &c));
        assert!(holds("${{ matrix.os == 'debian' }}", &c));
        c.status.failed = true;
        assert!(!holds("matrix.os == 'debian'", &c), "implicit success()");
        assert!(holds("failure() && matrix.os == 'debian'", &c));
        assert!(holds("always()", &c));
        assert!(!holds("cancelled()", &c));
        assert!(!holds("success()", &c));
        // The documented trap: text around an expression is a non-empty string.
        c.status.failed = false;
        assert!(holds("${{ false }} && true", &c));
        let error = Condition::parse("  ${{ matrix.os = 1 }}").expect_err("bad");
        assert_eq!(error.offset, 16, "{error}");
    }

    #[test]
    fn evaluation_errors_are_errors_not_panics() {
        let c = Contexts::new();
        for text in [
            "fromJSON('{')",
            "format('{0')",
            "format('{1}', 'a')",
            "hashFiles('*.lock')",
            "secrets.TOKEN",
        ] {
            let expr = parse(text).expect(text);
            assert!(c.evaluate(&expr).is_err(), "{text}");
        }
    }
}
