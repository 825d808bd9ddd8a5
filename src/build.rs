//! Building a validated [`Plan`] into a runnable [`PipelineGraph`]: the only place where pipeline
//! specs meet the adapters. Building connects and opens things (files, catalogues); everything
//! that can be checked without doing so was checked by validation.

use std::collections::HashMap;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::prefix::PrefixStore;

use crate::adapters::bigquery::source::BigQuerySourceOptions;
use crate::adapters::bigquery::{
    BigQueryConfig, BigQuerySink, BigQuerySinkOptions, BigQuerySource, BigQueryStrategy,
    BigQueryTableSpec, Credentials,
};
use crate::adapters::cloudwatch::client::{Backoff, ClientOptions};
use crate::adapters::cloudwatch::{CloudWatchOptions, CloudWatchSource, parse_start_time};
use crate::adapters::iceberg::storage::split_s3_url;
use crate::adapters::iceberg::{IcebergCatalogConfig, IcebergSink, S3Config};
use crate::adapters::jsonl::{JsonlFormat, JsonlSource};
use crate::adapters::mysql::{
    MysqlSink, MysqlSinkOptions, MysqlSource, MysqlSourceOptions, MysqlStrategy, MysqlTableSpec,
};
use crate::adapters::parquet::{ParquetCompression, ParquetSink};
use crate::adapters::postgres::{
    PostgresSink, PostgresSinkOptions, PostgresSource, PostgresSourceOptions, PostgresStrategy,
    PostgresTableSpec,
};
use crate::adapters::sqlite::{
    SqliteSink, SqliteSinkOptions, SqliteSource, SqliteSourceOptions, SqliteStrategy,
    SqliteTableSpec,
};
use crate::config::plan::Plan;
use crate::config::spec::{self, CatalogSpec, OperatorSpec, SinkSpec, SourceSpec};
use crate::gateway::Gateway;
use crate::gateway::source::GatewaySource;
use crate::kernel::rules::ClientFilter;
use crate::ops::filter::FilterOperator;
use crate::runtime::api::{Sink, Source, TableRef};
use crate::runtime::pipeline::{FlushPolicy, NodeRef, OperatorNode, PipelineGraph, SinkNode};
use crate::runtime::tier::TierSink;
use crate::{Error, Result};

/// Builds the runnable graph of `plan`. A plan with a gateway source needs the gateway
/// opened first: see [`build_with`].
pub async fn build(plan: &Plan) -> Result<PipelineGraph> {
    build_with(plan, &HashMap::new()).await
}

