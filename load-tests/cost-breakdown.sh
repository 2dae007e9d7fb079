#!/usr/bin/env bash
# Where the CPU of one proxied request goes: porteiro beside bare pingora (examples/bare_pingora.rs,
# pingora proxying to one peer and nothing else), both built from this tree with its release
# profile, each proxying HTTP/1.1 keep-alive requests to one nginx backend (1 KiB body).
#
# For each proxy it prints:
#   - instructions per request, counted by callgrind: exact and repeatable whatever else the
#     machine does, so a change of a few percent shows (instructions are not time: see PERF);
#   - heap allocations per request (calls into malloc/mimalloc from outside the allocator);
#   - system calls per request (strace -c on every thread);
#   - the functions with the most inclusive and exclusive instructions (TOP lines each);
#   - with PERF=1, the hottest symbols by time under full load (perf, cpu-clock samples).
# The raw callgrind files stay in the output directory for callgrind_annotate or kcachegrind.
#
# Usage: load-tests/cost-breakdown.sh [-n REQUESTS] [-c CONNS] [-o DIR]
#   OBSERVE=default|on|off is passed to porteiro (see peers-porteiro.sh); TOP=25 by default.
# Needs: valgrind, nginx (nginx-light), h2load (nghttp2-client), strace; perf (linux-perf) for PERF=1.
# Builds: cargo build --release --bin porteiro --example bare_pingora (done here if missing).
set -euo pipefail
N=5000; C=8; OUT=""
while getopts "n:c:o:" o; do case $o in
  n) N=$OPTARG;; c) C=$OPTARG;; o) OUT=$OPTARG;; *) exit 2;; esac; done
TOP=${TOP:-25}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
source "$here/lib.sh"
for tool in valgrind callgrind_control nginx h2load strace; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
[ -x "$root/target/release/porteiro" ] && [ -x "$root/target/release/examples/bare_pingora" ] ||
  (cd "$root" && cargo build --release --bin porteiro --example bare_pingora)

WORK=$(mktemp -d /tmp/cost.XXXX); chmod 755 "$WORK"
OUT=${OUT:-$WORK/out}; mkdir -p "$OUT"
BACK=18180; PIDS=()
cleanup() {
  # Under set -e a process already gone would end the cleanup early (and the script with 1).
  for p in "${PIDS[@]}"; do pkill -INT -P "$p" 2>/dev/null || true; kill -INT "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do pkill -KILL -P "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK/porteiro-"* "$WORK"/backend.*
}
trap cleanup EXIT
write_backend "$WORK" "$BACK"
taskset -c 1 nginx -c "$WORK/backend.conf" & PIDS+=($!)

load() { # load PORT COUNT: COUNT requests over C keep-alive connections; fails unless all are 2xx
  local out
  out=$(taskset -c 1 h2load --h1 -n "$2" -c "$C" -H ":authority: t0.example.com" "http://127.0.0.1:$1/")
  grep -q "$2 succeeded" <<<"$out" || { echo "error: not every request succeeded:" >&2; grep -E "requests:|status" <<<"$out" >&2; exit 1; }
}
wait_port() { # wait_port PORT: up to 60 s (valgrind starts slowly)
  for _ in $(seq 600); do curl -s -o /dev/null -H "Host: t0.example.com" "http://127.0.0.1:$1/" && return; sleep 0.1; done
  echo "error: nothing answers on port $1" >&2; exit 1
}
start() { # start NAME PORT [WRAP...]: runs the proxy on CPU 0; prints its pid
  local name=$1 port=$2; shift 2
  # A leftover proxy on the port would be measured instead.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "error: port $port is taken" >&2; exit 1; fi
  if [ "$name" = bare ]; then
    (exec taskset -c 0 "$@" "$root/target/release/examples/bare_pingora" "127.0.0.1:$port" "127.0.0.1:$BACK") >"$WORK/$name.log" 2>&1 &
  else
    (export WORK BACKEND=127.0.0.1:$BACK WRAP="$*"; exec taskset -c 0 "$here/peers-porteiro.sh" "$port") >"$WORK/$name.log" 2>&1 &
  fi
  echo $!
}
stop() { kill -INT "$1" 2>/dev/null; for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -KILL "$1" 2>/dev/null || true; }

