//! Smoke tests for the real services that `scripts/services.sh` starts.
//!
//! Each test makes one real round trip against its service, so that a broken set-up shows up
//! here, with a plain message, rather than deep inside a connector test. A test whose service
//! is not running is skipped (or fails in CI); see [`crate::support::service_env`].
//!
//! Every name a test creates is unique per run, so reruns against the same services never
//! collide.

// Tests state what they expected when a step fails; that is what `expect` is for.

use std::time::Duration;

use crate::support::{self, unique_name};

/// Upper bound for any single HTTP request made by these tests.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("build an HTTP client")
}

/// PostgreSQL: logical WAL is on, and a temporary table takes a write and gives it back.
#[tokio::test]
async fn postgres_round_trip() {
    let Some(url) = support::service_env("postgres", "LAKESYNC_PG_URL") else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    // Temporary tables belong to one connection, so keep to one.
    let mut conn = pool
        .acquire()
        .await
        .expect("acquire a PostgreSQL connection");

    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&mut *conn)
        .await
        .expect("SHOW wal_level");
    assert_eq!(wal_level, "logical", "CDC needs wal_level=logical");

    let table = unique_name("smoke");
    sqlx::query(&format!(
        "CREATE TEMP TABLE {table} (id INT PRIMARY KEY, v TEXT NOT NULL)"
    ))
    .execute(&mut *conn)
    .await
    .expect("create a temporary table");
    let inserted = sqlx::query(&format!(
        "INSERT INTO {table} (id, v) VALUES ($1, $2), ($3, $4)"
    ))
    .bind(1_i32)
    .bind("one")
    .bind(2_i32)
    .bind("two")
    .execute(&mut *conn)
    .await
    .expect("insert two rows");
    assert_eq!(inserted.rows_affected(), 2);

    let rows: Vec<(i32, String)> =
        sqlx::query_as(&format!("SELECT id, v FROM {table} ORDER BY id"))
            .fetch_all(&mut *conn)
            .await
            .expect("select the rows back");
    assert_eq!(rows, vec![(1, "one".to_owned()), (2, "two".to_owned())]);

    drop(conn);
    pool.close().await;
}

/// MariaDB: the binlog is in ROW format with full row images, and a temporary table takes a
/// write and gives it back.
#[tokio::test]
async fn mariadb_round_trip() {
    let Some(url) = support::service_env("mariadb", "LAKESYNC_MYSQL_URL") else {
        return;
    };
    let pool = sqlx::MySqlPool::connect(&url)
        .await
        .expect("connect to MariaDB");
    let mut conn = pool.acquire().await.expect("acquire a MariaDB connection");

    let (format, image): (String, String) =
        sqlx::query_as("SELECT CAST(@@binlog_format AS CHAR), CAST(@@binlog_row_image AS CHAR)")
            .fetch_one(&mut *conn)
            .await
            .expect("read the binlog settings");
    assert_eq!(format, "ROW", "CDC needs binlog_format=ROW");
    assert_eq!(image, "FULL", "CDC needs binlog_row_image=FULL");

    let table = unique_name("smoke");
    sqlx::query(&format!(
        "CREATE TEMPORARY TABLE {table} (id INT PRIMARY KEY, v VARCHAR(32) NOT NULL)"
    ))
    .execute(&mut *conn)
    .await
    .expect("create a temporary table");
    let inserted = sqlx::query(&format!(
        "INSERT INTO {table} (id, v) VALUES (?, ?), (?, ?)"
    ))
    .bind(1_i32)
    .bind("one")
    .bind(2_i32)
    .bind("two")
    .execute(&mut *conn)
    .await
    .expect("insert two rows");
    assert_eq!(inserted.rows_affected(), 2);

    let rows: Vec<(i32, String)> =
        sqlx::query_as(&format!("SELECT id, v FROM {table} ORDER BY id"))
            .fetch_all(&mut *conn)
            .await
            .expect("select the rows back");
    assert_eq!(rows, vec![(1, "one".to_owned()), (2, "two".to_owned())]);

    drop(conn);
    pool.close().await;
}

/// S3 (SeaweedFS): a signed put, get and delete through `object_store`.
#[tokio::test]
async fn s3_round_trip() {
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};

    let Some(endpoint) = support::service_env("s3", "LAKESYNC_S3_ENDPOINT") else {
        return;
    };
    let Some(bucket) = support::service_env("s3", "LAKESYNC_S3_BUCKET") else {
        return;
    };
    let Some(key_id) = support::service_env("s3", "AWS_ACCESS_KEY_ID") else {
        return;
    };
    let Some(secret) = support::service_env("s3", "AWS_SECRET_ACCESS_KEY") else {
        return;
    };
    let Some(region) = support::service_env("s3", "AWS_REGION") else {
        return;
    };

    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_region(&region)
        .with_access_key_id(&key_id)
        .with_secret_access_key(&secret)
        .build()
        .expect("build the S3 client");

    let path = Path::from(format!("smoke/{}.bin", unique_name("object")));
    let payload: Vec<u8> = (0..=255_u8).cycle().take(64 * 1024).collect();
    store
        .put(&path, PutPayload::from(payload.clone()))
        .await
        .expect("put an object");

    let got = store
        .get(&path)
        .await
        .expect("get the object back")
        .bytes()
        .await
        .expect("read the object's bytes");
    assert_eq!(got.as_ref(), payload.as_slice(), "object bytes differ");

    store.delete(&path).await.expect("delete the object");
    let gone = store.get(&path).await;
    assert!(
        matches!(gone, Err(object_store::Error::NotFound { .. })),
        "object still readable after delete: {gone:?}"
    );
}

