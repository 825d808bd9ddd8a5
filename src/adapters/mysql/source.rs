//! [`MysqlSource`]: deltas from tables of a MySQL or MariaDB database, which it only ever reads.
//!
//! Each table is read by one [`MysqlStrategy`]:
//!
//! - **Cursor** (`cursor_column`, `id_column`): rows whose `(cursor, id)` pair is past the last
//!   one read, `ORDER BY cursor, id LIMIT batch_size`. Comparing the *pair* means rows that share
//!   a cursor value are neither skipped nor repeated across batch boundaries; rows with a NULL
//!   cursor sort first and are handled too. Every row read becomes an INSERT delta with every data
//!   column (a cursor cannot tell a new row from a changed one, and the op must not depend on
//!   what this process read before). A cursor cannot see deletes. Position:
//!   `{"cursor": <last cursor>, "id": <last id>}`. For a date/time cursor, each poll first reads
//!   again from `lookback` (default 5 s) before the last cursor value, so a row committed late
//!   with a slightly older value is still read; the `(cursor, id)` pairs emitted within the
//!   window are kept in the position (`"recent"`), so rows re-read unchanged are not emitted
//!   again.
//! - **Diff** (`id_column`): every poll reads the whole table and diffs it against the previous
//!   snapshot with the kernel's `extract_delta`: INSERT for new rows, UPDATE with only the changed
//!   columns, DELETE for rows that vanished. The snapshot lives in the state directory
//!   ([`crate::adapters::diff_state`]). Position: `{"seq": n}`.
//! - **Snapshot** (`id_column`): the whole table once, streamed in `id` order as INSERT deltas
//!   (a backfill); later polls read nothing. Position: `{"after": <last id>, "done": bool}`.
//! - **Cdc** (`id_column`): the ROW binlog, see [`super::binlog`]. CDC tables must be in a source
//!   of their own (a source whose tables are all `cdc`), so that the binlog position alone says
//!   where the source is.
//!
//! The source position is a JSON object with one entry per polled table, keyed by table name;
//! every batch carries the position after it, for all tables. Polled reads are a function of the
//! position and the database, so a replayed epoch reads the same row sets (with fresh HLCs; an
//! HLC says when LakeSync learnt of a change).
//!
//! Schemas are declared or discovered from `information_schema.COLUMNS` (types mapped by
//! [`super::value::discovered_type`]); the id column is the row id, not a data column. Values
//! become JSON as [`super::value`] describes; date, time, decimal and JSON columns are selected
//! `CAST(… AS CHAR)` in a UTC session. Table and column names pass the kernel's
//! `validate_identifier` and are quoted with backticks; values are bind parameters.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Map, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlRow};
use sqlx::{Connection, Row, TypeInfo, ValueRef};

use super::dialect::{Bind, MysqlDialect, datetime_micros, query_with};
use super::sink::connect_options;
use super::value::{
    Raw, discovered_type, labels_of, position_value, row_id_of, selected_as_text, timestamp_micros,
    to_json,
};
use super::{SYSTEM, binlog, mysql_error, redacted};
use crate::adapters::diff_state::{DiffState, JournalEntry};
use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::delta_batch::deltas_to_batch;
use crate::kernel::hlc::Hlc;
use crate::kernel::materialise::SqlDialect;
use crate::kernel::schema::{ColumnDef, TableSchema, validate_identifier};
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// How far a date/time cursor looks back unless configured otherwise.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(5);

/// Rows per batch unless configured otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How one table is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MysqlStrategy {
    /// Rows past the last `(cursor, id)` pair read.
    Cursor {
        /// A column whose value grows when a row changes (e.g. `updated_at`).
        cursor_column: String,
        /// The column identifying the row (its row id).
        id_column: String,
        /// For date/time cursors: how far before the newest cursor value each poll reads again
        /// (default 5 s; rows re-read unchanged are not emitted again). Not allowed for other
        /// cursors.
        lookback: Option<Duration>,
    },
    /// Full snapshots, diffed against the previous one (needs a state directory).
    Diff {
        /// The column identifying the row (its row id); must be unique.
        id_column: String,
    },
    /// The whole table once, in id order.
    Snapshot {
        /// The column identifying the row (its row id); must be unique.
        id_column: String,
    },
    /// The ROW binlog, after a consistent initial snapshot.
    Cdc {
        /// The column identifying the row (its row id); must be unique (the primary key).
        id_column: String,
    },
}

