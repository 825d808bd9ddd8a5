//! [`PostgresSink`]: a delta log in Postgres, and optionally the tables materialised from it.
//!
//! **Storage** (all in the sink's schema, created if missing):
//! - `lakesync_deltas(delta_id BYTEA PRIMARY KEY, "table" TEXT, row_id TEXT, client_id TEXT,
//!   hlc BIGINT, op SMALLINT, columns JSONB)`, indexed by `("table", row_id)` and by `hlc`:
//!   every delta once (`ON CONFLICT (delta_id) DO NOTHING`, so a retried or replayed delta is
//!   never logged twice). `hlc` is the u64 HLC bit-cast to BIGINT (the HLC itself below 2^63);
//!   `op` is 1 insert, 2 update, 3 delete; `columns` the delta's `[{"column", "value"}]`;
//! - `_lakesync_commits(pipeline, sink, epoch, committed_at)`: the last epoch each pipeline's sink
//!   committed; `_lakesync_schemas("table", schema_json)`: each table's prepared schema;
//! - with `materialise: true`, one table per schema in the shape of
//!   [`crate::kernel::materialise`] (see [`PostgresDialect`]).
//!
//! **Commit** is one transaction, serialised per (pipeline, sink) by a transaction-level advisory
//! lock: when the stored epoch mark is already at or past the epoch it rolls back and drops the
//! buffered writes (a replay); otherwise it reads the touched rows' earlier history, logs the
//! deltas (binary `COPY` into a staging table, then one `INSERT … ON CONFLICT DO NOTHING`:
//! [`super::copy_in`]), rematerialises every touched row from its whole history — the earlier
//! one and this epoch's deltas, each delta once by deltaId (the kernel's LWW merge, so a
//! materialised row is the fold of every delta of that row however they were batched, ordered or
//! repeated) — and sets the mark.
//!
//! **Schema evolution**: add-only; new columns are added with `ALTER TABLE … ADD COLUMN` in the
//! same transaction as the new schema record. Reads of the log: [`PostgresSink::deltas_since`]
//! and [`PostgresSink::latest_state`].

use std::collections::HashSet;
use std::fmt;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Executor, Postgres, Row};

use super::copy_in::copy_deltas;
use super::dialect::PostgresDialect;
use super::{connect, ident, pg_error, qualified};
use crate::adapters::sql_common::{
    EpochBuffer, check_settings_unchanged, now_micros, plan_from_history,
};
use crate::kernel::delta::{ColumnDelta, DeltaId, DeltaOp, RowDelta};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::materialise::{Cell, SqlDialect, check_materialisable, upsert_columns};
use crate::kernel::schema::{ColumnType, TableSchema};
use crate::runtime::api::{CommitStats, Sink, TableRef};
use crate::{Error, Result};

/// Rows per upsert statement.
const UPSERT_CHUNK: usize = 10_000;

/// How a [`PostgresSink`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostgresSinkOptions {
    /// Also materialise each table, not only log deltas.
    pub materialise: bool,
}

/// A sink writing to Postgres: see the [module docs](self).
pub struct PostgresSink {
    name: String,
    pipeline: String,
    dialect: PostgresDialect,
    options: PostgresSinkOptions,
    conn: PgConnection,
    /// Prepared schemas and the deltas written since the last commit.
    epoch: EpochBuffer,
}

impl fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSink")
            .field("name", &self.name)
            .field("pipeline", &self.pipeline)
            .field("schema", &self.dialect.schema)
            .field("options", &self.options)
            .finish()
    }
}

