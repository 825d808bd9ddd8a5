//! The client SDK (`lakesync::client`) against a real `lakesync serve` process.
//!
//! Shows what issue 5 asks of it: a client that made 1,000 changes while the gateway was down
//! converges once it is up, and the gateway holds every change exactly once; two clients that
//! edit the same rows concurrently (delete vs update included) end with identical replicas equal
//! to the column-level LWW fold of every change; a client process killed mid-push — aborted
//! exactly between the gateway's acceptance and the acknowledgement, and `kill -9`ed at
//! arbitrary moments — restarts with nothing lost and nothing duplicated; a replica holds
//! exactly the rows its token's rules allow, before and after rows move in and out of its
//! buckets (its own writes included). Also: schema sync, dead letters, live subscription and
//! `watch`, actions, and `lakesync sync`. An ignored test prints the client benchmarks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lakesync::client::cli::{SyncArgs, run_sync_until};
use lakesync::client::{Connection, LocalStore, SyncEngine, SyncOptions};
use lakesync::gateway::auth::sign_token;
use lakesync::kernel::delta::{DeltaOp, RowDelta};
use lakesync::kernel::delta_batch::{cell_to_json, deltas_to_batch};
use lakesync::kernel::merge::merge;
use lakesync::kernel::schema::{ColumnDef, ColumnType, TableSchema};
use serde_json::{Map, Value, json};

const SECRET: &str = "client-test-secret-0123456789";

fn table() -> TableSchema {
    TableSchema::new(
        "todos",
        vec![
            ColumnDef::new("title", ColumnType::String),
            ColumnDef::new("owner", ColumnType::String),
            ColumnDef::new("done", ColumnType::Boolean),
            ColumnDef::new("n", ColumnType::Integer),
        ],
    )
}

