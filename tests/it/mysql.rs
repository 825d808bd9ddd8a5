//! The MySQL/MariaDB adapter against the real server `scripts/services.sh` starts: binlog CDC
//! (order, partial updates, deletes, restarts), cursor and diff polling, materialisation through
//! a whole pipeline, and hostile names and data. Every table is unique per run.

use std::collections::BTreeMap;
use std::path::Path;

use futures::TryStreamExt;
use lakesync::adapters::mysql::{
    MysqlSink, MysqlSinkOptions, MysqlSource, MysqlSourceOptions, MysqlStrategy, MysqlTableSpec,
};
use lakesync::config::{Env, load_plan};
use lakesync::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use lakesync::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
use lakesync::kernel::schema::{ColumnDef, ColumnType, TableSchema};
use lakesync::runtime::api::{Position, ReadMode, Sink, Source, SourceBatch};
use lakesync::runtime::pipeline::{RunOptions, run};
use serde_json::{Value, json};
use sqlx::mysql::MySqlPool;
use sqlx::{Executor, Row};

use crate::support::{self, unique_name};

fn mysql_url() -> Option<String> {
    support::service_env("mysql", "LAKESYNC_MYSQL_URL")
}

async fn pool(url: &str) -> MySqlPool {
    MySqlPool::connect(url).await.expect("connect to MariaDB")
}

async fn exec(pool: &MySqlPool, sql: &str) {
    pool.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A table with one column of each interesting type.
async fn create_items(pool: &MySqlPool, table: &str) {
    exec(
        pool,
        &format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, title VARCHAR(100), n BIGINT, \
             done TINYINT(1), price DECIMAL(10,2), at DATETIME(6), meta JSON, \
             updated_at BIGINT NOT NULL DEFAULT 0) DEFAULT CHARSET=utf8mb4"
        ),
    )
    .await;
}

fn spec(table: &str, strategy: MysqlStrategy) -> MysqlTableSpec {
    MysqlTableSpec {
        table: table.to_string(),
        strategy,
        schema: None,
    }
}

fn cdc(table: &str) -> MysqlTableSpec {
    spec(
        table,
        MysqlStrategy::Cdc {
            id_column: "id".into(),
        },
    )
}

async fn source(
    url: &str,
    tables: Vec<MysqlTableSpec>,
    batch_size: usize,
    state_dir: Option<&Path>,
) -> MysqlSource {
    MysqlSource::open(
        url,
        &unique_name("src"),
        tables,
        MysqlSourceOptions {
            batch_size,
            state_dir: state_dir.map(Path::to_path_buf),
            server_id: None,
        },
    )
    .await
    .expect("open the mysql source")
}

async fn read_once(source: &mut MysqlSource, from: Option<Position>) -> Vec<SourceBatch> {
    source
        .open(from, ReadMode::Once)
        .await
        .expect("open the stream")
        .try_collect()
        .await
        .expect("read the stream")
}

fn deltas(batches: &[SourceBatch]) -> Vec<RowDelta> {
    batches
        .iter()
        .flat_map(|b| batch_to_deltas(&b.batch).expect("deltas"))
        .collect()
}

/// `(op, row id, columns)` of each delta, the part a reader can check.
fn shape(deltas: &[RowDelta]) -> Vec<(DeltaOp, String, Value)> {
    deltas
        .iter()
        .map(|d| {
            let cols: serde_json::Map<String, Value> = d
                .columns
                .iter()
                .map(|c| (c.column.clone(), c.value.clone()))
                .collect();
            (d.op, d.row_id.clone(), Value::Object(cols))
        })
        .collect()
}

