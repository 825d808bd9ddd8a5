//! Writing lake batches as Parquet data files: the one writer stack the sink and compaction
//! share.
//!
//! iceberg-rust's stack, `ParquetWriterBuilder` (zstd) → `RollingFileWriterBuilder` (a new file
//! once the current one reaches the target size) → `DataFileWriterBuilder`; on a partitioned
//! table a `FanoutWriter` keeps one writer per partition, so every data file holds one day of
//! `_hlc_time` and carries its partition value. A batch within one day goes to its day whole;
//! others are split row by row by iceberg-rust's `RecordBatchPartitionSplitter`, which also
//! serves specs other writers evolved to. The rolling writer checks the size between writes, so
//! a file overshoots its target by at most one batch.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{
    DataFile, DataFileFormat, Literal, PartitionKey, PartitionSpec, Schema, Struct, Transform,
};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::mapping;

/// Writes `batches` (in the Iceberg Arrow form `arrow` of the Iceberg schema `schema`) as data
/// files of `table`, named `<prefix>-…parquet` under the table's data location, rolling to a new
/// file at `target_file_size` bytes (iceberg-rust's default, 512 MiB, when `None`). Returns the
/// data files, ready to commit; nothing is committed here.
pub(crate) async fn write_data_files(
    table: &Table,
    schema: iceberg::spec::SchemaRef,
    arrow: &SchemaRef,
    batches: &[RecordBatch],
    prefix: String,
    target_file_size: Option<usize>,
) -> iceberg::Result<Vec<DataFile>> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let parquet = ParquetWriterBuilder::new(properties, schema);
    let location = DefaultLocationGenerator::new(table.metadata())?;
    let names = DefaultFileNameGenerator::new(prefix, None, DataFileFormat::Parquet);
    let rolling = match target_file_size {
        Some(size) => {
            RollingFileWriterBuilder::new(parquet, size, table.file_io().clone(), location, names)
        }
        None => RollingFileWriterBuilder::new_with_default_file_size(
            parquet,
            table.file_io().clone(),
            location,
            names,
        ),
    };
    let data_files = DataFileWriterBuilder::new(rolling);
    let spec = table.metadata().default_partition_spec();
    if spec.is_unpartitioned() {
        let mut writer = data_files.build(None).await?;
        for batch in batches {
            writer.write(batch.clone()).await?;
        }
        return writer.close().await;
    }
    let table_schema = table.metadata().current_schema().clone();
    let day_column = hlc_day_column(spec, &table_schema, arrow);
    let mut splitter = None;
    let mut writer = FanoutWriter::new(data_files);
    for batch in batches {
        if let Some(day) = day_column.and_then(|i| single_day(batch.column(i))) {
            let value = Struct::from_iter([Some(Literal::date(day))]);
            let key = PartitionKey::new(spec.as_ref().clone(), table_schema.clone(), value);
            writer.write(key, batch.clone()).await?;
            continue;
        }
        if splitter.is_none() {
            splitter = Some(RecordBatchPartitionSplitter::try_new_with_computed_values(
                table_schema.clone(),
                spec.clone(),
            )?);
        }
        if let Some(splitter) = &splitter {
            for (key, part) in splitter.split(batch)? {
                writer.write(key, part).await?;
            }
        }
    }
    writer.close().await
}

/// The position of `_hlc_time` in the table's batches when the partition spec is exactly
/// LakeSync's `day(_hlc_time)`; `None` for any other spec.
fn hlc_day_column(spec: &PartitionSpec, schema: &Schema, arrow: &SchemaRef) -> Option<usize> {
    let [field] = spec.fields() else {
        return None;
    };
    let source = schema.field_by_name(mapping::HLC_TIME)?;
    (field.transform == Transform::Day && field.source_id == source.id)
        .then(|| arrow.index_of(mapping::HLC_TIME).ok())
        .flatten()
}

/// The day (since the Unix epoch) of every value of a `_hlc_time` column, when they all fall
/// on one day.
fn single_day(column: &ArrayRef) -> Option<i32> {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    let times = column.as_primitive_opt::<TimestampMicrosecondType>()?;
    if times.null_count() > 0 {
        return None;
    }
    let first = arrow::compute::min(times)?.div_euclid(MICROS_PER_DAY);
    let last = arrow::compute::max(times)?.div_euclid(MICROS_PER_DAY);
    (first == last).then(|| i32::try_from(first).ok()).flatten()
}
