#!/bin/sh
# ansible-test sanity and ansible-lint --profile production on the Ansible
# collection in contrib/ansible, without network beyond the package index:
# the tools come from pip into their own virtual environments (build/), and
# the pip bootstrap that ansible-test would download from its own server is
# tools/ansible_get_pip.py (ensurepip, then pip from the index).
#   sh tools/lint-ansible.sh [PYTHON]
set -eu
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
ROOT=$(pwd)
BUILD=$ROOT/build/ansible-lint
# ansible-test reads tests/sanity/ignore-X.Y.txt for its own version: keep
# the two in step when moving on
CORE='ansible-core>=2.19,<2.20'

venv() {   # venv DIR PACKAGE...: a virtual environment with these packages
    dir=$1; shift
    if [ ! -f "$dir/.installed" ] || [ "$(cat "$dir/.installed")" != "$*" ]; then
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
        "$dir/bin/pip" install -q "$@"
        echo "$*" > "$dir/.installed"
    fi
}
venv "$BUILD/test-venv" "$CORE"
venv "$BUILD/lint-venv" "$CORE" ansible-lint

# ansible-test wants the collection at ansible_collections/NAMESPACE/NAME,
# outside this git tree (inside it, ansible-test asks git for the files and
# finds none under the ignored build/)
stage=$(mktemp -d "${TMPDIR:-/tmp}/vmsnap-lint-ansible.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/ansible_collections/vmsnap"
cp -a contrib/ansible "$stage/ansible_collections/vmsnap/fleet"
coll=$stage/ansible_collections/vmsnap/fleet

# ansible-test keeps its own virtual environments and pip bootstrap under ~/.ansible
export HOME="$BUILD/home"
pyver=$("$BUILD/test-venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pipver=$(sed -n "s/.*pip='\([0-9.]*\)'.*/\1/p" \
    "$BUILD"/test-venv/lib/python*/site-packages/ansible_test/_internal/python_requirements.py)
mkdir -p "$HOME/.ansible/test/cache"
cp tools/ansible_get_pip.py "$HOME/.ansible/test/cache/get_pip_$(echo "$pipver" | tr . _).py"

echo "ansible-test sanity (python $pyver)"
(cd "$coll" && "$BUILD/test-venv/bin/ansible-test" sanity --python "$pyver" --color no) \
    > "$stage/sanity.log" 2>&1 || { cat "$stage/sanity.log"; exit 1; }
grep -v "^WARNING: Location\|^Looking in\|^Collecting\|^  Downloading\|^Processing\|━" "$stage/sanity.log"
# a run that tested nothing passes too: not here
if grep -q "All targets skipped" "$stage/sanity.log" || ! grep -q "Running sanity test" "$stage/sanity.log"; then
    echo "lint-ansible: ansible-test found nothing to test"; exit 1
fi

echo "ansible-lint --profile production"
(cd "$coll" && ANSIBLE_COLLECTIONS_PATH="$stage" PATH="$BUILD/lint-venv/bin:$PATH" \
    "$BUILD/lint-venv/bin/ansible-lint" --offline --profile production --nocolor)
echo "lint-ansible: sanity and production lint clean"
