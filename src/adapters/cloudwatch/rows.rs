//! Log events as rows: the fixed columns, the columns extracted from JSON messages, and the
//! delta batch of a page of events.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringArray,
    StringBuilder, TimestampMicrosecondBuilder,
};
use serde_json::{Map, Value};

use crate::Result;
use crate::kernel::bulk::insert_batch;
use crate::kernel::delta_batch::parse_timestamp;
use crate::kernel::hlc::HlcTimestamp;
use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};

/// The columns every CloudWatch table has, in order, before the extracted JSON fields.
pub const FIXED_COLUMNS: [(&str, ColumnType); 6] = [
    ("timestamp", ColumnType::Timestamp),
    ("ingestion_time", ColumnType::Timestamp),
    ("log_group", ColumnType::String),
    ("log_stream", ColumnType::String),
    ("message", ColumnType::String),
    ("event_id", ColumnType::String),
];

/// The schema of a CloudWatch source's table `table`: [`FIXED_COLUMNS`], then `json_fields`.
pub fn table_schema(table: &str, json_fields: &[(String, ColumnType)]) -> TableSchema {
    let columns = FIXED_COLUMNS
        .iter()
        .map(|(name, ty)| ColumnDef::new(*name, *ty))
        .chain(
            json_fields
                .iter()
                .map(|(name, ty)| ColumnDef::new(name.as_str(), *ty)),
        )
        .collect();
    TableSchema::new(table, columns)
}

/// One event as the source delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The log group.
    pub log_group: &'a str,
    /// The log stream.
    pub log_stream: Option<&'a str>,
    /// The event's timestamp (ms since the Unix epoch).
    pub timestamp: i64,
    /// When CloudWatch ingested it (ms).
    pub ingestion_time: Option<i64>,
    /// The message.
    pub message: Option<&'a str>,
    /// CloudWatch's event id.
    pub event_id: &'a str,
}

/// The row id of an event: `<log group>:<event id>` (event ids are unique within a group).
pub fn row_id(log_group: &str, event_id: &str) -> String {
    format!("{log_group}:{event_id}")
}

/// Accumulates the events of one page into column builders.
pub struct RowsBuilder {
    json_fields: Vec<(String, ColumnType)>,
    row_ids: Vec<String>,
    hlcs: Vec<HlcTimestamp>,
    timestamp: TimestampMicrosecondBuilder,
    ingestion: TimestampMicrosecondBuilder,
    log_group: StringBuilder,
    log_stream: StringBuilder,
    message: StringBuilder,
    event_id: StringBuilder,
    fields: Vec<FieldBuilder>,
}

enum FieldBuilder {
    Text(StringBuilder),
    Integer(Int64Builder),
    Number(Float64Builder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl FieldBuilder {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::String | ColumnType::Json | ColumnType::Null => {
                Self::Text(StringBuilder::new())
            }
            ColumnType::Integer => Self::Integer(Int64Builder::new()),
            ColumnType::Number => Self::Number(Float64Builder::new()),
            ColumnType::Boolean => Self::Boolean(BooleanBuilder::new()),
            ColumnType::Timestamp => Self::Timestamp(TimestampMicrosecondBuilder::new()),
        }
    }

    fn append(&mut self, ty: ColumnType, value: Option<&Value>) {
        let value = value.filter(|v| !v.is_null());
        match self {
            Self::Text(b) => b.append_option(value.map(|v| match (ty, v) {
                (ColumnType::String, Value::String(s)) => s.clone(),
                (_, v) => v.to_string(),
            })),
            Self::Integer(b) => b.append_option(value.and_then(json_integer)),
            Self::Number(b) => b.append_option(value.and_then(json_number)),
            Self::Boolean(b) => b.append_option(value.and_then(|v| match v {
                Value::Bool(b) => Some(*b),
                Value::String(s) if s == "true" => Some(true),
                Value::String(s) if s == "false" => Some(false),
                _ => None,
            })),
            Self::Timestamp(b) => b.append_option(value.and_then(json_timestamp)),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Self::Text(mut b) => Arc::new(b.finish()),
            Self::Integer(mut b) => Arc::new(b.finish()),
            Self::Number(mut b) => Arc::new(b.finish()),
            Self::Boolean(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b) => Arc::new(b.finish().with_timezone("UTC")),
        }
    }
}

fn json_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn json_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// An RFC 3339 string, or milliseconds since the epoch, as microseconds.
fn json_timestamp(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => parse_timestamp(s.trim()),
        Value::Number(_) => json_integer(v).and_then(|ms| ms.checked_mul(1000)),
        _ => None,
    }
}

/// Milliseconds to microseconds, `None` when out of range.
fn micros(ms: i64) -> Option<i64> {
    ms.checked_mul(1000)
}

impl RowsBuilder {
    /// A builder for a table with these extracted JSON fields (empty: no parsing).
    pub fn new(json_fields: &[(String, ColumnType)]) -> Self {
        Self {
            json_fields: json_fields.to_vec(),
            row_ids: Vec::new(),
            hlcs: Vec::new(),
            timestamp: TimestampMicrosecondBuilder::new(),
            ingestion: TimestampMicrosecondBuilder::new(),
            log_group: StringBuilder::new(),
            log_stream: StringBuilder::new(),
            message: StringBuilder::new(),
            event_id: StringBuilder::new(),
            fields: json_fields
                .iter()
                .map(|(_, ty)| FieldBuilder::new(*ty))
                .collect(),
        }
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.row_ids.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.row_ids.is_empty()
    }

