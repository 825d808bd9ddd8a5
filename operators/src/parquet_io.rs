//! The Parquet form of delta and state batches, in memory.
//!
//! A batch is written with its Arrow schema embedded (Parquet's `ARROW:schema` metadata), so
//! reading it back restores the exact Arrow types — `UInt8` `_op`, `UInt64` `_hlc`,
//! `FixedSizeBinary(32)` `_delta_id`, the `_set` list — and the field and schema metadata that
//! carry the table name and column types. Row → Arrow → Parquet → Arrow → row is therefore exact.
//! Writing to object storage or files is the caller's business; this module only deals in bytes.

use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use arrow_array::RecordBatch;

use crate::error::{Error, Result};

/// Encodes batches that share one schema as a Snappy-compressed Parquet file.
pub fn write_parquet(batches: &[RecordBatch]) -> Result<Bytes> {
    let first = batches
        .first()
        .ok_or_else(|| Error::invalid("parquet", "no batches to write"))?;
    // Schema-level metadata (the table name) travels as file key-value metadata too, which the
    // reader folds back into the Arrow schema.
    let metadata = first
        .schema_ref()
        .metadata()
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(metadata))
        .build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, first.schema(), Some(props))?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(Bytes::from(buf))
}

/// Decodes a Parquet file written by [`write_parquet`] (or any Parquet file) into batches.
pub fn read_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    // The reader's batches carry the fields but not the schema-level metadata; restore it.
    let schema = builder.schema().clone();
    builder
        .build()?
        .map(|batch| {
            let batch = batch.map_err(|e| Error::invalid("parquet", e))?;
            Ok(batch.with_schema(schema.clone())?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{ColumnDelta, DeltaOp, RowDelta};
    use crate::delta_batch::{batch_to_deltas, deltas_to_batch, tests::todos};
    use crate::hlc::HlcTimestamp;
    use serde_json::json;

    #[test]
    fn delta_batch_round_trips_through_parquet() {
        let deltas = vec![
            RowDelta::new(
                DeltaOp::Insert,
                "todos",
                "r1",
                "c",
                vec![
                    ColumnDelta::new("meta", json!({"z": 1, "a": null})),
                    ColumnDelta::new("title", json!("t")),
                ],
                HlcTimestamp(u64::MAX),
            ),
            RowDelta::new(DeltaOp::Delete, "todos", "r2", "c", vec![], HlcTimestamp(1)),
        ];
        let batch = deltas_to_batch(&todos(), &deltas).unwrap();
        let bytes = write_parquet(std::slice::from_ref(&batch)).unwrap();
        let back = read_parquet(bytes).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0], batch);
        assert_eq!(batch_to_deltas(&back[0]).unwrap(), deltas);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = read_parquet(Bytes::from_static(b"not parquet")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::User);
        assert!(write_parquet(&[]).is_err());
    }
}
