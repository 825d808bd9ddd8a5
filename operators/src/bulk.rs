//! Full-row INSERT delta batches straight from columnar data: the fast path for bulk sources
//! (a Postgres binary `COPY`, an Arrow read of a lake table) that would otherwise build a
//! [`RowDelta`](crate::RowDelta) and its JSON values per row.
//!
//! [`insert_batch`] takes the data columns already typed for the table (in schema order, the
//! Arrow types of [`ColumnDef::arrow_field`](crate::ColumnDef::arrow_field)), one row id per row
//! and one HLC per row, and returns a batch in the delta contract in which every row is an INSERT
//! that sets every column, in schema order (a null cell is a column set to null). Each deltaId is
//! the same SHA-256 over the same stable JSON payload that [`crate::delta::delta_id`] hashes, so
//! the batch is exactly the one [`deltas_to_batch`](crate::delta_batch::deltas_to_batch) would
//! build from the equivalent row deltas; the payload is written from the Arrow cells without
//! building `serde_json` values (except for `json` cells, whose keys must be sorted).

use std::sync::Arc;

use arrow_array::builder::{FixedSizeBinaryBuilder, ListBuilder, UInt8Builder, UInt16Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field};
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

use crate::delta::DeltaOp;
use crate::delta_batch::{delta_schema, format_timestamp, number_to_json};
use crate::error::{Error, Result};
use crate::hlc::HlcTimestamp;
use crate::json::{write_number, write_stable, write_string};
use crate::schema::{ColumnType, TableSchema};

/// Builds a delta batch of full-row INSERTs of `table`: row `i` has id `row_ids[i]`, HLC
/// `hlcs[i]`, writer `client_id`, and the cells of row `i` of `columns` (one array per data
/// column of `table`, in schema order). See the [module docs](self).
pub fn insert_batch(
    table: &TableSchema,
    client_id: &str,
    row_ids: StringArray,
    hlcs: &[HlcTimestamp],
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let n = row_ids.len();
    let bad =
        |what: String| Error::invalid("bulk rows", format!("table {:?}: {what}", table.table));
    if hlcs.len() != n {
        return Err(bad(format!("{} HLCs for {n} rows", hlcs.len())));
    }
    if columns.len() != table.columns.len() {
        return Err(bad(format!(
            "{} data columns for {} in the schema",
            columns.len(),
            table.columns.len()
        )));
    }
    if row_ids.null_count() > 0 {
        return Err(bad("a row id is null".to_string()));
    }
    let cells: Vec<Cells<'_>> = table
        .columns
        .iter()
        .zip(&columns)
        .map(|(def, array)| {
            if array.len() != n {
                return Err(bad(format!(
                    "column {:?} has {} cells for {n} rows",
                    def.name,
                    array.len()
                )));
            }
            Cells::new(def.column_type, array).ok_or_else(|| {
                bad(format!(
                    "column {:?} is a {} column but has Arrow type {}",
                    def.name,
                    def.column_type.name(),
                    array.data_type()
                ))
            })
        })
        .collect::<Result<_>>()?;

    // The payload's fixed parts: `{"clientId":…,"columns":[` and each `{"column":…,"value":`.
    let mut head = String::from("{\"clientId\":");
    write_string(&mut head, client_id);
    head.push_str(",\"columns\":[");
    let column_keys: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let mut key = String::from("{\"column\":");
            write_string(&mut key, &c.name);
            key.push_str(",\"value\":");
            key
        })
        .collect();
    let mut tail = String::from(",\"table\":");
    write_string(&mut tail, table.delta_table());
    tail.push('}');

    let mut delta_ids = FixedSizeBinaryBuilder::with_capacity(n, 32);
    let mut payload = String::with_capacity(256);
    for (i, hlc) in hlcs.iter().enumerate() {
        payload.clear();
        payload.push_str(&head);
        for (c, (key, cells)) in column_keys.iter().zip(&cells).enumerate() {
            if c > 0 {
                payload.push(',');
            }
            payload.push_str(key);
            cells.write(&mut payload, i)?;
            payload.push('}');
        }
        payload.push_str("],\"hlc\":\"");
        payload.push_str(&hlc.to_string());
        payload.push_str("\",\"rowId\":");
        write_string(&mut payload, row_ids.value(i));
        payload.push_str(&tail);
        let digest: [u8; 32] = Sha256::digest(payload.as_bytes()).into();
        delta_ids.append_value(digest)?;
    }

    let mut op = UInt8Builder::with_capacity(n);
    op.append_value_n(DeltaOp::Insert.code(), n);
    let positions: Vec<u16> = (0..table.columns.len())
        .map(|p| u16::try_from(p).map_err(|_| bad("more than 65,536 columns".to_string())))
        .collect::<Result<_>>()?;
    let mut set = ListBuilder::with_capacity(UInt16Builder::with_capacity(n * positions.len()), n)
        .with_field(Arc::new(Field::new_list_field(DataType::UInt16, false)));
    for _ in 0..n {
        set.values().append_slice(&positions);
        set.append(true);
    }
    let client = StringArray::from_iter_values(std::iter::repeat_n(client_id, n));
    let hlc_array = UInt64Array::from_iter_values(hlcs.iter().map(|h| h.0));
    let mut out: Vec<ArrayRef> = vec![
        Arc::new(op.finish()),
        Arc::new(row_ids),
        Arc::new(client),
        Arc::new(hlc_array),
        Arc::new(delta_ids.finish()),
        Arc::new(set.finish()),
    ];
    out.extend(columns);
    Ok(RecordBatch::try_new(delta_schema(table), out)?)
}

