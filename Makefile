# vmsnap: run `make help` for the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

CC ?= cc
ARCH ?= aarch64
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/vmsnap_native/_version.py)
# the core: every C file in csrc/ (the C tests live in tests/c/)
CORE_SRC := $(wildcard csrc/*.c)
CTEST_SRC := tests/c/ctest.c
CORE_CFLAGS := -std=gnu11 -O2 -Wall -Wextra -Wno-unused-parameter -Icsrc \
               -DVMSNAP_VERSION='"$(VERSION)"'

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

test: build ## run the whole test suite (as root it first installs the system packages it needs)
	sh tools/install-test-deps.sh
	$(PY) -m pytest -q -ra tests

# the modules under mutation; the lead adds the decision module here
MUTATE ?= src/vmsnap_native/policy.py src/vmsnap_native/config.py src/vmsnap_native/decide.py
# the fast unit tests each mutant is judged by (no root, no loop devices)
MUTANT_TESTS ?= tests/test_policy.py tests/test_policy_exact.py tests/test_config.py tests/test_config_exact.py tests/test_decide.py
mutants: build ## mutation testing of MUTATE against MUTANT_TESTS; last line: mutants: K killed of N (P%)
	$(PIP) install -q 'mutmut>=2.4,<3'
	$(PY) tools/mutants.py --modules "$(MUTATE)" --tests "$(MUTANT_TESTS)"

include mk/fleet.mk

build/ctest: csrc/*.c csrc/*.h $(CTEST_SRC)
	mkdir -p build
	$(CC) $(CORE_CFLAGS) -o $@ $(CTEST_SRC) $(CORE_SRC) -lpthread

ctest: build/ctest ## C tests of the core (as root they also freeze a scratch loop filesystem)
	sh tools/run-ctest.sh build/ctest

build/$(ARCH)/ctest: csrc/*.c csrc/*.h $(CTEST_SRC)
	mkdir -p build/$(ARCH)
	$(ARCH)-linux-gnu-gcc $(CORE_CFLAGS) -static -o $@ $(CTEST_SRC) $(CORE_SRC) -lpthread

cross: build/$(ARCH)/ctest ## cross-build the core's C tests for ARCH (aarch64) and run them under qemu-user
	sh tools/run-ctest.sh build/$(ARCH)/ctest qemu-$(ARCH)

cross-system: build/$(ARCH)/ctest ## boot Debian's ARCH kernel under qemu-system and run the C tests, freeze included
	sh tools/cross-system.sh $(ARCH) build/$(ARCH)/ctest

wheel: build ## manylinux wheels: native (suite run against the install) and ARCH (tests under qemu-user)
	sh tools/wheel.sh $(PY)
	sh tools/wheel-cross.sh $(ARCH) $(PY)
	cp build/$(ARCH)/wheel/repaired/*.whl dist/

demo: build ## the built-in demonstration on a sandbox filesystem (root)
	$(VENV)/bin/vmsnap demo

bench: build ## benchmarks against the alternatives (root; writes bench/results.json and bench/busy.png)
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/run_all.py

# how the cost grows (filesystems, mount tables, hosts): in a private mount
# namespace with its own /run, so nothing it mounts or locks is seen outside
SCALE_TIMEOUT ?= 1500
bench-scale: build fleet-deps $(FLEET_VENV)/bin/ansible-playbook ## how the cost grows: 1-128 filesystems, mount tables to 10,000, 1-16 hosts (root; writes bench/scale.json and bench/scale.png)
	$(PIP) install -q -e '.[bench]'
	@run=$$(date +%s%N); \
	VMSNAP_FLEET_RUN=$$run timeout -k 10 $(SCALE_TIMEOUT) unshare -m --propagation private \
	  sh -c 'mount -t tmpfs -o mode=755 scale-run /run && exec "$$0" bench/scale.py --ansible "$$1"' \
	  $(PY) $(abspath $(FLEET_VENV))/bin/ansible-playbook; \
	  rc=$$?; $(PY) -m tests.fleet.harness sweep $$run; exit $$rc

# the public API's modules, type-checked strictly (mypy --strict); the rest is not typed yet
TYPED ?= src/vmsnap_native/__init__.py src/vmsnap_native/result.py \
         src/vmsnap_native/errors.py src/vmsnap_native/decide.py
lint: build ## static checks: ruff, mypy --strict on the public API, a warnings-as-errors C build
	$(PIP) install -q ruff mypy
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy --strict --follow-imports=silent $(TYPED)
	$(CC) -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Icsrc -fsyntax-only csrc/*.c $(CTEST_SRC)

clean: ## remove build products and the virtual environment
	rm -rf build dist *.egg-info src/*.egg-info src/vmsnap_native/_vmsnap_core*.so \
	       src/vmsnap_native/_vmsnap_core.c $(VENV) .pytest_cache .hypothesis

.PHONY: help build test ctest cross cross-system wheel demo bench bench-scale lint mutants clean
