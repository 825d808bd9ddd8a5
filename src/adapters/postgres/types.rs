//! Postgres columns as LakeSync columns: discovery from the catalogue, the type mapping, and
//! values in Postgres's text output format (as logical decoding and polling read them) as JSON.
//!
//! **Mapping** (discovered schemas): `smallint`, `integer`, `bigint`, `oid` → `integer`; `real`,
//! `double precision`, and `numeric(p, s)` with `p ≤ 15` (every such value survives a trip
//! through a double) → `number`; wider or unconstrained `numeric` → `string` (exact decimal
//! text: money stays exact); `boolean` → `boolean`; `timestamp with time zone` and `timestamp`
//! (read as UTC) → `timestamp`; `json`, `jsonb` → `json`; everything else (text, varchar, uuid,
//! date, arrays, …) → `string`, as Postgres prints it.
//!
//! **Reading** a column as its LakeSync type is a cast in the query (`::text`, `::float8`,
//! `::int8`, `::bool`, `::timestamptz`), so a declared schema may read a column as another type
//! than the discovered one (an `integer` column read as `string`, say) and the server does the
//! conversion, refusing values that do not convert.

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::{data_error, ident, pg_error};
use crate::kernel::delta_batch::number_to_json;
use crate::kernel::schema::{ColumnDef, ColumnType};
use crate::{Error, Result};

/// One column of a Postgres table, as the catalogue describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgColumn {
    /// The column name.
    pub name: String,
    /// The type's OID.
    pub type_oid: u32,
    /// The type as `format_type` prints it, e.g. `numeric(12,2)`.
    pub type_text: String,
    /// The type modifier (`-1` when none).
    pub type_mod: i32,
    /// Whether the column is part of the primary key.
    pub primary_key: bool,
}

impl PgColumn {
    /// The LakeSync type this column maps to (see the [module docs](self)).
    pub fn column_type(&self) -> ColumnType {
        match self.type_oid {
            16 => ColumnType::Boolean,
            20 | 21 | 23 | 26 => ColumnType::Integer,
            700 | 701 => ColumnType::Number,
            1700 => {
                // typmod = ((precision << 16) | scale) + 4; -1 when unconstrained.
                let precision = (self.type_mod - 4) >> 16;
                if self.type_mod >= 4 && precision <= 15 {
                    ColumnType::Number
                } else {
                    ColumnType::String
                }
            }
            1114 | 1184 => ColumnType::Timestamp,
            114 | 3802 => ColumnType::Json,
            _ => ColumnType::String,
        }
    }
}

