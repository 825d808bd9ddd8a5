//! BigQuery against the emulator (`bqemulator`, started by scripts/services.sh): the sink's log and
//! materialised tables read back through the source's Storage Read API; Postgres → BigQuery →
//! Postgres and Iceberg → BigQuery → Iceberg round trips; MERGE upserts, deletes and schema
//! evolution seen through queries; cursor and diff polling; hostile names refused. Data is
//! asserted, never the emulator's formats.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use lakesync::adapters::bigquery::source::BigQuerySourceOptions;
use lakesync::adapters::bigquery::{
    BigQueryClient, BigQueryConfig, BigQuerySink, BigQuerySinkOptions, BigQuerySource,
    BigQueryStrategy, BigQueryTableSpec,
};
use lakesync::adapters::iceberg::IcebergCatalogConfig;
use lakesync::adapters::iceberg::source::IcebergSource;
use lakesync::kernel::delta::RowDelta;
use lakesync::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
use lakesync::kernel::materialise::{Cell, plan_materialise};
use lakesync::kernel::merge::merge;
use lakesync::kernel::schema::{ColumnDef, ColumnType, TableSchema};
use lakesync::runtime::api::{Position, ReadMode, Sink, Source, SourceBatch, TableRef};
use lakesync::synth::{Workload, tasks_schema};
use serde_json::{Value, json};

use crate::iceberg::{WALL_MS, tasks_lake};
use crate::support::{self, unique_name};

const PROJECT: &str = "test-proj";

/// The emulator's endpoints, or `None` (test skipped) when it is not running.
fn endpoints() -> Option<(String, String)> {
    let rest = support::service_env("bq", "LAKESYNC_BQ_REST_ENDPOINT")?;
    let grpc = support::service_env("bq", "LAKESYNC_BQ_GRPC_ENDPOINT")?;
    Some((rest, grpc))
}

fn config(dataset: &str) -> Option<BigQueryConfig> {
    let (rest, grpc) = endpoints()?;
    Some(BigQueryConfig::emulator(PROJECT, dataset, &rest, &grpc))
}

fn hard(schema: TableSchema) -> TableRef {
    let mut schema = schema;
    schema.soft_delete = Some(false);
    Arc::new(schema)
}

/// The live rows of the LWW fold of `deltas`: row id → column values as JSON (JSON cells parsed,
/// so formatting does not count).
fn live_rows(schema: &TableSchema, deltas: &[RowDelta]) -> BTreeMap<String, Vec<Value>> {
    let mut hard = schema.clone();
    hard.soft_delete = Some(false);
    let batch = deltas_to_batch(&hard, deltas).expect("batch");
    let state = merge(&hard, None, std::slice::from_ref(&batch)).expect("merge");
    let plan = plan_materialise(&hard, &state, None).expect("plan");
    plan.upserts
        .into_iter()
        .map(|row| {
            let values = row
                .values
                .into_iter()
                .map(|cell| match cell {
                    Cell::Null => Value::Null,
                    Cell::String(s) => json!(s),
                    Cell::Number(f) => json!(f),
                    Cell::Integer(i) => json!(i),
                    Cell::Boolean(b) => json!(b),
                    Cell::Timestamp(t) => json!(t),
                    Cell::Json(text) => serde_json::from_str(&text).expect("json cell"),
                })
                .collect();
            (row.row_id, values)
        })
        .collect()
}

async fn read_all(
    source: &mut dyn Source,
    resume: Option<Position>,
    mode: ReadMode,
) -> Vec<SourceBatch> {
    source
        .open(resume, mode)
        .await
        .expect("open")
        .try_collect()
        .await
        .expect("read")
}

fn read_deltas(batches: &[SourceBatch]) -> Vec<RowDelta> {
    batches
        .iter()
        .flat_map(|b| batch_to_deltas(&b.batch).expect("deltas"))
        .collect()
}

async fn write_epochs(sink: &mut BigQuerySink, table: &TableRef, deltas: &[RowDelta], per: usize) {
    sink.prepare(std::slice::from_ref(table))
        .await
        .expect("prepare");
    for (k, part) in deltas.chunks(per).enumerate() {
        let epoch = k as u64 + 1;
        sink.begin_epoch(epoch, WALL_MS);
        sink.write(table, deltas_to_batch(table, part).expect("batch"))
            .await
            .expect("write");
        sink.commit(epoch).await.expect("commit");
    }
}

