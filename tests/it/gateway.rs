//! The gateway (`lakesync serve`) as a real process, driven over Arrow Flight.
//!
//! Shows the properties DESIGN §4 asks of it: every client's pulled replica equals exactly the
//! rows its sync rules allow of the server's merged state, deletes and conflicting edits
//! included (no leak, no miss); a delta arriving late with an old HLC is still pulled from an
//! older cursor; an acknowledged push survives `kill -9`; a full buffer answers BACKPRESSURE and
//! loses nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_flight::decode::DecodedPayload;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{Action, FlightClient, FlightDescriptor, PutResult, Ticket};
use futures::{StreamExt, TryStreamExt};
use lakesync::gateway::auth::sign_token;
use lakesync::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use lakesync::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
use lakesync::kernel::hlc::HlcTimestamp;
use lakesync::kernel::merge::merge;
use lakesync::kernel::schema::{ColumnDef, ColumnType, TableSchema};
use serde_json::{Value, json};

pub(crate) const SECRET: &str = "gateway-test-secret-0123456789";

pub(crate) fn table() -> TableSchema {
    TableSchema::new(
        "todos",
        vec![
            ColumnDef::new("title", ColumnType::String),
            ColumnDef::new("owner", ColumnType::String),
            ColumnDef::new("done", ColumnType::Boolean),
        ],
    )
}

fn config(dir: &Path, extra_limits: &str, max_age: &str) -> PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"version: 1
name: gw-test
state_dir: state
flush: {{max_rows: 100000, max_bytes: 64MiB, max_age: {max_age}}}
tables:
  - table: todos
    columns:
      - {{name: title, type: string}}
      - {{name: owner, type: string}}
      - {{name: done, type: boolean}}
sources:
  clients:
    type: gateway
    id: test-gw
    listen: {{flight: "127.0.0.1:0", http: "127.0.0.1:0"}}
    auth: {{jwt_secrets: ["{SECRET}"]}}
    sync_rules:
      version: 1
      buckets:
        - name: own
          tables: [todos]
          filters: [{{column: owner, op: eq, value: "jwt:sub"}}]
    limits: {{{extra_limits}}}
sinks:
  out:
    type: sqlite
    input: clients
    path: out.sqlite
"#
        ),
    )
    .unwrap();
    path
}

use crate::support::gateway_process::GatewayProcess as Server;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn token(sub: &str, role: &str) -> String {
    sign_token(
        &json!({"sub": sub, "gw": "test-gw", "role": role}),
        SECRET,
        now_secs(),
    )
    .unwrap()
}

pub(crate) fn hlc(offset_ms: i64, counter: u16) -> HlcTimestamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    HlcTimestamp::new((now + offset_ms) as u64, counter).unwrap()
}

pub(crate) fn delta(
    op: DeltaOp,
    row: &str,
    client: &str,
    at: HlcTimestamp,
    cols: &[(&str, Value)],
) -> RowDelta {
    let cols = cols
        .iter()
        .map(|(c, v)| ColumnDelta::new(*c, v.clone()))
        .collect();
    RowDelta::new(op, "todos", row, client, cols, at)
}

pub(crate) async fn push(
    client: &mut FlightClient,
    deltas: &[RowDelta],
) -> Result<Value, arrow_flight::error::FlightError> {
    let batch = deltas_to_batch(&table(), deltas).unwrap();
    let descriptor = FlightDescriptor::new_cmd(json!({"table": "todos"}).to_string());
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter([Ok(batch)]));
    let results: Vec<PutResult> = client.do_put(stream).await?.try_collect().await?;
    assert_eq!(results.len(), 1);
    Ok(serde_json::from_slice(&results[0].app_metadata).unwrap())
}

/// Pulls everything after `cursor`, page by page; returns the deltas and the final cursor.
pub(crate) async fn pull(
    client: &mut FlightClient,
    mut cursor: u64,
    limit: u64,
) -> (Vec<RowDelta>, u64) {
    let mut deltas = Vec::new();
    loop {
        let ticket = json!({"table": "todos", "cursor": cursor.to_string(), "limit": limit});
        let mut stream = client
            .do_get(Ticket::new(ticket.to_string()))
            .await
            .unwrap()
            .into_inner();
        let mut meta = Value::Null;
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            if let DecodedPayload::RecordBatch(batch) = item.payload {
                deltas.extend(batch_to_deltas(&batch).unwrap());
                meta = serde_json::from_slice(&item.inner.app_metadata).unwrap();
            }
        }
        cursor = meta["cursor"].as_str().unwrap().parse().unwrap();
        if !meta["hasMore"].as_bool().unwrap() {
            return (deltas, cursor);
        }
    }
}

