//! Live queries: [`LocalStore::watch`] yields a query's result now and again whenever a table it
//! reads changes — by a local write or a change from the gateway.
//!
//! The tables a query reads are the registered tables whose names appear in it as identifiers
//! (bare or quoted, case-insensitive); a query that names none is re-run on every change. A
//! burst of changes is coalesced into one re-run, and a result equal to the previous one is not
//! yielded again, so a consumer sees each distinct result once. The stream runs until it is
//! dropped; a failed run yields the error and the stream goes on.

use std::collections::BTreeSet;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Map, Value};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::Result;

use super::store::LocalStore;

/// One result of a watched query: its rows, as [`LocalStore::query`] returns them.
pub type Rows = Vec<Map<String, Value>>;

/// The registered tables (`tables`) whose names appear in `sql` as identifiers.
pub fn tables_read(sql: &str, tables: &[String]) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                let word: String = chars.by_ref().take_while(|&d| d != close).collect();
                words.insert(word.to_ascii_lowercase());
            }
            '\'' => {
                // A string literal names no table.
                for d in chars.by_ref() {
                    if d == '\'' {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut word = c.to_string();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' {
                        word.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                words.insert(word.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    tables
        .iter()
        .filter(|t| words.contains(&t.to_ascii_lowercase()))
        .cloned()
        .collect()
}

struct Watch {
    store: LocalStore,
    sql: String,
    params: Vec<Value>,
    tables: BTreeSet<String>,
    changes: tokio::sync::broadcast::Receiver<std::sync::Arc<super::store::Changed>>,
    last: Option<Rows>,
    started: bool,
}

impl Watch {
    /// Waits for a change that concerns the query; `false` when no more can come.
    async fn changed(&mut self) -> bool {
        loop {
            match self.changes.recv().await {
                Ok(c) if self.tables.is_empty() || !c.tables.is_disjoint(&self.tables) => break,
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return false,
            }
        }
        // Coalesce what else is already queued.
        loop {
            match self.changes.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Closed) => return false,
            }
        }
    }
}

impl LocalStore {
    /// The result of read-only `sql` (with `params`), then a new result each time a table it
    /// reads changes (see the module docs).
    pub fn watch(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
    ) -> BoxStream<'static, Result<Rows>> {
        let sql = sql.into();
        let state = Watch {
            tables: tables_read(&sql, &self.table_names()),
            store: self.clone(),
            changes: self.changes(),
            sql,
            params,
            last: None,
            started: false,
        };
        futures::stream::unfold(state, |mut w| async move {
            loop {
                if w.started && !w.changed().await {
                    return None;
                }
                w.started = true;
                match w.store.query(&w.sql, &w.params).await {
                    Ok(rows) if w.last.as_ref() == Some(&rows) => continue,
                    Ok(rows) => {
                        w.last = Some(rows.clone());
                        return Some((Ok(rows), w));
                    }
                    Err(e) => return Some((Err(e), w)),
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_tables_a_query_reads() {
        let tables = vec!["todos".to_string(), "users".to_string(), "tags".to_string()];
        let read = tables_read(
            r#"SELECT t.title, u."name" FROM Todos t JOIN "users" u ON u._row_id = t.owner WHERE t.title != 'tags'"#,
            &tables,
        );
        assert_eq!(
            read,
            BTreeSet::from(["todos".to_string(), "users".to_string()])
        );
        assert!(tables_read("SELECT 1", &tables).is_empty());
    }
}
