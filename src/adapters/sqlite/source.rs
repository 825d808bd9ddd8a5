//! [`SqliteSource`]: deltas from tables of a SQLite file, which it only ever reads.
//!
//! Each table is read by one [`SqliteStrategy`]:
//!
//! - **Cursor** (`cursor_column`, `id_column`): rows whose `(cursor, id)` pair is past the last
//!   one read, `ORDER BY cursor, id LIMIT batch_size`. Comparing the *pair* (SQLite row values)
//!   means rows that share a cursor value are neither skipped nor repeated when they straddle a
//!   batch boundary; rows with a NULL cursor sort first and are handled too. Every row read becomes
//!   an INSERT delta carrying every data column, stamped with its own HLC from the source's clock
//!   and client id `sqlite:<source name>`. INSERT, as the original's poller: a cursor cannot tell a
//!   new row from a changed one, every row read is the row's full image, and the op must not
//!   depend on what this process happened to read before, or a replay would differ. (The merge
//!   treats INSERT and UPDATE alike.) A cursor cannot see deletes. Position:
//!   `{"cursor": <last cursor>, "id": <last id>}`, values as SQLite stored them.
//! - **Diff** (`id_column`): every poll reads the whole table and diffs it against the previous
//!   snapshot with the kernel's `extract_delta`: INSERT for new rows, UPDATE with only the changed
//!   columns, DELETE for rows that vanished. Position: `{"seq": n}`. See *Diff state* below.
//! - **DeltaLog**: the `lakesync_deltas` table another LakeSync SQLite sink wrote, deltas exactly
//!   as logged (their own deltaIds, HLCs and clients), in log order. Position: `{"rowid": n}`, the
//!   last SQLite rowid read. The schema comes from that sink's `_lakesync_schemas` unless declared.
//!
//! The source position is a JSON object with one such entry per table, keyed by table name. Every
//! batch carries the position after it, for all tables.
//!
//! **Replay.** Cursor and delta-log reads are a function of the position and the database: the
//! same position over the same rows gives the same batches (row sets, order and boundaries;
//! cursor deltas get fresh HLCs, because an HLC says when LakeSync learnt of a change). One limit
//! is inherent to polling: a *tail* batch (fewer than `batch_size` rows) re-read after more rows
//! arrived is longer than it was; exactly-once through such a replay needs the runtime to bound
//! the replay by the position the epoch originally reached.
//!
//! **Diff state** ([`crate::adapters::diff_state`]). A diff needs the previous snapshot, which
//! must survive restarts, and the source must not write to the database it reads. So the source
//! keeps, in `state_dir`, a
//! *journal* `<source>.<table>.diff.jsonl` — one line `{"seq", "deltas"}` per emitted batch,
//! appended and fsynced before the batch is emitted — and a *base* snapshot
//! `<source>.<table>.diff.base.json` (`{"seq", "rows"}`). The snapshot at position `seq = k` is
//! the base folded with journal lines up to `k`. Opening at `k` therefore rebuilds exactly the
//! snapshot the position stands for, **re-emits journal lines after `k` verbatim** (same deltas,
//! same HLCs, same batch boundaries: an exact replay), then compacts the files (base := snapshot
//! at `k`, journal := lines after `k`), which is safe because the runtime never resumes before a
//! position it has recorded. The journal grows with the changes read until the next open; only
//! one source may use a state directory per table. Should the journal have lost lines the
//! position covers (say, a disk failure), the diff restarts from the older snapshot: changes are
//! re-emitted with new HLCs, which last-writer-wins absorbs.
//!
//! Values become JSON by the schema's column type: INTEGER, REAL and numeric TEXT for `number` and
//! `integer`; 0/1 (or `true`/`false` text) for `boolean`; RFC 3339 text (or SQLite's
//! `YYYY-MM-DD HH:MM:SS`, read as UTC) for `timestamp`; JSON text (else the text itself) for
//! `json`. A value that does not fit is an error naming the table, row and column. Discovered
//! schemas map declared types by SQLite's affinity rules: `INT` → integer, `BOOL` → boolean,
//! `REAL`/`FLOA`/`DOUB` → number, anything else → string; the id column is the row id, not a data
//! column.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Map, Value};
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{Connection, Decode, Row, TypeInfo, ValueRef};