/// Typed read access to one data column, for writing its cells as stable JSON.
enum Cells<'a> {
    Text(&'a StringArray),
    Number(&'a arrow_array::Float64Array),
    Integer(&'a arrow_array::Int64Array),
    Boolean(&'a arrow_array::BooleanArray),
    Timestamp(&'a arrow_array::TimestampMicrosecondArray),
    Json(&'a StringArray),
}

impl<'a> Cells<'a> {
    fn new(column_type: ColumnType, array: &'a ArrayRef) -> Option<Self> {
        Some(match column_type {
            ColumnType::String => Self::Text(array.as_string_opt::<i32>()?),
            ColumnType::Number => Self::Number(array.as_primitive_opt::<Float64Type>()?),
            ColumnType::Integer => Self::Integer(array.as_primitive_opt::<Int64Type>()?),
            ColumnType::Boolean => Self::Boolean(array.as_boolean_opt()?),
            ColumnType::Timestamp => {
                Self::Timestamp(array.as_primitive_opt::<TimestampMicrosecondType>()?)
            }
            ColumnType::Json | ColumnType::Null => Self::Json(array.as_string_opt::<i32>()?),
        })
    }

    /// Appends cell `i` as the stable JSON the deltaId payload holds.
    fn write(&self, out: &mut String, i: usize) -> Result<()> {
        let null = match self {
            Self::Text(a) | Self::Json(a) => a.is_null(i),
            Self::Number(a) => a.is_null(i),
            Self::Integer(a) => a.is_null(i),
            Self::Boolean(a) => a.is_null(i),
            Self::Timestamp(a) => a.is_null(i),
        };
        if null {
            out.push_str("null");
            return Ok(());
        }
        match self {
            Self::Text(a) => write_string(out, a.value(i)),
            Self::Number(a) => match number_to_json(a.value(i)) {
                Value::Number(n) => write_number(out, &n),
                _ => out.push_str("null"),
            },
            Self::Integer(a) => write_number(out, &Number::from(a.value(i))),
            Self::Boolean(a) => out.push_str(if a.value(i) { "true" } else { "false" }),
            Self::Timestamp(a) => write_string(out, &format_timestamp(a.value(i))?),
            Self::Json(a) => {
                let value: Value = serde_json::from_str(a.value(i)).map_err(|e| {
                    Error::invalid("bulk rows", format!("a json cell is not JSON: {e}"))
                })?;
                write_stable(out, &value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{ColumnDelta, RowDelta};
    use crate::delta_batch::{batch_to_deltas, deltas_to_batch};
    use crate::schema::ColumnDef;
    use arrow_array::{
        BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };

    fn table() -> TableSchema {
        TableSchema::new(
            "things",
            vec![
                ColumnDef::new("name", ColumnType::String),
                ColumnDef::new("score", ColumnType::Number),
                ColumnDef::new("count", ColumnType::Integer),
                ColumnDef::new("ok", ColumnType::Boolean),
                ColumnDef::new("at", ColumnType::Timestamp),
                ColumnDef::new("doc", ColumnType::Json),
            ],
        )
    }

    #[test]
    fn matches_the_batch_built_from_row_deltas() {
        let table = table();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("a \"q\"\n"), None, Some("é")])),
            Arc::new(Float64Array::from(vec![Some(1.5), Some(2.0), Some(-0.0)])),
            Arc::new(Int64Array::from(vec![Some(7), None, Some(i64::MAX)])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), None, Some(0)])
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![
                Some(r#"{"b": 1, "a": [1.0, "x"]}"#),
                None,
                Some("null"),
            ])),
        ];
        let hlcs = [
            HlcTimestamp(100 << 16),
            HlcTimestamp((100 << 16) + 1),
            HlcTimestamp(101 << 16),
        ];
        let row_ids = StringArray::from(vec!["1", "2", "3"]);
        let batch = insert_batch(&table, "pg:src", row_ids, &hlcs, columns).unwrap();
        let deltas = batch_to_deltas(&batch).unwrap();
        assert_eq!(deltas.len(), 3);
        for d in &deltas {
            d.verify_delta_id().unwrap();
            assert_eq!(d.op, DeltaOp::Insert);
            assert_eq!(d.columns.len(), 6);
        }
        let rebuilt: Vec<RowDelta> = deltas
            .iter()
            .map(|d| {
                RowDelta::new(
                    DeltaOp::Insert,
                    "things",
                    d.row_id.clone(),
                    "pg:src",
                    d.columns
                        .iter()
                        .map(|c| ColumnDelta::new(c.column.clone(), c.value.clone()))
                        .collect(),
                    d.hlc,
                )
            })
            .collect();
        // The same deltas built row by row: the same ids and values (JSON text may differ in
        // spacing, -0.0 may print as 0).
        let rebuilt = deltas_to_batch(&table, &rebuilt).unwrap();
        for c in 0..6 {
            assert_eq!(rebuilt.column(c), batch.column(c), "reserved column {c}");
        }
        assert_eq!(batch_to_deltas(&rebuilt).unwrap(), deltas);
    }

    #[test]
    fn refuses_mismatched_input() {
        let table = table();
        let err = insert_batch(
            &table,
            "c",
            StringArray::from(vec!["1"]),
            &[HlcTimestamp(1)],
            vec![],
        )
        .unwrap_err();
        assert!(err.to_string().contains("0 data columns for 6"), "{err}");
    }
}
