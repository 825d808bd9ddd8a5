//! [`IcebergSink`]: deltas into Iceberg tables, one real snapshot per table per epoch.
//!
//! **Tables.** Each LakeSync table is an Iceberg table `<namespace>.<table>` holding deltas in
//! the mapping of [`super::mapping`], partitioned by `day(_hlc_time)` (the day of the HLC's
//! wall-clock time; tables created unpartitioned by earlier versions stay so). [`Sink::prepare`] creates the namespace
//! and missing tables, and evolves an existing table add-only (iceberg-rust 0.10.1's
//! `Transaction::update_schema`) when the pipeline's schema has new columns. A lake table that
//! is *ahead* of the pipeline's schema (another writer added columns) is used as it is: the
//! columns the batches lack are written as nulls.
//!
//! **Writes.** Deltas are written with a null `_versions` (that column is for compaction's base
//! rows, see [`super::compact`]). [`Sink::write`] converts each delta batch to the table's Iceberg Arrow form at
//! once (so a bad batch fails where it was written) and buffers it; an epoch is held in memory
//! until its commit.
//!
//! **Commits: exactly once by epochs** (see [`crate::runtime::api`]). [`Sink::commit`]`(e)`, per
//! table with buffered rows, in table-name order:
//! 1. reloads the table and reads its *epoch mark* for this (pipeline, sink); if the mark is at
//!    or past `e`, the epoch is a replay after a crash and the buffer is dropped;
//! 2. writes the buffer as Parquet data files through iceberg-rust's writer stack (shared with
//!    compaction: see `write.rs`; zstd, file names unique per commit, on a partitioned table one
//!    writer per day, so every data file holds one day and carries its partition value);
//! 3. commits ONE `fast_append` snapshot whose summary carries `lakesync.pipeline`,
//!    `lakesync.sink` and `lakesync.epoch`, and, in the same metadata swap, the table property
//!    `lakesync.epoch.<pipeline>.<sink>` = `e`. The snapshot's manifest list references a new
//!    manifest that references the data files, so any Iceberg reader sees the rows.
//!
//! The epoch mark of a table is the newest `lakesync.epoch` found by walking the current
//! snapshot and its parents for this pipeline and sink, or the table property if larger. The
//! property is what keeps the mark when old snapshots are expired; the summary is what tools
//! show. [`Sink::committed_epoch`] is the newest mark over the prepared tables (the runtime numbers
//! new epochs above it); each table drops replays by its own mark.
//!
//! A commit that loses a race with another writer (`CatalogCommitConflicts`) is retried by
//! iceberg-rust (its table's `commit.retry.*` properties) and then, up to
//! [`MAX_COMMIT_ATTEMPTS`] times, by this sink, with backoff and a reloaded table. Every attempt
//! re-checks the epoch mark on the freshly loaded table, so a concurrent commit of the same
//! epoch by the same pipeline and sink turns the attempt into a replay instead of a duplicate.
//! Data files of a commit that does not happen are left in place as orphans (deleting them is
//! unsafe when a failure is ambiguous; Iceberg's orphan-file clean-up removes them). Other
//! failures are [`Error::External`] from `iceberg`, retryable when the cause may pass (I/O, a
//! busy catalogue, a conflict). When a commit fails part-way through the tables, the tables
//! that committed keep their mark and drop the epoch on replay; the others keep their buffers,
//! so `commit(e)` may simply be called again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use iceberg::spec::{DataFile, TableMetadata};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{
    Catalog, ErrorKind as IcebergErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation,
    TableIdent,
};

use super::catalog::{IcebergCatalogConfig, connect};
use super::iceberg_error;
use super::mapping;
use crate::kernel::schema::{TableSchema, validate_identifier};
use crate::runtime::api::{CommitStats, Sink, TableRef};
use crate::{Error, Result};

/// Snapshot summary key naming the pipeline that committed the snapshot.
pub const PIPELINE_PROPERTY: &str = "lakesync.pipeline";
/// Snapshot summary key naming the sink (within its pipeline) that committed the snapshot.
pub const SINK_PROPERTY: &str = "lakesync.sink";
/// Snapshot summary key holding the epoch the snapshot commits.
pub const EPOCH_PROPERTY: &str = "lakesync.epoch";
/// How many times the sink itself tries a commit that keeps conflicting with other writers
/// (each try is retried by iceberg-rust first).
pub const MAX_COMMIT_ATTEMPTS: u32 = 4;
/// Backoff before the sink's second commit attempt; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The table property that keeps the last epoch `pipeline`'s sink `sink` committed.
pub fn epoch_property(pipeline: &str, sink: &str) -> String {
    format!("{EPOCH_PROPERTY}.{pipeline}.{sink}")
}

