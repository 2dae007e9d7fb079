#!/usr/bin/env bash
# Runs porteiro the way ../shared/bench/peers.sh expects a proxy: it reads BACKEND (ip:port),
# CERT, KEY and WORK from the environment, writes a one-tenant config for Host t0.example.com
# into $WORK and execs porteiro on PORT (first argument, default 18090) with one worker thread.
#
#   peers.sh -p "porteiro=$PWD/load-tests/peers-porteiro.sh 18090@18090"
#
# PORTEIRO overrides the binary (default: target/release/porteiro next to this script).
set -euo pipefail
port=${1:-18090}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PORTEIRO:-$here/target/release/porteiro}
dir=$WORK/porteiro
mkdir -p "$dir/tenants.d"
cat > "$dir/porteiro.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
threads = 1
TOML
cat > "$dir/tenants.d/t0.toml" <<TOML
id = "t0"
hosts = ["t0.example.com"]
[pools.web]
backends = ["$BACKEND"]
TOML
RUST_LOG=${RUST_LOG:-warn} exec "$bin" run -c "$dir/porteiro.toml"
