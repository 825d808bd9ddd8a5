"""Count the rows a contender in the Postgres system benchmark wrote.

    python count_rows.py parquet DIR                                # every *.parquet under DIR
    python count_rows.py iceberg CATALOG_SQLITE WAREHOUSE NS.TABLE  # the table's current snapshot

Prints the count alone on stdout. Parquet files are counted from their footers (no data is read);
hidden files and directories (a leading `.` or `_`, e.g. dlt's `.dlt-pipelines`) are skipped. The
Iceberg table is opened with pyiceberg's SqlCatalog on the same SQLite file and warehouse, under
the catalogue name found in the file, and counted with a scan of its current snapshot (which reads
manifests, and data files only where delete files apply). scripts/bench-postgres.sh runs it with
the CI tools' Python (scripts/python-tools.sh: pyarrow and pyiceberg).
"""

import os
import sqlite3
import sys

import pyarrow.parquet as pq


def parquet_rows(root: str) -> int:
    total = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in files:
            if name.endswith(".parquet") and not name.startswith((".", "_")):
                total += pq.ParquetFile(os.path.join(folder, name)).metadata.num_rows
    return total


def iceberg_rows(db: str, warehouse: str, name: str) -> int:
    from pyiceberg.catalog.sql import SqlCatalog

    namespace, table = name.rsplit(".", 1)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT catalog_name FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
            (namespace, table),
        ).fetchone()
    if row is None:
        raise SystemExit(f"count_rows: no table {name} in {db}")
    catalog = SqlCatalog(row[0], uri=f"sqlite:///{db}", warehouse=f"file://{warehouse}")
    return catalog.load_table(name).scan().count()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "parquet":
        print(parquet_rows(argv[2]))
    elif len(argv) == 5 and argv[1] == "iceberg":
        print(iceberg_rows(argv[2], argv[3], argv[4]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
