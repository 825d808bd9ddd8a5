//! The gateway's Prometheus metrics, served as text at `GET /metrics`.
//!
//! Every metric is named `lakesync_gateway_<name>`:
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `deltas_accepted_total` | counter | — | deltas accepted by pushes |
//! | `deltas_rejected_total` | counter | `code` | deltas in pushes rejected, by error code |
//! | `pull_requests_total` | counter | `transport` | pulls served (`flight`, `http`, `ws`) |
//! | `deltas_pulled_total` | counter | — | deltas returned by pulls |
//! | `http_requests_total` | counter | `route`, `status` | HTTP requests by route template and status |
//! | `flushes_total` | counter | `outcome` | flushes (`ok`, `error`) |
//! | `buffer_bytes` | gauge | — | estimated bytes of unflushed deltas |
//! | `log_records` | gauge | — | deltas held in the gateway's log |
//! | `connections` | gauge | `transport` | open streaming connections |
//! | `subscribers` | gauge | — | live pull subscribers |
//! | `push_duration_seconds` | histogram | — | push handling time; buckets 1, 5, 10, 50, 100, 500 ms |
//! | `flush_duration_seconds` | histogram | — | flush time; buckets 10, 50, 100, 500, 1000, 5000 ms |
//!
//! The histogram buckets are the original's. Label values are chosen by the gateway, never taken
//! from a request: `route` must be the route *template* (e.g. `/v1/sync/{gw}/push`), so the
//! number of series stays bounded whatever clients send.
//!
//! [`GatewayMetrics::encode`] writes the text exposition (prometheus-client writes the OpenMetrics
//! flavour, which Prometheus's text parser also reads: `# EOF` is a comment to it). All methods
//! take `&self` and are safe to call from any thread.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`GatewayMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The prefix of every metric name (joined to the name by `_`).
pub const PREFIX: &str = "lakesync_gateway";

/// Push latency buckets, in seconds: 1, 5, 10, 50, 100, 500 ms.
pub const PUSH_DURATION_BUCKETS: [f64; 6] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5];

/// Flush duration buckets, in seconds: 10, 50, 100, 500, 1000, 5000 ms.
pub const FLUSH_DURATION_BUCKETS: [f64; 6] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// How a client talks to the gateway, as the `transport` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Arrow Flight (gRPC).
    Flight,
    /// Plain HTTP JSON routes.
    Http,
    /// WebSocket.
    Ws,
}

impl Transport {
    /// Every transport, for pre-creating label sets.
    pub const ALL: [Self; 3] = [Self::Flight, Self::Http, Self::Ws];

    /// The label value: `flight`, `http` or `ws`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flight => "flight",
            Self::Http => "http",
            Self::Ws => "ws",
        }
    }
}