#[tokio::test]
async fn mysql_cdc_snapshot_then_inserts_updates_deletes_once_and_in_order() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let table = unique_name("cdc");
    create_items(&db, &table).await;
    exec(
        &db,
        &format!(
            "INSERT INTO {table} (id, title, n, done, price, at, meta) VALUES \
             (1, 'one', 10, 1, 12.34, '2024-01-02 03:04:05.123456', '{{\"a\": [1, 2]}}'), \
             (2, 'two', 20, 0, NULL, NULL, NULL)"
        ),
    )
    .await;
    let mut src = source(&url, vec![cdc(&table)], 100, None).await;
    let schema = &src.tables().await.expect("tables")[0];
    let types: Vec<(&str, ColumnType)> = schema
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.column_type))
        .collect();
    assert_eq!(
        types,
        [
            ("title", ColumnType::String),
            ("n", ColumnType::Integer),
            ("done", ColumnType::Boolean),
            ("price", ColumnType::Number),
            ("at", ColumnType::Timestamp),
            ("meta", ColumnType::Json),
            ("updated_at", ColumnType::Integer),
        ]
    );

    // The snapshot: both rows, whole.
    let first = read_once(&mut src, None).await;
    let snap = deltas(&first);
    assert_eq!(
        shape(&snap),
        [
            (
                DeltaOp::Insert,
                "1".to_string(),
                json!({"title": "one", "n": 10, "done": true, "price": 12.34,
                       "at": "2024-01-02T03:04:05.123456Z", "meta": {"a": [1, 2]}, "updated_at": 0})
            ),
            (
                DeltaOp::Insert,
                "2".to_string(),
                json!({"title": "two", "n": 20, "done": false, "price": null,
                       "at": null, "meta": null, "updated_at": 0})
            ),
        ]
    );
    assert!(snap.iter().all(|d| d.client_id.starts_with("mysql:")));
    let p1 = first.last().expect("a snapshot batch").position.clone();
    assert!(p1.0.get("binlog").is_some(), "{p1:?}");

    // Changes after the snapshot, including one to another table (skipped).
    let other = unique_name("other");
    create_items(&db, &other).await;
    exec(
        &db,
        &format!("INSERT INTO {other} (id, title) VALUES (1, 'x')"),
    )
    .await;
    exec(
        &db,
        &format!("INSERT INTO {table} (id, title, n, done) VALUES (3, 'three', 30, 0)"),
    )
    .await;
    exec(
        &db,
        &format!("UPDATE {table} SET title = 'uno' WHERE id = 1"),
    )
    .await;
    exec(
        &db,
        &format!("UPDATE {table} SET n = 21, done = 1 WHERE id = 2"),
    )
    .await;
    // A no-op update yields nothing.
    exec(&db, &format!("UPDATE {table} SET n = 21 WHERE id = 2")).await;
    exec(&db, &format!("DELETE FROM {table} WHERE id = 3")).await;
    exec(&db, &format!("UPDATE {table} SET id = 4 WHERE id = 1")).await;

    let second = read_once(&mut src, Some(p1.clone())).await;
    assert_eq!(
        shape(&deltas(&second)),
        [
            (
                DeltaOp::Insert,
                "3".to_string(),
                json!({"title": "three", "n": 30, "done": false, "price": null,
                       "at": null, "meta": null, "updated_at": 0})
            ),
            (DeltaOp::Update, "1".to_string(), json!({"title": "uno"})),
            (
                DeltaOp::Update,
                "2".to_string(),
                json!({"n": 21, "done": true})
            ),
            (DeltaOp::Delete, "3".to_string(), json!({})),
            (DeltaOp::Delete, "1".to_string(), json!({})),
            (
                DeltaOp::Insert,
                "4".to_string(),
                json!({"title": "uno", "n": 10, "done": true, "price": 12.34,
                       "at": "2024-01-02T03:04:05.123456Z", "meta": {"a": [1, 2]}, "updated_at": 0})
            ),
        ]
    );
    // Reading from the end yields nothing more.
    let p2 = second.last().expect("batches").position.clone();
    assert!(read_once(&mut src, Some(p2)).await.is_empty());
}

