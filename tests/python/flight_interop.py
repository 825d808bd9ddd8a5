"""Arrow Flight interop: pyarrow.flight (a client we did not write) against `lakesync serve`.

    python flight_interop.py --flight grpc://127.0.0.1:PORT --schema SCHEMA_JSON --out ROWS.jsonl
                             [--rows N] [--rows-b M] [--page-limit L] [--table todos] [--prefix P]

    env LAKESYNC_TOKEN_A, LAKESYNC_TOKEN_B   the two clients' JWTs (sent as `authorization:
                                             Bearer ...`); their `sub` claims are the client ids.
                                             Both unset: the server runs without auth and the
                                             clients name themselves client-a and client-b with
                                             `x-lakesync-client-id`.
    env LAKESYNC_ADMIN_TOKEN                 optional: then DoAction "flush" must be refused to
                                             client A and succeed as admin.
    env LAKESYNC_FLIGHT_URI                  stands in for --flight.

SCHEMA_JSON is the table's data columns, in order, as the pipeline config names them:
`[{"name": "title", "type": "string"}, ...]` or `{"table": "todos", "columns": [...]}`; types
are string (Utf8), number (Float64), integer (Int64) and boolean (Boolean).

What it does, in order (each check prints one `ok` line; any mismatch exits 1 with FAIL):

1. Client A, one DoPut stream, two batches:
   - N rows (default 100) inserted: row ids a-0 .. a-{N-1};
   - three rows: drift-ok-0, drift-future (HLC 10 s ahead), drift-ok-1. The PutResult must
     report 2 accepted and 1 rejected: row 1, code CLOCK_DRIFT, the row's delta id.
   The first PutResult must report N accepted, 0 rejected.
2. Client B, one DoPut stream, two batches: M rows (default 10) inserted, b-0 .. b-{M-1}; then
   b-0 updated (only the first string column that is not the owner column: "<old> (updated)")
   and b-1 deleted. PutResults: M accepted, then 2 accepted.
3. A and B each pull the table with DoGet from cursor 0, in pages of L rows (default 37),
   following `cursor` until `hasMore` is false, fold the deltas into rows, and check every row
   they see is one that was pushed, with the values pushed last (which rows each sees is the
   sync rules' business). drift-future must never be seen.
4. ListFlights lists the table; DoAction "schemas", "sync-rules" and "stats" answer JSON.

Generated values, row i: the column named by --owner-column (default `owner`) = the pushing
client's id; other strings "<a|b> <column> <i>"; integers i * 10; numbers i + 0.5; booleans
i % 2 == 0. drift-ok-0 / drift-ok-1 use i = 0 / 1 with prefix "drift".

The table should start empty: every row a client pulls must be one this run pushed. To share a
server, give --prefix: it goes before every row id above, and rows without it are ignored.

--out gets the rows each client sees at the end, as JSON lines sorted by reader then row id:
{"_reader": "a"|"b", "_row_id": "...", "<column>": value, ...} (nulls kept, keys sorted).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import pyarrow as pa
import pyarrow.flight as flight

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lakesync_wire import (  # noqa: E402
    CheckFailed,
    HlcClock,
    check,
    check_consistent,
    fold,
    jwt_claims,
    note,
    ok,
    parse_u64,
    run_main,
    write_state_lines,
)

ARROW_TYPES = {"string": pa.utf8(), "number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_()}
OP_CODES = {"INSERT": 1, "UPDATE": 2, "DELETE": 3}
OP_NAMES = {code: name for name, code in OP_CODES.items()}
TABLE_METADATA_KEY = b"lakesync.table"

SYSTEM_FIELDS = [
    pa.field("_op", pa.uint8(), nullable=False),
    pa.field("_row_id", pa.utf8(), nullable=False),
    pa.field("_client_id", pa.utf8(), nullable=False),
    pa.field("_hlc", pa.uint64(), nullable=False),
    pa.field("_delta_id", pa.binary(32), nullable=False),
    pa.field("_set", pa.list_(pa.uint16()), nullable=False),
]
SYSTEM_NAMES = [f.name for f in SYSTEM_FIELDS]


def delta_schema(table: str, columns: list[tuple[str, str]]) -> pa.Schema:
    """The Arrow delta contract for a table: the system columns, then its data columns."""
    fields = SYSTEM_FIELDS + [pa.field(name, ARROW_TYPES[kind], nullable=True) for name, kind in columns]
    return pa.schema(fields, metadata={TABLE_METADATA_KEY: table.encode()})


def delta_batch(schema: pa.Schema, deltas: list[dict]) -> pa.RecordBatch:
    """Deltas in the common form (columns a {name: value} dict holding only the set columns)
    as one record batch; unset data columns are null and absent from `_set`."""
    data_names = schema.names[len(SYSTEM_FIELDS) :]
    arrays = [
        pa.array([OP_CODES[d["op"]] for d in deltas], pa.uint8()),
        pa.array([d["rowId"] for d in deltas], pa.utf8()),
        pa.array([d["clientId"] for d in deltas], pa.utf8()),
        pa.array([d["hlc"] for d in deltas], pa.uint64()),
        pa.array([bytes.fromhex(d["deltaId"]) for d in deltas], pa.binary(32)),
        pa.array([[data_names.index(c) for c in d["columns"]] for d in deltas], pa.list_(pa.uint16())),
    ]
    for position, name in enumerate(data_names):
        arrays.append(
            pa.array(
                [d["columns"].get(name) for d in deltas], schema.field(position + len(SYSTEM_FIELDS)).type
            )
        )
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def batch_deltas(batch: pa.RecordBatch, table: str) -> list[dict]:
    """A delta-contract batch back to deltas in the common form (only the `_set` columns)."""
    names = batch.schema.names
    if names[: len(SYSTEM_NAMES)] != SYSTEM_NAMES:
        raise CheckFailed(
            f"a DoGet batch's columns start {names[:6]}, not the delta contract's {SYSTEM_NAMES}"
        )
    for field, wanted in zip(batch.schema, SYSTEM_FIELDS, strict=False):
        # Item nullability of `_set` is the writer's choice (LakeSync marks items non-null).
        same = field.type == wanted.type or (
            pa.types.is_list(field.type)
            and pa.types.is_list(wanted.type)
            and field.type.value_type == wanted.type.value_type
        )
        if not same:
            raise CheckFailed(
                f"DoGet column {field.name} is {field.type}, the delta contract says {wanted.type}"
            )
    data_names = names[len(SYSTEM_NAMES) :]
    rows = batch.to_pylist()
    deltas = []
    for row in rows:
        if row["_op"] not in OP_NAMES:
            raise CheckFailed(f"DoGet row {row['_row_id']!r} has _op {row['_op']}")
        positions = row["_set"] or []
        for p in positions:
            if p >= len(data_names):
                raise CheckFailed(
                    f"DoGet row {row['_row_id']!r} sets position {p}, but the batch has {len(data_names)} data columns"
                )
        deltas.append(
            {
                "op": OP_NAMES[row["_op"]],
                "table": table,
                "rowId": row["_row_id"],
                "clientId": row["_client_id"],
                "hlc": row["_hlc"],
                "deltaId": row["_delta_id"].hex(),
                "columns": {data_names[p]: row[data_names[p]] for p in positions},
            }
        )
    return deltas


class Client:
    """One Flight client identity: its call options (auth headers) and its HLC clock."""

    def __init__(self, label: str, uri: str, token: str | None, fallback_id: str, timeout: float):
        self.label = label
        self.flight = flight.FlightClient(uri)
        self.clock = HlcClock()
        if token:
            claims = jwt_claims(token)
            if not claims.get("sub"):
                raise CheckFailed(f"client {label}'s token has no `sub` claim")
            self.id = claims["sub"]
            headers = [(b"authorization", f"Bearer {token}".encode())]
        else:
            self.id = fallback_id
            headers = [(b"x-lakesync-client-id", fallback_id.encode())]
        self.options = flight.FlightCallOptions(headers=headers, timeout=timeout)

    def delta(self, op: str, table: str, row_id: str, columns: dict, hlc: int | None = None) -> dict:
        hlc = self.clock.next() if hlc is None else hlc
        # The server trusts the delta id as the idempotency key; any unique 32 bytes will do.
        delta_id = hashlib.sha256(f"{self.id}\0{table}\0{row_id}\0{hlc}".encode()).hexdigest()
        return {
            "op": op,
            "table": table,
            "rowId": row_id,
            "clientId": self.id,
            "hlc": hlc,
            "deltaId": delta_id,
            "columns": columns,
        }

    def put(self, table: str, schema: pa.Schema, batches: list[pa.RecordBatch]) -> list[dict]:
        """One DoPut stream with the batches; returns the PutResults' metadata, one per batch."""
        command = json.dumps({"table": table, "client_id": self.id}).encode()
        descriptor = flight.FlightDescriptor.for_command(command)
        try:
            writer, results = self.flight.do_put(descriptor, schema, self.options)
            for batch in batches:
                writer.write_batch(batch)
            writer.done_writing()
            metadata = []
            while True:
                buffer = results.read()
                if buffer is None:
                    break
                metadata.append(parse_put_result(buffer.to_pybytes()))
            writer.close()
        except flight.FlightError as error:
            raise CheckFailed(f"client {self.label}: DoPut to {table} failed: {error}") from None
        check(
            len(metadata) == len(batches),
            f"client {self.label}: one PutResult per batch written ({len(batches)})",
            f"got {len(metadata)}: {metadata}",
        )
        return metadata

    def pull(self, table: str, page_limit: int) -> tuple[list[dict], int]:
        """DoGet from cursor 0, page after page; returns the deltas and the number of pages."""
        cursor, pages, deltas = 0, 0, []
        while True:
            ticket = flight.Ticket(
                json.dumps({"table": table, "cursor": str(cursor), "limit": page_limit}).encode()
            )
            try:
                reader = self.flight.do_get(ticket, self.options)
                page_rows, last_meta = 0, None
                while True:
                    try:
                        chunk = reader.read_chunk()
                    except StopIteration:
                        break
                    if chunk.app_metadata is None:
                        raise CheckFailed(
                            f"client {self.label}: a DoGet message of {table} has no app_metadata"
                        )
                    last_meta = parse_get_metadata(chunk.app_metadata.to_pybytes())
                    if chunk.data is not None:
                        check_table_metadata(chunk.data.schema, table)
                        page_rows += chunk.data.num_rows
                        deltas.extend(batch_deltas(chunk.data, table))
            except flight.FlightError as error:
                raise CheckFailed(
                    f"client {self.label}: DoGet of {table} at cursor {cursor} failed: {error}"
                ) from None
            pages += 1
            if last_meta is None:
                raise CheckFailed(
                    f"client {self.label}: DoGet of {table} at cursor {cursor} sent no batch at all (the stream must end with one holding the final cursor)"
                )
            if page_rows > page_limit:
                raise CheckFailed(
                    f"client {self.label}: a DoGet page held {page_rows} rows, more than the limit {page_limit}"
                )
            if not last_meta["hasMore"]:
                return deltas, pages
            if last_meta["cursor"] <= cursor:
                raise CheckFailed(
                    f"client {self.label}: hasMore is true but the cursor did not move ({cursor} -> {last_meta['cursor']})"
                )
            cursor = last_meta["cursor"]
            if pages > 100_000:
                raise CheckFailed(
                    f"client {self.label}: more than 100000 DoGet pages; the cursor never finishes"
                )

    def action(self, kind: str) -> object:
        results = list(self.flight.do_action(flight.Action(kind, b""), self.options))
        if len(results) != 1:
            raise CheckFailed(f"DoAction {kind!r} answered {len(results)} results, expected one JSON body")
        try:
            return json.loads(results[0].body.to_pybytes())
        except ValueError:
            raise CheckFailed(
                f"DoAction {kind!r} answered a body that is not JSON: {results[0].body.to_pybytes()[:200]!r}"
            ) from None


