"""`vmsnap bench`: users measuring their own filesystems."""

from __future__ import annotations

import json

from vmsnap_native import mountinfo

from .conftest import root_only
from .helpers import vmsnap


@root_only
def test_bench_compares_sequential_and_parallel(loopfs):
    mounts = loopfs.make(2)
    args = ["bench", "--rounds", "3", "--json"]
    for m in mounts:
        args += ["--mount", m]
    p = vmsnap(*args)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["filesystems"] == sorted(mounts) or set(report["filesystems"]) == set(mounts)
    for k in ("sequential", "parallel"):
        assert report["window_ms"][k]["n"] == 3 and report["window_ms"][k]["median"] > 0
    assert report["ratio_parallel_to_sequential"] > 0
    assert "parallel / sequential" in p.stderr


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
