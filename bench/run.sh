#!/usr/bin/env bash
# bench/run.sh -- the signalbus benchmark suite:  bash bench/run.sh
#
# As root, from any directory (like scripts/test.sh).  Installs missing
# packages, builds and installs signalbus (SB_SKIP_BUILD=1: use the installed
# one), builds the benchmark programs, starts a private RabbitMQ node and a
# fresh private PostgreSQL cluster (scripts/rabbitmq.sh, scripts/pg.sh), runs
# every measurement SB_BENCH_REPEAT times, interleaved (repetition 1 of
# everything, then repetition 2, ...), stops the servers it started, and
# prints a Markdown table of min / median / max, ratios and targets.
# See bench/README.md for what each figure means.
#
# Measurements (full sizes; SB_BENCH_QUICK=1 shrinks them):
#   raw      bench/raw_publish.c: 100,000 persistent messages on a
#            confirm-mode channel, bursts of 100 and 1,000, no PostgreSQL
#   drain    a 200,000-row backlog sent by the worker, and by
#            CALL signalbus_flushmany(), at burst_count 100 and 1,000
#   commit   pgbench, one-row INSERT transactions, 1 and 8 clients, into a
#            signal table vs an identical ordinary table (worker running)
#   latency  bench/latency.c: commit -> delivered to a consumer vs the raw
#            publish -> delivered round trip, p50 / p99
#   growth   worker drain time of 10k, 100k, 1M-row backlogs, and the
#            worker's memory (/proc/PID/status) before and after the 1M one
#
# Output: the table on stdout and in $OUT.md, the table as CSV in
# $SB_BENCH_OUT (default $SB_RUN_DIR/bench-results.csv), every sample in
# $OUT-samples.csv.  Exit status 0 whether or not targets are met (the suite
# is never part of the tests' pass/fail); non-zero only when a step failed.
#
# Knobs: SB_RUN_DIR, SB_AMQP_PORT, SB_PG_PORT (scripts/lib.sh);
#   SB_BENCH_QUICK=1    small sizes, 1 repetition (a smoke run, under a minute)
#   SB_BENCH_REPEAT=N   repetitions (default 3; 1 with SB_BENCH_QUICK=1)
#   SB_BENCH_OUT=FILE   the CSV file (.md and -samples.csv go next to it)
#   SB_BENCH_ONLY=LIST  comma-separated subset of raw,drain,commit,latency,growth
#   SB_BENCH_BUDGET=S   no repetition is started that would end more than S
#                       seconds (default 840) after the measurements began
#   SB_SKIP_BUILD=1     do not build/install the extension (tools only)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
need_root
S=$SB_ROOT/scripts
B=$SB_ROOT/bench
T0=$SECONDS
export SB_RUN_DIR SB_AMQP_PORT SB_PG_PORT
# one worker, for database postgres; no periodic sweep during a measurement
# (the worker is woken by commits and by queue overflows, never by the clock)
export SB_PG_DATABASES=postgres
export SB_PG_FLUSH_INTERVAL=1h

