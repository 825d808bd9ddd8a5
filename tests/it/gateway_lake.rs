//! The gateway as the hot tier of a lake: clients push to a gateway (`lakesync serve`, a real
//! process), the gateway flushes to an Iceberg sink (local SQL catalogue) and trims flushed
//! records past retention. The lake must hold every flushed delta exactly once, and the
//! gateway's retained records and the lake together must hold every pushed delta — no loss, no
//! duplicate.
//!
//! Known gap (an ignored test below reproduces it): once a record is trimmed the gateway forgets
//! its deltaIds, so a client that retries a push the gateway already flushed *and* trimmed has
//! it accepted and flushed again — the lake then holds those deltas twice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow_flight::{Action, FlightClient};
use futures::TryStreamExt;
use lakesync::adapters::iceberg::IcebergCatalogConfig;
use lakesync::kernel::delta::{DeltaId, DeltaOp, RowDelta};
use lakesync::query::query;
use serde_json::{Value, json};

use crate::gateway::{SECRET, delta, hlc, pull, push, table, token};
use crate::iceberg::lake_deltas;
use crate::support::gateway_process::GatewayProcess as Server;

/// A gateway whose pipeline flushes to an Iceberg lake in `dir/lake`, on demand only (the
/// flush age is an hour), keeping at most `retention_bytes` of flushed records.
fn config(dir: &Path, retention_bytes: &str) -> PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"version: 1
name: gw-lake
state_dir: state
flush: {{max_rows: 100000, max_bytes: 64MiB, max_age: 1h}}
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
    limits: {{retention_bytes: {retention_bytes}}}
sinks:
  lake:
    type: iceberg
    input: clients
    catalog: {{type: sql, uri: lake/catalog.sqlite, warehouse: lake/warehouse}}
"#
        ),
    )
    .expect("write the pipeline");
    path
}

/// The hot (gateway log) ∪ cold (lake) reads of the pipeline hold `expected` deltas once, and
/// as many live rows (every delta inserts its own row).
async fn union_reads_gateway_and_lake(dir: &Path, expected: usize) {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use lakesync::query::{HotSide, LakeView, hot_tier, pipeline_lake, query_view};
    let plan =
        lakesync::config::load_plan(&dir.join("gateway.yaml"), &lakesync::config::Env::process())
            .expect("plan");
    let lake = pipeline_lake(&plan).expect("the pipeline's lake");
    let side = lake.hot.clone().expect("a gateway hot side");
    assert!(matches!(side, HotSide::Gateway(_)), "{side:?}");
    let hot = hot_tier(&plan, &side).await.expect("the gateway's records");
    let count = |sql: &'static str, view: LakeView| {
        let (lake, hot) = (&lake, &hot);
        async move {
            let batches = query_view(&lake.catalog, &lake.namespace, view, hot, sql)
                .await
                .expect("union query");
            batches[0].column(0).as_primitive::<Int64Type>().value(0)
        }
    };
    let all = LakeView::Changes {
        from: 0,
        to: i64::MAX as u64,
    };
    assert_eq!(
        count("SELECT count(*) FROM todos", all).await,
        expected as i64
    );
    assert_eq!(
        count("SELECT count(DISTINCT _delta_id) FROM todos", all).await,
        expected as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM todos", LakeView::Latest).await,
        expected as i64
    );
}

/// The lake's rows of `todos`, as delta rows.
async fn lake_rows(dir: &Path) -> Vec<RowDelta> {
    let config =
        IcebergCatalogConfig::sql(dir.join("lake/catalog.sqlite"), dir.join("lake/warehouse"));
    let batches = query(&config, "SELECT * FROM lakesync.todos")
        .await
        .expect("query the lake");
    lake_deltas(&table(), &batches)
}

async fn admin(server: &Server, action: &str) -> Value {
    let mut admin = server.client(&token("ops", "admin")).await;
    let out: Vec<bytes::Bytes> = admin
        .do_action(Action::new(action, ""))
        .await
        .expect("admin action")
        .try_collect()
        .await
        .expect("admin answer");
    serde_json::from_slice(&out[0]).expect("json answer")
}

fn rows(deltas: &[RowDelta]) -> BTreeSet<&str> {
    deltas.iter().map(|d| d.row_id.as_str()).collect()
}

fn ids<'a>(deltas: impl IntoIterator<Item = &'a RowDelta>) -> BTreeSet<DeltaId> {
    deltas.into_iter().map(|d| d.delta_id).collect()
}

