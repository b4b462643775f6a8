#!/usr/bin/env bash
# scripts/rabbitmqctl.sh ARGS... -- the one way to run rabbitmqctl against the
# private test node of scripts/rabbitmq.sh (node signalbus-$SB_AMQP_PORT@localhost).
#
#   bash scripts/rabbitmqctl.sh list_queues name messages
#   SB_AMQP_PORT=56730 bash scripts/rabbitmqctl.sh stop_app
#
# Works as root, rabbitmq, or any user named in SB_CTL_USERS when the node was
# started (default: postgres, which runs the TAP tests).
#
# Why a wrapper: rabbitmqctl must present the node's Erlang cookie.  Debian's
# /usr/sbin/rabbitmqctl re-runs itself as rabbitmq with the *system* cookie
# (/var/lib/rabbitmq/.erlang.cookie) and refuses other users; the private node
# has its own cookie instead (SB_RUN_DIR/rabbitmq-PORT/home/.erlang.cookie),
# copied at start into SB_RUN_DIR/rabbitmq-PORT/cli/USER/ for every user that
# may call this script (Erlang wants the file private to its owner).  It also
# selects the node's own epmd port (SB_AMQP_PORT+2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

user=$(id -un)
if [ "$user" = rabbitmq ]; then
    home=$SB_RMQ_DIR/home
else
    home=$SB_RMQ_DIR/cli/$user
fi
[ -r "$home/.erlang.cookie" ] ||
    die "no Erlang cookie for user '$user' in $home: start the node first (as root: bash scripts/rabbitmq.sh start; add '$user' to SB_CTL_USERS)"

cd "$home"
exec env HOME="$home" ERL_EPMD_PORT="$SB_RMQ_EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
    LC_ALL=C.UTF-8 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$SB_RMQ_NODE" "$@"