fn snapshot_source(config: BigQueryConfig, table: &TableRef, parallelism: usize) -> BigQuerySource {
    BigQuerySource::new(
        "bq",
        config,
        vec![BigQueryTableSpec {
            schema: Arc::clone(table),
            strategy: BigQueryStrategy::Snapshot,
            id_column: "row_id".into(),
        }],
        BigQuerySourceOptions {
            parallelism,
            batch_size: 700,
            state_dir: None,
        },
    )
    .expect("source")
}

async fn count(client: &BigQueryClient, sql: &str) -> i64 {
    let result = client.query(sql, Vec::new(), "count").await.expect("query");
    result.rows[0][0]
        .as_str()
        .expect("a count")
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn the_sink_logs_once_materialises_and_reads_back_through_the_storage_read_api() {
    let dataset = unique_name("bq_sink");
    let Some(config) = config(&dataset) else {
        return;
    };
    let table = hard(tasks_schema());
    let deltas = Workload::new(2_000, 4, 7).deltas(6_000, WALL_MS);
    let mut sink = BigQuerySink::open(
        config.clone(),
        "p",
        "wh",
        BigQuerySinkOptions { materialise: true },
    )
    .await
    .expect("sink");
    write_epochs(&mut sink, &table, &deltas, 2_500).await;
    assert_eq!(sink.committed_epoch().await.expect("mark"), Some(3));

    // A replayed epoch is dropped; re-logging the same deltas under a new epoch adds nothing.
    sink.write(&table, deltas_to_batch(&table, &deltas[..100]).expect("b"))
        .await
        .expect("write");
    assert_eq!(sink.commit(2).await.expect("replay").rows, 0);
    sink.write(&table, deltas_to_batch(&table, &deltas[..100]).expect("b"))
        .await
        .expect("write");
    assert_eq!(sink.commit(4).await.expect("again").rows, 0);
    let client = sink.client().clone();
    let log = format!("`{PROJECT}.{dataset}.lakesync_deltas`");
    assert_eq!(
        count(&client, &format!("SELECT COUNT(*) FROM {log}")).await,
        deltas.len() as i64
    );
    assert_eq!(
        count(
            &client,
            &format!("SELECT COUNT(DISTINCT delta_id) FROM {log}")
        )
        .await,
        deltas.len() as i64
    );
    let mut logged = sink.logged("tasks").await.expect("log");
    let mut want = deltas.clone();
    logged.sort_by_key(|d| d.delta_id.0);
    want.sort_by_key(|d| d.delta_id.0);
    assert_eq!(logged.len(), want.len());
    // JSON text does not keep 40.0 apart from 40; numbers compare as numbers.
    fn numbers(v: &Value) -> Value {
        match v {
            Value::Number(n) => json!(n.as_f64()),
            Value::Array(a) => Value::Array(a.iter().map(numbers).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), numbers(v))).collect())
            }
            other => other.clone(),
        }
    }
    let normal = |d: &RowDelta| {
        let mut d = d.clone();
        for c in &mut d.columns {
            c.value = numbers(&c.value);
        }
        d
    };
    let (logged, want): (Vec<_>, Vec<_>) = (
        logged.iter().map(normal).collect(),
        want.iter().map(normal).collect(),
    );
    if let Some((got, expected)) = logged.iter().zip(&want).find(|(a, b)| a != b) {
        panic!("the log holds every delta exactly as written: got {got:?}, wrote {expected:?}");
    }

    // The materialised table, read whole through the Storage Read API, is the fold of the deltas.
    let expected = live_rows(&table, &deltas);
    let mut source = snapshot_source(config.clone(), &table, 3);
    let batches = read_all(&mut source, None, ReadMode::Once).await;
    let read = read_deltas(&batches);
    assert_eq!(read.len(), expected.len(), "every live row once");
    assert_eq!(live_rows(&table, &read), expected);
}

