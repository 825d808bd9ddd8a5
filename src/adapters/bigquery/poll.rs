//! Polling BigQuery tables with queries: the **cursor** and **diff** strategies.
//!
//! Every value is selected as text in the statement — `CAST(… AS STRING)`, timestamps as
//! `UNIX_MICROS`, JSON with `TO_JSON_STRING` — so no result format (the REST API's, an emulator's)
//! is relied on; every compared value is a query parameter cast to the column's BigQuery type
//! (read with `tables.get`).
//!
//! - **Cursor**: rows whose `(cursor, id)` pair is past the last pair read, `ORDER BY cursor, id
//!   LIMIT batch_size`; every row read becomes an INSERT of every column (a cursor sees neither
//!   deletes nor the difference between a new and a changed row). Rows with a NULL cursor are
//!   never read. There is no lookback window: a row that becomes visible with a cursor value
//!   below one already read (a late streaming insert) is missed, so the cursor should be set by
//!   the writer at commit (e.g. `CURRENT_TIMESTAMP()` in the DML that writes the row). Position
//!   per table: `{"cursor", "id"}`.
//! - **Diff**: the whole table compared with the previous snapshot, kept as a journal in the state
//!   directory ([`crate::adapters::diff_state`]): INSERT for new rows, UPDATE of the changed
//!   columns, DELETE for vanished rows. Memory holds the table's rows. Position per table:
//!   `{"seq"}`.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::client::{BigQueryClient, cell_text};
use super::params::scalar;
use super::source::{BigQuerySourceOptions, BigQueryStrategy, BigQueryTableSpec, data_error};
use super::{qualified, quote_column};
use crate::adapters::diff_state::{DiffState, JournalEntry};
use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::delta_batch::{deltas_to_batch, format_timestamp, number_to_json};
use crate::kernel::hlc::Hlc;
use crate::kernel::schema::ColumnType;
use crate::runtime::api::{Position, ReadMode, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

enum Kind {
    Cursor {
        column: String,
        /// The cursor column's BigQuery type.
        bq_type: String,
        last: Option<(String, String)>,
    },
    Diff(DiffState),
}

struct Table {
    schema: TableRef,
    id_column: String,
    id_type: String,
    kind: Kind,
}

struct Reader {
    here: String,
    client_id: String,
    client: BigQueryClient,
    hlc: Arc<Hlc>,
    tables: Vec<Table>,
    position: Map<String, Value>,
    mode: ReadMode,
    batch_size: usize,
    ready: VecDeque<SourceBatch>,
    todo: VecDeque<usize>,
    polls: u64,
}

/// The expression selecting a value of BigQuery type `bq_type` as text that
/// [`param_expr`] reads back.
fn key_text(column: &str, bq_type: &str) -> Result<String> {
    let c = quote_column(column)?;
    Ok(match bq_type {
        "TIMESTAMP" => format!("CAST(UNIX_MICROS({c}) AS STRING)"),
        _ => format!("CAST({c} AS STRING)"),
    })
}

/// The parameter `@name` (text from [`key_text`]) as a value of BigQuery type `bq_type`.
fn param_expr(name: &str, bq_type: &str) -> String {
    match bq_type {
        "TIMESTAMP" => format!("TIMESTAMP_MICROS(CAST(@{name} AS INT64))"),
        "INTEGER" | "INT64" => format!("CAST(@{name} AS INT64)"),
        "FLOAT" | "FLOAT64" => format!("CAST(@{name} AS FLOAT64)"),
        "NUMERIC" => format!("CAST(@{name} AS NUMERIC)"),
        "BIGNUMERIC" => format!("CAST(@{name} AS BIGNUMERIC)"),
        "DATE" => format!("CAST(@{name} AS DATE)"),
        "DATETIME" => format!("CAST(@{name} AS DATETIME)"),
        "TIME" => format!("CAST(@{name} AS TIME)"),
        "BOOLEAN" | "BOOL" => format!("CAST(@{name} AS BOOL)"),
        _ => format!("@{name}"),
    }
}

/// The expression selecting a data column of `column_type` as text [`value_of`] reads.
fn value_text(column: &str, column_type: ColumnType) -> Result<String> {
    let c = quote_column(column)?;
    Ok(match column_type {
        ColumnType::Timestamp => format!("CAST(UNIX_MICROS({c}) AS STRING)"),
        ColumnType::Json | ColumnType::Null => format!("TO_JSON_STRING({c})"),
        _ => format!("CAST({c} AS STRING)"),
    })
}

/// A delta value from the text [`value_text`] selected.
fn value_of(text: Option<String>, column_type: ColumnType) -> std::result::Result<Value, String> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    Ok(match column_type {
        ColumnType::String => Value::String(text),
        ColumnType::Integer => Value::from(
            text.parse::<i64>()
                .map_err(|_| format!("{text:?} is not an integer"))?,
        ),
        ColumnType::Number => number_to_json(
            text.parse::<f64>()
                .map_err(|_| format!("{text:?} is not a number"))?,
        ),
        ColumnType::Boolean => match text.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("{text:?} is not a boolean")),
        },
        ColumnType::Timestamp => {
            let micros = text
                .parse::<i64>()
                .map_err(|_| format!("{text:?} is not a timestamp in microseconds"))?;
            Value::String(format_timestamp(micros).map_err(|e| e.to_string())?)
        }
        ColumnType::Json | ColumnType::Null => {
            serde_json::from_str(&text).map_err(|e| format!("JSON {text:?}: {e}"))?
        }
    })
}

