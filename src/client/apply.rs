//! Applying the gateway's changes to the replica: pulled pages, live batches and checkpoints.
//!
//! What the gateway sends are *row snapshots* (see `docs/gateway.md`): an `INSERT` (the row
//! entered this client's view) or `UPDATE` carries the row's whole merged state — the columns
//! it lists, every other column null — and a `DELETE` says the row left the view. Each is
//! stamped with the row's newest HLC and the writer's client id. Snapshots are applied in
//! cursor order, each as a full replacement of the local row, with one exception that keeps
//! local work safe: a pending local change (an outbox entry) to the same row whose version is
//! newer than the snapshot's — newer HLC, or the same HLC and a greater client id, the kernel's
//! version order — is re-applied on top, so its columns keep their local values (and a newer
//! local write to a row the snapshot deletes brings the row back with just those columns, as
//! the kernel's merge would). The outbox entry stays and is pushed; the gateway's merge decides,
//! and a later pull brings its verdict. A page of changes and the cursor that follows it commit
//! in one transaction, so the replica never holds half a page nor a cursor past unapplied
//! changes.
//!
//! **Rows the server will never mention.** A local write can leave a row in the replica that
//! the client's sync rules do not allow (an insert the rules filter out; an update to a row
//! that has meanwhile left the view). The gateway sends a pushed row's verdict to the pusher
//! whenever the row was visible to it before or after the push, so silence means "not
//! visible". Before a row's changes are first sent it is entered in `_lakesync_inflight`; every
//! snapshot applied to it afterwards is noted there; the acknowledgement records the push's
//! cursor. Once the pull cursor has passed that cursor and the row has no pending change left,
//! the row is kept if the last snapshot noted made it visible, and removed otherwise
//! ([`LocalStore::sweep_inflight`]). This holds across crashes: a re-pushed duplicate produces
//! no new record, but the first push's snapshot was noted.
//!
//! **Checkpoints** are the gateway's current rows as `INSERT` snapshots, applied batch by batch
//! (so the first rows are queryable early); the cursor moves only when the whole checkpoint is
//! in. When the replica already held rows (a re-checkpoint after an expired cursor or a dead
//! letter), rows the checkpoint did not mention and no pending change protects are removed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

use crate::adapters::sqlite::dialect::{Bind, query_with};
use crate::kernel::delta::{DeltaOp, RowDelta};
use crate::kernel::delta_batch::{DeltaColumns, RESERVED, table_schema_of};
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::json::cmp_utf16;
use crate::kernel::schema::{TableSchema, quote_identifier};
use crate::kernel::state::TABLE_METADATA_KEY;
use crate::{Error, Result};

use super::outbox::{has_pending, pending_by_row, row_has_pending};
use super::store::{LocalStore, db_error, keys, meta_delete, meta_set, read_cursor};
use super::tables::ROW_ID_COLUMN;
use super::values::{arrow_to_bind, json_to_bind};

/// The most bind parameters one statement carries (below SQLite's 32 766).
const MAX_BINDS: usize = 32_000;

/// What one application did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Snapshots applied.
    pub rows: u64,
    /// Tables touched.
    pub tables: BTreeSet<String>,
}

impl Applied {
    fn add(&mut self, table: &str, rows: u64) {
        self.rows += rows;
        if rows > 0 {
            self.tables.insert(table.to_string());
        }
    }
}

/// Whether local delta `local` is newer than a snapshot of version `(hlc, client)`.
fn newer(local: &RowDelta, hlc: u64, client: &str) -> bool {
    match local.hlc.0.cmp(&hlc) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => cmp_utf16(&local.client_id, client).is_gt(),
    }
}

/// Per-transaction knowledge of pending local changes and rows in flight.
struct Guards {
    any_pending: bool,
    pending: HashMap<String, HashMap<String, Vec<RowDelta>>>,
    inflight: HashSet<(String, String)>,
}

