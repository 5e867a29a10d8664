"""vmsnap in a real QEMU guest whose disks the host snapshots through the
guest agent, as libvirt's --quiesce, Proxmox and OpenStack do: the host
sends guest-fsfreeze-freeze, takes an external qcow2 snapshot of the running
disks (blockdev-snapshot-sync), sends guest-fsfreeze-thaw.  Inside the guest
qemu-ga calls vmsnap (installed from the wheel, wired as the README says) as
its fsfreeze hook.  The proofs come from the snapshot itself, booted in a
second VM.  The tests run in file order and share one guest."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid

import pytest
from conftest import figure
from hostvm import AgentError

pytestmark = pytest.mark.ci_required

FREEZE_TIMEOUT = 15          # freezeTimeoutInSeconds in the guest's configuration
BOOT_TIMEOUT = 480
PGBENCH_S = 30               # pgbench runs through the host's freeze, snapshot and thaw
PG = "runuser -u postgres -- "
PSQL = PG + "psql -qAtX -v ON_ERROR_STOP=1 -d bench "
PROBE = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while True:
    os.write(fd, b"%.6f\n" % time.time())
    os.fdatasync(fd)
    time.sleep(0.1)
"""


class Guest:
    """The shared guest and what the tests learn about it."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.vm = None
        self.disks = {}            # id -> (path, format): the current top of each chain
        self.token = None
        self.snapshot_backing = {}  # id -> (path, format): the snapshot (read-only)
        self.proof = None           # the VM booted from the snapshot, while it runs

    def boot(self, name):
        vm = self.fleet.machine(name, [(i, p, f) for i, (p, f) in self.disks.items()])
        vm.start()
        self.vm = vm        # the tests after a failed boot check run on this guest
        boot_s = vm.wait_agent(BOOT_TIMEOUT)
        pg_s = wait_postgres(vm)
        wait_mounted(vm, ("/data1", "/data2"))
        return boot_s, pg_s


def wait_mounted(vm, mounts, timeout=60):
    """The data disks are mounted by fstab (nofail), possibly after qemu-ga
    is up: wait for them."""
    check = " && ".join("findmnt -n %s >/dev/null" % m for m in mounts)
    deadline = time.monotonic() + timeout
    while vm.sh(check, check=False)[0] != 0:
        if time.monotonic() > deadline - timeout / 2:
            vm.sh("mount -a", check=False)     # systemd gave up on a slow device
        if time.monotonic() > deadline:
            raise TimeoutError("not mounted in the guest: %s\n%s" % (
                mounts, vm.sh("findmnt -rn; journalctl -b --no-pager | grep -i data | tail", check=False)[1]))
        time.sleep(1)


def wait_postgres(vm, timeout=180) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, _ = vm.sh(PG + "pg_isready -q", check=False)
        if code == 0:
            return time.monotonic() - vm.started
        time.sleep(1)
    raise TimeoutError("PostgreSQL did not start in the guest:\n" + vm.sh(
        "journalctl -u postgresql@15-main --no-pager | tail -20; "
        "echo '-- its log:'; tail -30 /var/log/postgresql/postgresql-15-main.log; "
        "echo '-- its pid file:'; cat /var/lib/postgresql/15/main/postmaster.pid; "
        "echo '-- postgres processes:'; ps -u postgres -o pid,ppid,args", check=False)[1])


def guest_log(vm) -> list:
    """The result objects in the guest's /var/log/vmsnap.log, oldest first."""
    _, text = vm.sh("cat /var/log/vmsnap.log", check=False)
    out = []
    for line in text.splitlines():
        if " INFO result {" in line:
            out.append(json.loads(line.split(" INFO result ", 1)[1]))
    return out


def lines(vm, path) -> list:
    _, text = vm.sh("cat %s 2>/dev/null" % path, check=False)
    return [float(x) for x in text.split()]


def largest_gap(stamps, after=0.0):
    """(start, end) of the longest pause of the probe writer after `after`."""
    best = (0.0, 0.0)
    for a, b in zip(stamps, stamps[1:]):
        if a >= after and b - a > best[1] - best[0]:
            best = (a, b)
    return best


