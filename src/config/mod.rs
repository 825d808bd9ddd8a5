//! Pipeline files (`pipelines/*.yaml`): YAML → typed spec → validated [`Plan`].
//!
//! Reading a file has two phases (DESIGN §7), and only then does the runtime build anything:
//!
//! 1. **Parse** ([`parse`]): serde-saphyr reads the YAML into a tree where every node knows its
//!    path and line; `${VAR}` is interpolated in string values ([`interpolate`]); the tree is
//!    decoded into a [`PipelineSpec`] — `deny_unknown_fields` everywhere, closed `type`-tagged
//!    enums for sources, operators, sinks and catalogues, typed durations and sizes ([`units`]).
//!    Decoding recovers after an error, so *every* unknown field, unknown type or bad value is
//!    reported, each with a "did you mean" hint when a known name is close ([`suggest`]).
//! 2. **Validate** ([`validate()`]): a pure function of the spec (and the text of any
//!    `rules_file`, read beforehand by [`Inputs::read`]) that checks names, inputs, cycles,
//!    tables and sync rules against schemas, and returns the [`Plan`] with every error and
//!    warning found. It runs once the file decodes: a file with decoding errors reports those
//!    (all of them) first, as a compiler reports syntax errors before type errors.
//!
//! Each problem is a [`Diagnostic`]: severity, YAML path (`sinks.lake.input`), line and column,
//! message, optional hint. A [`Report`] renders them for people:
//!
//! ```text
//! pipelines/broken.yaml:18:12: error: sinks.lake.input: "paymets_only" is not a source or operator
//!   hint: did you mean "payments_only"?
//! pipelines/broken.yaml: invalid (1 error)
//! ```
//!
//! Entry points: [`check_file`] / [`check_str`] (parse + validate, for `lakesync validate` and
//! tests), [`load_plan`] (for `lakesync run`: a plan or an error), [`validate_files`] (the CLI's
//! report for several files) and [`json_schema()`] (the editor schema, `lakesync schema`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

pub mod interpolate;
pub mod json_schema;
mod node;
pub mod plan;
pub mod spec;
pub mod suggest;
pub mod units;
pub mod validate;

pub use json_schema::json_schema;
pub use plan::{FilterPlan, Lane, Plan};
pub use spec::{
    CaptureStrategy, CatalogSpec, ClaimValues, FilterSpec, FlushSpec, IcebergSinkSpec, JsonlFormat,
    JsonlSourceSpec, Named, OperatorSpec, ParquetCompression, ParquetSinkSpec, PipelineSpec,
    RestCatalogSpec, S3Spec, SinkSpec, SourceSpec, SqlCatalogSpec, SqliteSinkSpec,
    SqliteSourceSpec, SqliteTableSpec, TierSinkSpec,
};
pub use units::{HumanDuration, HumanSize};
pub use validate::{Inputs, validate};

use node::{Kind, Node};

/// A line and column in a pipeline file (1-based, in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The line, from 1.
    pub line: u64,
    /// The column, from 1.
    pub column: u64,
}

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The file cannot be run.
    Error,
    /// The file runs, but probably not as meant.
    Warning,
    /// Something worth knowing, e.g. what cannot be checked before run time.
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Note => "note",
        })
    }
}

/// One problem in a pipeline file, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error, warning or note.
    pub severity: Severity,
    /// The YAML path of what is wrong (`sinks.lake.input`, `tables[0].columns[1]`); empty for
    /// the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something to say.
    pub hint: Option<String>,
    /// Where in the file, when known.
    pub location: Option<Location>,
}

impl Diagnostic {
    fn new(severity: Severity, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity,
            path: path.into(),
            message: message.into(),
            hint: None,
            location: None,
        }
    }

    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, path, message)
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, path, message)
    }

    /// A note at `path`.
    pub fn note(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Note, path, message)
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `severity: path: message`, without location or hint.
    fn headline(&self) -> String {
        if self.path.is_empty() {
            format!("{}: {}", self.severity, self.message)
        } else {
            format!("{}: {}: {}", self.severity, self.path, self.message)
        }
    }
}

impl fmt::Display for Diagnostic {
    /// One line: `line:column: severity: path: message (hint: …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.location {
            write!(f, "{}:{}: ", l.line, l.column)?;
        }
        f.write_str(&self.headline())?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// The environment `${VAR}` reads: a snapshot of the process's, or a map given by tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process's environment now (variables that are not valid Unicode are left out).
    pub fn process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// An environment of exactly these variables.
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// A pipeline file parsed and decoded, before validation.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The decoded file.
    pub spec: PipelineSpec,
    /// Path → position, for placing validation diagnostics.
    locations: HashMap<String, Location>,
}

