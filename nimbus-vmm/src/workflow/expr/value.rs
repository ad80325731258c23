//! GitHub's type rules for expression values: truthiness, coercion to numbers and
//! strings, loose equality and ordering (strings compare ignoring case).

use std::cmp::Ordering;

use serde_json::Value;

/// A number as a value: integral numbers stay integers (so `toJSON` prints `3`, not `3.0`).
pub fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// `false`, `0`, `-0`, `''`, `null` and `NaN` are falsy; everything else is truthy.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The number a value coerces to: `null` 0, booleans 1 / 0, strings parsed
/// (empty or blank is 0, anything else unparsable `NaN`), arrays and objects `NaN`.
pub fn to_number(value: &Value) -> f64 {
    match value {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => {
            let trimmed = s.trim();
            if trimmed.is_empty() {
                0.0
            } else {
                super::lexer::parse_number(trimmed).unwrap_or(f64::NAN)
            }
        }
        Value::Array(_) | Value::Object(_) => f64::NAN,
    }
}

/// A number as GitHub prints it: integers without a fraction.
pub fn format_number(n: f64) -> String {
    if n.is_nan() {
        "NaN".into()
    } else if n.is_infinite() {
        if n > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// The text a value becomes inside `${{ }}` in a string: `null` is empty,
/// arrays and objects print as `Array` and `Object` (as on GitHub).
pub fn to_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format_number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => s.clone(),
        Value::Array(_) => "Array".into(),
        Value::Object(_) => "Object".into(),
    }
}

fn kind(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// `==`: values of different types are compared as numbers; strings ignore case;
/// arrays and objects equal only themselves (which values copied out of contexts never are).
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    if kind(a) != kind(b) {
        let (x, y) = (to_number(a), to_number(b));
        return x == y;
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(_), Value::Number(_)) => to_number(a) == to_number(b),
        (Value::String(x), Value::String(y)) => fold(x) == fold(y),
        _ => false,
    }
}

/// `<` `<=` `>` `>=`: `None` when the values do not compare (`NaN`, arrays, objects).
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(fold(x).cmp(&fold(y))),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => None,
        _ => to_number(a).partial_cmp(&to_number(b)),
    }
}

/// Case folding for comparisons (GitHub compares ordinally, ignoring case).
pub fn fold(text: &str) -> String {
    text.to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coercion_follows_the_documented_table() {
        for falsy in [json!(null), json!(false), json!(0), json!(-0.0), json!("")] {
            assert!(!truthy(&falsy), "{falsy}");
        }
        for t in [json!("0"), json!("false"), json!([]), json!({}), json!(0.1)] {
            assert!(truthy(&t), "{t}");
        }
        assert_eq!(to_number(&json!(" 12 ")), 12.0);
        assert_eq!(to_number(&json!("0xff")), 255.0);
        assert!(to_number(&json!("1a")).is_nan());
        assert!(loose_eq(&json!(null), &json!(0)));
        assert!(loose_eq(&json!("1"), &json!(1)));
        assert!(loose_eq(&json!(true), &json!("1")));
        assert!(loose_eq(&json!("Hello"), &json!("hELLO")));
        assert!(!loose_eq(&json!("abc"), &json!(0)), "NaN equals nothing");
        assert!(!loose_eq(&json!([]), &json!([])));
        assert_eq!(compare(&json!("a"), &json!("B")), Some(Ordering::Less));
        assert_eq!(compare(&json!("10"), &json!(9)), Some(Ordering::Greater));
        assert_eq!(compare(&json!("x"), &json!(9)), None);
        assert_eq!(to_text(&number(3.0)), "3");
        assert_eq!(to_text(&number(0.25)), "0.25");
        assert_eq!(to_text(&json!({"a": 1})), "Object");
    }
}
