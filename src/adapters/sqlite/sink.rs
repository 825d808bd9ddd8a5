//! [`SqliteSink`]: a delta log in a SQLite file, and optionally the tables materialised from it.
//!
//! **Storage.** The file (WAL mode, `synchronous = FULL`, so a commit survives power loss) holds:
//! - `lakesync_deltas(delta_id BLOB PRIMARY KEY, "table", row_id, client_id, hlc INTEGER,
//!   op INTEGER, columns TEXT)`: every delta once, keyed by its 32-byte deltaId (`INSERT OR
//!   IGNORE`, so a retried or replayed delta is never logged twice), indexed by
//!   `("table", row_id)`. `"table"` is the table the delta names (a schema's `sourceTable` when it
//!   has one); `hlc` is the u64 HLC bit-cast to SQLite's i64, which is the HLC itself for every HLC
//!   below 2^63 (wall clocks until about the year 6400); `op` is 1 insert, 2 update, 3 delete;
//!   `columns` is the delta's `[{"column": …, "value": …}]` JSON in the delta's own order, so a
//!   reader gets the delta back exactly, deltaId and all;
//! - `_lakesync_commits(pipeline, sink, epoch, committed_at)`: the last epoch each pipeline's
//!   sink committed;
//! - `_lakesync_schemas("table", schema_json)`: the schema each table was last prepared with;
//! - with `materialise: true`, one table per schema in the shape of
//!   [`crate::kernel::materialise`] (synced columns + `props` + [`deleted_at`] + `synced_at`).
//!
//! **Commit.** [`Sink::commit`] runs one `BEGIN IMMEDIATE` transaction: when the stored epoch
//! mark is already at or past the epoch it rolls back and drops the buffered writes (a replay);
//! otherwise it logs the deltas, rematerialises every row they touch, and sets the mark. To
//! rematerialise a row it loads the row's *whole* history from the log (including what was just
//! logged), merges it with the kernel's LWW merge and applies
//! [`plan_materialise`]'s upserts and deletes in
//! chunked multi-row statements. The merge is a function of the set of deltas and the log is a
//! set, so a materialised row is exactly the fold of every delta of that row, however the deltas
//! were batched, ordered or repeated. The cost is one history read per touched row per commit:
//! fine for rows with short histories, heavier for rows rewritten thousands of times.
//!
//! **Schema evolution.** [`Sink::prepare`] compares each schema with the one recorded for its
//! table: only add-only evolution is accepted (`TableSchema::evolve_to`), and a materialised
//! table's `primaryKey`, `softDelete`, `externalIdColumn` and `sourceTable` may not change. New
//! columns are added with `ALTER TABLE … ADD COLUMN`, in the same transaction as the new record.
//!
//! [`deleted_at`]: crate::kernel::materialise::DELETED_AT_COLUMN

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Row};

use super::dialect::{Bind, SqliteDialect, query_with};
use super::{io_error, sqlite_error};
use crate::adapters::sql_common::{
    EpochBuffer, check_settings_unchanged, now_micros, plan_from_history,
};
use crate::kernel::delta::{ColumnDelta, DeltaId, DeltaOp, RowDelta};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::materialise::{
    self, DELETED_AT_COLUMN, PROPS_COLUMN, ROW_ID_COLUMN, SYNCED_AT_COLUMN, SqlDialect,
    check_materialisable, rfc3339_micros, upsert_columns,
};
use crate::kernel::schema::TableSchema;
use crate::runtime::api::{CommitStats, Sink, TableRef};
use crate::{Error, Result};

/// The delta log table.
pub(crate) const DELTAS_TABLE: &str = "lakesync_deltas";
/// The epoch marks table.
const COMMITS_TABLE: &str = "_lakesync_commits";
/// The recorded schemas table.
pub(crate) const SCHEMAS_TABLE: &str = "_lakesync_schemas";

/// Bind values per logged delta.
const DELTA_BINDS: usize = 7;

