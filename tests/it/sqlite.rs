//! The SQLite adapter: the sink's delta log and materialised tables, and the source's cursor,
//! diff and delta-log strategies — all on temporary files, no services.

// Test helpers outside `#[test]` functions panic on failure too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use lakesync::adapters::sqlite::{
    SqliteDialect, SqliteSink, SqliteSinkOptions, SqliteSource, SqliteSourceOptions,
    SqliteStrategy, SqliteTableSpec,
};
use lakesync::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use lakesync::kernel::delta_batch::{batch_to_deltas, cell_to_json, deltas_to_batch};
use lakesync::kernel::hlc::HlcTimestamp;
use lakesync::kernel::materialise::SqlDialect;
use lakesync::kernel::merge::merge;
use lakesync::kernel::schema::{ColumnDef, ColumnType, TableSchema};
use lakesync::kernel::state;
use lakesync::runtime::api::{Position, ReadMode, Sink, Source, SourceBatch, TableRef};
use lakesync::{Error, ErrorKind};
use proptest::prelude::*;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

fn todos(soft: bool) -> TableSchema {
    let mut s = TableSchema::new(
        "todos",
        vec![
            ColumnDef::new("title", ColumnType::String),
            ColumnDef::new("done", ColumnType::Boolean),
            ColumnDef::new("n", ColumnType::Integer),
        ],
    );
    s.soft_delete = Some(soft);
    s
}

fn delta(op: DeltaOp, row: &str, client: &str, wall: u64, cols: Vec<(&str, Value)>) -> RowDelta {
    let cols = cols
        .into_iter()
        .map(|(c, v)| ColumnDelta::new(c, v))
        .collect();
    RowDelta::new(
        op,
        "todos",
        row,
        client,
        cols,
        HlcTimestamp::new(wall, 0).unwrap(),
    )
}

async fn open_sink(path: &Path, materialise: bool) -> SqliteSink {
    SqliteSink::open(path, "p", "out", SqliteSinkOptions { materialise })
        .await
        .unwrap()
}

/// Writes each group as one epoch, numbered from `first_epoch`.
async fn commit_groups(
    sink: &mut SqliteSink,
    table: &TableRef,
    groups: &[Vec<RowDelta>],
    first_epoch: u64,
) {
    for (i, group) in groups.iter().enumerate() {
        sink.write(table, deltas_to_batch(table, group).unwrap())
            .await
            .unwrap();
        sink.commit(first_epoch + i as u64).await.unwrap();
    }
}

async fn connect(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
        .await
        .unwrap()
}

/// Every row of `table` as a JSON array of its columns (SQLite's own JSON of each value), in
/// `row_id` order, leaving out `synced_at`.
async fn contents(path: &Path, table: &str) -> Vec<Value> {
    let mut conn = connect(path).await;
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
        .bind(table)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let list = columns
        .iter()
        .filter(|c| *c != "synced_at")
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT json_array({list}) FROM \"{table}\" ORDER BY row_id"
    ))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

async fn count(path: &Path, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&mut connect(path).await)
        .await
        .unwrap()
}

#[test]
fn sqlite_dialect_sql_text() {
    let d = SqliteDialect;
    let mut t = todos(true);
    t.external_id_column = Some("title".into());
    assert_eq!(
        d.create_table(&t).unwrap(),
        "CREATE TABLE IF NOT EXISTS \"todos\" (\"row_id\" TEXT NOT NULL, \"title\" TEXT, \"done\" \
         INTEGER, \"n\" INTEGER, \"props\" TEXT NOT NULL DEFAULT '{}', \"deleted_at\" TEXT, \
         \"synced_at\" TEXT NOT NULL, PRIMARY KEY (\"row_id\"), UNIQUE (\"title\"))"
    );
    assert_eq!(
        d.upsert(&todos(false), 1).unwrap(),
        "INSERT INTO \"todos\" (\"row_id\", \"title\", \"done\", \"n\", \"synced_at\") VALUES (?, ?, \
         ?, ?, ?) ON CONFLICT (\"row_id\") DO UPDATE SET \"title\" = excluded.\"title\", \"done\" = \
         excluded.\"done\", \"n\" = excluded.\"n\", \"synced_at\" = excluded.\"synced_at\""
    );
    assert_eq!(
        d.upsert(&t, 1).unwrap(),
        "INSERT INTO \"todos\" (\"row_id\", \"title\", \"done\", \"n\", \"deleted_at\", \"synced_at\") \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (\"title\") DO UPDATE SET \"title\" = excluded.\"title\", \
         \"done\" = excluded.\"done\", \"n\" = excluded.\"n\", \"deleted_at\" = excluded.\"deleted_at\", \
         \"synced_at\" = excluded.\"synced_at\" ON CONFLICT DO UPDATE SET \"title\" = excluded.\"title\", \
         \"done\" = excluded.\"done\", \"n\" = excluded.\"n\", \"deleted_at\" = excluded.\"deleted_at\", \
         \"synced_at\" = excluded.\"synced_at\""
    );
    assert_eq!(
        d.column_type(ColumnType::Json),
        "TEXT",
        "not JSON: NUMERIC affinity would turn \"1\" into 1"
    );
    assert_eq!(d.max_bind_params(), 32766);
}