/// Iceberg REST catalogue (SeaweedFS): an OAuth2 token, the catalogue config, and a namespace
/// created, listed and dropped.
#[tokio::test]
async fn iceberg_rest_round_trip() {
    let Some(uri) = support::service_env("iceberg-rest", "LAKESYNC_ICEBERG_REST_URI") else {
        return;
    };
    let Some(warehouse) = support::service_env("iceberg-rest", "LAKESYNC_ICEBERG_WAREHOUSE") else {
        return;
    };
    let Some(client_id) = support::service_env("iceberg-rest", "AWS_ACCESS_KEY_ID") else {
        return;
    };
    let Some(client_secret) = support::service_env("iceberg-rest", "AWS_SECRET_ACCESS_KEY") else {
        return;
    };
    let uri = uri.trim_end_matches('/');
    let http = http_client();

    // OAuth2 client credentials, as pyiceberg sends for `credential=test:testtest`.
    let resp = http
        .post(format!("{uri}/v1/oauth/tokens"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.as_str()),
        ])
        .send()
        .await
        .expect("request an OAuth2 token");
    assert!(
        resp.status().is_success(),
        "token request failed: {}",
        resp.status()
    );
    let body: serde_json::Value = resp.json().await.expect("token response is JSON");
    let token = body["access_token"]
        .as_str()
        .expect("token response has access_token")
        .to_owned();

    let resp = http
        .get(format!("{uri}/v1/config"))
        .query(&[("warehouse", warehouse.as_str())])
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /v1/config");
    assert!(
        resp.status().is_success(),
        "config failed: {}",
        resp.status()
    );
    let config: serde_json::Value = resp.json().await.expect("config response is JSON");
    let base = match config["overrides"]["prefix"].as_str() {
        Some(prefix) => format!("{uri}/v1/{prefix}"),
        None => format!("{uri}/v1"),
    };

    // Without the token the catalogue must refuse.
    let anonymous = http
        .get(format!("{base}/namespaces"))
        .send()
        .await
        .expect("anonymous GET namespaces");
    assert!(
        anonymous.status().is_client_error(),
        "catalogue answered an unauthenticated request with {}",
        anonymous.status()
    );

    let namespace = unique_name("smoke");
    let resp = http
        .post(format!("{base}/namespaces"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "namespace": [namespace], "properties": {} }))
        .send()
        .await
        .expect("create a namespace");
    assert!(
        resp.status().is_success(),
        "create namespace failed: {}",
        resp.status()
    );

    let listed = list_namespaces(&http, &base, &token).await;
    assert!(
        listed.contains(&serde_json::json!([namespace])),
        "namespace {namespace} not listed: {listed:?}"
    );

    let resp = http
        .delete(format!("{base}/namespaces/{namespace}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("drop the namespace");
    assert!(
        resp.status().is_success(),
        "drop namespace failed: {}",
        resp.status()
    );
    let listed = list_namespaces(&http, &base, &token).await;
    assert!(
        !listed.contains(&serde_json::json!([namespace])),
        "namespace {namespace} still listed after drop: {listed:?}"
    );
}

/// `GET {base}/namespaces` with a bearer token; returns the `namespaces` array.
async fn list_namespaces(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Vec<serde_json::Value> {
    let resp = http
        .get(format!("{base}/namespaces"))
        .bearer_auth(token)
        .send()
        .await
        .expect("list namespaces");
    assert!(
        resp.status().is_success(),
        "list namespaces failed: {}",
        resp.status()
    );
    let body: serde_json::Value = resp.json().await.expect("namespace list is JSON");
    body["namespaces"]
        .as_array()
        .expect("namespace list has a `namespaces` array")
        .clone()
}

/// NATS JetStream: a stream created, a message published with an ack and read back by
/// sequence, and the stream deleted.
#[tokio::test]
async fn nats_jetstream_round_trip() {
    use async_nats::jetstream;

    let Some(url) = support::service_env("nats", "LAKESYNC_NATS_URL") else {
        return;
    };
    let client = async_nats::connect(&url).await.expect("connect to NATS");
    let js = jetstream::new(client);

    let name = unique_name("SMOKE");
    let subject = format!("smoke.{name}");
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("create a JetStream stream");

    let payload = format!("hello from {name}");
    let ack = js
        .publish(subject.clone(), payload.clone().into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
    assert_eq!(ack.stream, name, "ack names another stream");

    let msg = stream
        .get_raw_message(ack.sequence)
        .await
        .expect("get the message back by sequence");
    assert_eq!(msg.sequence, ack.sequence);
    assert_eq!(msg.subject.as_str(), subject);
    assert_eq!(msg.payload.as_ref(), payload.as_bytes());

    let deleted = js.delete_stream(&name).await.expect("delete the stream");
    assert!(deleted.success, "stream delete not acknowledged");
}

/// moto (CloudWatch Logs): a log group created, found by `DescribeLogGroups`, and deleted.
#[tokio::test]
async fn moto_logs_round_trip() {
    let Some(endpoint) = support::service_env("moto", "LAKESYNC_MOTO_ENDPOINT") else {
        return;
    };
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
    let http = http_client();
    let group = format!("/lakesync/smoke/{}", unique_name("group"));

    // Fails the test unless moto answers 2xx.
    logs_call(
        &http,
        &endpoint,
        &region,
        "CreateLogGroup",
        serde_json::json!({
            "logGroupName": group,
        }),
    )
    .await;

    let described = logs_call(
        &http,
        &endpoint,
        &region,
        "DescribeLogGroups",
        serde_json::json!({
            "logGroupNamePrefix": group,
        }),
    )
    .await;
    let names: Vec<&str> = described["logGroups"]
        .as_array()
        .expect("DescribeLogGroups has logGroups")
        .iter()
        .filter_map(|g| g["logGroupName"].as_str())
        .collect();
    assert_eq!(names, vec![group.as_str()], "log group not listed");

    logs_call(
        &http,
        &endpoint,
        &region,
        "DeleteLogGroup",
        serde_json::json!({
            "logGroupName": group,
        }),
    )
    .await;
    let described = logs_call(
        &http,
        &endpoint,
        &region,
        "DescribeLogGroups",
        serde_json::json!({
            "logGroupNamePrefix": group,
        }),
    )
    .await;
    assert_eq!(
        described["logGroups"].as_array().map(Vec::len),
        Some(0),
        "log group still listed after delete: {described}"
    );
}

/// bqemulator (BigQuery): a dataset created over REST, a query answered, and the gRPC Storage API
/// port accepting connections.
#[tokio::test]
async fn bigquery_emulator_round_trip() {
    let Some(rest) = support::service_env("bq", "LAKESYNC_BQ_REST_ENDPOINT") else {
        return;
    };
    let Some(grpc) = support::service_env("bq", "LAKESYNC_BQ_GRPC_ENDPOINT") else {
        return;
    };
    let project = std::env::var("LAKESYNC_BQ_PROJECT").unwrap_or_else(|_| "test-proj".to_owned());
    let http = http_client();
    let base = format!("{rest}/bigquery/v2/projects/{project}");
    let dataset = unique_name("smoke");
    let created = http
        .post(format!("{base}/datasets"))
        .json(&serde_json::json!({
            "datasetReference": {"projectId": project, "datasetId": dataset}
        }))
        .send()
        .await
        .expect("POST datasets");
    assert!(
        created.status().is_success(),
        "create dataset: {}",
        created.status()
    );
    let answer: serde_json::Value = http
        .post(format!("{base}/queries"))
        .json(&serde_json::json!({"query": "SELECT 1 + 1 AS two", "useLegacySql": false}))
        .send()
        .await
        .expect("POST queries")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!(answer["rows"][0]["f"][0]["v"], "2", "{answer}");
    let addr = grpc
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    tokio::net::TcpStream::connect(&addr)
        .await
        .expect("the gRPC Storage API port accepts connections");
}

/// One CloudWatch Logs JSON call to moto; returns the parsed response body.
///
/// moto checks no signature, but it picks the AWS service from the credential scope of the
/// `Authorization` header (without one the request is taken for S3), so the header names
/// `logs` there.
async fn logs_call(
    http: &reqwest::Client,
    endpoint: &str,
    region: &str,
    action: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential=test/20250101/{region}/logs/aws4_request, \
         SignedHeaders=content-type;host;x-amz-target, Signature=0"
    );
    let resp = http
        .post(format!("{}/", endpoint.trim_end_matches('/')))
        .header("X-Amz-Target", format!("Logs_20140328.{action}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header("Authorization", authorization)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{action}: request failed: {e}"));
    let status = resp.status();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("{action}: reading the body failed: {e}"));
    assert!(status.is_success(), "{action} failed with {status}: {text}");
    if text.trim().is_empty() {
        return serde_json::json!({});
    }
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{action}: body is not JSON ({e}): {text}"))
}
