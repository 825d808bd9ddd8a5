//! The YAML tree of a pipeline file, with a path and a line for every node, and a serde
//! deserialiser over it that reports errors where they are.
//!
//! Reading a pipeline file is three steps:
//! 1. [`parse`]: serde-saphyr parses the text (YAML 1.2 core schema: only `true`/`false` are
//!    booleans; `007` stays text) into a [`Node`] tree. Every node knows its YAML path
//!    (`sinks.lake.catalog.uri`, `tables[0].columns[2]`) and its line and column.
//! 2. `${VAR}` interpolation rewrites string nodes in place (see [`super::interpolate`]).
//! 3. [`decode`] deserialises the typed spec from the tree with [`NodeDeserializer`]. Its errors
//!    carry the path and position of the node they are about, and serde's "unknown field" and
//!    "unknown variant" errors gain a "did you mean" hint. To report *every* problem rather
//!    than the first, decoding recovers by deletion: after an error it removes the offending
//!    node (or entry) from a copy of the tree and decodes again, until the copy decodes. A
//!    "missing field" caused only by such a deletion is not reported.
//!
//! Scalars are lenient where YAML's implicit typing gets in the way: a plain scalar that YAML
//! reads as a number or boolean is still accepted where a string is expected, with its text as
//! written (`client_id: 2024`). A value that came from `${VAR}` is accepted as a number or
//! boolean when its text parses as one, since environment variables are always text.

use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, Expected, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::suggest;
use super::{Diagnostic, Location};

/// Where decoding gives up: beyond this many errors the rest are noise.
const MAX_ERRORS: usize = 64;

/// A node of the YAML tree.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    /// Unique within its tree; stable when other nodes are removed.
    pub id: u32,
    /// The YAML path: `""` for the root, `a.b[2].c` below it.
    pub path: String,
    /// Where the node is (for an alias: where it is used).
    pub location: Location,
    /// The value.
    pub kind: Kind,
    /// For a plain scalar YAML typed as a number or boolean: its text as written.
    pub raw: Option<String>,
    /// The environment variables interpolated into this string, if any.
    pub interpolated: Vec<String>,
}

/// A node's value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` of a mapping.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    /// Where the key is.
    pub key_location: Location,
    pub value: Node,
}

impl Node {
    /// The string value, for string nodes.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Calls `f` on this node and every node below it, keys' values included.
    #[cfg(test)]
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Node)) {
        f(self);
        match &self.kind {
            Kind::Seq(items) => items.iter().for_each(|n| n.walk(f)),
            Kind::Map(entries) => entries.iter().for_each(|e| e.value.walk(f)),
            _ => {}
        }
    }

    /// Calls `f` on this node and every node below it, mutably.
    pub fn walk_mut(&mut self, f: &mut impl FnMut(&mut Node)) {
        f(self);
        match &mut self.kind {
            Kind::Seq(items) => items.iter_mut().for_each(|n| n.walk_mut(f)),
            Kind::Map(entries) => entries.iter_mut().for_each(|e| e.value.walk_mut(f)),
            _ => {}
        }
    }

    /// Removes the node with id `id` below this one (as a sequence item or a mapping entry).
    fn remove(&mut self, id: u32) -> bool {
        match &mut self.kind {
            Kind::Seq(items) => {
                let before = items.len();
                items.retain(|n| n.id != id);
                items.len() != before || items.iter_mut().any(|n| n.remove(id))
            }
            Kind::Map(entries) => {
                let before = entries.len();
                entries.retain(|e| e.value.id != id);
                entries.len() != before || entries.iter_mut().any(|e| e.value.remove(id))
            }
            _ => false,
        }
    }

    /// A short description of the value, for "found …" in messages.
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing (null)".to_string(),
            Kind::Bool(b) => b.to_string(),
            Kind::Int(n) => format!("the number {n}"),
            Kind::UInt(n) => format!("the number {n}"),
            Kind::Float(n) => format!("the number {n}"),
            Kind::Str(s) => format!("the string {s:?}"),
            Kind::Seq(_) => "a list".to_string(),
            Kind::Map(_) => "a mapping".to_string(),
        }
    }

    /// The scalar's text where a string is wanted: strings as they are, YAML-typed plain
    /// scalars as written.
    fn text(&self) -> Option<String> {
        match &self.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Bool(b) => Some(self.raw.clone().unwrap_or_else(|| b.to_string())),
            Kind::Int(n) => Some(self.raw.clone().unwrap_or_else(|| n.to_string())),
            Kind::UInt(n) => Some(self.raw.clone().unwrap_or_else(|| n.to_string())),
            Kind::Float(n) => Some(self.raw.clone().unwrap_or_else(|| n.to_string())),
            Kind::Null | Kind::Seq(_) | Kind::Map(_) => None,
        }
    }
}

