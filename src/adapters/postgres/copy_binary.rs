//! A decoder for Postgres's binary `COPY … TO STDOUT (FORMAT binary)` stream, straight into
//! Arrow arrays: no text parsing and no per-value JSON.
//!
//! The stream is an 11-byte signature, a 32-bit flags word and a header extension, then one
//! tuple per row (a 16-bit field count, then per field a 32-bit length, `-1` for NULL, and the
//! value in the type's binary send format), ended by a field count of `-1`. The reads this
//! decoder serves select the row id as `text` first and then each data column cast to the
//! binary type of its LakeSync type ([`super::types::cast_for`]): `text` (UTF-8 bytes),
//! `float8` and `int8` (big-endian), `bool` (one byte), `timestamptz` (big-endian microseconds
//! since 2000-01-01). Chunks may split tuples anywhere; the decoder keeps the unfinished tail.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringArray, StringBuilder,
    TimestampMicrosecondBuilder,
};

use super::data_error;
use crate::Result;
use crate::kernel::schema::{ColumnDef, ColumnType};

/// The binary COPY signature.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to Postgres's epoch, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One column's builder.
enum Column {
    Text(StringBuilder),
    Float(Float64Builder),
    Int(Int64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl Column {
    fn new(column_type: ColumnType) -> Self {
        match column_type {
            ColumnType::String | ColumnType::Json | ColumnType::Null => {
                Self::Text(StringBuilder::new())
            }
            ColumnType::Number => Self::Float(Float64Builder::new()),
            ColumnType::Integer => Self::Int(Int64Builder::new()),
            ColumnType::Boolean => Self::Bool(BooleanBuilder::new()),
            ColumnType::Timestamp => Self::Timestamp(
                TimestampMicrosecondBuilder::new().with_data_type(column_type.arrow_type()),
            ),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Text(b) => b.append_null(),
            Self::Float(b) => b.append_null(),
            Self::Int(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
        }
    }

    /// Appends one value in its binary send format; the error says what was wrong.
    fn append(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        let fixed = |n: usize| -> std::result::Result<[u8; 8], String> {
            if bytes.len() != n {
                return Err(format!("a {n}-byte value has {} bytes", bytes.len()));
            }
            let mut out = [0u8; 8];
            out[..n].copy_from_slice(bytes);
            Ok(out)
        };
        match self {
            Self::Text(b) => b.append_value(
                std::str::from_utf8(bytes).map_err(|e| format!("text is not UTF-8: {e}"))?,
            ),
            Self::Float(b) => {
                let v = f64::from_be_bytes(fixed(8)?);
                if !v.is_finite() {
                    return Err(format!("{v} is not a finite number"));
                }
                b.append_value(v);
            }
            Self::Int(b) => b.append_value(i64::from_be_bytes(fixed(8)?)),
            Self::Bool(b) => b.append_value(fixed(1)?[0] != 0),
            Self::Timestamp(b) => {
                let pg = i64::from_be_bytes(fixed(8)?);
                if pg == i64::MAX || pg == i64::MIN {
                    return Err("an infinite timestamp cannot be synced".to_string());
                }
                let micros = pg
                    .checked_add(PG_EPOCH_MICROS)
                    .ok_or_else(|| "timestamp out of range".to_string())?;
                b.append_value(micros);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Text(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// Where the decoder is in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Tuples,
    Done,
}

/// Decodes a binary COPY stream of `(row id text, data columns…)` into Arrow arrays.
pub struct CopyDecoder {
    names: Vec<String>,
    columns: Vec<Column>,
    row_ids: StringBuilder,
    rows: usize,
    pending: Vec<u8>,
    offset: usize,
    stage: Stage,
    here: String,
}

impl std::fmt::Debug for CopyDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyDecoder")
            .field("here", &self.here)
            .field("rows", &self.rows)
            .field("stage", &self.stage)
            .finish()
    }
}

impl CopyDecoder {
    /// A decoder for rows of `columns` (after the row id); `here` names the read in errors.
    pub fn new(columns: &[ColumnDef], here: impl Into<String>) -> Self {
        Self {
            names: columns.iter().map(|c| c.name.clone()).collect(),
            columns: columns.iter().map(|c| Column::new(c.column_type)).collect(),
            row_ids: StringBuilder::new(),
            rows: 0,
            pending: Vec::new(),
            offset: 0,
            stage: Stage::Header,
            here: here.into(),
        }
    }

    /// Adds bytes received from the server.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.offset > 0 && self.offset * 2 >= self.pending.len() {
            self.pending.drain(..self.offset);
            self.offset = 0;
        }
        self.pending.extend_from_slice(chunk);
    }

    /// Decodes complete tuples from what was fed until `limit` rows are built; returns the
    /// number of rows built so far.
    pub fn decode(&mut self, limit: usize) -> Result<usize> {
        if self.stage == Stage::Header {
            let buf = &self.pending[self.offset..];
            if buf.len() < 19 {
                return Ok(self.rows);
            }
            if &buf[..11] != SIGNATURE {
                return Err(data_error(
                    &self.here,
                    "the COPY stream has no binary signature",
                ));
            }
            let ext = be_i32(&buf[15..19]);
            let Ok(ext) = usize::try_from(ext) else {
                return Err(data_error(&self.here, "bad COPY header extension length"));
            };
            if buf.len() < 19 + ext {
                return Ok(self.rows);
            }
            self.offset += 19 + ext;
            self.stage = Stage::Tuples;
        }
        while self.stage == Stage::Tuples && self.rows < limit {
            let Some(used) = self.tuple()? else {
                break;
            };
            self.offset += used;
        }
        Ok(self.rows)
    }

    /// Decodes one tuple at the read offset if it is complete: the bytes it used.
    fn tuple(&mut self) -> Result<Option<usize>> {
        let buf = &self.pending[self.offset..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([buf[0], buf[1]]);
        if fields == -1 {
            self.stage = Stage::Done;
            return Ok(Some(2));
        }
        let expected = self.columns.len() + 1;
        if usize::try_from(fields).ok() != Some(expected) {
            return Err(data_error(
                &self.here,
                format!("a COPY row has {fields} fields, expected {expected}"),
            ));
        }
        // Find every field's extent first, so a partial tuple appends nothing.
        let mut spans: [(usize, i32); 64] = [(0, 0); 64];
        let mut heap: Vec<(usize, i32)> = Vec::new();
        let mut at = 2;
        for i in 0..expected {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let len = be_i32(&buf[at..at + 4]);
            at += 4;
            let span = (at, len);
            if i < spans.len() {
                spans[i] = span;
            } else {
                heap.push(span);
            }
            if len > 0 {
                at += len as usize;
            } else if len < -1 {
                return Err(data_error(&self.here, format!("bad field length {len}")));
            }
            if buf.len() < at {
                return Ok(None);
            }
        }
        let span = |i: usize| {
            if i < spans.len() {
                spans[i]
            } else {
                heap[i - spans.len()]
            }
        };
        let (start, len) = span(0);
        if len < 0 {
            return Err(data_error(&self.here, "a row has a NULL row id"));
        }
        let row_id = std::str::from_utf8(&buf[start..start + len as usize])
            .map_err(|e| data_error(&self.here, format!("row id is not UTF-8: {e}")))?;
        self.row_ids.append_value(row_id);
        for (c, column) in self.columns.iter_mut().enumerate() {
            let (start, len) = span(c + 1);
            if len < 0 {
                column.append_null();
            } else if let Err(message) = column.append(&buf[start..start + len as usize]) {
                return Err(data_error(
                    &self.here,
                    format!("row {row_id:?} column {:?}: {message}", self.names[c]),
                ));
            }
        }
        self.rows += 1;
        Ok(Some(at))
    }

    /// Rows built and not yet taken.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the end-of-data trailer was read.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Whether bytes were fed that are not yet decoded.
    pub fn has_pending(&self) -> bool {
        self.offset < self.pending.len()
    }

    /// Takes the rows built so far: the row ids and one array per data column.
    pub fn take(&mut self) -> (StringArray, Vec<ArrayRef>) {
        self.rows = 0;
        (
            self.row_ids.finish(),
            self.columns.iter_mut().map(Column::finish).collect(),
        )
    }
}

fn be_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    #[test]
    fn decodes_rows_split_across_chunks() {
        let columns = vec![
            ColumnDef::new("name", ColumnType::String),
            ColumnDef::new("n", ColumnType::Integer),
            ColumnDef::new("x", ColumnType::Number),
            ColumnDef::new("ok", ColumnType::Boolean),
            ColumnDef::new("at", ColumnType::Timestamp),
        ];
        let mut stream = SIGNATURE.to_vec();
        stream.extend_from_slice(&0i32.to_be_bytes());
        stream.extend_from_slice(&0i32.to_be_bytes());
        for (id, name) in [("1", Some("ada")), ("2", None)] {
            stream.extend_from_slice(&6i16.to_be_bytes());
            field(&mut stream, Some(id.as_bytes()));
            field(&mut stream, name.map(str::as_bytes));
            field(&mut stream, Some(&7i64.to_be_bytes()));
            field(&mut stream, Some(&1.5f64.to_be_bytes()));
            field(&mut stream, Some(&[1]));
            field(&mut stream, Some(&0i64.to_be_bytes()));
        }
        stream.extend_from_slice(&(-1i16).to_be_bytes());

        let mut decoder = CopyDecoder::new(&columns, "test");
        for chunk in stream.chunks(5) {
            decoder.feed(chunk);
            decoder.decode(usize::MAX).unwrap();
        }
        assert!(decoder.is_done());
        let (ids, arrays) = decoder.take();
        assert_eq!(ids.value(0), "1");
        assert_eq!(ids.value(1), "2");
        assert_eq!(arrays[0].as_string::<i32>().value(0), "ada");
        assert!(arrays[0].is_null(1));
        assert_eq!(
            arrays[4]
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            PG_EPOCH_MICROS
        );
    }

    #[test]
    fn stops_at_the_limit_and_resumes() {
        let columns = vec![ColumnDef::new("n", ColumnType::Integer)];
        let mut stream = SIGNATURE.to_vec();
        stream.extend_from_slice(&[0; 8]);
        for i in 0..5i64 {
            stream.extend_from_slice(&2i16.to_be_bytes());
            field(&mut stream, Some(i.to_string().as_bytes()));
            field(&mut stream, Some(&i.to_be_bytes()));
        }
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        let mut decoder = CopyDecoder::new(&columns, "test");
        decoder.feed(&stream);
        assert_eq!(decoder.decode(2).unwrap(), 2);
        assert_eq!(decoder.take().0.len(), 2);
        assert_eq!(decoder.decode(2).unwrap(), 2);
        decoder.take();
        assert_eq!(decoder.decode(2).unwrap(), 1);
        assert!(decoder.is_done());
    }
}
