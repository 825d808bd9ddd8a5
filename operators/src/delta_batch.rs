//! The Arrow delta contract: deltas of one table as a `RecordBatch`.
//!
//! Reserved columns come first, then the table's data columns typed from its [`TableSchema`]:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `_op` | UInt8 | 1 insert, 2 update, 3 delete |
//! | `_row_id` | Utf8 | row identity within the table |
//! | `_client_id` | Utf8 (a dictionary of Utf8 is accepted on read) | writer; LWW tie-break |
//! | `_hlc` | UInt64 | HLC of the change |
//! | `_delta_id` | FixedSizeBinary(32) | idempotency key |
//! | `_set` | List<UInt16> | the positions of the data columns this delta sets, in the delta's own order |
//!
//! `_set` is what makes a column-level delta honest in columnar form: a data cell means nothing
//! unless its position is listed, so "not touched" (not listed) and "set to null" (listed, cell
//! null) differ. DESIGN.md sketched `_set` as a bitmap; a list of positions carries the same
//! information *and* the delta's column order, which its deltaId depends on, so row → Arrow → row
//! is exact. The table name is in the schema metadata under `lakesync.table`; each data field
//! carries its LakeSync type under `lakesync.type`.
//!
//! Values convert by column type: `string` ⇄ JSON string, `number` ⇄ JSON number (integral
//! doubles come back as JSON integers — the same JavaScript number), `integer` ⇄ JSON integer
//! (an integral JSON double such as `3.0` is accepted), `boolean` ⇄ JSON boolean, `timestamp` ⇄
//! RFC 3339 text (normalised to UTC, `Z`, shortest exact fraction), `json`/`null` ⇄ any JSON value
//! stored as its JSON text. A value of the wrong type is a [`Error::Schema`] naming the table,
//! row, column and value.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, FixedSizeBinaryBuilder, Float64Builder, Int64Builder, ListBuilder,
    StringBuilder, TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float64Type, Int64Type, TimestampMicrosecondType, UInt8Type, UInt16Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, ListArray, PrimitiveArray, RecordBatch,
    StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::delta::{ColumnDelta, DeltaId, DeltaOp, RowDelta};
use crate::error::{Error, Result};
use crate::hlc::HlcTimestamp;
use crate::schema::{ColumnDef, ColumnType, TYPE_METADATA_KEY, TableSchema};
use crate::state::TABLE_METADATA_KEY;

/// `_op`.
pub const OP: &str = "_op";
/// `_row_id`.
pub const ROW_ID: &str = "_row_id";
/// `_client_id`.
pub const CLIENT_ID: &str = "_client_id";
/// `_hlc`.
pub const HLC: &str = "_hlc";
/// `_delta_id`.
pub const DELTA_ID: &str = "_delta_id";
/// `_set`.
pub const SET: &str = "_set";
/// The number of reserved columns before the data columns.
pub const RESERVED: usize = 6;

/// The Arrow schema of a delta batch for `table`.
pub fn delta_schema(table: &TableSchema) -> SchemaRef {
    let mut fields = vec![
        Field::new(OP, DataType::UInt8, false),
        Field::new(ROW_ID, DataType::Utf8, false),
        Field::new(CLIENT_ID, DataType::Utf8, false),
        Field::new(HLC, DataType::UInt64, false),
        Field::new(DELTA_ID, DataType::FixedSizeBinary(32), false),
        Field::new(SET, set_type(), false),
    ];
    fields.extend(table.columns.iter().map(ColumnDef::arrow_field));
    Arc::new(
        Schema::new(fields)
            .with_metadata([(TABLE_METADATA_KEY.to_string(), table.table.clone())].into()),
    )
}

fn set_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::UInt16, false)))
}

/// Recovers the table name and data columns from a delta (or state) batch's Arrow schema.
pub fn table_schema_of(schema: &Schema, reserved: usize) -> Result<TableSchema> {
    let table = schema.metadata().get(TABLE_METADATA_KEY).ok_or_else(|| {
        Error::invalid(
            "delta batch",
            format!("schema metadata has no {TABLE_METADATA_KEY:?}"),
        )
    })?;
    let columns = schema
        .fields()
        .iter()
        .skip(reserved)
        .map(|f| {
            let column_type = match f.metadata().get(TYPE_METADATA_KEY) {
                Some(name) => ColumnType::from_name(name).ok_or_else(|| {
                    Error::invalid(
                        "delta batch",
                        format!("column {:?} has unknown type {name:?}", f.name()),
                    )
                })?,
                None => infer_type(f.data_type()).ok_or_else(|| {
                    Error::invalid(
                        "delta batch",
                        format!(
                            "column {:?} has unsupported type {}",
                            f.name(),
                            f.data_type()
                        ),
                    )
                })?,
            };
            Ok(ColumnDef::new(f.name().clone(), column_type))
        })
        .collect::<Result<_>>()?;
    Ok(TableSchema::new(table.clone(), columns))
}

