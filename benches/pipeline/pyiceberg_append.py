"""The peer in the pipeline benchmark: pyiceberg appending the same rows from an Arrow table.

Reads the benchmark's JSON lines into an Arrow table (not timed), then times appending it to a
fresh table in a SQL catalogue on SQLite with a local warehouse, in chunks of the same size as
LakeSync's epochs. Prints one JSON object with rows, seconds and rows/s.
"""

import json
import sys
import time

import pyarrow as pa
import pyarrow.json as pj
from pyiceberg.catalog.sql import SqlCatalog

path, workdir, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = pj.read_json(path, parse_options=pj.ParseOptions(newlines_in_values=False, unexpected_field_behavior="infer"))
# Same columns as LakeSync's table: nested JSON as text, the rest as read.
if "labels" in table.column_names:
    labels = [None if v is None else json.dumps(v, separators=(",", ":")) for v in table.column("labels").to_pylist()]
    table = table.set_column(table.column_names.index("labels"), "labels", pa.array(labels, pa.string()))
catalog = SqlCatalog("peer", uri=f"sqlite:///{workdir}/peer-catalog.sqlite", warehouse=f"file://{workdir}/peer-warehouse")
catalog.create_namespace_if_not_exists("bench")
ice = catalog.create_table("bench.tasks", schema=table.schema)
start = time.perf_counter()
for offset in range(0, table.num_rows, chunk):
    ice.append(table.slice(offset, chunk))
seconds = time.perf_counter() - start
print(json.dumps({"rows": table.num_rows, "seconds": seconds, "rows_per_s": table.num_rows / seconds}))
