//! `lakesync migrate`: moves data that has aged out of a tier's hot sink into its cold sink.
//!
//! A `tier` sink routes deltas by age as they are written; data written hot stays hot. Migration
//! moves it later: for a tier whose hot sink is a Parquet sink, every epoch file set of the hot
//! tier whose deltas are *all* older than the tier's `max_age` is written to the cold sink and
//! committed there, then removed from the hot tier.
//!
//! Exactly once: the cold sink commits each migrated epoch under the pipeline name
//! `<pipeline>.migrate` with the hot epoch's number, so its own epoch marks tell what it already
//! holds. If a crash comes after the cold commit and before the hot files are removed, the next
//! migration's commit is dropped as a replay and the hot files are removed then. Hot sinks of
//! other kinds (SQLite, Iceberg) are refused with a clear error: their files cannot be removed
//! epoch by epoch without rewriting history.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;

use crate::build::build_sink;
use crate::config::plan::Plan;
use crate::config::spec::SinkSpec;
use crate::kernel::delta_batch::HLC;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::parquet_io::read_parquet;
use crate::runtime::api::TableRef;
use crate::{Error, Result, fs_error};

/// What one tier's migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateSummary {
    /// The tier sink.
    pub tier: String,
    /// Hot epochs moved to the cold sink.
    pub epochs: u64,
    /// Deltas moved.
    pub deltas: u64,
    /// Hot epochs left in place because some of their deltas are still young.
    pub kept: u64,
}

impl std::fmt::Display for MigrateSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "tier {}: moved {} deltas in {} epochs to the cold sink; {} epochs still hot",
            self.tier, self.deltas, self.epochs, self.kept
        )
    }
}

/// Migrates every tier sink of `plan`, measuring age against `now_ms`.
pub async fn migrate(plan: &Plan, now_ms: u64) -> Result<Vec<MigrateSummary>> {
    let mut summaries = Vec::new();
    for (name, spec) in plan.sinks.iter() {
        let SinkSpec::Tier(tier) = spec else { continue };
        let SinkSpec::Parquet(hot) = tier.hot.as_ref() else {
            return Err(Error::invalid(
                "migrate",
                format!(
                    "sinks.{name}.hot: migration needs a parquet hot sink (SQLite and Iceberg hot tiers cannot drop history epoch by epoch)"
                ),
            ));
        };
        let root = plan.resolve_path(&hot.path);
        let prefix = format!("{}-{name}.hot-", plan.name);
        let cutoff = now_ms.saturating_sub(tier.max_age.0.as_millis() as u64);
        let mut summary = MigrateSummary {
            tier: name.to_string(),
            ..Default::default()
        };
        let epochs = hot_epochs(&root, &prefix)?;
        if epochs.is_empty() {
            summaries.push(summary);
            continue;
        }
        let migration = format!("{}.migrate", plan.name);
        let mut cold = build_sink(plan, &migration, &format!("{name}.cold"), &tier.cold).await?;
        let tables: Vec<TableRef> = plan.tables.iter().map(|t| Arc::new(t.clone())).collect();
        cold.prepare(&tables).await?;
        for (epoch, files) in epochs {
            let mut batches = Vec::new();
            for (table, path) in &files {
                let bytes = std::fs::read(path).map_err(|e| fs_error(path, e))?;
                for batch in read_parquet(bytes.into())? {
                    batches.push((table.clone(), batch));
                }
            }
            if !batches.iter().all(|(_, b)| all_older(b, cutoff)) {
                summary.kept += 1;
                continue;
            }
            for (table, batch) in batches {
                let schema = tables.iter().find(|t| t.table == table).ok_or_else(|| {
                    Error::invalid(
                        "migrate",
                        format!("hot file of table {table:?}, which the pipeline does not declare"),
                    )
                })?;
                summary.deltas += batch.num_rows() as u64;
                cold.write(schema, batch).await?;
            }
            cold.commit(epoch).await?;
            for (_, path) in &files {
                std::fs::remove_file(path).map_err(|e| fs_error(path, e))?;
            }
            summary.epochs += 1;
            tracing::info!(tier = %name, epoch, "migrated a hot epoch to the cold sink");
        }
        summaries.push(summary);
    }
    Ok(summaries)
}

/// Hot files by epoch: `<root>/<table>/<prefix><epoch>.parquet`.
fn hot_epochs(root: &Path, prefix: &str) -> Result<BTreeMap<u64, Vec<(String, PathBuf)>>> {
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

fn all_older(batch: &RecordBatch, cutoff_ms: u64) -> bool {
    batch
        .column_by_name(HLC)
        .and_then(|c| c.as_primitive_opt::<UInt64Type>())
        .is_some_and(|hlc| {
            hlc.values()
                .iter()
                .all(|&h| HlcTimestamp(h).wall_ms() < cutoff_ms)
        })
}
