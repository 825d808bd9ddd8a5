//! Polling Postgres tables: the **cursor** and **diff** strategies.
//!
//! Values are read as text after a cast to the column's LakeSync type (`"c"::float8::text`, …)
//! and converted by [`super::types::text_to_json`], so every type Postgres can cast is readable.
//!
//! - **Cursor**: rows whose `(cursor, id)` pair is past the last pair read, `ORDER BY cursor, id
//!   LIMIT batch_size`; every row read becomes an INSERT of every column (a cursor cannot tell a
//!   new row from a changed one, nor see deletes). Transactions commit out of cursor order, so a
//!   row can appear with a cursor value below the last one read; for `timestamp` cursors each
//!   poll therefore also re-reads a **lookback** window (default 5 s) behind the newest value and
//!   emits the rows in it whose `(id, cursor)` it has not emitted before (the pairs read inside
//!   the window are kept in the position). Position per table: `{"cursor", "id", "recent"}`.
//! - **Diff**: the whole table compared with the previous snapshot: INSERT for new rows, UPDATE
//!   of the changed columns, DELETE for vanished rows, the snapshot kept as a journal in the
//!   state directory ([`crate::adapters::diff_state`]). Position per table: `{"seq"}`.
//!
//! A poll reads one page of one table per step, so a large table streams in batches.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::source::{PostgresSourceOptions, PostgresStrategy, PostgresTableSpec};
use super::types::{cast_for, parse_pg_timestamp, table_columns, text_to_json};
use super::{connect, data_error, ident, pg_error, qualified};
use crate::adapters::diff_state::{DiffState, JournalEntry};
use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::delta_batch::deltas_to_batch;
use crate::kernel::hlc::Hlc;
use crate::kernel::schema::ColumnType;
use crate::runtime::api::{Position, ReadMode, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// The default lookback of a timestamp cursor.
const DEFAULT_LOOKBACK: Duration = Duration::from_secs(5);

enum Kind {
    Cursor {
        column: String,
        /// The cursor column's SQL type, from the catalogue (for casting bound values).
        sql_type: String,
        /// `Some` for timestamp cursors.
        lookback: Option<Duration>,
        last: Option<(String, String)>,
        /// `(id, cursor)` pairs read within the lookback window.
        recent: Vec<(String, String)>,
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
    pg_schema: String,
    hlc: Arc<Hlc>,
    conn: PgConnection,
    tables: Vec<Table>,
    position: Map<String, Value>,
    mode: ReadMode,
    batch_size: usize,
    ready: VecDeque<SourceBatch>,
    /// Tables with work left in the current poll (`true`: the lookback window is still due).
    todo: VecDeque<(usize, bool)>,
    polls: u64,
}

/// Opens a polling read of `specs` (all cursor or diff) from `resume`.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    source: &str,
    url: &str,
    specs: &[PostgresTableSpec],
    schemas: Vec<TableRef>,
    options: &PostgresSourceOptions,
    hlc: Arc<Hlc>,
    resume: Option<Position>,
    mode: ReadMode,
) -> Result<SourceStream> {
    let here = format!("postgres source {source:?}");
    let mut conn = connect(url, &here).await?;
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
    for (spec, schema) in specs.iter().zip(schemas) {
        let catalogue = table_columns(&mut conn, &options.pg_schema, &spec.table, &here)
            .await?
            .unwrap_or_default();
        let type_of = |name: &str| {
            catalogue
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.type_text.clone())
                .ok_or_else(|| {
                    Error::invalid(
                        "postgres source",
                        format!("{here}: table {:?} has no column {name:?}", spec.table),
                    )
                })
        };
        let entry = resume.get(&spec.table);
        let at = |msg: String| {
            Error::invalid(
                "source position",
                format!("{here}: table {:?}: {msg}", spec.table),
            )
        };
        let kind = match &spec.strategy {
            PostgresStrategy::Cursor {
                cursor_column,
                lookback,
            } => {
                let is_timestamp = schema
                    .column(cursor_column)
                    .is_some_and(|c| c.column_type == ColumnType::Timestamp);
                let text = |e: &Map<String, Value>, k: &str| {
                    e.get(k).and_then(Value::as_str).map(str::to_string)
                };
                let (last, recent) = match entry {
                    None => (None, Vec::new()),
                    Some(Value::Object(e)) => {
                        let last = match (text(e, "cursor"), text(e, "id")) {
                            (Some(c), Some(i)) => Some((c, i)),
                            _ => {
                                return Err(at(format!(
                                    "expected {{cursor, id}}, got {}",
                                    Value::Object(e.clone())
                                )));
                            }
                        };
                        let recent = match e.get("recent") {
                            None => Vec::new(),
                            Some(v) => serde_json::from_value(v.clone())
                                .map_err(|err| at(format!("bad \"recent\": {err}")))?,
                        };
                        (last, recent)
                    }
                    Some(other) => return Err(at(format!("expected {{cursor, id}}, got {other}"))),
                };
                Kind::Cursor {
                    column: cursor_column.clone(),
                    sql_type: type_of(cursor_column)?,
                    lookback: is_timestamp
                        .then(|| lookback.unwrap_or(DEFAULT_LOOKBACK))
                        .filter(|l| !l.is_zero()),
                    last,
                    recent,
                }
            }
            PostgresStrategy::Diff => {
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
                let (state, replay) = DiffState::open(
                    "postgres",
                    dir,
                    source,
                    &spec.table,
                    &spec.id_column,
                    seq,
                    &here,
                )
                .await?;
                replays.push((tables.len(), replay));
                Kind::Diff(state)
            }
            other => {
                return Err(Error::internal(format!("{here}: {other:?} is not polled")));
            }
        };
        tables.push(Table {
            id_type: type_of(&spec.id_column)?,
            schema,
            id_column: spec.id_column.clone(),
            kind,
        });
    }
    let mut reader = Reader {
        here,
        client_id: format!("postgres:{source}"),
        pg_schema: options.pg_schema.clone(),
        hlc,
        conn,
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
            let Some((i, window_due)) = self.todo.pop_front() else {
                if self.polls > 0 {
                    match &self.mode {
                        ReadMode::Once | ReadMode::Replay { .. } => return Ok(None),
                        ReadMode::Follow { poll_interval } => {
                            tokio::time::sleep(*poll_interval).await;
                        }
                    }
                }
                self.polls += 1;
                self.todo = (0..self.tables.len()).map(|i| (i, true)).collect();
                continue;
            };
            match &self.tables[i].kind {
                Kind::Diff(_) => self.poll_diff(i).await?,
                Kind::Cursor { .. } => {
                    if window_due {
                        self.poll_window(i).await?;
                    }
                    if self.poll_cursor(i).await? {
                        self.todo.push_front((i, false));
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
                recent,
                ..
            } => json!({"cursor": cursor, "id": id, "recent": recent}),
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

    /// `SELECT id::text, cursor::text, "c"::cast::text… FROM t` for table `i`.
    fn select(&self, i: usize) -> Result<String> {
        let t = &self.tables[i];
        let mut parts = vec![format!("{}::text", ident(&t.id_column)?)];
        if let Kind::Cursor { column, .. } = &t.kind {
            parts.push(format!("{}::text", ident(column)?));
        }
        for c in &t.schema.columns {
            parts.push(format!(
                "{}::{}::text",
                ident(&c.name)?,
                cast_for(c.column_type)
            ));
        }
        Ok(format!(
            "SELECT {} FROM {}",
            parts.join(", "),
            qualified(&self.pg_schema, &t.schema.table)?
        ))
    }

    /// The row id, cursor text (cursor tables) and column values of a row.
    fn row_values(
        &self,
        i: usize,
        row: &PgRow,
    ) -> Result<(String, Option<String>, Vec<ColumnDelta>)> {
        let t = &self.tables[i];
        let get = |k: usize| -> Result<Option<String>> {
            row.try_get::<Option<String>, _>(k).map_err(|e| {
                pg_error(
                    format!("{}: reading table {:?}", self.here, t.schema.table),
                    e,
                )
            })
        };
        let id = get(0)?.ok_or_else(|| {
            data_error(
                &self.here,
                format!("table {:?} has a row with a NULL id", t.schema.table),
            )
        })?;
        let mut k = 1;
        let cursor = if matches!(t.kind, Kind::Cursor { .. }) {
            k += 1;
            get(1)?
        } else {
            None
        };
        let mut columns = Vec::with_capacity(t.schema.columns.len());
        for def in &t.schema.columns {
            let value = match get(k)? {
                None => Value::Null,
                Some(text) => text_to_json(&text, def.column_type, 0).map_err(|e| {
                    data_error(
                        &self.here,
                        format!(
                            "table {:?} row {id:?} column {:?}: {e}",
                            t.schema.table, def.name
                        ),
                    )
                })?,
            };
            columns.push(ColumnDelta::new(def.name.clone(), value));
            k += 1;
        }
        Ok((id, cursor, columns))
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

    /// One page past the last pair; whether the page was full (more may follow).
    async fn poll_cursor(&mut self, i: usize) -> Result<bool> {
        let t = &self.tables[i];
        let Kind::Cursor {
            column,
            sql_type,
            last,
            ..
        } = &t.kind
        else {
            return Ok(false);
        };
        let (c, id) = (ident(column)?, ident(&t.id_column)?);
        let mut sql = self.select(i)?;
        if last.is_some() {
            sql.push_str(&format!(
                " WHERE ({c}, {id}) > ($1::text::{sql_type}, $2::text::{})",
                t.id_type
            ));
        }
        sql.push_str(&format!(" ORDER BY {c}, {id} LIMIT {}", self.batch_size));
        let mut query = sqlx::query(&sql);
        if let Some((cursor, id)) = last {
            query = query.bind(cursor.clone()).bind(id.clone());
        }
        let rows = query.fetch_all(&mut self.conn).await.map_err(|e| {
            pg_error(
                format!("{}: polling table {:?}", self.here, t.schema.table),
                e,
            )
        })?;
        if rows.is_empty() {
            return Ok(false);
        }
        let mut deltas = Vec::with_capacity(rows.len());
        let mut pairs = Vec::with_capacity(rows.len());
        let mut newest = None;
        for row in &rows {
            let (row_id, cursor, columns) = self.row_values(i, row)?;
            let cursor = cursor.ok_or_else(|| {
                data_error(&self.here, format!("row {row_id:?} has a NULL cursor"))
            })?;
            pairs.push((row_id.clone(), cursor.clone()));
            newest = Some((cursor, row_id.clone()));
            deltas.push(self.insert(i, row_id, columns));
        }
        let full = rows.len() == self.batch_size;
        if let Kind::Cursor {
            last,
            recent,
            lookback,
            ..
        } = &mut self.tables[i].kind
        {
            if let Some(window) = lookback {
                recent.extend(pairs);
                // Only pairs inside the window behind the newest cursor value can matter.
                let newest_micros = newest.as_ref().and_then(|(c, _)| parse_pg_timestamp(c));
                if let Some(newest_micros) = newest_micros {
                    let floor = newest_micros
                        .saturating_sub(i64::try_from(window.as_micros()).unwrap_or(i64::MAX));
                    recent.retain(|(_, c)| parse_pg_timestamp(c).is_none_or(|m| m > floor));
                }
            }
            *last = newest;
        }
        self.queue(i, &deltas)?;
        Ok(full)
    }

    /// Re-reads the lookback window behind the last pair: rows committed late with an older
    /// cursor value, emitted when their `(id, cursor)` was not read before.
    async fn poll_window(&mut self, i: usize) -> Result<()> {
        let t = &self.tables[i];
        let Kind::Cursor {
            column,
            sql_type,
            lookback: Some(lookback),
            last: Some((cursor, last_id)),
            recent,
        } = &t.kind
        else {
            return Ok(());
        };
        let (c, id) = (ident(column)?, ident(&t.id_column)?);
        let micros = i64::try_from(lookback.as_micros()).unwrap_or(i64::MAX);
        let sql = format!(
            "{} WHERE {c} > $1::text::{sql_type} - $3 * INTERVAL '1 microsecond' \
             AND ({c}, {id}) <= ($1::text::{sql_type}, $2::text::{}) ORDER BY {c}, {id}",
            self.select(i)?,
            t.id_type
        );
        let rows = sqlx::query(&sql)
            .bind(cursor.clone())
            .bind(last_id.clone())
            .bind(micros)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| {
                pg_error(
                    format!(
                        "{}: re-reading the lookback window of {:?}",
                        self.here, t.schema.table
                    ),
                    e,
                )
            })?;
        let seen: HashSet<&(String, String)> = recent.iter().collect();
        let mut kept = Vec::with_capacity(rows.len());
        let mut late = Vec::new();
        for row in &rows {
            let (row_id, cursor, columns) = self.row_values(i, row)?;
            let pair = (row_id.clone(), cursor.unwrap_or_default());
            if !seen.contains(&pair) {
                late.push(self.insert(i, row_id, columns));
            }
            kept.push(pair);
        }
        if let Kind::Cursor { recent, .. } = &mut self.tables[i].kind {
            // Only pairs still inside the window matter from now on.
            *recent = kept;
        }
        if !late.is_empty() {
            tracing::info!(source = %self.here, table = %self.tables[i].schema.table, rows = late.len(), "rows committed late behind the cursor");
            self.queue(i, &late)?;
        }
        Ok(())
    }

    async fn poll_diff(&mut self, i: usize) -> Result<()> {
        let sql = format!("{} ORDER BY 1", self.select(i)?);
        let t = &self.tables[i];
        let rows = sqlx::query(&sql)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| {
                pg_error(
                    format!("{}: reading table {:?}", self.here, t.schema.table),
                    e,
                )
            })?;
        let Kind::Diff(state) = &t.kind else {
            return Ok(());
        };
        let mut images = Vec::with_capacity(rows.len());
        for row in &rows {
            let (row_id, _, columns) = self.row_values(i, row)?;
            images.push((
                row_id,
                columns.into_iter().map(|c| (c.column, c.value)).collect(),
            ));
        }
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
