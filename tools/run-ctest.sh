#!/bin/sh
# usage: run-ctest.sh BINARY [EMULATOR...]
# Makes a scratch ext4 loop filesystem (as root, where loop devices exist),
# runs the C tests on it (under EMULATOR if given), and always takes it down.
set -u
bin=$1
shift
dir=""
mnt=""
cleanup() {
    if [ -n "$mnt" ]; then
        fsfreeze -u "$mnt" 2>/dev/null
        umount "$mnt"
    fi
    [ -n "$dir" ] && rm -rf "$dir"
}
trap cleanup EXIT INT TERM
if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && command -v mkfs.ext4 >/dev/null; then
    dir=$(mktemp -d /tmp/vmsnap-ctest.XXXXXX)
    truncate -s 32M "$dir/img" && mkfs.ext4 -q -F "$dir/img" && mkdir "$dir/mnt" &&
        mount -o loop "$dir/img" "$dir/mnt" && mnt="$dir/mnt"
fi
"$@" "$bin" $mnt