/// Opens a polling read of `specs` (all cursor or diff) from `resume`.
pub async fn open(
    source: &str,
    client: BigQueryClient,
    specs: &[BigQueryTableSpec],
    options: &BigQuerySourceOptions,
    hlc: Arc<Hlc>,
    resume: Option<Position>,
    mode: ReadMode,
) -> Result<SourceStream> {
    let here = format!("bigquery source {source:?}");
    let resume = match resume.map(|p| p.0) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(Error::invalid(
                "source position",
                format!("{here}: expected a JSON object keyed by table, got {other}"),
            ));
        }
    };
    let mut tables = Vec::with_capacity(specs.len());
    let mut replays = Vec::new();
    for spec in specs {
        let name = &spec.schema.table;
        let types = client.column_types(name, &here).await?;
        let type_of = |column: &str| {
            types
                .iter()
                .find(|(n, _)| n == column)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| {
                    Error::invalid(
                        "bigquery source",
                        format!("{here}: table {name:?} has no column {column:?}"),
                    )
                })
        };
        let entry = resume.get(name);
        let at = |msg: String| {
            Error::invalid("source position", format!("{here}: table {name:?}: {msg}"))
        };
        let kind = match &spec.strategy {
            BigQueryStrategy::Cursor { cursor_column } => {
                let last = match entry {
                    None => None,
                    Some(e) => {
                        let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
                        match (text("cursor"), text("id")) {
                            (Some(c), Some(i)) => Some((c, i)),
                            _ => return Err(at(format!("expected {{cursor, id}}, got {e}"))),
                        }
                    }
                };
                Kind::Cursor {
                    column: cursor_column.clone(),
                    bq_type: type_of(cursor_column)?,
                    last,
                }
            }
            BigQueryStrategy::Diff => {
                let seq = match entry {
                    None => 0,
                    Some(e) => e
                        .get("seq")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| at(format!("expected {{\"seq\": n}}, got {e}")))?,
                };
                let dir = options.state_dir.as_deref().ok_or_else(|| {
                    Error::internal(format!("{here}: diff table without a state directory"))
                })?;
                let (state, replay) =
                    DiffState::open("bigquery", dir, source, name, &spec.id_column, seq, &here)
                        .await?;
                replays.push((tables.len(), replay));
                Kind::Diff(state)
            }
            BigQueryStrategy::Snapshot => {
                return Err(Error::internal(format!("{here}: snapshot is not polled")));
            }
        };
        tables.push(Table {
            id_type: type_of(&spec.id_column)?,
            schema: Arc::clone(&spec.schema),
            id_column: spec.id_column.clone(),
            kind,
        });
    }
    let mut reader = Reader {
        here,
        client_id: format!("bigquery:{source}"),
        client,
        hlc,
        tables,
        position: resume,
        mode,
        batch_size: options.batch_size.max(1),
        ready: VecDeque::new(),
        todo: VecDeque::new(),
        polls: 0,
    };
    for i in 0..reader.tables.len() {
        reader.update_position(i);
    }
    for (index, replay) in replays {
        for entry in replay {
            reader.emit_diff(index, entry, false).await?;
        }
    }
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

