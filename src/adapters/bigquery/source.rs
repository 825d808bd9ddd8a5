//! [`BigQuerySource`]: tables of a BigQuery dataset as deltas (`type: bigquery` under `sources:`).
//!
//! Each table is read by one strategy; one source's tables are all **snapshot**, or all polled
//! (**cursor** / **diff**, see [`super::poll`]):
//!
//! - **snapshot**: the whole table once, through the Storage Read API in Arrow format
//!   ([`super::read`]): one read session per table pinned to a snapshot time, its streams read in
//!   parallel (at most `parallelism` at once). Every row becomes a full-row `INSERT` delta keyed
//!   by `id_column`, built column-wise by the kernel's bulk insert builder
//!   (`lakesync_operators::bulk::insert_batch`); every delta of a table carries the same HLC (the
//!   snapshot time) and deltaIds hash the cells, so reading the same snapshot again yields the
//!   very same deltas. Batches are at most `batch_size` rows.
//!
//!   **Position**: per table, `{"session", "snapshot", "expires", "streams", "rows"}` — the
//!   session, its snapshot time (µs), its expiry, its stream names and the rows delivered from each
//!   stream — with `"done": true` once the table has been read whole (an empty batch carries that
//!   position). A resume continues the same session, each stream after its
//!   delivered rows; a session that has expired (BigQuery keeps them about 6 hours) is replaced by
//!   a new one **at the same snapshot time** read from the start: the rows already delivered
//!   arrive again as identical deltas, which the sinks' deltaId idempotency absorbs. A replay
//!   (`ReadMode::Replay`) reads each stream exactly up to the rows the original epoch reached.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::cast;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Map, Value, json};

use super::client::{BigQueryClient, BigQueryConfig};
use super::read::{Session, StreamBatch, create_session, now_micros, read_streams};
use super::{bq_error, check_column, check_table};
use crate::kernel::bulk::insert_batch;
use crate::kernel::delta_batch::{RESERVED, delta_schema};
use crate::kernel::hlc::{Hlc, HlcTimestamp};
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// How a table of a [`BigQuerySource`] is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BigQueryStrategy {
    /// The whole table once, through the Storage Read API.
    Snapshot,
    /// Rows whose `(cursor_column, id)` is past the last pair read (cannot see deletes).
    Cursor {
        /// A column that grows with every change.
        cursor_column: String,
    },
    /// The whole table compared with the previous snapshot (sees deletes).
    Diff,
}

/// One table of a [`BigQuerySource`].
#[derive(Clone, Debug)]
pub struct BigQueryTableSpec {
    /// The table's schema (its name is the BigQuery table's).
    pub schema: TableRef,
    /// How it is read.
    pub strategy: BigQueryStrategy,
    /// The column holding each row's id.
    pub id_column: String,
}

/// Settings of a [`BigQuerySource`].
#[derive(Clone, Debug)]
pub struct BigQuerySourceOptions {
    /// Snapshot: streams read at once (and asked for: at most `4 × parallelism`).
    pub parallelism: usize,
    /// Rows per emitted batch at most.
    pub batch_size: usize,
    /// Where diff tables keep their previous snapshot.
    pub state_dir: Option<PathBuf>,
}

impl Default for BigQuerySourceOptions {
    fn default() -> Self {
        Self {
            parallelism: 4,
            batch_size: 10_000,
            state_dir: None,
        }
    }
}

/// Reads tables of one BigQuery dataset (see the [module docs](self)).
#[derive(Debug)]
pub struct BigQuerySource {
    name: String,
    config: BigQueryConfig,
    tables: Vec<BigQueryTableSpec>,
    options: BigQuerySourceOptions,
    hlc: Arc<Hlc>,
}

impl BigQuerySource {
    /// A source named `name` reading `tables` with `config`. Fails when the tables mix snapshot
    /// and polling strategies, or a name is not a BigQuery name.
    pub fn new(
        name: impl Into<String>,
        config: BigQueryConfig,
        tables: Vec<BigQueryTableSpec>,
        options: BigQuerySourceOptions,
    ) -> Result<Self> {
        let name = name.into();
        let snapshots = tables
            .iter()
            .filter(|t| t.strategy == BigQueryStrategy::Snapshot)
            .count();
        if snapshots != 0 && snapshots != tables.len() {
            return Err(Error::invalid(
                "bigquery source",
                format!(
                    "source {name:?}: its tables mix snapshot and polling strategies; use one source per kind"
                ),
            ));
        }
        for t in &tables {
            check_table(&t.schema.table)?;
            check_column(&t.id_column)?;
            for c in &t.schema.columns {
                check_column(&c.name)?;
            }
            if let BigQueryStrategy::Cursor { cursor_column } = &t.strategy {
                check_column(cursor_column)?;
            }
        }
        Ok(Self {
            hlc: Arc::new(Hlc::default()),
            name,
            config,
            tables,
            options,
        })
    }

