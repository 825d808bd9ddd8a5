//! Exactly once across a crash: `lakesync run` killed with SIGKILL mid-run and restarted leaves
//! every sink holding every delta exactly once.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Row;

const LINES: usize = 60_000;
const ROWS: usize = 20_000;

fn write_input(path: &Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("input file"));
    for i in 0..LINES {
        writeln!(
            out,
            r#"{{"id":"task-{:05}","title":"rev {i}","n":{i}}}"#,
            i % ROWS
        )
        .expect("write line");
    }
}

fn pipeline(dir: &Path) -> std::path::PathBuf {
    let yaml = r#"version: 1
name: resume
flush:
  max_rows: 2000
  max_age: 60s
tables:
  - table: tasks
    columns:
      - {name: title, type: string}
      - {name: n, type: integer}
sources:
  input:
    type: jsonl
    path: input.jsonl
    table: tasks
sinks:
  archive:
    type: parquet
    input: input
    path: out/archive
  replica:
    type: sqlite
    input: input
    path: out/replica.sqlite
"#;
    let path = dir.join("resume.yaml");
    std::fs::write(&path, yaml).expect("pipeline file");
    path
}

fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("out/archive/tasks"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn sigkill_mid_run_then_restart_holds_every_delta_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_input(&dir.path().join("input.jsonl"));
    let file = pipeline(dir.path());
    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakesync"));
        cmd.args(["run", "--once"])
            .arg(&file)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };

    // Start, wait until a few epochs are committed, then kill -9.
    let mut child = run().spawn().expect("start lakesync run");
    let started = Instant::now();
    while parquet_files(dir.path()).len() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress before the kill"
        );
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("run ended ({status}) before it could be killed; make the input larger");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let before = parquet_files(dir.path()).len();
    assert!(
        before < LINES / 2000,
        "the first run finished before it was killed"
    );

    // Restart and run to the end.
    let output = run().output().expect("rerun");
    assert!(
        output.status.success(),
        "rerun failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Parquet: every delta exactly once.
    let mut ids = std::collections::HashSet::new();
    let mut total = 0;
    for path in parquet_files(dir.path()) {
        let bytes = std::fs::read(&path).expect("parquet file");
        for batch in lakesync::kernel::parquet_io::read_parquet(bytes.into()).expect("parquet") {
            for delta in lakesync::kernel::delta_batch::batch_to_deltas(&batch).expect("deltas") {
                total += 1;
                ids.insert(delta.delta_id);
            }
        }
    }
    assert_eq!((total, ids.len()), (LINES, LINES));

    // SQLite: the delta log holds each delta once; the materialised table one row per id, with
    // the last line's values.
    let url = format!(
        "sqlite://{}",
        dir.path().join("out/replica.sqlite").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open replica");
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM lakesync_deltas")
        .fetch_one(&pool)
        .await
        .expect("count deltas");
    assert_eq!(logged as usize, LINES);
    let rows = sqlx::query("SELECT row_id, n FROM tasks ORDER BY row_id")
        .fetch_all(&pool)
        .await
        .expect("materialised rows");
    assert_eq!(rows.len(), ROWS);
    for (k, row) in rows.iter().enumerate() {
        let n: i64 = row.get(1);
        assert_eq!(
            n as usize,
            2 * ROWS + k,
            "row {} has the value of the last line that wrote it",
            row.get::<String, _>(0)
        );
    }
}

/// The same run into the embedded Iceberg lake (SQL catalogue in `dir/lake`).
fn iceberg_pipeline(dir: &Path) -> std::path::PathBuf {
    let yaml = r#"version: 1
name: resume_lake
flush:
  max_rows: 2000
  max_age: 60s
tables:
  - table: tasks
    columns:
      - {name: title, type: string}
      - {name: n, type: integer}
sources:
  input:
    type: jsonl
    path: input.jsonl
    table: tasks
sinks:
  lake:
    type: iceberg
    input: input
    catalog:
      type: sql
      uri: lake/catalog.sqlite
      warehouse: lake/warehouse
"#;
    let path = dir.join("resume-lake.yaml");
    std::fs::write(&path, yaml).expect("pipeline file");
    path
}

/// Every Parquet file under `dir`, recursively.
fn parquet_under(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                out.insert(path.display().to_string());
            }
        }
    }
    out
}

