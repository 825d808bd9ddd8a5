//! The pipeline file as plain data: what `pipelines/*.yaml` may say, and nothing else.
//!
//! Every struct denies unknown fields. Sources, operators, sinks and Iceberg catalogues are
//! closed enums tagged by their `type` field: the enum *is* the registry, so adding an adapter
//! means adding a variant here, and the JSON Schema, the parser and the "known types" hints follow.
//!
//! These types only describe the file. Cross-references (an `input` naming a source, a `table`
//! naming a declared table, rules naming columns) are checked by [`super::validate()`]; defaults
//! that depend on other fields (`client_id`, `state_dir`) are resolved there too.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::json_schema::{SyncRulesDoc, TableSchemaDoc};
use super::units::{HumanDuration, HumanSize};
use crate::kernel::schema::TableSchema;

/// The only pipeline file version this LakeSync reads.
pub const PIPELINE_VERSION: u32 = 1;

/// A pipeline file: declared tables, and sources → operators → sinks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a pipeline: a mapping with version, name, sources and sinks"
)]
#[schemars(title = "LakeSync pipeline")]
pub struct PipelineSpec {
    /// The file format version; must be 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// The pipeline's name: lowercase letters, digits, `_` and `-`, starting with a letter or
    /// digit, at most 63 characters. Names the state directory and metrics.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub name: String,
    /// Where the pipeline keeps its checkpoints; default `.lakesync/<name>`. A relative path is
    /// relative to the pipeline file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// When sinks flush: whichever threshold is reached first.
    #[serde(default)]
    pub flush: FlushSpec,
    /// Declared table schemas (the kernel's `TableSchema` JSON shape).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<TableSchemaDoc>")]
    pub tables: Vec<TableSchema>,
    /// Where deltas come from, by name.
    #[serde(default)]
    pub sources: Named<SourceSpec>,
    /// Per-table transformations, by name; each reads a source or another operator.
    #[serde(default, skip_serializing_if = "Named::is_empty")]
    pub operators: Named<OperatorSpec>,
    /// Where deltas go, by name; each reads a source or an operator.
    #[serde(default)]
    pub sinks: Named<SinkSpec>,
}

/// Flush thresholds: a sink flushes when any one is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "flush settings: a mapping with max_rows, max_bytes, max_table_bytes, max_age"
)]
pub struct FlushSpec {
    /// Flush after this many deltas (default 100000).
    #[serde(default = "FlushSpec::default_max_rows")]
    pub max_rows: u64,
    /// Flush after this many bytes of buffered deltas (default 64MiB).
    #[serde(default = "FlushSpec::default_max_bytes")]
    pub max_bytes: HumanSize,
    /// Flush when any one table's buffered deltas reach this many bytes (default: no per-table
    /// budget), so one busy table cannot hold the others' changes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_table_bytes: Option<HumanSize>,
    /// Flush when the oldest buffered delta is this old (default 5s).
    #[serde(default = "FlushSpec::default_max_age")]
    pub max_age: HumanDuration,
}

impl FlushSpec {
    fn default_max_rows() -> u64 {
        100_000
    }

    fn default_max_bytes() -> HumanSize {
        HumanSize::mib(64)
    }

    fn default_max_age() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
}

impl Default for FlushSpec {
    /// 100000 rows, 64MiB, 5s.
    fn default() -> Self {
        Self {
            max_rows: Self::default_max_rows(),
            max_bytes: Self::default_max_bytes(),
            max_table_bytes: None,
            max_age: Self::default_max_age(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The registries: closed enums tagged by `type`.
// ---------------------------------------------------------------------------------------------

/// A closed enum tagged by its `type` field, each variant holding one spec struct.
///
/// Serialisation and the JSON Schema are serde's and schemars' internally tagged derives.
/// Deserialisation is written here instead of derived: serde's derive buffers the whole mapping
/// before it knows the variant, which loses where in the file each field was. This version reads
/// `type` first (the pipeline reader always presents it first) and then hands the rest of the
/// mapping straight to the variant's struct, so an error inside a source still names its exact
/// line and path. A `type` that is not first (e.g. from another deserialiser) falls back to
/// buffering.
macro_rules! tagged_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident as $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident($spec:ty) = $tag:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $tag)] $variant($spec), )+
        }

        impl $name {
            /// Every `type` name, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$($tag),+];

            /// This spec's `type` name.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $tag, )+
                }
            }
        }

        impl Tagged for $name {
            const WHAT: &'static str = $what;
            const TYPES: &'static [&'static str] = &[$($tag),+];

            fn deserialize_variant<'de, D: Deserializer<'de>>(
                tag: &str,
                body: D,
            ) -> Result<Self, D::Error> {
                match tag {
                    $( $tag => <$spec as Deserialize>::deserialize(body).map(Self::$variant), )+
                    other => Err(de::Error::custom(unknown_type_message::<Self>(other))),
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_map(TaggedVisitor::<Self>(std::marker::PhantomData))
            }
        }
    };
}

