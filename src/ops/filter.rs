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

use arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};

use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::delta_batch::{cell_to_json, deltas_to_batch};
use crate::kernel::filter::visibility;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::rules::ClientFilter;
use crate::kernel::schema::TableSchema;
use crate::kernel::state::{self, TABLE_METADATA_KEY};
use crate::ops::row_state::{Applied, RowStore};
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
    /// Every row's merged state.
    rows: RowStore,
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

    fn table_state(&mut self, table: &TableRef) -> Result<&mut TableState> {
        if !self.tables.contains_key(&table.table) {
            self.tables.insert(
                table.table.clone(),
                TableState {
                    rows: RowStore::new(table.clone())?,
                    emitted: HashMap::new(),
                },
            );
        }
        self.tables
            .get_mut(&table.table)
            .ok_or_else(|| Error::internal("filter table state vanished"))
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
        let st = self.table_state(table)?;
        let Applied { ids, before, after } = st.rows.apply(&batch)?;
        let table_ref = st.rows.table().clone();
        let routes = visibility(&filter, &table_ref.table, &before, &after)?;

        let hlcs: &UInt64Array = after.column(1).as_primitive();
        let versions = after.column(5).as_list::<i32>();
        let mut out = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (visible, leaving) = (
                routes.keep.value(i) || routes.enter.value(i),
                routes.leave.value(i),
            );
            if !visible && !leaving {
                continue;
            }
            let last = st.emitted.get(id.as_str()).copied().unwrap_or(0);
            let hlc = hlcs.value(i).max(last + 1);
            st.emitted.insert(id.to_string(), hlc);
            let columns = if leaving {
                Vec::new()
            } else {
                let held = versions.value(i);
                table_ref
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
                table_ref.delta_table(),
                id.as_str(),
                &client_id,
                columns,
                HlcTimestamp(hlc),
            ));
        }
        st.rows.update(after)?;
        if out.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![deltas_to_batch(&table_ref, &out)?])
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for st in self.tables.values_mut() {
            let state = st.rows.snapshot()?;
            if state.num_rows() > 0 {
                out.push(state);
            }
            let (ids, hlcs): (Vec<&str>, Vec<u64>) =
                st.emitted.iter().map(|(k, v)| (k.as_str(), *v)).unzip();
            let schema = Schema::new(vec![
                Field::new("row_id", DataType::Utf8, false),
                Field::new("hlc", DataType::UInt64, false),
            ])
            .with_metadata(
                [
                    (
                        TABLE_METADATA_KEY.to_string(),
                        st.rows.table().table.clone(),
                    ),
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
        // Saved batches may come back in several chunks; gather them per table and kind first.
        let mut states: HashMap<String, Vec<RecordBatch>> = HashMap::new();
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
                st.emitted.extend(
                    (0..batch.num_rows()).map(|i| (ids.value(i).to_string(), hlcs.value(i))),
                );
            } else {
                states.entry(table.clone()).or_default().push(batch);
            }
        }
        for (table, chunks) in states {
            if let Some(st) = self.tables.get_mut(&table) {
                st.rows.load(&chunks)?;
            }
        }
        Ok(())
    }
}

