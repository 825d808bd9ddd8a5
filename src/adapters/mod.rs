//! Adapters: one module per system, each a source, a sink, or both.

pub mod bigquery;
pub mod cloudwatch;
pub mod diff_state;
pub mod hot;
pub mod iceberg;
pub mod jsonl;
pub mod mysql;
pub mod parquet;
pub mod postgres;
pub(crate) mod sql_common;
pub mod sqlite;