def parse_put_result(raw: bytes) -> dict:
    try:
        meta = json.loads(raw)
    except ValueError:
        raise CheckFailed(f"a PutResult's app_metadata is not JSON: {raw[:200]!r}") from None
    for key in ("accepted", "rejected", "rejections", "cursor"):
        if key not in meta:
            raise CheckFailed(f"a PutResult's app_metadata has no {key!r}: {meta}")
    parse_u64(meta["cursor"], "PutResult cursor")
    return meta


def parse_get_metadata(raw: bytes) -> dict:
    try:
        meta = json.loads(raw)
    except ValueError:
        raise CheckFailed(f"a DoGet message's app_metadata is not JSON: {raw[:200]!r}") from None
    if "cursor" not in meta or not isinstance(meta.get("hasMore"), bool):
        raise CheckFailed(f"a DoGet message's app_metadata must hold cursor and hasMore: {meta}")
    return {"cursor": parse_u64(meta["cursor"], "DoGet cursor"), "hasMore": meta["hasMore"]}


def check_table_metadata(schema: pa.Schema, table: str) -> None:
    named = (schema.metadata or {}).get(TABLE_METADATA_KEY)
    if named is not None and named.decode() != table:
        raise CheckFailed(f"a DoGet batch of {table} says lakesync.table = {named.decode()!r}")


