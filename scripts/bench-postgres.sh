#!/usr/bin/env bash
# bench-postgres.sh: the Postgres system benchmark — a generated table of N rows (16 mixed
# columns, benches/postgres/bench_rows.sql) read whole, by each of these, in the same run:
#
#   ceiling           psql -c "COPY (SELECT * FROM bench_rows) TO STDOUT (FORMAT binary)" > /dev/null
#                     (run first and again last; the better of the two is the ceiling)
#   lakesync-parquet  lakesync run --once benches/postgres/to-parquet.yaml (snapshot → Parquet)
#   lakesync-iceberg  lakesync run --once benches/postgres/to-iceberg.yaml (→ the local Iceberg lake)
#   dlt               benches/postgres/dlt_to_parquet.py: sql_database, pyarrow backend → Parquet
#   sling             sling run, Postgres → one local Parquet file
#
#   bash scripts/bench-postgres.sh [N]        # N defaults to 10000000
#   BENCH_ONLY_PEERS=1 bash scripts/bench-postgres.sh 1000000   # ceiling, dlt, sling only
#   BENCH_SKIP_PEERS=1 bash scripts/bench-postgres.sh           # ceiling and lakesync only
#
# Each contender is timed with /usr/bin/time (wall, user and system CPU, peak RSS of the client
# process and its children) and the rows it wrote are counted (count_rows.py: Parquet footers,
# or a pyiceberg scan); one that wrote a wrong count is reported as failed. MB/s and CPU-seconds
# per GB are against the table's size as binary COPY (measured once per run by piping the same
# COPY into wc -c, which also warms the cache for everyone). The Postgres server's CPU seconds
# during each contender are sampled from /proc (the postmaster, its live children, and the
# children it reaped) when the server runs on this machine; they are not in the client's figure.
#
# Environment:
#   LAKESYNC_PG_URL     the database (default postgres://postgres@127.0.0.1:5432/postgres; start
#                       one with: eval "$(bash scripts/services.sh start)")
#   BENCH_DIR           work directory (default $TMPDIR/lakesync-bench-pg): each contender's
#                       output (wiped before it runs, kept after), log and timing, results.json
#   LAKESYNC_BIN        a built lakesync binary; unset, the release binary is built here
#   BENCH_PARALLELISM   the postgres source's copy connections (default 2, from the YAML)
#   LAKESYNC_TOOLS_DIR  where the peers' venv lives (default $HOME/.cache/lakesync-tools): bench-py,
#                       created with pinned dlt, SQLAlchemy, psycopg2 and sling on first use
#
# The table is created when bench_rows is missing or was made for another N (its comment records
# N), in about 30 s per million rows; otherwise it is reused. Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000000}"
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "bench-postgres: N must be a positive integer, not $N" >&2; exit 2; }
SKIP_PEERS="${BENCH_SKIP_PEERS:-0}"
ONLY_PEERS="${BENCH_ONLY_PEERS:-0}"
if [[ $SKIP_PEERS == 1 && $ONLY_PEERS == 1 ]]; then
  echo "bench-postgres: BENCH_SKIP_PEERS and BENCH_ONLY_PEERS exclude each other" >&2
  exit 2
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/lakesync-target}"
export LAKESYNC_PG_URL="${LAKESYNC_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_DIR="$(realpath -m "${BENCH_DIR:-${TMPDIR:-/tmp}/lakesync-bench-pg}")"
export BENCH_DIR
TOOLS_DIR="${LAKESYNC_TOOLS_DIR:-${HOME:-/root}/.cache/lakesync-tools}"
TABLE_RECIPE="lakesync-bench bench_rows v1 rows=$N"

psql_() { psql -X -q -v ON_ERROR_STOP=1 "$LAKESYNC_PG_URL" "$@"; }
log() { printf '== %s\n' "$*" >&2; }

psql_ -Atc "SELECT 1" >/dev/null ||
  { echo "bench-postgres: cannot reach $LAKESYNC_PG_URL (eval \"\$(bash scripts/services.sh start)\")" >&2; exit 1; }
mkdir -p "$BENCH_DIR"

# --- the lakesync binary ---------------------------------------------------------------------
BIN=""
if [[ $ONLY_PEERS != 1 ]]; then
  if [[ -n ${LAKESYNC_BIN:-} ]]; then
    BIN="$LAKESYNC_BIN"
  else
    log "building the release binary"
    nice cargo build --release --locked --bin lakesync >&2
    BIN="$CARGO_TARGET_DIR/release/lakesync"
  fi
  [[ -x $BIN ]] || { echo "bench-postgres: no lakesync binary at $BIN" >&2; exit 1; }
