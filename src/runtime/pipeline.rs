//! The pipeline executor: reads sources, runs operator lanes, fans out to sinks, and commits by
//! epochs so a restarted pipeline resumes without loss or duplicates.
//!
//! The loop:
//! 1. Read source batches (all sources at once) until a flush threshold is reached — rows, bytes
//!    or age of the oldest buffered batch — or the sources end (`--once`), or shutdown is asked.
//! 2. Plan epoch `e` in the checkpoint store (write-ahead): per source, its start position, the
//!    number of batches and the end position.
//! 3. Run each batch through the operators (in topological order; each operator's output is
//!    computed once and shared by everything downstream of it) and write the results to the
//!    sinks.
//! 4. Commit every sink. A *required* sink must succeed (retried with backoff, then the run
//!    fails and nothing is recorded); a *best-effort* sink is retried and, failing that, logged
//!    and counted, never failing the pipeline.
//! 5. Save operator state for `e`, then record `e` committed with its source end positions.
//!
//! After a crash, a planned but uncommitted epoch is replayed exactly (same start, same number
//! of batches), then reading continues from its end.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{AsArray, RecordBatch};
use futures::StreamExt;
use futures::stream::SelectAll;

use crate::kernel::parquet_io::{read_parquet, write_parquet};
use crate::runtime::api::{
    OpContext, Operator, Position, ReadMode, Sink, Source, SourceBatch, SourceStream,
};
use crate::runtime::checkpoint::{CheckpointStore, EpochPlan, SourceSpan};
use crate::{Error, Result, fs_error};

/// When to close an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Buffered deltas.
    pub max_rows: usize,
    /// Buffered bytes (Arrow memory).
    pub max_bytes: usize,
    /// Flush when one table's buffered bytes reach this (a per-table budget).
    pub max_table_bytes: Option<usize>,
    /// Age of the oldest buffered batch.
    pub max_age: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            max_bytes: 64 << 20,
            max_table_bytes: None,
            max_age: Duration::from_secs(5),
        }
    }
}

/// What a node's input is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeRef {
    /// The source at this index.
    Source(usize),
    /// The operator at this index.
    Operator(usize),
}

/// An operator in the graph.
#[derive(Debug)]
pub struct OperatorNode {
    /// Its name in the pipeline file.
    pub name: String,
    /// The operator.
    pub operator: Box<dyn Operator>,
    /// Where its input comes from (a source, or an operator earlier in the list).
    pub input: NodeRef,
}

/// A sink in the graph.
#[derive(Debug)]
pub struct SinkNode {
    /// Its name in the pipeline file.
    pub name: String,
    /// The sink.
    pub sink: Box<dyn Sink>,
    /// Where its input comes from.
    pub input: NodeRef,
    /// A required (primary) sink must commit; a best-effort one may fail without failing the run.
    pub required: bool,
}

/// A built pipeline, ready to run.
#[derive(Debug)]
pub struct PipelineGraph {
    /// The pipeline's name.
    pub name: String,
    /// Where checkpoints and operator state live.
    pub state_dir: PathBuf,
    /// Epoch thresholds.
    pub flush: FlushPolicy,
    /// The sources.
    pub sources: Vec<Box<dyn Source>>,
    /// The operators, in topological order.
    pub operators: Vec<OperatorNode>,
    /// The sinks.
    pub sinks: Vec<SinkNode>,
    /// Requests to commit an epoch now (a gateway's admin flush), each answered once the
    /// epoch holding everything read so far is committed.
    pub flush_requests: Option<tokio::sync::mpsc::Receiver<FlushRequest>>,
}

