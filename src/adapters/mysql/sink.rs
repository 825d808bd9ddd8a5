//! [`MysqlSink`]: a delta log in a MySQL/MariaDB database, and the tables materialised from it.
//!
//! **Storage.** The database holds (all InnoDB, `utf8mb4` with the binary collation):
//! - `lakesync_deltas(delta_id BINARY(32) PRIMARY KEY, `table`, row_id, client_id,
//!   hlc BIGINT UNSIGNED, op TINYINT UNSIGNED, `columns` LONGTEXT)`: every delta once, keyed by
//!   its 32-byte deltaId (`INSERT IGNORE`, so a retried or replayed delta is never logged twice),
//!   indexed by `(`table`, row_id)`. `table` is the table the delta names (a schema's
//!   `sourceTable` when it has one); `op` is 1 insert, 2 update, 3 delete; `columns` is the
//!   delta's `[{"column": …, "value": …}]` JSON in the delta's own order, so the delta can be read
//!   back exactly, deltaId and all;
//! - `_lakesync_commits(pipeline, sink, epoch, committed_at)`: the last epoch each pipeline's
//!   sink committed;
//! - `_lakesync_schemas(`table`, schema_json)`: the schema each table was last prepared with;
//! - with `materialise: true` (the default), one table per schema in the shape of
//!   [`crate::kernel::materialise`] (synced columns + `props` + `deleted_at` + `synced_at`), typed
//!   by [`MysqlDialect`].
//!
//! **Commit.** [`Sink::commit`] runs one transaction: it locks the pipeline's epoch mark
//! (`SELECT … FOR UPDATE`); when the mark is already at or past the epoch it rolls back and drops
//! the buffered writes (a replay); otherwise it logs the deltas, rematerialises every row they
//! touch, and sets the mark. To rematerialise a row it loads the row's *whole* history from the
//! log and folds it with the kernel's LWW merge ([`crate::adapters::sql_common`]), so a
//! materialised row is exactly the fold of every delta of that row, however the deltas were
//! batched, ordered or repeated. MySQL DDL commits implicitly, so tables are created and evolved
//! in [`Sink::prepare`], never inside a commit.
//!
//! **Schema evolution.** [`Sink::prepare`] only accepts add-only evolution
//! (`TableSchema::evolve_to`) and unchanged materialisation settings; new columns are added with
//! `ALTER TABLE … ADD COLUMN` before the new schema is recorded.
//!
//! The connection is a one-connection pool, so a connection lost between commits is reopened;
//! lost connections, deadlocks and lock wait timeouts are retryable errors (the runtime retries
//! the commit, which is idempotent by its epoch mark).

use std::fmt;
use std::time::Duration;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Executor, Row};

use super::dialect::{Bind, MysqlDialect, TABLE_OPTIONS, datetime_micros, query_with};
use super::{mysql_error, redacted};
use crate::adapters::sql_common::{
    EpochBuffer, check_settings_unchanged, now_micros, plan_from_history,
};
use crate::kernel::delta::{ColumnDelta, DeltaId, DeltaOp, RowDelta};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::materialise::{
    DELETED_AT_COLUMN, PROPS_COLUMN, ROW_ID_COLUMN, SYNCED_AT_COLUMN, SqlDialect,
    check_materialisable, upsert_columns,
};
use crate::kernel::schema::TableSchema;
use crate::runtime::api::{CommitStats, Sink, TableRef};
use crate::{Error, Result};

/// The delta log table.
pub(crate) const DELTAS_TABLE: &str = "lakesync_deltas";
/// The epoch marks table.
const COMMITS_TABLE: &str = "_lakesync_commits";
/// The recorded schemas table.
const SCHEMAS_TABLE: &str = "_lakesync_schemas";

/// The longest table name, row id or client id the log keeps (`VARCHAR(255)`).
const MAX_KEY_CHARS: usize = 255;

/// Bind values per logged delta.
const DELTA_BINDS: usize = 7;

