//! [`BigQueryDialect`]: materialised tables in BigQuery.
//!
//! Types: `string` STRING, `number` FLOAT64, `integer` INT64, `boolean` BOOL, `timestamp`
//! TIMESTAMP, `json` JSON; `row_id` STRING NOT NULL, `props JSON DEFAULT JSON '{}'`,
//! `deleted_at`/`synced_at` TIMESTAMP. Tables are `` `project.dataset.table` ``. BigQuery
//! enforces no keys, so the table has none; the upsert's `MERGE … ON` is what keeps one row per
//! key.
//!
//! The upsert is one `MERGE` per chunk of rows, the rows bound as one `ARRAY<STRUCT<…>>` parameter
//! `@rows` ([`BigQueryDialect::row_fields`]): `row_id`, the data columns, `deleted_at` (soft-delete
//! tables) and `synced_at`, as fields `c0`, `c1`, … (so no column name reaches the parameter's
//! type). Timestamps travel as INT64 microseconds and JSON as text, converted in the statement
//! (`TIMESTAMP_MICROS`, `PARSE_JSON`). A matched row has every data column, `deleted_at` and
//! `synced_at` overwritten and keeps its `props`.

use super::{qualified, quote_column};
use crate::Result;
use crate::kernel::materialise::{
    DELETED_AT_COLUMN, PROPS_COLUMN, ROW_ID_COLUMN, SYNCED_AT_COLUMN, SqlDialect,
    check_materialisable, conflict_columns, upsert_columns,
};
use crate::kernel::schema::{ColumnType, TableSchema};

/// The BigQuery dialect, for tables in `project.dataset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BigQueryDialect {
    /// The project.
    pub project: String,
    /// The dataset materialised tables live in.
    pub dataset: String,
}

impl BigQueryDialect {
    /// The parameter type a value of `column_type` travels as.
    pub fn param_type(column_type: ColumnType) -> &'static str {
        match column_type {
            ColumnType::String | ColumnType::Json | ColumnType::Null => "STRING",
            ColumnType::Number => "FLOAT64",
            ColumnType::Integer | ColumnType::Timestamp => "INT64",
            ColumnType::Boolean => "BOOL",
        }
    }

    /// The struct fields of the upsert's `@rows`, in [`upsert_columns`] order: `(c<i>, type)`.
    pub fn row_fields(schema: &TableSchema) -> Vec<(String, &'static str)> {
        upsert_columns(schema)
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let t = match schema.column(name) {
                    Some(c) => Self::param_type(c.column_type),
                    None if *name == ROW_ID_COLUMN => "STRING",
                    None => "INT64",
                };
                (format!("c{i}"), t)
            })
            .collect()
    }

    /// The expression turning field `v` of `@rows` into the column's type.
    fn from_param(column_type: Option<ColumnType>, name: &str, v: &str) -> String {
        match column_type {
            Some(ColumnType::Timestamp) => format!("TIMESTAMP_MICROS({v})"),
            Some(ColumnType::Json | ColumnType::Null) => format!("PARSE_JSON({v})"),
            Some(_) => v.to_string(),
            None if name == DELETED_AT_COLUMN || name == SYNCED_AT_COLUMN => {
                format!("TIMESTAMP_MICROS({v})")
            }
            None => v.to_string(),
        }
    }
}

