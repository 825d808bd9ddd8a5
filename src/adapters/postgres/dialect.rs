//! [`PostgresDialect`]: materialised tables in Postgres.
//!
//! Types: `string` TEXT, `number` DOUBLE PRECISION, `integer` BIGINT, `boolean` BOOLEAN,
//! `timestamp` TIMESTAMPTZ, `json` JSONB; `row_id` TEXT, `props JSONB NOT NULL DEFAULT '{}'`,
//! `deleted_at`/`synced_at` TIMESTAMPTZ. Tables are qualified with the sink's schema.
//!
//! The upsert differs from the shared text: instead of one placeholder per value it binds **one
//! array per column** and reads them with `UNNEST`, so one statement carries any number of rows
//! (no bind limit, one plan per table shape). Timestamps travel as microseconds since the epoch
//! (`int8[]`) and JSON as text, converted in the statement.

use crate::Result;
use crate::kernel::materialise::{
    DELETED_AT_COLUMN, SYNCED_AT_COLUMN, SqlDialect, conflict_columns, upsert_assignments,
    upsert_columns,
};
use crate::kernel::schema::{ColumnType, TableSchema};

/// The Postgres dialect, for tables in `schema`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresDialect {
    /// The Postgres schema materialised tables live in.
    pub schema: String,
}

impl PostgresDialect {
    /// The array type a column of `column_type` is bound as in [`SqlDialect::upsert`].
    pub fn array_type(column_type: ColumnType) -> &'static str {
        match column_type {
            ColumnType::String | ColumnType::Json | ColumnType::Null => "text[]",
            ColumnType::Number => "float8[]",
            ColumnType::Integer | ColumnType::Timestamp => "int8[]",
            ColumnType::Boolean => "bool[]",
        }
    }

    /// The expression turning unnested value `v` into the column's type.
    fn from_unnested(column_type: ColumnType, v: &str) -> String {
        match column_type {
            ColumnType::Json | ColumnType::Null => format!("{v}::jsonb"),
            ColumnType::Timestamp => micros_to_timestamptz(v),
            _ => v.to_string(),
        }
    }
}

/// `timestamptz` from microseconds since the epoch, exactly.
pub fn micros_to_timestamptz(v: &str) -> String {
    format!("(TIMESTAMPTZ 'epoch' + {v} * INTERVAL '1 microsecond')")
}

impl SqlDialect for PostgresDialect {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn column_type(&self, column_type: ColumnType) -> &'static str {
        match column_type {
            ColumnType::String => "TEXT",
            ColumnType::Number => "DOUBLE PRECISION",
            ColumnType::Integer => "BIGINT",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Timestamp => "TIMESTAMPTZ",
            ColumnType::Json | ColumnType::Null => "JSONB",
        }
    }

    fn row_id_type(&self) -> &'static str {
        "TEXT"
    }

    fn props_type(&self) -> &'static str {
        "JSONB"
    }

    fn timestamp_type(&self) -> &'static str {
        "TIMESTAMPTZ"
    }

    fn placeholder(&self, index: usize) -> String {
        format!("${index}")
    }

    fn max_bind_params(&self) -> usize {
        65_535
    }

    fn table_name(&self, table: &str) -> Result<String> {
        Ok(format!(
            "{}.{}",
            self.quote(&self.schema)?,
            self.quote(table)?
        ))
    }

    /// `INSERT … SELECT … FROM UNNEST($1::text[], …) ON CONFLICT (…) DO UPDATE SET …`. Binds one
    /// array per column of [`upsert_columns`], in that order: `row_id` as `text[]`, data columns
    /// as [`PostgresDialect::array_type`], `deleted_at` and `synced_at` as `int8[]` of
    /// microseconds. `rows` is ignored: the arrays carry any number.
    fn upsert(&self, schema: &TableSchema, _rows: usize) -> Result<String> {
        let columns = upsert_columns(schema);
        let mut arrays = Vec::with_capacity(columns.len());
        let mut values = Vec::with_capacity(columns.len());
        for (i, name) in columns.iter().enumerate() {
            let v = format!("v{i}");
            let column_type = schema.column(name).map(|c| c.column_type);
            let (array, value) = match column_type {
                Some(t) => (Self::array_type(t), Self::from_unnested(t, &v)),
                None if *name == DELETED_AT_COLUMN || *name == SYNCED_AT_COLUMN => {
                    ("int8[]", micros_to_timestamptz(&v))
                }
                None => ("text[]", v.clone()),
            };
            arrays.push(format!("{}::{array}", self.placeholder(i + 1)));
            values.push(value);
        }
        let quoted = columns
            .iter()
            .map(|c| self.quote(c))
            .collect::<Result<Vec<_>>>()?;
        let aliases: Vec<String> = (0..columns.len()).map(|i| format!("v{i}")).collect();
        Ok(format!(
            "INSERT INTO {} ({}) SELECT {} FROM UNNEST({}) AS u({}) ON CONFLICT ({}) DO UPDATE SET {}",
            self.table_name(&schema.table)?,
            quoted.join(", "),
            values.join(", "),
            arrays.join(", "),
            aliases.join(", "),
            self.quote_list(&conflict_columns(schema))?,
            upsert_assignments(self, schema)?
        ))
    }

    /// Deletes the rows whose ids are in the one `text[]` bound.
    fn hard_delete(&self, schema: &TableSchema, _rows: usize) -> Result<String> {
        Ok(format!(
            "DELETE FROM {} WHERE {} = ANY($1::text[])",
            self.table_name(&schema.table)?,
            self.quote(crate::kernel::materialise::ROW_ID_COLUMN)?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::schema::ColumnDef;

    #[test]
    fn upsert_unnests_typed_arrays() {
        let d = PostgresDialect {
            schema: "app".into(),
        };
        let schema = TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", ColumnType::String),
                ColumnDef::new("due", ColumnType::Timestamp),
                ColumnDef::new("meta", ColumnType::Json),
            ],
        );
        let sql = d.upsert(&schema, 10).unwrap();
        assert!(sql.starts_with(
            "INSERT INTO \"app\".\"todos\" (\"row_id\", \"title\", \"due\", \"meta\", \"deleted_at\", \"synced_at\") SELECT v0, v1, (TIMESTAMPTZ 'epoch' + v2 * INTERVAL '1 microsecond'), v3::jsonb,"
        ), "{sql}");
        assert!(sql.contains("FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[])"), "{sql}");
        assert!(
            sql.contains("ON CONFLICT (\"row_id\") DO UPDATE SET \"title\" = excluded.\"title\""),
            "{sql}"
        );
        let create = d.create_table(&schema).unwrap();
        assert!(
            create.contains("\"props\" JSONB NOT NULL DEFAULT '{}'"),
            "{create}"
        );
        assert!(d.table_name("bad\"name").is_err());
    }
}
