//! Tier migration: hot epochs that have aged move to the cold sink exactly once.

use lakesync::config::{Env, load_plan};
use lakesync::runtime::migrate::migrate;

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
    crate::support::run_plan_once(&plan).await;
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

// ---------------------------------------------------------------------------------------------
// SQL hot sinks (SQLite, Postgres) → Iceberg cold.

use std::collections::BTreeSet;
use std::path::Path;

use arrow::array::RecordBatch;
use lakesync::adapters::hot::hot_deltas;
use lakesync::adapters::iceberg::IcebergCatalogConfig;
use lakesync::config::plan::Plan;
use lakesync::kernel::delta::{DeltaId, RowDelta};
use lakesync::kernel::delta_batch::batch_to_deltas;
use lakesync::query::query;
use lakesync::runtime::api::{CommitStats, Sink, TableRef};
use lakesync::runtime::migrate::{MigrateOptions, migrate_tier, open_cold};
use lakesync::synth::{Workload, tasks_schema};

use crate::iceberg::lake_deltas;
use crate::support;

const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// A tiered pipeline in `dir`: a JSON-lines delta file → tier (`max_age: 7d`) with `hot` as
/// its hot sink and an Iceberg lake (local SQL catalogue) in `dir/lake` as its cold sink.
fn sql_tier_plan(dir: &Path, hot: &str) -> Plan {
    let tasks = serde_json::to_string(&tasks_schema()).expect("schema json");
    let pipeline = format!(
        r#"version: 1
name: tiers
state_dir: state
tables:
  - {tasks}
sources:
  input: {{type: jsonl, path: input.jsonl, table: tasks, format: deltas}}
sinks:
  by_age:
    type: tier
    input: input
    max_age: 7d
    hot: {hot}
    cold:
      type: iceberg
      catalog: {{type: sql, uri: lake/catalog.sqlite, warehouse: lake/warehouse}}
"#
    );
    std::fs::write(dir.join("tiers.yaml"), pipeline).expect("pipeline");
    load_plan(&dir.join("tiers.yaml"), &Env::process()).expect("valid pipeline")
}

fn lake(dir: &Path) -> IcebergCatalogConfig {
    IcebergCatalogConfig::sql(dir.join("lake/catalog.sqlite"), dir.join("lake/warehouse"))
}

/// Writes `deltas` as the pipeline's input and runs it once.
async fn run_once(plan: &Plan, dir: &Path, deltas: &[RowDelta]) {
    let lines: String = deltas
        .iter()
        .map(|d| serde_json::to_string(d).expect("delta json") + "\n")
        .collect();
    std::fs::write(dir.join("input.jsonl"), lines).expect("input");
    crate::support::run_plan_once(plan).await;
}

/// The deltaIds of the lake's `tasks` table, with how many rows it has.
async fn cold_ids(dir: &Path) -> (usize, BTreeSet<DeltaId>) {
    let batches = query(&lake(dir), "SELECT * FROM lakesync.tasks")
        .await
        .expect("query the lake");
    let deltas = lake_deltas(&tasks_schema(), &batches);
    (
        deltas.len(),
        deltas.into_iter().map(|d| d.delta_id).collect(),
    )
}

/// The deltaIds the tier's hot sink holds, with how many deltas it has.
async fn hot_ids(plan: &Plan) -> (usize, BTreeSet<DeltaId>) {
    let batches: Vec<RecordBatch> = hot_deltas(plan, "by_age", &tasks_schema())
        .await
        .expect("hot deltas");
    let deltas: Vec<RowDelta> = batches
        .iter()
        .flat_map(|b| batch_to_deltas(b).expect("delta batch"))
        .collect();
    (
        deltas.len(),
        deltas.into_iter().map(|d| d.delta_id).collect(),
    )
}

fn ids(deltas: &[RowDelta]) -> BTreeSet<DeltaId> {
    deltas.iter().map(|d| d.delta_id).collect()
}

