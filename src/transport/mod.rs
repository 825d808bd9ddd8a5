//! The gateway's transports: Arrow Flight (the primary one) and the original HTTP/JSON and
//! WebSocket protocol. Both serve one [`ServerContext`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::gateway::Gateway;
use crate::gateway::actions::ActionDispatcher;
use crate::gateway::auth::Authenticator;
use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::rate_limit::RateLimiter;

pub mod flight;
pub mod http;

/// Everything a transport needs to serve requests.
#[derive(Debug)]
pub struct ServerContext {
    /// The gateway.
    pub gateway: Gateway,
    /// Token verification (disabled when no secret is configured).
    pub auth: Authenticator,
    /// Per-client request limit, when configured.
    pub rate_limiter: Option<RateLimiter>,
    /// Prometheus metrics.
    pub metrics: GatewayMetrics,
    /// Connector actions.
    pub actions: ActionDispatcher,
    /// Set when the server is shutting down (`/ready` answers 503).
    pub draining: AtomicBool,
}

/// A shared [`ServerContext`].
pub type SharedContext = Arc<ServerContext>;
