//! Lake maintenance: snapshot expiry and orphan-file clean-up.
//!
//! **Snapshot expiry** ([`expire_snapshots`]) drops old snapshots from a table's metadata through
//! iceberg-rust's `Transaction::expire_snapshots`: a snapshot goes when it is not among the
//! [`ExpireOptions::retain_last`] newest of its branch *and* (when
//! [`ExpireOptions::older_than`] is given) older than that. The current snapshot and the heads of
//! branches and tags always stay. Expiry deletes no file: it only makes the files that just the
//! expired snapshots needed unreferenced, for the clean-up below. Time travel to an expired
//! snapshot is no longer possible. The sink's epoch marks survive it (they are table properties
//! as well as snapshot summaries; see [`super::sink::epoch_mark`]).
//!
//! **Orphan-file clean-up** ([`clean_orphans`]) lists every object under the table's location
//! (through `object_store`, for S3-compatible buckets and local warehouses alike), then loads the
//! table's metadata and collects every file it references: the current metadata file and those
//! in its metadata log, each retained snapshot's manifest list, every manifest in those lists,
//! every live data and delete file in those manifests, and statistics files. An object that is
//! not referenced *and* was last written more than [`OrphanOptions::min_age`] ago is deleted
//! through the table's `FileIO`. Listing before loading the metadata means a commit that lands
//! meanwhile only adds references. Files a writer has written but not yet committed (a sink
//! epoch, a compaction's base files, a metadata file about to be swapped in) are unreferenced
//! until their commit: `min_age` is what protects them, so it must exceed the longest time any
//! writer takes between writing a file and committing it (the default, an hour, is generous for
//! the sink; raise it for compactions of very large tables). A referenced file is never deleted,
//! nor is anything under `_lakesync_checkpoints/` (lake checkpoints, which
//! [`super::checkpoint`] manages itself).

use super::iceberg_error;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};

use super::storage::{S3Config, list_objects, normalise_local};
use crate::{Error, Result};

/// The default number of snapshots [`expire_snapshots`] keeps.
pub const DEFAULT_RETAIN_LAST: usize = 5;
/// The default age below which [`clean_orphans`] leaves an unreferenced file alone.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);

/// Which snapshots [`expire_snapshots`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpireOptions {
    /// Keep at least this many of the newest snapshots (at least 1).
    pub retain_last: usize,
    /// Drop only snapshots older than this; any age when `None`.
    pub older_than: Option<Duration>,
}

impl Default for ExpireOptions {
    fn default() -> Self {
        Self {
            retain_last: DEFAULT_RETAIN_LAST,
            older_than: None,
        }
    }
}

/// The result of [`expire_snapshots`].
#[derive(Clone, Debug)]
pub struct ExpireReport {
    /// The table.
    pub table: TableIdent,
    /// Snapshots before.
    pub snapshots_before: usize,
    /// Snapshots after.
    pub snapshots_after: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for ExpireReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expired {} of {} snapshots ({} kept) in {:.2?}",
            self.table,
            self.snapshots_before - self.snapshots_after,
            self.snapshots_before,
            self.snapshots_after,
            self.elapsed
        )
    }
}

/// Expires old snapshots of the table `ident` (see the module docs).
pub async fn expire_snapshots(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    options: &ExpireOptions,
) -> Result<ExpireReport> {
    let started = Instant::now();
    if options.retain_last == 0 {
        return Err(Error::invalid(
            "snapshot expiry",
            "retain-last must be at least 1 (the current snapshot always stays)",
        ));
    }
    let table = load(catalog, ident).await?;
    let before = table.metadata().snapshots().len();
    let age = options.older_than.unwrap_or(Duration::ZERO);
    let cutoff = chrono::Utc::now().timestamp_millis()
        - i64::try_from(age.as_millis()).unwrap_or(i64::MAX / 2);
    let tx = Transaction::new(&table);
    let committed = tx
        .expire_snapshots()
        .retain_last(options.retain_last)
        // Strictly older than the cutoff: a zero age expires everything but the retained.
        .expire_older_than_ms(cutoff.saturating_add(1))
        .apply(tx)
        .map_err(|e| iceberg_error(format!("preparing snapshot expiry of table {ident}"), e))?
        .commit(&**catalog)
        .await
        .map_err(|e| iceberg_error(format!("expiring snapshots of table {ident}"), e))?;
    let after = committed.metadata().snapshots().len();
    tracing::info!(table = %ident, before, after, "expired Iceberg snapshots");
    Ok(ExpireReport {
        table: ident.clone(),
        snapshots_before: before,
        snapshots_after: after,
        elapsed: started.elapsed(),
    })
}

/// How [`clean_orphans`] cleans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrphanOptions {
    /// Leave unreferenced files younger than this (in-flight writes).
    pub min_age: Duration,
    /// Report what would be deleted without deleting it.
    pub dry_run: bool,
}

impl Default for OrphanOptions {
    fn default() -> Self {
        Self {
            min_age: DEFAULT_MIN_AGE,
            dry_run: false,
        }
    }
}

