//! [`BigQueryClient`]: one project's REST API (through `gcp-bigquery-client`) and its Storage Read
//! API (gRPC), with the credentials of the pipeline file.
//!
//! **Credentials** ([`Credentials`]): a service-account key (a file path, or the key's JSON itself
//! — typically `${VAR}` holding it), or Google's application default credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS` naming a service-account key, else the metadata server). With
//! an `endpoint` override (an emulator) and no `credentials`, requests carry no token.
//!
//! **Endpoints.** REST defaults to `https://bigquery.googleapis.com` and gRPC to
//! `https://bigquerystorage.googleapis.com`; `endpoint` / `grpc_endpoint` replace them (an `http://`
//! gRPC endpoint is plain HTTP/2, as emulators serve it).
//!
//! **Queries** ([`BigQueryClient::query`]) run through `jobs.query` with named query parameters and
//! `useLegacySql: false`; a query that does not finish within the request's wait is polled with
//! `jobs.getQueryResults`, and every page is fetched. Errors BigQuery reports in a 200 response
//! (as emulators do) are errors too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::big_query_read_client::BigQueryReadClient;
use gcp_bigquery_client::model::data_format_options::DataFormatOptions;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_parameter::QueryParameter;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_row::TableRow;
use gcp_bigquery_client::yup_oauth2;
use serde_json::Value;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{bq_error, check_dataset, check_project};
use crate::{Error, Result};

/// Google's REST endpoint (the API path `/bigquery/v2` is appended).
pub const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";
/// Google's Storage API endpoint.
pub const DEFAULT_GRPC_ENDPOINT: &str = "https://bigquerystorage.googleapis.com";
/// The OAuth scope requested.
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// Largest gRPC message accepted (a Storage Read API response is at most about 128 MiB).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// How long one jobs.query / getQueryResults request waits for the job.
const WAIT_MS: i32 = 10_000;

/// How requests are authorised.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No token (an emulator).
    None,
    /// Application default credentials.
    ApplicationDefault,
    /// A service-account key file.
    KeyFile(String),
    /// A service-account key's JSON.
    KeyJson(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::ApplicationDefault => f.write_str("ApplicationDefault"),
            Self::KeyFile(path) => f.debug_tuple("KeyFile").field(path).finish(),
            // Never print a key.
            Self::KeyJson(_) => f.write_str("KeyJson(…)"),
        }
    }
}

impl Credentials {
    /// The credentials a pipeline file's `credentials` value (after `${VAR}` interpolation)
    /// stands for: JSON text when it starts with `{`, a key file's path otherwise; when absent,
    /// none with an endpoint override and application default credentials without.
    pub fn from_setting(credentials: Option<&str>, endpoint: Option<&str>) -> Self {
        match credentials.map(str::trim) {
            Some(text) if text.starts_with('{') => Self::KeyJson(text.to_string()),
            Some(path) if !path.is_empty() => Self::KeyFile(path.to_string()),
            _ if endpoint.is_some() => Self::None,
            _ => Self::ApplicationDefault,
        }
    }
}

/// Where a BigQuery adapter connects: one project and dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BigQueryConfig {
    /// The project jobs run in and tables live in.
    pub project: String,
    /// The dataset the tables live in.
    pub dataset: String,
    /// REST endpoint override (e.g. `http://127.0.0.1:9050`), without `/bigquery/v2`.
    pub endpoint: Option<String>,
    /// Storage API (gRPC) endpoint override (e.g. `http://127.0.0.1:9060`).
    pub grpc_endpoint: Option<String>,
    /// How requests are authorised.
    pub credentials: Credentials,
    /// The location of a dataset the sink creates (default: BigQuery's, `US`).
    pub location: Option<String>,
}

impl BigQueryConfig {
    /// A configuration for `project` and `dataset` against an emulator at `endpoint` (REST) and
    /// `grpc_endpoint`, without credentials.
    pub fn emulator(project: &str, dataset: &str, endpoint: &str, grpc_endpoint: &str) -> Self {
        Self {
            project: project.to_string(),
            dataset: dataset.to_string(),
            endpoint: Some(endpoint.to_string()),
            grpc_endpoint: Some(grpc_endpoint.to_string()),
            credentials: Credentials::None,
            location: None,
        }
    }
}

