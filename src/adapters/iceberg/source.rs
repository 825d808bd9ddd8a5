//! [`IcebergSource`]: an Iceberg table read whole, as deltas — the lake as a pipeline source
//! (`type: iceberg` under `sources:`), for backfills out of the lake. One snapshot per read;
//! reading the changes between two snapshots, and following new ones, are not built yet.
//!
//! **What is read.** One snapshot of the table (the current one when the read starts, or the one
//! a resumed position names), scanned by iceberg-rust one file at a time in plan order
//! (`with_concurrency_limit(1)`, so the order is the same on every read of that snapshot):
//! - a **LakeSync delta table** (it has `_delta_id`) yields its rows as they are stored — deltas,
//!   and compaction's base rows as the `INSERT` deltas they look like (their per-column version
//!   keys do not travel);
//! - **any other table** yields one full-row `INSERT` delta per row
//!   (`lakesync_operators::bulk::insert_batch`), its row id from `id_column`, every delta with the
//!   same HLC: the snapshot's commit time. DeltaIds are hashes of the cells, so a re-read yields
//!   the same deltas.
//!
//! **Position**: `{"snapshot": id, "rows": n}` — the rows of that snapshot delivered so far. A
//! resume re-scans the snapshot and skips `n` rows, so a backfill killed mid-way continues with
//! exactly the rows after them; memory is one scan batch, not the table.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::cast;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use serde_json::json;

use super::iceberg_error;
use super::mapping::{self, LAKE_ROW_ID};
use crate::kernel::bulk::insert_batch;
use crate::kernel::delta_batch::{DELTA_ID, RESERVED, delta_schema};
use crate::kernel::hlc::HlcTimestamp;
use crate::runtime::api::{Position, ReadMode, Source, SourceBatch, SourceStream, TableRef};
use crate::{Error, Result};

/// The client id deltas made from plain Iceberg rows carry.
pub const ICEBERG_CLIENT: &str = "lakesync:iceberg";

/// Reads one Iceberg table as deltas of one pipeline table (see the module docs).
pub struct IcebergSource {
    name: String,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    table: TableRef,
    id_column: Option<String>,
}

impl std::fmt::Debug for IcebergSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergSource")
            .field("name", &self.name)
            .field("table", &self.ident)
            .field("id_column", &self.id_column)
            .finish_non_exhaustive()
    }
}

impl IcebergSource {
    /// A source named `name` reading the Iceberg table `ident` into the pipeline table `table`;
    /// `id_column` names the row id column of a table that is not a LakeSync delta table.
    pub fn new(
        name: impl Into<String>,
        catalog: Arc<dyn Catalog>,
        ident: TableIdent,
        table: TableRef,
        id_column: Option<String>,
    ) -> Self {
        Self {
            name: name.into(),
            catalog,
            ident,
            table,
            id_column,
        }
    }

    async fn load(&self) -> Result<Table> {
        self.catalog
            .load_table(&self.ident)
            .await
            .map_err(|e| iceberg_error(format!("loading Iceberg table {}", self.ident), e))
    }
}

/// `(snapshot, rows delivered)` of a position this source wrote.
fn parse_position(position: &Position, name: &str) -> Result<(i64, u64)> {
    let snapshot = position
        .0
        .get("snapshot")
        .and_then(serde_json::Value::as_i64);
    let rows = position.0.get("rows").and_then(serde_json::Value::as_u64);
    match (snapshot, rows) {
        (Some(s), Some(r)) => Ok((s, r)),
        _ => Err(Error::invalid(
            "iceberg source",
            format!(
                "source {name:?}: {} is not a position of this source",
                position.0
            ),
        )),
    }
}

/// How a scan batch becomes a delta batch.
#[derive(Clone)]
enum Conversion {
    /// A LakeSync delta table: the stored deltas.
    Deltas(TableRef),
    /// Any other table: full-row inserts keyed by `id`, all at `hlc`.
    Rows {
        table: TableRef,
        id: String,
        hlc: HlcTimestamp,
    },
}

