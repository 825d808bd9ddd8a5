//! Sync rules: the document, its validation, JWT claims, and compiled vectorised predicates.
//!
//! # The document
//!
//! The original's format, unchanged:
//!
//! ```json
//! {"version": 1, "buckets": [
//!   {"name": "user-todos", "tables": ["todos"],
//!    "filters": [{"column": "user_id", "op": "eq", "value": "jwt:sub"},
//!                {"column": "priority", "op": "gte", "value": "3"}]},
//!   {"name": "public-notes", "tables": ["notes"],
//!    "filters": [{"column": "visibility", "op": "eq", "value": "public"}]},
//!   {"name": "everything-shared", "tables": ["announcements"], "filters": []}]}
//! ```
//!
//! `version` is a positive integer; `buckets` an array (empty means *no filtering*); each bucket
//! has a non-empty, unique `name`, a `tables` array of non-empty names (empty means *every
//! table*) and a `filters` array of `{column, op, value}` with a non-empty `column`, an `op` in
//! `eq, neq, in, gt, lt, gte, lte` and a non-empty string `value`. `tables` and `filters` are
//! required, as in the original; keys the format does not define are ignored, as in the
//! original. [`SyncRules::from_json`] and [`SyncRules::from_value`] report *every* problem in one
//! error, each prefixed with where it is, e.g.
//! `buckets[1] ("user-todos").filters[0].op: unknown op "regex" (expected one of eq, neq, in, gt, lt, gte, lte)`.
//! [`SyncRules::check_against`] additionally checks filters against table schemas.
//!
//! # Values and claims
//!
//! A filter `value` is a literal, or `jwt:<name>`: the values of the client's claim `<name>`
//! (see [`Claims`]; a missing claim resolves to no values). A literal resolves to itself — one
//! value, even for `in` (`"a,b"` is the single value `a,b`).
//!
//! # Semantics
//!
//! A row of table `T` is visible to a client when it is live (see `_deleted` below) and
//! - the rules have no buckets at all (no filtering), or
//! - some bucket applies to `T` (its `tables` is empty or names `T`) and every one of that
//!   bucket's filters matches the row: filters are ANDed within a bucket, buckets are ORed.
//!
//! A table that no bucket applies to is therefore invisible whenever there is at least one bucket,
//! and a bucket with no filters shows every live row of the tables it applies to.
//!
//! A filter compares the row's cell in `column` with the resolved values:
//! - `eq` and `in` (identical): the cell equals any of the values;
//! - `neq`: the cell equals none of the values;
//! - `gt`, `lt`, `gte`, `lte`: the cell is greater than, less than, greater than or equal to,
//!   or less than or equal to the *first* value; further values are ignored.
//!
//! A filter never matches — whatever the op, `neq` included — when its values resolve to nothing
//! (a missing claim, or a claim with no values), when the cell is null, when the column is
//! missing from the batch, or when any value it uses cannot be parsed as the column's type (all
//! of them for `eq`, `in` and `neq`; only the first for the ordering ops). Failing closed keeps a
//! mistyped rule from showing rows; [`SyncRules::check_against`] reports mistyped literals.
//!
//! Comparisons are typed by the column's Arrow type (a dictionary column by its value type). Each
//! value is parsed once, when the filter is compiled, and must be the *whole* text:
//! - `Utf8`, `LargeUtf8`, `Utf8View` (LakeSync `string`, and `json`/`null` columns, which hold
//!   JSON text): the value as is; ordering is by Unicode code point (the byte order of UTF-8), so
//!   `"B" < "a"` and `"Z" < "é"`;
//! - `Int64` (`integer`): a decimal integer that fits in 64 bits, such as `42`, `-7` or `+3`
//!   (`3.5`, `1e3` and `3abc` do not parse); compared as integers, exactly;
//! - `Float64` (`number`): Rust's float syntax (`42`, `-0.5`, `1e3`, `inf`; not `NaN`, not
//!   `3abc`); compared as IEEE 754 numbers, so `0 == -0`. A NaN cell is not a number and never
//!   matches;
//! - `Boolean`: `true` or `false`; `false < true`;
//! - `Timestamp` (`timestamp`, any unit and time zone): an RFC 3339 instant such as
//!   `2024-05-01T12:00:00Z` or `2024-05-01T14:00:00.5+02:00`, compared as instants; an instant
//!   finer than the column's unit does not parse.
//!
//! Any other column type (lists, binaries, other numeric widths) is a schema error from
//! [`ClientFilter::matches`], not a silent mismatch. An all-null `Null` column matches nothing.
//!
//! **`_deleted`.** When the batch has a Boolean `_deleted` column, only rows where it is `false`
//! can be visible: a deleted row is visible to no one, and a null `_deleted` marks a row that
//! does not exist (as when looking up the state of a row before its first write). This holds
//! with no buckets too.
//!
//! # Deliberate deviations from the original
//!
//! The original's evaluator has defects we do not copy (`reference/lakesync-original.md` §2.6,
//! DESIGN §4):
//! 1. **Rules see rows, not deltas.** The original evaluates filters against the columns carried
//!    by a delta, so a DELETE (no columns) or an UPDATE that does not carry the filtered column
//!    is dropped for every bucket with a filter. Here rules are evaluated against the row's
//!    state; [`crate::filter`] routes each change by the row's visibility before and after it.
//! 2. **Typed comparisons.** The original compares `String(cell)` with the value: `eq`/`in`/`neq`
//!    by string equality, and `gt`/`lt`/`gte`/`lte` numerically when JavaScript's `parseFloat`
//!    accepts both sides (it accepts prefixes, so `"3abc"` is 3), else by `localeCompare` (ICU
//!    collation, which varies with the ICU version and puts `"a" < "B"`). Here the column's type
//!    decides, values are parsed once and whole, and text orders by code point, which is
//!    deterministic everywhere. An integer cell `42` still equals the claim `"42"`.
//! 3. **Null cells never match.** The original compared the text `"null"`, so `neq "x"` matched a
//!    null cell and `eq "null"` matched it too. Erring towards not showing a row is the safe
//!    side: it cannot leak.
//! 4. **A missing column matches nothing**, as in the original for deltas; here it means the
//!    batch does not have the column at all.
//!
//! # Evaluation
//!
//! [`ClientFilter::new`] compiles the rules for one client once: it resolves every `jwt:`
//! reference, parses each value for every type it could be compared with, and drops buckets that
//! can never match (a filter that resolves to no values). [`ClientFilter::matches`] then makes one
//! vectorised pass per (filter, value): Arrow comparison kernels against scalars
//! (`arrow_ord::cmp`), combined with bitwise kernels on boolean buffers, 64 rows per word. There
//! is no per-row interpreter.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Datum, Float64Array, Int64Array, LargeStringArray, RecordBatch,
    Scalar, StringArray, StringViewArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray,
};
use arrow_buffer::BooleanBuffer;
use arrow_schema::{ArrowError, DataType, TimeUnit};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::schema::{ColumnType, TableSchema};

/// The prefix that makes a filter value a reference to a JWT claim.
pub const JWT_PREFIX: &str = "jwt:";

/// JWT claims that are never available to sync rules (`sub` is then added back).
pub const STANDARD_CLAIMS: &[&str] = &["sub", "gw", "exp", "iat", "iss", "aud", "role"];

/// The column that marks a row as deleted (or, when null, absent) in row-state batches.
const DELETED: &str = crate::state::DELETED;

/// What `Error::Invalid` calls the input.
const WHAT: &str = "sync rules";

/// A filter's comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterOp {
    /// The cell equals any of the values.
    Eq,
    /// The cell equals none of the values.
    Neq,
    /// The cell equals any of the values (the same as [`FilterOp::Eq`]).
    In,
    /// The cell is greater than the first value.
    Gt,
    /// The cell is less than the first value.
    Lt,
    /// The cell is greater than or equal to the first value.
    Gte,
    /// The cell is less than or equal to the first value.
    Lte,
}

impl FilterOp {
    /// Every op, in the order error messages list them.
    pub const ALL: [FilterOp; 7] = [
        Self::Eq,
        Self::Neq,
        Self::In,
        Self::Gt,
        Self::Lt,
        Self::Gte,
        Self::Lte,
    ];

    /// The op's name in the document (`eq`, `neq`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Neq => "neq",
            Self::In => "in",
            Self::Gt => "gt",
            Self::Lt => "lt",
            Self::Gte => "gte",
            Self::Lte => "lte",
        }
    }

    /// The op named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Whether the op orders (`gt`, `lt`, `gte`, `lte`) and so uses only the first value.
    pub const fn is_ordering(self) -> bool {
        matches!(self, Self::Gt | Self::Lt | Self::Gte | Self::Lte)
    }
}

