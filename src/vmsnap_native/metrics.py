"""Prometheus metrics of the last run, for node_exporter's textfile collector.

Written after the thaw (never inside the freeze window), atomically and
safely in a directory someone else may own (``opsfile``): a temp file in the
same directory, then a rename, so the collector never reads half a file.

Dashboards and alerts can rely on the shape: every family is present after
every run (0 where a run had nothing to measure: no freeze window, a script
that did not run), each with the same label sets every time
(``vmsnap_errors_total`` has every error code), and numbers are printed
short (milliseconds and microseconds, not 0.008912000000000002).  Counters
(``vmsnap_runs_total``, ``vmsnap_errors_total``) go on from the values in
the previous file; a missing or unreadable previous file starts them at
zero, which Prometheus treats as a counter reset."""

from __future__ import annotations

import errno
import math
import os
import pwd
import re
import stat
import time
from collections.abc import Sequence

from . import opsfile
from ._version import __version__
from .errors import CODES

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any

STATUSES = ("success", "degraded", "failed")
CONSISTENCIES = ("application", "filesystem", "crash")
SCRIPTS = ("pre", "post")
SUFFIX = ".prom"   # node_exporter's textfile collector reads only *.prom

# one sample line: name{labels} value   (labels optional)
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# {(name, ((label, value), ...)): value} of a previous file's counters
Counters = dict[tuple[str, tuple[tuple[str, str], ...]], float]
# (labels, value) of one family's samples
Samples = Sequence[tuple[tuple[tuple[str, str], ...], float]]


