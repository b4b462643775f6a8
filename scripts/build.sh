#!/usr/bin/env bash
# scripts/build.sh [all|extension|tools] -- build and install signalbus, and
# build the test tool $SB_RUN_DIR/bin/amqp-dump (from t/amqp_dump.c).  As root
# (make install writes into /usr/lib/postgresql and /usr/share/postgresql).
#   all (default)  both
#   extension      make && make install in the repo, PG_CONFIG of PostgreSQL 15
#   tools          only amqp-dump
# Build output goes to $SB_RUN_DIR/build.log; it is printed on failure, and
# compiler warnings are printed on success too.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

what=${1:-all}
case "$what" in all | extension | tools) ;; *) die "usage: $0 [all|extension|tools]" ;; esac
need_root
ensure_run_dir
LOG=$SB_RUN_DIR/build.log
: >"$LOG"

run() {
    echo "+ $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || { cat "$LOG" >&2; die "build failed: $*"; }
}

if [ "$what" != tools ]; then
    [ -f "$SB_ROOT/Makefile" ] || die "no Makefile in $SB_ROOT (the extension sources are missing)"
    run make -C "$SB_ROOT" PG_CONFIG="$PG_CONFIG"
    run make -C "$SB_ROOT" PG_CONFIG="$PG_CONFIG" install
fi
if [ "$what" != extension ]; then
    install -d -m 755 "$SB_RUN_DIR/bin"
    run cc -O2 -g -Wall -Wextra -o "$SB_RUN_DIR/bin/amqp-dump.tmp" "$SB_ROOT/t/amqp_dump.c" -lrabbitmq -lm
    mv -f "$SB_RUN_DIR/bin/amqp-dump.tmp" "$SB_RUN_DIR/bin/amqp-dump"
fi
grep -i 'warning:' "$LOG" >&2 || true
