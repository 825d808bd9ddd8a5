//! The replica's own tables: the bookkeeping tables every replica has, and the SQL that creates
//! and evolves a synced table.
//!
//! A synced table `t` is a plain SQLite table: `"_row_id" TEXT PRIMARY KEY` (the delta
//! contract's row identity), then one nullable column per schema column, typed as
//! [`super::values`] describes. Evolution is add-only, as on the server: a schema that appends
//! columns becomes `ALTER TABLE ... ADD COLUMN`, anything else is refused.
//!
//! Bookkeeping lives beside the data, in the same file, so that a data change and its
//! bookkeeping commit in one transaction:
//!
//! - `_lakesync_meta(key, value)`: the client id, the last HLC issued, the pull cursor, the set
//!   of tables the cursor covers, whether a checkpoint is due, the last sync time;
//! - `_lakesync_tables(table_name, schema_json, schema_version, updated_at)`: registered schemas;
//! - `_lakesync_outbox`: local changes not yet acknowledged by the gateway (see
//!   [`super::outbox`]);
//! - `_lakesync_inflight`: rows whose pushed changes await the server's verdict (see
//!   [`super::apply`]).

use crate::kernel::schema::{ColumnDef, TableSchema, quote_identifier, validate_identifier};
use crate::{Error, Result};

use super::values::sql_type;

/// The name of the row identity column of every synced table.
pub const ROW_ID_COLUMN: &str = "_row_id";

/// The prefix of the replica's bookkeeping tables; no synced table may use it.
pub const RESERVED_PREFIX: &str = "_lakesync";

/// Creates the bookkeeping tables (idempotent).
pub(crate) const BOOKKEEPING: &str = "
CREATE TABLE IF NOT EXISTS _lakesync_meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _lakesync_tables (
    table_name TEXT PRIMARY KEY NOT NULL,
    schema_json TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS _lakesync_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    row_id TEXT NOT NULL,
    delta_id TEXT NOT NULL UNIQUE,
    hlc INTEGER NOT NULL,
    delta TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX IF NOT EXISTS _lakesync_outbox_row ON _lakesync_outbox (table_name, row_id);
CREATE TABLE IF NOT EXISTS _lakesync_inflight (
    table_name TEXT NOT NULL,
    row_id TEXT NOT NULL,
    acked_cursor INTEGER,
    snap_op INTEGER,
    snap_cursor INTEGER,
    PRIMARY KEY (table_name, row_id)
);
";

/// Checks that `schema` may be synced into a replica: a valid schema whose table name does not
/// collide with the bookkeeping tables.
pub(crate) fn check_schema(schema: &TableSchema) -> Result<()> {
    schema.validate()?;
    if schema
        .table
        .to_ascii_lowercase()
        .starts_with(RESERVED_PREFIX)
    {
        return Err(Error::schema(format!(
            "table {:?}: names starting with {RESERVED_PREFIX:?} are the replica's own",
            schema.table
        )));
    }
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS` for a synced table.
pub(crate) fn create_table(schema: &TableSchema) -> Result<String> {
    validate_identifier(&schema.table)?;
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {} ({} TEXT PRIMARY KEY NOT NULL",
        quote_identifier(&schema.table),
        quote_identifier(ROW_ID_COLUMN)
    );
    for column in &schema.columns {
        validate_identifier(&column.name)?;
        sql.push_str(&format!(
            ", {} {}",
            quote_identifier(&column.name),
            sql_type(column.column_type)
        ));
    }
    sql.push(')');
    Ok(sql)
}

/// `ALTER TABLE ... ADD COLUMN` for one new column.
pub(crate) fn add_column(table: &str, column: &ColumnDef) -> Result<String> {
    validate_identifier(table)?;
    validate_identifier(&column.name)?;
    Ok(format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        quote_identifier(table),
        quote_identifier(&column.name),
        sql_type(column.column_type)
    ))
}

/// The select list `"_row_id", "c1", ...` of a synced table.
pub(crate) fn select_list(schema: &TableSchema) -> String {
    std::iter::once(ROW_ID_COLUMN)
        .chain(schema.columns.iter().map(|c| c.name.as_str()))
        .map(quote_identifier)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How `next` relates to the `current` schema of a table.
#[derive(Debug, PartialEq)]
pub(crate) enum Evolution<'a> {
    /// Same columns (or `next` is an older prefix): nothing to do.
    Unchanged,
    /// `next` appends these columns.
    Adds(&'a [ColumnDef]),
}

/// Compares schemas of one table: `next` may append columns to `current` or be a prefix of it
/// (an older server); anything else is a schema error naming the first difference.
pub(crate) fn evolution<'a>(current: &TableSchema, next: &'a TableSchema) -> Result<Evolution<'a>> {
    let shared = current.columns.len().min(next.columns.len());
    for (old, new) in current.columns[..shared]
        .iter()
        .zip(&next.columns[..shared])
    {
        if old.name != new.name || old.column_type != new.column_type {
            return Err(Error::schema(format!(
                "table {:?}: the local column {:?} ({}) differs from the server's {:?} ({}); \
                 schemas may only append columns",
                current.table,
                old.name,
                old.column_type.name(),
                new.name,
                new.column_type.name()
            )));
        }
    }
    if next.columns.len() > current.columns.len() {
        Ok(Evolution::Adds(&next.columns[current.columns.len()..]))
    } else {
        Ok(Evolution::Unchanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::schema::ColumnType;

    fn todos(cols: &[(&str, ColumnType)]) -> TableSchema {
        TableSchema::new(
            "todos",
            cols.iter().map(|(n, t)| ColumnDef::new(*n, *t)).collect(),
        )
    }

    #[test]
    fn ddl_and_evolution() {
        let a = todos(&[("title", ColumnType::String), ("done", ColumnType::Boolean)]);
        assert_eq!(
            create_table(&a).unwrap(),
            r#"CREATE TABLE IF NOT EXISTS "todos" ("_row_id" TEXT PRIMARY KEY NOT NULL, "title" TEXT, "done" INTEGER)"#
        );
        let b = todos(&[
            ("title", ColumnType::String),
            ("done", ColumnType::Boolean),
            ("due", ColumnType::Timestamp),
        ]);
        let Evolution::Adds(added) = evolution(&a, &b).unwrap() else {
            panic!("b appends a column");
        };
        assert_eq!(added.len(), 1);
        assert_eq!(
            add_column("todos", &added[0]).unwrap(),
            r#"ALTER TABLE "todos" ADD COLUMN "due" TEXT"#
        );
        assert_eq!(evolution(&b, &a).unwrap(), Evolution::Unchanged);
        let c = todos(&[("title", ColumnType::Integer)]);
        assert!(evolution(&a, &c).unwrap_err().to_string().contains("title"));
        let mut bad = a.clone();
        bad.table = "_lakesync_meta".into();
        assert!(check_schema(&bad).is_err());
    }
}
