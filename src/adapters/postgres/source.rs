//! [`PostgresSource`]: deltas from tables of a Postgres database, which it only reads (CDC
//! also creates its publication and replication slot).
//!
//! A source reads all its tables by one family of strategy ([`PostgresStrategy`]):
//! - **snapshot**: the tables once, by parallel binary `COPY` ([`super::snapshot`]); every row
//!   is an INSERT of every column. Position `{"snapshot": {table: progress}}`.
//! - **cdc**: logical decoding ([`super::cdc`]): an initial snapshot (position
//!   `{"phase": "snapshot"}`), then the changes (position `{"phase": "stream", "lsn", "skip"}`).
//! - **cursor** / **diff** polling ([`super::poll`]), which may be mixed within a source.
//!
//! Schemas are the declared ones, or discovered from the catalogue ([`super::types`]); the id
//! column is the row id, not a data column. Deltas are written by `postgres:<source name>`.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Map, Value};
use sqlx::Connection;

use super::cdc::{CdcSettings, CdcSlot, CdcTable, StreamPosition, StreamReader};
use super::snapshot::{self, CopyProgress, ReadSettings, SnapshotInfo, TableToCopy};
use super::types::{discovered_columns, table_columns};
use super::{connect, poll};
use crate::kernel::hlc::Hlc;
use crate::kernel::schema::TableSchema;
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// Rows (or deltas) per batch.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How one table is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostgresStrategy {
    /// Rows whose `(cursor_column, id)` is past the last pair read, re-reading a `lookback`
    /// window behind the newest cursor value for late commits.
    Cursor {
        /// The growing column.
        cursor_column: String,
        /// How far behind the newest cursor value to look again (µs for timestamps, units
        /// for numbers); `None` for the default.
        lookback: Option<std::time::Duration>,
    },
    /// Whole-table snapshots compared with the previous one.
    Diff,
    /// Logical decoding.
    Cdc,
    /// The whole table once.
    Snapshot,
}

/// One table of a [`PostgresSource`].
#[derive(Clone, Debug)]
pub struct PostgresTableSpec {
    /// The table name (in the source's Postgres schema).
    pub table: String,
    /// How it is read.
    pub strategy: PostgresStrategy,
    /// The column holding the row id.
    pub id_column: String,
    /// The declared schema, or `None` to discover it.
    pub schema: Option<TableSchema>,
}

/// Settings of a [`PostgresSource`].
#[derive(Clone, Debug)]
pub struct PostgresSourceOptions {
    /// The Postgres schema the tables are in.
    pub pg_schema: String,
    /// How often to poll when following.
    pub poll_interval: std::time::Duration,
    /// CDC: the replication slot.
    pub slot: String,
    /// CDC: the publication.
    pub publication: String,
    /// CDC: how often an idle slot is moved on.
    pub heartbeat_interval: std::time::Duration,
    /// Snapshot: parallel readers.
    pub parallelism: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Where diff state is kept.
    pub state_dir: Option<std::path::PathBuf>,
    /// Snapshot: heap blocks per chunk (default [`snapshot::CHUNK_BLOCKS`]).
    pub chunk_blocks: u64,
}

/// A source reading Postgres tables: see the [module docs](self).
pub struct PostgresSource {
    name: String,
    url: String,
    specs: Vec<PostgresTableSpec>,
    options: PostgresSourceOptions,
    hlc: Arc<Hlc>,
    resolved: Option<Vec<TableRef>>,
    slot: Arc<CdcSlot>,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("name", &self.name)
            .field("tables", &self.specs)
            .field("options", &self.options)
            .finish()
    }
}

/// The strategy family a source reads by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Snapshot,
    Cdc,
    Poll,
}

impl PostgresSource {
    /// A source named `name` reading `specs` from the database at `url`. Nothing is connected
    /// until the tables are asked for. Fails when the tables mix strategy families (snapshot,
    /// cdc, polling).
    pub fn new(
        name: &str,
        url: &str,
        specs: Vec<PostgresTableSpec>,
        options: PostgresSourceOptions,
    ) -> Result<Self> {
        let source = Self {
            name: name.to_string(),
            url: url.to_string(),
            slot: Arc::new(CdcSlot::new(
                url,
                &options.slot,
                &format!("postgres source {name:?}"),
            )),
            specs,
            options,
            hlc: Arc::new(Hlc::default()),
            resolved: None,
        };
        source.family()?;
        Ok(source)
    }

    fn here(&self) -> String {
        format!("postgres source {:?}", self.name)
    }