#[tokio::test]
async fn a_snapshot_reads_parallel_streams_and_resumes_exactly() {
    let dataset = unique_name("bq_streams");
    let Some(config) = config(&dataset) else {
        return;
    };
    let client = BigQueryClient::connect(config.clone(), "test")
        .await
        .expect("client");
    client.ensure_dataset("test").await.expect("dataset");
    // Big enough (over 1 MB) that the emulator offers several streams.
    client
        .query(
            &format!(
                "CREATE TABLE `{PROJECT}.{dataset}.events` AS SELECT CAST(n AS STRING) AS row_id, \
                 n AS seq, REPEAT('x', 200) AS body FROM UNNEST(GENERATE_ARRAY(1, 20000)) AS n"
            ),
            Vec::new(),
            "creating events",
        )
        .await
        .expect("events");
    let table: TableRef = Arc::new(TableSchema::new(
        "events",
        vec![
            ColumnDef::new("seq", ColumnType::Integer),
            ColumnDef::new("body", ColumnType::String),
        ],
    ));
    let mut source = snapshot_source(config.clone(), &table, 3);
    // A backfill's progress knows the size: the table's numRows.
    assert_eq!(
        source.estimated_rows(None).await.expect("estimate"),
        Some(20_000)
    );
    let batches = read_all(&mut source, None, ReadMode::Once).await;
    let read = read_deltas(&batches);
    let mut ids: Vec<u64> = read
        .iter()
        .map(|d| d.row_id.parse().expect("numeric id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=20_000).collect::<Vec<u64>>(), "every row once");
    assert!(
        read.iter()
            .all(|d| d.columns[0].value == json!(d.row_id.parse::<i64>().unwrap()))
    );
    let streams = batches[0].position.0["events"]["streams"]
        .as_array()
        .expect("streams")
        .len();
    assert!(streams > 1, "the session offered {streams} stream(s)");

    // A resume after any batch yields exactly the rest.
    let cut = batches.len() / 2;
    let rest = read_all(
        &mut source,
        Some(batches[cut - 1].position.clone()),
        ReadMode::Once,
    )
    .await;
    let mut resumed: Vec<[u8; 32]> = read_deltas(&batches[..cut])
        .into_iter()
        .chain(read_deltas(&rest))
        .map(|d| d.delta_id.0)
        .collect();
    let mut all: Vec<[u8; 32]> = read.iter().map(|d| d.delta_id.0).collect();
    resumed.sort_unstable();
    all.sort_unstable();
    assert_eq!(
        resumed, all,
        "resumed: every row exactly once, as the same deltas"
    );
    // A replay up to a recorded position re-reads exactly the rows before it.
    let until = batches[cut - 1].position.clone();
    let replay = read_all(
        &mut source,
        None,
        ReadMode::Replay {
            until: until.clone(),
        },
    )
    .await;
    let mut replayed: Vec<[u8; 32]> = read_deltas(&replay).iter().map(|d| d.delta_id.0).collect();
    let mut original: Vec<[u8; 32]> = read_deltas(&batches[..cut])
        .iter()
        .map(|d| d.delta_id.0)
        .collect();
    replayed.sort_unstable();
    original.sort_unstable();
    assert_eq!(
        replayed, original,
        "a replay stops where the original epoch did"
    );
    assert_eq!(replay.last().expect("batches").position, until);
}

#[tokio::test]
async fn materialise_merges_upserts_deletes_and_adds_columns() {
    let dataset = unique_name("bq_mat");
    let Some(config) = config(&dataset) else {
        return;
    };
    let soft: TableRef = Arc::new(TableSchema::new(
        "accounts",
        vec![
            ColumnDef::new("name", ColumnType::String),
            ColumnDef::new("balance", ColumnType::Number),
        ],
    ));
    let mut sink = BigQuerySink::open(
        config.clone(),
        "p",
        "mat",
        BigQuerySinkOptions { materialise: true },
    )
    .await
    .expect("sink");
    sink.prepare(std::slice::from_ref(&soft))
        .await
        .expect("prep");
    let at = |ms: u64| lakesync::kernel::hlc::HlcTimestamp::new(WALL_MS + ms, 0).expect("hlc");
    use lakesync::kernel::delta::{ColumnDelta, DeltaOp};
    let d = |op, row: &str, ms, cols: Vec<(&str, Value)>| {
        RowDelta::new(
            op,
            "accounts",
            row,
            "t",
            cols.into_iter()
                .map(|(c, v)| ColumnDelta::new(c, v))
                .collect(),
            at(ms),
        )
    };
    let first = vec![
        d(
            DeltaOp::Insert,
            "a",
            1,
            vec![("name", json!("Ann")), ("balance", json!(10.5))],
        ),
        d(
            DeltaOp::Insert,
            "b",
            2,
            vec![("name", json!("it's `b`; DROP")), ("balance", json!(1))],
        ),
        d(
            DeltaOp::Insert,
            "c",
            3,
            vec![("name", json!("Cy")), ("balance", json!(3))],
        ),
    ];
    sink.write(&soft, deltas_to_batch(&soft, &first).expect("b"))
        .await
        .expect("w");
    sink.commit(1).await.expect("c1");
    let second = vec![
        d(DeltaOp::Update, "a", 4, vec![("balance", json!(20.25))]),
        d(DeltaOp::Delete, "c", 5, vec![]),
    ];
    sink.write(&soft, deltas_to_batch(&soft, &second).expect("b"))
        .await
        .expect("w");
    sink.commit(2).await.expect("c2");
    // Schema evolution: a new column, added to the materialised table.
    let evolved: TableRef = Arc::new(TableSchema::new(
        "accounts",
        vec![
            ColumnDef::new("name", ColumnType::String),
            ColumnDef::new("balance", ColumnType::Number),
            ColumnDef::new("team", ColumnType::String),
        ],
    ));
    sink.prepare(std::slice::from_ref(&evolved))
        .await
        .expect("evolve");
    let third = vec![d(DeltaOp::Update, "b", 6, vec![("team", json!("finance"))])];
    sink.write(&evolved, deltas_to_batch(&evolved, &third).expect("b"))
        .await
        .expect("w");
    sink.commit(3).await.expect("c3");

    let client = sink.client().clone();
    let rows = client
        .query(
            &format!(
                "SELECT row_id, name, CAST(CAST(balance * 100 AS INT64) AS STRING), team, deleted_at IS NOT NULL, \
                 TO_JSON_STRING(props), synced_at IS NOT NULL \
                 FROM `{PROJECT}.{dataset}.accounts` ORDER BY row_id"
            ),
            Vec::new(),
            "reading accounts",
        )
        .await
        .expect("rows")
        .rows;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let got: Vec<Vec<Option<String>>> = rows.iter().map(|r| r.iter().map(text).collect()).collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            vec![
                s("a"),
                s("Ann"),
                s("2025"),
                None,
                s("false"),
                s("{}"),
                s("true")
            ],
            vec![
                s("b"),
                s("it's `b`; DROP"),
                s("100"),
                s("finance"),
                s("false"),
                s("{}"),
                s("true")
            ],
            // Soft-deleted: kept with deleted_at set.
            vec![
                s("c"),
                s("Cy"),
                s("300"),
                None,
                s("true"),
                s("{}"),
                s("true")
            ],
        ]
    );

    // Hard delete: the row goes.
    let hard_table = hard(TableSchema::new(
        "ledger",
        vec![ColumnDef::new("amount", ColumnType::Integer)],
    ));
    sink.prepare(std::slice::from_ref(&hard_table))
        .await
        .expect("prep");
    let ledger = |op, row: &str, ms, cols: Vec<(&str, Value)>| {
        RowDelta::new(
            op,
            "ledger",
            row,
            "t",
            cols.into_iter()
                .map(|(c, v)| ColumnDelta::new(c, v))
                .collect(),
            at(ms),
        )
    };
    let batch = vec![
        ledger(DeltaOp::Insert, "x", 1, vec![("amount", json!(5))]),
        ledger(DeltaOp::Insert, "y", 2, vec![("amount", json!(6))]),
        ledger(DeltaOp::Delete, "x", 3, vec![]),
    ];
    sink.write(
        &hard_table,
        deltas_to_batch(&hard_table, &batch).expect("b"),
    )
    .await
    .expect("w");
    sink.commit(4).await.expect("c4");
    assert_eq!(
        count(
            &client,
            &format!("SELECT COUNT(*) FROM `{PROJECT}.{dataset}.ledger` WHERE row_id = 'y'")
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &client,
            &format!("SELECT COUNT(*) FROM `{PROJECT}.{dataset}.ledger`")
        )
        .await,
        1
    );
}