const CREATE_LOG: &str = r#"
CREATE TABLE IF NOT EXISTS lakesync_deltas (
    delta_id BLOB NOT NULL PRIMARY KEY,
    "table" TEXT NOT NULL,
    row_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    op INTEGER NOT NULL,
    columns TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lakesync_deltas_table_row ON lakesync_deltas ("table", row_id);
CREATE TABLE IF NOT EXISTS _lakesync_commits (
    pipeline TEXT NOT NULL,
    sink TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    committed_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, sink)
);
CREATE TABLE IF NOT EXISTS _lakesync_schemas (
    "table" TEXT NOT NULL PRIMARY KEY,
    schema_json TEXT NOT NULL
);
"#;

/// How a [`SqliteSink`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqliteSinkOptions {
    /// Also materialise each table (synced columns + `props` + `synced_at`), not only log deltas.
    pub materialise: bool,
}

/// A sink writing to a SQLite file: see the [module docs](self).
pub struct SqliteSink {
    name: String,
    pipeline: String,
    path: PathBuf,
    options: SqliteSinkOptions,
    conn: SqliteConnection,
    /// Prepared schemas and the deltas written since the last commit.
    epoch: EpochBuffer,
}

impl fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSink")
            .field("name", &self.name)
            .field("pipeline", &self.pipeline)
            .field("path", &self.path)
            .field("options", &self.options)
            .field("tables", &self.epoch.table_names())
            .finish()
    }
}

impl SqliteSink {
    /// Opens (creating the file and its parent directories when missing) the SQLite database at
    /// `path` as sink `sink_name` of pipeline `pipeline`, and creates the log tables.
    pub async fn open(
        path: &Path,
        pipeline: &str,
        sink_name: &str,
        options: SqliteSinkOptions,
    ) -> Result<Self> {
        let here = format!("sqlite sink {sink_name:?} at {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_error(format!("{here}: creating {}", dir.display()), e))?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let mut conn = SqliteConnection::connect_with(&connect)
            .await
            .map_err(|e| sqlite_error(format!("{here}: opening"), e))?;
        sqlx::raw_sql(CREATE_LOG)
            .execute(&mut conn)
            .await
            .map_err(|e| sqlite_error(format!("{here}: creating the delta log"), e))?;
        Ok(Self {
            name: sink_name.to_string(),
            pipeline: pipeline.to_string(),
            path: path.to_path_buf(),
            options,
            conn,
            epoch: EpochBuffer::default(),
        })
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for readers of the log it created (the hot log of a tier).
    pub(crate) fn into_connection(self) -> SqliteConnection {
        self.conn
    }

    fn here(&self) -> String {
        format!("sqlite sink {:?} at {}", self.name, self.path.display())
    }

    /// Checks a schema, records it, and creates or evolves its materialised table.
    async fn prepare_table(
        conn: &mut SqliteConnection,
        here: &str,
        materialise: bool,
        schema: &TableSchema,
    ) -> Result<()> {
        let at = |what: &str| format!("{here}: table {:?}: {what}", schema.table);
        if materialise {
            check_materialisable(schema)?;
            if [DELTAS_TABLE, COMMITS_TABLE, SCHEMAS_TABLE].contains(&schema.table.as_str()) {
                return Err(Error::schema(format!(
                    "{here}: table {:?} is one of LakeSync's own tables; materialise it under another name",
                    schema.table
                )));
            }
        } else {
            schema.validate()?;
        }
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT schema_json FROM _lakesync_schemas WHERE \"table\" = ?")
                .bind(&schema.table)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| sqlite_error(at("reading its recorded schema"), e))?;
        if let Some(text) = recorded {
            let old: TableSchema = serde_json::from_str(&text).map_err(|e| {
                Error::invalid(
                    "recorded schema",
                    format!(
                        "{}: {e}",
                        at("the schema in _lakesync_schemas is not valid")
                    ),
                )
            })?;
            old.evolve_to(schema)
                .map_err(|e| Error::schema(format!("{}: {e}", at("schema change rejected"))))?;
            if materialise {
                check_settings_unchanged(&old, schema)
                    .map_err(|e| Error::schema(format!("{}: {e}", at("schema change rejected"))))?;
            }
        }
        if materialise {
            let dialect = SqliteDialect;
            let create = dialect.create_table(schema)?;
            sqlx::query(&create)
                .execute(&mut *conn)
                .await
                .map_err(|e| sqlite_error(at("creating the materialised table"), e))?;
            let existing: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
                .bind(&schema.table)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| sqlite_error(at("reading its columns"), e))?;
            let mut required = vec![ROW_ID_COLUMN, PROPS_COLUMN, SYNCED_AT_COLUMN];
            if schema.is_soft_delete() {
                required.push(DELETED_AT_COLUMN);
            }
            if let Some(missing) = required.iter().find(|c| !existing.iter().any(|e| e == *c)) {
                return Err(Error::schema(at(&format!(
                    "the existing table has no {missing:?} column, so it is not a LakeSync materialised table; drop or rename it"
                ))));
            }
            for column in schema
                .columns
                .iter()
                .filter(|c| !existing.contains(&c.name))
            {
                let alter = dialect.add_column(schema, column)?;
                sqlx::query(&alter).execute(&mut *conn).await.map_err(|e| {
                    sqlite_error(at(&format!("adding column {:?}", column.name)), e)
                })?;
                tracing::info!(table = %schema.table, column = %column.name, "materialised table gained a column");
            }
        }
        let json = serde_json::to_string(schema)
            .map_err(|e| Error::internal(format!("serialising a table schema: {e}")))?;
        sqlx::query(
            "INSERT INTO _lakesync_schemas (\"table\", schema_json) VALUES (?, ?) \
             ON CONFLICT (\"table\") DO UPDATE SET schema_json = excluded.schema_json",
        )
        .bind(&schema.table)
        .bind(json)
        .execute(&mut *conn)
        .await
        .map_err(|e| sqlite_error(at("recording its schema"), e))?;
        Ok(())
    }

    /// Reads the epoch mark inside the current transaction.
    async fn read_mark(&mut self) -> Result<Option<u64>> {
        let here = self.here();
        read_mark(&mut self.conn, &self.pipeline, &self.name, &here).await
    }
}

