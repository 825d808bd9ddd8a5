//! Object storage for the lake: iceberg-rust's `Storage` over `object_store`.
//!
//! iceberg-rust 0.10.1 reads and writes every file (metadata, manifests, data) through a
//! pluggable [`Storage`] that a catalogue builds from a [`StorageFactory`]. Its own S3 storage
//! lives in `iceberg-storage-opendal`, which would bring a second HTTP stack (reqwest 0.13,
//! aws-lc-sys) into the tree; [`ObjectStoreStorage`] does the same job with the `object_store`
//! 0.13 that DataFusion and Parquet already use.
//!
//! **Locations.** A location is a URL: `s3://bucket/key` (also `s3a://`, `s3n://`) goes to an
//! S3-compatible store for that bucket (AWS S3, Cloudflare R2, MinIO, SeaweedFS: one client per
//! bucket, made on first use); `file:///path`, `file:/path` or an absolute path goes to the
//! local file system. Anything else is refused with the location in the message.
//!
//! **Settings.** [`S3Config`] is what an S3 client needs: endpoint, region, keys, path-style
//! addressing. The factory holds the settings LakeSync was configured with (the pipeline's
//! `s3:` block, with `${VAR}` credentials already interpolated); the properties a catalogue hands
//! to a table's `FileIO` (iceberg's `s3.endpoint`, `s3.access-key-id`, …, from the REST
//! catalogue's config or a table's vended credentials) take precedence over them, as in every
//! other Iceberg client. What neither gives comes from the usual `AWS_*` environment variables.
//! HTTP (not HTTPS) is allowed exactly when the endpoint is an `http://` URL; path-style
//! addressing is the default when an endpoint is set (S3-compatible servers) and
//! virtual-hosted-style on AWS itself.
//!
//! **Errors** name the operation, the location and the endpoint. `object_store` retries
//! transient failures itself (with backoff); one that still fails is an iceberg error marked
//! retryable, which the sink reports as a retryable [`crate::Error::External`]. Missing objects,
//! refused credentials and bad locations are not retryable.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, S3_ACCESS_KEY_ID, S3_ENDPOINT,
    S3_PATH_STYLE_ACCESS, S3_REGION, S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN, Storage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error as IcebergError, ErrorKind as IcebergErrorKind};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{Error, Result};

/// The iceberg property for the region that some catalogues send instead of `s3.region`.
const CLIENT_REGION: &str = "client.region";

/// What an S3 client needs. Every field is optional: unset ones fall back to the `AWS_*`
/// environment variables and then to `object_store`'s defaults (AWS S3, `us-east-1`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Config {
    /// The endpoint URL of an S3-compatible store (`http://127.0.0.1:8333`, an R2 account
    /// endpoint); `None` for AWS S3.
    pub endpoint: Option<String>,
    /// The region (`auto` for R2).
    pub region: Option<String>,
    /// The access key id.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<String>,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); `None`: path-style when an endpoint is
    /// set, virtual-hosted-style on AWS.
    pub path_style: Option<bool>,
}

impl fmt::Debug for S3Config {
    // Secrets stay out of logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("path_style", &self.path_style)
            .finish()
    }
}

impl S3Config {
    /// The settings in iceberg's FileIO properties (`s3.endpoint`, `s3.region` or
    /// `client.region`, `s3.access-key-id`, `s3.secret-access-key`, `s3.session-token`,
    /// `s3.path-style-access`).
    pub fn from_props(props: &HashMap<String, String>) -> Self {
        let get = |key: &str| props.get(key).filter(|v| !v.is_empty()).cloned();
        Self {
            endpoint: get(S3_ENDPOINT),
            region: get(S3_REGION).or_else(|| get(CLIENT_REGION)),
            access_key_id: get(S3_ACCESS_KEY_ID),
            secret_access_key: get(S3_SECRET_ACCESS_KEY),
            session_token: get(S3_SESSION_TOKEN),
            path_style: get(S3_PATH_STYLE_ACCESS)
                .map(|v| ["true", "t", "1", "on"].contains(&v.to_ascii_lowercase().as_str())),
        }
    }

