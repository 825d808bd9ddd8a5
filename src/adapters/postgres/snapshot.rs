//! Whole-table reads by binary `COPY`, in parallel block ranges, all from one consistent
//! snapshot: the `snapshot` strategy (a backfill) and the initial snapshot of `cdc`.
//!
//! **Chunks.** A table's heap is cut into chunks of [`CHUNK_BLOCKS`] blocks when its read
//! starts (the count is kept in the position, so a resumed read cuts the same way); the last
//! chunk is open-ended, so rows in blocks added since are read too. A partitioned table is one
//! chunk. Each chunk is read by `COPY (SELECT id::text, columns::cast… FROM t WHERE ctid >=
//! '(a,0)' AND ctid < '(b,0)') TO STDOUT (FORMAT binary)`, decoded by
//! [`CopyDecoder`](super::copy_binary::CopyDecoder) and turned into a batch of full-row INSERT
//! deltas by the kernel's `insert_batch` (one HLC per row from the source's clock), on the
//! reading task, so `parallelism` readers use as many cores.
//!
//! **Consistency.** A coordinating connection opens a `REPEATABLE READ` transaction and exports
//! its snapshot (`pg_export_snapshot`); every reader imports it (`SET TRANSACTION SNAPSHOT`), so
//! all chunks see the table at one instant. The snapshot's `pg_current_snapshot()` and WAL
//! position are returned for CDC, which uses them to skip changes the snapshot already holds.
//!
//! **Progress** ([`CopyProgress`], per table, in the source position): the chunks done (a
//! prefix count plus the others), and for chunks in flight how many rows were delivered. A
//! resumed read skips done chunks and skips the delivered rows of partial ones (heap order within
//! a chunk is stable while the table is not written). A replay of a crashed epoch reads exactly
//! the rows between the two progress states, so it ends at the very position the epoch ended at;
//! batches may be cut differently, which an epoch's atomic commit does not notice. A table
//! written to during a backfill is read as of the (new) snapshot of each run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};

use super::copy_binary::CopyDecoder;
use super::types::select_list;
use super::{connect, pg_error, qualified};
use crate::kernel::bulk::insert_batch;
use crate::kernel::hlc::{Hlc, HlcTimestamp};
use crate::runtime::api::TableRef;
use crate::{Error, Result};

/// Heap blocks per chunk (32 MiB of 8 KiB blocks).
pub const CHUNK_BLOCKS: u64 = 4096;

/// How far a table's read has got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// How many chunks the table was cut into.
    pub chunks: u64,
    /// Chunks `0..done_below` are done.
    pub done_below: u64,
    /// Other done chunks (all at or above `done_below + 1`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub done: BTreeSet<u64>,
    /// Rows delivered so far of chunks in flight.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partial: BTreeMap<u64, u64>,
}

impl CopyProgress {
    /// Whether every chunk is done.
    pub fn is_complete(&self) -> bool {
        self.done_below >= self.chunks
    }

    fn is_done(&self, chunk: u64) -> bool {
        chunk < self.done_below || self.done.contains(&chunk)
    }

    fn delivered(&self, chunk: u64) -> u64 {
        self.partial.get(&chunk).copied().unwrap_or(0)
    }

    /// Records `rows` more rows of `chunk`, and whether the chunk is now finished.
    fn advance(&mut self, chunk: u64, rows: u64, finished: bool) {
        if finished {
            self.partial.remove(&chunk);
            self.done.insert(chunk);
            while self.done.remove(&self.done_below) {
                self.done_below += 1;
            }
        } else if rows > 0 {
            *self.partial.entry(chunk).or_insert(0) += rows;
        }
    }
}

/// One table to read.
#[derive(Clone, Debug)]
pub struct TableToCopy {
    /// The table (its data columns are read, cast to their types).
    pub table: TableRef,
    /// The Postgres schema.
    pub pg_schema: String,
    /// The column holding the row id.
    pub id_column: String,
}

/// What a snapshot saw: for CDC, to skip changes it already holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// `pg_current_snapshot()` as text (`xmin:xmax:xip,…`).
    pub snapshot: String,
    /// The WAL insert position when the snapshot was taken: every transaction it sees committed
    /// before this LSN.
    pub wal_lsn: String,
}

