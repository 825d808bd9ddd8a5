//! The sync-rule filter operator: passes on exactly what one client (one set of claims) may see.
//!
//! Rules are evaluated on the *row*, not the delta (DESIGN §4). The operator keeps the merged
//! state of every row it has seen, per table. For each batch it merges the deltas into the
//! state of the rows they touch and compares each row's visibility before and after
//! (`lakesync_operators::filter::visibility`):
//! - a row visible after the change is emitted as a **row snapshot**: an INSERT delta carrying
//!   every column the row holds, so a downstream sink that never saw the row's earlier
//!   (filtered-out) history still gets the whole row;
//! - a row that stops being visible is emitted as a DELETE;
//! - rows hidden before and after emit nothing.
//!
//! Snapshots are written by the client id `lakesync:filter:<name>` with an HLC equal to the row's
//! newest HLC, raised when needed so that successive snapshots of a row strictly increase — a
//! sink folding them with last-writer-wins therefore holds exactly the operator's view of each
//! visible row. The state (and those last HLCs) is saved with every checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema};

use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::delta_batch::{cell_to_json, deltas_to_batch};
use crate::kernel::filter::visibility;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::merge::merge;
use crate::kernel::rules::ClientFilter;
use crate::kernel::schema::TableSchema;
use crate::kernel::state::{self, TABLE_METADATA_KEY};
use crate::runtime::api::{OpContext, Operator, TableRef};
use crate::{Error, Result};

/// Schema metadata marking the saved "last snapshot HLC" batch of a table.
const EMITTED_METADATA_KEY: &str = "lakesync.filter.emitted";

/// The sync-rule filter operator.
#[derive(Debug)]
pub struct FilterOperator {
    filter: ClientFilter,
    client_id: String,
    tables: HashMap<String, TableState>,
}

/// What the operator knows about one table.
#[derive(Debug)]
struct TableState {
    table: TableRef,
    /// Row state, one row per row id.
    state: Option<RecordBatch>,
    /// Row id → row index in `state`.
    index: HashMap<String, u32>,
    /// Row id → HLC of the last snapshot emitted for it.
    emitted: HashMap<String, u64>,
}

impl FilterOperator {
    /// A filter named `name` (in the pipeline) applying `filter`.
    pub fn new(name: impl Into<String>, filter: ClientFilter) -> Self {
        Self {
            client_id: format!("lakesync:filter:{}", name.into()),
            filter,
            tables: HashMap::new(),
        }
    }

    fn table_state(&mut self, table: &TableRef) -> &mut TableState {
        self.tables
            .entry(table.table.clone())
            .or_insert_with(|| TableState {
                table: table.clone(),
                state: None,
                index: HashMap::new(),
                emitted: HashMap::new(),
            })
    }
}

impl TableState {
    /// The state rows of `ids` (a tombstone row for ids never seen), aligned with `ids`.
    fn rows(&self, ids: &[&str]) -> Result<RecordBatch> {
        let tombstone = merge(
            &self.table,
            None,
            &[deltas_to_batch(
                &self.table,
                &[RowDelta::new(
                    DeltaOp::Delete,
                    self.table.delta_table(),
                    "",
                    "",
                    vec![],
                    HlcTimestamp(0),
                )],
            )?],
        )?;
        let padded = match &self.state {
            Some(s) if s.schema() == tombstone.schema() => {
                concat_batches(&s.schema(), [s, &tombstone])?
            }
            Some(s) => concat_batches(
                &tombstone.schema(),
                [&merge(&self.table, Some(s), &[])?, &tombstone],
            )?,
            None => tombstone,
        };
        let absent = padded.num_rows() as u32 - 1;
        let indices: UInt32Array = ids
            .iter()
            .map(|id| Some(self.index.get(*id).copied().unwrap_or(absent)))
            .collect();
        Ok(take_record_batch(&padded, &indices)?)
    }

    /// Replaces the state of the rows in `after` (a state batch with distinct row ids).
    fn update(&mut self, after: &RecordBatch) -> Result<()> {
        // Bring older state up to the current schema (a no-op merge), append the new rows, and
        // keep the last row per id.
        let current = match &self.state {
            Some(s) => merge(&self.table, Some(s), &[])?,
            None => {
                self.index = HashMap::new();
                self.state = Some(after.clone());
                return self.reindex();
            }
        };
        let combined = concat_batches(&current.schema(), [&current, after])?;
        let ids = combined.column(0).as_string::<i32>();
        let mut latest: HashMap<&str, u32> = HashMap::with_capacity(combined.num_rows());
        for i in 0..combined.num_rows() {
            latest.insert(ids.value(i), i as u32);
        }
        let mut order: Vec<u32> = latest.into_values().collect();
        order.sort_unstable();
        self.state = Some(take_record_batch(&combined, &UInt32Array::from(order))?);
        self.reindex()
    }

    fn reindex(&mut self) -> Result<()> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let ids = state.column(0).as_string::<i32>();
        self.index = (0..state.num_rows())
            .map(|i| (ids.value(i).to_string(), i as u32))
            .collect();
        Ok(())
    }
}