class MetricsFileError(ValueError):
    """The metrics file cannot be used (the message says why and what to do)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def number(value: float) -> str:
    """VALUE as the exposition format's number, short: integers without a
    fraction, others by their shortest repr; NaN and infinities as 0 (a
    dashboard sums and compares these)."""
    value = float(value)
    if not math.isfinite(value):
        value = 0.0
    if value == int(value) and abs(value) < 2 ** 53:
        return "%d" % value
    return repr(value)


def seconds(ms: float | None) -> float:
    """Milliseconds (or None) as seconds, to the microsecond."""
    return round(float(ms or 0) / 1000.0, 6)


def previous_values(text: str | None) -> tuple[Counters, float | None]:
    """(counters, last success time) from a previous file's text:
    counters is {(name, ((label, value),)): float} of its *_total samples."""
    counters: Counters = {}
    last_success = None
    for line in (text or "").splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if not math.isfinite(value) or value < 0:
            continue
        name = m.group(1)
        if name == "vmsnap_last_success_timestamp_seconds" and not m.group(2):
            last_success = value
        elif name.endswith("_total"):
            labels = tuple(sorted((k, _unescape(v)) for k, v in _LABEL.findall(m.group(2) or "")))
            counters[(name, labels)] = value
    return counters, last_success


def _decode(data: bytes | None) -> str | None:
    try:
        return data.decode("utf-8") if data is not None else None
    except UnicodeDecodeError:
        return None   # garbled: the counters restart


def render(result: dict[str, Any], *, now: float, previous: Counters,
           last_success: float | None) -> str:
    """The text exposition format of one run's metrics: every family, every time."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Samples) -> None:
        out.append("# HELP %s %s" % (name, help_text))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            lab = ",".join('%s="%s"' % (k, _escape(str(v))) for k, v in labels)
            out.append("%s%s %s" % (name, "{%s}" % lab if lab else "", number(value)))

    status = result.get("status")
    consistency = result.get("consistency")
    now = round(now, 3)
    family("vmsnap_build_info", "gauge", "The vmsnap version that wrote these metrics (always 1).",
           [((("version", __version__),), 1)])
    family("vmsnap_last_run_timestamp_seconds", "gauge",
           "When the last vmsnap run ended (seconds since the epoch).", [((), now)])
    success = now if status == "success" else last_success
    family("vmsnap_last_success_timestamp_seconds", "gauge",
           "When the last successful run ended (0: never).", [((), success or 0)])
    family("vmsnap_last_run_status", "gauge", "The last run's status (1 for the one it had).",
           [((("status", s),), int(s == status)) for s in STATUSES])
    family("vmsnap_last_run_consistency", "gauge",
           "The last run's consistency (1 for the one it reached; all 0: no snapshot).",
           [((("consistency", c),), int(c == consistency)) for c in CONSISTENCIES])
    family("vmsnap_last_run_warnings", "gauge", "Warnings the last run reported.",
           [((), len(result.get("warnings") or []))])
    freeze = result.get("freeze") or {}
    family("vmsnap_freeze_window_seconds", "gauge",
           "The last run's freeze window, from the first filesystem frozen to the last one "
           "thawed (0: nothing was frozen).", [((), seconds(freeze.get("window_ms")))])
    family("vmsnap_filesystems_frozen", "gauge", "Filesystems the last run froze.",
           [((), sum(1 for m in freeze.get("mounts") or [] if m.get("frozen")))])
    family("vmsnap_freeze_deadline_hit", "gauge",
           "1 when the last run's freeze reached its deadline and was thawed by it.",
           [((), int(bool(freeze.get("deadline_hit"))))])
    durations: list[tuple[tuple[tuple[str, str], ...], float]] = []
    for name in SCRIPTS:
        sr = result.get("%s_script" % name) or {}
        durations.append(((("script", name),), seconds(sr.get("duration_ms")) if sr.get("ran")
                          else 0))
    family("vmsnap_script_duration_seconds", "gauge",
           "How long the last run's pre- and post-script took, all attempts (0: not run).",
           durations)
    snap = result.get("snapshot") or {}
    family("vmsnap_snapshot_duration_seconds", "gauge",
           "How long the last run's snapshot step took (0: no step ran).",
           [((), seconds(snap.get("duration_ms")) if snap.get("argv") else 0)])
    family("vmsnap_run_duration_seconds", "gauge", "How long the last run took in all.",
           [((), seconds(result.get("duration_ms")))])

    runs = {s: previous.get(("vmsnap_runs_total", (("status", s),)), 0.0) for s in STATUSES}
    if status in runs:
        runs[status] += 1
    family("vmsnap_runs_total", "counter", "Runs, by status.",
           [((("status", s),), runs[s]) for s in STATUSES])
    errors = {c: previous.get(("vmsnap_errors_total", (("code", c),)), 0.0) for c in CODES}
    for e in result.get("errors") or []:
        code = e.get("code") if isinstance(e, dict) else getattr(e, "code", None)
        if code in errors:
            errors[code] += 1
    family("vmsnap_errors_total", "counter", "Errors reported by runs, by error code.",
           [((("code", c),), errors[c]) for c in sorted(errors)])
    return "\n".join(out) + "\n"


def split_path(path: str) -> tuple[str, str]:
    """(directory, file name) of a metrics file PATH; MetricsFileError if the
    name cannot be one."""
    name = os.path.basename(path)
    if not name.endswith(SUFFIX) or name == SUFFIX:
        raise MetricsFileError("metrics file %s: the name must end in .prom (node_exporter's "
                               "textfile collector reads only *.prom files)" % path)
    return os.path.dirname(os.path.abspath(path)), name


def _no_directory(path: str, directory: str, exc: OSError) -> MetricsFileError:
    if exc.errno == errno.ENOENT:
        return MetricsFileError("metrics file %s: no directory %s (create it, or point the "
                                "metrics file at node_exporter's textfile directory)"
                                % (path, directory))
    return MetricsFileError("metrics file %s: %s" % (path, _said(directory, exc)))


def _said(where: str, exc: OSError) -> str:
    """WHERE and what EXC says of it: "/x is a FIFO, ..." or "/x: Permission denied"."""
    text = exc.strerror or str(exc)
    return "%s%s%s" % (where, " " if text.startswith("is ") else ": ", text)