impl PostgresSink {
    /// Connects to `url` and creates the log and bookkeeping tables in `schema` if missing.
    pub async fn open(
        url: &str,
        schema: &str,
        pipeline: &str,
        name: &str,
        options: PostgresSinkOptions,
    ) -> Result<Self> {
        let here = format!("postgres sink {name:?}");
        let s = ident(schema)?;
        let mut conn = connect(url, &here).await?;
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.lakesync_deltas (
                 delta_id BYTEA NOT NULL PRIMARY KEY,
                 \"table\" TEXT NOT NULL,
                 row_id TEXT NOT NULL,
                 client_id TEXT NOT NULL,
                 hlc BIGINT NOT NULL,
                 op SMALLINT NOT NULL,
                 columns JSONB NOT NULL);
             CREATE INDEX IF NOT EXISTS lakesync_deltas_table_row ON {s}.lakesync_deltas (\"table\", row_id);
             CREATE INDEX IF NOT EXISTS lakesync_deltas_hlc ON {s}.lakesync_deltas (hlc);
             CREATE TABLE IF NOT EXISTS {s}._lakesync_commits (
                 pipeline TEXT NOT NULL, sink TEXT NOT NULL, epoch BIGINT NOT NULL,
                 committed_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (pipeline, sink));
             CREATE TABLE IF NOT EXISTS {s}._lakesync_schemas (
                 \"table\" TEXT NOT NULL PRIMARY KEY, schema_json TEXT NOT NULL);"
        );
        // Concurrent first opens may race on CREATE … IF NOT EXISTS; one lock serialises them.
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| pg_error(format!("{here}: starting setup"), e))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('lakesync-setup', 0))")
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error(format!("{here}: locking for setup"), e))?;
        tx.execute(ddl.as_str())
            .await
            .map_err(|e| pg_error(format!("{here}: creating the delta log in {schema:?}"), e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error(format!("{here}: committing setup"), e))?;
        Ok(Self {
            name: name.to_string(),
            pipeline: pipeline.to_string(),
            dialect: PostgresDialect {
                schema: schema.to_string(),
            },
            options,
            conn,
            epoch: EpochBuffer::default(),
        })
    }

    fn here(&self) -> String {
        format!("postgres sink {:?}", self.name)
    }

    /// The connection, for readers of the log it created (the hot log of a tier).
    pub(crate) fn into_connection(self) -> PgConnection {
        self.conn
    }

    fn log_table(&self) -> Result<String> {
        qualified(&self.dialect.schema, "lakesync_deltas")
    }

    /// Every logged delta with an HLC above `hlc`, of `tables` (all when `None`), oldest first.
    pub async fn deltas_since(
        &mut self,
        hlc: HlcTimestamp,
        tables: Option<&[&str]>,
    ) -> Result<Vec<RowDelta>> {
        let here = self.here();
        let mut sql = format!(
            "SELECT delta_id, \"table\", row_id, client_id, hlc, op, columns::text AS columns FROM {} WHERE hlc > $1",
            self.log_table()?
        );
        if tables.is_some() {
            sql.push_str(" AND \"table\" = ANY($2::text[])");
        }
        sql.push_str(" ORDER BY hlc, delta_id");
        let mut query = sqlx::query(&sql).bind(hlc.0 as i64);
        if let Some(tables) = tables {
            query = query.bind(tables.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        }
        let rows = query
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| pg_error(format!("{here}: reading deltas since {hlc}"), e))?;
        rows.iter().map(|r| logged_delta(r, None, &here)).collect()
    }

    /// The current state of one row (the LWW fold of its logged history): its column values,
    /// or `None` when it has no history or was deleted last.
    pub async fn latest_state(
        &mut self,
        table: &TableSchema,
        row_id: &str,
    ) -> Result<Option<Map<String, Value>>> {
        let here = self.here();
        let log = self.log_table()?;
        let history =
            load_history(&mut self.conn, &log, table.delta_table(), &[row_id], &here).await?;
        if history.is_empty() {
            return Ok(None);
        }
        let mut hard = table.clone();
        hard.soft_delete = Some(false);
        let plan = plan_from_history(&hard, &history, &here)?;
        Ok(plan.upserts.into_iter().next().map(|row| {
            table
                .columns
                .iter()
                .zip(row.values)
                .map(|(c, cell)| (c.name.clone(), cell_json(cell)))
                .collect()
        }))
    }

    async fn prepare_table(
        conn: &mut PgConnection,
        dialect: &PostgresDialect,
        here: &str,
        materialise: bool,
        table: &TableSchema,
    ) -> Result<()> {
        let schemas = qualified(&dialect.schema, "_lakesync_schemas")?;
        let recorded: Option<(String,)> = sqlx::query_as(&format!(
            "SELECT schema_json FROM {schemas} WHERE \"table\" = $1"
        ))
        .bind(&table.table)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| {
            pg_error(
                format!("{here}: reading the schema of {:?}", table.table),
                e,
            )
        })?;
        let old = recorded
            .map(|(json,)| TableSchema::from_json(&json))
            .transpose()
            .map_err(|e| {
                Error::schema(format!("{here}: recorded schema of {:?}: {e}", table.table))
            })?;
        let added = match &old {
            Some(old) => {
                let added = old
                    .evolve_to(table)
                    .map_err(|e| Error::schema(format!("{here}: table {:?}: {e}", table.table)))?;
                if materialise {
                    check_settings_unchanged(old, table).map_err(|e| {
                        Error::schema(format!("{here}: table {:?}: {e}", table.table))
                    })?;
                }
                added.to_vec()
            }
            None => Vec::new(),
        };
        if materialise {
            check_materialisable(table)?;
            sqlx::query(&dialect.create_table(table)?)
                .execute(&mut *conn)
                .await
                .map_err(|e| pg_error(format!("{here}: creating table {:?}", table.table), e))?;
            for column in &added {
                let sql = dialect.add_column(table, column)?.replacen(
                    "ADD COLUMN",
                    "ADD COLUMN IF NOT EXISTS",
                    1,
                );
                sqlx::query(&sql).execute(&mut *conn).await.map_err(|e| {
                    pg_error(
                        format!(
                            "{here}: adding column {:?} to {:?}",
                            column.name, table.table
                        ),
                        e,
                    )
                })?;
            }
        }
        let json = serde_json::to_string(table)
            .map_err(|e| Error::internal(format!("serialising a schema: {e}")))?;
        sqlx::query(&format!(
            "INSERT INTO {schemas} (\"table\", schema_json) VALUES ($1, $2) \
             ON CONFLICT (\"table\") DO UPDATE SET schema_json = excluded.schema_json"
        ))
        .bind(&table.table)
        .bind(json)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            pg_error(
                format!("{here}: recording the schema of {:?}", table.table),
                e,
            )
        })?;
        Ok(())
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&mut self, tables: &[TableRef]) -> Result<()> {
        let here = self.here();
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(|e| pg_error(format!("{here}: starting to prepare tables"), e))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('lakesync-setup', 0))")
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error(format!("{here}: locking for setup"), e))?;
        for table in tables {
            Self::prepare_table(
                &mut tx,
                &self.dialect,
                &here,
                self.options.materialise,
                table,
            )
            .await?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error(format!("{here}: committing prepared tables"), e))?;
        self.epoch.prepared(tables);
        Ok(())
    }

    async fn committed_epoch(&mut self) -> Result<Option<u64>> {
        let here = self.here();
        read_mark(
            &mut self.conn,
            &self.dialect.schema,
            &self.pipeline,
            &self.name,
            &here,
        )
        .await
    }

    async fn write(&mut self, table: &TableRef, batch: RecordBatch) -> Result<()> {
        let here = self.here();
        self.epoch.write(table, &batch, &here)
    }

    async fn commit(&mut self, epoch: u64) -> Result<CommitStats> {
        let here = self.here();
        let epoch_i64 = i64::try_from(epoch)
            .map_err(|_| Error::invalid("epoch", format!("{here}: epoch {epoch} is too large")))?;
        let log = self.log_table()?;
        let commits = qualified(&self.dialect.schema, "_lakesync_commits")?;
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(|e| pg_error(format!("{here}: starting commit of epoch {epoch}"), e))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "{}/{}/{}",
                self.dialect.schema, self.pipeline, self.name
            ))
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error(format!("{here}: locking the epoch mark"), e))?;
        let mark = read_mark(
            &mut tx,
            &self.dialect.schema,
            &self.pipeline,
            &self.name,
            &here,
        )
        .await?;
        if mark.is_some_and(|m| m >= epoch) {
            tx.rollback()
                .await
                .map_err(|e| pg_error(format!("{here}: rolling back epoch {epoch}"), e))?;
            let dropped = self.epoch.clear();
            tracing::info!(sink = %self.name, epoch, mark = ?mark, dropped, "epoch already committed; dropped its writes");
            return Ok(CommitStats::default());
        }

        // The touched rows' history from earlier epochs, read before this epoch is logged so
        // that its deltas are not read back.
        let mut earlier = Vec::new();
        if self.options.materialise {
            for (table, ids) in self.epoch.touched(&here)? {
                let history = load_history(&mut tx, &log, table.delta_table(), &ids, &here).await?;
                earlier.push((table, history));
            }
        }
        let mut stats = CommitStats::default();
        let (inserted, bytes) = copy_deltas(&mut tx, &log, &self.epoch.deltas(), &here).await?;
        stats.rows += inserted;
        stats.bytes += bytes;
        let synced_at = now_micros();
        for (table, mut history) in earlier {
            let logged: HashSet<DeltaId> = history.iter().map(|d| d.delta_id).collect();
            history.extend(
                self.epoch
                    .deltas_of(&table.table)
                    .filter(|d| !logged.contains(&d.delta_id))
                    .cloned(),
            );
            materialise_rows(&mut tx, &self.dialect, table, &history, synced_at, &here).await?;
        }
        sqlx::query(&format!(
            "INSERT INTO {commits} (pipeline, sink, epoch, committed_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (pipeline, sink) DO UPDATE SET epoch = excluded.epoch, committed_at = excluded.committed_at"
        ))
        .bind(&self.pipeline)
        .bind(&self.name)
        .bind(epoch_i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| pg_error(format!("{here}: setting the epoch mark to {epoch}"), e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error(format!("{here}: committing epoch {epoch}"), e))?;
        self.epoch.clear();
        Ok(stats)
    }
}

