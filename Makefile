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
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py csrc/*.c csrc/*.h csrc/build_ffi.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cffi
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

build: $(STAMP) ## set up .venv and build the native core (editable install)
	$(PY) setup.py -q build_ext --inplace

test: build ## run the whole test suite (as root it first installs the system packages it needs)
	sh tools/install-test-deps.sh
	$(PY) -m pytest -q -ra --ignore=tests/fleet tests bench/test_scale.py

# the modules under mutation (a file, or NAME=FILE,FILE for a package's files judged as one);
# each mutant is judged by its own module's tests (tools/mutants.py MODULE_TESTS), fast ones first
MUTATE ?= src/vmsnap_native/policy.py src/vmsnap_native/config.py src/vmsnap_native/decide.py \
          agents=src/vmsnap_native/agents/table.py,src/vmsnap_native/agents/__init__.py \
          src/vmsnap_native/metrics.py src/vmsnap_native/held.py src/vmsnap_native/cycle.py \
          src/vmsnap_native/plan.py
# tests run for every module after its own (none: each module's own are enough)
MUTANT_TESTS ?=
# a seeded sample of each module's mutants (all of them would take hours here): the root
# modules' tests make loop filesystems, half a minute to a minute a surviving mutant
MUTANTS_SAMPLE ?= policy:30 config:30 decide:40 agents:30 metrics:40 held:10 cycle:10 plan:10
MUTANTS_JOBS ?= 2
# the gate: the whole set and each module
MUTANTS_MIN ?= 85
MUTANTS_MIN_MODULE ?= 80
mutants: build ## mutation testing of MUTATE; last line: mutants: K killed of N (P%), T timeouts, S survived
	$(PIP) install -q 'mutmut>=2.4,<3'
	nice $(PY) tools/mutants.py --modules "$(MUTATE)" --tests "$(MUTANT_TESTS)" \
	    --jobs $(MUTANTS_JOBS) --sample "$(MUTANTS_SAMPLE)" \
	    --min $(MUTANTS_MIN) --min-module $(MUTANTS_MIN_MODULE)

# the C core's mutants (tools/cmutants.py), judged by the C tests and the core's Python tests
CMUTANTS_SAMPLE ?= 60
cmutants: build ## mutation testing of csrc/ (a seeded sample); last line: cmutants: K killed of N ...
	nice $(PY) tools/cmutants.py --jobs $(MUTANTS_JOBS) --sample $(CMUTANTS_SAMPLE)

# the timing-sensitive tests (marked `timing`: a bound on how long something takes, an
# order or instant a race decides, a global switch another process may flip), 5 runs in a
# row beside two CPU hogs; the RCU benchmark is not among them (`make bench` measures it)
UNDER_LOAD_TESTS ?= tests/test_jit_freeze.py tests/test_freeze.py tests/test_thaw_paths.py \
                    tests/test_signals.py tests/test_faults.py tests/test_containment.py \
                    tests/test_process.py tests/test_fallbacks.py tests/test_resume.py
test-under-load: build ## the timing-sensitive tests 5 times in a row beside two CPU hogs (root)
	$(PY) tools/under_load.py --runs 5 --hogs 2 -- -m timing $(UNDER_LOAD_TESTS)

# the soak (root): N randomised cycles through run, hook qemu-ga/gce and freeze/thaw with
# faults at random instants, checked against the SPEC's rules after each; SEED makes it
# repeatable, ONLY=K replays one cycle; logs and summary.json in build/soak/
N ?= 200
SEED ?= 1
JOBS ?= 1
soak: build ## randomised cycles with faults through every entry point (root; N=200 SEED=1 JOBS=1 ONLY=K)
	nice $(PY) tools/soak.py -n $(N) --seed $(SEED) --jobs $(JOBS) $(if $(ONLY),--only $(ONLY)) --log-dir build/soak

# CI's soak: a fixed seed, 150 cycles in 3 jobs (a few minutes); exit 1 on any violation
soak-ci: build ## a short soak for CI: 150 cycles, seed 1, fails on any violation (root)
	nice $(PY) tools/soak.py -n 150 --seed 1 --jobs 3 --log-dir build/soak-ci

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

test-vm: build ## vmsnap as qemu-ga's hook in real QEMU guests that the host and libvirt snapshot (root; builds a Debian image, cached)
	sh tools/vm/test-vm.sh $(PY)

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

# the whole package under mypy --strict, and the tests' helpers; mypy comes with the
# test extras (tests/test_packaging.py runs the same check, so make test does too)
.PHONY: typecheck
typecheck: build ## mypy --strict over the whole package and tests/helpers.py: any error fails
	$(VENV)/bin/mypy --strict src/vmsnap_native
	$(VENV)/bin/mypy --strict --follow-imports=silent tests/helpers.py

lint: typecheck ## static checks: ruff, make typecheck, a warnings-as-errors C build
	$(PIP) install -q ruff
	$(VENV)/bin/ruff check src tests bench
	$(CC) -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Icsrc -fsyntax-only csrc/*.c $(CTEST_SRC)

# -- packaging: sdist and wheel, manual pages, completion, the Debian package --
PKG_VENV := build/packaging-venv
MAN_PAGES := man/vmsnap.8 man/vmsnap-config.5

$(PKG_VENV)/bin/shtab:
	test -x $(PKG_VENV)/bin/python || $(PYTHON) -m venv $(PKG_VENV)
	$(PKG_VENV)/bin/pip install -q 'build>=1' 'pyroma>=4' twine 'check-manifest>=0.49' 'shtab>=1.7'

sdist: $(PKG_VENV)/bin/shtab ## sdist + wheel built from it, each installed in a fresh venv and run; pyroma, twine
	sh tools/sdist-check.sh $(PYTHON)

man: ## lint the manual pages: mandoc -T lint and groff -ww, any message fails
	mandoc -T lint -W all $(MAN_PAGES)
	@for p in $(MAN_PAGES); do \
	  out=$$(groff -ww -man -z $$p 2>&1); [ -z "$$out" ] || { echo "$$out"; exit 1; }; \
	done; echo "man: $(MAN_PAGES) lint-clean"

completion: $(PKG_VENV)/bin/shtab ## bash and zsh completion from the parser, into build/completion
	$(PKG_VENV)/bin/python tools/completion.py build/completion

deb: ## the Debian package in build/deb (dpkg-buildpackage; lintian: no errors)
	sh tools/deb.sh

test-deb: deb ## install the .deb into a clean Debian chroot (mmdebstrap) and check it there (root, network)
	sh tools/deb-chroot-test.sh build/deb/vmsnap_$(VERSION)_$$(dpkg --print-architecture).deb

test-packaging: build sdist man completion test-deb ## all of the above, and the unit, man page and completion tests
	$(PY) -m pytest -q -p no:cacheprovider tests/test_packaging.py


clean: ## remove build products and the virtual environment
	rm -rf build dist *.egg-info src/*.egg-info src/vmsnap_native/_vmsnap_core*.so \
	       src/vmsnap_native/_vmsnap_core.c $(VENV) .pytest_cache .hypothesis .mypy_cache

.PHONY: help build test test-vm ctest cross cross-system wheel demo bench bench-scale lint mutants soak soak-ci test-under-load cmutants clean \
        sdist man completion deb test-deb test-packaging