async fn read_mark(
    conn: &mut SqliteConnection,
    pipeline: &str,
    sink: &str,
    here: &str,
) -> Result<Option<u64>> {
    let epoch: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM _lakesync_commits WHERE pipeline = ? AND sink = ?")
            .bind(pipeline)
            .bind(sink)
            .fetch_optional(conn)
            .await
            .map_err(|e| sqlite_error(format!("{here}: reading the epoch mark"), e))?;
    epoch
        .map(|e| {
            u64::try_from(e).map_err(|_| {
                Error::invalid(
                    "epoch mark",
                    format!("{here}: _lakesync_commits holds negative epoch {e}"),
                )
            })
        })
        .transpose()
}

#[async_trait]
impl Sink for SqliteSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&mut self, tables: &[TableRef]) -> Result<()> {
        let here = self.here();
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| sqlite_error(format!("{here}: starting to prepare tables"), e))?;
        for table in tables {
            Self::prepare_table(&mut tx, &here, self.options.materialise, table).await?;
        }
        tx.commit()
            .await
            .map_err(|e| sqlite_error(format!("{here}: committing prepared tables"), e))?;
        self.epoch.prepared(tables);
        Ok(())
    }

    async fn committed_epoch(&mut self) -> Result<Option<u64>> {
        self.read_mark().await
    }

    async fn write(&mut self, table: &TableRef, batch: RecordBatch) -> Result<()> {
        let here = self.here();
        self.epoch.write(table, &batch, &here)
    }

    async fn commit(&mut self, epoch: u64) -> Result<CommitStats> {
        let here = self.here();
        let epoch_i64 = i64::try_from(epoch).map_err(|_| {
            Error::invalid(
                "epoch",
                format!("{here}: epoch {epoch} does not fit SQLite's INTEGER"),
            )
        })?;
        let synced_at = rfc3339_micros(now_micros())?;
        let mut tx =
            self.conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| {
                sqlite_error(format!("{here}: starting commit of epoch {epoch}"), e)
            })?;
        let mark = read_mark(&mut tx, &self.pipeline, &self.name, &here).await?;
        if mark.is_some_and(|m| m >= epoch) {
            tx.rollback()
                .await
                .map_err(|e| sqlite_error(format!("{here}: rolling back epoch {epoch}"), e))?;
            let dropped = self.epoch.clear();
            tracing::info!(sink = %self.name, epoch, mark = ?mark, dropped, "epoch already committed; dropped its writes");
            return Ok(CommitStats::default());
        }

        let mut stats = CommitStats::default();
        let all = self.epoch.deltas();
        for chunk in all.chunks(SqliteDialect.rows_per_statement(DELTA_BINDS)) {
            let (inserted, bytes) = log_deltas(&mut tx, chunk, &here).await?;
            stats.rows += inserted;
            stats.bytes += bytes;
        }

        let (mut upserted, mut deleted) = (0, 0);
        if self.options.materialise {
            for (table, ids) in self.epoch.touched(&here)? {
                let (u, d) = materialise_rows(&mut tx, table, &ids, &synced_at, &here).await?;
                upserted += u;
                deleted += d;
            }
        }

        sqlx::query(
            "INSERT INTO _lakesync_commits (pipeline, sink, epoch, committed_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (pipeline, sink) DO UPDATE SET epoch = excluded.epoch, committed_at = excluded.committed_at",
        )
        .bind(&self.pipeline)
        .bind(&self.name)
        .bind(epoch_i64)
        .bind(&synced_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| sqlite_error(format!("{here}: setting the epoch mark to {epoch}"), e))?;
        tx.commit()
            .await
            .map_err(|e| sqlite_error(format!("{here}: committing epoch {epoch}"), e))?;
        tracing::debug!(sink = %self.name, epoch, deltas = stats.rows, upserted, deleted, "committed");
        self.epoch.clear();
        Ok(stats)
    }
}

