//! Where the lake's Iceberg catalogue is, and connecting to it.
//!
//! Today the catalogue is iceberg-rust's SQL catalogue on a SQLite file, with the warehouse (data
//! and metadata files) in a local directory: LakeSync's embedded default, which needs no server.
//! Any Iceberg reader that speaks the SQL catalogue (pyiceberg's `SqlCatalog`, for one) reads
//! the same tables from the same two paths. The SQL catalogue keys its rows by catalogue *name*,
//! so another reader must use the same name ([`DEFAULT_CATALOG_NAME`] unless configured).
//!
//! [`IcebergCatalogConfig`] is an enum so that other catalogues (an Iceberg REST catalogue over
//! an S3 warehouse is next) are new variants that [`connect`] turns into the same
//! `Arc<dyn iceberg::Catalog>`; nothing downstream (the sink, [`crate::query`]) knows which.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The catalogue name used when none is configured.
pub const DEFAULT_CATALOG_NAME: &str = "lakesync";

/// Where a lake's Iceberg catalogue and warehouse are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum IcebergCatalogConfig {
    /// iceberg-rust's SQL catalogue on a SQLite file, with a local-directory warehouse.
    Sql {
        /// The SQLite file holding the catalogue (created, with its parent directories, if
        /// missing).
        uri: PathBuf,
        /// The directory table data and metadata go under (created if missing).
        warehouse: PathBuf,
        /// The catalogue name (rows of the SQL catalogue are keyed by it).
        #[serde(default = "default_catalog_name")]
        name: String,
    },
}

fn default_catalog_name() -> String {
    DEFAULT_CATALOG_NAME.to_string()
}

impl IcebergCatalogConfig {
    /// A SQL catalogue on the SQLite file `uri` with its warehouse in `warehouse`, named
    /// [`DEFAULT_CATALOG_NAME`].
    pub fn sql(uri: impl Into<PathBuf>, warehouse: impl Into<PathBuf>) -> Self {
        Self::Sql {
            uri: uri.into(),
            warehouse: warehouse.into(),
            name: default_catalog_name(),
        }
    }

    /// The catalogue's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Sql { name, .. } => name,
        }
    }
}

/// Connects to the catalogue `config` describes, creating the SQLite file, the warehouse
/// directory and their parents when missing.
///
/// Relative paths are taken from the current directory. A path that is not UTF-8 or cannot be
/// created is an [`Error::Invalid`] naming it; a catalogue that does not open is an
/// [`Error::External`] from `iceberg`.
pub async fn connect(config: &IcebergCatalogConfig) -> Result<Arc<dyn Catalog>> {
    match config {
        IcebergCatalogConfig::Sql {
            uri,
            warehouse,
            name,
        } => {
            if name.trim().is_empty() {
                return Err(Error::invalid(
                    "iceberg catalog",
                    "the catalog name is empty",
                ));
            }
            let db = absolute("catalog uri", uri)?;
            let warehouse = absolute("warehouse", warehouse)?;
            if let Some(parent) = db.parent() {
                create_dir("catalog uri", parent).await?;
            }
            create_dir("warehouse", &warehouse).await?;
            let uri = format!("sqlite:{}?mode=rwc", encode_path(utf8("catalog uri", &db)?));
            let warehouse_uri = format!("file://{}", utf8("warehouse", &warehouse)?);
            let catalog = SqlCatalogBuilder::default()
                .uri(uri)
                .warehouse_location(warehouse_uri)
                .sql_bind_style(SqlBindStyle::QMark)
                .with_storage_factory(Arc::new(LocalFsStorageFactory))
                .load(name.clone(), HashMap::new())
                .await
                .map_err(|e| Error::External {
                    system: "iceberg",
                    message: format!("opening the SQL catalog {name:?} on {}: {e}", db.display()),
                    retryable: e.retryable(),
                    source: Some(Box::new(e)),
                })?;
            tracing::debug!(catalog = %name, db = %db.display(), warehouse = %warehouse.display(), "connected to the Iceberg SQL catalog");
            Ok(Arc::new(catalog))
        }
    }
}

fn absolute(what: &'static str, path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid(
            "iceberg catalog",
            format!("the {what} is empty"),
        ));
    }
    std::path::absolute(path)
        .map_err(|e| Error::invalid("iceberg catalog", format!("{what} {}: {e}", path.display())))
}

fn utf8<'a>(what: &'static str, path: &'a Path) -> Result<&'a str> {
    path.to_str().ok_or_else(|| {
        Error::invalid(
            "iceberg catalog",
            format!("{what} {} is not UTF-8", path.display()),
        )
    })
}

async fn create_dir(what: &'static str, dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        Error::invalid(
            "iceberg catalog",
            format!("cannot create the {what} directory {}: {e}", dir.display()),
        )
    })
}

/// Escapes the characters the `sqlite:` URL syntax gives a meaning to (sqlx percent-decodes
/// the path), so that any file name reaches SQLite unchanged.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_a_default_name() {
        let config: IcebergCatalogConfig = serde_json::from_str(
            r#"{"type": "sql", "uri": "lake/catalog.db", "warehouse": "lake/wh"}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            IcebergCatalogConfig::sql("lake/catalog.db", "lake/wh")
        );
        assert_eq!(config.name(), "lakesync");
        let err = serde_json::from_str::<IcebergCatalogConfig>(
            r#"{"type": "sql", "uri": "a", "warehouse": "b", "bogus": 1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn special_characters_in_paths_are_escaped() {
        assert_eq!(encode_path("/a b/c?d#e%f"), "/a%20b/c%3Fd%23e%25f");
    }

    #[tokio::test]
    async fn connect_creates_the_files_and_refuses_an_empty_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = IcebergCatalogConfig::sql(
            dir.path().join("nested/catalog.db"),
            dir.path().join("warehouse"),
        );
        let catalog = connect(&config).await.unwrap();
        assert!(catalog.list_namespaces(None).await.unwrap().is_empty());
        assert!(dir.path().join("nested/catalog.db").exists());
        assert!(dir.path().join("warehouse").is_dir());

        let IcebergCatalogConfig::Sql { uri, warehouse, .. } = config;
        let nameless = IcebergCatalogConfig::Sql {
            uri,
            warehouse,
            name: " ".into(),
        };
        let err = connect(&nameless).await.err().unwrap().to_string();
        assert!(err.contains("catalog name is empty"), "{err}");
    }
}
