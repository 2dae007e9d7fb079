# porteiro: `make run` starts the proxy on conf/porteiro.toml, `make test` runs every test.
# Both install what a fresh Debian machine with only a Rust toolchain lacks (cmake, for pingora).

CONFIG ?= conf/porteiro.toml

.PHONY: run test check deps lint bench promcheck

deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake (needed to build pingora)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake; }

run: deps
	cargo run --release -- run -c $(CONFIG)

check: deps
	cargo run --release -- check -c $(CONFIG)

test: deps
	cargo test --all-targets
	@$(MAKE) --no-print-directory promcheck

# The shipped alert rules, their unit tests, and a /metrics scrape taken by tests/metrics.rs.
# Needs promtool (Debian package `prometheus`; CI installs it).
promcheck:
	@if command -v promtool >/dev/null 2>&1; then \
	  promtool check rules conf/prometheus/alerts.yml && \
	  promtool test rules conf/prometheus/alerts_test.yml && \
	  promtool check metrics < target/tmp/metrics.prom; \
	else echo "promtool not installed (apt-get install prometheus): alert rule and metrics format checks skipped"; fi

lint: deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

bench: deps
	cargo bench --bench host_lookup
