//! The Iceberg sink, the lake query and pyiceberg interop, on the embedded lake: the SQL
//! catalogue on a SQLite file and a local-file warehouse, in a temporary directory.
//!
//! Reading the rows back — natively through an Iceberg scan, through `lakesync::query`, and
//! through pyiceberg — is what proves that every commit is a real snapshot whose manifests
//! reference the data files.

// Tests state what they expected when a step fails; that is what `expect` is for.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use futures::TryStreamExt;
use lakesync::adapters::iceberg::mapping::to_delta_batch;
use lakesync::adapters::iceberg::sink::{EPOCH_PROPERTY, PIPELINE_PROPERTY, SINK_PROPERTY};
use lakesync::adapters::iceberg::{IcebergCatalogConfig, IcebergSink, connect};
use lakesync::kernel::delta::RowDelta;
use lakesync::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
use lakesync::kernel::schema::{ColumnDef, ColumnType, TableSchema};
use lakesync::query::query;
use lakesync::runtime::api::{CommitStats, Sink, TableRef};
use lakesync::synth::{Workload, tasks_schema};
use lakesync::{Error, ErrorKind};
use serde_json::Value;

use crate::support;

/// A throw-away lake.
struct Lake {
    _dir: tempfile::TempDir,
    db: PathBuf,
    warehouse: PathBuf,
    config: IcebergCatalogConfig,
}

fn lake() -> Lake {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let db = dir.path().join("catalog.sqlite");
    let warehouse = dir.path().join("warehouse");
    let config = IcebergCatalogConfig::sql(&db, &warehouse);
    Lake {
        _dir: dir,
        db,
        warehouse,
        config,
    }
}

pub(crate) const WALL_MS: u64 = 1_780_000_000_000;

pub(crate) fn tasks() -> TableRef {
    Arc::new(tasks_schema())
}

/// `count` synthetic deltas of `tasks` (inserts, column-level updates, deletes).
pub(crate) fn task_deltas(count: usize, seed: u64, start_wall_ms: u64) -> Vec<RowDelta> {
    Workload::new(60, 4, seed).deltas(count, start_wall_ms)
}

/// Deltas as the delta contract round-trips them (JSON numbers normalised), by deltaId.
pub(crate) fn canonical(table: &TableSchema, batches: &[RecordBatch]) -> Vec<RowDelta> {
    let mut out: Vec<RowDelta> = batches
        .iter()
        .flat_map(|b| batch_to_deltas(b).expect("a delta batch converts to rows"))
        .collect();
    out.sort_by_key(|d| d.delta_id.0);
    assert!(out.iter().all(|d| d.table == table.table));
    out
}

/// What the lake returned, as delta rows by deltaId.
pub(crate) fn lake_deltas(table: &TableSchema, batches: &[RecordBatch]) -> Vec<RowDelta> {
    let deltas: Vec<RecordBatch> = batches
        .iter()
        .map(|b| to_delta_batch(table, b).expect("a lake batch converts to a delta batch"))
        .collect();
    canonical(table, &deltas)
}

pub(crate) async fn write(sink: &mut IcebergSink, table: &TableRef, deltas: &[RowDelta]) {
    // Two writes per call, so that commits cover several buffered batches.
    let (a, b) = deltas.split_at(deltas.len() / 2);
    for part in [a, b] {
        let batch = deltas_to_batch(table, part).expect("build a delta batch");
        sink.write(table, batch).await.expect("sink write");
    }
}

/// A sink of pipeline `p` into the `lakesync` namespace of `config`, prepared for `tasks`,
/// with `deltas` committed `per_epoch` at a time as epochs 1, 2, …; returns the sink and the
/// last epoch, for more epochs.
pub(crate) async fn tasks_lake(
    config: &IcebergCatalogConfig,
    deltas: &[RowDelta],
    per_epoch: usize,
) -> (IcebergSink, u64) {
    let table = tasks();
    let mut sink = IcebergSink::connect(config, "lakesync", "p", "lake")
        .await
        .expect("sink");
    sink.prepare(std::slice::from_ref(&table))
        .await
        .expect("prepare");
    let mut epoch = 0;
    for part in deltas.chunks(per_epoch) {
        epoch += 1;
        commit_epoch(&mut sink, epoch, part).await;
    }
    (sink, epoch)
}

