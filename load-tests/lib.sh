# Shared by the load scripts (source it). Loopback only.

# write_backend DIR PORT: an nginx config in DIR serving a 1 KiB body on 127.0.0.1:PORT,
# keep-alive without limit and no access log, so the backend is never the bottleneck.
write_backend() {
  local dir=$1 port=$2
  head -c 1024 /dev/zero | tr '\0' x > "$dir/body"
  chmod 644 "$dir/body"
  cat > "$dir/backend.conf" <<NG
worker_processes 1; daemon off; pid $dir/backend.pid; error_log $dir/backend.err; user root;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$port backlog=4096; location / { root $dir; try_files /body =404; } } }
NG
}
