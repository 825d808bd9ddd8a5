//! The changes an Iceberg snapshot made, as the data files to read: what the [lake
//! source](super::source) reads after a whole snapshot (or after `from_snapshot`).
//!
//! **What a snapshot changed** is worked out from the files, not the manifests' entry statuses:
//! the data files live in snapshot `k` but not in its parent `p` were *added*, the ones live in
//! `p` but not in `k` were *removed*. That covers every operation whatever the writer
//! (appends, overwrites, deletes of whole files), and several manifests or rewritten manifests
//! change nothing in it. Rules:
//! - a `replace` snapshot (compaction, a file format change) changes no data by the Iceberg spec,
//!   so it yields nothing;
//! - row-level delete files (merge-on-read) added or removed by `k` are refused with a clear
//!   error: the change reader cannot yet say which rows they deleted. Delete files that were
//!   already there apply to the files they always applied to;
//! - the files of each side are read in path order, so a re-read of a step yields the same rows
//!   in the same order (a resume skips the rows it delivered before).
//!
//! [`lineage`] lists the snapshots after a given one up to a target, by parent links: a
//! snapshot that is no longer an ancestor of the target (expired, or the table was rolled back)
//! is an error that says so, never a silent gap.

use std::collections::HashSet;

use futures::TryStreamExt;
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask};
use iceberg::spec::Operation;
use iceberg::table::Table;

use super::iceberg_error;
use crate::{Error, Result};

/// The data files one snapshot added and removed (see the module docs).
#[derive(Debug, Default)]
pub struct SnapshotChanges {
    /// Files live in the snapshot and not in its parent, in path order.
    pub added: Vec<FileScanTask>,
    /// Files live in the parent and not in the snapshot, in path order (with the parent's
    /// delete files applied).
    pub removed: Vec<FileScanTask>,
}

/// The scan tasks of every data file live in `snapshot`, in path order.
pub async fn live_files(table: &Table, snapshot: i64) -> Result<Vec<FileScanTask>> {
    let ident = table.identifier();
    let mut tasks: Vec<FileScanTask> = table
        .scan()
        .snapshot_id(snapshot)
        .select_all()
        .build()
        .map_err(|e| iceberg_error(format!("planning a scan of {ident}@{snapshot}"), e))?
        .plan_files()
        .await
        .map_err(|e| iceberg_error(format!("planning a scan of {ident}@{snapshot}"), e))?
        .try_collect()
        .await
        .map_err(|e| iceberg_error(format!("listing the files of {ident}@{snapshot}"), e))?;
    tasks.sort_by(|a, b| a.data_file_path.cmp(&b.data_file_path));
    Ok(tasks)
}

/// The files snapshot `snapshot` of `table` added and removed against its parent.
pub async fn snapshot_changes(table: &Table, snapshot: i64) -> Result<SnapshotChanges> {
    let ident = table.identifier();
    let snap = table.metadata().snapshot_by_id(snapshot).ok_or_else(|| {
        Error::invalid(
            "iceberg source",
            format!("table {ident} has no snapshot {snapshot}"),
        )
    })?;
    if snap.summary().operation == Operation::Replace {
        return Ok(SnapshotChanges::default());
    }
    let now = live_files(table, snapshot).await?;
    let before = match snap.parent_snapshot_id() {
        Some(parent) => live_files(table, parent).await?,
        None => Vec::new(),
    };
    let deletes = |tasks: &[FileScanTask]| -> HashSet<String> {
        tasks
            .iter()
            .flat_map(|t| t.deletes.iter().map(|d| d.file_path.clone()))
            .collect()
    };
    if deletes(&now) != deletes(&before) {
        return Err(Error::invalid(
            "iceberg source",
            format!(
                "snapshot {snapshot} of {ident} adds or removes row-level delete files \
                 (merge-on-read); the change reader cannot tell which rows they delete. \
                 Read a whole snapshot instead (omit from_snapshot, or start the pipeline afresh)"
            ),
        ));
    }
    let paths = |tasks: &[FileScanTask]| -> HashSet<String> {
        tasks.iter().map(|t| t.data_file_path.clone()).collect()
    };
    let (now_paths, before_paths) = (paths(&now), paths(&before));
    Ok(SnapshotChanges {
        added: now
            .into_iter()
            .filter(|t| !before_paths.contains(&t.data_file_path))
            .collect(),
        removed: before
            .into_iter()
            .filter(|t| !now_paths.contains(&t.data_file_path))
            .collect(),
    })
}

/// The snapshots after `after` up to and including `target`, oldest first, by parent links
/// (empty when `after == target`).
pub fn lineage(table: &Table, after: i64, target: i64) -> Result<Vec<i64>> {
    let metadata = table.metadata();
    let mut chain = Vec::new();
    let mut at = Some(target);
    while let Some(id) = at {
        if id == after {
            chain.reverse();
            return Ok(chain);
        }
        chain.push(id);
        at = metadata
            .snapshot_by_id(id)
            .and_then(|s| s.parent_snapshot_id());
    }
    Err(Error::invalid(
        "iceberg source",
        format!(
            "snapshot {after} of {} is not an ancestor of snapshot {target} (it was expired, or \
             the table was rolled back), so the changes since it cannot be read; start the \
             pipeline afresh (a new checkpoint) to read a whole snapshot",
            table.identifier()
        ),
    ))
}

/// Reads `tasks` one file at a time, in order, as Arrow batches.
pub fn read_files(table: &Table, tasks: Vec<FileScanTask>) -> Result<ArrowRecordBatchStream> {
    let tasks = futures::stream::iter(tasks.into_iter().map(Ok));
    let result = ArrowReaderBuilder::new(table.file_io().clone(), iceberg::Runtime::current())
        .with_data_file_concurrency_limit(1)
        .build()
        .read(Box::pin(tasks))
        .map_err(|e| iceberg_error(format!("reading {}", table.identifier()), e))?;
    Ok(result.stream())
}
