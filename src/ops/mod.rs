//! Runtime operators: the stateful wrappers that apply kernel functions to a stream of delta
//! batches, implementing [`crate::runtime::api::Operator`].

pub mod filter;
pub mod row_state;