/// 60 deltas three days old and 40 an hour old, at `now`.
fn workload(now: u64) -> (Vec<RowDelta>, Vec<RowDelta>) {
    let old = Workload::new(30, 3, 7).deltas(60, now - 3 * DAY_MS);
    let young = Workload::new(30, 3, 8).deltas(40, now - 3_600_000);
    (old, young)
}

/// A cold sink that fails its `fail_at`-th commit (1-based): before committing when `before`,
/// else after the inner sink committed — a crash on either side of the cold commit.
#[derive(Debug)]
struct FailingCold {
    inner: Box<dyn Sink>,
    commits: u32,
    fail_at: u32,
    before: bool,
}

#[async_trait::async_trait]
impl Sink for FailingCold {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn prepare(&mut self, tables: &[TableRef]) -> lakesync::Result<()> {
        self.inner.prepare(tables).await
    }
    async fn committed_epoch(&mut self) -> lakesync::Result<Option<u64>> {
        self.inner.committed_epoch().await
    }
    async fn write(&mut self, table: &TableRef, batch: RecordBatch) -> lakesync::Result<()> {
        self.inner.write(table, batch).await
    }
    async fn commit(&mut self, epoch: u64) -> lakesync::Result<CommitStats> {
        self.commits += 1;
        let crash = || lakesync::Error::internal(format!("injected crash at epoch {epoch}"));
        if self.commits == self.fail_at && self.before {
            return Err(crash());
        }
        let stats = self.inner.commit(epoch).await?;
        if self.commits == self.fail_at {
            return Err(crash());
        }
        Ok(stats)
    }
}

/// The pipeline's hot + cold reads (`lakesync query --pipeline … --state / --changes-from`):
/// every delta of `all` once, and the live rows of their merge.
async fn union_reads_everything_once(plan: &Plan, all: &[RowDelta]) {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use lakesync::query::{LakeView, hot_tier, pipeline_lake, query_view};
    let lake = pipeline_lake(plan).expect("the pipeline's lake");
    let side = lake.hot.clone().expect("the lake is a tier's cold side");
    assert_eq!(side, lakesync::query::HotSide::Tier("by_age".into()));
    let hot = hot_tier(plan, &side).await.expect("hot deltas");
    let count =
        |batches: Vec<RecordBatch>| batches[0].column(0).as_primitive::<Int64Type>().value(0);
    let changes = query_view(
        &lake.catalog,
        &lake.namespace,
        LakeView::Changes {
            from: 0,
            to: i64::MAX as u64,
        },
        &hot,
        "SELECT count(DISTINCT _delta_id) FROM tasks HAVING count(*) = count(DISTINCT _delta_id)",
    )
    .await
    .expect("changes");
    assert_eq!(count(changes), all.len() as i64);
    let table = std::sync::Arc::new(tasks_schema());
    let state = lakesync::kernel::merge::merge(
        &table,
        None,
        &[lakesync::kernel::delta_batch::deltas_to_batch(&table, all).expect("batch")],
    )
    .expect("merge");
    let live = state.column(2).as_boolean().false_count() as i64;
    let rows = query_view(
        &lake.catalog,
        &lake.namespace,
        LakeView::Latest,
        &hot,
        "SELECT count(*) FROM tasks",
    )
    .await
    .expect("state");
    assert_eq!(count(rows), live);
}