def make_disk(fleet, name, label=None, size="256M"):
    path = os.path.join(fleet.dir, name)
    os.system("truncate -s %s %s" % (size, path))
    if label:
        assert os.system("mkfs.ext4 -q -F -L %s %s" % (label, path)) == 0
    return path


@pytest.fixture(scope="module")
def guest(fleet, accel):
    g = Guest(fleet)
    root = fleet.overlay("root-live.qcow2", os.path.join(os.environ["VMSNAP_VM_IMAGE"],
                                                         "root.qcow2"), "qcow2")
    g.disks = {"root": (root, "qcow2"),
               "data1": (make_disk(fleet, "data1.raw", "data1"), "raw"),
               "data2": (make_disk(fleet, "data2.raw", "data2"), "raw"),
               "lvm": (make_disk(fleet, "lvm.raw", None, "640M"), "raw")}
    boot_s, pg_s = g.boot("guest")
    figure("boot: QEMU start to qemu-ga answering guest-ping (%s)" % accel, round(boot_s, 1), "s")
    figure("boot: QEMU start to PostgreSQL accepting connections", round(pg_s, 1), "s")
    vm = g.vm     # the database (pgbench -i -s 2, amcheck, marks) is in the image
    vm.sh("cat > /root/probe.py <<'EOF'\n%s\nEOF" % PROBE)
    vm.spawn("exec python3 /root/probe.py /var/lib/vmsnap-test/probe")
    yield g
    fleet.kill_all()


@pytest.fixture(autouse=True)
def never_left_frozen(request):
    """A failed test must not leave the shared guest frozen for the next."""
    yield
    g = request.node.funcargs.get("guest")
    if g is None or g.vm is None or g.vm.proc.poll() is not None or g.proof is not None:
        return           # (paused while the snapshot VM runs)
    try:
        if g.vm.qga("guest-fsfreeze-status") == "frozen":
            g.vm.qga("guest-fsfreeze-thaw")
    except Exception as e:     # noqa: BLE001 -- the test's own failure is what matters
        print("could not thaw the guest after the test: %s" % e)


# -- 1. the image ----------------------------------------------------------------

def test_guest_runs_vmsnap_from_the_wheel_as_qemu_ga_hook(guest):
    vm = guest.vm
    _, out = vm.sh("vmsnap --version; cat /etc/qemu/qemu-ga.conf; "
                   "python3 -c 'import vmsnap_native; print(vmsnap_native.__file__)'; uname -r")
    assert "fsfreeze-hook=/etc/qemu/vmsnap-fsfreeze-hook" in out
    assert out.startswith("vmsnap "), out           # it runs (imports every module it needs)
    assert "/usr/local/lib/python3" in out          # installed from the wheel, not a checkout
    _, mounts = vm.sh("findmnt -rno TARGET,SOURCE -t ext4")
    assert "/data1 /dev/vdb" in mounts and "/data2 /dev/vdc" in mounts, mounts
    figure("guest kernel", out.strip().splitlines()[-1])
    _, boot = vm.sh("timeout 60 systemctl is-system-running --wait >/dev/null; "
                    "systemd-analyze time | head -1; systemd-analyze blame | head -5", check=False)
    figure("guest boot (systemd-analyze)", " | ".join(x.strip() for x in boot.splitlines()))


# -- 2 and 3. the host's snapshot, and the proof from it -------------------------

