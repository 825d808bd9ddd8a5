//! `lakesync migrate`: moves data that has aged out of a tier's hot sink into its cold sink,
//! exactly once.
//!
//! A `tier` sink routes deltas by age as they are written; data written hot stays hot until it
//! is migrated. A delta is *aged* when its HLC wall time is older than `now - max_age`. How it
//! moves depends on the hot sink:
//!
//! - **SQLite or Postgres** ([`log_hot`]): every aged delta of the delta log `lakesync_deltas`
//!   moves, in epochs of at most [`MigrateOptions::batch_size`] deltas (memory is bounded by the
//!   batch, not the log). Materialised hot tables are refused: they are rebuilt from the whole
//!   logged history of a row, which migration would cut short.
//! - **Parquet** ([`parquet_hot`]): every hot epoch file set whose deltas are *all* aged moves
//!   whole; an epoch with a young delta stays.
//!
//! **Exactly once.** The cold sink commits each migration epoch under the pipeline name
//! `<pipeline>.migrate` (sink name `<tier>.cold`), so its own epoch marks tell what it already
//! holds: committing an epoch it holds is a no-op. The hot side is cleared only after the cold
//! commit. A crash between the two leaves the epoch in both places; the next migration first
//! finishes it (its cold commit is dropped as a replay, then the hot side is cleared), and only
//! then starts new epochs. For a delta log the set of deltas an epoch moves is recorded in the
//! hot database before anything is written cold, so a re-run moves the identical set.
//!
//! Run one migration per tier at a time (from cron or a timer); the pipeline itself may keep
//! running and writing to the hot sink meanwhile.

pub mod log_hot;
pub mod parquet_hot;

use std::sync::Arc;

use crate::adapters::hot::tier_spec;
use crate::build::build_sink;
use crate::config::plan::Plan;
use crate::config::spec::SinkSpec;
use crate::kernel::hlc::HlcTimestamp;
use crate::runtime::api::{Sink, TableRef};
use crate::{Error, Result};

/// Deltas per migration epoch by default.
pub const DEFAULT_BATCH_SIZE: usize = 10_000;

/// How a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Most deltas one migration epoch of a delta log moves (and holds in memory).
    pub batch_size: usize,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// What one tier's migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateSummary {
    /// The tier sink.
    pub tier: String,
    /// Migration epochs committed to the cold sink (and cleared from the hot sink).
    pub epochs: u64,
    /// Deltas moved.
    pub deltas: u64,
    /// Of `epochs`, those an earlier, interrupted migration had started and this one finished.
    pub resumed: u64,
    /// Parquet hot epochs left in place because some of their deltas are still young.
    pub kept: u64,
}

impl std::fmt::Display for MigrateSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tier {}: moved {} deltas in {} epochs to the cold sink",
            self.tier, self.deltas, self.epochs
        )?;
        if self.resumed > 0 {
            write!(f, " ({} resumed from an interrupted run)", self.resumed)?;
        }
        if self.kept > 0 {
            write!(f, "; {} epochs still hot", self.kept)?;
        }
        writeln!(f)
    }
}

/// Migrates every tier sink of `plan` with the default options, measuring age against
/// `now_ms`.
pub async fn migrate(plan: &Plan, now_ms: u64) -> Result<Vec<MigrateSummary>> {
    migrate_with(plan, now_ms, MigrateOptions::default()).await
}

/// Migrates every tier sink of `plan`, measuring age against `now_ms`.
pub async fn migrate_with(
    plan: &Plan,
    now_ms: u64,
    options: MigrateOptions,
) -> Result<Vec<MigrateSummary>> {
    let mut summaries = Vec::new();
    for (name, spec) in plan.sinks.iter() {
        if !matches!(spec, SinkSpec::Tier(_)) {
            continue;
        }
        check_migratable(plan, name)?;
        let cold = open_cold(plan, name).await?;
        summaries.push(migrate_tier(plan, name, cold, now_ms, options).await?);
    }
    Ok(summaries)
}

/// Opens tier `tier`'s cold sink as migration writes to it: pipeline `<pipeline>.migrate`, sink
/// `<tier>.cold`.
pub async fn open_cold(plan: &Plan, tier: &str) -> Result<Box<dyn Sink>> {
    let spec = tier_spec(plan, tier)?;
    build_sink(
        plan,
        &format!("{}.migrate", plan.name),
        &format!("{tier}.cold"),
        &spec.cold,
    )
    .await
}

/// Migrates tier sink `tier` of `plan` into `cold` (normally [`open_cold`]; a test may wrap it),
/// measuring age against `now_ms`.
pub async fn migrate_tier(
    plan: &Plan,
    tier: &str,
    mut cold: Box<dyn Sink>,
    now_ms: u64,
    options: MigrateOptions,
) -> Result<MigrateSummary> {
    check_migratable(plan, tier)?;
    let spec = tier_spec(plan, tier)?;
    let cutoff_ms =
        now_ms.saturating_sub(u64::try_from(spec.max_age.0.as_millis()).unwrap_or(u64::MAX));
    let tables: Vec<TableRef> = plan.tables.iter().map(|t| Arc::new(t.clone())).collect();
    cold.prepare(&tables).await?;
    let mut summary = MigrateSummary {
        tier: tier.to_string(),
        ..Default::default()
    };
    match spec.hot.as_ref() {
        SinkSpec::Parquet(hot) => {
            parquet_hot::migrate(
                plan,
                tier,
                hot,
                cold.as_mut(),
                &tables,
                cutoff_ms,
                &mut summary,
            )
            .await?;
        }
        _ => {
            let cutoff = HlcTimestamp::new(cutoff_ms, 0).map_err(|e| {
                Error::invalid("migrate", format!("sinks.{tier}: the cutoff time: {e}"))
            })?;
            log_hot::migrate(
                plan,
                tier,
                cold.as_mut(),
                &tables,
                cutoff,
                options,
                &mut summary,
            )
            .await?;
        }
    }
    Ok(summary)
}

/// Refuses tiers whose hot sink migration cannot clear without losing or corrupting anything.
fn check_migratable(plan: &Plan, tier: &str) -> Result<()> {
    let spec = tier_spec(plan, tier)?;
    let materialised = match spec.hot.as_ref() {
        SinkSpec::Sqlite(s) => s.materialise,
        SinkSpec::Postgres(s) => s.materialise,
        SinkSpec::Parquet(_) => false,
        other => {
            return Err(Error::invalid(
                "migrate",
                format!(
                    "sinks.{tier}.hot: a {} hot sink cannot be migrated (use sqlite, postgres or parquet)",
                    other.type_name()
                ),
            ));
        }
    };
    if materialised {
        return Err(Error::invalid(
            "migrate",
            format!(
                "sinks.{tier}.hot: set `materialise: false` on a hot sink to migrate it: a materialised \
                 table is rebuilt from the whole logged history of each row it touches, so removing aged \
                 history from the log would corrupt rows written again later"
            ),
        ));
    }
    Ok(())
}

/// The pipeline table that log table `name` (a delta's table) belongs to: the table of that
/// name, else the one whose `sourceTable` it is.
pub(crate) fn table_for<'a>(tables: &'a [TableRef], name: &str) -> Result<&'a TableRef> {
    tables
        .iter()
        .find(|t| t.table == name)
        .or_else(|| tables.iter().find(|t| t.delta_table() == name))
        .ok_or_else(|| {
            Error::invalid(
                "migrate",
                format!("hot data of table {name:?}, which the pipeline does not declare"),
            )
        })
}