impl Guards {
    async fn load(conn: &mut SqliteConnection) -> Result<Self> {
        let any_pending = has_pending(conn).await?;
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT table_name, row_id FROM _lakesync_inflight")
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| db_error("reading rows in flight", e))?;
        Ok(Self {
            any_pending,
            pending: HashMap::new(),
            inflight: rows.into_iter().collect(),
        })
    }

    async fn pending_of(
        &mut self,
        conn: &mut SqliteConnection,
        table: &str,
    ) -> Result<Option<&HashMap<String, Vec<RowDelta>>>> {
        if !self.any_pending {
            return Ok(None);
        }
        if !self.pending.contains_key(table) {
            let rows = pending_by_row(conn, table).await?;
            self.pending.insert(table.to_string(), rows);
        }
        Ok(self.pending.get(table))
    }
}

/// Rows to write, flushed whenever a row repeats so that order is kept.
struct Segment<'a> {
    schema: &'a TableSchema,
    ids: HashSet<String>,
    upserts: Vec<(String, Vec<Bind>)>,
    deletes: Vec<String>,
}

impl<'a> Segment<'a> {
    fn new(schema: &'a TableSchema) -> Self {
        Self {
            schema,
            ids: HashSet::new(),
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }

    async fn push(
        &mut self,
        conn: &mut SqliteConnection,
        row_id: &str,
        image: Option<Vec<Bind>>,
    ) -> Result<()> {
        if self.ids.contains(row_id) {
            self.flush(conn).await?;
        }
        self.ids.insert(row_id.to_string());
        match image {
            Some(values) => self.upserts.push((row_id.to_string(), values)),
            None => self.deletes.push(row_id.to_string()),
        }
        Ok(())
    }

    async fn flush(&mut self, conn: &mut SqliteConnection) -> Result<()> {
        let table = quote_identifier(&self.schema.table);
        let id = quote_identifier(ROW_ID_COLUMN);
        for chunk in self.deletes.chunks(MAX_BINDS) {
            let sql = format!(
                "DELETE FROM {table} WHERE {id} IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let binds = chunk.iter().map(|r| Bind::Text(r.clone())).collect();
            query_with(&sql, binds)
                .persistent(false)
                .execute(&mut *conn)
                .await
                .map_err(|e| db_error(format!("deleting rows of {table}"), e))?;
        }
        let width = self.schema.columns.len() + 1;
        let per_statement = (MAX_BINDS / width).clamp(1, 4000);
        let columns = std::iter::once(id.clone())
            .chain(
                self.schema
                    .columns
                    .iter()
                    .map(|c| quote_identifier(&c.name)),
            )
            .collect::<Vec<_>>()
            .join(", ");
        let tuple = format!("({})", vec!["?"; width].join(", "));
        let upserts = std::mem::take(&mut self.upserts);
        let mut rows = upserts.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<(String, Vec<Bind>)> = rows.by_ref().take(per_statement).collect();
            let n = chunk.len();
            let sql = format!(
                "INSERT OR REPLACE INTO {table} ({columns}) VALUES {}",
                vec![tuple.as_str(); n].join(", ")
            );
            let mut binds = Vec::with_capacity(n * width);
            for (row_id, values) in chunk {
                binds.push(Bind::Text(row_id));
                binds.extend(values);
            }
            query_with(&sql, binds)
                .persistent(n == per_statement)
                .execute(&mut *conn)
                .await
                .map_err(|e| db_error(format!("writing {n} rows of {table}"), e))?;
        }
        self.ids.clear();
        self.deletes.clear();
        Ok(())
    }
}

/// Applies one delta batch of `schema`'s table inside the caller's transaction; `cursor` is
/// where the batch's changes end (noted for rows in flight); ids are added to `seen`.
async fn apply_batch(
    conn: &mut SqliteConnection,
    store: &LocalStore,
    schema: &TableSchema,
    batch: &RecordBatch,
    cursor: u64,
    guards: &mut Guards,
    mut seen: Option<&mut HashSet<String>>,
) -> Result<u64> {
    if batch.num_rows() == 0 {
        return Ok(0);
    }
    let remote = table_schema_of(batch.schema_ref(), RESERVED)?;
    let cols = DeltaColumns::new(batch)?;
    let width = schema.columns.len();
    let shared = width.min(remote.columns.len());
    let pending = guards.pending_of(conn, &schema.table).await?.cloned();
    let mut segment = Segment::new(schema);
    let mut max_hlc = 0;
    for i in 0..batch.num_rows() {
        let op = DeltaOp::from_code(cols.op.value(i))?;
        let row_id = cols.row_id.value(i);
        let hlc = cols.hlc.value(i);
        let client = cols.client_id.value(i);
        max_hlc = max_hlc.max(hlc);
        let mut image = match op {
            DeltaOp::Delete => None,
            DeltaOp::Insert | DeltaOp::Update => {
                let mut values = vec![Bind::Null; width];
                for &p in cols.set_of(i) {
                    let p = usize::from(p);
                    if p < shared {
                        values[p] = arrow_to_bind(&cols.data[p], i, remote.columns[p].column_type)?;
                    }
                }
                Some(values)
            }
        };
        if let Some(local) = pending.as_ref().and_then(|p| p.get(row_id)) {
            for d in local.iter().filter(|d| newer(d, hlc, client)) {
                match d.op {
                    DeltaOp::Delete => image = None,
                    DeltaOp::Insert | DeltaOp::Update => {
                        let values = image.get_or_insert_with(|| vec![Bind::Null; width]);
                        for c in &d.columns {
                            if let Some(p) = schema.position(&c.column) {
                                values[p] = json_to_bind(
                                    &c.column,
                                    schema.columns[p].column_type,
                                    &c.value,
                                )?;
                            }
                        }
                    }
                }
            }
        }
        if !guards.inflight.is_empty()
            && guards
                .inflight
                .contains(&(schema.table.clone(), row_id.to_string()))
        {
            sqlx::query(
                "UPDATE _lakesync_inflight SET snap_op = ?, snap_cursor = ? WHERE table_name = ? AND row_id = ?",
            )
            .bind(i64::from(op.code()))
            .bind(cursor as i64)
            .bind(&schema.table)
            .bind(row_id)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("noting a snapshot of a row in flight", e))?;
        }
        if let Some(seen) = seen.as_deref_mut() {
            seen.insert(row_id.to_string());
        }
        segment.push(conn, row_id, image).await?;
    }
    segment.flush(conn).await?;
    store.observe(HlcTimestamp(max_hlc));
    Ok(batch.num_rows() as u64)
}