#[tokio::test]
async fn mysql_cdc_resumes_mid_transaction_without_loss_or_duplicates() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let (a, b) = (unique_name("cdca"), unique_name("cdcb"));
    create_items(&db, &a).await;
    create_items(&db, &b).await;
    // Batches of 2 deltas: transactions of 5 rows over two tables are cut mid-transaction.
    let mut src = source(&url, vec![cdc(&a), cdc(&b)], 2, None).await;
    let start = read_once(&mut src, None).await;
    assert!(start.is_empty(), "empty tables give an empty snapshot");
    // Seed one row so the snapshot has a batch carrying the binlog position.
    exec(
        &db,
        &format!("INSERT INTO {a} (id, title, n) VALUES (0, 'seed', 0)"),
    )
    .await;
    let seeded = read_once(&mut src, None).await;
    let from = seeded.last().expect("the seed").position.clone();
    for t in 0..6 {
        let mut tx = db.begin().await.expect("begin");
        for k in 0..5 {
            let id = 1 + t * 5 + k;
            let table = if k % 2 == 0 { &a } else { &b };
            sqlx::query(&format!(
                "INSERT INTO {table} (id, title, n) VALUES (?, ?, ?)"
            ))
            .bind(id)
            .bind(format!("row {id}"))
            .bind(id * 10)
            .execute(&mut *tx)
            .await
            .expect("insert");
            if k == 2 {
                // A query event inside the transaction, which is no transaction boundary.
                sqlx::query(&format!("SAVEPOINT sp{t}"))
                    .execute(&mut *tx)
                    .await
                    .expect("savepoint");
            }
        }
        sqlx::query(&format!("UPDATE {a} SET n = n + 1 WHERE id = 0"))
            .execute(&mut *tx)
            .await
            .expect("update");
        tx.commit().await.expect("commit");
    }
    exec(&db, &format!("DELETE FROM {b} WHERE id < 10")).await;

    let all = read_once(&mut src, Some(from.clone())).await;
    let expected = shape(&deltas(&all));
    assert_eq!(
        expected.len(),
        30 + 6 + 4,
        "30 inserts, 6 updates, 4 deletes"
    );
    // Stop after every possible batch, resume from its position: the same deltas, once.
    for cut in 1..all.len() {
        let mut got = shape(&deltas(&all[..cut]));
        let resumed = read_once(&mut src, Some(all[cut - 1].position.clone())).await;
        got.extend(shape(&deltas(&resumed)));
        assert_eq!(got, expected, "resumed after batch {cut}");
    }
    // Each batch holds one table.
    for batch in &all {
        let tables: std::collections::BTreeSet<String> = batch_to_deltas(&batch.batch)
            .unwrap()
            .into_iter()
            .map(|d| d.table)
            .collect();
        assert_eq!(tables.len(), 1);
    }
}

/// Rows of a source table as `row id → columns`, by the given select list.
async fn source_rows(pool: &MySqlPool, sql: &str) -> BTreeMap<String, Vec<Option<String>>> {
    let rows = sqlx::query(sql).fetch_all(pool).await.expect(sql);
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0).expect("id");
            let vals = (1..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).expect("value"))
                .collect();
            (id, vals)
        })
        .collect()
}

fn sink_url(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{database}")
}

async fn run_once(pipeline: &Path) -> lakesync::runtime::pipeline::RunSummary {
    let plan = load_plan(pipeline, &Env::process()).expect("a valid pipeline");
    crate::support::run_plan_once(&plan).await
}

#[tokio::test]
async fn mysql_cdc_pipeline_materialises_the_source_table_through_deletes_and_restarts() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let (soft, hard) = (unique_name("soft"), unique_name("hard"));
    for t in [&soft, &hard] {
        create_items(&db, t).await;
        exec(
            &db,
            &format!(
                "INSERT INTO {t} (id, title, n, done, price, at, meta) VALUES \
                 (1, 'one', 1, 1, 1.5, '2024-01-02 03:04:05', '{{\"k\": \"v\"}}'), \
                 (2, 'two''s', 2, 0, NULL, NULL, '[1]'), (3, 'three', 3, 1, 3.25, NULL, NULL)"
            ),
        )
        .await;
    }
    let sink_db = unique_name("sinkdb");
    exec(&db, &format!("CREATE DATABASE {sink_db}")).await;
    let sink = sink_url(&url, &sink_db);
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = format!(
        r#"version: 1
name: mysql-to-mysql
state_dir: state
tables:
  - table: {hard}
    softDelete: false
    columns:
      - {{name: title, type: string}}
      - {{name: n, type: integer}}
      - {{name: done, type: boolean}}
      - {{name: price, type: number}}
      - {{name: at, type: timestamp}}
      - {{name: meta, type: json}}
sources:
  db:
    type: mysql
    url: "{url}"
    tables:
      - {{table: {soft}, strategy: cdc}}
      - {{table: {hard}, strategy: cdc}}
sinks:
  out:
    type: mysql
    input: db
    url: "{sink}"
"#
    );
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(&pipeline, yaml).expect("pipeline");
    let sink_pool = pool(&sink).await;

    let compare = |table: String, soft_delete: bool| {
        let (db, sink_pool) = (db.clone(), sink_pool.clone());
        async move {
            let cols = "CAST(title AS CHAR), CAST(n AS CHAR), CAST(done AS CHAR), \
                        CAST(CAST(price AS DOUBLE) AS CHAR), \
                        CAST(DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f') AS CHAR), \
                        CAST(JSON_COMPACT(meta) AS CHAR)";
            let want = source_rows(
                &db,
                &format!("SELECT CAST(id AS CHAR), {cols} FROM {table}"),
            )
            .await;
            let live = if soft_delete {
                " WHERE deleted_at IS NULL"
            } else {
                ""
            };
            let got = source_rows(
                &sink_pool,
                &format!("SELECT CAST(row_id AS CHAR), {cols} FROM {table}{live}"),
            )
            .await;
            assert_eq!(got, want, "materialised {table} equals the source");
        }
    };

    let summary = run_once(&pipeline).await;
    assert_eq!(summary.source_rows["db"], 6);
    compare(soft.clone(), true).await;
    compare(hard.clone(), false).await;

    // Changes, including deletes, then a second run resumes from the committed position.
    for t in [&soft, &hard] {
        exec(
            &db,
            &format!("UPDATE {t} SET title = 'ONE', meta = NULL WHERE id = 1"),
        )
        .await;
        exec(&db, &format!("DELETE FROM {t} WHERE id = 2")).await;
        exec(
            &db,
            &format!("INSERT INTO {t} (id, title, n, done) VALUES (4, 'four', 4, 0)"),
        )
        .await;
    }
    let summary = run_once(&pipeline).await;
    assert_eq!(
        summary.source_rows["db"], 6,
        "only the new changes are read"
    );
    compare(soft.clone(), true).await;
    compare(hard.clone(), false).await;
    // Soft delete keeps the row, marked; hard delete removes it.
    let marked: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {soft} WHERE row_id = '2' AND deleted_at IS NOT NULL"
    ))
    .fetch_one(&sink_pool)
    .await
    .expect("count");
    assert_eq!(marked, 1);
    let gone: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {hard} WHERE row_id = '2'"))
        .fetch_one(&sink_pool)
        .await
        .expect("count");
    assert_eq!(gone, 0);

    // A third run with nothing new reads nothing and logs nothing twice.
    let summary = run_once(&pipeline).await;
    assert_eq!(summary.source_rows["db"], 0);
    let logged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lakesync_deltas")
        .fetch_one(&sink_pool)
        .await
        .expect("count");
    assert_eq!(logged, 12, "every delta logged once");
    exec(&db, &format!("DROP DATABASE {sink_db}")).await;
}

