#!/usr/bin/env bash
# bench-backfill.sh: the backfill benchmark — a plain Iceberg table of N generated rows
# (benches/backfill/make_lake.py: 7 columns, string id) copied whole by `lakesync run --once`,
# against, in the same run, the physical ceiling of loading the same rows into Postgres:
#
#   lakesync → postgres   benches/backfill/iceberg-to-postgres.yaml: the lake table → Postgres
#                         (delta log + materialised table bench_backfill.invoices)
#   ceiling               psql: \copy ceiling FROM rows.bin (FORMAT binary), where rows.bin is the
#                         materialised table's rows exported as binary COPY (the same rows, the
#                         same column types) and `ceiling` an empty table of that shape
#   lakesync → bigquery   benches/backfill/iceberg-to-bigquery.yaml into the BigQuery emulator,
#                         when LAKESYNC_BQ_REST_ENDPOINT is set, from a lake of BENCH_BQ_ROWS rows
#                         (default 20000) of the same shape (rows/s only: an emulator is not a
#                         ceiling, and a slow one)
#
#   bash scripts/bench-backfill.sh [N]      # N defaults to 5000000
#
# Each contender is timed with /usr/bin/time (wall, CPU, peak RSS of the client process); rows
# are counted in the target afterwards and a wrong count fails the run. The lake is made once per
# N under $BENCH_DIR/lake (about 10 s per million rows with pyiceberg) and reused.
#
# Environment: LAKESYNC_PG_URL (start services with eval "$(bash scripts/services.sh start)"),
# BENCH_DIR (default $TMPDIR/lakesync-bench-backfill), LAKESYNC_BIN (a built binary; unset, the
# release binary is built here). Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-5000000}"
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "bench-backfill: N must be a positive integer, not $N" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/lakesync-target}"
export LAKESYNC_PG_URL="${LAKESYNC_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_DIR="$(realpath -m "${BENCH_DIR:-${TMPDIR:-/tmp}/lakesync-bench-backfill}")"
export BENCH_DIR
psql_() { psql -X -q -v ON_ERROR_STOP=1 "$LAKESYNC_PG_URL" "$@"; }
log() { printf '== %s\n' "$*" >&2; }

psql_ -Atc "SELECT 1" >/dev/null ||
  { echo "bench-backfill: cannot reach $LAKESYNC_PG_URL (eval \"\$(bash scripts/services.sh start)\")" >&2; exit 1; }
mkdir -p "$BENCH_DIR"
if [[ -n ${LAKESYNC_BIN:-} ]]; then
  BIN="$LAKESYNC_BIN"
else
  # Built as scripts/bench-lake.sh builds (a bench target with the release profile also builds
  # the binary), so the two share one set of release artefacts instead of two feature sets.
  log "building the release binary"
  nice cargo bench --locked --profile release --bench lake --no-run >&2
  BIN="$CARGO_TARGET_DIR/release/lakesync"
fi
[[ -x $BIN ]] || { echo "bench-backfill: no lakesync binary at $BIN" >&2; exit 1; }
eval "$(bash scripts/python-tools.sh)"

# --- the lake ------------------------------------------------------------------------------------
if [[ -f $BENCH_DIR/lake/.rows && $(cat "$BENCH_DIR/lake/.rows") == "$N" ]]; then
  log "reusing the lake table ($N rows)"
else
  log "writing the lake table: $N rows with pyiceberg"
  rm -rf "$BENCH_DIR/lake" && mkdir -p "$BENCH_DIR/lake/warehouse"
  t0=$SECONDS
  "$LAKESYNC_PYTHON" benches/backfill/make_lake.py "$BENCH_DIR/lake" "$N" >&2
  echo "$N" >"$BENCH_DIR/lake/.rows"
  log "written in $((SECONDS - t0)) s"
fi

# timed NAME CMD...: runs CMD under /usr/bin/time; sets WALL (s) and RSS (KiB).
timed() {
  local name=$1
  shift
  /usr/bin/time -f '%e %U %S %M' -o "$BENCH_DIR/$name.time" "$@" >"$BENCH_DIR/$name.log" 2>&1 ||
    { echo "bench-backfill: $name failed; see $BENCH_DIR/$name.log" >&2; tail -20 "$BENCH_DIR/$name.log" >&2; exit 1; }
  read -r WALL USER_S SYS_S RSS <"$BENCH_DIR/$name.time"
  log "$name: ${WALL}s wall, ${USER_S}s user, ${SYS_S}s sys, peak RSS $((RSS / 1024)) MiB"
}
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / (s > 0 ? s : 1e-9) }'; }

