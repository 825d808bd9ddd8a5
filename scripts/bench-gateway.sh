#!/usr/bin/env bash
# bench-gateway.sh: the gateway's Flight benchmark — a pyarrow.flight client pushes N batches of
# 10 000 delta-contract rows to `lakesync serve` in one DoPut stream and pulls them back with
# DoGet, beside the same client against a pyarrow.flight server that does nothing with the
# batches (the ceiling), with rows/s, MB/s and the ratio per direction (benches/flight_ceiling.py).
#
#   bash scripts/bench-gateway.sh [BIN] [N]   # BIN: a built lakesync binary, default
#                                             # $CARGO_TARGET_DIR/release/lakesync; N: batches, default 100
#
# Does not build: run `cargo build --release --bin lakesync` first. Needs the python tools
# (scripts/python-tools.sh). The gateway runs without auth from a temporary pipeline config in
# $LAKESYNC_BENCH_DIR (default $TMPDIR/lakesync-bench-gateway); its log is serve.log there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/lakesync-target}"
BIN="${1:-$CARGO_TARGET_DIR/release/lakesync}"
BATCHES="${2:-100}"
WORK="${LAKESYNC_BENCH_DIR:-${TMPDIR:-/tmp}/lakesync-bench-gateway}"

[[ -x $BIN ]] || { echo "bench-gateway: no lakesync binary at $BIN (cargo build --release --bin lakesync)" >&2; exit 1; }
eval "$(bash scripts/python-tools.sh)"

rm -rf "$WORK" && mkdir -p "$WORK"
# Two free local ports (the kernel picks them; a race with another process is unlikely).
read -r FLIGHT_PORT HTTP_PORT < <("$LAKESYNC_PYTHON" - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)

# The table's columns are benches/flight_ceiling.py's DATA_COLUMNS: keep the two in step.
cat >"$WORK/gateway.yaml" <<YAML
version: 1
name: bench-gateway
state_dir: $WORK/state
tables:
  - table: bench
    columns:
      - {name: c0, type: string}
      - {name: c1, type: string}
      - {name: c2, type: string}
      - {name: c3, type: integer}
      - {name: c4, type: integer}
      - {name: c5, type: number}
      - {name: c6, type: number}
      - {name: c7, type: boolean}
sources:
  clients:
    type: gateway
    id: bench
    data_dir: $WORK/gateway
    listen: {flight: "127.0.0.1:$FLIGHT_PORT", http: "127.0.0.1:$HTTP_PORT"}
    limits: {backpressure_bytes: 4GiB}
sinks:
  lake:
    type: parquet
    input: clients
    path: $WORK/out
YAML

echo "== lakesync serve (Flight 127.0.0.1:$FLIGHT_PORT, HTTP 127.0.0.1:$HTTP_PORT)" >&2
"$BIN" serve --config "$WORK/gateway.yaml" >"$WORK/serve.log" 2>&1 &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER" 2>/dev/null || true
  fi
  wait "$SERVER" 2>/dev/null || true
}
trap stop_server EXIT

# Wait up to 60 s for GET /health to answer {"status": "ok"}.
for i in $(seq 300); do
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "bench-gateway: lakesync serve exited before it was healthy; $WORK/serve.log:" >&2
    tail -n 40 "$WORK/serve.log" >&2
    exit 1
  fi
  if curl -fsS "http://127.0.0.1:$HTTP_PORT/health" 2>/dev/null | grep -q '"ok"'; then
    break
  fi
  if [[ $i == 300 ]]; then
    echo "bench-gateway: GET /health did not answer ok within 60 s; $WORK/serve.log:" >&2
    tail -n 40 "$WORK/serve.log" >&2
    exit 1
  fi
  sleep 0.2
done

echo "== flight_ceiling.py: $BATCHES batches of 10 000 rows, reference then lakesync" >&2
"$LAKESYNC_PYTHON" benches/flight_ceiling.py --batches "$BATCHES" --ours "grpc://127.0.0.1:$FLIGHT_PORT" | tee "$WORK/results.jsonl"
if [[ -r /proc/$SERVER/status ]]; then
  echo "lakesync serve peak RSS: $(awk '/^VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$SERVER/status")" >&2
fi
echo "== results in $WORK/results.jsonl" >&2
