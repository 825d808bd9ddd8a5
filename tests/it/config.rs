//! Pipeline files: golden invalid cases, the reference pipelines, the editor schema.
//!
//! `LAKESYNC_BLESS=1 cargo test --test it config` rewrites the expected reports
//! (`tests/pipelines/invalid/*.expected.txt`) and `docs/pipeline.schema.json` from what the code
//! produces now; review the diff before committing it.

use std::path::{Path, PathBuf};

use lakesync::config::{self, Env, Severity, SinkSpec, SourceSpec};

/// Whether to rewrite golden files instead of comparing with them.
fn bless() -> bool {
    std::env::var("LAKESYNC_BLESS").is_ok_and(|v| v == "1")
}

/// The `*.yaml` files in `dir` (relative to the crate root, as the reports name them), sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        std::env::current_dir().unwrap_or_else(|e| panic!("cwd: {e}")),
        root,
        "run from the crate root, so reports name files by relative path"
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|entry| entry.unwrap_or_else(|e| panic!("read {dir}: {e}")).path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter_map(|p| Some(Path::new(dir).join(p.file_name()?)))
        .collect();
    files.sort();
    files
}

/// The fixed environment the golden cases are checked with (never the process's).
fn golden_env() -> Env {
    Env::from_vars([("LAKESYNC_TEST_REGION", "eu-west-1")])
}

