//! Writing the delta log with binary `COPY … FROM STDIN`: the deltas of a commit are encoded in
//! Postgres's binary COPY format (no text parsing on either side) into a per-connection
//! temporary staging table, then moved into `lakesync_deltas` with one
//! `INSERT … SELECT … ON CONFLICT (delta_id) DO NOTHING` (COPY itself cannot skip a delta that is
//! already logged). The staging table is `ON COMMIT DELETE ROWS`, so it is empty outside a commit.
//!
//! Field encodings (each a 32-bit big-endian length, then the value in the type's binary send
//! format): `bytea` the bytes, `text` UTF-8, `int8`/`int2` big-endian, `jsonb` a version byte
//! (1) followed by the JSON text.

use sqlx::postgres::PgConnection;

use super::pg_error;
use crate::kernel::delta::RowDelta;
use crate::{Error, Result};

/// The binary COPY signature, flags and header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Bytes sent per COPY message.
const SEND_CHUNK: usize = 1 << 20;

/// Appends one field: its length, then `value`.
fn field(out: &mut Vec<u8>, value: &[u8]) -> Result<()> {
    let len = i32::try_from(value.len())
        .map_err(|_| Error::invalid("delta log", "a field longer than 2 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Appends one delta as a log row: `delta_id, table, row_id, client_id, hlc, op, columns`.
fn encode_delta(out: &mut Vec<u8>, d: &RowDelta, json: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&7i16.to_be_bytes());
    field(out, d.delta_id.as_bytes())?;
    field(out, d.table.as_bytes())?;
    field(out, d.row_id.as_bytes())?;
    field(out, d.client_id.as_bytes())?;
    // Bit-cast: the HLC itself for every HLC below 2^63.
    field(out, &(d.hlc.0 as i64).to_be_bytes())?;
    field(out, &i16::from(d.op.code()).to_be_bytes())?;
    json.clear();
    json.push(1);
    serde_json::to_writer(&mut *json, &d.columns)
        .map_err(|e| Error::internal(format!("serialising delta columns: {e}")))?;
    field(out, json)
}

/// Logs `deltas` into `log` (a qualified table name) through the staging table; returns (newly
/// logged, bytes sent).
pub(crate) async fn copy_deltas(
    conn: &mut PgConnection,
    log: &str,
    deltas: &[&RowDelta],
    here: &str,
) -> Result<(u64, u64)> {
    if deltas.is_empty() {
        return Ok((0, 0));
    }
    sqlx::query(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS lakesync_log_stage \
         (LIKE {log} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ))
    .execute(&mut *conn)
    .await
    .map_err(|e| pg_error(format!("{here}: creating the staging table"), e))?;
    let mut copy = conn
        .copy_in_raw(
            "COPY lakesync_log_stage (delta_id, \"table\", row_id, client_id, hlc, op, columns) \
             FROM STDIN (FORMAT binary)",
        )
        .await
        .map_err(|e| {
            pg_error(
                format!("{here}: starting COPY of {} deltas", deltas.len()),
                e,
            )
        })?;
    let mut buf = Vec::with_capacity(SEND_CHUNK + 4096);
    buf.extend_from_slice(HEADER);
    let (mut json, mut sent) = (Vec::new(), 0u64);
    for d in deltas {
        encode_delta(&mut buf, d, &mut json)?;
        if buf.len() >= SEND_CHUNK {
            sent += buf.len() as u64;
            copy.send(std::mem::take(&mut buf))
                .await
                .map_err(|e| pg_error(format!("{here}: sending deltas"), e))?;
            buf.reserve(SEND_CHUNK + 4096);
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    sent += buf.len() as u64;
    copy.send(buf)
        .await
        .map_err(|e| pg_error(format!("{here}: sending deltas"), e))?;
    copy.finish()
        .await
        .map_err(|e| pg_error(format!("{here}: finishing COPY"), e))?;
    let done = sqlx::query(&format!(
        "INSERT INTO {log} SELECT * FROM lakesync_log_stage ON CONFLICT (delta_id) DO NOTHING"
    ))
    .execute(&mut *conn)
    .await
    .map_err(|e| pg_error(format!("{here}: logging {} deltas", deltas.len()), e))?;
    Ok((done.rows_affected(), sent))
}
