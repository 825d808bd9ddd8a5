//! Base rows: a merged row state written back in the delta contract's form, so that compaction
//! can replace a table's deltas by one row per row id without losing anything the merge needs.
//!
//! A **base batch** of a table is a delta batch (the reserved columns of
//! [`crate::delta_batch`], then the data columns) with one more column at the end,
//! [`VERSIONS`] (`_versions`, `List<Binary>`, elements nullable, the column itself never null).
//! Row `i` is the merged state of one row id:
//!
//! | column | value |
//! |---|---|
//! | `_op` | 1 (INSERT) for a live row, 3 (DELETE) for a tombstone |
//! | `_row_id` | the row id |
//! | `_client_id`, `_delta_id` | those of the row's newest version, live or delete |
//! | `_hlc` | the state's `_hlc`: the highest HLC merged into the row |
//! | `_set` | the positions of the data columns that hold a value, ascending |
//! | data columns | the state's values (null where a column holds nothing) |
//! | `_versions` | `[live_version, delete_version, col_version_0, col_version_1, …]`: the state's version keys ([`crate::state::Version`]), null where absent |
//!
//! Tombstones are kept: without the DELETE's version a late write older than it would resurrect
//! the row. A reader that knows nothing of `_versions` sees the row's last-writer-wins values
//! (filter `_op <> 3`); LakeSync reads the versions back with [`base_to_state`], so
//! `merge(prior = base_to_state(state_to_base(merge(D1))), D2) == merge(D1 ∪ D2)` for any delta
//! sets, including a `D2` older than `D1` (the state form is a sufficient statistic of the merge:
//! see [`crate::merge`]).
//!
//! The `_set` list of a base row is in ascending position order; that is not the order any delta
//! had, so a base row's `_delta_id` is *not* the hash of its own columns: it names the delta the
//! row's newest version came from, and only the merge (which compares versions, never re-hashes)
//! reads it.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, FixedSizeBinaryBuilder, ListBuilder, StringBuilder, UInt8Builder, UInt16Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::delta::DeltaOp;
use crate::delta_batch::{DeltaColumns, RESERVED, delta_schema};
use crate::error::{Error, Result};
use crate::schema::TableSchema;
use crate::state::{self, Version, state_schema};

/// `_versions`: a base row's version keys (null on a delta row in the lake).
pub const VERSIONS: &str = "_versions";

/// The Arrow type of [`VERSIONS`]: a list of nullable version keys.
pub fn versions_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Binary, true)))
}

/// The Arrow schema of a base batch of `table`: the delta contract, then [`VERSIONS`].
pub fn base_schema(table: &TableSchema) -> SchemaRef {
    let deltas = delta_schema(table);
    let mut fields: Vec<Field> = deltas.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(VERSIONS, versions_type(), false));
    Arc::new(Schema::new(fields).with_metadata(deltas.metadata().clone()))
}

/// Turns a state batch of `table` (as [`crate::merge::merge`] makes) into its base rows.
///
/// Fails when the batch is not a state batch of `table`, or a row has neither a live nor a
/// delete version (no merge makes such a row).
pub fn state_to_base(table: &TableSchema, state: &RecordBatch) -> Result<RecordBatch> {
    let cols = StateColumns::new(table, state)?;
    let n = state.num_rows();
    let n_cols = table.columns.len();
    let mut op = UInt8Builder::with_capacity(n);
    let mut client = StringBuilder::with_capacity(n, n * 8);
    let mut delta_id = FixedSizeBinaryBuilder::with_capacity(n, 32);
    let mut set = ListBuilder::new(UInt16Builder::with_capacity(n * n_cols))
        .with_field(Arc::new(Field::new_list_field(DataType::UInt16, false)));
    let mut versions = ListBuilder::new(BinaryBuilder::with_capacity(n * (n_cols + 2), 0));
    for i in 0..n {
        let live = cols.live.is_valid(i).then(|| cols.live.value(i));
        let delete = cols.delete.is_valid(i).then(|| cols.delete.value(i));
        // Version keys compare with memcmp exactly as versions do.
        let newest = match (live, delete) {
            (Some(l), Some(d)) => l.max(d),
            (Some(k), None) | (None, Some(k)) => k,
            (None, None) => {
                return Err(Error::invalid(
                    "state batch",
                    format!(
                        "table {:?} row {:?} has neither a live nor a delete version",
                        table.table,
                        cols.row_id.value(i)
                    ),
                ));
            }
        };
        let newest = Version::from_key(newest)?;
        op.append_value(if cols.deleted.value(i) {
            DeltaOp::Delete as u8
        } else {
            DeltaOp::Insert as u8
        });
        client.append_value(newest.client_text());
        delta_id.append_value(newest.delta_id)?;
        let held = cols.col_versions(i);
        for pos in 0..n_cols {
            if held.is_some_and(|(keys, start, len)| pos < len && keys.is_valid(start + pos)) {
                set.values().append_value(pos as u16);
            }
        }
        set.append(true);
        let values = versions.values();
        values.append_option(live);
        values.append_option(delete);
        for pos in 0..n_cols {
            match held {
                Some((keys, start, len)) if pos < len && keys.is_valid(start + pos) => {
                    values.append_value(keys.value(start + pos));
                }
                _ => values.append_null(),
            }
        }
        versions.append(true);
    }
    let hlc: ArrayRef = Arc::new(cols.hlc.clone());
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(op.finish()),
        state.column(0).clone(),
        Arc::new(client.finish()),
        hlc,
        Arc::new(delta_id.finish()),
        Arc::new(set.finish()),
    ];
    columns.extend(cols.data.iter().cloned());
    columns.push(Arc::new(versions.finish()));
    Ok(RecordBatch::try_new(base_schema(table), columns)?)
}

