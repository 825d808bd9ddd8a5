//! The Postgres adapter against the real Postgres that `scripts/services.sh` starts (logical
//! WAL): CDC (snapshot, changes once and in order, resume, slot advance and heartbeat), the
//! parallel COPY snapshot, cursor and diff polling, the sink's log and materialised tables, and
//! hostile names. Every table, slot and schema name is unique per run.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use lakesync::adapters::postgres::{
    PostgresSink, PostgresSinkOptions, PostgresSource, PostgresSourceOptions, PostgresStrategy,
    PostgresTableSpec,
};
use lakesync::kernel::delta::{DeltaOp, RowDelta};
use lakesync::kernel::delta_batch::batch_to_deltas;
use lakesync::kernel::hlc::HlcTimestamp;
use lakesync::runtime::api::{Position, ReadMode, Sink, Source, SourceBatch};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::{self, unique_name};

async fn pool() -> Option<PgPool> {
    let url = support::service_env("postgres", "LAKESYNC_PG_URL")?;
    Some(PgPool::connect(&url).await.expect("connect to Postgres"))
}

fn url() -> String {
    std::env::var("LAKESYNC_PG_URL").expect("LAKESYNC_PG_URL")
}

fn options(name: &str) -> PostgresSourceOptions {
    PostgresSourceOptions {
        pg_schema: "public".into(),
        poll_interval: Duration::from_millis(100),
        slot: name.to_string(),
        publication: name.to_string(),
        heartbeat_interval: Duration::from_millis(100),
        parallelism: 2,
        batch_size: 3,
        state_dir: None,
        chunk_blocks: 2,
    }
}