/// Logs deltas with `INSERT OR IGNORE`; returns (newly logged, bytes offered).
async fn log_deltas(
    conn: &mut SqliteConnection,
    deltas: &[&RowDelta],
    here: &str,
) -> Result<(u64, u64)> {
    if deltas.is_empty() {
        return Ok((0, 0));
    }
    let mut sql = String::from(
        "INSERT OR IGNORE INTO lakesync_deltas (delta_id, \"table\", row_id, client_id, hlc, op, columns) VALUES ",
    );
    let mut binds = Vec::with_capacity(deltas.len() * DELTA_BINDS);
    let mut bytes = 0u64;
    for (i, d) in deltas.iter().enumerate() {
        sql.push_str(if i == 0 {
            "(?, ?, ?, ?, ?, ?, ?)"
        } else {
            ", (?, ?, ?, ?, ?, ?, ?)"
        });
        let columns = serde_json::to_string(&d.columns)
            .map_err(|e| Error::internal(format!("serialising delta columns: {e}")))?;
        bytes += (32 + 8 + 1 + d.table.len() + d.row_id.len() + d.client_id.len() + columns.len())
            as u64;
        binds.extend([
            Bind::Blob(d.delta_id.as_bytes().to_vec()),
            Bind::Text(d.table.clone()),
            Bind::Text(d.row_id.clone()),
            Bind::Text(d.client_id.clone()),
            // Bit-cast: the HLC itself for every HLC below 2^63.
            Bind::Integer(d.hlc.0 as i64),
            Bind::Integer(i64::from(d.op.code())),
            Bind::Text(columns),
        ]);
    }
    let done = query_with(&sql, binds)
        .persistent(deltas.len() == SqliteDialect.rows_per_statement(DELTA_BINDS))
        .execute(conn)
        .await
        .map_err(|e| sqlite_error(format!("{here}: logging {} deltas", deltas.len()), e))?;
    Ok((done.rows_affected(), bytes))
}

/// Reads the logged history of `row_ids` of table `delta_table`.
pub(crate) async fn load_history(
    conn: &mut SqliteConnection,
    delta_table: &str,
    row_ids: &[&str],
    here: &str,
) -> Result<Vec<RowDelta>> {
    let mut out = Vec::with_capacity(row_ids.len());
    for chunk in row_ids.chunks(SqliteDialect.max_bind_params() - 1) {
        let sql = format!(
            "SELECT delta_id, row_id, client_id, hlc, op, columns FROM lakesync_deltas \
             WHERE \"table\" = ? AND row_id IN ({})",
            SqliteDialect.placeholders(1, chunk.len())
        );
        let mut binds = Vec::with_capacity(chunk.len() + 1);
        binds.push(Bind::Text(delta_table.to_string()));
        binds.extend(chunk.iter().map(|id| Bind::Text((*id).to_string())));
        let rows = query_with(&sql, binds)
            .persistent(false)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| {
                sqlite_error(
                    format!("{here}: reading the history of table {delta_table:?}"),
                    e,
                )
            })?;
        for row in &rows {
            out.push(logged_delta(row, delta_table).map_err(|e| {
                Error::invalid("delta log", format!("{here}: table {delta_table:?}: {e}"))
            })?);
        }
    }
    Ok(out)
}

