//! The `lakesync` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lakesync::adapters::iceberg::IcebergCatalogConfig;
use lakesync::config::plan::Plan;
use lakesync::config::{Env, load_plan};
use lakesync::runtime::api::ReadMode;
use lakesync::runtime::pipeline::{RunOptions, run};

/// LakeSync: declare what data goes where; the engine does the rest.
///
/// Pipelines are YAML files (see docs/pipelines.md). `lakesync run` executes them: sources →
/// operators → sinks, committed in epochs so a restart resumes without loss or duplicates.
#[derive(Debug, Parser)]
#[command(name = "lakesync", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run pipelines: stream until interrupted (Ctrl-C finishes the in-flight epoch), or with
    /// `--once` read what is there, commit it, and exit.
    Run {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Backfill: stop when the sources are caught up.
        #[arg(long)]
        once: bool,
        /// How often followed sources look for new data.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        poll_interval: std::time::Duration,
    },
    /// Run the sync gateway of a pipeline file (one with a `type: gateway` source): clients
    /// push and pull over Arrow Flight, HTTP and WebSocket; what they push flows to the sinks.
    /// Prints `listening gateway=<id> flight=<addr> http=<addr>` once ready.
    Serve {
        /// The pipeline file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Pull the rows a token may see from a gateway into a local SQLite file; with `--follow`,
    /// keep it current until Ctrl-C (see docs/client.md).
    Sync(lakesync::client::cli::SyncArgs),
    /// Move data that has aged out of tier sinks' hot side into their cold side, exactly once.
    ///
    /// Every delta whose HLC is older than the tier's `max_age` leaves the hot sink (a SQLite or
    /// Postgres delta log with `materialise: false`, or Parquet files) for the cold sink (e.g.
    /// Iceberg), committed there as epochs of pipeline `<name>.migrate`. An interrupted run is
    /// finished by the next one without losing or duplicating a delta. Example:
    /// `lakesync migrate pipelines/tiered.yaml` (from cron or a timer).
    Migrate {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Most deltas per migration epoch (memory is bounded by this, not by the hot log).
        #[arg(long, default_value_t = lakesync::runtime::migrate::DEFAULT_BATCH_SIZE)]
        batch_size: usize,
    },
    /// Check pipeline files and report every problem with its YAML path.
    Validate {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run SQL (DataFusion) over the lake's Iceberg tables, e.g.
    /// `lakesync query "SELECT count(*) FROM lakesync.tasks"`.
    Query {
        /// The SQL statement.
        sql: String,
        /// Take the lake from this pipeline's first Iceberg sink, or the cold side of its first
        /// tier sink; the tier's hot side, or the pipeline's gateway's retained records, then
        /// join --state, --as-of and --changes-from reads. The sink's namespace is the default
        /// schema for unqualified table names.
        #[arg(long, conflicts_with_all = ["catalog", "warehouse"])]
        pipeline: Option<PathBuf>,
        /// The SQL catalogue's SQLite file (default: lake/catalog.sqlite).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// The warehouse directory (default: lake/warehouse).
        #[arg(long)]
        warehouse: Option<PathBuf>,
        /// Time travel: tables are their rows (LWW state) once every delta up to this moment
        /// (an HLC, or an RFC 3339 time) was merged.
        /// With --snapshot, within that snapshot.
        #[arg(long, value_name = "HLC|TIME", conflicts_with_all = ["changes_from", "state"])]
        as_of: Option<String>,
        /// Time travel: tables are their rows (LWW state) in this Iceberg snapshot.
        #[arg(long, value_name = "ID", conflicts_with_all = ["changes_from", "state"])]
        snapshot: Option<i64>,
        /// Tables are their deltas after this moment (an HLC or an RFC 3339 time), oldest first.
        #[arg(long, value_name = "HLC|TIME", conflicts_with = "state")]
        changes_from: Option<String>,
        /// With --changes-from: up to and including this moment (default: now).
        #[arg(long, value_name = "HLC|TIME", requires = "changes_from")]
        changes_to: Option<String>,
        /// Tables are their current rows (LWW state) rather than their raw deltas.
        #[arg(long)]
        state: bool,
    },
    /// Lake maintenance: compact tables, expire snapshots, clean up orphan files, e.g.
    /// `lakesync lake compact --pipeline pipelines/lake.yaml`.
    Lake(lakesync::adapters::iceberg::command::LakeArgs),
    /// Print the JSON Schema of pipeline files (for editors).
    Schema,
    /// Write synthetic task changes as JSON lines (the jsonl source's `rows` format), for
    /// benchmarks and experiments.
    Generate {
        /// Number of lines (deltas) to write.
        #[arg(long, default_value_t = 1_000_000)]
        deltas: usize,
        /// Number of distinct rows they touch (the first `rows` lines insert them).
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the kernel end to end on a synthetic workload (no servers needed).
    Demo {
        /// Number of deltas to generate.
        #[arg(long, default_value_t = 200_000)]
        deltas: usize,
        /// Number of distinct rows they touch.
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// Number of concurrent writers.
        #[arg(long, default_value_t = 12)]
        clients: usize,
        /// Deltas per Arrow batch.
        #[arg(long, default_value_t = 8_192)]
        batch_size: usize,
        /// Directory for the Parquet output.
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    // On a terminal the progress bar speaks; elsewhere (CI, services) epochs are logged.
    let default_filter = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        "warn"
    } else {
        "lakesync=info,warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            files,
            once,
            poll_interval,
        } => {
            let mode = if once {
                ReadMode::Once
            } else {
                ReadMode::Follow { poll_interval }
            };
            runtime()?.block_on(run_files(files, mode))?;
        }
        Command::Serve { config } => {
            let plan = load_plan(&config, &Env::process())
                .with_context(|| format!("loading {}", config.display()))?;
            runtime()?.block_on(lakesync::gateway::serve::serve(plan, |l| {
                use std::io::Write;
                println!(
                    "listening gateway={} flight={} http={}",
                    l.id, l.flight, l.http
                );
                let _ = std::io::stdout().flush();
            }))?;
        }
        Command::Sync(args) => {
            runtime()?.block_on(lakesync::client::cli::run_sync(args))?;
        }
        Command::Migrate { files, batch_size } => {
            let env = Env::process();
            let rt = runtime()?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            for file in files {
                let plan = load_plan(&file, &env)
                    .with_context(|| format!("{} is not a valid pipeline", file.display()))?;
                let options = lakesync::runtime::migrate::MigrateOptions { batch_size };
                for summary in rt.block_on(lakesync::runtime::migrate::migrate_with(
                    &plan, now_ms, options,
                ))? {
                    print!("{summary}");
                }
            }
        }
        Command::Validate { files } => {
            let (report, ok) = lakesync::config::validate_files(&files);
            print!("{report}");
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Query {
            sql,
            pipeline,
            catalog,
            warehouse,
            as_of,
            snapshot,
            changes_from,
            changes_to,
            state,
        } => {
            use lakesync::query::{LakeView, parse_moment};
            let view = if as_of.is_some() || snapshot.is_some() {
                Some(LakeView::AsOf {
                    snapshot,
                    hlc: as_of.as_deref().map(parse_moment).transpose()?,
                })
            } else if let Some(from) = changes_from {
                let to = match changes_to {
                    Some(to) => parse_moment(&to)?,
                    None => u64::MAX >> 1,
                };
                Some(LakeView::Changes {
                    from: parse_moment(&from)?,
                    to,
                })
            } else if state {
                Some(LakeView::Latest)
            } else {
                None
            };
            let (config, namespace, tiered) = match pipeline {
                Some(file) => {
                    let (lake, plan) = lake_of(&file)?;
                    let tiered = lake.hot.map(|side| (plan, side));
                    (lake.catalog, lake.namespace, tiered)
                }
                None => (
                    IcebergCatalogConfig::sql(
                        catalog.unwrap_or_else(|| "lake/catalog.sqlite".into()),
                        warehouse.unwrap_or_else(|| "lake/warehouse".into()),
                    ),
                    lakesync::adapters::iceberg::DEFAULT_NAMESPACE.to_string(),
                    None,
                ),
            };
            let rt = runtime()?;
            let batches = match view {
                Some(view) => {
                    // A tiered pipeline's hot side joins every view but a snapshot's.
                    let hot = match &tiered {
                        Some((plan, side)) => rt.block_on(lakesync::query::hot_tier(plan, side))?,
                        None => Default::default(),
                    };
                    rt.block_on(lakesync::query::query_view(
                        &config, &namespace, view, &hot, &sql,
                    ))?
                }
                None => rt.block_on(lakesync::query::query_in(&config, &namespace, &sql))?,
            };
            println!("{}", lakesync::query::format_batches(&batches));
        }
        Command::Lake(args) => {
            let location = args.location;
            let (config, namespace) = match location.pipeline {
                Some(file) => {
                    let (lake, _) = lake_of(&file)?;
                    (lake.catalog, lake.namespace)
                }
                None => (
                    IcebergCatalogConfig::sql(
                        location
                            .catalog
                            .unwrap_or_else(|| "lake/catalog.sqlite".into()),
                        location
                            .warehouse
                            .unwrap_or_else(|| "lake/warehouse".into()),
                    ),
                    lakesync::adapters::iceberg::DEFAULT_NAMESPACE.to_string(),
                ),
            };
            let done = runtime()?.block_on(lakesync::adapters::iceberg::command::run(
                &config,
                &namespace,
                &args.action,
            ))?;
            for line in &done.lines {
                println!("{line}");
            }
            if done.failures > 0 {
                eprintln!("error: {} table(s) failed", done.failures);
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&lakesync::config::json_schema())?
            );
        }
        Command::Generate {
            deltas,
            rows,
            seed,
            out,
        } => {
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let bytes = lakesync::synth::write_jsonl_rows(&mut writer, rows, deltas, seed)?;
            std::io::Write::flush(&mut writer)?;
            println!(
                "wrote {deltas} deltas over {rows} rows to {} ({bytes} bytes)",
                out.display()
            );
        }
        Command::Demo {
            deltas,
            rows,
            clients,
            batch_size,
            out,
        } => {
            let options = lakesync::demo::DemoOptions {
                deltas,
                rows,
                clients,
                batch_size,
                out_dir: out,
            };
            let summary = lakesync::demo::run(&options).context("demo failed")?;
            print!("{summary}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs every file's pipeline concurrently. All files are loaded and built before any runs;
/// Ctrl-C (or the first pipeline to fail) asks all of them to finish their epoch and stop.
async fn run_files(files: Vec<PathBuf>, mode: ReadMode) -> anyhow::Result<()> {
    let env = Env::process();
    let mut graphs = Vec::new();
    let mut names = std::collections::BTreeMap::new();
    for file in &files {
        let plan = load_plan(file, &env).with_context(|| {
            format!(
                "{} is not a valid pipeline (run `lakesync validate`)",
                file.display()
            )
        })?;
        if let Some(other) = names.insert(plan.name.clone(), file.clone()) {
            anyhow::bail!(
                "{} and {} both define pipeline {:?}: pipeline names must be unique",
                other.display(),
                file.display(),
                plan.name
            );
        }
        let graph = lakesync::build::build(&plan)
            .await
            .with_context(|| format!("building pipeline {:?}", plan.name))?;
        graphs.push(graph);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing the in-flight epoch (Ctrl-C again to abort)");
            let _ = on_signal.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let progress = graphs.len() == 1;
    let mut tasks = tokio::task::JoinSet::new();
    for graph in graphs {
        let mut stop = stop_rx.clone();
        let options = RunOptions {
            mode: mode.clone(),
            progress,
        };
        let name = graph.name.clone();
        tasks.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            (name, run(graph, options, shutdown).await)
        });
    }
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(summary))) => print!("{summary}"),
            Ok((name, Err(e))) => {
                eprintln!("error: pipeline {name:?}: {e}");
                failures += 1;
                let _ = stop_tx.send(true);
            }
            Err(e) => {
                eprintln!("error: a pipeline task panicked: {e}");
                failures += 1;
                let _ = stop_tx.send(true);
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} pipeline(s) failed");
    }
    Ok(())
}

/// The lake of a pipeline's first Iceberg sink, and that sink's namespace.
fn lake_of(file: &std::path::Path) -> anyhow::Result<(lakesync::query::PipelineLake, Plan)> {
    let plan = load_plan(file, &Env::process())?;
    Ok((lakesync::query::pipeline_lake(&plan)?, plan))
}