/// The table a delta batch belongs to.
fn table_of(batch: &RecordBatch) -> Result<&str> {
    batch
        .schema_ref()
        .metadata()
        .get(TABLE_METADATA_KEY)
        .map(String::as_str)
        .ok_or_else(|| {
            Error::invalid(
                "delta batch",
                format!("the gateway sent a batch without {TABLE_METADATA_KEY:?} metadata"),
            )
        })
}

impl LocalStore {
    /// The local schema for `batch`, its table evolved first when the batch carries columns the
    /// replica lacks; `None` for a table the replica does not sync.
    async fn fit(&self, batch: &RecordBatch) -> Result<Option<Arc<TableSchema>>> {
        let name = table_of(batch)?;
        let Some(local) = self.schema(name) else {
            tracing::debug!(
                table = name,
                "ignoring changes of a table this replica does not sync"
            );
            return Ok(None);
        };
        let data = batch.num_columns().saturating_sub(RESERVED);
        if data > local.columns.len() {
            let remote = table_schema_of(batch.schema_ref(), RESERVED)?;
            let mut next = (*local).clone();
            next.columns = remote.columns;
            self.register(next).await?;
            return Ok(self.schema(name));
        }
        Ok(Some(local))
    }

    /// Applies one pulled page — `batches`, the changes after cursor `from` — and moves the
    /// cursor to `to`, in one transaction. Returns `None`, applying nothing, when the cursor is
    /// no longer `from` (another applier moved it; pull again).
    pub(crate) async fn apply_page(
        &self,
        from: Option<u64>,
        batches: &[RecordBatch],
        to: u64,
    ) -> Result<Option<Applied>> {
        let mut fitted = Vec::with_capacity(batches.len());
        for batch in batches {
            if let Some(schema) = self.fit(batch).await? {
                fitted.push((schema, batch));
            }
        }
        let mut applied = Applied::default();
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        if read_cursor(&mut tx).await? != from {
            return Ok(None);
        }
        let mut guards = Guards::load(&mut tx).await?;
        for (schema, batch) in fitted {
            let n = apply_batch(&mut tx, self, &schema, batch, to, &mut guards, None).await?;
            applied.add(&schema.table, n);
        }
        meta_set(&mut tx, keys::CURSOR, &to.to_string()).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("applying pulled changes", e))?;
        drop(conn);
        self.announce(applied.tables.clone(), true);
        Ok(Some(applied))
    }

    /// Applies one live batch whose changes end at `cursor`. A batch at or before the stored
    /// cursor's predecessor is stale (already applied by a pull) and skipped (`None`).
    pub(crate) async fn apply_live(
        &self,
        batch: &RecordBatch,
        cursor: u64,
    ) -> Result<Option<Applied>> {
        let Some(schema) = self.fit(batch).await? else {
            return Ok(Some(Applied::default()));
        };
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        match read_cursor(&mut tx).await? {
            Some(stored) if cursor >= stored => {}
            _ => return Ok(None),
        }
        let mut guards = Guards::load(&mut tx).await?;
        let mut applied = Applied::default();
        let n = apply_batch(&mut tx, self, &schema, batch, cursor, &mut guards, None).await?;
        applied.add(&schema.table, n);
        meta_set(&mut tx, keys::CURSOR, &cursor.to_string()).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("applying live changes", e))?;
        drop(conn);
        self.announce(applied.tables.clone(), true);
        Ok(Some(applied))
    }

    /// Whether a checkpoint of `tables` must reconcile: true when some local row is neither
    /// protected by a pending change nor sure to be mentioned by the checkpoint.
    pub(crate) async fn checkpoint_must_reconcile(&self, tables: &[String]) -> Result<bool> {
        let mut conn = self.conn().await;
        for name in tables {
            let Some(schema) = self.schema(name) else {
                continue;
            };
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {} NOT IN \
                 (SELECT row_id FROM _lakesync_outbox WHERE dead = 0 AND table_name = ?))",
                quote_identifier(&schema.table),
                quote_identifier(ROW_ID_COLUMN)
            );
            let any: bool = sqlx::query_scalar(&sql)
                .bind(&schema.table)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| db_error(format!("inspecting {name:?}"), e))?;
            if any {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Applies one checkpoint batch (its own transaction; the cursor does not move). Row ids
    /// are collected in `seen` when the checkpoint reconciles.
    pub(crate) async fn apply_checkpoint_batch(
        &self,
        batch: &RecordBatch,
        cursor: u64,
        seen: Option<&mut HashMap<String, HashSet<String>>>,
    ) -> Result<Applied> {
        let Some(schema) = self.fit(batch).await? else {
            return Ok(Applied::default());
        };
        let seen = seen.map(|s| s.entry(schema.table.clone()).or_default());
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        let mut guards = Guards::load(&mut tx).await?;
        let mut applied = Applied::default();
        let n = apply_batch(&mut tx, self, &schema, batch, cursor, &mut guards, seen).await?;
        applied.add(&schema.table, n);
        tx.commit()
            .await
            .map_err(|e| db_error("applying a checkpoint", e))?;
        drop(conn);
        self.announce(applied.tables.clone(), true);
        Ok(applied)
    }

    /// Ends a checkpoint of `tables` taken at `cursor`: removes the rows it did not mention
    /// (when reconciling, `seen`), forgets rows in flight whose changes are all acknowledged
    /// (the checkpoint is the verdict), and moves the cursor. Returns the rows removed.
    pub(crate) async fn finish_checkpoint(
        &self,
        tables: &[String],
        cursor: u64,
        seen: Option<HashMap<String, HashSet<String>>>,
    ) -> Result<u64> {
        let mut removed = 0;
        let mut touched = BTreeSet::new();
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        if let Some(seen) = seen {
            for name in tables {
                let Some(schema) = self.schema(name) else {
                    continue;
                };
                let table = quote_identifier(&schema.table);
                let ids: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT {} FROM {table}",
                    quote_identifier(ROW_ID_COLUMN)
                ))
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| db_error(format!("reading row ids of {table}"), e))?;
                let mentioned = seen.get(name);
                let protected: HashSet<String> =
                    pending_by_row(&mut tx, name).await?.into_keys().collect();
                for id in ids {
                    if mentioned.is_some_and(|m| m.contains(&id)) || protected.contains(&id) {
                        continue;
                    }
                    delete_row(&mut tx, &schema, &id).await?;
                    removed += 1;
                    touched.insert(name.clone());
                }
            }
        }
        sqlx::query(
            "DELETE FROM _lakesync_inflight WHERE NOT EXISTS (SELECT 1 FROM _lakesync_outbox o \
             WHERE o.dead = 0 AND o.table_name = _lakesync_inflight.table_name \
             AND o.row_id = _lakesync_inflight.row_id)",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("forgetting rows in flight", e))?;
        let names = serde_json::to_string(tables)
            .map_err(|e| Error::internal(format!("serialising table names: {e}")))?;
        meta_set(&mut tx, keys::SYNCED_TABLES, &names).await?;
        meta_set(&mut tx, keys::CURSOR, &cursor.to_string()).await?;
        meta_delete(&mut tx, keys::NEEDS_CHECKPOINT).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("finishing a checkpoint", e))?;
        drop(conn);
        self.announce(touched, true);
        Ok(removed)
    }

    /// Settles rows in flight whose verdict has been pulled (see the module docs): each row
    /// with no pending change left whose acknowledged cursor the pull cursor has passed is kept
    /// when the last snapshot seen for it showed it, removed otherwise. Returns the rows
    /// removed.
    pub(crate) async fn sweep_inflight(&self) -> Result<u64> {
        let mut conn = self.conn().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_error("starting a transaction", e))?;
        let Some(cursor) = read_cursor(&mut tx).await? else {
            return Ok(0);
        };
        let due: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT table_name, row_id, snap_op FROM _lakesync_inflight \
             WHERE acked_cursor IS NOT NULL AND acked_cursor <= ?",
        )
        .bind(cursor as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| db_error("reading rows in flight", e))?;
        let mut removed = 0;
        let mut touched = BTreeSet::new();
        for (table, row_id, snap_op) in due {
            if row_has_pending(&mut tx, &table, &row_id).await? {
                continue;
            }
            let visible = snap_op.is_some_and(|op| op != i64::from(DeltaOp::Delete.code()));
            if !visible
                && let Some(schema) = self.schema(&table)
                && delete_row(&mut tx, &schema, &row_id).await?
            {
                removed += 1;
                touched.insert(table.clone());
            }
            sqlx::query("DELETE FROM _lakesync_inflight WHERE table_name = ? AND row_id = ?")
                .bind(&table)
                .bind(&row_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("settling a row in flight", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("settling rows in flight", e))?;
        drop(conn);
        if removed > 0 {
            tracing::debug!(
                removed,
                "removed rows the gateway does not show this client"
            );
        }
        self.announce(touched, true);
        Ok(removed)
    }
}

