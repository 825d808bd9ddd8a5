"""The Flight throughput ceiling: how fast pyarrow.flight moves delta-contract batches when the
server does nothing with them, and (with --ours) how close LakeSync's gateway comes.

    python benches/flight_ceiling.py [--batches N] [--rows R] [--ours grpc://HOST:PORT]
                                     [--table bench] [--pull-limit L]

    env LAKESYNC_TOKEN   a JWT for our server (`authorization: Bearer ...`); unset, the client
                         names itself with `x-lakesync-client-id` (--client-id, default bench).

The reference is a pyarrow.flight server that this script starts in a subprocess of its own
(`--serve-reference` is that mode): do_put keeps the batches in memory and answers one small
PutResult per batch; do_get serves them back as they are. Both speak the gateway's contract, so
one client drives both:

- push: one DoPut stream of N batches (default 100) of R rows (default 10 000), descriptor
  command {"table", "client_id"}, timed from the call to the last PutResult read. The batches
  are built before the clock starts; only `_hlc` is stamped per batch at push time (the gateway
  rejects HLCs more than 5 s from its clock).
- pull: DoGet with ticket {"table", "cursor", "limit": L (default 10 000)}, following the cursor
  in the last message's app_metadata while hasMore, timed from the first call to the last batch.

Rows: the delta contract (`_op`, `_row_id`, `_client_id`, `_hlc`, `_delta_id`, `_set`), then 8
data columns c0..c7 = string (title, ~20 chars), string (owner, ~8), string (description,
~60-120), integer (priority), integer (estimate minutes), number (progress), number (cost),
boolean (done). scripts/bench-gateway.sh declares the same columns for our server's table.

Prints one JSON line per target and direction on stdout:
{"target": "pyarrow-reference"|"lakesync", "direction": "push"|"pull", "rows", "bytes",
 "seconds", "rows_per_s", "mb_per_s"}; bytes are the Arrow buffers' size (RecordBatch.nbytes),
MB = 10^6 bytes. With --ours, then {"ratio": "lakesync/pyarrow-reference", "direction",
"rows_per_s"} per direction. Exits 1 if a target loses or rejects rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

HLC_SHIFT = 16
TABLE_METADATA_KEY = b"lakesync.table"

# The data columns; scripts/bench-gateway.sh declares the same ones (name, pipeline type).
DATA_COLUMNS = [
    ("c0", "string"),  # title
    ("c1", "string"),  # owner
    ("c2", "string"),  # description
    ("c3", "integer"),  # priority
    ("c4", "integer"),  # estimate, minutes
    ("c5", "number"),  # progress
    ("c6", "number"),  # cost
    ("c7", "boolean"),  # done
]
ARROW_TYPES = {"string": pa.utf8(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}


def delta_schema(table: str) -> pa.Schema:
    fields = [
        pa.field("_op", pa.uint8(), nullable=False),
        pa.field("_row_id", pa.utf8(), nullable=False),
        pa.field("_client_id", pa.utf8(), nullable=False),
        pa.field("_hlc", pa.uint64(), nullable=False),
        pa.field("_delta_id", pa.binary(32), nullable=False),
        pa.field("_set", pa.list_(pa.uint16()), nullable=False),
    ] + [pa.field(name, ARROW_TYPES[kind], nullable=True) for name, kind in DATA_COLUMNS]
    return pa.schema(fields, metadata={TABLE_METADATA_KEY: table.encode()})


class Generator:
    """The benchmark's batches: everything but `_hlc`, which is stamped at push time."""

    WORDS = (
        "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
        "november oscar papa quebec romeo sierra tango uniform victor whiskey xray"
    ).split()
    OWNERS = [f"user-{i:03d}" for i in range(200)]
    DATA_VARIANTS = 4

    def __init__(self, rows: int, client_id: str, table: str, seed: int = 7):
        self.rows, self.client_id = rows, client_id
        self.schema = delta_schema(table)
        self.rng = random.Random(seed)
        n = len(DATA_COLUMNS)
        # Every row is an INSERT setting all eight columns: one shared `_set` array.
        self.set_column = pa.ListArray.from_arrays(
            pa.array(range(0, (rows + 1) * n, n), pa.int32()), pa.array(list(range(n)) * rows, pa.uint16())
        )
        self.op_column = pa.array([1] * rows, pa.uint8())
        self.client_column = pa.array([client_id] * rows, pa.utf8())
        self.counter = pa.array(range(rows), pa.uint64())
        self.run = os.urandom(4).hex()
        self.variants: list[list[pa.Array]] = []

    def words(self, low: int, high: int) -> str:
        return " ".join(self.rng.choices(self.WORDS, k=self.rng.randint(low, high)))

    def batch(self, index: int) -> list[pa.Array]:
        """The columns of batch `index`, `_hlc` left as None. Row ids and delta ids are unique;
        the data columns repeat every DATA_VARIANTS batches (Flight does not compress, so this
        changes nothing on the wire and spares seconds of generation)."""
        r = self.rows
        base = index * r
        if len(self.variants) < self.DATA_VARIANTS:
            self.variants.append(self.data())
        return [
            self.op_column,
            pa.array([f"{self.run}-{base + i:010d}" for i in range(r)], pa.utf8()),
            self.client_column,
            None,
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), r, [None, pa.py_buffer(os.urandom(32 * r))]),
            self.set_column,
        ] + self.variants[index % self.DATA_VARIANTS]

    def data(self) -> list[pa.Array]:
        r, rng = self.rows, self.rng
        return [
            pa.array([self.words(2, 4) for _ in range(r)], pa.utf8()),
            pa.array([rng.choice(self.OWNERS) for _ in range(r)], pa.utf8()),
            pa.array([self.words(10, 20) for _ in range(r)], pa.utf8()),
            pa.array([rng.randint(0, 4) for _ in range(r)], pa.int64()),
            pa.array([rng.randint(15, 480) for _ in range(r)], pa.int64()),
            pa.array([rng.random() for _ in range(r)], pa.float64()),
            pa.array([rng.uniform(0, 10_000) for _ in range(r)], pa.float64()),
            pa.array([rng.random() < 0.3 for _ in range(r)], pa.bool_()),
        ]


