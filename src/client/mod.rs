//! The client SDK: an offline-first local SQLite replica that syncs with a gateway over Arrow
//! Flight.
//!
//! - [`LocalStore`] ([`store`]) is the replica: synced tables as plain SQLite tables, plus the
//!   bookkeeping ([`tables`]). Its tracker ([`tracker`]) writes a row and records the row's
//!   column-level delta in the durable outbox ([`outbox`]) in one transaction, so local work is
//!   never lost and never half-recorded, online or not.
//! - [`SyncEngine`] ([`engine`]) syncs a replica: schema sync, an initial checkpoint, pulls until
//!   there is no more, pushes of the outbox — idempotent by deltaId, so an interrupted push is
//!   simply repeated. Remote changes are applied in cursor order, each page with its cursor in
//!   one transaction, and never over a newer pending local change to the same column
//!   ([`apply`]). [`SyncEngine::run`] ([`realtime`]) keeps a replica current through a
//!   DoExchange subscription, reconnecting with capped exponential backoff ([`backoff`]).
//! - [`LocalStore::watch`] ([`watch`]) streams a query's results as the tables it reads change;
//!   [`SyncEngine::status`] reports queue depth, last sync and last error;
//!   [`SyncEngine::execute`] runs connector actions ([`actions`]).
//! - [`cli`] is `lakesync sync`: a token's slice of a gateway in a SQLite file, for agents.
//!
//! Convergence: after a round in which nothing else changed, a replica holds exactly the rows
//! its token's sync rules allow, with the gateway's merged (column-level last-writer-wins)
//! values. Several replicas syncing the same rows therefore end up identical, whatever order
//! their changes reached the gateway in. See `docs/client.md` for a walk-through.
//!
//! ```no_run
//! use lakesync::client::{LocalStore, SyncEngine, SyncOptions};
//! use lakesync::kernel::schema::{ColumnDef, ColumnType, TableSchema};
//! use serde_json::{Map, Value, json};
//!
//! fn object(v: Value) -> Map<String, Value> {
//!     v.as_object().cloned().unwrap_or_default()
//! }
//!
//! #[tokio::main]
//! async fn main() -> lakesync::Result<()> {
//!     // The replica: a file (LocalStore::open_in_memory for tests). The client id is fixed when
//!     // the file is created and must be the token's `sub`.
//!     let store = LocalStore::open_file("todos.db", Some("alice")).await?;
//!     store
//!         .register(TableSchema::new(
//!             "todos",
//!             vec![
//!                 ColumnDef::new("title", ColumnType::String),
//!                 ColumnDef::new("owner", ColumnType::String),
//!                 ColumnDef::new("done", ColumnType::Boolean),
//!             ],
//!         ))
//!         .await?;
//!
//!     // Local writes work offline; each returns the delta it recorded.
//!     store
//!         .insert("todos", "t1", object(json!({"title": "milk", "owner": "alice"})))
//!         .await?;
//!     store.update("todos", "t1", object(json!({"done": true}))).await?;
//!
//!     // Sync: checkpoint on first contact, pull until there is no more, push the outbox.
//!     // With auth on, a JWT whose `sub` is "alice"; with auth off the client id is enough.
//!     let mut options = SyncOptions::new("http://127.0.0.1:50051");
//!     if let Ok(token) = std::env::var("LAKESYNC_TOKEN") {
//!         options = options.with_token(token);
//!     }
//!     let engine = SyncEngine::new(store.clone(), options)?;
//!     let report = engine.sync_once().await?;
//!     println!("pulled {} pushed {} (cursor {})", report.pulled, report.pushed, report.cursor);
//!
//!     // Plain SQL over the replica.
//!     let rows = store.query("SELECT title FROM todos WHERE done = 1", &[]).await?;
//!     println!("{rows:?}");
//!     Ok(())
//! }
//! ```

pub mod actions;
pub mod apply;
pub mod backoff;
pub mod cli;
pub(crate) mod decode;
pub mod engine;
pub mod outbox;
pub mod realtime;
pub mod store;
pub mod tables;
pub mod tracker;
pub mod transport;
pub(crate) mod values;
pub mod watch;

pub use actions::PreparedAction;
pub use apply::Applied;
pub use backoff::Backoff;
pub use engine::{Status, SyncEngine, SyncOptions, SyncReport};
pub use outbox::{AckSummary, OutboxEntry};
pub use store::{Changed, LocalStore, Location};
pub use tracker::Write;
pub use transport::{Connection, PushRejection, PushResult};
pub use watch::Rows;

/// Compile-time checks that the SDK's futures can be spawned (`Send` for every lifetime): a
/// regression here surfaces as an obscure "not general enough" error in callers.
#[cfg(test)]
#[allow(dead_code)]
fn futures_are_send(
    connection: Connection,
    store: LocalStore,
    engine: SyncEngine,
    schema: crate::kernel::schema::TableSchema,
) {
    fn is_send<T: Send>(_: T) {}
    is_send(connection.schemas());
    is_send(connection.visible_tables());
    is_send(LocalStore::open_file("replica.db", None));
    is_send(store.register(schema));
    is_send(store.insert("t", "r", serde_json::Map::new()));
    is_send(store.watch("SELECT 1", Vec::new()));
    is_send(engine.sync_once());
    is_send(engine.run(async {}));
    is_send(cli::run_sync_until(
        cli::SyncArgs {
            gateway: String::new(),
            token: None,
            into: std::path::PathBuf::new(),
            tables: Vec::new(),
            follow: false,
            client_id: None,
        },
        Box::pin(async {}),
        Box::new(|_| {}),
    ));
}
