//! JSON-lines file source, for ad-hoc input.
//!
//! Two line formats:
//! - **rows**: each line is a JSON object, a row image keyed by `id_column` (default `id`). It
//!   becomes an INSERT delta setting every other key it has (keys must be columns of the table).
//!   A line whose `_deleted` is `true` becomes a DELETE of that row. Under last-writer-wins an
//!   INSERT of a whole row and an UPDATE of its columns merge the same way, so a later line for
//!   the same id overrides the columns it carries.
//! - **deltas**: each line is a delta in the original's JSON shape (`op`, `table`, `rowId`,
//!   `clientId`, `columns`, `hlc` as a decimal string, `deltaId`); its deltaId must match its
//!   content.
//!
//! HLCs of generated deltas are deterministic, so a replay from a position yields the very same
//! deltas (same deltaIds): from `time_column` when configured (RFC 3339 text or epoch
//! milliseconds; the counter is the line number modulo 65536), else from the time the source
//! first started reading the file (kept in the position), advancing one logical tick per line.
//!
//! The position is `{"offset": <bytes consumed>, "line": <lines consumed>, "base_ms": …}`. Only
//! complete lines are consumed while following a growing file; in `Once` mode a final line
//! without a newline is read too. A file that shrinks below the position is an error.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
use crate::kernel::delta_batch::{deltas_to_batch, parse_timestamp};
use crate::kernel::hlc::HlcTimestamp;
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result, fs_error};

/// Lines per emitted batch.
const BATCH_LINES: usize = 8192;

/// How lines are interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonlFormat {
    /// Row images keyed by `id_column`.
    Rows {
        /// The key that holds the row id.
        id_column: String,
    },
    /// Deltas in the original's JSON shape.
    Deltas,
}

/// A JSON-lines source.
#[derive(Debug, Clone)]
pub struct JsonlSource {
    name: String,
    path: PathBuf,
    table: TableRef,
    format: JsonlFormat,
    client_id: String,
    time_column: Option<String>,
    /// The base time of generated HLCs for a read from the beginning.
    base_ms: u64,
}

impl JsonlSource {
    /// A source reading `path` into `table`. `client_id` is the writer of generated deltas.
    pub fn new(
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        table: TableRef,
        format: JsonlFormat,
        client_id: impl Into<String>,
        time_column: Option<String>,
    ) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            table,
            format,
            client_id: client_id.into(),
            time_column,
            base_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

/// Where a JSON-lines source stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    offset: u64,
    line: u64,
    base_ms: u64,
}

impl Cursor {
    fn from_position(position: Option<&Position>, base_ms: u64) -> Result<Self> {
        let Some(Position(v)) = position else {
            return Ok(Self {
                offset: 0,
                line: 0,
                base_ms,
            });
        };
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::invalid("jsonl position", format!("{v} has no {k}")))
        };
        Ok(Self {
            offset: field("offset")?,
            line: field("line")?,
            base_ms: field("base_ms")?,
        })
    }

    fn position(self) -> Position {
        Position(json!({"offset": self.offset, "line": self.line, "base_ms": self.base_ms}))
    }
}

#[async_trait]
impl Source for JsonlSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        Ok(vec![self.table.clone()])
    }

    fn start_position(&self) -> Option<Position> {
        Some(
            Cursor {
                offset: 0,
                line: 0,
                base_ms: self.base_ms,
            }
            .position(),
        )
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        let cursor = Cursor::from_position(resume.as_ref(), self.base_ms)?;
        let until = match &mode {
            ReadMode::Replay { until } => {
                Some(Cursor::from_position(Some(until), self.base_ms)?.offset)
            }
            _ => None,
        };
        let reader = LineReader::open(&self.path, cursor.offset)?;
        let state = (self.clone(), reader, cursor, mode);
        let stream = futures::stream::unfold(Some(state), move |state| async move {
            let (source, mut reader, cursor, mode) = state?;
            loop {
                let at_end_ok = !matches!(mode, ReadMode::Follow { .. });
                let max_bytes = until.map_or(u64::MAX, |u| u.saturating_sub(cursor.offset));
                if max_bytes == 0 {
                    return None;
                }
                match reader.read_lines(BATCH_LINES, at_end_ok, max_bytes) {
                    Err(e) => return Some((Err(e), None)),
                    Ok(lines) if lines.is_empty() => match mode {
                        ReadMode::Once | ReadMode::Replay { .. } => return None,
                        ReadMode::Follow { poll_interval } => {
                            tokio::time::sleep(poll_interval).await;
                            if let Err(e) = reader.check_not_truncated() {
                                return Some((Err(e), None));
                            }
                        }
                    },
                    Ok(lines) => {
                        let batch = source.to_batch(&lines, cursor);
                        let consumed: u64 = lines.iter().map(|l| l.bytes).sum();
                        let next = Cursor {
                            offset: cursor.offset + consumed,
                            line: cursor.line + lines.len() as u64,
                            ..cursor
                        };
                        let item = batch.map(|batch| SourceBatch {
                            table: source.table.clone(),
                            batch,
                            position: next.position(),
                        });
                        return Some((item, Some((source, reader, next, mode))));
                    }
                }
            }
        });
        Ok(stream.boxed())
    }
}

