//! Where the lake's Iceberg catalogue is, and connecting to it.
//!
//! Two catalogues, one `Arc<dyn iceberg::Catalog>`: nothing downstream (the sink,
//! [`crate::query`]) knows which.
//!
//! - [`IcebergCatalogConfig::Sql`]: iceberg-rust's SQL catalogue on a SQLite file, with the
//!   warehouse (data and metadata files) in a local directory: LakeSync's embedded default,
//!   which needs no server. Any Iceberg reader that speaks the SQL catalogue (pyiceberg's
//!   `SqlCatalog`, for one) reads the same tables from the same two paths. The SQL catalogue
//!   keys its rows by catalogue *name*, so another reader must use the same name
//!   ([`DEFAULT_CATALOG_NAME`] unless configured).
//! - [`IcebergCatalogConfig::Rest`]: an Iceberg REST catalogue (iceberg-catalog-rest 0.10.1;
//!   Polaris, Lakekeeper, Nessie, Gravitino, S3 Tables, R2 Data Catalog, SeaweedFS) with its
//!   warehouse on S3-compatible object storage, read and written through
//!   [`super::storage::ObjectStoreStorage`]. The catalogue authenticates with an OAuth2 client
//!   credential (`client_id:client_secret`, exchanged for a token at `/v1/oauth/tokens`) or a
//!   bearer token; the S3 settings given here are what the catalogue's own properties for a
//!   table (vended credentials, say) do not override.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_rest::{
    REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE, RestCatalogBuilder,
};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use serde::{Deserialize, Serialize};

use super::storage::{ObjectStoreStorageFactory, S3Config};

use crate::{Error, Result};

/// The catalogue name used when none is configured.
pub const DEFAULT_CATALOG_NAME: &str = "lakesync";

/// Where a lake's Iceberg catalogue and warehouse are.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// An Iceberg REST catalogue with its warehouse on object storage.
    Rest {
        /// The catalogue's base URL (`http://127.0.0.1:8181`, `https://catalog.example.com`),
        /// without the `/v1`.
        uri: String,
        /// The warehouse: a name or a location (`s3://iceberg-tables`), as the catalogue wants.
        warehouse: String,
        /// The name the catalogue goes by in LakeSync (messages, DataFusion).
        #[serde(default = "default_catalog_name")]
        name: String,
        /// An OAuth2 client credential, `client_id:client_secret` (or just a secret).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<String>,
        /// A bearer token, instead of a credential.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// S3 settings for the data and metadata files.
        #[serde(default)]
        s3: S3Config,
    },
}

impl std::fmt::Debug for IcebergCatalogConfig {
    // The credential and the token stay out of logs (the S3 secrets are hidden by `S3Config`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sql {
                uri,
                warehouse,
                name,
            } => f
                .debug_struct("Sql")
                .field("uri", uri)
                .field("warehouse", warehouse)
                .field("name", name)
                .finish(),
            Self::Rest {
                uri,
                warehouse,
                name,
                credential,
                token,
                s3,
            } => f
                .debug_struct("Rest")
                .field("uri", uri)
                .field("warehouse", warehouse)
                .field("name", name)
                .field("credential", &credential.as_ref().map(|_| "<redacted>"))
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .field("s3", s3)
                .finish(),
        }
    }
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
            Self::Sql { name, .. } | Self::Rest { name, .. } => name,
        }
    }

    /// A REST catalogue at `uri` with the warehouse `warehouse`, named
    /// [`DEFAULT_CATALOG_NAME`], without credentials or S3 settings.
    pub fn rest(uri: impl Into<String>, warehouse: impl Into<String>) -> Self {
        Self::Rest {
            uri: uri.into(),
            warehouse: warehouse.into(),
            name: default_catalog_name(),
            credential: None,
            token: None,
            s3: S3Config::default(),
        }
    }
}

