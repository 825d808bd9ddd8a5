//! `lakesync lake compact|expire|clean-orphans`: lake maintenance from the command line.
//!
//! Each action runs on the named tables of the lake's namespace, or on every table in it when
//! none is named, one table after another, and prints one report line per table
//! ([`super::compact::CompactionReport`], [`super::maintenance::ExpireReport`],
//! [`super::maintenance::OrphanReport`]). A table that fails is reported and the others still
//! run; the command then fails.

use std::path::PathBuf;

use iceberg::{Catalog, NamespaceIdent, TableIdent};

use super::catalog::{IcebergCatalogConfig, connect};
use super::compact::{CompactionOptions, compact_table};
use super::maintenance::{
    DEFAULT_MIN_AGE, DEFAULT_RETAIN_LAST, ExpireOptions, OrphanOptions, clean_orphans,
    expire_snapshots,
};
use super::storage::S3Config;
use crate::config::{HumanDuration, HumanSize};
use crate::{Error, Result};

/// Where the lake is: a pipeline's first Iceberg sink, or a SQL catalogue's two paths.
#[derive(Clone, Debug, clap::Args)]
pub struct LakeLocation {
    /// Take the lake from this pipeline's first Iceberg sink (and its namespace).
    #[arg(long, global = true, conflicts_with_all = ["catalog", "warehouse"])]
    pub pipeline: Option<PathBuf>,
    /// The SQL catalogue's SQLite file (default: lake/catalog.sqlite).
    #[arg(long, global = true)]
    pub catalog: Option<PathBuf>,
    /// The warehouse directory (default: lake/warehouse).
    #[arg(long, global = true)]
    pub warehouse: Option<PathBuf>,
}

/// The arguments of `lakesync lake`.
#[derive(Clone, Debug, clap::Args)]
pub struct LakeArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: LakeAction,
    /// Where the lake is.
    #[command(flatten)]
    pub location: LakeLocation,
}

/// A lake maintenance action.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum LakeAction {
    /// Replace each table's delta files by base rows (one row per row id, its merged state),
    /// in one `replace` snapshot.
    Compact {
        /// Tables (default: every table in the namespace).
        tables: Vec<String>,
        /// The size base-row files are cut at.
        #[arg(long, default_value = "128MiB")]
        target_file_size: HumanSize,
        /// Skip a table with fewer data files than this.
        #[arg(long, default_value_t = 2)]
        min_files: usize,
    },
    /// Drop old snapshots from each table's metadata (no file is deleted; run
    /// `clean-orphans` after).
    Expire {
        /// Tables (default: every table in the namespace).
        tables: Vec<String>,
        /// Keep at least this many of the newest snapshots.
        #[arg(long, default_value_t = DEFAULT_RETAIN_LAST)]
        retain_last: usize,
        /// Drop only snapshots older than this (e.g. 7d); default: any age.
        #[arg(long)]
        older_than: Option<HumanDuration>,
    },
    /// Delete the files under each table's location that its metadata does not reference.
    CleanOrphans {
        /// Tables (default: every table in the namespace).
        tables: Vec<String>,
        /// Leave unreferenced files younger than this alone (writes in flight).
        #[arg(long, default_value_t = HumanDuration(DEFAULT_MIN_AGE))]
        min_age: HumanDuration,
        /// Report what would be deleted, deleting nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write each table's checkpoint for initial sync: its current rows in chunks of at most
    /// `--chunk-size` encoded bytes, which a gateway with `lake_checkpoints` serves filtered.
    Checkpoint {
        /// Tables (default: every table in the namespace).
        tables: Vec<String>,
        /// The byte budget of one chunk (its encoded `SyncResponse`).
        #[arg(long, default_value = "16MiB")]
        chunk_size: HumanSize,
    },
}

/// What [`run`] did: one report line per table, and how many tables failed.
#[derive(Clone, Debug, Default)]
pub struct LakeRun {
    /// One line per table (a report, or `<table>: failed: <why>`).
    pub lines: Vec<String>,
    /// How many tables failed.
    pub failures: usize,
}

/// Runs `action` on the lake `config`, namespace `namespace`. Fails only when the lake cannot
/// be reached or its tables listed; a table that fails is counted in [`LakeRun::failures`].
pub async fn run(
    config: &IcebergCatalogConfig,
    namespace: &str,
    action: &LakeAction,
) -> Result<LakeRun> {
    let catalog = connect(config).await?;
    let tables = match action {
        LakeAction::Compact { tables, .. }
        | LakeAction::Expire { tables, .. }
        | LakeAction::CleanOrphans { tables, .. }
        | LakeAction::Checkpoint { tables, .. } => tables,
    };
    let idents = resolve(&catalog, namespace, tables).await?;
    let s3 = match config {
        IcebergCatalogConfig::Rest { s3, .. } => s3.clone(),
        _ => S3Config::default(),
    };
    let mut out = LakeRun::default();
    for ident in idents {
        let line = match action {
            LakeAction::Compact {
                target_file_size,
                min_files,
                ..
            } => {
                let options = CompactionOptions {
                    target_file_size: target_file_size.0,
                    min_files: *min_files,
                    before_commit: None,
                };
                compact_table(&catalog, &ident, &options)
                    .await
                    .map(|r| r.to_string())
            }
            LakeAction::Expire {
                retain_last,
                older_than,
                ..
            } => {
                let options = ExpireOptions {
                    retain_last: *retain_last,
                    older_than: older_than.map(|d| d.0),
                };
                expire_snapshots(&catalog, &ident, &options)
                    .await
                    .map(|r| r.to_string())
            }
            LakeAction::CleanOrphans {
                min_age, dry_run, ..
            } => {
                let options = OrphanOptions {
                    min_age: min_age.0,
                    dry_run: *dry_run,
                };
                clean_orphans(&catalog, &ident, &s3, &options)
                    .await
                    .map(|r| r.to_string())
            }
            LakeAction::Checkpoint { chunk_size, .. } => {
                let budget = usize::try_from(chunk_size.0).unwrap_or(usize::MAX);
                super::checkpoint::generate(&catalog, &ident, budget)
                    .await
                    .map(|m| {
                        format!(
                            "{ident}: checkpoint of snapshot {} — {} rows in {} chunks (generation {})",
                            m.snapshot_id.map_or("none".to_string(), |s| s.to_string()),
                            m.rows,
                            m.chunks.len(),
                            m.generation
                        )
                    })
            }
        };
        match line {
            Ok(line) => out.lines.push(line),
            Err(e) => {
                tracing::error!(table = %ident, error = %e, "lake maintenance failed");
                out.lines.push(format!("{ident}: failed: {e}"));
                out.failures += 1;
            }
        }
    }
    Ok(out)
}

/// The named tables of `namespace`, or all of them.
async fn resolve(
    catalog: &std::sync::Arc<dyn Catalog>,
    namespace: &str,
    tables: &[String],
) -> Result<Vec<TableIdent>> {
    let ns = NamespaceIdent::new(namespace.to_string());
    if !tables.is_empty() {
        return Ok(tables
            .iter()
            .map(|t| TableIdent::new(ns.clone(), t.clone()))
            .collect());
    }
    let mut idents = catalog
        .list_tables(&ns)
        .await
        .map_err(|e| Error::External {
            system: "iceberg",
            message: format!("listing the tables of namespace {namespace}: {e}"),
            retryable: e.retryable(),
            source: Some(Box::new(e)),
        })?;
    idents.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(idents)
}