impl FilterOperator {
    /// Registers the tables this operator will see, so saved state can be restored into them.
    pub fn with_tables(mut self, tables: &[TableRef]) -> Result<Self> {
        for t in tables {
            self.table_state(t)?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta_batch::batch_to_deltas;
    use crate::kernel::rules::{Claims, SyncRules};
    use crate::kernel::schema::{ColumnDef, ColumnType};
    use serde_json::{Value, json};

    fn table() -> TableRef {
        Arc::new(TableSchema::new(
            "items",
            vec![
                ColumnDef::new("team", ColumnType::String),
                ColumnDef::new("qty", ColumnType::Integer),
            ],
        ))
    }

    fn operator() -> FilterOperator {
        let rules = SyncRules::from_value(&json!({"version": 1, "buckets": [
            {"name": "team", "tables": ["items"], "filters": [{"column": "team", "op": "eq", "value": "jwt:team"}]}
        ]}))
        .unwrap();
        FilterOperator::new(
            "red",
            ClientFilter::new(
                &rules,
                &Claims::new().with("sub", ["u"]).with("team", ["red"]),
            ),
        )
        .with_tables(&[table()])
        .unwrap()
    }

    fn delta(op: DeltaOp, row: &str, hlc: u64, cols: &[(&str, Value)]) -> RowDelta {
        let cols = cols
            .iter()
            .map(|(c, v)| ColumnDelta::new(*c, v.clone()))
            .collect();
        RowDelta::new(op, "items", row, "writer", cols, HlcTimestamp(hlc))
    }

    fn run(op: &mut FilterOperator, deltas: &[RowDelta]) -> Vec<RowDelta> {
        let t = table();
        let ctx = OpContext { now_ms: 0 };
        op.process(&t, deltas_to_batch(&t, deltas).unwrap(), &ctx)
            .unwrap()
            .iter()
            .flat_map(|b| batch_to_deltas(b).unwrap())
            .collect()
    }

    #[test]
    fn rows_enter_whole_leave_as_deletes_and_hlcs_increase() {
        let mut op = operator();
        let out = run(
            &mut op,
            &[delta(
                DeltaOp::Insert,
                "a",
                10,
                &[("team", json!("blue")), ("qty", json!(1))],
            )],
        );
        assert!(out.is_empty(), "a blue row is invisible");
        // An update that carries only qty does not move it in.
        assert!(
            run(
                &mut op,
                &[delta(DeltaOp::Update, "a", 11, &[("qty", json!(2))])]
            )
            .is_empty()
        );
        // Moving to red: the whole row arrives.
        let out = run(
            &mut op,
            &[delta(DeltaOp::Update, "a", 12, &[("team", json!("red"))])],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].op, DeltaOp::Insert);
        assert_eq!(
            out[0].columns,
            vec![
                ColumnDelta::new("team", json!("red")),
                ColumnDelta::new("qty", json!(2))
            ]
        );
        // An update without the filtered column is forwarded (as a snapshot).
        let out = run(
            &mut op,
            &[delta(DeltaOp::Update, "a", 13, &[("qty", json!(3))])],
        );
        assert_eq!(out[0].value("qty"), Some(&json!(3)));
        let before = out[0].hlc;
        // A late write (older HLC) loses to the newer team value; the row's snapshot is sent
        // again with a strictly newer HLC.
        let out = run(
            &mut op,
            &[delta(DeltaOp::Update, "a", 5, &[("team", json!("blue"))])],
        );
        assert_eq!(out[0].value("team"), Some(&json!("red")));
        assert!(out[0].hlc > before);
        let before = out[0].hlc;
        let out = run(&mut op, &[delta(DeltaOp::Delete, "a", 14, &[])]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].op, DeltaOp::Delete);
        assert!(out[0].hlc > before);
    }

    #[test]
    fn snapshot_and_restore_continue_identically() {
        let mut first = operator();
        run(
            &mut first,
            &[
                delta(
                    DeltaOp::Insert,
                    "a",
                    10,
                    &[("team", json!("red")), ("qty", json!(1))],
                ),
                delta(
                    DeltaOp::Insert,
                    "b",
                    10,
                    &[("team", json!("blue")), ("qty", json!(1))],
                ),
            ],
        );
        let saved = first.snapshot().unwrap();
        let mut second = operator();
        second.restore(saved).unwrap();
        let next = [
            delta(DeltaOp::Update, "b", 20, &[("team", json!("red"))]),
            delta(DeltaOp::Update, "a", 20, &[("team", json!("blue"))]),
        ];
        assert_eq!(run(&mut first, &next), run(&mut second, &next));
    }

    #[test]
    fn many_batches_compact_without_changing_results() {
        let mut op = operator();
        let mut visible = 0;
        for round in 0..400u64 {
            let deltas: Vec<RowDelta> = (0..10)
                .map(|k| {
                    let team = if (round + k) % 3 == 0 { "red" } else { "blue" };
                    delta(
                        DeltaOp::Update,
                        &format!("r{k}"),
                        100 + round,
                        &[("team", json!(team))],
                    )
                })
                .collect();
            for d in run(&mut op, &deltas) {
                visible += if d.op == DeltaOp::Insert { 0 } else { 1 };
            }
        }
        let st = &op.tables["items"];
        assert_eq!(st.rows.len(), 10);
        assert!(st.rows.segment_count() <= 257);
        assert!(visible > 0);
    }
}