/// A delta from a `lakesync_deltas` row with columns `delta_id, row_id, client_id, hlc, op,
/// columns` (by name).
pub(crate) fn logged_delta(
    row: &sqlx::sqlite::SqliteRow,
    table: &str,
) -> std::result::Result<RowDelta, String> {
    let get_err = |what: &str, e: sqlx::Error| format!("column {what}: {e}");
    let id: Vec<u8> = row
        .try_get("delta_id")
        .map_err(|e| get_err("delta_id", e))?;
    let row_id: String = row.try_get("row_id").map_err(|e| get_err("row_id", e))?;
    let delta_id = DeltaId(
        <[u8; 32]>::try_from(id.as_slice())
            .map_err(|_| format!("row {row_id:?} has a {}-byte delta_id, not 32", id.len()))?,
    );
    let client_id: String = row
        .try_get("client_id")
        .map_err(|e| get_err("client_id", e))?;
    let hlc: i64 = row.try_get("hlc").map_err(|e| get_err("hlc", e))?;
    let op: i64 = row.try_get("op").map_err(|e| get_err("op", e))?;
    let op = u8::try_from(op)
        .ok()
        .and_then(|code| DeltaOp::from_code(code).ok())
        .ok_or_else(|| format!("delta {delta_id} has op {op}, not 1, 2 or 3"))?;
    let columns: String = row.try_get("columns").map_err(|e| get_err("columns", e))?;
    let columns: Vec<ColumnDelta> = serde_json::from_str(&columns).map_err(|e| {
        format!("delta {delta_id} has columns that are not [{{column, value}}] JSON: {e}")
    })?;
    Ok(RowDelta {
        op,
        table: table.to_string(),
        row_id,
        client_id,
        columns,
        // Bit-cast back.
        hlc: HlcTimestamp(hlc as u64),
        delta_id,
    })
}

/// Rematerialises `row_ids` of `schema` from their full logged history; returns (upserted,
/// deleted) row counts.
async fn materialise_rows(
    conn: &mut SqliteConnection,
    schema: &TableSchema,
    row_ids: &[&str],
    synced_at: &str,
    here: &str,
) -> Result<(u64, u64)> {
    let history = load_history(conn, schema.delta_table(), row_ids, here).await?;
    let plan = plan_from_history(schema, &history, here)?;
    let dialect = SqliteDialect;
    let soft = schema.is_soft_delete();

    let per_row = upsert_columns(schema).len();
    let full = dialect.rows_per_statement(per_row);
    let mut upserted = 0;
    let mut rows = plan.upserts.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<materialise::UpsertRow> = rows.by_ref().take(full).collect();
        let sql = dialect.upsert(schema, chunk.len())?;
        let mut binds = Vec::with_capacity(chunk.len() * per_row);
        let n = chunk.len();
        for row in chunk {
            binds.push(Bind::Text(row.row_id));
            for cell in row.values {
                binds.push(SqliteDialect::bind(cell)?);
            }
            if soft {
                binds.push(match row.deleted_at {
                    Some(micros) => Bind::Text(rfc3339_micros(micros)?),
                    None => Bind::Null,
                });
            }
            binds.push(Bind::Text(synced_at.to_string()));
        }
        query_with(&sql, binds)
            .persistent(n == full)
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                sqlite_error(
                    format!("{here}: upserting {n} rows into {:?}", schema.table),
                    e,
                )
            })?;
        upserted += n as u64;
    }

    let mut deleted = 0;
    for chunk in plan.deletes.chunks(dialect.max_bind_params()) {
        let sql = dialect.hard_delete(schema, chunk.len())?;
        let binds = chunk.iter().map(|id| Bind::Text(id.clone())).collect();
        let done = query_with(&sql, binds)
            .persistent(false)
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                sqlite_error(
                    format!(
                        "{here}: deleting {} rows from {:?}",
                        chunk.len(),
                        schema.table
                    ),
                    e,
                )
            })?;
        deleted += done.rows_affected();
    }
    Ok((upserted, deleted))
}