#[tokio::test]
async fn sqlite_soft_and_hard_delete_and_resurrection() {
    let dir = tempfile::tempdir().unwrap();
    for soft in [true, false] {
        let path = dir.path().join(format!("soft-{soft}/sink.db"));
        let mut sink = open_sink(&path, true).await;
        let table: TableRef = Arc::new(todos(soft));
        sink.prepare(std::slice::from_ref(&table)).await.unwrap();
        let groups = vec![
            vec![
                delta(
                    DeltaOp::Insert,
                    "r1",
                    "a",
                    1_000,
                    vec![("title", json!("one")), ("done", json!(false))],
                ),
                delta(
                    DeltaOp::Insert,
                    "r2",
                    "a",
                    1_000,
                    vec![("title", json!("two")), ("n", json!(2))],
                ),
            ],
            vec![
                delta(DeltaOp::Delete, "r1", "a", 2_000, vec![]),
                // Inserted and deleted in one epoch.
                delta(
                    DeltaOp::Insert,
                    "r3",
                    "a",
                    2_000,
                    vec![("title", json!("x"))],
                ),
                delta(DeltaOp::Delete, "r3", "b", 2_500, vec![]),
            ],
        ];
        commit_groups(&mut sink, &table, &groups, 1).await;
        let rows = contents(&path, "todos").await;
        if soft {
            // row_id, title, done, n, props, deleted_at: deleted rows keep their last values.
            assert_eq!(
                rows,
                vec![
                    json!(["r1", "one", 0, null, "{}", "1970-01-01T00:00:02.000000Z"]),
                    json!(["r2", "two", null, 2, "{}", null]),
                    json!(["r3", "x", null, null, "{}", "1970-01-01T00:00:02.500000Z"]),
                ]
            );
        } else {
            assert_eq!(rows, vec![json!(["r2", "two", null, 2, "{}"])]);
        }

        // A later write resurrects r1 with only what was written after the DELETE.
        commit_groups(
            &mut sink,
            &table,
            &[vec![delta(
                DeltaOp::Update,
                "r1",
                "b",
                3_000,
                vec![("done", json!(true))],
            )]],
            3,
        )
        .await;
        let rows = contents(&path, "todos").await;
        let r1 = if soft {
            json!(["r1", null, 1, null, "{}", null])
        } else {
            json!(["r1", null, 1, null, "{}"])
        };
        assert_eq!(rows[0], r1);
        // A late write older than the DELETE does not resurrect r3.
        commit_groups(
            &mut sink,
            &table,
            &[vec![delta(
                DeltaOp::Update,
                "r3",
                "z",
                2_400,
                vec![("n", json!(9))],
            )]],
            4,
        )
        .await;
        let rows = contents(&path, "todos").await;
        assert_eq!(rows.len(), if soft { 3 } else { 2 });
        if soft {
            assert_eq!(
                rows[2],
                json!(["r3", "x", null, 9, "{}", "1970-01-01T00:00:02.500000Z"])
            );
        }
    }
}

