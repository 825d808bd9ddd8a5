//! Kernel benchmarks: deltaId, the LWW merge kernel and the sync-rule filter, in rows/s — and, in
//! the same run, the same LWW computation written as a DataFusion SQL query over the same Arrow
//! batches, with the ratio printed.
//!
//! Run with `cargo bench --bench kernel`. `LAKESYNC_BENCH_DELTAS` (default 1,000,000) sets the
//! workload size. Criterion prints its own statistics; the closing "ratio" lines compare medians
//! of repeated runs measured here.

#![allow(clippy::expect_used)] // a benchmark stops on a broken set-up

use std::hint::black_box;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use criterion::{Criterion, Throughput};
use datafusion::prelude::SessionContext;
use lakesync::kernel::delta::delta_id;
use lakesync::kernel::delta_batch::{delta_schema, deltas_to_batch};
use lakesync::kernel::merge::merge;
use lakesync::kernel::rules::{Claims, ClientFilter, SyncRules};
use lakesync::synth::{Workload, tasks_schema};

fn workload_size() -> usize {
    std::env::var("LAKESYNC_BENCH_DELTAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// The LWW merge as SQL: per row and column, the value of the newest (HLC, client, deltaId)
/// non-DELETE write of that column, kept only when newer than the row's newest DELETE.
fn lww_sql(columns: &[String]) -> String {
    let mut inner = vec![
        "_row_id".to_string(),
        "max(_hlc) AS _hlc".to_string(),
        "max(CASE WHEN _op = 3 THEN _hlc END) AS del_hlc".to_string(),
        "max(CASE WHEN _op <> 3 THEN _hlc END) AS live_hlc".to_string(),
    ];
    let mut outer = vec![
        "_row_id".to_string(),
        "_hlc".to_string(),
        "(del_hlc IS NOT NULL AND (live_hlc IS NULL OR del_hlc >= live_hlc)) AS _deleted"
            .to_string(),
    ];
    for (pos, c) in columns.iter().enumerate() {
        let set = format!("_op <> 3 AND array_has(_set, arrow_cast({pos}, 'UInt16'))");
        inner.push(format!(
            "first_value(\"{c}\" ORDER BY _hlc DESC, _client_id DESC, _delta_id DESC) FILTER (WHERE {set}) AS \"{c}\""
        ));
        inner.push(format!("max(_hlc) FILTER (WHERE {set}) AS \"{c}__v\""));
        outer.push(format!(
            "CASE WHEN \"{c}__v\" > coalesce(del_hlc, 0) THEN \"{c}\" END AS \"{c}\""
        ));
    }
    format!(
        "SELECT {} FROM (SELECT {} FROM deltas GROUP BY _row_id)",
        outer.join(", "),
        inner.join(", ")
    )
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let n = workload_size();
    let table = tasks_schema();
    let deltas = Workload::new(n / 10, 50, 7).deltas(n, 1_767_225_600_000);
    let batches: Vec<RecordBatch> = deltas
        .chunks(8192)
        .map(|c| deltas_to_batch(&table, c).expect("batch"))
        .collect();
    let state = merge(&table, None, &batches).expect("merge");
    let rules = SyncRules::from_json(lakesync::demo::DEMO_RULES).expect("rules");
    let claims = Claims::new()
        .with("sub", ["user-1"])
        .with("team", ["payments", "search"]);
    let filter = ClientFilter::new(&rules, &claims);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = SessionContext::new();
    let one = arrow::compute::concat_batches(&delta_schema(&table), &batches).expect("concat");
    ctx.register_batch("deltas", one).expect("register");
    let sql = lww_sql(&table.column_names());
    let run_sql = || {
        runtime
            .block_on(async { ctx.sql(&sql).await?.collect().await })
            .expect("sql")
    };
    let sql_rows: usize = run_sql().iter().map(RecordBatch::num_rows).sum();
    assert_eq!(
        sql_rows,
        state.num_rows(),
        "SQL and kernel must agree on the row count"
    );
    let sql_deleted: usize = run_sql()
        .iter()
        .map(|b| b.column(2).as_boolean().true_count())
        .sum();
    let kernel_deleted = state.column(2).as_boolean().true_count();
    assert_eq!(
        sql_deleted, kernel_deleted,
        "SQL and kernel must agree on tombstones"
    );

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    {
        let mut g = c.benchmark_group("kernel");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("delta_id", |b| {
            b.iter(|| {
                for d in &deltas {
                    black_box(delta_id(
                        &d.client_id,
                        d.hlc,
                        &d.table,
                        &d.row_id,
                        &d.columns,
                    ));
                }
            })
        });
        g.bench_function("merge_kernel", |b| {
            b.iter(|| merge(&table, None, black_box(&batches)).expect("merge"))
        });
        g.bench_function("merge_datafusion_sql", |b| b.iter(run_sql));
        g.throughput(Throughput::Elements(state.num_rows() as u64));
        g.bench_function("rule_filter", |b| {
            b.iter(|| filter.matches("tasks", black_box(&state)).expect("filter"))
        });
        g.finish();
    }
    c.final_summary();

    let runs = 5;
    let kernel = time(runs, || merge(&table, None, &batches).expect("merge"));
    let sql_time = time(runs, run_sql);
    let ids = time(runs, || {
        for d in &deltas {
            black_box(delta_id(
                &d.client_id,
                d.hlc,
                &d.table,
                &d.row_id,
                &d.columns,
            ));
        }
    });
    let rule = time(runs, || filter.matches("tasks", &state).expect("filter"));
    let rate = |rows: usize, d: Duration| rows as f64 / d.as_secs_f64();
    println!();
    println!(
        "workload: {n} deltas over {} rows, {} data columns, {} batches",
        state.num_rows(),
        table.columns.len(),
        batches.len()
    );
    println!("deltaId:             {:>12.0} deltas/s", rate(n, ids));
    println!(
        "merge kernel:        {:>12.0} deltas/s  ({:?})",
        rate(n, kernel),
        kernel
    );
    println!(
        "merge DataFusion SQL:{:>12.0} deltas/s  ({:?})",
        rate(n, sql_time),
        sql_time
    );
    println!(
        "ratio kernel/SQL:    {:>12.2}x faster",
        sql_time.as_secs_f64() / kernel.as_secs_f64()
    );
    println!(
        "rule filter:         {:>12.0} rows/s    ({:?} for {} rows)",
        rate(state.num_rows(), rule),
        rule,
        state.num_rows()
    );
}
