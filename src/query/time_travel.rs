//! Time travel and hot + cold reads: SQL over a table's state as of a moment, or over the
//! changes between two moments, rather than over its raw deltas.
//!
//! A [`LakeView`] says what each table name means in a query:
//! - [`LakeView::AsOf`]`{hlc: Some(h), ..}`: the rows as they were once every delta with
//!   HLC ≤ `h` was merged (column-level LWW, deleted rows left out): columns `_row_id`, `_hlc`
//!   (the newest HLC merged into the row), then the table's data columns;
//! - [`LakeView::AsOf`]`{snapshot: Some(id), ..}`: the same, from one Iceberg snapshot;
//! - [`LakeView::Latest`]: the same, from the current snapshot (and the hot tier, if any);
//! - [`LakeView::Changes`]`{from, to}`: the deltas with `from < hlc ≤ to`, in the delta contract
//!   (`_op` 1 INSERT, 2 UPDATE, 3 DELETE; `_row_id`, `_client_id`, `_hlc`, `_delta_id`, `_set`,
//!   data columns), oldest first.
//!
//! The rows come from the lake table's snapshot through [`read_table`]: the base rows a
//! compaction left (exact row state with every version key) and the deltas flushed since, and,
//! when a [`HotTier`] is given, from the hot side of a tier: the union of both, each delta once
//! (a delta the hot tier still holds after it was migrated counts once — by deltaId).
//!
//! **Compaction is a history horizon.** A compaction folds the deltas it read into base rows,
//! so the current snapshot can answer "as of HLC h" and "changes after h" exactly only for
//! `h` at or after the compaction's `lakesync.compacted-through-hlc`. Earlier moments are in the
//! snapshots before the compaction (until they are expired); a read that would need them is
//! refused with the command that reads them (`--snapshot <id> --as-of <h>`), never answered
//! from partial history.
//!
//! [`register`] computes the views for the tables a statement names and registers them as
//! in-memory tables of the session's default schema, so `SELECT … FROM tasks` reads the view,
//! while `lake.<namespace>.tasks` still reads the raw deltas.

use crate::adapters::iceberg::iceberg_error;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::UInt64Type;
use datafusion::catalog::MemTable;
use datafusion::prelude::SessionContext;
use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent, TableIdent};

use crate::adapters::iceberg::compact::{COMPACTED_THROUGH_PROPERTY, OPERATION_PROPERTY};
use crate::adapters::iceberg::read::{ReadOptions, read_table};
use crate::kernel::delta_batch::{DELTA_ID, HLC};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::merge::merge;
use crate::kernel::state::{DELETED, RESERVED as STATE_RESERVED};
use crate::{Error, Result};

/// What a table name means in a time-travel query (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LakeView {
    /// The current state (lake and hot tier).
    Latest,
    /// The state of one Iceberg snapshot (`None`: the current one), and of its deltas only
    /// those with HLC ≤ `hlc` when given.
    AsOf {
        /// The snapshot; the current one (plus the hot tier) when `None`.
        snapshot: Option<i64>,
        /// Merge only the deltas with HLC ≤ this.
        hlc: Option<u64>,
    },
    /// The deltas with `from < hlc ≤ to`.
    Changes {
        /// Exclusive lower bound.
        from: u64,
        /// Inclusive upper bound.
        to: u64,
    },
}

/// Deltas of the hot side of a tier, to read with the lake's (cold) deltas.
pub type HotTier = HashMap<String, Vec<RecordBatch>>;

/// Parses a moment given on the command line: a decimal HLC, or an RFC 3339 time (which means
/// every HLC of that millisecond and before: the wall clock with the largest counter).
pub fn parse_moment(text: &str) -> Result<u64> {
    let text = text.trim();
    if let Ok(hlc) = text.parse::<u64>() {
        return Ok(hlc);
    }
    let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| {
        Error::invalid(
            "time travel",
            format!("{text:?} is neither an HLC (a decimal number) nor an RFC 3339 time like 2026-11-27T10:00:00Z"),
        )
    })?;
    let ms = u64::try_from(time.timestamp_millis())
        .map_err(|_| Error::invalid("time travel", format!("{text:?} is before 1970")))?;
    HlcTimestamp::new(ms, u16::MAX)
        .map(|h| h.0)
        .map_err(|e| Error::invalid("time travel", format!("{text:?}: {e}")))
}

