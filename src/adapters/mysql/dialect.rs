//! The MySQL/MariaDB [`SqlDialect`]: how a materialised table's columns are stored.
//!
//! | LakeSync type | column |
//! |---|---|
//! | `string` | `TEXT` (`VARCHAR(255)` when it is part of a key) |
//! | `number` | `DOUBLE` |
//! | `integer` | `BIGINT` |
//! | `boolean` | `TINYINT(1)` (`0`/`1`) |
//! | `timestamp` | `DATETIME(6)`, in UTC |
//! | `json`, `null` | `JSON` (on MariaDB an alias of `LONGTEXT` with a `json_valid` check) |
//!
//! `row_id` is `VARCHAR(255)`, `props` is `JSON NOT NULL DEFAULT ('{}')`, `deleted_at` and
//! `synced_at` are `DATETIME(6)`. Tables are created `utf8mb4` with the binary collation, so
//! row ids and text compare byte for byte (`'A'` and `'a'` are different rows), whatever the
//! database's default character set. Identifiers pass the kernel's `validate_identifier` and are
//! quoted with backticks; statements use `?` placeholders, at most [`MYSQL_MAX_BIND_PARAMS`] per
//! statement. The upsert is `INSERT … ON DUPLICATE KEY UPDATE c = VALUES(c)`, the form both
//! MySQL and MariaDB accept (MySQL 8's `AS new` alias is not MariaDB's); it updates on a
//! conflict with *any* unique key, the primary key or an `externalIdColumn`.

use crate::kernel::materialise::{
    Cell, DELETED_AT_COLUMN, PROPS_COLUMN, ROW_ID_COLUMN, SYNCED_AT_COLUMN, SqlDialect,
    check_materialisable, rfc3339_micros, upsert_columns,
};
use crate::kernel::schema::{ColumnType, TableSchema, validate_identifier};
use crate::{Error, Result};

/// The most bind parameters one MySQL statement may carry (the protocol's 16-bit count).
pub const MYSQL_MAX_BIND_PARAMS: usize = 65535;

/// The table options every table LakeSync creates gets.
pub(crate) const TABLE_OPTIONS: &str = "DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// MySQL's and MariaDB's dialect for materialised tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct MysqlDialect;

