#!/usr/bin/env bash
# Fleet mode, measured: three porteiro instances and one Redis. Each tenant is flooded through
# all three at once, first with the instances sharing limits through Redis ([cluster]), then
# counting alone; prints what the fleet admitted per second per tenant and the latency
# percentiles of each mode, so the difference is what sharing adds.
# Loopback only; stops by itself.
#
#   load-tests/fleet.sh [SECONDS]
#
# Needs: redis-server, nginx (backend), curl. Uses target/release/porteiro and
# target/release/examples/fleet_load (cargo build --release --example fleet_load).
#
# Tenants: "capped" (rate 300/s, burst 30, offered 3 x 400/s) and "open" (rate 20,000/s,
# offered 3 x 300/s: never refused, so its latency is the cost of leasing alone).
set -euo pipefail
D=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/load-tests/lib.sh"
bin=${PORTEIRO:-$here/target/release/porteiro}
load=$here/target/release/examples/fleet_load
W=$(mktemp -d /tmp/fleet.XXXX)
REDIS=18790; BACK=18791
PIDS=()
cleanup() { kill -INT "${PIDS[@]}" 2>/dev/null || true; sleep 0.5; kill -KILL "${PIDS[@]}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
for p in $REDIS $BACK 18700 18701 18702 18710 18711 18712; do
  if (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "port $p is in use" >&2; exit 1; fi
done

write_backend "$W" "$BACK"
nginx -c "$W/backend.conf" & PIDS+=($!)
redis-server --bind 127.0.0.1 --port $REDIS --save "" --appendonly no --dir "$W" > "$W/redis.log" 2>&1 & PIDS+=($!)

# instance MODE N: a config directory for instance N (proxy port 187N0+N... see below).
instance() {
  local mode=$1 n=$2 dir="$W/$1-$2"
  mkdir -p "$dir/tenants.d"
  cat > "$dir/porteiro.toml" <<TOML
[server]
listen = ["127.0.0.1:$((18700 + n))"]
admin = "127.0.0.1:$((18710 + n))"
threads = 1
watch = false
TOML
  if [ "$mode" = cluster ]; then
    printf '[cluster]\nredis = "redis://127.0.0.1:%s/0"\nnode_id = "edge-%s"\nexpected_nodes = 3\n' "$REDIS" "$n" >> "$dir/porteiro.toml"
  fi
  for t in capped:300 open:20000; do
    cat > "$dir/tenants.d/${t%%:*}.toml" <<TOML
id = "${t%%:*}"
hosts = ["${t%%:*}.example.com"]
[limits]
rate = { requests = ${t##*:}, per = "1s", burst = $(( ${t##*:} / 10 )) }
[pools.web]
backends = ["127.0.0.1:$BACK"]
TOML
  done
  RUST_LOG=warn "$bin" run -c "$dir/porteiro.toml" > "$dir/porteiro.log" 2>&1 &
  echo $!
}

run_mode() {
  local mode=$1 pids=()
  for n in 0 1 2; do pids+=("$(instance "$mode" $n)"); done
  PIDS+=("${pids[@]}")
  for n in 0 1 2; do
    for _ in $(seq 1 100); do
      if curl -sf "http://127.0.0.1:$((18710 + n))/-/ready" >/dev/null; then
        if [ "$mode" = local ] || curl -s "http://127.0.0.1:$((18710 + n))/metrics" | grep -qx 'porteiro_cluster_up 1'; then break; fi
      fi
      sleep 0.1
    done
  done
  echo "--- $mode: $([ "$mode" = cluster ] && echo 'limits shared through Redis' || echo 'each instance counts alone')"
  "$load" "$D" 127.0.0.1:18700,127.0.0.1:18701,127.0.0.1:18702 capped.example.com=400 open.example.com=300
  if [ "$mode" = cluster ]; then
    for n in 0 1 2; do
      curl -s "http://127.0.0.1:$((18710 + n))/metrics" | grep -E '^porteiro_cluster_(fallback_total|errors_total|members)' | sed "s/^/  edge-$n: /"
    done
  fi
  kill -INT "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}

run_mode cluster
run_mode local