/// Runs the tiered pipeline, migrates as of five days later, and checks that the cold lake
/// holds exactly the aged deltas once and the hot sink exactly the young ones — through crashes
/// before and after a cold commit, and with a final migration that moves nothing.
async fn hot_to_iceberg(dir: &Path, hot: &str) {
    let plan = sql_tier_plan(dir, hot);
    let now = now_ms();
    let (old, young) = workload(now);
    let all: Vec<RowDelta> = old.iter().chain(&young).cloned().collect();
    run_once(&plan, dir, &all).await;
    // Everything is younger than 7 days: all hot.
    assert_eq!(hot_ids(&plan).await, (100, ids(&all)));

    let later = now + 5 * DAY_MS;
    let batch = MigrateOptions { batch_size: 25 };
    // Crash before the first cold commit: nothing moved, nothing lost.
    let cold = FailingCold {
        inner: open_cold(&plan, "by_age").await.expect("cold"),
        commits: 0,
        fail_at: 1,
        before: true,
    };
    migrate_tier(&plan, "by_age", Box::new(cold), later, batch)
        .await
        .expect_err("injected crash");
    assert_eq!(hot_ids(&plan).await.0, 100);
    // Crash after the second cold commit, before its hot delete: 50 cold, 75 hot, and the
    // union is everything.
    let cold = FailingCold {
        inner: open_cold(&plan, "by_age").await.expect("cold"),
        commits: 0,
        fail_at: 2,
        before: false,
    };
    migrate_tier(&plan, "by_age", Box::new(cold), later, batch)
        .await
        .expect_err("injected crash");
    let (cold_rows, cold_set) = cold_ids(dir).await;
    let (hot_rows, hot_set) = hot_ids(&plan).await;
    assert_eq!((cold_rows, cold_set.len(), hot_rows), (50, 50, 75));
    assert_eq!(
        cold_set.union(&hot_set).copied().collect::<BTreeSet<_>>(),
        ids(&all)
    );
    // Mid-migration (25 deltas in both tiers), the hot + cold read sees every delta once and
    // the rows the merge of all of them gives.
    union_reads_everything_once(&plan, &all).await;

    // The next run finishes the interrupted epoch, then moves the rest.
    let cold = open_cold(&plan, "by_age").await.expect("cold");
    let summary = migrate_tier(&plan, "by_age", cold, later, batch)
        .await
        .expect("migrate");
    assert_eq!((summary.resumed, summary.epochs), (1, 2), "{summary}");
    let (cold_rows, cold_set) = cold_ids(dir).await;
    assert_eq!((cold_rows, cold_set), (60, ids(&old)));
    assert_eq!(hot_ids(&plan).await, (40, ids(&young)));

    // Again: nothing left to move, nothing duplicated.
    let summary = migrate(&plan, later).await.expect("migrate");
    assert_eq!((summary[0].epochs, summary[0].deltas), (0, 0));
    assert_eq!(cold_ids(dir).await.0, 60);
    assert_eq!(hot_ids(&plan).await.0, 40);

    // Much later the young deltas age too, in one default-sized epoch.
    let summary = migrate(&plan, now + 30 * DAY_MS).await.expect("migrate");
    assert_eq!((summary[0].epochs, summary[0].deltas), (1, 40));
    assert_eq!(cold_ids(dir).await, (100, ids(&all)));
    assert_eq!(hot_ids(&plan).await.0, 0);
}

#[tokio::test]
async fn sqlite_hot_migrates_to_iceberg_exactly_once_across_crashes() {
    let dir = tempfile::tempdir().expect("temp dir");
    hot_to_iceberg(
        dir.path(),
        "{type: sqlite, path: hot.sqlite, materialise: false}",
    )
    .await;
}

#[tokio::test]
async fn postgres_hot_migrates_to_iceberg_exactly_once_across_crashes() {
    let Some(url) = support::service_env("postgres", "LAKESYNC_PG_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let schema = support::unique_name("tier");
    hot_to_iceberg(
        dir.path(),
        &format!("{{type: postgres, url: \"{url}\", schema: {schema}, materialise: false}}"),
    )
    .await;
}

#[tokio::test]
async fn materialised_sql_hot_sinks_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = sql_tier_plan(dir.path(), "{type: sqlite, path: hot.sqlite}");
    let err = migrate(&plan, now_ms()).await.expect_err("refused");
    assert!(err.to_string().contains("materialise: false"), "{err}");
}
