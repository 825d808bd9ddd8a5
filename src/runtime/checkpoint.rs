//! The checkpoint store: which epoch a pipeline has committed, and where each source was then.
//!
//! One SQLite file per pipeline, `<state_dir>/checkpoint.sqlite`:
//! - `epochs(epoch, committed, planned_at, committed_at)`: an epoch is *planned* (write-ahead,
//!   before any sink sees its data) with, per source, the position it starts from, how many
//!   source batches it takes and the position it ends at; it is *committed* once every required
//!   sink has committed it. After a crash, a planned but uncommitted epoch is replayed exactly —
//!   the same batches from the same start — so sinks that had committed it recognise it and drop
//!   it, and the others receive precisely what they missed.
//! - `epoch_sources(epoch, source, start, batches, end_position)`: every source with a known
//!   position, including those that contributed no batches (start = end), so no source ever
//!   loses its place.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::runtime::api::Position;
use crate::{Error, Result};

/// Where one source stands within an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSpan {
    /// Position the epoch starts from (`None`: the beginning).
    pub start: Option<Position>,
    /// Source batches the epoch takes.
    pub batches: u64,
    /// Position after the last batch (`None` when it took none and started at the beginning).
    pub end: Option<Position>,
}

/// A planned epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPlan {
    /// The epoch number (1, 2, …).
    pub epoch: u64,
    /// The epoch's time (milliseconds since the Unix epoch), fixed at planning: operators and
    /// time-routing sinks see this time, on the first run and on a replay alike.
    pub now_ms: u64,
    /// Per source name.
    pub sources: BTreeMap<String, SourceSpan>,
}

/// The checkpoint store of one pipeline.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    pool: SqlitePool,
}

fn db_error(e: sqlx::Error) -> Error {
    Error::external("checkpoint store", false, e)
}

impl CheckpointStore {
    /// Opens (creating) the store in `state_dir`.
    pub async fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            Error::invalid(
                "state_dir",
                format!("cannot create {}: {e}", state_dir.display()),
            )
        })?;
        let path = state_dir.join("checkpoint.sqlite");
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(db_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY, committed INTEGER NOT NULL DEFAULT 0, now_ms INTEGER NOT NULL DEFAULT 0, planned_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), committed_at TEXT)",
            "CREATE TABLE IF NOT EXISTS epoch_sources (epoch INTEGER NOT NULL, source TEXT NOT NULL, start TEXT, batches INTEGER NOT NULL, end_position TEXT, PRIMARY KEY (epoch, source))",
        ] {
            sqlx::query(ddl).execute(&pool).await.map_err(db_error)?;
        }
        Ok(Self { pool })
    }

    /// The newest committed epoch and its plan (source end positions), if any.
    pub async fn last_committed(&self) -> Result<Option<EpochPlan>> {
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT max(epoch) FROM epochs WHERE committed = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?;
        match epoch {
            Some(e) => self.plan(e as u64).await.map(Some),
            None => Ok(None),
        }
    }

    /// The planned epoch after the last committed one, if a crash left one behind.
    pub async fn pending(&self) -> Result<Option<EpochPlan>> {
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT min(epoch) FROM epochs WHERE committed = 0")
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?;
        match epoch {
            Some(e) => self.plan(e as u64).await.map(Some),
            None => Ok(None),
        }
    }

    async fn plan(&self, epoch: u64) -> Result<EpochPlan> {
        let now_ms: i64 = sqlx::query_scalar("SELECT now_ms FROM epochs WHERE epoch = ?")
            .bind(epoch as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        let rows = sqlx::query(
            "SELECT source, start, batches, end_position FROM epoch_sources WHERE epoch = ?",
        )
        .bind(epoch as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut sources = BTreeMap::new();
        for row in rows {
            let parse = |text: Option<String>| -> Result<Option<Position>> {
                text.map(|t| {
                    serde_json::from_str(&t)
                        .map(Position)
                        .map_err(|e| Error::internal(format!("corrupt checkpoint position: {e}")))
                })
                .transpose()
            };
            sources.insert(
                row.get::<String, _>(0),
                SourceSpan {
                    start: parse(row.get(1))?,
                    batches: row.get::<i64, _>(2) as u64,
                    end: parse(row.get(3))?,
                },
            );
        }
        Ok(EpochPlan {
            epoch,
            now_ms: now_ms as u64,
            sources,
        })
    }

    /// Records `plan` as planned (write-ahead), replacing an uncommitted plan of the same number.
    pub async fn record_planned(&self, plan: &EpochPlan) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let epoch = plan.epoch as i64;
        sqlx::query("DELETE FROM epoch_sources WHERE epoch = ?")
            .bind(epoch)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("INSERT OR REPLACE INTO epochs (epoch, committed, now_ms) VALUES (?, 0, ?)")
            .bind(epoch)
            .bind(plan.now_ms as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        for (source, span) in &plan.sources {
            let text = |p: &Option<Position>| p.as_ref().map(|p| p.0.to_string());
            sqlx::query("INSERT INTO epoch_sources (epoch, source, start, batches, end_position) VALUES (?, ?, ?, ?, ?)")
                .bind(epoch)
                .bind(source)
                .bind(text(&span.start))
                .bind(span.batches as i64)
                .bind(text(&span.end))
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    /// Marks `epoch` committed and forgets plans older than it.
    pub async fn record_committed(&self, epoch: u64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("UPDATE epochs SET committed = 1, committed_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE epoch = ?")
            .bind(epoch as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        for table in ["epoch_sources", "epochs"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE epoch < ?"))
                .bind(epoch as i64)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn plan_commit_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).await.unwrap();
        assert_eq!(store.last_committed().await.unwrap(), None);
        let plan = |epoch, end| EpochPlan {
            epoch,
            now_ms: 1_700_000_000_000 + epoch,
            sources: [(
                "s".to_string(),
                SourceSpan {
                    start: None,
                    batches: 2,
                    end: Some(Position(json!({"line": end}))),
                },
            )]
            .into(),
        };
        store.record_planned(&plan(1, 10)).await.unwrap();
        assert_eq!(store.pending().await.unwrap(), Some(plan(1, 10)));
        store.record_committed(1).await.unwrap();
        assert_eq!(store.pending().await.unwrap(), None);
        store.record_planned(&plan(2, 20)).await.unwrap();
        // A new process sees the committed epoch and the pending one.
        let reopened = CheckpointStore::open(dir.path()).await.unwrap();
        assert_eq!(reopened.last_committed().await.unwrap(), Some(plan(1, 10)));
        assert_eq!(reopened.pending().await.unwrap(), Some(plan(2, 20)));
    }
}
