//! The JSON Schema of pipeline files, for editors (YAML language servers read it).
//!
//! It is generated from the spec types with schemars (JSON Schema 2020-12, describing what is
//! accepted when reading), and checked in at `docs/pipeline.schema.json`; a test fails when the
//! checked-in copy is stale (`LAKESYNC_BLESS=1 cargo test --test it config` rewrites it).
//!
//! The kernel's `TableSchema` and sync rules types do not depend on schemars, so their schemas
//! come from the mirror types below, which tests keep in step with the kernel types by
//! round-tripping full documents through both.
//!
//! The schema is a little looser than validation: it cannot say that an input names a source,
//! that a `cursor` strategy needs a `cursor_column`, or that a tier's inline sinks have no
//! `input`. `lakesync validate` says all of that.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::{Deserialize, Serialize};

use super::spec::PipelineSpec;

/// Where the checked-in schema lives, relative to the repository root.
pub const SCHEMA_PATH: &str = "docs/pipeline.schema.json";

/// The JSON Schema of a pipeline file.
pub fn json_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let mut schema = generator.into_root_schema_for::<PipelineSpec>().to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "description".to_string(),
            serde_json::Value::String(
                "A LakeSync pipeline file (pipelines/*.yaml): declared tables, and sources → operators → sinks. See docs/pipelines.md."
                    .to_string(),
            ),
        );
    }
    schema
}

/// The schema as checked in: pretty JSON with a final newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------------------------
// Mirrors of kernel types, for their schemas only.
// ---------------------------------------------------------------------------------------------

/// A table schema (the kernel's `TableSchema` JSON shape).
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "TableSchema")]
pub(crate) struct TableSchemaDoc {
    /// The table name (the destination when materialised).
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"))]
    table: String,
    /// The table deltas come from, when it differs from `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_table: Option<String>,
    /// The data columns, in their stable order (schema evolution only appends).
    columns: Vec<ColumnDefDoc>,
    /// Materialised primary key columns (`row_id` or column names); `row_id` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_key: Option<Vec<String>>,
    /// Whether materialised deletes are soft (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    soft_delete: Option<bool>,
    /// A column that identifies the row in an external system (upsert conflict target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_id_column: Option<String>,
}

/// One column.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ColumnDef")]
pub(crate) struct ColumnDefDoc {
    /// The column name.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"))]
    name: String,
    /// The column type.
    #[serde(rename = "type")]
    column_type: ColumnTypeDoc,
    /// A reference to another table (kept for compatibility; not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    references: Option<serde_json::Value>,
}

/// A column type.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "ColumnType")]
pub(crate) enum ColumnTypeDoc {
    /// Text.
    String,
    /// A double.
    Number,
    /// A 64-bit integer.
    Integer,
    /// true/false.
    Boolean,
    /// An instant (RFC 3339 text in JSON).
    Timestamp,
    /// Any JSON value.
    Json,
    /// The original's `null` type: any JSON value.
    Null,
}

/// A sync rules document (the original format).
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "SyncRules")]
pub(crate) struct SyncRulesDoc {
    /// The document version, a positive integer.
    #[schemars(range(min = 1))]
    version: u64,
    /// The buckets; none means no filtering. A row is visible when any bucket shows it.
    buckets: Vec<BucketDoc>,
}

/// A bucket: the rows of `tables` that match every filter.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Bucket")]
pub(crate) struct BucketDoc {
    /// The bucket's unique name.
    #[schemars(length(min = 1))]
    name: String,
    /// The tables the bucket applies to; empty means every table.
    tables: Vec<String>,
    /// The filters, all of which a row must match; empty means every row.
    filters: Vec<FilterDoc>,
}

/// `column op value`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "RuleFilter")]
pub(crate) struct FilterDoc {
    /// The column compared.
    #[schemars(length(min = 1))]
    column: String,
    /// How it is compared.
    op: FilterOpDoc,
    /// A literal, or `jwt:<claim>`. The rules format wants text; in a pipeline file a plain
    /// number or boolean (`value: 4`) is read as its text.
    #[schemars(schema_with = "rule_value_schema")]
    value: String,
}

fn rule_value_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "number"},
            {"type": "boolean"},
        ],
    })
}

/// A filter's comparison.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "RuleOp")]
pub(crate) enum FilterOpDoc {
    /// Equals any value.
    Eq,
    /// Equals none of the values.
    Neq,
    /// Equals any value (same as eq).
    In,
    /// Greater than the first value.
    Gt,
    /// Less than the first value.
    Lt,
    /// Greater than or equal to the first value.
    Gte,
    /// Less than or equal to the first value.
    Lte,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kernel::rules::{FilterOp, SyncRules};
    use crate::kernel::schema::{ColumnType, TableSchema};

    /// A full kernel document must read into the mirror and write back identically (and the
    /// mirror denies unknown fields), so a field added to the kernel fails here.
    #[test]
    fn table_schema_mirror_matches_the_kernel() {
        let full = json!({
            "table": "tasks", "sourceTable": "raw_tasks",
            "columns": [{"name": "a", "type": "string", "references": {"table": "x"}},
                        {"name": "b", "type": "number"}, {"name": "c", "type": "integer"},
                        {"name": "d", "type": "boolean"}, {"name": "e", "type": "timestamp"},
                        {"name": "f", "type": "json"}, {"name": "g", "type": "null"}],
            "primaryKey": ["row_id"], "softDelete": false, "externalIdColumn": "a"});
        let kernel: TableSchema = serde_json::from_value(full.clone()).unwrap();
        let kernel_json = serde_json::to_value(&kernel).unwrap();
        assert_eq!(kernel_json, full);
        let mirror: TableSchemaDoc = serde_json::from_value(kernel_json).unwrap();
        assert_eq!(serde_json::to_value(&mirror).unwrap(), full);
        // Every kernel column type has a mirror.
        for name in [
            "string",
            "number",
            "integer",
            "boolean",
            "timestamp",
            "json",
            "null",
        ] {
            assert!(ColumnType::from_name(name).is_some());
            serde_json::from_value::<ColumnTypeDoc>(json!(name)).unwrap();
        }
    }

    #[test]
    fn sync_rules_mirror_matches_the_kernel() {
        let ops: Vec<&str> = FilterOp::ALL.iter().map(|op| op.name()).collect();
        let filters: Vec<_> = ops
            .iter()
            .map(|op| json!({"column": "c", "op": op, "value": "1"}))
            .collect();
        let full =
            json!({"version": 1, "buckets": [{"name": "b", "tables": ["t"], "filters": filters}]});
        let kernel = SyncRules::from_value(&full).unwrap();
        let kernel_json = serde_json::to_value(&kernel).unwrap();
        assert_eq!(kernel_json, full);
        let mirror: SyncRulesDoc = serde_json::from_value(kernel_json).unwrap();
        assert_eq!(serde_json::to_value(&mirror).unwrap(), full);
    }

    #[test]
    fn schema_names_every_registered_type() {
        let text = json_schema_text();
        for name in super::super::spec::SourceSpec::TYPES
            .iter()
            .chain(super::super::spec::OperatorSpec::TYPES)
            .chain(super::super::spec::SinkSpec::TYPES)
            .chain(super::super::spec::CatalogSpec::TYPES)
        {
            assert!(text.contains(&format!("\"const\": \"{name}\"")), "{name}");
        }
    }
}
