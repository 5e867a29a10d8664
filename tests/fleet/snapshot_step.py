"""The group's snapshot step in the fleet tests, run by ansible-playbook on
the controller while the hosts should be frozen.  It notes, at its start and
at its end, whether each host's filesystem really is frozen (the ground
truth the verdict is checked against), and injects a fault on request.

usage: snapshot_step.py SPEC.json   (written by the test)"""

import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import PROBE, pids_in_ns  # noqa: E402


def probe(host):
    """"frozen" when every filesystem of the host is, else what each is."""
    states = []
    for mnt in host["mnts"]:
        p = subprocess.run(["nsenter", "--mount=" + host["ns"], "--", sys.executable, "-c",
                            PROBE, mnt], capture_output=True, text=True, timeout=20)
        states.append(p.stdout.strip() or p.stderr.strip())
    return states[0] if len(set(states)) == 1 else ",".join(states)


def kill_sshd(ns_path):
    for pid in pids_in_ns(os.stat(ns_path).st_ino):
        try:
            with open("/proc/%d/comm" % pid) as f:
                if f.read().startswith("sshd"):
                    os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    report = {"started_at": time.time()}
    report["start"] = {name: probe(h) for name, h in spec["hosts"].items()}
    with open(spec["started_file"], "w") as f:
        f.write("started\n")
    for name in spec.get("kill_sshd", []):
        kill_sshd(spec["hosts"][name]["ns"])
    time.sleep(spec.get("sleep", 0.5))
    report["end"] = {name: probe(h) for name, h in spec["hosts"].items()}
    report["ended_at"] = time.time()
    with open(spec["report"], "w") as f:
        json.dump(report, f)
    sys.exit(spec.get("exit", 0))


if __name__ == "__main__":
    main()
