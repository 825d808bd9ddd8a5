//! Lake checkpoints: a table's current rows, cut into chunks of bounded size, for initial sync.
//!
//! A client that syncs for the first time needs every row it may see, not the history of
//! deltas. [`generate`] reads a lake table's current snapshot — base rows left by compaction
//! and the deltas flushed since — merges them into row state (column-level LWW), and writes the
//! live rows as `INSERT` snapshot deltas (each setting exactly the columns that hold a value,
//! with the row's HLC) into **chunks**: Parquet files in the delta contract whose deltas, encoded
//! as the sync protocol's `SyncResponse`, take at most the byte budget (16 MiB by default, the
//! original's chunk size, but counted exactly rather than estimated; a single larger row gets a
//! chunk of its own). A chunk holds one table only and *every* row of it: filtering by sync rules
//! happens when a chunk is served ([`read_chunk`] and the gateway's checkpoint routes), so one
//! generation serves every client.
//!
//! **Layout.** Under the table's location (object stores that serve an Iceberg catalogue, like
//! S3 table buckets, allow writes only there), in a directory of its own that the orphan-file
//! clean-up leaves alone: `<table location>/_lakesync_checkpoints/` holds
//! `manifest.json` ([`CheckpointManifest`]) and one directory per generation,
//! `<snapshot id>-<uuid>/chunk-00000.parquet`, … . A generation writes all its chunks first and
//! the manifest last (one object put, or a rename on local files), so a reader sees the old
//! checkpoint or the new one, never a mix. The generation just replaced is kept (a reader may
//! still be serving it); the one before it is deleted once the new manifest is in place.
//!
//! Files go through the table's own Iceberg `FileIO`, so checkpoints work on every warehouse the
//! lake does (local files, S3, R2, MinIO, SeaweedFS).

use super::iceberg_error;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::UInt64Type;
use iceberg::io::FileIO;
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use serde::{Deserialize, Serialize};

use super::mapping;
use crate::kernel::delta::DeltaOp;
use crate::kernel::delta_batch::batch_to_deltas;
use crate::kernel::parquet_io::{read_parquet, write_parquet};
use crate::kernel::proto::{repeated_entry_len, to_proto};
use crate::kernel::schema::TableSchema;
use crate::kernel::state::{DELETED, HLC};
use crate::runtime::api::TableRef;
use crate::{Error, Result};

/// The default byte budget of one chunk: 16 MiB of encoded `SyncResponse`.
pub const DEFAULT_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// The client id that checkpoint deltas carry.
pub const CHECKPOINT_CLIENT: &str = "lakesync:checkpoint";

/// The directory, under a table's location, that holds its checkpoints.
pub const CHECKPOINT_DIR: &str = "_lakesync_checkpoints";

/// The manifest format version this code writes and reads.
const MANIFEST_VERSION: u32 = 1;

/// What a table's current checkpoint holds: `<checkpoint dir>/<table>/manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointManifest {
    /// The manifest format version (1).
    pub version: u32,
    /// The LakeSync table.
    pub table: String,
    /// The Iceberg snapshot the rows were read from (`None` for a table without snapshots).
    pub snapshot_id: Option<i64>,
    /// The highest HLC of any row in the checkpoint (0 when empty).
    pub max_hlc: u64,
    /// When the checkpoint was generated, in milliseconds since the Unix epoch.
    pub generated_at_ms: u64,
    /// Live rows in the checkpoint.
    pub rows: u64,
    /// The byte budget the chunks were cut to.
    pub chunk_bytes: u64,
    /// The generation directory, relative to the table's checkpoint directory.
    pub generation: String,
    /// The generation this one replaced (kept until the next one replaces this).
    pub previous_generation: Option<String>,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// One chunk of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRef {
    /// The file, relative to the table's checkpoint directory.
    pub path: String,
    /// Rows (snapshot deltas) in it.
    pub rows: u64,
    /// Their encoded `SyncResponse` size, in bytes (at most the budget unless one row is larger).
    pub encoded_bytes: u64,
    /// The Parquet file's size, in bytes.
    pub file_bytes: u64,
}

/// The rows of a lake table's current snapshot as row state (base rows and the deltas since,
/// merged), and the snapshot they are of.
async fn current_state(table: &Table) -> Result<(Option<i64>, RecordBatch)> {
    let (rows, state) = super::read::read_state(table, None).await?;
    Ok((rows.snapshot_id, state))
}

