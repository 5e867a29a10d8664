"""Operations: Prometheus textfile metrics, the systemd units in
contrib/systemd, and journald priorities on stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from vmsnap_native import metrics
from vmsnap_native.logbook import Logbook

from .conftest import frozen_state, root_only
from .helpers import setup_scripts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = os.path.join(REPO, "contrib", "systemd")
VMSNAP = os.path.join(os.path.dirname(sys.executable), "vmsnap")


def parse(path):
    """{(name, labels tuple): value} by prometheus_client's own parser."""
    parser = pytest.importorskip(
        "prometheus_client.parser",
        reason="prometheus_client is the test-only parser of the metrics (pyproject's test extra)")
    with open(path) as f:
        families = list(parser.text_string_to_metric_families(f.read()))
    samples = {}
    for fam in families:
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return {f.name: f.type for f in families}, samples


def result(status="success", consistency="application", window_ms=3.5, errors=(), pre_ms=12.0):
    return {
        "status": status, "consistency": consistency,
        "errors": [{"code": c, "number": 0, "message": "", "action": ""} for c in errors],
        "warnings": [],
        "pre_script": {"path": "/etc/pre.sh", "ran": True, "duration_ms": pre_ms},
        "post_script": {"path": "/etc/post.sh", "ran": True, "duration_ms": 4.0},
        "freeze": {"enabled": True, "window_ms": window_ms, "deadline_hit": False,
                   "mounts": [{"mountpoint": "/srv", "frozen": True}]},
        "snapshot": {"argv": ["true"], "duration_ms": 2.0}, "duration_ms": 40.0,
    }


# -- metrics --------------------------------------------------------------------

def test_metrics_parse_with_prometheus_names_and_units(tmp_path):
    path = str(tmp_path / "vmsnap.prom")
    metrics.write_textfile(result(), path, now=1700000000.0)
    types, samples = parse(path)
    assert samples[("vmsnap_last_run_timestamp_seconds", ())] == 1700000000.0
    assert samples[("vmsnap_last_success_timestamp_seconds", ())] == 1700000000.0
    assert samples[("vmsnap_freeze_window_seconds", ())] == pytest.approx(0.0035)
    assert samples[("vmsnap_script_duration_seconds", (("script", "pre"),))] == pytest.approx(0.012)
    assert samples[("vmsnap_script_duration_seconds", (("script", "post"),))] == pytest.approx(0.004)
    assert samples[("vmsnap_runs_total", (("status", "success"),))] == 1
    assert samples[("vmsnap_runs_total", (("status", "failed"),))] == 0
    assert samples[("vmsnap_last_run_status", (("status", "success"),))] == 1
    assert samples[("vmsnap_last_run_consistency", (("consistency", "application"),))] == 1
    assert types["vmsnap_runs"] == "counter" and types["vmsnap_freeze_window_seconds"] == "gauge"
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


def test_counters_go_on_across_runs_and_the_last_success_stays(tmp_path):
    path = str(tmp_path / "vmsnap.prom")
    metrics.write_textfile(result(), path, now=1000.0)
    metrics.write_textfile(result("failed", None, errors=["SnapshotFailed"]), path, now=2000.0)
    metrics.write_textfile(result("failed", None, errors=["SnapshotFailed", "Interrupted"]),
                           path, now=3000.0)
    _, samples = parse(path)
    assert samples[("vmsnap_runs_total", (("status", "success"),))] == 1
    assert samples[("vmsnap_runs_total", (("status", "failed"),))] == 2
    assert samples[("vmsnap_errors_total", (("code", "SnapshotFailed"),))] == 2
    assert samples[("vmsnap_errors_total", (("code", "Interrupted"),))] == 1
    assert samples[("vmsnap_last_run_timestamp_seconds", ())] == 3000.0
    assert samples[("vmsnap_last_success_timestamp_seconds", ())] == 1000.0
    assert samples[("vmsnap_last_run_status", (("status", "success"),))] == 0