/// The result of [`clean_orphans`].
#[derive(Clone, Debug)]
pub struct OrphanReport {
    /// The table.
    pub table: TableIdent,
    /// Objects found under the table's location.
    pub files_listed: usize,
    /// Files the metadata references.
    pub files_referenced: usize,
    /// Unreferenced files deleted (or, in a dry run, that would be).
    pub orphans_deleted: usize,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Unreferenced files left because they are younger than `min_age`.
    pub orphans_too_young: usize,
    /// The deleted files' locations.
    pub deleted: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for OrphanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: deleted {} orphan files ({} bytes) of {} listed, {} referenced, {} too young \
             in {:.2?}",
            self.table,
            self.orphans_deleted,
            self.bytes_deleted,
            self.files_listed,
            self.files_referenced,
            self.orphans_too_young,
            self.elapsed
        )
    }
}

/// Deletes the files under the table `ident`'s location that its metadata does not reference
/// (see the module docs). `s3` holds the S3 settings for listing (the table's own FileIO
/// properties, from the catalogue, take precedence).
pub async fn clean_orphans(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    s3: &S3Config,
    options: &OrphanOptions,
) -> Result<OrphanReport> {
    let started = Instant::now();
    let table = load(catalog, ident).await?;
    let location = table
        .metadata()
        .location()
        .trim_end_matches('/')
        .to_string();
    let s3 = s3.overlaid(&S3Config::from_props(table.file_io().config().props()));
    // List first, then reload the metadata: a commit in between only adds references.
    let listed = list_objects(&format!("{location}/"), &s3).await?;
    let table = load(catalog, ident).await?;
    let referenced = referenced_files(&table)
        .await
        .map_err(|e| iceberg_error(format!("reading the metadata of table {ident}"), e))?;
    let now = chrono::Utc::now();
    let min_age = chrono::Duration::from_std(options.min_age).unwrap_or(chrono::Duration::MAX);
    let mut report = OrphanReport {
        table: ident.clone(),
        files_listed: listed.len(),
        files_referenced: referenced.len(),
        orphans_deleted: 0,
        bytes_deleted: 0,
        orphans_too_young: 0,
        deleted: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let checkpoints = format!("/{}/", super::checkpoint::CHECKPOINT_DIR);
    for object in listed {
        // Lake checkpoints are LakeSync's, not Iceberg's: their manifest keeps them.
        if referenced.contains(&canonical(&object.location))
            || object.location.contains(&checkpoints)
        {
            continue;
        }
        if now - object.last_modified < min_age {
            report.orphans_too_young += 1;
            continue;
        }
        // Delete through the table's FileIO, in the table location's own spelling.
        let path = respell(&object.location, &location);
        if !options.dry_run {
            table
                .file_io()
                .delete(&path)
                .await
                .map_err(|e| iceberg_error(format!("deleting orphan file {path}"), e))?;
        }
        tracing::debug!(table = %ident, file = %path, size = object.size, dry_run = options.dry_run, "orphan file");
        report.orphans_deleted += 1;
        report.bytes_deleted += object.size;
        report.deleted.push(path);
    }
    report.elapsed = started.elapsed();
    tracing::info!(table = %ident, deleted = report.orphans_deleted, bytes = report.bytes_deleted, too_young = report.orphans_too_young, dry_run = options.dry_run, "cleaned orphan files");
    Ok(report)
}

/// Every file `table`'s metadata references, each location in one canonical spelling (`file:`
/// URLs as plain absolute paths with `.` and `..` resolved, `s3a://`/`s3n://` as `s3://`).
pub async fn referenced_files(table: &Table) -> iceberg::Result<HashSet<String>> {
    let metadata = table.metadata();
    let mut files = HashSet::new();
    if let Some(current) = table.metadata_location() {
        files.insert(canonical(current));
    }
    for entry in metadata.metadata_log() {
        files.insert(canonical(&entry.metadata_file));
    }
    for stats in metadata.statistics_iter() {
        files.insert(canonical(&stats.statistics_path));
    }
    for stats in metadata.partition_statistics_iter() {
        files.insert(canonical(&stats.statistics_path));
    }
    let mut manifests_seen = HashSet::new();
    for snapshot in metadata.snapshots() {
        files.insert(canonical(snapshot.manifest_list()));
        let list = table.manifest_list_reader(snapshot).load().await?;
        for manifest_file in list.entries() {
            if !manifests_seen.insert(manifest_file.manifest_path.clone()) {
                continue;
            }
            files.insert(canonical(&manifest_file.manifest_path));
            let manifest = manifest_file.load_manifest(table.file_io()).await?;
            for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
                files.insert(canonical(entry.file_path()));
            }
        }
    }
    Ok(files)
}

