//! The one place where the Arrow delta contract maps to Iceberg types, and back.
//!
//! A LakeSync lake table stores deltas, not row state: one Iceberg row per delta, with the
//! reserved columns first and the table's data columns after them, in the same stable order as
//! the delta contract (`lakesync_operators::delta_batch`).
//!
//! | delta contract | Iceberg | Arrow on the Iceberg side |
//! |---|---|---|
//! | `_op` UInt8 | `int`, required | Int32 |
//! | `_row_id` Utf8 | `_rowid` `string`, required | Utf8 |
//! | `_client_id` Utf8 (or a dictionary) | `string`, required | Utf8 |
//! | `_hlc` UInt64 | `long`, required | Int64 |
//! | `_delta_id` FixedSizeBinary(32) | `fixed[32]`, required | FixedSizeBinary(32) |
//! | `_set` List<UInt16> | `list<int>`, required, element required | List<Int32> |
//! | (derived from `_hlc`) | `_hlc_time` `timestamptz`, required (tables made since day partitioning) | Timestamp(µs, "+00:00") |
//! | (base rows only) | `_versions` `list<binary>`, optional, element optional | `List<LargeBinary>` |
//! | `string` column | `string`, optional | Utf8 |
//! | `number` column | `double`, optional | Float64 |
//! | `integer` column | `long`, optional | Int64 |
//! | `boolean` column | `boolean`, optional | Boolean |
//! | `timestamp` column | `timestamptz` (µs), optional | Timestamp(µs, "+00:00") |
//! | `json` / `null` column | `string` (the JSON text), optional | Utf8 |
//!
//! `_row_id` is the one column whose lake name differs: `_rowid`. Iceberg v3 reserves the name
//! `_row_id` for its row-lineage metadata column, and iceberg-rust 0.10.1's scan (and so
//! iceberg-datafusion) resolves a column of that name to the metadata column and fails ("field
//! not found") instead of reading the data column. For the same reason a data column may not
//! use a name of an Iceberg metadata column (`_file`, `_pos`, `_deleted`, …) or a lake reserved
//! name; [`iceberg_schema`] refuses such a schema.
//!
//! Iceberg has no unsigned types, so `_op` widens to `int` and `_hlc` becomes a `long`: an HLC
//! (48-bit millisecond wall clock, 16-bit counter) stays below 2^63 until about the year 6400, and
//! a batch carrying a larger one is refused rather than wrapped. `_delta_id` is a `fixed[32]`:
//! iceberg-rust's Parquet writer, its reader and pyiceberg all handle it, and it keeps the
//! idempotency key at its natural width. `json` and `string` columns are both Iceberg `string`s;
//! each data column's Iceberg `doc` records its LakeSync type (`lakesync.type=json`), so a
//! table's [`TableSchema`] can be recovered from the lake alone ([`table_schema_of`]).
//!
//! **Day partitioning.** A table LakeSync creates has one more column after the reserved ones,
//! `_hlc_time` (`timestamptz`, required): the wall-clock time of `_hlc` (its upper 48 bits,
//! milliseconds), derived on write. Iceberg transforms apply to timestamps, not to a packed
//! `long`, so this is what makes a real time partition possible: the table's partition spec
//! is `day(_hlc_time)` (partition field `_hlc_time_day`), and any engine prunes on a
//! `_hlc_time` filter. Tables created before this (without `_hlc_time`, unpartitioned) keep
//! working as they are: [`to_iceberg_batch`] fills `_hlc_time` only when the table has it, and
//! [`table_schema_of`] skips it.
//!
//! **Base rows.** Compaction ([`super::compact`]) replaces a table's deltas by *base rows*, one
//! per row id, holding the row's merged state (`lakesync_operators::compact`): the data columns
//! hold its last-writer-wins values, and `_versions` its version keys (`[live, delete, column…]`),
//! so LakeSync can rebuild the exact state and merge later deltas onto it. A delta row has a null
//! `_versions` (the sink writes none), a base row never. Tables made since compaction have
//! `_versions` after `_hlc_time`; an older table gains it (at the end, after its data columns) by
//! add-only evolution ([`versions_column`]) when it is first compacted. Every function here finds
//! the reserved and derived columns by name, so their position does not matter; the data
//! columns are the other columns, in order.
//!
//! Batches cross the boundary in both directions: [`to_iceberg_batch`] turns a delta batch into
//! a batch of a table's Iceberg Arrow schema (with the `PARQUET:field_id` metadata that
//! [`iceberg::arrow::schema_to_arrow_schema`] puts on every field, which iceberg-rust's Parquet
//! writer matches columns by), and [`to_delta_batch`] turns what an Iceberg scan or a query
//! returns back into a delta batch, so that a lake table can be read back as deltas. The round
//! trip is exact. [`to_iceberg_batch`] also takes a kernel base batch (the delta contract plus
//! `_versions`), and [`to_base_batch`] turns base rows read from the lake back into one.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use iceberg::spec::{
    ListType, NestedField, NestedFieldRef, PrimitiveType, Schema, Transform, Type,
    UnboundPartitionSpec,
};
use iceberg::transaction::AddColumn;