#[tokio::test]
async fn sqlite_schema_evolution_adds_a_column_and_keeps_props() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    let mut sink = open_sink(&path, true).await;
    let v1: TableRef = Arc::new(todos(true));
    sink.prepare(std::slice::from_ref(&v1)).await.unwrap();
    commit_groups(
        &mut sink,
        &v1,
        &[vec![delta(
            DeltaOp::Insert,
            "r1",
            "a",
            1,
            vec![("title", json!("x"))],
        )]],
        1,
    )
    .await;
    // The application's own props survive LakeSync's upserts.
    sqlx::query("UPDATE todos SET props = '{\"tag\":1}'")
        .execute(&mut connect(&path).await)
        .await
        .unwrap();

    let mut v2 = todos(true);
    v2.columns
        .push(ColumnDef::new("due", ColumnType::Timestamp));
    let v2: TableRef = Arc::new(v2);
    sink.prepare(std::slice::from_ref(&v2)).await.unwrap();
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('todos')")
        .fetch_all(&mut connect(&path).await)
        .await
        .unwrap();
    assert_eq!(
        columns,
        [
            "row_id",
            "title",
            "done",
            "n",
            "props",
            "deleted_at",
            "synced_at",
            "due"
        ]
    );
    // A batch written under v1 still goes in; then a v2 delta sets the new column.
    sink.write(
        &v1,
        deltas_to_batch(
            &v1,
            &[delta(DeltaOp::Update, "r1", "a", 2, vec![("n", json!(5))])],
        )
        .unwrap(),
    )
    .await
    .unwrap();
    sink.commit(2).await.unwrap();
    let d = delta(
        DeltaOp::Update,
        "r1",
        "a",
        3,
        vec![("due", json!("2026-03-01T10:00:00+01:00"))],
    );
    commit_groups(&mut sink, &v2, &[vec![d]], 3).await;
    assert_eq!(
        contents(&path, "todos").await,
        vec![json!([
            "r1",
            "x",
            null,
            5,
            "{\"tag\":1}",
            null,
            "2026-03-01T09:00:00.000000Z"
        ])]
    );

    // Anything but adding columns is refused, naming the table and column.
    let mut retyped = (*v2).clone();
    retyped.columns[0].column_type = ColumnType::Integer;
    let err = sink.prepare(&[Arc::new(retyped)]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::User);
    let msg = err.to_string();
    assert!(
        msg.contains("\"todos\"")
            && msg.contains("\"title\"")
            && msg.contains("cannot change type"),
        "{msg}"
    );
    let mut hard = (*v2).clone();
    hard.soft_delete = Some(false);
    let msg = sink
        .prepare(&[Arc::new(hard)])
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("softDelete cannot change"), "{msg}");
    let mut clash = (*v2).clone();
    clash
        .columns
        .push(ColumnDef::new("props", ColumnType::Json));
    let msg = sink
        .prepare(&[Arc::new(clash)])
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("\"props\""), "{msg}");
}

/// With an `externalIdColumn` the upsert targets it, and a row whose external id changes is
/// updated in place rather than failing on the primary key.
#[tokio::test]
async fn sqlite_external_id_can_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    let mut sink = open_sink(&path, true).await;
    let mut schema = todos(false);
    schema.external_id_column = Some("title".into());
    let table: TableRef = Arc::new(schema);
    sink.prepare(std::slice::from_ref(&table)).await.unwrap();
    let title = |row: &str, wall: u64, t: &str| {
        delta(DeltaOp::Update, row, "a", wall, vec![("title", json!(t))])
    };
    commit_groups(
        &mut sink,
        &table,
        &[
            vec![title("r1", 1, "ext-1")],
            vec![title("r1", 2, "ext-2")],
            vec![title("r2", 3, "ext-1")],
        ],
        1,
    )
    .await;
    assert_eq!(
        contents(&path, "todos").await,
        vec![
            json!(["r1", "ext-2", null, null, "{}"]),
            json!(["r2", "ext-1", null, null, "{}"])
        ]
    );
}

#[tokio::test]
async fn sqlite_replayed_epoch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    let table: TableRef = Arc::new(todos(true));
    {
        let mut sink = open_sink(&path, true).await;
        sink.prepare(std::slice::from_ref(&table)).await.unwrap();
        assert_eq!(sink.committed_epoch().await.unwrap(), None);
        commit_groups(
            &mut sink,
            &table,
            &[
                vec![delta(
                    DeltaOp::Insert,
                    "r1",
                    "a",
                    1,
                    vec![("title", json!("x"))],
                )],
                vec![delta(
                    DeltaOp::Update,
                    "r1",
                    "a",
                    2,
                    vec![("title", json!("y"))],
                )],
            ],
            1,
        )
        .await;
    }
    let before = contents(&path, "todos").await;
    let synced: String = sqlx::query_scalar("SELECT synced_at FROM todos")
        .fetch_one(&mut connect(&path).await)
        .await
        .unwrap();

    // A restarted sink reads its mark from the file and drops a replay of epochs 1 and 2.
    let mut sink = open_sink(&path, true).await;
    sink.prepare(std::slice::from_ref(&table)).await.unwrap();
    assert_eq!(sink.committed_epoch().await.unwrap(), Some(2));
    for epoch in [1, 2] {
        sink.write(
            &table,
            deltas_to_batch(
                &table,
                &[delta(
                    DeltaOp::Update,
                    "r1",
                    "z",
                    9,
                    vec![("title", json!("replayed"))],
                )],
            )
            .unwrap(),
        )
        .await
        .unwrap();
        let stats = sink.commit(epoch).await.unwrap();
        assert_eq!(stats.rows, 0);
    }
    assert_eq!(contents(&path, "todos").await, before);
    let synced_after: String = sqlx::query_scalar("SELECT synced_at FROM todos")
        .fetch_one(&mut connect(&path).await)
        .await
        .unwrap();
    assert_eq!(synced, synced_after);
    assert_eq!(
        count(&path, "SELECT count(*) FROM lakesync_deltas").await,
        2
    );
    // The dropped writes do not leak into the next epoch.
    let stats = sink.commit(3).await.unwrap();
    assert_eq!(stats.rows, 0);
    assert_eq!(contents(&path, "todos").await, before);
    assert_eq!(sink.committed_epoch().await.unwrap(), Some(3));
}

