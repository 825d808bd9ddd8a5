//! The HTTP/JSON routes of the original protocol (reference §3.3), over one gateway.
//!
//! Every `/v1/sync/{gw}/…` and `/v1/admin/…/{gw}` route first checks that `{gw}` is this
//! gateway's id (404 "Gateway ID mismatch", before authentication, as the original does), then
//! authenticates the caller: a `Bearer` token when authentication is on (401 `AUTH_ERROR`; 403
//! `AUTH_ERROR` for a token of another gateway or, on admin routes, a caller without the admin
//! role), else an anonymous admin acting as the client id the request names. Then the caller's
//! client id is counted against the rate limit, when one is configured (429 with `Retry-After`).
//!
//! JSON carries HLCs as decimal strings. A push is applied whole or not at all: one bad delta
//! fails the push with that delta's error and nothing is applied (the original applied the deltas
//! before a drifting one). Acknowledged pushes are durable, and reach WebSocket subscribers
//! through the gateway ([`super::ws`]). A pull's `serverHlc` is the gateway's cursor, and pulls
//! see rows through the caller's sync rules (see `gateway::record`); its `clientId` must be the
//! token's `sub`, as a push's must (the original trusted it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::HttpState;
use super::checkpoint;
use super::errors::ApiError;
use super::json::{group_thousands, parse_json, query_params, read_body};
use crate::gateway::actions::{ActionDiscovery, ActionPush};
use crate::gateway::auth::{Principal, require_admin, unix_now_secs};
use crate::gateway::metrics::Transport;
use crate::kernel::delta::RowDelta;
use crate::kernel::delta_batch::batch_to_deltas;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::rules::SyncRules;
use crate::kernel::schema::TableSchema;
use crate::transport::ServerContext;
use crate::{Error, ErrorKind, Result};

/// The client id of an anonymous caller that names none (authentication off).
pub const ANONYMOUS: &str = "anonymous";

/// How long `POST /v1/admin/flush/{gw}` waits for the flush to commit.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The `Sunset` date of the unversioned routes.
pub const LEGACY_SUNSET: &str = "2026-06-01";

/// The caller's socket address, when the server was started with connect info.
#[derive(Clone, Copy, Debug)]
pub struct Remote(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Remote {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> std::result::Result<Self, Infallible> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

type Answer = std::result::Result<Response, ApiError>;

// ---- static routes ------------------------------------------------------------------------

/// `GET /health`: `{"status":"ok"}`.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: `{"status":"ready"}`, or 503 `{"status":"not_ready","reason":"draining"}`.
pub async fn ready(State(state): State<HttpState>) -> Response {
    if state
        .ctx
        .draining
        .load(std::sync::atomic::Ordering::Acquire)
    {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": "draining" })),
        )
            .into_response()
    } else {
        Json(json!({ "status": "ready" })).into_response()
    }
}

/// `GET /metrics`: Prometheus text (unauthenticated, as in the original).
pub async fn metrics(State(state): State<HttpState>) -> Response {
    let ctx = &state.ctx;
    let stats = ctx.gateway.stats().await;
    ctx.metrics.set_buffer(stats.byte_size, stats.log_size);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::gateway::metrics::CONTENT_TYPE),
        )],
        ctx.metrics.encode(),
    )
        .into_response()
}

/// Any method on `/sync/…` or `/admin/…`: 301 to the same path under `/v1` (query kept), with a
/// `Sunset` header.
pub async fn legacy(uri: Uri) -> Response {
    let location = match uri.query() {
        Some(q) => format!("/v1{}?{q}", uri.path()),
        None => format!("/v1{}", uri.path()),
    };
    let mut response = StatusCode::MOVED_PERMANENTLY.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert("sunset", HeaderValue::from_static(LEGACY_SUNSET));
    response
}

/// No route: 404 "Not found".
pub async fn not_found() -> ApiError {
    ApiError::not_found("Not found")
}

// ---- shared steps -------------------------------------------------------------------------

/// 404 "Gateway ID mismatch" unless the route's `{gw}` is this gateway.
pub fn check_gateway(ctx: &ServerContext, gw: &str) -> std::result::Result<(), ApiError> {
    if gw == ctx.gateway.id() {
        Ok(())
    } else {
        Err(ApiError::not_found("Gateway ID mismatch"))
    }
}