/// The last epoch `pipeline`'s sink `sink` committed to a table, from its metadata: the newest
/// `lakesync.epoch` in the summaries of the current snapshot and its ancestors, or the
/// [`epoch_property`] when larger. `None` when the table has no mark for them.
///
/// A mark that is not a number is an [`Error::Invalid`] naming the table's snapshot.
pub fn epoch_mark(metadata: &TableMetadata, pipeline: &str, sink: &str) -> Result<Option<u64>> {
    let parse = |text: &str, at: &str| {
        text.parse::<u64>().map_err(|_| {
            Error::invalid(
                "iceberg epoch mark",
                format!(
                    "{at} of table {} has epoch {text:?} for pipeline {pipeline:?} sink {sink:?}, \
                     which is not a number",
                    metadata.location()
                ),
            )
        })
    };
    let mut mark = metadata
        .properties()
        .get(&epoch_property(pipeline, sink))
        .map(|v| parse(v, "the table property"))
        .transpose()?;
    let mut next = metadata.current_snapshot();
    // A parent chain is at most as long as the table has snapshots; the bound guards against a
    // malformed cycle.
    let mut budget = metadata.snapshots().len();
    while let Some(snapshot) = next {
        let summary = &snapshot.summary().additional_properties;
        if summary.get(PIPELINE_PROPERTY).map(String::as_str) == Some(pipeline)
            && summary.get(SINK_PROPERTY).map(String::as_str) == Some(sink)
            && let Some(epoch) = summary.get(EPOCH_PROPERTY)
        {
            let epoch = parse(epoch, &format!("snapshot {}", snapshot.snapshot_id()))?;
            mark = Some(mark.map_or(epoch, |m| m.max(epoch)));
            break;
        }
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id));
    }
    Ok(mark)
}

/// A sink that appends deltas to Iceberg tables (see the module docs for the semantics).
pub struct IcebergSink {
    sink: String,
    pipeline: String,
    catalog: Arc<dyn Catalog>,
    namespace: NamespaceIdent,
    tables: BTreeMap<String, LakeTable>,
}

/// One prepared table and its buffer for the current epoch.
struct LakeTable {
    ident: TableIdent,
    /// The Iceberg schema the buffered batches have (the table's current one when prepared).
    iceberg_schema: iceberg::spec::SchemaRef,
    /// Its Arrow form, with field ids.
    arrow: SchemaRef,
    buffer: Vec<RecordBatch>,
    rows: u64,
}

impl std::fmt::Debug for IcebergSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergSink")
            .field("sink", &self.sink)
            .field("pipeline", &self.pipeline)
            .field("namespace", &self.namespace)
            .field(
                "buffered_rows",
                &self
                    .tables
                    .iter()
                    .map(|(name, t)| (name.as_str(), t.rows))
                    .collect::<BTreeMap<_, _>>(),
            )
            .finish_non_exhaustive()
    }
}

impl IcebergSink {
    /// Connects to `catalog` for the sink `sink_name` of `pipeline`, writing tables into the
    /// namespace `namespace` (one level, an identifier such as `lakesync`).
    pub async fn connect(
        catalog: &IcebergCatalogConfig,
        namespace: &str,
        pipeline: &str,
        sink_name: &str,
    ) -> Result<Self> {
        let catalog = connect(catalog).await?;
        Self::with_catalog(catalog, namespace, pipeline, sink_name)
    }

    /// Like [`IcebergSink::connect`], over an already connected catalogue.
    pub fn with_catalog(
        catalog: Arc<dyn Catalog>,
        namespace: &str,
        pipeline: &str,
        sink_name: &str,
    ) -> Result<Self> {
        validate_identifier(namespace)
            .map_err(|e| Error::invalid("iceberg sink", format!("namespace {namespace:?}: {e}")))?;
        for (what, name) in [("pipeline", pipeline), ("sink", sink_name)] {
            if name.trim().is_empty() || name.contains(char::is_control) {
                return Err(Error::invalid(
                    "iceberg sink",
                    format!("the {what} name {name:?} is empty or has control characters"),
                ));
            }
        }
        Ok(Self {
            sink: sink_name.to_string(),
            pipeline: pipeline.to_string(),
            catalog,
            namespace: NamespaceIdent::new(namespace.to_string()),
            tables: BTreeMap::new(),
        })
    }

