//! The hot side of a `tier` sink, read back: what it holds now ([`hot_deltas`]), and the
//! [`HotLog`] contract through which `lakesync migrate` moves aged deltas out of a SQL hot sink.
//!
//! **What a hot sink holds.** A SQL hot sink (SQLite, Postgres) keeps every delta it was given
//! in its delta log, `lakesync_deltas`; a Parquet hot sink keeps one file per table per epoch,
//! `<root>/<table>/<pipeline>-<tier>.hot-<epoch>.parquet`. [`hot_deltas`] returns either as delta
//! batches in the Arrow delta contract (`lakesync_operators::delta_batch`), so a query can take
//! *hot ∪ cold*: every delta is in exactly one of the two at any moment a migration is not
//! running, and a delta caught mid-migration (committed cold, not yet deleted hot) is in both
//! with the same deltaId, so a union that keeps one row per deltaId is always exact.
//!
//! **Migrating a delta log** ([`HotLog`]) is a two-phase move recorded in the hot database
//! itself:
//! - `_lakesync_migrations(tier, epoch, cutoff_hlc, deltas, state)`: one row per migration epoch,
//!   `selected` until its deltas are gone from the log, then `done`;
//! - `_lakesync_migrating(tier, delta_id, epoch)`: the exact deltaIds a `selected` epoch moves.
//!
//! [`HotLog::select`] records an epoch and its deltas (at most `limit` of them, oldest first by
//! `(hlc, delta_id)`, HLC below the cutoff) in one transaction, so the set is fixed before any of
//! it is written cold: a re-run reads the identical set, whatever has been logged since.
//! [`HotLog::finish`] deletes exactly that set from the log and marks the epoch done, again in
//! one transaction. Between the two the caller commits the set to the cold sink as that epoch;
//! the cold sink's epoch marks make a repeated commit a no-op. See
//! [`crate::runtime::migrate`] for the whole protocol.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use async_trait::async_trait;

use crate::adapters::postgres::hot::PostgresHotLog;
use crate::adapters::sqlite::hot::SqliteHotLog;
use crate::config::plan::Plan;
use crate::config::spec::{SinkSpec, TierSinkSpec};
use crate::kernel::delta::RowDelta;
use crate::kernel::delta_batch::deltas_to_batch;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::parquet_io::read_parquet;
use crate::kernel::schema::TableSchema;
use crate::{Error, Result, fs_error};

/// A `selected` migration epoch: recorded, its deltas fixed, not yet deleted from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingMigration {
    /// The epoch the cold sink commits the deltas as.
    pub epoch: u64,
    /// Only deltas with an HLC below this were selected.
    pub cutoff: HlcTimestamp,
}

/// A hot delta log that a migration can move deltas out of: see the [module docs](self).
///
/// Implemented for the SQLite and Postgres logs; every call is its own transaction.
#[async_trait]
pub trait HotLog: Send {
    /// Where the log is, for messages.
    fn describe(&self) -> String;

    /// Every logged delta of log table `table` (a schema's `delta_table()`), oldest first by
    /// `(hlc, delta_id)`.
    async fn deltas(&mut self, table: &str) -> Result<Vec<RowDelta>>;

    /// The `selected` epoch of `tier`, if one was recorded and not finished.
    async fn pending(&mut self, tier: &str) -> Result<Option<PendingMigration>>;

    /// The newest epoch ever recorded for `tier`.
    async fn last_epoch(&mut self, tier: &str) -> Result<Option<u64>>;

    /// Records epoch `epoch` of `tier` as `selected` together with the at most `limit` oldest
    /// logged deltas (by `(hlc, delta_id)`) whose HLC is below `cutoff`; returns how many were
    /// selected. Selecting none records nothing.
    async fn select(
        &mut self,
        tier: &str,
        epoch: u64,
        cutoff: HlcTimestamp,
        limit: usize,
    ) -> Result<u64>;

    /// The deltas selected for `epoch` of `tier`, oldest first by `(hlc, delta_id)`.
    async fn selected(&mut self, tier: &str, epoch: u64) -> Result<Vec<RowDelta>>;

    /// Deletes the deltas selected for `epoch` of `tier` from the log and marks the epoch done;
    /// returns how many were deleted.
    async fn finish(&mut self, tier: &str, epoch: u64) -> Result<u64>;
}

