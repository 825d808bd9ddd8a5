//! Routing row changes to a client by the row's visibility before and after each change.
//!
//! The original filtered *deltas* by the columns they carry, so a DELETE (which carries no
//! columns) or an UPDATE that does not carry the filtered column never reached a client whose
//! rules filter on that column: the client kept a row it should have lost, or missed a change
//! to a row it can see. Here a change is routed by the *row*: for a batch of changed rows, the
//! caller supplies the rows' state before the change and after it (aligned: same length, same
//! order, the table's data columns by name, optionally `_deleted`; a row that did not exist
//! before is all-null or has `_deleted` true or null), and [`visibility`] evaluates the client's
//! [`ClientFilter`] on both:
//!
//! | before | after | route | what the client is sent |
//! |---|---|---|---|
//! | visible | visible | `keep` | the delta as is |
//! | hidden | visible | `enter` | the whole row, as it is after the change |
//! | visible | hidden | `leave` | a removal of the row |
//! | hidden | hidden | — | nothing |
//!
//! A DELETE makes the row hidden after (a deleted row is visible to no one), so it reaches, as a
//! removal, exactly the clients that could see the row; an UPDATE that moves a row out of a
//! client's scope does the same, and one that moves a row into it sends the whole row, even
//! when the delta itself carries only the column that changed.
//!
//! **No leak, no miss** (DESIGN §4). Suppose a client's replica holds exactly the rows visible to
//! it, with their current values. Apply the table above to a change: a row visible before and
//! after is in the replica and the delta brings it to its new values; a row that becomes visible
//! was not in the replica and arrives whole; a row that becomes hidden was in the replica and is
//! removed; a row hidden throughout was not in the replica and nothing is sent. In every case
//! the replica again holds exactly the visible rows with their current values, so by induction
//! over the changes (each row's changes routed in order, so one change's `after` is the next
//! one's `before`) the replica converges to exactly the rows its rules allow — nothing it may
//! not see is ever sent, and nothing it may see is ever left out. When a client's claims or the
//! rules change, the same argument applies with `before` evaluated under the old filter and
//! `after` under the new one; that is the caller's to arrange.

use arrow_array::{BooleanArray, RecordBatch};

use crate::error::{Error, Result};
use crate::rules::ClientFilter;

/// How each changed row reaches one client. The three masks are disjoint, never null, and one
/// entry per changed row.
#[derive(Clone, Debug, PartialEq)]
pub struct Visibility {
    /// Visible before and after: forward the delta as is.
    pub keep: BooleanArray,
    /// Visible after but not before: send the whole row, as it is after the change.
    pub enter: BooleanArray,
    /// Visible before but not after: send a removal of the row.
    pub leave: BooleanArray,
}

impl Visibility {
    /// Rows the client is sent anything about (`keep | enter | leave`).
    pub fn any(&self) -> BooleanArray {
        BooleanArray::new(
            &(self.keep.values() | self.enter.values()) | self.leave.values(),
            None,
        )
    }
}

