"""Mutation testing of the C core for `make cmutants`: a small source mutator.

    python tools/cmutants.py [--jobs 2] [--sample N] [--seed S] [--list]

Mutants, one source line at a time, over csrc/*.c (comments, strings and
preprocessor lines left alone):

  relational   == <-> !=,  < -> <=,  <= -> <,  > -> >=,  >= -> >
  logical      && <-> ||,  a leading ! dropped from a condition
  arithmetic   ` + ` <-> ` - ` (binary, spaced as STYLE.md writes them)
  constant     an integer literal n -> n + 1 (0 -> 1, 1 -> 0)
  dropped call a statement that is only a call, `f(...);`, becomes `;`

Each mutant is built in a scratch copy (build/cmutants/wK) and judged by
the C tests (tests/c/ctest.c through tools/run-ctest.sh: as root they
freeze two scratch loop filesystems) and then by the core's Python tests
(tests/test_core.py, tests/test_freeze.py) against a core built from the
mutated sources; as root both run in a private mount namespace with its
own /run.  A mutant that does not compile is *stillborn* and not counted.
Killed: a test fails or runs past its bound (timeouts are counted apart).
Prints ``cmutants: K killed of N (P%), T timeouts, S survived, B stillborn``
(with ``a sample of M`` when --sample judged fewer than all).
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "build", "cmutants")
# the RCU timing test compares a global sysctl's two settings: another freeze on the
# machine (anyone's) can flip it mid-test; it judges the schedule, not a mutant
PY_TESTS = ["tests/test_core.py", "tests/test_freeze.py", "-k",
            "not test_expedited_freeze_of_idle_filesystems_is_fast"]
CFLAGS = ["-std=gnu11", "-O1", "-Wall", "-Wno-unused-parameter", "-Icsrc"]

RELATIONAL = {"==": "!=", "!=": "==", "<=": "<", ">=": ">", "<": "<=", ">": ">="}
# a comparison operator standing alone (not part of ->, <<, >>, <<=, >>=, or a header name)
REL_RE = re.compile(r"(?<![-<>=!])(==|!=|<=|>=|<|>)(?![<>=])")
LOGIC_RE = re.compile(r"&&|\|\|")
ARITH_RE = re.compile(r"(?<=\w|\)|\]) ([+-]) (?=[\w(])")
INT_RE = re.compile(r"(?<![\w.])(\d+)(?![\w.])")
NOT_RE = re.compile(r"(?<=\()!(?=[\w(])")
CALL_RE = re.compile(r"^(\s*)(?:\(void\)!?)?[a-z_][a-z0-9_]*\(.*\);\s*$")
KEYWORDS = ("return", "if", "while", "for", "switch", "sizeof", "case", "goto")


def code_part(line: str) -> tuple:
    """(code, comment tail): string and char literals blanked in CODE with the same length."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if line.startswith("//", i) or line.startswith("/*", i):
            return "".join(out), line[i:]
        if c in "\"'":
            j = i + 1
            while j < n and line[j] != c:
                j += 2 if line[j] == "\\" else 1
            out.append(c + "_" * (min(j, n - 1) - i - 1) + c if j < n else c)
            i = j + 1
            continue
        out.append(c)
        i += 1
    return "".join(out), ""


