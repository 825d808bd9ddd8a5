//! The tracker: local writes that record their own deltas.
//!
//! [`LocalStore::insert`], [`LocalStore::update`], [`LocalStore::upsert`] and
//! [`LocalStore::delete`] each run one SQLite transaction ([`LocalStore::write_all`] runs many
//! writes in one) that reads the row's current image,
//! extracts the column-level delta exactly as the kernel does ([`extract_delta`]: an INSERT of
//! the given columns, an UPDATE of the changed columns only, a DELETE with no columns), stamps
//! it with a fresh HLC from the store's clock, writes the row, appends the delta to the outbox
//! and saves the clock — all or nothing. A write that changes nothing records nothing and
//! returns `None`.
//!
//! Values are checked against the table schema before anything is written (unknown columns,
//! wrong types), with the same rules the gateway applies to a pushed batch, so a change the
//! tracker accepts is one the gateway will accept.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

use crate::adapters::sqlite::dialect::{Bind, query_with};
use crate::kernel::delta::{DeltaOp, ExtractContext, RowDelta, extract_delta};
use crate::kernel::delta_batch::{deltas_to_batch, format_timestamp, parse_timestamp};
use crate::kernel::schema::{ColumnType, TableSchema, quote_identifier};
use crate::{Error, Result};

use super::outbox::enqueue;
use super::store::{LocalStore, db_error, keys, meta_set, read_row};
use super::tables::ROW_ID_COLUMN;
use super::values::json_to_bind;

/// One local write, for [`LocalStore::write_all`].
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// A new row (`CONFLICT` if it exists).
    Insert {
        /// The table.
        table: String,
        /// The row.
        row_id: String,
        /// Its columns.
        values: Map<String, Value>,
    },
    /// Some columns of an existing row (`NOT_FOUND` if it does not exist).
    Update {
        /// The table.
        table: String,
        /// The row.
        row_id: String,
        /// The columns to set.
        changes: Map<String, Value>,
    },
    /// Insert, or update the given columns when the row exists.
    Upsert {
        /// The table.
        table: String,
        /// The row.
        row_id: String,
        /// The columns to set.
        values: Map<String, Value>,
    },
    /// Remove the row (nothing when it does not exist).
    Delete {
        /// The table.
        table: String,
        /// The row.
        row_id: String,
    },
}

impl Write {
    fn target(&self) -> (&str, &str) {
        match self {
            Self::Insert { table, row_id, .. }
            | Self::Update { table, row_id, .. }
            | Self::Upsert { table, row_id, .. }
            | Self::Delete { table, row_id } => (table, row_id),
        }
    }
}

impl LocalStore {
    /// Inserts row `row_id` of `table` with `values`. Fails with `CONFLICT` when the row
    /// exists. Returns the recorded INSERT delta.
    pub async fn insert(
        &self,
        table: &str,
        row_id: &str,
        values: Map<String, Value>,
    ) -> Result<RowDelta> {
        let write = Write::Insert {
            table: table.to_string(),
            row_id: row_id.to_string(),
            values,
        };
        self.write_one(write)
            .await?
            .ok_or_else(|| Error::internal("an insert recorded no delta"))
    }

    /// Sets `changes` on the existing row `row_id` of `table` (`NOT_FOUND` when missing).
    /// Returns the UPDATE delta of the columns that really changed, or `None`.
    pub async fn update(
        &self,
        table: &str,
        row_id: &str,
        changes: Map<String, Value>,
    ) -> Result<Option<RowDelta>> {
        self.write_one(Write::Update {
            table: table.to_string(),
            row_id: row_id.to_string(),
            changes,
        })
        .await
    }

    /// Inserts row `row_id`, or updates the given columns when it exists. Returns the recorded
    /// delta, or `None` when nothing changed.
    pub async fn upsert(
        &self,
        table: &str,
        row_id: &str,
        values: Map<String, Value>,
    ) -> Result<Option<RowDelta>> {
        self.write_one(Write::Upsert {
            table: table.to_string(),
            row_id: row_id.to_string(),
            values,
        })
        .await
    }