def test_host_freeze_snapshot_thaw_under_pgbench(guest):
    vm = guest.vm
    vm.spawn("cd /var/lib/postgresql && exec " + PG + "pgbench -T %d -c 2 -j 2 -l "
             "--log-prefix=/var/lib/postgresql/pgb bench > /var/lib/vmsnap-test/pgbench.out 2>&1"
             % PGBENCH_S)
    time.sleep(4)
    guest.token = uuid.uuid4().hex
    vm.sh(PSQL + "-c \"INSERT INTO marks (token) VALUES ('%s')\"" % guest.token)
    before = lines(vm, "/var/lib/vmsnap-test/probe")[-1]
    posts = len(lines(vm, "/var/lib/vmsnap-test/post-ran"))
    fleet = guest.fleet

    overlays = {i: fleet.overlay_path("%s-after-snap.qcow2" % i) for i in guest.disks}
    t0 = time.monotonic()
    frozen = vm.qga("guest-fsfreeze-freeze")
    t1 = time.monotonic()
    try:
        snap_s = vm.snapshot(overlays)
        t2 = time.monotonic()
    finally:
        thawed = vm.qga("guest-fsfreeze-thaw")
        t3 = time.monotonic()

    assert frozen == thawed >= 3, (frozen, thawed)      # /, /data1, /data2
    guest.snapshot_backing = dict(guest.disks)
    guest.disks = {i: (p, "qcow2") for i, p in overlays.items()}
    figure("host: guest-fsfreeze-freeze (pre-script included), filesystems frozen",
           "%.2f s, %d" % (t1 - t0, frozen))
    figure("host: blockdev-snapshot-sync of 4 disks (one transaction)", round(snap_s * 1000, 1), "ms")
    figure("host: guest-fsfreeze-thaw (post-script included)", round(t3 - t2, 2), "s")
    figure("host: freeze returned to thaw returned", round(t3 - t1, 2), "s")

    # the guest's side: vmsnap's result, the window a writer saw
    res = guest_log(vm)[-1]
    assert (res["status"], res["consistency"], res["errors"]) == ("success", "application", [])
    assert res["pre_script"]["exit_code"] == 0 and res["post_script"]["exit_code"] == 0
    assert len(lines(vm, "/var/lib/vmsnap-test/post-ran")) == posts + 1
    g0, g1 = largest_gap(lines(vm, "/var/lib/vmsnap-test/probe"), before)
    figure("guest: freeze window seen by a writer on / (fdatasync every 0.1 s)", round(g1 - g0, 2), "s")
    assert g1 - g0 < t3 - t1 + 1.0

    # pgbench ran through it: no failed transaction, worst latency over the window
    deadline = time.monotonic() + 120
    while "tps =" not in vm.sh("cat /var/lib/vmsnap-test/pgbench.out", check=False)[1]:
        assert time.monotonic() < deadline, "pgbench did not finish"
        time.sleep(2)
    _, out = vm.sh("cat /var/lib/vmsnap-test/pgbench.out")
    assert "number of failed transactions: 0 " in out, out
    _, tx = vm.sh("cat /var/lib/postgresql/pgb.*")
    worst_all = worst_freeze = 0.0
    n = 0
    for row in tx.splitlines():
        f = row.split()
        assert f[2].isdigit(), "a failed transaction in pgbench's log: " + row
        lat = int(f[2]) / 1e6
        end = int(f[4]) + int(f[5]) / 1e6
        n += 1
        worst_all = max(worst_all, lat)
        if end - lat <= g1 and end >= g0:
            worst_freeze = max(worst_freeze, lat)
    processed = [x for x in out.splitlines() if "actually processed" in x][0].split(": ")[1]
    figure("pgbench (2 clients, %d s) transactions / failed" % PGBENCH_S, "%s / 0" % processed)
    figure("pgbench worst latency of a transaction spanning the freeze", round(worst_freeze * 1000), "ms")
    figure("pgbench worst latency overall", round(worst_all * 1000), "ms")
    assert n > 0 and worst_freeze > 0


