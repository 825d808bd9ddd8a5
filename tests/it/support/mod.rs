//! Shared helpers for the integration tests.
//!
//! Tests that need a real service (PostgreSQL, MariaDB, S3, an Iceberg REST catalogue, NATS,
//! moto) learn where it runs from the environment variables that `scripts/services.sh start`
//! prints, for example:
//!
//! ```sh
//! eval "$(bash scripts/services.sh start)"
//! cargo test --test it
//! bash scripts/services.sh stop
//! ```
//!
//! A developer who has not started the services still gets a green run: such tests say loudly
//! that they were skipped and return early. In CI (`CI=true` or `CI=1`) a missing service is a
//! broken set-up, never a reason to skip, so the test fails instead.

pub mod gateway_process;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Returns the value of the environment variable `var`, which `scripts/services.sh` sets when
/// `service` is running.
///
/// If the variable is unset or empty, the service is taken to be absent:
///
/// - outside CI, a `SKIPPED: …` line is printed to stderr and `None` is returned, so the
///   calling test can return early;
/// - when the environment variable `CI` is `true` or `1`, this panics, because CI must start
///   every service its tests need.
///
/// Typical use at the top of a test:
///
/// ```ignore
/// let Some(url) = support::service_env("postgres", "LAKESYNC_PG_URL") else {
///     return;
/// };
/// ```
#[track_caller]
pub fn service_env(service: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => {
            if in_ci() {
                panic!(
                    "{service} is missing in CI: {var} is not set. CI must start it with \
                     `eval \"$(bash scripts/services.sh start)\"` before running the tests."
                );
            }
            // Written straight to the stderr handle, not with `eprint!`, so the test harness
            // does not capture it: the notice shows even without `--nocapture`. One write, so
            // that parallel tests do not interleave their notices.
            let notice = format!(
                "\n========================================================================\n\
                 SKIPPED: {service} is not running ({var} is set by scripts/services.sh; \
                 run scripts/test.sh)\n\
                 ========================================================================\n"
            );
            let _ = std::io::stderr().lock().write_all(notice.as_bytes());
            None
        }
    }
}

/// Returns true when the environment variable `CI` is `true` or `1` (case-insensitive).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| {
            let v = v.trim();
            v == "1" || v.eq_ignore_ascii_case("true")
        })
        .unwrap_or(false)
}

/// Returns a name that is unique across test runs and processes: `prefix`, the process id, the
/// current time in nanoseconds and a per-process counter, joined by underscores (for example
/// `smoke_4242_1732650000123456789_0`).
///
/// The result contains only ASCII letters, digits and underscores if `prefix` does, so it is a
/// valid SQL identifier, NATS stream name and object-key component.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}_{}_{nanos}_{n}", std::process::id())
}

/// Copies the directory tree `from` into `to` (created), leaving out files named in `skip`.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path, skip: &[&str]) {
    std::fs::create_dir_all(to).expect("create the target directory");
    for entry in std::fs::read_dir(from)
        .expect("read the source directory")
        .flatten()
    {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target, skip);
        } else if !skip.iter().any(|name| entry.file_name() == *name) {
            std::fs::copy(entry.path(), target).expect("copy a file");
        }
    }
}

/// Builds `plan` and runs it once, as `lakesync run --once` does.
pub async fn try_run_plan_once(
    plan: &lakesync::config::Plan,
) -> lakesync::Result<lakesync::runtime::pipeline::RunSummary> {
    let graph = lakesync::build::build(plan).await?;
    let options = lakesync::runtime::pipeline::RunOptions {
        mode: lakesync::runtime::api::ReadMode::Once,
        progress: false,
    };
    lakesync::runtime::pipeline::run(graph, options, std::future::pending()).await
}

/// [`try_run_plan_once`], failing the test on an error.
pub async fn run_plan_once(
    plan: &lakesync::config::Plan,
) -> lakesync::runtime::pipeline::RunSummary {
    try_run_plan_once(plan)
        .await
        .expect("run the pipeline once")
}

/// Loads the pipeline file `file` with the process's environment and runs it once.
pub async fn run_file_once(file: &std::path::Path) -> lakesync::runtime::pipeline::RunSummary {
    let plan = lakesync::config::load_plan(file, &lakesync::config::Env::process())
        .expect("a valid pipeline");
    run_plan_once(&plan).await
}
