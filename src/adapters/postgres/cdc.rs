//! Log-based change data capture from Postgres: a publication, a `pgoutput` logical
//! replication slot, a consistent initial snapshot, then every change in commit order.
//!
//! **Setup.** The publication (default `lakesync_<source>`) is created for the source's tables,
//! or tables are added to it; the slot (default `lakesync_<source>`) is created with the
//! `pgoutput` plugin. Each table's `id_column` must be in its replica identity (its primary key,
//! or `REPLICA IDENTITY FULL`), or deletes could not name their row: that is checked first.
//!
//! **Initial snapshot.** On first start the slot is (re)created *before* the snapshot is taken,
//! so every transaction that commits after the snapshot is in the slot. The tables are then
//! copied ([`super::snapshot`]) under one exported snapshot, whose `pg_current_snapshot()` and WAL
//! position are kept in the position: a transaction in the slot whose commit precedes that
//! position and which the snapshot already sees (by its xid) is skipped, so nothing arrives twice
//! and nothing is missed. An interrupted snapshot cannot be repeated exactly (the data moved on):
//! it is taken again from the start, and rows it had already delivered arrive again as INSERTs
//! with newer HLCs (the rows' state is the same); the runtime is told not to replay it.
//!
//! **Streaming.** The slot is read with `pg_logical_slot_peek_binary_changes` (peek: nothing is
//! consumed by reading). INSERT becomes an INSERT delta of every column; UPDATE an UPDATE of the
//! columns it sets (only those that changed when the old row is sent, as with `REPLICA IDENTITY
//! FULL`; never an unchanged TOASTed value), or a DELETE and an INSERT when the row id changed;
//! DELETE a DELETE. TRUNCATE is not propagated (a warning says so). Deltas keep WAL order, in
//! batches of one table; an HLC from the source's clock is issued per delta, in that order.
//!
//! **Position** `{"phase": "stream", "lsn": L, "skip": k}`: every transaction whose commit ends
//! at or before `L` is delivered, and so are the first `k` deltas of the next one (a batch may end
//! inside a transaction). **The slot is advanced only when the runtime reports that every sink
//! has committed a position** ([`CdcSlot::advance`]), so a crash re-reads from the last committed
//! position and loses nothing. **Heartbeat**: while the source is idle and everything it sent is
//! committed, it moves the slot to the WAL position read before a peek that found nothing for
//! it, every `heartbeat_interval`, so WAL written for other tables is not retained.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgConnection;
use tokio::sync::Mutex;

use super::pgoutput::{self, Cell, Message, Relation, format_lsn, parse_lsn};
use super::snapshot::SnapshotInfo;
use super::types::text_to_json;
use super::{connect, data_error, ident, pg_error, qualified};
use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::delta_batch::deltas_to_batch;
use crate::kernel::hlc::Hlc;
use crate::runtime::api::{Position, ReadMode, SourceBatch, TableRef};
use crate::{Error, Result};

/// The stream position of a CDC source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The end LSN of the last transaction wholly delivered.
    pub lsn: String,
    /// Deltas of the next transaction already delivered.
    pub skip: u64,
    /// The initial snapshot, while transactions it may hold can still arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
}

/// The replication slot, shared by the reader and the source's commit hook.
#[derive(Debug)]
pub struct CdcSlot {
    url: String,
    slot: String,
    here: String,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    conn: Option<PgConnection>,
    /// The slot's confirmed position as far as this process knows.
    confirmed: u64,
    /// The newest position handed to the runtime.
    emitted: u64,
}

impl CdcSlot {
    /// The slot `slot` at `url`.
    pub fn new(url: &str, slot: &str, here: &str) -> Self {
        Self {
            url: url.to_string(),
            slot: slot.to_string(),
            here: here.to_string(),
            state: Mutex::new(SlotState::default()),
        }
    }

