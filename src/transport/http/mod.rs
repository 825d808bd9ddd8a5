//! The original LakeSync HTTP/JSON and WebSocket protocol, spoken by the gateway so browsers and
//! existing LakeSync clients can sync with it (reference §3.2–3.3).
//!
//! | route | what |
//! |---|---|
//! | `OPTIONS *` | CORS preflight: 204 |
//! | `GET /health` | `{"status":"ok"}` |
//! | `GET /ready` | `{"status":"ready"}`, or 503 `{"status":"not_ready","reason":"draining"}` |
//! | `GET /metrics` | Prometheus text |
//! | `* /sync/…`, `* /admin/…` | 301 to `/v1/…`, with `Sunset` |
//! | `POST /v1/sync/{gw}/push` | push deltas ([`routes::push`]) |
//! | `GET /v1/sync/{gw}/pull` | pull from a cursor ([`routes::pull`]) |
//! | `POST /v1/sync/{gw}/action`, `GET …/actions` | connector actions |
//! | `GET /v1/sync/{gw}/checkpoint` | the caller's rows as a checkpoint stream ([`checkpoint`]) |
//! | `GET /v1/sync/{gw}/ws` | the WebSocket protocol ([`ws`]) |
//! | `POST /v1/admin/flush/{gw}`, `…/schema/{gw}`, `…/sync-rules/{gw}`, `GET …/metrics/{gw}` | admin |
//!
//! Semantics are the gateway's (`crate::gateway`): a push is durable once acknowledged and is
//! applied whole or not at all; pulls never miss and see rows through the caller's sync rules;
//! the caller is who its token says, whatever a request body or query claims. What every request
//! goes through — security and CORS headers, request ids, error bodies, timeouts, draining,
//! metrics — is in [`middleware`]; statuses and error codes in [`errors`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;

use crate::transport::SharedContext;
use crate::{Error, Result};

pub mod checkpoint;
pub mod errors;
pub mod json;
pub mod middleware;
pub mod routes;
pub mod ws;

#[cfg(test)]
mod tests;

pub use errors::{ApiError, error_status};

/// How long [`serve`] waits, after the listener stops, for WebSocket connections to close.
pub const WS_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the handlers share: the server context and the WebSocket connections.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The gateway and everything around it.
    pub ctx: SharedContext,
    /// Open WebSocket connections.
    pub ws: Arc<ws::WsRegistry>,
}

/// The router of every route above, over `ctx`.
pub fn router(ctx: SharedContext) -> Router {
    router_with(HttpState {
        ctx,
        ws: Arc::new(ws::WsRegistry::default()),
    })
}

fn router_with(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .route("/sync/{*rest}", any(routes::legacy))
        .route("/admin/{*rest}", any(routes::legacy))
        .route("/v1/sync/{gw}/push", post(routes::push))
        .route("/v1/sync/{gw}/pull", get(routes::pull))
        .route("/v1/sync/{gw}/action", post(routes::action))
        .route("/v1/sync/{gw}/actions", get(routes::actions))
        .route("/v1/sync/{gw}/checkpoint", get(routes::get_checkpoint))
        .route("/v1/sync/{gw}/ws", get(ws::upgrade))
        .route("/v1/admin/flush/{gw}", post(routes::admin_flush))
        .route("/v1/admin/schema/{gw}", post(routes::admin_schema))
        .route("/v1/admin/sync-rules/{gw}", post(routes::admin_sync_rules))
        .route("/v1/admin/metrics/{gw}", get(routes::admin_metrics))
        .route("/v1/connectors/types", get(routes::connector_types))
        .route("/connectors/types", any(routes::legacy))
        .route(
            "/v1/admin/connectors/{gw}",
            get(routes::admin_list_connectors).post(routes::admin_register_connector),
        )
        .route(
            "/v1/admin/connectors/{gw}/{name}",
            axum::routing::delete(routes::admin_unregister_connector),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::common,
        ))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then stops taking connections,
/// lets requests in flight finish, closes WebSocket connections with 1001 and returns once they
/// are closed (or after [`WS_CLOSE_GRACE`]).
pub async fn serve(
    ctx: SharedContext,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = HttpState {
        ctx: ctx.clone(),
        ws: Arc::new(ws::WsRegistry::default()),
    };
    let registry = state.ws.clone();
    let app = router_with(state);
    let addr = listener.local_addr().ok();
    tracing::info!(gateway = %ctx.gateway.id(), addr = ?addr, "HTTP / WebSocket listener started");
    let on_stop = registry.clone();
    let stop_ctx = ctx.clone();
    let signal = async move {
        shutdown.await;
        stop_ctx.draining.store(true, Ordering::Release);
        on_stop.shut_down();
    };
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .await
    .map_err(|e| Error::external("http", false, e))?;
    let deadline = tokio::time::Instant::now() + WS_CLOSE_GRACE;
    while registry.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(gateway = %ctx.gateway.id(), "HTTP / WebSocket listener stopped");
    Ok(())
}