/// A closed enum tagged by `type` (see `tagged_enum!`).
trait Tagged: Sized {
    /// What a value is, for messages: `source`, `sink`, ...
    const WHAT: &'static str;
    /// The known `type` names.
    const TYPES: &'static [&'static str];

    /// Deserialises the variant named `tag` from the rest of the mapping.
    fn deserialize_variant<'de, D: Deserializer<'de>>(tag: &str, body: D)
    -> Result<Self, D::Error>;
}

/// The message for an unknown `type`, with the hint on its own line (see the pipeline reader's
/// error type, which splits it off).
fn unknown_type_message<T: Tagged>(tag: &str) -> String {
    let known = super::suggest::list(T::TYPES);
    match super::suggest::did_you_mean(tag, T::TYPES.iter().copied()) {
        Some(guess) => format!(
            "unknown {} type {tag:?}\nhint: {guess} (known {} types: {known})",
            T::WHAT,
            T::WHAT
        ),
        None => format!(
            "unknown {} type {tag:?}\nhint: known {} types: {known}",
            T::WHAT,
            T::WHAT
        ),
    }
}

struct TaggedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} spec: a mapping with `type` (one of {})",
            T::WHAT,
            super::suggest::list(T::TYPES)
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Err(missing_type::<T, A::Error>());
        };
        if first == "type" {
            let tag = map.next_value_seed(TagSeed::<T>(std::marker::PhantomData))?;
            return T::deserialize_variant(&tag, de::value::MapAccessDeserializer::new(map));
        }
        // `type` is not first: buffer the mapping, then dispatch.
        let mut rest = serde_json::Map::new();
        let mut tag = None;
        let mut key = Some(first);
        while let Some(k) = key {
            if k == "type" {
                tag = Some(map.next_value_seed(TagSeed::<T>(std::marker::PhantomData))?);
            } else {
                rest.insert(k, map.next_value::<serde_json::Value>()?);
            }
            key = map.next_key::<String>()?;
        }
        let tag = tag.ok_or_else(missing_type::<T, A::Error>)?;
        T::deserialize_variant(&tag, serde_json::Value::Object(rest)).map_err(de::Error::custom)
    }
}

fn missing_type<T: Tagged, E: de::Error>() -> E {
    E::custom(format!(
        "missing field `type`\nhint: known {} types: {}",
        T::WHAT,
        super::suggest::list(T::TYPES)
    ))
}

/// Reads a `type` value and refuses unknown ones where they are, so the error points at them.
struct TagSeed<T>(std::marker::PhantomData<T>);

impl<'de, T: Tagged> DeserializeSeed<'de> for TagSeed<T> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        struct TagVisitor<T>(std::marker::PhantomData<T>);

        impl<T: Tagged> Visitor<'_> for TagVisitor<T> {
            type Value = String;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a {} type name", T::WHAT)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                if T::TYPES.contains(&v) {
                    Ok(v.to_string())
                } else {
                    Err(E::custom(unknown_type_message::<T>(v)))
                }
            }
        }

        deserializer.deserialize_str(TagVisitor::<T>(std::marker::PhantomData))
    }
}

tagged_enum! {
    /// A source: where deltas come from.
    pub enum SourceSpec as "source" {
        /// A JSON-lines file of rows or deltas.
        Jsonl(JsonlSourceSpec) = "jsonl",
        /// Tables of a SQLite database, polled for changes.
        Sqlite(SqliteSourceSpec) = "sqlite",
        /// Tables of a Postgres database: polled, read by logical decoding (CDC) or copied whole.
        Postgres(PostgresSourceSpec) = "postgres",
        /// Tables of a MySQL or MariaDB database: polled or read from the ROW binlog (CDC).
        Mysql(MysqlSourceSpec) = "mysql",
        /// The sync gateway (`lakesync serve`): what clients push over Arrow Flight, HTTP and
        /// WebSocket.
        Gateway(Box<GatewaySourceSpec>) = "gateway",
        /// An Iceberg table, read whole (one snapshot) as deltas: a LakeSync lake table, or any
        /// Iceberg table keyed by an id column.
        Iceberg(IcebergSourceSpec) = "iceberg",
        /// CloudWatch Logs: the events of log groups (optionally a stream prefix and a filter
        /// pattern), one row per event, read incrementally with `FilterLogEvents`.
        Cloudwatch(CloudWatchSourceSpec) = "cloudwatch",
        /// Tables of a BigQuery dataset: read whole through the Storage Read API, or polled.
        Bigquery(BigQuerySourceSpec) = "bigquery",
    }
}