/// The token's principal when authentication is on (401/403 `AUTH_ERROR` when it does not
/// verify); `None` when it is off. `query_token` is `?token=` (WebSocket upgrades only).
pub fn token_principal(
    ctx: &ServerContext,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> std::result::Result<Option<Principal>, ApiError> {
    if !ctx.auth.is_enabled() {
        return Ok(None);
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    ctx.auth
        .authenticate(authorization, query_token, unix_now_secs())
        .map(Some)
        .map_err(auth_error)
}

/// The caller: the token's principal, or (authentication off) an anonymous admin acting as
/// `client_id`, or as [`ANONYMOUS`] when it names none.
pub fn principal(
    ctx: &ServerContext,
    token: Option<Principal>,
    client_id: Option<&str>,
) -> Principal {
    token.unwrap_or_else(|| {
        ctx.auth
            .anonymous(client_id.filter(|c| !c.is_empty()).unwrap_or(ANONYMOUS))
    })
}

/// An authentication-stage error: the original answers both 401 and 403 with `AUTH_ERROR`.
fn auth_error(error: Error) -> ApiError {
    ApiError::from(error).with_code("AUTH_ERROR")
}

/// Counts a request of `caller` against the rate limit (429 `RATE_LIMITED` over it). The key is
/// the client id, or for an anonymous caller that named none its address.
pub fn rate_limit(
    ctx: &ServerContext,
    caller: &Principal,
    remote: Remote,
) -> std::result::Result<(), ApiError> {
    let Some(limiter) = &ctx.rate_limiter else {
        return Ok(());
    };
    let key = if caller.authenticated || caller.client_id != ANONYMOUS {
        caller.client_id.clone()
    } else {
        remote
            .0
            .map_or_else(|| ANONYMOUS.to_string(), |a| format!("addr:{}", a.ip()))
    };
    limiter.check(&key, std::time::Instant::now()).map_err(|e| {
        let mut error = ApiError::from(e);
        error.message = "Too many requests".to_string();
        error
    })
}

/// 403 `FORBIDDEN` when an authenticated caller names another client in a request.
fn check_client(
    caller: Option<&Principal>,
    claimed: &str,
    what: &str,
) -> std::result::Result<(), ApiError> {
    match caller {
        Some(p) if p.client_id != claimed => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("Client ID mismatch: {what} clientId does not match authenticated identity"),
        )),
        _ => Ok(()),
    }
}

/// The row-form deltas of delta batches, in order.
pub fn deltas_of(batches: &[arrow::array::RecordBatch]) -> Result<Vec<RowDelta>> {
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for batch in batches {
        out.extend(batch_to_deltas(batch)?);
    }
    Ok(out)
}

/// A server HLC for "now": the wall clock, and never below the gateway's newest cursor.
fn server_hlc_now(ctx: &ServerContext) -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let wall = HlcTimestamp::new(now_ms, 0).map_or(0, |h| h.0);
    wall.max(ctx.gateway.head())
}

fn non_empty<'a>(q: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    q.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

// ---- sync routes --------------------------------------------------------------------------

/// `POST /v1/sync/{gw}/push`: `{"clientId","deltas":[RowDelta],"lastSeenHlc"}` →
/// `{"serverHlc","accepted","deltas":[ingested]}`.
pub async fn push(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let ctx = &state.ctx;
    check_gateway(ctx, &gw)?;
    let started = Instant::now();
    let token = token_principal(ctx, &headers, None)?;
    if let Some(p) = &token {
        rate_limit(ctx, p, remote)?;
    }
    let limits = ctx.gateway.limits();
    let bytes = read_body(&headers, body, limits.max_push_bytes).await?;
    let value = parse_json(&bytes)?;
    let (client_id, items) = match (value.get("clientId"), value.get("deltas")) {
        (Some(Value::String(c)), Some(Value::Array(items))) if !c.is_empty() => (c.clone(), items),
        _ => {
            return Err(ApiError::validation(
                "Missing required fields: clientId, deltas",
            ));
        }
    };
    check_client(token.as_ref(), &client_id, "push")?;
    let anonymous = token.is_none();
    let caller = principal(ctx, token, Some(&client_id));
    if anonymous {
        rate_limit(ctx, &caller, remote)?;
    }
    if items.len() > limits.max_push_deltas {
        return Err(ApiError::validation(format!(
            "Too many deltas in a single push (max {})",
            group_thousands(limits.max_push_deltas)
        )));
    }
    let deltas = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            RowDelta::deserialize(item)
                .map_err(|e| ApiError::validation(format!("deltas[{i}]: {e}")))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;

    let outcome = ctx
        .gateway
        .push_rows(&caller.client_id, caller.authenticated, &deltas, true)
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            let error = ApiError::from(e);
            ctx.metrics
                .record_push(0, &[(error.code, deltas.len() as u64)], started.elapsed());
            tracing::debug!(client = %caller.client_id, code = error.code, error = %error.message, "push refused");
            return Err(error);
        }
    };
    ctx.metrics
        .record_push(outcome.accepted as u64, &[], started.elapsed());
    let ingested = deltas_of(&outcome.ingested)?;
    tracing::debug!(
        client = %caller.client_id,
        accepted = outcome.accepted,
        duplicates = outcome.duplicates,
        cursor = outcome.cursor,
        "push accepted"
    );
    Ok(Json(json!({
        "serverHlc": outcome.cursor.to_string(),
        "accepted": outcome.accepted,
        "deltas": ingested,
    }))
    .into_response())
}