#[tokio::test]
async fn sqlite_duplicate_deltas_are_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    let mut sink = open_sink(&path, false).await;
    let table: TableRef = Arc::new(todos(true));
    sink.prepare(std::slice::from_ref(&table)).await.unwrap();
    let d = delta(DeltaOp::Insert, "r1", "a", 1, vec![("title", json!("x"))]);
    commit_groups(
        &mut sink,
        &table,
        &[vec![d.clone(), d.clone()], vec![d.clone()]],
        1,
    )
    .await;
    assert_eq!(
        count(&path, "SELECT count(*) FROM lakesync_deltas").await,
        1
    );
    // Not materialising: no user table.
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM sqlite_master WHERE name = 'todos'"
        )
        .await,
        0
    );
    let row = sqlx::query("SELECT hlc, op, columns, length(delta_id) AS n FROM lakesync_deltas")
        .fetch_one(&mut connect(&path).await)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("hlc"), d.hlc.0 as i64);
    assert_eq!(row.get::<i64, _>("op"), 1);
    assert_eq!(row.get::<i64, _>("n"), 32);
    assert_eq!(
        row.get::<String, _>("columns"),
        "[{\"column\":\"title\",\"value\":\"x\"}]"
    );
}

/// What the kernel says the materialised table must hold: per row id, the visible values as
/// SQLite stores them, and whether the row is deleted.
fn expected_rows(schema: &TableSchema, deltas: &[RowDelta]) -> Vec<(String, Vec<Value>, bool)> {
    let batch = deltas_to_batch(schema, deltas).unwrap();
    let st = merge(schema, None, &[batch]).unwrap();
    let rows = st
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    let deleted = st
        .column(2)
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .unwrap();
    let mut out: Vec<(String, Vec<Value>, bool)> = (0..st.num_rows())
        .map(|i| {
            let values = schema
                .columns
                .iter()
                .enumerate()
                .map(|(pos, def)| {
                    match cell_to_json(st.column(state::RESERVED + pos), i, def.column_type)
                        .unwrap()
                    {
                        Value::Bool(b) => json!(i64::from(b)),
                        v => v,
                    }
                })
                .collect();
            (rows.value(i).to_string(), values, deleted.value(i))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn arb_delta() -> impl Strategy<Value = RowDelta> {
    let value = |col: &'static str| -> BoxedStrategy<(&'static str, Value)> {
        let v = match col {
            "title" => prop_oneof![Just(Value::Null), "[a-c]{1,2}".prop_map(Value::String)].boxed(),
            "done" => prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool)].boxed(),
            _ => prop_oneof![Just(Value::Null), (-3i64..3).prop_map(Value::from)].boxed(),
        };
        v.prop_map(move |v| (col, v)).boxed()
    };
    (
        0..3u8,
        "r[0-3]",
        "[ab]",
        1u64..8,
        proptest::option::of(value("title")),
        proptest::option::of(value("done")),
        proptest::option::of(value("n")),
    )
        .prop_map(|(op, row, client, wall, a, b, c)| {
            let op = [DeltaOp::Insert, DeltaOp::Update, DeltaOp::Delete][usize::from(op)];
            // A write sets at least one column, as extracted deltas do: the deltaId does not
            // hash the op, so a column-less write and a DELETE of the same row by the same
            // client at the same HLC would be one delta to every idempotent store.
            let cols = if op == DeltaOp::Delete {
                vec![]
            } else {
                let cols: Vec<_> = [a, b, c].into_iter().flatten().collect();
                if cols.is_empty() {
                    vec![("n", json!(0))]
                } else {
                    cols
                }
            };
            delta(op, &row, &client, wall * 1000, cols)
        })
}

