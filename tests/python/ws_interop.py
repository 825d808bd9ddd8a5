"""WebSocket interop: the original protocol's binary frames, spoken with the `websockets` library
and a protobuf codec written by hand (lakesync_wire.py).

    python ws_interop.py --url http://127.0.0.1:PORT --gateway GW [--table todos]
                         [--columns '{"title": "...", "owner": "...", "done": false}'] [--prefix P]

    env LAKESYNC_TOKEN_A, LAKESYNC_TOKEN_B   the two clients' JWTs, sent as ?token=; their `sub`
                                             claims are the client ids. Both unset: auth off, no
                                             ?token= and client ids client-a / client-b (and the
                                             handshake-without-token check is skipped).
    env LAKESYNC_HTTP_URL, LAKESYNC_GATEWAY_ID   stand in for --url and --gateway.

The socket is ws://HOST:PORT/v1/sync/GW/ws?token=JWT (wss:// for an https:// URL). Frames are
binary: client to server 0x01 || SyncPush or 0x02 || SyncPull; the server answers a push or a
pull with an untagged SyncResponse, and broadcasts 0x03 || SyncResponse. (An untagged
SyncResponse never starts with 0x03: that byte would be field 0, which protobuf forbids.)

Checks (one `ok` line each; any mismatch exits 1 with FAIL):

1. Without a token the handshake is refused with 401 (auth on only).
2. Client A and client B connect. A sends a pull (since 0, max 100) and gets an untagged
   SyncResponse.
3. A pushes one INSERT of row ws-<random> (values from --columns; default title "ws todo",
   owner = B's id, done false, so that B's rules allow it) and gets an untagged SyncResponse
   with a server HLC. Within 5 s B receives a 0x03 broadcast holding that delta: same op,
   table, row id, client id, HLC, delta id and column values.
4. B pulls with 0x02 pages from since 0 until has_more is false and sees the row.
5. A text frame on a third connection closes it with code 1003.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.parse
import uuid

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lakesync_wire import (  # noqa: E402
    TAG_BROADCAST,
    TAG_SYNC_PULL,
    TAG_SYNC_PUSH,
    CheckFailed,
    HlcClock,
    check,
    decode_sync_response,
    encode_sync_pull,
    encode_sync_push,
    json_delta_id,
    jwt_claims,
    note,
    ok,
    run_main,
)

BROADCAST_WAIT_S = 5.0
REPLY_WAIT_S = 10.0


def socket_url(base: str, gateway: str, token: str | None) -> str:
    parts = urllib.parse.urlsplit(base)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}[parts.scheme]
    path = f"/v1/sync/{urllib.parse.quote(gateway, safe='')}/ws"
    query = urllib.parse.urlencode({"token": token}) if token else ""
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, query, ""))


class Socket:
    """One connection; keeps the broadcasts that arrive while it waits for a reply."""

    def __init__(self, stack: contextlib.ExitStack, label: str, url: str):
        self.label = label
        try:
            self.ws = stack.enter_context(connect(url, open_timeout=REPLY_WAIT_S, max_size=None))
        except InvalidStatus as error:
            raise CheckFailed(
                f"client {label}: the WebSocket handshake was refused: HTTP {error.response.status_code}"
            ) from None
        except OSError as error:
            raise CheckFailed(f"client {label}: cannot connect to {url.split('?')[0]}: {error}") from None
        self.broadcasts: list[dict] = []

    def send(self, tag: int, payload: bytes) -> None:
        self.ws.send(bytes([tag]) + payload)

    def recv(self, timeout: float):
        try:
            frame = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        except ConnectionClosed as error:
            raise CheckFailed(f"client {self.label}: the server closed the socket: {error}") from None
        if isinstance(frame, str):
            raise CheckFailed(
                f"client {self.label}: the server sent a text frame ({frame[:100]!r}); frames are binary"
            )
        return frame

    def reply(self, what: str) -> dict:
        """The next untagged frame, decoded; 0x03 broadcasts on the way are kept."""
        deadline = time.monotonic() + REPLY_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            frame = self.recv(left)
            if frame is None:
                break
            if frame[:1] == bytes([TAG_BROADCAST]):
                self.broadcasts.append(decode_sync_response(frame[1:]))
                continue
            return decode_sync_response(frame)
        raise CheckFailed(f"client {self.label}: no reply to {what} within {REPLY_WAIT_S:.0f} s")

    def broadcast_with(self, row_id: str, seconds: float) -> tuple[dict, float] | None:
        """Waits up to `seconds` for a 0x03 frame holding a delta of `row_id`."""
        started = time.monotonic()
        while True:
            for response in self.broadcasts:
                for delta in response["deltas"]:
                    if delta["rowId"] == row_id:
                        return delta, time.monotonic() - started
            self.broadcasts.clear()
            left = started + seconds - time.monotonic()
            if left <= 0:
                return None
            frame = self.recv(left)
            if frame is None:
                return None
            if frame[:1] != bytes([TAG_BROADCAST]):
                raise CheckFailed(
                    f"client {self.label}: an untagged frame ({len(frame)} bytes) arrived unasked while waiting for a broadcast"
                )
            self.broadcasts.append(decode_sync_response(frame[1:]))

    def pull_all(self, client_id: str, max_deltas: int = 100) -> tuple[list[dict], int]:
        since, pages, deltas = 0, 0, []
        while True:
            self.send(TAG_SYNC_PULL, encode_sync_pull(client_id, since, max_deltas))
            response = self.reply(f"a pull since {since}")
            pages += 1
            if len(response["deltas"]) > max_deltas:
                raise CheckFailed(
                    f"client {self.label}: a pull answered {len(response['deltas'])} deltas, more than max_deltas={max_deltas}"
                )
            deltas.extend(response["deltas"])
            if not response["hasMore"]:
                return deltas, pages
            if response["serverHlc"] <= since:
                raise CheckFailed(
                    f"client {self.label}: has_more is set but server_hlc did not move ({since} -> {response['serverHlc']})"
                )
            since = response["serverHlc"]
            if pages > 100_000:
                raise CheckFailed(f"client {self.label}: more than 100000 pull pages")

    def close(self) -> None:
        self.ws.close()


def client_id(token: str | None, fallback: str, label: str) -> str:
    if not token:
        return fallback
    sub = jwt_claims(token).get("sub")
    if not sub:
        raise CheckFailed(f"client {label}'s token has no `sub` claim")
    return sub


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("LAKESYNC_HTTP_URL"),
        help="http://host:port of the gateway's HTTP listener",
    )
    parser.add_argument("--gateway", default=os.environ.get("LAKESYNC_GATEWAY_ID"))
    parser.add_argument("--table", default="todos")
    parser.add_argument(
        "--columns", help="the pushed row's values as a JSON object (strings, integers, booleans)"
    )
    parser.add_argument("--prefix", default="", help="put before the pushed row's id")
    args = parser.parse_args()
    if not args.url or not args.gateway:
        parser.error("give --url and --gateway (or set LAKESYNC_HTTP_URL and LAKESYNC_GATEWAY_ID)")

    token_a, token_b = os.environ.get("LAKESYNC_TOKEN_A"), os.environ.get("LAKESYNC_TOKEN_B")
    if bool(token_a) != bool(token_b):
        raise CheckFailed("set both LAKESYNC_TOKEN_A and LAKESYNC_TOKEN_B, or neither (auth off)")
    id_a, id_b = client_id(token_a, "client-a", "A"), client_id(token_b, "client-b", "B")
    if id_a == id_b:
        raise CheckFailed(
            "clients A and B have the same id: the server does not echo a push to its sender's id, so B would hear nothing"
        )
    values = json.loads(args.columns) if args.columns else {"title": "ws todo", "owner": id_b, "done": False}
    note(
        f"WebSocket {socket_url(args.url, args.gateway, None)}, clients A={id_a!r} B={id_b!r}, auth {'on' if token_a else 'off'}"
    )

    # 1. No token, no socket.
    if token_a:
        try:
            with connect(socket_url(args.url, args.gateway, None), open_timeout=REPLY_WAIT_S):
                pass
            raise CheckFailed("a WebSocket handshake without ?token= was accepted")
        except InvalidStatus as error:
            status = error.response.status_code
            check(status == 401, "a handshake without ?token= is refused with 401", f"got {status}")

    # 2. Both connect; A pulls.
    stack = contextlib.ExitStack()
    a = Socket(stack, "A", socket_url(args.url, args.gateway, token_a))
    b = Socket(stack, "B", socket_url(args.url, args.gateway, token_b))
    ok("clients A and B connected")
    a.send(TAG_SYNC_PULL, encode_sync_pull(id_a, 0, 100))
    response = a.reply("a pull")
    ok(
        f"client A: 0x02 pull -> untagged SyncResponse ({len(response['deltas'])} deltas, server_hlc {response['serverHlc']}, has_more {response['hasMore']})"
    )

    # 3. A pushes; B hears it.
    clock = HlcClock()
    row_id = f"{args.prefix}ws-{uuid.uuid4().hex[:12]}"
    hlc = clock.next()
    columns = [{"column": name, "value": value} for name, value in values.items()]
    delta = {
        "op": "INSERT",
        "table": args.table,
        "rowId": row_id,
        "clientId": id_a,
        "columns": columns,
        "hlc": hlc,
        "deltaId": json_delta_id(id_a, hlc, args.table, row_id, columns),
    }
    a.send(TAG_SYNC_PUSH, encode_sync_push(id_a, [delta], 0))
    response = a.reply("a push")
    check(
        response["serverHlc"] > 0,
        f"client A: 0x01 push of {row_id} -> untagged SyncResponse with server_hlc {response['serverHlc']}",
    )
    heard = b.broadcast_with(row_id, BROADCAST_WAIT_S)
    if heard is None:
        raise CheckFailed(
            f"client B heard no 0x03 broadcast of {row_id} within {BROADCAST_WAIT_S:.0f} s (do B's sync rules allow {values}?)"
        )
    got, seconds = heard
    ok(f"client B: 0x03 broadcast of {row_id} after {seconds * 1000:.0f} ms")
    # The gateway sends rows as snapshots of their merged state (docs/gateway.md): the op, writer,
    # HLC and values are the pushed delta's, the delta id is the snapshot's own.
    check(
        isinstance(got["deltaId"], str) and len(got["deltaId"]) == 64,
        "  the broadcast delta has a 64-hex-digit deltaId",
        f"got {got['deltaId']!r}",
    )
    for key in ("op", "table", "rowId", "clientId", "hlc"):
        check(got[key] == delta[key], f"  the broadcast delta's {key} is {delta[key]!r}", f"got {got[key]!r}")
    got_values = {c["column"]: c["value"] for c in got["columns"]}
    check(got_values == values, f"  the broadcast delta's columns are {values}", f"got {got_values}")
    if a.broadcasts:
        note(f"client A also received {len(a.broadcasts)} broadcast frame(s)")

    # 4. B pulls and finds the row.
    deltas, pages = b.pull_all(id_b)
    seen = [d for d in deltas if d["rowId"] == row_id]
    check(bool(seen), f"client B: 0x02 pulls ({pages} pages, {len(deltas)} deltas) include {row_id}")
    state = {c["column"]: c["value"] for d in seen for c in d["columns"]}
    check(state == values, f"client B: the pulled {row_id} has the pushed values", f"got {state}")
    a.close()
    b.close()

    # 5. Text frames are refused.
    c = Socket(stack, "C", socket_url(args.url, args.gateway, token_a))
    c.ws.send("a text frame")
    try:
        c.ws.recv(timeout=REPLY_WAIT_S)
        raise CheckFailed("a text frame did not close the connection (a frame came back)")
    except TimeoutError:
        raise CheckFailed(f"a text frame did not close the connection within {REPLY_WAIT_S:.0f} s") from None
    except ConnectionClosed as error:
        code = error.rcvd.code if error.rcvd else None
        check(
            code == 1003,
            "a text frame closes the connection with code 1003",
            f"closed with {error.rcvd or 'no close frame'}",
        )
    stack.close()
    ok("ws interop: all checks passed")
    return 0


if __name__ == "__main__":
    run_main(main)
