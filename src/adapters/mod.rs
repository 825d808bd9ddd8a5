//! Adapters: one module per system, each a source, a sink, or both.

pub mod iceberg;
pub mod jsonl;
pub mod parquet;
pub mod sqlite;