def mutants_of(path: str) -> list:
    """[(path, line index, kind, original line, mutated line)]."""
    with open(path) as f:
        lines = f.read().split("\n")
    out, in_comment = [], False
    for idx, line in enumerate(lines):
        stripped = line.strip()
        if in_comment:
            in_comment = "*/" not in stripped
            continue
        if stripped.startswith("/*") and "*/" not in stripped:
            in_comment = True
            continue
        if not stripped or stripped.startswith(("#", "*", "//", "/*")):
            continue
        code, _ = code_part(line)

        def add(kind, start, end, new, idx=idx, line=line):
            out.append((path, idx, kind, line, line[:start] + new + line[end:]))

        for m in REL_RE.finditer(code):
            if "#include" in code or "<" in m.group(1) and re.search(r"<\w+\.h>", code):
                continue
            add("relational", m.start(1), m.end(1), RELATIONAL[m.group(1)])
        for m in LOGIC_RE.finditer(code):
            add("logical", m.start(), m.end(), "||" if m.group() == "&&" else "&&")
        for m in NOT_RE.finditer(code):
            add("logical", m.start(), m.end(), "")
        for m in ARITH_RE.finditer(code):
            add("arithmetic", m.start(1), m.end(1), "-" if m.group(1) == "+" else "+")
        for m in INT_RE.finditer(code):
            v = int(m.group(1))
            if "[" in code[:m.start()] and code[:m.start()].rstrip().endswith("["):
                continue   # an array size: the build would only say so
            add("constant", m.start(1), m.end(1), {0: "1", 1: "0"}.get(v, str(v + 1)))
        cm = CALL_RE.match(code)
        if cm and not stripped.startswith(KEYWORDS) and "=" not in code.split("(", 1)[0]:
            out.append((path, idx, "dropped call", line, cm.group(1) + ";"))
    return out


def core_c_source() -> str:
    """The cffi module's C source (written once): the cdef does not change with a mutant."""
    path = os.path.join(WORK, "_vmsnap_core.c")
    if not os.path.exists(path):
        os.makedirs(WORK, exist_ok=True)
        sys.path.insert(0, os.path.join(ROOT, "csrc"))
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            import build_ffi
            build_ffi.ffibuilder.emit_c_code(path)
        finally:
            os.chdir(cwd)
    return path


def in_namespace(argv: list) -> list:
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs tmpfs /run && exec "$@"', "sh", *argv]
    return argv


