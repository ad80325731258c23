//! Expressions parsed into a tree, checked as GitHub checks them before a run:
//! known contexts and functions, the right number of arguments, bounded nesting.

use serde_json::Value;

use super::lexer::{tokenize, Token, TokenKind};
use super::value::number;
use super::ExprError;

/// Deepest nesting of parentheses, operators and accesses one expression may have
/// (a bound for untrusted workflow files; GitHub's own is 50).
const MAX_DEPTH: usize = 50;
/// Longest expression accepted (GitHub: 21,000 characters).
pub const MAX_EXPRESSION_CHARS: usize = 21_000;

/// The contexts an expression may name.
pub const CONTEXTS: &[&str] = &[
    "github", "env", "vars", "secrets", "inputs", "matrix", "strategy", "needs", "steps", "job",
    "jobs", "runner",
];

/// Functions: name, fewest and most arguments.
const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("contains", 2, 2),
    ("startswith", 2, 2),
    ("endswith", 2, 2),
    ("format", 1, usize::MAX),
    ("join", 1, 2),
    ("tojson", 1, 1),
    ("fromjson", 1, 1),
    ("hashfiles", 1, usize::MAX),
    ("success", 0, 0),
    ("always", 0, 0),
    ("cancelled", 0, 0),
    ("failure", 0, 0),
];

/// Status functions: an `if:` without one is `success() && (…)`.
pub const STATUS_FUNCTIONS: &[&str] = &["success", "always", "cancelled", "failure"];

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `null`, `true`, a number or a string.
    Literal(Value),
    /// A context by its (lower-case) name, e.g. `github`.
    Context(String),
    /// `value.name`.
    Property(Box<Expr>, String),
    /// `value[index]`.
    Index(Box<Expr>, Box<Expr>),
    /// `value.*` or `value[*]`: the object filter.
    Filter(Box<Expr>),
    /// `!value`.
    Not(Box<Expr>),
    /// `<`, `<=`, `>`, `>=`, `==`, `!=`.
    Compare(Box<Expr>, Comparison, Box<Expr>),
    /// `a && b`: `a` if falsy, else `b`.
    And(Box<Expr>, Box<Expr>),
    /// `a || b`: `a` if truthy, else `b`.
    Or(Box<Expr>, Box<Expr>),
    /// A function call; the name is lower-case.
    Call(String, Vec<Expr>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Expr {
    /// Whether a status function is called anywhere in the expression.
    pub fn calls_status_function(&self) -> bool {
        let mut found = false;
        self.walk(&mut |e| {
            if let Expr::Call(name, _) = e {
                found |= STATUS_FUNCTIONS.contains(&name.as_str());
            }
        });
        found
    }

    /// The contexts the expression reads.
    pub fn contexts(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Context(name) = e {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        });
        names
    }

    fn walk(&self, visit: &mut dyn FnMut(&Expr)) {
        visit(self);
        match self {
            Expr::Literal(_) | Expr::Context(_) => {}
            Expr::Property(inner, _) | Expr::Filter(inner) | Expr::Not(inner) => inner.walk(visit),
            Expr::Index(a, b) | Expr::Compare(a, _, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.walk(visit);
                b.walk(visit);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.walk(visit)),
        }
    }
}

/// Parses one expression (the text between `${{` and `}}`).
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    if text.chars().count() > MAX_EXPRESSION_CHARS {
        return Err(ExprError::new(
            0,
            format!("the expression is longer than {MAX_EXPRESSION_CHARS} characters"),
        ));
    }
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err(ExprError::new(0, "empty expression"));
    }
    let mut parser = Parser {
        tokens,
        at: 0,
        end: text.len(),
        depth: 0,
    };
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok(expr),
        Some(token) => Err(ExprError::new(
            token.offset,
            format!("unexpected {}", describe(&token.kind)),
        )),
    }
}