/// The newest compaction in the ancestry of `snapshot`: its snapshot id, its parent's, and the
/// highest HLC it compacted.
fn last_compaction(table: &Table, snapshot: i64) -> Option<(i64, Option<i64>, u64)> {
    let metadata = table.metadata();
    let mut next = metadata.snapshot_by_id(snapshot);
    while let Some(s) = next {
        let props = &s.summary().additional_properties;
        if props.get(OPERATION_PROPERTY).map(String::as_str) == Some("compact") {
            let through = props
                .get(COMPACTED_THROUGH_PROPERTY)
                .and_then(|h| h.parse().ok())
                .unwrap_or(u64::MAX);
            return Some((s.snapshot_id(), s.parent_snapshot_id(), through));
        }
        next = s
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p));
    }
    None
}

/// Refuses a read that needs deltas compaction has folded away: everything at or below
/// `from_hlc` (exclusive lower bound of what must be exact) is fine only when the snapshot's last
/// compaction went no further than `from_hlc`.
fn check_history(table: &Table, snapshot: Option<i64>, from_hlc: u64, what: &str) -> Result<()> {
    let Some(snapshot) = snapshot else {
        return Ok(());
    };
    if let Some((compaction, parent, through)) = last_compaction(table, snapshot)
        && from_hlc < through
    {
        let before = parent.map_or_else(
            || "no earlier snapshot is kept".to_string(),
            |p| format!("read the snapshot before it with --snapshot {p}"),
        );
        return Err(Error::invalid(
            "time travel",
            format!(
                "table {} was compacted through HLC {through} (snapshot {compaction}), so {what}                  is no longer in its current snapshot; {before}, or ask for a moment at or after                  HLC {through}",
                table.identifier()
            ),
        ));
    }
    Ok(())
}

/// Keeps the deltas of `batches` with `lo < hlc ≤ hi` whose deltaId is not in `seen` (adding
/// the kept ones to it).
fn fresh(
    batches: &[RecordBatch],
    lo: Option<u64>,
    hi: Option<u64>,
    seen: &mut HashSet<[u8; 32]>,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for batch in batches {
        let hlcs = batch
            .column_by_name(HLC)
            .and_then(|c| c.as_primitive_opt::<UInt64Type>())
            .ok_or_else(|| Error::schema("a delta batch without a UInt64 _hlc"))?;
        let ids = batch
            .column_by_name(DELTA_ID)
            .and_then(|c| c.as_fixed_size_binary_opt())
            .ok_or_else(|| Error::schema("a delta batch without a 32-byte _delta_id"))?;
        let keep: arrow::array::BooleanArray = (0..batch.num_rows())
            .map(|i| {
                let h = hlcs.value(i);
                let in_window = lo.is_none_or(|lo| h > lo) && hi.is_none_or(|hi| h <= hi);
                let id: [u8; 32] = ids.value(i).try_into().unwrap_or([0; 32]);
                Some(in_window && seen.insert(id))
            })
            .collect();
        let kept = filter_record_batch(batch, &keep)?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
    }
    Ok(out)
}

/// The live rows of a state batch as the state view: `_row_id`, `_hlc`, data columns.
fn state_view(state: &RecordBatch) -> Result<RecordBatch> {
    let deleted = state
        .column_by_name(DELETED)
        .map(|c| c.as_boolean().clone())
        .ok_or_else(|| Error::internal("state without _deleted"))?;
    let live = filter_record_batch(state, &arrow::compute::not(&deleted)?)?;
    let mut keep = vec![0, 1];
    keep.extend(STATE_RESERVED..live.num_columns());
    Ok(live.project(&keep)?)
}

/// Sorts a delta batch by `_hlc` (the changes view is oldest first).
fn by_hlc(batch: &RecordBatch) -> Result<RecordBatch> {
    let hlcs = batch
        .column_by_name(HLC)
        .ok_or_else(|| Error::schema("a delta batch without _hlc"))?;
    let order = arrow::compute::sort_to_indices(hlcs, None, None)?;
    Ok(arrow::compute::take_record_batch(batch, &order)?)
}

