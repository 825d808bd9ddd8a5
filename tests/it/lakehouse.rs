//! The lakehouse: the Iceberg sink and `lakesync query` on an Iceberg REST catalogue with its
//! warehouse on S3-compatible object storage (SeaweedFS's `weed mini`: S3 on one port, the
//! REST catalogue on another), as `scripts/services.sh` starts them; and the Parquet sink on
//! S3.
//!
//! Each test writes into a namespace of its own, so reruns against the same services never
//! collide. pyiceberg (`tests/python/read_iceberg_rest.py`) is the independent reader: it sees
//! the rows, the `day(_hlc_time)` partition spec and the snapshot summaries LakeSync wrote; DuckDB
//! 1.5.5's iceberg extension (`tests/python/read_duckdb_iceberg.py`) is a second one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};

use ::iceberg::spec::Transform;
use ::iceberg::{NamespaceIdent, TableIdent};
use futures::TryStreamExt;
use lakesync::adapters::iceberg::compact::{CompactionOptions, CompactionOutcome, compact_table};
use lakesync::adapters::iceberg::maintenance::{
    ExpireOptions, OrphanOptions, clean_orphans, expire_snapshots,
};
use lakesync::adapters::iceberg::mapping::{HLC_DAY, HLC_TIME};
use lakesync::adapters::iceberg::read::{ReadOptions, read_table, state_of};
use lakesync::adapters::iceberg::sink::{EPOCH_PROPERTY, PIPELINE_PROPERTY, SINK_PROPERTY};
use lakesync::adapters::iceberg::{IcebergCatalogConfig, IcebergSink, S3Config, connect};
use lakesync::kernel::delta::RowDelta;
use lakesync::kernel::delta_batch::deltas_to_batch;
use lakesync::kernel::merge::merge;
use lakesync::query::query;
use lakesync::runtime::api::{CommitStats, Sink};
use lakesync::{Error, ErrorKind};
use object_store::ObjectStoreExt;
use serde_json::Value;

use crate::iceberg::{WALL_MS, canonical, json_rows, lake_deltas, task_deltas, tasks, write};
use crate::support::{self, unique_name};

const DAY_MS: u64 = 86_400_000;

/// Where the services are (from `scripts/services.sh`), or `None` when they are not running.
struct Services {
    rest_uri: String,
    warehouse: String,
    s3_endpoint: String,
    bucket: String,
    key: String,
    secret: String,
    region: String,
}

fn services() -> Option<Services> {
    let rest_uri = support::service_env("iceberg-rest", "LAKESYNC_ICEBERG_REST_URI")?;
    let warehouse = support::service_env("iceberg-rest", "LAKESYNC_ICEBERG_WAREHOUSE")?;
    let s3_endpoint = support::service_env("s3", "LAKESYNC_S3_ENDPOINT")?;
    let bucket = support::service_env("s3", "LAKESYNC_S3_BUCKET")?;
    let key = support::service_env("s3", "AWS_ACCESS_KEY_ID")?;
    let secret = support::service_env("s3", "AWS_SECRET_ACCESS_KEY")?;
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    Some(Services {
        rest_uri,
        warehouse,
        s3_endpoint,
        bucket,
        key,
        secret,
        region,
    })
}

impl Services {
    fn s3(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.s3_endpoint.clone()),
            region: Some(self.region.clone()),
            access_key_id: Some(self.key.clone()),
            secret_access_key: Some(self.secret.clone()),
            ..Default::default()
        }
    }

    fn catalog(&self) -> IcebergCatalogConfig {
        IcebergCatalogConfig::Rest {
            uri: self.rest_uri.clone(),
            warehouse: self.warehouse.clone(),
            name: "lakesync".into(),
            credential: Some(format!("{}:{}", self.key, self.secret)),
            token: None,
            s3: self.s3(),
        }
    }
}

/// The table's current metadata, loaded afresh.
async fn load(
    config: &IcebergCatalogConfig,
    namespace: &str,
    table: &str,
) -> ::iceberg::table::Table {
    let catalog = connect(config).await.expect("connect to the catalog");
    let ident = TableIdent::from_strs([namespace, table]).expect("table ident");
    catalog.load_table(&ident).await.expect("load the table")
}