impl Parsed {
    /// Fills in `d.location` from its path (or the nearest enclosing path that has one).
    pub fn locate(&self, d: &mut Diagnostic) {
        if d.location.is_some() {
            return;
        }
        let mut path = d.path.as_str();
        loop {
            if let Some(location) = self.locations.get(path) {
                d.location = Some(*location);
                return;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None if !path.is_empty() => path = "",
                None => return,
            }
        }
    }
}

/// Parses a pipeline file's text: YAML, `${VAR}` interpolation, decoding into the spec. Returns
/// every problem when any step fails.
pub fn parse(text: &str, env: &Env) -> Result<Parsed, Vec<Diagnostic>> {
    let mut tree = node::parse(text)?;
    let mut problems = interpolate::interpolate_tree(&mut tree, env);
    stringify_rule_values(&mut tree);
    match node::decode::<PipelineSpec>(&tree) {
        Ok(spec) if problems.is_empty() => Ok(Parsed {
            spec,
            locations: locations(&tree),
        }),
        Ok(_) => Err(problems),
        Err(decode_problems) => {
            // A value whose interpolation failed is reported once, not again as a bad value.
            let failed: Vec<String> = problems.iter().map(|d| d.path.clone()).collect();
            problems.extend(
                decode_problems
                    .into_iter()
                    .filter(|d| !failed.contains(&d.path)),
            );
            Err(problems)
        }
    }
}

/// In inline sync rules (a filter operator's `rules`, a gateway's `sync_rules`), a filter `value`
/// written as a plain YAML number or boolean (`value: 4`) is meant as its text: the rules format
/// wants strings.
fn stringify_rule_values(tree: &mut Node) {
    fn entry_mut<'n>(node: &'n mut Node, key: &str) -> Option<&'n mut Node> {
        match &mut node.kind {
            Kind::Map(entries) => entries
                .iter_mut()
                .find(|e| e.key == key)
                .map(|e| &mut e.value),
            _ => None,
        }
    }
    for (section, key) in [("operators", "rules"), ("sources", "sync_rules")] {
        let Some(Kind::Map(entries)) = entry_mut(tree, section).map(|n| &mut n.kind) else {
            continue;
        };
        for entry in entries {
            if let Some(rules) = entry_mut(&mut entry.value, key) {
                stringify_filter_values(rules);
            }
        }
    }
}

/// Turns the numbers and booleans of `buckets[].filters[].value` in one rules document into
/// their text.
fn stringify_filter_values(rules: &mut Node) {
    fn entry_mut<'n>(node: &'n mut Node, key: &str) -> Option<&'n mut Node> {
        match &mut node.kind {
            Kind::Map(entries) => entries
                .iter_mut()
                .find(|e| e.key == key)
                .map(|e| &mut e.value),
            _ => None,
        }
    }
    fn items_mut(node: &mut Node) -> &mut [Node] {
        match &mut node.kind {
            Kind::Seq(items) => items,
            _ => &mut [],
        }
    }
    let Some(buckets) = entry_mut(rules, "buckets") else {
        return;
    };
    for bucket in items_mut(buckets) {
        let Some(filters) = entry_mut(bucket, "filters") else {
            continue;
        };
        for filter in items_mut(filters) {
            if let Some(value) = entry_mut(filter, "value")
                && let Kind::Bool(_) | Kind::Int(_) | Kind::UInt(_) | Kind::Float(_) = value.kind
                && let Some(text) = value.raw.clone()
            {
                value.kind = Kind::Str(text);
            }
        }
    }
}

/// Path → position for every node: a mapping entry holding a mapping or list is placed at its
/// key (`lake:`), a scalar at its value.
fn locations(tree: &Node) -> HashMap<String, Location> {
    fn visit(node: &Node, at: Location, out: &mut HashMap<String, Location>) {
        out.insert(node.path.clone(), at);
        match &node.kind {
            Kind::Seq(items) => items.iter().for_each(|n| visit(n, n.location, out)),
            Kind::Map(entries) => {
                for e in entries {
                    let at = match e.value.kind {
                        Kind::Seq(_) | Kind::Map(_) | Kind::Null => e.key_location,
                        _ => e.value.location,
                    };
                    visit(&e.value, at, out);
                }
            }
            _ => {}
        }
    }
    let mut out = HashMap::new();
    visit(tree, Location { line: 1, column: 1 }, &mut out);
    out
}