use super::dialect::{Bind, query_with};
use super::sink::{DELTAS_TABLE, SCHEMAS_TABLE, logged_delta};
use super::{SYSTEM, sqlite_error};
use crate::adapters::diff_state::{DiffState, JournalEntry};
use crate::kernel::delta::{DeltaOp, RowDelta};
use crate::kernel::delta_batch::{deltas_to_batch, number_to_json, parse_timestamp};
use crate::kernel::hlc::Hlc;
use crate::kernel::json::write_f64;
use crate::kernel::schema::{
    ColumnDef, ColumnType, TableSchema, quote_identifier, validate_identifier,
};
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// Rows per batch unless configured otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How one table is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqliteStrategy {
    /// Rows past the last `(cursor, id)` pair read.
    Cursor {
        /// A column whose value grows when a row changes (e.g. `updated_at`).
        cursor_column: String,
        /// The column identifying the row (its row id).
        id_column: String,
    },
    /// Full snapshots, diffed against the previous one (needs a state directory).
    Diff {
        /// The column identifying the row (its row id); must be unique.
        id_column: String,
    },
    /// The `lakesync_deltas` log of a LakeSync SQLite sink.
    DeltaLog,
}

/// A table to read.
#[derive(Clone, Debug, PartialEq)]
pub struct SqliteTableSpec {
    /// The table (for `DeltaLog`, the table name the logged deltas carry).
    pub table: String,
    /// How to read it.
    pub strategy: SqliteStrategy,
    /// Its schema; discovered from the database when absent.
    pub schema: Option<TableSchema>,
}

/// Settings of a [`SqliteSource`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteSourceOptions {
    /// Where diff snapshots and journals live (required when a table uses `Diff`).
    pub state_dir: Option<PathBuf>,
    /// Rows per batch (default 8192).
    pub batch_size: usize,
}

impl Default for SqliteSourceOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// A source reading tables of a SQLite file: see the [module docs](self).
pub struct SqliteSource {
    name: String,
    path: PathBuf,
    connect: SqliteConnectOptions,
    specs: Vec<SqliteTableSpec>,
    options: SqliteSourceOptions,
    resolved: Option<Vec<TableRef>>,
    hlc: Arc<Hlc>,
}

impl fmt::Debug for SqliteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSource")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("specs", &self.specs)
            .field("options", &self.options)
            .finish()
    }
}

