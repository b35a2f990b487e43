# Two commands for a newcomer: `make demo` and `make test`. Everything lives in .venv.
# `make demo` installs fwproxy with its runtime dependencies only ($(RUNTIME)); `make test`
# adds the test extras to the same .venv ($(STAMP)).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP  := $(VENV)/.installed
PORT   ?= 8080
DEMO_CONFIG ?= demo.yaml

.PHONY: demo test lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(RUNTIME)

# `make demo PORT=8090`; the config for trying the other commands goes to $(DEMO_CONFIG)
demo: $(RUNTIME)
	$(BIN)/fwproxy demo --port $(PORT) --write-config $(DEMO_CONFIG)

test: $(STAMP)
	$(BIN)/ruff check fwproxy tests bench
	$(BIN)/mypy
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# Build the Dockerfile with buildah (no Docker engine needed) and check the image. Root.
.PHONY: image-test
image-test:
	bash scripts/image-test.sh

# Soak: mixed traffic and injected faults through a real `fwproxy run` (bench/soak.py).
# Fails on a lost request, RSS growth over 20 % or fd growth. `make soak MINUTES=30`.
MINUTES ?= 30
.PHONY: soak soak-ci
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes $(MINUTES)

soak-ci: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 2

# bench/ scripts run as modules from the repo root (python -m bench.bench): they import
# tests/support, the process harness and /proc readers the e2e tests use.
# Benchmark (bench/bench.py): fwproxy against nginx, mitmproxy and a bare aiohttp proxy on a
# real nginx tenant over TLS. Installs nginx, wrk, openssl, curl (apt, as root) and mitmproxy,
# py-spy (their own venvs under bench/). Prints one table, writes bench/results/latest.json.
.PHONY: bench bench-smoke
bench: $(STAMP)
	bash bench/setup.sh full
	$(BIN)/python -m bench.bench

# The same harness in seconds (CI): tiny durations, 16 MiB transfers, no targets, mitmproxy
# only if bench/.venv-mitm exists. Fails only when a contender does not work at all.
bench-smoke: $(STAMP)
	bash bench/setup.sh smoke
	$(BIN)/python -m bench.bench --smoke