/// CloudWatch Logs read as a source (see docs/cloudwatch.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a cloudwatch source: a mapping with log_groups"
)]
pub struct CloudWatchSourceSpec {
    /// The AWS region (default: the standard AWS chain — `AWS_REGION`, then the profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// An endpoint URL replacing AWS's (an emulator such as moto, or a VPC endpoint). Empty
    /// means unset, so `${VAR:-}` works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The log groups to read (at least one): names of 1–512 characters from
    /// `[.-_/#A-Za-z0-9]`.
    pub log_groups: Vec<String>,
    /// Only streams whose name starts with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_prefix: Option<String>,
    /// A CloudWatch Logs filter pattern (e.g. `ERROR` or `{ $.level = "error" }`), sent as the
    /// request's `filterPattern` parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_pattern: Option<String>,
    /// Where reading starts, by event timestamp: RFC 3339 (`2026-11-01T00:00:00Z`) or relative
    /// to when the pipeline first runs (`-24h`, `-7d`). Default: the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// The output table (default `log_events`); not declared under `tables:` — its columns are
    /// fixed, plus `json_fields`.
    #[serde(default = "CloudWatchSourceSpec::default_table")]
    pub table: String,
    /// Parse messages that are JSON objects and extract the `json_fields` columns from their
    /// top-level keys (default false).
    #[serde(default)]
    pub parse_json: bool,
    /// With `parse_json`: the columns to extract, in order, each a top-level key of the message
    /// and its type (`level: string`, `status: integer`). A key that is missing, or whose value
    /// does not fit the type, gives a null.
    #[serde(default, skip_serializing_if = "Named::is_empty")]
    pub json_fields: Named<JsonFieldType>,
    /// How often to look for new events when following (default 5s).
    #[serde(default = "default_sql_poll_interval")]
    pub poll_interval: HumanDuration,
    /// Events per `FilterLogEvents` page, 1–10000 (default 10000); a batch is at most one page.
    #[serde(default = "CloudWatchSourceSpec::default_page_size")]
    pub page_size: u32,
    /// How far behind the newest event delivered a late event is still picked up (default 5m):
    /// each poll re-reads this window and skips the event ids it has delivered.
    #[serde(default = "CloudWatchSourceSpec::default_lookback")]
    pub lookback: HumanDuration,
}

impl CloudWatchSourceSpec {
    /// The schema of the table this source produces: the fixed columns, then `json_fields`.
    pub fn table_schema(&self) -> TableSchema {
        crate::adapters::cloudwatch::rows::table_schema(&self.table, &self.json_columns())
    }

    /// The extracted JSON fields as columns, in file order.
    pub fn json_columns(&self) -> Vec<(String, crate::kernel::schema::ColumnType)> {
        self.json_fields
            .iter()
            .map(|(name, ty)| (name.to_string(), ty.column_type()))
            .collect()
    }

    /// The endpoint, when set and not empty.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref().filter(|e| !e.trim().is_empty())
    }

    /// The region, when set and not empty.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref().filter(|r| !r.trim().is_empty())
    }

    fn default_table() -> String {
        "log_events".to_string()
    }

    fn default_page_size() -> u32 {
        10_000
    }

    fn default_lookback() -> HumanDuration {
        HumanDuration::from_secs(300)
    }
}

/// The type of a column extracted from JSON log messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JsonFieldType {
    /// Text; a number or boolean is kept as its JSON text, an object or array as JSON.
    String,
    /// A 64-bit integer (a JSON integer, or text that parses as one).
    Integer,
    /// A 64-bit float (a JSON number, or text that parses as one).
    Number,
    /// A boolean (`true`/`false`, as JSON or text).
    Boolean,
    /// An RFC 3339 string, or a number of milliseconds since the Unix epoch.
    Timestamp,
    /// Any JSON value, kept as JSON.
    Json,
}

impl JsonFieldType {
    /// The LakeSync column type.
    pub fn column_type(self) -> crate::kernel::schema::ColumnType {
        use crate::kernel::schema::ColumnType;
        match self {
            Self::String => ColumnType::String,
            Self::Integer => ColumnType::Integer,
            Self::Number => ColumnType::Number,
            Self::Boolean => ColumnType::Boolean,
            Self::Timestamp => ColumnType::Timestamp,
            Self::Json => ColumnType::Json,
        }
    }
}

/// An Iceberg table read as a source (see docs/lakehouse.md, "The lake as a source").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an iceberg source: a mapping with catalog and table"
)]
pub struct IcebergSourceSpec {
    /// The catalogue.
    pub catalog: CatalogSpec,
    /// The Iceberg namespace (default `lakesync`).
    #[serde(default = "IcebergSinkSpec::default_namespace")]
    pub namespace: String,
    /// The declared table the rows become deltas of.
    pub table: String,
    /// The Iceberg table's name, when it is not the declared table's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iceberg_table: Option<String>,
    /// The column holding each row's id, for a table that is not a LakeSync delta table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// Read only the changes made after this snapshot id (default: a whole snapshot first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<i64>,
    /// Stop after this snapshot id (default: follow new snapshots; with `--once`, the current
    /// one). With `from_snapshot`, the changes between two snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_snapshot: Option<i64>,
}

tagged_enum! {
    /// An operator: a per-table transformation of the deltas of its input.
    pub enum OperatorSpec as "operator" {
        /// Keeps the rows a sync rule shows to the given claims (evaluated on row state).
        Filter(FilterSpec) = "filter",
    }
}

