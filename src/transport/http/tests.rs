//! Tests of the HTTP/JSON and WebSocket protocol against a real listener on 127.0.0.1, with
//! `reqwest` for HTTP and a minimal hand-written WebSocket client (RFC 6455 framing, enough for
//! binary and text frames and close codes).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::checkpoint::split_frames;
use super::ws::{TAG_BROADCAST, TAG_SYNC_PULL, TAG_SYNC_PUSH};
use crate::gateway::actions::ActionDispatcher;
use crate::gateway::auth::{Authenticator, sign_token, unix_now_secs};
use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::rate_limit::RateLimiter;
use crate::gateway::{Gateway, GatewayOptions, Limits};
use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::proto::{decode_sync_response, to_proto, v1};
use crate::kernel::rules::SyncRules;
use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};
use crate::transport::{ServerContext, SharedContext};

const GW: &str = "gw-test";
const SECRET: &str = "a-secret-of-16-bytes+";

// ---- a test server ------------------------------------------------------------------------

struct Options {
    auth: bool,
    limits: Limits,
    rate_limiter: Option<RateLimiter>,
    rules: SyncRules,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth: true,
            limits: Limits::default(),
            rate_limiter: None,
            rules: SyncRules::default(),
        }
    }
}

struct Server {
    addr: std::net::SocketAddr,
    base: String,
    ctx: SharedContext,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<crate::Result<()>>,
    _dir: tempfile::TempDir,
}

fn todos() -> TableSchema {
    TableSchema::new(
        "todos",
        vec![
            ColumnDef::new("title", ColumnType::String),
            ColumnDef::new("owner", ColumnType::String),
            ColumnDef::new("done", ColumnType::Boolean),
        ],
    )
}

async fn start(options: Options) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::open(GatewayOptions {
        id: GW.to_string(),
        data_dir: dir.path().join("gateway"),
        tables: vec![todos()],
        sync_rules: options.rules,
        limits: options.limits,
        lake: None,
    })
    .await
    .unwrap();
    let secrets = if options.auth {
        vec![SECRET.to_string()]
    } else {
        vec![]
    };
    let ctx = Arc::new(ServerContext {
        gateway,
        auth: Authenticator::new(GW, secrets),
        rate_limiter: options.rate_limiter,
        metrics: GatewayMetrics::new(),
        actions: ActionDispatcher::new(),
        draining: AtomicBool::new(false),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(super::serve(ctx.clone(), listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Server {
        addr,
        base: format!("http://{addr}"),
        ctx,
        http,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }

    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.bytes().await.unwrap().to_vec())
    }

    async fn get_json(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (status, _, body) = self.get(path, token).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp.bytes().await.unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .post_raw(path, token, serde_json::to_vec(body).unwrap())
            .await;
        (status, body)
    }

    async fn push(
        &self,
        token: Option<&str>,
        client: &str,
        deltas: &[RowDelta],
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/sync/{GW}/push"),
            token,
            &json!({"clientId": client, "deltas": deltas, "lastSeenHlc": "0"}),
        )
        .await
    }

    /// Pulls from 0 to the end, `limit` per page; every delta seen and the pages taken.
    async fn pull_all(
        &self,
        token: Option<&str>,
        client: &str,
        limit: usize,
    ) -> (Vec<Value>, usize) {
        let (mut since, mut pages, mut all) = ("0".to_string(), 0, Vec::new());
        loop {
            let (status, body) = self
                .get_json(
                    &format!("/v1/sync/{GW}/pull?since={since}&clientId={client}&limit={limit}"),
                    token,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            pages += 1;
            all.extend(body["deltas"].as_array().unwrap().iter().cloned());
            let next = body["serverHlc"]
                .as_str()
                .expect("serverHlc is a string")
                .to_string();
            if !body["hasMore"].as_bool().unwrap() {
                return (all, pages);
            }
            assert_ne!(next, since, "hasMore without progress");
            since = next;
        }
    }
}

fn token(sub: &str) -> String {
    sign_token(&json!({"sub": sub, "gw": GW}), SECRET, unix_now_secs()).unwrap()
}

fn admin_token() -> String {
    sign_token(
        &json!({"sub": "ops", "gw": GW, "role": "admin"}),
        SECRET,
        unix_now_secs(),
    )
    .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A fresh HLC: now, with a counter that keeps successive calls distinct.
fn hlc() -> HlcTimestamp {
    static COUNTER: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    HlcTimestamp::new(now_ms(), c).unwrap()
}

fn insert(client: &str, row: &str, title: &str, owner: &str) -> RowDelta {
    RowDelta::new(
        DeltaOp::Insert,
        "todos",
        row,
        client,
        vec![
            ColumnDelta::new("title", json!(title)),
            ColumnDelta::new("owner", json!(owner)),
            ColumnDelta::new("done", json!(false)),
        ],
        hlc(),
    )
}

fn error_of(body: &Value) -> (&str, &str) {
    (
        body["code"].as_str().unwrap_or(""),
        body["error"].as_str().unwrap_or(""),
    )
}

// ---- HTTP ---------------------------------------------------------------------------------

#[tokio::test]
async fn static_routes_headers_and_fallbacks() {
    let s = start(Options::default()).await;
    let (status, headers, body) = s.get("/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(
        headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["x-request-id"].len(), 36);
    assert!(headers.get("cache-control").is_none());

    // A request id is echoed; an Origin is reflected.
    let resp = s
        .http
        .get(s.url("/health"))
        .header("x-request-id", "req-42")
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    // Preflight on any path.
    let resp = s
        .http
        .request(
            reqwest::Method::OPTIONS,
            s.url(&format!("/v1/sync/{GW}/push")),
        )
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resp.headers()["access-control-allow-methods"],
        "GET, POST, DELETE, OPTIONS"
    );
    assert!(
        resp.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Authorization")
    );

    // Unknown paths and methods: 404 with the error shape, on /v1 with no-store and API-Version.
    let (status, headers, body) = s.get("/v1/sync/gw-test", None).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), ("NOT_FOUND", "Not found"));
    assert_eq!(body["requestId"], headers["x-request-id"].to_str().unwrap());
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["api-version"], "v1");
    let (status, body) = s.get_json(&format!("/v1/sync/{GW}/push"), None).await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::NOT_FOUND, "NOT_FOUND")
    );

    // Legacy routes redirect to /v1, query kept.
    let (status, headers, _) = s.get("/sync/gw-test/pull?since=0&clientId=a", None).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        headers["location"],
        "/v1/sync/gw-test/pull?since=0&clientId=a"
    );
    assert_eq!(headers["sunset"], "2026-06-01");
    assert_eq!(headers["cache-control"], "no-store");
    let (status, _, _) = s.post_raw("/admin/flush/gw-test", None, vec![]).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);

    // Metrics: Prometheus text, counting the requests above by route template.
    let (status, headers, body) = s.get("/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("lakesync_gateway_"), "{text}");
    assert!(text.contains("route=\"/health\""), "{text}");

    // Ready until draining; then /v1 routes are refused too.
    assert_eq!(
        s.get_json("/ready", None).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
    s.ctx
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(
        s.get_json("/ready", None).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": "draining"})
        )
    );
    let (status, body) = s.push(Some(&token("a")), "a", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&body).1, "Service is shutting down");
    s.stop().await;
}

