//! The original WebSocket protocol (reference §3.2) on `GET /v1/sync/{gw}/ws`.
//!
//! **Upgrade.** The route's `{gw}` must be this gateway (404); with authentication on, a token
//! must verify — `Authorization: Bearer` or `?token=` (browsers cannot set headers on a
//! WebSocket) — (401, or 403 for another gateway's token). Unlike the original gateway-server,
//! whose upgrade only accepted the unversioned `/sync/{gw}/ws`, this is the versioned path the
//! HTTP routes use. Without authentication a connection acts as `?clientId=` or `anon-<uuid>`,
//! and adopts the client id its first push or pull names. Over
//! `ws_max_connections` open connections the upgrade is refused with 503; a plain `GET` is 404.
//!
//! **Frames.** Binary only: a text frame closes the connection with 1003 "Binary frames only".
//! A client frame is one tag byte and a protobuf message: `0x01` `SyncPush`, `0x02` `SyncPull`.
//! The reply to either is an *untagged* `SyncResponse` (a push's has no deltas and carries the
//! cursor after the push as `server_hlc`). A frame shorter than 2 bytes closes with 1002
//! "Message too short", an unknown tag with 1002 "Unknown message tag: 0xNN", a frame over
//! `max_push_bytes` with 1009, more than `ws_max_messages_per_second` frames in a second with 1008
//! "Rate limit exceeded", and a message that does not decode or a push or pull the gateway
//! refuses with 1008 and the error's message. Server shutdown closes with 1001.
//!
//! **Pushes** go through the same durable, all-or-nothing push as HTTP (the original's WebSocket
//! pushes were not persisted); with authentication on, the push's `client_id` and every delta's
//! must be the token's `sub` (else 1008).
//!
//! **Broadcasts.** Every connection follows the gateway's accepted records (whatever transport
//! pushed them) and, for each record pushed by another client, sends `0x03 || SyncResponse` with
//! what the connection's sync rules let it see of the record (`gateway::record`) and the record's
//! cursor as `server_hlc`. A connection that falls behind the live feed catches up from the
//! gateway's log, so it skips nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};

/// Read and write buffer size per WebSocket connection.
const SOCKET_BUFFER_BYTES: usize = 4 << 10;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::HttpState;
use super::errors::ApiError;
use super::json::{format_size, group_thousands, query_params};
use super::routes::{Remote, check_gateway, deltas_of, rate_limit, token_principal};
use crate::gateway::metrics::Transport;
use crate::gateway::record::RecordRef;
use crate::kernel::delta::RowDelta;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::proto::{encode_sync_response, from_proto, v1};
use crate::kernel::rules::Claims;
use crate::transport::SharedContext;
use crate::{Error, Result};

/// Client → server: a `SyncPush`.
pub const TAG_SYNC_PUSH: u8 = 0x01;
/// Client → server: a `SyncPull`.
pub const TAG_SYNC_PULL: u8 = 0x02;
/// Server → client: a broadcast `SyncResponse`.
pub const TAG_BROADCAST: u8 = 0x03;

/// Close codes used (RFC 6455 §7.4.1).
pub mod close {
    /// The server is going away.
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error (short frame, unknown tag).
    pub const PROTOCOL: u16 = 1002;
    /// A frame of a type the server does not accept (text).
    pub const UNSUPPORTED: u16 = 1003;
    /// A message the server refuses (decode error, refused push or pull, rate limit).
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed.
    pub const INTERNAL: u16 = 1011;
}

/// The longest close reason a close frame can carry, in bytes.
const MAX_CLOSE_REASON: usize = 123;

