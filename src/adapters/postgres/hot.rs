//! [`PostgresHotLog`]: the delta log of a Postgres sink used as a tier's hot side, read back and
//! migrated (the [`HotLog`] contract; the protocol is in [`crate::adapters::hot`]).
//!
//! Every call is one transaction. The bookkeeping tables live in the sink's schema, beside
//! `lakesync_deltas`.

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Executor};

use super::sink::{PostgresSink, PostgresSinkOptions, logged_delta};
use super::{pg_error, qualified};
use crate::adapters::hot::{HotLog, PendingMigration};
use crate::kernel::delta::RowDelta;
use crate::kernel::hlc::HlcTimestamp;
use crate::{Error, Result};

/// The delta log of a Postgres hot sink: see the [module docs](self).
pub struct PostgresHotLog {
    conn: PgConnection,
    here: String,
    /// `"schema".lakesync_deltas`.
    log: String,
    /// `"schema"._lakesync_migrations`.
    migrations: String,
    /// `"schema"._lakesync_migrating`.
    migrating: String,
}

impl std::fmt::Debug for PostgresHotLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresHotLog")
            .field("here", &self.here)
            .finish_non_exhaustive()
    }
}

const SELECT_COLUMNS: &str =
    "d.delta_id, d.\"table\", d.row_id, d.client_id, d.hlc, d.op, d.columns::text AS columns";

impl PostgresHotLog {
    /// Connects to `url` and opens the log of sink `sink` (of pipeline `pipeline`) in `schema`,
    /// creating the log and the migration bookkeeping tables when missing.
    pub async fn open(url: &str, schema: &str, pipeline: &str, sink: &str) -> Result<Self> {
        let here = format!("postgres hot log of {sink:?} in schema {schema:?}");
        let mut conn =
            PostgresSink::open(url, schema, pipeline, sink, PostgresSinkOptions::default())
                .await?
                .into_connection();
        let (log, migrations, migrating) = (
            qualified(schema, "lakesync_deltas")?,
            qualified(schema, "_lakesync_migrations")?,
            qualified(schema, "_lakesync_migrating")?,
        );
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {migrations} (
                 tier TEXT NOT NULL, epoch BIGINT NOT NULL, cutoff_hlc BIGINT NOT NULL,
                 deltas BIGINT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (tier, epoch));
             CREATE TABLE IF NOT EXISTS {migrating} (
                 tier TEXT NOT NULL, delta_id BYTEA NOT NULL, epoch BIGINT NOT NULL,
                 PRIMARY KEY (tier, delta_id));"
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
            .map_err(|e| pg_error(format!("{here}: creating the migration tables"), e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error(format!("{here}: committing setup"), e))?;
        Ok(Self {
            conn,
            here,
            log,
            migrations,
            migrating,
        })
    }

    fn rows_to_deltas(&self, rows: &[PgRow]) -> Result<Vec<RowDelta>> {
        rows.iter()
            .map(|r| logged_delta(r, None, &self.here))
            .collect()
    }
}

/// An epoch as BIGINT.
fn epoch_i64(epoch: u64, here: &str) -> Result<i64> {
    i64::try_from(epoch).map_err(|_| {
        Error::invalid(
            "epoch",
            format!("{here}: epoch {epoch} does not fit a BIGINT"),
        )
    })
}

#[async_trait]
impl HotLog for PostgresHotLog {
    fn describe(&self) -> String {
        self.here.clone()
    }

    async fn deltas(&mut self, table: &str) -> Result<Vec<RowDelta>> {
        let rows = sqlx::query(&format!(
            "SELECT {SELECT_COLUMNS} FROM {} d WHERE d.\"table\" = $1 ORDER BY d.hlc, d.delta_id",
            self.log
        ))
        .bind(table)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| pg_error(format!("{}: reading table {table:?}", self.here), e))?;
        self.rows_to_deltas(&rows)
    }