fn infer_type(data_type: &DataType) -> Option<ColumnType> {
    Some(match data_type {
        DataType::Utf8 => ColumnType::String,
        DataType::Float64 => ColumnType::Number,
        DataType::Int64 => ColumnType::Integer,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => ColumnType::Timestamp,
        _ => return None,
    })
}

/// Builds the delta batch for `deltas`, all of which must belong to `table`.
///
/// Fails, naming the delta, when a delta is for another table, sets an unknown column, sets a
/// column twice, is a DELETE with columns, or carries a value of the wrong type.
pub fn deltas_to_batch(table: &TableSchema, deltas: &[RowDelta]) -> Result<RecordBatch> {
    let n = deltas.len();
    let mut op = UInt8Builder::with_capacity(n);
    let mut row_id = StringBuilder::with_capacity(n, n * 16);
    let mut client_id = StringBuilder::with_capacity(n, n * 16);
    let mut hlc = UInt64Builder::with_capacity(n);
    let mut delta_id = FixedSizeBinaryBuilder::with_capacity(n, 32);
    let mut set = ListBuilder::new(UInt16Builder::new())
        .with_field(Arc::new(Field::new_list_field(DataType::UInt16, false)));
    let mut data: Vec<ValueBuilder> = table
        .columns
        .iter()
        .map(|c| ValueBuilder::new(c.column_type, n))
        .collect();
    let mut cells: Vec<Option<&Value>> = vec![None; table.columns.len()];

    for delta in deltas {
        if delta.table != table.delta_table() {
            return Err(Error::schema(format!(
                "delta {} for table {:?} cannot go into a batch of table {:?}",
                delta.delta_id, delta.table, table.table
            )));
        }
        if delta.op == DeltaOp::Delete && !delta.columns.is_empty() {
            return Err(Error::invalid(
                "delta",
                format!(
                    "DELETE delta {} of row {:?} carries columns; a DELETE sets none",
                    delta.delta_id, delta.row_id
                ),
            ));
        }
        cells.iter_mut().for_each(|c| *c = None);
        for ColumnDelta { column, value } in &delta.columns {
            let pos = table.position(column).ok_or_else(|| {
                Error::schema(format!(
                    "Unknown column {column:?} in delta {} for table {:?}",
                    delta.delta_id, table.table
                ))
            })?;
            if cells[pos].replace(value).is_some() {
                return Err(Error::invalid(
                    "delta",
                    format!("delta {} sets column {column:?} twice", delta.delta_id),
                ));
            }
            set.values().append_value(pos as u16);
        }
        set.append(true);
        for ((builder, cell), def) in data.iter_mut().zip(&cells).zip(&table.columns) {
            builder.append(*cell).map_err(|expected| {
                Error::schema(format!(
                    "table {:?} row {:?} column {:?} is {}, got {} (delta {})",
                    table.table,
                    delta.row_id,
                    def.name,
                    expected,
                    cell.map_or_else(|| "nothing".to_string(), |v| v.to_string()),
                    delta.delta_id
                ))
            })?;
        }
        op.append_value(delta.op.code());
        row_id.append_value(&delta.row_id);
        client_id.append_value(&delta.client_id);
        hlc.append_value(delta.hlc.0);
        delta_id.append_value(delta.delta_id.as_bytes())?;
    }

    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(op.finish()),
        Arc::new(row_id.finish()),
        Arc::new(client_id.finish()),
        Arc::new(hlc.finish()),
        Arc::new(delta_id.finish()),
        Arc::new(set.finish()),
    ];
    columns.extend(data.into_iter().map(ValueBuilder::finish));
    Ok(RecordBatch::try_new(delta_schema(table), columns)?)
}