QUICK=${SB_BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
    REPEAT=${SB_BENCH_REPEAT:-1}
    RAW_N=10000
    DRAIN_N=20000
    PGBENCH_SECONDS=3
    LAT_N=200
    LAT_WARMUP=20
    GROWTH=(1000 10000 100000)
else
    REPEAT=${SB_BENCH_REPEAT:-3}
    RAW_N=100000
    DRAIN_N=200000
    PGBENCH_SECONDS=5
    LAT_N=1000
    LAT_WARMUP=50
    GROWTH=(10000 100000 1000000)
fi
BURSTS=(100 1000)
CLIENTS=(1 8)
LAT_INTERVAL_MS=3
BUDGET=${SB_BENCH_BUDGET:-840}
ONLY=,${SB_BENCH_ONLY:-raw,drain,commit,latency,growth},
OUT=${SB_BENCH_OUT:-$SB_RUN_DIR/bench-results.csv}
case "$OUT" in /*) ;; *) OUT=$PWD/$OUT ;; esac
MD=${OUT%.csv}.md
SAMPLES=${OUT%.csv}-samples.csv
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "SB_BENCH_REPEAT must be a positive integer: $REPEAT"
[[ "$BUDGET" =~ ^[0-9]+$ ]] || die "SB_BENCH_BUDGET must be a number of seconds: $BUDGET"
for s in ${ONLY//,/ }; do
    case "$s" in raw | drain | commit | latency | growth) ;; *) die "unknown section in SB_BENCH_ONLY: $s" ;; esac
done
want() { [[ "$ONLY" == *,$1,* ]]; }

BIN=$SB_RUN_DIR/bin
WORK=$SB_RUN_DIR/bench
URL=$SB_AMQP_URL
CONNINFO="host=$SB_RUN_DIR port=$SB_PG_PORT user=postgres dbname=postgres"
Q_DRAIN=bench.drain
Q_COMMIT=bench.commit
Q_LAT=bench.latency

started_rmq=0
started_pg=0
cleanup() {
    local rc=$?
    [ $started_pg = 1 ] && { bash "$S/pg.sh" stop || rc=1; }
    [ $started_rmq = 1 ] && { bash "$S/rabbitmq.sh" stop || rc=1; }
    [ $rc = 0 ] || echo "bench: FAILED after $((SECONDS - T0)) s (logs in $SB_RUN_DIR)" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench [$(date +%T), $((SECONDS - T0)) s] $*" >&2; }
# (a file, not a variable: warn is called in command substitutions too)
warn() { echo "bench: WARNING: $*" >&2; echo "$*" >>"$WORK/warnings"; }

psql_() { psql -X -q -v ON_ERROR_STOP=1 -h "$SB_RUN_DIR" -p "$SB_PG_PORT" -U postgres -d postgres "$@"; }
sql() { psql_ -At -c "$1"; }
dump() { "$SB_AMQP_DUMP" --url "$URL" "$@"; }
purge() { dump --declare "$1" --durable --purge; }
qlen() { dump --length "$1"; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
record() { echo "$1,$2,$3" >>"$SAMPLES"; }   # key rep value

# expect_queue Q N WHAT: the queue holds exactly N messages (or warn)
expect_queue() {
    local n
    n=$(qlen "$1")
    [ "$n" = "$2" ] || warn "$3: queue $1 holds $n messages, expected $2"
}

# fresh TABLE...: empty the tables, reset their ids (so every run sends the
# same bodies), and checkpoint, so that no run pays for the previous one
fresh() {
    local t
    for t in "$@"; do sql "TRUNCATE $t RESTART IDENTITY" >/dev/null; done
    sql "CHECKPOINT" >/dev/null
}

wait_idle() { sql "CALL bench_wait_idle(300)" >/dev/null; }
# tidy TABLE...: after a run, truncate what it used, so that no autovacuum of
# its dead rows (or of rows left behind) runs during a later measurement
tidy() { sql "TRUNCATE $(IFS=,; echo "$*")" >/dev/null; }
worker_pid() { sql "SELECT pid FROM signalbus_status WHERE database = 'postgres'"; }
worker_sent() { sql "SELECT sent FROM signalbus_status WHERE database = 'postgres'"; }
# mem_kb PID FIELD: a field of /proc/PID/status, in kB
mem_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
# cpu_ticks PID: user + system CPU time of a process, in clock ticks
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# --- measurements -----------------------------------------------------------

# raw BURST REP: raw_publish into an empty queue bench.drain
raw() {
    local burst=$1 rep=$2 out
    log "rep $rep: raw publish, $RAW_N messages, burst $burst"
    purge "$Q_DRAIN"
    out=$(timeout 900 "$BIN/bench-raw-publish" --url "$URL" --queue "$Q_DRAIN" \
        --count "$RAW_N" --burst "$burst")
    expect_queue "$Q_DRAIN" "$RAW_N" "raw burst $burst"
    record "raw_b$burst" "$rep" "${out##*msg_per_s=}"
    purge "$Q_DRAIN"
}

# worker_drain TABLE N: commit an N-row backlog in one transaction and time
# from just before COMMIT until the worker has sent N messages (confirmed,
# rows deleted, committed).  Prints the seconds and the worker's CPU time
# meanwhile (microseconds per message).
worker_drain() {
    local table=$1 n=$2 sent0 secs pid ticks0
    purge "$Q_DRAIN"
    fresh "$table"
    wait_idle
    sent0=$(worker_sent)
    pid=$(worker_pid)
    ticks0=$(cpu_ticks "$pid")
    secs=$(psql_ -At <<EOF
SET signalbus.autoflush = on;
BEGIN;
INSERT INTO $table (payload) SELECT repeat('x', 64) FROM generate_series(1, $n);
CHECKPOINT;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
COMMIT;
CALL bench_wait_sent($sent0 + $n, 900, NULL) \gset
SELECT :done_at - :t0;
EOF
)
    [ "$(sql "SELECT pending FROM signalbus_pending WHERE signal = '$table'::regclass")" = 0 ] ||
        warn "worker drain of $n rows of $table: rows left in the table"
    expect_queue "$Q_DRAIN" "$n" "worker drain of $n rows of $table"
    echo "$secs $(calc "($(cpu_ticks "$pid") - $ticks0) * $TICK_US / $n")"
    purge "$Q_DRAIN"
    tidy "$table"
}

# flushmany_drain TABLE N: an N-row backlog the worker does not see
# (autoflush off, no sweep due), sent by CALL signalbus_flushmany().
flushmany_drain() {
    local table=$1 n=$2 sent0 secs
    purge "$Q_DRAIN"
    fresh "$table"
    wait_idle
    sent0=$(worker_sent)
    secs=$(psql_ -At <<EOF
SET signalbus.autoflush = off;
SET client_min_messages = warning;
INSERT INTO $table (payload) SELECT repeat('x', 64) FROM generate_series(1, $n);
CHECKPOINT;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
CALL signalbus_flushmany('$table');
SELECT extract(epoch FROM clock_timestamp()) - :t0;
EOF
)
    [ "$(sql "SELECT pending FROM signalbus_pending WHERE signal = '$table'::regclass")" = 0 ] ||
        warn "flushmany of $n rows of $table: rows left in the table"
    [ "$(worker_sent)" = "$sent0" ] ||
        warn "flushmany of $n rows of $table: the worker sent $(($(worker_sent) - sent0)) of them"
    expect_queue "$Q_DRAIN" "$n" "flushmany of $n rows of $table"
    purge "$Q_DRAIN"
    tidy "$table"
    echo "$secs"
}

drain() {
    local burst=$1 rep=$2 secs cpu out
    log "rep $rep: worker drain, $DRAIN_N rows, burst $burst"
    out=$(worker_drain "bench_b$burst" "$DRAIN_N")
    read -r secs cpu <<<"$out"
    record "worker_b$burst" "$rep" "$(calc "$DRAIN_N / $secs")"
    record "worker_cpu_b$burst" "$rep" "$cpu"
    log "rep $rep: flushmany drain, $DRAIN_N rows, burst $burst"
    secs=$(flushmany_drain "bench_b$burst" "$DRAIN_N")
    record "flushmany_b$burst" "$rep" "$(calc "$DRAIN_N / $secs")"
}

# commit KIND CLIENTS REP: pgbench, one-row INSERT transactions,
# synchronous_commit on, into
#   plain    bench_commit_plain, an ordinary table (the worker idles)
#   signal   bench_commit_signal, a signal table: the worker sends every row
#   busy     bench_commit_plain while bench-raw-publish sends persistent
#            messages at the rate the signal run of this repetition reached
#            (a diagnostic: what the broker's work alone, on the same cores,
#            costs the clients -- no signalbus involved)
#   noflush  bench_commit_signal with signalbus.autoflush off: the trigger
#            and the commit callback run, but the worker is never woken (a
#            diagnostic: the commit path's own cost, without the CPU the
#            worker and the broker take from the clients)
# For signal, also the worker's and the broker's CPU time per transaction
# (until the worker has sent everything) and the backlog at the end.
commit() {
    local kind=$1 clients=$2 rep=$3 out tps txns backlog table=bench_commit_signal
    local opts="-c synchronous_commit=on" wpid w0 b0
    local rate busy_pid=
    [ "$kind" = plain ] && table=bench_commit_plain
    [ "$kind" = busy ] && table=bench_commit_plain
    [ "$kind" = noflush ] && opts="$opts -c signalbus.autoflush=off"
    log "rep $rep: pgbench $kind, $clients client(s), $PGBENCH_SECONDS s"
    purge "$Q_COMMIT"
    fresh bench_commit_signal bench_commit_plain
    wait_idle
    echo "INSERT INTO $table (payload) VALUES (repeat('x', 64));" >"$WORK/commit_$kind.sql"
    wpid=$(worker_pid)
    w0=$(cpu_ticks "$wpid")
    b0=$(cpu_ticks "$RMQ_PID")
    if [ "$kind" = busy ]; then
        rate=$(awk -F, -v k="commit_signal_c$clients" -v r="$rep" '$1 == k && $2 == r { print $3 }' "$SAMPLES")
        [ -n "$rate" ] || die "no signal run to take the message rate from"
        timeout 300 "$BIN/bench-raw-publish" --url "$URL" --queue "$Q_COMMIT" \
            --count "$(awk -v r="$rate" -v s="$PGBENCH_SECONDS" 'BEGIN { printf "%d", r * (s + 5) }')" \
            --burst 16 --rate "$rate" >/dev/null &
        busy_pid=$!
        sleep 0.5
    fi
    out=$(PGOPTIONS="$opts" timeout 300 pgbench -n -M prepared \
        -h "$SB_RUN_DIR" -p "$SB_PG_PORT" -U postgres -c "$clients" -j "$((clients < 2 ? 1 : 2))" \
        -T "$PGBENCH_SECONDS" -f "$WORK/commit_$kind.sql" postgres 2>&1) ||
        { echo "$out" >&2; die "pgbench failed"; }
    if [ -n "$busy_pid" ]; then kill "$busy_pid" 2>/dev/null || true; wait "$busy_pid" 2>/dev/null || true; fi
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$out")
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*$/\1/p' <<<"$out")
    [ -n "$tps" ] && [ -n "$txns" ] || { echo "$out" >&2; die "cannot read pgbench's output"; }
    record "commit_${kind}_c$clients" "$rep" "$tps"
    case "$kind" in
        signal)
            backlog=$(sql "SELECT pending FROM signalbus_pending WHERE signal = '$table'::regclass")
            record "commit_backlog_c$clients" "$rep" "$backlog"
            wait_idle
            record "commit_worker_cpu_c$clients" "$rep" "$(calc "($(cpu_ticks "$wpid") - $w0) * $TICK_US / $txns")"
            record "commit_broker_cpu_c$clients" "$rep" "$(calc "($(cpu_ticks "$RMQ_PID") - $b0) * $TICK_US / $txns")"
            expect_queue "$Q_COMMIT" "$txns" "pgbench $kind $clients client(s)"
            ;;
        noflush)
            [ "$(sql "SELECT count(*) FROM $table")" = "$txns" ] ||
                warn "pgbench $kind $clients client(s): rows were sent though autoflush was off"
            ;;
    esac
    purge "$Q_COMMIT"
    tidy bench_commit_signal bench_commit_plain
}

# latency MODE REP: raw (publish -> delivered) or pg (commit -> delivered)
latency() {
    local mode=$1 rep=$2 out m line p50 p99
    log "rep $rep: latency, $mode, $LAT_N messages"
    purge "$Q_LAT"
    if [ "$mode" = pg ]; then
        fresh bench_latency
        wait_idle
        out=$(timeout 300 "$BIN/bench-latency" pg --url "$URL" --queue "$Q_LAT" \
            --conninfo "$CONNINFO" --table bench_latency --count "$LAT_N" \
            --warmup "$LAT_WARMUP" --interval-ms "$LAT_INTERVAL_MS")
    else
        out=$(timeout 300 "$BIN/bench-latency" raw --url "$URL" --queue "$Q_LAT" \
            --count "$LAT_N" --warmup "$LAT_WARMUP" --interval-ms "$LAT_INTERVAL_MS")
    fi
    [ "$mode" = pg ] && tidy bench_latency
    while read -r m line; do
        p50=$(sed -n 's/.* p50_ms=\([0-9.-]*\).*/\1/p' <<<"$line")
        p99=$(sed -n 's/.* p99_ms=\([0-9.-]*\).*/\1/p' <<<"$line")
        record "lat_${m}_p50" "$rep" "$p50"
        record "lat_${m}_p99" "$rep" "$p99"
    done <<<"$out"
    purge "$Q_LAT"
}

