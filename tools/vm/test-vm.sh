#!/bin/sh
# usage: tools/vm/test-vm.sh PYTHON
# make test-vm: installs QEMU, mmdebstrap and libvirt, builds the wheel from
# this checkout, builds the Debian guest image with that wheel installed
# (kept in build/vm/image under a hash of its inputs, and reused while they
# are unchanged), starts a libvirtd of its own, and runs tests/vm.  Prints
# the time of each phase.
set -eu
py=$1
top=$(pwd)
out=build/vm
mkdir -p "$out"

t0=$(date +%s)
t=$t0
times=""
phase() {
    now=$(date +%s)
    times="$times$(printf '  %-44s %5d s' "$1" $((now - t)))
"
    echo "VM-PHASE $1: $((now - t)) s"
    t=$now
}

sh tools/install-test-deps.sh mmdebstrap qemu-system-x86 qemu-utils \
    libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
phase "install packages (only those missing)"

# libvirtd starts meanwhile: its first start probes QEMU for seconds
rm -rf "$out/run"
mkdir -p "$out/run"
lv=$top/$out/libvirt
rm -f "$lv.pid" "$lv.why" "$lv.failed"
(sh tools/vm/libvirtd.sh "$lv" > "$lv.pid" 2> "$lv.why" || touch "$lv.failed") &
lvjob=$!
stop_libvirtd() {
    wait "$lvjob" 2>/dev/null || true   # a libvirtd still starting is stopped too
    uri="qemu:///system?socket=$lv/sock/libvirt-sock"
    if [ -s "$lv.pid" ]; then
        for dom in $(virsh -q -c "$uri" list --name 2>/dev/null); do
            virsh -q -c "$uri" destroy "$dom" >/dev/null 2>&1 || true
        done
        kill "$(cat "$lv.pid")" 2>/dev/null || true
    fi
}
# the guests' disks and sockets are removed by the tests' teardown, and here
trap 'stop_libvirtd; rm -rf "$top/$out/run"' EXIT

rm -rf "$out/wheel"
"$py" -m pip wheel -q --no-deps --no-build-isolation . -w "$out/wheel"
wheel=$(ls "$out"/wheel/*.whl)
phase "wheel"

# what goes into the image: the package's sources and the two image scripts
key=$(find src csrc examples/qemu-guest-agent pyproject.toml setup.py \
      tools/vm/build-image.sh tools/vm/guest-setup.sh -type f \
      ! -name '*.pyc' ! -name '*.so' ! -name '_vmsnap_core.c' ! -path '*.egg-info/*' | sort | xargs cat | sha256sum | cut -c1-16)
if [ "$(cat "$out/image/key" 2>/dev/null)" != "$key" ]; then
    rm -rf "$out/image"
    sh tools/vm/build-image.sh "$wheel" "$out/image"
    echo "$key" > "$out/image/key"
    phase "guest image (mmdebstrap, ext4, qcow2; key $key)"
else
    echo "test-vm: the guest image in $out/image is up to date (key $key)"
    phase "guest image (cached, key $key)"
fi

export VMSNAP_VM_IMAGE="$top/$out/image" VMSNAP_VM_WORK="$top/$out/run" \
       VMSNAP_VM_FIGURES="$top/$out/figures.json" VMSNAP_VM_LIBVIRT="$lv"
rc=0
"$py" -m pytest -q -p no:cacheprovider -o timeout=900 --durations=0 tests/vm || rc=$?
phase "tests (QEMU guests)"
printf 'test-vm: time per phase\n%s  %-44s %5d s\n' "$times" "total" $(($(date +%s) - t0))
exit $rc
