#!/usr/bin/env bash
# python-tools.sh: the Python tools LakeSync's interop tests run, in a venv of their own.
#
#   eval "$(bash scripts/python-tools.sh)"   # create or reuse the venv, print `export` lines
#
# Installs pyiceberg (SQL catalog on SQLite, with PyArrow and pyiceberg-core for partitioned appends, whose pyarrow.flight the gateway's
# Flight interop and benchmark use), DuckDB with its iceberg/avro/httpfs extension wheels, and websockets (the gateway's WebSocket interop) with
# pip into the venv ${LAKESYNC_TOOLS_DIR:-$HOME/.cache/lakesync-tools}/py. A venv that already
# holds exactly these pins (recorded in a stamp file after a successful install) and imports them
# is reused as is, so a warm machine pays nothing. Progress goes to stderr; stdout carries only
# `export` lines:
#
#   LAKESYNC_PYTHON   the venv's python, which tests/python/*.py scripts are run with
set -euo pipefail

TOOLS_DIR="${LAKESYNC_TOOLS_DIR:-${HOME:-/root}/.cache/lakesync-tools}"
VENV="$TOOLS_DIR/py"
STAMP="$VENV/.lakesync-requirements"
# DuckDB's extensions come as PyPI wheels pinned to its version (loaded from their files, so no
# extension repository is contacted): iceberg + avro + httpfs read the lake through a REST catalogue.
REQUIREMENTS=("pyiceberg[sql-sqlite,pyarrow,pyiceberg-core]==0.12.*" "duckdb==1.5.5" "duckdb-extension-iceberg==1.5.5"
  "duckdb-extension-avro==1.5.5" "duckdb-extension-httpfs==1.5.5" "websockets==17.4")
IMPORTS="import pyiceberg, pyiceberg.catalog.sql, pyiceberg.catalog.rest, pyarrow, pyarrow.flight, sqlalchemy, duckdb, duckdb_extension_iceberg, duckdb_extension_avro, duckdb_extension_httpfs, websockets, websockets.sync.client"

T0=${EPOCHREALTIME:-0}
# Progress line on stderr, stamped with the seconds since this script started.
log() {
  local now=${EPOCHREALTIME:-0}
  printf 'python-tools: [%5.1fs] %s\n' "$(awk -v a="$T0" -v b="$now" 'BEGIN { print b - a }')" "$*" >&2
}
die() {
  printf 'python-tools: ERROR: %s\n' "$*" >&2
  exit 1
}

wanted="${REQUIREMENTS[*]}"
if [[ -x $VENV/bin/python && -f $STAMP && "$(cat "$STAMP")" == "$wanted" ]] &&
  "$VENV/bin/python" -c "$IMPORTS" 2>/dev/null; then
  log "reusing $VENV ($wanted)"
else
  command -v python3 >/dev/null 2>&1 || die "python3 not found; install it (apt: python3 python3-venv)"
  if [[ ! -x $VENV/bin/python ]]; then
    log "creating venv $VENV"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (apt: python3-venv)"
  fi
  log "installing with pip: $wanted"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" </dev/null >&2 ||
    die "pip install of $wanted into $VENV failed"
  "$VENV/bin/python" -c "$IMPORTS" >&2 || die "the venv $VENV cannot import what was installed"
  printf '%s\n' "$wanted" >"$STAMP"
  log "install done: $("$VENV/bin/python" -c 'import pyiceberg, pyarrow, duckdb, websockets; print(f"pyiceberg {pyiceberg.__version__}, pyarrow {pyarrow.__version__}, duckdb {duckdb.__version__}, websockets {websockets.__version__}")')"
fi

printf 'export LAKESYNC_PYTHON=%q\n' "$VENV/bin/python"
