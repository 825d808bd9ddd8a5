//! Time travel and hot + cold reads in `lakesync query`, checked against the kernel's merge of
//! the same deltas, on the embedded lake.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use lakesync::adapters::iceberg::IcebergCatalogConfig;
use lakesync::kernel::delta::RowDelta;
use lakesync::kernel::delta_batch::deltas_to_batch;
use lakesync::kernel::merge::merge;
use lakesync::query::{HotTier, LakeView, query_view};
use lakesync::runtime::api::TableRef;
use lakesync::synth::{Workload, tasks_schema};

use crate::iceberg::{WALL_MS, commit_epoch, tasks_lake};

/// `(row id, title, priority)` of the live rows of the merge of `deltas`, sorted.
fn expected_state(
    table: &TableRef,
    deltas: &[RowDelta],
) -> Vec<(String, Option<String>, Option<i64>)> {
    let state = merge(
        table,
        None,
        &[deltas_to_batch(table, deltas).expect("batch")],
    )
    .expect("merge");
    let deleted = state.column(2).as_boolean();
    let ids = state.column(0).as_string::<i32>();
    let title = state
        .column_by_name("title")
        .expect("title")
        .as_string::<i32>();
    let priority = state
        .column_by_name("priority")
        .expect("priority")
        .as_primitive::<Int64Type>();
    let mut out: Vec<_> = (0..state.num_rows())
        .filter(|&i| !deleted.value(i))
        .map(|i| {
            (
                ids.value(i).to_string(),
                (!arrow::array::Array::is_null(title, i)).then(|| title.value(i).to_string()),
                (!arrow::array::Array::is_null(priority, i)).then(|| priority.value(i)),
            )
        })
        .collect();
    out.sort();
    out
}

fn rows(batches: &[RecordBatch]) -> Vec<(String, Option<String>, Option<i64>)> {
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column(0).as_string::<i32>();
        let title = b.column(1).as_string::<i32>();
        let priority = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push((
                ids.value(i).to_string(),
                (!arrow::array::Array::is_null(title, i)).then(|| title.value(i).to_string()),
                (!arrow::array::Array::is_null(priority, i)).then(|| priority.value(i)),
            ));
        }
    }
    out.sort();
    out
}

const STATE_SQL: &str = "SELECT _row_id, title, priority FROM tasks ORDER BY _row_id";

#[tokio::test]
async fn as_of_hlc_snapshot_and_changes_agree_with_a_merge_of_the_deltas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
    let table: TableRef = Arc::new(tasks_schema());
    let deltas = Workload::new(300, 5, 11).deltas(3_000, WALL_MS);
    tasks_lake(&config, &deltas, 1_000).await;
    let none = HotTier::default();

    // As of an HLC in the middle of the second epoch: exactly the merge of the deltas up to it.
    let h = deltas[1_500].hlc.0;
    let upto: Vec<RowDelta> = deltas.iter().filter(|d| d.hlc.0 <= h).cloned().collect();
    let got = query_view(
        &config,
        "lakesync",
        LakeView::AsOf {
            snapshot: None,
            hlc: Some(h),
        },
        &none,
        STATE_SQL,
    )
    .await
    .expect("as of");
    assert_eq!(rows(&got), expected_state(&table, &upto));

    // As of the first snapshot: the first epoch's deltas.
    let catalog = lakesync::adapters::iceberg::connect(&config)
        .await
        .expect("catalogue");
    let ident = ::iceberg::TableIdent::from_strs(["lakesync", "tasks"]).expect("ident");
    let lake = catalog.load_table(&ident).await.expect("table");
    let mut snapshots: Vec<_> = lake.metadata().snapshots().collect();
    snapshots.sort_by_key(|s| s.sequence_number());
    let first = snapshots[0].snapshot_id();
    let got = query_view(
        &config,
        "lakesync",
        LakeView::AsOf {
            snapshot: Some(first),
            hlc: None,
        },
        &none,
        STATE_SQL,
    )
    .await
    .expect("as of snapshot");
    assert_eq!(rows(&got), expected_state(&table, &deltas[..1_000]));

    // Changes between two HLCs: exactly those deltas, oldest first.
    let (from, to) = (deltas[500].hlc.0, deltas[2_500].hlc.0);
    let got = query_view(
        &config,
        "lakesync",
        LakeView::Changes { from, to },
        &none,
        "SELECT _delta_id, _hlc FROM tasks",
    )
    .await
    .expect("changes");
    let want: BTreeSet<[u8; 32]> = deltas
        .iter()
        .filter(|d| d.hlc.0 > from && d.hlc.0 <= to)
        .map(|d| d.delta_id.0)
        .collect();
    let mut got_ids = BTreeSet::new();
    let mut last = 0u64;
    for b in &got {
        let ids = b.column(0).as_fixed_size_binary();
        let hlcs = b.column(1).as_primitive::<arrow::datatypes::UInt64Type>();
        for i in 0..b.num_rows() {
            assert!(hlcs.value(i) >= last, "oldest first");
            last = hlcs.value(i);
            assert!(got_ids.insert(<[u8; 32]>::try_from(ids.value(i)).expect("32 bytes")));
        }
    }
    assert_eq!(got_ids, want);

    // Hot + cold: deltas only the hot tier holds count, and a delta both hold counts once.
    let hot_deltas = Workload::new(300, 5, 99).deltas(400, WALL_MS + 10_000);
    let mut hot_batch = deltas_to_batch(&table, &hot_deltas).expect("hot batch");
    // The hot tier still holds the last 100 cold deltas too (migrated, not yet removed).
    let overlap = deltas_to_batch(&table, &deltas[2_900..]).expect("overlap");
    hot_batch =
        arrow::compute::concat_batches(&hot_batch.schema(), &[hot_batch, overlap]).expect("concat");
    let hot: HotTier = BTreeMap::from([("tasks".to_string(), vec![hot_batch])])
        .into_iter()
        .collect();
    let mut all = deltas.clone();
    all.extend(hot_deltas.iter().cloned());
    let got = query_view(&config, "lakesync", LakeView::Latest, &hot, STATE_SQL)
        .await
        .expect("latest hot + cold");
    assert_eq!(rows(&got), expected_state(&table, &all));
    let got = query_view(
        &config,
        "lakesync",
        LakeView::Changes {
            from: 0,
            to: i64::MAX as u64,
        },
        &hot,
        "SELECT count(*) AS n, count(DISTINCT _delta_id) AS d FROM tasks",
    )
    .await
    .expect("all changes");
    let n = got[0].column(0).as_primitive::<Int64Type>().value(0);
    let d = got[0].column(1).as_primitive::<Int64Type>().value(0);
    assert_eq!((n, d), (3_400, 3_400), "every delta once");

    // The raw deltas stay readable beside the view.
    let got = query_view(
        &config,
        "lakesync",
        LakeView::Latest,
        &none,
        "SELECT count(*) FROM lake.lakesync.tasks",
    )
    .await
    .expect("raw");
    assert_eq!(got[0].column(0).as_primitive::<Int64Type>().value(0), 3_000);

    // A snapshot that does not exist is a clear error naming the ones that do.
    let err = query_view(
        &config,
        "lakesync",
        LakeView::AsOf {
            snapshot: Some(42),
            hlc: None,
        },
        &none,
        STATE_SQL,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no snapshot 42"), "{err}");
}

