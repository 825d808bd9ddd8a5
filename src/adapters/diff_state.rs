//! The state a *diff* source keeps between polls, shared by the SQL sources (SQLite, MySQL, …).
//!
//! A diff needs the previous snapshot of the table, which must survive restarts, and a source
//! must not write to the database it reads. So a source keeps, in its state directory, a
//! *journal* `<source>.<table>.diff.jsonl` — one line `{"seq", "deltas"}` per emitted batch,
//! appended and fsynced before the batch is emitted — and a *base* snapshot
//! `<source>.<table>.diff.base.json` (`{"seq", "rows"}`). The snapshot at position `seq = k` is
//! the base folded with journal lines up to `k`. [`DiffState::open`] at `k` rebuilds exactly the
//! snapshot the position stands for, returns the journal lines after `k` to be **re-emitted
//! verbatim** (same deltas, same HLCs, same batch boundaries: an exact replay), then compacts the
//! files (base := snapshot at `k`, journal := lines after `k`), which is safe because the runtime
//! never resumes before a position it has recorded. Should the journal have lost lines the
//! position covers, the diff restarts from the older snapshot: changes are re-emitted with new
//! HLCs, which last-writer-wins absorbs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::kernel::delta::{DeltaOp, ExtractContext, RowDelta, extract_delta};
use crate::kernel::hlc::Hlc;
use crate::{Error, Result};

/// An I/O error as a LakeSync error of `system`, saying what was being done where.
fn io_error(system: &'static str, context: impl Display, e: std::io::Error) -> Error {
    Error::External {
        system,
        message: format!("{context}: {e}"),
        retryable: false,
        source: Some(Box::new(e)),
    }
}

/// Applies a delta to a snapshot of row images.
fn fold(snapshot: &mut HashMap<String, Map<String, Value>>, delta: &RowDelta) {
    match delta.op {
        DeltaOp::Delete => {
            snapshot.remove(&delta.row_id);
        }
        DeltaOp::Insert => {
            snapshot.insert(
                delta.row_id.clone(),
                delta
                    .columns
                    .iter()
                    .map(|c| (c.column.clone(), c.value.clone()))
                    .collect(),
            );
        }
        DeltaOp::Update => {
            let row = snapshot.entry(delta.row_id.clone()).or_default();
            for c in &delta.columns {
                row.insert(c.column.clone(), c.value.clone());
            }
        }
    }
}

/// One journal line: a diff batch as emitted.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JournalEntry {
    /// The batch's sequence number (1, 2, …).
    pub(crate) seq: u64,
    /// The deltas, as emitted.
    pub(crate) deltas: Vec<RowDelta>,
}

/// The base snapshot file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BaseSnapshot {
    seq: u64,
    rows: BTreeMap<String, Map<String, Value>>,
}

/// A diffed table's snapshot and state files.
pub(crate) struct DiffState {
    /// The column identifying the row.
    pub(crate) id_column: String,
    /// The sequence number of the last batch folded into `snapshot`.
    pub(crate) seq: u64,
    /// Row images by row id.
    pub(crate) snapshot: HashMap<String, Map<String, Value>>,
    journal: PathBuf,
    system: &'static str,
}

