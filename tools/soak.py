#!/usr/bin/env python3
"""The soak: thousands of randomised cycles through every vmsnap entry point.

    tools/soak.py -n N [--seed S] [--only K] [--log-dir D] [--modes run,qemu-ga,gce,freeze]
                  [--jobs J] [--first K]

Each cycle picks, from random.Random("SEED-K") (so one cycle can be replayed
alone with --only K), an entry point and a situation:

- run:     `vmsnap run --json -- SNAP`;
- qemu-ga: the soak plays qemu-ga: `vmsnap hook qemu-ga freeze`, FIFREEZE of
           the filesystems (children first), the snapshot, FITHAW (parents
           first), `vmsnap hook qemu-ga thaw`, or no thaw at all (a host that
           never sends it);
- gce:     the soak plays the Google guest agent: `hook gce pre`, snapshot,
           `hook gce post`;
- freeze:  an orchestrator: `vmsnap freeze --timeout S`, snapshot, `vmsnap thaw`;

with random pre-/post-script behaviours (succeed, fail, hang past the
timeout, hang with a setsid child, leave a lock-holder that the post-script
releases, flood the output, say "quiesce lost"), a snapshot that is quick,
slow or later than the freeze deadline, and at most one fault at a random
instant: SIGKILL/SIGTERM of vmsnap, of the guardian, of the hook's watchdog
(its pid is in the session file), of the agent, of the last phase, or an
outside thaw.  The filesystems are the soak's own loop ext4/xfs/btrfs, nested
(an xfs whose image lives on the ext4; an ext4 whose image lives on the btrfs,
mounted below the ext4); every freeze names them explicitly.

After each cycle it checks the rules of the SPEC (§4, §5 and "Every entry
point keeps these rules"), not what the code happens to do:

- frozen-past-deadline: a write probe on each filesystem never blocks longer
  than the cycle's freeze deadline plus a margin (the soak thaws them itself
  then, and says so);
- ledger: each script appends to a ledger outside the frozen filesystems;
  a pre-script that started is matched by exactly one post-script, after it;
- leftover-process: no process of the cycle (tagged by SOAK_TAG in its
  environment, the scripts' paths, or the soak's runtime directory) is alive
  1 s after the cycle's last legitimate moment;
- sys-changed: rcu_expedited and the bdi limits of the soak's devices are as
  before;
- next-run: a plain `vmsnap run` right after works (success, application);
- verdict: no result better than §5 allows (a failed pre-script never gives
  application, a failed post-script or snapshot step never success, an early
  thaw never success, a stop signal gives Interrupted, ...).

Everything runs in a private mount namespace with its own tmpfs /run (the
soak re-executes itself under `unshare -m --propagation private`), with
VMSNAP_RUNTIME_DIR there; configs and scripts are root's, 0600/0700, in a
0700 directory.  A log per cycle goes to the log directory.  At the end: the
cycles, the faults injected per kind, every violation with its seed and
cycle; exit 1 on any violation.  --jobs J splits the N cycles among J soaks
side by side (each in its own namespace, with its own filesystems; cycle K
is the same whichever job runs it) and sums their summaries: most of a
cycle is waiting (timeouts, deadlines, the quiet second), so J jobs take
about 1/J of the time on an idle machine.
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
ROOT = "/run/vmsnap-soak"     # on the soak's own tmpfs /run (a private mount namespace)
ETC = ROOT + "/etc"            # configs and scripts: root's, 0700
RUNTIME = ROOT + "/vmsnap"     # VMSNAP_RUNTIME_DIR
IMG = ROOT + "/img"
MNT = ROOT + "/mnt"
STATE = ROOT + "/state"        # ledgers, holders, agent events: tmpfs, never frozen
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
VMSNAP = [PY, "-m", "vmsnap_native"]

# The filesystems: name -> (fstype, MiB, where its image lives, mount point).
# x's image lives on a; d's image lives on b and d is mounted below a.
FILESYSTEMS = collections.OrderedDict([
    ("a", ("ext4", 400, IMG, MNT + "/a")),
    ("b", ("btrfs", 160, IMG, MNT + "/b")),
    ("x", ("xfs", 300, MNT + "/a", MNT + "/x")),
    ("d", ("ext4", 24, MNT + "/b", MNT + "/a/sub")),
])
FREEZE_ORDER = ["d", "x", "a", "b"]   # what the agent does: children (and loop images' users) first
THAW_ORDER = ["a", "b", "x", "d"]     # parents first
MARGIN_S = 1.0                        # frozen past the deadline by more than this: a violation
INTERP_S = 2.5                        # a Python start on a busy machine (resume, hook phase)
GRACE_S = 2.0                         # vmsnap's SIGTERM -> SIGKILL grace for a timed-out script

SCRIPT_KINDS = {
    "pre": [("ok", 40), ("fail", 12), ("hang", 10), ("hang-setsid", 8), ("holder", 18),
            ("flood", 12)],
    "post": [("ok", 58), ("fail", 12), ("hang", 8), ("hang-setsid", 6), ("flood", 10),
             ("lost", 6)],
}
MODES = [("run", 35), ("qemu-ga", 25), ("gce", 25), ("freeze", 15)]
FAULTS = {
    "run": ["kill-vmsnap", "kill-guardian", "outside-thaw"],
    "qemu-ga": ["kill-first", "kill-watchdog", "kill-agent", "no-thaw", "kill-last"],
    "gce": ["kill-first", "kill-watchdog", "kill-guardian", "kill-agent", "outside-thaw",
            "kill-last"],
    "freeze": ["kill-vmsnap", "kill-guardian", "kill-agent", "outside-thaw"],
}


def weighted(rng, table):
    total = sum(w for _, w in table)
    x = rng.uniform(0, total)
    for name, w in table:
        x -= w
        if x <= 0:
            return name
    return table[-1][0]


def sh(*argv, check=True):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    if check and p.returncode:
        raise RuntimeError("%s: %s" % (" ".join(argv), p.stdout.strip()))
    return p


def ioctl_path(path, req):
    """FIFREEZE/FITHAW on PATH; 0 or the errno."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno
    try:
        fcntl.ioctl(fd, req, 0)
        return 0
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)


def thaw_all():
    """The soak's own safety net: FITHAW each of its filesystems, parents first."""
    out = {}
    for _ in range(3):
        for n in THAW_ORDER:
            r = ioctl_path(FILESYSTEMS[n][3], FITHAW)
            if r == 0:
                out[n] = "thawed"
    return out


def now():
    return time.time()


# -- /proc ---------------------------------------------------------------------------

