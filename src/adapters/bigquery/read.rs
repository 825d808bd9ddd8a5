//! A whole-table read through the **BigQuery Storage Read API**, in Arrow format.
//!
//! [`create_session`] asks for a read session of the table (the id column and the declared columns
//! only, `data_format: ARROW`, up to `max_streams` streams) pinned to a snapshot time
//! (`table_modifiers.snapshot_time`), so every read of the session — and of a new session at the
//! same time — sees the same rows. [`read_streams`] reads the session's streams, at most
//! `parallelism` at once (streams are dealt round-robin to that many lanes, each lane reading its
//! streams one after another), decoding each `ReadRowsResponse` with arrow-ipc's
//! [`StreamDecoder`] straight into record batches — no row-by-row detour. Memory is one response
//! per lane plus the HTTP/2 windows, not the table.
//!
//! **Resuming** a stream skips its first `n` rows on the client: the reader asks for offset 0 and
//! drops the rows before `n`. (The `offset` of `ReadRowsRequest` would let BigQuery skip them, but
//! the emulator ignores it, and a skip that depends on the server would then deliver rows twice;
//! skipping here is exact on both, at the cost of re-reading the skipped rows once.)

use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::reader::StreamDecoder;
use futures::StreamExt;
use futures::stream::BoxStream;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::read_rows_response::{
    Rows, Schema as ResponseSchema,
};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::read_session::{
    Schema as SessionSchema, TableModifiers, TableReadOptions,
};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::{
    CreateReadSessionRequest, DataFormat, ReadRowsRequest, ReadSession,
};
use tonic::metadata::MetadataValue;

use super::client::{BigQueryClient, retryable_status};
use super::{bq_error, check_column, check_table};
use crate::{Error, Result};

/// A read session: its streams, the Arrow schema, and the snapshot it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The session's resource name.
    pub name: String,
    /// The streams' resource names.
    pub streams: Vec<String>,
    /// The serialised Arrow IPC schema message.
    pub schema: Vec<u8>,
    /// The snapshot time read, in microseconds since the Unix epoch.
    pub snapshot_micros: i64,
    /// When the session expires (microseconds since the Unix epoch; 0 when not said).
    pub expires_micros: i64,
}

/// Now in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn status_error(context: &str, status: tonic::Status) -> Error {
    bq_error(
        context,
        format!("{:?}: {}", status.code(), status.message()),
        retryable_status(status.code()),
    )
}

fn authorised<T>(message: T, token: &str, routing: &str, here: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if !token.is_empty() {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| Error::internal(format!("{here}: an access token header: {e}")))?;
        request.metadata_mut().insert("authorization", value);
    }
    // Google routes Storage API calls by this header.
    let value = MetadataValue::try_from(routing)
        .map_err(|e| Error::internal(format!("{here}: a routing header: {e}")))?;
    request
        .metadata_mut()
        .insert("x-goog-request-params", value);
    Ok(request)
}