/// What checking a pipeline file found: the diagnostics (sorted by position) and, when there
/// was no error, the plan.
#[derive(Clone, Debug)]
pub struct Report {
    /// The file, as named by the caller.
    pub file: String,
    /// Errors, warnings and notes, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// The validated pipeline, when there was no error.
    pub plan: Option<Plan>,
}

impl Report {
    fn new(file: String, mut diagnostics: Vec<Diagnostic>, plan: Option<Plan>) -> Self {
        // Stable: same-line problems keep the order they were found in.
        diagnostics.sort_by_key(|d| d.location);
        Self {
            file,
            diagnostics,
            plan,
        }
    }

    /// Whether the file has no error (warnings and notes allowed).
    pub fn is_ok(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }
}

/// `1 error`, `2 errors`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

impl fmt::Display for Report {
    /// One block per diagnostic (`file:line:column: severity: path: message`, then an indented
    /// hint), then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            match d.location {
                Some(l) => write!(f, "{}:{}:{}: ", self.file, l.line, l.column)?,
                None => write!(f, "{}: ", self.file)?,
            }
            writeln!(f, "{}", d.headline())?;
            if let Some(hint) = &d.hint {
                writeln!(f, "  hint: {hint}")?;
            }
        }
        let warnings = self.count(Severity::Warning);
        let also = if warnings > 0 {
            format!(", {}", plural(warnings, "warning"))
        } else {
            String::new()
        };
        match &self.plan {
            Some(plan) if self.is_ok() => writeln!(
                f,
                "{}: valid: pipeline {:?}: {}, {}, {}{also}",
                self.file,
                plan.name,
                plural(plan.sources.len(), "source"),
                plural(plan.operators.len(), "operator"),
                plural(plan.sinks.len(), "sink"),
            ),
            _ => writeln!(
                f,
                "{}: invalid ({}{also})",
                self.file,
                plural(self.count(Severity::Error), "error")
            ),
        }
    }
}

/// Parses and validates a pipeline file's text. `file` names it in the report; `base_dir` is
/// its directory (relative paths in the file are relative to it; `rules_file`s are read from it).
pub fn check_str(text: &str, file: impl Into<String>, base_dir: &Path, env: &Env) -> Report {
    let file = file.into();
    let parsed = match parse(text, env) {
        Ok(parsed) => parsed,
        Err(problems) => return Report::new(file, problems, None),
    };
    let inputs = Inputs::read(&parsed.spec, base_dir);
    let (plan, mut diagnostics) = validate(&parsed.spec, &inputs);
    for d in &mut diagnostics {
        parsed.locate(d);
    }
    Report::new(file, diagnostics, plan)
}

/// Reads, parses and validates the pipeline file at `path`.
pub fn check_file(path: &Path, env: &Env) -> Report {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => check_str(&text, file, path.parent().unwrap_or(Path::new("")), env),
        Err(e) => Report::new(
            file,
            vec![Diagnostic::error("", format!("cannot read the file: {e}"))],
            None,
        ),
    }
}

/// The plan of the pipeline file at `path`, for running it. Warnings and notes are logged;
/// errors become one [`crate::Error`] (kind `User`) carrying the whole report.
pub fn load_plan(path: &Path, env: &Env) -> crate::Result<Plan> {
    let report = check_file(path, env);
    for d in report.diagnostics.iter().filter(|d| !d.is_error()) {
        match d.severity {
            Severity::Warning => {
                let hint = d.hint.as_deref().unwrap_or("");
                tracing::warn!(file = %report.file, path = %d.path, hint, "{}", d.message)
            }
            _ => tracing::info!(file = %report.file, path = %d.path, "{}", d.message),
        }
    }
    match report.plan {
        Some(plan) if report.is_ok() => Ok(plan),
        _ => Err(crate::Error::invalid(
            "pipeline",
            report.to_string().trim_end(),
        )),
    }
}