    /// Deletes row `row_id` of `table`. Returns the DELETE delta, or `None` when there was no
    /// such row.
    pub async fn delete(&self, table: &str, row_id: &str) -> Result<Option<RowDelta>> {
        self.write_one(Write::Delete {
            table: table.to_string(),
            row_id: row_id.to_string(),
        })
        .await
    }

    async fn write_one(&self, write: Write) -> Result<Option<RowDelta>> {
        let mut deltas = self.write_all(vec![write]).await?;
        Ok(deltas.pop().flatten())
    }

    /// Applies `writes` in order in one transaction — all of them or, when one fails, none —
    /// and returns each one's delta (`None` for a write that changed nothing). Much faster than
    /// one call per write for bulk work: one commit (one `fsync`) for the lot.
    pub async fn write_all(&self, writes: Vec<Write>) -> Result<Vec<Option<RowDelta>>> {
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        let mut out = Vec::with_capacity(writes.len());
        let mut tables = BTreeSet::new();
        for write in writes {
            let delta = self.write_in(&mut tx, write).await?;
            if let Some(d) = &delta {
                tables.insert(d.table.clone());
            }
            out.push(delta);
        }
        let Some(last) = out.iter().flatten().map(|d| d.hlc).max() else {
            return Ok(out);
        };
        meta_set(&mut tx, keys::HLC, &last.to_string()).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("committing local writes", e))?;
        drop(conn);
        self.announce(tables, false);
        self.outbox_grew();
        Ok(out)
    }

    /// One write inside the caller's transaction: row, delta, outbox entry.
    async fn write_in(&self, tx: &mut SqliteConnection, write: Write) -> Result<Option<RowDelta>> {
        let (table, row_id) = write.target();
        let (table, row_id) = (table.to_string(), row_id.to_string());
        let schema = self.table(&table)?;
        if row_id.is_empty() {
            return Err(Error::invalid("row", "a row id must not be empty"));
        }
        if let Write::Insert { values, .. }
        | Write::Update {
            changes: values, ..
        }
        | Write::Upsert { values, .. } = &write
            && let Some(unknown) = values.keys().find(|c| schema.column(c).is_none())
        {
            return Err(Error::schema(format!(
                "table {table:?} has no column {unknown:?}"
            )));
        }
        let columns = schema.column_names();
        let before = read_row(tx, &schema, &row_id).await?;
        let after = match (write, &before) {
            (Write::Insert { .. }, Some(_)) => {
                return Err(Error::Conflict(format!(
                    "row {row_id:?} of table {table:?} exists; update it instead"
                )));
            }
            (Write::Update { .. }, None) => {
                return Err(Error::NotFound {
                    what: "row",
                    name: format!("{table}/{row_id}"),
                });
            }
            (Write::Insert { values, .. } | Write::Upsert { values, .. }, None) => {
                Some(normalise(&schema, values)?)
            }
            (
                Write::Update {
                    changes: values, ..
                }
                | Write::Upsert { values, .. },
                Some(before),
            ) => {
                let mut after = before.clone();
                after.extend(normalise(&schema, values)?);
                Some(after)
            }
            (Write::Delete { .. }, _) => None,
        };
        let ctx = ExtractContext {
            table: &table,
            row_id: &row_id,
            client_id: self.client_id(),
            hlc: self.now(),
            columns: Some(columns.as_slice()),
        };
        let Some(delta) = extract_delta(before.as_ref(), after.as_ref(), ctx) else {
            return Ok(None);
        };
        // The gateway's own conversion: a value it would refuse is refused here, before any
        // write.
        deltas_to_batch(&schema, std::slice::from_ref(&delta))?;
        write_row(tx, &schema, &delta).await?;
        enqueue(tx, &delta).await?;
        tracing::trace!(table, row = row_id, op = ?delta.op, hlc = %delta.hlc, "local change");
        Ok(Some(delta))
    }
}

