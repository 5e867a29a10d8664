"""Prometheus metrics of the last run, for node_exporter's textfile collector.

Written after the thaw (never inside the freeze window), atomically: a temp
file in the same directory, then rename, so the collector never reads half
a file.  Counters (``vmsnap_runs_total``, ``vmsnap_errors_total``) go on from
the values in the previous file; a missing or unreadable previous file
starts them at zero, which Prometheus treats as a counter reset."""

from __future__ import annotations

import os
import re
import tempfile
import time

STATUSES = ("success", "degraded", "failed")
CONSISTENCIES = ("application", "filesystem", "crash")

# one sample line: name{labels} value   (labels optional)
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class MetricsFileError(ValueError):
    """The metrics file cannot be used (the message says why and what to do)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def read_counters(path: str) -> dict:
    """{(name, (label, value)): float} of the counters in a previous file."""
    counters = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return counters
    for line in lines:
        m = _SAMPLE.match(line)
        if not m or not m.group(1).endswith("_total"):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if value != value or value < 0 or value == float("inf"):
            continue
        labels = tuple(sorted((k, _unescape(v)) for k, v in _LABEL.findall(m.group(2) or "")))
        counters[(m.group(1), labels)] = value
    return counters


def _previous_gauge(path: str, name: str):
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = _SAMPLE.match(line)
                if m and m.group(1) == name and not m.group(2):
                    return float(m.group(3))
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    return None


def render(result: dict, *, now: float, previous: dict, last_success) -> str:
    """The text exposition format of one run's metrics."""
    out = []

    def family(name, kind, help_text, samples):
        out.append("# HELP %s %s" % (name, help_text))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            lab = ",".join('%s="%s"' % (k, _escape(str(v))) for k, v in labels)
            out.append("%s%s %s" % (name, "{%s}" % lab if lab else "", repr(float(value))))

    status = result.get("status")
    consistency = result.get("consistency")
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
    freeze = result.get("freeze") or {}
    if freeze.get("window_ms") is not None:
        family("vmsnap_freeze_window_seconds", "gauge",
               "The last run's freeze window: first FIFREEZE issued to last FITHAW returned.",
               [((), freeze["window_ms"] / 1000.0)])
    family("vmsnap_filesystems_frozen", "gauge", "Filesystems the last run froze.",
           [((), sum(1 for m in freeze.get("mounts") or [] if m.get("frozen")))])
    family("vmsnap_freeze_deadline_hit", "gauge",
           "1 when the guardian thawed at the freeze deadline in the last run.",
           [((), int(bool(freeze.get("deadline_hit"))))])
    scripts = [(name, result.get(key)) for name, key in (("pre", "pre_script"),
                                                         ("post", "post_script"))]
    ran = [((("script", name),), sr["duration_ms"] / 1000.0) for name, sr in scripts
           if sr and sr.get("ran")]
    if ran:
        family("vmsnap_script_duration_seconds", "gauge",
               "How long the last run's scripts took, all attempts.", ran)
    snap = result.get("snapshot")
    if snap and snap.get("argv"):
        family("vmsnap_snapshot_duration_seconds", "gauge",
               "How long the last run's snapshot step took.", [((), snap["duration_ms"] / 1000.0)])
    family("vmsnap_run_duration_seconds", "gauge", "How long the last run took in all.",
           [((), (result.get("duration_ms") or 0) / 1000.0)])

    runs = {s: previous.get(("vmsnap_runs_total", (("status", s),)), 0.0) for s in STATUSES}
    if status in runs:
        runs[status] += 1
    family("vmsnap_runs_total", "counter", "Runs, by status.",
           [((("status", s),), runs[s]) for s in STATUSES])
    errors = {labels[0][1]: v for (name, labels), v in previous.items()
              if name == "vmsnap_errors_total" and len(labels) == 1 and labels[0][0] == "code"}
    for e in result.get("errors") or []:
        code = e.get("code") if isinstance(e, dict) else getattr(e, "code", None)
        if code:
            errors[code] = errors.get(code, 0.0) + 1
    if errors:
        family("vmsnap_errors_total", "counter", "Errors reported by runs, by code (SPEC 5).",
               [((("code", c),), errors[c]) for c in sorted(errors)])
    return "\n".join(out) + "\n"


def write_textfile(result: dict, path: str, *, now: float | None = None) -> None:
    """Writes the run's metrics to path (a *.prom file of node_exporter's
    textfile directory) by temp file + rename in that directory."""
    if not path.endswith(".prom"):
        raise MetricsFileError("metrics file %s: the name must end in .prom (node_exporter's "
                               "textfile collector reads only *.prom files)" % path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise MetricsFileError("metrics file %s: no directory %s (create it, or point "
                               "--metrics-file at node_exporter's textfile directory)"
                               % (path, directory))
    now = time.time() if now is None else now
    text = render(result, now=now, previous=read_counters(path),
                  last_success=_previous_gauge(path, "vmsnap_last_success_timestamp_seconds"))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")   # not *.prom: the collector skips it
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)    # node_exporter usually runs as its own user
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