#[tokio::test]
async fn mysql_cursor_reads_changed_rows_by_cursor_and_id() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let table = unique_name("cur");
    create_items(&db, &table).await;
    exec(
        &db,
        &format!(
            "INSERT INTO {table} (id, title, updated_at) VALUES (1, 'a', 5), (2, 'b', 5), (3, 'c', 5), (4, 'd', 7)"
        ),
    )
    .await;
    let strategy = MysqlStrategy::Cursor {
        cursor_column: "updated_at".into(),
        id_column: "id".into(),
        lookback: None,
    };
    // Batches of 2 split the rows sharing cursor 5.
    let mut src = source(&url, vec![spec(&table, strategy)], 2, None).await;
    let first = read_once(&mut src, None).await;
    let ids: Vec<String> = deltas(&first).into_iter().map(|d| d.row_id).collect();
    assert_eq!(ids, ["1", "2", "3", "4"]);
    assert!(deltas(&first).iter().all(|d| d.op == DeltaOp::Insert));
    let at = first.last().unwrap().position.clone();
    assert_eq!(at.0[&table], json!({"cursor": 7, "id": 4}));

    exec(
        &db,
        &format!("UPDATE {table} SET title = 'B', updated_at = 8 WHERE id = 2"),
    )
    .await;
    exec(
        &db,
        &format!("INSERT INTO {table} (id, title, updated_at) VALUES (5, 'e', 9)"),
    )
    .await;
    let next = deltas(&read_once(&mut src, Some(at)).await);
    assert_eq!(
        shape(&next)
            .into_iter()
            .map(|(op, id, cols)| (op, id, cols["title"].clone()))
            .collect::<Vec<_>>(),
        [
            (DeltaOp::Insert, "2".to_string(), json!("B")),
            (DeltaOp::Insert, "5".to_string(), json!("e")),
        ]
    );
}