def test_snapshot_boots_and_postgresql_is_whole(guest, libvirt):
    """A second VM boots from the snapshot's backing files (through throw-away
    overlays, so the snapshot stays untouched): crash recovery, the row
    committed before the freeze, amcheck, then a clean stop and pg_checksums.
    libvirt starts it (where libvirtd runs), so the next test snapshots it
    with virsh; the first guest waits, paused: two emulated guests are slow."""
    assert guest.snapshot_backing, "no snapshot was taken"
    fleet = guest.fleet
    disks = [(i, fleet.overlay("proof-%s.qcow2" % i, p, f), "qcow2")
             for i, (p, f) in guest.snapshot_backing.items()]
    if libvirt.startswith("no libvirt"):
        proof = fleet.machine("proof", disks)
    else:
        proof = fleet.libvirt_machine(libvirt, "proof", disks)
    guest.vm.qmp("stop")
    try:
        proof.start()
        boot_s = proof.wait_agent(BOOT_TIMEOUT)
        pg_s = wait_postgres(proof)
        figure("snapshot VM (started by %s): boot to qemu-ga / to PostgreSQL ready"
               % ("libvirt" if hasattr(proof, "uri") else "QEMU"),
               "%.1f s / %.1f s" % (boot_s, pg_s))
        _, n = proof.sh(PSQL + "-c \"SELECT count(*) FROM marks WHERE token = '%s'\"" % guest.token)
        assert n.strip() == "1", "the row committed before the freeze is not in the snapshot"
        _, idx = proof.sh(PSQL + "-c \"SELECT count(bt_index_check(c.oid, true)) FROM pg_index i "
                          "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                          "WHERE a.amname = 'btree' AND c.relpersistence = 'p'\"")
        _, heap = proof.sh(PSQL + "-c \"SELECT count(v.*) FROM pg_class c, verify_heapam(c.oid) v "
                           "WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace\"")
        assert heap.strip() == "0", "verify_heapam found corruption"
        _, rows = proof.sh(PSQL + "-c \"SELECT (SELECT count(*) FROM pgbench_accounts) + "
                           "(SELECT count(*) FROM pgbench_history) + (SELECT count(*) FROM marks)\"")
        figure("snapshot: btree indexes checked with heapallindexed / heap corruptions",
               "%s / 0" % idx.strip())
        figure("snapshot: rows checked (accounts + history + marks)", int(rows))
        proof.sh("systemctl stop postgresql@15-main")
        _, ck = proof.sh(PG + "/usr/lib/postgresql/15/bin/pg_checksums --check "
                         "-D /var/lib/postgresql/15/main")
        assert "Bad checksums:  0" in ck, ck
        blocks = [x for x in ck.splitlines() if "Blocks scanned" in x][0].split(":")[1].strip()
        figure("snapshot: pg_checksums --check after a clean stop, blocks / bad", "%s / 0" % blocks)
        proof.sh("systemctl start postgresql@15-main")
        guest.proof = proof
    finally:
        if guest.proof is None:
            release_proof(guest, proof)


def release_proof(guest, proof):
    """The snapshot VM goes, its throw-away disks with it; the first guest runs on."""
    proof.kill()
    for p in proof.disks:
        try:
            os.unlink(p[1])
        except OSError:
            pass
    guest.proof = None
    guest.vm.qmp("cont")


def test_virsh_snapshot_create_as_disk_only_quiesce(guest, libvirt):
    """libvirt's own path on the guest libvirt runs: `virsh snapshot-create-as
    --disk-only --quiesce` (libvirt freezes through qemu-ga, which calls
    vmsnap; snapshots every disk; thaws), with pgbench writing."""
    proof = guest.proof
    try:
        assert not libvirt.startswith("no libvirt"), libvirt
        assert proof is not None and hasattr(proof, "uri"), \
            "the snapshot VM did not run under libvirt"
        proof.spawn("exec python3 /root/probe.py /var/lib/vmsnap-test/probe-virsh")
        proof.spawn("cd /var/lib/postgresql && exec " + PG + "pgbench -T 25 -c 2 -j 2 bench "
                    "> /var/lib/vmsnap-test/pgbench-virsh.out 2>&1")
        deadline = time.monotonic() + 60
        while not lines(proof, "/var/lib/vmsnap-test/probe-virsh"):
            assert time.monotonic() < deadline, "the writer did not start in the guest"
            time.sleep(1)
        start = lines(proof, "/var/lib/vmsnap-test/probe-virsh")[0]
        posts = len(lines(proof, "/var/lib/vmsnap-test/post-ran"))
        runs = len(guest_log(proof))
        before = {t: s for t, s in (x.split() for x in proof.virsh("domblklist", proof.domain)
                                     .splitlines() if x.strip())}
        overlays = {t: os.path.join(guest.fleet.dir, "virsh-%s.qcow2" % t) for t in before}
        took = proof.snapshot_quiesced(overlays)
        after = {t: s for t, s in (x.split() for x in proof.virsh("domblklist", proof.domain)
                                    .splitlines() if x.strip())}
        assert after == overlays, after
        for t, path in overlays.items():
            chain = subprocess.run(["qemu-img", "info", "-U", "--output=json", path],
                                   capture_output=True, text=True, check=True).stdout
            assert json.loads(chain)["backing-filename"] == before[t], chain
        results = guest_log(proof)
        assert len(results) == runs + 1, "vmsnap did not run as the hook of libvirt's quiesce"
        res = results[-1]
        assert (res["status"], res["consistency"], res["errors"]) == ("success", "application", [])
        assert len(lines(proof, "/var/lib/vmsnap-test/post-ran")) == posts + 1
        deadline = time.monotonic() + 120
        while "tps =" not in proof.sh("cat /var/lib/vmsnap-test/pgbench-virsh.out", check=False)[1]:
            assert time.monotonic() < deadline, "pgbench did not finish"
            time.sleep(2)
        _, out = proof.sh("cat /var/lib/vmsnap-test/pgbench-virsh.out")
        assert "number of failed transactions: 0 " in out, out
        g0, g1 = largest_gap(lines(proof, "/var/lib/vmsnap-test/probe-virsh"), start)
        figure("virsh snapshot-create-as --disk-only --quiesce of %d disks took" % len(overlays),
               round(took, 2), "s")
        figure("virsh quiesce: freeze window seen by a writer on / in the guest",
               round(g1 - g0, 2), "s")
        figure("virsh quiesce: vmsnap's verdict in the guest / pgbench failed transactions",
               "%s, %s-consistent / 0" % (res["status"], res["consistency"]))
    finally:
        if proof is not None:
            release_proof(guest, proof)  # its disks go with the work directory


