//! Materialisation planning: from merged row state to the statements and rows that bring a SQL
//! table up to date. Pure: this module builds SQL text and typed row values; adapters bind and run
//! them.
//!
//! **Table shape** (the original's): `row_id` text, then the table's data columns in schema order,
//! then `props` (JSON, `NOT NULL DEFAULT '{}'`, for the application's own use — LakeSync never
//! writes it after the row is created), then `deleted_at` (a nullable timestamp, present only when
//! the table soft-deletes), then `synced_at` (a timestamp, `NOT NULL`: when LakeSync last wrote the
//! row). The primary key is `primaryKey` (default `row_id`); `externalIdColumn`, when set, is
//! `UNIQUE` and is the upsert's conflict target instead of the primary key, as in the original.
//!
//! **Semantics.** A plan is a function of a state batch ([`crate::merge::merge`] output), so a
//! sink that merges the *full* history of the rows it touches materialises exactly the
//! last-writer-wins fold of all deltas, however they were batched or ordered:
//! - a live row is upserted with its visible values; a column the state holds no value for is
//!   written as NULL, and `deleted_at` is NULL (so a write after a DELETE resurrects the row);
//! - a tombstone is hard-deleted (`softDelete: false`), or — by default — soft-deleted: upserted
//!   with `deleted_at` set to the wall-clock time of its newest DELETE's HLC, and with the values
//!   the row had just before that DELETE ([`before_delete_state`]). The original ran
//!   `UPDATE … SET deleted_at = now()`, which made a soft-deleted row's presence and values depend
//!   on which batch the DELETE arrived in (a row inserted and deleted in one flush never appeared;
//!   split over two flushes it did). Writing the tombstone as an upsert whose every value is
//!   derived from the deltas removes that dependence;
//! - `synced_at` is the only value that depends on when the plan was applied.
//!
//! [`SqlDialect`] is the dialect-neutral statement builder: a dialect names its types, its bind
//! placeholders and its bind limit, and inherits SQL text that SQLite and Postgres both accept
//! (`INSERT … ON CONFLICT (…) DO UPDATE SET c = excluded.c`); MySQL and BigQuery override the
//! statements whose syntax differs. Every identifier is validated and quoted; every value is a
//! bind parameter.

use std::collections::HashMap;
use std::fmt;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_select::filter::filter_record_batch;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::delta_batch::DeltaColumns;
use crate::error::{Error, Result};
use crate::merge::merge;
use crate::schema::{ColumnDef, ColumnType, TableSchema, quote_identifier, validate_identifier};
use crate::state::{self, ClientKey, Version};

/// The row identity column of a materialised table.
pub const ROW_ID_COLUMN: &str = "row_id";
/// The application's free-form JSON column (default `{}`), never written by LakeSync.
pub const PROPS_COLUMN: &str = "props";
/// When a soft-deleted row was deleted (only in soft-delete tables).
pub const DELETED_AT_COLUMN: &str = "deleted_at";
/// When LakeSync last wrote the row.
pub const SYNCED_AT_COLUMN: &str = "synced_at";
/// Column names a materialised table reserves; data columns may not use them.
pub const MATERIALISED_COLUMNS: &[&str] = &[
    ROW_ID_COLUMN,
    PROPS_COLUMN,
    DELETED_AT_COLUMN,
    SYNCED_AT_COLUMN,
];

/// Checks that `schema` is valid and can be materialised: no data column may be called `row_id`,
/// `props`, `deleted_at` or `synced_at`.
pub fn check_materialisable(schema: &TableSchema) -> Result<()> {
    schema.validate()?;
    for (i, col) in schema.columns.iter().enumerate() {
        if MATERIALISED_COLUMNS.contains(&col.name.as_str()) {
            return Err(Error::schema(format!(
                "table {:?} columns[{i}]: {:?} is a column every materialised table has; rename the data column",
                schema.table, col.name
            )));
        }
    }
    Ok(())
}

/// One typed value to bind into a materialised table. Dialects choose the storage (SQLite keeps
/// booleans as 0/1 and timestamps as RFC 3339 text, for example).
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// A `string` column's value.
    String(String),
    /// A `number` column's value.
    Number(f64),
    /// An `integer` column's value.
    Integer(i64),
    /// A `boolean` column's value.
    Boolean(bool),
    /// A `timestamp` column's value, in microseconds since the Unix epoch (UTC).
    Timestamp(i64),
    /// A `json` (or `null`-typed) column's value, as JSON text.
    Json(String),
}

