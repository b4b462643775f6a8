#!/usr/bin/env bash
# scripts/demo.sh -- see signalbus work end to end:  bash scripts/demo.sh
#
# As root, from any directory.  Installs missing packages, builds and installs
# signalbus, starts a private RabbitMQ node and a fresh private PostgreSQL
# cluster (scripts/rabbitmq.sh, scripts/pg.sh), commits three rows into a
# signal table in one transaction, shows that the background worker sent them
# to RabbitMQ and deleted them, then stops the servers it started.
# Knobs: SB_RUN_DIR, SB_AMQP_PORT, SB_PG_PORT (see scripts/lib.sh);
# SB_SKIP_BUILD=1 uses the already installed extension.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
S=$SB_ROOT/scripts
QUEUE=demo.order_shipped
export SB_RUN_DIR SB_AMQP_PORT SB_PG_PORT
export SB_PG_DATABASES=${SB_PG_DATABASES:-postgres}   # one worker: for db postgres

started_rmq=0
started_pg=0
cleanup() {
    local rc=$?
    [ $started_pg = 1 ] && { bash "$S/pg.sh" stop || rc=1; }
    [ $started_rmq = 1 ] && { bash "$S/rabbitmq.sh" stop || rc=1; }
    [ $rc = 0 ] && echo "==> Servers stopped. Done." || echo "==> Demo FAILED (logs in $SB_RUN_DIR)" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo; echo "==> $*"; }
psql_() { psql -X -q -v ON_ERROR_STOP=1 -h "$SB_RUN_DIR" -p "$SB_PG_PORT" -U postgres -d postgres "$@"; }
sql() {  # echo the statement(s), indented, then run them (errors still show)
    local line
    while IFS= read -r line; do echo "    $line"; done <<<"$1"
    psql_ -o /dev/null -c "$1"
}

step "Installing missing packages; building and installing signalbus (make, make install)"
bash "$S/install-deps.sh"
bash "$S/build.sh" "$([ "${SB_SKIP_BUILD:-0}" = 1 ] && echo tools || echo all)"

step "Starting a private RabbitMQ node on port $SB_AMQP_PORT (takes ~7 s)"
bash "$S/rabbitmq.sh" status >/dev/null 2>&1 || started_rmq=1
bash "$S/rabbitmq.sh" start

step "Starting a private PostgreSQL 15 on port $SB_PG_PORT (signalbus preloaded, worker for db postgres)"
started_pg=1
bash "$S/pg.sh" start --fresh

step "Declaring queue '$QUEUE' (default exchange: routing key = queue name)"
"$SB_AMQP_DUMP" --url "$SB_AMQP_URL" --declare "$QUEUE" --purge

step "Creating a signal table and registering it"
sql "CREATE EXTENSION IF NOT EXISTS signalbus;
CREATE TABLE order_shipped (id bigserial PRIMARY KEY, order_id bigint NOT NULL, carrier text);
SELECT signalbus_register('order_shipped', exchange => '', routing_key => '$QUEUE');"

step "Inserting 3 rows in one transaction"
sql "BEGIN;
INSERT INTO order_shipped (order_id, carrier) VALUES (1001, 'DHL'), (1002, 'UPS'), (1003, NULL);
COMMIT;"

step "Waiting until the worker has sent and deleted them"
t0=$(date +%s%N)
for _ in $(seq 1 150); do
    n=$(psql_ -At -c 'SELECT count(*) FROM order_shipped')
    [ "$n" = 0 ] && break
    sleep 0.2
done
if [ "$n" != 0 ]; then
    echo "    still $n row(s) after 30 s; signalbus_status:"
    psql_ -x -c 'SELECT * FROM signalbus_status'
    tail -n 20 "$SB_RUN_DIR/pg-$SB_PG_PORT.log"
    exit 1
fi
echo "    order_shipped is empty after $((($(date +%s%N) - t0) / 1000000)) ms"

step "Messages in queue '$QUEUE'"
"$SB_AMQP_DUMP" --url "$SB_AMQP_URL" --queue "$QUEUE" --count 3 --wait 10 | sed 's/^/    /' ||
    { echo "    expected 3 messages" >&2; exit 1; }

step "signalbus_status"
psql_ -c 'SELECT database, pid, state, broker, sent, failed, last_error FROM signalbus_status'

step "Stopping the servers"
