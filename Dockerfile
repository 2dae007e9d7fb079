# Build: docker build -t porteiro .
# Run:   docker run -p 8080:8080 -v $PWD/conf:/etc/porteiro porteiro
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin porteiro

FROM debian:bookworm-slim
RUN useradd --system --no-create-home porteiro
COPY --from=build /src/target/release/porteiro /usr/local/bin/porteiro
COPY conf /etc/porteiro
USER porteiro
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/porteiro"]
CMD ["run", "-c", "/etc/porteiro/porteiro.toml"]
