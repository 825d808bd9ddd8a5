//! The gateway's durable log: every accepted push, in acceptance order, in a SQLite file.
//!
//! A push is acknowledged only after its record is committed here (WAL journal,
//! `synchronous = FULL`, so the commit is on disk before the call returns): *acknowledged means
//! durable* (DESIGN §4) — a `kill -9` after the acknowledgement loses nothing, and a record whose
//! commit did not finish was never acknowledged. Each record is one table's accepted deltas from
//! one push, stored as an Arrow IPC stream under its sequence number (the server cursor).
//!
//! Records are kept after they are flushed, so pulls can be served from them, until the
//! retention limits trim them; trimming folds the trimmed records into a saved row state (the
//! `state` table) so a restart rebuilds every row from that state plus the retained records.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{Error, Result};

fn db_error(e: sqlx::Error) -> Error {
    Error::external("gateway log", false, e)
}

/// A record as read back from the log.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    /// The record's sequence number (server cursor).
    pub seq: u64,
    /// The table.
    pub table: String,
    /// The client that pushed it.
    pub client_id: String,
    /// When it was accepted (ms since the Unix epoch).
    pub accepted_ms: u64,
    /// The accepted deltas.
    pub deltas: RecordBatch,
    /// The bytes the record takes in the log.
    pub stored_bytes: usize,
}

/// The durable log (see the module docs).
#[derive(Clone, Debug)]
pub struct LogStore {
    pool: SqlitePool,
}

/// Encodes a batch as an Arrow IPC stream.
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// Decodes every batch of an Arrow IPC stream.
pub fn decode_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| Error::invalid("gateway log record", e))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid("gateway log record", e))
}

fn one_batch(bytes: &[u8], what: &str) -> Result<RecordBatch> {
    let mut batches = decode_ipc(bytes)?;
    match batches.len() {
        1 => Ok(batches.remove(0)),
        n => Err(Error::internal(format!("{what} holds {n} batches, not 1"))),
    }
}

impl LogStore {
    /// Opens (creating) the log in `dir`.
    pub async fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| crate::fs_error(dir, e))?;
        let path = dir.join("gateway.sqlite");
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(db_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, client TEXT NOT NULL, accepted_ms INTEGER NOT NULL, deltas BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS state (tbl TEXT PRIMARY KEY, data BLOB NOT NULL)",
        ] {
            sqlx::query(ddl).execute(&pool).await.map_err(db_error)?;
        }
        Ok(Self { pool })
    }

    /// Durably appends one record; returns the bytes stored.
    pub async fn append(
        &self,
        seq: u64,
        table: &str,
        client_id: &str,
        accepted_ms: u64,
        deltas: &RecordBatch,
    ) -> Result<usize> {
        let blob = encode_ipc(deltas)?;
        let bytes = blob.len();
        sqlx::query(
            "INSERT INTO log (seq, tbl, client, accepted_ms, deltas) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(seq as i64)
        .bind(table)
        .bind(client_id)
        .bind(accepted_ms as i64)
        .bind(blob)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(bytes)
    }

    /// Every retained record, in sequence order.
    pub async fn records(&self) -> Result<Vec<StoredRecord>> {
        let rows =
            sqlx::query("SELECT seq, tbl, client, accepted_ms, deltas FROM log ORDER BY seq")
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let blob: Vec<u8> = row.get(4);
                Ok(StoredRecord {
                    stored_bytes: blob.len(),
                    seq: seq as u64,
                    table: row.get(1),
                    client_id: row.get(2),
                    accepted_ms: row.get::<i64, _>(3) as u64,
                    deltas: one_batch(&blob, &format!("log record {seq}"))?,
                })
            })
            .collect()
    }

    /// A value saved under `key`.
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
    }

    /// Saves `value` under `key`.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// The saved row state of every table (the fold of all trimmed records).
    pub async fn saved_state(&self) -> Result<Vec<(String, RecordBatch)>> {
        let rows = sqlx::query("SELECT tbl, data FROM state")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let table: String = row.get(0);
                let blob: Vec<u8> = row.get(1);
                let batch = one_batch(&blob, &format!("saved state of {table}"))?;
                Ok((table, batch))
            })
            .collect()
    }

    /// In one transaction: replaces the saved state of `tables` and deletes every record up to
    /// and including `upto`, recording `upto` as trimmed.
    pub async fn trim(&self, upto: u64, tables: &[(String, Arc<RecordBatch>)]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        for (table, state) in tables {
            sqlx::query("INSERT INTO state (tbl, data) VALUES (?, ?) ON CONFLICT (tbl) DO UPDATE SET data = excluded.data")
                .bind(table)
                .bind(encode_ipc(state)?)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        sqlx::query("DELETE FROM log WHERE seq <= ?")
            .bind(upto as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ('trimmed', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(upto.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }
}
