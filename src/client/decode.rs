//! Reading the gateway's Flight streams: delta batches with their JSON `app_metadata`, and
//! data-less messages that carry metadata only.
//!
//! The gateway sends metadata-only messages (an empty checkpoint's cursor, DoExchange push
//! acknowledgements) as `FlightData` with no IPC header, which `arrow_flight`'s own decoder
//! refuses; this decoder yields them as messages without a batch. Schema messages update the
//! current schema (a stream may change table, and so schema, between batches); dictionary
//! batches are not part of the delta contract and are refused.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::{MessageHeader, root_as_message};
use arrow_flight::FlightData;
use arrow_flight::utils::flight_data_to_arrow_batch;
use futures::stream::BoxStream;
use futures::{StreamExt, future};
use serde_json::Value;

use crate::{Error, Result};

use super::transport::status_error;

/// One message of a gateway stream.
#[derive(Clone, Debug)]
pub(crate) struct Message {
    /// The delta batch, when the message carried one.
    pub batch: Option<RecordBatch>,
    /// The `app_metadata` JSON (`null` when there was none).
    pub metadata: Value,
}

/// Turns `FlightData` into [`Message`]s, tracking the stream's schema.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    schema: Option<SchemaRef>,
}

fn bad(message: impl std::fmt::Display) -> Error {
    Error::External {
        system: "gateway",
        message: format!("undecodable Flight data: {message}"),
        retryable: false,
        source: None,
    }
}

impl Decoder {
    /// Decodes one message; `None` for a schema message.
    pub fn decode(&mut self, data: FlightData) -> Result<Option<Message>> {
        let metadata = if data.app_metadata.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&data.app_metadata).map_err(|e| bad(format!("metadata: {e}")))?
        };
        if data.data_header.is_empty() {
            return Ok(Some(Message {
                batch: None,
                metadata,
            }));
        }
        let header = root_as_message(&data.data_header[..])
            .map_err(|e| bad(format!("IPC header: {e}")))?
            .header_type();
        match header {
            MessageHeader::NONE => Ok(Some(Message {
                batch: None,
                metadata,
            })),
            MessageHeader::Schema => {
                let schema = Schema::try_from(&data).map_err(bad)?;
                self.schema = Some(Arc::new(schema));
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = self
                    .schema
                    .clone()
                    .ok_or_else(|| bad("a record batch before any schema"))?;
                let batch =
                    flight_data_to_arrow_batch(&data, schema, &HashMap::new()).map_err(bad)?;
                Ok(Some(Message {
                    batch: Some(batch),
                    metadata,
                }))
            }
            other => Err(bad(format!(
                "unexpected {} message",
                other.variant_name().unwrap_or("unknown")
            ))),
        }
    }
}

/// The messages of a gateway response stream.
pub(crate) fn messages(
    inbound: tonic::codec::Streaming<FlightData>,
) -> BoxStream<'static, Result<Message>> {
    let mut decoder = Decoder::default();
    inbound
        .filter_map(move |item| {
            future::ready(match item {
                Ok(data) => decoder.decode(data).transpose(),
                Err(status) => Some(Err(status_error(&status))),
            })
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::ipc::writer::{
        CompressionContext, DictionaryTracker, IpcDataGenerator, IpcWriteOptions,
    };
    use arrow_flight::SchemaAsIpc;
    use bytes::Bytes;

    use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
    use crate::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
    use crate::kernel::hlc::HlcTimestamp;
    use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};

    #[test]
    fn batches_and_metadata_only_messages() {
        let table = TableSchema::new("todos", vec![ColumnDef::new("title", ColumnType::String)]);
        let delta = RowDelta::new(
            DeltaOp::Insert,
            "todos",
            "r1",
            "c1",
            vec![ColumnDelta::new("title", serde_json::json!("milk"))],
            HlcTimestamp(1 << 16),
        );
        let batch = deltas_to_batch(&table, std::slice::from_ref(&delta)).unwrap();
        let options = IpcWriteOptions::default();
        let schema: FlightData = SchemaAsIpc::new(&batch.schema(), &options).into();
        let (_, data) = IpcDataGenerator::default()
            .encode(
                &batch,
                &mut DictionaryTracker::new(false),
                &options,
                &mut CompressionContext::default(),
            )
            .unwrap();
        let data = FlightData::from(data).with_app_metadata(Bytes::from(r#"{"cursor":"7"}"#));
        let meta_only = FlightData::new().with_app_metadata(Bytes::from(r#"{"cursor":"9"}"#));

        let mut decoder = Decoder::default();
        assert!(decoder.decode(schema).unwrap().is_none());
        let m = decoder.decode(data).unwrap().unwrap();
        assert_eq!(m.metadata["cursor"], "7");
        assert_eq!(batch_to_deltas(&m.batch.unwrap()).unwrap(), vec![delta]);
        let m = decoder.decode(meta_only).unwrap().unwrap();
        assert!(m.batch.is_none());
        assert_eq!(m.metadata["cursor"], "9");
    }
}
