"""Mutation testing for `make mutants`: mutmut 2.x's mutation operators,
driven here so that the count is honest.

    python tools/mutants.py --modules "src/vmsnap_native/policy.py ..." \
        [--tests "tests/test_x.py ..."] [--jobs 2] [--sample "cycle:40 ..."] \
        [--min 85 --min-module 80]

Each module's mutants are judged by that module's own tests first (the
MODULE_TESTS table), then by the --tests given for every module; pytest
-x stops at the first failure.  The work is shared by --jobs workers, each
in its own scratch copy of src/ and tests/ under build/mutants/ (the
checkout itself is never touched), with PYTHONPATH pointing at the copy.

A mutant is *killed* when the tests fail, *survived* when they pass, a
*timeout* when they run past 3x the clean run (plus 10 s): timeouts are not
counted as killed.  A survivor listed in tools/mutants-survivors.txt as
``equivalent: PATH: ORIGINAL  ->  MUTATED`` (under a paragraph that says why
no user can tell it from the original) is *equivalent* and left out of N;
the line before the last says how many, and the score with them counted.  The run fails (exit 1) when a module's clean run fails,
when a module yields no mutant, when pytest cannot run a mutant's tests
(no tests collected, usage error), or when the score is below --min (whole
set) or --min-module (any module).  --sample "MODULE:N" judges N of the
module's mutants drawn with a fixed seed (its line says "a sample of").
As root each pytest runs in a private mount namespace with its own /run.  Prints per module
``module: K killed of N (P%), T timeouts, S survived; E equivalent, not counted``,
the survivors to build/mutants/survivors.txt (every verdict to verdicts.json),
and as its last line:
``mutants: K killed of N (P%), T timeouts, S survived``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mutmut import ALL, Context, list_mutations, mutate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "build", "mutants")   # --work: another, for a second run beside
PKG = "src/vmsnap_native/"
EQUIVALENTS = os.path.join(ROOT, "tools", "mutants-survivors.txt")

# module -> the tests that judge its mutants first (its own)
MODULE_TESTS = {
    "policy": ["tests/test_policy.py", "tests/test_policy_exact.py"],
    "config": ["tests/test_config.py", "tests/test_config_exact.py"],
    "decide": ["tests/test_decide_mutants.py", "tests/test_decide.py",
               "tests/test_decide_agent.py"],
    "metrics": ["tests/test_metrics_mutants.py", "tests/test_operations.py"],
    "held": ["tests/test_held_mutants.py", "tests/test_leases.py", "tests/test_cli.py"],
    "cycle": ["tests/test_cycle_mutants.py", "tests/test_cycle.py"],
    "plan": ["tests/test_plan_mutants.py", "tests/test_config.py", "tests/test_policy_exact.py",
             "tests/test_cycle.py"],
    "agents": ["tests/test_agents_mutants.py", "tests/test_decide_agent.py", "tests/test_agents.py"],
}
# pytest's exit statuses: 0 passed, 1 failed, 2 collection errors, 4 a conftest
# that cannot import (the mutant broke the import: killed); 3 (pytest's internal
# error) and 5 (no tests collected) say nothing about the mutant
NOT_A_VERDICT = (3, 5)


def describe(rel: str, source: str, mid) -> str:
    """'PATH: ORIGINAL LINE  ->  MUTATED LINE' (stripped): how a mutant is named in
    tools/mutants-survivors.txt, whatever line it is on."""
    return "%s: %s  ->  %s" % (rel, mid.line.strip(),
                               mutated(rel, source, mid).split("\n")[mid.line_number].strip())


def read_equivalents(path: str) -> set:
    """The mutants kept as equivalent: the lines 'equivalent: PATH: ORIGINAL  ->  MUTATED'
    of PATH (each under a paragraph that says why)."""
    try:
        with open(path) as f:
            return {line[len("equivalent: "):].strip() for line in f
                    if line.startswith("equivalent: ")}
    except FileNotFoundError:
        return set()


def mutants_of(path: str) -> list:
    with open(path) as f:
        source = f.read()
    return list_mutations(Context(source=source, mutation_id=ALL, filename=path))


def mutated(path: str, source: str, mid) -> str:
    ctx = Context(source=source, mutation_id=mid, filename=path)
    out, n = mutate(ctx)
    if n != 1:
        raise RuntimeError("%s: mutant %s applied %d times" % (path, mid, n))
    return out


class Worker:
    """A scratch copy of the sources and tests, mutated one mutant at a time."""

    def __init__(self, k: int):
        self.dir = os.path.join(WORK, "w%d" % k)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        # the checkout as the tests read it (the README, the man pages, ...): all of it
        # but what is built or kept there
        for name in sorted(os.listdir(ROOT)):
            src = os.path.join(ROOT, name)
            if name in ("build", ".git", ".venv", "dist", ".hypothesis", ".benchmarks") \
                    or name.startswith(".mypy") \
                    or name.startswith(".ruff") or name.startswith(".pytest"):
                continue
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(self.dir, name), symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(src, self.dir)
        self.env = dict(os.environ, PYTHONPATH=os.path.join(self.dir, "src"),
                        VMSNAP_HYPOTHESIS_PROFILE="mutants", PYTHONDONTWRITEBYTECODE="1")

    def pytest(self, tests, timeout: float, log: str | None = None) -> tuple:
        """(exit status or None for a timeout, seconds); pytest's output to LOG if given."""
        t = time.monotonic()
        argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                "-p", "no:randomly", *tests]
        if os.geteuid() == 0 and shutil.which("unshare"):
            # as root the tests freeze loop filesystems they make: in a private mount
            # namespace with its own /run, apart from everything else on the machine
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs tmpfs /run && exec "$@"', "sh", *argv]
        out = open(log, "w") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(argv, cwd=self.dir, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log:
                out.close()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # SIGINT first: pytest then runs the fixtures' teardown (loop filesystems
            # thawed, unmounted, detached); SIGKILL to what is left 10 s later
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            rc = None
        return rc, time.monotonic() - t

    def judge(self, rel: str, source: str, mid, tests, timeout: float) -> str:
        path = os.path.join(self.dir, rel)
        with open(path, "w") as f:
            f.write(mutated(rel, source, mid))
        try:
            rc, _ = self.pytest(tests, timeout)
        finally:
            with open(path, "w") as f:
                f.write(source)
        if rc is None:
            return "timeout"
        if rc in NOT_A_VERDICT:
            return "error %d" % rc
        return "survived" if rc == 0 else "killed"


def main() -> int:
    global WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--modules", required=True, help="space-separated source files to mutate")
    ap.add_argument("--tests", default="", help="tests run for every module, after its own")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sample", default="",
                    help="'MODULE:N ...': judge N of MODULE's mutants, drawn with a fixed seed")
    ap.add_argument("--min", type=float, default=0.0, help="the least score over the whole set")
    ap.add_argument("--min-module", type=float, default=0.0, help="the least score per module")
    ap.add_argument("--equivalents", default=EQUIVALENTS,
                    help="the list of equivalent mutants (default tools/mutants-survivors.txt)")
    ap.add_argument("--work", default=WORK, help="the scratch directory (default build/mutants)")
    args = ap.parse_args()
    WORK = os.path.abspath(args.work)
    os.chdir(ROOT)
    modules = args.modules.split()
    extra = args.tests.split()
    samples = {m: int(n) for m, n in (x.split(":") for x in args.sample.split())}
    problems = []
    plan = []   # (module, rel path, source, [mutant ids], tests)
    for entry in modules:
        # a module is a source file, or NAME=FILE,FILE,... (a package's files judged as one)
        if "=" in entry:
            stem, files = entry.split("=", 1)
            files = files.split(",")
        else:
            stem, files = os.path.splitext(os.path.basename(entry))[0], [entry]
        tests = MODULE_TESTS.get(stem, []) + [t for t in extra if t not in MODULE_TESTS.get(stem, [])]
        if not tests:
            problems.append("%s: no tests judge it (MODULE_TESTS)" % entry)
            continue
        cands = []    # (file, source, mutant id)
        for rel in files:
            with open(rel) as f:
                source = f.read()
            ids = mutants_of(rel)
            if not ids:
                problems.append("%s: no mutants (mutmut yields nothing)" % rel)
            cands += [(rel, source, mid) for mid in ids]
        if not cands:
            continue
        total = len(cands)
        want = samples.get(stem, 0)
        if want and want < total:
            cands = sorted(random.Random(stem).sample(cands, want),
                           key=lambda c: (c[0], c[2].line_number, c[2].index))
        plan.append((stem, cands, tests, total))
    workers = [Worker(k) for k in range(max(1, args.jobs))]
    # the clean runs: each module's tests pass unmutated, and say how long they take
    limits = {}
    idle = list(workers)

    def clean(module):
        stem, _cands, tests, _total = module
        w = idle.pop()
        try:
            rc, took = w.pytest(tests, 1800, os.path.join(WORK, "clean-%s.log" % stem))
        finally:
            idle.append(w)
        if rc != 0:
            problems.append("%s: its tests fail without a mutant (exit %s): %s (output: %s)"
                            % (stem, rc, " ".join(tests),
                               os.path.join(os.path.relpath(WORK, ROOT), "clean-%s.log" % stem)))
        limits[stem] = 3 * took + 10
        print("clean run of %s's tests: %.1f s" % (stem, took), flush=True)

    with ThreadPoolExecutor(len(workers)) as pool:   # the slowest first
        list(pool.map(clean, sorted(plan, key=lambda m: -len(m[2]))))
    if problems:
        for p in problems:
            print("mutants: %s" % p, file=sys.stderr)
        return 1
    jobs = [(stem, rel, source, mid, tests) for stem, cands, tests, _ in plan
            for rel, source, mid in cands]
    results = {}
    free = list(workers)

    def run(job):
        w = free.pop()
        try:
            stem, rel, source, mid, tests = job
            got = results[(rel, mid)] = w.judge(rel, source, mid, tests, limits[stem])
            with open(os.path.join(WORK, "progress.log"), "a") as f:   # to follow a long run
                f.write("%d/%d %s:%d %s\n" % (len(results), len(jobs), rel,
                                              mid.line_number + 1, got))
        finally:
            free.append(w)

    t0 = time.monotonic()
    with open(os.path.join(WORK, "progress.log"), "w"):
        pass
    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(run, jobs))
    os.makedirs(WORK, exist_ok=True)
    equivalent = read_equivalents(args.equivalents)
    tot = {"killed": 0, "timeout": 0, "survived": 0, "n": 0, "equivalent": 0}
    lines, verdicts = [], []
    for stem, cands, _tests, total in plan:
        got = [results[(rel, mid)] for rel, _source, mid in cands]
        texts = [describe(rel, source, mid) for rel, source, mid in cands]
        # a survivor listed as equivalent (with why) in tools/mutants-survivors.txt: not counted
        got = ["equivalent" if g == "survived" and x in equivalent else g
               for g, x in zip(got, texts)]
        errors = [g for g in got if g.startswith("error")]
        if errors:
            problems.append("%s: pytest did not judge %d mutants (%s)" % (stem, len(errors),
                                                                           errors[0]))
        k, t, s = got.count("killed"), got.count("timeout"), got.count("survived")
        e = got.count("equivalent")
        n = len(cands) - e
        for key, v in (("killed", k), ("timeout", t), ("survived", s), ("n", n),
                       ("equivalent", e)):
            tot[key] += v
        pct = 100.0 * k / n if n else 0.0
        sampled = " (a sample of %d)" % total if len(cands) < total else ""
        print("%s: %d killed of %d%s (%.1f%%), %d timeouts, %d survived; %d equivalent, not "
              "counted" % (stem, k, n, sampled, pct, t, s, e))
        if pct < args.min_module:
            problems.append("%s: %.1f%% is below %.0f%%" % (stem, pct, args.min_module))
        for (_rel, _source, mid), g, x in zip(cands, got, texts):
            verdicts.append({"module": stem, "line": mid.line_number + 1, "verdict": g,
                             "mutant": x})
            if g != "killed":
                path, rest = x.split(": ", 1)
                lines.append("%s:%d [%s] %s" % (path, mid.line_number + 1, g, rest))
    with open(os.path.join(WORK, "survivors.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(WORK, "verdicts.json"), "w") as f:
        json.dump(verdicts, f, indent=0)
    print("survivors, timeouts and equivalents: %s (%d); %.0f s with %d jobs"
          % (os.path.join(os.path.relpath(WORK, ROOT), "survivors.txt"), len(lines),
             time.monotonic() - t0, len(workers)))
    pct = 100.0 * tot["killed"] / tot["n"] if tot["n"] else 0.0
    if pct < args.min:
        problems.append("%.1f%% over the whole set is below %.0f%%" % (pct, args.min))
    for p in problems:
        print("mutants: %s" % p, file=sys.stderr)
    every = tot["n"] + tot["equivalent"]
    print("%d equivalent mutants (tools/mutants-survivors.txt) not counted; counted as "
          "survivors: %d killed of %d (%.1f%%)" % (tot["equivalent"], tot["killed"], every,
                                                   100.0 * tot["killed"] / every if every else 0))
    print("mutants: %d killed of %d (%.1f%%), %d timeouts, %d survived"
          % (tot["killed"], tot["n"], pct, tot["timeout"], tot["survived"]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