def proc_info(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    rest = stat.rsplit(")", 1)[1].split()
    return {"pid": pid, "comm": comm, "state": rest[0], "ppid": int(rest[1]), "cmd": cmd,
            "env": env, "start": int(rest[19])}


def mount_ns(pid="self"):
    try:
        return os.readlink("/proc/%s/ns/mnt" % pid)
    except OSError:
        return None


def tagged(tag, prefix=False):
    """Live processes of the soak: SOAK_TAG=TAG (or TAG… with PREFIX) in their
    environment, the soak's runtime directory there, or its scripts' paths;
    only in the soak's own mount namespace (another soak elsewhere has the
    same paths, and is none of this one's business)."""
    me = os.getpid()
    ns = mount_ns()
    want = ("SOAK_TAG=" + tag).encode()
    rt = ("VMSNAP_RUNTIME_DIR=" + RUNTIME).encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        info = proc_info(int(d))
        if info is None or info["state"] in "ZX":
            continue
        if (any((e.startswith(want) if prefix else e == want) or e == rt for e in info["env"])
                or ETC + "/" in info["cmd"]) and mount_ns(d) == ns:
            out.append(info)
    return out


def alive(pid):
    info = proc_info(pid) if pid else None
    return info is not None and info["state"] not in "ZX"


def find_comm(comm, tag):
    t = ("SOAK_TAG=" + tag).encode()
    ns = mount_ns()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        info = proc_info(int(d))
        if info and info["comm"] == comm and info["state"] not in "ZX" and t in info["env"] \
                and mount_ns(d) == ns:
            return info["pid"]
    return None


def foreign_freezers():
    """vmsnap guardians of other mount namespaces (other engineers' runs): they
    may switch the machine-wide rcu_expedited meanwhile."""
    ns = mount_ns()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % d) as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == "vmsnap-guardian" and mount_ns(d) != ns:
            out.append(int(d))
    return out


# -- /sys ---------------------------------------------------------------------------

def sys_values():
    vals = {}
    try:
        with open("/sys/kernel/rcu_expedited") as f:
            vals["rcu_expedited"] = f.read().strip()
    except OSError:
        pass
    for n, (_, _, _, mnt) in FILESYSTEMS.items():
        try:
            dev = os.stat(mnt).st_dev
        except OSError:
            continue
        for cand in ("/sys/class/bdi/%d:%d" % (os.major(dev), os.minor(dev)),):
            if not os.path.isdir(cand):
                continue
            for key in ("strict_limit", "max_bytes", "max_ratio", "max_ratio_fine"):
                try:
                    with open(os.path.join(cand, key)) as f:
                        vals["%s/%s" % (cand, key)] = f.read().strip()
                except OSError:
                    pass
    return vals


def sys_changed(before, after):
    """What differs.  max_bytes follows max_ratio and the machine's free memory,
    so it drifts by itself (by a tenth within minutes on a busy machine): only
    a change to less than half or more than twice counts (vmsnap's dirty cap
    sets it to tens of MiB, from gigabytes); max_ratio_fine says it exactly."""
    out = {}
    for k, v in after.items():
        old = before.get(k)
        if old == v:
            continue
        if k.endswith("/max_bytes"):
            try:
                if int(old) // 2 <= int(v) <= int(old) * 2:
                    continue
            except (TypeError, ValueError):
                pass
        out[k] = (old, v)
    return out


def sys_restore(vals):
    for k, v in vals.items():
        if k.endswith("/max_bytes"):
            continue   # derived: max_ratio_fine puts it back
        path = "/sys/kernel/rcu_expedited" if k == "rcu_expedited" else k
        try:
            with open(path, "w") as f:
                f.write(v)
        except OSError:
            pass


# -- the write probes -------------------------------------------------------------------

class Probe(threading.Thread):
    """Writes one byte to its filesystem every 50 ms: a write that blocks is
    a frozen filesystem, for exactly as long as it blocks."""

    def __init__(self, name, mnt):
        super().__init__(daemon=True, name="probe-" + name)
        self.fsname, self.mnt = name, mnt
        self.fd = os.open(os.path.join(mnt, ".soak-probe"), os.O_WRONLY | os.O_CREAT, 0o600)
        self.pending_since = None
        self.max_block = 0.0
        self.stop = False

    def run(self):
        while not self.stop:
            t = time.monotonic()
            self.pending_since = t
            try:
                os.pwrite(self.fd, b"x", 0)
            except OSError:
                pass
            self.pending_since = None
            self.max_block = max(self.max_block, time.monotonic() - t)
            time.sleep(0.05)


class Monitor(threading.Thread):
    """Watches the probes: a write blocked longer than LIMIT is a filesystem
    frozen past its deadline; the soak thaws it (and reports it)."""

    def __init__(self, probes):
        super().__init__(daemon=True, name="monitor")
        self.probes = probes
        self.limit = 10.0
        self.hits = []        # (fs, blocked seconds, what the safety net thawed)
        self.lock = threading.Lock()
        self.stop = False

    def run(self):
        while not self.stop:
            t = time.monotonic()
            late = [(p.fsname, t - p.pending_since) for p in self.probes
                    if p.pending_since is not None and t - p.pending_since > self.limit]
            if late:
                thawed = thaw_all()
                with self.lock:
                    self.hits.append((late, self.limit, thawed))
                time.sleep(0.2)
            time.sleep(0.05)

    def take(self):
        with self.lock:
            h, self.hits = self.hits, []
        return h


# -- one cycle's scripts and configuration -----------------------------------------------

def script_body(role, kind, tag, ledger, holders):
    lines = ["#!/bin/sh", "# soak %s %s (%s)" % (role, kind, tag), "export SOAK_TAG=%s" % tag,
             'echo "%s $$ $(date +%%s.%%N)" >> %s' % (role, ledger)]
    if role == "post":   # the application's resume: it releases the lock holders
        # and says when it ends on its own (not when a signal kills it)
        lines.append("trap 'echo \"post-end $$ $(date +%%s.%%N)\" >> %s' EXIT" % ledger)
        lines.append('for p in $(cat %s 2>/dev/null); do kill -9 "$p" 2>/dev/null; done; '
                     ': > %s' % (holders, holders))
    lines.append({
        "ok": "exit 0",
        "fail": 'echo "soak: %s fails on purpose" >&2; exit 3' % role,
        "hang": "sleep 40; exit 0",
        "hang-setsid": "setsid sleep 60 & sleep 40; exit 0",
        # a lock session that outlives the script, on purpose, until the post-script
        "holder": 'setsid sleep 60 & echo $! >> %s; exit 0' % holders,
        "flood": "head -c 3000000 /dev/zero | tr '\\0' x; echo; "
                 "head -c 1000000 /dev/zero | tr '\\0' y >&2; exit 0",
        "lost": 'echo "soak: quiesce lost" >&2; exit 10',
    }[kind])
    return "\n".join(lines) + "\n"


def snap_body(tag, ledger, duration, rc):
    return ("#!/bin/sh\nexport SOAK_TAG=%s\n"
            'echo "snap-start $$ $(date +%%s.%%N)" >> %s\n'
            "sleep %.3f\n"
            'echo "snap-end $$ $(date +%%s.%%N)" >> %s\n'
            "exit %d\n" % (tag, ledger, duration, ledger, rc))


