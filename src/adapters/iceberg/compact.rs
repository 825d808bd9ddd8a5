//! Compaction: a lake table's delta files replaced by base rows, in one `replace` snapshot.
//!
//! [`compact_table`] reads a snapshot `S` of the table whole (every live data file, through
//! [`super::read::read_state`]), merges it to row state, writes the state as *base rows*
//! (`lakesync_operators::compact`; one row per row id, `_versions` holding its version keys, see
//! [`super::mapping`]) with the sink's writer stack (Parquet, zstd, one writer per day of the
//! base row's `_hlc_time`, rolling at [`CompactionOptions::target_file_size`]), and commits ONE
//! snapshot with operation `replace` that removes exactly `S`'s data files and adds the new
//! ones. Its summary carries `lakesync.operation=compact`,
//! `lakesync.compacted-through-hlc=<the highest _hlc read>` and the usual added/deleted/total
//! counts. A reader that ignores `_versions` then sees one row per live row with its
//! last-writer-wins values (`_op <> 3`); LakeSync's reader rebuilds the exact state. A table
//! made before compaction existed first gains the `_versions` column (add-only evolution).
//!
//! **The replace commit.** iceberg-rust 0.10.1 has no rewrite action, so [`ReplaceDataFiles`] is
//! one, implemented as an iceberg `TransactionAction` (made public by LakeSync's vendored patch,
//! `vendor/iceberg-0.10.1/LAKESYNC-PATCH.md`). Against the table's current snapshot `C` (`S`, or a
//! later one) it:
//! 1. reads `C`'s manifest list; a data manifest that holds a removed file alive is *rewritten*
//!    (same schema and partition spec): removed files become `DELETED` entries (their data and
//!    file sequence numbers kept), the others `EXISTING`, and entries already deleted are
//!    dropped; any other manifest (delta files appended after `S`, delete manifests) is carried
//!    over untouched, and data manifests with no live file are dropped, as iceberg's own appends
//!    do;
//! 2. writes a new manifest with the base files as `ADDED`;
//! 3. writes the manifest list (parent `C`, sequence number `C`'s table's next one) and a
//!    `Snapshot` whose summary totals are `C`'s totals plus the added and minus the removed;
//! 4. returns the `AddSnapshot` + `SetSnapshotRef(main)` updates with the requirements
//!    `UuidMatch` and `RefSnapshotIdMatch(main, C)`.
//!
//! **Concurrency.** The sink keeps appending while compaction runs. iceberg's `Transaction`
//! reloads the table before it commits and again after a conflicting commit, and runs the
//! action against the fresh table each time, so a flush that lands between our read and our
//! commit makes the action rebuild its manifest list on the new current snapshot: the flush's
//! manifest is carried over, its deltas stay live, and because they were not read they are not
//! folded into the base rows either. Each attempt first checks that every removed file is still
//! live in the current snapshot; if one is not (another compaction, or an expiry of `S`'s files
//! by another tool, won), the compaction gives up cleanly ([`CompactionOutcome::Superseded`]) and
//! its written files become orphans for [`super::maintenance`]. Conflicts are retried by iceberg
//! (the table's `commit.retry.*` properties) and then up to [`MAX_COMMIT_ATTEMPTS`] times here,
//! with backoff.
//!
//! **Crashes.** Nothing is visible until the catalogue swaps the metadata pointer: a compaction
//! killed before that leaves the table exactly as it was, plus orphan files; one killed after it
//! is complete. Rerunning compaction is always safe.
//!
//! **Epoch marks.** A replace snapshot carries no `lakesync.pipeline`/`lakesync.epoch`, so
//! [`super::sink::epoch_mark`] walks past it to the sink's own snapshots, and the table
//! property `lakesync.epoch.<pipeline>.<sink>` (which the replace commit leaves alone) keeps the
//! mark once those are expired.

use super::iceberg_error;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures::future::BoxFuture;
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, FormatVersion, MAIN_BRANCH, ManifestContentType,
    ManifestFile, ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot,
    SnapshotReference, SnapshotRetention, SnapshotSummaryCollector, Summary, TableMetadata,
};
use iceberg::table::Table;
use iceberg::transaction::{ActionCommit, ApplyTransactionAction, Transaction, TransactionAction};
use iceberg::{Catalog, ErrorKind as IcebergErrorKind, TableIdent, TableRequirement, TableUpdate};
use uuid::Uuid;

use super::mapping;
use super::read::read_state;
use crate::kernel::compact::state_to_base;
use crate::{Error, Result};

/// Snapshot summary key naming the LakeSync operation that made the snapshot.
pub const OPERATION_PROPERTY: &str = "lakesync.operation";
/// Snapshot summary key: every delta with an `_hlc` up to this is folded into base rows.
pub const COMPACTED_THROUGH_PROPERTY: &str = "lakesync.compacted-through-hlc";
/// How many times compaction itself tries a commit that keeps conflicting (each try is retried
/// by iceberg first).
pub const MAX_COMMIT_ATTEMPTS: u32 = 4;
/// The default target size of a base-row data file.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 * 1024 * 1024;
/// The crash-test pause point ([`crate::fault`]) after compaction wrote its base files and
/// before it commits.
pub const PAUSE_BEFORE_COMMIT: &str = "iceberg.compact.before-commit";
/// Rows per batch handed to the writer, so the rolling writer can cut files near their target.
const WRITE_BATCH_ROWS: usize = 4096;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A hook run after the data files are written and before the commit (tests use it to commit
/// something concurrently).
pub type BeforeCommit = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// How [`compact_table`] compacts.
#[derive(Clone)]
pub struct CompactionOptions {
    /// The size a base-row data file is cut at (a file overshoots it by at most one batch).
    pub target_file_size: u64,
    /// Skip a table with fewer live data files than this (nothing to gain).
    pub min_files: usize,
    /// Run after writing and before committing (tests).
    pub before_commit: Option<BeforeCommit>,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        Self {
            target_file_size: DEFAULT_TARGET_FILE_SIZE,
            min_files: 2,
            before_commit: None,
        }
    }
}

