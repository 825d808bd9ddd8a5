//! The column-level last-writer-wins (LWW) merge kernel: deltas (plus optional prior state) →
//! row state.
//!
//! Semantics — a function of the *set* of deltas, whatever their order, batching or duplication
//! (the merge is commutative, associative and idempotent):
//! - deltas are ordered by their [version](crate::state::Version): HLC, then client id (UTF-16
//!   order, as the original), then deltaId bytes, so equal versions are the same delta;
//! - each data column takes the value of the newest non-DELETE delta that sets it;
//! - a DELETE removes everything written before it; a later write resurrects the row with only
//!   the columns written after the DELETE (the original's "a later UPDATE resurrects");
//! - a row is a tombstone (`_deleted`) when its newest DELETE is newer than its newest write.
//!
//! The original's pairwise `resolveLWW` is order-dependent on exact version ties ("remote wins")
//! and stores merged deltas under the winner's deltaId; neither defect survives here.
//!
//! The kernel makes one pass over the deltas with a hash map from row id to slot, tracking per
//! slot and column the winning (batch, row), then gathers every output column with Arrow's
//! `interleave` — no per-value JSON, no per-row allocation for values.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, ListBuilder, StringBuilder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, ArrayRef, BinaryArray, ListArray, RecordBatch, new_null_array};
use arrow_select::interleave::interleave;
use foldhash::fast::RandomState;

use crate::delta::DeltaOp;
use crate::delta_batch::DeltaColumns;
use crate::error::{Error, Result};
use crate::schema::TableSchema;
use crate::state::{self, ClientKey, Version, state_schema};

/// Merges delta batches of `table` into row state, on top of an optional `prior` state batch.
///
/// Rows appear in order of first appearance (prior rows first). Delta and prior batches may have
/// been written under an older version of the schema (fewer trailing columns); the output has the
/// columns of `table`.
pub fn merge(
    table: &TableSchema,
    prior: Option<&RecordBatch>,
    deltas: &[RecordBatch],
) -> Result<RecordBatch> {
    let n_cols = table.columns.len();
    let views = deltas
        .iter()
        .map(DeltaColumns::new)
        .collect::<Result<Vec<_>>>()?;
    for view in &views {
        check_data_columns(table, view.data, "delta batch")?;
    }
    let prior = prior.map(PriorState::new).transpose()?;
    if let Some(p) = &prior {
        check_data_columns(table, p.data, "prior state")?;
    }

    let mut merger = Merger {
        n_cols,
        index: HashMap::with_capacity_and_hasher(
            deltas.iter().map(RecordBatch::num_rows).sum::<usize>() / 2
                + prior.as_ref().map_or(0, |p| p.len()),
            RandomState::default(),
        ),
        rows: Vec::new(),
        winners: Vec::new(),
    };
    let prior_source = views.len() as u32;
    if let Some(p) = &prior {
        for j in 0..p.len() {
            merger.add_prior_row(p, prior_source, j)?;
        }
    }
    for (b, view) in views.iter().enumerate() {
        for i in 0..view.row_id.len() {
            merger.add_delta(view, b as u32, i)?;
        }
    }

    let mut sources: Vec<Vec<ArrayRef>> = Vec::with_capacity(n_cols);
    for (pos, def) in table.columns.iter().enumerate() {
        let data_type = def.column_type.arrow_type();
        let column = |data: &[ArrayRef]| {
            data.get(pos)
                .cloned()
                .unwrap_or_else(|| new_null_array(&data_type, 1))
        };
        let mut list: Vec<ArrayRef> = views.iter().map(|v| column(v.data)).collect();
        list.push(
            prior
                .as_ref()
                .map_or_else(|| new_null_array(&data_type, 1), |p| column(p.data)),
        );
        list.push(new_null_array(&data_type, 1)); // the "no value" source
        sources.push(list);
    }
    merger.finish(table, &sources)
}

