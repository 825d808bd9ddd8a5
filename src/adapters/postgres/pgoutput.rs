//! The `pgoutput` logical replication message format (protocol version 1), decoded.
//!
//! Each message is one row of `pg_logical_slot_peek_binary_changes(…, 'proto_version', '1',
//! 'publication_names', …)`. The messages LakeSync acts on are Begin (a transaction's xid),
//! Relation (a table's columns, sent before its first change in a session and after any schema
//! change), Insert, Update, Delete and Commit (with the end LSN a slot can be advanced to);
//! Truncate, Type and Origin are decoded only far enough to be recognised. Column values arrive
//! in the text output format; an unchanged TOASTed value (`u`) is distinguished from NULL, so an
//! UPDATE that did not touch a large value does not claim to set it.
//!
//! Reference: "Logical Replication Message Formats" in the Postgres documentation.

use super::data_error;
use crate::Result;

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key an UPDATE or DELETE names the old row by).
    pub key: bool,
    /// The column name.
    pub name: String,
    /// The type OID.
    pub type_oid: u32,
}

/// A table as the publication describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID (how changes refer to it).
    pub id: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its replica identity setting: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Its columns, in table order.
    pub columns: Vec<RelationColumn>,
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value: not sent, not changed.
    Unchanged,
    /// The value in text output format.
    Text(String),
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A transaction starts.
    Begin {
        /// The LSN of its commit record.
        final_lsn: u64,
        /// Its (32-bit) transaction id.
        xid: u32,
    },
    /// A transaction ends.
    Commit {
        /// The LSN of the commit record.
        commit_lsn: u64,
        /// The LSN just past it: where a consumer that has this transaction resumes.
        end_lsn: u64,
    },
    /// A table description.
    Relation(Relation),
    /// A new row.
    Insert {
        /// The relation.
        relation: u32,
        /// The row.
        new: Vec<Cell>,
    },
    /// A changed row.
    Update {
        /// The relation.
        relation: u32,
        /// The old row (full with `REPLICA IDENTITY FULL`) or its old key (when the key
        /// changed), if sent.
        old: Option<Vec<Cell>>,
        /// The new row.
        new: Vec<Cell>,
    },
    /// A deleted row.
    Delete {
        /// The relation.
        relation: u32,
        /// The old row or its key.
        old: Vec<Cell>,
    },
    /// Tables were truncated.
    Truncate {
        /// The relations.
        relations: Vec<u32>,
    },
    /// A message LakeSync does not act on (Type, Origin, logical messages).
    Other(u8),
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Message> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => {
            let final_lsn = r.u64()?;
            let _commit_time = r.u64()?;
            let xid = r.u32()?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = r.u8()?;
            let commit_lsn = r.u64()?;
            let end_lsn = r.u64()?;
            Message::Commit {
                commit_lsn,
                end_lsn,
            }
        }
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _type_mod = r.u32()?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut marker = r.u8()?;
            let mut old = None;
            if marker == b'K' || marker == b'O' {
                old = Some(r.tuple()?);
                marker = r.u8()?;
            }
            if marker != b'N' {
                return Err(bad(format!("an Update has tuple marker {marker:?}")));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let marker = r.u8()?;
            if marker != b'K' && marker != b'O' {
                return Err(bad(format!("a Delete has tuple marker {marker:?}")));
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_>>()?;
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    })
}

fn bad(message: impl std::fmt::Display) -> crate::Error {
    data_error("decoding a pgoutput message", message)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(bad(format!(
                "message ends at byte {} but {n} more are needed at {}",
                self.bytes.len(),
                self.at
            )));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn expect(&mut self, marker: u8) -> Result<()> {
        let got = self.u8()?;
        if got == marker {
            Ok(())
        } else {
            Err(bad(format!(
                "expected tuple marker {:?}, got {:?}",
                marker as char, got as char
            )))
        }
    }

    fn cstr(&mut self) -> Result<String> {
        let rest = &self.bytes[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("an unterminated string"))?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|e| bad(format!("a name is not UTF-8: {e}")))?
            .to_string();
        self.at += len + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Cell>> {
        let n = self.u16()?;
        let mut cells = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let text = std::str::from_utf8(self.take(len)?)
                        .map_err(|e| bad(format!("a value is not UTF-8: {e}")))?;
                    Cell::Text(text.to_string())
                }
                other => {
                    return Err(bad(format!(
                        "column value kind {:?} (binary values are not requested)",
                        other as char
                    )));
                }
            });
        }
        Ok(cells)
    }
}

/// Parses an LSN as Postgres prints it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Formats an LSN as Postgres prints it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_update_with_an_unchanged_toast_value() {
        let mut m = vec![b'U'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&3u16.to_be_bytes());
        m.push(b't');
        m.extend_from_slice(&1u32.to_be_bytes());
        m.push(b'7');
        m.push(b'u');
        m.push(b'n');
        assert_eq!(
            decode(&m).unwrap(),
            Message::Update {
                relation: 16384,
                old: None,
                new: vec![Cell::Text("7".into()), Cell::Unchanged, Cell::Null],
            }
        );
    }

    #[test]
    fn decodes_a_relation_and_refuses_truncated_input() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&5u32.to_be_bytes());
        m.extend_from_slice(b"public\0items\0");
        m.push(b'd');
        m.extend_from_slice(&1u16.to_be_bytes());
        m.push(1);
        m.extend_from_slice(b"id\0");
        m.extend_from_slice(&20u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(&m).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.name, "items");
        assert!(rel.columns[0].key);
        assert!(decode(&m[..m.len() - 2]).is_err());
    }

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