fi

# --- Python: the CI tools count rows; the peers get a venv of their own ----------------------
eval "$(bash scripts/python-tools.sh)"
PEER_VENV="$TOOLS_DIR/bench-py"
# sling-linux-amd64 bundles the sling binary (the `sling` wheel downloads it at first run, which
# fails offline). Bump these together, and the versions in docs/benchmarks.md.
PEER_REQUIREMENTS=("dlt[parquet]==1.31.0" "sqlalchemy==2.1.9" "psycopg2-binary==2.9.13" "pyarrow==26.0.1"
  "sling-linux-amd64==1.4.11")
PEER_IMPORTS="import dlt, dlt.sources.sql_database, sqlalchemy, psycopg2, pyarrow, sling_linux_amd64"
if [[ $SKIP_PEERS != 1 ]]; then
  wanted="${PEER_REQUIREMENTS[*]}"
  if [[ -x $PEER_VENV/bin/python && -f $PEER_VENV/.lakesync-requirements &&
    "$(cat "$PEER_VENV/.lakesync-requirements")" == "$wanted" ]] &&
    "$PEER_VENV/bin/python" -c "$PEER_IMPORTS" 2>/dev/null; then
    log "reusing $PEER_VENV"
  else
    log "installing the peers into $PEER_VENV: $wanted"
    [[ -x $PEER_VENV/bin/python ]] || python3 -m venv "$PEER_VENV" >&2
    "$PEER_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PEER_REQUIREMENTS[@]}" </dev/null >&2
    "$PEER_VENV/bin/python" -c "$PEER_IMPORTS" >&2
    printf '%s\n' "$wanted" >"$PEER_VENV/.lakesync-requirements"
  fi
  SLING_BIN=$("$PEER_VENV/bin/python" -c 'import sling_linux_amd64 as s; print(s.SLING_BIN)')
  [[ -x $SLING_BIN ]] || { echo "bench-postgres: the sling wheel has no binary at $SLING_BIN" >&2; exit 1; }
fi

# --- the table ---------------------------------------------------------------------------------
comment=$(psql_ -Atc "SELECT obj_description(to_regclass('public.bench_rows'), 'pg_class')")
if [[ $comment == "$TABLE_RECIPE" ]]; then
  log "reusing bench_rows ($N rows)"
else
  log "generating bench_rows: $N rows (about 30 s per million)"
  t0=$SECONDS
  psql_ -v n="$N" -f benches/postgres/bench_rows.sql
  psql_ -c "COMMENT ON TABLE public.bench_rows IS '$TABLE_RECIPE'"
  psql_ -c "CHECKPOINT" 2>/dev/null || true
  log "generated in $((SECONDS - t0)) s"
fi
COPY_SQL="COPY (SELECT * FROM bench_rows) TO STDOUT (FORMAT binary)"
log "measuring the table's binary COPY size (and warming the cache)"
BYTES=$(psql_ -c "$COPY_SQL" | wc -c)
log "bench_rows: $N rows, $BYTES bytes as binary COPY ($((BYTES / N)) B/row)"

# --- Postgres server CPU, from /proc ---------------------------------------------------------
# Ticks of the postmaster, its live children (backends, background workers) and the children it
# has reaped (backends that exited): the difference across a contender is the server's CPU for
# it, plus whatever the background processes did meanwhile. Empty when the server is not local.
PG_PID=""
data_dir=$(psql_ -Atc "SHOW data_directory" 2>/dev/null || true)
if [[ -n $data_dir && -r $data_dir/postmaster.pid ]]; then
  PG_PID=$(head -n 1 "$data_dir/postmaster.pid")
  [[ -r /proc/$PG_PID/stat ]] || PG_PID=""
fi
CLK_TCK=$(getconf CLK_TCK)
pg_server_ticks() {
  [[ -n $PG_PID ]] || return 0
  # /proc/PID/stat: after "(comm) " come state, ppid, ... utime (14), stime, cutime, cstime.
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v pm="$PG_PID" '
    { pid = $1; sub(/^.*\) /, "") }
    pid == pm { t += $12 + $13 + $14 + $15 }
    $2 == pm { t += $12 + $13 }
    END { print t + 0 }'
}