/// `lakesync validate FILE…`: the report of every file (with the process's environment), and
/// whether all of them are valid.
pub fn validate_files(paths: &[PathBuf]) -> (String, bool) {
    let env = Env::process();
    let mut text = String::new();
    let mut all_ok = true;
    for path in paths {
        let report = check_file(path, &env);
        all_ok &= report.is_ok();
        text.push_str(&report.to_string());
    }
    (text, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"version: 1
name: t
tables:
  - table: tasks
    columns: [{name: title, type: string}]
sources:
  s:
    type: jsonl
    path: tasks.jsonl
    table: tasks
sinks:
  out:
    type: sqlite
    input: s
    path: ${OUT_DIR:-out}/t.sqlite
"#;

    #[test]
    fn a_minimal_pipeline_validates() {
        let report = check_str(MINIMAL, "t.yaml", Path::new("/p"), &Env::default());
        assert!(report.is_ok(), "{report}");
        let plan = report.plan.as_ref().unwrap();
        assert_eq!(plan.state_dir, Path::new("/p/.lakesync/t"));
        assert_eq!(plan.lanes.len(), 1);
        assert_eq!(plan.lanes[0].source, "s");
        let SinkSpec::Sqlite(sink) = plan.sinks.get("out").unwrap() else {
            panic!("not sqlite")
        };
        assert_eq!(sink.path, "out/t.sqlite");
        assert!(sink.materialise);
        assert_eq!(
            report.to_string(),
            "t.yaml: valid: pipeline \"t\": 1 source, 0 operators, 1 sink\n"
        );
    }

    #[test]
    fn interpolation_is_injectable_and_placed() {
        let env = Env::from_vars([("OUT_DIR", "/data")]);
        let report = check_str(MINIMAL, "t.yaml", Path::new(""), &env);
        let SinkSpec::Sqlite(sink) = report.plan.unwrap().sinks.get("out").unwrap().clone() else {
            panic!("not sqlite")
        };
        assert_eq!(sink.path, "/data/t.sqlite");
        let text = MINIMAL.replace("${OUT_DIR:-out}", "${OUT_DIR}");
        let report = check_str(&text, "t.yaml", Path::new(""), &Env::default());
        assert_eq!(report.diagnostics.len(), 1, "{report}");
        let d = &report.diagnostics[0];
        assert_eq!(d.path, "sinks.out.path");
        assert_eq!(d.message, "environment variable OUT_DIR is not set");
        assert_eq!(
            d.location,
            Some(Location {
                line: 15,
                column: 11
            })
        );
    }

    #[test]
    fn interpolated_values_are_typed_and_never_echoed() {
        let text = MINIMAL.replace(
            "path: ${OUT_DIR:-out}/t.sqlite",
            "path: out.sqlite\n    materialise: ${FLAG}",
        );
        let env = Env::from_vars([("FLAG", "false")]);
        let report = check_str(&text, "t.yaml", Path::new(""), &env);
        let SinkSpec::Sqlite(sink) = report.plan.unwrap().sinks.get("out").unwrap().clone() else {
            panic!("not sqlite")
        };
        assert!(!sink.materialise);
        let env = Env::from_vars([("FLAG", "hunter2")]);
        let report = check_str(&text, "t.yaml", Path::new(""), &env);
        let text = report.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("expected a boolean, found the string <value of ${FLAG}>"),
            "{text}"
        );
    }

    #[test]
    fn specs_round_trip_through_other_formats() {
        let spec = parse(MINIMAL, &Env::default()).unwrap().spec;
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["sinks"]["out"]["type"], "sqlite");
        assert_eq!(json["flush"]["max_bytes"], "64MiB");
        assert_eq!(
            serde_json::from_value::<PipelineSpec>(json.clone()).unwrap(),
            spec
        );
        // `type` need not come first for other deserialisers.
        let mut text = serde_json::to_string(&json).unwrap();
        text = text.replace("{\"type\":\"sqlite\",", "{").replace(
            "\"path\":\"out/t.sqlite\"",
            "\"path\":\"out/t.sqlite\",\"type\":\"sqlite\"",
        );
        assert_eq!(serde_json::from_str::<PipelineSpec>(&text).unwrap(), spec);
        let yaml = serde_saphyr::to_string(&spec).unwrap();
        assert_eq!(serde_saphyr::from_str::<PipelineSpec>(&yaml).unwrap(), spec);
    }

    #[test]
    fn locate_falls_back_to_the_enclosing_path() {
        let parsed = parse(MINIMAL, &Env::default()).unwrap();
        let mut d = Diagnostic::error("sinks.out.nothing[3]", "x");
        parsed.locate(&mut d);
        assert_eq!(
            d.location,
            Some(Location {
                line: 12,
                column: 3
            })
        );
        let mut d = Diagnostic::error("", "x");
        parsed.locate(&mut d);
        assert_eq!(d.location, Some(Location { line: 1, column: 1 }));
    }
}
