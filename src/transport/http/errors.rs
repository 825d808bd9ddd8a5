//! Errors on the HTTP transport: one mapping from [`Error`] to an HTTP status and API error
//! code, and the JSON error body.
//!
//! Every error answer is `{"error": message, "code": CODE, "requestId": id}` — the original
//! gateway-server's pipeline shape. Handlers build an [`ApiError`]; its response carries the body
//! without `requestId` plus an [`ErrorInfo`] extension, and the common middleware
//! ([`super::middleware`]) rewrites the body with the request's id, so every error — from any
//! handler or fallback — carries it.
//!
//! The mapping ([`error_status`]) follows the original's statuses and codes (reference §3.3):
//! invalid input 400 `VALIDATION_ERROR`, clock drift 409 `CLOCK_DRIFT`, a delta that does not fit
//! its table 422 `SCHEMA_ERROR` (the gateway's `SCHEMA_MISMATCH`, renamed on HTTP as the original
//! does), 401 `AUTH_ERROR`, 403 `FORBIDDEN`, 404 `NOT_FOUND`, a full buffer 503
//! `BACKPRESSURE_ERROR`, 429 `RATE_LIMITED` with `Retry-After`, and the new 410 `CURSOR_EXPIRED`
//! for a pull cursor older than the retained log. Internal errors are logged and answered with a
//! generic message, never with their detail.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Error;

/// The HTTP status and API error code of `error`.
pub fn error_status(error: &Error) -> (StatusCode, &'static str) {
    match error {
        Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
        Error::ClockDrift { .. } => (StatusCode::CONFLICT, "CLOCK_DRIFT"),
        Error::Schema(_) => (StatusCode::UNPROCESSABLE_ENTITY, "SCHEMA_ERROR"),
        Error::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
        Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "AUTH_ERROR"),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
        Error::NotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Error::Backpressure(_) => (StatusCode::SERVICE_UNAVAILABLE, "BACKPRESSURE_ERROR"),
        Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
        Error::CursorExpired { .. } => (StatusCode::GONE, "CURSOR_EXPIRED"),
        Error::External { .. } => (StatusCode::BAD_GATEWAY, "ADAPTER_ERROR"),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
    }
}

/// An error answer: status, API code, message and, for 429, the `Retry-After` seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The API error code (`VALIDATION_ERROR`, `AUTH_ERROR`, ...).
    pub code: &'static str,
    /// The message for the client.
    pub message: String,
    /// Seconds for the `Retry-After` header, when set.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with an explicit status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `VALIDATION_ERROR`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// The same error with another code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// The same error with another status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, code) = error_status(&error);
        let retry_after = match &error {
            Error::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let message = match &error {
            Error::Internal(_) => {
                tracing::error!(error = %error, "internal error answering an HTTP request");
                "Internal server error".to_string()
            }
            Error::External { .. } => {
                tracing::warn!(error = %error, "external failure answering an HTTP request");
                error.to_string()
            }
            _ => error.to_string(),
        };
        Self {
            status,
            code,
            message,
            retry_after,
        }
    }
}

/// What the common middleware needs to write an error body with the request id.
#[derive(Clone, Debug)]
pub struct ErrorInfo {
    /// The message.
    pub message: String,
    /// The API error code.
    pub code: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "code": self.code });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(ErrorInfo {
            message: self.message,
            code: self.code,
        });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::invalid("push", "x"), 400, "VALIDATION_ERROR"),
            (
                Error::ClockDrift {
                    ahead_ms: 10_000,
                    max_drift_ms: 5000,
                },
                409,
                "CLOCK_DRIFT",
            ),
            (Error::schema("bad"), 422, "SCHEMA_ERROR"),
            (Error::Unauthenticated("no".into()), 401, "AUTH_ERROR"),
            (Error::Forbidden("no".into()), 403, "FORBIDDEN"),
            (
                Error::NotFound {
                    what: "table",
                    name: "t".into(),
                },
                404,
                "NOT_FOUND",
            ),
            (
                Error::Backpressure("full".into()),
                503,
                "BACKPRESSURE_ERROR",
            ),
            (
                Error::RateLimited {
                    retry_after_secs: 7,
                },
                429,
                "RATE_LIMITED",
            ),
            (
                Error::CursorExpired {
                    cursor: 1,
                    oldest: 2,
                },
                410,
                "CURSOR_EXPIRED",
            ),
            (Error::internal("bug"), 500, "INTERNAL_ERROR"),
        ];
        for (error, status, code) in cases {
            let (s, c) = error_status(&error);
            assert_eq!((s.as_u16(), c), (status, code), "{error}");
        }
        let api = ApiError::from(Error::RateLimited {
            retry_after_secs: 7,
        });
        assert_eq!(api.retry_after, Some(7));
        let response = api.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        // Internal detail is not sent.
        assert_eq!(
            ApiError::from(Error::internal("secret detail")).message,
            "Internal server error"
        );
    }
}