fn create_statements() -> [String; 3] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS lakesync_deltas (
                delta_id BINARY(32) NOT NULL PRIMARY KEY,
                `table` VARCHAR(255) NOT NULL,
                row_id VARCHAR(255) NOT NULL,
                client_id VARCHAR(255) NOT NULL,
                hlc BIGINT UNSIGNED NOT NULL,
                op TINYINT UNSIGNED NOT NULL,
                `columns` LONGTEXT NOT NULL,
                KEY lakesync_deltas_table_row (`table`, row_id)
            ) ENGINE=InnoDB {TABLE_OPTIONS}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS _lakesync_commits (
                pipeline VARCHAR(255) NOT NULL,
                sink VARCHAR(255) NOT NULL,
                epoch BIGINT UNSIGNED NOT NULL,
                committed_at DATETIME(6) NOT NULL,
                PRIMARY KEY (pipeline, sink)
            ) ENGINE=InnoDB {TABLE_OPTIONS}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS _lakesync_schemas (
                `table` VARCHAR(255) NOT NULL PRIMARY KEY,
                schema_json LONGTEXT NOT NULL
            ) ENGINE=InnoDB {TABLE_OPTIONS}"
        ),
    ]
}

/// How a [`MysqlSink`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MysqlSinkOptions {
    /// Also materialise each table (synced columns + `props` + `synced_at`), not only log deltas.
    pub materialise: bool,
}

/// A sink writing to a MySQL or MariaDB database: see the [module docs](self).
pub struct MysqlSink {
    name: String,
    pipeline: String,
    url: String,
    options: MysqlSinkOptions,
    pool: MySqlPool,
    /// Prepared schemas and the deltas written since the last commit.
    epoch: EpochBuffer,
}

impl fmt::Debug for MysqlSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlSink")
            .field("name", &self.name)
            .field("pipeline", &self.pipeline)
            .field("url", &self.url)
            .field("options", &self.options)
            .field("tables", &self.epoch.table_names())
            .finish()
    }
}

/// Connection options for `url`, in UTC and `utf8mb4`.
pub(crate) fn connect_options(url: &str, here: &str) -> Result<MySqlConnectOptions> {
    let options: MySqlConnectOptions = url.parse().map_err(|e| {
        Error::invalid(
            "mysql url",
            format!("{here}: {} is not a MySQL URL: {e}", redacted(url)),
        )
    })?;
    Ok(options
        .timezone(Some("+00:00".to_string()))
        .charset("utf8mb4"))
}

impl MysqlSink {
    /// Connects to the database at `url` as sink `sink_name` of pipeline `pipeline`, and creates
    /// the log tables.
    pub async fn open(
        url: &str,
        pipeline: &str,
        sink_name: &str,
        options: MysqlSinkOptions,
    ) -> Result<Self> {
        let here = format!("mysql sink {sink_name:?} at {}", redacted(url));
        let connect = connect_options(url, &here)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await
            .map_err(|e| mysql_error(format!("{here}: connecting"), e))?;
        for sql in create_statements() {
            pool.execute(sql.as_str())
                .await
                .map_err(|e| mysql_error(format!("{here}: creating the delta log"), e))?;
        }
        Ok(Self {
            name: sink_name.to_string(),
            pipeline: pipeline.to_string(),
            url: redacted(url),
            options,
            pool,
            epoch: EpochBuffer::default(),
        })
    }

    fn here(&self) -> String {
        format!("mysql sink {:?} at {}", self.name, self.url)
    }

    /// Checks a schema, creates or evolves its materialised table, and records it.
    async fn prepare_table(
        conn: &mut MySqlConnection,
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
        let recorded: Option<String> = sqlx::query_scalar(
            "SELECT CAST(schema_json AS CHAR) FROM _lakesync_schemas WHERE `table` = ?",
        )
        .bind(&schema.table)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| mysql_error(at("reading its recorded schema"), e))?;
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
            let dialect = MysqlDialect;
            let create = dialect.create_table(schema)?;
            conn.execute(create.as_str())
                .await
                .map_err(|e| mysql_error(at("creating the materialised table"), e))?;
            let existing: Vec<String> = sqlx::query_scalar(
                "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            )
            .bind(&schema.table)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| mysql_error(at("reading its columns"), e))?;
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
                conn.execute(alter.as_str())
                    .await
                    .map_err(|e| mysql_error(at(&format!("adding column {:?}", column.name)), e))?;
                tracing::info!(table = %schema.table, column = %column.name, "materialised table gained a column");
            }
        }
        let json = serde_json::to_string(schema)
            .map_err(|e| Error::internal(format!("serialising a table schema: {e}")))?;
        sqlx::query(
            "INSERT INTO _lakesync_schemas (`table`, schema_json) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE schema_json = VALUES(schema_json)",
        )
        .bind(&schema.table)
        .bind(json)
        .execute(&mut *conn)
        .await
        .map_err(|e| mysql_error(at("recording its schema"), e))?;
        Ok(())
    }
}