/// `row id → title` of the live rows of the kernel merge of `deltas` (of `tasks`): what a
/// materialised `tasks` table must hold.
pub(crate) fn live_titles(
    deltas: &[RowDelta],
) -> std::collections::BTreeMap<String, Option<String>> {
    use arrow::array::{Array, AsArray};
    let table = tasks();
    let state = lakesync::kernel::merge::merge(
        &table,
        None,
        &[deltas_to_batch(&table, deltas).expect("batch")],
    )
    .expect("merge");
    let deleted = state.column(2).as_boolean();
    let ids = state.column(0).as_string::<i32>();
    let titles = state
        .column_by_name("title")
        .expect("title")
        .as_string::<i32>();
    (0..state.num_rows())
        .filter(|&i| !deleted.value(i))
        .map(|i| {
            (
                ids.value(i).to_string(),
                (!titles.is_null(i)).then(|| titles.value(i).to_string()),
            )
        })
        .collect()
}

/// Writes `part` (deltas of `tasks`) as epoch `epoch` of `sink` and commits it.
pub(crate) async fn commit_epoch(sink: &mut IcebergSink, epoch: u64, part: &[RowDelta]) {
    let table = tasks();
    sink.begin_epoch(epoch, WALL_MS);
    sink.write(&table, deltas_to_batch(&table, part).expect("batch"))
        .await
        .expect("write");
    sink.commit(epoch).await.expect("commit");
}

/// The table's current metadata, loaded afresh.
async fn load(config: &IcebergCatalogConfig, table: &str) -> ::iceberg::table::Table {
    let catalog = connect(config).await.expect("connect to the catalog");
    let ident = ::iceberg::TableIdent::from_strs(["lakesync", table]).expect("table ident");
    catalog.load_table(&ident).await.expect("load the table")
}

/// Every row of the table's current snapshot, through iceberg-rust's own scan.
async fn scan_native(config: &IcebergCatalogConfig, table: &str) -> Vec<RecordBatch> {
    load(config, table)
        .await
        .scan()
        .select_all()
        .build()
        .expect("plan a scan")
        .to_arrow()
        .await
        .expect("start the scan")
        .try_collect()
        .await
        .expect("scan the table")
}