    /// These settings as iceberg FileIO properties (what [`Self::from_props`] reads).
    pub fn to_props(&self) -> HashMap<String, String> {
        let mut props = HashMap::new();
        let mut put = |key: &str, value: &Option<String>| {
            if let Some(v) = value {
                props.insert(key.to_string(), v.clone());
            }
        };
        put(S3_ENDPOINT, &self.endpoint);
        put(S3_REGION, &self.region);
        put(S3_ACCESS_KEY_ID, &self.access_key_id);
        put(S3_SECRET_ACCESS_KEY, &self.secret_access_key);
        put(S3_SESSION_TOKEN, &self.session_token);
        if let Some(path_style) = self.path_style {
            props.insert(S3_PATH_STYLE_ACCESS.to_string(), path_style.to_string());
        }
        props
    }

    /// `self` with every setting `top` has replaced by `top`'s.
    pub fn overlaid(&self, top: &S3Config) -> S3Config {
        let pick = |a: &Option<String>, b: &Option<String>| b.clone().or_else(|| a.clone());
        S3Config {
            endpoint: pick(&self.endpoint, &top.endpoint),
            region: pick(&self.region, &top.region),
            access_key_id: pick(&self.access_key_id, &top.access_key_id),
            secret_access_key: pick(&self.secret_access_key, &top.secret_access_key),
            session_token: pick(&self.session_token, &top.session_token),
            path_style: top.path_style.or(self.path_style),
        }
    }

    /// The endpoint, for messages: the URL, or `AWS S3`.
    pub fn endpoint_name(&self) -> &str {
        self.endpoint.as_deref().unwrap_or("AWS S3")
    }

    /// An S3 client for `bucket` with these settings (environment variables fill the gaps).
    ///
    /// Settings `object_store` refuses (a malformed endpoint, say) are an [`Error::Invalid`]
    /// naming the bucket and the endpoint. No request is made here.
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint.trim_end_matches('/'))
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &self.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &self.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        let path_style = self.path_style.unwrap_or(self.endpoint.is_some());
        builder = builder.with_virtual_hosted_style_request(!path_style);
        let store = builder.build().map_err(|e| {
            Error::invalid(
                "s3 settings",
                format!("bucket {bucket:?} at {}: {e}", self.endpoint_name()),
            )
        })?;
        Ok(Arc::new(store))
    }
}

/// Splits `s3://bucket/key` (or `s3a://`, `s3n://`) into the bucket and the key (which may be
/// empty); `None` for any other location.
pub fn split_s3_url(location: &str) -> Option<(&str, &str)> {
    let rest = ["s3://", "s3a://", "s3n://"]
        .iter()
        .find_map(|scheme| location.strip_prefix(scheme))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    Some((bucket, key.trim_start_matches('/')))
}

/// An iceberg [`StorageFactory`] that makes [`ObjectStoreStorage`]s: the catalogue's FileIO
/// properties over the settings the factory was made with.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ObjectStoreStorageFactory {
    /// The configured S3 settings (what the catalogue's properties do not override).
    pub s3: S3Config,
}

impl ObjectStoreStorageFactory {
    /// A factory with these configured S3 settings.
    pub fn new(s3: S3Config) -> Self {
        Self { s3 }
    }
}

#[typetag::serde]
impl StorageFactory for ObjectStoreStorageFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        let s3 = self.s3.overlaid(&S3Config::from_props(config.props()));
        Ok(Arc::new(ObjectStoreStorage::new(s3)))
    }
}

/// iceberg-rust's [`Storage`] over `object_store`: S3-compatible buckets and local files (see
/// the module docs). Cloning shares the per-bucket clients.
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "S3Config", into = "S3Config")]
pub struct ObjectStoreStorage {
    s3: S3Config,
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl fmt::Debug for ObjectStoreStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreStorage")
            .field("s3", &self.s3)
            .finish_non_exhaustive()
    }
}

impl From<S3Config> for ObjectStoreStorage {
    fn from(s3: S3Config) -> Self {
        Self::new(s3)
    }
}

impl From<ObjectStoreStorage> for S3Config {
    fn from(storage: ObjectStoreStorage) -> Self {
        storage.s3
    }
}

/// Where a location lives: its store, the key within it, and a name for messages.
struct Located {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    at: String,
}