/// Reads the epoch mark; with `lock`, locks it for the rest of the transaction.
async fn read_mark(
    conn: &mut MySqlConnection,
    pipeline: &str,
    sink: &str,
    here: &str,
    lock: bool,
) -> Result<Option<u64>> {
    let sql = if lock {
        "SELECT epoch FROM _lakesync_commits WHERE pipeline = ? AND sink = ? FOR UPDATE"
    } else {
        "SELECT epoch FROM _lakesync_commits WHERE pipeline = ? AND sink = ?"
    };
    sqlx::query_scalar(sql)
        .bind(pipeline)
        .bind(sink)
        .fetch_optional(conn)
        .await
        .map_err(|e| mysql_error(format!("{here}: reading the epoch mark"), e))
}

#[async_trait]
impl Sink for MysqlSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&mut self, tables: &[TableRef]) -> Result<()> {
        let here = self.here();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| mysql_error(format!("{here}: preparing tables"), e))?;
        // DDL commits implicitly in MySQL: each table is prepared on its own.
        for table in tables {
            Self::prepare_table(&mut conn, &here, self.options.materialise, table).await?;
        }
        self.epoch.prepared(tables);
        Ok(())
    }

    async fn committed_epoch(&mut self) -> Result<Option<u64>> {
        let here = self.here();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| mysql_error(format!("{here}: reading the epoch mark"), e))?;
        read_mark(&mut conn, &self.pipeline, &self.name, &here, false).await
    }

    async fn write(&mut self, table: &TableRef, batch: RecordBatch) -> Result<()> {
        let here = self.here();
        self.epoch.write(table, &batch, &here)
    }

    async fn commit(&mut self, epoch: u64) -> Result<CommitStats> {
        let here = self.here();
        let synced_at = datetime_micros(now_micros())?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| mysql_error(format!("{here}: starting commit of epoch {epoch}"), e))?;
        let mark = read_mark(&mut tx, &self.pipeline, &self.name, &here, true).await?;
        if mark.is_some_and(|m| m >= epoch) {
            tx.rollback()
                .await
                .map_err(|e| mysql_error(format!("{here}: rolling back epoch {epoch}"), e))?;
            let dropped = self.epoch.clear();
            tracing::info!(sink = %self.name, epoch, mark = ?mark, dropped, "epoch already committed; dropped its writes");
            return Ok(CommitStats::default());
        }

        let mut stats = CommitStats::default();
        let all = self.epoch.deltas();
        for chunk in all.chunks(MysqlDialect.rows_per_statement(DELTA_BINDS)) {
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
             ON DUPLICATE KEY UPDATE epoch = VALUES(epoch), committed_at = VALUES(committed_at)",
        )
        .bind(&self.pipeline)
        .bind(&self.name)
        .bind(epoch)
        .bind(&synced_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| mysql_error(format!("{here}: setting the epoch mark to {epoch}"), e))?;
        tx.commit()
            .await
            .map_err(|e| mysql_error(format!("{here}: committing epoch {epoch}"), e))?;
        tracing::debug!(sink = %self.name, epoch, deltas = stats.rows, upserted, deleted, "committed");
        self.epoch.clear();
        Ok(stats)
    }
}

/// Logs deltas with `INSERT IGNORE`; returns (newly logged, bytes offered).
async fn log_deltas(
    conn: &mut MySqlConnection,
    deltas: &[&RowDelta],
    here: &str,
) -> Result<(u64, u64)> {
    if deltas.is_empty() {
        return Ok((0, 0));
    }
    let mut sql = String::from(
        "INSERT IGNORE INTO lakesync_deltas (delta_id, `table`, row_id, client_id, hlc, op, `columns`) VALUES ",
    );
    let mut binds = Vec::with_capacity(deltas.len() * DELTA_BINDS);
    let mut bytes = 0u64;
    for (i, d) in deltas.iter().enumerate() {
        // `INSERT IGNORE` would truncate an over-long value silently, merging distinct rows.
        for (what, value) in [
            ("table", &d.table),
            ("row id", &d.row_id),
            ("client id", &d.client_id),
        ] {
            if value.chars().count() > MAX_KEY_CHARS {
                return Err(Error::invalid(
                    "delta",
                    format!(
                        "{here}: delta {} has a {what} of {} characters; the MySQL delta log keeps at most {MAX_KEY_CHARS}",
                        d.delta_id,
                        value.chars().count()
                    ),
                ));
            }
        }
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
            Bind::Unsigned(d.hlc.0),
            Bind::Integer(i64::from(d.op.code())),
            Bind::Text(columns),
        ]);
    }
    let done = query_with(&sql, binds)
        .execute(conn)
        .await
        .map_err(|e| mysql_error(format!("{here}: logging {} deltas", deltas.len()), e))?;
    Ok((done.rows_affected(), bytes))
}

