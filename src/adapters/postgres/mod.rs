//! Postgres: a source ([`PostgresSource`]) and a sink ([`PostgresSink`]), with materialisation
//! through the Postgres [`SqlDialect`](crate::kernel::materialise::SqlDialect)
//! ([`PostgresDialect`]). Everything goes through sqlx; no other Postgres driver is needed
//! (logical decoding is read with `pg_logical_slot_peek_binary_changes`, bulk reads with
//! sqlx's raw `COPY … TO STDOUT`).
//!
//! - The source reads each table by one strategy: **cursor** or **diff** polling, **cdc**
//!   (logical decoding with `pgoutput`: a consistent initial snapshot, then every change in
//!   commit order, the slot advanced only after every sink has committed), or **snapshot** (the
//!   whole table once, by binary `COPY` decoded straight into Arrow, optionally over parallel
//!   block ranges). See [`source`], [`cdc`] and [`snapshot`].
//! - The sink keeps a delta log (`lakesync_deltas`, idempotent by deltaId) and, when asked,
//!   materialised tables; the log, the materialised rows and the pipeline's epoch mark change in
//!   one transaction. See [`sink`].
//!
//! Every identifier from configuration or data is checked by the kernel's
//! `validate_identifier` (letters, digits and underscores) and double-quoted; every value is a
//! bind parameter.

pub mod cdc;
pub mod copy_binary;
mod copy_in;
pub mod dialect;
pub mod hot;
pub mod pgoutput;
pub mod poll;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod types;

pub use dialect::PostgresDialect;
pub use sink::{PostgresSink, PostgresSinkOptions};
pub use source::{PostgresSource, PostgresSourceOptions, PostgresStrategy, PostgresTableSpec};

use std::fmt::Display;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Executor};

use crate::kernel::schema::{quote_identifier, validate_identifier};
use crate::{Error, Result};

/// The name errors give the system.
const SYSTEM: &str = "postgres";

/// A sqlx error as a LakeSync error, saying what was being done (`context`). Connection and I/O
/// failures, serialisation failures, deadlocks, lock timeouts and "too many connections" are
/// retryable; the rest are not.
pub(crate) fn pg_error(context: impl Display, e: sqlx::Error) -> Error {
    let retryable = match &e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 40001 serialization_failure, 40P01 deadlock_detected, 55P03 lock_not_available,
            // 53300 too_many_connections, 57P01 admin_shutdown, 08xxx connection exceptions.
            matches!(
                code.as_ref(),
                "40001" | "40P01" | "55P03" | "53300" | "57P01"
            ) || code.starts_with("08")
        }),
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

/// An error in data read from Postgres (a value, a protocol message) that LakeSync cannot use.
pub(crate) fn data_error(context: impl Display, message: impl Display) -> Error {
    Error::External {
        system: SYSTEM,
        message: format!("{context}: {message}"),
        retryable: false,
        source: None,
    }
}

/// Connects to `url`, with the session settings every LakeSync connection relies on: UTC time
/// zone (a `timestamp` without time zone is read as UTC) and ISO dates.
pub(crate) async fn connect(url: &str, here: &str) -> Result<PgConnection> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        Error::invalid(
            "postgres url",
            format!("{here}: {e} (expected postgres://user[:password]@host[:port]/database)"),
        )
    })?;
    let mut conn = options
        .application_name("lakesync")
        .disable_statement_logging()
        .connect()
        .await
        .map_err(|e| pg_error(format!("{here}: connecting"), e))?;
    conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3")
        .await
        .map_err(|e| pg_error(format!("{here}: setting session options"), e))?;
    Ok(conn)
}

/// A validated, double-quoted identifier.
pub(crate) fn ident(name: &str) -> Result<String> {
    validate_identifier(name)?;
    Ok(quote_identifier(name))
}

/// `"schema"."name"`, both validated.
pub(crate) fn qualified(schema: &str, name: &str) -> Result<String> {
    Ok(format!("{}.{}", ident(schema)?, ident(name)?))
}
