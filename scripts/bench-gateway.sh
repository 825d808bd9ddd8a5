#!/usr/bin/env bash
# bench-gateway.sh: the gateway's benchmarks against one `lakesync serve`, in this order:
#
#   realtime  benches/gateway_realtime.py --only realtime: WebSocket push-to-receive latency
#             with 1000 and then 100 subscribers (p50/p99/max over every subscriber and delta,
#             and whether every delivery arrived), and the server's resident memory per idle
#             WebSocket connection (1000 connections, measured first, on a fresh server).
#   flight    benches/flight_ceiling.py: a pyarrow.flight client pushes N batches of 10 000
#             delta-contract rows in one DoPut stream and pulls them back with DoGet, beside the
#             same client against a pyarrow.flight server that does nothing with the batches
#             (the ceiling), with rows/s, MB/s and the ratio per direction.
#   http      benches/gateway_realtime.py --only http: JSON pushes over keep-alive HTTP (100 and
#             1000 deltas a push, from 1 and 4 threads), deltas/s and MB/s. Last, so its
#             440 000 deltas do not weigh on the Flight figures.
#
#   bash scripts/bench-gateway.sh [BIN] [N]   # BIN: a built lakesync binary, default
#                                             # $CARGO_TARGET_DIR/release/lakesync; N: batches, default 100
#   LAKESYNC_BENCH_GATEWAY="realtime http" bash scripts/bench-gateway.sh   # a subset
#
# Does not build: run `cargo build --release --bin lakesync` first. Needs the python tools
# (scripts/python-tools.sh). The gateway runs without auth from a temporary pipeline config in
# $LAKESYNC_BENCH_DIR (default $TMPDIR/lakesync-bench-gateway), on ports the kernel picks (0 in
# the config, read back from the `listening ...` line serve prints on stdout); its log is
# serve.log there and every JSON result line goes to results.jsonl.
#
# The config raises two WebSocket limits above their defaults for the realtime bench:
# ws_max_connections 2000 (1000 subscribers plus the pusher and the warm-up's sockets, over the
# default 1000) and ws_max_messages_per_second 100000 (the pusher sends 100 frames a second,
# over the default 50, which would close it with 1008 "Rate limit exceeded"). The open-file
# limit is raised too (the server does not raise its own; 1000 sockets need more than 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/lakesync-target}"
BIN="${1:-$CARGO_TARGET_DIR/release/lakesync}"
BATCHES="${2:-100}"
WORK="${LAKESYNC_BENCH_DIR:-${TMPDIR:-/tmp}/lakesync-bench-gateway}"
SUITES="${LAKESYNC_BENCH_GATEWAY:-realtime flight http}"
for suite in $SUITES; do
  case $suite in
    realtime | flight | http) ;;
    *) echo "bench-gateway: unknown bench $suite in LAKESYNC_BENCH_GATEWAY (realtime, flight, http)" >&2; exit 1 ;;
  esac
done

[[ -x $BIN ]] || { echo "bench-gateway: no lakesync binary at $BIN (cargo build --release --bin lakesync)" >&2; exit 1; }
eval "$(bash scripts/python-tools.sh)"

rm -rf "$WORK" && mkdir -p "$WORK"

# 1000 WebSocket connections need more open files than a 1024 soft limit allows; the server
# inherits this shell's limit.
FILES_WANTED=8192
files_soft=$(ulimit -Sn)
if [[ $files_soft != unlimited ]] && ((files_soft < FILES_WANTED)); then
  files_hard=$(ulimit -Hn)
  if [[ $files_hard == unlimited ]] || ((files_hard >= FILES_WANTED)); then
    ulimit -Sn "$FILES_WANTED"
  else
    ulimit -Sn "$files_hard"
    echo "bench-gateway: the open-file limit is $files_hard (hard); 1000 WebSocket connections may not fit" >&2
  fi
fi