/// The columns of `schema.table`, in table order; `None` when there is no such table.
pub async fn table_columns(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
    here: &str,
) -> Result<Option<Vec<PgColumn>>> {
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, a.atttypid::int8 AS oid, \
                format_type(a.atttypid, a.atttypmod) AS type_text, a.atttypmod AS typmod, \
                COALESCE(a.attnum = ANY (i.indkey), false) AS pk \
         FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
           AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| {
        pg_error(
            format!("{here}: reading the columns of {schema}.{table}"),
            e,
        )
    })?;
    if rows.is_empty() {
        return Ok(None);
    }
    rows.iter()
        .map(|row| {
            let get = |e: sqlx::Error| pg_error(format!("{here}: reading the catalogue"), e);
            let oid: i64 = row.try_get("oid").map_err(get)?;
            Ok(PgColumn {
                name: row.try_get("name").map_err(get)?,
                type_oid: u32::try_from(oid).unwrap_or(0),
                type_text: row.try_get("type_text").map_err(get)?,
                type_mod: row.try_get("typmod").map_err(get)?,
                primary_key: row.try_get("pk").map_err(get)?,
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The data columns of a discovered table: every column but `id_column`, mapped by
/// [`PgColumn::column_type`]. Columns whose names LakeSync cannot use are refused.
pub fn discovered_columns(
    columns: &[PgColumn],
    id_column: &str,
    here: &str,
) -> Result<Vec<ColumnDef>> {
    columns
        .iter()
        .filter(|c| c.name != id_column)
        .map(|c| {
            crate::kernel::schema::validate_identifier(&c.name).map_err(|e| {
                Error::schema(format!(
                    "{here}: column {:?} cannot be synced: {e}; declare the table's columns to leave it out",
                    c.name
                ))
            })?;
            Ok(ColumnDef::new(c.name.clone(), c.column_type()))
        })
        .collect()
}

/// The SQL cast that reads a column as `column_type`.
pub fn cast_for(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::String | ColumnType::Json | ColumnType::Null => "text",
        ColumnType::Number => "float8",
        ColumnType::Integer => "int8",
        ColumnType::Boolean => "bool",
        ColumnType::Timestamp => "timestamptz",
    }
}

/// `"column"::cast` for each column, with the id column first as text: the select list every
/// read of a table uses.
pub fn select_list(id_column: &str, columns: &[ColumnDef]) -> Result<String> {
    let mut parts = vec![format!("{}::text", ident(id_column)?)];
    for c in columns {
        parts.push(format!("{}::{}", ident(&c.name)?, cast_for(c.column_type)));
    }
    Ok(parts.join(", "))
}

/// A value in Postgres's text output format (with the session settings of
/// [`super::connect`]: UTC, ISO dates) as the JSON value of a `column_type` column.
pub fn text_to_json(text: &str, column_type: ColumnType, pg_type_oid: u32) -> Result<Value> {
    let bad = |expected: &str| {
        data_error(
            "reading a value",
            format!("{text:?} is not {expected} (Postgres type OID {pg_type_oid})"),
        )
    };
    Ok(match column_type {
        ColumnType::String => Value::String(text.to_string()),
        ColumnType::Integer => Value::from(text.parse::<i64>().map_err(|_| bad("an integer"))?),
        ColumnType::Number => {
            let f: f64 = text.parse().map_err(|_| bad("a number"))?;
            if !f.is_finite() {
                return Err(bad("a finite number"));
            }
            number_to_json(f)
        }
        ColumnType::Boolean => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(bad("a boolean")),
        },
        ColumnType::Timestamp => {
            let micros = parse_pg_timestamp(text).ok_or_else(|| bad("a timestamp"))?;
            Value::String(crate::kernel::delta_batch::format_timestamp(micros)?)
        }
        ColumnType::Json | ColumnType::Null => {
            serde_json::from_str(text).map_err(|_| bad("JSON"))?
        }
    })
}

/// Parses `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]]` (Postgres's ISO output; no offset = UTC) to
/// microseconds since the Unix epoch.
pub fn parse_pg_timestamp(text: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDateTime};
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_micros());
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(oid: u32, typmod: i32) -> PgColumn {
        PgColumn {
            name: "c".into(),
            type_oid: oid,
            type_text: String::new(),
            type_mod: typmod,
            primary_key: false,
        }
    }

    #[test]
    fn numeric_maps_by_precision() {
        assert_eq!(
            col(1700, (12 << 16 | 2) + 4).column_type(),
            ColumnType::Number
        );
        assert_eq!(col(1700, (15 << 16) + 4).column_type(), ColumnType::Number);
        assert_eq!(
            col(1700, (16 << 16 | 2) + 4).column_type(),
            ColumnType::String
        );
        assert_eq!(col(1700, -1).column_type(), ColumnType::String);
        assert_eq!(col(23, -1).column_type(), ColumnType::Integer);
        assert_eq!(col(2950, -1).column_type(), ColumnType::String);
    }

    #[test]
    fn text_values_convert() {
        assert_eq!(
            text_to_json("2026-01-31 12:00:00.5+00", ColumnType::Timestamp, 1184).unwrap(),
            Value::String("2026-01-31T12:00:00.500Z".into())
        );
        assert_eq!(
            text_to_json("2026-01-31 12:00:00", ColumnType::Timestamp, 1114).unwrap(),
            Value::String("2026-01-31T12:00:00Z".into())
        );
        assert_eq!(
            text_to_json("2026-01-31 14:00:00+02", ColumnType::Timestamp, 1184).unwrap(),
            Value::String("2026-01-31T12:00:00Z".into())
        );
        assert_eq!(
            text_to_json("12.50", ColumnType::Number, 1700).unwrap(),
            serde_json::json!(12.5)
        );
        assert_eq!(
            text_to_json("t", ColumnType::Boolean, 16).unwrap(),
            Value::Bool(true)
        );
        assert!(text_to_json("NaN", ColumnType::Number, 701).is_err());
        assert!(text_to_json("x", ColumnType::Integer, 20).is_err());
    }
}