#[tokio::test]
async fn mysql_diff_and_snapshot_strategies() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let (table, snap) = (unique_name("diff"), unique_name("snap"));
    create_items(&db, &table).await;
    create_items(&db, &snap).await;
    for t in [&table, &snap] {
        exec(
            &db,
            &format!("INSERT INTO {t} (id, title, n) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)"),
        )
        .await;
    }
    let state = tempfile::tempdir().expect("state dir");
    let tables = vec![
        spec(
            &table,
            MysqlStrategy::Diff {
                id_column: "id".into(),
            },
        ),
        spec(
            &snap,
            MysqlStrategy::Snapshot {
                id_column: "id".into(),
            },
        ),
    ];
    let name = unique_name("diffsrc");
    let open = |tables: Vec<MysqlTableSpec>| {
        let (url, name, dir) = (url.clone(), name.clone(), state.path().to_path_buf());
        async move {
            MysqlSource::open(
                &url,
                &name,
                tables,
                MysqlSourceOptions {
                    batch_size: 2,
                    state_dir: Some(dir),
                    server_id: None,
                },
            )
            .await
            .expect("open")
        }
    };
    let mut src = open(tables.clone()).await;
    let first = read_once(&mut src, None).await;
    let by_table = |batches: &[SourceBatch], t: &str| {
        shape(
            &batches
                .iter()
                .filter(|b| b.table.table == t)
                .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(by_table(&first, &table).len(), 3);
    assert_eq!(by_table(&first, &snap).len(), 3);
    let at = first.last().unwrap().position.clone();
    assert_eq!(at.0[&snap], json!({"after": 3, "done": true}));

    for t in [&table, &snap] {
        exec(&db, &format!("UPDATE {t} SET n = 20 WHERE id = 2")).await;
        exec(&db, &format!("DELETE FROM {t} WHERE id = 3")).await;
    }
    // A restarted source (new process) resumes from the position and its state files.
    let mut src = open(tables).await;
    let next = read_once(&mut src, Some(at)).await;
    assert_eq!(
        by_table(&next, &table),
        [
            (DeltaOp::Update, "2".to_string(), json!({"n": 20})),
            (DeltaOp::Delete, "3".to_string(), json!({})),
        ]
    );
    assert!(
        by_table(&next, &snap).is_empty(),
        "a finished snapshot reads nothing"
    );
}

#[tokio::test]
async fn mysql_hostile_names_are_rejected_and_hostile_data_is_stored_literally() {
    let Some(url) = mysql_url() else { return };
    // Configured names: validation rejects them, naming where.
    for hostile in ["evil`; DROP TABLE x; --", "it's", "a\"b"] {
        let yaml = format!(
            "version: 1\nname: p\nsources:\n  db:\n    type: mysql\n    url: \"{url}\"\n    tables:\n      - table: '{}'\n        strategy: cdc\n        id_column: '{}'\nsinks:\n  out:\n    type: mysql\n    input: db\n    url: \"{url}\"\n",
            hostile.replace('\'', "''"),
            hostile.replace('\'', "''"),
        );
        let report = lakesync::config::check_str(&yaml, "p.yaml", Path::new("."), &Env::process());
        let errors: Vec<String> = report.errors().map(|d| format!("{d:?}")).collect();
        assert!(
            errors.iter().any(|e| e.contains("not a valid table name")),
            "{hostile}: {errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("not a valid column name")),
            "{hostile}: {errors:?}"
        );
        // And the adapter itself refuses them, whatever the caller.
        let err = MysqlSource::open(&url, "s", vec![cdc(hostile)], MysqlSourceOptions::default())
            .await
            .expect_err("a hostile table name");
        assert!(err.to_string().contains("Invalid SQL identifier"), "{err}");
    }

    // Hostile data: JSON keys and text that look like SQL are values, never SQL.
    let db = pool(&url).await;
    let sink_db = unique_name("hostiledb");
    exec(&db, &format!("CREATE DATABASE {sink_db}")).await;
    let mut sink = MysqlSink::open(
        &sink_url(&url, &sink_db),
        "p",
        "out",
        MysqlSinkOptions { materialise: true },
    )
    .await
    .expect("sink");
    let schema = std::sync::Arc::new(TableSchema::new(
        "victim",
        vec![
            ColumnDef::new("title", ColumnType::String),
            ColumnDef::new("meta", ColumnType::Json),
        ],
    ));
    sink.prepare(std::slice::from_ref(&schema))
        .await
        .expect("prepare");
    let evil_key = "`); DROP TABLE victim; --";
    let evil_text = "x'); DROP TABLE victim; -- \" ` \\";
    let delta = RowDelta::new(
        DeltaOp::Insert,
        "victim",
        "r'1`",
        "c",
        vec![
            ColumnDelta::new("title", json!(evil_text)),
            ColumnDelta::new("meta", json!({ evil_key: evil_text })),
        ],
        lakesync::kernel::hlc::HlcTimestamp::new(1_700_000_000_000, 0).unwrap(),
    );
    sink.write(&schema, deltas_to_batch(&schema, &[delta]).unwrap())
        .await
        .expect("write");
    sink.commit(1).await.expect("commit");
    // A delta naming a hostile column does not fit the schema and is refused.
    let hostile_schema = TableSchema::new(
        "victim",
        vec![ColumnDef::new(
            "title`; DROP TABLE victim; --",
            ColumnType::String,
        )],
    );
    assert!(hostile_schema.validate().is_err());

    let sink_pool = pool(&sink_url(&url, &sink_db)).await;
    let row = sqlx::query(
        "SELECT CAST(row_id AS CHAR), CAST(title AS CHAR), CAST(meta AS CHAR) FROM victim",
    )
    .fetch_one(&sink_pool)
    .await
    .expect("the table still exists, with the row");
    assert_eq!(row.get::<String, _>(0), "r'1`");
    assert_eq!(row.get::<String, _>(1), evil_text);
    let meta: Value = serde_json::from_str(&row.get::<String, _>(2)).unwrap();
    assert_eq!(meta, json!({ evil_key: evil_text }));
    exec(&db, &format!("DROP DATABASE {sink_db}")).await;
}

#[tokio::test]
async fn mysql_sink_commits_are_idempotent_by_epoch_and_delta_id() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let sink_db = unique_name("idemdb");
    exec(&db, &format!("CREATE DATABASE {sink_db}")).await;
    let open = || async {
        MysqlSink::open(
            &sink_url(&url, &sink_db),
            "p",
            "out",
            MysqlSinkOptions { materialise: true },
        )
        .await
        .expect("sink")
    };
    let schema = std::sync::Arc::new(TableSchema::new(
        "todos",
        vec![ColumnDef::new("title", ColumnType::String)],
    ));
    let d = |title: &str, wall: u64| {
        RowDelta::new(
            DeltaOp::Insert,
            "todos",
            "a",
            "c",
            vec![ColumnDelta::new("title", json!(title))],
            lakesync::kernel::hlc::HlcTimestamp::new(wall, 0).unwrap(),
        )
    };
    let mut sink = open().await;
    sink.prepare(std::slice::from_ref(&schema)).await.unwrap();
    assert_eq!(sink.committed_epoch().await.unwrap(), None);
    let batch = deltas_to_batch(&schema, &[d("first", 1_000), d("second", 2_000)]).unwrap();
    sink.write(&schema, batch.clone()).await.unwrap();
    assert_eq!(sink.commit(1).await.unwrap().rows, 2);
    // A replay of epoch 1 (a new process) is dropped; the same deltas in a new epoch are
    // logged once.
    let mut sink = open().await;
    sink.prepare(std::slice::from_ref(&schema)).await.unwrap();
    assert_eq!(sink.committed_epoch().await.unwrap(), Some(1));
    sink.write(&schema, batch.clone()).await.unwrap();
    assert_eq!(sink.commit(1).await.unwrap().rows, 0);
    sink.write(&schema, batch).await.unwrap();
    assert_eq!(sink.commit(2).await.unwrap().rows, 0);
    // A row id too long for the log is refused, not truncated.
    let long = RowDelta::new(
        DeltaOp::Insert,
        "todos",
        "x".repeat(256),
        "c",
        vec![ColumnDelta::new("title", json!("t"))],
        lakesync::kernel::hlc::HlcTimestamp::new(3_000, 0).unwrap(),
    );
    sink.write(&schema, deltas_to_batch(&schema, &[long]).unwrap())
        .await
        .unwrap();
    let err = sink.commit(3).await.expect_err("a 256-character row id");
    assert!(err.to_string().contains("at most 255"), "{err}");
    // Schema evolution adds a column.
    let evolved = std::sync::Arc::new(TableSchema::new(
        "todos",
        vec![
            ColumnDef::new("title", ColumnType::String),
            ColumnDef::new("due", ColumnType::Timestamp),
        ],
    ));
    sink.prepare(std::slice::from_ref(&evolved)).await.unwrap();
    let sink_pool = pool(&sink_url(&url, &sink_db)).await;
    let (title, due): (String, Option<String>) = sqlx::query_as(
        "SELECT CAST(title AS CHAR), CAST(due AS CHAR) FROM todos WHERE row_id = 'a'",
    )
    .fetch_one(&sink_pool)
    .await
    .unwrap();
    assert_eq!((title.as_str(), due), ("second", None));
    exec(&db, &format!("DROP DATABASE {sink_db}")).await;
}

