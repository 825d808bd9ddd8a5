//! The `lakesync` binary, run as a user runs it.

use std::process::Command;

fn lakesync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lakesync"))
}

/// The README's "run" command does real work: it merges, filters and writes Parquet that reads
/// back with the same row counts.
#[test]
fn demo_writes_parquet_and_a_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = lakesync()
        .args([
            "demo",
            "--deltas",
            "20000",
            "--rows",
            "2000",
            "--clients",
            "5",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("run lakesync demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("rows in state: 2000"), "{stdout}");
    for name in ["tasks.deltas.parquet", "tasks.state.parquet"] {
        let bytes = std::fs::read(dir.path().join(name)).expect("output file");
        let batches = lakesync::kernel::parquet_io::read_parquet(bytes.into()).expect("parquet");
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(
            rows,
            if name.contains("deltas") {
                20_000
            } else {
                2_000
            }
        );
    }
}

/// Bad arguments are refused with a message, not a panic.
#[test]
fn bad_arguments_are_reported() {
    let output = lakesync()
        .args(["demo", "--deltas", "many"])
        .output()
        .expect("run lakesync");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'many' for '--deltas"),
        "{stderr}"
    );
}

/// Copies the quickstart pipeline and its input into a temporary directory (so its lake and
/// state are the test's own) and runs it once.
fn quickstart_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["pipelines", "examples/quickstart"] {
        let to = dir.path().join(sub);
        std::fs::create_dir_all(&to).expect("mkdir");
        for entry in std::fs::read_dir(root.join(sub))
            .expect("read dir")
            .flatten()
        {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
            }
        }
    }
    std::fs::copy(
        root.join("examples/sync-rules.json"),
        dir.path().join("examples/sync-rules.json"),
    )
    .expect("copy rules");
    let out = lakesync()
        .args(["run", "--once", "pipelines/quickstart.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run the quickstart");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The lakehouse docs' time-travel and checkpoint commands, as documented.
#[test]
fn time_travel_queries_and_lake_checkpoints_from_the_command_line() {
    let dir = quickstart_copy();
    let run = |args: &[&str]| {
        let out = lakesync()
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run lakesync");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let p = "pipelines/quickstart.yaml";
    let state = run(&[
        "query",
        "--pipeline",
        p,
        "--state",
        "SELECT count(*) AS n FROM tasks",
    ]);
    let raw = run(&[
        "query",
        "--pipeline",
        p,
        "SELECT count(DISTINCT _rowid) AS n FROM tasks",
    ]);
    let number = |table: &str| -> i64 {
        table
            .lines()
            .filter_map(|l| l.trim_matches(|c| c == '|' || c == ' ').parse().ok())
            .next()
            .unwrap_or_else(|| panic!("no number in {table}"))
    };
    assert!(number(&state) > 0);
    assert!(number(&state) <= number(&raw), "live rows ≤ row ids");
    let before = run(&[
        "query",
        "--pipeline",
        p,
        "--as-of",
        "2000-01-01T00:00:00Z",
        "SELECT count(*) AS n FROM tasks",
    ]);
    assert_eq!(number(&before), 0, "nothing as of 2000");
    let changes = run(&[
        "query",
        "--pipeline",
        p,
        "--changes-from",
        "0",
        "SELECT count(*) AS n FROM tasks",
    ]);
    let deltas = run(&["query", "--pipeline", p, "SELECT count(*) AS n FROM tasks"]);
    assert_eq!(number(&changes), number(&deltas));
    let checkpoint = run(&["lake", "checkpoint", "--pipeline", p]);
    assert!(
        checkpoint.contains(&format!("{} rows in 1 chunks", number(&state))),
        "{checkpoint}"
    );
    // A bad moment is a clear error.
    let out = lakesync()
        .args(["query", "--pipeline", p, "--as-of", "yesterday", "SELECT 1"])
        .current_dir(dir.path())
        .output()
        .expect("run lakesync");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}
