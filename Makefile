# edge-se: `make demo` runs the pipeline on the embedded default, `make test` runs the suite.
# Every target that needs the virtual environment depends on $(STAMP), so a fresh clone needs nothing else.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN   ?= runs/demo

.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install the pinned dependencies (idempotent)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)  ## run the whole test suite (CI runs this)
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff and mypy
	$(VENV)/bin/ruff check edge_se quantize export device_bench tests
	$(VENV)/bin/mypy

demo: $(STAMP)  ## the main job on the embedded default
	$(VENV)/bin/edge-se models
	for m in efficientnet_b0 mobilenetv3_large_100 mobilenetv3_small_100 seresnet50; do \
	  $(VENV)/bin/edge-se info $$m || exit 1; done

clean:  ## remove build outputs and runs (keeps .venv)
	rm -rf runs results artifacts build *.egg-info .pytest_cache

.PHONY: help setup test lint demo clean
