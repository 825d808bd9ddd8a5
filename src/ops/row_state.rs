//! The merged state of every row of one table, kept in memory and updated batch by batch.
//!
//! Both the sync-rule filter operator and the gateway evaluate rules against *rows*, not deltas
//! (DESIGN §4), so both need, for each batch of deltas, every touched row's state before the
//! batch and after it. [`RowStore::apply`] gives exactly that: it merges the batch (column-level
//! LWW, `lakesync_operators::merge`) on top of the touched rows' current state and returns the
//! two aligned state batches, one row per distinct row id in order of first appearance; a row
//! never seen before is a tombstone in `before`. [`RowStore::update`] then records `after` as the
//! rows' current state.
//!
//! State is held in segments (state batches of the table's schema): each update appends one,
//! so an update costs the size of the batch, not of the table; the live rows are rewritten into
//! one segment when stale rows outnumber them.

use std::collections::HashMap;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{interleave_record_batch, take_record_batch};

use crate::kernel::delta::{DeltaOp, RowDelta};
use crate::kernel::delta_batch::deltas_to_batch;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::merge::merge;
use crate::runtime::api::TableRef;
use crate::{Error, Result};

/// A batch's effect on the rows it touches.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The distinct row ids the batch touches, in order of first appearance.
    pub ids: Vec<String>,
    /// The rows' state before the batch (tombstones, with an empty row id, for new rows).
    pub before: RecordBatch,
    /// The rows' state after the batch.
    pub after: RecordBatch,
}

/// The current state of every row of one table.
#[derive(Debug)]
pub struct RowStore {
    table: TableRef,
    segments: Vec<RecordBatch>,
    /// Row id → (segment, row) of the row's current state.
    index: HashMap<String, (u32, u32), foldhash::fast::RandomState>,
    /// Rows in `segments` that `index` no longer points at.
    stale: usize,
    /// A one-row tombstone of the current schema: the state of a row never seen.
    tombstone: RecordBatch,
}

impl RowStore {
    /// An empty store for `table`.
    pub fn new(table: TableRef) -> Result<Self> {
        let never_seen = RowDelta::new(
            DeltaOp::Delete,
            table.delta_table(),
            "",
            "",
            vec![],
            HlcTimestamp(0),
        );
        let tombstone = merge(&table, None, &[deltas_to_batch(&table, &[never_seen])?])?;
        Ok(Self {
            table,
            segments: Vec::new(),
            index: HashMap::default(),
            stale: 0,
            tombstone,
        })
    }

    /// The table this store holds.
    pub fn table(&self) -> &TableRef {
        &self.table
    }

    /// How many rows (live or deleted) the store knows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// How many segments the state is held in (compaction keeps this bounded).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether the store knows no row.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The state rows of `ids` (the tombstone for ids never seen), aligned with `ids`.
    pub fn rows(&self, ids: &[&str]) -> Result<RecordBatch> {
        let mut sources: Vec<&RecordBatch> = self.segments.iter().collect();
        sources.push(&self.tombstone);
        let never_seen = (self.segments.len(), 0);
        let indices: Vec<(usize, usize)> = ids
            .iter()
            .map(|id| {
                self.index
                    .get(*id)
                    .map_or(never_seen, |&(seg, row)| (seg as usize, row as usize))
            })
            .collect();
        Ok(interleave_record_batch(&sources, &indices)?)
    }

    /// Merges a delta batch of this table on top of the state of the rows it touches, without
    /// recording the result (see [`RowStore::update`]). Fails on an empty row id.
    pub fn apply(&self, batch: &RecordBatch) -> Result<Applied> {
        let row_ids = batch.column(1).as_string::<i32>();
        let mut ids: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..batch.num_rows() {
            let id = row_ids.value(i);
            if id.is_empty() {
                return Err(Error::invalid(
                    "delta",
                    format!("row {i}: an empty row id in table {:?}", self.table.table),
                ));
            }
            if seen.insert(id) {
                ids.push(id);
            }
        }
        let before = self.rows(&ids)?;
        let merged = merge(&self.table, Some(&before), std::slice::from_ref(batch))?;
        // `merge` emits prior rows first: `before` holds one row per id (tombstones for new
        // ones, all with the empty row id ""), so look rows up by id.
        let merged_ids = merged.column(0).as_string::<i32>();
        let position: HashMap<&str, u32> = (0..merged.num_rows())
            .map(|i| (merged_ids.value(i), i as u32))
            .collect();
        let after_idx: UInt32Array = ids
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
        Ok(Applied {
            ids: ids.into_iter().map(str::to_string).collect(),
            before,
            after,
        })
    }

    /// Records `after` (state rows with distinct ids, of this table's schema) as those rows'
    /// current state.
    pub fn update(&mut self, after: RecordBatch) -> Result<()> {
        let segment = self.segments.len() as u32;
        let ids = after.column(0).as_string::<i32>();
        for i in 0..after.num_rows() {
            if self
                .index
                .insert(ids.value(i).to_string(), (segment, i as u32))
                .is_some()
            {
                self.stale += 1;
            }
        }
        self.segments.push(after);
        if self.stale > self.index.len().max(1024) || self.segments.len() > 256 {
            self.compact()?;
        }
        Ok(())
    }

    /// Loads saved state (state batches, possibly of an older schema) as the current state of
    /// their rows.
    pub fn load(&mut self, saved: &[RecordBatch]) -> Result<()> {
        if saved.is_empty() {
            return Ok(());
        }
        let schema = saved[0].schema();
        let state = arrow::compute::concat_batches(&schema, saved)?;
        // Saved under an older schema? A merge with nothing brings it up to date.
        let state = if state.schema() == self.tombstone.schema() {
            state
        } else {
            merge(&self.table, Some(&state), &[])?
        };
        self.update(state)
    }

    /// Every row's current state, as one batch (rewriting the segments into one first).
    pub fn snapshot(&mut self) -> Result<RecordBatch> {
        self.compact()?;
        Ok(self
            .segments
            .first()
            .cloned()
            .unwrap_or_else(|| self.tombstone.slice(0, 0)))
    }

    /// Rewrites the live rows into one segment.
    fn compact(&mut self) -> Result<()> {
        if self.segments.len() <= 1 && self.stale == 0 {
            return Ok(());
        }
        let mut live: Vec<(&String, (u32, u32))> =
            self.index.iter().map(|(k, v)| (k, *v)).collect();
        live.sort_unstable_by_key(|(_, at)| *at);
        let indices: Vec<(usize, usize)> = live
            .iter()
            .map(|(_, (s, r))| (*s as usize, *r as usize))
            .collect();
        let sources: Vec<&RecordBatch> = self.segments.iter().collect();
        let merged = if sources.is_empty() {
            self.tombstone.slice(0, 0)
        } else {
            interleave_record_batch(&sources, &indices)?
        };
        self.index = live
            .iter()
            .enumerate()
            .map(|(i, (k, _))| ((*k).clone(), (0, i as u32)))
            .collect::<HashMap<_, _, foldhash::fast::RandomState>>();
        self.segments = vec![merged];
        self.stale = 0;
        Ok(())
    }
}