/// Splits `items` at the given cut points (taken modulo the length).
fn split(items: &[RowDelta], cuts: &[usize]) -> Vec<Vec<RowDelta>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (items.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain([items.len()]) {
        if c > start {
            out.push(items[start..c].to_vec());
            start = c;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 50, ..ProptestConfig::default() })]

    /// Materialised rows are the LWW fold of all deltas whatever the batching, order or
    /// duplication: one commit of everything, and a shuffled, re-split, partly repeated sequence
    /// of commits, give the same table, which is what the kernel merge says.
    #[test]
    fn sqlite_materialised_rows_equal_the_merge_however_batched(
        deltas in proptest::collection::vec(arb_delta(), 1..25),
        soft in any::<bool>(),
        cuts in proptest::collection::vec(0usize..30, 0..6),
        order in any::<u64>(),
        repeat in proptest::collection::vec(0usize..30, 0..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let table: TableRef = Arc::new(todos(soft));
            let (one, many) = (dir.path().join("one.db"), dir.path().join("many.db"));

            let mut sink = open_sink(&one, true).await;
            sink.prepare(std::slice::from_ref(&table)).await.unwrap();
            commit_groups(&mut sink, &table, std::slice::from_ref(&deltas), 1).await;

            // Shuffle deterministically from `order`, repeat a few, split at `cuts`.
            let mut shuffled = deltas.clone();
            let mut seed = order;
            for i in (1..shuffled.len()).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (seed >> 33) as usize % (i + 1));
            }
            for r in &repeat {
                shuffled.push(deltas[r % deltas.len()].clone());
            }
            let mut sink = open_sink(&many, true).await;
            sink.prepare(std::slice::from_ref(&table)).await.unwrap();
            commit_groups(&mut sink, &table, &split(&shuffled, &cuts), 1).await;

            let (a, b) = (contents(&one, "todos").await, contents(&many, "todos").await);
            assert_eq!(&a, &b);

            // And both are what the merge says.
            let expected = expected_rows(&table, &deltas);
            let live: Vec<Value> = expected
                .iter()
                .filter(|(_, _, deleted)| !deleted)
                .map(|(id, values, _)| {
                    let mut row = vec![json!(id)];
                    row.extend(values.iter().cloned());
                    row.push(json!("{}"));
                    if soft {
                        row.push(Value::Null);
                    }
                    Value::Array(row)
                })
                .collect();
            let live_in_table: Vec<Value> = a
                .iter()
                .filter(|r| !soft || r[5].is_null())
                .cloned()
                .collect();
            assert_eq!(live_in_table, live);
            let tombstones = expected.iter().filter(|(_, _, deleted)| *deleted).count();
            assert_eq!(a.len(), live.len() + if soft { tombstones } else { 0 });
        });
    }
}