/// Builds the runnable graph of `plan`, reading gateway sources from the opened `gateways`
/// (by source name); an admin flush on any of them commits an epoch.
pub async fn build_with(plan: &Plan, gateways: &HashMap<String, Gateway>) -> Result<PipelineGraph> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    let mut source_index = std::collections::HashMap::new();
    let mut flush_requests = None;
    for (name, spec) in plan.sources.iter() {
        source_index.insert(name.to_string(), sources.len());
        if let SourceSpec::Gateway(_) = spec {
            let gateway = gateways.get(name).ok_or_else(|| {
                Error::invalid(
                    "pipeline",
                    format!("source {name:?} is a gateway: run this file with `lakesync serve`"),
                )
            })?;
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            gateway.set_flush_channel(tx);
            flush_requests = Some(rx);
            sources.push(Box::new(GatewaySource::new(name, gateway.clone())));
            continue;
        }
        sources.push(build_source(plan, name, spec).await?);
    }

    let mut operators: Vec<OperatorNode> = Vec::new();
    let mut operator_index = std::collections::HashMap::new();
    let node = |input: &str, ops: &std::collections::HashMap<String, usize>| -> Result<NodeRef> {
        if let Some(&i) = source_index.get(input) {
            Ok(NodeRef::Source(i))
        } else if let Some(&i) = ops.get(input) {
            Ok(NodeRef::Operator(i))
        } else {
            Err(Error::internal(format!(
                "validated plan has a dangling input {input:?}"
            )))
        }
    };
    for name in &plan.operator_order {
        let spec = plan
            .operators
            .get(name)
            .ok_or_else(|| Error::internal(format!("operator {name:?} missing")))?;
        let input = node(spec.input(), &operator_index)?;
        let operator = match spec {
            OperatorSpec::Filter(_) => {
                let filter = plan
                    .filters
                    .get(name)
                    .ok_or_else(|| Error::internal(format!("filter {name:?} has no plan")))?;
                let lane_tables = tables_of(plan, root(plan, spec.input()));
                Box::new(
                    FilterOperator::new(
                        name.clone(),
                        ClientFilter::new(&filter.rules, &filter.claims),
                    )
                    .with_tables(&lane_tables)?,
                )
            }
        };
        operator_index.insert(name.clone(), operators.len());
        operators.push(OperatorNode {
            name: name.clone(),
            operator,
            input,
        });
    }

    let mut sinks = Vec::new();
    for (name, spec) in plan.sinks.iter() {
        let input = spec
            .input()
            .ok_or_else(|| Error::internal(format!("sink {name:?} has no input")))?;
        sinks.push(SinkNode {
            name: name.to_string(),
            sink: build_sink(plan, &plan.name, name, spec).await?,
            input: node(input, &operator_index)?,
            required: spec.is_required(),
        });
    }

    Ok(PipelineGraph {
        name: plan.name.clone(),
        state_dir: plan.state_dir.clone(),
        flush: FlushPolicy {
            max_rows: plan.flush.max_rows as usize,
            max_bytes: plan.flush.max_bytes.0 as usize,
            max_table_bytes: plan.flush.max_table_bytes.map(|b| b.0 as usize),
            max_age: plan.flush.max_age.0,
        },
        sources,
        operators,
        sinks,
        flush_requests,
    })
}

/// The source at the head of `input`'s chain.
fn root<'a>(plan: &'a Plan, mut input: &'a str) -> &'a str {
    while let Some(op) = plan.operators.get(input) {
        input = op.input();
    }
    input
}

/// The declared tables of `source`.
fn tables_of(plan: &Plan, source: &str) -> Vec<TableRef> {
    plan.source_tables(source)
        .0
        .into_iter()
        .map(|t| Arc::new(t.into_owned()))
        .collect()
}

async fn build_source(plan: &Plan, name: &str, spec: &SourceSpec) -> Result<Box<dyn Source>> {
    Ok(match spec {
        SourceSpec::Jsonl(s) => {
            let table = plan.table(&s.table).ok_or_else(|| {
                Error::internal(format!("jsonl table {:?} not declared", s.table))
            })?;
            let format = match s.format {
                spec::JsonlFormat::Rows => JsonlFormat::Rows {
                    id_column: s.id_column().to_string(),
                },
                spec::JsonlFormat::Deltas => JsonlFormat::Deltas,
            };
            Box::new(JsonlSource::new(
                name,
                plan.resolve_path(&s.path),
                Arc::new(table.clone()),
                format,
                s.client_id(name),
                None,
            ))
        }
        SourceSpec::Gateway(_) => {
            return Err(Error::internal(format!(
                "gateway source {name:?} is built by build_with"
            )));
        }
        SourceSpec::Postgres(s) => Box::new(postgres_source(plan, name, s)?),
        SourceSpec::Iceberg(s) => {
            let table = plan.table(&s.table).ok_or_else(|| {
                Error::internal(format!("iceberg source table {:?} not declared", s.table))
            })?;
            let catalog =
                crate::adapters::iceberg::connect(&catalog_config(plan, &s.catalog)?).await?;
            let ident = iceberg::TableIdent::new(
                iceberg::NamespaceIdent::new(s.namespace.clone()),
                s.iceberg_table.clone().unwrap_or_else(|| s.table.clone()),
            );
            Box::new(
                crate::adapters::iceberg::source::IcebergSource::new(
                    name,
                    catalog,
                    ident,
                    Arc::new(table.clone()),
                    s.id_column.clone(),
                )
                .with_range(crate::adapters::iceberg::source::SnapshotRange {
                    from: s.from_snapshot,
                    to: s.to_snapshot,
                }),
            )
        }
        SourceSpec::Mysql(s) => Box::new(mysql_source(plan, name, s).await?),
        SourceSpec::Cloudwatch(s) => Box::new(cloudwatch_source(name, s)?),
        SourceSpec::Bigquery(s) => Box::new(bigquery_source(plan, name, s)?),
        SourceSpec::Sqlite(s) => {
            let tables = s
                .tables
                .iter()
                .map(|t| {
                    let strategy = match t.strategy {
                        spec::CaptureStrategy::Cursor => SqliteStrategy::Cursor {
                            cursor_column: t.cursor_column.clone().unwrap_or_default(),
                            id_column: t.id_column.clone(),
                        },
                        spec::CaptureStrategy::Diff => SqliteStrategy::Diff {
                            id_column: t.id_column.clone(),
                        },
                        spec::CaptureStrategy::DeltaLog => SqliteStrategy::DeltaLog,
                    };
                    SqliteTableSpec {
                        table: t.table.clone(),
                        strategy,
                        schema: plan.table(&t.table).cloned(),
                    }
                })
                .collect();
            let options = SqliteSourceOptions {
                state_dir: Some(plan.state_dir.join("sources")),
                ..Default::default()
            };
            Box::new(SqliteSource::open(&plan.resolve_path(&s.path), name, tables, options).await?)
        }
    })
}

