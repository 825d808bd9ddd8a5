//! [`IcebergSource`]: an Iceberg table read as deltas — the lake as a pipeline source
//! (`type: iceberg` under `sources:`), for backfills out of the lake and for copying a lake
//! table continuously anywhere.
//!
//! **What is read.** By default one whole snapshot (the current one, or `to_snapshot`), then the
//! changes of every later snapshot (with `lakesync run` following, polled every poll interval;
//! with `--once`, up to the snapshot current when the read started). With `from_snapshot`, only
//! the changes after that snapshot. With `to_snapshot`, the read stops after that snapshot; both
//! together are the changes between two snapshots. What a snapshot changed is the data files it
//! added and removed against its parent ([`super::changes`]); a `replace` snapshot (compaction)
//! changes nothing.
//! - A **LakeSync delta table** (it has `_delta_id`) yields its rows as they are stored — deltas,
//!   and compaction's base rows as the `INSERT` deltas they look like (their per-column version
//!   keys do not travel). Its snapshots only append (or compact), so its changes are the deltas
//!   appended.
//! - **Any other table** yields one full-row `INSERT` delta per row
//!   ([`insert_batch`]), its row id from `id_column`, every delta of a snapshot with the same
//!   HLC: that snapshot's commit time. Rows of files a later snapshot removed become `DELETE`s,
//!   unless the same snapshot added a row with that id again (an overwrite: the new row is the
//!   `INSERT`). DeltaIds are hashes of the cells and the HLC, so a re-read yields the same deltas.
//!
//! **Position**: `{"snapshot": id, "rows": n}` while reading a whole snapshot, `{"changes": id,
//! "rows": n}` while reading a snapshot's changes — the input rows of that step consumed so far.
//! A resume re-reads the step's files in the same (path) order and skips `n` rows, so a backfill
//! killed mid-way continues with exactly the rows after them; memory is one scan batch (plus,
//! for a plain table's overwrite, the ids one snapshot added), not the table.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::cast;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask};
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use serde_json::json;

use super::changes::{lineage, live_files, read_files, snapshot_changes};
use super::iceberg_error;
use super::mapping::{self, LAKE_ROW_ID};
use crate::kernel::bulk::insert_batch;
use crate::kernel::delta::{DeltaOp, RowDelta};
use crate::kernel::delta_batch::{DELTA_ID, RESERVED, delta_schema, deltas_to_batch};
use crate::kernel::hlc::HlcTimestamp;
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// The client id deltas made from plain Iceberg rows carry.
pub const ICEBERG_CLIENT: &str = "lakesync:iceberg";

/// Which snapshots an [`IcebergSource`] reads (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotRange {
    /// Read only the changes after this snapshot, not a whole snapshot first.
    pub from: Option<i64>,
    /// Stop after this snapshot (a whole read reads this one).
    pub to: Option<i64>,
}

/// Reads one Iceberg table as deltas of one pipeline table (see the module docs).
pub struct IcebergSource {
    name: String,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    table: TableRef,
    id_column: Option<String>,
    range: SnapshotRange,
}

impl std::fmt::Debug for IcebergSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergSource")
            .field("name", &self.name)
            .field("table", &self.ident)
            .field("id_column", &self.id_column)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl IcebergSource {
    /// A source named `name` reading the Iceberg table `ident` into the pipeline table `table`;
    /// `id_column` names the row id column of a table that is not a LakeSync delta table. It
    /// reads a whole snapshot and then the changes of later ones; see [`Self::with_range`].
    pub fn new(
        name: impl Into<String>,
        catalog: Arc<dyn Catalog>,
        ident: TableIdent,
        table: TableRef,
        id_column: Option<String>,
    ) -> Self {
        Self {
            name: name.into(),
            catalog,
            ident,
            table,
            id_column,
            range: SnapshotRange::default(),
        }
    }

    /// Reads the snapshots of `range` instead.
    pub fn with_range(mut self, range: SnapshotRange) -> Self {
        self.range = range;
        self
    }
}