/// A location in one spelling per file: `s3a://`/`s3n://` as `s3://`, `file:` URLs as plain
/// absolute paths with `.` and `..` resolved.
fn canonical(location: &str) -> String {
    for scheme in ["s3a://", "s3n://"] {
        if let Some(rest) = location.strip_prefix(scheme) {
            return format!("s3://{rest}");
        }
    }
    if location.starts_with("s3://") {
        return location.to_string();
    }
    let local = location
        .strip_prefix("file://")
        .or_else(|| location.strip_prefix("file:"))
        .unwrap_or(location);
    if local.starts_with('/') {
        normalise_local(local)
    } else {
        location.to_string()
    }
}

/// A listed location (s3:// or an absolute path) in the spelling of the table location `base`.
fn respell(listed: &str, base: &str) -> String {
    let canonical_base = canonical(base);
    match listed.strip_prefix(&canonical_base) {
        Some(rest) => format!("{base}{rest}"),
        None => listed.to_string(),
    }
}

async fn load(catalog: &Arc<dyn Catalog>, ident: &TableIdent) -> Result<Table> {
    catalog
        .load_table(ident)
        .await
        .map_err(|e| iceberg_error(format!("loading table {ident}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::iceberg::compact::tests::{Lake, T0, d, history};
    use crate::adapters::iceberg::compact::{CompactionOptions, CompactionOutcome};
    use crate::adapters::iceberg::sink::epoch_mark;
    use crate::kernel::delta::DeltaOp;
    use serde_json::json;

    #[test]
    fn locations_compare_in_one_spelling() {
        assert_eq!(canonical("file:///a/b/../c/./d"), "/a/c/d");
        assert_eq!(canonical("file:/a//c"), "/a/c");
        assert_eq!(canonical("s3a://bucket/k/x"), "s3://bucket/k/x");
        assert_eq!(canonical("s3://bucket/k/../x"), "s3://bucket/k/../x");
        assert_eq!(
            respell("/w/t/data/f.parquet", "file:///w/x/../t"),
            "file:///w/x/../t/data/f.parquet"
        );
        assert_eq!(respell("s3://b/t/m.avro", "s3a://b/t"), "s3a://b/t/m.avro");
    }

    #[tokio::test]
    async fn expiry_and_orphan_clean_up_delete_only_unreferenced_files() {
        let mut lake = Lake::new().await;
        for epoch in history() {
            lake.flush(epoch).await;
        }
        let report = lake.compact(&CompactionOptions::default()).await;
        assert_eq!(report.outcome, CompactionOutcome::Committed);
        lake.flush(vec![d(
            DeltaOp::Update,
            "a",
            "c1",
            T0 + 99,
            vec![("n", json!(9))],
        )])
        .await;
        let state = lake.lake_state().await;

        // Nothing is unreferenced yet but the sink's and catalogue's own leftovers.
        let young = clean_orphans(
            &lake.catalog,
            &lake.ident,
            &S3Config::default(),
            &OrphanOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(young.orphans_deleted, 0, "{young}");

        let expired = expire_snapshots(
            &lake.catalog,
            &lake.ident,
            &ExpireOptions {
                retain_last: 1,
                older_than: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (expired.snapshots_before, expired.snapshots_after),
            (5, 1),
            "{expired}"
        );
        // Older snapshots are gone; the mark lives on in the table property.
        let table = lake.load().await;
        assert_eq!(epoch_mark(table.metadata(), "p", "lake").unwrap(), Some(4));

        // An hour's minimum age protects everything just written.
        let kept = clean_orphans(
            &lake.catalog,
            &lake.ident,
            &S3Config::default(),
            &OrphanOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(kept.orphans_deleted, 0, "{kept}");
        assert!(kept.orphans_too_young > 0, "{kept}");

        let options = OrphanOptions {
            min_age: Duration::ZERO,
            dry_run: false,
        };
        let cleaned = clean_orphans(&lake.catalog, &lake.ident, &S3Config::default(), &options)
            .await
            .unwrap();
        // The three delta files compaction replaced are among the orphans.
        let data: Vec<&String> = cleaned
            .deleted
            .iter()
            .filter(|p| p.ends_with(".parquet"))
            .collect();
        assert_eq!(data.len(), 3, "{cleaned}: {:?}", cleaned.deleted);
        assert!(
            cleaned.deleted.iter().all(|p| !p.contains("compact-")),
            "{:?}",
            cleaned.deleted
        );
        // Every referenced file is still there, and the table reads the same.
        let table = lake.load().await;
        for file in referenced_files(&table).await.unwrap() {
            assert!(std::path::Path::new(&file).exists(), "{file} was deleted");
        }
        assert_eq!(lake.lake_state().await, state);
        assert_eq!(lake.lake_state().await, lake.expected());
        let again = clean_orphans(&lake.catalog, &lake.ident, &S3Config::default(), &options)
            .await
            .unwrap();
        assert_eq!(again.orphans_deleted, 0, "{again}");

        // The table keeps working: another flush and compaction.
        lake.flush(vec![d(DeltaOp::Delete, "a", "c1", T0 + 100, vec![])])
            .await;
        let report = lake.compact(&CompactionOptions::default()).await;
        assert_eq!(report.outcome, CompactionOutcome::Committed, "{report}");
        assert_eq!(lake.lake_state().await, lake.expected());
    }
}
