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