/// A piece of work: rows `skip..` (up to `limit` rows) of one chunk.
#[derive(Clone, Debug)]
struct Task {
    table: usize,
    chunk: u64,
    chunks: u64,
    skip: u64,
    limit: Option<u64>,
}

/// What a reader sends: rows of a chunk as a delta batch, and whether the chunk is finished.
#[derive(Debug)]
pub struct ChunkBatch {
    /// Which table (index into the read's tables).
    pub table: usize,
    /// Which chunk.
    pub chunk: u64,
    /// The deltas (possibly empty, when only the end of the chunk is reported).
    pub batch: RecordBatch,
    /// Whether this is the chunk's last batch.
    pub finished: bool,
}

/// A running read: batches arrive on `batches`; the readers stop when it is dropped.
#[derive(Debug)]
pub struct SnapshotRead {
    /// The batches, in no particular order across chunks (in order within one).
    pub batches: tokio::sync::mpsc::Receiver<Result<ChunkBatch>>,
    /// What the snapshot saw.
    pub info: SnapshotInfo,
}

/// Settings shared by every reader.
#[derive(Clone, Debug)]
pub struct ReadSettings {
    /// The connection URL.
    pub url: String,
    /// Readers at once.
    pub parallelism: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// The writer id of the deltas.
    pub client_id: String,
    /// Names the read in errors and logs.
    pub here: String,
    /// Heap blocks per chunk ([`CHUNK_BLOCKS`] unless a test wants small chunks).
    pub chunk_blocks: u64,
}

/// Cuts `table` into chunks: how many, by its current size (1 for a partitioned table).
pub async fn count_chunks(
    conn: &mut PgConnection,
    t: &TableToCopy,
    chunk_blocks: u64,
    here: &str,
) -> Result<u64> {
    let row = sqlx::query(
        "SELECT c.relkind::text AS kind, \
                pg_relation_size(c.oid) / current_setting('block_size')::int8 AS blocks \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(&t.pg_schema)
    .bind(&t.table.table)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| pg_error(format!("{here}: sizing table {:?}", t.table.table), e))?
    .ok_or_else(|| {
        Error::invalid(
            "postgres source",
            format!(
                "{here}: table {}.{} does not exist",
                t.pg_schema, t.table.table
            ),
        )
    })?;
    let kind: String = row
        .try_get("kind")
        .map_err(|e| pg_error(format!("{here}: sizing"), e))?;
    let blocks: i64 = row
        .try_get("blocks")
        .map_err(|e| pg_error(format!("{here}: sizing"), e))?;
    Ok(if kind == "p" {
        1
    } else {
        (blocks.max(0) as u64).div_ceil(chunk_blocks.max(1)).max(1)
    })
}