/// Drops what a test made (best effort: a failed test leaves its namespace for inspection).
async fn drop_namespace(config: &IcebergCatalogConfig, namespace: &str) {
    let catalog = connect(config).await.expect("connect to the catalog");
    let ns = NamespaceIdent::new(namespace.to_string());
    for table in catalog.list_tables(&ns).await.unwrap_or_default() {
        let _ = catalog.purge_table(&table).await;
    }
    let _ = catalog.drop_namespace(&ns).await;
}

/// What pyiceberg sees of a table through the REST catalogue.
struct PyIceberg {
    rows: Vec<Value>,
    partition_spec: Value,
    snapshots: Vec<BTreeMap<String, String>>,
}

fn pyiceberg_read(python: &str, services: &Services, table: &str) -> PyIceberg {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_iceberg_rest.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(&services.rest_uri)
        .arg(&services.warehouse)
        .arg(table)
        .env("LAKESYNC_S3_ENDPOINT", &services.s3_endpoint)
        .env("AWS_ACCESS_KEY_ID", &services.key)
        .env("AWS_SECRET_ACCESS_KEY", &services.secret)
        .env("AWS_REGION", &services.region)
        .output()
        .expect("run the pyiceberg REST reader");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pyiceberg REST reader failed:\n{stderr}"
    );
    eprintln!("pyiceberg: {}", stderr.trim());
    let doc: Value = serde_json::from_slice(&output.stdout).expect("a JSON document");
    let mut rows = doc["rows"].as_array().expect("rows").clone();
    rows.sort_by(|a, b| a["_delta_id"].as_str().cmp(&b["_delta_id"].as_str()));
    PyIceberg {
        rows,
        partition_spec: doc["partition_spec"].clone(),
        snapshots: serde_json::from_value(doc["snapshots"].clone()).expect("snapshot summaries"),
    }
}

/// What DuckDB's iceberg extension reads of a table through the REST catalogue
/// (`tests/python/read_duckdb_iceberg.py`), or `None` (with a notice) when the extension
/// wheels are not installed: then a local run skips this reader, and CI fails.
fn duckdb_read(python: &str, services: &Services, table: &str) -> Option<Value> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_duckdb_iceberg.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(&services.rest_uri)
        .arg(&services.warehouse)
        .arg(table)
        .env("LAKESYNC_S3_ENDPOINT", &services.s3_endpoint)
        .env("AWS_ACCESS_KEY_ID", &services.key)
        .env("AWS_SECRET_ACCESS_KEY", &services.secret)
        .env("AWS_REGION", &services.region)
        .output()
        .expect("run the DuckDB reader");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) && !support::in_ci() {
        eprintln!("SKIPPED the DuckDB reader: {}", stderr.trim());
        return None;
    }
    assert!(output.status.success(), "DuckDB reader failed:\n{stderr}");
    eprintln!("duckdb: {}", stderr.trim());
    Some(serde_json::from_slice(&output.stdout).expect("a JSON document"))
}

