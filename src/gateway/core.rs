//! The gateway's state: the durable log, every row's merged state, and the records pulls are
//! served from.
//!
//! **Pushes** are serialised by one lock (the *ledger*): each checked batch gets the next
//! sequence number, is merged into its table's row state (giving every touched row's state
//! before and after), is committed to the durable log, and only then becomes visible to pulls and
//! subscribers and is acknowledged. Sequence numbers are server HLCs — strictly increasing, and
//! above every HLC the gateway has accepted — so they double as the `serverHlc` of the original
//! protocol.
//!
//! **Pulls never miss** (DESIGN §4): a pull returns the records after its cursor in sequence
//! order and the cursor to continue from — the last record it returned, or, when there is no
//! more, the newest record at the time of reading. A record accepted later has a higher
//! sequence number whatever its deltas' client HLCs, so it is always returned by the next pull.
//!
//! **Flushing** is the pipeline runtime's: the gateway is a pipeline source ([`super::source`])
//! whose position is the sequence number; once every sink has committed a position the gateway
//! counts the records up to it as flushed (the backpressure limit counts only unflushed bytes)
//! and may trim them once they fall outside the retention limits.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt64Array};
use arrow::compute::filter_record_batch;
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};

use crate::adapters::iceberg::checkpoint;
use crate::gateway::log::LogStore;
use crate::gateway::push::{CheckedBatch, PushContext, Rejection, check_batch};
use crate::gateway::record::{Record, RecordRef, snapshot_batch};
use crate::kernel::delta::RowDelta;
use crate::kernel::delta_batch::deltas_to_batch;
use crate::kernel::hlc::{Hlc, HlcTimestamp};
use crate::kernel::merge::merge;
use crate::kernel::rules::{ClientFilter, SyncRules};
use crate::kernel::schema::{TableSchema, validate_identifier};
use crate::kernel::state::DELETED;
use crate::ops::row_state::RowStore;
use crate::runtime::api::TableRef;
use crate::{Error, Result};

/// Limits and defaults of a gateway (the original's constants as defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Unflushed bytes at which pushes are refused with `BACKPRESSURE` (default 8 MiB, twice
    /// the original's 4 MiB flush size).
    pub backpressure_bytes: u64,
    /// Most deltas in one push (default 10 000).
    pub max_push_deltas: usize,
    /// Largest push body or WebSocket frame in bytes (default 1 MiB).
    pub max_push_bytes: usize,
    /// Deltas per pull when the client does not say (default 100).
    pub default_pull_limit: usize,
    /// Most deltas per pull (default 10 000).
    pub max_pull_limit: usize,
    /// How far ahead of the server's clock a delta's HLC may be (default 5 s).
    pub max_drift: Duration,
    /// Flushed records are kept for pulls until they are older than this (default 7 days)...
    pub retention_age: Duration,
    /// ...or the retained records exceed this many bytes (default 1 GiB).
    pub retention_bytes: u64,
    /// Requests per client per window (none = no limit).
    pub rate_limit: Option<(u32, Duration)>,
    /// Most concurrent WebSocket connections (default 1000).
    pub ws_max_connections: usize,
    /// Most WebSocket messages per second per connection (default 50).
    pub ws_max_messages_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            backpressure_bytes: 8 << 20,
            max_push_deltas: 10_000,
            max_push_bytes: 1 << 20,
            default_pull_limit: 100,
            max_pull_limit: 10_000,
            max_drift: Duration::from_secs(5),
            retention_age: Duration::from_secs(7 * 24 * 3600),
            retention_bytes: 1 << 30,
            rate_limit: None,
            ws_max_connections: 1000,
            ws_max_messages_per_second: 50,
        }
    }
}

/// What a gateway is opened with.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// The gateway id (a JWT's `gw` claim must equal it).
    pub id: String,
    /// Where the durable log lives.
    pub data_dir: PathBuf,
    /// The tables clients may push to.
    pub tables: Vec<TableSchema>,
    /// The sync rules from the configuration (rules saved through the admin API take
    /// precedence once saved).
    pub sync_rules: SyncRules,
    /// Limits.
    pub limits: Limits,
    /// A lake whose checkpoints the gateway serves with its own rows (none: its own rows only).
    pub lake: Option<LakeCheckpoints>,
}

/// A lake whose tables' checkpoints ([`crate::adapters::iceberg::checkpoint`]) a gateway serves
/// for initial sync: rows the lake holds that the gateway may never have seen (a backfill, or
/// history from before the gateway), filtered per client like the gateway's own rows.
#[derive(Clone)]
pub struct LakeCheckpoints {
    /// The lake's catalogue.
    pub catalog: Arc<dyn iceberg::Catalog>,
    /// The namespace of the gateway's tables in the lake.
    pub namespace: String,
}

