"""The files vmsnap writes as root outside its runtime directory (the
metrics textfile, the log), against the user who owns their directory.

node_exporter's textfile directory often belongs to its service user; here
that user is made for the module (and removed at its end), owns the metrics
directory and tries, while root writes, to make root change the mode of a
root-only file, read it, or hang on a FIFO or on /dev/zero.  Owning the
directory lets them make a write fail, nothing more."""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vmsnap_native import metrics, opsfile
from vmsnap_native.logbook import Logbook

from .conftest import root_only
from .helpers import setup_scripts

EXPORTER_PREFIX = "vmsnap-exporter-"
EXPORTER = EXPORTER_PREFIX + str(os.getpid())
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
VMSNAP = os.path.join(os.path.dirname(sys.executable), "vmsnap")
WRITES = 3000        # metrics writes while the attacker swaps (at least)
RACE_BOUND_S = 60.0  # more writes until one of its swaps has landed, at most this long
RUN_BOUND_S = 60     # a run that holds the run lock must end well within this


def _userdel(name):
    if subprocess.run(["userdel", name], capture_output=True).returncode not in (0, 6):
        raise AssertionError("could not remove the user %s" % name)   # 6: no such user


@pytest.fixture(scope="module")
def exporter():
    """An unprivileged user in the role of node_exporter's (its name carries
    our pid, so parallel runs do not share it), removed at the end, with those
    of earlier runs killed before their teardown."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the attacker is another user)")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not available")
    for pw in pwd.getpwall():
        m = re.fullmatch(re.escape(EXPORTER_PREFIX) + r"(\d+)", pw.pw_name)
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            _userdel(pw.pw_name)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    EXPORTER], check=True)
    try:
        yield pwd.getpwnam(EXPORTER)
    finally:
        _userdel(EXPORTER)


def as_user(pw, *argv, **kw):
    return subprocess.Popen(["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid,
                             "--clear-groups", *argv], **kw)


@pytest.fixture
def arena(exporter):
    """A root-owned 755 directory that the exporter's user can reach (pytest's
    own base directory is 0700), with a textfile directory owned by that user
    and a root-only 0600 file in a root-only directory."""
    # tmpfs where there is one: 3000 fsyncs on a disk take a minute, and the race is about names
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "/tmp"
    d = Path(tempfile.mkdtemp(prefix="vmsnap-ops-", dir=shm))
    os.chmod(d, 0o755)
    textfile = d / "textfile"
    textfile.mkdir()
    os.chown(textfile, exporter.pw_uid, exporter.pw_gid)
    private = d / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret"
    secret.write_text("root's secret\n")
    os.chmod(secret, 0o600)
    try:
        yield d, textfile, secret, exporter
    finally:
        shutil.rmtree(d, ignore_errors=True)


def result(status="success"):
    return {"status": status, "consistency": "application", "errors": [], "warnings": [],
            "pre_script": None, "post_script": None, "snapshot": None, "duration_ms": 1.0,
            "freeze": {"enabled": True, "window_ms": 1.0, "deadline_hit": False, "mounts": []}}


# The attacker, as the exporter's user, in the directory it owns: every temp file it sees
# is replaced by a symlink to SECRET (between root's write and root's chmod,
# if root chmods by name).  On SIGTERM it prints how many swaps it made.
SWAPPER = r'''
import os, signal, sys
d, secret = sys.argv[1:]
count = {"swaps": 0}
def report(*_):
    print(count["swaps"], flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, report)
print("ready", flush=True)
link = os.path.join(d, "swap")
while True:
    try:
        entries = os.listdir(d)
    except OSError:
        continue
    for e in entries:
        if not e.endswith(".tmp"):
            continue
        try:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(secret, link)
            os.rename(link, os.path.join(d, e))
            count["swaps"] += 1
        except OSError:
            pass
'''


@root_only
def test_a_racing_directory_owner_cannot_make_root_chmod_or_read_another_file(arena):
    """The owner of the metrics directory swaps root's temp file for a
    symlink to a root-only 0600 file, thousands of times while root writes:
    the file's mode and contents never change.  (Root used to chmod the temp
    file by name: the target became 0644 on the first lucky swap.)"""
    base, textfile, secret, exporter = arena
    prom = textfile / "vmsnap.prom"
    before = os.stat(secret)
    script = base / "swapper.py"
    script.write_text(SWAPPER)
    attacker = as_user(exporter, PYTHON, str(script), str(textfile), str(secret),
                       stdout=subprocess.PIPE, text=True)
    landed = refused = i = 0
    try:
        assert attacker.stdout.readline().strip() == "ready"
        # WRITES writes, and on until a swap has landed just before root's rename
        # (the race really run; how soon depends on the machine's scheduling)
        give_up = time.monotonic() + RACE_BOUND_S
        while i < WRITES or (not landed and time.monotonic() < give_up):
            i += 1
            try:
                metrics.write_textfile(result(), str(prom), now=1000.0 + i)
            except metrics.MetricsFileError:
                refused += 1   # the owner can make a write fail
            if os.path.islink(prom):
                # a swap landed before root's rename: root moved the link itself, not its
                # target; the next write would refuse it, so clear it (as an admin would)
                landed += 1
                os.unlink(prom)
            st = os.stat(secret)
            assert (st.st_mode, st.st_uid, st.st_nlink) == \
                (before.st_mode, before.st_uid, before.st_nlink), "write %d changed %s" % (i, secret)
    finally:
        attacker.send_signal(signal.SIGTERM)
        out, _ = attacker.communicate(timeout=30)
    swaps = int(out)
    assert secret.read_text() == "root's secret\n"
    assert oct(os.stat(secret).st_mode & 0o7777) == "0o600"
    # the race was really run: temp files were swapped, some just before root's rename
    assert swaps >= 50 and landed >= 1, (swaps, landed, refused, i)
    assert refused < i / 2, (swaps, landed, refused, i)


@root_only
@pytest.mark.parametrize("planted", ["fifo", "symlink-to-fifo", "symlink-to-dev-zero",
                                     "hard-link-to-root-file", "users-file"])
def test_what_the_directory_owner_plants_at_the_metrics_path_never_blocks_a_run(
        tmp_path, loopfs, arena, planted):
    """A FIFO (root's open would wait for a writer), a symlink to one, a
    symlink to /dev/zero (root's read never ends) or a link to a root file,
    put at the metrics path by the directory's owner: the run (which holds
    the run lock) ends in bounded time, its result says the metrics were
    not written and why, and nothing behind the path was touched."""
    base, textfile, secret, exporter = arena
    (m,) = loopfs.make(1)

    def plant(*argv):
        assert as_user(exporter, *argv).wait(timeout=60) == 0
    prom = textfile / "vmsnap.prom"
    fifo = textfile / "pipe"
    if planted == "fifo":
        plant("mkfifo", str(prom))
    elif planted == "symlink-to-fifo":
        plant("mkfifo", str(fifo))
        plant("ln", "-s", str(fifo), str(prom))
    elif planted == "symlink-to-dev-zero":
        plant("ln", "-s", "/dev/zero", str(prom))
    elif planted == "hard-link-to-root-file":
        # a root file in a directory only root can write, hard-linked by root's mistake
        victim = textfile / ".." / "victim.prom"
        victim.write_text('vmsnap_runs_total{status="success"} 41\n')
        os.link(victim, prom)
    else:
        plant("sh", "-c", "echo 'vmsnap_runs_total{status=\"success\"} 1e9' > %s" % prom)
    cfg = setup_scripts(tmp_path, metricsFile=str(prom))

    def limits():   # should the read of /dev/zero never end, it fails instead of eating memory
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    t = time.monotonic()
    p = subprocess.run([VMSNAP, "run", "--json", "--log-file", "", "--config", cfg,
                        "--mount", m, "--", "true"], capture_output=True, text=True,
                       timeout=RUN_BOUND_S, preexec_fn=limits)
    took = time.monotonic() - t
    res = json.loads(p.stdout)
    assert res["status"] == "success" and p.returncode == 0, (res, p.stderr[-2000:])
    notes = [w for w in res["warnings"] if str(prom) in w]
    assert notes and "not written" in notes[0], res["warnings"]
    assert took < RUN_BOUND_S / 2
    if planted.startswith("symlink"):
        assert os.path.islink(prom)   # not replaced either: the owner sees why in the warning
    if planted == "hard-link-to-root-file":
        assert os.stat(prom).st_nlink == 2 and "41" in prom.read_text()
    assert oct(os.stat(secret).st_mode & 0o777) == "0o600"


def test_replace_sets_the_mode_on_the_fd_whatever_the_umask(tmp_path):
    dfd = opsfile.open_directory(str(tmp_path))
    old = os.umask(0o077)
    try:
        opsfile.replace(dfd, "x.prom", b"a 1\n", mode=0o644)
    finally:
        os.umask(old)
        os.close(dfd)
    assert oct(os.stat(tmp_path / "x.prom").st_mode & 0o777) == "0o644"
    assert os.listdir(tmp_path) == ["x.prom"]


def test_temp_names_are_unpredictable_and_a_crash_leftover_is_never_reused(tmp_path,
                                                                        monkeypatch):
    """A temp file named after the pid collides with the one a crashed run of
    the same pid left; names here are random, and a failed write removes its own."""
    names = {opsfile.temp_name("vmsnap.prom") for _ in range(1000)}
    assert len(names) == 1000 and all(n.startswith(".vmsnap.prom.") and n.endswith(".tmp")
                                      for n in names)
    leftover = tmp_path / (".vmsnap.prom.%d.tmp" % os.getpid())
    leftover.write_text("left by a crash\n")
    dfd = opsfile.open_directory(str(tmp_path))
    try:
        opsfile.replace(dfd, "vmsnap.prom", b"a 1\n")

        def broken_fsync(fd):
            raise OSError(5, "Input/output error")
        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(OSError):
            opsfile.replace(dfd, "vmsnap.prom", b"a 2\n")
    finally:
        os.close(dfd)
    assert sorted(os.listdir(tmp_path)) == [leftover.name, "vmsnap.prom"]
    assert (tmp_path / "vmsnap.prom").read_text() == "a 1\n"


def test_reads_are_bounded_and_never_wait(tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(opsfile.MAX_READ_BYTES + 1)
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero")
    dfd = opsfile.open_directory(str(tmp_path))
    try:
        with pytest.raises(OSError, match="larger than"):
            opsfile.read_own(dfd, "big")
        with pytest.raises(OSError, match="FIFO"):
            opsfile.read_own(dfd, "fifo")
        with pytest.raises(OSError, match="symbolic link"):
            opsfile.read_own(dfd, "zero")
        assert opsfile.read_own(dfd, "missing") is None
    finally:
        os.close(dfd)


def test_a_symlinked_directory_is_refused_by_name(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "link")
    with pytest.raises(OSError, match="is a symbolic link, not a directory"):
        opsfile.open_directory(str(tmp_path / "link"))
    with pytest.raises(metrics.MetricsFileError, match="symbolic link"):
        metrics.write_textfile(result(), str(tmp_path / "link" / "vmsnap.prom"))


@pytest.mark.parametrize("planted", ["symlink", "fifo", "symlink-to-fifo", "hard-link"])
def test_the_log_refuses_what_is_planted_at_its_path(tmp_path, planted):
    """The log keeps its guarantees through the shared opener: a link, a FIFO
    (no writer waits: the open does not block) or a second name of another file."""
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    log = tmp_path / "vmsnap.log"
    if planted == "symlink":
        os.symlink(victim, log)
    elif planted == "fifo":
        os.mkfifo(log)
    elif planted == "symlink-to-fifo":
        os.mkfifo(tmp_path / "fifo")
        os.symlink(tmp_path / "fifo", log)
    else:
        os.link(victim, log)
    book = Logbook(str(log), journal=False)
    book.info("hello")
    book.close()
    assert book.open_error and str(log) in book.open_error
    assert victim.read_text() == "root's file\n"


def test_a_new_log_file_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        book = Logbook(str(tmp_path / "vmsnap.log"), journal=False)
        book.info("hello")
        book.close()
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "vmsnap.log").st_mode & 0o777) == "0o600"
    assert book.open_error is None
