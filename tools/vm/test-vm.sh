#!/bin/sh
# usage: tools/vm/test-vm.sh PYTHON
# make test-vm: installs QEMU and mmdebstrap, builds the wheel from this
# checkout, builds the Debian guest image with that wheel installed (reused
# while the sources and these scripts are unchanged), and runs tests/vm.
set -eu
py=$1
top=$(pwd)
out=build/vm
mkdir -p "$out"

sh tools/install-test-deps.sh mmdebstrap qemu-system-x86 qemu-utils

rm -rf "$out/wheel"
"$py" -m pip wheel -q --no-deps --no-build-isolation . -w "$out/wheel"
wheel=$(ls "$out"/wheel/*.whl)

# what goes into the image: the package's sources and the two image scripts
key=$(find src csrc examples/qemu-guest-agent pyproject.toml setup.py \
      tools/vm/build-image.sh tools/vm/guest-setup.sh -type f \
      ! -name '*.pyc' ! -name '*.so' ! -name '_vmsnap_core.c' ! -path '*.egg-info/*' | sort | xargs cat | sha256sum | cut -c1-16)
if [ "$(cat "$out/image/key" 2>/dev/null)" != "$key" ]; then
    t0=$(date +%s)
    rm -rf "$out/image"
    sh tools/vm/build-image.sh "$wheel" "$out/image"
    echo "$key" > "$out/image/key"
    echo "VM-FIGURE guest image built (mmdebstrap + ext4 + qcow2) in $(( $(date +%s) - t0 )) s"
else
    echo "test-vm: the guest image in $out/image is up to date"
fi

mkdir -p "$out/run"
export VMSNAP_VM_IMAGE="$top/$out/image" VMSNAP_VM_WORK="$top/$out/run" \
       VMSNAP_VM_FIGURES="$top/$out/figures.json"
# the guests' disks and sockets are removed by the tests' teardown, and here
trap 'rm -rf "$top/$out/run"' EXIT
"$py" -m pytest -q -p no:cacheprovider -o timeout=600 tests/vm