# -- 4. faults from the host's side ----------------------------------------------

def test_pre_script_fails_host_freeze_gets_error_and_nothing_stays_frozen(guest):
    vm = guest.vm
    posts = len(lines(vm, "/var/lib/vmsnap-test/post-ran"))
    vm.sh("touch /etc/vmsnap-test/fail-pre")
    try:
        with pytest.raises(AgentError) as err:
            vm.qga("guest-fsfreeze-freeze")
        assert vm.qga("guest-fsfreeze-status") == "thawed"
        assert vm.qmp("query-status")["status"] == "running"
        t0 = time.monotonic()
        vm.sh("echo written > /data1/after-abort && echo written > /var/lib/vmsnap-test/after-abort && sync",
              timeout=20)
        figure("pre-script failed: host's freeze error", err.value.error.get("desc", "")[:80])
        figure("pre-script failed: a write to / and /data1 right after took", round(time.monotonic() - t0, 2), "s")
    finally:
        vm.sh("rm -f /etc/vmsnap-test/fail-pre")
    res = guest_log(vm)[-1]
    assert res["status"] == "failed"
    assert "Pre-ScriptExecutionFailed" in [e["code"] for e in res["errors"]]
    assert len(lines(vm, "/var/lib/vmsnap-test/post-ran")) == posts + 1, "post-script did not run"


