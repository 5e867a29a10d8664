#!/bin/sh
# usage: run-ctest.sh BINARY [EMULATOR...]
# Makes two scratch ext4 loop filesystems, the second mounted inside the
# first (for the freeze-wave tests), runs the C tests on them (under
# EMULATOR if given), and always takes them down.  Without root or loop
# devices the freeze tests cannot run: that fails, unless
# VMSNAP_CTEST_NO_FREEZE=1 says it is expected.
set -u
bin=$1
shift
dir=""
mounted=""
cleanup() {
    for m in $mounted; do   # inner first
        fsfreeze -u "$m" 2>/dev/null
        umount "$m"
    done
    [ -n "$dir" ] && rm -rf "$dir"
}
trap cleanup EXIT INT TERM
scratch() {   # scratch IMAGE MOUNTPOINT
    truncate -s 32M "$1" && mkfs.ext4 -q -F "$1" && mkdir -p "$2" &&
        mount -o loop "$1" "$2" && mounted="$2 $mounted"
}
if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && command -v mkfs.ext4 >/dev/null; then
    dir=$(mktemp -d /tmp/vmsnap-ctest.XXXXXX)
    scratch "$dir/outer.img" "$dir/mnt" && scratch "$dir/inner.img" "$dir/mnt/inner"
fi
if [ -z "$mounted" ]; then
    if [ "${VMSNAP_CTEST_NO_FREEZE:-}" = 1 ]; then
        "$@" "$bin"
        exit $?
    fi
    echo "run-ctest: no scratch filesystem (needs root, /dev/loop-control, mkfs.ext4):" \
         "the freeze tests cannot run (VMSNAP_CTEST_NO_FREEZE=1 to run the rest)" >&2
    exit 1
fi
"$@" "$bin" "$dir/mnt" "$dir/mnt/inner"