impl std::fmt::Debug for CompactionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactionOptions")
            .field("target_file_size", &self.target_file_size)
            .field("min_files", &self.min_files)
            .field("before_commit", &self.before_commit.is_some())
            .finish()
    }
}

/// What a compaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionOutcome {
    /// The replace snapshot was committed.
    Committed,
    /// Nothing to do: the table has no snapshot, or fewer data files than `min_files`.
    Skipped,
    /// Another writer removed some of the files first (another compaction); nothing committed.
    Superseded,
}

/// The result of [`compact_table`].
#[derive(Clone, Debug)]
pub struct CompactionReport {
    /// The table.
    pub table: TableIdent,
    /// What happened.
    pub outcome: CompactionOutcome,
    /// The snapshot read.
    pub source_snapshot_id: Option<i64>,
    /// The replace snapshot committed (when [`CompactionOutcome::Committed`]).
    pub snapshot_id: Option<i64>,
    /// Live data files read (and removed).
    pub files_before: usize,
    /// Base-row data files written.
    pub files_after: usize,
    /// Rows read.
    pub rows_in: u64,
    /// Base rows written.
    pub rows_out: u64,
    /// Bytes of the files read.
    pub bytes_in: u64,
    /// Bytes of the files written.
    pub bytes_out: u64,
    /// The highest `_hlc` read (the summary's `lakesync.compacted-through-hlc`).
    pub compacted_through_hlc: Option<u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for CompactionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            CompactionOutcome::Committed => "compacted",
            CompactionOutcome::Skipped => {
                return write!(
                    f,
                    "{}: skipped: {} data files, too few to compact",
                    self.table, self.files_before
                );
            }
            CompactionOutcome::Superseded => "superseded (another compaction committed first)",
        };
        write!(
            f,
            "{}: {outcome}: {} files ({} rows, {} bytes) -> {} files ({} rows, {} bytes)",
            self.table,
            self.files_before,
            self.rows_in,
            self.bytes_in,
            self.files_after,
            self.rows_out,
            self.bytes_out
        )?;
        if let Some(id) = self.snapshot_id {
            write!(f, ", snapshot {id}")?;
        }
        write!(f, " in {:.2?}", self.elapsed)
    }
}

