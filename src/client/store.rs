//! [`LocalStore`]: the offline-first local replica — one SQLite database (a file, or memory for
//! tests) holding the synced tables and the bookkeeping that makes syncing safe.
//!
//! One connection serves the store and every operation takes it in turn, so a local write, its
//! outbox entry and its bookkeeping are one SQLite transaction: either all of them are durable
//! or none is (a crash between a row write and its delta is impossible). Files use WAL with
//! `synchronous = FULL`, so a write that returned survives power loss. Other processes may read
//! the file at the same time (e.g. `sqlite3 replica.db`).
//!
//! The store owns the client's identity — its client id, fixed when the file is first created,
//! and its hybrid logical clock, whose last value is saved with every write so that the clock
//! stays monotonic across restarts.
//!
//! Reading: [`LocalStore::get`] and [`LocalStore::rows`] return rows typed by the table schema
//! (see [`super::values`]); [`LocalStore::query`] runs any read-only SQL. Writes go through the
//! tracker ([`super::tracker`]); remote changes through the sync engine. Every committed change
//! is announced on [`LocalStore::changes`] (what `watch` builds on).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{Mutex, MutexGuard, broadcast, watch};

use crate::adapters::sqlite::dialect::{Bind, query_with};
use crate::kernel::hlc::{Hlc, HlcTimestamp};
use crate::kernel::schema::{TableSchema, quote_identifier};
use crate::{Error, Result};

use super::tables::{
    BOOKKEEPING, Evolution, ROW_ID_COLUMN, add_column, check_schema, create_table, evolution,
    select_list,
};
use super::values::{raw_to_json, sqlite_to_json};

/// Where a replica lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (created when missing).
    File(PathBuf),
    /// A private in-memory database, gone when the store is dropped (for tests).
    Memory,
}

/// What changed in a committed transaction, as announced on [`LocalStore::changes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The synced tables whose rows changed.
    pub tables: BTreeSet<String>,
    /// Whether the change came from the gateway (`true`) or a local write (`false`).
    pub remote: bool,
}

/// The local replica (cheap to clone: a handle).
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<SqliteConnection>,
    client_id: String,
    hlc: Hlc,
    tables: RwLock<BTreeMap<String, Arc<TableSchema>>>,
    changes: broadcast::Sender<Arc<Changed>>,
    outbox: watch::Sender<u64>,
    label: String,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("location", &self.inner.label)
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

/// A sqlx error in the replica as a LakeSync error, saying what was being done.
pub(crate) fn db_error(context: impl std::fmt::Display, e: sqlx::Error) -> Error {
    crate::adapters::sqlite::sqlite_error(format!("local replica: {context}"), e)
}

/// Reads a bookkeeping value.
pub(crate) async fn meta_get(conn: &mut SqliteConnection, key: &str) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT value FROM _lakesync_meta WHERE key = ?")
        .bind(key)
        .fetch_optional(conn)
        .await
        .map_err(|e| db_error(format!("reading {key:?}"), e))
}

/// Writes a bookkeeping value.
pub(crate) async fn meta_set(conn: &mut SqliteConnection, key: &str, value: &str) -> Result<()> {
    sqlx::query("INSERT OR REPLACE INTO _lakesync_meta (key, value) VALUES (?, ?)")
        .bind(key)
        .bind(value)
        .execute(conn)
        .await
        .map_err(|e| db_error(format!("writing {key:?}"), e))?;
    Ok(())
}

/// Removes a bookkeeping value.
pub(crate) async fn meta_delete(conn: &mut SqliteConnection, key: &str) -> Result<()> {
    sqlx::query("DELETE FROM _lakesync_meta WHERE key = ?")
        .bind(key)
        .execute(conn)
        .await
        .map_err(|e| db_error(format!("removing {key:?}"), e))?;
    Ok(())
}