class Worker:
    def __init__(self, k: int, version: str):
        self.dir = os.path.join(WORK, "w%d" % k)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        for name in ("csrc", "tests", "tools", "src"):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(self.dir, name),
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
        shutil.copy(os.path.join(ROOT, "pyproject.toml"), self.dir)
        self.version = version
        self.so = os.path.join(self.dir, "src", "vmsnap_native", "_vmsnap_core" +
                               sysconfig.get_config_var("EXT_SUFFIX"))
        self.env = dict(os.environ, PYTHONPATH=os.path.join(self.dir, "src"),
                        PYTHONDONTWRITEBYTECODE="1", VMSNAP_CMUTANTS_WORKER=self.dir)

    def sweep(self):
        """SIGKILLs what a mutant left running outside its process group (a guardian
        or reaper calls setsid): every process that carries this worker's mark."""
        mark = ("VMSNAP_CMUTANTS_WORKER=%s" % self.dir).encode()
        for d in os.listdir("/proc"):
            try:
                with open("/proc/%s/environ" % d, "rb") as f:
                    if mark in f.read().split(b"\0"):
                        os.kill(int(d), signal.SIGKILL)
            except (OSError, ValueError):
                continue

    def run(self, argv, timeout) -> object:
        """Exit status, or None past TIMEOUT (SIGINT first, then SIGKILL)."""
        proc = subprocess.Popen(argv, cwd=self.dir, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
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
            return None

    def build(self) -> bool:
        srcs = sorted(glob.glob(os.path.join(self.dir, "csrc", "*.c")))
        define = '-DVMSNAP_VERSION="%s"' % self.version
        ctest = ["cc", *CFLAGS, define, "-o", "ctest", "tests/c/ctest.c", *srcs, "-lpthread"]
        core = ["cc", *CFLAGS, define, "-shared", "-fPIC",
                "-I" + sysconfig.get_paths()["include"], "-o", self.so, core_c_source(), *srcs,
                "-lpthread"]
        return self.run(ctest, 300) == 0 and self.run(core, 300) == 0

    def judge(self, mutant) -> str:
        path, idx, _, original, new = mutant
        target = os.path.join(self.dir, os.path.relpath(path, ROOT))
        with open(target) as f:
            source = f.read()
        lines = source.split("\n")
        assert lines[idx] == original
        lines[idx] = new
        with open(target, "w") as f:
            f.write("\n".join(lines))
        try:
            if not self.build():
                return "stillborn"
            rc = self.run(in_namespace(["sh", "tools/run-ctest.sh", "./ctest"]), 120)
            if rc != 0:
                return "timeout" if rc is None else "killed"
            rc = self.run(in_namespace([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                        "no:cacheprovider", *PY_TESTS]), 300)
            if rc is None:
                return "timeout"
            return "survived" if rc == 0 else "killed"
        finally:
            self.sweep()
            with open(target, "w") as f:
                f.write(source)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sample", type=int, default=0, help="judge N mutants (seeded)")
    ap.add_argument("--seed", default="vmsnap")
    ap.add_argument("--list", action="store_true", help="print the mutants, judge none")
    args = ap.parse_args()
    every = [m for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.c"))) for m in mutants_of(p)]
    if args.list:
        for path, idx, kind, old, new in every:
            print("%s:%d %s: %s  ->  %s" % (os.path.relpath(path, ROOT), idx + 1, kind,
                                            old.strip(), new.strip()))
        print("%d mutants" % len(every))
        return 0
    chosen = every
    if args.sample and args.sample < len(every):
        chosen = sorted(random.Random(args.seed).sample(every, args.sample),
                        key=lambda m: (m[0], m[1]))
    with open(os.path.join(ROOT, "src", "vmsnap_native", "_version.py")) as f:
        version = re.search(r'"(.*)"', f.read()).group(1)
    core_c_source()
    workers = [Worker(k, version) for k in range(max(1, args.jobs))]
    # the unmutated core passes its tests: else no verdict means anything
    w = workers[0]
    if not w.build() or w.run(in_namespace(["sh", "tools/run-ctest.sh", "./ctest"]), 120) != 0 \
            or w.run(in_namespace([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                   "no:cacheprovider", *PY_TESTS]), 300) != 0:
        print("cmutants: the unmutated core fails its tests", file=sys.stderr)
        return 1
    free, results = list(workers), {}

    def run(i):
        wk = free.pop()
        try:
            results[i] = wk.judge(chosen[i])
        finally:
            free.append(wk)

    t0 = time.monotonic()
    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(run, range(len(chosen))))
    got = [results[i] for i in range(len(chosen))]
    lines = []
    for m, g in zip(chosen, got):
        if g in ("survived", "timeout"):
            lines.append("%s:%d [%s] %s: %s  ->  %s" % (os.path.relpath(m[0], ROOT), m[1] + 1, g,
                                                        m[2], m[3].strip(), m[4].strip()))
    with open(os.path.join(WORK, "survivors.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    by_kind = {}
    for m, g in zip(chosen, got):
        k = by_kind.setdefault(m[2], [0, 0])
        if g != "stillborn":
            k[1] += 1
            k[0] += g == "killed"
    for kind, (k, n) in sorted(by_kind.items()):
        print("  %-12s %d killed of %d" % (kind, k, n))
    born = [g for g in got if g != "stillborn"]
    k, t, s = born.count("killed"), born.count("timeout"), born.count("survived")
    n = len(born)
    sample = " (a sample of %d of %d mutants)" % (len(chosen), len(every)) \
        if len(chosen) < len(every) else ""
    print("survivors: build/cmutants/survivors.txt; %.0f s with %d jobs"
          % (time.monotonic() - t0, len(workers)))
    print("cmutants: %d killed of %d (%.1f%%), %d timeouts, %d survived, %d stillborn%s"
          % (k, n, 100.0 * k / n if n else 0.0, t, s, got.count("stillborn"), sample))
    return 0


if __name__ == "__main__":
    sys.exit(main())
