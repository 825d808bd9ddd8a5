//! The lakehouse benchmark, on the S3 server and Iceberg REST catalogue of
//! `scripts/services.sh` (SeaweedFS): every figure comes from the same run.
//!
//! 1. **Delta writes into Iceberg**: LakeSync's Iceberg sink writes N synthetic deltas (the demo's
//!    `tasks` workload: N deltas over N/10 rows, 12 writers) in epochs of `LAKESYNC_BENCH_EPOCH`
//!    rows (default 100,000), one snapshot per epoch; then pyiceberg appends the *same Arrow
//!    data* (the rows in the table's own Iceberg Arrow form, written to an IPC file beforehand and
//!    read before its clock starts) to a table with the same schema and partition spec, one
//!    snapshot per chunk of the same size. Rows/s and MB/s (of the Arrow data) for both, and the
//!    ratio.
//!
//! 2. **Compaction** of the table written in 1: every delta file replaced by one base row per
//!    row id; rows/s and MB/s of the data read.
//! 3. **Checkpoints** of a table of N live rows (N inserts, written as above): generating the
//!    lake checkpoint (read the snapshot, merge, cut 16 MiB chunks, write them to S3), then
//!    serving it through a gateway with the lake configured, as the checkpoint routes do (read
//!    the chunks, filter by the client's sync rules, encode the protocol frames) — for a client
//!    that sees every row and for one that sees one team's rows.
//!
//! Run with `bash scripts/bench-lake.sh` (which builds this in release and starts the services),
//! or `cargo bench --bench lake` with the services' environment exported.
//! `LAKESYNC_BENCH_ROWS` (default 1,000,000) sets N; `LAKESYNC_PYTHON` must be a Python with
//! pyiceberg (`scripts/python-tools.sh`). Not run in CI: figures, not assertions.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark stops on a broken set-up

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::ipc::writer::FileWriter;
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use lakesync::adapters::iceberg::checkpoint::{self, DEFAULT_CHUNK_BYTES};
use lakesync::adapters::iceberg::compact::{CompactionOptions, compact_table};
use lakesync::adapters::iceberg::mapping::{arrow_schema, to_iceberg_batch};
use lakesync::adapters::iceberg::{IcebergCatalogConfig, IcebergSink, S3Config, connect};
use lakesync::gateway::{Gateway, GatewayOptions, LakeCheckpoints, Limits};
use lakesync::kernel::delta_batch::batch_to_deltas;
use lakesync::kernel::delta_batch::deltas_to_batch;
use lakesync::kernel::rules::{Claims, SyncRules};
use lakesync::runtime::api::{Sink, TableRef};
use lakesync::synth::{Workload, tasks_schema};
use lakesync::transport::http::checkpoint::{MAX_FRAME_BYTES, encode_frames};

const NAMESPACE: &str = "bench_lake";
const CHECKPOINT_NAMESPACE: &str = "bench_lake_checkpoint";
const PIPELINE: &str = "bench";
const BATCH_ROWS: usize = 8_192;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/bench-lake.sh or export the services' environment")
    })
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn catalog_config() -> IcebergCatalogConfig {
    let key = env("AWS_ACCESS_KEY_ID");
    let secret = env("AWS_SECRET_ACCESS_KEY");
    IcebergCatalogConfig::Rest {
        uri: env("LAKESYNC_ICEBERG_REST_URI"),
        warehouse: env("LAKESYNC_ICEBERG_WAREHOUSE"),
        name: "lakesync".into(),
        credential: Some(format!("{key}:{secret}")),
        token: None,
        s3: S3Config {
            endpoint: Some(env("LAKESYNC_S3_ENDPOINT")),
            region: Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())),
            access_key_id: Some(key),
            secret_access_key: Some(secret),
            ..Default::default()
        },
    }
}