/// Builds a CloudWatch Logs source; a relative `start_time` is resolved against now (the
/// source records it in its start position, so it stays fixed once an epoch is planned).
fn cloudwatch_source(name: &str, s: &spec::CloudWatchSourceSpec) -> Result<CloudWatchSource> {
    let here = format!("sources.{name}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let start_ms = match &s.start_time {
        None => 0,
        Some(text) => parse_start_time(text, now).map_err(|problem| {
            Error::invalid("cloudwatch source", format!("{here}.start_time: {problem}"))
        })?,
    };
    let options = CloudWatchOptions {
        client: ClientOptions {
            region: s.region().map(str::to_string),
            endpoint: s.endpoint().map(str::to_string),
        },
        log_groups: s
            .log_groups
            .iter()
            .enumerate()
            .map(|(i, group)| (group.clone(), format!("{here}.log_groups[{i}]")))
            .collect(),
        stream_prefix: s.stream_prefix.clone(),
        filter_pattern: s.filter_pattern.clone().filter(|p| !p.is_empty()),
        start_ms,
        json_fields: s.json_columns(),
        page_size: s.page_size,
        lookback: s.lookback.0,
        poll_interval: s.poll_interval.0,
        backoff: Backoff::default(),
    };
    CloudWatchSource::new(name, Arc::new(s.table_schema()), options)
}

/// Builds a BigQuery source (every table declared: validation checked).
fn bigquery_source(
    plan: &Plan,
    name: &str,
    s: &spec::BigQuerySourceSpec,
) -> Result<BigQuerySource> {
    let mut tables = Vec::with_capacity(s.tables.len());
    for t in &s.tables {
        let schema = plan.table(&t.table).ok_or_else(|| {
            Error::internal(format!("bigquery source table {:?} not declared", t.table))
        })?;
        let strategy = match t.strategy {
            spec::SqlStrategy::Snapshot => BigQueryStrategy::Snapshot,
            spec::SqlStrategy::Cursor => BigQueryStrategy::Cursor {
                cursor_column: t.cursor_column.clone().unwrap_or_default(),
            },
            spec::SqlStrategy::Diff => BigQueryStrategy::Diff,
            spec::SqlStrategy::Cdc => {
                return Err(Error::internal(format!(
                    "bigquery source {name:?}: cdc passed validation"
                )));
            }
        };
        tables.push(BigQueryTableSpec {
            schema: Arc::new(schema.clone()),
            strategy,
            id_column: t.id_column.clone(),
        });
    }
    let config = BigQueryConfig {
        project: s.project.clone(),
        dataset: s.dataset.clone(),
        credentials: Credentials::from_setting(s.credentials.as_deref(), s.endpoint.as_deref()),
        endpoint: s.endpoint.clone(),
        grpc_endpoint: s.grpc_endpoint.clone(),
        location: None,
    };
    let options = BigQuerySourceOptions {
        parallelism: s.parallelism as usize,
        state_dir: Some(plan.state_dir.join("sources")),
        ..Default::default()
    };
    BigQuerySource::new(name, config, tables, options)
}

