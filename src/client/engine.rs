//! [`SyncEngine`]: brings a [`LocalStore`] and a gateway into agreement.
//!
//! [`SyncEngine::sync_once`] is one round, in this order:
//!
//! 1. **Schemas** — the gateway's schemas of the synced tables are fetched; a server column the
//!    replica lacks becomes `ALTER TABLE ADD COLUMN`; a table the gateway does not serve, or a
//!    local column it does not have, is a schema error.
//! 2. **Checkpoint**, when due — on first contact, after the set of synced tables changed,
//!    after an expired cursor (`CURSOR_EXPIRED`) or a dead letter: every row the token's rules
//!    allow, and the cursor to pull from afterwards (see [`super::apply`]).
//! 3. **Pull** page after page until the gateway has no more, each page applied with its cursor
//!    in one transaction, conflict-aware against pending local changes.
//! 4. **Push** the outbox, oldest first, one DoPut per table and `push_batch` entries;
//!    acknowledged entries leave the outbox, rejected ones are kept or dead-lettered (see
//!    [`super::outbox`]). Pushes are idempotent by deltaId, so a round interrupted anywhere —
//!    the process killed, the network gone — is simply run again.
//! 5. **Pull again** when the push was acknowledged, so the replica holds the server's merge of
//!    what was just pushed, and settle rows the server will not show this client.
//!
//! Rounds never overlap: the engine holds a lock for each (the real-time loop in
//! [`super::realtime`] takes the same lock). Every round's outcome is kept for
//! [`SyncEngine::status`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use crate::kernel::delta::RowDelta;
use crate::kernel::delta_batch::deltas_to_batch;
use crate::{Error, ErrorKind, Result};

use super::backoff::Backoff;
use super::outbox::{AckSummary, OutboxEntry, pending_after};
use super::store::{LocalStore, keys, meta_get, meta_set};
use super::transport::Connection;

/// How an engine syncs.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// The gateway's Flight address (`http://host:port`, `grpc://host:port` or `host:port`).
    pub gateway: String,
    /// The JWT to present (`None` when the gateway runs without auth).
    pub token: Option<String>,
    /// The tables to sync; `None`: every table registered in the store.
    pub tables: Option<Vec<String>>,
    /// Deltas asked for per pull page (the gateway caps it at its `max_pull_limit`).
    pub pull_limit: usize,
    /// Outbox entries per push (keep below the gateway's `max_push_deltas`).
    pub push_batch: usize,
    /// Rejections after which an entry is dead-lettered.
    pub max_attempts: u32,
    /// Reconnect backoff of the real-time loop.
    pub backoff: Backoff,
    /// How often the real-time loop runs a full round besides the live stream.
    pub heartbeat: Duration,
}

impl SyncOptions {
    /// Defaults for `gateway`: no token, every registered table, pages of 10 000, pushes of
    /// 1 000, 10 attempts, 1 s → 30 s backoff, a 30 s heartbeat.
    pub fn new(gateway: impl Into<String>) -> Self {
        Self {
            gateway: gateway.into(),
            token: None,
            tables: None,
            pull_limit: 10_000,
            push_batch: 1_000,
            max_attempts: 10,
            backoff: Backoff::default(),
            heartbeat: Duration::from_secs(30),
        }
    }

    /// With a JWT.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Syncing only `tables`.
    pub fn with_tables(mut self, tables: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tables = Some(tables.into_iter().map(Into::into).collect());
        self
    }
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Rows received from a checkpoint (0 when none was due).
    pub checkpoint_rows: u64,
    /// Pulled changes applied.
    pub pulled: u64,
    /// Local changes the gateway acknowledged (duplicates included).
    pub pushed: u64,
    /// Of those, deltas the gateway already held (a retried push).
    pub duplicates: u64,
    /// Local changes rejected and kept for a retry.
    pub rejected: u64,
    /// Local changes dead-lettered.
    pub dead_lettered: u64,
    /// Local rows removed because the gateway does not show them to this client.
    pub removed: u64,
    /// The pull cursor afterwards.
    pub cursor: u64,
}