/// Each invalid case's report, text for text, against `NAME.expected.txt`.
#[test]
fn invalid_pipelines_report_exactly_what_is_expected() {
    let cases = yaml_files("tests/pipelines/invalid");
    assert!(
        cases.len() >= 9,
        "expected the golden cases, found {cases:?}"
    );
    let mut stale = Vec::new();
    for case in &cases {
        let report = config::check_file(case, &golden_env());
        assert!(
            !report.is_ok(),
            "{} should be invalid:\n{report}",
            case.display()
        );
        let actual = report.to_string();
        let expected_path = case.with_extension("expected.txt");
        if bless() {
            std::fs::write(&expected_path, &actual).expect("write expected report");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            stale.push(format!(
                "--- {} (expected)\n{expected}+++ actual\n{actual}",
                expected_path.display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{} golden report(s) differ; if the new text is right, run \
         `LAKESYNC_BLESS=1 cargo test --test it config` and review the diff:\n\n{}",
        stale.len(),
        stale.join("\n")
    );
}

/// Every reference pipeline validates, with no error and no warning, and points at files that
/// exist.
#[test]
fn every_reference_pipeline_validates() {
    let pipelines = yaml_files("pipelines");
    assert!(!pipelines.is_empty());
    for path in &pipelines {
        let report = config::check_file(path, &Env::default());
        assert!(report.is_ok(), "{report}");
        let warnings: Vec<_> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .collect();
        assert!(warnings.is_empty(), "{report}");
        let plan = report.plan.expect("a valid file has a plan");
        for (name, source) in plan.sources.iter() {
            if let SourceSpec::Jsonl(spec) = source {
                let file = plan.resolve_path(&spec.path);
                assert!(
                    file.is_file(),
                    "{}: source {name}: {} is missing",
                    path.display(),
                    file.display()
                );
            }
        }
        assert_eq!(plan.lanes.len(), plan.sinks.len(), "{}", path.display());
    }
}

#[test]
fn quickstart_plan() {
    let report = config::check_file(Path::new("pipelines/quickstart.yaml"), &Env::default());
    assert_eq!(
        report.to_string(),
        "pipelines/quickstart.yaml: valid: pipeline \"quickstart\": 1 source, 1 operator, 2 sinks\n"
    );
    let plan = report.plan.expect("plan");
    assert_eq!(plan.name, "quickstart");
    assert_eq!(plan.base_dir, Path::new("pipelines"));
    assert_eq!(
        plan.state_dir,
        Path::new("pipelines/../.lakesync/quickstart")
    );
    assert_eq!(plan.flush.max_bytes.get(), 64 << 20);
    assert_eq!(plan.flush.max_age.get(), std::time::Duration::from_secs(5));
    assert_eq!(plan.tables.len(), 1);
    assert_eq!(plan.tables[0].columns.len(), 7);
    assert_eq!(plan.operator_order, ["ada_view"]);
    let lake = plan.lane("lake").expect("lake lane");
    assert_eq!(
        (
            lake.source.as_str(),
            lake.operators.as_slice(),
            lake.required
        ),
        ("tasks_file", &["ada_view".to_string()][..], true)
    );
    let filter = &plan.filters["ada_view"];
    assert_eq!(filter.rules.buckets.len(), 2);
    // `value: 4` in YAML is the rules format's "4".
    assert_eq!(filter.rules.buckets[1].filters[1].value, "4");
    assert_eq!(filter.claims.get("team"), ["payments", "search"]);
    assert_eq!(filter.claims.get("sub"), ["ada"]);
    let Some(SinkSpec::Iceberg(lake)) = plan.sinks.get("lake") else {
        panic!("lake is not iceberg")
    };
    assert_eq!(lake.namespace, "lakesync");
    assert_eq!(
        plan.resolve_path("../lake/warehouse"),
        Path::new("pipelines/../lake/warehouse")
    );
    let (declared, discovered) = plan.source_tables("tasks_file");
    assert_eq!((declared.len(), discovered.len()), (1, 0));
}

#[test]
fn tiered_plan_has_a_best_effort_secondary() {
    let report = config::check_file(Path::new("pipelines/tiered.yaml"), &Env::default());
    let plan = report.plan.expect("plan");
    let mirror = plan.lane("mirror").expect("mirror lane");
    assert!(!mirror.required);
    assert!(mirror.operators.is_empty());
    let by_age = plan.lane("by_age").expect("tier lane");
    assert!(by_age.required);
    assert_eq!(by_age.operators, ["team_view"]);
    let Some(SinkSpec::Tier(tier)) = plan.sinks.get("by_age") else {
        panic!("not a tier")
    };
    assert_eq!(tier.max_age.get().as_secs(), 7 * 86_400);
    assert_eq!(tier.hot.type_name(), "sqlite");
    assert_eq!(tier.cold.type_name(), "parquet");
    // The rules came from examples/sync-rules.json.
    assert_eq!(
        plan.filters["team_view"].rules.buckets[0].name,
        "team-tasks"
    );
}

/// The JSON Schema for editors is generated from the spec types; the checked-in copy must match.
#[test]
fn checked_in_json_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(config::json_schema::SCHEMA_PATH);
    let generated = config::json_schema::json_schema_text();
    if bless() {
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale: the spec types changed. Regenerate it with \
         `LAKESYNC_BLESS=1 cargo test --test it config` and commit the result.",
        config::json_schema::SCHEMA_PATH
    );
    // It is the schema the pipelines point editors at, and it describes their shape.
    let schema: serde_json::Value = serde_json::from_str(&checked_in).expect("schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(schema["properties"]["sources"].is_object());
}

/// `lakesync validate FILE…`: one report per file, and failure when any file is invalid.
#[test]
fn validate_files_reports_every_file() {
    let files = [
        PathBuf::from("pipelines/quickstart.yaml"),
        PathBuf::from("tests/pipelines/invalid/dangling_input.yaml"),
        PathBuf::from("tests/pipelines/no-such-file.yaml"),
    ];
    let (text, ok) = config::validate_files(&files);
    assert!(!ok);
    assert!(text.contains("pipelines/quickstart.yaml: valid"), "{text}");
    assert!(
        text.contains("dangling_input.yaml: invalid (3 errors"),
        "{text}"
    );
    assert!(
        text.contains("no-such-file.yaml: error: cannot read the file"),
        "{text}"
    );
    let (text, ok) = config::validate_files(&files[..1]);
    assert!(ok, "{text}");
}

/// `lakesync run` gets a plan, or one user error carrying the whole report.
#[test]
fn load_plan_refuses_an_invalid_file_with_the_report() {
    let plan = config::load_plan(Path::new("pipelines/archive-parquet.yaml"), &Env::default());
    assert_eq!(plan.expect("valid").name, "archive-parquet");
    let err = config::load_plan(
        Path::new("tests/pipelines/invalid/operator_cycle.yaml"),
        &Env::default(),
    )
    .expect_err("invalid");
    assert_eq!(err.kind(), lakesync::ErrorKind::User);
    assert!(err.to_string().contains("operators form a cycle"), "{err}");
}
