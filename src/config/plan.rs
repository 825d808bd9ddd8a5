//! The validated pipeline: what the runtime builds from.
//!
//! A [`Plan`] exists only for a file that validated with no errors, so everything in it is
//! consistent: every input names a source or operator, operators form no cycle, jsonl tables are
//! declared, rules parse and fit the declared schemas. Specs are kept as written (after `${VAR}`
//! interpolation); paths in them are relative to [`Plan::base_dir`] — use [`Plan::resolve_path`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::spec::{FlushSpec, Named, OperatorSpec, SinkSpec, SourceSpec};
use crate::kernel::rules::{Claims, SyncRules};
use crate::kernel::schema::TableSchema;

/// A validated pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The pipeline's name.
    pub name: String,
    /// The directory of the pipeline file: relative paths in specs are relative to it.
    pub base_dir: PathBuf,
    /// Where checkpoints live, resolved against `base_dir` (default `.lakesync/<name>`).
    pub state_dir: PathBuf,
    /// Flush thresholds.
    pub flush: FlushSpec,
    /// The declared table schemas, in file order.
    pub tables: Vec<TableSchema>,
    /// The sources, in file order.
    pub sources: Named<SourceSpec>,
    /// The operators, in file order.
    pub operators: Named<OperatorSpec>,
    /// Operator names in topological order: every operator after its input.
    pub operator_order: Vec<String>,
    /// The sinks, in file order.
    pub sinks: Named<SinkSpec>,
    /// The resolved rules and claims of each filter operator, by operator name.
    pub filters: BTreeMap<String, FilterPlan>,
    /// One lane per sink, in sink order: the source it reads and the operators in between.
    pub lanes: Vec<Lane>,
}

/// A filter operator's rules (inline, or read from `rules_file`) and claims, ready to compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterPlan {
    /// The validated sync rules.
    pub rules: SyncRules,
    /// The claims the rules are evaluated with.
    pub claims: Claims,
}

/// The path deltas take to one sink: `source → operators[0] → … → sink`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    /// The sink's name.
    pub sink: String,
    /// The source at the head of the chain.
    pub source: String,
    /// The operators applied, in order from the source to the sink.
    pub operators: Vec<String>,
    /// Whether the sink is primary (must succeed) rather than best-effort.
    pub required: bool,
}

impl Plan {
    /// `path` from a spec, resolved against the pipeline file's directory. Absolute paths and
    /// URLs (`s3://…`, `http://…`) are returned unchanged.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        resolve(&self.base_dir, path)
    }

    /// The declared schema of `table`.
    pub fn table(&self, table: &str) -> Option<&TableSchema> {
        self.tables.iter().find(|t| t.table == table)
    }

    /// The tables `source` produces: declared schemas where there are (or the schema a source
    /// defines itself, such as CloudWatch's), and the names of tables whose schema the source
    /// discovers at run time.
    pub fn source_tables(&self, source: &str) -> (Vec<Cow<'_, TableSchema>>, Vec<&str>) {
        let mut declared = Vec::new();
        let mut discovered = Vec::new();
        let names: Vec<&str> = match self.sources.get(source) {
            Some(SourceSpec::Cloudwatch(spec)) => {
                return (vec![Cow::Owned(spec.table_schema())], Vec::new());
            }
            Some(SourceSpec::Jsonl(spec)) => vec![spec.table.as_str()],
            Some(SourceSpec::Iceberg(spec)) => vec![spec.table.as_str()],
            Some(SourceSpec::Bigquery(spec)) => {
                spec.tables.iter().map(|t| t.table.as_str()).collect()
            }
            Some(SourceSpec::Sqlite(spec)) => {
                spec.tables.iter().map(|t| t.table.as_str()).collect()
            }
            Some(SourceSpec::Postgres(spec)) => {
                spec.tables.iter().map(|t| t.table.as_str()).collect()
            }
            Some(SourceSpec::Mysql(spec)) => spec.tables.iter().map(|t| t.table.as_str()).collect(),
            Some(SourceSpec::Gateway(spec)) if spec.tables.is_empty() => {
                self.tables.iter().map(|t| t.table.as_str()).collect()
            }
            Some(SourceSpec::Gateway(spec)) => spec.tables.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        for name in names {
            match self.table(name) {
                Some(schema) => declared.push(Cow::Borrowed(schema)),
                None => discovered.push(name),
            }
        }
        (declared, discovered)
    }

    /// The lane of sink `sink`.
    pub fn lane(&self, sink: &str) -> Option<&Lane> {
        self.lanes.iter().find(|l| l.sink == sink)
    }
}

/// `path` resolved against `base`, unless absolute or a URL.
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    let is_url = path.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
    });
    if is_url || Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_file() {
        let base = Path::new("/srv/pipelines");
        assert_eq!(
            resolve(base, "data/x.jsonl"),
            Path::new("/srv/pipelines/data/x.jsonl")
        );
        assert_eq!(resolve(base, "/abs/x"), Path::new("/abs/x"));
        assert_eq!(
            resolve(base, "s3://bucket/prefix"),
            Path::new("s3://bucket/prefix")
        );
        assert_eq!(resolve(Path::new(""), "out"), Path::new("out"));
    }
}
