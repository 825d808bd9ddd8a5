#!/usr/bin/env bash
# bench-lake.sh: the lakehouse benchmark (benches/lake.rs) on the S3 server and Iceberg REST
# catalogue of scripts/services.sh, every contender in the same run: LakeSync's Iceberg sink vs
# pyiceberg appending the same Arrow data, compaction, and checkpoint generation and serving.
#
#   bash scripts/bench-lake.sh [N]      # N deltas (default 1000000)
#
# Starts the services when LAKESYNC_ICEBERG_REST_URI is not set (which wipes their data), sets up
# the Python tools (pyiceberg), then builds and runs the benchmark with the release profile.
# LAKESYNC_BENCH_EPOCH sets rows per snapshot (default 100000). Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "bench-lake: N must be a positive integer, not $N" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/lakesync-target}"
if [[ -z ${LAKESYNC_ICEBERG_REST_URI:-} ]]; then
  eval "$(LAKESYNC_SERVICES=s3 bash scripts/services.sh start)"
fi
eval "$(bash scripts/python-tools.sh)"
export LAKESYNC_BENCH_ROWS="$N"
# The release profile (not `bench`), so the release build of the binary shares its dependencies.
nice cargo bench --locked --profile release --bench lake
