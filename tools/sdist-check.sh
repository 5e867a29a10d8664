#!/bin/sh
# usage: tools/sdist-check.sh PYTHON
# Builds the sdist and, from the unpacked sdist, the wheel (python -m build),
# checks that the sdist carries what the native build needs, rates the
# metadata with pyroma and twine, checks with check-manifest that the sdist
# has every file under version control, then installs each artifact into its own
# fresh virtual environment outside the checkout and runs it there:
# `vmsnap --version` and a dry run (which runs no script and freezes nothing);
# and the same for `pip install .` of this tree, as the README says.
set -eu
py=$1
checkout=$(pwd)
base=$("$py" -c "import sys; print(sys._base_executable)")
tools=build/packaging-venv
test -x "$tools/bin/python" || "$base" -m venv "$tools"
"$tools/bin/pip" install -q 'build>=1' 'pyroma>=4' twine 'check-manifest>=0.49'
out=build/sdist-check
rm -rf "$out"
"$tools/bin/python" -m build --outdir "$out" . >"$out.log" 2>&1 || { cat "$out.log"; exit 1; }
sdist=$(ls "$out"/*.tar.gz)
wheel=$(ls "$out"/*.whl)
echo "built: $sdist $wheel"

# what the cffi build and a packager need, by name
name=$(basename "$sdist" .tar.gz)
listing=$(tar -tzf "$sdist")
for f in csrc/build_ffi.py csrc/vmsnap.h csrc/compat.h csrc/freeze.c setup.py pyproject.toml \
         LICENSE CHANGELOG.md man/vmsnap.8 man/vmsnap-config.5 tools/completion.py \
         contrib/systemd/vmsnap.service debian/control; do
    printf '%s\n' "$listing" | grep -qx "$name/$f" || { echo "sdist lacks $f" >&2; exit 1; }
done
if printf '%s\n' "$listing" | grep -E '\.(so|o|pyc)$|_vmsnap_core\.c$'; then
    echo "sdist carries build products (above)" >&2; exit 1
fi
unzip -l "$wheel" | grep -q 'dist-info/licenses/LICENSE' || { echo "wheel lacks LICENSE" >&2; exit 1; }

"$tools/bin/twine" check --strict "$sdist" "$wheel"
# every file git has is in the sdist (MANIFEST.in), every package in it (pyproject.toml)
"$tools/bin/check-manifest" .
# pyroma (which counts check-manifest's verdict too): 9 of 10; 10 would need an
# author e-mail and a project URL, which vmsnap has not
"$tools/bin/pyroma" -n 9 -d .

tmp=$(mktemp -d /tmp/vmsnap-sdist.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# the sdist, the wheel, and this tree as the README's `pip install .` does
for artifact in "$sdist" "$wheel" "$checkout"; do
    case $artifact in
        *.tar.gz) kind=sdist ;;
        *.whl) kind=wheel ;;
        *) kind=tree ;;
    esac
    "$base" -m venv "$tmp/$kind"
    # the sdist builds the C core here, from its own files only
    "$tmp/$kind/bin/pip" install -q "$artifact"
    (
        cd "$tmp"
        export VMSNAP_RUNTIME_DIR="$tmp/run-$kind"
        "$tmp/$kind/bin/python" -c "import vmsnap_native, sys; \
assert not vmsnap_native.__file__.startswith('$checkout'), vmsnap_native.__file__"
        "$tmp/$kind/bin/vmsnap" --version
        "$tmp/$kind/bin/vmsnap" run --dry-run --mount / --log-file '' --config "$tmp/none.json" \
            >"$tmp/dry-$kind.out" 2>&1 || { cat "$tmp/dry-$kind.out"; exit 1; }
        grep -q . "$tmp/dry-$kind.out"
        echo "$kind: installed in a fresh venv, --version and a dry run pass"
    )
done