/// No token: for emulators.
#[derive(Clone)]
struct NoAuth;

#[async_trait]
impl Authenticator for NoAuth {
    async fn access_token(&self) -> std::result::Result<String, BQError> {
        Ok(String::new())
    }
}

type Connector =
    <yup_oauth2::DefaultHyperClientBuilder as yup_oauth2::HyperClientBuilder>::Connector;

/// OAuth through yup-oauth2 (tokens cached and refreshed by it).
#[derive(Clone)]
struct OAuth(yup_oauth2::authenticator::Authenticator<Connector>);

#[async_trait]
impl Authenticator for OAuth {
    async fn access_token(&self) -> std::result::Result<String, BQError> {
        Ok(self
            .0
            .token(&[SCOPE])
            .await?
            .token()
            .ok_or(BQError::NoToken)?
            .to_string())
    }
}

async fn authenticator(credentials: &Credentials, here: &str) -> Result<Arc<dyn Authenticator>> {
    let invalid = |e: String| Error::invalid("bigquery credentials", format!("{here}: {e}"));
    Ok(match credentials {
        Credentials::None => Arc::new(NoAuth),
        Credentials::KeyFile(path) => {
            let key = yup_oauth2::read_service_account_key(path)
                .await
                .map_err(|e| invalid(format!("reading the service-account key {path:?}: {e}")))?;
            let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key)
                .build()
                .await
                .map_err(|e| invalid(format!("service-account key {path:?}: {e}")))?;
            Arc::new(OAuth(auth))
        }
        Credentials::KeyJson(json) => {
            let key = yup_oauth2::parse_service_account_key(json)
                .map_err(|e| invalid(format!("the service-account key JSON is unreadable: {e}")))?;
            let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key)
                .build()
                .await
                .map_err(|e| invalid(format!("service-account key: {e}")))?;
            Arc::new(OAuth(auth))
        }
        Credentials::ApplicationDefault => {
            let opts = yup_oauth2::ApplicationDefaultCredentialsFlowOpts::default();
            let auth = match yup_oauth2::ApplicationDefaultCredentialsAuthenticator::builder(opts)
                .await
            {
                yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes::ServiceAccount(
                    b,
                ) => b.build().await,
                yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes::InstanceMetadata(
                    b,
                ) => b.build().await,
            }
            .map_err(|e| invalid(format!("application default credentials: {e}")))?;
            Arc::new(OAuth(auth))
        }
    })
}

/// A query's result: column names and rows of cells (JSON values as the REST API gives them:
/// strings or null for scalars).
#[derive(Clone, Debug, Default)]
pub struct QueryResult {
    /// Result column names, in order.
    pub columns: Vec<String>,
    /// The rows.
    pub rows: Vec<Vec<Value>>,
    /// Rows changed by a DML statement.
    pub dml_affected: Option<u64>,
}

/// A connected BigQuery project (see the module docs).
#[derive(Clone)]
pub struct BigQueryClient {
    config: BigQueryConfig,
    client: Client,
    auth: Arc<dyn Authenticator>,
    grpc: Option<Channel>,
}

impl std::fmt::Debug for BigQueryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQueryClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A `BQError` as a LakeSync error.
pub(crate) fn from_bq(context: impl std::fmt::Display, e: BQError) -> Error {
    let retryable = match &e {
        BQError::RequestError(r) => r.is_timeout() || r.is_connect() || r.is_request(),
        BQError::ResponseError { error } => {
            matches!(error.error.code, 429 | 500 | 502 | 503 | 504)
        }
        BQError::TonicTransportError(_) => true,
        BQError::TonicStatusError(s) => retryable_status(s.code()),
        _ => false,
    };
    bq_error(context, e, retryable)
}

/// Whether a gRPC status is worth retrying.
pub(crate) fn retryable_status(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::Internal
    )
}

fn errors_text(errors: &[ErrorProto]) -> String {
    errors
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e.message.as_deref().unwrap_or("error"),
                e.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn cells(rows: Option<Vec<TableRow>>, out: &mut Vec<Vec<Value>>) {
    for row in rows.unwrap_or_default() {
        out.push(
            row.columns
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.value.unwrap_or(Value::Null))
                .collect(),
        );
    }
}

