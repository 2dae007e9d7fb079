#!/usr/bin/env bash
# Memory held per idle client connection: porteiro's RSS with N idle connections open, minus
# its RSS before. Two kinds: connections that sent nothing yet, and keep-alive connections
# idle after one request. Answers come from a `respond` route, so no backend is involved.
# Loopback only; stops by itself.
#
#   load-tests/idle-memory.sh [CONNECTIONS]
#
# Uses target/release/porteiro (cargo build --release) and python3.
set -euo pipefail
N=${1:-5000}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PORTEIRO:-$here/target/release/porteiro}
W=$(mktemp -d /tmp/idle-memory.XXXX)
PORT=18790; ADMIN=18791
ulimit -n $((N * 2 + 1024))
PID=
cleanup() { [ -n "$PID" ] && kill -INT "$PID" 2>/dev/null; sleep 0.3; [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

mkdir -p "$W/tenants.d"
cat > "$W/porteiro.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
admin = "127.0.0.1:$ADMIN"
threads = 1
header_timeout = "5m"
keepalive_timeout = "5m"
max_connections = $((N * 2))
max_connections_per_ip = $((N * 2))
[metrics]
enabled = false
TOML
cat > "$W/tenants.d/site.toml" <<TOML
id = "site"
hosts = ["site.test"]
[[routes]]
path_prefix = "/"
respond = { status = 200, body = "ok\n" }
TOML
# One porteiro per kind: freed memory is not always returned to the system, so a second
# measurement in the same process would start from the first one's peak.
for kind in nothing one_request; do
"$bin" run -c "$W/porteiro.toml" > "$W/log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$ADMIN/-/healthy" >/dev/null && break; sleep 0.05; done

python3 - "$PID" "$PORT" "$N" "$kind" <<'PY'
import socket, sys, time
pid, port, n, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def nothing(s):
    pass

def one_request(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
    got = b""
    while b"ok\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("connection closed early")
        got += chunk

prepare = {"nothing": nothing, "one_request": one_request}[kind]
label = {"nothing": "sent nothing yet", "one_request": "idle after one request"}[kind]
# Warm up: the first connections allocate the runtime's own structures.
warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
for s in warm:
    prepare(s)
time.sleep(1.0)
base = rss_kib()
conns = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    prepare(s)
    conns.append(s)
time.sleep(1.0)
held = rss_kib()
print(f"{label:<24} {n} connections: RSS {base} -> {held} KiB, {(held - base) * 1024 / n:,.0f} bytes each")
PY
kill -INT "$PID"; wait "$PID" 2>/dev/null || true; PID=
done
