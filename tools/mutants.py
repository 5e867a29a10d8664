"""Mutation testing for `make mutants` (mutmut 2.x).

    python tools/mutants.py --modules "src/a.py src/b.py" --tests "tests/test_a.py ..."

Each module is mutated in place, one mutant at a time, and judged by the
given fast tests (pytest -x: the first failure kills the mutant); the file
is restored afterwards.  Prints the survivors, per module, then as its last
line: ``mutants: K killed of N (P%)``.  Timeouts count as killed (the
mutant hung the tests), as mutmut counts them.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys

CACHE = ".mutmut-cache"
KILLED = ("ok_killed", "bad_timeout", "ok_suspicious")


def statuses() -> list:
    with sqlite3.connect(CACHE) as db:
        return db.execute(
            "SELECT SourceFile.filename, Line.line_number, Line.line, Mutant.id, Mutant.status "
            "FROM Mutant JOIN Line ON Mutant.line = Line.id "
            "JOIN SourceFile ON Line.sourcefile = SourceFile.id").fetchall()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modules", required=True, help="space-separated source files to mutate")
    ap.add_argument("--tests", required=True, help="space-separated test files to judge by")
    args = ap.parse_args()
    modules, tests = args.modules.split(), args.tests.split()
    if os.path.exists(CACHE):
        os.unlink(CACHE)   # a fresh count every time: the code may have changed
    # fewer hypothesis examples per mutant: the runtime stays bounded
    env = dict(os.environ, VMSNAP_HYPOTHESIS_PROFILE="mutants")
    for module in modules:
        # the module's own tests first: the same tests judge every mutant, but -x stops
        # at the first failure, so a mutant dies in a second instead of after the rest
        stem = os.path.splitext(os.path.basename(module))[0]
        ordered = sorted(tests, key=lambda t: stem not in os.path.basename(t))
        runner = "%s -m pytest -x -q -p no:cacheprovider -p no:randomly %s" % (
            sys.executable, " ".join(ordered))
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "mutmut"), "run",
                        "--paths-to-mutate", module, "--runner", runner,
                        "--tests-dir", "tests", "--no-progress"],
                       env=env, stdout=subprocess.DEVNULL)
    rows = statuses()
    killed = [r for r in rows if r[4] in KILLED]
    survivors = [r for r in rows if r[4] not in KILLED]
    for filename, line_no, line, mutant_id, status in survivors:
        print("survived: %s:%d (mutant %d, %s): %s" % (filename, line_no + 1, mutant_id,
                                                       status, line.strip()))
    n = len(rows)
    print("mutants: %d killed of %d (%.1f%%)" % (len(killed), n, 100.0 * len(killed) / n
                                                 if n else 0.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
