"""Write a plain (non-LakeSync) Iceberg table with pyiceberg, one step per call.

    python plain_iceberg.py CATALOG_SQLITE WAREHOUSE STEP

Uses pyiceberg's SqlCatalog named "lakesync" on the SQLite file and warehouse directory that
LakeSync's SQL catalogue is configured with. The table is `finance.invoices(id string, account
string, amount long)`. Steps:

- `create`: create the table and append inv-1..inv-3;
- `change`: append inv-4, rewrite inv-2 (an overwrite with a filter: pyiceberg deletes the old
  row copy-on-write and appends the new one), delete inv-3 (copy-on-write);
- `rows`: print the current rows as JSON lines, sorted by id.

Each step prints the current snapshot id on stderr.
"""

import json
import sys

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import EqualTo
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType

db, warehouse, step = sys.argv[1:4]
catalog = SqlCatalog("lakesync", uri=f"sqlite:///{db}", warehouse=f"file://{warehouse}")
ARROW = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("account", pa.string()),
        pa.field("amount", pa.int64()),
    ]
)


def rows(ids, accounts, amounts):
    return pa.table([ids, accounts, amounts], schema=ARROW)


if step == "create":
    catalog.create_namespace_if_not_exists("finance")
    schema = Schema(
        NestedField(1, "id", StringType(), required=True),
        NestedField(2, "account", StringType()),
        NestedField(3, "amount", LongType()),
    )
    table = catalog.create_table("finance.invoices", schema=schema)
    table.append(rows(["inv-1", "inv-2", "inv-3"], ["acme", "acme", "globex"], [100, 250, 75]))
elif step == "change":
    table = catalog.load_table("finance.invoices")
    table.append(rows(["inv-4"], ["globex"], [40]))
    table.overwrite(rows(["inv-2"], ["acme"], [999]), overwrite_filter=EqualTo("id", "inv-2"))
    table.delete(EqualTo("id", "inv-3"))
elif step == "rows":
    table = catalog.load_table("finance.invoices")
    for row in sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["id"]):
        print(json.dumps(row, sort_keys=True))
else:
    sys.exit(f"unknown step {step!r}")
table = catalog.load_table("finance.invoices")
print(f"snapshot {table.current_snapshot().snapshot_id}", file=sys.stderr)
