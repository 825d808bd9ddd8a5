//! MySQL and MariaDB: a source ([`MysqlSource`]) and a sink ([`MysqlSink`]), with materialisation
//! through the MySQL [`SqlDialect`](crate::kernel::materialise::SqlDialect) ([`MysqlDialect`]).
//!
//! - The sink keeps a delta log (`lakesync_deltas`, idempotent by deltaId) and, by default,
//!   materialises each table as the last-writer-wins fold of every delta it has logged; the log,
//!   the materialised rows and the pipeline's epoch mark change in one transaction.
//! - The source reads tables by cursor, by diffing snapshots, as a one-off snapshot, or from the
//!   ROW binlog (change data capture, [`binlog`]): a consistent initial snapshot, then every
//!   committed insert, update and delete.
//!
//! Every table and column name, from configuration or from data, passes the kernel's
//! `validate_identifier` and is quoted with backticks; every value is a bind parameter. The
//! user guide is `docs/mysql.md`.

pub mod binlog;
pub mod dialect;
pub mod sink;
pub mod source;
mod value;

pub use dialect::{MYSQL_MAX_BIND_PARAMS, MysqlDialect};
pub use sink::{MysqlSink, MysqlSinkOptions};
pub use source::{MysqlSource, MysqlSourceOptions, MysqlStrategy, MysqlTableSpec};

use std::fmt::Display;

use crate::Error;

/// The name errors give the system.
pub(crate) const SYSTEM: &str = "mysql";

/// MySQL/MariaDB server error numbers worth retrying: lock wait timeout (1205), deadlock (1213),
/// too many connections (1040), server shutdown in progress (1053), query interrupted (1317),
/// connection lost or gone (2006, 2013), and "can't connect" (2002, 2003).
fn retryable_number(number: u16) -> bool {
    matches!(
        number,
        1040 | 1053 | 1205 | 1213 | 1317 | 2002 | 2003 | 2006 | 2013
    )
}

/// A sqlx error as a LakeSync error, saying what was being done where (`context`). Deadlocks,
/// lock wait timeouts, lost connections, I/O failures and pool timeouts are retryable.
pub(crate) fn mysql_error(context: impl Display, e: sqlx::Error) -> Error {
    let retryable = match &e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| retryable_number(m.number())),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    Error::External {
        system: SYSTEM,
        message: format!("{context}: {e}"),
        retryable,
        source: Some(Box::new(e)),
    }
}

/// A `mysql_async` (binlog connection) error as a LakeSync error.
pub(crate) fn binlog_error(context: impl Display, e: mysql_async::Error) -> Error {
    let retryable = match &e {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Server(s) => retryable_number(s.code),
        mysql_async::Error::Driver(_) => true,
        _ => false,
    };
    Error::External {
        system: SYSTEM,
        message: format!("{context}: {e}"),
        retryable,
        source: Some(Box::new(e)),
    }
}

/// A URL without its password, for messages.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}