/// `values` with timestamps in the one text form the replica reads back (RFC 3339, UTC, the
/// shortest exact fraction), so that writing the same instant twice is no change.
fn normalise(schema: &TableSchema, mut values: Map<String, Value>) -> Result<Map<String, Value>> {
    for (name, value) in values.iter_mut() {
        if schema
            .column(name)
            .is_some_and(|c| c.column_type == ColumnType::Timestamp)
            && let Value::String(text) = value
        {
            let micros = parse_timestamp(text).ok_or_else(|| {
                Error::schema(format!(
                    "column {name:?} is a timestamp column; {text:?} is not RFC 3339"
                ))
            })?;
            *value = Value::String(format_timestamp(micros)?);
        }
    }
    Ok(values)
}

/// Applies a local delta to its row.
async fn write_row(
    conn: &mut SqliteConnection,
    schema: &TableSchema,
    delta: &RowDelta,
) -> Result<()> {
    let table = quote_identifier(&schema.table);
    let id = quote_identifier(ROW_ID_COLUMN);
    let mut binds = Vec::with_capacity(delta.columns.len() + 1);
    let mut names = Vec::with_capacity(delta.columns.len());
    for c in &delta.columns {
        let def = schema.column(&c.column).ok_or_else(|| {
            Error::schema(format!(
                "table {:?} has no column {:?}",
                schema.table, c.column
            ))
        })?;
        names.push(quote_identifier(&c.column));
        binds.push(json_to_bind(&c.column, def.column_type, &c.value)?);
    }
    let sql = match delta.op {
        DeltaOp::Insert => {
            let mut cols = vec![id];
            cols.extend(names);
            binds.insert(0, Bind::Text(delta.row_id.clone()));
            format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                cols.join(", "),
                vec!["?"; binds.len()].join(", ")
            )
        }
        DeltaOp::Update => {
            binds.push(Bind::Text(delta.row_id.clone()));
            format!(
                "UPDATE {table} SET {} WHERE {id} = ?",
                names
                    .iter()
                    .map(|n| format!("{n} = ?"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        DeltaOp::Delete => {
            binds = vec![Bind::Text(delta.row_id.clone())];
            format!("DELETE FROM {table} WHERE {id} = ?")
        }
    };
    query_with(&sql, binds).execute(conn).await.map_err(|e| {
        db_error(
            format!("writing row {:?} of {:?}", delta.row_id, schema.table),
            e,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::schema::ColumnDef;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    async fn store(path: Option<&std::path::Path>) -> LocalStore {
        let store = match path {
            Some(p) => LocalStore::open_file(p, Some("me")).await.unwrap(),
            None => LocalStore::open_in_memory("me").await.unwrap(),
        };
        store
            .register(TableSchema::new(
                "todos",
                vec![
                    ColumnDef::new("title", ColumnType::String),
                    ColumnDef::new("done", ColumnType::Boolean),
                    ColumnDef::new("due", ColumnType::Timestamp),
                ],
            ))
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn writes_record_their_deltas_in_the_outbox() {
        let s = store(None).await;
        let d = s
            .insert("todos", "r1", obj(json!({"title": "milk", "done": false})))
            .await
            .unwrap();
        assert_eq!(d.op, DeltaOp::Insert);
        assert_eq!(d.client_id, "me");
        d.verify_delta_id().unwrap();
        let u = s
            .update("todos", "r1", obj(json!({"title": "milk", "done": true})))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.op, DeltaOp::Update);
        assert_eq!(u.columns.len(), 1, "only the changed column: {u:?}");
        assert!(u.hlc > d.hlc);
        assert!(
            s.update("todos", "r1", obj(json!({"done": true})))
                .await
                .unwrap()
                .is_none(),
            "no change, no delta"
        );
        let row = s.get("todos", "r1").await.unwrap().unwrap();
        assert_eq!(row["done"], json!(true));
        assert_eq!(row["due"], Value::Null);
        let pending = s.pending(10).await.unwrap();
        assert_eq!(
            pending.iter().map(|e| &e.delta).collect::<Vec<_>>(),
            [&d, &u]
        );
        let gone = s.delete("todos", "r1").await.unwrap().unwrap();
        assert!(gone.columns.is_empty());
        assert!(s.delete("todos", "r1").await.unwrap().is_none());
        assert_eq!(s.queue_depth().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_batch_of_writes_is_all_or_nothing() {
        let s = store(None).await;
        let insert = |id: &str| Write::Insert {
            table: "todos".into(),
            row_id: id.into(),
            values: obj(json!({"title": id})),
        };
        let gone = Write::Delete {
            table: "todos".into(),
            row_id: "nothing-here".into(),
        };
        let deltas = s
            .write_all(vec![insert("a"), insert("b"), gone])
            .await
            .unwrap();
        assert_eq!(deltas.iter().flatten().count(), 2);
        assert!(deltas[2].is_none());
        let e = s
            .write_all(vec![insert("c"), insert("a")])
            .await
            .unwrap_err();
        assert_eq!(e.code(), "CONFLICT");
        assert!(s.get("todos", "c").await.unwrap().is_none(), "rolled back");
        assert_eq!(s.queue_depth().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn refused_writes_change_nothing() {
        let s = store(None).await;
        s.insert("todos", "r1", obj(json!({"title": "milk"})))
            .await
            .unwrap();
        let cases = [
            s.insert("todos", "r1", obj(json!({"title": "again"})))
                .await,
            s.insert("todos", "r2", obj(json!({"colour": "red"}))).await,
            s.insert("todos", "r2", obj(json!({"done": "yes"}))).await,
            s.insert("todos", "r2", obj(json!({"due": "soon"}))).await,
            s.insert("todos", "", obj(json!({}))).await,
            s.insert("nope", "r2", obj(json!({}))).await,
        ];
        let codes: Vec<&str> = cases
            .iter()
            .map(|r| r.as_ref().unwrap_err().code())
            .collect();
        assert_eq!(
            codes,
            [
                "CONFLICT",
                "SCHEMA_MISMATCH",
                "SCHEMA_MISMATCH",
                "SCHEMA_MISMATCH",
                "VALIDATION_ERROR",
                "NOT_FOUND"
            ]
        );
        let e = s
            .update("todos", "r9", obj(json!({"title": "x"})))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "NOT_FOUND");
        assert_eq!(s.queue_depth().await.unwrap(), 1);
        assert_eq!(s.rows("todos").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn timestamps_are_normalised_and_the_clock_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.db");
        let last = {
            let s = store(Some(&path)).await;
            s.insert(
                "todos",
                "r1",
                obj(json!({"due": "2024-05-01T12:00:00+02:00"})),
            )
            .await
            .unwrap();
            assert!(
                s.update(
                    "todos",
                    "r1",
                    obj(json!({"due": "2024-05-01T10:00:00.000Z"}))
                )
                .await
                .unwrap()
                .is_none(),
                "the same instant is no change"
            );
            let row = s.get("todos", "r1").await.unwrap().unwrap();
            assert_eq!(row["due"], json!("2024-05-01T10:00:00Z"));
            s.upsert("todos", "r2", obj(json!({"title": "x"})))
                .await
                .unwrap()
                .unwrap()
                .hlc
        };
        let s = store(Some(&path)).await;
        assert_eq!(s.client_id(), "me");
        assert!(s.now() > last, "the clock continues after the last write");
        assert_eq!(s.queue_depth().await.unwrap(), 2);
        let e = LocalStore::open_file(&path, Some("someone-else"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("belongs to client"), "{e}");
    }
}