/// `limit` as JavaScript's `parseInt(text, 10)` reads it: optional sign, then leading digits.
fn parse_limit(text: &str) -> Option<i64> {
    let t = text.trim_start();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    // Saturate: a huge limit is clamped to the maximum anyway.
    let n = digits[..end].parse::<i64>().unwrap_or(i64::MAX);
    Some(if negative { -n } else { n })
}

/// `GET /v1/sync/{gw}/pull?since=&clientId=&limit=&source=` →
/// `{"deltas","serverHlc","hasMore"}`.
pub async fn pull(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    uri: Uri,
) -> Answer {
    let ctx = &state.ctx;
    check_gateway(ctx, &gw)?;
    let token = token_principal(ctx, &headers, None)?;
    if let Some(p) = &token {
        rate_limit(ctx, p, remote)?;
    }
    let q = query_params(&uri)?;
    let (Some(since), Some(client_id)) = (non_empty(&q, "since"), non_empty(&q, "clientId")) else {
        return Err(ApiError::validation(
            "Missing required query params: since, clientId",
        ));
    };
    let since: u64 = since.trim().parse().map_err(|_| {
        ApiError::validation("Invalid 'since' parameter \u{2014} must be a decimal integer")
    })?;
    let limits = ctx.gateway.limits();
    let limit = match non_empty(&q, "limit") {
        None => limits.default_pull_limit,
        Some(text) => match parse_limit(text) {
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => {
                return Err(ApiError::validation(
                    "Invalid 'limit' parameter \u{2014} must be a positive integer",
                ));
            }
        },
    }
    .min(limits.max_pull_limit);
    check_client(token.as_ref(), client_id, "pull")?;
    let anonymous = token.is_none();
    let caller = principal(ctx, token, Some(client_id));
    if anonymous {
        rate_limit(ctx, &caller, remote)?;
    }
    if let Some(source) = non_empty(&q, "source") {
        return Err(ApiError::not_found(format!(
            "Source adapter {source:?} not found"
        )));
    }
    let filter = ctx.gateway.client_filter(&caller.claims);
    let page = ctx.gateway.pull(&filter, since, limit, None)?;
    let deltas = deltas_of(&page.batches)?;
    ctx.metrics
        .record_pull(Transport::Http, deltas.len() as u64);
    Ok(Json(json!({
        "deltas": deltas,
        "serverHlc": page.cursor.to_string(),
        "hasMore": page.has_more,
    }))
    .into_response())
}

/// `POST /v1/sync/{gw}/action`: `{"clientId","actions":[…]}` → `{"results","serverHlc"}`.
pub async fn action(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let ctx = &state.ctx;
    check_gateway(ctx, &gw)?;
    let token = token_principal(ctx, &headers, None)?;
    if let Some(p) = &token {
        rate_limit(ctx, p, remote)?;
    }
    let bytes = read_body(&headers, body, ctx.gateway.limits().max_push_bytes).await?;
    let value = parse_json(&bytes)?;
    let client_id = match (value.get("clientId"), value.get("actions")) {
        (Some(Value::String(c)), Some(Value::Array(_))) if !c.is_empty() => c.clone(),
        _ => {
            return Err(ApiError::validation(
                "Missing required fields: clientId, actions",
            ));
        }
    };
    check_client(token.as_ref(), &client_id, "action")?;
    let anonymous = token.is_none();
    let caller = principal(ctx, token, Some(&client_id));
    if anonymous {
        rate_limit(ctx, &caller, remote)?;
    }
    let push = ActionPush::from_json(&value)?;
    let response = ctx
        .actions
        .dispatch(push, &caller, server_hlc_now(ctx))
        .await?;
    Ok(Json(response).into_response())
}

