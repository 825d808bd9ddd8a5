//! Table schemas: column types, their Arrow mapping, identifiers, and add-only evolution.
//!
//! A [`TableSchema`] is the original's shape (`table`, `sourceTable`, `columns[{name, type}]`,
//! `primaryKey`, `softDelete`, `externalIdColumn`). Column types are the original's `string`,
//! `number`, `boolean`, `json` and `null`, plus `integer` and `timestamp`.
//!
//! Evolution is add-only: a new schema version may append nullable columns; removing, renaming,
//! reordering or retyping a column is an error. Column positions are therefore stable, which the
//! Arrow delta contract relies on.
//!
//! Identifiers (table and column names) must match `^[A-Za-z_][A-Za-z0-9_]{0,63}$`, and data
//! columns may not use a name the delta contract reserves (`_op`, `_row_id`, ...).

use std::collections::HashSet;
use std::sync::Arc;

use arrow_schema::{DataType, Field, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest allowed identifier, in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 64;

/// Field metadata key naming a column's LakeSync type in Arrow schemas.
pub const TYPE_METADATA_KEY: &str = "lakesync.type";

/// Column names the delta and state contracts reserve.
pub const RESERVED_COLUMNS: &[&str] = &[
    "_op",
    "_row_id",
    "_client_id",
    "_hlc",
    "_delta_id",
    "_set",
    "_deleted",
    "_live_version",
    "_delete_version",
    "_col_versions",
];

/// A column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Text (Arrow `Utf8`).
    String,
    /// A double (Arrow `Float64`).
    Number,
    /// A 64-bit integer (Arrow `Int64`).
    Integer,
    /// `true`/`false` (Arrow `Boolean`).
    Boolean,
    /// An instant, RFC 3339 text in JSON (Arrow `Timestamp(µs, UTC)`).
    Timestamp,
    /// Any JSON value, stored as its JSON text (Arrow `Utf8` marked `json`).
    Json,
    /// The original's `null` type: any JSON value, stored like `json`.
    Null,
}

impl ColumnType {
    /// The name used in schemas and metadata.
    pub const fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Timestamp => "timestamp",
            Self::Json => "json",
            Self::Null => "null",
        }
    }

    /// The type named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "number" => Self::Number,
            "integer" => Self::Integer,
            "boolean" => Self::Boolean,
            "timestamp" => Self::Timestamp,
            "json" => Self::Json,
            "null" => Self::Null,
            _ => return None,
        })
    }

    /// The Arrow type values of this column take.
    pub fn arrow_type(self) -> DataType {
        match self {
            Self::String | Self::Json | Self::Null => DataType::Utf8,
            Self::Number => DataType::Float64,
            Self::Integer => DataType::Int64,
            Self::Boolean => DataType::Boolean,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    /// The column name.
    pub name: String,
    /// The column type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// A reference to another table (kept for compatibility; not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<serde_json::Value>,
}

impl ColumnDef {
    /// A column.
    pub fn new(name: impl Into<String>, column_type: ColumnType) -> Self {
        Self {
            name: name.into(),
            column_type,
            references: None,
        }
    }

    /// The column's nullable Arrow field, tagged with its LakeSync type.
    pub fn arrow_field(&self) -> Field {
        Field::new(&self.name, self.column_type.arrow_type(), true).with_metadata(
            [(
                TYPE_METADATA_KEY.to_string(),
                self.column_type.name().to_string(),
            )]
            .into(),
        )
    }
}

/// A table's schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableSchema {
    /// The table name (the destination when materialised).
    pub table: String,
    /// The table deltas come from, when it differs from `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_table: Option<String>,
    /// The data columns, in their stable order.
    pub columns: Vec<ColumnDef>,
    /// Materialised primary key; `row_id` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<Vec<String>>,
    /// Whether materialised deletes are soft (default `true`, as in the original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_delete: Option<bool>,
    /// A column that identifies the row in an external system (upsert conflict target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id_column: Option<String>,
}

impl TableSchema {
    /// A schema with default settings.
    pub fn new(table: impl Into<String>, columns: Vec<ColumnDef>) -> Self {
        Self {
            table: table.into(),
            source_table: None,
            columns,
            primary_key: None,
            soft_delete: None,
            external_id_column: None,
        }
    }

