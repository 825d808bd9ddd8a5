//! Checking a pushed delta batch before anything is applied.
//!
//! A push is checked in two layers. The *batch* must fit the table: the reserved delta columns
//! of the contract, then data columns that are a prefix of the table's columns with the same
//! names and types (a client on an older schema version sends fewer columns; they are padded
//! with nulls). A batch that does not fit is rejected whole (`SCHEMA_MISMATCH`). Then each
//! *delta* is checked on its own: a known op, a non-empty row id, a non-null delta id, the
//! pushing client's id (unless the caller may write for others), and an HLC no further ahead of
//! the server's clock than the drift limit (`CLOCK_DRIFT`). Deltas that fail are reported with
//! their row number and reason; whether the rest are applied is the caller's choice (Flight
//! applies them; the original HTTP protocol rejects the whole push).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::DataType;
use serde::Serialize;

use crate::kernel::delta::DeltaOp;
use crate::kernel::delta_batch::{DeltaColumns, delta_schema, table_schema_of};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::schema::TableSchema;
use crate::kernel::state::RESERVED;
use crate::{Error, Result};

/// Why one delta of a push was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// The delta's row number in the pushed batch.
    pub row: usize,
    /// The delta's id (lowercase hex), when it had one.
    pub delta_id: String,
    /// A stable code: `CLOCK_DRIFT`, `VALIDATION_ERROR`, `FORBIDDEN`, `SCHEMA_MISMATCH`.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
    /// For `CLOCK_DRIFT`: how far ahead the delta was and the limit, in milliseconds.
    #[serde(skip)]
    pub drift: Option<(u64, u64)>,
}

impl Rejection {
    /// The rejection as an [`Error`], for transports that fail the whole push on the first one.
    pub fn to_error(&self) -> Error {
        let message = format!(
            "delta {} (row {}): {}",
            self.delta_id, self.row, self.message
        );
        match self.code {
            "CLOCK_DRIFT" => match self.drift {
                Some((ahead_ms, max_drift_ms)) => Error::ClockDrift {
                    ahead_ms,
                    max_drift_ms,
                },
                None => Error::invalid("delta", message),
            },
            "FORBIDDEN" => Error::Forbidden(message),
            "SCHEMA_MISMATCH" => Error::schema(message),
            _ => Error::invalid("delta", message),
        }
    }
}

/// A checked batch: the deltas that passed, conformed to the table's current schema.
#[derive(Debug)]
pub struct CheckedBatch {
    /// The deltas that passed, in the table's current delta schema.
    pub accepted: RecordBatch,
    /// The deltas that did not, with reasons.
    pub rejections: Vec<Rejection>,
    /// The newest HLC among the accepted deltas.
    pub max_hlc: u64,
}

/// What a push is checked against.
#[derive(Clone, Copy, Debug)]
pub struct PushContext<'a> {
    /// The server's physical clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// How far ahead of `now_ms` a delta's HLC wall time may be.
    pub max_drift_ms: u64,
    /// When set, every delta's `_client_id` must equal it.
    pub client_id: Option<&'a str>,
}

/// Checks `batch` against `table` (see the module docs).
pub fn check_batch(
    table: &TableSchema,
    batch: &RecordBatch,
    ctx: PushContext<'_>,
) -> Result<CheckedBatch> {
    let conformed = conform(table, batch)?;
    let cols = DeltaColumns::new(&conformed)?;
    let mut keep = Vec::with_capacity(conformed.num_rows());
    let mut rejections = Vec::new();
    let mut max_hlc = 0;
    for row in 0..conformed.num_rows() {
        let reject = |code, message: String| Rejection {
            row,
            delta_id: hex::encode(cols.delta_id.value(row)),
            code,
            message,
            drift: None,
        };
        let hlc = cols.hlc.value(row);
        let wall = HlcTimestamp(hlc).wall_ms();
        let problem = if DeltaOp::from_code(cols.op.value(row)).is_err() {
            Some(reject(
                "VALIDATION_ERROR",
                format!(
                    "unknown op {} (1 insert, 2 update, 3 delete)",
                    cols.op.value(row)
                ),
            ))
        } else if cols.row_id.value(row).is_empty() {
            Some(reject("VALIDATION_ERROR", "empty row id".to_string()))
        } else if cols.op.value(row) == DeltaOp::Delete as u8 && !cols.set_of(row).is_empty() {
            Some(reject(
                "VALIDATION_ERROR",
                "a DELETE must not set columns".to_string(),
            ))
        } else if let Some(client) = ctx.client_id.filter(|c| *c != cols.client_id.value(row)) {
            Some(reject(
                "FORBIDDEN",
                format!(
                    "delta written by {:?}, but the pushing client is {client:?}",
                    cols.client_id.value(row)
                ),
            ))
        } else if wall > ctx.now_ms + ctx.max_drift_ms {
            let drift = Error::ClockDrift {
                ahead_ms: wall - ctx.now_ms,
                max_drift_ms: ctx.max_drift_ms,
            };
            Some(Rejection {
                drift: Some((wall - ctx.now_ms, ctx.max_drift_ms)),
                ..reject("CLOCK_DRIFT", drift.to_string())
            })
        } else {
            None
        };
        match problem {
            Some(r) => {
                rejections.push(r);
                keep.push(false);
            }
            None => {
                max_hlc = max_hlc.max(hlc);
                keep.push(true);
            }
        }
    }
    let accepted = if rejections.is_empty() {
        conformed
    } else {
        filter_record_batch(&conformed, &BooleanArray::from(keep))?
    };
    Ok(CheckedBatch {
        accepted,
        rejections,
        max_hlc,
    })
}

