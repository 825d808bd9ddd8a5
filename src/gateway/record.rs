//! One accepted push of one table, as the gateway keeps it in memory, and how it reaches a
//! client.
//!
//! A [`Record`] holds the accepted deltas (what is flushed to the sinks) and, for every row
//! they touch, the row's merged state before and after them. A client is sent a record through
//! its sync rules evaluated on those *rows* (`lakesync_operators::filter`): a row visible after
//! the change arrives as a snapshot of the whole row — `INSERT` when it just became visible,
//! `UPDATE` when it already was — and a row that stops being visible arrives as a `DELETE`.
//! Applying a client's records in cursor order therefore leaves it with exactly the rows its
//! rules allow, with the server's merged values, whatever order the deltas arrived in (a
//! late delta with an old HLC changes the merged state, and that change is sent like any other).
//!
//! Snapshot deltas carry the writer of the change as client id and an HLC that is the row's
//! newest HLC, raised where needed so that successive snapshots of a row strictly increase; their
//! delta ids are derived from the record's sequence number and the row, so a re-sent snapshot
//! has the same id.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryBuilder, ListBuilder, RecordBatch, StringArray,
    UInt8Array, UInt16Builder, UInt32Array, UInt64Array,
};
use arrow::compute::take;
use sha2::{Digest, Sha256};

use crate::Result;
use crate::kernel::delta::DeltaOp;
use crate::kernel::delta_batch::delta_schema;
use crate::kernel::filter::visibility;
use crate::kernel::rules::ClientFilter;
use crate::kernel::state::RESERVED;
use crate::runtime::api::TableRef;

/// One accepted push of one table.
#[derive(Debug)]
pub struct Record {
    /// The cursor of the record's first touched row: each touched row has its own cursor,
    /// `first_seq + i` for the row at position `i` of `after`.
    pub first_seq: u64,
    /// The cursor of the record's last touched row: strictly increasing in acceptance order.
    pub seq: u64,
    /// The table.
    pub table: TableRef,
    /// The pushing client.
    pub client_id: String,
    /// When it was accepted (ms since the Unix epoch).
    pub accepted_ms: u64,
    /// The accepted deltas, in the table's delta schema.
    pub deltas: RecordBatch,
    /// The touched rows' state before the deltas (state form).
    pub before: RecordBatch,
    /// The touched rows' state after the deltas, aligned with `before`.
    pub after: RecordBatch,
    /// The HLC each touched row's snapshot carries, aligned with `after`.
    pub snapshot_hlc: UInt64Array,
    /// The bytes the record takes in the durable log.
    pub stored_bytes: usize,
}

/// A shared record.
pub type RecordRef = Arc<Record>;

impl Record {
    /// How many deltas the record holds.
    pub fn len(&self) -> usize {
        self.deltas.num_rows()
    }

    /// Whether the record holds no delta.
    pub fn is_empty(&self) -> bool {
        self.deltas.num_rows() == 0
    }

    /// What the client `filter` was compiled for is sent of this record: a delta batch of the
    /// table (see the module docs), or `None` when nothing it may see changed.
    pub fn route(&self, filter: &ClientFilter) -> Result<Option<RecordBatch>> {
        Ok(self.route_after(filter, 0)?.map(|(batch, _)| batch))
    }

    /// Like [`Record::route`], for the touched rows at position `from` and after only; also
    /// returns each sent row's position (its cursor is `first_seq + position`).
    pub fn route_after(
        &self,
        filter: &ClientFilter,
        from: usize,
    ) -> Result<Option<(RecordBatch, Vec<u32>)>> {
        let table = &self.table;
        if !filter.sees_table(&table.table) || self.after.num_rows() == 0 {
            return Ok(None);
        }
        let routes = visibility(filter, &table.table, &self.before, &self.after)?;
        let mut rows: Vec<u32> = Vec::new();
        let mut ops: Vec<u8> = Vec::new();
        for i in from..self.after.num_rows() {
            let op = if routes.enter.value(i) {
                DeltaOp::Insert
            } else if routes.keep.value(i) {
                DeltaOp::Update
            } else if routes.leave.value(i) {
                DeltaOp::Delete
            } else {
                continue;
            };
            rows.push(i as u32);
            ops.push(op as u8);
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let batch = snapshot_batch(
            &self.table,
            &self.after,
            &rows,
            &ops,
            &self.snapshot_hlc,
            &self.client_id,
            self.first_seq,
        )?;
        Ok(Some((batch, rows)))
    }
}

/// Snapshot deltas of rows of `state` (state form): row `rows[k]` with op `ops[k]` (a DELETE
/// carries no columns), HLC `hlcs[rows[k]]`, written by `client_id`; delta ids derive from `seq`.
pub fn snapshot_batch(
    table: &TableRef,
    state: &RecordBatch,
    rows: &[u32],
    ops: &[u8],
    hlcs: &UInt64Array,
    client_id: &str,
    seq: u64,
) -> Result<RecordBatch> {
    {
        let schema = delta_schema(table);
        let n_data = table.columns.len();
        let ids = state.column(0).as_string::<i32>();
        let versions = state.column(5).as_list::<i32>();
        let mut row_id = Vec::with_capacity(rows.len());
        let mut hlc = Vec::with_capacity(rows.len());
        let mut delta_id = FixedSizeBinaryBuilder::with_capacity(rows.len(), 32);
        let mut set = ListBuilder::new(UInt16Builder::new()).with_field(Arc::new(
            arrow::datatypes::Field::new_list_field(arrow::datatypes::DataType::UInt16, false),
        ));
        let mut data_rows: Vec<Option<u32>> = Vec::with_capacity(rows.len());
        for (&r, &op) in rows.iter().zip(ops) {
            let i = r as usize;
            let id = ids.value(i);
            row_id.push(id);
            hlc.push(hlcs.value(i));
            let mut hasher = Sha256::new();
            hasher.update(b"lakesync:snapshot\0");
            hasher.update(seq.to_be_bytes());
            hasher.update([op]);
            hasher.update(id.as_bytes());
            delta_id.append_value(hasher.finalize())?;
            if op == DeltaOp::Delete as u8 {
                set.append(true);
                data_rows.push(None);
            } else {
                let held = versions.value(i);
                for pos in 0..n_data.min(held.len()) {
                    if held.is_valid(pos) {
                        set.values().append_value(pos as u16);
                    }
                }
                set.append(true);
                data_rows.push(Some(r));
            }
        }
        let n = rows.len();
        let data_idx = UInt32Array::from(data_rows);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from(ops.to_vec())),
            Arc::new(StringArray::from(row_id)),
            Arc::new(StringArray::from(vec![client_id; n])),
            Arc::new(UInt64Array::from(hlc)),
            Arc::new(delta_id.finish()),
            Arc::new(set.finish()),
        ];
        for pos in 0..n_data {
            columns.push(take(state.column(RESERVED + pos), &data_idx, None)?);
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}