impl SqlDialect for BigQueryDialect {
    fn name(&self) -> &'static str {
        "bigquery"
    }

    fn column_type(&self, column_type: ColumnType) -> &'static str {
        match column_type {
            ColumnType::String => "STRING",
            ColumnType::Number => "FLOAT64",
            ColumnType::Integer => "INT64",
            ColumnType::Boolean => "BOOL",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Json | ColumnType::Null => "JSON",
        }
    }

    fn row_id_type(&self) -> &'static str {
        "STRING"
    }

    fn props_type(&self) -> &'static str {
        "JSON"
    }

    fn timestamp_type(&self) -> &'static str {
        "TIMESTAMP"
    }

    fn placeholder(&self, index: usize) -> String {
        format!("@p{index}")
    }

    fn max_bind_params(&self) -> usize {
        // BigQuery caps a request's size, not its parameter count; rows travel in one array.
        10_000
    }

    fn props_default(&self) -> &'static str {
        "JSON '{}'"
    }

    fn quote(&self, name: &str) -> Result<String> {
        quote_column(name)
    }

    fn table_name(&self, table: &str) -> Result<String> {
        qualified(&self.project, &self.dataset, table)
    }

    /// `CREATE TABLE IF NOT EXISTS` without keys (BigQuery enforces none) and with a nullable
    /// `synced_at` (BigQuery cannot add a `NOT NULL` column later, and the upsert always sets it).
    fn create_table(&self, schema: &TableSchema) -> Result<String> {
        check_materialisable(schema)?;
        let mut defs = vec![format!("{} STRING NOT NULL", self.quote(ROW_ID_COLUMN)?)];
        for col in &schema.columns {
            defs.push(format!(
                "{} {}",
                self.quote(&col.name)?,
                self.column_type(col.column_type)
            ));
        }
        defs.push(format!(
            "{} JSON DEFAULT {}",
            self.quote(PROPS_COLUMN)?,
            self.props_default()
        ));
        if schema.is_soft_delete() {
            defs.push(format!("{} TIMESTAMP", self.quote(DELETED_AT_COLUMN)?));
        }
        defs.push(format!("{} TIMESTAMP", self.quote(SYNCED_AT_COLUMN)?));
        Ok(format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.table_name(&schema.table)?,
            defs.join(", ")
        ))
    }

    /// `MERGE … USING (SELECT … FROM UNNEST(@rows) AS r) AS s ON <conflict columns> WHEN MATCHED
    /// THEN UPDATE SET … WHEN NOT MATCHED THEN INSERT …`; binds `@rows` as
    /// [`BigQueryDialect::row_fields`]. `rows` is ignored: the array carries any number.
    fn upsert(&self, schema: &TableSchema, _rows: usize) -> Result<String> {
        let columns = upsert_columns(schema);
        let mut select = Vec::with_capacity(columns.len());
        for (i, name) in columns.iter().enumerate() {
            let column_type = schema.column(name).map(|c| c.column_type);
            select.push(format!(
                "{} AS {}",
                Self::from_param(column_type, name, &format!("r.c{i}")),
                self.quote(name)?
            ));
        }
        let on = conflict_columns(schema)
            .iter()
            .map(|c| self.quote(c).map(|q| format!("t.{q} = s.{q}")))
            .collect::<Result<Vec<_>>>()?
            .join(" AND ");
        let conflict = conflict_columns(schema);
        let set = columns
            .iter()
            .filter(|c| !conflict.contains(c))
            .map(|c| self.quote(c).map(|q| format!("{q} = s.{q}")))
            .collect::<Result<Vec<_>>>()?;
        let quoted = columns
            .iter()
            .map(|c| self.quote(c))
            .collect::<Result<Vec<_>>>()?;
        let values: Vec<String> = quoted.iter().map(|q| format!("s.{q}")).collect();
        let mut sql = format!(
            "MERGE {} AS t USING (SELECT {} FROM UNNEST(@rows) AS r) AS s ON {on}",
            self.table_name(&schema.table)?,
            select.join(", "),
        );
        if !set.is_empty() {
            sql.push_str(&format!(" WHEN MATCHED THEN UPDATE SET {}", set.join(", ")));
        }
        sql.push_str(&format!(
            " WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
            quoted.join(", "),
            values.join(", ")
        ));
        Ok(sql)
    }

    /// Deletes the rows whose ids are in the `ARRAY<STRING>` parameter `@ids`.
    fn hard_delete(&self, schema: &TableSchema, _rows: usize) -> Result<String> {
        Ok(format!(
            "DELETE FROM {} WHERE {} IN UNNEST(@ids)",
            self.table_name(&schema.table)?,
            self.quote(ROW_ID_COLUMN)?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::schema::ColumnDef;

    fn dialect() -> BigQueryDialect {
        BigQueryDialect {
            project: "test-proj".into(),
            dataset: "fin".into(),
        }
    }

    #[test]
    fn upsert_merges_an_array_of_structs() {
        let schema = TableSchema::new(
            "invoices",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("due", ColumnType::Timestamp),
                ColumnDef::new("meta", ColumnType::Json),
            ],
        );
        let sql = dialect().upsert(&schema, 0).unwrap();
        assert!(
            sql.starts_with(
                "MERGE `test-proj.fin.invoices` AS t USING (SELECT r.c0 AS `row_id`, r.c1 AS `title`, TIMESTAMP_MICROS(r.c2) AS `due`, PARSE_JSON(r.c3) AS `meta`,"
            ),
            "{sql}"
        );
        assert!(sql.contains("ON t.`row_id` = s.`row_id`"), "{sql}");
        assert!(
            sql.contains("WHEN MATCHED THEN UPDATE SET `title` = s.`title`"),
            "{sql}"
        );
        assert!(!sql.contains("`props` ="), "{sql}");
        let fields = BigQueryDialect::row_fields(&schema);
        assert_eq!(fields[2], ("c2".to_string(), "INT64"));
        let create = dialect().create_table(&schema).unwrap();
        assert!(
            create.contains("`props` JSON DEFAULT JSON '{}'"),
            "{create}"
        );
        assert!(dialect().table_name("bad`name").is_err());
        assert!(dialect().quote("x` OR 1=1").is_err());
    }
}