/// Runs a pipeline file once through the library.
async fn run_once(file: &Path) {
    crate::support::run_file_once(file).await;
}

#[tokio::test]
async fn postgres_to_bigquery_to_postgres_round_trips_equal() {
    if endpoints().is_none() {
        return;
    }
    let Some(pg) = support::service_env("postgres", "LAKESYNC_PG_URL") else {
        return;
    };
    let pool = sqlx::PgPool::connect(&pg).await.expect("postgres");
    let table = unique_name("orders");
    let back = unique_name("back");
    let dataset = unique_name("bq_pg");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id text PRIMARY KEY, customer text, qty bigint, total float8, paid bool, \
         placed timestamptz, meta jsonb);
         INSERT INTO {table} SELECT 'o' || g, CASE WHEN g % 11 = 0 THEN NULL ELSE 'c' || (g % 7) || ' it''s' END, \
         g, g * 1.25, g % 3 = 0, TIMESTAMPTZ '2026-01-01 00:00:00+00' + g * INTERVAL '1 minute 0.000001 second', \
         jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 5)) FROM generate_series(1, 1200) g;"
    ))
    .execute(&pool)
    .await
    .expect("source table");
    let declared = json!({
        "table": table,
        "columns": [
            {"name": "customer", "type": "string"},
            {"name": "qty", "type": "integer"},
            {"name": "total", "type": "number"},
            {"name": "paid", "type": "boolean"},
            {"name": "placed", "type": "timestamp"},
            {"name": "meta", "type": "json"}
        ]
    });
    let dir = tempfile::tempdir().expect("dir");
    let there = dir.path().join("there.yaml");
    std::fs::write(
        &there,
        format!(
            "version: 1
name: pg_to_bq
state_dir: state1
tables:
  - {declared}
sources:
  db:
    type: postgres
    url: ${{LAKESYNC_PG_URL}}
    tables:
      - {{table: {table}, strategy: snapshot, id_column: id}}
sinks:
  wh:
    type: bigquery
    input: db
    project: ${{LAKESYNC_BQ_PROJECT:-test-proj}}
    dataset: {dataset}
    endpoint: ${{LAKESYNC_BQ_REST_ENDPOINT}}
"
        ),
    )
    .expect("pipeline");
    run_once(&there).await;
    let back_file = dir.path().join("back.yaml");
    std::fs::write(
        &back_file,
        format!(
            "version: 1
name: bq_to_pg
state_dir: state2
tables:
  - {declared}
sources:
  wh:
    type: bigquery
    project: ${{LAKESYNC_BQ_PROJECT:-test-proj}}
    dataset: {dataset}
    endpoint: ${{LAKESYNC_BQ_REST_ENDPOINT}}
    grpc_endpoint: ${{LAKESYNC_BQ_GRPC_ENDPOINT}}
    tables:
      - {{table: {table}, strategy: snapshot, id_column: row_id}}
sinks:
  db:
    type: postgres
    input: wh
    url: ${{LAKESYNC_PG_URL}}
    schema: {back}
"
        ),
    )
    .expect("pipeline");
    run_once(&back_file).await;
    type Row = (
        String,
        Option<String>,
        Option<i64>,
        Option<f64>,
        Option<bool>,
        Option<i64>,
        Option<String>,
    );
    let original: Vec<Row> = sqlx::query_as(&format!(
        "SELECT id, customer, qty, total, paid, (extract(epoch FROM placed) * 1000000)::int8, meta::text \
         FROM {table} ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .expect("original");
    let returned: Vec<Row> = sqlx::query_as(&format!(
        "SELECT row_id, customer, qty, total, paid, (extract(epoch FROM placed) * 1000000)::int8, meta::text \
         FROM {back}.{table} WHERE deleted_at IS NULL ORDER BY row_id"
    ))
    .fetch_all(&pool)
    .await
    .expect("returned");
    assert_eq!(returned.len(), 1_200);
    assert_eq!(returned, original);
}

#[tokio::test]
async fn iceberg_to_bigquery_to_iceberg_round_trips_equal() {
    let dataset = unique_name("bq_ice");
    if config(&dataset).is_none() {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let lake = IcebergCatalogConfig::sql(
        dir.path().join("lake/catalog.sqlite"),
        dir.path().join("lake/warehouse"),
    );
    let deltas = Workload::new(800, 4, 11).deltas(4_000, WALL_MS);
    tasks_lake(&lake, &deltas, 1_500).await;
    let mut tasks = tasks_schema();
    tasks.soft_delete = Some(false);
    let declared = serde_json::to_string(&tasks).expect("schema");
    let there = dir.path().join("there.yaml");
    std::fs::write(
        &there,
        format!(
            "version: 1
name: ice_to_bq
state_dir: state1
tables:
  - {declared}
sources:
  lake:
    type: iceberg
    catalog: {{type: sql, uri: lake/catalog.sqlite, warehouse: lake/warehouse}}
    table: tasks
sinks:
  wh:
    type: bigquery
    input: lake
    project: {PROJECT}
    dataset: {dataset}
    endpoint: ${{LAKESYNC_BQ_REST_ENDPOINT}}
"
        ),
    )
    .expect("pipeline");
    run_once(&there).await;
    let back = dir.path().join("back.yaml");
    std::fs::write(
        &back,
        format!(
            "version: 1
name: bq_to_ice
state_dir: state2
tables:
  - {declared}
sources:
  wh:
    type: bigquery
    project: {PROJECT}
    dataset: {dataset}
    endpoint: ${{LAKESYNC_BQ_REST_ENDPOINT}}
    grpc_endpoint: ${{LAKESYNC_BQ_GRPC_ENDPOINT}}
    parallelism: 2
    tables:
      - {{table: tasks, strategy: snapshot, id_column: row_id}}
sinks:
  lake2:
    type: iceberg
    input: wh
    catalog: {{type: sql, uri: back/catalog.sqlite, warehouse: back/warehouse}}
    namespace: returned
"
        ),
    )
    .expect("pipeline");
    run_once(&back).await;

    let table: TableRef = Arc::new(tasks.clone());
    let catalog = lakesync::adapters::iceberg::connect(&IcebergCatalogConfig::sql(
        dir.path().join("back/catalog.sqlite"),
        dir.path().join("back/warehouse"),
    ))
    .await
    .expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["returned", "tasks"]).expect("ident");
    let mut source = IcebergSource::new("back", catalog, ident, Arc::clone(&table), None);
    let returned = read_deltas(&read_all(&mut source, None, ReadMode::Once).await);
    let want = live_rows(&tasks, &deltas);
    assert_eq!(returned.len(), want.len(), "one insert per live row");
    assert_eq!(live_rows(&tasks, &returned), want);
}

#[tokio::test]
async fn cursor_and_diff_polling_see_new_changed_and_deleted_rows() {
    let dataset = unique_name("bq_poll");
    let Some(config) = config(&dataset) else {
        return;
    };
    let client = BigQueryClient::connect(config.clone(), "test")
        .await
        .expect("client");
    client.ensure_dataset("test").await.expect("dataset");
    let t = format!("`{PROJECT}.{dataset}.invoices`");
    let run = |sql: String| {
        let client = client.clone();
        async move {
            client.query(&sql, Vec::new(), "setup").await.expect("sql");
        }
    };
    run(format!(
        "CREATE TABLE {t} (id INT64, account STRING, amount FLOAT64, updated TIMESTAMP, meta JSON)"
    ))
    .await;
    run(format!(
        "INSERT INTO {t} (id, account, amount, updated, meta) VALUES \
         (1, 'acme', 10.5, TIMESTAMP '2026-01-01 00:00:01+00', JSON '{{\"k\": 1}}'), \
         (2, \"it's\", 20, TIMESTAMP '2026-01-01 00:00:02+00', NULL), \
         (3, 'acme', NULL, TIMESTAMP '2026-01-01 00:00:03+00', JSON '[1, 2]')"
    ))
    .await;
    let schema: TableRef = Arc::new(TableSchema::new(
        "invoices",
        vec![
            ColumnDef::new("account", ColumnType::String),
            ColumnDef::new("amount", ColumnType::Number),
            ColumnDef::new("updated", ColumnType::Timestamp),
            ColumnDef::new("meta", ColumnType::Json),
        ],
    ));
    let state = tempfile::tempdir().expect("state");
    let source = |strategy: BigQueryStrategy| {
        BigQuerySource::new(
            "poll",
            config.clone(),
            vec![BigQueryTableSpec {
                schema: Arc::clone(&schema),
                strategy,
                id_column: "id".into(),
            }],
            BigQuerySourceOptions {
                parallelism: 1,
                batch_size: 2,
                state_dir: Some(state.path().to_path_buf()),
            },
        )
        .expect("source")
    };
    let mut cursor = source(BigQueryStrategy::Cursor {
        cursor_column: "updated".into(),
    });
    let first = read_all(&mut cursor, None, ReadMode::Once).await;
    let got = read_deltas(&first);
    assert_eq!(
        got.iter().map(|d| d.row_id.as_str()).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    assert_eq!(got[0].columns[3].value, json!({"k": 1}));
    assert_eq!(got[0].columns[2].value, json!("2026-01-01T00:00:01Z"));
    assert_eq!(got[1].columns[0].value, json!("it's"));
    run(format!(
        "UPDATE {t} SET amount = 11, updated = TIMESTAMP '2026-01-01 00:00:05+00' WHERE id = 1"
    ))
    .await;
    let after = first.last().expect("batch").position.clone();
    let next = read_deltas(&read_all(&mut cursor, Some(after.clone()), ReadMode::Once).await);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].row_id, "1");
    assert_eq!(next[0].columns[1].value, json!(11));

    let mut diff = source(BigQueryStrategy::Diff);
    let d1 = read_all(&mut diff, None, ReadMode::Once).await;
    assert_eq!(read_deltas(&d1).len(), 3);
    run(format!("DELETE FROM {t} WHERE id = 2")).await;
    run(format!("UPDATE {t} SET account = 'globex' WHERE id = 3")).await;
    let d2 = read_deltas(
        &read_all(
            &mut diff,
            Some(d1.last().expect("b").position.clone()),
            ReadMode::Once,
        )
        .await,
    );
    let ops: Vec<(String, lakesync::kernel::delta::DeltaOp)> =
        d2.iter().map(|d| (d.row_id.clone(), d.op)).collect();
    use lakesync::kernel::delta::DeltaOp;
    assert_eq!(
        ops,
        vec![
            ("3".to_string(), DeltaOp::Update),
            ("2".to_string(), DeltaOp::Delete)
        ]
    );
}

