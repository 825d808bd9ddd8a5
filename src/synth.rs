//! Synthetic deltas: realistic, reproducible workloads for the demo and the benchmarks.
//!
//! A workload is a set of clients editing rows of a `tasks` table offline and concurrently:
//! inserts, column-level updates (often of the same row by several clients, with HLC ties),
//! deletes and resurrections. A small deterministic generator (SplitMix64) makes every run with
//! the same seed produce the same deltas, and so the same deltaIds.

use serde_json::{Value, json};

use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};

/// The schema of the synthetic `tasks` table.
pub fn tasks_schema() -> TableSchema {
    TableSchema::new(
        "tasks",
        vec![
            ColumnDef::new("title", ColumnType::String),
            ColumnDef::new("owner", ColumnType::String),
            ColumnDef::new("team", ColumnType::String),
            ColumnDef::new("priority", ColumnType::Integer),
            ColumnDef::new("estimate", ColumnType::Number),
            ColumnDef::new("done", ColumnType::Boolean),
            ColumnDef::new("due", ColumnType::Timestamp),
            ColumnDef::new("labels", ColumnType::Json),
        ],
    )
}

/// The teams rows are spread over.
pub const TEAMS: [&str; 4] = ["payments", "search", "mobile", "infra"];

/// A reproducible workload generator.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Number of distinct rows.
    pub rows: usize,
    /// Number of writers.
    pub clients: usize,
    /// Fraction of deltas that are deletes, in per mille.
    pub delete_per_mille: u64,
    state: u64,
}

impl Workload {
    /// A workload over `rows` rows and `clients` writers, seeded with `seed`.
    pub fn new(rows: usize, clients: usize, seed: u64) -> Self {
        Self {
            rows: rows.max(1),
            clients: clients.max(1),
            delete_per_mille: 30,
            state: seed,
        }
    }

    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `count` deltas: every row is first inserted, later deltas update or delete random rows.
    /// HLC walls advance 1 ms per 8 deltas, so concurrent writers often tie on the wall clock.
    pub fn deltas(&mut self, count: usize, start_wall_ms: u64) -> Vec<RowDelta> {
        self.deltas_from(0, count, start_wall_ms)
    }

    /// Like [`Workload::deltas`], continuing a sequence at delta number `first`, so a large
    /// workload can be produced in bounded memory.
    pub fn deltas_from(&mut self, first: usize, count: usize, start_wall_ms: u64) -> Vec<RowDelta> {
        let mut out = Vec::with_capacity(count);
        for i in first..first + count {
            let wall = start_wall_ms + (i / 8) as u64;
            let client = self.below(self.clients);
            let hlc = HlcTimestamp((wall << 16) | (i % 8) as u64);
            let (row, op) = if i < self.rows {
                (i, DeltaOp::Insert)
            } else if self.next() % 1000 < self.delete_per_mille {
                (self.below(self.rows), DeltaOp::Delete)
            } else {
                (self.below(self.rows), DeltaOp::Update)
            };
            let columns = match op {
                DeltaOp::Insert => self.full_row(row),
                DeltaOp::Update => self.some_columns(row),
                DeltaOp::Delete => Vec::new(),
            };
            out.push(RowDelta::new(
                op,
                "tasks",
                format!("task-{row:07}"),
                format!("client-{client:03}"),
                columns,
                hlc,
            ));
        }
        out
    }

    fn cell(&mut self, row: usize, column: usize) -> Value {
        match column {
            0 => json!(format!("Task {row} rev {}", self.below(1000))),
            1 => json!(format!("user-{}", self.below(self.clients.max(8)))),
            2 => json!(TEAMS[row % TEAMS.len()]),
            3 => json!(self.below(5) as i64 + 1),
            4 => json!((self.below(400) as f64) / 8.0),
            5 => json!(self.below(2) == 1),
            6 => json!(format!(
                "2026-{:02}-{:02}T09:00:00Z",
                1 + self.below(12),
                1 + self.below(28)
            )),
            _ => json!({"tags": [TEAMS[self.below(TEAMS.len())], "q4"], "points": self.below(13)}),
        }
    }

    fn full_row(&mut self, row: usize) -> Vec<ColumnDelta> {
        let names = tasks_schema().column_names();
        (0..names.len())
            .map(|c| ColumnDelta::new(names[c].clone(), self.cell(row, c)))
            .collect()
    }

    fn some_columns(&mut self, row: usize) -> Vec<ColumnDelta> {
        let names = tasks_schema().column_names();
        let first = self.below(names.len());
        let count = 1 + self.below(3);
        (0..count)
            .map(|k| (first + k * 3) % names.len())
            .filter(|&c| c != 2) // a row's team never changes here
            .map(|c| ColumnDelta::new(names[c].clone(), self.cell(row, c)))
            .collect()
    }
}

/// Writes `deltas` synthetic `tasks` changes over `rows` rows as JSON lines in the jsonl
/// source's `rows` format (`{"id": …, <columns>…}`, or `{"id": …, "_deleted": true}`), returning
/// the bytes written. Deterministic for a given seed.
pub fn write_jsonl_rows(
    out: &mut impl std::io::Write,
    rows: usize,
    deltas: usize,
    seed: u64,
) -> std::io::Result<u64> {
    const CHUNK: usize = 100_000;
    let mut workload = Workload::new(rows, 16, seed);
    let mut written = 0u64;
    let mut line = String::new();
    let mut done = 0;
    while done < deltas {
        let n = CHUNK.min(deltas - done);
        // Inserts come first in a workload; later chunks continue with updates and deletes.
        let chunk = workload.deltas_from(done, n, 1_767_225_600_000);
        for d in chunk {
            line.clear();
            let mut obj = serde_json::Map::new();
            obj.insert("id".into(), Value::String(d.row_id));
            if d.op == DeltaOp::Delete {
                obj.insert("_deleted".into(), Value::Bool(true));
            }
            for c in d.columns {
                obj.insert(c.column, c.value);
            }
            line.push_str(&Value::Object(obj).to_string());
            line.push('\n');
            out.write_all(line.as_bytes())?;
            written += line.len() as u64;
        }
        done += n;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta_batch::deltas_to_batch;

    #[test]
    fn workloads_are_reproducible_and_fit_the_schema() {
        let a = Workload::new(100, 5, 7).deltas(1000, 1_700_000_000_000);
        let b = Workload::new(100, 5, 7).deltas(1000, 1_700_000_000_000);
        assert_eq!(a, b);
        assert!(a.iter().any(|d| d.op == DeltaOp::Delete));
        let batch = deltas_to_batch(&tasks_schema(), &a).unwrap();
        assert_eq!(batch.num_rows(), 1000);
    }
}
