"""Hostile input: an unprivileged user trying to make root run its file, and
configuration files made of arbitrary bytes.

The user is created for this module and removed at its end.  In the race
tests it runs as its own process, re-pointing links and exchanging directories
thousands of times, while the test checks the script with the policy and
runs what passed through ``process.run_process``, hundreds of times.  The
attacker's file writes a marker in a directory only root can write: if the
marker exists, root ran the attacker's file.  ``fs.protected_symlinks`` is
off during these tests, so that the kernel does not hide a policy defect.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnap_native import policy
from vmsnap_native.process import clean_environment, run_process

from .conftest import root_only
from .helpers import codes, run_json, vmsnap, write_config, write_script

pytestmark = root_only
ATTACKER_PREFIX = "vmsnap-attacker-"
ATTACKER = ATTACKER_PREFIX + str(os.getpid())
MIN_ATTEMPTS = 500        # checks (and runs, where the check passes) per race test
MIN_SWAPS = 5000          # ... and until the attacker tried this many swaps
MAX_SECONDS = 120         # a bound on both, for a badly loaded machine
PROTECTED_SYMLINKS = "/proc/sys/fs/protected_symlinks"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# The attacker, run as ATTACKER: plants its file (which records `id -u` in
# MARKER), then swaps without end; on SIGTERM prints "TRIES DONE".
ATTACK = r'''
import os, signal, sys
kind, marker, evil, *rest = sys.argv[1:]
count = {"tries": 0, "done": 0}
def report(*_):
    print(count["tries"], count["done"], flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, report)
def plant(path):
    with open(path, "w") as f:
        f.write("#!/bin/sh\necho evil\nid -u >> %s\n" % marker)
    os.chmod(path, 0o755)
def relink(link, target):
    tmp = link + ".swap"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, link)
if kind == "links":              # re-point LINK between GOOD and EVIL
    link, good = rest
    plant(evil)
    steps = [lambda: relink(link, evil), lambda: relink(link, good)]
else:                            # exchange directory DIR with EVIL (holding an evil NAME)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def exchange(a, b):          # renameat2(RENAME_EXCHANGE): DIR never stops existing
        if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")
    d, name = rest
    os.mkdir(evil)
    plant(os.path.join(evil, name))
    steps = [lambda: exchange(d, evil)]
def attempt(step):
    count["tries"] += 1
    try:
        step()
        count["done"] += 1
    except OSError:
        pass
attempt(steps[0])
print("ready", flush=True)
parent = os.getppid()
while os.getppid() == parent:    # the test died: stop too
    for step in steps * 100:
        attempt(step)
    print(count["tries"], flush=True)
'''


def _userdel(name):
    if subprocess.run(["userdel", name], capture_output=True).returncode not in (0, 6):
        raise AssertionError("could not remove the user %s" % name)   # 6: no such user


def _remove_leftovers():
    """Users of earlier runs that were killed before their teardown."""
    for pw in pwd.getpwall():
        m = re.fullmatch(re.escape(ATTACKER_PREFIX) + r"(\d+)", pw.pw_name)
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            _userdel(pw.pw_name)


@pytest.fixture(scope="module")
def attacker():
    """An unprivileged user made for these tests (its name carries our pid,
    so that parallel runs do not share it), removed at the end."""
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not available")
    _remove_leftovers()
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    ATTACKER], check=True)
    try:
        yield pwd.getpwnam(ATTACKER)
    finally:
        _userdel(ATTACKER)


@pytest.fixture
def arena():
    """A root-owned 755 directory under /tmp, which the attacker can reach
    (pytest's own base directory is 0700 and stays so)."""
    d = Path(tempfile.mkdtemp(prefix="vmsnap-hostile-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def unprotected_symlinks():
    """fs.protected_symlinks=0 during the test, as in many containers.  A
    guard in its own session puts the old value back when our end of its
    pipe closes: at teardown, or when the test process dies."""
    if not os.path.exists(PROTECTED_SYMLINKS):
        pytest.skip("no fs.protected_symlinks here")
    old = Path(PROTECTED_SYMLINKS).read_text().strip()
    guard = subprocess.Popen(["/bin/sh", "-c", 'read _; echo "$1" > "$2"', "guard", old,
                              PROTECTED_SYMLINKS], stdin=subprocess.PIPE, start_new_session=True)
    try:
        Path(PROTECTED_SYMLINKS).write_text("0\n")
        yield
    finally:
        guard.stdin.close()
        guard.wait(timeout=30)
        assert Path(PROTECTED_SYMLINKS).read_text().strip() == old


def mkdir(path, mode=0o755, owner=None):
    path.mkdir()
    os.chmod(path, mode)
    if owner:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def config_for(base, pre):
    etc = base / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    post = write_script(etc / "post.sh", "exit 0")
    return write_config(etc / "c.json", preScriptLocation=str(pre), postScriptLocation=post,
                        hooksDirectory=str(base / "nohooks"))


class Attack:
    """The attacker's process: ``tries()`` is how many swaps it attempted so
    far, ``stop()`` returns (tries, successful swaps)."""

    def __init__(self, user, *args):
        self.proc = subprocess.Popen([PYTHON, "-c", ATTACK, *map(str, args)], cwd="/",
                                     user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                                     env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                                     bufsize=0, start_new_session=True)
        assert self.proc.stdout.readline() == b"ready\n"
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.output = b""

    def tries(self) -> int:
        self.output += self.proc.stdout.read() or b""   # what it printed so far
        lines = self.output.split(b"\n")[:-1]
        return int(lines[-1].split()[0]) if lines else 0

    def stop(self) -> tuple:
        try:
            os.killpg(self.proc.pid, 15)
            os.set_blocking(self.proc.stdout.fileno(), True)
            out, _ = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        tries, done = map(int, (self.output + out).split(b"\n")[-2].split())
        return tries, done


def check_and_run(path, attacker) -> Counter:
    """Checks PATH and runs it when it passes, at least MIN_ATTEMPTS times
    and until the attacker tried MIN_SWAPS swaps (at most MAX_SECONDS);
    counts what happened each time."""
    outcomes = Counter()
    env = clean_environment({"PATH": policy.trusted_search_path()})
    end = time.monotonic() + MAX_SECONDS
    while sum(outcomes.values()) < MIN_ATTEMPTS or attacker.tries() < MIN_SWAPS:
        if time.monotonic() > end:
            break
        chk = policy.check_script(str(path), "pre")
        if not chk.ok:
            outcomes[("refused", chk.problem.code, chk.problem.message)] += 1
            continue
        res = run_process(list(chk.argv_prefix), timeout=30, env=env)
        outcomes[("ran", res.exit_code, res.output)] += 1
    return outcomes


def raced(user, path, marker, *attack) -> tuple:
    """check_and_run(PATH) while the attacker runs ATTACK; asserts it really
    tried, and that root never ran its file."""
    attacker = Attack(user, *attack)
    try:
        outcomes = check_and_run(path, attacker)
    finally:
        tries, done = attacker.stop()
    assert not marker.exists(), "root ran the attacker's file: %s" % dict(outcomes)
    assert tries >= MIN_SWAPS, "the attacker made only %d attempts" % tries
    attempts = sum(outcomes.values())
    assert attempts >= MIN_ATTEMPTS, "only %d checks of %d" % (attempts, MIN_ATTEMPTS)
    return outcomes, done


def only_refusals(outcomes, *words):
    """Every attempt was refused with 306, by a message naming WORDS.  Never
    Pre-ScriptNotFound: the attacker swaps links and directories atomically
    (rename(), renameat2(RENAME_EXCHANGE)), so the name always exists."""
    for what, code, message in outcomes:
        assert (what, code) == ("refused", "InsufficientPermissionforPre-Script"), dict(outcomes)
        assert all(str(w) in message for w in words), message


def only_good_runs(outcomes):
    assert set(outcomes) == {("ran", 0, "good\n")}, dict(outcomes)


@pytest.fixture
def good(arena):
    """A root-owned 700 script in a root-owned 755 directory: prints 'good'."""
    return Path(write_script(mkdir(arena / "safe") / "good.sh", "echo good"))


@pytest.mark.parametrize("swapped", ["script", "interpreter"])
def test_attackers_link_in_a_sticky_directory_is_refused_every_time(
        arena, attacker, good, unprotected_symlinks, swapped):
    # the attacker points its link at root's good file when vmsnap checks, at its own after
    sticky = mkdir(arena / "sticky", 0o1777)
    theirs = mkdir(arena / "theirs", owner=attacker)
    marker = arena / "pwned"
    link = sticky / ("pre.sh" if swapped == "script" else "interp")
    if swapped == "script":
        path, good_target = link, good
    else:   # root's own script, whose #! names the attacker's link
        path, good_target = write_script(good.parent / "pre.sh", "echo good",
                                         shebang="#!%s" % link), "/bin/sh"
    outcomes, swaps = raced(attacker, path, marker,
                            "links", marker, theirs / "evil", link, good_target)
    only_refusals(outcomes, "symlink %s" % link, "(%s)" % ATTACKER)
    assert swaps >= MIN_SWAPS


@pytest.mark.parametrize("swapped", ["script", "interpreter"])
def test_roots_link_in_a_sticky_directory_cannot_be_swapped(
        arena, attacker, good, unprotected_symlinks, swapped):
    sticky = mkdir(arena / "sticky", 0o1777)
    theirs = mkdir(arena / "theirs", owner=attacker)
    marker = arena / "pwned"
    link = sticky / ("pre.sh" if swapped == "script" else "interp")
    if swapped == "script":
        os.symlink(good, link)
        path, good_target = link, good
    else:
        os.symlink("/bin/sh", link)
        path, good_target = write_script(good.parent / "pre.sh", "echo good",
                                         shebang="#!%s" % link), "/bin/sh"
    outcomes, swaps = raced(attacker, path, marker,
                            "links", marker, theirs / "evil", link, good_target)
    only_good_runs(outcomes)
    assert swaps == 0   # the sticky bit: nobody but root renames root's entry


@pytest.mark.parametrize("parent_kind", ["sticky", "world-writable", "attackers"])
def test_directory_on_the_path_swapped(arena, attacker, unprotected_symlinks, parent_kind):
    # root's directory app/ (root-owned, 755, with a good 700 pre.sh) sits in a
    # directory where the attacker can create entries; it exchanges app/ with
    # its own directory (with its own pre.sh) atomically, back and forth
    mode, owner = {"sticky": (0o1777, None), "world-writable": (0o777, None),
                   "attackers": (0o755, attacker)}[parent_kind]
    parent = mkdir(arena / "parent", mode, owner)
    app = mkdir(parent / "app")
    pre = write_script(app / "pre.sh", "echo good")
    marker = arena / "pwned"
    outcomes, swaps = raced(attacker, pre, marker, "dirs", marker, parent / "evil", app, "pre.sh")
    if parent_kind == "sticky":
        only_good_runs(outcomes)
        assert swaps == 0
    else:
        only_refusals(outcomes, "directory %s" % parent)
        assert swaps >= MIN_SWAPS


def test_check_reports_the_attackers_link(arena, attacker, good, unprotected_symlinks):
    sticky = mkdir(arena / "sticky", 0o1777)
    link = sticky / "pre.sh"
    subprocess.run(["ln", "-s", str(good), str(link)], user=attacker.pw_uid,
                   group=attacker.pw_gid, extra_groups=[], check=True)
    p = vmsnap("check", "--json", "--config", config_for(arena, link))
    report = json.loads(p.stdout)
    assert p.returncode == 1 and [q["code"] for q in report["problems"]] == \
        ["InsufficientPermissionforPre-Script"]
    assert "symlink %s" % link in report["problems"][0]["message"]
    assert "(%s)" % ATTACKER in report["problems"][0]["message"]


def test_writable_directory_on_the_path(tmp_path, attacker, loopfs):
    (m,) = loopfs.make(1)
    d = tmp_path / "shared"
    d.mkdir()
    os.chown(d, 0, attacker.pw_gid)
    os.chmod(d, 0o775)   # group-writable: the attacker's group could swap the file
    pre = write_script(d / "pre.sh", "exit 0")
    rc, res, _ = run_json(tmp_path, config_for(tmp_path, pre), [m])
    assert codes(res) == ["InsufficientPermissionforPre-Script"]
    assert "writable by group or others" in res["errors"][0]["message"]


def test_script_owned_by_the_attacker_and_setuid(tmp_path, attacker, loopfs):
    (m,) = loopfs.make(1)
    etc = tmp_path / "s"
    etc.mkdir(mode=0o755)
    pre = write_script(etc / "pre.sh", "exit 0")
    os.chown(pre, attacker.pw_uid, attacker.pw_gid)
    os.chmod(pre, 0o700)
    rc, res, _ = run_json(tmp_path, config_for(tmp_path, pre), [m])
    assert codes(res) == ["InsufficientPermissionforPre-Script"] and "not root" in \
        res["errors"][0]["message"]
    os.chown(pre, 0, 0)
    os.chmod(pre, 0o4700)
    rc, res, _ = run_json(tmp_path, config_for(tmp_path, pre), [m])
    assert "setuid" in res["errors"][0]["message"]


def test_config_owned_by_the_attacker(tmp_path, attacker, loopfs):
    (m,) = loopfs.make(1)
    cfg = config_for(tmp_path, write_script(tmp_path / "pre.sh", "exit 0"))
    os.chown(cfg, attacker.pw_uid, attacker.pw_gid)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["InsufficientPermissionforJSONConfigFile"]
    assert res["pre_script"] is None


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"{}", b"[]", b"null", b'{"preScriptLocation": 1e999}',
                     b'{"a":' * 5000 + b'1' + b'}' * 5000, b'\xef\xbb\xbf{"x": 1}',
                     b'{"preScriptLocation": "/nonexistent", "postScriptLocation": "\\u0000"}']),
))
def test_any_config_bytes_through_the_cli_never_traceback(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("fuzz")
    cfg = d / "c.json"
    cfg.write_bytes(data)
    os.chmod(cfg, 0o600)
    p = vmsnap("run", "--dry-run", "--json", "--config", str(cfg), "--log-file", "")
    assert "Traceback" not in p.stderr, p.stderr
    res = json.loads(p.stdout)
    assert p.returncode in (0, 3)
    assert all(e["code"] in ("IncorrectJSONConfigFile", "Pre-ScriptNotFound",
                             "Post-ScriptNotFound", "InsufficientPermissionforPre-Script",
                             "InsufficientPermissionforPost-Script") for e in res["errors"])
    p = vmsnap("check", "--json", "--config", str(cfg))
    assert "Traceback" not in p.stderr and p.returncode in (0, 1)


@pytest.mark.parametrize("data,why", [
    (b'{"timeoutInSeconds": NaN}', "NaN is not valid JSON"),
    (b'{"timeoutInSeconds": Infinity}', "Infinity is not valid JSON"),
    (b'{"preScriptLocation": "/a", "preScriptLocation": "/b"}', "duplicate key 'preScriptLocation'"),
    (b'{"a": "' + b"x" * (1 << 20) + b'"}', "larger than 1048576 bytes"),
], ids=["nan", "infinity", "duplicate-key", "over-1MiB"])
def test_config_json_that_must_be_refused_through_the_cli(tmp_path, data, why):
    cfg = tmp_path / "c.json"
    cfg.write_bytes(data)
    os.chmod(cfg, 0o600)
    p = vmsnap("run", "--dry-run", "--json", "--config", str(cfg), "--log-file", "")
    res = json.loads(p.stdout)
    assert codes(res) == ["IncorrectJSONConfigFile"] and why in res["errors"][0]["message"]
    p = vmsnap("check", "--json", "--config", str(cfg))
    problems = json.loads(p.stdout)["problems"]
    assert p.returncode == 1 and [(q["code"], why in q["message"]) for q in problems] == \
        [("IncorrectJSONConfigFile", True)]
