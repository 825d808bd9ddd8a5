//! CloudWatch Logs as a source, against moto: the agent pipeline
//! (`pipelines/cloudwatch-to-sqlite.yaml`) puts exactly the matching log events into its SQLite
//! file, a second run after new events adds only the new ones, a following run picks new events
//! up as they come, a run killed at the runtime's
//! crash points and restarted still holds every event exactly once, and hostile log group names
//! never get past validation.
//!
//! Events are written with the AWS SDK (the source's own client) and read back from SQLite: the
//! assertions are on the rows (streams, messages, parsed fields, event ids), not on counts alone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use lakesync::adapters::cloudwatch::client::{ClientOptions, connect};
use lakesync::config::{Env, load_plan};
use lakesync::runtime::api::ReadMode;
use lakesync::runtime::pipeline::{RunOptions, run};
use sqlx::Row;

use crate::support;

const REFERENCE: &str = "pipelines/cloudwatch-to-sqlite.yaml";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// moto's endpoint, or `None` (skip) outside CI.
fn moto() -> Option<String> {
    support::service_env("moto", "LAKESYNC_MOTO_ENDPOINT")
}

async fn client(endpoint: &str) -> Client {
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_string());
    connect(
        &ClientOptions {
            region: Some(region),
            endpoint: Some(endpoint.to_string()),
        },
        "test",
    )
    .await
    .expect("client")
}

/// A fresh log group with a unique name.
async fn log_group(client: &Client) -> String {
    let group = format!("/lakesync/it/{}", support::unique_name("cw"));
    client
        .create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .expect("create log group");
    group
}

/// Puts `events` (`(timestamp ms, message)`, any order) into `stream`, creating it if needed.
async fn put(client: &Client, group: &str, stream: &str, events: &[(i64, String)]) {
    let _ = client
        .create_log_stream()
        .log_group_name(group)
        .log_stream_name(stream)
        .send()
        .await;
    let mut sorted = events.to_vec();
    sorted.sort();
    let events: Vec<InputLogEvent> = sorted
        .iter()
        .map(|(ts, message)| {
            InputLogEvent::builder()
                .timestamp(*ts)
                .message(message)
                .build()
                .expect("event")
        })
        .collect();
    let out = client
        .put_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .set_log_events(Some(events))
        .send()
        .await
        .expect("put log events");
    assert!(
        out.rejected_log_events_info().is_none(),
        "moto rejected events: {out:?}"
    );
}

/// A JSON log line.
fn json_line(level: &str, service: &str, status: i64, tag: &str) -> String {
    format!(
        r#"{{"level":"{level}","service":"{service}","status":{status},"latency_ms":12.5,"msg":"{tag}"}}"#
    )
}

/// What one round of events puts, and the `(stream, message)` pairs the agent's slice must get.
struct Round {
    expected: Vec<(String, String)>,
}

/// Puts a mix of events at `base` ms and after, tagged `tag`: matching ones in both web streams,
/// and ones each filter must drop (filter pattern, sync rule, stream prefix).
async fn put_round(client: &Client, group: &str, base: i64, tag: &str) -> Round {
    let m = |k: &str| json_line("ERROR", "checkout", 502, &format!("{tag}-{k}"));
    let web1 = vec![
        (base, m("a")),
        (
            base + 1_000,
            json_line("INFO", "checkout", 200, &format!("{tag}-info")),
        ),
        (
            base + 2_000,
            json_line("ERROR", "search", 500, &format!("{tag}-search")),
        ),
        (base + 3_000, format!("ERROR {tag} plain text, no JSON")),
        (base + 4_000, m("b")),
    ];
    // Two events at the same millisecond: both must arrive, once each.
    let web2 = vec![
        (base + 500, m("c")),
        (base + 4_000, m("d")),
        (base + 4_000, m("e")),
    ];
    let worker = vec![(base + 2_500, m("worker"))];
    put(client, group, "web-1", &web1).await;
    put(client, group, "web-2", &web2).await;
    put(client, group, "worker-1", &worker).await;
    let expected = [
        ("web-1", "a"),
        ("web-1", "b"),
        ("web-2", "c"),
        ("web-2", "d"),
        ("web-2", "e"),
    ]
    .iter()
    .map(|(s, k)| (s.to_string(), m(k)))
    .collect();
    Round { expected }
}

