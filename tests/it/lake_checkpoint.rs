//! Lake checkpoints: generated from a lake table's current rows in chunks of bounded size, and
//! served by a gateway filtered per client, on the embedded lake (SQL catalogue, local files).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use lakesync::adapters::iceberg::checkpoint::{self, CheckpointManifest};
use lakesync::adapters::iceberg::{IcebergCatalogConfig, connect};
use lakesync::gateway::{Gateway, GatewayOptions, LakeCheckpoints, Limits};
use lakesync::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
use lakesync::kernel::merge::merge;
use lakesync::kernel::rules::{Claims, SyncRules};
use lakesync::kernel::state::DELETED;
use lakesync::runtime::api::TableRef;
use lakesync::synth::{Workload, tasks_schema};
use serde_json::Value;

use crate::iceberg::{WALL_MS, tasks_lake};

/// Live rows of a state batch: row id → (column → value) for the columns holding a value.
fn live_rows(table: &TableRef, state: &RecordBatch) -> BTreeMap<String, BTreeMap<String, Value>> {
    let deleted = state
        .column_by_name(DELETED)
        .expect("_deleted")
        .as_boolean()
        .clone();
    let snapshot_rows: Vec<u32> = (0..state.num_rows() as u32)
        .filter(|&i| !deleted.value(i as usize))
        .collect();
    let hlcs = state
        .column(1)
        .as_primitive::<arrow::datatypes::UInt64Type>();
    let ops = vec![lakesync::kernel::DeltaOp::Insert as u8; snapshot_rows.len()];
    let snapshot = lakesync::gateway::record::snapshot_batch(
        table,
        state,
        &snapshot_rows,
        &ops,
        hlcs,
        "test",
        0,
    )
    .expect("snapshot batch");
    rows_of(&[snapshot])
}

/// Row id → (column → value) of INSERT snapshot deltas.
fn rows_of(batches: &[RecordBatch]) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for batch in batches {
        for delta in batch_to_deltas(batch).expect("deltas") {
            let columns = delta
                .columns
                .iter()
                .map(|c| (c.column.clone(), c.value.clone()))
                .collect();
            assert!(
                out.insert(delta.row_id.clone(), columns).is_none(),
                "row {} twice",
                delta.row_id
            );
        }
    }
    out
}

async fn chunks(config: &IcebergCatalogConfig, manifest: &CheckpointManifest) -> Vec<RecordBatch> {
    let catalog = connect(config).await.expect("catalogue");
    let ident = ::iceberg::TableIdent::from_strs(["lakesync", &manifest.table]).expect("ident");
    let checkpoint = checkpoint::open(&catalog, &ident)
        .await
        .expect("open")
        .expect("a checkpoint");
    assert_eq!(&checkpoint.manifest, manifest);
    let mut out = Vec::new();
    for k in 0..manifest.chunks.len() {
        out.extend(checkpoint.read_chunk(k).await.expect("chunk"));
    }
    out
}

#[tokio::test]
async fn checkpoints_hold_the_lww_state_in_bounded_chunks_and_gateways_serve_them_filtered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
    let table: TableRef = Arc::new(tasks_schema());
    let deltas = Workload::new(2_000, 6, 7).deltas(12_000, WALL_MS);
    tasks_lake(&config, &deltas, 4_000).await;
    let expected_state = merge(
        &table,
        None,
        &[deltas_to_batch(&table, &deltas).expect("all")],
    )
    .expect("merge");
    let expected = live_rows(&table, &expected_state);
    assert!(expected.len() > 1_000, "most rows are live");

    // Generate with a 64 KiB budget: several chunks, each within the budget, together exactly
    // the live rows with their LWW values.
    let catalog = connect(&config).await.expect("catalogue");
    let ident = ::iceberg::TableIdent::from_strs(["lakesync", "tasks"]).expect("ident");
    let budget = 64 * 1024;
    let first = checkpoint::generate(&catalog, &ident, budget)
        .await
        .expect("generate");
    assert_eq!(first.rows as usize, expected.len());
    assert!(first.chunks.len() > 3, "{} chunks", first.chunks.len());
    assert!(
        first
            .chunks
            .iter()
            .all(|c| c.encoded_bytes as usize <= budget)
    );
    assert_eq!(first.chunks.iter().map(|c| c.rows).sum::<u64>(), first.rows);
    assert_eq!(rows_of(&chunks(&config, &first).await), expected);

    // A gateway with the lake serves each client only its rows: here the team claim.
    let rules = SyncRules::from_json(
        r#"{"version":1,"buckets":[{"name":"team","tables":["tasks"],
            "filters":[{"column":"team","op":"eq","value":"jwt:team"}]}]}"#,
    )
    .expect("rules");
    let gateway = Gateway::open(GatewayOptions {
        id: "gw".into(),
        data_dir: dir.path().join("gw"),
        tables: vec![tasks_schema()],
        sync_rules: rules,
        limits: Limits::default(),
        lake: Some(LakeCheckpoints {
            catalog: catalog.clone(),
            namespace: "lakesync".into(),
        }),
    })
    .await
    .expect("gateway");
    let team = expected
        .values()
        .find_map(|cols| cols.get("team").and_then(Value::as_str).map(str::to_string))
        .expect("some row has a team");
    let filter = gateway.client_filter(&Claims::new().with("team", [team.as_str()]));
    let served = gateway
        .checkpoint(&filter, None, 10_000)
        .await
        .expect("checkpoint");
    let want: BTreeMap<_, _> = expected
        .iter()
        .filter(|(_, cols)| cols.get("team").and_then(Value::as_str) == Some(team.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!want.is_empty() && want.len() < expected.len());
    assert_eq!(rows_of(&served.batches), want);

    // After a compaction the checkpoint comes from the base rows, with the same rows; orphan
    // clean-up leaves checkpoints alone. Regenerating keeps the generation just replaced and
    // removes the one before it.
    lakesync::adapters::iceberg::compact::compact_table(&catalog, &ident, &Default::default())
        .await
        .expect("compact");
    let second = checkpoint::generate(&catalog, &ident, budget)
        .await
        .expect("again");
    lakesync::adapters::iceberg::maintenance::clean_orphans(
        &catalog,
        &ident,
        &Default::default(),
        &lakesync::adapters::iceberg::maintenance::OrphanOptions {
            min_age: std::time::Duration::ZERO,
            dry_run: false,
        },
    )
    .await
    .expect("clean orphans");
    assert_eq!(rows_of(&chunks(&config, &second).await), expected);
    let third = checkpoint::generate(&catalog, &ident, budget)
        .await
        .expect("and again");
    assert_eq!(
        third.previous_generation.as_deref(),
        Some(second.generation.as_str())
    );
    let base = dir.path().join("wh/lakesync/tasks/_lakesync_checkpoints");
    let present = |g: &str| base.join(g).exists();
    assert!(
        !present(&first.generation),
        "the oldest generation is removed"
    );
    assert!(present(&second.generation) && present(&third.generation));
    assert_eq!(rows_of(&chunks(&config, &third).await), expected);

    // A budget below 1 KiB is refused with a clear message.
    let err = checkpoint::generate(&catalog, &ident, 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("1 KiB"), "{err}");
}
