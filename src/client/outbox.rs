//! The outbox: local changes the gateway has not yet acknowledged, kept in the replica itself.
//!
//! Every local write adds its delta (row form, with its deltaId) to `_lakesync_outbox` in the
//! same transaction as the row change. An entry leaves the outbox only when a push result
//! acknowledges it, and pushes are idempotent by deltaId, so a client killed after the gateway
//! accepted a push but before the acknowledgement was recorded simply pushes the same deltas
//! again: the gateway counts them as duplicates and changes nothing. Nothing is lost, nothing
//! is duplicated. (The original client marked entries `sending` and never looked at them again
//! after a crash; here there is no such state.)
//!
//! A delta the gateway rejects stays in the outbox with its error and attempt count and is
//! retried with later pushes; after `max_attempts` — or at once when the rejection can never
//! succeed (`FORBIDDEN`, `VALIDATION_ERROR`, `SCHEMA_MISMATCH`) — it is *dead-lettered*: kept
//! (with `dead = 1`) for inspection but no longer pushed nor protected against remote changes.
//! Since the replica then holds a change the server never took, dead-lettering also schedules
//! a checkpoint, which puts the server's rows back.
//!
//! Before a row's changes are first sent, the row is entered in `_lakesync_inflight`, where the
//! applier notes the snapshots the server sends for it (see [`super::apply`]); the
//! acknowledgement records the cursor after which the server's verdict on the row is known.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

use crate::adapters::sqlite::dialect::{Bind, query_with};
use crate::kernel::delta::RowDelta;
use crate::{Error, Result};

use super::store::{LocalStore, db_error, keys, meta_set};
use super::transport::PushResult;

/// Rows per bulk statement (two binds each, well below SQLite's limit).
const BULK: usize = 5_000;

/// Rejection codes that can never succeed on a retry: such deltas are dead-lettered at once.
const PERMANENT: &[&str] = &["FORBIDDEN", "VALIDATION_ERROR", "SCHEMA_MISMATCH"];

/// One outbox entry.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    /// Its position in the outbox (increasing in write order).
    pub seq: i64,
    /// The change.
    pub delta: RowDelta,
    /// How many pushes rejected it.
    pub attempts: u32,
    /// The last rejection, `CODE: message`.
    pub last_error: Option<String>,
    /// Whether it was dead-lettered.
    pub dead: bool,
}

/// What an acknowledgement did to the outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckSummary {
    /// Entries acknowledged and removed.
    pub acknowledged: u64,
    /// Entries rejected and kept for a retry.
    pub kept: u64,
    /// Entries dead-lettered.
    pub dead_lettered: u64,
}

impl std::ops::AddAssign for AckSummary {
    fn add_assign(&mut self, other: Self) {
        self.acknowledged += other.acknowledged;
        self.kept += other.kept;
        self.dead_lettered += other.dead_lettered;
    }
}

/// Adds `delta` to the outbox (inside the caller's transaction).
pub(crate) async fn enqueue(conn: &mut SqliteConnection, delta: &RowDelta) -> Result<()> {
    let json = serde_json::to_string(delta)
        .map_err(|e| Error::internal(format!("serialising a delta: {e}")))?;
    sqlx::query(
        "INSERT INTO _lakesync_outbox (table_name, row_id, delta_id, hlc, delta) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&delta.table)
    .bind(&delta.row_id)
    .bind(delta.delta_id.to_string())
    .bind(delta.hlc.0 as i64)
    .bind(json)
    .execute(conn)
    .await
    .map_err(|e| db_error("adding to the outbox", e))?;
    Ok(())
}

fn entry(row: &sqlx::sqlite::SqliteRow) -> Result<OutboxEntry> {
    use sqlx::Row;
    let get = |e: sqlx::Error| db_error("reading the outbox", e);
    let text: String = row.try_get("delta").map_err(get)?;
    let delta: RowDelta = serde_json::from_str(&text)
        .map_err(|e| Error::internal(format!("an outbox entry is not a delta: {e}")))?;
    Ok(OutboxEntry {
        seq: row.try_get("seq").map_err(get)?,
        delta,
        attempts: row.try_get::<i64, _>("attempts").map_err(get)? as u32,
        last_error: row.try_get("last_error").map_err(get)?,
        dead: row.try_get::<i64, _>("dead").map_err(get)? != 0,
    })
}

/// Live (not dead-lettered) entries after `after_seq`, oldest first, at most `limit`.
pub(crate) async fn pending_after(
    conn: &mut SqliteConnection,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<OutboxEntry>> {
    let rows = sqlx::query(
        "SELECT seq, delta, attempts, last_error, dead FROM _lakesync_outbox \
         WHERE dead = 0 AND seq > ? ORDER BY seq LIMIT ?",
    )
    .bind(after_seq)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await
    .map_err(|e| db_error("reading the outbox", e))?;
    rows.iter().map(entry).collect()
}

/// Whether any live entry exists.
pub(crate) async fn has_pending(conn: &mut SqliteConnection) -> Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _lakesync_outbox WHERE dead = 0)")
        .fetch_one(conn)
        .await
        .map_err(|e| db_error("reading the outbox", e))
}

