# porteiro: `make run` starts the proxy on conf/porteiro.toml, `make test` runs every test.
# Both install what a fresh Debian machine with only a Rust toolchain lacks: cmake (for pingora)
# and redis-server (the fleet-mode tests run their own, on a free loopback port).

CONFIG ?= conf/porteiro.toml

.PHONY: run test check deps test-deps lint bench promcheck

# Installs the Debian packages named in PKGS that are missing (as root, or with sudo).
define install_missing
	@missing=""; for p in $(1); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	    || echo "could not install$$missing"; \
	fi
endef

# cmake builds pingora.
deps:
	$(call install_missing,cmake)

# The fleet-mode tests start redis-server processes of their own on free loopback ports (and
# are skipped, saying so, when it cannot be installed).
test-deps: deps
	$(call install_missing,redis-server)

run: deps
	cargo run --release -- run -c $(CONFIG)

check: deps
	cargo run --release -- check -c $(CONFIG)

test: test-deps
	cargo test --all-targets
	cargo test --manifest-path vendor/pingora-http/Cargo.toml --target-dir target/vendor
	@$(MAKE) --no-print-directory promcheck

# The shipped alert rules, their unit tests, and /metrics scrapes taken by tests/metrics.rs and
# (fleet mode; absent when the fleet tests were skipped) tests/cluster.rs.
# Needs promtool (Debian package `prometheus`; CI installs it).
promcheck:
	@if command -v promtool >/dev/null 2>&1; then \
	  promtool check rules conf/prometheus/alerts.yml && \
	  promtool test rules conf/prometheus/alerts_test.yml && \
	  promtool check metrics < target/tmp/metrics.prom && \
	  { [ ! -f target/tmp/metrics-cluster.prom ] || promtool check metrics < target/tmp/metrics-cluster.prom; }; \
	else echo "promtool not installed (apt-get install prometheus): alert rule and metrics format checks skipped"; fi

lint: deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

bench: deps
	cargo bench --bench host_lookup
