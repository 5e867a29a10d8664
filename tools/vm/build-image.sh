#!/bin/sh
# usage: tools/vm/build-image.sh WHEEL OUTDIR
# Builds the test guest from Debian's packages (mmdebstrap, no network in the
# guest ever): Debian 12 with its kernel, systemd, qemu-guest-agent,
# PostgreSQL (data checksums on), lvm2 and python3, and vmsnap installed from
# WHEEL the way a user installs a wheel, wired as qemu-ga's fsfreeze hook as
# examples/qemu-guest-agent/README.md says.  Writes OUTDIR/root.qcow2,
# OUTDIR/vmlinuz and OUTDIR/initrd.img (for a direct kernel boot).
set -eu
wheel=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
rootfs=$out/rootfs
rm -rf "$rootfs" "$out/root.raw" "$out/root.qcow2"
trap 'rm -rf "$rootfs" "$out/root.raw"' EXIT

PACKAGES="linux-image-cloud-amd64 initramfs-tools systemd-sysv udev kmod procps
util-linux e2fsprogs qemu-guest-agent postgresql postgresql-contrib lvm2
thin-provisioning-tools python3 python3-cffi python3-pip"

# the host's Debian sources (the same mirror the host's apt uses)
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

cp "$wheel" "$out/"
whl=$(basename "$wheel")
# shellcheck disable=SC2086
mmdebstrap --quiet --variant=apt --mode=root \
    --include="$(echo $PACKAGES | tr ' ' ',')" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="cp '$out/$whl' \"\$1/tmp/\"" \
    --customize-hook="cp '$top/examples/qemu-guest-agent/fsfreeze-hook.d/vmsnap' \"\$1/tmp/vmsnap-hook\"" \
    --customize-hook="cp '$here/guest-setup.sh' \"\$1/tmp/guest-setup.sh\"" \
    --customize-hook="chroot \"\$1\" sh /tmp/guest-setup.sh /tmp/$whl" \
    bookworm "$rootfs" "deb $mirror bookworm main"

cp "$rootfs"/boot/vmlinuz-* "$out/vmlinuz"
cp "$rootfs"/boot/initrd.img-* "$out/initrd.img"
chmod 644 "$out/vmlinuz" "$out/initrd.img"
truncate -s 4G "$out/root.raw"
mkfs.ext4 -q -F -L vmroot -d "$rootfs" "$out/root.raw"
qemu-img convert -O qcow2 "$out/root.raw" "$out/root.qcow2"
rm -f "$out/$whl"
du -sh "$out/root.qcow2"
