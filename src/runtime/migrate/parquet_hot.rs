//! Migration from a Parquet hot sink: every hot epoch file set whose deltas are *all* aged is
//! written to the cold sink, committed there as the same epoch number, then its files are
//! removed. An epoch with a young delta stays whole (Parquet files are not rewritten).
//!
//! A crash after the cold commit and before the removal leaves the files; the next migration
//! writes them again, the cold sink drops the commit as a replay of an epoch it holds, and the
//! files are removed then.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;

use super::{MigrateSummary, table_for};
use crate::adapters::hot::{parquet_hot_epochs, parquet_hot_prefix};
use crate::config::plan::Plan;
use crate::config::spec::ParquetSinkSpec;
use crate::kernel::delta_batch::HLC;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::parquet_io::read_parquet;
use crate::runtime::api::{Sink, TableRef};
use crate::{Error, Result, fs_error};

/// Moves the aged epochs of tier `tier`'s Parquet hot sink `hot` into `cold`.
pub(super) async fn migrate(
    plan: &Plan,
    tier: &str,
    hot: &ParquetSinkSpec,
    cold: &mut dyn Sink,
    tables: &[TableRef],
    cutoff_ms: u64,
    summary: &mut MigrateSummary,
) -> Result<()> {
    if hot.path.contains("://") {
        return Err(Error::invalid(
            "migrate",
            format!(
                "sinks.{tier}.hot.path: migration reads a local Parquet hot directory, not {:?}",
                hot.path
            ),
        ));
    }
    let root = plan.resolve_path(&hot.path);
    for (epoch, files) in parquet_hot_epochs(&root, &parquet_hot_prefix(plan, tier))? {
        let mut batches = Vec::new();
        for (table, path) in &files {
            let bytes = std::fs::read(path).map_err(|e| fs_error(path, e))?;
            for batch in read_parquet(bytes.into())? {
                batches.push((table.clone(), batch));
            }
        }
        if !batches.iter().all(|(_, b)| all_older(b, cutoff_ms)) {
            summary.kept += 1;
            continue;
        }
        for (table, batch) in batches {
            let schema = table_for(tables, &table)?;
            summary.deltas += batch.num_rows() as u64;
            cold.write(schema, batch).await?;
        }
        cold.commit(epoch).await?;
        for (_, path) in &files {
            std::fs::remove_file(path).map_err(|e| fs_error(path, e))?;
        }
        summary.epochs += 1;
        tracing::info!(tier = %tier, epoch, "migrated a hot epoch to the cold sink");
    }
    Ok(())
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