def write_textfile(result: dict[str, Any], path: str, *, now: float | None = None) -> None:
    """Writes the run's metrics to PATH (a *.prom file of node_exporter's
    textfile directory): a new file renamed over it inside that directory.
    Whatever someone else put at PATH (a link, a FIFO, a file of theirs) is
    not used and not replaced: MetricsFileError says what it is."""
    directory, name = split_path(path)
    try:
        dfd = opsfile.open_directory(directory)
    except OSError as exc:
        raise _no_directory(path, directory, exc) from None
    try:
        try:
            old = opsfile.read_own(dfd, name)
        except OSError as exc:
            if exc.errno != errno.EFBIG:
                raise MetricsFileError("metrics file %s: not used nor replaced; remove it "
                                       "(vmsnap creates the file itself)" % _said(path, exc)) from None
            old = None   # too large to be ours: the counters restart
        counters, last_success = previous_values(_decode(old))
        text = render(result, now=time.time() if now is None else now, previous=counters,
                      last_success=last_success)
        try:
            opsfile.replace(dfd, name, text.encode("utf-8"), mode=0o644)  # the exporter reads it
        except OSError as exc:
            raise MetricsFileError("metrics file %s: cannot write it in %s: %s"
                                   % (path, directory, exc.strerror)) from None
    finally:
        os.close(dfd)


# -- what `check` says about a metrics file ------------------------------------------

def _who(uid: int) -> str:
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return "uid %d" % uid


def _group(gid: int) -> str:
    import grp
    try:
        return "group %s (gid %d)" % (grp.getgrgid(gid).gr_name, gid)
    except KeyError:
        return "gid %d" % gid


def _writers(st: os.stat_result) -> list[str]:
    """Who besides root can change the entries of a directory with stat ST."""
    who = []
    if st.st_uid != 0:
        who.append(_who(st.st_uid))
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        who.append("the members of %s" % _group(st.st_gid))
    if st.st_mode & stat.S_IWOTH:
        who.append("every user")
    return who


def check_path(path: str) -> tuple[list[str], list[str]]:
    """(problems, notes) about writing metrics to PATH, for `check`: a problem
    means a run will not write them; a note says who else can write where
    they go (they can make a write fail or replace the metrics, never make
    root write elsewhere)."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        directory, name = split_path(path)
    except MetricsFileError as exc:
        return [str(exc)], notes
    try:
        dfd = opsfile.open_directory(directory)
    except OSError as exc:
        return [str(_no_directory(path, directory, exc))], notes
    try:
        st = os.fstat(dfd)
        writers = _writers(st)
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            problems.append("metrics file %s: every user can write to %s and so replace the "
                            "metrics (chmod o-w %s)" % (path, directory, directory))
        elif writers:
            notes.append("metrics file %s: %s can also write to %s: they can remove or replace "
                         "the metrics there, but not make vmsnap write anywhere else (usual "
                         "when it is node_exporter's own user)"
                         % (path, " and ".join(writers), directory))
        try:
            fd, fst = opsfile.open_regular(name, os.O_RDONLY, dir_fd=dfd)
            opsfile.check_own(fd, fst, name)   # closes FD when it refuses
            os.close(fd)
        except FileNotFoundError:
            pass   # the first run creates it
        except OSError as exc:
            problems.append("metrics file %s: a run will not use nor replace it; remove it "
                            "(vmsnap creates the file itself)" % _said(path, exc))
    finally:
        os.close(dfd)
    parent = os.path.dirname(directory)
    while parent and parent != directory:
        try:
            pst = os.stat(parent)
        except OSError:
            break
        others = _writers(pst)
        if others and not pst.st_mode & stat.S_ISVTX:
            notes.append("metrics file %s: %s can write to %s, above the metrics directory, "
                         "and could move another directory in its place"
                         % (path, " and ".join(others), parent))
            break
        directory, parent = parent, os.path.dirname(parent)
    return problems, notes
