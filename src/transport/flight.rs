//! The Arrow Flight service: the gateway's primary transport.
//!
//! Authentication is a Bearer JWT in the `authorization` metadata (with auth off, a client may
//! name itself with `x-lakesync-client-id`). Requests and replies carry JSON where Flight leaves
//! room for application data:
//!
//! - **DoPut** — descriptor `CMD {"table": "todos", "client_id": "c1"}` (or `PATH ["todos"]`);
//!   the batches are delta batches of that table (the Arrow delta contract). Each batch is
//!   answered with one `PutResult` whose `app_metadata` is
//!   `{"accepted", "rejected", "duplicates", "rejections": [{"row", "deltaId", "code", "message"}],
//!   "cursor"}`. Deltas that fail their checks are reported; the others are applied and durable
//!   when the result is sent.
//! - **DoGet** — ticket `{"table": "todos", "cursor": "0", "limit": 10000}` (or `"tables": [...]`
//!   for several, in which case the stream changes schema between tables): the records after the
//!   cursor that the caller's sync rules allow, as delta batches (rows entering the caller's view
//!   as whole-row `INSERT`s, changes as whole-row `UPDATE`s, rows leaving as `DELETE`s). Every
//!   batch's `app_metadata` is `{"cursor", "hasMore"}` and the stream ends with a batch (possibly
//!   empty) holding the cursor to continue from. Ticket `{"checkpoint": {"tables": [...]}}`
//!   streams every row the caller may see now, each batch's metadata `{"cursor"}` naming where
//!   to pull from afterwards.
//! - **DoExchange** — first message's descriptor `CMD {"subscribe": {"tables": [...],
//!   "cursor": "N"}}` (no cursor: from now): the server sends what the caller may see after the
//!   cursor and then every change as it is accepted (metadata `{"cursor"}` per batch). Delta
//!   batches the client writes on the same stream are pushed (their table from the schema's
//!   `lakesync.table` metadata or the descriptor's `"table"`), each answered by a data-less
//!   message whose metadata is the push result with `"ack": true`.
//! - **DoAction** — `flush`, `set-schema`, `set-sync-rules` (admin); `schemas`, `sync-rules`,
//!   `stats`, `actions` (an `ActionPush` JSON body), `describe-actions`. Each returns one JSON
//!   result. **ListActions** lists them.
//! - **ListFlights / GetFlightInfo / GetSchema** — one flight per table the caller can see
//!   (descriptor `PATH [table]`, the table's delta schema, a ticket pulling from cursor 0);
//!   GetFlightInfo of `CMD {"checkpoint": {...}}` describes the initial-sync checkpoint.
//!
//! Errors map to gRPC codes by kind ([`status`]), with the LakeSync code leading the message.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{
    CompressionContext, DictionaryTracker, IpcDataGenerator, IpcWriteOptions,
};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::gateway::auth::{Principal, require_admin, unix_now_secs};
use crate::gateway::metrics::Transport;
use crate::gateway::record::RecordRef;
use crate::kernel::delta_batch::delta_schema;
use crate::kernel::rules::{ClientFilter, SyncRules};
use crate::kernel::schema::TableSchema;
use crate::kernel::state::TABLE_METADATA_KEY;
use crate::runtime::api::TableRef;
use crate::transport::SharedContext;
use crate::{Error, Result};

/// Largest Flight message accepted (a 10 000-row batch of wide rows fits easily).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How long an admin flush waits for the sinks.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Maps an error to a gRPC status by kind, the LakeSync code leading the message.
pub fn status(e: &Error) -> Status {
    let message = format!("{}: {e}", e.code());
    match e {
        Error::Unauthenticated(_) => Status::unauthenticated(message),
        Error::Forbidden(_) => Status::permission_denied(message),
        Error::NotFound { .. } => Status::not_found(message),
        Error::Backpressure(_) | Error::RateLimited { .. } => Status::resource_exhausted(message),
        Error::CursorExpired { .. } => Status::out_of_range(message),
        Error::Internal(_) => Status::internal(message),
        Error::External { retryable, .. } if *retryable => Status::unavailable(message),
        Error::External { .. } => Status::internal(message),
        _ => Status::invalid_argument(message),
    }
}

fn st(e: Error) -> Status {
    status(&e)
}

/// The Flight service of one gateway.
#[derive(Clone, Debug)]
pub struct FlightGateway {
    ctx: SharedContext,
}

