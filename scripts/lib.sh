# shellcheck shell=bash disable=SC2034
# Shared settings for the signalbus harness scripts.  Source it, don't run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Environment knobs (all optional):
#   SB_RUN_DIR    where private servers, logs and tools live (/tmp/signalbus-run)
#   SB_AMQP_PORT  AMQP port of the private RabbitMQ node (56720); the node also
#                 uses SB_AMQP_PORT+1 (Erlang distribution) and SB_AMQP_PORT+2
#                 (its own epmd, so the system's epmd on 4369 is never touched)
#   SB_PG_PORT    port of the private PostgreSQL cluster (54329)

SB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SB_RUN_DIR=${SB_RUN_DIR:-/tmp/signalbus-run}
SB_AMQP_PORT=${SB_AMQP_PORT:-56720}
SB_PG_PORT=${SB_PG_PORT:-54329}

PG_BINDIR=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BINDIR/pg_config
export PATH="$PG_BINDIR:$PATH"

SB_AMQP_URL="amqp://guest:guest@localhost:$SB_AMQP_PORT/%2f"
SB_AMQP_DUMP="$SB_RUN_DIR/bin/amqp-dump"

# RabbitMQ node naming (see scripts/rabbitmq.sh, scripts/rabbitmqctl.sh)
SB_RMQ_NODE="signalbus-$SB_AMQP_PORT@localhost"
SB_RMQ_DIR="$SB_RUN_DIR/rabbitmq-$SB_AMQP_PORT"
SB_RMQ_DIST_PORT=$((SB_AMQP_PORT + 1))
SB_RMQ_EPMD_PORT=$((SB_AMQP_PORT + 2))

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it runs servers as the postgres and rabbitmq users)"; }

case "$SB_RUN_DIR" in /*) ;; *) die "SB_RUN_DIR must be an absolute path: $SB_RUN_DIR" ;; esac
for _p in "$SB_AMQP_PORT" "$SB_PG_PORT"; do
    if ! [[ "$_p" =~ ^[0-9]+$ ]] || [ "$_p" -lt 1024 ] || [ "$_p" -gt 65533 ]; then
        die "bad port number: $_p"
    fi
done
unset _p

# The run dir holds PostgreSQL's socket and logs, so postgres must own it;
# root creates the other entries in it.
ensure_run_dir() {
    need_root
    install -d -o postgres -g postgres -m 755 "$SB_RUN_DIR"
}

# port_in_use PORT: true if something accepts TCP connections on
# 127.0.0.1:PORT (bash's /dev/tcp: no dependency on ss/netstat).
port_in_use() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}
