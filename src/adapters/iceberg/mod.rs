//! Iceberg: the lake.
//!
//! LakeSync's lake tables are Iceberg tables of deltas, written through iceberg-rust 0.10.1:
//! - [`catalog`]: where the catalogue is ([`IcebergCatalogConfig`]: the SQL catalogue on SQLite
//!   with a local-file warehouse, the embedded default, or an Iceberg REST catalogue with an
//!   S3-compatible warehouse) and [`connect`]ing to it;
//! - [`storage`]: iceberg-rust's file I/O over `object_store` (S3-compatible buckets and local
//!   files) for the REST catalogue;
//! - [`mapping`]: the one place where the Arrow delta contract maps to Iceberg types and back;
//! - [`sink`]: [`IcebergSink`], which makes every epoch one real snapshot per table, whose
//!   manifests reference the Parquet data files, so that any Iceberg reader sees the rows.
//!
//! - [`read`]: a table's base rows and deltas at a snapshot, and the row state they merge to;
//! - [`compact`]: compaction, deltas replaced by base rows in one `replace` snapshot;
//! - [`maintenance`]: snapshot expiry and orphan-file clean-up;
//! - [`command`]: `lakesync lake compact|expire|clean-orphans`.
//!
//! [`crate::query`] reads the same tables with DataFusion.

pub mod catalog;
pub mod changes;
pub mod checkpoint;
pub mod command;
pub mod compact;
pub mod maintenance;
pub mod mapping;
pub mod read;
pub mod sink;
pub mod source;
pub mod storage;
mod write;

pub use catalog::{DEFAULT_CATALOG_NAME, IcebergCatalogConfig, connect};
pub use sink::IcebergSink;
pub use storage::{ObjectStoreStorage, ObjectStoreStorageFactory, S3Config};

use crate::Error;

/// The namespace lake tables go in unless a pipeline names another.
pub const DEFAULT_NAMESPACE: &str = "lakesync";

/// An iceberg failure as LakeSync's [`Error::External`], with what was being done.
pub(crate) fn iceberg_error(context: String, e: iceberg::Error) -> Error {
    // A storage failure keeps its own verdict under whatever iceberg-rust wrapped it in (a
    // refused upload surfaces as an `Unexpected` "failed to finish the parquet writer").
    let retryable = match storage::object_store_cause(&e) {
        Some(cause) => storage::is_transient(cause),
        None => {
            e.retryable()
                || matches!(
                    e.kind(),
                    iceberg::ErrorKind::CatalogCommitConflicts | iceberg::ErrorKind::Unexpected
                )
        }
    };
    Error::External {
        system: "iceberg",
        message: format!("{context}: {e}"),
        retryable,
        source: Some(Box::new(e)),
    }
}
