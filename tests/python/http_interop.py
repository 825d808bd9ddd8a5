"""HTTP/JSON interop: the original LakeSync protocol, spoken with nothing but urllib.

    python http_interop.py --url http://127.0.0.1:PORT --gateway GW --out ROWS.jsonl
                           [--rows N] [--rows-b M] [--page-limit L] [--table todos] [--prefix P]

    env LAKESYNC_TOKEN_A, LAKESYNC_TOKEN_B   the two clients' JWTs (`Authorization: Bearer ...`);
                                             their `sub` claims are the client ids. Both unset:
                                             auth off, clients client-a and client-b, and the
                                             401/403 checks are skipped.
    env LAKESYNC_ADMIN_TOKEN                 optional: then POST /v1/admin/flush/GW must answer
                                             {"flushed": true} (and is refused to client A).
    env LAKESYNC_HTTP_URL, LAKESYNC_GATEWAY_ID   stand in for --url and --gateway.

Columns are those of the interop table todos: title (string), owner (string), done (boolean).
Values, row i: title "<a|b> title <i>", owner = the pushing client's id, done = i % 2 == 0.

Checks, in order (one `ok` line each; any mismatch exits 1 with FAIL):

1. GET /health is {"status": "ok"}.
2. Client A pushes N rows a-0 .. a-{N-1} (default 100) in one POST .../push, with the deltaIds
   computed as the original client does; 200 with accepted = N. Client B pushes M rows
   b-0 .. b-{M-1} (default 10), then an UPDATE of b-0's title ("<old> (updated)") and a DELETE
   of b-1 (accepted = M, then 2).
3. Errors, each a JSON {"error", "code"}: invalid JSON -> 400 VALIDATION_ERROR; no token ->
   401 AUTH_ERROR; a clientId that is not the token's sub -> 403; one delta 10 s ahead (row
   drift-future) -> 409 CLOCK_DRIFT; a column the table lacks -> 422 SCHEMA_ERROR; 10 001
   deltas -> 400; a body over 1 MiB -> 413.
4. A and B pull with since/limit pages (default 37) following serverHlc while hasMore, fold the
   deltas into rows, and check every row they see was pushed with the values pushed last;
   drift-future and the rejected pushes' rows are never seen.
5. GET .../checkpoint is 200 (frames of u32 length + SyncResponse, X-Checkpoint-Hlc) or 404;
   POST /v1/admin/flush/GW as admin (when a token is given); GET /metrics holds lakesync_gateway_.

The table should start empty: every row a client pulls must be one this run pushed. To share a
server, give --prefix: it goes before every row id above, and rows without it are ignored.

--out gets the rows each client sees at the end, as JSON lines sorted by reader then row id:
{"_reader": "a"|"b", "_row_id": "...", "done": ..., "owner": ..., "title": ...}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lakesync_wire import (  # noqa: E402
    CheckFailed,
    HlcClock,
    check,
    check_consistent,
    columns_dict,
    decode_checkpoint,
    fold,
    json_delta_id,
    jwt_claims,
    note,
    ok,
    parse_u64,
    run_main,
    write_state_lines,
)

MAX_DELTAS_PER_PUSH = 10_000
MAX_BODY_BYTES = 1 << 20


class Response:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self, what: str):
        try:
            return json.loads(self.body)
        except ValueError:
            raise CheckFailed(
                f"{what}: the body is not JSON (status {self.status}): {self.body[:300]!r}"
            ) from None


def request(
    method: str, url: str, token: str | None = None, body: bytes | None = None, timeout: float = 60
) -> Response:
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.headers, error.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise CheckFailed(f"{method} {url} failed: {error}") from None


def post_oversized(url: str, token: str | None, body: bytes) -> Response:
    """POST a body the server will refuse by its Content-Length. A server may answer 413 and
    close before reading the body, so the write can fail with a broken pipe; the answer is then
    still waiting to be read."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.putrequest("POST", target)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    if token:
        conn.putheader("Authorization", f"Bearer {token}")
    conn.endheaders()
    try:
        conn.send(body)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    except (ConnectionError, http.client.HTTPException) as error:
        raise CheckFailed(f"POST {url} (oversized body) got no answer: {error}") from None
    finally:
        conn.close()