impl Operator for FilterOperator {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn output_schema(&self, input: &TableSchema) -> Result<TableSchema> {
        Ok(input.clone())
    }

    fn process(
        &mut self,
        table: &TableRef,
        batch: RecordBatch,
        _ctx: &OpContext,
    ) -> Result<Vec<RecordBatch>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let filter = self.filter.clone();
        let client_id = self.client_id.clone();
        let st = self.table_state(table);
        let row_ids = batch.column(1).as_string::<i32>();
        let mut changed: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..batch.num_rows() {
            if row_ids.value(i).is_empty() {
                return Err(Error::invalid(
                    "delta",
                    format!("an empty row id in table {:?}", table.table),
                ));
            }
            if seen.insert(row_ids.value(i)) {
                changed.push(row_ids.value(i));
            }
        }
        let before = st.rows(&changed)?;
        let merged = merge(&st.table, Some(&before), std::slice::from_ref(&batch))?;
        // `merge` emits prior rows first: `before` holds one row per changed id (tombstones for
        // new ones, all with the empty row id ""), so look rows up by id.
        let merged_ids = merged.column(0).as_string::<i32>();
        let position: HashMap<&str, u32> = (0..merged.num_rows())
            .map(|i| (merged_ids.value(i), i as u32))
            .collect();
        let after_idx: UInt32Array = changed
            .iter()
            .map(|id| {
                position
                    .get(id)
                    .copied()
                    .ok_or_else(|| Error::internal(format!("row {id} lost in merge")))
                    .map(Some)
            })
            .collect::<Result<_>>()?;
        let after = take_record_batch(&merged, &after_idx)?;
        let routes = visibility(&filter, &st.table.table, &before, &after)?;

        let hlcs: &UInt64Array = after.column(1).as_primitive();
        let versions = after.column(5).as_list::<i32>();
        let mut out = Vec::new();
        for (i, id) in changed.iter().enumerate() {
            let (visible, leaving) = (
                routes.keep.value(i) || routes.enter.value(i),
                routes.leave.value(i),
            );
            if !visible && !leaving {
                continue;
            }
            let last = st.emitted.get(*id).copied().unwrap_or(0);
            let hlc = hlcs.value(i).max(last + 1);
            st.emitted.insert(id.to_string(), hlc);
            let columns = if leaving {
                Vec::new()
            } else {
                let held = versions.value(i);
                st.table
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(pos, _)| *pos < held.len() && held.is_valid(*pos))
                    .map(|(pos, def)| {
                        Ok(ColumnDelta::new(
                            def.name.clone(),
                            cell_to_json(after.column(state::RESERVED + pos), i, def.column_type)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            let op = if leaving {
                DeltaOp::Delete
            } else {
                DeltaOp::Insert
            };
            out.push(RowDelta::new(
                op,
                st.table.delta_table(),
                *id,
                &client_id,
                columns,
                HlcTimestamp(hlc),
            ));
        }
        st.update(&after)?;
        if out.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![deltas_to_batch(&st.table, &out)?])
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for st in self.tables.values() {
            if let Some(state) = &st.state {
                out.push(state.clone());
            }
            let (ids, hlcs): (Vec<&str>, Vec<u64>) =
                st.emitted.iter().map(|(k, v)| (k.as_str(), *v)).unzip();
            let schema = Schema::new(vec![
                Field::new("row_id", DataType::Utf8, false),
                Field::new("hlc", DataType::UInt64, false),
            ])
            .with_metadata(
                [
                    (TABLE_METADATA_KEY.to_string(), st.table.table.clone()),
                    (EMITTED_METADATA_KEY.to_string(), "1".to_string()),
                ]
                .into(),
            );
            out.push(RecordBatch::try_new(
                Arc::new(schema),
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(UInt64Array::from(hlcs)),
                ],
            )?);
        }
        Ok(out)
    }

    fn restore(&mut self, saved: Vec<RecordBatch>) -> Result<()> {
        for batch in saved {
            let meta = batch.schema().metadata().clone();
            let table = meta
                .get(TABLE_METADATA_KEY)
                .ok_or_else(|| Error::invalid("filter state", "a saved batch names no table"))?;
            let st = self.tables.get_mut(table).ok_or_else(|| {
                Error::invalid(
                    "filter state",
                    format!("saved state for unknown table {table:?}"),
                )
            })?;
            if meta.contains_key(EMITTED_METADATA_KEY) {
                let ids = batch.column(0).as_string::<i32>();
                let hlcs: &UInt64Array = batch.column(1).as_primitive();
                st.emitted = (0..batch.num_rows())
                    .map(|i| (ids.value(i).to_string(), hlcs.value(i)))
                    .collect();
            } else {
                let ids = batch.column(0).as_string::<i32>();
                st.index = (0..batch.num_rows())
                    .map(|i| (ids.value(i).to_string(), i as u32))
                    .collect();
                st.state = Some(batch);
            }
        }
        Ok(())
    }
}

impl FilterOperator {
    /// Registers the tables this operator will see, so saved state can be restored into them.
    pub fn with_tables(mut self, tables: &[TableRef]) -> Self {
        for t in tables {
            self.table_state(t);
        }
        self
    }
}
