//! Parquet sink: delta batches as Parquet files on object storage (a local directory now; the
//! same code serves S3 through `object_store`).
//!
//! Each epoch's deltas of a table go to one file,
//! `<root>/<table>/<pipeline>-<sink>-<epoch:012>.parquet`, in the Arrow delta contract with its
//! schema embedded, so `lakesync_operators::parquet_io::read_parquet` (or any Parquet reader)
//! reads them back exactly. A file appears atomically (object stores publish whole objects; the
//! local store writes a temporary file and renames it), so its existence *is* the commit mark:
//! a replayed epoch whose file exists is dropped, and one whose file is missing is written.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::kernel::delta_batch::delta_schema;
use crate::runtime::api::{CommitStats, Sink, TableRef};
use crate::{Error, Result};

/// Compression of written files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParquetCompression {
    /// Zstandard (default).
    #[default]
    Zstd,
    /// Snappy.
    Snappy,
    /// None.
    None,
}

/// Writes delta batches as Parquet files.
#[derive(Debug)]
pub struct ParquetSink {
    name: String,
    pipeline: String,
    store: Arc<dyn ObjectStore>,
    compression: ParquetCompression,
    tables: BTreeMap<String, TableRef>,
    buffers: BTreeMap<String, Vec<RecordBatch>>,
}

fn store_error(e: object_store::Error) -> Error {
    let retryable = crate::adapters::iceberg::storage::is_transient(&e);
    Error::external("object store", retryable, e)
}

impl ParquetSink {
    /// A sink writing under the local directory `root` (created if missing).
    pub fn local(
        name: &str,
        pipeline: &str,
        root: &std::path::Path,
        compression: ParquetCompression,
    ) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| {
            Error::invalid(
                "parquet sink",
                format!("cannot create {}: {e}", root.display()),
            )
        })?;
        let store = LocalFileSystem::new_with_prefix(root).map_err(store_error)?;
        Ok(Self::new(name, pipeline, Arc::new(store), compression))
    }

    /// A sink writing into `store` (its root is the sink's root).
    pub fn new(
        name: &str,
        pipeline: &str,
        store: Arc<dyn ObjectStore>,
        compression: ParquetCompression,
    ) -> Self {
        Self {
            name: name.into(),
            pipeline: pipeline.into(),
            store,
            compression,
            tables: BTreeMap::new(),
            buffers: BTreeMap::new(),
        }
    }

    fn file_prefix(&self) -> String {
        format!("{}-{}-", self.pipeline, self.name)
    }

    fn file(&self, table: &str, epoch: u64) -> ObjectPath {
        ObjectPath::from(format!("{table}/{}{epoch:012}.parquet", self.file_prefix()))
    }

    /// The newest epoch with a file for `table`.
    async fn table_epoch(&self, table: &str) -> Result<Option<u64>> {
        let prefix = self.file_prefix();
        let files: Vec<_> = self
            .store
            .list(Some(&ObjectPath::from(table)))
            .try_collect()
            .await
            .map_err(store_error)?;
        Ok(files
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()?
                    .strip_prefix(&prefix)?
                    .strip_suffix(".parquet")?
                    .parse::<u64>()
                    .ok()
            })
            .max())
    }

    fn encode(&self, batches: &[RecordBatch], table: &TableRef) -> Result<Vec<u8>> {
        let schema = delta_schema(table);
        let batch = concat_batches(&schema, batches)?;
        let compression = match self.compression {
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::None => Compression::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .build();
        let mut out = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(Error::internal)?;
        writer.write(&batch).map_err(Error::internal)?;
        writer.close().map_err(Error::internal)?;
        Ok(out)
    }
}

#[async_trait]
impl Sink for ParquetSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&mut self, tables: &[TableRef]) -> Result<()> {
        for table in tables {
            self.tables.insert(table.table.clone(), table.clone());
        }
        Ok(())
    }

    async fn committed_epoch(&mut self) -> Result<Option<u64>> {
        let mut newest = None;
        for table in self.tables.keys() {
            newest = newest.max(self.table_epoch(table).await?);
        }
        Ok(newest)
    }

    async fn write(&mut self, table: &TableRef, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() > 0 {
            self.tables
                .entry(table.table.clone())
                .or_insert_with(|| table.clone());
            self.buffers
                .entry(table.table.clone())
                .or_default()
                .push(batch);
        }
        Ok(())
    }

    async fn commit(&mut self, epoch: u64) -> Result<CommitStats> {
        let mut stats = CommitStats::default();
        let names: Vec<String> = self.buffers.keys().cloned().collect();
        for name in names {
            let path = self.file(&name, epoch);
            if self.store.head(&path).await.is_ok() {
                tracing::info!(sink = %self.name, table = %name, epoch, "epoch already committed; dropping replay");
                self.buffers.remove(&name);
                continue;
            }
            let table = self
                .tables
                .get(&name)
                .cloned()
                .ok_or_else(|| Error::internal(format!("table {name} not prepared")))?;
            let batches = self
                .buffers
                .get(&name)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let bytes = self.encode(batches, &table)?;
            let size = bytes.len() as u64;
            // The buffer is kept until the file is written, so a retried commit writes it again.
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(store_error)?;
            self.buffers.remove(&name);
            stats.rows += rows as u64;
            stats.bytes += size;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta_batch::deltas_to_batch;
    use crate::kernel::parquet_io::read_parquet;
    use crate::synth::{Workload, tasks_schema};

    #[tokio::test]
    async fn writes_one_file_per_table_and_epoch_and_drops_replays() {
        let dir = tempfile::tempdir().unwrap();
        let table: TableRef = Arc::new(tasks_schema());
        let mut sink =
            ParquetSink::local("archive", "p", dir.path(), ParquetCompression::Zstd).unwrap();
        sink.prepare(std::slice::from_ref(&table)).await.unwrap();
        assert_eq!(sink.committed_epoch().await.unwrap(), None);
        let deltas = Workload::new(50, 3, 1).deltas(200, 1_767_225_600_000);
        let batch = deltas_to_batch(&table, &deltas).unwrap();
        sink.write(&table, batch.clone()).await.unwrap();
        assert_eq!(sink.commit(1).await.unwrap().rows, 200);
        // A replay of epoch 1 is dropped; epoch 2 is written.
        sink.write(&table, batch.clone()).await.unwrap();
        assert_eq!(sink.commit(1).await.unwrap().rows, 0);
        sink.write(&table, batch.clone()).await.unwrap();
        assert_eq!(sink.commit(2).await.unwrap().rows, 200);
        assert_eq!(sink.committed_epoch().await.unwrap(), Some(2));
        // A retried commit after a failed one writes the buffer (nothing is lost).
        sink.write(&table, batch.clone()).await.unwrap();
        assert_eq!(sink.commit(3).await.unwrap().rows, 200);
        let file = dir.path().join("tasks/p-archive-000000000001.parquet");
        let back = read_parquet(std::fs::read(file).unwrap().into()).unwrap();
        assert_eq!(back[0], batch);
    }
}
