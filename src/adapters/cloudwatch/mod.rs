//! [`CloudWatchSource`]: CloudWatch Logs as a pipeline source (`type: cloudwatch`): the events
//! of one or more log groups — optionally only streams with a name prefix, and only events
//! matching a CloudWatch filter pattern — as rows of one table, read incrementally with
//! `FilterLogEvents` through the official AWS SDK.
//!
//! **Rows.** Each event is one full-row `INSERT` delta ([`rows`]): `timestamp`,
//! `ingestion_time`, `log_group`, `log_stream`, `message`, `event_id`, then the `json_fields`
//! parsed from messages that are JSON objects. Its row id is `<log group>:<event id>`, its HLC the
//! event's timestamp (counter 0) and its writer `cloudwatch:<source name>`, so the same event
//! always makes the same delta, deltaId included: a sink that keeps deltas by deltaId (every
//! LakeSync sink's delta log) holds it once even if it is offered twice.
//!
//! **Reading.** A poll pages through each log group in turn with `startTime` = the group's floor
//! and `endTime` = when the poll began (so an event stamped in the future waits until its time
//! comes instead of pushing the floor ahead), at most `page_size` events per page, one batch per
//! page: memory is one page. The stream prefix and filter pattern are request parameters, never
//! interpolated into anything; the prefix is also checked on each event returned. `--once` reads
//! every group up to the time it started and ends; following polls again every
//! `poll_interval`.
//!
//! **Position and guarantee.** The position is `{"groups": {<log group>: {"floor", "seen"}}}`, one
//! [`cursor::GroupCursor`] per group: every event at or above the floor that has been delivered
//! is in `seen`, and nothing below the floor is read again. A read delivers an event iff its
//! timestamp is at or above the floor and its id is not in `seen`; after each page the floor
//! rises to (newest timestamp delivered − `lookback`). Hence, for each log group:
//!
//! - **no event is delivered twice**, across restarts, crashes and replays: the position recorded
//!   with an epoch names every event at or above its floor that the epoch and its predecessors
//!   delivered, and those below it are never read again;
//! - **every event is delivered** that `FilterLogEvents` returns before the source has delivered
//!   an event of the same group more than `lookback` (default 5 minutes) newer than it. As the
//!   newest event delivered is never in the future, an event that becomes searchable within
//!   `lookback` of its own timestamp is always delivered; CloudWatch's ingestion delay is usually
//!   seconds. An event later than that is skipped: raise `lookback` for sources that lag more;
//! - the cost of the window: each poll re-reads the last `lookback` of events (skipping them), and
//!   the position holds their ids — at most [`cursor::MAX_SEEN`] per group; a group busier than
//!   that within `lookback` narrows its window (logged), rather than growing the position.
//!
//! Events that CloudWatch deletes (retention) before they are read are not delivered. Changing
//! `filter_pattern` or `stream_prefix` does not re-read what lies below the floors already
//! recorded (use a new `state_dir` for that); a log group added to `log_groups` later starts at
//! `start_time`.
//!
//! **Replays.** A crashed epoch is re-read from its start position up to its recorded end: the
//! replay delivers the events the end position covers and its start did not (those in the end's
//! `seen`, and any below the end's floor), and ends with the end position exactly, so events that
//! arrived since are left for the next epoch. Events that arrived late below the end's floor may
//! be included — never ones delivered before.
//!
//! **Throttling** is retried with exponential backoff and jitter, bounded, with a warning each
//! time; a missing log group fails with its name and YAML path (see [`client`]).

pub mod client;
pub mod cursor;
pub mod rows;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_cloudwatchlogs::Client;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use self::client::{Backoff, ClientOptions, Query};
use self::cursor::{GroupCursor, MAX_SEEN};
use self::rows::{Event, RowsBuilder};
use crate::kernel::schema::ColumnType;
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// The longest log group name CloudWatch allows.
pub const MAX_LOG_GROUP_LEN: usize = 512;

/// The most events one `FilterLogEvents` page may hold.
pub const MAX_PAGE_SIZE: u32 = 10_000;

/// Why `name` is not a log group name CloudWatch allows (`[.\-_/#A-Za-z0-9]{1,512}`), if it is
/// not one.
pub fn log_group_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a log group name must not be empty".to_string());
    }
    if name.len() > MAX_LOG_GROUP_LEN {
        return Some(format!(
            "a log group name is at most {MAX_LOG_GROUP_LEN} characters, this one has {}",
            name.len()
        ));
    }
    let bad = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#')));
    bad.map(|c| {
        format!(
            "{name:?} is not a log group name: {c:?} is not allowed (only letters, digits and . - _ / #)"
        )
    })
}

