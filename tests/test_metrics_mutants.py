"""The metrics file's values, one by one, as a dashboard reads them, and what
`check` says about where the file goes (vmsnap_native.metrics; no root
needed: each file is written in the test's own directory)."""

from __future__ import annotations

import grp
import os
import pwd
import signal

import pytest

from vmsnap_native import __version__, metrics
from vmsnap_native.errors import CODES


def samples_of(text: str) -> dict:
    """{(name, ((label, value), ...)): value} by prometheus_client's own parser."""
    parser = pytest.importorskip(
        "prometheus_client.parser",
        reason="prometheus_client is the test-only parser of the metrics (pyproject's test extra)")
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def degraded_run() -> dict:
    """A run with something to show in every family: a deadline hit, one of two
    filesystems frozen, a pre-script that did not run, two warnings, the same
    error twice and a code vmsnap does not know."""
    return {
        "status": "degraded", "consistency": "filesystem",
        "errors": [{"code": "Post-ScriptFailed"}, {"code": "Post-ScriptFailed"},
                   {"code": "NoSuchCode"}],
        "warnings": ["one", "two"],
        "pre_script": {"path": "/etc/pre.sh", "ran": False, "duration_ms": 7.0},
        "post_script": {"path": "/etc/post.sh", "ran": True, "duration_ms": 1500.0},
        "freeze": {"enabled": True, "window_ms": 2250.5, "deadline_hit": True,
                   "mounts": [{"mountpoint": "/srv", "frozen": True},
                              {"mountpoint": "/data", "frozen": False}]},
        "snapshot": {"argv": ["snap"], "duration_ms": 1250.0}, "duration_ms": 4000.25,
    }


def test_every_value_is_the_runs_own():
    previous = ('vmsnap_runs_total{status="degraded"} 4\n'
                'vmsnap_runs_total{status="success"} 0\n'
                'vmsnap_errors_total{code="Post-ScriptFailed"} 3\n'
                'vmsnap_last_success_timestamp_seconds 900\n')
    counters, last = metrics.previous_values(previous)
    got = samples_of(metrics.render(degraded_run(), now=1000.0, previous=counters,
                                    last_success=last))
    want = {
        ("vmsnap_build_info", (("version", __version__),)): 1,
        ("vmsnap_last_run_timestamp_seconds", ()): 1000.0,
        ("vmsnap_last_success_timestamp_seconds", ()): 900.0,   # not this run: degraded
        ("vmsnap_last_run_status", (("status", "success"),)): 0,
        ("vmsnap_last_run_status", (("status", "degraded"),)): 1,
        ("vmsnap_last_run_status", (("status", "failed"),)): 0,
        ("vmsnap_last_run_consistency", (("consistency", "application"),)): 0,
        ("vmsnap_last_run_consistency", (("consistency", "filesystem"),)): 1,
        ("vmsnap_last_run_consistency", (("consistency", "crash"),)): 0,
        ("vmsnap_last_run_warnings", ()): 2,
        ("vmsnap_freeze_window_seconds", ()): 2.2505,
        ("vmsnap_filesystems_frozen", ()): 1,
        ("vmsnap_freeze_deadline_hit", ()): 1,
        ("vmsnap_script_duration_seconds", (("script", "pre"),)): 0,    # did not run
        ("vmsnap_script_duration_seconds", (("script", "post"),)): 1.5,
        ("vmsnap_snapshot_duration_seconds", ()): 1.25,
        ("vmsnap_run_duration_seconds", ()): 4.00025,
        ("vmsnap_runs_total", (("status", "success"),)): 0,
        ("vmsnap_runs_total", (("status", "degraded"),)): 5,
        ("vmsnap_runs_total", (("status", "failed"),)): 0,
    }
    for code in CODES:
        want[("vmsnap_errors_total", (("code", code),))] = 5 if code == "Post-ScriptFailed" else 0
    assert got == want


def test_a_success_is_the_last_success_and_no_snapshot_step_is_zero():
    run = dict(degraded_run(), status="success", snapshot={"argv": None, "duration_ms": 9.0})
    got = samples_of(metrics.render(run, now=2000.0, previous={}, last_success=900.0))
    assert got[("vmsnap_last_success_timestamp_seconds", ())] == 2000.0
    assert got[("vmsnap_snapshot_duration_seconds", ())] == 0
    assert got[("vmsnap_runs_total", (("status", "success"),))] == 1


