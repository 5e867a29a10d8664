"""How the cost grows: many filesystems (bench/scale_fs.py), huge mount
tables (bench/scale_mounts.py), many hosts (bench/scale_fleet.py), busy
filesystems (bench/busy.py: the worst write a probe sees blocked), what a
database feels (bench/pgbench_gentle.py: the gentle presync's curve); each
against its alternatives, alternating round by round in the same run.
Prints the tables and the targets, writes bench/scale.json and
bench/scale.png.  The load average is kept with every result: on a shared
machine the ratios are what to read.

As root, in a private mount namespace with its own /run (`make bench-scale`
does this):
    python bench/scale.py [--quick] [--parts fs,mounts,busy,database,fleet] [--ansible PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import machine, table  # noqa: E402

# the budget of the whole run, seconds: the fleet part stops adding hosts
# when the next count would not fit
BUDGET_S = 20 * 60

# busy filesystems: 4 loop ext4, writers on half (bench/busy.py): each load,
# and whether the loop devices do direct I/O
BUSY_LOADS = (("streaming", False), ("fresh", False), ("light", False), ("streaming", True))
# the busy target: vmsnap's worst blocked write / util-linux's, on every load
BUSY_GOAL, BUSY_STRETCH = 0.25, 0.15
# what a database feels: pgbench's worst transaction with the gentle presync
# at its default pace / with no freeze at all, and the whole operation (ms)
DB_GOAL, DB_OP_GOAL_MS = 3.0, 10000


def find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return {}


def targets(res) -> list:
    out = []
    fs = res.get("filesystems")
    if fs:
        rows = fs["rows"]
        top = max(r["filesystems"] for r in rows)
        vf = find(rows, filesystems=top, load="idle", strategy="vmsnap freeze")
        vr = find(rows, filesystems=top, load="idle", strategy="vmsnap run")
        r16 = find(rows, filesystems=16, load="idle", strategy="vmsnap freeze")
        out.append(("whole operation, %d idle filesystems, vmsnap freeze / util-linux one by one"
                    % top, "<= 0.02", vf.get("op_ratio_to_fsfreeze"),
                    (vf.get("op_ratio_to_fsfreeze") or 9) <= 0.02))
        out.append(("the same, whole `vmsnap run` process (scripts, start-up) / util-linux",
                    "(shown)", vr.get("op_ratio_to_fsfreeze"), None))
        out.append(("whole operation, 16 idle filesystems, vmsnap freeze, median ms", "<= 12",
                    r16.get("op_median_ms"), (r16.get("op_median_ms") or 99) <= 12))
        out.append(("peak memory at %d filesystems, VmHWM of vmsnap + guardian + reaper, MiB"
                    % top, "<= 64", vr.get("memory_hwm_sum_max_mib"),
                    (vr.get("memory_hwm_sum_max_mib") or 999) <= 64))
        out.append(("the same as PSS (shared pages of the forked helpers counted once), MiB",
                    "(shown)", vr.get("memory_pss_sum_max_mib"), None))
        worst = []
        for what, per in fs["slopes"].items():
            for k, s in per.items():
                if k.startswith("vmsnap") and s.get("exponent_top") is not None:
                    worst.append((s["exponent_top"], "%s %s" % (k, what)))
        for name, s in fs["run_phases"].items():
            if s.get("exponent_top") is not None:
                worst.append((s["exponent_top"], "vmsnap run %s" % name))
        if worst:
            e, name = max(worst)
            out.append(("no vmsnap step grows faster than the filesystems: largest exponent "
                        "b (time ~ N^b) between the two top counts (%s)" % name, "<= 1.2",
                        e, e <= 1.2))
    mt = res.get("mount_tables")
    if mt and mt.get("sizes"):
        sizes = mt["sizes"]
        big = max(sizes, key=lambda s: s["entries"])
        r = big["vmsnap mounts"]["median_ms"] / big["findmnt"]["median_ms"]
        out.append(("`vmsnap mounts` at %d entries / findmnt" % big["entries"], "<= 0.5",
                    round(r, 3), r <= 0.5))
        if len(sizes) >= 2:
            import math
            a, b = sorted(sizes, key=lambda s: s["entries"])[-2:]
            small = min(sizes, key=lambda s: s["entries"])
            for k in ("vmsnap mounts", "plan (in process)", "vmsnap run --dry-run", "findmnt"):
                # fastest rounds (least disturbed by the machine's load); the commands'
                # start-up, paid at every size, is their time at the smallest table
                va, vb = a[k]["min_ms"], b[k]["min_ms"]
                if k != "plan (in process)":
                    va, vb = va - small[k]["min_ms"], vb - small[k]["min_ms"]
                e = math.log(vb / va) / math.log(b["entries"] / a["entries"]) \
                    if va > 0 and vb > 0 else None
                out.append(("%s: growth exponent b (time above start-up ~ N^b), %d -> %d "
                            "entries, fastest rounds" % (k, a["entries"], b["entries"]),
                            "<= 1.1 (linear)" if k != "findmnt" else "(shown)",
                            round(e, 3) if e else None,
                            None if k == "findmnt" else (e is not None and e <= 1.1)))
        small = min(sizes, key=lambda s: s["entries"])
        out.append(("`vmsnap mounts` at %d entries, median ms" % small["entries"], "<= 60",
                    small["vmsnap mounts"]["median_ms"],
                    small["vmsnap mounts"]["median_ms"] <= 60))
    bz = res.get("busy")
    if bz and bz.get("rows"):
        worst = [r for r in bz["rows"] if r["strategy"] == "vmsnap jit"]
        for r in worst:
            q = r.get("stall_ratio_to_fsfreeze")
            out.append(("worst blocked write on the busy filesystems, %d filesystems, %s "
                        "writers on half, %s loop, vmsnap / util-linux"
                        % (r["filesystems"], r["load"], r["loop"]),
                        "<= %s (stretch %s)" % (BUSY_GOAL, BUSY_STRETCH), q,
                        q is not None and q <= BUSY_GOAL))
    db = res.get("database")
    if db and db.get("rows"):
        import pgbench_gentle
        g = find(db["rows"], gentle_every_s=pgbench_gentle.gentle.INTERVAL_S)
        q = g.get("ratio_to_no_freeze")
        out.append(("worst pgbench transaction during the operation, gentle presync at its "
                    "default pace / no freeze", "<= %g" % DB_GOAL, q,
                    q is not None and q <= DB_GOAL))
        op = g.get("op_median_ms")
        out.append(("the same operation, whole (pre-script included), median ms",
                    "<= %d" % DB_OP_GOAL_MS, op, op is not None and op <= DB_OP_GOAL_MS))
        out.append(("the same, worst transaction / the same flushes with no freeze",
                    "(shown)", g.get("ratio_to_flushes_no_freeze"), None))
    fl = res.get("hosts")
    if fl and fl.get("rows"):
        top = max(r["hosts"] for r in fl["rows"])
        v = find(fl["rows"], hosts=top, strategy="vmsnap consistency_group")
        out.append(("longest per-host frozen time at %d hosts, role / plain fsfreeze playbook"
                    % top, "<= 0.5", v.get("frozen_max_ratio_to_plain"),
                    (v.get("frozen_max_ratio_to_plain") or 9) <= 0.5))
        g = fl["growth"]["frozen_max"].get("vmsnap consistency_group", {})
        out.append(("longest per-host frozen time, growth exponent between the two top host "
                    "counts (role)", "< 1", g.get("exponent_top"),
                    g.get("exponent_top") is not None and g["exponent_top"] < 1))
    return [{"target": t, "goal": g, "measured": m, "met": ok} for t, g, m, ok in out]


def draw(res: dict, out: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    panels = []
    if res.get("filesystems"):
        panels += ["fs", "mem"]
    if res.get("mount_tables", {}).get("sizes"):
        panels.append("mounts")
    if res.get("busy", {}).get("rows"):
        panels.append("busy")
    if res.get("database", {}).get("rows"):
        panels.append("database")
    if res.get("hosts", {}).get("rows"):
        panels.append("hosts")
    if not panels:
        return "nothing to draw"
    cols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.2 * cols, 4.2 * nrows), squeeze=False)
    for ax, kind in zip(axes.flat, panels):
        if kind == "fs":
            rows = [r for r in res["filesystems"]["rows"] if r["load"] == "idle"]
            for k in ("util-linux fsfreeze", "ioctl loop", "vmsnap run", "vmsnap freeze"):
                pts = sorted((r["filesystems"], r["op_median_ms"]) for r in rows
                             if r["strategy"] == k)
                ax.plot(*zip(*pts), "o-", label="%s, whole operation" % k)
            pts = sorted((r["filesystems"], r["window_median_ms"]) for r in rows
                         if r["strategy"] == "vmsnap freeze")
            ax.plot(*zip(*pts), "s--", label="vmsnap freeze, freeze window")
            lt = [r for r in res["filesystems"]["rows"] if r["load"] == "light"
                  and r["strategy"] == "vmsnap freeze"]
            if lt:
                pts = sorted((r["filesystems"], r["op_median_ms"]) for r in lt)
                ax.plot(*zip(*pts), "^:", label="vmsnap freeze, light writers on half")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("loop ext4 filesystems")
            ax.set_ylabel("ms, median (log)")
            ax.set_title("Many filesystems (idle): time", fontsize=9)
        elif kind == "mem":
            rows = sorted((r for r in res["filesystems"]["rows"] if r["load"] == "idle"
                           and r["strategy"] == "vmsnap run"), key=lambda r: r["filesystems"])
            xs = [r["filesystems"] for r in rows]
            ax.plot(xs, [r["memory_hwm_sum_max_mib"] for r in rows], "o-",
                    label="VmHWM, vmsnap + guardian + reaper")
            ax.plot(xs, [r["memory_pss_sum_max_mib"] for r in rows], "s-", label="PSS, the same")
            ax.axhline(64, color="grey", ls=":", label="target 64 MiB")
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("loop ext4 filesystems")
            ax.set_ylabel("MiB, peak of the rounds")
            ax.set_title("Many filesystems: peak memory of `vmsnap run`", fontsize=9)
        elif kind == "mounts":
            sizes = sorted(res["mount_tables"]["sizes"], key=lambda s: s["entries"])
            for k in ("findmnt", "vmsnap mounts", "vmsnap run --dry-run", "plan (in process)"):
                ax.plot([s["entries"] for s in sizes], [s[k]["median_ms"] for s in sizes], "o-",
                        label=k)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("entries in the mount table")
            ax.set_ylabel("ms, median (log)")
            ax.set_title("Huge mount tables (overlay, tmpfs, bind; 4 loop ext4)", fontsize=9)
        elif kind == "busy":
            rows = res["busy"]["rows"]
            loads = list(dict.fromkeys((r["load"], r["loop"]) for r in rows))
            names = list(dict.fromkeys(r["strategy"] for r in rows))
            w = 0.8 / len(names)
            for i, k in enumerate(names):
                ys = [find(rows, load=ld, loop=lp, strategy=k).get("stall_median_ms") or 0
                      for ld, lp in loads]
                ax.bar([j + i * w for j in range(len(loads))], ys, w, label=k)
            ax.set_xticks([j + 0.4 - w / 2 for j in range(len(loads))])
            ax.set_xticklabels(["%s\n%s loop" % (ld, lp) for ld, lp in loads], fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel("worst blocked write, ms, median (log)")
            ax.set_title("Busy filesystems (4 loop ext4): what a writer feels", fontsize=9)
        elif kind == "database":
            rows = res["database"]["rows"]
            curve = sorted((r for r in rows if r.get("gentle_every_s")),
                           key=lambda r: -r["gentle_every_s"])
            xs = [1 / r["gentle_every_s"] for r in curve]
            ax.plot(xs, [r["worst_txn_median_ms"] for r in curve], "o-",
                    label="worst transaction, gentle presync")
            ax.plot(xs, [r["presync_median_ms"] for r in curve], "s--",
                    label="presync at the freeze")
            for name, style in (("no freeze", ":"), ("control: flushes, no freeze", "-."),
                                ("util-linux fsfreeze", "--")):
                w = find(rows, strategy=name).get("worst_txn_median_ms")
                if w:
                    ax.axhline(w, ls=style, color="grey", lw=1, label="%s: worst" % name)
            off = next((r for r in rows if r["strategy"].endswith("gentle off")), {})
            if off.get("worst_txn_median_ms"):
                ax.axhline(off["worst_txn_median_ms"], ls="-", color="C3", lw=1,
                           label="gentle off: worst")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("paced flushes per second during the pre-script")
            ax.set_ylabel("ms, median (log)")
            ax.set_title("What PostgreSQL feels (pgbench, streaming neighbour)", fontsize=9)
        else:
            rows = res["hosts"]["rows"]
            for k, c in (("vmsnap consistency_group", "C0"), ("plain fsfreeze playbook", "C1")):
                rs = sorted((r for r in rows if r["strategy"] == k), key=lambda r: r["hosts"])
                xs = [r["hosts"] for r in rs]
                ax.plot(xs, [r["frozen_max_median_ms"] / 1e3 for r in rs], "o-", color=c,
                        label="%s: longest host frozen" % k)
                ax.plot(xs, [r["group_window_median_ms"] / 1e3 for r in rs], "s--", color=c,
                        label="%s: group window" % k)
                ax.plot(xs, [r["wall_median_ms"] / 1e3 for r in rs], "^:", color=c,
                        label="%s: playbook wall" % k)
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("hosts (sshd in namespaces, Ansible)")
            ax.set_ylabel("s, median")
            ax.set_title("Many hosts: group snapshot through Ansible", fontsize=9)
        ax.legend(fontsize=6.5)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    m = res.get("machine", {})
    fig.suptitle("vmsnap: how the cost grows; %s, %s cores, kernel %s, load average %s "
                 "(shared machine: read the ratios)" % (
                     m.get("date"), m.get("cores"), m.get("kernel"),
                     res.get("loadavg_start")), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return None


def report(res) -> None:
    m = res["machine"]
    print("\nmachine: %s cores (%s), kernel %s, %s; load average at the start %s, at the end %s"
          % (m["cores"], m["cpu"], m["kernel"], m["date"], res["loadavg_start"],
             res.get("loadavg_end")))
    fs = res.get("filesystems")
    if fs:
        print(table("\nmany filesystems (ms; op = whole operation, blocked = per filesystem):",
                    fs["rows"], ["filesystems", "load", "strategy", "rounds", "op_median_ms",
                                 "window_median_ms", "blocked_median_ms", "blocked_max_median_ms",
                                 "op_ratio_to_fsfreeze", "memory_hwm_sum_max_mib",
                                 "memory_pss_sum_max_mib", "loadavg"]))
        print("\nslopes (ms per added filesystem between counts; exponent b of N^b, top two):")
        for what, per in fs["slopes"].items():
            for k, s in per.items():
                print("  %-8s %-20s %s  b=%s" % (what, k, " ".join(
                    "%d->%d:%.3f" % (x["from"], x["to"], x["per_fs"]) for x in s["per_fs_ms"]),
                    s["exponent_top"]))
        for name, s in fs["run_phases"].items():
            print("  vmsnap run %-22s %s  b=%s" % (name, s["values"], s["exponent_top"]))
    mt = res.get("mount_tables")
    if mt and mt.get("sizes"):
        keys = [k for k in ("vmsnap mounts", "plan (in process)", "vmsnap run --dry-run",
                            "findmnt", "vmsnap mounts, before", "vmsnap run --dry-run, before")
                if k in mt["sizes"][0]]
        rows = [dict({"entries": s["entries"], "loadavg": s["loadavg"]},
                     **{k: s[k]["median_ms"] for k in keys}) for s in mt["sizes"]]
        print(table("\nmount tables (median ms):", rows, ["entries", *keys, "loadavg"]))
        if "cpu_median_ms" in mt["sizes"][0][keys[0]]:
            rows = [dict({"entries": s["entries"]}, **{k: s[k]["cpu_median_ms"] for k in keys})
                    for s in mt["sizes"]]
            print(table("mount tables, CPU time (user + system; median ms):", rows,
                        ["entries", *keys]))
        st = mt.get("startup")
        if st:
            print("\nstart-up at %d entries (median ms): %s" % (st["entries"], st["wall_median_ms"]))
            if st.get("cpu_median_ms"):
                print("  CPU time (user + system), median ms: %s" % st["cpu_median_ms"])
            for label, imp in st["importtime"].items():
                print("  python -X importtime ... %s: %d modules, %.1f ms self in all; by "
                      "package: %s" % (label, imp["modules"], imp["total_self_ms"],
                                       list(imp["by_package_ms"].items())[:8]))
                print("    vmsnap modules, self: %s" % list(imp["vmsnap_native_ms"].items())[:10])
    bz = res.get("busy")
    if bz and bz.get("rows"):
        print(table("\nbusy filesystems (ms; stall = the worst write a probe on a busy "
                    "filesystem saw blocked):", bz["rows"],
                    ["filesystems", "load", "loop", "strategy", "rounds", "stall_median_ms",
                     "stall_max_ms", "quiet_stall_median_ms", "op_median_ms",
                     "window_median_ms", "writers_lost_mb_median", "stall_ratio_to_fsfreeze",
                     "loadavg"]))
    db = res.get("database")
    if db and db.get("rows"):
        print(table("\nwhat a database feels (%s; failed transactions: %s):"
                    % (db["benchmark"], db["failed_transactions"]), db["rows"],
                    ["strategy", "rounds", "worst_txn_median_ms", "worst_txn_max_ms",
                     "p99_txn_median_ms", "op_median_ms", "presync_median_ms",
                     "gentle_max_flush_median_ms", "ratio_to_no_freeze",
                     "ratio_to_flushes_no_freeze"]))
        print("  load average per round: %s" % db["load_average_per_round"])
    elif db:
        print("\nwhat a database feels: not measured (%s)" % db.get("skipped"))
    fl = res.get("hosts")
    if fl and fl.get("rows"):
        print(table("\nmany hosts (ms):", fl["rows"],
                    ["hosts", "strategy", "rounds", "frozen_max_median_ms", "frozen_median_ms",
                     "group_window_median_ms", "before_step_median_ms", "step_median_ms",
                     "after_step_median_ms", "wall_median_ms", "frozen_max_ratio_to_plain",
                     "loadavg"]))
        if fl.get("skipped"):
            print("  not measured (time budget): %s hosts" % fl["skipped"])
    print(table("\ntargets:", res["targets"], ["target", "goal", "measured", "met"]))


def in_own_namespace() -> bool:
    """Whether this process's mount namespace is not that of its ancestors
    (unshare -m made one) and /run in it is a tmpfs."""
    mine, pid = os.stat("/proc/self/ns/mnt").st_ino, os.getppid()
    other = False
    while pid > 1 and not other:
        try:
            other = os.stat("/proc/%d/ns/mnt" % pid).st_ino != mine
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    with open("/proc/self/mountinfo") as f:
        run_tmpfs = any(line.split()[4] == "/run" and " - tmpfs " in line for line in f)
    return other and run_tmpfs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small counts, few rounds (development)")
    ap.add_argument("--parts", default="fs,mounts,busy,database,fleet")
    ap.add_argument("--ansible", help="ansible-playbook for the hosts part (make bench-scale "
                    "builds one); without it that part is left out")
    ap.add_argument("--out", default=os.path.join(HERE, "scale.json"))
    ap.add_argument("--keep", action="store_true", help="the parts not measured keep their "
                    "figures from the --out file of an earlier run (marked as kept, with its "
                    "date and load)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/scale.py needs root (it makes and freezes loop filesystems)", file=sys.stderr)
        return 1
    if not in_own_namespace():
        print("bench/scale.py runs in a private mount namespace with its own /run: "
              "unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /run && ...' "
              "(make bench-scale does it)", file=sys.stderr)
        return 1
    parts = set(args.parts.split(","))
    t0 = time.monotonic()

    def log(line):
        print("[%4.0fs] %s" % (time.monotonic() - t0, line), file=sys.stderr, flush=True)

    res = {"machine": machine(), "quick": args.quick,
           "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    res["machine"]["scratch"] = "loop ext4 images on the root filesystem; /run on tmpfs"
    if "fs" in parts:
        import scale_fs
        log("many filesystems ...")
        if args.quick:
            res["filesystems"] = scale_fs.run((1, 4, 16), (4,), {1: 3, 4: 3, 16: 2}, log=log)
        else:
            res["filesystems"] = scale_fs.run(log=log)
    if "mounts" in parts:
        import scale_mounts
        log("mount tables ...")
        if args.quick:
            res["mount_tables"] = scale_mounts.run((100, 1000), {100: 3, 1000: 3, "startup": 3})
        else:
            res["mount_tables"] = scale_mounts.run()
    if "busy" in parts:
        import busy
        log("busy filesystems ...")
        rows = []
        for load, dio in BUSY_LOADS:
            got = busy.scenario(4, load, 3 if args.quick else 5, log=log, dio=dio)
            for r in got:
                r["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            rows += got
        res["busy"] = {"rows": rows}
    if "database" in parts:
        import pgbench_gentle
        log("what a database feels ...")
        res["database"] = pgbench_gentle.run(3 if args.quick else 4, log=log)
    if "fleet" in parts and args.ansible:
        import scale_fleet
        log("many hosts ...")
        counts = (1, 2) if args.quick else (1, 2, 4, 8, 16)
        left = BUDGET_S - (time.monotonic() - t0)
        res["hosts"] = scale_fleet.run(args.ansible, counts, rounds={1: 1, 2: 1} if args.quick
                                       else None, log=log, budget_s=left)
    elif "fleet" in parts:
        res["hosts"] = {"rows": [], "skipped": "no --ansible given"}
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.keep and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        for part in ("filesystems", "mount_tables", "busy", "database", "hosts"):
            if part not in res and part in old:
                res[part] = dict({"kept_from": {
                    "date": old["machine"].get("date"), "loadavg_start": old.get("loadavg_start"),
                    "loadavg_end": old.get("loadavg_end")}}, **old[part])   # kept twice: the first
    res["targets"] = targets(res)
    res["seconds"] = round(time.monotonic() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    why = draw(res, os.path.splitext(args.out)[0] + ".png")
    report(res)
    print("\n%s written in %.0f s; plot: %s" % (args.out, res["seconds"],
                                               why or os.path.splitext(args.out)[0] + ".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
