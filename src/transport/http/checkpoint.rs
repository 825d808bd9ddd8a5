//! The checkpoint stream: the rows a client may see now, for its first sync.
//!
//! The body of `GET /v1/sync/{gw}/checkpoint` is a sequence of frames, each a `u32` big-endian
//! byte length followed by that many bytes of a protobuf `SyncResponse{deltas, server_hlc,
//! has_more: false}` (reference §2.12); the `X-Checkpoint-Hlc` header carries the cursor to pull
//! from afterwards, which is also every frame's `server_hlc`. The deltas are `INSERT` snapshots
//! of every live row the caller's sync rules allow, taken from the gateway's merged state — so,
//! unlike the original (which served chunks written by its compactor and answered 404 until one
//! existed), a checkpoint is always available, and an empty state is an empty body.
//!
//! A frame holds at most [`MAX_FRAME_BYTES`] of encoded deltas (the original's 16 MiB chunk
//! size, counted exactly rather than estimated), so a client can bound what it buffers; a single
//! delta larger than that gets a frame of its own.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::kernel::delta::RowDelta;
use crate::kernel::proto::{repeated_entry_len, to_proto, v1};
use crate::{Error, Result};

/// The largest encoded size of one frame's `SyncResponse`, in bytes (16 MiB).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Rows per snapshot batch asked of the gateway; a batch is then split into frames by size.
pub const BATCH_ROWS: usize = 10_000;

/// The `Content-Type` of the checkpoint stream.
pub const CONTENT_TYPE: &str = "application/x-lakesync-checkpoint-stream";

/// The header carrying the checkpoint's cursor.
pub const HLC_HEADER: &str = "X-Checkpoint-Hlc";

/// Frames (`u32` BE length || `SyncResponse`) for `deltas`, each `SyncResponse` at most
/// `max_frame_bytes` long unless one delta alone is longer. No delta, no frame.
pub fn encode_frames(
    deltas: &[RowDelta],
    server_hlc: u64,
    max_frame_bytes: usize,
) -> Result<Bytes> {
    let mut out = BytesMut::new();
    let mut frame = v1::SyncResponse {
        deltas: Vec::new(),
        server_hlc,
        has_more: false,
    };
    // The frame's encoded size, kept as deltas are added (re-measuring the whole frame for each
    // delta would make a frame of n deltas cost n² delta encodings).
    let empty = frame.encoded_len();
    let mut size = empty;
    for delta in deltas {
        let msg = to_proto(delta);
        let framed = repeated_entry_len(&msg);
        if !frame.deltas.is_empty() && size + framed > max_frame_bytes {
            write_frame(&mut out, &frame)?;
            frame.deltas.clear();
            size = empty;
        }
        frame.deltas.push(msg);
        size += framed;
    }
    if !frame.deltas.is_empty() {
        write_frame(&mut out, &frame)?;
    }
    Ok(out.freeze())
}

fn write_frame(out: &mut BytesMut, frame: &v1::SyncResponse) -> Result<()> {
    let len = frame.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| {
        Error::internal(format!(
            "a checkpoint frame of {len} bytes does not fit a u32 length"
        ))
    })?;
    out.reserve(4 + len);
    out.put_u32(prefix);
    frame
        .encode(out)
        .map_err(|e| Error::internal(format!("encoding a checkpoint frame: {e}")))
}

/// Splits a checkpoint body into its frames' `SyncResponse` bytes (for tests and clients).
pub fn split_frames(mut body: &[u8]) -> Result<Vec<&[u8]>> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        let Some((head, rest)) = body.split_first_chunk::<4>() else {
            return Err(Error::invalid("checkpoint", "a frame length is cut short"));
        };
        let len = u32::from_be_bytes(*head) as usize;
        if rest.len() < len {
            return Err(Error::invalid(
                "checkpoint",
                format!("a frame says {len} bytes but {} remain", rest.len()),
            ));
        }
        let (frame, rest) = rest.split_at(len);
        frames.push(frame);
        body = rest;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta::{ColumnDelta, DeltaOp};
    use crate::kernel::hlc::HlcTimestamp;
    use crate::kernel::proto::decode_sync_response;
    use serde_json::json;

    fn delta(i: usize, size: usize) -> RowDelta {
        RowDelta::new(
            DeltaOp::Insert,
            "todos",
            format!("row-{i}"),
            "c",
            vec![ColumnDelta::new("title", json!("x".repeat(size)))],
            HlcTimestamp(1 << 16),
        )
    }

    #[test]
    fn frames_split_by_size_and_round_trip() {
        let deltas: Vec<RowDelta> = (0..10).map(|i| delta(i, 100)).collect();
        let one = encode_frames(&deltas, 42, MAX_FRAME_BYTES).unwrap();
        let frames = split_frames(&one).unwrap();
        assert_eq!(frames.len(), 1);
        let (back, hlc, more) = decode_sync_response(frames[0]).unwrap();
        assert_eq!((back, hlc, more), (deltas.clone(), HlcTimestamp(42), false));

        // Small frames: every frame stays under the limit and nothing is lost or reordered.
        let limit = 700;
        let many = encode_frames(&deltas, 42, limit).unwrap();
        let frames = split_frames(&many).unwrap();
        assert!(frames.len() > 1);
        let mut all = Vec::new();
        for f in frames {
            assert!(f.len() <= limit, "{} > {limit}", f.len());
            all.extend(decode_sync_response(f).unwrap().0);
        }
        assert_eq!(all, deltas);

        // A delta larger than the limit still travels, alone.
        let big = vec![delta(0, 2000), delta(1, 10)];
        let frames_bytes = encode_frames(&big, 1, 500).unwrap();
        assert_eq!(split_frames(&frames_bytes).unwrap().len(), 2);

        assert!(encode_frames(&[], 1, 10).unwrap().is_empty());
        assert!(split_frames(&[0, 0, 0, 9, 1]).is_err());
    }
}
