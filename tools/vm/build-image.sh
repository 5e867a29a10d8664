#!/bin/sh
# usage: tools/vm/build-image.sh WHEEL OUTDIR
# Builds the test guest from Debian's packages (mmdebstrap, no network in the
# guest ever): Debian 12 with its kernel, systemd, qemu-guest-agent,
# PostgreSQL (data checksums on), lvm2 and python3, and vmsnap installed from
# WHEEL the way a user installs a wheel, wired as qemu-ga's fsfreeze hook as
# examples/qemu-guest-agent/README.md says.  Writes OUTDIR/root.qcow2,
# OUTDIR/vmlinuz and OUTDIR/initrd.img (for a direct kernel boot).  Prints
# the time of each step.
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

# each step's time, so that the image's share of make test-vm can be seen
t=$(date +%s)
step() { now=$(date +%s); echo "build-image: $1 took $((now - t)) s"; t=$now; }

cp "$wheel" "$out/"
whl=$(basename "$wheel")
# dpkg without an fsync per file (a failed build is thrown away whole);
# a small initramfs: only the modules the root needs (virtio's PCI transport
# and block device; ext4 is built into the cloud kernel) instead of "most",
# quicker to make here and to unpack in an emulated guest; and virtio-rng's,
# so that the kernel's random pool is ready at once (the guests get a
# virtio-rng device): an emulated guest otherwise gathers entropy for 10 s
# and more, and systemd's early units and PostgreSQL wait for it
# shellcheck disable=SC2086
mmdebstrap --quiet --variant=apt --mode=root \
    --include="$(echo $PACKAGES | tr ' ' ',')" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt=force-unsafe-io \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
    --essential-hook='echo MODULES=list > "$1/etc/initramfs-tools/conf.d/vmsnap-test"' \
    --essential-hook='printf "virtio_pci\nvirtio_blk\nvirtio_rng\n" > "$1/usr/share/initramfs-tools/modules.d/vmsnap-test"' \
    --essential-hook='echo "build-image: essential packages installed at $(date +%T)"' \
    --customize-hook='echo "build-image: all packages installed at $(date +%T)"' \
    --customize-hook="cp '$out/$whl' \"\$1/tmp/\"" \
    --customize-hook="cp '$top/examples/qemu-guest-agent/fsfreeze-hook.d/vmsnap' \"\$1/tmp/vmsnap-hook\"" \
    --customize-hook="cp '$here/guest-setup.sh' \"\$1/tmp/guest-setup.sh\"" \
    --customize-hook="chroot \"\$1\" sh /tmp/guest-setup.sh /tmp/$whl" \
    --customize-hook='echo "build-image: guest-setup.sh done at $(date +%T)"' \
    bookworm "$rootfs" "deb $mirror bookworm main"
step "mmdebstrap (download, install, initramfs, guest-setup.sh)"

cp "$rootfs"/boot/vmlinuz-* "$out/vmlinuz"
cp "$rootfs"/boot/initrd.img-* "$out/initrd.img"
chmod 644 "$out/vmlinuz" "$out/initrd.img"
truncate -s 4G "$out/root.raw"
mkfs.ext4 -q -F -L vmroot -d "$rootfs" "$out/root.raw"
qemu-img convert -O qcow2 "$out/root.raw" "$out/root.qcow2"
step "ext4 and qcow2"
rm -f "$out/$whl"
du -sh "$out/root.qcow2"