/// Bookkeeping keys.
pub(crate) mod keys {
    /// The client id the replica belongs to.
    pub const CLIENT_ID: &str = "client_id";
    /// The last HLC issued (decimal).
    pub const HLC: &str = "hlc";
    /// The pull cursor (decimal); absent before the first checkpoint.
    pub const CURSOR: &str = "cursor";
    /// The tables the cursor covers (JSON list).
    pub const SYNCED_TABLES: &str = "synced_tables";
    /// Set when the next sync must start from a checkpoint (expired cursor, dead letters).
    pub const NEEDS_CHECKPOINT: &str = "needs_checkpoint";
    /// When the last sync finished (ms since the Unix epoch).
    pub const LAST_SYNC_MS: &str = "last_sync_ms";
}

/// A JSON parameter as a SQLite bind.
fn param_bind(value: &Value) -> Bind {
    match value {
        Value::Null => Bind::Null,
        Value::Bool(b) => Bind::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bind::Integer(i),
            None => n.as_f64().map_or(Bind::Null, Bind::Real),
        },
        Value::String(s) => Bind::Text(s.clone()),
        other => Bind::Text(other.to_string()),
    }
}

impl LocalStore {
    /// Opens (creating when missing) the replica at `location`.
    ///
    /// The client id is fixed when the replica is created: `client_id`, or a random UUID when
    /// none is given. Opening an existing replica with a different `client_id` fails — its
    /// outbox holds changes written as the original client.
    pub async fn open(location: Location, client_id: Option<&str>) -> Result<Self> {
        let (options, label) = match &location {
            Location::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| crate::fs_error(dir, e))?;
                }
                (
                    SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Full),
                    path.display().to_string(),
                )
            }
            Location::Memory => (
                SqliteConnectOptions::from_str("sqlite::memory:")
                    .map_err(|e| db_error("opening an in-memory database", e))?,
                ":memory:".to_string(),
            ),
        };
        let options = options
            .busy_timeout(Duration::from_secs(10))
            .disable_statement_logging();
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| db_error(format!("opening {label}"), e))?;
        // One statement at a time: `raw_sql`'s future is not `Send` for every lifetime, which
        // would make every future that opens a store unusable with `tokio::spawn`.
        for statement in BOOKKEEPING.split(';').filter(|s| !s.trim().is_empty()) {
            sqlx::query(statement)
                .execute(&mut conn)
                .await
                .map_err(|e| db_error(format!("creating the bookkeeping tables in {label}"), e))?;
        }

        // Bound first: a future left in a `match` scrutinee would live across the awaits below.
        let saved = meta_get(&mut conn, keys::CLIENT_ID).await?;
        let client_id = match (saved, client_id) {
            (Some(saved), Some(given)) if saved != given => {
                return Err(Error::invalid(
                    "client id",
                    format!(
                        "the replica {label} belongs to client {saved:?}, not {given:?} \
                         (its outbox holds changes written as {saved:?}); use another file"
                    ),
                ));
            }
            (Some(saved), _) => saved,
            (None, given) => {
                let id = given.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
                if id.is_empty() {
                    return Err(Error::invalid("client id", "must not be empty"));
                }
                meta_set(&mut conn, keys::CLIENT_ID, &id).await?;
                id
            }
        };

        let hlc = Hlc::default();
        let saved = meta_get(&mut conn, keys::HLC).await?;
        if let Some(saved) = saved
            && let Ok(saved) = saved.parse::<u64>()
            && let Err(e) = hlc.recv(HlcTimestamp(saved))
        {
            tracing::warn!(replica = %label, error = %e, "the system clock is behind the replica's last write; new writes may sort before it until the clock catches up");
        }

        let mut tables = BTreeMap::new();
        let saved: Vec<String> = sqlx::query_scalar("SELECT schema_json FROM _lakesync_tables")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| db_error("reading registered tables", e))?;
        for text in saved {
            let schema = TableSchema::from_json(&text)?;
            tables.insert(schema.table.clone(), Arc::new(schema));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                client_id,
                hlc,
                tables: RwLock::new(tables),
                changes: broadcast::channel(256).0,
                outbox: watch::channel(0).0,
                label,
            }),
        })
    }

    /// Opens (creating when missing) a replica file.
    pub async fn open_file(path: impl AsRef<Path>, client_id: Option<&str>) -> Result<Self> {
        Self::open(Location::File(path.as_ref().to_path_buf()), client_id).await
    }

    /// A fresh in-memory replica for `client_id` (for tests).
    pub async fn open_in_memory(client_id: &str) -> Result<Self> {
        Self::open(Location::Memory, Some(client_id)).await
    }

    /// The client id every local change is written as.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The schema of registered table `table`.
    pub fn schema(&self, table: &str) -> Option<Arc<TableSchema>> {
        self.read_tables().get(table).cloned()
    }

    /// The registered tables, by name.
    pub fn table_names(&self) -> Vec<String> {
        self.read_tables().keys().cloned().collect()
    }

    fn read_tables(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<TableSchema>>> {
        self.inner
            .tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The schema of `table`, or `NOT_FOUND`.
    pub(crate) fn table(&self, table: &str) -> Result<Arc<TableSchema>> {
        self.schema(table).ok_or_else(|| Error::NotFound {
            what: "table",
            name: table.to_string(),
        })
    }

    /// Registers `schema`: creates its table, or evolves the registered one add-only (new
    /// columns become `ALTER TABLE ... ADD COLUMN`). A schema that is a prefix of the
    /// registered one changes nothing; one that differs otherwise is a schema error.
    pub async fn register(&self, schema: TableSchema) -> Result<()> {
        check_schema(&schema)?;
        let current = self.schema(&schema.table);
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        let here = |what: &str| format!("{what} table {:?}", schema.table);
        let stored = match &current {
            Some(current) => match evolution(current, &schema)? {
                Evolution::Unchanged => return Ok(()),
                Evolution::Adds(columns) => {
                    for column in columns {
                        sqlx::query(&add_column(&schema.table, column)?)
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| db_error(here("adding a column to"), e))?;
                    }
                    schema.clone()
                }
            },
            None => {
                sqlx::query(&create_table(&schema)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error(here("creating"), e))?;
                // A table that already existed (created by hand, or by an older replica) gets
                // whatever columns it lacks.
                let existing: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
                        .bind(&schema.table)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(|e| db_error(here("inspecting"), e))?;
                for column in &schema.columns {
                    if !existing.contains(&column.name) {
                        sqlx::query(&add_column(&schema.table, column)?)
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| db_error(here("adding a column to"), e))?;
                    }
                }
                schema.clone()
            }
        };
        let json = serde_json::to_string(&stored)
            .map_err(|e| Error::internal(format!("serialising a schema: {e}")))?;
        sqlx::query(
            "INSERT INTO _lakesync_tables (table_name, schema_json, schema_version) VALUES (?, ?, 1) \
             ON CONFLICT (table_name) DO UPDATE SET schema_json = excluded.schema_json, \
             schema_version = schema_version + 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')",
        )
        .bind(&stored.table)
        .bind(json)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(here("registering"), e))?;
        tx.commit()
            .await
            .map_err(|e| db_error(here("registering"), e))?;
        drop(conn);
        tracing::debug!(table = %stored.table, columns = stored.columns.len(), "registered table");
        self.inner
            .tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(stored.table.clone(), Arc::new(stored));
        Ok(())
    }

    /// Row `row_id` of `table`, every column typed by the schema (nulls included), or `None`.
    pub async fn get(&self, table: &str, row_id: &str) -> Result<Option<Map<String, Value>>> {
        let schema = self.table(table)?;
        let mut conn = self.conn().await;
        read_row(&mut conn, &schema, row_id).await
    }

    /// Every row of `table` by row id, typed by the schema (nulls included).
    pub async fn rows(&self, table: &str) -> Result<BTreeMap<String, Map<String, Value>>> {
        let schema = self.table(table)?;
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            select_list(&schema),
            quote_identifier(&schema.table),
            quote_identifier(ROW_ID_COLUMN)
        );
        let mut conn = self.conn().await;
        let rows = sqlx::query(&sql)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| db_error(format!("reading table {table:?}"), e))?;
        rows.iter().map(|row| typed_row(row, &schema)).collect()
    }

    /// Runs read-only SQL with `params` bound to its `?` placeholders; each result row is a
    /// JSON object by column name, with SQLite's own types (booleans are `0`/`1`, JSON columns
    /// text). The statement runs in a transaction that is always rolled back, so a statement
    /// that writes changes nothing (use the tracker to write).
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Map<String, Value>>> {
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        let rows = query_with(sql, params.iter().map(param_bind).collect())
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| Error::invalid("query", format!("{sql:?}: {e}")))?;
        tx.rollback()
            .await
            .map_err(|e| db_error("ending a read", e))?;
        rows.iter()
            .map(|row| {
                let mut out = Map::new();
                for (i, column) in row.columns().iter().enumerate() {
                    out.insert(sqlx::Column::name(column).to_string(), raw_to_json(row, i)?);
                }
                Ok(out)
            })
            .collect()
    }

    /// The pull cursor: where the next pull starts; `None` before the first checkpoint.
    pub async fn cursor(&self) -> Result<Option<u64>> {
        let mut conn = self.conn().await;
        read_cursor(&mut conn).await
    }

    /// Committed changes, as they happen. A receiver that falls behind gets `Lagged` and should
    /// treat every table as changed.
    pub fn changes(&self) -> broadcast::Receiver<Arc<Changed>> {
        self.inner.changes.subscribe()
    }

    /// The replica's one connection.
    pub(crate) async fn conn(&self) -> MutexGuard<'_, SqliteConnection> {
        self.inner.conn.lock().await
    }

    /// A new HLC for a local change.
    pub(crate) fn now(&self) -> HlcTimestamp {
        self.inner.hlc.now()
    }

    /// Folds a remote HLC into the clock, so later local changes sort after what was seen. A
    /// remote clock too far ahead is logged and ignored (the server checks drift, not us).
    pub(crate) fn observe(&self, remote: HlcTimestamp) {
        if let Err(e) = self.inner.hlc.recv(remote) {
            tracing::debug!(error = %e, "not advancing the local clock to a remote HLC");
        }
    }

    /// Announces a committed change.
    pub(crate) fn announce(&self, tables: BTreeSet<String>, remote: bool) {
        if !tables.is_empty() {
            // No receiver is not an error.
            let _ = self
                .inner
                .changes
                .send(Arc::new(Changed { tables, remote }));
        }
    }

    /// Notes that the outbox gained entries.
    pub(crate) fn outbox_grew(&self) {
        self.inner.outbox.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes whenever the outbox gains entries.
    pub(crate) fn outbox_watch(&self) -> watch::Receiver<u64> {
        self.inner.outbox.subscribe()
    }
}

