"""Many hosts: a group snapshot of 1 to 16 hosts through Ansible, with the
collection's `consistency_group` role and with the playbook a user writes
without vmsnap (bench/playbooks/plain_fsfreeze.yml: `fsfreeze -f` on
every host, the snapshot command, `fsfreeze -u` on every host), the two
alternating round by round on the same hosts with the same snapshot
command (`sleep 0.2`, standing for a cloud API call).

The hosts are the fleet tests' (tests/fleet/harness.py): each an sshd in
its own mount namespace on its own 127.0.0.x with two loop ext4
filesystems; all are started once, each count uses the first N through
`--limit`.  They share this machine's clock, so the hosts' times are on
the controller's clock (the role's measured offsets, a few ms, are
applied anyway).

Per round: the playbook's wall time; each host's frozen time (vmsnap:
its run's freeze window, first FIFREEZE to last FITHAW; plain: its clock
before the first `fsfreeze -f` to after the last `fsfreeze -u`); the
group's window, first host frozen to last host thawed.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.fleet.harness import PLAYBOOKS, Fleet  # noqa: E402
from vmsnap_native.devtools.stats import summary  # noqa: E402

PLAIN = os.path.join(HERE, "playbooks", "plain_fsfreeze.yml")
ROLE = os.path.join(PLAYBOOKS, "group.yml")
SNAPSHOT = ["sleep", "0.2"]
ALTERNATIVES = ["vmsnap consistency_group", "plain fsfreeze playbook"]
BASELINE = "plain fsfreeze playbook"
# where the group window goes (see spans_and_step)
PARTS = ("before_step", "freeze_spread", "frozen_to_step", "step", "after_step",
         "step_to_released", "released_to_thawed")


def _playbook(fleet, path, extra, names, timeout=300):
    vars_file = os.path.join(fleet.base, "scale-vars.json")
    with open(vars_file, "w") as f:
        json.dump(extra, f)
    argv = [fleet.ansible_bin, path, "-e", "@" + vars_file, "--limit", ",".join(names)]
    t0 = time.monotonic_ns()
    p = subprocess.run(argv, env=fleet.env(), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout, start_new_session=True)
    wall = (time.monotonic_ns() - t0) / 1e6
    if p.returncode != 0:
        raise RuntimeError("%s on %d hosts: exit %d\n%s" % (os.path.basename(path), len(names),
                                                            p.returncode, p.stdout[-3000:]))
    return wall


def role_round(fleet, names) -> dict:
    report = os.path.join(fleet.base, "scale-role.json")
    if os.path.exists(report):
        os.unlink(report)
    wall = _playbook(fleet, ROLE, {"consistency_group_lease": 60,
                                   "consistency_group_snapshot_command": SNAPSHOT,
                                   "consistency_group_report_file": report}, names)
    with open(report) as f:
        rep = json.load(f)
    v = rep["verdict"]
    if v.get("consistency") != "application":
        raise RuntimeError("the role's round on %d hosts: %s" % (len(names), v.get("msg")))
    frozen, spans, marks = {}, [], {"frozen": [], "released": []}
    for h in names:
        b, e = rep["begin"][h], rep["end"][h]
        clock = (b.get("clock") or e.get("clock") or {})
        off = clock.get("offset") or 0.0
        window = e["freeze"]["window_ms"]
        ph = {p["phase"]: p["duration_ms"] for p in e.get("phases") or []}
        # the waiter notes frozen_at as the snapshot step starts; the window began
        # that much earlier: window - the step - the thaw
        lead = max(0.0, window - ph.get("snapshot", 0) - ph.get("thaw", 0)) / 1e3
        # an armed host (the role now) says when it froze in its end result
        frozen_at = e.get("frozen_at") if e.get("frozen_at") is not None else b["frozen_at"]
        start = frozen_at - off - lead
        frozen[h] = window
        spans.append((start, start + window / 1e3))
        marks["frozen"].append(frozen_at - off)
        marks["released"].append(e["released_at"] - off)
    out = dict(spans_and_step(spans, rep.get("snapshot"), marks), wall_ms=wall, frozen_ms=frozen)
    # an armed host: how long before the agreed instant it was told (the lead left)
    left = [rep["end"][h]["freeze_instant"] - rep["end"][h]["told_at"] for h in names
            if rep["end"][h].get("told_at") is not None
            and rep["end"][h].get("freeze_instant") is not None]
    if left:
        out["lead_left_min_ms"] = min(left) * 1e3
    unc = [(hv.get("clock") or {}).get("uncertainty") for hv in v["hosts"].values()]
    unc = [u for u in unc if u is not None]
    if unc:
        out["clock_uncertainty_max_ms"] = max(unc) * 1e3
    return out


def _stamp(text):
    """Ansible's command start/end ("2026-12-02 17:33:25.123456", local time)."""
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def spans_and_step(spans, snap, marks=None) -> dict:
    """The group's window, and where it goes: first host frozen -> last host
    frozen -> the step starts -> the step -> the step ends -> last host
    released (the role: its release noted on the host) -> last host thawed (ms)."""
    first, last = min(s[0] for s in spans), max(s[1] for s in spans)
    out = {"group_window_ms": (last - first) * 1e3}
    if snap and snap.get("start") and snap.get("end"):
        a, b = _stamp(snap["start"]), _stamp(snap["end"])
        all_frozen = max((marks or {}).get("frozen") or [s[0] for s in spans])
        out.update(before_step_ms=(a - first) * 1e3, step_ms=(b - a) * 1e3,
                   after_step_ms=(last - b) * 1e3,
                   freeze_spread_ms=(all_frozen - first) * 1e3,
                   frozen_to_step_ms=(a - all_frozen) * 1e3)
        if marks and marks.get("released"):
            rel = max(marks["released"])
            out.update(step_to_released_ms=(rel - b) * 1e3, released_to_thawed_ms=(last - rel) * 1e3)
    return out