# Allocator entry points called from outside the allocator, per request, from a callgrind file
# written with --compress-strings=no.
allocs() {
  awk -v n="$N" '
    /^fn=/ { caller = substr($0, 4) }
    /^cfn=/ { callee = substr($0, 5) }
    /^calls=/ {
      if (callee ~ /^(mi_malloc|mi_malloc_aligned|mi_zalloc|mi_zalloc_aligned|mi_realloc|mi_realloc_aligned|malloc|calloc|realloc)$/ &&
          caller !~ /^(_?mi_|malloc|calloc|realloc|_int_|__libc_)/) { split(substr($0, 7), a, " "); total += a[1] }
    }
    END { printf "%.1f", total / n }' "$1"
}

per_request() { # callgrind_annotate lines "1,234 (5.6%)  file:function" -> "count/N  file:function"
  sed -nE 's/^ *([0-9,]+) +\( *[0-9.]+%\) +/\1 /p' | awk -v n="$N" '{ v=$1; gsub(",", "", v); $1=""; printf "%9.0f %s\n", v/n, $0 }'
}

report() { # report NAME FILE
  local total
  set +o pipefail  # head closes its pipe early
  total=$(awk '/^summary:/ {print $2}' "$2")
  printf '%-9s instructions/request %8.0f   allocations/request %6s\n' "$1" "$(echo "$total / $N" | bc -l)" "$(allocs "$2")"
  {
    echo "== $1: top $TOP functions by inclusive instructions (per request)"
    callgrind_annotate --inclusive=yes --threshold=100 "$2" 2>/dev/null |
      per_request |
      sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/##; s# \[[^]]*\]$##' | grep -v -E 'PROGRAM TOTALS|clone.S|pthread_create|thread_start|call_once|__rust_begin_short_backtrace|blocking/pool.rs' | head -"$TOP"
    echo "== $1: top $TOP functions by exclusive instructions (per request)"
    callgrind_annotate --inclusive=no --threshold=100 "$2" 2>/dev/null |
      per_request |
      sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/##; s# \[[^]]*\]$##' | grep -v -E 'PROGRAM TOTALS|clone.S|pthread_create|thread_start|call_once|__rust_begin_short_backtrace|task/raw.rs|task/harness.rs|worker.rs' | head -"$TOP"
  } >> "$OUT/functions.txt"
  set -o pipefail
}

syscalls() { # syscalls NAME PORT PID
  local tids
  tids=$(ls "/proc/$3/task" | sed 's/^/-p /' | tr '\n' ' ')
  # shellcheck disable=SC2086
  strace -c -f $tids -o "$OUT/$1.strace" & local s=$!
  sleep 1
  load "$2" "$N"
  kill -INT $s; wait $s 2>/dev/null || true
  awk -v n="$N" -v name="$1" '$NF == "total" { printf "%-9s system calls/request %.2f\n", name, $(NF-2) / n }' "$OUT/$1.strace"
}

: > "$OUT/functions.txt"
port=18190
for name in bare porteiro; do
  port=$((port + 1))
  pid=$(start "$name" "$port" valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$OUT/$name.%p.callgrind")
  PIDS+=("$pid"); wait_port "$port"
  load "$port" 1000  # warm: connections, pools, lazy statics
  # The subshell execs down to the proxy (or valgrind): $pid is the process itself. Each dump
  # holds what ran since the one before: the second is exactly the N requests.
  callgrind_control -d "$pid" >/dev/null
  load "$port" "$N"
  callgrind_control -d "$pid" >/dev/null
  report "$name" "$OUT/$name.$pid.callgrind.2"
  stop "$pid"
done
for name in bare porteiro; do
  port=$((port + 1))
  pid=$(start "$name" "$port"); PIDS+=("$pid"); wait_port "$port"; load "$port" 1000
  proc=$pid
  syscalls "$name" "$port" "$proc"
  if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
    perf record -q -F 4000 -o "$OUT/$name.perf" -p "$proc" -- sleep 8 >/dev/null 2>&1 & perf=$!
    taskset -c 1 h2load --h1 -D 8 -c 64 -H ":authority: t0.example.com" "http://127.0.0.1:$port/" >/dev/null
    wait "$perf" || true
    { echo "== $name: hottest symbols by time (perf, full load)"
      perf report -q -i "$OUT/$name.perf" --no-children --sort symbol 2>/dev/null | head -"$TOP" || true; } >> "$OUT/functions.txt"
  fi
  stop "$pid"
done
echo "function tables: $OUT/functions.txt"
