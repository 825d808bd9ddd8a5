//! [`SqliteHotLog`]: the delta log of a SQLite sink used as a tier's hot side, read back and
//! migrated (the [`HotLog`] contract; the protocol is in [`crate::adapters::hot`]).
//!
//! Every call is one transaction (`BEGIN IMMEDIATE` for the ones that write, so a pipeline
//! committing to the same file waits for it rather than interleaving).

use std::path::Path;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Connection, Row};

use super::sink::{SqliteSink, SqliteSinkOptions, logged_delta};
use super::sqlite_error;
use crate::adapters::hot::{HotLog, PendingMigration};
use crate::kernel::delta::RowDelta;
use crate::kernel::hlc::HlcTimestamp;
use crate::{Error, Result};

const CREATE_MIGRATIONS: &str = r#"
CREATE INDEX IF NOT EXISTS lakesync_deltas_hlc ON lakesync_deltas (hlc, delta_id);
CREATE TABLE IF NOT EXISTS _lakesync_migrations (
    tier TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    cutoff_hlc INTEGER NOT NULL,
    deltas INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (tier, epoch)
);
CREATE TABLE IF NOT EXISTS _lakesync_migrating (
    tier TEXT NOT NULL,
    delta_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (tier, delta_id)
);
"#;

const SELECT_COLUMNS: &str =
    "d.delta_id, d.\"table\", d.row_id, d.client_id, d.hlc, d.op, d.columns";

/// The delta log of a SQLite hot sink: see the [module docs](self).
pub struct SqliteHotLog {
    conn: SqliteConnection,
    here: String,
}

impl std::fmt::Debug for SqliteHotLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHotLog")
            .field("here", &self.here)
            .finish_non_exhaustive()
    }
}

impl SqliteHotLog {
    /// Opens the log of sink `sink` (of pipeline `pipeline`) in the SQLite file at `path`,
    /// creating the log and the migration bookkeeping tables when missing.
    pub async fn open(path: &Path, pipeline: &str, sink: &str) -> Result<Self> {
        let here = format!("sqlite hot log of {sink:?} at {}", path.display());
        let mut conn = SqliteSink::open(path, pipeline, sink, SqliteSinkOptions::default())
            .await?
            .into_connection();
        sqlx::raw_sql(CREATE_MIGRATIONS)
            .execute(&mut conn)
            .await
            .map_err(|e| sqlite_error(format!("{here}: creating the migration tables"), e))?;
        Ok(Self { conn, here })
    }

    fn rows_to_deltas(&self, rows: &[SqliteRow]) -> Result<Vec<RowDelta>> {
        rows.iter()
            .map(|row| {
                let table: String = row.try_get("table").map_err(|e| {
                    Error::invalid("delta log", format!("{}: column table: {e}", self.here))
                })?;
                logged_delta(row, &table)
                    .map_err(|e| Error::invalid("delta log", format!("{}: {e}", self.here)))
            })
            .collect()
    }
}

/// An epoch as SQLite's INTEGER.
fn epoch_i64(epoch: u64, here: &str) -> Result<i64> {
    i64::try_from(epoch).map_err(|_| {
        Error::invalid(
            "epoch",
            format!("{here}: epoch {epoch} does not fit SQLite's INTEGER"),
        )
    })
}

/// An epoch read back from SQLite.
fn epoch_u64(epoch: i64, here: &str) -> Result<u64> {
    u64::try_from(epoch).map_err(|_| {
        Error::invalid(
            "migration record",
            format!("{here}: _lakesync_migrations holds negative epoch {epoch}"),
        )
    })
}

#[async_trait]
impl HotLog for SqliteHotLog {
    fn describe(&self) -> String {
        self.here.clone()
    }