    /// Parses and validates a schema from JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        let schema: Self = serde_json::from_str(text)
            .map_err(|e| Error::schema(format!("table schema is not valid: {e}")))?;
        schema.validate()?;
        Ok(schema)
    }

    /// Checks names, types and keys; the first problem is reported with where it is.
    pub fn validate(&self) -> Result<()> {
        validate_identifier(&self.table).map_err(|e| Error::schema(format!("table name: {e}")))?;
        if let Some(source) = &self.source_table {
            validate_identifier(source).map_err(|e| Error::schema(format!("sourceTable: {e}")))?;
        }
        let mut seen = HashSet::new();
        for (i, col) in self.columns.iter().enumerate() {
            validate_identifier(&col.name)
                .map_err(|e| Error::schema(format!("table {:?} columns[{i}]: {e}", self.table)))?;
            if RESERVED_COLUMNS.contains(&col.name.as_str()) {
                return Err(Error::schema(format!(
                    "table {:?} columns[{i}]: {:?} is reserved by LakeSync",
                    self.table, col.name
                )));
            }
            if !seen.insert(col.name.as_str()) {
                return Err(Error::schema(format!(
                    "table {:?} columns[{i}]: column {:?} appears twice",
                    self.table, col.name
                )));
            }
        }
        if let Some(pk) = &self.primary_key {
            if pk.is_empty() {
                return Err(Error::schema(format!(
                    "table {:?}: primaryKey must name at least one column",
                    self.table
                )));
            }
            for key in pk {
                if key != "row_id" && !seen.contains(key.as_str()) {
                    return Err(Error::schema(format!(
                        "table {:?}: primaryKey column {key:?} is neither \"row_id\" nor a column",
                        self.table
                    )));
                }
            }
        }
        if let Some(ext) = &self.external_id_column
            && !seen.contains(ext.as_str())
        {
            return Err(Error::schema(format!(
                "table {:?}: externalIdColumn {ext:?} is not a column",
                self.table
            )));
        }
        Ok(())
    }

    /// The position of `column` among the data columns.
    pub fn position(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == column)
    }

    /// The column named `column`.
    pub fn column(&self, column: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == column)
    }

    /// The names of the data columns, in order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The table deltas for this schema carry (`sourceTable`, else `table`).
    pub fn delta_table(&self) -> &str {
        self.source_table.as_deref().unwrap_or(&self.table)
    }

    /// Whether materialised deletes are soft (the default).
    pub fn is_soft_delete(&self) -> bool {
        self.soft_delete != Some(false)
    }

    /// Checks that `next` is an add-only evolution of `self` and returns the added columns.
    pub fn evolve_to<'a>(&self, next: &'a TableSchema) -> Result<&'a [ColumnDef]> {
        next.validate()?;
        if next.table != self.table {
            return Err(Error::schema(format!(
                "cannot evolve table {:?} into a schema for table {:?}",
                self.table, next.table
            )));
        }
        for (i, old) in self.columns.iter().enumerate() {
            match next.columns.get(i) {
                Some(new) if new.name == old.name && new.column_type == old.column_type => {}
                Some(new) if new.name == old.name => {
                    return Err(Error::schema(format!(
                        "table {:?}: column {:?} cannot change type from {} to {} (evolution is add-only)",
                        self.table,
                        old.name,
                        old.column_type.name(),
                        new.column_type.name()
                    )));
                }
                _ => {
                    let verb = if next.column(&old.name).is_some() {
                        "move"
                    } else {
                        "be removed"
                    };
                    return Err(Error::schema(format!(
                        "table {:?}: column {:?} cannot {verb} (evolution is add-only; new columns go at the end)",
                        self.table, old.name
                    )));
                }
            }
        }
        Ok(&next.columns[self.columns.len()..])
    }
}

/// A shared schema.
pub type TableSchemaRef = Arc<TableSchema>;

