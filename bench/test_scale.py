"""The arithmetic of bench-scale on made-up inputs: which module an import
is charged to, where a group's window goes, how growth is read.  No root,
no filesystems:  python -m pytest -q bench/test_scale.py"""

from __future__ import annotations

import datetime
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import scale_fs  # noqa: E402
import scale_mounts  # noqa: E402

IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:    100000 |     100000 |   _io
import time:     50000 |     150000 | encodings
import time:     30000 |      30000 |       inspect
import time:     20000 |      50000 |     dataclasses
import time:     10000 |      60000 |   vmsnap_native.config
import time:      7000 |       7000 |   vmsnap_native.errors
import time:      5000 |      72000 | vmsnap_native
import time:      3000 |       3000 | json
"""


def test_each_import_is_charged_to_the_vmsnap_module_that_pulled_it_in():
    got = scale_mounts.parse_importtime(IMPORTTIME)
    assert got["modules"] == 8 and got["total_self_ms"] == 225.0
    ours = got["vmsnap_native_ms"]
    assert ours["vmsnap_native.config"] == 60.0        # itself + dataclasses + inspect
    assert ours["vmsnap_native.errors"] == 7.0
    assert ours["vmsnap_native"] == 5.0
    assert ours["(before vmsnap_native: interpreter start-up)"] == 153.0   # _io, encodings, json
    assert got["by_package_ms"]["vmsnap_native"] == 22.0
    assert got["vmsnap_modules_imported"] == ["vmsnap_native", "vmsnap_native.config",
                                              "vmsnap_native.errors"]


def _ansible_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S.%f")


def test_the_group_window_splits_around_the_step():
    import scale_fleet  # puts the repository first on the path, for tests.fleet
    spans = [(100.0, 103.0), (100.5, 103.6)]       # two hosts' frozen spans
    snap = {"start": _ansible_time(101.0), "end": _ansible_time(101.2)}
    got = scale_fleet.spans_and_step(spans, snap, {"frozen": [100.1, 100.6],
                                                   "released": [102.9, 103.5]})
    want = {"group_window_ms": 3600, "before_step_ms": 1000, "freeze_spread_ms": 600,
            "frozen_to_step_ms": 400, "step_ms": 200, "after_step_ms": 2400,
            "step_to_released_ms": 2300, "released_to_thawed_ms": 100}
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=0.01), k


def _rows(f):
    return [{"strategy": "ioctl loop", "load": "idle", "filesystems": n, "op_median_ms": f(n)}
            for n in (1, 4, 16, 64, 128)]


def test_growth_reads_linear_as_one_and_quadratic_as_two():
    lin = scale_fs.slopes(_rows(lambda n: 3.0 * n + 2), "op_median_ms")["ioctl loop"]
    assert lin["per_fs_ms"][-1] == {"from": 64, "to": 128, "per_fs": 3.0}
    assert 0.95 < lin["exponent_top"] <= 1.0
    sq = scale_fs.slopes(_rows(lambda n: 0.5 * n * n), "op_median_ms")["ioctl loop"]
    assert sq["exponent_top"] == 2.0
    assert [s["per_fs"] for s in sq["per_fs_ms"]] == sorted(s["per_fs"] for s in sq["per_fs_ms"])


def test_the_busy_target_is_judged_on_every_load():
    import scale

    def row(load, loop, strategy, ratio):
        return {"filesystems": 4, "load": load, "loop": loop, "strategy": strategy,
                "stall_ratio_to_fsfreeze": ratio}
    rows = [row("streaming", "buffered", "vmsnap jit", 0.2),
            row("streaming", "buffered", "vmsnap parallel", 0.9),   # not the one judged
            row("fresh", "buffered", "vmsnap jit", 0.3),
            row("streaming", "direct I/O", "vmsnap jit", None)]     # not measured: not met
    got = [t for t in scale.targets({"busy": {"rows": rows}}) if "busy" in t["target"]]
    assert [(t["measured"], t["met"]) for t in got] == [(0.2, True), (0.3, False), (None, False)]
    assert "fresh writers on half, buffered loop" in got[1]["target"]


def test_the_database_target_reads_the_default_pace():
    import pgbench_gentle
    import scale

    pace = pgbench_gentle.gentle.INTERVAL_S
    rows = [{"strategy": "other pace", "gentle_every_s": 1.0, "ratio_to_no_freeze": 1.0,
             "op_median_ms": 3000},
            {"strategy": "default pace", "gentle_every_s": pace, "ratio_to_no_freeze": 3.4,
             "op_median_ms": 3100, "ratio_to_flushes_no_freeze": 0.9}]
    got = [t for t in scale.targets({"database": {"rows": rows}})]
    assert [(t["measured"], t["met"]) for t in got] == [(3.4, False), (3100, True), (0.9, None)]