/// The pull cursor, from the bookkeeping.
pub(crate) async fn read_cursor(conn: &mut SqliteConnection) -> Result<Option<u64>> {
    match meta_get(conn, keys::CURSOR).await? {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| Error::internal(format!("the replica's cursor {text:?} is not a number"))),
    }
}

/// A row of a synced table as `(row id, typed values)`.
pub(crate) fn typed_row(
    row: &sqlx::sqlite::SqliteRow,
    schema: &TableSchema,
) -> Result<(String, Map<String, Value>)> {
    let id: String = row
        .try_get(0)
        .map_err(|e| db_error(format!("reading a row id of {:?}", schema.table), e))?;
    let mut values = Map::new();
    for (i, column) in schema.columns.iter().enumerate() {
        values.insert(
            column.name.clone(),
            sqlite_to_json(row, i + 1, column.column_type)?,
        );
    }
    Ok((id, values))
}

/// Row `row_id` of a synced table, typed, or `None`.
pub(crate) async fn read_row(
    conn: &mut SqliteConnection,
    schema: &TableSchema,
    row_id: &str,
) -> Result<Option<Map<String, Value>>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?",
        select_list(schema),
        quote_identifier(&schema.table),
        quote_identifier(ROW_ID_COLUMN)
    );
    let row = sqlx::query(&sql)
        .bind(row_id)
        .fetch_optional(conn)
        .await
        .map_err(|e| db_error(format!("reading row {row_id:?} of {:?}", schema.table), e))?;
    row.map(|r| typed_row(&r, schema).map(|(_, values)| values))
        .transpose()
}