/// `INSERT` snapshot deltas of the live rows of `state`.
fn live_snapshot(
    schema: &TableRef,
    state: &RecordBatch,
    snapshot: Option<i64>,
) -> Result<RecordBatch> {
    let deleted = state
        .column_by_name(DELETED)
        .map(|c| c.as_boolean().clone())
        .ok_or_else(|| Error::internal("row state without _deleted"))?;
    let live = filter_record_batch(state, &arrow::compute::not(&deleted)?)?;
    let hlcs: UInt64Array = live
        .column_by_name(HLC)
        .and_then(|c| c.as_primitive_opt::<UInt64Type>())
        .cloned()
        .ok_or_else(|| Error::internal("row state without a UInt64 _hlc"))?;
    let rows: Vec<u32> = (0..live.num_rows() as u32).collect();
    let ops = vec![DeltaOp::Insert as u8; rows.len()];
    crate::gateway::record::snapshot_batch(
        schema,
        &live,
        &rows,
        &ops,
        &hlcs,
        CHECKPOINT_CLIENT,
        snapshot.unwrap_or_default() as u64,
    )
}

/// Row ranges of `deltas` whose encoded `SyncResponse` fits `budget` bytes each.
fn cut(deltas: &RecordBatch, budget: usize) -> Result<Vec<(usize, usize, u64)>> {
    let rows = batch_to_deltas(deltas)?;
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0usize, 0usize);
    for (i, delta) in rows.iter().enumerate() {
        let framed = repeated_entry_len(&to_proto(delta));
        if i > start && size + framed > budget {
            ranges.push((start, i - start, size as u64));
            start = i;
            size = 0;
        }
        size += framed;
    }
    if start < rows.len() {
        ranges.push((start, rows.len() - start, size as u64));
    }
    Ok(ranges)
}

/// Where `table`'s checkpoints live: `<table location>/_lakesync_checkpoints`.
pub fn checkpoint_dir(table: &Table) -> String {
    let location = table.metadata().location().trim_end_matches('/');
    format!("{location}/{CHECKPOINT_DIR}")
}

async fn load(catalog: &Arc<dyn Catalog>, ident: &TableIdent) -> Result<Table> {
    catalog
        .load_table(ident)
        .await
        .map_err(|e| iceberg_error(format!("loading lake table {ident}"), e))
}

/// Generates a checkpoint of the lake table `ident` (see the module docs) with chunks of at
/// most `chunk_bytes` encoded bytes, and returns its manifest.
pub async fn generate(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    chunk_bytes: usize,
) -> Result<CheckpointManifest> {
    if chunk_bytes < 1024 {
        return Err(Error::invalid(
            "checkpoint",
            format!("chunk size {chunk_bytes} bytes is below the 1 KiB minimum"),
        ));
    }
    let started = std::time::Instant::now();
    let table = load(catalog, ident).await?;
    let schema: TableRef = Arc::new(mapping::table_schema_of(
        ident.name(),
        table.metadata().current_schema(),
    )?);
    let (snapshot, state) = current_state(&table).await?;
    let deltas = live_snapshot(&schema, &state, snapshot)?;
    let max_hlc = deltas
        .column(3)
        .as_primitive_opt::<UInt64Type>()
        .and_then(arrow::compute::max)
        .unwrap_or(0);
    let dir = checkpoint_dir(&table);
    let io = table.file_io();
    let generation = format!(
        "{}-{}",
        snapshot.unwrap_or_default(),
        uuid::Uuid::new_v4().simple()
    );
    let mut chunks = Vec::new();
    for (k, (offset, len, encoded)) in cut(&deltas, chunk_bytes)?.into_iter().enumerate() {
        let path = format!("{generation}/chunk-{k:05}.parquet");
        let bytes = write_parquet(&[deltas.slice(offset, len)])?;
        let file_bytes = bytes.len() as u64;
        let location = format!("{dir}/{path}");
        io.new_output(&location)
            .map_err(|e| iceberg_error(format!("opening checkpoint chunk {location}"), e))?
            .write(bytes)
            .await
            .map_err(|e| iceberg_error(format!("writing checkpoint chunk {location}"), e))?;
        chunks.push(ChunkRef {
            path,
            rows: len as u64,
            encoded_bytes: encoded,
            file_bytes,
        });
    }
    let previous = read_manifest(io, &dir).await.ok().flatten();
    let previous_generation = previous.as_ref().map(|p| p.generation.clone());
    let manifest = CheckpointManifest {
        version: MANIFEST_VERSION,
        table: schema.table.clone(),
        snapshot_id: snapshot,
        max_hlc,
        generated_at_ms: crate::adapters::sql_common::now_micros() as u64 / 1000,
        rows: deltas.num_rows() as u64,
        chunk_bytes: chunk_bytes as u64,
        generation,
        previous_generation,
        chunks,
    };
    let location = format!("{dir}/manifest.json");
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::internal(format!("encoding a checkpoint manifest: {e}")))?;
    io.new_output(&location)
        .map_err(|e| iceberg_error(format!("opening {location}"), e))?
        .write(text.into())
        .await
        .map_err(|e| iceberg_error(format!("writing {location}"), e))?;
    // Keep the generation just replaced (a reader may be serving it); remove the one before.
    if let Some(older) = previous.and_then(|p| p.previous_generation) {
        remove_generation(io, &dir, &older).await;
    }
    tracing::info!(
        table = %ident,
        rows = manifest.rows,
        chunks = manifest.chunks.len(),
        snapshot = ?snapshot,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "lake checkpoint generated"
    );
    Ok(manifest)
}

