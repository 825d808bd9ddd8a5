//! `lakesync sync`: pull the slice of a gateway a token may see into a local SQLite file, and
//! with `--follow` keep it current — a replica for agents and scripts to query with plain SQL.
//!
//! ```sh
//! lakesync sync --gateway http://127.0.0.1:50051 --token "$JWT" --into todos.db [--tables todos] [--follow]
//! sqlite3 todos.db 'SELECT * FROM todos'
//! ```
//!
//! The client id is the token's `sub` (or `--client-id` when the gateway runs without auth;
//! otherwise the file's own, or a new random one). The tables are `--tables`, or every table
//! the token's rules let it see; their schemas come from the gateway. The file is an ordinary
//! replica ([`super::LocalStore`]): writing to it through the client SDK pushes the changes on
//! the next sync. The token may also come from `LAKESYNC_TOKEN`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::{Error, Result};

use super::engine::{SyncEngine, SyncOptions, SyncReport};
use super::store::LocalStore;
use super::transport::Connection;

/// The arguments of `lakesync sync`.
#[derive(Clone, Debug, clap::Args)]
pub struct SyncArgs {
    /// The gateway's Flight address, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    pub gateway: String,
    /// The JWT to present (its `sub` is the client id); default: $LAKESYNC_TOKEN.
    #[arg(long)]
    pub token: Option<String>,
    /// The SQLite file to sync into (created when missing).
    #[arg(long)]
    pub into: PathBuf,
    /// Tables to sync (comma-separated or repeated); default: every table the token may see.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Keep the file current (a live subscription) until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// The client id when the gateway runs without auth.
    #[arg(long)]
    pub client_id: Option<String>,
}

/// What `lakesync sync` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncOutcome {
    /// The tables synced.
    pub tables: Vec<String>,
    /// The first round's report.
    pub report: SyncReport,
}

/// The `sub` claim of a JWT, read without verifying it (the gateway verifies it).
pub fn token_subject(token: &str) -> Result<String> {
    let bad = |why: &str| Error::invalid("token", format!("not a JWT: {why}"));
    let payload = token.split('.').nth(1).ok_or_else(|| bad("no payload"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| bad("the payload is not base64url"))?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| bad("the payload is not JSON"))?;
    claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| bad("no `sub` claim"))
}

/// Runs `lakesync sync` until done (or, with `--follow`, until Ctrl-C), printing a summary.
pub async fn run_sync(args: SyncArgs) -> Result<()> {
    let shutdown = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let into = args.into.clone();
    let follow = args.follow;
    let outcome = run_sync_until(
        args,
        Box::pin(shutdown),
        Box::new(move |outcome| {
            let r = &outcome.report;
            println!(
                "synced {} into {}: {} checkpoint rows, {} changes pulled, {} pushed (cursor {})",
                outcome.tables.join(","),
                into.display(),
                r.checkpoint_rows,
                r.pulled,
                r.pushed,
                r.cursor
            );
            if follow {
                println!("following; Ctrl-C to stop");
            }
        }),
    )
    .await?;
    if follow {
        println!("stopped (cursor {})", outcome.report.cursor);
    }
    Ok(())
}

/// `lakesync sync` with an explicit stop signal: syncs once, calls `on_synced` with the
/// outcome, then with `--follow` keeps the file current until `shutdown` resolves.
pub async fn run_sync_until(
    args: SyncArgs,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    on_synced: Box<dyn FnOnce(SyncOutcome) + Send>,
) -> Result<SyncOutcome> {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("LAKESYNC_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let client_id = match (&args.client_id, &token) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(t)) => Some(token_subject(t)?),
        (None, None) => None,
    };
    let store = LocalStore::open_file(args.into.clone(), client_id.as_deref()).await?;
    let conn = Connection::new(&args.gateway, token.as_deref(), store.client_id())?;
    let schemas = conn.schemas().await?;
    let tables = if args.tables.is_empty() {
        conn.visible_tables().await?
    } else {
        args.tables.clone()
    };
    for name in tables.clone() {
        let Some(schema) = schemas.iter().find(|s| s.table == name).cloned() else {
            return Err(Error::NotFound {
                what: "table",
                name,
            });
        };
        store.register(schema).await?;
    }
    let mut options = SyncOptions::new(args.gateway.clone()).with_tables(tables.clone());
    options.token = token;
    let engine = SyncEngine::new(store, options)?;
    let report = engine.sync_once().await?;
    let mut outcome = SyncOutcome { tables, report };
    on_synced(outcome.clone());
    if args.follow {
        engine.run(shutdown).await?;
        outcome.report.cursor = engine.store().cursor().await?.unwrap_or(0);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `main.rs` uses: a `Sync(SyncArgs)` subcommand.
    #[test]
    fn parses_as_a_subcommand() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: Command,
        }
        #[derive(Debug, clap::Subcommand)]
        enum Command {
            Sync(SyncArgs),
        }
        let cli = Cli::try_parse_from([
            "lakesync",
            "sync",
            "--gateway",
            "http://127.0.0.1:50051",
            "--into",
            "a.db",
            "--tables",
            "todos,notes",
            "--follow",
        ])
        .unwrap();
        let Command::Sync(args) = cli.command;
        assert_eq!(args.tables, ["todos", "notes"]);
        assert!(args.follow && args.token.is_none());
        assert_eq!(args.into, PathBuf::from("a.db"));
    }

    #[test]
    fn subject_of_a_token() {
        let token = crate::gateway::auth::sign_token(
            &serde_json::json!({"sub": "agent-7", "gw": "g"}),
            "secret",
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(token_subject(&token).unwrap(), "agent-7");
        assert!(token_subject("nonsense").is_err());
    }
}
