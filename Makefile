# vmsnap: run `make help` for the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py csrc/*.c csrc/*.h csrc/build_ffi.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cffi
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

build: $(STAMP) ## set up .venv and build the native core (editable install)
	$(PY) setup.py -q build_ext --inplace

test: build ## run the whole test suite (needs root for the freeze tests)
	$(PY) -m pytest -q tests

demo: build ## the built-in demonstration on a sandbox filesystem (root)
	$(VENV)/bin/vmsnap demo

bench: build ## benchmarks against the alternatives (root; writes bench/results.json)
	$(PY) bench/run_all.py

lint: build ## static checks: ruff and a warnings-as-errors C build
	$(PIP) install -q ruff
	$(VENV)/bin/ruff check src tests bench
	$(CC) -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -fsyntax-only csrc/*.c

clean: ## remove build products and the virtual environment
	rm -rf build dist *.egg-info src/*.egg-info src/vmsnap_native/_vmsnap_core*.so \
	       src/vmsnap_native/_vmsnap_core.c $(VENV) .pytest_cache .hypothesis

.PHONY: help build test demo bench lint clean