fn source(name: &str, table: &str, strategy: PostgresStrategy) -> PostgresSource {
    PostgresSource::new(
        name,
        &url(),
        vec![PostgresTableSpec {
            table: table.to_string(),
            strategy,
            id_column: "id".into(),
            schema: None,
        }],
        options(name),
    )
    .expect("source")
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn read_all(
    source: &mut PostgresSource,
    resume: Option<Position>,
    mode: ReadMode,
) -> Vec<SourceBatch> {
    let stream = source.open(resume, mode).await.expect("open");
    stream.map(|b| b.expect("batch")).collect::<Vec<_>>().await
}

fn deltas(batches: &[SourceBatch]) -> Vec<RowDelta> {
    batches
        .iter()
        .flat_map(|b| batch_to_deltas(&b.batch).expect("deltas"))
        .collect()
}

async fn drop_slot(pool: &PgPool, slot: &str) {
    let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(slot)
        .execute(pool)
        .await;
    let _ = sqlx::raw_sql(&format!("DROP PUBLICATION IF EXISTS {slot}"))
        .execute(pool)
        .await;
}

async fn confirmed_lsn(pool: &PgPool, slot: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_one(pool)
    .await
    .expect("slot position")
}

#[tokio::test]
async fn cdc_delivers_a_snapshot_then_every_change_once_in_order_and_resumes() {
    let Some(pool) = pool().await else { return };
    let table = unique_name("cdc");
    let slot = unique_name("slot");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, title text, n int, amount numeric(12,2), \
             at timestamptz, doc jsonb, big text);
             ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;
             INSERT INTO {table} VALUES (1, 'one', 1, 10.50, '2026-01-01 00:00:00+00', '{{\"a\": 1}}', repeat('x', 5000)),
                                        (2, 'two', 2, 20.25, NULL, NULL, NULL),
                                        (3, 'three', 3, 0, NULL, '[1, 2]', NULL);"
        ),
    )
    .await;

    // First start: the snapshot, then (nothing yet) the stream.
    let mut src = source(&slot, &table, PostgresStrategy::Cdc);
    let first = read_all(&mut src, None, ReadMode::Once).await;
    let snap = deltas(&first);
    assert_eq!(snap.len(), 3, "{snap:?}");
    assert!(snap.iter().all(|d| d.op == DeltaOp::Insert));
    let one = snap.iter().find(|d| d.row_id == "1").expect("row 1");
    assert_eq!(one.value("amount"), Some(&json!(10.5)));
    assert_eq!(one.value("at"), Some(&json!("2026-01-01T00:00:00Z")));
    assert_eq!(one.value("doc"), Some(&json!({"a": 1})));
    for d in &snap {
        d.verify_delta_id().expect("delta id");
    }
    let after_snapshot = first.last().expect("a batch").position.clone();
    // A change made after the snapshot but before the stream was read arrives once.
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} (id, title, n) VALUES (4, 'four', 4);
             UPDATE {table} SET title = 'ONE' WHERE id = 1;
             UPDATE {table} SET n = 22 WHERE id = 2;
             DELETE FROM {table} WHERE id = 3;
             BEGIN; UPDATE {table} SET n = 44 WHERE id = 4; UPDATE {table} SET n = 45 WHERE id = 4; COMMIT;"
        ),
    )
    .await;
    let second = read_all(&mut src, Some(after_snapshot.clone()), ReadMode::Once).await;
    let changes = deltas(&second);
    let summary: Vec<(String, DeltaOp, Option<Value>)> = changes
        .iter()
        .map(|d| {
            (
                d.row_id.clone(),
                d.op,
                d.value("n").or(d.value("title")).cloned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("4".into(), DeltaOp::Insert, Some(json!(4))),
            ("1".into(), DeltaOp::Update, Some(json!(1))),
            ("2".into(), DeltaOp::Update, Some(json!(22))),
            ("3".into(), DeltaOp::Delete, None),
            ("4".into(), DeltaOp::Update, Some(json!(44))),
            ("4".into(), DeltaOp::Update, Some(json!(45))),
        ]
    );
    // The update of row 1 did not touch its TOASTed `big`, so it does not claim to set it.
    let update_one = &changes[1];
    assert_eq!(update_one.value("title"), Some(&json!("ONE")));
    assert!(update_one.value("big").is_none(), "{update_one:?}");
    // HLCs grow in delivery order.
    assert!(changes.windows(2).all(|w| w[0].hlc < w[1].hlc));
    assert!(second.len() >= 2, "batches of 3 deltas");

    // Restart mid-stream (after the first batch, inside the last transaction's batches): exactly
    // the rest arrives.
    let mid = second[0].position.clone();
    let rest = deltas(&read_all(&mut src, Some(mid), ReadMode::Once).await);
    let tail: Vec<(String, DeltaOp)> = changes[second[0].batch.num_rows()..]
        .iter()
        .map(|d| (d.row_id.clone(), d.op))
        .collect();
    assert_eq!(
        rest.iter()
            .map(|d| (d.row_id.clone(), d.op))
            .collect::<Vec<_>>(),
        tail
    );
    // A replay bounded by a position ends exactly there.
    let until = second[1].position.clone();
    let replay = read_all(
        &mut src,
        Some(after_snapshot),
        ReadMode::Replay {
            until: until.clone(),
        },
    )
    .await;
    assert_eq!(replay.last().expect("replayed").position, until);

    // Committing the end advances the slot; then, idle, the heartbeat keeps it moving past WAL
    // written for other tables.
    let before = confirmed_lsn(&pool, &slot).await;
    let end = second.last().expect("batch").position.clone();
    src.committed(&end).await.expect("advance");
    let advanced = confirmed_lsn(&pool, &slot).await;
    assert!(advanced > before, "{advanced} > {before}");
    let other = unique_name("noise");
    exec(
        &pool,
        &format!("CREATE TABLE {other} AS SELECT g FROM generate_series(1, 1000) g"),
    )
    .await;
    let wal: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8")
        .fetch_one(&pool)
        .await
        .expect("wal");
    let mut follow = src
        .open(
            Some(end),
            ReadMode::Follow {
                poll_interval: Duration::from_millis(100),
            },
        )
        .await
        .expect("follow");
    let idle = tokio::time::timeout(Duration::from_millis(1500), follow.next()).await;
    assert!(idle.is_err(), "nothing new should arrive: {:?}", idle.ok());
    let moved = confirmed_lsn(&pool, &slot).await;
    assert!(
        moved >= wal,
        "heartbeat moved the idle slot to {moved}, WAL was at {wal}"
    );
    drop(follow);
    drop_slot(&pool, &slot).await;
}