impl ObjectStoreStorage {
    /// A storage with these S3 settings.
    pub fn new(s3: S3Config) -> Self {
        Self {
            s3,
            stores: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn locate(&self, location: &str) -> iceberg::Result<Located> {
        if let Some((bucket, key)) = split_s3_url(location) {
            if bucket.is_empty() {
                return Err(invalid_location(location, "it names no bucket"));
            }
            let store = self.bucket_store(bucket)?;
            let path = object_path(key).map_err(|e| invalid_location(location, e))?;
            return Ok(Located {
                store,
                path,
                at: format!("{location} (endpoint {})", self.s3.endpoint_name()),
            });
        }
        let local = if let Some(rest) = location.strip_prefix("file://") {
            rest
        } else if let Some(rest) = location.strip_prefix("file:") {
            rest
        } else if location.starts_with('/') {
            location
        } else {
            return Err(IcebergError::new(
                IcebergErrorKind::FeatureUnsupported,
                format!(
                    "location {location:?}: LakeSync's lake storage reads and writes s3:// \
                     buckets and local files only"
                ),
            ));
        };
        let absolute = if local.starts_with('/') {
            local.to_string()
        } else {
            format!("/{local}")
        };
        let path =
            ObjectPath::from_absolute_path(&absolute).map_err(|e| invalid_location(location, e))?;
        let store = self.bucket_store_with("file://", || Ok(Arc::new(LocalFileSystem::new())))?;
        Ok(Located {
            store,
            path,
            at: location.to_string(),
        })
    }

    fn bucket_store(&self, bucket: &str) -> iceberg::Result<Arc<dyn ObjectStore>> {
        self.bucket_store_with(bucket, || self.s3.store(bucket))
    }

    fn bucket_store_with(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<Arc<dyn ObjectStore>>,
    ) -> iceberg::Result<Arc<dyn ObjectStore>> {
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| IcebergError::new(IcebergErrorKind::Unexpected, "store cache poisoned"))?;
        if let Some(store) = stores.get(key) {
            return Ok(store.clone());
        }
        let store =
            make().map_err(|e| IcebergError::new(IcebergErrorKind::DataInvalid, e.to_string()))?;
        stores.insert(key.to_string(), store.clone());
        Ok(store)
    }
}

/// One object found by [`list_objects`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    /// Its location, in the scheme of the listed prefix (`s3://bucket/key`, or an absolute
    /// local path when the prefix was a local one).
    pub location: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// Every object under the location `prefix` (an `s3://` URL, as in [`ObjectStoreStorage`], with
/// `s3`'s settings; or a local directory), recursively. A missing local directory lists nothing.
pub async fn list_objects(prefix: &str, s3: &S3Config) -> Result<Vec<ListedObject>> {
    let failed = |e: object_store::Error| Error::External {
        system: "object storage",
        message: format!("listing {prefix}: {e}"),
        retryable: is_transient(&e),
        source: Some(Box::new(e)),
    };
    let (store, path, local): (Arc<dyn ObjectStore>, Option<ObjectPath>, bool) =
        if let Some((bucket, key)) = split_s3_url(prefix) {
            let key = key.trim_end_matches('/');
            let path = (!key.is_empty()).then(|| ObjectPath::from(key));
            (s3.store(bucket)?, path, false)
        } else {
            let local = prefix
                .strip_prefix("file://")
                .or_else(|| prefix.strip_prefix("file:"))
                .unwrap_or(prefix);
            if !local.starts_with('/') {
                return Err(Error::invalid(
                    "lake location",
                    format!("{prefix:?} is neither an s3:// URL nor an absolute local path"),
                ));
            }
            let local = normalise_local(local);
            if !std::path::Path::new(&local).exists() {
                return Ok(Vec::new());
            }
            let path = ObjectPath::from_absolute_path(&local)
                .map_err(|e| Error::invalid("lake location", format!("{prefix:?}: {e}")))?;
            (Arc::new(LocalFileSystem::new()), Some(path), true)
        };
    let bucket = split_s3_url(prefix).map(|(b, _)| b.to_string());
    let mut listing = store.list(path.as_ref());
    let mut out = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(failed)?;
        let location = match (&bucket, local) {
            (Some(bucket), _) => format!("s3://{bucket}/{}", meta.location),
            (None, _) => format!("/{}", meta.location),
        };
        out.push(ListedObject {
            location,
            size: meta.size,
            last_modified: meta.last_modified,
        });
    }
    Ok(out)
}