# --- contenders --------------------------------------------------------------------------------
RESULTS="$BENCH_DIR/results.tsv"
: >"$RESULTS"
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "started $STARTED_AT, load average $LOADAVG_START"

# run NAME OUTPUT_KIND OUTPUT... -- COMMAND...: time COMMAND (stdout and stderr to NAME.log), count
# what it wrote (OUTPUT_KIND none | parquet DIR | iceberg CATALOG WAREHOUSE NS.TABLE), append a
# result line.
run() {
  local name=$1 kind=$2 out=()
  shift 2
  while [[ $1 != -- ]]; do out+=("$1"); shift; done
  shift
  local tfile="$BENCH_DIR/$name.time" logf="$BENCH_DIR/$name.log" status=ok rows=""
  log "$name"
  local before after
  before=$(pg_server_ticks)
  if ! /usr/bin/time -f '%e %U %S %M' -o "$tfile" "$@" >"$logf" 2>&1; then
    status="failed: exit status (see $logf)"
  fi
  sleep 0.5 # let the backends exit and be reaped before the server sample
  after=$(pg_server_ticks)
  local server=""
  [[ -n $before && -n $after ]] && server=$(awk -v a="$before" -v b="$after" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
  local wall user sys rss
  read -r wall user sys rss < <(tail -n 1 "$tfile")
  if [[ $status == ok && $kind != none ]]; then
    if rows=$("$LAKESYNC_PYTHON" benches/postgres/count_rows.py "$kind" "${out[@]}" 2>>"$logf"); then
      [[ $rows == "$N" ]] || status="failed: wrote $rows rows, not $N"
    else
      status="failed: could not count its output (see $logf)"
    fi
  fi
  [[ $status == ok ]] || tail -n 5 "$logf" >&2
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$wall" "$user" "$sys" "$rss" "$server" "$rows" >>"$RESULTS"
}

run ceiling none -- psql -X -q "$LAKESYNC_PG_URL" -c "$COPY_SQL" -o /dev/null

if [[ $ONLY_PEERS != 1 ]]; then
  rm -rf "$BENCH_DIR/state-parquet" "$BENCH_DIR/parquet"
  run lakesync-parquet parquet "$BENCH_DIR/parquet" -- "$BIN" run --once benches/postgres/to-parquet.yaml
  rm -rf "$BENCH_DIR/state-iceberg" "$BENCH_DIR/lake"
  mkdir -p "$BENCH_DIR/lake"
  run lakesync-iceberg iceberg "$BENCH_DIR/lake/catalog.sqlite" "$BENCH_DIR/lake/warehouse" bench.bench_rows -- \
    "$BIN" run --once benches/postgres/to-iceberg.yaml
fi

if [[ $SKIP_PEERS != 1 ]]; then
  # postgres:// → the driver-qualified URL SQLAlchemy needs; sling takes postgresql:// from an
  # environment variable named by --src-conn.
  rest="${LAKESYNC_PG_URL#*://}"
  rm -rf "$BENCH_DIR/dlt"
  RUNTIME__DLTHUB_TELEMETRY=false run dlt parquet "$BENCH_DIR/dlt/bench/bench_rows" -- \
    "$PEER_VENV/bin/python" benches/postgres/dlt_to_parquet.py "postgresql+psycopg2://$rest" bench_rows "$BENCH_DIR/dlt"

  sling_url="postgresql://$rest"
  [[ $sling_url == *sslmode=* ]] || sling_url+=$([[ $sling_url == *\?* ]] && echo '&' || echo '?')sslmode=disable
  rm -rf "$BENCH_DIR/sling" && mkdir -p "$BENCH_DIR/sling/out"
  # SLING_DUCKDB_COMPUTE=false: sling's own (Go) Parquet writer. By default sling 1.4 writes
  # Parquet through a DuckDB CLI it downloads at run time, which fails offline.
  BENCH_SLING_PG="$sling_url" SLING_HOME_DIR="$BENCH_DIR/sling/home" SLING_DISABLE_TELEMETRY=true \
    SLING_DUCKDB_COMPUTE=false run sling parquet "$BENCH_DIR/sling/out" -- \
    "$SLING_BIN" run --src-conn BENCH_SLING_PG --src-stream public.bench_rows \
    --tgt-object "file://$BENCH_DIR/sling/out/bench_rows.parquet"
fi

run ceiling-again none -- psql -X -q "$LAKESYNC_PG_URL" -c "$COPY_SQL" -o /dev/null
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report --------------------------------------------------------------------------------------
python3 - "$RESULTS" "$BENCH_DIR/results.json" "$N" "$BYTES" "$STARTED_AT" "$LOADAVG_START" "$LOADAVG_END" \
  "${BENCH_PARALLELISM:-2}" "$(psql_ -Atc 'SHOW server_version')" <<'PY'
import json, sys

results_tsv, results_json, n, nbytes, started, load0, load1, parallelism, pg_version = sys.argv[1:]
n, nbytes = int(n), int(nbytes)
rows = []
for line in open(results_tsv):
    name, status, wall, user, sys_, rss, server, written = line.rstrip("\n").split("\t")
    wall, user, sys_ = float(wall), float(user), float(sys_)
    ok = status == "ok"  # a failed contender gets no rates: it did not do the job
    rows.append({
        "name": name, "status": status, "seconds": wall, "user_cpu_s": user, "sys_cpu_s": sys_,
        "rows_per_s": n / max(wall, 0.01) if ok else None,
        "mb_per_s": nbytes / max(wall, 0.01) / 1e6 if ok else None,
        "cpu_s_per_gb": (user + sys_) / (nbytes / 1e9) if ok else None,
        "peak_rss_mib": int(rss) / 1024,
        "server_cpu_s": float(server) if server else None,
        "server_cpu_s_per_gb": float(server) / (nbytes / 1e9) if server and ok else None,
        "rows_written": int(written) if written else None,
    })
by = {r["name"]: r for r in rows}
# The ceiling is the better of the two COPY runs (the machine is shared; the spread is the noise).
ceilings = [by[k] for k in ("ceiling", "ceiling-again") if k in by and by[k]["status"] == "ok"]
ceiling = max(ceilings, key=lambda r: r["rows_per_s"]) if ceilings else None

print(f"\nPostgres system benchmark, {started}: {n:,} rows, {nbytes / 1e6:,.1f} MB as binary COPY "
      f"({nbytes / n:.0f} B/row), Postgres {pg_version}, load average {load0} at start, {load1} at end")
print(f"{'contender':<18} {'rows/s':>10} {'MB/s':>8} {'s':>8} {'CPU-s/GB':>9} {'server CPU-s/GB':>16} {'peak RSS':>10}  status")
def fmt(value, spec):
    return "-" if value is None else format(value, spec)

for r in rows:
    print(f"{r['name']:<18} {fmt(r['rows_per_s'], ',.0f'):>10} {fmt(r['mb_per_s'], ',.1f'):>8} "
          f"{r['seconds']:>8.1f} {fmt(r['cpu_s_per_gb'], '.1f'):>9} {fmt(r['server_cpu_s_per_gb'], '.1f'):>16} "
          f"{r['peak_rss_mib']:>7,.0f} MiB  {r['status']}")
print("(CPU-s/GB: the client's user + system CPU per GB of binary COPY; server: the Postgres "
      "processes' CPU over the same interval)")

ratios = {}
def ratio(a, b, aim=None):
    ra, rb = by.get(a) if a != "ceiling" else ceiling, by.get(b) if b != "ceiling" else ceiling
    if not ra or not rb or ra["status"] != "ok" or rb["status"] != "ok":
        return
    x = ra["rows_per_s"] / rb["rows_per_s"]
    ratios[f"{a}/{b}"] = x
    verdict = "" if aim is None else (f"  (aim >= {aim:g}: {'met' if x >= aim else 'NOT met'})")
    print(f"ratio {a} / {b}: {x:.2f}x{verdict}")

print()
for ours in ("lakesync-parquet", "lakesync-iceberg"):
    ratio(ours, "ceiling", 0.70)
    ratio(ours, "dlt", 2)
    ratio(ours, "sling")
for peer in ("dlt", "sling"):
    ratio(peer, "ceiling")

json.dump({
    "started": started, "rows": n, "copy_binary_bytes": nbytes, "bytes_per_row": nbytes / n,
    "postgres": pg_version, "parallelism": int(parallelism),
    "loadavg_start": load0, "loadavg_end": load1,
    "ceiling_rows_per_s": ceiling["rows_per_s"] if ceiling else None,
    "contenders": rows, "ratios": ratios,
}, open(results_json, "w"), indent=2)
print(f"\nresults: {results_json}")
sys.exit(0 if all(r["status"] == "ok" for r in rows) else 1)
PY