impl Reader {
    async fn next(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Ok(Some(batch));
            }
            let Some(i) = self.todo.pop_front() else {
                if self.polls > 0 {
                    match &self.mode {
                        ReadMode::Once | ReadMode::Replay { .. } => return Ok(None),
                        ReadMode::Follow { poll_interval } => {
                            tokio::time::sleep(*poll_interval).await;
                        }
                    }
                }
                self.polls += 1;
                self.todo = (0..self.tables.len()).collect();
                continue;
            };
            match &self.tables[i].kind {
                Kind::Diff(_) => self.poll_diff(i).await?,
                Kind::Cursor { .. } => {
                    if self.poll_cursor(i).await? {
                        self.todo.push_front(i);
                    }
                }
            }
        }
    }

    fn update_position(&mut self, i: usize) {
        let t = &self.tables[i];
        let entry = match &t.kind {
            Kind::Cursor { last: None, .. } => return,
            Kind::Cursor {
                last: Some((cursor, id)),
                ..
            } => json!({"cursor": cursor, "id": id}),
            Kind::Diff(state) => json!({"seq": state.seq}),
        };
        self.position.insert(t.schema.table.clone(), entry);
    }

    fn queue(&mut self, i: usize, deltas: &[RowDelta]) -> Result<()> {
        self.update_position(i);
        let schema = Arc::clone(&self.tables[i].schema);
        let batch = deltas_to_batch(&schema, deltas)
            .map_err(|e| Error::schema(format!("{}: table {:?}: {e}", self.here, schema.table)))?;
        self.ready.push_back(SourceBatch {
            table: schema,
            batch,
            position: Position(Value::Object(self.position.clone())),
        });
        Ok(())
    }

    /// `SELECT id, [cursor,] columns… FROM t`, every value as text.
    fn select(&self, i: usize) -> Result<String> {
        let t = &self.tables[i];
        let mut parts = vec![key_text(&t.id_column, &t.id_type)?];
        if let Kind::Cursor {
            column, bq_type, ..
        } = &t.kind
        {
            parts.push(key_text(column, bq_type)?);
        }
        for c in &t.schema.columns {
            parts.push(value_text(&c.name, c.column_type)?);
        }
        Ok(format!(
            "SELECT {} FROM {}",
            parts.join(", "),
            qualified(
                self.client.project(),
                self.client.dataset(),
                &t.schema.table
            )?
        ))
    }

    /// The row id, cursor text (cursor tables) and column values of a result row.
    fn row_values(
        &self,
        i: usize,
        row: &[Value],
    ) -> Result<(String, Option<String>, Vec<ColumnDelta>)> {
        let t = &self.tables[i];
        let get = |k: usize| row.get(k).and_then(cell_text);
        let id = get(0).ok_or_else(|| {
            data_error(
                &self.here,
                format!("table {:?} has a row with a NULL id", t.schema.table),
            )
        })?;
        let mut k = 1;
        let cursor = if matches!(t.kind, Kind::Cursor { .. }) {
            k += 1;
            get(1)
        } else {
            None
        };
        let mut columns = Vec::with_capacity(t.schema.columns.len());
        for def in &t.schema.columns {
            let value = value_of(get(k), def.column_type).map_err(|e| {
                data_error(
                    &self.here,
                    format!(
                        "table {:?} row {id:?} column {:?}: {e}",
                        t.schema.table, def.name
                    ),
                )
            })?;
            columns.push(ColumnDelta::new(def.name.clone(), value));
            k += 1;
        }
        Ok((id, cursor, columns))
    }

    /// One page past the last pair; whether the page was full (more may follow).
    async fn poll_cursor(&mut self, i: usize) -> Result<bool> {
        let t = &self.tables[i];
        let Kind::Cursor {
            column,
            bq_type,
            last,
        } = &t.kind
        else {
            return Ok(false);
        };
        let (c, id) = (quote_column(column)?, quote_column(&t.id_column)?);
        let mut sql = self.select(i)?;
        let mut params = Vec::new();
        match last {
            None => sql.push_str(&format!(" WHERE {c} IS NOT NULL")),
            Some((cursor, last_id)) => {
                let (pc, pi) = (param_expr("cursor", bq_type), param_expr("id", &t.id_type));
                sql.push_str(&format!(
                    " WHERE {c} > {pc} OR ({c} = {pc} AND {id} > {pi})"
                ));
                params.push(scalar("cursor", "STRING", Some(cursor.clone())));
                params.push(scalar("id", "STRING", Some(last_id.clone())));
            }
        }
        sql.push_str(&format!(" ORDER BY {c}, {id} LIMIT {}", self.batch_size));
        let result = self
            .client
            .query(
                &sql,
                params,
                &format!("{}: polling table {:?}", self.here, t.schema.table),
            )
            .await?;
        if result.rows.is_empty() {
            return Ok(false);
        }
        let mut deltas = Vec::with_capacity(result.rows.len());
        let mut newest = None;
        for row in &result.rows {
            let (row_id, cursor, columns) = self.row_values(i, row)?;
            let cursor = cursor.ok_or_else(|| {
                data_error(&self.here, format!("row {row_id:?} has a NULL cursor"))
            })?;
            newest = Some((cursor, row_id.clone()));
            deltas.push(self.insert(i, row_id, columns));
        }
        let full = result.rows.len() == self.batch_size;
        if let Kind::Cursor { last, .. } = &mut self.tables[i].kind {
            *last = newest;
        }
        self.queue(i, &deltas)?;
        Ok(full)
    }

    fn insert(&self, i: usize, row_id: String, columns: Vec<ColumnDelta>) -> RowDelta {
        let t = &self.tables[i];
        RowDelta::new(
            DeltaOp::Insert,
            t.schema.delta_table(),
            row_id,
            self.client_id.clone(),
            columns,
            self.hlc.now(),
        )
    }

    async fn poll_diff(&mut self, i: usize) -> Result<()> {
        let sql = format!("{} ORDER BY 1", self.select(i)?);
        let t = &self.tables[i];
        let result = self
            .client
            .query(
                &sql,
                Vec::new(),
                &format!("{}: reading table {:?}", self.here, t.schema.table),
            )
            .await?;
        let mut images = Vec::with_capacity(result.rows.len());
        for row in &result.rows {
            let (row_id, _, columns) = self.row_values(i, row)?;
            images.push((
                row_id,
                columns.into_iter().map(|c| (c.column, c.value)).collect(),
            ));
        }
        let t = &self.tables[i];
        let Kind::Diff(state) = &t.kind else {
            return Ok(());
        };
        let entries = state
            .diff(
                images,
                t.schema.delta_table(),
                &self.client_id,
                &self.hlc,
                &t.schema.column_names(),
                self.batch_size,
            )
            .map_err(|e| data_error(&self.here, format!("table {:?}: {e}", t.schema.table)))?;
        for entry in entries {
            self.emit_diff(i, entry, true).await?;
        }
        Ok(())
    }

    async fn emit_diff(&mut self, i: usize, entry: JournalEntry, journal: bool) -> Result<()> {
        let here = self.here.clone();
        let Kind::Diff(state) = &mut self.tables[i].kind else {
            return Ok(());
        };
        state.apply(&entry, journal, &here).await?;
        self.queue(i, &entry.deltas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_from_their_text() {
        assert_eq!(value_of(None, ColumnType::Integer).unwrap(), Value::Null);
        assert_eq!(
            value_of(Some("42".into()), ColumnType::Integer).unwrap(),
            json!(42)
        );
        assert_eq!(
            value_of(Some("1767312000000000".into()), ColumnType::Timestamp).unwrap(),
            json!("2026-01-02T00:00:00Z")
        );
        assert_eq!(
            value_of(Some("{\"a\":[1]}".into()), ColumnType::Json).unwrap(),
            json!({"a": [1]})
        );
        assert!(value_of(Some("x".into()), ColumnType::Boolean).is_err());
        assert_eq!(
            param_expr("c", "TIMESTAMP"),
            "TIMESTAMP_MICROS(CAST(@c AS INT64))"
        );
        assert!(key_text("a`b", "STRING").is_err());
    }
}