/// Whether a live entry exists for row `row_id` of `table`.
pub(crate) async fn row_has_pending(
    conn: &mut SqliteConnection,
    table: &str,
    row_id: &str,
) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM _lakesync_outbox WHERE dead = 0 AND table_name = ? AND row_id = ?)",
    )
    .bind(table)
    .bind(row_id)
    .fetch_one(conn)
    .await
    .map_err(|e| db_error("reading the outbox", e))
}

/// The live entries of `table`, by row, each row's in write order.
pub(crate) async fn pending_by_row(
    conn: &mut SqliteConnection,
    table: &str,
) -> Result<HashMap<String, Vec<RowDelta>>> {
    let rows = sqlx::query(
        "SELECT seq, delta, attempts, last_error, dead FROM _lakesync_outbox \
         WHERE dead = 0 AND table_name = ? ORDER BY seq",
    )
    .bind(table)
    .fetch_all(conn)
    .await
    .map_err(|e| db_error("reading the outbox", e))?;
    let mut out: HashMap<String, Vec<RowDelta>> = HashMap::new();
    for row in &rows {
        let e = entry(row)?;
        out.entry(e.delta.row_id.clone()).or_default().push(e.delta);
    }
    Ok(out)
}

impl LocalStore {
    /// How many local changes wait to be pushed (dead letters excluded).
    pub async fn queue_depth(&self) -> Result<u64> {
        let mut conn = self.conn().await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _lakesync_outbox WHERE dead = 0")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| db_error("counting the outbox", e))?;
        Ok(n as u64)
    }

    /// The oldest `limit` changes waiting to be pushed.
    pub async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>> {
        let mut conn = self.conn().await;
        pending_after(&mut conn, 0, limit).await
    }