    async fn pending(&mut self, tier: &str) -> Result<Option<PendingMigration>> {
        let row: Option<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT epoch, cutoff_hlc FROM {} WHERE tier = $1 AND state = 'selected' \
             ORDER BY epoch LIMIT 1",
            self.migrations
        ))
        .bind(tier)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(|e| pg_error(format!("{}: reading pending migrations", self.here), e))?;
        Ok(row.map(|(epoch, cutoff)| PendingMigration {
            epoch: epoch.max(0) as u64,
            // Bit-cast back, as the log stores HLCs.
            cutoff: HlcTimestamp(cutoff as u64),
        }))
    }

    async fn last_epoch(&mut self, tier: &str) -> Result<Option<u64>> {
        let epoch: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MAX(epoch) FROM {} WHERE tier = $1",
            self.migrations
        ))
        .bind(tier)
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| pg_error(format!("{}: reading the last migration", self.here), e))?;
        Ok(epoch.map(|e| e.max(0) as u64))
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
        let mut tx = self.conn.begin().await.map_err(|e| pg_error(&here, e))?;
        let selected = sqlx::query(&format!(
            "INSERT INTO {} (tier, delta_id, epoch) \
             SELECT $1, delta_id, $2 FROM {} WHERE hlc < $3 ORDER BY hlc, delta_id LIMIT $4",
            self.migrating, self.log
        ))
        .bind(tier)
        .bind(epoch)
        .bind(cutoff.0 as i64)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(|e| pg_error(&here, e))?
        .rows_affected();
        if selected == 0 {
            tx.rollback().await.map_err(|e| pg_error(&here, e))?;
            return Ok(0);
        }
        sqlx::query(&format!(
            "INSERT INTO {} (tier, epoch, cutoff_hlc, deltas, state) VALUES ($1, $2, $3, $4, 'selected')",
            self.migrations
        ))
        .bind(tier)
        .bind(epoch)
        .bind(cutoff.0 as i64)
        .bind(i64::try_from(selected).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|e| pg_error(&here, e))?;
        tx.commit().await.map_err(|e| pg_error(&here, e))?;
        Ok(selected)
    }

    async fn selected(&mut self, tier: &str, epoch: u64) -> Result<Vec<RowDelta>> {
        let here = format!("{}: reading migration epoch {epoch}", self.here);
        let rows = sqlx::query(&format!(
            "SELECT {SELECT_COLUMNS} FROM {} d JOIN {} m ON m.delta_id = d.delta_id \
             WHERE m.tier = $1 AND m.epoch = $2 ORDER BY d.hlc, d.delta_id",
            self.log, self.migrating
        ))
        .bind(tier)
        .bind(epoch_i64(epoch, &here)?)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| pg_error(&here, e))?;
        self.rows_to_deltas(&rows)
    }

    async fn finish(&mut self, tier: &str, epoch: u64) -> Result<u64> {
        let here = format!("{}: finishing migration epoch {epoch}", self.here);
        let epoch = epoch_i64(epoch, &here)?;
        let mut tx = self.conn.begin().await.map_err(|e| pg_error(&here, e))?;
        let deleted = sqlx::query(&format!(
            "DELETE FROM {} WHERE delta_id IN (SELECT delta_id FROM {} WHERE tier = $1 AND epoch = $2)",
            self.log, self.migrating
        ))
        .bind(tier)
        .bind(epoch)
        .execute(&mut *tx)
        .await
        .map_err(|e| pg_error(&here, e))?
        .rows_affected();
        sqlx::query(&format!(
            "DELETE FROM {} WHERE tier = $1 AND epoch = $2",
            self.migrating
        ))
        .bind(tier)
        .bind(epoch)
        .execute(&mut *tx)
        .await
        .map_err(|e| pg_error(&here, e))?;
        sqlx::query(&format!(
            "UPDATE {} SET state = 'done' WHERE tier = $1 AND epoch = $2",
            self.migrations
        ))
        .bind(tier)
        .bind(epoch)
        .execute(&mut *tx)
        .await
        .map_err(|e| pg_error(&here, e))?;
        tx.commit().await.map_err(|e| pg_error(&here, e))?;
        Ok(deleted)
    }
}
