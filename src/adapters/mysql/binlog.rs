//! Change data capture from the MySQL/MariaDB ROW binlog: a consistent initial snapshot, then
//! every committed row change, in commit order.
//!
//! **Snapshot.** With no position, the source opens a transaction `WITH CONSISTENT SNAPSHOT` and
//! asks for the binlog coordinates of exactly that snapshot (MariaDB's
//! `binlog_snapshot_file`/`binlog_snapshot_position` status; on MySQL, which lacks them, the
//! coordinates are read under a brief `FLUSH TABLES WITH READ LOCK`). It reads every table in
//! `id` order as INSERT deltas, then streams the binlog from those coordinates: no change is
//! lost between the snapshot and the stream, and none is applied twice. Positions of batches in
//! the middle of the snapshot are `{"snapshot": {"table", "after"}}`; a source resumed from one
//! cannot get the same view back, so it takes a new snapshot (re-emitting rows already sent,
//! which last-writer-wins absorbs). The last snapshot batch carries the binlog position.
//!
//! **Stream.** The source registers as a replica (`server_id`) and reads row events:
//! `WRITE_ROWS` → an INSERT delta with every column; `UPDATE_ROWS` → an UPDATE delta with only the
//! columns whose value changed between the before and after images (no delta when none did; a
//! changed id is a DELETE of the old row and an INSERT of the new); `DELETE_ROWS` → a DELETE
//! delta. The row id is the `id_column` value. Events of other databases and tables are skipped.
//! Enum and set values (an index or a bit mask in the binlog) become their labels, as polled
//! reads give them. Column names come from the table map's metadata (`binlog_row_metadata=FULL`) or else by
//! position from `information_schema`. The client id is `mysql:<source name>`; every delta gets
//! its own HLC.
//!
//! **Position.** `{"binlog": {"file", "pos", "skip"}}`: `pos` is a transaction boundary (the end
//! of an `XID` or of a DDL/`COMMIT` query event) in `file`, and `skip` is how many row changes of
//! the transaction starting there were already emitted (0 when the batch ended the
//! transaction). A batch ends at the end of a transaction, when the table changes, or at
//! `batch_size` deltas, so positions are a function of the binlog alone: resuming from a position
//! yields exactly the changes after it, and a replayed epoch reads exactly the same batches.
//!
//! **Modes.** `Once` (and a bounded replay) reads up to the binlog end as it was at open, then
//! ends. `Follow` keeps the stream open (the server sends a heartbeat every 5 s; 30 s of silence
//! counts as a lost connection) and reconnects with exponential backoff (1 s to 30 s) from the
//! last emitted position after a retryable error.
//!
//! **Server requirements.** `log_bin` on, `binlog_format=ROW`, `binlog_row_image=FULL`
//! (`binlog_row_metadata=FULL` recommended), binlog retention longer than any pause of the
//! pipeline, and a user with `REPLICATION SLAVE`, `REPLICATION CLIENT` (and, on MySQL, `RELOAD`
//! for the snapshot) besides `SELECT`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest};
use serde_json::{Map, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{Connection, Executor};

use super::dialect::{Bind, MysqlDialect, query_with};
use super::source::{PolledRow, TableInfo, bind_of, insert_delta, raw, read_row};
use super::value::{Raw, label_text, position_value, row_id_of, to_json};
use super::{binlog_error, mysql_error};
use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::delta_batch::deltas_to_batch;
use crate::kernel::hlc::Hlc;
use crate::kernel::materialise::SqlDialect;
use crate::runtime::api::{Position, ReadMode, SourceBatch, SourceStream};
use crate::{Error, Result};

/// How often an idle server sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Silence after which the stream counts as lost.
const SILENCE: Duration = Duration::from_secs(30);
/// First and last reconnection delays.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// What the binlog reader needs from its source.
#[derive(Clone)]
pub(crate) struct CdcSettings {
    /// Names the source in messages.
    pub(crate) here: String,
    /// The connection URL (for the replication connection).
    pub(crate) url: String,
    /// sqlx connection options (for the snapshot).
    pub(crate) connect: MySqlConnectOptions,
    /// The client id of the deltas.
    pub(crate) client_id: String,
    /// The replica server id.
    pub(crate) server_id: u32,
    /// Most deltas per batch.
    pub(crate) batch_size: usize,
    /// The source's clock.
    pub(crate) hlc: Arc<Hlc>,
}

/// A binlog position: a transaction boundary and the row changes after it already emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BinlogPos {
    file: String,
    pos: u64,
    skip: u64,
}