impl Conversion {
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        match self {
            Self::Deltas(table) => mapping::to_delta_batch(table, batch),
            Self::Rows { table, id, hlc } => {
                let ids = batch.column_by_name(id).ok_or_else(|| {
                    Error::schema(format!("the Iceberg table has no id column {id:?}"))
                })?;
                let ids = cast(ids, &arrow::datatypes::DataType::Utf8)?;
                let ids = ids
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()
                    .ok_or_else(|| Error::internal("a Utf8 cast that is not a StringArray"))?;
                if ids.null_count() > 0 {
                    return Err(Error::invalid(
                        "iceberg source",
                        format!("id column {id:?} has nulls; every row needs an id"),
                    ));
                }
                let schema = delta_schema(table);
                let mut columns = Vec::with_capacity(table.columns.len());
                for (k, column) in table.columns.iter().enumerate() {
                    let want = schema.field(RESERVED + k).data_type();
                    let array = match batch.column_by_name(&column.name) {
                        Some(array) => cast(array, want)?,
                        None => arrow::array::new_null_array(want, batch.num_rows()),
                    };
                    columns.push(array);
                }
                let hlcs = vec![*hlc; batch.num_rows()];
                insert_batch(table, ICEBERG_CLIENT, ids, &hlcs, columns)
            }
        }
    }
}

#[async_trait]
impl Source for IcebergSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        Ok(vec![self.table.clone()])
    }

    async fn open(&mut self, resume: Option<Position>, mode: ReadMode) -> Result<SourceStream> {
        if !matches!(mode, ReadMode::Once) {
            tracing::warn!(source = %self.name, "the iceberg source reads one snapshot; following new snapshots is not supported yet");
        }
        let table = self.load().await?;
        let (snapshot, skip) = match &resume {
            Some(position) => parse_position(position, &self.name)?,
            None => match table.metadata().current_snapshot_id() {
                Some(id) => (id, 0),
                None => return Ok(futures::stream::empty().boxed()),
            },
        };
        let snap = table.metadata().snapshot_by_id(snapshot).ok_or_else(|| {
            Error::invalid(
                "iceberg source",
                format!(
                    "source {:?}: table {} no longer has snapshot {snapshot} to resume from",
                    self.name, self.ident
                ),
            )
        })?;
        let schema = table.metadata().current_schema();
        let is_delta_table =
            schema.field_by_name(DELTA_ID).is_some() && schema.field_by_name(LAKE_ROW_ID).is_some();
        let conversion = if is_delta_table {
            Conversion::Deltas(self.table.clone())
        } else {
            let id = self.id_column.clone().ok_or_else(|| {
                Error::invalid(
                    "iceberg source",
                    format!(
                        "source {:?}: table {} is not a LakeSync delta table, so it needs an id_column",
                        self.name, self.ident
                    ),
                )
            })?;
            let ms = u64::try_from(snap.timestamp_ms()).unwrap_or_default();
            Conversion::Rows {
                table: self.table.clone(),
                id,
                hlc: HlcTimestamp::new(ms, 0)?,
            }
        };
        let ident = self.ident.clone();
        let stream = table
            .scan()
            .snapshot_id(snapshot)
            .select_all()
            .with_concurrency_limit(1)
            .build()
            .map_err(|e| iceberg_error(format!("planning a scan of {ident}"), e))?
            .to_arrow()
            .await
            .map_err(|e| iceberg_error(format!("scanning {ident}"), e))?;
        let mut seen = 0u64;
        let out = stream
            .map_err(move |e| iceberg_error(format!("reading {ident}"), e))
            .try_filter_map(move |batch| {
                let conversion = conversion.clone();
                let start = seen;
                seen += batch.num_rows() as u64;
                let result = (|| {
                    if seen <= skip {
                        return Ok(None);
                    }
                    let from = skip.saturating_sub(start) as usize;
                    let batch = batch.slice(from, batch.num_rows() - from);
                    let deltas = conversion.apply(&batch)?;
                    Ok(Some(SourceBatch {
                        table: conversion_table(&conversion),
                        batch: deltas,
                        position: Position(json!({"snapshot": snapshot, "rows": seen})),
                    }))
                })();
                futures::future::ready(result)
            });
        Ok(out.boxed())
    }
}