impl SqliteSource {
    /// A source named `source_name` over the SQLite file at `path`. Checks the table specs
    /// (identifiers, duplicates, a state directory for diffs) and that the file opens read-only.
    pub async fn open(
        path: &Path,
        source_name: &str,
        tables: Vec<SqliteTableSpec>,
        options: SqliteSourceOptions,
    ) -> Result<Self> {
        let here = format!("sqlite source {source_name:?}");
        if source_name.is_empty()
            || !source_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            || source_name.starts_with('.')
        {
            return Err(Error::invalid(
                "source",
                format!(
                    "{here}: a source name must be letters, digits, '_', '-' or '.', not starting with '.' (it names state files)"
                ),
            ));
        }
        if options.batch_size == 0 {
            return Err(Error::invalid(
                "source",
                format!("{here}: batch_size must be at least 1"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, spec) in tables.iter().enumerate() {
            let at = |what: &str, e: Error| {
                Error::invalid("source", format!("{here} tables[{i}] {what}: {e}"))
            };
            validate_identifier(&spec.table).map_err(|e| at("table", e))?;
            if !seen.insert(spec.table.as_str()) {
                return Err(Error::invalid(
                    "source",
                    format!("{here} tables[{i}]: table {:?} is listed twice", spec.table),
                ));
            }
            match &spec.strategy {
                SqliteStrategy::Cursor {
                    cursor_column,
                    id_column,
                } => {
                    validate_identifier(cursor_column).map_err(|e| at("cursor_column", e))?;
                    validate_identifier(id_column).map_err(|e| at("id_column", e))?;
                }
                SqliteStrategy::Diff { id_column } => {
                    validate_identifier(id_column).map_err(|e| at("id_column", e))?;
                    if options.state_dir.is_none() {
                        return Err(Error::invalid(
                            "source",
                            format!(
                                "{here} tables[{i}]: table {:?} is read by diff, which needs a state directory for its snapshots",
                                spec.table
                            ),
                        ));
                    }
                }
                SqliteStrategy::DeltaLog => {}
            }
            if let Some(schema) = &spec.schema {
                schema
                    .validate()
                    .map_err(|e| at(&format!("schema of table {:?}", spec.table), e))?;
                if schema.delta_table() != spec.table {
                    return Err(Error::invalid(
                        "source",
                        format!(
                            "{here} tables[{i}]: the declared schema is for table {:?}, not {:?}",
                            schema.delta_table(),
                            spec.table
                        ),
                    ));
                }
            }
        }
        if !tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Err(Error::invalid(
                "source",
                format!("{here}: database {} does not exist", path.display()),
            ));
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let source = Self {
            name: source_name.to_string(),
            path: path.to_path_buf(),
            connect,
            specs: tables,
            options,
            resolved: None,
            hlc: Arc::new(Hlc::default()),
        };
        source.connect().await?.close().await.ok();
        Ok(source)
    }

    fn here(&self) -> String {
        format!("sqlite source {:?} ({})", self.name, self.path.display())
    }

    async fn connect(&self) -> Result<SqliteConnection> {
        SqliteConnection::connect_with(&self.connect)
            .await
            .map_err(|e| sqlite_error(format!("{}: opening read-only", self.here()), e))
    }

    /// Resolves every table's schema (declared, or discovered from the database).
    async fn resolve(&mut self, conn: &mut SqliteConnection) -> Result<Vec<TableRef>> {
        if let Some(tables) = &self.resolved {
            return Ok(tables.clone());
        }
        let here = self.here();
        let mut out = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            let schema = match &spec.strategy {
                SqliteStrategy::Cursor {
                    cursor_column,
                    id_column,
                } => table_schema(conn, &here, spec, id_column, Some(cursor_column)).await?,
                SqliteStrategy::Diff { id_column } => {
                    table_schema(conn, &here, spec, id_column, None).await?
                }
                SqliteStrategy::DeltaLog => log_schema(conn, &here, spec).await?,
            };
            out.push(Arc::new(schema));
        }
        self.resolved = Some(out.clone());
        Ok(out)
    }
}

#[async_trait]
impl Source for SqliteSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        let mut conn = self.connect().await?;
        let tables = self.resolve(&mut conn).await;
        conn.close().await.ok();
        tables
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        let mut conn = self.connect().await?;
        let schemas = self.resolve(&mut conn).await?;
        let here = self.here();
        let resume = match resume {
            None => Map::new(),
            Some(Position(Value::Object(map))) => map,
            Some(Position(Value::Null)) => Map::new(),
            Some(Position(other)) => {
                return Err(Error::invalid(
                    "source position",
                    format!("{here}: a position is a JSON object keyed by table, got {other}"),
                ));
            }
        };
        let mut reader = Reader {
            here: here.clone(),
            client_id: format!("sqlite:{}", self.name),
            hlc: Arc::clone(&self.hlc),
            conn,
            tables: Vec::with_capacity(schemas.len()),
            position: Map::new(),
            mode,
            batch_size: self.options.batch_size,
            pending: VecDeque::new(),
            cycles: 0,
            catching_up: false,
            done: false,
        };
        let mut replays = Vec::new();
        for (spec, schema) in self.specs.iter().zip(schemas) {
            let entry = resume.get(&spec.table);
            let at = |msg: String| {
                Error::invalid(
                    "source position",
                    format!("{here}: table {:?}: {msg}", spec.table),
                )
            };
            let kind = match &spec.strategy {
                SqliteStrategy::Cursor {
                    cursor_column,
                    id_column,
                } => {
                    let last =
                        match entry {
                            None => None,
                            Some(Value::Object(e)) => {
                                let cursor = e.get("cursor").cloned().ok_or_else(|| {
                                    at(format!("{} has no \"cursor\"", Value::Object(e.clone())))
                                })?;
                                let id = e.get("id").filter(|v| !v.is_null()).cloned().ok_or_else(
                                    || at(format!("{} has no \"id\"", Value::Object(e.clone()))),
                                )?;
                                bind_of(&cursor).map_err(&at)?;
                                bind_of(&id).map_err(&at)?;
                                Some((cursor, id))
                            }
                            Some(other) => {
                                return Err(at(format!("expected {{cursor, id}}, got {other}")));
                            }
                        };
                    Kind::Cursor {
                        cursor: cursor_column.clone(),
                        id: id_column.clone(),
                        last,
                        caught_up: false,
                    }
                }
                SqliteStrategy::DeltaLog => {
                    let last_rowid = match entry {
                        None => 0,
                        Some(e) => e.get("rowid").and_then(Value::as_i64).ok_or_else(|| {
                            at(format!("expected {{\"rowid\": <integer>}}, got {e}"))
                        })?,
                    };
                    Kind::DeltaLog {
                        last_rowid,
                        caught_up: false,
                    }
                }
                SqliteStrategy::Diff { id_column } => {
                    let seq = match entry {
                        None => 0,
                        Some(e) => e.get("seq").and_then(Value::as_u64).ok_or_else(|| {
                            at(format!("expected {{\"seq\": <integer>}}, got {e}"))
                        })?,
                    };
                    let dir = self.options.state_dir.as_deref().ok_or_else(|| {
                        Error::internal(format!("{here}: diff table without a state directory"))
                    })?;
                    let (state, replay) = DiffState::open(
                        SYSTEM,
                        dir,
                        &self.name,
                        &spec.table,
                        id_column,
                        seq,
                        &here,
                    )
                    .await?;
                    replays.push((reader.tables.len(), replay));
                    Kind::Diff(state)
                }
            };
            reader.tables.push(TableState {
                name: spec.table.clone(),
                schema,
                kind,
            });
        }
        // Entries of tables this source no longer reads are kept, so a position stays whole.
        reader.position = resume;
        for t in &reader.tables {
            if let Some(entry) = t.kind.position() {
                reader.position.insert(t.name.clone(), entry);
            }
        }
        // Diff batches emitted after the resume position but perhaps never committed: replayed
        // exactly as journalled.
        for (index, replay) in replays {
            for entry in replay {
                reader.emit_diff(index, entry, false).await?;
            }
        }
        tracing::debug!(source = %self.name, tables = reader.tables.len(), replayed = reader.pending.len(), "sqlite source opened");
        let stream = futures::stream::unfold(Some(reader), |state| async move {
            let mut reader = state?;
            match reader.next().await {
                Ok(Some(batch)) => Some((Ok(batch), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(stream.boxed())
    }
}

fn json_entry(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.to_string(), value);
    Value::Object(m)
}

/// Reads `PRAGMA table_info` and builds (or checks) the schema of a plain table.
async fn table_schema(
    conn: &mut SqliteConnection,
    here: &str,
    spec: &SqliteTableSpec,
    id_column: &str,
    cursor_column: Option<&str>,
) -> Result<TableSchema> {
    let at =
        |msg: String| Error::invalid("source", format!("{here}: table {:?}: {msg}", spec.table));
    let columns: Vec<(String, String)> =
        sqlx::query_as("SELECT name, type FROM pragma_table_info(?) ORDER BY cid")
            .bind(&spec.table)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| {
                sqlite_error(
                    format!("{here}: reading the columns of {:?}", spec.table),
                    e,
                )
            })?;
    if columns.is_empty() {
        return Err(at("no such table in the database".into()));
    }
    let has = |name: &str| columns.iter().any(|(c, _)| c == name);
    if !has(id_column) {
        return Err(at(format!("id column {id_column:?} does not exist")));
    }
    if let Some(cursor) = cursor_column.filter(|c| !has(c)) {
        return Err(at(format!("cursor column {cursor:?} does not exist")));
    }
    if let Some(schema) = &spec.schema {
        if let Some(missing) = schema.columns.iter().find(|c| !has(&c.name)) {
            return Err(at(format!(
                "declared column {:?} does not exist",
                missing.name
            )));
        }
        return Ok(schema.clone());
    }
    let mut defs = Vec::with_capacity(columns.len());
    for (name, declared) in columns.iter().filter(|(c, _)| c != id_column) {
        validate_identifier(name).map_err(|e| {
            at(format!(
                "column {name:?} cannot be synced ({e}); declare a schema that leaves it out"
            ))
        })?;
        defs.push(ColumnDef::new(name.clone(), affinity_type(declared)));
    }
    let schema = TableSchema::new(spec.table.clone(), defs);
    schema.validate().map_err(|e| at(e.to_string()))?;
    Ok(schema)
}

/// The LakeSync type of a declared SQLite column type, by SQLite's affinity rules (booleans
/// first: `BOOLEAN` has no `INT`).
fn affinity_type(declared: &str) -> ColumnType {
    let t = declared.to_ascii_uppercase();
    if t.contains("BOOL") {
        ColumnType::Boolean
    } else if t.contains("INT") {
        ColumnType::Integer
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        ColumnType::Number
    } else {
        ColumnType::String
    }
}

/// The schema of a delta-log table: declared, or recorded by the sink that wrote the log.
async fn log_schema(
    conn: &mut SqliteConnection,
    here: &str,
    spec: &SqliteTableSpec,
) -> Result<TableSchema> {
    let at =
        |msg: String| Error::invalid("source", format!("{here}: table {:?}: {msg}", spec.table));
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
    )
    .bind(DELTAS_TABLE)
    .bind(SCHEMAS_TABLE)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| sqlite_error(format!("{here}: looking for the delta log"), e))?;
    if !tables.iter().any(|t| t == DELTAS_TABLE) {
        return Err(at(format!(
            "the database has no {DELTAS_TABLE} table; only a LakeSync SQLite sink's database can be read as a delta log"
        )));
    }
    if let Some(schema) = &spec.schema {
        return Ok(schema.clone());
    }
    let recorded: Vec<String> = if tables.iter().any(|t| t == SCHEMAS_TABLE) {
        sqlx::query_scalar("SELECT schema_json FROM _lakesync_schemas ORDER BY \"table\"")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| sqlite_error(format!("{here}: reading recorded schemas"), e))?
    } else {
        Vec::new()
    };
    for text in recorded {
        let Ok(schema) = serde_json::from_str::<TableSchema>(&text) else {
            continue;
        };
        if schema.delta_table() == spec.table {
            // The deltas carry the log's table name; destination settings stay with the schema.
            return Ok(TableSchema {
                table: spec.table.clone(),
                source_table: None,
                ..schema
            });
        }
    }
    Err(at(format!(
        "no schema recorded in {SCHEMAS_TABLE} for it; declare one"
    )))
}