# growth REP: worker drain time of each backlog size (burst 1000), and the
# worker's memory before and after the largest
growth() {
    local rep=$1 n secs out pid pid2 largest=${GROWTH[-1]} vm0 anon0 shm0 vm1 anon1 shm1 t_prev=0 n_prev=0
    for n in "${GROWTH[@]}"; do
        log "rep $rep: growth, worker drain of $n rows"
        if [ "$n" = "$largest" ]; then
            wait_idle
            pid=$(worker_pid)
            vm0=$(mem_kb "$pid" VmRSS)
            anon0=$(mem_kb "$pid" RssAnon)
            shm0=$(mem_kb "$pid" RssShmem)
        fi
        out=$(worker_drain bench_b1000 "$n")
        read -r secs _ <<<"$out"
        record "growth_$n" "$rep" "$secs"
        if [ "$n_prev" != 0 ]; then
            # per-row time at this size over per-row time at the previous one
            record "growth_lin_$n" "$rep" "$(calc "($secs / $n) / ($t_prev / $n_prev)")"
        fi
        t_prev=$secs
        n_prev=$n
    done
    pid2=$(worker_pid)
    if [ "$pid2" != "$pid" ]; then
        warn "the worker's pid changed during the $largest-row drain ($pid -> $pid2): memory not measured"
        return
    fi
    vm1=$(mem_kb "$pid" VmRSS)
    anon1=$(mem_kb "$pid" RssAnon)
    shm1=$(mem_kb "$pid" RssShmem)
    record mem_vm_before "$rep" "$(calc "$vm0 / 1024")"
    record mem_vm_after "$rep" "$(calc "$vm1 / 1024")"
    record mem_vm_growth "$rep" "$(calc "($vm1 - $vm0) / 1024")"
    record mem_anon_before "$rep" "$(calc "$anon0 / 1024")"
    record mem_anon_growth "$rep" "$(calc "($anon1 - $anon0) / 1024")"
    record mem_shmem_growth "$rep" "$(calc "($shm1 - $shm0) / 1024")"
}

