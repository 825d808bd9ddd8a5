"""Read a LakeSync Iceberg table through an Iceberg REST catalogue with pyiceberg.

    python read_iceberg_rest.py CATALOG_URI WAREHOUSE NAMESPACE.TABLE

The catalogue is asked for an OAuth2 token with the client credential
AWS_ACCESS_KEY_ID:AWS_SECRET_ACCESS_KEY (what SeaweedFS's catalogue accepts), and the table's
files are read from the S3-compatible store at LAKESYNC_S3_ENDPOINT with the same keys and
AWS_REGION (default us-east-1), path-style.

Prints one JSON document on stdout:

- "rows": every row of the current snapshot, sorted by `_delta_id`, in the canonical form of
  read_iceberg.py (`_delta_id` as hex, timestamps as integer microseconds);
- "partition_spec": the default spec's fields as {"name", "transform", "source"};
- "snapshots": the summary (a string map) of every snapshot.

The first line on stderr says how many rows were read and how long it took.
"""

import json
import os
import sys
import time

from pyiceberg.catalog.rest import RestCatalog

from read_iceberg import canonical, cell


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    uri, warehouse, name = argv[1], argv[2], argv[3]
    key = os.environ["AWS_ACCESS_KEY_ID"]
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    started = time.monotonic()
    catalog = RestCatalog(
        "lakesync",
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
    table = catalog.load_table(name)
    arrow = canonical(table.scan().to_arrow())
    rows = [{k: cell(v) for k, v in row.items()} for row in arrow.to_pylist()]
    rows.sort(key=lambda r: r.get("_delta_id") or "")
    schema = table.schema()
    spec = [
        {
            "name": field.name,
            "transform": str(field.transform),
            "source": schema.find_column_name(field.source_id),
        }
        for field in table.spec().fields
    ]
    snapshots = []
    for snapshot in table.snapshots():
        summary = snapshot.summary
        entry = {"operation": str(summary.operation.value)} if summary else {}
        if summary:
            entry.update({k: str(v) for k, v in summary.additional_properties.items()})
        snapshots.append(entry)
    elapsed = time.monotonic() - started
    print(
        f"read_iceberg_rest: {len(rows)} rows of {name} in {len(snapshots)} snapshots "
        f"in {elapsed:.3f}s",
        file=sys.stderr,
    )
    json.dump(
        {"rows": rows, "partition_spec": spec, "snapshots": snapshots},
        sys.stdout,
        sort_keys=True,
        allow_nan=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
