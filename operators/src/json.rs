//! JSON text exactly as the original LakeSync hashes it.
//!
//! The original computes deltaIds over `fast-json-stable-stringify@2.1.0`, so a Rust client and a
//! TypeScript client agree byte for byte only if this module reproduces it exactly:
//! - object keys sorted by UTF-16 code units (JavaScript's default sort), at every level;
//! - arrays kept in order; no whitespace;
//! - numbers as ECMAScript `Number::toString` (shortest round-trip: `1.0`→`1`, `-0`→`0`,
//!   `1e21`→`1e+21`, `1e-7`→`1e-7`); every JSON number is a JavaScript double, so integers
//!   beyond 2^53 print as the double they round to;
//! - strings as `JSON.stringify` writes them: `"` and `\` escaped, `\b \f \n \r \t` short forms,
//!   other C0 controls as lowercase `\u00xx`, everything else (including `/` and non-ASCII) as is.
//!
//! Non-finite numbers cannot occur: `serde_json::Value` cannot hold them.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// Appends the stable JSON text of `value` to `out`.
pub fn write_stable(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_stable(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| cmp_utf16(a.0, b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_stable(out, item);
            }
            out.push('}');
        }
    }
}

/// Appends `value` as JavaScript's `JSON.stringify` writes it: keys in JavaScript enumeration
/// order ([`js_key_order`]), numbers and strings as in [`write_stable`]. This is how the original
/// encodes a column value on the wire.
pub fn write_js(out: &mut String, value: &Value) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_js(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, key) in js_key_order(map).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_js(out, &map[key.as_str()]);
            }
            out.push('}');
        }
        scalar => write_stable(out, scalar),
    }
}

/// The stable JSON text of `value`.
pub fn to_stable_string(value: &Value) -> String {
    let mut out = String::new();
    write_stable(&mut out, value);
    out
}

/// Appends a number as JavaScript's `String(n)` writes it.
pub fn write_number(out: &mut String, n: &Number) {
    let Some(f) = js_number(n) else {
        out.push_str("null");
        return;
    };
    write_f64(out, f);
}

/// Appends a double as JavaScript's `String(n)` writes it; non-finite values as `null`.
pub fn write_f64(out: &mut String, f: f64) {
    if !f.is_finite() {
        out.push_str("null");
    } else if f == 0.0 {
        out.push('0'); // covers -0
    } else {
        out.push_str(ryu_js::Buffer::new().format_finite(f));
    }
}

/// The JavaScript double a JSON number denotes.
pub fn js_number(n: &Number) -> Option<f64> {
    n.as_f64()
}

/// Appends `s` as a JSON string literal, escaped as `JSON.stringify` does.
pub fn write_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Compares strings by UTF-16 code units, as JavaScript's `<` and default sort do.
///
/// This differs from Rust's (code point) order only between a character in U+E000..=U+FFFF and
/// one above U+FFFF, whose UTF-16 form starts with a surrogate (0xD800..0xDFFF) and so sorts first.
pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
    if a.is_ascii() || b.is_ascii() {
        // With an ASCII side, the first difference is decided by an ASCII byte: same order.
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// JavaScript's `Object.is` for two JSON values that are not both objects or arrays
/// (`+0` and `-0` differ; numbers compare as doubles).
pub fn js_object_is(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (js_number(x), js_number(y)) {
            (Some(x), Some(y)) => x == y && x.is_sign_negative() == y.is_sign_negative(),
            _ => false,
        },
        (Value::Array(_), _) | (Value::Object(_), _) => false,
        _ => a == b,
    }
}

/// `fast-deep-equal`'s answer for two JSON values: objects compare key-order independently,
/// arrays in order, numbers as doubles (so `0` equals `-0` and `1` equals `1.0`).
pub fn js_deep_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => js_number(x) == js_number(y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| js_deep_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => objects_equal(x, y),
        _ => a == b,
    }
}

fn objects_equal(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    x.len() == y.len()
        && x.iter()
            .all(|(k, v)| y.get(k).is_some_and(|w| js_deep_equal(v, w)))
}