/// One line read from the file.
struct Line {
    text: String,
    /// Bytes consumed, including the newline.
    bytes: u64,
}

/// Reads whole lines from a file, resuming at a byte offset.
struct LineReader {
    path: PathBuf,
    reader: BufReader<std::fs::File>,
    offset: u64,
}

impl LineReader {
    fn open(path: &Path, offset: u64) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| {
            Error::invalid(
                "jsonl source",
                format!("cannot open {}: {e}", path.display()),
            )
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            return Err(Error::invalid(
                "jsonl source",
                format!(
                    "{} is {len} bytes, shorter than the resume position {offset}: it was truncated or replaced",
                    path.display()
                ),
            ));
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| fs_error(path, e))?;
        Ok(Self {
            path: path.into(),
            reader: BufReader::new(file),
            offset,
        })
    }

    fn check_not_truncated(&self) -> Result<()> {
        let len = std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| fs_error(&self.path, e))?;
        if len < self.offset {
            return Err(Error::invalid(
                "jsonl source",
                format!(
                    "{} was truncated below the read position",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Up to `max` complete lines within `max_bytes`; a last line without newline only when
    /// `take_partial`.
    fn read_lines(&mut self, max: usize, take_partial: bool, max_bytes: u64) -> Result<Vec<Line>> {
        let mut lines = Vec::new();
        let mut taken = 0u64;
        while lines.len() < max && taken < max_bytes {
            let mut buf = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| fs_error(&self.path, e))?;
            if n == 0 {
                break;
            }
            if buf.last() != Some(&b'\n') && !take_partial {
                // An incomplete last line: give it back and wait for the rest.
                self.reader
                    .seek(SeekFrom::Start(self.offset))
                    .map_err(|e| fs_error(&self.path, e))?;
                break;
            }
            self.offset += n as u64;
            taken += n as u64;
            let text = String::from_utf8(buf).map_err(|_| {
                Error::invalid(
                    "jsonl source",
                    format!("{}: a line is not UTF-8", self.path.display()),
                )
            })?;
            lines.push(Line {
                text,
                bytes: n as u64,
            });
        }
        Ok(lines)
    }
}

impl JsonlSource {
    fn to_batch(&self, lines: &[Line], start: Cursor) -> Result<arrow::array::RecordBatch> {
        let mut deltas = Vec::with_capacity(lines.len());
        let mut numbers = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let number = start.line + i as u64 + 1;
            let text = line.text.trim();
            if text.is_empty() {
                continue;
            }
            let where_ = || format!("{}:{number}", self.path.display());
            let delta = self
                .parse_line(text, start.base_ms, number)
                .map_err(|e| Error::invalid("jsonl line", format!("{}: {e}", where_())))?;
            deltas.push(delta);
            numbers.push(number);
        }
        deltas_to_batch(&self.table, &deltas).map_err(|e| {
            // Name the first offending line.
            let bad = deltas
                .iter()
                .zip(&numbers)
                .find(|(d, _)| deltas_to_batch(&self.table, std::slice::from_ref(d)).is_err());
            match bad {
                Some((_, number)) => Error::invalid(
                    "jsonl line",
                    format!("{}:{number}: {e}", self.path.display()),
                ),
                None => e,
            }
        })
    }

    fn parse_line(&self, text: &str, base_ms: u64, number: u64) -> Result<RowDelta> {
        match &self.format {
            JsonlFormat::Deltas => {
                let delta: RowDelta =
                    serde_json::from_str(text).map_err(|e| Error::invalid("delta", e))?;
                if delta.table != self.table.delta_table() {
                    return Err(Error::invalid(
                        "delta",
                        format!(
                            "table {:?} is not this source's table {:?}",
                            delta.table, self.table.table
                        ),
                    ));
                }
                delta.verify_delta_id()?;
                Ok(delta)
            }
            JsonlFormat::Rows { id_column } => {
                let row: Map<String, Value> =
                    serde_json::from_str(text).map_err(|e| Error::invalid("row", e))?;
                let row_id = match row.get(id_column) {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => {
                        return Err(Error::invalid(
                            "row",
                            format!("no {id_column:?} (a non-empty string or a number)"),
                        ));
                    }
                };
                let hlc = self.hlc(&row, base_ms, number)?;
                if row.get("_deleted") == Some(&Value::Bool(true)) {
                    return Ok(RowDelta::new(
                        DeltaOp::Delete,
                        self.table.delta_table(),
                        row_id,
                        &self.client_id,
                        vec![],
                        hlc,
                    ));
                }
                let columns = row
                    .iter()
                    .filter(|(k, _)| *k != id_column && k.as_str() != "_deleted")
                    .map(|(k, v)| ColumnDelta::new(k.clone(), v.clone()))
                    .collect();
                Ok(RowDelta::new(
                    DeltaOp::Insert,
                    self.table.delta_table(),
                    row_id,
                    &self.client_id,
                    columns,
                    hlc,
                ))
            }
        }
    }

    fn hlc(&self, row: &Map<String, Value>, base_ms: u64, number: u64) -> Result<HlcTimestamp> {
        let counter = (number % 65_536) as u16;
        if let Some(column) = &self.time_column {
            let wall = match row.get(column) {
                Some(Value::String(s)) => parse_timestamp(s).map(|us| (us / 1000).max(0) as u64),
                Some(Value::Number(n)) => n.as_u64(),
                _ => None,
            }
            .ok_or_else(|| {
                Error::invalid(
                    "row",
                    format!("time column {column:?} is missing or not a timestamp"),
                )
            })?;
            return HlcTimestamp::new(wall, counter);
        }
        HlcTimestamp::new(base_ms + number / 65_536, counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta_batch::batch_to_deltas;
    use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};
    use std::io::Write;
    use std::sync::Arc;
    use std::time::Duration;

    fn table() -> TableRef {
        Arc::new(TableSchema::new(
            "tasks",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("n", ColumnType::Integer),
            ],
        ))
    }

    fn source(path: &Path) -> JsonlSource {
        JsonlSource::new(
            "f",
            path,
            table(),
            JsonlFormat::Rows {
                id_column: "id".into(),
            },
            "jsonl:f",
            None,
        )
    }

    async fn read_all(src: &mut JsonlSource, resume: Option<Position>) -> Vec<SourceBatch> {
        let stream = src.open(resume, ReadMode::Once).await.unwrap();
        stream.map(|b| b.unwrap()).collect().await
    }

    #[tokio::test]
    async fn rows_deletes_and_deterministic_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "{\"id\":1,\"title\":\"a\",\"n\":1}\n\n{\"id\":\"x\",\"title\":null}\n{\"id\":1,\"_deleted\":true}\n").unwrap();
        let mut src = source(&path);
        let batches = read_all(&mut src, None).await;
        assert_eq!(batches.len(), 1);
        let deltas = batch_to_deltas(&batches[0].batch).unwrap();
        assert_eq!(deltas.len(), 3);
        assert_eq!(
            (deltas[0].op, deltas[0].row_id.as_str()),
            (DeltaOp::Insert, "1")
        );
        assert_eq!(deltas[2].op, DeltaOp::Delete);
        assert!(deltas[0].hlc < deltas[1].hlc && deltas[1].hlc < deltas[2].hlc);
        // Appending and resuming yields only the new line; replaying from the start yields the
        // very same deltas.
        let pos = batches[0].position.clone();
        let pos_before_append = pos.clone();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"id\":2,\"n\":5}\n")
            .unwrap();
        let more = read_all(&mut src, Some(pos)).await;
        assert_eq!(batch_to_deltas(&more[0].batch).unwrap()[0].row_id, "2");
        let start = src.start_position();
        let replay = read_all(&mut src, start).await;
        assert_eq!(batch_to_deltas(&replay[0].batch).unwrap()[..3], deltas[..]);
        // A bounded replay stops where the original read ended, though the file grew.
        let bounded: Vec<SourceBatch> = src
            .open(
                src.start_position(),
                ReadMode::Replay {
                    until: pos_before_append.clone(),
                },
            )
            .await
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
            .await;
        assert_eq!(bounded.len(), 1);
        assert_eq!(bounded[0].position, pos_before_append);
        assert_eq!(batch_to_deltas(&bounded[0].batch).unwrap(), deltas);
    }

    #[tokio::test]
    async fn bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(
            &path,
            "{\"id\":1,\"title\":\"a\"}\n{\"id\":2,\"n\":\"seven\"}\n",
        )
        .unwrap();
        let mut src = source(&path);
        let err = src
            .open(None, ReadMode::Once)
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.jsonl:2"), "{err}");
        std::fs::write(&path, "{\"id\":1,\"nope\":1}\n").unwrap();
        let err = src
            .open(None, ReadMode::Once)
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.jsonl:1") && err.contains("Unknown column \"nope\""),
            "{err}"
        );
        std::fs::write(&path, "not json\n").unwrap();
        let err = src
            .open(None, ReadMode::Once)
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.jsonl:1"), "{err}");
    }

    #[tokio::test]
    async fn follow_waits_for_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "{\"id\":1,\"n\":1}\n{\"id\":2,").unwrap();
        let mut src = source(&path);
        let mut stream = src
            .open(
                None,
                ReadMode::Follow {
                    poll_interval: Duration::from_millis(20),
                },
            )
            .await
            .unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.batch.num_rows(), 1);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"\"n\":2}\n")
            .unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(batch_to_deltas(&second.batch).unwrap()[0].row_id, "2");
    }
}