impl BigQueryClient {
    /// Connects (lazily: no request is made here) with `config`; `here` names the adapter in
    /// errors.
    pub async fn connect(config: BigQueryConfig, here: &str) -> Result<Self> {
        check_project(&config.project)?;
        check_dataset(&config.dataset)?;
        let auth = authenticator(&config.credentials, here).await?;
        let base = config
            .endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/');
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| Error::internal(format!("{here}: building an HTTP client: {e}")))?;
        let client = ClientBuilder::new()
            .with_v2_base_url(format!("{base}/bigquery/v2"))
            .with_client(http)
            .build_from_authenticator(Arc::clone(&auth))
            .await
            .map_err(|e| from_bq(format!("{here}: creating the client"), e))?;
        Ok(Self {
            config,
            client,
            auth,
            grpc: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BigQueryConfig {
        &self.config
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.config.project
    }

    /// The dataset.
    pub fn dataset(&self) -> &str {
        &self.config.dataset
    }

    /// A bearer token for a gRPC call (empty without credentials).
    pub(crate) async fn token(&self, here: &str) -> Result<String> {
        self.auth
            .access_token()
            .await
            .map_err(|e| from_bq(format!("{here}: getting an access token"), e))
    }

    /// The Storage Read API client (one HTTP/2 connection, shared by every stream).
    pub(crate) async fn read_client(&mut self, here: &str) -> Result<BigQueryReadClient<Channel>> {
        let channel = match &self.grpc {
            Some(channel) => channel.clone(),
            None => {
                let url = self
                    .config
                    .grpc_endpoint
                    .as_deref()
                    .unwrap_or(DEFAULT_GRPC_ENDPOINT);
                let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| {
                    Error::invalid("bigquery grpc_endpoint", format!("{here}: {url:?}: {e}"))
                })?;
                if url.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(ClientTlsConfig::new().with_enabled_roots())
                        .map_err(|e| Error::internal(format!("{here}: TLS for {url:?}: {e}")))?;
                }
                let channel = endpoint
                    .connect_timeout(Duration::from_secs(30))
                    .http2_adaptive_window(true)
                    .connect_lazy();
                self.grpc = Some(channel.clone());
                channel
            }
        };
        Ok(BigQueryReadClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// Creates the dataset unless it exists.
    pub async fn ensure_dataset(&self, here: &str) -> Result<()> {
        let project = self.project();
        let dataset = self.dataset();
        if self.client.dataset().get(project, dataset).await.is_ok() {
            return Ok(());
        }
        let mut new = Dataset::new(project, dataset);
        new.location = self.config.location.clone();
        match self.client.dataset().create(new).await {
            Ok(_) => Ok(()),
            // Created meanwhile by another writer.
            Err(BQError::ResponseError { error }) if error.error.code == 409 => Ok(()),
            Err(e) => Err(from_bq(
                format!("{here}: creating dataset {dataset:?} in project {project:?}"),
                e,
            )),
        }
    }

    /// The number of rows BigQuery reports for `table` (`tables.get`'s `numRows`; rows still in
    /// the streaming buffer are not counted), `None` when it does not say.
    pub async fn row_count(&self, table: &str, here: &str) -> Result<Option<u64>> {
        super::check_table(table)?;
        let t = self
            .client
            .table()
            .get(self.project(), self.dataset(), table, None)
            .await
            .map_err(|e| from_bq(format!("{here}: reading the size of table {table:?}"), e))?;
        Ok(t.num_rows.and_then(|n| n.parse().ok()))
    }

    /// The columns of `table` with their BigQuery types (`INTEGER`, `TIMESTAMP`, …, as the REST
    /// API names them), from `tables.get`.
    pub async fn column_types(&self, table: &str, here: &str) -> Result<Vec<(String, String)>> {
        super::check_table(table)?;
        let t = self
            .client
            .table()
            .get(self.project(), self.dataset(), table, None)
            .await
            .map_err(|e| from_bq(format!("{here}: reading the schema of table {table:?}"), e))?;
        Ok(t.schema
            .fields
            .unwrap_or_default()
            .into_iter()
            .map(|f| {
                let t = serde_json::to_value(&f.r#type)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                (f.name, t)
            })
            .collect())
    }

    /// Runs `sql` (GoogleSQL) with named `params`; returns every row. `what` says what the
    /// query does, for errors.
    pub async fn query(
        &self,
        sql: &str,
        params: Vec<QueryParameter>,
        what: &str,
    ) -> Result<QueryResult> {
        let project = self.project().to_string();
        let mut request = QueryRequest::new(sql);
        request.use_legacy_sql = false;
        request.parameter_mode = Some("NAMED".to_string());
        if !params.is_empty() {
            request.query_parameters = Some(params);
        }
        request.timeout_ms = Some(WAIT_MS);
        request.location = self.config.location.clone();
        request.format_options = Some(DataFormatOptions {
            use_int64_timestamp: Some(true),
        });
        let response = self
            .client
            .job()
            .query(&project, request)
            .await
            .map_err(|e| from_bq(what, e))?;
        if let Some(errors) = response.errors.as_deref().filter(|e| !e.is_empty()) {
            return Err(bq_error(what, errors_text(errors), false));
        }
        let mut out = QueryResult {
            columns: response
                .schema
                .as_ref()
                .and_then(|s| s.fields.as_ref())
                .map(|f| f.iter().map(|f| f.name.clone()).collect())
                .unwrap_or_default(),
            ..Default::default()
        };
        out.dml_affected = response
            .num_dml_affected_rows
            .as_deref()
            .and_then(|n| n.parse().ok());
        let complete = response.job_complete.unwrap_or(true);
        let job = response
            .job_reference
            .as_ref()
            .and_then(|j| j.job_id.clone());
        let location = response
            .job_reference
            .as_ref()
            .and_then(|j| j.location.clone());
        cells(response.rows, &mut out.rows);
        let mut page_token = response.page_token;
        if complete && page_token.is_none() {
            return Ok(out);
        }
        let job =
            job.ok_or_else(|| bq_error(what, "an unfinished query without a job id", false))?;
        // Wait for the job (when it did not finish in time), then fetch the remaining pages.
        let mut first = !complete;
        loop {
            let params = GetQueryResultsParameters {
                format_options: Some(DataFormatOptions {
                    use_int64_timestamp: Some(true),
                }),
                location: location.clone(),
                max_results: None,
                page_token: page_token.clone(),
                start_index: None,
                timeout_ms: Some(WAIT_MS),
            };
            let page = self
                .client
                .job()
                .get_query_results(&project, &job, params)
                .await
                .map_err(|e| from_bq(format!("{what} (job {job})"), e))?;
            if let Some(errors) = page.errors.as_deref().filter(|e| !e.is_empty()) {
                return Err(bq_error(what, errors_text(errors), false));
            }
            if !page.job_complete.unwrap_or(true) {
                continue;
            }
            if first {
                first = false;
                if out.columns.is_empty() {
                    out.columns = page
                        .schema
                        .as_ref()
                        .and_then(|s| s.fields.as_ref())
                        .map(|f| f.iter().map(|f| f.name.clone()).collect())
                        .unwrap_or_default();
                }
                if out.dml_affected.is_none() {
                    out.dml_affected = page
                        .num_dml_affected_rows
                        .as_deref()
                        .and_then(|n| n.parse().ok());
                }
            }
            cells(page.rows, &mut out.rows);
            page_token = page.page_token;
            if page_token.is_none() {
                return Ok(out);
            }
        }
    }
}

/// A result cell as text (`None` for NULL).
pub(crate) fn cell_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_the_setting() {
        assert_eq!(
            Credentials::from_setting(Some(" {\"type\": \"service_account\"}"), None),
            Credentials::KeyJson("{\"type\": \"service_account\"}".into())
        );
        assert_eq!(
            Credentials::from_setting(Some("/etc/key.json"), None),
            Credentials::KeyFile("/etc/key.json".into())
        );
        assert_eq!(
            Credentials::from_setting(None, Some("http://127.0.0.1:9050")),
            Credentials::None
        );
        assert_eq!(
            Credentials::from_setting(None, None),
            Credentials::ApplicationDefault
        );
        assert_eq!(
            format!("{:?}", Credentials::KeyJson("secret".into())),
            "KeyJson(…)"
        );
    }
}