type Rows = BTreeMap<String, BTreeMap<String, Value>>;

/// A replica: pulled deltas applied in order (snapshots carry whole rows).
fn apply(replica: &mut Rows, deltas: &[RowDelta]) {
    for d in deltas {
        match d.op {
            DeltaOp::Delete => {
                replica.remove(&d.row_id);
            }
            _ => {
                let row = replica.entry(d.row_id.clone()).or_default();
                for c in &d.columns {
                    row.insert(c.column.clone(), c.value.clone());
                }
            }
        }
    }
}

/// The merged state of every delta pushed, restricted to live rows owned by `owner`.
fn expected(all: &[RowDelta], owner: &str) -> Rows {
    let t = table();
    let state = merge(&t, None, &[deltas_to_batch(&t, all).unwrap()]).unwrap();
    // Read the state back through a snapshot of every row: a DELETE-free fold.
    let mut rows = Rows::new();
    let ids = state
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    let deleted = state
        .column(2)
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .unwrap();
    for i in 0..state.num_rows() {
        if deleted.value(i) {
            continue;
        }
        let mut row = BTreeMap::new();
        for (pos, def) in t.columns.iter().enumerate() {
            let v = lakesync::kernel::delta_batch::cell_to_json(
                state.column(6 + pos),
                i,
                def.column_type,
            )
            .unwrap();
            if !v.is_null() {
                row.insert(def.name.clone(), v);
            }
        }
        if row.get("owner") == Some(&json!(owner)) {
            rows.insert(ids.value(i).to_string(), row);
        }
    }
    rows
}