/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Open WebSocket connections and the shutdown signal they follow.
#[derive(Debug)]
pub struct WsRegistry {
    connections: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

impl Default for WsRegistry {
    fn default() -> Self {
        Self {
            connections: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
        }
    }
}

impl WsRegistry {
    /// Open connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Asks every connection to close with 1001.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }
}

/// One counted connection; uncounted when dropped (also when an upgrade never completes).
struct Slot {
    registry: Arc<WsRegistry>,
    ctx: SharedContext,
}

impl Slot {
    fn acquire(registry: &Arc<WsRegistry>, ctx: &SharedContext, max: usize) -> Option<Self> {
        let previous = registry.connections.fetch_add(1, Ordering::AcqRel);
        if previous >= max {
            registry.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        ctx.metrics.connection_opened(Transport::Ws);
        Some(Self {
            registry: registry.clone(),
            ctx: ctx.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.connections.fetch_sub(1, Ordering::AcqRel);
        self.ctx.metrics.connection_closed(Transport::Ws);
    }
}

/// `GET /v1/sync/{gw}/ws`: authenticates and upgrades (see the module docs).
pub async fn upgrade(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    uri: Uri,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> std::result::Result<Response, ApiError> {
    let ctx = &state.ctx;
    check_gateway(ctx, &gw)?;
    let q = query_params(&uri)?;
    let token = token_principal(ctx, &headers, q.get("token").map(String::as_str))?;
    let caller = match token {
        Some(p) => p,
        None => {
            let id = q
                .get("clientId")
                .filter(|c| !c.is_empty())
                .cloned()
                .unwrap_or_else(|| format!("anon-{}", uuid::Uuid::new_v4()));
            ctx.auth.anonymous(&id)
        }
    };
    rate_limit(ctx, &caller, remote)?;
    let Ok(upgrade) = upgrade else {
        return Err(ApiError::not_found("Not found"));
    };
    let limits = ctx.gateway.limits();
    let Some(slot) = Slot::acquire(&state.ws, ctx, limits.ws_max_connections) else {
        tracing::warn!(
            max = limits.ws_max_connections,
            "WebSocket connection refused: at the connection limit"
        );
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "BACKPRESSURE_ERROR",
            format!(
                "Too many WebSocket connections (max {})",
                group_thousands(limits.ws_max_connections)
            ),
        ));
    };
    // Frames a little over the limit are read and refused with 1009; far larger ones end the
    // connection without reading them into memory.
    let cap = limits.max_push_bytes.saturating_mul(2).max(1 << 16);
    let connection = Connection {
        ctx: ctx.clone(),
        client_id: caller.client_id,
        claims: caller.claims,
        authenticated: caller.authenticated,
        last_seq: 0,
        window_start: Instant::now(),
        window_count: 0,
    };
    let shutdown = state.ws.shutdown.subscribe();
    // Small socket buffers: an idle subscriber should cost kilobytes, not the 128 KiB read and
    // write buffers tungstenite allocates by default; frames larger than them still pass.
    Ok(upgrade
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| connection.run(socket, shutdown, slot)))
}

/// What to do after a client frame.
enum Step {
    /// Send this (untagged) reply.
    Reply(Bytes),
    /// Nothing to send.
    Nothing,
    /// Close with this code and reason.
    Close(u16, String),
}

/// One connection's state.
struct Connection {
    ctx: SharedContext,
    client_id: String,
    claims: Claims,
    authenticated: bool,
    /// The newest record cursor this connection has been sent (or skipped).
    last_seq: u64,
    window_start: Instant,
    window_count: u32,
}

impl Connection {
    async fn run(
        mut self,
        mut socket: WebSocket,
        mut shutdown: watch::Receiver<bool>,
        _slot: Slot,
    ) {
        tracing::debug!(client = %self.client_id, "WebSocket connected");
        // Records up to `before` were accepted before the connection; later ones are sent. A
        // record accepted between reading `before` and subscribing is found by the catch-up.
        let before = self.ctx.gateway.head();
        let mut live = self.ctx.gateway.subscribe();
        self.last_seq = before;
        if self.ctx.gateway.head() > before {
            match self.catch_up() {
                Ok(frames) => {
                    for frame in frames {
                        if socket.send(Message::Binary(frame)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    close_with(&mut socket, close::INTERNAL, &e.to_string()).await;
                    return;
                }
            }
        }
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => {
                            tracing::debug!(client = %self.client_id, error = %e, "WebSocket read failed");
                            break;
                        }
                        None => break,
                    };
                    match self.on_message(message).await {
                        Step::Reply(bytes) => {
                            if socket.send(Message::Binary(bytes)).await.is_err() {
                                break;
                            }
                        }
                        Step::Nothing => {}
                        Step::Close(code, reason) => {
                            tracing::debug!(client = %self.client_id, code, reason = %reason, "closing WebSocket");
                            close_with(&mut socket, code, &reason).await;
                            break;
                        }
                    }
                }
                received = live.recv() => {
                    let frames = match received {
                        Ok(record) => self.on_record(&record).into_iter().collect(),
                        Err(RecvError::Lagged(missed)) => {
                            tracing::debug!(client = %self.client_id, missed, "WebSocket broadcast lagged; catching up from the log");
                            match self.catch_up() {
                                Ok(frames) => frames,
                                Err(e) => {
                                    close_with(&mut socket, close::INTERNAL, &e.to_string()).await;
                                    break;
                                }
                            }
                        }
                        Err(RecvError::Closed) => {
                            close_with(&mut socket, close::GOING_AWAY, "Server shutting down").await;
                            break;
                        }
                    };
                    let mut failed = false;
                    for frame in frames {
                        if socket.send(Message::Binary(frame)).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        break;
                    }
                }
                _ = stopping(&mut shutdown) => {
                    close_with(&mut socket, close::GOING_AWAY, "Server shutting down").await;
                    break;
                }
            }
        }
        tracing::debug!(client = %self.client_id, "WebSocket disconnected");
    }

