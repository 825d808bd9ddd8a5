//! The row form of a delta, its deltaId, and delta extraction.
//!
//! A [`RowDelta`] is a column-level change to one row: `op`, `table`, `row_id`, `client_id`,
//! the ordered `columns` it sets, its `hlc`, and `delta_id`, the idempotency key.
//!
//! **deltaId** is the lowercase hex SHA-256 of the UTF-8 stable JSON (see [`crate::json`]) of
//! `{clientId, columns: [{column, value}…], hlc: "<decimal>", rowId, table}`, with `columns` in
//! the delta's own order. It equals the original TypeScript implementation's byte for byte.
//! **actionId** is the same construction over `{clientId, hlc, connector, actionType, params}`.
//!
//! [`extract_delta`] turns a before/after pair of row images into an INSERT, UPDATE (changed
//! columns only) or DELETE (no columns), or nothing when nothing changed — the original's
//! `extractDelta`, including its JavaScript equality rules (`Object.is` for scalars, so `0 → -0`
//! is a change; key-order-independent deep equality for objects and arrays).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::hlc::HlcTimestamp;
use crate::json::{js_deep_equal, js_key_order, js_object_is, write_stable, write_string};

/// The kind of change a delta records. The discriminants are the wire and Arrow codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[repr(u8)]
pub enum DeltaOp {
    /// A new row.
    Insert = 1,
    /// Some columns of a row changed.
    Update = 2,
    /// The row was deleted.
    Delete = 3,
}

impl DeltaOp {
    /// The op for a wire/Arrow code (1, 2, 3).
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            1 => Ok(Self::Insert),
            2 => Ok(Self::Update),
            3 => Ok(Self::Delete),
            other => Err(Error::invalid(
                "delta",
                format!(
                    "unknown or unspecified op code {other} (expected 1 insert, 2 update, 3 delete)"
                ),
            )),
        }
    }

    /// The wire/Arrow code.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// One column a delta sets: its name and new JSON value (`null` is a value: "set to null").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnDelta {
    /// The column name.
    pub column: String,
    /// The new value.
    pub value: Value,
}

impl ColumnDelta {
    /// A column set to `value`.
    pub fn new(column: impl Into<String>, value: Value) -> Self {
        Self {
            column: column.into(),
            value,
        }
    }
}

/// A 32-byte deltaId. Displays and serialises as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeltaId(pub [u8; 32]);

impl DeltaId {
    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DeltaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeltaId({self})")
    }
}

impl std::fmt::Display for DeltaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for DeltaId {
    type Err = Error;

    /// Parses 64 hex characters.
    fn from_str(s: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut bytes).is_err() {
            return Err(Error::invalid(
                "delta",
                format!("deltaId {s:?} is not 64 hexadecimal characters (a SHA-256 digest)"),
            ));
        }
        Ok(Self(bytes))
    }
}

impl Serialize for DeltaId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeltaId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A column-level change to one row, in the original's JSON shape (`rowId`, `clientId`, HLC as a
/// decimal string).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RowDelta {
    /// INSERT, UPDATE or DELETE.
    pub op: DeltaOp,
    /// The table the row belongs to.
    pub table: String,
    /// The row's identity within the table.
    pub row_id: String,
    /// The writer; breaks HLC ties in last-writer-wins.
    pub client_id: String,
    /// The columns this delta sets, in order (empty for DELETE).
    pub columns: Vec<ColumnDelta>,
    /// When the change was made.
    pub hlc: HlcTimestamp,
    /// Idempotency key: the hash of the content above.
    pub delta_id: DeltaId,
}

impl RowDelta {
    /// A delta with its deltaId computed from the content.
    pub fn new(
        op: DeltaOp,
        table: impl Into<String>,
        row_id: impl Into<String>,
        client_id: impl Into<String>,
        columns: Vec<ColumnDelta>,
        hlc: HlcTimestamp,
    ) -> Self {
        let (table, row_id, client_id) = (table.into(), row_id.into(), client_id.into());
        let delta_id = delta_id(&client_id, hlc, &table, &row_id, &columns);
        Self {
            op,
            table,
            row_id,
            client_id,
            columns,
            hlc,
            delta_id,
        }
    }

    /// Checks that `delta_id` is the hash of the content.
    pub fn verify_delta_id(&self) -> Result<()> {
        let expected = delta_id(
            &self.client_id,
            self.hlc,
            &self.table,
            &self.row_id,
            &self.columns,
        );
        if expected == self.delta_id {
            Ok(())
        } else {
            Err(Error::invalid(
                "delta",
                format!(
                    "deltaId {} of row {:?} in table {:?} does not match its content (expected {expected})",
                    self.delta_id, self.row_id, self.table
                ),
            ))
        }
    }

