//! Validation: a pure function from a decoded pipeline (and the text of its rules files) to a
//! [`Plan`] and every problem found, each with its YAML path.
//!
//! What is checked:
//! - `version` is 1; `name` matches `^[a-z0-9][a-z0-9_-]{0,62}$`; flush thresholds are positive;
//! - each declared table passes [`TableSchema::validate`]; no table is declared twice;
//! - source, operator and sink names are identifiers (`^[A-Za-z_][A-Za-z0-9_]{0,63}$`) and unique
//!   across the three kinds; there is at least one source and one sink;
//! - every `input` names a source or an operator ("did you mean" when one is close), and operators
//!   form no cycle (the cycle is named);
//! - a jsonl source's table is declared; `id_column` is only for `format: rows`;
//! - a cloudwatch source names at least one log group, each a name CloudWatch allows
//!   (`[.\-_/#A-Za-z0-9]{1,512}`, so a hostile name never reaches a request); its `start_time`,
//!   `endpoint`, `region`, `page_size` and stream prefix are well-formed; `json_fields` come with
//!   `parse_json: true` and do not reuse a fixed column; its table is not also declared;
//! - a sqlite source's `cursor` tables name a `cursor_column`, which must be an orderable column
//!   when the table is declared; an undeclared table is a *note* (its schema is discovered at run
//!   time, so it cannot be checked here);
//! - a filter has exactly one of `rules` and `rules_file`; the rules parse
//!   ([`SyncRules::from_value`]) and fit the declared schemas of the tables that reach the filter
//!   ([`SyncRules::check_against`]): known columns, literals of the column's type;
//! - a sink has an `input` (except a tier's inline `hot`/`cold`, which must have none, no
//!   `required`, and not be tiers themselves); catalogue URIs and namespaces are well-formed.
//!
//! Warnings (the file is still valid): a source or operator nothing reads; a filter whose rules
//! use a claim the filter does not set; a bucket naming a table that does not reach the filter; a
//! table reaching a filter that no bucket applies to (all its rows are dropped).
//!
//! The only input besides the spec is the text of each `rules_file`, read beforehand by
//! [`Inputs::read`] (the one piece of I/O, kept out of validation so it stays pure and testable).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::Diagnostic;
use super::node::{child_path, item_path};
use super::plan::{FilterPlan, Lane, Plan, resolve};
use super::spec::{
    BigQuerySinkSpec, BigQuerySourceSpec, CaptureStrategy, CatalogSpec, CloudWatchSourceSpec,
    FilterSpec, GatewaySourceSpec, IcebergSourceSpec, JsonlFormat, JsonlSourceSpec,
    MysqlSourceSpec, OperatorSpec, PIPELINE_VERSION, PipelineSpec, PostgresSourceSpec, S3Spec,
    SinkSpec, SourceSpec, SqlStrategy, SqlTableSpec, SqliteSourceSpec,
};
use super::suggest;
use super::units::HumanDuration;
use crate::Error;
use crate::kernel::rules::{Claims, SyncRules};
use crate::kernel::schema::{ColumnType, TableSchema};

/// Source, operator and sink names (the kernel's identifier rule).
pub const IDENTIFIER_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]{0,63}$";

/// Pipeline names.
pub const PIPELINE_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

/// What validation reads besides the spec: the directory of the pipeline file, and the text of
/// each `rules_file` (or why it could not be read), keyed by the path as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The pipeline file's directory.
    pub base_dir: PathBuf,
    /// `rules_file` path as written → its text, or the reason it could not be read.
    pub rules_files: BTreeMap<String, Result<String, String>>,
}

impl Inputs {
    /// Inputs with no rules files.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self {
            base_dir: base_dir.into(),
            rules_files: BTreeMap::new(),
        }
    }

    /// Reads every `rules_file` the spec names, relative to `base_dir`.
    pub fn read(spec: &PipelineSpec, base_dir: &Path) -> Self {
        let mut inputs = Self::new(base_dir);
        for (_, op) in spec.operators.iter() {
            let OperatorSpec::Filter(FilterSpec {
                rules_file: Some(file),
                ..
            }) = op
            else {
                continue;
            };
            let path = resolve(base_dir, file);
            let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!("not found at {}", path.display()),
                _ => format!("{e} ({})", path.display()),
            });
            inputs.rules_files.insert(file.clone(), text);
        }
        inputs
    }

    /// Adds the text of a rules file (for tests and callers that read files themselves).
    pub fn with_rules_file(mut self, path: impl Into<String>, text: impl Into<String>) -> Self {
        self.rules_files.insert(path.into(), Ok(text.into()));
        self
    }
}

/// Validates `spec`. Returns the plan when there is no error, and every diagnostic (errors,
/// warnings, notes) in the order found.
pub fn validate(spec: &PipelineSpec, inputs: &Inputs) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut v = Validator {
        spec,
        inputs,
        out: Vec::new(),
        meant: BTreeSet::new(),
    };
    v.header();
    v.tables();
    v.names();
    v.sources();
    let graph = v.graph();
    let filters = v.operators(&graph);
    v.sinks();
    v.unconsumed();
    let has_errors = v.out.iter().any(Diagnostic::is_error);
    let diagnostics = v.out;
    if has_errors {
        return (None, diagnostics);
    }
    let lanes = spec
        .sinks
        .iter()
        .filter_map(|(name, sink)| {
            let input = sink.input()?;
            let (source, mut operators) = graph.chain(input)?;
            operators.reverse();
            Some(Lane {
                sink: name.to_string(),
                source,
                operators,
                required: sink.is_required(),
            })
        })
        .collect();
    let state_dir = spec
        .state_dir
        .clone()
        .unwrap_or_else(|| format!(".lakesync/{}", spec.name));
    let plan = Plan {
        name: spec.name.clone(),
        base_dir: inputs.base_dir.clone(),
        state_dir: resolve(&inputs.base_dir, &state_dir),
        flush: spec.flush,
        tables: spec.tables.clone(),
        sources: spec.sources.clone(),
        operators: spec.operators.clone(),
        operator_order: graph.topological_order(),
        sinks: spec.sinks.clone(),
        filters,
        lanes,
    };
    (Some(plan), diagnostics)
}