/// Serves Flight on `listener` until `shutdown` resolves.
pub async fn serve(
    ctx: SharedContext,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let service = FlightServiceServer::new(FlightGateway { ctx })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
        .map_err(|e| Error::external("flight server", false, e))
}

impl FlightGateway {
    /// The caller, from the `authorization` metadata (or, with auth off, the client id it gives).
    fn principal(&self, metadata: &MetadataMap) -> Result<Principal> {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        let principal = if self.ctx.auth.is_enabled() {
            self.ctx
                .auth
                .authenticate(text("authorization"), None, unix_now_secs())?
        } else {
            self.ctx
                .auth
                .anonymous(text("x-lakesync-client-id").unwrap_or("anonymous"))
        };
        if let Some(limiter) = &self.ctx.rate_limiter {
            limiter.check(&principal.client_id, Instant::now())?;
        }
        Ok(principal)
    }

    fn filter(&self, principal: &Principal) -> ClientFilter {
        self.ctx.gateway.client_filter(&principal.claims)
    }

    fn flight_info(&self, table: &TableRef) -> Result<FlightInfo> {
        let ticket = json!({"table": table.table, "cursor": "0"}).to_string();
        FlightInfo::new()
            .try_with_schema(&delta_schema(table))
            .map_err(|e| Error::internal(format!("flight info: {e}")))
            .map(|info| {
                info.with_descriptor(FlightDescriptor::new_path(vec![table.table.clone()]))
                    .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                    .with_total_records(-1)
            })
    }

    /// Pushes one batch for `client_id` and describes the outcome as JSON.
    async fn push_batch(
        &self,
        principal: &Principal,
        client_id: &str,
        table_name: Option<&str>,
        batch: RecordBatch,
    ) -> Result<Value> {
        let named = batch.schema().metadata().get(TABLE_METADATA_KEY).cloned();
        let name = match (table_name, named.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::schema(format!(
                    "the descriptor names table {a:?} but the batch is for {b:?}"
                )));
            }
            (Some(a), _) => a.to_string(),
            (None, Some(b)) => b.to_string(),
            (None, None) => {
                return Err(Error::invalid(
                    "push",
                    "no table: name it in the descriptor ({\"table\": ...}) or the schema metadata lakesync.table",
                ));
            }
        };
        let table = self.ctx.gateway.table(&name)?;
        let enforce = self.ctx.auth.is_enabled() && !principal.is_admin();
        let started = Instant::now();
        let outcome = self
            .ctx
            .gateway
            .push(client_id, enforce, vec![(table, batch)], false)
            .await?;
        let mut by_code: Vec<(&str, u64)> = Vec::new();
        for (_, r) in &outcome.rejections {
            match by_code.iter_mut().find(|(c, _)| *c == r.code) {
                Some((_, n)) => *n += 1,
                None => by_code.push((r.code, 1)),
            }
        }
        self.ctx
            .metrics
            .record_push(outcome.accepted as u64, &by_code, started.elapsed());
        let stats = self.ctx.gateway.stats_quick();
        self.ctx.metrics.set_buffer(stats.0, stats.1);
        Ok(json!({
            "accepted": outcome.accepted,
            "rejected": outcome.rejections.len(),
            "duplicates": outcome.duplicates,
            "rejections": outcome.rejections.iter().map(|(_, r)| r).collect::<Vec<_>>(),
            "cursor": outcome.cursor.to_string(),
        }))
    }
}

impl FlightGateway {
    /// Pushes every batch of an inbound Flight stream for `client_id`, answering each with
    /// `answer(result JSON)`; stops at the first error (sent to the caller) or when the caller
    /// hangs up.
    async fn push_stream<T: Send + 'static>(
        &self,
        data: BoxStream<'static, std::result::Result<FlightData, FlightError>>,
        principal: Principal,
        client_id: String,
        table: Option<String>,
        tx: mpsc::Sender<std::result::Result<T, Status>>,
        answer: impl Fn(Value) -> T + Send,
    ) {
        let mut decoder = FlightDataDecoder::new(data);
        while let Some(item) = decoder.next().await {
            let reply = match item {
                Ok(decoded) => match decoded.payload {
                    DecodedPayload::RecordBatch(batch) => self
                        .push_batch(&principal, &client_id, table.as_deref(), batch)
                        .await
                        .map(&answer)
                        .map_err(st),
                    _ => continue,
                },
                Err(e) => Err(Status::invalid_argument(format!(
                    "VALIDATION_ERROR: bad Flight data: {e}"
                ))),
            };
            let failed = reply.is_err();
            if tx.send(reply).await.is_err() || failed {
                break;
            }
        }
    }
}

