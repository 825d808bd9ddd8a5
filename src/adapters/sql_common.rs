//! Pieces the SQL sinks (SQLite, MySQL, …) share: the checks a prepared table and a written batch
//! must pass, and the planning half of materialisation.
//!
//! Materialising a set of touched rows is: load each row's *whole* logged history, fold it with
//! the kernel's LWW [`merge`], and plan the upserts and deletes with [`plan_materialise`]
//! ([`plan_from_history`]). Only the loading and the executing differ per database.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;

use crate::kernel::delta::RowDelta;
use crate::kernel::delta_batch::{RESERVED, batch_to_deltas, deltas_to_batch, table_schema_of};
use crate::kernel::materialise::{MaterialisePlan, before_delete_state, plan_materialise};
use crate::kernel::merge::merge;
use crate::kernel::schema::TableSchema;
use crate::runtime::api::TableRef;
use crate::{Error, Result};

/// What a SQL sink holds between commits: the prepared schema of each destination table, and the
/// deltas written since the last commit, per destination table in arrival order.
#[derive(Debug, Default)]
pub(crate) struct EpochBuffer {
    tables: HashMap<String, TableRef>,
    buffer: Vec<(String, Vec<RowDelta>)>,
}

impl EpochBuffer {
    /// Records `tables` as prepared (replacing earlier schemas of the same tables).
    pub(crate) fn prepared(&mut self, tables: &[TableRef]) {
        for table in tables {
            self.tables.insert(table.table.clone(), Arc::clone(table));
        }
    }

    /// Buffers a delta batch of `table`, which must be prepared and fit its prepared schema. The
    /// deltas are renamed to the table they belong to (a schema's `sourceTable`), as logs keep it.
    pub(crate) fn write(
        &mut self,
        table: &TableRef,
        batch: &RecordBatch,
        here: &str,
    ) -> Result<()> {
        let prepared = self.tables.get(&table.table).ok_or_else(|| {
            Error::internal(format!(
                "{here}: write to table {:?}, which was not prepared",
                table.table
            ))
        })?;
        check_batch_fits(prepared, batch, here)?;
        let mut deltas = batch_to_deltas(batch)?;
        let delta_table = prepared.delta_table();
        for d in &mut deltas {
            if d.table != delta_table {
                d.table = delta_table.to_string();
            }
        }
        match self.buffer.last_mut() {
            Some((name, buffered)) if *name == table.table => buffered.extend(deltas),
            _ => self.buffer.push((table.table.clone(), deltas)),
        }
        Ok(())
    }

    /// Every buffered delta, in arrival order.
    pub(crate) fn deltas(&self) -> Vec<&RowDelta> {
        self.buffer.iter().flat_map(|(_, d)| d.iter()).collect()
    }

    /// The rows touched per destination table, with each table's latest prepared schema (it may
    /// have evolved since the write).
    /// The buffered deltas of table `name`.
    pub(crate) fn deltas_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a RowDelta> {
        self.buffer
            .iter()
            .filter(move |(t, _)| t == name)
            .flat_map(|(_, d)| d.iter())
    }

    pub(crate) fn touched(&self, here: &str) -> Result<Vec<(&TableRef, Vec<&str>)>> {
        touched_rows(&self.buffer)
            .into_iter()
            .map(|(name, ids)| {
                let table = self.tables.get(name).ok_or_else(|| {
                    Error::internal(format!("{here}: table {name:?} is no longer prepared"))
                })?;
                Ok((table, ids))
            })
            .collect()
    }

    /// Empties the buffer; returns how many deltas it held.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.buffer.iter().map(|(_, d)| d.len()).sum();
        self.buffer.clear();
        n
    }

    /// The prepared table names.
    pub(crate) fn table_names(&self) -> Vec<&String> {
        self.tables.keys().collect()
    }
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Checks that a materialised table's settings (`primaryKey`, `softDelete`, `externalIdColumn`,
/// `sourceTable`) did not change between the recorded schema `old` and `new`.
pub(crate) fn check_settings_unchanged(old: &TableSchema, new: &TableSchema) -> Result<()> {
    let json = |v: serde_json::Result<String>| v.unwrap_or_else(|e| e.to_string());
    let settings = |s: &TableSchema| {
        [
            ("primaryKey", json(serde_json::to_string(&s.primary_key))),
            ("softDelete", s.is_soft_delete().to_string()),
            (
                "externalIdColumn",
                json(serde_json::to_string(&s.external_id_column)),
            ),
            ("sourceTable", json(serde_json::to_string(s.delta_table()))),
        ]
    };
    for ((what, was), (_, now)) in settings(old).into_iter().zip(settings(new)) {
        if was != now {
            return Err(Error::schema(format!(
                "{what} cannot change once the table is materialised (was {was}, now {now})"
            )));
        }
    }
    Ok(())
}

/// Checks that a delta batch fits the `prepared` schema of its table: it may predate an evolution
/// (fewer trailing columns), but every column it carries must be the prepared one at its position.
pub(crate) fn check_batch_fits(
    prepared: &TableSchema,
    batch: &RecordBatch,
    here: &str,
) -> Result<()> {
    let carried = table_schema_of(batch.schema_ref(), RESERVED)?;
    for (i, col) in carried.columns.iter().enumerate() {
        let fits = prepared
            .columns
            .get(i)
            .is_some_and(|p| p.name == col.name && p.column_type == col.column_type);
        if !fits {
            return Err(Error::schema(format!(
                "{here}: a batch for table {:?} has column {:?} ({}) at position {i}, which the prepared schema does not",
                prepared.table,
                col.name,
                col.column_type.name()
            )));
        }
    }
    Ok(())
}

/// The row ids touched per destination table by buffered `(table, deltas)` writes, tables in
/// first-write order, ids sorted.
pub(crate) fn touched_rows(buffer: &[(String, Vec<RowDelta>)]) -> Vec<(&str, Vec<&str>)> {
    let mut touched: Vec<(&str, BTreeSet<&str>)> = Vec::new();
    for (name, deltas) in buffer {
        let slot = match touched.iter().position(|(t, _)| t == name) {
            Some(slot) => slot,
            None => {
                touched.push((name, BTreeSet::new()));
                touched.len() - 1
            }
        };
        touched[slot]
            .1
            .extend(deltas.iter().map(|d| d.row_id.as_str()));
    }
    touched
        .into_iter()
        .map(|(t, ids)| (t, ids.into_iter().collect()))
        .collect()
}

/// Plans the writes that make `schema`'s materialised table hold the LWW fold of `history` (the
/// whole logged history of the rows concerned).
pub(crate) fn plan_from_history(
    schema: &TableSchema,
    history: &[RowDelta],
    here: &str,
) -> Result<MaterialisePlan> {
    let batch = deltas_to_batch(schema, history).map_err(|e| {
        Error::schema(format!(
            "{here}: materialising table {:?}: {e}",
            schema.table
        ))
    })?;
    let state = merge(schema, None, std::slice::from_ref(&batch))?;
    let before = if schema.is_soft_delete() {
        before_delete_state(schema, &state, std::slice::from_ref(&batch))?
    } else {
        None
    };
    plan_materialise(schema, &state, before.as_ref())
}