async fn load(catalog: &dyn Catalog, ident: &TableIdent) -> Result<Table> {
    catalog
        .load_table(ident)
        .await
        .map_err(|e| iceberg_error(format!("loading Iceberg table {ident}"), e))
}

/// One step of a read: a whole snapshot, or the changes one snapshot made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Whole(i64),
    Changes(i64),
}

impl Step {
    fn snapshot(self) -> i64 {
        match self {
            Self::Whole(id) | Self::Changes(id) => id,
        }
    }

    fn position(self, rows: u64) -> Position {
        Position(match self {
            Self::Whole(id) => json!({"snapshot": id, "rows": rows}),
            Self::Changes(id) => json!({"changes": id, "rows": rows}),
        })
    }
}

/// `(step, input rows consumed)` of a position this source wrote.
fn parse_position(position: &Position, name: &str) -> Result<(Step, u64)> {
    let get = |key: &str| position.0.get(key).and_then(serde_json::Value::as_i64);
    let rows = position.0.get("rows").and_then(serde_json::Value::as_u64);
    match (get("snapshot"), get("changes"), rows) {
        (Some(s), None, Some(r)) => Ok((Step::Whole(s), r)),
        (None, Some(s), Some(r)) => Ok((Step::Changes(s), r)),
        _ => Err(Error::invalid(
            "iceberg source",
            format!(
                "source {name:?}: {} is not a position of this source",
                position.0
            ),
        )),
    }
}

/// How a scan batch becomes a delta batch.
#[derive(Clone)]
enum Conversion {
    /// A LakeSync delta table: the stored deltas.
    Deltas(TableRef),
    /// Any other table: full-row inserts keyed by `id`, all at `hlc`.
    Rows {
        table: TableRef,
        id: String,
        hlc: HlcTimestamp,
    },
}

impl Conversion {
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        match self {
            Self::Deltas(table) => mapping::to_delta_batch(table, batch),
            Self::Rows { table, id, hlc } => {
                let ids = row_ids(batch, id)?;
                let schema = delta_schema(table);
                let mut columns = Vec::with_capacity(table.columns.len());
                for (k, column) in table.columns.iter().enumerate() {
                    let want = schema.field(RESERVED + k).data_type();
                    let array = match batch.column_by_name(&column.name) {
                        Some(array) => cast(array, want)?,
                        None => arrow::array::new_null_array(want, batch.num_rows()),
                    };
                    columns.push(array);
                }
                let hlcs = vec![*hlc; batch.num_rows()];
                insert_batch(table, ICEBERG_CLIENT, ids, &hlcs, columns)
            }
        }
    }

    /// How rows of `snapshot` of `table` become deltas of `target`.
    fn for_snapshot(source: &IcebergSource, table: &Table, snapshot: i64) -> Result<Self> {
        let snap = table.metadata().snapshot_by_id(snapshot).ok_or_else(|| {
            Error::invalid(
                "iceberg source",
                format!(
                    "source {:?}: table {} no longer has snapshot {snapshot} (expired?)",
                    source.name, source.ident
                ),
            )
        })?;
        let schema = table.metadata().current_schema();
        if schema.field_by_name(DELTA_ID).is_some() && schema.field_by_name(LAKE_ROW_ID).is_some() {
            return Ok(Self::Deltas(source.table.clone()));
        }
        let id = source.id_column.clone().ok_or_else(|| {
            Error::invalid(
                "iceberg source",
                format!(
                    "source {:?}: table {} is not a LakeSync delta table, so it needs an id_column",
                    source.name, source.ident
                ),
            )
        })?;
        let ms = u64::try_from(snap.timestamp_ms()).unwrap_or_default();
        Ok(Self::Rows {
            table: source.table.clone(),
            id,
            hlc: HlcTimestamp::new(ms, 0)?,
        })
    }

    fn table(&self) -> &TableRef {
        match self {
            Self::Deltas(table) | Self::Rows { table, .. } => table,
        }
    }
}

