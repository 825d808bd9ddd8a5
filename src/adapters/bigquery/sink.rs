//! [`BigQuerySink`]: a delta log in BigQuery, and optionally the tables materialised from it.
//!
//! **Storage** (in the sink's dataset, created if missing):
//! - `lakesync_deltas(delta_id STRING, table STRING, row_id STRING, client_id STRING, hlc INT64,
//!   op INT64, columns STRING)`, clustered by `(table, row_id)`: every delta once. `delta_id` is
//!   the 32-byte id in lowercase hex; `hlc` the u64 HLC bit-cast to INT64 (the HLC itself below
//!   2^63); `op` 1 insert, 2 update, 3 delete; `columns` the delta's `[{"column", "value"}]` as
//!   JSON text (text, not JSON, so values come back byte for byte). The same logical columns as
//!   the Postgres sink's log;
//! - `_lakesync_commits(pipeline, sink, epoch, committed_at)`: the last epoch each pipeline's sink
//!   committed; `_lakesync_schemas(table, schema_json)`: each table's prepared schema;
//! - with `materialise: true`, one table per schema in the shape of
//!   [`crate::kernel::materialise`] (see [`BigQueryDialect`]).
//!
//! **Idempotent by deltaId.** Deltas are logged with `MERGE lakesync_deltas USING
//! UNNEST(@rows) ON delta_id WHEN NOT MATCHED THEN INSERT`, a chunk of up to
//! [`MAX_PARAM_ROWS`](super::params::MAX_PARAM_ROWS) deltas (and about 4 MB) per statement — never
//! one request per delta. Re-logging a delta is a no-op, whether it comes from a retried request,
//! a replayed epoch or another pipeline. (`insertAll` with `insertId` would only de-duplicate for
//! about a minute, best effort, so it is not used.)
//!
//! **Commit.** BigQuery has no transaction spanning these statements that LakeSync can rely on
//! (multi-statement transactions are per script and absent from emulators), so a commit is
//! ordered so that every prefix of it is harmless: (1) if the stored mark is at or past the
//! epoch, drop the buffered writes (a replay) and stop; (2) log the deltas (idempotent);
//! (3) rematerialise every touched row from its *whole* logged history (the kernel's LWW fold:
//! the same result however often it runs); (4) set the mark. A crash before (4) leaves the mark
//! behind, so the runtime replays the epoch: (2) and (3) run again with the same outcome, and (4)
//! completes. A reader may see an epoch's deltas before its mark; it never sees a delta twice.
//! One writer per (pipeline, sink) is assumed, as the runtime guarantees.
//!
//! **Schema evolution**: add-only; new columns are added with `ALTER TABLE … ADD COLUMN IF NOT
//! EXISTS` before the new schema is recorded.

use std::fmt;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use serde_json::Value;

use super::client::{BigQueryClient, BigQueryConfig, QueryResult, cell_text};
use super::dialect::BigQueryDialect;
use super::params::{RowChunker, array, scalar, struct_array};
use super::{bq_error, qualified};
use crate::adapters::sql_common::{
    EpochBuffer, check_settings_unchanged, now_micros, plan_from_history,
};
use crate::kernel::delta::{ColumnDelta, DeltaId, DeltaOp, RowDelta};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::materialise::{Cell, SqlDialect, check_materialisable};
use crate::kernel::schema::TableSchema;
use crate::runtime::api::{CommitStats, Sink, TableRef};
use crate::{Error, Result};

/// The delta log's name.
pub const LOG_TABLE: &str = "lakesync_deltas";
/// The epoch marks' table.
pub const COMMITS_TABLE: &str = "_lakesync_commits";
/// The prepared schemas' table.
pub const SCHEMAS_TABLE: &str = "_lakesync_schemas";
/// Row ids whose history one query loads.
const HISTORY_CHUNK: usize = 5_000;

/// How a [`BigQuerySink`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BigQuerySinkOptions {
    /// Also materialise each table, not only log deltas.
    pub materialise: bool,
}

/// A sink writing to BigQuery: see the [module docs](self).
pub struct BigQuerySink {
    name: String,
    pipeline: String,
    client: BigQueryClient,
    dialect: BigQueryDialect,
    options: BigQuerySinkOptions,
    epoch: EpochBuffer,
}

