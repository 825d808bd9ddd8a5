//! The protobuf form of deltas: the original's `lakesync.v1` messages (`proto/lakesync/v1/`).
//!
//! [`v1`] holds the generated message types. A column value travels as the UTF-8 bytes of its
//! JSON text as JavaScript's `JSON.stringify` writes it (see [`crate::json::write_js`]); the HLC
//! as `fixed64`; the deltaId as its 64-character hex text. Decoding rejects `DELTA_OP_UNSPECIFIED`
//! and values that are not JSON, naming the delta.

use bytes::Bytes;
use prost::Message;

use crate::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::error::{Error, Result};
use crate::hlc::HlcTimestamp;
use crate::json::write_js;

/// Generated `lakesync.v1` messages.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/lakesync.v1.rs"));
}

impl From<DeltaOp> for v1::DeltaOp {
    fn from(op: DeltaOp) -> Self {
        match op {
            DeltaOp::Insert => Self::Insert,
            DeltaOp::Update => Self::Update,
            DeltaOp::Delete => Self::Delete,
        }
    }
}

/// The bytes `msg` adds to a `SyncResponse` (or any message) as an element of its repeated
/// `deltas` field: tag, length prefix and body. Summing these over a frame's deltas gives its
/// size without re-encoding the frame.
pub fn repeated_entry_len(msg: &v1::RowDelta) -> usize {
    let len = msg.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// The wire message for a delta.
pub fn to_proto(delta: &RowDelta) -> v1::RowDelta {
    let mut text = String::new();
    v1::RowDelta {
        op: v1::DeltaOp::from(delta.op) as i32,
        table: delta.table.clone(),
        row_id: delta.row_id.clone(),
        columns: delta
            .columns
            .iter()
            .map(|c| {
                text.clear();
                write_js(&mut text, &c.value);
                v1::ColumnDelta {
                    column: c.column.clone(),
                    value: Bytes::copy_from_slice(text.as_bytes()),
                }
            })
            .collect(),
        hlc: delta.hlc.0,
        client_id: delta.client_id.clone(),
        delta_id: delta.delta_id.to_string(),
    }
}

/// The delta a wire message carries.
pub fn from_proto(msg: &v1::RowDelta) -> Result<RowDelta> {
    let op = match v1::DeltaOp::try_from(msg.op) {
        Ok(v1::DeltaOp::Insert) => DeltaOp::Insert,
        Ok(v1::DeltaOp::Update) => DeltaOp::Update,
        Ok(v1::DeltaOp::Delete) => DeltaOp::Delete,
        _ => {
            return Err(Error::invalid(
                "delta",
                format!(
                    "Unknown or unspecified DeltaOp: {} (row {:?})",
                    msg.op, msg.row_id
                ),
            ));
        }
    };
    let columns = msg
        .columns
        .iter()
        .map(|c| {
            let value = serde_json::from_slice(&c.value).map_err(|e| {
                Error::invalid(
                    "delta",
                    format!(
                        "column {:?} of row {:?} is not JSON: {e}",
                        c.column, msg.row_id
                    ),
                )
            })?;
            Ok(ColumnDelta::new(c.column.clone(), value))
        })
        .collect::<Result<_>>()?;
    Ok(RowDelta {
        op,
        table: msg.table.clone(),
        row_id: msg.row_id.clone(),
        client_id: msg.client_id.clone(),
        columns,
        hlc: HlcTimestamp(msg.hlc),
        delta_id: msg.delta_id.parse()?,
    })
}

/// Encodes a `SyncResponse` carrying `deltas`.
pub fn encode_sync_response(
    deltas: &[RowDelta],
    server_hlc: HlcTimestamp,
    has_more: bool,
) -> Bytes {
    v1::SyncResponse {
        deltas: deltas.iter().map(to_proto).collect(),
        server_hlc: server_hlc.0,
        has_more,
    }
    .encode_to_vec()
    .into()
}

/// Decodes a `SyncResponse` into its deltas, server HLC and `has_more` flag.
pub fn decode_sync_response(bytes: &[u8]) -> Result<(Vec<RowDelta>, HlcTimestamp, bool)> {
    let msg = v1::SyncResponse::decode(bytes).map_err(|e| Error::invalid("SyncResponse", e))?;
    let deltas = msg.deltas.iter().map(from_proto).collect::<Result<_>>()?;
    Ok((deltas, HlcTimestamp(msg.server_hlc), msg.has_more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_stringify_text() {
        let value: serde_json::Value =
            serde_json::from_str(r#"{"b":1.0,"10":-0.0,"a":[1e21,"x\u0001"]}"#).unwrap();
        let d = RowDelta::new(
            DeltaOp::Insert,
            "t",
            "r",
            "c",
            vec![ColumnDelta::new("v", value)],
            HlcTimestamp(9),
        );
        let msg = to_proto(&d);
        assert_eq!(
            &msg.columns[0].value[..],
            br#"{"10":0,"b":1,"a":[1e+21,"x\u0001"]}"#
        );
        assert_eq!(msg.op, 1);
        assert_eq!(from_proto(&msg).unwrap().delta_id, d.delta_id);
    }

    #[test]
    fn extremes_and_bad_input() {
        let d = RowDelta::new(
            DeltaOp::Delete,
            "t",
            "r",
            "c",
            vec![],
            HlcTimestamp(u64::MAX),
        );
        let bytes = encode_sync_response(std::slice::from_ref(&d), HlcTimestamp(u64::MAX), true);
        let (back, server, more) = decode_sync_response(&bytes).unwrap();
        assert_eq!(
            (back, server, more),
            (vec![d.clone()], HlcTimestamp(u64::MAX), true)
        );
        // Same payload, same bytes.
        assert_eq!(
            bytes,
            encode_sync_response(std::slice::from_ref(&d), HlcTimestamp(u64::MAX), true)
        );
        let mut msg = to_proto(&d);
        msg.op = 0;
        assert!(
            from_proto(&msg)
                .unwrap_err()
                .to_string()
                .contains("Unknown or unspecified DeltaOp: 0")
        );
        let mut msg = to_proto(&RowDelta::new(
            DeltaOp::Insert,
            "t",
            "r",
            "c",
            vec![ColumnDelta::new("a", json!(1))],
            HlcTimestamp(1),
        ));
        msg.columns[0].value = Bytes::from_static(b"{nope");
        assert!(
            from_proto(&msg)
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
        assert!(decode_sync_response(&[0xff, 0xff]).is_err());
        // Empty bytes decode to the defaults.
        assert_eq!(
            decode_sync_response(&[]).unwrap(),
            (vec![], HlcTimestamp(0), false)
        );
    }
}
