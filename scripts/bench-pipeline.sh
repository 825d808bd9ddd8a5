#!/usr/bin/env bash
# bench-pipeline.sh: the pipeline benchmark — N generated deltas from a JSON-lines file into the
# local Iceberg lake (SQL catalogue on SQLite, local warehouse), with rows/s, MB/s and peak RSS,
# and in the same run pyiceberg appending the same rows from an Arrow table, with the ratio.
#
#   bash scripts/bench-pipeline.sh [N]        # N defaults to 10000000
#
# Builds the release binary (slow the first time), needs python tools (scripts/python-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000000}"
ROWS=$(( N / 10 ))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/lakesync-target}"
WORK="${LAKESYNC_BENCH_DIR:-${TMPDIR:-/tmp}/lakesync-bench}"

echo "== building the release binary" >&2
nice cargo build --release --locked --bin lakesync >&2
BIN="$CARGO_TARGET_DIR/release/lakesync"

rm -rf "$WORK" && mkdir -p "$WORK"
cp benches/pipeline/bench.yaml "$WORK/bench.yaml"
echo "== generating $N deltas over $ROWS rows" >&2
"$BIN" generate --deltas "$N" --rows "$ROWS" --out "$WORK/input.jsonl" >&2
BYTES=$(stat -c %s "$WORK/input.jsonl")

echo "== lakesync run --once" >&2
/usr/bin/time -f '%e %M' -o "$WORK/time.txt" "$BIN" run --once "$WORK/bench.yaml" > "$WORK/summary.txt"
read -r SECS RSS_KB < "$WORK/time.txt"
cat "$WORK/summary.txt" >&2

echo "== pyiceberg append (peer)" >&2
eval "$(bash scripts/python-tools.sh)"
PEER=$("$LAKESYNC_PYTHON" benches/pipeline/pyiceberg_append.py "$WORK/input.jsonl" "$WORK" 100000)

python3 - "$N" "$BYTES" "$SECS" "$RSS_KB" "$PEER" <<'PY'
import json, sys
n, nbytes, secs, rss_kb, peer = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
ours = n / secs
print(f"lakesync jsonl -> iceberg: {n} deltas in {secs:.1f} s = {ours:,.0f} rows/s, {nbytes / secs / 1e6:,.1f} MB/s of input, peak RSS {rss_kb / 1024:,.0f} MiB")
print(f"pyiceberg append (Arrow table already in memory): {peer['rows']} rows in {peer['seconds']:.1f} s = {peer['rows_per_s']:,.0f} rows/s")
print(f"ratio lakesync / pyiceberg: {ours / peer['rows_per_s']:.2f}x")
PY