def parse_schema(text: str, table: str) -> tuple[str, list[tuple[str, str]]]:
    try:
        spec = json.loads(text)
    except ValueError as error:
        raise CheckFailed(f"--schema is not JSON: {error}") from None
    if isinstance(spec, dict):
        table = spec.get("table", table)
        spec = spec.get("columns")
    if not isinstance(spec, list) or not spec:
        raise CheckFailed("--schema must be a list of {name, type} or {table, columns: [...]}")
    columns = []
    for column in spec:
        kind = column.get("type")
        if kind not in ARROW_TYPES:
            raise CheckFailed(f"--schema column {column}: type must be one of {sorted(ARROW_TYPES)}")
        columns.append((column["name"], kind))
    return table, columns


def row_values(columns: list[tuple[str, str]], owner_column: str, owner: str, prefix: str, i: int) -> dict:
    values = {}
    for name, kind in columns:
        if name == owner_column:
            values[name] = owner
        elif kind == "string":
            values[name] = f"{prefix} {name} {i}"
        elif kind == "integer":
            values[name] = i * 10
        elif kind == "number":
            values[name] = i + 0.5
        else:
            values[name] = i % 2 == 0
    return values


def check_put(label: str, meta: dict, accepted: int, rejected: int, what: str) -> None:
    check(
        meta["accepted"] == accepted and meta["rejected"] == rejected,
        f"client {label}: {what}: PutResult says {accepted} accepted, {rejected} rejected",
        f"got {meta}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flight", default=os.environ.get("LAKESYNC_FLIGHT_URI"), help="grpc://host:port")
    parser.add_argument("--schema", required=True, help="the table's data columns as JSON")
    parser.add_argument("--out", required=True, help="where to write the pulled rows (JSON lines)")
    parser.add_argument("--table", default="todos")
    parser.add_argument("--prefix", default="", help="put before every row id; rows without it are ignored")
    parser.add_argument("--rows", type=int, default=100, help="rows client A inserts")
    parser.add_argument("--rows-b", type=int, default=10, help="rows client B inserts (at least 2)")
    parser.add_argument("--page-limit", type=int, default=37, help="DoGet ticket limit")
    parser.add_argument("--owner-column", default="owner")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per Flight call")
    args = parser.parse_args()
    if not args.flight:
        parser.error("give --flight grpc://host:port (or set LAKESYNC_FLIGHT_URI)")
    if args.rows_b < 2:
        parser.error("--rows-b must be at least 2 (b-0 is updated and b-1 deleted)")

    table, columns = parse_schema(args.schema, args.table)
    p = args.prefix  # before every row id this run writes
    schema = delta_schema(table, columns)
    token_a, token_b = os.environ.get("LAKESYNC_TOKEN_A"), os.environ.get("LAKESYNC_TOKEN_B")
    if bool(token_a) != bool(token_b):
        raise CheckFailed("set both LAKESYNC_TOKEN_A and LAKESYNC_TOKEN_B, or neither (auth off)")
    a = Client("A", args.flight, token_a, "client-a", args.timeout)
    b = Client("B", args.flight, token_b, "client-b", args.timeout)
    note(
        f"Flight {args.flight}, table {table} {columns}, clients A={a.id!r} B={b.id!r}, auth {'on' if token_a else 'off'}"
    )
    if a.id == b.id:
        raise CheckFailed("clients A and B have the same id; give tokens with different `sub` claims")

    pushed: dict[str, dict] = {}  # rowId -> values, what every pull must agree with

    # 1. Client A: N rows, then a batch with one row 10 s in the future between two good ones.
    a_rows = [
        a.delta("INSERT", table, f"{p}a-{i}", row_values(columns, args.owner_column, a.id, "a", i))
        for i in range(args.rows)
    ]
    drift = [
        a.delta("INSERT", table, f"{p}drift-ok-0", row_values(columns, args.owner_column, a.id, "drift", 0)),
        a.delta(
            "INSERT",
            table,
            f"{p}drift-future",
            row_values(columns, args.owner_column, a.id, "drift", 9),
            hlc=HlcClock.future(10),
        ),
        a.delta("INSERT", table, f"{p}drift-ok-1", row_values(columns, args.owner_column, a.id, "drift", 1)),
    ]
    results = a.put(table, schema, [delta_batch(schema, a_rows), delta_batch(schema, drift)])
    check_put("A", results[0], args.rows, 0, f"{args.rows} inserts")
    check_put("A", results[1], 2, 1, "a batch with one row 10 s ahead")
    rejections = results[1]["rejections"]
    check(
        len(rejections) == 1
        and rejections[0].get("row") == 1
        and rejections[0].get("code") == "CLOCK_DRIFT"
        and rejections[0].get("deltaId") == drift[1]["deltaId"],
        "client A: the row 10 s ahead is rejected as CLOCK_DRIFT (row 1, its delta id)",
        f"rejections: {rejections}",
    )
    note(f"the rejection says: {rejections[0].get('message')!r}")
    cursors = [parse_u64(r["cursor"], "PutResult cursor") for r in results]
    check(cursors[0] <= cursors[1], f"client A: PutResult cursors do not go backwards ({cursors})")
    fold(a_rows + [drift[0], drift[2]], pushed)

    # 2. Client B: M rows, then an update of b-0 (one column) and a delete of b-1.
    b_rows = [
        b.delta("INSERT", table, f"{p}b-{i}", row_values(columns, args.owner_column, b.id, "b", i))
        for i in range(args.rows_b)
    ]
    editable = next((n for n, k in columns if k == "string" and n != args.owner_column), columns[0][0])
    new_value = (
        f"{b_rows[0]['columns'][editable]} (updated)"
        if isinstance(b_rows[0]["columns"][editable], str)
        else b_rows[0]["columns"][editable]
    )
    edits = [
        b.delta("UPDATE", table, f"{p}b-0", {editable: new_value}),
        b.delta("DELETE", table, f"{p}b-1", {}),
    ]
    results = b.put(table, schema, [delta_batch(schema, b_rows), delta_batch(schema, edits)])
    check_put("B", results[0], args.rows_b, 0, f"{args.rows_b} inserts")
    check_put("B", results[1], 2, 0, "an update of b-0 and a delete of b-1")
    fold(b_rows + edits, pushed)

    # 3. Both pull everything the rules let them see, in pages.
    states = {}
    for client in (a, b):
        deltas, pages = client.pull(table, args.page_limit)
        ok(
            f"client {client.label}: DoGet paged to the end: {len(deltas)} deltas in {pages} pages of at most {args.page_limit}"
        )
        check(
            all(d["rowId"] != f"{p}drift-future" for d in deltas),
            f"client {client.label}: the rejected row drift-future is never served",
        )
        state = {k: v for k, v in fold(deltas).items() if k.startswith(p)}
        check_consistent(f"client {client.label}", state, pushed)
        states[client.label.lower()] = state
    lines = write_state_lines(args.out, states)
    note(f"wrote {lines} rows (A sees {len(states['a'])}, B sees {len(states['b'])}) to {args.out}")

    # 4. Discovery and actions.
    infos = list(a.flight.list_flights(b"", a.options))
    paths = [[p.decode() if isinstance(p, bytes) else p for p in (i.descriptor.path or [])] for i in infos]
    check([table] in paths, f"ListFlights lists {table} (descriptor path [{table!r}])", f"paths: {paths}")
    info = infos[paths.index([table])]
    data_names = [n for n, _ in columns]
    check(
        [n for n in info.schema.names if n not in SYSTEM_NAMES] == data_names,
        f"ListFlights: {table}'s schema has the data columns {data_names}",
        f"schema: {info.schema}",
    )
    bodies = {}
    for kind in ("schemas", "sync-rules", "stats"):
        bodies[kind] = json.dumps(a.action(kind))
        ok(f"DoAction {kind!r} answers JSON ({len(bodies[kind])} bytes)")
    check(table in bodies["schemas"], f"DoAction 'schemas' mentions {table}", bodies["schemas"][:300])

    admin_token = os.environ.get("LAKESYNC_ADMIN_TOKEN")
    if admin_token:
        try:
            a.action("flush")
            raise CheckFailed("client A (not an admin) was allowed DoAction 'flush'")
        except (flight.FlightUnauthorizedError, flight.FlightUnauthenticatedError) as error:
            ok(f"DoAction 'flush' is refused to client A ({type(error).__name__})")
        admin = Client("admin", args.flight, admin_token, "admin", args.timeout)
        body = admin.action("flush")
        ok(f"DoAction 'flush' as admin answers {json.dumps(body)[:200]}")
    else:
        note("LAKESYNC_ADMIN_TOKEN unset: DoAction 'flush' not checked")
    ok("flight interop: all checks passed")
    return 0


if __name__ == "__main__":
    run_main(main)
