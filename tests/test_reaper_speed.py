"""How fast the reaper acts: within 0.5 s of a SIGKILL of `vmsnap run`, at
any instant of the run, every process the run had started (scripts, the
snapshot step and what they started, the guardian) is gone.  Measured over
40 random kill instants; the reaper itself stays to run the resume."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from vmsnap_native import process

from .conftest import root_only, thawed_soon
from .helpers import setup_scripts

pytestmark = root_only

BOUND_S = 0.5
KILLS = 40


def descendants(root: int) -> list:
    """(pid, start time, comm) of every live process below ROOT."""
    children: dict = {}
    info = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in "ZX":
            continue
        children.setdefault(int(fields[1]), []).append(int(d))
        info[int(d)] = (int(fields[19]), comm)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append((c, *info[c]))
            todo.append(c)
    return out


def test_everything_the_run_started_is_gone_within_the_bound_of_a_sigkill(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="sleep 0.3 & sleep 0.3", post="true", timeoutInSeconds=10)
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))
    rng = random.Random(os.environ.get("VMSNAP_SEED", time.time_ns()))
    worst, late, seen = 0.0, [], 0
    for i in range(KILLS):
        run = subprocess.Popen(
            [sys.executable, "-m", "vmsnap_native", "run", "--config", cfg, "--mount", m,
             "--log-file", str(tmp_path / "vmsnap.log"), "--", "sh", "-c", "sleep 3 & sleep 3"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        at = rng.uniform(0.1, 2.0)
        time.sleep(at)
        os.kill(run.pid, signal.SIGSTOP)      # what it had started at this instant
        tree = descendants(run.pid)
        os.kill(run.pid, signal.SIGKILL)
        t0 = time.monotonic()
        run.wait()
        reapers = [(p, s) for p, s, comm in tree if comm == "vmsnap-reaper"]
        watched = [(p, s, comm) for p, s, comm in tree if comm != "vmsnap-reaper"]
        seen += len(watched)
        while any(process.alive(p, s) for p, s, _ in watched) and time.monotonic() - t0 < 10:
            time.sleep(0.002)
        took = time.monotonic() - t0
        worst = max(worst, took)
        if took > BOUND_S:
            late.append((round(at, 3), round(took, 3),
                         [c for p, s, c in watched if process.alive(p, s)] or
                         [c for _, _, c in watched]))
        # the resume (post-script) of this kill is done before the next run
        for p, s in reapers:
            assert process.wait_gone(p, s, 60), "the reaper of kill %d never finished" % i
        assert thawed_soon([m], timeout=10)
    assert seen > KILLS, "the kills found almost nothing running: not a test of the reaper"
    assert not late, "killed at (s), gone after (s), what: %s; worst %.3f s" % (late, worst)
    print("worst %.3f s over %d kills" % (worst, KILLS))
