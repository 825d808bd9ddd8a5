#!/usr/bin/env bash
# test.sh: LakeSync's whole test suite, as CI runs it (`.ci/run` calls exactly this).
#
#   bash scripts/test.sh            # start services, check format and lints, run every test
#
# 1. Starts the real services the integration tests need (scripts/services.sh: Postgres,
#    MariaDB, SeaweedFS S3 + Iceberg REST, NATS JetStream, moto) and stops them on exit, and
#    makes sure the Python peers used by interop tests are installed (scripts/python-tools.sh).
# 2. `cargo fmt --check` and `cargo clippy --all-targets -- -D warnings`.
# 3. Every test of the workspace (unit, property and the `tests/it` integration binary) with
#    cargo-nextest when installed, else `cargo test`. Property tests run PROPTEST_CASES cases
#    each (default 1000).
#
# The build goes to $CARGO_TARGET_DIR (default: ~/.cache/lakesync-target, outside the clone, so a
# warm machine rebuilds only what changed). With CI=true a test whose service is missing fails
# instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/lakesync-target}"
export PROPTEST_CASES="${PROPTEST_CASES:-1000}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

services_started=0
cleanup() {
  if [ "$services_started" = 1 ]; then
    bash scripts/services.sh stop >&2 || true
  fi
}
trap cleanup EXIT

echo "== starting services" >&2
exports="$(bash scripts/services.sh start)"
services_started=1
eval "$exports"
echo "== python tools (pyiceberg, pyarrow, duckdb, websockets)" >&2
eval "$(bash scripts/python-tools.sh)"

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check

echo "== cargo clippy" >&2
nice cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests (PROPTEST_CASES=$PROPTEST_CASES)" >&2
if cargo nextest --version >/dev/null 2>&1; then
  nice cargo nextest run --workspace --locked --no-fail-fast
else
  nice cargo test --workspace --locked --no-fail-fast
fi
