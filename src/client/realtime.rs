//! Staying current: [`SyncEngine::run`] keeps a replica in step with the gateway until told to
//! stop.
//!
//! The loop runs a full round ([`SyncEngine::sync_once`]), then opens a DoExchange
//! subscription from the replica's cursor and, until it breaks:
//!
//! - applies each live batch as it arrives (one transaction each; a batch the cursor has
//!   already passed — applied by a pull — is skipped);
//! - pushes whenever a local write adds to the outbox, then pulls the gateway's verdict;
//! - runs a full round every `heartbeat` (this also settles rows the gateway will never
//!   mention, whose records a live stream does not carry).
//!
//! When the gateway cannot be reached, or the stream breaks, the loop waits with capped
//! exponential backoff ([`super::backoff`]) and starts over; local writes keep going to the
//! outbox meanwhile. Errors that retrying cannot fix — a refused token, a schema the gateway
//! does not have — end the loop with that error. Everything the loop does is serialised with
//! other rounds on the same engine.

use std::future::Future;
use std::pin::{Pin, pin};

use futures::StreamExt;

use crate::Result;

use super::engine::{SyncEngine, SyncReport, is_transient};

/// Why the live phase ended.
enum LiveEnd {
    /// Shutdown was requested.
    Stop,
    /// The stream ended or failed; reconnect.
    Reconnect,
}

impl SyncEngine {
    /// Keeps the replica current until `shutdown` resolves (see the module docs). Returns
    /// `Ok` on shutdown and the error that ended it otherwise.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let mut shutdown = pin!(shutdown);
        let mut backoff = self.inner.options.backoff.clone();
        loop {
            let failure = match self.sync_once().await {
                Ok(_) => {
                    backoff.reset();
                    match self.live(&mut shutdown).await {
                        Ok(LiveEnd::Stop) => return Ok(()),
                        Ok(LiveEnd::Reconnect) => None,
                        Err(e) if is_transient(&e) => {
                            self.note_error(&e);
                            Some(e)
                        }
                        Err(e) => {
                            self.note_error(&e);
                            return Err(e);
                        }
                    }
                }
                Err(e) if is_transient(&e) => Some(e),
                Err(e) => return Err(e),
            };
            let delay = backoff.next_delay();
            if let Some(e) = failure {
                tracing::info!(error = %e, retry_in_ms = delay.as_millis() as u64, "gateway unreachable; retrying");
            } else {
                tracing::info!(
                    retry_in_ms = delay.as_millis() as u64,
                    "live stream ended; reconnecting"
                );
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn live<F: Future<Output = ()> + Send>(
        &self,
        shutdown: &mut Pin<&mut F>,
    ) -> Result<LiveEnd> {
        let store = &self.inner.store;
        let tables = self.tables();
        let Some(any) = tables.first().and_then(|t| store.schema(t)) else {
            return Ok(LiveEnd::Stop);
        };
        let cursor = store.cursor().await?.unwrap_or(0);
        let mut live = self.inner.conn.subscribe(&tables, cursor, &any).await?;
        let mut outbox = store.outbox_watch();
        outbox.mark_unchanged();
        let mut heartbeat = tokio::time::interval(self.inner.options.heartbeat);
        heartbeat.tick().await;
        self.state().realtime = true;
        let result: Result<LiveEnd> = async {
            // Writes made while (re)connecting.
            if store.queue_depth().await? > 0 {
                self.push().await?;
            }
            loop {
                tokio::select! {
                    () = &mut *shutdown => return Ok(LiveEnd::Stop),
                    item = live.next() => match item {
                        Some(Ok((batch, at))) => {
                            let _round = self.inner.gate.lock().await;
                            let applied = store.apply_live(&batch, at).await;
                            self.record(&applied);
                            applied?;
                        }
                        Some(Err(e)) => return Err(e),
                        None => return Ok(LiveEnd::Reconnect),
                    },
                    changed = outbox.changed() => {
                        if changed.is_err() {
                            return Ok(LiveEnd::Stop);
                        }
                        let _: SyncReport = self.push().await?;
                    }
                    _ = heartbeat.tick() => {
                        let _: SyncReport = self.sync_once().await?;
                    }
                }
            }
        }
        .await;
        self.state().realtime = false;
        result
    }
}
