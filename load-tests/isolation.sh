#!/usr/bin/env bash
# Tenant isolation, measured: tenant A (limit 100 requests/s) flooded at 10x its rate while
# tenant B sends a steady 80 requests/s; B's p99 and refusals, with A idle and with A flooded.
# Loopback only; stops by itself.
#
#   load-tests/isolation.sh [SECONDS]
#
# Needs: nginx (backend), curl. Uses target/release/porteiro and the load generator
# target/release/examples/isolation_load (cargo build --release --example isolation_load), light
# enough to share a core with the backend.
set -euo pipefail
D=${1:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/load-tests/lib.sh"
bin=${PORTEIRO:-$here/target/release/porteiro}
load=$here/target/release/examples/isolation_load
W=$(mktemp -d /tmp/isolation.XXXX)
PORT=18690; ADMIN=18691; BACK=18692
PIDS=()
cleanup() { kill -INT "${PIDS[@]}" 2>/dev/null || true; sleep 0.5; kill -KILL "${PIDS[@]}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

write_backend "$W" "$BACK"
mkdir -p "$W/tenants.d"
cat > "$W/porteiro.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
admin = "127.0.0.1:$ADMIN"
threads = 1
TOML
for t in a b; do
  cat > "$W/tenants.d/$t.toml" <<TOML
id = "$t"
hosts = ["$t.example.com"]
[limits]
rate = { requests = 100, per = "1s", burst = 100 }
[pools.web]
backends = ["127.0.0.1:$BACK"]
TOML
done

taskset -c 1 nginx -c "$W/backend.conf" & PIDS+=($!)
RUST_LOG=warn taskset -c 0 "$bin" run -c "$W/porteiro.toml" > "$W/porteiro.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ADMIN/-/ready" >/dev/null && break; sleep 0.1; done

# B's p99 as porteiro measured it (its duration histogram, this phase only): the client's
# figure also carries the load generator's own scheduling on the shared CPU.
buckets() { curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E '^porteiro_(request|upstream)_duration_seconds_bucket\{tenant="b"' || true; }
server_p99() {
  python3 - "$1" "$2" <<'PY'
import re, sys
def parse(text, name):
    return {float(m.group(1)) if m.group(1) != "+Inf" else float("inf"): float(m.group(2))
            for m in re.finditer(name + r'_bucket\{tenant="b",le="([^"]+)"\} (\S+)', text)}
for name, what in [("porteiro_request_duration_seconds", "whole request"),
                   ("porteiro_upstream_duration_seconds", "backend part")]:
    before, after = parse(sys.argv[1], name), parse(sys.argv[2], name)
    delta = {le: after[le] - before.get(le, 0) for le in after}
    total = delta.get(float("inf"), 0)
    p99 = next((le for le in sorted(delta) if total and delta[le] >= 0.99 * total), float("nan"))
    print(f"  B as porteiro saw it, {what}: {int(total)} requests, p99 <= {p99 * 1000:g} ms (bucket)")
PY
}
run() {
  local before; before=$(buckets)
  taskset -c 1 "$load" "127.0.0.1:$PORT" b.example.com 80 a.example.com "$1" "$D"
  server_p99 "$before" "$(buckets)"
}
echo "--- A idle (B: 80 requests/s, limit 100/s)"
run 0
echo "--- A flooded at 1000 requests/s (10x its 100/s limit)"
run 1000
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E '^porteiro_limited_requests_total|^porteiro_requests_total\{.*tenant="b"'