/// Parses `start_time`: RFC 3339, or `-<duration>` before `now_ms`. Returns ms since the epoch.
pub fn parse_start_time(text: &str, now_ms: i64) -> std::result::Result<i64, String> {
    let text = text.trim();
    if let Some(ago) = text.strip_prefix('-') {
        let ago: crate::config::units::HumanDuration = ago.parse().map_err(|e: String| {
            format!("{e}; a relative start_time is a duration before now, e.g. \"-24h\"")
        })?;
        let ms = i64::try_from(ago.get().as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(ms).max(0));
    }
    crate::kernel::delta_batch::parse_timestamp(text)
        .map(|micros| micros.div_euclid(1000).max(0))
        .ok_or_else(|| {
            format!(
                "{text:?} is not a start time: use RFC 3339 (\"2026-11-01T00:00:00Z\") or a duration before now (\"-24h\")"
            )
        })
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What a [`CloudWatchSource`] reads, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudWatchOptions {
    /// Region and endpoint.
    pub client: ClientOptions,
    /// The log groups, each with its YAML path for errors.
    pub log_groups: Vec<(String, String)>,
    /// Only streams starting with this.
    pub stream_prefix: Option<String>,
    /// A CloudWatch filter pattern.
    pub filter_pattern: Option<String>,
    /// Where a group with no position starts (ms since the epoch).
    pub start_ms: i64,
    /// The columns extracted from JSON messages (empty: messages are not parsed).
    pub json_fields: Vec<(String, ColumnType)>,
    /// Events per page, 1–10000.
    pub page_size: u32,
    /// How far behind the newest delivered event late events are still picked up.
    pub lookback: Duration,
    /// How often to poll when following (the source's own setting, not the command line's).
    pub poll_interval: Duration,
    /// Retries of throttled calls.
    pub backoff: Backoff,
}

/// CloudWatch Logs as a source: see the [module docs](self).
pub struct CloudWatchSource {
    name: String,
    table: TableRef,
    options: CloudWatchOptions,
    client: Option<Client>,
}

impl fmt::Debug for CloudWatchSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudWatchSource")
            .field("name", &self.name)
            .field("table", &self.table.table)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl CloudWatchSource {
    /// A source named `name` producing `table` (see [`rows::table_schema`]); checks the log
    /// group names and the page size. Connects on [`Source::open`].
    pub fn new(
        name: impl Into<String>,
        table: TableRef,
        options: CloudWatchOptions,
    ) -> Result<Self> {
        let name = name.into();
        for (group, at) in &options.log_groups {
            if let Some(problem) = log_group_name_problem(group) {
                return Err(Error::invalid(
                    "cloudwatch source",
                    format!("source {name:?}: {at}: {problem}"),
                ));
            }
        }
        if !(1..=MAX_PAGE_SIZE).contains(&options.page_size) {
            return Err(Error::invalid(
                "cloudwatch source",
                format!("source {name:?}: page_size must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        Ok(Self {
            name,
            table,
            options,
            client: None,
        })
    }

    fn here(&self) -> String {
        format!("cloudwatch source {:?}", self.name)
    }

    /// The position of every group at the start.
    fn initial(&self) -> Vec<GroupCursor> {
        self.options
            .log_groups
            .iter()
            .map(|_| GroupCursor::starting_at(self.options.start_ms))
            .collect()
    }

    /// The cursors a position holds for the configured groups (a group it lacks starts at
    /// `start_time`; groups no longer configured are dropped).
    fn cursors_of(&self, position: Option<&Position>) -> Result<Vec<GroupCursor>> {
        let Some(position) = position else {
            return Ok(self.initial());
        };
        let groups = parse_position(position, &self.here())?;
        Ok(self
            .options
            .log_groups
            .iter()
            .map(|(group, _)| {
                groups
                    .get(group)
                    .cloned()
                    .unwrap_or_else(|| GroupCursor::starting_at(self.options.start_ms))
            })
            .collect())
    }
}

/// The groups of a position this source wrote.
fn parse_position(position: &Position, here: &str) -> Result<BTreeMap<String, GroupCursor>> {
    let bad = |detail: String| {
        Error::invalid(
            "source position",
            format!(
                "{here}: {} is not a position of this source: {detail}",
                position.0
            ),
        )
    };
    match &position.0 {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => match map.get("groups") {
            Some(groups) => serde_json::from_value(groups.clone()).map_err(|e| bad(e.to_string())),
            None => Err(bad("it has no \"groups\"".to_string())),
        },
        _ => Err(bad("expected a JSON object".to_string())),
    }
}

/// The position of `cursors` for `groups`.
fn position_of(groups: &[(String, String)], cursors: &[GroupCursor]) -> Position {
    let map: Map<String, Value> = groups
        .iter()
        .zip(cursors)
        .map(|((group, _), cursor)| {
            (
                group.clone(),
                serde_json::to_value(cursor).unwrap_or(Value::Null),
            )
        })
        .collect();
    Position(json!({ "groups": map }))
}

#[async_trait]
impl Source for CloudWatchSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        Ok(vec![self.table.clone()])
    }

    /// Every group at `start_time` — recorded so that a relative start (`-24h`) is fixed when
    /// the first epoch is planned, and a replay of it starts where the original did.
    fn start_position(&self) -> Option<Position> {
        Some(position_of(&self.options.log_groups, &self.initial()))
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        let here = self.here();
        let cursors = self.cursors_of(resume.as_ref())?;
        let until = match &mode {
            ReadMode::Replay { until } => Some(self.cursors_of(Some(until))?),
            _ => None,
        };
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let client = client::connect(&self.options.client, &here).await?;
                self.client = Some(client.clone());
                client
            }
        };
        let replay_end = match &mode {
            ReadMode::Replay { until } => Some(until.clone()),
            _ => None,
        };
        let reader = Reader {
            here,
            client,
            table: self.table.clone(),
            client_id: format!("cloudwatch:{}", self.name),
            options: self.options.clone(),
            rows: RowsBuilder::new(&self.options.json_fields),
            cursors,
            until,
            mode,
            todo: VecDeque::new(),
            current: None,
            poll_end: 0,
            polls: 0,
        };
        let state = ReplayState {
            reader,
            end: replay_end,
            held: None,
            finished: false,
        };
        Ok(futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next().await {
                Ok(Some(batch)) => Some((Ok(batch), Some(state))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed())
    }
}

/// The pagination under way: the group, its query's start, and the token of the next page.
struct Paging {
    group: usize,
    start_ms: i64,
    token: Option<String>,
}

struct Reader {
    here: String,
    client: Client,
    table: TableRef,
    client_id: String,
    options: CloudWatchOptions,
    rows: RowsBuilder,
    cursors: Vec<GroupCursor>,
    /// When replaying: the cursors at the end of the epoch being replayed.
    until: Option<Vec<GroupCursor>>,
    mode: ReadMode,
    /// Groups still to read in the current poll.
    todo: VecDeque<usize>,
    current: Option<Paging>,
    /// The current poll's `endTime`.
    poll_end: i64,
    polls: u64,
}

impl Reader {
    /// The next batch of events, or `None` when a `Once` or `Replay` read is done.
    async fn next(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            if let Some(paging) = self.current.take() {
                if let Some(batch) = self.page(paging).await? {
                    return Ok(Some(batch));
                }
                continue;
            }
            if let Some(group) = self.todo.pop_front() {
                self.current = Some(Paging {
                    group,
                    start_ms: self.cursors[group].floor,
                    token: None,
                });
                continue;
            }
            if self.polls > 0 {
                match &self.mode {
                    ReadMode::Once | ReadMode::Replay { .. } => return Ok(None),
                    ReadMode::Follow { .. } => {
                        tokio::time::sleep(self.options.poll_interval).await;
                    }
                }
            }
            self.polls += 1;
            self.poll_end = now_ms();
            self.todo = (0..self.cursors.len()).collect();
        }
    }

    /// Fetches one page; returns its batch when it delivered something.
    async fn page(&mut self, paging: Paging) -> Result<Option<SourceBatch>> {
        let g = paging.group;
        let (log_group, yaml_path) = self.options.log_groups[g].clone();
        let query = Query {
            log_group: log_group.clone(),
            yaml_path,
            stream_prefix: self.options.stream_prefix.clone(),
            filter_pattern: self.options.filter_pattern.clone(),
            start_ms: paging.start_ms,
            end_ms: self.poll_end.max(paging.start_ms),
            limit: i32::try_from(self.options.page_size).unwrap_or(10_000),
        };
        let page = client::fetch_page(
            &self.client,
            &query,
            paging.token.as_deref(),
            &self.options.backoff,
            &self.here,
        )
        .await?;
        let prefix = self.options.stream_prefix.as_deref().unwrap_or("");
        for e in page.events() {
            let (Some(timestamp), Some(event_id)) = (e.timestamp(), e.event_id()) else {
                tracing::warn!(source = %self.here, log_group = %log_group, "an event without a timestamp or id; skipped");
                continue;
            };
            if !e.log_stream_name().unwrap_or("").starts_with(prefix) {
                continue;
            }
            if let Some(until) = &self.until
                && !until[g].covers(timestamp, event_id)
            {
                continue;
            }
            if !self.cursors[g].admit(timestamp, event_id) {
                continue;
            }
            self.rows.push(&Event {
                log_group: &log_group,
                log_stream: e.log_stream_name(),
                timestamp,
                ingestion_time: e.ingestion_time(),
                message: e.message(),
                event_id,
            })?;
        }
        let lookback_ms = i64::try_from(self.options.lookback.as_millis()).unwrap_or(i64::MAX);
        if self.cursors[g].settle(lookback_ms, MAX_SEEN) {
            tracing::warn!(source = %self.here, log_group = %log_group, floor = self.cursors[g].floor, "more than {MAX_SEEN} events within the lookback window: the window is narrowed for this group");
        }
        // A token equal to the one sent would loop forever: treat it as the end.
        if let Some(next) = page.next_token()
            && paging.token.as_deref() != Some(next)
        {
            self.current = Some(Paging {
                token: Some(next.to_string()),
                ..paging
            });
        }
        if self.rows.is_empty() {
            return Ok(None);
        }
        let batch = self.rows.finish(&self.table, &self.client_id)?;
        tracing::debug!(source = %self.here, log_group = %log_group, rows = batch.num_rows(), "read a page of log events");
        Ok(Some(SourceBatch {
            table: self.table.clone(),
            batch,
            position: position_of(&self.options.log_groups, &self.cursors),
        }))
    }
}

