//! The state form: one row per `_row_id` after merging deltas, and the version keys that keep the
//! merge incremental.
//!
//! A state batch has these reserved columns, then the table's data columns:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `_row_id` | Utf8 | the row |
//! | `_hlc` | UInt64 | the highest HLC of any delta merged into the row |
//! | `_deleted` | Boolean | the row is a tombstone: its latest DELETE is newer than every write |
//! | `_live_version` | Binary, nullable | version key of the newest non-DELETE delta |
//! | `_delete_version` | Binary, nullable | version key of the newest DELETE |
//! | `_col_versions` | List<Binary, nullable> | per data column (by position), the version key of the write that holds the value; null when the column holds nothing |
//!
//! A data column holds a value exactly when its version is non-null; then the value is what the
//! newest write of that column (newer than the newest DELETE) set — possibly null. A tombstone
//! has every data column empty.
//!
//! A **version key** orders deltas as last-writer-wins does: by HLC, then by client id in UTF-16
//! code-unit order (as the original compares strings), then by deltaId bytes — the last step
//! makes the order total, so the merge is a function of the *set* of deltas. Keys are byte
//! strings that compare with `memcmp` in exactly that order: `hlc` as 8 big-endian bytes, then
//! the client id as UTF-16 code units — a unit `u` in 1..=0x7F as the single byte `u + 1`, unit 0
//! as `01 00 00`, any other unit as `81` followed by `u` in big-endian — then a `00` terminator
//! (smaller than every unit's first byte, so a prefix sorts first), then the 32 deltaId bytes.
//! Each encoding is told by its first byte, so the client part is prefix-free.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::json::cmp_utf16;
use crate::schema::TableSchema;

/// `_row_id`.
pub const ROW_ID: &str = "_row_id";
/// `_hlc`.
pub const HLC: &str = "_hlc";
/// `_deleted`.
pub const DELETED: &str = "_deleted";
/// `_live_version`.
pub const LIVE_VERSION: &str = "_live_version";
/// `_delete_version`.
pub const DELETE_VERSION: &str = "_delete_version";
/// `_col_versions`.
pub const COL_VERSIONS: &str = "_col_versions";
/// The number of reserved columns before the data columns in a state batch.
pub const RESERVED: usize = 6;
/// Schema metadata key holding the table name (shared with the delta contract).
pub const TABLE_METADATA_KEY: &str = "lakesync.table";

/// The Arrow schema of a state batch for `table`.
pub fn state_schema(table: &TableSchema) -> SchemaRef {
    let mut fields = vec![
        Field::new(ROW_ID, DataType::Utf8, false),
        Field::new(HLC, DataType::UInt64, false),
        Field::new(DELETED, DataType::Boolean, false),
        Field::new(LIVE_VERSION, DataType::Binary, true),
        Field::new(DELETE_VERSION, DataType::Binary, true),
        Field::new(
            COL_VERSIONS,
            DataType::List(Arc::new(Field::new_list_field(DataType::Binary, true))),
            false,
        ),
    ];
    fields.extend(table.columns.iter().map(|c| c.arrow_field()));
    Arc::new(
        Schema::new(fields)
            .with_metadata([(TABLE_METADATA_KEY.to_string(), table.table.clone())].into()),
    )
}

/// A borrowed version: what last-writer-wins compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version<'a> {
    /// The delta's HLC.
    pub hlc: u64,
    /// The writer.
    pub client_id: ClientKey<'a>,
    /// The deltaId bytes.
    pub delta_id: &'a [u8],
}

/// A client id, either as text or in its encoded key form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKey<'a> {
    /// Plain text.
    Text(&'a str),
    /// The escaped UTF-16BE form used inside version keys (without the terminator).
    Encoded(&'a [u8]),
}

impl Ord for Version<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hlc
            .cmp(&other.hlc)
            .then_with(|| cmp_client(self.client_id, other.client_id))
            .then_with(|| self.delta_id.cmp(other.delta_id))
    }
}

impl PartialOrd for Version<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn cmp_client(a: ClientKey<'_>, b: ClientKey<'_>) -> Ordering {
    match (a, b) {
        (ClientKey::Text(a), ClientKey::Text(b)) => cmp_utf16(a, b),
        (ClientKey::Encoded(a), ClientKey::Encoded(b)) => a.cmp(b),
        (a, b) => encode_client(a).cmp(&encode_client(b)),
    }
}

fn encode_client(key: ClientKey<'_>) -> Vec<u8> {
    match key {
        ClientKey::Encoded(bytes) => bytes.to_vec(),
        ClientKey::Text(text) => {
            let mut out = Vec::with_capacity(text.len() * 2);
            push_client(&mut out, text);
            out
        }
    }
}

