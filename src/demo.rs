//! `lakesync demo`: the kernel end to end on a synthetic workload, with no servers.
//!
//! Many clients edit a `tasks` table offline and concurrently. The demo stamps their changes as
//! deltas (HLC + deltaId), converts them to the Arrow delta contract in batches, folds them
//! batch by batch into row state with the LWW merge kernel, checks the result equals a one-shot
//! merge, evaluates the sync rules in `examples/sync-rules.json` for a few clients, and writes
//! the deltas and the state as Parquet files that any Parquet reader can open.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;

use crate::kernel::delta_batch::{delta_schema, deltas_to_batch};
use crate::kernel::merge::merge;
use crate::kernel::parquet_io::{read_parquet, write_parquet};
use crate::kernel::rules::{Claims, ClientFilter, SyncRules};
use crate::kernel::state::DELETED;
use crate::synth::{Workload, tasks_schema};
use crate::{Error, Result, fs_error};

/// The sync rules the demo evaluates.
pub const DEMO_RULES: &str = include_str!("../examples/sync-rules.json");

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of deltas to generate.
    pub deltas: usize,
    /// Number of distinct rows.
    pub rows: usize,
    /// Number of writers.
    pub clients: usize,
    /// Deltas per Arrow batch.
    pub batch_size: usize,
    /// Where the Parquet files go.
    pub out_dir: PathBuf,
}

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// Deltas generated and merged.
    pub deltas: usize,
    /// Rows in the merged state.
    pub rows: usize,
    /// Of those, tombstones.
    pub deleted: usize,
    /// (client description, visible rows) per example client.
    pub visible: Vec<(String, usize)>,
    /// Files written, with their sizes in bytes.
    pub files: Vec<(PathBuf, usize)>,
    /// Time to stamp the deltas (HLC + deltaId).
    pub stamp: Duration,
    /// Time to build Arrow batches.
    pub to_arrow: Duration,
    /// Time for the incremental merge.
    pub merge: Duration,
}

/// Runs the demo.
pub fn run(options: &DemoOptions) -> Result<DemoSummary> {
    let table = tasks_schema();
    let started = Instant::now();
    let deltas =
        Workload::new(options.rows, options.clients, 42).deltas(options.deltas, 1_767_225_600_000);
    let stamp = started.elapsed();

    let started = Instant::now();
    let batches = deltas
        .chunks(options.batch_size.max(1))
        .map(|chunk| deltas_to_batch(&table, chunk))
        .collect::<Result<Vec<_>>>()?;
    let to_arrow = started.elapsed();

    let started = Instant::now();
    let mut state: Option<RecordBatch> = None;
    for batch in &batches {
        state = Some(merge(&table, state.as_ref(), std::slice::from_ref(batch))?);
    }
    let merge_time = started.elapsed();
    let state = match state {
        Some(s) => s,
        None => merge(&table, None, &[])?,
    };
    let one_shot = merge(&table, None, &batches)?;
    if one_shot.num_rows() != state.num_rows() {
        return Err(Error::internal("incremental and one-shot merges disagree"));
    }

    let deleted = state
        .column_by_name(DELETED)
        .map(|c| c.as_boolean().true_count())
        .unwrap_or(0);
    let rules = SyncRules::from_json(DEMO_RULES)?;
    let clients = [
        (
            "user-1 in team payments",
            Claims::new()
                .with("sub", ["user-1"])
                .with("team", ["payments"]),
        ),
        (
            "user-2 in teams search and mobile",
            Claims::new()
                .with("sub", ["user-2"])
                .with("team", ["search", "mobile"]),
        ),
        ("user-3 with no team", Claims::new().with("sub", ["user-3"])),
    ];
    let mut visible = Vec::new();
    for (who, claims) in clients {
        let mask = ClientFilter::new(&rules, &claims).matches(&table.table, &state)?;
        visible.push((who.to_string(), mask.true_count()));
    }

    std::fs::create_dir_all(&options.out_dir).map_err(|e| fs_error(&options.out_dir, e))?;
    let mut files = Vec::new();
    let all_deltas = concat_batches(&delta_schema(&table), &batches)?;
    for (name, batch) in [
        ("tasks.deltas.parquet", &all_deltas),
        ("tasks.state.parquet", &state),
    ] {
        let bytes = write_parquet(std::slice::from_ref(batch))?;
        let path = options.out_dir.join(name);
        std::fs::write(&path, &bytes).map_err(|e| fs_error(&path, e))?;
        let back: usize = read_parquet(bytes.clone())?
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        if back != batch.num_rows() {
            return Err(Error::internal(format!(
                "{} read back {back} rows of {}",
                path.display(),
                batch.num_rows()
            )));
        }
        files.push((path, bytes.len()));
    }

    Ok(DemoSummary {
        deltas: deltas.len(),
        rows: state.num_rows(),
        deleted,
        visible,
        files,
        stamp,
        to_arrow,
        merge: merge_time,
    })
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        writeln!(f, "LakeSync kernel demo")?;
        writeln!(
            f,
            "  deltas stamped (HLC + deltaId): {:>9}  {:>12.0} deltas/s",
            self.deltas,
            rate(self.deltas, self.stamp)
        )?;
        writeln!(
            f,
            "  Arrow delta batches built:      {:>9}  {:>12.0} deltas/s",
            self.deltas,
            rate(self.deltas, self.to_arrow)
        )?;
        writeln!(
            f,
            "  merged (incremental LWW):       {:>9}  {:>12.0} deltas/s",
            self.deltas,
            rate(self.deltas, self.merge)
        )?;
        writeln!(
            f,
            "  rows in state: {} ({} live, {} deleted)",
            self.rows,
            self.rows - self.deleted,
            self.deleted
        )?;
        writeln!(
            f,
            "  sync rules (examples/sync-rules.json), rows each client may see:"
        )?;
        for (who, n) in &self.visible {
            writeln!(f, "    {who:<36} {n:>8}")?;
        }
        for (path, size) in &self.files {
            writeln!(f, "  wrote {} ({size} bytes)", path.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_runs_and_is_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let summary = run(&DemoOptions {
            deltas: 5_000,
            rows: 500,
            clients: 6,
            batch_size: 700,
            out_dir: dir.path().into(),
        })
        .unwrap();
        assert_eq!(summary.deltas, 5_000);
        assert_eq!(summary.rows, 500);
        assert!(summary.deleted > 0 && summary.deleted < 500);
        // user-3 has no team claim: only their own urgent tasks, fewer than a whole team.
        assert!(summary.visible[2].1 < summary.visible[0].1);
        assert!(summary.visible[1].1 > summary.visible[0].1);
        assert_eq!(summary.files.len(), 2);
    }
}