/// A source database with a table `items(id, updated, name, price, active)`.
async fn source_db(path: &Path, rows: &[(i64, Option<i64>, &str)]) {
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, updated INTEGER, name TEXT, \
         price REAL, active BOOLEAN, \"first name\" TEXT)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (id, updated, name) in rows {
        sqlx::query(
            "INSERT OR REPLACE INTO items (id, updated, name, price, active) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(updated)
        .bind(name)
        .bind(*id as f64 + 0.5)
        .bind(id % 2 == 0)
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

fn items_schema() -> TableSchema {
    TableSchema::new(
        "items",
        vec![
            ColumnDef::new("updated", ColumnType::Integer),
            ColumnDef::new("name", ColumnType::String),
            ColumnDef::new("price", ColumnType::Number),
            ColumnDef::new("active", ColumnType::Boolean),
        ],
    )
}

fn cursor_spec(schema: Option<TableSchema>) -> SqliteTableSpec {
    SqliteTableSpec {
        table: "items".into(),
        strategy: SqliteStrategy::Cursor {
            cursor_column: "updated".into(),
            id_column: "id".into(),
        },
        schema,
    }
}

async fn read_all(
    source: &mut SqliteSource,
    resume: Option<Position>,
) -> Result<Vec<SourceBatch>, Error> {
    source
        .open(resume, ReadMode::Once)
        .await?
        .try_collect()
        .await
}

fn row_ids(batch: &SourceBatch) -> Vec<String> {
    batch_to_deltas(&batch.batch)
        .unwrap()
        .into_iter()
        .map(|d| d.row_id)
        .collect()
}

#[tokio::test]
async fn sqlite_cursor_source_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src.db");
    // Equal cursor values straddle the batch boundaries (batch size 3), and a NULL cursor sorts
    // first.
    let cursors = [
        None,
        Some(1),
        Some(1),
        Some(1),
        Some(1),
        Some(2),
        Some(2),
        Some(2),
        Some(3),
        Some(3),
    ];
    let rows: Vec<(i64, Option<i64>, String)> = cursors
        .iter()
        .enumerate()
        .map(|(i, c)| (10 - i as i64, *c, format!("item {i}")))
        .collect();
    let refs: Vec<(i64, Option<i64>, &str)> =
        rows.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
    source_db(&path, &refs).await;

    let options = SqliteSourceOptions {
        batch_size: 3,
        ..SqliteSourceOptions::default()
    };
    let mut source = SqliteSource::open(
        &path,
        "shop",
        vec![cursor_spec(Some(items_schema()))],
        options.clone(),
    )
    .await
    .unwrap();
    let batches = read_all(&mut source, None).await.unwrap();
    let all: Vec<String> = batches.iter().flat_map(row_ids).collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all.len(), 10, "{all:?}");
    assert_eq!(sorted.len(), 10, "no duplicates: {all:?}");
    assert_eq!(batches.len(), 4);
    // Ordered by (cursor, id): the NULL cursor first, then id order within equal cursors.
    assert_eq!(&all[..5], &["10", "6", "7", "8", "9"]);

    let first = batch_to_deltas(&batches[0].batch).unwrap();
    assert!(
        first
            .iter()
            .all(|d| d.op == DeltaOp::Insert && d.client_id == "sqlite:shop")
    );
    assert_eq!(
        first[1].columns,
        vec![
            ColumnDelta::new("updated", json!(1)),
            ColumnDelta::new("name", json!("item 4")),
            ColumnDelta::new("price", json!(6.5)),
            ColumnDelta::new("active", json!(true)),
        ]
    );
    assert!(first.windows(2).all(|w| w[0].hlc < w[1].hlc));
    assert_eq!(
        batches[0].position.0,
        json!({"items": {"cursor": 1, "id": 7}})
    );

    // Resuming from any batch's position yields exactly the rest, with the same boundaries.
    for (k, batch) in batches.iter().enumerate() {
        let mut again = SqliteSource::open(
            &path,
            "shop",
            vec![cursor_spec(Some(items_schema()))],
            options.clone(),
        )
        .await
        .unwrap();
        let rest = read_all(&mut again, Some(batch.position.clone()))
            .await
            .unwrap();
        let got: Vec<Vec<String>> = rest.iter().map(row_ids).collect();
        let want: Vec<Vec<String>> = batches[k + 1..].iter().map(row_ids).collect();
        assert_eq!(got, want, "resuming after batch {k}");
        let positions: Vec<&Value> = rest.iter().map(|b| &b.position.0).collect();
        let want_positions: Vec<&Value> = batches[k + 1..].iter().map(|b| &b.position.0).collect();
        assert_eq!(positions, want_positions);
    }

    // New rows after the last position are read; changed rows come back with their new image.
    source_db(
        &path,
        &[
            (11, Some(3), "late tie"),
            (4, Some(9), "changed"),
            (12, Some(1), "too late"),
        ],
    )
    .await;
    let last = batches.last().unwrap().position.clone();
    let more = read_all(&mut source, Some(last)).await.unwrap();
    let ids: Vec<String> = more.iter().flat_map(row_ids).collect();
    // id 12 has a cursor below the position: a cursor cannot see it (documented).
    assert_eq!(ids, ["11", "4"]);
}

#[tokio::test]
async fn sqlite_cursor_source_discovers_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src.db");
    source_db(&path, &[(1, Some(1), "a")]).await;
    // Discovery rejects a column whose name is not an identifier, saying what to do.
    let mut bad = SqliteSource::open(
        &path,
        "s",
        vec![cursor_spec(None)],
        SqliteSourceOptions::default(),
    )
    .await
    .unwrap();
    let msg = bad.tables().await.unwrap_err().to_string();
    assert!(
        msg.contains("\"first name\"") && msg.contains("declare a schema"),
        "{msg}"
    );
    sqlx::query("ALTER TABLE items DROP COLUMN \"first name\"")
        .execute(&mut connect(&path).await)
        .await
        .unwrap();
    let mut source = SqliteSource::open(
        &path,
        "s",
        vec![cursor_spec(None)],
        SqliteSourceOptions::default(),
    )
    .await
    .unwrap();
    let tables = source.tables().await.unwrap();
    assert_eq!(*tables[0], items_schema(), "id is the row id, not a column");

    let mut stream = source
        .open(
            None,
            ReadMode::Follow {
                poll_interval: Duration::from_millis(20),
            },
        )
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(row_ids(&first), ["1"]);
    source_db(&path, &[(2, Some(2), "b")]).await;
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(row_ids(&second), ["2"]);
    assert_eq!(second.position.0, json!({"items": {"cursor": 2, "id": 2}}));
}