/// Turns base rows of `table` back into a state batch: the inverse of [`state_to_base`].
///
/// `base` is a base batch (see the module docs); its data columns are matched by name, and a
/// column of `table` it lacks (the table evolved after the rows were written) holds nothing.
/// Fails, naming the table and row, on a malformed `_versions` list or version key.
pub fn base_to_state(table: &TableSchema, base: &RecordBatch) -> Result<RecordBatch> {
    let bad = |message: String| Error::invalid("base rows", message);
    let n = base.num_rows();
    let n_cols = table.columns.len();
    let schema = base.schema_ref();
    let versions_at = schema
        .index_of(VERSIONS)
        .map_err(|_| bad(format!("table {:?}: no {VERSIONS:?} column", table.table)))?;
    let cols = DeltaColumns::new(base)?;
    let versions = base
        .column(versions_at)
        .as_list_opt::<i32>()
        .ok_or_else(|| {
            bad(format!(
                "table {:?}: {VERSIONS:?} is not a list",
                table.table
            ))
        })?;
    let keys = versions.values().as_binary_opt::<i32>().ok_or_else(|| {
        bad(format!(
            "table {:?}: {VERSIONS:?} is not a list of Binary",
            table.table
        ))
    })?;
    let mut live = BinaryBuilder::with_capacity(n, n * 56);
    let mut delete = BinaryBuilder::with_capacity(n, 0);
    let mut deleted = Vec::with_capacity(n);
    let mut col_versions = ListBuilder::new(BinaryBuilder::with_capacity(n * n_cols, 0));
    let offsets = versions.value_offsets();
    for i in 0..n {
        let row = || cols.row_id.value(i);
        if versions.is_null(i) {
            return Err(bad(format!(
                "table {:?} row {:?}: {VERSIONS:?} is null (a delta row, not a base row)",
                table.table,
                row()
            )));
        }
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        let len = end - start;
        if len < 2 || len - 2 > n_cols {
            return Err(bad(format!(
                "table {:?} row {:?}: {VERSIONS:?} has {len} keys, expected 2 to {}",
                table.table,
                row(),
                n_cols + 2
            )));
        }
        let key = |k: usize| -> Result<Option<&[u8]>> {
            if keys.is_null(k) {
                return Ok(None);
            }
            let bytes = keys.value(k);
            Version::from_key(bytes).map_err(|_| {
                bad(format!(
                    "table {:?} row {:?}: {VERSIONS:?} holds a malformed version key",
                    table.table,
                    row()
                ))
            })?;
            Ok(Some(bytes))
        };
        let (l, d) = (key(start)?, key(start + 1)?);
        if l.is_none() && d.is_none() {
            return Err(bad(format!(
                "table {:?} row {:?}: neither a live nor a delete version",
                table.table,
                row()
            )));
        }
        live.append_option(l);
        delete.append_option(d);
        deleted.push(match (l, d) {
            (Some(l), Some(d)) => d > l,
            (None, Some(_)) => true,
            _ => false,
        });
        for pos in 0..n_cols {
            let k = start + 2 + pos;
            match if k < end { key(k)? } else { None } {
                Some(bytes) => col_versions.values().append_value(bytes),
                None => col_versions.values().append_null(),
            }
        }
        col_versions.append(true);
    }
    let hlc: ArrayRef = Arc::new(cols.hlc.clone());
    let mut columns: Vec<ArrayRef> = vec![
        base.column(1).clone(),
        hlc,
        Arc::new(BooleanArray::from(deleted)),
        Arc::new(live.finish()),
        Arc::new(delete.finish()),
        Arc::new(col_versions.finish()),
    ];
    for def in &table.columns {
        let data_type = def.column_type.arrow_type();
        columns.push(match schema.index_of(&def.name) {
            Ok(j) if j >= RESERVED && j != versions_at => {
                let array = base.column(j);
                if *array.data_type() != data_type {
                    return Err(Error::schema(format!(
                        "base rows: column {:?} of table {:?} has Arrow type {}, expected {}",
                        def.name,
                        table.table,
                        array.data_type(),
                        data_type
                    )));
                }
                array.clone()
            }
            _ => new_null_array(&data_type, n),
        });
    }
    Ok(RecordBatch::try_new(state_schema(table), columns)?)
}

