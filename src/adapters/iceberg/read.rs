//! Reading a lake table back: its base rows and deltas at a snapshot, and the row state they
//! merge to.
//!
//! A lake table ([`super::mapping`]) holds two kinds of rows: *deltas*, written by the sink
//! (`_versions` null), and *base rows*, written by compaction ([`super::compact`]; `_versions`
//! not null), each the merged state of one row id as of the compaction. [`read_table`] scans one
//! snapshot through iceberg-rust (`Table::scan`, which applies any delete files) and splits the
//! rows by `_versions`: base rows become one state batch, deltas stay in the delta contract.
//! [`state_of`] merges them (`lakesync_operators::merge::merge` with the base as the prior
//! state): exactly the state a merge of every delta ever written to the table (up to the
//! snapshot) gives, because base rows carry every version key the merge needs
//! (`lakesync_operators::compact`).
//!
//! **Uniqueness of base rows.** Compaction always covers the *whole* table: it reads every live
//! data file of a snapshot and replaces all of them in one `replace` snapshot. So a snapshot
//! holds at most one base row per row id (those of the last compaction) plus the deltas
//! committed since. (Were a row id's base rows ever repeated, the merge would still be right:
//! merging prior state is idempotent.)
//!
//! **HLC filter.** `hlc_filter = Some((lo, hi))` keeps the deltas with `lo < _hlc <= hi`. It
//! applies to deltas only: a base row summarises every delta of its row up to the compaction
//! (the snapshot summary's `lakesync.compacted-through-hlc` bounds them), so it is returned
//! whole or not at all ([`ReadOptions::skip_base`]). The filter is applied in memory after the scan.
//!
//! **Memory.** [`read_table`] holds every delta of the snapshot. [`read_state`] folds the scan
//! into the state as it goes (deltas are merged in chunks of [`MERGE_CHUNK_ROWS`]), so it holds
//! the state plus a chunk, and is what compaction uses.

use super::iceberg_error;
use arrow::array::{Array, BooleanArray, RecordBatch, UInt64Array};
use arrow::compute::{and, concat_batches, filter_record_batch, is_not_null, is_null};
use futures::TryStreamExt;
use iceberg::table::Table;

use super::mapping;
use crate::kernel::compact::{VERSIONS, base_to_state};
use crate::kernel::delta_batch::HLC;
use crate::kernel::merge::merge;
use crate::kernel::schema::TableSchema;
use crate::kernel::state::state_schema;
use crate::{Error, Result};

/// How many delta rows [`read_state`] gathers before merging them into the state.
pub const MERGE_CHUNK_ROWS: usize = 256 * 1024;

/// What [`read_table`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// The snapshot to read; the table's current snapshot when `None`.
    pub snapshot: Option<i64>,
    /// Keep only the deltas with `lo < _hlc <= hi` (`(lo_exclusive, hi_inclusive)`).
    pub hlc_filter: Option<(u64, u64)>,
    /// Leave the base rows out (only deltas are returned); by default they are read.
    pub skip_base: bool,
}

impl ReadOptions {
    /// Reads `snapshot` whole.
    pub fn at(snapshot: Option<i64>) -> Self {
        Self {
            snapshot,
            ..Self::default()
        }
    }
}

/// The rows of a lake table at one snapshot.
#[derive(Clone, Debug)]
pub struct LakeRows {
    /// The table's LakeSync schema, from the snapshot's Iceberg schema.
    pub schema: TableSchema,
    /// The snapshot read; `None` when the table has no snapshot (no rows).
    pub snapshot_id: Option<i64>,
    /// The base rows, as one state batch (`lakesync_operators::state`); `None` when the
    /// snapshot has none (never compacted, or [`ReadOptions::skip_base`]).
    pub base: Option<RecordBatch>,
    /// The deltas (delta contract batches, as scanned, after the HLC filter).
    pub deltas: Vec<RecordBatch>,
    /// The highest `_hlc` of any row read (base or delta); `None` when nothing was read.
    pub max_hlc: Option<u64>,
    /// How many rows were read (before the HLC filter).
    pub rows_read: u64,
}

/// Reads the rows of `table` at a snapshot (see the module docs).
///
/// Fails when the snapshot does not exist, the table is not a LakeSync delta table, or a row
/// does not fit the delta contract; an Iceberg failure is an [`Error::External`].
pub async fn read_table(table: &Table, options: ReadOptions) -> Result<LakeRows> {
    let mut rows = begin(table, options.snapshot)?;
    let mut bases = Vec::new();
    scan(table, rows.snapshot_id, |batch| {
        let split = split(&rows.schema, &batch, options.skip_base)?;
        rows.note(&split);
        if let Some(base) = split.base {
            bases.push(base);
        }
        if let Some(deltas) = split.deltas
            && let Some(deltas) = filter_hlc(deltas, options.hlc_filter)?
        {
            rows.deltas.push(deltas);
        }
        Ok(())
    })
    .await?;
    rows.base = concat_states(&rows.schema, bases)?;
    Ok(rows)
}