#[tokio::test]
async fn snapshot_copies_every_row_once_in_parallel_chunks_and_resumes() {
    let Some(pool) = pool().await else { return };
    let table = unique_name("bulk");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, score float8, ok bool, at timestamp, doc json);
             INSERT INTO {table} SELECT g, 'name ' || g, g / 4.0, g % 2 = 0, '2026-01-01'::timestamp + g * interval '1 second',
                                        json_build_object('g', g) FROM generate_series(1, 3000) g;"
        ),
    )
    .await;
    let name = unique_name("snap");
    let mut src = source(&name, &table, PostgresStrategy::Snapshot);
    let mut opts = options(&name);
    opts.batch_size = 100;
    let all = read_all(&mut src, None, ReadMode::Once).await;
    let rows = deltas(&all);
    let ids: HashSet<&str> = rows.iter().map(|d| d.row_id.as_str()).collect();
    assert_eq!((rows.len(), ids.len()), (3000, 3000));
    let chunks = all.last().expect("batches").position.0["snapshot"][&table]["chunks"]
        .as_u64()
        .expect("chunks");
    assert!(chunks > 2, "the table is cut into {chunks} chunks");
    let r7 = rows.iter().find(|d| d.row_id == "7").expect("row 7");
    assert_eq!(r7.value("score"), Some(&json!(1.75)));
    assert_eq!(r7.value("ok"), Some(&json!(false)));
    assert_eq!(r7.value("at"), Some(&json!("2026-01-01T00:00:07Z")));
    assert_eq!(r7.value("doc"), Some(&json!({"g": 7})));
    for d in rows.iter().take(50) {
        d.verify_delta_id().expect("delta id");
    }

    // Resume from a position part-way: exactly the rows not yet delivered.
    let cut = all.len() / 2;
    let delivered: HashSet<String> = deltas(&all[..cut]).into_iter().map(|d| d.row_id).collect();
    let mut again = source(&name, &table, PostgresStrategy::Snapshot);
    let rest = deltas(
        &read_all(
            &mut again,
            Some(all[cut - 1].position.clone()),
            ReadMode::Once,
        )
        .await,
    );
    let rest_ids: HashSet<String> = rest.iter().map(|d| d.row_id.clone()).collect();
    assert_eq!(rest.len(), rest_ids.len());
    assert!(rest_ids.is_disjoint(&delivered));
    assert_eq!(rest_ids.len() + delivered.len(), 3000);

    // A replay from the start to a mid position ends exactly there, with the same rows.
    let until = all[cut - 1].position.clone();
    let replay = read_all(
        &mut again,
        None,
        ReadMode::Replay {
            until: until.clone(),
        },
    )
    .await;
    assert_eq!(replay.last().expect("replayed").position, until);
    let _ = opts;
}

#[tokio::test]
async fn cursor_polling_catches_late_commits_and_diff_sees_deletes() {
    let Some(pool) = pool().await else { return };
    let table = unique_name("poll");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL);
             INSERT INTO {table} VALUES (1, 'a', now() - interval '2 seconds'), (2, 'b', now() - interval '1 second');"
        ),
    )
    .await;
    let name = unique_name("cur");
    let mut src = source(
        &name,
        &table,
        PostgresStrategy::Cursor {
            cursor_column: "updated_at".into(),
            lookback: None,
        },
    );
    let first = read_all(&mut src, None, ReadMode::Once).await;
    assert_eq!(deltas(&first).len(), 2);
    let p1 = first.last().expect("batch").position.clone();
    // A row committed late with a cursor value behind the newest one, and a new row.
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} VALUES (3, 'late', now() - interval '1500 milliseconds'), (4, 'new', now());"
        ),
    )
    .await;
    let second = deltas(&read_all(&mut src, Some(p1), ReadMode::Once).await);
    let mut ids: Vec<&str> = second.iter().map(|d| d.row_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["3", "4"], "{second:?}");

    // Diff: inserts, a changed column only, and a delete.
    let dir = tempfile::tempdir().expect("dir");
    let dname = unique_name("diff");
    let mut opts = options(&dname);
    opts.state_dir = Some(dir.path().to_path_buf());
    let mut diff = PostgresSource::new(
        &dname,
        &url(),
        vec![PostgresTableSpec {
            table: table.clone(),
            strategy: PostgresStrategy::Diff,
            id_column: "id".into(),
            schema: None,
        }],
        opts,
    )
    .expect("diff source");
    let d1 = read_all(&mut diff, None, ReadMode::Once).await;
    assert_eq!(deltas(&d1).len(), 4);
    exec(
        &pool,
        &format!("UPDATE {table} SET v = 'A' WHERE id = 1; DELETE FROM {table} WHERE id = 2;"),
    )
    .await;
    let d2 = deltas(
        &read_all(
            &mut diff,
            Some(d1.last().expect("b").position.clone()),
            ReadMode::Once,
        )
        .await,
    );
    let summary: BTreeMap<String, (DeltaOp, Vec<String>)> = d2
        .iter()
        .map(|d| {
            (
                d.row_id.clone(),
                (d.op, d.columns.iter().map(|c| c.column.clone()).collect()),
            )
        })
        .collect();
    assert_eq!(summary["1"], (DeltaOp::Update, vec!["v".to_string()]));
    assert_eq!(summary["2"].0, DeltaOp::Delete);
    assert_eq!(summary.len(), 2);
}

