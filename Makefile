# Two commands do all set-up on a fresh clone: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= cpu,torch,dev,bulk,otel
HOST   ?= 127.0.0.1
PORT   ?= 8000
# PRECISION=fp32|fp16|int8: serve/eval an ONNX export of the bundled model in that precision (made once under
# exports/, git-ignored). Unset: `make serve` serves the checkpoint with PyTorch, as always.
PRECISION ?=
BUNDLED    := models/checkpoints/shapes-rn-s
EXPORT_DIR := exports/shapes-rn-s$(if $(PRECISION),-$(PRECISION))
EXPORT_ENV := $(if $(PRECISION),CLIP_BACKEND=onnx CLIP_DEVICE=cpu CLIP_PRECISION=$(PRECISION) CLIP_EXPORT_DIR=$(EXPORT_DIR))

.PHONY: serve test test-fast test-split mutation bench train eval export system-deps clean help

help:
	@echo "make serve   - install (first time) and serve the bundled model on http://$(HOST):$(PORT)"
	@echo "               (PRECISION=int8: export it to int8 ONNX once, then serve that with ONNX Runtime)"
	@echo "make test    - install (first time) and run the whole test suite"
	@echo "make test-split - the whole suite against split servers (CLIP_WORKERS=1; about as long again)"
	@echo "make mutation - mutation check of the security- and reliability-critical modules (1-2 h; docs/mutation.md)"
	@echo "make bench   - run the benchmark suite (writes docs/benchmarks/)"
	@echo "make train   - retrain the bundled model (about 30 min on 2 CPU cores)"
	@echo "make eval    - zero-shot evaluation of the bundled model (PRECISION=int8: and of its int8 export)"
	@echo "make export  - export the bundled model to ONNX under exports/shapes-rn-s (PRECISION=int8: -int8)"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Debian packages the tests use: promtool + prometheus (deploy tests), chromium (browser tests).
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "note: install Debian's 'prometheus' package for the deploy tests"; fi; fi
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	  else echo "note: install Debian's 'chromium' and 'chromium-driver' packages for the browser tests"; fi; fi
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; \
	  else echo "note: install Debian's 'wrk' package for the wrk cross-check of the benchmarks"; fi; fi

serve: $(STAMP) $(if $(PRECISION),$(EXPORT_DIR)/manifest.json)
	CLIP_HOST=$(HOST) CLIP_PORT=$(PORT) $(if $(PRECISION),$(EXPORT_ENV) )$(PY) -m service

# Test processes: pytest-xdist workers, each running whole test files (a file's servers start once, its tests keep
# their order), files with a `slow` test first (tests/conftest.py). Default: the cores this process may use, at most
# 4 (every worker starts servers of 2 threads). TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0))))' 2>/dev/null || echo 2)
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP) system-deps
	$(PY) -m pytest -q $(XDIST)

test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow"

# The whole suite against split servers (CLIP_WORKERS=1: a front-end and an engine process; every server a test starts
# inherits it). Not part of `make test` or CI (it doubles the time); run it when service/ changes.
test-split: $(STAMP) system-deps
	CLIP_WORKERS=1 $(PY) -m pytest -q $(XDIST)

# Mutation check (docs/mutation.md): mutmut mutates the modules listed in pyproject.toml's [tool.mutmut] one change
# at a time and runs their in-process tests against each mutant. Not part of `make test` or CI: 1-2 hours on
# 2 cores. Prints the counts, then every mutant no test killed.
MUTATION_CHILDREN ?= 2
mutation: $(STAMP)
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN)
	$(VENV)/bin/mutmut export-cicd-stats
	@cat mutants/mutmut-cicd-stats.json; echo
	$(VENV)/bin/mutmut results

bench: $(STAMP)
	$(PY) -m bench

train: $(STAMP)
	$(PY) -m models.train --model shapes-rn-s --out models/checkpoints/shapes-rn-s --seed 0
	$(PY) -m models.card --checkpoint models/checkpoints/shapes-rn-s --weights-dtype fp16

eval: $(STAMP) $(if $(PRECISION),$(EXPORT_DIR)/manifest.json)
	$(PY) -m models.eval --checkpoint $(BUNDLED) $(if $(PRECISION),--export $(EXPORT_DIR))

export: $(STAMP)
	$(PY) -m export onnx --model $(BUNDLED) --out $(EXPORT_DIR) $(if $(PRECISION),--precision $(PRECISION))

# made once, and again when the bundled weights change; parity is checked before manifest.json is written
$(EXPORT_DIR)/manifest.json: $(BUNDLED)/open_clip_model.safetensors | $(STAMP)
	$(PY) -m export onnx --model $(BUNDLED) --out $(EXPORT_DIR) $(if $(PRECISION),--precision $(PRECISION))

clean:
	rm -rf $(VENV) .pytest_cache exports