use crate::kernel::compact::{VERSIONS, versions_type};
use crate::kernel::delta_batch::{
    CLIENT_ID, DELTA_ID, DeltaColumns, HLC, OP, RESERVED, ROW_ID, SET, delta_schema,
};
use crate::kernel::schema::{ColumnDef, ColumnType, TableSchema};
use crate::{Error, Result};

/// Prefix of the Iceberg `doc` that records a data column's LakeSync type.
pub const TYPE_DOC_PREFIX: &str = "lakesync.type=";

/// The lake name of the delta contract's `_row_id` (Iceberg reserves `_row_id`).
pub const LAKE_ROW_ID: &str = "_rowid";

/// The lake column names of the reserved columns, in order.
pub const LAKE_RESERVED: [&str; RESERVED] = [OP, LAKE_ROW_ID, CLIENT_ID, HLC, DELTA_ID, SET];

/// The derived column holding `_hlc`'s wall-clock time, which lake tables are partitioned by.
pub const HLC_TIME: &str = "_hlc_time";

/// The name of the partition field `day(_hlc_time)`.
pub const HLC_DAY: &str = "_hlc_time_day";

/// The field id of [`HLC_TIME`] in a fresh schema (after the reserved columns and `_set`'s
/// element).
const HLC_TIME_ID: i32 = 8;

/// The field id of `_versions` in a fresh schema (its element is the next id).
const VERSIONS_ID: i32 = HLC_TIME_ID + 1;

/// The lake name of the delta-contract column `name` (itself for every column but `_row_id`).
pub fn lake_name(name: &str) -> &str {
    if name == ROW_ID { LAKE_ROW_ID } else { name }
}

/// The reserved columns as Iceberg fields, with the ids used in a fresh schema (the catalog
/// assigns its own ids when it creates the table; everything here goes by name).
fn reserved_fields() -> Vec<NestedFieldRef> {
    let set_element = NestedField::list_element(7, Type::Primitive(PrimitiveType::Int), true);
    vec![
        NestedField::required(1, OP, Type::Primitive(PrimitiveType::Int))
            .with_doc("LakeSync change kind: 1 insert, 2 update, 3 delete")
            .into(),
        NestedField::required(2, LAKE_ROW_ID, Type::Primitive(PrimitiveType::String))
            .with_doc("row identity within the table")
            .into(),
        NestedField::required(3, CLIENT_ID, Type::Primitive(PrimitiveType::String))
            .with_doc("the writer; last-writer-wins tie-break")
            .into(),
        NestedField::required(4, HLC, Type::Primitive(PrimitiveType::Long))
            .with_doc("hybrid logical clock of the change (48-bit ms wall clock, 16-bit counter)")
            .into(),
        NestedField::required(5, DELTA_ID, Type::Primitive(PrimitiveType::Fixed(32)))
            .with_doc("SHA-256 deltaId: the idempotency key")
            .into(),
        NestedField::required(6, SET, Type::List(ListType::new(set_element.into())))
            .with_doc("positions of the data columns this delta sets, in the delta's own order")
            .into(),
    ]
}

/// The Iceberg type a LakeSync column type is stored as.
pub fn iceberg_type(column_type: ColumnType) -> Type {
    Type::Primitive(match column_type {
        ColumnType::String | ColumnType::Json | ColumnType::Null => PrimitiveType::String,
        ColumnType::Number => PrimitiveType::Double,
        ColumnType::Integer => PrimitiveType::Long,
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::Timestamp => PrimitiveType::Timestamptz,
    })
}

fn type_doc(column_type: ColumnType) -> String {
    format!("{TYPE_DOC_PREFIX}{}", column_type.name())
}

