//! The CloudWatch Logs client: the AWS SDK set up without its default HTTPS stack, and one
//! `FilterLogEvents` page fetched with bounded, jittered retries.
//!
//! **Credentials and region** come from the standard AWS chain (`aws-config`): the
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` variables, the shared
//! `~/.aws/config` and `~/.aws/credentials` profiles (`AWS_PROFILE`, SSO, `credential_process`,
//! assumed roles), web identity tokens (EKS), the ECS container endpoint and EC2 instance
//! metadata. A `region` in the pipeline overrides the chain's region; an `endpoint` replaces
//! AWS's URL (moto, LocalStack, a VPC endpoint).
//!
//! **Retries.** The SDK's own retries are off, so every retry is this module's and is logged:
//! throttling (`ThrottlingException`, `ServiceUnavailableException`, `LimitExceededException`,
//! `RequestLimitExceeded`, HTTP 429), HTTP 5xx, timeouts and connection failures are retried
//! with exponential backoff and full jitter ([`Backoff`]) and a `tracing` warning each time, up to
//! a bounded number of attempts; anything else fails at once with the service's code and message
//! (a missing log group is named with its YAML path).

use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::config::retry::RetryConfig;
use aws_sdk_cloudwatchlogs::config::timeout::TimeoutConfig;
use aws_sdk_cloudwatchlogs::config::{BehaviorVersion, Region, SharedHttpClient};
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::operation::filter_log_events::{
    FilterLogEventsError, FilterLogEventsOutput,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::{Error, Result};

/// The system name in errors.
pub const SYSTEM: &str = "cloudwatch";

/// Where and how to connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// The region; `None`: the standard chain's.
    pub region: Option<String>,
    /// An endpoint URL replacing AWS's.
    pub endpoint: Option<String>,
}

/// The HTTPS client: hyper 1 on rustls with the ring provider (no aws-lc).
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// A CloudWatch Logs client from the standard AWS chain, with `options` applied and the SDK's
/// retries off (see the [module docs](self)). `here` names the source in errors.
pub async fn connect(options: &ClientOptions, here: &str) -> Result<Client> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &options.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(Error::invalid(
            "cloudwatch source",
            format!(
                "{here}: no AWS region: set `region:` in the source, or AWS_REGION (or a profile's region)"
            ),
        ));
    }
    let config = aws_sdk_cloudwatchlogs::config::Builder::from(&sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    Ok(Client::from_conf(config))
}

/// One `FilterLogEvents` request, without its page token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The log group.
    pub log_group: String,
    /// Where the log group is in the pipeline file (`sources.x.log_groups[0]`), for errors.
    pub yaml_path: String,
    /// Only streams starting with this.
    pub stream_prefix: Option<String>,
    /// The filter pattern, passed as the `filterPattern` parameter.
    pub filter_pattern: Option<String>,
    /// Events at or after this (ms since the Unix epoch).
    pub start_ms: i64,
    /// Events at or before this (ms).
    pub end_ms: i64,
    /// Events per page, 1–10000.
    pub limit: i32,
}

/// Exponential backoff with full jitter: before retry `n` (1-based) sleep a random time in
/// `[0, min(cap, base · 2^(n-1))]`; give up after `attempts` tries in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's ceiling.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
    /// Tries in all, the first included (at least 1).
    pub attempts: u32,
}

impl Default for Backoff {
    /// 200 ms doubling up to 20 s, 10 tries (about a minute and a half of retrying at most).
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
            attempts: 10,
        }
    }
}

impl Backoff {
    /// The sleep before retry `retry` (1-based), jittered.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(30)))
            .min(self.cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }
}

/// How a failed call is treated.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Throttled or a passing failure: retry after a backoff.
    Retry,
    /// The log group does not exist.
    NoSuchGroup,
    /// Anything else: fail.
    Fail,
}

/// Error codes that mean "slow down" or "try again".
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "LimitExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
];

fn verdict<R>(error: &SdkError<FilterLogEventsError, R>, status: Option<u16>) -> Verdict
where
    R: std::fmt::Debug,
{
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => return Verdict::Retry,
        SdkError::ConstructionFailure(_) => return Verdict::Fail,
        _ => {}
    }
    if let SdkError::ServiceError(e) = error
        && e.err().is_resource_not_found_exception()
    {
        return Verdict::NoSuchGroup;
    }
    let code = error.code().unwrap_or_default();
    if RETRYABLE_CODES.contains(&code) {
        return Verdict::Retry;
    }
    match status {
        Some(429) => Verdict::Retry,
        Some(s) if (500..600).contains(&s) => Verdict::Retry,
        _ => Verdict::Fail,
    }
}

/// Fetches one page of `query` from `token` (the first page when `None`), retrying as the
/// [module docs](self) say. `here` names the source in messages.
pub async fn fetch_page(
    client: &Client,
    query: &Query,
    token: Option<&str>,
    backoff: &Backoff,
    here: &str,
) -> Result<FilterLogEventsOutput> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut request = client
            .filter_log_events()
            .log_group_name(&query.log_group)
            .start_time(query.start_ms)
            .end_time(query.end_ms)
            .limit(query.limit)
            .set_log_stream_name_prefix(query.stream_prefix.clone())
            .set_filter_pattern(query.filter_pattern.clone());
        if let Some(token) = token {
            request = request.next_token(token);
        }
        // AWS always interleaves streams (time order) and ignores this; emulators such as moto
        // default to stream-by-stream order without it, which the floor rule would not expect.
        #[allow(deprecated)]
        {
            request = request.interleaved(true);
        }
        let error = match request.send().await {
            Ok(page) => return Ok(page),
            Err(error) => error,
        };
        let status = error.raw_response().map(|r| r.status().as_u16());
        let code = error.code().unwrap_or("").to_string();
        match verdict(&error, status) {
            Verdict::Retry if attempt < backoff.attempts.max(1) => {
                let delay = backoff.delay(attempt);
                tracing::warn!(
                    source = here,
                    log_group = %query.log_group,
                    attempt,
                    code = %code,
                    status = status.unwrap_or(0),
                    delay_ms = delay.as_millis() as u64,
                    error = %DisplayErrorContext(&error),
                    "CloudWatch Logs call failed (throttled or unavailable); retrying after a backoff"
                );
                tokio::time::sleep(delay).await;
            }
            Verdict::Retry => {
                return Err(Error::External {
                    system: SYSTEM,
                    message: format!(
                        "{here}: FilterLogEvents on log group {:?} still failing after {attempt} attempts: {}",
                        query.log_group,
                        DisplayErrorContext(&error)
                    ),
                    retryable: true,
                    source: Some(Box::new(error)),
                });
            }
            Verdict::NoSuchGroup => {
                return Err(Error::invalid(
                    "cloudwatch source",
                    format!(
                        "{here}: log group {:?} does not exist ({})",
                        query.log_group, query.yaml_path
                    ),
                ));
            }
            Verdict::Fail => {
                let message = error.message().unwrap_or("").to_string();
                let what = match (code.as_str(), message.as_str()) {
                    ("", "") => DisplayErrorContext(&error).to_string(),
                    (code, "") => code.to_string(),
                    (code, message) => format!("{code}: {message}"),
                };
                return Err(Error::External {
                    system: SYSTEM,
                    message: format!(
                        "{here}: FilterLogEvents on log group {:?} ({}) failed: {what}",
                        query.log_group, query.yaml_path
                    ),
                    retryable: false,
                    source: Some(Box::new(error)),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The retry is tested against a tiny local HTTP server speaking the CloudWatch Logs JSON
    //! protocol (`x-amz-json-1.1` bodies, `__type` error codes), because moto cannot throttle:
    //! it answers `ThrottlingException` twice and then a real page, and the client must come
    //! through with the page after two retries.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_sdk_cloudwatchlogs::config::Credentials;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Serves each connection one canned answer from `answers` (in order; the last repeats),
    /// counting requests. Each answer is `(status, body)`.
    async fn serve(answers: Vec<(u16, String)>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let (status, body) = answers[n.min(answers.len() - 1)].clone();
                tokio::spawn(async move {
                    // Read the request: headers, then Content-Length bytes of body.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body_start = loop {
                        let read = socket.read(&mut chunk).await.unwrap_or(0);
                        if read == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..read]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
                    assert!(
                        head.contains("x-amz-target: logs_20140328.filterlogevents"),
                        "{head}"
                    );
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < body_start + length {
                        let read = socket.read(&mut chunk).await.unwrap_or(0);
                        if read == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..read]);
                    }
                    let reason = if status == 200 { "OK" } else { "Bad Request" };
                    let response = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), count)
    }

    fn client(endpoint: &str) -> Client {
        let config = aws_sdk_cloudwatchlogs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .http_client(http_client())
            .retry_config(RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }

    fn query() -> Query {
        Query {
            log_group: "/app/api".into(),
            yaml_path: "sources.logs.log_groups[0]".into(),
            stream_prefix: None,
            filter_pattern: Some("ERROR".into()),
            start_ms: 0,
            end_ms: 10_000,
            limit: 100,
        }
    }

    fn quick() -> Backoff {
        Backoff {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(20),
            attempts: 5,
        }
    }

    const THROTTLED: &str =
        r#"{"__type":"com.amazonaws.logs#ThrottlingException","message":"Rate exceeded"}"#;

    #[tokio::test]
    async fn throttling_is_retried_with_backoff_until_the_page_comes() {
        let page = r#"{"events":[{"logStreamName":"s1","timestamp":1000,"message":"ERROR boom","ingestionTime":1001,"eventId":"42"}],"searchedLogStreams":[]}"#;
        let (endpoint, count) = serve(vec![
            (400, THROTTLED.into()),
            (400, THROTTLED.into()),
            (200, page.into()),
        ])
        .await;
        let out = fetch_page(&client(&endpoint), &query(), None, &quick(), "test")
            .await
            .unwrap();
        assert_eq!(
            count.load(Ordering::SeqCst),
            3,
            "two throttled tries, then the page"
        );
        assert_eq!(out.events().len(), 1);
        assert_eq!(out.events()[0].event_id(), Some("42"));
        assert_eq!(out.next_token(), None);
    }

    #[tokio::test]
    async fn retries_are_bounded_and_5xx_counts_as_retryable() {
        let (endpoint, count) = serve(vec![(503, r#"{"message":"down"}"#.into())]).await;
        let err = fetch_page(&client(&endpoint), &query(), None, &quick(), "test")
            .await
            .unwrap_err();
        assert_eq!(count.load(Ordering::SeqCst), 5);
        assert!(err.to_string().contains("after 5 attempts"), "{err}");
        assert!(matches!(
            err.kind(),
            crate::ErrorKind::External { retryable: true }
        ));
    }

    #[tokio::test]
    async fn a_missing_group_and_other_errors_fail_at_once_with_the_yaml_path() {
        let missing = r#"{"__type":"ResourceNotFoundException","message":"The specified log group does not exist."}"#;
        let (endpoint, count) = serve(vec![(400, missing.into())]).await;
        let err = fetch_page(&client(&endpoint), &query(), None, &quick(), "test")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(
            err.contains("log group \"/app/api\" does not exist (sources.logs.log_groups[0])"),
            "{err}"
        );
        let bad = r#"{"__type":"InvalidParameterException","message":"bad filter"}"#;
        let (endpoint, count) = serve(vec![(400, bad.into())]).await;
        let err = fetch_page(&client(&endpoint), &query(), None, &quick(), "test")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(
            err.contains("InvalidParameterException: bad filter"),
            "{err}"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_below_the_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1_000),
            attempts: 10,
        };
        for _ in 0..200 {
            assert!(b.delay(1) <= Duration::from_millis(100));
            assert!(b.delay(3) <= Duration::from_millis(400));
            assert!(b.delay(40) <= Duration::from_millis(1_000));
        }
    }
}