/// The reference pipeline copied into `dir` (so its state and output land there), optionally
/// with small pages and epochs.
fn pipeline_in(dir: &Path, small: bool) -> PathBuf {
    let mut text = std::fs::read_to_string(REFERENCE).expect("reference pipeline");
    text = text
        .replace("../.lakesync/", "state/")
        .replace("../out/", "out/");
    if small {
        text = text.replace("  max_rows: 10000", "  max_rows: 2").replace(
            "    poll_interval: 10s",
            "    poll_interval: 10s\n    page_size: 2",
        );
    }
    let path = dir.join("cloudwatch-to-sqlite.yaml");
    std::fs::write(&path, text).expect("pipeline");
    path
}

/// The process environment plus the log group the pipeline reads.
fn env_with(group: &str) -> Env {
    Env::from_vars(std::env::vars().chain([("CHECKOUT_LOG_GROUP".to_string(), group.to_string())]))
}

async fn run_once(file: &Path, group: &str) {
    let plan = load_plan(file, &env_with(group)).expect("valid pipeline");
    crate::support::run_plan_once(&plan).await;
}

/// One materialised row.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Stored {
    stream: String,
    message: String,
    level: Option<String>,
    service: Option<String>,
    status: Option<i64>,
    event_id: String,
    row_id: String,
    log_group: String,
}