impl std::fmt::Debug for LakeCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeCheckpoints")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What one push did.
#[derive(Clone, Debug, Default)]
pub struct PushOutcome {
    /// Deltas accepted (including duplicates of deltas already held, which change nothing).
    pub accepted: usize,
    /// Of those, how many were already held.
    pub duplicates: usize,
    /// Deltas not accepted, with the table they were for.
    pub rejections: Vec<(String, Rejection)>,
    /// The cursor after this push (the sequence number of its last record, or the newest
    /// record's when nothing new was accepted).
    pub cursor: u64,
    /// The newly accepted deltas, one batch per table.
    pub ingested: Vec<RecordBatch>,
}

/// One page of a pull.
#[derive(Clone, Debug, Default)]
pub struct PullPage {
    /// Delta batches (one table each) in cursor order.
    pub batches: Vec<RecordBatch>,
    /// Deltas in `batches`.
    pub deltas: usize,
    /// Where the next pull continues from.
    pub cursor: u64,
    /// Whether records after `cursor` were left for the next pull.
    pub has_more: bool,
}

/// A snapshot of the rows a client may see, for initial sync.
#[derive(Clone, Debug, Default)]
pub struct CheckpointSnapshot {
    /// Pull from here after loading the snapshot.
    pub cursor: u64,
    /// INSERT snapshots of every visible row, in batches of at most the requested size.
    pub batches: Vec<RecordBatch>,
}

/// Buffer figures for the admin metrics route and Prometheus.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStats {
    /// Deltas in the retained records.
    pub log_size: u64,
    /// Rows in the merged state.
    pub index_size: u64,
    /// Unflushed bytes (what backpressure counts).
    pub byte_size: u64,
    /// Retained records.
    pub records: u64,
    /// Bytes of retained records.
    pub retained_bytes: u64,
    /// The newest sequence number.
    pub head: u64,
    /// The newest flushed sequence number.
    pub flushed: u64,
    /// Records up to this sequence number have been trimmed.
    pub trimmed: u64,
}

/// A request to the pipeline runtime to flush now; answered when the epoch is committed.
pub type FlushRequest = oneshot::Sender<Result<()>>;

/// The gateway (cheap to clone: a handle).
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    limits: Limits,
    hlc: Hlc,
    log: LogStore,
    ledger: Mutex<Ledger>,
    view: RwLock<View>,
    rules: RwLock<SyncRules>,
    live: broadcast::Sender<RecordRef>,
    head: watch::Sender<u64>,
    flushed: watch::Sender<u64>,
    reload: watch::Sender<u64>,
    unflushed_bytes: AtomicU64,
    flush_requests: std::sync::Mutex<Option<mpsc::Sender<FlushRequest>>>,
    lake: Option<LakeCheckpoints>,
}

/// What pushes change, behind the push lock.
#[derive(Debug)]
struct Ledger {
    stores: HashMap<String, RowStore>,
    /// Delta ids of the retained records.
    seen: HashSet<[u8; 32], FastHash>,
    /// Per table and row: the HLC of the last snapshot sent.
    last_snapshot: HashMap<String, HashMap<String, u64, FastHash>>,
    /// The fold of every trimmed record, per table.
    saved: HashMap<String, Arc<RecordBatch>>,
    last_seq: u64,
}

/// What pulls read.
#[derive(Debug, Default)]
struct View {
    records: VecDeque<RecordRef>,
    tables: BTreeMap<String, TableRef>,
    trimmed: u64,
    retained_bytes: u64,
}

/// A fast, non-cryptographic hasher for in-memory indexes (keys are not attacker-chosen in a
/// way that matters: delta ids are SHA-256 outputs, row ids are per table).
type FastHash = foldhash::fast::RandomState;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const META_RULES: &str = "sync_rules";
const META_FLUSHED: &str = "flushed";
const META_TRIMMED: &str = "trimmed";

fn schema_key(table: &str) -> String {
    format!("schema:{table}")
}