/// A row to insert or update.
#[derive(Clone, Debug, PartialEq)]
pub struct UpsertRow {
    /// The row's identity.
    pub row_id: String,
    /// One value per data column, in schema order.
    pub values: Vec<Cell>,
    /// For a soft-deleted row, when it was deleted (µs since the epoch, from its DELETE's HLC);
    /// `None` for a live row.
    pub deleted_at: Option<i64>,
}

/// What to write to bring a materialised table in line with a state batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaterialisePlan {
    /// Rows to upsert: every live row, and in soft-delete tables every tombstone.
    pub upserts: Vec<UpsertRow>,
    /// Row ids to hard-delete (tombstones of tables with `softDelete: false`).
    pub deletes: Vec<String>,
}

/// Plans the writes that make a materialised table hold `state` (a [`merge`] output for
/// `schema`).
///
/// `before_delete` is, for soft-delete tables, the [`before_delete_state`] of the same deltas:
/// soft-deleted rows keep the values it holds for them (rows it lacks get NULLs). It is ignored
/// for hard-delete tables.
pub fn plan_materialise(
    schema: &TableSchema,
    state: &RecordBatch,
    before_delete: Option<&RecordBatch>,
) -> Result<MaterialisePlan> {
    let view = StateView::new(schema, state)?;
    let soft = schema.is_soft_delete();
    let before = match before_delete.filter(|_| soft) {
        Some(batch) => Some(StateView::new(schema, batch)?),
        None => None,
    };
    let before_index: HashMap<&str, usize> = before.as_ref().map_or_else(HashMap::new, |b| {
        (0..b.len())
            .filter(|&i| !b.deleted.value(i))
            .map(|i| (b.row_id.value(i), i))
            .collect()
    });

    let mut plan = MaterialisePlan::default();
    for i in 0..view.len() {
        let row_id = view.row_id.value(i);
        if !view.deleted.value(i) {
            plan.upserts.push(UpsertRow {
                row_id: row_id.to_string(),
                values: view.cells(schema, i)?,
                deleted_at: None,
            });
        } else if soft {
            let values = match (&before, before_index.get(row_id)) {
                (Some(b), Some(&j)) => b.cells(schema, j)?,
                _ => vec![Cell::Null; schema.columns.len()],
            };
            plan.upserts.push(UpsertRow {
                row_id: row_id.to_string(),
                values,
                deleted_at: Some(view.deleted_at_micros(i)?),
            });
        } else {
            plan.deletes.push(row_id.to_string());
        }
    }
    Ok(plan)
}

/// For the tombstones in `state`, the state their rows had just before their newest DELETE: the
/// merge of those rows' deltas whose version is below that DELETE's. `deltas` must be the full
/// history of the rows (the same batches `state` was merged from). `None` when `state` has no
/// tombstones.
pub fn before_delete_state(
    schema: &TableSchema,
    state: &RecordBatch,
    deltas: &[RecordBatch],
) -> Result<Option<RecordBatch>> {
    let view = StateView::new(schema, state)?;
    let mut delete_versions: HashMap<&str, Version<'_>> = HashMap::new();
    for i in 0..view.len() {
        if view.deleted.value(i) {
            delete_versions.insert(view.row_id.value(i), view.delete_version(i)?);
        }
    }
    if delete_versions.is_empty() {
        return Ok(None);
    }
    let mut older = Vec::with_capacity(deltas.len());
    for batch in deltas {
        let cols = DeltaColumns::new(batch)?;
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                Some(
                    delete_versions
                        .get(cols.row_id.value(i))
                        .is_some_and(|delete| {
                            Version {
                                hlc: cols.hlc.value(i),
                                client_id: ClientKey::Text(cols.client_id.value(i)),
                                delta_id: cols.delta_id.value(i),
                            } < *delete
                        }),
                )
            })
            .collect();
        if keep.true_count() > 0 {
            older.push(filter_record_batch(batch, &keep)?);
        }
    }
    Ok(Some(merge(schema, None, &older)?))
}

/// Formats microseconds since the epoch as RFC 3339 in UTC with exactly six fractional digits
/// (`2026-01-31T12:00:00.000000Z`), so that text order is time order.
pub fn rfc3339_micros(micros: i64) -> Result<String> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .ok_or_else(|| {
            Error::invalid(
                "timestamp",
                format!("{micros} µs since the epoch is out of range"),
            )
        })
}

