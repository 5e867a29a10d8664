"""A fleet on this machine: each host is an sshd in its own mount namespace,
with its own /run (so its own vmsnap lock, records and group sessions) and
its own loop filesystem, listening only on its own loopback address
127.0.0.x, reached with keys made here.  The controller is ansible-core.

Everything it starts it takes down in stop(), also after a failure: each
host's filesystem is thawed, every process in its namespace killed, its
mounts unmounted (the loop device goes with them), the namespace released.
`python -m tests.fleet.harness sweep RUN` does the same for a harness that
was itself killed: RUN (VMSNAP_FLEET_RUN, set by `make test-fleet`) is part
of every directory this run made, so only this run's processes are found."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PREFIX = "vmsnap-fleet-harness-"


def run_prefix(run=None):
    """/tmp/vmsnap-fleet-harness-RUN-: the start of this run's directories."""
    run = os.environ.get("VMSNAP_FLEET_RUN", "0") if run is None else run
    return "/tmp/%s%s-" % (PREFIX, run)
SSHD = "/usr/sbin/sshd"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VMSNAP = os.path.join(REPO, ".venv", "bin", "vmsnap")
COLLECTION = os.path.join(REPO, "contrib", "ansible")
PLAYBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "playbooks")

# Is this mount point frozen?  FIFREEZE on a frozen filesystem fails with
# EBUSY; on a thawed one it freezes, and we thaw at once.
PROBE = r"""
import errno, fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
try:
    fcntl.ioctl(fd, 0xC0045877, 0)
except OSError as e:
    print("frozen" if e.errno == errno.EBUSY else "error %s" % e)
else:
    fcntl.ioctl(fd, 0xC0045878, 0)
    print("thawed")
"""

PRE_SCRIPT = """#!/bin/sh
mkdir -p /run/fleet-app
date +%s.%N > /run/fleet-app/pre_at
echo pre >> /run/fleet-app/events
exit {exit}
"""
POST_SCRIPT = """#!/bin/sh
mkdir -p /run/fleet-app
date +%s.%N > /run/fleet-app/post_at
echo post >> /run/fleet-app/events
exit {exit}
"""


def sh(argv, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 30)
    return subprocess.run(argv, **kw)


def mnt_ns(pid):
    try:
        return os.stat("/proc/%d/ns/mnt" % pid).st_ino
    except OSError:
        return None


def pids_in_ns(ns_ino):
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and mnt_ns(int(name)) == ns_ino:
            out.append(int(name))
    return out


def free_port(addr):
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