impl BinlogPos {
    fn to_position(&self) -> Position {
        let mut inner = Map::new();
        inner.insert("file".into(), Value::String(self.file.clone()));
        inner.insert("pos".into(), Value::from(self.pos));
        inner.insert("skip".into(), Value::from(self.skip));
        let mut m = Map::new();
        m.insert("binlog".into(), Value::Object(inner));
        Position(Value::Object(m))
    }

    fn parse(value: &Value) -> Option<Self> {
        Some(Self {
            file: value.get("file")?.as_str()?.to_string(),
            pos: value.get("pos")?.as_u64()?,
            skip: value.get("skip").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// Whether this boundary is at or past `end` (binlog file names sort by their sequence).
    fn reached(&self, end: &(String, u64)) -> bool {
        (self.file.as_str(), self.pos) >= (end.0.as_str(), end.1)
    }
}

/// Opens the CDC stream of `tables` at `resume`.
pub(crate) async fn open(
    settings: CdcSettings,
    tables: Vec<TableInfo>,
    resume: Map<String, Value>,
    mode: ReadMode,
) -> Result<SourceStream> {
    let here = settings.here.clone();
    let mut conn = MySqlConnection::connect_with(&settings.connect)
        .await
        .map_err(|e| mysql_error(format!("{here}: connecting"), e))?;
    check_server(&mut conn, &here).await?;
    let database: Option<String> = sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| mysql_error(format!("{here}: reading the current database"), e))?;
    let database = database.ok_or_else(|| {
        Error::invalid(
            "source",
            format!("{here}: the URL names no database; add one (mysql://host/db)"),
        )
    })?;
    let end = match mode {
        ReadMode::Follow { .. } => None,
        _ => Some(master_status(&mut conn, &here).await?),
    };
    let phase = match resume.get("binlog") {
        Some(entry) => {
            let pos = BinlogPos::parse(entry).ok_or_else(|| {
                Error::invalid(
                    "source position",
                    format!("{here}: expected {{\"binlog\": {{file, pos, skip}}}}, got {entry}"),
                )
            })?;
            conn.close().await.ok();
            Phase::Stream(pos)
        }
        None => {
            if resume.contains_key("snapshot") {
                tracing::warn!(source = %here, "resuming in the middle of the initial snapshot: taking a new one");
            }
            Phase::Snapshot(Box::new(Snapshot::begin(conn, &here).await?))
        }
    };
    let by_name = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.schema.table.clone(), i))
        .collect();
    let reader = CdcReader {
        s: settings,
        tables,
        by_name,
        database,
        end,
        phase,
        out: VecDeque::new(),
        done: false,
        stream: None,
    };
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

/// Checks the server settings CDC relies on.
async fn check_server(conn: &mut MySqlConnection, here: &str) -> Result<()> {
    let rows = sqlx::query(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image')",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| mysql_error(format!("{here}: reading the binlog settings"), e))?;
    let mut vars = HashMap::new();
    for row in &rows {
        if let (Ok(Raw::Text(k)), Ok(Raw::Text(v))) = (raw(row, 0), raw(row, 1)) {
            vars.insert(k.to_ascii_lowercase(), v.to_ascii_uppercase());
        }
    }
    for (name, want) in [
        ("log_bin", "ON"),
        ("binlog_format", "ROW"),
        ("binlog_row_image", "FULL"),
    ] {
        let have = vars.get(name).map_or("(unset)", String::as_str);
        if have != want {
            return Err(Error::invalid(
                "source",
                format!(
                    "{here}: cdc needs the server setting {name}={want}, but it is {have}; see docs/mysql.md"
                ),
            ));
        }
    }
    Ok(())
}

/// The current end of the binlog.
async fn master_status(conn: &mut MySqlConnection, here: &str) -> Result<(String, u64)> {
    let row = sqlx::query("SHOW MASTER STATUS")
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| mysql_error(format!("{here}: reading the binlog position"), e))?
        .ok_or_else(|| {
            Error::invalid(
                "source",
                format!(
                    "{here}: the server has no binlog (SHOW MASTER STATUS is empty); enable log_bin"
                ),
            )
        })?;
    match (raw(&row, 0), raw(&row, 1)) {
        (Ok(Raw::Text(file)), Ok(Raw::UInt(pos))) => Ok((file, pos)),
        (Ok(Raw::Text(file)), Ok(Raw::Int(pos))) => Ok((file, u64::try_from(pos).unwrap_or(0))),
        other => Err(Error::internal(format!(
            "{here}: unexpected SHOW MASTER STATUS row {other:?}"
        ))),
    }
}

enum Phase {
    Snapshot(Box<Snapshot>),
    Stream(BinlogPos),
}

/// The initial snapshot in progress.
struct Snapshot {
    conn: MySqlConnection,
    /// The binlog coordinates of the snapshot.
    start: BinlogPos,
    /// The table being read, and the last id read from it.
    table: usize,
    after: Option<Value>,
    /// The last batch read, held back until it is known whether it is the last one.
    held: Option<SourceBatch>,
}

impl Snapshot {
    async fn begin(mut conn: MySqlConnection, here: &str) -> Result<Self> {
        let at = |what: &str| format!("{here}: {what}");
        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| mysql_error(at("starting the snapshot"), e))?;
        conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .map_err(|e| mysql_error(at("starting the snapshot"), e))?;
        let rows = sqlx::query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| mysql_error(at("reading the snapshot's binlog position"), e))?;
        let mut file = None;
        let mut pos = None;
        for row in &rows {
            let (Ok(Raw::Text(name)), Ok(value)) = (raw(row, 0), raw(row, 1)) else {
                continue;
            };
            let value = match value {
                Raw::Text(s) => s,
                Raw::Int(i) => i.to_string(),
                Raw::UInt(u) => u.to_string(),
                _ => continue,
            };
            match name.to_ascii_lowercase().as_str() {
                "binlog_snapshot_file" => file = Some(value),
                "binlog_snapshot_position" => pos = value.parse::<u64>().ok(),
                _ => {}
            }
        }
        let start = match (file, pos) {
            // MariaDB: the coordinates of exactly this snapshot.
            (Some(file), Some(pos)) if !file.is_empty() => BinlogPos { file, pos, skip: 0 },
            _ => {
                // MySQL: hold writes off while the snapshot starts and the position is read.
                conn.execute("ROLLBACK")
                    .await
                    .map_err(|e| mysql_error(at("restarting the snapshot"), e))?;
                conn.execute("FLUSH TABLES WITH READ LOCK")
                    .await
                    .map_err(|e| {
                        mysql_error(
                            at("locking tables for the snapshot (needs the RELOAD privilege)"),
                            e,
                        )
                    })?;
                conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                    .await
                    .map_err(|e| mysql_error(at("starting the snapshot"), e))?;
                let status = master_status(&mut conn, here).await;
                conn.execute("UNLOCK TABLES")
                    .await
                    .map_err(|e| mysql_error(at("unlocking tables"), e))?;
                let (file, pos) = status?;
                BinlogPos { file, pos, skip: 0 }
            }
        };
        tracing::info!(source = %here, file = %start.file, pos = start.pos, "cdc snapshot started");
        Ok(Self {
            conn,
            start,
            table: 0,
            after: None,
            held: None,
        })
    }
}

