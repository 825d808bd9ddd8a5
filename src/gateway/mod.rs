//! The gateway: the sync server many clients push to and pull from (`lakesync serve`).

pub mod actions;
pub mod auth;
pub mod core;
pub mod log;
pub mod metrics;
pub mod push;
pub mod rate_limit;
pub mod record;

pub use self::core::{
    CheckpointSnapshot, FlushRequest, Gateway, GatewayOptions, GatewayStats, LakeCheckpoints,
    Limits, PullPage, PushOutcome,
};
pub mod serve;
pub mod source;
