"""Read a LakeSync Iceberg table with pyiceberg and print its rows as JSON lines.

    python read_iceberg.py CATALOG_SQLITE WAREHOUSE NAMESPACE.TABLE [CATALOG_NAME]

Opens pyiceberg's SqlCatalog on the same SQLite file and warehouse directory LakeSync's SQL
catalogue uses. The SQL catalogue keys its rows by catalogue name, so CATALOG_NAME must be the
name LakeSync was configured with (default "lakesync"). Scans the table's current snapshot to
Arrow and prints one JSON object per row, sorted by `_delta_id`, in a canonical form that does
not depend on the reader:

- `_delta_id` (fixed[32]) as lowercase hex;
- timestamps as integer microseconds since the Unix epoch;
- lists as JSON arrays, nulls as null, numbers and strings as themselves.

The first line on stderr says how many rows were read and how long the scan took.
"""

import json
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog


def canonical(table: pa.Table) -> pa.Table:
    """Timestamps become int64 microseconds; everything else is left as it is."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_timestamp(field.type):
            column = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
        columns.append(column)
    return pa.table(columns, names=table.schema.names)


def cell(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, list):
        return [cell(v) for v in value]
    return value


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    db, warehouse, name = argv[1], argv[2], argv[3]
    catalog_name = argv[4] if len(argv) == 5 else "lakesync"
    if "." not in name:
        print(f"table {name!r} must be NAMESPACE.TABLE", file=sys.stderr)
        return 2

    started = time.monotonic()
    catalog = SqlCatalog(
        catalog_name,
        uri=f"sqlite:///{db}",
        warehouse=f"file://{warehouse}",
    )
    table = catalog.load_table(name)
    arrow = canonical(table.scan().to_arrow())
    rows = [{k: cell(v) for k, v in row.items()} for row in arrow.to_pylist()]
    rows.sort(key=lambda r: r.get("_delta_id") or "")
    elapsed = time.monotonic() - started
    snapshot = table.current_snapshot()
    print(
        f"read_iceberg: {len(rows)} rows of {name} "
        f"(snapshot {snapshot.snapshot_id if snapshot else None}) in {elapsed:.3f}s",
        file=sys.stderr,
    )
    out = sys.stdout
    for row in rows:
        out.write(json.dumps(row, sort_keys=True, allow_nan=False))
        out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