    /// Moves the slot's confirmed position to `lsn` (never backwards).
    pub async fn advance(&self, lsn: u64) -> Result<()> {
        let mut state = self.state.lock().await;
        if lsn <= state.confirmed {
            return Ok(());
        }
        if state.conn.is_none() {
            state.conn = Some(connect(&self.url, &self.here).await?);
        }
        let Some(conn) = state.conn.as_mut() else {
            return Err(Error::internal("slot connection missing"));
        };
        // The slot may already be past `lsn` (advanced by another run): then nothing to do.
        let result = sqlx::query(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn) \
             FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
        )
        .bind(&self.slot)
        .bind(format_lsn(lsn))
        .fetch_optional(&mut *conn)
        .await;
        if let Err(e) = result {
            state.conn = None;
            return Err(pg_error(
                format!(
                    "{}: advancing slot {:?} to {}",
                    self.here,
                    self.slot,
                    format_lsn(lsn)
                ),
                e,
            ));
        }
        state.confirmed = lsn;
        tracing::debug!(slot = %self.slot, lsn = %format_lsn(lsn), "replication slot advanced");
        Ok(())
    }

    async fn note_emitted(&self, lsn: u64) {
        let mut state = self.state.lock().await;
        state.emitted = state.emitted.max(lsn);
    }

    async fn note_confirmed(&self, lsn: u64) {
        let mut state = self.state.lock().await;
        state.confirmed = state.confirmed.max(lsn);
    }

    /// Whether everything handed to the runtime has been committed.
    async fn idle(&self) -> bool {
        let state = self.state.lock().await;
        state.emitted <= state.confirmed
    }
}

/// One table the CDC source reads.
#[derive(Clone, Debug)]
pub struct CdcTable {
    /// The table.
    pub table: TableRef,
    /// The column holding the row id.
    pub id_column: String,
}

/// Settings of a CDC read.
#[derive(Clone, Debug)]
pub struct CdcSettings {
    /// The connection URL.
    pub url: String,
    /// The Postgres schema of the tables.
    pub pg_schema: String,
    /// The publication.
    pub publication: String,
    /// How often to peek when idle.
    pub poll_interval: Duration,
    /// How often an idle slot is moved on.
    pub heartbeat_interval: Duration,
    /// Deltas per batch.
    pub batch_size: usize,
    /// The writer id of the deltas.
    pub client_id: String,
    /// Names the source in errors.
    pub here: String,
}

/// Creates or extends the publication, checks replica identities, and makes sure the slot
/// exists: recreated when `fresh` (no position to resume from), created when missing and the
/// resume does not need its history, refused when a stream position needs a slot that is gone.
pub async fn prepare(
    settings: &CdcSettings,
    slot: &CdcSlot,
    tables: &[CdcTable],
    fresh: bool,
    needs_history: bool,
) -> Result<()> {
    let here = &settings.here;
    let mut conn = connect(&settings.url, here).await?;
    for t in tables {
        check_replica_identity(&mut conn, settings, t).await?;
    }
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT pubname::text FROM pg_publication WHERE pubname = $1")
            .bind(&settings.publication)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| pg_error(format!("{here}: reading publications"), e))?;
    let names = tables
        .iter()
        .map(|t| qualified(&settings.pg_schema, &t.table.table))
        .collect::<Result<Vec<_>>>()?;
    if exists.is_none() {
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            ident(&settings.publication)?,
            names.join(", ")
        );
        sqlx::query(&sql)
            .execute(&mut conn)
            .await
            .map_err(|e| pg_error(format!("{here}: creating publication"), e))?;
    } else {
        for (t, name) in tables.iter().zip(&names) {
            let member: Option<(i32,)> = sqlx::query_as(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            )
            .bind(&settings.publication)
            .bind(&settings.pg_schema)
            .bind(&t.table.table)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| pg_error(format!("{here}: reading the publication"), e))?;
            if member.is_none() {
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {name}",
                    ident(&settings.publication)?
                );
                sqlx::query(&sql)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| pg_error(format!("{here}: extending the publication"), e))?;
            }
        }
    }

    let current: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT plugin::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot.slot)
    .fetch_optional(&mut conn)
    .await
    .map_err(|e| pg_error(format!("{here}: reading replication slots"), e))?;
    match current {
        Some((plugin, _)) if plugin != "pgoutput" => {
            return Err(Error::invalid(
                "postgres source",
                format!(
                    "{here}: replication slot {:?} uses plugin {plugin:?}, not pgoutput; name another slot",
                    slot.slot
                ),
            ));
        }
        Some(_) if fresh => {
            tracing::warn!(slot = %slot.slot, "no position to resume from: recreating the replication slot");
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&slot.slot)
                .execute(&mut conn)
                .await
                .map_err(|e| pg_error(format!("{here}: dropping slot {:?}", slot.slot), e))?;
            create_slot(&mut conn, &slot.slot, here).await?;
        }
        Some((_, confirmed)) => {
            if let Some(lsn) = confirmed.as_deref().and_then(parse_lsn) {
                slot.note_confirmed(lsn).await;
            }
        }
        None if needs_history => {
            return Err(Error::invalid(
                "postgres source",
                format!(
                    "{here}: replication slot {:?} is gone, so changes since the saved position are lost; delete the pipeline's state to start again with a new snapshot",
                    slot.slot
                ),
            ));
        }
        None => create_slot(&mut conn, &slot.slot, here).await?,
    }
    let _ = sqlx::Connection::close(conn).await;
    Ok(())
}