/// Routes a batch of changed rows of `table` for the client `filter` was compiled for, from the
/// rows' state `before` and `after` the change (see the module docs).
///
/// Fails when the two batches do not have the same number of rows, or when
/// [`ClientFilter::matches`] fails on either.
pub fn visibility(
    filter: &ClientFilter,
    table: &str,
    before: &RecordBatch,
    after: &RecordBatch,
) -> Result<Visibility> {
    if before.num_rows() != after.num_rows() {
        return Err(Error::internal(format!(
            "visibility of table {table:?}: {} rows before the change but {} after",
            before.num_rows(),
            after.num_rows()
        )));
    }
    // `matches` never returns nulls, so the value buffers are the whole answer.
    let was = filter.matches(table, before)?;
    let is = filter.matches(table, after)?;
    let (was, is) = (was.values(), is.values());
    Ok(Visibility {
        keep: BooleanArray::new(was & is, None),
        enter: BooleanArray::new(&!was & is, None),
        leave: BooleanArray::new(was & &!is, None),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Array, ArrayRef, Int64Array, StringArray};
    use arrow_schema::{Field, Schema};
    use serde_json::json;

    use super::*;
    use crate::rules::{Claims, SyncRules};

    /// A state batch of `todos`: `user_id`, `priority`, `_deleted`.
    fn state(rows: &[(Option<&str>, Option<i64>, Option<bool>)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("user_id", arrow_schema::DataType::Utf8, true),
            Field::new("priority", arrow_schema::DataType::Int64, true),
            Field::new("_deleted", arrow_schema::DataType::Boolean, true),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| r.0).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<BooleanArray>()),
        ];
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    /// user-a's filter: their own todos with priority at least 3.
    fn user_a() -> ClientFilter {
        let rules = SyncRules::from_value(&json!({"version": 1, "buckets": [
            {"name": "user-todos", "tables": ["todos"], "filters": [
                {"column": "user_id", "op": "eq", "value": "jwt:sub"},
                {"column": "priority", "op": "gte", "value": "3"}]}]}))
        .unwrap();
        ClientFilter::new(&rules, &Claims::from_jwt_payload(&json!({"sub": "user-a"})))
    }

    fn bits(array: &BooleanArray) -> Vec<bool> {
        assert_eq!(array.null_count(), 0);
        array.values().iter().collect()
    }

    /// (keep, enter, leave) per row.
    fn routes(v: &Visibility) -> Vec<(bool, bool, bool)> {
        let (k, e, l) = (bits(&v.keep), bits(&v.enter), bits(&v.leave));
        (0..k.len()).map(|i| (k[i], e[i], l[i])).collect()
    }

    const KEEP: (bool, bool, bool) = (true, false, false);
    const ENTER: (bool, bool, bool) = (false, true, false);
    const LEAVE: (bool, bool, bool) = (false, false, true);
    const NONE: (bool, bool, bool) = (false, false, false);

    #[test]
    fn routes_deletes_updates_and_inserts() {
        let before = state(&[
            // 0: DELETE of a visible row.
            (Some("user-a"), Some(5), Some(false)),
            // 1: UPDATE of another column (the delta does not carry user_id or priority).
            (Some("user-a"), Some(5), Some(false)),
            // 2: UPDATE moving the row out of scope (priority drops).
            (Some("user-a"), Some(5), Some(false)),
            // 3: UPDATE moving the row into scope (reassigned to user-a).
            (Some("user-b"), Some(5), Some(false)),
            // 4: INSERT of a visible row (no state before).
            (None, None, None),
            // 5: DELETE of a row user-a never saw.
            (Some("user-b"), Some(5), Some(false)),
            // 6: a later UPDATE resurrects a deleted row.
            (None, None, Some(true)),
        ]);
        let after = state(&[
            (None, None, Some(true)),
            (Some("user-a"), Some(5), Some(false)),
            (Some("user-a"), Some(1), Some(false)),
            (Some("user-a"), Some(5), Some(false)),
            (Some("user-a"), Some(3), Some(false)),
            (None, None, Some(true)),
            (Some("user-a"), Some(4), Some(false)),
        ]);
        let v = visibility(&user_a(), "todos", &before, &after).unwrap();
        assert_eq!(routes(&v), [LEAVE, KEEP, LEAVE, ENTER, ENTER, NONE, ENTER]);
        assert_eq!(bits(&v.any()), [true, true, true, true, true, false, true]);

        // Another table: nothing is visible, nothing is routed.
        let v = visibility(&user_a(), "notes", &before, &after).unwrap();
        assert!(routes(&v).iter().all(|r| *r == NONE));
    }

    #[test]
    fn without_rules_only_existence_matters() {
        let everything = ClientFilter::unfiltered();
        let before = state(&[
            (Some("x"), Some(1), Some(false)),
            (None, None, None),
            (Some("x"), Some(1), Some(false)),
        ]);
        let after = state(&[
            (Some("y"), Some(2), Some(false)),
            (Some("x"), None, Some(false)),
            (None, None, Some(true)),
        ]);
        let v = visibility(&everything, "todos", &before, &after).unwrap();
        assert_eq!(routes(&v), [KEEP, ENTER, LEAVE]);
    }

    #[test]
    fn misaligned_batches_are_an_error() {
        let err = visibility(
            &user_a(),
            "todos",
            &state(&[]),
            &state(&[(None, None, None)]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("0 rows before the change but 1 after"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod proptests {
    //! The replica property (DESIGN §4): a client that applies exactly what [`visibility`] routes
    //! to it holds, after every batch, exactly the rows its rules allow, with their current values.

    use std::collections::{BTreeMap, HashMap};

    use arrow_array::cast::AsArray;
    use arrow_array::{Array, RecordBatch, UInt32Array};
    use arrow_select::concat::concat_batches;
    use arrow_select::take::take_record_batch;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::delta::{ColumnDelta, DeltaOp, RowDelta};
    use crate::delta_batch::{cell_to_json, deltas_to_batch};
    use crate::hlc::HlcTimestamp;
    use crate::merge::merge;
    use crate::rules::{Claims, SyncRules};
    use crate::schema::{ColumnDef, ColumnType, TableSchema};
    use crate::state;

    type Rows = BTreeMap<String, BTreeMap<String, Value>>;

    fn table() -> TableSchema {
        TableSchema::new(
            "t",
            vec![
                ColumnDef::new("team", ColumnType::String),
                ColumnDef::new("prio", ColumnType::Integer),
                ColumnDef::new("note", ColumnType::String),
            ],
        )
    }

    /// The visible columns of `rows` (indices into a state batch), by row id.
    fn values(table: &TableSchema, s: &RecordBatch, row: usize) -> BTreeMap<String, Value> {
        let versions = s.column(5).as_list::<i32>().value(row);
        table
            .columns
            .iter()
            .enumerate()
            .filter(|(pos, _)| *pos < versions.len() && versions.is_valid(*pos))
            .map(|(pos, def)| {
                let v =
                    cell_to_json(s.column(state::RESERVED + pos), row, def.column_type).unwrap();
                (def.name.clone(), v)
            })
            .collect()
    }

    fn index(s: Option<&RecordBatch>) -> HashMap<String, u32> {
        s.map(|s| {
            let ids = s.column(0).as_string::<i32>();
            (0..s.num_rows())
                .map(|i| (ids.value(i).to_string(), i as u32))
                .collect()
        })
        .unwrap_or_default()
    }

    fn deltas() -> impl Strategy<Value = Vec<Vec<RowDelta>>> {
        let team = prop_oneof![Just(Value::Null), Just(json!("red")), Just(json!("blue"))];
        let one = (
            0u8..3,
            0u8..5,
            0u8..3,
            0u64..8,
            team,
            proptest::option::of(0i64..6),
            any::<bool>(),
        );
        proptest::collection::vec(proptest::collection::vec(one, 1..8), 1..8).prop_map(|batches| {
            batches
                .into_iter()
                .map(|batch| {
                    batch
                        .into_iter()
                        .map(|(op, row, client, hlc, team, prio, note)| {
                            let op = [DeltaOp::Insert, DeltaOp::Update, DeltaOp::Delete]
                                [usize::from(op)];
                            let mut cols = Vec::new();
                            if op != DeltaOp::Delete {
                                if op == DeltaOp::Insert || !team.is_null() {
                                    cols.push(ColumnDelta::new("team", team));
                                }
                                if let Some(p) = prio {
                                    cols.push(ColumnDelta::new("prio", json!(p)));
                                }
                                if note {
                                    cols.push(ColumnDelta::new("note", json!(format!("n{hlc}"))));
                                }
                            }
                            RowDelta::new(
                                op,
                                "t",
                                format!("r{row}"),
                                format!("c{client}"),
                                cols,
                                HlcTimestamp(hlc),
                            )
                        })
                        .collect()
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn replica_converges_to_exactly_the_visible_rows(batches in deltas(), team in prop_oneof![Just("red"), Just("blue")], min_prio in 0i64..6) {
            let t = table();
            let rules = SyncRules::from_value(&json!({"version": 1, "buckets": [
                {"name": "team", "tables": ["t"], "filters": [{"column": "team", "op": "eq", "value": "jwt:team"}]},
                {"name": "urgent", "tables": ["t"], "filters": [{"column": "prio", "op": "gte", "value": min_prio.to_string()}]}
            ]})).unwrap();
            let filter = ClientFilter::new(&rules, &Claims::new().with("sub", ["u"]).with("team", [team]));
            let mut state: Option<RecordBatch> = None;
            let mut replica = Rows::new();
            for deltas in &batches {
                let next = merge(&t, state.as_ref(), &[deltas_to_batch(&t, deltas).unwrap()]).unwrap();
                // The changed rows, aligned before and after (absent before = null row).
                let (old, new) = (index(state.as_ref()), index(Some(&next)));
                let mut changed: Vec<&str> = deltas.iter().map(|d| d.row_id.as_str()).collect();
                changed.sort_unstable();
                changed.dedup();
                // A row absent before is looked up as a tombstone appended to the old state.
                let tombstone = RowDelta::new(DeltaOp::Delete, "t", "absent", "c", vec![], HlcTimestamp(1));
                let tombstone = merge(&t, None, &[deltas_to_batch(&t, &[tombstone]).unwrap()]).unwrap();
                let padded = match &state {
                    Some(s) => concat_batches(&s.schema(), [s, &tombstone]).unwrap(),
                    None => tombstone,
                };
                let absent = padded.num_rows() as u32 - 1;
                let before_idx = UInt32Array::from(changed.iter().map(|r| old.get(*r).copied().unwrap_or(absent)).collect::<Vec<_>>());
                let after_idx = UInt32Array::from(changed.iter().map(|r| new[*r]).collect::<Vec<_>>());
                let before = take_record_batch(&padded, &before_idx).unwrap();
                let after = take_record_batch(&next, &after_idx).unwrap();
                let v = visibility(&filter, "t", &before, &after).unwrap();
                for (i, row) in changed.iter().enumerate() {
                    if v.keep.value(i) || v.enter.value(i) {
                        replica.insert(row.to_string(), values(&t, &after, i));
                    } else if v.leave.value(i) {
                        replica.remove(*row);
                    }
                }
                // After every batch: exactly the visible rows, with their current values.
                let visible = filter.matches("t", &next).unwrap();
                let expected: Rows = (0..next.num_rows())
                    .filter(|&i| visible.value(i))
                    .map(|i| (next.column(0).as_string::<i32>().value(i).to_string(), values(&t, &next, i)))
                    .collect();
                prop_assert_eq!(&replica, &expected);
                state = Some(next);
            }
        }
    }
}
