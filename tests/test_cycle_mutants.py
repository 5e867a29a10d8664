"""A run's result as a user reads it, field by field: each phase in order,
what the snapshot step is told, a script's failure in words, a thaw from
outside, the metrics file (vmsnap_native.cycle.run in-process, as the
library's users call it; root, loop filesystems only)."""

from __future__ import annotations

import os
import re
import subprocess

from vmsnap_native import cycle

from .conftest import frozen_state, root_only
from .helpers import setup_scripts

pytestmark = root_only


def run(tmp_path, cfg, mounts, snapshot, **kw):
    kw.setdefault("metrics_file", "")
    return cycle.run(cfg, snapshot, mounts, log_file=str(tmp_path / "vmsnap.log"), **kw)


def test_each_phase_is_reported_in_order_and_the_step_is_told_what_is_frozen(tmp_path, loopfs):
    a, b = loopfs.make(2)
    cfg = setup_scripts(tmp_path)
    seen = tmp_path / "env"
    res = run(tmp_path, cfg, [a, b], ["sh", "-c", 'printf "%%s|%%s" "$VMSNAP_PHASE" '
                                      '"$VMSNAP_FROZEN_MOUNTS" > %s' % seen])
    assert (res.status, res.consistency, res.errors) == ("success", "application", [])
    assert [p["phase"] for p in res.phases] == ["pre-script", "freeze", "snapshot", "thaw",
                                                "post-script"]
    starts = [p["start_ms"] for p in res.phases]
    assert starts == sorted(starts) and all(p["duration_ms"] >= 0 for p in res.phases)
    assert res.duration_ms >= starts[-1]
    phase, frozen = seen.read_text().split("|")
    assert phase == "snapshot" and sorted(frozen.split("\n")) == sorted([a, b])
    assert [m["frozen"] for m in res.freeze.mounts] == [True, True]
    last = (tmp_path / "vmsnap.log").read_text().splitlines()[-1]   # the run's own summary
    assert re.search(r" result: status success, consistency application, window [0-9.]+ ms, "
                     r"errors none$", last), last
    assert res.freeze.window_ms > 0 and res.freeze.deadline_hit is False
    assert not frozen_state(a) and not frozen_state(b)


def test_a_failing_pre_script_says_how_it_ended_and_how_often_it_was_tried(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="exit 4", preScriptNoOfRetries=1)
    pre = str(tmp_path / "etc" / "pre.sh")
    res = run(tmp_path, cfg, [a], ["true"])
    assert (res.status, res.consistency) == ("degraded", "filesystem")
    assert [(e.code, e.message) for e in res.errors] == [
        ("Pre-ScriptExecutionFailed", "%s exited with status 4 (attempts: 2)" % pre)]
    assert res.pre_script.exit_code == 4 and res.pre_script.attempts == 2


def test_a_thaw_from_outside_during_the_step_is_named(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    res = run(tmp_path, cfg, [a], ["fsfreeze", "-u", a])
    assert (res.status, res.consistency) == ("failed", None)
    cause = "%s thawed from outside (not frozen any more when vmsnap thawed: `fsfreeze -u`?)" % a
    assert res.freeze.thawed_early == cause
    assert [(e.code, e.message) for e in res.errors] == [
        ("FsThawedEarly", "the filesystems were thawed before the snapshot step ended (%s): the "
                          "snapshot is not trusted" % cause)]
    assert not frozen_state(a)


def test_the_metrics_file_is_written_after_the_run_or_its_failure_is_a_warning(tmp_path,
                                                                                loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    prom = tmp_path / "vmsnap.prom"
    res = run(tmp_path, cfg, [a], ["true"], metrics_file=str(prom))
    assert res.status == "success" and res.warnings == []
    assert 'vmsnap_runs_total{status="success"} 1\n' in prom.read_text()
    bad = str(tmp_path / "nowhere" / "vmsnap.prom")
    res = run(tmp_path, cfg, [a], ["true"], metrics_file=bad)
    assert res.status == "success"
    assert res.warnings == ["metrics not written to %s: metrics file %s: no directory %s (create "
                            "it, or point the metrics file at node_exporter's textfile "
                            "directory)" % (bad, bad, os.path.dirname(bad))]
    assert "metrics not written to %s" % bad in (tmp_path / "vmsnap.log").read_text()


def test_a_filesystem_frozen_by_someone_else_is_left_alone_and_said(tmp_path, loopfs):
    a, b = loopfs.make(2)
    cfg = setup_scripts(tmp_path)
    subprocess.run(["fsfreeze", "-f", b], check=True, timeout=30)
    try:
        res = run(tmp_path, cfg, [a, b], ["true"])
        assert "%s was already frozen by someone else: left alone" % b in res.warnings
        assert frozen_state(b)            # still theirs
    finally:
        subprocess.run(["fsfreeze", "-u", b], timeout=30)
    assert not frozen_state(a)