async fn read_mark(
    conn: &mut PgConnection,
    schema: &str,
    pipeline: &str,
    sink: &str,
    here: &str,
) -> Result<Option<u64>> {
    let commits = qualified(schema, "_lakesync_commits")?;
    let mark: Option<(i64,)> = sqlx::query_as(&format!(
        "SELECT epoch FROM {commits} WHERE pipeline = $1 AND sink = $2"
    ))
    .bind(pipeline)
    .bind(sink)
    .fetch_optional(conn)
    .await
    .map_err(|e| pg_error(format!("{here}: reading the epoch mark"), e))?;
    Ok(mark.map(|(e,)| e.max(0) as u64))
}

/// The logged history of `row_ids` of `delta_table`.
async fn load_history(
    conn: &mut PgConnection,
    log: &str,
    delta_table: &str,
    row_ids: &[&str],
    here: &str,
) -> Result<Vec<RowDelta>> {
    let rows = sqlx::query(&format!(
        "SELECT delta_id, row_id, client_id, hlc, op, columns::text AS columns FROM {log} \
         WHERE \"table\" = $1 AND row_id = ANY($2::text[])"
    ))
    .bind(delta_table)
    .bind(row_ids.iter().map(|r| r.to_string()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| pg_error(format!("{here}: reading the history of {delta_table:?}"), e))?;
    rows.iter()
        .map(|r| logged_delta(r, Some(delta_table), here))
        .collect()
}

/// A delta from a `lakesync_deltas` row (the table from the row when `table` is `None`).
pub(crate) fn logged_delta(row: &PgRow, table: Option<&str>, here: &str) -> Result<RowDelta> {
    let bad = |msg: String| Error::invalid("delta log", format!("{here}: {msg}"));
    let get = |e: sqlx::Error| bad(e.to_string());
    let id: Vec<u8> = row.try_get("delta_id").map_err(get)?;
    let row_id: String = row.try_get("row_id").map_err(get)?;
    let delta_id = DeltaId(
        <[u8; 32]>::try_from(id.as_slice())
            .map_err(|_| bad(format!("row {row_id:?} has a {}-byte delta_id", id.len())))?,
    );
    let table = match table {
        Some(t) => t.to_string(),
        None => row.try_get("table").map_err(get)?,
    };
    let op: i16 = row.try_get("op").map_err(get)?;
    let op = u8::try_from(op)
        .ok()
        .and_then(|c| DeltaOp::from_code(c).ok())
        .ok_or_else(|| bad(format!("delta {delta_id} has op {op}")))?;
    let columns: String = row.try_get("columns").map_err(get)?;
    let columns: Vec<ColumnDelta> = serde_json::from_str(&columns)
        .map_err(|e| bad(format!("delta {delta_id} has unreadable columns: {e}")))?;
    let hlc: i64 = row.try_get("hlc").map_err(get)?;
    Ok(RowDelta {
        op,
        table,
        row_id,
        client_id: row.try_get("client_id").map_err(get)?,
        columns,
        hlc: HlcTimestamp(hlc as u64),
        delta_id,
    })
}

/// One column's values, typed for binding as a Postgres array.
enum ArrayBind {
    Text(Vec<Option<String>>),
    Float(Vec<Option<f64>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
}

impl ArrayBind {
    fn for_type(column_type: ColumnType, n: usize) -> Self {
        match column_type {
            ColumnType::String | ColumnType::Json | ColumnType::Null => {
                Self::Text(Vec::with_capacity(n))
            }
            ColumnType::Number => Self::Float(Vec::with_capacity(n)),
            ColumnType::Integer | ColumnType::Timestamp => Self::Int(Vec::with_capacity(n)),
            ColumnType::Boolean => Self::Bool(Vec::with_capacity(n)),
        }
    }

    fn push(&mut self, cell: Cell) -> Result<()> {
        match (self, cell) {
            (Self::Text(v), Cell::Null) => v.push(None),
            (Self::Float(v), Cell::Null) => v.push(None),
            (Self::Int(v), Cell::Null) => v.push(None),
            (Self::Bool(v), Cell::Null) => v.push(None),
            (Self::Text(v), Cell::String(s) | Cell::Json(s)) => v.push(Some(s)),
            (Self::Float(v), Cell::Number(f)) => v.push(Some(f)),
            (Self::Int(v), Cell::Integer(i) | Cell::Timestamp(i)) => v.push(Some(i)),
            (Self::Bool(v), Cell::Boolean(b)) => v.push(Some(b)),
            (_, cell) => {
                return Err(Error::internal(format!(
                    "materialise: cell {cell:?} does not fit its column"
                )));
            }
        }
        Ok(())
    }
}

fn cell_json(cell: Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::String(s) => Value::String(s),
        Cell::Number(f) => crate::kernel::delta_batch::number_to_json(f),
        Cell::Integer(i) => Value::from(i),
        Cell::Boolean(b) => Value::Bool(b),
        Cell::Timestamp(t) => crate::kernel::delta_batch::format_timestamp(t)
            .map(Value::String)
            .unwrap_or(Value::Null),
        Cell::Json(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// Rematerialises the rows of `schema` that `history` (their whole history: every logged delta
/// of each, this epoch's included) touches.
async fn materialise_rows(
    conn: &mut PgConnection,
    dialect: &PostgresDialect,
    schema: &TableSchema,
    history: &[RowDelta],
    synced_at: i64,
    here: &str,
) -> Result<()> {
    let plan = plan_from_history(schema, history, here)?;
    let soft = schema.is_soft_delete();
    let columns = upsert_columns(schema);
    let sql = dialect.upsert(schema, 0)?;
    for chunk in plan.upserts.chunks(UPSERT_CHUNK) {
        let n = chunk.len();
        let mut row_id = Vec::with_capacity(n);
        let mut data: Vec<ArrayBind> = schema
            .columns
            .iter()
            .map(|c| ArrayBind::for_type(c.column_type, n))
            .collect();
        let mut deleted_at = Vec::with_capacity(n);
        for row in chunk {
            row_id.push(row.row_id.clone());
            for (bind, cell) in data.iter_mut().zip(row.values.iter().cloned()) {
                bind.push(cell)?;
            }
            deleted_at.push(row.deleted_at);
        }
        let mut query = sqlx::query::<Postgres>(&sql).bind(row_id);
        for bind in data {
            query = match bind {
                ArrayBind::Text(v) => query.bind(v),
                ArrayBind::Float(v) => query.bind(v),
                ArrayBind::Int(v) => query.bind(v),
                ArrayBind::Bool(v) => query.bind(v),
            };
        }
        if soft {
            query = query.bind(deleted_at);
        }
        query = query.bind(vec![synced_at; n]);
        debug_assert_eq!(columns.len(), schema.columns.len() + 2 + usize::from(soft));
        query.execute(&mut *conn).await.map_err(|e| {
            pg_error(
                format!("{here}: upserting {n} rows into {:?}", schema.table),
                e,
            )
        })?;
    }
    if !plan.deletes.is_empty() {
        sqlx::query(&dialect.hard_delete(schema, plan.deletes.len())?)
            .bind(&plan.deletes)
            .execute(&mut *conn)
            .await
            .map_err(|e| pg_error(format!("{here}: deleting rows from {:?}", schema.table), e))?;
    }
    Ok(())
}