async fn count(config: &IcebergCatalogConfig, sql: &str) -> i64 {
    let batches = query(config, sql).await.expect("count query");
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn sink_commits_each_epoch_as_one_snapshot_and_drops_replays() {
    let lake = lake();
    let tasks = tasks();
    let mut sink = IcebergSink::connect(&lake.config, "lakesync", "quickstart", "lake")
        .await
        .expect("connect the sink");
    sink.prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare");
    assert_eq!(sink.committed_epoch().await.expect("committed_epoch"), None);

    let epoch1 = task_deltas(300, 1, WALL_MS);
    let epoch2 = task_deltas(200, 2, WALL_MS + 60_000);
    write(&mut sink, &tasks, &epoch1).await;
    let stats1 = sink.commit(1).await.expect("commit epoch 1");
    assert_eq!(stats1.rows, 300);
    assert!(stats1.bytes > 0);
    write(&mut sink, &tasks, &epoch2).await;
    let stats2 = sink.commit(2).await.expect("commit epoch 2");
    assert_eq!(stats2.rows, 200);
    assert_eq!(
        sink.committed_epoch().await.expect("committed_epoch"),
        Some(2)
    );
    // Nothing buffered: a commit adds no snapshot.
    assert_eq!(
        sink.commit(3).await.expect("empty commit"),
        CommitStats::default()
    );

    // One snapshot per epoch, each marked with pipeline, sink and epoch.
    let table = load(&lake.config, "tasks").await;
    let metadata = table.metadata();
    assert_eq!(metadata.snapshots().len(), 2);
    let current = metadata.current_snapshot().expect("a current snapshot");
    let summary = &current.summary().additional_properties;
    assert_eq!(summary[PIPELINE_PROPERTY], "quickstart");
    assert_eq!(summary[SINK_PROPERTY], "lake");
    assert_eq!(summary[EPOCH_PROPERTY], "2");
    assert_eq!(summary["added-records"], "200");
    assert_eq!(summary["total-records"], "500");

    // What was written comes back, exactly: natively and through the query engine.
    let all: Vec<RowDelta> = epoch1.iter().chain(&epoch2).cloned().collect();
    let expected = canonical(&tasks, &[deltas_to_batch(&tasks, &all).expect("batch")]);
    let native = scan_native(&lake.config, "tasks").await;
    assert_eq!(lake_deltas(&tasks, &native), expected);
    let queried = query(&lake.config, "SELECT * FROM lake.lakesync.tasks")
        .await
        .expect("query");
    assert_eq!(lake_deltas(&tasks, &queried), expected);
    assert_eq!(
        count(&lake.config, "SELECT count(*) FROM lakesync.tasks").await,
        500
    );
    assert_eq!(
        count(&lake.config, "SELECT count(*) FROM tasks WHERE _op = 3").await,
        all.iter().filter(|d| d.op.code() == 3).count() as i64
    );

    // A replay of a committed epoch adds nothing, in this sink and in a restarted one.
    write(&mut sink, &tasks, &epoch1).await;
    assert_eq!(
        sink.commit(1).await.expect("replayed commit"),
        CommitStats::default()
    );
    let mut restarted = IcebergSink::connect(&lake.config, "lakesync", "quickstart", "lake")
        .await
        .expect("reconnect");
    restarted
        .prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare again");
    assert_eq!(
        restarted.committed_epoch().await.expect("committed_epoch"),
        Some(2)
    );
    write(&mut restarted, &tasks, &epoch2).await;
    assert_eq!(
        restarted.commit(2).await.expect("replayed commit"),
        CommitStats::default()
    );
    assert_eq!(
        load(&lake.config, "tasks")
            .await
            .metadata()
            .snapshots()
            .len(),
        2
    );
    assert_eq!(count(&lake.config, "SELECT count(*) FROM tasks").await, 500);

    // Epoch marks are per pipeline and sink: another pipeline's epoch 1 is its own.
    let mut other = IcebergSink::connect(&lake.config, "lakesync", "backfill", "lake")
        .await
        .expect("connect another pipeline");
    other
        .prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare");
    assert_eq!(
        other.committed_epoch().await.expect("committed_epoch"),
        None
    );
    write(&mut other, &tasks, &task_deltas(10, 3, WALL_MS + 120_000)).await;
    assert_eq!(other.commit(1).await.expect("commit").rows, 10);
    assert_eq!(
        other.committed_epoch().await.expect("committed_epoch"),
        Some(1)
    );
    assert_eq!(
        restarted.committed_epoch().await.expect("committed_epoch"),
        Some(2)
    );
    assert_eq!(count(&lake.config, "SELECT count(*) FROM tasks").await, 510);
}

#[tokio::test]
async fn later_prepares_add_tables_and_evolve_schemas() {
    let lake = lake();
    let tasks = tasks();
    let mut sink = IcebergSink::connect(&lake.config, "lakesync", "p", "lake")
        .await
        .expect("connect the sink");
    sink.prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare");
    let epoch1 = task_deltas(100, 4, WALL_MS);
    write(&mut sink, &tasks, &epoch1).await;
    sink.commit(1).await.expect("commit epoch 1");

    // A new table appears; committed_epoch is the newest mark over the tables.
    let notes: TableRef = Arc::new(TableSchema::new(
        "notes",
        vec![ColumnDef::new("body", ColumnType::String)],
    ));
    // The tasks table gains a column.
    let mut wider = tasks_schema();
    wider
        .columns
        .push(ColumnDef::new("points", ColumnType::Integer));
    let wider: TableRef = Arc::new(wider);
    sink.prepare(&[wider.clone(), notes.clone()])
        .await
        .expect("prepare the evolved schema and the new table");
    assert_eq!(
        sink.committed_epoch().await.expect("committed_epoch"),
        Some(1)
    );
    let fields: Vec<String> = load(&lake.config, "tasks")
        .await
        .metadata()
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(fields.last().map(String::as_str), Some("points"));

    let mut epoch2 = task_deltas(50, 5, WALL_MS + 60_000);
    for (i, d) in epoch2.iter_mut().enumerate() {
        if d.op.code() != 3 && i % 2 == 0 {
            d.columns.push(lakesync::kernel::delta::ColumnDelta::new(
                "points",
                serde_json::json!(i),
            ));
            *d = RowDelta::new(
                d.op,
                "tasks",
                d.row_id.clone(),
                d.client_id.clone(),
                d.columns.clone(),
                d.hlc,
            );
        }
    }
    let with_points = epoch2
        .iter()
        .filter(|d| d.columns.iter().any(|c| c.column == "points"))
        .count();
    assert!(with_points > 0);
    write(&mut sink, &wider, &epoch2).await;
    let note_deltas: Vec<RowDelta> = (0..7)
        .map(|i| {
            RowDelta::new(
                lakesync::kernel::delta::DeltaOp::Insert,
                "notes",
                format!("n{i}"),
                "client-n",
                vec![lakesync::kernel::delta::ColumnDelta::new(
                    "body",
                    serde_json::json!(format!("note {i}")),
                )],
                lakesync::kernel::hlc::HlcTimestamp(((WALL_MS + 70_000) << 16) | i),
            )
        })
        .collect();
    write(&mut sink, &notes, &note_deltas).await;
    let stats = sink.commit(2).await.expect("commit epoch 2");
    assert_eq!(stats.rows, 57);
    assert_eq!(
        sink.committed_epoch().await.expect("committed_epoch"),
        Some(2)
    );

    assert_eq!(count(&lake.config, "SELECT count(*) FROM notes").await, 7);
    assert_eq!(
        count(&lake.config, "SELECT count(points) FROM tasks").await,
        with_points as i64
    );
    // Old rows read back under the wider schema: `points` untouched by every one of them.
    let all: Vec<RowDelta> = epoch1.iter().chain(&epoch2).cloned().collect();
    let expected = canonical(&wider, &[deltas_to_batch(&wider, &all).expect("batch")]);
    let native = scan_native(&lake.config, "tasks").await;
    assert_eq!(lake_deltas(&wider, &native), expected);

    // A change that is not add-only is refused, naming the table and the column.
    let mut retyped = tasks_schema();
    retyped.columns[3].column_type = ColumnType::Number;
    let err = sink
        .prepare(&[Arc::new(retyped)])
        .await
        .expect_err("a retyped column is refused");
    assert_eq!(err.kind(), ErrorKind::User);
    let message = err.to_string();
    assert!(
        message.contains("lakesync.tasks") && message.contains("\"priority\""),
        "{message}"
    );
    assert!(matches!(err, Error::Schema(_)), "{err:?}");

    // A batch for a table the sink was not prepared for is refused.
    let stranger: TableRef = Arc::new(TableSchema::new("stranger", vec![]));
    let empty = sink
        .write(
            &stranger,
            deltas_to_batch(&stranger, &[]).expect("empty batch"),
        )
        .await;
    assert!(empty.is_ok(), "an empty batch is ignored");
    let one = RowDelta::new(
        lakesync::kernel::delta::DeltaOp::Delete,
        "stranger",
        "r",
        "c",
        vec![],
        lakesync::kernel::hlc::HlcTimestamp(1),
    );
    let err = sink
        .write(
            &stranger,
            deltas_to_batch(&stranger, &[one]).expect("batch"),
        )
        .await
        .expect_err("unprepared table");
    assert!(err.to_string().contains("\"stranger\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_retry_and_never_duplicate_an_epoch() {
    let lake = lake();
    let tasks = tasks();
    let connect_sink = |pipeline: &'static str| {
        let config = lake.config.clone();
        let tasks = tasks.clone();
        async move {
            let mut sink = IcebergSink::connect(&config, "lakesync", pipeline, "lake")
                .await
                .expect("connect the sink");
            sink.prepare(std::slice::from_ref(&tasks))
                .await
                .expect("prepare");
            sink
        }
    };
    let deltas = task_deltas(120, 8, WALL_MS);

    // Two instances of the same pipeline and sink race to commit the same epoch: one snapshot.
    let (mut a, mut b) = (connect_sink("p").await, connect_sink("p").await);
    write(&mut a, &tasks, &deltas).await;
    write(&mut b, &tasks, &deltas).await;
    let (ra, rb) = tokio::join!(a.commit(1), b.commit(1));
    let rows = ra.expect("commit a").rows + rb.expect("commit b").rows;
    assert_eq!(rows, 120, "exactly one of the racing commits lands");
    assert_eq!(
        load(&lake.config, "tasks")
            .await
            .metadata()
            .snapshots()
            .len(),
        1
    );

    // Different pipelines race: both land, one after the other (a conflict is retried).
    let (mut c, mut d) = (connect_sink("q").await, connect_sink("r").await);
    write(&mut c, &tasks, &deltas).await;
    write(&mut d, &tasks, &deltas).await;
    let (rc, rd) = tokio::join!(c.commit(1), d.commit(1));
    assert_eq!(rc.expect("commit c").rows, 120);
    assert_eq!(rd.expect("commit d").rows, 120);
    assert_eq!(
        load(&lake.config, "tasks")
            .await
            .metadata()
            .snapshots()
            .len(),
        3
    );
    assert_eq!(count(&lake.config, "SELECT count(*) FROM tasks").await, 360);
    for sink in [&mut a, &mut c, &mut d] {
        assert_eq!(
            sink.committed_epoch().await.expect("committed_epoch"),
            Some(1)
        );
    }
}

/// One JSON object per row, in the canonical form tests/python/read_iceberg.py prints.
pub(crate) fn json_rows(batches: &[RecordBatch]) -> Vec<Value> {
    let mut rows = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut row = serde_json::Map::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                row.insert(field.name().clone(), json_cell(column, i));
            }
            rows.push(Value::Object(row));
        }
    }
    rows.sort_by(|a, b| a["_delta_id"].as_str().cmp(&b["_delta_id"].as_str()));
    rows
}