#[test]
fn hostile_bigquery_names_are_refused_with_their_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let tasks = serde_json::to_string(&tasks_schema()).expect("schema");
    let yaml = format!(
        r#"version: 1
name: hostile
tables:
  - {tasks}
sources:
  wh:
    type: bigquery
    project: "p`; DROP"
    dataset: "fin.x"
    endpoint: "not a url"
    tables:
      - {{table: tasks, strategy: cursor, cursor_column: "due`", id_column: "id; --"}}
      - {{table: "ta`sks", strategy: cdc}}
sinks:
  out:
    type: bigquery
    input: wh
    project: test-proj
    dataset: "a`b"
"#
    );
    let file = dir.path().join("hostile.yaml");
    std::fs::write(&file, yaml).expect("pipeline");
    let err = lakesync::config::load_plan(&file, &lakesync::config::Env::process())
        .expect_err("refused")
        .to_string();
    for path in [
        "sources.wh.project",
        "sources.wh.dataset",
        "sources.wh.endpoint",
        "sources.wh.tables[0].cursor_column",
        "sources.wh.tables[0].id_column",
        "sources.wh.tables[1].table",
        "sources.wh.tables[1].strategy",
        "sinks.out.dataset",
    ] {
        assert!(err.contains(path), "{path} in {err}");
    }
}