tagged_enum! {
    /// A sink: where deltas go.
    pub enum SinkSpec as "sink" {
        /// Iceberg tables (local SQL catalogue or REST catalogue).
        Iceberg(IcebergSinkSpec) = "iceberg",
        /// A SQLite file of deltas and, by default, materialised tables.
        Sqlite(SqliteSinkSpec) = "sqlite",
        /// A Postgres database: a delta log and, by default, materialised tables.
        Postgres(PostgresSinkSpec) = "postgres",
        /// A MySQL or MariaDB database: a delta log and, by default, materialised tables.
        Mysql(MysqlSinkSpec) = "mysql",
        /// Parquet files of deltas, in a local directory or on S3.
        Parquet(ParquetSinkSpec) = "parquet",
        /// Routes each delta by its HLC age to a hot or a cold sink.
        Tier(TierSinkSpec) = "tier",
        /// A BigQuery dataset: a delta log and, by default, materialised tables.
        Bigquery(BigQuerySinkSpec) = "bigquery",
    }
}

tagged_enum! {
    /// An Iceberg catalogue.
    pub enum CatalogSpec as "catalog" {
        /// A SQL catalogue in a SQLite file, with a local warehouse directory.
        Sql(SqlCatalogSpec) = "sql",
        /// An Iceberg REST catalogue, optionally with S3 settings for the data files.
        Rest(RestCatalogSpec) = "rest",
    }
}

impl OperatorSpec {
    /// The name of the source or operator this operator reads.
    pub fn input(&self) -> &str {
        match self {
            Self::Filter(spec) => &spec.input,
        }
    }
}

impl SinkSpec {
    /// The name of the source or operator this sink reads (absent for a tier's inline sinks).
    pub fn input(&self) -> Option<&str> {
        match self {
            Self::Iceberg(s) => s.input.as_deref(),
            Self::Sqlite(s) => s.input.as_deref(),
            Self::Postgres(s) => s.input.as_deref(),
            Self::Mysql(s) => s.input.as_deref(),
            Self::Parquet(s) => s.input.as_deref(),
            Self::Tier(s) => s.input.as_deref(),
            Self::Bigquery(s) => s.input.as_deref(),
        }
    }

    /// `required` as written (absent for a tier's inline sinks).
    pub fn required_field(&self) -> Option<bool> {
        match self {
            Self::Iceberg(s) => s.required,
            Self::Sqlite(s) => s.required,
            Self::Postgres(s) => s.required,
            Self::Mysql(s) => s.required,
            Self::Parquet(s) => s.required,
            Self::Tier(s) => s.required,
            Self::Bigquery(s) => s.required,
        }
    }

    /// Whether the sink is primary (must succeed; the default) rather than best-effort.
    pub fn is_required(&self) -> bool {
        self.required_field().unwrap_or(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

/// A JSON-lines file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a jsonl source: a mapping with path and table"
)]
pub struct JsonlSourceSpec {
    /// The file; relative to the pipeline file's directory.
    pub path: String,
    /// The declared table the lines belong to.
    pub table: String,
    /// What each line is (default `rows`).
    #[serde(default)]
    pub format: JsonlFormat,
    /// For `format: rows`: the key holding the row's identity (default `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// The writer id stamped on generated deltas (default `jsonl:<source name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl JsonlSourceSpec {
    /// The row identity key for `format: rows`.
    pub fn id_column(&self) -> &str {
        self.id_column.as_deref().unwrap_or("id")
    }

    /// The writer id for deltas generated by the source named `source`.
    pub fn client_id(&self, source: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("jsonl:{source}"))
    }
}

/// What a line of a JSON-lines source holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JsonlFormat {
    /// A row image: a JSON object keyed by column, with the row identity under `id_column`.
    /// The first image of a row becomes an INSERT, later ones UPDATEs of the columns that
    /// changed; `"_deleted": true` makes a DELETE.
    #[default]
    Rows,
    /// A delta in the original's JSON shape (`op`, `table`, `rowId`, `clientId`, `columns`,
    /// `hlc`, `deltaId`).
    Deltas,
}

/// A SQLite database whose tables are polled for changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a sqlite source: a mapping with path and tables"
)]
pub struct SqliteSourceSpec {
    /// The database file; relative to the pipeline file's directory.
    pub path: String,
    /// How often to look for changes when following (default 5s).
    #[serde(default = "SqliteSourceSpec::default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// The tables to read, and how.
    pub tables: Vec<SqliteTableSpec>,
}

impl SqliteSourceSpec {
    fn default_poll_interval() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
}

/// One table of a SQLite source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a table to read: a mapping with table and strategy"
)]
pub struct SqliteTableSpec {
    /// The table; when it is not declared under `tables`, its schema is discovered at run time.
    pub table: String,
    /// How changes are found.
    pub strategy: CaptureStrategy,
    /// For `strategy: cursor`: a column that grows with every change (e.g. `updated_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_column: Option<String>,
    /// The column holding the row's identity (default `id`).
    #[serde(default = "default_id_column")]
    pub id_column: String,
}