/// A read that, when replaying, ends with the epoch's end position exactly: the last batch is
/// held back and given that position (or an empty batch carries it).
struct ReplayState {
    reader: Reader,
    end: Option<Position>,
    held: Option<SourceBatch>,
    finished: bool,
}

impl ReplayState {
    async fn next(&mut self) -> Result<Option<SourceBatch>> {
        let Some(end) = self.end.clone() else {
            return self.reader.next().await;
        };
        if self.finished {
            return Ok(None);
        }
        loop {
            match self.reader.next().await? {
                Some(batch) => {
                    if let Some(previous) = self.held.replace(batch) {
                        return Ok(Some(previous));
                    }
                }
                None => {
                    self.finished = true;
                    let last = match self.held.take() {
                        Some(batch) => batch,
                        None => SourceBatch {
                            table: self.reader.table.clone(),
                            batch: self
                                .reader
                                .rows
                                .finish(&self.reader.table, &self.reader.client_id)?,
                            position: end.clone(),
                        },
                    };
                    return Ok(Some(SourceBatch {
                        position: end,
                        ..last
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_group_names_follow_cloudwatch_rules() {
        for ok in ["/aws/lambda/fn-1", "app.logs#prod", "a", &"x".repeat(512)] {
            assert_eq!(log_group_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a b",
            "x\"; DROP",
            "grp*",
            "name\n",
            "ünïcode",
            &"x".repeat(513),
        ] {
            assert!(log_group_name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn start_times_are_absolute_or_before_now() {
        let now = 1_780_000_000_000;
        assert_eq!(parse_start_time("-24h", now), Ok(now - 86_400_000));
        assert_eq!(parse_start_time("-90m", now), Ok(now - 5_400_000));
        assert_eq!(
            parse_start_time("2026-01-01T00:00:00Z", now),
            Ok(1_767_225_600_000)
        );
        assert_eq!(parse_start_time("-10000w", now), Ok(0));
        assert!(parse_start_time("yesterday", now).is_err());
        assert!(parse_start_time("-5", now).is_err());
    }

    #[test]
    fn positions_name_each_group() {
        let groups = vec![
            ("/a".to_string(), "p[0]".to_string()),
            ("/b".to_string(), "p[1]".to_string()),
        ];
        let mut a = GroupCursor::starting_at(5);
        a.admit(7, "e1");
        let p = position_of(&groups, &[a.clone(), GroupCursor::starting_at(0)]);
        let parsed = parse_position(&p, "here").unwrap();
        assert_eq!(parsed["/a"], a);
        assert!(parse_position(&Position(json!({"rows": 3})), "here").is_err());
        assert!(parse_position(&Position(json!([1])), "here").is_err());
    }
}