def test_metrics_file_is_replaced_whole_never_rewritten_in_place(tmp_path):
    path = str(tmp_path / "vmsnap.prom")
    metrics.write_textfile(result(), path)
    with open(path) as f:
        before = f.read()
    with open(path) as reader:          # a collector that opened the old file
        metrics.write_textfile(result("failed", None), path)
        old = reader.read()
    assert old == before                # still the whole old file, not a mix
    assert sorted(os.listdir(tmp_path)) == ["vmsnap.prom"]   # no temp file left


def test_a_garbled_previous_file_restarts_the_counters(tmp_path):
    path = tmp_path / "vmsnap.prom"
    path.write_bytes(b'\xff\xfe vmsnap_runs_total{status="success"} banana\n')
    metrics.write_textfile(result(), str(path))
    _, samples = parse(str(path))
    assert samples[("vmsnap_runs_total", (("status", "success"),))] == 1


def test_metrics_file_errors_say_what_and_where(tmp_path):
    with pytest.raises(metrics.MetricsFileError, match=r"must end in \.prom"):
        metrics.write_textfile(result(), str(tmp_path / "vmsnap.txt"))
    with pytest.raises(metrics.MetricsFileError, match="no directory"):
        metrics.write_textfile(result(), str(tmp_path / "missing" / "vmsnap.prom"))


@root_only
def test_metrics_of_a_real_run(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="sleep 0.2")
    p = subprocess.run([VMSNAP, "run", "--json", "--log-file", "", "--config", cfg,
                        "--mount", m, "--", "true"], capture_output=True, text=True, timeout=120)
    res = json.loads(p.stdout)
    path = str(tmp_path / "vmsnap.prom")
    metrics.write_textfile(res, path)
    _, samples = parse(path)
    assert samples[("vmsnap_freeze_window_seconds", ())] == pytest.approx(
        res["freeze"]["window_ms"] / 1000)
    assert samples[("vmsnap_script_duration_seconds", (("script", "pre"),))] >= 0.2
    assert samples[("vmsnap_filesystems_frozen", ())] == 1


# -- systemd ----------------------------------------------------------------------