/// Polls `check` every 100 ms for up to 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn mysql_cdc_follow_stops_and_resumes_from_the_committed_position() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let table = unique_name("follow");
    create_items(&db, &table).await;
    let sink_db = unique_name("followdb");
    exec(&db, &format!("CREATE DATABASE {sink_db}")).await;
    let sink = sink_url(&url, &sink_db);
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "version: 1\nname: follow\nstate_dir: state\nflush: {{max_age: 200ms}}\n\
             sources:\n  db:\n    type: mysql\n    url: \"{url}\"\n    tables:\n      - {{table: {table}, strategy: cdc}}\n\
             sinks:\n  out:\n    type: mysql\n    input: db\n    url: \"{sink}\"\n    materialise: true\n"
        ),
    )
    .expect("pipeline");
    let sink_pool = pool(&sink).await;
    let start = |pipeline: std::path::PathBuf| async move {
        let plan = load_plan(&pipeline, &Env::process()).expect("valid");
        let graph = lakesync::build::build(&plan).await.expect("build");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(run(
            graph,
            RunOptions {
                mode: ReadMode::Follow {
                    poll_interval: std::time::Duration::from_millis(100),
                },
                progress: false,
            },
            async move {
                stopped.await.ok();
            },
        ));
        (stop, handle)
    };
    let same = |table: String| {
        let (db, sink_pool) = (db.clone(), sink_pool.clone());
        async move {
            let want = source_rows(
                &db,
                &format!("SELECT CAST(id AS CHAR), CAST(title AS CHAR) FROM {table}"),
            )
            .await;
            let got = sqlx::query(&format!(
                "SELECT CAST(row_id AS CHAR), CAST(title AS CHAR) FROM {table} WHERE deleted_at IS NULL"
            ))
            .fetch_all(&sink_pool)
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<String, _>(0), vec![r.get::<Option<String>, _>(1)]))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default();
            got == want
        }
    };

    let (stop, handle) = start(pipeline.clone()).await;
    for id in 1..=5 {
        exec(
            &db,
            &format!("INSERT INTO {table} (id, title) VALUES ({id}, 'r{id}')"),
        )
        .await;
    }
    eventually("the first rows", || same(table.clone())).await;
    stop.send(()).expect("stop");
    handle.await.expect("join").expect("first run");

    // Changes while stopped, then a live one after the restart.
    exec(
        &db,
        &format!("UPDATE {table} SET title = 'R1' WHERE id = 1"),
    )
    .await;
    exec(&db, &format!("DELETE FROM {table} WHERE id = 2")).await;
    exec(
        &db,
        &format!("INSERT INTO {table} (id, title) VALUES (6, 'r6')"),
    )
    .await;
    let (stop, handle) = start(pipeline.clone()).await;
    eventually("the changes made while stopped", || same(table.clone())).await;
    exec(
        &db,
        &format!("INSERT INTO {table} (id, title) VALUES (7, 'r7')"),
    )
    .await;
    eventually("a live change", || same(table.clone())).await;
    stop.send(()).expect("stop");
    handle.await.expect("join").expect("second run");

    let logged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lakesync_deltas")
        .fetch_one(&sink_pool)
        .await
        .expect("count");
    assert_eq!(logged, 5 + 3 + 1, "every change logged once, none lost");
    exec(&db, &format!("DROP DATABASE {sink_db}")).await;
}

