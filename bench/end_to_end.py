"""`vmsnap run` end to end: trivial pre/post scripts, an empty snapshot
step, one loop filesystem; the whole process's wall time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import Scratch

from vmsnap_native.devtools.stats import summary

# the installed console script next to this interpreter (what a user runs)
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "vmsnap")
VMSNAP = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "vmsnap_native"]


def run(quick: bool = False) -> list:
    rounds = 10 if quick else 30
    etc = tempfile.mkdtemp(prefix="vmsnap-bench-etc-")
    try:
        for name in ("pre.sh", "post.sh"):
            with open(os.path.join(etc, name), "w") as f:
                f.write("#!/bin/sh\nexit 0\n")
            os.chmod(os.path.join(etc, name), 0o700)
        cfg = os.path.join(etc, "config.json")
        with open(cfg, "w") as f:
            json.dump({"preScriptLocation": os.path.join(etc, "pre.sh"),
                       "postScriptLocation": os.path.join(etc, "post.sh"),
                       "hooksDirectory": os.path.join(etc, "hooks.d")}, f)
        os.chmod(cfg, 0o600)
        walls, windows = [], []
        with Scratch(1) as sc:
            argv = [*VMSNAP, "run", "--json", "--config", cfg, "--mount", sc.mounts[0],
                    "--log-file", ""]
            for _ in range(rounds + 1):
                t0 = time.perf_counter_ns()
                p = subprocess.run(argv, capture_output=True, text=True)
                walls.append((time.perf_counter_ns() - t0) / 1e6)
                res = json.loads(p.stdout)
                assert res["consistency"] == "application", res
                windows.append(res["freeze"]["window_ms"])
        walls, windows = walls[1:], windows[1:]   # the first pays for cold caches
        w, f = summary(walls), summary(windows)
        return [{"benchmark": "vmsnap run, whole process (pre+freeze+empty snapshot+thaw+post)",
                 "median_ms": w["median"], "p95_ms": w.get("p95"), "window_median_ms": f["median"],
                 "rounds": rounds}]
    finally:
        shutil.rmtree(etc, ignore_errors=True)