/// A request to commit what has been read now, answered when it is committed.
pub type FlushRequest = tokio::sync::oneshot::Sender<Result<()>>;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `Once` for a one-shot backfill, `Follow` for streaming.
    pub mode: ReadMode,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// Per-sink outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Deltas committed.
    pub rows: u64,
    /// Bytes committed, where known.
    pub bytes: u64,
    /// Epochs committed.
    pub commits: u64,
    /// Commits that failed after retries (best-effort sinks only).
    pub failures: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// The pipeline.
    pub pipeline: String,
    /// Deltas read per source.
    pub source_rows: BTreeMap<String, u64>,
    /// Per sink.
    pub sinks: BTreeMap<String, SinkSummary>,
    /// Epochs committed by this run (including a replayed one).
    pub epochs: u64,
    /// The last committed epoch.
    pub last_epoch: u64,
    /// Whether a planned, uncommitted epoch was replayed at start.
    pub replayed: bool,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let read: u64 = self.source_rows.values().sum();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "pipeline {}: {} epochs committed (last epoch {}), {:.2}s",
            self.pipeline, self.epochs, self.last_epoch, secs
        )?;
        if self.replayed {
            writeln!(f, "  replayed an epoch left uncommitted by an earlier run")?;
        }
        for (name, rows) in &self.source_rows {
            writeln!(f, "  source {name}: {rows} deltas read")?;
        }
        writeln!(f, "  throughput: {:.0} deltas/s", read as f64 / secs)?;
        for (name, s) in &self.sinks {
            write!(
                f,
                "  sink {name}: {} deltas, {} bytes, {} commits",
                s.rows, s.bytes, s.commits
            )?;
            if s.failures > 0 {
                write!(f, ", {} FAILED commits", s.failures)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Attempts and first backoff for sink commits.
const COMMIT_ATTEMPTS: u32 = 4;
const COMMIT_BACKOFF: Duration = Duration::from_millis(200);

/// Runs `graph` until its sources end (`Once`) or shutdown is requested (Ctrl-C, or `shutdown`
/// resolving). The in-flight epoch is finished and committed before returning.
pub async fn run(
    mut graph: PipelineGraph,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<RunSummary> {
    let started = Instant::now();
    let store = CheckpointStore::open(&graph.state_dir).await?;
    // One run per state directory: a second would plan the same epochs with other data.
    let lock_path = graph.state_dir.join("lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| fs_error(&lock_path, e))?;
    lock.try_lock().map_err(|_| {
        Error::invalid(
            "pipeline",
            format!(
                "pipeline {:?} is already running (its state directory {} is locked)",
                graph.name,
                graph.state_dir.display()
            ),
        )
    })?;
    let mut summary = RunSummary {
        pipeline: graph.name.clone(),
        ..Default::default()
    };
    for s in &graph.sinks {
        summary.sinks.insert(s.name.clone(), SinkSummary::default());
    }

    // Tables per source, and what each sink must prepare.
    let mut source_tables = Vec::new();
    for source in &mut graph.sources {
        source_tables.push(source.tables().await?);
        summary.source_rows.insert(source.name().to_string(), 0);
    }
    for node in &mut graph.sinks {
        let root = root_source(&graph.operators, node.input);
        node.sink.prepare(&source_tables[root]).await?;
    }

    let last = store.last_committed().await?;
    let mut epoch = last.as_ref().map_or(0, |p| p.epoch);
    restore_operators(&graph.state_dir, &mut graph.operators, epoch)?;
    // Sinks keep their own epoch marks. If they are ahead of the checkpoint store (its state
    // directory was lost or reset), number new epochs after their marks, or the sinks would
    // take new data for replays and drop it. The sources start over from the checkpoint.
    let mut marks = 0;
    for node in &mut graph.sinks {
        marks = marks.max(node.sink.committed_epoch().await?.unwrap_or(0));
    }
    if marks > epoch && store.pending().await?.is_none() {
        tracing::warn!(pipeline = %graph.name, checkpoint = epoch, sinks = marks, "sinks have committed epochs the checkpoint store does not know; numbering new epochs after them");
        epoch = marks;
    }
    let mut positions: Vec<Option<Position>> = graph
        .sources
        .iter()
        .map(|s| {
            last.as_ref()
                .and_then(|p| p.sources.get(s.name()))
                .and_then(|span| span.end.clone())
                .or_else(|| s.start_position())
        })
        .collect();

    // Sources learn what is already durable downstream (a crash may have come between the
    // checkpoint and the last such call).
    for (i, source) in graph.sources.iter_mut().enumerate() {
        if let Some(p) = &positions[i] {
            source.committed(p).await?;
        }
    }

    // Replay an epoch a crash left planned but uncommitted: each source re-reads from the
    // epoch's start up to exactly where the epoch ended.
    if let Some(plan) = store.pending().await? {
        tracing::warn!(pipeline = %graph.name, epoch = plan.epoch, "replaying an epoch left uncommitted by an earlier run");
        let mut batches = Vec::new();
        for (i, source) in graph.sources.iter_mut().enumerate() {
            let Some(span) = plan.sources.get(source.name()) else {
                continue;
            };
            positions[i] = span.start.clone();
            let (true, Some(end)) = (span.batches > 0, span.end.clone()) else {
                continue;
            };
            if !source.can_replay(span.start.as_ref()) {
                tracing::warn!(pipeline = %graph.name, source = %source.name(), epoch = plan.epoch, "the source cannot repeat this epoch exactly; it reads afresh from the epoch's start");
                continue;
            }
            let mut stream = source
                .open(span.start.clone(), ReadMode::Replay { until: end.clone() })
                .await?;
            loop {
                let batch = stream.next().await.ok_or_else(|| {
                    Error::invalid(
                        "source",
                        format!(
                            "source {:?} ended before replaying epoch {}: its input changed",
                            source.name(),
                            plan.epoch
                        ),
                    )
                })??;
                let reached = batch.position == end;
                batches.push((i, batch));
                if reached {
                    break;
                }
            }
        }
        commit_epoch(
            &mut graph,
            &store,
            plan.epoch,
            plan.now_ms,
            batches,
            &mut positions,
            &mut summary,
        )
        .await?;
        epoch = plan.epoch;
        summary.replayed = true;
    }

    let mode = options.mode.clone();
    // A backfill knows its size when every source does.
    let mut total = Some(0u64);
    if mode == ReadMode::Once {
        for (i, source) in graph.sources.iter_mut().enumerate() {
            let estimate = source
                .estimated_rows(positions[i].as_ref())
                .await
                .unwrap_or_else(|e| {
                    tracing::debug!(source = %source.name(), error = %e, "no size estimate");
                    None
                });
            total = total.zip(estimate).map(|(a, b)| a + b);
        }
    } else {
        total = None;
    }
    let mut streams: SelectAll<futures::stream::BoxStream<'static, (usize, Result<SourceBatch>)>> =
        SelectAll::new();
    for (i, source) in graph.sources.iter_mut().enumerate() {
        let stream: SourceStream = source.open(positions[i].clone(), mode.clone()).await?;
        streams.push(stream.map(move |b| (i, b)).boxed());
    }
    let progress = Progress::new(options.progress, &graph.name, mode == ReadMode::Once, total);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stopping = false;
    let mut buffered: Vec<(usize, SourceBatch)> = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    let mut table_bytes: std::collections::HashMap<String, usize> = Default::default();
    let mut oldest: Option<Instant> = None;
    let mut flush_requests = graph.flush_requests.take();
    let mut waiting: Vec<FlushRequest> = Vec::new();
    loop {
        let deadline = oldest.map(|t| t + graph.flush.max_age);
        let mut forced = false;
        let next = tokio::select! {
            item = streams.next(), if !stopping => item.map(Some),
            request = recv_flush(&mut flush_requests), if flush_requests.is_some() => {
                match request {
                    Some(reply) => waiting.push(reply),
                    None => flush_requests = None,
                }
                forced = true;
                Some(None)
            }
            _ = sleep_until(deadline), if deadline.is_some() => Some(None),
            _ = &mut shutdown, if !stopping => {
                tracing::info!(pipeline = %graph.name, "shutting down: finishing the in-flight epoch");
                stopping = true;
                Some(None)
            }
        };
        let ended = next.is_none();
        if let Some(Some((i, batch))) = next {
            let batch = batch?;
            rows += batch.batch.num_rows();
            bytes += batch.batch.get_array_memory_size();
            if let Some(budget) = graph.flush.max_table_bytes {
                let t = table_bytes.entry(batch.table.table.clone()).or_default();
                *t += batch.batch.get_array_memory_size();
                if *t >= budget {
                    tracing::debug!(pipeline = %graph.name, table = %batch.table.table, "table reached its flush budget");
                }
            }
            *summary
                .source_rows
                .entry(graph.sources[i].name().to_string())
                .or_default() += batch.batch.num_rows() as u64;
            progress.read(batch.batch.num_rows(), newest_wall_ms(&batch.batch));
            oldest.get_or_insert_with(Instant::now);
            buffered.push((i, batch));
        }
        let due = forced
            || rows >= graph.flush.max_rows
            || bytes >= graph.flush.max_bytes
            || graph
                .flush
                .max_table_bytes
                .is_some_and(|budget| table_bytes.values().any(|b| *b >= budget))
            || deadline.is_some_and(|d| Instant::now() >= d)
            || ended
            || stopping;
        if due && !buffered.is_empty() {
            epoch += 1;
            commit_epoch(
                &mut graph,
                &store,
                epoch,
                now_ms(),
                std::mem::take(&mut buffered),
                &mut positions,
                &mut summary,
            )
            .await?;
            progress.committed(epoch);
            (rows, bytes, oldest) = (0, 0, None);
            table_bytes.clear();
        }
        if due {
            for reply in waiting.drain(..) {
                let _ = reply.send(Ok(()));
            }
        }
        if ended || stopping {
            break;
        }
    }
    progress.finish();
    summary.last_epoch = epoch;
    summary.elapsed = started.elapsed();
    drop(lock);
    Ok(summary)
}

/// The next flush request, or pending forever without a channel.
async fn recv_flush(
    requests: &mut Option<tokio::sync::mpsc::Receiver<FlushRequest>>,
) -> Option<FlushRequest> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The wall time (ms) of the newest HLC in a delta batch.
fn newest_wall_ms(batch: &RecordBatch) -> Option<u64> {
    let hlc = batch
        .column_by_name(crate::kernel::delta_batch::HLC)?
        .as_primitive_opt::<arrow::datatypes::UInt64Type>()?;
    arrow::compute::max(hlc).map(|h| crate::kernel::hlc::HlcTimestamp(h).wall_ms())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The source an input ultimately reads from.
fn root_source(operators: &[OperatorNode], mut node: NodeRef) -> usize {
    loop {
        match node {
            NodeRef::Source(i) => return i,
            NodeRef::Operator(i) => node = operators[i].input,
        }
    }
}

/// Plans, processes, commits and records one epoch.
#[allow(clippy::too_many_arguments)]
async fn commit_epoch(
    graph: &mut PipelineGraph,
    store: &CheckpointStore,
    epoch: u64,
    now_ms: u64,
    batches: Vec<(usize, SourceBatch)>,
    positions: &mut [Option<Position>],
    summary: &mut RunSummary,
) -> Result<()> {
    // Every source with a known place is in the plan — those that contributed nothing too
    // (start = end) — so none loses its position when older plans are forgotten.
    let mut plan = EpochPlan {
        epoch,
        now_ms,
        sources: BTreeMap::new(),
    };
    for (i, source) in graph.sources.iter().enumerate() {
        let taken: Vec<&SourceBatch> = batches
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, b)| b)
            .collect();
        let end = taken
            .last()
            .map(|b| b.position.clone())
            .or_else(|| positions[i].clone());
        if taken.is_empty() && end.is_none() {
            continue;
        }
        plan.sources.insert(
            source.name().to_string(),
            SourceSpan {
                start: positions[i].clone(),
                batches: taken.len() as u64,
                end,
            },
        );
    }
    store.record_planned(&plan).await?;
    crate::fault::pause_point("pipeline.planned").await;

    let ctx = OpContext { now_ms };
    for node in &mut graph.sinks {
        node.sink.begin_epoch(epoch, now_ms);
    }
    let mut write_failed = vec![false; graph.sinks.len()];
    for (i, batch) in &batches {
        let mut outputs: BTreeMap<NodeRef, Vec<RecordBatch>> = BTreeMap::new();
        outputs.insert(NodeRef::Source(*i), vec![batch.batch.clone()]);
        for (k, node) in graph.operators.iter_mut().enumerate() {
            let Some(input) = outputs.get(&node.input).cloned() else {
                continue;
            };
            let mut out = Vec::new();
            for b in input {
                out.extend(node.operator.process(&batch.table, b, &ctx)?);
            }
            outputs.insert(NodeRef::Operator(k), out);
        }
        for (s, node) in graph.sinks.iter_mut().enumerate() {
            if write_failed[s] {
                continue;
            }
            for b in outputs.get(&node.input).into_iter().flatten() {
                match node.sink.write(&batch.table, b.clone()).await {
                    Ok(()) => {}
                    Err(e) if !node.required => {
                        tracing::error!(sink = %node.name, epoch, error = %e, "best-effort sink rejected a write; it skips this epoch");
                        write_failed[s] = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    for (s, node) in graph.sinks.iter_mut().enumerate() {
        let entry = summary.sinks.entry(node.name.clone()).or_default();
        if write_failed[s] {
            // Not committed, so the epoch is not marked in this sink: what it buffered before
            // the failure goes out with its next successful commit, and the rest of this epoch
            // is lost to this best-effort sink (counted as a failure).
            entry.failures += 1;
            continue;
        }
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match node.sink.commit(epoch).await {
                Ok(stats) => break Ok(stats),
                Err(e) if attempt < COMMIT_ATTEMPTS && is_retryable(&e) => {
                    tracing::warn!(sink = %node.name, epoch, attempt, error = %e, "sink commit failed; retrying");
                    tokio::time::sleep(COMMIT_BACKOFF * 2u32.pow(attempt - 1)).await;
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(stats) => {
                entry.rows += stats.rows;
                entry.bytes += stats.bytes;
                entry.commits += 1;
            }
            Err(e) if !node.required => {
                entry.failures += 1;
                tracing::error!(sink = %node.name, epoch, error = %e, "best-effort sink failed to commit this epoch");
            }
            Err(e) => {
                return Err(Error::External {
                    system: "sink",
                    message: format!(
                        "required sink {:?} failed to commit epoch {epoch}: {e}",
                        node.name
                    ),
                    retryable: is_retryable(&e),
                    source: Some(Box::new(e)),
                });
            }
        }
    }

    crate::fault::pause_point("pipeline.sinks-committed").await;
    save_operators(&graph.state_dir, &mut graph.operators, epoch)?;
    store.record_committed(epoch).await?;
    remove_old_operator_state(&graph.state_dir, &graph.operators, epoch);
    for (i, source) in graph.sources.iter_mut().enumerate() {
        if let Some(span) = plan.sources.get(source.name()) {
            positions[i] = span.end.clone();
            if let Some(end) = &span.end {
                source.committed(end).await?;
            }
        }
    }
    summary.epochs += 1;
    tracing::info!(pipeline = %graph.name, epoch, batches = batches.len(), "epoch committed");
    Ok(())
}

fn is_retryable(e: &Error) -> bool {
    matches!(e.kind(), crate::ErrorKind::External { retryable: true })
}

fn operator_state_file(state_dir: &std::path::Path, name: &str, epoch: u64) -> PathBuf {
    state_dir
        .join("operators")
        .join(format!("{name}.{epoch:012}.parquet"))
}

fn save_operators(
    state_dir: &std::path::Path,
    operators: &mut [OperatorNode],
    epoch: u64,
) -> Result<()> {
    for node in operators {
        let batches = node.operator.snapshot()?;
        if batches.is_empty() {
            continue;
        }
        let path = operator_state_file(state_dir, &node.name, epoch);
        let dir = path.parent().unwrap_or(state_dir);
        std::fs::create_dir_all(dir).map_err(|e| fs_error(dir, e))?;
        // One Parquet file per saved batch would be simplest to read; batches differ in schema,
        // so each goes in its own numbered file, written to a temporary name and renamed.
        for (k, batch) in batches.iter().enumerate() {
            let file = path.with_extension(format!("{k}.parquet"));
            let tmp = file.with_extension("tmp");
            // Durable before the epoch is recorded: write, sync, rename, sync the directory.
            let mut out = std::fs::File::create(&tmp).map_err(|e| fs_error(&tmp, e))?;
            std::io::Write::write_all(&mut out, &write_parquet(std::slice::from_ref(batch))?)
                .map_err(|e| fs_error(&tmp, e))?;
            out.sync_all().map_err(|e| fs_error(&tmp, e))?;
            std::fs::rename(&tmp, &file).map_err(|e| fs_error(&file, e))?;
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fs_error(dir, e))?;
    }
    Ok(())
}

fn restore_operators(
    state_dir: &std::path::Path,
    operators: &mut [OperatorNode],
    epoch: u64,
) -> Result<()> {
    if epoch == 0 {
        return Ok(());
    }
    for node in operators {
        let base = operator_state_file(state_dir, &node.name, epoch);
        let mut saved = Vec::new();
        for k in 0.. {
            let file = base.with_extension(format!("{k}.parquet"));
            let Ok(bytes) = std::fs::read(&file) else {
                break;
            };
            saved.extend(read_parquet(bytes.into())?);
        }
        if !saved.is_empty() {
            node.operator.restore(saved)?;
        }
    }
    Ok(())
}

fn remove_old_operator_state(state_dir: &std::path::Path, operators: &[OperatorNode], epoch: u64) {
    let dir = state_dir.join("operators");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let stale = operators.iter().any(|op| {
            name.strip_prefix(&format!("{}.", op.name))
                .and_then(|rest| rest.get(..12))
                .and_then(|e| e.parse::<u64>().ok())
                .is_some_and(|e| e < epoch)
        });
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How often a backfill without a terminal logs its progress.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of a run: on a terminal a bar (rows read, rows/s, and with a known size the
/// percentage and ETA) or a spinner; without one, a backfill (`--once`) logs the same figures
/// through `tracing` every [`PROGRESS_LOG_EVERY`]. Epochs are logged either way.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Log lines instead of a bar.
    log: bool,
    name: String,
    /// Rows the sources said the read holds.
    total: Option<u64>,
    started: Instant,
    rows: std::cell::Cell<u64>,
    last_log: std::cell::Cell<Instant>,
    /// The last committed epoch, shown with the lag.
    epoch: std::cell::Cell<u64>,
}

impl Progress {
    fn new(enabled: bool, name: &str, backfill: bool, total: Option<u64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let (bar, template) = match total {
                Some(total) => (
                    indicatif::ProgressBar::new(total),
                    "{prefix}: {human_pos}/{human_len} rows ({per_sec}, ETA {eta}) {wide_bar} {msg}",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{spinner} {prefix}: {human_pos} deltas read ({per_sec}), {msg}",
                ),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if let Some(total) = total
            && backfill
        {
            tracing::info!(pipeline = %name, rows = total, "backfill: the sources hold about {total} rows");
        }
        let now = Instant::now();
        Self {
            bar,
            log: enabled && !terminal && backfill,
            name: name.to_string(),
            total,
            started: now,
            rows: std::cell::Cell::new(0),
            last_log: std::cell::Cell::new(now),
            epoch: std::cell::Cell::new(0),
        }
    }

    /// Counts `rows` read, whose newest HLC wall time is `newest_ms`, and shows the lag: how far
    /// behind the present the newest change read is.
    fn read(&self, rows: usize, newest_ms: Option<u64>) {
        self.rows.set(self.rows.get() + rows as u64);
        if let Some(bar) = &self.bar {
            bar.inc(rows as u64);
            if let Some(newest) = newest_ms {
                let lag = Duration::from_millis(now_ms().saturating_sub(newest));
                bar.set_message(format!(
                    "lag {}, epoch {} committed",
                    humantime::format_duration(Duration::from_secs(lag.as_secs())),
                    self.epoch.get()
                ));
            }
        }
        if self.log && self.last_log.get().elapsed() >= PROGRESS_LOG_EVERY {
            self.last_log.set(Instant::now());
            let (rows, elapsed) = (self.rows.get(), self.started.elapsed());
            let rate = rows as f64 / elapsed.as_secs_f64().max(1e-9);
            match self.total {
                Some(total) => {
                    let left = total.saturating_sub(rows) as f64 / rate.max(1e-9);
                    tracing::info!(
                        pipeline = %self.name,
                        rows,
                        rows_per_s = rate.round() as u64,
                        "backfill: {rows}/{total} rows ({:.1}%), {:.0} rows/s, ETA {}",
                        100.0 * rows as f64 / total.max(1) as f64,
                        rate,
                        humantime::format_duration(Duration::from_secs(left.round() as u64))
                    );
                }
                None => tracing::info!(
                    pipeline = %self.name,
                    rows,
                    rows_per_s = rate.round() as u64,
                    "backfill: {rows} rows, {rate:.0} rows/s"
                ),
            }
        }
    }

    fn committed(&self, epoch: u64) {
        self.epoch.set(epoch);
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