fn check_data_columns(table: &TableSchema, data: &[ArrayRef], what: &str) -> Result<()> {
    if data.len() > table.columns.len() {
        return Err(Error::schema(format!(
            "{what} has {} data columns, table {:?} has {}",
            data.len(),
            table.table,
            table.columns.len()
        )));
    }
    for (array, def) in data.iter().zip(&table.columns) {
        if *array.data_type() != def.column_type.arrow_type() {
            return Err(Error::schema(format!(
                "{what}: column {:?} of table {:?} has Arrow type {}, expected {}",
                def.name,
                table.table,
                array.data_type(),
                def.column_type.arrow_type()
            )));
        }
    }
    Ok(())
}

/// Where a column's winning value lives: (source batch, row).
#[derive(Clone, Copy)]
struct Winner<'a> {
    version: Version<'a>,
    source: u32,
    row: u32,
}

struct Row<'a> {
    row_id: &'a str,
    max_hlc: u64,
    live: Option<Version<'a>>,
    delete: Option<Version<'a>>,
}

struct Merger<'a> {
    n_cols: usize,
    index: HashMap<&'a str, usize, RandomState>,
    rows: Vec<Row<'a>>,
    /// `rows.len() * n_cols` entries: the winning write per row and column.
    winners: Vec<Option<Winner<'a>>>,
}

fn newer<'a>(slot: &mut Option<Version<'a>>, candidate: Version<'a>) {
    if slot.is_none_or(|current| candidate > current) {
        *slot = Some(candidate);
    }
}

impl<'a> Merger<'a> {
    fn slot(&mut self, row_id: &'a str) -> usize {
        let next = self.rows.len();
        let slot = *self.index.entry(row_id).or_insert(next);
        if slot == next {
            self.rows.push(Row {
                row_id,
                max_hlc: 0,
                live: None,
                delete: None,
            });
            self.winners.resize(self.winners.len() + self.n_cols, None);
        }
        slot
    }

    fn offer(&mut self, slot: usize, pos: usize, candidate: Winner<'a>) {
        let cell = &mut self.winners[slot * self.n_cols + pos];
        if cell.is_none_or(|w| candidate.version > w.version) {
            *cell = Some(candidate);
        }
    }

    fn add_delta(&mut self, view: &'a DeltaColumns<'a>, source: u32, i: usize) -> Result<()> {
        let slot = self.slot(view.row_id.value(i));
        let version = Version {
            hlc: view.hlc.value(i),
            client_id: ClientKey::Text(view.client_id.value(i)),
            delta_id: view.delta_id.value(i),
        };
        let row = &mut self.rows[slot];
        row.max_hlc = row.max_hlc.max(version.hlc);
        if DeltaOp::from_code(view.op.value(i))? == DeltaOp::Delete {
            newer(&mut row.delete, version);
            return Ok(());
        }
        newer(&mut row.live, version);
        for &pos in view.set_of(i) {
            self.offer(
                slot,
                usize::from(pos),
                Winner {
                    version,
                    source,
                    row: i as u32,
                },
            );
        }
        Ok(())
    }

    fn add_prior_row(&mut self, prior: &'a PriorState<'a>, source: u32, j: usize) -> Result<()> {
        let slot = self.slot(prior.row_id.value(j));
        let key = |array: &'a BinaryArray| -> Result<Option<Version<'a>>> {
            if array.is_null(j) {
                Ok(None)
            } else {
                Version::from_key(array.value(j)).map(Some)
            }
        };
        let (live, delete) = (key(prior.live)?, key(prior.delete)?);
        let row = &mut self.rows[slot];
        row.max_hlc = row.max_hlc.max(prior.hlc.value(j));
        if let Some(v) = live {
            newer(&mut row.live, v);
        }
        if let Some(v) = delete {
            newer(&mut row.delete, v);
        }
        let offsets = prior.col_versions.value_offsets();
        let (start, end) = (offsets[j] as usize, offsets[j + 1] as usize);
        for (pos, k) in (start..end).enumerate().take(self.n_cols) {
            if prior.col_keys.is_valid(k) {
                let version = Version::from_key(prior.col_keys.value(k))?;
                self.offer(
                    slot,
                    pos,
                    Winner {
                        version,
                        source,
                        row: j as u32,
                    },
                );
            }
        }
        Ok(())
    }