impl fmt::Debug for BigQuerySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BigQuerySink")
            .field("name", &self.name)
            .field("pipeline", &self.pipeline)
            .field("dataset", &self.dialect.dataset)
            .field("options", &self.options)
            .finish()
    }
}

/// The log's struct fields, in the order [`log_row`] fills them.
fn log_fields() -> Vec<(String, &'static str)> {
    [
        ("delta_id", "STRING"),
        ("table", "STRING"),
        ("row_id", "STRING"),
        ("client_id", "STRING"),
        ("hlc", "INT64"),
        ("op", "INT64"),
        ("columns", "STRING"),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect()
}

fn log_row(d: &RowDelta) -> Result<Vec<Option<String>>> {
    let columns = serde_json::to_string(&d.columns)
        .map_err(|e| Error::internal(format!("serialising delta columns: {e}")))?;
    Ok(vec![
        Some(hex::encode(d.delta_id.as_bytes())),
        Some(d.table.clone()),
        Some(d.row_id.clone()),
        Some(d.client_id.clone()),
        // Bit-cast: the HLC itself for every HLC below 2^63.
        Some((d.hlc.0 as i64).to_string()),
        Some(d.op.code().to_string()),
        Some(columns),
    ])
}

impl BigQuerySink {
    /// Connects with `config` and creates the dataset, the log and the bookkeeping tables if
    /// missing.
    pub async fn open(
        config: BigQueryConfig,
        pipeline: &str,
        name: &str,
        options: BigQuerySinkOptions,
    ) -> Result<Self> {
        let here = format!("bigquery sink {name:?}");
        let client = BigQueryClient::connect(config, &here).await?;
        client.ensure_dataset(&here).await?;
        let (p, d) = (client.project().to_string(), client.dataset().to_string());
        let ddl = [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (delta_id STRING NOT NULL, `table` STRING NOT NULL, \
                 row_id STRING NOT NULL, client_id STRING NOT NULL, hlc INT64 NOT NULL, \
                 op INT64 NOT NULL, columns STRING NOT NULL) CLUSTER BY `table`, row_id",
                qualified(&p, &d, LOG_TABLE)?
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (pipeline STRING NOT NULL, sink STRING NOT NULL, \
                 epoch INT64 NOT NULL, committed_at TIMESTAMP NOT NULL)",
                qualified(&p, &d, COMMITS_TABLE)?
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (`table` STRING NOT NULL, schema_json STRING NOT NULL)",
                qualified(&p, &d, SCHEMAS_TABLE)?
            ),
        ];
        for sql in ddl {
            client
                .query(
                    &sql,
                    Vec::new(),
                    &format!("{here}: creating the delta log in dataset {d:?}"),
                )
                .await?;
        }
        Ok(Self {
            name: name.to_string(),
            pipeline: pipeline.to_string(),
            dialect: BigQueryDialect {
                project: p,
                dataset: d,
            },
            client,
            options,
            epoch: EpochBuffer::default(),
        })
    }

    fn here(&self) -> String {
        format!("bigquery sink {:?}", self.name)
    }

    fn table(&self, name: &str) -> Result<String> {
        qualified(&self.dialect.project, &self.dialect.dataset, name)
    }

    /// The client, for readers of what this sink wrote.
    pub fn client(&self) -> &BigQueryClient {
        &self.client
    }

    async fn read_mark(&self) -> Result<Option<u64>> {
        let here = self.here();
        let result = self
            .client
            .query(
                &format!(
                    "SELECT MAX(epoch) FROM {} WHERE pipeline = @pipeline AND sink = @sink",
                    self.table(COMMITS_TABLE)?
                ),
                vec![
                    scalar("pipeline", "STRING", Some(self.pipeline.clone())),
                    scalar("sink", "STRING", Some(self.name.clone())),
                ],
                &format!("{here}: reading the epoch mark"),
            )
            .await?;
        let mark = result
            .rows
            .first()
            .and_then(|r| r.first())
            .and_then(cell_text);
        mark.map(|m| {
            m.parse::<i64>()
                .map(|e| e.max(0) as u64)
                .map_err(|_| bq_error(&here, format!("epoch mark {m:?} is not a number"), false))
        })
        .transpose()
    }

    async fn prepare_table(&self, table: &TableSchema) -> Result<()> {
        let here = self.here();
        let schemas = self.table(SCHEMAS_TABLE)?;
        let recorded = self
            .client
            .query(
                &format!("SELECT schema_json FROM {schemas} WHERE `table` = @table LIMIT 1"),
                vec![scalar("table", "STRING", Some(table.table.clone()))],
                &format!("{here}: reading the schema of {:?}", table.table),
            )
            .await?;
        let old = recorded
            .rows
            .first()
            .and_then(|r| r.first())
            .and_then(cell_text)
            .map(|json| TableSchema::from_json(&json))
            .transpose()
            .map_err(|e| {
                Error::schema(format!("{here}: recorded schema of {:?}: {e}", table.table))
            })?;
        let added = match &old {
            Some(old) => {
                let added = old
                    .evolve_to(table)
                    .map_err(|e| Error::schema(format!("{here}: table {:?}: {e}", table.table)))?;
                if self.options.materialise {
                    check_settings_unchanged(old, table).map_err(|e| {
                        Error::schema(format!("{here}: table {:?}: {e}", table.table))
                    })?;
                }
                added.to_vec()
            }
            None => Vec::new(),
        };
        if self.options.materialise {
            check_materialisable(table)?;
            self.client
                .query(
                    &self.dialect.create_table(table)?,
                    Vec::new(),
                    &format!("{here}: creating table {:?}", table.table),
                )
                .await?;
            for column in &added {
                let sql = self.dialect.add_column(table, column)?.replacen(
                    "ADD COLUMN",
                    "ADD COLUMN IF NOT EXISTS",
                    1,
                );
                self.client
                    .query(
                        &sql,
                        Vec::new(),
                        &format!(
                            "{here}: adding column {:?} to {:?}",
                            column.name, table.table
                        ),
                    )
                    .await?;
            }
        }
        let json = serde_json::to_string(table)
            .map_err(|e| Error::internal(format!("serialising a schema: {e}")))?;
        self.client
            .query(
                &format!(
                    "MERGE {schemas} AS t USING (SELECT @table AS `table`, @json AS schema_json) AS s \
                     ON t.`table` = s.`table` WHEN MATCHED THEN UPDATE SET schema_json = s.schema_json \
                     WHEN NOT MATCHED THEN INSERT (`table`, schema_json) VALUES (s.`table`, s.schema_json)"
                ),
                vec![
                    scalar("table", "STRING", Some(table.table.clone())),
                    scalar("json", "STRING", Some(json)),
                ],
                &format!("{here}: recording the schema of {:?}", table.table),
            )
            .await?;
        Ok(())
    }

    /// Logs `deltas` (idempotently); returns (newly logged, bytes offered).
    async fn log_deltas(&self, deltas: &[&RowDelta]) -> Result<(u64, u64)> {
        let here = self.here();
        let sql = format!(
            "MERGE {} AS t USING (SELECT r.delta_id AS delta_id, r.`table` AS `table`, \
             r.row_id AS row_id, r.client_id AS client_id, r.hlc AS hlc, r.op AS op, \
             r.columns AS columns FROM UNNEST(@rows) AS r) AS s ON t.delta_id = s.delta_id \
             WHEN NOT MATCHED THEN INSERT (delta_id, `table`, row_id, client_id, hlc, op, columns) \
             VALUES (s.delta_id, s.`table`, s.row_id, s.client_id, s.hlc, s.op, s.columns)",
            self.table(LOG_TABLE)?
        );
        let fields = log_fields();
        let mut chunker = RowChunker::default();
        let (mut logged, mut bytes) = (0u64, 0u64);
        let mut chunks = Vec::new();
        for d in deltas {
            let row = log_row(d)?;
            bytes += row
                .iter()
                .map(|v| v.as_ref().map_or(0, String::len) as u64)
                .sum::<u64>();
            if let Some(chunk) = chunker.push(row) {
                chunks.push(chunk);
            }
        }
        let rest = chunker.take();
        if !rest.is_empty() {
            chunks.push(rest);
        }
        for chunk in chunks {
            let n = chunk.len();
            let result = self
                .client
                .query(
                    &sql,
                    vec![struct_array("rows", &fields, chunk)],
                    &format!("{here}: logging {n} deltas"),
                )
                .await?;
            logged += result.dml_affected.unwrap_or(n as u64);
        }
        Ok((logged, bytes))
    }

    /// The logged history of `row_ids` of `delta_table`.
    async fn load_history(&self, delta_table: &str, row_ids: &[&str]) -> Result<Vec<RowDelta>> {
        let here = self.here();
        let result = self
            .client
            .query(
                &format!(
                    "SELECT delta_id, row_id, client_id, hlc, op, columns FROM {} \
                     WHERE `table` = @table AND row_id IN UNNEST(@ids)",
                    self.table(LOG_TABLE)?
                ),
                vec![
                    scalar("table", "STRING", Some(delta_table.to_string())),
                    array(
                        "ids",
                        "STRING",
                        row_ids.iter().map(|r| r.to_string()).collect(),
                    ),
                ],
                &format!("{here}: reading the history of {delta_table:?}"),
            )
            .await?;
        result
            .rows
            .iter()
            .map(|row| logged_delta(row, delta_table, &here))
            .collect()
    }

    /// Every logged delta of `delta_table`, oldest HLC first (for tests and tools; reads the
    /// whole table's log).
    pub async fn logged(&self, delta_table: &str) -> Result<Vec<RowDelta>> {
        let here = self.here();
        let result: QueryResult = self
            .client
            .query(
                &format!(
                    "SELECT delta_id, row_id, client_id, hlc, op, columns FROM {} \
                     WHERE `table` = @table ORDER BY hlc, delta_id",
                    self.table(LOG_TABLE)?
                ),
                vec![scalar("table", "STRING", Some(delta_table.to_string()))],
                &format!("{here}: reading the log of {delta_table:?}"),
            )
            .await?;
        result
            .rows
            .iter()
            .map(|row| logged_delta(row, delta_table, &here))
            .collect()
    }

    /// Rematerialises `row_ids` of `schema` from their whole logged history.
    async fn materialise_rows(
        &self,
        schema: &TableSchema,
        row_ids: &[&str],
        synced_at: i64,
    ) -> Result<()> {
        let here = self.here();
        let history = self.load_history(schema.delta_table(), row_ids).await?;
        let plan = plan_from_history(schema, &history, &here)?;
        let fields = BigQueryDialect::row_fields(schema);
        let soft = schema.is_soft_delete();
        let sql = self.dialect.upsert(schema, 0)?;
        let mut chunker = RowChunker::default();
        let mut chunks = Vec::new();
        for row in plan.upserts {
            let mut values = Vec::with_capacity(fields.len());
            values.push(Some(row.row_id));
            values.extend(row.values.into_iter().map(cell_param));
            if soft {
                values.push(row.deleted_at.map(|t| t.to_string()));
            }
            values.push(Some(synced_at.to_string()));
            if let Some(chunk) = chunker.push(values) {
                chunks.push(chunk);
            }
        }
        let rest = chunker.take();
        if !rest.is_empty() {
            chunks.push(rest);
        }
        for chunk in chunks {
            let n = chunk.len();
            self.client
                .query(
                    &sql,
                    vec![struct_array("rows", &fields, chunk)],
                    &format!("{here}: upserting {n} rows into {:?}", schema.table),
                )
                .await?;
        }
        if !plan.deletes.is_empty() {
            self.client
                .query(
                    &self.dialect.hard_delete(schema, plan.deletes.len())?,
                    vec![array("ids", "STRING", plan.deletes)],
                    &format!("{here}: deleting rows from {:?}", schema.table),
                )
                .await?;
        }
        Ok(())
    }
}