    /// Whether this frame is over the per-second message limit.
    fn over_rate(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count = self.window_count.saturating_add(1);
        self.window_count > self.ctx.gateway.limits().ws_max_messages_per_second
    }

    async fn on_message(&mut self, message: Message) -> Step {
        let data = match message {
            Message::Binary(data) => data,
            Message::Text(_) => {
                return Step::Close(close::UNSUPPORTED, "Binary frames only".to_string());
            }
            // Pings are answered by the WebSocket layer; a close is answered there too.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Step::Nothing,
        };
        if self.over_rate() {
            return Step::Close(close::POLICY, "Rate limit exceeded".to_string());
        }
        let max = self.ctx.gateway.limits().max_push_bytes;
        if data.len() > max {
            return Step::Close(
                close::TOO_BIG,
                format!("Message too large (max {})", format_size(max)),
            );
        }
        if data.len() < 2 {
            return Step::Close(close::PROTOCOL, "Message too short".to_string());
        }
        let result = match data[0] {
            TAG_SYNC_PUSH => self.push(&data[1..]).await,
            TAG_SYNC_PULL => self.pull(&data[1..]),
            tag => {
                return Step::Close(close::PROTOCOL, format!("Unknown message tag: 0x{tag:02x}"));
            }
        };
        match result {
            Ok(reply) => Step::Reply(reply),
            Err(e) => Step::Close(close::POLICY, e.to_string()),
        }
    }

    /// Checks (authentication on) or adopts (off) the client id a message names.
    fn claim(&mut self, claimed: &str, what: &str) -> Result<()> {
        if claimed.is_empty() || claimed == self.client_id {
            return Ok(());
        }
        if self.authenticated {
            return Err(Error::Forbidden(format!(
                "Client ID mismatch: {what} clientId does not match authenticated identity"
            )));
        }
        self.client_id = claimed.to_string();
        self.claims = self.ctx.auth.anonymous(claimed).claims;
        Ok(())
    }