    fn finish(self, table: &TableSchema, sources: &[Vec<ArrayRef>]) -> Result<RecordBatch> {
        let n = self.rows.len();
        let mut row_id = StringBuilder::with_capacity(n, n * 16);
        let mut hlc = UInt64Builder::with_capacity(n);
        let mut deleted = BooleanBuilder::with_capacity(n);
        let mut live = BinaryBuilder::with_capacity(n, n * 56);
        let mut delete = BinaryBuilder::with_capacity(n, 0);
        let mut col_versions = ListBuilder::new(BinaryBuilder::with_capacity(
            n * self.n_cols,
            n * self.n_cols * 56,
        ));
        let mut gather: Vec<Vec<(usize, usize)>> = vec![Vec::with_capacity(n); self.n_cols];
        let mut key = Vec::with_capacity(64);
        let none_source = sources.first().map_or(0, |s| s.len() - 1);

        for (slot, row) in self.rows.iter().enumerate() {
            row_id.append_value(row.row_id);
            hlc.append_value(row.max_hlc);
            deleted.append_value(match (row.delete, row.live) {
                (Some(d), Some(l)) => d > l,
                (Some(_), None) => true,
                (None, _) => false,
            });
            append_key(&mut live, row.live, &mut key);
            append_key(&mut delete, row.delete, &mut key);
            for (pos, target) in gather.iter_mut().enumerate() {
                let winner = self.winners[slot * self.n_cols + pos]
                    .filter(|w| row.delete.is_none_or(|d| w.version > d));
                append_key(col_versions.values(), winner.map(|w| w.version), &mut key);
                target
                    .push(winner.map_or((none_source, 0), |w| (w.source as usize, w.row as usize)));
            }
            col_versions.append(true);
        }

        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(row_id.finish()),
            Arc::new(hlc.finish()),
            Arc::new(deleted.finish()),
            Arc::new(live.finish()),
            Arc::new(delete.finish()),
            Arc::new(col_versions.finish()),
        ];
        for (indices, list) in gather.iter().zip(sources) {
            let refs: Vec<&dyn Array> = list.iter().map(|a| a.as_ref()).collect();
            columns.push(interleave(&refs, indices)?);
        }
        Ok(RecordBatch::try_new(state_schema(table), columns)?)
    }
}

fn append_key(builder: &mut BinaryBuilder, version: Option<Version<'_>>, buf: &mut Vec<u8>) {
    match version {
        Some(v) => {
            buf.clear();
            v.write_key(buf);
            builder.append_value(&buf[..]);
        }
        None => builder.append_null(),
    }
}

/// Typed access to a state batch.
struct PriorState<'a> {
    row_id: &'a arrow_array::StringArray,
    hlc: &'a arrow_array::PrimitiveArray<UInt64Type>,
    live: &'a BinaryArray,
    delete: &'a BinaryArray,
    col_versions: &'a ListArray,
    col_keys: &'a BinaryArray,
    data: &'a [ArrayRef],
}