def plain_round(fleet, names) -> dict:
    report = os.path.join(fleet.base, "scale-plain.json")
    if os.path.exists(report):
        os.unlink(report)
    wall = _playbook(fleet, PLAIN, {"snapshot_command": SNAPSHOT, "report_file": report}, names)
    with open(report) as f:
        rep = json.load(f)
    frozen, spans = {}, []
    for h in names:
        a, b = float(rep["freeze"][h].split()[0]), float(rep["thaw"][h].split()[-1])
        frozen[h] = (b - a) * 1e3
        spans.append((a, b))
    return dict(spans_and_step(spans, rep.get("snapshot"), {"frozen": [a for a, _ in spans]}),
                wall_ms=wall, frozen_ms=frozen)


RUNNERS = {"vmsnap consistency_group": role_round, "plain fsfreeze playbook": plain_round}


def scenario(fleet, n: int, rounds: int, log=None) -> list:
    names = [h.name for h in fleet.hosts[:n]]
    # warm: the ssh control masters of the hosts new to this count (the plain
    # playbook opens them at the least cost)
    plain_round(fleet, names)
    la0 = os.getloadavg()
    res = {k: {"wall": [], "group": [], "frozen_max": [], "frozen": [],
               **{p: [] for p in PARTS}} for k in ALTERNATIVES}
    for r in range(rounds):
        for k in ALTERNATIVES[r % 2:] + ALTERNATIVES[:r % 2]:
            out = RUNNERS[k](fleet, names)
            e = res[k]
            e["wall"].append(out["wall_ms"])
            e["group"].append(out["group_window_ms"])
            e["frozen_max"].append(max(out["frozen_ms"].values()))
            e["frozen"].extend(out["frozen_ms"].values())
            for part in PARTS:
                e[part].append(out.get(part + "_ms"))
            if out.get("lead_left_min_ms") is not None:
                e.setdefault("lead_left_min", []).append(out["lead_left_min_ms"])
            if out.get("clock_uncertainty_max_ms") is not None:
                e.setdefault("clock_unc", []).append(out["clock_uncertainty_max_ms"])
        if log:
            log("  %d hosts: round %d/%d" % (n, r + 1, rounds))
    la = [round(x, 2) for x in la0 + os.getloadavg()[:1]]
    base = summary(res[BASELINE]["frozen_max"])["median"]
    rows = []
    for k in ALTERNATIVES:
        e = res[k]
        fm = summary(e["frozen_max"])
        rows.append({"hosts": n, "strategy": k, "rounds": rounds,
                     "wall_median_ms": summary(e["wall"])["median"],
                     "group_window_median_ms": summary(e["group"])["median"],
                     "frozen_max_median_ms": fm["median"], "frozen_max_max_ms": fm["max"],
                     "frozen_median_ms": summary(e["frozen"])["median"],
                     **{p + "_median_ms": summary(e[p])["median"] for p in PARTS},
                     "frozen_max_ratio_to_plain": round(fm["median"] / base, 3) if base else None,
                     "lead_left_min_ms": min(e["lead_left_min"]) if e.get("lead_left_min") else None,
                     "clock_uncertainty_max_ms": max(e["clock_unc"]) if e.get("clock_unc") else None,
                     "loadavg": la, "frozen_max_ms": [round(x, 1) for x in e["frozen_max"]]})
    return rows