    /// The catalogue the sink writes to.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The Iceberg identifier of `table`'s lake table.
    pub fn table_ident(&self, table: &str) -> TableIdent {
        TableIdent::new(self.namespace.clone(), table.to_string())
    }

    async fn ensure_namespace(&self) -> Result<()> {
        let exists = self
            .catalog
            .namespace_exists(&self.namespace)
            .await
            .map_err(|e| iceberg_error(format!("checking namespace {}", self.ns()), e))?;
        if exists {
            return Ok(());
        }
        match self
            .catalog
            .create_namespace(&self.namespace, HashMap::new())
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %self.ns(), "created Iceberg namespace");
                Ok(())
            }
            Err(e) if e.kind() == IcebergErrorKind::NamespaceAlreadyExists => Ok(()),
            Err(e) => Err(iceberg_error(
                format!("creating namespace {}", self.ns()),
                e,
            )),
        }
    }

    fn ns(&self) -> String {
        self.namespace.join(".")
    }

    async fn load(&self, ident: &TableIdent) -> Result<Table> {
        self.catalog
            .load_table(ident)
            .await
            .map_err(|e| iceberg_error(format!("loading table {ident}"), e))
    }

    /// Creates `schema`'s table, or loads it and evolves it add-only to `schema`.
    async fn create_or_evolve(&self, schema: &TableSchema, ident: &TableIdent) -> Result<Table> {
        let exists = self
            .catalog
            .table_exists(ident)
            .await
            .map_err(|e| iceberg_error(format!("checking table {ident}"), e))?;
        if !exists {
            let iceberg_schema = mapping::iceberg_schema(schema)?;
            let creation = TableCreation::builder()
                .name(schema.table.clone())
                .partition_spec(mapping::partition_spec(&iceberg_schema)?)
                .schema(iceberg_schema)
                .properties([
                    (
                        "write.parquet.compression-codec".to_string(),
                        "zstd".to_string(),
                    ),
                    ("lakesync.contract".to_string(), "deltas-v1".to_string()),
                ])
                .build();
            match self.catalog.create_table(&self.namespace, creation).await {
                Ok(table) => {
                    tracing::info!(table = %ident, columns = schema.columns.len(), "created Iceberg table");
                    return Ok(table);
                }
                // Another writer created it first: evolve it like any existing table.
                Err(e) if e.kind() == IcebergErrorKind::TableAlreadyExists => {}
                Err(e) => return Err(iceberg_error(format!("creating table {ident}"), e)),
            }
        }
        let table = self.load(ident).await?;
        let existing = mapping::table_schema_of(&schema.table, table.metadata().current_schema())?;
        let added = match existing.evolve_to(schema) {
            Ok(added) => added,
            // The lake table is ahead of this schema: batches leave the newer columns null.
            Err(_) if schema.evolve_to(&existing).is_ok() => return Ok(table),
            Err(e) => {
                let why = match e {
                    Error::Schema(message) => message,
                    other => other.to_string(),
                };
                return Err(Error::schema(format!("lake table {ident}: {why}")));
            }
        };
        if added.is_empty() {
            return Ok(table);
        }
        let names: Vec<&str> = added.iter().map(|c| c.name.as_str()).collect();
        let tx = Transaction::new(&table);
        let mut action = tx.update_schema();
        for column in added {
            action = action.add_column(mapping::add_column(column));
        }
        let table = action
            .apply(tx)
            .map_err(|e| iceberg_error(format!("evolving table {ident}"), e))?
            .commit(&*self.catalog)
            .await
            .map_err(|e| iceberg_error(format!("adding columns {names:?} to table {ident}"), e))?;
        tracing::info!(table = %ident, added = ?names, "evolved Iceberg table schema");
        Ok(table)
    }

    /// Commits one table's buffer as epoch `epoch`; `None` when the epoch was a replay.
    async fn commit_table(&self, state: &LakeTable, epoch: u64) -> Result<Option<CommitStats>> {
        let ident = &state.ident;
        let mut table = self.load(ident).await?;
        if let Some(mark) = epoch_mark(table.metadata(), &self.pipeline, &self.sink)?
            && mark >= epoch
        {
            tracing::info!(table = %ident, epoch, mark, rows = state.rows, "epoch already committed; dropping the replayed writes");
            return Ok(None);
        }

        let files = self
            .write_data_files(&table, state, epoch)
            .await
            .map_err(|e| iceberg_error(format!("writing data files of table {ident}"), e))?;
        let stats = CommitStats {
            rows: files.iter().map(DataFile::record_count).sum(),
            bytes: files.iter().map(DataFile::file_size_in_bytes).sum(),
        };
        let summary = HashMap::from([
            (PIPELINE_PROPERTY.to_string(), self.pipeline.clone()),
            (SINK_PROPERTY.to_string(), self.sink.clone()),
            (EPOCH_PROPERTY.to_string(), epoch.to_string()),
        ]);

        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_COMMIT_ATTEMPTS {
            let guard = EpochGuard {
                inner: self.catalog.clone(),
                pipeline: self.pipeline.clone(),
                sink: self.sink.clone(),
                epoch,
                tripped: AtomicBool::new(false),
            };
            let tx = Transaction::new(&table);
            // File names are unique per commit, so the duplicate check (which reads every
            // manifest of the table) is skipped.
            let tx = tx
                .fast_append()
                .with_check_duplicate(false)
                .set_snapshot_properties(summary.clone())
                .add_data_files(files.clone())
                .apply(tx)
                .and_then(|tx| {
                    tx.update_table_properties()
                        .set(
                            epoch_property(&self.pipeline, &self.sink),
                            epoch.to_string(),
                        )
                        .apply(tx)
                })
                .map_err(|e| iceberg_error(format!("preparing the commit of table {ident}"), e))?;
            match tx.commit(&guard).await {
                Ok(committed) => {
                    let snapshot = committed.metadata().current_snapshot_id();
                    tracing::info!(table = %ident, epoch, rows = stats.rows, bytes = stats.bytes, files = files.len(), snapshot, "committed Iceberg snapshot");
                    return Ok(Some(stats));
                }
                Err(_) if guard.tripped.load(Ordering::SeqCst) => {
                    tracing::warn!(table = %ident, epoch, "epoch was committed concurrently by the same pipeline and sink; dropping this commit (its data files are orphans)");
                    return Ok(None);
                }
                Err(e)
                    if e.kind() == IcebergErrorKind::CatalogCommitConflicts
                        && attempt < MAX_COMMIT_ATTEMPTS =>
                {
                    tracing::warn!(table = %ident, epoch, attempt, error = %e, "Iceberg commit conflicted; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    table = self.load(ident).await?;
                }
                Err(e) => {
                    return Err(iceberg_error(
                        format!("committing epoch {epoch} to table {ident} (attempt {attempt})"),
                        e,
                    ));
                }
            }
        }
        Err(Error::internal("commit loop ended without a result"))
    }

    async fn write_data_files(
        &self,
        table: &Table,
        state: &LakeTable,
        epoch: u64,
    ) -> iceberg::Result<Vec<DataFile>> {
        super::write::write_data_files(
            table,
            state.iceberg_schema.clone(),
            &state.arrow,
            &state.buffer,
            file_prefix(&self.pipeline, &self.sink, epoch),
            None,
        )
        .await
    }
}

