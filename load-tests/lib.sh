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

# write_nginx_proxy DIR PORT BACKEND_PORT WORKERS "LISTEN OPTIONS" ["SERVER LINES"]: nginx as the
# reference proxy, in DIR/nginx.conf: WORKERS worker processes on 127.0.0.1:PORT, every request
# to the backend over kept-alive connections, no access log.
write_nginx_proxy() {
  local dir=$1 port=$2 back=$3 workers=$4 opts=$5 lines=${6:-}
  cat > "$dir/nginx.conf" <<NG
worker_processes $workers; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err; user root;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  upstream b { server 127.0.0.1:$back; keepalive 256; }
  server { listen 127.0.0.1:$port $opts; $lines
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
}