/// (deltas, distinct deltaIds, snapshots, epochs named by the snapshots in order, data files
/// referenced by the current snapshot) of the lake's `tasks` table.
async fn lake_figures(
    config: &lakesync::adapters::iceberg::IcebergCatalogConfig,
) -> (
    i64,
    i64,
    usize,
    Vec<String>,
    std::collections::BTreeSet<String>,
) {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let batches = lakesync::query::query(
        config,
        "SELECT count(*) AS n, count(DISTINCT _delta_id) AS d FROM tasks",
    )
    .await
    .expect("count the lake");
    let n = batches[0].column(0).as_primitive::<Int64Type>().value(0);
    let d = batches[0].column(1).as_primitive::<Int64Type>().value(0);
    let catalog = lakesync::adapters::iceberg::connect(config)
        .await
        .expect("catalogue");
    let ident = iceberg::TableIdent::from_strs(["lakesync", "tasks"]).expect("ident");
    let table = catalog.load_table(&ident).await.expect("load tasks");
    let metadata = table.metadata();
    let mut snapshots: Vec<_> = metadata.snapshots().collect();
    snapshots.sort_by_key(|s| s.sequence_number());
    let epochs = snapshots
        .iter()
        .map(|s| {
            s.summary()
                .additional_properties
                .get(lakesync::adapters::iceberg::sink::EPOCH_PROPERTY)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let mut files = std::collections::BTreeSet::new();
    let scan = table.scan().build().expect("scan");
    let mut tasks = scan.plan_files().await.expect("plan files");
    while let Some(task) = futures::StreamExt::next(&mut tasks).await {
        let task = task.expect("file task");
        files.insert(
            task.data_file_path
                .trim_start_matches("file://")
                .to_string(),
        );
    }
    (n, d, snapshots.len(), epochs, files)
}

#[tokio::test]
async fn sigkill_mid_iceberg_commit_leaves_no_partial_snapshot_and_restart_completes() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_input(&dir.path().join("input.jsonl"));
    let file = iceberg_pipeline(dir.path());
    let marker = dir.path().join("paused");
    let run = |pause: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakesync"));
        cmd.args(["run", "--once"])
            .arg(&file)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if pause {
            // Stop in the third epoch's commit: data files, manifest and manifest list written,
            // the catalogue's metadata swap not yet asked for.
            cmd.env(lakesync::fault::PAUSE_AT, "iceberg.sink.before-swap#3")
                .env(lakesync::fault::PAUSE_MARKER, &marker);
        }
        cmd
    };

    let mut child = run(true).spawn().expect("start lakesync run");
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never reached the third commit"
        );
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("run ended ({status}) before reaching the pause point");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    // No partial snapshot: exactly the two committed epochs are visible, each once, and the
    // killed commit's data files exist but are referenced by nothing.
    let config = lakesync::adapters::iceberg::IcebergCatalogConfig::sql(
        dir.path().join("lake/catalog.sqlite"),
        dir.path().join("lake/warehouse"),
    );
    let (n, d, snapshots, epochs, referenced) = lake_figures(&config).await;
    assert_eq!(n, d, "no delta twice");
    assert!(
        n > 0 && n < LINES as i64,
        "two epochs' deltas, not all: {n}"
    );
    assert_eq!(snapshots, 2);
    assert_eq!(epochs, ["1", "2"]);
    let on_disk = parquet_under(&dir.path().join("lake/warehouse"));
    let orphans: Vec<_> = on_disk.difference(&referenced).collect();
    assert!(
        !orphans.is_empty(),
        "the killed commit had written its data files ({on_disk:?} vs {referenced:?})"
    );

    // A restart completes the work: every delta exactly once, every epoch committed once.
    let output = run(false).output().expect("rerun");
    assert!(
        output.status.success(),
        "rerun failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (n, d, _, epochs, _) = lake_figures(&config).await;
    assert_eq!((n, d), (LINES as i64, LINES as i64));
    let distinct: std::collections::BTreeSet<_> = epochs.iter().collect();
    assert_eq!(
        distinct.len(),
        epochs.len(),
        "no epoch committed twice: {epochs:?}"
    );
}