#[tokio::test]
async fn authentication_and_identity() {
    let s = start(Options::default()).await;
    let a = token("client-a");
    let push_path = format!("/v1/sync/{GW}/push");
    let delta = insert("client-a", "r1", "t", "client-a");
    let body = json!({"clientId": "client-a", "deltas": [delta]});

    // No token, a bad token, a token signed with another secret: 401 AUTH_ERROR.
    for t in [None, Some("not.a.jwt"), Some("x")] {
        let (status, resp) = s.post(&push_path, t, &body).await;
        assert_eq!(
            (status, error_of(&resp).0),
            (StatusCode::UNAUTHORIZED, "AUTH_ERROR"),
            "{t:?}"
        );
    }
    let forged = sign_token(
        &json!({"sub": "client-a", "gw": GW}),
        "another-secret-16b",
        unix_now_secs(),
    )
    .unwrap();
    let (status, _) = s.post(&push_path, Some(&forged), &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let expired = sign_token(&json!({"sub": "client-a", "gw": GW, "exp": 1}), SECRET, 0).unwrap();
    let (status, _) = s.post(&push_path, Some(&expired), &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A token for another gateway: 403; a route for another gateway: 404.
    let other = sign_token(
        &json!({"sub": "client-a", "gw": "elsewhere"}),
        SECRET,
        unix_now_secs(),
    )
    .unwrap();
    let (status, resp) = s.post(&push_path, Some(&other), &body).await;
    assert_eq!(
        (status, error_of(&resp).0),
        (StatusCode::FORBIDDEN, "AUTH_ERROR")
    );
    let (status, resp) = s.post("/v1/sync/elsewhere/push", Some(&a), &body).await;
    assert_eq!(
        (status, error_of(&resp)),
        (StatusCode::NOT_FOUND, ("NOT_FOUND", "Gateway ID mismatch"))
    );

    // The body's clientId must be the token's sub; so must every delta's writer.
    let (status, resp) = s.post(&push_path, Some(&token("client-b")), &body).await;
    assert_eq!(
        (status, error_of(&resp).0),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    let forged_writer = insert("client-b", "r2", "t", "x");
    let (status, resp) = s.push(Some(&a), "client-a", &[forged_writer]).await;
    assert_eq!(
        (status, error_of(&resp).0),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    // ... and a pull's clientId too (the original trusted it).
    let (status, resp) = s
        .get_json(
            &format!("/v1/sync/{GW}/pull?since=0&clientId=client-b"),
            Some(&a),
        )
        .await;
    assert_eq!(
        (status, error_of(&resp).0),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );

    // Admin routes need the admin role.
    let flush = format!("/v1/admin/flush/{GW}");
    let (status, resp) = s.post(&flush, Some(&a), &json!({})).await;
    assert_eq!(
        (status, error_of(&resp).0),
        (StatusCode::FORBIDDEN, "AUTH_ERROR")
    );
    let (status, _) = s.post(&flush, None, &json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = s
        .get_json(&format!("/v1/admin/metrics/{GW}"), Some(&admin_token()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["logSize"], 0);

    // Health needs no token.
    assert_eq!(s.get_json("/health", None).await.0, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn push_and_pull_round_trip_with_decimal_hlcs() {
    let s = start(Options::default()).await;
    let (a, b) = (token("client-a"), token("client-b"));
    let mut pushed = Vec::new();
    for i in 0..5 {
        let d = insert(
            "client-a",
            &format!("a-{i}"),
            &format!("title {i}"),
            "client-a",
        );
        let (status, body) = s.push(Some(&a), "client-a", std::slice::from_ref(&d)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["accepted"], 1);
        let server_hlc: u64 = body["serverHlc"].as_str().unwrap().parse().unwrap();
        assert!(server_hlc > 0);
        // The ingested deltas come back as sent: HLC as a decimal string, same deltaId.
        assert_eq!(body["deltas"][0]["hlc"], json!(d.hlc.0.to_string()));
        assert_eq!(body["deltas"][0]["deltaId"], json!(d.delta_id.to_string()));
        pushed.push(d);
    }
    // A retried push is accepted again and changes nothing.
    let (status, body) = s.push(Some(&a), "client-a", &pushed[..1]).await;
    assert_eq!((status, &body["accepted"]), (StatusCode::OK, &json!(1)));
    assert_eq!(body["deltas"], json!([]));
    // An HLC given as a string and as a number are both read.
    let mut as_number = serde_json::to_value(insert("client-a", "a-num", "n", "client-a")).unwrap();
    as_number["hlc"] = json!(as_number["hlc"].as_str().unwrap().parse::<u64>().unwrap());
    let (status, _) = s
        .post(
            &format!("/v1/sync/{GW}/push"),
            Some(&a),
            &json!({"clientId": "client-a", "deltas": [as_number]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // B pulls everything, two per page, following serverHlc.
    let (deltas, pages) = s.pull_all(Some(&b), "client-b", 2).await;
    assert_eq!(deltas.len(), 6);
    assert!(pages >= 3, "{pages} pages");
    for (got, want) in deltas.iter().zip(&pushed) {
        assert_eq!(got["rowId"], json!(want.row_id));
        assert_eq!(got["op"], "INSERT");
        assert_eq!(got["clientId"], "client-a");
        assert_eq!(got["hlc"], json!(want.hlc.0.to_string()));
        assert_eq!(
            got["columns"][0],
            json!({"column": "title", "value": want.columns[0].value})
        );
    }

    // Pull parameters (reference §4.6).
    let pull = |q: &str| format!("/v1/sync/{GW}/pull?{q}");
    let cases = [
        (
            "clientId=client-b",
            "Missing required query params: since, clientId",
        ),
        ("since=0", "Missing required query params: since, clientId"),
        ("since=abc&clientId=client-b", "decimal integer"),
        ("since=0&clientId=client-b&limit=-5", "positive integer"),
        ("since=0&clientId=client-b&limit=zero", "positive integer"),
    ];
    for (q, message) in cases {
        let (status, body) = s.get_json(&pull(q), Some(&b)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert!(error_of(&body).1.contains(message), "{q}: {body}");
    }
    let (status, body) = s
        .get_json(&pull("since=0&clientId=client-b&limit=999999"), Some(&b))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["deltas"].as_array().unwrap().len(), 6);
    let (status, body) = s
        .get_json(&pull("since=0&clientId=client-b&source=postgres"), Some(&b))
        .await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::NOT_FOUND, "NOT_FOUND")
    );
    // Pulling from the head: nothing, and the same cursor back.
    let head = s.ctx.gateway.head().to_string();
    let (_, body) = s
        .get_json(&pull(&format!("since={head}&clientId=client-b")), Some(&b))
        .await;
    assert_eq!(
        body,
        json!({"deltas": [], "serverHlc": head, "hasMore": false})
    );
    s.stop().await;
}

#[tokio::test]
async fn push_validation_vectors() {
    let limits = Limits {
        max_push_bytes: 4 << 20,
        ..Limits::default()
    };
    let s = start(Options {
        limits,
        ..Options::default()
    })
    .await;
    let a = token("client-a");
    let path = format!("/v1/sync/{GW}/push");

    let (status, _, body) = s
        .post_raw(
            &path,
            Some(&a),
            br#"{"clientId": "oops", "deltas": [ "#.to_vec(),
        )
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            StatusCode::BAD_REQUEST,
            ("VALIDATION_ERROR", "Invalid JSON body")
        )
    );
    assert!(body["requestId"].is_string());
    for bad in [
        json!({"deltas": []}),
        json!({"clientId": "client-a"}),
        json!({"clientId": "", "deltas": []}),
        json!({"clientId": "client-a", "deltas": {}}),
    ] {
        let (status, body) = s.post(&path, Some(&a), &bad).await;
        assert_eq!(
            (status, error_of(&body)),
            (
                StatusCode::BAD_REQUEST,
                (
                    "VALIDATION_ERROR",
                    "Missing required fields: clientId, deltas"
                )
            ),
            "{bad}"
        );
    }
    let (status, body) = s
        .post(
            &path,
            Some(&a),
            &json!({"clientId": "client-a", "deltas": vec![json!({}); 10_001]}),
        )
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            StatusCode::BAD_REQUEST,
            (
                "VALIDATION_ERROR",
                "Too many deltas in a single push (max 10,000)"
            )
        )
    );
    let (status, body) = s.push(Some(&a), "client-a", &[]).await;
    assert_eq!((status, &body["accepted"]), (StatusCode::OK, &json!(0)));
    let (status, body) = s
        .post(
            &path,
            Some(&a),
            &json!({"clientId": "client-a", "deltas": [{"op": "INSERT"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.starts_with("deltas[0]"), "{body}");

    // Drift: one delta 10 s ahead fails the whole push, and nothing of it is applied.
    let good = insert("client-a", "kept-out", "t", "client-a");
    let mut ahead = insert("client-a", "drift-future", "t", "client-a");
    ahead = RowDelta::new(
        ahead.op,
        ahead.table,
        ahead.row_id,
        ahead.client_id,
        ahead.columns,
        HlcTimestamp::new(now_ms() + 10_000, 0).unwrap(),
    );
    let (status, body) = s.push(Some(&a), "client-a", &[good, ahead]).await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::CONFLICT, "CLOCK_DRIFT"),
        "{body}"
    );
    assert_eq!(s.ctx.gateway.head(), 0, "nothing applied");

    // A table name that is not an identifier, and a column the table lacks: 422 SCHEMA_ERROR.
    let mut injection = insert("client-a", "r", "t", "client-a");
    injection = RowDelta::new(
        injection.op,
        "\"; DROP TABLE users--",
        injection.row_id,
        injection.client_id,
        injection.columns,
        injection.hlc,
    );
    let (status, body) = s.push(Some(&a), "client-a", &[injection]).await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::UNPROCESSABLE_ENTITY, "SCHEMA_ERROR"),
        "{body}"
    );
    let mut extra = insert("client-a", "r", "t", "client-a");
    extra
        .columns
        .push(ColumnDelta::new("no_such_column", json!(1)));
    let extra = RowDelta::new(
        extra.op,
        extra.table,
        extra.row_id,
        extra.client_id,
        extra.columns,
        extra.hlc,
    );
    let (status, body) = s.push(Some(&a), "client-a", &[extra]).await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::UNPROCESSABLE_ENTITY, "SCHEMA_ERROR"),
        "{body}"
    );
    assert_eq!(s.ctx.gateway.head(), 0, "nothing applied");

    // Exactly 10 000 deltas are accepted.
    let many: Vec<RowDelta> = (0..10_000)
        .map(|i| {
            RowDelta::new(
                DeltaOp::Delete,
                "todos",
                format!("d-{i}"),
                "client-a",
                vec![],
                hlc(),
            )
        })
        .collect();
    let (status, body) = s.push(Some(&a), "client-a", &many).await;
    assert_eq!(
        (status, &body["accepted"]),
        (StatusCode::OK, &json!(10_000))
    );

    // Over the byte limit: by Content-Length, and by a chunked body that never says its length.
    let (status, response) = raw_post(s.addr, &path, &a, RawBody::Declared(5 << 20)).await;
    assert_eq!(status, 413, "{response}");
    assert!(
        response.contains("Payload too large (max 4 MiB)"),
        "{response}"
    );
    let (status, response) = raw_post(s.addr, &path, &a, RawBody::Chunked(5 << 10, 1024)).await;
    assert_eq!(status, 413, "{response}");
    assert!(response.contains("VALIDATION_ERROR"), "{response}");
    s.stop().await;
}

/// How a raw request sends its body.
enum RawBody {
    /// `Content-Length: n`, and no body sent.
    Declared(usize),
    /// `Transfer-Encoding: chunked`, this many chunks of this many bytes.
    Chunked(usize, usize),
}

/// POSTs to `path` over a plain socket and returns the response head (status line and headers)
/// and whatever of the body arrived with it. The response is read while the body is written:
/// the server answers 413 without reading the rest.
async fn raw_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    body: RawBody,
) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let read = tokio::spawn(async move {
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(500), reader.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => response.extend_from_slice(&buf[..n]),
                // Closed, reset, or quiet for a while after the answer.
                _ if !response.is_empty() => break,
                Ok(_) => break,
                Err(_) => continue,
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    });
    let framing = match body {
        RawBody::Declared(n) => format!("Content-Length: {n}"),
        RawBody::Chunked(..) => "Transfer-Encoding: chunked".to_string(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    if let RawBody::Chunked(chunks, chunk) = body {
        let data = vec![b' '; chunk];
        for _ in 0..chunks {
            let sent = async {
                writer
                    .write_all(format!("{chunk:x}\r\n").as_bytes())
                    .await?;
                writer.write_all(&data).await?;
                writer.write_all(b"\r\n").await
            };
            if sent.await.is_err() || read.is_finished() {
                break;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
    }
    let response = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response")
        .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[tokio::test]
async fn sync_rules_filter_pulls_and_checkpoints() {
    let rules = SyncRules::from_value(&json!({"version": 1, "buckets": [
        {"name": "mine", "tables": ["todos"], "filters": [{"column": "owner", "op": "eq", "value": "jwt:sub"}]}
    ]}))
    .unwrap();
    let s = start(Options {
        rules,
        ..Options::default()
    })
    .await;
    let (a, b) = (token("client-a"), token("client-b"));
    let deltas = vec![
        insert("client-a", "r1", "for a", "client-a"),
        insert("client-a", "r2", "for b", "client-b"),
        insert("client-a", "r3", "for b too", "client-b"),
    ];
    assert_eq!(
        s.push(Some(&a), "client-a", &deltas).await.0,
        StatusCode::OK
    );
    let delete = RowDelta::new(DeltaOp::Delete, "todos", "r3", "client-a", vec![], hlc());
    assert_eq!(
        s.push(Some(&a), "client-a", &[delete]).await.0,
        StatusCode::OK
    );

    let (seen, _) = s.pull_all(Some(&b), "client-b", 100).await;
    let rows: Vec<(&str, &str)> = seen
        .iter()
        .map(|d| (d["rowId"].as_str().unwrap(), d["op"].as_str().unwrap()))
        .collect();
    // B sees its rows, and r3 leave; never r1.
    assert_eq!(
        rows,
        vec![("r2", "INSERT"), ("r3", "INSERT"), ("r3", "DELETE")]
    );

    // The checkpoint holds B's live rows only, framed, with its cursor.
    let (status, headers, body) = s.get(&format!("/v1/sync/{GW}/checkpoint"), Some(&b)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "application/x-lakesync-checkpoint-stream"
    );
    let cursor: u64 = headers["x-checkpoint-hlc"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(cursor, s.ctx.gateway.head());
    let frames = split_frames(&body).unwrap();
    assert_eq!(frames.len(), 1);
    let (deltas, server_hlc, more) = decode_sync_response(frames[0]).unwrap();
    assert_eq!((server_hlc.0, more), (cursor, false));
    let ids: Vec<_> = deltas.iter().map(|d| (d.row_id.as_str(), d.op)).collect();
    assert_eq!(ids, vec![("r2", DeltaOp::Insert)]);
    assert_eq!(deltas[0].value("title"), Some(&json!("for b")));

    // Nothing visible: 200 with an empty body, never 404.
    let (status, headers, body) = s
        .get(
            &format!("/v1/sync/{GW}/checkpoint"),
            Some(&token("client-c")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-checkpoint-hlc"));
    assert!(body.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn admin_routes() {
    let s = start(Options::default()).await;
    let admin = admin_token();
    // Flush with nothing to flush to fails with FLUSH_ERROR, then succeeds once a flush target
    // acknowledges.
    s.push(Some(&token("c")), "c", &[insert("c", "r", "t", "c")])
        .await;
    let flush = format!("/v1/admin/flush/{GW}");
    let (status, body) = s.post(&flush, Some(&admin), &json!({})).await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::INTERNAL_SERVER_ERROR, "FLUSH_ERROR")
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::gateway::FlushRequest>(4);
    s.ctx.gateway.set_flush_channel(tx);
    let gateway = s.ctx.gateway.clone();
    tokio::spawn(async move {
        while let Some(done) = rx.recv().await {
            let result = gateway.acknowledge(gateway.head()).await;
            let _ = done.send(result);
        }
    });
    assert_eq!(
        s.post(&flush, Some(&admin), &json!({})).await,
        (StatusCode::OK, json!({"flushed": true}))
    );

    // Schema: an add-only change is saved; bad JSON and bad schemas are 400.
    let schema_path = format!("/v1/admin/schema/{GW}");
    let mut evolved = todos();
    evolved
        .columns
        .push(ColumnDef::new("priority", ColumnType::Integer));
    assert_eq!(
        s.post(
            &schema_path,
            Some(&admin),
            &serde_json::to_value(&evolved).unwrap()
        )
        .await,
        (StatusCode::OK, json!({"saved": true}))
    );
    assert!(s.ctx.gateway.table("todos").unwrap().columns.len() == 4);
    let (status, _, body) = s.post_raw(&schema_path, Some(&admin), b"{".to_vec()).await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    for bad in [
        json!({"columns": []}),
        json!({"table": "t", "columns": [{"name": "a", "type": "nope"}]}),
        json!({"table": "bad name", "columns": []}),
        json!({"table": "todos", "columns": [{"name": "title", "type": "boolean"}]}),
    ] {
        let (status, body) = s.post(&schema_path, Some(&admin), &bad).await;
        assert_eq!(
            (status, error_of(&body).0),
            (StatusCode::BAD_REQUEST, "SCHEMA_ERROR"),
            "{bad}"
        );
    }

    // Sync rules.
    let rules_path = format!("/v1/admin/sync-rules/{GW}");
    let rules =
        json!({"version": 1, "buckets": [{"name": "all", "tables": ["todos"], "filters": []}]});
    assert_eq!(
        s.post(&rules_path, Some(&admin), &rules).await,
        (StatusCode::OK, json!({"saved": true}))
    );
    assert_eq!(s.ctx.gateway.sync_rules().buckets.len(), 1);
    let (status, body) = s
        .post(
            &rules_path,
            Some(&admin),
            &json!({"version": 1, "buckets": [{"name": "x"}]}),
        )
        .await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );

    // Buffer figures.
    let (status, body) = s
        .get_json(&format!("/v1/admin/metrics/{GW}"), Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["logSize"], 1);
    assert!(body["indexSize"].is_u64() && body["byteSize"].is_u64());
    s.stop().await;
}

#[tokio::test]
async fn actions_routes() {
    let s = start(Options::default()).await;
    let a = token("client-a");
    let (status, body) = s
        .get_json(&format!("/v1/sync/{GW}/actions"), Some(&a))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"connectors": {}})));
    let path = format!("/v1/sync/{GW}/action");
    let action = json!({
        "actionId": "act-1", "clientId": "client-a", "hlc": hlc().0.to_string(),
        "connector": "jira", "actionType": "create_issue", "params": {"title": "x"}
    });
    let (status, body) = s
        .post(
            &path,
            Some(&a),
            &json!({"clientId": "client-a", "actions": [action]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["code"], "ACTION_NOT_SUPPORTED");
    assert!(body["serverHlc"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    let (status, _, body) = s.post_raw(&path, Some(&a), b"nope".to_vec()).await;
    assert_eq!(
        (status, error_of(&body).1),
        (StatusCode::BAD_REQUEST, "Invalid JSON body")
    );
    let (status, body) = s
        .post(&path, Some(&a), &json!({"clientId": "client-a"}))
        .await;
    assert_eq!(
        (status, error_of(&body).1),
        (
            StatusCode::BAD_REQUEST,
            "Missing required fields: clientId, actions"
        )
    );
    let (status, body) = s
        .post(
            &path,
            Some(&a),
            &json!({"clientId": "client-b", "actions": []}),
        )
        .await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    s.stop().await;
}

#[tokio::test]
async fn rate_limit_and_auth_off() {
    let s = start(Options {
        auth: false,
        rate_limiter: Some(RateLimiter::new(1, Duration::from_secs(60))),
        ..Options::default()
    })
    .await;
    // Auth off: any client may push as itself, no token needed.
    let (status, body) = s
        .push(None, "anyone", &[insert("anyone", "r", "t", "anyone")])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, headers, body) = s
        .get(&format!("/v1/sync/{GW}/pull?since=0&clientId=anyone"), None)
        .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_of(&body), ("RATE_LIMITED", "Too many requests"));
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Another client has its own window; static routes are not limited.
    let (status, body) = s
        .get_json(&format!("/v1/sync/{GW}/pull?since=0&clientId=other"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["deltas"].as_array().unwrap().len(), 1);
    for _ in 0..3 {
        assert_eq!(s.get_json("/health", None).await.0, StatusCode::OK);
    }
    s.stop().await;
}

// ---- WebSocket ----------------------------------------------------------------------------

/// A frame from the server.
#[derive(Debug, PartialEq)]
enum Frame {
    Binary(Vec<u8>),
    Text(String),
    Close(u16, String),
    Other(u8),
}

/// A minimal RFC 6455 client: enough for these tests.
struct WsClient {
    stream: TcpStream,
}

impl WsClient {
    /// Opens `path_and_query`; the HTTP status when the upgrade is refused.
    async fn connect(addr: std::net::SocketAddr, path_and_query: &str) -> Result<Self, u16> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        if status == 101 {
            Ok(Self { stream })
        } else {
            Err(status)
        }
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let _ = self.stream.write_all(&frame).await;
    }

    async fn send_binary(&mut self, payload: &[u8]) {
        self.send(0x2, payload).await;
    }

    /// The next frame, within 5 s.
    async fn recv(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), self.read_frame())
            .await
            .expect("a frame within 5 s")
    }

    /// The next frame within `wait`, if any.
    async fn try_recv(&mut self, wait: Duration) -> Option<Frame> {
        tokio::time::timeout(wait, self.read_frame()).await.ok()
    }

    async fn read_frame(&mut self) -> Frame {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).await.unwrap();
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).await.unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).await.unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).await.unwrap();
        match opcode {
            0x2 => Frame::Binary(payload),
            0x1 => Frame::Text(String::from_utf8(payload).unwrap()),
            0x8 => {
                // Complete the closing handshake, as a client must.
                self.send(0x8, &payload[..2.min(payload.len())]).await;
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                Frame::Close(code, String::from_utf8_lossy(&payload[2..]).into_owned())
            }
            other => Frame::Other(other),
        }
    }

    /// The next binary frame (skipping pings).
    async fn recv_binary(&mut self) -> Vec<u8> {
        loop {
            match self.recv().await {
                Frame::Binary(b) => return b,
                Frame::Other(_) => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }
}

fn ws_path(token: Option<&str>) -> String {
    match token {
        Some(t) => format!("/v1/sync/{GW}/ws?token={t}"),
        None => format!("/v1/sync/{GW}/ws"),
    }
}

fn push_frame(client: &str, deltas: &[RowDelta]) -> Vec<u8> {
    use prost::Message;
    let mut frame = vec![TAG_SYNC_PUSH];
    frame.extend(
        v1::SyncPush {
            client_id: client.to_string(),
            deltas: deltas.iter().map(to_proto).collect(),
            last_seen_hlc: 0,
        }
        .encode_to_vec(),
    );
    frame
}

fn pull_frame(client: &str, since: u64, max: u32) -> Vec<u8> {
    use prost::Message;
    let mut frame = vec![TAG_SYNC_PULL];
    frame.extend(
        v1::SyncPull {
            client_id: client.to_string(),
            since_hlc: since,
            max_deltas: max,
        }
        .encode_to_vec(),
    );
    frame
}

#[tokio::test]
async fn websocket_push_pull_and_broadcast() {
    let s = start(Options::default()).await;
    // No token: 401 before any upgrade; another gateway's route: 404.
    assert_eq!(
        WsClient::connect(s.addr, &ws_path(None)).await.err(),
        Some(401)
    );
    assert_eq!(
        WsClient::connect(s.addr, &format!("/v1/sync/other/ws?token={}", token("a")))
            .await
            .err(),
        Some(404)
    );
    let (ta, tb) = (token("client-a"), token("client-b"));
    let mut a = WsClient::connect(s.addr, &ws_path(Some(&ta)))
        .await
        .unwrap();
    let mut b = WsClient::connect(s.addr, &ws_path(Some(&tb)))
        .await
        .unwrap();
    assert_eq!(s.ctx.gateway.limits().ws_max_connections, 1000);

    // A pulls: an untagged SyncResponse.
    a.send_binary(&pull_frame("client-a", 0, 100)).await;
    let reply = a.recv_binary().await;
    assert_ne!(reply.first(), Some(&TAG_BROADCAST));
    let (deltas, _, more) = decode_sync_response(&reply).unwrap();
    assert_eq!((deltas.len(), more), (0, false));

    // A pushes: an untagged reply with the cursor; B hears a 0x03 broadcast of the row.
    let d = insert("client-a", "ws-1", "over ws", "client-b");
    a.send_binary(&push_frame("client-a", std::slice::from_ref(&d)))
        .await;
    let reply = a.recv_binary().await;
    let (none, cursor, _) = decode_sync_response(&reply).unwrap();
    assert!(none.is_empty());
    assert_eq!(cursor.0, s.ctx.gateway.head());
    let heard = b.recv_binary().await;
    assert_eq!(heard[0], TAG_BROADCAST);
    let (deltas, server_hlc, more) = decode_sync_response(&heard[1..]).unwrap();
    assert_eq!((server_hlc, more), (cursor, false));
    assert_eq!(deltas.len(), 1);
    assert_eq!(
        (
            deltas[0].op,
            deltas[0].row_id.as_str(),
            deltas[0].client_id.as_str(),
            deltas[0].hlc
        ),
        (DeltaOp::Insert, "ws-1", "client-a", d.hlc)
    );
    assert_eq!(deltas[0].value("title"), Some(&json!("over ws")));
    // The pusher does not hear its own push.
    assert_eq!(a.try_recv(Duration::from_millis(300)).await, None);

    // An HTTP push reaches WebSocket clients too.
    let (status, _) = s
        .push(
            Some(&tb),
            "client-b",
            &[insert("client-b", "http-1", "over http", "client-b")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let heard = a.recv_binary().await;
    let (deltas, _, _) = decode_sync_response(&heard[1..]).unwrap();
    assert_eq!(deltas[0].row_id, "http-1");

    // B pulls over the socket and sees both rows; the push was durable like HTTP's.
    b.send_binary(&pull_frame("client-b", 0, 0)).await;
    let (deltas, _, _) = decode_sync_response(&b.recv_binary().await).unwrap();
    let rows: Vec<&str> = deltas.iter().map(|d| d.row_id.as_str()).collect();
    assert_eq!(rows, vec!["ws-1", "http-1"]);

    // A push naming another client closes with 1008.
    b.send_binary(&push_frame("client-a", &[])).await;
    match b.recv().await {
        Frame::Close(code, reason) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("Client ID mismatch"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    // So does a push the gateway refuses (clock drift), with its message.
    let ahead = RowDelta::new(
        DeltaOp::Delete,
        "todos",
        "x",
        "client-a",
        vec![],
        HlcTimestamp::new(now_ms() + 60_000, 0).unwrap(),
    );
    a.send_binary(&push_frame("client-a", &[ahead])).await;
    match a.recv().await {
        Frame::Close(code, reason) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("Remote clock"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    s.stop().await;
}

/// The `connections{transport="ws"}` gauge.
fn ws_connections(ctx: &ServerContext) -> i64 {
    ctx.metrics
        .encode()
        .lines()
        .find(|l| l.starts_with("lakesync_gateway_connections{") && l.contains("transport=\"ws\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

#[tokio::test]
async fn websocket_frame_errors_and_limits() {
    let limits = Limits {
        ws_max_connections: 2,
        ws_max_messages_per_second: 3,
        max_push_bytes: 1000,
        ..Limits::default()
    };
    let s = start(Options {
        auth: false,
        limits,
        ..Options::default()
    })
    .await;
    let path = ws_path(None);
    let expect_close = |frame: Frame, code: u16, reason: &str| match frame {
        Frame::Close(c, r) => {
            assert_eq!(c, code);
            assert_eq!(r, reason);
        }
        other => panic!("expected close {code}, got {other:?}"),
    };

    let mut c = WsClient::connect(s.addr, &path).await.unwrap();
    c.send(0x1, b"a text frame").await;
    expect_close(c.recv().await, 1003, "Binary frames only");

    let mut c = WsClient::connect(s.addr, &path).await.unwrap();
    c.send_binary(&[0x01]).await;
    expect_close(c.recv().await, 1002, "Message too short");

    let mut c = WsClient::connect(s.addr, &path).await.unwrap();
    c.send_binary(&[0x07, 0x00]).await;
    expect_close(c.recv().await, 1002, "Unknown message tag: 0x07");

    let mut c = WsClient::connect(s.addr, &path).await.unwrap();
    c.send_binary(&vec![0x01; 1001]).await;
    expect_close(c.recv().await, 1009, "Message too large (max 1,000 bytes)");

    let mut c = WsClient::connect(s.addr, &path).await.unwrap();
    c.send_binary(&[0x01, 0xff, 0xff]).await;
    match c.recv().await {
        Frame::Close(1008, reason) => assert!(reason.contains("SyncPush"), "{reason}"),
        other => panic!("expected 1008, got {other:?}"),
    }

    // Message rate: the 4th frame within a second closes with 1008.
    let mut c = WsClient::connect(s.addr, &path).await.unwrap();
    for _ in 0..3 {
        c.send_binary(&pull_frame("", 0, 1)).await;
        c.recv_binary().await;
    }
    c.send_binary(&pull_frame("", 0, 1)).await;
    expect_close(c.recv().await, 1008, "Rate limit exceeded");
    drop(c);

    // Connection cap: two open, a third is refused with 503; closing one frees a slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ws_connections(&s.ctx) != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let one = WsClient::connect(s.addr, &path).await.unwrap();
    let mut two = WsClient::connect(s.addr, &format!("{path}?clientId=named"))
        .await
        .unwrap();
    assert_eq!(WsClient::connect(s.addr, &path).await.err(), Some(503));
    drop(one);
    let mut reopened = None;
    while reopened.is_none() && tokio::time::Instant::now() < deadline {
        reopened = WsClient::connect(s.addr, &path).await.ok();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut three = reopened.expect("a slot frees when a connection closes");

    // Without auth, a connection adopts the client id its messages name: `named` pushes as
    // client-n and hears nothing of its own push, while the other connection hears it.
    two.send_binary(&push_frame(
        "client-n",
        &[insert("client-n", "n-1", "t", "client-n")],
    ))
    .await;
    two.recv_binary().await;
    let heard = three.recv_binary().await;
    assert_eq!(heard[0], TAG_BROADCAST);
    assert_eq!(two.try_recv(Duration::from_millis(300)).await, None);

    // Shutdown closes open connections with 1001.
    let stopping = tokio::spawn(s.stop());
    expect_close(two.recv().await, 1001, "Server shutting down");
    expect_close(three.recv().await, 1001, "Server shutting down");
    stopping.await.unwrap();
}