fn strip_nulls(rows: &Rows) -> Rows {
    rows.iter()
        .map(|(k, r)| {
            (
                k.clone(),
                r.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(c, v)| (c.clone(), v.clone()))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pull_exactly_their_rows_and_late_deltas_are_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), "", "1s"));
    let (ta, tb) = (token("alice", "client"), token("bob", "client"));
    let mut a = server.client(&ta).await;
    let mut b = server.client(&tb).await;

    // Alice and Bob write rows; some rows change owner, one is deleted, and both edit r2 at
    // the same time (conflicting edits resolved column by column).
    let mut all = Vec::new();
    let alice1 = vec![
        delta(
            DeltaOp::Insert,
            "r1",
            "alice",
            hlc(-3000, 0),
            &[
                ("title", json!("milk")),
                ("owner", json!("alice")),
                ("done", json!(false)),
            ],
        ),
        delta(
            DeltaOp::Insert,
            "r2",
            "alice",
            hlc(-3000, 1),
            &[("title", json!("eggs")), ("owner", json!("alice"))],
        ),
        delta(
            DeltaOp::Insert,
            "r3",
            "alice",
            hlc(-3000, 2),
            &[("title", json!("tea")), ("owner", json!("bob"))],
        ),
    ];
    let r = push(&mut a, &alice1).await.unwrap();
    assert_eq!(r["accepted"], 3, "{r}");
    all.extend(alice1);
    let bob1 = vec![
        delta(
            DeltaOp::Update,
            "r2",
            "bob",
            hlc(-2000, 0),
            &[("title", json!("EGGS"))],
        ),
        delta(
            DeltaOp::Insert,
            "r4",
            "bob",
            hlc(-2000, 1),
            &[("title", json!("jam")), ("owner", json!("bob"))],
        ),
    ];
    assert_eq!(push(&mut b, &bob1).await.unwrap()["accepted"], 2);
    all.extend(bob1);

    let (pulled_a, cursor_a) = pull(&mut a, 0, 2).await;
    let (pulled_b, cursor_b) = pull(&mut b, 0, 100).await;
    let (mut rep_a, mut rep_b) = (Rows::new(), Rows::new());
    apply(&mut rep_a, &pulled_a);
    apply(&mut rep_b, &pulled_b);
    assert_eq!(strip_nulls(&rep_a), expected(&all, "alice"));
    assert_eq!(strip_nulls(&rep_b), expected(&all, "bob"));

    // Changes that move rows between clients, a partial update, a delete, and a late delta
    // whose HLC is older than everything before it.
    let alice2 = vec![
        delta(
            DeltaOp::Update,
            "r1",
            "alice",
            hlc(-1000, 0),
            &[("owner", json!("bob"))],
        ),
        delta(DeltaOp::Delete, "r2", "alice", hlc(-1000, 1), &[]),
        delta(
            DeltaOp::Update,
            "r3",
            "alice",
            hlc(-1000, 2),
            &[("done", json!(true))],
        ),
    ];
    assert_eq!(push(&mut a, &alice2).await.unwrap()["accepted"], 3);
    all.extend(alice2);
    let late = vec![delta(
        DeltaOp::Update,
        "r4",
        "bob",
        hlc(-60_000, 0),
        &[("done", json!(true))],
    )];
    let r = push(&mut b, &late).await.unwrap();
    assert_eq!(r["accepted"], 1, "{r}");
    all.extend(late);

    let (more_a, _) = pull(&mut a, cursor_a, 1).await;
    let (more_b, _) = pull(&mut b, cursor_b, 100).await;
    apply(&mut rep_a, &more_a);
    apply(&mut rep_b, &more_b);
    assert_eq!(
        strip_nulls(&rep_a),
        expected(&all, "alice"),
        "alice's replica"
    );
    assert_eq!(strip_nulls(&rep_b), expected(&all, "bob"), "bob's replica");
    assert!(
        rep_a.is_empty(),
        "alice lost r1 (re-owned) and r2 (deleted): {rep_a:?}"
    );
    assert_eq!(
        rep_b["r4"]["done"],
        json!(true),
        "the late delta reached bob"
    );
    assert_eq!(
        rep_b["r1"]["title"],
        json!("milk"),
        "r1 entered bob's view whole"
    );

    // A client cannot push deltas written by someone else, and drift is rejected per delta.
    let r = push(
        &mut a,
        &[
            delta(
                DeltaOp::Update,
                "r9",
                "bob",
                hlc(0, 0),
                &[("title", json!("forged"))],
            ),
            delta(
                DeltaOp::Update,
                "r9",
                "alice",
                hlc(10_000, 0),
                &[("title", json!("future"))],
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r["accepted"], 0, "{r}");
    let codes: Vec<&str> = r["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["FORBIDDEN", "CLOCK_DRIFT"]);

    // Wrong secret: refused.
    let mut forged = server
        .client(
            &sign_token(
                &json!({"sub": "alice", "gw": "test-gw"}),
                "another-secret-0123456789",
                now_secs(),
            )
            .unwrap(),
        )
        .await;
    let Err(err) = forged
        .do_get(Ticket::new(json!({"table": "todos"}).to_string()))
        .await
    else {
        panic!("a forged token is refused");
    };
    assert!(err.to_string().contains("AUTH_ERROR"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_push_survives_kill_9_and_a_full_buffer_pushes_back() {
    let dir = tempfile::tempdir().unwrap();
    // A long flush age and a small buffer: nothing flushes on its own.
    let cfg = config(dir.path(), "backpressure_bytes: 4KiB", "1h");
    let server = Server::start(&cfg);
    let ta = token("alice", "client");
    let mut a = server.client(&ta).await;
    let mut pushed = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let d = vec![delta(
            DeltaOp::Insert,
            &format!("k{i}"),
            "alice",
            hlc(0, 0),
            &[
                ("title", json!(format!("item {i}"))),
                ("owner", json!("alice")),
            ],
        )];
        match push(&mut a, &d).await {
            Ok(r) => {
                assert_eq!(r["accepted"], 1);
                pushed.extend(d);
            }
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("the buffer filled up");
    assert!(refused.contains("BACKPRESSURE"), "{refused}");
    assert!(!pushed.is_empty());

    // kill -9 and restart: every acknowledged delta is still there.
    server.kill9();
    let server = Server::start(&cfg);
    let mut a = server.client(&ta).await;
    let (pulled, _) = pull(&mut a, 0, 10_000).await;
    let mut replica = Rows::new();
    apply(&mut replica, &pulled);
    assert_eq!(strip_nulls(&replica), expected(&pushed, "alice"));

    // Still full after the restart; an admin flush drains it and pushes are taken again.
    let d = vec![delta(
        DeltaOp::Insert,
        "after",
        "alice",
        hlc(0, 0),
        &[("owner", json!("alice"))],
    )];
    assert!(
        push(&mut a, &d).await.is_err(),
        "still full before the flush"
    );
    let mut admin = server.client(&token("ops", "admin")).await;
    let flushed: Vec<bytes::Bytes> = admin
        .do_action(Action::new("flush", ""))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&flushed[0]).unwrap(),
        json!({"flushed": true})
    );
    let denied = a
        .do_action(Action::new("flush", ""))
        .await
        .err()
        .expect("clients may not flush");
    assert!(denied.to_string().contains("FORBIDDEN"), "{denied}");
    assert_eq!(push(&mut a, &d).await.unwrap()["accepted"], 1);

    // Flushed rows reached the sink (the SQLite delta log), each exactly once.
    let db = dir.path().join("out.sqlite");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(DISTINCT delta_id) FROM lakesync_deltas")
        .fetch_one(&pool)
        .await
        .unwrap_or(-1);
    assert_eq!(
        n as usize,
        pushed.len(),
        "every acknowledged delta flushed once"
    );
}

/// The rows a Python interop script wrote (`{"_reader", "_row_id", ...}` per line), by reader.
fn interop_rows(path: &Path) -> BTreeMap<String, Rows> {
    let mut out: BTreeMap<String, Rows> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let mut row: BTreeMap<String, Value> = serde_json::from_str(line).unwrap();
        let reader = row.remove("_reader").unwrap().as_str().unwrap().to_string();
        let id = row.remove("_row_id").unwrap().as_str().unwrap().to_string();
        out.entry(reader).or_default().insert(id, row);
    }
    out
}

/// Runs a script of `tests/python` with the tools venv's Python; panics with its output on failure.
fn run_python(python: &str, script: &str, args: &[&str], env: &[(&str, &str)]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pyarrow.flight`, a client we did not write, pushes and pulls; each reader's rows are exactly
/// its own (owner = its `sub`), with the update applied and the deleted row gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_flight_pushes_and_pulls() {
    let Some(python) = crate::support::service_env("pyarrow", "LAKESYNC_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), "", "1s"));
    let out = dir.path().join("flight.jsonl");
    let (ta, tb) = (token("alice", "client"), token("bob", "client"));
    run_python(
        &python,
        "flight_interop.py",
        &[
            "--flight",
            &format!("grpc://{}", server.flight),
            "--schema",
            r#"[{"name":"title","type":"string"},{"name":"owner","type":"string"},{"name":"done","type":"boolean"}]"#,
            "--out",
            out.to_str().unwrap(),
        ],
        &[("LAKESYNC_TOKEN_A", &ta), ("LAKESYNC_TOKEN_B", &tb)],
    );
    let rows = interop_rows(&out);
    let a: Vec<&String> = rows["a"].keys().collect();
    let mut want_a: Vec<String> = (0..100).map(|i| format!("a-{i}")).collect();
    want_a.extend(["drift-ok-0".to_string(), "drift-ok-1".to_string()]);
    want_a.sort();
    assert_eq!(a, want_a.iter().collect::<Vec<_>>());
    assert!(rows["a"].values().all(|r| r["owner"] == json!("alice")));
    let b: Vec<&str> = rows["b"].keys().map(String::as_str).collect();
    let mut want_b: Vec<String> = (0..10)
        .filter(|i| *i != 1)
        .map(|i| format!("b-{i}"))
        .collect();
    want_b.sort();
    assert_eq!(b, want_b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        rows["b"]["b-0"]["title"]
            .as_str()
            .unwrap()
            .ends_with("(updated)")
    );
}

/// The original protocol from clients we did not write: a plain HTTP client drives the JSON API
/// (push, paged pull, checkpoint, errors, metrics) and a WebSocket client speaks the binary
/// framing (push, pull, a broadcast to another connection, text frames refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_websocket_clients_speak_the_original_protocol() {
    let Some(python) = crate::support::service_env("python tools", "LAKESYNC_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), "", "1s"));
    let url = format!("http://{}", server.http);
    let out = dir.path().join("http.jsonl");
    let (ta, tb, admin) = (
        token("alice", "client"),
        token("bob", "client"),
        token("ops", "admin"),
    );
    let env = [
        ("LAKESYNC_TOKEN_A", ta.as_str()),
        ("LAKESYNC_TOKEN_B", tb.as_str()),
        ("LAKESYNC_ADMIN_TOKEN", admin.as_str()),
    ];
    run_python(
        &python,
        "http_interop.py",
        &[
            "--url",
            &url,
            "--gateway",
            "test-gw",
            "--out",
            out.to_str().unwrap(),
            "--prefix",
            "h-",
        ],
        &env,
    );
    let rows = interop_rows(&out);
    assert!(rows["a"].values().all(|r| r["owner"] == json!("alice")));
    assert!(rows["b"].values().all(|r| r["owner"] == json!("bob")));
    assert!(!rows["a"].is_empty() && !rows["b"].is_empty());
    run_python(
        &python,
        "ws_interop.py",
        &["--url", &url, "--gateway", "test-gw"],
        &env,
    );
}

/// Real time over Flight: a DoExchange subscriber gets the backlog after its cursor, then every
/// change its rules allow as it is accepted — and pushes on the same stream are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_exchange_streams_changes_as_they_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), "", "1s"));
    let mut alice = server.client(&token("alice", "client")).await;
    let mut bob = server.client(&token("bob", "client")).await;
    push(
        &mut alice,
        &[delta(
            DeltaOp::Insert,
            "old",
            "alice",
            hlc(-500, 0),
            &[("owner", json!("bob")), ("title", json!("backlog"))],
        )],
    )
    .await
    .unwrap();

    // Bob subscribes from the beginning; his first outbound message names the subscription and
    // carries one of his own pushes.
    let descriptor = FlightDescriptor::new_cmd(
        json!({"subscribe": {"tables": ["todos"], "cursor": "0"}, "table": "todos"}).to_string(),
    );
    let own = deltas_to_batch(
        &table(),
        &[delta(
            DeltaOp::Insert,
            "mine",
            "bob",
            hlc(0, 0),
            &[("owner", json!("bob")), ("title", json!("own"))],
        )],
    )
    .unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(Ok(own)).unwrap();
    let outbound = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(rx);
    let mut inbound = bob.do_exchange(outbound).await.unwrap().into_inner();

    let mut seen: Vec<String> = Vec::new();
    let mut acked = false;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut pushed_live = false;
    while !(acked && seen.contains(&"live".to_string())) {
        let item = tokio::time::timeout_at(deadline, inbound.next())
            .await
            .expect("changes arrive within 10 s")
            .expect("the stream stays open")
            .unwrap();
        match item.payload {
            DecodedPayload::RecordBatch(batch) => {
                seen.extend(
                    batch_to_deltas(&batch)
                        .unwrap()
                        .into_iter()
                        .map(|d| d.row_id),
                );
            }
            DecodedPayload::None if !item.inner.app_metadata.is_empty() => {
                let meta: Value = serde_json::from_slice(&item.inner.app_metadata).unwrap();
                assert_eq!(meta["ack"], json!(true), "{meta}");
                assert_eq!(meta["accepted"], json!(1), "{meta}");
                acked = true;
            }
            _ => {}
        }
        if seen.contains(&"old".to_string()) && !pushed_live {
            // Alice writes a row for Bob and one Bob may not see, while he is subscribed.
            push(
                &mut alice,
                &[
                    delta(
                        DeltaOp::Insert,
                        "hidden",
                        "alice",
                        hlc(0, 1),
                        &[("owner", json!("alice"))],
                    ),
                    delta(
                        DeltaOp::Insert,
                        "live",
                        "alice",
                        hlc(0, 2),
                        &[("owner", json!("bob"))],
                    ),
                ],
            )
            .await
            .unwrap();
            pushed_live = true;
        }
    }
    assert!(
        seen.contains(&"old".to_string()),
        "the backlog came first: {seen:?}"
    );
    assert!(!seen.contains(&"hidden".to_string()), "no leak: {seen:?}");
    drop(tx);
}

/// A table reaching its flush budget is flushed without waiting for the age threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_over_its_budget_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), "", "1h, max_table_bytes: 1KiB"));
    let mut a = server.client(&token("alice", "client")).await;
    let rows: Vec<RowDelta> = (0..50)
        .map(|i| {
            delta(
                DeltaOp::Insert,
                &format!("t{i}"),
                "alice",
                hlc(0, i),
                &[("title", json!("x".repeat(40))), ("owner", json!("alice"))],
            )
        })
        .collect();
    assert_eq!(push(&mut a, &rows).await.unwrap()["accepted"], 50);
    let db = dir.path().join("out.sqlite");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if db.exists() {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lakesync_deltas")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            if n == 50 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the budget did not trigger a flush"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