/// Builds a MySQL source (`strategy: snapshot` is a streamed full read).
async fn mysql_source(plan: &Plan, name: &str, s: &spec::MysqlSourceSpec) -> Result<MysqlSource> {
    let mut tables = Vec::with_capacity(s.tables.len());
    for t in &s.tables {
        let id_column = t.id_column.clone();
        let strategy = match t.strategy {
            spec::SqlStrategy::Cursor => MysqlStrategy::Cursor {
                cursor_column: t.cursor_column.clone().unwrap_or_default(),
                id_column,
                lookback: t.lookback.as_ref().map(|d| d.0),
            },
            spec::SqlStrategy::Diff => MysqlStrategy::Diff { id_column },
            spec::SqlStrategy::Snapshot => MysqlStrategy::Snapshot { id_column },
            spec::SqlStrategy::Cdc => MysqlStrategy::Cdc { id_column },
        };
        tables.push(MysqlTableSpec {
            table: t.table.clone(),
            strategy,
            schema: plan.table(&t.table).cloned(),
        });
    }
    let options = MysqlSourceOptions {
        state_dir: Some(plan.state_dir.join("sources")),
        server_id: s.server_id,
        ..Default::default()
    };
    MysqlSource::open(&s.url, name, tables, options).await
}

/// Builds the sink `name` of `spec`, marking its commits as `pipeline`'s.
pub async fn build_sink(
    plan: &Plan,
    pipeline: &str,
    name: &str,
    spec: &SinkSpec,
) -> Result<Box<dyn Sink>> {
    Ok(match spec {
        SinkSpec::Iceberg(s) => {
            let catalog = catalog_config(plan, &s.catalog)?;
            Box::new(IcebergSink::connect(&catalog, &s.namespace, pipeline, name).await?)
        }
        SinkSpec::Bigquery(s) => Box::new(
            BigQuerySink::open(
                BigQueryConfig {
                    project: s.project.clone(),
                    dataset: s.dataset.clone(),
                    credentials: Credentials::from_setting(
                        s.credentials.as_deref(),
                        s.endpoint.as_deref(),
                    ),
                    endpoint: s.endpoint.clone(),
                    grpc_endpoint: None,
                    location: s.location.clone(),
                },
                pipeline,
                name,
                BigQuerySinkOptions {
                    materialise: s.materialise,
                },
            )
            .await?,
        ),
        SinkSpec::Postgres(s) => Box::new(
            PostgresSink::open(
                &s.url,
                &s.schema,
                pipeline,
                name,
                PostgresSinkOptions {
                    materialise: s.materialise,
                },
            )
            .await?,
        ),
        SinkSpec::Mysql(s) => Box::new(
            MysqlSink::open(
                &s.url,
                pipeline,
                name,
                MysqlSinkOptions {
                    materialise: s.materialise,
                },
            )
            .await?,
        ),
        SinkSpec::Sqlite(s) => Box::new(
            SqliteSink::open(
                &plan.resolve_path(&s.path),
                pipeline,
                name,
                SqliteSinkOptions {
                    materialise: s.materialise,
                },
            )
            .await?,
        ),
        SinkSpec::Parquet(s) => {
            let compression = match s.compression {
                spec::ParquetCompression::Zstd => ParquetCompression::Zstd,
                spec::ParquetCompression::Snappy => ParquetCompression::Snappy,
                spec::ParquetCompression::None => ParquetCompression::None,
            };
            if let Some((bucket, prefix)) = split_s3_url(&s.path) {
                let store = s3_config(s.s3.as_ref()).store(bucket)?;
                let store: Arc<dyn ObjectStore> = match prefix.trim_end_matches('/') {
                    "" => store,
                    prefix => Arc::new(PrefixStore::new(store, prefix)),
                };
                Box::new(ParquetSink::new(name, pipeline, store, compression))
            } else if s.path.contains("://") {
                return Err(Error::invalid(
                    "parquet sink",
                    format!(
                        "sinks.{name}.path: {:?}: only s3:// URLs and local directories are supported",
                        s.path
                    ),
                ));
            } else {
                Box::new(ParquetSink::local(
                    name,
                    pipeline,
                    &plan.resolve_path(&s.path),
                    compression,
                )?)
            }
        }
        SinkSpec::Tier(s) => {
            let hot = Box::pin(build_sink(plan, pipeline, &format!("{name}.hot"), &s.hot)).await?;
            let cold =
                Box::pin(build_sink(plan, pipeline, &format!("{name}.cold"), &s.cold)).await?;
            Box::new(TierSink::new(name, s.max_age.0, hot, cold))
        }
    })
}