/// Parses a JSON document from request bytes, naming what it is for.
fn parse_json(bytes: &[u8], what: &'static str) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, format!("not JSON: {e}")))
}

/// A u64 given as a decimal string or a number.
fn json_u64(value: Option<&Value>, what: &'static str) -> Result<Option<u64>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid(what, format!("{s:?} is not a decimal integer"))),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| Error::invalid(what, format!("{n} is not a non-negative integer"))),
        Some(other) => Err(Error::invalid(what, format!("{other} is not an integer"))),
    }
}

fn json_tables(value: &Value) -> Result<Option<Vec<String>>> {
    if let Some(t) = value.get("table") {
        let t = t
            .as_str()
            .ok_or_else(|| Error::invalid("ticket", "\"table\" must be a string"))?;
        return Ok(Some(vec![t.to_string()]));
    }
    match value.get("tables") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::invalid("ticket", "\"tables\" must be strings"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::invalid("ticket", "\"tables\" must be a list")),
    }
}

/// Encodes batches, each with its own `app_metadata`, as Flight messages; a schema message is
/// sent first and whenever the schema changes.
struct FlightEncoder {
    schema: Option<SchemaRef>,
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    compression: CompressionContext,
    options: IpcWriteOptions,
}

impl FlightEncoder {
    fn new() -> Self {
        Self {
            schema: None,
            generator: IpcDataGenerator::default(),
            tracker: DictionaryTracker::new(false),
            compression: CompressionContext::default(),
            options: IpcWriteOptions::default(),
        }
    }

    fn schema(&mut self, schema: &SchemaRef, out: &mut Vec<FlightData>) {
        if self.schema.as_ref() != Some(schema) {
            out.push(SchemaAsIpc::new(schema, &self.options).into());
            self.schema = Some(schema.clone());
            self.tracker = DictionaryTracker::new(false);
        }
    }

    fn batch(&mut self, batch: &RecordBatch, metadata: Value) -> Result<Vec<FlightData>> {
        let mut out = Vec::new();
        self.schema(&batch.schema(), &mut out);
        let (dictionaries, data) = self
            .generator
            .encode(
                batch,
                &mut self.tracker,
                &self.options,
                &mut self.compression,
            )
            .map_err(|e| Error::internal(format!("flight encode: {e}")))?;
        out.extend(dictionaries.into_iter().map(FlightData::from));
        out.push(FlightData::from(data).with_app_metadata(Bytes::from(metadata.to_string())));
        Ok(out)
    }

    /// A message carrying only `app_metadata`: an IPC message of header type NONE, which Flight
    /// readers (Rust and C++) pass on without data.
    fn metadata_only(metadata: Value) -> FlightData {
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let mut message = arrow::ipc::MessageBuilder::new(&mut fbb);
        message.add_version(arrow::ipc::MetadataVersion::V5);
        message.add_header_type(arrow::ipc::MessageHeader::NONE);
        message.add_bodyLength(0);
        let root = message.finish();
        fbb.finish(root, None);
        FlightData::new()
            .with_data_header(Bytes::copy_from_slice(fbb.finished_data()))
            .with_app_metadata(Bytes::from(metadata.to_string()))
    }
}

type FlightStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

fn once_stream<T: Send + 'static>(items: Vec<T>) -> FlightStream<T> {
    futures::stream::iter(items.into_iter().map(Ok)).boxed()
}

/// The empty batch of `table`'s delta schema, to carry metadata when no rows are due.
fn empty_batch(table: &TableSchema) -> RecordBatch {
    RecordBatch::new_empty(delta_schema(table))
}

