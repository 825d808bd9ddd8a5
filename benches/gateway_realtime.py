"""The gateway's real-time and HTTP/JSON benchmark: push-to-receive latency over the WebSocket
protocol with many subscribers, resident memory per idle WebSocket connection, and JSON push
throughput over keep-alive HTTP, against a running `lakesync serve` with authentication off.

    python benches/gateway_realtime.py --http http://127.0.0.1:PORT --gateway ID
                                       [--server-pid PID] [--subscribers 1000,100] [--pushes 200]
                                       [--interval-ms 10] [--workers W] [--http-pushes 200]
                                       [--http-sizes 100,1000] [--http-threads 1,4]
                                       [--only realtime|http]

The gateway must declare two tables (scripts/bench-gateway.sh does):

- `ticks` (--table): sent_ns string, payload string. The real-time bench writes it.
- `http_bench` (--http-table): title string, owner string, priority integer, done boolean.
  The HTTP bench writes it; it is not the Flight bench's `bench` table, whose pull counts rows.

And limits above the defaults: `ws_max_connections` at least the largest subscriber count plus a
few (the pusher and the warm-up's sockets count too; 2000 is plenty for 1000 subscribers) and
`ws_max_messages_per_second` above the pusher's rate (1000 / --interval-ms = 100 frames a second
by default, over the default cap of 50, which closes the pusher with 1008 "Rate limit
exceeded"). The server's open-file limit must also allow the connections (`ulimit -n`).

1. realtime, once per subscriber count N (default 1000, then 100): N WebSocket connections to
   /v1/sync/{gw}/ws?clientId=sub-<i> are opened by --workers subprocesses (default half the
   CPUs, 1 to 4; each an asyncio loop with the websockets client; --workers 1 puts them all in
   one process) and the bench waits until all are open. A separate pusher connection (its own
   client id, so the subscribers are sent its records) then sends M (--pushes, default 200)
   `0x01 SyncPush` frames of one INSERT each, one every --interval-ms (default 10) on a fixed
   schedule. Each delta carries `time.time_ns()` at send time in `sent_ns` (CLOCK_REALTIME,
   shared by every process on the host). Every subscriber timestamps each `0x03` broadcast frame
   as it is handed to the bench; frames are decoded only after the run, so decoding does not
   delay the next frame. Latency per (subscriber, delta) = receive time - sent_ns, which
   includes the gateway's durable commit of the push (it broadcasts only what it accepted) and
   the client's own scheduling. Reported: p50, p99 and max over all pairs, and deliveries
   against the N x M expected (anything short is a failure: exit status 1). Every push is N
   frames (1000 subscribers, one push every 10 ms: 100 000 frames a second), and the Python
   client needs some 15-25 us of CPU per frame: client_busy is the busiest subscriber process's
   CPU seconds over the wall seconds it spent receiving; near 1, the latencies measure the
   client's own backlog, not the gateway, and more --workers (and CPUs beside the server's) are
   needed.
2. idle-memory, in the first round only: VmRSS of --server-pid (from /proc/PID/status) after
   the warm-up and before the round's connections open, and again once all N are open and have
   been idle for --idle-seconds (default 2); (after - before) / N in KiB. The warm-up opens a few
   sockets and pushes a few ticks so the gateway's one-off allocations are made before the
   first reading. Later rounds reuse memory the first one freed, so they are not measured.
3. http-push: K (--http-pushes, default 200) POST /v1/sync/{gw}/push of D deltas each (for each
   D in --http-sizes, default 100 and 1000), from T threads (for each T in --http-threads,
   default 1 and 4) that share the K pushes, each thread on one keep-alive
   http.client.HTTPConnection. Deltas are INSERTs with four columns, unique row ids per run and
   the original protocol's deltaId (lakesync_wire.json_delta_id); their HLCs are stamped when
   the body is built, just before it is sent (the gateway refuses HLCs over 5 s ahead of its
   clock). Bodies over --max-body (default 1 MiB, the gateway's max_push_bytes) are refused
   before anything is sent. Timed from the threads' common start to the last answer; the
   client's body building is inside the time (it is reported as build_s).

Prints one JSON line per figure on stdout (progress on stderr):
{"bench": "realtime", "subscribers", "pushes", "deliveries", "expected", "p50_ms", "p99_ms",
 "max_ms", "workers", "interval_ms", "push_rate_hz", "open_s", "client_busy"}
{"bench": "idle-memory", "connections", "kib_per_connection", "rss_before_kib",
 "rss_after_kib", "idle_s"}
{"bench": "http-push", "deltas_per_push", "threads", "pushes", "deltas_per_s", "mb_per_s",
 "body_bytes", "seconds", "build_s", "push_p50_ms", "push_p99_ms"}
MB = 10^6 bytes of JSON request body. Percentiles are nearest-rank.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import math
import os
import resource
import sys
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
from lakesync_wire import (  # noqa: E402
    TAG_BROADCAST,
    TAG_SYNC_PUSH,
    CheckFailed,
    HlcClock,
    decode_sync_response,
    encode_sync_push,
    hlc_at,
    json_delta_id,
    now_ms,
    stable_stringify,
)
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

OPEN_TIMEOUT_S = 30.0
OPEN_ATTEMPTS = 3
OPEN_CONCURRENCY = 64  # handshakes in flight per worker (keeps the listen backlog short)
CLOSE_TIMEOUT_S = 2.0
WARMUP_SOCKETS = 4
WARMUP_PUSHES = 20


def log(message: str) -> None:
    print(f"gateway_realtime: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    sys.exit(f"gateway_realtime: {message}")


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def percentile(ordered: list, q: float):
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log(f"open-file limit {target} (the hard limit) is below the {wanted} wanted")


def ws_url(base: str, gateway: str, client_id: str) -> str:
    parts = urllib.parse.urlsplit(base)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}[parts.scheme]
    path = f"/v1/sync/{urllib.parse.quote(gateway, safe='')}/ws"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, urllib.parse.urlencode({"clientId": client_id}), ""))


def read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])  # "VmRSS:   12345 kB" (kB here means KiB)
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def describe_close(error: ConnectionClosed) -> str:
    frame = error.rcvd
    if frame is None:
        return "closed without a close frame"
    hint = ""
    if frame.code == 1008 and "rate" in frame.reason.lower():
        hint = " (raise the gateway's ws_max_messages_per_second)"
    return f"closed with {frame.code} {frame.reason!r}{hint}"


async def open_socket(url: str):
    """A websockets client connection, retried on network errors; no compression (the gateway
    offers none) and no keepalive pings (they would disturb the idle-memory reading)."""
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            return await connect(
                url,
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=OPEN_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            hint = " (at the gateway's ws_max_connections?)" if status == 503 else ""
            raise RuntimeError(f"handshake refused: HTTP {status}{hint}") from None
        except (OSError, TimeoutError) as error:
            if attempt == OPEN_ATTEMPTS:
                raise RuntimeError(f"cannot connect: {error!r}") from None
            await asyncio.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Subscribers (a worker process, or the warm-up in the main one)


class Subscriber:
    __slots__ = ("ws", "frames", "seen", "error", "unexpected")

    def __init__(self, ws):
        self.ws = ws
        self.frames: list[tuple[int, bytes]] = []  # (receive time_ns, raw frame) holding the marker
        self.seen = 0  # marker occurrences: a cheap count of this round's deltas, decoded later
        self.error: str | None = None
        self.unexpected = 0  # frames that were neither a broadcast nor binary


class SubscriberGroup:
    """Opens connections, keeps the frames of one round (by row-id marker) and measures them."""

    def __init__(self, urls: list[str], marker: str, table: str, expected: int):
        self.urls, self.table, self.expected = urls, table, expected
        self.marker = marker.encode()
        self.subs: list[Subscriber] = []
        self.failures: list[str] = []
        self.tasks: list[asyncio.Task] = []
        self.finished = 0
        self.all_done = asyncio.Event()
        self.first: tuple[int, float] | None = None  # (time_ns, process CPU s) at the first delta

    async def open(self) -> float:
        started = time.perf_counter()
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one(url: str) -> None:
            async with gate:
                try:
                    ws = await open_socket(url)
                except RuntimeError as error:
                    self.failures.append(f"{url.rsplit('=', 1)[-1]}: {error}")
                    return
            sub = Subscriber(ws)
            self.subs.append(sub)
            self.tasks.append(asyncio.create_task(self.receive(sub)))

        await asyncio.gather(*(one(url) for url in self.urls))
        if not self.subs:
            self.all_done.set()
        return time.perf_counter() - started

    async def receive(self, sub: Subscriber) -> None:
        marker, expected = self.marker, self.expected
        done = False
        try:
            async for frame in sub.ws:
                now = time.time_ns()
                if not isinstance(frame, bytes) or frame[:1] != b"\x03":
                    sub.unexpected += 1
                    continue
                count = frame.count(marker)
                if count:
                    if self.first is None:
                        self.first = (now, time.process_time())
                    sub.frames.append((now, frame))
                    sub.seen += count
                    if not done and sub.seen >= expected:
                        done = True
                        self.mark_done()
        except ConnectionClosed as error:
            sub.error = describe_close(error)
        if not done:  # it will hear nothing more
            self.mark_done()

    def mark_done(self) -> None:
        self.finished += 1
        if self.finished >= len(self.subs):
            self.all_done.set()

    def measure(self) -> dict:
        """Decodes the kept frames: deliveries (distinct row ids of this round per subscriber),
        their latencies in microseconds, and how busy this process was receiving them: CPU
        seconds over wall seconds from the first kept frame to the last (near 1 = saturated,
        so the latencies include the client's own queueing)."""
        busy = None
        if self.first is not None:
            last = max(received for sub in self.subs for received, _ in sub.frames[-1:])
            wall = (last - self.first[0]) / 1e9
            busy = round((time.process_time() - self.first[1]) / wall, 3) if wall > 0.05 else None
        prefix = self.marker.decode()
        latencies, deliveries, duplicates = [], 0, 0
        errors = list(self.failures)
        for sub in self.subs:
            got: set[str] = set()
            for received_ns, frame in sub.frames:
                try:
                    response = decode_sync_response(frame[1:])
                except CheckFailed as error:
                    errors.append(f"undecodable broadcast: {error}")
                    continue
                for delta in response["deltas"]:
                    if delta["table"] != self.table or not delta["rowId"].startswith(prefix):
                        continue
                    if delta["rowId"] in got:
                        duplicates += 1
                        continue
                    got.add(delta["rowId"])
                    sent = next((c["value"] for c in delta["columns"] if c["column"] == "sent_ns"), None)
                    if not isinstance(sent, str) or not sent.isdigit():
                        errors.append(f"a broadcast of {delta['rowId']} has no sent_ns string: {sent!r}")
                        continue
                    latencies.append((received_ns - int(sent)) // 1000)
            deliveries += len(got)
            if sub.error and len(got) < self.expected:
                errors.append(sub.error)
            if sub.unexpected:
                errors.append(f"{sub.unexpected} frame(s) that were not 0x03 broadcasts")
        return {
            "opened": len(self.subs),
            "failed": len(self.failures),
            "deliveries": deliveries,
            "duplicates": duplicates,
            "latencies_us": latencies,
            "busy": busy,
            "errors": errors[:10],
        }

    async def close(self) -> None:
        await asyncio.gather(*(sub.ws.close() for sub in self.subs), return_exceptions=True)
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def worker_main(config: dict) -> None:
    """--subscriber-worker CONFIG: opens its connections, says `open {...}` on stdout, and says
    `result {...}` when every connection has heard the round's deltas or stdin says `stop`
    (or closes); then closes its connections and exits."""
    urls = [ws_url(config["http"], config["gateway"], f"sub-{i}") for i in config["indices"]]
    raise_fd_limit(len(urls) + 256)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    group = SubscriberGroup(urls, config["marker"], config["table"], config["expected"])
    seconds = await group.open()
    opened = {"opened": len(group.subs), "failed": group.failures[:5], "seconds": seconds}
    print("open " + json.dumps(opened), flush=True)

    stop = asyncio.create_task(stdin.readline())  # `stop` or end of input
    done = asyncio.create_task(group.all_done.wait())
    await asyncio.wait({stop, done}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    done.cancel()
    try:
        print("result " + json.dumps(group.measure()), flush=True)
    except BrokenPipeError:  # the main process has gone (it failed); just close
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    await group.close()


# ---------------------------------------------------------------------------------------------
# The real-time bench


class Worker:
    """A --subscriber-worker subprocess seen from the main process."""

    def __init__(self, process):
        self.process = process

    @classmethod
    async def start(cls, config: dict) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            os.path.abspath(__file__),
            "--subscriber-worker",
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 28,  # the result line holds every latency
        )
        return cls(process)

    async def expect(self, word: str) -> dict:
        line = await self.process.stdout.readline()
        if not line.startswith(word.encode() + b" "):
            await self.process.wait()
            fail(f"a subscriber worker said {line[:200]!r} (exit {self.process.returncode}), expected {word!r}")
        return json.loads(line[len(word) + 1 :])

    def stop(self) -> None:
        if self.process.stdin and not self.process.stdin.is_closing():
            self.process.stdin.write(b"stop\n")

    async def finish(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        await self.process.wait()


class Pusher:
    """One WebSocket connection sending single-delta 0x01 SyncPush frames on a schedule."""

    def __init__(self, base: str, gateway: str, client_id: str, table: str, payload: str):
        self.url = ws_url(base, gateway, client_id)
        self.client_id, self.table, self.payload = client_id, table, payload
        self.clock = HlcClock()
        self.ws = None
        self.acks = 0
        self.acked = asyncio.Event()
        self.wanted = 0
        self.reader: asyncio.Task | None = None
        self.error: str | None = None

    async def open(self) -> None:
        self.ws = await open_socket(self.url)
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        try:
            async for frame in self.ws:
                if frame[:1] == bytes([TAG_BROADCAST]):
                    continue  # another client's push; not ours to count
                response = decode_sync_response(frame)
                if response["serverHlc"] <= 0:
                    self.error = f"a push was answered without a server HLC: {response}"
                self.acks += 1
                if self.acks >= self.wanted:
                    self.acked.set()
        except ConnectionClosed as error:
            self.error = f"the pusher's connection {describe_close(error)}"
        except CheckFailed as error:
            self.error = f"the pusher got an undecodable answer: {error}"
        self.acked.set()

    async def run(self, marker: str, count: int, interval_s: float) -> float:
        """Sends `count` pushes, one every `interval_s`; returns the seconds from the first send
        to the last, after waiting for every acknowledgement."""
        self.acks, self.wanted = 0, count
        self.acked.clear()
        loop = asyncio.get_running_loop()
        start = loop.time()
        first = last = time.perf_counter()
        for i in range(count):
            delay = start + i * interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.error:
                break
            row_id = f"{marker}{i:06d}"
            sent = time.time_ns()
            hlc = self.clock.next()
            columns = [{"column": "sent_ns", "value": str(sent)}, {"column": "payload", "value": self.payload}]
            delta = {
                "op": "INSERT",
                "table": self.table,
                "rowId": row_id,
                "clientId": self.client_id,
                "columns": columns,
                "hlc": hlc,
                "deltaId": json_delta_id(self.client_id, hlc, self.table, row_id, columns),
            }
            try:
                await self.ws.send(bytes([TAG_SYNC_PUSH]) + encode_sync_push(self.client_id, [delta]))
            except ConnectionClosed as error:
                self.error = self.error or f"the pusher's connection {describe_close(error)}"
                break
            if i == 0:
                first = time.perf_counter()
            last = time.perf_counter()
        try:
            await asyncio.wait_for(self.acked.wait(), 30)
        except TimeoutError:
            self.error = self.error or f"{count - self.acks} of {count} pushes unanswered after 30 s"
        if self.error:
            fail(self.error)
        return last - first

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def warm_up(args, pusher: Pusher, run: str) -> None:
    """A few sockets hear a few pushes: checks the set-up end to end before the rounds (a table
    that is not declared, a rate cap too low) and makes the gateway's one-off allocations."""
    urls = [ws_url(args.http, args.gateway, f"warmup-{run}-{i}") for i in range(WARMUP_SOCKETS)]
    marker = f"warm-{run}-"
    group = SubscriberGroup(urls, marker, args.table, WARMUP_PUSHES)
    await group.open()
    if group.failures:
        fail(f"warm-up: {len(group.failures)} of {len(urls)} sockets did not open: {group.failures[:3]}")
    await pusher.run(marker, WARMUP_PUSHES, args.interval_ms / 1000)
    try:
        await asyncio.wait_for(group.all_done.wait(), 10)
    except TimeoutError:
        pass
    result = group.measure()
    await group.close()
    if result["deliveries"] != WARMUP_PUSHES * WARMUP_SOCKETS:
        fail(
            f"warm-up: {result['deliveries']} of {WARMUP_PUSHES * WARMUP_SOCKETS} broadcasts arrived; "
            f"errors: {result['errors']} (is table {args.table!r} declared, with sent_ns and payload?)"
        )
    log(f"warm-up: {WARMUP_SOCKETS} sockets heard all {WARMUP_PUSHES} pushes")


async def realtime_round(args, pusher: Pusher, run: str, n: int, measure_memory: bool) -> bool:
    marker = f"rt{n}-{run}-"
    workers_n = max(1, min(args.workers, n))
    shares = [list(range(w, n, workers_n)) for w in range(workers_n)]
    rss_before = read_rss_kib(args.server_pid) if measure_memory else None

    log(f"realtime: opening {n} subscriber connections in {workers_n} process(es)")
    started = time.perf_counter()
    workers = await asyncio.gather(
        *(
            Worker.start(
                {
                    "http": args.http,
                    "gateway": args.gateway,
                    "indices": share,
                    "marker": marker,
                    "table": args.table,
                    "expected": args.pushes,
                }
            )
            for share in shares
        )
    )
    opened = await asyncio.gather(*(w.expect("open") for w in workers))
    open_s = time.perf_counter() - started
    total_open = sum(o["opened"] for o in opened)
    failures = [f for o in opened for f in o["failed"]]
    problems = f"; failures: {failures[:3]}" if failures else ""
    log(f"realtime: {total_open} of {n} connections open in {open_s:.1f} s{problems}")

    if measure_memory:
        await asyncio.sleep(args.idle_seconds)
        rss_after = read_rss_kib(args.server_pid)
        emit(
            {
                "bench": "idle-memory",
                "connections": total_open,
                "kib_per_connection": round((rss_after - rss_before) / max(total_open, 1), 1),
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "idle_s": args.idle_seconds,
            }
        )

    log(f"realtime: pushing {args.pushes} single-delta pushes, one every {args.interval_ms} ms")
    push_s = await pusher.run(marker, args.pushes, args.interval_ms / 1000)
    results_task = asyncio.gather(*(w.expect("result") for w in workers))
    try:
        results = await asyncio.wait_for(asyncio.shield(results_task), args.drain_timeout)
    except TimeoutError:
        log(f"realtime: not every delivery arrived within {args.drain_timeout} s of the last push; stopping")
        for w in workers:
            w.stop()
        results = await results_task
    await asyncio.gather(*(w.finish() for w in workers))  # the connections are closed

    latencies = sorted(lat for r in results for lat in r["latencies_us"])
    deliveries = sum(r["deliveries"] for r in results)
    expected = n * args.pushes
    errors = [e for r in results for e in r["errors"]]
    duplicates = sum(r["duplicates"] for r in results)
    busy = max((r["busy"] for r in results if r["busy"] is not None), default=None)

    def ms(q: float):
        return round(percentile(latencies, q) / 1000, 3) if latencies else None

    emit(
        {
            "bench": "realtime",
            "subscribers": n,
            "pushes": args.pushes,
            "deliveries": deliveries,
            "expected": expected,
            "p50_ms": ms(0.50),
            "p99_ms": ms(0.99),
            "max_ms": ms(1.0),
            "workers": workers_n,
            "interval_ms": args.interval_ms,
            "push_rate_hz": round((args.pushes - 1) / push_s, 1) if push_s > 0 else None,
            "open_s": round(open_s, 2),
            "client_busy": busy,
        }
    )
    if busy is not None and busy > 0.8:
        log(
            f"realtime: a subscriber process was {busy:.0%} busy receiving: the latencies include the "
            "client's own queueing; give more --workers (or more CPUs)"
        )
    complete = deliveries == expected
    if not complete or duplicates or errors:
        log(
            f"realtime: {n} subscribers: {deliveries} of {expected} deliveries, {duplicates} duplicates; "
            f"errors: {errors[:5]}"
        )
    return complete


async def realtime(args, run: str) -> bool:
    raise_fd_limit(WARMUP_SOCKETS + 256)
    pusher = Pusher(args.http, args.gateway, f"pusher-{run}", args.table, "p" * args.payload_bytes)
    await pusher.open()
    await warm_up(args, pusher, run)
    complete = True
    for index, n in enumerate(args.subscribers):
        measure = index == 0 and args.server_pid is not None
        if measure:
            await asyncio.sleep(1)  # let the warm-up's closed sockets be freed
        complete &= await realtime_round(args, pusher, run, n, measure)
    await pusher.close()
    return complete


# ---------------------------------------------------------------------------------------------
# The HTTP push bench


class HlcBlocks:
    """Blocks of strictly increasing HLCs that follow the wall clock, shared by threads."""

    def __init__(self) -> None:
        self.last = 0
        self.lock = threading.Lock()

    def take(self, count: int) -> int:
        with self.lock:
            start = max(hlc_at(now_ms()), self.last + 1)
            self.last = start + count - 1
            return start


def split_on(text: str, markers: list[str]) -> list[str]:
    """`text` cut at each marker, in order; each must occur exactly once."""
    pieces = []
    for marker in markers:
        if text.count(marker) != 1:
            raise AssertionError(f"template marker {marker!r} occurs {text.count(marker)} times")
        head, text = text.split(marker)
        pieces.append(head)
    return pieces + [text]


class PushBodies:
    """Builds JSON push bodies quickly from per-variant templates: only the row id, the HLC and
    the deltaId change per delta. The deltaId is SHA-256 of the stable JSON of
    {clientId, columns, hlc, rowId, table} (keys sorted), so a hash of the part before the HLC
    is kept per variant and copied. Row ids must need no JSON escaping."""

    VARIANTS = 16
    ROW, HLC, DID = "@@ROW@@", "@@HLC@@", "@@DID@@"

    def __init__(self, client_id: str, table: str):
        self.client_id, self.table = client_id, table
        self.variants = []
        for v in range(self.VARIANTS):
            columns = self.columns(v)
            identity = stable_stringify(
                {"clientId": client_id, "hlc": self.HLC, "table": table, "rowId": self.ROW, "columns": columns}
            )
            before_hlc, between, after_row = split_on(identity, [self.HLC, self.ROW])
            delta = json.dumps(
                {
                    "op": "INSERT",
                    "table": table,
                    "rowId": self.ROW,
                    "clientId": client_id,
                    "columns": columns,
                    "hlc": self.HLC,
                    "deltaId": self.DID,
                },
                separators=(",", ":"),
                ensure_ascii=False,
            )
            pieces = split_on(delta, [self.ROW, self.HLC, self.DID])
            self.variants.append((hashlib.sha256(before_hlc.encode()), between, after_row, pieces))
        self.head = '{"clientId":' + json.dumps(client_id) + ',"deltas":['
        self.tail = '],"lastSeenHlc":"0"}'

    @staticmethod
    def columns(v: int) -> list[dict]:
        words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
        title = " ".join(words[(v + k) % len(words)] for k in range(3 + v % 4))
        return [
            {"column": "title", "value": f"{title} {v}"},
            {"column": "owner", "value": f"user-{v * 7 % 50:03d}"},
            {"column": "priority", "value": v % 5},
            {"column": "done", "value": v % 3 == 0},
        ]

    def body(self, row_prefix: str, count: int, first_hlc: int) -> bytes:
        parts = []
        variants = self.variants
        for i in range(count):
            v = i % self.VARIANTS
            prefix, between, after_row, (d0, d1, d2, d3) = variants[v]
            row_id = f"{row_prefix}{i:05d}"
            hlc = first_hlc + i
            digest = prefix.copy()
            digest.update(f"{hlc}{between}{row_id}{after_row}".encode())
            parts.append(f"{d0}{row_id}{d1}{hlc}{d2}{digest.hexdigest()}{d3}")
        return (self.head + ",".join(parts) + self.tail).encode()

    def check(self) -> None:
        """The templates agree with lakesync_wire.json_delta_id and build valid JSON."""
        body = json.loads(self.body("check-", self.VARIANTS, 1 << 40))
        for delta in body["deltas"]:
            expected = json_delta_id(
                delta["clientId"], int(delta["hlc"]), delta["table"], delta["rowId"], delta["columns"]
            )
            if delta["deltaId"] != expected:
                raise AssertionError(f"template deltaId {delta['deltaId']} != json_delta_id {expected} for {delta}")


def http_push_figure(args, bodies: PushBodies, hlcs: HlcBlocks, run: str, per_push: int, threads: int) -> dict:
    parts = urllib.parse.urlsplit(args.http)
    path = f"/v1/sync/{urllib.parse.quote(args.gateway, safe='')}/push"
    probe = bodies.body(f"{run}-{per_push}x{threads}-00000-", per_push, hlc_at(now_ms()))
    if len(probe) > args.max_body:
        fail(f"a push of {per_push} deltas is {len(probe):,} bytes, over --max-body {args.max_body:,}")
    barrier = threading.Barrier(threads + 1)
    stats = [{"bytes": 0, "deltas": 0, "build": 0.0, "latencies": [], "error": None} for _ in range(threads)]

    def client(t: int) -> None:
        mine = stats[t]
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)
        try:
            conn.connect()
        except OSError as error:
            mine["error"] = f"cannot connect: {error}"
        barrier.wait()
        if mine["error"]:
            return
        try:
            for j in range(t, args.http_pushes, threads):
                built = time.perf_counter()
                body = bodies.body(f"{run}-{per_push}x{threads}-{j:05d}-", per_push, hlcs.take(per_push))
                sent = time.perf_counter()
                mine["build"] += sent - built
                conn.request("POST", path, body, {"Content-Type": "application/json", "Accept": "application/json"})
                response = conn.getresponse()
                answer = response.read()
                mine["latencies"].append(time.perf_counter() - sent)
                if response.status != 200:
                    mine["error"] = f"push {j}: HTTP {response.status}: {answer[:300]!r}"
                    return
                accepted = json.loads(answer).get("accepted")
                if accepted != per_push:
                    mine["error"] = f"push {j}: accepted {accepted} of {per_push}: {answer[:300]!r}"
                    return
                mine["bytes"] += len(body)
                mine["deltas"] += per_push
        except (OSError, http.client.HTTPException, ValueError) as error:
            mine["error"] = f"{type(error).__name__}: {error}"
        finally:
            conn.close()

    pool = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - started
    errors = [s["error"] for s in stats if s["error"]]
    if errors:
        fail(f"http-push {per_push} deltas x {threads} threads: {errors[0]}")
    deltas = sum(s["deltas"] for s in stats)
    nbytes = sum(s["bytes"] for s in stats)
    latencies = sorted(lat for s in stats for lat in s["latencies"])
    line = {
        "bench": "http-push",
        "deltas_per_push": per_push,
        "threads": threads,
        "pushes": args.http_pushes,
        "deltas_per_s": round(deltas / seconds),
        "mb_per_s": round(nbytes / seconds / 1e6, 2),
        "body_bytes": nbytes,
        "seconds": round(seconds, 3),
        "build_s": round(sum(s["build"] for s in stats), 3),
        "push_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "push_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }
    emit(line)
    return line


def http_bench(args, run: str) -> None:
    bodies = PushBodies(f"http-{run}", args.http_table)
    bodies.check()
    hlcs = HlcBlocks()
    for per_push in args.http_sizes:
        for threads in args.http_threads:
            log(f"http-push: {args.http_pushes} pushes of {per_push} deltas from {threads} thread(s)")
            http_push_figure(args, bodies, hlcs, run, per_push, threads)


# ---------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main() -> int:
    if sys.argv[1:2] == ["--subscriber-worker"]:
        asyncio.run(worker_main(json.loads(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", required=True, help="http://host:port of the gateway's HTTP listener")
    parser.add_argument("--gateway", required=True, help="the gateway id in the routes")
    parser.add_argument("--server-pid", type=int, help="the gateway's process id, for idle-memory")
    parser.add_argument("--only", choices=("realtime", "http"), help="run one bench (default both)")
    parser.add_argument("--table", default="ticks")
    parser.add_argument(
        "--subscribers", type=int_list, default=[1000, 100], help="rounds; the first also measures idle memory"
    )
    parser.add_argument("--pushes", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 2) // 2)),
        help="subscriber processes (default: half the CPUs, 1 to 4)",
    )
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to wait for deliveries after the last push"
    )
    parser.add_argument("--http-table", default="http_bench")
    parser.add_argument("--http-pushes", type=int, default=200)
    parser.add_argument("--http-sizes", type=int_list, default=[100, 1000])
    parser.add_argument("--http-threads", type=int_list, default=[1, 4])
    parser.add_argument("--max-body", type=int, default=1 << 20, help="the gateway's max_push_bytes")
    args = parser.parse_args()
    args.http = args.http.rstrip("/")
    if args.server_pid is not None and not os.path.exists(f"/proc/{args.server_pid}/status"):
        parser.error(f"--server-pid {args.server_pid}: no /proc/{args.server_pid}/status (not running, or not Linux)")

    run = os.urandom(4).hex()  # row ids and client ids are unique per run
    complete = True
    if args.only in (None, "realtime"):
        complete = asyncio.run(realtime(args, run))
    if args.only in (None, "http"):
        http_bench(args, run)
    if not complete:
        log("FAIL: some subscribers missed deliveries")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