/// `n` inserts of alice's rows, `from` on.
fn inserts(from: usize, n: usize) -> Vec<RowDelta> {
    (from..from + n)
        .map(|i| {
            delta(
                DeltaOp::Insert,
                &format!("t{i}"),
                "alice",
                hlc(0, (i % 1000) as u16),
                &[
                    ("title", json!(format!("task {i}"))),
                    ("owner", json!("alice")),
                ],
            )
        })
        .collect()
}

async fn push_all(client: &mut FlightClient, deltas: &[RowDelta]) {
    for chunk in deltas.chunks(10) {
        let answer = push(client, chunk).await.expect("push");
        assert_eq!(answer["accepted"], chunk.len(), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_hot_tier_flushes_to_iceberg_exactly_once_and_trims_without_loss() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A few KiB of retention: most flushed records are trimmed, the newest few are kept.
    let server = Server::start(&config(dir.path(), "4KiB"));
    let mut alice = server.client(&token("alice", "client")).await;

    // N deltas in pushes of 10, then a flush: everything reaches the lake, old records go.
    let first = inserts(0, 200);
    push_all(&mut alice, &first).await;
    assert_eq!(admin(&server, "flush").await, json!({"flushed": true}));
    let stats = admin(&server, "stats").await;
    let (head, flushed, trimmed) = (
        stats["head"].as_u64().expect("head"),
        stats["flushed"].as_u64().expect("flushed"),
        stats["trimmed"].as_u64().expect("trimmed"),
    );
    assert_eq!(flushed, head, "{stats}");
    assert!(
        trimmed > 0 && trimmed < head,
        "some, not all, trimmed: {stats}"
    );

    let lake = lake_rows(dir.path()).await;
    assert_eq!(lake.len(), first.len(), "every delta in the lake");
    assert!(ids(&lake) == ids(&first), "each exactly once");

    // More deltas, not flushed yet: only the gateway holds them.
    let second = inserts(200, 50);
    push_all(&mut alice, &second).await;
    // Pulls serve row snapshots (not the pushed deltas), and every delta here inserts its own
    // row: the rows the gateway still serves stand for its retained records.
    let (retained, _) = pull(&mut alice, trimmed, 10_000).await;
    let lake = lake_rows(dir.path()).await;
    let all: Vec<RowDelta> = first.iter().chain(&second).cloned().collect();
    let held: BTreeSet<&str> = lake
        .iter()
        .chain(&retained)
        .map(|d| d.row_id.as_str())
        .collect();
    let missing: Vec<&str> = rows(&all)
        .into_iter()
        .filter(|r| !held.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "the gateway and the lake together hold everything; missing {missing:?}"
    );
    assert!(rows(&second).is_subset(&rows(&retained)));
    assert!(ids(&lake).is_disjoint(&ids(&second)), "not flushed yet");
    // `lakesync query --pipeline … --changes-from 0` / `--state`: the gateway's retained records
    // join the lake, each delta once — all 250, though 50 are not in the lake yet.
    union_reads_gateway_and_lake(dir.path(), all.len()).await;

    // Flush again: the lake holds every delta once.
    assert_eq!(admin(&server, "flush").await, json!({"flushed": true}));
    let lake = lake_rows(dir.path()).await;
    let everything = ids(&all);
    assert_eq!(
        (lake.len(), ids(&lake).len()),
        (everything.len(), everything.len()),
        "every delta once in the lake"
    );
    assert!(
        ids(&lake) == everything,
        "the lake holds exactly the pushed deltas"
    );
}

/// The known gap: a retried push of deltas already flushed and trimmed is accepted again and
/// reaches the lake a second time. Ignored until the gateway remembers trimmed deltaIds (or the
/// lake sink deduplicates by deltaId).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: trimmed deltaIds are forgotten, so a late retry is flushed twice"]
async fn a_retry_of_a_trimmed_push_is_not_flushed_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&config(dir.path(), "1KiB"));
    let mut alice = server.client(&token("alice", "client")).await;
    let deltas = inserts(0, 50);
    push_all(&mut alice, &deltas).await;
    assert_eq!(admin(&server, "flush").await, json!({"flushed": true}));
    let stats = admin(&server, "stats").await;
    assert!(stats["trimmed"].as_u64() > Some(0), "{stats}");
    // The client did not see the acknowledgement and retries its first push.
    push(&mut alice, &deltas[..10]).await.expect("retried push");
    assert_eq!(admin(&server, "flush").await, json!({"flushed": true}));
    let lake = lake_rows(dir.path()).await;
    assert_eq!(
        (lake.len(), ids(&lake).len()),
        (50, 50),
        "no delta twice in the lake"
    );
}