#[tonic::async_trait]
impl FlightService for FlightGateway {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoExchangeStream = FlightStream<FlightData>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "no handshake: send `authorization: Bearer <jwt>` with each call",
        ))
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        let principal = self.principal(request.metadata()).map_err(st)?;
        let filter = self.filter(&principal);
        let infos = self
            .ctx
            .gateway
            .tables()
            .iter()
            .filter(|t| filter.sees_table(&t.table))
            .map(|t| self.flight_info(t))
            .collect::<Result<Vec<_>>>()
            .map_err(st)?;
        Ok(Response::new(once_stream(infos)))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let principal = self.principal(request.metadata()).map_err(st)?;
        let descriptor = request.into_inner();
        match descriptor.r#type() {
            DescriptorType::Path => {
                let name = descriptor.path.first().cloned().unwrap_or_default();
                let table = self.ctx.gateway.table(&name).map_err(st)?;
                if !self.filter(&principal).sees_table(&table.table) {
                    return Err(st(Error::Forbidden(format!(
                        "no sync rule lets this client see table {name:?}"
                    ))));
                }
                Ok(Response::new(self.flight_info(&table).map_err(st)?))
            }
            _ => {
                let cmd = parse_json(&descriptor.cmd, "flight descriptor").map_err(st)?;
                let checkpoint = cmd.get("checkpoint").ok_or_else(|| {
                    st(Error::invalid(
                        "flight descriptor",
                        "expected {\"checkpoint\": {...}} or a path naming a table",
                    ))
                })?;
                let ticket = json!({ "checkpoint": checkpoint }).to_string();
                let info = FlightInfo::new()
                    .with_descriptor(descriptor)
                    .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                    .with_app_metadata(
                        json!({"cursor": self.ctx.gateway.head().to_string()}).to_string(),
                    );
                Ok(Response::new(info))
            }
        }
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("use GetFlightInfo"))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        self.principal(request.metadata()).map_err(st)?;
        let descriptor = request.into_inner();
        let name = descriptor.path.first().cloned().unwrap_or_default();
        let table = self.ctx.gateway.table(&name).map_err(st)?;
        let schema = delta_schema(&table);
        let result = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| st(Error::internal(e)))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let principal = self.principal(request.metadata()).map_err(st)?;
        let ticket = parse_json(&request.into_inner().ticket, "ticket").map_err(st)?;
        let filter = self.filter(&principal);
        let gateway = &self.ctx.gateway;
        let mut encoder = FlightEncoder::new();
        let mut out = Vec::new();
        if let Some(checkpoint) = ticket.get("checkpoint") {
            let tables = json_tables(checkpoint).map_err(st)?;
            let snapshot = gateway
                .checkpoint(&filter, tables.as_deref(), 10_000)
                .await
                .map_err(st)?;
            let meta = json!({"cursor": snapshot.cursor.to_string()});
            for batch in &snapshot.batches {
                out.extend(encoder.batch(batch, meta.clone()).map_err(st)?);
            }
            if out.is_empty() {
                out.push(FlightEncoder::metadata_only(meta));
            }
            return Ok(Response::new(once_stream(out)));
        }
        let tables = json_tables(&ticket).map_err(st)?;
        let cursor = json_u64(ticket.get("cursor"), "ticket cursor")
            .map_err(st)?
            .unwrap_or(0);
        let limit = json_u64(ticket.get("limit"), "ticket limit")
            .map_err(st)?
            .map_or(gateway.limits().max_pull_limit, |l| l as usize);
        if let Some(names) = &tables {
            for name in names {
                gateway.table(name).map_err(st)?;
            }
        }
        let page = gateway
            .pull(&filter, cursor, limit, tables.as_deref())
            .map_err(st)?;
        self.ctx
            .metrics
            .record_pull(Transport::Flight, page.deltas as u64);
        let meta = json!({"cursor": page.cursor.to_string(), "hasMore": page.has_more});
        for batch in &page.batches {
            out.extend(encoder.batch(batch, meta.clone()).map_err(st)?);
        }
        // The closing (possibly empty) batch carries the cursor to continue from.
        let last = match (page.batches.last(), tables.as_deref()) {
            (Some(b), _) => RecordBatch::new_empty(b.schema()),
            (None, Some([one])) => empty_batch(&*gateway.table(one).map_err(st)?),
            (None, _) => match gateway.tables().first() {
                Some(t) => empty_batch(t),
                None => return Ok(Response::new(once_stream(out))),
            },
        };
        out.extend(encoder.batch(&last, meta).map_err(st)?);
        Ok(Response::new(once_stream(out)))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let principal = self.principal(request.metadata()).map_err(st)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("VALIDATION_ERROR: an empty DoPut stream"))?;
        let (table, client_id) =
            put_target(first.flight_descriptor.as_ref(), &principal).map_err(st)?;
        if self.ctx.auth.is_enabled() && !principal.is_admin() && client_id != principal.client_id {
            return Err(st(Error::Forbidden(
                "Client ID does not match token subject".to_string(),
            )));
        }
        let data = futures::stream::once(async { Ok(first) })
            .chain(inbound.map_err(FlightError::from))
            .filter(|m| std::future::ready(!is_descriptor_only(m)))
            .boxed();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            this.push_stream(data, principal, client_id, table, tx, |v| PutResult {
                app_metadata: Bytes::from(v.to_string()),
            })
            .await;
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        let principal = self.principal(request.metadata()).map_err(st)?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("VALIDATION_ERROR: an empty DoExchange stream")
        })?;
        let cmd = first
            .flight_descriptor
            .as_ref()
            .map(|d| parse_json(&d.cmd, "exchange descriptor"))
            .transpose()
            .map_err(st)?
            .unwrap_or(Value::Null);
        let subscribe = cmd.get("subscribe").cloned().unwrap_or(Value::Null);
        let tables = json_tables(&subscribe).map_err(st)?;
        let cursor = json_u64(subscribe.get("cursor"), "subscribe cursor").map_err(st)?;
        let push_table = cmd.get("table").and_then(Value::as_str).map(str::to_string);
        let (tx, rx) = mpsc::channel::<std::result::Result<FlightData, Status>>(64);
        let encoder = Arc::new(tokio::sync::Mutex::new(FlightEncoder::new()));

        // Live changes: subscribe first, then send the backlog, so nothing falls in between.
        let live = self.ctx.gateway.subscribe();
        let sender = tx.clone();
        let this = self.clone();
        let who = principal.clone();
        let enc = encoder.clone();
        let metrics_gateway = self.ctx.clone();
        metrics_gateway.metrics.connection_opened(Transport::Flight);
        tokio::spawn(async move {
            let filter = this.filter(&who);
            let start = cursor.unwrap_or_else(|| this.ctx.gateway.head());
            if let Err(e) =
                send_changes(&this, &filter, start, tables, live, sender.clone(), enc).await
            {
                let _ = sender.send(Err(st(e))).await;
            }
            this.ctx.metrics.connection_closed(Transport::Flight);
        });

        // Pushes on the same stream.
        let this = self.clone();
        let client_id = principal.client_id.clone();
        tokio::spawn(async move {
            let data = futures::stream::once(async { Ok(first) })
                .chain(inbound.map_err(FlightError::from))
                .filter(|m| std::future::ready(!is_descriptor_only(m)))
                .boxed();
            this.push_stream(data, principal, client_id, push_table, tx, |mut v| {
                v["ack"] = json!(true);
                FlightEncoder::metadata_only(v)
            })
            .await;
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        let principal = self.principal(request.metadata()).map_err(st)?;
        let action = request.into_inner();
        let result = self.action(&principal, &action).await.map_err(st)?;
        Ok(Response::new(once_stream(vec![arrow_flight::Result {
            body: Bytes::from(result.to_string()),
        }])))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        let actions = ACTIONS
            .iter()
            .map(|(name, description)| ActionType {
                r#type: (*name).to_string(),
                description: (*description).to_string(),
            })
            .collect();
        Ok(Response::new(once_stream(actions)))
    }
}