/// Opens the delta log of a tier's hot sink `hot` (of tier `name`); `None` when the hot sink
/// keeps no delta log (Parquet) or its database does not exist yet (a SQLite file never
/// written). MySQL, Iceberg and nested tiers are refused.
pub async fn open_hot_log(
    plan: &Plan,
    name: &str,
    hot: &SinkSpec,
) -> Result<Option<Box<dyn HotLog>>> {
    Ok(match hot {
        SinkSpec::Sqlite(s) => {
            let path = plan.resolve_path(&s.path);
            if !path.exists() {
                return Ok(None);
            }
            Some(Box::new(
                SqliteHotLog::open(&path, &plan.name, &format!("{name}.hot")).await?,
            ))
        }
        SinkSpec::Postgres(s) => Some(Box::new(
            PostgresHotLog::open(&s.url, &s.schema, &plan.name, &format!("{name}.hot")).await?,
        )),
        SinkSpec::Parquet(_) => None,
        other => {
            return Err(Error::invalid(
                "tier",
                format!(
                    "sinks.{name}.hot: a {} hot sink cannot be read back or migrated (use sqlite, postgres or parquet)",
                    other.type_name()
                ),
            ));
        }
    })
}

/// The delta batches (Arrow delta contract, one or more per call) of `table` that tier sink
/// `tier` of `plan` currently holds on its hot side: the SQLite or Postgres delta log, or the
/// Parquet hot files. Deltas are oldest first within a log; empty when nothing is hot.
///
/// Together with a scan of the cold sink this gives *hot ∪ cold* (see the [module docs](self)
/// for why a union by deltaId is exact even while a migration runs). Batches read from Parquet
/// files written before a schema evolution carry fewer trailing columns, as the delta contract
/// allows.
pub async fn hot_deltas(plan: &Plan, tier: &str, table: &TableSchema) -> Result<Vec<RecordBatch>> {
    let spec = tier_spec(plan, tier)?;
    if let SinkSpec::Parquet(p) = spec.hot.as_ref() {
        let root = plan.resolve_path(&p.path);
        let mut out = Vec::new();
        for files in parquet_hot_epochs(&root, &parquet_hot_prefix(plan, tier))?.into_values() {
            for (name, path) in files.iter().filter(|(name, _)| *name == table.table) {
                let bytes = std::fs::read(path).map_err(|e| fs_error(path, e))?;
                tracing::trace!(table = %name, file = %path.display(), "read a hot file");
                out.extend(read_parquet(bytes.into())?);
            }
        }
        return Ok(out);
    }
    let Some(mut log) = open_hot_log(plan, tier, &spec.hot).await? else {
        return Ok(Vec::new());
    };
    let deltas = log.deltas(table.delta_table()).await?;
    if deltas.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![deltas_to_batch(table, &deltas).map_err(|e| {
        Error::schema(format!(
            "{}: hot deltas of table {:?}: {e}",
            log.describe(),
            table.table
        ))
    })?])
}

/// The tier sink `tier` of `plan`.
pub(crate) fn tier_spec<'a>(plan: &'a Plan, tier: &str) -> Result<&'a TierSinkSpec> {
    match plan.sinks.get(tier) {
        Some(SinkSpec::Tier(spec)) => Ok(spec),
        Some(_) => Err(Error::invalid(
            "tier",
            format!(
                "sinks.{tier} of pipeline {:?} is not a tier sink",
                plan.name
            ),
        )),
        None => Err(Error::invalid(
            "tier",
            format!("pipeline {:?} has no sink named {tier:?}", plan.name),
        )),
    }
}

/// The file-name prefix of tier `tier`'s Parquet hot files: `<pipeline>-<tier>.hot-`.
pub(crate) fn parquet_hot_prefix(plan: &Plan, tier: &str) -> String {
    format!("{}-{tier}.hot-", plan.name)
}

/// Parquet hot files by epoch: `<root>/<table>/<prefix><epoch>.parquet`, as (table, path).
pub(crate) fn parquet_hot_epochs(
    root: &Path,
    prefix: &str,
) -> Result<BTreeMap<u64, Vec<(String, PathBuf)>>> {
    let mut epochs: BTreeMap<u64, Vec<(String, PathBuf)>> = BTreeMap::new();
    let Ok(tables) = std::fs::read_dir(root) else {
        return Ok(epochs);
    };
    for table in tables.flatten().filter(|e| e.path().is_dir()) {
        let name = table.file_name().to_string_lossy().to_string();
        for file in std::fs::read_dir(table.path())
            .map_err(|e| fs_error(&table.path(), e))?
            .flatten()
        {
            let file_name = file.file_name().to_string_lossy().to_string();
            let epoch = file_name
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(".parquet"))
                .and_then(|e| e.parse::<u64>().ok());
            if let Some(epoch) = epoch {
                epochs
                    .entry(epoch)
                    .or_default()
                    .push((name.clone(), file.path()));
            }
        }
    }
    Ok(epochs)
}