/// The materialised rows, and the number of deltas logged.
async fn stored(dir: &Path) -> (Vec<Stored>, i64) {
    let url = format!(
        "sqlite://{}",
        dir.join("out/checkout-errors.sqlite").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.expect("agent db");
    let rows = sqlx::query(
        "SELECT log_stream, message, level, service, status, event_id, row_id, log_group \
         FROM log_events WHERE deleted_at IS NULL",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    let mut out: Vec<Stored> = rows
        .iter()
        .map(|r| Stored {
            stream: r.get(0),
            message: r.get(1),
            level: r.get(2),
            service: r.get(3),
            status: r.get(4),
            event_id: r.get(5),
            row_id: r.get(6),
            log_group: r.get(7),
        })
        .collect();
    out.sort();
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM lakesync_deltas")
        .fetch_one(&pool)
        .await
        .expect("delta log");
    pool.close().await;
    (out, logged)
}

/// Checks the stored rows are exactly `expected` (as `(stream, message)`), each once, with the
/// parsed fields and a row id of `<group>:<event id>`.
fn assert_exactly(rows: &[Stored], logged: i64, group: &str, expected: &[(String, String)]) {
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.stream.clone(), r.message.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = expected.iter().cloned().collect();
    assert_eq!(
        want.len(),
        expected.len(),
        "test bug: duplicate expectations"
    );
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "the stored events are not the matching ones"
    );
    assert_eq!(
        got.len(),
        expected.len(),
        "an event is stored twice: {got:?}"
    );
    let ids: BTreeSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "event ids repeat");
    assert_eq!(
        logged as usize,
        expected.len(),
        "each event's delta logged once"
    );
    for r in rows {
        assert_eq!(r.row_id, format!("{group}:{}", r.event_id));
        assert_eq!(r.log_group, group);
        assert_eq!(
            (r.level.as_deref(), r.service.as_deref(), r.status),
            (Some("ERROR"), Some("checkout"), Some(502)),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn the_agent_pipeline_gets_exactly_the_matching_events_and_then_only_new_ones() {
    let Some(endpoint) = moto() else {
        return;
    };
    let cw = client(&endpoint).await;
    let group = log_group(&cw).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = pipeline_in(dir.path(), false);

    let start = now_ms() - 30 * 60_000;
    let first = put_round(&cw, &group, start, "r1").await;
    run_once(&file, &group).await;
    let (rows, logged) = stored(dir.path()).await;
    assert_exactly(&rows, logged, &group, &first.expected);
    let first_ids: BTreeSet<String> = rows.iter().map(|r| r.event_id.clone()).collect();

    // A run with nothing new adds nothing.
    run_once(&file, &group).await;
    let (again, logged_again) = stored(dir.path()).await;
    assert_eq!((again, logged_again), (rows, logged));

    // New events; one arrives late (stamped before the newest delivered, inside the 5 min
    // lookback), one far too late (ten minutes behind: below the floor, so by design not read).
    let second = put_round(&cw, &group, start + 20 * 60_000, "r2").await;
    let late = json_line("ERROR", "checkout", 502, "late");
    let too_late = json_line("ERROR", "checkout", 502, "too-late");
    put(
        &cw,
        &group,
        "web-3",
        &[
            (start + 4_000 - 600_000, too_late),
            (start + 4_000 - 1_000, late.clone()),
        ],
    )
    .await;
    run_once(&file, &group).await;
    let (rows, logged) = stored(dir.path()).await;
    let mut expected = first.expected.clone();
    expected.extend(second.expected.iter().cloned());
    expected.push(("web-3".to_string(), late));
    // The too-late event is ten minutes behind the newest the first run delivered: not read.
    assert_exactly(&rows, logged, &group, &expected);
    let new_ids: BTreeSet<String> = rows
        .iter()
        .map(|r| r.event_id.clone())
        .filter(|id| !first_ids.contains(id))
        .collect();
    assert_eq!(
        new_ids.len(),
        second.expected.len() + 1,
        "only the new ones were added"
    );
}

/// The lakesync binary, run `--once` on `file` for `group`, paused at `pause` when given.
fn spawn(dir: &Path, file: &Path, group: &str, pause: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakesync"));
    cmd.args(["run", "--once"])
        .arg(file)
        .current_dir(dir)
        .env("CHECKOUT_LOG_GROUP", group)
        .env_remove(lakesync::fault::PAUSE_AT)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr log"));
    if let Some(point) = pause {
        cmd.env(lakesync::fault::PAUSE_AT, point)
            .env(lakesync::fault::PAUSE_MARKER, dir.join("paused"));
    }
    cmd.spawn().expect("spawn lakesync")
}

/// Runs until the pause point is reached, then SIGKILLs the process.
fn run_and_kill_at(dir: &Path, file: &Path, group: &str, point: &str) {
    let marker = dir.join("paused");
    let _ = std::fs::remove_file(&marker);
    let mut child = spawn(dir, file, group, Some(point));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            panic!("lakesync ended ({status}) before reaching {point}:\n{err}");
        }
        assert!(Instant::now() < deadline, "never reached {point}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL"); // SIGKILL on Unix
    child.wait().expect("reap");
}

/// Runs to the end; the run must have replayed the epoch the kill left uncommitted.
fn run_to_end_replaying(dir: &Path, file: &Path, group: &str) {
    let status = spawn(dir, file, group, None).wait().expect("lakesync");
    let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    assert!(status.success(), "lakesync failed: {err}");
    assert!(
        err.contains("replaying an epoch left uncommitted"),
        "the restart did not replay the killed epoch:\n{err}"
    );
}

#[tokio::test]
async fn killed_at_the_crash_points_and_restarted_every_event_is_stored_exactly_once() {
    let Some(endpoint) = moto() else {
        return;
    };
    let cw = client(&endpoint).await;
    let group = log_group(&cw).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Pages of 2 events and epochs of 2 rows: many epochs, so the kills land mid-read.
    let file = pipeline_in(dir.path(), true);
    let start = now_ms() - 40 * 60_000;
    let mut expected = put_round(&cw, &group, start, "k1").await.expected;

    // Killed after the sinks committed epoch 2 but before the checkpoint recorded it: the
    // restart replays epoch 2 (the sink drops it as held) and goes on. Events arriving in
    // between — new ones, and a late one inside the lookback window — arrive once.
    run_and_kill_at(dir.path(), &file, &group, "pipeline.sinks-committed#2");
    expected.extend(
        put_round(&cw, &group, start + 10 * 60_000, "k2")
            .await
            .expected,
    );
    let late = json_line("ERROR", "checkout", 502, "k-late");
    put(
        &cw,
        &group,
        "web-9",
        &[(start + 10 * 60_000 - 2_000, late.clone())],
    )
    .await;
    expected.push(("web-9".to_string(), late));
    run_to_end_replaying(dir.path(), &file, &group);
    let (rows, logged) = stored(dir.path()).await;
    assert_exactly(&rows, logged, &group, &expected);

    // Killed after epoch 1 of the next run was planned, before any sink saw it: the restart
    // replays it into the sink, then reads on.
    expected.extend(
        put_round(&cw, &group, start + 20 * 60_000, "k3")
            .await
            .expected,
    );
    run_and_kill_at(dir.path(), &file, &group, "pipeline.planned#1");
    expected.extend(
        put_round(&cw, &group, start + 30 * 60_000, "k4")
            .await
            .expected,
    );
    run_to_end_replaying(dir.path(), &file, &group);
    let (rows, logged) = stored(dir.path()).await;
    assert_exactly(&rows, logged, &group, &expected);
}

#[tokio::test]
async fn a_missing_log_group_fails_with_its_name_and_yaml_path() {
    let Some(endpoint) = moto() else {
        return;
    };
    let _ = endpoint;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = pipeline_in(dir.path(), false);
    let group = format!("/lakesync/it/{}", support::unique_name("missing"));
    let plan = load_plan(&file, &env_with(&group)).expect("valid pipeline");
    let err = support::try_run_plan_once(&plan)
        .await
        .expect_err("no such group")
        .to_string();
    assert!(
        err.contains(&format!(
            "log group {group:?} does not exist (sources.api_logs.log_groups[0])"
        )),
        "{err}"
    );
}

#[test]
fn hostile_log_group_names_are_rejected_with_their_yaml_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = r#"version: 1
name: hostile
sources:
  logs:
    type: cloudwatch
    region: us-east-1
    log_groups:
      - /ok/group
      - "/x\"; DROP TABLE log_events; --"
      - "grp\twith-a-tab"
      - "a b"
sinks:
  out: {type: sqlite, input: logs, path: out.sqlite}
"#;
    let file = dir.path().join("hostile.yaml");
    std::fs::write(&file, yaml).expect("pipeline");
    let err = load_plan(&file, &Env::default())
        .expect_err("refused")
        .to_string();
    for path in [
        "sources.logs.log_groups[1]",
        "sources.logs.log_groups[2]",
        "sources.logs.log_groups[3]",
    ] {
        assert!(err.contains(path), "{path} in {err}");
    }
    assert!(!err.contains("log_groups[0]"), "{err}");
    assert!(err.contains("is not a log group name"), "{err}");
}

/// The rows stored so far (none while the file does not exist yet).
async fn stored_now(dir: &Path) -> Vec<Stored> {
    let path = dir.join("out/checkout-errors.sqlite");
    if !path.exists() {
        return Vec::new();
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("agent db");
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'log_events'")
            .fetch_one(&pool)
            .await
            .expect("catalogue");
    pool.close().await;
    if tables == 0 {
        return Vec::new();
    }
    stored(dir).await.0
}

#[tokio::test]
async fn following_picks_up_new_events_every_poll_interval() {
    let Some(endpoint) = moto() else {
        return;
    };
    let cw = client(&endpoint).await;
    let group = log_group(&cw).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = pipeline_in(dir.path(), false);
    let text = std::fs::read_to_string(&file)
        .expect("pipeline")
        .replace("    poll_interval: 10s", "    poll_interval: 200ms")
        .replace("  max_age: 5s", "  max_age: 200ms");
    std::fs::write(&file, text).expect("pipeline");

    let start = now_ms() - 20 * 60_000;
    let mut expected = put_round(&cw, &group, start, "f1").await.expected;
    let plan = load_plan(&file, &env_with(&group)).expect("valid pipeline");
    let graph = lakesync::build::build(&plan).await.expect("build");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(run(
        graph,
        RunOptions {
            mode: ReadMode::Follow {
                poll_interval: Duration::from_secs(3600),
            },
            progress: false,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let wait_for = |n: usize| {
        let dir = dir.path().to_path_buf();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let rows = stored_now(&dir).await;
                if rows.len() >= n {
                    return rows;
                }
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} rows arrived",
                    rows.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(expected.len()).await;
    // The source's own poll_interval (200ms) applies, not the command line's (an hour).
    expected.extend(
        put_round(&cw, &group, start + 10 * 60_000, "f2")
            .await
            .expected,
    );
    wait_for(expected.len()).await;
    let _ = stop.send(());
    running.await.expect("join").expect("run");
    let (rows, logged) = stored(dir.path()).await;
    assert_exactly(&rows, logged, &group, &expected);
}