/// One table being read.
struct TableState {
    /// The SQLite table (and the key of its position entry).
    name: String,
    schema: TableRef,
    kind: Kind,
}

enum Kind {
    Cursor {
        cursor: String,
        id: String,
        last: Option<(Value, Value)>,
        caught_up: bool,
    },
    DeltaLog {
        last_rowid: i64,
        caught_up: bool,
    },
    Diff(DiffState),
}

impl Kind {
    /// The position entry, when there is one to state.
    fn position(&self) -> Option<Value> {
        match self {
            Kind::Cursor { last, .. } => last.as_ref().map(|(c, i)| {
                let mut m = Map::new();
                m.insert("cursor".into(), c.clone());
                m.insert("id".into(), i.clone());
                Value::Object(m)
            }),
            Kind::DeltaLog { last_rowid, .. } => {
                Some(json_entry("rowid", Value::from(*last_rowid)))
            }
            Kind::Diff(d) => Some(json_entry("seq", Value::from(d.seq))),
        }
    }
}

/// The stream's state.
struct Reader {
    here: String,
    client_id: String,
    hlc: Arc<Hlc>,
    conn: SqliteConnection,
    tables: Vec<TableState>,
    position: Map<String, Value>,
    mode: ReadMode,
    batch_size: usize,
    pending: VecDeque<SourceBatch>,
    cycles: u64,
    catching_up: bool,
    done: bool,
}