/// `GET /v1/sync/{gw}/actions`: `{"connectors":{name:[ActionDescriptor]}}`.
pub async fn actions(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    uri: Uri,
) -> Answer {
    let ctx = &state.ctx;
    check_gateway(ctx, &gw)?;
    let token = token_principal(ctx, &headers, None)?;
    let q = query_params(&uri)?;
    let caller = principal(ctx, token, non_empty(&q, "clientId"));
    rate_limit(ctx, &caller, remote)?;
    Ok(Json(ActionDiscovery {
        connectors: ctx.actions.describe(),
    })
    .into_response())
}

/// `GET /v1/sync/{gw}/checkpoint`: the caller's visible rows as a checkpoint stream (see
/// [`checkpoint`]), with `X-Checkpoint-Hlc`.
pub async fn get_checkpoint(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    uri: Uri,
) -> Answer {
    let ctx = &state.ctx;
    check_gateway(ctx, &gw)?;
    let token = token_principal(ctx, &headers, None)?;
    let q = query_params(&uri)?;
    let caller = principal(ctx, token, non_empty(&q, "clientId"));
    rate_limit(ctx, &caller, remote)?;
    let filter = ctx.gateway.client_filter(&caller.claims);
    let snapshot = ctx
        .gateway
        .checkpoint(&filter, None, checkpoint::BATCH_ROWS)
        .await?;
    let cursor = snapshot.cursor;
    let rows: usize = snapshot.batches.iter().map(|b| b.num_rows()).sum();
    tracing::debug!(client = %caller.client_id, rows, cursor, "checkpoint served");
    // Frames are encoded batch by batch as the body is sent, not all at once.
    let frames = futures::stream::iter(snapshot.batches).map(move |batch| {
        let deltas = batch_to_deltas(&batch)?;
        checkpoint::encode_frames(&deltas, cursor, checkpoint::MAX_FRAME_BYTES)
    });
    let mut response = Response::new(Body::from_stream(frames));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(checkpoint::CONTENT_TYPE),
    );
    h.insert(checkpoint::HLC_HEADER, HeaderValue::from(cursor));
    Ok(response)
}

// ---- admin routes -------------------------------------------------------------------------

/// The admin caller: gateway checked, authenticated, admin role (403 `AUTH_ERROR` otherwise),
/// rate-limited.
fn admin(
    ctx: &ServerContext,
    gw: &str,
    headers: &HeaderMap,
    remote: Remote,
) -> std::result::Result<Principal, ApiError> {
    check_gateway(ctx, gw)?;
    let token = token_principal(ctx, headers, None)?;
    let caller = principal(ctx, token, None);
    require_admin(&caller).map_err(auth_error)?;
    rate_limit(ctx, &caller, remote)?;
    Ok(caller)
}

/// Maps bad input to 400 with `code` (the admin routes answer 400 for every invalid document);
/// other errors as usual.
fn bad_document(code: &'static str) -> impl Fn(Error) -> ApiError {
    move |e| match e.kind() {
        ErrorKind::User => ApiError::from(e)
            .with_status(StatusCode::BAD_REQUEST)
            .with_code(code),
        _ => ApiError::from(e),
    }
}

/// `POST /v1/admin/flush/{gw}`: flushes everything accepted so far → `{"flushed":true}`
/// (500 `FLUSH_ERROR` when the flush fails or takes over a minute).
pub async fn admin_flush(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
) -> Answer {
    let ctx = &state.ctx;
    admin(ctx, &gw, &headers, remote)?;
    ctx.gateway.flush(FLUSH_TIMEOUT).await.map_err(|e| {
        tracing::warn!(error = %e, "admin flush failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "FLUSH_ERROR",
            e.to_string(),
        )
    })?;
    Ok(Json(json!({ "flushed": true })).into_response())
}

