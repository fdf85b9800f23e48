#!/usr/bin/env bash
# Throwaway Redis and PostgreSQL (+ PGMQ) servers for the tests, on loopback only.
#
#   scripts/services.sh start    # start both (idempotent) and write $SERVICES_DIR/env
#   scripts/services.sh stop     # stop what `start` started; safe to repeat
#   scripts/services.sh status   # show what runs; exit 0 only if both do, else 3
#
# All state (data, logs, pid files, the `env` file to source) lives in $SERVICES_DIR,
# default ./.services; `stop` keeps it, so the next start skips initdb. Delete the directory
# after `stop` to start from scratch. Settings, from the environment:
#   SERVICES_DIR                  state directory (default $PWD/.services)
#   PIPECAT_TEST_REDIS_PORT       Redis port (default 6390)
#   PIPECAT_TEST_POSTGRES_PORT    PostgreSQL port (default 5439)
#   PYTHON                        interpreter with the `pgmq` package (default .venv/bin/python)
#   PG_BINDIR                     PostgreSQL server binaries (default `pg_config --bindir`)
#   CI                            when true/1, a service that cannot be provided is an error
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"  # runuser, when a non-login root shell lacks them

SERVICES_DIR="${SERVICES_DIR:-$PWD/.services}"
[[ $SERVICES_DIR == /* ]] || SERVICES_DIR="$PWD/$SERVICES_DIR"  # the servers need absolute paths
# Not REDIS_PORT: Docker links and Kubernetes set that to "tcp://host:port".
REDIS_PORT="${PIPECAT_TEST_REDIS_PORT:-6390}"
PG_PORT="${PIPECAT_TEST_POSTGRES_PORT:-5439}"
PYTHON="${PYTHON:-.venv/bin/python}"
PG_BINDIR="${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || true)}"

REDIS_DIR="$SERVICES_DIR/redis"
PG_DIR="$SERVICES_DIR/postgres"  # owned by the server's user: data/, socket/, postgres.log
PG_DATA="$PG_DIR/data"

log() { printf 'services: %s\n' "$*" >&2; }
source "${BASH_SOURCE[0]%/*}/apt.sh"
die() { log "error: $*"; exit 1; }

# Print the end of a log file, to explain a failure.
show_log() {
  if [[ -r $1 ]]; then log "last lines of $1:"; tail -n 30 "$1" >&2; fi
}

is_ci() { [[ ${CI:-} == true || ${CI:-} == 1 ]]; }

# A service we cannot provide: fatal in CI, a warning locally (the tests needing it skip).
unavailable() {
  if is_ci; then die "$1"; fi
  log "warning: $1; tests that need it will skip"
}

# Poll a command every 0.2 s until it succeeds or $1 seconds have passed.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# True once process $1 has exited; a zombie counts, as in a container nobody may reap it soon.
pid_gone() {
  local state
  state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 0
  [[ $state == Z ]]
}

# --- Redis -----------------------------------------------------------------------------------

redis_ping() { [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

# Print the pid of the redis-server that `start` started, if it still runs.
redis_pid() {
  local pid
  pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null) || return 1
  # The name check guards against a stale pid file whose pid was reused.
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]] && ! pid_gone "$pid" && echo "$pid"
}

# The port `start` gave Redis (status must not trust the environment it runs in).
running_redis_port() { cat "$REDIS_DIR/port" 2>/dev/null; }

# Install redis-server with apt-get if it is missing and we may (root or password-less sudo).
install_redis() {
  command -v redis-server >/dev/null && return 0
  apt_install redis-server 600 || return 1
  # With systemd, the package also starts and enables a Redis on 6379. We only wanted the
  # binary: a server nobody asked for must not outlive the tests.
  if [[ -d /run/systemd/system ]]; then
    as_root timeout 60 systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
  command -v redis-server >/dev/null
}

start_redis() {
  if ! install_redis; then
    unavailable "redis-server is missing and apt-get could not install it (needs root or sudo)"
    return 0
  fi
  local pid
  if pid=$(redis_pid); then
    if [[ $(running_redis_port) != "$REDIS_PORT" ]] || ! redis_ping; then
      die "the Redis started earlier (pid $pid) does not answer on port $REDIS_PORT: run '$0 stop' first"
    fi
    log "Redis already running (pid $pid, 127.0.0.1:$REDIS_PORT)"
    return 0
  fi
  port_in_use "$REDIS_PORT" &&
    die "port $REDIS_PORT is taken by another process: choose a free one with PIPECAT_TEST_REDIS_PORT"
  mkdir -p "$REDIS_DIR"
  # No persistence: this server's data is meant to be thrown away.
  timeout 10 redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
    --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    --save "" --appendonly no ||
    { show_log "$REDIS_DIR/redis.log"; die "redis-server failed to start"; }
  wait_for 10 redis_ping ||
    { show_log "$REDIS_DIR/redis.log"; die "Redis did not answer PING on port $REDIS_PORT within 10 s"; }
  echo "$REDIS_PORT" >"$REDIS_DIR/port"
  log "Redis ready on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
  local pid
  if ! pid=$(redis_pid); then log "Redis not running"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for 10 pid_gone "$pid"; then
    log "Redis (pid $pid) still runs 10 s after SIGTERM: killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$REDIS_DIR/redis.pid"  # redis-server removes it itself, unless it was killed
  log "Redis stopped"
}

# --- PostgreSQL ------------------------------------------------------------------------------

# initdb, pg_ctl and postgres refuse to run as root: run them as the `postgres` user then.
as_pg() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

pgctl() { as_pg timeout 60 "$PG_BINDIR/pg_ctl" -D "$PG_DATA" "$@"; }

# The running server's port: line 4 of postmaster.pid.
running_pg_port() { sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null; }

pg_running() {
  [[ -f $PG_DATA/postmaster.pid ]] && ! pid_gone "$(head -n 1 "$PG_DATA/postmaster.pid")" &&
    pgctl status >/dev/null 2>&1
}

# psql over TCP as the superuser (trust authentication), stopping at the first error.
psql_() {
  PGCONNECT_TIMEOUT=5 PGOPTIONS='-c client_min_messages=warning' \
    timeout 120 "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

# True when `SELECT FROM $1` finds a row, e.g. pg_exists "pg_namespace WHERE nspname = 'x'".
pg_exists() { [[ $(psql_ -tAc "SELECT EXISTS (SELECT FROM $1)") == t ]]; }

init_postgres() {
  [[ -f $PG_DATA/PG_VERSION ]] && return 0
  mkdir -p "$PG_DIR/socket"
  if ((EUID == 0)); then chown -R postgres:postgres "$PG_DIR"; fi
  as_pg test -w "$PG_DIR" ||
    die "user postgres cannot write $PG_DIR (is a parent directory private?): set SERVICES_DIR elsewhere"
  log "initdb $PG_DATA"
  as_pg timeout 120 "$PG_BINDIR/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C \
    --no-sync >"$PG_DIR/initdb.log" 2>&1 ||
    { show_log "$PG_DIR/initdb.log"; as_pg rm -rf "$PG_DATA"; die "initdb failed"; }
  # Settings are rewritten on every start (the port may change), so keep them in their own file.
  echo "include_if_exists = 'services.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

write_postgres_settings() {
  local socket_dir="$PG_DIR/socket"
  # A Unix socket path is limited to 107 bytes; the tests only use TCP, so go without one then.
  ((${#socket_dir} + 20 < 107)) || socket_dir=""
  # A test server: durability is not worth its cost here.
  as_pg tee "$PG_DATA/services.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$socket_dir'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

start_postgres() {
  if [[ ! -x $PG_BINDIR/initdb ]]; then
    unavailable "PostgreSQL server binaries not found (pg_config --bindir gave '$PG_BINDIR'; set PG_BINDIR)"
    return 0
  fi
  if pg_running; then
    if [[ $(running_pg_port) != "$PG_PORT" ]] ||
      ! timeout 5 "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
      die "the PostgreSQL started earlier does not answer on port $PG_PORT: run '$0 stop' first"
    fi
    log "PostgreSQL already running (127.0.0.1:$PG_PORT)"
  else
    port_in_use "$PG_PORT" &&
      die "port $PG_PORT is taken by another process: choose a free one with PIPECAT_TEST_POSTGRES_PORT"
    init_postgres
    write_postgres_settings
    pgctl -l "$PG_DIR/postgres.log" -w -t 30 start >/dev/null ||
      { show_log "$PG_DIR/postgres.log"; die "PostgreSQL failed to start"; }
    log "PostgreSQL ready on 127.0.0.1:$PG_PORT"
  fi
  install_pgmq
}

# PGMQ: the extension if this server has it (Debian's packages do not), else the SQL that the
# `pgmq` Python package ships.
install_pgmq() {
  if ! pg_exists "pg_extension WHERE extname = 'pgmq'"; then
    if pg_exists "pg_available_extensions WHERE name = 'pgmq'"; then
      log "CREATE EXTENSION pgmq"
      psql_ -c 'CREATE EXTENSION pgmq'
    else
      load_pgmq_sql
    fi
  fi
  psql_ -tAc "SELECT pgmq.create('__probe'); SELECT pgmq.drop_queue('__probe');" >/dev/null ||
    die "PGMQ does not work on 127.0.0.1:$PG_PORT (see the errors above)"
}

load_pgmq_sql() {
  local sql version marker="$SERVICES_DIR/pgmq.version"
  local find_sql='import pgmq, pathlib; print(pathlib.Path(pgmq.__file__).parent / "sql" / "pgmq.sql")'
  sql=$(timeout 60 "$PYTHON" -c "$find_sql") ||
    die "cannot import pgmq with $PYTHON: install pgmq>=1.1.4 (pip install -e '.[pgmq]') or set PYTHON"
  [[ -r $sql ]] || die "$sql is missing: pgmq>=1.1.4 ships the SQL, older versions do not"
  version=$(cat "$(dirname "$sql")/VERSION" 2>/dev/null || echo unknown)
  if pg_exists "pg_namespace WHERE nspname = 'pgmq'"; then
    # The SQL is not re-runnable (plain CREATE FUNCTION): keep the schema unless the pgmq
    # package changed version since it was loaded; then drop it, queues included, and reload.
    [[ $(cat "$marker" 2>/dev/null) == "$version" ]] && return 0
    log "PGMQ schema is not version $version: dropping it"
    psql_ -c 'DROP SCHEMA pgmq CASCADE'
  fi
  log "loading PGMQ $version from $sql"
  psql_ --single-transaction -f "$sql" >"$SERVICES_DIR/pgmq-install.log" 2>&1 ||
    { show_log "$SERVICES_DIR/pgmq-install.log"; die "loading $sql failed"; }
  echo "$version" >"$marker"
}

stop_postgres() {
  if [[ ! -x $PG_BINDIR/pg_ctl ]] || ! pg_running; then log "PostgreSQL not running"; return 0; fi
  pgctl -m fast -w -t 30 stop >/dev/null ||
    { log "fast shutdown failed: immediate shutdown"; pgctl -m immediate -w -t 30 stop >/dev/null; }
  log "PostgreSQL stopped"
}

# --- Commands --------------------------------------------------------------------------------

start() {
  mkdir -p "$SERVICES_DIR"
  start_redis
  start_postgres
  cat >"$SERVICES_DIR/env" <<EOF
export PIPECAT_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export PIPECAT_TEST_POSTGRES_DSN=postgresql://postgres@127.0.0.1:$PG_PORT/postgres
EOF
  log "wrote $SERVICES_DIR/env"
}

stop() {
  stop_redis
  stop_postgres
}

status() {
  local code=0 pid
  if pid=$(redis_pid); then
    echo "Redis:      running (pid $pid, 127.0.0.1:$(running_redis_port))"
  else
    echo "Redis:      not running"; code=3
  fi
  if [[ -x $PG_BINDIR/pg_ctl ]] && pg_running; then
    echo "PostgreSQL: running (pid $(head -n 1 "$PG_DATA/postmaster.pid"), 127.0.0.1:$(running_pg_port))"
  else
    echo "PostgreSQL: not running"; code=3
  fi
  return "$code"
}

case "${1:-}" in
  start | stop | status) "$1" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