# bench's columns are benches/flight_ceiling.py's DATA_COLUMNS, ticks' and http_bench's are
# benches/gateway_realtime.py's (its --table and --http-table): keep them in step.
cat >"$WORK/gateway.yaml" <<YAML
version: 1
name: bench-gateway
state_dir: $WORK/state
flush: {max_rows: 100000, max_bytes: 64MiB, max_age: 5s}
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
  - table: ticks
    columns:
      - {name: sent_ns, type: string}
      - {name: payload, type: string}
  - table: http_bench
    columns:
      - {name: title, type: string}
      - {name: owner, type: string}
      - {name: priority, type: integer}
      - {name: done, type: boolean}
sources:
  clients:
    type: gateway
    id: bench
    data_dir: $WORK/gateway
    listen: {flight: "127.0.0.1:0", http: "127.0.0.1:0"}
    limits:
      backpressure_bytes: 4GiB
      max_push_bytes: 1MiB
      ws_max_connections: 2000
      ws_max_messages_per_second: 100000
sinks:
  lake:
    type: parquet
    input: clients
    path: $WORK/out
YAML

echo "== lakesync serve --config $WORK/gateway.yaml" >&2
"$BIN" serve --config "$WORK/gateway.yaml" >"$WORK/serve.out" 2>"$WORK/serve.log" &
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

# Wait up to 60 s for `listening gateway=<id> flight=<addr> http=<addr>` on stdout, then for
# GET /health to answer {"status": "ok"}.
FLIGHT_ADDR="" HTTP_ADDR=""
for i in $(seq 300); do
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "bench-gateway: lakesync serve exited before it was healthy; $WORK/serve.log:" >&2
    tail -n 40 "$WORK/serve.log" >&2
    exit 1
  fi
  if [[ -z $HTTP_ADDR ]]; then
    listening=$(grep -m1 '^listening ' "$WORK/serve.out" || true)
    FLIGHT_ADDR=$(sed -n 's/.* flight=\([^ ]*\).*/\1/p' <<<"$listening")
    HTTP_ADDR=$(sed -n 's/.* http=\([^ ]*\).*/\1/p' <<<"$listening")
  fi
  if [[ -n $HTTP_ADDR ]] && curl -fsS "http://$HTTP_ADDR/health" 2>/dev/null | grep -q '"ok"'; then
    echo "== $listening (pid $SERVER)" >&2
    break
  fi
  if [[ $i == 300 ]]; then
    echo "bench-gateway: GET /health did not answer ok within 60 s; $WORK/serve.log:" >&2
    tail -n 40 "$WORK/serve.log" >&2
    exit 1
  fi
  sleep 0.2
done

if [[ -z $FLIGHT_ADDR ]]; then
  echo "bench-gateway: no flight= address in the listening line: $listening" >&2
  exit 1
fi

: >"$WORK/results.jsonl"
status=0
if [[ " $SUITES " == *" realtime "* ]]; then
  echo "== gateway_realtime.py: WebSocket latency with 1000 and 100 subscribers, idle memory" >&2
  "$LAKESYNC_PYTHON" benches/gateway_realtime.py --only realtime --http "http://$HTTP_ADDR" --gateway bench \
    --server-pid "$SERVER" | tee -a "$WORK/results.jsonl" || status=1
fi
if [[ " $SUITES " == *" flight "* ]]; then
  echo "== flight_ceiling.py: $BATCHES batches of 10 000 rows, reference then lakesync" >&2
  "$LAKESYNC_PYTHON" benches/flight_ceiling.py --batches "$BATCHES" --ours "grpc://$FLIGHT_ADDR" |
    tee -a "$WORK/results.jsonl" || status=1
fi
if [[ " $SUITES " == *" http "* ]]; then
  echo "== gateway_realtime.py: HTTP JSON pushes" >&2
  "$LAKESYNC_PYTHON" benches/gateway_realtime.py --only http --http "http://$HTTP_ADDR" --gateway bench |
    tee -a "$WORK/results.jsonl" || status=1
fi
if [[ -r /proc/$SERVER/status ]]; then
  echo "lakesync serve peak RSS: $(awk '/^VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$SERVER/status")" >&2
fi
echo "== results in $WORK/results.jsonl" >&2
exit "$status"
