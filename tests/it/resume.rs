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
