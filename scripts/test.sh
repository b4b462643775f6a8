#!/usr/bin/env bash
# scripts/test.sh -- THE test command of signalbus:  bash scripts/test.sh
#
# As root, from any directory.  Installs missing packages, builds and installs
# the extension, builds t/amqp_dump.c, makes throw-away TLS certificates
# ($SB_RUN_DIR/tls), starts a private RabbitMQ node (AMQP on SB_AMQP_PORT, and
# a TLS listener requiring client certificates on SB_AMQPS_PORT) and a
# fresh private PostgreSQL cluster, copies the repo to $SB_RUN_DIR/src (owned
# by postgres: PostgreSQL refuses root), and runs there, as postgres,
#   make installcheck TAP_TESTS=          (pg_regress: REGRESS / ISOLATION)
#   make installcheck REGRESS= ISOLATION= (prove t/*.pl)
# so both suites always run.  Stops the servers it started, prints the
# failures' details and a summary line, exits non-zero on failure.
#
# Knobs: SB_RUN_DIR, SB_AMQP_PORT, SB_PG_PORT (scripts/lib.sh);
# PROVE_FLAGS (e.g. -v), PROVE_TESTS (e.g. t/010_basic.pl) go to make;
# SB_SKIP_BUILD=1 tests the already installed extension (builds only amqp-dump);
# SB_FUZZ_SEED replays t/130_hostile_input.pl with another seed.
# Tests see: PGHOST/PGPORT (private cluster, pg_regress only), SB_AMQP_PORT,
# SB_RUN_DIR, SB_AMQP_DUMP, SB_RABBITMQCTL, SB_AMQPS_PORT (the node's TLS
# port) and SB_TLS_DIR (its certificates: see make_tls_certs in lib.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
S=$SB_ROOT/scripts
SRC=$SB_RUN_DIR/src
T0=$SECONDS
export SB_RUN_DIR SB_AMQP_PORT SB_PG_PORT SB_AMQPS_PORT

started_rmq=0
started_pg=0
cleanup() {
    local rc=$?
    [ $started_pg = 1 ] && { bash "$S/pg.sh" stop || rc=1; }
    [ $started_rmq = 1 ] && { bash "$S/rabbitmq.sh" stop || rc=1; }
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash "$S/install-deps.sh"
bash "$S/build.sh" "$([ "${SB_SKIP_BUILD:-0}" = 1 ] && echo tools || echo all)"

ensure_run_dir
make_tls_certs "$SB_TLS_DIR"
SB_RMQ_EXTRA_CONF=$(tls_conf "$SB_TLS_DIR")
export SB_RMQ_EXTRA_CONF
bash "$S/rabbitmq.sh" status >/dev/null 2>&1 || started_rmq=1
bash "$S/rabbitmq.sh" start
port_in_use "$SB_AMQPS_PORT" ||
    die "the RabbitMQ node does not listen for TLS on port $SB_AMQPS_PORT (see $SB_RMQ_DIR/log)"

# A fresh cluster each run: a signalbus worker stays connected to
# contrib_regression, which would make pg_regress's DROP DATABASE fail.
started_pg=1
bash "$S/pg.sh" start --fresh

rm -rf "$SRC"
install -d -o postgres -g postgres "$SRC"
tar -C "$SB_ROOT" --exclude=./.git --exclude=./tmp_check --exclude=./results \
    --exclude=./output_iso --exclude='./regression.*' -cf - . | tar -C "$SRC" -xf -
chown -R postgres:postgres "$SRC"

run_make() {
    (cd "$SRC" && runuser -u postgres -- env \
        PGHOST="$SB_RUN_DIR" PGPORT="$SB_PG_PORT" PGUSER=postgres \
        SB_AMQP_PORT="$SB_AMQP_PORT" SB_RUN_DIR="$SB_RUN_DIR" \
        SB_AMQPS_PORT="$SB_AMQPS_PORT" SB_TLS_DIR="$SB_TLS_DIR" \
        ${SB_FUZZ_SEED:+SB_FUZZ_SEED="$SB_FUZZ_SEED"} \
        SB_AMQP_DUMP="$SB_AMQP_DUMP" SB_RABBITMQCTL="$SRC/scripts/rabbitmqctl.sh" \
        make -s --no-print-directory -C "$SRC" PG_CONFIG="$PG_CONFIG" installcheck "$@")
}

regress=ok
tap=ok
run_make TAP_TESTS= || regress=FAILED
if compgen -G "$SRC/t/*.pl" >/dev/null; then
    run_make REGRESS= ISOLATION= PROVE_FLAGS="${PROVE_FLAGS:-}" \
        ${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"} || tap=FAILED
else
    tap="none (no t/*.pl)"
fi

if [ "$regress" != ok ] || [ "$tap" = FAILED ]; then
    for f in "$SRC/regression.diffs" "$SRC/output_iso/regression.diffs"; do
        [ -s "$f" ] && { echo "======== $f"; cat "$f"; }
    done
    if [ "$tap" = FAILED ]; then
        # logs of the failed TAP scripts (all logs if none can be told apart)
        L=$SRC/tmp_check/log
        failed=$(grep -lE '^not ok|Looks like|died|BAIL' "$L"/regress_log_* 2>/dev/null || true)
        [ -n "$failed" ] || failed=$(ls "$L"/regress_log_* 2>/dev/null || true)
        for f in $failed; do
            t=${f#"$L"/regress_log_}
            for g in "$f" "$L/$t"_*.log; do
                [ -f "$g" ] && { echo "======== $g (tail)"; tail -n 40 "$g"; }
            done
        done
    fi
    echo "======== $SB_RUN_DIR/pg-$SB_PG_PORT.log (tail)"
    tail -n 40 "$SB_RUN_DIR/pg-$SB_PG_PORT.log" || true
    echo "signalbus tests: FAIL (regress: $regress, tap: $tap) in $((SECONDS - T0)) s; files kept in $SRC"
    exit 1
fi
echo "signalbus tests: PASS (regress: $regress, tap: $tap) in $((SECONDS - T0)) s"
