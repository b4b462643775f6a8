#!/usr/bin/env bash
# scripts/pg.sh start [--fresh] | stop | status -- a private PostgreSQL 15
# cluster for tests and the demo, run as the postgres user (PostgreSQL refuses
# root).  As root.
#
#   data   $SB_RUN_DIR/pgdata-$SB_PG_PORT  (initdb'd when missing, or always
#          with --fresh: then any old cluster on that port is stopped and wiped)
#   socket $SB_RUN_DIR (connect: psql -h $SB_RUN_DIR -p $SB_PG_PORT -U postgres)
#   log    $SB_RUN_DIR/pg-$SB_PG_PORT.log
# Listens on localhost:$SB_PG_PORT (default 54329).  Settings are rewritten on
# every start into $PGDATA/signalbus_harness.conf from these knobs:
#   SB_PG_PRELOAD    shared_preload_libraries   (default signalbus)
#   SB_PG_DATABASES  signalbus.databases        (default postgres,contrib_regression)
#   SB_PG_FLUSH_INTERVAL signalbus.flush_interval (default 1s)
#   signalbus.amqp_url = amqp://guest:guest@localhost:$SB_AMQP_PORT/%2f
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PGDATA_DIR=$SB_RUN_DIR/pgdata-$SB_PG_PORT
LOG=$SB_RUN_DIR/pg-$SB_PG_PORT.log

# Run a command as postgres, from a directory postgres can read.
as_pg() {
    if [ "$(id -un)" = postgres ]; then
        (cd "$SB_RUN_DIR" && "$@")
    else
        (cd "$SB_RUN_DIR" && runuser -u postgres -- "$@")
    fi
}

running() { [ -f "$PGDATA_DIR/PG_VERSION" ] && as_pg pg_ctl -D "$PGDATA_DIR" status >/dev/null 2>&1; }

show_log() {
    echo "---- $LOG (tail) ----" >&2
    tail -n 40 "$LOG" >&2 2>/dev/null || echo "(no log)" >&2
}

write_conf() {
    local f=$PGDATA_DIR/signalbus_harness.conf
    cat >"$f" <<EOF
# Written by scripts/pg.sh on every start: edits here are lost.
port = $SB_PG_PORT
listen_addresses = 'localhost'
unix_socket_directories = '$SB_RUN_DIR'
shared_preload_libraries = '${SB_PG_PRELOAD-signalbus}'
signalbus.amqp_url = '$SB_AMQP_URL'
signalbus.databases = '${SB_PG_DATABASES:-postgres,contrib_regression}'
signalbus.flush_interval = '${SB_PG_FLUSH_INTERVAL:-1s}'
max_prepared_transactions = 10
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    chown postgres:postgres "$f"
}

start() {
    need_root
    ensure_run_dir
    if [ "${1:-}" = --fresh ]; then
        stop
        rm -rf "$PGDATA_DIR" "$LOG"
    elif running; then
        return 0
    fi
    if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
        rm -rf "$PGDATA_DIR"
        as_pg initdb -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
            --no-instructions >"$SB_RUN_DIR/initdb-$SB_PG_PORT.log" 2>&1 ||
            { cat "$SB_RUN_DIR/initdb-$SB_PG_PORT.log" >&2; die "initdb failed"; }
        echo "include 'signalbus_harness.conf'" >>"$PGDATA_DIR/postgresql.conf"
    fi
    port_in_use "$SB_PG_PORT" && die "port $SB_PG_PORT is taken by another process; choose another SB_PG_PORT"
    write_conf
    if ! as_pg pg_ctl -D "$PGDATA_DIR" -l "$LOG" -w -t 60 -s start >/dev/null 2>&1; then
        show_log
        die "PostgreSQL did not start on port $SB_PG_PORT (log: $LOG)"
    fi
}

stop() {
    need_root
    if running; then
        as_pg pg_ctl -D "$PGDATA_DIR" -m fast -w -t 60 -s stop >/dev/null ||
            { show_log; die "PostgreSQL on port $SB_PG_PORT did not stop"; }
    fi
}

status() {
    if running; then
        echo "running: port $SB_PG_PORT, socket dir $SB_RUN_DIR, data $PGDATA_DIR"
    else
        echo "stopped: port $SB_PG_PORT"
        return 3
    fi
}

case "${1:-}" in
    start) start "${2:-}" ;;
    stop | status) "$1" ;;
    *) echo "usage: $0 start [--fresh] | stop | status" >&2; exit 2 ;;
esac