/// The row state of `rows`: its deltas merged onto its base rows.
pub fn state_of(rows: &LakeRows) -> Result<RecordBatch> {
    merge(&rows.schema, rows.base.as_ref(), &rows.deltas)
}

/// The row state of `table` at `snapshot` (the current one when `None`), folded as the scan
/// goes so that memory stays near the state's size: `state_of(read_table(..))` without holding
/// every delta. Returns the rows' summary too, with `base` and `deltas` empty.
pub async fn read_state(table: &Table, snapshot: Option<i64>) -> Result<(LakeRows, RecordBatch)> {
    read_state_in_chunks(table, snapshot, MERGE_CHUNK_ROWS).await
}

async fn read_state_in_chunks(
    table: &Table,
    snapshot: Option<i64>,
    chunk_rows: usize,
) -> Result<(LakeRows, RecordBatch)> {
    let mut rows = begin(table, snapshot)?;
    let schema = rows.schema.clone();
    let mut bases = Vec::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let mut state: Option<RecordBatch> = None;
    scan(table, rows.snapshot_id, |batch| {
        let split = split(&schema, &batch, false)?;
        rows.note(&split);
        if let Some(base) = split.base {
            bases.push(base);
        }
        if let Some(deltas) = split.deltas {
            pending_rows += deltas.num_rows();
            pending.push(deltas);
        }
        if pending_rows >= chunk_rows {
            state = Some(merge(&schema, state.as_ref(), &pending)?);
            pending.clear();
            pending_rows = 0;
        }
        Ok(())
    })
    .await?;
    // The kernel takes one prior batch: the base rows and the state folded so far, joined (a row
    // id in both is merged, as prior state merges idempotently), then the last chunk of deltas.
    bases.extend(state);
    let prior = concat_states(&schema, bases)?;
    let state = merge(&schema, prior.as_ref(), &pending)?;
    Ok((rows, state))
}

/// Resolves the snapshot and the table's schema at it.
fn begin(table: &Table, snapshot: Option<i64>) -> Result<LakeRows> {
    let metadata = table.metadata();
    let name = table.identifier().name();
    let (snapshot_id, iceberg_schema) = match snapshot {
        Some(id) => {
            let snapshot = metadata.snapshot_by_id(id).ok_or_else(|| {
                Error::invalid(
                    "lake read",
                    format!("table {} has no snapshot {id}", table.identifier()),
                )
            })?;
            let schema = snapshot
                .schema(metadata)
                .map_err(|e| iceberg_error(format!("the schema of snapshot {id}"), e))?;
            (Some(id), schema)
        }
        None => (
            metadata.current_snapshot_id(),
            metadata.current_schema().clone(),
        ),
    };
    Ok(LakeRows {
        schema: mapping::table_schema_of(name, &iceberg_schema)?,
        snapshot_id,
        base: None,
        deltas: Vec::new(),
        max_hlc: None,
        rows_read: 0,
    })
}

/// Scans every row of `snapshot`, one Iceberg batch at a time, into `each`.
async fn scan(
    table: &Table,
    snapshot: Option<i64>,
    mut each: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let Some(snapshot) = snapshot else {
        return Ok(());
    };
    let ident = table.identifier();
    let mut stream = table
        .scan()
        .snapshot_id(snapshot)
        .select_all()
        .build()
        .map_err(|e| iceberg_error(format!("planning a scan of table {ident}"), e))?
        .to_arrow()
        .await
        .map_err(|e| iceberg_error(format!("scanning table {ident}"), e))?;
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| iceberg_error(format!("reading table {ident} at snapshot {snapshot}"), e))?
    {
        if batch.num_rows() > 0 {
            each(batch)?;
        }
    }
    Ok(())
}

/// One scanned batch, split.
struct Split {
    /// Its base rows as a state batch.
    base: Option<RecordBatch>,
    /// Its deltas as a delta batch.
    deltas: Option<RecordBatch>,
    /// The highest `_hlc` of the batch.
    max_hlc: Option<u64>,
    rows: u64,
}

impl LakeRows {
    fn note(&mut self, split: &Split) {
        self.rows_read += split.rows;
        self.max_hlc = self.max_hlc.max(split.max_hlc);
    }
}

fn split(schema: &TableSchema, batch: &RecordBatch, skip_base: bool) -> Result<Split> {
    let rows = batch.num_rows() as u64;
    let max_hlc = batch
        .column_by_name(HLC)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
        .and_then(arrow::compute::max)
        .and_then(|h| u64::try_from(h).ok());
    let Some(versions) = batch.column_by_name(VERSIONS) else {
        return Ok(Split {
            base: None,
            deltas: Some(mapping::to_delta_batch(schema, batch)?),
            max_hlc,
            rows,
        });
    };
    let part = |mask: &BooleanArray| -> Result<Option<RecordBatch>> {
        if mask.true_count() == 0 {
            return Ok(None);
        }
        if mask.true_count() == batch.num_rows() {
            return Ok(Some(batch.clone()));
        }
        filter_record_batch(batch, mask)
            .map(Some)
            .map_err(|e| Error::internal(format!("splitting a lake batch: {e}")))
    };
    let arrow_err = |e: arrow::error::ArrowError| Error::internal(format!("lake batch: {e}"));
    let deltas = part(&is_null(versions).map_err(arrow_err)?)?
        .map(|b| mapping::to_delta_batch(schema, &b))
        .transpose()?;
    let base = if skip_base {
        None
    } else {
        part(&is_not_null(versions).map_err(arrow_err)?)?
            .map(|b| base_to_state(schema, &mapping::to_base_batch(schema, &b)?))
            .transpose()?
    };
    Ok(Split {
        base,
        deltas,
        max_hlc,
        rows,
    })
}

