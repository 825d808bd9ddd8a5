//! The client's side of the gateway's Arrow Flight protocol (see `docs/gateway.md`).
//!
//! One [`Connection`] per gateway: a lazily connected gRPC channel that reconnects by itself
//! after a failure, and the caller's credentials — `authorization: Bearer <jwt>` when a token
//! is given, and always `x-lakesync-client-id` (what a gateway with auth off takes as the
//! caller; a gateway with auth ignores it). Every call maps a gRPC status back to a LakeSync [`Error`] by
//! code ([`status_error`]): `UNAVAILABLE` and friends are retryable external errors,
//! `RESOURCE_EXHAUSTED` is backpressure, `OUT_OF_RANGE` an expired cursor, the rest the
//! caller's own mistakes.
//!
//! | call | RPC |
//! |---|---|
//! | [`Connection::schemas`] | DoAction `schemas` |
//! | [`Connection::visible_tables`] | ListFlights |
//! | [`Connection::checkpoint`] | DoGet `{"checkpoint": {"tables"}}` |
//! | [`Connection::pull`] | DoGet `{"tables", "cursor", "limit"}` |
//! | [`Connection::push`] | DoPut, descriptor `CMD {"table"}` |
//! | [`Connection::subscribe`] | DoExchange, first message `CMD {"subscribe": {"tables", "cursor"}}` |
//! | [`Connection::action`] | DoAction |

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{
    Action, Criteria, FlightData, FlightDescriptor, PutResult, SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::kernel::delta_batch::delta_schema;
use crate::kernel::schema::TableSchema;
use crate::{Error, Result};

use super::decode::{Message, messages};

/// Largest message accepted from the gateway (the gateway's own limit).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// A gRPC status from the gateway as a LakeSync error (see the module docs).
pub(crate) fn status_error(status: &Status) -> Error {
    let message = status.message().to_string();
    let external = |retryable| Error::External {
        system: "gateway",
        message: format!("{}: {message}", status.code()),
        retryable,
        source: None,
    };
    match status.code() {
        Code::Unauthenticated => Error::Unauthenticated(message),
        Code::PermissionDenied => Error::Forbidden(message),
        Code::NotFound => Error::NotFound {
            what: "gateway resource",
            name: message,
        },
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
            if message.starts_with("SCHEMA_MISMATCH") {
                Error::Schema(message)
            } else {
                Error::invalid("request", message)
            }
        }
        Code::ResourceExhausted => Error::Backpressure(message),
        Code::OutOfRange => Error::CursorExpired {
            cursor: 0,
            oldest: oldest_cursor(&message),
        },
        Code::Unavailable
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled => external(true),
        _ => external(false),
    }
}

/// The oldest retained cursor an expired-cursor message names (`... change (123); ...`).
fn oldest_cursor(message: &str) -> u64 {
    message
        .rsplit_once('(')
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// A cursor in gateway JSON: a decimal string (or a number).
fn cursor_of(metadata: &Value) -> Result<u64> {
    let bad = || Error::External {
        system: "gateway",
        message: format!("a stream's metadata carries no cursor: {metadata}"),
        retryable: false,
        source: None,
    };
    match metadata.get("cursor") {
        Some(Value::String(s)) => s.parse().map_err(|_| bad()),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// One rejected delta of a push, as the gateway reports it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PushRejection {
    /// The delta's row in the pushed batch.
    #[serde(default)]
    pub row: usize,
    /// The delta's id.
    #[serde(default)]
    pub delta_id: String,
    /// `CLOCK_DRIFT`, `FORBIDDEN`, `VALIDATION_ERROR`, ...
    pub code: String,
    /// What was wrong.
    #[serde(default)]
    pub message: String,
}

/// The gateway's answer to a push (summed over the `PutResult`s of one DoPut).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushResult {
    /// Deltas accepted, re-pushed duplicates included.
    pub accepted: u64,
    /// Of those, deltas the gateway already held.
    pub duplicates: u64,
    /// The deltas refused, with reasons.
    pub rejections: Vec<PushRejection>,
    /// The gateway's cursor after the push.
    pub cursor: u64,
}

#[derive(Deserialize)]
struct WirePushResult {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    rejections: Vec<PushRejection>,
    cursor: Value,
}

/// One pulled page.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// The delta batches, in cursor order (empty ones dropped).
    pub batches: Vec<RecordBatch>,
    /// Where the next pull starts.
    pub cursor: u64,
    /// Whether more changes are due after `cursor`.
    pub has_more: bool,
}

/// Credentials sent with every call: the client id (which a gateway without auth takes as
/// the caller) and, when given, the bearer token (which a gateway with auth requires).
#[derive(Clone, Debug)]
struct Credentials {
    bearer: Option<AsciiMetadataValue>,
    client_id: AsciiMetadataValue,
}