/// A data-file name prefix unique to this commit: epoch, pipeline and sink for people reading
/// a directory listing, then the time, the process and a counter.
fn file_prefix(pipeline: &str, sink: &str, epoch: u64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect()
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "e{epoch:010}-{}-{}-{nanos:x}-{:x}-{}",
        clean(pipeline),
        clean(sink),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[async_trait]
impl Sink for IcebergSink {
    fn name(&self) -> &str {
        &self.sink
    }

    async fn prepare(&mut self, tables: &[TableRef]) -> Result<()> {
        self.ensure_namespace().await?;
        for schema in tables {
            schema.validate()?;
            mapping::check_lake_names(schema)?;
            let ident = self.table_ident(&schema.table);
            let table = self.create_or_evolve(schema, &ident).await?;
            let iceberg_schema = table.metadata().current_schema().clone();
            let arrow = mapping::arrow_schema(&iceberg_schema)?;
            match self.tables.get_mut(&schema.table) {
                Some(state) => {
                    // Re-prepared mid-epoch (the schema evolved): bring what is buffered along.
                    state.buffer = state
                        .buffer
                        .iter()
                        .map(|b| mapping::align_iceberg_batch(b, &arrow))
                        .collect::<Result<_>>()?;
                    state.iceberg_schema = iceberg_schema;
                    state.arrow = arrow;
                }
                None => {
                    self.tables.insert(
                        schema.table.clone(),
                        LakeTable {
                            ident,
                            iceberg_schema,
                            arrow,
                            buffer: Vec::new(),
                            rows: 0,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn committed_epoch(&mut self) -> Result<Option<u64>> {
        let mut newest: Option<u64> = None;
        for state in self.tables.values() {
            let table = self.load(&state.ident).await?;
            newest = newest.max(epoch_mark(table.metadata(), &self.pipeline, &self.sink)?);
        }
        Ok(newest)
    }

    async fn write(&mut self, table: &TableRef, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let state = self.tables.get_mut(&table.table).ok_or_else(|| {
            Error::invalid(
                "iceberg sink",
                format!(
                    "sink {:?} got a batch for table {:?}, which it was not prepared for",
                    self.sink, table.table
                ),
            )
        })?;
        let converted = mapping::to_iceberg_batch(&batch, &state.arrow)?;
        state.rows += batch.num_rows() as u64;
        state.buffer.push(converted);
        Ok(())
    }

    async fn commit(&mut self, epoch: u64) -> Result<CommitStats> {
        let mut total = CommitStats::default();
        let names: Vec<String> = self
            .tables
            .iter()
            .filter(|(_, t)| t.rows > 0)
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            let Some(state) = self.tables.get(&name) else {
                continue;
            };
            if let Some(stats) = self.commit_table(state, epoch).await? {
                total.rows += stats.rows;
                total.bytes += stats.bytes;
            }
            // Committed or a replay: either way the buffer is done with. On an error above
            // the buffers of this and later tables are kept for a retried commit.
            if let Some(state) = self.tables.get_mut(&name) {
                state.buffer.clear();
                state.rows = 0;
            }
        }
        Ok(total)
    }
}

/// A catalogue wrapper for one commit attempt: every time the transaction (re)loads the table
/// it checks the epoch mark, and refuses to go on if the epoch is already committed.
#[derive(Debug)]
struct EpochGuard {
    inner: Arc<dyn Catalog>,
    pipeline: String,
    sink: String,
    epoch: u64,
    tripped: AtomicBool,
}

#[async_trait]
impl Catalog for EpochGuard {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, ident: &TableIdent) -> iceberg::Result<Table> {
        let table = self.inner.load_table(ident).await?;
        let mark = epoch_mark(table.metadata(), &self.pipeline, &self.sink)
            .map_err(|e| iceberg::Error::new(IcebergErrorKind::DataInvalid, e.to_string()))?;
        if let Some(mark) = mark
            && mark >= self.epoch
        {
            self.tripped.store(true, Ordering::SeqCst);
            return Err(iceberg::Error::new(
                IcebergErrorKind::PreconditionFailed,
                format!(
                    "epoch {} of pipeline {:?} sink {:?} is already committed to table {ident} \
                     (mark {mark})",
                    self.epoch, self.pipeline, self.sink
                ),
            ));
        }
        Ok(table)
    }

    async fn drop_table(&self, ident: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(ident).await
    }

    async fn purge_table(&self, ident: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(ident).await
    }

    async fn table_exists(&self, ident: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(ident).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(
        &self,
        ident: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(ident, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        crate::fault::pause_point("iceberg.sink.before-swap").await;
        self.inner.update_table(commit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_prefixes_are_unique_and_path_safe() {
        let a = file_prefix("my pipe/line", "lake", 3);
        let b = file_prefix("my pipe/line", "lake", 3);
        assert_ne!(a, b);
        assert!(a.starts_with("e0000000003-my_pipe_line-lake-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let catalog = rt
            .block_on(connect(&IcebergCatalogConfig::sql(
                dir.path().join("c.db"),
                dir.path().join("wh"),
            )))
            .unwrap();
        let err = IcebergSink::with_catalog(catalog.clone(), "bad.ns", "p", "s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("namespace \"bad.ns\""), "{err}");
        let err = IcebergSink::with_catalog(catalog, "lakesync", "", "s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pipeline name"), "{err}");
    }
}
