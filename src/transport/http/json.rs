//! Reading requests: bodies with a size limit, JSON, query strings; and the original's number
//! formatting in messages.
//!
//! A body is read chunk by chunk and refused (413) as soon as it passes the limit, whatever its
//! `Content-Length` says: the original only trusted `Content-Length`, so a chunked body could be
//! of any size (reference §6.1, S5). A declared `Content-Length` over the limit is refused before
//! anything is read.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::Value;

use super::errors::ApiError;

/// A 413 for a body over `limit` bytes: `Payload too large (max 1 MiB)`.
pub fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "VALIDATION_ERROR",
        format!("Payload too large (max {})", format_size(limit)),
    )
}

/// Reads `body` whole, failing with 413 once it exceeds `limit` bytes (or when `headers`
/// declare a longer `Content-Length`).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(payload_too_large(limit));
    }
    let mut stream = body.into_data_stream();
    let mut out = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::validation(format!("Could not read the request body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(payload_too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Parses a JSON body; anything that is not JSON is 400 `Invalid JSON body`.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::validation("Invalid JSON body"))
}

/// The query parameters of `uri` (the last value of a repeated name wins).
pub fn query_params(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::validation(format!("Invalid query string: {e}")))
}

/// `n` with a comma between thousands, as JavaScript's `toLocaleString("en-US")` writes it
/// (the original's messages say "max 10,000").
pub fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte size for messages: `1 MiB` for whole mebibytes, `512 KiB` for whole kibibytes, else
/// bytes with thousands separators.
pub fn format_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{} bytes", group_thousands(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_and_sizes() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(10_000), "10,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(512 * 1024), "512 KiB");
        assert_eq!(format_size(1000), "1,000 bytes");
    }

    #[tokio::test]
    async fn body_limit_counts_bytes_not_headers() {
        let headers = HeaderMap::new();
        let body = Body::from(vec![b'x'; 11]);
        let err = read_body(&headers, body, 10).await.unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.message, "Payload too large (max 10 bytes)");
        let ok = read_body(&headers, Body::from(vec![b'x'; 10]), 10)
            .await
            .unwrap();
        assert_eq!(ok.len(), 10);
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        assert!(read_body(&declared, Body::empty(), 10).await.is_err());
    }

    #[test]
    fn queries() {
        let uri: Uri = "/p?since=5&clientId=a%20b".parse().unwrap();
        let q = query_params(&uri).unwrap();
        assert_eq!(q["since"], "5");
        assert_eq!(q["clientId"], "a b");
        assert!(parse_json(b"{nope").is_err());
    }
}