async fn create_slot(conn: &mut PgConnection, slot: &str, here: &str) -> Result<()> {
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(slot)
        .execute(conn)
        .await
        .map_err(|e| pg_error(format!("{here}: creating replication slot {slot:?}"), e))?;
    tracing::info!(slot, "replication slot created");
    Ok(())
}

async fn check_replica_identity(
    conn: &mut PgConnection,
    settings: &CdcSettings,
    t: &CdcTable,
) -> Result<()> {
    let here = &settings.here;
    let row = sqlx::query(
        "SELECT c.relreplident::text AS ident, \
                EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
                          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                        WHERE i.indrelid = c.oid AND a.attname = $3 \
                          AND ((c.relreplident = 'd' AND i.indisprimary) \
                               OR (c.relreplident = 'i' AND i.indisreplident))) AS in_key \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(&settings.pg_schema)
    .bind(&t.table.table)
    .bind(&t.id_column)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| pg_error(format!("{here}: reading replica identities"), e))?
    .ok_or_else(|| {
        Error::invalid(
            "postgres source",
            format!(
                "{here}: table {}.{} does not exist",
                settings.pg_schema, t.table.table
            ),
        )
    })?;
    let identity: String = row
        .try_get("ident")
        .map_err(|e| pg_error(format!("{here}: reading replica identities"), e))?;
    let in_key: bool = row
        .try_get("in_key")
        .map_err(|e| pg_error(format!("{here}: reading replica identities"), e))?;
    if identity == "f" || in_key {
        return Ok(());
    }
    Err(Error::invalid(
        "postgres source",
        format!(
            "{here}: table {:?}: id_column {:?} is not in the table's replica identity, so a DELETE could not say which row it removed; make it the primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL",
            t.table.table,
            t.id_column,
            qualified(&settings.pg_schema, &t.table.table).unwrap_or_default()
        ),
    ))
}

/// How a table's relation columns map to its LakeSync columns.
struct Mapping {
    table: usize,
    /// Position of the id column in the relation.
    id: usize,
    /// Per relation column: the data column index and its type OID, when synced.
    columns: Vec<Option<usize>>,
    type_oids: Vec<u32>,
}

/// The streaming reader.
pub struct StreamReader {
    settings: CdcSettings,
    slot: Arc<CdcSlot>,
    tables: Vec<CdcTable>,
    by_name: HashMap<String, usize>,
    hlc: Arc<Hlc>,
    conn: PgConnection,
    mode: ReadMode,
    /// Where the stream is (what has been handed out).
    position: StreamPosition,
    until: Option<StreamPosition>,
    /// Peek limit (changes); doubled while a peek returns only what was already handed out.
    limit: i64,
    relations: HashMap<u32, Mapping>,
    ready: std::collections::VecDeque<SourceBatch>,
    last_heartbeat: Instant,
    /// The newest position queued (for the heartbeat's idle check).
    emitted_mark: u64,
    done: bool,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("here", &self.settings.here)
            .field("position", &self.position)
            .finish()
    }
}

const MIN_PEEK: i64 = 10_000;