/// The row ids of a scan batch, as strings.
fn row_ids(batch: &RecordBatch, id: &str) -> Result<StringArray> {
    let ids = batch
        .column_by_name(id)
        .ok_or_else(|| Error::schema(format!("the Iceberg table has no id column {id:?}")))?;
    let ids = cast(ids, &arrow::datatypes::DataType::Utf8)?;
    let ids = ids
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| Error::internal("a Utf8 cast that is not a StringArray"))?;
    if ids.null_count() > 0 {
        return Err(Error::invalid(
            "iceberg source",
            format!("id column {id:?} has nulls; every row needs an id"),
        ));
    }
    Ok(ids)
}

/// Which files of a step are being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Added,
    Removed,
}

/// One step being read: its files as Arrow batches, turned into delta batches.
struct StepRead {
    step: Step,
    /// Input rows of the step already delivered before (a resume).
    skip: u64,
    /// Input rows of the step read so far.
    seen: u64,
    phase: Phase,
    stream: ArrowRecordBatchStream,
    /// The removed files, read after the added ones.
    removed: Vec<FileScanTask>,
    conversion: Conversion,
    /// For a plain table's changes: the ids the step added (a removed row with one of them is
    /// not deleted).
    added_ids: HashSet<String>,
}

impl StepRead {
    async fn open(source: &IcebergSource, table: &Table, step: Step, skip: u64) -> Result<Self> {
        let conversion = Conversion::for_snapshot(source, table, step.snapshot())?;
        let (added, removed) = match step {
            Step::Whole(id) => (live_files(table, id).await?, Vec::new()),
            Step::Changes(id) => {
                let changes = snapshot_changes(table, id).await?;
                if !changes.removed.is_empty() && matches!(conversion, Conversion::Deltas(_)) {
                    return Err(Error::invalid(
                        "iceberg source",
                        format!(
                            "source {:?}: snapshot {id} of the LakeSync delta table {} removed \
                             data files outside a compaction; deltas cannot be unwritten, so its \
                             changes cannot be read",
                            source.name, source.ident
                        ),
                    ));
                }
                (changes.added, changes.removed)
            }
        };
        Ok(Self {
            step,
            skip,
            seen: 0,
            phase: Phase::Added,
            stream: read_files(table, added)?,
            removed,
            conversion,
            added_ids: HashSet::new(),
        })
    }

    /// The next delta batch of the step, `None` at its end.
    async fn next(&mut self, table: &Table) -> Result<Option<SourceBatch>> {
        loop {
            let Some(batch) = self
                .stream
                .try_next()
                .await
                .map_err(|e| iceberg_error(format!("reading {}", table.identifier()), e))?
            else {
                if self.phase == Phase::Added && !self.removed.is_empty() {
                    self.phase = Phase::Removed;
                    self.stream = read_files(table, std::mem::take(&mut self.removed))?;
                    continue;
                }
                return Ok(None);
            };
            let start = self.seen;
            self.seen += batch.num_rows() as u64;
            let deltas = match (&self.conversion, self.phase) {
                (Conversion::Rows { id, .. }, Phase::Added)
                    if matches!(self.step, Step::Changes(_)) =>
                {
                    let ids = row_ids(&batch, id)?;
                    self.added_ids
                        .extend(ids.iter().flatten().map(str::to_string));
                    self.convert_unskipped(start, &batch)?
                }
                (_, Phase::Added) => self.convert_unskipped(start, &batch)?,
                (
                    Conversion::Rows {
                        table: target,
                        id,
                        hlc,
                    },
                    Phase::Removed,
                ) => {
                    let ids = row_ids(&batch, id)?;
                    let from = self.skip.saturating_sub(start) as usize;
                    let deletes: Vec<RowDelta> = ids
                        .iter()
                        .skip(from)
                        .flatten()
                        .filter(|id| !self.added_ids.contains(*id))
                        .map(|id| {
                            RowDelta::new(
                                DeltaOp::Delete,
                                target.table.clone(),
                                id,
                                ICEBERG_CLIENT,
                                Vec::new(),
                                *hlc,
                            )
                        })
                        .collect();
                    (!deletes.is_empty())
                        .then(|| deltas_to_batch(target, &deletes))
                        .transpose()?
                }
                (Conversion::Deltas(_), Phase::Removed) => None,
            };
            if let Some(deltas) = deltas {
                return Ok(Some(SourceBatch {
                    table: self.conversion.table().clone(),
                    batch: deltas,
                    position: self.step.position(self.seen),
                }));
            }
        }
    }