# --- setup ------------------------------------------------------------------

log "installing missing packages; building signalbus and the benchmark programs"
bash "$S/install-deps.sh"
bash "$S/build.sh" "$([ "${SB_SKIP_BUILD:-0}" = 1 ] && echo tools || echo all)"
install -d -m 755 "$BIN" "$WORK"
cc -O2 -g -Wall -Wextra -o "$BIN/bench-raw-publish" "$B/raw_publish.c" -lrabbitmq ||
    die "cannot build bench/raw_publish.c"
cc -O2 -g -Wall -Wextra -pthread -I"$("$PG_CONFIG" --includedir)" -o "$BIN/bench-latency" \
    "$B/latency.c" -lrabbitmq -lpq || die "cannot build bench/latency.c"

log "starting a private RabbitMQ node on port $SB_AMQP_PORT"
bash "$S/rabbitmq.sh" status >/dev/null 2>&1 || started_rmq=1
bash "$S/rabbitmq.sh" start
# what is measured: the library the postmaster preloaded at its start (a
# later make install does not change the running cluster)
tree=$(git -C "$SB_ROOT" describe --always --dirty 2>/dev/null || echo 'no git')
lib=$("$PG_CONFIG" --pkglibdir)/signalbus.so
lib_when=$(date -u -r "$lib" '+%Y-%m-%d %H:%M:%S UTC')
log "starting a fresh private PostgreSQL 15 on port $SB_PG_PORT"
started_pg=1
bash "$S/pg.sh" start --fresh