fn default_id_column() -> String {
    "id".to_string()
}

/// How a SQLite source finds changed rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptureStrategy {
    /// Rows whose `cursor_column` is past the last value seen (cannot see deletes).
    Cursor,
    /// Compare the table with the last snapshot (sees deletes; reads the whole table).
    Diff,
    /// A change-log table filled by triggers (sees every change, including deletes).
    DeltaLog,
}

/// A Postgres database whose tables are read by polling, logical decoding or a bulk copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a postgres source: a mapping with url and tables"
)]
pub struct PostgresSourceSpec {
    /// The connection URL, e.g. `postgres://user@host:5432/db`; use `${VAR}` for secrets.
    pub url: String,
    /// The Postgres schema the tables live in (default `public`).
    #[serde(default = "default_pg_schema")]
    pub schema: String,
    /// How often to look for changes when following (default 5s; CDC polls the slot at this
    /// interval too).
    #[serde(default = "default_sql_poll_interval")]
    pub poll_interval: HumanDuration,
    /// The tables to read, and how.
    pub tables: Vec<SqlTableSpec>,
    /// For `cdc` tables: the logical replication slot (default `lakesync_<source name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// For `cdc` tables: the publication (default `lakesync_<source name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// For `cdc` tables: how often an idle slot is moved past WAL that holds none of its
    /// changes, so an idle pipeline does not make the server keep WAL (default 10s).
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: HumanDuration,
    /// For `snapshot` tables: how many connections copy disjoint block ranges at once
    /// (default 1).
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
}

/// A MySQL or MariaDB database whose tables are read by polling or from the ROW binlog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mysql source: a mapping with url and tables"
)]
pub struct MysqlSourceSpec {
    /// The connection URL, e.g. `mysql://user@host:3306/db`; use `${VAR}` for secrets.
    pub url: String,
    /// How often to look for changes when following (default 5s).
    #[serde(default = "default_sql_poll_interval")]
    pub poll_interval: HumanDuration,
    /// The tables to read, and how.
    pub tables: Vec<SqlTableSpec>,
    /// For `cdc` tables: the replica server id this source announces to the binlog (default:
    /// derived from the source name). Must be unique among the server's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u32>,
}

fn default_pg_schema() -> String {
    "public".to_string()
}

fn default_sql_poll_interval() -> HumanDuration {
    HumanDuration::from_secs(5)
}

fn default_heartbeat_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}

fn default_parallelism() -> u32 {
    1
}

/// A BigQuery dataset whose tables are read whole through the Storage Read API (`snapshot`) or
/// polled with queries (`cursor`, `diff`). See docs/bigquery.md.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a bigquery source: a mapping with project, dataset and tables"
)]
pub struct BigQuerySourceSpec {
    /// The project the dataset belongs to (and queries run in).
    pub project: String,
    /// The dataset the tables live in.
    pub dataset: String,
    /// A service-account key: a file path, or the key's JSON (e.g. `${GCP_KEY_JSON}`). Default:
    /// application default credentials, or none when `endpoint` is set (an emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// The REST endpoint, for an emulator (e.g. `http://127.0.0.1:9050`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The Storage API (gRPC) endpoint, for an emulator (e.g. `http://127.0.0.1:9060`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_endpoint: Option<String>,
    /// For `snapshot` tables: how many read streams are read at once (default 4).
    #[serde(default = "default_bq_parallelism")]
    pub parallelism: u32,
    /// The tables to read, and how: `snapshot`, `cursor` or `diff` (all `snapshot`, or none).
    /// Each must be declared under `tables:`.
    pub tables: Vec<SqlTableSpec>,
}

fn default_bq_parallelism() -> u32 {
    4
}

/// One table of a Postgres or MySQL source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a table to read: a mapping with table and strategy"
)]
pub struct SqlTableSpec {
    /// The table; when it is not declared under `tables`, its schema is discovered from the
    /// database at run time.
    pub table: String,
    /// How changes are found.
    pub strategy: SqlStrategy,
    /// For `strategy: cursor`: a column that grows with every change (e.g. `updated_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_column: Option<String>,
    /// For `strategy: cursor`: how far behind the newest cursor value each poll looks again,
    /// for rows committed late with an older cursor value (default 5s for timestamp cursors,
    /// 0 otherwise). Rows re-read unchanged are not emitted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback: Option<HumanDuration>,
    /// The column holding the row's identity (default `id`).
    #[serde(default = "default_id_column")]
    pub id_column: String,
}