/// Connects to the catalogue `config` describes.
///
/// SQL: creates the SQLite file, the warehouse directory and their parents when missing.
/// Relative paths are taken from the current directory. A path that is not UTF-8 or cannot be
/// created is an [`Error::Invalid`] naming it; a catalogue that does not open is an
/// [`Error::External`] from `iceberg`.
///
/// REST: a URI that is not an `http(s)://` URL is an [`Error::Invalid`]; the catalogue is asked
/// for its configuration (and a token, when a credential is given) at once, so an unreachable
/// or refusing catalogue is an [`Error::External`] here, naming the URI, and not later.
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
        IcebergCatalogConfig::Rest {
            uri,
            warehouse,
            name,
            credential,
            token,
            s3,
        } => connect_rest(uri, warehouse, name, credential, token, s3).await,
    }
}

async fn connect_rest(
    uri: &str,
    warehouse: &str,
    name: &str,
    credential: &Option<String>,
    token: &Option<String>,
    s3: &S3Config,
) -> Result<Arc<dyn Catalog>> {
    let invalid = |why: String| Error::invalid("iceberg catalog", why);
    if name.trim().is_empty() {
        return Err(invalid("the catalog name is empty".into()));
    }
    let uri = uri.trim_end_matches('/');
    let host = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    if host.is_none_or(str::is_empty) {
        return Err(invalid(format!(
            "the REST catalog uri {uri:?} is not an http(s) URL with a host"
        )));
    }
    if warehouse.trim().is_empty() {
        return Err(invalid("the REST catalog warehouse is empty".into()));
    }
    if let Some(endpoint) = &s3.endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(invalid(format!(
            "the S3 endpoint {endpoint:?} is not an http(s) URL"
        )));
    }
    let mut props = HashMap::from([
        (REST_CATALOG_PROP_URI.to_string(), uri.to_string()),
        (
            REST_CATALOG_PROP_WAREHOUSE.to_string(),
            warehouse.to_string(),
        ),
    ]);
    if let Some(credential) = credential.as_ref().filter(|c| !c.is_empty()) {
        props.insert("credential".into(), credential.clone());
    }
    if let Some(token) = token.as_ref().filter(|t| !t.is_empty()) {
        props.insert("token".into(), token.clone());
    }
    let catalog = RestCatalogBuilder::default()
        .with_storage_factory(Arc::new(ObjectStoreStorageFactory::new(s3.clone())))
        .load(name.to_string(), props)
        .await
        .map_err(|e| rest_error(uri, "configuring", e))?;
    // The catalogue is contacted lazily; ask it for something now, so that a wrong URI or
    // credential fails here, with the URI in the message.
    catalog
        .list_namespaces(None)
        .await
        .map_err(|e| rest_error(uri, "listing namespaces of", e))?;
    tracing::debug!(catalog = %name, uri, warehouse, s3_endpoint = s3.endpoint_name(), "connected to the Iceberg REST catalog");
    Ok(Arc::new(catalog))
}

fn rest_error(uri: &str, what: &str, e: iceberg::Error) -> Error {
    Error::External {
        system: "iceberg",
        message: format!("{what} the REST catalog at {uri}: {e}"),
        retryable: e.retryable() || e.kind() == iceberg::ErrorKind::Unexpected,
        source: Some(Box::new(e)),
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

        let IcebergCatalogConfig::Sql { uri, warehouse, .. } = config else {
            unreachable!()
        };
        let nameless = IcebergCatalogConfig::Sql {
            uri,
            warehouse,
            name: " ".into(),
        };
        let err = connect(&nameless).await.err().unwrap().to_string();
        assert!(err.contains("catalog name is empty"), "{err}");
    }

    #[tokio::test]
    async fn rest_config_parses_and_bad_uris_are_refused_before_any_request() {
        let config: IcebergCatalogConfig = serde_json::from_str(
            r#"{"type": "rest", "uri": "http://127.0.0.1:8181", "warehouse": "s3://wh",
                "credential": "id:secret", "s3": {"endpoint": "http://127.0.0.1:8333"}}"#,
        )
        .unwrap();
        assert_eq!(config.name(), "lakesync");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("id:secret") && shown.contains("127.0.0.1:8333"),
            "{shown}"
        );
        for uri in ["127.0.0.1:8181", "http://", "https:///v1", "ftp://x"] {
            let err = connect(&IcebergCatalogConfig::rest(uri, "s3://wh"))
                .await
                .err()
                .unwrap();
            assert_eq!(err.kind(), crate::ErrorKind::User, "{err}");
            assert!(err.to_string().contains(uri.trim_end_matches('/')), "{err}");
        }
    }
}