/// Whether `name` is an identifier (see [`IDENTIFIER_PATTERN`]).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `name` is a valid pipeline name (see [`PIPELINE_NAME_PATTERN`]).
pub fn is_pipeline_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The message of a kernel error, without the kind prefix ("invalid sync rules: ").
fn kernel_message(error: &Error) -> String {
    match error {
        Error::Invalid { message, .. } => message.clone(),
        Error::Schema(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The data flow between operators: operator → its input.
struct Graph<'s> {
    spec: &'s PipelineSpec,
}

impl Graph<'_> {
    /// Follows inputs from `name` (a source or operator) back to a source. Returns the source
    /// and the operators passed, nearest first; `None` on a dangling input or a cycle.
    fn chain(&self, name: &str) -> Option<(String, Vec<String>)> {
        let mut operators = Vec::new();
        let mut current = name;
        loop {
            if self.spec.sources.contains(current) {
                return Some((current.to_string(), operators));
            }
            let op = self.spec.operators.get(current)?;
            if operators.iter().any(|o| o == current) {
                return None;
            }
            operators.push(current.to_string());
            current = op.input();
        }
    }

    /// The cycles among operators, each as the operator names in order (starting from the one
    /// that comes first in the file), each reported once.
    fn cycles(&self) -> Vec<Vec<String>> {
        let names: Vec<&str> = self.spec.operators.names().collect();
        let mut seen_cycles: BTreeSet<BTreeSet<String>> = BTreeSet::new();
        let mut cycles = Vec::new();
        for start in &names {
            let mut path: Vec<&str> = Vec::new();
            let mut current = *start;
            while let Some(op) = self.spec.operators.get(current) {
                if let Some(at) = path.iter().position(|n| *n == current) {
                    let cycle: Vec<&str> = path[at..].to_vec();
                    let set: BTreeSet<String> = cycle.iter().map(|s| s.to_string()).collect();
                    if seen_cycles.insert(set) {
                        // Start from the operator that comes first in the file.
                        let first = cycle
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, n)| names.iter().position(|m| m == *n))
                            .map_or(0, |(i, _)| i);
                        let mut ordered: Vec<String> = cycle[first..]
                            .iter()
                            .chain(&cycle[..first])
                            .map(|s| s.to_string())
                            .collect();
                        ordered.push(ordered[0].clone());
                        cycles.push(ordered);
                    }
                    break;
                }
                path.push(current);
                current = op.input();
            }
        }
        cycles
    }

    /// Operators in an order where each comes after its input (file order otherwise).
    fn topological_order(&self) -> Vec<String> {
        let spec = self.spec;
        let mut order: Vec<String> = Vec::new();
        for name in spec.operators.names() {
            let mut chain: Vec<&str> = Vec::new();
            let mut current = name;
            while let Some(op) = spec.operators.get(current) {
                if order.iter().any(|o| o == current) || chain.contains(&current) {
                    break;
                }
                chain.push(current);
                current = op.input();
            }
            order.extend(chain.into_iter().rev().map(str::to_string));
        }
        order
    }
}

struct Validator<'s> {
    spec: &'s PipelineSpec,
    inputs: &'s Inputs,
    out: Vec<Diagnostic>,
    /// Names that a dangling input was probably meant to be: not also "unread".
    meant: BTreeSet<String>,
}

