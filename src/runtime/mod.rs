//! The streaming runtime: sources → per-table lanes of operators → sinks, with exactly-once
//! commits by epoch.
//!
//! The contracts every component implements are in [`api`]; [`pipeline`] runs a built graph;
//! [`checkpoint`] remembers what was committed; [`tier`] routes deltas by age.

pub mod api;
pub mod checkpoint;
pub mod migrate;
pub mod pipeline;
pub mod tier;