impl StreamReader {
    /// A reader from `position` (the stream's start when `None`: everything in the slot).
    pub async fn open(
        settings: CdcSettings,
        slot: Arc<CdcSlot>,
        tables: Vec<CdcTable>,
        hlc: Arc<Hlc>,
        position: StreamPosition,
        mode: ReadMode,
        until: Option<StreamPosition>,
    ) -> Result<Self> {
        let conn = connect(&settings.url, &settings.here).await?;
        if let Some(lsn) = parse_lsn(&position.lsn) {
            slot.note_emitted(lsn).await;
        }
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.table.table.clone(), i))
            .collect();
        Ok(Self {
            settings,
            slot,
            tables,
            by_name,
            hlc,
            conn,
            mode,
            position,
            until,
            limit: MIN_PEEK,
            relations: HashMap::new(),
            ready: Default::default(),
            last_heartbeat: Instant::now(),
            emitted_mark: 0,
            done: false,
        })
    }

    /// The next batch, or `None` at the end of a `Once` or `Replay` read.
    pub async fn next(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Ok(Some(batch));
            }
            if self.done {
                return Ok(None);
            }
            let wal_before = self.current_wal_lsn().await?;
            let found = self.peek().await?;
            if found {
                continue;
            }
            match self.mode {
                ReadMode::Once | ReadMode::Replay { .. } => self.done = true,
                ReadMode::Follow { .. } => {
                    if self.last_heartbeat.elapsed() >= self.settings.heartbeat_interval {
                        self.heartbeat(wal_before).await?;
                    }
                    tokio::time::sleep(self.settings.poll_interval).await;
                }
            }
        }
    }

    async fn current_wal_lsn(&mut self) -> Result<u64> {
        let (lsn,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| {
                pg_error(
                    format!("{}: reading the WAL position", self.settings.here),
                    e,
                )
            })?;
        parse_lsn(&lsn).ok_or_else(|| data_error(&self.settings.here, format!("bad LSN {lsn:?}")))
    }

    /// Moves an idle slot to `lsn` (read before a peek that found nothing new).
    async fn heartbeat(&mut self, lsn: u64) -> Result<()> {
        self.last_heartbeat = Instant::now();
        if !self.slot.idle().await {
            return Ok(());
        }
        self.slot.advance(lsn).await
    }

    /// Peeks at the slot and queues the batches of changes not yet handed out; whether any
    /// were.
    async fn peek(&mut self) -> Result<bool> {
        let here = self.settings.here.clone();
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2::int4, \
             'proto_version', '1', 'publication_names', $3)",
        )
        .bind(&self.slot.slot)
        .bind(self.limit as i32)
        .bind(&self.settings.publication)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| pg_error(format!("{here}: reading the replication slot"), e))?;
        let returned = rows.len() as i64;
        let start = parse_lsn(&self.position.lsn).unwrap_or(0);
        let queued_before = self.ready.len();

        // Per transaction.
        let mut txn_skip = true;
        let mut txn_index = 0u64; // deltas of this transaction seen so far
        let mut txn_filtered = false;
        let mut batch: Vec<RowDelta> = Vec::new();
        let mut batch_table: Option<usize> = None;
        let mut last_end = start;
        for (_, data) in &rows {
            let message = pgoutput::decode(data)?;
            match message {
                Message::Relation(rel) => self.learn(rel)?,
                Message::Begin { final_lsn, xid } => {
                    txn_skip = final_lsn < start;
                    txn_index = 0;
                    txn_filtered = !txn_skip && self.snapshot_holds(final_lsn, xid)?;
                }
                Message::Commit { end_lsn, .. } => {
                    if txn_skip {
                        continue;
                    }
                    last_end = end_lsn;
                    self.position.lsn = format_lsn(end_lsn);
                    self.position.skip = 0;
                    if let Some(info) = &self.position.snapshot
                        && parse_lsn(&info.wal_lsn).is_some_and(|w| end_lsn >= w)
                    {
                        self.position.snapshot = None;
                    }
                    if self.reached_until() {
                        self.flush(&mut batch, batch_table)?;
                        self.done = true;
                        break;
                    }
                }
                Message::Truncate { relations } => {
                    for r in relations {
                        if let Some(m) = self.relations.get(&r) {
                            tracing::warn!(source = %here, table = %self.tables[m.table].table.table, "TRUNCATE is not propagated; the rows stay downstream");
                        }
                    }
                }
                Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } => {
                    if txn_skip {
                        continue;
                    }
                    let Some((table, deltas)) = self.deltas_of(&message)? else {
                        continue;
                    };
                    for delta in deltas {
                        txn_index += 1;
                        if txn_filtered || (last_end == start && txn_index <= self.position.skip) {
                            continue;
                        }
                        if batch_table != Some(table) || batch.len() >= self.settings.batch_size {
                            self.flush(&mut batch, batch_table)?;
                            batch_table = Some(table);
                        }
                        batch.push(delta);
                        if last_end == start {
                            self.position.skip = self.position.skip.max(txn_index);
                        } else {
                            self.position.skip = txn_index;
                        }
                        if self.reached_until() {
                            self.flush(&mut batch, batch_table)?;
                            self.done = true;
                            break;
                        }
                    }
                    if self.done {
                        break;
                    }
                }
                Message::Other(_) => {}
            }
        }
        if !self.done {
            self.flush(&mut batch, batch_table)?;
        }
        self.slot.note_emitted(self.emitted_mark).await;
        let queued = self.ready.len() > queued_before;
        // Only changes already handed out came back: the runtime has not committed them yet.
        // Look further next time.
        if !queued && returned >= self.limit {
            self.limit = self.limit.saturating_mul(2).min(1 << 30);
        } else if queued {
            self.limit = MIN_PEEK;
        }
        Ok(queued)
    }

    fn reached_until(&self) -> bool {
        self.until
            .as_ref()
            .is_some_and(|u| u.lsn == self.position.lsn && u.skip == self.position.skip)
    }

    /// Queues `batch` (of table `table`) with the current position.
    fn flush(&mut self, batch: &mut Vec<RowDelta>, table: Option<usize>) -> Result<()> {
        let (Some(table), false) = (table, batch.is_empty()) else {
            return Ok(());
        };
        let schema = Arc::clone(&self.tables[table].table);
        let deltas = std::mem::take(batch);
        let record = deltas_to_batch(&schema, &deltas).map_err(|e| {
            Error::schema(format!(
                "{}: table {:?}: {e}",
                self.settings.here, schema.table
            ))
        })?;
        let position = serde_json::to_value(&self.position)
            .map_err(|e| Error::internal(format!("serialising a CDC position: {e}")))?;
        let mut wrapped = serde_json::Map::new();
        wrapped.insert("phase".into(), Value::String("stream".into()));
        if let Value::Object(fields) = position {
            wrapped.extend(fields);
        }
        if let Some(lsn) = parse_lsn(&self.position.lsn) {
            // For the heartbeat: a position inside a transaction counts as just past its start.
            self.emitted_mark = self
                .emitted_mark
                .max(lsn + u64::from(self.position.skip > 0));
        }
        self.ready.push_back(SourceBatch {
            table: schema,
            batch: record,
            position: Position(Value::Object(wrapped)),
        });
        Ok(())
    }

    /// Whether the initial snapshot already holds the transaction `xid` committing at `lsn`.
    fn snapshot_holds(&self, commit_lsn: u64, xid: u32) -> Result<bool> {
        let Some(info) = &self.position.snapshot else {
            return Ok(false);
        };
        let Some(wal) = parse_lsn(&info.wal_lsn) else {
            return Ok(false);
        };
        if commit_lsn >= wal {
            return Ok(false);
        }
        let visible = xid_visible(&info.snapshot, xid).ok_or_else(|| {
            data_error(
                &self.settings.here,
                format!("bad snapshot {:?}", info.snapshot),
            )
        })?;
        Ok(visible)
    }

    fn learn(&mut self, rel: Relation) -> Result<()> {
        if rel.namespace != self.settings.pg_schema {
            return Ok(());
        }
        let Some(&table) = self.by_name.get(&rel.name) else {
            return Ok(());
        };
        let t = &self.tables[table];
        let id = rel
            .columns
            .iter()
            .position(|c| c.name == t.id_column)
            .ok_or_else(|| {
                data_error(
                    &self.settings.here,
                    format!("table {:?} has no column {:?}", rel.name, t.id_column),
                )
            })?;
        let columns = rel
            .columns
            .iter()
            .map(|c| t.table.position(&c.name).filter(|_| c.name != t.id_column))
            .collect();
        let type_oids = rel.columns.iter().map(|c| c.type_oid).collect();
        self.relations.insert(
            rel.id,
            Mapping {
                table,
                id,
                columns,
                type_oids,
            },
        );
        Ok(())
    }

    /// The deltas a change message makes, with the table index; `None` for other tables.
    fn deltas_of(&self, message: &Message) -> Result<Option<(usize, Vec<RowDelta>)>> {
        let relation = match message {
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. } => *relation,
            _ => return Ok(None),
        };
        let Some(m) = self.relations.get(&relation) else {
            return Ok(None);
        };
        let t = &self.tables[m.table];
        let here = &self.settings.here;
        let row_id = |cells: &[Cell]| -> Result<String> {
            match cells.get(m.id) {
                Some(Cell::Text(id)) => Ok(id.clone()),
                _ => Err(data_error(
                    here,
                    format!(
                        "a change to table {:?} has no {:?}",
                        t.table.table, t.id_column
                    ),
                )),
            }
        };
        let columns = |cells: &[Cell], old: Option<&[Cell]>| -> Result<Vec<ColumnDelta>> {
            let mut out = Vec::new();
            for (i, cell) in cells.iter().enumerate() {
                let Some(Some(pos)) = m.columns.get(i) else {
                    continue;
                };
                if let Some(old) = old
                    && old.get(i) == Some(cell)
                {
                    continue;
                }
                let def = &t.table.columns[*pos];
                let value = match cell {
                    Cell::Unchanged => continue,
                    Cell::Null => Value::Null,
                    Cell::Text(text) => text_to_json(text, def.column_type, m.type_oids[i])
                        .map_err(|e| {
                            data_error(
                                here,
                                format!("table {:?} column {:?}: {e}", t.table.table, def.name),
                            )
                        })?,
                };
                out.push(ColumnDelta::new(def.name.clone(), value));
            }
            // Schema order, so a delta's content does not depend on the relation's column order.
            out.sort_by_key(|c| t.table.position(&c.column));
            Ok(out)
        };
        let table_name = t.table.delta_table().to_string();
        let make = |op: DeltaOp, row: String, cols: Vec<ColumnDelta>| {
            RowDelta::new(
                op,
                table_name.clone(),
                row,
                self.settings.client_id.clone(),
                cols,
                self.hlc.now(),
            )
        };
        let deltas = match message {
            Message::Insert { new, .. } => {
                vec![make(DeltaOp::Insert, row_id(new)?, columns(new, None)?)]
            }
            Message::Update { old, new, .. } => {
                let new_id = row_id(new)?;
                let old_id = match old {
                    Some(o) => match o.get(m.id) {
                        Some(Cell::Text(id)) => Some(id.clone()),
                        _ => None,
                    },
                    None => None,
                };
                match old_id {
                    Some(old_id) if old_id != new_id => vec![
                        make(DeltaOp::Delete, old_id, Vec::new()),
                        make(DeltaOp::Insert, new_id, columns(new, None)?),
                    ],
                    _ => {
                        // A full old row (REPLICA IDENTITY FULL) lets only changed columns go.
                        let full_old = old.as_deref().filter(|o| o.len() == new.len());
                        let cols = columns(new, full_old)?;
                        if cols.is_empty() {
                            Vec::new()
                        } else {
                            vec![make(DeltaOp::Update, new_id, cols)]
                        }
                    }
                }
            }
            Message::Delete { old, .. } => vec![make(DeltaOp::Delete, row_id(old)?, Vec::new())],
            _ => Vec::new(),
        };
        Ok(Some((m.table, deltas)))
    }
}