/// A port nobody listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway file serving `todos` on `port` (0: any); with `rules`, each client sees the rows it
/// owns (`owner = jwt:sub`).
fn config(dir: &Path, port: u16, rules: bool, limits: &str, max_age: &str) -> PathBuf {
    let path = dir.join("gateway.yaml");
    let rules = if rules {
        r#"sync_rules:
      version: 1
      buckets:
        - name: own
          tables: [todos]
          filters: [{column: owner, op: eq, value: "jwt:sub"}]"#
    } else {
        ""
    };
    std::fs::write(
        &path,
        format!(
            r#"version: 1
name: client-test
state_dir: state
flush: {{max_rows: 1000000, max_bytes: 1GiB, max_age: {max_age}}}
tables:
  - table: todos
    columns:
      - {{name: title, type: string}}
      - {{name: owner, type: string}}
      - {{name: done, type: boolean}}
      - {{name: n, type: integer}}
sources:
  clients:
    type: gateway
    id: client-gw
    listen: {{flight: "127.0.0.1:{port}", http: "127.0.0.1:0"}}
    auth: {{jwt_secrets: ["{SECRET}"]}}
    {rules}
    limits: {{{limits}}}
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

fn token(sub: &str, role: &str) -> String {
    sign_token(
        &json!({"sub": sub, "gw": "client-gw", "role": role}),
        SECRET,
        now_secs(),
    )
    .unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A replica of `todos` for `sub` (a file when `file` is given), and its engine.
async fn client(url: &str, sub: &str, file: Option<&Path>) -> (LocalStore, SyncEngine) {
    let store = match file {
        Some(path) => LocalStore::open_file(path, Some(sub)).await.unwrap(),
        None => LocalStore::open_in_memory(sub).await.unwrap(),
    };
    store.register(table()).await.unwrap();
    let engine = SyncEngine::new(
        store.clone(),
        SyncOptions::new(url).with_token(token(sub, "client")),
    )
    .unwrap();
    (store, engine)
}

type Rows = BTreeMap<String, BTreeMap<String, Value>>;

/// A replica's rows without null columns.
async fn rows(store: &LocalStore) -> Rows {
    store
        .rows("todos")
        .await
        .unwrap()
        .into_iter()
        .map(|(id, row)| (id, row.into_iter().filter(|(_, v)| !v.is_null()).collect()))
        .collect()
}

/// The column-level LWW fold (the kernel's merge) of `all`, live rows only, without null
/// columns; restricted to rows owned by `owner` when given.
fn fold(all: &[RowDelta], owner: Option<&str>) -> Rows {
    let t = table();
    let state = merge(&t, None, &[deltas_to_batch(&t, all).unwrap()]).unwrap();
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
    let mut out = Rows::new();
    for i in 0..state.num_rows() {
        if deleted.value(i) {
            continue;
        }
        let mut row = BTreeMap::new();
        for (pos, def) in t.columns.iter().enumerate() {
            let v = cell_to_json(
                state.column(lakesync::kernel::state::RESERVED + pos),
                i,
                def.column_type,
            )
            .unwrap();
            if !v.is_null() {
                row.insert(def.name.clone(), v);
            }
        }
        if owner.is_none_or(|o| row.get("owner") == Some(&json!(o))) {
            out.insert(ids.value(i).to_string(), row);
        }
    }
    out
}

/// The gateway's buffer figures (`logSize`: deltas held).
async fn stats(url: &str) -> Value {
    Connection::new(url, Some(&token("ops", "admin")), "ops")
        .unwrap()
        .action("stats", Vec::new())
        .await
        .unwrap()
}

/// 1,000 changes made offline: 500 inserts, 300 updates, 200 deletes.
async fn thousand_changes(store: &LocalStore, owner: &str) -> Vec<RowDelta> {
    let mut all = Vec::new();
    for i in 0..500 {
        let values = obj(json!({"title": format!("task {i}"), "owner": owner, "n": i}));
        all.push(
            store
                .insert("todos", &format!("r{i}"), values)
                .await
                .unwrap(),
        );
    }
    for i in 0..300 {
        let changes = obj(json!({"title": format!("task {i} (edited)"), "done": i % 2 == 0}));
        all.push(
            store
                .update("todos", &format!("r{i}"), changes)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for i in 300..500 {
        all.push(
            store
                .delete("todos", &format!("r{i}"))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(all.len(), 1000);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_changes_converge_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port, false, "", "1s");
    let url = format!("http://127.0.0.1:{port}");
    let (store, engine) = client(&url, "alice", Some(&dir.path().join("alice.db"))).await;

    // The gateway is down: every change lands in the outbox, and syncing fails retryably.
    let all = thousand_changes(&store, "alice").await;
    let err = engine.sync_once().await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            lakesync::ErrorKind::External { retryable: true }
        ),
        "{err:?}"
    );
    let status = engine.status().await.unwrap();
    assert_eq!(status.queue_depth, 1000);
    assert!(!status.connected);
    assert!(status.last_error.is_some(), "{status:?}");
    assert_eq!(status.cursor, None);
    assert_eq!(rows(&store).await, fold(&all, None), "usable offline");

    // The gateway comes up: one round pushes everything, exactly once.
    let server = Server::start(&cfg);
    let report = engine.sync_once().await.unwrap();
    assert_eq!(report.pushed, 1000, "{report:?}");
    assert_eq!(report.duplicates, 0);
    let status = engine.status().await.unwrap();
    assert_eq!(status.queue_depth, 0);
    assert_eq!(status.last_error, None);
    assert!(status.connected && status.last_sync_ms.is_some());
    assert_eq!(stats(&server.url()).await["logSize"], 1000);
    assert_eq!(rows(&store).await, fold(&all, None));

    // Another round changes nothing; a fresh client converges to the same rows.
    let again = engine.sync_once().await.unwrap();
    assert_eq!((again.pushed, again.pulled), (0, 0), "{again:?}");
    assert_eq!(stats(&server.url()).await["logSize"], 1000);
    let (other, other_engine) = client(&server.url(), "bob", None).await;
    let first = other_engine.sync_once().await.unwrap();
    assert_eq!(first.checkpoint_rows, 300);
    assert_eq!(rows(&other).await, rows(&store).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_converge_to_the_lww_fold() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), 0, false, "", "1s"));
    let url = server.url();
    let (a, sync_a) = client(&url, "alice", None).await;
    let (b, sync_b) = client(&url, "bob", None).await;
    let mut all = Vec::new();
    for i in 0..20 {
        let values =
            obj(json!({"title": format!("t{i}"), "owner": "alice", "done": false, "n": i}));
        all.push(a.insert("todos", &format!("r{i}"), values).await.unwrap());
    }
    sync_a.sync_once().await.unwrap();
    assert_eq!(sync_b.sync_once().await.unwrap().checkpoint_rows, 20);

    // Both edit offline, interleaved so that either side wins some conflicts. The clocks of
    // two replicas in one process may share a millisecond; a tick between conflicting writes
    // makes "later" unambiguous for the assertions below (the fold holds whatever the order).
    let upd = |v: Value| obj(v);
    let tick = || tokio::time::sleep(Duration::from_millis(3));
    for i in 0..5 {
        // Same column: the later write wins.
        all.push(
            a.update(
                "todos",
                &format!("r{i}"),
                upd(json!({"title": format!("A{i}")})),
            )
            .await
            .unwrap()
            .unwrap(),
        );
        tick().await;
        all.push(
            b.update(
                "todos",
                &format!("r{i}"),
                upd(json!({"title": format!("B{i}")})),
            )
            .await
            .unwrap()
            .unwrap(),
        );
    }
    for i in 5..10 {
        // Different columns: both survive.
        all.push(
            a.update(
                "todos",
                &format!("r{i}"),
                upd(json!({"title": format!("A{i}")})),
            )
            .await
            .unwrap()
            .unwrap(),
        );
        tick().await;
        all.push(
            b.update("todos", &format!("r{i}"), upd(json!({"done": true})))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for i in 10..13 {
        // A deletes, then B updates: the later update brings the row back with its column.
        all.push(a.delete("todos", &format!("r{i}")).await.unwrap().unwrap());
        tick().await;
        all.push(
            b.update("todos", &format!("r{i}"), upd(json!({"n": 100 + i})))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for i in 13..16 {
        // A updates, then B deletes: the delete wins.
        all.push(
            a.update("todos", &format!("r{i}"), upd(json!({"done": true})))
                .await
                .unwrap()
                .unwrap(),
        );
        tick().await;
        all.push(b.delete("todos", &format!("r{i}")).await.unwrap().unwrap());
    }
    // B deletes, then A updates.
    all.push(b.delete("todos", "r16").await.unwrap().unwrap());
    tick().await;
    all.push(
        a.update("todos", "r16", upd(json!({"title": "A16"})))
            .await
            .unwrap()
            .unwrap(),
    );
    tick().await;
    // Both create the same new row.
    all.push(
        a.insert("todos", "new", upd(json!({"title": "from A", "n": 1})))
            .await
            .unwrap(),
    );
    tick().await;
    all.push(
        b.insert(
            "todos",
            "new",
            upd(json!({"title": "from B", "done": true})),
        )
        .await
        .unwrap(),
    );

    sync_a.sync_once().await.unwrap();
    sync_b.sync_once().await.unwrap();
    sync_a.sync_once().await.unwrap();
    let (ra, rb) = (rows(&a).await, rows(&b).await);
    assert_eq!(ra, rb, "both replicas are identical");
    assert_eq!(
        ra,
        fold(&all, None),
        "and equal the LWW fold of every change"
    );
    assert!(!ra.contains_key("r13"), "a later delete wins");
    assert_eq!(
        ra["r10"].keys().collect::<Vec<_>>(),
        ["n"],
        "a later update resurrects with only its column"
    );
    assert_eq!(
        a.queue_depth().await.unwrap() + b.queue_depth().await.unwrap(),
        0
    );
    assert_eq!(stats(&url).await["logSize"], all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_holds_exactly_the_rows_its_rules_allow() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), 0, true, "", "1s"));
    let url = server.url();
    let (alice, sync_alice) = client(&url, "alice", None).await;
    let (bob, sync_bob) = client(&url, "bob", None).await;
    let mut all = Vec::new();

    // Bob writes rows for both; his own replica keeps only his.
    for i in 0..5 {
        all.push(
            bob.insert(
                "todos",
                &format!("a{i}"),
                obj(json!({"title": format!("for alice {i}"), "owner": "alice"})),
            )
            .await
            .unwrap(),
        );
        all.push(
            bob.insert(
                "todos",
                &format!("b{i}"),
                obj(json!({"title": format!("bob's {i}"), "owner": "bob"})),
            )
            .await
            .unwrap(),
        );
    }
    sync_bob.sync_once().await.unwrap();
    assert_eq!(
        rows(&bob).await,
        fold(&all, Some("bob")),
        "bob sees only his rows"
    );
    sync_alice.sync_once().await.unwrap();
    assert_eq!(rows(&alice).await, fold(&all, Some("alice")));
    assert_eq!(rows(&alice).await.len(), 5);

    // Rows move: bob takes a0 and gives b0 to alice; alice gives a1 to carol, deletes a2, and
    // writes a row she will never see.
    all.push(
        bob.upsert("todos", "a0", obj(json!({"owner": "bob"})))
            .await
            .unwrap()
            .unwrap(),
    );
    all.push(
        bob.update("todos", "b0", obj(json!({"owner": "alice"})))
            .await
            .unwrap()
            .unwrap(),
    );
    all.push(
        alice
            .update("todos", "a1", obj(json!({"owner": "carol"})))
            .await
            .unwrap()
            .unwrap(),
    );
    all.push(alice.delete("todos", "a2").await.unwrap().unwrap());
    all.push(
        alice
            .insert(
                "todos",
                "x",
                obj(json!({"title": "carol's", "owner": "carol"})),
            )
            .await
            .unwrap(),
    );
    all.push(
        alice
            .update("todos", "a3", obj(json!({"done": true})))
            .await
            .unwrap()
            .unwrap(),
    );
    sync_bob.sync_once().await.unwrap();
    let report = sync_alice.sync_once().await.unwrap();
    assert!(
        report.removed >= 1,
        "alice's own out-of-view row was removed: {report:?}"
    );
    sync_bob.sync_once().await.unwrap();

    let want_alice = fold(&all, Some("alice"));
    assert_eq!(
        want_alice.keys().collect::<Vec<_>>(),
        ["a3", "a4", "b0"],
        "the fold itself"
    );
    assert_eq!(rows(&alice).await, want_alice, "no leak, no miss");
    assert_eq!(rows(&bob).await, fold(&all, Some("bob")));
    assert_eq!(
        rows(&alice).await["b0"]["title"],
        "bob's 0",
        "b0 entered whole"
    );

    // A fresh replica for the same token gets the same rows from a checkpoint.
    let (again, sync_again) = client(&url, "alice", None).await;
    sync_again.sync_once().await.unwrap();
    assert_eq!(rows(&again).await, want_alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_evolve_and_refused_changes_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), 0, false, "", "1s"));
    let url = server.url();
    let (alice, sync_alice) = client(&url, "alice", None).await;
    alice
        .insert("todos", "r1", obj(json!({"title": "milk"})))
        .await
        .unwrap();
    sync_alice.sync_once().await.unwrap();

    // An admin adds a column: the replica gains it on the next round and can write it.
    let mut wider = table();
    wider.columns.push(ColumnDef::new("tags", ColumnType::Json));
    Connection::new(&url, Some(&token("ops", "admin")), "ops")
        .unwrap()
        .action("set-schema", serde_json::to_vec(&wider).unwrap())
        .await
        .unwrap();
    sync_alice.sync_once().await.unwrap();
    assert_eq!(alice.schema("todos").unwrap().columns.len(), 5);
    alice
        .update("todos", "r1", obj(json!({"tags": ["a", "b"]})))
        .await
        .unwrap()
        .unwrap();
    sync_alice.sync_once().await.unwrap();
    let (bob, sync_bob) = client(&url, "bob", None).await;
    sync_bob.sync_once().await.unwrap();
    assert_eq!(
        bob.get("todos", "r1").await.unwrap().unwrap()["tags"],
        json!(["a", "b"])
    );

    // A replica written as "mallory" but holding alice's token: the gateway refuses its
    // changes for good; they are dead-lettered and the replica returns to the server's rows.
    let store = LocalStore::open_in_memory("mallory").await.unwrap();
    store.register(table()).await.unwrap();
    let forged = SyncEngine::new(
        store.clone(),
        SyncOptions::new(&url).with_token(token("alice", "client")),
    )
    .unwrap();
    store
        .insert("todos", "forged", obj(json!({"title": "not mine"})))
        .await
        .unwrap();
    let report = forged.sync_once().await.unwrap();
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    let status = forged.status().await.unwrap();
    assert_eq!((status.queue_depth, status.dead_letters), (0, 1));
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("FORBIDDEN"),
        "{status:?}"
    );
    assert!(
        store.get("todos", "forged").await.unwrap().is_none(),
        "repaired by a checkpoint"
    );
    assert!(store.get("todos", "r1").await.unwrap().is_some());
    let dead = store.dead_letters().await.unwrap();
    assert_eq!(dead[0].delta.row_id, "forged");
}

/// Polls `condition` until it holds (20 s at most).
async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next result of a watched `SELECT count(*) AS n ...`.
async fn next_count(
    watch: &mut futures::stream::BoxStream<'static, lakesync::Result<lakesync::client::Rows>>,
) -> Value {
    let rows = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("a watch result in time")
        .expect("the watch goes on")
        .expect("the query runs");
    rows[0]["n"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscription_and_watch_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port, false, "", "1s");
    let server = Server::start(&cfg);
    let url = server.url();
    let alice = LocalStore::open_in_memory("alice").await.unwrap();
    alice.register(table()).await.unwrap();
    let mut options = SyncOptions::new(&url).with_token(token("alice", "client"));
    options.backoff =
        lakesync::client::Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
    let sync_alice = SyncEngine::new(alice.clone(), options).unwrap();
    let (bob, sync_bob) = client(&url, "bob", None).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = sync_alice.clone();
    let running = tokio::spawn(async move {
        follower
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let mut counts = alice.watch("SELECT count(*) AS n FROM todos WHERE done = 1", vec![]);
    assert_eq!(next_count(&mut counts).await, 0);
    wait_until("the follower subscribes", || async {
        sync_alice.status().await.unwrap().realtime
    })
    .await;

    // Bob's pushed change reaches alice through the live stream (the follower's heartbeat
    // round is 30 s away); the watch re-runs.
    bob.insert("todos", "r1", obj(json!({"title": "milk", "done": true})))
        .await
        .unwrap();
    sync_bob.sync_once().await.unwrap();
    assert_eq!(next_count(&mut counts).await, 1);

    // Alice's local write is pushed by the follower on its own; bob pulls it.
    alice
        .insert("todos", "r2", obj(json!({"title": "eggs", "done": true})))
        .await
        .unwrap();
    assert_eq!(next_count(&mut counts).await, 2);
    wait_until("the follower pushes", || async {
        alice.queue_depth().await.unwrap() == 0
    })
    .await;
    sync_bob.sync_once().await.unwrap();
    assert_eq!(rows(&bob).await, rows(&alice).await);

    // The gateway goes away: the follower notices, keeps local writes, and reconnects (with
    // backoff) when it is back.
    drop(server);
    wait_until("the follower notices", || async {
        let status = sync_alice.status().await.unwrap();
        !status.realtime && status.last_error.is_some()
    })
    .await;
    alice
        .insert(
            "todos",
            "r3",
            obj(json!({"title": "offline", "done": true})),
        )
        .await
        .unwrap();
    assert_eq!(next_count(&mut counts).await, 3);
    let _server = Server::start(&cfg);
    wait_until("the follower reconnects and pushes", || async {
        let status = sync_alice.status().await.unwrap();
        status.realtime && status.queue_depth == 0
    })
    .await;
    bob.insert("todos", "r4", obj(json!({"title": "back", "done": true})))
        .await
        .unwrap();
    sync_bob.sync_once().await.unwrap();
    assert_eq!(next_count(&mut counts).await, 4);
    assert_eq!(rows(&bob).await, rows(&alice).await);

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    // Actions: no connector is registered on this gateway.
    assert_eq!(
        sync_alice.discover().await.unwrap(),
        json!({"connectors": {}})
    );
    let result = sync_alice
        .execute("slack", "send", obj(json!({"text": "hi"})), Some("k1"))
        .await
        .unwrap();
    assert!(!result.is_success());
    assert!(
        serde_json::to_string(&result)
            .unwrap()
            .contains("ACTION_NOT_SUPPORTED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lakesync_sync_pulls_a_tokens_slice_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), 0, true, "", "1s"));
    let url = server.url();
    let (bob, sync_bob) = client(&url, "bob", None).await;
    bob.insert(
        "todos",
        "a1",
        obj(json!({"title": "for alice", "owner": "alice"})),
    )
    .await
    .unwrap();
    bob.insert(
        "todos",
        "b1",
        obj(json!({"title": "bob's", "owner": "bob"})),
    )
    .await
    .unwrap();
    sync_bob.sync_once().await.unwrap();

    let file = dir.path().join("agent.db");
    let args = SyncArgs {
        gateway: url.clone(),
        token: Some(token("alice", "client")),
        into: file.clone(),
        tables: vec![],
        follow: false,
        client_id: None,
    };
    let outcome = run_sync_until(args.clone(), Box::pin(async {}), Box::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(outcome.tables, ["todos"]);
    assert_eq!(outcome.report.checkpoint_rows, 1);
    let read = |file: PathBuf| async move {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", file.display()))
            .await
            .unwrap();
        let ids: Vec<String> = sqlx::query_scalar("SELECT _row_id FROM todos ORDER BY _row_id")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        ids
    };
    assert_eq!(read(file.clone()).await, ["a1"]);

    // --follow keeps the file current as rows move in and out of alice's view.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follow = tokio::spawn(run_sync_until(
        SyncArgs {
            follow: true,
            ..args
        },
        Box::pin(async {
            let _ = stopped.await;
        }),
        Box::new(|_| {}),
    ));
    bob.upsert("todos", "b1", obj(json!({"owner": "alice"})))
        .await
        .unwrap();
    bob.upsert("todos", "a1", obj(json!({"owner": "bob"})))
        .await
        .unwrap();
    sync_bob.sync_once().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while read(file.clone()).await != ["b1"] {
        assert!(Instant::now() < deadline, "the followed file catches up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    follow.await.unwrap().unwrap();
}

/// With auth off the client id is the caller: rules keyed on `jwt:sub` still apply to it, and
/// pushes need no token (the docs' example runs this way against `pipelines/gateway.yaml`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_the_client_id_is_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0, true, "", "1s");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(&format!("auth: {{jwt_secrets: [\"{SECRET}\"]}}"), ""),
    )
    .unwrap();
    let server = Server::start(&cfg);
    let engine_for = |store: &LocalStore| {
        SyncEngine::new(store.clone(), SyncOptions::new(server.url())).unwrap()
    };
    let alice = LocalStore::open_in_memory("alice").await.unwrap();
    alice.register(table()).await.unwrap();
    let bob = LocalStore::open_in_memory("bob").await.unwrap();
    bob.register(table()).await.unwrap();
    alice
        .insert(
            "todos",
            "a1",
            obj(json!({"title": "mine", "owner": "alice"})),
        )
        .await
        .unwrap();
    alice
        .insert(
            "todos",
            "b1",
            obj(json!({"title": "bob's", "owner": "bob"})),
        )
        .await
        .unwrap();
    let report = engine_for(&alice).sync_once().await.unwrap();
    assert_eq!(report.pushed, 2);
    engine_for(&bob).sync_once().await.unwrap();
    assert_eq!(
        alice
            .rows("todos")
            .await
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["a1"]
    );
    assert_eq!(
        bob.rows("todos").await.unwrap().keys().collect::<Vec<_>>(),
        ["b1"]
    );
}

// --- A client process killed mid-push ---------------------------------------------------------

/// Aborts the process at the `n`-th "push result received" event: after the gateway accepted a
/// push, before the client recorded the acknowledgement.
struct AbortAtPushResult {
    n: usize,
    seen: std::sync::atomic::AtomicUsize,
}

struct MessageOf(String);

impl tracing::field::Visit for MessageOf {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AbortAtPushResult {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = MessageOf(String::new());
        event.record(&mut message);
        if message.0 == "push result received"
            && self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == self.n
        {
            std::process::abort();
        }
    }
}

/// Run by the crash tests as a child process (`LAKESYNC_CRASH_DB` set): opens the replica and
/// syncs until its outbox is empty, aborting at the `LAKESYNC_CRASH_ABORT_AT`-th push result.
#[tokio::test]
#[ignore = "a child process of the crash tests"]
async fn crash_child() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let Ok(db) = std::env::var("LAKESYNC_CRASH_DB") else {
        return;
    };
    let url = std::env::var("LAKESYNC_CRASH_GATEWAY").unwrap();
    if let Ok(n) = std::env::var("LAKESYNC_CRASH_ABORT_AT") {
        tracing_subscriber::registry()
            .with(AbortAtPushResult {
                n: n.parse().unwrap(),
                seen: Default::default(),
            })
            .init();
    }
    let store = LocalStore::open_file(&db, None).await.unwrap();
    let sub = store.client_id().to_string();
    let mut options = SyncOptions::new(url).with_token(token(&sub, "client"));
    options.push_batch = std::env::var("LAKESYNC_CRASH_PUSH_BATCH")
        .unwrap()
        .parse()
        .unwrap();
    let engine = SyncEngine::new(store.clone(), options).unwrap();
    while store.queue_depth().await.unwrap() > 0 {
        engine.sync_once().await.unwrap();
    }
}

fn crash_child_process(db: &Path, url: &str, push_batch: usize, abort_at: Option<usize>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["client::crash_child", "--exact", "--ignored", "--nocapture"])
        .env("LAKESYNC_CRASH_DB", db)
        .env("LAKESYNC_CRASH_GATEWAY", url)
        .env("LAKESYNC_CRASH_PUSH_BATCH", push_batch.to_string())
        .env_remove("LAKESYNC_CRASH_ABORT_AT")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(n) = abort_at {
        cmd.env("LAKESYNC_CRASH_ABORT_AT", n.to_string());
    }
    cmd.spawn().expect("start the crash child")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_push_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), 0, false, "", "1s"));
    let url = server.url();
    let db = dir.path().join("alice.db");
    let all = {
        let (store, _) = client(&url, "alice", Some(&db)).await;
        thousand_changes(&store, "alice").await
    };

    // The child dies right after the gateway accepted its first push of 100, before recording
    // the acknowledgement.
    let status = crash_child_process(&db, &url, 100, Some(1)).wait().unwrap();
    assert!(!status.success(), "the child aborted");
    assert_eq!(
        stats(&url).await["logSize"],
        100,
        "the gateway took the first push"
    );
    let (store, engine) = client(&url, "alice", Some(&db)).await;
    assert_eq!(
        store.queue_depth().await.unwrap(),
        1000,
        "but the client never recorded it"
    );

    // Restarted, it pushes everything; the first 100 again, which the gateway recognises.
    let report = engine.sync_once().await.unwrap();
    assert_eq!(
        (report.pushed, report.duplicates),
        (1000, 100),
        "{report:?}"
    );
    assert_eq!(
        stats(&url).await["logSize"],
        1000,
        "every change exactly once"
    );
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    assert_eq!(rows(&store).await, fold(&all, None), "nothing lost");
    let (fresh, fresh_engine) = client(&url, "carol", None).await;
    fresh_engine.sync_once().await.unwrap();
    assert_eq!(rows(&fresh).await, rows(&store).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_with_sigkill_while_pushing_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), 0, false, "", "1s"));
    let url = server.url();
    let db = dir.path().join("bob.db");
    let mut all = Vec::new();
    {
        let (store, _) = client(&url, "bob", Some(&db)).await;
        all.extend(thousand_changes(&store, "bob").await);
        for i in 0..1000 {
            let values = obj(json!({"title": format!("more {i}"), "owner": "bob"}));
            all.push(
                store
                    .insert("todos", &format!("m{i}"), values)
                    .await
                    .unwrap(),
            );
        }
    }
    // Kill the child (SIGKILL) as soon as the gateway has taken something new, five times.
    let mut kills = 0;
    for _ in 0..5 {
        let before = stats(&url).await["logSize"].as_u64().unwrap();
        if before == 2000 {
            break;
        }
        let mut child = crash_child_process(&db, &url, 20, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if stats(&url).await["logSize"].as_u64().unwrap() > before {
                child.kill().unwrap();
                kills += 1;
                break;
            }
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        child.wait().unwrap();
    }
    assert!(kills > 0, "the child was killed mid-sync");
    let (store, engine) = client(&url, "bob", Some(&db)).await;
    let report = engine.sync_once().await.unwrap();
    eprintln!("after {kills} kills: {report:?}");
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    assert_eq!(
        stats(&url).await["logSize"],
        2000,
        "every change exactly once"
    );
    assert_eq!(rows(&store).await, fold(&all, None), "nothing lost");
}

