//! Named query parameters: how every value reaches BigQuery (never spliced into SQL text).
//!
//! Rows travel as one `ARRAY<STRUCT<…>>` parameter read with `UNNEST(@rows)`, so one statement
//! carries many rows. Values are sent as their text (as the REST API wants); a field with no value
//! is NULL. [`RowChunker`] cuts rows into parameters of bounded size: BigQuery caps a request at
//! 10 MB.

use std::collections::HashMap;

use gcp_bigquery_client::model::query_parameter::QueryParameter;
use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
use gcp_bigquery_client::model::query_parameter_type_struct_types::QueryParameterTypeStructTypes;
use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;

/// The most bytes of values (plus a per-field allowance) one statement's row parameter carries.
pub const MAX_PARAM_BYTES: usize = 4 * 1024 * 1024;
/// The most rows one statement's row parameter carries.
pub const MAX_PARAM_ROWS: usize = 20_000;
/// Bytes counted per field on top of its value (the JSON around it).
const FIELD_OVERHEAD: usize = 24;

fn scalar_type(t: &str) -> QueryParameterType {
    QueryParameterType {
        r#type: t.to_string(),
        ..Default::default()
    }
}

fn value(v: Option<String>) -> QueryParameterValue {
    QueryParameterValue {
        value: v,
        ..Default::default()
    }
}

/// A scalar parameter `@name` of BigQuery type `t` (`STRING`, `INT64`, …); `None` is NULL.
pub fn scalar(name: &str, t: &str, v: Option<String>) -> QueryParameter {
    QueryParameter {
        name: Some(name.to_string()),
        parameter_type: Some(scalar_type(t)),
        parameter_value: Some(value(v)),
    }
}

/// An `ARRAY<t>` parameter `@name` (BigQuery arrays hold no NULLs).
pub fn array(name: &str, t: &str, values: Vec<String>) -> QueryParameter {
    QueryParameter {
        name: Some(name.to_string()),
        parameter_type: Some(QueryParameterType {
            r#type: "ARRAY".to_string(),
            array_type: Some(Box::new(scalar_type(t))),
            ..Default::default()
        }),
        parameter_value: Some(QueryParameterValue {
            array_values: Some(values.into_iter().map(|v| value(Some(v))).collect()),
            ..Default::default()
        }),
    }
}

/// An `ARRAY<STRUCT<fields>>` parameter `@name`: `fields` are `(name, type)`, each row one value
/// per field (`None` is NULL).
pub fn struct_array(
    name: &str,
    fields: &[(String, &'static str)],
    rows: Vec<Vec<Option<String>>>,
) -> QueryParameter {
    let struct_types = fields
        .iter()
        .map(|(f, t)| QueryParameterTypeStructTypes {
            description: None,
            name: Some(f.clone()),
            r#type: Some(scalar_type(t)),
        })
        .collect();
    let array_values = rows
        .into_iter()
        .map(|row| {
            let values: HashMap<String, QueryParameterValue> = fields
                .iter()
                .zip(row)
                .map(|((f, _), v)| (f.clone(), value(v)))
                .collect();
            QueryParameterValue {
                struct_values: Some(values),
                ..Default::default()
            }
        })
        .collect();
    QueryParameter {
        name: Some(name.to_string()),
        parameter_type: Some(QueryParameterType {
            r#type: "ARRAY".to_string(),
            array_type: Some(Box::new(QueryParameterType {
                r#type: "STRUCT".to_string(),
                struct_types: Some(struct_types),
                ..Default::default()
            })),
            ..Default::default()
        }),
        parameter_value: Some(QueryParameterValue {
            array_values: Some(array_values),
            ..Default::default()
        }),
    }
}

/// Collects rows and hands them out in chunks that fit one statement.
#[derive(Debug, Default)]
pub struct RowChunker {
    rows: Vec<Vec<Option<String>>>,
    bytes: usize,
}

impl RowChunker {
    /// Adds a row; returns a full chunk when this row filled one.
    pub fn push(&mut self, row: Vec<Option<String>>) -> Option<Vec<Vec<Option<String>>>> {
        self.bytes += row
            .iter()
            .map(|v| v.as_ref().map_or(0, String::len) + FIELD_OVERHEAD)
            .sum::<usize>();
        self.rows.push(row);
        (self.bytes >= MAX_PARAM_BYTES || self.rows.len() >= MAX_PARAM_ROWS).then(|| self.take())
    }

    /// The rows not yet handed out (possibly none).
    pub fn take(&mut self) -> Vec<Vec<Option<String>>> {
        self.bytes = 0;
        std::mem::take(&mut self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_arrays_serialise_as_the_rest_api_wants() {
        let p = struct_array(
            "rows",
            &[("id".to_string(), "STRING"), ("n".to_string(), "INT64")],
            vec![vec![Some("a".into()), None]],
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["parameterType"]["arrayType"]["type"], "STRUCT");
        assert_eq!(
            json["parameterType"]["arrayType"]["structTypes"][1]["type"]["type"],
            "INT64"
        );
        assert_eq!(
            json["parameterValue"]["arrayValues"][0]["structValues"]["id"]["value"],
            "a"
        );
        assert!(
            json["parameterValue"]["arrayValues"][0]["structValues"]["n"]
                .get("value")
                .is_none()
        );
    }

    #[test]
    fn the_chunker_bounds_rows_and_bytes() {
        let mut c = RowChunker::default();
        let mut chunks = 0;
        for _ in 0..(MAX_PARAM_ROWS * 2 + 5) {
            if c.push(vec![Some("x".into())]).is_some() {
                chunks += 1;
            }
        }
        assert_eq!(chunks, 2);
        assert_eq!(c.take().len(), 5);
        let big = "y".repeat(MAX_PARAM_BYTES);
        assert!(c.push(vec![Some(big)]).is_some());
    }
}
