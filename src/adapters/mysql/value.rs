//! MySQL values as the JSON a delta carries, shared by the polling source and the binlog.
//!
//! Both paths first reduce a value to a [`Raw`]: polled rows select date, time, decimal and JSON
//! columns `CAST(… AS CHAR)` (in a UTC session), and binlog values arrive as `mysql_common`
//! values. Then [`to_json`] converts by the schema's column type: integers and numeric text for
//! `number` and `integer`; `0`/`1` for `boolean`; `YYYY-MM-DD HH:MM:SS[.ffffff]` (read as UTC) or
//! epoch seconds (how the binlog carries `TIMESTAMP`) for `timestamp`, as RFC 3339; JSON text
//! for `json` (else the text itself). MySQL's zero date (`0000-00-00 …`) becomes NULL. A value
//! that does not fit is an error the caller names with its table, row and column.

use serde_json::Value;

use crate::kernel::delta_batch::{number_to_json, parse_timestamp};
use crate::kernel::json::write_f64;
use crate::kernel::materialise::rfc3339_micros;
use crate::kernel::schema::ColumnType;

/// A value as read from MySQL.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Raw {
    Null,
    Int(i64),
    UInt(u64),
    Real(f64),
    Text(String),
}

impl Raw {
    /// A binlog row value.
    pub(crate) fn from_binlog(value: mysql_async::Value) -> std::result::Result<Raw, String> {
        use mysql_async::Value as V;
        Ok(match value {
            V::NULL => Raw::Null,
            V::Int(i) => Raw::Int(i),
            V::UInt(u) => Raw::UInt(u),
            V::Float(f) => Raw::Real(f64::from(f)),
            V::Double(f) => Raw::Real(f),
            V::Bytes(b) => Raw::Text(
                String::from_utf8(b)
                    .map_err(|_| "a binary value that is not UTF-8 text".to_string())?,
            ),
            V::Date(y, mo, d, h, mi, s, us) => Raw::Text(format!(
                "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
            )),
            V::Time(neg, days, h, mi, s, us) => {
                let hours = u32::from(h) + days * 24;
                let sign = if neg { "-" } else { "" };
                Raw::Text(format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}"))
            }
        })
    }
}

/// A number as JavaScript prints it.
pub(crate) fn js_number_text(f: f64) -> String {
    let mut s = String::new();
    write_f64(&mut s, f);
    s
}

/// The row id an id value stands for: integers in decimal, reals as JavaScript prints them, text
/// as is.
pub(crate) fn row_id_of(raw: &Raw) -> std::result::Result<String, String> {
    match raw {
        Raw::Int(i) => Ok(i.to_string()),
        Raw::UInt(u) => Ok(u.to_string()),
        Raw::Real(f) => Ok(js_number_text(*f)),
        Raw::Text(s) => Ok(s.clone()),
        Raw::Null => Err("a row has a NULL id".into()),
    }
}

/// A cursor or id value as kept in a position.
pub(crate) fn position_value(raw: Raw) -> std::result::Result<Value, String> {
    match raw {
        Raw::Null => Ok(Value::Null),
        Raw::Int(i) => Ok(Value::from(i)),
        Raw::UInt(u) => Ok(Value::from(u)),
        Raw::Real(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("cursor value {f} cannot be kept in a position")),
        Raw::Text(s) => Ok(Value::String(s)),
    }
}

/// `YYYY-MM-DD[ HH:MM:SS[.f…]]` (UTC) or epoch seconds as microseconds since the epoch;
/// `Ok(None)` for MySQL's zero date.
pub(crate) fn timestamp_micros(text: &str) -> std::result::Result<Option<i64>, ()> {
    let t = text.trim();
    if t.starts_with("0000-00-00") {
        return Ok(None);
    }
    if t.parse::<f64>().is_ok() {
        // How the binlog carries TIMESTAMP: seconds since the epoch, maybe with a fraction.
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let whole: i64 = whole.parse().map_err(|_| ())?;
        let mut digits: String = frac.chars().take(6).collect();
        while digits.len() < 6 {
            digits.push('0');
        }
        let frac: i64 = digits.parse().map_err(|_| ())?;
        return whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac))
            .map(Some)
            .ok_or(());
    }
    if let Some(micros) = parse_timestamp(t) {
        return Ok(Some(micros));
    }
    let rfc = if t.len() == 10 {
        format!("{t}T00:00:00Z")
    } else {
        format!("{}Z", t.replacen(' ', "T", 1))
    };
    parse_timestamp(&rfc).map(Some).ok_or(())
}