impl fmt::Display for FilterOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One filter of a bucket: `column op value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncRuleFilter {
    /// The column compared.
    pub column: String,
    /// How it is compared.
    pub op: FilterOp,
    /// A literal, or `jwt:<claim>`.
    pub value: String,
}

impl SyncRuleFilter {
    /// A filter.
    pub fn new(column: impl Into<String>, op: FilterOp, value: impl Into<String>) -> Self {
        Self {
            column: column.into(),
            op,
            value: value.into(),
        }
    }

    /// The claim the value refers to, when it is `jwt:<claim>`.
    pub fn claim(&self) -> Option<&str> {
        self.value.strip_prefix(JWT_PREFIX)
    }
}

/// A named set of rows: the rows of `tables` that match every filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BucketDefinition {
    /// The bucket's unique name.
    pub name: String,
    /// The tables the bucket applies to; empty means every table.
    pub tables: Vec<String>,
    /// The filters, all of which a row must match.
    pub filters: Vec<SyncRuleFilter>,
}

impl BucketDefinition {
    /// Whether the bucket applies to rows of `table`.
    pub fn applies_to(&self, table: &str) -> bool {
        self.tables.is_empty() || self.tables.iter().any(|t| t == table)
    }
}

/// A validated sync rules document.
///
/// Deserialising (from JSON, YAML, ...) validates it like [`SyncRules::from_value`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct SyncRules {
    /// The document version, a positive integer.
    pub version: u64,
    /// The buckets; none means no filtering.
    pub buckets: Vec<BucketDefinition>,
}

impl Default for SyncRules {
    /// Version 1 with no buckets: every row is visible.
    fn default() -> Self {
        Self {
            version: 1,
            buckets: Vec::new(),
        }
    }
}

impl TryFrom<Value> for SyncRules {
    type Error = Error;

    fn try_from(value: Value) -> Result<Self> {
        Self::from_value(&value)
    }
}

impl SyncRules {
    /// Parses and validates a document from JSON text, reporting every problem.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid(WHAT, format!("the document is not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Parses and validates a document from a JSON value, reporting every problem.
    pub fn from_value(value: &Value) -> Result<Self> {
        let mut problems = Vec::new();
        let rules = parse_document(value, &mut problems);
        match rules {
            Some(rules) if problems.is_empty() => Ok(rules),
            _ => Err(Error::invalid(WHAT, problems.join("; "))),
        }
    }

    /// Validates a document built in code, with the same checks and messages as
    /// [`SyncRules::from_value`].
    pub fn validate(&self) -> Result<()> {
        let value = serde_json::to_value(self)
            .map_err(|e| Error::internal(format!("sync rules do not serialise: {e}")))?;
        Self::from_value(&value).map(|_| ())
    }

    /// Whether the rules filter at all (they have at least one bucket).
    pub fn is_filtering(&self) -> bool {
        !self.buckets.is_empty()
    }

    /// Checks the filters against table schemas and reports every problem: a filter on a column
    /// that a table the bucket names does not have (for a bucket of every table: that no table
    /// has), and a literal value that does not parse as the type of the column it is compared
    /// with (see the module docs). Tables are matched by [`TableSchema::delta_table`] or
    /// [`TableSchema::table`]; a named table with no schema in `schemas` is not checked, and
    /// `jwt:` values can only be checked when a client connects.
    pub fn check_against(&self, schemas: &[TableSchema]) -> Result<()> {
        let mut problems = Vec::new();
        for (i, bucket) in self.buckets.iter().enumerate() {
            let at = bucket_label(i, Some(&bucket.name));
            let applicable: Vec<&TableSchema> = if bucket.tables.is_empty() {
                schemas.iter().collect()
            } else {
                schemas
                    .iter()
                    .filter(|s| {
                        bucket
                            .tables
                            .iter()
                            .any(|t| t.as_str() == s.delta_table() || t.as_str() == s.table)
                    })
                    .collect()
            };
            for (j, filter) in bucket.filters.iter().enumerate() {
                let at = format!("{at}.filters[{j}]");
                let with_column: Vec<(&TableSchema, ColumnType)> = applicable
                    .iter()
                    .filter_map(|s| s.column(&filter.column).map(|c| (*s, c.column_type)))
                    .collect();
                if bucket.tables.is_empty() {
                    if with_column.is_empty() && !schemas.is_empty() {
                        problems.push(format!(
                            "{at}.column: no table has a column {:?}",
                            filter.column
                        ));
                    }
                } else {
                    for schema in &applicable {
                        if schema.column(&filter.column).is_none() {
                            problems.push(format!(
                                "{at}.column: table {:?} has no column {:?}",
                                schema.table, filter.column
                            ));
                        }
                    }
                }
                if filter.claim().is_some() {
                    continue;
                }
                let literal = Literal::parse(&filter.value);
                for (schema, column_type) in with_column {
                    if !literal.fits(column_type) {
                        problems.push(format!(
                            "{at}.value: {:?} is not a valid {} for column {:?} of table {:?}{}",
                            filter.value,
                            column_type.name(),
                            filter.column,
                            schema.table,
                            expected_syntax(column_type),
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(WHAT, problems.join("; ")))
        }
    }
}

/// What a literal for `column_type` must look like, for error messages.
fn expected_syntax(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::Integer => " (expected a decimal integer that fits in 64 bits)",
        ColumnType::Number => " (expected a number such as 42, -0.5 or 1e3)",
        ColumnType::Boolean => " (expected true or false)",
        ColumnType::Timestamp => {
            " (expected an RFC 3339 instant such as 2024-05-01T12:00:00Z, at most microsecond precision)"
        }
        ColumnType::String | ColumnType::Json | ColumnType::Null => "",
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation: walk the JSON value, collecting every problem with its path.
// ---------------------------------------------------------------------------------------------

/// `buckets[i]`, with the bucket's name when it has one.
fn bucket_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if !name.is_empty() => format!("buckets[{index}] ({name:?})"),
        _ => format!("buckets[{index}]"),
    }
}

/// A short description of a JSON value for "found ..." in messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// The version as the original accepts it: a JSON number that is a positive integer (`1.0`
/// included, as JavaScript does not tell them apart), up to 2^53.
fn positive_integer(value: &Value) -> Option<u64> {
    const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;
    if let Some(n) = value.as_u64() {
        return (n >= 1).then_some(n);
    }
    let f = value.as_f64()?;
    // The range and fraction checks make the cast exact.
    ((1.0..=MAX_SAFE_INTEGER).contains(&f) && f.fract() == 0.0).then_some(f as u64)
}

/// A required non-empty string field of an object, or a problem at `at.key`.
fn required_string(
    object: &serde_json::Map<String, Value>,
    key: &str,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    match object.get(key) {
        None => {
            problems.push(format!("{at}.{key}: missing (expected a non-empty string)"));
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            problems.push(format!("{at}.{key}: must not be empty"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(format!(
                "{at}.{key}: must be a non-empty string, found {}",
                describe(other)
            ));
            None
        }
    }
}

/// The path of field `key` of the object at `at` (the top level when `at` is empty).
fn field(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// A required array field of an object, or a problem at `at.key`.
fn required_array<'v>(
    object: &'v serde_json::Map<String, Value>,
    key: &str,
    expected: &str,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<&'v Vec<Value>> {
    match object.get(key) {
        None => {
            problems.push(format!("{}: missing (expected {expected})", field(at, key)));
            None
        }
        Some(Value::Array(items)) => Some(items),
        Some(other) => {
            problems.push(format!(
                "{}: must be {expected}, found {}",
                field(at, key),
                describe(other)
            ));
            None
        }
    }
}

fn parse_document(doc: &Value, problems: &mut Vec<String>) -> Option<SyncRules> {
    let Some(object) = doc.as_object() else {
        problems.push(format!(
            "the document must be a JSON object with \"version\" and \"buckets\", found {}",
            describe(doc)
        ));
        return None;
    };
    let version = match object.get("version") {
        None => {
            problems.push("version: missing (expected a positive integer)".to_string());
            None
        }
        Some(v) => {
            let n = positive_integer(v);
            if n.is_none() {
                problems.push(format!(
                    "version: must be a positive integer, found {}",
                    describe(v)
                ));
            }
            n
        }
    };
    let items = required_array(
        object,
        "buckets",
        "an array of buckets ([] means no filtering)",
        "",
        problems,
    );
    let mut buckets = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, item) in items.into_iter().flatten().enumerate() {
        if let Some(bucket) = parse_bucket(i, item, &mut seen, problems) {
            buckets.push(bucket);
        }
    }
    Some(SyncRules {
        version: version?,
        buckets,
    })
}

fn parse_bucket(
    index: usize,
    item: &Value,
    seen: &mut HashMap<String, usize>,
    problems: &mut Vec<String>,
) -> Option<BucketDefinition> {
    let Some(object) = item.as_object() else {
        problems.push(format!(
            "buckets[{index}]: must be an object with \"name\", \"tables\" and \"filters\", found {}",
            describe(item)
        ));
        return None;
    };
    let name = required_string(object, "name", &format!("buckets[{index}]"), problems);
    let at = bucket_label(index, name.as_deref());
    if let Some(name) = &name {
        if let Some(first) = seen.get(name) {
            problems.push(format!(
                "{at}.name: duplicate bucket name (already used by buckets[{first}])"
            ));
        } else {
            seen.insert(name.clone(), index);
        }
    }

    let mut tables = Vec::new();
    let mut ok = true;
    match required_array(
        object,
        "tables",
        "an array of table names ([] means every table)",
        &at,
        problems,
    ) {
        Some(items) => {
            for (k, table) in items.iter().enumerate() {
                match table {
                    Value::String(s) if !s.is_empty() => tables.push(s.clone()),
                    Value::String(_) => {
                        problems.push(format!("{at}.tables[{k}]: table name must not be empty"));
                        ok = false;
                    }
                    other => {
                        problems.push(format!(
                            "{at}.tables[{k}]: must be a non-empty table name, found {}",
                            describe(other)
                        ));
                        ok = false;
                    }
                }
            }
        }
        None => ok = false,
    }

    let mut filters = Vec::new();
    match required_array(
        object,
        "filters",
        "an array of filters ([] means every row)",
        &at,
        problems,
    ) {
        Some(items) => {
            for (j, filter) in items.iter().enumerate() {
                match parse_filter(&format!("{at}.filters[{j}]"), filter, problems) {
                    Some(f) => filters.push(f),
                    None => ok = false,
                }
            }
        }
        None => ok = false,
    }

    Some(BucketDefinition {
        name: name?,
        tables,
        filters,
    })
    .filter(|_| ok)
}

fn parse_filter(at: &str, item: &Value, problems: &mut Vec<String>) -> Option<SyncRuleFilter> {
    let Some(object) = item.as_object() else {
        problems.push(format!(
            "{at}: must be an object with \"column\", \"op\" and \"value\", found {}",
            describe(item)
        ));
        return None;
    };
    let column = required_string(object, "column", at, problems);
    let expected = FilterOp::ALL.map(FilterOp::name).join(", ");
    let op = match object.get("op") {
        None => {
            problems.push(format!("{at}.op: missing (expected one of {expected})"));
            None
        }
        Some(Value::String(name)) => {
            let op = FilterOp::from_name(name);
            if op.is_none() {
                problems.push(format!(
                    "{at}.op: unknown op {name:?} (expected one of {expected})"
                ));
            }
            op
        }
        Some(other) => {
            problems.push(format!(
                "{at}.op: must be one of {expected}, found {}",
                describe(other)
            ));
            None
        }
    };
    let value = required_string(object, "value", at, problems);
    Some(SyncRuleFilter {
        column: column?,
        op: op?,
        value: value?,
    })
}

// ---------------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------------

/// The JWT claims sync rules can refer to with `jwt:<name>`: each a list of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    values: BTreeMap<String, Vec<String>>,
}

impl Claims {
    /// No claims.
    pub fn new() -> Self {
        Self::default()
    }

    /// The claims of a verified JWT payload, as the original extracts them: every claim that is
    /// a string (one value) or an array of strings (its values), except the standard claims
    /// [`STANDARD_CLAIMS`]; then `sub`, always, when it is a string. Other claims (numbers,
    /// booleans, objects, arrays with a non-string element) are ignored, as is a payload that is
    /// not an object.
    pub fn from_jwt_payload(payload: &Value) -> Self {
        let mut claims = Self::new();
        let Some(object) = payload.as_object() else {
            return claims;
        };
        for (name, value) in object {
            if STANDARD_CLAIMS.contains(&name.as_str()) {
                continue;
            }
            if let Some(values) = string_values(value) {
                claims.values.insert(name.clone(), values);
            }
        }
        if let Some(Value::String(sub)) = object.get("sub") {
            claims.values.insert("sub".to_string(), vec![sub.clone()]);
        }
        claims
    }

    /// Sets claim `name` to `values` (builder style).
    pub fn with<I, S>(mut self, name: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.insert(name, values);
        self
    }

    /// Sets claim `name` to `values`.
    pub fn insert<I, S>(&mut self, name: impl Into<String>, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.values
            .insert(name.into(), values.into_iter().map(Into::into).collect());
    }

    /// The values of claim `name`; none when the client has no such claim.
    pub fn get(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    /// The values a filter value resolves to: the claim's values for `jwt:<name>` (none when the
    /// claim is missing), else the literal itself.
    pub fn resolve<'a>(&'a self, value: &'a str) -> Vec<&'a str> {
        match value.strip_prefix(JWT_PREFIX) {
            Some(name) => self.get(name).iter().map(String::as_str).collect(),
            None => vec![value],
        }
    }

    /// The claims by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// A string claim as one value, an array of strings as its values; anything else is not a claim
/// sync rules can use.
fn string_values(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// The names of the buckets whose every `jwt:` filter resolves to at least one value for these
/// claims, in document order (the original's `resolveClientBuckets`). Literal filters do not
/// count: this says which buckets a client *can* see rows of, not which rows.
pub fn resolve_client_buckets<'r>(rules: &'r SyncRules, claims: &Claims) -> Vec<&'r str> {
    rules
        .buckets
        .iter()
        .filter(|bucket| {
            bucket
                .filters
                .iter()
                .filter_map(SyncRuleFilter::claim)
                .all(|name| !claims.get(name).is_empty())
        })
        .map(|bucket| bucket.name.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Compiled filters
// ---------------------------------------------------------------------------------------------

/// A filter value parsed, once, for every column type it could be compared with.
#[derive(Clone, Debug, PartialEq)]
struct Literal {
    text: String,
    integer: Option<i64>,
    float: Option<f64>,
    boolean: Option<bool>,
    /// Seconds since the Unix epoch and nanoseconds within the second.
    instant: Option<(i64, u32)>,
}

impl Literal {
    fn parse(text: &str) -> Self {
        let instant = chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| (t.timestamp(), t.timestamp_subsec_nanos()));
        Self {
            text: text.to_string(),
            integer: text.parse().ok(),
            float: text.parse::<f64>().ok().filter(|f| !f.is_nan()),
            boolean: match text {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            instant,
        }
    }

    /// The instant in `unit`s since the epoch, when it is exactly representable.
    fn instant_in(&self, unit: TimeUnit) -> Option<i64> {
        let (seconds, nanos) = self.instant?;
        let (per_second, nanos_per_unit) = match unit {
            TimeUnit::Second => (1, 1_000_000_000),
            TimeUnit::Millisecond => (1_000, 1_000_000),
            TimeUnit::Microsecond => (1_000_000, 1_000),
            TimeUnit::Nanosecond => (1_000_000_000, 1),
        };
        if nanos % nanos_per_unit != 0 {
            return None;
        }
        seconds
            .checked_mul(per_second)?
            .checked_add(i64::from(nanos / nanos_per_unit))
    }

    /// Whether the literal parses as a value of `column_type` (the column's Arrow type).
    fn fits(&self, column_type: ColumnType) -> bool {
        match column_type {
            ColumnType::Integer => self.integer.is_some(),
            ColumnType::Number => self.float.is_some(),
            ColumnType::Boolean => self.boolean.is_some(),
            ColumnType::Timestamp => self.instant_in(TimeUnit::Microsecond).is_some(),
            ColumnType::String | ColumnType::Json | ColumnType::Null => true,
        }
    }
}

/// A filter with its values resolved for one client.
#[derive(Clone, Debug, PartialEq)]
struct CompiledFilter {
    column: String,
    op: FilterOp,
    /// Never empty; exactly one for ordering ops.
    values: Vec<Literal>,
}

/// A bucket compiled for one client.
#[derive(Clone, Debug, PartialEq)]
struct CompiledBucket {
    name: String,
    tables: Vec<String>,
    filters: Vec<CompiledFilter>,
}

impl CompiledBucket {
    fn applies_to(&self, table: &str) -> bool {
        self.tables.is_empty() || self.tables.iter().any(|t| t == table)
    }
}

/// Sync rules compiled for one client: decides, a batch of rows at a time, which rows the client
/// may see. Build it once per client (or whenever its claims or the rules change).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientFilter {
    /// False when the rules have no buckets: every live row is visible.
    filtering: bool,
    /// The buckets that can match for this client.
    buckets: Vec<CompiledBucket>,
}

impl ClientFilter {
    /// Compiles `rules` for a client with `claims`: resolves every `jwt:` reference and parses
    /// every value. Buckets with a filter that resolves to no values are dropped, as they can
    /// never match.
    pub fn new(rules: &SyncRules, claims: &Claims) -> Self {
        let buckets = rules
            .buckets
            .iter()
            .filter_map(|bucket| {
                let filters = bucket
                    .filters
                    .iter()
                    .map(|filter| {
                        let mut resolved = claims.resolve(&filter.value);
                        if filter.op.is_ordering() {
                            resolved.truncate(1);
                        }
                        (!resolved.is_empty()).then(|| CompiledFilter {
                            column: filter.column.clone(),
                            op: filter.op,
                            values: resolved.into_iter().map(Literal::parse).collect(),
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(CompiledBucket {
                    name: bucket.name.clone(),
                    tables: bucket.tables.clone(),
                    filters,
                })
            })
            .collect();
        Self {
            filtering: rules.is_filtering(),
            buckets,
        }
    }

    /// A filter that shows every live row (the rules with no buckets).
    pub fn unfiltered() -> Self {
        Self {
            filtering: false,
            buckets: Vec::new(),
        }
    }

    /// Whether some rows of `table` may be visible to this client at all; when false,
    /// [`ClientFilter::matches`] is all false for the table and callers may skip it.
    pub fn sees_table(&self, table: &str) -> bool {
        !self.filtering || self.buckets.iter().any(|b| b.applies_to(table))
    }

    /// The names of the buckets that can match rows for this client.
    pub fn bucket_names(&self) -> impl Iterator<Item = &str> {
        self.buckets.iter().map(|b| b.name.as_str())
    }

    /// One boolean per row of `rows` (rows of `table`, with its data columns by name and
    /// optionally `_deleted`): whether the client may see the row. Never null. See the module
    /// docs for the exact semantics.
    ///
    /// Fails with a schema error when a filter that applies to `table` names a column whose Arrow
    /// type sync rules cannot compare, or when `_deleted` is not Boolean.
    pub fn matches(&self, table: &str, rows: &RecordBatch) -> Result<BooleanArray> {
        let len = rows.num_rows();
        let visible = if self.filtering {
            let mut any = BooleanBuffer::new_unset(len);
            for bucket in self.buckets.iter().filter(|b| b.applies_to(table)) {
                any = &any | &bucket_matches(bucket, table, rows)?;
                if any.count_set_bits() == len {
                    break;
                }
            }
            any
        } else {
            BooleanBuffer::new_set(len)
        };
        let visible = match live_rows(table, rows)? {
            Some(live) => &visible & &live,
            None => visible,
        };
        Ok(BooleanArray::new(visible, None))
    }
}

/// The rows where `_deleted` is false, when the batch has `_deleted`.
fn live_rows(table: &str, rows: &RecordBatch) -> Result<Option<BooleanBuffer>> {
    let Some(deleted) = rows.column_by_name(DELETED) else {
        return Ok(None);
    };
    let Some(deleted) = deleted.as_any().downcast_ref::<BooleanArray>() else {
        return Err(Error::schema(format!(
            "rows of table {table:?}: column {DELETED} must be Boolean, found {}",
            deleted.data_type()
        )));
    };
    let not_deleted = !deleted.values();
    Ok(Some(match deleted.nulls() {
        Some(nulls) => &not_deleted & nulls.inner(),
        None => not_deleted,
    }))
}

/// The rows matching every filter of `bucket`.
fn bucket_matches(
    bucket: &CompiledBucket,
    table: &str,
    rows: &RecordBatch,
) -> Result<BooleanBuffer> {
    let len = rows.num_rows();
    let mut all = BooleanBuffer::new_set(len);
    for filter in &bucket.filters {
        all = &all & &filter_matches(filter, table, rows)?;
        if all.count_set_bits() == 0 {
            break;
        }
    }
    Ok(all)
}

/// How a column's values compare: the Arrow type of its values (a dictionary's value type).
#[derive(Clone, Debug)]
enum ValueKind {
    Utf8,
    LargeUtf8,
    Utf8View,
    Int64,
    Float64,
    Boolean,
    Timestamp(TimeUnit, Option<Arc<str>>),
    Null,
}

impl ValueKind {
    fn of(data_type: &DataType) -> Option<Self> {
        let leaf = match data_type {
            DataType::Dictionary(_, values) => values.as_ref(),
            other => other,
        };
        Some(match leaf {
            DataType::Utf8 => Self::Utf8,
            DataType::LargeUtf8 => Self::LargeUtf8,
            DataType::Utf8View => Self::Utf8View,
            DataType::Int64 => Self::Int64,
            DataType::Float64 => Self::Float64,
            DataType::Boolean => Self::Boolean,
            DataType::Timestamp(unit, tz) => Self::Timestamp(*unit, tz.clone()),
            DataType::Null => Self::Null,
            _ => return None,
        })
    }

    /// The one-element arrays a column of this kind is compared with for `literal` under `op`,
    /// or `None` when the literal does not parse as this kind. A float zero is special: Arrow
    /// orders floats by IEEE 754 `totalOrder`, where `-0 < +0`, so equality checks both zeros
    /// and each ordering op picks the zero that gives IEEE's `-0 == +0` answer.
    fn operands(&self, literal: &Literal, op: FilterOp) -> Option<Vec<ArrayRef>> {
        let one = |array: ArrayRef| Some(vec![array]);
        match self {
            Self::Utf8 => one(Arc::new(StringArray::from(vec![literal.text.as_str()]))),
            Self::LargeUtf8 => one(Arc::new(LargeStringArray::from(vec![
                literal.text.as_str(),
            ]))),
            Self::Utf8View => one(Arc::new(StringViewArray::from(vec![literal.text.as_str()]))),
            Self::Int64 => one(Arc::new(Int64Array::from(vec![literal.integer?]))),
            Self::Boolean => one(Arc::new(BooleanArray::from(vec![literal.boolean?]))),
            Self::Float64 => {
                let v = literal.float?;
                let zeros: &[f64] = match op {
                    _ if v != 0.0 => &[v],
                    FilterOp::Eq | FilterOp::In | FilterOp::Neq => &[0.0, -0.0],
                    FilterOp::Gt | FilterOp::Lte => &[0.0],
                    FilterOp::Lt | FilterOp::Gte => &[-0.0],
                };
                Some(
                    zeros
                        .iter()
                        .map(|z| Arc::new(Float64Array::from(vec![*z])) as ArrayRef)
                        .collect(),
                )
            }
            Self::Timestamp(unit, tz) => {
                let v = literal.instant_in(*unit)?;
                let tz = tz.clone();
                one(match unit {
                    TimeUnit::Second => {
                        Arc::new(TimestampSecondArray::from(vec![v]).with_timezone_opt(tz))
                    }
                    TimeUnit::Millisecond => {
                        Arc::new(TimestampMillisecondArray::from(vec![v]).with_timezone_opt(tz))
                    }
                    TimeUnit::Microsecond => {
                        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone_opt(tz))
                    }
                    TimeUnit::Nanosecond => {
                        Arc::new(TimestampNanosecondArray::from(vec![v]).with_timezone_opt(tz))
                    }
                })
            }
            Self::Null => None,
        }
    }
}

/// A comparison result with null (a null cell) read as false.
fn definite(result: &BooleanArray) -> BooleanBuffer {
    match result.nulls() {
        Some(nulls) => result.values() & nulls.inner(),
        None => result.values().clone(),
    }
}

/// An `arrow_ord::cmp` comparison kernel.
type CmpKernel = fn(&dyn Datum, &dyn Datum) -> std::result::Result<BooleanArray, ArrowError>;

/// The rows matching one filter.
fn filter_matches(
    filter: &CompiledFilter,
    table: &str,
    rows: &RecordBatch,
) -> Result<BooleanBuffer> {
    use arrow_ord::cmp;

    let len = rows.num_rows();
    let none = || Ok(BooleanBuffer::new_unset(len));
    let Some(column) = rows.column_by_name(&filter.column) else {
        return none();
    };
    let Some(kind) = ValueKind::of(column.data_type()) else {
        return Err(Error::schema(format!(
            "rows of table {table:?}: sync rules cannot compare column {:?} of Arrow type {}",
            filter.column,
            column.data_type()
        )));
    };
    let mut operands = Vec::with_capacity(filter.values.len());
    for literal in &filter.values {
        match kind.operands(literal, filter.op) {
            Some(arrays) => operands.extend(arrays.into_iter().map(Scalar::new)),
            // A value that is not of the column's type: the filter matches nothing.
            None => return none(),
        }
    }

    // Rows whose cell is a value: not null and, for floats, not NaN.
    let valid = || -> Result<BooleanBuffer> {
        let not_null = match column.logical_nulls() {
            Some(nulls) => nulls.into_inner(),
            None => BooleanBuffer::new_set(len),
        };
        if !matches!(kind, ValueKind::Float64) {
            return Ok(not_null);
        }
        // In totalOrder every NaN lies outside [-inf, +inf].
        let low = Scalar::new(Float64Array::from(vec![f64::NEG_INFINITY]));
        let high = Scalar::new(Float64Array::from(vec![f64::INFINITY]));
        let above_low = definite(&cmp::gt_eq(column, &low)?);
        let below_high = definite(&cmp::lt_eq(column, &high)?);
        Ok(&(&not_null & &above_low) & &below_high)
    };
    let equals_any = || -> Result<BooleanBuffer> {
        let mut any = BooleanBuffer::new_unset(len);
        for operand in &operands {
            any = &any | &definite(&cmp::eq(column, operand)?);
        }
        Ok(any)
    };
    let ordered = |compare: CmpKernel| -> Result<BooleanBuffer> {
        let mut all = valid()?;
        for operand in &operands {
            all = &all & &definite(&compare(column, operand)?);
        }
        Ok(all)
    };
    match filter.op {
        // NaN never equals a literal (NaN literals do not parse), so no NaN mask is needed.
        FilterOp::Eq | FilterOp::In => equals_any(),
        FilterOp::Neq => {
            let equal = equals_any()?;
            Ok(&valid()? & &!&equal)
        }
        FilterOp::Gt => ordered(cmp::gt),
        FilterOp::Lt => ordered(cmp::lt),
        FilterOp::Gte => ordered(cmp::gt_eq),
        FilterOp::Lte => ordered(cmp::lt_eq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{DictionaryArray, Int32Array, ListArray, types::Int32Type};
    use arrow_schema::{Field, Schema};
    use proptest::prelude::*;
    use serde_json::json;

    use crate::schema::ColumnDef;

    /// A batch from named columns.
    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn ints(values: &[Option<i64>]) -> ArrayRef {
        Arc::new(Int64Array::from(values.to_vec()))
    }

    fn floats(values: &[Option<f64>]) -> ArrayRef {
        Arc::new(Float64Array::from(values.to_vec()))
    }

    fn bools(values: &[Option<bool>]) -> ArrayRef {
        Arc::new(BooleanArray::from(values.to_vec()))
    }

    fn rules(value: Value) -> SyncRules {
        SyncRules::from_value(&value).unwrap()
    }

    /// Rules with one bucket over `tables` with the given filters.
    fn one_bucket(tables: &[&str], filters: &[(&str, &str, &str)]) -> SyncRules {
        rules(json!({"version": 1, "buckets": [{
            "name": "b",
            "tables": tables,
            "filters": filters.iter().map(|(c, op, v)| json!({"column": c, "op": op, "value": v})).collect::<Vec<_>>(),
        }]}))
    }

    fn visible(filter: &ClientFilter, table: &str, rows: &RecordBatch) -> Vec<bool> {
        let result = filter.matches(table, rows).unwrap();
        assert_eq!(result.null_count(), 0);
        result.iter().map(|b| b.unwrap()).collect()
    }

    /// Which rows of a one-column batch one filter matches, with `claims`.
    fn check(column: ArrayRef, op: &str, value: &str, claims: &Claims) -> Vec<bool> {
        let rows = batch(vec![("c", column)]);
        let filter = ClientFilter::new(&one_bucket(&["t"], &[("c", op, value)]), claims);
        visible(&filter, "t", &rows)
    }

    fn error_text(value: Value) -> String {
        let err = SyncRules::from_value(&value).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::User);
        err.to_string()
    }

    // -- §4.5: claims ---------------------------------------------------------------------------

    #[test]
    fn resolve_filter_values() {
        let none = Claims::new();
        assert_eq!(none.resolve("tenant-1"), ["tenant-1"]);
        let claims = Claims::new()
            .with("sub", ["user-42"])
            .with("roles", ["admin", "editor"]);
        assert_eq!(claims.resolve("jwt:sub"), ["user-42"]);
        assert_eq!(claims.resolve("jwt:roles"), ["admin", "editor"]);
        assert!(claims.resolve("jwt:missing").is_empty());
        assert!(claims.get("missing").is_empty());
    }

    #[test]
    fn claims_from_a_jwt_payload() {
        let claims = Claims::from_jwt_payload(&json!({
            "sub": "u1", "gw": "gw1", "exp": 1_700_000_000, "iat": 1, "iss": "me", "aud": "you",
            "role": "admin", "org_id": "42", "orgs": ["a", "b"], "empty": [], "mixed": ["a", 1],
            "n": 7, "flag": true, "obj": {"k": "v"}, "nothing": null
        }));
        let names: Vec<&str> = claims.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["empty", "org_id", "orgs", "sub"]);
        assert_eq!(claims.get("sub"), ["u1"]);
        assert_eq!(claims.get("org_id"), ["42"]);
        assert_eq!(claims.get("orgs"), ["a", "b"]);
        assert!(claims.get("role").is_empty() && claims.get("gw").is_empty());
        assert!(
            Claims::from_jwt_payload(&json!("not an object"))
                .iter()
                .next()
                .is_none()
        );
        // A non-string `sub` is not a claim.
        assert!(
            Claims::from_jwt_payload(&json!({"sub": 5}))
                .get("sub")
                .is_empty()
        );
    }

    #[test]
    fn client_buckets() {
        let rules = rules(json!({"version": 1, "buckets": [
            {"name": "user-data", "tables": [], "filters": [{"column": "user_id", "op": "eq", "value": "jwt:sub"}]},
            {"name": "public", "tables": [], "filters": []},
            {"name": "org-data", "tables": [], "filters": [{"column": "org_id", "op": "eq", "value": "jwt:org_id"}]},
        ]}));
        let sub = Claims::new().with("sub", ["user-1"]);
        assert_eq!(
            resolve_client_buckets(&rules, &sub),
            ["user-data", "public"]
        );
        let both = sub.clone().with("org_id", ["org-a"]);
        assert_eq!(
            resolve_client_buckets(&rules, &both),
            ["user-data", "public", "org-data"]
        );
        assert_eq!(resolve_client_buckets(&rules, &Claims::new()), ["public"]);
        // An empty array claim resolves to nothing.
        let empty = Claims::new().with("sub", Vec::<String>::new());
        assert_eq!(resolve_client_buckets(&rules, &empty), ["public"]);
        // The compiled filter keeps exactly the buckets that can match.
        let compiled = ClientFilter::new(&rules, &sub);
        let compiled: Vec<&str> = compiled.bucket_names().collect();
        assert_eq!(compiled, ["user-data", "public"]);
    }

    // -- §4.5: evaluation -----------------------------------------------------------------------

    #[test]
    fn eq_in_and_multiple_filters() {
        let sub = Claims::new().with("sub", ["user-42"]);
        let rows = strings(&[Some("user-42"), Some("user-99"), None]);
        assert_eq!(
            check(rows.clone(), "eq", "jwt:sub", &sub),
            [true, false, false]
        );
        assert_eq!(
            check(rows.clone(), "eq", "jwt:sub", &Claims::new()),
            [false; 3]
        );
        let orgs = Claims::new().with("orgs", ["org-1", "org-2", "org-3"]);
        let col = strings(&[Some("org-2"), Some("org-4")]);
        assert_eq!(check(col.clone(), "in", "jwt:orgs", &orgs), [true, false]);
        assert_eq!(check(col, "eq", "jwt:orgs", &orgs), [true, false]);
        assert_eq!(
            check(
                strings(&[Some("public"), Some("private")]),
                "eq",
                "public",
                &Claims::new()
            ),
            [true, false]
        );

        // Filters within a bucket are ANDed.
        let rules = one_bucket(
            &["todos"],
            &[("user_id", "eq", "jwt:sub"), ("org_id", "eq", "jwt:org_id")],
        );
        let claims = Claims::new()
            .with("sub", ["user-1"])
            .with("org_id", ["org-a"]);
        let rows = batch(vec![
            (
                "user_id",
                strings(&[Some("user-1"), Some("user-1"), Some("user-2")]),
            ),
            (
                "org_id",
                strings(&[Some("org-a"), Some("org-b"), Some("org-a")]),
            ),
        ]);
        assert_eq!(
            visible(&ClientFilter::new(&rules, &claims), "todos", &rows),
            [true, false, false]
        );
    }

    #[test]
    fn typed_compare_replaces_string_coercion() {
        // The original compared String(42) == "42". We compare by the column's type instead: the
        // claim "42" is parsed once as the integer (or float) 42 and compared with the cell.
        let claims = Claims::new().with("org_id", ["42"]);
        assert_eq!(
            check(ints(&[Some(42), Some(43)]), "eq", "jwt:org_id", &claims),
            [true, false]
        );
        assert_eq!(
            check(
                floats(&[Some(42.0), Some(42.5)]),
                "eq",
                "jwt:org_id",
                &claims
            ),
            [true, false]
        );
        assert_eq!(
            check(
                strings(&[Some("42"), Some("042")]),
                "eq",
                "jwt:org_id",
                &claims
            ),
            [true, false]
        );
        // "042" is the integer 42, but not the string "42".
        assert_eq!(check(ints(&[Some(42)]), "eq", "042", &claims), [true]);
        // parseFloat accepted prefixes ("3abc" was 3); a value is parsed whole here, and one that
        // does not parse as the column's type makes the filter match nothing, whatever the op.
        for op in ["eq", "neq", "gt", "gte", "lt", "lte"] {
            assert_eq!(
                check(ints(&[Some(3), Some(4)]), op, "3abc", &claims),
                [false, false],
                "{op}"
            );
            assert_eq!(
                check(floats(&[Some(3.0)]), op, "3abc", &claims),
                [false],
                "{op}"
            );
        }
        // Integer columns take integers only; float columns take any number.
        assert_eq!(
            check(ints(&[Some(3), Some(4)]), "gt", "3.5", &claims),
            [false, false]
        );
        assert_eq!(
            check(floats(&[Some(3.0), Some(4.0)]), "gt", "3.5", &claims),
            [false, true]
        );
        assert_eq!(check(floats(&[Some(1000.0)]), "eq", "1e3", &claims), [true]);
        assert_eq!(
            check(floats(&[Some(f64::NAN)]), "neq", "NaN", &claims),
            [false]
        );
    }

    #[test]
    fn string_ordering_is_by_code_point() {
        let none = Claims::new();
        // §4.5 vectors that code point order and ICU collation agree on.
        assert_eq!(
            check(strings(&[Some("c"), Some("a")]), "gt", "b", &none),
            [true, false]
        );
        assert_eq!(
            check(strings(&[Some("xyz"), Some("aaa")]), "gt", "abc", &none),
            [true, false]
        );
        assert_eq!(check(strings(&[Some("hello")]), "gt", "50", &none), [true]);
        // Where they disagree: ICU puts "a" < "B"; code points put "B" (U+0042) < "a" (U+0061).
        assert_eq!(check(strings(&[Some("B")]), "lt", "a", &none), [true]);
        assert_eq!(check(strings(&[Some("a")]), "gt", "B", &none), [true]);
        assert_eq!(
            check(strings(&[Some("é"), Some("z")]), "gt", "z", &none),
            [true, false]
        );
        let col = strings(&[Some("a"), Some("b"), Some("c"), None]);
        assert_eq!(
            check(col.clone(), "gte", "b", &none),
            [false, true, true, false]
        );
        assert_eq!(
            check(col.clone(), "lt", "b", &none),
            [true, false, false, false]
        );
        assert_eq!(check(col, "lte", "b", &none), [true, true, false, false]);
        // Numbers in a text column compare as text.
        assert_eq!(check(strings(&[Some("10")]), "gt", "9", &none), [false]);
        // Only the first resolved value counts for ordering ops.
        let claims = Claims::new().with("v", ["b", "z"]);
        assert_eq!(check(strings(&[Some("c")]), "gt", "jwt:v", &claims), [true]);
    }

    #[test]
    fn numeric_ordering() {
        let none = Claims::new();
        let col = ints(&[Some(-5), Some(3), Some(10), Some(i64::MAX), None]);
        assert_eq!(
            check(col.clone(), "gt", "3", &none),
            [false, false, true, true, false]
        );
        assert_eq!(
            check(col.clone(), "gte", "3", &none),
            [false, true, true, true, false]
        );
        assert_eq!(
            check(col.clone(), "lt", "3", &none),
            [true, false, false, false, false]
        );
        assert_eq!(
            check(col.clone(), "lte", "-5", &none),
            [true, false, false, false, false]
        );
        // Exact beyond 2^53: a float compare would call these equal.
        let big = ints(&[Some(9_007_199_254_740_993), Some(9_007_199_254_740_992)]);
        assert_eq!(check(big, "eq", "9007199254740993", &none), [true, false]);
        // Out of 64-bit range does not parse.
        assert_eq!(check(col, "lt", "9223372036854775808", &none), [false; 5]);

        let col = floats(&[
            Some(-1.5),
            Some(-0.0),
            Some(0.0),
            Some(2.25),
            Some(f64::NAN),
            None,
        ]);
        assert_eq!(
            check(col.clone(), "gt", "0", &none),
            [false, false, false, true, false, false]
        );
        assert_eq!(
            check(col.clone(), "gte", "0", &none),
            [false, true, true, true, false, false]
        );
        assert_eq!(
            check(col.clone(), "lt", "-0", &none),
            [true, false, false, false, false, false]
        );
        assert_eq!(
            check(col.clone(), "lte", "0", &none),
            [true, true, true, false, false, false]
        );
        assert_eq!(
            check(col.clone(), "eq", "-0", &none),
            [false, true, true, false, false, false]
        );
        assert_eq!(
            check(col.clone(), "neq", "0", &none),
            [true, false, false, true, false, false]
        );
        assert_eq!(
            check(col.clone(), "gt", "-inf", &none),
            [true, true, true, true, false, false]
        );
        assert_eq!(
            check(col, "lte", "2.25", &none),
            [true, true, true, true, false, false]
        );
    }

    #[test]
    fn neq_with_and_without_claims() {
        let col = strings(&[Some("a"), Some("b"), Some("c"), None]);
        let claims = Claims::new().with("hidden", ["a", "b"]);
        assert_eq!(
            check(col.clone(), "neq", "jwt:hidden", &claims),
            [false, false, true, false]
        );
        assert_eq!(
            check(col.clone(), "neq", "a", &claims),
            [false, true, true, false]
        );
        // An empty resolved list never matches, neq included.
        assert_eq!(
            check(col.clone(), "neq", "jwt:missing", &claims),
            [false; 4]
        );
        let empty = Claims::new().with("hidden", Vec::<String>::new());
        assert_eq!(check(col, "neq", "jwt:hidden", &empty), [false; 4]);
    }

    #[test]
    fn null_cells_never_match() {
        // The original compared the text "null": `eq "null"` and `neq "x"` matched a null cell.
        let none = Claims::new();
        for op in ["eq", "neq", "in", "gt", "lt", "gte", "lte"] {
            assert_eq!(check(strings(&[None]), op, "null", &none), [false], "{op}");
            assert_eq!(check(strings(&[None]), op, "x", &none), [false], "{op}");
            assert_eq!(check(ints(&[None]), op, "1", &none), [false], "{op}");
            assert_eq!(check(floats(&[None]), op, "1", &none), [false], "{op}");
        }
        let all_null: ArrayRef = Arc::new(arrow_array::NullArray::new(2));
        assert_eq!(check(all_null, "neq", "x", &none), [false, false]);
    }

    #[test]
    fn missing_column_matches_nothing() {
        let rows = batch(vec![("other", strings(&[Some("x"), Some("y")]))]);
        for op in ["eq", "neq", "gt"] {
            let filter = ClientFilter::new(&one_bucket(&["t"], &[("c", op, "x")]), &Claims::new());
            assert_eq!(visible(&filter, "t", &rows), [false, false], "{op}");
        }
    }

    #[test]
    fn other_column_types() {
        let none = Claims::new();
        let b = bools(&[Some(true), Some(false), None]);
        assert_eq!(check(b.clone(), "eq", "true", &none), [true, false, false]);
        assert_eq!(check(b.clone(), "neq", "true", &none), [false, true, false]);
        assert_eq!(check(b.clone(), "gt", "false", &none), [true, false, false]);
        assert_eq!(check(b, "eq", "TRUE", &none), [false, false, false]);

        let micros = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_micros()
        };
        let ts: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![
                Some(micros("2024-05-01T12:00:00Z")),
                Some(micros("2024-05-01T12:00:00.000001Z")),
                None,
            ])
            .with_timezone("UTC"),
        );
        assert_eq!(
            check(ts.clone(), "eq", "2024-05-01T14:00:00+02:00", &none),
            [true, false, false]
        );
        assert_eq!(
            check(ts.clone(), "gt", "2024-05-01T12:00:00Z", &none),
            [false, true, false]
        );
        assert_eq!(
            check(ts.clone(), "lte", "2024-05-01T12:00:00.000001Z", &none),
            [true, true, false]
        );
        // Finer than the column's unit, or not RFC 3339: no match.
        assert_eq!(
            check(ts.clone(), "lt", "2024-05-01T12:00:00.0000001Z", &none),
            [false; 3]
        );
        assert_eq!(check(ts, "gt", "2024-05-01 12:00:00", &none), [false; 3]);
        let seconds: ArrayRef = Arc::new(TimestampSecondArray::from(vec![Some(0), Some(1)]));
        assert_eq!(
            check(seconds, "gte", "1970-01-01T00:00:01Z", &none),
            [false, true]
        );

        let dict: ArrayRef = Arc::new(
            vec![Some("a"), Some("b"), None, Some("a")]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        assert_eq!(
            check(dict.clone(), "eq", "a", &none),
            [true, false, false, true]
        );
        assert_eq!(check(dict, "neq", "a", &none), [false, true, false, false]);
        let large: ArrayRef = Arc::new(LargeStringArray::from(vec![Some("B"), Some("a")]));
        assert_eq!(check(large, "lt", "a", &none), [true, false]);
        let view: ArrayRef = Arc::new(StringViewArray::from(vec![Some("B"), Some("a")]));
        assert_eq!(check(view, "gte", "a", &none), [false, true]);

        // A type sync rules cannot compare is a schema error, not a silent mismatch...
        let rows = batch(vec![("c", Arc::new(Int32Array::from(vec![1])) as ArrayRef)]);
        let filter = ClientFilter::new(&one_bucket(&["t"], &[("c", "eq", "1")]), &none);
        let err = filter.matches("t", &rows).unwrap_err();
        assert!(err.to_string().contains("Int32"), "{err}");
        let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1)]),
        ]));
        assert!(filter.matches("t", &batch(vec![("c", list)])).is_err());
        // ...but only for tables the filter applies to.
        assert_eq!(visible(&filter, "other", &rows), [false]);
    }

    #[test]
    fn deleted_rows_are_visible_to_no_one() {
        let rows = batch(vec![
            ("c", strings(&[Some("x"), Some("x"), Some("x"), Some("y")])),
            (
                DELETED,
                bools(&[Some(false), Some(true), None, Some(false)]),
            ),
        ]);
        let filter = ClientFilter::new(&one_bucket(&["t"], &[("c", "eq", "x")]), &Claims::new());
        assert_eq!(visible(&filter, "t", &rows), [true, false, false, false]);
        let everything = ClientFilter::new(&SyncRules::default(), &Claims::new());
        assert_eq!(visible(&everything, "t", &rows), [true, false, false, true]);
        let not_bool = batch(vec![(DELETED, ints(&[Some(1)]))]);
        assert!(
            everything
                .matches("t", &not_bool)
                .unwrap_err()
                .to_string()
                .contains("_deleted")
        );
    }

    #[test]
    fn buckets_tables_and_union() {
        // The original's integration case: user-todos + public-notes.
        let rules = rules(json!({"version": 1, "buckets": [
            {"name": "user-todos", "tables": ["todos"], "filters": [{"column": "user_id", "op": "eq", "value": "jwt:sub"}]},
            {"name": "public-notes", "tables": ["notes"], "filters": [{"column": "visibility", "op": "eq", "value": "public"}]},
        ]}));
        let todos = batch(vec![
            ("user_id", strings(&[Some("user-a"), Some("user-b")])),
            ("title", strings(&[Some("todo-a"), Some("todo-b")])),
        ]);
        let notes = batch(vec![(
            "visibility",
            strings(&[Some("public"), Some("private")]),
        )]);
        let a = ClientFilter::new(&rules, &Claims::from_jwt_payload(&json!({"sub": "user-a"})));
        let b = ClientFilter::new(&rules, &Claims::from_jwt_payload(&json!({"sub": "user-b"})));
        assert_eq!(visible(&a, "todos", &todos), [true, false]);
        assert_eq!(visible(&b, "todos", &todos), [false, true]);
        assert_eq!(visible(&a, "notes", &notes), [true, false]);
        // A table no bucket names is invisible.
        assert_eq!(visible(&a, "other", &notes), [false, false]);
        assert!(a.sees_table("todos") && !a.sees_table("other"));
        // Claims change: without `sub`, user-todos is gone.
        let anonymous = ClientFilter::new(&rules, &Claims::new());
        assert_eq!(visible(&anonymous, "todos", &todos), [false, false]);
        assert_eq!(visible(&anonymous, "notes", &notes), [true, false]);

        // Union within one table: a row in either bucket is visible.
        let rules = rules_union();
        let rows = batch(vec![
            (
                "owner",
                strings(&[Some("me"), Some("you"), Some("you"), None]),
            ),
            (
                "shared",
                bools(&[Some(false), Some(true), Some(false), Some(true)]),
            ),
        ]);
        let me = ClientFilter::new(&rules, &Claims::new().with("sub", ["me"]));
        assert_eq!(visible(&me, "docs", &rows), [true, true, false, true]);

        // A bucket with no filters shows every row of its tables; empty tables = every table.
        let all_of_docs = one_bucket(&["docs"], &[]);
        let f = ClientFilter::new(&all_of_docs, &Claims::new());
        assert_eq!(visible(&f, "docs", &rows), [true; 4]);
        assert_eq!(visible(&f, "notes", &rows), [false; 4]);
        let every_table = one_bucket(&[], &[("owner", "eq", "you")]);
        let f = ClientFilter::new(&every_table, &Claims::new());
        assert_eq!(visible(&f, "docs", &rows), [false, true, true, false]);
        assert_eq!(visible(&f, "anything", &rows), [false, true, true, false]);
        assert!(f.sees_table("anything"));
    }

    fn rules_union() -> SyncRules {
        rules(json!({"version": 1, "buckets": [
            {"name": "mine", "tables": ["docs"], "filters": [{"column": "owner", "op": "eq", "value": "jwt:sub"}]},
            {"name": "shared", "tables": ["docs"], "filters": [{"column": "shared", "op": "eq", "value": "true"}]},
        ]}))
    }

    #[test]
    fn no_rules_shows_everything() {
        let rows = batch(vec![("c", strings(&[Some("x"), None]))]);
        let empty = rules(json!({"version": 1, "buckets": []}));
        assert!(!empty.is_filtering());
        for filter in [
            ClientFilter::new(&empty, &Claims::new()),
            ClientFilter::unfiltered(),
        ] {
            assert_eq!(visible(&filter, "any", &rows), [true, true]);
            assert!(filter.sees_table("any"));
        }
        // An empty batch is fine too.
        let none = batch(vec![("c", strings(&[]))]);
        assert_eq!(
            visible(&ClientFilter::unfiltered(), "t", &none),
            Vec::<bool>::new()
        );
    }

    // -- §4.5: validation -----------------------------------------------------------------------

    #[test]
    fn validation_failures_name_where_and_what() {
        let cases = [
            (json!("not an object"), "the document must be a JSON object"),
            (json!({"buckets": []}), "version: missing"),
            (
                json!({"version": 0, "buckets": []}),
                "version: must be a positive integer, found 0",
            ),
            (json!({"version": 1.5, "buckets": []}), "found 1.5"),
            (json!({"version": "1", "buckets": []}), "found \"1\""),
            (json!({"version": 1}), "buckets: missing"),
            (
                json!({"version": 1, "buckets": {}}),
                "buckets: must be an array",
            ),
            (
                json!({"version": 1, "buckets": [7]}),
                "buckets[0]: must be an object",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "", "tables": [], "filters": []}]}),
                "buckets[0].name: must not be empty",
            ),
            (
                json!({"version": 1, "buckets": [{"tables": [], "filters": []}]}),
                "buckets[0].name: missing",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "a", "tables": [], "filters": []}, {"name": "a", "tables": [], "filters": []}]}),
                "buckets[1] (\"a\").name: duplicate bucket name (already used by buckets[0])",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "tables": [], "filters": [{"column": "x", "op": "like", "value": "y"}]}]}),
                "buckets[0] (\"b\").filters[0].op: unknown op \"like\" (expected one of eq, neq, in, gt, lt, gte, lte)",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "tables": [], "filters": [{"column": "", "op": "eq", "value": "y"}]}]}),
                "buckets[0] (\"b\").filters[0].column: must not be empty",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "tables": [], "filters": [{"column": "x", "op": "eq", "value": ""}]}]}),
                "buckets[0] (\"b\").filters[0].value: must not be empty",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "tables": [], "filters": [{"column": "x", "op": "eq", "value": 3}]}]}),
                "buckets[0] (\"b\").filters[0].value: must be a non-empty string, found 3",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "tables": [""], "filters": []}]}),
                "buckets[0] (\"b\").tables[0]: table name must not be empty",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "filters": []}]}),
                "buckets[0] (\"b\").tables: missing",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "tables": []}]}),
                "buckets[0] (\"b\").filters: missing",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "tables": [], "filters": ["x"]}]}),
                "buckets[0] (\"b\").filters[0]: must be an object",
            ),
            (
                json!({"version": 1, "buckets": [{"name": "b", "tables": [], "filters": [{"column": "x", "value": "y"}]}]}),
                "filters[0].op: missing",
            ),
        ];
        for (doc, needle) in cases {
            let text = error_text(doc.clone());
            assert!(text.starts_with("invalid sync rules: "), "{text}");
            assert!(text.contains(needle), "{doc}: {text}");
        }
        assert!(
            SyncRules::from_json("{")
                .unwrap_err()
                .to_string()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn validation_reports_every_problem() {
        let text = error_text(json!({"version": 0, "buckets": [
            {"name": "ok", "tables": ["t"], "filters": []},
            {"name": "user-todos", "tables": ["todos", ""], "filters": [
                {"column": "user_id", "op": "regex", "value": "x"},
                {"column": "", "op": "eq", "value": ""}]},
            {"name": "ok", "tables": [], "filters": []},
        ]}));
        for needle in [
            "version: must be a positive integer, found 0",
            "buckets[1] (\"user-todos\").tables[1]: table name must not be empty",
            "buckets[1] (\"user-todos\").filters[0].op: unknown op \"regex\" (expected one of eq, neq, in, gt, lt, gte, lte)",
            "buckets[1] (\"user-todos\").filters[1].column: must not be empty",
            "buckets[1] (\"user-todos\").filters[1].value: must not be empty",
            "buckets[2] (\"ok\").name: duplicate bucket name (already used by buckets[0])",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
        assert_eq!(text.matches("; ").count(), 5, "{text}");
    }

    #[test]
    fn valid_documents_parse_and_round_trip() {
        let doc = json!({"version": 1, "buckets": [
            {"name": "user-todos", "tables": ["todos"], "description": "ignored",
             "filters": [{"column": "user_id", "op": "eq", "value": "jwt:sub"},
                         {"column": "priority", "op": "gte", "value": "3"}]},
            {"name": "everything-shared", "tables": ["announcements"], "filters": []}]});
        let parsed = rules(doc);
        assert_eq!(parsed.buckets[0].filters[1].op, FilterOp::Gte);
        assert_eq!(parsed.buckets[0].filters[0].claim(), Some("sub"));
        assert!(
            parsed.buckets[1].applies_to("announcements") && !parsed.buckets[1].applies_to("todos")
        );
        parsed.validate().unwrap();
        let text = serde_json::to_string(&parsed).unwrap();
        assert_eq!(serde_json::from_str::<SyncRules>(&text).unwrap(), parsed);
        assert_eq!(SyncRules::from_json(&text).unwrap(), parsed);
        // Deserialising validates.
        let err = serde_json::from_str::<SyncRules>(r#"{"version":0,"buckets":[]}"#).unwrap_err();
        assert!(err.to_string().contains("positive integer"), "{err}");
        // `1.0` is an integer to JavaScript.
        assert_eq!(rules(json!({"version": 1.0, "buckets": []})).version, 1);
        assert!(rules(json!({"version": 1, "buckets": []})) == SyncRules::default());
        // Built in code and then broken: validate() says so.
        let mut broken = parsed;
        broken.buckets[1].name = "user-todos".into();
        assert!(
            broken
                .validate()
                .unwrap_err()
                .to_string()
                .contains("duplicate bucket name")
        );
    }

    #[test]
    fn check_against_schemas() {
        let todos = TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("user_id", ColumnType::String),
                ColumnDef::new("priority", ColumnType::Integer),
                ColumnDef::new("score", ColumnType::Number),
                ColumnDef::new("done", ColumnType::Boolean),
                ColumnDef::new("due", ColumnType::Timestamp),
            ],
        );
        let notes = TableSchema::new(
            "notes",
            vec![ColumnDef::new("visibility", ColumnType::String)],
        );
        let schemas = [todos, notes];
        let good = rules(json!({"version": 1, "buckets": [
            {"name": "a", "tables": ["todos"], "filters": [
                {"column": "user_id", "op": "eq", "value": "jwt:sub"},
                {"column": "priority", "op": "gte", "value": "3"},
                {"column": "score", "op": "lt", "value": "2.5"},
                {"column": "done", "op": "eq", "value": "false"},
                {"column": "due", "op": "gt", "value": "2024-05-01T12:00:00Z"},
                {"column": "priority", "op": "in", "value": "jwt:levels"}]},
            {"name": "b", "tables": [], "filters": [{"column": "visibility", "op": "eq", "value": "public"}]},
            {"name": "c", "tables": ["unknown"], "filters": [{"column": "x", "op": "eq", "value": "y"}]}]}));
        good.check_against(&schemas).unwrap();

        let bad = rules(json!({"version": 1, "buckets": [
            {"name": "a", "tables": ["todos"], "filters": [
                {"column": "user", "op": "eq", "value": "jwt:sub"},
                {"column": "priority", "op": "gte", "value": "3abc"},
                {"column": "score", "op": "lt", "value": "high"},
                {"column": "done", "op": "eq", "value": "yes"},
                {"column": "due", "op": "gt", "value": "2024-05-01"}]},
            {"name": "b", "tables": [], "filters": [{"column": "nowhere", "op": "eq", "value": "x"}]}]}));
        let text = bad.check_against(&schemas).unwrap_err().to_string();
        for needle in [
            "buckets[0] (\"a\").filters[0].column: table \"todos\" has no column \"user\"",
            "buckets[0] (\"a\").filters[1].value: \"3abc\" is not a valid integer for column \"priority\" of table \"todos\"",
            "filters[2].value: \"high\" is not a valid number",
            "filters[3].value: \"yes\" is not a valid boolean",
            "filters[4].value: \"2024-05-01\" is not a valid timestamp",
            "buckets[1] (\"b\").filters[0].column: no table has a column \"nowhere\"",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
        // Nothing to check against: fine.
        bad.check_against(&[]).unwrap();
    }

    // -- property: the vectorised filter equals a scalar reference ------------------------------

    /// One generated row: text, integer, float (each nullable), and `_deleted`.
    type Row = (Option<String>, Option<i64>, Option<f64>, Option<bool>);

    /// The reference: the module's semantics, one row and one value at a time.
    fn reference(
        rules: &SyncRules,
        claims: &Claims,
        table: &str,
        row: &Row,
        has_deleted: bool,
    ) -> bool {
        if has_deleted && row.3 != Some(false) {
            return false;
        }
        if rules.buckets.is_empty() {
            return true;
        }
        rules.buckets.iter().any(|bucket| {
            bucket.applies_to(table)
                && bucket
                    .filters
                    .iter()
                    .all(|f| reference_filter(f, claims, row))
        })
    }

    fn reference_filter(filter: &SyncRuleFilter, claims: &Claims, row: &Row) -> bool {
        let mut values = claims.resolve(&filter.value);
        if filter.op.is_ordering() {
            values.truncate(1);
        }
        if values.is_empty() {
            return false;
        }
        // Compare the cell with every value, or give up when one does not parse.
        let orders: Option<Vec<Option<std::cmp::Ordering>>> = match filter.column.as_str() {
            "s" => match &row.0 {
                None => return false,
                Some(cell) => values
                    .iter()
                    .map(|v| Some(Some(cell.as_str().cmp(v))))
                    .collect(),
            },
            "i" => match row.1 {
                None => return false,
                Some(cell) => values
                    .iter()
                    .map(|v| v.parse::<i64>().ok().map(|v| Some(cell.cmp(&v))))
                    .collect(),
            },
            "f" => match row.2 {
                None => return false,
                Some(cell) if cell.is_nan() => return false,
                // IEEE partial_cmp: -0 == 0.
                Some(cell) => values
                    .iter()
                    .map(|v| {
                        v.parse::<f64>()
                            .ok()
                            .filter(|v| !v.is_nan())
                            .map(|v| cell.partial_cmp(&v))
                    })
                    .collect(),
            },
            _ => return false,
        };
        let Some(orders) = orders else { return false };
        use std::cmp::Ordering::*;
        let eq_any = orders.contains(&Some(Equal));
        match filter.op {
            FilterOp::Eq | FilterOp::In => eq_any,
            FilterOp::Neq => !eq_any,
            FilterOp::Gt => orders[0] == Some(Greater),
            FilterOp::Lt => orders[0] == Some(Less),
            FilterOp::Gte => matches!(orders[0], Some(Greater | Equal)),
            FilterOp::Lte => matches!(orders[0], Some(Less | Equal)),
        }
    }

    /// Literal values for claims: text, integers, floats, and things that do not parse.
    const CLAIM_VALUES: &[&str] = &[
        "a",
        "B",
        "b",
        "ab",
        "é",
        "0",
        "-0",
        "1",
        "2",
        "-3",
        "1.5",
        "2.0",
        "1e1",
        "10",
        "3abc",
        "NaN",
        "inf",
        "9223372036854775807",
    ];

    /// Filter values per column, biased towards the values that make that column interesting.
    fn filter_strategy() -> impl Strategy<Value = SyncRuleFilter> {
        const CLAIMS: [&str; 3] = ["jwt:x", "jwt:y", "jwt:missing"];
        let pool = |literals: &'static [&'static str]| {
            prop_oneof![
                3 => prop::sample::select(literals),
                2 => prop::sample::select(&CLAIMS[..]),
            ]
        };
        let column = prop_oneof![
            3 => Just("s"),
            3 => Just("i"),
            4 => Just("f"),
            1 => Just("missing"),
        ];
        (column, prop::sample::select(&FilterOp::ALL[..])).prop_flat_map(move |(column, op)| {
            let values = match column {
                "s" => pool(&["a", "B", "b", "ab", "é", "0", "10"]),
                "i" => pool(&[
                    "0",
                    "-0",
                    "1",
                    "2",
                    "-3",
                    "10",
                    "1.5",
                    "3abc",
                    "9223372036854775807",
                ]),
                "f" => pool(&[
                    "0", "-0", "1", "-3", "1.5", "2.0", "1e1", "inf", "-inf", "NaN", "3abc",
                ]),
                _ => pool(&["a", "1"]),
            };
            values.prop_map(move |v| SyncRuleFilter::new(column, op, v))
        })
    }

    fn rules_strategy() -> impl Strategy<Value = SyncRules> {
        prop::collection::vec(
            (
                prop::sample::subsequence(&["t", "u"][..], 0..=2),
                prop::collection::vec(filter_strategy(), 0..3),
            ),
            0..3,
        )
        .prop_map(|buckets| SyncRules {
            version: 1,
            buckets: buckets
                .into_iter()
                .enumerate()
                .map(|(i, (tables, filters))| BucketDefinition {
                    name: format!("b{i}"),
                    tables: tables.into_iter().map(str::to_string).collect(),
                    filters,
                })
                .collect(),
        })
    }

    fn claims_strategy() -> impl Strategy<Value = Claims> {
        let pool = prop::sample::select(CLAIM_VALUES).prop_map(str::to_string);
        (
            prop::collection::vec(pool.clone(), 0..3),
            prop::option::of(pool),
        )
            .prop_map(|(x, y)| {
                let claims = Claims::new().with("x", x);
                match y {
                    Some(y) => claims.with("y", [y]),
                    None => claims,
                }
            })
    }

    fn row_strategy() -> impl Strategy<Value = Row> {
        (
            prop::option::of(
                prop::sample::select(&["a", "B", "b", "ab", "é", "0", "1", "10", "2.0", ""][..])
                    .prop_map(str::to_string),
            ),
            prop::option::of(prop_oneof![-4i64..12, Just(i64::MAX), Just(i64::MIN)]),
            prop::option::of(prop_oneof![
                (-8i32..24).prop_map(|n| f64::from(n) / 2.0),
                Just(-0.0),
                Just(0.0),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(10.0),
            ]),
            prop::option::of(any::<bool>()),
        )
    }

    proptest! {
        #[test]
        fn vectorised_filter_equals_scalar_reference(
            rules in rules_strategy(),
            claims in claims_strategy(),
            rows in prop::collection::vec(row_strategy(), 0..40),
            table in prop::sample::select(&["t", "u", "v"][..]),
            has_deleted in any::<bool>(),
            offset in 0usize..3,
        ) {
            let mut columns = vec![
                ("s", Arc::new(rows.iter().map(|r| r.0.clone()).collect::<StringArray>()) as ArrayRef),
                ("i", Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()) as ArrayRef),
                ("f", Arc::new(rows.iter().map(|r| r.2).collect::<Float64Array>()) as ArrayRef),
            ];
            if has_deleted {
                columns.push((DELETED, Arc::new(rows.iter().map(|r| r.3).collect::<BooleanArray>()) as ArrayRef));
            }
            // Slicing exercises non-zero array offsets in the bitwise kernels.
            let full = batch(columns);
            let offset = offset.min(rows.len());
            let sliced = full.slice(offset, rows.len() - offset);
            let filter = ClientFilter::new(&rules, &claims);
            let got = visible(&filter, table, &sliced);
            let expected: Vec<bool> = rows[offset..]
                .iter()
                .map(|row| reference(&rules, &claims, table, row, has_deleted))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
