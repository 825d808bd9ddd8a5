//! LakeSync's integration tests: one binary, one module per area.
mod cli;
mod config;
mod golden;
mod iceberg;
mod resume;
mod services;
mod sqlite;
mod support;