#[tokio::test]
async fn after_compaction_time_travel_agrees_with_a_replay_and_refuses_folded_history() {
    use lakesync::adapters::iceberg::compact::{CompactionOptions, compact_table};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
    let table: TableRef = Arc::new(tasks_schema());
    let deltas = Workload::new(300, 5, 21).deltas(4_000, WALL_MS);
    let (mut sink, epoch) = tasks_lake(&config, &deltas[..3_000], 1_000).await;
    let catalog = lakesync::adapters::iceberg::connect(&config)
        .await
        .expect("catalogue");
    let ident = ::iceberg::TableIdent::from_strs(["lakesync", "tasks"]).expect("ident");
    let before = catalog.load_table(&ident).await.expect("table");
    let pre_compaction = before.metadata().current_snapshot_id().expect("a snapshot");
    let report = compact_table(&catalog, &ident, &CompactionOptions::default())
        .await
        .expect("compact");
    let through = deltas[..3_000]
        .iter()
        .map(|d| d.hlc.0)
        .max()
        .expect("deltas");
    // Deltas after the compaction, including late ones (HLCs older than the horizon).
    let mut after = deltas[3_000..].to_vec();
    after.extend(Workload::new(300, 5, 22).deltas(200, WALL_MS));
    commit_epoch(&mut sink, epoch + 1, &after).await;
    let mut all = deltas[..3_000].to_vec();
    all.extend(after.iter().cloned());
    let none = HotTier::default();
    assert!(report.to_string().contains("compact"), "{report}");

    // The current state is the replay of every delta.
    let got = query_view(&config, "lakesync", LakeView::Latest, &none, STATE_SQL)
        .await
        .expect("latest");
    assert_eq!(rows(&got), expected_state(&table, &all));

    // As of a moment at or after the horizon: exact.
    let h = deltas[3_500].hlc.0;
    assert!(h >= through);
    let upto: Vec<RowDelta> = all.iter().filter(|d| d.hlc.0 <= h).cloned().collect();
    let got = query_view(
        &config,
        "lakesync",
        LakeView::AsOf {
            snapshot: None,
            hlc: Some(h),
        },
        &none,
        STATE_SQL,
    )
    .await
    .expect("as of after the horizon");
    assert_eq!(rows(&got), expected_state(&table, &upto));

    // Before the horizon: refused, naming the snapshot that still holds the history, which
    // answers exactly for the deltas it holds.
    let early = deltas[1_200].hlc.0;
    let err = query_view(
        &config,
        "lakesync",
        LakeView::AsOf {
            snapshot: None,
            hlc: Some(early),
        },
        &none,
        STATE_SQL,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("--snapshot {pre_compaction}")),
        "{err}"
    );
    let got = query_view(
        &config,
        "lakesync",
        LakeView::AsOf {
            snapshot: Some(pre_compaction),
            hlc: Some(early),
        },
        &none,
        STATE_SQL,
    )
    .await
    .expect("as of, in the snapshot before the compaction");
    let upto: Vec<RowDelta> = deltas[..3_000]
        .iter()
        .filter(|d| d.hlc.0 <= early)
        .cloned()
        .collect();
    assert_eq!(rows(&got), expected_state(&table, &upto));

    // Changes after the horizon are exact; changes reaching before it are refused.
    let got = query_view(
        &config,
        "lakesync",
        LakeView::Changes {
            from: through,
            to: i64::MAX as u64,
        },
        &none,
        "SELECT count(*) FROM tasks",
    )
    .await
    .expect("changes after the horizon");
    let want = all.iter().filter(|d| d.hlc.0 > through).count() as i64;
    assert_eq!(got[0].column(0).as_primitive::<Int64Type>().value(0), want);
    let err = query_view(
        &config,
        "lakesync",
        LakeView::Changes {
            from: early,
            to: i64::MAX as u64,
        },
        &none,
        "SELECT count(*) FROM tasks",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("compacted through HLC"), "{err}");
}
