#!/usr/bin/env bash
# Runs porteiro the way ../shared/bench/peers.sh expects a proxy: it reads BACKEND (ip:port),
# CERT, KEY and WORK from the environment, writes a one-tenant config for Host t0.example.com
# into $WORK and execs porteiro on PORT (first argument, default 18090) with one worker thread.
# With "tls" as second argument PORT is a TLS listener serving CERT/KEY (for peers.sh -s tls).
#
#   peers.sh -p "porteiro=$PWD/load-tests/peers-porteiro.sh 18090@18090"
#   peers.sh -s tls -p "porteiro=$PWD/load-tests/peers-porteiro.sh 18090 tls@18090"
#
# OBSERVE picks what is observed: "default" (what an operator gets without saying: per-tenant
# metrics on, access log off), "on" (metrics and the access log, to a file in $WORK) or "off"
# (both off). PORTEIRO overrides the binary (default: target/release/porteiro next to this
# script); WRAP prefixes its command line (for example a profiler). TENANTS=N configures N
# tenants in all (x1.example.net ... on the same backend besides t0), to see what a large
# configuration costs each request.
# THREADS sets porteiro's worker threads (default 1, as peers.sh runs every proxy with one).
# SERVER_EXTRA is added to [server] as it is (for example "work_stealing = true").
set -euo pipefail
port=${1:-18090}
mode=${2:-plain}
observe=${OBSERVE:-default}
if [ "$observe" = default ]; then
  observe_toml=""
elif [ "$observe" = on ]; then
  observe_toml="[metrics]
enabled = true
[access_log]
path = \"$WORK/porteiro-$port-access.log\""
else
  observe_toml="[metrics]
enabled = false"
fi
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PORTEIRO:-$here/target/release/porteiro}
dir=$WORK/porteiro-$port
mkdir -p "$dir/tenants.d"
if [ "$mode" = tls ]; then
  # Certificates get a directory of their own, as in production: porteiro watches it for
  # rotations, and a directory others write into (logs) would wake the watcher for nothing.
  mkdir -p "$dir/certs"; cp "$CERT" "$dir/certs/cert.pem"; cp "$KEY" "$dir/certs/key.pem"
  CERT=$dir/certs/cert.pem; KEY=$dir/certs/key.pem
  # The plain listener moves out of the way; wrk connects by IP, so no SNI: the default
  # certificate answers and Host picks the tenant.
  cat > "$dir/porteiro.toml" <<TOML
[server]
listen = ["127.0.0.1:$((port + 1000))"]
listen_tls = ["127.0.0.1:$port"]
default_certificate = { cert = "$CERT", key = "$KEY" }
admin = ""
threads = ${THREADS:-1}
${SERVER_EXTRA:-}
$observe_toml
TOML
  tls="tls = { cert = \"$CERT\", key = \"$KEY\" }"
else
  cat > "$dir/porteiro.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
admin = ""
threads = ${THREADS:-1}
${SERVER_EXTRA:-}
$observe_toml
TOML
  tls=""
fi
cat > "$dir/tenants.d/t0.toml" <<TOML
id = "t0"
hosts = ["t0.example.com"]
$tls
[pools.web]
backends = ["$BACKEND"]
TOML
rm -f "$dir"/tenants.d/x*.toml  # from an earlier run with another TENANTS
if [ "${TENANTS:-1}" -gt 1 ]; then
  awk -v n="$TENANTS" -v dir="$dir/tenants.d" -v b="$BACKEND" 'BEGIN {
    for (i = 1; i < n; i++) {
      f = sprintf("%s/x%06d.toml", dir, i)
      printf "id = \"x%d\"\nhosts = [\"x%d.example.net\"]\n[pools.web]\nbackends = [\"%s\"]\n", i, i, b > f
      close(f)
    } }'
fi
RUST_LOG=${RUST_LOG:-warn,rustls=error} exec ${WRAP:-} "$bin" run -c "$dir/porteiro.toml"
