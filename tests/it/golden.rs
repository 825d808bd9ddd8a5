//! Golden pipeline cases: `tests/golden/<case>/pipeline.yaml` runs (`--once`) over the case's
//! input, and what its sinks hold is compared with `tests/golden/<case>/expected.txt`.
//!
//! `LAKESYNC_BLESS=1 cargo test --test it golden` rewrites the expected files from the current
//! output; review the diff before committing it. Negative cases (files that must fail
//! validation, with their exact error text) live in `tests/pipelines/invalid/` (see `config.rs`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lakesync::config::{Env, load_plan};
use sqlx::{Column, Row, TypeInfo};

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("pipeline.yaml").exists())
        .collect();
    cases.sort();
    cases
}

/// Every user table of a SQLite sink, rows sorted, `synced_at`/`deleted_at` shown as set or not.
async fn dump_sqlite(path: &Path, out: &mut String) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open sqlite sink");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name <> 'lakesync_deltas' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .expect("list tables");
    let deltas: i64 = sqlx::query_scalar("SELECT count(*) FROM lakesync_deltas")
        .fetch_one(&pool)
        .await
        .expect("count");
    writeln!(
        out,
        "sqlite {}: {deltas} deltas logged",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
    .ok();
    for table in tables {
        writeln!(out, "  table {table}:").ok();
        let rows = sqlx::query(&format!("SELECT * FROM \"{table}\" ORDER BY row_id"))
            .fetch_all(&pool)
            .await
            .expect("rows");
        for row in rows {
            let mut cells = Vec::new();
            for (i, col) in row.columns().iter().enumerate() {
                let name = col.name();
                let value = if matches!(name, "synced_at" | "deleted_at") {
                    let v: Option<String> = row.get(i);
                    if v.is_some() {
                        "<set>".to_string()
                    } else {
                        "NULL".to_string()
                    }
                } else {
                    match col.type_info().name() {
                        "INTEGER" => row
                            .get::<Option<i64>, _>(i)
                            .map_or("NULL".into(), |v| v.to_string()),
                        "REAL" => row
                            .get::<Option<f64>, _>(i)
                            .map_or("NULL".into(), |v| v.to_string()),
                        _ => row
                            .get::<Option<String>, _>(i)
                            .map_or("NULL".into(), |v| format!("{v:?}")),
                    }
                };
                cells.push(format!("{name}={value}"));
            }
            writeln!(out, "    {}", cells.join(" ")).ok();
        }
    }
}

/// Row counts of a Parquet sink's files, per table.
fn dump_parquet(root: &Path, out: &mut String) {
    let mut tables: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("parquet root")
        .flatten()
        .map(|e| e.path())
        .collect();
    tables.sort();
    for table in tables {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&table)
            .expect("table dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut line = format!(
            "parquet {}:",
            table.file_name().unwrap_or_default().to_string_lossy()
        );
        for file in files {
            let batches = lakesync::kernel::parquet_io::read_parquet(
                std::fs::read(&file).expect("file").into(),
            )
            .expect("parquet");
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            write!(line, " {rows}").ok();
        }
        writeln!(out, "{line} deltas per epoch file").ok();
    }
}

async fn run_case(case: &Path) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    crate::support::copy_tree(case, dir.path(), &["expected.txt"]);
    let plan =
        load_plan(&dir.path().join("pipeline.yaml"), &Env::process()).expect("valid pipeline");
    let summary = crate::support::run_plan_once(&plan).await;
    let mut out = String::new();
    writeln!(out, "epochs: {}", summary.epochs).ok();
    for (name, sink) in &summary.sinks {
        writeln!(out, "sink {name}: {} deltas committed", sink.rows).ok();
    }
    let outputs = dir.path().join("out");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&outputs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        if path.extension().is_some_and(|e| e == "sqlite") {
            dump_sqlite(&path, &mut out).await;
        } else if path.is_dir() {
            dump_parquet(&path, &mut out);
        }
    }
    out
}

#[tokio::test]
async fn golden_pipelines_produce_their_expected_output() {
    let bless = std::env::var("LAKESYNC_BLESS").is_ok_and(|v| v == "1");
    let cases = cases();
    assert!(!cases.is_empty(), "no golden cases found");
    let mut failures = Vec::new();
    for case in cases {
        let actual = run_case(&case).await;
        let expected_path = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_path, &actual).expect("bless");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                case.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden output differs (LAKESYNC_BLESS=1 to accept):\n{}",
        failures.join("\n")
    );
}