/// How a Postgres or MySQL source finds changed rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SqlStrategy {
    /// Rows whose `cursor_column` is past the last value seen (cannot see deletes).
    Cursor,
    /// Compare the table with the last snapshot (sees deletes; reads the whole table).
    Diff,
    /// Log-based change data capture: Postgres logical decoding (`pgoutput`), MySQL's ROW
    /// binlog. An initial snapshot, then every insert, update and delete in commit order.
    Cdc,
    /// The whole table as it is now, once (a backfill): Postgres reads it with binary `COPY`.
    Snapshot,
}

/// The sync gateway: clients push and pull over Arrow Flight, HTTP/JSON and WebSocket; what
/// they push flows on to this pipeline's operators and sinks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a gateway source: a mapping with id, listen, auth, sync_rules, limits"
)]
pub struct GatewaySourceSpec {
    /// The gateway id: routes carry it (`/v1/sync/{id}/…`) and a JWT's `gw` claim must equal it.
    pub id: String,
    /// The declared tables clients may push to (default: all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Where the durable log lives (default `<state_dir>/gateway`); relative to the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Addresses to listen on.
    #[serde(default)]
    pub listen: ListenSpec,
    /// JWT authentication (off when no secret is given).
    #[serde(default)]
    pub auth: AuthSpec,
    /// Sync rules deciding what each client sees (the original document format); none = every
    /// client sees every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<SyncRulesDoc>")]
    pub sync_rules: Option<serde_json::Value>,
    /// Limits (defaults are the original's).
    #[serde(default)]
    pub limits: GatewayLimitsSpec,
    /// The name of an `iceberg` sink of this pipeline whose lake checkpoints (made by
    /// `lakesync lake checkpoint`) the gateway serves for initial sync, filtered per client,
    /// together with the rows it holds itself (see docs/lakehouse.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lake_checkpoints: Option<String>,
}

/// Where the gateway listens. `port 0` picks a free port (printed at start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with flight and http")]
pub struct ListenSpec {
    /// Arrow Flight (gRPC) address (default `127.0.0.1:50051`).
    #[serde(default = "ListenSpec::default_flight")]
    pub flight: String,
    /// HTTP and WebSocket address (default `127.0.0.1:3000`).
    #[serde(default = "ListenSpec::default_http")]
    pub http: String,
}

impl ListenSpec {
    fn default_flight() -> String {
        "127.0.0.1:50051".to_string()
    }

    fn default_http() -> String {
        "127.0.0.1:3000".to_string()
    }
}

impl Default for ListenSpec {
    fn default() -> Self {
        Self {
            flight: Self::default_flight(),
            http: Self::default_http(),
        }
    }
}

/// JWT (HS256) authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with jwt_secrets")]
pub struct AuthSpec {
    /// Secrets a token may be signed with, newest first (several while rotating); use
    /// `${VAR}`. Empty = authentication off (a warning is logged at start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_secrets: Vec<String>,
}

/// Gateway limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "gateway limits: a mapping")]
pub struct GatewayLimitsSpec {
    /// Unflushed bytes at which pushes are refused with BACKPRESSURE (default 8MiB).
    #[serde(default = "GatewayLimitsSpec::default_backpressure")]
    pub backpressure_bytes: HumanSize,
    /// Most deltas in one push (default 10000).
    #[serde(default = "GatewayLimitsSpec::default_max_push_deltas")]
    pub max_push_deltas: u64,
    /// Largest HTTP push body or WebSocket frame (default 1MiB).
    #[serde(default = "GatewayLimitsSpec::default_max_push_bytes")]
    pub max_push_bytes: HumanSize,
    /// Deltas per pull when the client does not say (default 100).
    #[serde(default = "GatewayLimitsSpec::default_pull_limit")]
    pub default_pull_limit: u64,
    /// Most deltas per pull (default 10000).
    #[serde(default = "GatewayLimitsSpec::default_max_pull_limit")]
    pub max_pull_limit: u64,
    /// How far ahead of the server clock a delta's HLC may be (default 5s).
    #[serde(default = "GatewayLimitsSpec::default_max_drift")]
    pub max_drift: HumanDuration,
    /// Flushed changes are kept for pulls this long (default 7d)...
    #[serde(default = "GatewayLimitsSpec::default_retention")]
    pub retention: HumanDuration,
    /// ...and up to this many bytes (default 1GiB).
    #[serde(default = "GatewayLimitsSpec::default_retention_bytes")]
    pub retention_bytes: HumanSize,
    /// Requests per client per window, e.g. `{requests: 100, window: 60s}` (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Most concurrent WebSocket connections (default 1000).
    #[serde(default = "GatewayLimitsSpec::default_ws_connections")]
    pub ws_max_connections: u64,
    /// Most WebSocket messages per second per connection (default 50).
    #[serde(default = "GatewayLimitsSpec::default_ws_rate")]
    pub ws_max_messages_per_second: u64,
}

