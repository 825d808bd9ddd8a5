//! Writing the delta log with binary `COPY … FROM STDIN`: the deltas of a commit are encoded in
//! Postgres's binary COPY format (no text parsing on either side) and copied straight into
//! `lakesync_deltas` under a savepoint. COPY cannot skip a delta that is already logged, so when
//! one is (a replayed epoch, a retried push) the savepoint is rolled back and the same stream
//! goes into a per-connection temporary staging table instead, moved into the log with one
//! `INSERT … SELECT … ON CONFLICT (delta_id) DO NOTHING`. The staging table is emptied after use
//! and is `ON COMMIT DELETE ROWS`.
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

/// `deltas` encoded as one binary COPY stream, cut into messages of about [`SEND_CHUNK`].
fn encode(deltas: &[&RowDelta]) -> Result<Vec<Vec<u8>>> {
    let mut chunks = Vec::new();
    let mut buf = Vec::with_capacity(SEND_CHUNK + 4096);
    buf.extend_from_slice(HEADER);
    let mut json = Vec::new();
    for d in deltas {
        encode_delta(&mut buf, d, &mut json)?;
        if buf.len() >= SEND_CHUNK {
            chunks.push(std::mem::replace(
                &mut buf,
                Vec::with_capacity(SEND_CHUNK + 4096),
            ));
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    chunks.push(buf);
    Ok(chunks)
}

/// Runs `COPY <target> FROM STDIN (FORMAT binary)` with `chunks`; returns the rows copied.
async fn copy_into(
    conn: &mut PgConnection,
    target: &str,
    chunks: &[Vec<u8>],
) -> std::result::Result<u64, sqlx::Error> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {target} (delta_id, \"table\", row_id, client_id, hlc, op, columns) \
             FROM STDIN (FORMAT binary)"
        ))
        .await?;
    for chunk in chunks {
        copy.send(chunk.as_slice()).await?;
    }
    copy.finish().await
}

/// Whether `e` is a unique violation (a delta already logged).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "23505")
}

/// Logs `deltas` into `log` (a qualified table name); returns (newly logged, bytes sent).
///
/// The common case — none of them logged before — is one `COPY` straight into the log, under a
/// savepoint. If that hits a delta already logged (a replay, a retried push), the savepoint is
/// rolled back and the deltas go through the staging table, skipping those already there.
pub(crate) async fn copy_deltas(
    conn: &mut PgConnection,
    log: &str,
    deltas: &[&RowDelta],
    here: &str,
) -> Result<(u64, u64)> {
    if deltas.is_empty() {
        return Ok((0, 0));
    }
    let chunks = encode(deltas)?;
    let sent: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    sqlx::query("SAVEPOINT lakesync_copy")
        .execute(&mut *conn)
        .await
        .map_err(|e| pg_error(format!("{here}: starting COPY"), e))?;
    match copy_into(conn, log, &chunks).await {
        Ok(copied) => {
            sqlx::query("RELEASE SAVEPOINT lakesync_copy")
                .execute(&mut *conn)
                .await
                .map_err(|e| pg_error(format!("{here}: finishing COPY"), e))?;
            return Ok((copied, sent));
        }
        Err(e) if is_unique_violation(&e) => {
            tracing::debug!("{here}: some deltas were logged before; copying through staging");
            sqlx::query("ROLLBACK TO SAVEPOINT lakesync_copy")
                .execute(&mut *conn)
                .await
                .map_err(|e| pg_error(format!("{here}: rolling back COPY"), e))?;
        }
        Err(e) => {
            return Err(pg_error(
                format!("{here}: COPY of {} deltas", deltas.len()),
                e,
            ));
        }
    }
    sqlx::query(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS lakesync_log_stage \
         (LIKE {log} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ))
    .execute(&mut *conn)
    .await
    .map_err(|e| pg_error(format!("{here}: creating the staging table"), e))?;
    copy_into(conn, "lakesync_log_stage", &chunks)
        .await
        .map_err(|e| pg_error(format!("{here}: COPY of {} deltas", deltas.len()), e))?;
    let done = sqlx::query(&format!(
        "INSERT INTO {log} SELECT * FROM lakesync_log_stage ON CONFLICT (delta_id) DO NOTHING"
    ))
    .execute(&mut *conn)
    .await
    .map_err(|e| pg_error(format!("{here}: logging {} deltas", deltas.len()), e))?;
    sqlx::query("TRUNCATE lakesync_log_stage")
        .execute(&mut *conn)
        .await
        .map_err(|e| pg_error(format!("{here}: emptying the staging table"), e))?;
    Ok((done.rows_affected(), sent))
}