for q in "$Q_DRAIN" "$Q_COMMIT" "$Q_LAT"; do purge "$q"; done
psql_ -f "$B/setup.sql" >/dev/null
wait_idle
[ -n "$(worker_pid)" ] && [ "$(worker_pid)" != 0 ] || die "the signalbus worker is not running"
RMQ_PID=$(cat "$SB_RMQ_DIR/pid")

# warm-up, not recorded: the broker's first queue writes, the worker's and a
# session's first bursts (caches, plans, connections) are slower than later ones
: >"$WORK/warnings"
log "warm-up"
out=$("$BIN/bench-raw-publish" --url "$URL" --queue "$Q_DRAIN" --count 20000 --burst 1000)
purge "$Q_DRAIN"
out=$(worker_drain bench_b1000 20000)
out=$(flushmany_drain bench_b100 20000)

install -d "$(dirname "$OUT")"
echo "key,rep,value" >"$SAMPLES"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
T_RUNS=$SECONDS

# --- the runs, interleaved: every measurement once per repetition; the order
# within a repetition alternates, so a slow drift does not favour one side ---

done_reps=0
longest_rep=0
for rep in $(seq 1 "$REPEAT"); do
    # the suite is bounded in time: no repetition that would end past the
    # budget (measured from here on, by the longest repetition so far)
    if [ "$rep" -gt 1 ] && [ $((SECONDS - T_RUNS + longest_rep)) -gt "$BUDGET" ]; then
        warn "only $done_reps of $REPEAT repetitions fit in SB_BENCH_BUDGET=$BUDGET s (one takes ${longest_rep} s on this machine now)"
        break
    fi
    T_REP=$SECONDS
    if [ $((rep % 2)) = 1 ]; then fwd=1; else fwd=0; fi
    if want raw || want drain; then
        for burst in $([ $fwd = 1 ] && echo "${BURSTS[@]}" || echo "${BURSTS[@]}" | tr ' ' '\n' | tac); do
            if [ $fwd = 1 ]; then
                want raw && raw "$burst" "$rep"
                want drain && drain "$burst" "$rep"
            else
                want drain && drain "$burst" "$rep"
                want raw && raw "$burst" "$rep"
            fi
        done
    fi
    if want commit; then
        for c in "${CLIENTS[@]}"; do
            kinds="plain signal"
            # the diagnostic run only where the target is: 8 clients
            [ "$c" = 8 ] && kinds="$kinds noflush"
            [ $fwd = 1 ] || kinds=$(echo $kinds | tr ' ' '\n' | tac | tr '\n' ' ')
            # after signal: it loads the broker with signal's message rate
            [ "$c" = 8 ] && kinds="$kinds busy"
            for kind in $kinds; do commit "$kind" "$c" "$rep"; done
        done
    fi
    if want latency; then
        if [ $fwd = 1 ]; then latency raw "$rep"; latency pg "$rep"
        else latency pg "$rep"; latency raw "$rep"; fi
    fi
    if want growth; then growth "$rep"; fi
    done_reps=$rep
    if [ $((SECONDS - T_REP)) -gt "$longest_rep" ]; then longest_rep=$((SECONDS - T_REP)); fi