/// Drops every table of `namespace`, and the namespace (a fresh start each run).
async fn reset(catalog: &Arc<dyn Catalog>, namespace: &str) {
    let ns = NamespaceIdent::new(namespace.into());
    if catalog.namespace_exists(&ns).await.unwrap_or(false) {
        for table in catalog.list_tables(&ns).await.unwrap_or_default() {
            catalog.drop_table(&table).await.ok();
        }
        catalog.drop_namespace(&ns).await.ok();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The workload: `deltas` deltas of the synthetic tasks table (HLCs from a day ago) in batches.
fn workload(deltas: usize) -> (TableRef, Vec<RecordBatch>) {
    let table: TableRef = Arc::new(tasks_schema());
    let rows = (deltas / 10).max(1);
    let mut generator = Workload::new(rows, 12, 42);
    let start_ms = now_ms().saturating_sub(86_400_000);
    let all = generator.deltas(deltas, start_ms);
    let batches = all
        .chunks(BATCH_ROWS)
        .map(|chunk| deltas_to_batch(&table, chunk).expect("delta batch"))
        .collect();
    (table, batches)
}

struct WriteFigures {
    rows: usize,
    seconds: f64,
    arrow_bytes: usize,
}

impl WriteFigures {
    fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
    fn mb_per_s(&self) -> f64 {
        self.arrow_bytes as f64 / 1e6 / self.seconds
    }
}

/// LakeSync's Iceberg sink writing `batches`, one snapshot per `epoch_rows`.
async fn lakesync_write(
    config: &IcebergCatalogConfig,
    table: &TableRef,
    batches: &[RecordBatch],
    epoch_rows: usize,
) -> WriteFigures {
    lakesync_write_to(config, NAMESPACE, table, batches, epoch_rows).await
}

/// [`lakesync_write`] into `namespace`.
async fn lakesync_write_to(
    config: &IcebergCatalogConfig,
    namespace: &str,
    table: &TableRef,
    batches: &[RecordBatch],
    epoch_rows: usize,
) -> WriteFigures {
    let mut sink = IcebergSink::connect(config, namespace, PIPELINE, "lake")
        .await
        .expect("iceberg sink");
    sink.prepare(std::slice::from_ref(table))
        .await
        .expect("prepare");
    let started = Instant::now();
    let (mut epoch, mut in_epoch, mut rows) = (1u64, 0usize, 0usize);
    sink.begin_epoch(epoch, now_ms());
    for batch in batches {
        rows += batch.num_rows();
        in_epoch += batch.num_rows();
        sink.write(table, batch.clone()).await.expect("write");
        if in_epoch >= epoch_rows {
            sink.commit(epoch).await.expect("commit");
            epoch += 1;
            in_epoch = 0;
            sink.begin_epoch(epoch, now_ms());
        }
    }
    if in_epoch > 0 {
        sink.commit(epoch).await.expect("commit");
    }
    WriteFigures {
        rows,
        seconds: started.elapsed().as_secs_f64(),
        arrow_bytes: 0,
    }
}

/// Writes `batches` in the lake table's Iceberg Arrow form to an IPC file (for the peer) and
/// returns their in-memory size.
async fn write_peer_input(
    catalog: &Arc<dyn Catalog>,
    batches: &[RecordBatch],
    path: &Path,
) -> usize {
    let ident = TableIdent::from_strs([NAMESPACE, "tasks"]).unwrap();
    let lake = catalog.load_table(&ident).await.expect("load the table");
    let target = arrow_schema(lake.metadata().current_schema()).expect("arrow schema");
    let file = std::fs::File::create(path).expect("create the IPC file");
    let mut writer = FileWriter::try_new(file, &target).expect("IPC writer");
    let mut bytes = 0;
    for batch in batches {
        let lake_batch = to_iceberg_batch(batch, &target).expect("iceberg form");
        bytes += lake_batch.get_array_memory_size();
        writer.write(&lake_batch).expect("IPC write");
    }
    writer.finish().expect("IPC finish");
    bytes
}

fn pyiceberg_append(input: &Path, epoch_rows: usize) -> WriteFigures {
    let python = env("LAKESYNC_PYTHON");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/lake/pyiceberg_append.py");
    let output = Command::new(python)
        .arg(script)
        .arg(input)
        .arg(env("LAKESYNC_ICEBERG_REST_URI"))
        .arg(env("LAKESYNC_ICEBERG_WAREHOUSE"))
        .arg(NAMESPACE)
        .arg("tasks")
        .arg("tasks_pyiceberg")
        .arg(epoch_rows.to_string())
        .output()
        .expect("run pyiceberg");
    assert!(
        output.status.success(),
        "pyiceberg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("pyiceberg's JSON");
    WriteFigures {
        rows: result["rows"].as_u64().unwrap() as usize,
        seconds: result["seconds"].as_f64().unwrap(),
        arrow_bytes: 0,
    }
}

/// Generates and serves the checkpoint of a table of `rows` live rows.
async fn checkpoints(
    config: &IcebergCatalogConfig,
    catalog: &Arc<dyn Catalog>,
    rows: usize,
    epoch_rows: usize,
) {
    let table: TableRef = Arc::new(tasks_schema());
    let mut generator = Workload::new(rows, 12, 7);
    let inserts = generator.deltas(rows, now_ms().saturating_sub(86_400_000));
    let batches: Vec<RecordBatch> = inserts
        .chunks(BATCH_ROWS)
        .map(|chunk| deltas_to_batch(&table, chunk).expect("delta batch"))
        .collect();
    drop(inserts);
    lakesync_write_to(config, CHECKPOINT_NAMESPACE, &table, &batches, epoch_rows).await;
    drop(batches);
    let ident = TableIdent::from_strs([CHECKPOINT_NAMESPACE, "tasks"]).unwrap();

    let started = Instant::now();
    let manifest = checkpoint::generate(catalog, &ident, DEFAULT_CHUNK_BYTES)
        .await
        .expect("generate the checkpoint");
    let generated = started.elapsed().as_secs_f64();
    let chunk_bytes: u64 = manifest.chunks.iter().map(|c| c.file_bytes).sum();
    assert_eq!(manifest.rows as usize, rows, "every row is live");
    println!(
        "checkpoint generate: {rows} rows in {generated:.2} s ({:.0} rows/s), {} chunks, {:.1} MB of Parquet on S3",
        rows as f64 / generated,
        manifest.chunks.len(),
        chunk_bytes as f64 / 1e6
    );

    let dir = tempfile::tempdir().expect("gateway directory");
    let rules = SyncRules::from_json(
        r#"{"version":1,"buckets":[{"name":"team","tables":["tasks"],
            "filters":[{"column":"team","op":"eq","value":"jwt:team"}]}]}"#,
    )
    .expect("rules");
    let gateway = Gateway::open(GatewayOptions {
        id: "bench".into(),
        data_dir: dir.path().to_path_buf(),
        tables: vec![tasks_schema()],
        sync_rules: rules,
        limits: Limits::default(),
        lake: Some(LakeCheckpoints {
            catalog: catalog.clone(),
            namespace: CHECKPOINT_NAMESPACE.into(),
        }),
    })
    .await
    .expect("gateway");
    let everyone = lakesync::kernel::rules::ClientFilter::unfiltered();
    let one_team = gateway.client_filter(&Claims::new().with("team", ["payments"]));
    for (who, filter) in [("every row", everyone), ("one team", one_team)] {
        let started = Instant::now();
        let snapshot = gateway
            .checkpoint(&filter, None, 10_000)
            .await
            .expect("checkpoint");
        let (mut served, mut bytes) = (0usize, 0usize);
        for batch in &snapshot.batches {
            let deltas = batch_to_deltas(batch).expect("deltas");
            served += deltas.len();
            bytes += encode_frames(&deltas, snapshot.cursor, MAX_FRAME_BYTES)
                .expect("frames")
                .len();
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "checkpoint serve ({who}): {served} of {rows} rows in {seconds:.2} s ({:.0} rows/s scanned, {:.1} MB of frames)",
            rows as f64 / seconds,
            bytes as f64 / 1e6
        );
    }
}