/// The path of `key` below `parent`: `parent.key`, or `parent["odd key"]` when the key is not
/// a plain word.
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// The path of item `index` below `parent`.
pub(crate) fn item_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

// ---------------------------------------------------------------------------------------------
// Parsing: serde-saphyr → Spanned<RawNode> → Node
// ---------------------------------------------------------------------------------------------

/// What serde-saphyr hands us: any YAML value, each with its span.
enum RawNode {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<RawNode>, Spanned<RawNode>)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;

        impl<'de> Visitor<'de> for RawVisitor {
            type Value = RawNode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }

            fn visit_unit<E>(self) -> Result<RawNode, E> {
                Ok(RawNode::Null)
            }

            fn visit_none<E>(self) -> Result<RawNode, E> {
                Ok(RawNode::Null)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
                RawNode::deserialize(d)
            }

            fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
                Ok(RawNode::Bool(v))
            }

            fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
                Ok(RawNode::Int(v))
            }

            fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
                Ok(RawNode::UInt(v))
            }

            fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
                Ok(RawNode::Float(v))
            }

            fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
                Ok(RawNode::Str(v.to_string()))
            }

            fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
                Ok(RawNode::Str(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawNode::Seq(items))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(RawNode::Map(entries))
            }
        }

        deserializer.deserialize_any(RawVisitor)
    }
}

/// Parses YAML text into a tree. A syntax error (or a duplicate key, or a key that is not a
/// scalar) is returned as diagnostics; the file cannot be read further.
pub(crate) fn parse(text: &str) -> Result<Node, Vec<Diagnostic>> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    let raw: Spanned<RawNode> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let location = e.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            });
            let message = serde_saphyr::MessageFormatter::format_message(
                &serde_saphyr::UserMessageFormatter,
                e.without_snippet(),
            );
            // The formatter's text is shown as one line.
            let message: String = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let mut d = Diagnostic::error("", format!("YAML: {message}"));
            d.location = location;
            vec![d]
        })?;
    let mut builder = Builder {
        text,
        next_id: 0,
        problems: Vec::new(),
    };
    let root = builder.node(raw, String::new());
    if builder.problems.is_empty() {
        Ok(root)
    } else {
        Err(builder.problems)
    }
}

struct Builder<'t> {
    text: &'t str,
    next_id: u32,
    problems: Vec<Diagnostic>,
}

