#!/usr/bin/env bash
# Two worker threads: nginx with two workers beside porteiro with `threads = 2` (and with one,
# for reference), HTTP/1.1 keep-alive through each to one nginx backend, 1 KiB answers.
# Loopback only; stops by itself.
#
# On a 2-core machine the proxy, the backend and the load generator share both cores, so
# nothing is pinned and each proxy is treated alike: the same wrk (2 threads, CONNS
# connections, SECONDS per round) against the same backend, the proxies taking turns round by
# round, medians over ROUNDS. Two figures per proxy: req/s, which is what the shared machine
# allowed, and the proxy's own CPU per request (user+sys of its processes / requests served),
# which is its cost whoever else ran. Worker threads (or processes) scale when CPU per request
# stays flat from one to two.
#
#   load-tests/scaling.sh [-d SECONDS] [-c CONNS] [-r ROUNDS] [-p "NAME=CMD@PORT"]...
#
# -p adds a proxy, as for peers.sh: CMD runs under bash with BACKEND and WORK in its environment
# and must proxy every Host to BACKEND on PORT, for example another porteiro build:
#   -p "other=PORTEIRO=/path/to/porteiro THREADS=2 $PWD/load-tests/peers-porteiro.sh 18690@18690"
#
# Needs: nginx (nginx-light), wrk, bc. Uses target/release/porteiro (PORTEIRO overrides).
set -euo pipefail
D=8; C=128; R=3; EXTRA=()
while getopts "d:c:r:p:" o; do case $o in
  d) D=$OPTARG;; c) C=$OPTARG;; r) R=$OPTARG;; p) EXTRA+=("$OPTARG");; *) exit 2;; esac; done
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
for tool in nginx wrk bc; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
W=$(mktemp -d /tmp/scaling.XXXX); chmod 755 "$W"
BACK=18680; NGX=18681; P2=18682; P1=18683
PIDS=()
tree() { local p=$1; echo "$p"; for c in $(pgrep -P "$p"); do tree "$c"; done; }
cleanup() {
  local all="" p
  for p in "${PIDS[@]}"; do all+=" $(tree "$p")"; done
  kill -INT $all 2>/dev/null || true; sleep 1; kill -KILL $all 2>/dev/null || true; rm -rf "$W"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n 20000
write_backend "$W" "$BACK"
write_nginx_proxy "$W" "$NGX" "$BACK" 2 "backlog=4096 reuseport"
nginx -c "$W/backend.conf" & PIDS+=($!)
nginx -c "$W/nginx.conf" & PIDS+=($!); NGXPID=$!
(export BACKEND=127.0.0.1:$BACK WORK=$W THREADS=2; exec "$here/peers-porteiro.sh" "$P2") >"$W/p2.log" 2>&1 &
PIDS+=($!); P2PID=$!
(export BACKEND=127.0.0.1:$BACK WORK=$W THREADS=1; exec "$here/peers-porteiro.sh" "$P1") >"$W/p1.log" 2>&1 &
PIDS+=($!); P1PID=$!
NAMES=("nginx, 2 workers" "porteiro, threads = 2" "porteiro, threads = 1")
PORTS=($NGX $P2 $P1); PPIDS=($NGXPID $P2PID $P1PID)
for e in "${EXTRA[@]}"; do
  name=${e%%=*}; rest=${e#*=}; cmd=${rest%@*}; port=${rest##*@}
  (export BACKEND=127.0.0.1:$BACK WORK=$W; exec bash -c "$cmd") >"$W/extra-$port.log" 2>&1 &
  PIDS+=($!); NAMES+=("$name"); PORTS+=("$port"); PPIDS+=($!)
done
for port in "${PORTS[@]}"; do
  for _ in $(seq 100); do curl -s -o /dev/null -H "Host: t0.example.com" "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

cputicks() { local t=0 p; for p in $(tree "$1"); do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
HZ=$(getconf CLK_TCK)
declare -A RPS CPU
for ((r = 1; r <= R; r++)); do
  for i in "${!NAMES[@]}"; do
    n=${NAMES[$i]}; pid=${PPIDS[$i]}
    kill -0 "$pid" 2>/dev/null || { echo "error: $n is not running" >&2; exit 1; }
    t0=$(cputicks "$pid")
    out=$(wrk -t2 -c"$C" -d"${D}s" -H "Host: t0.example.com" "http://127.0.0.1:${PORTS[$i]}/" 2>&1)
    t1=$(cputicks "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    bad=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    [ -n "$bad" ] && echo "warn: $n round $r: $bad" >&2
    RPS[$n]+="${rps:-0} "; CPU[$n]+="$(echo "($t1 - $t0) / $HZ / ${reqs:-1} * 1000000" | bc -l) "
  done
done
med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
nrps=$(echo "${RPS[${NAMES[0]}]}" | med); ncpu=$(echo "${CPU[${NAMES[0]}]}" | med)
printf "%-24s %10s %11s %10s %10s   (conns=%s %ss x%s, nothing pinned)\n" proxy req/s cpu_us/req rps/nginx cpu/nginx "$C" "$D" "$R"
for n in "${NAMES[@]}"; do
  m=$(echo "${RPS[$n]}" | med); c=$(echo "${CPU[$n]}" | med)
  printf "%-24s %10.0f %11.1f %10.2f %10.2f\n" "$n" "$m" "$c" "$(echo "$m / $nrps" | bc -l)" "$(echo "$c / $ncpu" | bc -l)"
done