def _watchdog_case(guest, name, during, at_deadline=True):
    """Freeze from the host, then `during(vm)` makes sure no thaw comes in
    time; the guest's watchdog must thaw within freezeTimeoutInSeconds and
    run the post-script, long before the host's late thaw."""
    vm = guest.vm
    before = lines(vm, "/var/lib/vmsnap-test/probe")[-1]
    posts = len(lines(vm, "/var/lib/vmsnap-test/post-ran"))
    # the host learns that the post-script ran from the guest's console: while
    # qemu-ga believes the guest frozen it refuses guest-exec, so a watcher
    # started before the freeze (a unit of its own, not qemu-ga's child)
    # writes a line to the kernel log once the post-script has left its mark
    marker = "vmsnap-test-post-ran-%s" % uuid.uuid4().hex[:12]
    vm.spawn("while [ \"$(cat /var/lib/vmsnap-test/post-ran 2>/dev/null | wc -l)\" -le %d ]; "
             "do sleep 0.2; done; echo '<3>%s' > /dev/kmsg" % (posts, marker))
    during(vm)
    frozen_at = time.monotonic()
    deadline = frozen_at + FREEZE_TIMEOUT + 30
    while marker not in vm.console_tail(200000):
        assert time.monotonic() < deadline, \
            "no post-script within %d s of the freeze: nothing thawed the guest" % (FREEZE_TIMEOUT + 30)
        time.sleep(0.5)
    figure("%s: the host saw the post-script's mark after" % name,
           round(time.monotonic() - frozen_at, 1), "s")
    # a new host connection: what does the agent say, then the late thaw
    vm.wait_agent(60)
    status = vm.qga("guest-fsfreeze-status")
    late_thaw = time.time()
    try:
        vm.qga("guest-fsfreeze-thaw")
        thaw_reply = "ok"
    except AgentError as e:
        thaw_reply = "error: " + e.error.get("desc", "")[:70]
    figure("%s: agent's status before the late thaw / late thaw's reply" % name,
           "%s / %s" % (status, thaw_reply))
    g0, g1 = largest_gap(lines(vm, "/var/lib/vmsnap-test/probe"), before)
    figure("%s: writer on / paused for (watchdog at %d s)" % (name, FREEZE_TIMEOUT), round(g1 - g0, 2), "s")
    assert g1 - g0 < FREEZE_TIMEOUT + 8, (g0, g1)
    if at_deadline:
        assert g1 - g0 > FREEZE_TIMEOUT - 3, (g0, g1)
    post = lines(vm, "/var/lib/vmsnap-test/post-ran")
    assert len(post) >= posts + 1, "post-script did not run"
    assert post[posts] < g1 + 10
    # (the watcher's mark was on the console before the host sent its late
    # thaw: the watchdog ran the post-script, not the late thaw)
    errors = guest_log(vm)[-1]["errors"]         # the session this test opened
    figure("%s: vmsnap.log" % name, "; ".join("%s: %s" % (e["code"], e["message"][:90])
                                                for e in errors))
    if at_deadline:
        assert "FsFreezeTimeout" in [e["code"] for e in errors], errors
    assert errors, "the snapshot is not reported as inconsistent"
    return late_thaw


def test_host_never_thaws_watchdog_thaws_and_runs_post_script(guest):
    def host_dies_after_freeze(vm):
        conn = vm.agent()
        assert conn.execute("guest-fsfreeze-freeze") >= 3
        conn.close()                # the host side vanishes: no thaw
    _watchdog_case(guest, "host never thaws", host_dies_after_freeze)


def test_qemu_ga_killed_mid_freeze_watchdog_thaws(guest):
    def kill_agent_once_frozen(vm):
        vm.sh("touch /run/killer-start")
        # the session file appears when the hook's session begins, before the
        # pre-script; the agent freezes once its hook (its child) has returned
        vm.spawn("until [ /run/vmsnap/hook-qemu-ga.json -nt /run/killer-start ]; do sleep 0.2; done; "
                 "while pgrep -P \"$(pidof qemu-ga)\" >/dev/null; do sleep 0.2; done; "
                 "sleep 3; pkill -KILL -x qemu-ga")
        assert vm.qga("guest-fsfreeze-freeze") >= 3
    # systemd stops the agent's unit when its main process dies: vmsnap's
    # watchdog, in the same cgroup, may end the session at once (earlier
    # than the deadline), never later
    _watchdog_case(guest, "qemu-ga SIGKILLed mid-freeze", kill_agent_once_frozen, at_deadline=False)
    _, restarts = guest.vm.sh("systemctl show -p NRestarts qemu-guest-agent")
    figure("qemu-ga SIGKILLed mid-freeze: systemd restarts of qemu-ga", restarts.strip())


