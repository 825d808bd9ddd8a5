"""Shared helpers for the gateway interop scripts (flight_interop.py, http_interop.py,
ws_interop.py). Standard library only, so every script can import it whatever else it needs.

- HLCs: `wall_ms << 16 | counter`, as the gateway expects (within 5 s of its clock).
- The JSON delta id: lowercase hex SHA-256 of the UTF-8 of fast-json-stable-stringify of
  `{clientId, hlc, table, rowId, columns}` (see `json_delta_id` for where Python's `json`
  and the JavaScript library part ways).
- A hand-written encoder and decoder for the few lakesync.v1 protobuf messages the WebSocket
  protocol and the HTTP checkpoint use (proto/lakesync/v1/lakesync.proto), so the scripts need
  no protobuf package.
- JWT claims (read, never verified), the checks every script prints, and folding pulled deltas
  into per-reader row state, which the scripts write as JSON lines for the Rust tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
import time

# ---------------------------------------------------------------------------------------------
# Checks


class CheckFailed(Exception):
    """A mismatch against the gateway's contract; the script prints it and exits 1."""


def ok(message: str) -> None:
    """One line on stdout per check that passed."""
    print(f"ok    {message}", flush=True)


def note(message: str) -> None:
    """Progress and facts worth seeing that are not checks."""
    print(f"..    {message}", flush=True)


def check(condition: bool, message: str, detail: str = "") -> None:
    """Passes quietly-but-visibly, or raises CheckFailed with the message and detail."""
    if not condition:
        raise CheckFailed(message + (f"\n      {detail}" if detail else ""))
    ok(message)