fn conversion_table(conversion: &Conversion) -> TableRef {
    match conversion {
        Conversion::Deltas(table) | Conversion::Rows { table, .. } => table.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::array::{Int64Array, StringArray as Strings};
    use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    use iceberg::{NamespaceIdent, TableCreation};

    use super::*;
    use crate::adapters::iceberg::{IcebergCatalogConfig, IcebergSink, connect};
    use crate::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
    use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};
    use crate::runtime::api::Sink;
    use crate::synth::{Workload, tasks_schema};

    async fn read_all(source: &mut IcebergSource, resume: Option<Position>) -> Vec<SourceBatch> {
        source
            .open(resume, ReadMode::Once)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_delta_table_reads_back_every_delta_and_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
        let table: TableRef = Arc::new(tasks_schema());
        let deltas = Workload::new(200, 4, 3).deltas(3_000, 1_780_000_000_000);
        let mut sink = IcebergSink::connect(&config, "lakesync", "p", "lake")
            .await
            .unwrap();
        sink.prepare(std::slice::from_ref(&table)).await.unwrap();
        for (k, part) in deltas.chunks(1_000).enumerate() {
            sink.begin_epoch(k as u64 + 1, 0);
            sink.write(&table, deltas_to_batch(&table, part).unwrap())
                .await
                .unwrap();
            sink.commit(k as u64 + 1).await.unwrap();
        }
        let catalog = connect(&config).await.unwrap();
        let ident = TableIdent::from_strs(["lakesync", "tasks"]).unwrap();
        let mut source = IcebergSource::new("lake", catalog, ident, table.clone(), None);
        let batches = read_all(&mut source, None).await;
        let ids = |batches: &[SourceBatch]| -> Vec<[u8; 32]> {
            batches
                .iter()
                .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
                .map(|d| d.delta_id.0)
                .collect()
        };
        let all = ids(&batches);
        let want: BTreeSet<[u8; 32]> = deltas.iter().map(|d| d.delta_id.0).collect();
        assert_eq!(all.len(), 3_000);
        assert_eq!(all.iter().copied().collect::<BTreeSet<_>>(), want);
        // Resuming after the first batch yields exactly the rest, in the same order.
        assert!(batches.len() > 1);
        let rest = read_all(&mut source, Some(batches[0].position.clone())).await;
        assert_eq!(ids(&rest), all[batches[0].batch.num_rows()..].to_vec());
    }

    #[tokio::test]
    async fn any_iceberg_table_reads_as_full_row_inserts_keyed_by_its_id_column() {
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
        let catalog = connect(&config).await.unwrap();
        let ns = NamespaceIdent::new("finance".into());
        catalog
            .create_namespace(&ns, Default::default())
            .await
            .unwrap();
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(2, "title", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "n", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        let lake = catalog
            .create_table(
                &ns,
                TableCreation::builder()
                    .name("invoices".into())
                    .schema(schema.clone())
                    .build(),
            )
            .await
            .unwrap();
        let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).unwrap());
        let batch = RecordBatch::try_new(
            arrow.clone(),
            vec![
                Arc::new(Strings::from(vec!["inv-1", "inv-2", "inv-3"])),
                Arc::new(Strings::from(vec![Some("a"), None, Some("it's")])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
            ],
        )
        .unwrap();
        let files = crate::adapters::iceberg::write::write_data_files(
            &lake,
            Arc::new(schema),
            &arrow,
            &[batch],
            "test".into(),
            None,
        )
        .await
        .unwrap();
        let tx = Transaction::new(&lake);
        let tx = tx.fast_append().add_data_files(files).apply(tx).unwrap();
        tx.commit(catalog.as_ref()).await.unwrap();

        let table: TableRef = Arc::new(TableSchema::new(
            "invoices",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("n", ColumnType::Integer),
            ],
        ));
        let ident = TableIdent::new(ns, "invoices".into());
        let mut without_id =
            IcebergSource::new("inv", catalog.clone(), ident.clone(), table.clone(), None);
        let err = without_id.open(None, ReadMode::Once).await.err().unwrap();
        assert!(err.to_string().contains("id_column"), "{err}");
        let mut source = IcebergSource::new("inv", catalog, ident, table, Some("id".into()));
        let first = read_all(&mut source, None).await;
        let deltas: Vec<_> = first
            .iter()
            .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
            .collect();
        let got: Vec<(String, String)> = deltas
            .iter()
            .map(|d| (d.row_id.clone(), serde_json::to_string(&d.columns).unwrap()))
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, "inv-1");
        assert!(got[2].1.contains("it's"), "{got:?}");
        assert!(
            deltas
                .iter()
                .all(|d| d.op == crate::kernel::DeltaOp::Insert)
        );
        // A second read of the same snapshot yields the very same deltas (ids hash the cells).
        let again = read_all(&mut source, None).await;
        let again: Vec<_> = again
            .iter()
            .flat_map(|b| batch_to_deltas(&b.batch).unwrap())
            .collect();
        assert_eq!(again, deltas);
    }
}
