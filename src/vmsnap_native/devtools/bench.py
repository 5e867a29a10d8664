"""``vmsnap bench``: the freeze window of this machine's filesystems,
sequential (one at a time, as the usual tools do) vs parallel (a whole
level at once) vs jit (vmsnap's default: quiet filesystems start once the
busy ones are frozen), alternating, each round under the guardian with a
short deadline.  ``--load streaming|light`` runs a writer on each selected
filesystem meanwhile (a 256 MiB or an 8 MiB rewrite, in a hidden file
removed at the end) and a probe writing 4 KiB every ms beside it: the
report then has the worst single write() the probe saw blocked."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import IO, Any

from .. import mountinfo
from ..errors import CoreUnavailable, FreezeError
from ..freeze import DEFAULT_DIRTY_CAP_MB, FreezeSession
from .stats import ratio, summary

DEADLINE_S = 5.0
STRATEGIES = ("sequential", "parallel", "jit")
LOADS = ("none", "light", "streaming")

# The writer: rewrites LOAD_MIB MiB in 1 MiB writes until killed (light: paced).
_WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
size, pause = int(sys.argv[2]), float(sys.argv[3])
block = b"w" * (1 << 20)
i = 0
while True:
    os.pwrite(fd, block, (i % size) << 20)
    i += 1
    if pause:
        time.sleep(pause)
"""
# The probe: 4 KiB every ms; reports each write as (start, end) ns.
_PROBE = r"""
import os, struct, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
out = sys.stdout.buffer
n = 0
while True:
    t0 = time.monotonic_ns()
    os.pwrite(fd, b"p" * 4096, (n % 256) * 4096)
    out.write(struct.pack("qq", t0, time.monotonic_ns())); out.flush()
    n += 1
    time.sleep(0.001)
"""
_LOAD_ARGS = {"streaming": ("256", "0"), "light": ("8", "0.002")}


class _Load:
    """A writer and a probe on each mount point, in hidden files removed at the end."""

    def __init__(self, mountpoints: Iterable[str], load: str) -> None:
        self.files: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.writes: list[tuple[int, int]] = []   # (start, end) ns of each probe write
        try:
            for m in mountpoints:
                w = os.path.join(m, ".vmsnap-bench-load-%d" % os.getpid())
                pr = os.path.join(m, ".vmsnap-bench-probe-%d" % os.getpid())
                self.files += [w, pr]
                self.procs.append(subprocess.Popen([sys.executable, "-c", _WRITER, w,
                                                    *_LOAD_ARGS[load]], start_new_session=True))
                p = subprocess.Popen([sys.executable, "-c", _PROBE, pr], stdout=subprocess.PIPE,
                                     start_new_session=True)
                self.procs.append(p)
                threading.Thread(target=self._read, args=(p.stdout,), daemon=True).start()
        except BaseException:
            self.stop()
            raise
        time.sleep(2.0)   # the writers reach their steady state

    def _read(self, f: IO[bytes]) -> None:
        while len(b := f.read(16)) == 16:
            self.writes.append(struct.unpack("qq", b))

    def worst_write_ms(self, t0: int, t1: int) -> float:
        """The longest single probe write() overlapping [t0, t1]."""
        time.sleep(0.02)   # the write that ended the stall lands
        worst = max((b - a for a, b in list(self.writes) if b >= t0 and a <= t1), default=0)
        return round(worst / 1e6, 3)

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        for f in self.files:
            try:
                os.unlink(f)
            except OSError:
                pass


def measure(cands: Sequence[mountinfo.Candidate], strategy: str) -> float | None:
    s = FreezeSession(cands, timeout=DEADLINE_S, presync=True,
                      sequential=strategy == "sequential",
                      schedule="parallel" if strategy == "parallel" else "jit",
                      # jit is vmsnap's default (dirty cap included); the others as before
                      dirty_cap_mb=DEFAULT_DIRTY_CAP_MB if strategy == "jit" else 0)
    with s:
        if not s.all_frozen:
            raise FreezeError("; ".join("%s: %s" % (m.mountpoint, m.error) for m in s.failures))
    return s.window_ms


