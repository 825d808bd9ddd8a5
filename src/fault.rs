//! Pause points for crash tests: a place in a commit where a test can stop the process cold.
//!
//! Crash-safety claims ("a process killed mid-commit leaves no partial snapshot") need a kill at
//! an exact point, not a lucky one. [`pause_point`]`(name)` does nothing unless the environment
//! variable [`PAUSE_AT`] is `name` or `name#N`; then, on the first (or the `N`-th) arrival at the
//! point, it creates the file named by [`PAUSE_MARKER`] (so the test knows the process got there)
//! and waits forever, for the test's `SIGKILL`. The variables are read once per process. Points
//! are named `<component>.<step>`; the current ones:
//!
//! - `iceberg.sink.before-swap`: the Iceberg sink has written an epoch's data files, manifest
//!   and manifest list, and is about to ask the catalogue to swap the table's metadata;
//! - `iceberg.compact.before-commit`: compaction has written its base files and is about to
//!   commit its `replace` snapshot;
//! - `pipeline.planned`: the runtime has recorded an epoch's plan (sources' start and end
//!   positions) and has written nothing of it to any sink: a restart replays it into sinks that
//!   never saw it;
//! - `pipeline.sinks-committed`: every sink has committed the epoch, and the checkpoint store
//!   has not yet recorded it: a restart replays it, and the sinks drop it as already held.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable naming the pause point to stop at.
pub const PAUSE_AT: &str = "LAKESYNC_PAUSE_AT";
/// The environment variable naming the marker file created on reaching the pause point.
pub const PAUSE_MARKER: &str = "LAKESYNC_PAUSE_MARKER";

/// The armed point: its name, the arrival to pause at (1-based), the marker file.
struct Armed {
    name: String,
    nth: u64,
    marker: Option<String>,
    arrivals: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let at = std::env::var(PAUSE_AT).ok()?;
            let (name, nth) = match at.split_once('#') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                None => (at, 1),
            };
            Some(Armed {
                name,
                nth,
                marker: std::env::var(PAUSE_MARKER).ok(),
                arrivals: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Waits forever when the process was started with [`PAUSE_AT`] = `name` (see the module docs);
/// returns at once otherwise.
pub async fn pause_point(name: &str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.name != name || armed.arrivals.fetch_add(1, Ordering::SeqCst) + 1 != armed.nth {
        return;
    }
    tracing::warn!(
        point = name,
        "paused at a crash-test pause point; waiting to be killed"
    );
    if let Some(marker) = &armed.marker
        && let Err(e) = std::fs::write(marker, name)
    {
        tracing::error!(marker, error = %e, "cannot create the pause marker");
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