/// The Iceberg schema of the lake table for `table`: reserved columns (required), then the data
/// columns (optional), in the delta contract's order.
///
/// A data column whose name is a lake reserved column or an Iceberg metadata column (which
/// iceberg-rust could not read back) is an [`Error::Schema`].
pub fn iceberg_schema(table: &TableSchema) -> Result<Schema> {
    check_lake_names(table)?;
    let mut fields = reserved_fields();
    fields.push(hlc_time_field());
    fields.push(versions_field(VERSIONS_ID));
    let first_data_id = VERSIONS_ID + 2;
    for (i, column) in table.columns.iter().enumerate() {
        let id = i32::try_from(i)
            .ok()
            .and_then(|i| i.checked_add(first_data_id))
            .ok_or_else(|| {
                Error::schema(format!("table {:?} has too many columns", table.table))
            })?;
        fields.push(
            NestedField::optional(id, &column.name, iceberg_type(column.column_type))
                .with_doc(type_doc(column.column_type))
                .into(),
        );
    }
    Schema::builder()
        .with_fields(fields)
        .build()
        .map_err(|e| Error::schema(format!("table {:?}: no Iceberg schema: {e}", table.table)))
}

fn hlc_time_field() -> NestedFieldRef {
    NestedField::required(
        HLC_TIME_ID,
        HLC_TIME,
        Type::Primitive(PrimitiveType::Timestamptz),
    )
    .with_doc(
        "wall-clock time of _hlc (its upper 48 bits, ms); the table is partitioned by its day",
    )
    .into()
}

/// `_versions` as an Iceberg field with id `id` (its element gets `id + 1`).
fn versions_field(id: i32) -> NestedFieldRef {
    NestedField::optional(id, VERSIONS, versions_iceberg_type(id + 1))
        .with_doc(VERSIONS_DOC)
        .into()
}

const VERSIONS_DOC: &str = "base rows only: version keys [live, delete, column…]; null on deltas";

fn versions_iceberg_type(element_id: i32) -> Type {
    let element =
        NestedField::list_element(element_id, Type::Primitive(PrimitiveType::Binary), false);
    Type::List(ListType::new(element.into()))
}

/// Whether the Iceberg schema `schema` has the `_versions` column base rows need.
pub fn has_versions(schema: &Schema) -> bool {
    schema.field_by_name(VERSIONS).is_some()
}

/// The schema-evolution step that gives an older lake table the `_versions` column (optional,
/// appended after the existing columns).
pub fn versions_column() -> AddColumn {
    AddColumn::builder()
        .name(VERSIONS)
        .field_type(versions_iceberg_type(0))
        .doc(VERSIONS_DOC)
        .build()
}

/// The partition spec of a new lake table with the Iceberg schema `schema` (made by
/// [`iceberg_schema`]): `day(_hlc_time)`.
pub fn partition_spec(schema: &Schema) -> Result<UnboundPartitionSpec> {
    let source = schema
        .field_by_name(HLC_TIME)
        .ok_or_else(|| Error::internal("a lake schema without _hlc_time"))?;
    UnboundPartitionSpec::builder()
        .add_partition_field(source.id, HLC_DAY, Transform::Day)
        .map(|b| b.build())
        .map_err(|e| Error::internal(format!("the day(_hlc_time) partition spec: {e}")))
}

/// Checks that no data column of `table` takes a name the lake cannot hold.
pub fn check_lake_names(table: &TableSchema) -> Result<()> {
    for column in &table.columns {
        if LAKE_RESERVED.contains(&column.name.as_str())
            || column.name == HLC_TIME
            || column.name == VERSIONS
            || iceberg::metadata_columns::is_metadata_column_name(&column.name)
        {
            return Err(Error::schema(format!(
                "table {:?} column {:?}: the name is reserved in Iceberg lake tables",
                table.table, column.name
            )));
        }
    }
    Ok(())
}

/// The schema-evolution step that appends `column` to an existing lake table (optional, typed
/// and documented like the columns [`iceberg_schema`] creates).
pub fn add_column(column: &ColumnDef) -> AddColumn {
    AddColumn::builder()
        .name(column.name.clone())
        .field_type(iceberg_type(column.column_type))
        .doc(type_doc(column.column_type))
        .build()
}

/// The Arrow schema of `schema`'s batches, with the `PARQUET:field_id` metadata on every field.
pub fn arrow_schema(schema: &Schema) -> Result<SchemaRef> {
    iceberg::arrow::schema_to_arrow_schema(schema)
        .map(Arc::new)
        .map_err(|e| Error::internal(format!("Iceberg schema has no Arrow form: {e}")))
}