/// An absolute local path with its `.` and `..` segments resolved lexically (symbolic links are
/// not followed), so that two spellings of one file compare equal.
pub fn normalise_local(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The object key `key` as an `object_store` path, kept as it is when it is valid (so names
/// other writers chose, with `%` or `=` in them, are found), else percent-encoded.
fn object_path(key: &str) -> std::result::Result<ObjectPath, String> {
    if key.is_empty() {
        return Err("it names no object".to_string());
    }
    Ok(ObjectPath::parse(key).unwrap_or_else(|_| ObjectPath::from(key)))
}

fn invalid_location(location: &str, why: impl fmt::Display) -> IcebergError {
    IcebergError::new(
        IcebergErrorKind::DataInvalid,
        format!("invalid location {location:?}: {why}"),
    )
}

/// Whether an `object_store` failure may pass on its own: what `object_store` could not retry
/// away (network, server errors, throttling). A missing object, refused credentials, a
/// precondition, a bad path or an unsupported operation will not.
pub fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        e,
        E::NotFound { .. }
            | E::InvalidPath { .. }
            | E::Precondition { .. }
            | E::AlreadyExists { .. }
            | E::NotModified { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

/// The first `object_store` failure in `e`'s chain of sources (`e` included), if any: how a
/// storage failure is found again under the errors iceberg-rust wraps it in.
pub fn object_store_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a object_store::Error> {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<object_store::Error>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// An `object_store` failure as an iceberg error naming what was done where, retryable when
/// [`is_transient`].
fn store_error(op: &str, at: &str, e: object_store::Error) -> IcebergError {
    use object_store::Error as E;
    let kind = match &e {
        E::Precondition { .. } | E::AlreadyExists { .. } | E::NotModified { .. } => {
            IcebergErrorKind::PreconditionFailed
        }
        E::NotSupported { .. } | E::NotImplemented { .. } => IcebergErrorKind::FeatureUnsupported,
        e if is_transient(e) => IcebergErrorKind::Unexpected,
        _ => IcebergErrorKind::DataInvalid,
    };
    IcebergError::new(kind, format!("{op} {at}: {e}"))
        .with_retryable(is_transient(&e))
        .with_source(e)
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStoreStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let at = self.locate(path)?;
        match at.store.head(&at.path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("checking", &at.at, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let at = self.locate(path)?;
        let meta = at
            .store
            .head(&at.path)
            .await
            .map_err(|e| store_error("reading the metadata of", &at.at, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let at = self.locate(path)?;
        let result = at
            .store
            .get(&at.path)
            .await
            .map_err(|e| store_error("reading", &at.at, e))?;
        result
            .bytes()
            .await
            .map_err(|e| store_error("reading", &at.at, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let at = self.locate(path)?;
        Ok(Box::new(ObjectFileRead(at)))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let at = self.locate(path)?;
        at.store
            .put(&at.path, PutPayload::from_bytes(bs))
            .await
            .map_err(|e| store_error("writing", &at.at, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let at = self.locate(path)?;
        let writer = BufWriter::new(at.store.clone(), at.path.clone());
        Ok(Box::new(ObjectFileWrite {
            writer: Some(writer),
            at: at.at,
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let at = self.locate(path)?;
        match at.store.delete(&at.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("deleting", &at.at, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let at = self.locate(path.trim_end_matches('/'))?;
        let mut listing = at.store.list(Some(&at.path));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| store_error("listing", &at.at, e))?;
            match at.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error("deleting under", &at.at, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Ranged reads of one object.
struct ObjectFileRead(Located);

#[async_trait]
impl FileRead for ObjectFileRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.0
            .store
            .get_range(&self.0.path, range.clone())
            .await
            .map_err(|e| {
                store_error(
                    &format!("reading bytes {}..{} of", range.start, range.end),
                    &self.0.at,
                    e,
                )
            })
    }
}

/// A streaming write of one object: a single PUT when it is small, a multipart upload when it
/// is large. The object appears only when the write is closed.
struct ObjectFileWrite {
    writer: Option<BufWriter>,
    at: String,
}

#[async_trait]
impl FileWrite for ObjectFileWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let writer = self.writer.as_mut().ok_or_else(|| {
            IcebergError::new(
                IcebergErrorKind::Unexpected,
                format!("writing {} after it was closed", self.at),
            )
        })?;
        writer
            .write_all(&bs)
            .await
            .map_err(|e| io_error("writing", &self.at, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let mut writer = self.writer.take().ok_or_else(|| {
            IcebergError::new(
                IcebergErrorKind::Unexpected,
                format!("{} was closed twice", self.at),
            )
        })?;
        writer
            .shutdown()
            .await
            .map_err(|e| io_error("finishing the upload of", &self.at, e))
    }
}

/// A failed streaming write: the `object_store` failure inside it when there is one (so a
/// refused upload is not retryable), else a retryable I/O error.
fn io_error(op: &str, at: &str, e: std::io::Error) -> IcebergError {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<object_store::Error>())
    {
        let kind = e.kind();
        return match e.into_inner().map(|i| i.downcast::<object_store::Error>()) {
            Some(Ok(store)) => store_error(op, at, *store),
            // Not reached (checked above); keep the error as it was.
            Some(Err(inner)) => io_error(op, at, std::io::Error::new(kind, inner)),
            None => io_error(op, at, std::io::Error::from(kind)),
        };
    }
    IcebergError::new(IcebergErrorKind::Unexpected, format!("{op} {at}: {e}"))
        .with_retryable(true)
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_key() {
        assert_eq!(
            split_s3_url("s3://b/k/x.parquet"),
            Some(("b", "k/x.parquet"))
        );
        assert_eq!(split_s3_url("s3a://b"), Some(("b", "")));
        assert_eq!(split_s3_url("s3://b//k"), Some(("b", "k")));
        assert_eq!(split_s3_url("file:///tmp/x"), None);
    }

    #[test]
    fn props_override_the_configured_settings_and_secrets_stay_hidden() {
        let configured = S3Config {
            endpoint: Some("http://127.0.0.1:8333".into()),
            access_key_id: Some("mine".into()),
            secret_access_key: Some("s3cret".into()),
            ..Default::default()
        };
        let props = HashMap::from([
            (S3_ACCESS_KEY_ID.to_string(), "vended".to_string()),
            (CLIENT_REGION.to_string(), "eu-west-1".to_string()),
            (S3_PATH_STYLE_ACCESS.to_string(), "TRUE".to_string()),
        ]);
        let merged = configured.overlaid(&S3Config::from_props(&props));
        assert_eq!(merged.access_key_id.as_deref(), Some("vended"));
        assert_eq!(merged.secret_access_key.as_deref(), Some("s3cret"));
        assert_eq!(merged.region.as_deref(), Some("eu-west-1"));
        assert_eq!(merged.path_style, Some(true));
        assert_eq!(S3Config::from_props(&merged.to_props()), merged);
        let shown = format!("{merged:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[tokio::test]
    async fn local_files_round_trip_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ObjectStoreStorageFactory::default()
            .build(&StorageConfig::new())
            .unwrap();
        let file = format!("file://{}/a/b/c.bin", dir.path().display());
        assert!(!storage.exists(&file).await.unwrap());
        let mut writer = storage.writer(&file).await.unwrap();
        writer.write(Bytes::from_static(b"hello ")).await.unwrap();
        writer.write(Bytes::from_static(b"lake")).await.unwrap();
        writer.close().await.unwrap();
        assert!(storage.exists(&file).await.unwrap());
        assert_eq!(storage.metadata(&file).await.unwrap().size, 10);
        let reader = storage.reader(&file).await.unwrap();
        assert_eq!(&reader.read(6..10).await.unwrap()[..], b"lake");
        let plain = format!("{}/a/b/c.bin", dir.path().display());
        assert_eq!(&storage.read(&plain).await.unwrap()[..], b"hello lake");
        storage
            .delete_prefix(&format!("file://{}/a", dir.path().display()))
            .await
            .unwrap();
        assert!(!storage.exists(&file).await.unwrap());
        storage.delete(&file).await.unwrap();

        let err = storage.read("gs://bucket/x").await.unwrap_err();
        assert!(err.to_string().contains("gs://bucket/x"), "{err}");
        let err = storage.read("s3:///x").await.unwrap_err();
        assert!(err.to_string().contains("no bucket"), "{err}");
    }
}
