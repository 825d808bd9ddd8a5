//! What every request goes through, whatever its route (the original gateway-server's pipeline
//! stages before and after its handlers).
//!
//! - `OPTIONS` on any path is a CORS preflight: 204 with the CORS headers, nothing else runs.
//! - While the server drains, `/v1/…` requests are refused: 503 "Service is shutting down".
//! - A handler gets [`REQUEST_TIMEOUT`] (30 s) to answer; then the client gets 504 "Request
//!   timeout". The handler runs as its own task and is *not* cancelled: a push that times out
//!   still completes (and is idempotent to retry), so no work stops half-way. `POST
//!   /v1/admin/flush/…` has its own, longer timeout and is exempt.
//! - Every answer gets `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
//!   `Strict-Transport-Security`, `X-Request-Id` (the request's own, when it sent a sensible
//!   one, else a new UUID v4), and the CORS headers (the request's `Origin` reflected, else `*`);
//!   `/sync/…`, `/admin/…`, `/v1/sync/…` and `/v1/admin/…` answers get `Cache-Control: no-store`,
//!   and `/v1/…` answers `API-Version: v1`.
//! - Error answers ([`ErrorInfo`] responses) get their body written here, with `requestId`.
//! - Each request is counted in `http_requests_total` by route template and status.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::HttpState;
use super::errors::{ApiError, ErrorInfo};

/// How long a handler has to answer before the client gets 504.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest incoming request id that is echoed (a longer one is replaced).
const MAX_REQUEST_ID_LEN: usize = 200;

/// The layer function (see the module docs).
pub async fn common(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let origin = request.headers().get(header::ORIGIN).cloned();
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());

    let mut response = if method == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else if path.starts_with("/v1/")
        && state
            .ctx
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
    {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "INTERNAL_ERROR",
            "Service is shutting down",
        )
        .into_response()
    } else if path.starts_with("/v1/admin/flush/") {
        next.run(request).await
    } else {
        // Run the handler as its own task so a timeout never cancels it half-way.
        let handler = tokio::spawn(next.run(request));
        match tokio::time::timeout(REQUEST_TIMEOUT, handler).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::error!(error = %e, %path, "an HTTP handler failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    "Internal server error",
                )
                .into_response()
            }
            Err(_) => {
                tracing::warn!(%path, "an HTTP request timed out; its handler runs on");
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "INTERNAL_ERROR",
                    "Request timeout",
                )
                .into_response()
            }
        }
    };

    if let Some(info) = response.extensions_mut().remove::<ErrorInfo>() {
        let body = json!({ "error": info.message, "code": info.code, "requestId": request_id });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        *response.body_mut() = Body::from(bytes);
    }

    let headers = response.headers_mut();
    set_common_headers(headers, &path, &request_id, origin.as_ref());

    let status = response.status().as_u16();
    let route_label = route.as_deref().unwrap_or("unmatched");
    state.ctx.metrics.record_http(route_label, status);
    tracing::debug!(
        method = %method,
        route = route_label,
        status,
        request_id = %request_id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "http request"
    );
    response
}

/// The request's `X-Request-Id` when it is short visible ASCII, else a new UUID v4.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn set_common_headers(
    headers: &mut HeaderMap,
    path: &str,
    request_id: &str,
    origin: Option<&HeaderValue>,
) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, id);
    }
    match origin {
        Some(origin) => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        None => {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, X-Request-Id"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("X-Checkpoint-Hlc, X-Request-Id, Retry-After, API-Version"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    let private = ["/sync/", "/admin/", "/v1/sync/", "/v1/admin/"]
        .iter()
        .any(|p| path.starts_with(p));
    if private {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if path.starts_with("/v1/") {
        headers.insert("api-version", HeaderValue::from_static("v1"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
