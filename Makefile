# Two commands matter on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OTEL_VERSION := 1.45.2

.PHONY: install system-deps run test lint bench bench-suite bench-pickcost bench-tracecost bench-overhead bench-nginx bench-reliability bench-flowcontrol bench-kvcache clean

install: $(STAMP) system-deps

# Debian packages the tests and benchmarks drive for real: nginx + njs (NGINX gateway), wrk (load),
# h2load from nghttp2-client (ext_proc load straight to the EPP, `epp-bench overhead --part capacity`),
# prometheus + promtool (the dashboard and rules in deploy/observability/ tested against a real one).
# "ok installed" only: a removed package keeps a dpkg record (config-files) that dpkg -s accepts.
SYSTEM_PACKAGES := nginx libnginx-mod-http-js wrk nghttp2-client prometheus
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# xds-protos ships its own, older copy of opentelemetry/proto/*_pb2.py and overwrites
	# opentelemetry-proto's files when pip happens to install it later; --tracing needs the latter.
	$(BIN)/pip install --quiet --force-reinstall --no-deps opentelemetry-proto==$(OTEL_VERSION)
	touch $(STAMP)

# Local stack: an epp-sim fleet, the EPP and real Envoy on 127.0.0.1:8081 (Ctrl-C stops all).
run: install
	$(BIN)/epp-stack $(if $(GATEWAY),--gateway $(GATEWAY),)

test: install lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff (lint + format) and mypy over epp/ (config in pyproject.toml); part of `make test`, so CI fails on them.
lint: install
	$(BIN)/ruff check epp tests
	$(BIN)/ruff format --check epp tests
	$(BIN)/mypy

# The canonical warm ladder (~25 min): epp vs round-robin and the cache-aware peers, 2 shapes x 2 seeds
# -> bench/results/ladder.{json,md} + plots. LADDER_ARGS="--full" runs every shape and router (~2.5 h).
bench: install
	$(BIN)/epp-bench ladder $(LADDER_ARGS)

# The round-1 suite (live + virtual time, cold 120-request points) -> bench/results/report.md
bench-suite: install
	$(BIN)/epp-bench report --repeat

# Per-pick cost at 10/100/1,000 endpoints and scrape cost (~3 min) -> bench/results/pickcost.md
bench-pickcost: install
	$(BIN)/epp-bench pickcost

# Per-request cost of tracing off / unsampled / on beside the code before it (~3 min) -> bench/results/tracecost.md
bench-tracecost: install
	$(BIN)/epp-bench tracecost

# What the EPP adds to a request (Envoy alone vs Envoy + EPP), written to bench/results/overhead.*
bench-overhead: install
	$(BIN)/epp-bench overhead --out bench/results

# NGINX alone vs NGINX + bridge + EPP (docs/nginx.md)
bench-nginx: install
	$(BIN)/python -m epp.bridge.bench

# Issue 13's long reliability suite (~25 min): 20,000 fuzzed streams, faults under load, a 10-minute
# soak, 1,000 endpoints -> bench/results/reliability.md. RELIABILITY_ARGS="--quick" or "--only soak".
bench-reliability: install
	$(BIN)/python -m epp.bench.reliability $(RELIABILITY_ARGS)

# Flow control live (~19 min): priority, fairness and the two queueing scenarios through Envoy + EPP on epp-sim
# -> bench/results/flowcontrol.{json,md} + flowcontrol-<scenario>.png (docs/bench.md).
# FLOWCONTROL_ARGS="--quick" (~3 min, writes flowcontrol-quick.*), "--scenario priority", "--seeds 1,2".
bench-flowcontrol: install
	$(BIN)/epp-bench flowcontrol $(FLOWCONTROL_ARGS)
	$(BIN)/epp-bench drain

# Precise vs approximate prefix index under cache pressure, one and two EPP replicas (~25 min),
# and the per-request cost of the precise index (~1 min).
bench-kvcache: install
	$(BIN)/epp-bench kvcache
	$(BIN)/epp-bench tokenize

clean:
	rm -rf $(VENV) build *.egg-info