impl<'s> Validator<'s> {
    /// Records `d` and returns it, to add a hint.
    fn push(&mut self, d: Diagnostic) -> &mut Diagnostic {
        let index = self.out.len();
        self.out.push(d);
        &mut self.out[index]
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Diagnostic::error(path, message))
    }

    fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Diagnostic::warning(path, message))
    }

    fn note(&mut self, path: impl Into<String>, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Diagnostic::note(path, message))
    }

    fn non_empty(&mut self, path: String, value: &str) {
        if value.trim().is_empty() {
            self.error(path, "must not be empty");
        }
    }

    fn table(&self, name: &str) -> Option<&'s TableSchema> {
        self.spec.tables.iter().find(|t| t.table == name)
    }

    fn header(&mut self) {
        let spec = self.spec;
        if spec.version != PIPELINE_VERSION {
            self.error("version", format!("unsupported version {}", spec.version))
                .hint = Some(format!(
                "this LakeSync reads pipeline files of version {PIPELINE_VERSION}"
            ));
        }
        if !is_pipeline_name(&spec.name) {
            self.error("name", format!("{:?} is not a valid pipeline name", spec.name))
                .hint = Some(
                "use lowercase letters, digits, _ and -, starting with a letter or digit, at most 63 characters"
                    .to_string(),
            );
        }
        if let Some(dir) = &spec.state_dir {
            self.non_empty("state_dir".to_string(), dir);
        }
        if spec.flush.max_rows == 0 {
            self.error("flush.max_rows", "must be at least 1");
        }
        if spec.flush.max_table_bytes.is_some_and(|b| b.get() == 0) {
            self.error("flush.max_table_bytes", "must be more than 0 bytes");
        }
        if spec.flush.max_bytes.get() == 0 {
            self.error("flush.max_bytes", "must be more than 0 bytes");
        }
        if spec.flush.max_age.get().is_zero() {
            self.error("flush.max_age", "must be longer than 0s");
        }
    }

    fn tables(&mut self) {
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, table) in self.spec.tables.iter().enumerate() {
            let path = item_path("tables", i);
            if let Err(e) = table.validate() {
                let (at, message) = table_problem(&path, &table.table, &kernel_message(&e));
                self.error(at, message);
            }
            match first.get(table.table.as_str()) {
                Some(earlier) => {
                    self.error(
                        format!("{path}.table"),
                        format!(
                            "table {:?} is declared twice (first at tables[{earlier}])",
                            table.table
                        ),
                    );
                }
                None => {
                    first.insert(&table.table, i);
                }
            }
        }
    }

    fn names(&mut self) {
        let spec = self.spec;
        let kinds: [(&str, Vec<&str>); 3] = [
            ("sources", spec.sources.names().collect()),
            ("operators", spec.operators.names().collect()),
            ("sinks", spec.sinks.names().collect()),
        ];
        let mut owner: HashMap<&str, &str> = HashMap::new();
        for (kind, names) in kinds.iter() {
            let kind = *kind;
            for name in names.iter().copied() {
                let path = child_path(kind, name);
                if !is_identifier(name) {
                    self.error(path.clone(), format!("{name:?} is not a valid name")).hint = Some(
                        "names are letters, digits and _, not starting with a digit, at most 64 characters"
                            .to_string(),
                    );
                }
                match owner.get(name) {
                    Some(other) => {
                        self.error(
                            path,
                            format!("{name:?} is already the name of one of the {other}"),
                        )
                        .hint = Some(
                            "sources, operators and sinks share one namespace: rename one"
                                .to_string(),
                        );
                    }
                    None => {
                        owner.insert(name, kind);
                    }
                }
            }
        }
        if spec.sources.is_empty() {
            self.error("sources", "a pipeline needs at least one source")
                .hint = Some("add one under `sources:`, e.g. a jsonl file".to_string());
        }
        if spec.sinks.is_empty() {
            self.error("sinks", "a pipeline needs at least one sink")
                .hint = Some("add one under `sinks:`, e.g. a sqlite file".to_string());
        }
    }

    fn sources(&mut self) {
        let spec = self.spec;
        for (name, source) in spec.sources.iter() {
            let at = child_path("sources", name);
            match source {
                SourceSpec::Jsonl(spec) => self.jsonl_source(&at, spec),
                SourceSpec::Iceberg(spec) => self.iceberg_source(&at, spec),
                SourceSpec::Bigquery(spec) => self.bigquery_source(&at, spec),
                SourceSpec::Sqlite(spec) => self.sqlite_source(&at, spec),
                SourceSpec::Postgres(spec) => self.postgres_source(&at, spec),
                SourceSpec::Mysql(spec) => self.mysql_source(&at, spec),
                SourceSpec::Gateway(spec) => self.gateway_source(&at, spec),
                SourceSpec::Cloudwatch(spec) => self.cloudwatch_source(&at, spec),
            }
        }
    }

    fn cloudwatch_source(&mut self, at: &str, spec: &CloudWatchSourceSpec) {
        use crate::adapters::cloudwatch::{
            MAX_PAGE_SIZE, log_group_name_problem, parse_start_time,
        };
        if spec.log_groups.is_empty() {
            self.error(
                format!("{at}.log_groups"),
                "a cloudwatch source needs at least one log group",
            )
            .hint = Some("e.g. log_groups: [/aws/lambda/my-function]".to_string());
        }
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, group) in spec.log_groups.iter().enumerate() {
            let path = item_path(&format!("{at}.log_groups"), i);
            if let Some(problem) = log_group_name_problem(group) {
                self.error(path.clone(), problem);
            }
            if let Some(earlier) = first.insert(group, i) {
                self.error(
                    path,
                    format!("log group {group:?} is listed twice (first at log_groups[{earlier}])"),
                );
            }
        }
        if let Some(region) = spec.region() {
            let ok = region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                self.error(
                    format!("{at}.region"),
                    format!("{region:?} is not an AWS region name"),
                )
                .hint = Some("e.g. us-east-1 or eu-west-2".to_string());
            }
        }
        if let Some(endpoint) = spec.endpoint()
            && !is_http_url(endpoint)
        {
            self.error(
                format!("{at}.endpoint"),
                format!("{endpoint:?} is not an http(s) URL with a host"),
            )
            .hint = Some("e.g. http://127.0.0.1:9000 for moto".to_string());
        }
        if let Some(prefix) = &spec.stream_prefix {
            let problem = if prefix.is_empty() || prefix.len() > 512 {
                Some("must be 1 to 512 characters")
            } else if prefix.contains([':', '*']) {
                Some("log stream names cannot contain ':' or '*'")
            } else {
                None
            };
            if let Some(problem) = problem {
                self.error(format!("{at}.stream_prefix"), problem);
            }
        }
        if let Some(pattern) = &spec.filter_pattern
            && pattern.len() > 1024
        {
            self.error(
                format!("{at}.filter_pattern"),
                "a filter pattern is at most 1024 characters",
            );
        }
        if let Some(start) = &spec.start_time
            && let Err(problem) = parse_start_time(start, 0)
        {
            self.error(format!("{at}.start_time"), problem);
        }
        if spec.poll_interval.get().is_zero() {
            self.error(format!("{at}.poll_interval"), "must be longer than 0s");
        }
        if !(1..=MAX_PAGE_SIZE).contains(&spec.page_size) {
            self.error(
                format!("{at}.page_size"),
                format!("{} is not between 1 and {MAX_PAGE_SIZE}", spec.page_size),
            );
        }
        match (spec.parse_json, spec.json_fields.is_empty()) {
            (true, true) => {
                self.error(
                    format!("{at}.parse_json"),
                    "parse_json needs json_fields: the keys to extract as columns, with their types",
                )
                .hint = Some("e.g. json_fields: {level: string, status: integer}".to_string());
            }
            (false, false) => {
                self.error(
                    format!("{at}.json_fields"),
                    "json_fields applies only with parse_json: true",
                )
                .hint = Some("add parse_json: true".to_string());
            }
            _ => {}
        }
        let fixed = crate::adapters::cloudwatch::rows::FIXED_COLUMNS;
        let mut collided = false;
        for name in spec.json_fields.names() {
            if fixed.iter().any(|(f, _)| *f == name) {
                collided = true;
                self.error(
                    child_path(&format!("{at}.json_fields"), name),
                    format!("{name:?} is already one of the source's columns"),
                )
                .hint = Some(format!(
                    "the fixed columns are {}",
                    suggest::list(&fixed.iter().map(|(f, _)| *f).collect::<Vec<_>>())
                ));
            }
        }
        if !is_identifier(&spec.table) {
            self.error(
                format!("{at}.table"),
                format!("{:?} is not a valid table name", spec.table),
            );
        } else if self.table(&spec.table).is_some() {
            self.error(
                format!("{at}.table"),
                format!(
                    "table {:?} is declared under `tables:`, but a cloudwatch source defines its own columns",
                    spec.table
                ),
            )
            .hint = Some("remove the declaration, or give the source another table".to_string());
        } else if !collided && let Err(e) = spec.table_schema().validate() {
            self.error(format!("{at}.json_fields"), kernel_message(&e));
        }
    }

    fn undeclared_table(&mut self, path: String, table: &str) {
        let declared: Vec<&str> = self.spec.tables.iter().map(|t| t.table.as_str()).collect();
        let hint = match suggest::did_you_mean(table, declared.iter().copied()) {
            Some(guess) => guess,
            None if declared.is_empty() => {
                "declare it under `tables:` with its columns".to_string()
            }
            None => format!(
                "declare it under `tables:` with its columns (declared: {})",
                suggest::list(&declared)
            ),
        };
        self.error(path, format!("table {table:?} is not declared"))
            .hint = Some(hint);
    }

    fn jsonl_source(&mut self, at: &str, spec: &JsonlSourceSpec) {
        self.non_empty(format!("{at}.path"), &spec.path);
        if self.table(&spec.table).is_none() {
            self.undeclared_table(format!("{at}.table"), &spec.table);
        }
        match (&spec.format, &spec.id_column) {
            (JsonlFormat::Deltas, Some(_)) => {
                self.error(
                    format!("{at}.id_column"),
                    "id_column applies only to format: rows",
                )
                .hint = Some("a delta names its row with rowId; remove id_column".to_string());
            }
            (JsonlFormat::Rows, Some(column)) => {
                self.non_empty(format!("{at}.id_column"), column);
            }
            _ => {}
        }
        if let Some(client) = &spec.client_id {
            self.non_empty(format!("{at}.client_id"), client);
        }
    }

    fn iceberg_source(&mut self, at: &str, spec: &IcebergSourceSpec) {
        if self.table(&spec.table).is_none() {
            self.undeclared_table(format!("{at}.table"), &spec.table);
        }
        let names = [
            ("namespace", Some(&spec.namespace)),
            ("iceberg_table", spec.iceberg_table.as_ref()),
            ("id_column", spec.id_column.as_ref()),
        ];
        for (key, name) in names {
            if let Some(name) = name
                && let Err(e) = crate::kernel::schema::validate_identifier(name)
            {
                self.error(format!("{at}.{key}"), format!("{name:?}: {e}"));
            }
        }
        if let (Some(from), Some(to)) = (spec.from_snapshot, spec.to_snapshot)
            && from == to
        {
            self.error(
                format!("{at}.to_snapshot"),
                format!("to_snapshot is from_snapshot ({from}): there are no changes between a snapshot and itself"),
            );
        }
    }

    /// The BigQuery settings a source and a sink share: project, dataset, endpoints.
    fn bigquery_place(
        &mut self,
        at: &str,
        project: &str,
        dataset: &str,
        endpoints: [(&str, Option<&String>); 2],
    ) {
        if let Err(e) = crate::adapters::bigquery::check_project(project) {
            self.error(format!("{at}.project"), e.to_string());
        }
        if let Err(e) = crate::adapters::bigquery::check_dataset(dataset) {
            self.error(format!("{at}.dataset"), e.to_string());
        }
        for (key, endpoint) in endpoints {
            if let Some(endpoint) = endpoint
                && !is_http_url(endpoint)
            {
                self.error(
                    format!("{at}.{key}"),
                    format!("{endpoint:?} is not an http(s) URL with a host"),
                )
                .hint = Some("e.g. http://127.0.0.1:9050 for an emulator".to_string());
            }
        }
    }

    fn bigquery_source(&mut self, at: &str, spec: &BigQuerySourceSpec) {
        self.bigquery_place(
            at,
            &spec.project,
            &spec.dataset,
            [
                ("endpoint", spec.endpoint.as_ref()),
                ("grpc_endpoint", spec.grpc_endpoint.as_ref()),
            ],
        );
        if spec.parallelism == 0 || spec.parallelism > 64 {
            self.error(
                format!("{at}.parallelism"),
                format!("{} is not between 1 and 64", spec.parallelism),
            );
        }
        let polled: Vec<PolledTable<'_>> = spec
            .tables
            .iter()
            .map(|t| PolledTable {
                table: &t.table,
                id_column: &t.id_column,
                cursor_column: t.cursor_column.as_deref(),
                is_cursor: t.strategy == SqlStrategy::Cursor,
                lookback: None,
            })
            .collect();
        self.polled_tables(at, "bigquery", &polled);
        let snapshots = spec
            .tables
            .iter()
            .filter(|t| t.strategy == SqlStrategy::Snapshot)
            .count();
        if snapshots != 0 && snapshots != spec.tables.len() {
            self.error(
                format!("{at}.tables"),
                "a bigquery source reads all its tables by snapshot, or polls all of them",
            )
            .hint = Some("use one source per kind".to_string());
        }
        for (i, t) in spec.tables.iter().enumerate() {
            let path = item_path(&format!("{at}.tables"), i);
            if t.strategy == SqlStrategy::Cdc {
                self.error(
                    format!("{path}.strategy"),
                    "BigQuery has no change log to read: use snapshot, cursor or diff",
                );
            }
            if t.lookback.is_some() {
                self.error(
                    format!("{path}.lookback"),
                    "a bigquery cursor has no lookback window",
                )
                .hint = Some("remove lookback (see docs/bigquery.md)".to_string());
            }
            if let Err(e) = crate::adapters::bigquery::check_table(&t.table) {
                self.error(format!("{path}.table"), e.to_string());
            }
            if self.table(&t.table).is_none() {
                self.undeclared_table(format!("{path}.table"), &t.table);
            }
        }
    }

    fn bigquery_sink(&mut self, at: &str, spec: &BigQuerySinkSpec) {
        self.bigquery_place(
            at,
            &spec.project,
            &spec.dataset,
            [("endpoint", spec.endpoint.as_ref()), ("endpoint", None)],
        );
        if let Some(location) = &spec.location {
            self.non_empty(format!("{at}.location"), location);
        }
    }

    fn gateway_source(&mut self, at: &str, spec: &GatewaySourceSpec) {
        let id_ok = !spec.id.is_empty()
            && spec.id.len() <= 64
            && spec.id.starts_with(|c: char| c.is_ascii_alphanumeric())
            && spec
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !id_ok {
            self.error(
                format!("{at}.id"),
                format!(
                    "gateway id {:?}: use 1 to 64 letters, digits, `_` or `-`, starting with a letter or digit (it appears in URLs)",
                    spec.id
                ),
            );
        }
        for (i, table) in spec.tables.iter().enumerate() {
            if self.table(table).is_none() {
                self.undeclared_table(format!("{at}.tables[{i}]"), table);
            }
        }
        if gateway_tables(self.spec, spec).is_empty() {
            self.error(format!("{at}.tables"), "a gateway needs at least one table")
                .hint = Some("declare tables under `tables:`".to_string());
        }
        if let Some(sink) = &spec.lake_checkpoints
            && !matches!(self.spec.sinks.get(sink), Some(SinkSpec::Iceberg(_)))
        {
            self.error(
                format!("{at}.lake_checkpoints"),
                format!("{sink:?} is not an iceberg sink of this pipeline"),
            )
            .hint = Some("name one of the pipeline's `type: iceberg` sinks".to_string());
        }
        for (key, addr) in [("flight", &spec.listen.flight), ("http", &spec.listen.http)] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                self.error(
                    format!("{at}.listen.{key}"),
                    format!("{addr:?} is not an address like 127.0.0.1:3000"),
                );
            }
        }
        for (i, secret) in spec.auth.jwt_secrets.iter().enumerate() {
            if secret.len() < 16 {
                self.error(
                    format!("{at}.auth.jwt_secrets[{i}]"),
                    "a JWT secret must be at least 16 bytes",
                );
            }
        }
        if let Some(value) = &spec.sync_rules {
            match SyncRules::from_value(value) {
                Ok(rules) => {
                    let schemas: Vec<TableSchema> = gateway_tables(self.spec, spec)
                        .iter()
                        .filter_map(|t| self.table(t).cloned())
                        .collect();
                    if let Err(e) = rules.check_against(&schemas) {
                        self.error(format!("{at}.sync_rules"), e.to_string());
                    }
                }
                Err(e) => {
                    self.error(format!("{at}.sync_rules"), e.to_string());
                }
            }
        }
        let l = &spec.limits;
        for (key, zero) in [
            ("max_push_deltas", l.max_push_deltas == 0),
            ("default_pull_limit", l.default_pull_limit == 0),
            ("max_pull_limit", l.max_pull_limit == 0),
            ("backpressure_bytes", l.backpressure_bytes.0 == 0),
            ("max_push_bytes", l.max_push_bytes.0 == 0),
            ("ws_max_connections", l.ws_max_connections == 0),
            (
                "ws_max_messages_per_second",
                l.ws_max_messages_per_second == 0,
            ),
        ] {
            if zero {
                self.error(format!("{at}.limits.{key}"), "must be above 0");
            }
        }
        if l.default_pull_limit > l.max_pull_limit {
            self.error(
                format!("{at}.limits.default_pull_limit"),
                "must not be above max_pull_limit",
            );
        }
        if let Some(rate) = &l.rate_limit
            && (rate.requests == 0 || rate.window.get().is_zero())
        {
            self.error(
                format!("{at}.limits.rate_limit"),
                "requests and window must be above 0",
            );
        }
    }

    fn sqlite_source(&mut self, at: &str, spec: &SqliteSourceSpec) {
        self.non_empty(format!("{at}.path"), &spec.path);
        if spec.poll_interval.get().is_zero() {
            self.error(format!("{at}.poll_interval"), "must be longer than 0s");
        }
        let tables: Vec<PolledTable<'_>> = spec
            .tables
            .iter()
            .map(|t| PolledTable {
                table: &t.table,
                id_column: &t.id_column,
                cursor_column: t.cursor_column.as_deref(),
                is_cursor: t.strategy == CaptureStrategy::Cursor,
                lookback: None,
            })
            .collect();
        self.polled_tables(at, "sqlite", &tables);
    }

    fn sql_source(
        &mut self,
        at: &str,
        system: &str,
        url: &str,
        poll_interval: &HumanDuration,
        tables: &[SqlTableSpec],
    ) {
        self.non_empty(format!("{at}.url"), url);
        if poll_interval.get().is_zero() {
            self.error(format!("{at}.poll_interval"), "must be longer than 0s");
        }
        let polled: Vec<PolledTable<'_>> = tables
            .iter()
            .map(|t| PolledTable {
                table: &t.table,
                id_column: &t.id_column,
                cursor_column: t.cursor_column.as_deref(),
                is_cursor: t.strategy == SqlStrategy::Cursor,
                lookback: t.lookback.as_ref(),
            })
            .collect();
        self.polled_tables(at, system, &polled);
    }

    fn postgres_source(&mut self, at: &str, spec: &PostgresSourceSpec) {
        self.sql_source(at, "postgres", &spec.url, &spec.poll_interval, &spec.tables);
        if !is_identifier(&spec.schema) {
            self.error(
                format!("{at}.schema"),
                format!("{:?} is not a valid schema name", spec.schema),
            );
        }
        for (key, value) in [("slot", &spec.slot), ("publication", &spec.publication)] {
            if let Some(name) = value {
                // Slot names allow only lower-case letters, digits and underscores.
                let valid = !name.is_empty()
                    && name.len() <= 63
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    self.error(
                        format!("{at}.{key}"),
                        format!("{name:?} is not a valid {key} name"),
                    )
                    .hint = Some("use 1–63 lower-case letters, digits and underscores".to_string());
                }
            }
        }
        if spec.heartbeat_interval.get().is_zero() {
            self.error(format!("{at}.heartbeat_interval"), "must be longer than 0s");
        }
        if spec.parallelism == 0 || spec.parallelism > 64 {
            self.error(
                format!("{at}.parallelism"),
                format!("{} is not between 1 and 64", spec.parallelism),
            );
        }
    }

    fn mysql_source(&mut self, at: &str, spec: &MysqlSourceSpec) {
        self.sql_source(at, "mysql", &spec.url, &spec.poll_interval, &spec.tables);
        if spec.server_id == Some(0) {
            self.error(
                format!("{at}.server_id"),
                "0 is not a valid replica server id",
            );
        }
    }

    /// Checks the tables a polling source reads.
    fn polled_tables(&mut self, at: &str, system: &str, tables: &[PolledTable<'_>]) {
        if tables.is_empty() {
            self.error(
                format!("{at}.tables"),
                format!("a {system} source needs at least one table"),
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, table) in tables.iter().enumerate() {
            let path = item_path(&format!("{at}.tables"), i);
            if !is_identifier(table.table) {
                self.error(
                    format!("{path}.table"),
                    format!("{:?} is not a valid table name", table.table),
                );
            }
            if let Some(earlier) = seen.insert(table.table, i) {
                self.error(
                    format!("{path}.table"),
                    format!(
                        "table {:?} is listed twice (first at tables[{earlier}])",
                        table.table
                    ),
                );
            }
            self.non_empty(format!("{path}.id_column"), table.id_column);
            if !table.id_column.is_empty() && !is_identifier(table.id_column) {
                self.error(
                    format!("{path}.id_column"),
                    format!("{:?} is not a valid column name", table.id_column),
                );
            }
            match (table.is_cursor, table.cursor_column) {
                (true, None) => {
                    self.error(path.clone(), "strategy cursor needs a cursor_column").hint = Some(
                        "name a column that grows with every change, e.g. cursor_column: updated_at"
                            .to_string(),
                    );
                }
                (false, Some(_)) => {
                    self.error(
                        format!("{path}.cursor_column"),
                        "cursor_column applies only to strategy: cursor",
                    );
                }
                _ => {}
            }
            if table.lookback.is_some() && !table.is_cursor {
                self.error(
                    format!("{path}.lookback"),
                    "lookback applies only to strategy: cursor",
                );
            }
            if let Some(cursor) = table.cursor_column
                && !is_identifier(cursor)
            {
                self.error(
                    format!("{path}.cursor_column"),
                    format!("{cursor:?} is not a valid column name"),
                );
            }
            let Some(schema) = self.table(table.table) else {
                self.note(
                    format!("{path}.table"),
                    format!(
                        "table {:?} is not declared: its schema is discovered from the database at run time, so its columns are not checked here",
                        table.table
                    ),
                );
                continue;
            };
            let Some(cursor) = table.cursor_column else {
                continue;
            };
            match schema.column(cursor) {
                None if cursor == table.id_column => {}
                None => {
                    let hint = suggest::did_you_mean(
                        cursor,
                        schema.columns.iter().map(|c| c.name.as_str()),
                    );
                    self.error(
                        format!("{path}.cursor_column"),
                        format!("table {:?} has no column {cursor:?}", table.table),
                    )
                    .hint = hint;
                }
                Some(column)
                    if matches!(
                        column.column_type,
                        ColumnType::Boolean | ColumnType::Json | ColumnType::Null
                    ) =>
                {
                    self.error(
                        format!("{path}.cursor_column"),
                        format!(
                            "schema mismatch: column {cursor:?} is a {}, which cannot order changes",
                            column.column_type.name()
                        ),
                    )
                    .hint = Some(
                        "use an integer, number, timestamp or string column that grows with every change"
                            .to_string(),
                    );
                }
                Some(_) => {}
            }
        }
    }

    fn graph(&mut self) -> Graph<'s> {
        let graph = Graph { spec: self.spec };
        // An operator reading itself is reported by the input check.
        for cycle in graph.cycles().into_iter().filter(|c| c.len() > 2) {
            let first = cycle[0].clone();
            self.error(
                format!("{}.input", child_path("operators", &first)),
                format!("operators form a cycle of inputs: {}", cycle.join(" → ")),
            )
            .hint = Some(
                "each arrow points to an operator's input; every chain of inputs must lead back to a source"
                    .to_string(),
            );
        }
        graph
    }

    /// Checks that `input` (at `path`) names a source or an operator other than `own`.
    fn input(&mut self, path: String, input: &str, own: &str) {
        let spec = self.spec;
        if input == own {
            self.error(path, format!("{input:?} cannot read itself"));
            return;
        }
        if spec.sources.contains(input) || spec.operators.contains(input) {
            return;
        }
        let candidates: Vec<&str> = spec
            .sources
            .names()
            .chain(spec.operators.names())
            .filter(|n| *n != own)
            .collect();
        let hint = if spec.sinks.contains(input) {
            Some(format!("{input:?} is a sink; a sink cannot be read"))
        } else {
            suggest::did_you_mean(input, candidates.iter().copied()).or_else(|| {
                (!candidates.is_empty())
                    .then(|| format!("sources and operators: {}", suggest::list(&candidates)))
            })
        };
        if let Some(meant) = suggest::closest(input, candidates.iter().copied()) {
            self.meant.insert(meant.to_string());
        }
        self.error(path, format!("{input:?} is not a source or operator"))
            .hint = hint;
    }

    /// The declared schemas and the discovered table names of the tables reaching `name` (a
    /// source or an operator); `None` when the chain is broken.
    fn reaching(&self, graph: &Graph<'_>, name: &str) -> Option<(Vec<TableSchema>, Vec<String>)> {
        let (source, _) = graph.chain(name)?;
        let names: Vec<String> = match self.spec.sources.get(&source)? {
            SourceSpec::Cloudwatch(spec) => return Some((vec![spec.table_schema()], Vec::new())),
            SourceSpec::Jsonl(spec) => vec![spec.table.clone()],
            SourceSpec::Iceberg(spec) => vec![spec.table.clone()],
            SourceSpec::Bigquery(spec) => spec.tables.iter().map(|t| t.table.clone()).collect(),
            SourceSpec::Sqlite(spec) => spec.tables.iter().map(|t| t.table.clone()).collect(),
            SourceSpec::Postgres(spec) => spec.tables.iter().map(|t| t.table.clone()).collect(),
            SourceSpec::Mysql(spec) => spec.tables.iter().map(|t| t.table.clone()).collect(),
            SourceSpec::Gateway(spec) => gateway_tables(self.spec, spec),
        };
        let mut declared = Vec::new();
        let mut discovered = Vec::new();
        for name in names {
            match self.table(&name) {
                Some(schema) => declared.push(schema.clone()),
                None => discovered.push(name),
            }
        }
        Some((declared, discovered))
    }

    fn operators(&mut self, graph: &Graph<'_>) -> BTreeMap<String, FilterPlan> {
        let mut plans = BTreeMap::new();
        let spec = self.spec;
        for (name, op) in spec.operators.iter() {
            let at = child_path("operators", name);
            match op {
                OperatorSpec::Filter(spec) => {
                    self.input(format!("{at}.input"), &spec.input, name);
                    if let Some(plan) = self.filter(graph, &at, spec) {
                        plans.insert(name.to_string(), plan);
                    }
                }
            }
        }
        plans
    }

    fn filter(&mut self, graph: &Graph<'_>, at: &str, spec: &FilterSpec) -> Option<FilterPlan> {
        // Where rule problems are reported: inside inline rules, or at the file's path.
        let (rules, rules_at, file_prefix) = match (&spec.rules, &spec.rules_file) {
            (Some(_), Some(_)) => {
                self.error(at, "give either rules or rules_file, not both");
                return None;
            }
            (None, None) => {
                self.error(at, "a filter needs rules (inline) or rules_file")
                    .hint = Some("e.g. rules_file: sync-rules.json".to_string());
                return None;
            }
            (Some(value), None) => (SyncRules::from_value(value), format!("{at}.rules"), None),
            (None, Some(file)) => {
                let path = format!("{at}.rules_file");
                match self.inputs.rules_files.get(file) {
                    Some(Ok(text)) => (SyncRules::from_json(text), path, Some(file.clone())),
                    Some(Err(reason)) => {
                        self.error(path, format!("cannot read {file:?}: {reason}"))
                            .hint = Some(
                            "a relative rules_file is relative to the pipeline file's directory"
                                .to_string(),
                        );
                        return None;
                    }
                    None => {
                        self.error(path, format!("{file:?} was not read before validation"));
                        return None;
                    }
                }
            }
        };
        let rules = match rules {
            Ok(rules) => rules,
            Err(e) => {
                self.rule_problems(
                    &rules_at,
                    file_prefix.as_deref(),
                    &kernel_message(&e),
                    None,
                    &[],
                );
                return None;
            }
        };
        let claims = spec
            .claims
            .iter()
            .fold(Claims::new(), |claims, (name, values)| {
                claims.with(name, values.0.clone())
            });

        // Claims the rules use but the filter does not set.
        let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (i, bucket) in rules.buckets.iter().enumerate() {
            for filter in &bucket.filters {
                if let Some(claim) = filter.claim()
                    && !spec.claims.contains_key(claim)
                {
                    let label = format!("buckets[{i}] {:?}", bucket.name);
                    let users = missing.entry(claim).or_default();
                    if !users.contains(&label) {
                        users.push(label);
                    }
                }
            }
        }
        for (claim, users) in missing {
            let path = if spec.claims.is_empty() {
                at.to_string()
            } else {
                format!("{at}.claims")
            };
            self.warning(
                path,
                format!(
                    "the rules use claim {claim:?} (in {}), which this filter does not set, so those filters match nothing",
                    users.join(", ")
                ),
            )
            .hint = Some(format!("add it under claims, e.g. claims: {{{claim}: ...}}"));
        }

        // The rules against the tables that reach the filter.
        if let Some((declared, discovered)) = self.reaching(graph, &spec.input) {
            let schemas: Vec<TableSchema> = declared.clone();
            if let Err(e) = rules.check_against(&schemas) {
                self.rule_problems(
                    &rules_at,
                    file_prefix.as_deref(),
                    &kernel_message(&e),
                    Some(&rules),
                    &schemas,
                );
            }
            let reaching: Vec<&str> = declared
                .iter()
                .map(|s| s.table.as_str())
                .chain(discovered.iter().map(String::as_str))
                .collect();
            for (i, bucket) in rules.buckets.iter().enumerate() {
                for (k, table) in bucket.tables.iter().enumerate() {
                    let reaches = declared
                        .iter()
                        .any(|s| s.table == *table || s.delta_table() == table)
                        || discovered.iter().any(|d| d == table);
                    if !reaches {
                        let path = match &file_prefix {
                            None => format!("{rules_at}.buckets[{i}].tables[{k}]"),
                            Some(_) => rules_at.clone(),
                        };
                        self.warning(
                            path,
                            format!(
                                "bucket {:?} names table {table:?}, which does not reach this filter (it carries: {})",
                                bucket.name,
                                suggest::list(&reaching)
                            ),
                        );
                    }
                }
            }
            if rules.is_filtering() {
                for table in &reaching {
                    if !rules.buckets.iter().any(|b| b.applies_to(table)) {
                        self.warning(
                            rules_at.clone(),
                            format!("no bucket applies to table {table:?}: the filter drops all of its rows"),
                        );
                    }
                }
            }
        }
        Some(FilterPlan { rules, claims })
    }

    /// Reports the problems of a sync rules document (the kernel joins them with "; "), each at
    /// its own path inside inline rules, or at the `rules_file` path prefixed with the file.
    fn rule_problems(
        &mut self,
        rules_at: &str,
        file: Option<&str>,
        message: &str,
        rules: Option<&SyncRules>,
        schemas: &[TableSchema],
    ) {
        for problem in split_problems(message) {
            let (location, text) = match problem.split_once(": ") {
                Some((loc, text)) if loc.starts_with("buckets") || loc == "version" => {
                    (Some(strip_bucket_labels(loc)), text.to_string())
                }
                _ => (None, problem.to_string()),
            };
            let hint = location
                .as_deref()
                .and_then(|loc| column_hint(loc, rules?, schemas));
            let (path, message) = match (file, &location) {
                (None, Some(loc)) => (format!("{rules_at}.{loc}"), text),
                (None, None) => (rules_at.to_string(), text),
                (Some(file), Some(loc)) => (rules_at.to_string(), format!("{file}: {loc}: {text}")),
                (Some(file), None) => (rules_at.to_string(), format!("{file}: {text}")),
            };
            self.error(path, message).hint = hint;
        }
    }

    fn sinks(&mut self) {
        let spec = self.spec;
        for (name, sink) in spec.sinks.iter() {
            let at = child_path("sinks", name);
            match sink.input() {
                Some(input) => self.input(format!("{at}.input"), input, name),
                None => {
                    self.error(at.clone(), "missing field `input`").hint =
                        Some("name the source or operator this sink reads".to_string());
                }
            }
            self.sink(&at, sink);
        }
    }

    fn s3(&mut self, at: &str, s3: Option<&S3Spec>) {
        if let Some(endpoint) = s3.and_then(|s| s.endpoint.as_ref())
            && !is_http_url(endpoint)
        {
            self.error(
                format!("{at}.endpoint"),
                format!("{endpoint:?} is not an http(s) URL with a host"),
            )
            .hint = Some(
                "e.g. http://127.0.0.1:9000 or https://<account>.r2.cloudflarestorage.com"
                    .to_string(),
            );
        }
    }

    fn sink(&mut self, at: &str, sink: &SinkSpec) {
        match sink {
            SinkSpec::Iceberg(spec) => {
                match &spec.catalog {
                    CatalogSpec::Sql(c) => {
                        self.non_empty(format!("{at}.catalog.uri"), &c.uri);
                        self.non_empty(format!("{at}.catalog.warehouse"), &c.warehouse);
                    }
                    CatalogSpec::Rest(c) => {
                        if !is_http_url(&c.uri) {
                            self.error(
                                format!("{at}.catalog.uri"),
                                format!("{:?} is not an http(s) URL with a host", c.uri),
                            )
                            .hint = Some(
                                "the catalogue's base URL, e.g. http://127.0.0.1:8181".to_string(),
                            );
                        }
                        self.non_empty(format!("{at}.catalog.warehouse"), &c.warehouse);
                        self.s3(&format!("{at}.catalog.s3"), c.s3.as_ref());
                    }
                }
                if spec.namespace.is_empty() || !spec.namespace.split('.').all(is_identifier) {
                    self.error(
                        format!("{at}.namespace"),
                        format!("{:?} is not a valid namespace", spec.namespace),
                    )
                    .hint = Some(
                        "one or more identifiers separated by dots, e.g. lakesync or analytics.raw"
                            .to_string(),
                    );
                }
            }
            SinkSpec::Sqlite(spec) => self.non_empty(format!("{at}.path"), &spec.path),
            SinkSpec::Postgres(spec) => {
                self.non_empty(format!("{at}.url"), &spec.url);
                if !is_identifier(&spec.schema) {
                    self.error(
                        format!("{at}.schema"),
                        format!("{:?} is not a valid schema name", spec.schema),
                    );
                }
            }
            SinkSpec::Mysql(spec) => self.non_empty(format!("{at}.url"), &spec.url),
            SinkSpec::Parquet(spec) => {
                self.non_empty(format!("{at}.path"), &spec.path);
                let s3 = crate::adapters::iceberg::storage::split_s3_url(&spec.path);
                match s3 {
                    Some(("", _)) => {
                        self.error(
                            format!("{at}.path"),
                            format!("{:?} names no bucket", spec.path),
                        )
                        .hint = Some("s3://bucket/prefix".to_string());
                    }
                    Some(_) => {}
                    None if spec.path.contains("://") => {
                        self.error(
                            format!("{at}.path"),
                            format!(
                                "{:?}: only s3:// URLs and local directories are supported",
                                spec.path
                            ),
                        );
                    }
                    None if spec.s3.is_some() => {
                        self.error(
                            format!("{at}.s3"),
                            "S3 settings need an s3:// path".to_string(),
                        );
                    }
                    None => {}
                }
                self.s3(&format!("{at}.s3"), spec.s3.as_ref());
            }
            SinkSpec::Bigquery(spec) => self.bigquery_sink(at, spec),
            SinkSpec::Tier(spec) => {
                if spec.max_age.get().is_zero() {
                    self.error(format!("{at}.max_age"), "must be longer than 0s");
                }
                for (side, inner) in [("hot", &spec.hot), ("cold", &spec.cold)] {
                    let path = format!("{at}.{side}");
                    if let SinkSpec::Tier(_) = inner.as_ref() {
                        self.error(
                            format!("{path}.type"),
                            format!("a tier's {side} sink cannot be a tier"),
                        )
                        .hint = Some("use iceberg, sqlite or parquet".to_string());
                        continue;
                    }
                    if inner.input().is_some() {
                        self.error(
                            format!("{path}.input"),
                            format!("the {side} sink reads from its tier"),
                        )
                        .hint = Some("remove input".to_string());
                    }
                    if inner.required_field().is_some() {
                        self.error(
                            format!("{path}.required"),
                            format!("the {side} sink is as required as its tier"),
                        )
                        .hint = Some("remove required here; set it on the tier".to_string());
                    }
                    self.sink(&path, inner);
                }
            }
        }
    }

    fn unconsumed(&mut self) {
        let spec = self.spec;
        let read: BTreeSet<&str> = spec
            .operators
            .iter()
            .map(|(_, op)| op.input())
            .chain(spec.sinks.iter().filter_map(|(_, s)| s.input()))
            .collect();
        for (kind, what, names) in [
            (
                "sources",
                "source",
                spec.sources.names().collect::<Vec<_>>(),
            ),
            (
                "operators",
                "operator",
                spec.operators.names().collect::<Vec<_>>(),
            ),
        ] {
            for name in names {
                if !read.contains(name) && !self.meant.contains(name) {
                    self.warning(
                        child_path(kind, name),
                        format!("nothing reads {what} {name:?}"),
                    )
                    .hint = Some(format!(
                        "give a sink or operator `input: {name}`, or remove it"
                    ));
                }
            }
        }
    }
}