impl DiffState {
    /// Rebuilds the snapshot at `seq` from the state files, compacts them, and returns the
    /// journal entries after `seq`, to be replayed verbatim.
    pub(crate) async fn open(
        system: &'static str,
        dir: &Path,
        source: &str,
        table: &str,
        id_column: &str,
        seq: u64,
        here: &str,
    ) -> Result<(Self, Vec<JournalEntry>)> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_error(system, format!("{here}: creating {}", dir.display()), e))?;
        let base_path = dir.join(format!("{source}.{table}.diff.base.json"));
        let journal = dir.join(format!("{source}.{table}.diff.jsonl"));
        let bad = |path: &Path, msg: String| {
            Error::invalid(
                "source state",
                format!("{here}: table {table:?}: {}: {msg}", path.display()),
            )
        };
        let base: BaseSnapshot = match tokio::fs::read(&base_path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| bad(&base_path, format!("not a snapshot: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BaseSnapshot::default(),
            Err(e) => {
                return Err(io_error(
                    system,
                    format!("{here}: reading {}", base_path.display()),
                    e,
                ));
            }
        };
        if base.seq > seq {
            return Err(bad(
                &base_path,
                format!(
                    "the snapshot is at seq {}, past the resume position {seq}: these state files belong to a later run; delete them to re-read the table from scratch",
                    base.seq
                ),
            ));
        }
        let text = match tokio::fs::read_to_string(&journal).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(io_error(
                    system,
                    format!("{here}: reading {}", journal.display()),
                    e,
                ));
            }
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut snapshot: HashMap<String, Map<String, Value>> = base.rows.into_iter().collect();
        let mut folded = base.seq;
        let mut replay = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            let entry: JournalEntry = match serde_json::from_str(line) {
                Ok(entry) => entry,
                // A torn last line was never emitted (lines are fsynced before emitting).
                Err(e) if n + 1 == lines.len() => {
                    tracing::warn!(file = %journal.display(), error = %e, "ignoring a torn last journal line");
                    break;
                }
                Err(e) => {
                    return Err(bad(
                        &journal,
                        format!("line {} is not a journal entry: {e}", n + 1),
                    ));
                }
            };
            let expected = replay.last().map_or(folded, |e: &JournalEntry| e.seq) + 1;
            if entry.seq <= folded {
                continue; // compacted into the base already
            }
            if entry.seq != expected {
                return Err(bad(
                    &journal,
                    format!("line {} has seq {}, expected {expected}", n + 1, entry.seq),
                ));
            }
            if entry.seq <= seq {
                for d in &entry.deltas {
                    fold(&mut snapshot, d);
                }
                folded = entry.seq;
            } else {
                replay.push(entry);
            }
        }
        if folded < seq {
            tracing::warn!(
                table,
                position = seq,
                journal = folded,
                "diff journal ends before the resume position; re-diffing from the older snapshot"
            );
        }
        let state = Self {
            system,
            id_column: id_column.to_string(),
            seq,
            snapshot,
            journal,
        };
        // Compact: base := snapshot at `seq`, journal := the lines after it.
        let base = BaseSnapshot {
            seq,
            rows: state
                .snapshot
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let base_text = serde_json::to_vec(&base)
            .map_err(|e| Error::internal(format!("serialising a diff snapshot: {e}")))?;
        write_atomically(system, &base_path, &base_text, here).await?;
        let mut rest = Vec::new();
        for entry in &replay {
            rest.extend(journal_line(entry)?);
        }
        write_atomically(system, &state.journal, &rest, here).await?;
        Ok((state, replay))
    }

    /// The diff of the snapshot against the table as read now (`rows`: row id and image, in read
    /// order), as journal entries of at most `batch_size` deltas numbered after the snapshot's
    /// `seq`: an INSERT per new row, an UPDATE of the changed columns per changed row, then a
    /// DELETE per vanished row (in id order). `columns` are the data columns in schema order;
    /// every delta gets its own HLC from `hlc`. Fails with the id when two rows share one.
    pub(crate) fn diff(
        &self,
        rows: Vec<(String, Map<String, Value>)>,
        table: &str,
        client_id: &str,
        hlc: &Hlc,
        columns: &[String],
        batch_size: usize,
    ) -> std::result::Result<Vec<JournalEntry>, String> {
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        let mut deltas = Vec::new();
        let context = |row_id| ExtractContext {
            table,
            row_id,
            client_id,
            hlc: hlc.now(),
            columns: Some(columns),
        };
        for (row_id, after) in &rows {
            if !seen.insert(row_id.as_str()) {
                return Err(format!(
                    "two rows have id {row_id:?}; the id column of a diffed table must be unique"
                ));
            }
            deltas.extend(extract_delta(
                self.snapshot.get(row_id),
                Some(after),
                context(row_id),
            ));
        }
        let mut vanished: Vec<&String> = self
            .snapshot
            .keys()
            .filter(|k| !seen.contains(k.as_str()))
            .collect();
        vanished.sort();
        for row_id in vanished {
            deltas.extend(extract_delta(
                self.snapshot.get(row_id),
                None,
                context(row_id),
            ));
        }
        let mut seq = self.seq;
        Ok(deltas
            .chunks(batch_size.max(1))
            .map(|chunk| {
                seq += 1;
                JournalEntry {
                    seq,
                    deltas: chunk.to_vec(),
                }
            })
            .collect())
    }

    /// Journals `entry` (when `journal`; replayed entries already are) and folds it into the
    /// snapshot.
    pub(crate) async fn apply(
        &mut self,
        entry: &JournalEntry,
        journal: bool,
        here: &str,
    ) -> Result<()> {
        if journal {
            self.append(entry, here).await?;
        }
        for d in &entry.deltas {
            fold(&mut self.snapshot, d);
        }
        self.seq = entry.seq;
        Ok(())
    }

    /// Appends a journal line and makes it durable.
    async fn append(&self, entry: &JournalEntry, here: &str) -> Result<()> {
        let at = |e| {
            io_error(
                self.system,
                format!("{here}: appending to {}", self.journal.display()),
                e,
            )
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .await
            .map_err(at)?;
        file.write_all(&journal_line(entry)?).await.map_err(at)?;
        file.sync_data().await.map_err(at)
    }
}

fn journal_line(entry: &JournalEntry) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(entry)
        .map_err(|e| Error::internal(format!("serialising a diff journal entry: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

/// Replaces `path` with `bytes` (write a temporary file, fsync, rename).
async fn write_atomically(
    system: &'static str,
    path: &Path,
    bytes: &[u8],
    here: &str,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let at = |e| io_error(system, format!("{here}: writing {}", path.display()), e);
    let mut file = tokio::fs::File::create(&tmp).await.map_err(at)?;
    file.write_all(bytes).await.map_err(at)?;
    file.sync_all().await.map_err(at)?;
    drop(file);
    tokio::fs::rename(&tmp, path).await.map_err(at)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = tokio::fs::File::open(dir).await
    {
        // Makes the rename durable where the platform allows syncing a directory.
        d.sync_all().await.ok();
    }
    Ok(())
}