    fn here(&self) -> String {
        format!("bigquery source {:?}", self.name)
    }

    /// The client id of the deltas this source makes.
    pub fn client_id(&self) -> String {
        format!("bigquery:{}", self.name)
    }
}

/// Where one table's snapshot read is.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TableProgress {
    session: Session,
    rows: Vec<u64>,
}

impl TableProgress {
    fn to_json(&self) -> Value {
        json!({
            "session": self.session.name,
            "snapshot": self.session.snapshot_micros,
            "expires": self.session.expires_micros,
            "streams": self.session.streams,
            "rows": self.rows,
        })
    }

    /// The progress a position entry records and whether the table is done (`None` for an entry
    /// without a session); its `schema` is empty (positions do not carry it).
    fn from_json(entry: &Value, here: &str) -> Result<Option<(Self, bool)>> {
        let done = entry.get("done").and_then(Value::as_bool) == Some(true);
        if done && entry.get("session").is_none() {
            return Ok(None);
        }
        let bad = || {
            Error::invalid(
                "source position",
                format!("{here}: {entry} is not a position of this source"),
            )
        };
        let session = entry
            .get("session")
            .and_then(Value::as_str)
            .ok_or_else(bad)?;
        let snapshot = entry
            .get("snapshot")
            .and_then(Value::as_i64)
            .ok_or_else(bad)?;
        let expires = entry.get("expires").and_then(Value::as_i64).unwrap_or(0);
        let streams: Vec<String> = entry
            .get("streams")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(bad)?;
        let rows: Vec<u64> = entry
            .get("rows")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(bad)?;
        if rows.len() != streams.len() {
            return Err(bad());
        }
        Ok(Some((
            Self {
                session: Session {
                    name: session.to_string(),
                    streams,
                    schema: Vec::new(),
                    snapshot_micros: snapshot,
                    expires_micros: expires,
                },
                rows,
            },
            done,
        )))
    }
}

/// Turns Storage Read batches of one table into full-row insert deltas.
#[derive(Clone)]
struct Rows {
    table: TableRef,
    id: String,
    client_id: String,
    hlc: HlcTimestamp,
}

impl Rows {
    fn deltas(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let ids = batch.column_by_name(&self.id).ok_or_else(|| {
            Error::schema(format!(
                "table {:?} has no id column {:?}",
                self.table.table, self.id
            ))
        })?;
        let ids = cast(ids, &arrow::datatypes::DataType::Utf8)?;
        let ids = ids
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| Error::internal("a Utf8 cast that is not a StringArray"))?;
        if ids.null_count() > 0 {
            return Err(Error::invalid(
                "bigquery source",
                format!(
                    "table {:?}: id column {:?} has nulls; every row needs an id",
                    self.table.table, self.id
                ),
            ));
        }
        let schema = delta_schema(&self.table);
        let mut columns = Vec::with_capacity(self.table.columns.len());
        for (k, column) in self.table.columns.iter().enumerate() {
            let want = schema.field(RESERVED + k).data_type();
            let array = match batch.column_by_name(&column.name) {
                Some(array) => cast(array, want)?,
                None => arrow::array::new_null_array(want, batch.num_rows()),
            };
            columns.push(array);
        }
        let hlcs = vec![self.hlc; batch.num_rows()];
        insert_batch(&self.table, &self.client_id, ids, &hlcs, columns)
    }
}

/// The snapshot reader: tables one after another, each table's streams in parallel.
struct SnapshotReader {
    here: String,
    client: BigQueryClient,
    tables: Vec<BigQueryTableSpec>,
    options: BigQuerySourceOptions,
    client_id: String,
    position: Map<String, Value>,
    /// The position each stream must stop at (a replay).
    until: Option<Map<String, Value>>,
    next_table: usize,
    current: Option<Current>,
    ready: VecDeque<SourceBatch>,
}

struct Current {
    index: usize,
    progress: TableProgress,
    limits: Option<Vec<u64>>,
    rows: Rows,
    stream: BoxStream<'static, Result<StreamBatch>>,
}