/// Typed access to a delta batch's columns, checked once.
#[derive(Debug)]
pub struct DeltaColumns<'a> {
    /// `_op`.
    pub op: &'a PrimitiveArray<UInt8Type>,
    /// `_row_id`.
    pub row_id: &'a StringArray,
    /// `_client_id` (decoded to plain Utf8 when it was a dictionary).
    pub client_id: StringArray,
    /// `_hlc`.
    pub hlc: &'a PrimitiveArray<UInt64Type>,
    /// `_delta_id`.
    pub delta_id: &'a FixedSizeBinaryArray,
    /// `_set`.
    pub set: &'a ListArray,
    /// `_set`'s flattened positions.
    pub set_positions: &'a PrimitiveArray<UInt16Type>,
    /// The data columns.
    pub data: &'a [ArrayRef],
}

impl<'a> DeltaColumns<'a> {
    /// Checks `batch` against the contract and borrows its columns.
    pub fn new(batch: &'a RecordBatch) -> Result<Self> {
        let bad = |what: &str| Error::invalid("delta batch", what.to_string());
        let columns = batch.columns();
        if columns.len() < RESERVED {
            return Err(bad("fewer columns than the reserved delta columns"));
        }
        let schema = batch.schema_ref();
        for (i, name) in [OP, ROW_ID, CLIENT_ID, HLC, DELTA_ID, SET]
            .iter()
            .enumerate()
        {
            if schema.field(i).name() != name {
                return Err(bad(&format!(
                    "column {i} is {:?}, expected {name:?}",
                    schema.field(i).name()
                )));
            }
            if columns[i].null_count() > 0 {
                return Err(bad(&format!("column {name:?} has nulls")));
            }
        }
        let client_id = match columns[2].data_type() {
            DataType::Utf8 => columns[2].as_string::<i32>().clone(),
            DataType::Dictionary(_, value) if **value == DataType::Utf8 => {
                arrow_cast::cast(&columns[2], &DataType::Utf8)?
                    .as_string::<i32>()
                    .clone()
            }
            other => return Err(bad(&format!("_client_id has type {other}"))),
        };
        let typed = |i: usize, t: DataType| {
            if columns[i].data_type() == &t {
                Ok(())
            } else {
                Err(bad(&format!(
                    "column {:?} has type {}, expected {t}",
                    schema.field(i).name(),
                    columns[i].data_type()
                )))
            }
        };
        typed(0, DataType::UInt8)?;
        typed(1, DataType::Utf8)?;
        typed(3, DataType::UInt64)?;
        typed(4, DataType::FixedSizeBinary(32))?;
        let set = columns[5]
            .as_list_opt::<i32>()
            .ok_or_else(|| bad("_set is not a list"))?;
        let set_positions = set
            .values()
            .as_primitive_opt::<UInt16Type>()
            .ok_or_else(|| bad("_set is not a list of UInt16"))?;
        let n_data = columns.len() - RESERVED;
        if set_positions.null_count() > 0
            || set_positions
                .values()
                .iter()
                .any(|&p| usize::from(p) >= n_data)
        {
            return Err(bad(&format!(
                "_set lists a position outside the {n_data} data columns"
            )));
        }
        Ok(Self {
            op: columns[0].as_primitive(),
            row_id: columns[1].as_string(),
            client_id,
            hlc: columns[3].as_primitive(),
            delta_id: columns[4].as_fixed_size_binary(),
            set,
            set_positions,
            data: &columns[RESERVED..],
        })
    }

    /// The positions row `i` sets, in order.
    pub fn set_of(&self, i: usize) -> &[u16] {
        let offsets = self.set.value_offsets();
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        &self.set_positions.values()[start..end]
    }
}

