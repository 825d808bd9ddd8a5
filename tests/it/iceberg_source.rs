//! The lake as a source: a pipeline reads a LakeSync lake table whole and materialises it into
//! SQLite; the materialised rows equal the merge of every delta written to the lake.

use std::collections::BTreeMap;
use std::sync::Arc;

use lakesync::adapters::iceberg::IcebergCatalogConfig;
use lakesync::config::{Env, load_plan};
use lakesync::kernel::delta_batch::deltas_to_batch;
use lakesync::kernel::merge::merge;
use lakesync::runtime::api::{ReadMode, TableRef};
use lakesync::runtime::pipeline::{RunOptions, run};
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
    let table: TableRef = Arc::new(tasks_schema());
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
    let graph = lakesync::build::build(&plan).await.expect("build");
    run(
        graph,
        RunOptions {
            mode: ReadMode::Once,
            progress: false,
        },
        std::future::pending(),
    )
    .await
    .expect("run");

    // The materialised rows are the live rows of the merge of every delta.
    let state = merge(
        &table,
        None,
        &[deltas_to_batch(&table, &deltas).expect("all")],
    )
    .expect("merge");
    use arrow::array::{Array, AsArray};
    let deleted = state.column(2).as_boolean();
    let ids = state.column(0).as_string::<i32>();
    let titles = state
        .column_by_name("title")
        .expect("title")
        .as_string::<i32>();
    let want: BTreeMap<String, Option<String>> = (0..state.num_rows())
        .filter(|&i| !deleted.value(i))
        .map(|i| {
            (
                ids.value(i).to_string(),
                (!titles.is_null(i)).then(|| titles.value(i).to_string()),
            )
        })
        .collect();
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