/// A materialised cell as a parameter value (text; `None` is NULL).
fn cell_param(cell: Cell) -> Option<String> {
    match cell {
        Cell::Null => None,
        Cell::String(s) | Cell::Json(s) => Some(s),
        // Rust's shortest round-trip form; BigQuery parses it back to the same double.
        Cell::Number(f) => Some(f.to_string()),
        Cell::Integer(i) | Cell::Timestamp(i) => Some(i.to_string()),
        Cell::Boolean(b) => Some(b.to_string()),
    }
}

/// A delta from a `lakesync_deltas` result row `(delta_id, row_id, client_id, hlc, op, columns)`.
fn logged_delta(row: &[Value], table: &str, here: &str) -> Result<RowDelta> {
    let bad = |msg: String| Error::invalid("delta log", format!("{here}: {msg}"));
    let text = |i: usize, what: &str| {
        row.get(i)
            .and_then(cell_text)
            .ok_or_else(|| bad(format!("a logged delta has no {what}")))
    };
    let id = text(0, "delta_id")?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&id, &mut bytes)
        .map_err(|_| bad(format!("delta_id {id:?} is not 64 hex digits")))?;
    let delta_id = DeltaId(bytes);
    let hlc: i64 = text(3, "hlc")?
        .parse()
        .map_err(|_| bad(format!("delta {delta_id} has a non-numeric hlc")))?;
    let op: u8 = text(4, "op")?
        .parse()
        .map_err(|_| bad(format!("delta {delta_id} has a non-numeric op")))?;
    let op = DeltaOp::from_code(op).map_err(|_| bad(format!("delta {delta_id} has op {op}")))?;
    let columns: Vec<ColumnDelta> = serde_json::from_str(&text(5, "columns")?)
        .map_err(|e| bad(format!("delta {delta_id} has unreadable columns: {e}")))?;
    Ok(RowDelta {
        op,
        table: table.to_string(),
        row_id: text(1, "row_id")?,
        client_id: text(2, "client_id")?,
        columns,
        hlc: HlcTimestamp(hlc as u64),
        delta_id,
    })
}

