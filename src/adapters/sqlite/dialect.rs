//! The SQLite [`SqlDialect`]: how a materialised table's columns are stored in SQLite.
//!
//! | LakeSync type | SQLite column | stored as |
//! |---|---|---|
//! | `string` | `TEXT` | text |
//! | `number` | `REAL` | a double |
//! | `integer` | `INTEGER` | a 64-bit integer |
//! | `boolean` | `INTEGER` | `0` or `1` |
//! | `timestamp` | `TEXT` | RFC 3339 in UTC with six fractional digits, so text order is time order |
//! | `json`, `null` | `TEXT` | JSON text (query it with SQLite's `json_extract`) |
//!
//! `row_id`, `props`, `deleted_at` and `synced_at` are `TEXT`. JSON is declared `TEXT`, not
//! `JSON`, on purpose: SQLite gives an unknown type name NUMERIC affinity, which would turn the
//! JSON text `"1"` into the integer 1. Statements use `?` placeholders; one statement binds at most
//! [`SQLITE_MAX_BIND_PARAMS`] values (SQLite's limit since 3.32). With an `externalIdColumn` the
//! upsert also handles a conflict on the primary key (an external id that changed).

use crate::kernel::materialise::{
    Cell, SqlDialect, rfc3339_micros, standard_upsert, upsert_assignments,
};
use crate::kernel::schema::ColumnType;
use crate::kernel::schema::TableSchema;
use crate::{Error, Result};

/// The most bind parameters one SQLite statement may carry (`SQLITE_MAX_VARIABLE_NUMBER`).
pub const SQLITE_MAX_BIND_PARAMS: usize = 32766;

/// SQLite's dialect for materialised tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct SqliteDialect;

impl SqlDialect for SqliteDialect {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn column_type(&self, column_type: ColumnType) -> &'static str {
        match column_type {
            ColumnType::String | ColumnType::Timestamp | ColumnType::Json | ColumnType::Null => {
                "TEXT"
            }
            ColumnType::Number => "REAL",
            ColumnType::Integer | ColumnType::Boolean => "INTEGER",
        }
    }

    fn row_id_type(&self) -> &'static str {
        "TEXT"
    }

    fn props_type(&self) -> &'static str {
        "TEXT"
    }

    fn timestamp_type(&self) -> &'static str {
        "TEXT"
    }

    fn placeholder(&self, _index: usize) -> String {
        "?".to_string()
    }

    fn max_bind_params(&self) -> usize {
        SQLITE_MAX_BIND_PARAMS
    }

    /// The standard upsert; with an `externalIdColumn`, followed by a target-less
    /// `ON CONFLICT DO UPDATE` (SQLite 3.35+), so that a row whose external id changed — which
    /// conflicts on the primary key, not on the external id — is updated instead of failing.
    fn upsert(&self, schema: &TableSchema, rows: usize) -> Result<String> {
        let mut sql = standard_upsert(self, schema, rows)?;
        if schema.external_id_column.is_some() {
            sql.push_str(" ON CONFLICT DO UPDATE SET ");
            sql.push_str(&upsert_assignments(self, schema)?);
        }
        Ok(sql)
    }
}

/// A value to bind into a SQLite statement, in SQLite's storage classes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Bind {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl SqliteDialect {
    /// The storage of a planned cell.
    pub(crate) fn bind(cell: Cell) -> Result<Bind> {
        Ok(match cell {
            Cell::Null => Bind::Null,
            Cell::String(s) | Cell::Json(s) => Bind::Text(s),
            Cell::Number(f) if f.is_finite() => Bind::Real(f),
            Cell::Number(f) => {
                return Err(Error::invalid(
                    "value",
                    format!("{f} cannot be stored: SQLite has no non-finite numbers"),
                ));
            }
            Cell::Integer(i) => Bind::Integer(i),
            Cell::Boolean(b) => Bind::Integer(i64::from(b)),
            Cell::Timestamp(micros) => Bind::Text(rfc3339_micros(micros)?),
        })
    }
}

/// `sql` with `binds` bound in order.
pub(crate) fn query_with(
    sql: &str,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    binds
        .into_iter()
        .fold(sqlx::query(sql), |q, value| match value {
            Bind::Null => q.bind(None::<String>),
            Bind::Integer(i) => q.bind(i),
            Bind::Real(f) => q.bind(f),
            Bind::Text(s) => q.bind(s),
            Bind::Blob(b) => q.bind(b),
        })
}