    async fn push(&mut self, payload: &[u8]) -> Result<Bytes> {
        let started = Instant::now();
        let msg = v1::SyncPush::decode(payload)
            .map_err(|e| Error::invalid("SyncPush", format!("cannot decode: {e}")))?;
        self.claim(&msg.client_id, "push")?;
        let limits = self.ctx.gateway.limits();
        if msg.deltas.len() > limits.max_push_deltas {
            return Err(Error::invalid(
                "push",
                format!(
                    "Too many deltas in a single push (max {})",
                    group_thousands(limits.max_push_deltas)
                ),
            ));
        }
        let deltas = msg
            .deltas
            .iter()
            .map(from_proto)
            .collect::<Result<Vec<RowDelta>>>()?;
        let outcome = self
            .ctx
            .gateway
            .push_rows(&self.client_id, self.authenticated, &deltas, true)
            .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                let (_, code) = super::errors::error_status(&e);
                self.ctx
                    .metrics
                    .record_push(0, &[(code, deltas.len() as u64)], started.elapsed());
                return Err(e);
            }
        };
        self.ctx
            .metrics
            .record_push(outcome.accepted as u64, &[], started.elapsed());
        Ok(encode_sync_response(
            &[],
            HlcTimestamp(outcome.cursor),
            false,
        ))
    }

    fn pull(&mut self, payload: &[u8]) -> Result<Bytes> {
        let msg = v1::SyncPull::decode(payload)
            .map_err(|e| Error::invalid("SyncPull", format!("cannot decode: {e}")))?;
        self.claim(&msg.client_id, "pull")?;
        let limits = self.ctx.gateway.limits();
        let limit = match msg.max_deltas {
            0 => limits.default_pull_limit,
            n => (n as usize).min(limits.max_pull_limit),
        };
        let filter = self.ctx.gateway.client_filter(&self.claims);
        let page = self.ctx.gateway.pull(&filter, msg.since_hlc, limit, None)?;
        let deltas = deltas_of(&page.batches)?;
        self.ctx
            .metrics
            .record_pull(Transport::Ws, deltas.len() as u64);
        Ok(encode_sync_response(
            &deltas,
            HlcTimestamp(page.cursor),
            page.has_more,
        ))
    }

    /// The broadcast frame of `record` for this connection, if it should get one.
    fn on_record(&mut self, record: &RecordRef) -> Option<Bytes> {
        if record.seq <= self.last_seq {
            return None;
        }
        self.last_seq = record.seq;
        if record.client_id == self.client_id {
            return None;
        }
        let filter = self.ctx.gateway.client_filter(&self.claims);
        let routed = record.route(&filter).and_then(|batch| {
            batch
                .map(|b| deltas_of(std::slice::from_ref(&b)))
                .transpose()
        });
        match routed {
            Ok(Some(deltas)) if !deltas.is_empty() => Some(broadcast_frame(&deltas, record.seq)),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(client = %self.client_id, seq = record.seq, error = %e, "cannot route a record to a WebSocket client");
                None
            }
        }
    }

    /// Broadcast frames for everything after `last_seq` that other clients pushed, read from
    /// the gateway's log.
    fn catch_up(&mut self) -> Result<Vec<Bytes>> {
        let filter = self.ctx.gateway.client_filter(&self.claims);
        let limit = self.ctx.gateway.limits().max_pull_limit;
        let mut frames = Vec::new();
        loop {
            let page = self.ctx.gateway.pull(&filter, self.last_seq, limit, None)?;
            let deltas: Vec<RowDelta> = deltas_of(&page.batches)?
                .into_iter()
                .filter(|d| d.client_id != self.client_id)
                .collect();
            let progressed = page.cursor > self.last_seq;
            self.last_seq = self.last_seq.max(page.cursor);
            if !deltas.is_empty() {
                frames.push(broadcast_frame(&deltas, page.cursor));
            }
            if !page.has_more || !progressed {
                return Ok(frames);
            }
        }
    }
}

/// Completes when the server shuts down (or its signal is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, before the caller's next await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// `0x03 || SyncResponse{deltas, server_hlc, has_more: false}`.
pub fn broadcast_frame(deltas: &[RowDelta], server_hlc: u64) -> Bytes {
    let body = encode_sync_response(deltas, HlcTimestamp(server_hlc), false);
    let mut frame = BytesMut::with_capacity(1 + body.len());
    frame.put_u8(TAG_BROADCAST);
    frame.extend_from_slice(&body);
    frame.freeze()
}

/// `reason` cut to what a close frame can carry, at a character boundary.
fn close_reason(reason: &str) -> String {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason.to_string();
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// Sends a close frame, then waits briefly for the client's (the closing handshake).
async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: close_reason(reason).into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_frame() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn broadcast_frames_are_tagged() {
        let frame = broadcast_frame(&[], 7);
        assert_eq!(frame[0], TAG_BROADCAST);
        let (deltas, hlc, more) = crate::kernel::proto::decode_sync_response(&frame[1..]).unwrap();
        assert_eq!((deltas.len(), hlc, more), (0, HlcTimestamp(7), false));
    }
}