/// The columns an upsert binds, per row and in order: `row_id`, the data columns, `deleted_at`
/// (soft-delete tables only), `synced_at`.
pub fn upsert_columns(schema: &TableSchema) -> Vec<&str> {
    let mut out = Vec::with_capacity(schema.columns.len() + 3);
    out.push(ROW_ID_COLUMN);
    out.extend(schema.columns.iter().map(|c| c.name.as_str()));
    if schema.is_soft_delete() {
        out.push(DELETED_AT_COLUMN);
    }
    out.push(SYNCED_AT_COLUMN);
    out
}

/// The columns an upsert's conflict target names: `externalIdColumn` when set, else the primary
/// key (default `row_id`).
pub fn conflict_columns(schema: &TableSchema) -> Vec<&str> {
    match (&schema.external_id_column, &schema.primary_key) {
        (Some(ext), _) => vec![ext.as_str()],
        (None, Some(pk)) => pk.iter().map(String::as_str).collect(),
        (None, None) => vec![ROW_ID_COLUMN],
    }
}

/// A SQL dialect materialised tables are written in.
///
/// A dialect supplies type names, placeholders and its bind limit; the provided methods build
/// statements in the syntax SQLite and Postgres share, and a dialect whose syntax differs
/// overrides them. Statements bind values in the order their docs state; identifiers are
/// validated ([`validate_identifier`]) and quoted, never spliced raw.
pub trait SqlDialect: fmt::Debug + Send + Sync {
    /// The dialect's name, e.g. `sqlite`.
    fn name(&self) -> &'static str;

    /// The SQL type of a data column of `column_type`.
    fn column_type(&self, column_type: ColumnType) -> &'static str;

    /// The SQL type of `row_id`.
    fn row_id_type(&self) -> &'static str;

    /// The SQL type of `props`.
    fn props_type(&self) -> &'static str;

    /// The SQL type of `deleted_at` and `synced_at`.
    fn timestamp_type(&self) -> &'static str;

    /// The bind placeholder for the `index`-th parameter of a statement (1-based).
    fn placeholder(&self, index: usize) -> String;

    /// The most bind parameters one statement may carry.
    fn max_bind_params(&self) -> usize;