/// Whether `key` is an array index in JavaScript's sense (a canonical decimal below 2^32 - 1),
/// which objects enumerate first, in ascending numeric order.
pub fn is_array_index(key: &str) -> bool {
    let canonical = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'));
    canonical && key.parse::<u64>().is_ok_and(|n| n < u64::from(u32::MAX))
}

/// The keys of a JSON object in JavaScript's enumeration order (`Object.keys`): array-index keys
/// ascending, then the rest in insertion order.
pub fn js_key_order(map: &Map<String, Value>) -> Vec<&String> {
    let mut indices: Vec<(u64, &String)> = Vec::new();
    let mut others = Vec::new();
    for key in map.keys() {
        match key.parse::<u64>() {
            Ok(n) if is_array_index(key) => indices.push((n, key)),
            _ => others.push(key),
        }
    }
    indices.sort_unstable_by_key(|(n, _)| *n);
    indices.into_iter().map(|(_, k)| k).chain(others).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        to_stable_string(&v)
    }

    #[test]
    fn javascript_number_formatting() {
        assert_eq!(num("1.0"), "1");
        assert_eq!(num("-0"), "0");
        assert_eq!(num("-0.0"), "0");
        assert_eq!(num("1e21"), "1e+21");
        assert_eq!(num("1e20"), "100000000000000000000");
        assert_eq!(num("1e-7"), "1e-7");
        assert_eq!(num("0.000001"), "0.000001");
        assert_eq!(num("0.1"), "0.1");
        assert_eq!(num("123.456"), "123.456");
        assert_eq!(num("-1.5e300"), "-1.5e+300");
        assert_eq!(num("9007199254740993"), "9007199254740992");
        assert_eq!(num("18446744073709551615"), "18446744073709552000");
        let mut s = String::new();
        write_f64(&mut s, f64::NAN);
        write_f64(&mut s, f64::INFINITY);
        assert_eq!(s, "nullnull");
    }

    #[test]
    fn javascript_string_escaping() {
        let v = json!("a\"b\\c/d\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}é😀\u{2028}");
        assert_eq!(
            to_stable_string(&v),
            "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}é😀\u{2028}\""
        );
    }

    #[test]
    fn keys_sorted_by_utf16_code_units_at_every_level() {
        let v =
            json!({"z": 1, "a": [3, {"y": null, "b": "x"}], "10": true, "2": false, "B": "upper"});
        assert_eq!(
            to_stable_string(&v),
            r#"{"10":true,"2":false,"B":"upper","a":[3,{"b":"x","y":null}],"z":1}"#
        );
        // U+FF01 sorts after U+1F600 in UTF-16 (surrogates come first), before it in UTF-8.
        assert_eq!(cmp_utf16("\u{1F600}", "\u{FF01}"), Ordering::Less);
        assert_eq!(cmp_utf16("a", "b"), Ordering::Less);
        assert_eq!(cmp_utf16("B", "a"), Ordering::Less);
    }

    #[test]
    fn object_is_and_deep_equal() {
        assert!(!js_object_is(
            &json!(0.0),
            &serde_json::from_str("-0.0").unwrap()
        ));
        assert!(js_object_is(
            &json!(1),
            &serde_json::from_str("1.0").unwrap()
        ));
        assert!(js_deep_equal(
            &json!({"a": 1, "b": [1, 2]}),
            &json!({"b": [1.0, 2], "a": 1})
        ));
        assert!(!js_deep_equal(&json!([1, 2]), &json!([2, 1])));
    }

    #[test]
    fn javascript_key_order() {
        let v: Value = serde_json::from_str(r#"{"b":1,"10":2,"a":3,"2":4,"01":5}"#).unwrap();
        let Value::Object(map) = v else {
            unreachable!()
        };
        let keys: Vec<&str> = js_key_order(&map).into_iter().map(String::as_str).collect();
        assert_eq!(keys, ["2", "10", "b", "a", "01"]);
    }
}
