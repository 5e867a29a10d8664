"""`vmsnap run --freeze-at FILE` (gate.py): arm, then freeze at the instant
FILE gives; not at all when told too late or never (real loop filesystems,
the real CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .conftest import frozen_state, root_only
from .helpers import setup_scripts

pytestmark = root_only


def start(tmp_path, mounts, cfg, timeout=20):
    """`vmsnap run --freeze-at` in the background; its step notes when it
    started and whether each mount was frozen then."""
    gate = str(tmp_path / "freeze_at")
    step = ("date +%%s.%%N > %s/step_at; for m in %s; do echo $m; done > %s/step_mounts"
            % (tmp_path, " ".join(mounts), tmp_path))
    args = [sys.executable, "-m", "vmsnap_native", "run", "--json", "--log-file", "",
            "--config", cfg, "--freeze-timeout", str(timeout), "--freeze-at", gate]
    for m in mounts:
        args += ["--mount", m]
    args += ["--", "/bin/sh", "-c", step]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    return p, gate


def armed(p, gate, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate + ".armed"):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "not armed within %gs" % timeout
        time.sleep(0.02)
    with open(gate + ".armed") as f:
        return float(f.read())


def tell(gate, text):
    with open(gate + ".tmp", "w") as f:
        f.write(text + "\n")
    os.rename(gate + ".tmp", gate)


def result(p, timeout=60):
    out, err = p.communicate(timeout=timeout)
    return json.loads(out), err


def test_armed_it_waits_thawed_and_freezes_at_the_instant(tmp_path, loopfs):
    mounts = loopfs.make(2)
    cfg = setup_scripts(tmp_path, pre="touch %s/pre-ran" % tmp_path)
    p, gate = start(tmp_path, mounts, cfg)
    armed_at = armed(p, gate)
    assert (tmp_path / "pre-ran").exists()
    at = time.time() + 1.5
    tell(gate, "%.6f %.6f" % (at, at + 1.0))
    time.sleep(max(0.0, at - 0.5 - time.time()))
    assert not any(frozen_state(m) for m in mounts), "frozen before the instant"
    res, err = result(p)
    assert (res["status"], res["consistency"]) == ("success", "application"), err
    step_at = float((tmp_path / "step_at").read_text())
    assert armed_at < at <= step_at < at + 1.0, (armed_at, at, step_at)
    assert all(m["frozen"] for m in res["freeze"]["mounts"])
    assert not any(frozen_state(m) for m in mounts)


def test_told_after_the_latest_instant_it_does_not_freeze_and_says_why(tmp_path, loopfs):
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s/post-ran" % tmp_path)
    p, gate = start(tmp_path, mounts, cfg)
    armed(p, gate)
    now = time.time()
    tell(gate, "%.6f %.6f" % (now - 1.0, now - 0.5))
    res, err = result(p)
    assert [e["code"] for e in res["errors"]] == ["FsFreezeFailed"], res["errors"]
    assert "past the latest useful instant" in res["errors"][0]["message"]
    assert not res["freeze"]["mounts"]            # nothing was frozen
    assert (tmp_path / "post-ran").exists()
    assert (res["status"], res["consistency"]) == ("degraded", "crash")


def test_never_told_it_gives_up_after_the_freeze_timeout(tmp_path, loopfs):
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s/post-ran" % tmp_path)
    p, gate = start(tmp_path, mounts, cfg, timeout=2)
    armed(p, gate)
    t0 = time.monotonic()
    res, err = result(p)
    assert 1.5 < time.monotonic() - t0 < 10
    assert "never told when to freeze" in res["errors"][0]["message"], res["errors"]
    assert not res["freeze"]["mounts"] and (tmp_path / "post-ran").exists()


def test_told_not_to_freeze(tmp_path, loopfs):
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    p, gate = start(tmp_path, mounts, cfg)
    armed(p, gate)
    tell(gate, "abort the group ended")
    res, err = result(p)
    assert res["errors"][0]["message"] == "told not to freeze: the group ended", res["errors"]
    assert not res["freeze"]["mounts"]