class HlcStamp:
    """Strictly increasing `wall_ms << 16 | counter` HLCs, a batch at a time."""

    def __init__(self) -> None:
        self.next = 0

    def stamp(self, counter: pa.Array) -> pa.Array:
        start = max((time.time_ns() // 1_000_000) << HLC_SHIFT, self.next)
        self.next = start + len(counter)
        return pc.add(counter, pa.scalar(start, pa.uint64()))


# ---------------------------------------------------------------------------------------------
# The reference server


class ReferenceServer(flight.FlightServerBase):
    """Keeps what do_put receives and serves it back on do_get; nothing else."""

    def __init__(self, location: str):
        super().__init__(location)
        self.tables: dict[str, tuple[pa.Schema, list[pa.RecordBatch], list[int]]] = {}

    def do_put(self, context, descriptor, reader, writer):
        table = json.loads(descriptor.command)["table"]
        batches, ends = [], []
        rows = 0
        for chunk in reader:
            batches.append(chunk.data)
            rows += chunk.data.num_rows
            ends.append(rows)
            meta = {"accepted": chunk.data.num_rows, "rejected": 0, "rejections": [], "cursor": str(rows)}
            writer.write(pa.py_buffer(json.dumps(meta).encode()))
        self.tables[table] = (reader.schema, batches, ends)

    def do_get(self, context, ticket):
        request = json.loads(ticket.ticket)
        schema, batches, ends = self.tables[request["table"]]
        cursor, limit = int(request["cursor"]), int(request["limit"])

        # The cursor is a row offset; whole stored batches are served until the limit is met.
        def stream():
            served, position = 0, cursor
            for batch, end in zip(batches, ends, strict=True):
                if end <= position:
                    continue
                if served and served + batch.num_rows > limit:
                    break
                batch = batch.slice(position - (end - batch.num_rows))
                served += batch.num_rows
                position = end
                more = position < ends[-1]
                yield batch, pa.py_buffer(json.dumps({"cursor": str(position), "hasMore": more}).encode())
            if served == 0:
                empty = pa.RecordBatch.from_pylist([], schema=schema)
                yield empty, pa.py_buffer(json.dumps({"cursor": str(position), "hasMore": False}).encode())

        return flight.GeneratorStream(schema, stream())


def serve_reference() -> None:
    server = ReferenceServer("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    server.serve()


def start_reference() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve-reference"], stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline().strip()
    if not line.isdigit():
        process.kill()
        sys.exit(f"flight_ceiling: the reference server did not start (said {line!r})")
    return process, f"grpc://127.0.0.1:{line}"


# ---------------------------------------------------------------------------------------------
# The client


def push(
    uri: str, options, gen: Generator, columns: list[list[pa.Array]], table: str, client_id: str
) -> dict:
    client = flight.FlightClient(uri)
    stamp = HlcStamp()
    command = json.dumps({"table": table, "client_id": client_id}).encode()
    rows = nbytes = accepted = rejected = 0
    first_rejections = []
    started = time.perf_counter()
    writer, results = client.do_put(flight.FlightDescriptor.for_command(command), gen.schema, options)
    for arrays in columns:
        arrays = list(arrays)
        arrays[3] = stamp.stamp(gen.counter)
        batch = pa.RecordBatch.from_arrays(arrays, schema=gen.schema)
        writer.write_batch(batch)
        rows += batch.num_rows
        nbytes += batch.nbytes
    writer.done_writing()
    acks = 0
    while (buffer := results.read()) is not None:
        meta = json.loads(buffer.to_pybytes())
        acks += 1
        accepted += meta["accepted"]
        rejected += meta["rejected"]
        first_rejections += meta.get("rejections", [])[: 3 - len(first_rejections)]
    writer.close()
    seconds = time.perf_counter() - started
    client.close()
    if acks != len(columns) or accepted != rows:
        sys.exit(
            f"flight_ceiling: {uri} acknowledged {acks} of {len(columns)} batches, accepted {accepted} of {rows} rows "
            f"({rejected} rejected, e.g. {first_rejections})"
        )
    return {"rows": rows, "bytes": nbytes, "seconds": seconds}


def pull(uri: str, options, table: str, limit: int) -> dict:
    client = flight.FlightClient(uri)
    rows = nbytes = pages = 0
    cursor = "0"
    started = time.perf_counter()
    while True:
        ticket = flight.Ticket(json.dumps({"table": table, "cursor": cursor, "limit": limit}).encode())
        reader = client.do_get(ticket, options)
        meta = None
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            if chunk.data is not None:
                rows += chunk.data.num_rows
                nbytes += chunk.data.nbytes
            if chunk.app_metadata is not None:
                meta = json.loads(chunk.app_metadata.to_pybytes())
        pages += 1
        if meta is None:
            sys.exit(f"flight_ceiling: a DoGet from {uri} carried no app_metadata")
        if not meta["hasMore"]:
            break
        if meta["cursor"] == cursor:
            sys.exit(f"flight_ceiling: {uri} says hasMore but its cursor stays at {cursor}")
        cursor = meta["cursor"]
    seconds = time.perf_counter() - started
    client.close()
    return {"rows": rows, "bytes": nbytes, "seconds": seconds, "pages": pages}


def report(target: str, direction: str, result: dict) -> dict:
    line = {
        "target": target,
        "direction": direction,
        "rows": result["rows"],
        "bytes": result["bytes"],
        "seconds": round(result["seconds"], 4),
        "rows_per_s": round(result["rows"] / result["seconds"]),
        "mb_per_s": round(result["bytes"] / result["seconds"] / 1e6, 1),
    }
    print(json.dumps(line), flush=True)
    extra = f", {result['pages']} DoGet pages" if "pages" in result else ""
    print(
        f"flight_ceiling: {target} {direction}: {line['rows']:,} rows, {line['bytes'] / 1e6:,.1f} MB in {line['seconds']:.2f} s"
        f" = {line['rows_per_s']:,} rows/s, {line['mb_per_s']:,} MB/s{extra}",
        file=sys.stderr,
        flush=True,
    )
    return line


def run(target: str, uri: str, options, gen: Generator, columns, args) -> dict:
    pushed = push(uri, options, gen, columns, args.table, args.client_id)
    pulled = pull(uri, options, args.table, args.pull_limit)
    if pulled["rows"] != pushed["rows"]:
        sys.exit(f"flight_ceiling: {target} served back {pulled['rows']} rows of the {pushed['rows']} pushed")
    return {"push": report(target, "push", pushed), "pull": report(target, "pull", pulled)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000, help="rows per batch (at most 65 536)")
    parser.add_argument("--ours", help="grpc://host:port of a running `lakesync serve`")
    parser.add_argument("--table", default="bench")
    parser.add_argument("--client-id", default="bench")
    parser.add_argument("--pull-limit", type=int, default=10_000)
    parser.add_argument("--serve-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_reference:
        serve_reference()
        return
    if not 0 < args.rows <= 1 << HLC_SHIFT:
        parser.error("--rows must be between 1 and 65536 (one HLC counter range per batch)")

    started = time.perf_counter()
    gen = Generator(args.rows, args.client_id, args.table)
    columns = [gen.batch(i) for i in range(args.batches)]
    print(
        f"flight_ceiling: generated {args.batches} x {args.rows:,} rows in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )

    process, reference_uri = start_reference()
    try:
        reference = run("pyarrow-reference", reference_uri, flight.FlightCallOptions(), gen, columns, args)
    finally:
        process.kill()
        process.wait()

    if args.ours:
        # With a token the rows were generated for --client-id, which must then be its `sub`.
        token = os.environ.get("LAKESYNC_TOKEN")
        header = (
            (b"authorization", f"Bearer {token}".encode())
            if token
            else (b"x-lakesync-client-id", args.client_id.encode())
        )
        ours = run("lakesync", args.ours, flight.FlightCallOptions(headers=[header]), gen, columns, args)
        for direction in ("push", "pull"):
            ratio = ours[direction]["rows_per_s"] / reference[direction]["rows_per_s"]
            print(
                json.dumps(
                    {
                        "ratio": "lakesync/pyarrow-reference",
                        "direction": direction,
                        "rows_per_s": round(ratio, 3),
                    }
                ),
                flush=True,
            )
            print(f"flight_ceiling: lakesync / reference, {direction}: {ratio:.2f}x", file=sys.stderr)


if __name__ == "__main__":
    main()