impl Reader {
    fn set_position(&mut self, table: &str, entry: Value) {
        self.position.insert(table.to_string(), entry);
    }

    fn push(&mut self, index: usize, deltas: &[RowDelta]) -> Result<()> {
        let schema = Arc::clone(&self.tables[index].schema);
        let name = self.tables[index].name.clone();
        if let Some(entry) = self.tables[index].kind.position() {
            self.set_position(&name, entry);
        }
        let batch = deltas_to_batch(&schema, deltas)
            .map_err(|e| Error::schema(format!("{}: table {:?}: {e}", self.here, name)))?;
        self.pending.push_back(SourceBatch {
            table: schema,
            batch,
            position: Position(Value::Object(self.position.clone())),
        });
        Ok(())
    }

    /// The next batch: queued batches first, then the next poll step.
    async fn next(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Ok(Some(batch));
            }
            if self.done {
                return Ok(None);
            }
            if !self.catching_up {
                if self.cycles > 0 {
                    match &self.mode {
                        // A bounded replay is read like `Once`; the runtime checks it ended
                        // where the original epoch did.
                        ReadMode::Once | ReadMode::Replay { .. } => {
                            self.done = true;
                            continue;
                        }
                        ReadMode::Follow { poll_interval } => {
                            tokio::time::sleep(*poll_interval).await
                        }
                    }
                }
                self.cycles += 1;
                for i in 0..self.tables.len() {
                    match &mut self.tables[i].kind {
                        Kind::Diff(_) => self.poll_diff(i).await?,
                        Kind::Cursor { caught_up, .. } | Kind::DeltaLog { caught_up, .. } => {
                            *caught_up = false;
                        }
                    }
                }
                self.catching_up = true;
                continue;
            }
            // One round: a batch from every incremental table that has not caught up.
            let mut read_any = false;
            for i in 0..self.tables.len() {
                let caught_up = match &self.tables[i].kind {
                    Kind::Cursor { caught_up, .. } | Kind::DeltaLog { caught_up, .. } => *caught_up,
                    Kind::Diff(_) => true,
                };
                if !caught_up {
                    read_any = true;
                    match self.tables[i].kind {
                        Kind::Cursor { .. } => self.poll_cursor(i).await?,
                        _ => self.poll_log(i).await?,
                    }
                }
            }
            if !read_any {
                self.catching_up = false;
            }
        }
    }

    async fn poll_cursor(&mut self, index: usize) -> Result<()> {
        let schema = Arc::clone(&self.tables[index].schema);
        let name = self.tables[index].name.clone();
        let Kind::Cursor {
            cursor, id, last, ..
        } = &self.tables[index].kind
        else {
            return Ok(());
        };
        let (qc, qi) = (quote_identifier(cursor), quote_identifier(id));
        let mut select = vec![qi.clone(), qc.clone()];
        select.extend(schema.columns.iter().map(|c| quote_identifier(&c.name)));
        let mut sql = format!(
            "SELECT {} FROM {}",
            select.join(", "),
            quote_identifier(&name)
        );
        let mut binds = Vec::new();
        match last {
            None => {}
            Some((Value::Null, last_id)) => {
                sql.push_str(&format!(
                    " WHERE ({qc} IS NULL AND {qi} > ?) OR {qc} IS NOT NULL"
                ));
                binds.push(bind_of(last_id).map_err(|e| self.err(&name, e))?);
            }
            Some((last_cursor, last_id)) => {
                sql.push_str(&format!(" WHERE ({qc}, {qi}) > (?, ?)"));
                binds.push(bind_of(last_cursor).map_err(|e| self.err(&name, e))?);
                binds.push(bind_of(last_id).map_err(|e| self.err(&name, e))?);
            }
        }
        sql.push_str(&format!(" ORDER BY {qc}, {qi} LIMIT ?"));
        binds.push(Bind::Integer(
            i64::try_from(self.batch_size).unwrap_or(i64::MAX),
        ));
        let rows = query_with(&sql, binds)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| sqlite_error(format!("{}: reading table {:?}", self.here, name), e))?;
        let full = rows.len() >= self.batch_size;
        let mut deltas = Vec::with_capacity(rows.len());
        let mut new_last = None;
        for row in &rows {
            let id_raw = raw(row, 0).map_err(|e| self.err(&name, e))?;
            let row_id = row_id_of(&id_raw).map_err(|e| self.err(&name, e))?;
            let cursor_raw = raw(row, 1).map_err(|e| self.err(&name, e))?;
            let mut columns = Vec::with_capacity(schema.columns.len());
            for (k, def) in schema.columns.iter().enumerate() {
                let value = raw(row, k + 2)
                    .and_then(|r| to_json(r, def.column_type))
                    .map_err(|e| self.cell_err(&name, &row_id, &def.name, e))?;
                columns.push(crate::kernel::delta::ColumnDelta::new(
                    def.name.clone(),
                    value,
                ));
            }
            deltas.push(RowDelta::new(
                DeltaOp::Insert,
                schema.delta_table(),
                row_id.clone(),
                self.client_id.clone(),
                columns,
                self.hlc.now(),
            ));
            new_last = Some((
                position_value(cursor_raw).map_err(|e| self.err(&name, e))?,
                position_value(id_raw).map_err(|e| self.err(&name, e))?,
            ));
        }
        if let Kind::Cursor {
            last, caught_up, ..
        } = &mut self.tables[index].kind
        {
            *caught_up = !full;
            if new_last.is_some() {
                *last = new_last;
            }
        }
        if !deltas.is_empty() {
            self.push(index, &deltas)?;
        }
        Ok(())
    }

    async fn poll_log(&mut self, index: usize) -> Result<()> {
        let name = self.tables[index].name.clone();
        let Kind::DeltaLog { last_rowid, .. } = self.tables[index].kind else {
            return Ok(());
        };
        let rows = sqlx::query(
            "SELECT rowid AS log_rowid, delta_id, row_id, client_id, hlc, op, columns \
             FROM lakesync_deltas WHERE \"table\" = ? AND rowid > ? ORDER BY rowid LIMIT ?",
        )
        .bind(&name)
        .bind(last_rowid)
        .bind(i64::try_from(self.batch_size).unwrap_or(i64::MAX))
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| {
            sqlite_error(
                format!("{}: reading the delta log for {:?}", self.here, name),
                e,
            )
        })?;
        let full = rows.len() >= self.batch_size;
        let mut deltas = Vec::with_capacity(rows.len());
        let mut new_last = last_rowid;
        for row in &rows {
            deltas.push(logged_delta(row, &name).map_err(|e| self.err(&name, e))?);
            new_last = row
                .try_get::<i64, _>("log_rowid")
                .map_err(|e| self.err(&name, e.to_string()))?;
        }
        if let Kind::DeltaLog {
            last_rowid,
            caught_up,
        } = &mut self.tables[index].kind
        {
            *last_rowid = new_last;
            *caught_up = !full;
        }
        if !deltas.is_empty() {
            self.push(index, &deltas)?;
        }
        Ok(())
    }

    async fn poll_diff(&mut self, index: usize) -> Result<()> {
        let schema = Arc::clone(&self.tables[index].schema);
        let name = self.tables[index].name.clone();
        let Kind::Diff(state) = &self.tables[index].kind else {
            return Ok(());
        };
        let mut select = vec![quote_identifier(&state.id_column)];
        select.extend(schema.columns.iter().map(|c| quote_identifier(&c.name)));
        let sql = format!(
            "SELECT {} FROM {} ORDER BY 1",
            select.join(", "),
            quote_identifier(&name)
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| sqlite_error(format!("{}: reading table {:?}", self.here, name), e))?;
        let mut images = Vec::with_capacity(rows.len());
        for row in &rows {
            let row_id = raw(row, 0)
                .and_then(|r| row_id_of(&r))
                .map_err(|e| self.err(&name, e))?;
            let mut after = Map::new();
            for (k, def) in schema.columns.iter().enumerate() {
                let value = raw(row, k + 1)
                    .and_then(|r| to_json(r, def.column_type))
                    .map_err(|e| self.cell_err(&name, &row_id, &def.name, e))?;
                after.insert(def.name.clone(), value);
            }
            images.push((row_id, after));
        }
        let entries = state
            .diff(
                images,
                schema.delta_table(),
                &self.client_id,
                &self.hlc,
                &schema.column_names(),
                self.batch_size,
            )
            .map_err(|e| self.err(&name, e))?;
        for entry in entries {
            self.emit_diff(index, entry, true).await?;
        }
        Ok(())
    }

    /// Journals (when `journal`) and folds one diff batch, then queues it.
    async fn emit_diff(&mut self, index: usize, entry: JournalEntry, journal: bool) -> Result<()> {
        let here = self.here.clone();
        let Kind::Diff(state) = &mut self.tables[index].kind else {
            return Ok(());
        };
        state.apply(&entry, journal, &here).await?;
        self.push(index, &entry.deltas)
    }

    fn err(&self, name: &str, msg: impl fmt::Display) -> Error {
        Error::invalid(
            "source data",
            format!("{}: table {:?}: {msg}", self.here, name),
        )
    }

    fn cell_err(&self, name: &str, row: &str, column: &str, msg: String) -> Error {
        Error::invalid(
            "source data",
            format!(
                "{}: table {:?} row {row:?} column {column:?}: {msg}",
                self.here, name
            ),
        )
    }
}

