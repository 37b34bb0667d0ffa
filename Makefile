# Two commands matter on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Local stack: an epp-sim fleet, the EPP and real Envoy on 127.0.0.1:8081 (Ctrl-C stops all).
run: $(STAMP)
	$(BIN)/epp-stack $(if $(GATEWAY),--gateway $(GATEWAY),)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/epp-bench report

clean:
	rm -rf $(VENV) build *.egg-info
