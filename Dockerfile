# Build: docker build -t porteiro .
# Run:   docker run -p 8080:8080 -v $PWD/conf:/etc/porteiro porteiro
#        (conf/docker/ has a compose file: porteiro, two backends and Prometheus)
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin porteiro

FROM debian:bookworm-slim
# curl for the health check only.
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home porteiro \
    && mkdir -p /run/porteiro /var/lib/porteiro && chown porteiro /run/porteiro /var/lib/porteiro
COPY --from=build /src/target/release/porteiro /usr/local/bin/porteiro
COPY conf /etc/porteiro
USER porteiro
EXPOSE 8080 9900
# Ready once every actively checked backend has answered its first probe. The admin listener
# must be reachable inside the container (127.0.0.1 is); with admin_token set, pass the same
# token as PORTEIRO_ADMIN_TOKEN.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null -H "Authorization: Bearer ${PORTEIRO_ADMIN_TOKEN:-}" http://127.0.0.1:9900/-/ready || exit 1
# SIGTERM: stop accepting, finish open requests for grace_period (30 s), then stop within
# graceful_shutdown_timeout (10 s): give `docker stop` at least that (docker stop -t 45).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/porteiro"]
CMD ["run", "-c", "/etc/porteiro/porteiro.toml"]