    /// The value this delta sets for `column`, if it sets it (the first entry wins, as in the
    /// original).
    pub fn value(&self, column: &str) -> Option<&Value> {
        self.columns
            .iter()
            .find(|c| c.column == column)
            .map(|c| &c.value)
    }
}

/// The stable JSON payload a deltaId hashes (exposed for tests and debugging).
pub fn delta_id_payload(
    client_id: &str,
    hlc: HlcTimestamp,
    table: &str,
    row_id: &str,
    columns: &[ColumnDelta],
) -> String {
    let mut out = String::with_capacity(96 + columns.len() * 32);
    out.push_str("{\"clientId\":");
    write_string(&mut out, client_id);
    out.push_str(",\"columns\":[");
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"column\":");
        write_string(&mut out, &c.column);
        out.push_str(",\"value\":");
        write_stable(&mut out, &c.value);
        out.push('}');
    }
    out.push_str("],\"hlc\":\"");
    out.push_str(&hlc.to_string());
    out.push_str("\",\"rowId\":");
    write_string(&mut out, row_id);
    out.push_str(",\"table\":");
    write_string(&mut out, table);
    out.push('}');
    out
}

/// The deltaId of a delta's content.
pub fn delta_id(
    client_id: &str,
    hlc: HlcTimestamp,
    table: &str,
    row_id: &str,
    columns: &[ColumnDelta],
) -> DeltaId {
    let payload = delta_id_payload(client_id, hlc, table, row_id, columns);
    DeltaId(Sha256::digest(payload.as_bytes()).into())
}

/// The actionId of an action: the same construction as deltaId over
/// `{actionType, clientId, connector, hlc, params}`.
pub fn action_id(
    client_id: &str,
    hlc: HlcTimestamp,
    connector: &str,
    action_type: &str,
    params: &Value,
) -> String {
    let mut out = String::from("{\"actionType\":");
    write_string(&mut out, action_type);
    out.push_str(",\"clientId\":");
    write_string(&mut out, client_id);
    out.push_str(",\"connector\":");
    write_string(&mut out, connector);
    out.push_str(",\"hlc\":\"");
    out.push_str(&hlc.to_string());
    out.push_str("\",\"params\":");
    write_stable(&mut out, params);
    out.push('}');
    hex::encode(Sha256::digest(out.as_bytes()))
}

/// Identity and time of a change, for [`extract_delta`].
#[derive(Clone, Copy, Debug)]
pub struct ExtractContext<'a> {
    /// The table.
    pub table: &'a str,
    /// The row's identity.
    pub row_id: &'a str,
    /// The writer.
    pub client_id: &'a str,
    /// When the change was made.
    pub hlc: HlcTimestamp,
    /// When given, only these columns are considered (the table schema's allow-list).
    pub columns: Option<&'a [String]>,
}