def test_qemu_killed_mid_freeze_guest_boots_and_postgresql_recovers(guest):
    vm = guest.vm
    vm.spawn("cd /var/lib/postgresql && exec " + PG + "pgbench -T 60 -c 2 -j 2 bench >/dev/null 2>&1")
    time.sleep(4)
    token = uuid.uuid4().hex
    vm.sh(PSQL + "-c \"INSERT INTO marks (token) VALUES ('%s')\"" % token)
    assert vm.qga("guest-fsfreeze-freeze") >= 3
    vm.kill()                                   # the power cord, while frozen
    boot_s, pg_s = guest.boot("guest-after-kill")
    figure("QEMU SIGKILLed mid-freeze: reboot to qemu-ga / to PostgreSQL ready",
           "%.1f s / %.1f s" % (boot_s, pg_s))
    vm = guest.vm
    _, n = vm.sh(PSQL + "-c \"SELECT count(*) FROM marks WHERE token = '%s'\"" % token)
    assert n.strip() == "1"
    _, heap = vm.sh(PSQL + "-c \"SELECT count(v.*) FROM pg_class c, verify_heapam(c.oid) v "
                    "WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace\"")
    assert heap.strip() == "0"
    _, rec = vm.sh("grep -iE 'not properly shut down|redo (starts|done)' "
                   "/var/log/postgresql/postgresql-15-main.log | tail -3", check=False)
    assert "redo" in rec, "no crash recovery in PostgreSQL's log: " + rec
    figure("QEMU SIGKILLed mid-freeze: PostgreSQL's recovery",
           " | ".join(x.split(" LOG: ")[-1].strip() for x in rec.splitlines()))
    vm.spawn("exec python3 /root/probe.py /var/lib/vmsnap-test/probe")


def test_a_stale_postmaster_pid_naming_another_process_does_not_stop_postgresql(guest):
    """After a power cut the postmaster.pid's pid may be another process's in
    the next boot; one owned by postgres makes the postmaster refuse to start.
    The guest's unit removes such a file first, as Debian's pg_ctlcluster
    does (the CI run that found it: PostgreSQL did not start after the kill)."""
    vm = guest.vm
    data = "/var/lib/postgresql/15/main"
    # a postgres-owned process that is not a postmaster, its command line
    # naming postgres (as `psql -U postgres` does)
    vm.spawn("exec runuser -u postgres -- bash -c 'exec -a postgres sleep 600'")
    _, other = vm.sh("for i in $(seq 50); do p=$(pgrep -u postgres -x sleep) && "
                     "{ echo $p; exit 0; }; sleep 0.1; done; exit 1")
    other = other.split()[0]
    _, pidfile = vm.sh("cat %s/postmaster.pid" % data)
    vm.sh("systemctl stop postgresql@15-main")
    stale = "\n".join([other] + pidfile.splitlines()[1:]) + "\n"
    vm.sh("printf '%%b' %s > %s/postmaster.pid && chown postgres:postgres %s/postmaster.pid"
          % (shlex.quote(stale), data, data))
    code, out = vm.sh("systemctl start postgresql@15-main", check=False)
    assert code == 0, out + vm.sh("tail -5 /var/log/postgresql/postgresql-15-main.log",
                                  check=False)[1]
    wait_postgres(vm, timeout=60)
    _, log = vm.sh("journalctl -b -u postgresql@15-main --no-pager | grep 'removed the stale'",
                   check=False)
    assert "pid %s" % other in log, log
    vm.sh("pkill -u postgres -x sleep", check=False)


# -- 5. inside the guest: real device-mapper, two disks --------------------------