impl<'a> PriorState<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self> {
        let bad = |what: String| Error::invalid("state batch", what);
        let c = batch.columns();
        let names = [
            state::ROW_ID,
            state::HLC,
            state::DELETED,
            state::LIVE_VERSION,
            state::DELETE_VERSION,
            state::COL_VERSIONS,
        ];
        if c.len() < state::RESERVED {
            return Err(bad("fewer columns than the reserved state columns".into()));
        }
        for (i, name) in names.iter().enumerate() {
            if batch.schema_ref().field(i).name() != name {
                return Err(bad(format!(
                    "column {i} is {:?}, expected {name:?}",
                    batch.schema_ref().field(i).name()
                )));
            }
        }
        let col_versions = c[5]
            .as_list_opt::<i32>()
            .ok_or_else(|| bad("_col_versions is not a list".into()))?;
        Ok(Self {
            row_id: c[0]
                .as_string_opt()
                .ok_or_else(|| bad("_row_id is not Utf8".into()))?,
            hlc: c[1]
                .as_primitive_opt()
                .ok_or_else(|| bad("_hlc is not UInt64".into()))?,
            live: c[3]
                .as_binary_opt()
                .ok_or_else(|| bad("_live_version is not Binary".into()))?,
            delete: c[4]
                .as_binary_opt()
                .ok_or_else(|| bad("_delete_version is not Binary".into()))?,
            col_keys: col_versions
                .values()
                .as_binary_opt()
                .ok_or_else(|| bad("_col_versions is not a list of Binary".into()))?,
            col_versions,
            data: &c[state::RESERVED..],
        })
    }

    fn len(&self) -> usize {
        self.row_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{ColumnDelta, RowDelta};
    use crate::delta_batch::{cell_to_json, deltas_to_batch};
    use crate::hlc::HlcTimestamp;
    use crate::schema::{ColumnDef, ColumnType};
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    fn todos() -> TableSchema {
        TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("done", ColumnType::Boolean),
                ColumnDef::new("priority", ColumnType::Integer),
            ],
        )
    }

    fn hlc(w: u64, c: u16) -> u64 {
        HlcTimestamp::new(w, c).unwrap().0
    }

    fn d(op: DeltaOp, row: &str, client: &str, hlc: u64, cols: Vec<(&str, Value)>) -> RowDelta {
        let cols = cols
            .into_iter()
            .map(|(c, v)| ColumnDelta::new(c, v))
            .collect();
        RowDelta::new(op, "todos", row, client, cols, HlcTimestamp(hlc))
    }

    /// Row id → (deleted, visible columns as JSON).
    pub(crate) type View = BTreeMap<String, (bool, BTreeMap<String, Value>)>;

    pub(crate) fn view(table: &TableSchema, state: &RecordBatch) -> View {
        let rows = state.column(0).as_string::<i32>();
        let deleted = state.column(2).as_boolean();
        let versions = state.column(5).as_list::<i32>();
        let mut out = BTreeMap::new();
        for i in 0..state.num_rows() {
            let held = versions.value(i);
            let mut cols = BTreeMap::new();
            for (pos, def) in table.columns.iter().enumerate() {
                if pos < held.len() && held.is_valid(pos) {
                    cols.insert(
                        def.name.clone(),
                        cell_to_json(state.column(state::RESERVED + pos), i, def.column_type)
                            .unwrap(),
                    );
                }
            }
            out.insert(rows.value(i).to_string(), (deleted.value(i), cols));
        }
        out
    }

    fn merged(deltas: &[RowDelta]) -> View {
        let t = todos();
        let batch = deltas_to_batch(&t, deltas).unwrap();
        view(&t, &merge(&t, None, &[batch]).unwrap())
    }

    fn cols(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn vector_same_hlc_different_columns_merge() {
        let t = hlc(2_000_000, 0);
        let v = merged(&[
            d(
                DeltaOp::Update,
                "row-1",
                "client-a",
                t,
                vec![("title", json!("Local Title"))],
            ),
            d(
                DeltaOp::Update,
                "row-1",
                "client-b",
                t,
                vec![("done", json!(true))],
            ),
        ]);
        assert_eq!(
            v["row-1"],
            (
                false,
                cols(&[("title", json!("Local Title")), ("done", json!(true))])
            )
        );
    }

    #[test]
    fn vector_same_hlc_same_column_greater_client_wins() {
        let t = hlc(1_500_000, 5);
        for order in [[0, 1], [1, 0]] {
            let ds = [
                d(
                    DeltaOp::Update,
                    "row-1",
                    "client-a",
                    t,
                    vec![("title", json!("A value"))],
                ),
                d(
                    DeltaOp::Update,
                    "row-1",
                    "client-b",
                    t,
                    vec![("title", json!("B value"))],
                ),
            ];
            let v = merged(&[ds[order[0]].clone(), ds[order[1]].clone()]);
            assert_eq!(v["row-1"].1["title"], json!("B value"));
        }
    }

    #[test]
    fn vector_insert_then_later_update() {
        let v = merged(&[
            d(
                DeltaOp::Insert,
                "row-1",
                "a",
                hlc(1_000_000, 0),
                vec![("title", json!("Inserted")), ("priority", json!(1))],
            ),
            d(
                DeltaOp::Update,
                "row-1",
                "b",
                hlc(3_000_000, 0),
                vec![("title", json!("Updated")), ("done", json!(false))],
            ),
        ]);
        assert_eq!(
            v["row-1"],
            (
                false,
                cols(&[
                    ("title", json!("Updated")),
                    ("priority", json!(1)),
                    ("done", json!(false))
                ])
            )
        );
    }

    #[test]
    fn vector_delete_vs_update_by_hlc_and_resurrection() {
        let ins = d(
            DeltaOp::Insert,
            "row-1",
            "a",
            hlc(1_000, 0),
            vec![("title", json!("x")), ("priority", json!(2))],
        );
        let del = d(DeltaOp::Delete, "row-1", "b", hlc(2_000, 0), vec![]);
        assert_eq!(
            merged(&[ins.clone(), del.clone()])["row-1"],
            (true, BTreeMap::new())
        );
        let upd = d(
            DeltaOp::Update,
            "row-1",
            "c",
            hlc(3_000, 0),
            vec![("title", json!("Resurrected"))],
        );
        // The later UPDATE resurrects the row with only its own columns.
        assert_eq!(
            merged(&[upd.clone(), del.clone(), ins.clone()])["row-1"],
            (false, cols(&[("title", json!("Resurrected"))]))
        );
        // Compactor vector: INSERT@10, DELETE@20, INSERT@30 → the re-insert only.
        let v = merged(&[
            d(
                DeltaOp::Insert,
                "r",
                "a",
                10,
                vec![("title", json!("first")), ("done", json!(false))],
            ),
            d(DeltaOp::Delete, "r", "a", 20, vec![]),
            d(
                DeltaOp::Insert,
                "r",
                "a",
                30,
                vec![("title", json!("Reinserted")), ("done", json!(true))],
            ),
        ]);
        assert_eq!(
            v["r"],
            (
                false,
                cols(&[("title", json!("Reinserted")), ("done", json!(true))])
            )
        );
    }

    #[test]
    fn vector_delete_vs_delete_and_equal_hlc_tiebreak() {
        let v = merged(&[
            d(DeltaOp::Delete, "r", "a", 5, vec![]),
            d(DeltaOp::Delete, "r", "b", 9, vec![]),
        ]);
        assert!(v["r"].0);
        // A DELETE that ties on HLC wins when its client id is greater.
        let v = merged(&[
            d(
                DeltaOp::Update,
                "r",
                "aaa-client",
                7,
                vec![("title", json!("From aaa"))],
            ),
            d(DeltaOp::Delete, "r", "zzz-client", 7, vec![]),
        ]);
        assert!(v["r"].0);
        let v = merged(&[
            d(
                DeltaOp::Update,
                "r",
                "aaa-client",
                7,
                vec![("title", json!("From aaa"))],
            ),
            d(
                DeltaOp::Update,
                "r",
                "zzz-client",
                7,
                vec![("title", json!("From zzz"))],
            ),
        ]);
        assert_eq!(v["r"].1["title"], json!("From zzz"));
    }

    #[test]
    fn vector_compactor_columns_take_their_own_newest_write() {
        let v = merged(&[
            d(
                DeltaOp::Insert,
                "r",
                "a",
                20,
                vec![("title", json!("Title@20")), ("done", json!(false))],
            ),
            d(
                DeltaOp::Update,
                "r",
                "a",
                30,
                vec![("title", json!("Title@30"))],
            ),
            d(DeltaOp::Update, "r", "a", 25, vec![("done", json!(true))]),
        ]);
        assert_eq!(
            v["r"].1,
            cols(&[("title", json!("Title@30")), ("done", json!(true))])
        );
    }

    #[test]
    fn set_to_null_differs_from_untouched() {
        let v = merged(&[
            d(
                DeltaOp::Insert,
                "r",
                "a",
                1,
                vec![("title", json!("x")), ("done", json!(true))],
            ),
            d(DeltaOp::Update, "r", "a", 2, vec![("title", Value::Null)]),
        ]);
        assert_eq!(
            v["r"].1,
            cols(&[("title", Value::Null), ("done", json!(true))])
        );
    }

    #[test]
    fn incremental_merge_and_schema_evolution() {
        let v1 = TableSchema::new("todos", vec![ColumnDef::new("title", ColumnType::String)]);
        let first = deltas_to_batch(
            &v1,
            &[d(DeltaOp::Insert, "r", "a", 1, vec![("title", json!("x"))])],
        )
        .unwrap();
        let state1 = merge(&v1, None, &[first]).unwrap();
        let v2 = todos();
        let second = deltas_to_batch(
            &v2,
            &[d(
                DeltaOp::Update,
                "r",
                "a",
                2,
                vec![("priority", json!(3))],
            )],
        )
        .unwrap();
        let state2 = merge(&v2, Some(&state1), &[second]).unwrap();
        assert_eq!(
            view(&v2, &state2)["r"].1,
            cols(&[("title", json!("x")), ("priority", json!(3))])
        );
        // A mismatched type is an error, not garbage.
        let wrong = TableSchema::new("todos", vec![ColumnDef::new("title", ColumnType::Integer)]);
        assert!(merge(&wrong, Some(&state1), &[]).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::tests::view;
    use super::*;
    use crate::delta::{ColumnDelta, RowDelta};
    use crate::delta_batch::deltas_to_batch;
    use crate::hlc::HlcTimestamp;
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

    /// Deltas over few rows, clients and HLCs, so ties and deletes are common.
    fn deltas() -> impl Strategy<Value = Vec<RowDelta>> {
        let value = prop_oneof![Just(Value::Null), (0i64..4).prop_map(Value::from)];
        let delta = (
            0u8..3,
            0u8..4,
            0u8..3,
            0u64..6,
            proptest::collection::vec((0usize..3, value), 0..3),
        );
        proptest::collection::vec(delta, 0..40).prop_map(|raw| {
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
                        HlcTimestamp(hlc),
                    )
                })
                .collect()
        })
    }

    fn merge_in(batches: &[Vec<RowDelta>], prior: Option<&RecordBatch>) -> RecordBatch {
        let t = table();
        let batches: Vec<RecordBatch> = batches
            .iter()
            .map(|b| deltas_to_batch(&t, b).unwrap())
            .collect();
        merge(&t, prior, &batches).unwrap()
    }

    proptest! {
        /// Any permutation, batching and duplication of the same set gives the same state, and
        /// folding state incrementally gives the same state as merging everything at once.
        #[test]
        fn merge_is_a_function_of_the_set(ds in deltas(), seed in any::<u64>(), cut in 0usize..40, dup in 0usize..40) {
            let t = table();
            let whole = view(&t, &merge_in(std::slice::from_ref(&ds), None));

            let mut shuffled = ds.clone();
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            if !ds.is_empty() {
                shuffled.push(ds[dup % ds.len()].clone());
            }
            let cut = cut.min(shuffled.len());
            let (left, right) = shuffled.split_at(cut);
            prop_assert_eq!(&view(&t, &merge_in(&[left.to_vec(), right.to_vec()], None)), &whole);

            let state = merge_in(&[left.to_vec()], None);
            let incremental = merge_in(&[right.to_vec()], Some(&state));
            prop_assert_eq!(&view(&t, &incremental), &whole);
            // Idempotent: merging the state with everything again changes nothing.
            let again = merge_in(std::slice::from_ref(&ds), Some(&incremental));
            prop_assert_eq!(&view(&t, &again), &whole);
        }
    }
}
