#!/bin/sh
# usage (inside the guest's root, chrooted): guest-setup.sh WHEEL
# What a user does on a Debian 12 guest to make vmsnap qemu-ga's freeze hook,
# plus the test's application: PostgreSQL with data checksums, a pre-script
# that checkpoints it and a post-script that leaves a mark.
set -eu
wheel=$1

# vmsnap from the wheel, with Debian's cffi (the guest has no network)
python3 -m pip install --quiet --no-index --break-system-packages "$wheel"
rm -f "$wheel"
command -v vmsnap
vmsnap --version   # the installed package imports (every subpackage made it into the wheel)

# the hook, as examples/qemu-guest-agent/README.md says (first way)
install -o root -m 700 /tmp/vmsnap-hook /etc/qemu/vmsnap-fsfreeze-hook
rm -f /tmp/vmsnap-hook
printf '[general]\nfsfreeze-hook=/etc/qemu/vmsnap-fsfreeze-hook\n' >> /etc/qemu/qemu-ga.conf

# the scripts and the configuration: several disks, a failed pre-script fails
mkdir -p /etc/azure /etc/vmsnap-test /var/lib/vmsnap-test /data1 /data2 /thin
cat > /etc/vmsnap-test/pre.sh <<'EOF'
#!/bin/sh
# checkpoint the database; fail when the test asks for it
if [ -e /etc/vmsnap-test/fail-pre ]; then echo "pre-script: told to fail"; exit 1; fi
runuser -u postgres -- psql -qAtc CHECKPOINT
date +%s.%N > /var/lib/vmsnap-test/pre-ran
EOF
cat > /etc/vmsnap-test/post.sh <<'EOF'
#!/bin/sh
# leave a mark: the post-script ran, and when
date +%s.%N >> /var/lib/vmsnap-test/post-ran
EOF
chmod 700 /etc/vmsnap-test/pre.sh /etc/vmsnap-test/post.sh
cat > /etc/azure/VMSnapshotScriptPluginConfig.json <<'EOF'
{
  "pluginName": "ScriptRunner",
  "preScriptLocation": "/etc/vmsnap-test/pre.sh",
  "postScriptLocation": "/etc/vmsnap-test/post.sh",
  "timeoutInSeconds": 60,
  "continueBackupOnFailure": false,
  "fsFreezeEnabled": true,
  "freezeTimeoutInSeconds": 15
}
EOF
chmod 600 /etc/azure/VMSnapshotScriptPluginConfig.json

# disks: the root, two data disks (one ext4 each); the fourth is for LVM
cat > /etc/fstab <<'EOF'
LABEL=vmroot / ext4 defaults 0 0
LABEL=data1 /data1 ext4 defaults,nofail 0 0
LABEL=data2 /data2 ext4 defaults,nofail 0 0
EOF
echo vmsnap-guest > /etc/hostname

# PostgreSQL: data checksums on, local socket only
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
runuser -u postgres -- "/usr/lib/postgresql/$ver/bin/pg_checksums" --enable -D "/var/lib/postgresql/$ver/main" >/dev/null
echo "listen_addresses = ''" > "/etc/postgresql/$ver/main/conf.d/vmsnap-test.conf"
systemctl enable postgresql >/dev/null 2>&1
# the cluster's unit starts and stops it with pg_ctl itself, as Debian's
# pg_ctlcluster does (the same configuration, log file and pid file): that
# Perl wrapper took 10-20 s of each boot of an emulated guest.  Before the
# start, as pg_ctlcluster does, a postmaster.pid left by a power cut is removed
# unless its pid is a running postgres server: after a reboot that pid may be another
# process's, and the postmaster may then refuse to start
mkdir -p /usr/local/lib/vmsnap-test
cat > /usr/local/lib/vmsnap-test/pg-stale-pid <<'EOF'
#!/bin/sh
# usage: pg-stale-pid DATADIR
f=$1/postmaster.pid
[ -e "$f" ] || exit 0
pid=$(head -n 1 "$f")
case $pid in
    ''|*[!0-9]*) ;;
    *) case $(readlink "/proc/$pid/exe" 2>/dev/null) in */bin/postgres) exit 0 ;; esac ;;
esac
rm -f "$f"
echo "removed the stale $f (pid ${pid:-none})"
EOF
chmod 755 /usr/local/lib/vmsnap-test/pg-stale-pid
mkdir -p "/etc/systemd/system/postgresql@$ver-main.service.d"
pgbin=/usr/lib/postgresql/$ver/bin
cat > "/etc/systemd/system/postgresql@$ver-main.service.d/vmsnap-test.conf" <<EOF
[Service]
User=postgres
Group=postgres
ExecStartPre=/usr/local/lib/vmsnap-test/pg-stale-pid /var/lib/postgresql/$ver/main
ExecStart=
ExecStart=$pgbin/pg_ctl start -w -t 3600 -s -D /var/lib/postgresql/$ver/main -l /var/log/postgresql/postgresql-$ver-main.log -o "-c config_file=/etc/postgresql/$ver/main/postgresql.conf"
ExecStop=
ExecStop=$pgbin/pg_ctl stop -w -t 3600 -m fast -s -D /var/lib/postgresql/$ver/main
ExecReload=
ExecReload=$pgbin/pg_ctl reload -s -D /var/lib/postgresql/$ver/main
EOF

# the test's database, made here rather than in the emulated guest: pgbench's
# tables (scale 2), amcheck, and the table of marks the tests commit
mkdir -p /var/run/postgresql
chown postgres:postgres /var/run/postgresql
pgctl="runuser -u postgres -- /usr/lib/postgresql/$ver/bin/pg_ctl -D /var/lib/postgresql/$ver/main -w"
$pgctl -l /tmp/pg-setup.log -o "-c config_file=/etc/postgresql/$ver/main/postgresql.conf" start \
    || { cat /tmp/pg-setup.log; exit 1; }
runuser -u postgres -- createdb bench
runuser -u postgres -- pgbench -i -q -s 2 bench >/dev/null 2>&1
runuser -u postgres -- psql -qAtX -v ON_ERROR_STOP=1 -d bench \
    -c 'CREATE EXTENSION amcheck; CREATE TABLE marks (token text PRIMARY KEY, at timestamptz DEFAULT now())'
$pgctl stop -m fast >/dev/null
rm -f /tmp/pg-setup.log

# a quicker boot under emulation: nothing periodic, no console login (nor
# getty-static's gettys on tty2-6), and no lvm2-monitor, which runs before the
# local filesystems are mounted to monitor logical volumes that do not exist
# at boot here (the LVM test makes its own; lvcreate starts dmeventd itself)
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer man-db.timer systemd-timesyncd.service getty@tty1.service \
    serial-getty@ttyS0.service getty-static.service lvm2-monitor.service >/dev/null 2>&1
passwd -d root >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/*