/// A value as read from SQLite.
#[derive(Clone, Debug, PartialEq)]
enum Raw {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(usize),
}

fn raw(row: &SqliteRow, i: usize) -> std::result::Result<Raw, String> {
    let value = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if value.is_null() {
        return Ok(Raw::Null);
    }
    let class = value.type_info().name().to_string();
    let decoded = match class.as_str() {
        "INTEGER" | "BOOLEAN" => <i64 as Decode<Sqlite>>::decode(value).map(Raw::Integer),
        "REAL" => <f64 as Decode<Sqlite>>::decode(value).map(Raw::Real),
        "BLOB" => <Vec<u8> as Decode<Sqlite>>::decode(value).map(|b| Raw::Blob(b.len())),
        _ => <String as Decode<Sqlite>>::decode(value).map(Raw::Text),
    };
    decoded.map_err(|e| format!("cannot read a {class} value: {e}"))
}

fn js_number_text(f: f64) -> String {
    let mut s = String::new();
    write_f64(&mut s, f);
    s
}

/// The row id an id value stands for: integers in decimal, reals as JavaScript prints them, text
/// as is.
fn row_id_of(raw: &Raw) -> std::result::Result<String, String> {
    match raw {
        Raw::Integer(i) => Ok(i.to_string()),
        Raw::Real(f) => Ok(js_number_text(*f)),
        Raw::Text(s) => Ok(s.clone()),
        Raw::Null => Err("a row has a NULL id".into()),
        Raw::Blob(_) => Err("a row has a BLOB id; ids must be integers, reals or text".into()),
    }
}