/// DoAction types and what they do.
const ACTIONS: &[(&str, &str)] = &[
    (
        "flush",
        "admin: flush everything accepted so far to the sinks; {\"flushed\": true}",
    ),
    ("schemas", "the tables and their columns"),
    (
        "set-schema",
        "admin: add a table or add columns (body: a table schema)",
    ),
    ("sync-rules", "the current sync rules"),
    (
        "set-sync-rules",
        "admin: replace the sync rules (body: the rules document)",
    ),
    (
        "stats",
        "buffer figures: logSize, indexSize, byteSize, head, flushed",
    ),
    (
        "actions",
        "run connector actions (body: {\"clientId\", \"actions\": [...]})",
    ),
    ("describe-actions", "the connector actions on offer"),
];

impl FlightGateway {
    async fn action(&self, principal: &Principal, action: &Action) -> Result<Value> {
        let gateway = &self.ctx.gateway;
        match action.r#type.as_str() {
            "flush" => {
                require_admin(principal)?;
                let started = Instant::now();
                let result = gateway.flush(FLUSH_TIMEOUT).await;
                self.ctx
                    .metrics
                    .record_flush(result.is_ok(), started.elapsed());
                result.map(|()| json!({"flushed": true}))
            }
            "schemas" => Ok(json!(
                gateway
                    .tables()
                    .iter()
                    .map(|t| serde_json::to_value(&**t).unwrap_or(Value::Null))
                    .collect::<Vec<_>>()
            )),
            "set-schema" => {
                require_admin(principal)?;
                let text = std::str::from_utf8(&action.body)
                    .map_err(|_| Error::invalid("schema", "body is not UTF-8"))?;
                gateway.set_schema(TableSchema::from_json(text)?).await?;
                Ok(json!({"saved": true}))
            }
            "sync-rules" => serde_json::to_value(gateway.sync_rules())
                .map_err(|e| Error::internal(e.to_string())),
            "set-sync-rules" => {
                require_admin(principal)?;
                let body = parse_json(&action.body, "sync rules")?;
                gateway
                    .set_sync_rules(SyncRules::from_value(&body)?)
                    .await?;
                Ok(json!({"saved": true}))
            }
            "stats" => serde_json::to_value(gateway.stats().await)
                .map_err(|e| Error::internal(e.to_string())),
            "actions" => {
                let body = parse_json(&action.body, "actions")?;
                let push = crate::gateway::actions::ActionPush::from_json(&body)?;
                crate::gateway::auth::require_client(principal, &push.client_id)?;
                let response = self
                    .ctx
                    .actions
                    .dispatch(push, principal, gateway.head())
                    .await?;
                serde_json::to_value(response).map_err(|e| Error::internal(e.to_string()))
            }
            "describe-actions" => Ok(json!({"connectors": self.ctx.actions.describe()})),
            other => Err(Error::NotFound {
                what: "action type",
                name: other.to_string(),
            }),
        }
    }
}