/// `POST /v1/admin/schema/{gw}`: a `TableSchema` (a new table, or an add-only evolution) →
/// `{"saved":true}`; 400 `SCHEMA_ERROR` for an invalid schema or change.
pub async fn admin_schema(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let ctx = &state.ctx;
    admin(ctx, &gw, &headers, remote)?;
    let bytes = read_body(&headers, body, ctx.gateway.limits().max_push_bytes).await?;
    let value = parse_json(&bytes)?;
    let schema = TableSchema::deserialize(&value)
        .map_err(|e| Error::schema(format!("table schema is not valid: {e}")))
        .map_err(bad_document("SCHEMA_ERROR"))?;
    let table = schema.table.clone();
    ctx.gateway
        .set_schema(schema)
        .await
        .map_err(bad_document("SCHEMA_ERROR"))?;
    tracing::info!(table = %table, "table schema saved through the admin API");
    Ok(Json(json!({ "saved": true })).into_response())
}

/// `POST /v1/admin/sync-rules/{gw}`: a sync-rules document → `{"saved":true}`; 400
/// `VALIDATION_ERROR` for an invalid one.
pub async fn admin_sync_rules(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let ctx = &state.ctx;
    admin(ctx, &gw, &headers, remote)?;
    let bytes = read_body(&headers, body, ctx.gateway.limits().max_push_bytes).await?;
    let value = parse_json(&bytes)?;
    let rules = SyncRules::from_value(&value).map_err(bad_document("VALIDATION_ERROR"))?;
    ctx.gateway
        .set_sync_rules(rules)
        .await
        .map_err(bad_document("VALIDATION_ERROR"))?;
    tracing::info!("sync rules saved through the admin API");
    Ok(Json(json!({ "saved": true })).into_response())
}

/// `GET /v1/admin/metrics/{gw}`: the gateway's buffer figures (`logSize`, `indexSize`,
/// `byteSize`, ...).
pub async fn admin_metrics(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
) -> Answer {
    let ctx = &state.ctx;
    admin(ctx, &gw, &headers, remote)?;
    Ok(Json(ctx.gateway.stats().await).into_response())
}

/// `GET /v1/connectors/types`: the connector types this build can run. None yet: the SaaS and
/// database connectors arrive as pipeline sources (see the issues), so the list is empty.
pub async fn connector_types() -> Json<Value> {
    Json(json!([]))
}

/// `GET /v1/admin/connectors/{gw}`: registered connectors (none can be registered yet).
pub async fn admin_list_connectors(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
) -> Answer {
    admin(&state.ctx, &gw, &headers, remote)?;
    Ok(Json(json!([])).into_response())
}

/// `POST /v1/admin/connectors/{gw}`: register a connector. No connector type is available in
/// this build, so every registration is refused with 400 naming the type asked for.
pub async fn admin_register_connector(
    State(state): State<HttpState>,
    Path(gw): Path<String>,
    remote: Remote,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    admin(&state.ctx, &gw, &headers, remote)?;
    let config: Value = serde_json::from_slice(&body)
        .map_err(|_| Error::invalid("connector", "Invalid JSON body"))?;
    let kind = config.get("type").and_then(Value::as_str).unwrap_or("");
    Err(Error::invalid(
        "connector",
        format!("unknown connector type {kind:?}: this gateway has no connector types (GET /v1/connectors/types)"),
    )
    .into())
}

/// `DELETE /v1/admin/connectors/{gw}/{name}`: 404, as no connector can be registered.
pub async fn admin_unregister_connector(
    State(state): State<HttpState>,
    Path((gw, name)): Path<(String, String)>,
    remote: Remote,
    headers: HeaderMap,
) -> Answer {
    admin(&state.ctx, &gw, &headers, remote)?;
    Err(Error::NotFound {
        what: "connector",
        name,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_like_parse_int() {
        assert_eq!(parse_limit("37"), Some(37));
        assert_eq!(parse_limit(" 12abc"), Some(12));
        assert_eq!(parse_limit("-5"), Some(-5));
        assert_eq!(parse_limit("1.5"), Some(1));
        assert_eq!(parse_limit("abc"), None);
        assert_eq!(parse_limit(""), None);
        assert_eq!(parse_limit("99999999999999999999999"), Some(i64::MAX));
    }
}
