//! The contracts between the runtime and its components: [`Source`], [`Operator`], [`Sink`].
//!
//! Everything that flows is a delta batch in the Arrow delta contract
//! (`lakesync_operators::delta_batch`): one table per batch.
//!
//! **Exactly once by epochs.** The runtime groups source batches into *epochs* (numbered 1, 2, …
//! per pipeline). For epoch `e` it writes every batch to every sink, then calls
//! [`Sink::commit`]`(e)`; each sink makes the writes durable *atomically with a mark that it has
//! committed `e`* (an Iceberg snapshot property, a row in the same SQLite transaction, …). Only
//! when every required sink has committed `e` does the runtime record the source position reached by `e`
//! in its checkpoint store. After a crash the runtime re-reads from the last recorded position;
//! a sink whose [`Sink::committed_epoch`] is already at or past a replayed epoch drops that
//! epoch's writes instead of committing them twice. Sources must therefore replay the same
//! batches from the same position, which every LakeSync source does.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::kernel::schema::TableSchema;

/// A shared table schema.
pub type TableRef = Arc<TableSchema>;

/// Where a source is: opaque to the runtime, meaningful to the source that produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub serde_json::Value);

/// How long a source reads.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadMode {
    /// Read what is there now, then end the stream (`lakesync run --once`).
    Once,
    /// Keep reading: wait for new data, polling every `poll_interval` where polling applies.
    Follow {
        /// How often to look for new data.
        poll_interval: std::time::Duration,
    },
    /// Re-read a crashed epoch: read like `Once`, but stop after the batch that reaches
    /// `until` (a position this source produced before), so the replay is exactly the
    /// original even if more data has arrived since. Sources that cannot bound a read treat
    /// this as `Once`; the runtime then checks that the replay ended at `until`.
    Replay {
        /// The position the original epoch ended at.
        until: Position,
    },
}

/// One batch from a source: deltas of one table, and the source position *after* them.
#[derive(Clone, Debug)]
pub struct SourceBatch {
    /// The table the deltas belong to (one of the source's tables).
    pub table: TableRef,
    /// The deltas, in the delta contract.
    pub batch: RecordBatch,
    /// Resuming from this position yields what comes after this batch.
    pub position: Position,
}

/// A stream of source batches.
pub type SourceStream = BoxStream<'static, Result<SourceBatch>>;

/// Something deltas come from.
#[async_trait]
pub trait Source: Debug + Send {
    /// The source's name in the pipeline file.
    fn name(&self) -> &str;

    /// The tables this source produces, with their schemas (may connect to find out).
    async fn tables(&mut self) -> Result<Vec<TableRef>>;

    /// The position "before everything", when the source has one worth remembering (e.g. a
    /// file source's fixed base time); the runtime records it as the first epoch's start so a
    /// replay of that epoch starts exactly where the original did.
    fn start_position(&self) -> Option<Position> {
        None
    }

    /// Whether a crashed epoch that started at `from` can be re-read exactly. A source that
    /// cannot (a CDC snapshot: the data has moved on) says so; the runtime then does not replay
    /// it, and the source's next read starts from `from` afresh (see that source's docs for
    /// what arrives again).
    fn can_replay(&self, _from: Option<&Position>) -> bool {
        true
    }

    /// How many rows a read from `resume` to the end will deliver, when the source knows it (a
    /// whole table or snapshot), for progress and an ETA; `None` when it does not (a change
    /// feed, a stream). An estimate: progress only, never correctness.
    async fn estimated_rows(&mut self, _resume: Option<&Position>) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Starts reading after `resume` (from the beginning when `None`).
    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream>;

    /// Told, after every sink has committed an epoch, the position that epoch ended at:
    /// everything up to it is durable downstream. Sources that hold data for the runtime (a
    /// gateway's buffer, a replication slot) release it here; most ignore it.
    async fn committed(&mut self, _position: &Position) -> Result<()> {
        Ok(())
    }
}

/// Context an operator runs with.
#[derive(Clone, Debug)]
pub struct OpContext {
    /// The current time in milliseconds since the Unix epoch — the only clock operators see.
    pub now_ms: u64,
}

/// A per-table transformation of delta batches. Operators are pure apart from state they keep
/// about the rows they have seen; they never do I/O.
pub trait Operator: Debug + Send {
    /// The operator's type name, e.g. `filter`.
    fn name(&self) -> &'static str;

    /// The schema of the batches this operator emits for input of `input` (checked at plan time).
    fn output_schema(&self, input: &TableSchema) -> Result<TableSchema>;

    /// Transforms one batch of `table`; may emit zero or more batches.
    fn process(
        &mut self,
        table: &TableRef,
        batch: RecordBatch,
        ctx: &OpContext,
    ) -> Result<Vec<RecordBatch>>;

    /// The operator's state, one batch per table, to be saved with a checkpoint. Stateless
    /// operators return nothing.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    /// Restores state saved by [`Operator::snapshot`], before any batch is processed.
    fn restore(&mut self, _state: Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }
}

/// What a commit did, for metrics and the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Deltas made durable by this commit.
    pub rows: u64,
    /// Bytes written (data files, rows), where the sink knows.
    pub bytes: u64,
}

/// Something deltas go to.
#[async_trait]
pub trait Sink: Debug + Send {
    /// The sink's name in the pipeline file.
    fn name(&self) -> &str;

    /// Creates or evolves (add-only) whatever the sink needs for these tables. Called once
    /// before any write, and again when a table's schema evolves.
    async fn prepare(&mut self, tables: &[TableRef]) -> Result<()>;

    /// The newest epoch this sink committed for its pipeline (for any of its tables), read from
    /// the sink's own storage. The runtime numbers new epochs above it; deciding whether a
    /// replayed epoch is already held is [`Sink::commit`]'s job, table by table.
    async fn committed_epoch(&mut self) -> Result<Option<u64>>;

    /// Called before the writes of each epoch with the epoch's time (milliseconds since the Unix
    /// epoch), fixed when the epoch was planned and the same on a replay. Sinks that route by
    /// time (tiering) use it instead of a clock.
    fn begin_epoch(&mut self, _epoch: u64, _now_ms: u64) {}

    /// Accepts a delta batch of `table` for the epoch being written. May buffer.
    async fn write(&mut self, table: &TableRef, batch: RecordBatch) -> Result<()>;

    /// Makes everything written since the last commit durable, atomically with the mark "epoch
    /// `epoch` committed". When `epoch` is not above [`Sink::committed_epoch`], drops the
    /// buffered writes instead (a replay after a crash) and returns empty stats.
    async fn commit(&mut self, epoch: u64) -> Result<CommitStats>;
}
