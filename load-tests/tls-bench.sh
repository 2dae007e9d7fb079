#!/usr/bin/env bash
# TLS costs beyond keep-alive, porteiro next to nginx in the same run (loopback only; stops by
# itself): a handshake per request, from wrk with Connection: close (wrk keeps its sessions,
# so these handshakes resume) and from a rustls client making full (`new`) or resumed
# (`resume`) handshakes (examples/tls_connections.rs); and HTTP/2 with h2load.
# Proxies run on CPU 0 with one worker; load and the nginx backend share CPU 1. The figure is
# the proxy's own CPU time per request (user+sys over the run / requests): lower is better.
#
#   [KEY=rsa] load-tests/tls-bench.sh [SECONDS]
#
# Needs: nginx (nginx-light), wrk, h2load (nghttp2-client), openssl, bc. Uses
# target/release/porteiro (PORTEIRO overrides).
set -euo pipefail
D=${1:-8}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/load-tests/lib.sh"
bin=${PORTEIRO:-$here/target/release/porteiro}
(cd "$here" && cargo build -q --release --example tls_connections)
conns_bin=$here/target/release/examples/tls_connections
W=$(mktemp -d /tmp/tls-bench.XXXX); chmod 755 "$W"
BACK=18580; NGX=18581; POR=18582
PIDS=()
cleanup() { kill -INT "${PIDS[@]}" 2>/dev/null || true; sleep 0.5; kill -KILL "${PIDS[@]}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

mkdir -p "$W/certs" "$W/p/tenants.d"
# KEY=rsa: an RSA 2048 certificate instead of ECDSA P-256 (full handshakes cost more).
case "${KEY:-ec}" in
  rsa) newkey=(-newkey rsa:2048) ;;
  *) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
esac
openssl req -x509 "${newkey[@]}" -nodes -days 2 \
  -subj "/CN=example.com" -addext "subjectAltName=DNS:example.com,DNS:*.example.com" \
  -keyout "$W/certs/key.pem" -out "$W/certs/cert.pem" 2>/dev/null
chmod 644 "$W"/certs/*
write_backend "$W" "$BACK"
write_nginx_proxy "$W" "$NGX" "$BACK" 1 "ssl http2 backlog=4096" \
  "ssl_certificate $W/certs/cert.pem; ssl_certificate_key $W/certs/key.pem;"
cat > "$W/p/porteiro.toml" <<TOML
[server]
listen = ["127.0.0.1:$((POR + 1000))"]
listen_tls = ["127.0.0.1:$POR"]
default_certificate = { cert = "$W/certs/cert.pem", key = "$W/certs/key.pem" }
admin = ""
threads = 1
TOML
cat > "$W/p/tenants.d/t0.toml" <<TOML
id = "t0"
hosts = ["t0.example.com"]
tls = { cert = "$W/certs/cert.pem", key = "$W/certs/key.pem" }
[pools.web]
backends = ["127.0.0.1:$BACK"]
TOML

taskset -c 1 nginx -c "$W/backend.conf" & PIDS+=($!)
taskset -c 0 nginx -c "$W/nginx.conf" & PIDS+=($!); NGXPID=$!
RUST_LOG=warn,rustls=error taskset -c 0 "$bin" run -c "$W/p/porteiro.toml" > "$W/porteiro.log" 2>&1 & PIDS+=($!); PORPID=$!
for _ in $(seq 1 100); do curl -sk -o /dev/null "https://127.0.0.1:$POR/" -H "Host: t0.example.com" && break; sleep 0.1; done
kill -0 "$PORPID" || { cat "$W/porteiro.log"; exit 1; }

HZ=$(getconf CLK_TCK)
ticks() { local t=0 p; for p in $1 $(pgrep -P "$1"); do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
us_per_req() { echo "scale=1; ($2 - $1) * 1000000 / $HZ / $3" | bc; }

printf "%-9s %-22s %10s %12s\n" proxy test req/s cpu_us/req
for name in nginx porteiro; do
  if [ $name = nginx ]; then port=$NGX; pid=$NGXPID; else port=$POR; pid=$PORPID; fi
  t0=$(ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c16 -d"${D}s" -H "Host: t0.example.com" -H "Connection: close" "https://127.0.0.1:$port/")
  t1=$(ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out"); rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  printf "%-9s %-22s %10.0f %12s\n" $name "wrk, resumed hs/req" "$rps" "$(us_per_req "$t0" "$t1" "$reqs")"
  awk '/Non-2xx|Socket errors/ {print "  warn: " $0}' <<<"$out"

  # Clients that keep their sessions (or not): what a returning client costs with
  # resumption, against a full handshake, same request.
  for mode in new resume; do
    t0=$(ticks "$pid")
    out=$(taskset -c 1 "$conns_bin" "127.0.0.1:$port" t0.example.com "$mode" 16 "$D")
    t1=$(ticks "$pid")
    read -r _ conns _ resumed _ ok <<<"$out"
    printf "%-9s %-22s %10.0f %12s\n" $name "$mode hs/req" "$(echo "$conns / $D" | bc)" "$(us_per_req "$t0" "$t1" "$conns")"
    [ "$ok" = "$conns" ] || echo "  warn: only $ok of $conns answers were 200"
    [ "$mode" = new ] || [ "$resumed" -ge $((conns - 16)) ] || echo "  warn: only $resumed of $conns resumed"
  done

  n=$((D * 20000))
  t0=$(ticks "$pid")
  out=$(taskset -c 1 h2load -n"$n" -c16 -m10 -H ":authority: t0.example.com" "https://127.0.0.1:$port/" 2>&1)
  t1=$(ticks "$pid")
  ok=$(awk '/^status codes:/ {print $3}' <<<"$out"); rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  proto=$(awk '/Application protocol:/ {print $3}' <<<"$out")
  printf "%-9s %-22s %10.0f %12s\n" $name "h2load ($proto, 16x10)" "$rps" "$(us_per_req "$t0" "$t1" "${ok:-1}")"
  [ "${ok:-0}" = "$n" ] || echo "  warn: only ${ok:-0} of $n requests got 2xx"
done