    async fn deltas(&mut self, table: &str) -> Result<Vec<RowDelta>> {
        let rows = sqlx::query(&format!(
            "SELECT {SELECT_COLUMNS} FROM lakesync_deltas d WHERE d.\"table\" = ? ORDER BY d.hlc, d.delta_id"
        ))
        .bind(table)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| sqlite_error(format!("{}: reading table {table:?}", self.here), e))?;
        self.rows_to_deltas(&rows)
    }

    async fn pending(&mut self, tier: &str) -> Result<Option<PendingMigration>> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT epoch, cutoff_hlc FROM _lakesync_migrations WHERE tier = ? AND state = 'selected' \
             ORDER BY epoch LIMIT 1",
        )
        .bind(tier)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(|e| sqlite_error(format!("{}: reading pending migrations", self.here), e))?;
        row.map(|(epoch, cutoff)| {
            Ok(PendingMigration {
                epoch: epoch_u64(epoch, &self.here)?,
                // Bit-cast back, as the log stores HLCs.
                cutoff: HlcTimestamp(cutoff as u64),
            })
        })
        .transpose()
    }

    async fn last_epoch(&mut self, tier: &str) -> Result<Option<u64>> {
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT MAX(epoch) FROM _lakesync_migrations WHERE tier = ?")
                .bind(tier)
                .fetch_one(&mut self.conn)
                .await
                .map_err(|e| {
                    sqlite_error(format!("{}: reading the last migration", self.here), e)
                })?;
        epoch.map(|e| epoch_u64(e, &self.here)).transpose()
    }

    async fn select(
        &mut self,
        tier: &str,
        epoch: u64,
        cutoff: HlcTimestamp,
        limit: usize,
    ) -> Result<u64> {
        let here = format!("{}: selecting migration epoch {epoch}", self.here);
        let epoch = epoch_i64(epoch, &here)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| sqlite_error(&here, e))?;
        let selected = sqlx::query(
            "INSERT INTO _lakesync_migrating (tier, delta_id, epoch) \
             SELECT ?, delta_id, ? FROM lakesync_deltas WHERE hlc < ? ORDER BY hlc, delta_id LIMIT ?",
        )
        .bind(tier)
        .bind(epoch)
        .bind(cutoff.0 as i64)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(|e| sqlite_error(&here, e))?
        .rows_affected();
        if selected == 0 {
            tx.rollback().await.map_err(|e| sqlite_error(&here, e))?;
            return Ok(0);
        }
        sqlx::query(
            "INSERT INTO _lakesync_migrations (tier, epoch, cutoff_hlc, deltas, state) \
             VALUES (?, ?, ?, ?, 'selected')",
        )
        .bind(tier)
        .bind(epoch)
        .bind(cutoff.0 as i64)
        .bind(i64::try_from(selected).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|e| sqlite_error(&here, e))?;
        tx.commit().await.map_err(|e| sqlite_error(&here, e))?;
        Ok(selected)
    }

    async fn selected(&mut self, tier: &str, epoch: u64) -> Result<Vec<RowDelta>> {
        let here = format!("{}: reading migration epoch {epoch}", self.here);
        let rows = sqlx::query(&format!(
            "SELECT {SELECT_COLUMNS} FROM lakesync_deltas d \
             JOIN _lakesync_migrating m ON m.delta_id = d.delta_id \
             WHERE m.tier = ? AND m.epoch = ? ORDER BY d.hlc, d.delta_id"
        ))
        .bind(tier)
        .bind(epoch_i64(epoch, &here)?)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| sqlite_error(&here, e))?;
        self.rows_to_deltas(&rows)
    }

    async fn finish(&mut self, tier: &str, epoch: u64) -> Result<u64> {
        let here = format!("{}: finishing migration epoch {epoch}", self.here);
        let epoch = epoch_i64(epoch, &here)?;
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| sqlite_error(&here, e))?;
        let deleted = sqlx::query(
            "DELETE FROM lakesync_deltas WHERE delta_id IN \
             (SELECT delta_id FROM _lakesync_migrating WHERE tier = ? AND epoch = ?)",
        )
        .bind(tier)
        .bind(epoch)
        .execute(&mut *tx)
        .await
        .map_err(|e| sqlite_error(&here, e))?
        .rows_affected();
        sqlx::query("DELETE FROM _lakesync_migrating WHERE tier = ? AND epoch = ?")
            .bind(tier)
            .bind(epoch)
            .execute(&mut *tx)
            .await
            .map_err(|e| sqlite_error(&here, e))?;
        sqlx::query("UPDATE _lakesync_migrations SET state = 'done' WHERE tier = ? AND epoch = ?")
            .bind(tier)
            .bind(epoch)
            .execute(&mut *tx)
            .await
            .map_err(|e| sqlite_error(&here, e))?;
        tx.commit().await.map_err(|e| sqlite_error(&here, e))?;
        Ok(deleted)
    }
}