/// Recovers the [`TableSchema`] named `table` from a lake table's Iceberg schema.
///
/// Fails with [`Error::Schema`] when the schema is not a LakeSync delta table: the reserved
/// columns are missing, out of order or of another type, or a data column has a type LakeSync
/// does not store. A data column's type comes from its `doc` (`lakesync.type=…`) when present,
/// else from its Iceberg type (`string` → string, `double` → number, `long` → integer,
/// `boolean`, `timestamptz` → timestamp).
pub fn table_schema_of(table: &str, schema: &Schema) -> Result<TableSchema> {
    let not_ours = |why: String| {
        Error::schema(format!(
            "Iceberg table {table:?} is not a LakeSync delta table: {why}"
        ))
    };
    for want in reserved_fields() {
        match schema.field_by_name(&want.name) {
            Some(have) if same_type(&have.field_type, &want.field_type) => {}
            Some(have) => {
                return Err(not_ours(format!(
                    "column {:?} has type {}, expected {}",
                    want.name, have.field_type, want.field_type
                )));
            }
            None => {
                return Err(not_ours(format!(
                    "it has no reserved column {:?}",
                    want.name
                )));
            }
        }
    }
    if let Some(time) = schema.field_by_name(HLC_TIME)
        && *time.field_type != Type::Primitive(PrimitiveType::Timestamptz)
    {
        return Err(not_ours(format!(
            "column {HLC_TIME:?} has type {}, expected timestamptz",
            time.field_type
        )));
    }
    if let Some(versions) = schema.field_by_name(VERSIONS)
        && !same_type(&versions.field_type, &versions_iceberg_type(0))
    {
        return Err(not_ours(format!(
            "column {VERSIONS:?} has type {}, expected list<binary>",
            versions.field_type
        )));
    }
    let data = schema.as_struct().fields().iter().filter(|f| {
        !LAKE_RESERVED.contains(&f.name.as_str()) && f.name != HLC_TIME && f.name != VERSIONS
    });
    let columns = data
        .map(|f| {
            let from_doc = f
                .doc
                .as_deref()
                .and_then(|d| d.strip_prefix(TYPE_DOC_PREFIX))
                .and_then(ColumnType::from_name)
                .filter(|t| same_type(&iceberg_type(*t), &f.field_type));
            let column_type = match from_doc {
                Some(t) => t,
                None => match *f.field_type {
                    Type::Primitive(PrimitiveType::String) => ColumnType::String,
                    Type::Primitive(PrimitiveType::Double) => ColumnType::Number,
                    Type::Primitive(PrimitiveType::Long) => ColumnType::Integer,
                    Type::Primitive(PrimitiveType::Boolean) => ColumnType::Boolean,
                    Type::Primitive(PrimitiveType::Timestamptz) => ColumnType::Timestamp,
                    ref other => {
                        return Err(not_ours(format!(
                            "data column {:?} has type {other}, which LakeSync does not store",
                            f.name
                        )));
                    }
                },
            };
            Ok(ColumnDef::new(f.name.clone(), column_type))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TableSchema::new(table, columns))
}

/// Iceberg types equal up to field ids (a created table's ids are the catalog's).
fn same_type(a: &Type, b: &Type) -> bool {
    match (a, b) {
        (Type::List(a), Type::List(b)) => {
            a.element_field.required == b.element_field.required
                && same_type(&a.element_field.field_type, &b.element_field.field_type)
        }
        (a, b) => a == b,
    }
}

/// Converts a delta batch to a batch of `target`, a lake table's Iceberg Arrow schema (see
/// [`arrow_schema`]).
///
/// Every column is matched by name: a column of `target` the batch lacks (the table has evolved
/// past the batch's schema, or `_versions` of a delta batch) is all nulls; a data column of the
/// batch that `target` lacks, or has with another type, is an [`Error::Schema`]. `_hlc_time` is
/// derived from `_hlc`. An `_hlc` of 2^63 or more is refused. `batch` may also be a kernel base
/// batch (`lakesync_operators::compact`), whose trailing `_versions` goes to the table's
/// `_versions`.
pub fn to_iceberg_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let cols = DeltaColumns::new(batch)?;
    if let Some(max) = arrow::compute::max(cols.hlc)
        && max > i64::MAX as u64
    {
        return Err(Error::invalid(
            "delta batch",
            format!("_hlc {max} does not fit an Iceberg long (it must stay below 2^63)"),
        ));
    }
    let source = batch.schema_ref();
    let table_name = || {
        source
            .metadata()
            .get(crate::kernel::state::TABLE_METADATA_KEY)
            .cloned()
            .unwrap_or_default()
    };
    for field in source.fields().iter().skip(RESERVED) {
        match target.field_with_name(field.name()) {
            Ok(t) if compatible(field.data_type(), t.data_type()) => {}
            Ok(t) => {
                return Err(Error::schema(format!(
                    "table {:?} column {:?} is {} in the batch but {} in the lake table",
                    table_name(),
                    field.name(),
                    field.data_type(),
                    t.data_type()
                )));
            }
            Err(_) => {
                return Err(Error::schema(format!(
                    "table {:?} column {:?} is not in the lake table (prepare the sink with the \
                     evolved schema first)",
                    table_name(),
                    field.name()
                )));
            }
        }
    }
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let name = field.name().as_str();
        let array = if let Some(i) = LAKE_RESERVED.iter().position(|r| *r == name) {
            // The delta contract's reserved columns are positional (checked above).
            Some(batch.column(i).clone())
        } else if name == HLC_TIME {
            Some(hlc_time(cols.hlc, field.data_type()))
        } else {
            source
                .index_of(name)
                .ok()
                .filter(|&j| j >= RESERVED)
                .map(|j| batch.column(j).clone())
        };
        columns.push(match array {
            Some(array) => cast_to(&array, field, "delta batch")?,
            None => new_null_array(field.data_type(), batch.num_rows()),
        });
    }
    for name in LAKE_RESERVED {
        if target.field_with_name(name).is_err() {
            return Err(Error::internal(format!(
                "the lake table's Iceberg Arrow schema has no reserved column {name:?}"
            )));
        }
    }
    RecordBatch::try_new(target.clone(), columns)
        .map_err(|e| Error::internal(format!("building an Iceberg batch: {e}")))
}

