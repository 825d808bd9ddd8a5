"""The dlt peer in the Postgres system benchmark: one table → local Parquet files.

    python dlt_to_parquet.py SQLALCHEMY_URL TABLE OUT_DIR

dlt's `sql_database` source with the pyarrow backend (rows are fetched through SQLAlchemy and
psycopg2 and turned into Arrow tables, `chunk_size` rows at a time), into the `filesystem`
destination writing Parquet under OUT_DIR/bench/TABLE/. The pipeline's working directory is
OUT_DIR/.dlt-pipelines, so nothing is left in ~/.dlt. The URL must name the driver:
`postgresql+psycopg2://…` (SQLAlchemy 2.1's bare `postgresql://` means psycopg 3, which is not
installed). Everything is dlt's default but the backend and the file format. Prints the load info
on stderr; scripts/bench-postgres.sh times the whole process and counts the rows written.
"""

import os
import sys

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

import dlt  # noqa: E402
from dlt.sources.sql_database import sql_database  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    url, table, out_dir = argv[1], argv[2], os.path.abspath(argv[3])
    pipeline = dlt.pipeline(
        pipeline_name="pg_bench_dlt",
        pipelines_dir=os.path.join(out_dir, ".dlt-pipelines"),
        destination=dlt.destinations.filesystem(bucket_url="file://" + out_dir),
        dataset_name="bench",
    )
    source = sql_database(url, table_names=[table], backend="pyarrow")
    info = pipeline.run(source, loader_file_format="parquet")
    print(info, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