/// Typed access to a state batch's reserved columns.
struct StateColumns<'a> {
    row_id: &'a arrow_array::StringArray,
    hlc: &'a arrow_array::PrimitiveArray<UInt64Type>,
    deleted: &'a BooleanArray,
    live: &'a BinaryArray,
    delete: &'a BinaryArray,
    col_versions: &'a arrow_array::ListArray,
    col_keys: &'a BinaryArray,
    data: &'a [ArrayRef],
}

impl<'a> StateColumns<'a> {
    fn new(table: &TableSchema, batch: &'a RecordBatch) -> Result<Self> {
        let want = state_schema(table);
        let have = batch.schema_ref();
        let bad = || {
            Error::invalid(
                "state batch",
                format!(
                    "table {:?}: the batch is not in the state form",
                    table.table
                ),
            )
        };
        if have.fields().len() != want.fields().len()
            || have
                .fields()
                .iter()
                .zip(want.fields())
                .any(|(h, w)| h.name() != w.name() || h.data_type() != w.data_type())
        {
            return Err(bad());
        }
        let c = batch.columns();
        let col_versions = c[5].as_list_opt::<i32>().ok_or_else(bad)?;
        Ok(Self {
            row_id: c[0].as_string_opt().ok_or_else(bad)?,
            hlc: c[1].as_primitive_opt().ok_or_else(bad)?,
            deleted: c[2].as_boolean_opt().ok_or_else(bad)?,
            live: c[3].as_binary_opt().ok_or_else(bad)?,
            delete: c[4].as_binary_opt().ok_or_else(bad)?,
            col_keys: col_versions.values().as_binary_opt().ok_or_else(bad)?,
            col_versions,
            data: &c[state::RESERVED..],
        })
    }

