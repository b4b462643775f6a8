# shellcheck shell=bash disable=SC2034
# Shared settings for the signalbus harness scripts.  Source it, don't run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Environment knobs (all optional):
#   SB_RUN_DIR    where private servers, logs and tools live (/tmp/signalbus-run)
#   SB_AMQP_PORT  AMQP port of the private RabbitMQ node (56720); the node also
#                 uses SB_AMQP_PORT+1 (Erlang distribution) and SB_AMQP_PORT+2
#                 (its own epmd, so the system's epmd on 4369 is never touched)
#   SB_AMQPS_PORT TLS (amqps://) port of that node (SB_AMQP_PORT+3); it
#                 listens there only when started with a TLS listener
#                 (scripts/test.sh does: make_tls_certs, tls_conf below)
#   SB_PG_PORT    port of the private PostgreSQL cluster (54329)

SB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SB_RUN_DIR=${SB_RUN_DIR:-/tmp/signalbus-run}
SB_AMQP_PORT=${SB_AMQP_PORT:-56720}
SB_PG_PORT=${SB_PG_PORT:-54329}
if [[ "$SB_AMQP_PORT" =~ ^[0-9]+$ ]]; then
    SB_AMQPS_PORT=${SB_AMQPS_PORT:-$((SB_AMQP_PORT + 3))}
fi

PG_BINDIR=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BINDIR/pg_config
export PATH="$PG_BINDIR:$PATH"

SB_AMQP_URL="amqp://guest:guest@localhost:$SB_AMQP_PORT/%2f"
SB_AMQP_DUMP="$SB_RUN_DIR/bin/amqp-dump"
SB_TLS_DIR="$SB_RUN_DIR/tls"

# RabbitMQ node naming (see scripts/rabbitmq.sh, scripts/rabbitmqctl.sh)
SB_RMQ_NODE="signalbus-$SB_AMQP_PORT@localhost"
SB_RMQ_DIR="$SB_RUN_DIR/rabbitmq-$SB_AMQP_PORT"
SB_RMQ_DIST_PORT=$((SB_AMQP_PORT + 1))
SB_RMQ_EPMD_PORT=$((SB_AMQP_PORT + 2))

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it runs servers as the postgres and rabbitmq users)"; }

case "$SB_RUN_DIR" in /*) ;; *) die "SB_RUN_DIR must be an absolute path: $SB_RUN_DIR" ;; esac
for _p in "$SB_AMQP_PORT" "$SB_PG_PORT" "${SB_AMQPS_PORT:-}"; do
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

# make_tls_certs [DIR]: as root, a throw-away PKI for the TLS tests in DIR
# (default $SB_TLS_DIR), made with the openssl CLI (EC P-256 keys, valid 30
# days).  Kept while complete and younger than 20 days (so a running broker
# never has its files replaced under it); otherwise made anew.
#   ca.crt                   CA that signs the broker's and the client's certificates
#   other-ca.crt             an unrelated CA (a "wrong CA" for either side)
#   server.crt, server.key   the broker: CN=localhost, subjectAltName DNS:localhost
#                            only (so amqps://...@127.0.0.1 fails host-name
#                            verification); the key is readable by rabbitmq only
#   client.crt, client.key   client certificate signed by ca.crt (CN=signalbus-client)
#   client-other.crt, client-other.key   client certificate signed by other-ca.crt
#   client-enc.key           client.key encrypted (AES-256) with the passphrase
#                            in client-enc.pass
# Client keys and client-enc.pass are readable by postgres only.
make_tls_certs() {
    need_root
    local d=${1:-$SB_TLS_DIR} f t complete=1
    local files=(ca.crt other-ca.crt server.crt server.key client.crt client.key
                 client-other.crt client-other.key client-enc.key client-enc.pass)
    for f in "${files[@]}"; do [ -s "$d/$f" ] || complete=0; done
    if [ $complete = 1 ] && [ -z "$(find "$d/ca.crt" -mtime +20 2>/dev/null)" ]; then
        return 0
    fi
    command -v openssl >/dev/null || die "openssl is missing (bash scripts/install-deps.sh)"
    install -d -m 755 "$(dirname "$d")"
    t=$(mktemp -d "$(dirname "$d")/tls.XXXXXX")
    chmod 755 "$t"
    if ! (
        set -e
        cd "$t"
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
        for ca in ca other-ca; do
            key "$ca.key"
            openssl req -x509 -new -key "$ca.key" -sha256 -days 30 \
                -subj "/CN=signalbus test $ca" \
                -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$ca.crt"
        done
        # sign NAME CA CN EXTENSIONS: NAME.crt for NAME.key, signed by CA
        sign() {
            printf '%s\n' "$4" >"$1.ext"
            openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
            openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" \
                -CAcreateserial -days 30 -sha256 -extfile "$1.ext" -out "$1.crt"
        }
        key server.key
        sign server ca localhost "subjectAltName=DNS:localhost
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
        key client.key
        sign client ca signalbus-client "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
        key client-other.key
        sign client-other other-ca signalbus-client "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
        head -c 12 /dev/urandom | base64 | tr -d '/+=' >client-enc.pass
        openssl pkey -in client.key -aes256 -passout file:client-enc.pass -out client-enc.key
        rm -f ./*.csr ./*.ext ./*.srl ca.key other-ca.key
    ) >"$t.log" 2>&1; then
        cat "$t.log" >&2
        rm -rf "$t" "$t.log"
        die "could not make the TLS certificates (openssl failed)"
    fi
    rm -f "$t.log"
    chmod 644 "$t"/*.crt
    chown rabbitmq:rabbitmq "$t/server.key"
    chmod 400 "$t/server.key"
    chown postgres:postgres "$t"/client*.key "$t/client-enc.pass"
    chmod 400 "$t"/client*.key "$t/client-enc.pass"
    rm -rf "$d"
    mv "$t" "$d"
}

# tls_conf [DIR]: rabbitmq.conf lines (for SB_RMQ_EXTRA_CONF, see
# scripts/rabbitmq.sh) for a TLS listener on SB_AMQPS_PORT with the
# certificates of make_tls_certs, requiring a client certificate signed by
# ca.crt (RabbitMQ has one set of ssl_options per node).
tls_conf() {
    local d=${1:-$SB_TLS_DIR}
    printf '%s\n' \
        "listeners.ssl.default = $SB_AMQPS_PORT" \
        "ssl_options.cacertfile = $d/ca.crt" \
        "ssl_options.certfile = $d/server.crt" \
        "ssl_options.keyfile = $d/server.key" \
        "ssl_options.verify = verify_peer" \
        "ssl_options.fail_if_no_peer_cert = true"
}