/// The example in `docs/mysql.md` validates (no server needed).
#[test]
fn mysql_docs_example_validates() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/mysql.md"))
        .expect("docs/mysql.md");
    let start = doc.find("```yaml\n").expect("a yaml example") + "```yaml\n".len();
    let yaml = &doc[start..start + doc[start..].find("```").expect("its end")];
    let env = Env::from_vars([
        ("LAKESYNC_MYSQL_URL", "mysql://root@127.0.0.1:3306/shop"),
        (
            "REPORTING_MYSQL_URL",
            "mysql://root@127.0.0.1:3306/reporting",
        ),
    ]);
    let report = lakesync::config::check_str(yaml, "docs/mysql.md", Path::new("docs"), &env);
    let errors: Vec<String> = report.errors().map(|d| format!("{d:?}")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test]
async fn mysql_cdc_timestamps_enums_and_sets_read_alike_from_snapshot_and_binlog() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let table = unique_name("ts");
    exec(
        &db,
        &format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, dt DATETIME(6) NULL, ts TIMESTAMP(6) NULL, \
             ts0 TIMESTAMP NULL, d DATE NULL, e ENUM('a', 'b''c') NULL, s SET('x', 'y', 'z') NULL)"
        ),
    )
    .await;
    // Written by a client two hours east of UTC: TIMESTAMP converts, DATETIME does not.
    let insert = |id: i32| {
        let (db, table) = (db.clone(), table.clone());
        async move {
            let mut conn = db.acquire().await.expect("conn");
            sqlx::query("SET time_zone = '+02:00'")
                .execute(&mut *conn)
                .await
                .expect("tz");
            sqlx::query(&format!(
                "INSERT INTO {table} VALUES ({id}, '2024-01-02 03:04:05.5', \
                 '2024-01-02 03:04:05.5', '2024-01-02 03:04:05', '2024-01-02', 'b''c', 'x,z')"
            ))
            .execute(&mut *conn)
            .await
            .expect("insert");
        }
    };
    insert(1).await;
    let mut src = source(&url, vec![cdc(&table)], 100, None).await;
    let first = read_once(&mut src, None).await;
    insert(2).await;
    let second = read_once(&mut src, Some(first.last().unwrap().position.clone())).await;
    let want = json!({
        "dt": "2024-01-02T03:04:05.500Z",
        "ts": "2024-01-02T01:04:05.500Z",
        "ts0": "2024-01-02T01:04:05Z",
        "d": "2024-01-02T00:00:00Z",
        "e": "b'c",
        "s": "x,z",
    });
    assert_eq!(
        shape(&deltas(&first)),
        [(DeltaOp::Insert, "1".to_string(), want.clone())],
        "snapshot"
    );
    assert_eq!(
        shape(&deltas(&second)),
        [(DeltaOp::Insert, "2".to_string(), want)],
        "binlog"
    );
}