class Host:
    def __init__(self, fleet, index):
        self.fleet = fleet
        self.name = "host%d" % index
        self.addr = "127.0.0.%d" % (10 + index)
        self.dir = os.path.join(fleet.base, self.name)
        # two filesystems on two loop devices: two disks, as a database host has
        self.mnts = [os.path.join(self.dir, "data"), os.path.join(self.dir, "logs")]
        self.imgs = [os.path.join(self.dir, "data.img"), os.path.join(self.dir, "logs.img")]
        self.mnt = self.mnts[0]
        self.config = os.path.join(self.dir, "vmsnap.json")
        self.port = None
        self.proc = None        # the sshd listener, first process of the namespace
        self.ns_fd = None       # holds the namespace even after every process in it died
        self.ns_ino = None

    # -- inside the host --------------------------------------------------------

    @property
    def ns_path(self):
        return "/proc/%d/fd/%d" % (os.getpid(), self.ns_fd)

    def run(self, argv, **kw):
        """Runs argv in the host's mount namespace."""
        return sh(["nsenter", "--mount=" + self.ns_path, "--"] + list(argv), **kw)

    def frozen(self) -> str:
        """"frozen" or "thawed" when all its filesystems agree, else each one's state."""
        states = [self.run([sys.executable, "-c", PROBE, m]).stdout.strip() for m in self.mnts]
        if len(set(states)) == 1:
            return states[0]
        return ",".join("%s=%s" % (os.path.basename(m), st) for m, st in zip(self.mnts, states))

    def read_run(self, rel):
        """A file of the host's own /run, or None."""
        p = self.run(["cat", os.path.join("/run", rel)])
        return p.stdout if p.returncode == 0 else None

    def sshd_pids(self):
        """The listener and every sshd of its sessions (all in the namespace)."""
        out = []
        for pid in pids_in_ns(self.ns_ino):
            try:
                with open("/proc/%d/comm" % pid) as f:
                    if f.read().startswith("sshd"):
                        out.append(pid)
            except OSError:
                pass
        return out

    def kill_sshd(self):
        """Makes the host unreachable; what else runs on it goes on."""
        for pid in self.sshd_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def configure(self, *, pre_exit=0, post_exit=0, continue_on_failure=True, timeout=20):
        for name, text in (("pre.sh", PRE_SCRIPT.format(exit=pre_exit)),
                           ("post.sh", POST_SCRIPT.format(exit=post_exit))):
            path = os.path.join(self.dir, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o700)
        cfg = {"pluginName": "ScriptRunner",
               "preScriptLocation": os.path.join(self.dir, "pre.sh"),
               "postScriptLocation": os.path.join(self.dir, "post.sh"),
               "timeoutInSeconds": timeout, "continueBackupOnFailure": continue_on_failure,
               "fsFreezeEnabled": True,
               "hooksDirectory": os.path.join(self.dir, "hooks.d")}
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        self.run(["rm", "-rf", "/run/fleet-app", "/run/vmsnap-fleet"])

    # -- life cycle -------------------------------------------------------------

    def start(self):
        os.makedirs(os.path.join(self.dir, "hooks.d"), mode=0o700)
        for mnt, img in zip(self.mnts, self.imgs):
            os.makedirs(mnt)
            sh(["truncate", "-s", "48M", img], check=True)
            sh(["mkfs.ext4", "-q", "-F", img], check=True)
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
            os.path.join(self.dir, "host_key")], check=True)
        self.port = free_port(self.addr)
        conf = os.path.join(self.dir, "sshd_config")
        with open(conf, "w") as f:
            f.write("\n".join([
                "ListenAddress %s:%d" % (self.addr, self.port),   # loopback only
                "HostKey %s" % os.path.join(self.dir, "host_key"),
                "PidFile none",
                "AuthorizedKeysFile %s" % os.path.join(self.fleet.base, "authorized_keys"),
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "MaxStartups 100:30:200",
                "Subsystem sftp /usr/lib/openssh/sftp-server",
                "LogLevel ERROR", ""]))
        # own mount namespace: a tmpfs /run (lock, records, sessions of this
        # host only), the host's loop filesystem; then sshd in the foreground
        script = ('set -e; mount -t tmpfs -o mode=755 fleet-run /run; mkdir -m 755 /run/sshd; '
                  'mount -o loop "$1" "$2"; mount -o loop "$3" "$4"; exec %s -D -e -f "$5"'
                  % SSHD)
        log = open(os.path.join(self.dir, "sshd.log"), "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
             "fleet-host", self.imgs[0], self.mnts[0], self.imgs[1], self.mnts[1], conf],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        mine = mnt_ns(os.getpid())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s: sshd exited (%s): %s" % (
                    self.name, self.proc.returncode, open(os.path.join(self.dir, "sshd.log")).read()))
            if self.ns_fd is None and mnt_ns(self.proc.pid) not in (None, mine):
                self.ns_fd = os.open("/proc/%d/ns/mnt" % self.proc.pid, os.O_RDONLY | os.O_CLOEXEC)
                os.set_inheritable(self.ns_fd, False)
                self.ns_ino = os.fstat(self.ns_fd).st_ino
            if self.ns_fd is not None:
                try:
                    socket.create_connection((self.addr, self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("%s: sshd not listening on %s:%d after 20s" % (
            self.name, self.addr, self.port))

    def stop(self):
        """Thaw, kill what runs in the namespace, unmount, release it."""
        if self.ns_fd is None:
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
            return
        for _ in range(2):
            for mnt in self.mnts:
                self.run(["fsfreeze", "-u", mnt], timeout=10)   # EINVAL when not frozen
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pids = pids_in_ns(self.ns_ino)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
        if self.proc:
            self.proc.wait(timeout=10)
        for mnt in self.mnts:
            self.run(["umount", mnt], timeout=10)
        self.run(["umount", "/run"], timeout=10)
        os.close(self.ns_fd)
        self.ns_fd = None
        # the loop device (autoclear) goes with the last mount; make sure
        for img in self.imgs:
            for line in sh(["losetup", "-j", img]).stdout.splitlines():
                sh(["losetup", "-d", line.split(":")[0]])


class Fleet:
    def __init__(self, n=3, ansible_bin=None):
        self.base = tempfile.mkdtemp(prefix=os.path.basename(run_prefix()), dir="/tmp")
        self.ansible_bin = ansible_bin
        self.hosts = [Host(self, i + 1) for i in range(n)]
        self.playbooks = []     # ansible-playbook processes, killed in stop()

    def start(self):
        key = os.path.join(self.base, "client_key")
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        shutil.copy(key + ".pub", os.path.join(self.base, "authorized_keys"))
        for h in self.hosts:
            h.start()
            h.configure()
        with open(os.path.join(self.base, "known_hosts"), "w") as f:
            for h in self.hosts:
                with open(os.path.join(h.dir, "host_key.pub")) as k:
                    f.write("[%s]:%d %s\n" % (h.addr, h.port, " ".join(k.read().split()[:2])))
        coll = os.path.join(self.base, "collections", "ansible_collections", "vmsnap")
        os.makedirs(coll)
        os.symlink(COLLECTION, os.path.join(coll, "fleet"))
        inventory = {"fleet": {"hosts": {h.name: {
            "ansible_host": h.addr, "ansible_port": h.port, "ansible_user": "root",
            "ansible_ssh_private_key_file": key, "ansible_python_interpreter": "/usr/bin/python3",
            "consistency_group_mounts": h.mnts, "consistency_group_config": h.config,
            "consistency_group_vmsnap_bin": VMSNAP,
        } for h in self.hosts}}}
        with open(os.path.join(self.base, "inventory.yml"), "w") as f:
            json.dump(inventory, f, indent=1)
        with open(os.path.join(self.base, "ansible.cfg"), "w") as f:
            f.write("\n".join([
                "[defaults]",
                "inventory = %s" % os.path.join(self.base, "inventory.yml"),
                "collections_path = %s" % os.path.join(self.base, "collections"),
                "host_key_checking = True",
                "forks = 10",
                "timeout = 10",
                "local_tmp = %s" % os.path.join(self.base, "ansible-local"),
                "remote_tmp = /run/ansible-tmp",
                "retry_files_enabled = False",
                "[ssh_connection]",
                "pipelining = True",
                # shared connections, as Ansible's default: the clock offset is
                # read in one round trip (a few ms), not one ssh handshake
                "control_path_dir = %s" % os.path.join(self.base, "cp"),
                "ssh_args = -o ControlMaster=auto -o ControlPersist=60s "
                "-o UserKnownHostsFile=%s -o IdentitiesOnly=yes -o BatchMode=yes "
                "-o ConnectTimeout=5 -o ServerAliveInterval=2 -o ServerAliveCountMax=2"
                % os.path.join(self.base, "known_hosts"), ""]))
        return self

    def env(self):
        env = dict(os.environ)
        env.update(ANSIBLE_CONFIG=os.path.join(self.base, "ansible.cfg"),
                   ANSIBLE_HOME=os.path.join(self.base, "ansible-home"),
                   ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8", LANG="C.UTF-8",
                   PATH=os.path.dirname(self.ansible_bin) + ":" + env.get("PATH", ""))
        return env

    def playbook_argv(self, playbook, extra_vars, check=False):
        vars_file = tempfile.NamedTemporaryFile("w", dir=self.base, suffix=".json",
                                                delete=False)
        with vars_file:
            json.dump(extra_vars, vars_file)
        argv = [self.ansible_bin, os.path.join(PLAYBOOKS, playbook), "-e", "@" + vars_file.name]
        return argv + (["--check"] if check else [])

    def start_playbook(self, playbook, extra_vars, check=False):
        """Starts ansible-playbook in its own process group; output to a file."""
        log = open(os.path.join(self.base, "ansible-%d.log" % len(self.playbooks)), "w+")
        p = subprocess.Popen(self.playbook_argv(playbook, extra_vars, check), env=self.env(),
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, text=True)
        p.log = log
        self.playbooks.append(p)
        return p

    def playbook(self, playbook, extra_vars, timeout=180, check=False):
        """Runs a playbook to its end; returns (exit status, its output)."""
        p = self.start_playbook(playbook, extra_vars, check)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
        p.log.seek(0)
        return p.returncode, p.log.read()

    def module(self, host, args, check=False, timeout=120):
        """The vmsnap module on one host, ad hoc; returns its result dict."""
        argv = [os.path.join(os.path.dirname(self.ansible_bin), "ansible"), host.name, "-o",
                "-m", "vmsnap.fleet.vmsnap", "-a", json.dumps(dict(vmsnap_bin=VMSNAP, **args))]
        p = sh(argv + (["--check"] if check else []), env=self.env(), timeout=timeout)
        line = next((x for x in p.stdout.splitlines() if x.startswith(host.name + " |")), None)
        if line is None or " => " not in line:
            raise AssertionError("no module result from %s: %s %s" % (host.name, p.stdout, p.stderr))
        return json.loads(line.split(" => ", 1)[1])

    def stop(self):
        for p in self.playbooks:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            p.log.close()
        # what the controller started and a kill left behind (a snapshot step)
        for pid in controller_leftovers(self.base):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        errors = []
        for h in self.hosts:
            try:
                h.stop()
            except Exception as exc:   # go on with the other hosts
                errors.append("%s: %s" % (h.name, exc))
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise RuntimeError("fleet clean-up: " + "; ".join(errors))


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def controller_leftovers(base):
    """Processes in our own mount namespace whose command line names base."""
    me, ns = os.getpid(), mnt_ns(os.getpid())
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != me
            and mnt_ns(int(n)) == ns and base in cmdline(int(n))]


def sweep(run):
    """Takes down what a killed harness of run RUN left: processes whose
    command line names one of its directories, and the namespaces they hold."""
    prefix = run_prefix(run)
    me = os.getpid()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        if prefix in cmdline(int(name)):
            found.setdefault(mnt_ns(int(name)), []).append(int(name))
    for ns, pids in found.items():
        try:
            with open("/proc/%d/mountinfo" % pids[0]) as f:
                mountinfo = f.read().splitlines()
        except OSError:
            mountinfo = []
        for mnt in mountinfo:
            point = mnt.split()[4]
            if point.startswith(prefix):
                sh(["nsenter", "-t", str(pids[0]), "-m", "--", "fsfreeze", "-u", point])
        for pid in pids_in_ns(ns) if ns != mnt_ns(me) else pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for line in sh(["losetup", "-a"]).stdout.splitlines():
        if prefix in line:
            sh(["losetup", "-d", line.split(":")[0]])
    with open("/proc/self/mountinfo") as f:
        still_mounted = prefix in f.read()
    if not still_mounted:
        for d in os.listdir("/tmp"):
            if ("/tmp/" + d).startswith(prefix):
                shutil.rmtree("/tmp/" + d, ignore_errors=True)
    print("fleet sweep: %d namespace(s) taken down" % len(found))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "sweep" and sys.argv[2].isalnum():
        sweep(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.fleet.harness sweep RUN (the VMSNAP_FLEET_RUN of the run)")
