#!/bin/sh
# usage: tools/deb-chroot-test.sh DEB [SUITE]
# Installs DEB with apt-get into a clean Debian chroot (mmdebstrap minbase of
# SUITE, bookworm by default, from deb.debian.org) and checks it there: the
# command runs, the units verify and pass their hardening thresholds, the
# manual pages, completion and logrotate are in place, the example
# configuration is not the live one, and purge leaves nothing behind.
# The chroot lives in mmdebstrap's temporary directory and goes with it
# (output /dev/null); mmdebstrap mounts /proc, /sys and /dev for the hooks
# and unmounts them.
set -eu
deb=$(readlink -f "$1")
suite=${2:-bookworm}
checks=$(mktemp /tmp/vmsnap-deb-checks.XXXXXX)
trap 'rm -f "$checks"' EXIT
cat >"$checks" <<'CHECKS'
set -eux
vmsnap --version
# no configuration file: check says so and succeeds
vmsnap check
# a dry run freezes nothing; in a chroot / is not a mount point, and a
# selection that names a non-mount runs nothing: exit 1, saying why
rc=0; out=$(vmsnap run --dry-run --mount / --log-file '' 2>&1) || rc=$?
test "$rc" = 1
printf '%s\n' "$out" | grep -q 'not a mount point'
vmsnap mounts --json >/dev/null
test ! -e /etc/azure/VMSnapshotScriptPluginConfig.json
test -s /usr/share/doc/vmsnap/examples/VMSnapshotScriptPluginConfig.json
# --man=yes: Documentation=man:... must name installed pages
systemd-analyze verify /lib/systemd/system/vmsnap-thaw.service \
    /lib/systemd/system/vmsnap.service /lib/systemd/system/vmsnap.timer
systemd-analyze security --offline=true --threshold=30 /lib/systemd/system/vmsnap-thaw.service | tail -n 1
systemd-analyze security --offline=true --threshold=70 /lib/systemd/system/vmsnap.service | tail -n 1
# the boot-time thaw is enabled at install, the run and its timer are not
test -L /etc/systemd/system/sysinit.target.wants/vmsnap-thaw.service
test ! -e /etc/systemd/system/timers.target.wants/vmsnap.timer
man -w vmsnap vmsnap-config
bash -c '. /usr/share/bash-completion/completions/vmsnap && complete -p vmsnap'
test -s /usr/share/zsh/vendor-completions/_vmsnap
logrotate --debug /etc/logrotate.d/vmsnap >/tmp/logrotate.out 2>&1
grep "/var/log/vmsnap.log" /tmp/logrotate.out
apt-get purge -y -q vmsnap
test ! -e /usr/bin/vmsnap && test ! -e /etc/logrotate.d/vmsnap
test ! -e /etc/systemd/system/sysinit.target.wants/vmsnap-thaw.service
echo "deb-chroot-test: all checks passed"
CHECKS
start=$(date +%s)
# Time: the package's dependencies and the tools of the checks are in the
# one bootstrap download; dpkg runs under eatmydata (no fsync: the chroot is
# thrown away); man-db does not rebuild its index (man -w searches anyway).
mmdebstrap --variant=minbase --include=systemd,man-db,logrotate,python3,python3-cffi-backend \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    --aptopt='Acquire::Languages "none"' \
    --essential-hook='echo "man-db man-db/auto-update boolean false" | chroot "$1" debconf-set-selections' \
    --customize-hook="copy-in $deb /tmp" \
    --customize-hook="copy-in $checks /tmp" \
    --customize-hook='chroot "$1" sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/$(basename '"$deb"')"' \
    --customize-hook='chroot "$1" sh /tmp/'"$(basename "$checks")" \
    "$suite" /dev/null http://deb.debian.org/debian
echo "deb-chroot-test: $(( $(date +%s) - start )) s"