// --- Benchmarks ----------------------------------------------------------------------------

/// Client figures (run with `cargo nextest run --test it client::bench_client --run-ignored
/// only --no-capture`; `LAKESYNC_BENCH_ROWS` rows, default 1,000,000). Prints, asserts nothing
/// about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: prints figures"]
async fn bench_client() {
    let n: usize = std::env::var("LAKESYNC_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(
        dir.path(),
        0,
        false,
        "backpressure_bytes: 16GiB, retention: 7d",
        "1h",
    ));
    let url = server.url();

    // Load the gateway through the Flight API, 10,000 rows a push.
    let loaded = Instant::now();
    let conn = Connection::new(&url, Some(&token("writer", "client")), "writer").unwrap();
    let t = table();
    let hlc0 = lakesync::kernel::hlc::Hlc::default();
    for start in (0..n).step_by(10_000) {
        let deltas: Vec<RowDelta> = (start..(start + 10_000).min(n))
            .map(|i| {
                RowDelta::new(
                    DeltaOp::Insert,
                    "todos",
                    format!("r{i:07}"),
                    "writer",
                    vec![
                        lakesync::kernel::delta::ColumnDelta::new(
                            "title",
                            json!(format!("task {i}")),
                        ),
                        lakesync::kernel::delta::ColumnDelta::new("owner", json!("writer")),
                        lakesync::kernel::delta::ColumnDelta::new("done", json!(i % 3 == 0)),
                        lakesync::kernel::delta::ColumnDelta::new("n", json!(i)),
                    ],
                    hlc0.now(),
                )
            })
            .collect();
        push_raw(&conn, &t, &deltas).await;
    }
    eprintln!(
        "bench: loaded {n} rows into the gateway in {:.1}s",
        loaded.elapsed().as_secs_f64()
    );

    // Initial sync into a file, with a reader polling for the first usable query.
    let file = dir.path().join("reader.db");
    let (reader, reader_engine) = client(&url, "reader", Some(&file)).await;
    let started = Instant::now();
    let poller = {
        let reader = reader.clone();
        tokio::spawn(async move {
            loop {
                let r = reader
                    .query("SELECT count(*) AS n FROM todos", &[])
                    .await
                    .unwrap();
                if r[0]["n"].as_i64().unwrap_or(0) > 0 {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let report = reader_engine.sync_once().await.unwrap();
    let initial = started.elapsed();
    let first_query = poller.await.unwrap();
    assert_eq!(report.checkpoint_rows as usize, n);
    println!(
        "bench client initial_sync rows={n} seconds={:.2} rows_per_s={:.0} first_usable_query_s={:.3}",
        initial.as_secs_f64(),
        n as f64 / initial.as_secs_f64(),
        first_query.as_secs_f64()
    );

    // Incremental apply: 100,000 updates by another writer, pulled page by page.
    let m = (n / 10).max(1);
    for start in (0..m).step_by(10_000) {
        let deltas: Vec<RowDelta> = (start..(start + 10_000).min(m))
            .map(|i| {
                RowDelta::new(
                    DeltaOp::Update,
                    "todos",
                    format!("r{i:07}"),
                    "writer",
                    vec![lakesync::kernel::delta::ColumnDelta::new(
                        "done",
                        json!(true),
                    )],
                    hlc0.now(),
                )
            })
            .collect();
        push_raw(&conn, &t, &deltas).await;
    }
    let pulled = Instant::now();
    let report = reader_engine.pull().await.unwrap();
    let elapsed = pulled.elapsed();
    println!(
        "bench client incremental_apply changes={} seconds={:.2} changes_per_s={:.0}",
        report.pulled,
        elapsed.as_secs_f64(),
        report.pulled as f64 / elapsed.as_secs_f64()
    );

    // Local writes and the push of the outbox.
    let k = m.min(20_000);
    let written = Instant::now();
    for i in 0..k {
        reader
            .update("todos", &format!("r{i:07}"), obj(json!({"n": -(i as i64)})))
            .await
            .unwrap();
    }
    let write_s = written.elapsed().as_secs_f64();
    println!(
        "bench client local_writes={k} (one transaction each) seconds={write_s:.2} writes_per_s={:.0}",
        k as f64 / write_s
    );
    let batched = Instant::now();
    for start in (0..k).step_by(1_000) {
        let writes = (start..(start + 1_000).min(k))
            .map(|i| lakesync::client::Write::Update {
                table: "todos".into(),
                row_id: format!("r{i:07}"),
                changes: obj(json!({"n": i as i64 + 1})),
            })
            .collect();
        reader.write_all(writes).await.unwrap();
    }
    let batched_s = batched.elapsed().as_secs_f64();
    println!(
        "bench client local_writes_batched={k} (1,000 per transaction) seconds={batched_s:.2} writes_per_s={:.0}",
        k as f64 / batched_s
    );
    let pushed = Instant::now();
    let report = reader_engine.push().await.unwrap();
    let push_s = pushed.elapsed().as_secs_f64();
    println!(
        "bench client push_outbox changes={} seconds={push_s:.2} changes_per_s={:.0} (includes pulling the verdict back)",
        report.pushed,
        report.pushed as f64 / push_s
    );
}

async fn push_raw(conn: &Connection, table: &TableSchema, deltas: &[RowDelta]) {
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::{FlightClient, FlightDescriptor, PutResult};
    use futures::TryStreamExt;
    let channel = tonic::transport::Endpoint::from_shared(conn.url().to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightClient::new(channel);
    client
        .add_header(
            "authorization",
            &format!("Bearer {}", token("writer", "client")),
        )
        .unwrap();
    let batch = deltas_to_batch(table, deltas).unwrap();
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(
            json!({"table": "todos"}).to_string(),
        )))
        .build(futures::stream::iter([Ok(batch)]));
    let results: Vec<PutResult> = client
        .do_put(stream)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let accepted: u64 = results
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.app_metadata).unwrap()["accepted"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(accepted as usize, deltas.len());
}