/// The delta that turns row image `before` into `after`, or `None` when nothing changed.
///
/// `None → Some` is an INSERT of every column of `after` (in JavaScript key order), `Some → None`
/// a DELETE with no columns, and `Some → Some` an UPDATE of the changed columns only, in the
/// order of `[...keys(before), ...keys(after)]` without repeats.
pub fn extract_delta(
    before: Option<&Map<String, Value>>,
    after: Option<&Map<String, Value>>,
    ctx: ExtractContext<'_>,
) -> Option<RowDelta> {
    let allowed = |key: &str| ctx.columns.is_none_or(|cols| cols.iter().any(|c| c == key));
    let (op, columns) = match (before, after) {
        (None, None) => return None,
        (None, Some(after)) => {
            let columns = js_key_order(after)
                .into_iter()
                .filter(|k| allowed(k))
                .map(|k| ColumnDelta::new(k.clone(), after[k.as_str()].clone()))
                .collect();
            (DeltaOp::Insert, columns)
        }
        (Some(_), None) => (DeltaOp::Delete, Vec::new()),
        (Some(before), Some(after)) => {
            let mut keys: Vec<&String> = js_key_order(before);
            for k in js_key_order(after) {
                if !before.contains_key(k.as_str()) {
                    keys.push(k);
                }
            }
            let mut columns = Vec::new();
            for key in keys.into_iter().filter(|k| allowed(k)) {
                let Some(new) = after.get(key.as_str()) else {
                    continue;
                };
                let changed = match before.get(key.as_str()) {
                    None => true,
                    Some(old) => {
                        let both_containers = matches!(
                            (old, new),
                            (
                                Value::Object(_) | Value::Array(_),
                                Value::Object(_) | Value::Array(_)
                            )
                        );
                        !(js_object_is(old, new) || both_containers && js_deep_equal(old, new))
                    }
                };
                if changed {
                    columns.push(ColumnDelta::new(key.clone(), new.clone()));
                }
            }
            if columns.is_empty() {
                return None;
            }
            (DeltaOp::Update, columns)
        }
    };
    Some(RowDelta::new(
        op,
        ctx.table,
        ctx.row_id,
        ctx.client_id,
        columns,
        ctx.hlc,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hlc(w: u64, c: u16) -> HlcTimestamp {
        HlcTimestamp::new(w, c).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn vector_v1_insert() {
        let cols = vec![
            ColumnDelta::new("name", json!("Alice")),
            ColumnDelta::new("age", json!(30)),
            ColumnDelta::new("active", json!(true)),
        ];
        let payload =
            delta_id_payload("client-1", HlcTimestamp(1_000_000), "users", "row-1", &cols);
        assert_eq!(
            payload,
            r#"{"clientId":"client-1","columns":[{"column":"name","value":"Alice"},{"column":"age","value":30},{"column":"active","value":true}],"hlc":"1000000","rowId":"row-1","table":"users"}"#
        );
        let d = RowDelta::new(
            DeltaOp::Insert,
            "users",
            "row-1",
            "client-1",
            cols,
            HlcTimestamp(1_000_000),
        );
        assert_eq!(
            d.delta_id.to_string(),
            "ea49110ec03d9efc670f11ed6bab11d07d6de5ed11e6be1da8812d3fdf4da712"
        );
    }

    #[test]
    fn vector_v3_nested_json() {
        let t = hlc(1_700_000_000_123, 0);
        assert_eq!(t.0, 111_411_200_008_060_928);
        let meta: Value = serde_json::from_str(
            r#"{"z":1,"a":[3,{"y":null,"b":"x"}],"10":true,"2":false,"B":"upper"}"#,
        )
        .unwrap();
        let cols = vec![
            ColumnDelta::new("meta", meta),
            ColumnDelta::new("tags", json!(["b", "a"])),
        ];
        assert_eq!(
            delta_id_payload("client-b", t, "docs", "doc-9", &cols),
            r#"{"clientId":"client-b","columns":[{"column":"meta","value":{"10":true,"2":false,"B":"upper","a":[3,{"b":"x","y":null}],"z":1}},{"column":"tags","value":["b","a"]}],"hlc":"111411200008060928","rowId":"doc-9","table":"docs"}"#
        );
        assert_eq!(
            delta_id("client-b", t, "docs", "doc-9", &cols).to_string(),
            "ab54e6493ec5485042212e2fd91a83a6129f6cdedc40693ded8b79c5616a46c6"
        );
    }

    #[test]
    fn vector_v5_delete() {
        let id = delta_id(
            "client-c",
            HlcTimestamp(111_411_200_032_768_008),
            "todos",
            "row-2",
            &[],
        );
        assert_eq!(
            id.to_string(),
            "0d6b23abe18566d42ecf6dc2c15c9e77315b905b28253d65bb48c8ec4b354ad3"
        );
    }

    #[test]
    fn vector_action_id() {
        let t = hlc(1_700_000_000_000, 1);
        assert_eq!(t.0, 111_411_200_000_000_001);
        let id = action_id(
            "client-1",
            t,
            "slack",
            "send_message",
            &json!({"text": "Hello", "channel": "#general"}),
        );
        assert_eq!(
            id,
            "22898c9e4726596d420cfc5a51143ce1304ace1860c79f642564a49026631bd8"
        );
    }

    #[test]
    fn json_shape_matches_the_original() {
        let d = RowDelta::new(
            DeltaOp::Update,
            "t",
            "r",
            "c",
            vec![ColumnDelta::new("a", json!(1))],
            HlcTimestamp(5),
        );
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["op"], "UPDATE");
        assert_eq!(v["rowId"], "r");
        assert_eq!(v["clientId"], "c");
        assert_eq!(v["hlc"], "5");
        assert_eq!(v["columns"][0], json!({"column": "a", "value": 1}));
        let back: RowDelta = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
        back.verify_delta_id().unwrap();
        let mut tampered = d.clone();
        tampered.columns[0].value = json!(2);
        assert!(tampered.verify_delta_id().is_err());
        assert!("delta-1".parse::<DeltaId>().is_err());
    }

    fn ctx(columns: Option<&[String]>) -> ExtractContext<'_> {
        ExtractContext {
            table: "users",
            row_id: "row-1",
            client_id: "client-1",
            hlc: HlcTimestamp(1_000_000),
            columns,
        }
    }

    #[test]
    fn extract_insert_is_vector_v1() {
        let after = obj(json!({"name": "Alice", "age": 30, "active": true}));
        let d = extract_delta(None, Some(&after), ctx(None)).unwrap();
        assert_eq!(d.op, DeltaOp::Insert);
        assert_eq!(d.columns.len(), 3);
        assert_eq!(
            d.delta_id.to_string(),
            "ea49110ec03d9efc670f11ed6bab11d07d6de5ed11e6be1da8812d3fdf4da712"
        );
    }

    #[test]
    fn extract_update_changed_columns_only() {
        let before = obj(json!({"name": "Alice", "age": 30}));
        let after = obj(json!({"name": "Alice", "age": 31}));
        let d = extract_delta(Some(&before), Some(&after), ctx(None)).unwrap();
        assert_eq!(d.op, DeltaOp::Update);
        assert_eq!(d.columns, vec![ColumnDelta::new("age", json!(31))]);
    }

    #[test]
    fn extract_delete_and_no_ops() {
        let row = obj(json!({"name": "Alice"}));
        let d = extract_delta(Some(&row), None, ctx(None)).unwrap();
        assert_eq!((d.op, d.columns.len()), (DeltaOp::Delete, 0));
        assert!(extract_delta(Some(&row), Some(&row), ctx(None)).is_none());
        assert!(extract_delta(None, None, ctx(None)).is_none());
    }

    #[test]
    fn extract_nested_objects_compare_deeply() {
        let before = obj(json!({"name": "Alice", "meta": {"city": "London", "country": "UK"}}));
        let swapped = obj(json!({"name": "Alice", "meta": {"country": "UK", "city": "London"}}));
        assert!(extract_delta(Some(&before), Some(&swapped), ctx(None)).is_none());
        let moved = obj(json!({"name": "Alice", "meta": {"city": "Manchester", "country": "UK"}}));
        let d = extract_delta(Some(&before), Some(&moved), ctx(None)).unwrap();
        assert_eq!(
            d.columns,
            vec![ColumnDelta::new(
                "meta",
                json!({"city": "Manchester", "country": "UK"})
            )]
        );
    }

    #[test]
    fn extract_respects_the_schema_allow_list() {
        let allow = vec!["name".to_string(), "age".to_string()];
        let before = obj(json!({"name": "Alice", "age": 30, "secret": "a"}));
        let after = obj(json!({"name": "Alice", "age": 30, "secret": "b"}));
        assert!(extract_delta(Some(&before), Some(&after), ctx(Some(&allow))).is_none());
        let d = extract_delta(None, Some(&after), ctx(Some(&allow))).unwrap();
        let names: Vec<&str> = d.columns.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(names, ["name", "age"]);
    }

    #[test]
    fn extract_new_column_and_zero_sign() {
        let before = obj(json!({"name": "Bob"}));
        let after = obj(json!({"name": "Bob", "age": 30}));
        let d = extract_delta(Some(&before), Some(&after), ctx(None)).unwrap();
        assert_eq!(d.columns, vec![ColumnDelta::new("age", json!(30))]);
        let zero = obj(json!({"n": 0.0}));
        let neg: Map<String, Value> = serde_json::from_str(r#"{"n": -0.0}"#).unwrap();
        assert!(extract_delta(Some(&zero), Some(&neg), ctx(None)).is_some());
        let int_one = obj(json!({"n": 1}));
        let float_one: Map<String, Value> = serde_json::from_str(r#"{"n": 1.0}"#).unwrap();
        assert!(extract_delta(Some(&int_one), Some(&float_one), ctx(None)).is_none());
    }
}

#[cfg(test)]
pub(crate) mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON, nested up to a few levels.
    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e15f64..1e15).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-zA-Z0-9_]{0,6}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// The same value with every object's keys in reverse insertion order.
    fn reorder(v: &Value) -> Value {
        match v {
            Value::Array(items) => Value::Array(items.iter().map(reorder).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .rev()
                    .map(|(k, v)| (k.clone(), reorder(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    proptest! {
        /// The deltaId does not depend on the key order of nested JSON objects.
        #[test]
        fn delta_id_ignores_nested_key_order(value in json_value(), hlc in any::<u64>()) {
            let a = delta_id("c", HlcTimestamp(hlc), "t", "r", &[ColumnDelta::new("v", value.clone())]);
            let b = delta_id("c", HlcTimestamp(hlc), "t", "r", &[ColumnDelta::new("v", reorder(&value))]);
            prop_assert_eq!(a, b);
        }

        /// The stable text is valid JSON denoting the same value (numbers as doubles).
        #[test]
        fn stable_text_parses_back(value in json_value()) {
            let text = crate::json::to_stable_string(&value);
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert!(crate::json::js_deep_equal(&back, &value));
        }
    }
}
