//! SQLite: a source ([`SqliteSource`]) and a sink ([`SqliteSink`]), with materialisation through
//! the SQLite [`SqlDialect`](crate::kernel::materialise::SqlDialect) ([`SqliteDialect`]).
//!
//! - The sink keeps a delta log (`lakesync_deltas`, idempotent by deltaId) and, when asked,
//!   materialises each table as the last-writer-wins fold of every delta it has logged; the log,
//!   the materialised rows and the pipeline's epoch mark change in one transaction.
//! - The source reads plain tables by cursor or by diffing snapshots, or reads another LakeSync
//!   SQLite sink's delta log as it was written.
//!
//! Semantics and designs are in each module's docs; the materialised table shape is in
//! `docs/materialise.md`.

pub mod dialect;
pub mod hot;
pub mod sink;
pub mod source;

pub use dialect::{SQLITE_MAX_BIND_PARAMS, SqliteDialect};
pub use sink::{SqliteSink, SqliteSinkOptions};
pub use source::{SqliteSource, SqliteSourceOptions, SqliteStrategy, SqliteTableSpec};

use std::fmt::Display;

use crate::Error;

/// The name errors give the system.
pub(crate) const SYSTEM: &str = "sqlite";

/// A sqlx error as a LakeSync error, saying what was being done where (`context`). Busy and
/// locked databases, I/O failures and pool timeouts are retryable; the rest are not.
pub(crate) fn sqlite_error(context: impl Display, e: sqlx::Error) -> Error {
    let retryable = match &e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with any extended code.
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    Error::External {
        system: SYSTEM,
        message: format!("{context}: {e}"),
        retryable,
        source: Some(Box::new(e)),
    }
}

/// An I/O error as a LakeSync error, saying what was being done where.
pub(crate) fn io_error(context: impl Display, e: std::io::Error) -> Error {
    Error::External {
        system: SYSTEM,
        message: format!("{context}: {e}"),
        retryable: false,
        source: Some(Box::new(e)),
    }
}