fn describe(kind: &TokenKind) -> String {
    match kind {
        TokenKind::Number(n) => format!("number {n}"),
        TokenKind::String(s) => format!("string '{s}'"),
        TokenKind::Ident(name) => format!("'{name}'"),
        TokenKind::Dot => "'.'".into(),
        TokenKind::Star => "'*'".into(),
        TokenKind::Comma => "','".into(),
        TokenKind::LParen => "'('".into(),
        TokenKind::RParen => "')'".into(),
        TokenKind::LBracket => "'['".into(),
        TokenKind::RBracket => "']'".into(),
        TokenKind::Not => "'!'".into(),
        TokenKind::Lt => "'<'".into(),
        TokenKind::Le => "'<='".into(),
        TokenKind::Gt => "'>'".into(),
        TokenKind::Ge => "'>='".into(),
        TokenKind::Eq => "'=='".into(),
        TokenKind::Ne => "'!='".into(),
        TokenKind::And => "'&&'".into(),
        TokenKind::Or => "'||'".into(),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Offset of the end of the text (for "unexpected end" errors).
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, kind: &TokenKind) -> bool {
        if self.peek().is_some_and(|t| &t.kind == kind) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kind: TokenKind) -> Result<(), ExprError> {
        if self.eat(&kind) {
            return Ok(());
        }
        Err(self.unexpected(&format!("expected {}", describe(&kind))))
    }

    fn unexpected(&self, wanted: &str) -> ExprError {
        match self.peek() {
            Some(token) => ExprError::new(
                token.offset,
                format!("{wanted}, found {}", describe(&token.kind)),
            ),
            None => ExprError::new(self.end, format!("{wanted}, found the end")),
        }
    }

    fn nested<T>(
        &mut self,
        inner: impl FnOnce(&mut Self) -> Result<T, ExprError>,
    ) -> Result<T, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let offset = self.peek().map_or(self.end, |t| t.offset);
            return Err(ExprError::new(
                offset,
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        let result = inner(self);
        self.depth -= 1;
        result
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        self.nested(|p| {
            let mut left = p.and()?;
            while p.eat(&TokenKind::Or) {
                left = Expr::Or(Box::new(left), Box::new(p.and()?));
            }
            Ok(left)
        })
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.equality()?;
        while self.eat(&TokenKind::And) {
            left = Expr::And(Box::new(left), Box::new(self.equality()?));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.comparison()?;
        loop {
            let op = match self.peek().map(|t| &t.kind) {
                Some(TokenKind::Eq) => Comparison::Eq,
                Some(TokenKind::Ne) => Comparison::Ne,
                _ => return Ok(left),
            };
            self.at += 1;
            left = Expr::Compare(Box::new(left), op, Box::new(self.comparison()?));
        }
    }

    fn comparison(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().map(|t| &t.kind) {
                Some(TokenKind::Lt) => Comparison::Lt,
                Some(TokenKind::Le) => Comparison::Le,
                Some(TokenKind::Gt) => Comparison::Gt,
                Some(TokenKind::Ge) => Comparison::Ge,
                _ => return Ok(left),
            };
            self.at += 1;
            left = Expr::Compare(Box::new(left), op, Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat(&TokenKind::Not) {
            return self.nested(|p| Ok(Expr::Not(Box::new(p.unary()?))));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, ExprError> {
        let mut expr = self.primary()?;
        let mut accesses = 0;
        loop {
            if self.eat(&TokenKind::Dot) {
                expr = match self.peek().map(|t| t.kind.clone()) {
                    Some(TokenKind::Star) => {
                        self.at += 1;
                        Expr::Filter(Box::new(expr))
                    }
                    Some(TokenKind::Ident(name)) => {
                        self.at += 1;
                        Expr::Property(Box::new(expr), name)
                    }
                    _ => return Err(self.unexpected("expected a property name or '*'")),
                };
            } else if self.eat(&TokenKind::LBracket) {
                expr = if self.eat(&TokenKind::Star) {
                    Expr::Filter(Box::new(expr))
                } else {
                    Expr::Index(Box::new(expr), Box::new(self.or()?))
                };
                self.expect(TokenKind::RBracket)?;
            } else {
                return Ok(expr);
            }
            accesses += 1;
            if accesses > MAX_DEPTH * 4 {
                return Err(self.unexpected("too many property accesses"));
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.unexpected("expected a value"));
        };
        self.at += 1;
        match token.kind {
            TokenKind::Number(n) => Ok(Expr::Literal(number(n))),
            TokenKind::String(s) => Ok(Expr::Literal(Value::String(s))),
            TokenKind::LParen => {
                let inner = self.or()?;
                self.expect(TokenKind::RParen)?;
                Ok(inner)
            }
            TokenKind::Ident(name) => {
                let lower = name.to_ascii_lowercase();
                if self.eat(&TokenKind::LParen) {
                    return self.call(lower, &name, token.offset);
                }
                match lower.as_str() {
                    "true" => Ok(Expr::Literal(Value::Bool(true))),
                    "false" => Ok(Expr::Literal(Value::Bool(false))),
                    "null" => Ok(Expr::Literal(Value::Null)),
                    context if CONTEXTS.contains(&context) => Ok(Expr::Context(lower)),
                    _ => Err(ExprError::new(
                        token.offset,
                        format!("unrecognized named-value: '{name}'"),
                    )),
                }
            }
            other => Err(ExprError::new(
                token.offset,
                format!("expected a value, found {}", describe(&other)),
            )),
        }
    }

    fn call(&mut self, lower: String, name: &str, offset: usize) -> Result<Expr, ExprError> {
        let Some(&(_, min, max)) = FUNCTIONS.iter().find(|(f, _, _)| *f == lower) else {
            return Err(ExprError::new(
                offset,
                format!("unrecognized function: '{name}'"),
            ));
        };
        let mut args = Vec::new();
        if !self.eat(&TokenKind::RParen) {
            loop {
                args.push(self.or()?);
                if self.eat(&TokenKind::RParen) {
                    break;
                }
                self.expect(TokenKind::Comma)?;
            }
        }
        if args.len() < min || args.len() > max {
            let wanted = match (min, max) {
                (min, max) if min == max => format!("{min}"),
                (min, usize::MAX) => format!("at least {min}"),
                (min, max) => format!("{min} to {max}"),
            };
            return Err(ExprError::new(
                offset,
                format!(
                    "{name}() takes {wanted} argument{}, not {}",
                    if max == 1 && min == 1 { "" } else { "s" },
                    args.len()
                ),
            ));
        }
        Ok(Expr::Call(lower, args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_follows_github() {
        // ! binds tighter than comparison, comparison than equality, && than ||.
        let expr = parse("!matrix.b == 1 < 2 || env.c && env.d").expect("parses");
        let Expr::Or(left, right) = expr else {
            panic!("or at the top")
        };
        assert!(matches!(*right, Expr::And(..)));
        let Expr::Compare(not, Comparison::Eq, lt) = *left else {
            panic!("== under ||")
        };
        assert!(matches!(*not, Expr::Not(_)));
        assert!(matches!(*lt, Expr::Compare(_, Comparison::Lt, _)));
    }

    #[test]
    fn accesses_filters_and_calls() {
        assert_eq!(
            parse("github.event.labels.*.name").expect("parses"),
            Expr::Property(
                Box::new(Expr::Filter(Box::new(Expr::Property(
                    Box::new(Expr::Property(
                        Box::new(Expr::Context("github".into())),
                        "event".into()
                    )),
                    "labels".into()
                )))),
                "name".into()
            )
        );
        let call = parse("ToJSON(Matrix['os'])").expect("parses");
        assert!(matches!(call, Expr::Call(ref f, _) if f == "tojson"));
        assert!(parse("always() && x").is_err(), "x is no context");
        assert!(parse("steps.a.outcome == 'failure' || always()")
            .expect("parses")
            .calls_status_function());
        assert_eq!(
            parse("needs.a.result && matrix.os")
                .expect("parses")
                .contexts(),
            ["needs", "matrix"]
        );
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let cases = [
            ("github.", 7, "expected a property name"),
            ("foo.bar", 0, "unrecognized named-value: 'foo'"),
            ("contains('a')", 0, "contains() takes 2 arguments, not 1"),
            ("nope(1)", 0, "unrecognized function"),
            ("(1 == 2", 7, "expected ')'"),
            ("1 2", 2, "unexpected number 2"),
            ("", 0, "empty expression"),
        ];
        for (text, offset, message) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.offset, offset, "{text}: {error}");
            assert!(error.message.contains(message), "{text}: {error}");
        }
    }

    #[test]
    fn hostile_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse(&deep)
            .expect_err("too deep")
            .message
            .contains("nests"));
        let nots = format!("{}true", "!".repeat(10_000));
        assert!(parse(&nots).is_err());
        let long = format!("'{}'", "a".repeat(MAX_EXPRESSION_CHARS));
        assert!(parse(&long).is_err());
    }
}