    /// The default expression of `props`.
    fn props_default(&self) -> &'static str {
        "'{}'"
    }

    /// A validated, quoted identifier.
    fn quote(&self, name: &str) -> Result<String> {
        validate_identifier(name)?;
        Ok(quote_identifier(name))
    }

    /// The quoted name of a materialised table (a dialect may qualify it, e.g. with a dataset).
    fn table_name(&self, table: &str) -> Result<String> {
        self.quote(table)
    }

    /// `CREATE TABLE IF NOT EXISTS` for `schema`'s materialised table.
    fn create_table(&self, schema: &TableSchema) -> Result<String> {
        check_materialisable(schema)?;
        let mut defs = vec![format!(
            "{} {} NOT NULL",
            self.quote(ROW_ID_COLUMN)?,
            self.row_id_type()
        )];
        for col in &schema.columns {
            defs.push(format!(
                "{} {}",
                self.quote(&col.name)?,
                self.column_type(col.column_type)
            ));
        }
        defs.push(format!(
            "{} {} NOT NULL DEFAULT {}",
            self.quote(PROPS_COLUMN)?,
            self.props_type(),
            self.props_default()
        ));
        if schema.is_soft_delete() {
            defs.push(format!(
                "{} {}",
                self.quote(DELETED_AT_COLUMN)?,
                self.timestamp_type()
            ));
        }
        defs.push(format!(
            "{} {} NOT NULL",
            self.quote(SYNCED_AT_COLUMN)?,
            self.timestamp_type()
        ));
        let pk = match &schema.primary_key {
            Some(pk) => pk.iter().map(String::as_str).collect(),
            None => vec![ROW_ID_COLUMN],
        };
        defs.push(format!("PRIMARY KEY ({})", self.quote_list(&pk)?));
        if let Some(ext) = &schema.external_id_column {
            defs.push(format!("UNIQUE ({})", self.quote(ext)?));
        }
        Ok(format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.table_name(&schema.table)?,
            defs.join(", ")
        ))
    }

    /// `ALTER TABLE … ADD COLUMN` for a column added by schema evolution (always nullable).
    fn add_column(&self, schema: &TableSchema, column: &ColumnDef) -> Result<String> {
        if MATERIALISED_COLUMNS.contains(&column.name.as_str()) {
            return Err(Error::schema(format!(
                "table {:?}: cannot add column {:?}, a column every materialised table has",
                schema.table, column.name
            )));
        }
        Ok(format!(
            "ALTER TABLE {} ADD COLUMN {} {}",
            self.table_name(&schema.table)?,
            self.quote(&column.name)?,
            self.column_type(column.column_type)
        ))
    }

    /// An upsert of `rows` rows. Binds, per row, the values of [`upsert_columns`]; on a conflict
    /// on [`conflict_columns`] it overwrites every data column, `deleted_at` and `synced_at`, and
    /// never `props`.
    fn upsert(&self, schema: &TableSchema, rows: usize) -> Result<String> {
        standard_upsert(self, schema, rows)
    }

    /// Marks `rows` rows deleted without rewriting their values. Binds `deleted_at`, `synced_at`,
    /// then the row ids. (The planner writes soft deletes as upserts, which also creates rows the
    /// table has not seen; this statement is for callers that only know row ids.)
    fn soft_delete(&self, schema: &TableSchema, rows: usize) -> Result<String> {
        if !schema.is_soft_delete() {
            return Err(Error::schema(format!(
                "table {:?} hard-deletes (softDelete: false) and has no {DELETED_AT_COLUMN:?} column",
                schema.table
            )));
        }
        Ok(format!(
            "UPDATE {} SET {} = {}, {} = {} WHERE {} IN ({})",
            self.table_name(&schema.table)?,
            self.quote(DELETED_AT_COLUMN)?,
            self.placeholder(1),
            self.quote(SYNCED_AT_COLUMN)?,
            self.placeholder(2),
            self.quote(ROW_ID_COLUMN)?,
            self.placeholders(3, rows)
        ))
    }

    /// Deletes `rows` rows. Binds the row ids.
    fn hard_delete(&self, schema: &TableSchema, rows: usize) -> Result<String> {
        Ok(format!(
            "DELETE FROM {} WHERE {} IN ({})",
            self.table_name(&schema.table)?,
            self.quote(ROW_ID_COLUMN)?,
            self.placeholders(1, rows)
        ))
    }

    /// How many rows one statement binding `binds_per_row` values per row may carry (at least 1).
    fn rows_per_statement(&self, binds_per_row: usize) -> usize {
        (self.max_bind_params() / binds_per_row.max(1)).max(1)
    }

    /// `count` comma-separated placeholders starting at parameter `first` (at least one).
    fn placeholders(&self, first: usize, count: usize) -> String {
        (first..first + count.max(1))
            .map(|i| self.placeholder(i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Quoted, comma-separated identifiers.
    fn quote_list(&self, names: &[&str]) -> Result<String> {
        Ok(names
            .iter()
            .map(|n| self.quote(n))
            .collect::<Result<Vec<_>>>()?
            .join(", "))
    }
}

/// `INSERT … VALUES (…), … ON CONFLICT (<conflict columns>) DO UPDATE SET <assignments>`: the
/// upsert SQLite and Postgres share ([`SqlDialect::upsert`]'s default).
pub fn standard_upsert<D: SqlDialect + ?Sized>(
    dialect: &D,
    schema: &TableSchema,
    rows: usize,
) -> Result<String> {
    let columns = upsert_columns(schema);
    let quoted = columns
        .iter()
        .map(|c| dialect.quote(c))
        .collect::<Result<Vec<_>>>()?;
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        dialect.table_name(&schema.table)?,
        quoted.join(", ")
    );
    let mut index = 0;
    for row in 0..rows.max(1) {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns.len() {
            if c > 0 {
                sql.push_str(", ");
            }
            index += 1;
            sql.push_str(&dialect.placeholder(index));
        }
        sql.push(')');
    }
    sql.push_str(&format!(
        " ON CONFLICT ({}) DO UPDATE SET {}",
        dialect.quote_list(&conflict_columns(schema))?,
        upsert_assignments(dialect, schema)?
    ));
    Ok(sql)
}

/// `"c" = excluded."c", …` for every upserted column but `row_id`: the data columns,
/// `deleted_at` (soft-delete tables) and `synced_at`.
pub fn upsert_assignments<D: SqlDialect + ?Sized>(
    dialect: &D,
    schema: &TableSchema,
) -> Result<String> {
    Ok(upsert_columns(schema)
        .iter()
        .skip(1)
        .map(|c| dialect.quote(c).map(|q| format!("{q} = excluded.{q}")))
        .collect::<Result<Vec<_>>>()?
        .join(", "))
}

/// Typed access to a state batch, checked against a schema.
struct StateView<'a> {
    row_id: &'a arrow_array::StringArray,
    deleted: &'a BooleanArray,
    delete_version: &'a arrow_array::BinaryArray,
    data: &'a [ArrayRef],
}

