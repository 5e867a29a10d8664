"""The host's side of a QEMU guest: start it, talk QMP to QEMU and the guest
agent's protocol (QGA) to qemu-ga over unix sockets, snapshot its disks.
Standard library only.

    vm = Machine(workdir, kernel, initrd, disks={"root": "root.qcow2", ...})
    vm.start(); vm.wait_agent()
    vm.qga("guest-fsfreeze-freeze")
    vm.qmp("transaction", actions=[...blockdev-snapshot-sync...])
    vm.qga("guest-fsfreeze-thaw")
    vm.stop()
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import subprocess
import time

QEMU = "qemu-system-x86_64"


class AgentError(Exception):
    """The guest agent answered a command with an error."""

    def __init__(self, command: str, error: dict):
        self.command = command
        self.error = error
        super().__init__("%s: %s" % (command, error.get("desc", error)))


class _Channel:
    """One JSON-lines connection over a unix socket."""

    def __init__(self, path: str, timeout: float):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, obj: dict) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer within %.0f s" % timeout)
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the other side closed the socket")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.replace(b"\xff", b"").strip()
        if not line:
            return self.recv(max(0.1, deadline - time.monotonic()))
        return json.loads(line)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class QMP:
    """QEMU's monitor protocol: capabilities negotiated, events kept aside."""

    def __init__(self, path: str, timeout: float = 30):
        self.ch = _Channel(path, timeout)
        self.ch.recv(timeout)                      # the greeting
        self.events: list = []
        self.execute("qmp_capabilities")

    def execute(self, command: str, timeout: float = 60, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.ch.send(msg)
        while True:
            reply = self.ch.recv(timeout)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError("QMP %s: %s" % (command, reply["error"].get("desc")))
            return reply.get("return")

    def close(self) -> None:
        self.ch.close()


class QGA:
    """The guest agent's protocol, resynchronised (guest-sync-delimited) on
    connect so that a stale answer is never taken for the current one."""

    def __init__(self, path: str, timeout: float = 5):
        self.ch = _Channel(path, timeout)
        token = random.randint(1, 2**31)
        self.ch.sock.sendall(b"\xff")
        self.ch.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        while True:
            reply = self.ch.recv(timeout)
            if reply.get("return") == token:
                break

    def execute(self, command: str, timeout: float = 120, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.ch.send(msg)
        reply = self.ch.recv(timeout)
        if "error" in reply:
            raise AgentError(command, reply["error"])
        return reply.get("return")

    def close(self) -> None:
        self.ch.close()


class Machine:
    """One QEMU guest: direct kernel boot, virtio disks, qemu-ga's channel,
    a QMP socket, virtio-rng (the host's entropy: an emulated guest would
    wait for its own), no network device, the console in a file."""

    def __init__(self, workdir: str, kernel: str, initrd: str, disks: list,
                 accel: str = "tcg", memory: int = 2048, name: str = "vm",
                 append: str = "quiet systemd.show_status=auto"):
        self.dir = workdir
        self.kernel = kernel
        self.initrd = initrd
        self.disks = disks          # [(id, path, format)], the first is the root
        self.accel = accel
        self.memory = memory
        self.name = name
        self.append = append
        self.qmp_path = os.path.join(workdir, name + "-qmp.sock")
        self.qga_path = os.path.join(workdir, name + "-qga.sock")
        self.console = os.path.join(workdir, name + "-console.log")
        self.proc: subprocess.Popen | None = None
        self._qmp: QMP | None = None
        self.started = 0.0

    def argv(self) -> list:
        argv = [QEMU, "-name", self.name, "-accel", self.accel, "-m", str(self.memory),
                "-smp", "2", "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
                "-serial", "file:" + self.console,
                "-kernel", self.kernel, "-initrd", self.initrd,
                "-append", "root=/dev/vda rw console=ttyS0 " + self.append,
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
                "-chardev", "socket,path=%s,server=on,wait=off,id=qga0" % self.qga_path,
                "-object", "rng-random,id=rng0,filename=/dev/urandom",
                "-device", "virtio-rng-pci,rng=rng0",
                "-device", "virtio-serial-pci",
                "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
        for ident, path, fmt in self.disks:
            argv += ["-drive", "file=%s,if=none,id=%s,format=%s,cache=unsafe" % (path, ident, fmt),
                     "-device", "virtio-blk-pci,drive=%s" % ident]
        return argv

    def start(self) -> None:
        for p in (self.qmp_path, self.qga_path):
            if os.path.exists(p):
                os.unlink(p)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, self.name + "-qemu.err"), "w"),
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.qmp_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("QEMU did not start: %s" % self.stderr())
            time.sleep(0.05)

    def stderr(self) -> str:
        try:
            with open(os.path.join(self.dir, self.name + "-qemu.err")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def console_tail(self, n: int = 3000) -> str:
        try:
            with open(self.console, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    @property
    def monitor(self) -> QMP:
        if self._qmp is None:
            self._qmp = QMP(self.qmp_path)
        return self._qmp

    def qmp(self, command: str, **arguments):
        return self.monitor.execute(command, **arguments)

    def agent(self, timeout: float = 5) -> QGA:
        return QGA(self.qga_path, timeout)

    def qga(self, command: str, timeout: float = 120, **arguments):
        """One agent command on a fresh connection."""
        conn = self.agent()
        try:
            return conn.execute(command, timeout=timeout, **arguments)
        finally:
            conn.close()

    def wait_agent(self, timeout: float) -> float:
        """Seconds from start until qemu-ga answers guest-ping."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("QEMU exited: %s\n%s" % (self.stderr(), self.console_tail()))
            try:
                conn = self.agent(timeout=2)
                conn.execute("guest-ping", timeout=5)
                conn.close()
                return time.monotonic() - self.started
            except (OSError, TimeoutError, ConnectionError, ValueError):
                time.sleep(1)
        raise TimeoutError("the guest agent did not answer within %.0f s; console:\n%s"
                           % (timeout, self.console_tail()))

    def sh(self, script: str, timeout: float = 120, check: bool = True) -> tuple:
        """Runs `sh -c script` in the guest (guest-exec); (exit code, output)."""
        pid = self.qga("guest-exec", path="/bin/sh", arg=["-c", script],
                       **{"capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while True:
            st = self.qga("guest-exec-status", pid=pid)
            if st.get("exited"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("guest command still running after %.0f s: %s" % (timeout, script))
            time.sleep(0.2)
        out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
        code = st.get("exitcode", -st.get("signal", 0))
        if check and code != 0:
            raise RuntimeError("guest command failed (%s): %s\n%s%s" % (code, script, out, err))
        return code, out + err

    def spawn(self, script: str) -> None:
        """Starts `script` in the guest in the background, as a transient
        systemd unit of its own: a child of qemu-ga would be in the agent's
        cgroup and be killed with it."""
        self.sh("systemd-run --quiet --collect sh -c %s" % _quote(script))

    def snapshot(self, overlays: dict) -> float:
        """External snapshot of the named drives in one transaction: each
        drive's current image becomes the read-only backing file of a new
        qcow2 overlay. Returns the seconds the QMP command took."""
        actions = [{"type": "blockdev-snapshot-sync",
                    "data": {"device": ident, "snapshot-file": path, "format": "qcow2"}}
                   for ident, path in overlays.items()]
        t0 = time.monotonic()
        self.qmp("transaction", actions=actions)
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL to QEMU (the power cord)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._close()

    def stop(self, timeout: float = 60) -> None:
        """A clean power-off through the agent, SIGKILL if it does not come."""
        if self.proc and self.proc.poll() is None:
            try:
                conn = self.agent()
                conn.ch.send({"execute": "guest-shutdown"})
                conn.close()
                self.proc.wait(timeout)
            except (OSError, TimeoutError, ValueError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _close(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None


class LibvirtMachine(Machine):
    """The same guest, started and driven by libvirt (a libvirtd of its own,
    tools/vm/libvirtd.sh): a transient domain, TCG or KVM, direct kernel
    boot, the same virtio disks, and libvirt's own channel to qemu-ga, which
    every agent command here goes through (`virsh qemu-agent-command`)."""

    def __init__(self, uri: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.uri = uri
        self.domain = "vmsnap-" + self.name

    def virsh(self, *argv, timeout: float = 120, check: bool = True) -> str:
        p = subprocess.run(["virsh", "-q", "-c", self.uri] + list(argv), capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError("virsh %s: %s" % (" ".join(argv[:2]), (p.stderr or p.stdout).strip()))
        return p.stdout

    def xml(self) -> str:
        disks = "".join(
            "<disk type='file' device='disk'><driver name='qemu' type='%s' cache='unsafe'/>"
            "<source file='%s'/><target dev='vd%s' bus='virtio'/></disk>"
            % (fmt, path, chr(ord("a") + n)) for n, (_, path, fmt) in enumerate(self.disks))
        return """<domain type='%s'>
  <name>%s</name><memory unit='MiB'>%d</memory><vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>%s</kernel><initrd>%s</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0 %s</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><emulator>/usr/bin/%s</emulator>%s
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind' path='%s'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <controller type='usb' model='none'/><memballoon model='none'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>""" % ("kvm" if self.accel == "kvm" else "qemu", self.domain, self.memory, self.kernel,
                self.initrd, self.append, QEMU, disks, self.console, self.qga_path)

    def start(self) -> None:
        path = os.path.join(self.dir, self.name + ".xml")
        with open(path, "w") as f:
            f.write(self.xml())
        self.started = time.monotonic()
        self.virsh("create", path)

    def stderr(self) -> str:
        try:
            return self.virsh("domstate", self.domain, "--reason", check=False)
        except (OSError, subprocess.SubprocessError) as e:
            return str(e)

    def running(self) -> bool:
        return "running" in self.virsh("domstate", self.domain, check=False)

    def qga(self, command: str, timeout: float = 120, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        p = subprocess.run(["virsh", "-q", "-c", self.uri, "qemu-agent-command", self.domain,
                            json.dumps(msg), "--timeout", str(int(timeout))],
                           capture_output=True, text=True, timeout=timeout + 30)
        if p.returncode != 0:
            raise AgentError(command, {"desc": (p.stderr or p.stdout).strip()})
        return json.loads(p.stdout).get("return")

    def wait_agent(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError("the domain is not running: %s\n%s"
                                   % (self.stderr(), self.console_tail()))
            try:
                self.qga("guest-ping", timeout=5)
                return time.monotonic() - self.started
            except (AgentError, subprocess.TimeoutExpired, ValueError):
                time.sleep(2)
        raise TimeoutError("the guest agent did not answer within %.0f s; console:\n%s"
                           % (timeout, self.console_tail()))

    def snapshot_quiesced(self, overlays: dict) -> float:
        """`virsh snapshot-create-as --disk-only --quiesce` of every disk (one
        new overlay each, named by OVERLAYS {target: path}); returns its seconds."""
        specs = []
        for target, path in overlays.items():
            specs += ["--diskspec", "%s,snapshot=external,file=%s" % (target, path)]
        t0 = time.monotonic()
        self.virsh("snapshot-create-as", self.domain, "quiesced", "--disk-only", "--quiesce",
                   "--atomic", "--no-metadata", *specs, timeout=300)
        return time.monotonic() - t0

    def kill(self) -> None:
        self.virsh("destroy", self.domain, check=False)

    def stop(self, timeout: float = 60) -> None:
        self.kill()


def _die_with_parent() -> None:
    """QEMU gets SIGKILL when the process that started it dies: no guest
    outlives a test run, however the run ends."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