fn json_cell(column: &ArrayRef, i: usize) -> Value {
    if column.is_null(i) {
        return Value::Null;
    }
    match column.data_type() {
        DataType::Int32 => Value::from(column.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => Value::from(column.as_primitive::<Int64Type>().value(i)),
        DataType::Float64 => Value::from(column.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => Value::from(column.as_boolean().value(i)),
        DataType::Utf8 => Value::from(column.as_string::<i32>().value(i)),
        DataType::Utf8View => Value::from(column.as_string_view().value(i)),
        DataType::LargeUtf8 => Value::from(column.as_string::<i64>().value(i)),
        DataType::FixedSizeBinary(_) => Value::from(
            column
                .as_fixed_size_binary()
                .value(i)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        ),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => {
            Value::from(column.as_primitive::<TimestampMicrosecondType>().value(i))
        }
        DataType::List(_) => {
            let values = column.as_list::<i32>().value(i);
            Value::Array((0..values.len()).map(|j| json_cell(&values, j)).collect())
        }
        other => panic!("no canonical JSON form for {other}"),
    }
}

#[tokio::test]
async fn pyiceberg_reads_what_lakesync_wrote() {
    let Some(python) = support::service_env("pyiceberg", "LAKESYNC_PYTHON") else {
        return;
    };
    let lake = lake();
    let tasks = tasks();
    let mut sink = IcebergSink::connect(&lake.config, "lakesync", "quickstart", "lake")
        .await
        .expect("connect the sink");
    sink.prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare");
    write(&mut sink, &tasks, &task_deltas(400, 6, WALL_MS)).await;
    sink.commit(1).await.expect("commit epoch 1");
    write(&mut sink, &tasks, &task_deltas(250, 7, WALL_MS + 60_000)).await;
    sink.commit(2).await.expect("commit epoch 2");

    let ours = json_rows(
        &query(&lake.config, "SELECT * FROM lakesync.tasks")
            .await
            .expect("query"),
    );
    assert_eq!(ours.len(), 650);

    let theirs = pyiceberg_rows(
        &python,
        &lake.db,
        &lake.warehouse,
        "lakesync.tasks",
        lake.config.name(),
    );
    assert_eq!(theirs.len(), ours.len(), "row counts differ");
    eprintln!("pyiceberg's first row: {}", theirs[0]);
    for (a, b) in theirs.iter().zip(&ours) {
        assert_eq!(a, b, "pyiceberg and lakesync::query disagree on a row");
    }
}

/// The rows tests/python/read_iceberg.py (pyiceberg) reads from a table, in canonical form.
fn pyiceberg_rows(
    python: &str,
    db: &std::path::Path,
    warehouse: &std::path::Path,
    table: &str,
    catalog: &str,
) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_iceberg.py");
    let started = Instant::now();
    let output = Command::new(python)
        .arg(&script)
        .arg(db)
        .arg(warehouse)
        .arg(table)
        .arg(catalog)
        .output()
        .expect("run the pyiceberg reader");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pyiceberg reader failed:\n{stderr}"
    );
    eprintln!("pyiceberg: {} (process {elapsed:.2?})", stderr.trim());
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// The README's quickstart, then pyiceberg (SQL catalogue on the same SQLite file) reads the
/// Iceberg table it wrote and gets the same rows as `lakesync query`.
#[tokio::test]
async fn pyiceberg_reads_the_quickstart_lake() {
    let Some(python) = support::service_env("pyiceberg", "LAKESYNC_PYTHON") else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");
    support::copy_tree(&root.join("pipelines"), &dir.path().join("pipelines"), &[]);
    support::copy_tree(&root.join("examples"), &dir.path().join("examples"), &[]);
    let plan = lakesync::config::load_plan(
        &dir.path().join("pipelines/quickstart.yaml"),
        &lakesync::config::Env::process(),
    )
    .expect("quickstart validates");
    let graph = lakesync::build::build(&plan)
        .await
        .expect("build the quickstart");
    let options = lakesync::runtime::pipeline::RunOptions {
        mode: lakesync::runtime::api::ReadMode::Once,
        progress: false,
    };
    let summary = lakesync::runtime::pipeline::run(graph, options, std::future::pending())
        .await
        .expect("run the quickstart");
    assert!(
        summary.sinks["lake"].rows > 0,
        "the quickstart wrote nothing to the lake"
    );

    let config = IcebergCatalogConfig::sql(
        dir.path().join("lake/catalog.sqlite"),
        dir.path().join("lake/warehouse"),
    );
    let ours = json_rows(
        &query(&config, "SELECT * FROM lakesync.tasks")
            .await
            .expect("query"),
    );
    assert_eq!(ours.len() as u64, summary.sinks["lake"].rows);
    let theirs = pyiceberg_rows(
        &python,
        &dir.path().join("lake/catalog.sqlite"),
        &dir.path().join("lake/warehouse"),
        "lakesync.tasks",
        config.name(),
    );
    assert_eq!(
        theirs, ours,
        "pyiceberg and lakesync query disagree on the quickstart's table"
    );
}

/// New tables are partitioned by `day(_hlc_time)`: a commit spanning three days writes one data
/// file per day, under the partition's directory, and a filter on `_hlc_time` reads the right
/// rows. A table made before partitioning (no `_hlc_time`, unpartitioned) keeps working.
#[tokio::test]
async fn new_tables_are_partitioned_by_hlc_day_and_old_ones_keep_working() {
    use ::iceberg::spec::{Schema, Transform};
    use lakesync::adapters::iceberg::mapping::{HLC_DAY, HLC_TIME, iceberg_schema};

    const DAY_MS: u64 = 86_400_000;
    let lake = lake();
    let tasks = tasks();
    let mut sink = IcebergSink::connect(&lake.config, "lakesync", "p", "lake")
        .await
        .expect("connect the sink");

    // An "old" table: the schema without _hlc_time, no partition spec.
    let legacy: TableRef = Arc::new(TableSchema::new(
        "legacy",
        vec![ColumnDef::new("body", ColumnType::String)],
    ));
    let catalog = connect(&lake.config).await.expect("connect");
    let ns = ::iceberg::NamespaceIdent::new("lakesync".into());
    catalog
        .create_namespace(&ns, Default::default())
        .await
        .expect("create the namespace");
    let fields: Vec<_> = iceberg_schema(&legacy)
        .expect("schema")
        .as_struct()
        .fields()
        .iter()
        .filter(|f| f.name != HLC_TIME)
        .cloned()
        .collect();
    let old_schema = Schema::builder()
        .with_fields(fields)
        .build()
        .expect("old schema");
    catalog
        .create_table(
            &ns,
            ::iceberg::TableCreation::builder()
                .name("legacy".into())
                .schema(old_schema)
                .build(),
        )
        .await
        .expect("create the old table");

    sink.prepare(&[tasks.clone(), legacy.clone()])
        .await
        .expect("prepare");
    let days: Vec<RowDelta> = (0..3)
        .flat_map(|d| task_deltas(100, 30 + d, WALL_MS + d * DAY_MS))
        .collect();
    write(&mut sink, &tasks, &days).await;
    let notes: Vec<RowDelta> = (0..5)
        .map(|i| {
            RowDelta::new(
                lakesync::kernel::delta::DeltaOp::Insert,
                "legacy",
                format!("n{i}"),
                "c",
                vec![lakesync::kernel::delta::ColumnDelta::new(
                    "body",
                    serde_json::json!(format!("note {i}")),
                )],
                lakesync::kernel::hlc::HlcTimestamp(((WALL_MS + i * DAY_MS) << 16) | i),
            )
        })
        .collect();
    write(&mut sink, &legacy, &notes).await;
    assert_eq!(sink.commit(1).await.expect("commit").rows, 305);

    // The new table: day(_hlc_time), one file per day in the partition's directory.
    let table = load(&lake.config, "tasks").await;
    let spec = table.metadata().default_partition_spec();
    assert_eq!(spec.fields().len(), 1);
    assert_eq!(spec.fields()[0].name, HLC_DAY);
    assert_eq!(spec.fields()[0].transform, Transform::Day);
    let files: Vec<String> = table
        .scan()
        .build()
        .expect("plan")
        .plan_files()
        .await
        .expect("plan files")
        .map_ok(|t| t.data_file_path().to_string())
        .try_collect()
        .await
        .expect("files");
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.contains(&format!("/data/{HLC_DAY}="))),
        "{files:?}"
    );
    let expected = canonical(&tasks, &[deltas_to_batch(&tasks, &days).expect("batch")]);
    assert_eq!(
        lake_deltas(&tasks, &scan_native(&lake.config, "tasks").await),
        expected
    );
    // _hlc_time is the HLC's wall clock, in microseconds.
    let hlc_times = query(
        &lake.config,
        "SELECT count(*) FROM tasks WHERE CAST(_hlc_time AS BIGINT) <> (_hlc / 65536) * 1000",
    )
    .await
    .expect("hlc time check");
    assert_eq!(
        hlc_times[0].column(0).as_primitive::<Int64Type>().value(0),
        0
    );
    let day_start = WALL_MS + DAY_MS - WALL_MS % DAY_MS;
    assert_eq!(
        count(
            &lake.config,
            &format!(
                "SELECT count(*) FROM tasks WHERE _hlc_time >= to_timestamp_millis({day_start})"
            )
        )
        .await,
        200
    );

    // Epoch 2: a batch within one day (written whole to its day) and a batch across two days
    // (split row by row) reach the same per-day writer: one new file per day.
    let same_day = task_deltas(40, 40, WALL_MS);
    let mut across = task_deltas(20, 41, WALL_MS + 100);
    across.extend(task_deltas(20, 42, WALL_MS + 3 * DAY_MS));
    for part in [&same_day, &across] {
        let batch = deltas_to_batch(&tasks, part).expect("batch");
        sink.write(&tasks, batch).await.expect("write");
    }
    assert_eq!(sink.commit(2).await.expect("commit 2").rows, 80);
    let table = load(&lake.config, "tasks").await;
    let files: Vec<String> = table
        .scan()
        .build()
        .expect("plan")
        .plan_files()
        .await
        .expect("plan files")
        .map_ok(|t| t.data_file_path().to_string())
        .try_collect()
        .await
        .expect("files");
    assert_eq!(files.len(), 5, "{files:?}");
    let mut partitions: Vec<&str> = files
        .iter()
        .filter_map(|f| f.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    partitions.sort();
    partitions.dedup();
    assert_eq!(partitions.len(), 4, "{partitions:?}");
    assert_eq!(
        count(
            &lake.config,
            &format!(
                "SELECT count(*) FROM tasks WHERE _hlc_time >= to_timestamp_millis({day_start})"
            )
        )
        .await,
        220
    );
    let all: Vec<RowDelta> = days
        .iter()
        .chain(&same_day)
        .chain(&across)
        .cloned()
        .collect();
    let expected = canonical(&tasks, &[deltas_to_batch(&tasks, &all).expect("batch")]);
    assert_eq!(
        lake_deltas(&tasks, &scan_native(&lake.config, "tasks").await),
        expected
    );

    // The old table stays unpartitioned, without _hlc_time, and takes the writes.
    let old = load(&lake.config, "legacy").await;
    assert!(old.metadata().default_partition_spec().is_unpartitioned());
    assert!(
        old.metadata()
            .current_schema()
            .field_by_name(HLC_TIME)
            .is_none()
    );
    let expected = canonical(&legacy, &[deltas_to_batch(&legacy, &notes).expect("batch")]);
    assert_eq!(
        lake_deltas(&legacy, &scan_native(&lake.config, "legacy").await),
        expected
    );
}
