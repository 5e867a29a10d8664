"""`make test-under-load`: the timing-sensitive test files, several runs in a
row, with CPU hogs running beside them (at the same niceness as the tests).

    python tools/under_load.py [--runs 5] [--hogs 2] -- PYTEST_ARGS...

Stops at the first failing run.  The hogs are this tool's own children,
killed (by their pid) when it ends, whatever happens.  Prints each run's
time and, last, ``under load: R of R runs passed with H hogs in S s``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

HOG = "while True:\n    pass\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    pytest_args = [a for a in args.pytest_args if a != "--"]
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    t0 = time.monotonic()
    passed = 0
    try:
        for run in range(1, args.runs + 1):
            t = time.monotonic()
            rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 *pytest_args]).returncode
            print("under load: run %d of %d: %s in %.0f s" % (
                run, args.runs, "passed" if rc == 0 else "FAILED (exit %d)" % rc,
                time.monotonic() - t), flush=True)
            if rc != 0:
                break
            passed += 1
    finally:
        for h in hogs:
            h.send_signal(signal.SIGKILL)
            h.wait()
    print("under load: %d of %d runs passed with %d hogs in %.0f s"
          % (passed, args.runs, args.hogs, time.monotonic() - t0))
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