/// Runs a pipeline file once through the library.
async fn run_once(file: &Path) -> lakesync::runtime::pipeline::RunSummary {
    let env = lakesync::config::Env::process();
    let plan = lakesync::config::load_plan(file, &env).expect("plan");
    let graph = lakesync::build::build(&plan).await.expect("build");
    let options = lakesync::runtime::pipeline::RunOptions {
        mode: ReadMode::Once,
        progress: false,
    };
    lakesync::runtime::pipeline::run(graph, options, std::future::pending())
        .await
        .expect("run")
}

#[tokio::test]
async fn a_pipeline_materialises_postgres_cdc_into_postgres_equal_to_the_source() {
    let Some(pool) = pool().await else { return };
    let table = unique_name("orders");
    let schema = unique_name("mat");
    let slot = unique_name("slot");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {table} (id text PRIMARY KEY, customer text, total numeric(10,2), paid bool);
             INSERT INTO {table} SELECT 'o' || g, 'c' || (g % 7), g * 1.25, g % 3 = 0 FROM generate_series(1, 500) g;"
        ),
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1
name: pg_to_pg
state_dir: state
sources:
  db:
    type: postgres
    url: ${{LAKESYNC_PG_URL}}
    slot: {slot}
    publication: {slot}
    tables:
      - {{table: {table}, strategy: cdc, id_column: id}}
sinks:
  out:
    type: postgres
    input: db
    url: ${{LAKESYNC_PG_URL}}
    schema: {schema}
"
        ),
    )
    .expect("write pipeline");
    let materialised = |pool: PgPool| {
        let (schema, table) = (schema.clone(), table.clone());
        async move {
            sqlx::query_as::<_, (String, Option<String>, Option<f64>, Option<bool>)>(&format!(
                "SELECT row_id, customer, total, paid FROM {schema}.{table} WHERE deleted_at IS NULL ORDER BY row_id"
            ))
            .fetch_all(&pool)
            .await
            .expect("materialised rows")
        }
    };
    let source_rows = |pool: PgPool| {
        let table = table.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>, Option<f64>, Option<bool>)>(&format!(
                "SELECT id, customer, total::float8, paid FROM {table} ORDER BY id"
            ))
            .fetch_all(&pool)
            .await
            .expect("source rows")
        }
    };
    run_once(&file).await;
    assert_eq!(
        materialised(pool.clone()).await,
        source_rows(pool.clone()).await
    );

    exec(
        &pool,
        &format!(
            "UPDATE {table} SET paid = true, total = total + 1 WHERE id IN ('o1', 'o2');
             DELETE FROM {table} WHERE id IN ('o3', 'o4');
             INSERT INTO {table} VALUES ('o999', 'it''s; DROP TABLE {table}; --', 1, false);"
        ),
    )
    .await;
    let summary = run_once(&file).await;
    let _ = summary;
    assert_eq!(
        materialised(pool.clone()).await,
        source_rows(pool.clone()).await
    );
    // Deleted rows are soft-deleted, the log holds each delta once.
    let soft: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.{table} WHERE deleted_at IS NOT NULL"
    ))
    .fetch_one(&pool)
    .await
    .expect("soft deleted");
    assert_eq!(soft, 2);
    let (logged, distinct): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT delta_id) FROM {schema}.lakesync_deltas"
    ))
    .fetch_one(&pool)
    .await
    .expect("log");
    assert_eq!((logged, distinct), (500 + 2 + 2 + 1, 500 + 2 + 2 + 1));
    drop_slot(&pool, &slot).await;
}