/// Deletes one row; whether it existed.
async fn delete_row(
    conn: &mut SqliteConnection,
    schema: &TableSchema,
    row_id: &str,
) -> Result<bool> {
    let sql = format!(
        "DELETE FROM {} WHERE {} = ?",
        quote_identifier(&schema.table),
        quote_identifier(ROW_ID_COLUMN)
    );
    let done = sqlx::query(&sql)
        .bind(row_id)
        .execute(conn)
        .await
        .map_err(|e| db_error(format!("deleting row {row_id:?} of {:?}", schema.table), e))?;
    Ok(done.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta::ColumnDelta;
    use crate::kernel::delta_batch::deltas_to_batch;
    use crate::kernel::schema::{ColumnDef, ColumnType};
    use serde_json::{Map, Value, json};

    fn todos() -> TableSchema {
        TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("done", ColumnType::Boolean),
            ],
        )
    }

    fn snapshot(op: DeltaOp, row: &str, hlc: HlcTimestamp, cols: Value) -> RowDelta {
        let columns = match cols {
            Value::Object(m) => m.into_iter().map(|(k, v)| ColumnDelta::new(k, v)).collect(),
            _ => Vec::new(),
        };
        RowDelta::new(op, "todos", row, "server-side", columns, hlc)
    }

    fn batch(deltas: &[RowDelta]) -> RecordBatch {
        deltas_to_batch(&todos(), deltas).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    async fn store() -> LocalStore {
        let s = LocalStore::open_in_memory("me").await.unwrap();
        s.register(todos()).await.unwrap();
        s.finish_checkpoint(&["todos".to_string()], 0, None)
            .await
            .unwrap();
        s
    }

    fn old(counter: u16) -> HlcTimestamp {
        HlcTimestamp::new(1_000, counter).unwrap()
    }

    fn future() -> HlcTimestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        HlcTimestamp::new(now + 60_000, 0).unwrap()
    }

    #[tokio::test]
    async fn snapshots_replace_rows_but_not_newer_pending_changes() {
        let s = store().await;
        let page = [batch(&[
            snapshot(
                DeltaOp::Insert,
                "r1",
                old(0),
                json!({"title": "a", "done": false}),
            ),
            snapshot(DeltaOp::Insert, "r2", old(1), json!({"title": "b"})),
        ])];
        let applied = s.apply_page(Some(0), &page, 5).await.unwrap().unwrap();
        assert_eq!(applied.rows, 2);
        assert_eq!(s.cursor().await.unwrap(), Some(5));
        assert!(
            s.apply_page(Some(0), &page, 5).await.unwrap().is_none(),
            "stale"
        );

        // Local changes newer than what the server sends next.
        s.update("todos", "r1", obj(json!({"title": "mine"})))
            .await
            .unwrap();
        s.update("todos", "r2", obj(json!({"done": true})))
            .await
            .unwrap();
        let page = [batch(&[
            // Older than the local title: the title stays, done is the server's.
            snapshot(
                DeltaOp::Update,
                "r1",
                old(2),
                json!({"title": "theirs", "done": true}),
            ),
            // A delete older than the local change: the row comes back with just that column.
            snapshot(DeltaOp::Delete, "r2", old(3), json!(null)),
        ])];
        s.apply_page(Some(5), &page, 9).await.unwrap().unwrap();
        let r1 = s.get("todos", "r1").await.unwrap().unwrap();
        assert_eq!((&r1["title"], &r1["done"]), (&json!("mine"), &json!(true)));
        let r2 = s.get("todos", "r2").await.unwrap().unwrap();
        assert_eq!((&r2["title"], &r2["done"]), (&Value::Null, &json!(true)));

        // A newer server state replaces the row entirely (columns it does not set are null).
        let page = [batch(&[snapshot(
            DeltaOp::Update,
            "r1",
            future(),
            json!({"done": false}),
        )])];
        s.apply_page(Some(9), &page, 12).await.unwrap().unwrap();
        let r1 = s.get("todos", "r1").await.unwrap().unwrap();
        assert_eq!((&r1["title"], &r1["done"]), (&Value::Null, &json!(false)));
        assert_eq!(s.queue_depth().await.unwrap(), 2, "the outbox is untouched");

        // Live batches behind the cursor are skipped.
        let late = batch(&[snapshot(DeltaOp::Delete, "r1", future(), json!(null))]);
        assert!(s.apply_live(&late, 11).await.unwrap().is_none());
        assert!(s.get("todos", "r1").await.unwrap().is_some());
        assert!(s.apply_live(&late, 12).await.unwrap().is_some());
        assert!(s.get("todos", "r1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_wider_batch_adds_columns() {
        let s = store().await;
        let mut wider = todos();
        wider.columns.push(ColumnDef::new("tags", ColumnType::Json));
        let d = RowDelta::new(
            DeltaOp::Insert,
            "todos",
            "r1",
            "x",
            vec![ColumnDelta::new("tags", json!(["a"]))],
            old(0),
        );
        let b = deltas_to_batch(&wider, &[d]).unwrap();
        s.apply_page(Some(0), &[b], 1).await.unwrap().unwrap();
        assert_eq!(s.schema("todos").unwrap().columns.len(), 3);
        assert_eq!(
            s.get("todos", "r1").await.unwrap().unwrap()["tags"],
            json!(["a"])
        );
    }
}