/// Converts a delta batch back to row form.
pub fn batch_to_deltas(batch: &RecordBatch) -> Result<Vec<RowDelta>> {
    let table = table_schema_of(batch.schema_ref(), RESERVED)?;
    let cols = DeltaColumns::new(batch)?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let columns = cols
            .set_of(i)
            .iter()
            .map(|&pos| {
                let pos = usize::from(pos);
                let def = &table.columns[pos];
                Ok(ColumnDelta::new(
                    def.name.clone(),
                    cell_to_json(&cols.data[pos], i, def.column_type)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut id = [0u8; 32];
        id.copy_from_slice(cols.delta_id.value(i));
        out.push(RowDelta {
            op: DeltaOp::from_code(cols.op.value(i))?,
            table: table.table.clone(),
            row_id: cols.row_id.value(i).to_string(),
            client_id: cols.client_id.value(i).to_string(),
            columns,
            hlc: HlcTimestamp(cols.hlc.value(i)),
            delta_id: DeltaId(id),
        });
    }
    Ok(out)
}

/// The JSON value of one data cell (`null` for a null cell).
pub fn cell_to_json(array: &ArrayRef, i: usize, column_type: ColumnType) -> Result<Value> {
    if array.is_null(i) {
        return Ok(Value::Null);
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
        ColumnType::String => Value::String(
            array
                .as_string_opt::<i32>()
                .ok_or_else(mismatch)?
                .value(i)
                .to_string(),
        ),
        ColumnType::Number => number_to_json(
            array
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(mismatch)?
                .value(i),
        ),
        ColumnType::Integer => Value::from(
            array
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(mismatch)?
                .value(i),
        ),
        ColumnType::Boolean => Value::Bool(array.as_boolean_opt().ok_or_else(mismatch)?.value(i)),
        ColumnType::Timestamp => {
            let micros = array
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(mismatch)?
                .value(i);
            Value::String(format_timestamp(micros)?)
        }
        ColumnType::Json | ColumnType::Null => {
            let text = array.as_string_opt::<i32>().ok_or_else(mismatch)?.value(i);
            serde_json::from_str(text)
                .map_err(|e| Error::invalid("delta batch", format!("json cell is not JSON: {e}")))?
        }
    })
}

/// A double as JSON: integral values within ±2^53 as JSON integers (the same JavaScript number).
pub fn number_to_json(f: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if f.fract() == 0.0 && f.abs() <= EXACT && !(f == 0.0 && f.is_sign_negative()) {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// Parses RFC 3339 text to microseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// Formats microseconds since the epoch as RFC 3339 in UTC with the shortest exact fraction.
pub fn format_timestamp(micros: i64) -> Result<String> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .ok_or_else(|| {
            Error::invalid(
                "delta batch",
                format!("timestamp {micros} µs is out of range"),
            )
        })
}

/// A builder for one data column, fed JSON values.
enum ValueBuilder {
    Utf8(StringBuilder),
    Json(StringBuilder),
    Float(Float64Builder),
    Int(Int64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ValueBuilder {
    fn new(column_type: ColumnType, capacity: usize) -> Self {
        match column_type {
            ColumnType::String => Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 8)),
            ColumnType::Json | ColumnType::Null => {
                Self::Json(StringBuilder::with_capacity(capacity, capacity * 8))
            }
            ColumnType::Number => Self::Float(Float64Builder::with_capacity(capacity)),
            ColumnType::Integer => Self::Int(Int64Builder::with_capacity(capacity)),
            ColumnType::Boolean => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Timestamp => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
        }
    }

    /// Appends a cell; on a type mismatch returns what the column expects.
    fn append(&mut self, value: Option<&Value>) -> std::result::Result<(), &'static str> {
        let value = match value {
            None | Some(Value::Null) => {
                self.append_null();
                return Ok(());
            }
            Some(v) => v,
        };
        match (self, value) {
            (Self::Utf8(b), Value::String(s)) => b.append_value(s),
            (Self::Utf8(_), _) => return Err("a string"),
            (Self::Json(b), v) => b.append_value(v.to_string()),
            (Self::Float(b), Value::Number(n)) => b.append_value(n.as_f64().ok_or("a number")?),
            (Self::Float(_), _) => return Err("a number"),
            (Self::Int(b), Value::Number(n)) => {
                b.append_value(as_integer(n).ok_or("a 64-bit integer")?)
            }
            (Self::Int(_), _) => return Err("a 64-bit integer"),
            (Self::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (Self::Bool(_), _) => return Err("a boolean"),
            (Self::Timestamp(b), Value::String(s)) => {
                b.append_value(parse_timestamp(s).ok_or("an RFC 3339 timestamp")?)
            }
            (Self::Timestamp(_), _) => return Err("an RFC 3339 timestamp"),
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Self::Utf8(b) | Self::Json(b) => b.append_null(),
            Self::Float(b) => b.append_null(),
            Self::Int(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Self::Utf8(mut b) | Self::Json(mut b) => Arc::new(b.finish()),
            Self::Float(mut b) => Arc::new(b.finish()),
            Self::Int(mut b) => Arc::new(b.finish()),
            Self::Bool(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b) => Arc::new(b.finish()),
        }
    }
}

fn as_integer(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // Integral doubles in i64 range (2^63 itself is out of range).
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f)).then_some(f as i64)
}

/// Whether `array` is an all-`true` boolean array (helper for tests and callers).
pub fn all_true(array: &BooleanArray) -> bool {
    array.null_count() == 0 && array.true_count() == array.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::ColumnType as T;
    use serde_json::json;

    pub(crate) fn todos() -> TableSchema {
        TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", T::String),
                ColumnDef::new("done", T::Boolean),
                ColumnDef::new("priority", T::Integer),
                ColumnDef::new("score", T::Number),
                ColumnDef::new("due", T::Timestamp),
                ColumnDef::new("meta", T::Json),
            ],
        )
    }

    fn delta(op: DeltaOp, row: &str, cols: Vec<(&str, Value)>, hlc: u64) -> RowDelta {
        let cols = cols
            .into_iter()
            .map(|(c, v)| ColumnDelta::new(c, v))
            .collect();
        RowDelta::new(op, "todos", row, "client-a", cols, HlcTimestamp(hlc))
    }

    #[test]
    fn round_trip_keeps_order_nulls_and_untouched_columns() {
        let deltas = vec![
            delta(
                DeltaOp::Insert,
                "r1",
                vec![
                    ("meta", json!({"b": 1, "a": [1, 2.5]})),
                    ("title", json!("hi")),
                    ("done", json!(false)),
                ],
                10,
            ),
            delta(
                DeltaOp::Update,
                "r1",
                vec![
                    ("title", Value::Null),
                    ("priority", json!(7)),
                    ("score", json!(0.1)),
                ],
                11,
            ),
            delta(
                DeltaOp::Update,
                "r2",
                vec![("due", json!("2026-11-26T10:00:00.123456Z"))],
                12,
            ),
            delta(DeltaOp::Delete, "r2", vec![], 13),
        ];
        let batch = deltas_to_batch(&todos(), &deltas).unwrap();
        assert_eq!(batch.num_rows(), 4);
        let cols = DeltaColumns::new(&batch).unwrap();
        assert_eq!(cols.set_of(0), &[5, 0, 1]);
        assert_eq!(cols.set_of(3), &[] as &[u16]);
        // "set to null" is listed; "untouched" is not.
        assert!(cols.data[0].is_null(1) && cols.set_of(1).contains(&0));
        assert!(cols.data[0].is_null(2) && !cols.set_of(2).contains(&0));
        let back = batch_to_deltas(&batch).unwrap();
        assert_eq!(back, deltas);
        for d in &back {
            d.verify_delta_id().unwrap();
        }
    }

    #[test]
    fn wrong_types_and_unknown_columns_are_clear_errors() {
        let cases = [
            (
                vec![("title", json!(42))],
                "column \"title\" is a string, got 42",
            ),
            (vec![("priority", json!(1.5))], "a 64-bit integer"),
            (vec![("due", json!("yesterday"))], "RFC 3339"),
            (vec![("nope", json!(1))], "Unknown column \"nope\""),
        ];
        for (cols, needle) in cases {
            let err = deltas_to_batch(&todos(), &[delta(DeltaOp::Update, "r", cols, 1)])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let mut other = delta(DeltaOp::Insert, "r", vec![], 1);
        other.table = "notes".into();
        assert!(
            deltas_to_batch(&todos(), &[other])
                .unwrap_err()
                .to_string()
                .contains("\"notes\"")
        );
        let mut bad_delete = delta(DeltaOp::Delete, "r", vec![], 1);
        bad_delete
            .columns
            .push(ColumnDelta::new("title", json!("x")));
        assert!(deltas_to_batch(&todos(), &[bad_delete]).is_err());
    }

    #[test]
    fn integral_numbers_and_timestamps_normalise() {
        assert_eq!(number_to_json(30.0), json!(30));
        assert_eq!(number_to_json(0.5), json!(0.5));
        assert!(number_to_json(-0.0).as_f64().unwrap().is_sign_negative());
        let micros = parse_timestamp("2026-11-26T11:00:00+01:00").unwrap();
        assert_eq!(format_timestamp(micros).unwrap(), "2026-11-26T10:00:00Z");
    }

    #[test]
    fn dictionary_client_ids_are_accepted() {
        let batch = deltas_to_batch(
            &todos(),
            &[delta(DeltaOp::Insert, "r", vec![("title", json!("x"))], 1)],
        )
        .unwrap();
        let dict = arrow_cast::cast(
            batch.column(2),
            &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        )
        .unwrap();
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[2] = Field::new(CLIENT_ID, dict.data_type().clone(), false);
        let mut columns = batch.columns().to_vec();
        columns[2] = dict;
        let schema = Schema::new(fields).with_metadata(batch.schema().metadata().clone());
        let dict_batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
        assert_eq!(
            batch_to_deltas(&dict_batch).unwrap()[0].client_id,
            "client-a"
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::tests::todos;
    use super::*;
    use crate::parquet_io::{read_parquet, write_parquet};
    use crate::proto::{from_proto, to_proto};
    use proptest::prelude::*;
    use serde_json::json;

    /// A value for column `pos` of the `todos` test schema, in canonical JSON form.
    fn cell(pos: usize) -> BoxedStrategy<Value> {
        let typed = match pos {
            0 => "\\PC{0,10}".prop_map(Value::String).boxed(),
            1 => any::<bool>().prop_map(Value::Bool).boxed(),
            2 => any::<i64>().prop_map(Value::from).boxed(),
            3 => any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(number_to_json)
                .boxed(),
            4 => (-62_135_596_800_000_000i64..253_402_300_799_999_999)
                .prop_map(|us| Value::String(format_timestamp(us).unwrap_or_default()))
                .boxed(),
            _ => crate::delta::proptests::json_value().boxed(),
        };
        prop_oneof![1 => Just(Value::Null), 6 => typed].boxed()
    }

    fn delta() -> impl Strategy<Value = RowDelta> {
        let cols = Just((0..6usize).collect::<Vec<_>>())
            .prop_shuffle()
            .prop_flat_map(|order| {
                (0..=6usize).prop_flat_map(move |k| {
                    let picked: Vec<usize> = order[..k].to_vec();
                    picked
                        .iter()
                        .map(|&p| cell(p).prop_map(move |v| (p, v)))
                        .collect::<Vec<_>>()
                })
            });
        (
            any::<bool>(),
            "[a-z0-9]{1,8}",
            "\\PC{0,6}",
            any::<u64>(),
            cols,
        )
            .prop_map(|(delete, row, client, hlc, cols)| {
                let names = ["title", "done", "priority", "score", "due", "meta"];
                let (op, cols) = if delete {
                    (DeltaOp::Delete, vec![])
                } else {
                    (
                        DeltaOp::Update,
                        cols.into_iter()
                            .map(|(p, v)| ColumnDelta::new(names[p], v))
                            .collect(),
                    )
                };
                RowDelta::new(
                    op,
                    "todos",
                    row,
                    client,
                    cols,
                    crate::hlc::HlcTimestamp(hlc),
                )
            })
    }

    proptest! {
        /// Row → Arrow → Parquet → Arrow → row and row → protobuf → row are exact (values
        /// compared as JavaScript compares them; deltaIds byte for byte).
        #[test]
        fn row_arrow_parquet_proto_round_trips(deltas in proptest::collection::vec(delta(), 0..20)) {
            let batch = deltas_to_batch(&todos(), &deltas).unwrap();
            let back = batch_to_deltas(&batch).unwrap();
            prop_assert_eq!(back.len(), deltas.len());
            for (a, b) in back.iter().zip(&deltas) {
                prop_assert_eq!((a.op, &a.table, &a.row_id, &a.client_id, a.hlc, a.delta_id), (b.op, &b.table, &b.row_id, &b.client_id, b.hlc, b.delta_id));
                prop_assert_eq!(a.columns.len(), b.columns.len());
                for (x, y) in a.columns.iter().zip(&b.columns) {
                    prop_assert_eq!(&x.column, &y.column);
                    prop_assert!(crate::json::js_deep_equal(&x.value, &y.value), "{} vs {}", x.value, y.value);
                }
                // The content still hashes to the carried deltaId.
                a.verify_delta_id().unwrap();
            }
            if !deltas.is_empty() {
                let parquet = read_parquet(write_parquet(std::slice::from_ref(&batch)).unwrap()).unwrap();
                prop_assert_eq!(&parquet[0], &batch);
            }
            for d in &deltas {
                let wire = from_proto(&to_proto(d)).unwrap();
                prop_assert_eq!((wire.op, &wire.row_id, wire.hlc, wire.delta_id), (d.op, &d.row_id, d.hlc, d.delta_id));
                for (x, y) in wire.columns.iter().zip(&d.columns) {
                    prop_assert!(crate::json::js_deep_equal(&x.value, &y.value));
                }
                prop_assert_eq!(json!(wire.columns.len()), json!(d.columns.len()));
            }
        }
    }
}
