"""`vmsnap bench`: users measuring their own filesystems."""

from __future__ import annotations

import json

from vmsnap_native import mountinfo
from vmsnap_native.devtools.stats import summary

from .conftest import frozen_state, root_only
from .helpers import vmsnap


@root_only
def test_bench_compares_sequential_and_parallel(loopfs):
    # four idle filesystems: one at a time costs about four freezes, in
    # parallel about one.  Medians of 30 rounds on a loaded 2-core machine:
    # 0.07-0.38 here, and 0.93-1.69 with both strategies made the same
    mounts = loopfs.make(4)
    args = ["bench", "--rounds", "30", "--json"]
    for m in mounts:
        args += ["--mount", m]
    p = vmsnap(*args)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert sorted(report["filesystems"]) == sorted(mounts)
    windows = report["window_ms"]
    for k in ("sequential", "parallel"):
        w = windows[k]
        assert w["n"] == 30 and 0 < w["min"] <= w["median"] <= w["max"], w
        # 30 rounds: a p95 (the 29th of 30) but no "p99", which would be the max again
        assert "p99" not in w and w["median"] <= w["p95"] <= w["max"], w
    ratio = report["ratio_parallel_to_sequential"]
    assert ratio == round(windows["parallel"]["median"] / windows["sequential"]["median"], 3)
    assert ratio < 0.75, "parallel no faster than sequential: %s" % windows
    assert "parallel / sequential (median): %s" % ratio in p.stderr
    assert "max of 30" in p.stderr and "p99" not in p.stderr
    assert not any(frozen_state(m) for m in mounts)


def test_summary_reports_a_percentile_only_where_it_is_not_the_max():
    few = summary([float(x) for x in range(1, 21)])   # 20 rounds: p95 is the 19th, no p99
    assert few == {"n": 20, "min": 1.0, "median": 10.5, "p95": 19.0, "max": 20.0}
    assert "p95" not in summary([1.0] * 19) and summary([]) == {
        "n": 0, "min": None, "median": None, "max": None}
    many = summary([float(x) for x in range(1, 101)])
    assert many["p99"] == 99.0 and many["max"] == 100.0


def test_bench_refuses_to_freeze_root_without_yes():
    # --rounds 0 makes the command stop before any freeze even if the refusal broke
    eligible = [c.mount.mountpoint for c in mountinfo.discover().eligible]
    p = vmsnap("bench", "--rounds", "0")
    if "/" in eligible:
        assert p.returncode == 1 and "--yes" in p.stderr and "root filesystem" in p.stderr
    else:
        assert p.returncode == 2


def test_bench_refuses_a_non_mount(tmp_path):
    p = vmsnap("bench", "--mount", str(tmp_path), "--rounds", "1")
    assert p.returncode == 1 and "not a mount point" in p.stderr


def _bench_pgbench():
    """bench/pgbench.py, importable from the tests (it imports its neighbours)."""
    import importlib
    import os
    import sys
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("pgbench")


@root_only
def test_pgbench_whole_run_installs_what_vmsnap_check_accepts():
    # the benchmark's `vmsnap run` must run the example scripts as a user's
    # install does: anything vmsnap refuses would measure a run without them
    from types import SimpleNamespace
    pgbench = _bench_pgbench()
    inst = pgbench.Installed(SimpleNamespace(sock="/run/pg-sock"))
    try:
        p = vmsnap("check", "--config", inst.config, "--json")
        assert p.returncode == 0, p.stdout + p.stderr
        with open(inst.config) as f:
            doc = json.load(f)
        assert doc["preScriptParams"] == ["-h", "/run/pg-sock", "-p", str(pgbench.PORT)]
    finally:
        inst.close()


@root_only
def test_pgbench_azure_flow_polls_and_freezes_one_by_one(loopfs, tmp_path, monkeypatch):
    # the Azure-style flow sees each script's end only at a poll and waits a
    # fixed delay before the freeze: a 0.1 s script still costs a whole poll
    from types import SimpleNamespace
    pgbench = _bench_pgbench()
    monkeypatch.setattr(pgbench, "AZURE_POLL_S", 0.5)
    monkeypatch.setattr(pgbench, "AZURE_FREEZE_DELAY_S", 0.4)
    mounts = loopfs.make(2)
    pre, post = tmp_path / "pre.sh", tmp_path / "post.sh"
    pre.write_text("sleep 0.1\n")
    post.write_text("exit 0\n")
    inst = SimpleNamespace(pre=str(pre), post=str(post), params=[])
    import time
    t0 = time.monotonic()
    out = pgbench.azure_flow(inst, mounts)
    took = time.monotonic() - t0
    assert took >= 2 * 0.5 + 0.4 + 0.2, took        # two polls, the delay, the snapshot step
    assert 200 <= out["window_ms"] < took * 1e3, out
    assert not any(frozen_state(m) for m in mounts)
    post.write_text("exit 3\n")                       # a failed script is an error, not a result
    try:
        pgbench.azure_flow(inst, mounts)
    except RuntimeError as e:
        assert "exited 3" in str(e)
    else:
        raise AssertionError("a failed post-script went unnoticed")
    assert not any(frozen_state(m) for m in mounts)
