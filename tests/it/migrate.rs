//! Tier migration: hot epochs that have aged move to the cold sink exactly once.

use lakesync::config::{Env, load_plan};
use lakesync::runtime::api::ReadMode;
use lakesync::runtime::migrate::migrate;
use lakesync::runtime::pipeline::{RunOptions, run};

const PIPELINE: &str = r#"version: 1
name: tiers
tables:
  - table: events
    columns:
      - {name: kind, type: string}
sources:
  input:
    type: jsonl
    path: input.jsonl
    table: events
sinks:
  by_age:
    type: tier
    input: input
    max_age: 1d
    hot: {type: parquet, path: hot}
    cold: {type: parquet, path: cold}
"#;

fn count(dir: &std::path::Path) -> (usize, usize) {
    let mut files = 0;
    let mut rows = 0;
    let Ok(tables) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for table in tables.flatten() {
        for file in std::fs::read_dir(table.path())
            .expect("table dir")
            .flatten()
        {
            files += 1;
            let bytes = std::fs::read(file.path()).expect("file");
            rows += lakesync::kernel::parquet_io::read_parquet(bytes.into())
                .expect("parquet")
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>();
        }
    }
    (files, rows)
}

#[tokio::test]
async fn aged_hot_epochs_move_to_cold_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: String = (0..50)
        .map(|i| format!("{{\"id\": \"e{i}\", \"kind\": \"k{}\"}}\n", i % 3))
        .collect();
    std::fs::write(dir.path().join("input.jsonl"), lines).expect("input");
    std::fs::write(dir.path().join("tiers.yaml"), PIPELINE).expect("pipeline");
    let plan = load_plan(&dir.path().join("tiers.yaml"), &Env::process()).expect("valid");
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
    // Fresh deltas are all hot.
    assert_eq!(count(&dir.path().join("hot")), (1, 50));
    assert_eq!(count(&dir.path().join("cold")).1, 0);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // Nothing is old enough yet.
    let summary = migrate(&plan, now).await.expect("migrate");
    assert_eq!((summary[0].epochs, summary[0].kept), (0, 1));
    // Two days later everything is.
    let later = now + 2 * 86_400_000;
    let summary = migrate(&plan, later).await.expect("migrate");
    assert_eq!((summary[0].epochs, summary[0].deltas), (1, 50));
    assert_eq!(count(&dir.path().join("hot")), (0, 0));
    assert_eq!(count(&dir.path().join("cold")), (1, 50));
    // Again: nothing left to move, nothing duplicated.
    let summary = migrate(&plan, later).await.expect("migrate");
    assert_eq!(summary[0].epochs, 0);
    assert_eq!(count(&dir.path().join("cold")), (1, 50));
}
