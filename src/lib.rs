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
pub mod config;
pub mod demo;
pub mod ops;
pub mod query;
pub mod runtime;
pub mod synth;