/// Reads the logged history of `row_ids` of table `delta_table`.
async fn load_history(
    conn: &mut MySqlConnection,
    delta_table: &str,
    row_ids: &[&str],
    here: &str,
) -> Result<Vec<RowDelta>> {
    let mut out = Vec::with_capacity(row_ids.len());
    for chunk in row_ids.chunks(MysqlDialect.max_bind_params() - 1) {
        let sql = format!(
            "SELECT delta_id, row_id, client_id, hlc, op, `columns` FROM lakesync_deltas \
             WHERE `table` = ? AND row_id IN ({})",
            MysqlDialect.placeholders(1, chunk.len())
        );
        let mut binds = Vec::with_capacity(chunk.len() + 1);
        binds.push(Bind::Text(delta_table.to_string()));
        binds.extend(chunk.iter().map(|id| Bind::Text((*id).to_string())));
        let rows = query_with(&sql, binds)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| {
                mysql_error(
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

/// A delta from a `lakesync_deltas` row. Text columns have the binary collation, which MySQL
/// reports as binary types, hence the unchecked reads (the values are UTF-8 text LakeSync wrote).
fn logged_delta(row: &sqlx::mysql::MySqlRow, table: &str) -> std::result::Result<RowDelta, String> {
    let get_err = |what: &str, e: sqlx::Error| format!("column {what}: {e}");
    let id: Vec<u8> = row
        .try_get("delta_id")
        .map_err(|e| get_err("delta_id", e))?;
    let row_id: String = row
        .try_get_unchecked("row_id")
        .map_err(|e| get_err("row_id", e))?;
    let delta_id = DeltaId(
        <[u8; 32]>::try_from(id.as_slice())
            .map_err(|_| format!("row {row_id:?} has a {}-byte delta_id, not 32", id.len()))?,
    );
    let client_id: String = row
        .try_get_unchecked("client_id")
        .map_err(|e| get_err("client_id", e))?;
    let hlc: u64 = row.try_get("hlc").map_err(|e| get_err("hlc", e))?;
    let op: u8 = row.try_get("op").map_err(|e| get_err("op", e))?;
    let op = DeltaOp::from_code(op)
        .map_err(|_| format!("delta {delta_id} has op {op}, not 1, 2 or 3"))?;
    let columns: String = row
        .try_get_unchecked("columns")
        .map_err(|e| get_err("columns", e))?;
    let columns: Vec<ColumnDelta> = serde_json::from_str(&columns).map_err(|e| {
        format!("delta {delta_id} has columns that are not [{{column, value}}] JSON: {e}")
    })?;
    Ok(RowDelta {
        op,
        table: table.to_string(),
        row_id,
        client_id,
        columns,
        hlc: HlcTimestamp(hlc),
        delta_id,
    })
}

/// Rematerialises `row_ids` of `schema` from their full logged history; returns (upserted,
/// deleted) row counts.
async fn materialise_rows(
    conn: &mut MySqlConnection,
    schema: &TableSchema,
    row_ids: &[&str],
    synced_at: &str,
    here: &str,
) -> Result<(u64, u64)> {
    let history = load_history(conn, schema.delta_table(), row_ids, here).await?;
    let plan = plan_from_history(schema, &history, here)?;
    let dialect = MysqlDialect;
    let soft = schema.is_soft_delete();

    let per_row = upsert_columns(schema).len();
    let full = dialect.rows_per_statement(per_row);
    let mut upserted = 0;
    let mut rows = plan.upserts.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(full).collect();
        let sql = dialect.upsert(schema, chunk.len())?;
        let mut binds = Vec::with_capacity(chunk.len() * per_row);
        let n = chunk.len();
        for row in chunk {
            binds.push(Bind::Text(row.row_id));
            for cell in row.values {
                binds.push(MysqlDialect::bind(cell)?);
            }
            if soft {
                binds.push(match row.deleted_at {
                    Some(micros) => Bind::Text(datetime_micros(micros)?),
                    None => Bind::Null,
                });
            }
            binds.push(Bind::Text(synced_at.to_string()));
        }
        query_with(&sql, binds)
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                mysql_error(
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
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                mysql_error(
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