class Client:
    def __init__(self, label: str, base: str, gateway: str, token: str | None, fallback_id: str):
        self.label, self.base, self.gateway, self.token = label, base, gateway, token
        self.clock = HlcClock()
        if token:
            sub = jwt_claims(token).get("sub")
            if not sub:
                raise CheckFailed(f"client {label}'s token has no `sub` claim")
            self.id = sub
        else:
            self.id = fallback_id

    def url(self, action: str, query: dict | None = None) -> str:
        gw = urllib.parse.quote(self.gateway, safe="")
        url = f"{self.base}/v1/sync/{gw}/{action}"
        return url + ("?" + urllib.parse.urlencode(query) if query else "")

    def delta(
        self,
        op: str,
        table: str,
        row_id: str,
        values: dict,
        hlc: int | None = None,
        client_id: str | None = None,
    ) -> dict:
        """A wire delta (HLC as a decimal string, the original's deltaId)."""
        hlc = self.clock.next() if hlc is None else hlc
        client_id = client_id or self.id
        columns = [{"column": name, "value": value} for name, value in values.items()]
        return {
            "op": op,
            "table": table,
            "rowId": row_id,
            "clientId": client_id,
            "columns": columns,
            "hlc": str(hlc),
            "deltaId": json_delta_id(client_id, hlc, table, row_id, columns),
        }

    def push_body(self, deltas: list[dict], client_id: str | None = None) -> bytes:
        body = {"clientId": client_id or self.id, "deltas": deltas, "lastSeenHlc": "0"}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def push(
        self,
        deltas: list[dict],
        token: str | None = "own",
        client_id: str | None = None,
        raw: bytes | None = None,
    ) -> Response:
        body = raw if raw is not None else self.push_body(deltas, client_id)
        return request("POST", self.url("push"), self.token if token == "own" else token, body)

    def pull_all(self, page_limit: int) -> tuple[list[dict], int]:
        """Pulls from since=0, page by page, until hasMore is false."""
        since, pages, deltas = 0, 0, []
        while True:
            resp = request(
                "GET",
                self.url("pull", {"since": str(since), "clientId": self.id, "limit": str(page_limit)}),
                self.token,
            )
            pages += 1
            body = resp.json(f"client {self.label}: pull since {since}")
            if resp.status != 200:
                raise CheckFailed(f"client {self.label}: pull since {since} answered {resp.status}: {body}")
            for key in ("deltas", "serverHlc", "hasMore"):
                if key not in body:
                    raise CheckFailed(f"client {self.label}: a pull answer has no {key!r}: {str(body)[:300]}")
            page = body["deltas"]
            if len(page) > page_limit:
                raise CheckFailed(
                    f"client {self.label}: a pull page held {len(page)} deltas, more than limit={page_limit}"
                )
            for delta in page:
                deltas.append(common_form(delta, f"client {self.label}: a pulled delta"))
            cursor = parse_u64(body["serverHlc"], "pull serverHlc")
            if not body["hasMore"]:
                return deltas, pages
            if cursor <= since:
                raise CheckFailed(
                    f"client {self.label}: hasMore is true but serverHlc did not move ({since} -> {cursor})"
                )
            since = cursor
            if pages > 100_000:
                raise CheckFailed(
                    f"client {self.label}: more than 100000 pull pages; the cursor never finishes"
                )


def common_form(delta: dict, what: str) -> dict:
    """A wire delta as the common form (int HLC, columns as a dict); checks its shape."""
    for key in ("op", "table", "rowId", "clientId", "columns", "hlc", "deltaId"):
        if key not in delta:
            raise CheckFailed(f"{what} has no {key!r}: {str(delta)[:300]}")
    if delta["op"] not in ("INSERT", "UPDATE", "DELETE"):
        raise CheckFailed(f"{what} has op {delta['op']!r}")
    return dict(delta, hlc=parse_u64(delta["hlc"], f"{what}'s hlc"), columns=columns_dict(delta["columns"]))


def row_values(owner: str, prefix: str, i: int) -> dict:
    return {"title": f"{prefix} title {i}", "owner": owner, "done": i % 2 == 0}


def expect_error(resp: Response, status: int, code: str | None, what: str) -> None:
    body = resp.json(what)
    check(
        resp.status == status
        and isinstance(body, dict)
        and "error" in body
        and (code is None or body.get("code") == code),
        f"{what} -> {status}{' ' + code if code else ''}",
        f"got {resp.status}: {str(body)[:300]}",
    )
    if code is None:
        note(f"  its code is {body.get('code')!r}: {body.get('error')!r}")