impl MysqlStrategy {
    /// The id column.
    pub fn id_column(&self) -> &str {
        match self {
            Self::Cursor { id_column, .. }
            | Self::Diff { id_column }
            | Self::Snapshot { id_column }
            | Self::Cdc { id_column } => id_column,
        }
    }
}

/// A table to read.
#[derive(Clone, Debug, PartialEq)]
pub struct MysqlTableSpec {
    /// The table.
    pub table: String,
    /// How to read it.
    pub strategy: MysqlStrategy,
    /// Its schema; discovered from the database when absent.
    pub schema: Option<TableSchema>,
}

/// Settings of a [`MysqlSource`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlSourceOptions {
    /// Where diff snapshots and journals live (required when a table uses `Diff`).
    pub state_dir: Option<PathBuf>,
    /// Rows per batch (default 8192).
    pub batch_size: usize,
    /// The replica server id the binlog connection announces (default: derived from the source
    /// name); must be unique among the server's replicas.
    pub server_id: Option<u32>,
}

impl Default for MysqlSourceOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            batch_size: DEFAULT_BATCH_SIZE,
            server_id: None,
        }
    }
}

/// A table as resolved against the database.
#[derive(Clone, Debug)]
pub(crate) struct TableInfo {
    /// The table's schema (data columns only).
    pub(crate) schema: TableRef,
    /// The id column.
    pub(crate) id_column: String,
    /// `DATA_TYPE` of every column of the table, by name.
    pub(crate) db_types: HashMap<String, String>,
    /// Every column of the table, in ordinal order (to map binlog rows without column names).
    pub(crate) ordinal: Vec<String>,
    /// The labels of `enum` and `set` columns (whether a set, labels), by name.
    pub(crate) labels: HashMap<String, (bool, Vec<String>)>,
}

impl TableInfo {
    /// The select expression of `column`: its quoted name, `CAST(… AS CHAR)` where the value
    /// is best read as text.
    pub(crate) fn select_expr(&self, column: &str) -> Result<String> {
        let q = MysqlDialect.quote(column)?;
        Ok(match self.db_types.get(column) {
            Some(t) if selected_as_text(t) => format!("CAST({q} AS CHAR)"),
            _ => q,
        })
    }

    /// `id, [extra…], data columns…` as a select list.
    pub(crate) fn select_list(&self, extra: &[&str]) -> Result<String> {
        let mut out = vec![self.select_expr(&self.id_column)?];
        for e in extra {
            out.push(self.select_expr(e)?);
        }
        for c in &self.schema.columns {
            out.push(self.select_expr(&c.name)?);
        }
        Ok(out.join(", "))
    }
}

/// A source reading tables of a MySQL or MariaDB database: see the [module docs](self).
pub struct MysqlSource {
    name: String,
    url: String,
    redacted_url: String,
    connect: MySqlConnectOptions,
    specs: Vec<MysqlTableSpec>,
    options: MysqlSourceOptions,
    resolved: Option<Vec<TableInfo>>,
    hlc: Arc<Hlc>,
}

impl fmt::Debug for MysqlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlSource")
            .field("name", &self.name)
            .field("url", &self.redacted_url)
            .field("specs", &self.specs)
            .field("options", &self.options)
            .finish()
    }
}