impl GatewayLimitsSpec {
    fn default_backpressure() -> HumanSize {
        HumanSize::mib(8)
    }
    fn default_max_push_deltas() -> u64 {
        10_000
    }
    fn default_max_push_bytes() -> HumanSize {
        HumanSize::mib(1)
    }
    fn default_pull_limit() -> u64 {
        100
    }
    fn default_max_pull_limit() -> u64 {
        10_000
    }
    fn default_max_drift() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    fn default_retention() -> HumanDuration {
        HumanDuration::from_secs(7 * 24 * 3600)
    }
    fn default_retention_bytes() -> HumanSize {
        HumanSize::mib(1024)
    }
    fn default_ws_connections() -> u64 {
        1000
    }
    fn default_ws_rate() -> u64 {
        50
    }
}

impl Default for GatewayLimitsSpec {
    fn default() -> Self {
        Self {
            backpressure_bytes: Self::default_backpressure(),
            max_push_deltas: Self::default_max_push_deltas(),
            max_push_bytes: Self::default_max_push_bytes(),
            default_pull_limit: Self::default_pull_limit(),
            max_pull_limit: Self::default_max_pull_limit(),
            max_drift: Self::default_max_drift(),
            retention: Self::default_retention(),
            retention_bytes: Self::default_retention_bytes(),
            rate_limit: None,
            ws_max_connections: Self::default_ws_connections(),
            ws_max_messages_per_second: Self::default_ws_rate(),
        }
    }
}

/// A fixed-window request limit per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with requests and window")]
pub struct RateLimitSpec {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window.
    pub window: HumanDuration,
}

// ---------------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------------

/// A sync-rule filter: keeps the rows the rules show to `claims`, evaluated on row state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a filter: a mapping with input and rules or rules_file"
)]
pub struct FilterSpec {
    /// The source or operator to read.
    pub input: String,
    /// Inline sync rules (the original document format). Exactly one of `rules` and
    /// `rules_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<SyncRulesDoc>")]
    pub rules: Option<serde_json::Value>,
    /// A JSON file of sync rules; relative to the pipeline file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_file: Option<String>,
    /// The JWT-like claims the rules are evaluated with (`jwt:<name>` values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, ClaimValues>,
}

/// A claim's values: one string, or a list of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimValues(pub Vec<String>);

impl Serialize for ClaimValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ClaimValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimVisitor;

        impl<'de> Visitor<'de> for ClaimVisitor {
            type Value = ClaimValues;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClaimValues, E> {
                Ok(ClaimValues(vec![v.to_string()]))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ClaimValues, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    values.push(v);
                }
                Ok(ClaimValues(values))
            }
        }

        deserializer.deserialize_any(ClaimVisitor)
    }
}

impl JsonSchema for ClaimValues {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ClaimValues".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A claim: one string, or a list of strings.",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
            ],
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Sinks
// ---------------------------------------------------------------------------------------------

/// Iceberg tables, one per LakeSync table, in `namespace`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an iceberg sink: a mapping with input and catalog"
)]
pub struct IcebergSinkSpec {
    /// The source or operator to read (required, except inside a tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `true` (default): a primary sink that must succeed; `false`: best-effort, retried, never
    /// fails the pipeline. Not allowed inside a tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// The catalogue.
    pub catalog: CatalogSpec,
    /// The Iceberg namespace (default `lakesync`).
    #[serde(default = "IcebergSinkSpec::default_namespace")]
    pub namespace: String,
}

impl IcebergSinkSpec {
    fn default_namespace() -> String {
        "lakesync".to_string()
    }
}

/// A SQL catalogue in a SQLite file, with a local warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a sql catalog: a mapping with uri and warehouse"
)]
pub struct SqlCatalogSpec {
    /// The catalogue's SQLite file; relative to the pipeline file's directory.
    pub uri: String,
    /// The warehouse directory; relative to the pipeline file's directory.
    pub warehouse: String,
}

/// An Iceberg REST catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a rest catalog: a mapping with uri and warehouse"
)]
pub struct RestCatalogSpec {
    /// The catalogue's base URL.
    pub uri: String,
    /// The warehouse name or location.
    pub warehouse: String,
    /// An OAuth2 client credential (`client_id:client_secret`); use `${VAR}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// A bearer token, instead of a credential (R2 Data Catalog's API token, say); use `${VAR}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// S3 settings for reading and writing data files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
}

/// S3 settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "s3 settings: a mapping")]
pub struct S3Spec {
    /// The endpoint URL, for S3-compatible stores (MinIO, R2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The access key id; use `${VAR}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The secret access key; use `${VAR}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Default: path-style when an endpoint is
    /// set (MinIO, SeaweedFS, R2), virtual-hosted-style (`bucket.endpoint/key`) on AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
}

/// A SQLite file: deltas, and (by default) materialised tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a sqlite sink: a mapping with input and path"
)]
pub struct SqliteSinkSpec {
    /// The source or operator to read (required, except inside a tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `true` (default): a primary sink; `false`: best-effort. Not allowed inside a tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// The database file; relative to the pipeline file's directory.
    pub path: String,
    /// Keep materialised tables (synced columns + `props` + `synced_at`); default true.
    #[serde(default = "default_true")]
    pub materialise: bool,
}

fn default_true() -> bool {
    true
}

