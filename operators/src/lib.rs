//! LakeSync's kernel: the pure, I/O-free core every other part builds on.
//!
//! - [`hlc`]: the hybrid logical clock;
//! - [`delta`]: the row form of a delta, deltaId/actionId, and delta extraction;
//! - [`json`]: JSON text exactly as the original TypeScript LakeSync hashes it;
//! - [`schema`]: table schemas, column types, identifiers, add-only evolution;
//! - [`delta_batch`]: the Arrow delta contract (reserved columns, row ⇄ Arrow);
//! - [`bulk`]: full-row INSERT batches built straight from columnar data;
//! - [`state`]: the row-state form the merge produces, and version keys;
//! - [`merge`]: the column-level last-writer-wins merge kernel;
//! - [`compact`]: base rows, the merged state in the delta contract's form (compaction);
//! - [`rules`] and [`filter`]: sync rules, compiled to vectorised predicates over rows;
//! - [`parquet_io`] and [`proto`]: the Parquet and protobuf forms of deltas;
//! - [`error`]: the one error type.

pub mod bulk;
pub mod compact;
pub mod delta;
pub mod delta_batch;
pub mod error;
pub mod filter;
pub mod hlc;
pub mod json;
pub mod materialise;
pub mod merge;
pub mod parquet_io;
pub mod proto;
pub mod rules;
pub mod schema;
pub mod state;

pub use delta::{ColumnDelta, DeltaId, DeltaOp, RowDelta};
pub use error::{Error, ErrorKind, Result};
pub use hlc::{Hlc, HlcTimestamp};
pub use schema::{ColumnDef, ColumnType, TableSchema};
