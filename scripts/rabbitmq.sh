#!/usr/bin/env bash
# scripts/rabbitmq.sh start|stop|status -- a private RabbitMQ node for tests.
#
# As root.  Node signalbus-$SB_AMQP_PORT@localhost, AMQP on SB_AMQP_PORT
# (default 56720), Erlang distribution on SB_AMQP_PORT+1, its own epmd on
# SB_AMQP_PORT+2; everything in $SB_RUN_DIR/rabbitmq-$SB_AMQP_PORT (owned by
# rabbitmq, the user Debian's server runs as), no plugins, own Erlang cookie.
# A system broker (5672/4369) is neither needed nor touched.
#   start   start the node and wait until it is ready (no-op if running)
#   stop    stop this node (and its epmd) only
#   status  print whether it runs; exit 0 if it does, 3 if not
# Call rabbitmqctl for this node with scripts/rabbitmqctl.sh ARGS...
# Users besides root/rabbitmq that may use rabbitmqctl.sh: SB_CTL_USERS
# (space-separated, default "postgres").
# SB_RMQ_EXTRA_CONF: lines appended to the node's rabbitmq.conf (e.g. a TLS
# listener: see make_tls_certs and tls_conf in scripts/lib.sh).  'start' of
# a node that runs with other extra lines restarts it with these.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=$SB_RMQ_DIR
PIDFILE=$DIR/pid
LOGFILE=$DIR/log/$SB_RMQ_NODE.log
CTL=("$SB_ROOT/scripts/rabbitmqctl.sh")

# Print the node's OS pid if it runs (pid file + live beam process of ours).
node_pid() {
    local pid
    [ -s "$PIDFILE" ] && pid=$(<"$PIDFILE") && [[ "$pid" =~ ^[0-9]+$ ]] &&
        grep -qaF -- "$DIR/home" "/proc/$pid/cmdline" 2>/dev/null &&
        echo "$pid"
}

kill_epmd() {
    # Refuses while any node is registered with it, so it never hurts a node.
    ERL_EPMD_PORT=$SB_RMQ_EPMD_PORT epmd -kill >/dev/null 2>&1 || true
}

show_logs() {
    echo "---- $LOGFILE (tail) ----" >&2
    tail -n 40 "$LOGFILE" >&2 2>/dev/null || echo "(no log)" >&2
    for f in "$DIR/log/startup.log" "$DIR/log/wait.log" "$DIR"/erl_crash.dump; do
        [ -s "$f" ] && { echo "---- $f (tail) ----" >&2; tail -n 20 "$f" >&2; }
    done
    return 0
}

setup_dir() {
    install -d -o rabbitmq -g rabbitmq -m 755 "$DIR" "$DIR/mnesia" "$DIR/log"
    install -d -o rabbitmq -g rabbitmq -m 700 "$DIR/home"
    local cookie=$DIR/home/.erlang.cookie u
    if [ ! -s "$cookie" ]; then
        (umask 077 && head -c 15 /dev/urandom | base32 >"$cookie.tmp")
        chown rabbitmq:rabbitmq "$cookie.tmp"
        chmod 400 "$cookie.tmp"
        mv "$cookie.tmp" "$cookie"
    fi
    install -d -m 755 "$DIR/cli"
    for u in root ${SB_CTL_USERS-postgres}; do
        id -u "$u" >/dev/null 2>&1 || continue
        install -d -o "$u" -m 700 "$DIR/cli/$u"
        install -o "$u" -m 400 "$cookie" "$DIR/cli/$u/.erlang.cookie"
    done
    echo '[].' >"$DIR/enabled_plugins"
    {
        echo '# private signalbus test node: RabbitMQ defaults'
        if [ -n "${SB_RMQ_EXTRA_CONF:-}" ]; then
            echo '# SB_RMQ_EXTRA_CONF'
            printf '%s\n' "$SB_RMQ_EXTRA_CONF"
        fi
    } >"$DIR/rabbitmq.conf"
    printf '%s' "${SB_RMQ_EXTRA_CONF:-}" >"$DIR/extra.conf"
    : >"$DIR/rabbitmq-env.conf"
}

start() {
    need_root
    ensure_run_dir
    local pid
    if pid=$(node_pid) && [ "$(cat "$DIR/extra.conf" 2>/dev/null)" != "${SB_RMQ_EXTRA_CONF:-}" ]; then
        echo "rabbitmq.sh: node $SB_RMQ_NODE runs with other SB_RMQ_EXTRA_CONF settings; restarting it" >&2
        stop
    fi
    if pid=$(node_pid); then
        # running: make sure the app runs too (a test may have left it stopped)
        "${CTL[@]}" -q start_app >/dev/null 2>&1 ||
            { show_logs; die "node $SB_RMQ_NODE (pid $pid) runs but does not answer"; }
        return 0
    fi
    port_in_use "$SB_AMQP_PORT" && die "port $SB_AMQP_PORT is taken by another process; choose another SB_AMQP_PORT"
    port_in_use "$SB_RMQ_DIST_PORT" && die "port $SB_RMQ_DIST_PORT (SB_AMQP_PORT+1) is taken; choose another SB_AMQP_PORT"
    rm -f "$PIDFILE"
    setup_dir
    if ! (cd "$DIR" && runuser -u rabbitmq -- env -i \
            HOME="$DIR/home" PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
            RABBITMQ_NODENAME="$SB_RMQ_NODE" \
            RABBITMQ_NODE_PORT="$SB_AMQP_PORT" \
            RABBITMQ_DIST_PORT="$SB_RMQ_DIST_PORT" \
            ERL_EPMD_PORT="$SB_RMQ_EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            RABBITMQ_MNESIA_BASE="$DIR/mnesia" \
            RABBITMQ_LOG_BASE="$DIR/log" \
            RABBITMQ_PID_FILE="$PIDFILE" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
            RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config" \
            RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
            /usr/lib/rabbitmq/bin/rabbitmq-server -detached) >"$DIR/log/startup.log" 2>&1; then
        show_logs
        kill_epmd
        die "rabbitmq-server failed to launch node $SB_RMQ_NODE"
    fi
    # (timeout(1) too: rabbitmqctl wait overruns its --timeout in some states)
    if ! timeout 90 "${CTL[@]}" wait "$PIDFILE" --timeout 60 >"$DIR/log/wait.log" 2>&1; then
        show_logs
        if pid=$(node_pid); then kill "$pid" 2>/dev/null || true; fi
        kill_epmd
        die "node $SB_RMQ_NODE did not become ready within 60 s (logs above, in $DIR/log)"
    fi
}

stop() {
    need_root
    local pid
    if pid=$(node_pid); then
        if ! "${CTL[@]}" stop "$PIDFILE" >"$DIR/log/stop.log" 2>&1; then
            echo "rabbitmqctl stop failed ($(tail -n 1 "$DIR/log/stop.log")); sending SIGTERM to pid $pid" >&2
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
        fi
    fi
    rm -f "$PIDFILE"
    kill_epmd
}

status() {
    local pid
    local app
    if pid=$(node_pid) && app=$("${CTL[@]}" -q eval 'rabbit:is_running().' 2>/dev/null); then
        if [ "$app" = true ]; then
            echo "running: node $SB_RMQ_NODE, pid $pid, $SB_AMQP_URL"
        else
            echo "node $SB_RMQ_NODE up (pid $pid) but its app is stopped (stop_app); 'start' starts it"
        fi
    else
        echo "stopped: node $SB_RMQ_NODE"
        return 3
    fi
}

case "${1:-}" in
    start | stop | status) "$1" ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