def write_file(path, text, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def read_ledger(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    out.append((parts[0], int(parts[1]), float(parts[2])))
    except OSError:
        pass
    return out


def read_events(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


class Plan:
    """What one cycle does: every choice from the cycle's own Random."""

    def __init__(self, seed, k, modes):
        rng = random.Random("%d-%d" % (seed, k))
        self.k = k
        self.tag = "soak-%d-%d" % (seed, k)
        self.mode = weighted(rng, [(m, w) for m, w in MODES if m in modes])
        self.pre = weighted(rng, SCRIPT_KINDS["pre"])
        self.post = weighted(rng, SCRIPT_KINDS["post"])
        self.timeout = rng.choice([1.0, 1.5, 2.0])
        self.freeze_timeout = rng.choice([2.0, 3.0, 4.0])
        self.pre_retries = 1 if rng.random() < 0.15 else 0
        self.cbf = rng.random() < 0.7
        names = list(FILESYSTEMS)
        if self.mode == "qemu-ga":
            self.mounts = names          # the agent freezes them all; the config names them all
        else:
            self.mounts = sorted(rng.sample(names, rng.randint(1, len(names))),
                                 key=names.index)
        self.use_mount_flag = self.mode == "run" and rng.random() < 0.4
        r = rng.random()
        if r < 0.65:
            self.snap = rng.uniform(0.0, 0.4)
        elif r < 0.85:
            self.snap = rng.uniform(0.4, self.freeze_timeout * 0.7)
        else:   # later than the freeze deadline
            self.snap = self.freeze_timeout + rng.uniform(0.4, 1.5)
        self.snap_rc = 1 if rng.random() < 0.06 else 0
        self.fault = None
        if rng.random() < 0.6:
            self.fault = rng.choice(FAULTS[self.mode])
        self.sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        self.fault_frac = rng.random()          # when, as a fraction of the fault's window
        self.fault_u = rng.random()
        # a stale session: the watchdog dies and the last phase never comes either
        self.skip_last = self.fault == "no-thaw" or (
            self.fault == "kill-watchdog" and rng.random() < 0.35)

    @property
    def late(self):
        return self.snap > self.freeze_timeout

    def pre_budget(self):
        per = {"hang": self.timeout + GRACE_S, "hang-setsid": self.timeout + GRACE_S}.get(
            self.pre, 0.3)
        return per * (self.pre_retries + 1)

    def post_budget(self):
        return {"hang": self.timeout + GRACE_S, "hang-setsid": self.timeout + GRACE_S}.get(
            self.post, 0.5)

    def est(self, kind):
        """How long a script of KIND takes, roughly (for the fault windows)."""
        return {"hang": self.timeout, "hang-setsid": self.timeout, "flood": 0.3}.get(kind, 0.1)

    def several_disks(self):
        """Filesystems on two disks however one counts a loop image's host: a
        (with x, whose image it holds) and b (with d)."""
        return bool({"a", "x"} & set(self.mounts)) and bool({"b", "d"} & set(self.mounts))

    def fault_name(self):
        if self.fault in (None, "outside-thaw", "no-thaw"):
            return self.fault
        return "%s-%s%s" % (self.fault, signal.Signals(self.sig).name,
                            "+no-last-phase" if self.skip_last else "")

    def describe(self):
        return ("mode %s pre %s post %s timeout %gs freeze %gs retries %d cbf %s mounts %s%s "
                "snap %.2fs%s rc %d fault %s@%.2f"
                % (self.mode, self.pre, self.post, self.timeout, self.freeze_timeout,
                   self.pre_retries, self.cbf, ",".join(self.mounts),
                   " (--mount)" if self.use_mount_flag else "", self.snap,
                   " (late)" if self.late else "", self.snap_rc, self.fault_name(),
                   self.fault_frac))


# -- the agent side (a child process, so that it can be killed) ---------------------------

def agent_main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    evfd = os.open(spec["events"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def ev(name, **kw):
        kw.update(ev=name, t=now())
        os.write(evfd, (json.dumps(kw) + "\n").encode())

    def call(name, argv):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        ev(name + "-call", pid=p.pid)
        out, err = p.communicate()
        ev(name + "-exit", rc=p.returncode, stdout=out[-4000:], stderr=err[-4000:])
        return p.returncode, out, err

    mode, mounts = spec["mode"], spec["mounts"]
    if mode == "freeze":
        argv = VMSNAP + ["freeze", "--json", "--config", spec["config"],
                         "--timeout", str(spec["freeze_timeout"])]
        for m in mounts:
            argv += ["--mount", m]
        rc, out, _ = call("first", argv)
        if rc != 0:
            return
        ev("snap-start")
        time.sleep(spec["snap"])
        ev("snap-end")
        argv = VMSNAP + ["thaw", "--json"]
        if spec.get("session_flag"):
            try:
                sid = json.loads(out).get("session")
            except ValueError:
                sid = None
            if sid:
                argv += ["--session", str(sid)]
        call("last", argv)
        return
    agent = mode
    first, last = {"qemu-ga": ("freeze", "thaw"), "gce": ("pre", "post")}[agent]
    base = VMSNAP + ["hook", agent, "--config", spec["config"], "--log-file", spec["log"]]
    extra = ["soak-disk"] if agent == "gce" else []
    rc, _, _ = call("first", base + [first] + extra)
    if rc != 0:
        ev("aborted")
        return
    frozen = []
    if agent == "qemu-ga":
        for m in mounts:   # in FREEZE_ORDER
            r = ioctl_path(m, FIFREEZE)
            ev("fifreeze", mount=m, errno=r)
            if r:
                break
            frozen.append(m)
        if len(frozen) < len(mounts):   # qemu-ga thaws what it froze and calls the hook's thaw
            for m in reversed(frozen):
                ev("fithaw", mount=m, errno=ioctl_path(m, FITHAW))
            call("last", base + [last])
            return
    ev("snap-start")
    time.sleep(spec["snap"])
    ev("snap-end")
    if spec.get("skip_last"):
        ev("no-last")
        return
    if agent == "qemu-ga":
        for m in spec["thaw_order"]:
            ev("fithaw", mount=m, errno=ioctl_path(m, FITHAW))
    call("last", base + [last] + extra)


# -- the soak -------------------------------------------------------------------------------

class Soak:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.logdir = os.path.abspath(args.log_dir)
        self.violations = []
        self.faults = collections.Counter()        # landed
        self.faults_missed = collections.Counter()  # the target was already gone
        self.behaviours = collections.Counter()
        self.modes = collections.Counter()
        self.cycles = 0
        self.inconclusive = 0   # rcu_expedited checks another namespace's freeze overlapped
        self.mounted = []
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("VMSNAP_") and k != "SOAK_TAG"}
        self.env.update(VMSNAP_RUNTIME_DIR=RUNTIME, PYTHONDONTWRITEBYTECODE="1")
        self.session_flag = "--session" in subprocess.run(
            VMSNAP + ["thaw", "--help"], capture_output=True, text=True, env=self.env).stdout

    # ---- set up / take down
    def setup(self):
        sh("mount", "-t", "tmpfs", "-o", "mode=755", "soak-run", "/run")
        for d, mode in ((ROOT, 0o755), (ETC, 0o700), (IMG, 0o700), (MNT, 0o755),
                        (STATE, 0o700)):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, mode)
        for n, (fstype, mb, where, mnt) in FILESYSTEMS.items():
            img = os.path.join(where, "%s.img" % n)
            with open(img, "wb") as f:
                f.truncate(mb << 20)
            mkfs = {"ext4": ["mkfs.ext4", "-q", "-F", "-E",
                             "lazy_itable_init=0,lazy_journal_init=0"],
                    "xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}[fstype]
            sh(*mkfs, img)
            os.makedirs(mnt, exist_ok=True)
            sh("mount", "-o", "loop", img, mnt)
            self.mounted.append(mnt)
        self.sys0 = sys_values()
        self.probes = [Probe(n, FILESYSTEMS[n][3]) for n in FILESYSTEMS]
        for p in self.probes:
            p.start()
        self.monitor = Monitor(self.probes)
        self.monitor.start()
        # the next-run check's own configuration
        nd = os.path.join(ETC, "next")
        os.makedirs(nd, mode=0o700, exist_ok=True)
        self.next_ledger = os.path.join(STATE, "next-ledger")
        for role in ("pre", "post"):
            write_file(os.path.join(nd, role + ".sh"),
                       script_body(role, "ok", "soak-%d-next" % self.seed, self.next_ledger,
                                   os.path.join(STATE, "next-holders")), 0o700)
        os.makedirs(os.path.join(ETC, "nohooks"), mode=0o700, exist_ok=True)
        self.next_config = os.path.join(nd, "config.json")
        write_file(self.next_config, json.dumps(self.config_dict(
            os.path.join(nd, "pre.sh"), os.path.join(nd, "post.sh"), 2.0, 4.0, 0, True,
            [FILESYSTEMS["b"][3]])), 0o600)

    def teardown(self):
        for p in getattr(self, "probes", []):
            p.stop = True
        if getattr(self, "monitor", None):
            self.monitor.stop = True
        thaw_all()
        for info in tagged("soak-%d-" % self.seed, prefix=True):
            try:
                os.kill(info["pid"], signal.SIGKILL)
            except OSError:
                pass
        thaw_all()
        time.sleep(0.3)
        for p in getattr(self, "probes", []):
            try:
                os.close(p.fd)
            except OSError:
                pass
        for mnt in reversed(self.mounted):
            for _ in range(30):
                if sh("umount", mnt, check=False).returncode == 0:
                    break
                thaw_all()
                time.sleep(0.2)
            else:
                sh("umount", "-l", mnt, check=False)
        self.mounted = []

    def config_dict(self, pre, post, timeout, ftimeout, retries, cbf, mounts):
        return {"pluginName": "ScriptRunner", "preScriptLocation": pre,
                "postScriptLocation": post, "preScriptParams": [], "postScriptParams": [],
                "preScriptNoOfRetries": retries, "postScriptNoOfRetries": 0,
                "timeoutInSeconds": timeout, "continueBackupOnFailure": cbf,
                "fsFreezeEnabled": True, "freezeTimeoutInSeconds": ftimeout,
                "mountsToFreeze": list(mounts), "hooksDirectory": os.path.join(ETC, "nohooks")}

    # ---- reporting
    def violate(self, plan, kind, detail):
        v = {"seed": self.seed, "cycle": plan.k, "mode": plan.mode, "kind": kind,
             "detail": detail, "plan": plan.describe()}
        self.violations.append(v)
        self.log("VIOLATION %s: %s" % (kind, detail))

    def log(self, text):
        self.logf.write("%.3f %s\n" % (now(), text))
        self.logf.flush()

    # ---- faults
    def fault_thread(self, plan, ctx):
        """Injects the cycle's fault at its instant, if its target is there then."""
        kind = plan.fault
        if kind in (None, "no-thaw"):
            return None

        def find():
            if kind == "kill-vmsnap":
                return ctx.get("main_pid")
            if kind == "kill-agent":
                return ctx.get("agent_pid")
            if kind in ("kill-first", "kill-last"):
                want = "first-call" if kind == "kill-first" else "last-call"
                done = want.replace("call", "exit")
                evs = read_events(ctx["events"])
                pid = next((e["pid"] for e in evs if e["ev"] == want), None)
                return None if any(e["ev"] == done for e in evs) else pid
            if kind == "kill-watchdog":
                for agent in ("qemu-ga", "gce"):
                    try:
                        with open(os.path.join(RUNTIME, "hook-%s.json" % agent)) as f:
                            return (json.load(f).get("watchdog") or {}).get("pid")
                    except (OSError, ValueError):
                        pass
                return None
            if kind == "kill-guardian":
                return find_comm("vmsnap-guardian", plan.tag)
            if kind == "outside-thaw":
                return -1 if ctx.get("frozen_hint") or any(
                    p.pending_since is not None for p in self.probes) else None
            return None

        # the window in which the fault lands: absolute for the processes that
        # are there from the start, relative to its appearance for the others
        held = min(plan.snap, plan.freeze_timeout)
        pre_t = plan.est(plan.pre) * (plan.pre_retries + 1)
        after_pre = False
        if kind in ("kill-vmsnap", "kill-agent", "kill-first"):
            # mostly counted from the pre-script's start (where the ways out matter),
            # else from the command's start (the interpreter starting, the imports)
            after_pre = plan.mode != "freeze" and plan.fault_u < 0.7
            total = (0 if after_pre else 0.35) + pre_t + held + plan.est(plan.post)
            if kind == "kill-first":
                total = (0.25 if after_pre else 0.4) + pre_t
            appear_needed = after_pre
            delay = plan.fault_frac * total
        else:
            appear_needed = True
            span = {"kill-watchdog": held + 0.25, "kill-guardian": held + 0.1,
                    "outside-thaw": held, "kill-last": plan.est(plan.post) + 0.25}[kind]
            delay = plan.fault_frac * span

        def body():
            t0 = time.monotonic()
            name = plan.fault_name()
            if appear_needed:
                give_up = t0 + plan.pre_budget() + plan.snap + plan.freeze_timeout + 8
                while find() is None or (after_pre and not read_ledger(ctx["ledger"])):
                    if time.monotonic() > give_up or ctx.get("over"):
                        self.faults_missed[name] += 1
                        ctx["fault"] = {"name": name, "landed": False}
                        return
                    time.sleep(0.005)
                t0 = time.monotonic()
            while time.monotonic() < t0 + delay:
                if ctx.get("over"):
                    break
                time.sleep(0.005)
            pid = find()
            t = now()
            landed = False
            if kind == "outside-thaw":
                if pid is not None:
                    if plan.fault_u < 0.5:
                        res = thaw_all()
                        how = "FITHAW (fsfreeze -u)"
                    else:
                        p = subprocess.run(VMSNAP + ["thaw", "--force", "--json"],
                                           capture_output=True, text=True,
                                           env=dict(self.env, SOAK_TAG=plan.tag))
                        res = p.stdout.strip()[-300:]
                        how = "vmsnap thaw --force"
                    landed = bool(res) and "thawed" in str(res)
                    ctx["fault"] = {"name": name, "landed": landed, "t": t, "how": how,
                                    "res": res}
            elif pid and alive(pid):
                try:
                    os.kill(pid, plan.sig)
                    landed = True
                except OSError:
                    pass
                ctx["fault"] = {"name": name, "landed": landed, "t": t, "pid": pid}
            if landed:
                self.faults[name] += 1
            else:
                self.faults_missed[name] += 1
                ctx.setdefault("fault", {"name": name, "landed": False})

        th = threading.Thread(target=body, daemon=True)
        th.start()
        return th

    # ---- the cycle
    def cycle(self, k):
        plan = Plan(self.seed, k, self.args.modes)
        self.cycles += 1
        self.modes[plan.mode] += 1
        self.behaviours["pre:" + plan.pre] += 1
        self.behaviours["post:" + plan.post] += 1
        if plan.late:
            self.behaviours["snapshot:late"] += 1
        if plan.fault == "no-thaw":
            self.faults["no-thaw"] += 1
        self.logf = open(os.path.join(self.logdir, "cycle-%05d.log" % k), "w")
        try:
            self._cycle(plan)
        finally:
            self.logf.close()

    def _cycle(self, plan):
        k, tag = plan.k, plan.tag
        self.log("cycle %d seed %d: %s" % (k, self.seed, plan.describe()))
        cdir = os.path.join(ETC, "c%05d" % k)
        os.makedirs(cdir, mode=0o700, exist_ok=True)
        ledger = os.path.join(STATE, "ledger-%05d" % k)
        holders = os.path.join(STATE, "holders-%05d" % k)
        events = os.path.join(STATE, "events-%05d" % k)
        pre, post, snap = (os.path.join(cdir, n) for n in ("pre.sh", "post.sh", "snap.sh"))
        write_file(pre, script_body("pre", plan.pre, tag, ledger, holders), 0o700)
        write_file(post, script_body("post", plan.post, tag, ledger, holders), 0o700)
        write_file(snap, snap_body(tag, ledger, plan.snap, plan.snap_rc), 0o700)
        mounts = [FILESYSTEMS[n][3] for n in plan.mounts]
        config = os.path.join(cdir, "config.json")
        write_file(config, json.dumps(self.config_dict(pre, post, plan.timeout,
                                                       plan.freeze_timeout, plan.pre_retries,
                                                       plan.cbf, mounts)), 0o600)
        vlog = os.path.join(self.logdir, "cycle-%05d.vmsnap.log" % k)
        env = dict(self.env, SOAK_TAG=tag)
        self.monitor.limit = plan.freeze_timeout + MARGIN_S
        for p in self.probes:
            p.max_block = 0.0
        ctx = {"events": events, "ledger": ledger}
        t_start = now()
        if plan.mode == "run":
            facts = self.drive_run(plan, ctx, config, mounts, snap, vlog, env)
        else:
            facts = self.drive_agent(plan, ctx, config, mounts, vlog, env, events)
        ctx["over"] = True
        t_end = now()
        facts["t_start"], facts["t_end"] = t_start, t_end
        self.settle_and_check(plan, ctx, facts, ledger, events)
        self.log("probes: max blocked %s" % ", ".join("%s %.2fs" % (p.fsname, p.max_block)
                                                       for p in self.probes))
        shutil.rmtree(cdir, ignore_errors=True)

    def drive_run(self, plan, ctx, config, mounts, snap, vlog, env):
        argv = VMSNAP + ["run", "--json", "--config", config, "--log-file", vlog]
        if plan.use_mount_flag:
            for m in mounts:
                argv += ["--mount", m]
        argv += ["--", snap]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        ctx["main_pid"] = p.pid
        th = self.fault_thread(plan, ctx)
        limit = plan.pre_budget() + plan.freeze_timeout + plan.post_budget() + 60
        try:
            out, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            self.violate(plan, "hung", "vmsnap run still running after %.0fs" % limit)
        ctx["over"] = True
        if th:
            th.join(5)
        self.log("run: exit %s\nstderr: %s" % (p.returncode, err[-3000:]))
        self.log("stdout: %s" % out[-6000:])
        try:
            res = json.loads(out) if out.strip() else None
        except ValueError:
            res = None
            fault = ctx.get("fault") or {}
            # a SIGKILL can cut any write short; a SIGTERM is vmsnap's to handle
            if not (p.returncode == -signal.SIGKILL and fault.get("landed")):
                self.violate(plan, "verdict", "stdout is not one JSON object (exit %s): %r"
                             % (p.returncode, out[:200]))
        return {"rc": p.returncode, "result": res, "stderr": err}

    def drive_agent(self, plan, ctx, config, mounts, vlog, env, events):
        order = [FILESYSTEMS[n][3] for n in FREEZE_ORDER if n in plan.mounts]
        spec = {"mode": plan.mode, "config": config, "log": vlog, "events": events,
                "mounts": order if plan.mode == "qemu-ga" else mounts,
                "thaw_order": [FILESYSTEMS[n][3] for n in THAW_ORDER if n in plan.mounts],
                "snap": plan.snap, "freeze_timeout": plan.freeze_timeout,
                "skip_last": plan.skip_last, "session_flag": self.session_flag}
        spath = events + ".spec"
        with open(spath, "w") as f:
            json.dump(spec, f)
        p = subprocess.Popen([PY, os.path.abspath(__file__), "--agent", spath],
                             stdin=subprocess.DEVNULL, env=env, cwd="/")
        ctx["agent_pid"] = p.pid
        th = self.fault_thread(plan, ctx)
        limit = plan.pre_budget() + plan.snap + plan.freeze_timeout + plan.post_budget() + 60
        try:
            p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            self.violate(plan, "hung", "the agent's calls took more than %.0fs" % limit)
        ctx["over"] = True
        if th:
            th.join(5)
        evs = read_events(events)
        for e in evs:
            self.log("agent: %s" % json.dumps(e)[:4000])
        self.log("agent exit %s" % p.returncode)
        return {"agent_rc": p.returncode, "events": evs}

    # ---- after the cycle
    def settle_and_check(self, plan, ctx, facts, ledger, events):
        fault = ctx.get("fault") or {}
        if fault:
            self.log("fault: %s" % json.dumps(fault, default=str)[:1000])
        evs = facts.get("events", [])
        # the cycle's last legitimate moment: its commands' end, or an open
        # session's deadline, then a post-script run by a resume or a watchdog
        legit = facts["t_end"]
        step = self.step_start_bound(plan, evs, facts)
        if step is not None:
            legit = max(legit, step + plan.freeze_timeout)
        legit += plan.post_budget() + INTERP_S
        # processes
        gone_by = legit + 1.0
        first, quiet_since = True, None
        while True:
            left = tagged(plan.tag)
            if first:
                self.log("processes of the cycle after its commands: %s" % (
                    "; ".join("%d %s" % (i["pid"], i["comm"]) for i in left) or "none"))
                first = False
            # none for half a second: a process between fork and exec (a reaper
            # starting its resume) can be unreadable for an instant
            if left:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            if (quiet_since is not None and time.monotonic() - quiet_since > 0.5) \
                    or now() > gone_by:
                break
            time.sleep(0.05)
        if left:
            self.violate(plan, "leftover-process", "%d process(es) of the cycle alive %.1fs "
                         "after its commands ended (bound %.1fs): %s" % (
                             len(left), now() - facts["t_end"], gone_by - facts["t_end"],
                             "; ".join("%d %s [%s]" % (i["pid"], i["comm"], i["cmd"][:120])
                                       for i in left[:6])))
            for i in tagged(plan.tag):
                try:
                    os.kill(i["pid"], signal.SIGKILL)
                except OSError:
                    pass
        # frozen past the deadline: still frozen now, with nothing of the cycle
        # left alive, is frozen for good; the monitor judges it at the deadline
        end = time.monotonic() + self.monitor.limit + 0.5
        while any(p.pending_since is not None for p in self.probes) and time.monotonic() < end:
            time.sleep(0.05)
        for late, limit, thawed in self.monitor.take():
            self.violate(plan, "frozen-past-deadline", "%s: a write blocked %s (deadline %gs "
                         "+ %gs margin); the soak thawed %s itself" % (
                             ", ".join(FILESYSTEMS[n][3] for n, _ in late),
                             ", ".join("%.1fs" % s for _, s in late), limit - MARGIN_S,
                             MARGIN_S, ", ".join(sorted(thawed)) or "nothing (already thawed)"))
        still = [p.fsname for p in self.probes if p.pending_since is not None]
        if still:
            thawed = thaw_all()
            self.violate(plan, "frozen-past-deadline", "%s still frozen after the cycle "
                         "settled; the soak thawed %s" % (",".join(still), thawed))
        led = read_ledger(ledger)
        self.log("ledger: %s" % led)
        # the verdict
        if plan.mode == "run":
            self.check_run(plan, fault, facts, led)
        else:
            self.check_agent(plan, fault, facts, led, evs)
        # /sys
        changed = sys_changed(self.sys0, sys_values())
        if changed and list(changed) == ["rcu_expedited"]:
            # machine-wide: another namespace's freeze may hold it for a moment
            end = time.monotonic() + 10
            while foreign_freezers() and time.monotonic() < end:
                time.sleep(0.1)
            time.sleep(0.5)
            changed = sys_changed(self.sys0, sys_values())
            if changed and foreign_freezers():
                self.log("rcu_expedited changed while another namespace freezes: not judged")
                self.inconclusive += 1
                changed = {}
        if changed:
            self.violate(plan, "sys-changed", "; ".join("%s: %s -> %s" % (k, a, b)
                                                        for k, (a, b) in changed.items()))
            sys_restore(self.sys0)
        # the next run works
        self.next_run(plan)
        # the ledger, read again after the next run: a late post-script shows now
        led = read_ledger(ledger)
        self.log("ledger after the next run: %s" % led)
        # one post-script per pre-script: it may start again only if the one
        # before was killed (vmsnap SIGKILLed mid-post-script: the reaper kills
        # it with the rest and its resume runs it again); it never runs to its
        # end twice, nor starts again after it ended
        pres = [e for e in led if e[0] == "pre"]
        posts = [e for e in led if e[0] == "post"]
        ended = {pid for r, pid, _ in led if r == "post-end"}
        rerun_after_end = [p for p in posts[:-1] if p[1] in ended]
        if pres and not posts:
            self.violate(plan, "ledger", "the pre-script started %d time(s) and the post-script "
                         "never ran" % len(pres))
        elif len(ended) > 1 or rerun_after_end:
            self.violate(plan, "ledger", "the post-script started %d time(s) and ran to its end "
                         "%d time(s): it started again after it had ended"
                         % (len(posts), len(ended)))
        elif pres and posts and posts[0][2] < pres[-1][2]:
            self.violate(plan, "ledger", "the post-script ran before the pre-script")
        if len(posts) > 1:
            self.behaviours["post-script killed and run again"] += 1
        for f in (ledger, events, events + ".spec", os.path.join(STATE, "holders-%05d" % plan.k)):
            try:
                os.unlink(f)
            except OSError:
                pass

    @staticmethod
    def step_start_bound(plan, evs, facts):
        """The latest instant the session's snapshot step (hook) or the lease
        (freeze) can have begun, from which its freeze deadline counts; None
        for a run (its commands' end covers it).  A first call that got its
        answer exited after the step began (the answer is sent as it begins);
        one that was killed or died first does not say when: the session
        went on without it, through its pre-script (its whole budget) and
        the freeze."""
        if plan.mode == "run":
            return None
        first_call = next((e for e in evs if e["ev"] == "first-call"), None)
        first_exit = next((e for e in evs if e["ev"] == "first-exit"), None)
        if first_call is None and facts.get("agent_rc", 0) >= 0:
            return None   # the agent ended on its own without a first call
        answered = first_exit is not None and first_exit.get("rc", -1) >= 0
        if answered:
            return first_exit["t"]
        # an agent killed may have spawned its first call before it could say
        # so: that call goes on, orphaned, and opens the session
        called = first_call["t"] if first_call else facts["t_end"]
        return max(first_exit["t"] if first_exit else facts["t_end"],
                   called + INTERP_S + plan.pre_budget() + 1.0)

    def check_run(self, plan, fault, facts, led):
        res, rc = facts["result"], facts["rc"]
        landed = fault.get("landed")
        name = fault.get("name") or ""
        snap_start = next((t for r, _, t in led if r == "snap-start"), None)
        snap_end = next((t for r, _, t in led if r == "snap-end"), None)
        if res is None:
            if not (landed and name.startswith("kill-vmsnap")):
                self.violate(plan, "verdict", "no result (exit %s) though vmsnap was not "
                             "killed" % rc)
            return
        st, cons = res.get("status"), res.get("consistency")
        codes = [e.get("code") for e in res.get("errors", [])]
        self.log("verdict: %s %s %s" % (st, cons, codes))
        want_rc = {"success": 0, "degraded": 3, "failed": 1}.get(st)
        # killed after it had written its whole result: the kill's status
        killed_late = landed and name.startswith("kill-vmsnap") and \
            rc in (-plan.sig, 128 + plan.sig)
        if rc != want_rc and not killed_late:
            self.violate(plan, "verdict", "status %s but exit %s" % (st, rc))
        bad = []
        if plan.pre != "ok" and plan.pre not in ("holder", "flood") and cons == "application":
            bad.append("the pre-script %s but the result is application-consistent" % plan.pre)
        if plan.post in ("fail", "hang", "hang-setsid", "lost") and st == "success":
            bad.append("the post-script %s but the status is success" % plan.post)
        if plan.post == "lost" and cons == "application":
            bad.append("the post-script said quiesce lost (10) but application-consistent")
        if plan.snap_rc and snap_end is not None and st != "failed":
            bad.append("the snapshot step failed but the status is %s" % st)
        if plan.late and snap_start is not None and st != "failed":
            bad.append("the snapshot step outlived the freeze deadline but the status is %s" % st)
        pre_failed = plan.pre in ("fail", "hang", "hang-setsid")
        if pre_failed and not plan.cbf and plan.several_disks():
            if st != "failed":
                bad.append("pre-script failed, continueBackupOnFailure false, several disks, "
                           "but the status is %s" % st)
            if snap_start is not None:
                bad.append("pre-script failed, continueBackupOnFailure false, several disks, "
                           "but the snapshot step ran")
        # killed by the SIGTERM (its default action): it came after the run had
        # ended and written its result, which is the run's own
        if landed and name == "kill-vmsnap-SIGTERM" and rc != -signal.SIGTERM and \
                (snap_end is None or fault["t"] < snap_end):
            if st != "failed" or "Interrupted" not in codes:
                bad.append("SIGTERM during the run (before the snapshot step ended) gave %s %s"
                           % (st, codes))
        if landed and name.startswith(("kill-guardian", "outside-thaw")) and \
                snap_start is not None and snap_end is not None and \
                snap_start + 0.02 < fault["t"] < snap_end - 0.05:
            if st != "failed":
                bad.append("%s during the snapshot step (early thaw) gave status %s %s"
                           % (name, st, codes))
        if landed and name.startswith("kill-guardian") and \
                (snap_end is None or fault["t"] < snap_end) and st == "success":
            bad.append("the guardian was killed before the snapshot step ended, yet success")
        for b in bad:
            self.violate(plan, "verdict", b)

    def check_agent(self, plan, fault, facts, led, evs):
        by = collections.defaultdict(list)
        for e in evs:
            by[e["ev"]].append(e)
        landed = fault.get("landed")
        name = fault.get("name") or ""
        first = by["first-exit"][0] if by["first-exit"] else None
        last = by["last-exit"][0] if by["last-exit"] else None
        snap_start = by["snap-start"][0]["t"] if by["snap-start"] else None
        snap_end = by["snap-end"][0]["t"] if by["snap-end"] else None
        if plan.mode == "freeze":
            if last is None:
                return
            self.log("thaw: exit %s %s" % (last["rc"], last["stdout"][-500:]))
            expired = plan.late or (landed and name.startswith(("kill-guardian",
                                                                 "outside-thaw")))
            if plan.late and last["rc"] == 0:
                self.violate(plan, "verdict", "`vmsnap thaw` came %.1fs after the %gs lease "
                             "ran out and exited 0%s" % (
                                 plan.snap - plan.freeze_timeout, plan.freeze_timeout,
                                 "" if self.session_flag else
                                 " (this build's thaw has no --session to name the lease)"))
            elif expired:
                pass   # what a thaw says after an outside thaw is not in the SPEC
            return
        if last is None:
            return
        m = re.search(r"vmsnap hook \S+ \S+: (\w+)(?:, (\w+)-consistent)?", last["stderr"])
        st, cons = (m.group(1), m.group(2)) if m else (None, None)
        self.log("verdict: last phase exit %s: %s %s" % (last["rc"], st, cons))
        bad = []
        if plan.pre in ("fail", "hang", "hang-setsid") and cons == "application":
            bad.append("the pre-script %s but the last phase says application-consistent"
                       % plan.pre)
        if plan.post in ("fail", "hang", "hang-setsid", "lost") and st == "success":
            bad.append("the post-script %s but the last phase says success" % plan.post)
        if plan.late and st == "success":
            bad.append("the last phase came %.1fs after the %gs deadline, yet success"
                       % (plan.snap - plan.freeze_timeout, plan.freeze_timeout))
        if plan.late and last["rc"] == 0:
            bad.append("the last phase came after the deadline and exited 0")
        early = landed and name.startswith(("kill-guardian", "outside-thaw")) or \
            (landed and name == "kill-watchdog-SIGTERM")
        if early and (snap_end is None or fault["t"] < snap_end) and \
                fault["t"] > (first["t"] if first else 0) and st == "success":
            bad.append("%s while the session was open, yet the last phase says success"
                       % name)
        if plan.mode == "qemu-ga":
            # the agent's own thaw found nothing frozen: someone thawed under it
            thaws = by["fithaw"]
            if thaws and all(e["errno"] == errno.EINVAL for e in thaws) and st == "success":
                bad.append("every filesystem qemu-ga froze was already thawed before its "
                           "thaw (%s), yet the last phase says success" % name)
        for b in bad:
            self.violate(plan, "verdict", b)

    def next_run(self, plan):
        try:
            os.unlink(self.next_ledger)
        except OSError:
            pass
        env = dict(self.env, SOAK_TAG="soak-%d-next" % self.seed)
        argv = VMSNAP + ["run", "--json", "--config", self.next_config, "--log-file",
                         os.path.join(self.logdir, "next.vmsnap.log")]
        self.monitor.limit = 4.0 + MARGIN_S
        try:
            p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            res = json.loads(p.stdout)
        except (subprocess.TimeoutExpired, ValueError) as exc:
            self.violate(plan, "next-run", "the next `vmsnap run` gave no result: %s" % exc)
            return
        codes = [e.get("code") for e in res.get("errors", [])]
        if p.returncode != 0 or res.get("status") != "success" or \
                res.get("consistency") != "application":
            self.violate(plan, "next-run", "the next `vmsnap run` says %s %s %s (exit %d)"
                         % (res.get("status"), res.get("consistency"), codes, p.returncode))
        led = read_ledger(self.next_ledger)
        if [r for r, _, _ in led] != ["pre", "post", "post-end"]:
            self.violate(plan, "next-run", "the next run's ledger: %s" % led)
        for late, limit, thawed in self.monitor.take():
            self.violate(plan, "frozen-past-deadline", "the next run: %s blocked past %gs"
                         % (late, limit))
        end = time.monotonic() + 3
        while tagged("soak-%d-next" % self.seed) and time.monotonic() < end:
            time.sleep(0.05)

    # ---- all of it
    def main(self):
        os.makedirs(self.logdir, exist_ok=True)
        if not self.args.keep_logs:
            for f in os.listdir(self.logdir):
                if f.startswith(("cycle-", "next.")):
                    os.unlink(os.path.join(self.logdir, f))
        self.setup()
        t0 = time.monotonic()
        ks = [self.args.only] if self.args.only is not None else \
            range(self.args.first, self.args.first + self.args.n)
        interrupted = False
        try:
            for k in ks:
                if self.args.until and time.time() > self.args.until:
                    break
                self.cycle(k)
                if self.cycles % 20 == 0:
                    print("soak: %d cycles, %d violation(s), %.0fs" % (
                        self.cycles, len(self.violations), time.monotonic() - t0), flush=True)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.teardown()
        return self.report(time.monotonic() - t0, interrupted)

    def report(self, elapsed, interrupted):
        kinds = collections.Counter(v["kind"] for v in self.violations)
        summary = {"seed": self.seed, "cycles": self.cycles, "seconds": round(elapsed),
                   "modes": dict(self.modes), "faults_injected": dict(self.faults),
                   "faults_missed": dict(self.faults_missed),
                   "behaviours": dict(self.behaviours), "violations": len(self.violations),
                   "violations_by_kind": dict(kinds), "session_flag": self.session_flag,
                   "rcu_checks_not_judged": self.inconclusive, "interrupted": interrupted,
                   "list": self.violations}
        return report(summary, self.logdir)


def report(summary, logdir):
    """Prints SUMMARY (and writes it to LOGDIR/summary.json); the exit status."""
    with open(os.path.join(logdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    violations, kinds = summary["list"], summary["violations_by_kind"]
    faults = summary["faults_injected"]
    print("soak: seed %d, %d cycles in %.0fs%s%s" % (
        summary["seed"], summary["cycles"], summary["seconds"],
        " (%d jobs)" % summary["jobs"] if summary.get("jobs", 1) > 1 else "",
        " (interrupted)" if summary["interrupted"] else ""))
    print("  modes: %s" % ", ".join("%s %d" % kv for kv in sorted(summary["modes"].items())))
    print("  faults injected: %d (%s)" % (sum(faults.values()), ", ".join(
        "%s %d" % kv for kv in sorted(faults.items()))))
    print("  faults whose target was already gone: %d" % sum(summary["faults_missed"].values()))
    if summary["rcu_checks_not_judged"]:
        print("  rcu_expedited checks not judged (another namespace was freezing): %d"
              % summary["rcu_checks_not_judged"])
    print("  script behaviours: %s" % ", ".join(
        "%s %d" % kv for kv in sorted(summary["behaviours"].items())))
    print("  violations: %d%s" % (len(violations), "" if not kinds else " (%s)" % (
        ", ".join("%s %d" % kv for kv in sorted(kinds.items())))))
    for v in violations[:200]:
        print("  seed %d cycle %d (%s): %s: %s\n      %s" % (
            v["seed"], v["cycle"], v["mode"], v["kind"], v["detail"], v["plan"]))
    if len(violations) > 200:
        print("  ... %d more in %s" % (len(violations) - 200,
                                       os.path.join(logdir, "summary.json")))
    if violations:
        print("  replay one: make soak SEED=%d ONLY=CYCLE (logs: %s/%scycle-*.log)"
              % (summary["seed"], logdir, "job-*/" if summary.get("jobs", 1) > 1 else ""))
    return 1 if violations or summary["interrupted"] else 0


def run_jobs(args):
    """N cycles split among JOBS soaks side by side, each in its own mount
    namespace with its own filesystems (cycle K is the same cycle whichever
    job runs it: replayable with --only K); one summary of them all."""
    logdir = os.path.abspath(args.log_dir)
    os.makedirs(logdir, exist_ok=True)
    per, extra = divmod(args.n, args.jobs)
    procs, first, t0 = [], 0, time.monotonic()
    for j in range(args.jobs):
        n = per + (j < extra)
        jdir = os.path.join(logdir, "job-%d" % j)
        argv = [PY, os.path.abspath(__file__), "-n", str(n), "--first", str(first),
                "--seed", str(args.seed), "--log-dir", jdir, "--modes", ",".join(args.modes)]
        if args.until:
            argv += ["--until", str(args.until)]
        if args.keep_logs:
            argv.append("--keep-logs")
        out = open(os.path.join(logdir, "job-%d.out" % j), "w")
        env = {k: v for k, v in os.environ.items() if k != "SOAK_PRIVATE_NS"}   # each its own
        procs.append((subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env),
                      out, jdir))
        first += n
    interrupted = False
    try:
        for p, _, _ in procs:
            p.wait()
    except KeyboardInterrupt:
        interrupted = True
        for p, _, _ in procs:
            p.send_signal(signal.SIGTERM)
        for p, _, _ in procs:
            p.wait()
    total = {"seed": args.seed, "cycles": 0, "seconds": 0, "jobs": args.jobs, "modes": {},
             "faults_injected": {}, "faults_missed": {}, "behaviours": {}, "violations": 0,
             "violations_by_kind": {}, "rcu_checks_not_judged": 0,
             "interrupted": interrupted, "list": []}
    for j, (p, out, jdir) in enumerate(procs):
        out.close()
        try:
            with open(os.path.join(jdir, "summary.json")) as f:
                part = json.load(f)
        except (OSError, ValueError):
            print("soak: job %d left no summary (exit %s): see %s/job-%d.out"
                  % (j, p.returncode, logdir, j))
            total["interrupted"] = True
            continue
        for key in ("cycles", "violations", "rcu_checks_not_judged"):
            total[key] += part[key]
        for key in ("modes", "faults_injected", "faults_missed", "behaviours",
                    "violations_by_kind"):
            c = collections.Counter(total[key])
            c.update(part[key])
            total[key] = dict(c)
        total["list"] += part["list"]
        total["interrupted"] = total["interrupted"] or part.get("interrupted", False)
    total["seconds"] = round(time.monotonic() - t0)
    total["list"].sort(key=lambda v: v["cycle"])
    return report(total, logdir)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200, help="cycles (default 200)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", type=int, help="replay this cycle of the seed alone")
    ap.add_argument("--first", type=int, default=0, help="the first cycle's number (default 0)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="soaks side by side, each with its own filesystems, sharing the N "
                         "cycles (default 1)")
    ap.add_argument("--log-dir", default=os.path.join(REPO, "build", "soak"))
    ap.add_argument("--modes", default="run,qemu-ga,gce,freeze")
    ap.add_argument("--until", type=float, help="stop starting cycles after this Unix time")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--agent", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.agent:
        agent_main(args.agent)
        return 0
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - {m for m, _ in MODES}
    if unknown:
        ap.error("unknown mode(s) %s; known: %s" % (", ".join(sorted(unknown)),
                                                     ", ".join(m for m, _ in MODES)))
    if os.geteuid() != 0:
        print("soak: needs root (it makes, mounts and freezes its own loop filesystems)",
              file=sys.stderr)
        return 2
    for tool in ("unshare", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "setsid", "losetup"):
        if shutil.which(tool) is None:
            print("soak: needs %s" % tool, file=sys.stderr)
            return 2
    if args.jobs > 1 and args.only is None:
        return run_jobs(args)
    if os.environ.get("SOAK_PRIVATE_NS") != "1":
        # a private mount namespace with its own /run: records, locks and mounts
        # never meet anyone else's
        env = dict(os.environ, SOAK_PRIVATE_NS="1")
        os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", PY,
                               os.path.abspath(__file__)] + list(sys.argv[1:] if argv is None
                                                                 else argv), env)
    soak = Soak(args)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    return soak.main()


if __name__ == "__main__":
    sys.exit(main())