/// A MySQL value as the JSON a column of `column_type` carries.
pub(crate) fn to_json(raw: Raw, column_type: ColumnType) -> std::result::Result<Value, String> {
    let wrong = |raw: &Raw| match raw {
        Raw::Text(s) => format!("expected {}, got text {s:?}", expected(column_type)),
        other => format!("expected {}, got {other:?}", expected(column_type)),
    };
    Ok(match (column_type, raw) {
        (_, Raw::Null) => Value::Null,
        (ColumnType::String, Raw::Text(s)) => Value::String(s),
        (ColumnType::String, Raw::Int(i)) => Value::String(i.to_string()),
        (ColumnType::String, Raw::UInt(u)) => Value::String(u.to_string()),
        (ColumnType::String, Raw::Real(f)) => Value::String(js_number_text(f)),
        (ColumnType::Number, Raw::Int(i)) => number_to_json(i as f64),
        (ColumnType::Number, Raw::UInt(u)) => number_to_json(u as f64),
        (ColumnType::Number, Raw::Real(f)) => number_to_json(f),
        (ColumnType::Number, Raw::Text(s)) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => number_to_json(f),
            _ => return Err(wrong(&Raw::Text(s))),
        },
        (ColumnType::Integer, Raw::Int(i)) => Value::from(i),
        (ColumnType::Integer, Raw::UInt(u)) => match i64::try_from(u) {
            Ok(i) => Value::from(i),
            Err(_) => return Err(format!("{u} does not fit a 64-bit signed integer")),
        },
        (ColumnType::Integer, Raw::Real(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => {
            Value::from(f as i64)
        }
        (ColumnType::Integer, Raw::Text(s)) => match s.trim().parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => return Err(wrong(&Raw::Text(s))),
        },
        (ColumnType::Boolean, Raw::Int(i)) => Value::Bool(i != 0),
        (ColumnType::Boolean, Raw::UInt(u)) => Value::Bool(u != 0),
        (ColumnType::Boolean, Raw::Real(f)) => Value::Bool(f != 0.0),
        (ColumnType::Boolean, Raw::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(wrong(&Raw::Text(s))),
        },
        (ColumnType::Timestamp, Raw::Text(s)) => match timestamp_micros(&s) {
            Ok(None) => Value::Null,
            Ok(Some(micros)) => Value::String(rfc3339_micros(micros).map_err(|e| e.to_string())?),
            Err(()) => return Err(wrong(&Raw::Text(s))),
        },
        (ColumnType::Timestamp, Raw::Int(secs)) => secs
            .checked_mul(1_000_000)
            .and_then(|m| rfc3339_micros(m).ok())
            .map(Value::String)
            .ok_or_else(|| format!("{secs} seconds since the epoch is out of range"))?,
        (ColumnType::Json | ColumnType::Null, Raw::Text(s)) => {
            serde_json::from_str(&s).unwrap_or(Value::String(s))
        }
        (ColumnType::Json | ColumnType::Null, Raw::Int(i)) => Value::from(i),
        (ColumnType::Json | ColumnType::Null, Raw::UInt(u)) => Value::from(u),
        (ColumnType::Json | ColumnType::Null, Raw::Real(f)) => number_to_json(f),
        (_, raw) => return Err(wrong(&raw)),
    })
}

fn expected(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::String => "text",
        ColumnType::Number => "a number",
        ColumnType::Integer => "an integer",
        ColumnType::Boolean => "a boolean (0/1)",
        ColumnType::Timestamp => "a date and time",
        ColumnType::Json | ColumnType::Null => "JSON",
    }
}

/// The LakeSync type of a MySQL column, from `information_schema.COLUMNS` (`DATA_TYPE`,
/// `COLUMN_TYPE`, `NUMERIC_PRECISION`) and whether MariaDB checks it with `json_valid` (its
/// `JSON` is a `LONGTEXT` with that check). `tinyint(1)`/`bool` → boolean; other integer types →
/// integer (`bigint unsigned` too: values past 2^63 are an error when read); `float`, `double`,
/// `real` and `decimal`/`numeric` of at most 15 digits → number; `datetime`/`timestamp`/`date` →
/// timestamp; `json` → json; anything else → string.
pub(crate) fn discovered_type(
    data_type: &str,
    column_type: &str,
    precision: Option<u64>,
    json_checked: bool,
) -> ColumnType {
    let data_type = data_type.to_ascii_lowercase();
    let column_type = column_type.to_ascii_lowercase();
    if json_checked || data_type == "json" {
        return ColumnType::Json;
    }
    match data_type.as_str() {
        "tinyint" if column_type.starts_with("tinyint(1)") => ColumnType::Boolean,
        "bool" | "boolean" => ColumnType::Boolean,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
            ColumnType::Integer
        }
        "float" | "double" | "real" | "double precision" => ColumnType::Number,
        "decimal" | "numeric" if precision.is_some_and(|p| p <= 15) => ColumnType::Number,
        "datetime" | "timestamp" | "date" => ColumnType::Timestamp,
        _ => ColumnType::String,
    }
}