def growth(rows, key="frozen_max_median_ms") -> dict:
    """Per alternative: exponent b of KEY ~ N^b between the two largest host counts."""
    out = {}
    for k in ALTERNATIVES:
        pts = sorted((r["hosts"], r[key]) for r in rows if r["strategy"] == k and r.get(key))
        if len(pts) >= 2:
            (n1, v1), (n2, v2) = pts[-2], pts[-1]
            out[k] = {"values": pts, "exponent_top": round(math.log(v2 / v1) / math.log(n2 / n1), 3),
                      "per_host_ms": round((v2 - v1) / (n2 - n1), 2)}
    return out


def run(ansible: str, counts=(1, 2, 4, 8, 16), rounds=None, log=None, budget_s=None) -> dict:
    """BUDGET_S: a count is left out (and the larger ones) when the last
    count's time, scaled by hosts and rounds, says it would not fit."""
    rounds = rounds or {1: 2, 2: 2, 4: 2, 8: 1, 16: 1}
    t0 = time.monotonic()
    skipped = []
    fleet = Fleet(max(counts), ansible_bin=ansible)
    # the harness reads VMSNAP_FLEET_RUN for its directories' names (make sets it,
    # so a sweep finds what a killed run left)
    rows = []
    try:
        fleet.start()
        cfg = os.path.join(fleet.base, "ansible.cfg")
        with open(cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:   # one fork per host: no host waits for a free worker
            f.write(text.replace("forks = 10", "forks = %d" % max(10, max(counts) + 2)))
        if log:
            log("  %d hosts up in %.0f s" % (len(fleet.hosts), time.monotonic() - t0))
        last = None   # (hosts, rounds, seconds) of the last count measured
        for n in counts:
            r = rounds.get(n, 2)
            if budget_s is not None and last is not None:
                # playbook time grows about as sqrt(hosts) here; a safety factor of 1.5
                need = 1.5 * last[2] * (n / last[0]) ** 0.5 * (r + 1) / (last[1] + 1)
                if time.monotonic() - t0 + need > budget_s:
                    skipped = [c for c in counts if c >= n]
                    if log:
                        log("  %s hosts left out: about %.0f s needed, %.0f s left" % (
                            skipped, need, budget_s - (time.monotonic() - t0)))
                    break
            t1 = time.monotonic()
            rows += scenario(fleet, n, r, log)
            last = (n, r, time.monotonic() - t1)
    finally:
        fleet.stop()
    return {"rows": rows, "growth": {"frozen_max": growth(rows),
                                     "group_window": growth(rows, "group_window_median_ms"),
                                     "wall": growth(rows, "wall_median_ms")},
            "snapshot_command": SNAPSHOT, "skipped": skipped, "seconds": round(time.monotonic() - t0, 1)}


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--ansible", required=True, help="path of ansible-playbook")
    ap.add_argument("-n", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    out = run(a.ansible, a.n, {n: a.rounds for n in a.n},
              log=lambda s: print(s, file=sys.stderr, flush=True))
    for r in out["rows"]:
        print(json.dumps(r))
    print(json.dumps(out["growth"], indent=1))
