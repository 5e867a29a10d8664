"""Adversarial review: attacks on the verdict, the clean-up and the policy,
each tried for real (loop filesystems, real processes, an unprivileged user
where the attack is by one).  A test here either proves a defect fixed or
proves an attack refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from vmsnap_native import policy
from vmsnap_native.process import clean_environment, run_process

from .conftest import frozen_state, root_only, thawed_soon
from .helpers import codes, helper_below, run_json, setup_scripts, write_script
from .test_signals import start_run, wait_for

pytestmark = root_only


# -- (c) the verdict ---------------------------------------------------------------

def test_fsfreeze_u_from_outside_during_the_snapshot_is_124(tmp_path, loopfs):
    """Someone runs `fsfreeze -u` while the snapshot step goes on: the step
    ran on a live filesystem, so the run must not say success."""
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s" % (tmp_path / "post-ran"))
    step = ["sh", "-c", "fsfreeze -u %s && echo hi > %s/written-mid-step" % (m, m)]
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=step)
    assert os.path.exists(m + "/written-mid-step")
    assert rc == 1 and res["status"] == "failed" and res["consistency"] is None, res
    assert codes(res) == ["FsThawedEarly"], res["errors"]
    assert m in res["errors"][0]["message"]
    assert (tmp_path / "post-ran").exists()
    assert not frozen_state(m)


# -- (b) nothing left frozen or running ------------------------------------------------

def _pids_with(tag):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if f.read().split(b"\0")[0].startswith(tag.encode()):
                        out.append(int(d))
            except OSError:
                pass
    return out


def _gone_soon(tag, timeout=15.0):
    end = time.monotonic() + timeout
    while _pids_with(tag):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("containment", ["cgroup", "subreaper"])
def test_sigkill_of_vmsnap_kills_a_setsid_step_child_that_ignores_sigterm(tmp_path, loopfs,
                                                                         containment):
    """vmsnap is SIGKILLed while the snapshot step has a setsid() child that
    ignores SIGTERM: the filesystem is thawed, the post-script runs, and no
    process of the step survives."""
    (m,) = loopfs.make(1)
    tag = "rv-step-%d-%s" % (os.getpid(), containment)
    cfg = setup_scripts(tmp_path, post="touch %s" % (tmp_path / "post-ran"))
    step = ("trap '' TERM; setsid bash -c \"trap '' TERM; exec -a %s sleep 300\" & "
            "touch %s; exec -a %s-2 sleep 301" % (tag, tmp_path / "snap", tag))
    env_key = "VMSNAP_COMPAT_DISABLE"
    old = os.environ.get(env_key)
    os.environ[env_key] = "cgroup" if containment == "subreaper" else ""
    try:
        proc = start_run(tmp_path, cfg, [m], snapshot=["bash", "-c", step],
                         extra=["--freeze-timeout", "30"])
    finally:
        if old is None:
            del os.environ[env_key]
        else:
            os.environ[env_key] = old
    try:
        wait_for(tmp_path / "snap")
        time.sleep(0.3)
        assert len(_pids_with(tag)) == 2
        proc.kill()
        proc.communicate(timeout=30)
        assert thawed_soon([m], timeout=10)
        wait_for(tmp_path / "post-ran", timeout=30)
        assert _gone_soon(tag), "step processes survived: %s" % _pids_with(tag)
    finally:
        for pid in _pids_with(tag):
            os.kill(pid, signal.SIGKILL)


# -- (a) root writes only where root decided ---------------------------------------

def as_nobody(*argv):
    """Runs ARGV as the unprivileged user nobody."""
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                   check=True)


@pytest.fixture
def arena():
    """A root-owned 755 directory under /tmp, which nobody can reach
    (pytest's own base directory is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="vmsnap-review-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("planted", ["symlink", "fifo", "users-file"])
def test_what_a_user_plants_at_the_log_file_path_is_not_written(tmp_path, loopfs, arena,
                                                                 planted):
    """The log file sits in a sticky directory (/tmp-like): a user plants a
    symlink to a root file, a FIFO (root's open would block) or a file of
    their own (they would read the scripts' output) at its name; root writes
    to none of them (fs.protected_* sysctls are not relied on)."""
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    sticky = arena / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    victim = tmp_path / "etc" / "victim"
    victim.write_text("root's file\n")
    os.chmod(victim, 0o600)
    log = sticky / "vmsnap.log"
    as_nobody(*{"symlink": ["ln", "-s", str(victim), str(log)],
                "fifo": ["mkfifo", str(log)],
                "users-file": ["touch", str(log)]}[planted])
    rc, res, p = run_json(tmp_path, cfg, [m], extra=["--log-file", str(log)], timeout=60)
    assert victim.read_text() == "root's file\n"
    if planted == "users-file":
        assert log.read_text() == ""
    assert rc == 0 and any(str(log) in w for w in res["warnings"]), res


def test_a_user_cannot_add_a_hook_to_a_sticky_hooks_directory(tmp_path, loopfs, arena):
    """What is in the hooks directory decides what runs, so a sticky 1777
    one is not root-controlled: a user moves a root-owned 700 file (left in
    their directory) into it, and root would run it as a hook."""
    (m,) = loopfs.make(1)
    hooks_dir = arena / "hooks"
    hooks_dir.mkdir()
    os.chmod(hooks_dir, 0o1777)
    theirs = arena / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    marker = arena / "pwned"
    write_script(theirs / "roots-file", "touch %s" % marker)   # root-owned, 700
    as_nobody("mv", str(theirs / "roots-file"), str(hooks_dir / "10-evil"))
    cfg = setup_scripts(tmp_path, hooksDirectory=str(hooks_dir))
    rc, res, p = run_json(tmp_path, cfg, [m])
    assert not marker.exists(), "root ran a hook a user put there"
    assert "InsufficientPermissionforPre-Script" in codes(res), res["errors"]
    assert str(hooks_dir) in res["errors"][0]["message"]


@pytest.mark.parametrize("split", ['"{p}"', "'{p}'", "{h}${{X}}{t}", "{p}\\_arg"])
def test_env_split_string_with_quotes_or_escapes_is_followed_or_refused(tmp_path, monkeypatch,
                                                                      split):
    """`#!/usr/bin/env -S "prog"`: env unquotes (and expands ${X}, and reads
    \\_ as a space) before it searches PATH; a check that takes the word
    literally finds nothing, only hints, and root runs whatever env finds,
    here a program a user owns in a root-owned PATH directory."""
    bindir, scripts = tmp_path / "bin", tmp_path / "scripts"
    for d in (bindir, scripts):
        d.mkdir()
        os.chmod(d, 0o755)
    monkeypatch.setattr(policy, "STANDARD_PATH", (str(bindir),) + policy.STANDARD_PATH)
    marker = tmp_path / "pwned"
    prog = write_script(bindir / "vmsnap-rv-prog", "touch %s" % marker, mode=0o755)
    os.chown(prog, 65534, 65534)   # a user's program in a root-owned directory
    name = os.path.basename(prog)
    line = "#!%s -S %s" % (shutil.which("env", path="/usr/bin:/bin"),
                           split.format(p=name, h=name[:4], t=name[4:]))
    chk = policy.check_script(write_script(scripts / "pre.sh", "exit 0", shebang=line), "pre")
    if chk.ok:
        run_process(list(chk.argv_prefix), timeout=30, env=clean_environment())
    assert not marker.exists(), "root ran a user's program: %s" % line
    assert chk.problem and chk.problem.code == "InsufficientPermissionforPre-Script"


def test_a_post_script_that_reports_the_quiesce_lost_is_not_retried_into_a_pass(tmp_path,
                                                                              loopfs):
    """The MariaDB example's post.sh exits 10 when the lock session died
    (and cleans up); a retry then finds no session and exits 1.  With
    postScriptNoOfRetries the last attempt used to decide: 'application'."""
    (m,) = loopfs.make(1)
    count = tmp_path / "attempts"
    post = ('echo x >> %s; [ "$(wc -l < %s)" -eq 1 ] && exit 10; exit 1' % (count, count))
    cfg = setup_scripts(tmp_path, post=post, postScriptNoOfRetries=2)
    rc, res, p = run_json(tmp_path, cfg, [m])
    assert res["consistency"] == "filesystem", res
    assert any("quiesce was lost" in e["message"] for e in res["errors"]), res["errors"]
    assert res["post_script"]["exit_code"] == 10


def test_a_python_script_in_a_sticky_directory_imports_no_users_module(tmp_path, loopfs,
                                                                      arena):
    """Python puts the script's own directory first on sys.path: a root-owned
    700 script directly in a sticky directory (accepted: nobody can replace
    it) imports whatever module a user planted beside it."""
    (m,) = loopfs.make(1)
    sticky = arena / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    marker = arena / "pwned"
    pre = write_script(sticky / "pre.py", "import json  # noqa\nprint('good')",
                       shebang="#!/usr/bin/python3")
    as_nobody("/usr/bin/python3", "-c", "open(%r, 'w').write(%r)"
              % (str(sticky / "json.py"), "open(%r, 'w')\n" % str(marker)))
    cfg = setup_scripts(tmp_path, preScriptLocation=pre)
    rc, res, p = run_json(tmp_path, cfg, [m])
    assert not marker.exists(), "root imported a user's module"
    assert "InsufficientPermissionforPre-Script" in codes(res), res["errors"]
    assert str(sticky) in res["errors"][0]["message"]


def test_an_interpreter_in_a_sticky_directory_is_refused(tmp_path, arena):
    """An interpreter reads files beside itself (python: pyvenv.cfg, which
    names its library's home): one directly in a sticky directory is not
    root-controlled even when its own file is root's."""
    sticky = arena / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    interp = sticky / "sh"
    shutil.copy("/bin/sh", interp)
    os.chmod(interp, 0o755)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    chk = policy.check_script(write_script(safe / "pre.sh", "exit 0", shebang="#!%s" % interp),
                              "pre")
    assert chk.problem and chk.problem.code == "InsufficientPermissionforPre-Script"
    assert "directory %s holding %s" % (sticky, interp) in chk.problem.message


def test_a_killed_runs_resume_never_releases_the_next_runs_quiesce(tmp_path, loopfs):
    """vmsnap is SIGKILLed mid-snapshot and run again at once (a retry): the
    first run's resume command (its post-script) must not resume the
    application in the middle of the second run's snapshot, which would then
    say application-consistent.  The order is arranged, not hoped for: the
    first run's reaper is held stopped until the second run is in its
    snapshot; its resume command starts then, and must wait for the run lock."""
    (m,) = loopfs.make(1)
    paused, events, go = tmp_path / "app-paused", tmp_path / "events", tmp_path / "go"
    cfg = setup_scripts(tmp_path, pre="touch %s; echo pre >> %s" % (paused, events),
                        post="sleep 0.5; rm -f %s; echo post >> %s" % (paused, events))
    first = start_run(tmp_path, cfg, [m],
                      snapshot=["sh", "-c", "touch %s; sleep 30" % (tmp_path / "snap1")])
    wait_for(tmp_path / "snap1")
    reaper = helper_below(first.pid, "vmsnap-reaper")
    os.kill(reaper, signal.SIGSTOP)
    try:
        first.kill()
        first.communicate(timeout=30)
        assert thawed_soon([m], timeout=10)   # the guardian's thaw; it exits
        # the second run's step: once the first run's resume command has started,
        # 2 s for its post-script (0.5 s) to release the application
        check = ("touch %s; while [ ! -e %s ]; do sleep 0.02; done; sleep 2; "
                 "[ -e %s ] && echo still-paused || echo resumed-mid-snapshot"
                 % (tmp_path / "snap2", go, paused))
        second = start_run(tmp_path, cfg, [m], snapshot=["sh", "-c", check])
        time.sleep(1.0)   # it waits for the dead run's resume before its pre-script
        assert not (tmp_path / "snap2").exists() and events.read_text().split() == ["pre"]
    finally:
        os.kill(reaper, signal.SIGCONT)
    go.touch()
    wait_for(tmp_path / "snap2")
    out, err = second.communicate(timeout=60)
    res = json.loads(out)
    assert codes(res) == [] and res["status"] == "success", (res, err)
    assert res["snapshot"]["output"] == "still-paused\n", (res, err)
    # the first run's post-script ran (by its resume) before the second run's pre-script
    assert events.read_text().split() == ["pre", "post", "pre", "post"], events.read_text()



def resume_started(runtime) -> bool:
    """Whether a resume command of the run with runtime directory RUNTIME is alive
    (the reaper forks it off and exits: it is init's, found by its environment)."""
    mark = b"VMSNAP_RUNTIME_DIR=%s" % os.fsencode(str(runtime))
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if b"vmsnap_native._resume" not in f.read():
                    continue
            with open("/proc/%s/environ" % d, "rb") as f:
                if mark in f.read().split(b"\0"):
                    return True
        except OSError:
            continue
    return False


@pytest.mark.ci_optional   # a container may forbid -1000 even to root: a fact of the host
def test_the_oom_killer_spares_the_reaper():
    """The reaper exists for the controller's SIGKILL, and the OOM killer is
    the usual sender: forked from the controller, the reaper counts as big
    as it, so it must be exempt (as the guardian is), or the OOM kill that
    takes the run may take the reaper first and nobody resumes the
    application."""
    from vmsnap_native import process
    probe = subprocess.run(["sh", "-c", "echo -1000 > /proc/self/oom_score_adj"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this host does not let root lower oom_score_adj (a container)")
    process._ensure_reaper()
    pid = process.reaper_pid()
    end = time.monotonic() + 10   # it sets it once it runs
    while open("/proc/%d/oom_score_adj" % pid).read().strip() != "-1000":
        assert time.monotonic() < end, "the reaper's oom_score_adj is not -1000"
        time.sleep(0.02)
    with open("/proc/%d/oom_score" % pid) as f:
        assert f.read().strip() == "0"


@pytest.mark.parametrize("stop", [None, signal.SIGTERM])
def test_a_stuck_freeze_ends_and_nothing_is_frozen_once_it_lands(tmp_path, loopfs, stop):
    """The filesystem's image lives on a filesystem someone else froze, so
    the flush and FIFREEZE hang.  The run ends (at its cap, or at once on
    SIGTERM) with the post-script run, and when the outer filesystem is
    thawed later, the late FIFREEZE is not left standing."""
    from .test_signals import finish
    from .test_thaw_paths import flush_stuck_behind
    (outer,) = loopfs.make(1, size_mb=96)
    (inner,) = loopfs.make(1, parent=outer)
    cfg = setup_scripts(tmp_path, post="touch %s" % (tmp_path / "post-ran"))
    with flush_stuck_behind(outer, inner):
        t0 = time.monotonic()
        proc = start_run(tmp_path, cfg, [inner], extra=["--freeze-timeout", "3"],
                         snapshot=["touch", str(tmp_path / "step-ran")])
        if stop:
            time.sleep(1.5)
            t0 = time.monotonic()
            proc.send_signal(stop)
        rc, res, err = finish(proc, timeout=90)
        took = time.monotonic() - t0
        expected = ["Interrupted"] if stop else ["FsFreezeTimeout"]
        assert codes(res) == expected and rc != 0, (res["errors"], err)
        assert took < (15 if stop else 60), took
        assert (tmp_path / "post-ran").exists()
    time.sleep(2)   # the flush and the late FIFREEZE land now
    assert thawed_soon([inner], timeout=10)
    assert not frozen_state(inner)