/// The engine's state, for people and dashboards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The client id.
    pub client_id: String,
    /// The gateway address.
    pub gateway: String,
    /// Whether the last call to the gateway succeeded.
    pub connected: bool,
    /// Whether a live subscription is open.
    pub realtime: bool,
    /// Local changes waiting to be pushed.
    pub queue_depth: u64,
    /// Dead-lettered local changes.
    pub dead_letters: u64,
    /// The pull cursor (`None` before the first checkpoint).
    pub cursor: Option<u64>,
    /// When the last round succeeded (ms since the Unix epoch).
    pub last_sync_ms: Option<u64>,
    /// The last error, if the last round failed.
    pub last_error: Option<String>,
    /// Rounds failed in a row.
    pub consecutive_failures: u32,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub connected: bool,
    pub realtime: bool,
    pub last_error: Option<String>,
    /// The last rejection a push reported during the current round.
    pub rejection: Option<String>,
    pub failures: u32,
}

/// Syncs one [`LocalStore`] with one gateway (cheap to clone: a handle).
#[derive(Clone, Debug)]
pub struct SyncEngine {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub store: LocalStore,
    pub conn: Connection,
    pub options: SyncOptions,
    pub gate: tokio::sync::Mutex<()>,
    pub state: Mutex<State>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether trying again later may help (network, backpressure, an expired cursor).
pub(crate) fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Backpressure(_) | Error::RateLimited { .. } | Error::CursorExpired { .. }
    ) || matches!(e.kind(), ErrorKind::External { .. })
}