def test_a_previous_file_gives_back_only_sound_counters():
    """Negative, NaN or unparsable counters in the previous file start over;
    labels are read back as written (escapes undone), a zero stays zero."""
    text = ('vmsnap_runs_total{status="failed"} -3\n'
            'vmsnap_runs_total{status="degraded"} NaN\n'
            'vmsnap_runs_total{status="success"} 0\n'
            'vmsnap_errors_total{code="a\\"b\\\\c\\nd"} 2\n'
            'vmsnap_last_success_timestamp_seconds{host="x"} 5\n'
            '# vmsnap_runs_total{status="x"} 9\n'
            'vmsnap_last_run_warnings 3\n')
    counters, last = metrics.previous_values(text)
    assert counters == {("vmsnap_runs_total", (("status", "success"),)): 0.0,
                        ("vmsnap_errors_total", (("code", 'a"b\\c\nd'),)): 2.0}
    assert last is None       # only the unlabelled sample is the last success
    assert metrics.previous_values("vmsnap_last_success_timestamp_seconds 0\n") == ({}, 0.0)
    assert metrics.previous_values(None) == ({}, None)


def test_numbers_are_written_short():
    big = [1000, 2 ** 53 - 1, 2 ** 53, 2 ** 60]   # exact integers print as integers
    assert [metrics.number(v) for v in (3, 2.5, float("nan"), float("inf"), -1, *big)] == \
        ["3", "2.5", "0", "0", "-1", "1000", "9007199254740991", "9007199254740992.0",
         repr(float(2 ** 60))]
    assert metrics.seconds(None) == 0 and metrics.seconds(1234.5678) == 1.234568


class Late(Exception):
    pass


def _late(signum, frame):
    raise Late("check took more than 5 s")


def _check(path):
    """`check`'s findings about PATH; it answers at once (a few stat calls)."""
    old = signal.signal(signal.SIGALRM, _late)
    signal.alarm(5)
    try:
        return metrics.check_path(str(path))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: gives the directory to other users")
def test_check_names_who_else_can_write_where_the_metrics_go(tmp_path):
    base = tmp_path / "base"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    textfile = base / "textfile"
    textfile.mkdir()
    os.chmod(textfile, 0o755)
    target = textfile / "vmsnap.prom"
    os.chown(textfile, 0, 0)
    assert _check(target) == ([], [])                # root's alone: nothing to say
    gid = next((g.gr_gid for g in grp.getgrall() if g.gr_gid != 0), None)
    if gid is not None:
        os.chown(textfile, 0, gid)
        os.chmod(textfile, 0o775)
        problems, notes = _check(target)
        assert problems == [] and len(notes) == 1
        assert "the members of group %s (gid %d) can also write to %s" % (
            grp.getgrgid(gid).gr_name, gid, textfile) in notes[0]
        os.chown(textfile, 0, 0)
    os.chown(textfile, 65534, 0)                     # node_exporter's user, say
    assert _check(target)[1] == [
        "metrics file %s: %s (uid 65534) can also write to %s: they can remove or replace the "
        "metrics there, but not make vmsnap write anywhere else (usual when it is "
        "node_exporter's own user)" % (target, pwd.getpwuid(65534).pw_name, textfile)]
    os.chown(textfile, 54321, 0)                     # a uid without a name
    assert _check(target)[1][0].startswith("metrics file %s: uid 54321 can also write"
                                           % target)
    os.chown(textfile, 0, 0)
    os.chmod(textfile, 0o1777)                       # world-writable but sticky: a note
    problems, notes = _check(target)
    assert problems == [] and "every user can also write to %s" % textfile in notes[0]
    os.chmod(textfile, 0o777)                        # not sticky: anyone can replace it
    problems, _ = _check(target)
    assert problems == ["metrics file %s: every user can write to %s and so replace the "
                        "metrics (chmod o-w %s)" % (target, textfile, textfile)]
    os.chmod(textfile, 0o755)
    os.chmod(base, 0o757)                            # the directory above it
    problems, notes = _check(target)
    assert problems == []
    assert notes == ["metrics file %s: every user can write to %s, above the metrics "
                     "directory, and could move another directory in its place"
                     % (target, base)]
    os.chmod(base, 0o755)


def test_check_says_what_is_wrong_with_the_path(tmp_path):
    assert _check(tmp_path / ".prom")[0] == [
        "metrics file %s: the name must end in .prom (node_exporter's textfile collector "
        "reads only *.prom files)" % (tmp_path / ".prom")]
    missing = tmp_path / "nowhere" / "vmsnap.prom"
    assert _check(missing)[0] == [
        "metrics file %s: no directory %s (create it, or point the metrics file at "
        "node_exporter's textfile directory)" % (missing, tmp_path / "nowhere")]
    fifo = tmp_path / "vmsnap.prom"
    os.mkfifo(fifo)
    problems, _ = _check(fifo)
    assert len(problems) == 1 and problems[0].startswith("metrics file %s is a" % fifo)
    assert "a run will not use nor replace it; remove it" in problems[0]
    with pytest.raises(metrics.MetricsFileError, match="not used nor replaced; remove it"):
        metrics.write_textfile(degraded_run(), str(fifo))
    assert fifo.is_fifo()                            # left as it was
