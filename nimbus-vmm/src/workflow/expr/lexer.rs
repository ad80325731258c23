//! Tokens of the expression language: literals, names, operators, with the byte
//! offset each starts at (errors point there).

use super::ExprError;

/// One token and where it starts in the expression's text.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub kind: TokenKind,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum TokenKind {
    Number(f64),
    String(String),
    /// A name: a context, a function, a property or `true` / `false` / `null`.
    Ident(String),
    Dot,
    Star,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Not,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Splits `text` into tokens.
pub(super) fn tokenize(text: &str) -> Result<Vec<Token>, ExprError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (offset, c) = chars[i];
        let next = chars.get(i + 1).map(|&(_, c)| c);
        let after_value = follows_value(&tokens);
        let mut push = |kind, width: usize| {
            tokens.push(Token { kind, offset });
            width
        };
        i += match (c, next) {
            (c, _) if c.is_whitespace() => 1,
            ('.', Some(d)) if d.is_ascii_digit() && !after_value => {
                let (number, width) = number(&chars[i..], offset)?;
                push(TokenKind::Number(number), width)
            }
            ('.', _) => push(TokenKind::Dot, 1),
            ('*', _) => push(TokenKind::Star, 1),
            (',', _) => push(TokenKind::Comma, 1),
            ('(', _) => push(TokenKind::LParen, 1),
            (')', _) => push(TokenKind::RParen, 1),
            ('[', _) => push(TokenKind::LBracket, 1),
            (']', _) => push(TokenKind::RBracket, 1),
            ('!', Some('=')) => push(TokenKind::Ne, 2),
            ('!', _) => push(TokenKind::Not, 1),
            ('<', Some('=')) => push(TokenKind::Le, 2),
            ('<', _) => push(TokenKind::Lt, 1),
            ('>', Some('=')) => push(TokenKind::Ge, 2),
            ('>', _) => push(TokenKind::Gt, 1),
            ('=', Some('=')) => push(TokenKind::Eq, 2),
            ('&', Some('&')) => push(TokenKind::And, 2),
            ('|', Some('|')) => push(TokenKind::Or, 2),
            ('\'', _) => {
                let (string, width) = string(&chars[i..], offset)?;
                push(TokenKind::String(string), width)
            }
            (c, next)
                if c.is_ascii_digit()
                    || ((c == '-' || c == '+')
                        && next.is_some_and(|d| d.is_ascii_digit() || d == '.')) =>
            {
                let (number, width) = number(&chars[i..], offset)?;
                push(TokenKind::Number(number), width)
            }
            (c, _) if is_ident_start(c) => {
                let width = chars[i..]
                    .iter()
                    .take_while(|&&(_, c)| is_ident_continue(c))
                    .count();
                let name: String = chars[i..i + width].iter().map(|&(_, c)| c).collect();
                push(TokenKind::Ident(name), width)
            }
            (c, _) => {
                return Err(ExprError::new(
                    offset,
                    format!("unexpected character {c:?}"),
                ))
            }
        };
    }
    Ok(tokens)
}

/// Whether a `.` here is property access (after a value) rather than a number like `.5`.
fn follows_value(tokens: &[Token]) -> bool {
    matches!(
        tokens.last().map(|t| &t.kind),
        Some(TokenKind::Ident(_) | TokenKind::RParen | TokenKind::RBracket | TokenKind::Star)
    )
}

/// A quoted string: single quotes, `''` for a quote inside.
fn string(chars: &[(usize, char)], offset: usize) -> Result<(String, usize), ExprError> {
    let mut out = String::new();
    let mut i = 1;
    loop {
        match chars.get(i) {
            None => return Err(ExprError::new(offset, "unterminated string")),
            Some((_, '\'')) if chars.get(i + 1).map(|&(_, c)| c) == Some('\'') => {
                out.push('\'');
                i += 2;
            }
            Some((_, '\'')) => return Ok((out, i + 1)),
            Some(&(_, c)) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// A number: decimal (with fraction and exponent), `0x` hex or `0o` octal, signed.
fn number(chars: &[(usize, char)], offset: usize) -> Result<(f64, usize), ExprError> {
    let width = chars
        .iter()
        .enumerate()
        .take_while(|&(i, &(_, c))| {
            c.is_ascii_alphanumeric()
                || c == '.'
                || ((c == '-' || c == '+') && (i == 0 || matches!(chars[i - 1].1, 'e' | 'E')))
        })
        .count();
    let text: String = chars[..width].iter().map(|&(_, c)| c).collect();
    parse_number(&text)
        .map(|n| (n, width))
        .ok_or_else(|| ExprError::new(offset, format!("invalid number {text:?}")))
}

/// The number a literal (or a string coerced to a number) stands for.
pub(super) fn parse_number(text: &str) -> Option<f64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let radix = |prefix: &str, radix| {
        digits
            .strip_prefix(prefix)
            .and_then(|d| i64::from_str_radix(d, radix).ok())
            .map(|n| n as f64)
    };
    let value = radix("0x", 16).or_else(|| radix("0o", 8)).or_else(|| {
        // Rust accepts "inf" and "nan", GitHub's literals are digits only.
        let plain = digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'));
        if plain && digits.chars().any(|c| c.is_ascii_digit()) {
            digits.parse::<f64>().ok()
        } else {
            None
        }
    })?;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<TokenKind> {
        tokenize(text)
            .expect("tokenizes")
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn tokens_of_every_kind() {
        use TokenKind::*;
        assert_eq!(
            kinds("steps.my-step.outputs['x'] != 'it''s' && !(1.5e2 >= -0x10) || a.*"),
            vec![
                Ident("steps".into()),
                Dot,
                Ident("my-step".into()),
                Dot,
                Ident("outputs".into()),
                LBracket,
                String("x".into()),
                RBracket,
                Ne,
                String("it's".into()),
                And,
                Not,
                LParen,
                Number(150.0),
                Ge,
                Number(-16.0),
                RParen,
                Or,
                Ident("a".into()),
                Dot,
                Star
            ]
        );
        assert_eq!(kinds(".5"), vec![Number(0.5)]);
    }

    #[test]
    fn bad_tokens_name_their_offset() {
        assert_eq!(tokenize("a = b").expect_err("bad").offset, 2);
        assert_eq!(tokenize("'open").expect_err("bad").offset, 0);
        assert_eq!(tokenize("a == 12abc").expect_err("bad").offset, 5);
        assert_eq!(tokenize("1 + 2").expect_err("bad").offset, 2);
        assert!(parse_number("inf").is_none());
        assert_eq!(parse_number("0o17"), Some(15.0));
    }
}