impl SyncEngine {
    /// An engine for `store` and the gateway of `options`. Nothing is dialled yet.
    pub fn new(store: LocalStore, options: SyncOptions) -> Result<Self> {
        let conn = Connection::new(
            &options.gateway,
            options.token.as_deref(),
            store.client_id(),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                conn,
                options,
                gate: tokio::sync::Mutex::new(()),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// The replica.
    pub fn store(&self) -> &LocalStore {
        &self.inner.store
    }

    /// The connection to the gateway.
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes the outcome of a call to the gateway.
    pub(crate) fn record<T>(&self, result: &Result<T>) {
        let mut state = self.state();
        match result {
            Ok(_) => {
                state.connected = true;
                // A round that went through but had changes refused reports the refusal.
                state.last_error = state.rejection.take();
                state.failures = 0;
            }
            Err(e) => {
                drop(state);
                self.note_error(e);
            }
        }
    }

    /// Notes a failed call to the gateway.
    pub(crate) fn note_error(&self, e: &Error) {
        let mut state = self.state();
        state.rejection = None;
        state.connected = !matches!(e.kind(), ErrorKind::External { .. });
        state.last_error = Some(format!("{}: {e}", e.code()));
        state.failures = state.failures.saturating_add(1);
    }

    /// The tables this engine syncs, sorted.
    pub(crate) fn tables(&self) -> Vec<String> {
        let mut tables = self
            .inner
            .options
            .tables
            .clone()
            .unwrap_or_else(|| self.inner.store.table_names());
        tables.sort();
        tables.dedup();
        tables
    }

    /// The engine's state (see [`Status`]).
    pub async fn status(&self) -> Result<Status> {
        let store = &self.inner.store;
        let queue_depth = store.queue_depth().await?;
        let dead_letters = store.dead_letters().await?.len() as u64;
        let (cursor, last_sync_ms) = {
            let mut conn = store.conn().await;
            let cursor = super::store::read_cursor(&mut conn).await?;
            let last = meta_get(&mut conn, keys::LAST_SYNC_MS).await?;
            (cursor, last.and_then(|v| v.parse().ok()))
        };
        let state = self.state();
        Ok(Status {
            client_id: store.client_id().to_string(),
            gateway: self.inner.conn.url().to_string(),
            connected: state.connected,
            realtime: state.realtime,
            queue_depth,
            dead_letters,
            cursor,
            last_sync_ms,
            last_error: state.last_error.clone(),
            consecutive_failures: state.failures,
        })
    }

    /// One round: schemas, checkpoint when due, pull, push, pull (see the module docs).
    pub async fn sync_once(&self) -> Result<SyncReport> {
        let _round = self.inner.gate.lock().await;
        let result = self.round().await;
        self.record(&result);
        match &result {
            Ok(report) => tracing::debug!(?report, "sync round"),
            Err(e) => tracing::warn!(error = %e, "sync round failed"),
        }
        result
    }

    async fn round(&self) -> Result<SyncReport> {
        let tables = self.sync_schemas().await?;
        let mut report = SyncReport::default();
        self.catch_up(&tables, &mut report).await?;
        let pushed = self.push_locked(&mut report).await?;
        if pushed.acknowledged > 0 || pushed.dead_lettered > 0 {
            self.catch_up(&tables, &mut report).await?;
        }
        let store = &self.inner.store;
        let mut conn = store.conn().await;
        meta_set(&mut conn, keys::LAST_SYNC_MS, &now_ms().to_string()).await?;
        report.cursor = super::store::read_cursor(&mut conn).await?.unwrap_or(0);
        Ok(report)
    }

    /// Checkpoint when due, then pull everything and settle rows in flight.
    async fn catch_up(&self, tables: &[String], report: &mut SyncReport) -> Result<()> {
        if self.checkpoint_due(tables).await? {
            self.checkpoint(tables, report).await?;
        }
        match self.pull_all(tables, report).await {
            Err(Error::CursorExpired { cursor, oldest }) => {
                tracing::warn!(
                    cursor,
                    oldest,
                    "the pull cursor expired; starting again from a checkpoint"
                );
                self.checkpoint(tables, report).await?;
                self.pull_all(tables, report).await?;
            }
            other => other?,
        }
        report.removed += self.inner.store.sweep_inflight().await?;
        Ok(())
    }

    /// Fetches the gateway's schemas and evolves the synced tables; returns the tables.
    async fn sync_schemas(&self) -> Result<Vec<String>> {
        let tables = self.tables();
        if tables.is_empty() {
            return Err(Error::invalid(
                "sync",
                "no tables to sync: register a table schema first",
            ));
        }
        let server: HashMap<String, _> = self
            .inner
            .conn
            .schemas()
            .await?
            .into_iter()
            .map(|s| (s.table.clone(), s))
            .collect();
        for name in &tables {
            let remote = server.get(name).ok_or_else(|| {
                Error::schema(format!("the gateway does not serve table {name:?}"))
            })?;
            if let Some(local) = self.inner.store.schema(name)
                && local.columns.len() > remote.columns.len()
            {
                let extra: Vec<&str> = local.columns[remote.columns.len()..]
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                return Err(Error::schema(format!(
                    "table {name:?}: the gateway has no column {extra:?}; local changes to them could not be pushed"
                )));
            }
            self.inner.store.register(remote.clone()).await?;
        }
        Ok(tables)
    }

    async fn checkpoint_due(&self, tables: &[String]) -> Result<bool> {
        let mut conn = self.inner.store.conn().await;
        let cursor = super::store::read_cursor(&mut conn).await?;
        let flagged = meta_get(&mut conn, keys::NEEDS_CHECKPOINT).await?;
        if cursor.is_none() || flagged.is_some() {
            return Ok(true);
        }
        let synced: Vec<String> = meta_get(&mut conn, keys::SYNCED_TABLES)
            .await?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Ok(synced != tables)
    }

    /// Replaces the replica's view with the gateway's checkpoint (see [`super::apply`]).
    async fn checkpoint(&self, tables: &[String], report: &mut SyncReport) -> Result<()> {
        let store = &self.inner.store;
        let reconcile = store.checkpoint_must_reconcile(tables).await?;
        let mut seen = reconcile.then(HashMap::new);
        let started = std::time::Instant::now();
        let mut stream = self.inner.conn.checkpoint(tables).await?;
        let mut cursor = None;
        let mut rows = 0;
        while let Some(item) = stream.next().await {
            let (batch, at) = item?;
            cursor = Some(at);
            if let Some(batch) = batch {
                rows += store
                    .apply_checkpoint_batch(&batch, at, seen.as_mut())
                    .await?
                    .rows;
            }
        }
        let cursor = cursor.ok_or_else(|| Error::External {
            system: "gateway",
            message: "a checkpoint ended without a cursor".to_string(),
            retryable: true,
            source: None,
        })?;
        report.removed += store.finish_checkpoint(tables, cursor, seen).await?;
        report.checkpoint_rows += rows;
        tracing::info!(
            rows,
            cursor,
            reconcile,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "applied a checkpoint"
        );
        Ok(())
    }

    /// Pulls page after page until the gateway has no more.
    pub(crate) async fn pull_all(&self, tables: &[String], report: &mut SyncReport) -> Result<()> {
        let store = &self.inner.store;
        loop {
            let from = store.cursor().await?;
            let start = from.ok_or_else(|| Error::internal("pulling before any checkpoint"))?;
            let page = self
                .inner
                .conn
                .pull(tables, start, self.inner.options.pull_limit)
                .await?;
            let Some(applied) = store.apply_page(from, &page.batches, page.cursor).await? else {
                continue;
            };
            report.pulled += applied.rows;
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Pushes the whole outbox (the caller holds the round lock).
    pub(crate) async fn push_locked(&self, report: &mut SyncReport) -> Result<AckSummary> {
        let store = &self.inner.store;
        let options = &self.inner.options;
        let mut summary = AckSummary::default();
        let mut after = 0;
        loop {
            let entries = {
                let mut conn = store.conn().await;
                pending_after(&mut conn, after, options.push_batch.max(1)).await?
            };
            let Some(last) = entries.last() else {
                return Ok(summary);
            };
            after = last.seq;
            store.mark_sending(&entries).await?;
            let mut by_table: BTreeMap<&str, Vec<OutboxEntry>> = BTreeMap::new();
            for e in &entries {
                by_table
                    .entry(e.delta.table.as_str())
                    .or_default()
                    .push(e.clone());
            }
            for (table, group) in by_table {
                let schema = store.table(table)?;
                let deltas: Vec<RowDelta> = group.iter().map(|e| e.delta.clone()).collect();
                let batch = match deltas_to_batch(&schema, &deltas) {
                    Ok(batch) => batch,
                    Err(e) => {
                        let message = format!("{}: {e}", e.code());
                        summary += store.push_refused(&group, &message, 1).await?;
                        continue;
                    }
                };
                match self.inner.conn.push(table, batch).await {
                    Ok(result) => {
                        tracing::debug!(
                            table,
                            deltas = group.len(),
                            accepted = result.accepted,
                            duplicates = result.duplicates,
                            rejected = result.rejections.len(),
                            cursor = result.cursor,
                            "push result received"
                        );
                        let ack = store
                            .acknowledge(&group, &result, options.max_attempts)
                            .await?;
                        report.pushed += ack.acknowledged;
                        report.duplicates += result.duplicates;
                        report.rejected += ack.kept;
                        report.dead_lettered += ack.dead_lettered;
                        if let Some(first) = result.rejections.first() {
                            self.state().rejection =
                                Some(format!("{}: {}", first.code, first.message));
                        }
                        summary += ack;
                    }
                    Err(e @ (Error::Schema(_) | Error::Invalid { .. })) => {
                        let message = format!("{}: {e}", e.code());
                        let ack = store
                            .push_refused(&group, &message, options.max_attempts)
                            .await?;
                        report.rejected += ack.kept;
                        report.dead_lettered += ack.dead_lettered;
                        self.state().rejection = Some(message);
                        summary += ack;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Pushes the outbox now, then pulls the gateway's verdict (one round's steps 4 and 5).
    pub async fn push(&self) -> Result<SyncReport> {
        let _round = self.inner.gate.lock().await;
        let result: Result<SyncReport> = async {
            let tables = self.tables();
            let mut report = SyncReport::default();
            let pushed = self.push_locked(&mut report).await?;
            if pushed.acknowledged > 0 || pushed.dead_lettered > 0 {
                self.catch_up(&tables, &mut report).await?;
            }
            report.cursor = self.inner.store.cursor().await?.unwrap_or(0);
            Ok(report)
        }
        .await;
        self.record(&result);
        result
    }

    /// Pulls everything due now (checkpoint included when due), without pushing.
    pub async fn pull(&self) -> Result<SyncReport> {
        let _round = self.inner.gate.lock().await;
        let result: Result<SyncReport> = async {
            let tables = self.sync_schemas().await?;
            let mut report = SyncReport::default();
            self.catch_up(&tables, &mut report).await?;
            report.cursor = self.inner.store.cursor().await?.unwrap_or(0);
            Ok(report)
        }
        .await;
        self.record(&result);
        result
    }
}