impl Builder<'_> {
    fn location(spanned: &Spanned<RawNode>) -> Location {
        Location {
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
        }
    }

    /// The source text of a scalar, from where it is defined (so aliases give the anchored text).
    fn raw_text(&self, spanned: &Spanned<RawNode>) -> Option<String> {
        let span = spanned.defined.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        self.text
            .get(start..start.checked_add(len)?)
            .map(str::to_string)
    }

    fn node(&mut self, spanned: Spanned<RawNode>, path: String) -> Node {
        let id = self.next_id;
        self.next_id += 1;
        let location = Self::location(&spanned);
        let raw = match spanned.value {
            RawNode::Bool(_) | RawNode::Int(_) | RawNode::UInt(_) | RawNode::Float(_) => {
                self.raw_text(&spanned)
            }
            _ => None,
        };
        let kind = match spanned.value {
            RawNode::Null => Kind::Null,
            RawNode::Bool(b) => Kind::Bool(b),
            RawNode::Int(n) => Kind::Int(n),
            RawNode::UInt(n) => Kind::UInt(n),
            RawNode::Float(n) => Kind::Float(n),
            RawNode::Str(s) => Kind::Str(s),
            RawNode::Seq(items) => Kind::Seq(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.node(item, item_path(&path, i)))
                    .collect(),
            ),
            RawNode::Map(pairs) => {
                let mut entries = Vec::with_capacity(pairs.len());
                for (key, value) in pairs {
                    let key_location = Self::location(&key);
                    let raw_key = self.raw_text(&key);
                    let name = match key.value {
                        RawNode::Str(s) => s,
                        RawNode::Bool(_)
                        | RawNode::Int(_)
                        | RawNode::UInt(_)
                        | RawNode::Float(_)
                        | RawNode::Null => raw_key.unwrap_or_default(),
                        RawNode::Seq(_) | RawNode::Map(_) => {
                            let mut d = Diagnostic::error(
                                path.clone(),
                                "a mapping key must be a plain name, not a list or a mapping",
                            );
                            d.location = Some(key_location);
                            self.problems.push(d);
                            continue;
                        }
                    };
                    let value = self.node(value, child_path(&path, &name));
                    entries.push(Entry {
                        key: name,
                        key_location,
                        value,
                    });
                }
                Kind::Map(entries)
            }
        };
        Node {
            id,
            path,
            location,
            kind,
            raw,
            interpolated: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding with recovery
// ---------------------------------------------------------------------------------------------

/// Deserialises `T` from the tree, reporting every error found (see the module docs). `T` is
/// returned only when there were none.
pub(crate) fn decode<T: DeserializeOwned>(root: &Node) -> Result<T, Vec<Diagnostic>> {
    let mut tree = root.clone();
    let mut problems: Vec<Diagnostic> = Vec::new();
    // (mapping path, key) pairs removed by recovery: their "missing field" is not news.
    let mut removed: HashSet<(String, String)> = HashSet::new();
    loop {
        let error = match T::deserialize(NodeDeserializer::new(&tree)) {
            Ok(value) if problems.is_empty() => return Ok(value),
            Ok(_) => return Err(problems),
            Err(error) => error,
        };
        let at = error.at.as_deref().cloned().unwrap_or(At {
            id: tree.id,
            path: String::new(),
            parent: None,
            location: Some(tree.location),
        });
        let kind = error.kind.clone();
        let caused_by_recovery = matches!(
            &kind,
            ErrorKind::MissingField(field) if removed.contains(&(at.path.clone(), field.clone()))
        );
        if !caused_by_recovery {
            problems.push(error.into_diagnostic(&at));
        }
        let Some((parent, key)) = at.parent.clone() else {
            return Err(problems); // the root itself is wrong: nothing left to try
        };
        if problems.len() >= MAX_ERRORS || !tree.remove(at.id) {
            return Err(problems);
        }
        // A misspelt field is reported once, not again as the field it should have been.
        if let ErrorKind::UnknownField(Some(meant)) = &kind {
            removed.insert((parent.clone(), meant.clone()));
        }
        if let Some(key) = key {
            removed.insert((parent, key));
        }
    }
}

/// Where an error is: the node to remove to recover, its path and position, and the path of
/// its mapping (or sequence) with its key (when in a mapping).
#[derive(Clone, Debug)]
struct At {
    id: u32,
    path: String,
    parent: Option<(String, Option<String>)>,
    location: Option<Location>,
}

/// What a deserialisation error is about, for recovery.
#[derive(Clone, Debug, PartialEq)]
enum ErrorKind {
    MissingField(String),
    /// An unknown field, with the known field it is probably a typo of.
    UnknownField(Option<String>),
    Other,
}

/// A deserialisation error, placed in the tree once it passes through [`NodeDeserializer`].
#[derive(Clone, Debug)]
pub(crate) struct DeError {
    message: String,
    hint: Option<String>,
    kind: ErrorKind,
    /// Boxed: errors travel through every frame of deserialisation.
    at: Option<Box<At>>,
}

impl DeError {
    fn new(message: impl Into<String>) -> Self {
        // A `Deserialize` impl may put a hint on its own line: "message\nhint: hint".
        let message = message.into();
        let (message, hint) = match message.split_once("\nhint: ") {
            Some((m, h)) => (m.to_string(), Some(h.to_string())),
            None => (message, None),
        };
        // serde's wording, also used by `Deserialize` impls that add a hint to it.
        let kind = match message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
        {
            Some((field, _)) => ErrorKind::MissingField(field.to_string()),
            None => ErrorKind::Other,
        };
        Self {
            message,
            hint,
            kind,
            at: None,
        }
    }

    fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// Places the error at `node` unless a deeper frame already placed it.
    fn at(mut self, node: &Node, parent: Option<(String, Option<String>)>) -> Self {
        if self.at.is_none() {
            // Never echo the value of a `${VAR}`: it may be a secret.
            if !node.interpolated.is_empty()
                && let Some(value) = node.as_str()
                && !value.is_empty()
            {
                let vars: Vec<String> = node
                    .interpolated
                    .iter()
                    .map(|v| format!("${{{v}}}"))
                    .collect();
                let masked = format!("<value of {}>", vars.join(", "));
                self.message = self.message.replace(&format!("{value:?}"), &masked);
            }
            self.at = Some(Box::new(At {
                id: node.id,
                path: node.path.clone(),
                parent,
                location: Some(node.location),
            }));
        }
        self
    }

    fn into_diagnostic(self, at: &At) -> Diagnostic {
        let mut d = Diagnostic::error(at.path.clone(), self.message);
        d.hint = self.hint;
        d.location = at.location;
        d
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{}: ", at.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for DeError {}

/// What serde calls primitive types, in words.
fn expected_in_words(expected: &dyn Expected) -> String {
    let text = expected.to_string();
    match text.as_str() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, at least 0".to_string(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a string" | "a borrowed string" => "a string".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" => "a mapping".to_string(),
        _ => text,
    }
}

fn unexpected_in_words(unexpected: &Unexpected<'_>) -> String {
    match unexpected {
        Unexpected::Bool(b) => b.to_string(),
        Unexpected::Unsigned(n) => format!("the number {n}"),
        Unexpected::Signed(n) => format!("the number {n}"),
        Unexpected::Float(n) => format!("the number {n}"),
        Unexpected::Str(s) => format!("the string {s:?}"),
        Unexpected::Unit | Unexpected::Option => "nothing (null)".to_string(),
        Unexpected::Seq => "a list".to_string(),
        Unexpected::Map => "a mapping".to_string(),
        other => other.to_string(),
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::new(msg.to_string())
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::new(format!(
            "expected {}, found {}",
            expected_in_words(expected),
            unexpected_in_words(&unexpected)
        ))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::new(format!(
            "{} is not valid here: expected {}",
            unexpected_in_words(&unexpected),
            expected_in_words(expected)
        ))
    }

    fn invalid_length(len: usize, expected: &dyn Expected) -> Self {
        Self::new(format!("expected {expected}, found {len} items"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let known = suggest::list(expected);
        let hint = match suggest::did_you_mean(variant, expected.iter().copied()) {
            Some(guess) => format!("{guess} (expected one of {known})"),
            None => format!("expected one of {known}"),
        };
        Self::new(format!("unknown value {variant:?}")).with_hint(Some(hint))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let known = suggest::list(expected);
        let guess = suggest::closest(field, expected.iter().copied());
        let hint = match guess {
            Some(guess) => format!("did you mean {guess:?}?"),
            None if expected.is_empty() => "this mapping takes no fields".to_string(),
            None => format!("known fields: {known}"),
        };
        let mut e = Self::new(format!("unknown field {field:?}")).with_hint(Some(hint));
        e.kind = ErrorKind::UnknownField(guess.map(str::to_string));
        e
    }

    fn missing_field(field: &'static str) -> Self {
        Self::new(format!("missing field `{field}`"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::new(format!("field `{field}` is given twice"))
    }
}

// ---------------------------------------------------------------------------------------------
// The deserialiser
// ---------------------------------------------------------------------------------------------

/// A serde deserialiser over a [`Node`]; errors come out placed at the node they are about.
pub(crate) struct NodeDeserializer<'a> {
    node: &'a Node,
    /// The mapping or sequence this node is in, and its key there.
    parent: Option<(String, Option<String>)>,
}

impl<'a> NodeDeserializer<'a> {
    pub(crate) fn new(node: &'a Node) -> Self {
        Self { node, parent: None }
    }

    fn place(&self, e: DeError) -> DeError {
        e.at(self.node, self.parent.clone())
    }

    fn invalid_type<V>(&self, expected: &dyn Expected) -> Result<V, DeError> {
        Err(self.place(DeError::new(format!(
            "expected {}, found {}",
            expected_in_words(expected),
            self.node.describe()
        ))))
    }

    /// The text of an interpolated string, for number and boolean targets.
    fn interpolated_text(&self) -> Option<&str> {
        (!self.node.interpolated.is_empty())
            .then(|| self.node.as_str())
            .flatten()
            .map(str::trim)
    }

    fn deserialize_number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::Int(n) => visitor.visit_i64(*n),
            Kind::UInt(n) => visitor.visit_u64(*n),
            Kind::Float(n) => visitor.visit_f64(*n),
            _ => match self.interpolated_text() {
                Some(text) => {
                    if let Ok(n) = text.parse::<u64>() {
                        visitor.visit_u64(n)
                    } else if let Ok(n) = text.parse::<i64>() {
                        visitor.visit_i64(n)
                    } else if let Ok(n) = text.parse::<f64>() {
                        visitor.visit_f64(n)
                    } else {
                        return self.invalid_type(&visitor);
                    }
                }
                None => return self.invalid_type(&visitor),
            },
        };
        result.map_err(|e| self.place(e))
    }
}

macro_rules! forward_numbers {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.deserialize_number(visitor)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for NodeDeserializer<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::Null => visitor.visit_unit(),
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Int(n) => visitor.visit_i64(*n),
            Kind::UInt(n) => visitor.visit_u64(*n),
            Kind::Float(n) => visitor.visit_f64(*n),
            Kind::Str(s) => visitor.visit_str(s),
            Kind::Seq(items) => visitor.visit_seq(NodeSeq::new(self.node, items)),
            Kind::Map(entries) => visitor.visit_map(NodeMap::new(self.node, entries)),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match (&self.node.kind, self.interpolated_text()) {
            (Kind::Bool(b), _) => visitor.visit_bool(*b),
            (_, Some("true")) => visitor.visit_bool(true),
            (_, Some("false")) => visitor.visit_bool(false),
            _ => return self.invalid_type(&visitor),
        };
        result.map_err(|e| self.place(e))
    }

    forward_numbers!(
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    );

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match self.node.text() {
            Some(text) => visitor.visit_str(&text),
            None => return self.invalid_type(&visitor),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.invalid_type(&visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.invalid_type(&visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match self.node.kind {
            Kind::Null => visitor.visit_none(),
            _ => visitor.visit_some(NodeDeserializer {
                node: self.node,
                parent: self.parent.clone(),
            }),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            Kind::Null => visitor.visit_unit().map_err(|e| self.place(e)),
            _ => self.invalid_type(&visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (node, parent) = (self.node, self.parent.clone());
        visitor
            .visit_newtype_struct(NodeDeserializer {
                node,
                parent: parent.clone(),
            })
            .map_err(|e| e.at(node, parent))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::Seq(items) => visitor.visit_seq(NodeSeq::new(self.node, items)),
            _ => return self.invalid_type(&visitor),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::Map(entries) => visitor.visit_map(NodeMap::new(self.node, entries)),
            // `sources:` with nothing after it is an empty mapping to whoever accepts one.
            Kind::Null => visitor.visit_unit(),
            _ => return self.invalid_type(&visitor),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match self.node.text() {
            Some(variant) => visitor.visit_enum(UnitVariant(variant)),
            None => return self.invalid_type(&visitor),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

/// The items of a sequence node.
struct NodeSeq<'a> {
    parent: &'a Node,
    items: std::slice::Iter<'a, Node>,
}

impl<'a> NodeSeq<'a> {
    fn new(parent: &'a Node, items: &'a [Node]) -> Self {
        Self {
            parent,
            items: items.iter(),
        }
    }
}

impl<'de> SeqAccess<'de> for NodeSeq<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(NodeDeserializer {
            node: item,
            parent: Some((self.parent.path.clone(), None)),
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a mapping node, `type` first (so tagged specs see their tag first).
struct NodeMap<'a> {
    parent: &'a Node,
    entries: std::vec::IntoIter<&'a Entry>,
    current: Option<&'a Entry>,
}

impl<'a> NodeMap<'a> {
    fn new(parent: &'a Node, entries: &'a [Entry]) -> Self {
        let (tag, rest): (Vec<&Entry>, Vec<&Entry>) = entries.iter().partition(|e| e.key == "type");
        let ordered: Vec<&Entry> = tag.into_iter().chain(rest).collect();
        Self {
            parent,
            entries: ordered.into_iter(),
            current: None,
        }
    }
}

impl<'de> MapAccess<'de> for NodeMap<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key: de::value::StrDeserializer<'_, DeError> = entry.key.as_str().into_deserializer();
        seed.deserialize(key).map(Some).map_err(|e| {
            // An unknown key: point at the key, and let recovery remove the whole entry.
            let mut e = e.at(
                &entry.value,
                Some((self.parent.path.clone(), Some(entry.key.clone()))),
            );
            if let Some(at) = &mut e.at {
                at.location = Some(entry.key_location);
            }
            e
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let entry = self
            .current
            .take()
            .ok_or_else(|| DeError::new("internal error: a value was read before its key"))?;
        seed.deserialize(NodeDeserializer {
            node: &entry.value,
            parent: Some((self.parent.path.clone(), Some(entry.key.clone()))),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An enum written as a plain string: a unit variant.
struct UnitVariant(String);

impl<'de> EnumAccess<'de> for UnitVariant {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let name: de::value::StrDeserializer<'_, DeError> = self.0.as_str().into_deserializer();
        let value = seed.deserialize(name)?;
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for UnitVariant {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, DeError> {
        Err(DeError::new(format!("{:?} needs a value", self.0)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, DeError> {
        Err(DeError::new(format!("{:?} needs a list of values", self.0)))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, DeError> {
        Err(DeError::new(format!("{:?} needs a mapping", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
        #[serde(default)]
        count: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        items: Vec<Inner>,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
        Careful,
    }

    fn errors(text: &str) -> Vec<String> {
        let tree = parse(text).map_err(|e| format!("{e:?}")).unwrap();
        match decode::<Outer>(&tree) {
            Ok(v) => panic!("decoded {v:?}"),
            Err(problems) => problems.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn paths_and_locations() {
        let tree = parse("a:\n  b: [1, {c: x}]\n'odd key': ~\n").unwrap();
        let mut seen = Vec::new();
        tree.walk(&mut |n| seen.push((n.path.clone(), n.location.line, n.location.column)));
        assert_eq!(
            seen,
            [
                (String::new(), 1, 1),
                ("a".to_string(), 2, 3),
                ("a.b".to_string(), 2, 6),
                ("a.b[0]".to_string(), 2, 7),
                ("a.b[1]".to_string(), 2, 10),
                ("a.b[1].c".to_string(), 2, 14),
                ("[\"odd key\"]".to_string(), 3, 12),
            ]
        );
    }

    #[test]
    fn decodes_leniently_typed_scalars() {
        let tree =
            parse("items:\n  - name: 2024\n  - name: yes\n    count: 3\nmode: careful\n").unwrap();
        let outer: Outer = decode(&tree).unwrap();
        assert_eq!(outer.items[0].name, "2024");
        assert_eq!(outer.items[1].name, "yes", "YAML 1.2: yes is a string");
        assert_eq!(outer.items[1].count, 3);
        assert_eq!(outer.mode, Some(Mode::Careful));
    }

    #[test]
    fn reports_every_error_with_its_place() {
        let text = "items:\n  - nam: a\n    cnt: 2\n  - name: b\n    count: -1\n  - count: 4\nflag: 1\nmode: fsat\nextra: 1\n";
        assert_eq!(
            errors(text),
            [
                "2:5: error: items[0].nam: unknown field \"nam\" (hint: did you mean \"name\"?)",
                "3:5: error: items[0].cnt: unknown field \"cnt\" (hint: did you mean \"count\"?)",
                // No "missing field `name`" for items[0]: `nam` was meant.
                "5:12: error: items[1].count: the number -1 is not valid here: expected a whole number, at least 0",
                "6:5: error: items[2]: missing field `name`",
                "7:7: error: flag: expected a boolean, found the number 1",
                "8:7: error: mode: unknown value \"fsat\" (hint: did you mean \"fast\"? (expected one of fast, careful))",
                "9:1: error: extra: unknown field \"extra\" (hint: known fields: items, flag, mode)",
            ]
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let problems = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        let location = problems[0].location.unwrap();
        assert_eq!((location.line, location.column), (2, 2));
        assert!(
            problems[0].message.starts_with("YAML: "),
            "{}",
            problems[0].message
        );
        let problems = parse("a: 1\na: 2\n").unwrap_err();
        assert!(
            problems[0].message.contains("duplicate"),
            "{}",
            problems[0].message
        );
    }
}
