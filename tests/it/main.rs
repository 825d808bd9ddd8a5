//! LakeSync's integration tests: one binary, one module per area.

// Test code may panic with a message on a broken set-up.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod bigquery;
mod cli;
mod client;
mod cloudwatch;
mod config;
mod gateway;
mod gateway_lake;
mod golden;
mod iceberg;
mod iceberg_source;
mod lake_checkpoint;
mod lakehouse;
mod migrate;
mod mysql;
mod postgres;
mod resume;
mod services;
mod sqlite;
mod support;
mod time_travel;