fn push_client(out: &mut Vec<u8>, text: &str) {
    for unit in text.encode_utf16() {
        match unit {
            1..=0x7F => out.push(unit as u8 + 1),
            0 => out.extend_from_slice(&[1, 0, 0]),
            _ => {
                out.push(0x81);
                out.extend_from_slice(&unit.to_be_bytes());
            }
        }
    }
}

/// Decodes one encoded unit at `bytes[i..]`: `Some((unit, width))`, or `None` at the terminator
/// or on malformed input.
fn next_unit(bytes: &[u8], i: usize) -> Option<(u16, usize)> {
    match *bytes.get(i)? {
        0 => None,
        1 => Some((0, 3)).filter(|_| bytes.len() >= i + 3),
        b @ 2..=0x80 => Some((u16::from(b - 1), 1)),
        0x81 => Some((
            u16::from_be_bytes([*bytes.get(i + 1)?, *bytes.get(i + 2)?]),
            3,
        )),
        _ => None,
    }
}

impl<'a> Version<'a> {
    /// Appends this version's key bytes to `out`.
    pub fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hlc.to_be_bytes());
        match self.client_id {
            ClientKey::Text(text) => push_client(out, text),
            ClientKey::Encoded(bytes) => out.extend_from_slice(bytes),
        }
        out.push(0);
        out.extend_from_slice(self.delta_id);
    }

    /// This version's key bytes.
    pub fn key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 + 2 + 16);
        self.write_key(&mut out);
        out
    }

    /// Decodes key bytes written by [`Version::write_key`].
    pub fn from_key(key: &'a [u8]) -> Result<Self> {
        let bad = || Error::invalid("state", "malformed version key");
        let (hlc, rest) = key.split_first_chunk::<8>().ok_or_else(bad)?;
        let mut i = 0;
        while let Some((_, width)) = next_unit(rest, i) {
            i += width;
        }
        if rest.get(i) != Some(&0) {
            return Err(bad());
        }
        let delta_id = &rest[i + 1..];
        if delta_id.len() != 32 {
            return Err(bad());
        }
        Ok(Self {
            hlc: u64::from_be_bytes(*hlc),
            client_id: ClientKey::Encoded(&rest[..i]),
            delta_id,
        })
    }

    /// The client id as text (decoding an encoded key).
    pub fn client_text(&self) -> String {
        match self.client_id {
            ClientKey::Text(t) => t.to_string(),
            ClientKey::Encoded(bytes) => {
                let mut units = Vec::with_capacity(bytes.len());
                let mut i = 0;
                while let Some((unit, width)) = next_unit(bytes, i) {
                    units.push(unit);
                    i += width;
                }
                String::from_utf16_lossy(&units)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v<'a>(hlc: u64, client: &'a str, id: &'a [u8; 32]) -> Version<'a> {
        Version {
            hlc,
            client_id: ClientKey::Text(client),
            delta_id: id,
        }
    }

    #[test]
    fn key_round_trip_with_nul_and_astral_characters() {
        let id = [7u8; 32];
        for client in [
            "",
            "a",
            "a\0b",
            "\0",
            "zzz-client",
            "\u{1F600}x",
            "\u{FF01}",
        ] {
            let version = v(42, client, &id);
            let key = version.key();
            let back = Version::from_key(&key).unwrap();
            assert_eq!(back.hlc, 42);
            assert_eq!(back.client_text(), client);
            assert_eq!(back.delta_id, &id);
            assert_eq!(back.cmp(&version), Ordering::Equal);
        }
        assert!(Version::from_key(&[0; 5]).is_err());
    }

    proptest! {
        /// Key bytes order exactly as versions do.
        #[test]
        fn keys_order_like_versions(a in (0u64..4, "[a\\x00\u{FF01}\u{1F600}]{0,3}", 0u8..3), b in (0u64..4, "[a\\x00\u{FF01}\u{1F600}]{0,3}", 0u8..3)) {
            let (ia, ib) = ([a.2; 32], [b.2; 32]);
            let (va, vb) = (v(a.0, &a.1, &ia), v(b.0, &b.1, &ib));
            let (ka, kb) = (va.key(), vb.key());
            prop_assert_eq!(ka.cmp(&kb), va.cmp(&vb));
            let (da, db) = (Version::from_key(&ka).unwrap(), Version::from_key(&kb).unwrap());
            prop_assert_eq!(da.cmp(&db), va.cmp(&vb));
            prop_assert_eq!(da.cmp(&vb), va.cmp(&vb));
        }
    }
}