def main(mounts: Sequence[str] | None = None, rounds: int = 20, json_out: bool = False,
         yes: bool = False,
         load: str = "none") -> int:
    sel = mountinfo.discover(only=mounts or None)
    if sel.missing:
        print("vmsnap bench: not a mount point: %s" % ", ".join(sel.missing), file=sys.stderr)
        return 1
    if not sel.eligible:
        print("vmsnap bench: no filesystem to freeze", file=sys.stderr)
        return 1
    if any(c.mount.mountpoint == "/" for c in sel.eligible) and not yes:
        print("vmsnap bench: this would freeze / (the root filesystem): every write on the "
              "machine stalls during each measurement. Pass --yes to agree, or choose "
              "filesystems with --mount.", file=sys.stderr)
        return 1
    if rounds < 1:
        print("vmsnap bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    if load not in LOADS:
        print("vmsnap bench: --load must be one of %s, not %r" % (", ".join(LOADS), load),
              file=sys.stderr)
        return 2
    progress = sys.stderr.isatty() and not json_out
    windows: dict[str, list[float | None]] = {k: [] for k in STRATEGIES}
    stalls: dict[str, list[float | None]] = {k: [] for k in STRATEGIES}
    work = None
    try:
        if load != "none":
            work = _Load([c.mount.mountpoint for c in sel.eligible], load)
        for r in range(rounds):
            order = STRATEGIES[r % len(STRATEGIES):] + STRATEGIES[:r % len(STRATEGIES)]
            for strategy in order:
                t0 = time.monotonic_ns()
                windows[strategy].append(measure(sel.eligible, strategy))
                if work:
                    stalls[strategy].append(work.worst_write_ms(t0, time.monotonic_ns()))
                time.sleep(0.2 if work else 0.01)
            if progress:
                print("\rvmsnap bench: round %d of %d" % (r + 1, rounds), end="",
                      file=sys.stderr, flush=True)
    except (FreezeError, CoreUnavailable, OSError) as exc:
        print("vmsnap bench: %s (nothing is left frozen)" % exc, file=sys.stderr)
        return 1
    finally:
        if work:
            work.stop()
        if progress:
            print(file=sys.stderr)
    stats = {k: summary(v) for k, v in windows.items()}
    report: dict[str, Any] = {
        "filesystems": [c.mount.mountpoint for c in sel.eligible],
        "rounds": rounds,
        "load": load,
        "window_ms": stats,
        "ratio_parallel_to_sequential": ratio(stats["parallel"]["median"],
                                              stats["sequential"]["median"]),
        "ratio_jit_to_sequential": ratio(stats["jit"]["median"], stats["sequential"]["median"]),
    }
    if work:
        report["worst_write_ms"] = {k: summary(v) for k, v in stalls.items()}
    out = sys.stderr if json_out else sys.stdout
    print("freeze window of %d filesystem(s), %d rounds each, alternating, load: %s:"
          % (len(sel.eligible), rounds, load), file=out)
    # a p95 only from enough rounds (stats.enough_for); below that the max says it all
    p95 = all("p95" in stats[k] for k in STRATEGIES)
    print("  %-11s %9s %9s" % ("strategy", "min ms", "median") + (" %9s" % "p95" if p95 else "")
          + " %11s" % ("max of %d" % rounds)
          + ("  %s" % "worst write, median ms" if work else ""), file=out)
    for k in STRATEGIES:
        st = stats[k]
        print("  %-11s %9.3f %9.3f" % (k, st["min"], st["median"])
              + (" %9.3f" % st["p95"] if p95 else "") + " %11.3f" % st["max"]
              + ("  %9.3f" % report["worst_write_ms"][k]["median"] if work else ""), file=out)
    print("  parallel / sequential (median): %s" % report["ratio_parallel_to_sequential"],
          file=out)
    print("  jit / sequential (median): %s" % report["ratio_jit_to_sequential"], file=out)
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0