/// Checks a SQL identifier: `^[A-Za-z_][A-Za-z0-9_]{0,63}$`.
pub fn validate_identifier(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if first_ok && rest_ok && name.len() <= MAX_IDENTIFIER_LEN {
        Ok(())
    } else {
        Err(Error::invalid(
            "identifier",
            format!(
                "Invalid SQL identifier {name:?}: use 1 to {MAX_IDENTIFIER_LEN} letters, digits or underscores, not starting with a digit"
            ),
        ))
    }
}

/// Quotes an identifier for SQL with double quotes, doubling embedded quotes.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn todos() -> TableSchema {
        TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("done", ColumnType::Boolean),
            ],
        )
    }

    #[test]
    fn identifiers() {
        validate_identifier(&"a".repeat(64)).unwrap();
        for bad in [
            "",
            &"a".repeat(65),
            "1abc",
            "a-b",
            "a.b",
            "a b",
            "é",
            "\"; DROP TABLE users--",
        ] {
            let err = validate_identifier(bad).unwrap_err().to_string();
            assert!(err.contains("Invalid SQL identifier"), "{bad}: {err}");
        }
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_identifier(""), "\"\"");
    }

    #[test]
    fn schema_json_round_trip_and_validation() {
        let s = TableSchema::from_json(
            r#"{"table":"todos","columns":[{"name":"title","type":"string"},{"name":"n","type":"integer"}],"primaryKey":["row_id"],"softDelete":false}"#,
        )
        .unwrap();
        assert!(!s.is_soft_delete());
        assert_eq!(s.columns[1].column_type, ColumnType::Integer);
        let bad = [
            (
                r#"{"table":"t","columns":[{"name":"a","type":"text"}]}"#,
                "unknown variant",
            ),
            (
                r#"{"table":"t","columns":[{"name":"","type":"string"}]}"#,
                "columns[0]",
            ),
            (
                r#"{"table":"t","columns":[{"name":"a","type":"string"}],"primaryKey":[]}"#,
                "at least one",
            ),
            (
                r#"{"table":"t","columns":[{"name":"a","type":"string"}],"primaryKey":["b"]}"#,
                "\"b\"",
            ),
            (
                r#"{"table":"t","columns":[{"name":"a","type":"string"}],"externalIdColumn":"x"}"#,
                "externalIdColumn",
            ),
            (
                r#"{"table":"t","columns":[{"name":"_hlc","type":"string"}]}"#,
                "reserved",
            ),
            (
                r#"{"table":"t","columns":[{"name":"a","type":"string"},{"name":"a","type":"number"}]}"#,
                "twice",
            ),
            (
                r#"{"table":"t","columns":[],"softDelete":"yes"}"#,
                "expected a boolean",
            ),
        ];
        for (text, needle) in bad {
            let err = TableSchema::from_json(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn add_only_evolution() {
        let v1 = todos();
        let mut v2 = todos();
        v2.columns
            .push(ColumnDef::new("priority", ColumnType::Integer));
        assert_eq!(v1.evolve_to(&v2).unwrap().len(), 1);
        assert_eq!(v1.evolve_to(&v1).unwrap().len(), 0);

        let mut retyped = todos();
        retyped.columns[1].column_type = ColumnType::String;
        assert!(
            v1.evolve_to(&retyped)
                .unwrap_err()
                .to_string()
                .contains("cannot change type")
        );

        let mut removed = todos();
        removed.columns.pop();
        assert!(
            v1.evolve_to(&removed)
                .unwrap_err()
                .to_string()
                .contains("cannot be removed")
        );

        let mut moved = todos();
        moved.columns.swap(0, 1);
        assert!(
            v1.evolve_to(&moved)
                .unwrap_err()
                .to_string()
                .contains("cannot move")
        );

        let mut other = todos();
        other.table = "notes".into();
        assert!(v1.evolve_to(&other).is_err());
    }

    #[test]
    fn arrow_fields_carry_their_type() {
        let f = ColumnDef::new("meta", ColumnType::Json).arrow_field();
        assert_eq!(f.data_type(), &DataType::Utf8);
        assert!(f.is_nullable());
        assert_eq!(f.metadata()[TYPE_METADATA_KEY], "json");
    }
}
