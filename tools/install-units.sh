#!/bin/sh
# usage: tools/install-units.sh [--root DIR] [VMSNAP]
# Installs the systemd units of contrib/systemd into DIR/etc/systemd/system
# (DIR: / by default) with ExecStart= pointing at VMSNAP (default: the vmsnap
# found in PATH, e.g. /usr/local/bin/vmsnap after `pip install`), checks
# them with systemd-analyze verify, and reloads systemd when it runs.
# The Debian package needs none of this: its units call /usr/bin/vmsnap.
set -eu
root=/
if [ "${1:-}" = --root ]; then root=$2; shift 2; fi
vmsnap=${1:-$(command -v vmsnap || true)}
case $vmsnap in
    /*) ;;
    *) echo "install-units: vmsnap is not in PATH; give its full path" >&2; exit 1 ;;
esac
[ -x "$root/$vmsnap" ] || { echo "install-units: $root/$vmsnap is not executable" >&2; exit 1; }
src=$(cd "$(dirname "$0")/../contrib/systemd" && pwd)
dest=$root/etc/systemd/system
mkdir -p "$dest"
for unit in vmsnap.service vmsnap-thaw.service vmsnap.timer; do
    sed "s|/usr/bin/vmsnap|$vmsnap|g" "$src/$unit" > "$dest/$unit.tmp"
    chmod 644 "$dest/$unit.tmp"
    mv "$dest/$unit.tmp" "$dest/$unit"
    echo "installed $dest/$unit"
done
systemd-analyze verify --man=no --root="$root" vmsnap-thaw.service vmsnap.service vmsnap.timer
if [ "$root" = / ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "next: systemctl enable vmsnap-thaw.service; systemctl edit vmsnap.service (man vmsnap, SYSTEMD)"