fn diff_spec() -> SqliteTableSpec {
    SqliteTableSpec {
        table: "items".into(),
        strategy: SqliteStrategy::Diff {
            id_column: "id".into(),
        },
        schema: Some(items_schema()),
    }
}

async fn diff_source(path: &Path, state: &Path) -> SqliteSource {
    SqliteSource::open(
        path,
        "shop",
        vec![diff_spec()],
        SqliteSourceOptions {
            state_dir: Some(state.to_path_buf()),
            batch_size: 2,
        },
    )
    .await
    .unwrap()
}

fn deltas_of(batches: &[SourceBatch]) -> Vec<RowDelta> {
    batches
        .iter()
        .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
        .collect()
}

#[tokio::test]
async fn sqlite_diff_source_emits_updates_deletes_and_replays_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (path, state) = (dir.path().join("src.db"), dir.path().join("state"));
    source_db(
        &path,
        &[(1, Some(1), "a"), (2, Some(1), "b"), (3, Some(1), "c")],
    )
    .await;

    let mut source = diff_source(&path, &state).await;
    let first = read_all(&mut source, None).await.unwrap();
    let inserts = deltas_of(&first);
    assert_eq!(inserts.len(), 3);
    assert!(inserts.iter().all(|d| d.op == DeltaOp::Insert));
    assert_eq!(first.len(), 2, "batch size 2");
    let p1 = first.last().unwrap().position.clone();
    assert_eq!(p1.0, json!({"items": {"seq": 2}}));

    // Change one column of row 1, delete row 2, add row 4.
    let mut conn = connect(&path).await;
    sqlx::query("UPDATE items SET name = 'A' WHERE id = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM items WHERE id = 2")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    source_db(&path, &[(4, Some(5), "d")]).await;

    let second = read_all(&mut diff_source(&path, &state).await, Some(p1.clone()))
        .await
        .unwrap();
    let changes = deltas_of(&second);
    let summary: Vec<(DeltaOp, &str, Vec<&str>)> = changes
        .iter()
        .map(|d| {
            (
                d.op,
                d.row_id.as_str(),
                d.columns.iter().map(|c| c.column.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (DeltaOp::Update, "1", vec!["name"]),
            (
                DeltaOp::Insert,
                "4",
                vec!["updated", "name", "price", "active"]
            ),
            (DeltaOp::Delete, "2", vec![]),
        ]
    );
    assert_eq!(changes[0].columns[0].value, json!("A"));

    // Resuming from the earlier position (as after a crash before the runtime recorded the
    // later one) replays the journalled batches verbatim: same deltas, HLCs and boundaries.
    let replay = read_all(&mut diff_source(&path, &state).await, Some(p1.clone()))
        .await
        .unwrap();
    assert_eq!(deltas_of(&replay), changes);
    assert_eq!(
        replay.iter().map(|b| &b.position).collect::<Vec<_>>(),
        second.iter().map(|b| &b.position).collect::<Vec<_>>()
    );
    // From the latest position nothing has changed.
    let last = second.last().unwrap().position.clone();
    assert!(
        read_all(&mut diff_source(&path, &state).await, Some(last.clone()))
            .await
            .unwrap()
            .is_empty()
    );
    // Compaction dropped what the recorded position covers: the older position is gone.
    let err = read_all(&mut diff_source(&path, &state).await, Some(p1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("past the resume position"), "{err}");
}

#[tokio::test]
async fn sqlite_bad_table_specs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src.db");
    source_db(&path, &[]).await;
    let cases = [
        (
            SqliteTableSpec {
                table: "items; DROP TABLE items".into(),
                strategy: SqliteStrategy::DeltaLog,
                schema: None,
            },
            "tables[0] table",
        ),
        (
            SqliteTableSpec {
                table: "items".into(),
                strategy: SqliteStrategy::Cursor {
                    cursor_column: "updated at".into(),
                    id_column: "id".into(),
                },
                schema: None,
            },
            "tables[0] cursor_column",
        ),
        (diff_spec(), "needs a state directory"),
    ];
    for (spec, needle) in cases {
        let err = SqliteSource::open(&path, "s", vec![spec], SqliteSourceOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::User);
        let msg = err.to_string();
        assert!(
            msg.contains("sqlite source \"s\"") && msg.contains(needle),
            "{needle}: {msg}"
        );
    }
    let err = SqliteSource::open(
        &path,
        "s",
        vec![cursor_spec(None), cursor_spec(None)],
        SqliteSourceOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("listed twice"), "{err}");
    let mut missing = SqliteSource::open(
        &path,
        "s",
        vec![SqliteTableSpec {
            table: "nope".into(),
            ..cursor_spec(None)
        }],
        SqliteSourceOptions::default(),
    )
    .await
    .unwrap();
    let err = missing.tables().await.unwrap_err().to_string();
    assert!(
        err.contains("\"nope\"") && err.contains("no such table"),
        "{err}"
    );
    let err = SqliteSource::open(
        &dir.path().join("absent.db"),
        "s",
        vec![],
        SqliteSourceOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn sqlite_delta_log_source_reads_a_sinks_log_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    let table: TableRef = Arc::new(todos(false));
    let deltas: Vec<RowDelta> = (0..7)
        .map(|i| {
            delta(
                if i % 3 == 2 {
                    DeltaOp::Delete
                } else {
                    DeltaOp::Update
                },
                &format!("r{}", i % 4),
                "client",
                1_000 + i,
                if i % 3 == 2 {
                    vec![]
                } else {
                    vec![
                        ("n", json!(i)),
                        ("title", json!({"not": "a string"}).to_string().into()),
                    ]
                },
            )
        })
        .collect();
    let mut sink = open_sink(&path, false).await;
    sink.prepare(std::slice::from_ref(&table)).await.unwrap();
    commit_groups(
        &mut sink,
        &table,
        &[deltas[..4].to_vec(), deltas[4..].to_vec()],
        1,
    )
    .await;

    let spec = SqliteTableSpec {
        table: "todos".into(),
        strategy: SqliteStrategy::DeltaLog,
        schema: None,
    };
    let options = SqliteSourceOptions {
        batch_size: 3,
        ..SqliteSourceOptions::default()
    };
    let mut source = SqliteSource::open(&path, "log", vec![spec.clone()], options.clone())
        .await
        .unwrap();
    assert_eq!(*source.tables().await.unwrap()[0], *table);
    let batches = read_all(&mut source, None).await.unwrap();
    assert_eq!(
        deltas_of(&batches),
        deltas,
        "deltas come back exactly, deltaIds and all"
    );
    for d in deltas_of(&batches) {
        d.verify_delta_id().unwrap();
    }
    assert_eq!(batches[0].position.0, json!({"todos": {"rowid": 3}}));
    let rest = read_all(
        &mut SqliteSource::open(&path, "log", vec![spec], options)
            .await
            .unwrap(),
        Some(batches[0].position.clone()),
    )
    .await
    .unwrap();
    assert_eq!(deltas_of(&rest), deltas[3..]);
}

/// Cursor source → materialising sink, one epoch per batch: the sink's table mirrors the source.
#[tokio::test]
async fn sqlite_to_sqlite_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.db"), dir.path().join("out/dst.db"));
    let rows: Vec<(i64, Option<i64>, String)> = (1..=25)
        .map(|i| (i, Some(i / 4), format!("n{i}")))
        .collect();
    let refs: Vec<(i64, Option<i64>, &str)> =
        rows.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
    source_db(&src, &refs).await;
    let mut source = SqliteSource::open(
        &src,
        "shop",
        vec![cursor_spec(Some(items_schema()))],
        SqliteSourceOptions {
            batch_size: 7,
            ..SqliteSourceOptions::default()
        },
    )
    .await
    .unwrap();
    let mut sink = open_sink(&dst, true).await;
    let tables = source.tables().await.unwrap();
    sink.prepare(&tables).await.unwrap();
    let batches = read_all(&mut source, None).await.unwrap();
    for (epoch, b) in batches.into_iter().enumerate() {
        sink.write(&b.table, b.batch).await.unwrap();
        sink.commit(epoch as u64 + 1).await.unwrap();
    }
    let mirrored: Vec<Vec<Value>> = sqlx::query(
        "SELECT row_id, updated, name, price, active FROM items ORDER BY CAST(row_id AS INTEGER)",
    )
    .fetch_all(&mut connect(&dst).await)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        vec![
            json!(r.get::<String, _>(0)),
            json!(r.get::<i64, _>(1)),
            json!(r.get::<String, _>(2)),
            json!(r.get::<f64, _>(3)),
            json!(r.get::<i64, _>(4)),
        ]
    })
    .collect();
    let want: Vec<Vec<Value>> = rows
        .iter()
        .map(|(id, u, name)| {
            vec![
                json!(id.to_string()),
                json!(u),
                json!(name),
                json!(*id as f64 + 0.5),
                json!(i64::from(id % 2 == 0)),
            ]
        })
        .collect();
    assert_eq!(mirrored, want);
}