    /// The rows of `batch` (whose first row is input row `start`) past the skipped ones, as
    /// deltas; `None` when every row was delivered before.
    fn convert_unskipped(&self, start: u64, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        if self.seen <= self.skip {
            return Ok(None);
        }
        let from = self.skip.saturating_sub(start) as usize;
        let batch = batch.slice(from, batch.num_rows() - from);
        self.conversion.apply(&batch).map(Some)
    }
}

/// A read in progress: the step being read, then the snapshots whose changes come next.
struct Reader {
    source: IcebergSource,
    table: Table,
    mode: ReadMode,
    /// Stop after the batch at this position (a replay).
    until: Option<Position>,
    step: Option<StepRead>,
    /// The last snapshot read to its end (`None`: before the first snapshot).
    done: Option<i64>,
    queue: VecDeque<i64>,
    /// Looked for new snapshots at least once.
    polled: bool,
    finished: bool,
}

impl Reader {
    async fn next(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(step) = &mut self.step {
                match step.next(&self.table).await? {
                    Some(batch) => {
                        if self.until.as_ref() == Some(&batch.position) {
                            self.finished = true;
                        }
                        return Ok(Some(batch));
                    }
                    None => {
                        self.done = Some(step.step.snapshot());
                        self.step = None;
                        continue;
                    }
                }
            }
            if let Some(next) = self.queue.pop_front() {
                self.step =
                    Some(StepRead::open(&self.source, &self.table, Step::Changes(next), 0).await?);
                continue;
            }
            let Some(target) = self.target().await? else {
                return Ok(None);
            };
            if Some(target) == self.done {
                match (&self.mode, self.bounded()) {
                    (ReadMode::Follow { poll_interval }, false) => {
                        tokio::time::sleep(*poll_interval).await;
                        continue;
                    }
                    _ => return Ok(None),
                }
            }
            self.queue = lineage_after(&self.table, self.done, target)?.into();
        }
    }

    /// Whether the read ends at a fixed snapshot (`to_snapshot`, or a replay's end).
    fn bounded(&self) -> bool {
        self.source.range.to.is_some() || self.until.is_some()
    }

    /// The snapshot to read up to: the fixed end, else the current one (reloaded on every poll
    /// after the first when following). `None` while the table has no snapshot.
    async fn target(&mut self) -> Result<Option<i64>> {
        if let Some(until) = &self.until {
            return parse_position(until, &self.source.name).map(|(step, _)| Some(step.snapshot()));
        }
        if let Some(to) = self.source.range.to {
            return Ok(Some(to));
        }
        if self.polled && matches!(self.mode, ReadMode::Follow { .. }) {
            self.table = load(self.source.catalog.as_ref(), &self.source.ident).await?;
        }
        self.polled = true;
        Ok(self.table.metadata().current_snapshot_id())
    }
}

/// The snapshots after `done` (from the first one when `None`) up to `target`.
fn lineage_after(table: &Table, done: Option<i64>, target: i64) -> Result<Vec<i64>> {
    match done {
        Some(after) => lineage(table, after, target),
        None => {
            let mut chain = Vec::new();
            let mut at = Some(target);
            while let Some(id) = at {
                chain.push(id);
                at = table
                    .metadata()
                    .snapshot_by_id(id)
                    .and_then(|s| s.parent_snapshot_id());
            }
            chain.reverse();
            Ok(chain)
        }
    }
}