fn main() {
    let deltas = env_usize("LAKESYNC_BENCH_ROWS", 1_000_000);
    let epoch_rows = env_usize("LAKESYNC_BENCH_EPOCH", 100_000);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let config = catalog_config();
    let work = tempfile::tempdir().expect("temporary directory");
    runtime.block_on(async {
        let catalog = connect(&config).await.expect("connect to the catalogue");
        reset(&catalog, NAMESPACE).await;
        reset(&catalog, CHECKPOINT_NAMESPACE).await;
        let (table, batches) = workload(deltas);
        println!(
            "lake benchmark: {deltas} deltas over {} rows of `tasks`, epochs of {epoch_rows} rows, \
             REST catalogue {} on S3 {}",
            (deltas / 10).max(1),
            env("LAKESYNC_ICEBERG_REST_URI"),
            env("LAKESYNC_S3_ENDPOINT"),
        );

        // 1. Writes.
        let mut ours = lakesync_write(&config, &table, &batches, epoch_rows).await;
        let input = work.path().join("tasks.arrow");
        let arrow_bytes = write_peer_input(&catalog, &batches, &input).await;
        ours.arrow_bytes = arrow_bytes;
        let mut peer = pyiceberg_append(&input, epoch_rows);
        peer.arrow_bytes = arrow_bytes;
        assert_eq!(peer.rows, ours.rows, "both wrote every row");
        println!(
            "write  lakesync iceberg sink : {:>9.0} rows/s {:>7.1} MB/s ({:.2} s)",
            ours.rows_per_s(),
            ours.mb_per_s(),
            ours.seconds
        );
        println!(
            "write  pyiceberg append      : {:>9.0} rows/s {:>7.1} MB/s ({:.2} s)",
            peer.rows_per_s(),
            peer.mb_per_s(),
            peer.seconds
        );
        println!(
            "write  ratio lakesync / pyiceberg: {:.2}x",
            ours.rows_per_s() / peer.rows_per_s()
        );

        // 2. Compaction of what LakeSync wrote: N deltas → one base row per row id.
        let ident = TableIdent::from_strs([NAMESPACE, "tasks"]).unwrap();
        let report = compact_table(&catalog, &ident, &CompactionOptions::default())
            .await
            .expect("compact");
        let seconds = report.elapsed.as_secs_f64();
        println!(
            "compact: {} rows in {} files ({:.1} MB) → {} base rows in {} files ({:.1} MB) in {seconds:.2} s: {:.0} rows/s, {:.1} MB/s read",
            report.rows_in,
            report.files_before,
            report.bytes_in as f64 / 1e6,
            report.rows_out,
            report.files_after,
            report.bytes_out as f64 / 1e6,
            report.rows_in as f64 / seconds,
            report.bytes_in as f64 / 1e6 / seconds
        );

        // 3. Checkpoints of N live rows.
        checkpoints(&config, &catalog, deltas, epoch_rows).await;
    });
}
