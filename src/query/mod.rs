//! DataFusion over the lake: SQL on the Iceberg tables LakeSync writes.
//!
//! [`query`] opens the lake's catalogue ([`IcebergCatalogConfig`]) and registers it with a
//! DataFusion `SessionContext` as the catalogue [`LAKE_CATALOG`] (through iceberg-datafusion's
//! `IcebergCatalogProvider`), with [`LAKE_CATALOG`]`.`[`DEFAULT_NAMESPACE`] as the default
//! schema ([`query_in`] takes another). So `SELECT … FROM lake.lakesync.tasks`,
//! `SELECT … FROM lakesync.tasks` and `SELECT … FROM tasks` all name the same table, and every
//! other namespace is `lake.<namespace>.<table>` or `<namespace>.<table>`.
//!
//! A query sees each table's current snapshot as of when the query started (the catalogue's
//! tables are listed and loaded when the session is made). Rows are deltas in the Iceberg form
//! of [`crate::adapters::iceberg::mapping`]; `mapping::to_delta_batch` turns a `SELECT *`
//! result back into delta batches. A compacted table also holds base rows (`_versions` not
//! null), which are state, not deltas: [`crate::adapters::iceberg::read`] merges both kinds.
//!
//! Errors: SQL that does not parse, names an unknown table or column, or fails while running on
//! the data (a bad cast, say) is an [`Error::Invalid`] for `query` carrying DataFusion's
//! message; a catalogue or file that cannot be read is an [`Error::External`].

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg_datafusion::IcebergCatalogProvider;

use crate::adapters::iceberg::{DEFAULT_NAMESPACE, IcebergCatalogConfig, connect};
use crate::config::plan::Plan;
use crate::config::spec::{SinkSpec, SourceSpec};
use crate::{Error, Result};

pub mod time_travel;

pub use time_travel::{HotTier, LakeView, parse_moment};

/// The DataFusion catalogue name the lake is registered under.
pub const LAKE_CATALOG: &str = "lake";

/// The DataFusion catalogue name time-travel views are registered under (the default catalogue
/// of a [`view_session`]).
pub const VIEW_CATALOG: &str = "view";

/// A DataFusion session with the lake registered as [`LAKE_CATALOG`] (and as the default
/// catalogue, with [`DEFAULT_NAMESPACE`] as the default schema).
pub async fn session(catalog: &IcebergCatalogConfig) -> Result<SessionContext> {
    session_in(catalog, DEFAULT_NAMESPACE).await
}

/// Like [`session`], with `namespace` as the default schema (so unqualified table names are
/// that namespace's: `lakesync query --pipeline` uses its Iceberg sink's namespace).
pub async fn session_in(catalog: &IcebergCatalogConfig, namespace: &str) -> Result<SessionContext> {
    let catalog = connect(catalog).await?;
    let provider = IcebergCatalogProvider::try_new(catalog)
        .await
        .map_err(|e| Error::External {
            system: "iceberg",
            message: format!("listing the lake's tables for DataFusion: {e}"),
            retryable: e.retryable(),
            source: Some(Box::new(e)),
        })?;
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(LAKE_CATALOG, namespace)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    ctx.register_catalog(LAKE_CATALOG, Arc::new(provider));
    Ok(ctx)
}

/// A session for `sql` in which the tables it names (unqualified, or `<namespace>.<table>`)
/// are the `view` of the lake's tables, with `hot` deltas added (see [`time_travel`]); the raw
/// delta tables stay readable as `lake.<namespace>.<table>`.
pub async fn view_session(
    catalog: &IcebergCatalogConfig,
    namespace: &str,
    view: LakeView,
    hot: &HotTier,
    sql: &str,
) -> Result<SessionContext> {
    let catalog = connect(catalog).await?;
    let provider = IcebergCatalogProvider::try_new(catalog.clone())
        .await
        .map_err(|e| Error::External {
            system: "iceberg",
            message: format!("listing the lake's tables for DataFusion: {e}"),
            retryable: e.retryable(),
            source: Some(Box::new(e)),
        })?;
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(VIEW_CATALOG, namespace)
        .with_create_default_catalog_and_schema(true)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    ctx.register_catalog(LAKE_CATALOG, Arc::new(provider));
    time_travel::register(&ctx, &catalog, namespace, view, hot, sql).await?;
    Ok(ctx)
}

/// The lake of a pipeline: its first `iceberg` sink, or the first `tier` sink whose cold side
/// is an `iceberg` sink.
#[derive(Clone, Debug)]
pub struct PipelineLake {
    /// The lake's catalogue.
    pub catalog: IcebergCatalogConfig,
    /// The namespace the pipeline writes its tables to.
    pub namespace: String,
    /// Where the deltas not (or not only) in the lake are, which join time-travel reads.
    pub hot: Option<HotSide>,
}

/// The hot side of a pipeline's lake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotSide {
    /// The hot sink of this tier sink.
    Tier(String),
    /// The durable log of the pipeline's gateway source (records it still retains, flushed to
    /// the lake or not yet).
    Gateway(std::path::PathBuf),
}