/// Three days of task deltas, one batch of `per_day` per day.
fn three_days(per_day: usize, seed: u64) -> Vec<RowDelta> {
    (0..3)
        .flat_map(|d| task_deltas(per_day, seed + d, WALL_MS + d * DAY_MS))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_sink_writes_day_partitions_to_s3_once_per_epoch() {
    let Some(services) = services() else {
        return;
    };
    let config = services.catalog();
    let ns = unique_name("lake");
    let tasks = tasks();
    let mut sink = IcebergSink::connect(&config, &ns, "lakehouse", "lake")
        .await
        .expect("connect the sink to the REST catalog");
    sink.prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare");
    assert_eq!(sink.committed_epoch().await.expect("committed_epoch"), None);

    // The new table is partitioned by day(_hlc_time).
    let table = load(&config, &ns, "tasks").await;
    let metadata = table.metadata();
    assert!(
        metadata.location().starts_with("s3://"),
        "{}",
        metadata.location()
    );
    let spec = metadata.default_partition_spec();
    assert_eq!(spec.fields().len(), 1);
    let field = &spec.fields()[0];
    assert_eq!(field.name, HLC_DAY);
    assert_eq!(field.transform, Transform::Day);
    let source = metadata
        .current_schema()
        .field_by_id(field.source_id)
        .expect("the partition source column");
    assert_eq!(source.name, HLC_TIME);

    // Epoch 1: three days of deltas, one snapshot, one data file per day.
    let epoch1 = three_days(150, 10);
    write(&mut sink, &tasks, &epoch1).await;
    let stats = sink.commit(1).await.expect("commit epoch 1");
    assert_eq!(stats.rows, 450);
    let table = load(&config, &ns, "tasks").await;
    let files: Vec<String> = table
        .scan()
        .build()
        .expect("plan a scan")
        .plan_files()
        .await
        .expect("plan files")
        .map_ok(|task| task.data_file_path().to_string())
        .try_collect()
        .await
        .expect("list the data files");
    assert_eq!(files.len(), 3, "{files:?}");
    for file in &files {
        assert!(
            file.starts_with(&format!("{}/data/{HLC_DAY}=", table.metadata().location())),
            "{file}"
        );
    }

    // A retried flush of the same epoch, in this sink and in a restarted one, appends nothing.
    write(&mut sink, &tasks, &epoch1).await;
    assert_eq!(
        sink.commit(1).await.expect("retried commit"),
        CommitStats::default()
    );
    let mut restarted = IcebergSink::connect(&config, &ns, "lakehouse", "lake")
        .await
        .expect("reconnect");
    restarted
        .prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare again");
    assert_eq!(
        restarted.committed_epoch().await.expect("committed_epoch"),
        Some(1)
    );
    write(&mut restarted, &tasks, &epoch1).await;
    assert_eq!(
        restarted.commit(1).await.expect("replayed commit"),
        CommitStats::default()
    );
    let epoch2 = task_deltas(80, 20, WALL_MS + 3 * DAY_MS);
    write(&mut restarted, &tasks, &epoch2).await;
    assert_eq!(restarted.commit(2).await.expect("commit epoch 2").rows, 80);

    // The snapshot summaries: one snapshot per epoch, each marked with pipeline, sink, epoch.
    let table = load(&config, &ns, "tasks").await;
    let epochs: Vec<String> = table
        .metadata()
        .snapshots()
        .map(|s| {
            let summary = &s.summary().additional_properties;
            assert_eq!(summary[PIPELINE_PROPERTY], "lakehouse");
            assert_eq!(summary[SINK_PROPERTY], "lake");
            summary[EPOCH_PROPERTY].clone()
        })
        .collect();
    let mut sorted = epochs.clone();
    sorted.sort();
    assert_eq!(sorted, ["1", "2"], "one snapshot per epoch: {epochs:?}");

    // lakesync query reads exactly what was written, and prunes by day.
    let all: Vec<RowDelta> = epoch1.iter().chain(&epoch2).cloned().collect();
    let expected = canonical(&tasks, &[deltas_to_batch(&tasks, &all).expect("batch")]);
    let queried = query(&config, &format!("SELECT * FROM lake.{ns}.tasks"))
        .await
        .expect("query the lake");
    assert_eq!(lake_deltas(&tasks, &queried), expected);
    let days = query(
        &config,
        &format!(
            "SELECT count(DISTINCT date_trunc('day', {HLC_TIME})) AS days FROM {ns}.tasks \
             WHERE {HLC_TIME} >= to_timestamp_millis({})",
            WALL_MS + DAY_MS - (WALL_MS % DAY_MS)
        ),
    )
    .await
    .expect("query by day");
    assert_eq!(
        days[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("a count")
            .value(0),
        3
    );

    // pyiceberg, through the same REST catalogue and S3, sees the same rows, the day partition
    // spec and one snapshot per epoch.
    if let Some(python) = support::service_env("pyiceberg", "LAKESYNC_PYTHON") {
        let ours = json_rows(&queried);
        let theirs = pyiceberg_read(&python, &services, &format!("{ns}.tasks"));
        assert_eq!(theirs.rows.len(), 530);
        assert_eq!(theirs.rows, ours, "pyiceberg and lakesync query disagree");
        assert_eq!(
            theirs.partition_spec,
            serde_json::json!([{"name": HLC_DAY, "transform": "day", "source": HLC_TIME}])
        );
        let mut marks: Vec<&str> = theirs
            .snapshots
            .iter()
            .map(|s| s[EPOCH_PROPERTY].as_str())
            .collect();
        marks.sort();
        assert_eq!(marks, ["1", "2"]);

        // DuckDB's iceberg extension, through the same catalogue: same rows, same days.
        if let Some(duck) = duckdb_read(&python, &services, &format!("{ns}.tasks")) {
            let hlc_sum: u128 = all.iter().map(|d| u128::from(d.hlc.0)).sum();
            let mut days = BTreeMap::new();
            for d in &all {
                let day = chrono::DateTime::from_timestamp_millis((d.hlc.0 >> 16) as i64)
                    .expect("a date")
                    .format("%Y-%m-%d")
                    .to_string();
                *days.entry(day).or_insert(0_u64) += 1;
            }
            assert_eq!(
                duck,
                serde_json::json!({
                    "rows": 530,
                    "delta_ids": 530,
                    "hlc_sum": hlc_sum.to_string(),
                    "days": days,
                })
            );
        }
    }

    drop_namespace(&config, &ns).await;
}

/// Wrong S3 credentials: the commit fails naming the bucket location and the endpoint, and is
/// not retryable; a wrong catalogue credential fails at connect, naming the catalogue.
#[tokio::test]
async fn bad_credentials_fail_with_the_location_and_endpoint() {
    let Some(services) = services() else {
        return;
    };
    let config = services.catalog();
    let ns = unique_name("lake_bad");
    let tasks = tasks();
    // The catalogue creates the table (it writes the first metadata itself) ...
    let mut good = IcebergSink::connect(&config, &ns, "p", "lake")
        .await
        .expect("connect");
    good.prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare");

    // ... but data files written with a wrong secret are refused by S3.
    let IcebergCatalogConfig::Rest {
        uri,
        warehouse,
        credential,
        mut s3,
        ..
    } = config.clone()
    else {
        unreachable!()
    };
    s3.secret_access_key = Some("not-the-secret".into());
    let wrong_s3 = IcebergCatalogConfig::Rest {
        uri: uri.clone(),
        warehouse: warehouse.clone(),
        name: "lakesync".into(),
        credential,
        token: None,
        s3,
    };
    let mut sink = IcebergSink::connect(&wrong_s3, &ns, "p", "lake")
        .await
        .expect("connect with a wrong S3 secret");
    sink.prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare");
    write(&mut sink, &tasks, &task_deltas(10, 1, WALL_MS)).await;
    let err = sink.commit(1).await.expect_err("S3 refuses the write");
    let message = err.to_string();
    assert!(
        message.contains("s3://") && message.contains(&services.s3_endpoint),
        "{message}"
    );
    assert!(matches!(err, Error::External { .. }), "{err:?}");
    assert_eq!(
        err.kind(),
        ErrorKind::External { retryable: false },
        "{message}"
    );

    // A wrong catalogue credential fails at connect, naming the catalogue's URI.
    let wrong_catalog = IcebergCatalogConfig::Rest {
        uri,
        warehouse,
        name: "lakesync".into(),
        credential: Some(format!("{}:wrong", services.key)),
        token: None,
        s3: services.s3(),
    };
    let err = connect(&wrong_catalog).await.expect_err("refused");
    assert!(err.to_string().contains(&services.rest_uri), "{err}");
    assert!(matches!(err.kind(), ErrorKind::External { .. }), "{err}");

    drop_namespace(&config, &ns).await;
}

/// The reference pipeline `pipelines/iceberg-s3.yaml`, run once: its Iceberg sink goes to the
/// REST catalogue, its Parquet sink to `s3://bucket/prefix`; `lakesync query --pipeline`
/// reads the lake back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iceberg_s3_pipeline_runs_and_lakesync_query_reads_it() {
    let Some(services) = services() else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");
    support::copy_tree(&root.join("pipelines"), &dir.path().join("pipelines"), &[]);
    support::copy_tree(&root.join("examples"), &dir.path().join("examples"), &[]);
    let ns = unique_name("pipeline");
    let prefix = format!("archive/{ns}");
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.push(("LAKESYNC_ICEBERG_NAMESPACE".into(), ns.clone()));
    vars.push(("LAKESYNC_ARCHIVE_PREFIX".into(), prefix.clone()));
    let env = lakesync::config::Env::from_vars(vars.clone());
    let file = dir.path().join("pipelines/iceberg-s3.yaml");
    let plan = lakesync::config::load_plan(&file, &env).expect("the pipeline validates");
    let graph = lakesync::build::build(&plan).await.expect("build");
    let options = lakesync::runtime::pipeline::RunOptions {
        mode: lakesync::runtime::api::ReadMode::Once,
        progress: false,
    };
    let summary = lakesync::runtime::pipeline::run(graph, options, std::future::pending())
        .await
        .expect("run the pipeline");
    let rows = summary.sinks["lake"].rows;
    assert!(rows > 0, "the pipeline wrote nothing to the lake");
    assert_eq!(summary.sinks["archive"].rows, rows);

    // The lake, through the catalogue config the pipeline names.
    let lakesync::config::spec::SinkSpec::Iceberg(spec) =
        plan.sinks.get("lake").expect("a lake sink")
    else {
        panic!("the lake sink is an iceberg sink")
    };
    let config = lakesync::build::catalog_config(&plan, &spec.catalog).expect("catalog config");
    let batches = query(&config, &format!("SELECT count(*) FROM {ns}.tasks"))
        .await
        .expect("count");
    let counted = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("a count")
        .value(0);
    assert_eq!(counted as u64, rows);

    // The CLI: `lakesync query --pipeline FILE SQL`, where unqualified tables are the sink's
    // namespace's.
    let output = Command::new(env!("CARGO_BIN_EXE_lakesync"))
        .args(["query", "--pipeline"])
        .arg(&file)
        .arg("SELECT count(*) AS n FROM tasks")
        .envs(vars)
        .output()
        .expect("run lakesync query");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "lakesync query failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("| {rows} ")), "{stdout}");

    // The Parquet archive: one file for the epoch under s3://bucket/prefix/tasks/.
    let store = lakesync::build::s3_config(Some(&lakesync::config::spec::S3Spec {
        endpoint: Some(services.s3_endpoint.clone()),
        region: Some(services.region.clone()),
        access_key_id: Some(services.key.clone()),
        secret_access_key: Some(services.secret.clone()),
        path_style: None,
    }))
    .store(&services.bucket)
    .expect("an S3 client");
    let listed: Vec<_> = store
        .list(Some(&object_store::path::Path::from(format!(
            "{prefix}/tasks"
        ))))
        .try_collect()
        .await
        .expect("list the archive");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let bytes = store
        .get(&listed[0].location)
        .await
        .expect("get the archive file")
        .bytes()
        .await
        .expect("read it");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("a Parquet file")
        .build()
        .expect("a reader");
    let archived: usize = reader.map(|b| b.expect("a batch").num_rows()).sum();
    assert_eq!(archived as u64, rows);
    for meta in listed {
        let _ = store.delete(&meta.location).await;
    }

    drop_namespace(&config, &ns).await;
}

/// The storage iceberg-rust reads and writes through, on S3 directly: a small object in one
/// PUT, a large one (over the 10 MiB buffer) as a multipart upload, ranged reads, existence,
/// size, prefix deletion; a missing object is not retryable and names its location.
#[tokio::test]
async fn object_store_storage_round_trips_on_s3() {
    use ::iceberg::io::{StorageConfig, StorageFactory};
    use bytes::Bytes;
    use lakesync::adapters::iceberg::ObjectStoreStorageFactory;

    let Some(services) = services() else {
        return;
    };
    let storage = ObjectStoreStorageFactory::new(services.s3())
        .build(&StorageConfig::new())
        .expect("a storage");
    let root = format!("s3://{}/{}", services.bucket, unique_name("storage"));
    let small = format!("{root}/small.bin");
    storage
        .write(&small, Bytes::from_static(b"hello lake"))
        .await
        .expect("put");
    assert!(storage.exists(&small).await.expect("exists"));
    assert_eq!(&storage.read(&small).await.expect("get")[..], b"hello lake");

    let large = format!("{root}/part=1/large.bin");
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut writer = storage.writer(&large).await.expect("a writer");
    for _ in 0..12 {
        writer
            .write(Bytes::from(chunk.clone()))
            .await
            .expect("write a chunk");
    }
    assert!(
        !storage.exists(&large).await.expect("exists"),
        "the object appears only when closed"
    );
    writer.close().await.expect("complete the upload");
    assert_eq!(
        storage.metadata(&large).await.expect("head").size,
        12 * 1024 * 1024
    );
    let reader = storage.reader(&large).await.expect("a reader");
    let offset = 5 * 1024 * 1024 + 7;
    let range = reader
        .read(offset..offset + 1000)
        .await
        .expect("a ranged read");
    let expected: Vec<u8> = (offset..offset + 1000)
        .map(|i| ((i % (1024 * 1024)) % 251) as u8)
        .collect();
    assert_eq!(&range[..], &expected[..]);

    storage
        .delete_prefix(&root)
        .await
        .expect("delete the prefix");
    assert!(!storage.exists(&small).await.expect("exists"));
    assert!(!storage.exists(&large).await.expect("exists"));
    let err = storage.read(&small).await.expect_err("gone");
    assert!(!err.retryable(), "{err}");
    assert!(
        err.to_string().contains(&small) && err.to_string().contains(&services.s3_endpoint),
        "{err}"
    );
}

/// The merged state of `deltas`, sorted by row id.
fn merged_state(table: &lakesync::kernel::schema::TableSchema, deltas: &[RowDelta]) -> RecordBatch {
    let batch = deltas_to_batch(table, deltas).expect("a delta batch");
    sorted_state(&merge(table, None, &[batch]).expect("merge"))
}

fn sorted_state(state: &RecordBatch) -> RecordBatch {
    let order = arrow::compute::sort_to_indices(state.column(0), None, None).expect("sort");
    arrow::compute::take_record_batch(state, &order).expect("take")
}

/// What LakeSync's reader makes of a lake table: the state of its base rows and deltas.
async fn lakesync_state(catalog: &Arc<dyn ::iceberg::Catalog>, ident: &TableIdent) -> RecordBatch {
    let table = catalog.load_table(ident).await.expect("load the table");
    let rows = read_table(&table, ReadOptions::default())
        .await
        .expect("read the table");
    sorted_state(&state_of(&rows).expect("merge the lake rows"))
}

/// The live rows of a state as a reader unaware of `_versions` sees base rows: `_rowid` and the
/// data columns (null where a column holds nothing), in canonical JSON, by row id.
fn live_rows(state: &RecordBatch) -> Vec<Value> {
    let live = arrow::compute::not(state.column(2).as_boolean()).expect("not");
    let state = arrow::compute::filter_record_batch(state, &live).expect("filter");
    let mut fields = vec![arrow::datatypes::Field::new(
        "_rowid",
        arrow::datatypes::DataType::Utf8,
        false,
    )];
    let mut columns = vec![state.column(0).clone()];
    for (field, column) in state.schema().fields().iter().zip(state.columns()).skip(6) {
        fields.push(field.as_ref().clone());
        columns.push(column.clone());
    }
    let batch = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
        .expect("a batch");
    let mut rows = json_rows(&[batch]);
    rows.sort_by(|a, b| a["_rowid"].as_str().cmp(&b["_rowid"].as_str()));
    rows
}

/// pyiceberg's and DuckDB's `_op <> 3` rows (`tests/python/read_lww_rest.py`).
fn lww_read(python: &str, services: &Services, table: &str) -> (Vec<Value>, Option<Vec<Value>>) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_lww_rest.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(&services.rest_uri)
        .arg(&services.warehouse)
        .arg(table)
        .env("LAKESYNC_S3_ENDPOINT", &services.s3_endpoint)
        .env("AWS_ACCESS_KEY_ID", &services.key)
        .env("AWS_SECRET_ACCESS_KEY", &services.secret)
        .env("AWS_REGION", &services.region)
        .output()
        .expect("run the LWW reader");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "LWW reader failed:\n{stderr}");
    eprintln!("{}", stderr.trim());
    let doc: Value = serde_json::from_slice(&output.stdout).expect("a JSON document");
    let py = serde_json::from_value(doc["pyiceberg"].clone()).expect("pyiceberg rows");
    let duck: Option<Vec<Value>> =
        serde_json::from_value(doc["duckdb"].clone()).expect("DuckDB rows");
    if duck.is_none() {
        assert!(
            !support::in_ci(),
            "DuckDB's extension wheels are missing in CI"
        );
    }
    (py, duck)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_rest_is_read_exactly_by_pyiceberg_duckdb_and_lakesync() {
    let Some(services) = services() else {
        return;
    };
    let config = services.catalog();
    let ns = unique_name("compact");
    let tasks = tasks();
    let mut sink = IcebergSink::connect(&config, &ns, "lakehouse", "lake")
        .await
        .expect("connect the sink");
    sink.prepare(std::slice::from_ref(&tasks))
        .await
        .expect("prepare");
    let catalog = connect(&config).await.expect("connect");
    let ident = TableIdent::from_strs([ns.as_str(), "tasks"]).expect("ident");
    let python = support::service_env("pyiceberg", "LAKESYNC_PYTHON");

    // Two epochs over the same 60 rows: inserts, column updates, deletes, resurrections.
    let mut all = three_days(150, 30);
    write(&mut sink, &tasks, &all).await;
    sink.commit(1).await.expect("commit epoch 1");
    let epoch2 = task_deltas(120, 31, WALL_MS + DAY_MS / 2);
    write(&mut sink, &tasks, &epoch2).await;
    sink.commit(2).await.expect("commit epoch 2");
    all.extend(epoch2);
    assert_eq!(
        lakesync_state(&catalog, &ident).await,
        merged_state(&tasks, &all)
    );

    let report = compact_table(&catalog, &ident, &CompactionOptions::default())
        .await
        .expect("compact");
    assert_eq!(report.outcome, CompactionOutcome::Committed, "{report}");
    assert_eq!(report.rows_in, 450 + 120, "{report}");
    let expected = merged_state(&tasks, &all);
    assert_eq!(report.rows_out as usize, expected.num_rows(), "{report}");
    assert_eq!(lakesync_state(&catalog, &ident).await, expected);
    if let Some(python) = &python {
        let (py, duck) = lww_read(python, &services, &format!("{ns}.tasks"));
        let want = live_rows(&expected);
        assert!(!want.is_empty());
        assert_eq!(py, want, "pyiceberg's live rows differ from the merge");
        if let Some(duck) = duck {
            assert_eq!(duck, want, "DuckDB's live rows differ from the merge");
        }
    }

    // Late deltas (a day older than everything compacted) and new ones, then a second
    // compaction: LakeSync stays exact, the other readers see the new state.
    let epoch3: Vec<RowDelta> = task_deltas(80, 32, WALL_MS - DAY_MS)
        .into_iter()
        .chain(task_deltas(40, 33, WALL_MS + 4 * DAY_MS))
        .collect();
    write(&mut sink, &tasks, &epoch3).await;
    sink.commit(3).await.expect("commit epoch 3");
    all.extend(epoch3);
    let expected = merged_state(&tasks, &all);
    assert_eq!(lakesync_state(&catalog, &ident).await, expected);
    let report = compact_table(&catalog, &ident, &CompactionOptions::default())
        .await
        .expect("compact again");
    assert_eq!(report.outcome, CompactionOutcome::Committed, "{report}");
    assert_eq!(lakesync_state(&catalog, &ident).await, expected);
    if let Some(python) = &python {
        let (py, duck) = lww_read(python, &services, &format!("{ns}.tasks"));
        let want = live_rows(&expected);
        assert_eq!(
            py, want,
            "pyiceberg's live rows differ after the second compaction"
        );
        if let Some(duck) = duck {
            assert_eq!(
                duck, want,
                "DuckDB's live rows differ after the second compaction"
            );
        }
    }

    // Expiry and orphan clean-up on S3 keep the table readable and delete the replaced files.
    let expired = expire_snapshots(
        &catalog,
        &ident,
        &ExpireOptions {
            retain_last: 1,
            older_than: None,
        },
    )
    .await
    .expect("expire");
    assert_eq!(expired.snapshots_after, 1, "{expired}");
    let cleaned = clean_orphans(
        &catalog,
        &ident,
        &services.s3(),
        &OrphanOptions {
            min_age: std::time::Duration::ZERO,
            dry_run: false,
        },
    )
    .await
    .expect("clean orphans");
    assert!(
        cleaned
            .deleted
            .iter()
            .filter(|p| p.ends_with(".parquet"))
            .count()
            >= 5,
        "{cleaned}"
    );
    assert_eq!(lakesync_state(&catalog, &ident).await, expected);
    drop_namespace(&config, &ns).await;
}