type OneLabel = [(&'static str, String); 1];
type TwoLabels = [(&'static str, String); 2];

fn one(key: &'static str, value: &str) -> OneLabel {
    [(key, value.to_string())]
}

/// The gateway's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    deltas_accepted: Counter,
    deltas_rejected: Family<OneLabel, Counter>,
    pull_requests: Family<OneLabel, Counter>,
    deltas_pulled: Counter,
    http_requests: Family<TwoLabels, Counter>,
    flushes: Family<OneLabel, Counter>,
    buffer_bytes: Gauge,
    log_records: Gauge,
    connections: Family<OneLabel, Gauge>,
    subscribers: Gauge,
    push_duration: Histogram,
    flush_duration: Histogram,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// All metrics at zero. Per-transport series and the flush outcomes are created up front so
    /// they appear (as 0) before anything happens.
    pub fn new() -> Self {
        let mut metrics = Self {
            deltas_accepted: Counter::default(),
            deltas_rejected: Family::default(),
            pull_requests: Family::default(),
            deltas_pulled: Counter::default(),
            http_requests: Family::default(),
            flushes: Family::default(),
            buffer_bytes: Gauge::default(),
            log_records: Gauge::default(),
            connections: Family::default(),
            subscribers: Gauge::default(),
            push_duration: Histogram::new(PUSH_DURATION_BUCKETS),
            flush_duration: Histogram::new(FLUSH_DURATION_BUCKETS),
            registry: Registry::with_prefix(PREFIX),
        };
        let registry = &mut metrics.registry;
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "deltas_accepted",
            "Deltas accepted by pushes",
            metrics.deltas_accepted.clone(),
        );
        registry.register(
            "deltas_rejected",
            "Deltas in rejected pushes, by error code",
            metrics.deltas_rejected.clone(),
        );
        registry.register(
            "pull_requests",
            "Pull requests served, by transport",
            metrics.pull_requests.clone(),
        );
        registry.register(
            "deltas_pulled",
            "Deltas returned by pulls",
            metrics.deltas_pulled.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests, by route template and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "flushes",
            "Buffer flushes, by outcome",
            metrics.flushes.clone(),
        );
        registry.register(
            "buffer_bytes",
            "Estimated bytes of unflushed deltas in the buffer",
            metrics.buffer_bytes.clone(),
        );
        registry.register(
            "log_records",
            "Deltas held in the gateway log",
            metrics.log_records.clone(),
        );
        registry.register(
            "connections",
            "Open streaming connections, by transport",
            metrics.connections.clone(),
        );
        registry.register(
            "subscribers",
            "Live pull subscribers",
            metrics.subscribers.clone(),
        );
        registry.register(
            "push_duration_seconds",
            "Time to handle a push, in seconds",
            metrics.push_duration.clone(),
        );
        registry.register(
            "flush_duration_seconds",
            "Time to flush the buffer, in seconds",
            metrics.flush_duration.clone(),
        );
        for transport in Transport::ALL {
            let label = one("transport", transport.as_str());
            let _ = metrics.pull_requests.get_or_create(&label);
            let _ = metrics.connections.get_or_create(&label);
        }
        for outcome in ["ok", "error"] {
            let _ = metrics.flushes.get_or_create(&one("outcome", outcome));
        }
        metrics
    }

    /// Records a push handled in `duration` that accepted `accepted` deltas and rejected
    /// `rejected` (pairs of error code, e.g. `CLOCK_DRIFT`, and delta count).
    pub fn record_push(&self, accepted: u64, rejected: &[(&str, u64)], duration: Duration) {
        self.deltas_accepted.inc_by(accepted);
        for (code, count) in rejected {
            self.deltas_rejected
                .get_or_create(&one("code", code))
                .inc_by(*count);
        }
        self.push_duration.observe(duration.as_secs_f64());
    }

    /// Records a pull over `transport` that returned `deltas` deltas.
    pub fn record_pull(&self, transport: Transport, deltas: u64) {
        self.pull_requests
            .get_or_create(&one("transport", transport.as_str()))
            .inc();
        self.deltas_pulled.inc_by(deltas);
    }

    /// Records an HTTP response with `status` for the route template `route`.
    pub fn record_http(&self, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&[("route", route.to_string()), ("status", status.to_string())])
            .inc();
    }

    /// Records a flush that succeeded (`ok`) or failed, taking `duration`.
    pub fn record_flush(&self, ok: bool, duration: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.flushes.get_or_create(&one("outcome", outcome)).inc();
        self.flush_duration.observe(duration.as_secs_f64());
    }

    /// Sets the unflushed buffer's estimated size and the number of deltas in the log.
    pub fn set_buffer(&self, bytes: u64, records: u64) {
        self.buffer_bytes.set(saturating_i64(bytes));
        self.log_records.set(saturating_i64(records));
    }

    /// Counts a streaming connection opened over `transport`.
    pub fn connection_opened(&self, transport: Transport) {
        self.connections
            .get_or_create(&one("transport", transport.as_str()))
            .inc();
    }

    /// Counts a streaming connection over `transport` closed.
    pub fn connection_closed(&self, transport: Transport) {
        self.connections
            .get_or_create(&one("transport", transport.as_str()))
            .dec();
    }

    /// Sets the number of live pull subscribers.
    pub fn set_subscribers(&self, n: u64) {
        self.subscribers.set(saturating_i64(n));
    }

    /// The metrics in Prometheus text form (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a `String` cannot fail; an error could only come from a metric's encoder.
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text() {
        let m = GatewayMetrics::new();
        m.record_push(3, &[("CLOCK_DRIFT", 2)], Duration::from_millis(3));
        m.record_push(1, &[], Duration::from_millis(700));
        m.record_pull(Transport::Flight, 5);
        m.record_pull(Transport::Http, 0);
        m.record_http("/v1/sync/{gw}/push", 200);
        m.record_http("/v1/sync/{gw}/push", 200);
        m.record_flush(true, Duration::from_millis(20));
        m.set_buffer(1024, 7);
        m.connection_opened(Transport::Ws);
        m.connection_opened(Transport::Ws);
        m.connection_closed(Transport::Ws);
        m.set_subscribers(4);
        let text = m.encode();
        for line in [
            "# TYPE lakesync_gateway_deltas_accepted counter",
            "lakesync_gateway_deltas_accepted_total 4",
            "lakesync_gateway_deltas_rejected_total{code=\"CLOCK_DRIFT\"} 2",
            "lakesync_gateway_pull_requests_total{transport=\"flight\"} 1",
            "lakesync_gateway_pull_requests_total{transport=\"http\"} 1",
            "lakesync_gateway_pull_requests_total{transport=\"ws\"} 0",
            "lakesync_gateway_deltas_pulled_total 5",
            "lakesync_gateway_http_requests_total{route=\"/v1/sync/{gw}/push\",status=\"200\"} 2",
            "lakesync_gateway_flushes_total{outcome=\"ok\"} 1",
            "lakesync_gateway_flushes_total{outcome=\"error\"} 0",
            "lakesync_gateway_buffer_bytes 1024",
            "lakesync_gateway_log_records 7",
            "lakesync_gateway_connections{transport=\"ws\"} 1",
            "lakesync_gateway_connections{transport=\"flight\"} 0",
            "lakesync_gateway_subscribers 4",
            "# TYPE lakesync_gateway_push_duration_seconds histogram",
            "lakesync_gateway_push_duration_seconds_bucket{le=\"0.001\"} 0",
            "lakesync_gateway_push_duration_seconds_bucket{le=\"0.005\"} 1",
            "lakesync_gateway_push_duration_seconds_bucket{le=\"0.5\"} 1",
            "lakesync_gateway_push_duration_seconds_bucket{le=\"+Inf\"} 2",
            "lakesync_gateway_push_duration_seconds_count 2",
            "lakesync_gateway_flush_duration_seconds_bucket{le=\"0.01\"} 0",
            "lakesync_gateway_flush_duration_seconds_bucket{le=\"0.05\"} 1",
            "lakesync_gateway_flush_duration_seconds_bucket{le=\"5.0\"} 1",
            "lakesync_gateway_flush_duration_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn gauges_saturate() {
        let m = GatewayMetrics::new();
        m.set_buffer(u64::MAX, 0);
        assert!(
            m.encode()
                .contains(&format!("lakesync_gateway_buffer_bytes {}", i64::MAX))
        );
    }
}