/// The view `view` of the lake table `ident`, with `hot` deltas of the same table added.
pub async fn table_view(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    view: LakeView,
    hot: &[RecordBatch],
) -> Result<RecordBatch> {
    let table = catalog
        .load_table(ident)
        .await
        .map_err(|e| iceberg_error(format!("loading lake table {ident}"), e))?;
    let (snapshot, hlc_filter, skip_base) = match view {
        LakeView::Latest => (None, None, false),
        LakeView::AsOf { snapshot, hlc } => (snapshot, hlc.map(|h| (0, h)), false),
        LakeView::Changes { from, to } => {
            if from >= to {
                return Err(Error::invalid(
                    "time travel",
                    format!("the changes window is empty: from {from} is not before to {to}"),
                ));
            }
            (None, Some((from, to)), true)
        }
    };
    let rows = read_table(
        &table,
        ReadOptions {
            snapshot,
            hlc_filter,
            skip_base,
        },
    )
    .await?;
    match view {
        LakeView::AsOf { hlc: Some(h), .. } => check_history(
            &table,
            rows.snapshot_id,
            h,
            &format!("the state as of HLC {h}"),
        )?,
        LakeView::Changes { from, .. } => check_history(
            &table,
            rows.snapshot_id,
            from,
            &format!("every change after HLC {from}"),
        )?,
        _ => {}
    }
    let (lo, hi) = match hlc_filter {
        Some((lo, hi)) => (Some(lo), Some(hi)),
        None => (None, None),
    };
    let mut seen = HashSet::new();
    let mut deltas = fresh(&rows.deltas, None, None, &mut seen)?;
    // A named snapshot is the lake's past: the hot tier's present does not belong in it.
    if !matches!(
        view,
        LakeView::AsOf {
            snapshot: Some(_),
            ..
        }
    ) {
        deltas.extend(fresh(hot, lo, hi, &mut seen)?);
    }
    let schema = &rows.schema;
    match view {
        LakeView::Changes { .. } => {
            let schema_ref = crate::kernel::delta_batch::delta_schema(schema);
            let aligned = deltas
                .iter()
                .map(|b| crate::gateway::push::conform(schema, b))
                .collect::<Result<Vec<_>>>()?;
            let all = arrow::compute::concat_batches(&schema_ref, &aligned)?;
            by_hlc(&all)
        }
        _ => state_view(&merge(schema, rows.base.as_ref(), &deltas)?),
    }
}

/// Registers the view `view` of every lake table `sql` names (unqualified or in `namespace`)
/// as an in-memory table of the session's default schema, which must be `namespace` of a
/// catalogue other than the lake's ([`super::view_session`] makes such a session). Tables the
/// lake does not hold are left for DataFusion to report.
pub async fn register(
    ctx: &SessionContext,
    catalog: &Arc<dyn Catalog>,
    namespace: &str,
    view: LakeView,
    hot: &HotTier,
    sql: &str,
) -> Result<()> {
    let state = ctx.state();
    let statement = state
        .sql_to_statement(sql, &datafusion::config::Dialect::Generic)
        .map_err(|e| Error::invalid("query", e))?;
    let references = state
        .resolve_table_references(&statement)
        .map_err(|e| Error::invalid("query", e))?;
    let ns = NamespaceIdent::new(namespace.to_string());
    let held: HashSet<String> = catalog
        .list_tables(&ns)
        .await
        .map_err(|e| iceberg_error(format!("listing the tables of namespace {namespace}"), e))?
        .into_iter()
        .map(|t| t.name().to_string())
        .collect();
    let mut done = HashSet::new();
    for reference in references {
        let name = reference.table().to_string();
        let ours =
            reference.catalog().is_none() && reference.schema().is_none_or(|s| s == namespace);
        if !ours || !held.contains(&name) || !done.insert(name.clone()) {
            continue;
        }
        let ident = TableIdent::new(ns.clone(), name.clone());
        let batch = table_view(
            catalog,
            &ident,
            view,
            hot.get(&name).map_or(&[], Vec::as_slice),
        )
        .await?;
        let provider = MemTable::try_new(batch.schema(), vec![vec![batch]])
            .map_err(|e| Error::internal(format!("an in-memory table for {name}: {e}")))?;
        ctx.register_table(name.as_str(), Arc::new(provider))
            .map_err(|e| Error::internal(format!("registering the view of {name}: {e}")))?;
        tracing::debug!(table = %name, ?view, "time-travel view registered");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_hlcs_or_rfc3339_times() {
        assert_eq!(parse_moment("12345").unwrap(), 12_345);
        let h = parse_moment("2026-11-27T10:00:00Z").unwrap();
        assert_eq!(HlcTimestamp(h).wall_ms(), 1_795_773_600_000);
        assert_eq!(h & 0xFFFF, 0xFFFF, "every HLC of that millisecond");
        let err = parse_moment("yesterday").unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        assert!(parse_moment("1969-12-31T23:59:59Z").is_err());
    }
}