done

# --- the report ---------------------------------------------------------------

k() { local n=$1; if [ $((n % 1000000)) = 0 ]; then echo "$((n / 1000000))M"; elif [ $((n % 1000)) = 0 ]; then echo "$((n / 1000))k"; else echo "$n"; fi; }
D=$(k "$DRAIN_N")
G1=${GROWTH[0]} G2=${GROWTH[1]} G3=${GROWTH[2]}
SPEC=$WORK/spec
{
    for b in "${BURSTS[@]}"; do
        echo "Raw limit|Raw publish, burst $b (confirm each burst)|raw_b$b|msg/s|||"
    done
    for b in "${BURSTS[@]}"; do
        echo "Drain|Worker drain of $D rows, burst $b|worker_b$b|msg/s|raw_b$b|>=|0.9"
        echo "Drain|signalbus_flushmany of $D rows, burst $b|flushmany_b$b|msg/s|raw_b$b|>=|0.9"
    done
    for b in "${BURSTS[@]}"; do
        echo "Drain|Worker CPU time per message, burst $b|worker_cpu_b$b|µs|||"
    done
    for c in "${CLIENTS[@]}"; do
        echo "Commit path|INSERT TPS, ordinary table, $c client(s)|commit_plain_c$c|TPS|||"
        if [ "$c" = 8 ]; then
            echo "Commit path|INSERT TPS, signal table, $c clients|commit_signal_c$c|TPS|commit_plain_c$c|>=|0.95"
        else
            echo "Commit path|INSERT TPS, signal table, $c client(s)|commit_signal_c$c|TPS|commit_plain_c$c||"
        fi
        echo "Commit path|Rows pending when pgbench ended, $c client(s)|commit_backlog_c$c|rows|||"
        echo "Commit path|Worker CPU time per transaction, $c client(s)|commit_worker_cpu_c$c|µs|||"
        echo "Commit path|Broker CPU time per transaction, $c client(s)|commit_broker_cpu_c$c|µs|||"
        if [ "$c" = 8 ]; then
            echo "Commit path|INSERT TPS, signal table, worker not woken (autoflush off), $c clients|commit_noflush_c$c|TPS|commit_plain_c$c||"
            echo "Commit path|INSERT TPS, ordinary table, broker busy with the signal run's message rate (raw publisher, no signalbus), $c clients|commit_busy_c$c|TPS|commit_plain_c$c||"
        fi
    done
    echo "Latency|Raw publish → delivered, p50|lat_publish_to_deliver_p50|ms|||"
    echo "Latency|Raw publish → delivered, p99|lat_publish_to_deliver_p99|ms|||"
    echo "Latency|Raw publish → confirmed, p50 (for reference)|lat_publish_to_confirm_p50|ms|||"
    echo "Latency|Raw publish → confirmed, p99 (for reference)|lat_publish_to_confirm_p99|ms|||"
    echo "Latency|signalbus commit → delivered, p50|lat_commit_to_deliver_p50|ms|lat_publish_to_deliver_p50||"
    echo "Latency|signalbus commit → delivered, p99|lat_commit_to_deliver_p99|ms|lat_publish_to_deliver_p99|<=|3"
    echo "Latency|signalbus INSERT sent → delivered, p50 (incl. WAL flush)|lat_insert_to_deliver_p50|ms|||"
    echo "Latency|signalbus INSERT sent → delivered, p99 (incl. WAL flush)|lat_insert_to_deliver_p99|ms|||"
    echo "Memory|Worker VmRSS before the $(k "$G3")-row drain|mem_vm_before|MB|||"
    echo "Memory|Worker VmRSS after the $(k "$G3")-row drain|mem_vm_after|MB|||"
    echo "Memory|Worker VmRSS growth over $(k "$G3") rows|mem_vm_growth|MB||<|5"
    echo "Memory|  of which RssAnon (the worker's private memory)|mem_anon_growth|MB||<|5"
    echo "Memory|  of which RssShmem (shared buffers it touched; bounded by shared_buffers)|mem_shmem_growth|MB|||"
    echo "Growth|Worker drain of $(k "$G1") rows (burst 1000)|growth_$G1|s|||"
    echo "Growth|Worker drain of $(k "$G2") rows (burst 1000)|growth_$G2|s|||"
    echo "Growth|Worker drain of $(k "$G3") rows (burst 1000)|growth_$G3|s|||"
    echo "Growth|Time per row at $(k "$G2") ÷ at $(k "$G1") (1 = linear)|growth_lin_$G2|×||<=|1.2"
    echo "Growth|Time per row at $(k "$G3") ÷ at $(k "$G2") (1 = linear)|growth_lin_$G3|×||<=|1.2"
} >"$SPEC"