impl MysqlSource {
    /// A source named `source_name` over the database at `url`. Checks the table specs
    /// (identifiers, duplicates, a state directory for diffs, CDC tables on their own) and that
    /// the database can be reached.
    pub async fn open(
        url: &str,
        source_name: &str,
        tables: Vec<MysqlTableSpec>,
        options: MysqlSourceOptions,
    ) -> Result<Self> {
        let here = format!("mysql source {source_name:?}");
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
        if tables.is_empty() {
            return Err(Error::invalid(
                "source",
                format!("{here}: no tables to read"),
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
            validate_identifier(spec.strategy.id_column()).map_err(|e| at("id_column", e))?;
            match &spec.strategy {
                MysqlStrategy::Cursor { cursor_column, .. } => {
                    validate_identifier(cursor_column).map_err(|e| at("cursor_column", e))?;
                }
                MysqlStrategy::Diff { .. } if options.state_dir.is_none() => {
                    return Err(Error::invalid(
                        "source",
                        format!(
                            "{here} tables[{i}]: table {:?} is read by diff, which needs a state directory for its snapshots",
                            spec.table
                        ),
                    ));
                }
                _ => {}
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
        let cdc = tables
            .iter()
            .filter(|t| matches!(t.strategy, MysqlStrategy::Cdc { .. }))
            .count();
        if cdc > 0 && cdc < tables.len() {
            return Err(Error::invalid(
                "source",
                format!(
                    "{here}: cdc tables cannot share a source with polled (cursor, diff, snapshot) tables; declare a second mysql source for them"
                ),
            ));
        }
        let connect = connect_options(url, &here)?;
        let source = Self {
            name: source_name.to_string(),
            url: url.to_string(),
            redacted_url: redacted(url),
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
        format!("mysql source {:?} ({})", self.name, self.redacted_url)
    }

    async fn connect(&self) -> Result<MySqlConnection> {
        MySqlConnection::connect_with(&self.connect)
            .await
            .map_err(|e| mysql_error(format!("{}: connecting", self.here()), e))
    }

    /// Resolves every table's schema (declared, or discovered from the database).
    async fn resolve(&mut self, conn: &mut MySqlConnection) -> Result<Vec<TableInfo>> {
        if let Some(tables) = &self.resolved {
            return Ok(tables.clone());
        }
        let here = self.here();
        let mut out = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            let cursor = match &spec.strategy {
                MysqlStrategy::Cursor { cursor_column, .. } => Some(cursor_column.as_str()),
                _ => None,
            };
            out.push(table_info(conn, &here, spec, cursor).await?);
        }
        self.resolved = Some(out.clone());
        Ok(out)
    }

    /// The replica server id of the binlog connection: configured, or derived from the source
    /// name and its state directory (so two pipelines get different ids, and a restarted
    /// pipeline its old one, which replaces a stale connection of the previous run).
    fn server_id(&self) -> u32 {
        self.options.server_id.unwrap_or_else(|| {
            // FNV-1a, kept in 1..2^31 and away from the small ids people pick.
            let mut h: u32 = 0x811c_9dc5;
            let dir = self
                .options
                .state_dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            for b in self.name.bytes().chain([0]).chain(dir.bytes()) {
                h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
            }
            (h % 0x7fff_0000) + 0x1_0000
        })
    }
}

#[async_trait]
impl Source for MysqlSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        let mut conn = self.connect().await?;
        let tables = self.resolve(&mut conn).await;
        conn.close().await.ok();
        Ok(tables?.into_iter().map(|t| t.schema).collect())
    }

    fn can_replay(&self, from: Option<&Position>) -> bool {
        // A CDC snapshot cannot be repeated exactly (the data moved on); the binlog can.
        let cdc = self
            .specs
            .iter()
            .any(|s| matches!(s.strategy, MysqlStrategy::Cdc { .. }));
        !cdc || from.is_some_and(|p| p.0.get("binlog").is_some())
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        let mut conn = self.connect().await?;
        let infos = self.resolve(&mut conn).await?;
        let here = self.here();
        let resume = match resume {
            None | Some(Position(Value::Null)) => Map::new(),
            Some(Position(Value::Object(map))) => map,
            Some(Position(other)) => {
                return Err(Error::invalid(
                    "source position",
                    format!("{here}: a position is a JSON object, got {other}"),
                ));
            }
        };
        if self
            .specs
            .iter()
            .all(|s| matches!(s.strategy, MysqlStrategy::Cdc { .. }))
        {
            conn.close().await.ok();
            let settings = binlog::CdcSettings {
                here,
                url: self.url.clone(),
                connect: self.connect.clone(),
                client_id: format!("mysql:{}", self.name),
                server_id: self.server_id(),
                batch_size: self.options.batch_size,
                hlc: Arc::clone(&self.hlc),
            };
            return binlog::open(settings, infos, resume, mode).await;
        }
        let mut reader = PollReader {
            here: here.clone(),
            client_id: format!("mysql:{}", self.name),
            hlc: Arc::clone(&self.hlc),
            conn,
            tables: Vec::with_capacity(infos.len()),
            position: Map::new(),
            mode,
            batch_size: self.options.batch_size,
            pending: VecDeque::new(),
            cycles: 0,
            catching_up: false,
            done: false,
        };
        let mut replays = Vec::new();
        for (spec, info) in self.specs.iter().zip(infos) {
            let entry = resume.get(&spec.table);
            let at = |msg: String| {
                Error::invalid(
                    "source position",
                    format!("{here}: table {:?}: {msg}", spec.table),
                )
            };
            let kind = match &spec.strategy {
                MysqlStrategy::Cursor {
                    cursor_column,
                    lookback,
                    ..
                } => {
                    let is_time = info.db_types.get(cursor_column).is_some_and(|t| {
                        matches!(
                            t.to_ascii_lowercase().as_str(),
                            "datetime" | "timestamp" | "date"
                        )
                    });
                    let lookback = match (is_time, lookback) {
                        (true, None) => Some(DEFAULT_LOOKBACK),
                        (true, Some(d)) => Some(*d),
                        (false, None) => None,
                        (false, Some(_)) => {
                            return Err(Error::invalid(
                                "source",
                                format!(
                                    "{here}: table {:?}: lookback applies only to date/time cursor columns, and {cursor_column:?} is not one",
                                    spec.table
                                ),
                            ));
                        }
                    };
                    let lookback = lookback
                        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
                        .filter(|m| *m > 0);
                    let recent = match entry.and_then(|e| e.get("recent")) {
                        None => BTreeSet::new(),
                        Some(Value::Array(pairs)) => pairs
                            .iter()
                            .map(|p| match p {
                                Value::Array(kv) if kv.len() == 2 => {
                                    Ok((kv[0].to_string(), kv[1].to_string()))
                                }
                                other => {
                                    Err(at(format!("recent entry {other} is not [cursor, id]")))
                                }
                            })
                            .collect::<Result<_>>()?,
                        Some(other) => return Err(at(format!("recent {other} is not a list"))),
                    };
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
                        last,
                        caught_up: false,
                        lookback,
                        recent,
                        rewind: false,
                    }
                }
                MysqlStrategy::Snapshot { .. } => {
                    let (after, done) = match entry {
                        None => (None, false),
                        Some(Value::Object(e)) => (
                            e.get("after").filter(|v| !v.is_null()).cloned(),
                            e.get("done").and_then(Value::as_bool).unwrap_or(false),
                        ),
                        Some(other) => {
                            return Err(at(format!("expected {{after, done}}, got {other}")));
                        }
                    };
                    if let Some(after) = &after {
                        bind_of(after).map_err(&at)?;
                    }
                    Kind::Snapshot {
                        after,
                        done,
                        caught_up: done,
                    }
                }
                MysqlStrategy::Diff { id_column } => {
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
                MysqlStrategy::Cdc { .. } => {
                    return Err(Error::internal(format!(
                        "{here}: a cdc table among polled tables"
                    )));
                }
            };
            reader.tables.push(TableState {
                name: spec.table.clone(),
                info,
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
        for (index, replay) in replays {
            for entry in replay {
                reader.emit_diff(index, entry, false).await?;
            }
        }
        tracing::debug!(source = %self.name, tables = reader.tables.len(), replayed = reader.pending.len(), "mysql source opened");
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

/// Reads `information_schema` and builds (or checks) the schema of a table.
async fn table_info(
    conn: &mut MySqlConnection,
    here: &str,
    spec: &MysqlTableSpec,
    cursor_column: Option<&str>,
) -> Result<TableInfo> {
    let at =
        |msg: String| Error::invalid("source", format!("{here}: table {:?}: {msg}", spec.table));
    let rows: Vec<(String, String, String, Option<u64>)> = sqlx::query_as(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
         CAST(NUMERIC_PRECISION AS UNSIGNED) \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
         ORDER BY ORDINAL_POSITION",
    )
    .bind(&spec.table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| {
        mysql_error(
            format!("{here}: reading the columns of {:?}", spec.table),
            e,
        )
    })?;
    if rows.is_empty() {
        return Err(at("no such table in the database".into()));
    }
    // MariaDB's JSON is LONGTEXT with a json_valid check; MySQL's is DATA_TYPE json. The view
    // does not exist before MariaDB 10.2 / MySQL 8.0.16, hence no error on failure.
    let checks: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(&spec.table)
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    let json_checked = |name: &str| {
        let needle = format!("json_valid(`{name}`)");
        checks.iter().any(|c| c.eq_ignore_ascii_case(&needle))
    };
    let id_column = spec.strategy.id_column();
    let has = |name: &str| rows.iter().any(|(c, ..)| c == name);
    if !has(id_column) {
        return Err(at(format!("id column {id_column:?} does not exist")));
    }
    if let Some(cursor) = cursor_column.filter(|c| !has(c)) {
        return Err(at(format!("cursor column {cursor:?} does not exist")));
    }
    let db_types = rows
        .iter()
        .map(|(c, t, ..)| (c.clone(), t.clone()))
        .collect();
    let ordinal = rows.iter().map(|(c, ..)| c.clone()).collect();
    let labels = rows
        .iter()
        .filter_map(|(c, _, t, _)| labels_of(t).map(|l| (c.clone(), l)))
        .collect();
    let schema = if let Some(schema) = &spec.schema {
        if let Some(missing) = schema.columns.iter().find(|c| !has(&c.name)) {
            return Err(at(format!(
                "declared column {:?} does not exist",
                missing.name
            )));
        }
        schema.clone()
    } else {
        let mut defs = Vec::with_capacity(rows.len());
        for (name, data_type, column_type, precision) in rows.iter().filter(|r| r.0 != id_column) {
            validate_identifier(name).map_err(|e| {
                at(format!(
                    "column {name:?} cannot be synced ({e}); declare a schema that leaves it out"
                ))
            })?;
            defs.push(ColumnDef::new(
                name.clone(),
                discovered_type(data_type, column_type, *precision, json_checked(name)),
            ));
        }
        let schema = TableSchema::new(spec.table.clone(), defs);
        schema.validate().map_err(|e| at(e.to_string()))?;
        schema
    };
    Ok(TableInfo {
        schema: Arc::new(schema),
        id_column: id_column.to_string(),
        db_types,
        ordinal,
        labels,
    })
}

/// One table being polled.
struct TableState {
    /// The table (and the key of its position entry).
    name: String,
    info: TableInfo,
    kind: Kind,
}

enum Kind {
    Cursor {
        cursor: String,
        last: Option<(Value, Value)>,
        caught_up: bool,
        /// The lookback in microseconds (date/time cursors only).
        lookback: Option<i64>,
        /// `(cursor, id)` pairs (as JSON text) emitted within the lookback of the newest cursor.
        recent: BTreeSet<(String, String)>,
        /// Whether the next read starts a poll, reading the lookback window again.
        rewind: bool,
    },
    Snapshot {
        after: Option<Value>,
        done: bool,
        caught_up: bool,
    },
    Diff(DiffState),
}

impl Kind {
    /// The position entry, when there is one to state.
    fn position(&self) -> Option<Value> {
        let mut m = Map::new();
        match self {
            Kind::Cursor {
                last,
                lookback,
                recent,
                ..
            } => {
                let (c, i) = last.as_ref()?;
                m.insert("cursor".into(), c.clone());
                m.insert("id".into(), i.clone());
                if lookback.is_some() {
                    let pairs = recent
                        .iter()
                        .map(|(c, i)| {
                            let parse = |t: &str| serde_json::from_str(t).unwrap_or(Value::Null);
                            Value::Array(vec![parse(c), parse(i)])
                        })
                        .collect();
                    m.insert("recent".into(), Value::Array(pairs));
                }
            }
            Kind::Snapshot { after, done, .. } => {
                m.insert("after".into(), after.clone().unwrap_or(Value::Null));
                m.insert("done".into(), Value::Bool(*done));
            }
            Kind::Diff(d) => {
                m.insert("seq".into(), Value::from(d.seq));
            }
        }
        Some(Value::Object(m))
    }
}

/// The bind that compares like a position value.
pub(crate) fn bind_of(value: &Value) -> std::result::Result<Bind, String> {
    match value {
        Value::Null => Ok(Bind::Null),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Bind::Integer(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Bind::Unsigned(u))
            } else {
                n.as_f64()
                    .map(Bind::Real)
                    .ok_or_else(|| format!("position value {n} is not a comparable number"))
            }
        }
        Value::String(s) => Ok(Bind::Text(s.clone())),
        other => Err(format!(
            "position value {other} is not a number, text or null"
        )),
    }
}

/// The value of column `i` of a row.
pub(crate) fn raw(row: &MySqlRow, i: usize) -> std::result::Result<Raw, String> {
    let value = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if value.is_null() {
        return Ok(Raw::Null);
    }
    let name = value.type_info().name().to_ascii_uppercase();
    let is_int = ["INT", "BOOLEAN", "YEAR"].iter().any(|t| name.contains(t));
    let decoded = if is_int && name.contains("UNSIGNED") {
        row.try_get_unchecked::<u64, _>(i).map(Raw::UInt)
    } else if is_int {
        row.try_get_unchecked::<i64, _>(i).map(Raw::Int)
    } else if name == "FLOAT" {
        row.try_get_unchecked::<f32, _>(i)
            .map(|f| Raw::Real(f64::from(f)))
    } else if name == "DOUBLE" {
        row.try_get_unchecked::<f64, _>(i).map(Raw::Real)
    } else {
        row.try_get_unchecked::<Vec<u8>, _>(i).and_then(|b| {
            String::from_utf8(b)
                .map(Raw::Text)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        })
    };
    decoded.map_err(|e| format!("cannot read a {name} value: {e}"))
}

/// A row read with [`TableInfo::select_list`].
pub(crate) struct PolledRow {
    /// The row id.
    pub(crate) row_id: String,
    /// The id value as read.
    pub(crate) id: Raw,
    /// The extra columns after the id, as read.
    pub(crate) extras: Vec<Raw>,
    /// The data columns as JSON, by name.
    pub(crate) values: Map<String, Value>,
}

/// A value that could not be read: the column (when it is a data column) and why.
pub(crate) type CellError = (Option<String>, String);

/// Reads a row selected with [`TableInfo::select_list`] (`skip` extra columns after the id).
pub(crate) fn read_row(
    row: &MySqlRow,
    info: &TableInfo,
    skip: usize,
) -> std::result::Result<PolledRow, CellError> {
    let id_raw = raw(row, 0).map_err(|e| (None, e))?;
    let row_id = row_id_of(&id_raw).map_err(|e| (None, e))?;
    let extras = (0..skip)
        .map(|k| raw(row, k + 1))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| (None, e))?;
    let mut after = Map::new();
    for (k, def) in info.schema.columns.iter().enumerate() {
        let value = raw(row, k + 1 + skip)
            .and_then(|r| to_json(r, def.column_type))
            .map_err(|e| (Some(def.name.clone()), format!("row {row_id:?}: {e}")))?;
        after.insert(def.name.clone(), value);
    }
    Ok(PolledRow {
        row_id,
        id: id_raw,
        extras,
        values: after,
    })
}

/// An INSERT delta carrying every column of `after`, in schema order.
pub(crate) fn insert_delta(
    schema: &TableSchema,
    row_id: String,
    client_id: &str,
    hlc: &Hlc,
    mut after: Map<String, Value>,
) -> RowDelta {
    let columns = schema
        .columns
        .iter()
        .filter_map(|c| {
            after
                .remove(&c.name)
                .map(|v| ColumnDelta::new(c.name.clone(), v))
        })
        .collect();
    RowDelta::new(
        DeltaOp::Insert,
        schema.delta_table(),
        row_id,
        client_id.to_string(),
        columns,
        hlc.now(),
    )
}

/// The polling stream's state.
struct PollReader {
    here: String,
    client_id: String,
    hlc: Arc<Hlc>,
    conn: MySqlConnection,
    tables: Vec<TableState>,
    position: Map<String, Value>,
    mode: ReadMode,
    batch_size: usize,
    pending: VecDeque<SourceBatch>,
    cycles: u64,
    catching_up: bool,
    done: bool,
}

impl PollReader {
    fn push(&mut self, index: usize, deltas: &[RowDelta]) -> Result<()> {
        let schema = Arc::clone(&self.tables[index].info.schema);
        let name = self.tables[index].name.clone();
        if let Some(entry) = self.tables[index].kind.position() {
            self.position.insert(name.clone(), entry);
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
                        Kind::Cursor {
                            caught_up, rewind, ..
                        } => {
                            *caught_up = false;
                            *rewind = true;
                        }
                        Kind::Snapshot {
                            caught_up, done, ..
                        } => *caught_up = *done,
                    }
                }
                self.catching_up = true;
                continue;
            }
            // One round: a batch from every incremental table that has not caught up.
            let mut read_any = false;
            for i in 0..self.tables.len() {
                let caught_up = match &self.tables[i].kind {
                    Kind::Cursor { caught_up, .. } | Kind::Snapshot { caught_up, .. } => *caught_up,
                    Kind::Diff(_) => true,
                };
                if !caught_up {
                    read_any = true;
                    self.poll_keyset(i).await?;
                }
            }
            if !read_any {
                self.catching_up = false;
            }
        }
    }

    /// One batch of a cursor or snapshot table.
    async fn poll_keyset(&mut self, index: usize) -> Result<()> {
        let table = &self.tables[index];
        let info = table.info.clone();
        let name = table.name.clone();
        let q = |c: &str| MysqlDialect.quote(c);
        let qi = q(&info.id_column)?;
        let mut binds = Vec::new();
        let (sql, is_cursor) = match &table.kind {
            Kind::Cursor {
                cursor,
                last,
                lookback,
                rewind,
                ..
            } => {
                let qc = q(cursor)?;
                let mut sql = format!(
                    "SELECT {} FROM {}",
                    info.select_list(&[cursor.as_str()])?,
                    q(&name)?
                );
                let window_start = match (rewind, lookback, last) {
                    (true, Some(lookback), Some((Value::String(c), _))) => timestamp_micros(c)
                        .ok()
                        .flatten()
                        .map(|m| m.saturating_sub(*lookback)),
                    _ => None,
                };
                match (window_start, last) {
                    // A new poll re-reads the lookback window; pairs already emitted are skipped.
                    (Some(low), _) => {
                        sql.push_str(&format!(" WHERE {qc} >= ?"));
                        binds.push(Bind::Text(datetime_micros(low)?));
                    }
                    (None, None) => {}
                    (None, Some((Value::Null, last_id))) => {
                        sql.push_str(&format!(
                            " WHERE ({qc} IS NULL AND {qi} > ?) OR {qc} IS NOT NULL"
                        ));
                        binds.push(bind_of(last_id).map_err(|e| self.err(&name, e))?);
                    }
                    (None, Some((last_cursor, last_id))) => {
                        sql.push_str(&format!(" WHERE {qc} > ? OR ({qc} = ? AND {qi} > ?)"));
                        let c = bind_of(last_cursor).map_err(|e| self.err(&name, e))?;
                        binds.push(c.clone());
                        binds.push(c);
                        binds.push(bind_of(last_id).map_err(|e| self.err(&name, e))?);
                    }
                }
                sql.push_str(&format!(" ORDER BY {qc}, {qi} LIMIT ?"));
                (sql, true)
            }
            Kind::Snapshot { after, .. } => {
                let mut sql = format!("SELECT {} FROM {}", info.select_list(&[])?, q(&name)?);
                if let Some(after) = after {
                    sql.push_str(&format!(" WHERE {qi} > ?"));
                    binds.push(bind_of(after).map_err(|e| self.err(&name, e))?);
                }
                sql.push_str(&format!(" ORDER BY {qi} LIMIT ?"));
                (sql, false)
            }
            Kind::Diff(_) => return Ok(()),
        };
        binds.push(Bind::Integer(
            i64::try_from(self.batch_size).unwrap_or(i64::MAX),
        ));
        let rows = query_with(&sql, binds)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| mysql_error(format!("{}: reading table {:?}", self.here, name), e))?;
        let full = rows.len() >= self.batch_size;
        let extra = usize::from(is_cursor);
        let mut deltas = Vec::with_capacity(rows.len());
        let mut new_last = None;
        for row in &rows {
            let PolledRow {
                row_id,
                id: id_raw,
                extras,
                values: after,
            } = read_row(row, &info, extra).map_err(|(col, e)| self.cell_err(&name, col, e))?;
            let id = position_value(id_raw).map_err(|e| self.err(&name, e))?;
            let cursor = match extras.into_iter().next() {
                Some(c) => position_value(c).map_err(|e| self.err(&name, e))?,
                None => Value::Null,
            };
            let fresh = match &mut self.tables[index].kind {
                Kind::Cursor {
                    lookback: Some(_),
                    recent,
                    ..
                } => recent.insert((cursor.to_string(), id.to_string())),
                _ => true,
            };
            if fresh {
                deltas.push(insert_delta(
                    &info.schema,
                    row_id,
                    &self.client_id,
                    &self.hlc,
                    after,
                ));
            }
            new_last = Some((cursor, id));
        }
        match &mut self.tables[index].kind {
            Kind::Cursor {
                last,
                caught_up,
                lookback,
                recent,
                rewind,
                ..
            } => {
                *caught_up = !full;
                *rewind = false;
                if new_last.is_some() {
                    *last = new_last;
                }
                // Forget pairs older than the lookback window of the newest cursor.
                let micros = |c: &str| {
                    serde_json::from_str::<Value>(c)
                        .ok()
                        .and_then(|v| v.as_str().and_then(|t| timestamp_micros(t).ok().flatten()))
                };
                if let Some(lookback) = lookback {
                    let newest = recent.iter().filter_map(|(c, _)| micros(c)).max();
                    if let Some(newest) = newest {
                        let low = newest.saturating_sub(*lookback);
                        recent.retain(|(c, _)| micros(c).is_some_and(|m| m >= low));
                    }
                }
            }
            Kind::Snapshot {
                after,
                done,
                caught_up,
            } => {
                if let Some((_, id)) = new_last {
                    *after = Some(id);
                }
                if !full {
                    *done = true;
                    *caught_up = true;
                }
            }
            Kind::Diff(_) => {}
        }
        // A snapshot's last (short) batch also records that it is done.
        let finished_snapshot = !full && !is_cursor;
        if !deltas.is_empty() || finished_snapshot {
            self.push(index, &deltas)?;
        }
        Ok(())
    }

    async fn poll_diff(&mut self, index: usize) -> Result<()> {
        let info = self.tables[index].info.clone();
        let schema = Arc::clone(&info.schema);
        let name = self.tables[index].name.clone();
        let Kind::Diff(state) = &self.tables[index].kind else {
            return Ok(());
        };
        let sql = format!(
            "SELECT {} FROM {} ORDER BY 1",
            info.select_list(&[])?,
            MysqlDialect.quote(&name)?
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| mysql_error(format!("{}: reading table {:?}", self.here, name), e))?;
        let mut images = Vec::with_capacity(rows.len());
        for row in &rows {
            let PolledRow {
                row_id,
                values: after,
                ..
            } = read_row(row, &info, 0).map_err(|(col, e)| self.cell_err(&name, col, e))?;
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

    fn cell_err(&self, name: &str, column: Option<String>, msg: String) -> Error {
        match column {
            Some(column) => self.err(name, format!("column {column:?}: {msg}")),
            None => self.err(name, msg),
        }
    }
}