/// A message that carries nothing but a descriptor or metadata (no IPC message), e.g. the first
/// message of a DoExchange that only names the subscription.
fn is_descriptor_only(m: &std::result::Result<FlightData, FlightError>) -> bool {
    matches!(m, Ok(d) if d.data_header.is_empty() && d.data_body.is_empty())
}

/// The table and client of a DoPut, from its descriptor.
fn put_target(
    descriptor: Option<&FlightDescriptor>,
    principal: &Principal,
) -> Result<(Option<String>, String)> {
    let Some(d) = descriptor else {
        return Ok((None, principal.client_id.clone()));
    };
    match d.r#type() {
        DescriptorType::Path => Ok((d.path.first().cloned(), principal.client_id.clone())),
        _ => {
            let cmd = parse_json(&d.cmd, "flight descriptor")?;
            let table = cmd.get("table").and_then(Value::as_str).map(str::to_string);
            let client = cmd
                .get("client_id")
                .or_else(|| cmd.get("clientId"))
                .and_then(Value::as_str)
                .map_or_else(|| principal.client_id.clone(), str::to_string);
            Ok((table, client))
        }
    }
}

/// Sends a subscriber what it may see after `start`, then every change as it is accepted. When
/// the live feed falls behind (or at the start), the subscriber catches up by pulling from its
/// cursor, page by page; live records at or below the cursor are skipped.
async fn send_changes(
    this: &FlightGateway,
    filter: &ClientFilter,
    start: u64,
    tables: Option<Vec<String>>,
    mut live: tokio::sync::broadcast::Receiver<RecordRef>,
    tx: mpsc::Sender<std::result::Result<FlightData, Status>>,
    encoder: Arc<tokio::sync::Mutex<FlightEncoder>>,
) -> Result<()> {
    let gateway = &this.ctx.gateway;
    let limit = gateway.limits().max_pull_limit;
    let tables = tables.as_deref();
    let mut cursor = start;
    let mut behind = true;
    loop {
        if behind {
            let page = gateway.pull(filter, cursor, limit, tables)?;
            let meta = json!({"cursor": page.cursor.to_string()});
            for batch in &page.batches {
                if !send_batch(&tx, &encoder, batch, meta.clone()).await? {
                    return Ok(());
                }
            }
            cursor = page.cursor;
            behind = page.has_more;
            continue;
        }
        let record = match live.recv().await {
            Ok(record) => record,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                behind = true;
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        };
        if record.seq <= cursor {
            continue;
        }
        cursor = record.seq;
        if tables.is_some_and(|t| !t.contains(&record.table.table)) {
            continue;
        }
        if let Some(batch) = record.route(filter)? {
            let meta = json!({"cursor": record.seq.to_string()});
            if !send_batch(&tx, &encoder, &batch, meta).await? {
                return Ok(());
            }
        }
    }
}

/// Encodes and sends one batch; false when the subscriber has gone.
async fn send_batch(
    tx: &mpsc::Sender<std::result::Result<FlightData, Status>>,
    encoder: &tokio::sync::Mutex<FlightEncoder>,
    batch: &RecordBatch,
    metadata: Value,
) -> Result<bool> {
    let messages = encoder.lock().await.batch(batch, metadata)?;
    for m in messages {
        if tx.send(Ok(m)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}
