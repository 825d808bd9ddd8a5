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
