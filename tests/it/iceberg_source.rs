//! The lake as a source: a pipeline reads a LakeSync lake table whole and materialises it into
//! SQLite; the materialised rows equal the merge of every delta written to the lake.

use std::collections::BTreeMap;

use lakesync::adapters::iceberg::IcebergCatalogConfig;
use lakesync::config::{Env, load_plan};
use lakesync::synth::{Workload, tasks_schema};
use sqlx::Row;

use crate::iceberg::{WALL_MS, tasks_lake};

#[tokio::test]
async fn a_lake_table_backfills_into_a_materialised_sqlite_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = IcebergCatalogConfig::sql(
        dir.path().join("lake/catalog.sqlite"),
        dir.path().join("lake/warehouse"),
    );
    let deltas = Workload::new(500, 4, 5).deltas(5_000, WALL_MS);
    tasks_lake(&config, &deltas, 2_000).await;

    let tasks = serde_json::to_string(&tasks_schema()).expect("schema json");
    let yaml = format!(
        r#"version: 1
name: backfill
state_dir: state
tables:
  - {tasks}
sources:
  lake:
    type: iceberg
    catalog: {{type: sql, uri: lake/catalog.sqlite, warehouse: lake/warehouse}}
    table: tasks
sinks:
  replica:
    type: sqlite
    input: lake
    path: replica.sqlite
    materialise: true
"#
    );
    std::fs::write(dir.path().join("backfill.yaml"), yaml).expect("pipeline");
    let plan = load_plan(&dir.path().join("backfill.yaml"), &Env::process()).expect("valid");
    crate::support::run_plan_once(&plan).await;

    // The materialised rows are the live rows of the merge of every delta.
    let want = crate::iceberg::live_titles(&deltas);
    let url = format!("sqlite://{}", dir.path().join("replica.sqlite").display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("replica");
    let rows = sqlx::query("SELECT row_id, title FROM tasks WHERE deleted_at IS NULL")
        .fetch_all(&pool)
        .await
        .expect("rows");
    let got: BTreeMap<String, Option<String>> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1)))
        .collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM lakesync_deltas")
        .fetch_one(&pool)
        .await
        .expect("log");
    assert_eq!(logged as usize, deltas.len(), "every lake delta once");
}

#[test]
fn hostile_iceberg_source_names_are_refused_with_their_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tasks = serde_json::to_string(&tasks_schema()).expect("schema json");
    let yaml = format!(
        r#"version: 1
name: hostile
tables:
  - {tasks}
sources:
  lake:
    type: iceberg
    catalog: {{type: sql, uri: lake/catalog.sqlite, warehouse: lake/warehouse}}
    namespace: "ns; DROP"
    table: tasks
    iceberg_table: "t\"x"
    id_column: "id--"
sinks:
  out: {{type: sqlite, input: lake, path: out.sqlite}}
"#
    );
    let file = dir.path().join("hostile.yaml");
    std::fs::write(&file, yaml).expect("pipeline");
    let err = load_plan(&file, &Env::process())
        .expect_err("refused")
        .to_string();
    for path in [
        "sources.lake.namespace",
        "sources.lake.iceberg_table",
        "sources.lake.id_column",
    ] {
        assert!(err.contains(path), "{path} in {err}");
    }
}

/// Runs `python tests/python/plain_iceberg.py DB WAREHOUSE STEP`; returns its stdout.
fn plain_iceberg(python: &str, dir: &std::path::Path, step: &str) -> String {
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/plain_iceberg.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(dir.join("lake/catalog.sqlite"))
        .arg(dir.join("lake/warehouse"))
        .arg(step)
        .output()
        .expect("run pyiceberg");
    assert!(
        output.status.success(),
        "plain_iceberg.py {step}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// pyiceberg writes a plain (non-LakeSync) table: appends, then an overwrite of one row and a
/// copy-on-write delete of another. A pipeline reading it into SQLite takes a whole snapshot,
/// and its second `--once` run reads only the changes since, snapshot by snapshot: the replica
/// then equals what pyiceberg itself reads, and rows of removed files arrive as DELETEs.
#[tokio::test]
async fn a_plain_table_written_by_pyiceberg_is_copied_whole_then_by_its_changes() {
    let Some(python) = crate::support::service_env("pyiceberg", "LAKESYNC_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("lake/warehouse")).expect("lake dir");
    plain_iceberg(&python, dir.path(), "create");
    let yaml = r#"version: 1
name: invoices
state_dir: state
tables:
  - table: invoices
    columns:
      - {name: account, type: string}
      - {name: amount, type: integer}
sources:
  lake:
    type: iceberg
    catalog: {type: sql, uri: lake/catalog.sqlite, warehouse: lake/warehouse}
    namespace: finance
    table: invoices
    id_column: id
sinks:
  replica:
    type: sqlite
    input: lake
    path: replica.sqlite
    materialise: true
"#;
    let file = dir.path().join("invoices.yaml");
    std::fs::write(&file, yaml).expect("pipeline");
    let run_once = || async {
        let plan = load_plan(&file, &Env::process()).expect("valid");
        crate::support::run_plan_once(&plan).await;
    };
    let url = format!("sqlite://{}", dir.path().join("replica.sqlite").display());
    let replica = || async {
        let pool = sqlx::SqlitePool::connect(&url).await.expect("replica");
        let rows = sqlx::query(
            "SELECT row_id, account, amount FROM invoices WHERE deleted_at IS NULL ORDER BY row_id",
        )
        .fetch_all(&pool)
        .await
        .expect("rows");
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.get::<String, _>(0),
                    "account": r.get::<Option<String>, _>(1),
                    "amount": r.get::<Option<i64>, _>(2),
                })
            })
            .collect();
        let deletes: Vec<String> =
            sqlx::query_scalar("SELECT row_id FROM lakesync_deltas WHERE op = 3 ORDER BY row_id")
                .fetch_all(&pool)
                .await
                .expect("log");
        pool.close().await;
        (rows, deletes)
    };
    let pyiceberg_rows = |python: &str| -> Vec<serde_json::Value> {
        plain_iceberg(python, dir.path(), "rows")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json row"))
            .collect()
    };

    run_once().await;
    let (first, deletes) = replica().await;
    assert_eq!(first.len(), 3);
    assert_eq!(first, pyiceberg_rows(&python));
    assert!(deletes.is_empty());

    plain_iceberg(&python, dir.path(), "change");
    run_once().await;
    let (second, deletes) = replica().await;
    let theirs = pyiceberg_rows(&python);
    assert_eq!(theirs.len(), 3, "inv-1, the rewritten inv-2 and inv-4");
    assert_eq!(second, theirs);
    // pyiceberg's filtered overwrite is two snapshots: one deleting inv-2 (copy-on-write), one
    // appending its new version. Each snapshot's change is read as it was, so inv-2 is deleted
    // and then inserted again (the replica ends with the new row); inv-3's delete is one DELETE.
    assert_eq!(deletes, ["inv-2", "inv-3"]);
}