    /// Adds one event. Its HLC is its timestamp (counter 0), so a re-read yields the same delta.
    pub fn push(&mut self, event: &Event<'_>) -> Result<()> {
        let wall = u64::try_from(event.timestamp).unwrap_or(0);
        self.hlcs.push(HlcTimestamp::new(wall, 0)?);
        self.row_ids.push(row_id(event.log_group, event.event_id));
        self.timestamp.append_option(micros(event.timestamp));
        self.ingestion
            .append_option(event.ingestion_time.and_then(micros));
        self.log_group.append_value(event.log_group);
        self.log_stream.append_option(event.log_stream);
        self.message.append_option(event.message);
        self.event_id.append_value(event.event_id);
        if !self.fields.is_empty() {
            let object = event.message.and_then(parse_object);
            for ((name, ty), builder) in self.json_fields.iter().zip(&mut self.fields) {
                builder.append(*ty, object.as_ref().and_then(|o| o.get(name)));
            }
        }
        Ok(())
    }

    /// The rows as a delta batch of full-row INSERTs of `table` by `client_id`; the builder is
    /// left empty.
    pub fn finish(&mut self, table: &TableSchema, client_id: &str) -> Result<RecordBatch> {
        let fresh = Self::new(&self.json_fields);
        let done = std::mem::replace(self, fresh);
        let Self {
            row_ids,
            hlcs,
            mut timestamp,
            mut ingestion,
            mut log_group,
            mut log_stream,
            mut message,
            mut event_id,
            fields,
            ..
        } = done;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(timestamp.finish().with_timezone("UTC")),
            Arc::new(ingestion.finish().with_timezone("UTC")),
            Arc::new(log_group.finish()),
            Arc::new(log_stream.finish()),
            Arc::new(message.finish()),
            Arc::new(event_id.finish()),
        ];
        columns.extend(fields.into_iter().map(FieldBuilder::finish));
        insert_batch(table, client_id, StringArray::from(row_ids), &hlcs, columns)
    }
}

/// The message as a JSON object, when it is one.
fn parse_object(message: &str) -> Option<Map<String, Value>> {
    let trimmed = message.trim_start();
    if !trimmed.starts_with('{') {
        return None;
    }
    serde_json::from_str(trimmed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta::DeltaOp;
    use crate::kernel::delta_batch::batch_to_deltas;

    fn fields() -> Vec<(String, ColumnType)> {
        vec![
            ("level".into(), ColumnType::String),
            ("status".into(), ColumnType::Integer),
            ("latency".into(), ColumnType::Number),
            ("ok".into(), ColumnType::Boolean),
            ("at".into(), ColumnType::Timestamp),
            ("ctx".into(), ColumnType::Json),
        ]
    }

    fn event<'a>(id: &'a str, message: &'a str) -> Event<'a> {
        Event {
            log_group: "/app/api",
            log_stream: Some("web-1"),
            timestamp: 1_780_000_000_123,
            ingestion_time: Some(1_780_000_000_500),
            message: Some(message),
            event_id: id,
        }
    }

    #[test]
    fn events_become_full_row_inserts_with_parsed_fields() {
        let table = table_schema("log_events", &fields());
        table.validate().unwrap();
        let mut rows = RowsBuilder::new(&fields());
        rows.push(&event(
            "1",
            r#"{"level":"error","status":"503","latency":12.5,"ok":false,"at":"2026-01-02T03:04:05Z","ctx":{"b":1,"a":[2]}}"#,
        ))
        .unwrap();
        rows.push(&event("2", "plain text, not JSON")).unwrap();
        rows.push(&event(
            "3",
            r#"{"level":7,"status":1.5,"ok":"yes","at":1000}"#,
        ))
        .unwrap();
        let batch = rows.finish(&table, "cloudwatch:logs").unwrap();
        assert!(rows.is_empty());
        let deltas = batch_to_deltas(&batch).unwrap();
        assert_eq!(deltas.len(), 3);
        assert!(deltas.iter().all(|d| d.op == DeltaOp::Insert));
        assert_eq!(deltas[0].row_id, "/app/api:1");
        assert_eq!(
            deltas[0].hlc,
            HlcTimestamp::new(1_780_000_000_123, 0).unwrap()
        );
        let value = |d: usize, column: &str| -> Value {
            deltas[d]
                .columns
                .iter()
                .find(|c| c.column == column)
                .map(|c| c.value.clone())
                .unwrap_or(Value::Null)
        };
        assert_eq!(value(0, "level"), "error");
        assert_eq!(value(0, "status"), 503);
        assert_eq!(value(0, "latency"), 12.5);
        assert_eq!(value(0, "ok"), false);
        assert_eq!(value(0, "at"), "2026-01-02T03:04:05Z");
        assert_eq!(value(0, "ctx"), serde_json::json!({"a": [2], "b": 1}));
        assert_eq!(value(0, "log_stream"), "web-1");
        assert_eq!(value(0, "event_id"), "1");
        assert_eq!(value(1, "message"), "plain text, not JSON");
        assert_eq!(value(1, "level"), Value::Null);
        // A value of another type: kept as text for a string, null where it does not fit.
        assert_eq!(value(2, "level"), "7");
        assert_eq!(value(2, "status"), Value::Null);
        assert_eq!(value(2, "ok"), Value::Null);
        assert_eq!(value(2, "at"), "1970-01-01T00:00:01Z");
        // The same events give the same deltas (ids hash the cells and the HLC).
        let mut again = RowsBuilder::new(&fields());
        again
            .push(&event(
                "1",
                r#"{"level":"error","status":"503","latency":12.5,"ok":false,"at":"2026-01-02T03:04:05Z","ctx":{"b":1,"a":[2]}}"#,
            ))
            .unwrap();
        let again = batch_to_deltas(&again.finish(&table, "cloudwatch:logs").unwrap()).unwrap();
        assert_eq!(again[0].delta_id, deltas[0].delta_id);
    }
}