impl Gateway {
    /// Opens the gateway: its durable log in `options.data_dir`, then every row's state rebuilt
    /// from the saved state and the retained records.
    pub async fn open(options: GatewayOptions) -> Result<Self> {
        let log = LogStore::open(&options.data_dir).await?;
        let mut tables: BTreeMap<String, TableRef> = BTreeMap::new();
        for declared in options.tables {
            // A schema evolved through the admin API since (add-only) wins over the file's.
            let table = match log.meta(&schema_key(&declared.table)).await? {
                Some(text) => {
                    let saved = TableSchema::from_json(&text)?;
                    if declared.evolve_to(&saved).is_ok() {
                        saved
                    } else {
                        declared
                    }
                }
                None => declared,
            };
            tables.insert(table.table.clone(), Arc::new(table));
        }
        let rules = match log.meta(META_RULES).await? {
            Some(text) => SyncRules::from_json(&text)?,
            None => options.sync_rules,
        };
        let mut ledger = Ledger {
            stores: HashMap::new(),
            seen: HashSet::default(),
            last_snapshot: HashMap::new(),
            saved: HashMap::new(),
            last_seq: 0,
        };
        for (name, table) in &tables {
            ledger
                .stores
                .insert(name.clone(), RowStore::new(table.clone())?);
            ledger
                .last_snapshot
                .insert(name.clone(), HashMap::default());
        }
        for (name, state) in log.saved_state().await? {
            let Some(store) = ledger.stores.get_mut(&name) else {
                tracing::warn!(table = %name, "saved state of a table no longer configured; ignored");
                continue;
            };
            store.load(std::slice::from_ref(&state))?;
            let state = merge(store.table(), Some(&state), &[])?;
            ledger.saved.insert(name, Arc::new(state));
        }
        let trimmed: u64 = parse_u64(log.meta(META_TRIMMED).await?);
        let flushed: u64 = parse_u64(log.meta(META_FLUSHED).await?);
        ledger.last_seq = trimmed;
        let mut view = View {
            tables,
            trimmed,
            ..View::default()
        };
        let mut unflushed = 0u64;
        let stored = log.records().await?;
        let recovered = stored.len();
        for r in stored {
            let table = view.tables.get(&r.table).cloned().ok_or_else(|| {
                Error::invalid(
                    "gateway log",
                    format!(
                        "record {} is for table {:?}, which is no longer configured",
                        r.seq, r.table
                    ),
                )
            })?;
            let deltas = crate::gateway::push::conform(&table, &r.deltas)?;
            let record = ledger.apply(
                r.seq,
                table,
                r.client_id,
                r.accepted_ms,
                deltas,
                r.stored_bytes,
            )?;
            if record.seq > flushed {
                unflushed += record.stored_bytes as u64;
            }
            view.retained_bytes += record.stored_bytes as u64;
            view.records.push_back(Arc::new(record));
        }
        let head = ledger.last_seq;
        if recovered > 0 {
            tracing::info!(records = recovered, head, flushed, "gateway log recovered");
        }
        let hlc = Hlc::default();
        let (live, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                id: options.id,
                limits: options.limits,
                hlc,
                log,
                ledger: Mutex::new(ledger),
                view: RwLock::new(view),
                rules: RwLock::new(rules),
                live,
                head: watch::channel(head).0,
                flushed: watch::channel(flushed).0,
                reload: watch::channel(0).0,
                unflushed_bytes: AtomicU64::new(unflushed),
                flush_requests: std::sync::Mutex::new(None),
                lake: options.lake,
            }),
        })
    }

    /// The gateway id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The tables clients may push to, with their current schemas.
    pub fn tables(&self) -> Vec<TableRef> {
        read(&self.inner.view).tables.values().cloned().collect()
    }

    /// The table `name`, or `NOT_FOUND`.
    pub fn table(&self, name: &str) -> Result<TableRef> {
        read(&self.inner.view)
            .tables
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "table",
                name: name.to_string(),
            })
    }

    /// The current sync rules.
    pub fn sync_rules(&self) -> SyncRules {
        read(&self.inner.rules).clone()
    }

    /// The filter of a client with these claims under the current rules.
    pub fn client_filter(&self, claims: &crate::kernel::rules::Claims) -> ClientFilter {
        ClientFilter::new(&read(&self.inner.rules), claims)
    }

    /// The server's HLC now (for `serverHlc` fields that are not cursors).
    pub fn now(&self) -> u64 {
        self.inner.hlc.now().0
    }

    /// The newest sequence number (the cursor of "now").
    pub fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    /// A receiver of sequence-number changes (for waiting on new records).
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    /// A receiver of every record as it is accepted.
    pub fn subscribe(&self) -> broadcast::Receiver<RecordRef> {
        self.inner.live.subscribe()
    }

    /// A receiver that changes when the tables change (the pipeline must be rebuilt).
    pub fn watch_reload(&self) -> watch::Receiver<u64> {
        self.inner.reload.subscribe()
    }

    /// Pushes row-form deltas (the JSON and protobuf protocols) from `client_id`. Deltas are
    /// grouped by table; a delta for an unknown or invalid table, or one that does not fit its
    /// table, fails the push (`SCHEMA_MISMATCH`).
    pub async fn push_rows(
        &self,
        client_id: &str,
        enforce_client: bool,
        deltas: &[RowDelta],
        atomic: bool,
    ) -> Result<PushOutcome> {
        let mut groups: Vec<(TableRef, Vec<RowDelta>)> = Vec::new();
        for (i, d) in deltas.iter().enumerate() {
            validate_identifier(&d.table)
                .map_err(|e| Error::schema(format!("deltas[{i}]: table {:?}: {e}", d.table)))?;
            let table = self
                .table(&d.table)
                .map_err(|_| Error::schema(format!("deltas[{i}]: unknown table {:?}", d.table)))?;
            match groups.iter_mut().find(|(t, _)| t.table == table.table) {
                Some((_, group)) => group.push(d.clone()),
                None => groups.push((table, vec![d.clone()])),
            }
        }
        let mut batches = Vec::with_capacity(groups.len());
        for (table, group) in groups {
            let batch =
                deltas_to_batch(&table, &group).map_err(|e| Error::schema(e.to_string()))?;
            batches.push((table, batch));
        }
        self.push(client_id, enforce_client, batches, atomic).await
    }

    /// Pushes delta batches from `client_id`.
    ///
    /// Every batch is checked first ([`check_batch`]). With `atomic`, any rejected delta fails
    /// the whole push with that delta's error and nothing is applied; otherwise the deltas that
    /// passed are applied and the others reported. A full buffer refuses the push whole
    /// (`BACKPRESSURE`). Returns once the accepted deltas are durable.
    pub async fn push(
        &self,
        client_id: &str,
        enforce_client: bool,
        batches: Vec<(TableRef, RecordBatch)>,
        atomic: bool,
    ) -> Result<PushOutcome> {
        let limits = &self.inner.limits;
        let total: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
        if total > limits.max_push_deltas {
            return Err(Error::invalid(
                "push",
                format!(
                    "Too many deltas in a single push (max {})",
                    limits.max_push_deltas
                ),
            ));
        }
        let unflushed = self.inner.unflushed_bytes.load(Ordering::Acquire);
        if unflushed >= limits.backpressure_bytes {
            return Err(Error::Backpressure(format!(
                "Buffer is full ({unflushed} unflushed bytes, limit {}); retry after the next flush",
                limits.backpressure_bytes
            )));
        }
        let ctx = PushContext {
            now_ms: self.inner.hlc.physical_ms(),
            max_drift_ms: limits.max_drift.as_millis() as u64,
            client_id: enforce_client.then_some(client_id),
        };
        let mut checked: Vec<(TableRef, CheckedBatch)> = Vec::with_capacity(batches.len());
        let mut outcome = PushOutcome::default();
        for (table, batch) in &batches {
            let c = check_batch(table, batch, ctx)?;
            if atomic && let Some(first) = c.rejections.first() {
                return Err(first.to_error());
            }
            outcome.rejections.extend(
                c.rejections
                    .iter()
                    .map(|r| (table.table.clone(), r.clone())),
            );
            checked.push((table.clone(), c));
        }

        let mut ledger = self.inner.ledger.lock().await;
        for (table, c) in checked {
            if c.accepted.num_rows() == 0 {
                continue;
            }
            // Drop deltas already held (a retried push): they change nothing.
            let fresh = ledger.fresh(&c.accepted)?;
            let duplicates = c.accepted.num_rows() - fresh.num_rows();
            outcome.accepted += c.accepted.num_rows();
            outcome.duplicates += duplicates;
            if fresh.num_rows() == 0 {
                continue;
            }
            self.inner
                .hlc
                .recv(HlcTimestamp(c.max_hlc))
                .map_err(|e| Error::invalid("push", e))?;
            let first = (ledger.last_seq + 1).max(self.inner.hlc.now().0);
            let accepted_ms = now_ms();
            let stored = self
                .inner
                .log
                .append(first, &table.table, client_id, accepted_ms, &fresh)
                .await?;
            let record = ledger.apply(
                first,
                table,
                client_id.to_string(),
                accepted_ms,
                fresh.clone(),
                stored,
            )?;
            // Later cursors must stay above every row cursor this record took.
            self.inner
                .hlc
                .recv(HlcTimestamp(record.seq))
                .map_err(|e| Error::internal(format!("server clock: {e}")))?;
            let seq = record.seq;
            let record = Arc::new(record);
            {
                let mut view = write(&self.inner.view);
                view.retained_bytes += stored as u64;
                view.records.push_back(record.clone());
            }
            self.inner
                .unflushed_bytes
                .fetch_add(stored as u64, Ordering::AcqRel);
            self.inner.head.send_replace(seq);
            // No subscriber is not an error.
            let _ = self.inner.live.send(record);
            outcome.ingested.push(fresh);
        }
        outcome.cursor = ledger.last_seq;
        Ok(outcome)
    }

    /// The records after `cursor` that the client of `filter` may see, up to about `limit`
    /// deltas (whole records; at least one record when any is due), restricted to `tables`
    /// when given. Fails with `CURSOR_EXPIRED` for a cursor older than the retained records.
    pub fn pull(
        &self,
        filter: &ClientFilter,
        cursor: u64,
        limit: usize,
        tables: Option<&[String]>,
    ) -> Result<PullPage> {
        let limit = limit.clamp(1, self.inner.limits.max_pull_limit.max(1));
        let (due, head) = {
            let view = read(&self.inner.view);
            if cursor < view.trimmed {
                return Err(Error::CursorExpired {
                    cursor,
                    oldest: view.trimmed,
                });
            }
            let start = view.records.partition_point(|r| r.seq <= cursor);
            let head = view.records.back().map_or(view.trimmed, |r| r.seq);
            (
                view.records.range(start..).cloned().collect::<Vec<_>>(),
                head,
            )
        };
        let mut page = PullPage {
            cursor: cursor.max(head),
            ..PullPage::default()
        };
        for record in &due {
            if tables.is_some_and(|t| !t.iter().any(|t| *t == record.table.table)) {
                continue;
            }
            // A record the previous page stopped inside continues after the last row sent.
            let from = if cursor >= record.first_seq {
                (cursor - record.first_seq + 1) as usize
            } else {
                0
            };
            let Some((batch, rows)) = record.route_after(filter, from)? else {
                continue;
            };
            let room = limit - page.deltas;
            if batch.num_rows() > room {
                if room > 0 {
                    page.batches.push(batch.slice(0, room));
                    page.deltas += room;
                    page.cursor = record.first_seq + u64::from(rows[room - 1]);
                } else {
                    page.cursor = page_end(record, cursor);
                }
                page.has_more = true;
                break;
            }
            page.deltas += batch.num_rows();
            page.batches.push(batch);
            if page.deltas == limit {
                page.cursor = record.seq;
                page.has_more = due.last().is_some_and(|last| last.seq > record.seq);
                break;
            }
        }
        if !page.has_more && cursor > head {
            page.cursor = cursor;
        }
        Ok(page)
    }

    /// Every row the client of `filter` may see now, as INSERT snapshots in batches of at most
    /// `batch_rows` rows, and the cursor to pull from afterwards.
    ///
    /// With a lake configured ([`GatewayOptions::lake`]), the rows of each table's lake
    /// checkpoint that the client may see come first, then the gateway's own rows: a row both
    /// hold arrives twice, and the client's LWW merge keeps the newer columns of either.
    pub async fn checkpoint(
        &self,
        filter: &ClientFilter,
        tables: Option<&[String]>,
        batch_rows: usize,
    ) -> Result<CheckpointSnapshot> {
        let lake_batches = self.lake_checkpoint(filter, tables).await?;
        let mut ledger = self.inner.ledger.lock().await;
        let mut out = CheckpointSnapshot {
            cursor: ledger.last_seq,
            batches: lake_batches,
        };
        let mut names: Vec<String> = ledger.stores.keys().cloned().collect();
        names.sort();
        for name in names {
            if tables.is_some_and(|t| !t.contains(&name)) || !filter.sees_table(&name) {
                continue;
            }
            let Some(store) = ledger.stores.get_mut(&name) else {
                continue;
            };
            let state = store.snapshot()?;
            let table = store.table().clone();
            let visible = filter.matches(&name, &state)?;
            let deleted = state
                .column_by_name(DELETED)
                .map(|c| c.as_boolean().clone())
                .ok_or_else(|| Error::internal("state without _deleted"))?;
            let keep = arrow::compute::and(&visible, &arrow::compute::not(&deleted)?)?;
            let state = filter_record_batch(&state, &keep)?;
            let hlcs: UInt64Array = state
                .column(1)
                .as_primitive::<arrow::datatypes::UInt64Type>()
                .clone();
            let step = batch_rows.max(1);
            let mut offset = 0;
            while offset < state.num_rows() {
                let len = step.min(state.num_rows() - offset);
                let chunk = state.slice(offset, len);
                let rows: Vec<u32> = (0..len as u32).collect();
                let ops = vec![crate::kernel::delta::DeltaOp::Insert as u8; len];
                let hlc = hlcs.slice(offset, len);
                out.batches.push(snapshot_batch(
                    &table,
                    &chunk,
                    &rows,
                    &ops,
                    &hlc,
                    "lakesync:checkpoint",
                    out.cursor,
                )?);
                offset += len;
            }
        }
        Ok(out)
    }

    /// The lake checkpoint rows of the gateway's tables that the client of `filter` may see
    /// (none without a lake, or for tables without a lake checkpoint).
    async fn lake_checkpoint(
        &self,
        filter: &ClientFilter,
        tables: Option<&[String]>,
    ) -> Result<Vec<RecordBatch>> {
        let Some(lake) = &self.inner.lake else {
            return Ok(Vec::new());
        };
        let tables_now: Vec<TableRef> = read(&self.inner.view).tables.values().cloned().collect();
        let mut out = Vec::new();
        for table in tables_now {
            let name = table.table.clone();
            if tables.is_some_and(|t| !t.contains(&name)) || !filter.sees_table(&name) {
                continue;
            }
            let ident = iceberg::TableIdent::new(
                iceberg::NamespaceIdent::new(lake.namespace.clone()),
                name.clone(),
            );
            let exists = lake
                .catalog
                .table_exists(&ident)
                .await
                .map_err(|e| Error::External {
                    system: "iceberg",
                    message: format!("looking for lake table {ident}: {e}"),
                    retryable: e.retryable(),
                    source: Some(Box::new(e)),
                })?;
            if !exists {
                continue;
            }
            let Some(checkpoint) = checkpoint::open(&lake.catalog, &ident).await? else {
                continue;
            };
            let served = checkpoint::stream_filtered(
                &checkpoint,
                |batch| filter.matches(&name, batch),
                // In the gateway's schema of the table (the lake's may lag behind it).
                |batch| {
                    out.push(crate::gateway::push::conform(&table, &batch)?);
                    Ok(())
                },
            )
            .await?;
            tracing::debug!(table = %name, rows = served, of = checkpoint.manifest.rows, "lake checkpoint rows served");
        }
        Ok(out)
    }

    /// Records after `cursor`, oldest first, up to `max` records (for the pipeline source).
    pub fn records_after(&self, cursor: u64, max: usize) -> Vec<RecordRef> {
        let view = read(&self.inner.view);
        let start = view.records.partition_point(|r| r.seq <= cursor);
        view.records.range(start..).take(max).cloned().collect()
    }

    /// Called by the pipeline once every sink has committed up to sequence number `seq`.
    pub async fn acknowledge(&self, seq: u64) -> Result<()> {
        let previous = *self.inner.flushed.borrow();
        if seq <= previous {
            return Ok(());
        }
        let released: u64 = {
            let view = read(&self.inner.view);
            view.records
                .iter()
                .filter(|r| r.seq > previous && r.seq <= seq)
                .map(|r| r.stored_bytes as u64)
                .sum()
        };
        self.inner
            .log
            .set_meta(META_FLUSHED, &seq.to_string())
            .await?;
        let _ = self
            .inner
            .unflushed_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(released))
            });
        self.inner.flushed.send_replace(seq);
        self.trim().await
    }

    /// Trims flushed records outside the retention limits, folding them into the saved state.
    async fn trim(&self) -> Result<()> {
        let limits = &self.inner.limits;
        let flushed = *self.inner.flushed.borrow();
        let oldest_kept_ms = now_ms().saturating_sub(limits.retention_age.as_millis() as u64);
        let doomed: Vec<RecordRef> = {
            let view = read(&self.inner.view);
            let mut bytes = view.retained_bytes;
            view.records
                .iter()
                .take_while(|r| {
                    let over = bytes > limits.retention_bytes || r.accepted_ms < oldest_kept_ms;
                    let go = r.seq <= flushed && over;
                    if go {
                        bytes -= r.stored_bytes as u64;
                    }
                    go
                })
                .cloned()
                .collect()
        };
        let Some(last) = doomed.last().map(|r| r.seq) else {
            return Ok(());
        };
        let mut ledger = self.inner.ledger.lock().await;
        let mut by_table: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        for r in &doomed {
            by_table
                .entry(r.table.table.clone())
                .or_default()
                .push(r.deltas.clone());
        }
        let mut folded = Vec::new();
        for (name, deltas) in by_table {
            let table = self.table(&name)?;
            let prior = ledger.saved.get(&name).cloned();
            let state = merge(&table, prior.as_deref(), &deltas)?;
            folded.push((name, Arc::new(state)));
        }
        self.inner.log.trim(last, &folded).await?;
        for (name, state) in folded {
            ledger.saved.insert(name, state);
        }
        for r in &doomed {
            let ids = r.deltas.column(4).as_fixed_size_binary();
            for i in 0..ids.len() {
                if let Ok(id) = <[u8; 32]>::try_from(ids.value(i)) {
                    ledger.seen.remove(&id);
                }
            }
        }
        let mut view = write(&self.inner.view);
        while view.records.front().is_some_and(|r| r.seq <= last) {
            if let Some(r) = view.records.pop_front() {
                view.retained_bytes -= r.stored_bytes as u64;
            }
        }
        view.trimmed = last;
        tracing::info!(
            upto = last,
            records = doomed.len(),
            "trimmed flushed records past retention"
        );
        Ok(())
    }

    /// Connects the pipeline runtime's flush channel.
    pub fn set_flush_channel(&self, sender: mpsc::Sender<FlushRequest>) {
        if let Ok(mut slot) = self.inner.flush_requests.lock() {
            *slot = Some(sender);
        }
    }

    /// Flushes everything accepted so far to the sinks and waits until it is committed (at
    /// most `timeout`).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let target = self.head();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut flushed = self.inner.flushed.subscribe();
        loop {
            if *flushed.borrow() >= target {
                return Ok(());
            }
            let sender = self
                .inner
                .flush_requests
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .ok_or_else(|| Error::External {
                    system: "gateway",
                    message: "No flush target is running".to_string(),
                    retryable: true,
                    source: None,
                })?;
            let (tx, rx) = oneshot::channel();
            sender.send(tx).await.map_err(|_| Error::External {
                system: "gateway",
                message: "the flush target stopped".to_string(),
                retryable: true,
                source: None,
            })?;
            let answered =
                tokio::time::timeout_at(deadline, rx)
                    .await
                    .map_err(|_| Error::External {
                        system: "gateway",
                        message: "flush timed out".to_string(),
                        retryable: true,
                        source: None,
                    })?;
            answered.map_err(|_| Error::External {
                system: "gateway",
                message: "the flush target stopped".to_string(),
                retryable: true,
                source: None,
            })??;
            // The epoch may not have reached `target` yet: wait a little for the next one.
            let _ = tokio::time::timeout(Duration::from_millis(50), flushed.changed()).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::External {
                    system: "gateway",
                    message: "flush timed out".to_string(),
                    retryable: true,
                    source: None,
                });
            }
        }
    }

    /// Saves new sync rules (checked against the tables) for every later pull.
    pub async fn set_sync_rules(&self, rules: SyncRules) -> Result<()> {
        rules.validate()?;
        let schemas: Vec<TableSchema> = self.tables().iter().map(|t| (**t).clone()).collect();
        rules.check_against(&schemas)?;
        let text = serde_json::to_string(&rules).map_err(Error::internal)?;
        self.inner.log.set_meta(META_RULES, &text).await?;
        *write(&self.inner.rules) = rules;
        Ok(())
    }

    /// Evolves a table's schema (add-only) or adds a table; the flush pipeline is rebuilt.
    pub async fn set_schema(&self, schema: TableSchema) -> Result<()> {
        schema.validate()?;
        let mut ledger = self.inner.ledger.lock().await;
        let current = read(&self.inner.view).tables.get(&schema.table).cloned();
        if let Some(current) = &current {
            current.evolve_to(&schema)?;
        }
        let text = serde_json::to_string(&schema).map_err(Error::internal)?;
        self.inner
            .log
            .set_meta(&schema_key(&schema.table), &text)
            .await?;
        let table: TableRef = Arc::new(schema);
        let mut store = RowStore::new(table.clone())?;
        if let Some(old) = ledger.stores.get_mut(&table.table) {
            let state = old.snapshot()?;
            store.load(std::slice::from_ref(&state))?;
        }
        ledger.stores.insert(table.table.clone(), store);
        ledger.last_snapshot.entry(table.table.clone()).or_default();
        write(&self.inner.view)
            .tables
            .insert(table.table.clone(), table);
        drop(ledger);
        self.inner.reload.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Buffer figures.
    pub async fn stats(&self) -> GatewayStats {
        let index_size = {
            let ledger = self.inner.ledger.lock().await;
            ledger.stores.values().map(|s| s.len() as u64).sum()
        };
        let view = read(&self.inner.view);
        GatewayStats {
            log_size: view.records.iter().map(|r| r.len() as u64).sum(),
            index_size,
            byte_size: self.inner.unflushed_bytes.load(Ordering::Acquire),
            records: view.records.len() as u64,
            retained_bytes: view.retained_bytes,
            head: view.records.back().map_or(view.trimmed, |r| r.seq),
            flushed: *self.inner.flushed.borrow(),
            trimmed: view.trimmed,
        }
    }

    /// Unflushed bytes and retained records, without waiting for the push lock (for metrics).
    pub fn stats_quick(&self) -> (u64, u64) {
        let records = read(&self.inner.view).records.len() as u64;
        (self.unflushed_bytes(), records)
    }

    /// Unflushed bytes.
    pub fn unflushed_bytes(&self) -> u64 {
        self.inner.unflushed_bytes.load(Ordering::Acquire)
    }
}