impl SnapshotReader {
    fn columns(spec: &BigQueryTableSpec) -> Vec<String> {
        let mut columns = vec![spec.id_column.clone()];
        for c in &spec.schema.columns {
            if !columns.contains(&c.name) {
                columns.push(c.name.clone());
            }
        }
        columns
    }

    /// Starts (or resumes) table `index`; `false` when it is already done.
    async fn start(&mut self, index: usize) -> Result<bool> {
        let spec = self.tables[index].clone();
        let name = &spec.schema.table;
        let mut resumed = match self.position.get(name) {
            Some(entry) => match TableProgress::from_json(entry, &self.here)? {
                None | Some((_, true)) => return Ok(false),
                Some((p, false)) => Some(p),
            },
            None => None,
        };
        let limits = match &self.until {
            None => None,
            Some(until) => match until.get(name) {
                // The original epoch did not reach this table.
                None => return Ok(false),
                Some(entry) => match TableProgress::from_json(entry, &self.here)? {
                    None | Some((_, true)) => None,
                    Some((p, false)) => Some(p.rows),
                },
            },
        };
        // A replay of the epoch that started this table reads the session that epoch read.
        if resumed.is_none()
            && let Some(entry) = self.until.as_ref().and_then(|u| u.get(name))
            && let Some((mut p, _)) = TableProgress::from_json(entry, &self.here)?
        {
            p.rows.iter_mut().for_each(|r| *r = 0);
            resumed = Some(p);
        }
        let columns = Self::columns(&spec);
        let parallelism = self.options.parallelism.max(1);
        let max_streams = u32::try_from(parallelism.saturating_mul(4)).unwrap_or(u32::MAX);
        let progress = match resumed {
            // The same session; its Arrow schema comes with each stream's first response.
            Some(p)
                if p.session.expires_micros == 0
                    || p.session.expires_micros > now_micros() + 60_000_000 =>
            {
                p
            }
            Some(p) => {
                tracing::warn!(source = %self.here, table = %name, session = %p.session.name, "the read session has expired; reading the same snapshot again with a new session");
                let session = create_session(
                    &mut self.client,
                    name,
                    &columns,
                    Some(p.session.snapshot_micros),
                    max_streams,
                    &self.here,
                )
                .await?;
                let rows = vec![0; session.streams.len()];
                TableProgress { session, rows }
            }
            None => {
                let session = create_session(
                    &mut self.client,
                    name,
                    &columns,
                    None,
                    max_streams,
                    &self.here,
                )
                .await?;
                let rows = vec![0; session.streams.len()];
                TableProgress { session, rows }
            }
        };
        let ms = u64::try_from(progress.session.snapshot_micros / 1_000).unwrap_or_default();
        let rows = Rows {
            table: Arc::clone(&spec.schema),
            id: spec.id_column.clone(),
            client_id: self.client_id.clone(),
            hlc: HlcTimestamp::new(ms, 0)?,
        };
        tracing::info!(source = %self.here, table = %name, session = %progress.session.name, streams = progress.session.streams.len(), "reading a snapshot through the Storage Read API");
        let stream = read_streams(
            &self.client,
            &progress.session,
            &progress.rows,
            parallelism,
            &self.here,
        );
        self.position.insert(name.clone(), progress.to_json());
        self.current = Some(Current {
            index,
            progress,
            limits,
            rows,
            stream,
        });
        Ok(true)
    }