def run_main(main) -> None:
    """Runs `main()`, turning CheckFailed into exit status 1 with a clear message on stderr."""
    try:
        code = main()
    except CheckFailed as failure:
        print(f"FAIL  {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(code or 0)


# ---------------------------------------------------------------------------------------------
# HLCs and delta ids

HLC_SHIFT = 16
HLC_COUNTER_MASK = (1 << HLC_SHIFT) - 1


def hlc_at(wall_ms: int, counter: int = 0) -> int:
    return (wall_ms << HLC_SHIFT) | (counter & HLC_COUNTER_MASK)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class HlcClock:
    """Hands out strictly increasing HLCs that follow the wall clock (a client's own clock)."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(hlc_at(now_ms()), self.last + 1)
        return self.last

    @staticmethod
    def future(seconds: float) -> int:
        """An HLC `seconds` ahead of now; it does not move the clock."""
        return hlc_at(now_ms() + int(seconds * 1000))


def stable_stringify(value) -> str:
    """fast-json-stable-stringify for what the interop scripts send: keys sorted at every level,
    arrays kept in order, no whitespace, non-ASCII left as it is (like JSON.stringify).

    Identical to the JavaScript for strings, integers up to 2**53, booleans and null. It may
    differ for floats (Python writes 1.0 and 1e+21, JavaScript 1 and 1e21), for integers above
    2**53 (JavaScript rounds them), for lone surrogates, and for keys outside the Basic
    Multilingual Plane (JavaScript sorts by UTF-16 code unit). Tests use strings, integers and
    booleans only.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def json_delta_id(client_id: str, hlc: int, table: str, row_id: str, columns: list[dict]) -> str:
    """The original protocol's deltaId: SHA-256 hex of the stable JSON of the delta's identity.
    `columns` is the wire list `[{"column": name, "value": v}, ...]`, in order."""
    identity = {
        "clientId": client_id,
        "hlc": str(hlc),
        "table": table,
        "rowId": row_id,
        "columns": columns,
    }
    return hashlib.sha256(stable_stringify(identity).encode("utf-8")).hexdigest()


def parse_u64(text, what: str) -> int:
    """A u64 sent as a decimal string (cursors, HLCs); CheckFailed when it is not one."""
    if not isinstance(text, str) or not text.isdigit():
        raise CheckFailed(f"{what} must be a u64 as a decimal string, got {text!r}")
    value = int(text)
    if value >= 1 << 64:
        raise CheckFailed(f"{what} {text} does not fit in a u64")
    return value


# ---------------------------------------------------------------------------------------------
# JWTs


def jwt_claims(token: str) -> dict:
    """The payload of a JWT, decoded but not verified (the scripts only need `sub` and `gw`)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError) as error:
        raise CheckFailed(f"cannot read the claims of the token {token[:16]}...: {error}") from None


# ---------------------------------------------------------------------------------------------
# Protobuf (proto3, package lakesync.v1), by hand

OPS = {1: "INSERT", 2: "UPDATE", 3: "DELETE"}
OP_NUMBERS = {name: number for number, name in OPS.items()}

TAG_SYNC_PUSH = 0x01
TAG_SYNC_PULL = 0x02
TAG_BROADCAST = 0x03

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


def _string_field(field: int, text: str) -> bytes:
    # proto3: default values (empty strings, zeros, false) are not written.
    return _len_field(field, text.encode("utf-8")) if text else b""


def _fixed64_field(field: int, value: int) -> bytes:
    return _key(field, _FIXED64) + struct.pack("<Q", value) if value else b""


def _varint_field(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value) if value else b""


def encode_row_delta(delta: dict) -> bytes:
    """`delta` in the scripts' common form: op name, table, rowId, clientId, hlc (int),
    deltaId (hex string), columns as the wire list [{"column", "value"}] with JSON values."""
    out = bytearray()
    out += _varint_field(1, OP_NUMBERS[delta["op"]])
    out += _string_field(2, delta["table"])
    out += _string_field(3, delta["rowId"])
    for column in delta["columns"]:
        value = json.dumps(column["value"], separators=(",", ":"), ensure_ascii=False)
        body = _string_field(1, column["column"]) + _len_field(2, value.encode("utf-8"))
        out += _len_field(4, body)
    out += _fixed64_field(5, delta["hlc"])
    out += _string_field(6, delta["clientId"])
    out += _string_field(7, delta["deltaId"])
    return bytes(out)


def encode_sync_push(client_id: str, deltas: list[dict], last_seen_hlc: int = 0) -> bytes:
    out = bytearray(_string_field(1, client_id))
    for delta in deltas:
        out += _len_field(2, encode_row_delta(delta))
    out += _fixed64_field(3, last_seen_hlc)
    return bytes(out)


def encode_sync_pull(client_id: str, since_hlc: int, max_deltas: int) -> bytes:
    return _string_field(1, client_id) + _fixed64_field(2, since_hlc) + _varint_field(3, max_deltas)


def _fields(data: bytes):
    """Yields (field, wire_type, value) for each field of a message; raises on malformed input."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise CheckFailed(f"protobuf: field number 0 at byte {pos}")
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == _FIXED64:
            if pos + 8 > len(data):
                raise CheckFailed("protobuf: truncated fixed64")
            (value,) = struct.unpack_from("<Q", data, pos)
            pos += 8
        elif wire_type == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise CheckFailed("protobuf: truncated length-delimited field")
            value = data[pos : pos + length]
            pos += length
        elif wire_type == _FIXED32:
            if pos + 4 > len(data):
                raise CheckFailed("protobuf: truncated fixed32")
            (value,) = struct.unpack_from("<I", data, pos)
            pos += 4
        else:
            raise CheckFailed(f"protobuf: unsupported wire type {wire_type} (field {field})")
        yield field, wire_type, value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise CheckFailed("protobuf: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CheckFailed("protobuf: varint longer than 10 bytes")


def _expect(wire_type: int, wanted: int, what: str) -> None:
    if wire_type != wanted:
        raise CheckFailed(f"protobuf: {what} has wire type {wire_type}, expected {wanted}")


def decode_row_delta(data: bytes) -> dict:
    """A RowDelta in the common form; column values are parsed from their JSON text."""
    delta = {"op": None, "table": "", "rowId": "", "columns": [], "hlc": 0, "clientId": "", "deltaId": ""}
    for field, wire_type, value in _fields(data):
        if field == 1:
            _expect(wire_type, _VARINT, "RowDelta.op")
            if value not in OPS:
                raise CheckFailed(f"RowDelta.op {value} is not INSERT, UPDATE or DELETE")
            delta["op"] = OPS[value]
        elif field in (2, 3, 6, 7):
            _expect(wire_type, _LEN, f"RowDelta field {field}")
            key = {2: "table", 3: "rowId", 6: "clientId", 7: "deltaId"}[field]
            delta[key] = value.decode("utf-8")
        elif field == 4:
            _expect(wire_type, _LEN, "RowDelta.columns")
            column = {"column": "", "value": None}
            for cfield, cwire, cvalue in _fields(value):
                if cfield == 1:
                    _expect(cwire, _LEN, "ColumnDelta.column")
                    column["column"] = cvalue.decode("utf-8")
                elif cfield == 2:
                    _expect(cwire, _LEN, "ColumnDelta.value")
                    try:
                        column["value"] = json.loads(cvalue.decode("utf-8"))
                    except ValueError:
                        raise CheckFailed(f"ColumnDelta.value is not JSON text: {cvalue!r}") from None
            delta["columns"].append(column)
        elif field == 5:
            _expect(wire_type, _FIXED64, "RowDelta.hlc")
            delta["hlc"] = value
    if delta["op"] is None:
        raise CheckFailed("RowDelta without an op (0 is never valid on the wire)")
    return delta


def decode_sync_response(data: bytes) -> dict:
    """{"deltas": [...], "serverHlc": int, "hasMore": bool}."""
    response = {"deltas": [], "serverHlc": 0, "hasMore": False}
    for field, wire_type, value in _fields(data):
        if field == 1:
            _expect(wire_type, _LEN, "SyncResponse.deltas")
            response["deltas"].append(decode_row_delta(value))
        elif field == 2:
            _expect(wire_type, _FIXED64, "SyncResponse.server_hlc")
            response["serverHlc"] = value
        elif field == 3:
            _expect(wire_type, _VARINT, "SyncResponse.has_more")
            response["hasMore"] = bool(value)
    return response


def decode_checkpoint(body: bytes) -> list[dict]:
    """A checkpoint body: frames of (u32 big-endian length || SyncResponse)."""
    responses, pos = [], 0
    while pos < len(body):
        if pos + 4 > len(body):
            raise CheckFailed(f"checkpoint: {len(body) - pos} stray bytes after the last frame")
        (length,) = struct.unpack_from(">I", body, pos)
        pos += 4
        if pos + length > len(body):
            raise CheckFailed(f"checkpoint: a frame of {length} bytes runs past the body's end")
        responses.append(decode_sync_response(body[pos : pos + length]))
        pos += length
    return responses


# ---------------------------------------------------------------------------------------------
# Row state


def fold(deltas, state: dict | None = None) -> dict:
    """Folds deltas (common form, `columns` a {name: value} dict) into {rowId: {column: value}}:
    INSERT starts the row afresh, UPDATE merges the columns it sets, DELETE removes the row."""
    state = {} if state is None else state
    for delta in deltas:
        row_id = delta["rowId"]
        if delta["op"] == "INSERT":
            state[row_id] = dict(delta["columns"])
        elif delta["op"] == "UPDATE":
            state.setdefault(row_id, {}).update(delta["columns"])
        else:
            state.pop(row_id, None)
    return state


def columns_dict(wire_columns: list[dict]) -> dict:
    """The wire list [{"column", "value"}] as {name: value}."""
    return {c["column"]: c["value"] for c in wire_columns}


def write_state_lines(path: str, states: dict) -> int:
    """Writes {reader: {rowId: row}} as JSON lines, one per visible row, sorted by reader then row
    id: {"_reader": reader, "_row_id": rowId, <column>: <value>, ...} with keys sorted.
    Returns the number of lines."""
    lines = []
    for reader in sorted(states):
        for row_id in sorted(states[reader]):
            row = {"_reader": reader, "_row_id": row_id, **states[reader][row_id]}
            lines.append(json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in lines)
    return len(lines)


def check_consistent(reader: str, pulled: dict, pushed: dict) -> None:
    """Every row a reader pulled must be one that was pushed, with the values pushed last.
    Which rows it sees is the sync rules' business; the Rust test compares the file."""
    for row_id, row in pulled.items():
        if row_id not in pushed:
            raise CheckFailed(
                f"{reader} pulled row {row_id!r}, which no client pushed (or was deleted): {row}"
            )
        if row != pushed[row_id]:
            raise CheckFailed(
                f"{reader} pulled row {row_id!r} with values that differ from what was pushed",
                f"pulled {row}\n      pushed {pushed[row_id]}",
            )
    ok(f"{reader}: all {len(pulled)} pulled rows match what was pushed")