/// The CDC stream's state.
struct CdcReader {
    s: CdcSettings,
    tables: Vec<TableInfo>,
    by_name: HashMap<String, usize>,
    database: String,
    /// For `Once` and replays: where the binlog ended at open.
    end: Option<(String, u64)>,
    phase: Phase,
    out: VecDeque<SourceBatch>,
    done: bool,
    stream: Option<Streamer>,
}

impl CdcReader {
    async fn next(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            if let Some(batch) = self.out.pop_front() {
                return Ok(Some(batch));
            }
            if self.done {
                return Ok(None);
            }
            match &mut self.phase {
                Phase::Snapshot(_) => self.snapshot_step().await?,
                Phase::Stream(_) => self.stream_step().await?,
            }
        }
    }

    /// Reads one page of the snapshot.
    async fn snapshot_step(&mut self) -> Result<()> {
        let Phase::Snapshot(snap) = &mut self.phase else {
            return Ok(());
        };
        let here = &self.s.here;
        let Some(info) = self.tables.get(snap.table) else {
            // Every table read: the last batch carries the binlog position.
            snap.conn
                .execute("COMMIT")
                .await
                .map_err(|e| mysql_error(format!("{here}: ending the snapshot"), e))?;
            let start = snap.start.clone();
            if let Some(mut held) = snap.held.take() {
                held.position = start.to_position();
                self.out.push_back(held);
            }
            tracing::info!(source = %here, "cdc snapshot done; streaming the binlog");
            self.phase = Phase::Stream(start);
            return Ok(());
        };
        let name = info.schema.table.clone();
        let qi = MysqlDialect.quote(&info.id_column)?;
        let mut sql = format!(
            "SELECT {} FROM {}",
            info.select_list(&[])?,
            MysqlDialect.quote(&name)?
        );
        let mut binds = Vec::new();
        if let Some(after) = &snap.after {
            sql.push_str(&format!(" WHERE {qi} > ?"));
            binds.push(bind_of(after).map_err(|e| data_err(here, &name, e))?);
        }
        sql.push_str(&format!(" ORDER BY {qi} LIMIT ?"));
        binds.push(Bind::Integer(
            i64::try_from(self.s.batch_size).unwrap_or(i64::MAX),
        ));
        let rows = query_with(&sql, binds)
            .fetch_all(&mut snap.conn)
            .await
            .map_err(|e| mysql_error(format!("{here}: reading table {name:?}"), e))?;
        let full = rows.len() >= self.s.batch_size;
        let mut deltas = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let PolledRow {
                row_id,
                id: id_raw,
                values: after,
                ..
            } = read_row(row, info, 0).map_err(|(col, e)| {
                data_err(
                    here,
                    &name,
                    match col {
                        Some(c) => format!("column {c:?}: {e}"),
                        None => e,
                    },
                )
            })?;
            last = Some(position_value(id_raw).map_err(|e| data_err(here, &name, e))?);
            deltas.push(insert_delta(
                &info.schema,
                row_id,
                &self.s.client_id,
                &self.s.hlc,
                after,
            ));
        }
        if let Some(last) = last {
            let mut entry = Map::new();
            entry.insert("table".into(), Value::String(name.clone()));
            entry.insert("after".into(), last.clone());
            let mut position = Map::new();
            position.insert("snapshot".into(), Value::Object(entry));
            let batch = SourceBatch {
                table: Arc::clone(&info.schema),
                batch: deltas_to_batch(&info.schema, &deltas)
                    .map_err(|e| Error::schema(format!("{here}: table {name:?}: {e}")))?,
                position: Position(Value::Object(position)),
            };
            if let Some(held) = snap.held.replace(batch) {
                self.out.push_back(held);
            }
            snap.after = Some(last);
        }
        if !full {
            snap.table += 1;
            snap.after = None;
        }
        Ok(())
    }

    /// Reads binlog events until a batch is ready or the stream ends.
    async fn stream_step(&mut self) -> Result<()> {
        let Phase::Stream(start) = &self.phase else {
            return Ok(());
        };
        let mut backoff = BACKOFF.0;
        loop {
            if self.stream.is_none() {
                let start = start.clone();
                match Streamer::connect(&self.s, &start, self.end.is_some()).await {
                    Ok(streamer) => self.stream = Some(streamer),
                    Err(e) if self.is_follow() && retryable(&e) => {
                        tracing::warn!(source = %self.s.here, error = %e, delay = ?backoff, "binlog connection failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF.1);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(streamer) = self.stream.as_mut() else {
                continue;
            };
            let step = streamer
                .step(
                    &self.s,
                    &self.tables,
                    &self.by_name,
                    &self.database,
                    self.end.as_ref(),
                )
                .await;
            match step {
                Ok(Step::Batch(batch, pos)) => {
                    self.out.push_back(batch);
                    self.phase = Phase::Stream(pos);
                    return Ok(());
                }
                Ok(Step::End) => {
                    if let Some(streamer) = self.stream.take() {
                        streamer.close().await;
                    }
                    self.done = true;
                    return Ok(());
                }
                Err(e) if self.is_follow() && retryable(&e) => {
                    tracing::warn!(source = %self.s.here, error = %e, delay = ?backoff, "binlog stream lost; reconnecting from the last emitted position");
                    if let Some(streamer) = self.stream.take() {
                        streamer.close().await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn is_follow(&self) -> bool {
        self.end.is_none()
    }
}

fn data_err(here: &str, table: &str, msg: impl std::fmt::Display) -> Error {
    Error::invalid("source data", format!("{here}: table {table:?}: {msg}"))
}

/// What one [`Streamer::step`] produced.
enum Step {
    /// A batch and the position after it.
    Batch(SourceBatch, BinlogPos),
    /// The stream ended (`Once`/replay: the end of the binlog as it was at open).
    End,
}

/// An open binlog stream and where it is.
struct Streamer {
    stream: BinlogStream,
    /// The current file and the last transaction boundary in it.
    file: String,
    tx_start: u64,
    /// Row changes of the current transaction seen so far, and how many of them to drop (those
    /// a resumed position says were already emitted).
    count: u64,
    skip: u64,
    /// Whether a format description was seen (the first, artificial rotate precedes it and its
    /// name cannot be trusted).
    seen_format: bool,
    /// Whether a transaction (`BEGIN`) is open.
    in_tx: bool,
    /// The batch being built: table index and deltas.
    building: Option<(usize, Vec<RowDelta>)>,
    /// Finished batches not yet returned, with their positions.
    ready: VecDeque<(SourceBatch, BinlogPos)>,
}

impl Streamer {
    async fn connect(s: &CdcSettings, at: &BinlogPos, non_blocking: bool) -> Result<Self> {
        let here = &s.here;
        let opts = mysql_async::Opts::from_url(&s.url).map_err(|e| {
            Error::invalid(
                "mysql url",
                format!("{here}: not a MySQL URL for the binlog connection: {e}"),
            )
        })?;
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| binlog_error(format!("{here}: connecting for the binlog"), e))?;
        let heartbeat_ns = HEARTBEAT.as_nanos();
        conn.query_drop(format!("SET @master_heartbeat_period = {heartbeat_ns}"))
            .await
            .map_err(|e| binlog_error(format!("{here}: setting the heartbeat"), e))?;
        let mut request = BinlogStreamRequest::new(s.server_id)
            .with_filename(at.file.as_bytes())
            .with_pos(at.pos);
        if non_blocking {
            request = request.with_non_blocking();
        }
        let stream = conn.get_binlog_stream(request).await.map_err(|e| {
            binlog_error(
                format!(
                    "{here}: requesting the binlog from {} at {} (server id {})",
                    at.file, at.pos, s.server_id
                ),
                e,
            )
        })?;
        tracing::debug!(source = %here, file = %at.file, pos = at.pos, skip = at.skip, "binlog stream opened");
        Ok(Self {
            stream,
            file: at.file.clone(),
            tx_start: at.pos,
            count: 0,
            skip: at.skip,
            seen_format: false,
            in_tx: false,
            building: None,
            ready: VecDeque::new(),
        })
    }

    async fn close(self) {
        self.stream.close().await.ok();
    }

    /// Ends the batch being built (if any), to be emitted with position `pos`.
    fn finish_batch(&mut self, tables: &[TableInfo], pos: BinlogPos, here: &str) -> Result<()> {
        let Some((index, deltas)) = self.building.take() else {
            return Ok(());
        };
        let info = &tables[index];
        let batch = deltas_to_batch(&info.schema, &deltas)
            .map_err(|e| Error::schema(format!("{here}: table {:?}: {e}", info.schema.table)))?;
        let position = pos.to_position();
        self.ready.push_back((
            SourceBatch {
                table: Arc::clone(&info.schema),
                batch,
                position,
            },
            pos,
        ));
        Ok(())
    }

    fn mid_tx(&self) -> BinlogPos {
        BinlogPos {
            file: self.file.clone(),
            pos: self.tx_start,
            skip: self.count,
        }
    }

    async fn step(
        &mut self,
        s: &CdcSettings,
        tables: &[TableInfo],
        by_name: &HashMap<String, usize>,
        database: &str,
        end: Option<&(String, u64)>,
    ) -> Result<Step> {
        let here = s.here.as_str();
        loop {
            if let Some((batch, pos)) = self.ready.pop_front() {
                return Ok(Step::Batch(batch, pos));
            }
            let boundary = BinlogPos {
                file: self.file.clone(),
                pos: self.tx_start,
                skip: 0,
            };
            if self.count == 0 && end.is_some_and(|e| boundary.reached(e)) {
                return Ok(Step::End);
            }
            let event = match tokio::time::timeout(SILENCE, self.stream.next()).await {
                Err(_) => {
                    return Err(Error::External {
                        system: super::SYSTEM,
                        message: format!("{here}: no binlog event or heartbeat for {SILENCE:?}"),
                        retryable: true,
                        source: None,
                    });
                }
                Ok(None) if end.is_some() => {
                    // The server ended a non-blocking stream at the end of the binlog (always
                    // at a transaction boundary, so nothing is being built).
                    return Ok(Step::End);
                }
                Ok(None) => {
                    // Following, the server never ends the stream of its own accord: it was
                    // closed (a restart, or another replica registering with the same id).
                    return Err(Error::External {
                        system: super::SYSTEM,
                        message: format!(
                            "{here}: the server closed the binlog stream (is another replica using server id {}?)",
                            s.server_id
                        ),
                        retryable: true,
                        source: None,
                    });
                }
                Ok(Some(event)) => {
                    event.map_err(|e| binlog_error(format!("{here}: reading the binlog"), e))?
                }
            };
            let log_pos = u64::from(event.header().log_pos());
            let data = event.read_data().map_err(|e| Error::External {
                system: super::SYSTEM,
                message: format!(
                    "{here}: cannot parse a binlog event at {}:{log_pos}: {e}",
                    self.file
                ),
                retryable: false,
                source: Some(Box::new(e)),
            })?;
            let mut boundary_at = None;
            match data {
                Some(EventData::FormatDescriptionEvent(_)) => self.seen_format = true,
                Some(EventData::RotateEvent(rotate)) if self.seen_format => {
                    self.file = rotate.name().into_owned();
                    self.tx_start = rotate.position();
                    self.count = 0;
                }
                Some(EventData::XidEvent(_)) => {
                    self.in_tx = false;
                    boundary_at = Some(log_pos);
                }
                Some(EventData::QueryEvent(query)) => {
                    let text = query.query();
                    let word = text.trim();
                    if word.eq_ignore_ascii_case("BEGIN") {
                        self.in_tx = true;
                    } else if word.eq_ignore_ascii_case("COMMIT")
                        || word.eq_ignore_ascii_case("ROLLBACK")
                    {
                        // The end of a transaction on non-transactional tables.
                        self.in_tx = false;
                        boundary_at = Some(log_pos);
                    } else if !self.in_tx && !word.starts_with('#') {
                        // DDL, which is its own transaction. (Inside a transaction a query
                        // event is a SAVEPOINT or the like, and no boundary.)
                        boundary_at = Some(log_pos);
                    }
                }
                Some(EventData::RowsEvent(rows)) => {
                    let Some(tme) = self.stream.get_tme(rows.table_id()) else {
                        return Err(Error::internal(format!(
                            "{here}: a rows event for table id {} without its table map",
                            rows.table_id()
                        )));
                    };
                    if tme.database_name() != database {
                        continue;
                    }
                    let Some(&index) = by_name.get(tme.table_name().as_ref()) else {
                        continue;
                    };
                    let info = &tables[index];
                    let images = collect_rows(&rows, tme)
                        .map_err(|e| data_err(here, &info.schema.table, e))?;
                    for (before, after) in images {
                        let deltas = row_deltas(s, info, before, after)
                            .map_err(|e| data_err(here, &info.schema.table, e))?;
                        let seen = self.count;
                        self.count += 1;
                        if seen < self.skip || deltas.is_empty() {
                            continue;
                        }
                        // A batch holds one table: another table's change ends it.
                        if self.building.as_ref().is_some_and(|(t, _)| *t != index) {
                            let pos = BinlogPos {
                                file: self.file.clone(),
                                pos: self.tx_start,
                                skip: seen,
                            };
                            self.finish_batch(tables, pos, here)?;
                        }
                        let building = self.building.get_or_insert_with(|| (index, Vec::new()));
                        building.1.extend(deltas);
                        if building.1.len() >= s.batch_size {
                            let pos = self.mid_tx();
                            self.finish_batch(tables, pos, here)?;
                        }
                    }
                }
                _ => {}
            }
            if let Some(at) = boundary_at.filter(|p| *p > 0) {
                self.tx_start = at;
                self.count = 0;
                self.skip = 0;
                let pos = BinlogPos {
                    file: self.file.clone(),
                    pos: at,
                    skip: 0,
                };
                self.finish_batch(tables, pos, here)?;
            }
        }
    }
}

/// The (before, after) images of a rows event.
type Images = Vec<(Option<BinlogRow>, Option<BinlogRow>)>;

fn collect_rows(
    rows: &RowsEventData<'_>,
    tme: &mysql_async::binlog::events::TableMapEvent<'_>,
) -> std::result::Result<Images, String> {
    if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)) {
        return Err(
            "a partial JSON update event; set binlog_row_value_options='' (full JSON images)"
                .into(),
        );
    }
    rows.rows(tme)
        .map(|r| r.map_err(|e| format!("cannot decode a row image: {e}")))
        .collect()
}

/// A row image as (row id, data columns by name); columns missing from the image are absent.
fn image(
    info: &TableInfo,
    mut row: BinlogRow,
) -> std::result::Result<(Option<String>, Map<String, Value>), String> {
    let names: Vec<String> = row
        .columns_ref()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c.name_str();
            if name.is_empty() {
                info.ordinal.get(i).cloned().unwrap_or_default()
            } else {
                name.into_owned()
            }
        })
        .collect();
    let mut row_id = None;
    let mut values = Map::new();
    for (i, name) in names.iter().enumerate() {
        let is_id = *name == info.id_column;
        let column = info.schema.column(name);
        if !is_id && column.is_none() {
            continue;
        }
        let Some(value) = row.take(i) else {
            continue;
        };
        let value =
            mysql_async::Value::try_from(value).map_err(|e| format!("column {name:?}: {e}"))?;
        // The binlog carries enum and set values as an index or a (little-endian) bit mask.
        let value = match (info.labels.get(name), value) {
            (Some((is_set, labels)), mysql_async::Value::Bytes(bytes)) if bytes.len() <= 8 => {
                let mask = bytes
                    .iter()
                    .rev()
                    .fold(0u64, |m, b| (m << 8) | u64::from(*b));
                label_text(*is_set, labels, Raw::UInt(mask))
            }
            (Some((is_set, labels)), v) => label_text(
                *is_set,
                labels,
                Raw::from_binlog(v).map_err(|e| format!("column {name:?}: {e}"))?,
            ),
            (None, v) => Raw::from_binlog(v).map_err(|e| format!("column {name:?}: {e}"))?,
        };
        if is_id {
            row_id = Some(row_id_of(&value)?);
        } else if let Some(def) = column {
            let json =
                to_json(value, def.column_type).map_err(|e| format!("column {name:?}: {e}"))?;
            values.insert(name.clone(), json);
        }
    }
    Ok((row_id, values))
}

/// The deltas of one row change.
fn row_deltas(
    s: &CdcSettings,
    info: &TableInfo,
    before: Option<BinlogRow>,
    after: Option<BinlogRow>,
) -> std::result::Result<Vec<RowDelta>, String> {
    let schema = &info.schema;
    let before = before.map(|r| image(info, r)).transpose()?;
    let after = after.map(|r| image(info, r)).transpose()?;
    let missing_id = || format!("a row change without its id column {:?}", info.id_column);
    let delete = |row_id: String| {
        RowDelta::new(
            DeltaOp::Delete,
            schema.delta_table(),
            row_id,
            s.client_id.clone(),
            Vec::new(),
            s.hlc.now(),
        )
    };
    Ok(match (before, after) {
        (None, None) => Vec::new(),
        (None, Some((id, values))) => {
            let id = id.ok_or_else(missing_id)?;
            vec![insert_delta(schema, id, &s.client_id, &s.hlc, values)]
        }
        (Some((id, _)), None) => vec![delete(id.ok_or_else(missing_id)?)],
        (Some((old_id, old)), Some((new_id, new))) => {
            let new_id = new_id.ok_or_else(missing_id)?;
            match old_id {
                Some(old_id) if old_id != new_id => vec![
                    delete(old_id),
                    insert_delta(schema, new_id, &s.client_id, &s.hlc, new),
                ],
                _ => {
                    let columns: Vec<ColumnDelta> = schema
                        .columns
                        .iter()
                        .filter_map(|c| {
                            let value = new.get(&c.name)?;
                            (old.get(&c.name) != Some(value))
                                .then(|| ColumnDelta::new(c.name.clone(), value.clone()))
                        })
                        .collect();
                    if columns.is_empty() {
                        Vec::new()
                    } else {
                        vec![RowDelta::new(
                            DeltaOp::Update,
                            schema.delta_table(),
                            new_id,
                            s.client_id.clone(),
                            columns,
                            s.hlc.now(),
                        )]
                    }
                }
            }
        }
    })
}

fn retryable(e: &Error) -> bool {
    matches!(e.kind(), crate::ErrorKind::External { retryable: true })
}
