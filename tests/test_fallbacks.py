"""Old kernels and libcs: each newer path switched off in turn (pidfd before
5.3, close_range before 5.9, syncfs, a usable cgroup v2, cgroup.kill before
5.14), and the behaviour checked on the fallback."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

import vmsnap_native as vmsnap
from vmsnap_native._core import COMPAT_FLAGS, core

from .conftest import root_only, thawed_soon


@pytest.fixture
def compat():
    _, lib = core()
    old = lib.vmsnap_compat_disable(0)

    def disable(*names):
        lib.vmsnap_compat_disable(sum(COMPAT_FLAGS[n] for n in names))

    try:
        yield disable
    finally:
        lib.vmsnap_compat_disable(old)


@pytest.mark.timing
def test_without_pidfd_supervision_falls_back(compat):
    compat("pidfd")
    r = vmsnap.run_process(["sh", "-c", "echo hi; exit 4"], timeout=5)
    assert r.used_fallback and r.exit_code == 4 and r.output == "hi\n"
    t0 = time.monotonic()
    r = vmsnap.run_process(["sh", "-c", "sh -c \"trap '' TERM; sleep 30\" & sleep 30"],
                           timeout=0.3, grace=0.1)
    assert r.timed_out and r.survivors == 0 and time.monotonic() - t0 < 5
    t0 = time.monotonic()
    r = vmsnap.run_process(["sh", "-c", "sleep 5 & echo bg"], timeout=10)
    assert r.exit_code == 0 and time.monotonic() - t0 < 2


@root_only
def test_without_syncfs_the_presync_is_skipped(compat, loopfs):
    compat("syncfs")
    (m,) = loopfs.make(1)
    with vmsnap.freeze_filesystems([m], timeout=10, presync=True) as s:
        assert s.all_frozen
    assert s.mounts[0].sync_errno == errno.ENOSYS and s.mounts[0].state == "thawed"


@root_only
def test_guardian_without_pidfd_or_close_range_still_thaws_on_sigkill(loopfs):
    (m,) = loopfs.make(1)
    code = ("import sys, time, vmsnap_native as v\n"
            "s = v.freeze_filesystems([sys.argv[1]], timeout=60); s.freeze()\n"
            "print('frozen', flush=True); time.sleep(60)\n")
    env = dict(os.environ, VMSNAP_COMPAT_DISABLE="pidfd,close_range")
    ctl = subprocess.Popen([sys.executable, "-c", code, m], stdout=subprocess.PIPE, text=True,
                           env=env)
    assert ctl.stdout.readline().strip() == "frozen"
    ctl.kill()
    ctl.wait()
    assert thawed_soon([m])


@root_only
@pytest.mark.timeout(1000)
def test_the_process_and_freeze_suites_pass_with_every_fallback(tmp_path):
    # the behaviour suites again, with all the newer paths switched off at once
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, VMSNAP_COMPAT_DISABLE="all", VMSNAP_FALLBACK_RUN="1")
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          os.path.join(here, "test_process.py"), os.path.join(here, "test_freeze.py"),
                          os.path.join(here, "test_faults.py"),
                          os.path.join(here, "test_containment.py"), "-k", "not rcu"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=os.path.dirname(here))
    try:
        out, _ = p.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        # Ctrl-C, not a kill: the nested suite's fixtures thaw and unmount
        p.send_signal(signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        raise AssertionError("the fallback run took over 900 s:\n" + out[-3000:]) from None
    assert p.returncode == 0, out[-3000:]
    assert " passed" in out
