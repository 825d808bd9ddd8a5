"""Read a LakeSync Iceberg table through an Iceberg REST catalogue with DuckDB's iceberg extension.

    python read_duckdb_iceberg.py CATALOG_URI WAREHOUSE NAMESPACE.TABLE

DuckDB 1.5.5 with the `iceberg`, `avro` and `httpfs` extensions from their PyPI wheels
(`duckdb-extension-*==1.5.5`, installed by scripts/python-tools.sh), loaded from the wheels'
files, so no extension repository is contacted. The catalogue is attached with the OAuth2 client
credential AWS_ACCESS_KEY_ID:AWS_SECRET_ACCESS_KEY; the files are read from LAKESYNC_S3_ENDPOINT
with the same keys, path-style.

Prints one JSON object: {"rows", "delta_ids", "hlc_sum" (a decimal string), "days": {day: rows}}.
Exit status 3 (and nothing on stdout) when the extension wheels are not installed.
"""

import importlib.util
import json
import os
import sys
import time
from urllib.parse import urlparse

import duckdb


def extension_file(name: str) -> str | None:
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "extensions", f"v{duckdb.__version__}", f"{name}.duckdb_extension")
    return path if os.path.exists(path) else None


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    uri, warehouse, name = argv[1].rstrip("/"), argv[2], argv[3]
    files = {ext: extension_file(ext) for ext in ("httpfs", "avro", "iceberg")}
    missing = [ext for ext, path in files.items() if path is None]
    if missing:
        print(f"read_duckdb_iceberg: no extension wheel for {missing} (duckdb {duckdb.__version__})",
              file=sys.stderr)
        return 3
    started = time.monotonic()
    key = os.environ["AWS_ACCESS_KEY_ID"]
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    endpoint = urlparse(os.environ["LAKESYNC_S3_ENDPOINT"])
    con = duckdb.connect()
    for ext, path in files.items():
        con.execute(f"INSTALL '{path}'")
        con.execute(f"LOAD {ext}")
    con.execute(
        "CREATE SECRET s3 (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, URL_STYLE 'path', USE_SSL ?)",
        [key, secret, os.environ.get("AWS_REGION", "us-east-1"), endpoint.netloc,
         endpoint.scheme == "https"],
    )
    con.execute(
        "CREATE SECRET ice (TYPE iceberg, CLIENT_ID ?, CLIENT_SECRET ?, OAUTH2_SERVER_URI ?)",
        [key, secret, f"{uri}/v1/oauth/tokens"],
    )
    con.execute(f"ATTACH '{warehouse}' AS lake (TYPE iceberg, ENDPOINT '{uri}', SECRET ice)")
    table = "lake." + name
    rows, delta_ids, hlc_sum = con.execute(
        f"SELECT count(*), count(DISTINCT _delta_id), sum(_hlc)::VARCHAR FROM {table}"
    ).fetchone()
    days = dict(
        con.execute(
            f"SELECT strftime(_hlc_time AT TIME ZONE 'UTC', '%Y-%m-%d'), count(*) FROM {table} GROUP BY 1"
        ).fetchall()
    )
    print(f"read_duckdb_iceberg: {rows} rows of {name} in {time.monotonic() - started:.3f}s",
          file=sys.stderr)
    json.dump({"rows": rows, "delta_ids": delta_ids, "hlc_sum": hlc_sum, "days": days}, sys.stdout,
              sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