impl<'a> StateView<'a> {
    fn new(schema: &TableSchema, batch: &'a RecordBatch) -> Result<Self> {
        let bad = |what: String| {
            Error::invalid(
                "state batch",
                format!("materialising table {:?}: {what}", schema.table),
            )
        };
        let c = batch.columns();
        let names = [state::ROW_ID, state::DELETED, state::DELETE_VERSION];
        for (i, name) in [0, 2, 4].into_iter().zip(names) {
            if batch
                .schema_ref()
                .fields()
                .get(i)
                .map(|f| f.name().as_str())
                != Some(name)
            {
                return Err(bad(format!("column {i} is not {name:?}")));
            }
        }
        let data = &c[state::RESERVED.min(c.len())..];
        if data.len() != schema.columns.len() {
            return Err(bad(format!(
                "{} data columns, the schema has {}",
                data.len(),
                schema.columns.len()
            )));
        }
        for (array, def) in data.iter().zip(&schema.columns) {
            if *array.data_type() != def.column_type.arrow_type() {
                return Err(bad(format!(
                    "column {:?} has Arrow type {}, expected {}",
                    def.name,
                    array.data_type(),
                    def.column_type.arrow_type()
                )));
            }
        }
        Ok(Self {
            row_id: c[0]
                .as_string_opt()
                .ok_or_else(|| bad("_row_id is not Utf8".into()))?,
            deleted: c[2]
                .as_boolean_opt()
                .ok_or_else(|| bad("_deleted is not Boolean".into()))?,
            delete_version: c[4]
                .as_binary_opt()
                .ok_or_else(|| bad("_delete_version is not Binary".into()))?,
            data,
        })
    }

    fn len(&self) -> usize {
        self.row_id.len()
    }

    fn delete_version(&self, i: usize) -> Result<Version<'a>> {
        if self.delete_version.is_null(i) {
            return Err(Error::invalid(
                "state batch",
                format!("tombstone {:?} has no delete version", self.row_id.value(i)),
            ));
        }
        Version::from_key(self.delete_version.value(i))
    }

    fn deleted_at_micros(&self, i: usize) -> Result<i64> {
        let wall_ms = self.delete_version(i)?.hlc >> 16;
        // A 48-bit millisecond wall clock times 1000 fits in an i64.
        Ok((wall_ms as i64).saturating_mul(1000))
    }

    fn cells(&self, schema: &TableSchema, i: usize) -> Result<Vec<Cell>> {
        self.data
            .iter()
            .zip(&schema.columns)
            .map(|(array, def)| cell(array, i, def.column_type))
            .collect()
    }
}