# --- lakesync → postgres -------------------------------------------------------------------------
psql_ -c "DROP SCHEMA IF EXISTS bench_backfill CASCADE" 2>/dev/null
rm -rf "$BENCH_DIR/state-pg"
timed lakesync-postgres "$BIN" run --once benches/backfill/iceberg-to-postgres.yaml
LS_WALL=$WALL LS_RSS=$RSS
got=$(psql_ -Atc "SELECT count(*) FROM bench_backfill.invoices")
logged=$(psql_ -Atc "SELECT count(*) FROM bench_backfill.lakesync_deltas")
[[ $got == "$N" && $logged == "$N" ]] ||
  { echo "bench-backfill: lakesync wrote $got rows and $logged deltas, not $N" >&2; exit 1; }

# --- the ceiling: the same rows, binary COPY FROM STDIN -------------------------------------------
COLS="row_id, account, amount, price, paid, created, note"
psql_ -c "\\copy (SELECT $COLS FROM bench_backfill.invoices) TO '$BENCH_DIR/rows.bin' WITH (FORMAT binary)"
BYTES=$(stat -c %s "$BENCH_DIR/rows.bin")
psql_ -c "DROP TABLE IF EXISTS public.bench_backfill_ceiling;
  CREATE TABLE public.bench_backfill_ceiling AS SELECT $COLS FROM bench_backfill.invoices WITH NO DATA;
  ALTER TABLE public.bench_backfill_ceiling ADD PRIMARY KEY (row_id)"
timed ceiling psql -X -q -v ON_ERROR_STOP=1 "$LAKESYNC_PG_URL" \
  -c "\\copy public.bench_backfill_ceiling FROM '$BENCH_DIR/rows.bin' WITH (FORMAT binary)"
CEIL_WALL=$WALL
got=$(psql_ -Atc "SELECT count(*) FROM public.bench_backfill_ceiling")
[[ $got == "$N" ]] || { echo "bench-backfill: the ceiling loaded $got rows, not $N" >&2; exit 1; }
psql_ -c "DROP TABLE public.bench_backfill_ceiling"

# --- lakesync → bigquery (emulator) --------------------------------------------------------------
# The emulator (Python over DuckDB, one MERGE per 20,000 rows) is far slower than BigQuery, so it
# gets its own, smaller lake of BQ_N rows (BENCH_BQ_ROWS, default 20000) of the same shape.
BQ_N="${BENCH_BQ_ROWS:-20000}"
BQ_LINE="lakesync → bigquery (emulator): skipped (LAKESYNC_BQ_REST_ENDPOINT unset)"
if [[ -n ${LAKESYNC_BQ_REST_ENDPOINT:-} ]]; then
  export BENCH_BQ_LAKE="$BENCH_DIR/lake-bq" BENCH_BQ_DATASET="bench_backfill_$(date +%s)"
  if [[ ! -f $BENCH_BQ_LAKE/.rows || $(cat "$BENCH_BQ_LAKE/.rows") != "$BQ_N" ]]; then
    rm -rf "$BENCH_BQ_LAKE" && mkdir -p "$BENCH_BQ_LAKE/warehouse"
    "$LAKESYNC_PYTHON" benches/backfill/make_lake.py "$BENCH_BQ_LAKE" "$BQ_N" >&2
    echo "$BQ_N" >"$BENCH_BQ_LAKE/.rows"
  fi
  rm -rf "$BENCH_DIR/state-bq"
  timed lakesync-bigquery "$BIN" run --once benches/backfill/iceberg-to-bigquery.yaml
  BQ_LINE="lakesync → bigquery (emulator), $BQ_N rows: $(rate "$BQ_N" "$WALL") rows/s (${WALL}s, peak RSS $((RSS / 1024)) MiB)"
fi

LS_RATE=$(rate "$N" "$LS_WALL")
CEIL_RATE=$(rate "$N" "$CEIL_WALL")
cat <<REPORT
backfill benchmark: $N rows, $((BYTES / N)) B/row as binary COPY ($(date -u +%Y-%m-%dT%H:%M:%SZ), load $(cut -d' ' -f1-3 /proc/loadavg))
  lakesync iceberg → postgres (log + materialised): $LS_RATE rows/s (${LS_WALL}s, peak RSS $((LS_RSS / 1024)) MiB)
  ceiling COPY FROM STDIN (FORMAT binary), same rows: $CEIL_RATE rows/s (${CEIL_WALL}s)
  ratio lakesync / ceiling: $(awk -v a="$LS_RATE" -v b="$CEIL_RATE" 'BEGIN { printf "%.2f", a / b }')
  $BQ_LINE
REPORT
