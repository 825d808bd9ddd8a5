//! The gateway as a pipeline source: what clients push flows on to the pipeline's operators and
//! sinks (the gateway's *flush targets*).
//!
//! The position is the gateway's sequence number, `{"seq": N}`. Reading after a position yields
//! the accepted records after it in order, one batch per record; when following, the stream
//! then waits for new records. Replaying a crashed epoch stops exactly at the record the epoch
//! ended with, which the durable log still holds. When the runtime reports a position committed
//! by every sink ([`Source::committed`]), the gateway counts the records up to it as flushed.

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;

use crate::gateway::Gateway;
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// Records handed to the runtime per wake-up.
const RECORDS_PER_READ: usize = 64;

/// A gateway read as a pipeline source.
#[derive(Debug)]
pub struct GatewaySource {
    name: String,
    gateway: Gateway,
}

impl GatewaySource {
    /// The source `name` reading `gateway`.
    pub fn new(name: impl Into<String>, gateway: Gateway) -> Self {
        Self {
            name: name.into(),
            gateway,
        }
    }
}

fn seq_of(position: &Position) -> Result<u64> {
    position
        .0
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            Error::invalid(
                "checkpoint",
                format!("gateway position {} has no \"seq\"", position.0),
            )
        })
}

fn position(seq: u64) -> Position {
    Position(json!({ "seq": seq }))
}

#[async_trait]
impl Source for GatewaySource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        Ok(self.gateway.tables())
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        let start = resume.as_ref().map(seq_of).transpose()?.unwrap_or(0);
        let until = match &mode {
            ReadMode::Replay { until } => Some(seq_of(until)?),
            ReadMode::Once => Some(self.gateway.head()),
            ReadMode::Follow { .. } => None,
        };
        Ok(record_stream(self.gateway.clone(), start, until))
    }

    async fn committed(&mut self, position: &Position) -> Result<()> {
        self.gateway.acknowledge(seq_of(position)?).await
    }
}

/// The stream of records after `start` (up to `until` when set), waiting for more when
/// following.
fn record_stream(gateway: Gateway, start: u64, until: Option<u64>) -> SourceStream {
    struct State {
        gateway: Gateway,
        head: tokio::sync::watch::Receiver<u64>,
        cursor: u64,
        until: Option<u64>,
        pending: std::collections::VecDeque<crate::gateway::record::RecordRef>,
    }
    let state = State {
        head: gateway.watch_head(),
        gateway,
        cursor: start,
        until,
        pending: Default::default(),
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(record) = st.pending.pop_front() {
                st.cursor = record.seq;
                let item = SourceBatch {
                    table: record.table.clone(),
                    batch: record.deltas.clone(),
                    position: position(record.seq),
                };
                return Some((Ok(item), st));
            }
            if st.until.is_some_and(|u| st.cursor >= u) {
                return None;
            }
            let due = st.gateway.records_after(st.cursor, RECORDS_PER_READ);
            let due: Vec<_> = due
                .into_iter()
                .take_while(|r| st.until.is_none_or(|u| r.seq <= u))
                .collect();
            if due.is_empty() {
                if st.until.is_some() {
                    if st.gateway.head() <= st.cursor {
                        return None;
                    }
                    let missing = Error::invalid(
                        "gateway log",
                        format!(
                            "records after {} up to {:?} are no longer held",
                            st.cursor, st.until
                        ),
                    );
                    return Some((Err(missing), st));
                }
                // Mark the head seen, then re-check, so a record accepted in between is not
                // waited past.
                st.head.borrow_and_update();
                if !st.gateway.records_after(st.cursor, 1).is_empty() {
                    continue;
                }
                if st.head.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            st.pending.extend(due);
        }
    })
    .boxed()
}