impl Ledger {
    /// The rows of `batch` whose delta ids are not already held (first occurrence kept).
    fn fresh(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let ids = batch.column(4).as_fixed_size_binary();
        let mut batch_seen: HashSet<[u8; 32], FastHash> = HashSet::default();
        let keep: BooleanArray = (0..ids.len())
            .map(|i| {
                let id = <[u8; 32]>::try_from(ids.value(i)).unwrap_or([0; 32]);
                Some(!self.seen.contains(&id) && batch_seen.insert(id))
            })
            .collect();
        if keep.true_count() == batch.num_rows() {
            Ok(batch.clone())
        } else {
            Ok(filter_record_batch(batch, &keep)?)
        }
    }

    /// Merges a record's deltas into the row state and builds the record.
    fn apply(
        &mut self,
        first_seq: u64,
        table: TableRef,
        client_id: String,
        accepted_ms: u64,
        deltas: RecordBatch,
        stored_bytes: usize,
    ) -> Result<Record> {
        let store = self
            .stores
            .get_mut(&table.table)
            .ok_or_else(|| Error::internal(format!("no row state for {:?}", table.table)))?;
        let applied = store.apply(&deltas)?;
        let hlcs = applied
            .after
            .column(1)
            .as_primitive::<arrow::datatypes::UInt64Type>();
        let last = self.last_snapshot.entry(table.table.clone()).or_default();
        let snapshot_hlc: UInt64Array = applied
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let raised = match last.get(id) {
                    Some(&prev) => hlcs.value(i).max(prev + 1),
                    None => hlcs.value(i),
                };
                last.insert(id.clone(), raised);
                Some(raised)
            })
            .collect();
        store.update(applied.after.clone())?;
        let ids = deltas.column(4).as_fixed_size_binary();
        for i in 0..ids.len() {
            if let Ok(id) = <[u8; 32]>::try_from(ids.value(i)) {
                self.seen.insert(id);
            }
        }
        let seq = first_seq + (applied.after.num_rows() as u64).saturating_sub(1);
        self.last_seq = self.last_seq.max(seq);
        Ok(Record {
            first_seq,
            seq,
            table,
            client_id,
            accepted_ms,
            deltas,
            before: applied.before,
            after: applied.after,
            snapshot_hlc,
            stored_bytes,
        })
    }
}

