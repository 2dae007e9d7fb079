#!/usr/bin/env bash
# Runs Pingap (a peer proxy on pingora) the way ../shared/bench/peers.sh expects a proxy: one
# server on PORT (first argument, default 18096) proxying every request to BACKEND, one worker
# thread, no access log, so it stands beside porteiro as an operator would run it.
#
#   cargo install pingap --version 0.13.1 --locked --root /opt/pingap   # needs protobuf-compiler, libssl-dev
#   peers.sh -p "pingap=$PWD/load-tests/peers-pingap.sh 18096@18096"
#
# PINGAP overrides the binary (default: pingap on PATH).
set -euo pipefail
port=${1:-18096}
bin=${PINGAP:-$(command -v pingap || true)}
[ -x "$bin" ] || { echo "error: pingap is not installed (set PINGAP)" >&2; exit 1; }
dir=$WORK/pingap-$port
mkdir -p "$dir"
cat > "$dir/pingap.toml" <<TOML
[basic]
name = "pingap"
log_level = "WARN"
pid_file = "$dir/pingap.pid"

[upstreams.backend]
addrs = ["$BACKEND"]

[locations.all]
path = "/"
upstream = "backend"

[servers.bench]
addr = "127.0.0.1:$port"
locations = ["all"]
threads = 1
TOML
exec "$bin" -c "$dir/pingap.toml" --threads 1
