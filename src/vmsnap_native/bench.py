"""``vmsnap bench``: the freeze window of this machine's filesystems,
sequential (one at a time, as the usual tools do) vs parallel (vmsnap),
alternating, each round under the guardian with a short deadline."""

from __future__ import annotations

import json
import sys
import time

from . import mountinfo
from .errors import CoreUnavailable, FreezeError
from .freeze import FreezeSession
from .stats import ratio, summary

DEADLINE_S = 5.0
STRATEGIES = ("sequential", "parallel")


def measure(cands, sequential: bool) -> float | None:
    s = FreezeSession(cands, timeout=DEADLINE_S, presync=True, sequential=sequential)
    with s:
        if not s.all_frozen:
            raise FreezeError("; ".join("%s: %s" % (m.mountpoint, m.error) for m in s.failures))
    return s.window_ms


def main(mounts=None, rounds: int = 20, json_out: bool = False, yes: bool = False) -> int:
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
    windows = {k: [] for k in STRATEGIES}
    try:
        for r in range(rounds):
            order = STRATEGIES if r % 2 == 0 else tuple(reversed(STRATEGIES))
            for strategy in order:
                windows[strategy].append(measure(sel.eligible, strategy == "sequential"))
                time.sleep(0.01)
    except (FreezeError, CoreUnavailable, OSError) as exc:
        print("vmsnap bench: %s (nothing is left frozen)" % exc, file=sys.stderr)
        return 1
    stats = {k: summary(v) for k, v in windows.items()}
    report = {
        "filesystems": [c.mount.mountpoint for c in sel.eligible],
        "rounds": rounds,
        "window_ms": stats,
        "ratio_parallel_to_sequential": ratio(stats["parallel"]["median"],
                                              stats["sequential"]["median"]),
    }
    out = sys.stderr if json_out else sys.stdout
    print("freeze window of %d filesystem(s), %d rounds each, alternating:"
          % (len(sel.eligible), rounds), file=out)
    print("  %-11s %9s %9s %9s %9s" % ("strategy", "min ms", "median", "p95", "max"), file=out)
    for k in STRATEGIES:
        st = stats[k]
        print("  %-11s %9.3f %9.3f %9.3f %9.3f" % (k, st["min"], st["median"], st["p95"],
                                                   st["max"]), file=out)
    print("  parallel / sequential (median): %s" % report["ratio_parallel_to_sequential"],
          file=out)
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0
