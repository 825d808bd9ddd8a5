//! How column values live in the local replica, and the conversions into and out of it.
//!
//! Each LakeSync column type has one SQLite storage (the same as materialised SQLite tables,
//! see `docs/materialise.md`):
//!
//! | LakeSync type | SQLite column | stored as |
//! |---|---|---|
//! | `string` | `TEXT` | text |
//! | `number` | `REAL` | a double |
//! | `integer` | `INTEGER` | a 64-bit integer |
//! | `boolean` | `INTEGER` | `0` or `1` |
//! | `timestamp` | `TEXT` | RFC 3339 in UTC with six fractional digits (text order is time order) |
//! | `json`, `null` | `TEXT` | JSON text |
//!
//! A JSON `null` is SQL `NULL` in every type. Values come in as JSON (local writes, pending
//! outbox deltas) or as Arrow cells (pulled delta batches) and go out as JSON typed by the
//! column, exactly as the Arrow delta contract renders them: a `number` that is integral reads
//! back as a JSON integer, a `timestamp` as the shortest exact RFC 3339 text, a `boolean` as
//! `true`/`false`. Reading the result of arbitrary SQL ([`raw_to_json`]) knows no column types
//! and gives SQLite's own: integers, reals, text.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use serde_json::Value;
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{Decode, Row, TypeInfo, ValueRef};

use crate::adapters::sqlite::dialect::Bind;
use crate::kernel::delta_batch::{format_timestamp, number_to_json, parse_timestamp};
use crate::kernel::materialise::rfc3339_micros;
use crate::kernel::schema::ColumnType;
use crate::{Error, Result};

/// The SQLite column type of a LakeSync column type.
pub(crate) fn sql_type(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::String | ColumnType::Timestamp | ColumnType::Json | ColumnType::Null => "TEXT",
        ColumnType::Number => "REAL",
        ColumnType::Integer | ColumnType::Boolean => "INTEGER",
    }
}

fn wrong_type(column: &str, column_type: ColumnType, value: &Value) -> Error {
    Error::schema(format!(
        "column {column:?} is a {} column; {value} does not fit it",
        column_type.name()
    ))
}

/// The SQLite storage of JSON `value` in a column of `column_type` named `column`.
pub(crate) fn json_to_bind(column: &str, column_type: ColumnType, value: &Value) -> Result<Bind> {
    if value.is_null() {
        return Ok(Bind::Null);
    }
    let wrong = || wrong_type(column, column_type, value);
    Ok(match column_type {
        ColumnType::String => Bind::Text(value.as_str().ok_or_else(wrong)?.to_string()),
        ColumnType::Number => {
            let f = value.as_f64().ok_or_else(wrong)?;
            if !f.is_finite() {
                return Err(wrong());
            }
            Bind::Real(f)
        }
        ColumnType::Integer => match value.as_i64() {
            Some(i) => Bind::Integer(i),
            None => match value.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Bind::Integer(f as i64),
                _ => return Err(wrong()),
            },
        },
        ColumnType::Boolean => Bind::Integer(i64::from(value.as_bool().ok_or_else(wrong)?)),
        ColumnType::Timestamp => {
            let text = value.as_str().ok_or_else(wrong)?;
            let micros = parse_timestamp(text).ok_or_else(wrong)?;
            Bind::Text(rfc3339_micros(micros)?)
        }
        ColumnType::Json | ColumnType::Null => Bind::Text(value.to_string()),
    })
}

/// The SQLite storage of cell `i` of `array`, a data column of `column_type` in a delta batch.
pub(crate) fn arrow_to_bind(array: &ArrayRef, i: usize, column_type: ColumnType) -> Result<Bind> {
    if array.is_null(i) {
        return Ok(Bind::Null);
    }
    let mismatch = || {
        Error::invalid(
            "delta batch",
            format!(
                "a {} column has Arrow type {}",
                column_type.name(),
                array.data_type()
            ),
        )
    };
    Ok(match column_type {
        ColumnType::String | ColumnType::Json | ColumnType::Null => Bind::Text(
            array
                .as_string_opt::<i32>()
                .ok_or_else(mismatch)?
                .value(i)
                .to_string(),
        ),
        ColumnType::Number => {
            let f = array
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(mismatch)?
                .value(i);
            // JSON has no non-finite numbers: such a value reads as null everywhere else too.
            if f.is_finite() {
                Bind::Real(f)
            } else {
                Bind::Null
            }
        }
        ColumnType::Integer => Bind::Integer(
            array
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(mismatch)?
                .value(i),
        ),
        ColumnType::Boolean => Bind::Integer(i64::from(
            array.as_boolean_opt().ok_or_else(mismatch)?.value(i),
        )),
        ColumnType::Timestamp => Bind::Text(rfc3339_micros(
            array
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(mismatch)?
                .value(i),
        )?),
    })
}