/// Deletes the generation directory `generation` under `dir` (best effort: a failure is
/// logged and the files stay).
async fn remove_generation(io: &FileIO, dir: &str, generation: &str) {
    let prefix = format!("{dir}/{generation}/");
    if let Err(e) = io.delete_prefix(&prefix).await {
        tracing::warn!(prefix, error = %e, "could not remove an old checkpoint generation");
    }
}

async fn read_manifest(io: &FileIO, dir: &str) -> Result<Option<CheckpointManifest>> {
    let location = format!("{dir}/manifest.json");
    let exists = io
        .exists(&location)
        .await
        .map_err(|e| iceberg_error(format!("looking for {location}"), e))?;
    if !exists {
        return Ok(None);
    }
    let bytes = io
        .new_input(&location)
        .map_err(|e| iceberg_error(format!("opening {location}"), e))?
        .read()
        .await
        .map_err(|e| iceberg_error(format!("reading {location}"), e))?;
    let manifest: CheckpointManifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(
            "checkpoint manifest",
            format!("{location} is not a manifest: {e}"),
        )
    })?;
    if manifest.version != MANIFEST_VERSION {
        return Err(Error::invalid(
            "checkpoint manifest",
            format!(
                "{location} has version {}, this LakeSync reads version {MANIFEST_VERSION}",
                manifest.version
            ),
        ));
    }
    Ok(Some(manifest))
}

/// A table's current checkpoint: its manifest and where its chunks are.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The manifest.
    pub manifest: CheckpointManifest,
    /// The table's schema (from the lake).
    pub schema: TableRef,
    dir: String,
    io: FileIO,
}

impl Checkpoint {
    /// The delta batches of chunk `k` (every row of it; filter them for the client).
    pub async fn read_chunk(&self, k: usize) -> Result<Vec<RecordBatch>> {
        let chunk = self.manifest.chunks.get(k).ok_or_else(|| {
            Error::invalid(
                "checkpoint",
                format!("table {:?} has no chunk {k}", self.manifest.table),
            )
        })?;
        let location = format!("{}/{}", self.dir, chunk.path);
        let bytes = self
            .io
            .new_input(&location)
            .map_err(|e| iceberg_error(format!("opening checkpoint chunk {location}"), e))?
            .read()
            .await
            .map_err(|e| iceberg_error(format!("reading checkpoint chunk {location}"), e))?;
        read_parquet(bytes)
    }
}

/// The current checkpoint of the lake table `ident`, or `None` when none was generated.
pub async fn open(catalog: &Arc<dyn Catalog>, ident: &TableIdent) -> Result<Option<Checkpoint>> {
    let table = load(catalog, ident).await?;
    let dir = checkpoint_dir(&table);
    let io = table.file_io().clone();
    let Some(manifest) = read_manifest(&io, &dir).await? else {
        return Ok(None);
    };
    let schema: TableSchema =
        mapping::table_schema_of(ident.name(), table.metadata().current_schema())?;
    Ok(Some(Checkpoint {
        manifest,
        schema: Arc::new(schema),
        dir,
        io,
    }))
}

/// Reads every chunk of `checkpoint` and keeps the rows `keep` accepts (a client's sync rules),
/// calling `each` with every non-empty filtered batch, one chunk in memory at a time.
pub async fn stream_filtered<F, E>(checkpoint: &Checkpoint, mut keep: F, mut each: E) -> Result<u64>
where
    F: FnMut(&RecordBatch) -> Result<arrow::array::BooleanArray>,
    E: FnMut(RecordBatch) -> Result<()>,
{
    let mut sent = 0u64;
    for k in 0..checkpoint.manifest.chunks.len() {
        for batch in checkpoint.read_chunk(k).await? {
            let mask = keep(&batch)?;
            let kept = filter_record_batch(&batch, &mask)?;
            if kept.num_rows() > 0 {
                sent += kept.num_rows() as u64;
                each(kept)?;
            }
        }
    }
    Ok(sent)
}