#[tokio::test]
async fn mysql_cursor_lookback_catches_late_rows_without_repeating_seen_ones() {
    let Some(url) = mysql_url() else { return };
    let db = pool(&url).await;
    let table = unique_name("look");
    exec(
        &db,
        &format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, title TEXT, changed DATETIME(6) NOT NULL)"
        ),
    )
    .await;
    exec(
        &db,
        &format!(
            "INSERT INTO {table} VALUES (1, 'a', '2024-01-01 00:00:01'), (2, 'b', '2024-01-01 00:00:02'), \
             (3, 'c', '2024-01-01 00:00:03')"
        ),
    )
    .await;
    let cursor = |lookback| {
        spec(
            &table,
            MysqlStrategy::Cursor {
                cursor_column: "changed".into(),
                id_column: "id".into(),
                lookback,
            },
        )
    };
    // Default lookback (5 s) for a date/time cursor; batches of 2.
    let mut src = source(&url, vec![cursor(None)], 2, None).await;
    let first = read_once(&mut src, None).await;
    let ids = |batches: &[SourceBatch]| -> Vec<String> {
        deltas(batches).into_iter().map(|d| d.row_id).collect()
    };
    assert_eq!(ids(&first), ["1", "2", "3"]);
    let at = first.last().unwrap().position.clone();

    // A row committed late with an older cursor value, inside the window: read once.
    exec(
        &db,
        &format!("INSERT INTO {table} VALUES (4, 'late', '2024-01-01 00:00:02.5')"),
    )
    .await;
    let second = read_once(&mut src, Some(at)).await;
    assert_eq!(ids(&second), ["4"]);
    let at = second.last().unwrap().position.clone();
    // Nothing new: nothing again, even though the window is re-read.
    let third = read_once(&mut src, Some(at.clone())).await;
    assert_eq!(ids(&third), Vec::<String>::new());
    // A changed row (new cursor value) is read again.
    exec(
        &db,
        &format!("UPDATE {table} SET title = 'A', changed = '2024-01-01 00:00:04' WHERE id = 1"),
    )
    .await;
    assert_eq!(ids(&read_once(&mut src, Some(at)).await), ["1"]);

    // Lookback on a cursor that is not a date or time is refused.
    let ints = unique_name("lookint");
    create_items(&db, &ints).await;
    let mut src = MysqlSource::open(
        &url,
        &unique_name("src"),
        vec![spec(
            &ints,
            MysqlStrategy::Cursor {
                cursor_column: "updated_at".into(),
                id_column: "id".into(),
                lookback: Some(std::time::Duration::from_secs(1)),
            },
        )],
        MysqlSourceOptions::default(),
    )
    .await
    .expect("open");
    let err = src
        .open(None, ReadMode::Once)
        .await
        .err()
        .expect("lookback on an integer cursor");
    assert!(err.to_string().contains("lookback applies only"), "{err}");
}