/// A connection to one gateway's Flight endpoint (cheap to clone).
#[derive(Clone, Debug)]
pub struct Connection {
    client: FlightServiceClient<Channel>,
    credentials: Credentials,
    url: String,
}

/// `url` with an `http://` scheme: `grpc://`, `grpc+tcp://` and bare `host:port` are accepted.
pub(crate) fn normalise_url(url: &str) -> String {
    for prefix in ["grpc+tcp://", "grpc://"] {
        if let Some(rest) = url.strip_prefix(prefix) {
            return format!("http://{rest}");
        }
    }
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

impl Connection {
    /// A connection to the gateway at `url` (`http://host:port`, `grpc://host:port` or
    /// `host:port`) for `client_id`, with `token` when the gateway checks tokens. Nothing is
    /// dialled until the first call.
    pub fn new(url: &str, token: Option<&str>, client_id: &str) -> Result<Self> {
        let url = normalise_url(url);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::invalid("gateway url", format!("{url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let header = |text: String, what: &'static str| {
            AsciiMetadataValue::try_from(text)
                .map_err(|_| Error::invalid(what, "must be printable ASCII"))
        };
        let credentials = Credentials {
            bearer: token
                .map(|t| header(format!("Bearer {t}"), "token"))
                .transpose()?,
            client_id: header(client_id.to_string(), "client id")?,
        };
        let client = FlightServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            client,
            credentials,
            url,
        })
    }

    /// The gateway's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata: &mut MetadataMap = request.metadata_mut();
        metadata.insert("x-lakesync-client-id", self.credentials.client_id.clone());
        if let Some(bearer) = &self.credentials.bearer {
            metadata.insert("authorization", bearer.clone());
        }
        request
    }

    /// Runs DoAction `kind` with `body`; its one JSON result.
    pub async fn action(&self, kind: &str, body: Vec<u8>) -> Result<Value> {
        let action = Action {
            r#type: kind.to_string(),
            body: Bytes::from(body),
        };
        let response = self
            .client
            .clone()
            .do_action(self.request(action))
            .await
            .map_err(|s| status_error(&s))?;
        let results: Vec<arrow_flight::Result> = response
            .into_inner()
            .try_collect()
            .await
            .map_err(|s| status_error(&s))?;
        let first = results.first().ok_or_else(|| Error::External {
            system: "gateway",
            message: format!("action {kind:?} returned no result"),
            retryable: false,
            source: None,
        })?;
        serde_json::from_slice(&first.body).map_err(|e| Error::External {
            system: "gateway",
            message: format!("action {kind:?} returned no JSON: {e}"),
            retryable: false,
            source: None,
        })
    }

    /// The schemas of every table the gateway serves.
    pub async fn schemas(&self) -> Result<Vec<TableSchema>> {
        let value = self.action("schemas", Vec::new()).await?;
        serde_json::from_value(value).map_err(|e| Error::External {
            system: "gateway",
            message: format!("the gateway's schemas do not parse: {e}"),
            retryable: false,
            source: None,
        })
    }

    /// The tables the caller's sync rules let it see.
    pub async fn visible_tables(&self) -> Result<Vec<String>> {
        let response = self
            .client
            .clone()
            .list_flights(self.request(Criteria::default()))
            .await
            .map_err(|s| status_error(&s))?;
        let infos: Vec<arrow_flight::FlightInfo> = response
            .into_inner()
            .try_collect()
            .await
            .map_err(|s| status_error(&s))?;
        Ok(infos
            .into_iter()
            .filter_map(|i| i.flight_descriptor.and_then(|d| d.path.first().cloned()))
            .collect())
    }

    async fn get(&self, ticket: Value) -> Result<BoxStream<'static, Result<Message>>> {
        let response = self
            .client
            .clone()
            .do_get(self.request(Ticket::new(ticket.to_string())))
            .await
            .map_err(|s| status_error(&s))?;
        Ok(messages(response.into_inner()))
    }

    /// The checkpoint of `tables`: every visible row as INSERT snapshots, each message's
    /// metadata naming the cursor to pull from afterwards.
    pub(crate) async fn checkpoint(
        &self,
        tables: &[String],
    ) -> Result<BoxStream<'static, Result<(Option<RecordBatch>, u64)>>> {
        let stream = self.get(json!({"checkpoint": {"tables": tables}})).await?;
        Ok(stream
            .map(|m| m.and_then(|m| cursor_of(&m.metadata).map(|c| (m.batch, c))))
            .boxed())
    }

    /// One page of the changes to `tables` after `cursor`, at most about `limit` deltas.
    pub(crate) async fn pull(&self, tables: &[String], cursor: u64, limit: usize) -> Result<Page> {
        let ticket = json!({"tables": tables, "cursor": cursor.to_string(), "limit": limit});
        let mut stream = self.get(ticket).await.map_err(|e| expired(e, cursor))?;
        let mut page = Page::default();
        let mut last = Value::Null;
        while let Some(message) = stream.next().await {
            let message = message.map_err(|e| expired(e, cursor))?;
            if let Some(batch) = message.batch.filter(|b| b.num_rows() > 0) {
                page.batches.push(batch);
            }
            if !message.metadata.is_null() {
                last = message.metadata;
            }
        }
        page.cursor = cursor_of(&last)?;
        page.has_more = last
            .get("hasMore")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(page)
    }

    /// Pushes one delta batch of `table`.
    pub(crate) async fn push(&self, table: &str, batch: RecordBatch) -> Result<PushResult> {
        let descriptor = FlightDescriptor::new_cmd(json!({ "table": table }).to_string());
        let data: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(futures::stream::iter([Ok(batch)]))
            .try_collect()
            .await
            .map_err(|e| Error::internal(format!("encoding a push: {e}")))?;
        let response = self
            .client
            .clone()
            .do_put(self.request(futures::stream::iter(data)))
            .await
            .map_err(|s| status_error(&s))?;
        let results: Vec<PutResult> = response
            .into_inner()
            .try_collect()
            .await
            .map_err(|s| status_error(&s))?;
        if results.is_empty() {
            return Err(Error::External {
                system: "gateway",
                message: "a push got no result".to_string(),
                retryable: true,
                source: None,
            });
        }
        let mut total = PushResult::default();
        for r in results {
            let wire: WirePushResult =
                serde_json::from_slice(&r.app_metadata).map_err(|e| Error::External {
                    system: "gateway",
                    message: format!("a push result does not parse: {e}"),
                    retryable: false,
                    source: None,
                })?;
            total.accepted += wire.accepted;
            total.duplicates += wire.duplicates;
            total.rejections.extend(wire.rejections);
            total.cursor = total
                .cursor
                .max(cursor_of(&json!({ "cursor": wire.cursor }))?);
        }
        Ok(total)
    }

    /// Subscribes to `tables` after `cursor`: the backlog, then every change as accepted.
    /// `schema` is any table's schema (the first message must carry an IPC schema).
    pub(crate) async fn subscribe(
        &self,
        tables: &[String],
        cursor: u64,
        schema: &TableSchema,
    ) -> Result<BoxStream<'static, Result<(RecordBatch, u64)>>> {
        let cmd = json!({"subscribe": {"tables": tables, "cursor": cursor.to_string()}});
        let first: FlightData =
            SchemaAsIpc::new(&delta_schema(schema), &IpcWriteOptions::default()).into();
        let first = first.with_descriptor(FlightDescriptor::new_cmd(cmd.to_string()));
        // The request stays open: the gateway ends the subscription when it closes.
        let outbound =
            futures::stream::once(async move { first }).chain(futures::stream::pending());
        let response = self
            .client
            .clone()
            .do_exchange(self.request(outbound))
            .await
            .map_err(|s| expired(status_error(&s), cursor))?;
        Ok(messages(response.into_inner())
            .filter_map(move |m| {
                futures::future::ready(match m {
                    Ok(Message {
                        batch: Some(batch),
                        metadata,
                    }) => Some(cursor_of(&metadata).map(|c| (batch, c))),
                    Ok(_) => None,
                    Err(e) => Some(Err(expired(e, cursor))),
                })
            })
            .boxed())
    }
}

/// An expired-cursor error with the cursor that was asked for.
fn expired(e: Error, cursor: u64) -> Error {
    match e {
        Error::CursorExpired { oldest, .. } => Error::CursorExpired { cursor, oldest },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_statuses() {
        assert_eq!(normalise_url("grpc://h:1"), "http://h:1");
        assert_eq!(normalise_url("h:1"), "http://h:1");
        assert_eq!(normalise_url("http://h:1"), "http://h:1");
        let e = status_error(&Status::out_of_range(
            "CURSOR_EXPIRED: cursor 5 is older than the oldest retained change (42); start again",
        ));
        assert!(
            matches!(e, Error::CursorExpired { oldest: 42, .. }),
            "{e:?}"
        );
        assert!(matches!(
            status_error(&Status::unavailable("down")).kind(),
            crate::ErrorKind::External { retryable: true }
        ));
        assert!(matches!(
            status_error(&Status::invalid_argument("SCHEMA_MISMATCH: x")),
            Error::Schema(_)
        ));
    }
}