/// Starts reading `tables` from `progress` (one per table; `until`, when given, bounds a replay)
/// with `hlc` stamping the rows. The snapshot is taken before this returns.
pub async fn start(
    settings: ReadSettings,
    tables: Vec<TableToCopy>,
    progress: &[CopyProgress],
    until: Option<&[CopyProgress]>,
    hlc: Arc<Hlc>,
) -> Result<SnapshotRead> {
    let here = settings.here.clone();
    let mut tasks = VecDeque::new();
    for (i, p) in progress.iter().enumerate() {
        for chunk in 0..p.chunks {
            if p.is_done(chunk) {
                continue;
            }
            let skip = p.delivered(chunk);
            let limit = match until.and_then(|u| u.get(i)) {
                None => None,
                Some(u) if u.is_done(chunk) => None,
                Some(u) => match u.delivered(chunk).checked_sub(skip) {
                    Some(0) | None => continue,
                    Some(n) => Some(n),
                },
            };
            tasks.push_back(Task {
                table: i,
                chunk,
                chunks: p.chunks,
                skip,
                limit,
            });
        }
    }

    // The coordinating transaction: holds the snapshot until every reader has imported it.
    let mut coordinator = connect(&settings.url, &here).await?;
    coordinator
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| pg_error(format!("{here}: starting the snapshot"), e))?;
    let row = sqlx::query(
        "SELECT pg_export_snapshot() AS id, pg_current_snapshot()::text AS snap, \
                pg_current_wal_lsn()::text AS lsn",
    )
    .fetch_one(&mut coordinator)
    .await
    .map_err(|e| pg_error(format!("{here}: exporting the snapshot"), e))?;
    let get = |name: &str| -> Result<String> {
        row.try_get(name)
            .map_err(|e| pg_error(format!("{here}: exporting the snapshot"), e))
    };
    let snapshot_id = get("id")?;
    let info = SnapshotInfo {
        snapshot: get("snap")?,
        wal_lsn: get("lsn")?,
    };

    let workers = settings.parallelism.clamp(1, tasks.len().max(1));
    let (tx, rx) = tokio::sync::mpsc::channel(workers * 2);
    let queue = Arc::new(Mutex::new(tasks));
    let tables = Arc::new(tables);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(workers);
    for _ in 0..workers {
        let reader = Reader {
            settings: settings.clone(),
            tables: Arc::clone(&tables),
            queue: Arc::clone(&queue),
            hlc: Arc::clone(&hlc),
            out: tx.clone(),
        };
        let snapshot_id = snapshot_id.clone();
        let ready = ready_tx.clone();
        tokio::spawn(async move {
            let out = reader.out.clone();
            if let Err(e) = reader.run(&snapshot_id, ready).await {
                let _ = out.send(Err(e)).await;
            }
        });
    }
    drop(ready_tx);
    // Keep the exported snapshot alive until every reader has imported it (or failed).
    tokio::spawn(async move {
        while ready_rx.recv().await.is_some() {}
        let _ = coordinator.close().await;
    });
    Ok(SnapshotRead { batches: rx, info })
}

/// One reading connection: takes tasks from the shared queue until it is empty.
struct Reader {
    settings: ReadSettings,
    tables: Arc<Vec<TableToCopy>>,
    queue: Arc<Mutex<VecDeque<Task>>>,
    hlc: Arc<Hlc>,
    out: tokio::sync::mpsc::Sender<Result<ChunkBatch>>,
}

impl Reader {
    async fn run(self, snapshot_id: &str, ready: tokio::sync::mpsc::Sender<()>) -> Result<()> {
        let here = &self.settings.here;
        let mut conn = connect(&self.settings.url, here).await;
        if let Ok(c) = conn.as_mut() {
            let imported = async {
                c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                // The id is Postgres's own text (hex and dashes); bound values are not allowed
                // here, so it is checked before it is spliced.
                c.execute(
                    format!(
                        "SET TRANSACTION SNAPSHOT '{}'",
                        snapshot_id.replace('\'', "")
                    )
                    .as_str(),
                )
                .await
            }
            .await;
            if let Err(e) = imported {
                drop(ready);
                return Err(pg_error(format!("{here}: importing the snapshot"), e));
            }
        }
        drop(ready);
        let mut conn = conn?;
        loop {
            let task = match self.queue.lock() {
                Ok(mut q) => q.pop_front(),
                Err(_) => return Err(Error::internal("snapshot task queue poisoned")),
            };
            let Some(task) = task else {
                return Ok(());
            };
            if !self.read_chunk(&mut conn, &task).await? {
                return Ok(()); // the consumer is gone
            }
        }
    }

