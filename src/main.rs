//! The `lakesync` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// LakeSync: declare what data goes where; the engine does the rest.
#[derive(Debug, Parser)]
#[command(name = "lakesync", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the kernel end to end on a synthetic workload (no servers needed): stamp deltas,
    /// merge them with column-level LWW, apply sync rules, write Parquet.
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo { deltas, rows, clients, batch_size, out } => {
            let options = lakesync::demo::DemoOptions { deltas, rows, clients, batch_size, out_dir: out };
            let summary = lakesync::demo::run(&options).context("demo failed")?;
            print!("{summary}");
        }
    }
    Ok(())
}