/// A value as SQLite returned it, before any column type is applied.
#[derive(Clone, Debug, PartialEq)]
enum Raw {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

fn raw(row: &SqliteRow, i: usize) -> Result<Raw> {
    let value = row
        .try_get_raw(i)
        .map_err(|e| Error::internal(format!("reading column {i} of a local row: {e}")))?;
    if value.is_null() {
        return Ok(Raw::Null);
    }
    let class = value.type_info().name().to_string();
    let decoded = match class.as_str() {
        "INTEGER" | "BOOLEAN" => <i64 as Decode<Sqlite>>::decode(value).map(Raw::Integer),
        "REAL" => <f64 as Decode<Sqlite>>::decode(value).map(Raw::Real),
        "BLOB" => <Vec<u8> as Decode<Sqlite>>::decode(value).map(Raw::Blob),
        _ => <String as Decode<Sqlite>>::decode(value).map(Raw::Text),
    };
    decoded.map_err(|e| Error::internal(format!("reading a {class} value: {e}")))
}

/// Column `i` of `row` as JSON, typed by `column_type` (see the module docs). A stored value
/// that does not fit the type (written by something other than LakeSync) is returned as
/// SQLite holds it rather than failing the read.
pub(crate) fn sqlite_to_json(row: &SqliteRow, i: usize, column_type: ColumnType) -> Result<Value> {
    let raw = raw(row, i)?;
    Ok(match (column_type, raw) {
        (_, Raw::Null) => Value::Null,
        (ColumnType::Number, Raw::Real(f)) => number_to_json(f),
        (ColumnType::Number, Raw::Integer(n)) => number_to_json(n as f64),
        (ColumnType::Boolean, Raw::Integer(n)) => Value::Bool(n != 0),
        (ColumnType::Timestamp, Raw::Text(text)) => match parse_timestamp(&text) {
            Some(micros) => Value::String(format_timestamp(micros)?),
            None => Value::String(text),
        },
        (ColumnType::Json | ColumnType::Null, Raw::Text(text)) => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        (_, other) => untyped(other),
    })
}

/// Column `i` of `row` as JSON with SQLite's own types: the result of arbitrary SQL.
pub(crate) fn raw_to_json(row: &SqliteRow, i: usize) -> Result<Value> {
    raw(row, i).map(untyped)
}

fn untyped(raw: Raw) -> Value {
    match raw {
        Raw::Null => Value::Null,
        Raw::Integer(n) => Value::from(n),
        Raw::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Raw::Text(s) => Value::String(s),
        Raw::Blob(b) => Value::String(hex::encode(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_values_take_their_column_storage() {
        let cases = [
            (ColumnType::String, json!("a"), Bind::Text("a".into())),
            (ColumnType::Number, json!(1.5), Bind::Real(1.5)),
            (ColumnType::Number, json!(2), Bind::Real(2.0)),
            (ColumnType::Integer, json!(7), Bind::Integer(7)),
            (ColumnType::Integer, json!(3.0), Bind::Integer(3)),
            (ColumnType::Boolean, json!(true), Bind::Integer(1)),
            (
                ColumnType::Timestamp,
                json!("2024-01-02T03:04:05+01:00"),
                Bind::Text("2024-01-02T02:04:05.000000Z".into()),
            ),
            (
                ColumnType::Json,
                json!({"a": [1]}),
                Bind::Text("{\"a\":[1]}".into()),
            ),
            (ColumnType::String, Value::Null, Bind::Null),
        ];
        for (t, v, want) in cases {
            assert_eq!(json_to_bind("c", t, &v).unwrap(), want, "{t:?} {v}");
        }
        for (t, v) in [
            (ColumnType::String, json!(1)),
            (ColumnType::Integer, json!(1.5)),
            (ColumnType::Boolean, json!("yes")),
            (ColumnType::Timestamp, json!("yesterday")),
        ] {
            let e = json_to_bind("c", t, &v).unwrap_err();
            assert!(e.to_string().contains("\"c\""), "{e}");
        }
    }
}