/// The labels of an `enum(…)` or `set(…)` column type (`COLUMN_TYPE`), and whether it is a set.
/// The binlog carries such values as a 1-based index (enum) or a bit mask (set).
pub(crate) fn labels_of(column_type: &str) -> Option<(bool, Vec<String>)> {
    let lower = column_type.to_ascii_lowercase();
    let (is_set, rest) = if lower.starts_with("enum(") {
        (false, &column_type[5..])
    } else if lower.starts_with("set(") {
        (true, &column_type[4..])
    } else {
        return None;
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        match chars.next()? {
            '\'' => {
                let mut label = String::new();
                loop {
                    match chars.next()? {
                        '\'' if chars.peek() == Some(&'\'') => {
                            chars.next();
                            label.push('\'');
                        }
                        '\'' => break,
                        c => label.push(c),
                    }
                }
                labels.push(label);
            }
            ',' | ' ' => {}
            ')' => return Some((is_set, labels)),
            _ => return None,
        }
    }
}

/// The text of a binlog enum index or set mask, by the column's labels.
pub(crate) fn label_text(is_set: bool, labels: &[String], raw: Raw) -> Raw {
    let n = match raw {
        Raw::Int(i) => u64::try_from(i).ok(),
        Raw::UInt(u) => Some(u),
        _ => None,
    };
    let Some(n) = n else { return raw };
    if is_set {
        let chosen: Vec<&str> = labels
            .iter()
            .enumerate()
            .filter(|(bit, _)| *bit < 64 && n & (1 << bit) != 0)
            .map(|(_, l)| l.as_str())
            .collect();
        Raw::Text(chosen.join(","))
    } else if n == 0 {
        // MySQL's "invalid value" enum member.
        Raw::Text(String::new())
    } else {
        usize::try_from(n - 1)
            .ok()
            .and_then(|i| labels.get(i))
            .map_or(raw, |l| Raw::Text(l.clone()))
    }
}

/// Whether polled rows must select a column of `data_type` as text (`CAST(… AS CHAR)`).
pub(crate) fn selected_as_text(data_type: &str) -> bool {
    !matches!(
        data_type.to_ascii_lowercase().as_str(),
        "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "integer"
            | "bigint"
            | "float"
            | "double"
            | "real"
            | "char"
            | "varchar"
            | "tinytext"
            | "text"
            | "mediumtext"
            | "longtext"
            | "enum"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_from_text_and_epoch_seconds() {
        let t = |s: &str| to_json(Raw::Text(s.into()), ColumnType::Timestamp).unwrap();
        assert_eq!(
            t("2024-01-02 03:04:05.123456"),
            json!("2024-01-02T03:04:05.123456Z")
        );
        assert_eq!(
            t("2024-01-02 03:04:05"),
            json!("2024-01-02T03:04:05.000000Z")
        );
        assert_eq!(t("2024-01-02"), json!("2024-01-02T00:00:00.000000Z"));
        assert_eq!(t("1704164645.5"), json!("2024-01-02T03:04:05.500000Z"));
        assert_eq!(t("0000-00-00 00:00:00"), Value::Null);
        assert_eq!(
            to_json(Raw::Int(1_704_164_645), ColumnType::Timestamp).unwrap(),
            json!("2024-01-02T03:04:05.000000Z")
        );
        assert!(to_json(Raw::Text("soon".into()), ColumnType::Timestamp).is_err());
    }

    #[test]
    fn numbers_booleans_and_json() {
        assert_eq!(
            to_json(Raw::Text("12.34".into()), ColumnType::Number).unwrap(),
            json!(12.34)
        );
        assert_eq!(
            to_json(Raw::Int(1), ColumnType::Boolean).unwrap(),
            json!(true)
        );
        assert_eq!(
            to_json(Raw::Text("{\"a\":1}".into()), ColumnType::Json).unwrap(),
            json!({"a": 1})
        );
        assert!(to_json(Raw::UInt(u64::MAX), ColumnType::Integer).is_err());
    }

    #[test]
    fn enum_and_set_labels() {
        let (is_set, labels) = labels_of("enum('a','b''c')").unwrap();
        assert!(!is_set);
        assert_eq!(labels, ["a", "b'c"]);
        assert_eq!(
            label_text(false, &labels, Raw::Int(2)),
            Raw::Text("b'c".into())
        );
        let (is_set, labels) = labels_of("set('x','y','z')").unwrap();
        assert!(is_set);
        assert_eq!(
            label_text(true, &labels, Raw::UInt(5)),
            Raw::Text("x,z".into())
        );
        assert_eq!(labels_of("int(11)"), None);
    }

    #[test]
    fn discovered_types() {
        assert_eq!(
            discovered_type("tinyint", "tinyint(1)", None, false),
            ColumnType::Boolean
        );
        assert_eq!(
            discovered_type("int", "int(11)", None, false),
            ColumnType::Integer
        );
        assert_eq!(
            discovered_type("decimal", "decimal(10,2)", Some(10), false),
            ColumnType::Number
        );
        assert_eq!(
            discovered_type("decimal", "decimal(30,2)", Some(30), false),
            ColumnType::String
        );
        assert_eq!(
            discovered_type("longtext", "longtext", None, true),
            ColumnType::Json
        );
        assert_eq!(
            discovered_type("datetime", "datetime(6)", None, false),
            ColumnType::Timestamp
        );
    }
}