#[tokio::test]
async fn the_sink_logs_idempotently_and_reads_back_history() {
    let Some(pool) = pool().await else { return };
    let schema_name = unique_name("sink");
    let mut sink = PostgresSink::open(
        &url(),
        &schema_name,
        "p",
        "out",
        PostgresSinkOptions { materialise: true },
    )
    .await
    .expect("sink");
    let table = std::sync::Arc::new(lakesync::kernel::schema::TableSchema::new(
        "notes",
        vec![
            lakesync::kernel::schema::ColumnDef::new(
                "body",
                lakesync::kernel::schema::ColumnType::String,
            ),
            lakesync::kernel::schema::ColumnDef::new(
                "meta",
                lakesync::kernel::schema::ColumnType::Json,
            ),
        ],
    ));
    sink.prepare(std::slice::from_ref(&table))
        .await
        .expect("prepare");
    let hostile = "'); DROP TABLE notes; --";
    let d1 = RowDelta::new(
        DeltaOp::Insert,
        "notes",
        "n1",
        "c",
        vec![
            lakesync::kernel::delta::ColumnDelta::new("body", json!(hostile)),
            lakesync::kernel::delta::ColumnDelta::new("meta", json!({"\"key": "v"})),
        ],
        HlcTimestamp::new(1000, 0).expect("hlc"),
    );
    let d2 = RowDelta::new(
        DeltaOp::Update,
        "notes",
        "n1",
        "c",
        vec![lakesync::kernel::delta::ColumnDelta::new(
            "body",
            json!("second"),
        )],
        HlcTimestamp::new(2000, 0).expect("hlc"),
    );
    let batch = lakesync::kernel::delta_batch::deltas_to_batch(&table, &[d1.clone(), d2.clone()])
        .expect("batch");
    sink.write(&table, batch.clone()).await.expect("write");
    sink.commit(1).await.expect("commit");
    // The same deltas in a later epoch are not logged twice.
    sink.write(&table, batch).await.expect("write");
    let stats = sink.commit(2).await.expect("commit");
    assert_eq!(stats.rows, 0);
    assert_eq!(sink.committed_epoch().await.expect("mark"), Some(2));
    let since = sink
        .deltas_since(HlcTimestamp::new(1000, 0).expect("hlc"), Some(&["notes"]))
        .await
        .expect("since");
    assert_eq!(since, vec![d2]);
    let state = sink
        .latest_state(&table, "n1")
        .await
        .expect("state")
        .expect("row");
    assert_eq!(state["body"], json!("second"));
    assert_eq!(state["meta"], json!({"\"key": "v"}));
    let _ = hostile;
    let (body,): (String,) = sqlx::query_as(&format!(
        "SELECT body FROM {schema_name}.notes WHERE row_id = 'n1'"
    ))
    .fetch_one(&pool)
    .await
    .expect("materialised");
    assert_eq!(body, "second");
    // A hostile table name never reaches SQL.
    let bad = std::sync::Arc::new(lakesync::kernel::schema::TableSchema::new(
        "notes\"; DROP TABLE x; --",
        vec![],
    ));
    let err = sink.prepare(&[bad]).await.expect_err("refused");
    assert!(err.to_string().contains("Invalid SQL identifier"), "{err}");
}

#[test]
fn hostile_names_in_a_pipeline_are_refused_with_their_place() {
    let text = "version: 1
name: evil
sources:
  db:
    type: postgres
    url: postgres://x@127.0.0.1/db
    schema: \"public; DROP SCHEMA public\"
    tables:
      - {table: \"t\\\"; DROP TABLE t; --\", strategy: cursor, cursor_column: \"u) OR 1=1 --\"}
sinks:
  out: {type: postgres, input: db, url: postgres://x@127.0.0.1/db, schema: \"a\\\"b\"}
";
    let report = lakesync::config::check_str(
        text,
        "evil.yaml",
        Path::new("."),
        &lakesync::config::Env::default(),
    );
    let rendered = report.to_string();
    for expected in [
        "sources.db.schema",
        "sources.db.tables[0].table",
        "sources.db.tables[0].cursor_column",
        "sinks.out.schema",
    ] {
        assert!(
            rendered.contains(expected),
            "{expected} missing from:\n{rendered}"
        );
    }
}