def test_vmsnap_run_with_lvm_thin_snapshot_step(guest):
    vm = guest.vm
    vm.sh("pvcreate -q /dev/vdd && vgcreate -q vmsnapvg /dev/vdd && "
          "lvcreate -q -L 400M -T vmsnapvg/pool && lvcreate -q -V 300M -T vmsnapvg/pool -n data && "
          "mkfs.ext4 -q /dev/vmsnapvg/data && mount /dev/vmsnapvg/data /thin && "
          "echo before-snapshot > /thin/mark && sync")
    code, out = vm.sh("vmsnap run --json --mount /thin -- lvcreate -q -s -n snap1 vmsnapvg/data",
                      check=False)
    res = json.loads(out[out.index("{"):out.rindex("}") + 1])
    figure("LVM thin: vmsnap run status / consistency / window",
           "%s / %s / %s ms" % (res["status"], res["consistency"], res["freeze"]["window_ms"]))
    assert [m["mountpoint"] for m in res["freeze"]["mounts"] if m["frozen"]] == ["/thin"]
    assert res["post_script"]["exit_code"] == 0
    if res["status"] == "success":
        assert code == 0, out
        vm.sh("echo after-snapshot > /thin/mark && lvchange -q -ay -K vmsnapvg/snap1 && "
              "mkdir -p /mnt/snap1 && mount -o ro /dev/vmsnapvg/snap1 /mnt/snap1")
        _, mark = vm.sh("cat /mnt/snap1/mark")
        assert mark.strip() == "before-snapshot"
        vm.sh("umount /mnt/snap1")
        figure("LVM thin: lvcreate -s while frozen took", res["snapshot"]["duration_ms"], "ms")
        return
    # Before Linux 6.8 device-mapper's suspend freezes the filesystem itself
    # and fails (EBUSY) on one that FIFREEZE already froze: vmsnap must say
    # so, thaw, and run the post-script
    _, release = vm.sh("uname -r")
    assert tuple(int(x) for x in release.split("-")[0].split(".")[:2]) < (6, 8), out
    assert (code, res["status"]) == (1, "failed"), out
    assert "SnapshotFailed" in [e["code"] for e in res["errors"]]
    vm.sh("echo after > /thin/mark && sync", timeout=30)
    said = [x for x in res["snapshot"]["output"].splitlines() if x.strip()]
    figure("LVM thin on %s: lvcreate -s of the frozen LV (exit %s)" % (release.strip(),
           res["snapshot"]["exit_code"]), said[-1].strip() if said else "")
    # there: the pre-script quiesces, device-mapper's suspend freezes for the instant
    vm.sh("python3 -c 'import json; p = \"/etc/azure/VMSnapshotScriptPluginConfig.json\"; "
          "c = json.load(open(p)); c[\"fsFreezeEnabled\"] = False; "
          "json.dump(c, open(\"/etc/vmsnap-test/nofreeze.json\", \"w\"))' && "
          "chmod 600 /etc/vmsnap-test/nofreeze.json && echo before-snapshot > /thin/mark && sync")
    code, out = vm.sh("vmsnap run --json --config /etc/vmsnap-test/nofreeze.json --mount /thin "
                      "-- lvcreate -q -s -n snap1 vmsnapvg/data", check=False)
    res = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert (code, res["status"], res["consistency"]) == (0, "success", "application"), out
    vm.sh("echo after-snapshot > /thin/mark && lvchange -q -ay -K vmsnapvg/snap1 && "
          "mkdir -p /mnt/snap1 && mount -o ro /dev/vmsnapvg/snap1 /mnt/snap1")
    _, mark = vm.sh("cat /mnt/snap1/mark")
    vm.sh("umount /mnt/snap1")
    assert mark.strip() == "before-snapshot"
    figure("LVM thin, fsFreezeEnabled false: status / consistency / lvcreate -s took",
           "%s / %s / %.0f ms" % (res["status"], res["consistency"], res["snapshot"]["duration_ms"]))


def test_two_disks_the_verdict_needs_both(guest):
    vm = guest.vm
    two = "vmsnap run --json --mount /data1 --mount /data2"
    code, out = vm.sh(two, check=False)
    res = json.loads(out[out.index("{"):out.rindex("}") + 1])
    frozen = sorted(m["mountpoint"] for m in res["freeze"]["mounts"] if m["frozen"])
    assert (code, res["status"], res["consistency"], frozen) == \
        (0, "success", "application", ["/data1", "/data2"]), out
    figure("two disks: freeze window of /data1 + /data2", res["freeze"]["window_ms"], "ms")
    vm.sh("touch /etc/vmsnap-test/fail-pre")
    try:
        code2, out2 = vm.sh(two + " -- touch /var/lib/vmsnap-test/snapshot-step-ran", check=False)
        code1, out1 = vm.sh("vmsnap run --json --mount /data1", check=False)
    finally:
        vm.sh("rm -f /etc/vmsnap-test/fail-pre")
    r2 = json.loads(out2[out2.index("{"):out2.rindex("}") + 1])
    r1 = json.loads(out1[out1.index("{"):out1.rindex("}") + 1])
    figure("pre-script fails, two disks / one disk (continueBackupOnFailure false)",
           "%s (exit %d) / %s, %s (exit %d)" % (r2["status"], code2, r1["status"], r1["consistency"], code1))
    assert r2["status"] == "failed" and code2 == 1 and r2["snapshot"] is None
    assert vm.sh("test -e /var/lib/vmsnap-test/snapshot-step-ran", check=False)[0] != 0
    assert r1["status"] == "degraded" and code1 == 3