/// Finds the lake of `plan` (see [`PipelineLake`]); an [`Error::Invalid`] when it has none.
pub fn pipeline_lake(plan: &Plan) -> Result<PipelineLake> {
    let gateway = plan.sources.iter().find_map(|(name, spec)| match spec {
        SourceSpec::Gateway(g) => Some(HotSide::Gateway(crate::gateway::serve::gateway_data_dir(
            plan, name, g,
        ))),
        _ => None,
    });
    for (name, spec) in plan.sinks.iter() {
        let (iceberg, hot) = match spec {
            SinkSpec::Iceberg(s) => (s, gateway.clone()),
            SinkSpec::Tier(t) => match t.cold.as_ref() {
                SinkSpec::Iceberg(s) => (s, Some(HotSide::Tier(name.to_string()))),
                _ => continue,
            },
            _ => continue,
        };
        return Ok(PipelineLake {
            catalog: crate::build::catalog_config(plan, &iceberg.catalog)?,
            namespace: iceberg.namespace.clone(),
            hot,
        });
    }
    Err(Error::invalid(
        "query",
        format!(
            "pipeline {:?} has no iceberg sink (nor a tier sink with an iceberg cold side)",
            plan.name
        ),
    ))
}

/// The deltas the hot side `side` of `plan`'s lake holds, per table: a tier's hot sink, or the
/// records a gateway's durable log retains (none when the gateway never ran here).
pub async fn hot_tier(plan: &Plan, side: &HotSide) -> Result<HotTier> {
    let mut hot = HotTier::new();
    match side {
        HotSide::Tier(tier) => {
            for table in &plan.tables {
                let batches = crate::adapters::hot::hot_deltas(plan, tier, table).await?;
                if !batches.is_empty() {
                    hot.insert(table.table.clone(), batches);
                }
            }
        }
        HotSide::Gateway(dir) => {
            if !dir.join("gateway.sqlite").exists() {
                return Ok(hot);
            }
            let log = crate::gateway::log::LogStore::open(dir).await?;
            for record in log.records().await? {
                hot.entry(record.table).or_default().push(record.deltas);
            }
        }
    }
    Ok(hot)
}

/// Runs `sql` over the `view` of the lake's tables (see [`view_session`]).
pub async fn query_view(
    catalog: &IcebergCatalogConfig,
    namespace: &str,
    view: LakeView,
    hot: &HotTier,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let ctx = view_session(catalog, namespace, view, hot, sql).await?;
    let frame = ctx.sql(sql).await.map_err(query_error)?;
    frame.collect().await.map_err(query_error)
}

/// Runs `sql` over the lake `catalog` describes and returns the result batches.
pub async fn query(catalog: &IcebergCatalogConfig, sql: &str) -> Result<Vec<RecordBatch>> {
    query_in(catalog, DEFAULT_NAMESPACE, sql).await
}

/// Like [`query`], with `namespace` as the default schema.
pub async fn query_in(
    catalog: &IcebergCatalogConfig,
    namespace: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let ctx = session_in(catalog, namespace).await?;
    let started = std::time::Instant::now();
    let frame = ctx.sql(sql).await.map_err(query_error)?;
    let batches = frame.collect().await.map_err(query_error)?;
    tracing::debug!(
        rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "lake query done"
    );
    Ok(batches)
}

/// Formats `batches` as a text table, as the CLI prints a query result.
pub fn format_batches(batches: &[RecordBatch]) -> String {
    match arrow::util::pretty::pretty_format_batches(batches) {
        Ok(table) => table.to_string(),
        Err(e) => format!("(the result cannot be shown as a table: {e})"),
    }
}

/// Sorts a DataFusion failure into LakeSync's kinds: reading the lake failed (external), or the
/// query itself is wrong (invalid, with DataFusion's message).
fn query_error(e: DataFusionError) -> Error {
    let external = matches!(
        e.find_root(),
        DataFusionError::IoError(_)
            | DataFusionError::ObjectStore(_)
            | DataFusionError::ParquetError(_)
            | DataFusionError::External(_)
            | DataFusionError::ExecutionJoin(_)
            | DataFusionError::ResourcesExhausted(_)
    );
    if external {
        Error::External {
            system: "datafusion",
            message: format!("running the lake query: {e}"),
            retryable: !matches!(e.find_root(), DataFusionError::External(_)),
            source: Some(Box::new(e)),
        }
    } else {
        Error::invalid("query", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[tokio::test]
    async fn bad_sql_is_invalid_input_and_an_empty_lake_answers() {
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(dir.path().join("c.db"), dir.path().join("wh"));
        let batches = query(&config, "SELECT 1 + 1 AS two").await.unwrap();
        assert!(format_batches(&batches).contains("| 2   |"));
        for sql in ["SELEC 1", "SELECT * FROM lakesync.nope"] {
            let err = query(&config, sql).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::User, "{err}");
            assert!(err.to_string().starts_with("invalid query: "), "{err}");
        }
    }
}