/// The Postgres source of `spec`.
fn postgres_source(
    plan: &Plan,
    name: &str,
    spec: &spec::PostgresSourceSpec,
) -> Result<PostgresSource> {
    let tables = spec
        .tables
        .iter()
        .map(|t| PostgresTableSpec {
            table: t.table.clone(),
            strategy: match t.strategy {
                spec::SqlStrategy::Cursor => PostgresStrategy::Cursor {
                    cursor_column: t.cursor_column.clone().unwrap_or_default(),
                    lookback: t.lookback.map(|l| l.0),
                },
                spec::SqlStrategy::Diff => PostgresStrategy::Diff,
                spec::SqlStrategy::Cdc => PostgresStrategy::Cdc,
                spec::SqlStrategy::Snapshot => PostgresStrategy::Snapshot,
            },
            id_column: t.id_column.clone(),
            schema: plan.table(&t.table).cloned(),
        })
        .collect();
    let default_name = format!("lakesync_{}", name.to_ascii_lowercase());
    PostgresSource::new(
        name,
        &spec.url,
        tables,
        PostgresSourceOptions {
            pg_schema: spec.schema.clone(),
            poll_interval: spec.poll_interval.0,
            slot: spec.slot.clone().unwrap_or_else(|| default_name.clone()),
            publication: spec.publication.clone().unwrap_or(default_name),
            heartbeat_interval: spec.heartbeat_interval.0,
            parallelism: spec.parallelism as usize,
            batch_size: crate::adapters::postgres::source::DEFAULT_BATCH_SIZE,
            state_dir: Some(plan.state_dir.join("sources")),
            chunk_blocks: crate::adapters::postgres::snapshot::CHUNK_BLOCKS,
        },
    )
}

/// The catalogue a spec names, with paths resolved against the pipeline file.
pub fn catalog_config(plan: &Plan, spec: &CatalogSpec) -> Result<IcebergCatalogConfig> {
    match spec {
        CatalogSpec::Sql(s) => Ok(IcebergCatalogConfig::sql(
            plan.resolve_path(&s.uri),
            plan.resolve_path(&s.warehouse),
        )),
        CatalogSpec::Rest(s) => Ok(IcebergCatalogConfig::Rest {
            uri: s.uri.clone(),
            warehouse: s.warehouse.clone(),
            name: crate::adapters::iceberg::DEFAULT_CATALOG_NAME.to_string(),
            credential: s.credential.clone(),
            token: s.token.clone(),
            s3: s3_config(s.s3.as_ref()),
        }),
    }
}

/// The S3 client settings of an `s3:` block (none: everything from the environment).
pub fn s3_config(spec: Option<&spec::S3Spec>) -> S3Config {
    let Some(spec) = spec else {
        return S3Config::default();
    };
    let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    S3Config {
        endpoint: set(&spec.endpoint),
        region: set(&spec.region),
        access_key_id: set(&spec.access_key_id),
        secret_access_key: set(&spec.secret_access_key),
        session_token: None,
        path_style: spec.path_style,
    }
}