    fn family(&self) -> Result<Family> {
        let of = |s: &PostgresStrategy| match s {
            PostgresStrategy::Snapshot => Family::Snapshot,
            PostgresStrategy::Cdc => Family::Cdc,
            PostgresStrategy::Cursor { .. } | PostgresStrategy::Diff => Family::Poll,
        };
        let mut families = self.specs.iter().map(|s| of(&s.strategy));
        let first = families.next().unwrap_or(Family::Poll);
        if families.any(|f| f != first) {
            return Err(Error::invalid(
                "postgres source",
                format!(
                    "{}: its tables mix snapshot, cdc and polling strategies; use one source per kind",
                    self.here()
                ),
            ));
        }
        Ok(first)
    }

    /// The tables with their schemas (declared, or discovered once and remembered).
    async fn resolve(&mut self) -> Result<Vec<TableRef>> {
        if let Some(tables) = &self.resolved {
            return Ok(tables.clone());
        }
        let here = self.here();
        let mut conn = connect(&self.url, &here).await?;
        let mut out = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            let columns = table_columns(&mut conn, &self.options.pg_schema, &spec.table, &here)
                .await?
                .ok_or_else(|| {
                    Error::invalid(
                        "postgres source",
                        format!(
                            "{here}: table {}.{} does not exist",
                            self.options.pg_schema, spec.table
                        ),
                    )
                })?;
            if !columns.iter().any(|c| c.name == spec.id_column) {
                return Err(Error::invalid(
                    "postgres source",
                    format!(
                        "{here}: table {:?} has no id column {:?}",
                        spec.table, spec.id_column
                    ),
                ));
            }
            let schema = match &spec.schema {
                Some(declared) => {
                    for c in &declared.columns {
                        if !columns.iter().any(|p| p.name == c.name) {
                            return Err(Error::schema(format!(
                                "{here}: table {:?} is declared with column {:?}, which the database table does not have",
                                spec.table, c.name
                            )));
                        }
                    }
                    declared.clone()
                }
                None => TableSchema::new(
                    spec.table.clone(),
                    discovered_columns(&columns, &spec.id_column, &here)?,
                ),
            };
            out.push(Arc::new(schema));
        }
        conn.close().await.ok();
        self.resolved = Some(out.clone());
        Ok(out)
    }

    fn client_id(&self) -> String {
        format!("postgres:{}", self.name)
    }

    fn read_settings(&self) -> ReadSettings {
        ReadSettings {
            url: self.url.clone(),
            parallelism: self.options.parallelism,
            batch_size: self.options.batch_size,
            client_id: self.client_id(),
            here: self.here(),
            chunk_blocks: self.options.chunk_blocks,
        }
    }

    fn copy_tables(&self, tables: &[TableRef]) -> Vec<TableToCopy> {
        self.specs
            .iter()
            .zip(tables)
            .map(|(spec, table)| TableToCopy {
                table: Arc::clone(table),
                pg_schema: self.options.pg_schema.clone(),
                id_column: spec.id_column.clone(),
            })
            .collect()
    }

    /// A fresh progress per table, cutting each into chunks now.
    async fn fresh_progress(&self, tables: &[TableToCopy]) -> Result<Vec<CopyProgress>> {
        let here = self.here();
        let mut conn = connect(&self.url, &here).await?;
        let mut out = Vec::with_capacity(tables.len());
        for t in tables {
            out.push(CopyProgress {
                chunks: snapshot::count_chunks(&mut conn, t, self.options.chunk_blocks, &here)
                    .await?,
                ..Default::default()
            });
        }
        conn.close().await.ok();
        Ok(out)
    }

    async fn open_snapshot(
        &mut self,
        tables: Vec<TableRef>,
        resume: Option<Position>,
        mode: ReadMode,
    ) -> Result<SourceStream> {
        let here = self.here();
        let copy = self.copy_tables(&tables);
        let progress = match &resume {
            None => self.fresh_progress(&copy).await?,
            Some(p) => progress_of(p, &copy, "snapshot", &here)?,
        };
        let until = match &mode {
            ReadMode::Replay { until } => Some(progress_of(until, &copy, "snapshot", &here)?),
            _ => None,
        };
        if progress.iter().all(CopyProgress::is_complete) {
            return Ok(futures::stream::empty().boxed());
        }
        let read = snapshot::start(
            self.read_settings(),
            copy.clone(),
            &progress,
            until.as_deref(),
            Arc::clone(&self.hlc),
        )
        .await?;
        let names: Vec<String> = tables.iter().map(|t| t.table.clone()).collect();
        let stream = futures::stream::unfold(
            (read.batches, progress, tables, names),
            |(mut rx, mut progress, tables, names)| async move {
                let item = rx.recv().await?;
                let out = item.map(|chunk| {
                    snapshot::record(&mut progress, &chunk);
                    SourceBatch {
                        table: Arc::clone(&tables[chunk.table]),
                        batch: chunk.batch,
                        position: snapshot_position("snapshot", &names, &progress, None),
                    }
                });
                Some((out, (rx, progress, tables, names)))
            },
        );
        Ok(stream.boxed())
    }

    fn cdc_settings(&self) -> CdcSettings {
        CdcSettings {
            url: self.url.clone(),
            pg_schema: self.options.pg_schema.clone(),
            publication: self.options.publication.clone(),
            poll_interval: self.options.poll_interval,
            heartbeat_interval: self.options.heartbeat_interval,
            batch_size: self.options.batch_size,
            client_id: self.client_id(),
            here: self.here(),
        }
    }

    async fn open_cdc(
        &mut self,
        tables: Vec<TableRef>,
        resume: Option<Position>,
        mode: ReadMode,
    ) -> Result<SourceStream> {
        let here = self.here();
        let settings = self.cdc_settings();
        let cdc_tables: Vec<CdcTable> = self
            .specs
            .iter()
            .zip(&tables)
            .map(|(s, t)| CdcTable {
                table: Arc::clone(t),
                id_column: s.id_column.clone(),
            })
            .collect();
        let stream_at = match &resume {
            Some(p) if phase(p) == Some("stream") => Some(stream_position(p, &here)?),
            _ => None,
        };
        super::cdc::prepare(
            &settings,
            &self.slot,
            &cdc_tables,
            resume.is_none(),
            stream_at.is_some(),
        )
        .await?;

        let until = match &mode {
            ReadMode::Replay { until } if phase(until) == Some("stream") => {
                Some(stream_position(until, &here)?)
            }
            _ => None,
        };
        if let Some(position) = stream_at {
            let reader = StreamReader::open(
                settings,
                Arc::clone(&self.slot),
                cdc_tables,
                Arc::clone(&self.hlc),
                position,
                mode,
                until,
            )
            .await?;
            return Ok(stream_of(reader));
        }

        // The initial snapshot (again from the start if an earlier one was interrupted), then
        // the stream from the slot's start, skipping what the snapshot holds.
        let copy = self.copy_tables(&tables);
        let progress = self.fresh_progress(&copy).await?;
        let read = snapshot::start(
            self.read_settings(),
            copy,
            &progress,
            None,
            Arc::clone(&self.hlc),
        )
        .await?;
        let info = read.info.clone();
        let names: Vec<String> = tables.iter().map(|t| t.table.clone()).collect();
        let snapshot_done = progress.iter().all(CopyProgress::is_complete);
        let snapshot_stream = futures::stream::unfold(
            (read.batches, progress, tables, names, info.clone()),
            |(mut rx, mut progress, tables, names, info)| async move {
                let item = rx.recv().await?;
                let out = item.map(|chunk| {
                    snapshot::record(&mut progress, &chunk);
                    // Once the snapshot is whole, the position is the stream's start.
                    let position = if progress.iter().all(CopyProgress::is_complete) {
                        stream_start(&info)
                    } else {
                        snapshot_position("snapshot", &names, &progress, Some(&info))
                    };
                    SourceBatch {
                        table: Arc::clone(&tables[chunk.table]),
                        batch: chunk.batch,
                        position,
                    }
                });
                Some((out, (rx, progress, tables, names, info)))
            },
        );
        let _ = snapshot_done;
        let slot = Arc::clone(&self.slot);
        let hlc = Arc::clone(&self.hlc);
        let stream_mode = mode;
        let then = futures::stream::once(async move {
            let start = StreamPosition {
                lsn: "0/0".to_string(),
                skip: 0,
                snapshot: Some(info),
            };
            StreamReader::open(settings, slot, cdc_tables, hlc, start, stream_mode, None).await
        })
        .flat_map(|reader| match reader {
            Ok(reader) => stream_of(reader),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        });
        Ok(snapshot_stream.chain(then).boxed())
    }
}