/// A compaction killed after writing its files and before its commit leaves the table exactly
/// as it was (no partial snapshot); a rerun completes. Runs `lakesync lake compact` on a local
/// SQL catalogue (no services needed), paused by the test hook.
#[test]
fn a_compaction_killed_mid_commit_leaves_the_table_as_it_was() {
    use std::process::Stdio;

    let dir = tempfile::tempdir().expect("a temp dir");
    let (db, warehouse) = (
        dir.path().join("catalog.sqlite"),
        dir.path().join("warehouse"),
    );
    let config = IcebergCatalogConfig::sql(&db, &warehouse);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let tasks = tasks();
    let ident = TableIdent::from_strs(["lakesync", "tasks"]).expect("ident");
    let mut all = Vec::new();
    let (catalog, before_id) = rt.block_on(async {
        let mut sink = IcebergSink::connect(&config, "lakesync", "kill", "lake")
            .await
            .expect("connect");
        sink.prepare(std::slice::from_ref(&tasks))
            .await
            .expect("prepare");
        for epoch in 1..=3u64 {
            let deltas = task_deltas(100, 40 + epoch, WALL_MS + epoch * DAY_MS);
            write(&mut sink, &tasks, &deltas).await;
            sink.commit(epoch).await.expect("commit");
            all.extend(deltas);
        }
        let catalog = connect(&config).await.expect("connect");
        let id = catalog
            .load_table(&ident)
            .await
            .expect("load")
            .metadata()
            .current_snapshot_id();
        (catalog, id)
    });
    let expected = merged_state(&tasks, &all);
    assert_eq!(rt.block_on(lakesync_state(&catalog, &ident)), expected);

    let compact = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakesync"));
        cmd.args(["lake", "compact", "--catalog"])
            .arg(&db)
            .arg("--warehouse")
            .arg(&warehouse)
            .env("RUST_LOG", "lakesync=info");
        cmd
    };
    let marker = dir.path().join("paused");
    let mut child = compact()
        .env(
            lakesync::fault::PAUSE_AT,
            lakesync::adapters::iceberg::compact::PAUSE_BEFORE_COMMIT,
        )
        .env(lakesync::fault::PAUSE_MARKER, &marker)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lakesync lake compact");
    let started = std::time::Instant::now();
    let mut paused = false;
    while started.elapsed() < std::time::Duration::from_secs(120) {
        if marker.exists() {
            paused = true;
            break;
        }
        if child.try_wait().expect("poll the compaction").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL the compaction"); // SIGKILL on Unix
    let _ = child.wait();
    assert!(paused, "the compaction reached its commit");

    // Its base files are on disk, but no snapshot references them.
    let written = walk(&warehouse)
        .into_iter()
        .filter(|p| p.contains("/compact-") && p.ends_with(".parquet"))
        .count();
    assert!(written > 0, "the killed compaction wrote no files");
    let table = rt.block_on(catalog.load_table(&ident)).expect("load");
    assert_eq!(table.metadata().current_snapshot_id(), before_id);
    assert_eq!(rt.block_on(lakesync_state(&catalog, &ident)), expected);

    // A rerun completes, and the killed run's files are orphans clean-up removes.
    let output = compact().output().expect("rerun lakesync lake compact");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rerun failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("lakesync.tasks: compacted: 3 files"),
        "{stdout}"
    );
    assert_eq!(rt.block_on(lakesync_state(&catalog, &ident)), expected);
    let output = Command::new(env!("CARGO_BIN_EXE_lakesync"))
        .args(["lake", "clean-orphans", "--min-age", "0s", "--catalog"])
        .arg(&db)
        .arg("--warehouse")
        .arg(&warehouse)
        .output()
        .expect("run lakesync lake clean-orphans");
    assert!(output.status.success());
    let table = rt.block_on(catalog.load_table(&ident)).expect("load");
    let live: std::collections::HashSet<String> = rt
        .block_on(lakesync::adapters::iceberg::maintenance::referenced_files(
            &table,
        ))
        .expect("referenced files");
    let left: Vec<String> = walk(&warehouse)
        .into_iter()
        .filter(|p| p.contains("/compact-") && p.ends_with(".parquet"))
        .collect();
    assert!(
        left.iter().all(|p| live.contains(p)),
        "orphans left: {left:?}"
    );
    assert_eq!(rt.block_on(lakesync_state(&catalog, &ident)), expected);
}

/// Every file under `dir`, as absolute paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.to_string_lossy().into_owned());
            }
        }
    }
    out
}