/// Keeps the rows of a delta batch with `lo < _hlc <= hi`; `None` when none is left.
fn filter_hlc(deltas: RecordBatch, filter: Option<(u64, u64)>) -> Result<Option<RecordBatch>> {
    let Some((lo, hi)) = filter else {
        return Ok(Some(deltas));
    };
    let hlc = deltas
        .column(3)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| Error::internal("a delta batch whose _hlc is not UInt64"))?;
    let arrow_err = |e: arrow::error::ArrowError| Error::internal(format!("HLC filter: {e}"));
    let above =
        arrow::compute::kernels::cmp::gt(hlc, &UInt64Array::new_scalar(lo)).map_err(arrow_err)?;
    let below = arrow::compute::kernels::cmp::lt_eq(hlc, &UInt64Array::new_scalar(hi))
        .map_err(arrow_err)?;
    let mask = and(&above, &below).map_err(arrow_err)?;
    if mask.true_count() == 0 {
        return Ok(None);
    }
    filter_record_batch(&deltas, &mask)
        .map(Some)
        .map_err(arrow_err)
}

/// One state batch of base rows from many (or `None`).
fn concat_states(schema: &TableSchema, states: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    match states.len() {
        0 => Ok(None),
        1 => Ok(states.into_iter().next()),
        _ => concat_batches(&state_schema(schema), &states)
            .map(Some)
            .map_err(|e| Error::internal(format!("joining base rows: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::iceberg::compact::CompactionOptions;
    use crate::adapters::iceberg::compact::tests::{Lake, T0, history, sorted};
    use crate::kernel::delta_batch::deltas_to_batch;
    use crate::kernel::hlc::HlcTimestamp;

    #[tokio::test]
    async fn snapshots_filters_and_base_rows_read_back() {
        let mut lake = Lake::new().await;
        let epochs = history();
        lake.flush(epochs[0].clone()).await;
        let first = lake.load().await.metadata().current_snapshot_id();
        for epoch in &epochs[1..] {
            lake.flush(epoch.clone()).await;
        }
        let table = lake.load().await;
        // Time travel: the first snapshot is the first epoch's state.
        let rows = read_table(&table, ReadOptions::at(first)).await.unwrap();
        assert_eq!(rows.snapshot_id, first);
        let batch = deltas_to_batch(&lake.table, &epochs[0]).unwrap();
        let want = sorted(&merge(&lake.table, None, &[batch]).unwrap());
        assert_eq!(sorted(&state_of(&rows).unwrap()), want);
        assert_eq!(rows.rows_read, 3);
        // The HLC filter keeps lo < _hlc <= hi, on deltas.
        let lo = HlcTimestamp::new(T0 + 10, 0).unwrap().0;
        let hi = HlcTimestamp::new(T0 + 12, 0).unwrap().0;
        let options = ReadOptions {
            hlc_filter: Some((lo, hi)),
            ..ReadOptions::default()
        };
        let rows = read_table(&table, options).await.unwrap();
        let kept: usize = rows.deltas.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(kept, 2); // T0+11 and T0+12
        assert_eq!(rows.rows_read, 9);
        assert_eq!(
            rows.max_hlc,
            Some(HlcTimestamp::new(T0 + 86_400_002, 0).unwrap().0)
        );
        // A missing snapshot is named.
        let err = read_table(&table, ReadOptions::at(Some(42)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("has no snapshot 42"), "{err}");

        // After compaction: base rows, which skip_base leaves out; the old snapshot still reads.
        lake.compact(&CompactionOptions::default()).await;
        let table = lake.load().await;
        let rows = read_table(&table, ReadOptions::default()).await.unwrap();
        assert_eq!(rows.base.as_ref().map(RecordBatch::num_rows), Some(3));
        let skipped = ReadOptions {
            skip_base: true,
            ..ReadOptions::default()
        };
        let rows = read_table(&table, skipped).await.unwrap();
        assert!(rows.base.is_none() && rows.deltas.is_empty());
        let rows = read_table(&table, ReadOptions::at(first)).await.unwrap();
        assert_eq!(sorted(&state_of(&rows).unwrap()), want);
        let (summary, state) = read_state(&table, None).await.unwrap();
        assert_eq!(summary.rows_read, 3);
        assert_eq!(sorted(&state), lake.expected());
        // Base rows plus deltas folded in chunks give the same state.
        let mut lake = lake;
        for epoch in history() {
            lake.flush(epoch).await;
        }
        let table = lake.load().await;
        let (_, state) = read_state_in_chunks(&table, None, 1).await.unwrap();
        assert_eq!(sorted(&state), lake.expected());
    }
}