/// A cursor or id value as kept in a position.
fn position_value(raw: Raw) -> std::result::Result<Value, String> {
    match raw {
        Raw::Null => Ok(Value::Null),
        Raw::Integer(i) => Ok(Value::from(i)),
        Raw::Real(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("cursor value {f} cannot be kept in a position")),
        Raw::Text(s) => Ok(Value::String(s)),
        Raw::Blob(_) => Err("BLOB cursor or id values are not supported".into()),
    }
}

/// The bind that compares like a position value.
fn bind_of(value: &Value) -> std::result::Result<Bind, String> {
    match value {
        Value::Null => Ok(Bind::Null),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Bind::Integer(i)),
            None => n
                .as_f64()
                .map(Bind::Real)
                .ok_or_else(|| format!("position value {n} is not a number SQLite can compare")),
        },
        Value::String(s) => Ok(Bind::Text(s.clone())),
        other => Err(format!(
            "position value {other} is not a number, text or null"
        )),
    }
}

/// A SQLite value as the JSON a column of `column_type` carries.
fn to_json(raw: Raw, column_type: ColumnType) -> std::result::Result<Value, String> {
    let wrong = |raw: &Raw| match raw {
        Raw::Text(s) => format!("expected {}, got TEXT {s:?}", expected(column_type)),
        Raw::Blob(n) => format!("expected {}, got a {n}-byte BLOB", expected(column_type)),
        other => format!("expected {}, got {other:?}", expected(column_type)),
    };
    Ok(match (column_type, raw) {
        (_, Raw::Null) => Value::Null,
        (_, raw @ Raw::Blob(_)) => return Err(wrong(&raw)),
        (ColumnType::String, Raw::Text(s)) => Value::String(s),
        (ColumnType::String, Raw::Integer(i)) => Value::String(i.to_string()),
        (ColumnType::String, Raw::Real(f)) => Value::String(js_number_text(f)),
        (ColumnType::Number, Raw::Integer(i)) => number_to_json(i as f64),
        (ColumnType::Number, Raw::Real(f)) => number_to_json(f),
        (ColumnType::Number, Raw::Text(s)) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => number_to_json(f),
            _ => return Err(wrong(&Raw::Text(s))),
        },
        (ColumnType::Integer, Raw::Integer(i)) => Value::from(i),
        (ColumnType::Integer, Raw::Real(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => {
            Value::from(f as i64)
        }
        (ColumnType::Integer, Raw::Text(s)) => match s.trim().parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => return Err(wrong(&Raw::Text(s))),
        },
        (ColumnType::Boolean, Raw::Integer(i)) => Value::Bool(i != 0),
        (ColumnType::Boolean, Raw::Real(f)) => Value::Bool(f != 0.0),
        (ColumnType::Boolean, Raw::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(wrong(&Raw::Text(s))),
        },
        (ColumnType::Timestamp, Raw::Text(s)) => {
            if parse_timestamp(&s).is_some() {
                Value::String(s)
            } else {
                // SQLite's own `YYYY-MM-DD HH:MM:SS[.SSS]`, which is UTC.
                let rfc = format!("{}Z", s.trim().replacen(' ', "T", 1));
                if parse_timestamp(&rfc).is_some() {
                    Value::String(rfc)
                } else {
                    return Err(wrong(&Raw::Text(s)));
                }
            }
        }
        (ColumnType::Json | ColumnType::Null, Raw::Text(s)) => {
            serde_json::from_str(&s).unwrap_or(Value::String(s))
        }
        (ColumnType::Json | ColumnType::Null, Raw::Integer(i)) => Value::from(i),
        (ColumnType::Json | ColumnType::Null, Raw::Real(f)) => number_to_json(f),
        (_, raw) => return Err(wrong(&raw)),
    })
}

fn expected(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::String => "text",
        ColumnType::Number => "a number",
        ColumnType::Integer => "an integer",
        ColumnType::Boolean => "a boolean (0/1)",
        ColumnType::Timestamp => "an RFC 3339 timestamp",
        ColumnType::Json | ColumnType::Null => "JSON",
    }
}
