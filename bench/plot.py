"""Draws bench/results.json's distributions as bench/busy.png: the worst
write stall per alternative for each load and filesystem count, the
worst PostgreSQL transaction latency under pgbench during a freeze, and
during a whole `vmsnap run` vs an Azure-style flow.  Needs matplotlib, a
bench-only extra (pip install -e '.[bench]'); never a runtime dependency.

    python bench/plot.py [results.json] [out.png]
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def draw(res: dict, out: str) -> str | None:
    """Writes OUT; returns why not (matplotlib missing, nothing to draw) or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    busy = [r for r in res.get("busy", []) if r.get("stalls_ms")]
    pg = [r for r in res.get("pgbench", []) if r.get("worst_ms")]
    groups = sorted({(r["filesystems"], r["load"]) for r in busy})
    whole = [r for r in res.get("pgbench_run", []) if r.get("worst_ms")]
    panels = [("stall", g) for g in groups] + ([("pg", None)] if pg else []) + \
        ([("whole", None)] if whole else [])
    if not panels:
        return "no busy/pgbench results to draw"
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), squeeze=False)
    for ax, (kind, g) in zip(axes[:, 0], panels):
        if kind == "stall":
            rows = [r for r in busy if (r["filesystems"], r["load"]) == g]
            data = [r["stalls_ms"] for r in rows]
            title = "%d loop ext4, %s load: worst single write() blocked per round" % g
        elif kind == "pg":
            rows = pg
            data = [r["worst_ms"] for r in rows]
            title = "PostgreSQL 15, pgbench -c 4, streaming neighbour: worst transaction per round"
        else:
            rows = whole
            data = [r["worst_ms"] for r in rows]
            title = ("PostgreSQL 15, pgbench -c 4: worst transaction during a whole run "
                     "(scripts, freeze, snapshot step, thaw)")
        labels = [r["strategy"] for r in rows]
        if kind == "whole":   # the operation's length and freeze window say why
            labels = ["%s\nop %.1f s, window %.0f ms" % (r["strategy"], r["op_median_ms"] / 1e3,
                                                         r["window_median_ms"]) for r in rows]
        try:
            ax.boxplot(data, orientation="horizontal", whis=(0, 100))
        except TypeError:   # matplotlib < 3.10
            ax.boxplot(data, vert=False, whis=(0, 100))
        for i, d in enumerate(data, 1):
            ax.plot(d, [i] * len(d), "o", ms=3, alpha=0.6)
        ax.set_yticks(range(1, len(labels) + 1), labels)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("ms (log)")
        ax.set_title(title, fontsize=9)
    m = res.get("machine", {})
    fig.suptitle("vmsnap bench, %s, %s cores, kernel %s" % (m.get("date"), m.get("cores"),
                                                            m.get("kernel")), fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return None


if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results.json")
    dst = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "busy.png")
    with open(src) as f:
        why = draw(json.load(f), dst)
    print(why or "%s written" % dst)
    sys.exit(1 if why else 0)