/// The stream position right after the initial snapshot `info`.
fn stream_start(info: &SnapshotInfo) -> Position {
    let start = StreamPosition {
        lsn: "0/0".to_string(),
        skip: 0,
        snapshot: Some(info.clone()),
    };
    let mut out = Map::new();
    out.insert("phase".into(), Value::String("stream".into()));
    if let Ok(Value::Object(fields)) = serde_json::to_value(start) {
        out.extend(fields);
    }
    Position(Value::Object(out))
}

fn stream_of(reader: StreamReader) -> SourceStream {
    futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        match reader.next().await {
            Ok(Some(batch)) => Some((Ok(batch), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// `{key: {table: progress}}` (with `"phase": "snapshot"` and the snapshot for CDC).
fn snapshot_position(
    key: &str,
    names: &[String],
    progress: &[CopyProgress],
    info: Option<&SnapshotInfo>,
) -> Position {
    let tables: Map<String, Value> = names
        .iter()
        .zip(progress)
        .map(|(n, p)| (n.clone(), serde_json::to_value(p).unwrap_or(Value::Null)))
        .collect();
    let mut out = Map::new();
    if let Some(info) = info {
        out.insert("phase".into(), Value::String("snapshot".into()));
        out.insert(
            "snapshot_info".into(),
            serde_json::to_value(info).unwrap_or(Value::Null),
        );
    }
    out.insert(key.into(), Value::Object(tables));
    Position(Value::Object(out))
}

fn progress_of(
    position: &Position,
    tables: &[TableToCopy],
    key: &str,
    here: &str,
) -> Result<Vec<CopyProgress>> {
    let bad = |msg: String| Error::invalid("source position", format!("{here}: {msg}"));
    let map = position
        .0
        .get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(format!(
                "expected {{\"{key}\": {{table: progress}}}}, got {}",
                position.0
            ))
        })?;
    tables
        .iter()
        .map(|t| match map.get(&t.table.table) {
            None => Ok(CopyProgress::default()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| bad(format!("table {:?}: {e}", t.table.table))),
        })
        .collect()
}

fn phase(position: &Position) -> Option<&str> {
    position.0.get("phase").and_then(Value::as_str)
}

fn stream_position(position: &Position, here: &str) -> Result<StreamPosition> {
    serde_json::from_value(position.0.clone()).map_err(|e| {
        Error::invalid(
            "source position",
            format!("{here}: not a CDC stream position ({e}): {}", position.0),
        )
    })
}

#[async_trait]
impl Source for PostgresSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        self.resolve().await
    }

    fn can_replay(&self, from: Option<&Position>) -> bool {
        // A CDC snapshot cannot be repeated exactly: the data has moved on.
        match self.family() {
            Ok(Family::Cdc) => from.is_some_and(|p| phase(p) == Some("stream")),
            _ => true,
        }
    }

    /// For a fresh snapshot read, the planner's row estimate of each table (`reltuples`, kept
    /// by `ANALYZE` and autovacuum); unknown when resuming, for polling and CDC, or when a table
    /// was never analysed.
    async fn estimated_rows(&mut self, resume: Option<&Position>) -> Result<Option<u64>> {
        if resume.is_some() || self.family()? != Family::Snapshot {
            return Ok(None);
        }
        let tables = self.resolve().await?;
        let here = self.here();
        let mut conn = connect(&self.url, &here).await?;
        let mut total = 0u64;
        for t in self.copy_tables(&tables) {
            let estimate: Option<f32> = sqlx::query_scalar(
                "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
            )
            .bind(&t.pg_schema)
            .bind(&t.table.table)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| {
                super::pg_error(
                    format!("{here}: estimating the size of {:?}", t.table.table),
                    e,
                )
            })?;
            match estimate {
                Some(n) if n >= 0.0 => total += n as u64,
                _ => return Ok(None),
            }
        }
        conn.close().await.ok();
        Ok(Some(total))
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        let tables = self.resolve().await?;
        match self.family()? {
            Family::Snapshot => self.open_snapshot(tables, resume, mode).await,
            Family::Cdc => self.open_cdc(tables, resume, mode).await,
            Family::Poll => {
                poll::open(
                    &self.name,
                    &self.url,
                    &self.specs,
                    tables,
                    &self.options,
                    Arc::clone(&self.hlc),
                    resume,
                    mode,
                )
                .await
            }
        }
    }

    async fn committed(&mut self, position: &Position) -> Result<()> {
        if self.family()? != Family::Cdc || phase(position) != Some("stream") {
            return Ok(());
        }
        let at = stream_position(position, &self.here())?;
        match super::pgoutput::parse_lsn(&at.lsn) {
            Some(lsn) if lsn > 0 => self.slot.advance(lsn).await,
            _ => Ok(()),
        }
    }
}
