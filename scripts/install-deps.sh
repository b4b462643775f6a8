#!/usr/bin/env bash
# scripts/install-deps.sh -- install the Debian 12 packages signalbus needs to
# build and test.  As root.  Fast no-op when everything is installed.
#
# The packages' own system services (postgresql@15-main on 5432,
# rabbitmq-server on 5672) may or may not be started by apt; the harness never
# uses them (it runs a private cluster and a private broker node) and leaves
# them alone.  PostgreSQL's tools live in /usr/lib/postgresql/15/bin, which the
# other scripts put first in PATH (scripts/lib.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(postgresql-15 postgresql-server-dev-15 librabbitmq-dev rabbitmq-server
          amqp-tools libipc-run-perl build-essential openssl)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

need_root
echo "install-deps: installing ${missing[*]}"
log=$(mktemp /tmp/signalbus-apt.XXXXXX)
if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "apt-get failed (full log: $log)"
fi
rm -f "$log"
for f in "$PG_CONFIG" /usr/lib/rabbitmq/bin/rabbitmq-server /usr/include/amqp.h; do
    [ -e "$f" ] || die "packages installed but $f is missing"
done