/// The typed cell at row `i` of a data column (types were checked by [`StateView::new`]).
fn cell(array: &ArrayRef, i: usize, column_type: ColumnType) -> Result<Cell> {
    if array.is_null(i) {
        return Ok(Cell::Null);
    }
    let mismatch = || {
        Error::internal(format!(
            "a {} column has Arrow type {}",
            column_type.name(),
            array.data_type()
        ))
    };
    Ok(match column_type {
        ColumnType::String => Cell::String(
            array
                .as_string_opt::<i32>()
                .ok_or_else(mismatch)?
                .value(i)
                .to_string(),
        ),
        ColumnType::Json | ColumnType::Null => Cell::Json(
            array
                .as_string_opt::<i32>()
                .ok_or_else(mismatch)?
                .value(i)
                .to_string(),
        ),
        ColumnType::Number => Cell::Number(
            array
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(mismatch)?
                .value(i),
        ),
        ColumnType::Integer => Cell::Integer(
            array
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(mismatch)?
                .value(i),
        ),
        ColumnType::Boolean => Cell::Boolean(array.as_boolean_opt().ok_or_else(mismatch)?.value(i)),
        ColumnType::Timestamp => Cell::Timestamp(
            array
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(mismatch)?
                .value(i),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{ColumnDelta, DeltaOp, RowDelta};
    use crate::delta_batch::deltas_to_batch;
    use crate::hlc::HlcTimestamp;
    use serde_json::{Value, json};

    /// SQLite's types, as the SQLite adapter's dialect names them.
    #[derive(Debug)]
    struct Sqlite;

    impl SqlDialect for Sqlite {
        fn name(&self) -> &'static str {
            "sqlite"
        }
        fn column_type(&self, t: ColumnType) -> &'static str {
            match t {
                ColumnType::Number => "REAL",
                ColumnType::Integer | ColumnType::Boolean => "INTEGER",
                _ => "TEXT",
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
        fn placeholder(&self, _: usize) -> String {
            "?".into()
        }
        fn max_bind_params(&self) -> usize {
            32766
        }
    }

    /// Numbered placeholders, as Postgres writes them.
    #[derive(Debug)]
    struct Numbered;

    impl SqlDialect for Numbered {
        fn name(&self) -> &'static str {
            "numbered"
        }
        fn column_type(&self, t: ColumnType) -> &'static str {
            Sqlite.column_type(t)
        }
        fn row_id_type(&self) -> &'static str {
            "TEXT"
        }
        fn props_type(&self) -> &'static str {
            "JSONB"
        }
        fn timestamp_type(&self) -> &'static str {
            "TIMESTAMPTZ"
        }
        fn placeholder(&self, i: usize) -> String {
            format!("${i}")
        }
        fn max_bind_params(&self) -> usize {
            65535
        }
    }

    fn todos(soft: bool) -> TableSchema {
        let mut s = TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("done", ColumnType::Boolean),
            ],
        );
        s.soft_delete = Some(soft);
        s
    }

    fn all_types() -> TableSchema {
        TableSchema::new(
            "t",
            vec![
                ColumnDef::new("s", ColumnType::String),
                ColumnDef::new("n", ColumnType::Number),
                ColumnDef::new("i", ColumnType::Integer),
                ColumnDef::new("b", ColumnType::Boolean),
                ColumnDef::new("ts", ColumnType::Timestamp),
                ColumnDef::new("j", ColumnType::Json),
            ],
        )
    }

    fn d(op: DeltaOp, row: &str, client: &str, wall: u64, cols: Vec<(&str, Value)>) -> RowDelta {
        let cols = cols
            .into_iter()
            .map(|(c, v)| ColumnDelta::new(c, v))
            .collect();
        RowDelta::new(
            op,
            "todos",
            row,
            client,
            cols,
            HlcTimestamp::new(wall, 0).unwrap(),
        )
    }

    fn plan(schema: &TableSchema, deltas: &[RowDelta]) -> MaterialisePlan {
        let batch = deltas_to_batch(schema, deltas).unwrap();
        let state = merge(schema, None, std::slice::from_ref(&batch)).unwrap();
        let before = before_delete_state(schema, &state, &[batch]).unwrap();
        plan_materialise(schema, &state, before.as_ref()).unwrap()
    }

    fn s(v: &str) -> Cell {
        Cell::String(v.into())
    }

    #[test]
    fn create_table_sql_for_sqlite() {
        assert_eq!(
            Sqlite.create_table(&todos(true)).unwrap(),
            "CREATE TABLE IF NOT EXISTS \"todos\" (\"row_id\" TEXT NOT NULL, \"title\" TEXT, \
             \"done\" INTEGER, \"props\" TEXT NOT NULL DEFAULT '{}', \"deleted_at\" TEXT, \
             \"synced_at\" TEXT NOT NULL, PRIMARY KEY (\"row_id\"))"
        );
        let mut hard = todos(false);
        hard.primary_key = Some(vec!["row_id".into(), "title".into()]);
        hard.external_id_column = Some("title".into());
        assert_eq!(
            Sqlite.create_table(&hard).unwrap(),
            "CREATE TABLE IF NOT EXISTS \"todos\" (\"row_id\" TEXT NOT NULL, \"title\" TEXT, \
             \"done\" INTEGER, \"props\" TEXT NOT NULL DEFAULT '{}', \"synced_at\" TEXT NOT NULL, \
             PRIMARY KEY (\"row_id\", \"title\"), UNIQUE (\"title\"))"
        );
        assert_eq!(
            Sqlite.create_table(&all_types()).unwrap(),
            "CREATE TABLE IF NOT EXISTS \"t\" (\"row_id\" TEXT NOT NULL, \"s\" TEXT, \"n\" REAL, \
             \"i\" INTEGER, \"b\" INTEGER, \"ts\" TEXT, \"j\" TEXT, \"props\" TEXT NOT NULL \
             DEFAULT '{}', \"deleted_at\" TEXT, \"synced_at\" TEXT NOT NULL, PRIMARY KEY (\"row_id\"))"
        );
    }

    #[test]
    fn upsert_and_delete_sql() {
        assert_eq!(
            Sqlite.upsert(&todos(true), 2).unwrap(),
            "INSERT INTO \"todos\" (\"row_id\", \"title\", \"done\", \"deleted_at\", \"synced_at\") \
             VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?) ON CONFLICT (\"row_id\") DO UPDATE SET \
             \"title\" = excluded.\"title\", \"done\" = excluded.\"done\", \"deleted_at\" = \
             excluded.\"deleted_at\", \"synced_at\" = excluded.\"synced_at\""
        );
        let mut ext = todos(false);
        ext.external_id_column = Some("title".into());
        assert_eq!(
            Numbered.upsert(&ext, 2).unwrap(),
            "INSERT INTO \"todos\" (\"row_id\", \"title\", \"done\", \"synced_at\") VALUES \
             ($1, $2, $3, $4), ($5, $6, $7, $8) ON CONFLICT (\"title\") DO UPDATE SET \"title\" = \
             excluded.\"title\", \"done\" = excluded.\"done\", \"synced_at\" = excluded.\"synced_at\""
        );
        assert_eq!(
            Sqlite.hard_delete(&todos(false), 3).unwrap(),
            "DELETE FROM \"todos\" WHERE \"row_id\" IN (?, ?, ?)"
        );
        assert_eq!(
            Numbered.soft_delete(&todos(true), 2).unwrap(),
            "UPDATE \"todos\" SET \"deleted_at\" = $1, \"synced_at\" = $2 WHERE \"row_id\" IN ($3, $4)"
        );
        assert!(
            Sqlite
                .soft_delete(&todos(false), 1)
                .unwrap_err()
                .to_string()
                .contains("hard-deletes")
        );
        assert_eq!(upsert_columns(&todos(false)).len(), 4);
        assert_eq!(Sqlite.rows_per_statement(5), 6553);
        assert_eq!(Sqlite.rows_per_statement(40000), 1);
    }

    #[test]
    fn evolution_adds_a_nullable_column() {
        let v1 = todos(true);
        let mut v2 = v1.clone();
        v2.columns
            .push(ColumnDef::new("priority", ColumnType::Integer));
        let added = v1.evolve_to(&v2).unwrap();
        assert_eq!(
            Sqlite.add_column(&v2, &added[0]).unwrap(),
            "ALTER TABLE \"todos\" ADD COLUMN \"priority\" INTEGER"
        );
        let clash = ColumnDef::new("props", ColumnType::Json);
        assert!(Sqlite.add_column(&v2, &clash).is_err());
    }

    #[test]
    fn identifiers_are_validated_and_quoted() {
        let mut bad = todos(true);
        bad.table = "todos\"; DROP TABLE x; --".into();
        let err = Sqlite.create_table(&bad).unwrap_err().to_string();
        assert!(err.contains("table name"), "{err}");
        assert!(Sqlite.hard_delete(&bad, 1).is_err());
        assert!(Sqlite.upsert(&bad, 1).is_err());
        let mut clash = todos(true);
        clash
            .columns
            .push(ColumnDef::new("synced_at", ColumnType::String));
        let err = Sqlite.create_table(&clash).unwrap_err().to_string();
        assert!(
            err.contains("columns[2]") && err.contains("synced_at"),
            "{err}"
        );
        // Reserved words are fine once quoted.
        let mut keyword = todos(true);
        keyword.table = "select".into();
        assert!(
            Sqlite
                .create_table(&keyword)
                .unwrap()
                .starts_with("CREATE TABLE IF NOT EXISTS \"select\"")
        );
    }

    #[test]
    fn live_rows_upsert_with_nulls_for_unheld_columns() {
        let p = plan(
            &todos(true),
            &[
                d(
                    DeltaOp::Insert,
                    "r1",
                    "a",
                    1,
                    vec![("title", json!("x")), ("done", json!(true))],
                ),
                d(DeltaOp::Update, "r2", "a", 2, vec![("title", json!("y"))]),
                d(DeltaOp::Update, "r1", "b", 3, vec![("title", Value::Null)]),
            ],
        );
        assert_eq!(
            p.upserts,
            vec![
                UpsertRow {
                    row_id: "r1".into(),
                    values: vec![Cell::Null, Cell::Boolean(true)],
                    deleted_at: None
                },
                UpsertRow {
                    row_id: "r2".into(),
                    values: vec![s("y"), Cell::Null],
                    deleted_at: None
                },
            ]
        );
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn soft_delete_keeps_pre_delete_values_and_hard_delete_deletes() {
        let deltas = [
            d(
                DeltaOp::Insert,
                "r1",
                "a",
                1,
                vec![("title", json!("x")), ("done", json!(false))],
            ),
            d(DeltaOp::Update, "r1", "a", 2, vec![("done", json!(true))]),
            d(DeltaOp::Delete, "r1", "a", 5, vec![]),
            // A write older than the DELETE arriving late changes the pre-delete values.
            d(DeltaOp::Update, "r1", "b", 3, vec![("title", json!("z"))]),
            d(DeltaOp::Delete, "r2", "a", 7, vec![]),
        ];
        let soft = plan(&todos(true), &deltas);
        assert_eq!(
            soft.upserts,
            vec![
                UpsertRow {
                    row_id: "r1".into(),
                    values: vec![s("z"), Cell::Boolean(true)],
                    deleted_at: Some(5_000)
                },
                UpsertRow {
                    row_id: "r2".into(),
                    values: vec![Cell::Null, Cell::Null],
                    deleted_at: Some(7_000)
                },
            ]
        );
        assert!(soft.deletes.is_empty());
        let hard = plan(&todos(false), &deltas);
        assert!(hard.upserts.is_empty());
        assert_eq!(hard.deletes, vec!["r1".to_string(), "r2".to_string()]);
    }

    #[test]
    fn a_later_write_resurrects_with_only_later_columns() {
        let p = plan(
            &todos(true),
            &[
                d(
                    DeltaOp::Insert,
                    "r1",
                    "a",
                    1,
                    vec![("title", json!("x")), ("done", json!(false))],
                ),
                d(DeltaOp::Delete, "r1", "a", 2, vec![]),
                d(DeltaOp::Update, "r1", "a", 3, vec![("done", json!(true))]),
            ],
        );
        assert_eq!(
            p.upserts,
            vec![UpsertRow {
                row_id: "r1".into(),
                values: vec![Cell::Null, Cell::Boolean(true)],
                deleted_at: None
            }]
        );
    }

    #[test]
    fn every_type_becomes_a_typed_cell() {
        let schema = all_types();
        let delta = RowDelta::new(
            DeltaOp::Insert,
            "t",
            "r",
            "c",
            vec![
                ColumnDelta::new("s", json!("hi")),
                ColumnDelta::new("n", json!(1.5)),
                ColumnDelta::new("i", json!(-3)),
                ColumnDelta::new("b", json!(false)),
                ColumnDelta::new("ts", json!("2026-01-31T12:00:00.5Z")),
                ColumnDelta::new("j", json!({"a": [1, null]})),
            ],
            HlcTimestamp(1),
        );
        let p = plan(&schema, &[delta]);
        assert_eq!(
            p.upserts[0].values,
            vec![
                s("hi"),
                Cell::Number(1.5),
                Cell::Integer(-3),
                Cell::Boolean(false),
                Cell::Timestamp(1_769_860_800_500_000),
                Cell::Json("{\"a\":[1,null]}".into()),
            ]
        );
        assert_eq!(
            rfc3339_micros(1_769_860_800_500_000).unwrap(),
            "2026-01-31T12:00:00.500000Z"
        );
        assert!(rfc3339_micros(i64::MAX).is_err());
    }

    #[test]
    fn a_state_of_another_shape_is_rejected() {
        let schema = todos(true);
        let batch = deltas_to_batch(&schema, &[]).unwrap();
        let state = merge(&schema, None, &[batch]).unwrap();
        let mut wider = schema.clone();
        wider.columns.push(ColumnDef::new("x", ColumnType::String));
        let err = plan_materialise(&wider, &state, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 data columns, the schema has 3"), "{err}");
    }
}
