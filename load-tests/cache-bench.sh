#!/usr/bin/env bash
# CPU per request of a cache hit and of a cache miss, porteiro next to nginx proxy_cache, in
# one run. Each proxy runs one worker pinned to CPU 0; wrk and the nginx backend (1 KiB body,
# Cache-Control: max-age=3600) share CPU 1. The figure is the proxy's own CPU (user+sys) over
# the run divided by the requests served, as in ../shared/bench/peers.sh.
#   hit:  every request asks for one URL, stored after the first;
#   miss: every request asks for a new URL (fetched, stored, evicted in time).
# Loopback only; stops by itself.
#
#   load-tests/cache-bench.sh [SECONDS] [ROUNDS]
#
# Needs: nginx (nginx-light), wrk, curl. Uses target/release/porteiro.
set -euo pipefail
D=${1:-8}
R=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PORTEIRO:-$here/target/release/porteiro}
W=$(mktemp -d /tmp/cache-bench.XXXX); chmod 755 "$W"
C=$(mktemp -d /dev/shm/cache-bench.XXXX)
BACK=18180; NGX=18181; PORT=18182; ADMIN=18183
PIDS=()
cleanup() { kill -INT "${PIDS[@]}" 2>/dev/null || true; sleep 0.5; kill -KILL "${PIDS[@]}" 2>/dev/null || true; rm -rf "$W" "$C"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

head -c 1024 /dev/zero | tr '\0' x > "$W/body"; chmod 644 "$W/body"
cat > "$W/backend.conf" <<NG
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err; user root;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$BACK backlog=4096;
    location / { root $W; try_files /body =404; default_type text/plain; expires 1h; } } }
NG
# nginx's cache in memory (/dev/shm), its lock and revalidation on: its best configuration.
cat > "$W/nginx.conf" <<NG
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err; user root;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  proxy_cache_path $C levels=1:2 keys_zone=c:64m max_size=256m inactive=1h use_temp_path=off;
  upstream b { server 127.0.0.1:$BACK; keepalive 256; }
  server { listen 127.0.0.1:$NGX backlog=4096;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache c; proxy_cache_key \$host\$request_uri; proxy_cache_lock on;
      proxy_cache_revalidate on; add_header X-Cache \$upstream_cache_status; } } }
NG
mkdir -p "$W/p/tenants.d"
cat > "$W/p/porteiro.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
admin = "127.0.0.1:$ADMIN"
threads = 1
[metrics]
enabled = false
[cache]
max_memory = "256MiB"
TOML
cat > "$W/p/tenants.d/t0.toml" <<TOML
id = "t0"
hosts = ["t0.example.com"]
[pools.web]
backends = ["127.0.0.1:$BACK"]
[cache]
max_size = "256MiB"
TOML
cat > "$W/miss.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/miss/" .. math.random(1, 1e9) .. "/" .. n, { Host = "t0.example.com" })
end
LUA

taskset -c 1 nginx -c "$W/backend.conf" & PIDS+=($!)
taskset -c 0 nginx -c "$W/nginx.conf" & PIDS+=($!); NGXPID=$!
RUST_LOG=warn taskset -c 0 "$bin" run -c "$W/p/porteiro.toml" > "$W/porteiro.log" 2>&1 & PIDS+=($!); POPID=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$ADMIN/-/healthy" >/dev/null && break; sleep 0.05; done

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
tree_ticks() { local t; t=$(ticks "$1"); for c in $(pgrep -P "$1"); do t=$((t + $(ticks "$c"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
names=(nginx porteiro); ports=($NGX $PORT); pids=($NGXPID $POPID)
for i in 0 1; do
  curl -s -o /dev/null -H "Host: t0.example.com" "127.0.0.1:${ports[$i]}/hit"
  h=$(curl -s -D - -o /dev/null -H "Host: t0.example.com" "127.0.0.1:${ports[$i]}/hit" | tr -d '\r' | grep -i -E '^(x-cache|cache-status):')
  echo "${names[$i]} second request: $h"
done
declare -A US
for scenario in hit miss; do
  for ((r = 1; r <= R; r++)); do
    for i in 0 1; do
      t0=$(tree_ticks "${pids[$i]}")
      if [ "$scenario" = hit ]; then
        out=$(taskset -c 1 wrk -t1 -c64 -d"${D}s" -H "Host: t0.example.com" "http://127.0.0.1:${ports[$i]}/hit")
      else
        out=$(taskset -c 1 wrk -t1 -c64 -d"${D}s" -s "$W/miss.lua" "http://127.0.0.1:${ports[$i]}/")
      fi
      t1=$(tree_ticks "${pids[$i]}")
      n=$(echo "$out" | awk '/requests in/ {print $1}')
      us=$(echo "scale=2; ($t1 - $t0) * 1000000 / $HZ / $n" | bc)
      US[$scenario,${names[$i]}]+="$us "
    done
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-6s %-10s %-18s %s\n' scenario proxy "CPU us/req (median)" "vs nginx"
for scenario in hit miss; do
  base=$(echo "${US[$scenario,nginx]}" | median)
  for n in nginx porteiro; do
    m=$(echo "${US[$scenario,$n]}" | median)
    printf '%-8s %-10s %-18s %s   (rounds: %s)\n' "$scenario" "$n" "$m" "$(echo "scale=2; $m / $base" | bc)" "${US[$scenario,$n]}"
  done
done