/// Compacts the lake table `ident` (see the module docs).
///
/// Fails when the table cannot be loaded or read, is not a LakeSync delta table, or the commit
/// keeps failing; written files of a commit that did not happen are left as orphans.
pub async fn compact_table(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    options: &CompactionOptions,
) -> Result<CompactionReport> {
    let started = Instant::now();
    let mut table = load(catalog, ident).await?;
    let mut report = CompactionReport {
        table: ident.clone(),
        outcome: CompactionOutcome::Skipped,
        source_snapshot_id: table.metadata().current_snapshot_id(),
        snapshot_id: None,
        files_before: 0,
        files_after: 0,
        rows_in: 0,
        rows_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        compacted_through_hlc: None,
        elapsed: Duration::ZERO,
    };
    let Some(source) = table.metadata().current_snapshot().cloned() else {
        tracing::info!(table = %ident, "no snapshot; nothing to compact");
        report.elapsed = started.elapsed();
        return Ok(report);
    };
    let files = live_data_files(&table, &source)
        .await
        .map_err(|e| iceberg_error(format!("listing the data files of table {ident}"), e))?;
    report.files_before = files.len();
    report.bytes_in = files.iter().map(DataFile::file_size_in_bytes).sum();
    if files.len() < options.min_files.max(1) {
        tracing::info!(table = %ident, files = files.len(), min_files = options.min_files, "too few data files; skipping compaction");
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    if !mapping::has_versions(table.metadata().current_schema()) {
        table = add_versions_column(catalog, &table).await?;
    }

    let (rows, state) = read_state(&table, Some(source.snapshot_id())).await?;
    report.rows_in = rows.rows_read;
    report.compacted_through_hlc = rows.max_hlc;
    let base = state_to_base(&rows.schema, &state)?;
    drop(state);
    let iceberg_schema = table.metadata().current_schema().clone();
    let arrow = mapping::arrow_schema(&iceberg_schema)?;
    let base = mapping::to_iceberg_batch(&base, &arrow)?;
    let batches: Vec<RecordBatch> = (0..base.num_rows())
        .step_by(WRITE_BATCH_ROWS)
        .map(|at| base.slice(at, WRITE_BATCH_ROWS.min(base.num_rows() - at)))
        .collect();
    let target = usize::try_from(options.target_file_size).unwrap_or(usize::MAX);
    let added = super::write::write_data_files(
        &table,
        iceberg_schema,
        &arrow,
        &batches,
        file_prefix(),
        Some(target),
    )
    .await
    .map_err(|e| iceberg_error(format!("writing base rows of table {ident}"), e))?;
    drop(batches);
    report.files_after = added.len();
    report.rows_out = added.iter().map(DataFile::record_count).sum();
    report.bytes_out = added.iter().map(DataFile::file_size_in_bytes).sum();

    if let Some(hook) = &options.before_commit {
        hook().await;
    }
    crate::fault::pause_point(PAUSE_BEFORE_COMMIT).await;

    let mut properties = HashMap::from([(OPERATION_PROPERTY.to_string(), "compact".to_string())]);
    if let Some(hlc) = rows.max_hlc {
        properties.insert(COMPACTED_THROUGH_PROPERTY.to_string(), hlc.to_string());
    }
    let removed: HashSet<String> = files.iter().map(|f| f.file_path().to_string()).collect();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=MAX_COMMIT_ATTEMPTS {
        let action = ReplaceDataFiles::new(removed.clone(), added.clone(), properties.clone());
        let superseded = action.superseded_flag();
        let tx = Transaction::new(&table);
        let tx = action
            .apply(tx)
            .map_err(|e| iceberg_error(format!("preparing the compaction of {ident}"), e))?;
        match tx.commit(&**catalog).await {
            Ok(committed) => {
                report.outcome = CompactionOutcome::Committed;
                report.snapshot_id = committed.metadata().current_snapshot_id();
                report.elapsed = started.elapsed();
                tracing::info!(table = %ident, files_before = report.files_before, files_after = report.files_after, rows_in = report.rows_in, rows_out = report.rows_out, snapshot = report.snapshot_id, "compacted Iceberg table");
                return Ok(report);
            }
            Err(_) if superseded.load(Ordering::SeqCst) => {
                tracing::warn!(table = %ident, "another writer removed the files first; compaction gives up (its files are orphans)");
                report.outcome = CompactionOutcome::Superseded;
                report.elapsed = started.elapsed();
                return Ok(report);
            }
            Err(e)
                if e.kind() == IcebergErrorKind::CatalogCommitConflicts
                    && attempt < MAX_COMMIT_ATTEMPTS =>
            {
                tracing::warn!(table = %ident, attempt, error = %e, "compaction commit conflicted; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                table = load(catalog, ident).await?;
            }
            Err(e) => {
                return Err(iceberg_error(
                    format!("committing the compaction of table {ident} (attempt {attempt})"),
                    e,
                ));
            }
        }
    }
    Err(Error::internal(
        "compaction commit loop ended without a result",
    ))
}

/// The live data files (content `data`) of `snapshot`.
pub async fn live_data_files(
    table: &Table,
    snapshot: &iceberg::spec::SnapshotRef,
) -> iceberg::Result<Vec<DataFile>> {
    let list = table.manifest_list_reader(snapshot).load().await?;
    let mut files = Vec::new();
    for manifest in list.entries() {
        if manifest.content != ManifestContentType::Data {
            continue;
        }
        let manifest = manifest.load_manifest(table.file_io()).await?;
        files.extend(
            manifest
                .entries()
                .iter()
                .filter(|e| e.is_alive() && e.content_type() == DataContentType::Data)
                .map(|e| e.data_file().clone()),
        );
    }
    Ok(files)
}

async fn load(catalog: &Arc<dyn Catalog>, ident: &TableIdent) -> Result<Table> {
    catalog
        .load_table(ident)
        .await
        .map_err(|e| iceberg_error(format!("loading table {ident}"), e))
}

/// Gives a table made before compaction existed its `_versions` column.
async fn add_versions_column(catalog: &Arc<dyn Catalog>, table: &Table) -> Result<Table> {
    let ident = table.identifier();
    let tx = Transaction::new(table);
    let table = tx
        .update_schema()
        .add_column(mapping::versions_column())
        .apply(tx)
        .map_err(|e| iceberg_error(format!("evolving table {ident}"), e))?
        .commit(&**catalog)
        .await
        .map_err(|e| iceberg_error(format!("adding the _versions column to table {ident}"), e))?;
    tracing::info!(table = %ident, "added the _versions column for base rows");
    Ok(table)
}

/// A data-file name prefix unique to this compaction.
fn file_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "compact-{nanos:x}-{:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `replace` action: removes `removed` (paths of live data files) and adds `added`, in one
/// snapshot on top of whatever the current snapshot is when it commits (see the module docs).
pub struct ReplaceDataFiles {
    removed: HashSet<String>,
    added: Vec<DataFile>,
    properties: HashMap<String, String>,
    /// Set when a removed file is no longer live: the action cannot apply.
    superseded: Arc<AtomicBool>,
}

impl ReplaceDataFiles {
    /// An action that removes the live data files at the paths `removed` and adds `added`, with
    /// `properties` in the snapshot summary (besides the counts).
    pub fn new(
        removed: HashSet<String>,
        added: Vec<DataFile>,
        properties: HashMap<String, String>,
    ) -> Self {
        Self {
            removed,
            added,
            properties,
            superseded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag the action sets when it cannot apply because a file to remove is no longer live
    /// (its commit then fails with `PreconditionFailed`): read it after a failed commit to tell
    /// "superseded" from other failures.
    pub fn superseded_flag(&self) -> Arc<AtomicBool> {
        self.superseded.clone()
    }
}

#[async_trait]
impl TransactionAction for ReplaceDataFiles {
    async fn commit(self: Arc<Self>, table: &Table) -> iceberg::Result<ActionCommit> {
        let metadata = table.metadata();
        let fail = |kind, message: String| iceberg::Error::new(kind, message);
        let Some(parent) = metadata.current_snapshot() else {
            self.superseded.store(true, Ordering::SeqCst);
            return Err(fail(
                IcebergErrorKind::PreconditionFailed,
                "the table has no current snapshot; nothing to replace".into(),
            ));
        };
        let format = metadata.format_version();
        if format == FormatVersion::V1 {
            return Err(fail(
                IcebergErrorKind::FeatureUnsupported,
                "compaction needs an Iceberg v2 (or later) table".into(),
            ));
        }
        let snapshot_id = unique_snapshot_id(metadata);
        let sequence_number = metadata.next_sequence_number();
        let commit_uuid = Uuid::new_v4();
        let meta_path = |name: String| format!("{}/metadata/{name}", metadata.location());
        let schema = metadata.current_schema().clone();
        let spec = metadata.default_partition_spec().clone();
        let mut summary = SnapshotSummaryCollector::default();

        let list = table.manifest_list_reader(parent).load().await?;
        let mut manifests: Vec<ManifestFile> = Vec::new();
        let mut found = 0usize;
        let mut rewritten = 0u64;
        for manifest_file in list.entries() {
            if manifest_file.content != ManifestContentType::Data {
                manifests.push(manifest_file.clone());
                continue;
            }
            if !manifest_file.has_added_files() && !manifest_file.has_existing_files() {
                continue;
            }
            let manifest = manifest_file.load_manifest(table.file_io()).await?;
            let holds_removed = manifest
                .entries()
                .iter()
                .any(|e| e.is_alive() && self.removed.contains(e.file_path()));
            if !holds_removed {
                manifests.push(manifest_file.clone());
                continue;
            }
            let output = table
                .file_io()
                .new_output(meta_path(format!("{commit_uuid}-r{rewritten}.avro")))?;
            rewritten += 1;
            let manifest_spec = Arc::new(manifest.metadata().partition_spec().clone());
            let builder = ManifestWriterBuilder::new(
                output,
                Some(snapshot_id),
                manifest.metadata().schema().clone(),
                manifest_spec.as_ref().clone(),
            );
            let mut writer = match format {
                FormatVersion::V3 => builder.build_v3_data(),
                _ => builder.build_v2_data(),
            };
            for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
                let sequence = entry.sequence_number().ok_or_else(|| {
                    fail(
                        IcebergErrorKind::DataInvalid,
                        format!(
                            "manifest entry {} has no sequence number",
                            entry.file_path()
                        ),
                    )
                })?;
                let data_file = entry.data_file().clone();
                if self.removed.contains(entry.file_path()) {
                    found += 1;
                    summary.remove_file(&data_file, schema.clone(), manifest_spec.clone());
                    writer.add_delete_file(data_file, sequence, entry.file_sequence_number)?;
                } else {
                    let added_by = entry.snapshot_id().unwrap_or(parent.snapshot_id());
                    writer.add_existing_file(
                        data_file,
                        added_by,
                        sequence,
                        entry.file_sequence_number,
                    )?;
                }
            }
            manifests.push(writer.write_manifest_file().await?);
        }
        if found != self.removed.len() {
            self.superseded.store(true, Ordering::SeqCst);
            return Err(fail(
                IcebergErrorKind::PreconditionFailed,
                format!(
                    "{} of the {} files to replace are no longer live in snapshot {} (another \
                     compaction won)",
                    self.removed.len() - found,
                    self.removed.len(),
                    parent.snapshot_id()
                ),
            ));
        }
        if !self.added.is_empty() {
            let output = table
                .file_io()
                .new_output(meta_path(format!("{commit_uuid}-m0.avro")))?;
            let builder = ManifestWriterBuilder::new(
                output,
                Some(snapshot_id),
                schema.clone(),
                spec.as_ref().clone(),
            );
            let mut writer = match format {
                FormatVersion::V3 => builder.build_v3_data(),
                _ => builder.build_v2_data(),
            };
            for data_file in &self.added {
                summary.add_file(data_file, schema.clone(), spec.clone());
                writer.add_file(data_file.clone(), sequence_number)?;
            }
            // Base files first: readers plan them first.
            manifests.insert(0, writer.write_manifest_file().await?);
        }

        let list_path = meta_path(format!(
            "snap-{snapshot_id}-0-{commit_uuid}.{}",
            DataFileFormat::Avro
        ));
        let out = table
            .file_io()
            .new_output(list_path.clone())?
            .writer()
            .await?;
        let first_row_id = metadata.next_row_id();
        let mut list_writer = match format {
            FormatVersion::V3 => ManifestListWriter::v3(
                out,
                snapshot_id,
                Some(parent.snapshot_id()),
                sequence_number,
                Some(first_row_id),
            ),
            _ => ManifestListWriter::v2(
                out,
                snapshot_id,
                Some(parent.snapshot_id()),
                sequence_number,
            ),
        };
        list_writer.add_manifests(manifests.into_iter())?;
        let next_row_id = list_writer.next_row_id();
        list_writer.close().await?;

        let mut additional = self.properties.clone();
        additional.extend(summary.build());
        let summary = totals(
            Summary {
                operation: Operation::Replace,
                additional_properties: additional,
            },
            parent.summary(),
        );
        let snapshot = Snapshot::builder()
            .with_manifest_list(list_path)
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(Some(parent.snapshot_id()))
            .with_sequence_number(sequence_number)
            .with_summary(summary)
            .with_schema_id(metadata.current_schema_id())
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis());
        let snapshot = match next_row_id {
            Some(next) => snapshot
                .with_row_range(first_row_id, next.saturating_sub(first_row_id))
                .build(),
            None => snapshot.build(),
        };
        Ok(ActionCommit::new(
            vec![
                TableUpdate::AddSnapshot { snapshot },
                TableUpdate::SetSnapshotRef {
                    ref_name: MAIN_BRANCH.to_string(),
                    reference: SnapshotReference::new(
                        snapshot_id,
                        SnapshotRetention::branch(None, None, None),
                    ),
                },
            ],
            vec![
                TableRequirement::UuidMatch {
                    uuid: metadata.uuid(),
                },
                TableRequirement::RefSnapshotIdMatch {
                    r#ref: MAIN_BRANCH.to_string(),
                    snapshot_id: Some(parent.snapshot_id()),
                },
            ],
        ))
    }
}

/// Adds the `total-*` entries of a snapshot summary: the parent's totals plus what this one
/// added, minus what it removed (iceberg's own helper is private to the crate).
fn totals(mut summary: Summary, parent: &Summary) -> Summary {
    const TOTALS: [(&str, &str, &str); 6] = [
        ("total-data-files", "added-data-files", "deleted-data-files"),
        ("total-records", "added-records", "deleted-records"),
        ("total-files-size", "added-files-size", "removed-files-size"),
        (
            "total-delete-files",
            "added-delete-files",
            "removed-delete-files",
        ),
        (
            "total-position-deletes",
            "added-position-deletes",
            "removed-position-deletes",
        ),
        (
            "total-equality-deletes",
            "added-equality-deletes",
            "removed-equality-deletes",
        ),
    ];
    let get = |map: &HashMap<String, String>, key: &str| -> Option<u64> {
        map.get(key).and_then(|v| v.parse().ok())
    };
    for (total, added, removed) in TOTALS {
        let Some(before) = get(&parent.additional_properties, total) else {
            continue;
        };
        let props = &summary.additional_properties;
        let after = before
            .saturating_add(get(props, added).unwrap_or(0))
            .saturating_sub(get(props, removed).unwrap_or(0));
        summary
            .additional_properties
            .insert(total.to_string(), after.to_string());
    }
    summary
}

fn unique_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let (a, b) = Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) >> 1) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::adapters::iceberg::read::{ReadOptions, read_table, state_of};
    use crate::adapters::iceberg::sink::epoch_mark;
    use crate::adapters::iceberg::{IcebergCatalogConfig, IcebergSink, connect};
    use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
    use crate::kernel::delta_batch::deltas_to_batch;
    use crate::kernel::hlc::HlcTimestamp;
    use crate::kernel::merge::merge;
    use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};
    use crate::runtime::api::{Sink, TableRef};
    use arrow::compute::{sort_to_indices, take_record_batch};
    use serde_json::{Value, json};

    pub(crate) const DAY_MS: u64 = 86_400_000;
    pub(crate) const T0: u64 = 1_750_000_000_000;

    pub(crate) fn todos() -> TableRef {
        Arc::new(TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("done", ColumnType::Boolean),
                ColumnDef::new("n", ColumnType::Integer),
            ],
        ))
    }

    pub(crate) fn d(
        op: DeltaOp,
        row: &str,
        client: &str,
        wall_ms: u64,
        cols: Vec<(&str, Value)>,
    ) -> RowDelta {
        let cols = cols
            .into_iter()
            .map(|(c, v)| ColumnDelta::new(c, v))
            .collect();
        let hlc = HlcTimestamp::new(wall_ms, 0).unwrap();
        RowDelta::new(op, "todos", row, client, cols, hlc)
    }

    pub(crate) struct Lake {
        pub _dir: tempfile::TempDir,
        pub catalog: Arc<dyn Catalog>,
        pub sink: IcebergSink,
        pub table: TableRef,
        pub ident: TableIdent,
        pub written: Vec<RowDelta>,
        pub epoch: u64,
    }

    impl Lake {
        pub(crate) async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
            let catalog = connect(&config).await.unwrap();
            let mut sink =
                IcebergSink::with_catalog(catalog.clone(), "lakesync", "p", "lake").unwrap();
            let table = todos();
            sink.prepare(std::slice::from_ref(&table)).await.unwrap();
            let ident = sink.table_ident("todos");
            Self {
                _dir: dir,
                catalog,
                sink,
                table,
                ident,
                written: Vec::new(),
                epoch: 0,
            }
        }

        /// Commits `deltas` as the next epoch.
        pub(crate) async fn flush(&mut self, deltas: Vec<RowDelta>) {
            self.epoch += 1;
            let batch = deltas_to_batch(&self.table, &deltas).unwrap();
            self.sink.write(&self.table, batch).await.unwrap();
            self.sink.commit(self.epoch).await.unwrap();
            self.written.extend(deltas);
        }

        pub(crate) async fn load(&self) -> Table {
            self.catalog.load_table(&self.ident).await.unwrap()
        }

        /// The state LakeSync reads from the lake, sorted by row id.
        pub(crate) async fn lake_state(&self) -> RecordBatch {
            let rows = read_table(&self.load().await, ReadOptions::default())
                .await
                .unwrap();
            sorted(&state_of(&rows).unwrap())
        }

        /// The merge of every delta written, sorted by row id.
        pub(crate) fn expected(&self) -> RecordBatch {
            let batch = deltas_to_batch(&self.table, &self.written).unwrap();
            sorted(&merge(&self.table, None, &[batch]).unwrap())
        }

        pub(crate) async fn compact(&self, options: &CompactionOptions) -> CompactionReport {
            compact_table(&self.catalog, &self.ident, options)
                .await
                .unwrap()
        }
    }

    pub(crate) fn sorted(state: &RecordBatch) -> RecordBatch {
        let order = sort_to_indices(state.column(0), None, None).unwrap();
        take_record_batch(state, &order).unwrap()
    }

    /// Two days of inserts, updates, deletes and a resurrection.
    pub(crate) fn history() -> Vec<Vec<RowDelta>> {
        use DeltaOp::*;
        vec![
            vec![
                d(
                    Insert,
                    "a",
                    "c1",
                    T0,
                    vec![("title", json!("A")), ("n", json!(1))],
                ),
                d(Insert, "b", "c1", T0 + 1, vec![("title", json!("B"))]),
                d(
                    Insert,
                    "c",
                    "c2",
                    T0 + 2,
                    vec![("title", json!("C")), ("done", json!(false))],
                ),
            ],
            vec![
                d(Update, "a", "c2", T0 + 10, vec![("done", json!(true))]),
                d(Delete, "b", "c2", T0 + 11, vec![]),
                d(Update, "c", "c1", T0 + 12, vec![("title", Value::Null)]),
            ],
            vec![
                d(Delete, "c", "c1", T0 + DAY_MS, vec![]),
                d(Update, "c", "c3", T0 + DAY_MS + 1, vec![("n", json!(7))]),
                d(Update, "a", "c1", T0 + DAY_MS + 2, vec![("n", json!(2))]),
            ],
        ]
    }

    #[tokio::test]
    async fn compaction_equals_the_merge_of_all_deltas_and_stays_exact() {
        let mut lake = Lake::new().await;
        for epoch in history() {
            lake.flush(epoch).await;
        }
        let before = lake.lake_state().await;
        assert_eq!(before, lake.expected());

        let report = lake.compact(&CompactionOptions::default()).await;
        assert_eq!(report.outcome, CompactionOutcome::Committed, "{report}");
        assert_eq!(report.files_before, 3, "{report}");
        assert_eq!(report.files_after, 2, "{report}"); // one per day of the newest change
        assert_eq!((report.rows_in, report.rows_out), (9, 3));
        let table = lake.load().await;
        let snapshot = table.metadata().current_snapshot().unwrap();
        assert_eq!(snapshot.summary().operation, Operation::Replace);
        let props = &snapshot.summary().additional_properties;
        assert_eq!(props[OPERATION_PROPERTY], "compact");
        assert_eq!(
            props[COMPACTED_THROUGH_PROPERTY],
            HlcTimestamp::new(T0 + DAY_MS + 2, 0).unwrap().0.to_string()
        );
        assert_eq!(props["total-data-files"], "2");
        assert_eq!(props["total-records"], "3");
        assert_eq!(props["deleted-data-files"], "3");
        assert_eq!(live_data_files(&table, snapshot).await.unwrap().len(), 2);
        // The sink's epoch mark survives the replace snapshot.
        assert_eq!(epoch_mark(table.metadata(), "p", "lake").unwrap(), Some(3));
        assert_eq!(lake.lake_state().await, lake.expected());
        let rows = read_table(&table, ReadOptions::default()).await.unwrap();
        assert!(rows.deltas.is_empty());
        assert_eq!(rows.base.as_ref().map(RecordBatch::num_rows), Some(3));

        // Later deltas, some older than the compaction (late writers), merge exactly.
        use DeltaOp::*;
        lake.flush(vec![
            d(Update, "a", "c9", T0 + 5, vec![("title", json!("late"))]),
            d(Update, "a", "c0", T0 + 11, vec![("done", json!(false))]),
            d(
                Insert,
                "b",
                "c3",
                T0 + 9,
                vec![("title", json!("too late"))],
            ),
            d(
                Insert,
                "d",
                "c1",
                T0 + DAY_MS + 50,
                vec![("title", json!("D"))],
            ),
        ])
        .await;
        assert_eq!(lake.lake_state().await, lake.expected());
        let second = lake.compact(&CompactionOptions::default()).await;
        assert_eq!(second.outcome, CompactionOutcome::Committed, "{second}");
        assert_eq!(second.files_before, 4, "{second}");
        assert_eq!(lake.lake_state().await, lake.expected());
        assert_eq!(
            epoch_mark(lake.load().await.metadata(), "p", "lake").unwrap(),
            Some(4)
        );
        // The sink keeps appending after a compaction.
        lake.flush(vec![d(Delete, "d", "c1", T0 + DAY_MS + 60, vec![])])
            .await;
        assert_eq!(lake.lake_state().await, lake.expected());
    }

    #[tokio::test]
    async fn an_old_table_gains_versions_and_compacts_exactly() {
        // A table made before day partitioning and compaction: no _hlc_time, no _versions.
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
        let catalog = connect(&config).await.unwrap();
        let ns = iceberg::NamespaceIdent::new("lakesync".into());
        catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
        let table = todos();
        let fresh = mapping::iceberg_schema(&table).unwrap();
        let old_fields: Vec<_> = fresh
            .as_struct()
            .fields()
            .iter()
            .filter(|f| f.name != mapping::HLC_TIME && f.name != crate::kernel::compact::VERSIONS)
            .cloned()
            .collect();
        let old = iceberg::spec::Schema::builder()
            .with_fields(old_fields)
            .build()
            .unwrap();
        let creation = iceberg::TableCreation::builder()
            .name("todos".to_string())
            .schema(old)
            .build();
        catalog.create_table(&ns, creation).await.unwrap();
        let mut sink = IcebergSink::with_catalog(catalog.clone(), "lakesync", "p", "lake").unwrap();
        sink.prepare(std::slice::from_ref(&table)).await.unwrap();
        let ident = sink.table_ident("todos");
        let mut lake = Lake {
            _dir: dir,
            catalog,
            sink,
            table,
            ident,
            written: Vec::new(),
            epoch: 0,
        };
        for epoch in history() {
            lake.flush(epoch).await;
        }
        assert!(!mapping::has_versions(
            lake.load().await.metadata().current_schema()
        ));
        let report = lake.compact(&CompactionOptions::default()).await;
        assert_eq!(report.outcome, CompactionOutcome::Committed, "{report}");
        let schema = lake.load().await.metadata().current_schema().clone();
        let names: Vec<&str> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names.last(), Some(&"_versions"), "{names:?}");
        assert_eq!(lake.lake_state().await, lake.expected());
        // The sink keeps writing deltas (null _versions) to the evolved table.
        lake.flush(vec![d(
            DeltaOp::Update,
            "b",
            "c4",
            T0 + 3,
            vec![("n", json!(4))],
        )])
        .await;
        assert_eq!(lake.lake_state().await, lake.expected());
        assert_eq!(
            lake.compact(&CompactionOptions::default()).await.outcome,
            CompactionOutcome::Committed
        );
        assert_eq!(lake.lake_state().await, lake.expected());
    }

    #[tokio::test]
    async fn too_few_files_are_skipped() {
        let mut lake = Lake::new().await;
        let report = lake.compact(&CompactionOptions::default()).await;
        assert_eq!(report.outcome, CompactionOutcome::Skipped);
        lake.flush(history().remove(0)).await;
        let report = lake.compact(&CompactionOptions::default()).await;
        assert_eq!(
            (report.outcome, report.files_before),
            (CompactionOutcome::Skipped, 1)
        );
        let forced = CompactionOptions {
            min_files: 1,
            ..CompactionOptions::default()
        };
        assert_eq!(
            lake.compact(&forced).await.outcome,
            CompactionOutcome::Committed
        );
        assert_eq!(lake.lake_state().await, lake.expected());
    }

    #[tokio::test]
    async fn a_flush_between_read_and_commit_is_kept() {
        let mut lake = Lake::new().await;
        for epoch in history() {
            lake.flush(epoch).await;
        }
        // A second sink (another pipeline) commits while the compaction is between its read and
        // its commit.
        let mut other =
            IcebergSink::with_catalog(lake.catalog.clone(), "lakesync", "q", "lake").unwrap();
        other
            .prepare(std::slice::from_ref(&lake.table))
            .await
            .unwrap();
        let concurrent = vec![
            d(
                DeltaOp::Update,
                "a",
                "c7",
                T0 + DAY_MS + 100,
                vec![("title", json!("meanwhile"))],
            ),
            d(
                DeltaOp::Insert,
                "e",
                "c7",
                T0 + DAY_MS + 101,
                vec![("n", json!(5))],
            ),
        ];
        let other = Arc::new(tokio::sync::Mutex::new(other));
        let (table, batch) = (
            lake.table.clone(),
            deltas_to_batch(&lake.table, &concurrent).unwrap(),
        );
        let hook: BeforeCommit = Arc::new(move || {
            let (other, table, batch) = (other.clone(), table.clone(), batch.clone());
            Box::pin(async move {
                let mut other = other.lock().await;
                other.write(&table, batch).await.unwrap();
                other.commit(1).await.unwrap();
            })
        });
        let options = CompactionOptions {
            before_commit: Some(hook),
            ..CompactionOptions::default()
        };
        let report = lake.compact(&options).await;
        assert_eq!(report.outcome, CompactionOutcome::Committed, "{report}");
        lake.written.extend(concurrent);
        assert_eq!(lake.lake_state().await, lake.expected());
        let table = lake.load().await;
        let rows = read_table(&table, ReadOptions::default()).await.unwrap();
        assert_eq!(
            rows.deltas.iter().map(RecordBatch::num_rows).sum::<usize>(),
            2
        );
        assert_eq!(epoch_mark(table.metadata(), "q", "lake").unwrap(), Some(1));
        assert_eq!(epoch_mark(table.metadata(), "p", "lake").unwrap(), Some(3));
        // Its parent is the concurrent append, not the snapshot compaction read.
        let current = table.metadata().current_snapshot().unwrap();
        assert_ne!(current.parent_snapshot_id(), report.source_snapshot_id);
    }

    /// A catalogue that lets another writer commit just before the first commit it forwards, so
    /// that commit conflicts (the SQL catalogue's compare-and-swap fails) and is retried.
    struct Interloper {
        inner: Arc<dyn Catalog>,
        first: tokio::sync::Mutex<Option<BoxFuture<'static, ()>>>,
        updates: AtomicU64,
    }

    impl std::fmt::Debug for Interloper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Interloper").finish_non_exhaustive()
        }
    }

    #[async_trait]
    impl Catalog for Interloper {
        async fn list_namespaces(
            &self,
            parent: Option<&iceberg::NamespaceIdent>,
        ) -> iceberg::Result<Vec<iceberg::NamespaceIdent>> {
            self.inner.list_namespaces(parent).await
        }
        async fn create_namespace(
            &self,
            namespace: &iceberg::NamespaceIdent,
            properties: HashMap<String, String>,
        ) -> iceberg::Result<iceberg::Namespace> {
            self.inner.create_namespace(namespace, properties).await
        }
        async fn get_namespace(
            &self,
            namespace: &iceberg::NamespaceIdent,
        ) -> iceberg::Result<iceberg::Namespace> {
            self.inner.get_namespace(namespace).await
        }
        async fn namespace_exists(
            &self,
            namespace: &iceberg::NamespaceIdent,
        ) -> iceberg::Result<bool> {
            self.inner.namespace_exists(namespace).await
        }
        async fn update_namespace(
            &self,
            namespace: &iceberg::NamespaceIdent,
            properties: HashMap<String, String>,
        ) -> iceberg::Result<()> {
            self.inner.update_namespace(namespace, properties).await
        }
        async fn drop_namespace(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<()> {
            self.inner.drop_namespace(namespace).await
        }
        async fn list_tables(
            &self,
            namespace: &iceberg::NamespaceIdent,
        ) -> iceberg::Result<Vec<TableIdent>> {
            self.inner.list_tables(namespace).await
        }
        async fn create_table(
            &self,
            namespace: &iceberg::NamespaceIdent,
            creation: iceberg::TableCreation,
        ) -> iceberg::Result<Table> {
            self.inner.create_table(namespace, creation).await
        }
        async fn load_table(&self, ident: &TableIdent) -> iceberg::Result<Table> {
            self.inner.load_table(ident).await
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
        async fn update_table(&self, commit: iceberg::TableCommit) -> iceberg::Result<Table> {
            self.updates.fetch_add(1, Ordering::SeqCst);
            let first = self.first.lock().await.take();
            if let Some(interloping) = first {
                interloping.await;
            }
            self.inner.update_table(commit).await
        }
    }

    #[tokio::test]
    async fn a_conflicting_commit_is_retried_on_the_new_snapshot() {
        let mut lake = Lake::new().await;
        for epoch in history() {
            lake.flush(epoch).await;
        }
        // (New tables have `_versions`, so the first commit is the replace commit.)
        let mut other =
            IcebergSink::with_catalog(lake.catalog.clone(), "lakesync", "q", "lake").unwrap();
        other
            .prepare(std::slice::from_ref(&lake.table))
            .await
            .unwrap();
        let concurrent = vec![d(
            DeltaOp::Update,
            "c",
            "c8",
            T0 + DAY_MS + 500,
            vec![("done", json!(true))],
        )];
        let batch = deltas_to_batch(&lake.table, &concurrent).unwrap();
        let table_ref = lake.table.clone();
        let interloping: BoxFuture<'static, ()> = Box::pin(async move {
            other.write(&table_ref, batch).await.unwrap();
            other.commit(1).await.unwrap();
        });
        let interloper = Arc::new(Interloper {
            inner: lake.catalog.clone(),
            first: tokio::sync::Mutex::new(Some(interloping)),
            updates: AtomicU64::new(0),
        });
        let catalog: Arc<dyn Catalog> = interloper.clone();
        let report = compact_table(&catalog, &lake.ident, &CompactionOptions::default())
            .await
            .unwrap();
        assert_eq!(report.outcome, CompactionOutcome::Committed, "{report}");
        // The first commit conflicted; the retry went through on top of the interloper's.
        assert_eq!(interloper.updates.load(Ordering::SeqCst), 2);
        lake.written.extend(concurrent);
        assert_eq!(lake.lake_state().await, lake.expected());
        let table = lake.load().await;
        assert_eq!(epoch_mark(table.metadata(), "q", "lake").unwrap(), Some(1));
    }

    #[tokio::test]
    async fn a_second_compaction_of_the_same_files_gives_up() {
        let mut lake = Lake::new().await;
        for epoch in history() {
            lake.flush(epoch).await;
        }
        let (catalog, ident) = (lake.catalog.clone(), lake.ident.clone());
        let hook: BeforeCommit = Arc::new(move || {
            let (catalog, ident) = (catalog.clone(), ident.clone());
            Box::pin(async move {
                let won = compact_table(&catalog, &ident, &CompactionOptions::default())
                    .await
                    .unwrap();
                assert_eq!(won.outcome, CompactionOutcome::Committed);
            })
        });
        let options = CompactionOptions {
            before_commit: Some(hook),
            ..CompactionOptions::default()
        };
        let report = lake.compact(&options).await;
        assert_eq!(report.outcome, CompactionOutcome::Superseded, "{report}");
        assert_eq!(lake.lake_state().await, lake.expected());
    }

    #[tokio::test]
    async fn target_file_size_splits_the_output() {
        let mut lake = Lake::new().await;
        for chunk in 0..2u64 {
            let deltas = (0..6000u64)
                .map(|i| {
                    d(
                        DeltaOp::Insert,
                        &format!("r{chunk}-{i}"),
                        "c1",
                        T0 + chunk * 10_000 + i,
                        vec![("title", json!(format!("row {i} of a rather long title")))],
                    )
                })
                .collect();
            lake.flush(deltas).await;
        }
        let options = CompactionOptions {
            target_file_size: 1024,
            ..CompactionOptions::default()
        };
        let report = lake.compact(&options).await;
        assert_eq!(report.outcome, CompactionOutcome::Committed);
        // 12 000 rows, written 4096 rows at a time, each write overshooting 1 KiB: 3 files.
        assert_eq!(report.files_after, 3, "{report}");
        assert_eq!(report.rows_out, 12_000);
        assert_eq!(lake.lake_state().await, lake.expected());
    }
}