#[async_trait]
impl Source for IcebergSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        Ok(vec![self.table.clone()])
    }

    /// A whole snapshot's rows (its summary's `total-records`) less those already delivered;
    /// unknown for change reads.
    async fn estimated_rows(&mut self, resume: Option<&Position>) -> Result<Option<u64>> {
        let (snapshot, delivered) = match resume {
            Some(position) => match parse_position(position, &self.name)? {
                (Step::Whole(id), rows) => (Some(id), rows),
                (Step::Changes(_), _) => return Ok(None),
            },
            None if self.range.from.is_some() => return Ok(None),
            None => (self.range.to, 0),
        };
        let table = load(self.catalog.as_ref(), &self.ident).await?;
        let snapshot = match snapshot {
            Some(id) => table.metadata().snapshot_by_id(id).cloned(),
            None => table.metadata().current_snapshot().cloned(),
        };
        Ok(snapshot
            .and_then(|s| {
                s.summary()
                    .additional_properties
                    .get("total-records")
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .map(|total| total.saturating_sub(delivered)))
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        let table = load(self.catalog.as_ref(), &self.ident).await?;
        let until = match &mode {
            ReadMode::Replay { until } => Some(until.clone()),
            _ => None,
        };
        let mut reader = Reader {
            source: IcebergSource {
                name: self.name.clone(),
                catalog: self.catalog.clone(),
                ident: self.ident.clone(),
                table: self.table.clone(),
                id_column: self.id_column.clone(),
                range: self.range,
            },
            table,
            mode,
            until,
            step: None,
            done: self.range.from,
            queue: VecDeque::new(),
            polled: false,
            finished: false,
        };
        match &resume {
            Some(position) => {
                let (step, skip) = parse_position(position, &self.name)?;
                reader.step =
                    Some(StepRead::open(&reader.source, &reader.table, step, skip).await?);
            }
            None if self.range.from.is_none() => {
                let whole = self
                    .range
                    .to
                    .or_else(|| reader.table.metadata().current_snapshot_id());
                if let Some(id) = whole {
                    reader.step = Some(
                        StepRead::open(&reader.source, &reader.table, Step::Whole(id), 0).await?,
                    );
                }
            }
            None => {}
        }
        Ok(futures::stream::unfold(Some(reader), |state| async move {
            let mut reader = state?;
            match reader.next().await {
                Ok(Some(batch)) => Some((Ok(batch), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::array::{Int64Array, StringArray as Strings};
    use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    use iceberg::{NamespaceIdent, TableCreation};

    use super::*;
    use crate::adapters::iceberg::{IcebergCatalogConfig, IcebergSink, connect};
    use crate::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
    use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};
    use crate::runtime::api::Sink;
    use crate::synth::{Workload, tasks_schema};

    async fn read_all(source: &mut IcebergSource, resume: Option<Position>) -> Vec<SourceBatch> {
        source
            .open(resume, ReadMode::Once)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_delta_table_reads_back_every_delta_and_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
        let table: TableRef = Arc::new(tasks_schema());
        let deltas = Workload::new(200, 4, 3).deltas(3_000, 1_780_000_000_000);
        let mut sink = IcebergSink::connect(&config, "lakesync", "p", "lake")
            .await
            .unwrap();
        sink.prepare(std::slice::from_ref(&table)).await.unwrap();
        for (k, part) in deltas.chunks(1_000).enumerate() {
            sink.begin_epoch(k as u64 + 1, 0);
            sink.write(&table, deltas_to_batch(&table, part).unwrap())
                .await
                .unwrap();
            sink.commit(k as u64 + 1).await.unwrap();
        }
        let catalog = connect(&config).await.unwrap();
        let ident = TableIdent::from_strs(["lakesync", "tasks"]).unwrap();
        let mut source = IcebergSource::new("lake", catalog, ident, table.clone(), None);
        let batches = read_all(&mut source, None).await;
        let ids = |batches: &[SourceBatch]| -> Vec<[u8; 32]> {
            batches
                .iter()
                .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
                .map(|d| d.delta_id.0)
                .collect()
        };
        let all = ids(&batches);
        let want: BTreeSet<[u8; 32]> = deltas.iter().map(|d| d.delta_id.0).collect();
        assert_eq!(all.len(), 3_000);
        assert_eq!(all.iter().copied().collect::<BTreeSet<_>>(), want);
        // Resuming after the first batch yields exactly the rest, in the same order.
        assert!(batches.len() > 1);
        let rest = read_all(&mut source, Some(batches[0].position.clone())).await;
        assert_eq!(ids(&rest), all[batches[0].batch.num_rows()..].to_vec());
    }

    /// Writes `epochs` of 500 deltas each to a fresh lake; returns the deltas per epoch.
    async fn lake_in_epochs(
        config: &IcebergCatalogConfig,
        sink: &mut IcebergSink,
        table: &TableRef,
        epochs: std::ops::RangeInclusive<u64>,
    ) -> Vec<Vec<crate::kernel::delta::RowDelta>> {
        let mut written = Vec::new();
        for epoch in epochs {
            let deltas =
                Workload::new(100, 4, epoch).deltas(500, 1_780_000_000_000 + epoch * 60_000);
            sink.begin_epoch(epoch, 0);
            sink.write(table, deltas_to_batch(table, &deltas).unwrap())
                .await
                .unwrap();
            sink.commit(epoch).await.unwrap();
            written.push(deltas);
        }
        let _ = config;
        written
    }

    fn delta_ids(batches: &[SourceBatch]) -> BTreeSet<[u8; 32]> {
        batches
            .iter()
            .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
            .map(|d| d.delta_id.0)
            .collect()
    }

    fn ids_of(deltas: &[Vec<crate::kernel::delta::RowDelta>]) -> BTreeSet<[u8; 32]> {
        deltas.iter().flatten().map(|d| d.delta_id.0).collect()
    }

    async fn snapshots(catalog: &Arc<dyn Catalog>, ident: &TableIdent) -> Vec<i64> {
        let table = catalog.load_table(ident).await.unwrap();
        let mut ids: Vec<_> = table
            .metadata()
            .snapshots()
            .map(|s| (s.timestamp_ms(), s.snapshot_id()))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    #[tokio::test]
    async fn changes_between_snapshots_are_the_deltas_appended_and_compaction_adds_none() {
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
        let table: TableRef = Arc::new(tasks_schema());
        let mut sink = IcebergSink::connect(&config, "lakesync", "p", "lake")
            .await
            .unwrap();
        sink.prepare(std::slice::from_ref(&table)).await.unwrap();
        let written = lake_in_epochs(&config, &mut sink, &table, 1..=3).await;
        let catalog = connect(&config).await.unwrap();
        let ident = TableIdent::from_strs(["lakesync", "tasks"]).unwrap();
        let snaps = snapshots(&catalog, &ident).await;
        assert_eq!(snaps.len(), 3);
        let source = |range| {
            IcebergSource::new("lake", catalog.clone(), ident.clone(), table.clone(), None)
                .with_range(range)
        };

        // Between two snapshots: exactly the deltas epoch 2 appended.
        let mut between = source(SnapshotRange {
            from: Some(snaps[0]),
            to: Some(snaps[1]),
        });
        assert_eq!(
            delta_ids(&read_all(&mut between, None).await),
            ids_of(&written[1..2])
        );
        // From a snapshot on: epochs 2 and 3.
        let mut after = source(SnapshotRange {
            from: Some(snaps[0]),
            to: None,
        });
        assert_eq!(
            delta_ids(&read_all(&mut after, None).await),
            ids_of(&written[1..3])
        );

        // A whole read, then (resuming from its last position) only what came later: a
        // compaction adds nothing, epoch 4 adds its deltas.
        let mut whole = source(SnapshotRange::default());
        let first = read_all(&mut whole, None).await;
        assert_eq!(delta_ids(&first), ids_of(&written));
        let end = first.last().unwrap().position.clone();
        crate::adapters::iceberg::compact::compact_table(&catalog, &ident, &Default::default())
            .await
            .unwrap();
        assert!(read_all(&mut whole, Some(end.clone())).await.is_empty());
        let later = lake_in_epochs(&config, &mut sink, &table, 4..=4).await;
        let next = read_all(&mut whole, Some(end)).await;
        assert_eq!(delta_ids(&next), ids_of(&later));
        assert!(next.iter().all(|b| b.position.0.get("changes").is_some()));

        // A snapshot that is not an ancestor is a clear error, not a silent gap.
        let mut lost = source(SnapshotRange {
            from: Some(42),
            to: None,
        });
        let err = lost
            .open(None, ReadMode::Once)
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("not an ancestor"), "{err}");
    }

    #[tokio::test]
    async fn following_a_lake_table_delivers_new_snapshots_as_they_commit() {
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
        let table: TableRef = Arc::new(tasks_schema());
        let mut sink = IcebergSink::connect(&config, "lakesync", "p", "lake")
            .await
            .unwrap();
        sink.prepare(std::slice::from_ref(&table)).await.unwrap();
        let first = lake_in_epochs(&config, &mut sink, &table, 1..=1).await;
        let catalog = connect(&config).await.unwrap();
        let ident = TableIdent::from_strs(["lakesync", "tasks"]).unwrap();
        let mut source = IcebergSource::new("lake", catalog, ident, table.clone(), None);
        let mut stream = source
            .open(
                None,
                ReadMode::Follow {
                    poll_interval: std::time::Duration::from_millis(20),
                },
            )
            .await
            .unwrap();
        let mut got = BTreeSet::new();
        while got.len() < 500 {
            got.extend(delta_ids(&[stream.try_next().await.unwrap().unwrap()]));
        }
        assert_eq!(got, ids_of(&first));
        let second = lake_in_epochs(&config, &mut sink, &table, 2..=2).await;
        let mut more = BTreeSet::new();
        while more.len() < 500 {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(20), stream.try_next())
                .await
                .expect("the new snapshot arrives")
                .unwrap()
                .unwrap();
            more.extend(delta_ids(&[batch]));
        }
        assert_eq!(more, ids_of(&second));
    }

    #[tokio::test]
    async fn any_iceberg_table_reads_as_full_row_inserts_keyed_by_its_id_column() {
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
        let catalog = connect(&config).await.unwrap();
        let ns = NamespaceIdent::new("finance".into());
        catalog
            .create_namespace(&ns, Default::default())
            .await
            .unwrap();
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(2, "title", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "n", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        let lake = catalog
            .create_table(
                &ns,
                TableCreation::builder()
                    .name("invoices".into())
                    .schema(schema.clone())
                    .build(),
            )
            .await
            .unwrap();
        let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).unwrap());
        let batch = RecordBatch::try_new(
            arrow.clone(),
            vec![
                Arc::new(Strings::from(vec!["inv-1", "inv-2", "inv-3"])),
                Arc::new(Strings::from(vec![Some("a"), None, Some("it's")])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
            ],
        )
        .unwrap();
        let files = crate::adapters::iceberg::write::write_data_files(
            &lake,
            Arc::new(schema),
            &arrow,
            &[batch],
            "test".into(),
            None,
        )
        .await
        .unwrap();
        let tx = Transaction::new(&lake);
        let tx = tx.fast_append().add_data_files(files).apply(tx).unwrap();
        tx.commit(catalog.as_ref()).await.unwrap();

        let table: TableRef = Arc::new(TableSchema::new(
            "invoices",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("n", ColumnType::Integer),
            ],
        ));
        let ident = TableIdent::new(ns, "invoices".into());
        let mut without_id =
            IcebergSource::new("inv", catalog.clone(), ident.clone(), table.clone(), None);
        let err = without_id.open(None, ReadMode::Once).await.err().unwrap();
        assert!(err.to_string().contains("id_column"), "{err}");
        let mut source = IcebergSource::new("inv", catalog, ident, table, Some("id".into()));
        let first = read_all(&mut source, None).await;
        let deltas: Vec<_> = first
            .iter()
            .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
            .collect();
        let got: Vec<(String, String)> = deltas
            .iter()
            .map(|d| (d.row_id.clone(), serde_json::to_string(&d.columns).unwrap()))
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, "inv-1");
        assert!(got[2].1.contains("it's"), "{got:?}");
        assert!(
            deltas
                .iter()
                .all(|d| d.op == crate::kernel::DeltaOp::Insert)
        );
        // A second read of the same snapshot yields the very same deltas (ids hash the cells).
        let again = read_all(&mut source, None).await;
        let again: Vec<_> = again
            .iter()
            .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
            .collect();
        assert_eq!(again, deltas);
    }
}