    /// The dead-lettered changes, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<OutboxEntry>> {
        let mut conn = self.conn().await;
        let rows = sqlx::query(
            "SELECT seq, delta, attempts, last_error, dead FROM _lakesync_outbox WHERE dead = 1 ORDER BY seq",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db_error("reading the dead letters", e))?;
        rows.iter().map(entry).collect()
    }

    /// Enters the rows of `entries` in the in-flight table before they are first sent.
    pub(crate) async fn mark_sending(&self, entries: &[OutboxEntry]) -> Result<()> {
        let rows: BTreeSet<(&str, &str)> = entries
            .iter()
            .map(|e| (e.delta.table.as_str(), e.delta.row_id.as_str()))
            .collect();
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        let rows: Vec<(&str, &str)> = rows.into_iter().collect();
        for chunk in rows.chunks(BULK) {
            let sql = format!(
                "INSERT OR IGNORE INTO _lakesync_inflight (table_name, row_id) VALUES {}",
                vec!["(?, ?)"; chunk.len()].join(", ")
            );
            let binds = chunk
                .iter()
                .flat_map(|(t, r)| [Bind::Text((*t).to_string()), Bind::Text((*r).to_string())])
                .collect();
            query_with(&sql, binds)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("noting rows in flight", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("noting rows in flight", e))
    }

    /// Records the gateway's answer to a push of `entries`: acknowledged entries leave the
    /// outbox (their rows' verdict is due after `result.cursor`), rejected ones are kept or
    /// dead-lettered (see the module docs).
    pub(crate) async fn acknowledge(
        &self,
        entries: &[OutboxEntry],
        result: &PushResult,
        max_attempts: u32,
    ) -> Result<AckSummary> {
        let rejected: HashMap<&str, String> = result
            .rejections
            .iter()
            .map(|r| (r.delta_id.as_str(), format!("{}: {}", r.code, r.message)))
            .collect();
        let permanent: HashMap<&str, bool> = result
            .rejections
            .iter()
            .map(|r| (r.delta_id.as_str(), PERMANENT.contains(&r.code.as_str())))
            .collect();
        let mut summary = AckSummary::default();
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        let mut acked = Vec::with_capacity(entries.len());
        for e in entries {
            let id = e.delta.delta_id.to_string();
            match rejected.get(id.as_str()) {
                None => acked.push(e),
                Some(message) => {
                    let forever = permanent.get(id.as_str()).copied().unwrap_or(false);
                    summary += reject(&mut tx, e, message, forever, max_attempts).await?;
                }
            }
        }
        // In bulk: one statement per chunk rather than two per entry.
        for chunk in acked.chunks(BULK) {
            let seqs = chunk.iter().map(|e| Bind::Integer(e.seq)).collect();
            let sql = format!(
                "DELETE FROM _lakesync_outbox WHERE seq IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            query_with(&sql, seqs)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("acknowledging", e))?;
            let rows: BTreeSet<(&str, &str)> = chunk
                .iter()
                .map(|e| (e.delta.table.as_str(), e.delta.row_id.as_str()))
                .collect();
            let mut binds = vec![Bind::Integer(result.cursor as i64)];
            for (table, row_id) in &rows {
                binds.push(Bind::Text((*table).to_string()));
                binds.push(Bind::Text((*row_id).to_string()));
            }
            let sql = format!(
                "UPDATE _lakesync_inflight SET acked_cursor = max(coalesce(acked_cursor, 0), ?) \
                 WHERE (table_name, row_id) IN (VALUES {})",
                vec!["(?, ?)"; rows.len()].join(", ")
            );
            query_with(&sql, binds)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("acknowledging", e))?;
        }
        summary.acknowledged += acked.len() as u64;
        if summary.dead_lettered > 0 {
            meta_set(&mut tx, keys::NEEDS_CHECKPOINT, "1").await?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("acknowledging", e))?;
        Ok(summary)
    }

    /// Records a push of `entries` that the gateway refused whole (`message`): each entry's
    /// attempt count grows and it is dead-lettered at `max_attempts`.
    pub(crate) async fn push_refused(
        &self,
        entries: &[OutboxEntry],
        message: &str,
        max_attempts: u32,
    ) -> Result<AckSummary> {
        let mut summary = AckSummary::default();
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        for e in entries {
            summary += reject(&mut tx, e, message, false, max_attempts).await?;
        }
        if summary.dead_lettered > 0 {
            meta_set(&mut tx, keys::NEEDS_CHECKPOINT, "1").await?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("recording a refused push", e))?;
        Ok(summary)
    }
}

/// Counts a rejection of `entry`; dead-letters it when `forever` or out of attempts.
async fn reject(
    conn: &mut SqliteConnection,
    entry: &OutboxEntry,
    message: &str,
    forever: bool,
    max_attempts: u32,
) -> Result<AckSummary> {
    let attempts = entry.attempts.saturating_add(1);
    let dead = forever || attempts >= max_attempts;
    sqlx::query("UPDATE _lakesync_outbox SET attempts = ?, last_error = ?, dead = ? WHERE seq = ?")
        .bind(i64::from(attempts))
        .bind(message)
        .bind(i64::from(dead))
        .bind(entry.seq)
        .execute(conn)
        .await
        .map_err(|e| db_error("recording a rejection", e))?;
    if dead {
        tracing::warn!(table = %entry.delta.table, row = %entry.delta.row_id, delta_id = %entry.delta.delta_id, error = %message, attempts, "dead-lettered a local change");
        Ok(AckSummary {
            dead_lettered: 1,
            ..AckSummary::default()
        })
    } else {
        tracing::debug!(table = %entry.delta.table, row = %entry.delta.row_id, error = %message, attempts, "the gateway rejected a local change; it will be retried");
        Ok(AckSummary {
            kept: 1,
            ..AckSummary::default()
        })
    }
}

/// A JSON description of an entry, for logs and the CLI.
pub fn describe(entry: &OutboxEntry) -> Value {
    serde_json::json!({
        "seq": entry.seq,
        "table": entry.delta.table,
        "rowId": entry.delta.row_id,
        "op": entry.delta.op,
        "deltaId": entry.delta.delta_id.to_string(),
        "attempts": entry.attempts,
        "lastError": entry.last_error,
    })
}