/// A backfill out of the lake into Postgres (`lakesync run --once`: Iceberg source, Postgres
/// sink with materialised tables), killed with SIGKILL after a few epochs and restarted: the
/// restart reads only what was left (its size estimate and its read count say so), and Postgres
/// ends with every delta logged once and the materialised rows equal to the merge of them all.
#[tokio::test]
async fn sigkill_mid_lake_to_postgres_backfill_then_restart_delivers_every_row_once() {
    let Some(pg_url) = crate::support::service_env("postgres", "LAKESYNC_PG_URL") else {
        return;
    };
    const DELTAS: usize = 60_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = lakesync::adapters::iceberg::IcebergCatalogConfig::sql(
        dir.path().join("lake/catalog.sqlite"),
        dir.path().join("lake/warehouse"),
    );
    let deltas =
        lakesync::synth::Workload::new(5_000, 4, 11).deltas(DELTAS, crate::iceberg::WALL_MS);
    crate::iceberg::tasks_lake(&config, &deltas, 10_000).await;
    let schema = crate::support::unique_name("backfill");
    let tasks = serde_json::to_string(&lakesync::synth::tasks_schema()).expect("schema json");
    let file = dir.path().join("backfill.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1
name: lake_backfill
state_dir: state
flush:
  max_rows: 2000
tables:
  - {tasks}
sources:
  lake:
    type: iceberg
    catalog: {{type: sql, uri: lake/catalog.sqlite, warehouse: lake/warehouse}}
    table: tasks
sinks:
  pg:
    type: postgres
    input: lake
    url: ${{LAKESYNC_PG_URL}}
    schema: {schema}
"
        ),
    )
    .expect("pipeline");
    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakesync"));
        cmd.args(["run", "--once"])
            .arg(&file)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let pool = sqlx::PgPool::connect(&pg_url).await.expect("postgres");
    let committed = || async {
        sqlx::query_scalar::<_, i64>(&format!(
            "SELECT epoch FROM \"{schema}\"._lakesync_commits WHERE pipeline = 'lake_backfill'"
        ))
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
    };

    let mut child = run().spawn().expect("start lakesync run");
    let started = Instant::now();
    while committed().await < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress before the kill"
        );
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("run ended ({status}) before it could be killed; make the lake larger");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let logged = || async {
        sqlx::query_scalar::<_, i64>(&format!(
            "SELECT count(*) FROM \"{schema}\".lakesync_deltas"
        ))
        .fetch_one(&pool)
        .await
        .expect("count the log")
    };
    let before = logged().await;
    assert!(
        before > 0 && (before as usize) < DELTAS,
        "killed mid-way ({before} logged)"
    );

    let output = run().output().expect("rerun");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "rerun failed: {stderr}");
    // The restart knew how much was left, and read only that.
    let estimate: u64 = stderr
        .split("the sources hold about ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size estimate in: {stderr}"));
    let read: u64 = stdout
        .split("source lake: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no read count in: {stdout}"));
    assert_eq!(estimate, read, "the estimate is the rows left");
    assert!(
        (read as usize) < DELTAS,
        "the restart resumed, it read {read}"
    );

    // Every delta logged once; the materialised rows are the merge of every delta.
    assert_eq!(logged().await as usize, DELTAS);
    let want = crate::iceberg::live_titles(&deltas);
    let got: std::collections::BTreeMap<String, Option<String>> = sqlx::query(&format!(
        "SELECT row_id, title FROM \"{schema}\".tasks WHERE deleted_at IS NULL"
    ))
    .fetch_all(&pool)
    .await
    .expect("materialised rows")
    .iter()
    .map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1)))
    .collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}