/// Places a [`TableSchema::validate`] message (`table "t" columns[2]: …`, `table name: …`) at
/// the path of what it is about, below `at` (`tables[i]`).
fn table_problem(at: &str, table: &str, message: &str) -> (String, String) {
    if let Some(rest) = message.strip_prefix("table name: ") {
        return (format!("{at}.table"), rest.to_string());
    }
    if let Some(rest) = message.strip_prefix("sourceTable: ") {
        return (format!("{at}.sourceTable"), rest.to_string());
    }
    let rest = message
        .strip_prefix(&format!("table {table:?} "))
        .or_else(|| message.strip_prefix(&format!("table {table:?}: ")));
    match rest {
        Some(rest) if rest.starts_with("columns[") => match rest.split_once(": ") {
            Some((column, text)) => (format!("{at}.{column}"), text.to_string()),
            None => (at.to_string(), message.to_string()),
        },
        Some(rest) if rest.starts_with("primaryKey") => {
            (format!("{at}.primaryKey"), rest.to_string())
        }
        Some(rest) if rest.starts_with("externalIdColumn") => {
            (format!("{at}.externalIdColumn"), rest.to_string())
        }
        _ => (at.to_string(), message.to_string()),
    }
}

/// Splits the kernel's "; "-joined problem list, only where the next problem starts with a
/// location (so a "; " inside a quoted value does not split).
fn split_problems(message: &str) -> Vec<&str> {
    let mut problems = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(found) = message[search..].find("; ") {
        let at = search + found;
        let next = &message[at + 2..];
        if next.starts_with("buckets")
            || next.starts_with("version")
            || next.starts_with("the document")
        {
            problems.push(&message[start..at]);
            start = at + 2;
        }
        search = at + 2;
    }
    problems.push(&message[start..]);
    problems
}