#[async_trait]
impl Sink for BigQuerySink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&mut self, tables: &[TableRef]) -> Result<()> {
        for table in tables {
            self.prepare_table(table).await?;
        }
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
        let epoch_i64 = i64::try_from(epoch)
            .map_err(|_| Error::invalid("epoch", format!("{here}: epoch {epoch} is too large")))?;
        let mark = self.read_mark().await?;
        if mark.is_some_and(|m| m >= epoch) {
            let dropped = self.epoch.clear();
            tracing::info!(sink = %self.name, epoch, mark = ?mark, dropped, "epoch already committed; dropped its writes");
            return Ok(CommitStats::default());
        }
        let mut stats = CommitStats::default();
        let all = self.epoch.deltas();
        let (logged, bytes) = self.log_deltas(&all).await?;
        stats.rows = logged;
        stats.bytes = bytes;
        if self.options.materialise {
            let synced_at = now_micros();
            for (table, ids) in self.epoch.touched(&here)? {
                for chunk in ids.chunks(HISTORY_CHUNK) {
                    self.materialise_rows(table, chunk, synced_at).await?;
                }
            }
        }
        let commits = self.table(COMMITS_TABLE)?;
        self.client
            .query(
                &format!(
                    "MERGE {commits} AS t USING (SELECT @pipeline AS pipeline, @sink AS sink) AS s \
                     ON t.pipeline = s.pipeline AND t.sink = s.sink \
                     WHEN MATCHED THEN UPDATE SET epoch = @epoch, committed_at = CURRENT_TIMESTAMP() \
                     WHEN NOT MATCHED THEN INSERT (pipeline, sink, epoch, committed_at) \
                     VALUES (s.pipeline, s.sink, @epoch, CURRENT_TIMESTAMP())"
                ),
                vec![
                    scalar("pipeline", "STRING", Some(self.pipeline.clone())),
                    scalar("sink", "STRING", Some(self.name.clone())),
                    scalar("epoch", "INT64", Some(epoch_i64.to_string())),
                ],
                &format!("{here}: setting the epoch mark to {epoch}"),
            )
            .await?;
        self.epoch.clear();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::hlc::HlcTimestamp;

    #[test]
    fn a_logged_row_reads_back_as_the_same_delta() {
        let d = RowDelta::new(
            DeltaOp::Update,
            "invoices",
            "inv-1",
            "c1",
            vec![ColumnDelta::new("amount", serde_json::json!(12.5))],
            HlcTimestamp::new(1_780_000_000_000, 3).unwrap(),
        );
        let row: Vec<Value> = log_row(&d)
            .unwrap()
            .into_iter()
            .map(|v| v.map_or(Value::Null, Value::String))
            .collect();
        // The result columns: delta_id, row_id, client_id, hlc, op, columns.
        let result = vec![
            row[0].clone(),
            row[2].clone(),
            row[3].clone(),
            row[4].clone(),
            row[5].clone(),
            row[6].clone(),
        ];
        assert_eq!(logged_delta(&result, "invoices", "t").unwrap(), d);
        assert_eq!(cell_param(Cell::Number(0.1)), Some("0.1".into()));
        assert_eq!(cell_param(Cell::Null), None);
    }
}