    /// Reads one task's rows; `false` when the consumer has gone away.
    async fn read_chunk(&self, conn: &mut PgConnection, task: &Task) -> Result<bool> {
        let t = &self.tables[task.table];
        let here = format!(
            "{}: table {:?} chunk {}",
            self.settings.here, t.table.table, task.chunk
        );
        let mut sql = format!(
            "COPY (SELECT {} FROM {}",
            select_list(&t.id_column, &t.table.columns)?,
            qualified(&t.pg_schema, &t.table.table)?
        );
        if task.chunks > 1 {
            let size = self.settings.chunk_blocks.max(1);
            let from = task.chunk * size;
            sql.push_str(&format!(" WHERE ctid >= '({from},0)'::tid"));
            if task.chunk + 1 < task.chunks {
                sql.push_str(&format!(" AND ctid < '({},0)'::tid", from + size));
            }
        }
        sql.push_str(") TO STDOUT (FORMAT binary)");

        let mut decoder = CopyDecoder::new(&t.table.columns, here.clone());
        let mut stream = conn
            .copy_out_raw(&sql)
            .await
            .map_err(|e| pg_error(format!("{here}: starting COPY"), e))?;
        let batch_size = self.settings.batch_size.max(1);
        let mut to_skip = task.skip;
        let mut remaining = task.limit.unwrap_or(u64::MAX);
        let mut held: Option<RecordBatch> = None;
        loop {
            let chunk = match stream.next().await {
                Some(bytes) => {
                    Some(bytes.map_err(|e| pg_error(format!("{here}: reading COPY"), e))?)
                }
                None => None,
            };
            if let Some(bytes) = &chunk {
                decoder.feed(bytes);
            }
            loop {
                let want = if to_skip > 0 {
                    to_skip.min(batch_size as u64) as usize
                } else {
                    remaining.min(batch_size as u64) as usize
                };
                let rows = decoder.decode(want)?;
                let full = rows == want && want > 0;
                let last = chunk.is_none() || decoder.is_done() || remaining == 0;
                if !(full || (last && rows > 0)) {
                    break;
                }
                let (ids, columns) = decoder.take();
                if to_skip > 0 {
                    to_skip -= rows as u64;
                    continue;
                }
                remaining -= rows as u64;
                let hlcs: Vec<HlcTimestamp> = (0..rows).map(|_| self.hlc.now()).collect();
                let batch = insert_batch(&t.table, &self.settings.client_id, ids, &hlcs, columns)?;
                if let Some(previous) = held.replace(batch)
                    && !self.send(task, previous, false).await
                {
                    return Ok(false);
                }
                if remaining == 0 {
                    break;
                }
            }
            if remaining == 0 {
                // A bounded replay: the chunk is not finished. The rest of the COPY is read and
                // dropped, so the connection (and its snapshot) stays usable.
                let ok = match held.take() {
                    Some(batch) => self.send(task, batch, false).await,
                    None => true,
                };
                while let Some(bytes) = stream.next().await {
                    bytes.map_err(|e| pg_error(format!("{here}: reading COPY"), e))?;
                }
                return Ok(ok);
            }
            if chunk.is_none() || decoder.is_done() {
                break;
            }
        }
        // Read the stream to its end, so the connection is ready for the next COPY.
        while let Some(bytes) = stream.next().await {
            bytes.map_err(|e| pg_error(format!("{here}: reading COPY"), e))?;
        }
        drop(stream);
        if decoder.rows() > 0 || decoder.has_pending() && !decoder.is_done() {
            return Err(super::data_error(&here, "the COPY stream ended mid-row"));
        }
        let last = match held {
            Some(batch) => batch,
            None => RecordBatch::new_empty(crate::kernel::delta_batch::delta_schema(&t.table)),
        };
        Ok(self.send(task, last, true).await)
    }

    async fn send(&self, task: &Task, batch: RecordBatch, finished: bool) -> bool {
        self.out
            .send(Ok(ChunkBatch {
                table: task.table,
                chunk: task.chunk,
                batch,
                finished,
            }))
            .await
            .is_ok()
    }
}

/// Applies a received batch to `progress`.
pub fn record(progress: &mut [CopyProgress], batch: &ChunkBatch) {
    if let Some(p) = progress.get_mut(batch.table) {
        p.advance(batch.chunk, batch.batch.num_rows() as u64, batch.finished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_folds_done_chunks_into_the_prefix() {
        let mut p = CopyProgress {
            chunks: 4,
            ..Default::default()
        };
        p.advance(1, 10, false);
        p.advance(1, 5, true);
        assert_eq!(p.done_below, 0);
        assert!(p.done.contains(&1));
        p.advance(0, 3, false);
        assert_eq!(p.delivered(0), 3);
        p.advance(0, 0, true);
        assert_eq!(p.done_below, 2);
        assert!(p.done.is_empty() && p.partial.is_empty());
        p.advance(3, 0, true);
        p.advance(2, 0, true);
        assert!(p.is_complete());
    }
}
