#!/usr/bin/env bash
# Request latency with N tenants configured (default 100,000), steady and while the
# configuration is reloaded every 2 seconds. Loopback only; stops by itself.
#
#   load-tests/reload-p99.sh [TENANTS] [SECONDS] [REQUESTS_PER_SECOND]
#
# Needs: nginx (backend), curl, python3, and cargo build --release --example isolation_load. Uses target/release/porteiro (make it first).
set -euo pipefail
N=${1:-100000}; D=${2:-20}; RATE=${3:-4000}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/load-tests/lib.sh"
bin=${PORTEIRO:-$here/target/release/porteiro}
# In memory (tmpfs) when there is one: the disk's writeback of 100,000 new (and, at cleanup,
# deleted) files otherwise lands in the measurement as kernel threads taking CPU 0.
W=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp )/reload-p99.XXXX")
PORT=18490; ADMIN=18491; BACK=18492
cleanup() { kill -INT "${PIDS[@]}" 2>/dev/null || true; sleep 0.5; [ -n "${KEEP:-}" ] || rm -rf "$W"; }
PIDS=(); trap cleanup EXIT

write_backend "$W" "$BACK"
taskset -c 1 nginx -c "$W/backend.conf" & PIDS+=($!)

python3 - "$W" "$N" "$PORT" "$ADMIN" "$BACK" <<'PY'
import os, sys
w, n, port, admin, back = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
os.makedirs(f"{w}/tenants.d")
open(f"{w}/porteiro.toml", "w").write(
    f'[server]\nlisten = ["127.0.0.1:{port}"]\nadmin = "127.0.0.1:{admin}"\nthreads = 1\nwatch = false\n')
for i in range(n):
    b = f"127.0.0.1:{back}" if i == 0 else f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080"
    open(f"{w}/tenants.d/t{i:06}.toml", "w").write(
        f'id = "t{i}"\nhosts = ["t{i}.example.com", "*.t{i}.example.net"]\n[pools.web]\nbackends = ["{b}"]\n')
PY
sync  # and nothing else left for the kernel to write back during the run

RUST_LOG=warn taskset -c 0 "$bin" run -c "$W/porteiro.toml" > "$W/porteiro.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$ADMIN/-/ready" >/dev/null && break; sleep 0.1; done
kill -0 "${PIDS[1]}" 2>/dev/null || { echo "porteiro did not start:"; cat "$W/porteiro.log"; exit 1; }
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/"${PIDS[1]}"/status; }
echo "porteiro with $N tenants is ready; RSS $(rss) MiB"

# A fixed rate (not a closed loop that saturates the core): latency then shows what a reload
# costs a request, not how a saturated CPU queues work. The generator is light enough to share
# CPU 1 with the backend.
run_load() {
  taskset -c 1 "$here/target/release/examples/isolation_load" "127.0.0.1:$PORT" t0.example.com "$RATE" "" 0 "$D"
}

echo "--- steady"
run_load

echo "--- reloading every 2s (then the admin listener's /-/healthy, probed 20 times a second meanwhile)"
# A liveness probe must never wait for a reload.
taskset -c 1 "$here/target/release/examples/isolation_load" "127.0.0.1:$ADMIN" healthy 20 "" 0 "$D" /-/healthy > "$W/healthy.log" &
probe=$!
(
  # The trigger loop (curl, printf) stays on CPU 1 with the load: on CPU 0 it would delay
  # requests itself.
  taskset -p -c 1 $BASHPID >/dev/null
  end=$((SECONDS + D))
  i=0
  while [ $SECONDS -lt $end ]; do
    i=$((i + 1))
    printf 'id = "t1"\nhosts = ["t1.example.com"]\n[pools.web]\nbackends = ["10.255.0.%d:8080"]\n' $((i % 250)) > "$W/tenants.d/t000001.toml"
    curl -s -X POST "http://127.0.0.1:$ADMIN/-/reload" | tr -d '\n ' ; echo
    sleep 2
  done
) > "$W/reloads.log" &
reloads=$!
run_load
wait "$reloads"
wait "$probe"
cat "$W/healthy.log"
echo "reloads: $(grep -c applied "$W/reloads.log") applied, $(grep -vc applied "$W/reloads.log") not applied"
curl -s "http://127.0.0.1:$ADMIN/-/config" | grep -E '"generation"|last_reload_ms'
echo "RSS after reloads $(rss) MiB"
