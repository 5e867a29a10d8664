"""`vmsnap bench`: users measuring their own filesystems."""

from __future__ import annotations

import json

from vmsnap_native import mountinfo

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
    ratio = report["ratio_parallel_to_sequential"]
    assert ratio == round(windows["parallel"]["median"] / windows["sequential"]["median"], 3)
    assert ratio < 0.75, "parallel no faster than sequential: %s" % windows
    assert "parallel / sequential (median): %s" % ratio in p.stderr
    assert not any(frozen_state(m) for m in mounts)


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
