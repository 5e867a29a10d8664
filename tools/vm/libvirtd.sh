#!/bin/sh
# usage: tools/vm/libvirtd.sh DIR
# Starts a libvirtd of its own for make test-vm, in a private mount
# namespace: its configuration, state, logs and sockets all live under DIR
# (bound over /etc/libvirt, /run/libvirt, /var/lib/libvirt, ...), so it never
# meets the host's libvirt, if there is one.  Clients connect with
#     virsh -c 'qemu:///system?socket=DIR/sock/libvirt-sock'
# QEMU runs as root with no security driver and no cgroups (a container has
# neither to give), its output in files (no virtlogd), no network (no
# dnsmasq, no bridge).  Prints libvirtd's pid once its socket answers; exits
# non-zero with the reason when it does not start.  Stop it with
# `kill PID` after destroying its domains.
set -eu
d=$(mkdir -p "$1" && cd "$1" && pwd)
# a fresh start, but the capabilities libvirtd probed last time are kept (cache)
rm -rf "$d/etc" "$d/run" "$d/sock" "$d/lib" "$d/log"
mkdir -p "$d/etc" "$d/run" "$d/lib" "$d/cache" "$d/log" "$d/sock"
command -v libvirtd >/dev/null || { echo "libvirtd is not installed" >&2; exit 1; }
cp -r /etc/libvirt/. "$d/etc/"
cat > "$d/etc/libvirtd.conf" <<EOF
unix_sock_dir = "$d/sock"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$d/libvirtd.log"
EOF
cat > "$d/etc/qemu.conf" <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
EOF
rm -f "$d/libvirtd.pid"
# shellcheck disable=SC2016  # expanded by the inner shell
unshare -m --propagation private sh -c '
    set -e
    d=$1
    mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
    mount --bind "$d/etc" /etc/libvirt
    mount --bind "$d/run" /run/libvirt
    mount --bind "$d/lib" /var/lib/libvirt
    mount --bind "$d/cache" /var/cache/libvirt
    mount --bind "$d/log" /var/log/libvirt
    exec libvirtd --pid-file "$d/libvirtd.pid"
' libvirtd-ns "$d" </dev/null >"$d/libvirtd.out" 2>&1 &
i=0
while [ $i -lt 300 ]; do
    if [ -s "$d/libvirtd.pid" ] && \
       virsh -q -c "qemu:///system?socket=$d/sock/libvirt-sock" version >/dev/null 2>&1; then
        cat "$d/libvirtd.pid"
        exit 0
    fi
    if ! kill -0 $! 2>/dev/null && [ ! -s "$d/libvirtd.pid" ]; then
        break
    fi
    sleep 0.1
    i=$((i + 1))
done
echo "libvirtd did not start:" >&2
tail -5 "$d/libvirtd.out" "$d/libvirtd.log" >&2 2>/dev/null || true
exit 1
