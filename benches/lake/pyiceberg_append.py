"""The peer in the lake benchmark: pyiceberg appending the same Arrow data LakeSync wrote.

    python pyiceberg_append.py DATA.arrow CATALOG_URI WAREHOUSE NAMESPACE SOURCE_TABLE PEER_TABLE CHUNK

Reads DATA.arrow (an Arrow IPC file of the rows in the lake table's own Iceberg Arrow form; not
timed), creates PEER_TABLE in NAMESPACE with the schema and partition spec of SOURCE_TABLE (the
table LakeSync wrote; day(_hlc_time)), and times appending the rows CHUNK at a time: one
snapshot per chunk, as LakeSync commits one snapshot per epoch. Connection as in
tests/python/read_iceberg_rest.py (REST catalogue with the AWS_* keys as OAuth2 credential, files
on LAKESYNC_S3_ENDPOINT path-style).

Prints one JSON object: rows, seconds, rows_per_s.
"""

import json
import os
import sys
import time

import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog


def main(argv: list[str]) -> int:
    if len(argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    path, uri, warehouse, namespace, source, peer, chunk = argv[1:8]
    chunk = int(chunk)
    key = os.environ["AWS_ACCESS_KEY_ID"]
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    catalog = RestCatalog(
        "peer",
        uri=uri,
        warehouse=warehouse,
        credential=f"{key}:{secret}",
        **{
            "s3.endpoint": os.environ["LAKESYNC_S3_ENDPOINT"],
            "s3.access-key-id": key,
            "s3.secret-access-key": secret,
            "s3.region": os.environ.get("AWS_REGION", "us-east-1"),
            "s3.path-style-access": "true",
        },
    )
    with pa.memory_map(path) as source_file:
        data = pa.ipc.open_file(source_file).read_all()
    data = data.combine_chunks()
    ours = catalog.load_table(f"{namespace}.{source}")
    try:
        catalog.drop_table(f"{namespace}.{peer}")
    except Exception:  # noqa: BLE001 - absent is fine
        pass
    table = catalog.create_table(
        f"{namespace}.{peer}", schema=ours.schema(), partition_spec=ours.spec()
    )
    # The same Arrow data, with pyiceberg's view of the schema (field ids come from the table).
    data = data.cast(table.schema().as_arrow())
    started = time.perf_counter()
    for offset in range(0, data.num_rows, chunk):
        table.append(data.slice(offset, chunk))
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": data.num_rows, "seconds": seconds, "rows_per_s": data.num_rows / seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
