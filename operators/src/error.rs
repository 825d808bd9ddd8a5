//! The one error type of LakeSync.
//!
//! Every error has a [`ErrorKind`] the caller can branch on:
//! - [`ErrorKind::User`]: the input was wrong (config, schema, auth, a request, a delta). The
//!   message says what was wrong and where; retrying the same input fails the same way.
//! - [`ErrorKind::External`]: a system we talk to failed; `retryable` says whether trying again
//!   may help.
//! - [`ErrorKind::Internal`]: a bug in LakeSync.
//!
//! Each variant also has a stable [`Error::code`] (`CLOCK_DRIFT`, `SCHEMA_MISMATCH`, ...) — the
//! original's error codes where one exists — which transports put in their error bodies. Mapping
//! to HTTP status or gRPC `Status` is done by kind, once per transport.

use std::fmt;

/// `Result` with LakeSync's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What sort of failure an [`Error`] is, for callers that decide what to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input; the message names what was wrong and where.
    User,
    /// A system we talk to failed.
    External {
        /// Whether repeating the same operation may succeed.
        retryable: bool,
    },
    /// A bug in LakeSync.
    Internal,
}

/// LakeSync's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input that failed validation: `what` names the thing (e.g. `delta`, `sync rules`,
    /// `identifier`), `message` says what was wrong and where.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The kind of input that was rejected.
        what: &'static str,
        /// What was wrong, and where.
        message: String,
    },
    /// A remote HLC is further ahead of the local physical clock than the drift limit allows.
    #[error("Remote clock is {ahead_ms}ms ahead (max drift: {max_drift_ms}ms)")]
    ClockDrift {
        /// How far ahead the remote wall clock is, in milliseconds.
        ahead_ms: u64,
        /// The configured limit, in milliseconds.
        max_drift_ms: u64,
    },
    /// Data that does not fit a table's schema, or a schema change that is not allowed.
    #[error("schema mismatch: {0}")]
    Schema(String),
    /// Two things that must describe the same row do not.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A system we talk to failed.
    #[error("{system}: {message}")]
    External {
        /// The system, e.g. `postgres` or `s3`.
        system: &'static str,
        /// What failed.
        message: String,
        /// Whether repeating the operation may succeed.
        retryable: bool,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A caller that did not prove who it is: no token, or a token that failed verification.
    #[error("{0}")]
    Unauthenticated(String),
    /// A caller that is known but not allowed to do this (wrong gateway, not an admin, acting
    /// as another client).
    #[error("{0}")]
    Forbidden(String),
    /// A named thing (table, source, connector, route) that does not exist.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// The kind of thing, e.g. `table`.
        what: &'static str,
        /// Its name as given.
        name: String,
    },
    /// The gateway's unflushed buffer is full; retry after it flushes. Nothing was accepted.
    #[error("{0}")]
    Backpressure(String),
    /// A client exceeded its request rate; retry after `retry_after_secs`.
    #[error("Too many requests (retry after {retry_after_secs}s)")]
    RateLimited {
        /// Seconds until the client's window resets.
        retry_after_secs: u64,
    },
    /// A pull cursor older than the oldest change the gateway still holds: the client must
    /// start again from a checkpoint.
    #[error(
        "cursor {cursor} is older than the oldest retained change ({oldest}); start again from a checkpoint"
    )]
    CursorExpired {
        /// The cursor the client sent.
        cursor: u64,
        /// The oldest cursor the gateway can still serve changes after.
        oldest: u64,
    },
    /// A bug: an invariant LakeSync relies on did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An [`Error::Invalid`] for the input named by `what`.
    pub fn invalid(what: &'static str, message: impl fmt::Display) -> Self {
        Self::Invalid {
            what,
            message: message.to_string(),
        }
    }

    /// An [`Error::Schema`].
    pub fn schema(message: impl fmt::Display) -> Self {
        Self::Schema(message.to_string())
    }

    /// An [`Error::Internal`].
    pub fn internal(message: impl fmt::Display) -> Self {
        Self::Internal(message.to_string())
    }

    /// An [`Error::External`] with a source error.
    pub fn external(
        system: &'static str,
        retryable: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::External {
            system,
            message: source.to_string(),
            retryable,
            source: Some(Box::new(source)),
        }
    }

    /// The kind of failure, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { .. }
            | Self::ClockDrift { .. }
            | Self::Schema(_)
            | Self::Conflict(_)
            | Self::Unauthenticated(_)
            | Self::Forbidden(_)
            | Self::NotFound { .. }
            | Self::RateLimited { .. }
            | Self::CursorExpired { .. } => ErrorKind::User,
            Self::Backpressure(_) => ErrorKind::External { retryable: true },
            Self::External { retryable, .. } => ErrorKind::External {
                retryable: *retryable,
            },
            Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// A stable machine-readable code, as carried in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "VALIDATION_ERROR",
            Self::ClockDrift { .. } => "CLOCK_DRIFT",
            Self::Schema(_) => "SCHEMA_MISMATCH",
            Self::Conflict(_) => "CONFLICT",
            Self::External { .. } => "ADAPTER_ERROR",
            Self::Unauthenticated(_) => "AUTH_ERROR",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::Backpressure(_) => "BACKPRESSURE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::CursorExpired { .. } => "CURSOR_EXPIRED",
            Self::Internal(_) => "INTERNAL_ERROR",
        }
    }
}

impl From<arrow_schema::ArrowError> for Error {
    /// Arrow errors inside the kernel come from arrays the kernel built itself, so they are bugs.
    fn from(e: arrow_schema::ArrowError) -> Self {
        Self::Internal(format!("arrow: {e}"))
    }
}

impl From<parquet::errors::ParquetError> for Error {
    /// Parquet errors arise from bytes handed to the kernel: treated as bad input.
    fn from(e: parquet::errors::ParquetError) -> Self {
        Self::invalid("parquet", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_codes() {
        let e = Error::ClockDrift {
            ahead_ms: 5001,
            max_drift_ms: 5000,
        };
        assert_eq!(e.kind(), ErrorKind::User);
        assert_eq!(e.code(), "CLOCK_DRIFT");
        assert_eq!(
            e.to_string(),
            "Remote clock is 5001ms ahead (max drift: 5000ms)"
        );
        let e = Error::External {
            system: "s3",
            message: "timeout".into(),
            retryable: true,
            source: None,
        };
        assert_eq!(e.kind(), ErrorKind::External { retryable: true });
        assert_eq!(Error::internal("x").kind(), ErrorKind::Internal);
    }
}
