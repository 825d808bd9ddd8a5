//! Migration from a SQL hot sink's delta log (SQLite, Postgres), in bounded epochs, exactly once
//! across crashes.
//!
//! One migration epoch `e` of tier `t`:
//! 1. **select** — in one hot transaction, record `e` as `selected` in `_lakesync_migrations`
//!    with the at most `batch_size` oldest logged deltas (by `(hlc, delta_id)`) whose HLC is below
//!    the cutoff, their deltaIds in `_lakesync_migrating`;
//! 2. **copy** — read exactly those deltas, write them to the cold sink and commit it as epoch
//!    `e` of pipeline `<pipeline>.migrate`;
//! 3. **finish** — in one hot transaction, delete those deltas from the log and mark `e` done.
//!
//! A crash before 2 completes leaves `e` selected: the next run copies the same set again (the
//! deltas are still logged; nothing but step 3 deletes them), and the cold sink commits what it
//! does not hold yet. A crash between 2 and 3 leaves `e` selected and committed cold: the next
//! run's commit of `e` is dropped as a replay and 3 runs. So every run first finishes a selected
//! epoch, then selects new ones numbered above both the last recorded epoch and the cold sink's
//! mark, until none is left. A delta is therefore in the cold sink once and leaves the hot log
//! only after it is there.

use std::collections::BTreeMap;

use super::{MigrateOptions, MigrateSummary, table_for};
use crate::adapters::hot::open_hot_log;
use crate::adapters::hot::tier_spec;
use crate::config::plan::Plan;
use crate::kernel::delta::RowDelta;
use crate::kernel::delta_batch::deltas_to_batch;
use crate::kernel::hlc::HlcTimestamp;
use crate::runtime::api::{Sink, TableRef};
use crate::{Error, Result};

/// Moves every logged delta of tier `tier` with an HLC below `cutoff` into `cold`.
pub(super) async fn migrate(
    plan: &Plan,
    tier: &str,
    cold: &mut dyn Sink,
    tables: &[TableRef],
    cutoff: HlcTimestamp,
    options: MigrateOptions,
    summary: &mut MigrateSummary,
) -> Result<()> {
    let spec = tier_spec(plan, tier)?;
    let Some(mut log) = open_hot_log(plan, tier, &spec.hot).await? else {
        return Ok(());
    };
    let batch_size = options.batch_size.max(1);
    if let Some(pending) = log.pending(tier).await? {
        tracing::info!(tier = %tier, epoch = pending.epoch, "finishing an interrupted migration epoch");
        let deltas = log.selected(tier, pending.epoch).await?;
        copy(cold, tables, pending.epoch, deltas, summary).await?;
        log.finish(tier, pending.epoch).await?;
        summary.resumed += 1;
    }
    loop {
        let recorded = log.last_epoch(tier).await?;
        let held = cold.committed_epoch().await?;
        let epoch = recorded.max(held).unwrap_or(0) + 1;
        let selected = log.select(tier, epoch, cutoff, batch_size).await?;
        if selected == 0 {
            break;
        }
        let deltas = log.selected(tier, epoch).await?;
        if deltas.len() as u64 != selected {
            return Err(Error::internal(format!(
                "{}: migration epoch {epoch} selected {selected} deltas but reads back {}",
                log.describe(),
                deltas.len()
            )));
        }
        copy(cold, tables, epoch, deltas, summary).await?;
        let deleted = log.finish(tier, epoch).await?;
        tracing::info!(tier = %tier, epoch, deltas = selected, deleted, "migrated aged deltas to the cold sink");
    }
    Ok(())
}

/// Writes `deltas` to `cold`, one batch per table, and commits them as `epoch`.
async fn copy(
    cold: &mut dyn Sink,
    tables: &[TableRef],
    epoch: u64,
    deltas: Vec<RowDelta>,
    summary: &mut MigrateSummary,
) -> Result<()> {
    let count = deltas.len() as u64;
    let mut by_table: BTreeMap<String, Vec<RowDelta>> = BTreeMap::new();
    for delta in deltas {
        by_table.entry(delta.table.clone()).or_default().push(delta);
    }
    for (name, deltas) in by_table {
        let schema = table_for(tables, &name)?;
        let batch = deltas_to_batch(schema, &deltas).map_err(|e| {
            Error::schema(format!(
                "migration epoch {epoch}: hot deltas of table {name:?}: {e}"
            ))
        })?;
        cold.write(schema, batch).await?;
    }
    cold.commit(epoch).await?;
    summary.epochs += 1;
    summary.deltas += count;
    Ok(())
}