    /// Row `i`'s column versions: (keys, first index, count); `None` when the list is null.
    fn col_versions(&self, i: usize) -> Option<(&'a BinaryArray, usize, usize)> {
        if self.col_versions.is_null(i) {
            return None;
        }
        let offsets = self.col_versions.value_offsets();
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        Some((self.col_keys, start, end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{ColumnDelta, RowDelta};
    use crate::delta_batch::{batch_to_deltas, deltas_to_batch};
    use crate::hlc::HlcTimestamp;
    use crate::merge::merge;
    use crate::schema::{ColumnDef, ColumnType};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn table() -> TableSchema {
        TableSchema::new(
            "t",
            vec![
                ColumnDef::new("a", ColumnType::String),
                ColumnDef::new("b", ColumnType::Integer),
                ColumnDef::new("c", ColumnType::Json),
            ],
        )
    }

    fn d(op: DeltaOp, row: &str, client: &str, hlc: u64, cols: Vec<(&str, Value)>) -> RowDelta {
        let cols = cols
            .into_iter()
            .map(|(c, v)| ColumnDelta::new(c, v))
            .collect();
        RowDelta::new(op, "t", row, client, cols, HlcTimestamp(hlc))
    }

    fn merged(deltas: &[RowDelta]) -> RecordBatch {
        let t = table();
        merge(&t, None, &[deltas_to_batch(&t, deltas).unwrap()]).unwrap()
    }

    #[test]
    fn base_rows_carry_the_lww_values_and_round_trip() {
        let t = table();
        let state = merged(&[
            d(
                DeltaOp::Insert,
                "live",
                "a",
                10,
                vec![("a", json!("x")), ("b", json!(1))],
            ),
            d(DeltaOp::Update, "live", "b", 20, vec![("a", Value::Null)]),
            d(DeltaOp::Insert, "gone", "a", 5, vec![("a", json!("y"))]),
            d(DeltaOp::Delete, "gone", "z", 6, vec![]),
            d(DeltaOp::Delete, "back", "a", 7, vec![]),
            d(
                DeltaOp::Update,
                "back",
                "c",
                8,
                vec![("c", json!({"k": 1}))],
            ),
        ]);
        let base = state_to_base(&t, &state).unwrap();
        assert_eq!(base.schema(), base_schema(&t));
        // Without _versions the base rows are plain deltas with the merged values.
        let plain = base.project(&(0..base.num_columns() - 1).collect::<Vec<_>>());
        let rows = batch_to_deltas(&plain.unwrap()).unwrap();
        let by_row = |id: &str| rows.iter().find(|r| r.row_id == id).unwrap();
        let live = by_row("live");
        assert_eq!(live.op, DeltaOp::Insert);
        assert_eq!(live.client_id, "b");
        assert_eq!(live.hlc, HlcTimestamp(20));
        let cols: Vec<(&str, &Value)> = live
            .columns
            .iter()
            .map(|c| (c.column.as_str(), &c.value))
            .collect();
        assert_eq!(cols, [("a", &Value::Null), ("b", &json!(1))]);
        let gone = by_row("gone");
        assert_eq!((gone.op, gone.client_id.as_str()), (DeltaOp::Delete, "z"));
        assert!(gone.columns.is_empty());
        let back = by_row("back");
        assert_eq!((back.op, back.client_id.as_str()), (DeltaOp::Insert, "c"));
        assert_eq!(base_to_state(&t, &base).unwrap(), state);
    }

    #[test]
    fn malformed_base_rows_are_named() {
        let t = table();
        let base = state_to_base(&t, &merged(&[d(DeltaOp::Delete, "r", "a", 1, vec![])])).unwrap();
        let mut columns = base.columns().to_vec();
        let last = columns.len() - 1;
        columns[last] = new_null_array(&versions_type(), 1);
        let schema = Arc::new(Schema::new(
            base.schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let broken = RecordBatch::try_new(schema, columns).unwrap();
        let err = base_to_state(&t, &broken).unwrap_err().to_string();
        assert!(err.contains("row \"r\"") && err.contains("null"), "{err}");
    }

    /// Deltas over few rows, clients and HLCs (from `hlc_from`), so ties, deletes and
    /// resurrections are common.
    fn deltas(hlc_from: u64) -> impl Strategy<Value = Vec<RowDelta>> {
        let value = prop_oneof![Just(Value::Null), (0i64..4).prop_map(Value::from)];
        let delta = (
            0u8..3,
            0u8..5,
            0u8..3,
            0u64..6,
            proptest::collection::vec((0usize..3, value), 0..3),
        );
        proptest::collection::vec(delta, 0..30).prop_map(move |raw| {
            raw.into_iter()
                .map(|(op, row, client, hlc, cols)| {
                    let op = [DeltaOp::Insert, DeltaOp::Update, DeltaOp::Delete][usize::from(op)];
                    let mut seen = [false; 3];
                    let cols = if op == DeltaOp::Delete {
                        vec![]
                    } else {
                        cols.into_iter()
                            .filter(|(pos, _)| !std::mem::replace(&mut seen[*pos], true))
                            .map(|(pos, v)| {
                                let v = match pos {
                                    0 => v.as_i64().map_or(Value::Null, |n| json!(format!("s{n}"))),
                                    2 => json!({"k": v}),
                                    _ => v,
                                };
                                ColumnDelta::new(["a", "b", "c"][pos], v)
                            })
                            .collect()
                    };
                    RowDelta::new(
                        op,
                        "t",
                        format!("r{row}"),
                        format!("c{client}"),
                        cols,
                        HlcTimestamp(hlc_from + hlc),
                    )
                })
                .collect()
        })
    }

    fn compacted_then_merged(d1: &[RowDelta], d2: &[RowDelta]) -> (RecordBatch, RecordBatch) {
        let t = table();
        let (b1, b2) = (
            deltas_to_batch(&t, d1).unwrap(),
            deltas_to_batch(&t, d2).unwrap(),
        );
        let base = state_to_base(&t, &merge(&t, None, std::slice::from_ref(&b1)).unwrap()).unwrap();
        let prior = base_to_state(&t, &base).unwrap();
        let incremental = merge(&t, Some(&prior), std::slice::from_ref(&b2)).unwrap();
        let whole = merge(&t, None, &[b1, b2]).unwrap();
        (incremental, whole)
    }

    proptest! {
        /// Compacting D1 to base rows loses nothing: merging D2 on top equals merging all the
        /// deltas, version keys included.
        #[test]
        fn compaction_is_exact(d1 in deltas(0), d2 in deltas(0)) {
            let (incremental, whole) = compacted_then_merged(&d1, &d2);
            prop_assert_eq!(incremental, whole);
        }

        /// The same when every delta of D2 is older than every delta of D1 (late writes).
        #[test]
        fn compaction_is_exact_for_late_deltas(d1 in deltas(10), d2 in deltas(0)) {
            let (incremental, whole) = compacted_then_merged(&d1, &d2);
            prop_assert_eq!(incremental, whole);
        }
    }
}