    async fn next(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Ok(Some(batch));
            }
            let Some(current) = self.current.as_mut() else {
                if self.next_table >= self.tables.len() {
                    return Ok(None);
                }
                let index = self.next_table;
                self.next_table += 1;
                self.start(index).await?;
                continue;
            };
            let done = |c: &Current| {
                c.limits
                    .as_ref()
                    .is_some_and(|l| c.progress.rows.iter().zip(l).all(|(r, l)| r >= l))
            };
            let item = if done(current) {
                None
            } else {
                current.stream.next().await
            };
            let Some(item) = item else {
                let current = self.current.take();
                if let Some(current) = current {
                    let name = self.tables[current.index].schema.table.clone();
                    let exhausted = current.limits.is_none();
                    if exhausted {
                        let mut entry = current.progress.to_json();
                        entry["done"] = json!(true);
                        self.position.insert(name, entry);
                        // Mark the table done with an empty batch, so a resume skips it.
                        let batch = current
                            .rows
                            .deltas(&RecordBatch::new_empty(self.empty_schema(current.index)));
                        if let Ok(batch) = batch {
                            self.ready.push_back(SourceBatch {
                                table: Arc::clone(&current.rows.table),
                                batch,
                                position: Position(Value::Object(self.position.clone())),
                            });
                        }
                    }
                }
                continue;
            };
            let StreamBatch { stream, mut batch } = item?;
            if let Some(limit) = current.limits.as_ref().and_then(|l| l.get(stream)) {
                let left = limit.saturating_sub(current.progress.rows[stream]) as usize;
                if batch.num_rows() > left {
                    batch = batch.slice(0, left);
                }
            }
            let size = self.options.batch_size.max(1);
            let mut offset = 0;
            while offset < batch.num_rows() {
                let len = size.min(batch.num_rows() - offset);
                let part = batch.slice(offset, len);
                offset += len;
                let deltas = current.rows.deltas(&part).map_err(|e| {
                    Error::schema(format!(
                        "{}: table {:?}: {e}",
                        self.here, current.rows.table.table
                    ))
                })?;
                current.progress.rows[stream] += len as u64;
                self.position
                    .insert(current.rows.table.table.clone(), current.progress.to_json());
                self.ready.push_back(SourceBatch {
                    table: Arc::clone(&current.rows.table),
                    batch: deltas,
                    position: Position(Value::Object(self.position.clone())),
                });
            }
        }
    }

    /// An Arrow schema of the id and data columns of table `index`, for an empty batch.
    fn empty_schema(&self, index: usize) -> arrow::datatypes::SchemaRef {
        let spec = &self.tables[index];
        let delta = delta_schema(&spec.schema);
        let mut fields = vec![arrow::datatypes::Field::new(
            &spec.id_column,
            arrow::datatypes::DataType::Utf8,
            true,
        )];
        for (k, c) in spec.schema.columns.iter().enumerate() {
            if c.name != spec.id_column {
                fields.push(arrow::datatypes::Field::new(
                    &c.name,
                    delta.field(RESERVED + k).data_type().clone(),
                    true,
                ));
            }
        }
        Arc::new(arrow::datatypes::Schema::new(fields))
    }
}

fn object(position: Option<Position>, here: &str) -> Result<Map<String, Value>> {
    match position.map(|p| p.0) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(Error::invalid(
            "source position",
            format!("{here}: expected a JSON object keyed by table, got {other}"),
        )),
    }
}

#[async_trait]
impl Source for BigQuerySource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        Ok(self.tables.iter().map(|t| Arc::clone(&t.schema)).collect())
    }

    /// For a fresh snapshot read, the tables' `numRows`; unknown when resuming or polling.
    async fn estimated_rows(&mut self, resume: Option<&Position>) -> Result<Option<u64>> {
        let snapshot = self
            .tables
            .iter()
            .all(|t| t.strategy == BigQueryStrategy::Snapshot);
        if resume.is_some() || !snapshot {
            return Ok(None);
        }
        let here = self.here();
        let client = BigQueryClient::connect(self.config.clone(), &here).await?;
        let mut total = 0;
        for t in &self.tables {
            match client.row_count(&t.schema.table, &here).await? {
                Some(n) => total += n,
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        let here = self.here();
        let client = BigQueryClient::connect(self.config.clone(), &here).await?;
        let polled = self
            .tables
            .iter()
            .any(|t| t.strategy != BigQueryStrategy::Snapshot);
        if polled {
            return super::poll::open(
                &self.name,
                client,
                &self.tables,
                &self.options,
                Arc::clone(&self.hlc),
                resume,
                mode,
            )
            .await;
        }
        let until = match &mode {
            ReadMode::Replay { until } => Some(object(Some(until.clone()), &here)?),
            _ => None,
        };
        let reader = SnapshotReader {
            client_id: self.client_id(),
            here: here.clone(),
            client,
            tables: self.tables.clone(),
            options: self.options.clone(),
            position: object(resume, &here)?,
            until,
            next_table: 0,
            current: None,
            ready: VecDeque::new(),
        };
        Ok(futures::stream::unfold(Some(reader), |state| async move {
            let mut reader = state?;
            match reader.next().await {
                Ok(Some(batch)) => Some((Ok(batch), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed())
    }
}

/// An error for a malformed value read from BigQuery.
pub(crate) fn data_error(here: &str, message: impl std::fmt::Display) -> Error {
    bq_error(here, message, false)
}