def verify_units(tmp_path):
    """Copies the units with the paths of this machine and runs systemd-analyze verify."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    for name in os.listdir(UNITS):
        if name.endswith((".service", ".timer")):
            with open(os.path.join(UNITS, name)) as f:
                text = f.read().replace("/usr/bin/vmsnap", VMSNAP)
            text = text.replace("/usr/local/sbin/take-snapshot", "/bin/true")
            (tmp_path / name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    # --man=no: the units' man: pages are checked where they are installed
    # (tests/test_packaging.py, and the .deb in a chroot: make test-deb)
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True,
                          text=True,
                          timeout=60, cwd=str(tmp_path))


def test_systemd_units_verify(tmp_path):
    p = verify_units(tmp_path)
    if "Failed to " in p.stderr and ("D-Bus" in p.stderr or "bus" in p.stderr.lower()):
        pytest.skip("systemd-analyze cannot run here: %s" % p.stderr.strip()[:200])
    # verify exits 0 on some warnings: any output is a finding
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
    names = {n for n in os.listdir(UNITS)}
    assert {"vmsnap-thaw.service", "vmsnap.service", "vmsnap.timer"} <= names


def test_boot_thaw_unit_runs_vmsnap_thaw_which_finds_nothing(tmp_path):
    with open(os.path.join(UNITS, "vmsnap-thaw.service")) as f:
        exec_start = [line.split("=", 1)[1].split() for line in f
                      if line.startswith("ExecStart=")]
    assert exec_start == [["/usr/bin/vmsnap", "thaw"]]
    if os.geteuid() != 0:
        pytest.skip("vmsnap thaw needs root")
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path))
    p = subprocess.run([VMSNAP, "thaw"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr   # a oneshot that fails at every boot is noise


# -- journald ---------------------------------------------------------------------

LOG_SCRIPT = """
import sys
from vmsnap_native.logbook import Logbook
log = Logbook(None)
log.info("starting")
log.warning("a warning")
log.hold()
log.error("inside the window")
sys.stderr.write("MARK\\n"); sys.stderr.flush()
log.release()
log.error("two\\nlines")
"""


def run_logging(tmp_path, journal_stream):
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if journal_stream == "match":
            env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
        elif journal_stream == "other":
            env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino + 1)
        subprocess.run([sys.executable, "-c", LOG_SCRIPT], stderr=f, env=env, check=True,
                       timeout=60)
    return err.read_text()


def test_journal_lines_carry_syslog_priorities_and_wait_for_the_thaw(tmp_path):
    out = run_logging(tmp_path, "match")
    assert out.splitlines() == ["<6>starting", "<4>a warning", "MARK",
                                "<3>inside the window", "<3>two", "<3>lines"]


@pytest.mark.parametrize("journal_stream", ["unset", "other"])
def test_no_prefixes_unless_stderr_is_the_journal(tmp_path, journal_stream):
    # a JOURNAL_STREAM inherited by a process whose stderr was redirected
    assert run_logging(tmp_path, journal_stream) == "MARK\n"


def test_logbook_journal_switch_can_be_forced():
    assert Logbook(None, journal=False).journal is False


@root_only
def test_journal_stderr_on_the_frozen_filesystem_is_not_written_in_the_window(tmp_path, loopfs):
    """stderr is a file on a filesystem the run freezes: a log line written
    in the window would block until the freeze deadline."""
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="exit 1")
    err_path = os.path.join(m, "journal")
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        p = subprocess.run([VMSNAP, "run", "--json", "--log-file", "", "--config", cfg,
                            "--freeze-timeout", "8", "--mount", m, "--", "true"],
                           stdout=subprocess.PIPE, stderr=err, text=True, timeout=120, env=env)
    res = json.loads(p.stdout)
    assert not res["freeze"]["deadline_hit"] and res["freeze"]["window_ms"] < 4000, res["freeze"]
    assert not frozen_state(m)
    with open(err_path) as f:
        lines = f.read().splitlines()
    assert any(line.startswith("<6>snapshot step") for line in lines), lines
    assert any(line.startswith("<3>") and "Post-ScriptExecutionFailed" in line
               for line in lines), lines


# -- the wiring in the command line (cli.py / config.py) ----------------------------

def _run_help():
    return subprocess.run([VMSNAP, "run", "--help"], capture_output=True, text=True,
                          timeout=60).stdout


@root_only
@pytest.mark.parametrize("how", ["option", "config"])
def test_run_writes_metrics_after_the_thaw(tmp_path, loopfs, how):
    if "--metrics-file" not in _run_help():
        pytest.skip("`vmsnap run --metrics-file` is not wired into cli.py yet")
    (m,) = loopfs.make(1)
    prom = str(tmp_path / "vmsnap.prom")
    extra = {"metricsFile": prom} if how == "config" else {}
    cfg = setup_scripts(tmp_path, **extra)
    # the snapshot step sees no metrics file: it is written after the thaw
    argv = [VMSNAP, "run", "--json", "--log-file", "", "--config", cfg, "--mount", m]
    argv += ["--metrics-file", prom] if how == "option" else []
    p = subprocess.run(argv + ["--", "sh", "-c", "test ! -e %s" % prom], capture_output=True,
                       text=True, timeout=120)
    res = json.loads(p.stdout)
    if how == "config" and any("metricsFile" in w for w in res["warnings"]):
        pytest.skip("config.py does not know metricsFile yet")
    assert res["status"] == "success", res
    _, samples = parse(prom)
    assert samples[("vmsnap_runs_total", (("status", "success"),))] == 1
    assert samples[("vmsnap_freeze_window_seconds", ())] == pytest.approx(
        res["freeze"]["window_ms"] / 1000)