/// Where a full page ends when the next record has rows to send but no room is left: just
/// before that record (or where the previous page ended inside it).
fn page_end(record: &Record, cursor: u64) -> u64 {
    if cursor >= record.first_seq {
        cursor
    } else {
        record.first_seq - 1
    }
}

fn parse_u64(text: Option<String>) -> u64 {
    text.and_then(|t| t.parse().ok()).unwrap_or(0)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta::{ColumnDelta, DeltaOp};
    use crate::kernel::delta_batch::batch_to_deltas;
    use crate::kernel::rules::Claims;
    use crate::kernel::schema::{ColumnDef, ColumnType};
    use serde_json::json;

    fn table() -> TableSchema {
        TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("owner", ColumnType::String),
            ],
        )
    }

    async fn open(dir: &std::path::Path, limits: Limits) -> Gateway {
        let rules = SyncRules::from_value(&json!({"version": 1, "buckets": [
            {"name": "own", "tables": ["todos"], "filters": [{"column": "owner", "op": "eq", "value": "jwt:sub"}]}
        ]}))
        .unwrap();
        Gateway::open(GatewayOptions {
            id: "gw".into(),
            data_dir: dir.to_path_buf(),
            tables: vec![table()],
            sync_rules: rules,
            limits,
            lake: None,
        })
        .await
        .unwrap()
    }

    fn insert(row: &str, owner: &str, ms_ago: u64, counter: u16) -> RowDelta {
        RowDelta::new(
            DeltaOp::Insert,
            "todos",
            row,
            owner,
            vec![
                ColumnDelta::new("title", json!(row)),
                ColumnDelta::new("owner", json!(owner)),
            ],
            HlcTimestamp::new(now_ms() - ms_ago, counter).unwrap(),
        )
    }

    fn filter(gw: &Gateway, sub: &str) -> ClientFilter {
        gw.client_filter(&Claims::new().with("sub", [sub]))
    }

    /// Every page of a pull from `cursor`, with `limit` per page.
    fn pull_all(
        gw: &Gateway,
        f: &ClientFilter,
        mut cursor: u64,
        limit: usize,
    ) -> (Vec<RowDelta>, u64, usize) {
        let mut out = Vec::new();
        let mut pages = 0;
        loop {
            let page = gw.pull(f, cursor, limit, None).unwrap();
            assert!(page.deltas <= limit, "a page holds at most the limit");
            pages += 1;
            for b in &page.batches {
                out.extend(batch_to_deltas(b).unwrap());
            }
            assert!(page.cursor >= cursor, "cursors never go back");
            cursor = page.cursor;
            if !page.has_more {
                return (out, cursor, pages);
            }
        }
    }

    #[tokio::test]
    async fn pages_split_records_and_never_miss_a_late_delta() {
        let dir = tempfile::tempdir().unwrap();
        let gw = open(dir.path(), Limits::default()).await;
        let batch: Vec<RowDelta> = (0..10)
            .map(|i| insert(&format!("r{i}"), "ann", 100, i))
            .collect();
        let out = gw.push_rows("ann", true, &batch, true).await.unwrap();
        assert_eq!(out.accepted, 10);
        let f = filter(&gw, "ann");
        let (rows, cursor, pages) = pull_all(&gw, &f, 0, 3);
        assert_eq!(rows.len(), 10);
        assert_eq!(pages, 4, "10 rows in pages of 3");
        let ids: Vec<&str> = rows.iter().map(|d| d.row_id.as_str()).collect();
        assert_eq!(ids, (0..10).map(|i| format!("r{i}")).collect::<Vec<_>>());

        // A delta with an HLC older than everything pulled so far is still after the cursor.
        let late = insert("late", "ann", 4_000, 0);
        gw.push_rows("ann", true, &[late], true).await.unwrap();
        let (rows, _, _) = pull_all(&gw, &f, cursor, 3);
        assert_eq!(
            rows.iter().map(|d| d.row_id.as_str()).collect::<Vec<_>>(),
            ["late"]
        );

        // A re-push changes nothing and is counted as a duplicate.
        let again = gw.push_rows("ann", true, &batch, true).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (10, 10));
        assert!(gw.pull(&f, cursor, 100, None).unwrap().deltas == 1);
    }

    #[tokio::test]
    async fn trimmed_history_expires_old_cursors_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            retention_bytes: 1,
            ..Limits::default()
        };
        let gw = open(dir.path(), limits.clone()).await;
        gw.push_rows("ann", true, &[insert("a", "ann", 10, 0)], true)
            .await
            .unwrap();
        let out = gw
            .push_rows("ann", true, &[insert("b", "ann", 10, 1)], true)
            .await
            .unwrap();
        gw.acknowledge(out.cursor).await.unwrap();
        let f = filter(&gw, "ann");
        let err = gw.pull(&f, 0, 100, None).unwrap_err();
        assert_eq!(err.code(), "CURSOR_EXPIRED");
        // The state still holds both rows: a checkpoint has them, and so does a reopened gateway.
        let cp = gw.checkpoint(&f, None, 100).await.unwrap();
        assert_eq!(cp.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        drop(gw);
        let gw = open(dir.path(), limits).await;
        let cp = gw.checkpoint(&filter(&gw, "ann"), None, 100).await.unwrap();
        assert_eq!(cp.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert_eq!(cp.cursor, out.cursor);
    }
}