def expect_pushed(resp: Response, accepted: int, what: str) -> None:
    body = resp.json(what)
    check(
        resp.status == 200
        and isinstance(body, dict)
        and body.get("accepted") == accepted
        and "serverHlc" in body,
        f"{what}: 200 with accepted = {accepted}",
        f"got {resp.status}: {str(body)[:300]}",
    )
    parse_u64(body["serverHlc"], f"{what}: serverHlc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("LAKESYNC_HTTP_URL"), help="http://host:port")
    parser.add_argument(
        "--gateway", default=os.environ.get("LAKESYNC_GATEWAY_ID"), help="the gateway id in the paths"
    )
    parser.add_argument("--out", required=True, help="where to write the pulled rows (JSON lines)")
    parser.add_argument("--table", default="todos")
    parser.add_argument("--prefix", default="", help="put before every row id; rows without it are ignored")
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--rows-b", type=int, default=10, help="at least 2 (b-0 is updated, b-1 deleted)")
    parser.add_argument("--page-limit", type=int, default=37)
    args = parser.parse_args()
    if not args.url or not args.gateway:
        parser.error("give --url and --gateway (or set LAKESYNC_HTTP_URL and LAKESYNC_GATEWAY_ID)")
    if args.rows_b < 2:
        parser.error("--rows-b must be at least 2")
    base, table = args.url.rstrip("/"), args.table
    p = args.prefix  # before every row id this run writes

    token_a, token_b = os.environ.get("LAKESYNC_TOKEN_A"), os.environ.get("LAKESYNC_TOKEN_B")
    if bool(token_a) != bool(token_b):
        raise CheckFailed("set both LAKESYNC_TOKEN_A and LAKESYNC_TOKEN_B, or neither (auth off)")
    admin_token = os.environ.get("LAKESYNC_ADMIN_TOKEN")
    a = Client("A", base, args.gateway, token_a, "client-a")
    b = Client("B", base, args.gateway, token_b, "client-b")
    note(
        f"HTTP {base}, gateway {args.gateway!r}, table {table}, clients A={a.id!r} B={b.id!r}, auth {'on' if token_a else 'off'}"
    )
    if a.id == b.id:
        raise CheckFailed("clients A and B have the same id; give tokens with different `sub` claims")

    # 1. Health.
    resp = request("GET", f"{base}/health")
    check(
        resp.status == 200 and resp.json("GET /health") == {"status": "ok"},
        'GET /health -> 200 {"status": "ok"}',
        f"got {resp.status}: {resp.body[:200]!r}",
    )

    # 2. Pushes.
    pushed: dict[str, dict] = {}
    a_rows = [a.delta("INSERT", table, f"{p}a-{i}", row_values(a.id, "a", i)) for i in range(args.rows)]
    expect_pushed(a.push(a_rows), args.rows, f"client A: push of {args.rows} inserts")
    b_rows = [b.delta("INSERT", table, f"{p}b-{i}", row_values(b.id, "b", i)) for i in range(args.rows_b)]
    expect_pushed(b.push(b_rows), args.rows_b, f"client B: push of {args.rows_b} inserts")
    edits = [
        b.delta("UPDATE", table, f"{p}b-0", {"title": "b title 0 (updated)"}),
        b.delta("DELETE", table, f"{p}b-1", {}),
    ]
    expect_pushed(b.push(edits), 2, "client B: push of an update of b-0 and a delete of b-1")
    fold([common_form(d, "pushed") for d in a_rows + b_rows + edits], pushed)

    # 3. Errors. Each rejected push names rows that must never be pulled.
    never = {p + r for r in ("drift-future", "no-token", "impostor", "bad-column", "too-many", "too-big")}
    expect_error(
        a.push([], raw=b'{"clientId": "oops", "deltas": [ '),
        400,
        "VALIDATION_ERROR",
        "push with invalid JSON",
    )
    if token_a:
        expect_error(
            a.push([a.delta("INSERT", table, f"{p}no-token", row_values(a.id, "x", 0))], token=None),
            401,
            "AUTH_ERROR",
            "push without a token",
        )
        other = f"{a.id}-impostor"
        delta = a.delta("INSERT", table, f"{p}impostor", row_values(other, "x", 0), client_id=other)
        expect_error(
            a.push([delta], client_id=other), 403, None, "push whose clientId is not the token's sub"
        )
    else:
        note("auth off: the 401 and 403 checks are skipped")
    future = a.delta("INSERT", table, f"{p}drift-future", row_values(a.id, "x", 0), hlc=HlcClock.future(10))
    expect_error(a.push([future]), 409, "CLOCK_DRIFT", "push with a delta 10 s ahead")
    expect_error(
        a.push(
            [a.delta("INSERT", table, f"{p}bad-column", {**row_values(a.id, "x", 0), "no_such_column": 1})]
        ),
        422,
        "SCHEMA_ERROR",
        "push setting a column the table lacks",
    )
    # A well-formed delta is ~200 bytes, so 10 001 of them are ~2 MB and would meet the 1 MiB
    # limit (413) first. The count limit is checked with 10 001 empty objects (20 KB): the
    # original counts before it looks at a delta, and answers 400 VALIDATION_ERROR.
    too_many = a.push_body([{}] * (MAX_DELTAS_PER_PUSH + 1))
    expect_error(
        a.push([], raw=too_many),
        400,
        None,
        f"push of {MAX_DELTAS_PER_PUSH + 1} deltas ({len(too_many):,} bytes)",
    )
    big = a.delta("INSERT", table, f"{p}too-big", {**row_values(a.id, "x", 0), "title": "x" * MAX_BODY_BYTES})
    resp = post_oversized(a.url("push"), a.token, a.push_body([big]))
    check(
        resp.status == 413,
        f"push of a {len(a.push_body([big])):,}-byte body -> 413",
        f"got {resp.status}: {resp.body[:300]!r}",
    )

    # 4. Pulls.
    states = {}
    for client in (a, b):
        deltas, pages = client.pull_all(args.page_limit)
        ok(
            f"client {client.label}: pulled to the end: {len(deltas)} deltas in {pages} pages of at most {args.page_limit}"
        )
        seen_never = sorted({d["rowId"] for d in deltas} & never)
        check(
            not seen_never,
            f"client {client.label}: no row of a rejected push is ever served",
            f"served {seen_never}",
        )
        state = {k: v for k, v in fold(deltas).items() if k.startswith(p)}
        check_consistent(f"client {client.label}", state, pushed)
        states[client.label.lower()] = state
    lines = write_state_lines(args.out, states)
    note(f"wrote {lines} rows (A sees {len(states['a'])}, B sees {len(states['b'])}) to {args.out}")

    # 5. Flush, checkpoint, metrics.
    if admin_token:
        flush_url = f"{base}/v1/admin/flush/{urllib.parse.quote(args.gateway, safe='')}"
        if token_a:
            resp = request("POST", flush_url, token_a, b"")
            check(
                resp.status in (401, 403),
                "POST /v1/admin/flush as client A -> 401/403",
                f"got {resp.status}: {resp.body[:200]!r}",
            )
        resp = request("POST", flush_url, admin_token, b"")
        check(
            resp.status == 200 and resp.json("flush").get("flushed") is True,
            'POST /v1/admin/flush as admin -> {"flushed": true}',
            f"got {resp.status}: {resp.body[:200]!r}",
        )
    else:
        note("LAKESYNC_ADMIN_TOKEN unset: flush not checked")
    resp = request("GET", a.url("checkpoint"), a.token)
    if resp.status == 404:
        ok("GET .../checkpoint -> 404 (no checkpoint yet)")
    else:
        check(
            resp.status == 200, "GET .../checkpoint -> 200 or 404", f"got {resp.status}: {resp.body[:200]!r}"
        )
        header = resp.headers.get("X-Checkpoint-Hlc")
        parse_u64(header, "the X-Checkpoint-Hlc header")
        frames = decode_checkpoint(resp.body)
        rows = fold(
            [
                dict(d, columns={c["column"]: c["value"] for c in d["columns"]})
                for f in frames
                for d in f["deltas"]
            ]
        )
        ok(
            f"GET .../checkpoint -> 200: {len(frames)} frames, {sum(len(f['deltas']) for f in frames)} deltas, X-Checkpoint-Hlc {header}"
        )
        # A checkpoint may predate the last pushes, so only its rows' ids are checked.
        known = {d["rowId"] for d in a_rows + b_rows}
        rows = {k: v for k, v in rows.items() if k.startswith(p)}
        check(
            set(rows) <= known,
            "the checkpoint holds only rows that were pushed",
            f"unknown: {sorted(set(rows) - known)[:10]}",
        )
    resp = request("GET", f"{base}/metrics", admin_token or a.token)
    check(
        resp.status == 200 and b"lakesync_gateway_" in resp.body,
        "GET /metrics -> 200 with lakesync_gateway_ series",
        f"got {resp.status}: {resp.body[:300]!r}",
    )
    ok("http interop: all checks passed")
    return 0


if __name__ == "__main__":
    run_main(main)