/// Creates a read session of `project.dataset.table` reading `columns`, as of `snapshot_micros`
/// (now when `None`), with at most `max_streams` streams.
pub async fn create_session(
    client: &mut BigQueryClient,
    table: &str,
    columns: &[String],
    snapshot_micros: Option<i64>,
    max_streams: u32,
    here: &str,
) -> Result<Session> {
    check_table(table)?;
    for c in columns {
        check_column(c)?;
    }
    let project = client.project().to_string();
    let path = format!(
        "projects/{project}/datasets/{}/tables/{table}",
        client.dataset()
    );
    let snapshot = snapshot_micros.unwrap_or_else(now_micros);
    let session = ReadSession {
        data_format: DataFormat::Arrow as i32,
        table: path.clone(),
        table_modifiers: Some(TableModifiers {
            snapshot_time: Some(prost_types::Timestamp {
                seconds: snapshot.div_euclid(1_000_000),
                nanos: (snapshot.rem_euclid(1_000_000) * 1_000) as i32,
            }),
        }),
        read_options: Some(TableReadOptions {
            selected_fields: columns.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = CreateReadSessionRequest {
        parent: format!("projects/{project}"),
        read_session: Some(session),
        max_stream_count: i32::try_from(max_streams.max(1)).unwrap_or(i32::MAX),
        preferred_min_stream_count: 0,
    };
    let token = client.token(here).await?;
    let mut read = client.read_client(here).await?;
    let context = format!("{here}: creating a read session of {path}");
    let request = authorised(request, &token, &format!("read_session.table={path}"), here)?;
    let session = read
        .create_read_session(request)
        .await
        .map_err(|s| status_error(&context, s))?
        .into_inner();
    let schema = match session.schema {
        Some(SessionSchema::ArrowSchema(s)) => s.serialized_schema,
        _ => Vec::new(),
    };
    Ok(Session {
        name: session.name,
        streams: session.streams.into_iter().map(|s| s.name).collect(),
        schema,
        snapshot_micros: snapshot,
        expires_micros: session
            .expire_time
            .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000),
    })
}

/// A decoded batch of one stream.
#[derive(Debug)]
pub struct StreamBatch {
    /// The stream's index in the session.
    pub stream: usize,
    /// The rows.
    pub batch: RecordBatch,
}

/// Reads one stream from its start, dropping its first `skip` rows.
fn read_stream(
    client: BigQueryClient,
    index: usize,
    name: String,
    schema: Vec<u8>,
    skip: u64,
    here: String,
) -> BoxStream<'static, Result<StreamBatch>> {
    let start = async move {
        let mut client = client;
        let token = client.token(&here).await?;
        let mut read = client.read_client(&here).await?;
        let request = authorised(
            ReadRowsRequest {
                read_stream: name.clone(),
                offset: 0,
            },
            &token,
            &format!("read_stream={name}"),
            &here,
        )?;
        let context = format!("{here}: reading stream {name}");
        let responses = read
            .read_rows(request)
            .await
            .map_err(|s| status_error(&context, s))?
            .into_inner();
        let mut decoder = StreamDecoder::new();
        let has_schema = !schema.is_empty();
        if has_schema {
            let mut buffer = Buffer::from(without_eos(schema));
            decoder.decode(&mut buffer).map_err(|e| {
                bq_error(&context, format!("the session's Arrow schema: {e}"), false)
            })?;
        }
        Ok::<_, Error>((responses, decoder, context, has_schema))
    };
    futures::stream::once(start)
        .map(move |started| -> BoxStream<'static, Result<StreamBatch>> {
            let (responses, decoder, context, has_schema) = match started {
                Ok(s) => s,
                Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
            };
            futures::stream::unfold(
                (responses, (decoder, has_schema), context, 0u64, false),
                move |(mut responses, (mut decoder, mut has_schema), context, mut seen, done)| async move {
                    if done {
                        return None;
                    }
                    loop {
                        let response = match responses.message().await {
                            Ok(Some(r)) => r,
                            Ok(None) => return None,
                            Err(s) => {
                                let e = status_error(&context, s);
                                return Some((Err(e), (responses, (decoder, has_schema), context, seen, true)));
                            }
                        };
                        // The decoder registers a schema only when the next message arrives, so
                        // whether it has one is tracked here.
                        if let Some(ResponseSchema::ArrowSchema(s)) = &response.schema
                            && !has_schema
                        {
                            has_schema = true;
                            let mut buffer = Buffer::from(without_eos(s.serialized_schema.clone()));
                            if let Err(e) = decoder.decode(&mut buffer) {
                                let e = bq_error(&context, format!("an Arrow schema: {e}"), false);
                                return Some((Err(e), (responses, (decoder, has_schema), context, seen, true)));
                            }
                        }
                        let Some(Rows::ArrowRecordBatch(rows)) = response.rows else {
                            continue;
                        };
                        let mut buffer = Buffer::from(rows.serialized_record_batch);
                        let batch = match decoder.decode(&mut buffer) {
                            Ok(Some(batch)) => batch,
                            Ok(None) => continue,
                            Err(e) => {
                                let e = bq_error(&context, format!("an Arrow batch: {e}"), false);
                                return Some((Err(e), (responses, (decoder, has_schema), context, seen, true)));
                            }
                        };
                        let n = batch.num_rows() as u64;
                        let start = seen;
                        seen += n;
                        if seen <= skip {
                            continue;
                        }
                        let from = skip.saturating_sub(start) as usize;
                        let batch = batch.slice(from, batch.num_rows() - from);
                        return Some((
                            Ok(StreamBatch {
                                stream: index,
                                batch,
                            }),
                            (responses, (decoder, has_schema), context, seen, false),
                        ));
                    }
                },
            )
            .boxed()
        })
        .flatten()
        .boxed()
}

/// An IPC schema message without a trailing end-of-stream marker: some servers (the emulator)
/// serialise the schema as a whole IPC stream, whose EOS would end the decoder before any batch.
fn without_eos(mut bytes: Vec<u8>) -> Vec<u8> {
    const EOS: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
    while bytes.len() > EOS.len() && bytes.ends_with(&EOS) {
        bytes.truncate(bytes.len() - EOS.len());
    }
    bytes
}

/// Reads `session`'s streams, `skip[i]` rows of stream `i` dropped, at most `parallelism` at
/// once (see the module docs). Batches of different streams interleave.
pub fn read_streams(
    client: &BigQueryClient,
    session: &Session,
    skip: &[u64],
    parallelism: usize,
    here: &str,
) -> BoxStream<'static, Result<StreamBatch>> {
    let lanes = parallelism.clamp(1, session.streams.len().max(1));
    let mut per_lane: Vec<Vec<(usize, String)>> = vec![Vec::new(); lanes];
    for (i, name) in session.streams.iter().enumerate() {
        per_lane[i % lanes].push((i, name.clone()));
    }
    let lanes = per_lane.into_iter().map(|streams| {
        let client = client.clone();
        let schema = session.schema.clone();
        let skip = skip.to_vec();
        let here = here.to_string();
        futures::stream::iter(streams)
            .map(move |(i, name)| {
                read_stream(
                    client.clone(),
                    i,
                    name,
                    schema.clone(),
                    skip.get(i).copied().unwrap_or(0),
                    here.clone(),
                )
            })
            .flatten()
            .boxed()
    });
    futures::stream::select_all(lanes).boxed()
}