/// `_hlc_time` of each `_hlc`: its wall-clock milliseconds as microseconds, typed `data_type`
/// (the table's `timestamptz`). `_hlc` is below 2^63 here, so the product fits.
fn hlc_time(hlc: &arrow::array::UInt64Array, data_type: &DataType) -> ArrayRef {
    let micros: arrow::array::TimestampMicrosecondArray =
        arrow::compute::kernels::arity::unary(hlc, |h| ((h >> 16) as i64) * 1000);
    Arc::new(micros.with_data_type(data_type.clone()))
}

/// Brings a batch already in a lake table's Iceberg Arrow form to `target`, a later (add-only
/// evolved) version of that schema: columns are matched by name, added columns are all nulls.
pub fn align_iceberg_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema_ref() == target {
        return Ok(batch.clone());
    }
    let source = batch.schema_ref();
    for field in source.fields() {
        if target.field_with_name(field.name()).is_err() {
            return Err(Error::schema(format!(
                "column {:?} is not in the lake table's new schema (evolution is add-only)",
                field.name()
            )));
        }
    }
    let columns = target
        .fields()
        .iter()
        .map(|field| match source.index_of(field.name()) {
            Ok(j) => cast_to(batch.column(j), field, "Iceberg batch"),
            Err(_) => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(target.clone(), columns)
        .map_err(|e| Error::internal(format!("aligning an Iceberg batch: {e}")))
}

/// Converts a batch read from a lake table (an Iceberg scan, or a `SELECT *` through
/// [`crate::query`]) back to a delta batch of `table`.
///
/// Columns are matched by name; a data column the batch lacks is all nulls (the table evolved
/// after the batch's rows were written, or the query left it out); a reserved column it lacks, a
/// null or out-of-range reserved value (an `_op` outside 0..=255, a negative `_hlc`), or a column
/// of an unrelated type is an error.
pub fn to_delta_batch(table: &TableSchema, batch: &RecordBatch) -> Result<RecordBatch> {
    let target = delta_schema(table);
    let source = batch.schema_ref();
    let mut columns = Vec::with_capacity(target.fields().len());
    for (i, field) in target.fields().iter().enumerate() {
        let array = match source.index_of(lake_name(field.name())) {
            Ok(j) => {
                let array = batch.column(j);
                if !compatible(array.data_type(), field.data_type()) {
                    return Err(Error::schema(format!(
                        "table {:?} column {:?} is {} in the lake but {} in the delta contract",
                        table.table,
                        field.name(),
                        array.data_type(),
                        field.data_type()
                    )));
                }
                let cast = cast_to(array, field, "lake batch")?;
                if i < RESERVED && cast.null_count() > array.null_count() {
                    return Err(Error::invalid(
                        "lake batch",
                        format!(
                            "table {:?} column {:?} holds a value outside the delta contract's \
                             range",
                            table.table,
                            field.name()
                        ),
                    ));
                }
                cast
            }
            Err(_) if i >= RESERVED => new_null_array(field.data_type(), batch.num_rows()),
            Err(_) => {
                return Err(Error::invalid(
                    "lake batch",
                    format!(
                        "table {:?} has no reserved column {:?}; select every column to read \
                         deltas back",
                        table.table,
                        field.name()
                    ),
                ));
            }
        };
        columns.push(array);
    }
    let out = RecordBatch::try_new(target, columns)
        .map_err(|e| Error::invalid("lake batch", format!("table {:?}: {e}", table.table)))?;
    // Checks the reserved columns (no nulls, `_set` positions within the data columns).
    DeltaColumns::new(&out)?;
    Ok(out)
}

/// Converts base rows read from a lake table (rows whose `_versions` is not null) to a kernel
/// base batch of `table` (`lakesync_operators::compact::base_schema`): [`to_delta_batch`], then
/// `_versions` as `List<Binary>`.
pub fn to_base_batch(table: &TableSchema, batch: &RecordBatch) -> Result<RecordBatch> {
    let deltas = to_delta_batch(table, batch)?;
    let versions = batch
        .schema_ref()
        .index_of(VERSIONS)
        .map_err(|_| {
            Error::invalid(
                "lake batch",
                format!("table {:?} has no {VERSIONS:?} column", table.table),
            )
        })
        .map(|j| batch.column(j))?;
    let field = Field::new(VERSIONS, versions_type(), false);
    if !compatible(versions.data_type(), field.data_type()) {
        return Err(Error::schema(format!(
            "table {:?} column {VERSIONS:?} is {} in the lake, expected a list of binary",
            table.table,
            versions.data_type()
        )));
    }
    let versions = cast_to(versions, &field, "lake batch")?;
    let schema = crate::kernel::compact::base_schema(table);
    let mut columns = deltas.columns().to_vec();
    columns.push(versions);
    RecordBatch::try_new(schema, columns)
        .map_err(|e| Error::invalid("lake batch", format!("table {:?}: {e}", table.table)))
}

/// Casts `array` to `field`'s type, keeping `field`'s nested field names and metadata (a cast
/// to a list type takes the target's element field). Values that do not fit become nulls,
/// which the callers check for.
fn cast_to(array: &ArrayRef, field: &Field, what: &'static str) -> Result<ArrayRef> {
    if array.data_type() == field.data_type() {
        return Ok(array.clone());
    }
    let options = CastOptions {
        safe: true,
        ..CastOptions::default()
    };
    cast_with_options(array, field.data_type(), &options).map_err(|e| {
        Error::invalid(
            what,
            format!(
                "column {:?} cannot be cast from {} to {}: {e}",
                field.name(),
                array.data_type(),
                field.data_type()
            ),
        )
    })
}

/// Whether a column of type `from` may be cast to `to` in either direction of the mapping:
/// the same type up to nested field names/metadata and time-zone spelling, string encodings
/// (Utf8, LargeUtf8, Utf8View, a dictionary of them), binary widths of 32, and the integer
/// widenings and narrowings of the reserved columns.
fn compatible(from: &DataType, to: &DataType) -> bool {
    use DataType as D;
    let is_string = |t: &DataType| matches!(t, D::Utf8 | D::LargeUtf8 | D::Utf8View);
    match (from, to) {
        (a, b) if a == b => true,
        (D::Dictionary(_, value), to) => compatible(value, to),
        (a, b) if is_string(a) && is_string(b) => true,
        (
            D::Timestamp(TimeUnit::Microsecond, Some(_)),
            D::Timestamp(TimeUnit::Microsecond, Some(_)),
        ) => true,
        (
            D::FixedSizeBinary(32) | D::Binary | D::LargeBinary | D::BinaryView,
            D::FixedSizeBinary(32),
        ) => true,
        (D::Binary | D::LargeBinary | D::BinaryView, D::Binary | D::LargeBinary) => true,
        (
            D::List(a) | D::LargeList(a) | D::ListView(a) | D::LargeListView(a),
            D::List(b) | D::LargeList(b),
        ) => compatible(a.data_type(), b.data_type()),
        (D::UInt8 | D::UInt16 | D::Int32, D::Int32 | D::UInt8 | D::UInt16) => true,
        (D::UInt64 | D::Int64, D::Int64 | D::UInt64) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::delta::{ColumnDelta, DeltaOp, RowDelta};
    use crate::kernel::delta_batch::{batch_to_deltas, deltas_to_batch};
    use crate::kernel::hlc::HlcTimestamp;
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    use serde_json::{Value, json};

    fn todos() -> TableSchema {
        use ColumnType as T;
        TableSchema::new(
            "todos",
            vec![
                ColumnDef::new("title", T::String),
                ColumnDef::new("done", T::Boolean),
                ColumnDef::new("priority", T::Integer),
                ColumnDef::new("score", T::Number),
                ColumnDef::new("due", T::Timestamp),
                ColumnDef::new("meta", T::Json),
                ColumnDef::new("extra", T::Null),
            ],
        )
    }

    fn delta(op: DeltaOp, row: &str, cols: Vec<(&str, Value)>, hlc: u64) -> RowDelta {
        let cols = cols
            .into_iter()
            .map(|(c, v)| ColumnDelta::new(c, v))
            .collect();
        RowDelta::new(op, "todos", row, "client-a", cols, HlcTimestamp(hlc))
    }

    fn sample() -> RecordBatch {
        let deltas = vec![
            delta(
                DeltaOp::Insert,
                "r1",
                vec![
                    ("meta", json!({"b": 1, "a": [1, 2.5]})),
                    ("title", json!("hi")),
                    ("done", json!(false)),
                    ("extra", json!(null)),
                ],
                (1_700_000_000_000 << 16) | 1,
            ),
            delta(
                DeltaOp::Update,
                "r1",
                vec![
                    ("title", Value::Null),
                    ("priority", json!(7)),
                    ("score", json!(0.1)),
                ],
                (1_700_000_000_001 << 16) | 2,
            ),
            delta(
                DeltaOp::Update,
                "r2",
                vec![("due", json!("2026-11-26T10:00:00.123456Z"))],
                (1_700_000_000_002 << 16) | 3,
            ),
            delta(DeltaOp::Delete, "r2", vec![], i64::MAX as u64),
        ];
        deltas_to_batch(&todos(), &deltas).unwrap()
    }

    #[test]
    fn schema_maps_every_column_type() {
        let schema = iceberg_schema(&todos()).unwrap();
        let fields = schema.as_struct().fields();
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "_op",
                "_rowid",
                "_client_id",
                "_hlc",
                "_delta_id",
                "_set",
                "_hlc_time",
                "_versions",
                "title",
                "done",
                "priority",
                "score",
                "due",
                "meta",
                "extra"
            ]
        );
        assert!(fields[..=RESERVED].iter().all(|f| f.required));
        assert!(fields[RESERVED + 1..].iter().all(|f| !f.required));
        let types: Vec<String> = fields.iter().map(|f| f.field_type.to_string()).collect();
        assert_eq!(types[0], "int");
        assert_eq!(types[3], "long");
        assert_eq!(types[4], "fixed(32)");
        assert_eq!(types[6], "timestamptz");
        assert_eq!(types[7], "list");
        assert_eq!(types[10], "long");
        assert_eq!(types[11], "double");
        assert_eq!(types[12], "timestamptz");
        assert_eq!(types[13], "string");
        let spec = partition_spec(&schema).unwrap();
        assert_eq!(spec.fields().len(), 1);
        assert_eq!(spec.fields()[0].name, HLC_DAY);
        assert_eq!(spec.fields()[0].source_id, fields[RESERVED].id);
        assert_eq!(spec.fields()[0].transform, Transform::Day);
        match fields[5].field_type.as_ref() {
            Type::List(list) => {
                assert!(list.element_field.required);
                assert_eq!(
                    *list.element_field.field_type,
                    Type::Primitive(PrimitiveType::Int)
                );
            }
            other => panic!("_set is {other}"),
        }
        assert_eq!(table_schema_of("todos", &schema).unwrap(), todos());
    }

    #[test]
    fn delta_batch_round_trips_through_the_iceberg_form_exactly() {
        let batch = sample();
        let target = arrow_schema(&iceberg_schema(&todos()).unwrap()).unwrap();
        let iceberg = to_iceberg_batch(&batch, &target).unwrap();
        assert_eq!(iceberg.schema_ref(), &target);
        assert_eq!(iceberg.column(0).data_type(), &DataType::Int32);
        assert_eq!(iceberg.column(3).data_type(), &DataType::Int64);
        assert!(
            target
                .fields()
                .iter()
                .all(|f| f.metadata().contains_key("PARQUET:field_id"))
        );
        // _hlc_time is the HLC's wall clock (ms) in µs: the last delta's HLC is 2^63 - 1.
        let hlc_time = iceberg
            .column(RESERVED)
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(hlc_time.value(0), 1_700_000_000_000 * 1000);
        assert_eq!(
            hlc_time.value(iceberg.num_rows() - 1),
            (i64::MAX >> 16) * 1000
        );
        let back = to_delta_batch(&todos(), &iceberg).unwrap();
        assert_eq!(back, batch);
        assert_eq!(
            batch_to_deltas(&back).unwrap(),
            batch_to_deltas(&batch).unwrap()
        );
    }

    #[test]
    fn evolution_fills_added_columns_with_nulls_and_refuses_strangers() {
        let mut wider = todos();
        wider
            .columns
            .push(ColumnDef::new("points", ColumnType::Integer));
        let target = arrow_schema(&iceberg_schema(&wider).unwrap()).unwrap();
        let batch = sample();
        let iceberg = to_iceberg_batch(&batch, &target).unwrap();
        assert_eq!(iceberg.column(iceberg.num_columns() - 1).null_count(), 4);
        // Read back with the narrower schema: the extra lake column is ignored.
        assert_eq!(to_delta_batch(&todos(), &iceberg).unwrap(), batch);
        // Read back with the wider schema: the added column is untouched by every delta.
        let wide_back = to_delta_batch(&wider, &iceberg).unwrap();
        assert_eq!(
            batch_to_deltas(&wide_back).unwrap(),
            batch_to_deltas(&batch).unwrap()
        );
        // An older Iceberg batch aligns to the wider schema.
        let narrow = to_iceberg_batch(
            &batch,
            &arrow_schema(&iceberg_schema(&todos()).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(align_iceberg_batch(&narrow, &target).unwrap(), iceberg);

        // A batch with a column the lake table lacks is refused.
        let narrow_target = arrow_schema(&iceberg_schema(&todos()).unwrap()).unwrap();
        let wide_batch = deltas_to_batch(
            &wider,
            &[delta(DeltaOp::Update, "r", vec![("points", json!(3))], 1)],
        )
        .unwrap();
        let err = to_iceberg_batch(&wide_batch, &narrow_target)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"points\" is not in the lake table"), "{err}");
    }

    #[test]
    fn reserved_columns_are_found_by_name_wherever_they_are() {
        // An older table: no _hlc_time, data columns, then _versions added by evolution.
        let mut fields = reserved_fields();
        let mut id = 100;
        for column in &todos().columns {
            id += 1;
            fields.push(
                NestedField::optional(id, &column.name, iceberg_type(column.column_type))
                    .with_doc(type_doc(column.column_type))
                    .into(),
            );
        }
        fields.push(versions_field(200));
        let old = Schema::builder().with_fields(fields).build().unwrap();
        assert!(has_versions(&old));
        assert_eq!(table_schema_of("todos", &old).unwrap(), todos());
        let target = arrow_schema(&old).unwrap();
        let batch = sample();
        let iceberg = to_iceberg_batch(&batch, &target).unwrap();
        assert_eq!(
            iceberg.column(iceberg.num_columns() - 1).null_count(),
            batch.num_rows()
        );
        assert_eq!(to_delta_batch(&todos(), &iceberg).unwrap(), batch);
    }

    #[test]
    fn base_batches_round_trip_through_the_iceberg_form() {
        use crate::kernel::compact::{base_to_state, state_to_base};
        let state = crate::kernel::merge::merge(&todos(), None, &[sample()]).unwrap();
        let base = state_to_base(&todos(), &state).unwrap();
        let target = arrow_schema(&iceberg_schema(&todos()).unwrap()).unwrap();
        let iceberg = to_iceberg_batch(&base, &target).unwrap();
        assert_eq!(iceberg.column_by_name(VERSIONS).unwrap().null_count(), 0);
        let back = to_base_batch(&todos(), &iceberg).unwrap();
        assert_eq!(back, base);
        assert_eq!(base_to_state(&todos(), &back).unwrap(), state);
    }

    #[test]
    fn hlc_beyond_a_long_is_refused() {
        let mut d = delta(DeltaOp::Delete, "r", vec![], 0);
        d.hlc = HlcTimestamp(u64::MAX);
        let batch = deltas_to_batch(&todos(), &[d]).unwrap();
        let target = arrow_schema(&iceberg_schema(&todos()).unwrap()).unwrap();
        let err = to_iceberg_batch(&batch, &target).unwrap_err().to_string();
        assert!(err.contains("below 2^63"), "{err}");
    }

    #[test]
    fn names_iceberg_reserves_are_refused() {
        for name in [
            "_rowid",
            "_file",
            "_pos",
            "_deleted",
            "_versions",
            "_hlc_time",
        ] {
            let table = TableSchema::new("t", vec![ColumnDef::new(name, ColumnType::String)]);
            let err = iceberg_schema(&table).unwrap_err().to_string();
            assert!(
                err.contains("reserved in Iceberg lake tables"),
                "{name}: {err}"
            );
        }
        assert_eq!(lake_name("_row_id"), "_rowid");
        assert_eq!(lake_name("_hlc"), "_hlc");
    }

    #[test]
    fn foreign_tables_are_named_in_the_error() {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .unwrap();
        let err = table_schema_of("events", &schema).unwrap_err().to_string();
        assert!(
            err.contains("\"events\" is not a LakeSync delta table"),
            "{err}"
        );
    }
}
