"""Read the live rows of a compacted LakeSync table through an Iceberg REST catalogue, with
pyiceberg and with DuckDB's iceberg extension, as a reader that knows nothing of LakeSync would.

    python read_lww_rest.py CATALOG_URI WAREHOUSE NAMESPACE.TABLE

After a compaction (and before any later flush) a LakeSync table holds one base row per row id
with its last-writer-wins values; tombstones have `_op` = 3. So `SELECT * WHERE _op <> 3` is the
table's state. Settings as read_iceberg_rest.py and read_duckdb_iceberg.py.

Prints one JSON object: {"pyiceberg": rows, "duckdb": rows or null (no extension wheels)}, each
`rows` the live rows as {"_rowid", data columns…} sorted by `_rowid`, timestamps as integer
microseconds.
"""

import json
import os
import sys
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.expressions import NotEqualTo

from read_duckdb_iceberg import extension_file
from read_iceberg import canonical, cell

RESERVED = {"_op", "_client_id", "_hlc", "_delta_id", "_set", "_hlc_time", "_versions"}


def rows_of(table: pa.Table) -> list[dict]:
    table = canonical(table)
    keep = [n for n in table.schema.names if n not in RESERVED]
    rows = [{k: cell(v) for k, v in row.items()} for row in table.select(keep).to_pylist()]
    rows.sort(key=lambda r: r["_rowid"])
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    uri, warehouse, name = argv[1].rstrip("/"), argv[2], argv[3]
    key = os.environ["AWS_ACCESS_KEY_ID"]
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    catalog = RestCatalog(
        "lakesync",
        uri=uri,
        warehouse=warehouse,
        credential=f"{key}:{secret}",
        **{
            "s3.endpoint": os.environ["LAKESYNC_S3_ENDPOINT"],
            "s3.access-key-id": key,
            "s3.secret-access-key": secret,
            "s3.region": region,
            "s3.path-style-access": "true",
        },
    )
    table = catalog.load_table(name)
    py_rows = rows_of(table.scan(row_filter=NotEqualTo("_op", 3)).to_arrow())

    duck_rows = None
    files = {ext: extension_file(ext) for ext in ("httpfs", "avro", "iceberg")}
    if all(files.values()):
        endpoint = urlparse(os.environ["LAKESYNC_S3_ENDPOINT"])
        con = duckdb.connect()
        for ext, path in files.items():
            con.execute(f"INSTALL '{path}'")
            con.execute(f"LOAD {ext}")
        con.execute(
            "CREATE SECRET s3 (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, URL_STYLE 'path', USE_SSL ?)",
            [key, secret, region, endpoint.netloc, endpoint.scheme == "https"],
        )
        con.execute(
            "CREATE SECRET ice (TYPE iceberg, CLIENT_ID ?, CLIENT_SECRET ?, OAUTH2_SERVER_URI ?)",
            [key, secret, f"{uri}/v1/oauth/tokens"],
        )
        con.execute(f"ATTACH '{warehouse}' AS lake (TYPE iceberg, ENDPOINT '{uri}', SECRET ice)")
        duck_rows = rows_of(con.execute(f"SELECT * FROM lake.{name} WHERE _op <> 3").to_arrow_table())
    else:
        print("read_lww_rest: no DuckDB extension wheels; DuckDB skipped", file=sys.stderr)
    print(f"read_lww_rest: {len(py_rows)} live rows of {name}", file=sys.stderr)
    json.dump({"pyiceberg": py_rows, "duckdb": duck_rows}, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