/// The batch in `table`'s current delta schema: data columns must be a prefix of the table's
/// (same names and types); missing trailing columns are added as nulls.
pub fn conform(table: &TableSchema, batch: &RecordBatch) -> Result<RecordBatch> {
    let mismatch = |message: String| Error::schema(format!("table {:?}: {message}", table.table));
    DeltaColumns::new(batch).map_err(|e| mismatch(e.to_string()))?;
    let target = delta_schema(table);
    if batch.schema().fields() == target.fields() {
        return Ok(batch.clone().with_schema(target)?);
    }
    // Check names and types of the data columns the client sent.
    let mut schema = batch.schema().as_ref().clone();
    schema.metadata.insert(
        crate::kernel::state::TABLE_METADATA_KEY.into(),
        table.table.clone(),
    );
    let sent = table_schema_of(&schema, RESERVED).map_err(|e| mismatch(e.to_string()))?;
    if sent.columns.len() > table.columns.len() {
        let extra: Vec<&str> = sent.columns[table.columns.len()..]
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(mismatch(format!("unknown columns {extra:?}")));
    }
    for (i, (got, want)) in sent.columns.iter().zip(&table.columns).enumerate() {
        if got.name != want.name || got.column_type != want.column_type {
            return Err(mismatch(format!(
                "data column {i} is {:?} ({}), expected {:?} ({})",
                got.name,
                got.column_type.name(),
                want.name,
                want.column_type.name()
            )));
        }
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    if columns[2].data_type() != target.field(2).data_type() {
        columns[2] = arrow::compute::cast(&columns[2], target.field(2).data_type())?;
    }
    for field in target.fields().iter().skip(columns.len()) {
        columns.push(new_null_array(field.data_type(), batch.num_rows()));
    }
    // Nullability or metadata may differ from ours; the values are what matter.
    let columns = columns
        .into_iter()
        .zip(target.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else if c.data_type().equals_datatype(f.data_type())
                || matches!(
                    (c.data_type(), f.data_type()),
                    (DataType::List(_), DataType::List(_))
                )
            {
                // Only nullability or a list's item name differs (other Arrow writers, e.g.
                // pyarrow, name and flag list items their own way).
                arrow::compute::cast(&c, f.data_type())
                    .map_err(|e| mismatch(format!("column {:?}: {e}", f.name())))
            } else {
                Err(mismatch(format!(
                    "column {:?} has type {}, expected {}",
                    f.name(),
                    c.data_type(),
                    f.data_type()
                )))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(Arc::clone(&target), columns).map_err(|e| mismatch(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta::{ColumnDelta, RowDelta};
    use crate::kernel::delta_batch::deltas_to_batch;
    use crate::kernel::schema::{ColumnDef, ColumnType};
    use serde_json::json;

    fn table() -> TableSchema {
        TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("done", ColumnType::Boolean),
            ],
        )
    }

    fn delta(client: &str, wall_ms: u64) -> RowDelta {
        RowDelta::new(
            DeltaOp::Insert,
            "todos",
            "r1",
            client,
            vec![ColumnDelta::new("title", json!("a"))],
            HlcTimestamp::new(wall_ms, 0).unwrap(),
        )
    }

    fn ctx(client: Option<&str>) -> PushContext<'_> {
        PushContext {
            now_ms: 1_000_000,
            max_drift_ms: 5_000,
            client_id: client,
        }
    }

    #[test]
    fn drift_and_foreign_client_are_rejected_per_delta() {
        let t = table();
        let batch = deltas_to_batch(
            &t,
            &[
                delta("a", 1_000_000),
                delta("a", 1_005_000),
                delta("a", 1_005_001),
                delta("b", 1_000_000),
            ],
        )
        .unwrap();
        let checked = check_batch(&t, &batch, ctx(Some("a"))).unwrap();
        assert_eq!(checked.accepted.num_rows(), 2);
        let codes: Vec<(usize, &str)> =
            checked.rejections.iter().map(|r| (r.row, r.code)).collect();
        assert_eq!(codes, vec![(2, "CLOCK_DRIFT"), (3, "FORBIDDEN")]);
        assert!(checked.rejections[0].message.contains("5001ms ahead"));
    }

    #[test]
    fn an_older_schema_is_padded_and_a_wrong_one_rejected_whole() {
        let old = TableSchema::new("todos", vec![ColumnDef::new("title", ColumnType::String)]);
        let batch = deltas_to_batch(&old, &[delta("a", 1_000_000)]).unwrap();
        let checked = check_batch(&table(), &batch, ctx(None)).unwrap();
        assert_eq!(checked.accepted.num_columns(), RESERVED + 2);
        assert!(checked.accepted.column(RESERVED + 1).is_null(0));

        let wrong = TableSchema::new("todos", vec![ColumnDef::new("title", ColumnType::Integer)]);
        let batch = deltas_to_batch(
            &wrong,
            &[RowDelta::new(
                DeltaOp::Insert,
                "todos",
                "r1",
                "a",
                vec![ColumnDelta::new("title", json!(1))],
                HlcTimestamp::new(1_000_000, 0).unwrap(),
            )],
        )
        .unwrap();
        let err = check_batch(&table(), &batch, ctx(None)).unwrap_err();
        assert_eq!(err.code(), "SCHEMA_MISMATCH");
        assert!(
            err.to_string().contains("expected \"title\" (string)"),
            "{err}"
        );
    }
}