/// Whether transaction `xid` (32-bit) is visible in a `pg_current_snapshot()` text
/// (`xmin:xmax:xip,…`, 64-bit ids); `None` when the text does not parse.
pub fn xid_visible(snapshot: &str, xid: u32) -> Option<bool> {
    let mut parts = snapshot.split(':');
    let xmin: u64 = parts.next()?.parse().ok()?;
    let xmax: u64 = parts.next()?.parse().ok()?;
    let xip: Vec<u64> = match parts.next() {
        Some("") | None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?,
    };
    // Widen the 32-bit xid with xmax's epoch; one epoch back if that overshoots.
    let epoch = xmax >> 32;
    let mut full = (epoch << 32) | u64::from(xid);
    if full > xmax && epoch > 0 {
        full -= 1 << 32;
    }
    Some(full < xmin || (full < xmax && !xip.contains(&full)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_visibility() {
        assert_eq!(xid_visible("100:105:102,103", 99), Some(true));
        assert_eq!(xid_visible("100:105:102,103", 101), Some(true));
        assert_eq!(xid_visible("100:105:102,103", 102), Some(false));
        assert_eq!(xid_visible("100:105:", 105), Some(false));
        assert_eq!(xid_visible("100:105:", 200), Some(false));
        assert_eq!(xid_visible("garbage", 1), None);
        // Across an epoch: xmax in epoch 1.
        let xmax = (1u64 << 32) + 10;
        assert_eq!(xid_visible(&format!("{xmax}:{xmax}:"), 5), Some(true));
        assert_eq!(xid_visible(&format!("{xmax}:{xmax}:"), 20), Some(true));
    }
}