{
    echo "## signalbus benchmarks"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); source tree $tree at the start, signalbus.so installed $lib_when$([ "${SB_SKIP_BUILD:-0}" = 1 ] && echo ' (SB_SKIP_BUILD=1: not built by this run)');" \
        "$(nproc) CPUs, load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end;" \
        "PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'), RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null)," \
        "librabbitmq $(dpkg-query -W -f='${Version}' librabbitmq4 2>/dev/null)."
    echo "$done_reps repetition(s), interleaved$([ "$QUICK" = 1 ] && echo '; QUICK sizes (SB_BENCH_QUICK=1): not comparable with a full run')." \
        "Messages: {\"id\":N,\"payload\":64×\"x\"} (~90 bytes), persistent, durable queue, purged between runs;" \
        "raw: $(k "$RAW_N") messages a run." \
        "Ratios: median over repetitions of (value ÷ baseline of the same repetition)."
    echo
} >"$MD"
awk -v csv="$OUT" -v md="$MD" -f "$B/summarize.awk" "$SAMPLES" "$SPEC"
if [ -s "$WORK/warnings" ]; then
    { echo; echo "Warnings:"; sed 's/^/- /' "$WORK/warnings"; } >>"$MD"
fi
echo >>"$MD"
echo "Total time: $((SECONDS - T0)) s." >>"$MD"

cat "$MD"
echo
echo "bench: table in $MD, CSV in $OUT, samples in $SAMPLES" >&2