impl SqlDialect for MysqlDialect {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn column_type(&self, column_type: ColumnType) -> &'static str {
        match column_type {
            ColumnType::String => "TEXT",
            ColumnType::Number => "DOUBLE",
            ColumnType::Integer => "BIGINT",
            ColumnType::Boolean => "TINYINT(1)",
            ColumnType::Timestamp => "DATETIME(6)",
            ColumnType::Json | ColumnType::Null => "JSON",
        }
    }

    fn row_id_type(&self) -> &'static str {
        "VARCHAR(255)"
    }

    fn props_type(&self) -> &'static str {
        "JSON"
    }

    fn timestamp_type(&self) -> &'static str {
        "DATETIME(6)"
    }

    fn placeholder(&self, _index: usize) -> String {
        "?".to_string()
    }

    fn max_bind_params(&self) -> usize {
        MYSQL_MAX_BIND_PARAMS
    }

    fn props_default(&self) -> &'static str {
        "('{}')"
    }

    /// Backticks, after `validate_identifier` (so a name can never hold a backtick).
    fn quote(&self, name: &str) -> Result<String> {
        validate_identifier(name)?;
        Ok(format!("`{name}`"))
    }

    /// As the standard `CREATE TABLE`, but string key columns are `VARCHAR(255)` (MySQL cannot
    /// index a `TEXT` column without a prefix length), the external id is a named `UNIQUE KEY`,
    /// and the table is `utf8mb4` with the binary collation.
    fn create_table(&self, schema: &TableSchema) -> Result<String> {
        check_materialisable(schema)?;
        let pk: Vec<&str> = match &schema.primary_key {
            Some(pk) => pk.iter().map(String::as_str).collect(),
            None => vec![ROW_ID_COLUMN],
        };
        let is_key =
            |name: &str| pk.contains(&name) || schema.external_id_column.as_deref() == Some(name);
        let mut defs = vec![format!(
            "{} {} NOT NULL",
            self.quote(ROW_ID_COLUMN)?,
            self.row_id_type()
        )];
        for col in &schema.columns {
            let sql_type = match col.column_type {
                ColumnType::String if is_key(&col.name) => "VARCHAR(255)",
                other => self.column_type(other),
            };
            defs.push(format!("{} {sql_type}", self.quote(&col.name)?));
        }
        defs.push(format!(
            "{} {} NOT NULL DEFAULT {}",
            self.quote(PROPS_COLUMN)?,
            self.props_type(),
            self.props_default()
        ));
        if schema.is_soft_delete() {
            defs.push(format!(
                "{} {} NULL",
                self.quote(DELETED_AT_COLUMN)?,
                self.timestamp_type()
            ));
        }
        defs.push(format!(
            "{} {} NOT NULL",
            self.quote(SYNCED_AT_COLUMN)?,
            self.timestamp_type()
        ));
        defs.push(format!("PRIMARY KEY ({})", self.quote_list(&pk)?));
        if let Some(ext) = &schema.external_id_column {
            defs.push(format!("UNIQUE KEY ({})", self.quote(ext)?));
        }
        Ok(format!(
            "CREATE TABLE IF NOT EXISTS {} ({}) {TABLE_OPTIONS}",
            self.table_name(&schema.table)?,
            defs.join(", ")
        ))
    }

    /// `INSERT … VALUES (…), … ON DUPLICATE KEY UPDATE c = VALUES(c), …` over every upserted
    /// column but `row_id` (never `props`).
    fn upsert(&self, schema: &TableSchema, rows: usize) -> Result<String> {
        let columns = upsert_columns(schema);
        let quoted = columns
            .iter()
            .map(|c| self.quote(c))
            .collect::<Result<Vec<_>>>()?;
        let one = format!("({})", vec!["?"; columns.len()].join(", "));
        let assignments = quoted
            .iter()
            .skip(1)
            .map(|q| format!("{q} = VALUES({q})"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(format!(
            "INSERT INTO {} ({}) VALUES {} ON DUPLICATE KEY UPDATE {assignments}",
            self.table_name(&schema.table)?,
            quoted.join(", "),
            vec![one; rows.max(1)].join(", ")
        ))
    }
}

/// A value to bind into a MySQL statement.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Bind {
    Null,
    Integer(i64),
    Unsigned(u64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl MysqlDialect {
    /// The storage of a planned cell.
    pub(crate) fn bind(cell: Cell) -> Result<Bind> {
        Ok(match cell {
            Cell::Null => Bind::Null,
            Cell::String(s) | Cell::Json(s) => Bind::Text(s),
            Cell::Number(f) if f.is_finite() => Bind::Real(f),
            Cell::Number(f) => {
                return Err(Error::invalid(
                    "value",
                    format!("{f} cannot be stored: MySQL has no non-finite numbers"),
                ));
            }
            Cell::Integer(i) => Bind::Integer(i),
            Cell::Boolean(b) => Bind::Integer(i64::from(b)),
            Cell::Timestamp(micros) => Bind::Text(datetime_micros(micros)?),
        })
    }
}

/// A `DATETIME(6)` literal (UTC) for microseconds since the Unix epoch:
/// `YYYY-MM-DD HH:MM:SS.ffffff`.
pub(crate) fn datetime_micros(micros: i64) -> Result<String> {
    let rfc = rfc3339_micros(micros)?;
    Ok(rfc.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `sql` with `binds` bound in order.
pub(crate) fn query_with(
    sql: &str,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    binds
        .into_iter()
        .fold(sqlx::query(sql), |q, value| match value {
            Bind::Null => q.bind(None::<String>),
            Bind::Integer(i) => q.bind(i),
            Bind::Unsigned(u) => q.bind(u),
            Bind::Real(f) => q.bind(f),
            Bind::Text(s) => q.bind(s),
            Bind::Blob(b) => q.bind(b),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::schema::ColumnDef;

    fn todos() -> TableSchema {
        TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("done", ColumnType::Boolean),
                ColumnDef::new("due", ColumnType::Timestamp),
            ],
        )
    }

    #[test]
    fn create_table_uses_backticks_and_mysql_types() {
        let sql = MysqlDialect.create_table(&todos()).unwrap();
        assert_eq!(
            sql,
            "CREATE TABLE IF NOT EXISTS `todos` (`row_id` VARCHAR(255) NOT NULL, `title` TEXT, \
             `done` TINYINT(1), `due` DATETIME(6), `props` JSON NOT NULL DEFAULT ('{}'), \
             `deleted_at` DATETIME(6) NULL, `synced_at` DATETIME(6) NOT NULL, \
             PRIMARY KEY (`row_id`)) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        );
    }

    #[test]
    fn string_keys_are_varchar() {
        let mut t = todos();
        t.external_id_column = Some("title".into());
        let sql = MysqlDialect.create_table(&t).unwrap();
        assert!(sql.contains("`title` VARCHAR(255)"), "{sql}");
        assert!(sql.contains("UNIQUE KEY (`title`)"), "{sql}");
    }

    #[test]
    fn upsert_uses_on_duplicate_key_update() {
        let sql = MysqlDialect.upsert(&todos(), 2).unwrap();
        assert_eq!(
            sql,
            "INSERT INTO `todos` (`row_id`, `title`, `done`, `due`, `deleted_at`, `synced_at`) \
             VALUES (?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
             `title` = VALUES(`title`), `done` = VALUES(`done`), `due` = VALUES(`due`), \
             `deleted_at` = VALUES(`deleted_at`), `synced_at` = VALUES(`synced_at`)"
        );
    }

    #[test]
    fn hostile_names_are_rejected_not_quoted() {
        for name in ["evil`; DROP TABLE x; --", "a\"b", "a'b", "a b", ""] {
            assert!(MysqlDialect.quote(name).is_err(), "{name:?}");
        }
        let t = TableSchema::new("evil`x", vec![]);
        assert!(MysqlDialect.create_table(&t).is_err());
    }

    #[test]
    fn timestamps_bind_as_datetime_text() {
        assert_eq!(
            datetime_micros(1_704_164_645_123_456).unwrap(),
            "2024-01-02 03:04:05.123456"
        );
    }
}
