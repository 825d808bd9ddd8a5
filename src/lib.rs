//! LakeSync: a declarative data sync engine.
//!
//! *Declare what data goes where; the engine does the rest.* Deltas — column-level row changes
//! stamped with hybrid logical clocks — stream as Arrow record batches through composable
//! operators between adapters.
//!
//! This crate is everything that touches the world; the pure kernel is
//! [`lakesync_operators`], re-exported here as [`kernel`].

pub use lakesync_operators as kernel;
pub use lakesync_operators::{Error, ErrorKind, Result};

pub mod adapters;
pub mod build;
pub mod client;
pub mod config;
pub mod demo;
pub mod fault;
pub mod gateway;
pub mod ops;
pub mod query;
pub mod runtime;
pub mod synth;
pub mod transport;

/// An [`Error::External`] for a failed filesystem operation on `path`; transient kinds
/// (interrupted, timed out) are retryable.
pub(crate) fn fs_error(path: &std::path::Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind as Kind;
    Error::External {
        system: "filesystem",
        message: format!("{}: {e}", path.display()),
        retryable: matches!(
            e.kind(),
            Kind::Interrupted | Kind::TimedOut | Kind::WouldBlock
        ),
        source: Some(Box::new(e)),
    }
}