/// A Postgres database: a delta log (`lakesync_deltas`) and, by default, materialised tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a postgres sink: a mapping with input and url"
)]
pub struct PostgresSinkSpec {
    /// The source or operator to read (required, except inside a tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `true` (default): a primary sink; `false`: best-effort. Not allowed inside a tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// The connection URL; use `${VAR}` for secrets.
    pub url: String,
    /// The Postgres schema written to (default `public`); created if missing.
    #[serde(default = "default_pg_schema")]
    pub schema: String,
    /// Keep materialised tables (synced columns + `props` + `synced_at`); default true.
    #[serde(default = "default_true")]
    pub materialise: bool,
}

/// A BigQuery dataset: a delta log (`lakesync_deltas`) and, by default, materialised tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a bigquery sink: a mapping with input, project and dataset"
)]
pub struct BigQuerySinkSpec {
    /// The source or operator to read (required, except inside a tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `true` (default): a primary sink; `false`: best-effort. Not allowed inside a tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// The project the dataset belongs to (and queries run in).
    pub project: String,
    /// The dataset written to; created if missing.
    pub dataset: String,
    /// The location of the dataset when the sink creates it (default BigQuery's, `US`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// A service-account key: a file path, or the key's JSON (e.g. `${GCP_KEY_JSON}`). Default:
    /// application default credentials, or none when `endpoint` is set (an emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// The REST endpoint, for an emulator (e.g. `http://127.0.0.1:9050`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Keep materialised tables (synced columns + `props` + `synced_at`); default true.
    #[serde(default = "default_true")]
    pub materialise: bool,
}

/// A MySQL or MariaDB database: a delta log and, by default, materialised tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mysql sink: a mapping with input and url"
)]
pub struct MysqlSinkSpec {
    /// The source or operator to read (required, except inside a tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `true` (default): a primary sink; `false`: best-effort. Not allowed inside a tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// The connection URL; use `${VAR}` for secrets.
    pub url: String,
    /// Keep materialised tables (synced columns + `props` + `synced_at`); default true.
    #[serde(default = "default_true")]
    pub materialise: bool,
}

/// Parquet files of deltas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a parquet sink: a mapping with input and path"
)]
pub struct ParquetSinkSpec {
    /// The source or operator to read (required, except inside a tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `true` (default): a primary sink; `false`: best-effort. Not allowed inside a tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// A local directory (relative to the pipeline file's directory) or `s3://bucket/prefix`.
    pub path: String,
    /// The compression codec (default zstd).
    #[serde(default)]
    pub compression: ParquetCompression,
    /// S3 settings for an `s3://` path (unset ones come from the `AWS_*` environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
}

/// A Parquet compression codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    /// Zstandard.
    #[default]
    Zstd,
    /// Snappy.
    Snappy,
    /// No compression.
    None,
}

/// Routes each delta by its HLC age: younger than `max_age` to `hot`, older to `cold`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a tier sink: a mapping with input, max_age, hot and cold"
)]
pub struct TierSinkSpec {
    /// The source or operator to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `true` (default): a primary sink; `false`: best-effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// The age at which a delta goes cold.
    pub max_age: HumanDuration,
    /// Where young deltas go: an inline sink (not a tier, no `input`, no `required`).
    pub hot: Box<SinkSpec>,
    /// Where old deltas go: an inline sink (not a tier, no `input`, no `required`).
    pub cold: Box<SinkSpec>,
}

// ---------------------------------------------------------------------------------------------
// Named: an ordered map of name → spec.
// ---------------------------------------------------------------------------------------------

/// Named specs in file order (a mapping in the file). Names are unique.
#[derive(Clone, Debug, PartialEq)]
pub struct Named<T>(Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Named<T> {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` under `name`, replacing an entry of that name in place.
    pub fn insert(&mut self, name: impl Into<String>, value: T) {
        let name = name.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Whether there is an entry named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> FromIterator<(String, T)> for Named<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(iter: I) -> Self {
        let mut named = Self::new();
        for (name, value) in iter {
            named.insert(name, value);
        }
        named
    }
}

impl<T: Serialize> Serialize for Named<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(n, v)| (n, v)))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for NamedVisitor<T> {
            type Value = Named<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to specs")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Named<T>, E> {
                Ok(Named::new())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named<T>, A::Error> {
                let mut named = Named::new();
                while let Some(name) = map.next_key::<String>()? {
                    if named.contains(&name) {
                        return Err(de::Error::custom(format!("{name:?} is defined twice")));
                    }
                    let value = map.next_value()?;
                    named.0.push((name, value));
                }
                Ok(named)
            }
        }

        deserializer.deserialize_map(NamedVisitor(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Named<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Named_{}", T::schema_name()).into()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        format!("lakesync::config::Named<{}>", T::schema_id()).into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "propertyNames": {"pattern": super::validate::IDENTIFIER_PATTERN},
            "additionalProperties": generator.subschema_for::<T>(),
        })
    }
}
