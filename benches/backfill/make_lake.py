"""Write the backfill benchmark's lake table: N generated rows in a plain Iceberg table.

    python make_lake.py LAKE_DIR N

pyiceberg's SqlCatalog "lakesync" on LAKE_DIR/catalog.sqlite with warehouse LAKE_DIR/warehouse;
table bench.invoices(id string, account string, amount long, price double, paid boolean,
created timestamptz, note string), appended in chunks of 500,000 rows (one snapshot each). The
values are deterministic in the row number (the same N gives the same table). Prints the table's
row count and data size on stdout as `rows=N bytes=B`.
"""

import sys

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BooleanType,
    DoubleType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

lake, n = sys.argv[1], int(sys.argv[2])
CHUNK = 500_000
catalog = SqlCatalog(
    "lakesync", uri=f"sqlite:///{lake}/catalog.sqlite", warehouse=f"file://{lake}/warehouse"
)
catalog.create_namespace_if_not_exists("bench")
if catalog.table_exists("bench.invoices"):
    catalog.drop_table("bench.invoices")
schema = Schema(
    NestedField(1, "id", StringType(), required=True),
    NestedField(2, "account", StringType()),
    NestedField(3, "amount", LongType()),
    NestedField(4, "price", DoubleType()),
    NestedField(5, "paid", BooleanType()),
    NestedField(6, "created", TimestamptzType()),
    NestedField(7, "note", StringType()),
)
table = catalog.create_table("bench.invoices", schema=schema)
arrow = table.schema().as_arrow()
accounts = [f"acct-{k:03d}" for k in range(50)]
notes = [f"note {k:04d} {'x' * (k % 17)}" for k in range(1000)]
for start in range(0, n, CHUNK):
    i = range(start, min(n, start + CHUNK))
    batch = pa.table(
        [
            pa.array([f"inv-{k:09d}" for k in i]),
            pa.array([accounts[k % 50] for k in i]),
            pa.array([(k * 7919) % 1_000_000 for k in i], type=pa.int64()),
            pa.array([((k * 104729) % 100_000) / 100.0 for k in i]),
            pa.array([k % 3 == 0 for k in i]),
            pa.array(
                [1_767_225_600_000_000 + k * 1_000_000 for k in i],
                type=pa.timestamp("us", tz="UTC"),
            ),
            pa.array([None if k % 8 == 0 else notes[k % 1000] for k in i]),
        ],
        schema=arrow,
    )
    table.append(batch)
table = catalog.load_table("bench.invoices")
summary = table.current_snapshot().summary
print(f"rows={summary['total-records']} bytes={summary['total-files-size']}")
