#!/bin/sh
# usage: tools/cross-system.sh ARCH CTEST_BINARY
# The full proof of the freeze path on another architecture: boots Debian's
# kernel for ARCH under qemu-system (software emulation) with an initramfs
# holding a static busybox, the static C tests and the modules they need,
# and a virtio disk with an ext4 filesystem that the tests freeze and thaw.
set -eu
arch=$1
ctest=$2
case $arch in
    aarch64) debarch=arm64 qemu=qemu-system-aarch64 machine="-M virt -cpu cortex-a57" console=ttyAMA0 ;;
    riscv64) debarch=riscv64 qemu=qemu-system-riscv64 machine="-M virt" console=ttyS0 ;;
    *) echo "cross-system: unsupported ARCH $arch" >&2; exit 2 ;;
esac
work=build/$arch/system
mkdir -p "$work"
work=$(cd "$work" && pwd)

# Debian's kernel and a static busybox for ARCH, from the archive
if ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
    dpkg --add-architecture "$debarch"
    apt-get update -qq
fi
kpkg=$(apt-cache depends "linux-image-$debarch:$debarch" | awk '/Depends: linux-image-/ {print $2; exit}')
kpkg=${kpkg%%:*}
if [ ! -d "$work/kernel" ]; then
    (cd "$work" && apt-get download -q "$kpkg:$debarch" "busybox-static:$debarch" 2>/dev/null)
    dpkg -x "$work"/linux-image-*_"$debarch".deb "$work/kernel"
    dpkg -x "$work"/busybox-static_*_"$debarch".deb "$work/busybox"
fi
kver=$(ls "$work/kernel/lib/modules")
kernel=$(ls "$work"/kernel/boot/vmlinuz-*)
moddir=$work/kernel/lib/modules/$kver

# the modules for a virtio disk with ext4, dependencies first
order=""
add() {
    case " $order " in *" $1 "*) return ;; esac
    f=$(find "$moddir" -name "$1.ko*" | head -1)
    [ -n "$f" ] || return 0   # built in
    for dep in $(modinfo -F depends "$f" | tr ',' ' '); do add "$dep"; done
    order="$order $1"
}
for m in virtio_mmio virtio_blk crc32c_generic ext4; do add "$m"; done

root=$work/initramfs
rm -rf "$root"
mkdir -p "$root/bin" "$root/lib/modules" "$root/proc" "$root/sys" "$root/dev" "$root/mnt" "$root/tmp"
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
cp "$ctest" "$root/ctest"
for m in $order; do
    f=$(find "$moddir" -name "$m.ko*" | head -1)
    case $f in
        *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
done
cat > "$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $order; do insmod /lib/modules/\$m.ko 2>/dev/null; done
mount -t ext4 /dev/vda /mnt || echo "cannot mount the test disk"
mkdir -p /mnt/inner && mount -t ext4 /dev/vdb /mnt/inner || echo "cannot mount the inner disk"
echo "kernel \$(uname -r) \$(uname -m)"
/ctest /mnt /mnt/inner
echo "CTEST-EXIT \$?"
umount /mnt/inner
umount /mnt
poweroff -f
INIT
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initramfs.cpio.gz"

disk=$work/disk.img
inner=$work/inner.img   # mounted inside the first: the freeze-wave tests
rm -f "$disk" "$inner"
truncate -s 64M "$disk" "$inner"
mkfs.ext4 -q -F "$disk"
mkfs.ext4 -q -F "$inner"

log=$work/console.log
timeout 900 $qemu $machine -m 768 -smp 2 -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$work/initramfs.cpio.gz" \
    -append "console=$console panic=-1 quiet" \
    -drive file="$disk",format=raw,if=none,id=d0 -device virtio-blk-device,drive=d0 \
    -drive file="$inner",format=raw,if=none,id=d1 -device virtio-blk-device,drive=d1 \
    </dev/null | tee "$log" | grep -E "^(kernel|FAIL|SKIP|vmsnap core|[0-9]+ passed|CTEST-EXIT|cannot)"
grep -q "^CTEST-EXIT 0" "$log"