/// `buckets[1] ("user-todos").filters[0].op` → `buckets[1].filters[0].op`.
fn strip_bucket_labels(location: &str) -> String {
    let mut out = String::with_capacity(location.len());
    let mut rest = location;
    while let Some(open) = rest.find(" (\"") {
        out.push_str(&rest[..open]);
        match rest[open..].find("\")") {
            Some(close) => rest = &rest[open + close + 2..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// "did you mean" for `buckets[i].filters[j].column` problems, from the columns of the tables
/// the bucket applies to.
fn column_hint(location: &str, rules: &SyncRules, schemas: &[TableSchema]) -> Option<String> {
    let rest = location.strip_prefix("buckets[")?;
    let (i, rest) = rest.split_once("].filters[")?;
    let (j, rest) = rest.split_once(']')?;
    if rest != ".column" {
        return None;
    }
    let bucket = rules.buckets.get(i.parse::<usize>().ok()?)?;
    let filter = bucket.filters.get(j.parse::<usize>().ok()?)?;
    let columns: Vec<&str> = schemas
        .iter()
        .filter(|s| bucket.applies_to(&s.table) || bucket.applies_to(s.delta_table()))
        .flat_map(|s| s.columns.iter().map(|c| c.name.as_str()))
        .collect();
    suggest::did_you_mean(&filter.column, columns)
}

/// The tables a gateway source accepts: those it lists, or every declared table.
pub fn gateway_tables(spec: &PipelineSpec, gateway: &GatewaySourceSpec) -> Vec<String> {
    if gateway.tables.is_empty() {
        spec.tables.iter().map(|t| t.table.clone()).collect()
    } else {
        gateway.tables.clone()
    }
}

/// A table a polling source reads, as its checks need it.
struct PolledTable<'a> {
    table: &'a str,
    id_column: &'a str,
    cursor_column: Option<&'a str>,
    is_cursor: bool,
    lookback: Option<&'a HumanDuration>,
}

/// `http://host…` or `https://host…` with a non-empty host.
fn is_http_url(url: &str) -> bool {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .is_some_and(|host| !host.is_empty() && !host.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_identifier("payments_only") && is_identifier("_x") && is_identifier("A1"));
        assert!(!is_identifier("1x") && !is_identifier("a-b") && !is_identifier(""));
        assert!(!is_identifier(&"x".repeat(65)) && is_identifier(&"x".repeat(64)));
        assert!(is_pipeline_name("quickstart") && is_pipeline_name("0-archive_2"));
        assert!(
            !is_pipeline_name("Quickstart") && !is_pipeline_name("-x") && !is_pipeline_name("")
        );
        assert!(!is_pipeline_name(&"x".repeat(64)) && is_pipeline_name(&"x".repeat(63)));
    }

    #[test]
    fn kernel_problem_lists_split_at_locations() {
        let message = "version: must be a positive integer, found 0; buckets[1] (\"a; b\").filters[0].op: unknown op \"x; y\"; buckets[2].name: missing";
        assert_eq!(
            split_problems(message),
            [
                "version: must be a positive integer, found 0",
                "buckets[1] (\"a; b\").filters[0].op: unknown op \"x; y\"",
                "buckets[2].name: missing"
            ]
        );
        assert_eq!(
            strip_bucket_labels("buckets[1] (\"user-todos\").filters[0].op"),
            "buckets[1].filters[0].op"
        );
        assert_eq!(
            strip_bucket_labels("buckets[3].tables[0]"),
            "buckets[3].tables[0]"
        );
    }

    #[test]
    fn operators_are_ordered_after_their_inputs_and_lanes_run_source_to_sink() {
        let text = "version: 1\nname: t\ntables: [{table: t, columns: [{name: c, type: string}]}]\n\
            sources: {s: {type: jsonl, path: s.jsonl, table: t}}\n\
            operators:\n  \
              last: {type: filter, input: middle, rules: {version: 1, buckets: []}}\n  \
              middle: {type: filter, input: first, rules: {version: 1, buckets: []}}\n  \
              first: {type: filter, input: s, rules: {version: 1, buckets: []}}\n\
            sinks:\n  \
              a: {type: sqlite, input: last, path: a.sqlite}\n  \
              b: {type: parquet, input: first, path: b, required: false}\n  \
              c: {type: sqlite, input: s, path: c.sqlite}\n";
        let spec = super::super::parse(text, &super::super::Env::default())
            .unwrap()
            .spec;
        let (plan, diagnostics) = validate(&spec, &Inputs::new("/p"));
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let plan = plan.unwrap();
        assert_eq!(plan.operator_order, ["first", "middle", "last"]);
        let lanes: Vec<(&str, &str, Vec<&str>, bool)> = plan
            .lanes
            .iter()
            .map(|l| {
                (
                    l.sink.as_str(),
                    l.source.as_str(),
                    l.operators.iter().map(String::as_str).collect(),
                    l.required,
                )
            })
            .collect();
        assert_eq!(
            lanes,
            [
                ("a", "s", vec!["first", "middle", "last"], true),
                ("b", "s", vec!["first"], false),
                ("c", "s", vec![], true),
            ]
        );
    }

    #[test]
    fn table_problems_are_placed_at_what_they_are_about() {
        let at = "tables[1]";
        for (message, path, text) in [
            (
                "table name: must not be empty",
                "tables[1].table",
                "must not be empty",
            ),
            (
                "table \"t\" columns[2]: \"_op\" is reserved by LakeSync",
                "tables[1].columns[2]",
                "\"_op\" is reserved by LakeSync",
            ),
            (
                "table \"t\": primaryKey must name at least one column",
                "tables[1].primaryKey",
                "primaryKey must name at least one column",
            ),
            (
                "table \"t\": externalIdColumn \"x\" is not a column",
                "tables[1].externalIdColumn",
                "externalIdColumn \"x\" is not a column",
            ),
            ("something else", "tables[1]", "something else"),
        ] {
            assert_eq!(
                table_problem(at, "t", message),
                (path.to_string(), text.to_string()),
                "{message}"
            );
        }
    }
}
